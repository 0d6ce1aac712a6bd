//! Vendor-neutral cache wiring: lookups that record themselves in the [`Trace`], the generation
//! token discipline around walks, cache geometry from an entry count, and the
//! paging-structure caches every unit keeps the same way.

use iotlb::{Cache, CacheConfig, CacheStats, Invalidation, Tag, Token, Value};

use crate::trace::{CacheId, Stage, Trace};

/// A cache that records every lookup in the translation's trace.
#[derive(Debug)]
pub struct TracedCache<V: Value> {
    naming: Naming,
    cache: Cache<V>,
}

/// How a [`TracedCache`] names itself in a trace.
#[derive(Debug, Clone, Copy)]
enum Naming {
    /// Always the same cache.
    Fixed(CacheId),
    /// A paging-structure cache: the stage and level come from the tag.
    PagingStructure,
}

/// Why a cache could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache geometry: {entries} entries, {ways} ways")]
pub struct GeometryError {
    /// Entries asked for.
    pub entries: usize,
    /// Associativity asked for.
    pub ways: usize,
}

/// A geometry of `entries` entries in `ways`-way sets (the set count rounded down to a power of
/// two, at least one set), with 64 domain-invalidation slots per entry, up to one per 16-bit
/// domain id: exact for caches of 1024 entries or more, and cheap to build for the small caches
/// of tests and fuzzing. Domains sharing a slot are invalidated together, which is never wrong.
pub fn geometry(entries: usize, ways: usize) -> Result<CacheConfig, GeometryError> {
    let err = GeometryError { entries, ways };
    if ways == 0 || entries < ways {
        return Err(err);
    }
    let sets = entries / ways;
    let sets = 1usize << (usize::BITS - 1 - sets.leading_zeros());
    let slots = (sets * ways * 64).next_power_of_two().min(1 << 16);
    Ok(CacheConfig::new(sets, ways).with_domain_slots(slots))
}

impl<V: Value> TracedCache<V> {
    /// A cache of `entries` entries, `ways` ways, whose lookups are reported as `id`.
    pub fn new(entries: usize, ways: usize, id: CacheId) -> Result<Self, GeometryError> {
        Self::named(entries, ways, Naming::Fixed(id))
    }

    /// A paging-structure cache of `entries` entries, `ways` ways: its lookups are reported
    /// with the stage and level of their tags.
    fn paging_structure(entries: usize, ways: usize) -> Result<Self, GeometryError> {
        Self::named(entries, ways, Naming::PagingStructure)
    }

    fn named(entries: usize, ways: usize, naming: Naming) -> Result<Self, GeometryError> {
        let cfg = geometry(entries, ways)?;
        let cache = Cache::new(cfg).map_err(|_| GeometryError { entries, ways })?;
        Ok(Self { naming, cache })
    }

    /// The name of the cache a lookup of `tag` is reported under.
    #[inline]
    fn id(&self, tag: &Tag) -> CacheId {
        match self.naming {
            Naming::Fixed(id) => id,
            Naming::PagingStructure => psc_id(tag),
        }
    }

    /// Takes a generation token; take it before reading the structures a later insert caches.
    #[inline]
    pub fn token(&self) -> Token {
        self.cache.token()
    }

    /// Looks `tag` up, recording the lookup and its outcome in `trace`.
    #[inline]
    pub fn lookup(&self, tag: &Tag, trace: &mut Trace) -> Option<V> {
        let v = self.cache.lookup(tag);
        if trace.is_on() {
            trace.cache(self.id(tag), v.is_some());
        }
        v
    }

    /// Inserts `value` under `tag` unless an invalidation covering it began after `token`,
    /// recording the fill in `trace`. Refusals and malformed tags are logged and otherwise
    /// ignored: caching is an optimisation.
    #[inline]
    pub fn insert(&self, token: Token, tag: &Tag, value: &V, trace: &mut Trace) {
        if trace.is_on() {
            trace.fill(self.id(tag));
        }
        match self.cache.insert(token, tag, value) {
            Ok(o) if !o.is_stored() => log::trace!("cache insert {tag:?} refused: {o:?}"),
            Ok(_) => {}
            Err(e) => log::warn!("cache insert {tag:?}: {e}"),
        }
    }

    /// Applies an invalidation; malformed selectors fall back to a global invalidation, which
    /// covers everything they could have named.
    pub fn invalidate(&self, inv: &iotlb::Invalidation) {
        if let Err(e) = self.cache.invalidate(inv) {
            log::warn!("cache invalidation {inv:?} refused ({e}); invalidating everything");
            let _ = self.cache.invalidate(&iotlb::Invalidation::Global);
        }
    }

    /// The cache's statistics.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

/// Flag of a cached translation: the leaf's dirty flag is known to be set (or the stage does no
/// A/D tracking), so a write may use the entry without a walk.
pub const FLAG_DIRTY_OK: u32 = 1;

/// A cached paging-structure entry: where the next table is and what the levels above granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PscEntry {
    /// The next table's address.
    pub next_table: u64,
    /// The next table's level.
    pub next_level: u8,
    /// Permission bits accumulated so far (pagewalk `Perms` encoding).
    pub perms: u8,
}

impl iotlb::Value for PscEntry {
    const WORDS: usize = 2;
    fn encode(&self, out: &mut [u64]) {
        out[0] = self.next_table;
        out[1] = u64::from(self.next_level) | (u64::from(self.perms) << 8);
    }
    fn decode(words: &[u64]) -> Self {
        Self {
            next_table: words[0],
            next_level: (words[1] & 0xff) as u8,
            perms: ((words[1] >> 8) & 0xff) as u8,
        }
    }
}

fn psc_id(tag: &Tag) -> CacheId {
    CacheId::PagingStructure {
        stage: match tag.stage {
            Some(iotlb::Stage::First | iotlb::Stage::Nested) => Stage::First,
            _ => Stage::Second,
        },
        level: tag.level,
    }
}

/// The highest level of a cached non-leaf entry (a 5-level table's root entries).
pub const PSC_MAX_LEVEL: u8 = 5;

/// Paging-structure caches for levels 2 to [`PSC_MAX_LEVEL`] (VT-d spec rev 4.1 §6.2.5; AMD-Vi keeps the same page-directory caches): like hardware's PDE,
/// PDPTE, PML4E and PML5E caches, one structure per level, so a lookup probes one entry size.
#[derive(Debug)]
pub struct PagingStructureCaches {
    levels: [TracedCache<PscEntry>; PSC_MAX_LEVEL as usize - 1],
}

impl PagingStructureCaches {
    /// Each level's cache holds `entries` entries in `ways` ways.
    pub fn new(entries: usize, ways: usize) -> Result<Self, GeometryError> {
        Ok(Self {
            levels: [
                TracedCache::paging_structure(entries, ways)?,
                TracedCache::paging_structure(entries, ways)?,
                TracedCache::paging_structure(entries, ways)?,
                TracedCache::paging_structure(entries, ways)?,
            ],
        })
    }

    /// The cache of entries at `level` (2..=5).
    #[inline]
    pub fn level(&self, level: u8) -> Option<&TracedCache<PscEntry>> {
        self.levels.get(usize::from(level).checked_sub(2)?)
    }

    /// Generation tokens of every level, indexed by level - 2.
    #[inline]
    pub fn tokens(&self) -> [Token; PSC_MAX_LEVEL as usize - 1] {
        [
            self.levels[0].token(),
            self.levels[1].token(),
            self.levels[2].token(),
            self.levels[3].token(),
        ]
    }

    /// Applies an invalidation to every level.
    pub fn invalidate(&self, inv: &Invalidation) {
        for c in &self.levels {
            c.invalidate(inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotlb::{Invalidation, Perms, Translation};

    #[test]
    fn geometry_rounds_sets_down_to_a_power_of_two() {
        assert_eq!(geometry(1024, 8).unwrap().sets, 128);
        assert_eq!(geometry(1000, 8).unwrap().sets, 64);
        assert_eq!(geometry(8, 8).unwrap().sets, 1);
        assert!(geometry(4, 8).is_err());
        assert!(geometry(8, 0).is_err());
    }

    #[test]
    fn traced_lookups_record_hits_and_misses() {
        let c: TracedCache<Translation> = TracedCache::new(64, 4, CacheId::Iotlb).unwrap();
        let tag = Tag::translation(1, None, 0x10, 0);
        let mut trace = Trace::new();
        assert!(c.lookup(&tag, &mut trace).is_none());
        let t = Translation {
            output: 0x5000,
            page_shift: 12,
            perms: Perms::R,
            flags: 0,
        };
        let tok = c.token();
        c.insert(tok, &tag, &t, &mut trace);
        assert_eq!(c.lookup(&tag, &mut trace), Some(t));
        assert_eq!(trace.events().len(), 3, "lookup, fill, lookup");
        assert_eq!(trace.lookup(CacheId::Iotlb), Some(false));
        c.invalidate(&Invalidation::Domain(1));
        assert!(c.lookup(&tag, &mut trace).is_none());
        // An insert with a token older than the invalidation is refused.
        c.insert(tok, &tag, &t, &mut trace);
        assert!(c.lookup(&tag, &mut trace).is_none());
        assert_eq!(c.stats().hits, 1);
    }
}
