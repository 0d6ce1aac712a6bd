//! What the daemon observes of an endpoint's DMA, beside translating it: the cycles each
//! translation costs in the timing model (a per-endpoint histogram), and a recording of the
//! requests in the trace-file format `iommu-sim replay` reads
//! ([`iommu_emulator::sim::trace_file`]).
//!
//! The timing model never changes a translation: the request is translated as it would be
//! without it, with its trace on, and the trace is then priced ([`CostModel::cost`]). Without
//! timing and without a recording, the translation takes the untraced fast path.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use iommu_emulator::sim::trace_file::{self, TraceRecord};
use iommu_emulator::timing::{CostModel, Histogram, LatencySummary, TimingParams};
use iommu_emulator::{DmaRequest, Fault, Trace, Translation};

use super::DmaTranslator;

thread_local! {
    /// Each endpoint thread's trace, reused from one translation to the next.
    static TRACE: RefCell<Trace> = RefCell::new(Trace::new());
}

/// A recording in progress: the file, when it began, how many requests it holds.
struct Recording {
    out: BufWriter<File>,
    path: PathBuf,
    start: Instant,
    records: u64,
}

/// The daemon's one recorder, shared by every endpoint: the control socket's `record` command
/// starts and stops it.
#[derive(Default)]
pub struct Recorder {
    on: AtomicBool,
    current: Mutex<Option<Recording>>,
    /// Requests that could not be written (the file's error is logged once per recording).
    pub lost: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("on", &self.on.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a finished recording holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The file.
    pub path: PathBuf,
    /// Requests written.
    pub records: u64,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Recording>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts recording to `path` (created or truncated), ending any recording in progress,
    /// which is returned. When `path` cannot be created, the recording in progress goes on.
    pub fn start(&self, path: &Path) -> std::io::Result<Option<Recorded>> {
        let mut cur = self.lock();
        // The recording in progress writes what it buffered before `path` is truncated: when
        // `path` is its own file, those writes would otherwise land in the new recording.
        if let Some(r) = cur.as_mut()
            && let Err(e) = r.out.flush()
        {
            log::warn!("recording {}: {e}", r.path.display());
        }
        let out = BufWriter::new(File::create(path)?);
        let previous = cur.take().map(Self::finish);
        *cur = Some(Recording {
            out,
            path: path.to_path_buf(),
            start: Instant::now(),
            records: 0,
        });
        self.on.store(true, Ordering::Release);
        Ok(previous)
    }

    /// Stops the recording in progress, if any, flushing its file.
    pub fn stop(&self) -> Option<Recorded> {
        let mut cur = self.lock();
        self.on.store(false, Ordering::Release);
        cur.take().map(Self::finish)
    }

    fn finish(mut r: Recording) -> Recorded {
        if let Err(e) = r.out.flush() {
            log::warn!("recording {}: {e}", r.path.display());
        }
        Recorded {
            path: r.path,
            records: r.records,
        }
    }

    /// Whether a recording is in progress.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Appends `req`, timed from the recording's start.
    pub fn record(&self, req: &DmaRequest) {
        let mut cur = self.lock();
        let Some(r) = cur.as_mut() else { return };
        let rec = TraceRecord {
            t: u64::try_from(r.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            source: req.source_id,
            pasid: req.pasid,
            addr: req.addr,
            len: req.len.max(1),
            access: req.access.into(),
        };
        match trace_file::write(&mut r.out, &rec) {
            Ok(()) => r.records += 1,
            Err(e) => {
                if self.lost.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!("recording {}: {e}", r.path.display());
                }
            }
        }
    }
}

/// An endpoint's translator with the daemon's observations around it.
pub struct Observed {
    inner: Arc<dyn DmaTranslator>,
    /// The timing model and this endpoint's histogram of translation cycles.
    timing: Option<Mutex<(CostModel, Histogram)>>,
    recorder: Arc<Recorder>,
}

impl Observed {
    /// `inner`, priced with `timing` when given, recorded by `recorder` while it records.
    pub fn new(
        inner: Arc<dyn DmaTranslator>,
        timing: Option<&TimingParams>,
        recorder: Arc<Recorder>,
    ) -> Self {
        Observed {
            inner,
            timing: timing.map(|p| Mutex::new((CostModel::new(p), Histogram::default()))),
            recorder,
        }
    }

    /// The distribution of this endpoint's translation cycles so far, if it is timed.
    pub fn cycles(&self) -> Option<LatencySummary> {
        self.timing
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).1.summary())
    }
}

impl DmaTranslator for Observed {
    fn translate(&self, req: &DmaRequest) -> Result<Translation, Fault> {
        if self.recorder.is_on() {
            self.recorder.record(req);
        }
        let Some(timing) = &self.timing else {
            return self.inner.translate(req);
        };
        TRACE.with(|t| {
            let mut trace = t.borrow_mut();
            let result = self.inner.translate_traced(req, &mut trace);
            let mut m = timing.lock().unwrap_or_else(|p| p.into_inner());
            let (model, hist) = &mut *m;
            let cost = model.cost(&trace);
            hist.record(cost.total);
            result
        })
    }

    fn translate_traced(&self, req: &DmaRequest, trace: &mut Trace) -> Result<Translation, Fault> {
        self.inner.translate_traced(req, trace)
    }
}

/// The daemon's observers: the recorder every endpoint writes to, and the timing model the
/// control socket's `translate` prices its translations with.
#[derive(Debug, Default)]
pub struct Observers {
    /// The recorder.
    pub recorder: Arc<Recorder>,
    params: Option<TimingParams>,
    model: Option<Mutex<CostModel>>,
}

impl Observers {
    /// Observers pricing with `timing` (none: no timing).
    pub fn new(timing: Option<&TimingParams>) -> Self {
        Observers {
            recorder: Arc::default(),
            params: timing.cloned(),
            model: timing.map(|p| Mutex::new(CostModel::new(p))),
        }
    }

    /// The timing parameters, if timing is on.
    pub fn timing(&self) -> Option<&TimingParams> {
        self.params.as_ref()
    }

    /// The cost of the translation `trace` records, if timing is on.
    pub fn cost(&self, trace: &Trace) -> Option<iommu_emulator::timing::Cost> {
        self.model
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).cost(trace))
    }

    /// `inner` with these observations around it, for one endpoint.
    pub fn endpoint(&self, inner: Arc<dyn DmaTranslator>) -> Arc<Observed> {
        Arc::new(Observed::new(
            inner,
            self.params.as_ref(),
            self.recorder.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::UnitTranslator;
    use iommu_emulator::core::{MapFlags, Mapping};
    use iommu_emulator::driver::EndpointMode;
    use iommu_emulator::timing::Preset;
    use iommu_emulator::{AccessKind, Driver, PrivateRegion, VtdConfig, VtdDriver, VtdMode};
    use pagewalk::SparseMem;

    /// A VT-d unit whose endpoint 0x20 maps one page at 0x10_0000.
    fn translator() -> Arc<dyn DmaTranslator> {
        let d = VtdDriver::with_unit(
            SparseMem::new(0x2000_0000),
            VtdConfig::default(),
            PrivateRegion {
                base: 0x1000_0000,
                size: 4096 * 1024,
            },
            VtdMode::Legacy,
        )
        .unwrap();
        let dom = d.domain_alloc().unwrap();
        d.map(
            dom,
            &Mapping {
                virt_start: 0x10_0000,
                virt_end: 0x10_0fff,
                phys_start: 0x30_0000,
                flags: MapFlags::RW,
            },
        )
        .unwrap();
        d.set_endpoint(0x20, EndpointMode::Translated(dom)).unwrap();
        Arc::new(UnitTranslator(d.unit()))
    }

    #[test]
    fn timed_translations_are_the_untimed_ones_and_their_cycles_are_counted() {
        let inner = translator();
        let params = Preset::VtdServer.params();
        let timed = Observed::new(inner.clone(), Some(&params), Arc::default());
        let plain = Observed::new(inner.clone(), None, Arc::default());
        let hit = DmaRequest::new(0x20, 0x10_0010, 8, AccessKind::Read);
        let miss = DmaRequest::new(0x20, 0x20_0000, 8, AccessKind::Read);
        for r in [hit, hit, miss] {
            assert_eq!(timed.translate(&r), inner.translate(&r));
            assert_eq!(plain.translate(&r), inner.translate(&r));
        }
        let c = timed.cycles().unwrap();
        assert_eq!(c.count, 3);
        // The first translation walked (a miss); the next hit the IOTLB: they differ.
        assert!(c.max > c.min, "{c:?}");
        assert_eq!(plain.cycles(), None);
    }

    #[test]
    fn a_recording_is_a_trace_file_replay_reads() {
        let dir = std::env::temp_dir().join(format!("observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.jsonl");
        let obs = Observers::new(None);
        let e = obs.endpoint(translator());
        let r = DmaRequest::new(0x20, 0x10_0010, 8, AccessKind::Write);
        e.translate(&r).unwrap();
        assert_eq!(obs.recorder.start(&path).unwrap(), None);
        for _ in 0..3 {
            let _ = e.translate(&r);
        }
        let _ = e.translate(&DmaRequest::new(0x20, 0x99_0000, 0, AccessKind::Read).with_pasid(5));
        let done = obs.recorder.stop().unwrap();
        assert_eq!(done.records, 4);
        e.translate(&r).unwrap();
        let recs = trace_file::read(std::io::BufReader::new(File::open(&path).unwrap())).unwrap();
        assert_eq!(recs.len(), 4, "nothing before the start or after the stop");
        assert_eq!(
            (recs[0].source, recs[0].addr, recs[0].len),
            (0x20, 0x10_0010, 8)
        );
        assert_eq!(recs[0].access, trace_file::Access::Write);
        assert_eq!(
            (recs[3].pasid, recs[3].len),
            (Some(5), 1),
            "a zero length is one byte"
        );
        assert!(recs.windows(2).all(|w| w[0].t <= w[1].t));
        assert!(obs.recorder.stop().is_none());
        // A new recording to the file of the one in progress holds only its own records
        // (the old one's buffered records once landed in it after the truncation; found by
        // the `control_lines` fuzz target).
        assert_eq!(obs.recorder.start(&path).unwrap(), None);
        for _ in 0..3 {
            let _ = e.translate(&r);
        }
        let old = obs.recorder.start(&path).unwrap().unwrap();
        assert_eq!(old.records, 3);
        let _ = e.translate(&r);
        assert_eq!(obs.recorder.stop().unwrap().records, 1);
        let recs = trace_file::read(std::io::BufReader::new(File::open(&path).unwrap())).unwrap();
        assert_eq!(recs.len(), 1, "{recs:?}");
        // A file that cannot be created is an error, and nothing starts.
        assert!(obs.recorder.start(&dir.join("no/such/dir")).is_err());
        assert!(!obs.recorder.is_on());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
