//! The main job, as a new user runs it (`scripts/guest-boot`): a real guest kernel booted
//! under TCG against `vhost-device-iommu`, printing what the guest's virtio-iommu driver did and
//! what the device saw. It checks what it prints (the same checks as the end-to-end tests), so
//! a broken set-up fails loudly instead of printing nonsense.

use iommu_workspace::guest::daemon::{ok_count, rid_of, start};
use iommu_workspace::guest::harness::GuestEnv;
use iommu_workspace::guest::scenarios;
use iommu_workspace::guest::scenarios::PROBE_IOVA;
use serde_json::{Value, json};
use std::cell::RefCell;

fn hex(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| v.to_string(), |n| format!("{n:#x}"))
}

fn frames(gpas: &[u64]) -> String {
    gpas.iter()
        .map(|g| format!("{g:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_domains(domains: &[Value]) {
    for d in domains {
        let eps: Vec<String> = d["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let rid = e.as_u64().unwrap();
                format!("{:02x}:{:02x}.{:x}", rid >> 8, (rid >> 3) & 0x1f, rid & 7)
            })
            .collect();
        println!(
            "  domain {} ({}, hardware domain {}): endpoints [{}]",
            d["id"],
            d["kind"].as_str().unwrap_or("?"),
            d["hw_domain"],
            eps.join(", ")
        );
        for m in d["mappings"].as_array().unwrap() {
            println!(
                "    map IOVA {}..={} -> phys {} ({})",
                hex(&m["virt_start"]),
                hex(&m["virt_end"]),
                hex(&m["phys_start"]),
                m["flags"].as_str().unwrap_or("?")
            );
        }
    }
}

#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-boot"]
fn guest_against_vhost_device_iommu() {
    let env = GuestEnv::provision();
    let (_dev, front, d) = start(&env);
    let live = RefCell::new((Vec::new(), Vec::new()));
    let fault = RefCell::new(Value::Null);
    let r = scenarios::probe_and_vfio_map(
        &env,
        &front,
        |map, gpas| {
            let ep = rid_of(map);
            let mut answers = Vec::new();
            for (i, gpa) in gpas.iter().enumerate() {
                let iova = PROBE_IOVA + i as u64 * 4096;
                let t = d.translate(ep, iova, "read");
                assert_eq!(t["translation"]["phys"], json!(gpa), "{t}");
                answers.push((iova, t));
            }
            *live.borrow_mut() = (d.domains(), answers);
        },
        |unmap| {
            let t = d.translate(rid_of(unmap), PROBE_IOVA, "read");
            assert!(!t["fault"].is_null(), "{t}");
            *fault.borrow_mut() = t;
        },
    );
    let (domains, answers) = live.into_inner();
    let stats = d.ctl(json!({"cmd": "stats"}));

    println!("\n== the guest: its virtio-iommu driver");
    for rep in &r.reports {
        match rep.event.as_str() {
            "boot" => println!("  kernel {}", rep.get("kernel").unwrap_or("?")),
            "virtio-iommu" => println!(
                "  virtio_iommu bound to {} (PCI {}), negotiated {}",
                rep.get("dev").unwrap_or("?"),
                rep.get("pci").unwrap_or("?"),
                rep.get("names").unwrap_or("?")
            ),
            "endpoint" => println!(
                "  endpoint {} behind {}: IOMMU group {}, default domain {}",
                rep.get("bdf").unwrap_or("?"),
                rep.get("iommu").unwrap_or("?"),
                rep.get("group").unwrap_or("?"),
                rep.get("domain").unwrap_or("?")
            ),
            _ => {}
        }
    }
    println!(
        "  edu {} bound to vfio-pci; VFIO MAP_DMA of {} pages at IOVA {PROBE_IOVA:#x} -> guest frames {:#x?} (from /proc/self/pagemap)",
        r.endpoint,
        r.gpas.len(),
        r.gpas
    );
    println!("\n== the device: vhost-device-iommu (control socket) while the mapping was live");
    print_domains(&domains);
    for (iova, t) in &answers {
        println!(
            "  translate {} IOVA {iova:#x} -> phys {} ({} trace events: {})",
            r.endpoint,
            hex(&t["translation"]["phys"]),
            t["trace_len"],
            t["trace"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        );
    }
    let f = fault.into_inner();
    println!(
        "  after UNMAP_DMA: translate IOVA {PROBE_IOVA:#x} -> fault {} ({})",
        f["fault"]["reason"],
        f["fault"]["detail"].as_str().unwrap_or("?")
    );
    println!(
        "  requests answered OK: attach {}, probe {}, map {}, unmap {}, detach {}",
        ok_count(&stats, "attach"),
        ok_count(&stats, "probe"),
        ok_count(&stats, "map"),
        ok_count(&stats, "unmap"),
        ok_count(&stats, "detach")
    );
    assert!(ok_count(&stats, "probe") > 0 && ok_count(&stats, "map") > 0);
}

/// The main job's second part: real DMA through the model. The guest binds the daemon's DMA
/// engine to vfio-pci, maps two buffers through VFIO, and has the engine fill one and copy it
/// to the other; the daemon prints the translations its model made for that copy, then the
/// fault of a copy to an unmapped IOVA as the guest's virtio-iommu driver logged it.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-boot"]
fn guest_dma_through_the_model() {
    use iommu_workspace::guest::endpoint::{ENGINE_ID, ENGINE_RID, boot, endpoint, gpas};
    use iommu_workspace::guest::harness::bind_first;
    let env = GuestEnv::provision();
    let script = format!(
        "{}guest-agent dma-engine \"$bdf\" --pages 2 --wait-stdin || exit 1\n\
         dmesg | grep -i 'fault from EP' | sed 's/^/GUEST-DMESG /'\n",
        bind_first(ENGINE_ID)
    );
    let (_dirs, d, mut q) = boot(&env, &[], script);
    let open = q.next("dma-engine-open");
    let map = q.next("dma-map");
    let copy = q.next("dma-batch");
    q.next("dma-wait");
    let e = endpoint(&d);
    q.send_line("");
    let fault = q.next("dma-fault");
    q.next("dma-engine-done");
    let log = q.finish().log;
    assert_eq!(copy.get("results"), Some("1,1,1"), "{copy:?}");
    assert_eq!(copy.get("dst_ok"), Some("yes"), "{copy:?}");

    println!("\n== the guest: its DMA engine (vfio-user, served by the daemon)");
    println!(
        "  DMA engine {} (ID {}, interrupts by {}) bound to vfio-pci",
        open.get("bdf").unwrap_or("?"),
        open.get("id").unwrap_or("?"),
        open.get("irq").unwrap_or("?")
    );
    println!(
        "  VFIO MAP_DMA: src at IOVA {} -> guest frames [{}], dst at IOVA {} -> [{}]",
        map.get("src_iova").unwrap_or("?"),
        frames(&gpas(&map, "src_gpas")),
        map.get("dst_iova").unwrap_or("?"),
        frames(&gpas(&map, "dst_gpas"))
    );
    println!(
        "  one doorbell: FILL src, COPY src -> dst, COMPARE: results {}, dst holds the pattern: {} \
         (first bytes {}), completion MSI: {}",
        copy.get("results").unwrap_or("?"),
        copy.get("dst_ok").unwrap_or("?"),
        copy.get("dst_head").unwrap_or("?"),
        copy.get("irq").unwrap_or("?")
    );
    println!(
        "\n== the device: the translations the {} model made for that doorbell (endpoint {ENGINE_RID:#x})",
        d.ctl(json!({"cmd": "stats"}))["model"]
            .as_str()
            .unwrap_or("?")
    );
    for t in e["last_batch"].as_array().unwrap() {
        println!(
            "  {:5} IOVA {} -> phys {} ({} bytes of a {} KiB page)",
            t["access"].as_str().unwrap_or("?"),
            hex(&t["iova"]),
            hex(&t["phys"]),
            t["len"],
            1u64 << (t["page_shift"].as_u64().unwrap_or(12) - 10)
        );
    }
    println!(
        "  engine counters: {} descriptors, {} bytes written, {} translations, {} faults",
        e["descriptors"], e["bytes"], e["translations"], e["faults"]
    );
    println!(
        "\n== a copy to an unmapped IOVA: engine status {} (error code {}, {}) at {}",
        fault.get("status").unwrap_or("?"),
        fault.get("code").unwrap_or("?"),
        fault.get("code_name").unwrap_or("?"),
        fault.get("error_addr").unwrap_or("?")
    );
    let logged: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("GUEST-DMESG "))
        .filter(|l| l.contains("fault from EP"))
        .collect();
    for l in &logged {
        println!("  guest kernel: {l}");
    }
    assert!(!logged.is_empty(), "the guest logged no fault event");
}
