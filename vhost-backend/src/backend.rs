//! The vhost-user backend: the request queue, the event queue and the configuration space
//! served over the vhost-user protocol with `vhost-user-backend`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
/// the exit event).
pub const FAULT_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Largest queue size the backend accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;

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
}

impl IommuBackend {
    /// A backend for `device`. Faults the core records kick the event queue.
    pub fn new(device: Arc<IommuDevice>) -> Result<Self, BackendError> {
        let exit =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(BackendError::EventFd)?;
        let (fault_consumer, fault_notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(BackendError::EventFd)?;
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
        })
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
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(it) => it.collect(),
            Err(e) => {
                // A queue the driver set up wrongly must not stop the worker thread.
                log::warn!("request queue unusable: {e}");
                return Ok(false);
            }
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

    /// Runs `work` on `vring` with the EVENT_IDX notification dance: with notifications
    /// suppressed, then re-enabled, repeating while the driver added buffers in between.
    fn run_queue(
        &self,
        vring: &VringRwLock,
        work: impl Fn(&Self, &VringRwLock) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        let mut used = false;
        if self.event_idx.load(Ordering::Relaxed) {
            // Bounded by the queue: each round consumes the buffers the driver added.
            for _ in 0..MAX_QUEUE_SIZE {
                vring.disable_notification().map_err(BackendError::Queue)?;
                used |= work(self, vring)?;
                if !vring.enable_notification().map_err(BackendError::Queue)? {
                    break;
                }
            }
        } else {
            used = work(self, vring)?;
        }
        if used {
            self.signal(vring)?;
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
        if let Err(e) = self.device.reset() {
            log::error!("device reset failed: {e}");
        }
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
        match device_event {
            d if d == REQUEST_QUEUE => self.run_queue(req, Self::process_requests)?,
            d if d == EVENT_QUEUE => self.run_queue(evt, Self::deliver_faults)?,
            FAULT_EVENT => {
                // Non-blocking: an empty counter (spurious wakeup) is not an error.
                let _ = self.fault_consumer.consume();
                self.run_queue(evt, Self::deliver_faults)?;
            }
            other => return Err(BackendError::UnknownEvent(other).into()),
        }
        Ok(())
    }
}
