//! Walk latency of the `pagewalk` walkers over warm guest memory (vm-memory `GuestMemoryMmap`),
//! against the baseline of a `BTreeMap<u64, (u64, u64)>` range lookup over the same mappings —
//! how QEMU's virtio-iommu and the Rust virtio-iommu devices keep their mappings.
//!
//! Groups:
//! - `walk_1d_4level`: a 4-level one-dimensional walk per format (VT-d second-stage, VT-d
//!   first-stage, AMD-Vi v1 mode 4, AMD-Vi v2), 4 KiB leaves; plus the VT-d second-stage walk
//!   over `FlatMem` (plain `Vec<AtomicU64>`) to show what the vm-memory access path costs, and
//!   over scattered addresses (cache-cold tables).
//! - `walk_2d`: nested walks, VT-d 4x4 and 5x5 and AMD-Vi v2 over v1 4x4, 4 KiB pages in both
//!   stages (24 and 35 reads per walk).
//! - `builder_map_unmap`: the driver side, a [`TableBuilder`] map and unmap of one 4 KiB page
//!   (allocating and freeing tables, or inside populated tables) against a `BTreeMap` insert
//!   and remove.
//!
//! Every benchmark cycles through the same 1024 addresses: dense (every third page of a 12 MiB
//! window, so the tables are cache-warm), plus one VT-d second-stage data point over scattered
//! addresses whose tables do not fit the caches.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pagewalk::{
    Access, AmdV1Config, BumpAllocator, FlatMem, GuestMem, PageSizePolicy, Perms, SecondStage,
    SecondStageView, TableBuilder, VtdSsConfig, WalkConfig, X86Config, walk, walk_nested,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MAPPINGS: u64 = 1024;
/// System memory: 512 MiB of guest RAM.
const MEM_SIZE: usize = 512 << 20;
/// Second-stage / 1D table pages (system physical).
const TABLES: (u64, u64) = (0x100_0000, 0x800_0000);
/// First-stage table pages: guest-physical region and where the second stage puts it.
const FS_GPA: (u64, u64) = (0x1000_0000, 0x1100_0000);
const FS_SPA: u64 = 0x800_0000;
/// Guest-physical pages the first stage maps to.
const DATA_GPA: u64 = 0x2000_0000;

type Mem = GuestMem<GuestMemoryMmap<()>>;

fn memory() -> Mem {
    GuestMem(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

/// Scattered, 4 KiB-aligned input addresses below `1 << width`.
/// Dense input addresses: every third 4 KiB page of a 12 MiB window high in the address space,
/// so that the few table pages involved stay cache-warm and the walker itself is measured.
fn iovas(width: u32) -> Vec<u64> {
    let base = 0x00aa_5a5a_4000_0000u64 & ((1u64 << (width - 1)) - 1);
    (0..MAPPINGS).map(|i| base + i * 0x3000).collect()
}

/// Scattered input addresses: each needs its own tables (about 12 MiB of them), so walks miss
/// in the CPU caches.
fn scattered_iovas(width: u32) -> Vec<u64> {
    (0..MAPPINGS)
        .map(|i| {
            (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) & ((1u64 << (width - 1)) - 1) & !0xfff
        })
        .collect()
}

fn phys(i: usize) -> u64 {
    0x1_0000_0000 + i as u64 * 0x3000
}

/// The baseline: a range map keyed by start, holding (end, phys).
fn btree(iovas: &[u64]) -> BTreeMap<u64, (u64, u64)> {
    iovas
        .iter()
        .enumerate()
        .map(|(i, &a)| (a, (a + 0x1000, phys(i))))
        .collect()
}

#[inline]
fn btree_lookup(m: &BTreeMap<u64, (u64, u64)>, a: u64) -> Option<u64> {
    let (&s, &(e, p)) = m.range(..=a).next_back()?;
    (a < e).then_some(p + (a - s))
}

fn bench_1d(c: &mut Criterion) {
    let mem = memory();
    let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
    let addrs = iovas(48);
    let probes: Vec<u64> = addrs.iter().map(|a| a | 0x123).collect();
    let map = btree(&addrs);
    let formats = [
        ("vtd_ss", WalkConfig::VtdSecondStage(VtdSsConfig::new(4))),
        (
            "vtd_fs",
            WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4)),
        ),
        ("amd_v1", WalkConfig::AmdV1(AmdV1Config::new(4))),
        ("amd_v2", WalkConfig::AmdV2(X86Config::amd_v2(4))),
    ];
    let mut roots = Vec::new();
    for (name, cfg) in formats {
        let mut b = TableBuilder::new(cfg, &mem, &mut alloc).unwrap();
        for (i, &a) in addrs.iter().enumerate() {
            b.map(
                &mem,
                &mut alloc,
                a,
                phys(i),
                0x1000,
                Perms::RW | Perms::U,
                PageSizePolicy::Fixed(12),
            )
            .unwrap();
        }
        // Warm up (and set accessed flags where the format updates them).
        for (i, &p) in probes.iter().enumerate() {
            let t = walk(&cfg, &mem, b.root(), p, Access::READ, &mut ()).unwrap();
            assert_eq!(t.output, phys(i) | 0x123);
            assert_eq!(Some(t.output), btree_lookup(&map, p));
        }
        roots.push((name, cfg, b.root()));
    }

    // The same VT-d second-stage tables in flat memory.
    let flat = FlatMem::new(0, 0x200_0000);
    let mut flat_alloc = BumpAllocator::new(0x10_0000, 0x200_0000);
    let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
    let mut fb = TableBuilder::new(ss, &flat, &mut flat_alloc).unwrap();
    for (i, &a) in addrs.iter().enumerate() {
        fb.map(
            &flat,
            &mut flat_alloc,
            a,
            phys(i),
            0x1000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }
    for (i, &p) in probes.iter().enumerate() {
        let t = walk(&ss, &flat, fb.root(), p, Access::READ, &mut ()).unwrap();
        assert_eq!(t.output, phys(i) | 0x123);
    }

    // VT-d second-stage tables for scattered addresses, in the same guest memory.
    let scattered = scattered_iovas(48);
    let sprobes: Vec<u64> = scattered.iter().map(|a| a | 0x123).collect();
    let mut sb = TableBuilder::new(ss, &mem, &mut alloc).unwrap();
    for (i, &a) in scattered.iter().enumerate() {
        sb.map(
            &mem,
            &mut alloc,
            a,
            phys(i),
            0x1000,
            Perms::RW,
            PageSizePolicy::Fixed(12),
        )
        .unwrap();
    }
    for (i, &p) in sprobes.iter().enumerate() {
        let t = walk(&ss, &mem, sb.root(), p, Access::READ, &mut ()).unwrap();
        assert_eq!(t.output, phys(i) | 0x123);
    }

    let mut g = c.benchmark_group("walk_1d_4level");
    g.bench_function("btreemap_baseline", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (MAPPINGS as usize - 1);
            black_box(btree_lookup(&map, black_box(probes[i])))
        })
    });
    for (name, cfg, root) in roots {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (MAPPINGS as usize - 1);
                black_box(walk(
                    &cfg,
                    &mem,
                    root,
                    black_box(probes[i]),
                    Access::READ,
                    &mut (),
                ))
            })
        });
    }
    g.bench_function("vtd_ss_scattered", |b| {
        let mut i = 0;
        let root = sb.root();
        b.iter(|| {
            i = (i + 1) & (MAPPINGS as usize - 1);
            black_box(walk(
                &ss,
                &mem,
                root,
                black_box(sprobes[i]),
                Access::READ,
                &mut (),
            ))
        })
    });
    g.bench_function("vtd_ss_flatmem", |b| {
        let mut i = 0;
        let root = fb.root();
        b.iter(|| {
            i = (i + 1) & (MAPPINGS as usize - 1);
            black_box(walk(
                &ss,
                &flat,
                root,
                black_box(probes[i]),
                Access::READ,
                &mut (),
            ))
        })
    });
    g.finish();
}

/// Builds a nested setup: second stage maps the first-stage table region and every data page
/// with 4 KiB pages; the first stage maps each address to a data page.
fn nested_setup(
    mem: &Mem,
    alloc: &mut BumpAllocator,
    fs: WalkConfig,
    ss: WalkConfig,
    addrs: &[u64],
) -> (u64, SecondStage) {
    let fixed = PageSizePolicy::Fixed(12);
    let mut ssb = TableBuilder::new(ss, mem, alloc).unwrap();
    ssb.map(
        mem,
        alloc,
        FS_GPA.0,
        FS_SPA,
        FS_GPA.1 - FS_GPA.0,
        Perms::RW,
        fixed,
    )
    .unwrap();
    for i in 0..addrs.len() {
        ssb.map(
            mem,
            alloc,
            DATA_GPA + i as u64 * 0x1000,
            phys(i),
            0x1000,
            Perms::RW,
            fixed,
        )
        .unwrap();
    }
    let view = SecondStageView {
        mem,
        config: ss,
        root: ssb.root(),
    };
    let mut fs_alloc = BumpAllocator::new(FS_GPA.0, FS_GPA.1);
    let mut fsb = TableBuilder::new(fs, &view, &mut fs_alloc).unwrap();
    for (i, &a) in addrs.iter().enumerate() {
        fsb.map(
            &view,
            &mut fs_alloc,
            a,
            DATA_GPA + i as u64 * 0x1000,
            0x1000,
            Perms::RW | Perms::U,
            fixed,
        )
        .unwrap();
    }
    let second = SecondStage::Tables {
        config: ss,
        root: ssb.root(),
    };
    (fsb.root(), second)
}

fn bench_2d(c: &mut Criterion) {
    let addrs4 = iovas(48);
    let addrs5 = iovas(57);
    let probes4: Vec<u64> = addrs4.iter().map(|a| a | 0x123).collect();
    let probes5: Vec<u64> = addrs5.iter().map(|a| a | 0x123).collect();
    let map = btree(&addrs4);
    let setups = [
        (
            "vtd_4x4",
            WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(4)),
            WalkConfig::VtdSecondStage(VtdSsConfig::new(4)),
            &probes4,
            &addrs4,
        ),
        (
            "vtd_5x5",
            WalkConfig::VtdFirstStage(X86Config::vtd_first_stage(5)),
            WalkConfig::VtdSecondStage(VtdSsConfig::new(5)),
            &probes5,
            &addrs5,
        ),
        (
            "amd_v2_over_v1_4x4",
            WalkConfig::AmdV2(X86Config::amd_v2(4)),
            WalkConfig::AmdV1(AmdV1Config::new(4)),
            &probes4,
            &addrs4,
        ),
    ];
    let mut built = Vec::new();
    for (name, fs, ss, probes, addrs) in setups {
        // Each setup in its own memory so that table regions do not collide.
        let mem = memory();
        let mut alloc = BumpAllocator::new(TABLES.0, TABLES.1);
        let (root, second) = nested_setup(&mem, &mut alloc, fs, ss, addrs);
        for (i, &p) in probes.iter().enumerate() {
            let t = walk_nested(&fs, root, &second, &mem, p, Access::READ, &mut ()).unwrap();
            assert_eq!(t.output, phys(i) | 0x123);
        }
        built.push((name, fs, root, second, probes, mem));
    }

    let mut g = c.benchmark_group("walk_2d");
    g.bench_function("btreemap_baseline", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (MAPPINGS as usize - 1);
            black_box(btree_lookup(&map, black_box(probes4[i])))
        })
    });
    for (name, fs, root, second, probes, mem) in &built {
        g.bench_function(*name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (MAPPINGS as usize - 1);
                black_box(walk_nested(
                    fs,
                    *root,
                    second,
                    mem,
                    black_box(probes[i]),
                    Access::READ,
                    &mut (),
                ))
            })
        });
    }
    g.finish();
}

/// Map and unmap of one 4 KiB page per iteration through [`TableBuilder`] (VT-d second stage,
/// 4 levels), against inserting and removing the range in a `BTreeMap`:
/// - `scattered_*`: each page needs its own level-2 and level-1 tables, so every map allocates
///   two tables and every unmap frees them (the driver-side cost a MAP+UNMAP pair pays in the
///   daemon);
/// - `dense_*`: the page's level-1 table also holds 1023 other mappings, so the tables stay.
fn bench_builder(c: &mut Criterion) {
    let ss = WalkConfig::VtdSecondStage(VtdSsConfig::new(4));
    let scattered = scattered_iovas(39);
    let dense = iovas(48);
    let mut g = c.benchmark_group("builder_map_unmap");
    g.bench_function("btreemap_baseline", |b| {
        let mut m = btree(&dense[..MAPPINGS as usize / 2]);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & (MAPPINGS as usize - 1);
            let a = black_box(scattered[i]);
            m.insert(a, (a + 0x1000, phys(i)));
            black_box(m.remove(&a))
        })
    });
    // Only the table region is needed: one page's tables at a time, or the few of the dense
    // window.
    let tables = (TABLES.0, TABLES.0 + (16 << 20));
    let flat = FlatMem::new(0, tables.1 as usize);
    let guest = memory();
    for (name, addrs, populate) in [
        ("scattered_flat_mem", &scattered, false),
        ("dense_flat_mem", &dense, true),
    ] {
        let mut alloc = BumpAllocator::new(tables.0, tables.1);
        let mut b = TableBuilder::new(ss, &flat, &mut alloc).unwrap();
        bench_map_unmap(&mut g, name, &flat, &mut alloc, &mut b, addrs, populate);
    }
    for (name, addrs, populate) in [
        ("scattered_guest_mem", &scattered, false),
        ("dense_guest_mem", &dense, true),
    ] {
        let mut alloc = BumpAllocator::new(tables.0, tables.1);
        let mut b = TableBuilder::new(ss, &guest, &mut alloc).unwrap();
        bench_map_unmap(&mut g, name, &guest, &mut alloc, &mut b, addrs, populate);
    }
    g.finish();
}

/// One benchmark of [`bench_builder`]: with `populate`, every other address of `addrs` stays
/// mapped and the iterations map and unmap the rest.
fn bench_map_unmap<M: pagewalk::PhysMem>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mem: &M,
    alloc: &mut BumpAllocator,
    b: &mut TableBuilder,
    addrs: &[u64],
    populate: bool,
) {
    let step = if populate {
        for &a in addrs.iter().step_by(2) {
            b.map(
                mem,
                alloc,
                a,
                0x4000_0000,
                0x1000,
                Perms::RW,
                PageSizePolicy::LARGEST,
            )
            .unwrap();
        }
        2
    } else {
        1
    };
    let used = alloc.in_use();
    g.bench_function(name, |bench| {
        let mut i = 0;
        bench.iter(|| {
            i = (i + step) & (MAPPINGS as usize - 1);
            let a = black_box(addrs[i + step - 1]);
            b.map(
                mem,
                alloc,
                a,
                phys(i),
                0x1000,
                Perms::RW,
                PageSizePolicy::LARGEST,
            )
            .unwrap();
            black_box(b.unmap(mem, alloc, a, 0x1000).unwrap())
        })
    });
    // Every iteration gave back what it took.
    assert_eq!(alloc.in_use(), used);
}

criterion_group!(benches, bench_1d, bench_2d, bench_builder);
criterion_main!(benches);
