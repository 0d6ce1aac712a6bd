//! The AMD-Vi unit's caches and how each invalidation command maps onto them (AMD IOMMU spec
//! #48882 rev 3.08, §2.4.2, §2.4.3, §2.4.8).
//!
//! - DTE cache: raw DTEs, tagged by DeviceID and the DTE's DomainID. INVALIDATE_DEVTAB_ENTRY
//!   removes one device's.
//! - GCR3 cache: GCR3 table entries (the guest CR3 of one PASID), tagged by (DomainID, PASID),
//!   each with the GCR3 table root and GLX it was read through. A lookup through a DTE whose
//!   root or GLX differs misses, so a DTE change needs no GCR3 invalidation of its own.
//!   INVALIDATE_IOMMU_PAGES with PDE=1 removes the entries it names (GN=1: one PASID; GN=0:
//!   every PASID of the domain).
//! - IOTLB: final translations, tagged by (DomainID, PASID or none, page, size): v1 walks carry
//!   no PASID, v2 walks (one- or two-dimensional) their PASID.
//! - Page-directory caches: the shared paging-structure caches, one per level; v1 and v2
//!   entries are told apart by the stage in the tag.
//!
//! INVALIDATE_IOMMU_PAGES with GN=0 names host (GPA) addresses. A two-dimensional translation
//! cached under a guest address depends on host entries it cannot be found by, so once the unit
//! has cached one, a GN=0 invalidation also removes the domain's PASID-tagged translations (the
//! spec lets hardware invalidate more than asked).

use std::sync::atomic::{AtomicBool, Ordering};

use iotlb::{Invalidation, PageRange, PasidMatch, SourceSelector, Translation};

use super::config::{AmdViConfig, AmdViConfigError};
use crate::cache::{PagingStructureCaches, TracedCache};
use crate::trace::CacheId;

/// DTE-cache values: the DTE's four qwords.
pub type DteWords = [u64; 4];
/// GCR3-cache values: the GCR3 entry, and the DTE's GCR3 root with GLX in bits 1:0.
pub type Gcr3Words = [u64; 2];

/// The caches of one unit.
#[derive(Debug)]
pub struct AmdViCaches {
    /// DTE cache.
    pub dte: TracedCache<DteWords>,
    /// GCR3 cache.
    pub gcr3: TracedCache<Gcr3Words>,
    /// IOTLB.
    pub iotlb: TracedCache<Translation>,
    /// Page-directory caches.
    pub pdc: PagingStructureCaches,
    /// Whether a two-dimensional translation was ever cached (see the module notes).
    nested_cached: AtomicBool,
}

/// What an INVALIDATE_IOMMU_PAGES command names (§2.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagesInvalidation {
    /// DomainID.
    pub domain: u16,
    /// The PASID, when GN=1.
    pub pasid: Option<u32>,
    /// The address field (bits 63:12).
    pub addr: u64,
    /// S: the address encodes a range.
    pub s: bool,
    /// PDE: page-directory entries (and GCR3 entries) too.
    pub pde: bool,
}

impl AmdViCaches {
    /// Caches with the geometry of `cfg`.
    pub fn new(cfg: &AmdViConfig) -> Result<Self, AmdViConfigError> {
        let err = |e: crate::cache::GeometryError| AmdViConfigError::CacheGeometry {
            entries: e.entries,
            ways: e.ways,
        };
        Ok(Self {
            dte: TracedCache::new(cfg.dte_cache_entries, cfg.ways, CacheId::Context)
                .map_err(err)?,
            gcr3: TracedCache::new(cfg.gcr3_cache_entries, cfg.ways, CacheId::Pasid)
                .map_err(err)?,
            iotlb: TracedCache::new(cfg.iotlb_entries, cfg.ways, CacheId::Iotlb).map_err(err)?,
            pdc: PagingStructureCaches::new(cfg.pdc_entries, cfg.ways).map_err(err)?,
            nested_cached: AtomicBool::new(false),
        })
    }

    /// Notes that a two-dimensional translation may be cached from now on.
    pub fn note_nested(&self) {
        if !self.nested_cached.load(Ordering::Relaxed) {
            self.nested_cached.store(true, Ordering::Release);
        }
    }

    /// INVALIDATE_DEVTAB_ENTRY (§2.4.2).
    pub fn invalidate_dte(&self, device_id: u16) {
        self.dte
            .invalidate(&Invalidation::Source(SourceSelector::exact(device_id)));
    }

    /// INVALIDATE_IOMMU_PAGES (§2.4.3).
    ///
    /// v2 (guest) inputs are sign-extended x86 addresses (§2.2.6), and software names an
    /// upper-half page by that address (Address[63:12], §2.4.3). Their tags keep the low 57
    /// bits ([`crate::xlate::tag_address`]), so the address is reduced the same way before the
    /// S encoding is decoded (bits 63:57 never hold the lowest clear bit of a range the tags
    /// can tell apart). v1 (host) inputs are not sign-extended and a Mode-6 table translates
    /// all 64 bits, so a GN = 0 address above bit 56 is also invalidated as given (the reduced
    /// one then drops more than asked, which §2.4.3 allows).
    pub fn invalidate_pages(&self, p: PagesInvalidation) {
        let pasid = match p.pasid {
            Some(pasid) => PasidMatch::Exactly(Some(pasid)),
            None => PasidMatch::Any,
        };
        let reduced = crate::xlate::tag_address(p.addr);
        self.invalidate_range(p, pasid, reduced);
        if p.pasid.is_none() && reduced != p.addr {
            self.invalidate_range(p, pasid, p.addr);
        }
        if p.pde {
            self.gcr3.invalidate(&match p.pasid {
                Some(pasid) => Invalidation::DomainPasid {
                    domain: p.domain,
                    pasid: Some(pasid),
                },
                None => Invalidation::Domain(p.domain),
            });
        }
        if p.pasid.is_none() && self.nested_cached.load(Ordering::Acquire) {
            // Two-dimensional translations of the domain depend on the host entries named.
            self.iotlb.invalidate(&Invalidation::Domain(p.domain));
        }
    }

    /// The IOTLB entries (and, with PDE, page-directory entries) of `p`'s range at `addr`.
    fn invalidate_range(&self, p: PagesInvalidation, pasid: PasidMatch, addr: u64) {
        let range = PageRange::amd(p.domain, pasid, addr, p.s, p.pde);
        let inv = if range.validate().is_ok() {
            Invalidation::Range(range)
        } else {
            Invalidation::Domain(p.domain)
        };
        self.iotlb.invalidate(&inv);
        if p.pde {
            self.pdc.invalidate(&inv);
        }
    }

    /// A reset: every cache empty, and no two-dimensional translation cached any more (the
    /// mark is cleared before the invalidation, so a walk that set it since is refused its
    /// fill, and one that sets it later sets it again).
    pub fn reset(&self) {
        self.nested_cached.store(false, Ordering::Release);
        self.invalidate_all();
    }

    /// INVALIDATE_IOMMU_ALL (§2.4.8): every cache.
    pub fn invalidate_all(&self) {
        let g = Invalidation::Global;
        self.dte.invalidate(&g);
        self.gcr3.invalidate(&g);
        self.iotlb.invalidate(&g);
        self.pdc.invalidate(&g);
    }
}
