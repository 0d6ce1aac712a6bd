//! Request processing driven through real descriptor chains built with `virtio_queue::mock`.

use super::*;
use iommu_emulator::core::{CoreConfig, EndpointSet, FaultReason, ResvRegion};
use iommu_emulator::{AccessKind, DmaRequest, SoftDriver};
use proptest::prelude::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const EP: u32 = 0x08;
const EP2: u32 = 0x10;
const PROBE_SIZE: u32 = 64;
const ALL: u64 = DEVICE_FEATURES;

fn device_with(config: CoreConfig, features: u64) -> IommuDevice {
    let core = Arc::new(Core::new(config, Arc::new(SoftDriver::new())).unwrap());
    let d = IommuDevice::new(core, PROBE_SIZE).unwrap();
    d.set_acked_features(features);
    d
}

fn config() -> CoreConfig {
    CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0xff]),
        domain_range: (1, 1000),
        max_domains: 3,
        max_mappings: 4,
        ..CoreConfig::default()
    }
}

fn device() -> IommuDevice {
    device_with(config(), ALL)
}

/// Places `req` in readable descriptors of the given sizes (the last takes the rest) and
/// writable descriptors of `write_lens`, runs the request through virtio-queue's `Reader` and
/// `Writer`, and returns the used length and the writable bytes.
fn run_split(
    dev: &IommuDevice,
    req: &[u8],
    read_lens: &[usize],
    write_lens: &[u32],
) -> (u32, Vec<u8>) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let q = MockSplitQueue::new(&mem, 64);
    let mut descs = Vec::new();
    let mut addr = 0x10_0000u64;
    let mut off = 0;
    for (i, &len) in read_lens.iter().enumerate() {
        let len = if i + 1 == read_lens.len() {
            req.len() - off
        } else {
            len
        };
        mem.write_slice(&req[off..off + len], GuestAddress(addr))
            .unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            addr, len as u32, 0, 0,
        )));
        off += len;
        addr += 0x1000;
    }
    let wstart = addr;
    for &len in write_lens {
        mem.write_slice(&vec![0xaa; len as usize], GuestAddress(addr))
            .unwrap();
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
        addr += 0x1000;
    }
    let chain = q.build_desc_chain(&descs).unwrap();
    let mut r = Reader::new(&mem, chain.clone()).unwrap();
    let mut w = Writer::new(&mem, chain).unwrap();
    let used = dev.process_chain(&mut r, &mut w);
    let mut out = Vec::new();
    for (i, &len) in write_lens.iter().enumerate() {
        let mut b = vec![0u8; len as usize];
        mem.read_slice(&mut b, GuestAddress(wstart + i as u64 * 0x1000))
            .unwrap();
        out.extend_from_slice(&b);
    }
    (used, out)
}

/// Runs a request laid out the way the Linux driver does: one readable and one writable buffer.
fn run(dev: &IommuDevice, req: &[u8], writable: u32) -> (u32, Vec<u8>) {
    run_split(dev, req, &[req.len()], &[writable])
}

/// The status of a normal (non-PROBE) request.
fn status(dev: &IommuDevice, req: &[u8]) -> Status {
    let (used, out) = run(dev, req, 4);
    assert_eq!(used, 4, "used length");
    assert_eq!(&out[1..4], &[0, 0, 0], "tail reserved bytes");
    Status::ALL[out[0] as usize]
}

fn attach_req(domain: u32, endpoint: u32, flags: u32) -> Vec<u8> {
    let mut b = vec![VIRTIO_IOMMU_T_ATTACH, 0, 0, 0];
    b.extend_from_slice(&domain.to_le_bytes());
    b.extend_from_slice(&endpoint.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

fn detach_req(domain: u32, endpoint: u32) -> Vec<u8> {
    let mut b = attach_req(domain, endpoint, 0);
    b[0] = VIRTIO_IOMMU_T_DETACH;
    b
}

fn map_req(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut b = vec![VIRTIO_IOMMU_T_MAP, 0, 0, 0];
    b.extend_from_slice(&domain.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&end.to_le_bytes());
    b.extend_from_slice(&phys.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b
}

fn unmap_req(domain: u32, start: u64, end: u64) -> Vec<u8> {
    let mut b = vec![VIRTIO_IOMMU_T_UNMAP, 0, 0, 0];
    b.extend_from_slice(&domain.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&end.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

fn probe_req(endpoint: u32) -> Vec<u8> {
    let mut b = vec![VIRTIO_IOMMU_T_PROBE, 0, 0, 0];
    b.extend_from_slice(&endpoint.to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    b
}

const R: u32 = VIRTIO_IOMMU_MAP_F_READ;
const RW: u32 = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE;

fn phys(dev: &IommuDevice, ep: u32, iova: u64, access: AccessKind) -> Result<u64, FaultReason> {
    dev.core()
        .translate(&DmaRequest::new(ep as u16, iova, 1, access))
        .result
        .map(|t| t.addr)
        .map_err(|f| f.reason)
}

/// virtio 1.3 §5.13: attach(endpoint = 0x8, domain = 1); map(domain = 1, 0x1000-0x1fff ->
/// 0xa000, READ); unmap; detach.
#[test]
fn spec_example_sequence() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(
        status(&d, &map_req(1, 0x1000, 0x1fff, 0xa000, R)),
        Status::Ok
    );
    assert_eq!(phys(&d, EP, 0x1abc, AccessKind::Read), Ok(0xaabc));
    assert_eq!(
        phys(&d, EP, 0x1abc, AccessKind::Write),
        Err(FaultReason::Mapping)
    );
    assert_eq!(status(&d, &unmap_req(1, 0x1000, 0x1fff)), Status::Ok);
    assert_eq!(
        phys(&d, EP, 0x1abc, AccessKind::Read),
        Err(FaultReason::Mapping)
    );
    assert_eq!(status(&d, &detach_req(1, EP)), Status::Ok);
    assert!(d.core().domains().is_empty());
    let counts = d.request_counts();
    for ty in ["attach", "map", "unmap", "detach"] {
        assert_eq!(counts.by_type[ty]["OK"], 1, "{ty}");
    }
}

/// virtio 1.3 §5.13.6.6: the seven UNMAP example sequences, through the wire format.
#[test]
fn spec_unmap_examples_over_the_wire() {
    const P: u64 = 0x1000;
    type Case = (&'static [(u64, u64)], (u64, u64), Status, usize);
    let cases: [Case; 7] = [
        (&[], (0, 4), Status::Ok, 0),
        (&[(0, 9)], (0, 9), Status::Ok, 0),
        (&[(0, 4), (5, 9)], (0, 9), Status::Ok, 0),
        (&[(0, 9)], (0, 4), Status::Range, 1),
        (&[(0, 4), (5, 9)], (0, 4), Status::Ok, 1),
        (&[(0, 4)], (0, 9), Status::Ok, 0),
        (&[(0, 4), (10, 14)], (0, 14), Status::Ok, 0),
    ];
    for (maps, (s, e), want, left) in cases {
        let d = device();
        assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
        for &(ms, me) in maps {
            let req = map_req(1, ms * P, (me + 1) * P - 1, 0x100_0000 + ms * P, RW);
            assert_eq!(status(&d, &req), Status::Ok);
        }
        assert_eq!(status(&d, &unmap_req(1, s * P, (e + 1) * P - 1)), want);
        assert_eq!(d.core().domains()[0].mappings.len(), left);
    }
}

#[test]
fn every_error_class_gets_its_status_and_changes_nothing() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(status(&d, &attach_req(2, EP2, 1)), Status::Ok);
    assert_eq!(
        status(&d, &map_req(1, 0x10000, 0x1ffff, 0x40000, RW)),
        Status::Ok
    );
    let snapshot = d.core().domains();

    let mut attach_reserved = attach_req(3, EP, 0);
    attach_reserved[19] = 1;
    let mut unmap_reserved = unmap_req(1, 0x10000, 0x1ffff);
    unmap_reserved[24] = 1;
    let mut short = map_req(1, 0, 0xfff, 0, RW);
    short.truncate(30);
    let mut oversized = attach_req(3, EP, 0);
    oversized.extend_from_slice(&[0; 4]);
    let cases: Vec<(&str, Vec<u8>, Status)> = vec![
        ("short request", short, Status::Inval),
        ("oversized request", oversized, Status::Inval),
        ("attach reserved bytes", attach_reserved, Status::Inval),
        ("attach unknown flag", attach_req(3, EP, 2), Status::Inval),
        (
            "attach unknown endpoint",
            attach_req(3, 0x100, 0),
            Status::NoEnt,
        ),
        (
            "attach domain out of range",
            attach_req(1001, EP, 0),
            Status::Range,
        ),
        (
            "attach domain 0 out of range",
            attach_req(0, EP, 0),
            Status::Range,
        ),
        (
            "attach bypass mismatch",
            attach_req(1, EP2, 1),
            Status::Inval,
        ),
        (
            "detach unknown endpoint",
            detach_req(1, 0x100),
            Status::NoEnt,
        ),
        ("detach unknown domain", detach_req(5, EP), Status::Inval),
        (
            "detach not attached there",
            detach_req(2, EP),
            Status::Inval,
        ),
        (
            "map unknown domain",
            map_req(5, 0, 0xfff, 0, RW),
            Status::NoEnt,
        ),
        (
            "map bypass domain",
            map_req(2, 0, 0xfff, 0, RW),
            Status::Inval,
        ),
        (
            "map unknown flag",
            map_req(1, 0, 0xfff, 0, 8),
            Status::Inval,
        ),
        (
            "map unaligned virt_start",
            map_req(1, 0x800, 0xfff, 0, RW),
            Status::Range,
        ),
        (
            "map unaligned virt_end",
            map_req(1, 0, 0x7ff, 0, RW),
            Status::Range,
        ),
        (
            "map unaligned phys",
            map_req(1, 0, 0xfff, 0x10, RW),
            Status::Range,
        ),
        (
            "map reversed",
            map_req(1, 0x2000, 0xfff, 0, RW),
            Status::Inval,
        ),
        (
            "map beyond input range",
            map_req(1, 1 << 48, (1 << 48) + 0xfff, 0, RW),
            Status::Range,
        ),
        (
            "map phys overflow",
            map_req(1, 0, 0x1fff, u64::MAX - 0xfff, RW),
            Status::Range,
        ),
        (
            "map full 64-bit range",
            map_req(1, 0, u64::MAX, 0, RW),
            Status::Range,
        ),
        (
            "map overlap",
            map_req(1, 0x1f000, 0x20fff, 0, RW),
            Status::Inval,
        ),
        (
            "map over MSI window",
            map_req(1, 0xfee0_0000, 0xfee0_0fff, 0, RW),
            Status::Inval,
        ),
        ("unmap split", unmap_req(1, 0x10000, 0x10fff), Status::Range),
        ("unmap reserved bytes", unmap_reserved, Status::Inval),
        (
            "unmap unknown domain",
            unmap_req(9, 0, 0xfff),
            Status::NoEnt,
        ),
        ("unmap bypass domain", unmap_req(2, 0, 0xfff), Status::Inval),
    ];
    for (what, req, want) in cases {
        assert_eq!(status(&d, &req), want, "{what}");
        assert_eq!(d.core().domains(), snapshot, "{what} changed the state");
    }
    assert_eq!(phys(&d, EP, 0x10008, AccessKind::Write), Ok(0x40008));
}

#[test]
fn limits_give_nomem() {
    let d = device();
    for dom in 1..=3 {
        assert_eq!(status(&d, &attach_req(dom, dom, 0)), Status::Ok);
    }
    assert_eq!(status(&d, &attach_req(4, 4, 0)), Status::NoMem);
    for i in 0..4u64 {
        let req = map_req(1, i << 12, (i << 12) | 0xfff, 0, RW);
        assert_eq!(status(&d, &req), Status::Ok);
    }
    assert_eq!(status(&d, &map_req(2, 0, 0xfff, 0, RW)), Status::NoMem);
    assert_eq!(d.core().stats().mappings, 4);
    assert_eq!(d.request_counts().by_type["map"]["NOMEM"], 1);
}

#[test]
fn feature_gated_requests_and_flags() {
    let d = device_with(config(), 1 << VIRTIO_F_VERSION_1);
    // Without BYPASS_CONFIG the bypass flag is an unknown flag.
    assert_eq!(status(&d, &attach_req(1, EP, 1)), Status::Inval);
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    // Without MAP_UNMAP there is no MAP or UNMAP.
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0, RW)), Status::Unsupp);
    assert_eq!(status(&d, &unmap_req(1, 0, 0xfff)), Status::Unsupp);
    // Without MMIO the MMIO flag is unknown.
    d.set_acked_features(1 << VIRTIO_IOMMU_F_MAP_UNMAP);
    let mmio = RW | VIRTIO_IOMMU_MAP_F_MMIO;
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0, mmio)), Status::Inval);
    d.set_acked_features(ALL);
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0, mmio)), Status::Ok);
}

#[test]
fn unanswerable_requests_get_used_length_zero_and_no_write() {
    let d = device();
    // Unknown type (§5.13.6: SHOULD NOT write the buffer, used length zero).
    let mut unknown = attach_req(1, EP, 0);
    unknown[0] = 9;
    assert_eq!(run(&d, &unknown, 4), (0, vec![0xaa; 4]));
    // Too short for a head.
    assert_eq!(run(&d, &[VIRTIO_IOMMU_T_ATTACH, 0], 4), (0, vec![0xaa; 4]));
    // No room for the tail.
    assert_eq!(run(&d, &attach_req(1, EP, 0), 3), (0, vec![0xaa; 3]));
    assert!(d.core().domains().is_empty());
    let c = d.request_counts();
    assert_eq!((c.unknown_type, c.unanswerable), (1, 2));
}

#[test]
fn head_reserved_bytes_are_ignored() {
    let d = device();
    let mut req = attach_req(1, EP, 0);
    req[1..4].copy_from_slice(&[1, 2, 3]);
    assert_eq!(status(&d, &req), Status::Ok);
}

#[test]
fn oversized_writable_part_is_inval() {
    let d = device();
    let (used, out) = run(&d, &attach_req(1, EP, 0), 8);
    assert_eq!(used, 4);
    assert_eq!(out[0], Status::Inval as u8);
    assert!(d.core().domains().is_empty());
}

#[test]
fn bypass_config_write() {
    let d = device();
    assert_eq!(d.read_config(36, 1).unwrap(), vec![0]);
    assert_eq!(
        phys(&d, EP, 0x5000, AccessKind::Read),
        Err(FaultReason::Domain)
    );
    // A front end writing the whole structure back, with bypass set (bits 1-7 ignored).
    let mut cfg = d.read_config(0, 40).unwrap();
    cfg[36] = 0xff;
    d.write_config(0, &cfg).unwrap();
    assert!(d.core().bypass());
    assert_eq!(d.read_config(36, 1).unwrap(), vec![1]);
    assert_eq!(phys(&d, EP, 0x5000, AccessKind::Read), Ok(0x5000));
    // Attached endpoints are translated whatever bypass says.
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(
        phys(&d, EP, 0x5000, AccessKind::Read),
        Err(FaultReason::Mapping)
    );
    d.write_config(36, &[0]).unwrap();
    assert_eq!(
        phys(&d, EP2, 0x5000, AccessKind::Read),
        Err(FaultReason::Domain)
    );
    // Out of bounds.
    assert!(d.write_config(38, &[0; 4]).is_err());
    assert!(d.read_config(36, 8).is_err());
    assert!(d.read_config(u32::MAX, 2).is_err());
    // Without BYPASS_CONFIG negotiated, the write is ignored.
    let d = device_with(config(), 1 << VIRTIO_F_VERSION_1);
    d.write_config(36, &[1]).unwrap();
    assert!(!d.core().bypass());
}

#[test]
fn config_space_reflects_the_core_config() {
    let d = device();
    let b = d.read_config(0, 40).unwrap();
    assert_eq!(&b[0..8], &0x4020_1000u64.to_le_bytes());
    assert_eq!(&b[8..16], &0u64.to_le_bytes());
    assert_eq!(&b[16..24], &((1u64 << 48) - 1).to_le_bytes());
    assert_eq!(&b[24..28], &1u32.to_le_bytes());
    assert_eq!(&b[28..32], &1000u32.to_le_bytes());
    assert_eq!(&b[32..36], &PROBE_SIZE.to_le_bytes());
}

#[test]
fn implicit_detach_moves_the_endpoint_and_frees_the_empty_domain() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0x7000, RW)), Status::Ok);
    assert_eq!(status(&d, &attach_req(2, EP, 0)), Status::Ok);
    assert_eq!(status(&d, &map_req(2, 0, 0xfff, 0x9000, RW)), Status::Ok);
    assert_eq!(phys(&d, EP, 0x10, AccessKind::Read), Ok(0x9010));
    // Domain 1 is gone with its mapping; its id is free for reuse.
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0, RW)), Status::NoEnt);
    assert_eq!(d.core().stats().mappings, 1);
    assert_eq!(status(&d, &attach_req(1, EP2, 1)), Status::Ok);
}

#[test]
fn detach_frees_empty_domain_with_its_mappings() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(status(&d, &attach_req(1, EP2, 0)), Status::Ok);
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0x7000, RW)), Status::Ok);
    assert_eq!(status(&d, &detach_req(1, EP)), Status::Ok);
    assert_eq!(d.core().domains().len(), 1);
    assert_eq!(status(&d, &detach_req(1, EP2)), Status::Ok);
    assert!(d.core().domains().is_empty());
    assert_eq!(d.core().stats().mappings, 0);
    assert_eq!(status(&d, &unmap_req(1, 0, 0xfff)), Status::NoEnt);
}

#[test]
fn probe_layout() {
    let d = device();
    let (used, out) = run(&d, &probe_req(EP), PROBE_SIZE + 4);
    assert_eq!(used, PROBE_SIZE + 4);
    // One RESV_MEM property: type 1, length 20, subtype MSI, the x86 MSI window.
    assert_eq!(&out[0..4], &[1, 0, 20, 0]);
    assert_eq!(out[4], VIRTIO_IOMMU_RESV_MEM_T_MSI);
    assert_eq!(&out[5..8], &[0, 0, 0]);
    assert_eq!(&out[8..16], &0xfee0_0000u64.to_le_bytes());
    assert_eq!(&out[16..24], &0xfeef_ffffu64.to_le_bytes());
    // The rest of probe_size is zero (a NONE property ends the list).
    assert!(out[24..PROBE_SIZE as usize].iter().all(|b| *b == 0));
    assert_eq!(&out[PROBE_SIZE as usize..], &[0, 0, 0, 0]);
}

#[test]
fn probe_errors() {
    let d = device();
    // Unknown endpoint: NOENT, no property written.
    let (used, out) = run(&d, &probe_req(0x100), PROBE_SIZE + 4);
    assert_eq!(used, PROBE_SIZE + 4);
    assert!(out[..PROBE_SIZE as usize].iter().all(|b| *b == 0));
    assert_eq!(out[PROBE_SIZE as usize], Status::NoEnt as u8);
    // Properties area smaller than probe_size: INVAL, no property written.
    let (used, out) = run(&d, &probe_req(EP), PROBE_SIZE);
    assert_eq!(used, 4);
    assert_eq!(out[0], Status::Inval as u8);
    assert!(out[4..].iter().all(|b| *b == 0xaa));
}

#[test]
fn probe_with_several_regions_and_too_small_probe_size() {
    let cfg = CoreConfig {
        reserved: vec![
            ResvRegion::X86_MSI,
            ResvRegion {
                kind: iommu_emulator::core::ResvKind::Reserved,
                start: 0x1_0000_0000,
                end: 0x1_000f_ffff,
            },
        ],
        ..config()
    };
    let core = Arc::new(Core::new(cfg.clone(), Arc::new(SoftDriver::new())).unwrap());
    assert!(matches!(
        IommuDevice::new(core.clone(), 40),
        Err(DeviceError::ProbeSize { needed: 48, .. })
    ));
    let d = IommuDevice::new(core, 48).unwrap();
    let (used, out) = run(&d, &probe_req(EP), 52);
    assert_eq!(used, 52);
    assert_eq!(out[28], VIRTIO_IOMMU_RESV_MEM_T_RESERVED);
    assert_eq!(&out[32..40], &0x1_0000_0000u64.to_le_bytes());
    assert_eq!(out[48], 0);
}

#[test]
fn reset_detaches_everything() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0x7000, RW)), Status::Ok);
    d.reset().unwrap();
    assert!(d.core().domains().is_empty());
    assert_eq!(d.core().endpoint_domain(EP), None);
    // Features must be negotiated again.
    assert_eq!(status(&d, &attach_req(1, EP, 1)), Status::Inval);
    // Device reset keeps bypass; system reset restores its initial value.
    d.set_acked_features(ALL);
    d.write_config(36, &[1]).unwrap();
    d.reset().unwrap();
    assert!(d.core().bypass());
    d.system_reset().unwrap();
    assert!(!d.core().bypass());
}

#[test]
fn a_reset_after_renegotiation_keeps_the_new_features() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    assert_eq!(status(&d, &map_req(1, 0, 0xfff, 0x7000, RW)), Status::Ok);
    d.reset_after_renegotiation().unwrap();
    assert!(d.core().domains().is_empty());
    assert_eq!(d.core().endpoint_domain(EP), None);
    // BYPASS_CONFIG is still negotiated: the bypass flag of ATTACH is accepted.
    assert_eq!(status(&d, &attach_req(2, EP, 1)), Status::Ok);
    let counts = d.request_counts();
    assert_eq!((counts.device_resets, counts.system_resets), (1, 0));
    d.reset().unwrap();
    d.system_reset().unwrap();
    let counts = d.request_counts();
    assert_eq!((counts.device_resets, counts.system_resets), (2, 1));
}

#[test]
fn fault_event_layout() {
    let d = device();
    let f = Fault {
        reason: FaultReason::Domain,
        endpoint: EP,
        address: 0x1234_5000,
        access: AccessKind::Write,
        unit: iommu_emulator::Fault {
            kind: iommu_emulator::FaultKind::NotPresent,
            site: iommu_emulator::FaultSite::DeviceTable,
            code: 0,
            source_id: EP as u16,
            pasid: None,
            addr: 0x1234_5000,
            access: AccessKind::Write,
            recorded: false,
        },
    };
    let mut buf = Vec::new();
    assert_eq!(d.write_fault(&f, &mut buf, 24), Some(24));
    assert_eq!(buf[0], VIRTIO_IOMMU_FAULT_R_DOMAIN);
    assert_eq!(
        &buf[4..8],
        &(VIRTIO_IOMMU_FAULT_F_WRITE | VIRTIO_IOMMU_FAULT_F_ADDRESS).to_le_bytes()
    );
    assert_eq!(&buf[8..12], &EP.to_le_bytes());
    assert_eq!(&buf[16..24], &0x1234_5000u64.to_le_bytes());
    assert_eq!(d.write_fault(&f, &mut Vec::new(), 23), None);
    assert_eq!(d.request_counts().events_sent, 1);
    // Atomic and execute requests report both of the accesses they make (§5.13.6.9).
    for (access, flags) in [
        (
            AccessKind::Atomic,
            VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_WRITE,
        ),
        (
            AccessKind::Execute,
            VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_EXEC,
        ),
    ] {
        let mut buf = Vec::new();
        d.write_fault(
            &Fault {
                access,
                ..f.clone()
            },
            &mut buf,
            24,
        );
        assert_eq!(
            &buf[4..8],
            &(flags | VIRTIO_IOMMU_FAULT_F_ADDRESS).to_le_bytes()
        );
    }
}

#[test]
fn indirect_style_many_small_descriptors() {
    let d = device();
    assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
    let req = map_req(1, 0x3000, 0x3fff, 0x8000, RW);
    let (used, out) = run_split(&d, &req, &[1; 36], &[1, 1, 1, 1]);
    assert_eq!((used, out[0]), (4, Status::Ok as u8));
    let (used, out) = run_split(&d, &probe_req(EP), &[3, 7, 20], &[10, 30, 28]);
    assert_eq!(used, PROBE_SIZE + 4);
    assert_eq!(&out[0..4], &[1, 0, 20, 0]);
    assert_eq!(out[PROBE_SIZE as usize], 0);
}

fn splits(total: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=total, 0..4).prop_map(move |mut cuts| {
        cuts.sort_unstable();
        cuts.dedup();
        let mut lens = Vec::new();
        let mut prev = 0;
        for c in cuts {
            if c > prev && c < total {
                lens.push(c - prev);
                prev = c;
            }
        }
        lens.push(total - prev);
        lens
    })
}

proptest! {
    /// Any split of the readable and writable parts into descriptors gives the same answer.
    #[test]
    fn any_descriptor_split_gives_the_same_answer(
        rs in splits(36),
        ws in splits(4),
        start in 0u64..16,
    ) {
        let d = device();
        prop_assert_eq!(status(&d, &attach_req(1, EP, 0)), Status::Ok);
        let req = map_req(1, start << 12, (start << 12) | 0xfff, 0x9000, RW);
        let wl: Vec<u32> = ws.iter().map(|l| *l as u32).collect();
        let (used, out) = run_split(&d, &req, &rs, &wl);
        prop_assert_eq!(used, 4);
        prop_assert_eq!(&out[..4], &[0u8, 0, 0, 0][..]);
        prop_assert_eq!(phys(&d, EP, (start << 12) + 5, AccessKind::Write), Ok(0x9005));
    }

    /// Arbitrary bytes never panic the device; an accepted request always answers with a tail.
    #[test]
    fn arbitrary_requests_never_panic(
        ty in 0u8..7,
        body in prop::collection::vec(any::<u8>(), 0..80),
        writable in 0u32..80,
    ) {
        let d = device();
        let mut req = vec![ty, 0, 0, 0];
        req.extend_from_slice(&body);
        let (used, _) = run(&d, &req, writable.max(1));
        prop_assert!(used == 0 || used == 4 || used == PROBE_SIZE + 4);
    }
}
