//! The sandbox guest agent: PID 1 of the sandbox VM, serving containerd's
//! Task API over ttrpc and running OCI containers with libcontainer.
//!
//! The `client` module is the host side used by tests and the controller.

pub mod client;
pub mod events;
pub mod cgroups;
pub mod error;
pub mod mounts;
pub mod reaper;
pub mod stdio;
pub mod validate;
pub mod container;
pub mod process;
pub mod service;
pub mod init;
pub mod server;
pub mod guest_root;
