//! Loads arbitrary timing-parameter files (raw TOML, or a preset the input edits), then prices
//! fixed traces and builds the units with what loads; see
//! `iommu_emulator::fuzz_support::check_timing_params` for the oracles.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iommu_emulator::fuzz_support::check_timing_params(data);
});
