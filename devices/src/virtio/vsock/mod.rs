//! virtio-vsock with the hybrid unix-socket backend (Firecracker / Cloud
//! Hypervisor convention): guest `AF_VSOCK` stream sockets reach host
//! programs through unix sockets.
//!
//! - [`packet`]: vsock packets on the virtqueues (both descriptor layouts).
//! - [`connection`]: one connection's state machine and credit accounting,
//!   over any non-blocking byte stream.
//! - [`muxer`]: [`VsockMuxer`], the listening socket, `CONNECT` handshakes,
//!   the connection table and the nested epoll instance.
//! - [`device`]: [`Vsock`], the [`VirtioDevice`](super::VirtioDevice).
//!
//! Driving it from the VMM: register every descriptor of
//! [`Vsock::host_fds`] for `EPOLLIN` once, call [`Vsock::process_host_event`]
//! when one is ready, and deliver queue notifications as for any device.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use connection::{ConnState, Connection, HostStream, CONN_BUF_SIZE};
pub use device::{Vsock, VsockError, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use muxer::{host_port_path, ConnKey, MuxerError, VsockMuxer};
pub use packet::{Header, Packet, PacketError};
