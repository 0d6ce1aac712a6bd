//! Real-guest end-to-end tests against the `vhost-device-iommu` daemon: the same scenarios as
//! `tests/guest_qemu.rs` (`tests/guest/scenarios.rs`), with QEMU's vhost-user front end in
//! place of its own virtio-iommu, and each checked against what the daemon reports on its
//! control socket. Run by `scripts/guest-test` (they need root, the provisioned environment and
//! the daemon binary, and boot guests): `cargo test --test guest_daemon -- --ignored
//! --test-threads=1`.

use iommu_workspace::guest::daemon::{ok_count, rid_of, start_with};
use iommu_workspace::guest::harness::{GuestEnv, env_u64, median};
use iommu_workspace::guest::scenarios::{Front, PROBE_IOVA};
use iommu_workspace::guest::{daemon, harness, scenarios};
use serde_json::{Value, json};
use std::cell::RefCell;

/// 1 (probe) and 3 (translated): the guest's virtio_iommu binds to the daemon, negotiates
/// MAP_UNMAP and PROBE, reads the daemon's config (a non-default page-size mask and input
/// range, which reach the guest's driver and VFIO), probes and attaches its endpoints; edu,
/// bound to vfio-pci, gets a VFIO mapping whose IOVAs the daemon translates to exactly the
/// guest frames the agent read from pagemap; after UNMAP_DMA the same translation faults.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_probe_and_translated_vfio_map() {
    probe_and_translated(&[]);
}

/// The same with the daemon's AMD-Vi model (a device table, v1 tables and the command buffer).
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_amdvi_probe_and_translated_vfio_map() {
    probe_and_translated(&["--model", "amdvi"]);
}

/// The same with the daemon's `soft` model (mapping trees, no hardware structures), which
/// must give the guest the same device.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_soft_model_probe_and_translated_vfio_map() {
    probe_and_translated(&["--model", "soft"]);
}

fn probe_and_translated(model: &[&str]) {
    let env = GuestEnv::provision();
    let mut args = vec!["--page-size-mask", "0x201000", "--input-bits", "40"];
    args.extend_from_slice(model);
    let (_dev, front, d) = start_with(&env, &args);
    let snapshot = RefCell::new(Vec::new());
    let r = scenarios::probe_and_vfio_map(
        &env,
        &front,
        |map, gpas| {
            let ep = rid_of(map);
            for (i, gpa) in gpas.iter().enumerate() {
                let iova = PROBE_IOVA + i as u64 * 4096;
                let t = d.translate(ep, iova + 0x123, "write");
                assert_eq!(t["fault"], Value::Null, "IOVA {iova:#x}: {t}");
                assert_eq!(
                    t["translation"]["phys"],
                    json!(gpa + 0x123),
                    "IOVA {iova:#x} of endpoint {ep:#x} does not reach guest frame {gpa:#x}: {t}"
                );
            }
            *snapshot.borrow_mut() = d.domains();
        },
        |unmap| {
            let ep = rid_of(unmap);
            let t = d.translate(ep, PROBE_IOVA, "read");
            assert_eq!(
                t["translation"],
                Value::Null,
                "still mapped after UNMAP_DMA: {t}"
            );
            assert!(!t["fault"].is_null(), "{t}");
        },
    );
    eprintln!("daemon translated {:#x}.. to {:#x?}", PROBE_IOVA, r.gpas);

    // Features the driver negotiated with the daemon.
    let vi = r
        .reports
        .iter()
        .find(|r| r.event == "virtio-iommu")
        .expect("virtio_iommu did not bind");
    let names: Vec<&str> = vi.get("names").unwrap().split(',').collect();
    for f in ["MAP_UNMAP", "PROBE", "VERSION_1"] {
        assert!(names.contains(&f), "{f} not negotiated: {vi:?}");
    }
    assert_eq!(r.iommu.to_string(), scenarios::VHOST_USER_IOMMU_ADDR);
    // The config space the daemon serves (virtio 1.3 §5.13.4: page_size_mask, input_range).
    assert_eq!(r.map.get_u64("pgsizes"), Some(0x20_1000), "{:?}", r.map);
    assert!(
        r.log
            .contains("virtio_iommu virtio0: input address: 40 bits"),
        "the driver did not read the 40-bit input range"
    );
    assert!(
        r.log.contains("virtio_iommu virtio0: page mask: 0x201000"),
        "the driver did not read the page-size mask"
    );

    // While the mapping was live, every endpoint the guest probed sat in exactly one daemon
    // domain, and edu's domain held the mapped range.
    let domains = snapshot.into_inner();
    let edu = r.endpoint.rid();
    for ep in r.reports.iter().filter(|r| r.event == "endpoint") {
        let rid = rid_of(ep);
        let n = domains
            .iter()
            .filter(|d| d["endpoints"].as_array().unwrap().contains(&json!(rid)))
            .count();
        assert_eq!(n, 1, "endpoint {rid:#x} in {n} domains: {domains:?}");
    }
    let edu_dom = domains
        .iter()
        .find(|d| d["endpoints"].as_array().unwrap().contains(&json!(edu)))
        .unwrap();
    assert!(
        edu_dom["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["virt_start"] == json!(PROBE_IOVA)),
        "{edu_dom}"
    );
    let stats = d.ctl(json!({"cmd": "stats"}));
    let probed = r.reports.iter().filter(|r| r.event == "endpoint").count() as u64;
    assert!(
        ok_count(&stats, "probe") >= probed,
        "fewer PROBE requests answered than the {probed} endpoints the guest has: {stats}"
    );
    assert!(
        ok_count(&stats, "attach") > 0,
        "no ATTACH answered: {stats}"
    );
}

/// 2 (identity): with `iommu.passthrough=1` the virtio-blk endpoint attaches with bypass and
/// the guest reads the test's disk image intact.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_identity_virtio_blk() {
    identity_virtio_blk(&[]);
}

/// The same with the AMD-Vi model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_amdvi_identity_virtio_blk() {
    identity_virtio_blk(&["--model", "amdvi"]);
}

/// The same with the `soft` model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_soft_model_identity_virtio_blk() {
    identity_virtio_blk(&["--model", "soft"]);
}

fn identity_virtio_blk(model: &[&str]) {
    let env = GuestEnv::provision();
    let (_dev, front, d) = start_with(&env, model);
    let (blk, _) = scenarios::identity_virtio_blk(&env, &front, |disk| {
        let ep = rid_of(disk);
        let dom = d
            .domain_of(ep)
            .unwrap_or_else(|| panic!("virtio-blk {ep:#x} is in no daemon domain"));
        assert_eq!(dom["kind"], json!("bypass"), "{dom}");
        // A bypass domain passes DMA through untranslated.
        let t = d.translate(ep, 0x1234_5000, "read");
        assert_eq!(t["translation"]["phys"], json!(0x1234_5000u64), "{t}");
    });
    let stats = d.ctl(json!({"cmd": "stats"}));
    assert!(
        ok_count(&stats, "attach") > 0,
        "no ATTACH answered: {stats}"
    );
    assert_eq!(
        ok_count(&stats, "map"),
        0,
        "identity domains need no MAP: {stats}"
    );
    eprintln!("virtio-blk {blk} read its image through a bypass domain of the daemon");
}

/// 4 (reboot and detach): unbinding edu moves it back to its default domain in the daemon,
/// with no mapping left; the reboot resets the device, and after the second probe every
/// endpoint is attached exactly once again.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_reboot_and_detach() {
    reboot_and_detach(&[]);
}

/// The same with the AMD-Vi model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_amdvi_reboot_and_detach() {
    reboot_and_detach(&["--model", "amdvi"]);
}

/// The same with the `soft` model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_soft_model_reboot_and_detach() {
    reboot_and_detach(&["--model", "soft"]);
}

fn reboot_and_detach(model: &[&str]) {
    let env = GuestEnv::provision();
    let (_dev, front, d) = start_with(&env, model);
    let edu = RefCell::new(None);
    scenarios::reboot_and_detach(
        &env,
        &front,
        |released| {
            let ep = rid_of(released);
            *edu.borrow_mut() = Some(ep);
            let dom = d
                .domain_of(ep)
                .unwrap_or_else(|| panic!("endpoint {ep:#x} left in no domain after unbind"));
            assert_eq!(dom["kind"], json!("paging"), "{dom}");
            assert!(
                dom["mappings"].as_array().unwrap().is_empty(),
                "VFIO mappings survived the unbind: {dom}"
            );
            let t = d.translate(ep, scenarios::DEFAULT_IOVA, "read");
            assert!(!t["fault"].is_null(), "{t}");
        },
        |second_boot| {
            // The reset dropped the first boot's VFIO mapping with its domain.
            let ep = edu.borrow().expect("the detach hook ran first");
            let t = d.translate(ep, scenarios::DEFAULT_IOVA, "read");
            assert!(
                !t["fault"].is_null(),
                "first boot's mapping survived the reset: {t}"
            );
            // After the reset and the second probe: the guest's endpoints, each in one domain.
            for ep in second_boot.iter().filter(|r| r.event == "endpoint") {
                let rid = rid_of(ep);
                assert!(
                    d.domain_of(rid).is_some(),
                    "endpoint {rid:#x} not attached after the reboot"
                );
            }
        },
    );
    assert!(edu.into_inner().is_some());
}

/// A VFIO mapping held while the guest reboots with `reboot -f` (nothing unmapped, nothing
/// unbound): QEMU's front end signals the virtio reset only by stopping the rings and starting
/// them again at base 0, and the daemon must reset the device on that alone. After the second
/// boot no endpoint is attached that this boot did not attach, no first-boot mapping
/// translates, and the second boot's MAP at the same IOVA succeeds and reaches its own page.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_reboot_with_a_vfio_mapping_held() {
    reboot_with_mapping_held(&[]);
}

/// The same with the AMD-Vi model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_amdvi_reboot_with_a_vfio_mapping_held() {
    reboot_with_mapping_held(&["--model", "amdvi"]);
}

/// The same with the `soft` model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_soft_model_reboot_with_a_vfio_mapping_held() {
    reboot_with_mapping_held(&["--model", "soft"]);
}

fn reboot_with_mapping_held(model: &[&str]) {
    let env = GuestEnv::provision();
    let (_dev, front, d) = start_with(&env, model);
    let edu = RefCell::new(0u16);
    let first_gpa = RefCell::new(0u64);
    let attaches_before = RefCell::new(0u64);
    let iova = scenarios::DEFAULT_IOVA;
    let r = scenarios::reboot_with_mapping_held(
        &env,
        &front,
        |map, gpa| {
            let ep = rid_of(map);
            *edu.borrow_mut() = ep;
            *first_gpa.borrow_mut() = gpa;
            let t = d.translate(ep, iova, "read");
            assert_eq!(t["translation"]["phys"], json!(gpa), "{t}");
            *attaches_before.borrow_mut() = ok_count(&d.ctl(json!({"cmd": "stats"})), "attach");
        },
        |second_boot| {
            let (ep, old) = (*edu.borrow(), *first_gpa.borrow());
            let stats = d.ctl(json!({"cmd": "stats"}));
            assert_eq!(
                stats["requests"]["device_resets"],
                json!(1),
                "the reboot was not a device reset: {stats}"
            );
            // Every attached endpoint is one this boot probed and attached since the reset.
            let probed: Vec<u16> = second_boot
                .iter()
                .filter(|r| r.event == "endpoint")
                .map(rid_of)
                .collect();
            assert!(probed.contains(&ep), "edu not probed on the second boot");
            let domains = d.domains();
            let attached: Vec<u16> = domains
                .iter()
                .flat_map(|d| d["endpoints"].as_array().unwrap().clone())
                .map(|e| e.as_u64().unwrap() as u16)
                .collect();
            for a in &attached {
                assert!(
                    probed.contains(a),
                    "endpoint {a:#x} attached, but not by the second boot: {domains:?}"
                );
            }
            let attaches = ok_count(&stats, "attach") - *attaches_before.borrow();
            assert!(
                attaches >= attached.len() as u64,
                "{} endpoints attached with only {attaches} ATTACHes since the reset",
                attached.len()
            );
            // No first-boot mapping is left anywhere, and edu's old IOVA faults.
            for dom in &domains {
                for m in dom["mappings"].as_array().unwrap() {
                    assert_ne!(
                        (&m["virt_start"], &m["phys_start"]),
                        (&json!(iova), &json!(old)),
                        "the first boot's mapping survived the reboot: {dom}"
                    );
                }
            }
            let t = d.translate(ep, iova, "read");
            assert!(
                t["translation"].is_null() && !t["fault"].is_null(),
                "the first boot's IOVA still translates after the reboot: {t}"
            );
        },
        |map, gpa| {
            let ep = rid_of(map);
            let t = d.translate(ep, iova + 0x10, "write");
            assert_eq!(t["translation"]["phys"], json!(gpa + 0x10), "{t}");
            let dom = d.domain_of(ep).expect("edu in no domain");
            let maps = dom["mappings"].as_array().unwrap();
            assert_eq!(
                maps.len(),
                1,
                "the VFIO domain holds more than its own map: {dom}"
            );
            assert_eq!(maps[0]["phys_start"], json!(gpa), "{dom}");
            let stats = d.ctl(json!({"cmd": "stats"}));
            let maps = &stats["requests"]["by_type"]["map"];
            assert_eq!(
                maps.as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>()),
                Some(vec!["OK".to_string()]),
                "a MAP was refused: {stats}"
            );
        },
    );
    eprintln!(
        "reboot with a held mapping: edu {:#x}, first boot's frame {:#x}, second boot's {:#x}",
        *edu.borrow(),
        r.first_gpa,
        r.second_gpa
    );
}

/// Side by side: the guest benchmark (VFIO MAP_DMA/UNMAP_DMA pairs per second) against QEMU's
/// own virtio-iommu-pci and against the daemon on the VT-d and AMD-Vi models, same guest,
/// kernel and agent. The figure is noisy on a shared machine, so the fronts are run in
/// `GUEST_BENCH_ROUNDS` (5) paired rounds, each booting a guest per front back to back; every
/// run is printed, then each front's median and the median of the per-round ratios. No timing
/// assertion.
#[test]
#[ignore = "boots three guests per round: run by scripts/guest-test"]
fn side_by_side_vfio_bench() {
    let count = env_u64("GUEST_BENCH_COUNT", 5000);
    let rounds = env_u64("GUEST_BENCH_ROUNDS", 5).max(1) as usize;
    let env = GuestEnv::provision();
    let models = ["vtd", "amdvi"];
    // Extra daemon arguments to compare settings (`--request-poll-us 0`), space-separated.
    let extra = std::env::var("GUEST_BENCH_DAEMON_ARGS").unwrap_or_default();
    // rates[0] is QEMU's, rates[1 + i] the daemon's on models[i]; one entry per round.
    let mut rates = vec![Vec::new(); 1 + models.len()];
    for round in 1..=rounds {
        let qemu = scenarios::vfio_bench(&env, &Front::Qemu, count, 1)[0];
        let mut line = format!("BENCH round {round}: qemu {qemu:.0}");
        rates[0].push(qemu);
        for (i, model) in models.iter().enumerate() {
            let mut args = vec!["--model", model];
            args.extend(extra.split_whitespace());
            let (_dev, front, d) = start_with(&env, &args);
            let ours = scenarios::vfio_bench(&env, &front, count, 1)[0];
            let stats = d.ctl(json!({"cmd": "stats"}));
            assert!(
                ok_count(&stats, "map") >= count,
                "the daemon ({model}) did not see the maps: {stats}"
            );
            line += &format!(", {model} {ours:.0} ({:.2})", ours / qemu);
            rates[1 + i].push(ours);
        }
        eprintln!("{line}");
    }
    let mut line = format!(
        "BENCH vfio map+unmap pairs/s, median of {rounds} paired rounds x {count}: \
         qemu virtio-iommu-pci {:.0}",
        median(&rates[0])
    );
    for (i, model) in models.iter().enumerate() {
        let ratios: Vec<f64> = rates[1 + i]
            .iter()
            .zip(&rates[0])
            .map(|(o, q)| o / q)
            .collect();
        line += &format!(
            ", vhost-device-iommu --model {model} {:.0} (median ratio daemon/qemu {:.2})",
            median(&rates[1 + i]),
            median(&ratios)
        );
    }
    eprintln!("{line}");
}

/// The VIOT table decides which endpoints the guest puts behind the IOMMU: with a table whose
/// only range is 00:00.0-00:02.7, the ICH9 functions at 00:1f.x stay outside (no IOMMU group,
/// never attached in the daemon), while edu at 00:01.0 is translated as before.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_viot_ranges_decide_the_endpoints() {
    viot_ranges_decide_the_endpoints(&[]);
}

/// The same with the AMD-Vi model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_amdvi_viot_ranges_decide_the_endpoints() {
    viot_ranges_decide_the_endpoints(&["--model", "amdvi"]);
}

/// The same with the `soft` model.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_soft_model_viot_ranges_decide_the_endpoints() {
    viot_ranges_decide_the_endpoints(&["--model", "soft"]);
}

fn viot_ranges_decide_the_endpoints(model: &[&str]) {
    use vhost_device_iommu::viot::EndpointRange;
    let env = GuestEnv::provision();
    let dev = harness::RunDir::new(&env);
    let range: EndpointRange = "00:00.0-00:02.7".parse().unwrap();
    let (front, sock) = Front::vhost_user_with(&dev, &[range]);
    let d = daemon::Daemon::spawn(
        &sock,
        daemon::ENDPOINTS,
        std::time::Duration::from_secs(600),
        model,
    );
    let snapshot = RefCell::new(Vec::new());
    let r = scenarios::probe_and_vfio_map(
        &env,
        &front,
        |_, _| *snapshot.borrow_mut() = d.domains(),
        |_| {},
    );
    let endpoints: Vec<String> = r
        .reports
        .iter()
        .filter(|r| r.event == "endpoint")
        .map(|r| r.get("bdf").unwrap().to_string())
        .collect();
    assert!(!endpoints.is_empty());
    for ep in &endpoints {
        let bdf: vhost_device_iommu::viot::PciBdf = ep.parse().unwrap();
        assert!(
            range.contains(&bdf),
            "{ep} is behind the IOMMU but outside the VIOT range"
        );
    }
    assert!(endpoints.iter().any(|e| e == &r.endpoint.to_string()));
    let attached: Vec<u64> = snapshot
        .into_inner()
        .iter()
        .flat_map(|d| d["endpoints"].as_array().unwrap().clone())
        .map(|e| e.as_u64().unwrap())
        .collect();
    for rid in &attached {
        let bdf = vhost_device_iommu::viot::PciBdf::from_rid(0, *rid as u16);
        assert!(
            range.contains(&bdf),
            "the daemon saw {bdf} attached, outside the VIOT range"
        );
    }
    assert!(attached.contains(&u64::from(r.endpoint.rid())));
}

/// A 2 MiB VFIO mapping backed by a transparent huge page: the driver sends it to the daemon
/// as one MAP of the whole 2 MiB range, the daemon translates every part of it to the
/// matching byte of the guest's huge page, and its IOTLB holds it as one 2 MiB entry.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_huge_page_vfio_map() {
    huge_page_vfio_map(&[]);
}

/// The same with the AMD-Vi model, whose v1 tables hold the range as one 2 MiB leaf.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn daemon_amdvi_huge_page_vfio_map() {
    huge_page_vfio_map(&["--model", "amdvi"]);
}

fn huge_page_vfio_map(model: &[&str]) {
    use scenarios::{HUGE_IOVA, HUGE_PAGES};
    let env = GuestEnv::provision();
    let (_dev, front, d) = start_with(&env, model);
    let trace = RefCell::new(Value::Null);
    scenarios::vfio_map_huge(&env, &front, |map, first| {
        let ep = rid_of(map);
        let dom = d.domain_of(ep).expect("edu in no daemon domain");
        let maps = dom["mappings"].as_array().unwrap();
        let huge = maps
            .iter()
            .find(|m| m["virt_start"] == json!(HUGE_IOVA))
            .unwrap_or_else(|| panic!("no mapping at {HUGE_IOVA:#x}: {dom}"));
        assert_eq!(
            huge["virt_end"],
            json!(HUGE_IOVA + HUGE_PAGES * 4096 - 1),
            "the 2 MiB did not arrive as one MAP: {dom}"
        );
        assert_eq!(huge["phys_start"], json!(first), "{dom}");
        for off in [0u64, 0x1234, 0x10_0000, 0x1f_fff8] {
            let t = d.translate(ep, HUGE_IOVA + off, "read");
            assert_eq!(
                t["translation"]["phys"],
                json!(first + off),
                "offset {off:#x}: {t}"
            );
        }
        // A 4 KiB page of the range not looked up before hits the IOTLB: the model cached one
        // 2 MiB translation (both units cache superpage translations as such).
        let t = d.translate(ep, HUGE_IOVA + 0x8_0000, "read");
        assert_eq!(t["translation"]["phys"], json!(first + 0x8_0000), "{t}");
        let iotlb_hit = t["trace"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "cache_lookup" && e["cache"] == "iotlb" && e["hit"] == true);
        assert!(
            iotlb_hit,
            "no IOTLB hit for a fresh page of the 2 MiB range: {t}"
        );
        *trace.borrow_mut() = t["trace"].clone();
    });
    eprintln!("2 MiB translation trace: {}", trace.into_inner());
}
