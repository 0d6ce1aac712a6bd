//! Real DMA through the model: the daemon serves a DMA engine over vfio-user beside its
//! virtio-iommu; QEMU attaches it with `vfio-user-pci`; the guest binds it to vfio-pci, maps
//! buffers through VFIO (so the guest's virtio_iommu sends MAP to the daemon) and programs
//! fills, copies and compares between IOVAs. Every descriptor fetch, data access and
//! write-back is a translation by the hardware model. The tests check the bytes in guest
//! memory, the daemon's per-endpoint counters and the translations it made, the faults (in
//! the engine's status and in the guest's kernel log, from the virtio-iommu event queue), and
//! that the engine works again after a guest reboot. Run by `scripts/guest-test`.

use iommu_workspace::guest::endpoint::{
    ENGINE_ID, ENGINE_RID, PAGES, batch_reaches, boot, daemon_with, endpoint, gpas, guest,
};
use iommu_workspace::guest::harness::{GuestEnv, bind_first, env_u64, median};
use serde_json::{Value, json};

#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn dma_engine_through_vtd() {
    dma_engine(&[]);
}

#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn dma_engine_through_amdvi() {
    dma_engine(&["--model", "amdvi"]);
}

#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn dma_engine_through_soft() {
    dma_engine(&["--model", "soft"]);
}

fn dma_engine(model: &[&str]) {
    let env = GuestEnv::provision();
    let bind = bind_first(ENGINE_ID);
    let script = format!(
        "echo AGENT ask what=next\n\
         read -r cmd\n\
         {bind}\
         case \"$cmd\" in\n\
         first) guest-agent dma-engine \"$bdf\" --pages {PAGES} --wait-stdin || exit 1\n\
                touch /tmp/reboot ;;\n\
         second) guest-agent dma-engine \"$bdf\" --pages {PAGES} || exit 1 ;;\n\
         *) exit 3 ;;\n\
         esac\n\
         dmesg | grep -i 'fault from EP' | sed 's/^/GUEST-DMESG /'\n"
    );
    let (dirs, d, mut q) = boot(&env, model, script.clone());

    // First boot. The daemon records every translation the engine asks for until the copy
    // is done, for the simulator to replay.
    q.next("boot");
    q.next("ask");
    let recording = dirs[0].host.join("dma.jsonl");
    let rec = d.ctl(json!({"cmd": "record", "path": recording}));
    assert_eq!(rec["ok"], json!(true), "{rec}");
    q.send_line("first");
    let bound = q.next("bound");
    assert_eq!(bound.get("driver"), Some("vfio-pci"), "{bound:?}");
    let open = q.next("dma-engine-open");
    assert_eq!(open.get_u64("id"), Some(0x444d_4145), "{open:?}");
    assert_eq!(open.get("irq"), Some("msi"), "{open:?}");
    let map = q.next("dma-map");
    let (src_iova, dst_iova) = (
        map.get_u64("src_iova").unwrap(),
        map.get_u64("dst_iova").unwrap(),
    );
    let (src_gpas, dst_gpas) = (gpas(&map, "src_gpas"), gpas(&map, "dst_gpas"));
    assert_eq!(src_gpas.len() as u64, PAGES);

    // Fill, copy, compare: the bytes are in the guest's buffers, the MSI arrived.
    let copy = q.next("dma-batch");
    assert_eq!(copy.get("name"), Some("copy"));
    assert_eq!(copy.get("results"), Some("1,1,1"), "{copy:?}");
    assert_eq!(copy.get("src_ok"), Some("yes"), "{copy:?}");
    assert_eq!(copy.get("dst_ok"), Some("yes"), "{copy:?}");
    assert_eq!(copy.get("irq"), Some("yes"), "{copy:?}");
    // While the guest waits after the copy: the daemon counted the engine's work, and the
    // translations it made for the batch reached exactly the frames the guest's pagemap
    // reported, page by page.
    q.next("dma-wait");
    let stopped = d.ctl(json!({"cmd": "record"}))["stopped"].clone();
    let e = endpoint(&d);
    assert_eq!(e["descriptors"], json!(3), "{e}");
    // The timing model priced every translation the engine's DMA made.
    let cycles = &e["cycles"];
    assert_eq!(cycles["count"], e["translations"], "{e}");
    let (p50, p99, max) = (
        cycles["p50"].as_u64().unwrap(),
        cycles["p99"].as_u64().unwrap(),
        cycles["max"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{cycles}");
    eprintln!("the engine's translation cycles: {cycles}");
    // The recording replays in the simulator: every request it holds translated (the
    // simulator maps what the trace touches), none faulting.
    replay_recording(&recording, &stopped, model);
    assert_eq!(
        e["bytes"],
        json!(2 * PAGES * 4096),
        "fill and copy wrote both buffers: {e}"
    );
    assert_eq!(e["faults"], json!(0), "{e}");
    assert_eq!(e["interrupts"], json!(1), "{e}");
    let last: Vec<Value> = e["last_batch"].as_array().unwrap().clone();
    for (base, frames) in [(src_iova, &src_gpas), (dst_iova, &dst_gpas)] {
        for (i, gpa) in frames.iter().enumerate() {
            let iova = base + i as u64 * 4096;
            // Fill writes src, copy reads src and writes dst, compare reads both: every
            // page of both buffers is read and written, by a translation of its own or by
            // one that covers it (the guest's VFIO maps physically contiguous pages in one
            // MAP, which AMD-Vi realises as one larger page).
            for access in ["read", "write"] {
                assert!(
                    batch_reaches(&last, iova, *gpa, Some(access)),
                    "no {access} of IOVA {iova:#x} reaching frame {gpa:#x}: {last:?}"
                );
            }
        }
    }
    let stats = d.ctl(json!({"cmd": "stats"}));
    assert!(
        stats["core"]["translations"].as_u64() >= e["translations"].as_u64(),
        "{stats}"
    );
    q.send_line("");

    let mis = q.next("dma-batch");
    assert_eq!(mis.get("name"), Some("miscompare"));
    assert_eq!(mis.get("results"), Some("2"), "{mis:?}");

    // A copy to an unmapped IOVA faults in the IOMMU.
    let fault = q.next("dma-fault");
    assert_eq!(fault.get("name"), Some("unmapped"));
    assert_eq!(fault.get_u64("code"), Some(3), "DST_FAULT: {fault:?}");
    assert_eq!(fault.get_u64("result"), Some(0x83), "{fault:?}");
    let hole = fault.get_u64("error_addr").unwrap();

    // After UNMAP_DMA the old IOVA faults.
    let after = q.next("dma-fault");
    assert_eq!(after.get("name"), Some("after-unmap"));
    assert_eq!(after.get_u64("code"), Some(3), "{after:?}");
    assert_eq!(after.get_u64("error_addr"), Some(dst_iova), "{after:?}");
    q.next("dma-engine-done");
    let done = q.next("script-done");
    assert_eq!(done.get_u64("rc"), Some(0), "{done:?}");
    let first_log = q.log();
    for iova in [hole, dst_iova] {
        let line = format!("page fault from EP {ENGINE_RID} at {iova:#x}");
        assert!(
            first_log
                .lines()
                .any(|l| l.starts_with("GUEST-DMESG") && l.contains(&line)),
            "the guest's virtio_iommu did not log `{line}`:\n{first_log}"
        );
    }
    let before = endpoint(&d);
    assert_eq!(before["faults"], json!(2), "{before}");
    assert_eq!(before["errors"], json!(2), "{before}");
    assert_eq!(before["last_error"]["name"], json!("dst_fault"), "{before}");
    assert_eq!(before["last_error"]["iova"], json!(dst_iova), "{before}");

    // Second boot, after the reset: the engine works again.
    q.next("boot");
    q.next("ask");
    q.send_line("second");
    let copy = q.next("dma-batch");
    assert_eq!(copy.get("results"), Some("1,1,1"), "after reboot: {copy:?}");
    assert_eq!(copy.get("dst_ok"), Some("yes"), "after reboot: {copy:?}");
    q.next("dma-engine-done");
    q.finish();
    let after = endpoint(&d);
    assert!(
        after["descriptors"].as_u64() > before["descriptors"].as_u64(),
        "{before} -> {after}"
    );

    // QEMU exited; the daemon still serves, and a new QEMU's guest uses the engine again.
    let (_run, mut q) = guest(&env, &dirs[0], script);
    q.next("ask");
    q.send_line("second");
    let copy = q.next("dma-batch");
    assert_eq!(copy.get("results"), Some("1,1,1"), "new QEMU: {copy:?}");
    assert_eq!(copy.get("dst_ok"), Some("yes"), "new QEMU: {copy:?}");
    q.finish();
    let again = endpoint(&d);
    assert!(again["connections"].as_u64().unwrap() >= 1, "{again}");
    assert!(again["descriptors"].as_u64() > after["descriptors"].as_u64());
}

/// The guest benchmark of real DMA: one-page COPY doorbells per second, issued by the guest
/// through its VFIO and polled to completion, with the engine's DMA translated by the VT-d and
/// AMD-Vi models against the daemon in bypass (`iommu=bypass`: the same engine, its DMA not
/// crossing the IOMMU). The guest does the same work in every setting: it maps its buffers
/// through VFIO (so through the virtio-iommu) at IOVAs equal to their guest-physical
/// addresses (`dma-engine --identity`), so the descriptors are right whether or not the daemon
/// translates them. `GUEST_BENCH_ROUNDS` (3) paired rounds of `GUEST_BENCH_DMA_COUNT` (5000)
/// doorbells; every run is printed, then each model's median and the median per-round ratio
/// to bypass. No timing assertion.
#[test]
#[ignore = "boots three guests per round: run by scripts/guest-test"]
fn dma_engine_guest_bench() {
    let count = env_u64("GUEST_BENCH_DMA_COUNT", 5000);
    let rounds = env_u64("GUEST_BENCH_ROUNDS", 3).max(1) as usize;
    let env = GuestEnv::provision();
    let script = format!(
        "{}guest-agent dma-engine \"$bdf\" --identity --pages 1 --count {count} || exit 1\n",
        bind_first(ENGINE_ID)
    );
    let run = |extra: &[&str], engine_opts: &str| -> f64 {
        let (dev, d) = daemon_with(&env, extra, engine_opts);
        let (_run, mut q) = guest(&env, &dev, script.clone());
        let open = q.next("dma-engine-open");
        let copy = q.next("dma-batch");
        let bench = q.next("dma-bench");
        q.finish();
        assert_eq!(open.get("mode"), Some("identity"), "{open:?}");
        assert_eq!(copy.get("dst_ok"), Some("yes"), "{copy:?}");
        assert_eq!(bench.get_u64("count"), Some(count), "{bench:?}");
        let e = endpoint(&d);
        assert!(e["descriptors"].as_u64().unwrap() >= count, "{e}");
        assert_eq!(e["faults"], json!(0), "{e}");
        let crossed = d.ctl(json!({"cmd": "stats"}))["core"]["translations"]
            .as_u64()
            .unwrap();
        if engine_opts.is_empty() {
            assert!(
                crossed >= count,
                "the doorbells' DMA crossed the model: {crossed}"
            );
        } else {
            assert_eq!(e["iommu"], json!("bypass"), "{e}");
        }
        bench.get_f64("ops_per_sec").expect("ops_per_sec")
    };
    let settings: [(&str, &[&str], &str); 3] = [
        ("bypass", &[], ",iommu=bypass"),
        ("vtd", &[], ""),
        ("amdvi", &["--model", "amdvi"], ""),
    ];
    let mut rates = vec![Vec::new(); settings.len()];
    for round in 1..=rounds {
        let mut line = format!("BENCH dma round {round}:");
        for (i, (name, extra, opts)) in settings.iter().enumerate() {
            let r = run(extra, opts);
            line += &format!(" {name} {r:.0}");
            rates[i].push(r);
        }
        println!("{line} ops/s");
    }
    for (i, (name, _, _)) in settings.iter().enumerate().skip(1) {
        let ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(m, b)| m / b).collect();
        println!(
            "BENCH dma {name}: median {:.0} ops/s, bypass {:.0} ops/s, median per-round ratio {:.3}",
            median(&rates[i]),
            median(&rates[0]),
            median(&ratios)
        );
    }
}

/// Replays the daemon's recording in the simulator, through the model the daemon ran.
fn replay_recording(path: &std::path::Path, stopped: &Value, model: &[&str]) {
    use iommu_emulator::sim::platform::SimModel;
    use iommu_emulator::sim::run::{RunConfig, Source, run};
    use iommu_emulator::sim::trace_file;
    use iommu_emulator::timing::Preset;
    let records = trace_file::read(std::io::BufReader::new(
        std::fs::File::open(path).expect("the recording"),
    ))
    .expect("the recording parses");
    assert_eq!(
        Some(records.len() as u64),
        stopped["records"].as_u64(),
        "{stopped}"
    );
    assert!(records.iter().all(|r| u64::from(r.source) == ENGINE_RID));
    let (sim_model, preset) = match model {
        [_, "amdvi", ..] => (SimModel::Amdvi, Preset::AmdviServer),
        _ => (SimModel::VtdLegacy, Preset::VtdServer),
    };
    let cfg = RunConfig {
        model: sim_model,
        params: preset.params(),
        page_size: 4096,
        seed: 1,
        tlp_bytes: 256,
        translations: u64::MAX,
        remap_every: 0,
        inflight: 0,
    };
    let r = run(&cfg, &Source::Trace(records.clone()), |_| {}).expect("the replay runs");
    assert_eq!(r.translations, records.len() as u64);
    assert_eq!(r.faults, 0, "the replay maps what the trace touches");
    eprintln!(
        "replayed {} recorded translations: hit rate {:.3}, latency p50 {} p99 {} cycles",
        r.translations, r.iotlb_hit_rate, r.engine.latency.p50, r.engine.latency.p99
    );
}
