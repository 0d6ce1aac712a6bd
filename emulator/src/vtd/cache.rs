//! The VT-d unit's caches (VT-d spec rev 4.1, §6.2 "Translation Caching") and how each
//! invalidation granularity (§6.5) maps onto them.
//!
//! - Context cache (§6.2.2): raw context entries, tagged by source id; the DID of a legacy
//!   context entry is the tag's domain, so domain-selective invalidation finds it. Scalable-mode
//!   context entries carry no DID: they are tagged with domain 0 and a domain-selective
//!   context-cache invalidation drops the whole cache (the spec lets hardware invalidate more
//!   than asked).
//! - PASID cache (§6.2.3): PASID-table entries, looked up by (source id, PASID) since the DID is
//!   only known once the entry is read. Entries are tagged with domain 0, so PASID-selective
//!   invalidation drops the PASID for every source and domain-selective invalidation drops the
//!   whole cache.
//! - IOTLB (§6.2.4): leaf translations tagged with (DID, PASID or none, page, size). Requests
//!   without PASID in scalable mode are tagged with their RID_PASID.
//! - Paging-structure caches (§6.2.5): non-leaf entries of one-dimensional walks, the
//!   first-stage entries of nested walks (tagged with the nested stage: their next-table
//!   addresses are guest-physical), tagged with (DID, PASID, stage, level, the input prefix
//!   they translate), and second-stage entries, of one-dimensional walks and of the
//!   second-stage sub-walks of nested ones alike, tagged with the DID alone (no PASID).

use iotlb::{Invalidation, PageRange, PasidMatch, SourceSelector, Translation};

use super::VtdConfig;
use super::qi::{
    ContextGranularity, IotlbGranularity, PasidCacheGranularity, PasidIotlbGranularity,
};
use crate::cache::{GeometryError, PagingStructureCaches, TracedCache};
use crate::trace::CacheId;

/// Context-cache values: raw entry words. Legacy entries are `[lo, hi, 0, 1]`; scalable-mode
/// entries `[qw0, qw1, qw2, qw3]` with `qw3 == 0` (it is reserved).
pub type CtxWords = [u64; 4];
/// Marker in word 3 of a cached legacy context entry.
pub const CTX_LEGACY_MARK: u64 = 1;

/// PASID-cache values: qwords 0..=2 of the PASID-table entry (the rest are reserved zero) and
/// the FPD bit of the PASID-directory entry that led to it.
pub type PasidWords = [u64; 4];

/// The caches of one unit.
#[derive(Debug)]
pub struct VtdCaches {
    /// One bit per DID: set before a first-stage or nested walk of the domain may cache a
    /// translation, cleared by the invalidations that drop them. A page-selective IOTLB
    /// invalidation must drop every first-stage and nested translation of its DID whatever
    /// its address (§6.5.2.3: they are cached by first-stage input address, the
    /// invalidation's address is second-stage input), so a DID with the bit set has all its
    /// entries dropped; one without loses only the range. Read-only once set, so hits write
    /// nothing.
    first_stage_dids: Box<[std::sync::atomic::AtomicU64]>,
    /// Context cache.
    pub context: TracedCache<CtxWords>,
    /// PASID cache.
    pub pasid: TracedCache<PasidWords>,
    /// IOTLB.
    pub iotlb: TracedCache<Translation>,
    /// Paging-structure caches, one per level (stages share them; the stage is in the tag).
    pub psc: PagingStructureCaches,
}

impl VtdCaches {
    /// Caches with the geometry of `cfg`.
    pub fn new(cfg: &VtdConfig) -> Result<Self, GeometryError> {
        Ok(Self {
            first_stage_dids: (0..1024)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            context: TracedCache::new(cfg.context_cache_entries, cfg.ways, CacheId::Context)?,
            pasid: TracedCache::new(cfg.pasid_cache_entries, cfg.ways, CacheId::Pasid)?,
            iotlb: TracedCache::new(cfg.iotlb_entries, cfg.ways, CacheId::Iotlb)?,
            psc: PagingStructureCaches::new(cfg.pwc_entries, cfg.ways)?,
        })
    }

    /// Context-cache invalidation (§6.5.2.1 / CCMD). `scalable`: the root table is in scalable
    /// mode, where cached context entries carry no DID.
    pub fn invalidate_context(&self, g: ContextGranularity, scalable: bool) {
        let inv = match g {
            ContextGranularity::Global => Invalidation::Global,
            ContextGranularity::Domain(_) if scalable => Invalidation::Global,
            ContextGranularity::Domain(d) => Invalidation::Domain(d),
            ContextGranularity::Device { sid, fm, .. } => match SourceSelector::vtd(sid, fm) {
                Ok(s) => Invalidation::Source(s),
                Err(_) => Invalidation::Global,
            },
        };
        self.context.invalidate(&inv);
    }

    /// Records, before a first-stage or nested walk of `did`, that the walk may cache
    /// translations a page-selective invalidation of the DID must drop.
    #[inline]
    pub fn note_first_stage(&self, did: u16) {
        use std::sync::atomic::Ordering;
        let (w, bit) = (usize::from(did >> 6), 1u64 << (did & 63));
        if self.first_stage_dids[w].load(Ordering::Acquire) & bit == 0 {
            self.first_stage_dids[w].fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Clears `did`'s bit; returns whether it was set.
    fn take_first_stage(&self, did: u16) -> bool {
        use std::sync::atomic::Ordering;
        let (w, bit) = (usize::from(did >> 6), 1u64 << (did & 63));
        self.first_stage_dids[w].fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// IOTLB invalidation (§6.5.2.3 / IOTLB_REG): leaf entries and, unless the invalidation hint
    /// says only leaves changed, paging-structure entries, of every PASID of the domain. A
    /// page-selective one drops the second-stage (and pass-through) entries of its range and
    /// every first-stage and nested entry of the domain.
    pub fn invalidate_iotlb(&self, g: IotlbGranularity) {
        let inv = match g {
            IotlbGranularity::Global => {
                for w in self.first_stage_dids.iter() {
                    w.store(0, std::sync::atomic::Ordering::SeqCst);
                }
                Invalidation::Global
            }
            IotlbGranularity::Domain(d) => {
                self.take_first_stage(d);
                Invalidation::Domain(d)
            }
            IotlbGranularity::Page { did, addr, am, ih } => {
                if self.take_first_stage(did) {
                    // More than the second-stage range: the spec lets hardware drop more.
                    Invalidation::Domain(did)
                } else {
                    let addr = crate::xlate::tag_address(addr);
                    match PageRange::vtd(did, PasidMatch::Any, addr, am, ih) {
                        Ok(r) => Invalidation::Range(r),
                        Err(_) => Invalidation::Domain(did),
                    }
                }
            }
        };
        self.iotlb.invalidate(&inv);
        self.psc.invalidate(&inv);
    }

    /// PASID-cache invalidation (§6.5.2.2).
    pub fn invalidate_pasid_cache(&self, _did: u16, pasid: u32, g: PasidCacheGranularity) {
        let inv = match g {
            PasidCacheGranularity::Pasid => Invalidation::DomainPasid {
                domain: 0,
                pasid: Some(pasid),
            },
            PasidCacheGranularity::Domain | PasidCacheGranularity::Global => Invalidation::Global,
        };
        self.pasid.invalidate(&inv);
    }

    /// PASID-based IOTLB invalidation (§6.5.2.4): leaf and (unless IH) paging-structure entries
    /// of one PASID of the domain.
    pub fn invalidate_pasid_iotlb(&self, did: u16, pasid: u32, g: PasidIotlbGranularity) {
        let inv = match g {
            PasidIotlbGranularity::Pasid => Invalidation::DomainPasid {
                domain: did,
                pasid: Some(pasid),
            },
            PasidIotlbGranularity::Page { addr, am, ih } => {
                // ADDR is a first-stage input address, sign-extended (§6.5.2.4): reduced as
                // the tags are, an upper-half address finds its entries.
                let addr = crate::xlate::tag_address(addr);
                match PageRange::vtd(did, PasidMatch::Exactly(Some(pasid)), addr, am, ih) {
                    Ok(r) => Invalidation::Range(r),
                    Err(_) => Invalidation::DomainPasid {
                        domain: did,
                        pasid: Some(pasid),
                    },
                }
            }
        };
        self.iotlb.invalidate(&inv);
        self.psc.invalidate(&inv);
    }
}
