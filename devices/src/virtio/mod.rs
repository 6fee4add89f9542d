//! Virtio device model: the virtio-mmio transport (version 2) and devices.
//!
//! - [`device`]: the [`VirtioDevice`] trait the transport drives and the
//!   [`VirtioInterrupt`] trait devices signal through.
//! - [`interrupt`]: [`EventFdInterrupt`], the InterruptStatus register of a
//!   slot plus its irqfd.
//! - [`mmio`]: [`MmioTransport`], one 4 KiB virtio-mmio slot on the MMIO bus.
//! - [`chain`]: reading a descriptor chain into checked guest buffers.
//! - [`rng`]: [`Rng`], the entropy device.
//! - [`block`]: [`Block`], the block device on a raw image file.
//! - [`net`]: [`Net`], the network device on a tap interface.
//! - [`vsock`]: [`Vsock`], the socket device with the hybrid unix-socket
//!   backend.
//! - [`fs`]: [`Fs`], the virtio-fs device: a vhost-user frontend to a
//!   virtiofsd process ([`fs::Virtiofsd`]) that serves the queues itself.
//!
//! Everything that comes from the guest (register values, ring addresses,
//! descriptor chains, request headers) is validated before use; a guest can
//! fail its own requests or put its own device into DEVICE_NEEDS_RESET, but
//! never panic the VMM or touch memory outside its own.

pub mod block;
pub mod chain;
pub mod device;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

pub use block::Block;
pub use chain::{check_guest_memory, read_chain, Buffer, ChainError};
pub use device::{
    read_config_bytes, ActivateContext, ActivateError, DeviceError, DirectNotifiers, VirtioDevice,
    VirtioInterrupt, INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_RING,
};
pub use fs::Fs;
pub use interrupt::EventFdInterrupt;
pub use mmio::{
    kernel_cmdline_entry, MmioTransport, QueueConfigError, QueueNotifier, CONFIG_SPACE_OFFSET,
    MMIO_SLOT_SIZE, QUEUE_NOTIFY_OFFSET,
};
pub use net::{Net, Tap};
pub use rng::Rng;
pub use vsock::Vsock;
