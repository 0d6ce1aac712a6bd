//! The virtio-iommu device: request parsing and validation, configuration space, features,
//! statistics and fault events. Domain semantics live in [`iommu_emulator::core`]; this layer
//! only decodes the guest's bytes, calls the core and encodes the answer.
//!
//! Buffer layout (virtio 1.3 §5.13.6): every request is a device-readable part (head + body)
//! followed by a device-writable part (PROBE properties, then the tail). Any split of either part
//! into descriptors is accepted: the parts are read and written through virtio-queue's chain
//! [`Reader`] and [`Writer`]. The device writes its answer at the start of the writable part
//! and reports exactly the bytes it wrote as the used length, which is what the Linux driver
//! checks (`len == write_len`).
//!
//! Requests the device cannot answer get a used length of zero and no write (§5.13.6: "if a
//! request type is not recognized, the device SHOULD NOT write the buffer and SHOULD set the
//! used length to zero"; likewise a request too short to hold a head, or with no room for the
//! tail).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iommu_emulator::core::{Core, CoreError, Fault};
use iommu_emulator::{AccessKind, HwError};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Reader, Writer};
use vm_memory::bitmap::BitmapSlice;

use crate::protocol::*;

/// Virtio features the device offers (virtio 1.3 §5.13.3 and §6).
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_IOMMU_F_INPUT_RANGE)
    | (1 << VIRTIO_IOMMU_F_DOMAIN_RANGE)
    | (1 << VIRTIO_IOMMU_F_MAP_UNMAP)
    | (1 << VIRTIO_IOMMU_F_PROBE)
    | (1 << VIRTIO_IOMMU_F_MMIO)
    | (1 << VIRTIO_IOMMU_F_BYPASS_CONFIG);

/// Errors of the device layer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A configuration-space access outside `struct virtio_iommu_config`.
    #[error("config access at offset {offset} size {size} is outside the 40-byte config space")]
    ConfigOutOfBounds {
        /// Offset of the access.
        offset: u32,
        /// Size of the access.
        size: usize,
    },
    /// The probe size cannot hold the properties the device reports.
    #[error("probe_size {probe_size} cannot hold {needed} bytes of properties")]
    ProbeSize {
        /// Configured probe size.
        probe_size: u32,
        /// Bytes the properties need.
        needed: usize,
    },
    /// The core rejected a configuration change.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The status the spec names for each core error (virtio 1.3 §5.13.6.3–§5.13.6.7).
pub fn status_of(e: &CoreError) -> Status {
    match e {
        // "If the endpoint identified by endpoint doesn't exist ... VIRTIO_IOMMU_S_NOENT";
        // "If domain does not exist ... VIRTIO_IOMMU_S_NOENT" (MAP, UNMAP).
        CoreError::NoEndpoint(_) | CoreError::NoDomain(_) => Status::NoEnt,
        // DETACH: "if the endpoint ... isn't attached to this domain ... VIRTIO_IOMMU_S_INVAL".
        CoreError::NotAttached { .. } => Status::Inval,
        // ATTACH: "flag is not consistent with that domain ... INVAL"; MAP/UNMAP on a bypass
        // domain: INVAL; "If a mapping already exists in the requested range ... INVAL".
        CoreError::BypassMismatch(_)
        | CoreError::BypassDomain(_)
        | CoreError::Reversed { .. }
        | CoreError::Overlap(_)
        | CoreError::Reserved(_) => Status::Inval,
        // "not aligned on the page granularity ... VIRTIO_IOMMU_S_RANGE"; ranges outside
        // input_range, domain_range or the physical address space; UNMAP that would split.
        CoreError::DomainOutOfRange(_)
        | CoreError::Unaligned(_)
        | CoreError::OutsideInputRange { .. }
        | CoreError::PhysOutOfRange(_)
        | CoreError::Split(_) => Status::Range,
        // "Insufficient resources".
        CoreError::TooManyDomains(_)
        | CoreError::TooManyMappings(_)
        | CoreError::Hardware(HwError::Exhausted(_)) => Status::NoMem,
        // Anything else the hardware model failed at is the device's own error.
        CoreError::Hardware(_) | CoreError::Config(_) => Status::DevErr,
    }
}

#[derive(Debug, Default)]
struct RequestStats {
    by_type: [[AtomicU64; 9]; 5],
    unknown_type: AtomicU64,
    unanswerable: AtomicU64,
    events_sent: AtomicU64,
    device_resets: AtomicU64,
    system_resets: AtomicU64,
}

/// Counts of requests by type and status, plus requests that got no answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// type name -> status name -> count (only non-zero counts).
    pub by_type: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests with an unknown type (answered with used length 0).
    pub unknown_type: u64,
    /// Requests too short for a head or with no room for a tail (used length 0).
    pub unanswerable: u64,
    /// Fault events written to the event queue.
    pub events_sent: u64,
    /// Device resets ([`IommuDevice::reset`]: a vhost-user `RESET_DEVICE`, or a driver's
    /// virtio reset recognised from the rings' restart).
    pub device_resets: u64,
    /// System resets ([`IommuDevice::system_reset`]: the front end disconnected).
    pub system_resets: u64,
}

/// The virtio-iommu device state above the core.
#[derive(Debug)]
pub struct IommuDevice {
    core: Arc<Core>,
    probe_size: u32,
    acked: AtomicU64,
    stats: RequestStats,
}

fn type_index(ty: RequestType) -> usize {
    RequestType::ALL.iter().position(|t| *t == ty).unwrap_or(0)
}

impl IommuDevice {
    /// A device in front of `core`, answering PROBE with `probe_size` bytes of properties.
    pub fn new(core: Arc<Core>, probe_size: u32) -> Result<Self, DeviceError> {
        let needed = core.config().reserved.len() * RESV_MEM_LEN;
        if (probe_size as usize) < needed {
            return Err(DeviceError::ProbeSize { probe_size, needed });
        }
        Ok(Self {
            core,
            probe_size,
            acked: AtomicU64::new(0),
            stats: RequestStats::default(),
        })
    }

    /// The core behind the device.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Records the features the driver accepted.
    pub fn set_acked_features(&self, features: u64) {
        self.acked
            .store(features & DEVICE_FEATURES, Ordering::Release);
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked.load(Ordering::Acquire) & (1 << bit) != 0
    }

    /// Device reset (virtio 1.3 §2.4; §5.13.5: "When the device is reset, endpoints are not
    /// attached to any domain"): every domain freed, every endpoint detached, the fault events
    /// not yet delivered dropped, and the features to be negotiated again. `bypass` keeps its
    /// value (§5.13.4).
    pub fn reset(&self) -> Result<(), DeviceError> {
        self.acked.store(0, Ordering::Release);
        self.reset_after_renegotiation()
    }

    /// The device reset of [`IommuDevice::reset`] recognised only once the next driver had
    /// negotiated its features (a virtio reset the front end signals by restarting the rings,
    /// see [`crate::backend`]): everything [`IommuDevice::reset`] does except that the
    /// features just negotiated stay.
    pub fn reset_after_renegotiation(&self) -> Result<(), DeviceError> {
        self.core.reset()?;
        self.stats.device_resets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// System reset (the front end went away): [`IommuDevice::reset`], the negotiated features
    /// cleared, and `bypass` back to its initial value (§5.13.4: "SHOULD be restored to its
    /// initial value on system reset").
    pub fn system_reset(&self) -> Result<(), DeviceError> {
        self.acked.store(0, Ordering::Release);
        self.core.system_reset()?;
        self.stats.system_resets.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The configuration space's current contents.
    pub fn config_space(&self) -> ConfigSpace {
        let c = self.core.config();
        ConfigSpace {
            page_size_mask: c.page_size_mask,
            input_range: c.input_range,
            domain_range: c.domain_range,
            probe_size: self.probe_size,
            bypass: self.core.bypass(),
        }
    }

    /// Reads `size` bytes of configuration space at `offset`.
    pub fn read_config(&self, offset: u32, size: u32) -> Result<Vec<u8>, DeviceError> {
        let (o, n) = (offset as usize, size as usize);
        match o.checked_add(n) {
            Some(end) if end <= CONFIG_LEN => Ok(self.config_space().encode()[o..end].to_vec()),
            _ => Err(DeviceError::ConfigOutOfBounds { offset, size: n }),
        }
    }

    /// Writes configuration space. Only `bypass` is writable, and only once
    /// `VIRTIO_IOMMU_F_BYPASS_CONFIG` is negotiated (§5.13.4); writes to the read-only fields are
    /// ignored (a front end may write the whole structure back). Bits 1-7 of `bypass` are
    /// ignored.
    pub fn write_config(&self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        let o = offset as usize;
        let end = o
            .checked_add(data.len())
            .filter(|e| *e <= CONFIG_LEN)
            .ok_or(DeviceError::ConfigOutOfBounds {
                offset,
                size: data.len(),
            })?;
        if !(o..end).contains(&CONFIG_BYPASS_OFFSET) {
            log::debug!("ignored write to read-only config bytes {o}..{end}");
            return Ok(());
        }
        let bypass = data[CONFIG_BYPASS_OFFSET - o] & 1 != 0;
        if !self.acked(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
            if bypass != self.core.bypass() {
                log::warn!("bypass write ignored: VIRTIO_IOMMU_F_BYPASS_CONFIG not negotiated");
            }
            return Ok(());
        }
        self.core.set_bypass(bypass)?;
        Ok(())
    }

    /// Processes one request: `readable` bytes can be read from `r` (the device-readable part)
    /// and `writable` bytes written to `w`. Returns the used length.
    pub fn process<R: Read, W: Write>(
        &self,
        r: &mut R,
        readable: usize,
        w: &mut W,
        writable: usize,
    ) -> u32 {
        let mut head = [0u8; HEAD_LEN];
        if readable < HEAD_LEN || writable < TAIL_LEN || r.read_exact(&mut head).is_err() {
            self.stats.unanswerable.fetch_add(1, Ordering::Relaxed);
            log::debug!("request without room for head or tail: {readable}+{writable} bytes");
            return 0;
        }
        // The head's reserved bytes are ignored (§5.13.6: "The device MUST ignore field
        // reserved of struct virtio_iommu_req_head").
        let Some(ty) = RequestType::from_code(head[0]) else {
            self.stats.unknown_type.fetch_add(1, Ordering::Relaxed);
            log::debug!("unknown request type {}", head[0]);
            return 0;
        };
        let props_len = if ty == RequestType::Probe {
            self.probe_size as usize
        } else {
            0
        };
        let need = props_len + TAIL_LEN;
        let mut body = [0u8; 68];
        let body = &mut body[..ty.body_len()];
        let (status, props) = if readable != HEAD_LEN + ty.body_len() {
            log::debug!("{} request with {readable} readable bytes", ty.name());
            (Status::Inval, None)
        } else if writable != need {
            // "If the properties list is smaller than probe_size, the device SHOULD NOT write
            // any property. It SHOULD reject the request and set status to INVAL" (§5.13.6.7);
            // an oversized writable part is equally malformed.
            log::debug!("{} request with {writable} writable bytes", ty.name());
            (Status::Inval, None)
        } else if r.read_exact(body).is_err() {
            (Status::IoErr, None)
        } else {
            match Request::decode(ty, body) {
                Some(req) => self.execute(req),
                None => (Status::Inval, None),
            }
        };
        // The properties (PROBE only, and only when they fit), then the tail.
        let mut written = 0usize;
        if props_len > 0 && writable >= need {
            let mut p = props.unwrap_or_default();
            p.resize(props_len, 0);
            if w.write_all(&p).is_err() {
                self.stats.unanswerable.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
            written = props_len;
        }
        if w.write_all(&[status as u8, 0, 0, 0]).is_err() {
            self.stats.unanswerable.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        written += TAIL_LEN;
        self.stats.by_type[type_index(ty)][status as usize].fetch_add(1, Ordering::Relaxed);
        written as u32
    }

    /// Processes one request from virtio-queue's chain reader and writer.
    pub fn process_chain<B: BitmapSlice>(
        &self,
        r: &mut Reader<'_, B>,
        w: &mut Writer<'_, B>,
    ) -> u32 {
        let (readable, writable) = (r.available_bytes(), w.available_bytes());
        self.process(r, readable, w, writable)
    }

    fn execute(&self, req: Request) -> (Status, Option<Vec<u8>>) {
        let result = match req {
            Request::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => {
                // "If the reserved field of an ATTACH request is not zero, the device MUST reject
                // the request and set status to VIRTIO_IOMMU_S_INVAL"; likewise unknown flags
                // (ATTACH_F_BYPASS is only known once BYPASS_CONFIG is negotiated).
                let known = if self.acked(VIRTIO_IOMMU_F_BYPASS_CONFIG) {
                    VIRTIO_IOMMU_ATTACH_F_BYPASS
                } else {
                    0
                };
                if reserved != 0 || flags & !known != 0 {
                    return (Status::Inval, None);
                }
                self.core
                    .attach(domain, endpoint, flags & VIRTIO_IOMMU_ATTACH_F_BYPASS != 0)
            }
            Request::Detach { domain, endpoint } => self.core.detach(domain, endpoint),
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                if !self.acked(VIRTIO_IOMMU_F_MAP_UNMAP) {
                    return (Status::Unsupp, None);
                }
                let Some(flags) = decode_map_flags(flags, self.acked(VIRTIO_IOMMU_F_MMIO)) else {
                    return (Status::Inval, None);
                };
                self.core
                    .map(domain, virt_start, virt_end, phys_start, flags)
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
                reserved,
            } => {
                if !self.acked(VIRTIO_IOMMU_F_MAP_UNMAP) {
                    return (Status::Unsupp, None);
                }
                // "If the reserved field of an UNMAP request is not zero, the device MAY set the
                // request status to VIRTIO_IOMMU_S_INVAL": we do, and unmap nothing.
                if reserved != 0 {
                    return (Status::Inval, None);
                }
                self.core.unmap(domain, virt_start, virt_end).map(|_| ())
            }
            Request::Probe { endpoint } => {
                return match self.core.probe(endpoint) {
                    Ok(regions) => {
                        let mut p = Vec::with_capacity(self.probe_size as usize);
                        for r in &regions {
                            p.extend_from_slice(&encode_resv_mem(r));
                        }
                        (Status::Ok, Some(p))
                    }
                    Err(e) => (status_of(&e), None),
                };
            }
        };
        match result {
            Ok(()) => (Status::Ok, None),
            Err(e) => {
                log::debug!("{req:?}: {e}");
                (status_of(&e), None)
            }
        }
    }

    /// Writes one fault report into an event buffer of `writable` bytes. Returns the used length,
    /// or `None` if the buffer is too small to hold `struct virtio_iommu_fault`.
    pub fn write_fault<W: Write>(&self, fault: &Fault, w: &mut W, writable: usize) -> Option<u32> {
        if writable < FAULT_LEN {
            return None;
        }
        // virtio 1.3 §5.13.6.9: the access's READ, WRITE and EXEC flags (an atomic both reads
        // and writes; an instruction fetch reads and executes).
        let flags = VIRTIO_IOMMU_FAULT_F_ADDRESS
            | match fault.access {
                AccessKind::Read => VIRTIO_IOMMU_FAULT_F_READ,
                AccessKind::Write => VIRTIO_IOMMU_FAULT_F_WRITE,
                AccessKind::Atomic => VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_WRITE,
                AccessKind::Execute => VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_EXEC,
            };
        let b = encode_fault(fault.reason, flags, fault.endpoint, fault.address);
        w.write_all(&b).ok()?;
        self.stats.events_sent.fetch_add(1, Ordering::Relaxed);
        Some(FAULT_LEN as u32)
    }

    /// Request counts by type and status.
    pub fn request_counts(&self) -> RequestCounts {
        let mut by_type = BTreeMap::new();
        for ty in RequestType::ALL {
            let mut m = BTreeMap::new();
            for s in Status::ALL {
                let n = self.stats.by_type[type_index(ty)][s as usize].load(Ordering::Relaxed);
                if n != 0 {
                    m.insert(s.name().to_string(), n);
                }
            }
            by_type.insert(ty.name().to_string(), m);
        }
        RequestCounts {
            by_type,
            unknown_type: self.stats.unknown_type.load(Ordering::Relaxed),
            unanswerable: self.stats.unanswerable.load(Ordering::Relaxed),
            events_sent: self.stats.events_sent.load(Ordering::Relaxed),
            device_resets: self.stats.device_resets.load(Ordering::Relaxed),
            system_resets: self.stats.system_resets.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
