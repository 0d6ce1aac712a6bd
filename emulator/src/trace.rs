//! The event trace a translation returns: which caches were looked up (hit or miss) and which
//! memory-resident structures were read or updated. The timing model turns traces into cycles;
//! the function model never depends on them.
//!
//! A [`Trace`] is a fixed-capacity array: recording never allocates. Events past the capacity are
//! counted in [`Trace::dropped`] instead of stored.

/// Which translation stage a paging-structure access or cache belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// First stage (VT-d first-stage / AMD-Vi v2 guest tables).
    First,
    /// Second stage (VT-d second-stage / AMD-Vi v1 host tables).
    Second,
}

/// The caches a hardware model can consult.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
pub enum MemTarget {
    /// A root-table entry (VT-d) or device-table entry (AMD-Vi).
    RootEntry,
    /// A context-table entry.
    ContextEntry,
    /// A PASID-directory entry (VT-d) or GCR3 table level (AMD-Vi).
    PasidDirEntry,
    /// A PASID-table entry.
    PasidEntry,
    /// A paging entry of `stage` at `level` (1 = the leaf page table).
    PageTable {
        /// The stage of the table.
        stage: Stage,
        /// The level of the table.
        level: u8,
    },
}

/// One event of a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    /// A cache lookup and its outcome.
    CacheLookup {
        /// The cache consulted.
        cache: CacheId,
        /// Whether it hit.
        hit: bool,
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

/// The number of events a [`Trace`] stores.
pub const TRACE_CAPACITY: usize = 64;

/// A fixed-capacity trace of one translation.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    events: [TraceEvent; TRACE_CAPACITY],
    len: u8,
    dropped: u32,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Trace {
    fn eq(&self, other: &Self) -> bool {
        self.events() == other.events() && self.dropped == other.dropped
    }
}

impl Eq for Trace {}

impl Trace {
    /// An empty trace.
    pub const fn new() -> Self {
        Self {
            events: [TraceEvent::CacheLookup {
                cache: CacheId::Iotlb,
                hit: false,
            }; TRACE_CAPACITY],
            len: 0,
            dropped: 0,
        }
    }

    /// Appends `event`, or counts it as dropped when the trace is full.
    #[inline]
    pub fn push(&mut self, event: TraceEvent) {
        let len = usize::from(self.len);
        if len < TRACE_CAPACITY {
            self.events[len] = event;
            self.len += 1;
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// Records a cache lookup.
    #[inline]
    pub fn cache(&mut self, cache: CacheId, hit: bool) {
        self.push(TraceEvent::CacheLookup { cache, hit });
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
        &self.events[..usize::from(self.len)]
    }

    /// How many events did not fit.
    pub fn dropped(&self) -> u32 {
        self.dropped
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

    /// Forgets all events.
    pub fn clear(&mut self) {
        self.len = 0;
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
        t.clear();
        assert!(t.events().is_empty());
        assert_eq!(t.dropped(), 0);
    }
}
