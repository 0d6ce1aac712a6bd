//! The register front in a real guest: the daemon serves the VT-d (or AMD-Vi) unit's register
//! file over vfio-user and writes the DMAR (or IVRS) that names it; the guest's own
//! `intel_iommu` (or `amd_iommu`) finds the unit through the table, programs it (root and
//! context tables, the invalidation queue; the device table, command buffer and event log;
//! its page tables, all in guest RAM), and puts the daemon's DMA engine behind it. The guest
//! then binds the engine to vfio-pci and has it copy between IOVAs its VFIO mapped: every
//! access is translated by the unit the guest's driver programmed. Run by
//! `scripts/guest-test`.

use guest_agent::report::Report;
use iommu_workspace::guest::daemon::Daemon;
use iommu_workspace::guest::endpoint::{
    ENGINE_ADDR, ENGINE_ID, batch_reaches, endpoint, gpas, vfio_user_device,
};
use iommu_workspace::guest::harness::{GuestEnv, Kernel, Qemu, QemuOpts, RunDir, bind_first};
use iommu_workspace::guest::scenarios::RAM_MB;
use serde_json::{Value, json};
use std::time::Duration;

/// Where the register front's function sits.
const FRONT_ADDR: &str = "05.0";

/// The unit a guest's own driver programs, and how that guest boots.
#[derive(Debug, Clone, Copy)]
enum Vendor {
    /// VT-d, `intel_iommu=on` plus these options.
    Vtd(&'static str),
    /// AMD-Vi, on the generic kernel (the cloud one has no `amd_iommu`).
    Amdvi,
}

impl Vendor {
    /// Where the guest's firmware (SeaBIOS) puts the front's BAR with this device set (the
    /// engine's 4 KiB BAR beside it): the address the ACPI table names. The daemon stops
    /// with the address the firmware chose if it differs.
    fn base(self) -> u64 {
        match self {
            // A 4 KiB register file.
            Vendor::Vtd(_) => 0xfebf_e000,
            // 16 KiB, placed first (SeaBIOS packs the largest BARs first).
            Vendor::Amdvi => 0xfebf_8000,
        }
    }
}

/// The daemon serving the front and the engine, and a guest with both attached, booted with
/// the vendor's driver and `intremap=off`, that may reboot if `reboot`.
fn boot(
    env: &GuestEnv,
    vendor: Vendor,
    script: String,
    reboot: bool,
) -> ([RunDir; 2], Daemon, Qemu) {
    let dev = RunDir::new(env);
    let (front, ep, table) = (
        dev.host.join("front.sock"),
        dev.host.join("ep.sock"),
        dev.host.join("acpi.bin"),
    );
    let (kind, table_opt, model, kernel, append) = match vendor {
        Vendor::Vtd(opts) => (
            "vtd",
            "--dmar-out",
            "vtd",
            Kernel::Cloud,
            format!("intel_iommu=on{opts}"),
        ),
        // amd_iommu is on whenever an IVRS names a unit (it has no "on" option).
        Vendor::Amdvi => (
            "amdvi",
            "--ivrs-out",
            "amdvi",
            Kernel::Generic,
            String::new(),
        ),
    };
    let args: Vec<String> = [
        "--model".to_string(),
        model.into(),
        "--register-front".into(),
        format!(
            "{kind},socket={},addr={FRONT_ADDR},base={:#x}",
            front.display(),
            vendor.base()
        ),
        table_opt.into(),
        table.display().to_string(),
        "--endpoint".into(),
        format!("dma@{ENGINE_ADDR},socket={}", ep.display()),
    ]
    .into();
    let d = Daemon::spawn_in(
        &dev.host,
        &args,
        &[&front, &ep, &table],
        Duration::from_secs(600),
    );
    let mut opts = QemuOpts {
        memory_mb: RAM_MB,
        machine: "q35,memory-backend=mem".into(),
        append: [append, "intremap=off".into()]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect(),
        timeout: Duration::from_secs(240),
        script: format!("dmesg -n 1\n{script}"),
        no_reboot: !reboot,
        ..Default::default()
    };
    opts.args.extend([
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={RAM_MB}M,share=on"),
        "-acpitable".into(),
        format!("file={}", dev.guest.join("acpi.bin").display()),
        "-device".into(),
        vfio_user_device(&dev.guest.join("ep.sock"), ENGINE_ADDR),
        "-device".into(),
        vfio_user_device(&dev.guest.join("front.sock"), FRONT_ADDR),
    ]);
    let run = RunDir::booting(env, kernel);
    let q = Qemu::spawn(env, &run, &opts);
    ([dev, run], d, q)
}

fn field<'a>(r: &'a Report, k: &str) -> &'a str {
    r.get(k).unwrap_or_else(|| panic!("no {k}: {r:?}"))
}

/// Scalable mode, the kernel's default: PASID-table entries (RID_PASID) and first-stage
/// tables for the DMA domains.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn intel_iommu_in_scalable_mode_programs_the_vtd_unit_and_the_engine_dmas_through_it() {
    driver_programs_the_unit(Vendor::Vtd(""));
}

/// Legacy mode (`intel_iommu=on,sm_off`): context entries and second-stage tables.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn intel_iommu_in_legacy_mode_programs_the_vtd_unit_and_the_engine_dmas_through_it() {
    driver_programs_the_unit(Vendor::Vtd(",sm_off"));
}

/// AMD-Vi: the generic kernel's `amd_iommu` programs the device table, command buffer, event
/// log and its page tables.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn amd_iommu_programs_the_amdvi_unit_and_the_engine_dmas_through_it() {
    driver_programs_the_unit(Vendor::Amdvi);
}

/// The script lines that set the front function's Bus Master Enable. No driver binds the
/// function, so nothing else sets it, and without it QEMU drops the unit's interrupt messages
/// (as it drops a device's MSIs): the guest sets it through sysfs, as a platform's firmware
/// would for an IOMMU function.
fn front_bus_master() -> String {
    format!(
        "printf '\\006' | dd of=/sys/bus/pci/devices/0000:00:{FRONT_ADDR}/config bs=1 seek=4 \
         count=1 conv=notrunc 2>/dev/null || exit 1\n"
    )
}

/// The script lines that print the kernel's IOMMU messages as `GUEST-DMESG` lines.
const IOMMU_DMESG: &str = "dmesg | grep -E 'DMAR|AMD-Vi|iommu' | sed 's/^/GUEST-DMESG /'\n";

fn driver_programs_the_unit(vendor: Vendor) {
    let env = GuestEnv::provision();
    let script = format!(
        "{}{}guest-agent dma-engine \"$bdf\" --pages 4 --wait-stdin --move-container || exit 1\n\
         sleep 1\n{IOMMU_DMESG}",
        front_bus_master(),
        bind_first(ENGINE_ID)
    );
    let (_dirs, d, mut q) = boot(&env, vendor, script, false);
    q.next("boot");
    let iommu = q.next("iommu");
    let sysfs_name = match vendor {
        Vendor::Vtd(_) => "dmar",
        Vendor::Amdvi => "ivhd",
    };
    assert!(field(&iommu, "name").starts_with(sysfs_name), "{iommu:?}");
    let bound = q.next("bound");
    assert_eq!(bound.get("driver"), Some("vfio-pci"), "{bound:?}");
    let map = q.next("dma-map");
    let (src_iova, src_gpas) = (map.get_u64("src_iova").unwrap(), gpas(&map, "src_gpas"));
    let copy = q.next("dma-batch");
    assert_eq!(copy.get("results"), Some("1,1,1"), "{copy:?}");
    assert_eq!(copy.get("dst_ok"), Some("yes"), "{copy:?}");
    q.next("dma-wait");
    let e = endpoint(&d);
    let stats = d.ctl(json!({"cmd": "stats"}));
    q.send_line("");
    // What the guest's driver built for the engine, as the unit follows it: the chain is
    // complete and ends in the entry that names the DMA domain's tables.
    let chain = &e["structures"];
    eprintln!("structures the driver built for the engine: {chain}");
    assert_eq!(chain["stop"], Value::Null, "{chain}");
    let entries = chain["entries"].as_array().unwrap();
    let named = &entries.last().unwrap()["fields"];
    let (names, table, id) = match vendor {
        Vendor::Vtd(o) if o.contains("sm_off") => (
            vec!["root table pointer", "root entry", "context entry"],
            "SLPTPTR",
            "DID",
        ),
        Vendor::Vtd(_) => (
            vec![
                "root table pointer",
                "scalable root entry",
                "scalable context entry",
                "PASID-directory entry",
                "PASID-table entry",
            ],
            // The kernel's DMA domains are first-stage tables in scalable mode (PGTT 001b).
            "FSPTPTR",
            "DID",
        ),
        Vendor::Amdvi => (vec!["device table base", "DTE"], "PtRoot", "DomainID"),
    };
    let got: Vec<&str> = entries
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, names, "{chain}");
    assert_ne!(named[table], json!(0), "{chain}");
    assert_ne!(named[id], json!(0), "{chain}");
    if let Vendor::Vtd("") = vendor {
        assert_eq!(named["PGTT"], json!(1), "first-stage translation: {chain}");
    }
    let fault = q.next("dma-fault");
    assert_eq!(fault.get_u64("code"), Some(3), "DST_FAULT: {fault:?}");
    // The group moves to a second VFIO container: the guest's driver detaches the device
    // from the first container's domain and attaches it to the second's, whose mappings
    // (fresh buffers at other IOVAs) the copy then uses; the first container's IOVAs are gone.
    let moved = q.next("dma-move");
    assert_eq!(moved.get("results"), Some("1,1,1"), "{moved:?}");
    assert_eq!(moved.get("dst_ok"), Some("yes"), "{moved:?}");
    assert_ne!(moved.get("new_iova"), moved.get("old_iova"), "{moved:?}");
    let stale = q.next("dma-move-fault");
    assert_eq!(stale.get("fault_ok"), Some("yes"), "{stale:?}");
    assert_eq!(
        stale.get_u64("error_addr"),
        stale.get_u64("src_iova"),
        "{stale:?}"
    );
    eprintln!("container move: {moved:?}\nstale IOVA: {stale:?}");
    q.next("dma-engine-done");
    let log = q.finish().log;

    // The guest's driver programmed the unit: registers were written, translation is on,
    // and the firmware put the BAR where the table said.
    let front = &stats["register_front"];
    assert_eq!(front["bar0"], json!(vendor.base()), "{stats}");
    assert!(front["writes"].as_u64().unwrap() > 10, "{stats}");
    let hw = &stats["hardware"];
    assert!(hw["translations"].as_u64().unwrap() >= e["translations"].as_u64().unwrap());
    assert!(
        hw["commands"].as_u64().unwrap() > 0,
        "no invalidation descriptor or command ran: {stats}"
    );
    // The mode the driver chose: only scalable mode looks PASID-table entries up.
    if let Vendor::Vtd(opts) = vendor {
        let pasid_lookups = hw["caches"]["pasid"]["lookups"].as_u64().unwrap();
        assert_eq!(pasid_lookups > 0, !opts.contains("sm_off"), "{stats}");
    }
    // The engine's source reads reached the guest's frames through the unit's walk of the
    // tables the guest's driver built.
    let last: Vec<Value> = e["last_batch"].as_array().unwrap().clone();
    for (i, gpa) in src_gpas.iter().enumerate() {
        let iova = src_iova + i as u64 * 4096;
        assert!(
            batch_reaches(&last, iova, *gpa, None),
            "IOVA {iova:#x} did not reach frame {gpa:#x}: {last:?}"
        );
    }
    for l in log
        .lines()
        .filter(|l| l.starts_with("GUEST-DMESG") || l.starts_with("AGENT endpoint"))
    {
        eprintln!("{l}");
    }
    // The endpoint landed in an IOMMU group of the unit.
    assert!(
        bound.get("iommu_group").is_some_and(|g| g != "none")
            && bound
                .get("iommu")
                .is_some_and(|i| i.starts_with(sysfs_name)),
        "{bound:?}"
    );
    // The driver read our capability registers: the kernel's log shows the values the
    // unit reports.
    let reg = |k: &str| {
        stats["registers"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let shown = match vendor {
        Vendor::Vtd(_) => format!(
            "DMAR: dmar0: reg_base_addr {:x} ver {}:{} cap {:x} ecap {:x}",
            vendor.base(),
            (reg("ver") >> 4) & 0xf,
            reg("ver") & 0xf,
            reg("cap"),
            reg("ecap")
        ),
        Vendor::Amdvi => format!("AMD-Vi: Extended features ({:#x}, 0x0)", reg("efr")),
    };
    assert!(
        log.lines()
            .any(|l| l.starts_with("GUEST-DMESG") && l.contains(&shown)),
        "the guest's log does not show {shown:?}:\n{log}"
    );
    // Every invalidation wait completed: no queue timeout, no completion-wait loop that
    // gave up.
    for bad in [
        "Invalidation Time-out",
        "QI HW",
        "Completion-Wait loop timed out",
        "Command buffer timeout",
    ] {
        assert!(!log.contains(bad), "the guest logged {bad:?}:\n{log}");
    }
    eprintln!("hardware: {}", stats["hardware"]);
    eprintln!("register front: {}", stats["register_front"]);
    // The copy to an unmapped IOVA faulted in the unit, which recorded it (VT-d: in its
    // fault registers; AMD-Vi: in the event log) and raised its interrupt; the guest's
    // driver read the record and logged it with the address the engine used.
    let after = d.ctl(json!({"cmd": "stats"}));
    assert!(
        after["hardware"]["faults_recorded"].as_u64().unwrap() >= 1,
        "{after}"
    );
    assert!(
        after["register_front"]["interrupts"].as_u64().unwrap() >= 1,
        "{after}"
    );
    eprintln!("registers after the fault: {}", after["registers"]);
    eprintln!(
        "register front after the fault: {}",
        after["register_front"]
    );
    let hole = fault.get_u64("error_addr").unwrap();
    // The unit's fault code, which the engine reports (ERROR_INFO bits 15:0): a VT-d fault
    // reason, an AMD-Vi event code.
    let code = fault.get_u64("error_info").unwrap() & 0xffff;
    let line = match vendor {
        Vendor::Vtd(_) => {
            let line = log
                .lines()
                .find(|l| {
                    l.contains("DMAR: [DMA Write") && l.contains(&format!("fault addr {hole:#x}"))
                })
                .unwrap_or_else(|| panic!("the guest logged no DMAR fault at {hole:#x}:\n{log}"));
            assert!(line.contains("[0000:00:04.0]"), "{line}");
            // The reason the guest read from the fault record is the one the unit recorded.
            assert!(
                line.contains(&format!("[fault reason {code:#04x}]")),
                "the unit recorded reason {code:#x}: {line}"
            );
            line
        }
        Vendor::Amdvi => {
            // Event code 2 (§2.5.3): IO_PAGE_FAULT; the guest decodes the record's type.
            assert_eq!(
                code, 2,
                "the unit logged event code {code}, not IO_PAGE_FAULT"
            );
            let line = log
                .lines()
                .find(|l| l.contains("IO_PAGE_FAULT") && l.contains(&format!("address={hole:#x}")))
                .unwrap_or_else(|| {
                    panic!("the guest logged no IO_PAGE_FAULT at {hole:#x}:\n{log}")
                });
            assert!(line.contains("0000:00:04.0"), "{line}");
            // The domain the guest names is the one its driver put in the engine's DTE.
            let domain = named["DomainID"].as_u64().unwrap();
            assert!(
                line.contains(&format!("domain={domain:#06x}")),
                "the DTE holds domain {domain:#x}: {line}"
            );
            line
        }
    };
    eprintln!("guest fault line: {line}");
}

/// A reboot resets the front's function, which puts the unit back in its power-on state; the
/// second boot's driver programs it from scratch, and its DMA and faults go through the second
/// boot's tables only.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn intel_iommu_reboot_reprograms_a_reset_vtd_unit() {
    reboot_reprograms_a_reset_unit(Vendor::Vtd(""));
}

/// [`intel_iommu_reboot_reprograms_a_reset_vtd_unit`] for AMD-Vi.
#[test]
#[ignore = "boots a guest against the daemon: run by scripts/guest-test"]
fn amd_iommu_reboot_reprograms_a_reset_amdvi_unit() {
    reboot_reprograms_a_reset_unit(Vendor::Amdvi);
}

fn reboot_reprograms_a_reset_unit(vendor: Vendor) {
    let env = GuestEnv::provision();
    // The second boot's engine run waits after its copy, for the host to read the copy's
    // translations.
    let engine = |opts: &str| {
        format!(
            "{}{}guest-agent dma-engine \"$bdf\" --pages 4{opts} || exit 1\n",
            front_bus_master(),
            bind_first(ENGINE_ID)
        )
    };
    let script = format!(
        "echo AGENT ask what=next\n\
         read -r cmd\n\
         case \"$cmd\" in\n\
         first)\n{}touch /tmp/reboot ;;\n\
         second)\n{}sleep 1\n{IOMMU_DMESG} ;;\n\
         *) exit 3 ;;\n\
         esac\n",
        engine(""),
        engine(" --wait-stdin")
    );
    let (_dirs, d, mut q) = boot(&env, vendor, script, true);
    let stats = |d: &Daemon| d.ctl(json!({"cmd": "stats"}));
    // One boot's engine run; the copy's translations if it waited after the copy.
    let boot_once = |q: &mut Qemu, d: &Daemon, word: &str, waits: bool| {
        q.next("boot");
        q.next("ask");
        q.send_line(word);
        let map = q.next("dma-map");
        let copy = q.next("dma-batch");
        assert_eq!(copy.get("results"), Some("1,1,1"), "{word}: {copy:?}");
        assert_eq!(copy.get("dst_ok"), Some("yes"), "{word}: {copy:?}");
        let copied = waits.then(|| {
            q.next("dma-wait");
            let e = endpoint(d);
            q.send_line("");
            e["last_batch"].as_array().unwrap().clone()
        });
        let faults = [q.next("dma-fault"), q.next("dma-fault")];
        q.next("dma-engine-done");
        (map, copied, faults)
    };

    let (first_map, _, _) = boot_once(&mut q, &d, "first", false);
    let done = q.next("script-done");
    assert_eq!(done.get_u64("rc"), Some(0), "{done:?}");
    let first = stats(&d);
    let (second_map, copied, faults) = boot_once(&mut q, &d, "second", true);
    let second = stats(&d);
    let log = q.finish().log;
    let n = |v: &Value, k: &str| v["register_front"][k].as_u64().unwrap();
    eprintln!("first boot: {}", first["register_front"]);
    eprintln!("second boot: {}", second["register_front"]);

    // The reboot reset the function, and with it the unit.
    assert!(
        n(&second, "resets") > n(&first, "resets"),
        "the reboot did not reset the front's function: {first} then {second}"
    );
    // The second boot's driver programmed the unit again, through a BAR at the same address.
    assert!(n(&second, "writes") > n(&first, "writes") + 10, "{second}");
    assert_eq!(second["register_front"]["bar0"], json!(vendor.base()));
    // Its DMA went through its own tables: the copy's sources reached the second boot's
    // frames (a translation the first boot's tables or caches gave would reach the first
    // boot's, which the agent's new buffers do not share).
    let last = copied.expect("the second boot's copy");
    let src_iova = second_map.get_u64("src_iova").unwrap();
    let (old, new) = (gpas(&first_map, "src_gpas"), gpas(&second_map, "src_gpas"));
    eprintln!("source frames: first boot {old:x?}, second boot {new:x?}");
    for (i, gpa) in new.iter().enumerate() {
        let iova = src_iova + i as u64 * 4096;
        assert!(
            batch_reaches(&last, iova, *gpa, None),
            "IOVA {iova:#x} did not reach the second boot's frame {gpa:#x}: {last:?}"
        );
    }
    // The fault path works again: the unit's interrupt reached the second boot's driver,
    // which logged the fault (the second kernel's log holds only its own messages).
    let hole = faults[0].get_u64("error_addr").unwrap();
    let logged = log
        .lines()
        .filter(|l| l.starts_with("GUEST-DMESG"))
        .any(|l| match vendor {
            Vendor::Vtd(_) => {
                l.contains("DMAR: [DMA Write") && l.contains(&format!("fault addr {hole:#x}"))
            }
            Vendor::Amdvi => {
                l.contains("IO_PAGE_FAULT") && l.contains(&format!("address={hole:#x}"))
            }
        });
    assert!(
        logged,
        "the second boot logged no fault at {hole:#x}:\n{log}"
    );
}
