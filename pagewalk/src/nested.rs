//! The two-dimensional (nested) walker.
//!
//! A first-stage walk whose table pointers and final output are guest-physical: before each
//! first-stage table is read, its address goes through a full second-stage walk, and so does the
//! first-stage output (VT-d spec rev 4.1 §3.8 "Nested Translation"; AMD IOMMU spec §2.2.7
//! "Nested Address Translation"). Uncached, an `n`-level first stage over an `m`-level second
//! stage makes `n * m + n + m` reads: 24 for 4 over 4, 35 for 5 over 5.
//!
//! Pairings hardware uses: VT-d first-stage over VT-d second-stage, AMD-Vi v2 over v1, and
//! AMD-Vi v2 with the host table disabled ([`SecondStage::Identity`], the "direct-mapped" v2
//! domains). The walker itself composes any first-stage format over any second-stage format.
//!
//! Each second-stage walk can start below the root: [`walk_nested_cached`] asks a
//! [`SecondStageStart`] (a second-stage paging-structure cache, VT-d §6.2.5 in nested mode,
//! Bhargava et al.'s 2D page-walk caches) where to begin, for every first-stage table address
//! and for the final output; the second-stage non-leaf entries the walks visit are reported to
//! the observer with [`Stage::Second`], to fill such a cache.
//!
//! First-stage A/D updates are writes to guest memory: they need write permission in the second
//! stage (a second-stage permission fault otherwise) and, where the second stage updates A/D,
//! set its dirty flag.

use crate::format::{Decoded, WalkConfig};
use crate::mem::{MemError, PhysMem};
use crate::observer::{MemRef, RefKind, WalkObserver};
use crate::types::{Access, Fault, FaultKind, NestedPhase, Perms, Stage, Translation, WalkStart};
use crate::walk::{MAX_AD_RETRIES, TableXlate, walk_impl};

/// The second stage of a nested walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondStage {
    /// Guest-physical addresses go through these tables.
    Tables {
        /// The second-stage format and controls.
        config: WalkConfig,
        /// Root table (system physical).
        root: u64,
    },
    /// Guest-physical equals system-physical (AMD-Vi v2 with the host table disabled).
    Identity,
}

/// The result of a nested walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedTranslation {
    /// System physical output address.
    pub output: u64,
    /// log2 of the effective page size: the smaller of the two stages' pages.
    pub page_shift: u8,
    /// Effective permissions: the intersection of both stages'.
    pub perms: Perms,
    /// AMD-Vi v1 FC of the second-stage leaf.
    pub force_coherent: bool,
    /// The first-stage translation (its output is guest-physical, its entry address
    /// system-physical).
    pub first: Translation,
    /// The second-stage translation of the first stage's output (`None` with
    /// [`SecondStage::Identity`]).
    pub second: Option<Translation>,
}

/// Walks `first` (rooted at the guest-physical `first_root`) over `second` for `input`.
#[inline]
pub fn walk_nested<M: PhysMem + ?Sized, O: WalkObserver>(
    first: &WalkConfig,
    first_root: u64,
    second: &SecondStage,
    mem: &M,
    input: u64,
    access: Access,
    obs: &mut O,
) -> Result<NestedTranslation, Fault> {
    walk_nested_from(
        first,
        first.root_start(first_root),
        second,
        mem,
        input,
        access,
        obs,
    )
}

/// Like [`walk_nested`], starting the first stage at `start` (a first-stage paging-structure
/// cache hit; `start.table` is guest-physical). Every second-stage walk starts at the root.
#[inline]
pub fn walk_nested_from<M: PhysMem + ?Sized, O: WalkObserver>(
    first: &WalkConfig,
    start: WalkStart,
    second: &SecondStage,
    mem: &M,
    input: u64,
    access: Access,
    obs: &mut O,
) -> Result<NestedTranslation, Fault> {
    walk_nested_cached(first, start, second, mem, input, access, obs, &mut FromRoot)
}

/// Where a second-stage walk inside a nested walk starts: the caller's second-stage
/// paging-structure cache.
pub trait SecondStageStart<O: ?Sized> {
    /// The start of the second-stage walk of the guest-physical `gpa` (a cached non-leaf
    /// entry's next table, its level and the permissions accumulated above it), or `None` for
    /// the second stage's root. `obs` is the walk's observer, so a cache lookup can record
    /// itself where the walk's references go.
    fn start(&mut self, obs: &mut O, gpa: u64) -> Option<WalkStart>;
}

/// Every second-stage walk starts at the root (no second-stage cache).
#[derive(Debug, Clone, Copy, Default)]
pub struct FromRoot;

impl<O: ?Sized> SecondStageStart<O> for FromRoot {
    #[inline(always)]
    fn start(&mut self, _obs: &mut O, _gpa: u64) -> Option<WalkStart> {
        None
    }
}

/// Like [`walk_nested_from`], starting each second-stage walk (of every first-stage table
/// address and of the final output) where `ss_start` says. With [`SecondStage::Identity`]
/// `ss_start` is never asked.
#[allow(clippy::too_many_arguments)]
pub fn walk_nested_cached<M: PhysMem + ?Sized, O: WalkObserver, S: SecondStageStart<O>>(
    first: &WalkConfig,
    start: WalkStart,
    second: &SecondStage,
    mem: &M,
    input: u64,
    access: Access,
    obs: &mut O,
    ss_start: &mut S,
) -> Result<NestedTranslation, Fault> {
    match *second {
        SecondStage::Identity => {
            let t = walk_impl(
                first,
                Stage::First,
                mem,
                start,
                input,
                access,
                obs,
                &mut crate::walk::Direct,
            )?;
            Ok(NestedTranslation {
                output: t.output,
                page_shift: t.page_shift,
                perms: t.perms,
                force_coherent: false,
                first: t,
                second: None,
            })
        }
        SecondStage::Tables { config, root } => {
            let mut x = SecondStageXlate {
                config: &config,
                root,
                starts: &mut *ss_start,
                last: None,
                last_input: 0,
                last_level: 0,
            };
            let t = walk_impl(first, Stage::First, mem, start, input, access, obs, &mut x)?;
            let s_start = ss_start
                .start(obs, t.output)
                .unwrap_or_else(|| config.root_start(root));
            let s = walk_impl(
                &config,
                Stage::Second,
                mem,
                s_start,
                t.output,
                access,
                obs,
                &mut crate::walk::Direct,
            )
            .map_err(|f| Fault {
                nested: Some(NestedPhase::FinalOutput),
                ..f
            })?;
            Ok(NestedTranslation {
                output: s.output,
                page_shift: t.page_shift.min(s.page_shift),
                perms: t.perms & s.perms,
                force_coherent: s.force_coherent,
                first: t,
                second: Some(s),
            })
        }
    }
}

/// Translates first-stage table addresses through the second stage.
struct SecondStageXlate<'a, S: ?Sized> {
    config: &'a WalkConfig,
    root: u64,
    starts: &'a mut S,
    last: Option<Translation>,
    last_input: u64,
    last_level: u8,
}

impl<M: PhysMem + ?Sized, O: WalkObserver, S: SecondStageStart<O> + ?Sized> TableXlate<M, O>
    for SecondStageXlate<'_, S>
{
    #[inline]
    fn table(&mut self, mem: &M, obs: &mut O, table: u64, level: u8) -> Result<u64, Fault> {
        let start = self
            .starts
            .start(obs, table)
            .unwrap_or_else(|| self.config.root_start(self.root));
        let t = walk_impl(
            self.config,
            Stage::Second,
            mem,
            start,
            table,
            Access::READ,
            obs,
            &mut crate::walk::Direct,
        )
        .map_err(|f| Fault {
            nested: Some(NestedPhase::FirstStageTable { level }),
            ..f
        })?;
        self.last = Some(t);
        self.last_input = table;
        self.last_level = level;
        Ok(t.output)
    }

    fn before_write(&mut self, mem: &M, obs: &mut O) -> Result<(), Fault> {
        let Some(mut t) = self.last else {
            return Ok(());
        };
        let input = self.last_input;
        let phase = NestedPhase::FirstStageAdUpdate {
            level: self.last_level,
        };
        let fault = |t: &Translation, kind| Fault {
            stage: Stage::Second,
            level: t.level,
            input,
            entry_addr: Some(t.entry_addr),
            entry: Some(t.entry),
            kind,
            nested: Some(phase),
        };
        if !self.config.permits(t.perms, Access::WRITE) {
            return Err(fault(&t, FaultKind::Permission));
        }
        for _ in 0..=MAX_AD_RETRIES {
            let ad = self.config.ad_bits(t.entry, true, true);
            if ad == 0 {
                self.last = Some(t);
                return Ok(());
            }
            obs.mem_ref(MemRef {
                stage: Stage::Second,
                level: t.level,
                addr: t.entry_addr,
                kind: RefKind::AdUpdate,
            });
            match mem.compare_exchange_u64(t.entry_addr, t.entry, t.entry | ad) {
                Ok(Ok(_)) => {
                    t.entry |= ad;
                    self.last = Some(t);
                    return Ok(());
                }
                Ok(Err(actual)) => {
                    // Re-check the changed leaf: it must still map the same page writably.
                    let old = t.entry;
                    t.entry = actual;
                    match self.config.decode(t.level, actual) {
                        Decoded::Leaf {
                            base, shift, perms, ..
                        } if base == (t.output & !((1u64 << shift) - 1))
                            && shift == t.page_shift =>
                        {
                            if !perms.write() {
                                return Err(fault(&t, FaultKind::Permission));
                            }
                            log::trace!("second-stage D update raced: {old:#x} -> {actual:#x}");
                        }
                        Decoded::NotPresent => return Err(fault(&t, FaultKind::NotPresent)),
                        Decoded::Reserved => return Err(fault(&t, FaultKind::ReservedBit)),
                        Decoded::BadLevel => return Err(fault(&t, FaultKind::BadLevel)),
                        // Remapped (another page, or now a table pointer) under the update.
                        Decoded::Leaf { .. } | Decoded::Table { .. } => {
                            return Err(fault(&t, FaultKind::AdUpdateContention));
                        }
                    }
                }
                Err(e) => return Err(fault(&t, FaultKind::MemoryRead(e))),
            }
        }
        Err(fault(&t, FaultKind::AdUpdateContention))
    }
}

/// Guest-physical memory seen through second-stage tables: every access is translated by a
/// one-dimensional second-stage walk (reads need R, writes and exchanges need W). A failed
/// translation reads as [`MemError::Unmapped`] at the guest-physical address.
///
/// Lets the one-dimensional walker and the table builder work on first-stage tables that live in
/// guest memory, e.g. to check that a nested walk equals the composition of two 1D walks.
#[derive(Debug, Clone, Copy)]
pub struct SecondStageView<'a, M: ?Sized> {
    /// The system memory.
    pub mem: &'a M,
    /// The second-stage configuration.
    pub config: WalkConfig,
    /// The second-stage root.
    pub root: u64,
}

impl<M: PhysMem + ?Sized> SecondStageView<'_, M> {
    fn xlate(&self, gpa: u64, access: Access) -> Result<u64, MemError> {
        crate::walk::walk(&self.config, self.mem, self.root, gpa, access, &mut ())
            .map(|t| t.output)
            .map_err(|_| MemError::Unmapped(gpa))
    }
}

impl<M: PhysMem + ?Sized> PhysMem for SecondStageView<'_, M> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        self.mem.read_u64(self.xlate(addr, Access::READ)?)
    }
    fn write_u64(&self, addr: u64, val: u64) -> Result<(), MemError> {
        self.mem.write_u64(self.xlate(addr, Access::WRITE)?, val)
    }
    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        self.mem
            .compare_exchange_u64(self.xlate(addr, Access::WRITE)?, current, new)
    }
    fn write_u32(&self, addr: u64, val: u32) -> Result<(), MemError> {
        self.mem.write_u32(self.xlate(addr, Access::WRITE)?, val)
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        self.mem.read_u32(self.xlate(addr, Access::READ)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{BumpAllocator, PageSizePolicy, TableBuilder};
    use crate::format::{AmdV1Config, VtdSsConfig, X86Config};
    use crate::mem::SparseMem;
    use crate::mem::test_support::Racy;
    use crate::observer::{RecordingTrace, TableVisit};
    use crate::types::{Access, level_index};
    use crate::walk::walk;

    const FS_GPA_TABLES: (u64, u64) = (0x10_0000, 0x20_0000);
    const DATA_GPA: u64 = 0x30_0000;
    const DATA_SPA: u64 = 0x5000_0000;

    struct World {
        mem: SparseMem,
        ss: WalkConfig,
        ss_root: u64,
        fs: WalkConfig,
        fs_root: u64,
    }

    /// Second stage maps the first-stage table region and one data page, 4 KiB pages only (so
    /// every second-stage walk is full depth) with `table_perms` for the table region.
    fn world(fs: WalkConfig, ss: WalkConfig, iova: u64, table_perms: Perms) -> World {
        let mem = SparseMem::new(1 << 40);
        let mut ss_alloc = BumpAllocator::new(0x100_0000, 0x200_0000);
        let mut ssb = TableBuilder::new(ss, &mem, &mut ss_alloc).unwrap();
        let (lo, hi) = FS_GPA_TABLES;
        let fixed = PageSizePolicy::Fixed(12);
        ssb.map(
            &mem,
            &mut ss_alloc,
            lo,
            0x4000_0000,
            hi - lo,
            Perms::RW,
            fixed,
        )
        .unwrap();
        ssb.map(
            &mem,
            &mut ss_alloc,
            DATA_GPA,
            DATA_SPA,
            0x1000,
            Perms::RW,
            fixed,
        )
        .unwrap();
        let view = SecondStageView {
            mem: &mem,
            config: ss,
            root: ssb.root(),
        };
        let mut fs_alloc = BumpAllocator::new(lo, hi);
        let mut fsb = TableBuilder::new(fs, &view, &mut fs_alloc).unwrap();
        fsb.map(
            &view,
            &mut fs_alloc,
            iova & !0xfff,
            DATA_GPA,
            0x1000,
            Perms::RW | Perms::U,
            fixed,
        )
        .unwrap();
        let fs_root = fsb.root();
        if table_perms != Perms::RW {
            // Re-map the table region with the requested permissions.
            ssb.unmap(&mem, &mut ss_alloc, lo, hi - lo).unwrap();
            ssb.map(
                &mem,
                &mut ss_alloc,
                lo,
                0x4000_0000,
                hi - lo,
                table_perms,
                fixed,
            )
            .unwrap();
        }
        World {
            ss_root: ssb.root(),
            mem,
            ss,
            fs,
            fs_root,
        }
    }

    fn no_ad_fs(levels: u8) -> WalkConfig {
        WalkConfig::VtdFirstStage(X86Config {
            ad: false,
            ..X86Config::vtd_first_stage(levels)
        })
    }

    /// The exact trace a nested walk must make, built from one-dimensional walks.
    fn expected_trace(w: &World, iova: u64) -> Vec<MemRef> {
        let mut out = Vec::new();
        let ss1d = |gpa: u64, out: &mut Vec<MemRef>| {
            let mut t = RecordingTrace::<8>::new();
            let r = walk(&w.ss, &w.mem, w.ss_root, gpa, Access::READ, &mut t).unwrap();
            out.extend_from_slice(t.refs());
            r.output
        };
        let mut table = w.fs_root;
        for level in (1..=w.fs.levels()).rev() {
            let spa = ss1d(table, &mut out);
            let addr = spa + level_index(level, iova) * 8;
            out.push(MemRef {
                stage: Stage::First,
                level,
                addr,
                kind: RefKind::Read,
            });
            table = w.mem.read_u64(addr).unwrap() & 0x000f_ffff_ffff_f000;
        }
        // `table` now holds the leaf's output page.
        ss1d(table | (iova & 0xfff), &mut out);
        out
    }

    fn check_exact_trace(levels: u8, expected_reads: usize) {
        let iova = 0x00ab_cdef_1234_5678 & ((1u64 << (12 + 9 * levels as u32 - 1)) - 1);
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(levels));
        let w = world(no_ad_fs(levels), ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        let mut tr = RecordingTrace::<64>::new();
        let t = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova,
            Access::WRITE,
            &mut tr,
        )
        .unwrap();
        assert_eq!(t.output, DATA_SPA | (iova & 0xfff));
        assert_eq!(t.page_shift, 12);
        assert_eq!(t.first.output, DATA_GPA | (iova & 0xfff));
        assert_eq!(tr.reads(), expected_reads);
        assert_eq!(tr.refs().len(), expected_reads);
        assert_eq!(tr.refs(), &expected_trace(&w, iova)[..]);
        // Stage/level shape: (m second-stage reads, then one first-stage read) n times, then m.
        let shape: Vec<(Stage, u8)> = tr.refs().iter().map(|r| (r.stage, r.level)).collect();
        let mut want = Vec::new();
        for fl in (1..=levels).rev() {
            want.extend((1..=levels).rev().map(|l| (Stage::Second, l)));
            want.push((Stage::First, fl));
        }
        want.extend((1..=levels).rev().map(|l| (Stage::Second, l)));
        assert_eq!(shape, want);
        // First-stage non-leaf visits report guest-physical next tables.
        let fs_visits: Vec<&TableVisit> = tr
            .visits()
            .iter()
            .filter(|v| v.stage == Stage::First)
            .collect();
        assert_eq!(fs_visits.len(), levels as usize - 1);
        for v in fs_visits {
            assert!(v.next_table >= FS_GPA_TABLES.0 && v.next_table < FS_GPA_TABLES.1);
        }
    }

    /// A second-stage cache holding, for every guest-physical address, the entry that points
    /// at its leaf table (found by a one-dimensional walk, outside the walk's trace); counts
    /// the starts it was asked for.
    struct LeafTableStarts<'w> {
        w: &'w World,
        asked: Vec<u64>,
    }

    impl<O: WalkObserver> SecondStageStart<O> for LeafTableStarts<'_> {
        fn start(&mut self, _obs: &mut O, gpa: u64) -> Option<WalkStart> {
            self.asked.push(gpa);
            let mut t = RecordingTrace::<8>::new();
            walk(
                &self.w.ss,
                &self.w.mem,
                self.w.ss_root,
                gpa,
                Access::READ,
                &mut t,
            )
            .ok()?;
            let v = t.visits().last()?;
            Some(WalkStart {
                level: v.next_level,
                table: v.next_table,
                perms: v.perms,
            })
        }
    }

    /// With every second-stage walk started at its leaf table, a 4-over-4 walk reads the four
    /// first-stage entries and one second-stage leaf per table address and for the output:
    /// 9 reads instead of 24, with the same result; the cache is asked once per second-stage
    /// walk, in walk order, and nothing is asked over the identity.
    #[test]
    fn cached_second_stage_starts_leave_one_read_per_second_stage_walk() {
        let iova = 0x0000_1234_5678_9000u64;
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let w = world(no_ad_fs(4), ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        let mut cold = RecordingTrace::<64>::new();
        let want = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova,
            Access::WRITE,
            &mut cold,
        );
        let mut starts = LeafTableStarts {
            w: &w,
            asked: Vec::new(),
        };
        let mut tr = RecordingTrace::<64>::new();
        let got = walk_nested_cached(
            &w.fs,
            w.fs.root_start(w.fs_root),
            &second,
            &w.mem,
            iova,
            Access::WRITE,
            &mut tr,
            &mut starts,
        );
        assert_eq!(got, want);
        assert_eq!(got.unwrap().output, DATA_SPA);
        let shape: Vec<(Stage, u8)> = tr.refs().iter().map(|r| (r.stage, r.level)).collect();
        let mut expect = Vec::new();
        for fl in (1..=4).rev() {
            expect.push((Stage::Second, 1));
            expect.push((Stage::First, fl));
        }
        expect.push((Stage::Second, 1));
        assert_eq!(shape, expect);
        // The leaf reads are the cold walk's own.
        let leaves = |t: &RecordingTrace<64>| -> Vec<MemRef> {
            t.refs()
                .iter()
                .filter(|r| r.level == 1 || r.stage == Stage::First)
                .copied()
                .collect()
        };
        assert_eq!(leaves(&tr), leaves(&cold));
        // Asked for the four first-stage tables' addresses (guest-physical), then the output.
        assert_eq!(starts.asked.len(), 5);
        assert!(
            starts.asked[..4]
                .iter()
                .all(|&t| (FS_GPA_TABLES.0..FS_GPA_TABLES.1).contains(&t))
        );
        assert_eq!(starts.asked[4], DATA_GPA);
        // No second-stage non-leaf entry visited: the walks started below them all.
        assert!(tr.visits().iter().all(|v| v.stage == Stage::First));
        // The cold walk reports the second-stage entries it visited, for a cache to keep.
        assert_eq!(
            cold.visits()
                .iter()
                .filter(|v| v.stage == Stage::Second)
                .count(),
            5 * 3
        );

        // Over the identity there is no second-stage walk to start.
        let mut never = LeafTableStarts {
            w: &w,
            asked: Vec::new(),
        };
        let _ = walk_nested_cached(
            &w.fs,
            w.fs.root_start(w.fs_root),
            &SecondStage::Identity,
            &w.mem,
            iova,
            Access::READ,
            &mut (),
            &mut never,
        );
        assert!(never.asked.is_empty());
    }

    #[test]
    fn four_over_four_makes_exactly_24_reads() {
        check_exact_trace(4, 24);
    }

    #[test]
    fn five_over_five_makes_exactly_35_reads() {
        check_exact_trace(5, 35);
    }

    #[test]
    fn amd_v2_over_v1_and_over_identity() {
        let iova = 0x7f12_3456_7000;
        let v2 = WalkConfig::AmdV2(X86Config {
            ad: false,
            ..X86Config::amd_v2(4)
        });
        let v1 = WalkConfig::AmdV1(AmdV1Config::new(3));
        let w = world(v2, v1, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: v1,
            root: w.ss_root,
        };
        let mut tr = RecordingTrace::<64>::new();
        let t = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova | 0x10,
            Access::READ,
            &mut tr,
        )
        .unwrap();
        assert_eq!(t.output, DATA_SPA | 0x10);
        // 4 first-stage reads, 5 three-level host walks.
        assert_eq!(tr.reads(), 4 + 5 * 3);
        assert_eq!(tr.refs(), &expected_trace(&w, iova | 0x10)[..]);

        // Direct-mapped: the same first-stage tables placed at their guest addresses in system
        // memory, walked with no host table.
        let mem = SparseMem::new(1 << 40);
        let mut a = BumpAllocator::new(0x10_0000, 0x20_0000);
        let mut b = TableBuilder::new(v2, &mem, &mut a).unwrap();
        b.map(
            &mem,
            &mut a,
            iova,
            0x9_9000,
            0x1000,
            Perms::R | Perms::U,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        let mut tr = RecordingTrace::<8>::new();
        let t = walk_nested(
            &v2,
            b.root(),
            &SecondStage::Identity,
            &mem,
            iova | 8,
            Access::READ,
            &mut tr,
        )
        .unwrap();
        let one = walk(&v2, &mem, b.root(), iova | 8, Access::READ, &mut ()).unwrap();
        assert_eq!(t.first, one);
        assert_eq!((t.output, t.second), (0x9_9008, None));
        assert_eq!(tr.reads(), 4);
        assert!(tr.refs().iter().all(|r| r.stage == Stage::First));
    }

    #[test]
    fn faults_name_their_stage() {
        let iova = 0x1234_5000;
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let w = world(no_ad_fs(4), ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        // First-stage not present.
        let e = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova + 0x1000,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!(
            (e.stage, e.kind, e.level),
            (Stage::First, FaultKind::NotPresent, 1)
        );
        assert_eq!(e.input, iova + 0x1000);
        // First-stage root not mapped in the second stage.
        let e = walk_nested(
            &w.fs,
            0x80_0000,
            &second,
            &w.mem,
            iova,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!(
            (e.stage, e.kind, e.input),
            (Stage::Second, FaultKind::NotPresent, 0x80_0000)
        );
        assert_eq!(e.nested, Some(NestedPhase::FirstStageTable { level: 4 }));
        // Final output refused by a read-only second stage.
        let ro = world(no_ad_fs(4), ss, iova, Perms::RW);
        let mut a = BumpAllocator::new(0x180_0000, 0x190_0000);
        let mut b = TableBuilder::with_root(ss, ro.ss_root).unwrap();
        b.unmap(&ro.mem, &mut a, DATA_GPA, 0x1000).unwrap();
        b.map(
            &ro.mem,
            &mut a,
            DATA_GPA,
            DATA_SPA,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        let second = SecondStage::Tables {
            config: ss,
            root: ro.ss_root,
        };
        let e = walk_nested(
            &ro.fs,
            ro.fs_root,
            &second,
            &ro.mem,
            iova,
            Access::WRITE,
            &mut (),
        )
        .unwrap_err();
        assert_eq!(
            (e.stage, e.kind, e.level),
            (Stage::Second, FaultKind::Permission, 1)
        );
        assert_eq!(e.input, DATA_GPA);
        assert_eq!(e.nested, Some(NestedPhase::FinalOutput));
        let t = walk_nested(
            &ro.fs,
            ro.fs_root,
            &second,
            &ro.mem,
            iova,
            Access::READ,
            &mut (),
        )
        .unwrap();
        assert!(!t.perms.write() && t.first.perms.write());
    }

    #[test]
    fn first_stage_ad_needs_second_stage_write_and_sets_its_dirty_flag() {
        let iova = 0x1234_5000;
        let fs = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4));
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_slade(true));
        // Table region read-only in the second stage: the first A update faults there.
        let w = world(fs, ss, iova, Perms::R);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        let e = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!((e.stage, e.kind), (Stage::Second, FaultKind::Permission));
        assert_eq!(e.input, w.fs_root);
        assert_eq!(e.nested, Some(NestedPhase::FirstStageAdUpdate { level: 4 }));
        // Writable: first-stage A/D get set, and the second-stage leaves of the table pages get
        // A and D.
        let w = world(fs, ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        let mut tr = RecordingTrace::<128>::new();
        let t = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova,
            Access::WRITE,
            &mut tr,
        )
        .unwrap();
        assert_eq!(t.first.entry & 0x60, 0x60, "first-stage leaf A and D");
        let root_leaf = walk(&ss, &w.mem, w.ss_root, w.fs_root, Access::READ, &mut ()).unwrap();
        assert_eq!(
            root_leaf.entry & 0x300,
            0x300,
            "second-stage A and D on the FS root page"
        );
        let data = walk(&ss, &w.mem, w.ss_root, DATA_GPA, Access::READ, &mut ()).unwrap();
        assert_eq!(
            data.entry & 0x300,
            0x300,
            "second-stage A and D on the written page"
        );
        // A second identical walk reads only: 24 reads, no updates.
        tr.clear();
        walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova,
            Access::WRITE,
            &mut tr,
        )
        .unwrap();
        assert_eq!((tr.refs().len(), tr.reads()), (24, 24));
    }

    #[test]
    fn second_stage_view_translates_accesses() {
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let w = world(no_ad_fs(4), ss, 0, Perms::R);
        let view = SecondStageView {
            mem: &w.mem,
            config: ss,
            root: w.ss_root,
        };
        w.mem.write_u64(DATA_SPA + 8, 77).unwrap();
        assert_eq!(view.read_u64(DATA_GPA + 8), Ok(77));
        assert_eq!(view.read_u32(DATA_GPA + 8), Ok(77));
        view.write_u64(DATA_GPA, 5).unwrap();
        assert_eq!(w.mem.read_u64(DATA_SPA), Ok(5));
        view.write_u32(DATA_GPA + 4, 1).unwrap();
        assert_eq!(
            view.compare_exchange_u64(DATA_GPA, 1, 2),
            Ok(Err(5 | (1 << 32)))
        );
        // Read-only table region refuses writes; unmapped GPAs fail.
        assert_eq!(
            view.write_u64(FS_GPA_TABLES.0, 1),
            Err(MemError::Unmapped(FS_GPA_TABLES.0))
        );
        assert_eq!(view.read_u64(0x90_0000), Err(MemError::Unmapped(0x90_0000)));
    }

    #[test]
    fn nested_walk_from_a_first_stage_cache_hit() {
        let iova = 0x0000_1234_5678_9000;
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        let w = world(no_ad_fs(4), ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        // A full walk reports the first-stage non-leaf entries (guest-physical next tables) and
        // the second-stage ones too, each with its stage.
        let mut full = RecordingTrace::<64>::new();
        let t = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &w.mem,
            iova,
            Access::READ,
            &mut full,
        )
        .unwrap();
        let fs_visits: Vec<TableVisit> = full
            .visits()
            .iter()
            .filter(|v| v.stage == Stage::First)
            .copied()
            .collect();
        assert_eq!(
            fs_visits.iter().map(|v| v.level).collect::<Vec<_>>(),
            vec![4, 3, 2]
        );
        assert!(full.visits().iter().any(|v| v.stage == Stage::Second));
        // Start where the level-2 visit points: the level-1 table, as a PSC hit would.
        let pde = fs_visits[2];
        let start = WalkStart {
            level: pde.next_level,
            table: pde.next_table,
            perms: pde.perms,
        };
        let mut tr = RecordingTrace::<64>::new();
        let t2 =
            walk_nested_from(&w.fs, start, &second, &w.mem, iova, Access::READ, &mut tr).unwrap();
        assert_eq!((t2.output, t2.perms), (t.output, t.perms));
        // One first-stage level: (4 + 1) + 4 reads.
        assert_eq!(tr.reads(), 9);
        assert_eq!(tr.refs(), &full.refs()[15..]);
    }

    #[test]
    fn identity_second_stage_with_first_stage_ad() {
        // AMD-Vi v2 with the host table disabled: A/D land directly in system memory.
        let mem = SparseMem::new(1 << 40);
        let v2 = WalkConfig::AmdV2(X86Config::amd_v2(4));
        let mut a = BumpAllocator::new(0x10_0000, 0x20_0000);
        let mut b = TableBuilder::new(v2, &mem, &mut a).unwrap();
        b.map(
            &mem,
            &mut a,
            0x40_0000,
            0x80_0000,
            0x1000,
            Perms::RW | Perms::U,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        let mut tr = RecordingTrace::<16>::new();
        let t = walk_nested(
            &v2,
            b.root(),
            &SecondStage::Identity,
            &mem,
            0x40_0010,
            Access::WRITE,
            &mut tr,
        )
        .unwrap();
        assert_eq!(t.output, 0x80_0010);
        assert_eq!(t.first.entry & 0x60, 0x60);
        assert_eq!(tr.reads(), 4);
        assert_eq!(
            tr.refs()
                .iter()
                .filter(|r| r.kind == RefKind::AdUpdate)
                .count(),
            4
        );
    }

    #[test]
    fn amd_v2_over_an_identity_v1_table_matches_the_disabled_host_table() {
        // "Direct-mapped" v2 domains: the host table maps guest-physical 1:1 (here with the
        // largest pages), or is disabled; either way the same translation, different traces.
        let mem = SparseMem::new(1 << 40);
        let v2 = WalkConfig::AmdV2(X86Config::amd_v2(4));
        let v1 = WalkConfig::AmdV1(AmdV1Config::new(3));
        let mut host_alloc = BumpAllocator::new(0x100_0000, 0x110_0000);
        let mut host = TableBuilder::new(v1, &mem, &mut host_alloc).unwrap();
        host.map(
            &mem,
            &mut host_alloc,
            0,
            0,
            1 << 32,
            Perms::RW,
            PageSizePolicy::LARGEST,
        )
        .unwrap();
        let mut a = BumpAllocator::new(0x10_0000, 0x20_0000);
        let mut g = TableBuilder::new(v2, &mem, &mut a).unwrap();
        g.map(
            &mem,
            &mut a,
            0x7f00_0000_0000,
            0x1234_5000,
            0x3000,
            Perms::RW | Perms::U,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        let tables = SecondStage::Tables {
            config: v1,
            root: host.root(),
        };
        for off in [0u64, 0x1008, 0x2ff8] {
            let iova = 0x7f00_0000_0000 + off;
            let mut t1 = RecordingTrace::<64>::new();
            let mut t2 = RecordingTrace::<64>::new();
            let a1 =
                walk_nested(&v2, g.root(), &tables, &mem, iova, Access::WRITE, &mut t1).unwrap();
            let a2 = walk_nested(
                &v2,
                g.root(),
                &SecondStage::Identity,
                &mem,
                iova,
                Access::WRITE,
                &mut t2,
            )
            .unwrap();
            assert_eq!(a1.output, 0x1234_5000 + off);
            assert_eq!((a1.output, a1.perms), (a2.output, a2.perms));
            // One 4 GiB host page (Next Level 7 at level 3, four replicated PTEs): every host
            // walk stops at level 3 after one read.
            assert_eq!(t1.reads(), 4 + 5);
            assert_eq!(t2.reads(), 4);
            assert_eq!((a1.page_shift, a1.second.unwrap().page_shift), (12, 32));
        }
    }

    #[test]
    fn second_stage_dirty_update_for_first_stage_ad_retries_and_rechecks() {
        let iova = 0x1234_5000;
        let fs = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4));
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_slade(true));
        let w = world(fs, ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        // The second-stage leaf that maps the first-stage root page.
        let leaf = walk(&ss, &w.mem, w.ss_root, w.fs_root, Access::READ, &mut ()).unwrap();
        // Building the tables through the view set A and D; leave A only, so that the first
        // exchange on this entry is the D update for the first-stage A/D write.
        w.mem
            .write_u64(leaf.entry_addr, leaf.entry & !(1 << 9))
            .unwrap();
        // An ignored bit (10) changes under the first D update: retried, then done.
        let racy = Racy {
            inner: &w.mem,
            addr: leaf.entry_addr,
            flip: 1 << 10,
            races: 1.into(),
        };
        let mut tr = RecordingTrace::<128>::new();
        walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &racy,
            iova,
            Access::READ,
            &mut tr,
        )
        .unwrap();
        let e = w.mem.read_u64(leaf.entry_addr).unwrap();
        assert_eq!(
            e & ((1 << 8) | (1 << 9) | (1 << 10)),
            (1 << 8) | (1 << 9) | (1 << 10)
        );

        // W revoked under the D update: a second-stage permission fault in the A/D phase, and
        // the first-stage entry is left without A.
        let w = world(fs, ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        let leaf = walk(&ss, &w.mem, w.ss_root, w.fs_root, Access::READ, &mut ()).unwrap();
        // Building the tables through the view set A and D; leave A only, so that the first
        // exchange on this entry is the D update for the first-stage A/D write.
        w.mem
            .write_u64(leaf.entry_addr, leaf.entry & !(1 << 9))
            .unwrap();
        let racy = Racy {
            inner: &w.mem,
            addr: leaf.entry_addr,
            flip: 1 << 1,
            races: 1.into(),
        };
        let f = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &racy,
            iova,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!((f.stage, f.kind), (Stage::Second, FaultKind::Permission));
        assert_eq!(f.nested, Some(NestedPhase::FirstStageAdUpdate { level: 4 }));
        let view = SecondStageView {
            mem: &w.mem,
            config: ss,
            root: w.ss_root,
        };
        let root_entry = view.read_u64(w.fs_root + level_index(4, iova) * 8).unwrap();
        assert_eq!(root_entry & 0x20, 0, "first-stage A not set");

        // The page remapped elsewhere under the update: the changed leaf is refused.
        let w = world(fs, ss, iova, Perms::RW);
        let second = SecondStage::Tables {
            config: ss,
            root: w.ss_root,
        };
        let leaf = walk(&ss, &w.mem, w.ss_root, w.fs_root, Access::READ, &mut ()).unwrap();
        // Building the tables through the view set A and D; leave A only, so that the first
        // exchange on this entry is the D update for the first-stage A/D write.
        w.mem
            .write_u64(leaf.entry_addr, leaf.entry & !(1 << 9))
            .unwrap();
        let racy = Racy {
            inner: &w.mem,
            addr: leaf.entry_addr,
            flip: 1 << 20,
            races: 1.into(),
        };
        let f = walk_nested(
            &w.fs,
            w.fs_root,
            &second,
            &racy,
            iova,
            Access::READ,
            &mut (),
        )
        .unwrap_err();
        assert_eq!(
            (f.stage, f.kind),
            (Stage::Second, FaultKind::AdUpdateContention)
        );
    }
}
