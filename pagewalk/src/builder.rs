//! The driver side: building and tearing down page tables in memory.
//!
//! [`TableBuilder`] maps and unmaps ranges in any format, allocating 4 KiB table pages from a
//! [`FrameAllocator`] passed in and freeing tables that become empty. Each format encodes and
//! parses the entries the builder writes beside its walker-side decoder, with the same layout
//! constants (`encode_table`, `encode_leaf` and `parse` in `crate::format::*`); the tests check
//! both against hand-built entry words, and every builder test walks what it built.
//!
//! Every operation validates its whole request before touching memory; a map that runs out of
//! table pages (or hits a memory error) undoes what it wrote and frees what it allocated, so a
//! failed call leaves the tables as they were.
//!
//! The builder never uses AMD-Vi level skipping (each table points to the level right below);
//! it uses the Next Level = 7 encoding for AMD-Vi v1 page sizes between the levels' own sizes.
//!
//! When an unmap frees tables is the [`Reclaim`] policy: [`Reclaim::Empty`] (the default) frees
//! every table the unmap leaves empty; [`Reclaim::Covered`] frees only tables whose whole span
//! the unmap covers and leaves a table emptied by a smaller unmap in place for the next map, as
//! Linux's IOMMU page-table code does. `Covered` keeps no per-table counts at all, which makes
//! single-page map and unmap churn, the DMA API's pattern, several times cheaper.
//!
//! Cost: under [`Reclaim::Empty`] the builder keeps a count of the present entries of every
//! table it has touched, so deciding whether a table became empty (and can be freed) is O(1)
//! instead of a 512-entry scan, and tables it empties are returned to the allocator as known-zero pages
//! ([`FrameAllocator::free_zeroed_frame`]) so they need no second zeroing when handed out
//! again. The counts assume the builder is the only writer of presence in its tables (the
//! hardware's A/D updates change no presence); tables adopted with [`TableBuilder::with_root`]
//! are counted by one scan the first time they are needed.

pub use crate::alloc::{BumpAllocator, FrameAllocator};
use smallvec::SmallVec;

use crate::alloc::{PageMap, PageSet};
use crate::format::{Ent, WalkConfig};
use crate::mem::{MemError, PhysMem};
use crate::types::Perms;

/// Size of a table page.
pub use crate::alloc::TABLE_SIZE;

/// How [`TableBuilder::map`] chooses page sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSizePolicy {
    /// Every page has this size (log2); the range must be aligned to it.
    Fixed(u8),
    /// The largest size the format supports (at most `1 << max_shift`) that the remaining range
    /// and the alignment of both addresses allow.
    Largest {
        /// log2 of the largest page to use.
        max_shift: u8,
    },
}

impl PageSizePolicy {
    /// Largest pages without limit.
    pub const LARGEST: PageSizePolicy = PageSizePolicy::Largest { max_shift: 63 };
}

/// One mapping found in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Input address of the page.
    pub iova: u64,
    /// Output address of the page.
    pub phys: u64,
    /// log2 of the page size.
    pub shift: u8,
    /// Permissions as the entries grant them.
    pub perms: Perms,
}

/// Why a builder operation was refused. The tables are unchanged after any error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Address or length not aligned to 4 KiB (or to the fixed page size).
    #[error("range {iova:#x}+{len:#x} -> {phys:#x} is not aligned to the page size")]
    Unaligned {
        /// Input address.
        iova: u64,
        /// Output address.
        phys: u64,
        /// Length.
        len: u64,
    },
    /// Zero length.
    #[error("empty range")]
    Empty,
    /// The range does not fit the input or output address width.
    #[error("range {iova:#x}+{len:#x} is outside the translatable range")]
    OutOfRange {
        /// Input address.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Part of the range is already mapped.
    #[error("{iova:#x} is already mapped")]
    Overlap {
        /// A mapped input address inside the range.
        iova: u64,
    },
    /// The unmap range covers only part of a larger page.
    #[error("the range covers only part of the page at {iova:#x}")]
    SplitsPage {
        /// Input address of the page.
        iova: u64,
    },
    /// The format or its configuration has no page of this size.
    #[error("page size 2^{0} is not supported by this format")]
    UnsupportedPageSize(u8),
    /// The format cannot express these permissions.
    #[error("permissions {0:?} cannot be expressed in this format")]
    UnsupportedPerms(Perms),
    /// The level count of the configuration is not one the format allows.
    #[error("invalid level count")]
    BadLevels,
    /// The allocator has no page left.
    #[error("table page allocator exhausted")]
    AllocatorExhausted,
    /// A table page could not be accessed.
    #[error("memory access failed: {0}")]
    Memory(#[from] MemError),
    /// An entry in the tables is not one this builder writes.
    #[error("unexpected entry {entry:#x} at {addr:#x}")]
    Corrupt {
        /// Entry address.
        addr: u64,
        /// Entry value.
        entry: u64,
    },
}

/// Address bits of an entry (bits 51:12).
const ADDR: u64 = crate::format::ADDR_MASK;

fn lshift(level: u8) -> u32 {
    12 + 9 * (u32::from(level) - 1)
}

/// When [`TableBuilder::unmap`] frees tables (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reclaim {
    /// Free every table the unmap leaves empty.
    #[default]
    Empty,
    /// Free only the tables whose whole span the unmap covers; emptied tables stay, linked,
    /// until a covering unmap or [`TableBuilder::destroy`].
    Covered,
}

/// Input address bits `config`'s tables translate.
fn in_width(config: &WalkConfig) -> u32 {
    let w = lshift(config.levels()) + 9;
    match config {
        WalkConfig::VtdSecondStage(c) => w.min(u32::from(c.input_width)),
        _ => w.min(64),
    }
}

/// [`TableBuilder::page_shifts`] as a bit set (bit `s`: pages of `1 << s` bytes).
fn shift_bits(config: &WalkConfig) -> u64 {
    let in_width = in_width(config);
    let mut v = 0u64;
    for level in 1..=config.levels() {
        let own = lshift(level);
        match config {
            WalkConfig::VtdSecondStage(c) => {
                let ok = match level {
                    1 => true,
                    2 => c.sp_2m,
                    3 => c.sp_1g,
                    _ => false,
                };
                if ok {
                    v |= 1 << own;
                }
            }
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => {
                if level <= 2 || (level == 3 && c.ps_1g) {
                    v |= 1 << own;
                }
            }
            WalkConfig::AmdV1(_) => {
                for s in own..own + 9 {
                    if s <= 52 && s < in_width {
                        v |= 1 << s;
                    }
                }
            }
        }
    }
    // Only sizes below the input width (4 KiB always).
    let w = in_width.max(13);
    if w < 64 { v & ((1u64 << w) - 1) } else { v }
}

/// Present-entry count of one table (entries that [`TableBuilder::parse`] does not call
/// empty).
#[derive(Debug, Clone, Copy)]
struct Live {
    present: u16,
    /// The table was zeroed (or handed out known-zero) by this builder, which has written
    /// every entry since: once `present` is 0, every entry is 0.
    clean: bool,
}

/// Builds and edits one table hierarchy.
#[derive(Debug, Clone)]
pub struct TableBuilder {
    config: WalkConfig,
    root: u64,
    /// Present-entry counts by table address (see the module notes); a table missing here is
    /// counted by a scan when its count is needed. Empty under [`Reclaim::Covered`].
    live: PageMap<Live>,
    reclaim: Reclaim,
    /// The page sizes the configuration offers ([`shift_bits`]): computed once, every map
    /// asks.
    shift_bits: u64,
}

impl TableBuilder {
    /// Allocates and zeroes a root table for `config`.
    pub fn new<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        config: WalkConfig,
        mem: &M,
        alloc: &mut A,
    ) -> Result<Self, BuildError> {
        if !config.levels_valid() {
            return Err(BuildError::BadLevels);
        }
        let (root, zero) = alloc
            .alloc_frame_zeroed()
            .ok_or(BuildError::AllocatorExhausted)?;
        if !zero && let Err(e) = zero_table(mem, root) {
            alloc.free_frame(root);
            return Err(e);
        }
        let mut live = PageMap::default();
        live.insert(
            root,
            Live {
                present: 0,
                clean: true,
            },
        );
        Ok(Self {
            config,
            root,
            live,
            reclaim: Reclaim::Empty,
            shift_bits: shift_bits(&config),
        })
    }

    /// The same builder with reclaim policy `reclaim`. Set it before the first map: counts
    /// are kept only under [`Reclaim::Empty`].
    pub fn with_reclaim(mut self, reclaim: Reclaim) -> Self {
        self.reclaim = reclaim;
        if reclaim == Reclaim::Covered {
            self.live = PageMap::default();
        }
        self
    }

    /// Whether present-entry counts are kept.
    fn counts(&self) -> bool {
        self.reclaim == Reclaim::Empty
    }

    /// Adopts existing tables rooted at `root` (which the builder may then edit and free).
    pub fn with_root(config: WalkConfig, root: u64) -> Result<Self, BuildError> {
        if !config.levels_valid() {
            return Err(BuildError::BadLevels);
        }
        Ok(Self {
            config,
            root: root & ADDR,
            live: PageMap::default(),
            reclaim: Reclaim::Empty,
            shift_bits: shift_bits(&config),
        })
    }

    /// The root table address.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The configuration the tables are built for.
    pub fn config(&self) -> &WalkConfig {
        &self.config
    }

    fn levels(&self) -> u8 {
        self.config.levels()
    }

    fn x86(&self) -> Option<&crate::format::X86Config> {
        match &self.config {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => Some(c),
            _ => None,
        }
    }

    /// Width of the translated input range.
    fn in_width(&self) -> u32 {
        in_width(&self.config)
    }

    fn out_width(&self) -> u32 {
        let w = match &self.config {
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => c.out_width,
            WalkConfig::VtdSecondStage(c) => c.haw,
            WalkConfig::AmdV1(c) => c.out_width,
        };
        u32::from(w.min(52))
    }

    /// The permissions the tables will grant for a requested set (formats without U/S grant
    /// U; where the format has no execute control, X follows R), or an error if the format
    /// cannot express them.
    pub fn effective_perms(&self, perms: Perms) -> Result<Perms, BuildError> {
        match &self.config {
            WalkConfig::VtdSecondStage(c) => {
                if !perms.read() && !perms.write() {
                    return Err(BuildError::UnsupportedPerms(perms));
                }
                let mut p = perms | Perms::U;
                if !c.slee {
                    p = if p.read() {
                        p | Perms::X
                    } else {
                        p.difference(Perms::X)
                    };
                }
                Ok(p)
            }
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => {
                if !perms.read() {
                    return Err(BuildError::UnsupportedPerms(perms));
                }
                Ok(if c.nxe { perms } else { perms | Perms::X })
            }
            WalkConfig::AmdV1(_) => {
                let p = perms | Perms::U;
                Ok(if p.read() {
                    p | Perms::X
                } else {
                    p.difference(Perms::X)
                })
            }
        }
    }

    /// Page sizes (log2, ascending) this builder can map in its format.
    pub fn page_shifts(&self) -> Vec<u8> {
        let bits = self.shift_bits;
        (12..64u8).filter(|s| bits >> s & 1 != 0).collect()
    }

    /// Level at which a page of `1 << shift` bytes sits.
    fn level_for(&self, shift: u8) -> u8 {
        ((u32::from(shift) - 12) / 9 + 1) as u8
    }

    /// Input address → internal (truncated to the input width) form.
    fn to_internal(&self, iova: u64) -> u128 {
        let w = self.in_width();
        if w >= 64 {
            u128::from(iova)
        } else {
            u128::from(iova & ((1u64 << w) - 1))
        }
    }

    /// Internal form → input address (sign-extended for x86 formats).
    fn to_external(&self, t: u128) -> u64 {
        let w = self.in_width();
        let v = t as u64;
        if self.x86().is_some() && w < 64 {
            (((v << (64 - w)) as i64) >> (64 - w)) as u64
        } else {
            v
        }
    }

    /// Checks `[iova, iova+len)` is translatable; returns it in internal form.
    fn check_range(&self, iova: u64, len: u64) -> Result<(u128, u128), BuildError> {
        if len == 0 {
            return Err(BuildError::Empty);
        }
        let oor = BuildError::OutOfRange { iova, len };
        let w = self.in_width();
        let last = iova.checked_add(len - 1).ok_or(oor)?;
        if self.x86().is_some() {
            let canon = |a: u64| {
                let top = (a as i64) >> (w - 1);
                top == 0 || top == -1
            };
            // Both ends canonical and in the same half.
            if !canon(iova) || !canon(last) || (iova >> 63) != (last >> 63) {
                return Err(oor);
            }
        } else if w < 64 && last >> w != 0 {
            return Err(oor);
        }
        let s = self.to_internal(iova);
        Ok((s, s + u128::from(len)))
    }

    /// Maps `[iova, iova+len)` to `[phys, phys+len)` with `perms`, choosing page sizes by
    /// `policy`. Refused (tables unchanged) if any part of the range is mapped.
    #[allow(clippy::too_many_arguments)]
    pub fn map<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &mut self,
        mem: &M,
        alloc: &mut A,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
        policy: PageSizePolicy,
    ) -> Result<(), BuildError> {
        let (start, end, perms) = self.check_map(iova, phys, len, perms, policy)?;
        let bits = self.shift_bits;
        // Refuse overlaps before writing anything. A single 4 KiB page (the DMA API's map) is
        // checked by one descent; anything else, or a page the descent cannot clear, by a
        // scan (which also reports what overlaps).
        let one_page_free = len == 0x1000
            && matches!(
                self.descend_4k(mem, start)?,
                Descent::EmptyAbove
                    | Descent::Slot {
                        entry: Ent::Empty,
                        ..
                    }
            );
        if !one_page_free {
            self.scan(mem, self.levels(), self.root, 0, start, end, &mut |m| {
                Err(BuildError::Overlap { iova: m.iova })
            })?;
        }
        // Apply page by page, logging what to undo.
        let mut log = MapLog::default();
        let mut live = std::mem::take(&mut self.live);
        let mut cur = start;
        let mut p = phys;
        let mut result = Ok(());
        while cur < end {
            let shift = choose_shift(bits, policy, cur, p, end - cur);
            if let Err(e) = self.install(mem, alloc, &mut live, cur, p, shift, perms, &mut log) {
                undo(mem, alloc, &mut live, std::mem::take(&mut log));
                result = Err(e);
                break;
            }
            cur += 1u128 << shift;
            p = p.wrapping_add(1u64 << shift);
        }
        if result.is_ok() {
            // Leaf-free tables a large page replaced (left by `Reclaim::Covered`). The map
            // stands; a table that cannot be freed is only a leak, reported.
            for &(level, table) in &log.orphans {
                if let Err(e) = self.free_subtree(mem, alloc, &mut live, level, table) {
                    log::warn!("builder: cannot free the replaced table {table:#x}: {e}");
                }
            }
        }
        self.live = live;
        result
    }

    /// Frees the table at `level` and every table below it; the caller checked they hold no
    /// leaf.
    fn free_subtree<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &self,
        mem: &M,
        alloc: &mut A,
        live: &mut PageMap<Live>,
        level: u8,
        table: u64,
    ) -> Result<(), BuildError> {
        let span = 1u128 << (lshift(level) + 9);
        if level > 1 {
            self.clear(mem, alloc, live, level, table, 0, 0, span)?;
        }
        live.remove(&table);
        alloc.free_frame(table);
        Ok(())
    }

    /// Follows the tables towards the 4 KiB page at internal address `at`: where the descent
    /// ends and what it found. Reads one entry per level; a loop in the tables cannot make it
    /// run longer.
    fn descend_4k<M: PhysMem + ?Sized>(&self, mem: &M, at: u128) -> Result<Descent, BuildError> {
        let mut table = self.root;
        let mut level = self.levels();
        loop {
            let addr = table + index(level, at) * 8;
            let entry = self.parse(level, mem.read_u64(addr)?);
            match entry {
                Ent::Table(next) if level > 1 => {
                    table = next;
                    level -= 1;
                }
                Ent::Empty if level > 1 => return Ok(Descent::EmptyAbove),
                _ if level == 1 => return Ok(Descent::Slot { addr, entry }),
                _ => return Ok(Descent::Other),
            }
        }
    }

    /// Everything [`TableBuilder::map`] checks before it reads a table: 4 KiB alignment, the
    /// input and output ranges, the permissions the format can express, and a page-size policy
    /// the format supports and the range is aligned to. Returns the input range and the
    /// permissions to write.
    fn check_map(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        perms: Perms,
        policy: PageSizePolicy,
    ) -> Result<(u128, u128, Perms), BuildError> {
        let unaligned = BuildError::Unaligned { iova, phys, len };
        if (iova | phys | len) & 0xfff != 0 {
            return Err(if len == 0 {
                BuildError::Empty
            } else {
                unaligned
            });
        }
        let (start, end) = self.check_range(iova, len)?;
        let out_end = u128::from(phys) + u128::from(len);
        if out_end > 1u128 << self.out_width() {
            return Err(BuildError::OutOfRange { iova, len });
        }
        let perms = self.effective_perms(perms)?;
        let bits = self.shift_bits;
        match policy {
            PageSizePolicy::Fixed(s) => {
                if s >= 64 || bits >> s & 1 == 0 {
                    return Err(BuildError::UnsupportedPageSize(s));
                }
                let m = size_mask(s);
                if start & m != 0 || u128::from(phys) & m != 0 || (end - start) & m != 0 {
                    return Err(unaligned);
                }
            }
            PageSizePolicy::Largest { max_shift } => {
                if sizes_upto(bits, max_shift) == 0 {
                    return Err(BuildError::UnsupportedPageSize(max_shift));
                }
            }
        }
        Ok((start, end, perms))
    }

    /// The present-entry count of `table` (at `level`), counted by a scan if not known.
    fn count<M: PhysMem + ?Sized>(
        &self,
        live: &mut PageMap<Live>,
        mem: &M,
        level: u8,
        table: u64,
    ) -> Result<u16, BuildError> {
        if let Some(l) = live.get(&table) {
            return Ok(l.present);
        }
        let mut present = 0u16;
        for i in 0..512 {
            if self.parse(level, mem.read_u64(table + i * 8)?) != Ent::Empty {
                present += 1;
            }
        }
        live.insert(
            table,
            Live {
                present,
                clean: false,
            },
        );
        Ok(present)
    }

    /// Writes one leaf for the page at internal address `at`, creating tables on the way.
    #[allow(clippy::too_many_arguments)]
    fn install<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &self,
        mem: &M,
        alloc: &mut A,
        live: &mut PageMap<Live>,
        at: u128,
        phys: u64,
        shift: u8,
        perms: Perms,
        log: &mut MapLog,
    ) -> Result<(), BuildError> {
        let target = self.level_for(shift);
        let mut table = self.root;
        let mut level = self.levels();
        while level > target {
            let addr = table + index(level, at) * 8;
            let e = mem.read_u64(addr)?;
            table = match self.parse(level, e) {
                Ent::Table(next) => next,
                Ent::Empty => {
                    let (next, zero) = alloc
                        .alloc_frame_zeroed()
                        .ok_or(BuildError::AllocatorExhausted)?;
                    log.allocated.push(next);
                    if !zero {
                        zero_table(mem, next)?;
                    }
                    if self.counts() {
                        live.insert(
                            next,
                            Live {
                                present: 0,
                                clean: true,
                            },
                        );
                    }
                    mem.write_u64(addr, self.encode_table(level, next))?;
                    log.written.push((addr, e));
                    adjust(live, table, 1);
                    next
                }
                Ent::Leaf { .. } | Ent::Foreign => {
                    return Err(BuildError::Corrupt { addr, entry: e });
                }
            };
            level -= 1;
        }
        let entry = self.encode_leaf(level, phys, shift, perms);
        let slots = 1u64 << (u32::from(shift) - lshift(level));
        let first = index(level, at);
        for i in 0..slots {
            let addr = table + (first + i) * 8;
            // The overlap check left no leaf here; an empty slot becomes present. A table
            // entry (only `Reclaim::Covered` leaves one without leaves below) stays present,
            // and its tables are freed once the whole map has succeeded.
            let old = mem.read_u64(addr)?;
            let was = self.parse(level, old);
            if let Ent::Table(next) = was {
                if level == 1 {
                    return Err(BuildError::Corrupt { addr, entry: old });
                }
                log.orphans.push((level - 1, next));
            }
            mem.write_u64(addr, entry)?;
            log.written.push((addr, old));
            if was == Ent::Empty {
                adjust(live, table, 1);
            }
        }
        Ok(())
    }

    /// Unmaps every page inside `[iova, iova+len)` and frees tables left empty; returns what was
    /// unmapped, in address order. Refused (tables unchanged) if a page straddles the range's
    /// ends. Unmapped holes inside the range are fine.
    pub fn unmap<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &mut self,
        mem: &M,
        alloc: &mut A,
        iova: u64,
        len: u64,
    ) -> Result<Vec<Mapping>, BuildError> {
        if (iova | len) & 0xfff != 0 {
            return Err(if len == 0 {
                BuildError::Empty
            } else {
                BuildError::Unaligned { iova, phys: 0, len }
            });
        }
        let (start, end) = self.check_range(iova, len)?;
        // A single 4 KiB page under `Reclaim::Covered` frees no table: one descent clears it.
        if len == 0x1000 && !self.counts() {
            match self.descend_4k(mem, start)? {
                Descent::EmptyAbove
                | Descent::Slot {
                    entry: Ent::Empty, ..
                } => return Ok(Vec::new()),
                Descent::Slot {
                    addr,
                    entry:
                        Ent::Leaf {
                            phys,
                            shift: 12,
                            perms,
                        },
                } => {
                    mem.write_u64(addr, 0)?;
                    return Ok(vec![Mapping {
                        iova,
                        phys,
                        shift: 12,
                        perms,
                    }]);
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        self.scan(mem, self.levels(), self.root, 0, start, end, &mut |m| {
            let s = self.to_internal(m.iova);
            if s < start || s + (1u128 << m.shift) > end {
                return Err(BuildError::SplitsPage { iova: m.iova });
            }
            found.push(m);
            Ok(())
        })?;
        let mut live = std::mem::take(&mut self.live);
        let r = self.clear(
            mem,
            alloc,
            &mut live,
            self.levels(),
            self.root,
            0,
            start,
            end,
        );
        self.live = live;
        r?;
        Ok(found)
    }

    /// Every mapping, in address order.
    pub fn mappings<M: PhysMem + ?Sized>(&self, mem: &M) -> Result<Vec<Mapping>, BuildError> {
        let mut v = Vec::new();
        let end = 1u128 << self.in_width();
        self.scan(mem, self.levels(), self.root, 0, 0, end, &mut |m| {
            v.push(m);
            Ok(())
        })?;
        Ok(v)
    }

    /// Unmaps everything and frees every table, the root included.
    pub fn destroy<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        mut self,
        mem: &M,
        alloc: &mut A,
    ) -> Result<(), BuildError> {
        let end = 1u128 << self.in_width();
        let mut live = std::mem::take(&mut self.live);
        if self.clear(mem, alloc, &mut live, self.levels(), self.root, 0, 0, end)?
            && live.get(&self.root).is_some_and(|l| l.clean)
        {
            alloc.free_zeroed_frame(self.root);
        } else {
            alloc.free_frame(self.root);
        }
        Ok(())
    }

    /// Calls `f` for every leaf intersecting `[start, end)` below the table at `level`; a table
    /// reached twice (a cycle or shared table, which this builder never writes) is reported as
    /// corrupt, which bounds the work to 512 entries per distinct table.
    #[allow(clippy::too_many_arguments)]
    fn scan<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        level: u8,
        table: u64,
        base: u128,
        start: u128,
        end: u128,
        f: &mut dyn FnMut(Mapping) -> Result<(), BuildError>,
    ) -> Result<(), BuildError> {
        let mut seen = Seen::new(table);
        self.scan_in(&mut seen, mem, level, table, base, start, end, f)
    }

    /// [`Self::clear_in`] with cycle detection, as for [`Self::scan`].
    #[allow(clippy::too_many_arguments)]
    fn clear<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &self,
        mem: &M,
        alloc: &mut A,
        live: &mut PageMap<Live>,
        level: u8,
        table: u64,
        base: u128,
        start: u128,
        end: u128,
    ) -> Result<bool, BuildError> {
        let mut seen = Seen::new(table);
        self.clear_in(&mut seen, mem, alloc, live, level, table, base, start, end)
    }

    /// Calls `f` for every leaf intersecting `[start, end)` in the table at `level` whose
    /// coverage begins at `base`, in address order.
    #[allow(clippy::too_many_arguments)]
    fn scan_in<M: PhysMem + ?Sized>(
        &self,
        seen: &mut Seen,
        mem: &M,
        level: u8,
        table: u64,
        base: u128,
        start: u128,
        end: u128,
        f: &mut dyn FnMut(Mapping) -> Result<(), BuildError>,
    ) -> Result<(), BuildError> {
        let sh = lshift(level);
        let (first, last) = slot_span(level, base, start, end);
        let mut i = first;
        while i <= last {
            let addr = table + i * 8;
            let e = mem.read_u64(addr)?;
            let slot = base + (u128::from(i) << sh);
            match self.parse(level, e) {
                Ent::Foreign => return Err(BuildError::Corrupt { addr, entry: e }),
                Ent::Empty => i += 1,
                Ent::Table(next) => {
                    if level == 1 {
                        return Err(BuildError::Corrupt { addr, entry: e });
                    }
                    if !seen.insert(next) {
                        return Err(BuildError::Corrupt { addr, entry: e });
                    }
                    self.scan_in(seen, mem, level - 1, next, slot, start, end, f)?;
                    i += 1;
                }
                Ent::Leaf { phys, shift, perms } => {
                    let slots = 1u64 << (u32::from(shift) - sh);
                    let group = i & !(slots - 1);
                    let page = base + (u128::from(group) << sh);
                    f(Mapping {
                        iova: self.to_external(page),
                        phys,
                        shift,
                        perms,
                    })?;
                    i = group + slots;
                }
            }
        }
        Ok(())
    }

    /// Clears every leaf inside `[start, end)` (the caller checked none straddles it) and frees
    /// tables left empty. Returns whether the table is now empty (from its present-entry
    /// count, not a scan).
    #[allow(clippy::too_many_arguments)]
    fn clear_in<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
        &self,
        seen: &mut Seen,
        mem: &M,
        alloc: &mut A,
        live: &mut PageMap<Live>,
        level: u8,
        table: u64,
        base: u128,
        start: u128,
        end: u128,
    ) -> Result<bool, BuildError> {
        let sh = lshift(level);
        let (first, last) = slot_span(level, base, start, end);
        for i in first..=last {
            let addr = table + i * 8;
            let e = mem.read_u64(addr)?;
            match self.parse(level, e) {
                Ent::Foreign => return Err(BuildError::Corrupt { addr, entry: e }),
                Ent::Empty => {}
                Ent::Table(next) => {
                    let slot = base + (u128::from(i) << sh);
                    if !seen.insert(next) {
                        return Err(BuildError::Corrupt { addr, entry: e });
                    }
                    if level > 1
                        && self.clear_in(
                            seen,
                            mem,
                            alloc,
                            live,
                            level - 1,
                            next,
                            slot,
                            start,
                            end,
                        )?
                    {
                        mem.write_u64(addr, 0)?;
                        adjust(live, table, -1);
                        // Every entry of a clean table whose count reached zero was written
                        // zero by this builder.
                        if live
                            .remove(&next)
                            .is_some_and(|l| l.clean && l.present == 0)
                        {
                            alloc.free_zeroed_frame(next);
                        } else {
                            alloc.free_frame(next);
                        }
                    }
                }
                Ent::Leaf { .. } => {
                    mem.write_u64(addr, 0)?;
                    adjust(live, table, -1);
                }
            }
        }
        if self.counts() {
            Ok(self.count(live, mem, level, table)? == 0)
        } else {
            // Everything in the range is cleared: a table the range covers is empty.
            let span_end = base + (1u128 << (sh + 9));
            Ok(start <= base && span_end <= end)
        }
    }

    fn encode_table(&self, level: u8, next: u64) -> u64 {
        match &self.config {
            WalkConfig::VtdSecondStage(_) => crate::format::vtd_ss::encode_table(next),
            WalkConfig::VtdFirstStage(_) | WalkConfig::AmdV2(_) => {
                crate::format::x86::encode_table(next)
            }
            WalkConfig::AmdV1(_) => crate::format::amd_v1::encode_table(level, next),
        }
    }

    fn encode_leaf(&self, level: u8, phys: u64, shift: u8, perms: Perms) -> u64 {
        match &self.config {
            WalkConfig::VtdSecondStage(c) => {
                crate::format::vtd_ss::encode_leaf(c, level, phys, perms)
            }
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => {
                crate::format::x86::encode_leaf(c, level, phys, perms)
            }
            WalkConfig::AmdV1(_) => crate::format::amd_v1::encode_leaf(level, phys, shift, perms),
        }
    }

    /// Parses an entry the builder may have written (see [`Ent`]).
    fn parse(&self, level: u8, e: u64) -> Ent {
        match &self.config {
            WalkConfig::VtdSecondStage(c) => crate::format::vtd_ss::parse(c, level, e),
            WalkConfig::VtdFirstStage(c) | WalkConfig::AmdV2(c) => {
                crate::format::x86::parse(c, level, e)
            }
            WalkConfig::AmdV1(_) => crate::format::amd_v1::parse(level, e),
        }
    }
}

#[cfg(test)]
impl TableBuilder {
    /// Checks every known present-entry count against a scan of its table, and that clean
    /// tables hold nothing but zeros in their empty entries.
    fn check_counts<M: PhysMem + ?Sized>(&self, mem: &M) -> Result<(), String> {
        for (&table, l) in &self.live {
            // The level is not recorded; every format parses an entry's presence the same
            // way at every level for these checks (present bit / R|W bits).
            let mut present = 0u16;
            for i in 0..512 {
                let e = mem.read_u64(table + i * 8).map_err(|e| e.to_string())?;
                if self.parse(1, e) != Ent::Empty {
                    present += 1;
                } else if l.clean && e != 0 {
                    return Err(format!("clean table {table:#x} has junk {e:#x} at {i}"));
                }
            }
            if present != l.present {
                return Err(format!(
                    "table {table:#x}: counted {} present, memory has {present}",
                    l.present
                ));
            }
        }
        Ok(())
    }
}

/// Changes the known present-entry count of `table` by `delta` (a table whose count is not
/// known is counted by a scan when needed, which sees the change).
fn adjust(live: &mut PageMap<Live>, table: u64, delta: i16) {
    if let Some(l) = live.get_mut(&table) {
        l.present = l.present.saturating_add_signed(delta).min(512);
    }
}

/// Tables visited by one scan or clear, to report a table reached twice. A single-page
/// request visits at most one table per level, so the first few live in an array and only
/// large scans fall back to a hash set.
struct Seen {
    few: [u64; 8],
    n: usize,
    many: PageSet,
}

impl Seen {
    fn new(first: u64) -> Self {
        Self {
            few: [first; 8],
            n: 1,
            many: PageSet::default(),
        }
    }

    /// Records `table`; false if it was already recorded.
    fn insert(&mut self, table: u64) -> bool {
        if self.few[..self.n].contains(&table) || self.many.contains(&table) {
            return false;
        }
        if self.n < self.few.len() {
            self.few[self.n] = table;
            self.n += 1;
            true
        } else {
            self.many.insert(table)
        }
    }
}

/// Index of `at` (internal form) in a table at `level`.
fn index(level: u8, at: u128) -> u64 {
    ((at >> lshift(level)) & 0x1ff) as u64
}

/// First and last slot of the table at `level` (coverage starting at `base`) that intersect
/// `[start, end)`; the caller only descends into tables that intersect the range.
fn slot_span(level: u8, base: u128, start: u128, end: u128) -> (u64, u64) {
    let sh = lshift(level);
    let cover = 1u128 << (sh + 9);
    let lo = start.max(base);
    let hi = end.min(base + cover);
    if hi <= lo {
        return (1, 0);
    }
    (((lo - base) >> sh) as u64, ((hi - 1 - base) >> sh) as u64)
}

fn zero_table<M: PhysMem + ?Sized>(mem: &M, table: u64) -> Result<(), BuildError> {
    Ok(crate::alloc::zero_page(mem, table)?)
}

/// `(1 << s) - 1`: the offset bits of a page of 2^`s` bytes.
fn size_mask(s: u8) -> u128 {
    (1u128 << s) - 1
}

/// The page sizes of `bits` (a set of log2 sizes) of at most 2^`max` bytes.
fn sizes_upto(bits: u64, max: u8) -> u64 {
    if max >= 63 {
        bits
    } else {
        bits & ((2u64 << max) - 1)
    }
}

/// The page size (log2) [`TableBuilder::map`] uses for the page at `cur` mapping `p` with
/// `remaining` bytes left: the policy's fixed size, or the largest size of `bits` the policy
/// allows that both addresses are aligned to and that fits. `check_map` guaranteed one exists
/// (4 KiB at least).
fn choose_shift(bits: u64, policy: PageSizePolicy, cur: u128, p: u64, remaining: u128) -> u8 {
    match policy {
        PageSizePolicy::Fixed(s) => s,
        PageSizePolicy::Largest { max_shift } => {
            // Largest candidate first.
            let mut cand = sizes_upto(bits, max_shift);
            while cand != 0 {
                let s = (63 - cand.leading_zeros()) as u8;
                let m = size_mask(s);
                if cur & m == 0 && u128::from(p) & m == 0 && remaining > m {
                    return s;
                }
                cand &= !(1u64 << s);
            }
            12
        }
    }
}

/// Where [`TableBuilder::descend_4k`] ended.
enum Descent {
    /// An empty entry above level 1: nothing is mapped there.
    EmptyAbove,
    /// The level-1 entry: its address and what it holds.
    Slot { addr: u64, entry: Ent },
    /// A leaf above level 1 or an entry the builder does not write: for the general path.
    Other,
}

/// What a map has done so far, to undo it or to finish it. Inline up to a few entries: a
/// single-page map (the DMA API's pattern) allocates nothing on the heap for its log.
#[derive(Default)]
struct MapLog {
    /// Entries written, with the value each held before.
    written: SmallVec<[(u64, u64); 8]>,
    /// Tables allocated.
    allocated: SmallVec<[u64; 4]>,
    /// Leaf-free tables (level, address) whose entries large pages replaced: freed when the
    /// map succeeds.
    orphans: SmallVec<[(u8, u64); 2]>,
}

/// Undoes a map that failed partway: restores the entries it wrote (their tables' counts are
/// recounted by a scan when next needed) and frees the tables it allocated.
fn undo<M: PhysMem + ?Sized, A: FrameAllocator + ?Sized>(
    mem: &M,
    alloc: &mut A,
    live: &mut PageMap<Live>,
    log: MapLog,
) {
    for &(a, old) in log.written.iter().rev() {
        if let Err(me) = mem.write_u64(a, old) {
            log::error!("builder rollback: cannot restore {a:#x}: {me}");
        }
        live.remove(&(a & !(TABLE_SIZE - 1)));
    }
    for f in log.allocated {
        live.remove(&f);
        alloc.free_frame(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{AmdV1Config, VtdSsConfig, X86Config};
    use crate::mem::SparseMem;
    use crate::types::{Access, Fault, Translation, level_index};
    use crate::walk::walk;

    fn setup(config: WalkConfig) -> (SparseMem, BumpAllocator, TableBuilder) {
        let mem = SparseMem::new(1 << 40);
        let mut alloc = BumpAllocator::new(0x100_0000, 0x200_0000);
        let b = TableBuilder::new(config, &mem, &mut alloc).unwrap();
        (mem, alloc, b)
    }

    fn ss4() -> WalkConfig {
        WalkConfig::VtdSecondStage(VtdSsConfig::new(4))
    }

    /// Address of the entry for `iova` at `level`, following the builder's tables.
    fn entry_addr(mem: &SparseMem, root: u64, levels: u8, iova: u64, level: u8) -> u64 {
        let mut table = root;
        for l in (level + 1..=levels).rev() {
            table = mem.read_u64(table + level_index(l, iova) * 8).unwrap() & ADDR;
        }
        table + level_index(level, iova) * 8
    }

    /// A `Covered` builder over 4-level second-stage tables with one 4 KiB page mapped at
    /// `0x40_0000_0000` (to `0x7000`) and unmapped again: its page table is left, empty.
    fn covered_with_an_emptied_table() -> (SparseMem, BumpAllocator, TableBuilder) {
        let (mem, mut alloc, b) = setup(ss4());
        let mut b = b.with_reclaim(Reclaim::Covered);
        map_4k(&mut b, &mem, &mut alloc, 0x40_0000_0000);
        assert_eq!(alloc.in_use(), 4);
        b.unmap(&mem, &mut alloc, 0x40_0000_0000, 0x1000).unwrap();
        assert_eq!(alloc.in_use(), 4);
        (mem, alloc, b)
    }

    /// Maps the 4 KiB page at `iova` to `0x7000`, read-write.
    fn map_4k(b: &mut TableBuilder, mem: &SparseMem, alloc: &mut BumpAllocator, iova: u64) {
        b.map(
            mem,
            alloc,
            iova,
            0x7000,
            0x1000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }

    /// A read walk of `b`'s second-stage tables.
    fn read(b: &TableBuilder, mem: &SparseMem, iova: u64) -> Result<Translation, Fault> {
        walk(&ss4(), mem, b.root(), iova, Access::READ, &mut ())
    }

    #[test]
    fn covered_reclaim_keeps_emptied_tables_until_an_unmap_covers_them() {
        let (mem, mut alloc, mut b) = covered_with_an_emptied_table();
        // The page table the unmap emptied is still linked: the walk faults at the leaf.
        let f = read(&b, &mem, 0x40_0000_0000).unwrap_err();
        assert_eq!((f.kind, f.level), (crate::types::FaultKind::NotPresent, 1));
        // The next map in the same 2 MiB reuses it.
        map_4k(&mut b, &mem, &mut alloc, 0x40_0000_5000);
        assert_eq!(alloc.in_use(), 4);
        assert_eq!(read(&b, &mem, 0x40_0000_5008).unwrap().output, 0x7008);
        // An unmap covering the page table's 2 MiB frees it; one covering the 1 GiB of the
        // page directory frees that too.
        b.unmap(&mem, &mut alloc, 0x40_0000_0000, 0x20_0000)
            .unwrap();
        assert_eq!(alloc.in_use(), 3);
        b.unmap(&mem, &mut alloc, 0x40_0000_0000, 0x4000_0000)
            .unwrap();
        assert_eq!(alloc.in_use(), 2);
        b.destroy(&mem, &mut alloc).unwrap();
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn a_large_page_over_a_table_left_empty_frees_it() {
        let (mem, mut alloc, mut b) = covered_with_an_emptied_table();
        let map_2m = |b: &mut TableBuilder, alloc: &mut BumpAllocator, len: u64| {
            b.map(
                &mem,
                alloc,
                0x40_0000_0000,
                0x4000_0000,
                len,
                Perms::RW,
                PageSizePolicy::Fixed(21),
            )
        };
        // A failed map (the allocator cannot give the page directory of the second GiB) puts
        // the page table's entry back.
        let mut tight = BumpAllocator::new(0x300_0000, 0x300_0000);
        let r = map_2m(&mut b, &mut tight, 0x4020_0000);
        assert_eq!(r, Err(BuildError::AllocatorExhausted));
        assert_eq!(alloc.in_use(), 4);
        let f = read(&b, &mem, 0x40_0000_0000).unwrap_err();
        assert_eq!(f.level, 1, "the page table is linked again");
        map_2m(&mut b, &mut alloc, 0x20_0000).unwrap();
        assert_eq!(alloc.in_use(), 3, "the replaced page table was freed");
        let t = read(&b, &mem, 0x40_0001_2345).unwrap();
        assert_eq!((t.output, t.page_shift), (0x4001_2345, 21));
        b.destroy(&mem, &mut alloc).unwrap();
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn emptied_tables_are_freed_known_zero_and_reused_unzeroed() {
        let (mem, mut alloc, mut b) = setup(ss4());
        b.map(
            &mem,
            &mut alloc,
            0x40_0000_0000,
            0x5000,
            0x2000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        assert_eq!(alloc.in_use(), 4);
        b.check_counts(&mem).unwrap();
        b.unmap(&mem, &mut alloc, 0x40_0000_0000, 0x2000).unwrap();
        assert_eq!(alloc.in_use(), 1);
        b.check_counts(&mem).unwrap();
        // The three freed tables come back known zero, and are zero.
        let mut got = Vec::new();
        for _ in 0..3 {
            let (p, zero) = alloc.alloc_frame_zeroed().unwrap();
            assert!(zero, "{p:#x}");
            for i in 0..512 {
                assert_eq!(mem.read_u64(p + i * 8).unwrap(), 0);
            }
            got.push(p);
        }
        for p in got.into_iter().rev() {
            alloc.free_zeroed_frame(p);
        }
        // A page the builder did not zero is zeroed when it becomes a table: fill the next
        // free page with junk and return it as not-known-zero.
        let (junk, _) = alloc.alloc_frame_zeroed().unwrap();
        for i in 0..512 {
            mem.write_u64(junk + i * 8, 0x1003).unwrap();
        }
        alloc.free_frame(junk);
        b.map(
            &mem,
            &mut alloc,
            0x1000,
            0x9000,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        b.check_counts(&mem).unwrap();
        assert_eq!(
            b.mappings(&mem).unwrap(),
            vec![Mapping {
                iova: 0x1000,
                phys: 0x9000,
                shift: 12,
                perms: Perms::R | Perms::U | Perms::X
            }]
        );
        b.destroy(&mem, &mut alloc).unwrap();
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn adopted_tables_are_counted_by_a_scan_and_freed() {
        let (mem, mut alloc, mut b) = setup(ss4());
        b.map(
            &mem,
            &mut alloc,
            0x20_0000,
            0x20_0000,
            0x3000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        b.map(
            &mem,
            &mut alloc,
            0x80_0000_0000,
            0,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        let used = alloc.in_use();
        let mut adopted = TableBuilder::with_root(ss4(), b.root()).unwrap();
        // Part of the first range: its level-1 table stays (two pages left).
        assert_eq!(
            adopted
                .unmap(&mem, &mut alloc, 0x20_0000, 0x1000)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(alloc.in_use(), used);
        adopted.check_counts(&mem).unwrap();
        assert_eq!(
            adopted
                .unmap(&mem, &mut alloc, 0x20_0000, 0x20_0000)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(alloc.in_use(), used - 3);
        adopted.check_counts(&mem).unwrap();
        adopted.destroy(&mem, &mut alloc).unwrap();
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn vtd_ss_entries_bit_by_bit() {
        let (mem, mut alloc, mut b) = setup(ss4());
        let iova = 0x12_3456_7000;
        b.map(
            &mem,
            &mut alloc,
            iova,
            0xabc_d000,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        // Root + 3 tables.
        assert_eq!(alloc.in_use(), 4);
        // Non-leaf: address | R | W | X (§9.8).
        let root_e = mem.read_u64(b.root() + level_index(4, iova) * 8).unwrap();
        assert_eq!(root_e & 0xfff, 0b111);
        // Leaf: address | R.
        let leaf = entry_addr(&mem, b.root(), 4, iova, 1);
        assert_eq!(mem.read_u64(leaf).unwrap(), 0xabc_d000 | 1);
        // 2 MiB read/write leaf: address | R | W | PS.
        b.map(
            &mem,
            &mut alloc,
            0x4000_0000,
            0x8020_0000,
            0x20_0000,
            Perms::RW,
            PageSizePolicy::Fixed(21),
        )
        .unwrap();
        let pde = entry_addr(&mem, b.root(), 4, 0x4000_0000, 2);
        assert_eq!(mem.read_u64(pde).unwrap(), 0x8020_0000 | 0b11 | (1 << 7));
        let t = walk(&ss4(), &mem, b.root(), 0x4001_2345, Access::WRITE, &mut ()).unwrap();
        assert_eq!((t.output, t.page_shift), (0x8021_2345, 21));
    }

    #[test]
    fn x86_entries_bit_by_bit() {
        let cfg = WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4));
        let (mem, mut alloc, mut b) = setup(cfg);
        let iova = 0xffff_ff80_0000_0000; // upper canonical half
        b.map(
            &mem,
            &mut alloc,
            iova,
            0x4000_0000,
            0x4000_0000,
            Perms::R | Perms::U,
            PageSizePolicy::LARGEST,
        )
        .unwrap();
        // Root slot 511: P | R/W | U/S.
        let r = mem.read_u64(b.root() + 511 * 8).unwrap();
        assert_eq!(r & 0xfff, 0b111);
        // 1 GiB leaf: P | U/S | PS | XD.
        let pdpe = entry_addr(&mem, b.root(), 4, iova, 3);
        assert_eq!(
            mem.read_u64(pdpe).unwrap(),
            0x4000_0000 | 0b101 | (1 << 7) | (1 << 63)
        );
        let maps = b.mappings(&mem).unwrap();
        assert_eq!(
            maps,
            vec![Mapping {
                iova,
                phys: 0x4000_0000,
                shift: 30,
                perms: Perms::R | Perms::U
            }]
        );
        // Non-canonical or half-crossing ranges are refused.
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0x8000_0000_0000,
                0,
                0x1000,
                Perms::R,
                PageSizePolicy::LARGEST
            ),
            Err(BuildError::OutOfRange {
                iova: 0x8000_0000_0000,
                len: 0x1000
            })
        );
        assert!(matches!(
            b.map(
                &mem,
                &mut alloc,
                0x7fff_ffff_f000,
                0,
                0x2000,
                Perms::R,
                PageSizePolicy::LARGEST
            ),
            Err(BuildError::OutOfRange { .. })
        ));
        // Write-only is not expressible in x86 tables.
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0,
                0,
                0x1000,
                Perms::W,
                PageSizePolicy::LARGEST
            ),
            Err(BuildError::UnsupportedPerms(Perms::W))
        );
    }

    #[test]
    fn amd_v1_sized_pages_bit_by_bit() {
        let cfg = WalkConfig::AmdV1(AmdV1Config::new(3));
        let (mem, mut alloc, mut b) = setup(cfg);
        b.map(
            &mem,
            &mut alloc,
            0x1_0000,
            0x7_0000,
            0x1_0000,
            Perms::RW,
            PageSizePolicy::Fixed(16),
        )
        .unwrap();
        // Root PDE: PR | NL=2 | IR | IW.
        let pde = mem.read_u64(b.root()).unwrap();
        assert_eq!(pde & !ADDR, 1 | (2 << 9) | (1 << 61) | (1 << 62));
        // Sixteen replicated PTEs: PR | NL=7 | bits 14:12 = 111 | IR | IW.
        let pt = mem.read_u64(pde & ADDR).unwrap() & ADDR;
        for i in 16..32 {
            assert_eq!(
                mem.read_u64(pt + i * 8).unwrap(),
                0x7_0000 | 0x7000 | 1 | (7 << 9) | (1 << 61) | (1 << 62),
                "slot {i}"
            );
        }
        assert_eq!(mem.read_u64(pt + 32 * 8).unwrap(), 0);
        // Largest picks a level-2 NL=0 2 MiB page where aligned, NL=7 sizes otherwise.
        b.map(
            &mem,
            &mut alloc,
            0x20_0000,
            0x20_0000,
            0x30_0000,
            Perms::R,
            PageSizePolicy::LARGEST,
        )
        .unwrap();
        let maps = b.mappings(&mem).unwrap();
        let shifts: Vec<_> = maps.iter().map(|m| (m.iova, m.shift)).collect();
        assert_eq!(
            shifts,
            vec![(0x1_0000, 16), (0x20_0000, 21), (0x40_0000, 20)]
        );
        let e2m = mem.read_u64(b.root() + 8).unwrap();
        assert_eq!(e2m & 0xe00, 0, "NL=0 leaf at level 2");
        // Unmapping the 64 KiB page clears all 16 slots and returns it once.
        let gone = b.unmap(&mem, &mut alloc, 0, 0x20_0000).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].shift, 16);
        for i in 0..512 {
            assert_eq!(mem.read_u64(pt + i * 8).unwrap(), 0);
        }
    }

    #[test]
    fn errors_leave_tables_unchanged() {
        let (mem, mut alloc, mut b) = setup(ss4());
        b.map(
            &mem,
            &mut alloc,
            0x20_0000,
            0x20_0000,
            0x20_0000,
            Perms::RW,
            PageSizePolicy::Fixed(21),
        )
        .unwrap();
        let before = b.mappings(&mem).unwrap();
        let used = alloc.in_use();
        // Overlap with part of a larger range.
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0x1f_0000,
                0,
                0x2_0000,
                Perms::R,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::Overlap { iova: 0x20_0000 })
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0x1001,
                0,
                0x1000,
                Perms::R,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::Unaligned {
                iova: 0x1001,
                phys: 0,
                len: 0x1000
            })
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0x1000,
                0,
                0x20_0000,
                Perms::R,
                PageSizePolicy::Fixed(21)
            ),
            Err(BuildError::Unaligned {
                iova: 0x1000,
                phys: 0,
                len: 0x20_0000
            })
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0,
                0,
                0,
                Perms::R,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::Empty)
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                1 << 48,
                0,
                0x1000,
                Perms::R,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::OutOfRange {
                iova: 1 << 48,
                len: 0x1000
            })
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0,
                1 << 52,
                0x1000,
                Perms::R,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::OutOfRange {
                iova: 0,
                len: 0x1000
            })
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0,
                0,
                1 << 39,
                Perms::R,
                PageSizePolicy::Fixed(39)
            ),
            Err(BuildError::UnsupportedPageSize(39))
        );
        assert_eq!(
            b.map(
                &mem,
                &mut alloc,
                0,
                0,
                0x1000,
                Perms::X,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::UnsupportedPerms(Perms::X))
        );
        // Unmap of half a 2 MiB page.
        assert_eq!(
            b.unmap(&mem, &mut alloc, 0x20_0000, 0x1000),
            Err(BuildError::SplitsPage { iova: 0x20_0000 })
        );
        assert_eq!(b.mappings(&mem).unwrap(), before);
        assert_eq!(alloc.in_use(), used);
    }

    #[test]
    fn allocator_exhaustion_rolls_back() {
        let mem = SparseMem::new(1 << 40);
        // Root + 3 tables for the first page, then room for just one more table.
        let mut alloc = BumpAllocator::new(0x10_0000, 0x10_5000);
        let mut b = TableBuilder::new(ss4(), &mem, &mut alloc).unwrap();
        b.map(
            &mem,
            &mut alloc,
            0,
            0,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        assert_eq!(alloc.in_use(), 4);
        // Two pages: one in the existing level-1 table, one needing two new tables (PDPT
        // exists: needs a new PD and PT) -> exhausted after the first new table.
        let r = b.map(
            &mem,
            &mut alloc,
            0x1000,
            0x1000,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        );
        assert!(r.is_ok());
        let before = b.mappings(&mem).unwrap();
        let r = b.map(
            &mem,
            &mut alloc,
            0x8000_0000 - 0x1000,
            0x9000,
            0x2000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        );
        assert_eq!(r, Err(BuildError::AllocatorExhausted));
        assert_eq!(b.mappings(&mem).unwrap(), before);
        assert_eq!(alloc.in_use(), 4);
        // A huge 4 KiB-page request fails when the tables run out, without planning 2^28
        // pages up front, and leaves nothing behind.
        let r = b.map(
            &mem,
            &mut alloc,
            1 << 39,
            0,
            1 << 40,
            Perms::R,
            PageSizePolicy::Fixed(12),
        );
        assert_eq!(r, Err(BuildError::AllocatorExhausted));
        assert_eq!(b.mappings(&mem).unwrap(), before);
        assert_eq!(alloc.in_use(), 4);
        // The walker agrees nothing is mapped there.
        assert!(walk(&ss4(), &mem, b.root(), 0x7fff_f000, Access::READ, &mut ()).is_err());
    }

    #[test]
    fn unmap_frees_empty_tables_and_reports() {
        let (mem, mut alloc, mut b) = setup(ss4());
        b.map(
            &mem,
            &mut alloc,
            0x1000,
            0x5000,
            0x3000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        b.map(
            &mem,
            &mut alloc,
            0x80_0000_0000,
            0x40_0000,
            0x40_0000,
            Perms::R,
            PageSizePolicy::LARGEST,
        )
        .unwrap();
        assert_eq!(alloc.in_use(), 1 + 3 + 2);
        // Unmap a hole-containing range covering the first mapping.
        let gone = b.unmap(&mem, &mut alloc, 0, 0x10_0000).unwrap();
        assert_eq!(
            gone.iter()
                .map(|m| (m.iova, m.phys, m.shift))
                .collect::<Vec<_>>(),
            vec![
                (0x1000, 0x5000, 12),
                (0x2000, 0x6000, 12),
                (0x3000, 0x7000, 12)
            ]
        );
        assert_eq!(alloc.in_use(), 1 + 2);
        assert!(b.unmap(&mem, &mut alloc, 0, 0x10_0000).unwrap().is_empty());
        let gone = b
            .unmap(&mem, &mut alloc, 0x80_0000_0000, 0x40_0000)
            .unwrap();
        assert_eq!(gone.len(), 2);
        assert_eq!(alloc.in_use(), 1);
        for i in 0..512 {
            assert_eq!(mem.read_u64(b.root() + i * 8).unwrap(), 0);
        }
        b.map(
            &mem,
            &mut alloc,
            0,
            0,
            0x1000,
            Perms::R,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
        b.destroy(&mem, &mut alloc).unwrap();
        assert_eq!(alloc.in_use(), 0);
    }

    #[test]
    fn corrupt_tables_are_reported_not_followed_blindly() {
        let (mem, mut alloc, mut b) = setup(WalkConfig::AmdV1(AmdV1Config::new(3)));
        // A root entry that skips levels: not something this builder writes.
        mem.write_u64(b.root(), 0x5000 | 1 | (1 << 9)).unwrap();
        assert!(matches!(b.mappings(&mem), Err(BuildError::Corrupt { .. })));
        assert!(matches!(
            b.map(
                &mem,
                &mut alloc,
                0,
                0,
                0x1000,
                Perms::R,
                PageSizePolicy::Fixed(12)
            ),
            Err(BuildError::Corrupt { .. })
        ));
        // Tables that point back at themselves are reported, not walked forever.
        let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
        for i in 0..512 {
            mem.write_u64(0x5000 + i * 8, 0x5000 | 3).unwrap();
        }
        let cyc = TableBuilder::with_root(ss, 0x5000).unwrap();
        assert_eq!(
            cyc.mappings(&mem),
            Err(BuildError::Corrupt {
                addr: 0x5000,
                entry: 0x5003
            })
        );
        assert!(matches!(
            cyc.destroy(&mem, &mut alloc),
            Err(BuildError::Corrupt { .. })
        ));
        // A pointer outside memory is a memory error.
        mem.write_u64(b.root(), (1 << 45) | 1 | (2 << 9)).unwrap();
        assert!(matches!(b.mappings(&mem), Err(BuildError::Memory(_))));
        assert_eq!(
            TableBuilder::with_root(WalkConfig::AmdV1(AmdV1Config::new(0)), 0).unwrap_err(),
            BuildError::BadLevels
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Present-entry counts agree with memory after every operation, including failed
        /// maps (overlaps, allocator exhaustion) and partial unmaps, in every format.
        #[test]
        fn present_counts_follow_every_operation(
            fmt in 0u8..3,
            ops in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0u64..64, 1u64..40, proptest::prelude::any::<bool>()),
                1..40,
            ),
        ) {
            let cfg = match fmt {
                0 => ss4(),
                1 => WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4)),
                _ => WalkConfig::AmdV1(AmdV1Config::new(3)),
            };
            let mem = SparseMem::new(1 << 40);
            // Small enough that some maps run out of table pages.
            let mut alloc = BumpAllocator::new(0x100_0000, 0x101_4000);
            let mut b = TableBuilder::new(cfg, &mem, &mut alloc).unwrap();
            for (map, slot, pages, spread) in ops {
                // Addresses spread over several level-2/3 tables, or packed in one.
                let iova = if spread { slot << 30 | (slot % 7) << 21 } else { slot << 12 };
                if map {
                    let _ = b.map(&mem, &mut alloc, iova, iova, pages << 12, Perms::RW,
                        PageSizePolicy::LARGEST);
                } else {
                    b.unmap(&mem, &mut alloc, iova & !0x1f_ffff, 0x40_0000).unwrap();
                }
                proptest::prop_assert_eq!(b.check_counts(&mem), Ok(()));
            }
            let maps = b.mappings(&mem).unwrap();
            b.unmap(&mem, &mut alloc, 0, 1 << 39).unwrap();
            proptest::prop_assert_eq!(b.check_counts(&mem), Ok(()));
            proptest::prop_assert!(maps.iter().all(|m| m.phys == m.iova));
            proptest::prop_assert_eq!(alloc.in_use(), 1);
            b.destroy(&mem, &mut alloc).unwrap();
            proptest::prop_assert_eq!(alloc.in_use(), 0);
        }
    }

    /// Never reuses a page (like an allocator whose frees are deferred until walkers are
    /// done), so a walker racing with map/unmap can only see whole generations.
    struct NoReuse(u64, u64);
    impl FrameAllocator for NoReuse {
        fn alloc_frame(&mut self) -> Option<u64> {
            (self.0 < self.1).then(|| {
                self.0 += TABLE_SIZE;
                self.0 - TABLE_SIZE
            })
        }
        fn free_frame(&mut self, _addr: u64) {}
    }

    #[test]
    fn walkers_racing_with_map_and_unmap_see_whole_generations() {
        use crate::mem::FlatMem;
        use std::sync::atomic::{AtomicBool, Ordering};
        let mem = FlatMem::new(0, 16 << 20);
        let cfg = WalkConfig::VtdSecondStage(VtdSsConfig::new(4).with_slade(true));
        let mut alloc = NoReuse(0x10_0000, 16 << 20);
        let mut b = TableBuilder::new(cfg, &mem, &mut alloc).unwrap();
        let (iova, len) = (0x4000_0000u64, 0x40_0000u64);
        let gen_base = |g: u64| 0x1_0000_0000 + g * 0x100_0000;
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let walker = |seed: u64| {
                let (mem, done) = (&mem, &done);
                let root = b.root();
                s.spawn(move || {
                    let mut x = seed;
                    let mut hits = 0u32;
                    while !done.load(Ordering::Acquire) {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let off = (x >> 20) % len;
                        match walk(&cfg, mem, root, iova + off, Access::READ, &mut ()) {
                            Ok(t) => {
                                let g = (t.output - 0x1_0000_0000) / 0x100_0000;
                                assert_eq!(t.output, gen_base(g) + off, "{t:?}");
                                hits += 1;
                            }
                            Err(f) => assert_eq!(f.kind, crate::types::FaultKind::NotPresent),
                        }
                    }
                    hits
                })
            };
            let w1 = walker(1);
            let w2 = walker(2);
            for g in 0..150u64 {
                let policy = if g % 2 == 0 {
                    PageSizePolicy::LARGEST
                } else {
                    PageSizePolicy::Fixed(12)
                };
                b.map(&mem, &mut alloc, iova, gen_base(g), len, Perms::R, policy)
                    .unwrap();
                std::thread::yield_now();
                let gone = b.unmap(&mem, &mut alloc, iova, len).unwrap();
                assert_eq!(gone.iter().map(|m| 1u64 << m.shift).sum::<u64>(), len);
            }
            done.store(true, Ordering::Release);
            let _ = (w1.join().unwrap(), w2.join().unwrap());
        });
    }
}
