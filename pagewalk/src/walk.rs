//! The one-dimensional walker.
//!
//! A walk reads one 64-bit entry per level with an atomic load, decodes it with the format of
//! the [`WalkConfig`], accumulates permissions, sets accessed/dirty flags with a locked
//! compare-and-exchange where the format and its mode say so, and stops at a leaf or a fault.
//! Every iteration lowers the level, so a walk makes at most [`MAX_LEVELS`] entry reads whatever
//! the memory holds; A/D exchanges that lose a race are retried at most [`MAX_AD_RETRIES`] times.

use crate::format::{ADDR_MASK, Decoded, WalkConfig, bits};
use crate::mem::PhysMem;
use crate::observer::{MemRef, RefKind, TableVisit, WalkObserver};
use crate::types::{
    Access, Fault, FaultKind, MAX_LEVELS, Stage, Translation, WalkStart, level_index, level_shift,
};

/// How many times an A/D compare-and-exchange that found the entry changed is retried (each
/// retry re-checks the new value) before the walk gives up with
/// [`FaultKind::AdUpdateContention`].
pub const MAX_AD_RETRIES: u32 = 8;

/// Translates the address of each table a walk visits before it is read: the identity for a
/// one-dimensional walk, a second-stage walk for the first stage of a nested walk.
pub(crate) trait TableXlate<M: PhysMem + ?Sized, O: WalkObserver> {
    /// The system address of the table at `table`, which is at `level`.
    fn table(&mut self, mem: &M, obs: &mut O, table: u64, level: u8) -> Result<u64, Fault>;
    /// Called before an A/D write into the table last returned by [`TableXlate::table`].
    fn before_write(&mut self, mem: &M, obs: &mut O) -> Result<(), Fault>;
}

/// Tables live in the walked memory as addressed.
pub(crate) struct Direct;

impl<M: PhysMem + ?Sized, O: WalkObserver> TableXlate<M, O> for Direct {
    #[inline(always)]
    fn table(&mut self, _mem: &M, _obs: &mut O, table: u64, _level: u8) -> Result<u64, Fault> {
        Ok(table)
    }
    #[inline(always)]
    fn before_write(&mut self, _mem: &M, _obs: &mut O) -> Result<(), Fault> {
        Ok(())
    }
}

/// Walks the tables of `cfg` rooted at `root` for `input`.
///
/// The stage reported in the trace and in faults is the format's own
/// ([`crate::Format::stage`]).
#[inline]
pub fn walk<M: PhysMem + ?Sized, O: WalkObserver>(
    cfg: &WalkConfig,
    mem: &M,
    root: u64,
    input: u64,
    access: Access,
    obs: &mut O,
) -> Result<Translation, Fault> {
    walk_from(cfg, mem, cfg.root_start(root), input, access, obs)
}

/// Walks from an arbitrary level: the state a paging-structure-cache hit gives (`start.table` is
/// the table at `start.level`, `start.perms` what the levels above granted).
#[inline]
pub fn walk_from<M: PhysMem + ?Sized, O: WalkObserver>(
    cfg: &WalkConfig,
    mem: &M,
    start: WalkStart,
    input: u64,
    access: Access,
    obs: &mut O,
) -> Result<Translation, Fault> {
    walk_impl(
        cfg,
        cfg.format().stage(),
        mem,
        start,
        input,
        access,
        obs,
        &mut Direct,
    )
}

/// The walker proper, generic over how table addresses are reached.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn walk_impl<M: PhysMem + ?Sized, O: WalkObserver, X: TableXlate<M, O>>(
    cfg: &WalkConfig,
    stage: Stage,
    mem: &M,
    start: WalkStart,
    input: u64,
    access: Access,
    obs: &mut O,
    xlate: &mut X,
) -> Result<Translation, Fault> {
    let fault = |level: u8, kind: FaultKind, entry_addr: Option<u64>, entry: Option<u64>| Fault {
        stage,
        level,
        input,
        entry_addr,
        entry,
        kind,
        nested: None,
    };
    check_request(cfg, start, input, access).map_err(|k| fault(start.level, k, None, None))?;
    let write = access.is_write();
    let mut level = start.level;
    let mut table = start.table & ADDR_MASK;
    let mut perms = start.perms;
    // Each iteration either returns or moves to a strictly lower level.
    for _ in 0..MAX_LEVELS {
        let base = xlate.table(mem, obs, table, level)? & ADDR_MASK;
        let addr = base + level_index(level, input) * 8;
        obs.mem_ref(MemRef {
            stage,
            level,
            addr,
            kind: RefKind::Read,
        });
        let mut entry = mem
            .read_u64(addr)
            .map_err(|e| fault(level, FaultKind::MemoryRead(e), Some(addr), None))?;
        let mut retries = 0u32;
        loop {
            let f = |kind| fault(level, kind, Some(addr), Some(entry));
            let step = match cfg.decode(level, entry) {
                Decoded::NotPresent => return Err(f(FaultKind::NotPresent)),
                Decoded::Reserved => return Err(f(FaultKind::ReservedBit)),
                Decoded::BadLevel => return Err(f(FaultKind::BadLevel)),
                Decoded::Table {
                    next,
                    next_level,
                    perms: p,
                } => {
                    // AMD-Vi §2.2.3.1: the input bits of skipped levels must be zero.
                    if next_level + 1 < level
                        && input & bits(level_shift(level) - 1, level_shift(next_level + 1)) != 0
                    {
                        return Err(f(FaultKind::AddressBeyondWidth));
                    }
                    Step::Table {
                        next,
                        next_level,
                        perms: p,
                    }
                }
                Decoded::Leaf {
                    base,
                    shift,
                    perms: p,
                    force_coherent,
                } => {
                    if !cfg.permits(perms & p, access) {
                        return Err(f(FaultKind::Permission));
                    }
                    Step::Leaf {
                        base,
                        shift,
                        perms: p,
                        force_coherent,
                    }
                }
            };
            let ad = cfg.ad_bits(entry, matches!(step, Step::Leaf { .. }), write);
            if ad != 0 {
                xlate.before_write(mem, obs)?;
                obs.mem_ref(MemRef {
                    stage,
                    level,
                    addr,
                    kind: RefKind::AdUpdate,
                });
                match mem.compare_exchange_u64(addr, entry, entry | ad) {
                    Ok(Ok(_)) => entry |= ad,
                    Ok(Err(actual)) => {
                        retries += 1;
                        if retries > MAX_AD_RETRIES {
                            entry = actual;
                            return Err(fault(
                                level,
                                FaultKind::AdUpdateContention,
                                Some(addr),
                                Some(entry),
                            ));
                        }
                        log::trace!("A/D update raced at {addr:#x}: {entry:#x} -> {actual:#x}");
                        entry = actual;
                        continue;
                    }
                    Err(e) => {
                        return Err(fault(
                            level,
                            FaultKind::MemoryRead(e),
                            Some(addr),
                            Some(entry),
                        ));
                    }
                }
            }
            match step {
                Step::Table {
                    next,
                    next_level,
                    perms: p,
                } => {
                    perms &= p;
                    obs.table(TableVisit {
                        stage,
                        level,
                        prefix: input & !((1u64 << level_shift(level)) - 1),
                        next_table: next,
                        next_level,
                        perms,
                    });
                    table = next;
                    level = next_level;
                    break;
                }
                Step::Leaf {
                    base,
                    shift,
                    perms: p,
                    force_coherent,
                } => {
                    let mask = (1u64 << shift) - 1;
                    return Ok(Translation {
                        output: base | (input & mask),
                        page_shift: shift,
                        perms: perms & p,
                        force_coherent,
                        level,
                        entry_addr: addr,
                        entry,
                    });
                }
            }
        }
    }
    Err(fault(level, FaultKind::BadLevel, None, None))
}

/// The checks a walk makes before it reads anything: a valid start level, an input inside the
/// format's range, and a request the format's controls allow.
#[inline(always)]
fn check_request(
    cfg: &WalkConfig,
    start: WalkStart,
    input: u64,
    access: Access,
) -> Result<(), FaultKind> {
    if !cfg.levels_valid() || start.level == 0 || start.level > cfg.levels() {
        return Err(FaultKind::BadLevel);
    }
    if !cfg.input_in_range(input) {
        return Err(FaultKind::AddressBeyondWidth);
    }
    if !cfg.request_allowed(access) {
        return Err(FaultKind::Permission);
    }
    Ok(())
}

/// A valid entry, as the walker acts on it.
enum Step {
    Table {
        next: u64,
        next_level: u8,
        perms: crate::types::Perms,
    },
    Leaf {
        base: u64,
        shift: u8,
        perms: crate::types::Perms,
        force_coherent: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::amd_v1::{V1_A, V1_D, V1_IR, V1_IW, V1_PR};
    use crate::format::vtd_ss::{SS_A, SS_D, SS_PS, SS_R, SS_W, SS_X};
    use crate::format::x86::{X86_A, X86_D, X86_EA, X86_P, X86_PS, X86_RW, X86_US, X86_XD};
    use crate::format::{AmdV1Config, VtdSsConfig, X86Config};
    use crate::mem::test_support::Racy;
    use crate::mem::{MemError, SparseMem};
    use crate::observer::RecordingTrace;
    use crate::types::{AccessKind, Perms};

    /// Writes `entry` at index `idx` of the table at `table`.
    fn put(mem: &SparseMem, table: u64, idx: u64, entry: u64) -> u64 {
        let a = table + idx * 8;
        mem.write_u64(a, entry).unwrap();
        a
    }

    const IOVA: u64 = 0x0000_7abc_de12_3456;

    fn idx(level: u8) -> u64 {
        level_index(level, IOVA)
    }

    /// A 4-level VT-d SS hierarchy for IOVA: root 0x1000, then 0x2000, 0x3000, 0x4000 and a
    /// 4 KiB page at 0x9_9000 with `leaf_bits`.
    fn vtd_ss_tables(mem: &SparseMem, leaf_bits: u64) -> [u64; 4] {
        [
            put(mem, 0x1000, idx(4), 0x2000 | SS_R | SS_W | SS_X),
            put(mem, 0x2000, idx(3), 0x3000 | SS_R | SS_W | SS_X),
            put(mem, 0x3000, idx(2), 0x4000 | SS_R | SS_W | SS_X),
            put(mem, 0x4000, idx(1), 0x9_9000 | leaf_bits),
        ]
    }

    /// A zero-length read (VT-d CAP.ZLR) reads nothing: a write-only page allows it, a page
    /// with neither permission does not, and it sets the accessed flag but never the dirty
    /// flag. First-stage pages are readable whenever present, so it is a read there.
    #[test]
    fn zero_length_reads_need_read_or_write_permission() {
        let zlr = Access {
            kind: AccessKind::ZeroLengthRead,
            privileged: false,
        };
        let mem = SparseMem::new(1 << 30);
        let addrs = vtd_ss_tables(&mem, SS_W);
        let mut ss = VtdSsConfig::new(4);
        ss.slade = true;
        let cfg = WalkConfig::VtdSecondStage(ss);
        let mut tr = RecordingTrace::<16>::new();
        let t = walk(&cfg, &mem, 0x1000, IOVA, zlr, &mut tr).unwrap();
        assert_eq!(t.output, 0x9_9456);
        assert!(!t.perms.read() && t.perms.write());
        assert_eq!(mem.read_u64(addrs[3]).unwrap() & (SS_A | SS_D), SS_A);
        let e = walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut tr).unwrap_err();
        assert_eq!(e.kind, FaultKind::Permission);
        assert!(cfg.permits(Perms::W, zlr) && !cfg.permits(Perms::NONE, zlr));
        let fs = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4));
        assert!(fs.permits(Perms::R | Perms::U, zlr));
        assert!(!fs.permits(Perms::R, zlr), "U/S still applies");
    }

    #[test]
    fn vtd_ss_four_level_walk_and_trace() {
        let mem = SparseMem::new(1 << 30);
        let addrs = vtd_ss_tables(&mem, SS_R | SS_W);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let mut tr = RecordingTrace::<16>::new();
        let t = walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut tr).unwrap();
        assert_eq!(t.output, 0x9_9456);
        assert_eq!(t.page_shift, 12);
        assert_eq!(t.perms, Perms::R | Perms::W | Perms::X | Perms::U);
        assert_eq!(t.level, 1);
        assert_eq!(t.entry_addr, addrs[3]);
        let refs: Vec<_> = tr
            .refs()
            .iter()
            .map(|r| (r.stage, r.level, r.addr, r.kind))
            .collect();
        assert_eq!(
            refs,
            vec![
                (Stage::Second, 4, addrs[0], RefKind::Read),
                (Stage::Second, 3, addrs[1], RefKind::Read),
                (Stage::Second, 2, addrs[2], RefKind::Read),
                (Stage::Second, 1, addrs[3], RefKind::Read),
            ]
        );
        let visits = tr.visits();
        assert_eq!(visits.len(), 3);
        assert_eq!(visits[0].level, 4);
        assert_eq!(visits[0].prefix, IOVA & !((1 << 39) - 1));
        assert_eq!(visits[0].next_table, 0x2000);
        assert_eq!(visits[2].prefix, IOVA & !((1 << 21) - 1));
        assert_eq!(visits[2].next_level, 1);
        // No A/D without SLADE: memory unchanged.
        assert_eq!(mem.read_u64(addrs[3]).unwrap(), 0x9_9000 | SS_R | SS_W);
        // Execute without SLEE follows R.
        assert!(walk(&cfg, &mem, 0x1000, IOVA, Access::EXECUTE, &mut ()).is_ok());
    }

    #[test]
    fn vtd_ss_faults() {
        let mem = SparseMem::new(1 << 30);
        let addrs = vtd_ss_tables(&mem, SS_R);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut ()).unwrap_err();
        assert_eq!(
            err,
            Fault {
                stage: Stage::Second,
                level: 1,
                input: IOVA,
                entry_addr: Some(addrs[3]),
                entry: Some(0x9_9000 | SS_R),
                kind: FaultKind::Permission,
                nested: None,
            }
        );
        // Beyond the 48-bit width.
        let err = walk(&cfg, &mem, 0x1000, 1 << 48, Access::READ, &mut ()).unwrap_err();
        assert_eq!(
            (err.kind, err.level, err.entry_addr),
            (FaultKind::AddressBeyondWidth, 4, None)
        );
        // Not present at level 3.
        mem.write_u64(addrs[1], 0x3000).unwrap();
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut ()).unwrap_err();
        assert_eq!(
            (err.kind, err.level, err.entry),
            (FaultKind::NotPresent, 3, Some(0x3000))
        );
        // Reserved bit 62 at level 3.
        mem.write_u64(addrs[1], 0x3000 | SS_R | (1 << 62)).unwrap();
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut ()).unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::ReservedBit, 3));
        // A table pointer out of memory.
        mem.write_u64(addrs[1], (1 << 40) | SS_R).unwrap();
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut ()).unwrap_err();
        let a = (1u64 << 40) + idx(2) * 8;
        assert_eq!(err.kind, FaultKind::MemoryRead(MemError::Unmapped(a)));
        assert_eq!((err.level, err.entry_addr, err.entry), (2, Some(a), None));
        // Starting at a level the format does not have.
        let err = walk_from(
            &cfg,
            &mem,
            WalkStart {
                level: 5,
                table: 0x1000,
                perms: Perms::ALL,
            },
            IOVA,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!(err.kind, FaultKind::BadLevel);
        // An invalid level count in the config.
        let bad = WalkConfig::VtdSecondStage(VtdSsConfig::new(2));
        assert_eq!(
            walk(&bad, &mem, 0x1000, 0, Access::READ, &mut ())
                .unwrap_err()
                .kind,
            FaultKind::BadLevel
        );
    }

    #[test]
    fn vtd_ss_superpages_and_start_from_cache_state() {
        let mem = SparseMem::new(1 << 32);
        put(&mem, 0x1000, idx(4), 0x2000 | SS_R | SS_W);
        put(&mem, 0x2000, idx(3), 0x3000 | SS_R);
        put(&mem, 0x3000, idx(2), 0x8000_0000 | SS_PS | SS_R | SS_W);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let t = walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut ()).unwrap();
        assert_eq!(t.page_shift, 21);
        assert_eq!(t.output, 0x8000_0000 | (IOVA & 0x1f_ffff));
        // Read-only level 3 makes the whole translation read-only.
        assert!(!t.perms.write());
        // From a paging-structure-cache hit at level 2 with R/W: one read, writable.
        let mut tr = RecordingTrace::<8>::new();
        let start = WalkStart {
            level: 2,
            table: 0x3000,
            perms: Perms::ALL,
        };
        let t = walk_from(&cfg, &mem, start, IOVA, Access::WRITE, &mut tr).unwrap();
        assert!(t.perms.write());
        assert_eq!(tr.refs().len(), 1);
        assert_eq!(tr.refs()[0].addr, 0x3000 + idx(2) * 8);
        // With cached read-only permissions the write faults at the leaf.
        let start = WalkStart {
            perms: Perms::R | Perms::U,
            ..start
        };
        let err = walk_from(&cfg, &mem, start, IOVA, Access::WRITE, &mut ()).unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::Permission, 2));
        // 1 GiB leaf at level 3, 3-level table.
        let cfg3 = WalkConfig::VtdSecondStage(VtdSsConfig::new(3));
        let iova = 0x47_1234_5678u64;
        put(
            &mem,
            0x5000,
            level_index(3, iova),
            0x4000_0000 | SS_PS | SS_R,
        );
        let t = walk(&cfg3, &mem, 0x5000, iova, Access::READ, &mut ()).unwrap();
        assert_eq!(
            (t.page_shift, t.output),
            (30, 0x4000_0000 | (iova & 0x3fff_ffff))
        );
    }

    #[test]
    fn vtd_ss_ad_updates_with_slade() {
        let mem = SparseMem::new(1 << 30);
        let addrs = vtd_ss_tables(&mem, SS_R | SS_W);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_slade(true));
        let mut tr = RecordingTrace::<16>::new();
        walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut tr).unwrap();
        for a in &addrs {
            let e = mem.read_u64(*a).unwrap();
            assert_eq!(e & (SS_A | SS_D), SS_A, "{a:#x}");
        }
        assert_eq!(tr.refs().len(), 8);
        assert_eq!(
            tr.refs()
                .iter()
                .filter(|r| r.kind == RefKind::AdUpdate)
                .count(),
            4
        );
        // Second read: nothing to update.
        tr.clear();
        walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut tr).unwrap();
        assert_eq!(tr.refs().len(), 4);
        // A write sets D on the leaf only.
        tr.clear();
        let t = walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut tr).unwrap();
        assert_eq!(tr.refs().len(), 5);
        assert_eq!(t.entry & SS_D, SS_D);
        for a in &addrs[..3] {
            assert_eq!(mem.read_u64(*a).unwrap() & SS_D, 0);
        }
        assert_eq!(mem.read_u64(addrs[3]).unwrap() & SS_D, SS_D);
        // A faulting write does not set D.
        mem.write_u64(addrs[3], 0x9_9000 | SS_R | SS_A).unwrap();
        walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut ()).unwrap_err();
        assert_eq!(mem.read_u64(addrs[3]).unwrap(), 0x9_9000 | SS_R | SS_A);
    }

    #[test]
    fn ad_update_retries_on_race_and_rechecks() {
        let inner = SparseMem::new(1 << 30);
        let addrs = vtd_ss_tables(&inner, SS_R | SS_W);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_slade(true));
        // The leaf's ignored bit 10 flips twice under us: two retries, then success.
        let mem = Racy {
            inner,
            addr: addrs[3],
            races: 2.into(),
            flip: 1 << 10,
        };
        let mut tr = RecordingTrace::<32>::new();
        let t = walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut tr).unwrap();
        assert_eq!(t.entry, 0x9_9000 | SS_R | SS_W | SS_A | SS_D);
        let leaf_cas = tr
            .refs()
            .iter()
            .filter(|r| r.level == 1 && r.kind == RefKind::AdUpdate);
        assert_eq!(leaf_cas.count(), 3);
        // W is revoked by the racing writer: the retry re-checks and faults, nothing set.
        mem.inner
            .write_u64(addrs[3], 0x9_9000 | SS_R | SS_W)
            .unwrap();
        let mem = Racy {
            flip: SS_W,
            races: 1.into(),
            ..mem
        };
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut ()).unwrap_err();
        assert_eq!(err.kind, FaultKind::Permission);
        assert_eq!(mem.inner.read_u64(addrs[3]).unwrap(), 0x9_9000 | SS_R);
        // Endless racing: bounded, typed fault.
        mem.inner
            .write_u64(addrs[3], 0x9_9000 | SS_R | SS_W)
            .unwrap();
        let mem = Racy {
            flip: 1 << 10,
            races: 1000.into(),
            ..mem
        };
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::WRITE, &mut ()).unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::AdUpdateContention, 1));
        assert_eq!(mem.races.get(), 1000 - (MAX_AD_RETRIES + 1));
    }

    #[test]
    fn x86_first_stage_walk_permissions_and_ad() {
        let mem = SparseMem::new(1 << 30);
        let nl = X86_P | X86_RW | X86_US;
        let a = [
            put(&mem, 0x1000, idx(4), 0x2000 | nl),
            put(&mem, 0x2000, idx(3), 0x3000 | nl),
            put(&mem, 0x3000, idx(2), 0x4000 | X86_P | X86_RW),
            put(&mem, 0x4000, idx(1), 0x7000 | X86_P | X86_RW | X86_XD),
        ];
        let fs = X86Config {
            sre: true,
            ere: true,
            eafe: true,
            ..X86Config::vtd_first_stage(4)
        };
        let cfg = WalkConfig::VtdFirstStage(fs);
        // The PDE is supervisor-only: user requests fault at the leaf (where rights are checked).
        let err = walk(&cfg, &mem, 0x1000, IOVA, Access::READ, &mut ()).unwrap_err();
        assert_eq!(
            (err.stage, err.kind, err.level),
            (Stage::First, FaultKind::Permission, 1)
        );
        // Non-leaf A (and EA with EAFE) were set on the way; the leaf was not touched.
        for x in &a[..3] {
            assert_eq!(mem.read_u64(*x).unwrap() & (X86_A | X86_EA), X86_A | X86_EA);
        }
        assert_eq!(mem.read_u64(a[3]).unwrap() & X86_A, 0);
        // A supervisor write succeeds: A, EA and D on the leaf.
        let t = walk(
            &cfg,
            &mem,
            0x1000,
            IOVA,
            Access::WRITE.supervisor(),
            &mut (),
        )
        .unwrap();
        assert_eq!(t.output, 0x7456);
        assert_eq!(t.perms, Perms::R | Perms::W);
        assert_eq!(t.entry & (X86_A | X86_D | X86_EA), X86_A | X86_D | X86_EA);
        // XD at the leaf refuses execute.
        let err = walk(
            &cfg,
            &mem,
            0x1000,
            IOVA,
            Access::EXECUTE.supervisor(),
            &mut (),
        )
        .unwrap_err();
        assert_eq!(err.kind, FaultKind::Permission);
        // SRE off: supervisor requests fault before any read.
        let strict = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4));
        let mut tr = RecordingTrace::<4>::new();
        let err = walk(
            &strict,
            &mem,
            0x1000,
            IOVA,
            Access::READ.supervisor(),
            &mut tr,
        )
        .unwrap_err();
        assert_eq!((err.kind, err.entry_addr), (FaultKind::Permission, None));
        assert!(tr.refs().is_empty());
        // Non-canonical input.
        let err = walk(
            &cfg,
            &mem,
            0x1000,
            0x0000_8000_0000_0000,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!(err.kind, FaultKind::AddressBeyondWidth);
        // Canonical upper half is fine to walk (entry 511 of the root, not present here).
        let err = walk(
            &cfg,
            &mem,
            0x1000,
            0xffff_8000_0000_0000,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::NotPresent, 4));
    }

    #[test]
    fn x86_large_pages_and_five_levels() {
        let mem = SparseMem::new(1 << 30);
        let iova: u64 = 0x00ab_cdef_1234_5678;
        let nl = X86_P | X86_RW | X86_US | X86_A;
        put(&mem, 0x1000, level_index(5, iova), 0x2000 | nl);
        put(&mem, 0x2000, level_index(4, iova), 0x3000 | nl);
        put(
            &mem,
            0x3000,
            level_index(3, iova),
            0xc000_0000 | X86_PS | nl,
        );
        let cfg = WalkConfig::AmdV2(X86Config::amd_v2(5));
        let mut tr = RecordingTrace::<8>::new();
        let t = walk(&cfg, &mem, 0x1000, iova, Access::READ, &mut tr).unwrap();
        assert_eq!((t.page_shift, t.level), (30, 3));
        assert_eq!(t.output, 0xc000_0000 | (iova & 0x3fff_ffff));
        assert_eq!(tr.refs().len(), 3);
        assert_eq!(tr.refs()[0].stage, Stage::First);
        // 4-level tables cannot translate a 57-bit address.
        let cfg4 = WalkConfig::AmdV2(X86Config::amd_v2(4));
        assert_eq!(
            walk(&cfg4, &mem, 0x1000, iova, Access::READ, &mut ())
                .unwrap_err()
                .kind,
            FaultKind::AddressBeyondWidth
        );
        // AMD64: bit 8 of a PML5E/PML4E is MBZ (VT-d first-stage ignores it).
        mem.write_u64(0x1000 + level_index(5, iova) * 8, 0x2000 | nl | (1 << 8))
            .unwrap();
        let err = walk(&cfg, &mem, 0x1000, iova, Access::READ, &mut ()).unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::ReservedBit, 5));
        let vtd = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(5));
        assert!(walk(&vtd, &mem, 0x1000, iova, Access::READ, &mut ()).is_ok());
        // Reserved PS in the PML5E.
        mem.write_u64(0x1000 + level_index(5, iova) * 8, 0x2000 | nl | X86_PS)
            .unwrap();
        let err = walk(&cfg, &mem, 0x1000, iova, Access::READ, &mut ()).unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::ReservedBit, 5));
    }

    #[test]
    fn amd_v1_skipping_sized_pages_and_dte_perms() {
        let mem = SparseMem::new(1 << 30);
        // Mode 4, root at 0x1000; the level-4 PDE skips straight to a level-2 table.
        let iova: u64 = 0x0000_0000_3fe1_2345; // bits 47:30 zero: skipped level 3 resolves 0.
        put(&mem, 0x1000, 0, 0x2000 | V1_PR | (2 << 9) | V1_IR | V1_IW);
        // Level-2 PDE -> level-1 table with 64 KiB pages (NL=7, 3 ones from bit 12).
        put(
            &mem,
            0x2000,
            level_index(2, iova),
            0x3000 | V1_PR | (1 << 9) | V1_IR | V1_IW,
        );
        let leaf = 0x50_0000 | 0x7000 | V1_PR | (7 << 9) | V1_IR | V1_IW | (1 << 60);
        for i in 0..16 {
            put(&mem, 0x3000, (level_index(1, iova) & !15) + i, leaf);
        }
        let cfg = WalkConfig::AmdV1(AmdV1Config::new(4));
        let mut tr = RecordingTrace::<8>::new();
        let t = walk(&cfg, &mem, 0x1000, iova, Access::WRITE, &mut tr).unwrap();
        assert_eq!(t.page_shift, 16);
        assert_eq!(t.output, 0x50_0000 | (iova & 0xffff));
        assert!(t.force_coherent);
        assert_eq!(tr.refs().len(), 3);
        assert_eq!(tr.visits()[0].next_level, 2);
        // Non-zero bits in the skipped level 3 fault.
        let err = walk(&cfg, &mem, 0x1000, iova | (1 << 30), Access::READ, &mut ()).unwrap_err();
        assert_eq!((err.kind, err.level), (FaultKind::AddressBeyondWidth, 4));
        // DTE IW=0: writes refused at the leaf, reads fine.
        let ro = WalkConfig::AmdV1(AmdV1Config::new(4).with_perms(true, false));
        assert_eq!(
            walk(&ro, &mem, 0x1000, iova, Access::WRITE, &mut ())
                .unwrap_err()
                .kind,
            FaultKind::Permission
        );
        assert!(
            walk(
                &ro,
                &mem,
                0x1000,
                iova,
                Access {
                    kind: AccessKind::Execute,
                    privileged: true
                },
                &mut ()
            )
            .is_ok()
        );
        // HAD: A on each level, D on the leaf for writes.
        let had = WalkConfig::AmdV1(AmdV1Config::new(4).with_had(true));
        let t = walk(&had, &mem, 0x1000, iova, Access::WRITE, &mut ()).unwrap();
        assert_eq!(t.entry & (V1_A | V1_D), V1_A | V1_D);
        assert_eq!(mem.read_u64(0x1000).unwrap() & (V1_A | V1_D), V1_A);
        // Mode 4 cannot translate bit 48.
        assert_eq!(
            walk(&cfg, &mem, 0x1000, 1 << 48, Access::READ, &mut ())
                .unwrap_err()
                .kind,
            FaultKind::AddressBeyondWidth
        );
        // A PDE whose Next Level is not below its own level.
        mem.write_u64(0x1000, 0x2000 | V1_PR | (4 << 9) | V1_IR)
            .unwrap();
        let err = walk(&cfg, &mem, 0x1000, iova, Access::READ, &mut ()).unwrap_err();
        assert_eq!(
            (err.kind, err.level, err.entry_addr),
            (FaultKind::BadLevel, 4, Some(0x1000))
        );
    }

    #[test]
    fn amd_v1_mode_six_and_mode_one() {
        let mem = SparseMem::new(1 << 30);
        let iova = 0xfedc_ba98_7654_3210u64;
        let mut table = 0x1000;
        for level in (2..=6).rev() {
            let next = table + 0x1000;
            put(
                &mem,
                table,
                level_index(level, iova),
                next | V1_PR | (u64::from(level - 1) << 9) | V1_IR,
            );
            table = next;
        }
        put(&mem, table, level_index(1, iova), 0x42_0000 | V1_PR | V1_IR);
        let cfg = WalkConfig::AmdV1(AmdV1Config::new(6));
        let mut tr = RecordingTrace::<8>::new();
        let t = walk(&cfg, &mem, 0x1000, iova, Access::READ, &mut tr).unwrap();
        assert_eq!(t.output, 0x42_0210);
        assert_eq!(tr.refs().len(), 6);
        assert_eq!(tr.refs()[0].addr, 0x1000 + 0x7f * 8);
        // Mode 1: a single 4 KiB-entry table covering 2 MiB.
        let m1 = WalkConfig::AmdV1(AmdV1Config::new(1));
        put(&mem, 0x20_0000, 3, 0x77_7000 | V1_PR | V1_IR | V1_IW);
        let t = walk(&m1, &mem, 0x20_0000, 0x3abc, Access::WRITE, &mut ()).unwrap();
        assert_eq!(t.output, 0x77_7abc);
        assert_eq!(
            walk(&m1, &mem, 0x20_0000, 1 << 21, Access::READ, &mut ())
                .unwrap_err()
                .kind,
            FaultKind::AddressBeyondWidth
        );
        // Modes 0 and 7 are not table modes.
        for mode in [0, 7] {
            let c = WalkConfig::AmdV1(AmdV1Config::new(mode));
            assert_eq!(
                walk(&c, &mem, 0x1000, 0, Access::READ, &mut ())
                    .unwrap_err()
                    .kind,
                FaultKind::BadLevel
            );
        }
    }

    #[test]
    fn self_referencing_tables_terminate() {
        // Every entry of the one table points at the table itself: the walk is bounded.
        let mem = SparseMem::new(1 << 20);
        for i in 0..512 {
            mem.write_u64(0x1000 + i * 8, 0x1000 | V1_PR | (5 << 9) | V1_IR)
                .unwrap();
        }
        let cfg = WalkConfig::AmdV1(AmdV1Config::new(6));
        let err = walk(&cfg, &mem, 0x1000, 0, Access::READ, &mut ()).unwrap_err();
        assert_eq!(err.kind, FaultKind::BadLevel);
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(5));
        for i in 0..512 {
            mem.write_u64(0x1000 + i * 8, 0x1000 | SS_R).unwrap();
        }
        let mut tr = RecordingTrace::<16>::new();
        // Level 1 reads the table as a PTE page: 0x1000 | R maps, so it translates after
        // exactly five reads.
        let t = walk(&ss, &mem, 0x1000, 0, Access::READ, &mut tr).unwrap();
        assert_eq!((t.output, tr.refs().len()), (0x1000, 5));
    }
}
