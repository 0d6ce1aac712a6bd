//! Endpoint devices: PCI functions the daemon serves itself over vfio-user, so that their DMA
//! is real DMA through the hardware model rather than a query on the control socket.
//!
//! - [`engine`]: the DMA engine (descriptor-based copy, fill and compare), its registers and
//!   descriptor format;
//! - [`server`]: the engine as a vfio-user PCI function ([`crate::vfio`]), and the thread
//!   that serves it.
//!
//! Every DMA an endpoint performs goes through a [`DmaTranslator`]: the core (behind the
//! virtio-iommu front), or a unit that a guest's own driver programs (the register front).

pub mod engine;
pub mod observe;
pub mod server;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use iommu_emulator::core::Core;
use iommu_emulator::request::{Fault, FaultKind, FaultSite};
use iommu_emulator::{DmaRequest, PciBdf, Perms, Trace, Translation, Unit};

/// What translates an endpoint's DMA: the IOMMU as the endpoint's requests reach it.
///
/// A fault is handled as the IOMMU handles one (logged by the unit, queued for the
/// virtio-iommu event queue by the core) before it is returned.
pub trait DmaTranslator: Send + Sync {
    /// Translates one request.
    fn translate(&self, req: &DmaRequest) -> Result<Translation, Fault>;

    /// [`DmaTranslator::translate`], recording into `trace` what the IOMMU did (for the
    /// timing model). A translator with no IOMMU behind it records nothing.
    fn translate_traced(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        trace.clear();
        self.translate(req)
    }
}

/// Behind the virtio-iommu front: the core, which knows the endpoint's domain and reports
/// faults on the event queue.
impl DmaTranslator for Core {
    #[inline]
    fn translate(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.translate_untraced(req).map_err(|f| f.unit)
    }

    fn translate_traced(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        self.translate_into(req, trace).map_err(|f| f.unit)
    }
}

/// Straight through a unit, as under the register front, where a guest's driver programs the
/// unit and reads its fault log.
#[derive(Debug, Clone)]
pub struct UnitTranslator(pub Arc<dyn Unit>);

impl DmaTranslator for UnitTranslator {
    #[inline]
    fn translate(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        self.0.translate(req, &mut Trace::off())
    }

    fn translate_traced(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        self.0.translate(req, trace)
    }
}

/// No IOMMU at all: every address is its own physical address (the baseline of the
/// benchmarks, and a platform without an IOMMU).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIommu;

impl DmaTranslator for NoIommu {
    #[inline]
    fn translate(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        match req.addr.checked_add(req.len.max(1) - 1) {
            Some(_) => Ok(Translation {
                addr: req.addr,
                len: req.len.max(1),
                page_shift: 12,
                perms: Perms::ALL,
                domain_id: 0,
                identity: true,
            }),
            None => Err(Fault::unrecorded(
                req,
                FaultKind::AddressWidth,
                FaultSite::Request,
            )),
        }
    }
}

/// The PCI address of a function the daemon serves: `BB:DD.F` (or `DD.F`, short for
/// `00:DD.F`) on segment 0, the only segment served.
pub fn segment0_bdf(addr: &str) -> Result<PciBdf, String> {
    let full = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("00:{addr}")
    };
    let bdf: PciBdf = full.parse().map_err(|e| format!("{e}"))?;
    if bdf.segment != 0 {
        return Err("only segment 0 is served".into());
    }
    Ok(bdf)
}

/// The kinds of endpoint the daemon can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// The DMA engine of [`engine`].
    Dma,
}

/// One `--endpoint KIND@BDF,socket=PATH[,iommu=bypass]` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// What the function is.
    pub kind: EndpointKind,
    /// Where QEMU places it (segment 0); its requester id is the DMA's source id.
    pub bdf: PciBdf,
    /// The vfio-user socket the daemon listens on.
    pub socket: PathBuf,
    /// `iommu=bypass`: the function's DMA does not cross the IOMMU at all ([`NoIommu`]); its
    /// addresses are guest-physical. A baseline for benchmarks (a guest that maps its buffers
    /// at IOVAs equal to their guest-physical addresses does the same work either way).
    pub bypass_iommu: bool,
}

/// Why an `--endpoint` option was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --endpoint {spec:?}: {why} (expected dma@BB:DD.F,socket=PATH[,iommu=bypass])")]
pub struct EndpointSpecError {
    /// The option's value.
    pub spec: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for EndpointSpec {
    type Err = EndpointSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| EndpointSpecError {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let (head, opts) = s.split_once(',').ok_or_else(|| err("no socket"))?;
        let (kind, addr) = head.split_once('@').ok_or_else(|| err("no KIND@ADDRESS"))?;
        let kind = match kind {
            "dma" => EndpointKind::Dma,
            _ => return Err(err(&format!("unknown kind {kind:?} (known: dma)"))),
        };
        let bdf = segment0_bdf(addr).map_err(|why| err(&why))?;
        let mut socket = None;
        let mut bypass_iommu = None;
        for opt in opts.split(',') {
            match opt.split_once('=') {
                Some(("socket", p)) if !p.is_empty() && socket.is_none() => {
                    socket = Some(PathBuf::from(p))
                }
                Some(("socket", _)) => return Err(err("socket given twice or empty")),
                Some(("iommu", v)) if bypass_iommu.is_none() => {
                    bypass_iommu = Some(match v {
                        "bypass" => true,
                        "translate" => false,
                        _ => return Err(err("iommu= takes translate or bypass")),
                    })
                }
                _ => return Err(err(&format!("unknown or repeated option {opt:?}"))),
            }
        }
        Ok(EndpointSpec {
            kind,
            bdf,
            socket: socket.ok_or_else(|| err("no socket"))?,
            bypass_iommu: bypass_iommu.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_options_parse_and_bad_ones_say_why() {
        let e: EndpointSpec = "dma@04.0,socket=/tmp/ep.sock".parse().unwrap();
        assert_eq!(e.kind, EndpointKind::Dma);
        assert_eq!(e.bdf.rid(), 0x20);
        assert_eq!(e.socket, PathBuf::from("/tmp/ep.sock"));
        assert!(!e.bypass_iommu);
        let e: EndpointSpec = "dma@01:1f.7,socket=s,iommu=bypass".parse().unwrap();
        assert_eq!(e.bdf.rid(), 0x1ff);
        assert!(e.bypass_iommu);
        for bad in [
            "dma@04.0",
            "nic@04.0,socket=s",
            "dma@04.8,socket=s",
            "dma@0001:00:04.0,socket=s",
            "dma@04.0,socket=",
            "dma@04.0,socket=a,socket=b",
            "dma@04.0,sock=a",
            "04.0,socket=a",
            "dma@04.0,socket=a,iommu=off",
            "dma@04.0,socket=a,iommu=bypass,iommu=bypass",
        ] {
            let e = bad.parse::<EndpointSpec>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn no_iommu_is_identity_and_refuses_wrapping_requests() {
        let req = DmaRequest::new(8, 0x1234, 16, iommu_emulator::AccessKind::Write);
        let t = NoIommu.translate(&req).unwrap();
        assert_eq!((t.addr, t.len, t.identity), (0x1234, 16, true));
        let wrap = DmaRequest {
            addr: u64::MAX,
            ..req
        };
        assert!(NoIommu.translate(&wrap).is_err());
    }
}
