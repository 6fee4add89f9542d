//! virtio-fs (device type 26) through vhost-user.
//!
//! The VMM does not serve the filesystem itself: a virtiofsd process per
//! share ([`Virtiofsd`]) maps guest memory from the memfd it is sent, reads
//! requests straight from the queues and signals completions through the
//! slot's irqfd. This module is the frontend side:
//! - [`config`]: the tag rules and the configuration space (tag and number
//!   of request queues);
//! - [`vhost_user`]: the vhost-user conversation with the backend (features,
//!   memory table, vring setup and stop);
//! - [`device`]: [`Fs`], the [`VirtioDevice`](super::VirtioDevice) the
//!   transport drives; it forwards the driver's setup to the backend and
//!   turns a dead backend into a device error;
//! - [`virtiofsd`]: finding, starting, watching and stopping virtiofsd.

pub mod config;
pub mod device;
pub mod vhost_user;
pub mod virtiofsd;

#[cfg(test)]
mod tests;

pub use config::{check_tag, TagError, CONFIG_SPACE_SIZE, TAG_LEN};
pub use device::{Fs, FsError, NUM_REQUEST_QUEUES, QUEUE_SIZE};
pub use virtiofsd::{find_virtiofsd, Virtiofsd, VirtiofsdError, INSTALL_HINT};
