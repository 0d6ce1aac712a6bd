//! MAP+UNMAP request processing of the virtio-iommu device (`vhost-device-iommu`): request
//! bytes in, status out, one MAP and one UNMAP of a 4 KiB page per iteration (criterion reports
//! MAP+UNMAP pairs per second as elements/s).
//!
//! Group `virtio_iommu_map_unmap` (every benchmark cycles through the same 512 scattered IOVAs
//! of one domain with one attached endpoint):
//! - `baseline_rwlock_btreemap`: decode the same request bytes and keep mappings in a
//!   `RwLock<BTreeMap>`, the way cloud-hypervisor's and crosvm's virtio-iommu devices do
//!   (overlap check on MAP, split check and removal on UNMAP);
//! - `device_soft`: the full request path (validation, `emulator::core` semantics) over the
//!   soft hardware (mapping trees, no memory-resident structures);
//! - `device_vtd`: the full request path realised in the VT-d model: second-stage table edits
//!   in the IOMMU-private region and, for every UNMAP, a page-selective IOTLB invalidation plus
//!   an invalidation wait through the model's invalidation queue;
//! - `device_amdvi`: the same realised in the AMD-Vi model: v1 table edits and, for every
//!   UNMAP, an INVALIDATE_IOMMU_PAGES plus a COMPLETION_WAIT through its command buffer.
//!
//! Group `virtio_iommu_dma_read` (an 8-byte DMA read by the endpoint through one of 512 mapped
//! pages, the path rust-vmm device code takes with `vm_memory::IommuMemory`):
//! - `baseline_rwlock_btreemap`: look the IOVA up in a `RwLock<BTreeMap>` of the mappings and
//!   read guest memory at the result;
//! - `iommu_memory_vtd_warm`: `IommuMemory` over `EndpointIommu` over the VT-d realisation,
//!   with vm-memory's IOTLB warm (what a device sees between unmaps);
//! - `core_translate_vtd`: every read translated by the VT-d model itself (its context cache,
//!   IOTLB and walks), as after an invalidation, without building the trace (the DMA path);
//! - `core_translate_traced_vtd`: the same with the typed trace recorded, as the control
//!   socket's `translate` and a timing model get it (before the trace was typed, this case
//!   rendered every event as a string).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommu_emulator::{AccessKind, Core, CoreConfig, DmaRequest, Driver, EndpointSet, MapFlags};
use iommu_workspace::models::driver;
use vhost_device_iommu::config::Model;
use vhost_device_iommu::device::{DEVICE_FEATURES, IommuDevice};
use vhost_device_iommu::dma::EndpointIommu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

const IOVAS: u64 = 512;
const EP: u32 = 0x08;

fn iova(i: u64) -> u64 {
    ((i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24) & ((1 << 39) - 1)) & !0xfff
}

fn map_req(start: u64) -> Vec<u8> {
    let mut b = vec![3, 0, 0, 0];
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&(start + 0xfff).to_le_bytes());
    b.extend_from_slice(&0x8000_0000u64.to_le_bytes());
    b.extend_from_slice(&3u32.to_le_bytes());
    b
}

fn unmap_req(start: u64) -> Vec<u8> {
    let mut b = vec![4, 0, 0, 0];
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&(start + 0xfff).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

fn device(hw: Arc<dyn Driver>) -> IommuDevice {
    let cfg = CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0xff]),
        ..CoreConfig::default()
    };
    let core = Arc::new(Core::new(cfg, hw).unwrap());
    core.attach(1, EP, false).unwrap();
    let d = IommuDevice::new(core, 512).unwrap();
    d.set_acked_features(DEVICE_FEATURES);
    d
}

fn process(d: &IommuDevice, req: &[u8]) -> u8 {
    let mut out = [0u8; 4];
    let used = d.process(&mut &req[..], req.len(), &mut &mut out[..], 4);
    assert_eq!(used, 4);
    out[0]
}

/// The baseline device state: one domain's mappings, `start -> (end, phys, flags)`.
type Baseline = RwLock<BTreeMap<u64, (u64, u64, u32)>>;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn baseline(m: &Baseline, req: &[u8]) -> u8 {
    let _domain = le32(req, 4);
    let (start, end) = (le64(req, 8), le64(req, 16));
    match req[0] {
        3 => {
            let (phys, flags) = (le64(req, 24), le32(req, 32));
            let mut t = m.write().unwrap();
            if t.range(..=end)
                .next_back()
                .is_some_and(|(_, v)| v.0 >= start)
            {
                return 4;
            }
            t.insert(start, (end, phys, flags));
            0
        }
        _ => {
            let mut t = m.write().unwrap();
            if t.range(..start)
                .next_back()
                .is_some_and(|(_, v)| v.0 >= start)
            {
                return 5;
            }
            let keys: Vec<u64> = t.range(start..=end).map(|(k, _)| *k).collect();
            if keys.last().is_some_and(|k| t[k].0 > end) {
                return 5;
            }
            for k in keys {
                t.remove(&k);
            }
            0
        }
    }
}

fn bench(c: &mut Criterion) {
    let maps: Vec<Vec<u8>> = (0..IOVAS).map(|i| map_req(iova(i))).collect();
    let unmaps: Vec<Vec<u8>> = (0..IOVAS).map(|i| unmap_req(iova(i))).collect();
    let mut g = c.benchmark_group("virtio_iommu_map_unmap");
    g.throughput(Throughput::Elements(1));

    let base = Baseline::default();
    assert_eq!(baseline(&base, &maps[0]), 0);
    assert_eq!(baseline(&base, &unmaps[0]), 0);
    let mut i = 0usize;
    g.bench_function("baseline_rwlock_btreemap", |b| {
        b.iter(|| {
            i = (i + 1) % IOVAS as usize;
            black_box(baseline(&base, &maps[i]));
            black_box(baseline(&base, &unmaps[i]));
        })
    });

    for (name, hw) in [
        ("device_soft", driver(Model::Soft)),
        ("device_vtd", driver(Model::Vtd)),
        ("device_amdvi", driver(Model::Amdvi)),
    ] {
        let d = device(hw);
        // The measured path is the successful one.
        assert_eq!(process(&d, &maps[0]), 0);
        assert_eq!(process(&d, &unmaps[0]), 0);
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % IOVAS as usize;
                black_box(process(&d, &maps[i]));
                black_box(process(&d, &unmaps[i]));
            })
        });
        assert_eq!(d.core().stats().mappings, 0);
    }
    g.finish();
}

fn bench_dma(c: &mut Criterion) {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let cfg = CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0xff]),
        ..CoreConfig::default()
    };
    let core = Arc::new(Core::new(cfg, driver(Model::Vtd)).unwrap());
    core.attach(1, EP, false).unwrap();
    let base = Baseline::default();
    for i in 0..IOVAS {
        let phys = (i % 1024) << 12;
        core.map(1, iova(i), iova(i) + 0xfff, phys, MapFlags::RW)
            .unwrap();
        base.write()
            .unwrap()
            .insert(iova(i), (iova(i) + 0xfff, phys, 3));
        ram.write_obj(i, GuestAddress(phys + 8)).unwrap();
    }
    let dma = IommuMemory::new(
        ram.clone(),
        EndpointIommu::new(core.clone(), EP as u16),
        true,
        (),
    );
    let mut g = c.benchmark_group("virtio_iommu_dma_read");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("baseline_rwlock_btreemap", |b| {
        b.iter(|| {
            i = (i + 1) % IOVAS;
            let a = iova(i) + 8;
            let phys = {
                let t = base.read().unwrap();
                let (s, v) = t.range(..=a).next_back().unwrap();
                v.1 + (a - s)
            };
            black_box(ram.read_obj::<u64>(GuestAddress(phys)).unwrap())
        })
    });
    // Warm vm-memory's IOTLB once, and check the answers.
    for i in 0..IOVAS {
        assert_eq!(dma.read_obj::<u64>(GuestAddress(iova(i) + 8)).unwrap(), i);
    }
    g.bench_function("iommu_memory_vtd_warm", |b| {
        b.iter(|| {
            i = (i + 1) % IOVAS;
            black_box(dma.read_obj::<u64>(GuestAddress(iova(i) + 8)).unwrap())
        })
    });
    g.bench_function("core_translate_vtd", |b| {
        b.iter(|| {
            i = (i + 1) % IOVAS;
            let t = core
                .translate_untraced(&DmaRequest::new(
                    EP as u16,
                    iova(i) + 8,
                    8,
                    AccessKind::Read,
                ))
                .unwrap();
            black_box(ram.read_obj::<u64>(GuestAddress(t.addr)).unwrap())
        })
    });
    g.bench_function("core_translate_traced_vtd", |b| {
        b.iter(|| {
            i = (i + 1) % IOVAS;
            let t = core
                .translate(&DmaRequest::new(
                    EP as u16,
                    iova(i) + 8,
                    8,
                    AccessKind::Read,
                ))
                .result
                .unwrap();
            black_box(ram.read_obj::<u64>(GuestAddress(t.addr)).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_dma);
criterion_main!(benches);
