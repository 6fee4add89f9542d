//! virtio-mmio transport, version 2 (virtio 1.x section 4.2.2).
//!
//! [`MmioTransport`] occupies one 4 KiB MMIO slot: control registers below
//! 0x100, the device configuration space from 0x100. It negotiates features,
//! records the queue layout the driver writes, and at DRIVER_OK validates
//! every queue and activates the device.
//!
//! The guest is not trusted. Whatever it does wrong lands in one of three
//! places:
//! - harmless out-of-order writes (queue registers outside queue setup,
//!   feature writes after FEATURES_OK, notifications before DRIVER_OK) are
//!   ignored and logged at debug level;
//! - a feature set the device cannot accept makes the device refuse
//!   FEATURES_OK (the bit does not stick, as the spec prescribes);
//! - anything else (an invalid status transition, a register access that is
//!   not 32 bits wide, a config access that is not 1, 2, 4 or 8 bytes, an
//!   invalid queue at DRIVER_OK, an activation failure, a device error while
//!   processing a queue) sets DEVICE_NEEDS_RESET in the status register and
//!   raises a configuration-change interrupt (virtio 1.x, 2.1.2). The device
//!   then processes nothing until the driver resets it by writing 0 to
//!   Status, but registers keep answering.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::device::{ActivateContext, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt};
use super::interrupt::EventFdInterrupt;
use crate::bus::BusDevice;

/// Size of one virtio-mmio slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register: vmm-core registers one ioeventfd per
/// queue at `base + QUEUE_NOTIFY_OFFSET`, 4 bytes wide, matching the queue
/// index, and calls [`QueueNotifier::notify`] when it fires.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// Non-legacy virtio-mmio.
const VERSION: u32 = 2;
/// No registered vendor; the Linux driver does not look at it.
const VENDOR_ID: u32 = 0;

// Register offsets (virtio 1.x, 4.2.2).
const REG_MAGIC_VALUE: u64 = 0x00;
const REG_VERSION: u64 = 0x04;
const REG_DEVICE_ID: u64 = 0x08;
const REG_VENDOR_ID: u64 = 0x0c;
const REG_DEVICE_FEATURES: u64 = 0x10;
const REG_DEVICE_FEATURES_SEL: u64 = 0x14;
const REG_DRIVER_FEATURES: u64 = 0x20;
const REG_DRIVER_FEATURES_SEL: u64 = 0x24;
const REG_LEGACY_GUEST_PAGE_SIZE: u64 = 0x28;
const REG_QUEUE_SEL: u64 = 0x30;
const REG_QUEUE_NUM_MAX: u64 = 0x34;
const REG_QUEUE_NUM: u64 = 0x38;
const REG_LEGACY_QUEUE_ALIGN: u64 = 0x3c;
const REG_LEGACY_QUEUE_PFN: u64 = 0x40;
const REG_QUEUE_READY: u64 = 0x44;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x60;
const REG_INTERRUPT_ACK: u64 = 0x64;
const REG_STATUS: u64 = 0x70;
const REG_QUEUE_DESC_LOW: u64 = 0x80;
const REG_QUEUE_DESC_HIGH: u64 = 0x84;
const REG_QUEUE_DRIVER_LOW: u64 = 0x90;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x94;
const REG_QUEUE_DEVICE_LOW: u64 = 0xa0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0xa4;
const REG_SHM_SEL: u64 = 0xac;
const REG_SHM_LEN_LOW: u64 = 0xb0;
const REG_SHM_LEN_HIGH: u64 = 0xb4;
const REG_SHM_BASE_LOW: u64 = 0xb8;
const REG_SHM_BASE_HIGH: u64 = 0xbc;
const REG_CONFIG_GENERATION: u64 = 0xfc;

// Device status bits (virtio 1.x, 2.1).
const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// Linux kernel command-line entry that makes the guest probe a
/// virtio-mmio device in the 4 KiB slot at `base`, interrupting on `irq`.
pub fn kernel_cmdline_entry(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Why a queue the driver set up cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    /// The driver did not write 1 to QueueReady.
    #[error("queue is not ready")]
    NotReady,
    /// The device declared a maximum size that is not a power of two in
    /// 1..=32768 (a device bug).
    #[error("device declares an invalid maximum queue size {0}")]
    InvalidMaxSize(u16),
    /// QueueNum is zero, not a power of two, or above QueueNumMax.
    #[error("queue size {size} is not a power of two in 1..={max}")]
    InvalidSize {
        /// What the driver wrote.
        size: u32,
        /// QueueNumMax.
        max: u16,
    },
    /// A ring address breaks its alignment (16, 2 and 4 bytes for the
    /// descriptor table, available and used ring).
    #[error("{ring} at {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring.
        ring: &'static str,
        /// Its guest address.
        addr: u64,
        /// Required alignment.
        align: u64,
    },
    /// The available ring at guest address 0, which virtio-queue treats as
    /// "not configured".
    #[error("available ring at guest address 0")]
    AvailRingAtZero,
    /// A ring is not entirely inside guest memory.
    #[error("{ring} [{addr:#x}, +{len:#x}) is not inside guest memory")]
    OutsideMemory {
        /// Which ring.
        ring: &'static str,
        /// Its guest address.
        addr: u64,
        /// Its size in bytes.
        len: u64,
    },
}

/// Why the transport put the device in DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{kind} of {len} bytes at offset {offset:#x}: control registers take 32-bit accesses, config space 1, 2, 4 or 8 bytes")]
    AccessWidth {
        kind: &'static str,
        offset: u64,
        len: usize,
    },
    #[error("invalid status transition {old:#x} -> {new:#x}")]
    StatusTransition { old: u32, new: u32 },
    #[error("queue {index} is unusable at DRIVER_OK: {source}")]
    Queue {
        index: usize,
        #[source]
        source: QueueConfigError,
    },
    #[error("activation failed: {0}")]
    Activate(#[source] ActivateError),
    #[error("processing queue {index} failed: {source}")]
    Device {
        index: usize,
        #[source]
        source: DeviceError,
    },
}

/// The queue registers the driver writes during setup.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max_size: u16,
    size: u32,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }

    /// Builds the queue the device will use, checking everything the
    /// driver wrote against the spec and against guest memory.
    fn build(&self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<Queue, QueueConfigError> {
        if !self.ready {
            return Err(QueueConfigError::NotReady);
        }
        let mut queue = Queue::new(self.max_size)
            .map_err(|_| QueueConfigError::InvalidMaxSize(self.max_size))?;
        let invalid_size = QueueConfigError::InvalidSize {
            size: self.size,
            max: self.max_size,
        };
        let size = u16::try_from(self.size).map_err(|_| invalid_size.clone())?;
        queue.try_set_size(size).map_err(|_| invalid_size)?;

        let misaligned = |ring, addr, align| QueueConfigError::Misaligned { ring, addr, align };
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(|_| misaligned("descriptor table", self.desc_table, 16))?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(|_| misaligned("available ring", self.avail_ring, 2))?;
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(|_| misaligned("used ring", self.used_ring, 4))?;
        if self.avail_ring == 0 {
            return Err(QueueConfigError::AvailRingAtZero);
        }

        // Ring sizes per virtio 1.x, 2.7 (the available and used rings
        // include their flags, idx and event fields).
        let size = u64::from(size);
        let rings = [
            (
                "descriptor table",
                self.desc_table,
                16 * size,
                Permissions::Read,
            ),
            (
                "available ring",
                self.avail_ring,
                6 + 2 * size,
                Permissions::Read,
            ),
            (
                "used ring",
                self.used_ring,
                6 + 8 * size,
                Permissions::Write,
            ),
        ];
        for (ring, addr, len, access) in rings {
            // len is at most 6 + 8 * 32768, so it fits in usize.
            let inside = addr.checked_add(len).is_some()
                && mem.check_range(GuestAddress(addr), len as usize, access);
            if !inside {
                return Err(QueueConfigError::OutsideMemory { ring, addr, len });
            }
        }
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        Ok(queue)
    }
}

/// State shared by the transport (vCPU threads) and its [`QueueNotifier`]s
/// (the VMM event thread).
///
/// Lock order: the device mutex is held whenever `status` changes, so a
/// notification can never act on (or mark failed) a device that a
/// concurrent reset is tearing down.
struct Shared {
    device: Arc<Mutex<dyn VirtioDevice>>,
    status: AtomicU32,
    interrupt: Arc<EventFdInterrupt>,
}

impl Shared {
    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|poisoned| {
            warn!("virtio-mmio: device mutex was poisoned by a panic; recovering");
            self.device.clear_poison();
            poisoned.into_inner()
        })
    }

    /// Enters DEVICE_NEEDS_RESET and tells the driver. The caller holds the
    /// device lock.
    fn needs_reset(&self, device_type: u32, failure: &Failure) {
        let old = self.status.fetch_or(NEEDS_RESET, Ordering::SeqCst);
        if old & NEEDS_RESET != 0 {
            debug!(device_type, "virtio-mmio: already needs reset: {failure}");
            return;
        }
        warn!(device_type, "virtio-mmio: device needs reset: {failure}");
        if let Err(err) = self.interrupt.signal_config_change() {
            warn!(
                device_type,
                "virtio-mmio: cannot signal the config change: {err}"
            );
        }
    }

    /// Processes a notification for `queue` if the device is live.
    fn notify(&self, queue: u32) {
        let mut device = self.lock_device();
        let status = self.status.load(Ordering::SeqCst);
        if status & DRIVER_OK == 0 || status & (NEEDS_RESET | FAILED) != 0 {
            debug!(
                queue,
                status, "virtio-mmio: notification while not running ignored"
            );
            return;
        }
        let index = queue as usize;
        if index >= device.queue_max_sizes().len() {
            debug!(
                queue,
                "virtio-mmio: notification for a nonexistent queue ignored"
            );
            return;
        }
        if let Err(source) = device.process_queue(index) {
            let device_type = device.device_type();
            self.needs_reset(device_type, &Failure::Device { index, source });
        }
    }
}

/// A handle that delivers queue notifications to a device without going
/// through the transport's registers: what the ioeventfd handler on the VMM
/// event thread holds.
#[derive(Clone)]
pub struct QueueNotifier {
    shared: Arc<Shared>,
}

impl QueueNotifier {
    /// The guest notified queue `queue`: process it (if the device is
    /// running and the queue exists). A device error puts the device in
    /// DEVICE_NEEDS_RESET.
    pub fn notify(&self, queue: u32) {
        self.shared.notify(queue);
    }
}

impl fmt::Debug for QueueNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueNotifier").finish_non_exhaustive()
    }
}

/// A virtio device behind the virtio-mmio (version 2) register interface.
pub struct MmioTransport {
    shared: Arc<Shared>,
    mem: GuestMemoryMmap,
    device_type: u32,
    avail_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver acked a feature bit above 63 (none is ever offered).
    acked_beyond_63: bool,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    config_generation: u32,
}

impl fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status())
            .field("driver_features", &self.driver_features)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio register interface. `mem` is where
    /// the driver's queues must lie; `interrupt` is the slot's interrupt.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<EventFdInterrupt>,
    ) -> Self {
        let shared = Arc::new(Shared {
            device,
            status: AtomicU32::new(0),
            interrupt,
        });
        let (device_type, avail_features, queues) = {
            let device = shared.lock_device();
            let queues = device
                .queue_max_sizes()
                .iter()
                .map(|&max| QueueConfig::new(max))
                .collect();
            (device.device_type(), device.avail_features(), queues)
        };
        Self {
            shared,
            mem,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            acked_beyond_63: false,
            queue_sel: 0,
            queues,
            config_generation: 0,
        }
    }

    /// The device behind this transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.shared.device.clone()
    }

    /// The slot's interrupt (its eventfd is the irqfd to register).
    pub fn interrupt(&self) -> &Arc<EventFdInterrupt> {
        &self.shared.interrupt
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.shared.status.load(Ordering::SeqCst)
    }

    /// A handle for delivering queue notifications from another thread.
    pub fn queue_notifier(&self) -> QueueNotifier {
        QueueNotifier {
            shared: self.shared.clone(),
        }
    }

    /// The guest notified queue `queue` (a QueueNotify write).
    pub fn notify(&self, queue: u32) {
        self.shared.notify(queue);
    }

    fn fail(&self, failure: Failure) {
        let _device = self.shared.lock_device();
        self.shared.needs_reset(self.device_type, &failure);
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC_VALUE => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            // A nonexistent queue reads as size 0 / not ready.
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.shared.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: a length of all ones says so.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => self.write_queue(offset, |q| q.size = value),
            REG_QUEUE_READY => match value {
                0 | 1 => self.write_queue(offset, |q| q.ready = value == 1),
                _ => debug!(value, "virtio-mmio: QueueReady takes 0 or 1; ignored"),
            },
            REG_QUEUE_DESC_LOW => self.write_queue(offset, |q| set_low(&mut q.desc_table, value)),
            REG_QUEUE_DESC_HIGH => self.write_queue(offset, |q| set_high(&mut q.desc_table, value)),
            REG_QUEUE_DRIVER_LOW => self.write_queue(offset, |q| set_low(&mut q.avail_ring, value)),
            REG_QUEUE_DRIVER_HIGH => {
                self.write_queue(offset, |q| set_high(&mut q.avail_ring, value))
            }
            REG_QUEUE_DEVICE_LOW => self.write_queue(offset, |q| set_low(&mut q.used_ring, value)),
            REG_QUEUE_DEVICE_HIGH => {
                self.write_queue(offset, |q| set_high(&mut q.used_ring, value))
            }
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.shared.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_SHM_SEL => {}
            REG_LEGACY_GUEST_PAGE_SIZE | REG_LEGACY_QUEUE_ALIGN | REG_LEGACY_QUEUE_PFN => {
                debug!(
                    offset,
                    "virtio-mmio: legacy register write ignored (version 2)"
                );
            }
            _ => debug!(
                offset,
                "virtio-mmio: write to a read-only or unknown register ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status() != ACKNOWLEDGE | DRIVER {
            debug!(
                status = self.status(),
                "virtio-mmio: DriverFeatures write outside feature negotiation ignored"
            );
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            // Bits past 63 are never offered; acking any refuses FEATURES_OK.
            sel if value != 0 => {
                debug!(
                    sel,
                    value, "virtio-mmio: driver acks features beyond bit 63"
                );
                self.acked_beyond_63 = true;
            }
            _ => {}
        }
    }

    fn write_queue(&mut self, offset: u64, update: impl FnOnce(&mut QueueConfig)) {
        let status = self.status();
        if status & FEATURES_OK == 0 || status & (DRIVER_OK | NEEDS_RESET | FAILED) != 0 {
            debug!(
                offset,
                status, "virtio-mmio: queue register write outside queue setup ignored"
            );
            return;
        }
        let queue_sel = self.queue_sel;
        match self.selected_queue() {
            Some(queue) => update(queue),
            None => debug!(
                queue_sel,
                "virtio-mmio: write to a nonexistent queue ignored"
            ),
        }
    }

    /// The driver's status write: the virtio 1.x initialisation sequence
    /// (3.1.1), one step at a time.
    fn write_status(&mut self, new: u32) {
        let shared = self.shared.clone();
        let mut device = shared.lock_device();
        let old = self.status();

        if new == 0 {
            self.reset(&mut *device);
            return;
        }
        if new & FAILED != 0 {
            warn!(
                device_type = self.device_type,
                "virtio-mmio: the driver gave up on the device (FAILED)"
            );
            shared.status.fetch_or(FAILED, Ordering::SeqCst);
            return;
        }
        if old & (NEEDS_RESET | FAILED) != 0 {
            debug!(old, new, "virtio-mmio: status write ignored until reset");
            return;
        }
        if new == old {
            return;
        }

        // The driver sets one more bit per step and never clears one.
        let next_step = match old {
            0 => Some(ACKNOWLEDGE),
            ACKNOWLEDGE => Some(ACKNOWLEDGE | DRIVER),
            s if s == ACKNOWLEDGE | DRIVER => Some(s | FEATURES_OK),
            s if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => Some(s | DRIVER_OK),
            _ => None,
        };
        if next_step != Some(new) {
            let failure = Failure::StatusTransition { old, new };
            shared.needs_reset(self.device_type, &failure);
            return;
        }

        match new {
            s if s & DRIVER_OK != 0 => self.activate(&mut *device, new),
            s if s & FEATURES_OK != 0 => {
                if let Err(why) = self.check_features() {
                    // The bit does not stick; the driver reads Status back
                    // and gives up (virtio 1.x, 3.1.1 step 6).
                    warn!(
                        device_type = self.device_type,
                        "virtio-mmio: refusing FEATURES_OK: {why}"
                    );
                    return;
                }
                device.set_acked_features(self.driver_features);
                shared.status.store(new, Ordering::SeqCst);
            }
            _ => shared.status.store(new, Ordering::SeqCst),
        }
    }

    fn check_features(&self) -> Result<(), String> {
        let unoffered = self.driver_features & !self.avail_features;
        if unoffered != 0 {
            return Err(format!(
                "driver acked {:#x}, device offers {:#x} (unoffered bits {unoffered:#x})",
                self.driver_features, self.avail_features
            ));
        }
        if self.acked_beyond_63 {
            return Err("driver acked feature bits above 63, none of which is offered".into());
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(
                "driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)"
                    .into(),
            );
        }
        Ok(())
    }

    fn activate(&mut self, device: &mut dyn VirtioDevice, new: u32) {
        let shared = &self.shared;
        shared.status.store(new, Ordering::SeqCst);
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, config) in self.queues.iter().enumerate() {
            match config.build(&self.mem, event_idx) {
                Ok(queue) => queues.push(queue),
                Err(source) => {
                    shared.needs_reset(self.device_type, &Failure::Queue { index, source });
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: shared.interrupt.clone(),
        };
        if let Err(err) = device.activate(ctx) {
            shared.needs_reset(self.device_type, &Failure::Activate(err));
            return;
        }
        debug!(
            device_type = self.device_type,
            "virtio-mmio: device activated"
        );
    }

    /// Device and transport back to their initial state (Status written 0).
    fn reset(&mut self, device: &mut dyn VirtioDevice) {
        device.reset();
        self.shared.status.store(0, Ordering::SeqCst);
        self.shared.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.acked_beyond_63 = false;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        // ConfigGeneration is left alone: it only ever moves forward.
        debug!(device_type = self.device_type, "virtio-mmio: device reset");
    }
}

fn set_low(field: &mut u64, value: u32) {
    *field = (*field & !0xffff_ffff) | u64::from(value);
}

fn set_high(field: &mut u64, value: u32) {
    *field = (*field & 0xffff_ffff) | (u64::from(value) << 32);
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < CONFIG_SPACE_OFFSET {
            if data.len() != 4 || !offset.is_multiple_of(4) {
                data.fill(0);
                self.fail(Failure::AccessWidth {
                    kind: "register read",
                    offset,
                    len: data.len(),
                });
                return;
            }
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else if matches!(data.len(), 1 | 2 | 4 | 8) {
            let device = self.shared.lock_device();
            device.read_config(offset - CONFIG_SPACE_OFFSET, data);
        } else {
            data.fill(0);
            self.fail(Failure::AccessWidth {
                kind: "config read",
                offset,
                len: data.len(),
            });
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < CONFIG_SPACE_OFFSET {
            let Ok(bytes) = <[u8; 4]>::try_from(data) else {
                self.fail(Failure::AccessWidth {
                    kind: "register write",
                    offset,
                    len: data.len(),
                });
                return;
            };
            if !offset.is_multiple_of(4) {
                self.fail(Failure::AccessWidth {
                    kind: "unaligned register write",
                    offset,
                    len: data.len(),
                });
                return;
            }
            self.write_register(offset, u32::from_le_bytes(bytes));
        } else if matches!(data.len(), 1 | 2 | 4 | 8) {
            let mut device = self.shared.lock_device();
            device.write_config(offset - CONFIG_SPACE_OFFSET, data);
        } else {
            self.fail(Failure::AccessWidth {
                kind: "config write",
                offset,
                len: data.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::virtio::device::{INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_RING};
    use crate::virtio::test_utils::{test_interrupt, test_memory, TestQueue, MEM_SIZE};

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
    const RUNNING: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

    /// A device that records what the transport does to it.
    struct FakeDevice {
        max_sizes: Vec<u16>,
        features: u64,
        config: Vec<u8>,
        acked: Option<u64>,
        queues: Vec<Queue>,
        interrupt: Option<Arc<dyn VirtioInterrupt>>,
        processed: Vec<usize>,
        config_writes: Vec<(u64, Vec<u8>)>,
        resets: usize,
        fail_activate: bool,
        fail_process: bool,
    }

    impl FakeDevice {
        fn new(max_sizes: &[u16]) -> Self {
            Self {
                max_sizes: max_sizes.to_vec(),
                features: VERSION_1 | 1 << 3 | 1 << 40,
                config: (0u8..16).collect(),
                acked: None,
                queues: Vec::new(),
                interrupt: None,
                processed: Vec::new(),
                config_writes: Vec::new(),
                resets: 0,
                fail_activate: false,
                fail_process: false,
            }
        }
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = Some(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = self
                    .config
                    .get(offset as usize + i)
                    .copied()
                    .unwrap_or_default();
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config_writes.push((offset, data.to_vec()));
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::AlreadyActive);
            }
            self.queues = ctx.queues;
            self.interrupt = Some(ctx.interrupt);
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.interrupt.is_some()
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.acked = None;
            self.queues.clear();
            self.interrupt = None;
        }
        fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
            if self.fail_process {
                return Err(DeviceError::UnknownQueue(index));
            }
            self.processed.push(index);
            if let Some(interrupt) = &self.interrupt {
                interrupt.signal_used_queue(index as u16).unwrap();
            }
            Ok(())
        }
    }

    struct Fixture {
        mem: GuestMemoryMmap,
        device: Arc<Mutex<FakeDevice>>,
        interrupt: Arc<EventFdInterrupt>,
        transport: MmioTransport,
    }

    impl Fixture {
        fn new(max_sizes: &[u16]) -> Self {
            Self::with_device(FakeDevice::new(max_sizes))
        }

        fn with_device(device: FakeDevice) -> Self {
            let mem = test_memory();
            let device = Arc::new(Mutex::new(device));
            let interrupt = test_interrupt();
            let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt.clone());
            Self {
                mem,
                device,
                interrupt,
                transport,
            }
        }

        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0xaa; 4];
            self.transport.read(offset, &mut data);
            u32::from_le_bytes(data)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.transport.write(offset, &value.to_le_bytes());
        }

        fn status(&mut self) -> u32 {
            self.read(REG_STATUS)
        }

        fn ack_features(&mut self, features: u64) {
            self.write(REG_DRIVER_FEATURES_SEL, 0);
            self.write(REG_DRIVER_FEATURES, features as u32);
            self.write(REG_DRIVER_FEATURES_SEL, 1);
            self.write(REG_DRIVER_FEATURES, (features >> 32) as u32);
        }

        /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
        fn negotiate(&mut self, features: u64) {
            self.write(REG_STATUS, ACKNOWLEDGE);
            self.write(REG_STATUS, ACKNOWLEDGE | DRIVER);
            self.ack_features(features);
            self.write(REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        }

        fn set_queue(&mut self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
            self.write(REG_QUEUE_SEL, index);
            self.write(REG_QUEUE_NUM, size);
            self.write(REG_QUEUE_DESC_LOW, desc as u32);
            self.write(REG_QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.write(REG_QUEUE_DRIVER_LOW, avail as u32);
            self.write(REG_QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            self.write(REG_QUEUE_DEVICE_LOW, used as u32);
            self.write(REG_QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            self.write(REG_QUEUE_READY, 1);
        }

        /// Sets up queue `index` with a valid layout (one 4 KiB page each).
        fn set_valid_queue(&mut self, index: u32, size: u32) {
            let base = 0x2_0000 + u64::from(index) * 0x4000;
            self.set_queue(index, size, base, base + 0x1000, base + 0x2000);
        }

        /// Negotiates VERSION_1 and sets every queue up validly.
        fn start(&mut self) {
            self.negotiate(VERSION_1);
            let sizes = self.device.lock().unwrap().max_sizes.clone();
            for (i, &max) in sizes.iter().enumerate() {
                self.set_valid_queue(i as u32, u32::from(max));
            }
            self.write(REG_STATUS, RUNNING);
        }

        fn config_interrupts(&self) -> u64 {
            self.interrupt.irqfd().read().unwrap_or(0)
        }
    }

    #[test]
    fn cmdline_entry() {
        assert_eq!(
            kernel_cmdline_entry(0xd000_1000, 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn identification_registers() {
        let mut f = Fixture::new(&[256, 64]);
        assert_eq!(f.read(REG_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(f.read(REG_VERSION), 2);
        assert_eq!(f.read(REG_DEVICE_ID), 42);
        assert_eq!(f.read(REG_VENDOR_ID), 0);
        assert_eq!(f.read(REG_DEVICE_FEATURES), 1 << 3);
        f.write(REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(f.read(REG_DEVICE_FEATURES), 1 | 1 << 8);
        f.write(REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(f.read(REG_DEVICE_FEATURES), 0);
        assert_eq!(f.read(REG_QUEUE_NUM_MAX), 256);
        f.write(REG_QUEUE_SEL, 1);
        assert_eq!(f.read(REG_QUEUE_NUM_MAX), 64);
        f.write(REG_QUEUE_SEL, 2);
        assert_eq!(f.read(REG_QUEUE_NUM_MAX), 0);
        assert_eq!(f.read(REG_QUEUE_READY), 0);
        assert_eq!(f.read(REG_SHM_LEN_LOW), u32::MAX);
        assert_eq!(f.read(REG_CONFIG_GENERATION), 0);
        assert_eq!(f.status(), 0);
        // A write-only register reads as 0.
        assert_eq!(f.read(REG_QUEUE_NOTIFY), 0);
    }

    #[test]
    fn initialisation_sequence_activates_the_device() {
        let mut f = Fixture::new(&[16, 8]);
        f.negotiate(VERSION_1 | 1 << 3);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.device.lock().unwrap().acked, Some(VERSION_1 | 1 << 3));
        f.set_valid_queue(0, 16);
        f.set_valid_queue(1, 4);
        assert_eq!(f.read(REG_QUEUE_READY), 1);
        assert!(!f.device.lock().unwrap().is_activated());

        f.write(REG_STATUS, RUNNING);
        assert_eq!(f.status(), RUNNING);
        {
            let device = f.device.lock().unwrap();
            assert!(device.is_activated());
            let sizes: Vec<u16> = device.queues.iter().map(|q| q.size()).collect();
            assert_eq!(sizes, vec![16, 4]);
            assert_eq!(device.queues[1].desc_table(), 0x2_4000);
            assert_eq!(device.queues[1].avail_ring(), 0x2_5000);
            assert_eq!(device.queues[1].used_ring(), 0x2_6000);
            assert!(device.queues.iter().all(|q| q.ready()));
            assert!(!device.queues[0].event_idx_enabled());
        }
        assert_eq!(f.config_interrupts(), 0);
    }

    #[test]
    fn event_idx_is_applied_to_the_queues_when_negotiated() {
        let mut device = FakeDevice::new(&[16]);
        device.features |= EVENT_IDX;
        let mut f = Fixture::with_device(device);
        f.negotiate(VERSION_1 | EVENT_IDX);
        f.set_valid_queue(0, 16);
        f.write(REG_STATUS, RUNNING);
        assert!(f.device.lock().unwrap().queues[0].event_idx_enabled());
    }

    #[test]
    fn features_ok_is_refused_for_bad_feature_sets() {
        for (what, features) in [
            ("no VERSION_1", 1 << 3),
            ("unoffered bit", VERSION_1 | 1 << 4),
            ("unoffered high bit", VERSION_1 | 1 << 41),
        ] {
            let mut f = Fixture::new(&[16]);
            f.negotiate(features);
            assert_eq!(f.status(), ACKNOWLEDGE | DRIVER, "{what}");
            assert_eq!(f.device.lock().unwrap().acked, None, "{what}");
            assert_eq!(f.config_interrupts(), 0, "{what}: refusal is not a failure");

            // The driver may retry with an acceptable set.
            f.ack_features(VERSION_1);
            f.write(REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            assert_eq!(f.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK, "{what}");
            assert_eq!(f.device.lock().unwrap().acked, Some(VERSION_1));
        }

        // Feature bits beyond 63 are never offered.
        let mut f = Fixture::new(&[16]);
        f.write(REG_STATUS, ACKNOWLEDGE);
        f.write(REG_STATUS, ACKNOWLEDGE | DRIVER);
        f.ack_features(VERSION_1);
        f.write(REG_DRIVER_FEATURES_SEL, 2);
        f.write(REG_DRIVER_FEATURES, 1);
        f.write(REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER);
    }

    #[test]
    fn driver_features_are_frozen_after_features_ok() {
        let mut f = Fixture::new(&[16]);
        f.negotiate(VERSION_1);
        f.ack_features(VERSION_1 | 1 << 3);
        assert_eq!(f.transport.driver_features, VERSION_1);
        // Before DRIVER they are not taken either.
        let mut f = Fixture::new(&[16]);
        f.write(REG_STATUS, ACKNOWLEDGE);
        f.ack_features(VERSION_1);
        assert_eq!(f.transport.driver_features, 0);
    }

    #[test]
    fn invalid_status_transitions_need_reset() {
        let running = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        for (setup, bad) in [
            (0, ACKNOWLEDGE | DRIVER),                                // skips a step
            (ACKNOWLEDGE, ACKNOWLEDGE | FEATURES_OK),                 // skips DRIVER
            (ACKNOWLEDGE | DRIVER, ACKNOWLEDGE),                      // clears a bit
            (ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | DRIVER_OK), // no FEATURES_OK
            (running, running | 0x10),                                // unknown bit
        ] {
            let mut f = Fixture::new(&[16]);
            if setup & ACKNOWLEDGE != 0 {
                f.write(REG_STATUS, ACKNOWLEDGE);
            }
            if setup & DRIVER != 0 {
                f.write(REG_STATUS, ACKNOWLEDGE | DRIVER);
            }
            if setup & FEATURES_OK != 0 {
                f.ack_features(VERSION_1);
                f.write(REG_STATUS, running);
            }
            assert_eq!(f.status(), setup);
            f.write(REG_STATUS, bad);
            assert_eq!(f.status(), setup | NEEDS_RESET, "{setup:#x} -> {bad:#x}");
            assert_eq!(f.read(REG_INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
            assert_eq!(f.config_interrupts(), 1);
            assert!(!f.device.lock().unwrap().is_activated());

            // Nothing but a reset (or FAILED) is accepted now.
            f.write(REG_STATUS, ACKNOWLEDGE);
            assert_eq!(f.status(), setup | NEEDS_RESET);
            f.write(REG_STATUS, 0);
            assert_eq!(f.status(), 0);
            assert_eq!(f.read(REG_INTERRUPT_STATUS), 0);
        }
    }

    #[test]
    fn failed_from_the_driver_stops_notifications() {
        let mut f = Fixture::new(&[16]);
        f.start();
        f.write(REG_STATUS, RUNNING | FAILED);
        assert_eq!(f.status(), RUNNING | FAILED);
        f.write(REG_QUEUE_NOTIFY, 0);
        assert!(f.device.lock().unwrap().processed.is_empty());
    }

    #[test]
    fn invalid_queues_at_driver_ok_need_reset() {
        let end = MEM_SIZE;
        // (what, index, size, desc, avail, used, ready)
        let cases: &[(&str, u32, u64, u64, u64, bool)] = &[
            ("not ready", 16, 0x2_0000, 0x2_1000, 0x2_2000, false),
            ("size 0", 0, 0x2_0000, 0x2_1000, 0x2_2000, true),
            (
                "size not a power of two",
                12,
                0x2_0000,
                0x2_1000,
                0x2_2000,
                true,
            ),
            ("size above max", 32, 0x2_0000, 0x2_1000, 0x2_2000, true),
            (
                "size above u16",
                0x1_0010,
                0x2_0000,
                0x2_1000,
                0x2_2000,
                true,
            ),
            ("desc misaligned", 16, 0x2_0008, 0x2_1000, 0x2_2000, true),
            ("avail misaligned", 16, 0x2_0000, 0x2_1001, 0x2_2000, true),
            ("used misaligned", 16, 0x2_0000, 0x2_1000, 0x2_2002, true),
            ("avail at 0", 16, 0x2_0000, 0, 0x2_2000, true),
            ("desc outside memory", 16, end, 0x2_1000, 0x2_2000, true),
            (
                "desc straddles the end",
                16,
                end - 0x80,
                0x2_1000,
                0x2_2000,
                true,
            ),
            (
                "used straddles the end",
                16,
                0x2_0000,
                0x2_1000,
                end - 0x40,
                true,
            ),
            (
                "avail far away",
                16,
                0x2_0000,
                0xffff_ffff_ffff_fff0,
                0x2_2000,
                true,
            ),
        ];
        for &(what, size, desc, avail, used, ready) in cases {
            let mut f = Fixture::new(&[16, 16]);
            f.negotiate(VERSION_1);
            f.set_valid_queue(0, 16);
            f.set_queue(1, size, desc, avail, used);
            if !ready {
                f.write(REG_QUEUE_READY, 0);
            }
            f.write(REG_STATUS, RUNNING);
            assert_eq!(f.status(), RUNNING | NEEDS_RESET, "{what}");
            assert_eq!(f.config_interrupts(), 1, "{what}");
            assert!(!f.device.lock().unwrap().is_activated(), "{what}");
            // Notifications are not delivered to a device that needs reset.
            f.write(REG_QUEUE_NOTIFY, 0);
            assert!(f.device.lock().unwrap().processed.is_empty(), "{what}");
            // Registers keep answering.
            assert_eq!(f.read(REG_MAGIC_VALUE), MAGIC_VALUE);
        }
    }

    #[test]
    fn activation_failure_needs_reset() {
        let mut device = FakeDevice::new(&[16]);
        device.fail_activate = true;
        let mut f = Fixture::with_device(device);
        f.start();
        assert_eq!(f.status(), RUNNING | NEEDS_RESET);
        assert_eq!(f.read(REG_INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
    }

    #[test]
    fn notifications_reach_the_device_and_raise_interrupts() {
        let mut f = Fixture::new(&[16, 16]);
        // Before DRIVER_OK nothing is delivered.
        f.write(REG_QUEUE_NOTIFY, 0);
        f.start();
        f.write(REG_QUEUE_NOTIFY, 1);
        f.write(REG_QUEUE_NOTIFY, 0);
        // Nonexistent queue: ignored.
        f.write(REG_QUEUE_NOTIFY, 7);
        assert_eq!(f.device.lock().unwrap().processed, vec![1, 0]);
        assert_eq!(f.read(REG_INTERRUPT_STATUS), INTERRUPT_USED_RING);
        assert_eq!(f.interrupt.irqfd().read().unwrap(), 2);
        f.write(REG_INTERRUPT_ACK, INTERRUPT_USED_RING);
        assert_eq!(f.read(REG_INTERRUPT_STATUS), 0);

        // The same through a notifier on another thread.
        let notifier = f.transport.queue_notifier();
        thread::spawn(move || notifier.notify(1)).join().unwrap();
        assert_eq!(f.device.lock().unwrap().processed, vec![1, 0, 1]);
        assert_eq!(f.status(), RUNNING);
    }

    #[test]
    fn device_errors_need_reset() {
        let mut f = Fixture::new(&[16]);
        f.start();
        f.device.lock().unwrap().fail_process = true;
        f.transport.queue_notifier().notify(0);
        assert_eq!(f.status(), RUNNING | NEEDS_RESET);
        assert_eq!(f.read(REG_INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
        assert_eq!(f.config_interrupts(), 1);
        // A second failure does not signal again; nothing is delivered.
        f.device.lock().unwrap().fail_process = false;
        f.write(REG_QUEUE_NOTIFY, 0);
        assert!(f.device.lock().unwrap().processed.is_empty());
        assert_eq!(f.config_interrupts(), 0);

        // Reset and start over: works again.
        f.write(REG_STATUS, 0);
        f.start();
        f.write(REG_QUEUE_NOTIFY, 0);
        assert_eq!(f.device.lock().unwrap().processed, vec![0]);
    }

    #[test]
    fn reset_clears_transport_and_device_state() {
        let mut f = Fixture::new(&[16]);
        f.start();
        f.write(REG_QUEUE_NOTIFY, 0);
        f.write(REG_DEVICE_FEATURES_SEL, 1);
        assert_ne!(f.read(REG_INTERRUPT_STATUS), 0);

        f.write(REG_STATUS, 0);
        assert_eq!(f.status(), 0);
        assert_eq!(f.read(REG_INTERRUPT_STATUS), 0);
        assert_eq!(f.read(REG_QUEUE_READY), 0);
        assert_eq!(f.read(REG_DEVICE_FEATURES), 1 << 3, "selector back to 0");
        assert_eq!(f.transport.driver_features, 0);
        assert_eq!(f.transport.queues[0].desc_table, 0);
        {
            let device = f.device.lock().unwrap();
            assert_eq!(device.resets, 1);
            assert!(!device.is_activated());
            assert_eq!(device.acked, None);
        }
        // Notifications after reset are not delivered.
        f.write(REG_QUEUE_NOTIFY, 0);
        assert_eq!(f.device.lock().unwrap().processed, vec![0]);
        // Writing 0 again is harmless.
        f.write(REG_STATUS, 0);
        assert_eq!(f.status(), 0);
    }

    #[test]
    fn queue_registers_only_change_during_queue_setup() {
        let mut f = Fixture::new(&[16]);
        // Before FEATURES_OK (Linux writes QueueReady = 0 on teardown).
        f.write(REG_QUEUE_READY, 1);
        f.write(REG_QUEUE_DESC_LOW, 0x2_0000);
        assert_eq!(f.read(REG_QUEUE_READY), 0);
        assert_eq!(f.transport.queues[0].desc_table, 0);
        assert_eq!(f.status(), 0, "ignored, not a failure");

        f.start();
        // After DRIVER_OK.
        f.write(REG_QUEUE_READY, 0);
        f.write(REG_QUEUE_DESC_LOW, 0x3_0000);
        assert_eq!(f.read(REG_QUEUE_READY), 1);
        assert_eq!(f.transport.queues[0].desc_table, 0x2_0000);
        assert_eq!(f.status(), RUNNING);
    }

    #[test]
    fn config_space_accesses() {
        let mut f = Fixture::new(&[16]);
        for len in [1usize, 2, 4, 8] {
            let mut data = vec![0u8; len];
            f.transport.read(CONFIG_SPACE_OFFSET + 4, &mut data);
            let expected: Vec<u8> = (4..4 + len as u8).collect();
            assert_eq!(data, expected);
        }
        // Past the end of the device's config: zeros.
        let mut data = [0xffu8; 4];
        f.transport.read(0x800, &mut data);
        assert_eq!(data, [0; 4]);

        f.transport.write(CONFIG_SPACE_OFFSET + 2, &[9, 8]);
        assert_eq!(
            f.device.lock().unwrap().config_writes,
            vec![(2, vec![9, 8])]
        );
        assert_eq!(f.status(), 0);

        // A 3-byte access is malformed.
        let mut data = [0xffu8; 3];
        f.transport.read(CONFIG_SPACE_OFFSET, &mut data);
        assert_eq!(data, [0; 3]);
        assert_eq!(f.status(), NEEDS_RESET);
    }

    #[test]
    fn register_accesses_must_be_32_bits() {
        for (len, offset) in [(1usize, REG_MAGIC_VALUE), (2, REG_STATUS), (8, REG_STATUS)] {
            let mut f = Fixture::new(&[16]);
            let mut data = vec![0xffu8; len];
            f.transport.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0));
            assert_eq!(f.status(), NEEDS_RESET, "{len}-byte read");

            let mut f = Fixture::new(&[16]);
            f.transport.write(offset, &vec![1u8; len]);
            assert_eq!(f.status(), NEEDS_RESET, "{len}-byte write");
            assert_eq!(f.config_interrupts(), 1);
        }
        // Unaligned 32-bit access.
        let mut f = Fixture::new(&[16]);
        f.transport.write(REG_STATUS + 1, &[1, 0, 0, 0]);
        assert_eq!(f.status(), NEEDS_RESET);
    }

    #[test]
    fn queues_are_built_in_guest_memory_the_driver_laid_out() {
        // End to end with a queue a test driver fills: the device gets a
        // queue whose chains are readable.
        let mut f = Fixture::new(&[16]);
        let mut tq = TestQueue::new(&f.mem, 16);
        tq.add_chain(&[(0x1_0000, 16, false)]);
        let (desc, avail, used) = tq.addresses();
        f.negotiate(VERSION_1);
        f.set_queue(0, 16, desc, avail, used);
        f.write(REG_STATUS, RUNNING);
        let mut device = f.device.lock().unwrap();
        let chain = device.queues[0].pop_descriptor_chain(&f.mem).unwrap();
        assert_eq!(chain.head_index(), 0);
    }
}
