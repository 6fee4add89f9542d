//! What the virtio transport needs from a device, and how a device signals
//! the guest.
//!
//! A [`VirtioDevice`] knows its type, features, queue sizes and
//! configuration space. The transport ([`crate::virtio::MmioTransport`])
//! negotiates features with the driver, collects the queue layout the driver
//! writes, validates it and hands the device its queues in
//! [`VirtioDevice::activate`]. From then on every guest notification becomes
//! a [`VirtioDevice::process_queue`] call; the device signals completions
//! through the [`VirtioInterrupt`] it was given. Devices never touch KVM.

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Bit 0 of the MMIO InterruptStatus register: a used ring was updated.
pub const INTERRUPT_USED_RING: u32 = 1 << 0;
/// Bit 1 of the MMIO InterruptStatus register: the device configuration
/// changed (also raised when the device enters DEVICE_NEEDS_RESET).
pub const INTERRUPT_CONFIG_CHANGE: u32 = 1 << 1;

/// How a device raises interrupts in the guest.
///
/// Implementations must be cheap and callable from any thread.
pub trait VirtioInterrupt: Send + Sync {
    /// Tells the driver that the used ring of `queue` has new entries.
    fn signal_used_queue(&self, queue: u16) -> io::Result<()>;
    /// Tells the driver that the device configuration space changed (or that
    /// the device needs a reset).
    fn signal_config_change(&self) -> io::Result<()>;
}

/// Everything a device needs to start processing requests.
pub struct ActivateContext {
    /// Guest memory holding the rings and the buffers.
    pub mem: GuestMemoryMmap,
    /// One validated, ready queue per entry of
    /// [`VirtioDevice::queue_max_sizes`], in the same order.
    pub queues: Vec<Queue>,
    /// Where the device signals used buffers and configuration changes.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl ActivateContext {
    /// Splits the context into exactly `N` queues (in the device's declared
    /// order), guest memory and the interrupt; any other queue count is
    /// [`ActivateError::QueueCount`].
    #[allow(clippy::type_complexity)]
    pub fn into_queues<const N: usize>(
        self,
    ) -> Result<([Queue; N], GuestMemoryMmap, Arc<dyn VirtioInterrupt>), ActivateError> {
        let actual = self.queues.len();
        let queues =
            <[Queue; N]>::try_from(self.queues).map_err(|_| ActivateError::QueueCount {
                expected: N,
                actual,
            })?;
        Ok((queues, self.mem, self.interrupt))
    }
}

impl std::fmt::Debug for ActivateContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivateContext")
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the
    /// device declares.
    #[error("device expects {expected} queues, got {actual}")]
    QueueCount {
        /// Queues the device declares.
        expected: usize,
        /// Queues it was given.
        actual: usize,
    },
    /// The device is already active; it must be reset first.
    #[error("device is already active")]
    AlreadyActive,
    /// The process serving the device (a vhost-user backend) refused the
    /// setup or is gone.
    #[error("backend: {0}")]
    Backend(String),
}

/// A failure while processing a queue that leaves the device unable to go
/// on: the transport answers it with DEVICE_NEEDS_RESET.
///
/// A malformed individual request is *not* a device error: devices complete
/// or drop it and carry on with the next one.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device has no queue with this index.
    #[error("the device has no queue {0}")]
    UnknownQueue(usize),
    /// The queue itself is unusable (for example the driver published more
    /// available entries than the queue holds, or the used ring cannot be
    /// written).
    #[error("virtqueue {queue} is broken: {source}")]
    Queue {
        /// Index of the queue.
        queue: usize,
        /// What virtio-queue reported.
        #[source]
        source: virtio_queue::Error,
    },
    /// Signalling the guest failed (a host-side problem with the irqfd).
    #[error("cannot signal the used ring of queue {queue}: {source}")]
    Interrupt {
        /// Index of the queue.
        queue: usize,
        /// The eventfd write error.
        #[source]
        source: io::Error,
    },
    /// The process serving the device (a vhost-user backend) failed.
    #[error("backend failed: {0}")]
    Backend(String),
}

/// The eventfds of a slot, for a device whose queues another process serves
/// (vhost-user): KVM writes `kicks[i]` when the guest notifies queue `i`, and
/// a write to `call` raises the slot's interrupt. The backend gets them
/// directly, so requests and completions never pass through the VMM.
#[derive(Debug)]
pub struct DirectNotifiers {
    /// One notification eventfd per queue, in queue order.
    pub kicks: Vec<EventFd>,
    /// The slot's irqfd.
    pub call: EventFd,
}

/// A virtio device behind a transport.
///
/// Methods are called with the device's mutex held, from the vCPU thread
/// (register accesses) or from the VMM event thread (queue notifications
/// delivered through ioeventfds).
pub trait VirtioDevice: Send {
    /// Virtio device ID (virtio 1.x section 5): 2 for block, 4 for entropy...
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; its length is the number of queues. Each
    /// size must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers, including `VIRTIO_F_VERSION_1`.
    fn avail_features(&self) -> u64;

    /// The features the driver accepted; the transport only calls this with
    /// a subset of [`avail_features`](Self::avail_features), before
    /// activation.
    fn set_acked_features(&mut self, features: u64);

    /// Reads `data.len()` bytes of the configuration space at `offset`.
    /// Bytes past the end of the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes `data` to the configuration space at `offset`. Devices ignore
    /// (and log) writes to read-only or nonexistent fields.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Whether [`activate`](Self::activate) succeeded since the last reset.
    fn is_activated(&self) -> bool;

    /// Returns the device to its initial state: queues, guest memory and
    /// interrupt are dropped, acked features forgotten.
    fn reset(&mut self);

    /// Handles a guest notification for queue `index`: processes every
    /// available request. Before activation this does nothing.
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError>;

    /// True for devices whose queues another process serves: the VMM then
    /// hands them the slot's eventfds ([`set_direct_notifiers`]) and never
    /// reads their queue notifications itself.
    ///
    /// [`set_direct_notifiers`]: Self::set_direct_notifiers
    fn wants_direct_notifiers(&self) -> bool {
        false
    }

    /// Receives the slot's eventfds, once, before the guest can drive the
    /// device; only called when [`wants_direct_notifiers`] is true.
    ///
    /// [`wants_direct_notifiers`]: Self::wants_direct_notifiers
    fn set_direct_notifiers(&mut self, _notifiers: DirectNotifiers) {}
}

/// Copies the configuration-space bytes at `offset` into `data`, for
/// [`VirtioDevice::read_config`] implementations backed by a byte array.
/// Bytes past the end of `config` read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_past_the_end_read_as_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 4, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
