//! virtio-net (network device, virtio 1.x section 5.1) backed by a Linux
//! tap interface.
//!
//! - [`tap`]: opening the tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//!   optionally in another network namespace) and mapping negotiated
//!   features to its offloads.
//! - [`device`]: the [`Net`] device: features, configuration space, the TX
//!   path (guest frames to the tap, one `writev` each) and the RX path
//!   (tap frames into guest receive buffers).
//!
//! The 12-byte `virtio_net_hdr_v1` the guest puts in front of every frame
//! is the header the tap expects, so frames pass between the guest and the
//! tap with their header unchanged (except `num_buffers` and, without
//! GUEST_CSUM, `flags`, which the device sets on received frames).

pub mod device;
pub mod tap;
#[cfg(test)]
mod test_utils;

pub use device::{Net, NetStats, RX_QUEUE, TX_QUEUE};
pub use tap::{offload_flags, Tap, TapError};

/// Size of `struct virtio_net_hdr_v1` (virtio 1.x: `num_buffers` is always
/// present).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame, header included, either way: a 64 KiB GSO packet plus
/// Ethernet header and virtio-net header (65536 + 14 + 12).
pub const MAX_FRAME_LEN: usize = 65562;
/// Length of an Ethernet header; shorter frames are dropped.
pub const ETH_HLEN: usize = 14;
