//! The DMA engine as a vfio-user PCI function ([`EndpointFunction`]), and the thread that
//! serves it ([`spawn`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::engine::{self, Bus, DmaEngine, EndpointStats};
use super::{DmaTranslator, EndpointSpec};
use crate::vfio::function::{Context, Device, Layout, PciFunction};
use crate::vfio::regions::DmaRegions;

/// The DMA engine behind BAR0, with the IOMMU its DMA goes through.
pub struct DmaEngineDevice {
    engine: DmaEngine,
    iommu: Arc<dyn DmaTranslator>,
}

impl std::fmt::Debug for DmaEngineDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaEngineDevice")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

fn bus<'a>(ctx: &Context<'a>, iommu: &'a dyn DmaTranslator) -> Bus<'a> {
    Bus {
        iommu,
        ram: ctx.ram,
        bus_master: ctx.config.bus_master(),
        pasid_enabled: ctx.config.pasid_enabled(),
        pasid_privileged: ctx.config.pasid_privileged_enabled(),
        max_pasid: ctx.config.max_pasid(),
    }
}

impl Device for DmaEngineDevice {
    fn layout(&self) -> Layout {
        Layout {
            id: engine::FUNCTION,
            bar0_size: engine::BAR0_SIZE,
            pasid_width: Some(engine::PASID_WIDTH),
            device_cap: None,
        }
    }

    fn mmio_read(&mut self, offset: u64, data: &mut [u8], _ctx: &Context<'_>) {
        self.engine.mmio_read(offset, data);
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8], ctx: &Context<'_>) -> bool {
        let b = bus(ctx, &*self.iommu);
        self.engine.mmio_write(offset, data, &b)
    }

    fn interrupt_asserted(&self) -> bool {
        self.engine.interrupt_asserted()
    }

    fn reset(&mut self) {
        self.engine.reset();
    }

    fn interrupted(&self) {
        self.engine
            .stats()
            .interrupts
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The DMA engine as a vfio-user function.
pub type EndpointFunction = PciFunction<DmaEngineDevice>;

impl PciFunction<DmaEngineDevice> {
    /// A DMA engine with requester id `source_id` whose DMA `iommu` translates.
    pub fn dma_engine(
        source_id: u16,
        iommu: Arc<dyn DmaTranslator>,
        stats: Arc<EndpointStats>,
    ) -> Self {
        PciFunction::new(
            DmaEngineDevice {
                engine: DmaEngine::new(source_id, stats),
                iommu,
            },
            DmaRegions::new(),
        )
    }
}

/// A served endpoint, as the control socket reports it.
pub struct EndpointHandle {
    /// What was asked for.
    pub spec: EndpointSpec,
    /// Its counters.
    pub stats: Arc<EndpointStats>,
    /// What the daemon observes of its DMA (the timing model's cycles), when its DMA crosses
    /// the IOMMU.
    pub observed: Option<Arc<super::observe::Observed>>,
}

impl std::fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("spec", &self.spec)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Binds `spec.socket` (replacing a stale socket file) and serves the endpoint on a thread
/// of its own, one connection after another, with its DMA translated by `iommu` (`observed`,
/// when given, is `iommu` with the daemon's observations around it).
pub fn spawn(
    spec: EndpointSpec,
    iommu: Arc<dyn DmaTranslator>,
    observed: Option<Arc<super::observe::Observed>>,
) -> Result<Arc<EndpointHandle>, vfio_user::Error> {
    let handle = Arc::new(EndpointHandle {
        spec,
        stats: Arc::new(EndpointStats::default()),
        observed,
    });
    let function = EndpointFunction::dma_engine(handle.spec.bdf.rid(), iommu, handle.stats.clone());
    let stats = handle.stats.clone();
    crate::vfio::serve(
        format!("endpoint {}", handle.spec.bdf),
        &handle.spec.socket,
        function,
        |_| {},
        move || {
            stats.connections.fetch_add(1, Ordering::Relaxed);
        },
    )?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DaemonConfig, Model};
    use crate::endpoint::engine::*;
    use iommu_emulator::DmaRequest;
    use iommu_emulator::core::{Core, MapFlags};
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use vfio_bindings::bindings::vfio::{
        VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
        VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
        VFIO_PCI_MSI_IRQ_INDEX,
    };
    use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    /// An interrupt line: the function writes 8-byte counts into one end (as into an
    /// eventfd), the test reads them from the other.
    struct Line(UnixStream);

    impl Line {
        fn new() -> (Line, File) {
            let (a, b) = UnixStream::pair().unwrap();
            b.set_nonblocking(true).unwrap();
            (Line(b), File::from(OwnedFd::from(a)))
        }

        /// Signals received since the last call.
        fn take(&mut self) -> usize {
            let mut buf = [0u8; 64];
            let mut n = 0;
            while let Ok(k) = self.0.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            n / 8
        }
    }

    /// The engine's requester id (00:04.0).
    const EP: u16 = 0x20;
    /// Guest RAM: 1 MiB at guest-physical 0.
    const RAM: u64 = 1 << 20;
    /// The IOVA window the tests map: 16 pages at 0x10_0000 to guest-physical 0x4_0000.
    const IOVA: u64 = 0x10_0000;
    const GPA: u64 = 0x4_0000;
    const PAGES: u64 = 16;

    /// The guest's memory, as the memfd QEMU would send.
    fn ram_file() -> File {
        let f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.set_len(RAM).unwrap();
        f
    }

    fn core(model: Model) -> Arc<Core> {
        let cfg = DaemonConfig {
            model,
            ..DaemonConfig::new("/unused").unwrap()
        };
        let ram = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        crate::daemon::build_device(&cfg, &ram)
            .unwrap()
            .core()
            .clone()
    }

    /// A function over `iommu` with the guest's RAM mapped, bus mastering on, and an MSI
    /// eventfd.
    struct Rig {
        f: EndpointFunction,
        ram: File,
        msi: Line,
        stats: Arc<EndpointStats>,
    }

    impl Rig {
        fn new(iommu: Arc<dyn DmaTranslator>) -> Rig {
            let stats = Arc::new(EndpointStats::default());
            let mut f = EndpointFunction::dma_engine(EP, iommu, stats.clone());
            let ram = ram_file();
            f.dma_map(
                DmaMapFlags::READ_WRITE,
                0,
                0,
                RAM,
                Some(ram.try_clone().unwrap()),
            )
            .unwrap();
            f.region_write(7, 4, &[0x06, 0]).unwrap();
            let (msi, fd) = Line::new();
            f.set_irqs(
                VFIO_PCI_MSI_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                1,
                vec![fd],
            )
            .unwrap();
            Rig { f, ram, msi, stats }
        }

        fn rd(&mut self, off: u64) -> u32 {
            let mut b = [0; 4];
            self.f.region_read(0, off, &mut b).unwrap();
            u32::from_le_bytes(b)
        }

        fn wr(&mut self, off: u64, v: u32) {
            self.f.region_write(0, off, &v.to_le_bytes()).unwrap();
        }

        fn poke(&self, gpa: u64, bytes: &[u8]) {
            use std::os::unix::fs::FileExt;
            self.ram.write_all_at(bytes, gpa).unwrap();
        }

        fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
            let mut f = self.ram.try_clone().unwrap();
            let mut b = vec![0; len];
            f.seek(SeekFrom::Start(gpa)).unwrap();
            f.read_exact(&mut b).unwrap();
            b
        }

        /// Writes `descs` at guest-physical `gpa` (IOVA `iova`) and rings the doorbell.
        fn run(&mut self, gpa: u64, iova: u64, descs: &[[u8; 32]]) -> u32 {
            for (i, d) in descs.iter().enumerate() {
                self.poke(gpa + 32 * i as u64, d);
            }
            self.wr(reg::STATUS, 7);
            self.wr(reg::DESC_BASE, iova as u32);
            self.wr(reg::DESC_BASE + 4, (iova >> 32) as u32);
            self.wr(reg::DOORBELL, descs.len() as u32);
            self.rd(reg::STATUS)
        }

        fn result(&self, gpa: u64) -> u32 {
            u32::from_le_bytes(self.peek(gpa + 28, 4).try_into().unwrap())
        }
    }

    fn desc(ctrl: u32, src: u64, dst: u64, len: u32) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0..4].copy_from_slice(&ctrl.to_le_bytes());
        d[8..16].copy_from_slice(&src.to_le_bytes());
        d[16..24].copy_from_slice(&dst.to_le_bytes());
        d[24..28].copy_from_slice(&len.to_le_bytes());
        d
    }

    fn mapped(model: Model) -> Arc<Core> {
        let c = core(model);
        c.attach(1, u32::from(EP), false).unwrap();
        // Page i of the window goes to frame PAGES-1-i: the device's buffers are contiguous
        // in IOVA and scattered in guest RAM.
        for i in 0..PAGES {
            let iova = IOVA + i * 4096;
            c.map(
                1,
                iova,
                iova + 4095,
                GPA + (PAGES - 1 - i) * 4096,
                MapFlags::RW,
            )
            .unwrap();
        }
        c
    }

    /// Guest-physical address of IOVA `iova` in the window.
    fn gpa_of(iova: u64) -> u64 {
        let page = (iova - IOVA) / 4096;
        GPA + (PAGES - 1 - page) * 4096 + (iova & 0xfff)
    }

    const MODELS: [Model; 3] = [Model::Soft, Model::Vtd, Model::Amdvi];

    #[test]
    fn fill_copy_compare_through_every_model() {
        for model in MODELS {
            let core = mapped(model);
            let mut r = Rig::new(core.clone());
            // Descriptors in page 0; src = pages 1-4, dst = pages 5-8 (12 KiB + 100 bytes,
            // unaligned, crossing pages that are not adjacent in guest RAM).
            let (src, dst, len) = (IOVA + 0x1000 + 0x10, IOVA + 0x5000 + 0x30, 0x3064);
            let pat = 0x0123_4567_89ab_cdefu64;
            r.wr(reg::CONTROL, CONTROL_IE);
            let s = r.run(
                gpa_of(IOVA),
                IOVA,
                &[
                    desc(OP_FILL, pat, src, len),
                    desc(OP_COPY, src, dst, len),
                    desc(OP_COMPARE, src, dst, len),
                ],
            );
            assert_eq!(s, STATUS_DONE | (3 << 16), "{model:?}");
            for i in 0..3 {
                assert_eq!(r.result(gpa_of(IOVA + 32 * i)), RESULT_OK, "{model:?}");
            }
            // Every byte of the destination, page by page in guest RAM.
            for off in 0..u64::from(len) {
                let want = pat.to_le_bytes()[(off % 8) as usize];
                assert_eq!(
                    r.peek(gpa_of(dst + off), 1)[0],
                    want,
                    "{model:?} byte {off}"
                );
            }
            // The bytes around the buffer are untouched.
            assert_eq!(r.peek(gpa_of(dst - 1), 1)[0], 0);
            assert_eq!(r.peek(gpa_of(dst + u64::from(len)), 1)[0], 0);
            assert_eq!(r.rd(reg::INT_STATUS), 1);
            assert_eq!(r.msi.take(), 1, "{model:?}: one MSI");
            assert_eq!(r.rd(reg::TOTAL_DESC), 3);
            assert_eq!(r.rd(reg::TOTAL_BYTES), 2 * len);
            let st = &r.stats;
            assert_eq!(st.descriptors.load(Ordering::Relaxed), 3);
            assert_eq!(st.faults.load(Ordering::Relaxed), 0);
            // Every translation the engine asked for reached the model, and the last batch's
            // are kept: the last is the write-back of the third descriptor's RESULT.
            let translations = st.translations.load(Ordering::Relaxed);
            assert!(core.stats().translations >= translations);
            let recent = st.recent.lock().unwrap();
            let last = recent.back().unwrap();
            assert_eq!(last.iova, IOVA + 64 + 28);
            assert_eq!(last.phys, Some(gpa_of(IOVA + 64 + 28)));
            assert!(last.write);
            assert!(
                recent
                    .iter()
                    .any(|t| t.phys == Some(gpa_of(dst)) && t.write)
            );
        }
    }

    #[test]
    fn faults_stop_the_batch_and_reach_the_event_queue() {
        for model in MODELS {
            let core = mapped(model);
            let mut r = Rig::new(core.clone());
            r.wr(reg::CONTROL, CONTROL_IE);
            let hole = IOVA + PAGES * 4096 + 0x40;
            let s = r.run(
                gpa_of(IOVA),
                IOVA,
                &[
                    desc(OP_FILL, 7, IOVA + 0x1000, 16),
                    desc(OP_COPY, IOVA + 0x1000, hole, 16),
                    desc(OP_FILL, 7, IOVA + 0x2000, 16),
                ],
            );
            assert_eq!(
                s,
                STATUS_ERROR | ((ErrorCode::DstFault as u32) << 8) | (1 << 16),
                "{model:?}"
            );
            assert_eq!(r.result(gpa_of(IOVA)), RESULT_OK);
            assert_eq!(r.result(gpa_of(IOVA + 32)), RESULT_ERROR | 3);
            assert_eq!(
                r.result(gpa_of(IOVA + 64)),
                0,
                "later descriptors untouched"
            );
            assert_eq!(r.peek(gpa_of(IOVA + 0x2000), 1)[0], 0);
            assert_eq!(
                u64::from(r.rd(reg::ERROR_ADDR)) | (u64::from(r.rd(reg::ERROR_ADDR + 4)) << 32),
                hole
            );
            assert_eq!(r.rd(reg::ERROR_INFO) >> 16, 1, "a write, without PASID");
            let faults = core.take_faults(8);
            assert_eq!(faults.len(), 1, "{model:?}");
            assert_eq!(
                (faults[0].endpoint, faults[0].address),
                (u32::from(EP), hole)
            );
            assert_eq!(r.stats.faults.load(Ordering::Relaxed), 1);
            assert_eq!(r.stats.errors.load(Ordering::Relaxed), 1);
            assert_eq!(r.msi.take(), 1, "an error interrupts too");

            // After UNMAP the old IOVA faults on the source read.
            core.unmap(1, IOVA + 0x1000, IOVA + 0x1fff).unwrap();
            let s = r.run(
                gpa_of(IOVA),
                IOVA,
                &[desc(OP_COPY, IOVA + 0x1000, IOVA + 0x3000, 16)],
            );
            assert_eq!((s >> 8) & 0xff, ErrorCode::SrcFault as u32, "{model:?}");
            assert_eq!(core.take_faults(8)[0].address, IOVA + 0x1000);
            // Clearing ERROR clears the code; the engine runs the next batch.
            r.wr(reg::STATUS, STATUS_ERROR);
            assert_eq!(r.rd(reg::STATUS) & 0xff02, 0);
            let s = r.run(gpa_of(IOVA), IOVA, &[desc(OP_FILL, 1, IOVA + 0x3000, 8)]);
            assert_eq!(s & 3, STATUS_DONE);
        }
    }

    #[test]
    fn translations_outside_guest_ram_are_dma_errors() {
        let core = mapped(Model::Vtd);
        // A mapping the guest made to an address past its RAM (and one to the BIOS ROM,
        // which QEMU maps without a descriptor).
        core.map(1, 0x80_0000, 0x80_0fff, 0x8000_0000, MapFlags::RW)
            .unwrap();
        core.map(1, 0x81_0000, 0x81_0fff, RAM, MapFlags::RW)
            .unwrap();
        let mut r = Rig::new(core);
        r.f.dma_map(DmaMapFlags::READ, 0, RAM, 0x1000, None)
            .unwrap();
        for (n, iova) in [0x80_0000u64, 0x81_0000].into_iter().enumerate() {
            let s = r.run(gpa_of(IOVA), IOVA, &[desc(OP_FILL, 1, iova, 8)]);
            assert_eq!((s >> 8) & 0xff, ErrorCode::NotRam as u32);
            assert_eq!(u64::from(r.rd(reg::ERROR_ADDR)), iova);
            assert_eq!(r.stats.not_ram.load(Ordering::Relaxed), n as u64 + 1);
            assert_eq!(r.result(gpa_of(IOVA)), RESULT_ERROR | 4);
        }
    }

    #[test]
    fn bad_doorbells_descriptors_and_bus_mastering_are_refused_with_their_codes() {
        let core = mapped(Model::Soft);
        let mut r = Rig::new(core.clone());
        let code = |s: u32| (s >> 8) & 0xff;
        let s = r.run(gpa_of(IOVA), IOVA, &[]);
        assert_eq!(code(s), ErrorCode::BadDoorbell as u32, "a doorbell of 0");
        r.wr(reg::DOORBELL, MAX_BATCH + 1);
        assert_eq!(code(r.rd(reg::STATUS)), ErrorCode::BadDoorbell as u32);
        for (d, why) in [
            (desc(9, 0, IOVA + 0x1000, 8), "opcode"),
            (desc(OP_FILL, 0, IOVA + 0x1000, 0), "LEN 0"),
            (
                desc(OP_FILL, 0, IOVA + 0x1000, MAX_LEN + 1),
                "LEN too large",
            ),
            (
                desc(OP_FILL | CTRL_PASID, 0, IOVA + 0x1000, 8),
                "PASID not enabled",
            ),
            (
                desc(OP_FILL | CTRL_PRIV, 0, IOVA + 0x1000, 8),
                "privileged without PASID",
            ),
        ] {
            let s = r.run(gpa_of(IOVA), IOVA, &[d]);
            assert_eq!(code(s), ErrorCode::BadDescriptor as u32, "{why}");
            assert_eq!(r.result(gpa_of(IOVA)), RESULT_ERROR | 5, "{why}");
        }
        assert_eq!(
            r.peek(gpa_of(IOVA + 0x1000), 8),
            [0; 8],
            "nothing was written"
        );
        // With Bus Master Enable clear the engine issues no DMA at all.
        r.poke(gpa_of(IOVA) + 28, &[0; 4]);
        r.f.region_write(7, 4, &[0x02, 0]).unwrap();
        let before = core.stats().translations;
        let s = r.run(gpa_of(IOVA), IOVA, &[desc(OP_FILL, 1, IOVA + 0x1000, 8)]);
        assert_eq!(code(s), ErrorCode::NoBusMaster as u32);
        assert_eq!(r.result(gpa_of(IOVA)), 0, "not even the write-back");
        assert_eq!(core.stats().translations, before);
        // Register accesses outside BAR0, and regions that do not exist, are refused.
        let mut b = [0u8; 4];
        assert!(r.f.region_read(0, 4094, &mut b).is_err());
        assert!(r.f.region_write(0, 4096, &b).is_err());
        assert!(r.f.region_read(2, 0, &mut b).is_err());
        assert!(r.f.region_read(7, 4096, &mut b).is_err());
        // Reset: registers back, totals kept.
        let total = r.rd(reg::TOTAL_ERRORS);
        r.wr(reg::CONTROL, CONTROL_RESET);
        assert_eq!((r.rd(reg::STATUS), r.rd(reg::CONTROL)), (0, 0));
        assert_eq!(r.rd(reg::TOTAL_ERRORS), total);
        assert_eq!(r.rd(reg::ID), ENGINE_ID);
    }

    /// Records the requests it sees and translates as identity.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<DmaRequest>>);

    impl DmaTranslator for Recorder {
        fn translate(
            &self,
            req: &DmaRequest,
        ) -> Result<iommu_emulator::Translation, iommu_emulator::Fault> {
            self.0.lock().unwrap().push(*req);
            crate::endpoint::NoIommu.translate(req)
        }
    }

    #[test]
    fn pasid_descriptors_tag_their_requests_once_pasid_is_enabled() {
        let rec = Arc::new(Recorder::default());
        let mut r = Rig::new(rec.clone());
        // PASID Enable and Privileged Mode Enable in the PASID capability.
        r.f.region_write(7, 0x106, &[0x05, 0]).unwrap();
        let mut d = desc(OP_FILL | CTRL_PASID | CTRL_PRIV, 0xaa, 0x2000, 16);
        d[4..8].copy_from_slice(&0x1_2345u32.to_le_bytes());
        r.wr(reg::DESC_PASID, DESC_PASID_VALID | 7);
        let s = r.run(0x1000, 0x1000, &[d]);
        assert_eq!(s & 3, STATUS_DONE);
        let reqs = rec.0.lock().unwrap().clone();
        // The fetch and write-back carry DESC_PASID, the data the descriptor's PASID.
        assert_eq!(reqs.first().unwrap().pasid, Some(7));
        assert!(!reqs.first().unwrap().privileged);
        assert_eq!(reqs.last().unwrap().pasid, Some(7));
        let data: Vec<_> = reqs.iter().filter(|q| q.addr == 0x2000).collect();
        assert_eq!(data.len(), 1);
        assert_eq!((data[0].pasid, data[0].privileged), (Some(0x1_2345), true));
        assert!(data.iter().all(|q| q.source_id == EP));
        assert_eq!(r.peek(0x2000, 2), [0xaa, 0]);
        // A PASID wider than the capability's, or DESC_PASID once PASID is disabled.
        let mut wide = d;
        wide[4..8].copy_from_slice(&0xf_ffffu32.to_le_bytes());
        r.f.region_write(7, 0x106, &[0x00, 0]).unwrap();
        let s = r.run(0x1000, 0x1000, &[wide]);
        assert_eq!((s >> 8) & 0xff, ErrorCode::BadDoorbell as u32);
    }

    #[test]
    fn intx_fires_when_no_msi_is_set_and_refires_on_unmask_while_pending() {
        let mut r = Rig::new(Arc::new(crate::endpoint::NoIommu));
        // Drop MSI (as QEMU does when the guest disables it) and give INTx.
        r.f.set_irqs(
            VFIO_PCI_MSI_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            vec![],
        )
        .unwrap();
        let (mut intx, fd) = Line::new();
        r.f.set_irqs(
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            vec![fd],
        )
        .unwrap();
        let fill = [desc(OP_FILL, 1, 0x2000, 8)];
        r.run(0x1000, 0x1000, &fill);
        assert_eq!(intx.take(), 0, "IE clear: no interrupt");
        r.wr(reg::CONTROL, CONTROL_IE);
        r.wr(reg::INT_STATUS, 1);
        r.run(0x1000, 0x1000, &fill);
        assert_eq!(intx.take(), 1);
        // Automasked: a second completion does not signal until the client unmasks; the
        // line is still asserted then, so the unmask fires it.
        r.run(0x1000, 0x1000, &fill);
        assert_eq!(intx.take(), 0);
        let unmask = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK;
        r.f.set_irqs(VFIO_PCI_INTX_IRQ_INDEX, unmask, 0, 1, vec![])
            .unwrap();
        assert_eq!(intx.take(), 1);
        // Acknowledged (INT_STATUS cleared) before the unmask: nothing fires.
        r.wr(reg::INT_STATUS, 1);
        r.f.set_irqs(VFIO_PCI_INTX_IRQ_INDEX, unmask, 0, 1, vec![])
            .unwrap();
        assert_eq!(intx.take(), 0);
        // Interrupt Disable in the Command register.
        r.f.region_write(7, 4, &[0x06, 0x04]).unwrap();
        r.run(0x1000, 0x1000, &fill);
        assert_eq!(intx.take(), 0);
        assert_eq!(r.stats.interrupts.load(Ordering::Relaxed), 2);
        // The error and request notifiers are taken (QEMU sets them up for its error
        // recovery) and never signalled.
        let (mut err, fd) = Line::new();
        let trigger = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
        r.f.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, trigger, 0, 1, vec![fd])
            .unwrap();
        r.run(0x1000, 0x1000, &fill);
        assert_eq!(err.take(), 0);
        // Bad SET_IRQS requests change nothing.
        assert!(
            r.f.set_irqs(
                2,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                1,
                vec![]
            )
            .is_err()
        );
        assert!(
            r.f.set_irqs(
                VFIO_PCI_MSI_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                1,
                vec![]
            )
            .is_err()
        );
        assert!(
            r.f.set_irqs(
                VFIO_PCI_MSI_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                1,
                1,
                vec![]
            )
            .is_err()
        );
    }

    #[test]
    fn dma_region_messages_keep_the_state_on_error() {
        let mut r = Rig::new(Arc::new(crate::endpoint::NoIommu));
        assert!(
            r.f.dma_map(DmaMapFlags::READ_WRITE, 0, 0x1000, 0x1000, None)
                .is_err(),
            "overlaps RAM"
        );
        assert!(
            r.f.dma_unmap(DmaUnmapFlags::empty(), 0, 0x1000).is_err(),
            "splits RAM"
        );
        assert!(
            r.f.dma_unmap(DmaUnmapFlags::GET_DIRTY_PAGE_INFO, 0, RAM)
                .is_err()
        );
        assert_eq!(r.f.ram().list(), vec![(0, RAM, true)]);
        let s = r.run(0x1000, 0x1000, &[desc(OP_FILL, 3, 0x2000, 8)]);
        assert_eq!(s & 3, STATUS_DONE);
        r.f.dma_unmap(DmaUnmapFlags::empty(), 0, RAM).unwrap();
        let s = r.run(0x1000, 0x1000, &[desc(OP_FILL, 3, 0x2000, 8)]);
        assert_eq!(
            (s >> 8) & 0xff,
            ErrorCode::NotRam as u32,
            "RAM is gone with its region"
        );
    }

    #[test]
    fn the_server_serves_one_client_after_another() {
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let core = mapped(Model::Vtd);
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let sock = dir.as_path().join("ep.sock");
        let spec = EndpointSpec {
            kind: crate::endpoint::EndpointKind::Dma,
            bdf: iommu_emulator::PciBdf::from_rid(0, EP),
            socket: sock.clone(),
            bypass_iommu: false,
        };
        let h = spawn(spec, core.clone(), None).unwrap();
        let ram = ram_file();
        for round in 0..2u8 {
            let mut c = vfio_user::Client::new(&sock).unwrap();
            let mut b = [0u8; 4];
            c.region_read(7, 0, &mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), 0x1dae_1234);
            c.dma_map(0, 0, RAM, std::os::fd::AsRawFd::as_raw_fd(&ram))
                .unwrap();
            c.region_write(7, 4, &[0x06, 0]).unwrap();
            let msi = EventFd::new(EFD_NONBLOCK).unwrap();
            c.set_irqs(
                VFIO_PCI_MSI_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                1,
                &[std::os::fd::AsRawFd::as_raw_fd(&msi)],
            )
            .unwrap();
            use std::os::unix::fs::FileExt;
            let d = desc(OP_FILL, 0x11 * u64::from(round + 1), IOVA + 0x1000, 8);
            ram.write_all_at(&d, gpa_of(IOVA)).unwrap();
            c.region_write(0, reg::CONTROL, &CONTROL_IE.to_le_bytes())
                .unwrap();
            c.region_write(0, reg::DESC_BASE, &(IOVA as u32).to_le_bytes())
                .unwrap();
            c.region_write(0, reg::DOORBELL, &1u32.to_le_bytes())
                .unwrap();
            c.region_read(0, reg::STATUS, &mut b).unwrap();
            assert_eq!(
                u32::from_le_bytes(b),
                STATUS_DONE | (1 << 16),
                "round {round}"
            );
            assert_eq!(msi.read().unwrap(), 1);
            let mut got = [0u8; 1];
            ram.read_exact_at(&mut got, gpa_of(IOVA + 0x1000)).unwrap();
            assert_eq!(got[0], 0x11 * (round + 1));
            drop(c);
            // The server notices the disconnect and resets before serving again.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while h.stats.connections.load(Ordering::Relaxed) <= u64::from(round) {
                assert!(std::time::Instant::now() < deadline, "no disconnect seen");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        assert_eq!(h.stats.descriptors.load(Ordering::Relaxed), 2);
    }

    fn iova_strategy() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            (0..PAGES * 4096).prop_map(|o| IOVA + o),
            any::<u64>(),
            (0u64..0x10_0000),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever a guest programs (registers, descriptors with any opcode, address,
        /// length, PASID flags), the engine never panics, and its writes stay inside the
        /// pages the IOMMU maps for it: guest RAM outside them is untouched.
        #[test]
        fn arbitrary_programming_never_escapes_the_mapped_pages(
            descs in proptest::collection::vec(
                (0u32..5, proptest::prelude::any::<bool>(), iova_strategy(), iova_strategy(),
                 proptest::prop_oneof![1u32..0x3000, proptest::prelude::any::<u32>()]),
                1..6),
            writes in proptest::collection::vec((0u64..0x60, proptest::prelude::any::<u32>()), 0..12),
        ) {
            let core = mapped(Model::Soft);
            let mut r = Rig::new(core);
            let raw: Vec<[u8; 32]> = descs
                .iter()
                .map(|&(op, pasid, src, dst, len)| {
                    desc(op | if pasid { CTRL_PASID } else { 0 }, src, dst, len)
                })
                .collect();
            r.wr(reg::CONTROL, CONTROL_IE);
            r.run(gpa_of(IOVA), IOVA, &raw);
            for (off, v) in writes {
                r.wr(off & !3, v);
            }
            r.wr(reg::DESC_BASE, IOVA as u32);
            r.wr(reg::DESC_BASE + 4, 0);
            r.wr(reg::DOORBELL, raw.len() as u32);
            let all = r.peek(0, RAM as usize);
            let window = GPA as usize..(GPA + PAGES * 4096) as usize;
            proptest::prop_assert!(
                all.iter()
                    .enumerate()
                    .all(|(i, b)| *b == 0 || window.contains(&i)),
                "a write outside the mapped pages"
            );
        }
    }

    #[test]
    fn straight_through_a_unit_dma_is_translated_and_faults_stay_in_the_unit() {
        for model in [Model::Vtd, Model::Amdvi] {
            let core = mapped(model);
            let unit = core.unit().clone();
            let mut r = Rig::new(Arc::new(crate::endpoint::UnitTranslator(unit.clone())));
            let s = r.run(
                gpa_of(IOVA),
                IOVA,
                &[desc(OP_FILL, 0x5a, IOVA + 0x1000, 4096)],
            );
            assert_eq!(s & 3, STATUS_DONE, "{model:?}");
            // The pattern's first byte at every 8th byte of the page, nothing past it.
            assert_eq!(r.peek(gpa_of(IOVA + 0x1000), 1)[0], 0x5a);
            assert_eq!(r.peek(gpa_of(IOVA + 0x1ff8), 1)[0], 0x5a);
            assert_eq!(r.peek(gpa_of(IOVA + 0x2000), 1)[0], 0);
            let faults_before = unit.stats().faults;
            let s = r.run(gpa_of(IOVA), IOVA, &[desc(OP_FILL, 1, 0xdead_0000, 8)]);
            assert_eq!((s >> 8) & 0xff, ErrorCode::DstFault as u32, "{model:?}");
            // The unit saw the fault (its log is the guest driver's to read under the register
            // front); the core's event queue did not, since the core was not asked.
            assert_eq!(unit.stats().faults, faults_before + 1, "{model:?}");
            assert!(core.take_faults(8).is_empty(), "{model:?}");
        }
    }
}
