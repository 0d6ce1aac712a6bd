//! Runs one hot path a given number of times, for instruction counting with callgrind, which
//! counts repeatably where wall-clock benchmarks on a shared machine do not:
//!
//! ```text
//! cargo build --release --example hot_paths
//! valgrind --tool=callgrind target/release/examples/hot_paths vtd_hit 200000
//! ```
//!
//! `scripts/profile PATH` runs it twice (N and 2N iterations) and prints the instructions of
//! one iteration (the difference over N, so the setup drops out) and the top functions.
//! The paths are the criterion benchmarks' cases, built by the same support code:
//! `iotlb_hit`, `vtd_hit`, `vtd_hit_untraced`, `amdvi_hit`, `amdvi_hit_untraced`, `walk_1d`,
//! `dma_read_vtd` (`IommuMemory` on a warm vm-memory IOTLB), `core_translate_vtd`,
//! `map_unmap_vtd` and `map_unmap_amdvi` (one virtio-iommu MAP and UNMAP request pair).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use iommu_emulator::request::{AccessKind, DmaRequest};
use iommu_emulator::trace::Trace;
use iommu_emulator::{Core, CoreConfig, EndpointSet, MapFlags};
use iommu_workspace::models::driver;
use iommu_workspace::units::{SID, amdvi_v1_unit, iovas, legacy_unit};
use iotlb::{Cache, CacheConfig, Perms, Tag, Translation};
use pagewalk::{Access, walk};
use vhost_device_iommu::config::Model;
use vhost_device_iommu::device::{DEVICE_FEATURES, IommuDevice};
use vhost_device_iommu::dma::EndpointIommu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

const PATHS: &[&str] = &[
    "iotlb_hit",
    "vtd_hit",
    "vtd_hit_untraced",
    "amdvi_hit",
    "amdvi_hit_untraced",
    "walk_1d",
    "dma_read_vtd",
    "core_translate_vtd",
    "map_unmap_vtd",
    "map_unmap_amdvi",
];

const EP: u16 = 0x08;

fn request(list: &[u64], i: usize) -> DmaRequest {
    DmaRequest::new(SID, list[i % list.len()] | 0x18, 8, AccessKind::Read)
}

fn map_unmap(model: Model, n: usize) {
    let cfg = CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0xff]),
        ..CoreConfig::default()
    };
    let core = Arc::new(Core::new(cfg, driver(model)).unwrap());
    core.attach(1, u32::from(EP), false).unwrap();
    let d = IommuDevice::new(core, 512).unwrap();
    d.set_acked_features(DEVICE_FEATURES);
    let req = |op: u8, start: u64| {
        let mut b = vec![op, 0, 0, 0];
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&(start + 0xfff).to_le_bytes());
        if op == 3 {
            b.extend_from_slice(&0x8000_0000u64.to_le_bytes());
            b.extend_from_slice(&3u32.to_le_bytes());
        } else {
            b.extend_from_slice(&[0; 4]);
        }
        b
    };
    let list = iovas();
    let maps: Vec<Vec<u8>> = list.iter().map(|a| req(3, *a)).collect();
    let unmaps: Vec<Vec<u8>> = list.iter().map(|a| req(4, *a)).collect();
    let process = |r: &[u8]| {
        let mut out = [0u8; 4];
        assert_eq!(d.process(&mut &r[..], r.len(), &mut &mut out[..], 4), 4);
        assert_eq!(out[0], 0);
    };
    for i in 0..n {
        process(&maps[i % maps.len()]);
        process(&unmaps[i % unmaps.len()]);
    }
}

fn dma(n: usize, through_memory: bool) {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let cfg = CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0xff]),
        ..CoreConfig::default()
    };
    let core = Arc::new(Core::new(cfg, driver(Model::Vtd)).unwrap());
    core.attach(1, u32::from(EP), false).unwrap();
    let list: Vec<u64> = iovas().into_iter().take(512).collect();
    for (i, a) in list.iter().enumerate() {
        let phys = (i as u64 % 1024) << 12;
        core.map(1, *a, a + 0xfff, phys, MapFlags::RW).unwrap();
        ram.write_obj(i as u64, GuestAddress(phys + 8)).unwrap();
    }
    let mem = IommuMemory::new(ram.clone(), EndpointIommu::new(core.clone(), EP), true, ());
    for (i, a) in list.iter().enumerate() {
        assert_eq!(mem.read_obj::<u64>(GuestAddress(a + 8)).unwrap(), i as u64);
    }
    for i in 0..n {
        let a = list[i % list.len()] + 8;
        if through_memory {
            black_box(mem.read_obj::<u64>(GuestAddress(a)).unwrap());
        } else {
            let t = core
                .translate_untraced(&DmaRequest::new(EP, a, 8, AccessKind::Read))
                .unwrap();
            black_box(ram.read_obj::<u64>(GuestAddress(t.addr)).unwrap());
        }
    }
}

/// Translates every IOVA once (filling the caches), then `n` more requests, all hits; traced
/// unless `path` ends in `_untraced`.
fn hits<T>(path: &str, n: usize, mut translate: impl FnMut(&DmaRequest, &mut Trace) -> T) {
    let list = iovas();
    let mut trace = if path.ends_with("_untraced") {
        Trace::off()
    } else {
        Trace::new()
    };
    for i in 0..list.len() + n {
        translate(&request(&list, i), &mut trace);
    }
}

/// Runs `path` `n` times; false when there is no such path.
fn run(path: &str, n: usize) -> bool {
    let list = iovas();
    match path {
        "iotlb_hit" => {
            let c = Cache::<Translation>::new(CacheConfig::new(512, 8)).unwrap();
            for p in 0..1024u64 {
                let t = Translation {
                    output: (p + 0x10_0000) << 12,
                    page_shift: 12,
                    perms: Perms::R | Perms::W,
                    flags: 0,
                };
                let tag = Tag::translation(1, None, p, 0);
                let stored = c.insert(c.token(), &tag, &t).unwrap();
                assert_eq!(stored, iotlb::InsertOutcome::Stored);
            }
            for i in 0..n {
                let p = (i as u64).wrapping_mul(37) % 1024;
                black_box(
                    c.lookup(&Tag::translation(1, None, black_box(p), 0))
                        .unwrap(),
                );
            }
        }
        "vtd_hit" | "vtd_hit_untraced" => {
            let (unit, _, _) = legacy_unit(4096);
            hits(path, n, |r, t| {
                black_box(unit.translate_with(r, t).unwrap())
            });
        }
        "amdvi_hit" | "amdvi_hit_untraced" => {
            let unit = amdvi_v1_unit(4096);
            hits(path, n, |r, t| {
                black_box(unit.translate_with(r, t).unwrap())
            });
        }
        "walk_1d" => {
            let (_, tables, mem) = legacy_unit(8);
            let cfg = *tables.config();
            for i in 0..n {
                let a = list[i % list.len()] | 0x18;
                black_box(walk(&cfg, mem, tables.root(), a, Access::READ, &mut ()).unwrap());
            }
        }
        "dma_read_vtd" => dma(n, true),
        "core_translate_vtd" => dma(n, false),
        "map_unmap_vtd" => map_unmap(Model::Vtd, n),
        "map_unmap_amdvi" => map_unmap(Model::Amdvi, n),
        _ => return false,
    }
    true
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, n) = match args.as_slice() {
        [p, n] => match n.parse::<usize>() {
            Ok(n) => (p.clone(), n),
            Err(e) => {
                eprintln!("hot_paths: iterations {n:?}: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "usage: hot_paths PATH ITERATIONS\npaths: {}",
                PATHS.join(" ")
            );
            return ExitCode::from(2);
        }
    };
    if !run(&path, n) {
        eprintln!("hot_paths: no path {path:?}; paths: {}", PATHS.join(" "));
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
