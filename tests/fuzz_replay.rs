//! Replays the checked-in corpora of the unit, request and input fuzz targets
//! (`fuzz/corpus/amdvi_unit/`, `vtd_unit/`, `virtio_requests/`, `dma_engine/`,
//! `control_lines/`, `vfio_messages/`, `trace_file/`, `timing_params/`) through the same
//! oracles the fuzzers run (`iommu_emulator::fuzz_support::check_amdvi`, `check_vtd`,
//! `check_trace_file`, `check_timing_params`, `vhost_device_iommu::fuzz_support::check_requests`,
//! `check_dma_engine`, `check_control`, `check_vfio_messages`), so the corpora are exercised by
//! `cargo test` without cargo-fuzz or a nightly toolchain. Each corpus holds hand-made seeds
//! (`seed_*`), inputs that once broke an oracle (`regress_*`) and the fuzzer's
//! coverage-minimised finds.

use std::path::PathBuf;

use iommu_emulator::fuzz_support::{check_amdvi, check_timing_params, check_trace_file, check_vtd};
use vhost_device_iommu::fuzz_support::{
    ControlSummary, VfioSummary, check_control, check_dma_engine, check_requests,
    check_vfio_messages,
};

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

#[test]
fn the_control_lines_corpus_replays_without_breaking_an_oracle() {
    replay("control_lines", |d| {
        check_control(d);
    });
}

#[test]
fn the_vfio_messages_corpus_replays_without_breaking_an_oracle() {
    replay("vfio_messages", |d| {
        check_vfio_messages(d);
    });
}

#[test]
fn the_trace_file_corpus_replays_without_breaking_an_oracle() {
    replay("trace_file", check_trace_file);
}

#[test]
fn the_timing_params_corpus_replays_without_breaking_an_oracle() {
    replay("timing_params", check_timing_params);
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

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(path).unwrap()
}

/// The control-line seeds reach what they were written for: answers and refusals, and
/// recordings read back with the endpoint's requests in them.
#[test]
fn the_control_lines_seeds_answer_refuse_and_record() {
    let s = |name| check_control(&seed("control_lines", name));
    let c = |accepted, refused, recordings, records| ControlSummary {
        accepted,
        refused,
        recordings,
        records,
    };
    assert_eq!(s("seed_virtio_timed_reads"), c(5, 0, 0, 0));
    assert_eq!(s("seed_virtio_scalable_pasid"), c(2, 0, 0, 0));
    // Under the register front, translate and domains are refused.
    assert_eq!(s("seed_front_refusals"), c(2, 2, 0, 0));
    assert_eq!(s("seed_raw_and_bad"), c(0, 3, 0, 0));
    assert_eq!(s("seed_near_valid").refused, 3);
    assert_eq!(s("seed_record_dma_stop"), c(2, 0, 1, 3));
    assert_eq!(s("seed_record_to_two_files"), c(3, 0, 2, 3));
    // A file in a missing directory, and the scratch directory itself: refused.
    assert_eq!(s("seed_record_refused"), c(2, 2, 1, 2));
    assert_eq!(s("regress_record_the_same_file_again"), c(3, 0, 1, 1));
}

/// The vfio-user seeds reach what they were written for.
#[test]
fn the_vfio_messages_seeds_are_answered_refused_and_cut_short() {
    let s = |name| check_vfio_messages(&seed("vfio_messages", name));
    let v = |replies, errors, malformed| VfioSummary {
        replies,
        errors,
        malformed,
    };
    assert_eq!(s("seed_handshake_map_read_reset"), v(10, 0, false));
    // An unknown command, a short DMA_MAP, a read larger than BAR0 and a DMA_WRITE are
    // refused; a no-reply command and a client's reply get no answer.
    assert_eq!(s("seed_refusals"), v(5, 4, false));
    assert_eq!(s("seed_malformed_size"), v(1, 0, true));
    assert_eq!(s("seed_truncated_message"), v(1, 0, true));
    assert_eq!(s("seed_set_irqs_eventfd"), v(3, 0, false));
}
