//! The virtio-vsock device (virtio 1.x section 5.10): three queues (RX,
//! TX, event), a configuration space holding the guest CID, stream sockets
//! only, backed by the hybrid unix-socket [`VsockMuxer`].
//!
//! - TX notification: every available packet goes to the muxer and its
//!   buffer back to the driver; then packets the muxer has for the guest
//!   (responses, resets...) fill the RX queue.
//! - RX notification (new buffers): pending packets fill the RX queue.
//! - Host readiness ([`Vsock::process_host_event`]): the muxer does its
//!   socket I/O, then pending packets fill the RX queue.
//! - The event queue is never used (it only carries transport resets after
//!   a snapshot restore).
//!
//! Bad packets in well-formed chains (a header announcing more than 64 KiB,
//! wrong type, wrong CIDs) are dropped or answered with a reset. A
//! malformed descriptor chain (wrong buffer direction, too short, outside
//! guest memory, a loop) is a driver bug the device cannot work around: the
//! device fails, returning [`DeviceError::Queue`] with
//! [`virtio_queue::Error::InvalidChain`] (the details are logged), from
//! then on until it is reset, so the transport sets DEVICE_NEEDS_RESET.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, error, info};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::muxer::{MuxerError, VsockMuxer};
use super::packet::{Packet, PacketError, RxBuffer};
use crate::virtio::device::{
    ActivateContext, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt,
};

/// Index of the RX queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Index of the TX queue (driver to device).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE; 3];

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0 to 2 are reserved (hypervisor, local, host) and the top 32
    /// bits are reserved; `u32::MAX` means "any".
    #[error("guest CID {0} is reserved or out of range (valid: 3 to 4294967294)")]
    InvalidCid(u64),
    /// The unix-socket backend could not be set up.
    #[error("vsock backend: {0}")]
    Backend(#[from] MuxerError),
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    /// Kept so the queue stays owned by the device; never used.
    _event: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The virtio-vsock device with the hybrid unix-socket backend.
pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    muxer: VsockMuxer,
    active: Option<Active>,
    /// The queue whose malformed chain failed the device, until reset.
    failed: Option<usize>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.muxer.uds_path())
            .field("active", &self.active.is_some())
            .field("failed", &self.failed)
            .field("connections", &self.muxer.connection_count())
            .finish_non_exhaustive()
    }
}

fn queue_error(queue: usize) -> impl Fn(virtio_queue::Error) -> DeviceError {
    move |source| DeviceError::Queue { queue, source }
}

/// The error a malformed chain on `queue` fails the device with.
fn chain_error(queue: usize) -> DeviceError {
    DeviceError::Queue {
        queue,
        source: virtio_queue::Error::InvalidChain,
    }
}

impl Vsock {
    /// Creates the device for the guest CID `guest_cid`, listening on
    /// `uds_path` for host-initiated connections (guest-initiated ones go
    /// to `<uds_path>_<port>`). `uds_path` must not exist; it is removed
    /// when the device is dropped.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Self, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let muxer = VsockMuxer::new(guest_cid, uds_path)?;
        Ok(Self {
            guest_cid,
            acked_features: 0,
            muxer,
            active: None,
            failed: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The host unix socket path.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// The muxer (connection table), for inspection.
    pub fn muxer(&self) -> &VsockMuxer {
        &self.muxer
    }

    /// Host file descriptors the VMM's event loop must watch for
    /// readability (`EPOLLIN`, level-triggered), calling
    /// [`process_host_event`](Self::process_host_event) with the one that
    /// is ready. The set is fixed for the device's lifetime (today a single
    /// nested epoll descriptor covering the listening socket and every
    /// connection), so it is registered once, right after construction,
    /// whether or not the guest has activated the device yet.
    pub fn host_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.host_fd()]
    }

    /// Handles readiness of `fd`, one of [`host_fds`](Self::host_fds):
    /// accepts host clients, reads their `CONNECT` lines, moves data
    /// between host sockets and connections, then (if the device is active)
    /// fills the RX queue with what is pending for the guest and interrupts
    /// it. Never blocks. Other descriptors are ignored.
    ///
    /// Call it with the device lock held. It always consumes the host
    /// events, so level-triggered readiness cannot spin. An `Err` means the
    /// device has failed (a malformed RX chain): it keeps returning that
    /// error from every [`VirtioDevice::process_queue`] until reset, so the
    /// caller, after releasing the device lock, reports it to the transport
    /// with `QueueNotifier::notify(RX_QUEUE as u32)`, which sets
    /// DEVICE_NEEDS_RESET.
    pub fn process_host_event(&mut self, fd: RawFd) -> Result<(), DeviceError> {
        if fd != self.muxer.host_fd() {
            debug!(fd, "vsock: event for a descriptor that is not the device's");
            return Ok(());
        }
        self.muxer.process_host_events();
        if let Some(queue) = self.failed {
            return Err(chain_error(queue));
        }
        self.fill_rx()
    }

    fn fail(&mut self, queue: usize, err: &PacketError) -> DeviceError {
        error!(
            queue,
            "vsock: malformed descriptor chain, the device needs a reset: {err}"
        );
        self.failed = Some(queue);
        chain_error(queue)
    }

    /// Hands every available TX packet to the muxer.
    fn process_tx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let chains: Vec<_> = active
            .tx
            .iter(mem)
            .map_err(queue_error(TX_QUEUE))?
            .collect();
        let mut completed = 0usize;
        let mut malformed = None;
        for mut chain in chains {
            let head = chain.head_index();
            match Packet::from_tx_chain(mem, &mut chain) {
                Ok(pkt) => self.muxer.handle_guest_packet(&pkt),
                Err(PacketError::Oversize { header, .. }) => {
                    debug!(
                        head,
                        len = header.len,
                        "vsock: oversize packet from the guest, resetting"
                    );
                    self.muxer.reject_guest_packet(&header);
                }
                Err(e) => {
                    malformed = Some(e);
                    break;
                }
            }
            active
                .tx
                .add_used(mem, head, 0)
                .map_err(queue_error(TX_QUEUE))?;
            completed += 1;
        }
        if completed > 0
            && active
                .tx
                .needs_notification(mem)
                .map_err(queue_error(TX_QUEUE))?
        {
            active
                .interrupt
                .signal_used_queue(TX_QUEUE as u16)
                .map_err(|source| DeviceError::Interrupt {
                    queue: TX_QUEUE,
                    source,
                })?;
        }
        match malformed {
            Some(e) => Err(self.fail(TX_QUEUE, &e)),
            None => Ok(()),
        }
    }

    /// Moves pending packets for the guest into the RX queue's buffers.
    fn fill_rx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = &active.mem;
        let mut completed = 0usize;
        let mut malformed = None;
        while self.muxer.has_pending_rx() {
            let next = active.rx.iter(mem).map_err(queue_error(RX_QUEUE))?.next();
            let Some(mut chain) = next else {
                break;
            };
            let head = chain.head_index();
            let buffer = match RxBuffer::new(mem, &mut chain) {
                Ok(buffer) => buffer,
                Err(e) => {
                    malformed = Some(e);
                    break;
                }
            };
            let Some(pkt) = self.muxer.next_packet_for_guest(buffer.capacity()) else {
                // Nothing after all (a socket had no data): keep the buffer.
                active.rx.go_to_previous_position();
                break;
            };
            let len = match buffer.write(&pkt) {
                Ok(len) => len,
                Err(source) => {
                    // The buffer was checked; the packet is lost.
                    malformed = Some(PacketError::Malformed { head, source });
                    break;
                }
            };
            active
                .rx
                .add_used(mem, head, len)
                .map_err(queue_error(RX_QUEUE))?;
            completed += 1;
        }
        if completed > 0
            && active
                .rx
                .needs_notification(mem)
                .map_err(queue_error(RX_QUEUE))?
        {
            active
                .interrupt
                .signal_used_queue(RX_QUEUE as u16)
                .map_err(|source| DeviceError::Interrupt {
                    queue: RX_QUEUE,
                    source,
                })?;
        }
        match malformed {
            Some(e) => Err(self.fail(RX_QUEUE, &e)),
            None => Ok(()),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        data.fill(0);
        let available = usize::try_from(offset)
            .ok()
            .and_then(|start| config.get(start..))
            .unwrap_or_default();
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "virtio-vsock: write to the read-only config space ignored"
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ([rx, tx, event], mem, interrupt) = ctx.into_queues::<3>()?;
        info!(guest_cid = self.guest_cid, "virtio-vsock: activated");
        self.active = Some(Active {
            mem,
            rx,
            tx,
            _event: event,
            interrupt,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        info!(
            guest_cid = self.guest_cid,
            connections = self.muxer.connection_count(),
            "virtio-vsock: reset, closing every connection"
        );
        self.active = None;
        self.acked_features = 0;
        self.failed = None;
        self.muxer.reset();
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if index >= QUEUE_SIZES.len() {
            return Err(DeviceError::UnknownQueue(index));
        }
        if let Some(queue) = self.failed {
            return Err(chain_error(queue));
        }
        if self.active.is_none() {
            debug!("virtio-vsock: notification before activation ignored");
            return Ok(());
        }
        match index {
            TX_QUEUE => {
                self.process_tx()?;
                self.fill_rx()
            }
            RX_QUEUE => self.fill_rx(),
            // Event buffers are only ever used after a snapshot restore.
            _ => Ok(()),
        }
    }
}
