//! What the embedder chooses about an AMD-Vi unit: the features its Extended Feature Register
//! reports (§3.4.7) and its cache geometry.

use super::layout::Efr;

/// The embedder's choices (see the module notes of [`crate::amdvi`] for what each one
/// enables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmdViConfig {
    /// Host (v1) table levels the unit walks, 4..=6 (EFR.HATS).
    pub host_levels: u8,
    /// Guest (v2) translation (EFR.GTSup).
    pub guest_translation: bool,
    /// Guest table levels, 4 or 5 (EFR.GATS).
    pub guest_levels: u8,
    /// The most GCR3 table levels a DTE may use, 1..=3 (EFR.GLXSup + 1).
    pub gcr3_levels: u8,
    /// PASID width in bits, 1..=20 (EFR.PASmax + 1).
    pub pasid_bits: u8,
    /// No-execute protection in guest tables (EFR.NXSup).
    pub nx: bool,
    /// INVALIDATE_IOMMU_ALL (EFR.IASup).
    pub invalidate_all: bool,
    /// PREFETCH_IOMMU_PAGES (EFR.PreFSup).
    pub prefetch: bool,
    /// Peripheral page requests (EFR.PPRSup): COMPLETE_PPR_REQUEST is accepted; no page
    /// request log is modelled.
    pub ppr: bool,
    /// Reported as the embedder configures, not modelled: x2APIC (EFR.XTSup), guest virtual
    /// APIC (EFR.GASup), hardware error registers (EFR.HESup).
    pub xt: bool,
    /// EFR.GASup (reported only).
    pub ga: bool,
    /// EFR.HESup (reported only).
    pub he: bool,
    /// Output (system physical) address width: host-table and structure addresses at and above
    /// it are reserved.
    pub phys_addr_bits: u8,
    /// Entries of the device-table-entry cache.
    pub dte_cache_entries: usize,
    /// Entries of the GCR3 cache.
    pub gcr3_cache_entries: usize,
    /// Entries of the IOTLB.
    pub iotlb_entries: usize,
    /// Entries of each page-directory cache.
    pub pdc_entries: usize,
    /// Associativity of every cache.
    pub ways: usize,
}

impl Default for AmdViConfig {
    /// A unit like a recent server part: 6-level host tables, guest translation with 4-level
    /// tables, two-level GCR3 tables and 16-bit PASIDs, NX, INVALIDATE_IOMMU_ALL and
    /// prefetch.
    fn default() -> Self {
        Self {
            host_levels: 6,
            guest_translation: true,
            guest_levels: 4,
            gcr3_levels: 2,
            pasid_bits: 16,
            nx: true,
            invalidate_all: true,
            prefetch: true,
            ppr: false,
            xt: false,
            ga: false,
            he: false,
            phys_addr_bits: 52,
            dte_cache_entries: 256,
            gcr3_cache_entries: 256,
            iotlb_entries: 1024,
            pdc_entries: 256,
            ways: 4,
        }
    }
}

/// Why a configuration cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmdViConfigError {
    /// `host_levels` is not 4, 5 or 6.
    #[error("host table levels {0} not in 4..=6 (EFR.HATS)")]
    HostLevels(u8),
    /// `guest_levels` is not 4 or 5.
    #[error("guest table levels {0} not 4 or 5 (EFR.GATS)")]
    GuestLevels(u8),
    /// `gcr3_levels` is not in 1..=3.
    #[error("GCR3 table levels {0} not in 1..=3 (EFR.GLXSup)")]
    Gcr3Levels(u8),
    /// `pasid_bits` is not in 1..=20.
    #[error("PASID width {0} not in 1..=20 (EFR.PASmax)")]
    PasidBits(u8),
    /// `phys_addr_bits` is not in 32..=52.
    #[error("physical address width {0} not in 32..=52")]
    PhysAddrBits(u8),
    /// A cache geometry is impossible.
    #[error("invalid cache geometry: {entries} entries, {ways} ways")]
    CacheGeometry {
        /// Entries asked for.
        entries: usize,
        /// Ways asked for.
        ways: usize,
    },
}

impl AmdViConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), AmdViConfigError> {
        if !(4..=6).contains(&self.host_levels) {
            return Err(AmdViConfigError::HostLevels(self.host_levels));
        }
        if !(4..=5).contains(&self.guest_levels) {
            return Err(AmdViConfigError::GuestLevels(self.guest_levels));
        }
        if !(1..=3).contains(&self.gcr3_levels) {
            return Err(AmdViConfigError::Gcr3Levels(self.gcr3_levels));
        }
        if !(1..=20).contains(&self.pasid_bits) {
            return Err(AmdViConfigError::PasidBits(self.pasid_bits));
        }
        if !(32..=52).contains(&self.phys_addr_bits) {
            return Err(AmdViConfigError::PhysAddrBits(self.phys_addr_bits));
        }
        Ok(())
    }

    /// The Extended Feature Register this configuration reports.
    pub fn efr(&self) -> Efr {
        Efr::new()
            .with_pref_sup(self.prefetch)
            .with_ppr_sup(self.ppr)
            .with_xt_sup(self.xt)
            .with_nx_sup(self.nx)
            .with_gt_sup(self.guest_translation)
            .with_gio_sup(self.guest_translation)
            .with_ia_sup(self.invalidate_all)
            .with_ga_sup(self.ga)
            .with_he_sup(self.he)
            .with_hats(self.host_levels.saturating_sub(4))
            .with_gats(self.guest_levels.saturating_sub(4))
            .with_glx_sup(self.gcr3_levels.saturating_sub(1))
            .with_pas_max(self.pasid_bits.saturating_sub(1))
    }
}
