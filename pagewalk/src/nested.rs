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
//! First-stage A/D updates are writes to guest memory: they need write permission in the second
//! stage (a second-stage permission fault otherwise) and, where the second stage updates A/D,
//! set its dirty flag.

use crate::format::{Decoded, WalkConfig};
use crate::mem::{MemError, PhysMem};
use crate::observer::{MemRef, RefKind, WalkObserver};
use crate::types::{Access, Fault, FaultKind, Perms, Stage, Translation, WalkStart};
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
/// cache hit; `start.table` is guest-physical).
pub fn walk_nested_from<M: PhysMem + ?Sized, O: WalkObserver>(
    first: &WalkConfig,
    start: WalkStart,
    second: &SecondStage,
    mem: &M,
    input: u64,
    access: Access,
    obs: &mut O,
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
                last: None,
                last_input: 0,
            };
            let t = walk_impl(first, Stage::First, mem, start, input, access, obs, &mut x)?;
            let s = walk_impl(
                &config,
                Stage::Second,
                mem,
                config.root_start(root),
                t.output,
                access,
                obs,
                &mut crate::walk::Direct,
            )?;
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
struct SecondStageXlate<'a> {
    config: &'a WalkConfig,
    root: u64,
    last: Option<Translation>,
    last_input: u64,
}

impl<M: PhysMem + ?Sized, O: WalkObserver> TableXlate<M, O> for SecondStageXlate<'_> {
    #[inline]
    fn table(&mut self, mem: &M, obs: &mut O, table: u64) -> Result<u64, Fault> {
        let t = walk_impl(
            self.config,
            Stage::Second,
            mem,
            self.config.root_start(self.root),
            table,
            Access::READ,
            obs,
            &mut crate::walk::Direct,
        )?;
        self.last = Some(t);
        self.last_input = table;
        Ok(t.output)
    }

    fn before_write(&mut self, mem: &M, obs: &mut O) -> Result<(), Fault> {
        let Some(mut t) = self.last else {
            return Ok(());
        };
        let input = self.last_input;
        let fault = |t: &Translation, kind| Fault {
            stage: Stage::Second,
            level: t.level,
            input,
            entry_addr: Some(t.entry_addr),
            entry: Some(t.entry),
            kind,
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
                        _ => return Err(fault(&t, FaultKind::BadLevel)),
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
