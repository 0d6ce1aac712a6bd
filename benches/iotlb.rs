//! IOTLB benchmarks: the lock-free `iotlb::Cache` against the two ways VMM IOMMU models hold
//! translations — a `Mutex<HashMap>` (QEMU's VT-d model: a GHashTable under the IOMMU lock) and
//! an `RwLock<HashMap>` (the Rust virtio-iommu devices) — in the same criterion group, so each
//! workload's ratio comes from one run.
//!
//! Workloads:
//! * `lookup_hit_1t`: latency of one hitting lookup, one thread; with the floor of the harness,
//!   a plain array indexed by page number.
//! * `lookup_<n>t`: `n` threads doing hitting lookups; time per iteration = one lookup per
//!   thread. `n` is 2 unless `IOTLB_BENCH_THREADS` lists others (`2,4,8,16`).
//! * `mixed_<n>t`: `n` threads; every 32nd operation is a page invalidation followed by the refill a
//!   device would do after its walk (token + insert for the cache), the rest lookups.
//!
//! In the multi-thread workloads a lookup that misses is followed by a refill, as a device does
//! after its walk (the lock-free cache refuses refills that race with an invalidation, so it can
//! miss where the maps do not).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use iotlb::{Cache, CacheConfig, Invalidation, PageRange, PasidMatch, Perms, Tag, Translation};

const DOMAIN: u16 = 1;
const PAGES: u64 = 1024;
const MIX_EVERY: u64 = 32;

type Key = (u16, Option<u32>, u64);

fn translation(page: u64) -> Translation {
    Translation {
        output: (page + 0x10_0000) << 12,
        page_shift: 12,
        perms: Perms::R | Perms::W,
        flags: 0,
    }
}

/// Pages in a scattered but fixed order (an LCG walk over 0..PAGES).
fn pages() -> Vec<u64> {
    let mut x = 7u64;
    (0..PAGES)
        .map(|_| {
            x = (x * 37 + 11) % PAGES;
            x
        })
        .collect()
}

trait Tlb: Sync {
    fn name(&self) -> &'static str;
    fn lookup(&self, page: u64) -> Option<Translation>;
    /// Cache the translation of `page`, as a device does after walking on a miss.
    fn refill(&self, page: u64);
    /// Invalidate one page, then refill it.
    fn invalidate_and_refill(&self, page: u64);
}

struct Lockfree(Cache<Translation>);

impl Tlb for Lockfree {
    fn name(&self) -> &'static str {
        "iotlb"
    }
    fn lookup(&self, page: u64) -> Option<Translation> {
        self.0.lookup(&Tag::translation(DOMAIN, None, page, 0))
    }
    fn refill(&self, page: u64) {
        let token = self.0.token();
        let tag = Tag::translation(DOMAIN, None, page, 0);
        let _ = self.0.insert(token, &tag, &translation(page)).unwrap();
    }
    fn invalidate_and_refill(&self, page: u64) {
        let r = PageRange::vtd(DOMAIN, PasidMatch::Any, page << 12, 0, true).unwrap();
        self.0.invalidate(&Invalidation::Range(r)).unwrap();
        self.refill(page);
    }
}

/// The floor: a plain array indexed by page number (no tag, no hashing, no synchronisation,
/// no invalidation), in the same harness. What no real cache can beat; it shows how much of a
/// lookup's time the harness itself takes.
struct DirectArray(Vec<Translation>);

impl Tlb for DirectArray {
    fn name(&self) -> &'static str {
        "floor_direct_array"
    }
    fn lookup(&self, page: u64) -> Option<Translation> {
        self.0.get(page as usize).copied()
    }
    fn refill(&self, _page: u64) {}
    fn invalidate_and_refill(&self, _page: u64) {}
}

struct MutexMap(Mutex<HashMap<Key, Translation>>);

impl Tlb for MutexMap {
    fn name(&self) -> &'static str {
        "mutex_hashmap"
    }
    fn lookup(&self, page: u64) -> Option<Translation> {
        self.0.lock().unwrap().get(&(DOMAIN, None, page)).copied()
    }
    fn refill(&self, page: u64) {
        self.0
            .lock()
            .unwrap()
            .insert((DOMAIN, None, page), translation(page));
    }
    fn invalidate_and_refill(&self, page: u64) {
        self.0.lock().unwrap().remove(&(DOMAIN, None, page));
        self.refill(page);
    }
}

struct RwLockMap(RwLock<HashMap<Key, Translation>>);

impl Tlb for RwLockMap {
    fn name(&self) -> &'static str {
        "rwlock_hashmap"
    }
    fn lookup(&self, page: u64) -> Option<Translation> {
        self.0.read().unwrap().get(&(DOMAIN, None, page)).copied()
    }
    fn refill(&self, page: u64) {
        self.0
            .write()
            .unwrap()
            .insert((DOMAIN, None, page), translation(page));
    }
    fn invalidate_and_refill(&self, page: u64) {
        self.0.write().unwrap().remove(&(DOMAIN, None, page));
        self.refill(page);
    }
}

/// The three contenders, each holding every page.
fn built() -> (Lockfree, MutexMap, RwLockMap) {
    let cache = Cache::new(CacheConfig::new(128, 8)).unwrap();
    let mut map = HashMap::new();
    for page in 0..PAGES {
        let token = cache.token();
        let stored = cache
            .insert(
                token,
                &Tag::translation(DOMAIN, None, page, 0),
                &translation(page),
            )
            .unwrap();
        assert!(stored.is_stored());
        map.insert((DOMAIN, None, page), translation(page));
    }
    let all = (
        Lockfree(cache),
        MutexMap(Mutex::new(map.clone())),
        RwLockMap(RwLock::new(map)),
    );
    // Every contender starts with every page cached.
    for t in [&all.0 as &dyn Tlb, &all.1, &all.2] {
        for page in 0..PAGES {
            assert_eq!(t.lookup(page), Some(translation(page)), "{}", t.name());
        }
    }
    all
}

fn contenders() -> Vec<Box<dyn Tlb>> {
    let (a, b, c) = built();
    vec![Box::new(a), Box::new(b), Box::new(c)]
}

/// One contender's hit latency. Generic, so each contender's lookup is inlined into its own
/// loop: the harness costs the same for all and as little as it can (the floor shows it).
fn hit_latency<T: Tlb>(g: &mut BenchmarkGroup<'_, WallTime>, t: &T, order: &[u64]) {
    let mut i = 0usize;
    g.bench_function(BenchmarkId::from_parameter(t.name()), |b| {
        b.iter(|| {
            // PAGES is a power of two: a mask, not a division, in the harness.
            i = (i + 1) & (order.len() - 1);
            black_box(t.lookup(black_box(order[i])))
        })
    });
}

fn lookup_hit_1t(c: &mut Criterion) {
    let order = pages();
    let mut g = c.benchmark_group("iotlb/lookup_hit_1t");
    g.throughput(Throughput::Elements(1));
    hit_latency(
        &mut g,
        &DirectArray((0..PAGES).map(translation).collect()),
        &order,
    );
    let (lockfree, mutex, rwlock) = built();
    hit_latency(&mut g, &lockfree, &order);
    hit_latency(&mut g, &mutex, &order);
    hit_latency(&mut g, &rwlock, &order);
    g.finish();
}

/// The thread counts of the multi-thread workloads: `IOTLB_BENCH_THREADS` (a comma-separated
/// list, for bigger machines: `IOTLB_BENCH_THREADS=2,4,8,16`), else 2.
fn thread_counts() -> Vec<u64> {
    let counts: Vec<u64> = std::env::var("IOTLB_BENCH_THREADS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|&n| n >= 1)
                .collect()
        })
        .unwrap_or_default();
    if counts.is_empty() { vec![2] } else { counts }
}

/// Runs `iters` operations on each of `threads` threads; returns the wall time.
fn threaded(t: &dyn Tlb, threads: u64, iters: u64, mixed: bool) -> Duration {
    let order = pages();
    let start = Instant::now();
    std::thread::scope(|s| {
        for thread in 0..threads {
            let order = &order;
            s.spawn(move || {
                let mut hits = 0u64;
                for n in 0..iters {
                    let page = order[((n * threads + thread) % PAGES) as usize];
                    if mixed && n % MIX_EVERY == (thread * MIX_EVERY / threads) % MIX_EVERY {
                        t.invalidate_and_refill(page);
                    } else if t.lookup(page).is_some() {
                        hits += 1;
                    } else {
                        t.refill(page);
                    }
                }
                black_box(hits);
            });
        }
    });
    start.elapsed()
}

/// A multi-thread workload: one group per thread count, named `iotlb/<name>_<threads>t`; the
/// time per iteration is one operation on each thread.
fn multi(c: &mut Criterion, name: &str, mixed: bool) {
    for threads in thread_counts() {
        let mut g = c.benchmark_group(format!("iotlb/{name}_{threads}t"));
        g.throughput(Throughput::Elements(threads));
        for t in contenders() {
            g.bench_function(BenchmarkId::from_parameter(t.name()), |b| {
                b.iter_custom(|iters| threaded(t.as_ref(), threads, iters, mixed))
            });
        }
        g.finish();
    }
}

fn lookup_nt(c: &mut Criterion) {
    multi(c, "lookup", false);
}

fn mixed_nt(c: &mut Criterion) {
    multi(c, "mixed", true);
}

criterion_group!(benches, lookup_hit_1t, lookup_nt, mixed_nt);
criterion_main!(benches);
