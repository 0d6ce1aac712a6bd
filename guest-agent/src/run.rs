//! Carries out one parsed command on the running system.

use guest_agent::args::{Command, MapArgs};
use guest_agent::report::Report;
use guest_agent::sysfs::{self, PciDevice};
use guest_agent::vfio::{Container, DmaBuffer, Group, VFIO_TYPE1V2_IOMMU};
use guest_agent::{AgentError, Result, pagemap, virtio};
use std::path::Path;
use std::time::{Duration, Instant};

fn emit(r: Report) {
    println!("{}", r.to_line());
}

fn device_report(event: &str, d: &PciDevice) -> Report {
    Report::new(event)
        .field("bdf", d.bdf)
        .field("vendor", format!("{:04x}", d.vendor))
        .field("device", format!("{:04x}", d.device))
        .field("driver", d.driver.as_deref().unwrap_or("none"))
        .field(
            "iommu_group",
            d.iommu_group.map_or("none".to_string(), |g| g.to_string()),
        )
        .field("iommu", d.iommu.as_deref().unwrap_or("none"))
        .field("domain", d.domain.as_deref().unwrap_or("none"))
}

/// Runs `cmd`, printing its reports.
pub fn run(cmd: Command) -> Result<()> {
    let root = Path::new(sysfs::SYSFS);
    match cmd {
        Command::Info(bdf) => emit(device_report("info", &sysfs::device(root, &bdf)?)),
        Command::Find { vendor, device } => {
            let found = sysfs::find(root, vendor, device)?;
            for d in &found {
                emit(device_report("found", d));
            }
            emit(
                Report::new("find-done")
                    .field("id", format!("{vendor:04x}:{device:04x}"))
                    .field("count", found.len()),
            );
        }
        Command::Bind { bdf, driver } => {
            emit(device_report("bound", &sysfs::bind(root, &bdf, &driver)?))
        }
        Command::Release(bdf) => {
            sysfs::release(root, &bdf)?;
            emit(device_report("released", &sysfs::device(root, &bdf)?));
        }
        Command::AcpiTable(sig) => {
            let path = root.join("firmware/acpi/tables").join(&sig);
            let bytes = std::fs::read(&path)
                .map_err(|e| AgentError::io(format!("read {}", path.display()), e))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            emit(
                Report::new("acpi-table")
                    .field("sig", &sig)
                    .field("len", bytes.len())
                    .field("hex", hex),
            );
        }
        Command::VirtioIommu => {
            let dir = root.join("bus/virtio/drivers/virtio_iommu");
            let mut n = 0;
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("virtio"))
                    .collect();
                names.sort();
                for name in names {
                    let dev = root.join("bus/virtio/devices").join(&name);
                    let bits = std::fs::read_to_string(dev.join("features"))
                        .map_err(|e| AgentError::io(format!("read {name}/features"), e))?;
                    let f = virtio::Features::from_sysfs(&bits)?;
                    let parent = std::fs::canonicalize(&dev)
                        .ok()
                        .and_then(|p| {
                            p.parent()
                                .and_then(|p| p.file_name())
                                .map(|n| n.to_string_lossy().into_owned())
                        })
                        .unwrap_or_else(|| "none".into());
                    emit(
                        Report::new("virtio-iommu")
                            .field("dev", &name)
                            .field("pci", parent)
                            .hex("features", f.bits())
                            .field("names", f.names().join(",")),
                    );
                    n += 1;
                }
            }
            emit(Report::new("virtio-iommu-done").field("count", n));
        }
        Command::VfioMap(m) => vfio_map(root, &m)?,
        Command::VfioBench { map, count } => vfio_bench(root, &map, count)?,
    }
    Ok(())
}

/// An open container with the device's group in it and the type1 backend set.
struct Session {
    container: Container,
    _group: Group,
    group: u32,
    iommu_type: u32,
    pgsizes: u64,
    page_size: u64,
}

fn page_size() -> Result<u64> {
    // SAFETY: sysconf reads a constant of the running system and touches no memory of ours.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .ok_or_else(|| AgentError::Vfio(format!("bad page size {p}")))
}

fn open_session(root: &Path, m: &MapArgs) -> Result<Session> {
    let dev = sysfs::device(root, &m.bdf)?;
    if dev.driver.as_deref() != Some("vfio-pci") {
        return Err(AgentError::Vfio(format!(
            "{} is bound to {:?}, not vfio-pci (run `guest-agent bind {}` first)",
            m.bdf, dev.driver, m.bdf
        )));
    }
    let group_no = dev
        .iommu_group
        .ok_or_else(|| AgentError::Vfio(format!("{} has no IOMMU group", m.bdf)))?;
    let container = Container::open()?;
    let group = Group::open(group_no)?;
    group.set_container(&container)?;
    let iommu_type = container.set_iommu()?;
    let pgsizes = container.iova_pgsizes()?;
    let page_size = page_size()?;
    let min_pg = 1u64 << pgsizes.trailing_zeros().min(63);
    if pgsizes == 0 || min_pg > page_size {
        return Err(AgentError::Vfio(format!(
            "IOMMU page sizes {pgsizes:#x} have no page of {page_size:#x} bytes or smaller"
        )));
    }
    if !m.iova.is_multiple_of(page_size) {
        return Err(AgentError::Vfio(format!(
            "IOVA {:#x} is not aligned to the {page_size:#x}-byte page",
            m.iova
        )));
    }
    Ok(Session {
        container,
        _group: group,
        group: group_no,
        iommu_type,
        pgsizes,
        page_size,
    })
}

fn vfio_map(root: &Path, m: &MapArgs) -> Result<()> {
    let s = open_session(root, m)?;
    let size = m.pages * s.page_size;
    let buf = if m.huge {
        DmaBuffer::new_huge(size as usize, 0x5a)?
    } else {
        DmaBuffer::new(size as usize, 0x5a)?
    };
    s.container.map_dma(buf.vaddr(), m.iova, size)?;
    // The pages are pinned by MAP_DMA, so their frames cannot move while the mapping lives.
    let entries = pagemap::read_self(buf.vaddr(), s.page_size, m.pages as usize)?;
    let gpas = entries
        .iter()
        .map(|e| e.phys_addr(s.page_size, 0))
        .collect::<Result<Vec<u64>>>()?;
    let list = gpas
        .iter()
        .map(|g| format!("{g:#x}"))
        .collect::<Vec<_>>()
        .join(",");
    emit(
        Report::new("vfio-map")
            .field("bdf", m.bdf)
            .field("group", s.group)
            .field(
                "iommu_type",
                if s.iommu_type == VFIO_TYPE1V2_IOMMU {
                    "type1v2"
                } else {
                    "type1"
                },
            )
            .hex("pgsizes", s.pgsizes)
            .hex("iova", m.iova)
            .hex("size", size)
            .hex("vaddr", buf.vaddr())
            .hex("gpa", gpas[0])
            .field("gpas", list),
    );
    if m.hold_ms > 0 {
        std::thread::sleep(Duration::from_millis(m.hold_ms));
    }
    if m.wait_stdin {
        emit(Report::new("vfio-wait").hex("iova", m.iova));
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| AgentError::io("read stdin", e))?;
    }
    if m.keep {
        emit(Report::new("vfio-keep").hex("iova", m.iova));
        return Ok(());
    }
    let unmapped = s.container.unmap_dma(m.iova, size)?;
    emit(
        Report::new("vfio-unmap")
            .field("bdf", m.bdf)
            .hex("iova", m.iova)
            .hex("size", size)
            .hex("unmapped", unmapped),
    );
    if unmapped != size {
        return Err(AgentError::Vfio(format!(
            "UNMAP_DMA unmapped {unmapped:#x} of {size:#x} bytes"
        )));
    }
    Ok(())
}

fn vfio_bench(root: &Path, m: &MapArgs, count: u64) -> Result<()> {
    let s = open_session(root, m)?;
    let size = m.pages * s.page_size;
    let buf = if m.huge {
        DmaBuffer::new_huge(size as usize, 0xa5)?
    } else {
        DmaBuffer::new(size as usize, 0xa5)?
    };
    let mut map_time = Duration::ZERO;
    let mut unmap_time = Duration::ZERO;
    let start = Instant::now();
    for i in 0..count {
        let t0 = Instant::now();
        s.container.map_dma(buf.vaddr(), m.iova, size)?;
        let t1 = Instant::now();
        let unmapped = s.container.unmap_dma(m.iova, size)?;
        let t2 = Instant::now();
        if unmapped != size {
            return Err(AgentError::Vfio(format!(
                "iteration {i}: UNMAP_DMA unmapped {unmapped:#x} of {size:#x} bytes"
            )));
        }
        map_time += t1 - t0;
        unmap_time += t2 - t1;
    }
    let elapsed = start.elapsed();
    let secs = elapsed.as_secs_f64();
    let per = |d: Duration| d.as_nanos() / u128::from(count);
    emit(
        Report::new("vfio-bench")
            .field("bdf", m.bdf)
            .field("group", s.group)
            .field("count", count)
            .field("pages", m.pages)
            .field("elapsed_ns", elapsed.as_nanos())
            .field("map_ns_avg", per(map_time))
            .field("unmap_ns_avg", per(unmap_time))
            .field(
                "pairs_per_sec",
                format!("{:.1}", if secs > 0.0 { count as f64 / secs } else { 0.0 }),
            ),
    );
    Ok(())
}
