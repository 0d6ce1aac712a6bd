//! Walk observers: how a walker reports every memory reference and every non-leaf entry it
//! visits, without allocating.
//!
//! The hardware models implement [`WalkObserver`] on their own trace type (which also records
//! cache lookups) and use [`WalkObserver::table`] to fill their paging-structure caches. `()` is
//! the no-op observer; [`RecordingTrace`] is a fixed-capacity recorder for tests.

use crate::types::{Perms, Stage};

/// Whether a memory reference was a plain read or an A/D locked compare-and-exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RefKind {
    /// A 64-bit entry read.
    #[default]
    Read,
    /// A 64-bit compare-and-exchange that sets accessed/dirty flags (successful or not).
    AdUpdate,
}

/// One memory reference made by a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MemRef {
    /// Stage whose table was referenced.
    pub stage: Stage,
    /// Level of the table referenced.
    pub level: u8,
    /// System physical address of the entry.
    pub addr: u64,
    /// Read or A/D update.
    pub kind: RefKind,
}

/// A non-leaf entry the walk went through: the state a paging-structure cache would hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TableVisit {
    /// Stage of the entry.
    pub stage: Stage,
    /// Level of the entry (the table it sits in).
    pub level: u8,
    /// The input address with the bits below this entry's coverage cleared.
    pub prefix: u64,
    /// Address of the next table, as the entry holds it (a GPA for first-stage entries of a
    /// nested walk).
    pub next_table: u64,
    /// Level of the next table (one below `level`, or lower where AMD-Vi v1 skips levels).
    pub next_level: u8,
    /// Permissions accumulated down to and including this entry.
    pub perms: Perms,
}

/// Receives what a walk does. Every method has a no-op default.
pub trait WalkObserver {
    /// A memory reference to a table entry.
    #[inline]
    fn mem_ref(&mut self, r: MemRef) {
        let _ = r;
    }
    /// A valid non-leaf entry has been visited.
    #[inline]
    fn table(&mut self, v: TableVisit) {
        let _ = v;
    }
}

/// The no-op observer.
impl WalkObserver for () {}

impl<T: WalkObserver + ?Sized> WalkObserver for &mut T {
    #[inline]
    fn mem_ref(&mut self, r: MemRef) {
        (**self).mem_ref(r)
    }
    #[inline]
    fn table(&mut self, v: TableVisit) {
        (**self).table(v)
    }
}

/// A fixed-capacity recording of a walk: up to `N` memory references and `N` table visits.
/// Anything beyond the capacity is counted in [`RecordingTrace::dropped`], never allocated.
#[derive(Debug, Clone)]
pub struct RecordingTrace<const N: usize = 128> {
    refs: [MemRef; N],
    nrefs: usize,
    visits: [TableVisit; N],
    nvisits: usize,
    dropped: usize,
}

impl<const N: usize> Default for RecordingTrace<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RecordingTrace<N> {
    /// An empty trace.
    pub fn new() -> Self {
        Self {
            refs: [MemRef::default(); N],
            nrefs: 0,
            visits: [TableVisit::default(); N],
            nvisits: 0,
            dropped: 0,
        }
    }
    /// The memory references recorded, in order.
    pub fn refs(&self) -> &[MemRef] {
        &self.refs[..self.nrefs]
    }
    /// The table visits recorded, in order.
    pub fn visits(&self) -> &[TableVisit] {
        &self.visits[..self.nvisits]
    }
    /// Events that did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
    /// Number of plain reads recorded.
    pub fn reads(&self) -> usize {
        self.refs()
            .iter()
            .filter(|r| r.kind == RefKind::Read)
            .count()
    }
    /// Forget everything recorded.
    pub fn clear(&mut self) {
        self.nrefs = 0;
        self.nvisits = 0;
        self.dropped = 0;
    }
}

impl<const N: usize> WalkObserver for RecordingTrace<N> {
    fn mem_ref(&mut self, r: MemRef) {
        match self.refs.get_mut(self.nrefs) {
            Some(slot) => {
                *slot = r;
                self.nrefs += 1;
            }
            None => self.dropped += 1,
        }
    }
    fn table(&mut self, v: TableVisit) {
        match self.visits.get_mut(self.nvisits) {
            Some(slot) => {
                *slot = v;
                self.nvisits += 1;
            }
            None => self.dropped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_trace_keeps_order_and_counts_overflow() {
        let mut t = RecordingTrace::<2>::new();
        for i in 0..3u64 {
            t.mem_ref(MemRef {
                stage: Stage::Second,
                level: i as u8,
                addr: i * 8,
                kind: if i == 1 {
                    RefKind::AdUpdate
                } else {
                    RefKind::Read
                },
            });
        }
        assert_eq!(t.refs().len(), 2);
        assert_eq!(t.refs()[1].addr, 8);
        assert_eq!(t.reads(), 1);
        assert_eq!(t.dropped(), 1);
        t.table(TableVisit::default());
        assert_eq!(t.visits().len(), 1);
        t.clear();
        assert!(t.refs().is_empty() && t.visits().is_empty() && t.dropped() == 0);
        // Through a mutable reference too (the blanket impl).
        fn feed<O: WalkObserver>(mut o: O) {
            o.mem_ref(MemRef::default());
            o.table(TableVisit::default());
        }
        feed(&mut t);
        feed(());
        assert_eq!(t.refs().len(), 1);
    }
}
