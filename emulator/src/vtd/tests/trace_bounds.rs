//! The trace of the worst translation fits.

use super::*;

/// The trace's capacity holds the worst translation without A/D contention: a write through an
/// uncached 5-level first stage nested over a 5-level second stage with second-stage A/D
/// (SSADE) and first-stage A/D, every cache looked up and filled. Nothing is dropped, and the
/// count is what the walk structure says it must be.
#[test]
fn the_worst_case_nested_walk_fits_the_trace() {
    use crate::trace::{TRACE_CAPACITY, WalkKind};
    let mut d = Driver::new(VtdConfig {
        fs_5level: true,
        ss_ad: true,
        sagaw: 0b1100,
        mgaw: 57,
        ..VtdConfig::default()
    });
    d.set_root(true);
    d.enable_qi(true);
    d.enable_translation();
    let dev = sid(0, 10, 0);
    // Second stage, 5-level (AW = 3) with A/D tracking: GPA 0..16 MiB -> SPA 0x4000_0000.
    let levels = VtdSsConfig::levels_for_aw(3).unwrap();
    let mut ssc = VtdSsConfig::new(levels).with_haw(48);
    ssc.slade = true;
    let mut ss = TableBuilder::new(WalkConfig::VtdSecondStage(ssc), d.mem, &mut d.alloc).unwrap();
    let gpa_base = 0x4000_0000u64;
    d.map(&mut ss, 0, gpa_base, 0x100_0000, RW);
    // First stage, 5-level, in guest memory.
    let (view, mut galloc, mut fs) = guest_first_stage(&d, &ss, 5);
    let iova = 0x00ff_0000_7000_0000u64;
    fs.map(
        &view,
        &mut galloc,
        iova,
        0x30_0000,
        0x1000,
        PwPerms::RW | PwPerms::U,
        PageSizePolicy::Fixed(12),
    )
    .unwrap();
    let dir = d.sm_context(dev, 0, true, 0);
    // PGTT = 011b (nested), AW = 3 (5-level), SSADE (bit 9); FSPM = 01b (5-level).
    d.pasid_entry(
        dir,
        4,
        [
            ss.root() | (1 << 9) | (3 << 6) | (3 << 2) | 1,
            2,
            fs.root() | (1 << 2),
        ],
    );
    let (r, trace) = d
        .vtd
        .translate(&DmaRequest::new(dev, iova | 0x44, 4, AccessKind::Write).with_pasid(4));
    assert_eq!(r.unwrap().addr, gpa_base + 0x30_0044);
    assert!(!trace.overflowed(), "{} dropped", trace.dropped());
    let n = trace.events().len();
    // Four structure reads; for each of the five first-stage levels a 5-level second-stage walk
    // of the table's address (5 reads, 5 A updates), the entry read and its A (and at the
    // leaf, D) update preceded by the second-stage D update of the page holding it; the final
    // 5-level second-stage walk of the output (5 reads, 5 A/D updates).
    let reads = trace.mem_reads();
    let writes = trace
        .events()
        .iter()
        .filter(|e| matches!(e, TraceEvent::MemWrite { .. }))
        .count();
    assert_eq!(reads, 4 + 5 * (5 + 1) + 5, "{:?}", trace.events());
    // The first-stage entries' A (and the leaf's D) flags, and the D flags of the output's
    // second-stage path, were set by this walk; the builder left A set elsewhere.
    assert!(writes >= 6, "{writes} A/D updates: {:?}", trace.events());
    assert_eq!(
        trace
            .events()
            .iter()
            .filter(|e| matches!(
                e,
                TraceEvent::WalkStart {
                    kind: WalkKind::Nested,
                    level: 5
                }
            ))
            .count(),
        1
    );
    // With every A/D flag clear, each table-entry read could bring one more update: the
    // capacity holds that bound with room for retried updates.
    let bound = n + (reads - 4 - writes);
    assert!(
        bound * 3 / 2 <= TRACE_CAPACITY,
        "{bound} events of {TRACE_CAPACITY}"
    );
    eprintln!("worst-case nested trace: {n} events ({reads} reads, {writes} writes)");
}
