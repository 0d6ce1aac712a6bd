//! Reads arbitrary bytes as a trace file (`iommu-sim replay`'s input, the daemon's `record`
//! output); see `iommu_emulator::fuzz_support::check_trace_file` for the oracles.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iommu_emulator::fuzz_support::check_trace_file(data);
});
