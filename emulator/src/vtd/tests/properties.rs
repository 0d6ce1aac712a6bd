//! Properties: random table edits and invalidations against an independent model.

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Map { page: u64, frame: u64, write: bool },
    Unmap { page: u64 },
    Translate { page: u64, write: bool },
    Attach { dev: u8, domain: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..16u64, 0..64u64, any::<bool>()).prop_map(|(page, frame, write)| Op::Map {
            page,
            frame,
            write
        }),
        (0..16u64).prop_map(|page| Op::Unmap { page }),
        (0..16u64, any::<bool>()).prop_map(|(page, write)| Op::Translate { page, write }),
        (0..3u8, 0..2u8).prop_map(|(dev, domain)| Op::Attach { dev, domain }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random programming with the invalidations the spec requires never yields a translation
    /// the current tables would not give.
    #[test]
    fn translations_follow_the_tables(ops in proptest::collection::vec(op(), 1..60)) {
        let mut d = Driver::legacy();
        d.enable_qi(false);
        let mut doms = [d.ss_domain(2), d.ss_domain(2)];
        let mut maps: [std::collections::BTreeMap<u64, (u64, bool)>; 2] = Default::default();
        let mut attached = [0usize; 3];
        let devs = [sid(0, 1, 0), sid(0, 2, 0), sid(1, 0, 0)];
        for (i, dev) in devs.iter().enumerate() {
            let root = doms[0].root();
            d.legacy_context(*dev, root | 1, 2 | (1 << 8));
            attached[i] = 0;
        }
        d.enable_translation();
        for op in ops {
            match op {
                Op::Map { page, frame, write } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].contains_key(&page) {
                            continue;
                        }
                        let perms = if write { RW } else { R };
                        let phys = 0x8000_0000 + frame * 0x1000 + (k as u64) * 0x100_0000;
                        dom.map(d.mem, &mut d.alloc, page << 12, phys, 0x1000, perms,
                                PageSizePolicy::Fixed(12)).unwrap();
                        maps[k].insert(page, (phys, write));
                        // Not-present to present needs no invalidation (CAP.CM = 0).
                    }
                }
                Op::Unmap { page } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].remove(&page).is_some() {
                            dom.unmap(d.mem, &mut d.alloc, page << 12, 0x1000).unwrap();
                            d.submit_and_wait(&[iotlb_page(k as u16 + 1, page << 12, 0, false)]);
                        }
                    }
                }
                Op::Attach { dev, domain } => {
                    let dev = usize::from(dev);
                    let k = usize::from(domain);
                    let root = doms[k].root();
                    d.legacy_context(devs[dev], root | 1, 2 | ((k as u64 + 1) << 8));
                    let old = attached[dev] as u16 + 1;
                    d.submit_and_wait(&[cc_device(old, devs[dev], 0), iotlb_domain(old)]);
                    attached[dev] = k;
                }
                Op::Translate { page, write } => {
                    for (i, dev) in devs.iter().enumerate() {
                        let k = attached[i];
                        let access = if write { AccessKind::Write } else { AccessKind::Read };
                        let r = d.translate(DmaRequest::new(*dev, (page << 12) | 0x18, 4, access));
                        match maps[k].get(&page) {
                            Some((phys, w)) if *w || !write => {
                                let t = r.unwrap();
                                prop_assert_eq!(t.addr, phys | 0x18);
                                prop_assert_eq!(t.domain_id, k as u16 + 1);
                            }
                            Some(_) => prop_assert_eq!(r.unwrap_err().code, 0x5),
                            None => {
                                let f = r.unwrap_err();
                                prop_assert_eq!(f.code, if write { 0x5 } else { 0x6 });
                            }
                        }
                    }
                }
            }
        }
        let _ = &mut doms;
    }

    /// Scalable mode, first-stage tables per PASID: random maps, unmaps and PASID-entry
    /// switches, each followed by the PASID-based invalidations the spec requires, never yield a
    /// translation the current tables would not give.
    #[test]
    fn first_stage_translations_follow_the_tables(
        ops in proptest::collection::vec(op(), 1..50),
    ) {
        let mut d = scalable();
        let dev = sid(0, 5, 0);
        let dir = d.sm_context(dev, 0, true, 0);
        let mut doms = [d.fs_domain(), d.fs_domain()];
        let mut maps: [std::collections::BTreeMap<u64, (u64, bool)>; 2] = Default::default();
        // PASID p (1..=3) uses tables `bound[p - 1]`, with DID 10 + table index.
        let mut bound = [0usize; 3];
        for p in 1..=3u32 {
            d.pasid_entry(dir, p, fs_pasid(&doms[0], 10, true, false));
        }
        let user = PwPerms::U;
        for op in ops {
            match op {
                Op::Map { page, frame, write } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].contains_key(&page) {
                            continue;
                        }
                        let perms = if write { RW | user } else { R | user };
                        let phys = 0x8000_0000 + frame * 0x1000 + (k as u64) * 0x100_0000;
                        dom.map(d.mem, &mut d.alloc, page << 12, phys, 0x1000, perms,
                                PageSizePolicy::Fixed(12)).unwrap();
                        maps[k].insert(page, (phys, write));
                    }
                }
                Op::Unmap { page } => {
                    for (k, dom) in doms.iter_mut().enumerate() {
                        if maps[k].remove(&page).is_some() {
                            dom.unmap(d.mem, &mut d.alloc, page << 12, 0x1000).unwrap();
                            let descs: Vec<[u64; 2]> = (1..=3u32)
                                .filter(|p| bound[*p as usize - 1] == k)
                                .map(|p| piotlb_page(10 + k as u16, p, page << 12, 0))
                                .collect();
                            d.submit_and_wait(&descs);
                        }
                    }
                }
                Op::Attach { dev: p, domain } => {
                    let p = u32::from(p) + 1;
                    let k = usize::from(domain);
                    let old = 10 + bound[p as usize - 1] as u16;
                    d.pasid_entry(dir, p, fs_pasid(&doms[k], 10 + k as u16, true, false));
                    d.submit_and_wait(&[pc_pasid(old, p), piotlb_pasid(old, p)]);
                    bound[p as usize - 1] = k;
                }
                Op::Translate { page, write } => {
                    for p in 1..=3u32 {
                        let k = bound[p as usize - 1];
                        let access = if write { AccessKind::Write } else { AccessKind::Read };
                        let req = DmaRequest::new(dev, (page << 12) | 0x28, 4, access).with_pasid(p);
                        let r = d.translate(req);
                        match maps[k].get(&page) {
                            Some((phys, w)) if *w || !write => {
                                let t = r.unwrap();
                                prop_assert_eq!(t.addr, phys | 0x28);
                                prop_assert_eq!(t.domain_id, 10 + k as u16);
                            }
                            Some(_) => prop_assert_eq!(r.unwrap_err().code, 0x85),
                            None => prop_assert_eq!(r.unwrap_err().code, 0x71),
                        }
                    }
                }
            }
        }
    }

    /// A queue of random valid and invalid descriptors runs exactly up to the first invalid
    /// one: every wait descriptor before it writes its status, none after it does, IQH stops at
    /// it with IQE set and a fault event raised.
    #[test]
    fn queue_runs_up_to_the_first_invalid_descriptor(
        kinds in proptest::collection::vec(0u8..6, 1..40),
    ) {
        let mut d = Driver::legacy();
        d.enable_qi(false);
        d.w32(FECTL_REG, 0);
        let status = d.status;
        let mut descs = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let slot = status + 4 * i as u64;
            d.mem.write_u32(slot, 0).unwrap();
            descs.push(match k {
                0 => wait_desc(false, true, i as u32 + 1, slot),
                1 => iotlb_domain(3),
                2 => cc_global(),
                3 => [0x4, 0],                       // interrupt entry cache: invalid type
                4 => [0x2 | (1 << 4) | (1 << 8), 0], // reserved bit
                _ => wait_desc(false, true, i as u32 + 1, slot),
            });
        }
        d.submit(&descs);
        let first_bad = kinds.iter().position(|k| *k == 3 || *k == 4);
        for (i, k) in kinds.iter().enumerate() {
            let ran = first_bad.is_none_or(|b| i < b);
            let written = d.mem.read_u32(status + 4 * i as u64).unwrap();
            if *k == 0 || *k == 5 {
                prop_assert_eq!(written == i as u32 + 1, ran, "descriptor {}", i);
            }
        }
        match first_bad {
            Some(b) => {
                prop_assert_eq!(d.r64(IQH_REG), 16 * b as u64);
                prop_assert_ne!(d.r32(FSTS_REG) & FSTS_IQE, 0);
                let iqei = if kinds[b] == 3 { IQEI_INVALID_TYPE } else { IQEI_RESERVED };
                prop_assert_eq!(d.r64(IQERCD_REG) & 0xf, iqei);
                prop_assert_eq!(d.take_events().len(), 1);
            }
            None => {
                prop_assert_eq!(d.r64(IQH_REG), d.iq_tail);
                prop_assert_eq!(d.r32(FSTS_REG) & FSTS_IQE, 0);
                prop_assert!(d.take_events().is_empty());
            }
        }
    }

    /// Arbitrary register writes never panic and leave the unit answering.
    #[test]
    fn arbitrary_register_writes_never_panic(
        writes in proptest::collection::vec((0u64..0x400, any::<bool>(), any::<u64>()), 1..64),
    ) {
        let mut d = Driver::new(VtdConfig::default());
        // Give the queue and root table real memory sometimes.
        let q = d.frame();
        d.w64(IQA_REG, q);
        for (off, wide, v) in writes {
            let (off, size) = if wide { (off & !7, 8) } else { (off & !3, 4) };
            d.vtd.mmio_write(off, size, v);
            let _ = d.vtd.mmio_read(off, size);
        }
        let _ = d.translate(DmaRequest::new(0x100, 0x1000, 4, AccessKind::Read));
    }

    /// Whatever the memory-resident structures hold, translation returns a translation or a
    /// typed fault and never panics; a fault of a structure entry is recorded with its SID.
    #[test]
    fn random_structures_never_panic(
        scalable in any::<bool>(),
        words in proptest::collection::vec(any::<u64>(), 16),
        pointer_bits in proptest::collection::vec(0u64..0x100, 8),
        pasid in proptest::option::of(0u32..0x100),
        addr in any::<u64>(),
        access in 0u8..4,
        privileged in any::<bool>(),
    ) {
        let mut d = Driver::new(VtdConfig::default());
        d.set_root(scalable);
        d.enable_translation();
        // Random entries: root entry of bus 0, context entry of devfn 8, a PASID directory and
        // table (pointers are steered into memory half of the time).
        let steer = |w: u64, k: usize| if pointer_bits[k] & 1 == 0 {
            (w & 0xfff) | ((pointer_bits[k] << 12) + TABLES.0)
        } else {
            w
        };
        d.mem.write_u64(d.root, steer(words[0], 0)).unwrap();
        d.mem.write_u64(d.root + 8, steer(words[1], 1)).unwrap();
        for (k, w) in words.iter().enumerate().skip(2) {
            let target = TABLES.0 + (pointer_bits[k % 8] << 12) + ((k as u64) % 8) * 8;
            d.mem.write_u64(target, steer(*w, k % 8)).unwrap();
        }
        let access = [AccessKind::Read, AccessKind::Write, AccessKind::Atomic, AccessKind::Execute]
            [usize::from(access)];
        let mut req = DmaRequest::new(sid(0, 1, 0), addr, 8, access);
        req.pasid = pasid;
        req.privileged = privileged;
        let (r, trace) = d.vtd.translate(&req);
        prop_assert!(trace.dropped() == 0);
        if let Err(f) = r {
            prop_assert!(f.code != 0);
            if f.recorded {
                let [_, hi] = d.frcd(0);
                prop_assert_eq!(hi & 0xffff, u64::from(req.source_id));
                prop_assert_eq!((hi >> 32) & 0xff, u64::from(f.code));
            }
        }
    }
}
