//! Replays the checked-in corpora of the unit and request fuzz targets
//! (`fuzz/corpus/amdvi_unit/`, `vtd_unit/`, `virtio_requests/`) through the same oracles the
//! fuzzers run (`iommu_emulator::fuzz_support::check_amdvi`, `check_vtd`,
//! `vhost_device_iommu::fuzz_support::check_requests`), so the corpora are exercised by
//! `cargo test` without cargo-fuzz or a nightly toolchain. Each corpus holds hand-made seeds
//! (`seed_*`), inputs that once broke an oracle (`regress_*`) and the fuzzer's
//! coverage-minimised finds.

use std::path::PathBuf;

use iommu_emulator::fuzz_support::{check_amdvi, check_vtd};
use vhost_device_iommu::fuzz_support::check_requests;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        check(&data);
        n += 1;
    }
    assert!(n >= 5, "{target}: the corpus has only {n} inputs");
}

#[test]
fn the_amdvi_corpus_replays_without_breaking_an_oracle() {
    replay("amdvi_unit", check_amdvi);
}

#[test]
fn the_vtd_corpus_replays_without_breaking_an_oracle() {
    replay("vtd_unit", check_vtd);
}

#[test]
fn the_virtio_request_corpus_replays_without_breaking_an_oracle() {
    replay("virtio_requests", check_requests);
}
