//! virtio-blk (block device, virtio 1.x section 5.2) backed by a raw disk
//! image file.
//!
//! - [`request`]: turning a descriptor chain into a validated [`Request`].
//! - [`disk`]: the image file, read and written with pread/pwrite straight
//!   into and out of guest memory.
//! - [`device`]: the [`Block`] device: features, configuration space,
//!   request execution.

pub mod device;
pub mod disk;
pub mod request;

pub use device::{Block, BlockError};
pub use disk::{DiskError, DiskImage};
pub use request::{ParseError, Request, RequestError, RequestLimits, RequestType, Segment};

/// Size of a virtio-blk sector; sector numbers and capacity count these,
/// whatever the image's own block size.
pub const SECTOR_SIZE: u64 = 512;
