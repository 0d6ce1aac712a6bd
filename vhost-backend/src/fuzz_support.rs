//! The robustness check of virtio-iommu requests, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/virtio_requests.rs`), its corpus replay (`tests/fuzz_replay.rs`)
//! and a proptest.
//!
//! [`check_requests`] reads its input as a sequence of requests sent to three devices at once,
//! realised in the soft, VT-d and AMD-Vi models: raw requests (any bytes, any readable and
//! writable lengths) and well-formed ATTACH, DETACH, MAP, UNMAP and PROBE requests with fields
//! from the input, interleaved with DMA translations. Every byte string is a valid sequence.
//! The oracles:
//! - nothing panics;
//! - every answer is a status the spec defines for that request type, in a response of the
//!   length the request allowed;
//! - a request the device rejects (any status but OK, and DEVERR, which may leave a partial
//!   UNMAP) leaves the domains, endpoints and mappings exactly as they were;
//! - the three models answer every request with the same status and keep the same domains,
//!   endpoints and mappings, and translate every DMA request to the same address or the same
//!   fault reason. A model out of hardware resources (DEVERR, or NOMEM where the others had
//!   room: the soft model keeps mapping trees, the others page tables in a 4 MiB region) ends
//!   the comparison for the rest of the sequence, since the models' states may then differ.
//!
//! What this does not reach: descriptor chains (their splits, indirect tables and bad lengths
//! are the virtqueue's, in `backend.rs`) and device resets.

mod control_lines;
mod vfio_messages;

use std::sync::Arc;

use iommu_emulator::core::{DomainInfo, FaultReason};
use iommu_emulator::fuzz_support::Input;
use iommu_emulator::{
    AccessKind, AmdViConfig, AmdViDriver, Core, CoreConfig, DmaRequest, Driver, EndpointSet,
    PrivateRegion, SoftDriver, VtdConfig, VtdDriver, VtdMode,
};
use pagewalk::FlatMem;

use crate::device::{DEVICE_FEATURES, IommuDevice};
use crate::protocol::{HEAD_LEN, RequestType, TAIL_LEN};

pub use control_lines::{ControlSummary, check_control};
pub use vfio_messages::{VfioSummary, check_vfio_messages};

/// PROBE's property-list size the devices are built with.
const PROBE_SIZE: u32 = 64;

fn config() -> CoreConfig {
    CoreConfig {
        endpoints: EndpointSet::from_ranges([0..=0x1f]),
        domain_range: (0, 31),
        max_domains: 8,
        max_mappings: 64,
        ..CoreConfig::default()
    }
}

/// The IOMMU-private region the models keep their structures in: all the memory a unit
/// reads (translations never read the memory they map to), so flat memory covers only it.
const PRIVATE: PrivateRegion = PrivateRegion {
    base: 0x1_0000_0000,
    size: 4 << 20,
};

fn models() -> [(&'static str, Arc<dyn Driver>); 3] {
    let mem = || FlatMem::new(PRIVATE.base, PRIVATE.size as usize);
    // Small caches: cheap to build for every input, and evictions are exercised.
    let vtd_cfg = VtdConfig {
        context_cache_entries: 8,
        pasid_cache_entries: 8,
        iotlb_entries: 16,
        pwc_entries: 8,
        ways: 2,
        ..VtdConfig::default()
    };
    let amd_cfg = AmdViConfig {
        dte_cache_entries: 8,
        gcr3_cache_entries: 8,
        iotlb_entries: 16,
        pdc_entries: 8,
        ways: 2,
        ..AmdViConfig::default()
    };
    let vtd = VtdDriver::with_unit(mem(), vtd_cfg, PRIVATE, VtdMode::Legacy)
        .expect("the VT-d model brings up");
    let amd = AmdViDriver::with_unit(mem(), amd_cfg, PRIVATE).expect("the AMD-Vi model brings up");
    [
        ("soft", Arc::new(SoftDriver::new())),
        ("vtd", Arc::new(vtd)),
        ("amdvi", Arc::new(amd)),
    ]
}

/// The statuses the spec lets a device answer a request of `ty` with (virtio 1.3 §5.13.6).
fn allowed(ty: Option<RequestType>, status: u8) -> bool {
    // OK 0, IOERR 1, UNSUPP 2, DEVERR 3, INVAL 4, RANGE 5, NOENT 6, FAULT 7, NOMEM 8.
    match ty {
        Some(RequestType::Attach) => matches!(status, 0 | 2..=6 | 8),
        Some(RequestType::Detach) => matches!(status, 0 | 2..=6),
        Some(RequestType::Map) => matches!(status, 0 | 2..=6 | 8),
        Some(RequestType::Unmap) => matches!(status, 0 | 2..=6),
        Some(RequestType::Probe) => matches!(status, 0 | 2..=6),
        None => false,
    }
}

/// What the devices must agree on: every domain's id, kind, endpoints and mappings.
fn state(d: &IommuDevice) -> Vec<String> {
    let mut v: Vec<String> = d
        .core()
        .domains()
        .iter()
        .map(|i: &DomainInfo| {
            let mut eps = i.endpoints.clone();
            eps.sort_unstable();
            format!("{} {:?} {eps:?} {:?}", i.id, i.kind, i.mappings)
        })
        .collect();
    v.sort();
    v
}

/// An address from a byte: mostly page-aligned, in a few 2 MiB windows, sometimes anything.
fn addr(sel: u8, raw: u64) -> u64 {
    match sel % 4 {
        0 => (u64::from(sel >> 2) << 21) | (raw & 0x1f_f000),
        1 => (u64::from(sel >> 2) << 21) | (raw & 0x1f_f000) | 0xfff,
        2 => raw & 0xffff_f000,
        _ => raw,
    }
}

/// The writable length a request of `ty` needs: the tail, and PROBE's property list.
fn expected(ty: Option<RequestType>) -> usize {
    TAIL_LEN
        + match ty {
            Some(RequestType::Probe) => PROBE_SIZE as usize,
            _ => 0,
        }
}

/// One request's bytes, readable and writable lengths.
fn request(input: &mut Input<'_>) -> Option<(Vec<u8>, usize)> {
    let kind = input.u8()?;
    let le32 = |v: u32| v.to_le_bytes();
    let le64 = |v: u64| v.to_le_bytes();
    let mut b = Vec::new();
    let ty = match kind % 8 {
        0 => {
            // Raw: any type byte, any bytes, any lengths.
            let (len, wr) = (input.u8()?, input.u8()?);
            let body = input.bytes(usize::from(len % 80))?;
            return Some((body, usize::from(wr % 80)));
        }
        1 => {
            let (dom, ep, flags) = (input.u8()?, input.u8()?, input.u8()?);
            b.extend([1, 0, 0, 0]);
            b.extend(le32(u32::from(dom % 40)));
            b.extend(le32(u32::from(ep % 40)));
            b.extend(le32(u32::from(flags % 4)));
            b.extend([0; 4]);
            RequestType::Attach
        }
        2 => {
            let (dom, ep) = (input.u8()?, input.u8()?);
            b.extend([2, 0, 0, 0]);
            b.extend(le32(u32::from(dom % 40)));
            b.extend(le32(u32::from(ep % 40)));
            b.extend([0; 8]);
            RequestType::Detach
        }
        3 => {
            let (dom, s, e, p, flags) = (
                input.u8()?,
                input.u8()?,
                input.u8()?,
                input.u8()?,
                input.u8()?,
            );
            let (rs, re, rp) = (input.u32()?, input.u32()?, input.u32()?);
            let start = addr(s, u64::from(rs));
            let end = start.max(addr(e, u64::from(re)) | 0xfff);
            b.extend([3, 0, 0, 0]);
            b.extend(le32(u32::from(dom % 40)));
            b.extend(le64(start));
            b.extend(le64(end));
            b.extend(le64(addr(p, u64::from(rp))));
            b.extend(le32(u32::from(flags % 16)));
            RequestType::Map
        }
        4 => {
            let (dom, s, e) = (input.u8()?, input.u8()?, input.u8()?);
            let (rs, re) = (input.u32()?, input.u32()?);
            let start = addr(s, u64::from(rs));
            b.extend([4, 0, 0, 0]);
            b.extend(le32(u32::from(dom % 40)));
            b.extend(le64(start));
            b.extend(le64(start.max(addr(e, u64::from(re)) | 0xfff)));
            b.extend([0; 4]);
            RequestType::Unmap
        }
        5 => {
            let ep = input.u8()?;
            b.extend([5, 0, 0, 0]);
            b.extend(le32(u32::from(ep % 40)));
            b.extend([0; 64]);
            RequestType::Probe
        }
        _ => {
            // A well-formed request with its raw body bytes.
            let ty = match input.u8()? % 5 {
                0 => RequestType::Attach,
                1 => RequestType::Detach,
                2 => RequestType::Map,
                3 => RequestType::Unmap,
                _ => RequestType::Probe,
            };
            let code = match ty {
                RequestType::Attach => 1,
                RequestType::Detach => 2,
                RequestType::Map => 3,
                RequestType::Unmap => 4,
                RequestType::Probe => 5,
            };
            b.extend([code, 0, 0, 0]);
            b.extend(input.bytes(ty.body_len())?);
            ty
        }
    };
    Some((b, expected(Some(ty))))
}

/// Runs `data` as a request sequence (see the module notes); panics only if an oracle fails.
pub fn check_requests(data: &[u8]) {
    let devices: Vec<(&str, IommuDevice)> = models()
        .into_iter()
        .map(|(name, driver)| {
            let core = Arc::new(Core::new(config(), driver).expect("the core builds"));
            let d = IommuDevice::new(core, PROBE_SIZE).expect("the device builds");
            d.set_acked_features(DEVICE_FEATURES);
            (name, d)
        })
        .collect();
    let mut input = Input(data);
    let mut agree = true;
    for _ in 0..128 {
        let Some(op) = input.u8() else { break };
        if op % 4 == 3 {
            // A DMA translation, compared across the models.
            let (Some(ep), Some(iova), Some(how)) = (input.u8(), input.u64(), input.u8()) else {
                break;
            };
            let access = [AccessKind::Read, AccessKind::Write][usize::from(how % 2)];
            let req = DmaRequest::new(u16::from(ep % 40), addr(how >> 1, iova), 4, access);
            let got: Vec<Result<u64, FaultReason>> = devices
                .iter()
                .map(|(_, d)| {
                    d.core()
                        .translate_untraced(&req)
                        .map(|t| t.addr)
                        .map_err(|f| f.reason)
                })
                .collect();
            if agree {
                assert!(
                    got.iter().all(|g| *g == got[0]),
                    "{req:?}: the models disagree: {got:?}"
                );
            }
            continue;
        }
        let Some((req, writable)) = request(&mut input) else {
            break;
        };
        let ty = req.first().and_then(|c| RequestType::from_code(*c));
        let mut answers = Vec::new();
        for (name, d) in &devices {
            let before = state(d);
            let mut out = vec![0u8; writable];
            let used = d.process(&mut &req[..], req.len(), &mut &mut out[..], writable) as usize;
            assert!(used <= writable, "{name}: used {used} of {writable} bytes");
            let status = (used >= TAIL_LEN).then(|| out[used - TAIL_LEN]);
            if let Some(s) = status {
                assert!(allowed(ty, s), "{name}: status {s} for {ty:?} ({req:x?})");
                let well_formed = ty.is_some_and(|t| req.len() == HEAD_LEN + t.body_len())
                    && writable == expected(ty);
                assert!(
                    !well_formed || used == writable,
                    "{name}: a well-formed {ty:?} answered in {used} of {writable} bytes"
                );
            } else {
                // Unanswerable (no room for the tail, or an unknown type): nothing happened.
                assert!(
                    req.len() < HEAD_LEN || writable < TAIL_LEN || ty.is_none(),
                    "{name}: {ty:?} ({} + {writable} bytes) got no answer",
                    req.len()
                );
            }
            if status != Some(0) && status != Some(3) {
                assert_eq!(
                    before,
                    state(d),
                    "{name}: a rejected {ty:?} changed the state"
                );
            }
            answers.push(status);
        }
        // A model out of hardware resources (DEVERR, or NOMEM where the others had room) may
        // keep another state from now on.
        let same = answers.iter().all(|a| *a == answers[0]);
        if answers.contains(&Some(3)) || (!same && answers.contains(&Some(8))) {
            agree = false;
        }
        if agree {
            assert!(
                answers.iter().all(|a| *a == answers[0]),
                "the models answer {req:x?} differently: {answers:?}"
            );
            let states: Vec<_> = devices.iter().map(|(_, d)| state(d)).collect();
            assert!(
                states.iter().all(|s| *s == states[0]),
                "the models' states differ after {req:x?}: {states:#?}"
            );
        }
    }
}

// The DMA engine endpoint.

/// The engine's requester id in [`check_dma_engine`].
const ENGINE_RID: u16 = 0x18;
/// Guest RAM of [`check_dma_engine`]: 256 KiB at guest-physical 0.
const ENGINE_RAM: u64 = 256 << 10;
/// The IOVA window mapped writable for the engine: 8 pages at 0x10000 to the frames at
/// 0x20000 (in reverse order), and one read-only page at 0x18000 to 0x30000.
const ENGINE_IOVA: u64 = 0x1_0000;
const ENGINE_GPA: u64 = 0x2_0000;
const ENGINE_PAGES: u64 = 8;
const ENGINE_RO_IOVA: u64 = 0x1_8000;
const ENGINE_RO_GPA: u64 = 0x3_0000;

std::thread_local! {
    /// The file standing in for the guest's memfd, reused (truncated) from input to input.
    static ENGINE_RAM_FILE: std::cell::RefCell<Option<std::fs::File>> =
        const { std::cell::RefCell::new(None) };
}

/// The file standing in for the guest's memfd: [`ENGINE_RAM`] bytes of zeros.
fn engine_ram() -> std::fs::File {
    ENGINE_RAM_FILE.with(|f| {
        let mut f = f.borrow_mut();
        let file = f.get_or_insert_with(|| {
            vmm_sys_util::tempfile::TempFile::new()
                .expect("a temporary file")
                .into_file()
        });
        file.set_len(0).expect("truncate");
        file.set_len(ENGINE_RAM).expect("size");
        file.try_clone().expect("clone the RAM file")
    })
}

/// The core the engine's DMA goes through: the VT-d model, with the engine attached to a
/// domain that maps the window's 8 pages writable (in reverse order) and one page read-only.
fn engine_core() -> Arc<Core> {
    let driver = VtdDriver::with_unit(
        FlatMem::new(PRIVATE.base, PRIVATE.size as usize),
        VtdConfig::default(),
        PRIVATE,
        VtdMode::Legacy,
    )
    .expect("the VT-d model brings up");
    let core = Arc::new(Core::new(config(), Arc::new(driver)).expect("a core"));
    core.attach(1, u32::from(ENGINE_RID), false)
        .expect("attach");
    for i in 0..ENGINE_PAGES {
        let iova = ENGINE_IOVA + i * 4096;
        let gpa = ENGINE_GPA + (ENGINE_PAGES - 1 - i) * 4096;
        core.map(1, iova, iova + 4095, gpa, iommu_emulator::MapFlags::RW)
            .expect("map");
    }
    let ro = iommu_emulator::MapFlags {
        read: true,
        ..Default::default()
    };
    core.map(1, ENGINE_RO_IOVA, ENGINE_RO_IOVA + 4095, ENGINE_RO_GPA, ro)
        .expect("map read-only");
    core
}

/// An engine address from the input: mostly inside the mapped window, sometimes the
/// read-only page, sometimes anything.
fn engine_addr(inp: &mut Input<'_>) -> Option<u64> {
    let sel = inp.u8()?;
    Some(match sel % 8 {
        0..=4 => ENGINE_IOVA + u64::from(inp.u16()?) % (ENGINE_PAGES * 4096),
        5 => ENGINE_RO_IOVA + u64::from(inp.u16()? & 0xfff),
        6 => u64::from(inp.u32()?),
        _ => inp.u64()?,
    })
}

/// The robustness check of the DMA engine endpoint (`crate::endpoint`), shared by the
/// `dma_engine` fuzz target and its corpus replay. The input is a sequence of what a
/// vfio-user client and the guest behind it can do to the function: register reads and writes
/// of any width at any offset, configuration-space writes (Command, MSI, PASID), descriptors
/// (raw bytes, or well-formed ones with addresses in and around the mapped window) written
/// into guest RAM, doorbells, DMA-region unmaps and maps, and SET_IRQS messages. The engine's
/// DMA is translated by the core over the VT-d model, with the endpoint attached to a domain
/// mapping an 8-page window writable and one page read-only. The oracles:
/// - nothing panics, and every register or configuration access inside the function's
///   regions is accepted;
/// - `STATUS` never says both `DONE` and `ERROR`;
/// - the engine writes guest RAM only through the window's writable pages: every byte outside
///   them (the read-only page included) holds what the input itself wrote there.
///
/// Returns the engine's counters (for tests that a seed reaches what it was written for).
pub fn check_dma_engine(data: &[u8]) -> Arc<crate::endpoint::engine::EndpointStats> {
    use crate::endpoint::engine::{self as eng, reg};
    use crate::endpoint::server::EndpointFunction;
    use std::os::unix::fs::FileExt;
    use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};

    let ram = engine_ram();
    // What guest RAM must hold, outside the writable window.
    let mut expect = vec![0u8; ENGINE_RAM as usize];
    let writable = ENGINE_GPA..ENGINE_GPA + ENGINE_PAGES * 4096;
    let stats = Arc::new(eng::EndpointStats::default());
    let mut f = EndpointFunction::dma_engine(ENGINE_RID, engine_core(), stats.clone());
    let map_ram = |f: &mut EndpointFunction| {
        f.dma_map(
            DmaMapFlags::READ_WRITE,
            0,
            0,
            ENGINE_RAM,
            Some(ram.try_clone().expect("clone")),
        )
        .expect("map guest RAM");
    };
    map_ram(&mut f);
    f.region_write(7, 4, &[0x06, 0]).expect("bus master");

    let mut inp = Input(data);
    for _ in 0..64 {
        let Some(op) = inp.u8() else { break };
        let step = (|| -> Option<()> {
            match op % 10 {
                0 => {
                    let off = u64::from(inp.u8()? & 0x7c);
                    let v = inp.u32()?;
                    f.region_write(0, off, &v.to_le_bytes())
                        .expect("a BAR0 write");
                }
                1 => {
                    let off = u64::from(inp.u8()? & 0x78);
                    let v = inp.u64()?;
                    f.region_write(0, off, &v.to_le_bytes())
                        .expect("a BAR0 write");
                }
                2 => {
                    let off = u64::from(inp.u16()? % 4096);
                    let len = (usize::from(inp.u8()?) % 8 + 1).min(4096 - off as usize);
                    let mut b = vec![0; len];
                    f.region_read(0, off, &mut b).expect("a BAR0 read");
                    if off <= reg::STATUS && off + len as u64 >= reg::STATUS + 4 {
                        let at = (reg::STATUS - off) as usize;
                        let st = u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
                        assert!(st & 3 != 3, "STATUS says DONE and ERROR at once: {st:#x}");
                    }
                }
                3 => {
                    let off = u64::from(inp.u16()? % 4096);
                    let len = (usize::from(inp.u8()?) % 4 + 1).min(4096 - off as usize);
                    let b = inp.bytes(len)?;
                    f.region_write(7, off, &b).expect("a config write");
                }
                4 | 5 => {
                    // A descriptor into the first page of the window (where DESC_BASE
                    // usually points): raw, or well formed.
                    let slot = u64::from(inp.u8()? % 32);
                    let d: Vec<u8> = if op % 10 == 4 {
                        inp.bytes(32)?
                    } else {
                        let ctrl = u32::from(inp.u8()? % 4) | (u32::from(inp.u8()? & 3) << 8);
                        let (src, dst) = (engine_addr(&mut inp)?, engine_addr(&mut inp)?);
                        let len = u32::from(inp.u16()?) % 0x3000 + 1;
                        let mut d = vec![0u8; 32];
                        d[0..4].copy_from_slice(&ctrl.to_le_bytes());
                        d[8..16].copy_from_slice(&src.to_le_bytes());
                        d[16..24].copy_from_slice(&dst.to_le_bytes());
                        d[24..28].copy_from_slice(&len.to_le_bytes());
                        d
                    };
                    // IOVA page 0 is the last frame of the window.
                    let gpa = ENGINE_GPA + (ENGINE_PAGES - 1) * 4096 + slot * 32;
                    ram.write_all_at(&d, gpa).expect("write a descriptor");
                }
                6 => {
                    let base = if inp.u8()? & 1 == 0 {
                        ENGINE_IOVA + u64::from(inp.u8()? % 128) * 32
                    } else {
                        engine_addr(&mut inp)?
                    };
                    let n = u32::from(inp.u8()?) + u32::from(inp.u8()? & 1);
                    f.region_write(0, reg::DESC_BASE, &base.to_le_bytes())
                        .expect("DESC_BASE");
                    f.region_write(0, reg::DOORBELL, &n.to_le_bytes())
                        .expect("DOORBELL");
                }
                7 => {
                    // The client unmaps guest RAM (the engine then reaches none), or maps it
                    // back; bad requests are refused and change nothing.
                    let _ = match inp.u8()? % 3 {
                        0 => f.dma_unmap(DmaUnmapFlags::empty(), 0, ENGINE_RAM),
                        1 => f.dma_unmap(
                            DmaUnmapFlags::from_bits_retain(inp.u32()?),
                            inp.u32()?.into(),
                            inp.u32()?.into(),
                        ),
                        _ => {
                            if f.ram().list().is_empty() {
                                map_ram(&mut f);
                            }
                            Ok(())
                        }
                    };
                }
                8 => {
                    let (index, flags, start, count) = (
                        u32::from(inp.u8()? % 6),
                        inp.u32()?,
                        u32::from(inp.u8()? % 3),
                        u32::from(inp.u8()? % 3),
                    );
                    let _ = f.set_irqs(index, flags, start, count, Vec::new());
                }
                _ => {
                    // The guest writes guest RAM itself (anywhere): that is what RAM may hold.
                    let gpa = u64::from(inp.u32()?) % ENGINE_RAM;
                    let len = (usize::from(inp.u8()?) % 16 + 1).min((ENGINE_RAM - gpa) as usize);
                    let b = inp.bytes(len)?;
                    ram.write_all_at(&b, gpa).expect("a guest write");
                    expect[gpa as usize..gpa as usize + len].copy_from_slice(&b);
                }
            }
            Some(())
        })();
        if step.is_none() {
            break;
        }
    }
    let mut got = vec![0u8; ENGINE_RAM as usize];
    ram.read_exact_at(&mut got, 0).expect("read guest RAM");
    for (a, (g, e)) in got.iter().zip(&expect).enumerate() {
        let a = a as u64;
        if !writable.contains(&a) {
            assert_eq!(
                g, e,
                "the engine wrote guest-physical {a:#x}, outside its writable pages"
            );
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random request sequences keep every oracle (the fuzz target runs the same check).
        #[test]
        fn random_sequences_keep_the_oracles(data in prop::collection::vec(any::<u8>(), 0..400)) {
            super::check_requests(&data);
        }

        /// Random engine programming keeps the engine's oracles.
        #[test]
        fn random_engine_programming_keeps_the_oracles(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = super::check_dma_engine(&data);
        }
    }
}
