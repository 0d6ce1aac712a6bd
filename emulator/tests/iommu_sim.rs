//! The `iommu-sim` binary as a user runs it: short runs of each subcommand, their JSON, their
//! plots, and the errors bad arguments get.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iommu-sim"))
        .args(args)
        .output()
        .expect("run iommu-sim")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iommu-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn run_reports_a_table_json_and_plots() {
    let table = sim(&["run", "--workload", "storage", "--translations", "20000"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    for row in [
        "IOTLB hit rate",
        "latency p50 / p99 / max",
        "simulator speed",
    ] {
        assert!(text.contains(row), "{text}");
    }
    let dir = scratch("run");
    let out = sim(&[
        "run",
        "--model",
        "amdvi",
        "--workload",
        "nic",
        "--translations",
        "20000",
        "--json",
        "--plot",
        dir.to_str().unwrap(),
    ]);
    let r = json(&out);
    assert_eq!(r["model"], "amdvi");
    assert_eq!(r["translations"], 20000);
    assert_eq!(r["faults"], 0);
    assert!(
        r["engine"]["latency"]["p99"].as_u64().unwrap()
            >= r["engine"]["latency"]["p50"].as_u64().unwrap()
    );
    assert_eq!(
        files(&dir),
        ["cdf.png", "cdf.svg", "occupancy.png", "occupancy.svg"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_times_a_trace_file_and_sweep_runs_every_point() {
    let dir = scratch("replay");
    let trace = dir.join("t.jsonl");
    let mut lines = String::from("# a small trace\n");
    for i in 0..500u64 {
        lines.push_str(&format!(
            "{{\"t\":{},\"source\":32,\"pasid\":null,\"addr\":{},\"len\":64,\"access\":\"write\"}}\n",
            i * 10,
            0x10_0000 + (i % 50) * 4096
        ));
    }
    std::fs::write(&trace, lines).unwrap();
    let r = json(&sim(&["replay", trace.to_str().unwrap(), "--json"]));
    assert_eq!(
        (r["workload"].as_str(), r["translations"].as_u64()),
        (Some("replay"), Some(500))
    );
    assert_eq!(r["faults"], 0, "every page the trace touches is mapped");
    // 50 pages, each touched 10 times: at least 90 % hits with a large enough IOTLB.
    assert!(r["iotlb_hit_rate"].as_f64().unwrap() >= 0.9, "{r}");

    let out = sim(&[
        "sweep",
        "--param",
        "iotlb",
        "--values",
        "16,64,256",
        "--workload",
        "nic",
        "--ring",
        "128",
        "--translations",
        "20000",
        "--json",
        "--plot",
        dir.to_str().unwrap(),
    ]);
    let points = json(&out);
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 3);
    let rates: Vec<f64> = points
        .iter()
        .map(|p| p["report"]["iotlb_hit_rate"].as_f64().unwrap())
        .collect();
    assert!(rates[0] <= rates[1] && rates[1] <= rates[2], "{rates:?}");
    for stem in ["hit_rate", "throughput", "latency"] {
        assert!(dir.join(format!("{stem}.svg")).exists());
        assert!(dir.join(format!("{stem}.png")).exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_get_a_clear_error_and_status_2() {
    for (args, want) in [
        (&["run", "--model", "intel"][..], "unknown model"),
        (&["run", "--workload", "disk"][..], "unknown workload"),
        (&["run", "--page-size", "8k"][..], "give 4k or 2m"),
        (
            &["run", "--workload", "storage", "--ring", "4"][..],
            "--ring do not apply",
        ),
        (&["run", "--preset", "fast"][..], "unknown timing preset"),
        (&["replay", "/no/such/trace"][..], "/no/such/trace"),
        (
            &["sweep", "--param", "walkers", "--values", "two"][..],
            "not a count",
        ),
    ] {
        let out = sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // The parameters print as TOML that loads back.
    let out = sim(&["params", "--preset", "gem5-smmuv3"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    iommu_emulator::timing::TimingParams::from_toml_str(&text).unwrap();
}
