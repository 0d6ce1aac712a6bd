//! Translation latency of the VT-d and AMD-Vi models (`Vtd::translate_with`,
//! `AmdVi::translate_with`), each programmed through its registers and memory like a driver
//! would, over warm guest memory (vm-memory `GuestMemoryMmap`).
//!
//! Group `translate` (every benchmark cycles through the same 1024 scattered IOVAs of one
//! device, 4 KiB pages, 4-level tables):
//! - `baseline_btreemap`: a `BTreeMap<u64, (u64, u64)>` range lookup over the same mappings, how
//!   QEMU's virtio-iommu and the Rust virtio-iommu devices keep their mappings;
//! - `baseline_walk_1d`: pagewalk's bare 4-level walk of the VT-d tables (no structures, no
//!   caches);
//!
//! Each unit is driven reusing one trace.
//! - `translate_hit` / `amdvi_translate_hit`: caches large enough to hold everything (context
//!   or DTE cache and IOTLB hits);
//! - `translate_miss` / `amdvi_translate_miss`: 8-entry caches, so almost every request walks
//!   the root and context entries (VT-d legacy mode) or the DTE (AMD-Vi) and the tables;
//! - `translate_nested_hit` / `translate_nested_miss`: VT-d scalable mode, PGTT = nested,
//!   4-level first stage over a 4-level second stage;
//! - `amdvi_translate_nested_hit` / `amdvi_translate_nested_miss`: AMD-Vi v2 over v1 (GV = 1,
//!   Mode 4), through a one-level GCR3 table at a guest-physical address.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use iommu_emulator::amdvi::AmdVi;
use iommu_emulator::request::{AccessKind, DmaRequest};
use iommu_emulator::trace::Trace;
use iommu_emulator::vtd::Vtd;
use iommu_workspace::units::{
    Mem, SID, amdvi_nested_unit, amdvi_v1_unit, iovas, legacy_unit, nested_unit, phys,
};
use pagewalk::{Access, walk};

fn bench(c: &mut Criterion) {
    let list = iovas();
    let mut g = c.benchmark_group("translate");

    let map: BTreeMap<u64, (u64, u64)> = list
        .iter()
        .enumerate()
        .map(|(i, iova)| (*iova, (iova + 0xfff, phys(i))))
        .collect();
    let mut i = 0usize;
    g.bench_function("baseline_btreemap", |b| {
        b.iter(|| {
            let iova = list[i % list.len()] | 0x18;
            i += 1;
            let (start, (end, p)) = map.range(..=iova).next_back().unwrap();
            assert!(iova <= *end);
            black_box(p + (iova - start))
        })
    });

    let (hit, tables, mem) = legacy_unit(4096);
    let cfg = *tables.config();
    let mut i = 0usize;
    g.bench_function("baseline_walk_1d", |b| {
        b.iter(|| {
            let iova = list[i % list.len()] | 0x18;
            i += 1;
            black_box(walk(&cfg, mem, tables.root(), iova, Access::READ, &mut ()).unwrap())
        })
    });

    let mut trace = Trace::new();
    let mut run = |vtd: &Vtd<&'static Mem>, pasid: Option<u32>, i: &mut usize| {
        let mut req = DmaRequest::new(SID, list[*i % list.len()] | 0x18, 8, AccessKind::Read);
        req.pasid = pasid;
        *i += 1;
        let r = vtd.translate_with(&req, &mut trace);
        black_box((r.unwrap(), trace.events().len()))
    };

    let mut i = 0usize;
    for _ in 0..list.len() {
        run(&hit, None, &mut i);
    }
    g.bench_function("translate_hit", |b| b.iter(|| run(&hit, None, &mut i)));

    let (miss, _, _) = legacy_unit(8);
    let mut i = 0usize;
    g.bench_function("translate_miss", |b| b.iter(|| run(&miss, None, &mut i)));

    let nested_hit = nested_unit(4096);
    let mut i = 0usize;
    for _ in 0..list.len() {
        run(&nested_hit, Some(1), &mut i);
    }
    g.bench_function("translate_nested_hit", |b| {
        b.iter(|| run(&nested_hit, Some(1), &mut i))
    });

    let nested_miss = nested_unit(8);
    let mut i = 0usize;
    g.bench_function("translate_nested_miss", |b| {
        b.iter(|| run(&nested_miss, Some(1), &mut i))
    });

    let mut amd_run = |unit: &AmdVi<&'static Mem>, pasid: Option<u32>, i: &mut usize| {
        let mut req = DmaRequest::new(SID, list[*i % list.len()] | 0x18, 8, AccessKind::Read);
        req.pasid = pasid;
        *i += 1;
        let r = unit.translate_with(&req, &mut trace);
        black_box((r.unwrap(), trace.events().len()))
    };
    let amd_hit = amdvi_v1_unit(4096);
    let mut i = 0usize;
    for _ in 0..list.len() {
        amd_run(&amd_hit, None, &mut i);
    }
    g.bench_function("amdvi_translate_hit", |b| {
        b.iter(|| amd_run(&amd_hit, None, &mut i))
    });
    let amd_miss = amdvi_v1_unit(8);
    let mut i = 0usize;
    g.bench_function("amdvi_translate_miss", |b| {
        b.iter(|| amd_run(&amd_miss, None, &mut i))
    });
    let amd_nested_hit = amdvi_nested_unit(4096);
    let mut i = 0usize;
    for _ in 0..list.len() {
        amd_run(&amd_nested_hit, Some(1), &mut i);
    }
    g.bench_function("amdvi_translate_nested_hit", |b| {
        b.iter(|| amd_run(&amd_nested_hit, Some(1), &mut i))
    });
    let amd_nested_miss = amdvi_nested_unit(8);
    let mut i = 0usize;
    g.bench_function("amdvi_translate_nested_miss", |b| {
        b.iter(|| amd_run(&amd_nested_miss, Some(1), &mut i))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
