//! Memory per mapping: one million 4 KiB mappings held by the `RwLock<BTreeMap>` baseline (what
//! the Rust virtio-iommu devices keep) and by the core over each driver, with the time to build
//! them in the same criterion group.
//!
//! The bytes are counted, not estimated: a counting global allocator gives the heap the
//! structures hold (the core's mapping map, the driver's bookkeeping), and the driver's
//! statistics give the IOMMU-private pages its page tables occupy (the private region is an
//! `mmap`, outside the heap). The figures are printed once per run, before the timings:
//! `memory/<case>: <bytes> bytes per mapping (heap <h>, tables <t>)`.
//!
//! The mappings are the DMA API's pattern: consecutive 4 KiB IOVAs, each its own MAP.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use criterion::{Criterion, criterion_group, criterion_main};
use iommu_emulator::{Core, CoreConfig, Driver, EndpointSet, MapFlags};
use iommu_workspace::models::driver;
use vhost_device_iommu::config::Model;

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; the counter only observes the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees for `ptr`, `layout` and `new_size` are passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MAPPINGS: u64 = 1_000_000;
const EP: u32 = 0x08;
const BASE_IOVA: u64 = 0x1_0000_0000;

type Baseline = RwLock<BTreeMap<u64, (u64, u64, u32)>>;

fn baseline() -> Baseline {
    let m = Baseline::default();
    for i in 0..MAPPINGS {
        let iova = BASE_IOVA + (i << 12);
        m.write().unwrap().insert(iova, (iova + 0xfff, i << 12, 3));
    }
    m
}

/// A core over `hw` with one domain holding the million mappings.
fn ours(hw: Arc<dyn Driver>) -> Core {
    let cfg = CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0xff]),
        ..CoreConfig::default()
    };
    let core = Core::new(cfg, hw).unwrap();
    core.attach(1, EP, false).unwrap();
    for i in 0..MAPPINGS {
        let iova = BASE_IOVA + (i << 12);
        core.map(1, iova, iova + 0xfff, i << 12, MapFlags::RW)
            .unwrap();
    }
    core
}

/// Heap bytes `build` leaves live, and what it built.
fn heap_of<T>(build: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Ordering::Relaxed);
    let t = build();
    (LIVE.load(Ordering::Relaxed).saturating_sub(before), t)
}

fn report(case: &str, heap: usize, tables: u64) {
    let total = heap as u64 + tables;
    println!(
        "memory/{case}: {:.1} bytes per mapping (heap {:.1}, tables {:.1})",
        total as f64 / MAPPINGS as f64,
        heap as f64 / MAPPINGS as f64,
        tables as f64 / MAPPINGS as f64
    );
}

fn bench(c: &mut Criterion) {
    let (heap, m) = heap_of(baseline);
    report("baseline_rwlock_btreemap", heap, 0);
    drop(m);
    let models = [
        ("soft", Model::Soft),
        ("vtd", Model::Vtd),
        ("amdvi", Model::Amdvi),
    ];
    for (name, model) in models {
        let hw = driver(model);
        let (heap, core) = heap_of(|| ours(hw.clone()));
        let tables = hw.stats().private_pages_in_use * 4096;
        report(name, heap, tables);
        drop(core);
    }

    let mut g = c.benchmark_group("memory_1m_mappings_build");
    g.sample_size(10);
    g.bench_function("baseline_rwlock_btreemap", |b| {
        b.iter(|| black_box(baseline()))
    });
    for (name, model) in models {
        g.bench_function(name, |b| b.iter(|| black_box(ours(driver(model)))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
