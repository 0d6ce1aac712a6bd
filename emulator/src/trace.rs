//! The event trace a translation returns: which caches were looked up (hit or miss) and
//! filled, where each table walk started and ended, and which memory-resident structures were
//! read or updated. The timing model turns traces into cycles; the function model never depends
//! on them.
//!
//! A [`Trace`] holds at most [`TRACE_CAPACITY`] events, reserved when it is made: recording
//! never allocates. The capacity covers the worst translation without A/D contention (an
//! uncached 5-level-over-5-level nested walk with first- and second-stage A/D updates and every
//! cache lookup and fill, about a hundred events; a test in the VT-d model drives it) with room
//! for retried A/D updates. Events past it are counted in [`Trace::dropped`] and reported by
//! [`Trace::overflowed`], so an under-count is visible, never silent. A trace made with
//! [`Trace::off`] records nothing and costs nothing: the untraced DMA fast path uses one.

/// Which translation stage a paging-structure access or cache belongs to: the walkers' own
/// (VT-d first-stage / AMD-Vi v2 guest tables; VT-d second-stage / AMD-Vi v1 host tables).
pub use pagewalk::Stage;

/// The caches a hardware model can consult.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheId {
    /// The IOTLB (final translations).
    Iotlb,
    /// The context cache (VT-d context entries) or device-table cache (AMD-Vi DTEs).
    Context,
    /// The PASID cache (VT-d PASID-table entries) or GCR3-table cache (AMD-Vi).
    Pasid,
    /// A paging-structure cache holding non-leaf entries of `stage` at `level`.
    PagingStructure {
        /// The stage whose tables are cached.
        stage: Stage,
        /// The level of the cached entry (1 = leaf table).
        level: u8,
    },
}

/// What a memory reference touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemTarget {
    /// A root-table entry (VT-d).
    RootEntry,
    /// A context-table entry (VT-d).
    ContextEntry,
    /// A PASID-directory entry (VT-d).
    PasidDirEntry,
    /// A PASID-table entry (VT-d).
    PasidEntry,
    /// A device-table entry (AMD-Vi).
    DeviceTableEntry,
    /// A GCR3-table entry (AMD-Vi) at `level` (1 = the entry holding the guest CR3).
    Gcr3Entry {
        /// The GCR3 table level.
        level: u8,
    },
    /// A paging entry of `stage` at `level` (1 = the leaf page table).
    PageTable {
        /// The stage of the table.
        stage: Stage,
        /// The level of the table.
        level: u8,
    },
}

/// The kind of table walk a [`TraceEvent::WalkStart`] begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WalkKind {
    /// A one-dimensional walk of `stage`'s tables.
    OneD(Stage),
    /// A two-dimensional walk: first-stage tables whose addresses (and output) are translated by
    /// the second stage.
    Nested,
}

/// One event of a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TraceEvent {
    /// A cache lookup and its outcome.
    CacheLookup {
        /// The cache consulted.
        cache: CacheId,
        /// Whether it hit.
        hit: bool,
    },
    /// A cache fill: what a walk or a structure read produced offered to a cache (the cache
    /// may still refuse it when an invalidation raced the walk).
    CacheFill {
        /// The cache filled.
        cache: CacheId,
    },
    /// A page-table walk begins (after the cache lookups that did not end the translation).
    WalkStart {
        /// One- or two-dimensional.
        kind: WalkKind,
        /// The level the walk starts at: the root's, or below a paging-structure-cache hit.
        level: u8,
    },
    /// The walk begun by the last [`TraceEvent::WalkStart`] ends.
    WalkEnd {
        /// Whether it ended in a fault.
        faulted: bool,
    },
    /// A read of a memory-resident structure.
    MemRead {
        /// What was read.
        target: MemTarget,
        /// The system physical address read.
        addr: u64,
    },
    /// A locked update of a memory-resident structure (accessed/dirty bits).
    MemWrite {
        /// What was written.
        target: MemTarget,
        /// The system physical address written.
        addr: u64,
    },
}

/// The number of events a [`Trace`] stores (see the module notes for how it was sized).
pub const TRACE_CAPACITY: usize = 192;

/// The trace of one translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    events: Vec<TraceEvent>,
    on: bool,
    dropped: u32,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    /// An empty trace that records (its [`TRACE_CAPACITY`] events reserved now).
    pub fn new() -> Self {
        Self {
            events: Vec::with_capacity(TRACE_CAPACITY),
            on: true,
            dropped: 0,
        }
    }

    /// A trace that records nothing (no allocation): for translations nobody will time or
    /// inspect.
    pub const fn off() -> Self {
        Self {
            events: Vec::new(),
            on: false,
            dropped: 0,
        }
    }

    /// Whether events are recorded.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Appends `event`, or counts it as dropped when the trace is full.
    #[inline]
    pub fn push(&mut self, event: TraceEvent) {
        if !self.on {
            return;
        }
        if self.events.len() < TRACE_CAPACITY {
            self.events.push(event);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// Records a cache lookup.
    #[inline]
    pub fn cache(&mut self, cache: CacheId, hit: bool) {
        self.push(TraceEvent::CacheLookup { cache, hit });
    }

    /// Records a cache fill.
    #[inline]
    pub fn fill(&mut self, cache: CacheId) {
        self.push(TraceEvent::CacheFill { cache });
    }

    /// Records the start of a walk.
    #[inline]
    pub fn walk_start(&mut self, kind: WalkKind, level: u8) {
        self.push(TraceEvent::WalkStart { kind, level });
    }

    /// Records the end of a walk.
    #[inline]
    pub fn walk_end(&mut self, faulted: bool) {
        self.push(TraceEvent::WalkEnd { faulted });
    }

    /// Records a memory read.
    #[inline]
    pub fn read(&mut self, target: MemTarget, addr: u64) {
        self.push(TraceEvent::MemRead { target, addr });
    }

    /// Records a memory write.
    #[inline]
    pub fn write(&mut self, target: MemTarget, addr: u64) {
        self.push(TraceEvent::MemWrite { target, addr });
    }

    /// The recorded events, oldest first.
    pub fn events(&self) -> &[TraceEvent] {
        &self.events
    }

    /// Number of events recorded.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many events did not fit.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Whether any event did not fit: the trace under-counts what the translation did.
    pub fn overflowed(&self) -> bool {
        self.dropped != 0
    }

    /// Number of memory reads recorded.
    pub fn mem_reads(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, TraceEvent::MemRead { .. }))
            .count()
    }

    /// The outcome of the first lookup of `cache`, if there was one.
    pub fn lookup(&self, cache: CacheId) -> Option<bool> {
        self.events().iter().find_map(|e| match e {
            TraceEvent::CacheLookup { cache: c, hit } if *c == cache => Some(*hit),
            _ => None,
        })
    }

    /// Forgets all events (a trace made with [`Trace::off`] stays off).
    pub fn clear(&mut self) {
        self.events.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_records_in_order_and_counts_overflow() {
        let mut t = Trace::new();
        t.cache(CacheId::Iotlb, false);
        t.read(
            MemTarget::PageTable {
                stage: Stage::Second,
                level: 4,
            },
            0x1000,
        );
        assert_eq!(t.events().len(), 2);
        assert_eq!(t.lookup(CacheId::Iotlb), Some(false));
        assert_eq!(t.lookup(CacheId::Context), None);
        assert_eq!(t.mem_reads(), 1);
        for i in 0..TRACE_CAPACITY as u64 {
            t.read(MemTarget::RootEntry, i * 16);
        }
        assert_eq!(t.events().len(), TRACE_CAPACITY);
        assert_eq!(t.dropped(), 2);
        assert!(t.overflowed());
        // Never past the capacity reserved at creation: no allocation while recording.
        assert_eq!(t.events.capacity(), TRACE_CAPACITY);
        t.clear();
        assert!(t.events().is_empty());
        assert_eq!(t.dropped(), 0);
        assert!(!t.overflowed());
    }

    #[test]
    fn an_off_trace_records_nothing() {
        let mut t = Trace::off();
        t.cache(CacheId::Iotlb, true);
        t.walk_start(WalkKind::Nested, 4);
        t.walk_end(false);
        t.fill(CacheId::Iotlb);
        assert!(!t.is_on());
        assert!(t.events().is_empty());
        assert!(!t.overflowed());
        t.clear();
        assert!(!t.is_on());
    }
}
