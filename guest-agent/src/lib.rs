//! The sandbox guest agent: PID 1 of the sandbox VM, serving containerd's
//! Task API over ttrpc and running OCI containers with libcontainer.
//!
//! The `client` module is the host side used by tests and the controller.

pub mod cgroups;
pub mod client;
pub mod container;
pub mod error;
pub mod events;
pub mod init;
pub mod lc_helper;
pub mod mounts;
pub mod process;
pub mod reaper;
pub mod server;
pub mod service;
pub mod stdio;
pub mod validate;
