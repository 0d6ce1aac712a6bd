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
    }
}
