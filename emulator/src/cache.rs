//! Vendor-neutral cache wiring: lookups that record themselves in the [`Trace`], the generation
//! token discipline around walks, and cache geometry from an entry count.

use iotlb::{Cache, CacheConfig, CacheStats, Tag, Token, Value};

use crate::trace::{CacheId, Trace};

/// A cache that records every lookup in the translation's trace.
#[derive(Debug)]
pub struct TracedCache<V: Value> {
    id_fn: fn(&Tag) -> CacheId,
    cache: Cache<V>,
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
/// two, at least one set).
pub fn geometry(entries: usize, ways: usize) -> Result<CacheConfig, GeometryError> {
    let err = GeometryError { entries, ways };
    if ways == 0 || entries < ways {
        return Err(err);
    }
    let sets = entries / ways;
    let sets = 1usize << (usize::BITS - 1 - sets.leading_zeros());
    Ok(CacheConfig::new(sets, ways).with_domain_slots(65536))
}

impl<V: Value> TracedCache<V> {
    /// A cache of `entries` entries, `ways` ways, whose lookups are reported as `id_fn(tag)`.
    pub fn new(
        entries: usize,
        ways: usize,
        id_fn: fn(&Tag) -> CacheId,
    ) -> Result<Self, GeometryError> {
        let cfg = geometry(entries, ways)?;
        let cache = Cache::new(cfg).map_err(|_| GeometryError { entries, ways })?;
        Ok(Self { id_fn, cache })
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
        trace.cache((self.id_fn)(tag), v.is_some());
        v
    }

    /// Inserts `value` under `tag` unless an invalidation covering it began after `token`,
    /// recording the fill in `trace`. Refusals and malformed tags are logged and otherwise
    /// ignored: caching is an optimisation.
    #[inline]
    pub fn insert(&self, token: Token, tag: &Tag, value: &V, trace: &mut Trace) {
        trace.fill((self.id_fn)(tag));
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
        let c: TracedCache<Translation> = TracedCache::new(64, 4, |_| CacheId::Iotlb).unwrap();
        let tag = Tag::translation(1, None, 0x10, 0);
        let mut trace = Trace::new();
        assert!(c.lookup(&tag, &mut trace).is_none());
        let t = Translation {
            output: 0x5000,
            page_shift: 12,
            perms: Perms::READ,
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
