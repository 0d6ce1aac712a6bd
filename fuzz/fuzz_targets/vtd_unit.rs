//! Programs a VT-d unit with arbitrary register writes, memory contents, invalidation
//! descriptors and translations; see `iommu_emulator::fuzz_support::check_vtd` for the oracles.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iommu_emulator::fuzz_support::check_vtd(data);
});
