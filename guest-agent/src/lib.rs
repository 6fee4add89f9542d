//! The sandbox guest agent: PID 1 of the sandbox VM, serving containerd's
//! Task API over ttrpc and running OCI containers with libcontainer.
//!
//! The `client` module is the host side used by tests and the controller.

pub mod client;
pub mod events;
pub mod guest_root;
