//! The vhost-user backend: the request queue, the event queue and the configuration space
//! served over the vhost-user protocol with `vhost-user-backend`.
//!
//! Latency: a guest's virtio-iommu driver waits for each request before it sends the next, so
//! what a request costs end to end is mostly the notification path (the driver's kick, the
//! worker thread's wakeup). With `VIRTIO_RING_F_EVENT_IDX` the request queue is therefore
//! polled for a short window ([`DEFAULT_REQUEST_POLL`], [`IommuBackend::set_request_poll`])
//! after it runs dry, with notifications still suppressed: a request the driver adds in that
//! window is served without a kick or a wakeup. The window is bounded, so the worker returns
//! to its event loop (exit, event queue, faults) within it.
//!
//! Device reset: QEMU's `vhost-user-test-device-pci` (hw/virtio/vhost-user-base.c) never sends
//! `VHOST_USER_RESET_DEVICE`. At a virtio reset (the driver writing 0 to `device_status`, or a
//! system reset, such as a guest reboot) it stops the device with `vhost_dev_stop`: a
//! `GET_VRING_BASE` on every ring (and `SET_STATUS` 0, which needs
//! `VHOST_USER_PROTOCOL_F_STATUS`, not offered here). When the next driver sets `DRIVER_OK`,
//! `vhost_dev_start` sends `SET_FEATURES`, the memory table and each ring's size, base,
//! addresses and fds again. A VM stop (`stop`, a snapshot) sends exactly the same stop and
//! start, so the stop alone cannot tell a reset: what does is the base the ring starts again
//! at. QEMU zeroes every queue's `last_avail_idx` at a virtio reset and restores the base
//! `GET_VRING_BASE` returned after a VM stop. The backend therefore records the request
//! queue's base when it is stopped and, when the rings run again, before anything is served
//! on either queue, resets the device (every endpoint detached, every domain freed, queued
//! fault events dropped; `bypass` kept, virtio 1.3 §5.13.4) unless the request queue starts
//! again exactly where it stopped, at a non-zero base. A base of zero is always a reset (a
//! wrapped index is the one case where a VM stop is taken for a reset: the safe mistake).
//! Between the stop and the restart the device keeps its state, as it must across a VM stop.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use iommu_emulator::core::FAULT_QUEUE_DEPTH;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::device::{DEVICE_FEATURES, IommuDevice};
use crate::protocol::{EVENT_QUEUE, NUM_QUEUES, REQUEST_QUEUE};

/// The epoll token of the fault notifier (tokens up to `NUM_QUEUES` belong to the vrings and
/// the exit event). The backend also signals it itself when it stops serving the request
/// queue with requests left (its per-event bound), so that it comes back to them.
pub const FAULT_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Largest queue size the backend accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// How long the request queue is polled, by default, after it runs dry (see the module notes).
pub const DEFAULT_REQUEST_POLL: Duration = Duration::from_micros(100);

/// Longest polling window [`IommuBackend::set_request_poll`] accepts.
pub const MAX_REQUEST_POLL: Duration = Duration::from_secs(1);

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Errors of the vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// An event fd could not be created.
    #[error("cannot create an event fd: {0}")]
    EventFd(io::Error),
    /// A queue operation failed.
    #[error("virtqueue error: {0}")]
    Queue(virtio_queue::Error),
    /// An event arrived for an unknown token.
    #[error("unexpected event {0}")]
    UnknownEvent(u16),
    /// Guest memory is not set up yet.
    #[error("no guest memory table yet")]
    NoMemory,
}

impl From<BackendError> for io::Error {
    fn from(e: BackendError) -> Self {
        io::Error::other(e)
    }
}

/// The virtio-iommu vhost-user backend.
#[derive(Debug)]
pub struct IommuBackend {
    device: Arc<IommuDevice>,
    mem: RwLock<Option<Mem>>,
    event_idx: AtomicBool,
    exit: Mutex<(EventConsumer, EventNotifier)>,
    fault_consumer: EventConsumer,
    /// Signals [`FAULT_EVENT`] to bring the worker back to requests it left.
    wake: EventNotifier,
    /// The request queue was left with requests available (see [`FAULT_EVENT`]).
    requests_pending: AtomicBool,
    /// The request-queue polling window in nanoseconds (0: no polling).
    request_poll_ns: AtomicU64,
    /// Requests served while polling, i.e. without a kick.
    polled: AtomicU64,
    /// What tells a virtio reset from a VM stop (see the module notes).
    restart: RingRestart,
}

/// The request queue's positions that tell, when the rings start again after a stop, whether
/// the stop was a virtio reset (see the module notes).
#[derive(Debug, Default)]
struct RingRestart {
    /// The request queue's next available index after the last batch the worker took (or
    /// where the last restart put it): what `GET_VRING_BASE` returns for it.
    next_avail: AtomicU16,
    /// Whether `stopped_at` holds a stop: the lock-free check every event makes before it
    /// takes the lock (set and cleared under the lock, with `stopped_at`).
    stopped: AtomicBool,
    /// The request queue's base at the stop, until the rings run again.
    stopped_at: Mutex<Option<u16>>,
}

impl RingRestart {
    fn forget(&self) {
        let mut at = self.stopped_at.lock().unwrap_or_else(|e| e.into_inner());
        *at = None;
        self.stopped.store(false, Ordering::Release);
        self.next_avail.store(0, Ordering::Release);
    }
}

impl IommuBackend {
    /// A backend for `device`. Faults the core records kick the event queue.
    pub fn new(device: Arc<IommuDevice>) -> Result<Self, BackendError> {
        let exit =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(BackendError::EventFd)?;
        let (fault_consumer, fault_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(BackendError::EventFd)?;
        let wake = fault_notifier.try_clone().map_err(BackendError::EventFd)?;
        device.core().set_fault_notifier(move || {
            if let Err(e) = fault_notifier.notify() {
                log::warn!("cannot kick the event queue: {e}");
            }
        });
        Ok(Self {
            device,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            exit: Mutex::new(exit),
            fault_consumer,
            wake,
            requests_pending: AtomicBool::new(false),
            request_poll_ns: AtomicU64::new(DEFAULT_REQUEST_POLL.as_nanos() as u64),
            polled: AtomicU64::new(0),
            restart: RingRestart::default(),
        })
    }

    /// The front end went away: a system reset for the device ([`IommuDevice::system_reset`]),
    /// and the next front end starts from fresh rings.
    pub fn front_end_gone(&self) -> Result<(), crate::device::DeviceError> {
        self.restart.forget();
        self.requests_pending.store(false, Ordering::Release);
        self.device.system_reset()
    }

    /// Called before any event is served: if the request queue was stopped and runs again,
    /// resets the device unless the ring resumed exactly where it stopped (see the module
    /// notes).
    fn settle_restart(&self, req: &VringRwLock) {
        if !self.restart.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut at = self
            .restart
            .stopped_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(stopped) = *at else {
            return;
        };
        let (ready, base) = {
            let state = req.get_ref();
            let q = state.get_queue();
            (q.ready(), q.next_avail())
        };
        if !ready {
            // Still stopped (an event for the other ring, or a fault).
            return;
        }
        *at = None;
        self.restart.stopped.store(false, Ordering::Release);
        self.restart.next_avail.store(base, Ordering::Release);
        if base != 0 && base == stopped {
            log::info!("rings resumed at request index {base}: device state kept");
            return;
        }
        log::info!(
            "rings restarted at request index {base} after stopping at {stopped}: \
             virtio reset, resetting the device"
        );
        self.requests_pending.store(false, Ordering::Release);
        if let Err(e) = self.device.reset_after_renegotiation() {
            log::error!("device reset at ring restart failed: {e}");
        }
    }

    /// Sets how long the request queue is polled after it runs dry (zero: never; at most
    /// [`MAX_REQUEST_POLL`], longer windows are clamped). Polling only happens with
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    pub fn set_request_poll(&self, window: Duration) {
        let w = window.min(MAX_REQUEST_POLL).as_nanos() as u64;
        self.request_poll_ns.store(w, Ordering::Relaxed);
    }

    /// The request-queue polling window.
    pub fn request_poll(&self) -> Duration {
        Duration::from_nanos(self.request_poll_ns.load(Ordering::Relaxed))
    }

    /// How many rounds of requests were found by polling (served without a kick).
    pub fn polled_rounds(&self) -> u64 {
        self.polled.load(Ordering::Relaxed)
    }

    /// The device behind the backend.
    pub fn device(&self) -> &Arc<IommuDevice> {
        &self.device
    }

    /// The fault notifier's file descriptor, to register with the vring worker's epoll under
    /// [`FAULT_EVENT`].
    pub fn fault_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fault_consumer.as_raw_fd()
    }

    /// Gives the next daemon (one per front-end connection) a fresh exit event, so that the
    /// exit signal sent to the previous one's worker cannot stop the next.
    pub fn renew_exit_event(&self) -> Result<(), BackendError> {
        let fresh =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(BackendError::EventFd)?;
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn memory(&self) -> Result<Mem, BackendError> {
        self.mem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(BackendError::NoMemory)
    }

    /// Serves every available request of the request queue. Returns whether any was used.
    fn process_requests(&self, vring: &VringRwLock) -> Result<bool, BackendError> {
        let mem = self.memory()?.memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            let q = state.get_queue_mut();
            let chains = match q.iter(mem.clone()) {
                Ok(it) => it.collect(),
                Err(e) => {
                    // A queue the driver set up wrongly must not stop the worker thread.
                    log::warn!("request queue unusable: {e}");
                    return Ok(false);
                }
            };
            self.restart
                .next_avail
                .store(q.next_avail(), Ordering::Release);
            chains
        };
        let any = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            let cmem = chain.memory();
            let used = match (
                Reader::new(cmem, chain.clone()),
                Writer::new(cmem, chain.clone()),
            ) {
                (Ok(mut r), Ok(mut w)) => self.device.process_chain(&mut r, &mut w),
                (Err(e), _) | (_, Err(e)) => {
                    // A descriptor outside guest memory: the request cannot be answered.
                    log::warn!("malformed request chain: {e}");
                    0
                }
            };
            vring.add_used(head, used).map_err(BackendError::Queue)?;
        }
        Ok(any)
    }

    /// Moves queued faults into the event queue's buffers. Returns whether any buffer was used.
    fn deliver_faults(&self, vring: &VringRwLock) -> Result<bool, BackendError> {
        let Ok(mem) = self.memory() else {
            return Ok(false);
        };
        let mem = mem.memory();
        if !vring.get_ref().get_queue().ready() {
            // Faults stay queued until the driver sets up the event queue.
            return Ok(false);
        }
        let core = self.device.core();
        let mut any = false;
        // Bounded: at most one pass over what the fault queue can hold.
        for _ in 0..FAULT_QUEUE_DEPTH {
            let Some(fault) = core.take_faults(1).pop() else {
                break;
            };
            let Some(chain) = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone())
            else {
                core.requeue_faults(vec![fault]);
                break;
            };
            let head = chain.head_index();
            let used = match Writer::new(chain.memory(), chain.clone()) {
                Ok(mut w) => {
                    let n = w.available_bytes();
                    self.device.write_fault(&fault, &mut w, n).unwrap_or(0)
                }
                Err(e) => {
                    log::warn!("malformed event buffer: {e}");
                    0
                }
            };
            vring.add_used(head, used).map_err(BackendError::Queue)?;
            any = true;
        }
        Ok(any)
    }

    fn signal(&self, vring: &VringRwLock) -> Result<(), BackendError> {
        let needs = if self.event_idx.load(Ordering::Relaxed) {
            vring.needs_notification().map_err(BackendError::Queue)?
        } else {
            true
        };
        if needs && let Err(e) = vring.signal_used_queue() {
            log::warn!("cannot signal the used queue: {e}");
        }
        Ok(())
    }

    /// Whether the driver adds a buffer to `vring` within `window`, checked by reading the
    /// available index (the queue's notifications stay as they are).
    fn poll_available(&self, vring: &VringRwLock, window: Duration) -> Result<bool, BackendError> {
        let mem = self.memory()?.memory();
        let start = Instant::now();
        loop {
            {
                let state = vring.get_ref();
                let q = state.get_queue();
                match q.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(idx) if idx.0 != q.next_avail() => return Ok(true),
                    Ok(_) => {}
                    // The ring is not readable: leave it to the next kick.
                    Err(_) => return Ok(false),
                }
            }
            if start.elapsed() >= window {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    /// Runs `work` on `vring` with the EVENT_IDX notification dance: with notifications
    /// suppressed, then re-enabled, repeating while the driver added buffers in between. With
    /// a non-zero `poll` window, after a round that used buffers the used queue is signalled
    /// and the available ring polled for `poll` (notifications still suppressed) before they
    /// are re-enabled.
    ///
    /// At most [`MAX_QUEUE_SIZE`] rounds run per call. Returns whether buffers were left
    /// available at that bound: notifications are then enabled again, but the driver has
    /// already added those buffers and will not notify for them, so the caller must come
    /// back to the queue by itself.
    fn run_queue(
        &self,
        vring: &VringRwLock,
        work: impl Fn(&Self, &VringRwLock) -> Result<bool, BackendError>,
        avail_is_work: bool,
        poll: Duration,
    ) -> Result<bool, BackendError> {
        let mut used = false;
        let mut pending = false;
        if self.event_idx.load(Ordering::Relaxed) {
            // Bounded by the queue: each round consumes the buffers the driver added, and a
            // polling window is bounded in time.
            for _ in 0..MAX_QUEUE_SIZE {
                vring.disable_notification().map_err(BackendError::Queue)?;
                let round = work(self, vring)?;
                used |= round;
                if round && !poll.is_zero() {
                    // Complete what was served before waiting for more.
                    self.signal(vring)?;
                    used = false;
                    if self.poll_available(vring, poll)? {
                        self.polled.fetch_add(1, Ordering::Relaxed);
                        pending = true;
                        continue;
                    }
                }
                pending = vring.enable_notification().map_err(BackendError::Queue)?;
                // Available buffers are work only for the request queue: event buffers wait
                // for faults, so a round that delivered nothing ends the event queue's turn.
                if !pending || (!round && !avail_is_work) {
                    pending &= avail_is_work;
                    break;
                }
            }
            if pending {
                // The bound: notifications back on (a round may have ended while polling).
                vring.enable_notification().map_err(BackendError::Queue)?;
            }
        } else {
            used = work(self, vring)?;
        }
        if used {
            self.signal(vring)?;
        }
        Ok(pending)
    }

    /// Serves the request queue; if requests were left at the bound, signals [`FAULT_EVENT`]
    /// so the worker comes back to them after its other events.
    fn run_requests(&self, req: &VringRwLock) -> Result<(), BackendError> {
        if self.run_queue(req, Self::process_requests, true, self.request_poll())? {
            self.requests_pending.store(true, Ordering::Release);
            if let Err(e) = self.wake.notify() {
                log::warn!("cannot wake the request worker: {e}");
            }
        }
        Ok(())
    }
}

impl VhostUserBackend for IommuBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        DEVICE_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.device.set_acked_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        // The rings restart from zero after this; that restart is not a second reset.
        self.restart.forget();
        self.requests_pending.store(false, Ordering::Release);
        if let Err(e) = self.device.reset() {
            log::error!("device reset failed: {e}");
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: a virtio reset or a VM stop, told apart at the restart.
        if queue_index == u32::from(REQUEST_QUEUE) {
            let base = self.restart.next_avail.load(Ordering::Acquire);
            let mut at = self
                .restart
                .stopped_at
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *at = Some(base);
            self.restart.stopped.store(true, Ordering::Release);
            drop(at);
            log::debug!("request queue stopped at index {base}");
        }
        Ok(())
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.read_config(offset, size).unwrap_or_else(|e| {
            log::warn!("{e}");
            Vec::new()
        })
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device
            .write_config(offset, buf)
            .map_err(io::Error::other)
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        Some((exit.0.try_clone().ok()?, exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let (Some(req), Some(evt)) = (
            vrings.get(REQUEST_QUEUE as usize),
            vrings.get(EVENT_QUEUE as usize),
        ) else {
            return Err(io::Error::other("vrings missing"));
        };
        // A reset the rings' restart reveals is done before anything else is served.
        self.settle_restart(req);
        match device_event {
            d if d == REQUEST_QUEUE => self.run_requests(req)?,
            d if d == EVENT_QUEUE => {
                // Event buffers are only added in response to faults; the next fault comes
                // back here.
                self.run_queue(evt, Self::deliver_faults, false, Duration::ZERO)?;
            }
            FAULT_EVENT => {
                // Non-blocking: an empty counter (spurious wakeup) is not an error.
                let _ = self.fault_consumer.consume();
                // (A flag left from a previous front end finds no ready queue.)
                if self.requests_pending.swap(false, Ordering::AcqRel)
                    && req.get_ref().get_queue().ready()
                {
                    self.run_requests(req)?;
                }
                self.run_queue(evt, Self::deliver_faults, false, Duration::ZERO)?;
            }
            other => return Err(BackendError::UnknownEvent(other).into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_emulator::SoftDriver;
    use iommu_emulator::core::{Core, CoreConfig, EndpointSet};
    use vhost_user_backend::VringT;
    use vm_memory::{Address, Bytes, GuestAddress};

    const QSIZE: u16 = 16;
    // Split virtqueue layout (virtio 1.3 §2.7): descriptor table, available ring, used ring.
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUFS: u64 = 0x1_0000;

    fn backend() -> (IommuBackend, Mem, VringRwLock, VringRwLock) {
        let cfg = CoreConfig {
            endpoints: EndpointSet::from_ranges([0..=0xff]),
            ..CoreConfig::default()
        };
        let core = Arc::new(Core::new(cfg, Arc::new(SoftDriver::default())).unwrap());
        let device = Arc::new(IommuDevice::new(core, 512).unwrap());
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap(),
        );
        let b = IommuBackend::new(device).unwrap();
        b.acked_features(DEVICE_FEATURES);
        b.set_event_idx(true);
        b.update_memory(mem.clone()).unwrap();
        let req = VringRwLock::new(mem.clone(), QSIZE).unwrap();
        req.set_queue_size(QSIZE);
        req.set_queue_info(DESC, AVAIL, USED).unwrap();
        req.set_queue_event_idx(true);
        req.set_queue_ready(true);
        req.set_enabled(true);
        let evt = VringRwLock::new(mem.clone(), QSIZE).unwrap();
        (b, mem, req, evt)
    }

    /// Adds request `n` (ATTACH endpoint `n` to domain 1) as the driver does: a readable and a
    /// writable descriptor, the ring slot, then the available index (release).
    fn add_attach(mem: &Mem, n: u16) {
        let m = mem.memory();
        let rd = BUFS + u64::from(n) * 0x100;
        let wr = rd + 0x80;
        let mut body = vec![1u8, 0, 0, 0];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&u32::from(n).to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        m.write_slice(&body, GuestAddress(rd)).unwrap();
        m.write_slice(&[0xee; 4], GuestAddress(wr)).unwrap();
        let d = 2 * n % QSIZE;
        let desc = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            let at = GuestAddress(DESC + 16 * u64::from(i));
            m.write_obj(addr, at).unwrap();
            m.write_obj(len, at.unchecked_add(8)).unwrap();
            m.write_obj(flags, at.unchecked_add(12)).unwrap();
            m.write_obj(next, at.unchecked_add(14)).unwrap();
        };
        desc(d, rd, body.len() as u32, 1, d + 1); // VIRTQ_DESC_F_NEXT
        desc(d + 1, wr, 4, 2, 0); // VIRTQ_DESC_F_WRITE
        m.write_obj(d, GuestAddress(AVAIL + 4 + 2 * u64::from(n % QSIZE)))
            .unwrap();
        m.store(n + 1, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
    }

    fn used_idx(mem: &Mem) -> u16 {
        mem.memory()
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .unwrap()
    }

    /// The used ring's avail_event (§2.7.10): where the driver next kicks.
    fn avail_event(mem: &Mem) -> u16 {
        mem.memory()
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(QSIZE)))
            .unwrap()
    }

    fn status(mem: &Mem, n: u16) -> u8 {
        let wr = BUFS + u64::from(n) * 0x100 + 0x80;
        mem.memory().read_obj(GuestAddress(wr)).unwrap()
    }

    #[test]
    fn requests_added_while_polling_are_served_without_a_kick() {
        let (b, mem, req, evt) = backend();
        // Long enough that the driver thread below lands inside the window.
        b.set_request_poll(MAX_REQUEST_POLL);
        add_attach(&mem, 0);
        std::thread::scope(|s| {
            let driver = s.spawn(|| {
                let start = Instant::now();
                while used_idx(&mem) < 1 {
                    assert!(start.elapsed() < Duration::from_secs(20), "never served");
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Served, and notifications still suppressed: the driver would not kick.
                let event = avail_event(&mem);
                add_attach(&mem, 1);
                event
            });
            // One kick: both requests are served within this one event.
            b.handle_event(REQUEST_QUEUE, EventSet::IN, &[req.clone(), evt.clone()], 0)
                .unwrap();
            assert_eq!(driver.join().unwrap(), 0);
        });
        assert_eq!(used_idx(&mem), 2);
        assert_eq!((status(&mem, 0), status(&mem, 1)), (0, 0));
        assert_eq!(b.polled_rounds(), 1);
        // Back to notifications when the window closed: the next request kicks.
        assert_eq!(avail_event(&mem), 2);
        let core = b.device().core();
        assert_eq!(
            (core.endpoint_domain(0), core.endpoint_domain(1)),
            (Some(1), Some(1))
        );
    }

    /// A driver that keeps the queue busy for longer than one event's bound of rounds: the
    /// worker stops at the bound and comes back through its own wakeup, so no request is left
    /// waiting for a kick the driver will not send. The driver follows EVENT_IDX (§2.7.10): it
    /// kicks only when the index it publishes passes the device's avail_event.
    #[test]
    fn a_busy_queue_is_resumed_after_the_bound_through_the_wakeup() {
        let (b, mem, req, evt) = backend();
        b.set_request_poll(MAX_REQUEST_POLL);
        let total = 3 * MAX_QUEUE_SIZE as u16;
        let kicked = AtomicBool::new(false);
        let vrings = [req.clone(), evt.clone()];
        let mut resumed = 0;
        std::thread::scope(|s| {
            let driver = s.spawn(|| {
                for n in 0..total {
                    add_attach(&mem, n);
                    std::sync::atomic::fence(Ordering::SeqCst);
                    if avail_event(&mem) == n {
                        kicked.store(true, Ordering::Release);
                    }
                    let start = Instant::now();
                    while used_idx(&mem) <= n {
                        if start.elapsed() > Duration::from_secs(60) {
                            return Err(n);
                        }
                        std::hint::spin_loop();
                    }
                }
                Ok(())
            });
            let deadline = Instant::now() + Duration::from_secs(120);
            while !driver.is_finished() {
                assert!(Instant::now() < deadline, "stuck at {}", used_idx(&mem));
                if b.requests_pending.load(Ordering::Acquire) {
                    resumed += 1;
                    b.handle_event(FAULT_EVENT, EventSet::IN, &vrings, 0)
                        .unwrap();
                } else if kicked.swap(false, Ordering::AcqRel) {
                    b.handle_event(REQUEST_QUEUE, EventSet::IN, &vrings, 0)
                        .unwrap();
                } else {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            assert_eq!(driver.join().unwrap(), Ok(()));
        });
        assert_eq!(used_idx(&mem), total);
        assert!(resumed >= 1, "the bound was never reached");
        assert!(b.polled_rounds() >= u64::from(total) / 2);
    }

    #[test]
    fn without_a_window_the_queue_waits_for_the_next_kick() {
        let (b, mem, req, evt) = backend();
        b.set_request_poll(Duration::ZERO);
        add_attach(&mem, 0);
        b.handle_event(REQUEST_QUEUE, EventSet::IN, &[req.clone(), evt.clone()], 0)
            .unwrap();
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(avail_event(&mem), 1);
        add_attach(&mem, 1);
        assert_eq!(used_idx(&mem), 1);
        b.handle_event(REQUEST_QUEUE, EventSet::IN, &[req, evt], 0)
            .unwrap();
        assert_eq!(used_idx(&mem), 2);
        assert_eq!((status(&mem, 0), status(&mem, 1)), (0, 0));
        assert_eq!(b.polled_rounds(), 0);
    }

    #[test]
    fn polling_window_is_clamped() {
        let (b, ..) = backend();
        assert_eq!(b.request_poll(), DEFAULT_REQUEST_POLL);
        b.set_request_poll(Duration::from_secs(60));
        assert_eq!(b.request_poll(), MAX_REQUEST_POLL);
    }
}
