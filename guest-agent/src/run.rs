//! Carries out one parsed command on the running system.

mod move_container;

use guest_agent::args::{Command, DmaArgs, MapArgs};
use guest_agent::dma_engine::{
    self as dma, CONTROL_IE, Cap, CopyCheck, Descriptor, ENGINE_ID, Engine, FILL_PATTERN, Layout,
    PageFrames, RESULT_MISCOMPARE, RESULT_OK, Status,
};
use guest_agent::report::{Report, hex_list, yes};
use guest_agent::sysfs::{self, PciDevice};
use guest_agent::vfio::{
    Container, Device, DmaBuffer, EventFd, Group, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_TYPE1V2_IOMMU, VfioIrqInfo,
};
use guest_agent::{AgentError, Result, pagemap, virtio};
use iommu_emulator::PciBdf;
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
        Command::DmaEngine(d) => dma_engine(root, &d)?,
    }
    Ok(())
}

/// An open container with the device's group in it and the type1 backend set.
struct Session {
    container: Container,
    vfio_group: Group,
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

/// The IOMMU group of `bdf`, checked to be bound to `vfio-pci`.
fn vfio_pci_group(root: &Path, bdf: &PciBdf) -> Result<u32> {
    let dev = sysfs::device(root, bdf)?;
    if dev.driver.as_deref() != Some("vfio-pci") {
        return Err(AgentError::Vfio(format!(
            "{bdf} is bound to {:?}, not vfio-pci (run `guest-agent bind {bdf}` first)",
            dev.driver
        )));
    }
    dev.iommu_group
        .ok_or_else(|| AgentError::Vfio(format!("{bdf} has no IOMMU group")))
}

fn open_session(root: &Path, bdf: &PciBdf, iova: u64) -> Result<Session> {
    let group_no = vfio_pci_group(root, bdf)?;
    let container = Container::open()?;
    let group = Group::open(group_no)?;
    group.set_container(&container)?;
    let iommu_type = container.set_iommu()?;
    let pgsizes = container.iova_pgsizes()?;
    let page_size = page_size()?;
    check_pgsizes(pgsizes, page_size)?;
    if !iova.is_multiple_of(page_size) {
        return Err(AgentError::Vfio(format!(
            "IOVA {iova:#x} is not aligned to the {page_size:#x}-byte page"
        )));
    }
    Ok(Session {
        container,
        vfio_group: group,
        group: group_no,
        iommu_type,
        pgsizes,
        page_size,
    })
}

/// Fails unless the IOMMU maps pages of `page_size` bytes or smaller.
fn check_pgsizes(pgsizes: u64, page_size: u64) -> Result<()> {
    let min_pg = 1u64 << pgsizes.trailing_zeros().min(63);
    if pgsizes == 0 || min_pg > page_size {
        return Err(AgentError::Vfio(format!(
            "IOMMU page sizes {pgsizes:#x} have no page of {page_size:#x} bytes or smaller"
        )));
    }
    Ok(())
}

/// The guest-physical address of each page of `buf`, from pagemap. After `MAP_DMA` the pages
/// are pinned, so their frames cannot move while the mapping lives; before it (as
/// `dma-engine --identity` reads them, to map each page at its own address) they may still
/// move, even [`DmaBuffer::lock`]ed, so read them again once mapped.
fn frames(buf: &DmaBuffer, page_size: u64) -> Result<Vec<u64>> {
    let pages = buf.len() / page_size as usize;
    pagemap::read_self(buf.vaddr(), page_size, pages)?
        .iter()
        .map(|e| e.phys_addr(page_size, 0))
        .collect()
}

fn vfio_map(root: &Path, m: &MapArgs) -> Result<()> {
    let s = open_session(root, &m.bdf, m.iova)?;
    let size = m.pages * s.page_size;
    let buf = if m.huge {
        DmaBuffer::new_huge(size as usize, 0x5a)?
    } else {
        DmaBuffer::new(size as usize, 0x5a)?
    };
    s.container.map_dma(buf.vaddr(), m.iova, size)?;
    let gpas = frames(&buf, s.page_size)?;
    let list = hex_list(&gpas);
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
    let s = open_session(root, &m.bdf, m.iova)?;
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

/// How long a DMA engine batch may take to show DONE or ERROR, and its interrupt to arrive.
const DMA_TIMEOUT: Duration = Duration::from_secs(2);

/// The engine's interrupt: an eventfd VFIO signals, on MSI or, when the function offers no
/// MSI, on INTx.
struct Irq {
    efd: EventFd,
    index: u32,
    name: &'static str,
    /// VFIO masks the line after each signal (INTx): unmask once the cause is cleared.
    automasked: bool,
}

impl Irq {
    fn setup(dev: &Device) -> Result<Self> {
        let usable = |i: &VfioIrqInfo| i.count >= 1 && i.flags & VFIO_IRQ_INFO_EVENTFD != 0;
        let msi = dev.irq_info(VFIO_PCI_MSI_IRQ_INDEX)?;
        let (info, name) = if usable(&msi) {
            (msi, "msi")
        } else {
            let intx = dev.irq_info(VFIO_PCI_INTX_IRQ_INDEX)?;
            if !usable(&intx) {
                return Err(AgentError::Engine(format!(
                    "{} offers neither MSI ({msi:?}) nor INTx ({intx:?}) with an eventfd",
                    dev.name
                )));
            }
            (intx, "intx")
        };
        let efd = EventFd::new()?;
        dev.set_irq_eventfd(info.index, &efd)?;
        Ok(Irq {
            efd,
            index: info.index,
            name,
            automasked: info.flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
        })
    }

    /// Forgets interrupts signalled so far.
    fn drain(&self) -> Result<()> {
        self.efd.wait(Duration::ZERO)?;
        Ok(())
    }
}

/// Writes `descs` into descriptor slots 0.. of the descriptor page (RESULT words 0).
fn write_descs(page: &mut DmaBuffer, descs: &[Descriptor]) -> Result<()> {
    for (i, d) in descs.iter().enumerate() {
        page.write_at(i * dma::DESC_SIZE, &d.to_bytes())?;
    }
    Ok(())
}

/// The RESULT words of descriptor slots 0..n.
fn read_results(page: &DmaBuffer, n: usize) -> Result<Vec<u32>> {
    let mut b = vec![0u8; n * dma::DESC_SIZE];
    page.read_at(0, &mut b)?;
    (0..n)
        .map(|i| {
            dma::result_at(&b, i)
                .ok_or_else(|| AgentError::Engine(format!("descriptor slot {i} out of range")))
        })
        .collect()
}

/// Runs the `n` descriptors at `desc_iova` with no interrupt signalled beforehand; returns
/// STATUS once the batch ended (or the last STATUS read at the timeout) and whether the
/// interrupt arrived.
fn batch(engine: &Engine<'_>, irq: &Irq, desc_iova: u64, n: u32) -> Result<(Status, bool)> {
    irq.drain()?;
    let status = engine.run(desc_iova, n, DMA_TIMEOUT)?;
    let got = irq.efd.wait(DMA_TIMEOUT)?.is_some();
    Ok((status, got))
}

/// Clears STATUS and INT_STATUS, then unmasks an automasked interrupt line.
fn finish(engine: &Engine<'_>, dev: &Device, irq: &Irq) -> Result<()> {
    engine.clear()?;
    if irq.automasked {
        dev.unmask_irq(irq.index)?;
    }
    Ok(())
}

/// The `dma-fault` report of a batch expected to stop on an error (read before [`finish`]).
fn fault_report(
    name: &str,
    engine: &Engine<'_>,
    page: &DmaBuffer,
    status: Status,
    irq: bool,
) -> Result<Report> {
    let code = status.error_code();
    Ok(Report::new("dma-fault")
        .field("name", name)
        .hex("status", u64::from(status.0))
        .field("code", code)
        .field("code_name", dma::code::name(code))
        .hex("error_addr", engine.read64(dma::REG_ERROR_ADDR)?)
        .hex("error_info", u64::from(engine.read(dma::REG_ERROR_INFO)?))
        .hex("result", u64::from(read_results(page, 1)?[0]))
        .field("irq", yes(irq)))
}

fn unmap_all(s: &Session, iova: u64, size: u64) -> Result<()> {
    let unmapped = s.container.unmap_dma(iova, size)?;
    if unmapped != size {
        return Err(AgentError::Vfio(format!(
            "UNMAP_DMA at {iova:#x} unmapped {unmapped:#x} of {size:#x} bytes"
        )));
    }
    Ok(())
}

/// Reads `ID` and fails unless it is the DMA engine's.
fn check_id(engine: &Engine<'_>, bdf: &PciBdf) -> Result<u32> {
    let id = engine.read(dma::REG_ID)?;
    if id != ENGINE_ID {
        return Err(AgentError::Engine(format!(
            "{bdf} reads ID {id:#010x}, not the DMA engine's {ENGINE_ID:#010x}"
        )));
    }
    Ok(id)
}

/// Runs the copy batch of `plan` (FILL src, COPY src -> dst, COMPARE src with dst; `desc` is
/// the descriptor page) with the completion interrupt enabled, and returns what it left with
/// the destination's bytes. The caller reads whatever else it reports, then [`finish`]es.
fn copy_batch(
    engine: &Engine<'_>,
    irq: &Irq,
    plan: &Plan,
    desc: &mut DmaBuffer,
    src: &DmaBuffer,
    dst: &DmaBuffer,
) -> Result<(CopyCheck, Vec<u8>)> {
    engine.clear()?;
    engine.write(dma::REG_CONTROL, CONTROL_IE)?;
    let descs = match plan {
        // At most MAX_LEN (16 MiB), by Layout::new.
        Plan::Iova(l) => vec![
            Descriptor::fill(l.src, FILL_PATTERN, l.len as u32),
            Descriptor::copy(l.src, l.dst, l.len as u32),
            Descriptor::compare(l.src, l.dst, l.len as u32),
        ],
        Plan::Identity(f) => f.copy_batch(FILL_PATTERN),
    };
    let n = descs.len();
    write_descs(desc, &descs)?;
    // At most 3 * IDENTITY_MAX_PAGES descriptors.
    let (status, got_irq) = batch(engine, irq, plan.desc_base(), n as u32)?;
    let results = read_results(desc, n)?;
    let src_ok = dma::holds_pattern(&src.to_vec(), FILL_PATTERN);
    let dst_bytes = dst.to_vec();
    let dst_ok = dma::holds_pattern(&dst_bytes, FILL_PATTERN);
    let check = CopyCheck {
        status,
        results,
        irq: got_irq,
        src_ok,
        dst_ok,
    };
    Ok((check, dst_bytes))
}

/// Where the engine finds the descriptor page and the buffers.
enum Plan {
    /// The default: mapped back to back at IOVAs from `--iova`; one descriptor moves a whole
    /// buffer.
    Iova(Layout),
    /// `--identity`: every page mapped at an IOVA equal to its guest-physical frame; one
    /// descriptor moves one page.
    Identity(PageFrames),
}

impl Plan {
    /// What `DESC_BASE` gets.
    fn desc_base(&self) -> u64 {
        match self {
            Plan::Iova(l) => l.desc,
            Plan::Identity(f) => f.desc,
        }
    }
}

/// The process address of every page of the descriptor page, the source and the destination,
/// in the order of [`PageFrames::pages_by_name`].
fn page_vaddrs(desc: &DmaBuffer, src: &DmaBuffer, dst: &DmaBuffer, page_size: u64) -> Vec<u64> {
    [desc, src, dst]
        .iter()
        .flat_map(|b| {
            let pages = b.len() as u64 / page_size;
            (0..pages).map(move |i| b.vaddr() + i * page_size)
        })
        .collect()
}

/// `--identity`: maps every page of `f` on its own (one `MAP_DMA` of one page each) at an
/// IOVA equal to its guest-physical frame; `vaddrs` are the pages' process addresses, in the
/// same order.
fn map_identity(s: &Session, f: &PageFrames, vaddrs: &[u64]) -> Result<()> {
    let pages = f.pages_by_name();
    if pages.len() != vaddrs.len() {
        return Err(AgentError::Engine(format!(
            "{} frames for {} pages",
            pages.len(),
            vaddrs.len()
        )));
    }
    for ((name, gpa), &vaddr) in pages.iter().zip(vaddrs) {
        s.container
            .map_dma(vaddr, *gpa, s.page_size)
            .map_err(|e| match e {
                AgentError::Os { what, source } => AgentError::Os {
                    what: format!(
                        "{what} of the {name} (vaddr {vaddr:#x}) at the identity IOVA {gpa:#x}, \
                         its guest-physical address: VFIO refused it (an IOVA outside the \
                         IOMMU's input range or in one of its reserved regions, or already \
                         mapped?)"
                    ),
                    source,
                },
                e => e,
            })?;
    }
    Ok(())
}

/// `--identity`: fails if a page's frame now (`now`, read after `MAP_DMA`) is not the one it
/// was mapped at (`f`). `MAP_DMA` pins the pages, but a long-term pin may first migrate a page
/// (out of a movable zone or CMA), and then its IOVA no longer equals its address.
fn check_unmoved(f: &PageFrames, now: &PageFrames) -> Result<()> {
    if now == f {
        return Ok(());
    }
    let moved: Vec<String> = f
        .moved(now)
        .iter()
        .map(|(name, was, is)| format!("{name} {was:#x} -> {is:#x}"))
        .collect();
    Err(AgentError::Engine(format!(
        "pages moved to other frames while MAP_DMA pinned them, so their identity IOVAs no \
         longer equal their guest-physical addresses: {}",
        if moved.is_empty() {
            format!("{f:?} -> {now:?}")
        } else {
            moved.join(", ")
        }
    )))
}

/// `dma-engine`, through VFIO type1 in both modes. In the default (IOVA) mode its reports,
/// in order: `dma-engine-open`, `dma-map`, `dma-batch name=copy`, (`dma-wait`),
/// `dma-batch name=miscompare`, `dma-fault name=unmapped`, (`dma-bench`),
/// `dma-fault name=after-unmap`, (`dma-move`, `dma-move-fault`: `--move-container`, see
/// [`move_container::run`]), `dma-engine-done`. With `--identity` the same without the two
/// `dma-fault`s (and `--move-container` is refused); every page is then mapped on its own at
/// an IOVA equal to its guest-physical frame, so `dma-map`'s `desc_iova`, `src_iova` and
/// `dst_iova` are the first frame of each (`desc_gpa`, the first of `src_gpas`, the first of
/// `dst_gpas`), and the batches hold one descriptor per page (`results=1,1,...` of 3 × pages
/// for the copy batch, pages for the miscompare one). `dma-engine-open` says `iommu=type1`
/// and `mode=iova|identity`.
fn dma_engine(root: &Path, a: &DmaArgs) -> Result<()> {
    // With --identity `a.iova` is the unused default: aligned.
    let s = open_session(root, &a.bdf, a.iova)?;
    let page = s.page_size as usize;
    let layout = if a.identity {
        // By the argument check with 4 KiB pages; checked again on the frames.
        let most = dma::descs_per_page(s.page_size) / dma::IDENTITY_DESCS_PER_PAGE;
        if a.pages > most {
            return Err(AgentError::Usage(format!(
                "--pages {} does not fit: with --identity one {:#x}-byte descriptor page holds \
                 the copy batch of {} pages at most",
                a.pages, s.page_size, most
            )));
        }
        None
    } else {
        Some(Layout::new(a.iova, a.pages, s.page_size).ok_or_else(|| {
            AgentError::Usage(format!(
                "--iova {:#x} --pages {} do not fit (page size {:#x})",
                a.iova, a.pages, s.page_size
            ))
        })?)
    };
    // At most DMA_MAX_PAGES (512) pages, by the argument check.
    let len = a.pages as usize * page;

    // 1. The device: BAR0, memory space and bus master (the kernel refuses BAR accesses
    //    while memory space is off, and the engine DMAs only with bus master on), identity,
    //    interrupt.
    let dev = s.vfio_group.device(&a.bdf)?;
    let engine = Engine::new(&dev)?;
    let command = dev.enable_memory_and_bus_master()?;
    let id = check_id(&engine, &a.bdf)?;
    let cap = Cap(engine.read(dma::REG_CAP)?);
    let irq = Irq::setup(&dev)?;
    emit(
        Report::new("dma-engine-open")
            .field("bdf", a.bdf)
            .hex("id", u64::from(id))
            .hex("cap", u64::from(cap.0))
            .field("irq", irq.name)
            .field("iommu", "type1")
            .field("mode", if a.identity { "identity" } else { "iova" })
            .hex("region0_size", engine.region().size)
            .hex("command", u64::from(command)),
    );

    // 2. Descriptor page, source and destination: mapped back to back at IOVAs, or (identity)
    //    locked, found by their frames and mapped page by page at those.
    let mut desc = DmaBuffer::new(page, 0)?;
    let src = DmaBuffer::new(len, 0x11)?;
    let mut dst = DmaBuffer::new(len, 0x22)?;
    let plan = match layout {
        Some(layout) => {
            s.container
                .map_dma(desc.vaddr(), layout.desc, s.page_size)?;
            s.container.map_dma(src.vaddr(), layout.src, layout.len)?;
            s.container.map_dma(dst.vaddr(), layout.dst, layout.len)?;
            Plan::Iova(layout)
        }
        None => {
            for b in [&desc, &src, &dst] {
                b.lock()?;
            }
            let f = PageFrames::new(
                frames(&desc, s.page_size)?[0],
                frames(&src, s.page_size)?,
                frames(&dst, s.page_size)?,
                s.page_size,
            )?;
            map_identity(&s, &f, &page_vaddrs(&desc, &src, &dst, s.page_size))?;
            Plan::Identity(f)
        }
    };
    let desc_gpa = frames(&desc, s.page_size)?[0];
    let (src_gpas, dst_gpas) = (frames(&src, s.page_size)?, frames(&dst, s.page_size)?);
    if let Plan::Identity(f) = &plan {
        let now = PageFrames {
            desc: desc_gpa,
            src: src_gpas.clone(),
            dst: dst_gpas.clone(),
            page_size: s.page_size,
        };
        check_unmoved(f, &now)?;
    }
    let (desc_iova, src_iova, dst_iova) = match &plan {
        Plan::Iova(l) => (l.desc, l.src, l.dst),
        Plan::Identity(f) => (f.desc, f.src[0], f.dst[0]),
    };
    emit(
        Report::new("dma-map")
            .hex("desc_iova", desc_iova)
            .hex("src_iova", src_iova)
            .hex("dst_iova", dst_iova)
            .hex("len", len as u64)
            .hex("desc_gpa", desc_gpa)
            .field("src_gpas", hex_list(&src_gpas))
            .field("dst_gpas", hex_list(&dst_gpas)),
    );

    // 3. FILL src, COPY src -> dst, COMPARE src with dst, with the completion interrupt.
    let (copy, dst_bytes) = copy_batch(&engine, &irq, &plan, &mut desc, &src, &dst)?;
    let total_desc = engine.read(dma::REG_TOTAL_DESC)?;
    let total_bytes = engine.read64(dma::REG_TOTAL_BYTES)?;
    finish(&engine, &dev, &irq)?;
    emit(
        Report::new("dma-batch")
            .field("name", "copy")
            .hex("status", u64::from(copy.status.0))
            .field("results", dma::results_list(&copy.results))
            .field("irq", yes(copy.irq))
            .field("dst_ok", yes(copy.dst_ok))
            .field("src_ok", yes(copy.src_ok))
            .field("status_ok", yes(copy.status_ok()))
            .field("total_desc", total_desc)
            .field("total_bytes", total_bytes)
            .field(
                "dst_head",
                dma::hex_bytes(&dst_bytes[..dst_bytes.len().min(16)]),
            ),
    );
    let copy_failed = copy.failure("copy batch");

    // The host reads its counters and the translations of the copy batch meanwhile.
    if a.wait_stdin {
        emit(Report::new("dma-wait").field("bdf", a.bdf));
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| AgentError::io("read stdin", e))?;
    }

    // 4. One byte of dst changed behind the engine's back: COMPARE reports a miscompare (in
    //    the descriptor of the page holding it, with identity IOVAs).
    let mut byte = [0u8; 1];
    dst.read_at(len / 2, &mut byte)?;
    byte[0] ^= 0xff;
    dst.write_at(len / 2, &byte)?;
    let (descs, want) = match &plan {
        Plan::Iova(l) => (
            vec![Descriptor::compare(l.src, l.dst, l.len as u32)],
            vec![RESULT_MISCOMPARE],
        ),
        Plan::Identity(f) => {
            let mut want = vec![RESULT_OK; f.pages()];
            want[len / 2 / page] = RESULT_MISCOMPARE;
            (f.compare_batch(), want)
        }
    };
    write_descs(&mut desc, &descs)?;
    let (status, got_irq) = batch(&engine, &irq, plan.desc_base(), descs.len() as u32)?;
    let results = read_results(&desc, descs.len())?;
    finish(&engine, &dev, &irq)?;
    emit(
        Report::new("dma-batch")
            .field("name", "miscompare")
            .hex("status", u64::from(status.0))
            .field("results", dma::results_list(&results))
            .field("irq", yes(got_irq))
            .field(
                "miscompare_ok",
                yes(status.done() && status.miscompare() && results == want),
            ),
    );

    // 5. COPY to an IOVA nothing is mapped at: the destination write faults. (Skipped with
    //    identity IOVAs: the daemon may pass that DMA through untranslated, and then an
    //    unmapped IOVA does not fault but writes whatever guest memory lies at that address.)
    if let Plan::Iova(l) = &plan {
        write_descs(
            &mut desc,
            &[Descriptor::copy(l.src, l.unmapped, l.len as u32)],
        )?;
        let (status, got_irq) = batch(&engine, &irq, l.desc, 1)?;
        let r = fault_report("unmapped", &engine, &desc, status, got_irq)?;
        finish(&engine, &dev, &irq)?;
        emit(r);
    }

    // 7. K one-page copies (source page 0 to destination page 0), each rung and polled on its
    //    own, without the interrupt.
    if a.count > 0 {
        engine.write(dma::REG_CONTROL, 0)?;
        let d = match &plan {
            Plan::Iova(l) => Descriptor::copy(l.src, l.dst, s.page_size as u32),
            Plan::Identity(f) => f.bench_copy(),
        };
        write_descs(&mut desc, &[d])?;
        engine.write64(dma::REG_DESC_BASE, plan.desc_base())?;
        let start = Instant::now();
        for i in 0..a.count {
            let st = engine.ring(1, DMA_TIMEOUT)?;
            if !st.done() || st.error() {
                return Err(AgentError::Engine(format!(
                    "copy {i} of {}: STATUS {:#x} (error code {})",
                    a.count,
                    st.0,
                    dma::code::name(st.error_code())
                )));
            }
            engine.write(dma::REG_STATUS, dma::STATUS_W1C)?;
        }
        let elapsed = start.elapsed();
        engine.clear()?;
        engine.write(dma::REG_CONTROL, CONTROL_IE)?;
        let secs = elapsed.as_secs_f64();
        emit(
            Report::new("dma-bench")
                .field("bdf", a.bdf)
                .field("count", a.count)
                .field("len", s.page_size)
                .field("elapsed_ns", elapsed.as_nanos())
                .field(
                    "ops_per_sec",
                    format!(
                        "{:.1}",
                        if secs > 0.0 {
                            a.count as f64 / secs
                        } else {
                            0.0
                        }
                    ),
                ),
        );
    }

    match &plan {
        // 8. dst unmapped: a COPY to its old IOVA faults.
        Plan::Iova(l) => {
            unmap_all(&s, l.dst, l.len)?;
            write_descs(&mut desc, &[Descriptor::copy(l.src, l.dst, l.len as u32)])?;
            let (status, got_irq) = batch(&engine, &irq, l.desc, 1)?;
            let r = fault_report("after-unmap", &engine, &desc, status, got_irq)?;
            finish(&engine, &dev, &irq)?;
            emit(r);
            unmap_all(&s, l.desc, s.page_size)?;
            unmap_all(&s, l.src, l.len)?;
        }
        // 8. Every page unmapped, one by one as mapped (no fault step: see 5).
        Plan::Identity(f) => {
            for (_, gpa) in f.pages_by_name() {
                unmap_all(&s, gpa, s.page_size)?;
            }
        }
    }
    dev.disable_irq(irq.index)?;
    if let Some(msg) = copy_failed {
        return Err(AgentError::Engine(msg));
    }

    // 9. The group into a new container: the device's file closed first (the engine's
    //    borrow of it ended with its last use), the first container empty since 8.
    if a.move_container {
        let Plan::Iova(old) = &plan else {
            return Err(AgentError::Usage("--move-container with --identity".into()));
        };
        drop(irq);
        drop(dev);
        move_container::run(s, a, old)?;
    }
    emit(Report::new("dma-engine-done").field("bdf", a.bdf));
    Ok(())
}
