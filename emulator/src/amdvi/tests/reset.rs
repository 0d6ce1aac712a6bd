//! [`Unit::reset`]: the power-on state again, with nothing of the previous boot usable.

use super::*;

const DEV: u16 = 0x10; // 00:02.0
const DID: u16 = 0x21;

/// Every register software programs, and what it reads out of reset (§3.4: zero; the
/// exclusion limit's low 12 bits read as ones only once written).
const RESET: [(u64, u64); 12] = [
    (reg::DEV_TAB_BASE, 0),
    (reg::CMD_BUF_BASE, 0),
    (reg::EVENT_LOG_BASE, 0),
    (reg::CONTROL, 0),
    (reg::EXCLUSION_BASE, 0),
    (reg::EXCLUSION_LIMIT, 0),
    (reg::PPR_LOG_BASE, 0),
    (reg::CMD_BUF_HEAD, 0),
    (reg::CMD_BUF_TAIL, 0),
    (reg::EVENT_LOG_HEAD, 0),
    (reg::EVENT_LOG_TAIL, 0),
    (reg::STATUS, 0),
];

fn read_all(s: &Sw) -> Vec<(u64, u64)> {
    RESET.iter().map(|&(off, _)| (off, s.r64(off))).collect()
}

/// A unit brought up with warm DTE cache, IOTLB and page-directory caches, a logged event and
/// an exclusion range, is reset: every register reads its reset value, translation is off
/// (IommuEn = 0), and a new boot that writes other tables for the same device and DomainID in
/// the same device table, without any invalidation command, gets the new translation from
/// memory (a stale cache entry would give the old one).
#[test]
fn reset_restores_the_power_on_state_and_forgets_the_caches() {
    let mut s = Sw::new();
    let mut t = s.v1_tables(3);
    s.map(&mut t, 0x10_0000, 0x7770_0000, 0x1000, PwPerms::RW);
    s.set_dte(DEV, [dte_q0(3, t.root(), true, true), u64::from(DID), 0, 0]);
    assert_eq!(s.read(DEV, 0x10_0040), Ok(0x7770_0040));
    let (_, trace) = s
        .unit
        .translate(&DmaRequest::new(DEV, 0x10_0040, 4, AccessKind::Read));
    assert_eq!(trace.lookup(CacheId::Iotlb), Some(true), "warm");
    s.read(DEV, 0x90_0000).unwrap_err();
    assert_ne!(s.r64(reg::EVENT_LOG_TAIL), 0, "an event was logged");
    s.w64(reg::EXCLUSION_BASE, 0x5000_0000);
    s.w64(reg::EXCLUSION_LIMIT, 0x5fff_f000);
    let efr = s.r64(reg::EFR);
    assert_ne!(read_all(&s), RESET.to_vec(), "programmed");

    Unit::reset(&s.unit);

    assert_eq!(read_all(&s), RESET.to_vec());
    assert_eq!(s.r64(reg::EFR), efr);
    let off = s
        .translate(&DmaRequest::new(DEV, 0x10_0040, 4, AccessKind::Read))
        .unwrap();
    assert_eq!((off.addr, off.identity), (0x10_0040, true), "IommuEn = 0");
    // The next boot: the same device table and DomainID, other tables.
    let mut t2 = s.v1_tables(3);
    s.map(&mut t2, 0x10_0000, 0x7880_0000, 0x1000, PwPerms::RW);
    s.set_dte(
        DEV,
        [dte_q0(3, t2.root(), true, true), u64::from(DID), 0, 0],
    );
    s.cmd_tail = 0;
    s.bring_up(Control::new().with_gt_en(true));
    let (r, trace) = s
        .unit
        .translate(&DmaRequest::new(DEV, 0x10_0040, 4, AccessKind::Read));
    assert_eq!(r.unwrap().addr, 0x7880_0040);
    for cache in [CacheId::Context, CacheId::Iotlb] {
        assert_eq!(trace.lookup(cache), Some(false), "{cache:?} held nothing");
    }
    // The event log starts again at its base.
    s.read(DEV, 0x90_0000).unwrap_err();
    assert_eq!(s.r64(reg::EVENT_LOG_TAIL), 16);
    // The counters keep counting across the reset (see `Unit::reset`).
    assert!(Unit::stats(&s.unit).translations >= 6);
}
