//! The generic set-associative cache.
//!
//! # Storage
//!
//! All entries live in one flat array of `AtomicU64` words, which starts on a 64-byte line.
//! An entry is `seq, key0, key1, stamp, value words...`, ways of a set side by side. Beside it,
//! each set keeps one *hint byte* per way (a hash of the way's key, eight to a word), so a probe
//! loads one word, finds the ways whose hint matches with a SWAR compare, and reads only those
//! entries; hints are filters, written by inserts under the way's lock, and a stale one costs a
//! wasted read, never a wrong answer (the entry's own words decide).
//!
//! * `seq` — bit 0 `LOCK` (a writer owns the entry), bits 2:1 the state (`EMPTY`, `PENDING`,
//!   `VALID`), bits 63:3 a version bumped by every change. It is the sequence word of a seqlock
//!   whose data words are themselves atomics, which is sound in Rust without `unsafe`.
//! * `key0`, `key1` — the encoded [`Tag`].
//! * `stamp` — the [`Token`] the inserting walk took before it started.
//! * the value, encoded by [`Value`].
//!
//! A hit writes nothing shared: statistics go to per-thread shards, and the pseudo-LRU
//! reference bit of the way is written only when it is clear.
//!
//! # Memory ordering
//!
//! *Readers* (lookups, scans) follow the seqlock read protocol: load `seq` (Acquire), load the
//! data words (Relaxed), `fence(Acquire)`, then either load `seq` again (Relaxed) and compare, or
//! compare-exchange `seq` against the first value. *Writers* take the entry by a CAS that sets
//! `LOCK`, issue `fence(Release)`, store the data words (Relaxed) and store the new `seq`
//! (Release). If a reader's relaxed data load saw any store of a writer, the writer's release
//! fence synchronizes with the reader's acquire fence, so the writer's `LOCK` store happens before
//! the reader's second `seq` load: the reader sees a changed `seq` and discards what it read. If
//! the reader's first load saw the writer's final `seq` store, it synchronizes with it and sees
//! all the data. Versions only grow, so there is no ABA.
//!
//! # Generations and the invalidation race
//!
//! A `clock` counts invalidations. [`Cache::token`] reads it (Acquire) before a walk; an entry
//! records that token as its `stamp`. Every invalidation takes a new clock value `c` (AcqRel
//! RMW) and records it as a *mark*:
//!
//! * `global_mark` (global invalidation) and `domain_gen[slot(domain)]` (domain invalidation):
//!   lookups reject entries whose `stamp < mark`. These invalidations are O(1): no scan. An entry
//!   whose walk began before the invalidation carries an older stamp and is dead to every lookup
//!   that happens after the invalidation, whenever it was inserted.
//! * `domain_sel[slot(domain)]` (domain+PASID and page-range invalidation) and
//!   `source_sel[slot(source)]` (source-id invalidation): these scan and remove matching entries.
//!   Inserts check them: an insert whose token is older than a mark that could cover its tag is
//!   refused.
//!
//! The scan-based kinds close the race with a Dekker-style pair of `SeqCst` fences. An insert
//! writes its entry as `PENDING` (invisible to lookups), issues `fence(SeqCst)`, then reads the
//! marks; if one moved past its token it withdraws the entry, otherwise it publishes it with a
//! CAS `PENDING -> VALID`. An invalidation stores its mark, issues `fence(SeqCst)`, then scans.
//! By the fence rule, either the insert's mark load sees the new mark (refused), or the scan's
//! `seq` load sees the `PENDING` entry or something later, and kills it (a failed publish CAS
//! makes the insert report a refusal). Anything written to the way after the scan's first read
//! belongs to an insert whose own fence comes later and therefore sees the mark. Loom models
//! `SeqCst` accesses only as AcqRel, but `SeqCst` fences fully, which is why the argument rests
//! on fences and why the loom tests check it.
//!
//! A token taken after an invalidation began (`token >= c`) belongs to a walk that read memory
//! after the guest's update was published (the clock RMW orders it), so such inserts stand.

use core::marker::PhantomData;

use crossbeam_utils::CachePadded;

use crate::invalidation::{Invalidation, PageRange};
use crate::stats::{CacheStats, Counter, Stats};
use crate::sync::{AtomicU64, Ordering, fence};
use crate::tag::{EntryKind, MAX_LEVEL, PAGE_NUMBER_BITS, PASID_MAX, Tag, key, span_mask};
use crate::value::{MAX_VALUE_WORDS, Value};
use crate::{ConfigError, InsertError, InvalidationError};

const SEQ: usize = 0;
const KEY0: usize = 1;
const KEY1: usize = 2;
const STAMP: usize = 3;
/// Header words per entry: seq, key0, key1, stamp.
const HEADER: usize = 4;

/// One entry's words: `seq, key0, key1, stamp, value..` (exactly `HEADER + V::WORDS` long, so
/// the header's fixed indices need no bounds checks).
struct Entry<'a>(&'a [AtomicU64]);

impl Entry<'_> {
    #[inline]
    fn value(&self, i: usize) -> &AtomicU64 {
        &self.0[HEADER + i]
    }
}

impl core::ops::Index<usize> for Entry<'_> {
    type Output = AtomicU64;
    /// Header word `field` (`SEQ`, `KEY0`, `KEY1`, `STAMP`).
    #[inline]
    fn index(&self, field: usize) -> &AtomicU64 {
        &self.0[field]
    }
}

const LOCK: u64 = 1;
const STATE_MASK: u64 = 0b110;
const EMPTY: u64 = 0;
const PENDING: u64 = 1 << 1;
const VALID: u64 = 2 << 1;
const VERSION_ONE: u64 = 1 << 3;

/// The seq word after one more change, with `state` and no lock.
fn next(seq: u64, state: u64) -> u64 {
    (seq & !(VERSION_ONE - 1)).wrapping_add(VERSION_ONE) | state
}

/// Source-id marks: one per low byte of the source id (the devfn).
#[cfg(not(loom))]
const SOURCE_SLOTS: usize = 256;
/// Loom models stay small: four slots (source ids modulo 4).
#[cfg(loom)]
const SOURCE_SLOTS: usize = 4;
/// Retries of a scan's kill CAS on one entry; see [`Cache::scan_entry`] for why this bound holds.
const SCAN_ATTEMPTS: usize = 4;

/// The largest number of sets a cache may have.
pub const MAX_SETS: usize = 1 << 20;
/// The largest associativity (ways per set).
pub const MAX_WAYS: usize = 64;

/// Replacement policy for a full set. Both are deterministic: a given sequence of operations
/// from one thread always evicts the same ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replacement {
    /// Bit pseudo-LRU (not-recently-used): one reference bit per way, set on insert and on the
    /// first hit since it was cleared; when an insert would set the last bit of a set, the
    /// others are cleared. The victim is the lowest way whose bit is clear (the lowest way when
    /// hits have set every bit). A hit writes the set's bits only when its way's bit is clear,
    /// so hits on a working set that stays cached write no shared line.
    PseudoLru,
    /// Uniformly random way from a splitmix64 sequence seeded with `seed`.
    Random {
        /// The seed.
        seed: u64,
    },
}

/// Geometry and policy of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheConfig {
    /// Number of sets: a power of two, 1..=[`MAX_SETS`].
    pub sets: usize,
    /// Ways per set, 1..=[`MAX_WAYS`].
    pub ways: usize,
    /// Replacement policy.
    pub replacement: Replacement,
    /// Number of per-domain generation slots: a power of two, 1..=65536. A domain's slot is its
    /// id modulo this, so domain invalidation of one domain also drops the entries of domains
    /// sharing its slot (never wrong, only less precise); 65536 makes it exact.
    pub domain_slots: usize,
}

impl CacheConfig {
    /// `sets` x `ways` with pseudo-LRU replacement and 1024 domain slots.
    pub const fn new(sets: usize, ways: usize) -> Self {
        Self {
            sets,
            ways,
            replacement: Replacement::PseudoLru,
            domain_slots: 1024,
        }
    }

    /// The same geometry with another replacement policy.
    pub const fn with_replacement(mut self, replacement: Replacement) -> Self {
        self.replacement = replacement;
        self
    }

    /// The same geometry with another number of domain slots.
    pub const fn with_domain_slots(mut self, domain_slots: usize) -> Self {
        self.domain_slots = domain_slots;
        self
    }
}

/// A generation token: take it with [`Cache::token`] before walking the tables, hand it to
/// [`Cache::insert`] with the result. Tokens of one cache mean nothing to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token {
    epoch: u64,
    cache: u64,
}

impl Token {
    /// The invalidation-clock value the token captured.
    pub const fn epoch(self) -> u64 {
        self.epoch
    }
}

/// Gives every cache an identity, so a token handed to the wrong cache is caught rather than
/// compared against an unrelated clock. (Plain std atomic even under loom: it is not part of any
/// model.)
fn next_cache_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why an insert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// An invalidation that could cover the tag began after the token was taken: the walk's
    /// result may be stale.
    Invalidated,
    /// Every way of the set was being written by another thread.
    Busy,
}

/// What [`Cache::insert`] did.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InsertOutcome {
    /// Stored in a free way, a dead way, or over the entry of the same tag.
    Stored,
    /// Stored, displacing a live entry of another tag.
    StoredEvicting,
    /// Not stored.
    Refused(Refusal),
}

impl InsertOutcome {
    /// Whether the value was stored.
    pub const fn is_stored(self) -> bool {
        matches!(self, Self::Stored | Self::StoredEvicting)
    }
}

/// What a chosen way held before an insert.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Displaced {
    Nothing,
    SameTag,
    Dead,
    Live,
}

/// A lock-free set-associative cache of `V` tagged by [`Tag`]. See the module documentation for
/// the storage layout, the memory-ordering argument and the generation scheme.
pub struct Cache<V: Value> {
    sets: usize,
    set_bits: u32,
    /// The set index folds the page number by these shifts: `set_bits` times 1, 2 and 3
    /// (capped at 63).
    fold_shifts: [u32; 3],
    ways: usize,
    /// Words per set: `ways` entries of `HEADER + V::WORDS` words.
    set_words: usize,
    replacement: Replacement,
    full_ways: u64,
    /// The entry array, `origin` words in: its first word on a 64-byte boundary.
    words: Box<[AtomicU64]>,
    origin: usize,
    ref_bits: Box<[AtomicU64]>,
    /// One hint byte per way ([`hint_of`] of its key), eight to a word, `hint_words` words per
    /// set: a probe compares a set's hints in one load and reads only the ways that may match.
    hints: Box<[AtomicU64]>,
    hint_words: usize,
    rng: CachePadded<AtomicU64>,
    clock: CachePadded<AtomicU64>,
    global_mark: CachePadded<AtomicU64>,
    size_mask: CachePadded<AtomicU64>,
    domain_gen: Box<[AtomicU64]>,
    domain_sel: Box<[AtomicU64]>,
    source_sel: Box<[AtomicU64]>,
    stats: Stats,
    id: u64,
    _value: PhantomData<fn() -> V>,
}

impl<V: Value> core::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cache")
            .field("sets", &self.sets)
            .field("ways", &self.ways)
            .field("replacement", &self.replacement)
            .field("value_words", &V::WORDS)
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A byte with every lane: the SWAR constant of the hint comparison.
const LANES: u64 = 0x0101_0101_0101_0101;

/// The hint byte of a key (its matching words): seven hashed bits with the top bit set, so it
/// never equals the zero byte of a way no insert has used.
#[inline]
fn hint_of(key0: u64, masked_key1: u64) -> u8 {
    let h = (key0 ^ masked_key1.rotate_left(29)).wrapping_mul(GOLDEN_GAMMA);
    ((h >> 57) as u8) | 0x80
}

/// How many words into `words` the first 64-byte boundary lies.
fn line_origin(words: &[AtomicU64]) -> usize {
    let addr = words.as_ptr() as usize;
    (addr.next_multiple_of(64) - addr) / core::mem::size_of::<AtomicU64>()
}

fn atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl<V: Value> Cache<V> {
    /// Builds an empty cache.
    pub fn new(config: CacheConfig) -> Result<Self, ConfigError> {
        let CacheConfig {
            sets,
            ways,
            replacement,
            domain_slots,
        } = config;
        if !sets.is_power_of_two() || sets > MAX_SETS {
            return Err(ConfigError::Sets(sets));
        }
        if ways == 0 || ways > MAX_WAYS {
            return Err(ConfigError::Ways(ways));
        }
        if !domain_slots.is_power_of_two() || domain_slots > 1 << 16 {
            return Err(ConfigError::DomainSlots(domain_slots));
        }
        if V::WORDS == 0 || V::WORDS > MAX_VALUE_WORDS {
            return Err(ConfigError::ValueWords(V::WORDS));
        }
        let set_words = ways * (HEADER + V::WORDS);
        // Seven spare words, so the array can start on a line boundary wherever it lands.
        let words = atomics(sets * set_words + 7);
        let seed = match replacement {
            Replacement::Random { seed } => seed,
            Replacement::PseudoLru => 0,
        };
        Ok(Self {
            sets,
            set_bits: sets.trailing_zeros(),
            fold_shifts: {
                let k = sets.trailing_zeros();
                [k, (2 * k).min(63), (3 * k).min(63)]
            },
            ways,
            set_words,
            replacement,
            full_ways: if ways == 64 {
                u64::MAX
            } else {
                (1u64 << ways) - 1
            },
            origin: line_origin(&words),
            words,
            ref_bits: atomics(sets),
            hints: atomics(sets * ways.div_ceil(8)),
            hint_words: ways.div_ceil(8),
            rng: CachePadded::new(AtomicU64::new(seed)),
            clock: CachePadded::new(AtomicU64::new(0)),
            global_mark: CachePadded::new(AtomicU64::new(0)),
            size_mask: CachePadded::new(AtomicU64::new(0)),
            domain_gen: atomics(domain_slots),
            domain_sel: atomics(domain_slots),
            source_sel: atomics(SOURCE_SLOTS),
            stats: Stats::new(),
            id: next_cache_id(),
            _value: PhantomData,
        })
    }

    /// Number of sets.
    pub fn sets(&self) -> usize {
        self.sets
    }

    /// Ways per set.
    pub fn ways(&self) -> usize {
        self.ways
    }

    /// Total entries the cache can hold.
    pub fn capacity(&self) -> usize {
        self.sets * self.ways
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> CacheStats {
        self.stats.snapshot()
    }

    /// Takes a generation token. Take it before reading the tables an insert will be based on.
    pub fn token(&self) -> Token {
        Token {
            epoch: self.clock.load(Ordering::Acquire),
            cache: self.id,
        }
    }

    #[inline]
    fn entry(&self, set: usize, way: usize) -> Entry<'_> {
        let start = self.origin + set * self.set_words + way * (HEADER + V::WORDS);
        Entry(&self.words[start..start + HEADER + V::WORDS])
    }

    /// The set index. As in hardware, the low bits of the page number (of the source id, of the
    /// PASID) index the set, so a dense range fills every set evenly; higher bits are folded in
    /// by XOR so large strides do not all land in one set, and the other tag fields (domain,
    /// size class) offset the index through a multiplicative hash.
    #[inline]
    fn set_of(&self, key0: u64, key1: u64) -> usize {
        if self.set_bits == 0 {
            return 0;
        }
        let [k1, k2, k3] = self.fold_shifts;
        let (a, b) = key::index_words(key0, key1);
        let folded = a ^ (a >> k1) ^ (a >> k2) ^ (a >> k3);
        let offset = b.wrapping_mul(GOLDEN_GAMMA) >> (64 - k1);
        ((folded ^ offset) & (self.sets as u64 - 1)) as usize
    }

    #[inline]
    fn domain_slot(&self, domain: u16) -> usize {
        usize::from(domain) & (self.domain_gen.len() - 1)
    }

    /// Whether an entry with this stamp and `key1` was killed by an O(1) invalidation.
    #[inline]
    fn is_dead(&self, stamp: u64, key1: u64, global: u64) -> bool {
        stamp < global
            || stamp < self.domain_gen[self.domain_slot(key::domain(key1))].load(Ordering::Acquire)
    }

    /// Whether an invalidation that could cover an entry with `key1` began after `token`.
    fn token_is_stale(&self, token: u64, key1: u64) -> bool {
        let slot = self.domain_slot(key::domain(key1));
        if self.global_mark.load(Ordering::Relaxed) > token
            || self.domain_gen[slot].load(Ordering::Relaxed) > token
            || self.domain_sel[slot].load(Ordering::Relaxed) > token
        {
            return true;
        }
        match key::kind(key1) {
            Some(k) if k.is_context_type() => {
                let s = usize::from(key::source(key1)) % SOURCE_SLOTS;
                self.source_sel[s].load(Ordering::Relaxed) > token
            }
            _ => false,
        }
    }

    /// Marks a way referenced: after a hit, or (`inserted`) after an insert.
    ///
    /// A hit writes only when the way's bit is clear, that is on the first hit after an insert
    /// into the set cleared the bits: hits on a working set that stays cached write no shared
    /// line. An insert that would mark every way clears the others instead, so the set always
    /// has a cold way for the next victim.
    #[inline]
    fn touch(&self, set: usize, way: usize, inserted: bool) {
        if self.replacement != Replacement::PseudoLru {
            return;
        }
        let bit = 1u64 << way;
        let bits = &self.ref_bits[set];
        let m = bits.load(Ordering::Relaxed);
        if inserted && (m | bit) == self.full_ways {
            bits.store(bit, Ordering::Relaxed);
        } else if m & bit == 0 {
            bits.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Looks up the entry whose fields equal `tag`'s and whose span contains `tag.page`; `tag.size`
    /// is ignored (every page-size class present in the cache is probed, smallest first).
    /// Context-type tags match on source id alone. Lock-free and allocation-free; a tag with
    /// out-of-range fields is a miss.
    #[inline]
    pub fn lookup(&self, tag: &Tag) -> Option<V> {
        let found = self.lookup_inner(tag);
        self.stats.add(
            if found.is_some() {
                Counter::Hits
            } else {
                Counter::Misses
            },
            1,
        );
        found
    }

    #[inline]
    fn lookup_inner(&self, tag: &Tag) -> Option<V> {
        if tag.pasid.is_some_and(|p| p > PASID_MAX)
            || tag.level > MAX_LEVEL
            || tag.page >> PAGE_NUMBER_BITS != 0
        {
            return None;
        }
        let probe = Tag { size: 0, ..*tag };
        let [k0, k1] = probe.encode();
        let base0 = key::without_page(k0);
        let mask1 = key::match_mask(k1);
        let want1 = k1 & mask1;
        let global = self.global_mark.load(Ordering::Acquire);
        let mut sizes = self.size_mask.load(Ordering::Relaxed);
        while sizes != 0 {
            let size = sizes.trailing_zeros() as u8;
            sizes &= sizes - 1;
            let page = tag.page & !span_mask(size);
            let want0 = key::with_page(base0, page, size);
            let set = self.set_of(want0, k1);
            if let Some(v) = self.probe_set(set, want0, want1, mask1, global) {
                return Some(v);
            }
        }
        None
    }

    /// Probes one set: the set's hint bytes pick the ways that may hold the key (a filter, so
    /// a stale hint costs only a wasted read), and a seqlock read of each candidate decides.
    #[inline]
    fn probe_set(&self, set: usize, want0: u64, want1: u64, mask1: u64, global: u64) -> Option<V> {
        let spread = u64::from(hint_of(want0, want1)) * LANES;
        let hints = &self.hints[set * self.hint_words..(set + 1) * self.hint_words];
        for (w, word) in hints.iter().enumerate() {
            let x = word.load(Ordering::Relaxed) ^ spread;
            // A zero byte of `x` is a way whose hint matches (SWAR; a borrow can add a false
            // candidate above a true one, never lose one).
            let mut candidates = x.wrapping_sub(LANES) & !x & (LANES << 7);
            while candidates != 0 {
                let way = w * 8 + (candidates.trailing_zeros() / 8) as usize;
                candidates &= candidates - 1;
                // Bytes past the set's ways are never written, so they stay zero and never
                // match (a hint has its top bit set); the bound is kept anyway.
                if way >= self.ways {
                    break;
                }
                if let Some(v) = self.read_way(set, way, want0, want1, mask1, global) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// The seqlock read of one way: its value, if it holds (`want0`, `want1` under `mask1`),
    /// valid and not killed by a generation.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn read_way(
        &self,
        set: usize,
        way: usize,
        want0: u64,
        want1: u64,
        mask1: u64,
        global: u64,
    ) -> Option<V> {
        let e = self.entry(set, way);
        let s1 = e[SEQ].load(Ordering::Acquire);
        if s1 & (LOCK | STATE_MASK) != VALID {
            return None;
        }
        let k0 = e[KEY0].load(Ordering::Relaxed);
        let k1 = e[KEY1].load(Ordering::Relaxed);
        let stamp = e[STAMP].load(Ordering::Relaxed);
        let mut buf = [0u64; MAX_VALUE_WORDS];
        for (i, b) in buf[..V::WORDS].iter_mut().enumerate() {
            *b = e.value(i).load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if e[SEQ].load(Ordering::Relaxed) != s1
            || k0 != want0
            || k1 & mask1 != want1
            || self.is_dead(stamp, k1, global)
        {
            return None;
        }
        self.touch(set, way, false);
        Some(V::decode(&buf[..V::WORDS]))
    }

    /// Sets way `way`'s hint byte. The caller holds the way's lock, so only this thread writes
    /// that byte, and the lock's acquire makes the byte the last holder wrote visible: one XOR
    /// turns it into `hint` and leaves the other ways' bytes, which their own writers may be
    /// changing, as they are.
    fn set_hint(&self, set: usize, way: usize, hint: u8) {
        let word = &self.hints[set * self.hint_words + way / 8];
        let shift = (way % 8) * 8;
        let old = (word.load(Ordering::Relaxed) >> shift) as u8;
        word.fetch_xor(u64::from(old ^ hint) << shift, Ordering::Relaxed);
    }

    /// Stores `value` under `tag`, unless an invalidation that could cover `tag` began after
    /// `token` was taken (then the walk's result may be stale and the insert is refused and
    /// counted). An entry of the same tag is overwritten; otherwise a free or dead way is used,
    /// else the replacement policy picks a victim.
    ///
    /// Errors: the tag has a field out of range, or the token was taken from another cache.
    pub fn insert(&self, token: Token, tag: &Tag, value: &V) -> Result<InsertOutcome, InsertError> {
        if token.cache != self.id {
            return Err(InsertError::ForeignToken);
        }
        tag.validate()?;
        let [k0, k1] = tag.encode();
        let t = token.epoch;
        if self.token_is_stale(t, k1) {
            self.stats.add(Counter::Refused, 1);
            return Ok(InsertOutcome::Refused(Refusal::Invalidated));
        }
        // Before the entry becomes visible (and before the fence below): scans of page ranges
        // look only at size classes they find here.
        self.size_mask.fetch_or(1u64 << tag.size, Ordering::Relaxed);
        let mask1 = key::match_mask(k1);
        let set = self.set_of(k0, k1);
        let mut words = [0u64; MAX_VALUE_WORDS];
        value.encode(&mut words[..V::WORDS]);

        for _ in 0..=self.ways {
            let global = self.global_mark.load(Ordering::Acquire);
            let Some((way, seq, displaced)) = self.choose_way(set, k0, k1 & mask1, mask1, global)
            else {
                break;
            };
            let e = self.entry(set, way);
            if e[SEQ]
                .compare_exchange(seq, seq | LOCK, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            fence(Ordering::Release);
            self.set_hint(set, way, hint_of(k0, k1 & mask1));
            e[KEY0].store(k0, Ordering::Relaxed);
            e[KEY1].store(k1, Ordering::Relaxed);
            e[STAMP].store(t, Ordering::Relaxed);
            for (i, v) in words[..V::WORDS].iter().enumerate() {
                e.value(i).store(*v, Ordering::Relaxed);
            }
            let pending = next(seq, PENDING);
            e[SEQ].store(pending, Ordering::Release);
            match displaced {
                Displaced::Live => self.stats.add(Counter::Evictions, 1),
                Displaced::Dead => self.stats.add(Counter::Invalidated, 1),
                Displaced::Nothing | Displaced::SameTag => {}
            }
            // Dekker pair with `invalidate`: see the module documentation.
            fence(Ordering::SeqCst);
            if self.token_is_stale(t, k1) {
                // Withdraw; if a scan already killed it there is nothing to do.
                let _ = e[SEQ].compare_exchange(
                    pending,
                    next(pending, EMPTY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.stats.add(Counter::Refused, 1);
                return Ok(InsertOutcome::Refused(Refusal::Invalidated));
            }
            if e[SEQ]
                .compare_exchange(
                    pending,
                    next(pending, VALID),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                // A concurrent invalidation scan killed the pending entry (or another insert
                // took the way): the value may be stale.
                self.stats.add(Counter::Refused, 1);
                return Ok(InsertOutcome::Refused(Refusal::Invalidated));
            }
            self.touch(set, way, true);
            self.stats.add(Counter::Inserts, 1);
            return Ok(if displaced == Displaced::Live {
                InsertOutcome::StoredEvicting
            } else {
                InsertOutcome::Stored
            });
        }
        self.stats.add(Counter::Refused, 1);
        Ok(InsertOutcome::Refused(Refusal::Busy))
    }

    /// Picks the way an insert of (`want0`, `want1`) goes to, with the `seq` value it saw.
    fn choose_way(
        &self,
        set: usize,
        want0: u64,
        want1: u64,
        mask1: u64,
        global: u64,
    ) -> Option<(usize, u64, Displaced)> {
        let mut empty = None;
        let mut dead = None;
        let mut eligible = 0u64;
        let mut seqs = [0u64; MAX_WAYS];
        for (way, slot) in seqs.iter_mut().enumerate().take(self.ways) {
            let e = self.entry(set, way);
            let s = e[SEQ].load(Ordering::Acquire);
            *slot = s;
            if s & LOCK != 0 {
                continue;
            }
            let state = s & STATE_MASK;
            if state == EMPTY {
                if empty.is_none() {
                    empty = Some(way);
                }
                continue;
            }
            let k0 = e[KEY0].load(Ordering::Relaxed);
            let k1 = e[KEY1].load(Ordering::Relaxed);
            let stamp = e[STAMP].load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if e[SEQ].load(Ordering::Relaxed) != s {
                continue;
            }
            if k0 == want0 && k1 & mask1 == want1 {
                return Some((way, s, Displaced::SameTag));
            }
            if state == VALID {
                if self.is_dead(stamp, k1, global) {
                    if dead.is_none() {
                        dead = Some(way);
                    }
                } else {
                    eligible |= 1 << way;
                }
            }
        }
        if let Some(way) = empty {
            return Some((way, seqs[way], Displaced::Nothing));
        }
        if let Some(way) = dead {
            return Some((way, seqs[way], Displaced::Dead));
        }
        if eligible == 0 {
            return None;
        }
        let way = match self.replacement {
            Replacement::PseudoLru => {
                let referenced = self.ref_bits[set].load(Ordering::Relaxed);
                let cold = eligible & !referenced;
                if cold != 0 {
                    cold.trailing_zeros()
                } else {
                    eligible.trailing_zeros()
                }
            }
            Replacement::Random { .. } => {
                let x = self
                    .rng
                    .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
                    .wrapping_add(GOLDEN_GAMMA);
                let mut n = mix64(x) % u64::from(eligible.count_ones());
                let mut m = eligible;
                while n > 0 {
                    m &= m - 1;
                    n -= 1;
                }
                m.trailing_zeros()
            }
        } as usize;
        Some((way, seqs[way], Displaced::Live))
    }

    /// Applies an invalidation and returns how many entries a scan removed (0 for the O(1)
    /// global and domain invalidations, which kill entries by generation instead). When this
    /// returns, no lookup returns an entry the selector covers unless its walk began after the
    /// invalidation did.
    pub fn invalidate(&self, inv: &Invalidation) -> Result<usize, InvalidationError> {
        inv.validate()?;
        let c = self.clock.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.stats.add(Counter::Invalidations, 1);
        log::trace!("iotlb: invalidate {inv:?} at epoch {c}");
        let removed = match inv {
            Invalidation::Global => {
                self.global_mark.fetch_max(c, Ordering::Release);
                0
            }
            Invalidation::Domain(d) => {
                self.domain_gen[self.domain_slot(*d)].fetch_max(c, Ordering::Release);
                0
            }
            Invalidation::DomainPasid { domain, .. } => {
                self.domain_sel[self.domain_slot(*domain)].fetch_max(c, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                self.scan_all(inv)
            }
            Invalidation::Range(r) => {
                self.domain_sel[self.domain_slot(r.domain)].fetch_max(c, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                self.scan_range(r, inv)
            }
            Invalidation::Source(s) => {
                for (i, mark) in self.source_sel.iter().enumerate() {
                    if s.matches_slot(i, SOURCE_SLOTS) {
                        mark.fetch_max(c, Ordering::Relaxed);
                    }
                }
                fence(Ordering::SeqCst);
                self.scan_all(inv)
            }
        };
        self.stats.add(Counter::Invalidated, removed as u64);
        Ok(removed)
    }

    fn scan_all(&self, inv: &Invalidation) -> usize {
        let mut removed = 0;
        for set in 0..self.sets {
            removed += self.scan_set(set, inv);
        }
        removed
    }

    fn scan_set(&self, set: usize, inv: &Invalidation) -> usize {
        (0..self.ways)
            .filter(|&way| self.scan_entry(set, way, inv))
            .count()
    }

    /// Probes only the sets that can hold entries overlapping the range, unless that is more
    /// work than scanning everything.
    fn scan_range(&self, r: &PageRange, inv: &Invalidation) -> usize {
        let sizes = self.size_mask.load(Ordering::Relaxed);
        let last_page = r.base | span_mask(r.order);
        let mut probes: u64 = 0;
        let mut m = sizes;
        while m != 0 {
            let size = m.trailing_zeros() as u8;
            m &= m - 1;
            probes = probes
                .saturating_add((last_page >> size) - (r.base >> size))
                .saturating_add(1);
        }
        if probes > self.sets as u64 {
            return self.scan_all(inv);
        }
        let key1 = u64::from(r.domain) | ((EntryKind::Translation as u64) << 53);
        let mut removed = 0;
        let mut m = sizes;
        while m != 0 {
            let size = m.trailing_zeros() as u8;
            m &= m - 1;
            let mut n = r.base >> size;
            while n <= last_page >> size {
                let key0 = key::with_page(0, n << size, size);
                removed += self.scan_set(self.set_of(key0, key1), inv);
                n += 1;
            }
        }
        removed
    }

    /// Removes one entry if the selector covers it.
    ///
    /// The CAS from the observed `seq` both validates what was read (any writer changes `seq`)
    /// and removes the entry. Why a few attempts are enough: the first `seq` load comes after
    /// this invalidation's mark store and `SeqCst` fence. A CAS can then fail only because
    /// (a) the insert that wrote a `PENDING` entry published it — it can do so once, and the
    /// retry sees the same key; or (b) another writer took the way after our first load — an
    /// insert, whose own fence and mark check come later and so see our mark and refuse, or
    /// another scan killing it. In case (b) the old entry is gone and nothing stale can come
    /// back, so giving up is correct.
    fn scan_entry(&self, set: usize, way: usize, inv: &Invalidation) -> bool {
        let e = self.entry(set, way);
        let mut s = e[SEQ].load(Ordering::Acquire);
        for _ in 0..SCAN_ATTEMPTS {
            if s & LOCK != 0 || s & STATE_MASK == EMPTY {
                return false;
            }
            let k0 = e[KEY0].load(Ordering::Relaxed);
            let k1 = e[KEY1].load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if !inv.matches(k0, k1) {
                // Either it does not match, or the words were torn by a writer that came after
                // our first load (case (b) above).
                return false;
            }
            match e[SEQ].compare_exchange(s, next(s, EMPTY), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(current) => s = current,
            }
        }
        false
    }

    /// Counts the entries a lookup could return now (valid and not killed by a generation).
    /// Scans the whole cache; meant for tests, statistics and the control socket.
    pub fn live_entries(&self) -> usize {
        let global = self.global_mark.load(Ordering::Acquire);
        let mut live = 0;
        for set in 0..self.sets {
            for way in 0..self.ways {
                let e = self.entry(set, way);
                let s = e[SEQ].load(Ordering::Acquire);
                if s & (LOCK | STATE_MASK) != VALID {
                    continue;
                }
                let k1 = e[KEY1].load(Ordering::Relaxed);
                let stamp = e[STAMP].load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if e[SEQ].load(Ordering::Relaxed) == s && !self.is_dead(stamp, k1, global) {
                    live += 1;
                }
            }
        }
        live
    }
}
