//! [`Unit::reset`]: the power-on state again, with nothing of the previous boot usable.

use super::*;

/// Every register software programs, with what it reads out of reset (§10.4: FECTL and IECTL
/// with IM set, everything else zero).
fn reset_values(d: &Driver) -> Vec<(u64, u64)> {
    let cfg = d.vtd.config();
    let (iro, fro) = (u64::from(cfg.iro), u64::from(cfg.fro));
    let mut regs = vec![
        (GSTS_REG, 0),
        (RTADDR_REG, 0),
        (CCMD_REG, 0),
        (FSTS_REG, 0),
        (FECTL_REG, u64::from(CTL_IM)),
        (FEDATA_REG, 0),
        (FEADDR_REG, 0),
        (FEUADDR_REG, 0),
        (IQH_REG, 0),
        (IQT_REG, 0),
        (IQA_REG, 0),
        (ICS_REG, 0),
        (IECTL_REG, u64::from(CTL_IM)),
        (IEDATA_REG, 0),
        (IEADDR_REG, 0),
        (IEUADDR_REG, 0),
        (IQERCD_REG, 0),
        (iro, 0),
        (iro + 8, 0),
    ];
    for i in 0..u64::from(cfg.nfr) {
        regs.push((fro + 16 * i, 0));
        regs.push((fro + 16 * i + 8, 0));
    }
    regs
}

fn read_all(d: &Driver, regs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    regs.iter()
        .map(|&(off, _)| {
            let size = if matches!(
                off,
                GSTS_REG
                    | FSTS_REG
                    | FECTL_REG
                    | FEDATA_REG
                    | FEADDR_REG
                    | FEUADDR_REG
                    | ICS_REG
                    | IECTL_REG
                    | IEDATA_REG
                    | IEADDR_REG
                    | IEUADDR_REG
            ) {
                4
            } else {
                8
            };
            (off, d.vtd.mmio_read(off, size))
        })
        .collect()
}

/// A unit programmed in scalable mode, with warm caches, a recorded fault, a queue error and
/// its interrupt registers set, is reset: every register reads its reset value, translation is
/// off, and a new boot that programs other tables for the same device, DID, PASID and address,
/// without any invalidation, gets the new translation from memory (a stale cache entry would
/// give the old one), and records its first fault in the first fault recording register.
#[test]
fn reset_restores_the_power_on_state_and_forgets_the_caches() {
    let mut d = scalable();
    let dev = sid(0, 6, 0);
    let mut t = d.ss_domain(2);
    d.map(&mut t, 0x20_0000, 0x7000_0000, 0x1000, RW);
    let dir = d.sm_context(dev, 0, false, 0);
    d.pasid_entry(dir, 0, ss_pasid(&t, 9));
    let req = DmaRequest::new(dev, 0x20_0010, 4, AccessKind::Read);
    assert_eq!(d.translate(req).unwrap().addr, 0x7000_0010);
    let (_, trace) = d.vtd.translate(&req);
    assert_eq!(trace.lookup(CacheId::Iotlb), Some(true), "warm");
    // A fault, a queue error and the interrupt registers programmed.
    d.read(dev, 0x30_0000).unwrap_err();
    d.submit(&[[0x4, 0]]);
    for (off, v) in [
        (FECTL_REG, 0),
        (FEDATA_REG, 0x41),
        (FEADDR_REG, 0xfee0_0000),
        (FEUADDR_REG, 1),
        (IECTL_REG, 0),
        (IEDATA_REG, 0x42),
        (IEADDR_REG, 0xfee0_1000),
        (IEUADDR_REG, 2),
    ] {
        d.w32(off, v);
    }
    let iro = u64::from(d.vtd.config().iro);
    d.w64(iro, 0x1234_5000);
    let regs = reset_values(&d);
    assert_ne!(read_all(&d, &regs), regs, "programmed");
    let (ver, cap, ecap) = (d.r32(VER_REG), d.r64(CAP_REG), d.r64(ECAP_REG));

    Unit::reset(&d.vtd);

    assert_eq!(read_all(&d, &regs), regs);
    assert_eq!(
        (d.r32(VER_REG), d.r64(CAP_REG), d.r64(ECAP_REG)),
        (ver, cap, ecap)
    );
    // Translation is off: DMA is not remapped.
    let off = d.translate(req).unwrap();
    assert!(off.identity);
    assert_eq!(off.addr, 0x20_0010);
    // The next boot: another root table and other tables, the same device, DID and address.
    d.gcmd = 0;
    d.set_root(true);
    d.enable_qi(true);
    let mut t2 = d.ss_domain(2);
    d.map(&mut t2, 0x20_0000, 0x7100_0000, 0x1000, RW);
    let dir2 = d.sm_context(dev, 0, false, 0);
    d.pasid_entry(dir2, 0, ss_pasid(&t2, 9));
    d.enable_translation();
    let (r, trace) = d.vtd.translate(&req);
    assert_eq!(r.unwrap().addr, 0x7100_0010);
    for cache in [CacheId::Context, CacheId::Pasid, CacheId::Iotlb] {
        assert_eq!(trace.lookup(cache), Some(false), "{cache:?} held nothing");
    }
    d.read(dev, 0x30_0000).unwrap_err();
    assert_eq!(d.frcd(0)[0], 0x30_0000, "recorded at the first register");
    assert_eq!((d.r32(FSTS_REG) >> FSTS_FRI_SHIFT) & 0xff, 0);
    // The counters keep counting across the reset (see `Unit::reset`).
    assert!(Unit::stats(&d.vtd).translations >= 6);
}

/// While one thread keeps translating, another resets the unit and programs the next boot's
/// tables, round after round: once a round's translation is enabled, no translation that starts
/// afterwards returns a page of an earlier boot (a walk that began before a reset must not
/// have left its result cached), though one may find translation off (the power-on state).
#[test]
fn no_translation_of_an_earlier_boot_after_a_concurrent_reset() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (mut d, _t, dev) = legacy_with_domain();
    let iova = 0x10_0000u64;
    let rounds = 40u64;
    // Boot g maps the page to 0xd000_0000 + g * 0x1000 through its own root table.
    let roots: Vec<u64> = (1..=rounds)
        .map(|g| {
            let mut t = d.ss_domain(2);
            d.map(&mut t, iova, 0xd000_0000 + g * 0x1000, 0x1000, RW);
            let (root, ctx) = (d.frame(), d.frame());
            d.mem.write_u64(root, ctx | 1).unwrap();
            let ce = ctx + u64::from(dev & 0xff) * 16;
            d.mem.write_u64(ce + 8, 2 | (5 << 8)).unwrap();
            d.mem.write_u64(ce, t.root() | 1).unwrap();
            root
        })
        .collect();
    let vtd = &d.vtd;
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            loop {
                let floor = done.load(Ordering::Acquire);
                let r = vtd
                    .translate(&DmaRequest::new(dev, iova, 4, AccessKind::Read))
                    .0;
                if let Ok(t) = r
                    && !t.identity
                    && floor > 0
                {
                    let g = t.addr.wrapping_sub(0xd000_0000) / 0x1000;
                    assert!(
                        t.addr >= 0xd000_0000 && g >= floor,
                        "{:#x} (boot {g}) seen after boot {floor} began",
                        t.addr
                    );
                }
                if floor >= rounds {
                    break;
                }
            }
        });
        for (g, root) in (1..=rounds).zip(&roots) {
            Unit::reset(vtd);
            vtd.mmio_write(RTADDR_REG, 8, *root);
            vtd.mmio_write(GCMD_REG, 4, u64::from(GCMD_SRTP));
            vtd.mmio_write(GCMD_REG, 4, u64::from(GCMD_TE));
            done.store(g, Ordering::Release);
        }
    });
}
