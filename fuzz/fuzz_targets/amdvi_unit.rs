//! Programs an AMD-Vi unit with arbitrary register writes, memory contents, commands and
//! translations; see `iommu_emulator::fuzz_support::check_amdvi` for the oracles.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iommu_emulator::fuzz_support::check_amdvi(data);
});
