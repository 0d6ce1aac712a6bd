//! Replays the checked-in corpora of the unit and request fuzz targets
//! (`fuzz/corpus/amdvi_unit/`, `vtd_unit/`, `virtio_requests/`, `dma_engine/`) through the same
//! oracles the fuzzers run (`iommu_emulator::fuzz_support::check_amdvi`, `check_vtd`,
//! `vhost_device_iommu::fuzz_support::check_requests`, `check_dma_engine`), so the corpora are exercised by
//! `cargo test` without cargo-fuzz or a nightly toolchain. Each corpus holds hand-made seeds
//! (`seed_*`), inputs that once broke an oracle (`regress_*`) and the fuzzer's
//! coverage-minimised finds.

use std::path::PathBuf;

use iommu_emulator::fuzz_support::{check_amdvi, check_vtd};
use vhost_device_iommu::fuzz_support::{check_dma_engine, check_requests};

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

#[test]
fn the_dma_engine_corpus_replays_without_breaking_an_oracle() {
    replay("dma_engine", |d| {
        check_dma_engine(d);
    });
}

/// The hand-made seeds reach what they were written for (so the fuzzer starts from inputs
/// that run batches to their end and to their errors, not from rejected programming).
#[test]
fn the_dma_engine_seeds_complete_and_fail_batches() {
    use std::sync::atomic::Ordering;
    let seed = |name: &str| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/dma_engine")
            .join(name);
        check_dma_engine(&std::fs::read(path).unwrap())
    };
    let s = seed("seed_fill_copy_compare");
    assert_eq!(s.descriptors.load(Ordering::Relaxed), 3);
    assert_eq!(s.bytes.load(Ordering::Relaxed), 0x1000);
    assert_eq!(s.errors.load(Ordering::Relaxed), 0);
    let s = seed("seed_write_to_readonly_page");
    assert_eq!(s.errors.load(Ordering::Relaxed), 2);
    assert_eq!(s.faults.load(Ordering::Relaxed), 2);
    let s = seed("seed_ram_unmapped");
    assert_eq!(s.not_ram.load(Ordering::Relaxed), 1);
    assert_eq!(s.descriptors.load(Ordering::Relaxed), 1, "after the remap");
    // Without Bus Master Enable no DMA is issued; with it, a PASID-tagged fill reaches the
    // VT-d model, which faults it (legacy mode translates no PASID).
    let s = seed("seed_config_bme_pasid");
    assert_eq!(s.errors.load(Ordering::Relaxed), 2);
    assert_eq!(
        s.faults.load(Ordering::Relaxed),
        1,
        "the PASID fill faulted"
    );
    assert_eq!(s.descriptors.load(Ordering::Relaxed), 0);
}
