//! The virtio-net device: features, configuration space, and the two data
//! paths between the guest's queues and the tap.
//!
//! # Features
//! Offered: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC (when a MAC is given),
//! CSUM, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_UFO, HOST_TSO4,
//! HOST_TSO6, HOST_UFO and MRG_RXBUF. The guest-side offloads become tap
//! offloads at activation ([`offload_flags`]); the host-side ones need
//! nothing (the tap takes partially checksummed and GSO frames as they
//! are). Not offered: STATUS (the link is always up), CTRL_VQ, MQ, MTU,
//! EVENT_IDX, INDIRECT_DESC. The configuration space is the 6-byte `mac`
//! (zero without VIRTIO_NET_F_MAC); it is read-only.
//!
//! # TX (queue 1)
//! Each chain is one frame: the 12-byte `virtio_net_hdr_v1` followed by the
//! Ethernet frame, all in device-readable buffers. It goes to the tap in one
//! `writev` straight from guest memory, header included. Every chain is
//! completed with used length 0 (the device writes nothing). A chain that
//! is malformed (a loop, a writable buffer, a buffer outside guest memory,
//! shorter than header + Ethernet header, longer than [`MAX_FRAME_LEN`]) or
//! that the tap refuses (interface down, a header the kernel rejects) is
//! dropped and completed the same way: the driver gets its buffer back and
//! the queue goes on.
//!
//! # RX (queue 0)
//! Frames are read from the non-blocking tap into a bounce buffer and
//! copied into receive chains (device-writable buffers). Without
//! MRG_RXBUF a frame goes into one chain, whose `num_buffers` is set to 1;
//! with it a frame may span several chains and `num_buffers` counts them.
//! The used entries of one frame are published together, with one update of
//! the used index, so the driver never sees a partial frame.
//!
//! When no receive chain is available the device stops reading the tap:
//! frames wait in the tap's queue (the kernel drops beyond its length), or
//! the one frame already read waits in the device, until the driver adds
//! buffers and notifies queue 0. Malformed receive chains (a loop, a
//! device-readable buffer, a buffer outside guest memory, room for less than
//! a header) are completed with used length 0, which Linux counts as a
//! length error and recycles; a frame that does not fit the chain offered
//! (without MRG_RXBUF) or all the chains the ring can hold (with it) is
//! dropped and the chains stay available. A malformed chain in the middle
//! of a multi-chain frame drops that frame and completes its chains with
//! length 0. Received headers are checked against the negotiated features:
//! without GUEST_CSUM `flags` is cleared, and a GSO type the guest did not
//! accept drops the frame.
//!
//! Only a broken queue (an impossible available index, an unwritable used
//! ring) or a failing interrupt is a [`DeviceError`]; the transport then
//! puts the device into DEVICE_NEEDS_RESET.
//!
//! # Driving RX from the VMM event loop
//! The tap file ([`Net::tap_fd`]) must be watched for `EPOLLIN` with
//! `EPOLLET` (edge-triggered), and every event answered with
//! [`Net::process_tap_readable`] (or, equivalently, a notification of queue
//! [`RX_QUEUE`] through the transport's `QueueNotifier`, which also applies
//! the transport's DEVICE_NEEDS_RESET handling to errors). Each call reads
//! until the tap is empty (`EAGAIN`) or the guest has no receive buffer
//! left. In the latter case the tap stays readable, which is why the watch
//! must be edge-triggered: a level-triggered one would fire continuously.
//! Reading resumes when the guest notifies queue 0 after adding buffers,
//! which the transport delivers as `process_queue(RX_QUEUE)`. Before
//! activation both do nothing and frames wait in the tap.
//!
//! One call has no frame budget: it runs while the host keeps sending and
//! the guest keeps adding buffers. There is no rate limiter.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

use super::tap::{offload_flags, Tap};
use super::{ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::chain::{check_guest_memory, read_chain, Buffer, ChainError};
use crate::virtio::device::{
    read_config_bytes, ActivateContext, ActivateError, DeviceError, VirtioDevice, VirtioInterrupt,
};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE, QUEUE_SIZE];
/// Most descriptors in one chain (a queue's worth).
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// The `mac` field.
const CONFIG_LEN: usize = 6;
/// Offset of `flags`, `gso_type` and `num_buffers` in `virtio_net_hdr_v1`.
const HDR_FLAGS: usize = 0;
const HDR_GSO_TYPE: usize = 1;
const HDR_NUM_BUFFERS: usize = 10;
/// The ECN bit of `gso_type`.
const GSO_ECN: u8 = 0x80;

/// Counters of the device's traffic since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Bytes written to the tap, headers included.
    pub tx_bytes: u64,
    /// TX chains dropped (malformed, or refused by the tap).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest, headers included.
    pub rx_bytes: u64,
    /// Frames read from the tap but not delivered.
    pub rx_dropped: u64,
    /// RX chains returned unused (length 0) because they were malformed or
    /// held part of a dropped frame.
    pub rx_chains_returned: u64,
}

/// Why a TX chain was dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("chain {head}: descriptor {position} is device-writable; TX buffers are read-only")]
    WritableBuffer { head: u16, position: usize },
    #[error("chain {head}: {len} bytes, less than a header and an Ethernet header")]
    TooShort { head: u16, len: u64 },
    #[error("chain {head}: {len} bytes, more than the {MAX_FRAME_LEN}-byte frame limit")]
    TooLong { head: u16, len: u64 },
    #[error("chain {head}: guest memory access failed: {source}")]
    GuestMemory {
        head: u16,
        #[source]
        source: GuestMemoryError,
    },
    #[error("chain {head}: tap write failed: {source}")]
    Tap {
        head: u16,
        #[source]
        source: io::Error,
    },
    #[error("chain {head}: tap took {written} of {len} bytes")]
    ShortWrite { head: u16, written: usize, len: u64 },
}

/// Why an RX chain cannot take a frame.
#[derive(Debug, thiserror::Error)]
enum RxChainError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("chain {head}: descriptor {position} is device-readable; RX buffers must be writable")]
    ReadableBuffer { head: u16, position: usize },
    #[error("chain {head}: {capacity} bytes, less than a virtio-net header")]
    TooSmall { head: u16, capacity: u64 },
}

/// What happened to one frame read from the tap.
enum Fate {
    /// In the guest.
    Delivered,
    /// Not enough receive buffers: the frame waits, nothing was consumed
    /// for it.
    NoBuffers,
    /// Dropped, for this reason.
    Dropped(&'static str),
}

/// State that exists only while the device is active.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The virtio network device on a tap.
pub struct Net {
    tap: Tap,
    mac: Option<[u8; 6]>,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
    /// Bounce buffer for the frame being received.
    rx_frame: Vec<u8>,
    /// Length of a frame in `rx_frame` that waits for receive buffers.
    rx_pending: Option<usize>,
    stats: NetStats,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.name())
            .field("mac", &self.mac)
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .field("rx_pending", &self.rx_pending)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Net {
    /// A network device on `tap` (opened with [`Tap::open`] or
    /// [`Tap::open_in_netns`]). With `mac`, the guest is given that address
    /// (VIRTIO_NET_F_MAC); without, it picks a random one.
    pub fn new(tap: Tap, mac: Option<[u8; 6]>) -> Self {
        let mut avail_features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_NET_F_GUEST_UFO
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_HOST_UFO
            | 1 << VIRTIO_NET_F_MRG_RXBUF;
        let mut config = [0u8; CONFIG_LEN];
        if let Some(mac) = mac {
            avail_features |= 1 << VIRTIO_NET_F_MAC;
            config.copy_from_slice(&mac);
        }
        Self {
            tap,
            mac,
            avail_features,
            acked_features: 0,
            config,
            active: None,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: None,
            stats: NetStats::default(),
        }
    }

    /// The tap's file descriptor, for the VMM's event loop: watch it for
    /// `EPOLLIN | EPOLLET` and call [`process_tap_readable`] on each event
    /// (see the module documentation). It stays valid as long as the
    /// device; remove it from the epoll set before dropping the device.
    ///
    /// [`process_tap_readable`]: Self::process_tap_readable
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// The tap behind the device.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The MAC address given to the guest, if any.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// Traffic counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Moves frames from the tap into the guest's receive buffers until the
    /// tap is empty or the buffers run out; call it when the tap fd becomes
    /// readable (edge-triggered). Does nothing before activation.
    ///
    /// An error means the receive queue is unusable: the device must be put
    /// into DEVICE_NEEDS_RESET (notifying [`RX_QUEUE`] through the
    /// transport does that automatically).
    pub fn process_tap_readable(&mut self) -> Result<(), DeviceError> {
        self.process_rx()
    }

    fn process_tx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            debug!("virtio-net: TX notification before activation ignored");
            return Ok(());
        };
        let queue_error = |source| DeviceError::Queue {
            queue: TX_QUEUE,
            source,
        };
        let mem = &active.mem;
        // The frames available now; later ones come with their own
        // notification. This bounds the work of one notification.
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> =
            active.tx.iter(mem).map_err(queue_error)?.collect();

        let mut completed = 0usize;
        for chain in chains {
            let head = chain.head_index();
            match transmit(&self.tap, mem, chain) {
                Ok(len) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += len;
                }
                Err(err) => {
                    debug!("virtio-net: TX frame dropped: {err}");
                    self.stats.tx_dropped += 1;
                }
            }
            if head >= active.tx.size() {
                debug!(head, "virtio-net: TX head index outside the queue");
                continue;
            }
            active.tx.add_used(mem, head, 0).map_err(queue_error)?;
            completed += 1;
        }
        signal(active, TX_QUEUE, completed)
    }

    fn process_rx(&mut self) -> Result<(), DeviceError> {
        let Some(active) = self.active.as_mut() else {
            debug!("virtio-net: RX before activation ignored");
            return Ok(());
        };
        let queue_error = |source| DeviceError::Queue {
            queue: RX_QUEUE,
            source,
        };
        let mergeable = self.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut published = 0usize;

        loop {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => {
                    if !has_available(&active.rx, &active.mem).map_err(queue_error)? {
                        // Leave the frames in the tap until the guest adds
                        // buffers and notifies the queue.
                        break;
                    }
                    match self.tap.read(&mut self.rx_frame) {
                        Ok(len) => len,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(err) => {
                            warn!("virtio-net: reading tap {} failed: {err}", self.tap.name());
                            break;
                        }
                    }
                }
            };
            // `read` returns at most the buffer's length.
            let frame = &mut self.rx_frame[..len.min(MAX_FRAME_LEN)];
            if let Err(reason) = check_rx_header(frame, self.acked_features) {
                debug!(len, "virtio-net: RX frame dropped: {reason}");
                self.stats.rx_dropped += 1;
                continue;
            }
            let mut used = Vec::new();
            let fate = deliver(&mut active.rx, &active.mem, frame, mergeable, &mut used)
                .map_err(queue_error)?;
            let returned = used.iter().filter(|&&(_, len)| len == 0).count();
            self.stats.rx_chains_returned += returned as u64;
            publish_used(&mut active.rx, &active.mem, &used).map_err(queue_error)?;
            published += used.len();
            match fate {
                Fate::Delivered => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += frame.len() as u64;
                }
                Fate::NoBuffers => {
                    self.rx_pending = Some(len);
                    break;
                }
                Fate::Dropped(reason) => {
                    debug!(len, "virtio-net: RX frame dropped: {reason}");
                    self.stats.rx_dropped += 1;
                }
            }
        }
        signal(active, RX_QUEUE, published)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "virtio-net: write to read-only config ignored"
        );
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ([rx, tx], mem, interrupt) = ctx.into_queues::<2>()?;
        // The features are final now. If the tap refuses the offloads it
        // keeps them off, and plain frames suit every driver.
        if let Err(err) = self.tap.set_offload(offload_flags(self.acked_features)) {
            warn!("virtio-net: guest offloads stay disabled: {err}");
        }
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        if self.rx_pending.take().is_some() {
            self.stats.rx_dropped += 1;
        }
        if let Err(err) = self.tap.set_offload(0) {
            warn!("virtio-net: cannot disable the tap offloads: {err}");
        }
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        match index {
            // New receive buffers: resume reading the tap.
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => Err(DeviceError::UnknownQueue(index)),
        }
    }
}

/// Sends one TX chain to the tap; returns its length.
fn transmit(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<u64, TxError> {
    let head = chain.head_index();
    let buffers = read_chain(chain, MAX_DESCRIPTORS)?;
    check_guest_memory(mem, head, &buffers)?;
    if let Some(position) = buffers.iter().position(|b| b.device_writable) {
        return Err(TxError::WritableBuffer { head, position });
    }
    let len: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
    if len < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err(TxError::TooShort { head, len });
    }
    if len > MAX_FRAME_LEN as u64 {
        return Err(TxError::TooLong { head, len });
    }

    let memory_error = |source| TxError::GuestMemory { head, source };
    let mut slices = Vec::with_capacity(buffers.len());
    for buffer in buffers.iter().filter(|b| b.len > 0) {
        // u32 fits in usize on supported hosts.
        let parts = mem
            .get_slices(buffer.addr, buffer.len as usize, Permissions::Read)
            .map_err(memory_error)?;
        for slice in parts {
            slices.push(slice.map_err(memory_error)?);
        }
    }
    let written = tap
        .write_slices(&slices)
        .map_err(|source| TxError::Tap { head, source })?;
    if written as u64 != len {
        return Err(TxError::ShortWrite { head, written, len });
    }
    Ok(len)
}

/// Checks the header of a frame read from the tap against the negotiated
/// features, clearing `flags` when the guest did not accept GUEST_CSUM.
fn check_rx_header(frame: &mut [u8], acked: u64) -> Result<(), &'static str> {
    if frame.len() < VNET_HDR_LEN + ETH_HLEN {
        return Err("shorter than a header and an Ethernet header");
    }
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        // virtio 1.x 5.1.6.4.1: without GUEST_CSUM, flags must be zero. The
        // tap only leaves checksums to the reader with TUN_F_CSUM.
        frame[HDR_FLAGS] = 0;
    }
    let gso_type = frame[HDR_GSO_TYPE];
    if gso_type & GSO_ECN != 0 {
        return Err("GSO with ECN, which the guest did not accept");
    }
    let allowed = match u32::from(gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_GUEST_TSO6),
        VIRTIO_NET_HDR_GSO_UDP => has(VIRTIO_NET_F_GUEST_UFO),
        _ => false,
    };
    if !allowed {
        return Err("a GSO type the guest did not accept");
    }
    Ok(())
}

/// Whether the driver has published chains the device has not taken yet.
fn has_available(queue: &Queue, mem: &GuestMemoryMmap) -> Result<bool, virtio_queue::Error> {
    Ok(queue.avail_idx(mem, Ordering::Acquire)? != Wrapping(queue.next_avail()))
}

/// Checks one RX chain; returns its buffers and their total size.
fn check_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(Vec<Buffer>, u64), RxChainError> {
    let head = chain.head_index();
    let buffers = read_chain(chain, MAX_DESCRIPTORS)?;
    check_guest_memory(mem, head, &buffers)?;
    if let Some(position) = buffers.iter().position(|b| !b.device_writable) {
        return Err(RxChainError::ReadableBuffer { head, position });
    }
    let capacity: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
    // virtio 1.x 5.1.6.3.1: every receive buffer holds at least a header.
    if capacity < VNET_HDR_LEN as u64 {
        return Err(RxChainError::TooSmall { head, capacity });
    }
    Ok((buffers, capacity))
}

/// Places `frame` (header included) into receive chains. Pushes onto `used`
/// the used entries to publish, in order: chains returned unused, then the
/// frame's chains.
fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    mergeable: bool,
    used: &mut Vec<(u16, u32)>,
) -> Result<Fate, virtio_queue::Error> {
    let size = queue.size();
    let needed = frame.len() as u64;
    // Where the chains taken for this frame start in the available ring:
    // on a shortage the device goes back there.
    let mut start = queue.next_avail();
    let mut taken: Vec<(u16, Vec<Buffer>)> = Vec::new();
    let mut capacity = 0u64;

    while capacity < needed {
        if taken.len() >= usize::from(size) {
            // The whole ring cannot hold the frame; waiting would stall.
            queue.set_next_avail(start);
            return Ok(Fate::Dropped("larger than a full ring of receive buffers"));
        }
        let Some(chain) = queue.iter(mem)?.next() else {
            queue.set_next_avail(start);
            return Ok(Fate::NoBuffers);
        };
        let head = chain.head_index();
        match check_rx_chain(mem, chain) {
            Ok((buffers, chain_capacity)) => {
                taken.push((head, buffers));
                capacity += chain_capacity;
            }
            Err(err) => {
                debug!("virtio-net: RX chain returned unused: {err}");
                // A head outside the queue cannot go on the used ring.
                if head < size {
                    used.push((head, 0));
                }
                if taken.is_empty() {
                    start = queue.next_avail();
                    continue;
                }
                // The frame's used entries must be consecutive: give the
                // chains taken so far back empty too.
                used.extend(taken.iter().map(|&(head, _)| (head, 0)));
                return Ok(Fate::Dropped("malformed receive chain inside the frame"));
            }
        }
        if !mergeable && capacity < needed {
            // One chain per frame without MRG_RXBUF; keep it for a smaller
            // frame.
            queue.set_next_avail(start);
            return Ok(Fate::Dropped("larger than the receive buffer"));
        }
    }

    // At most QUEUE_SIZE chains.
    let count = taken.len() as u16;
    frame[HDR_NUM_BUFFERS..HDR_NUM_BUFFERS + 2].copy_from_slice(&count.to_le_bytes());
    let first = used.len();
    let mut rest: &[u8] = frame;
    for (head, buffers) in &taken {
        let mut written = 0u32;
        for buffer in buffers {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(rest.len().min(buffer.len as usize));
            if let Err(err) = mem.write_slice(chunk, buffer.addr) {
                // The buffers were checked to be in guest memory; give them
                // all back empty.
                warn!("virtio-net: writing a received frame failed: {err}");
                used.truncate(first);
                used.extend(taken.iter().map(|&(head, _)| (head, 0)));
                return Ok(Fate::Dropped("guest memory write failed"));
            }
            // chunk.len() <= buffer.len, a u32.
            written += chunk.len() as u32;
            rest = tail;
        }
        used.push((*head, written));
    }
    Ok(Fate::Delivered)
}

/// Writes `entries` to the used ring, then publishes them all with a single
/// store of the used index, so the driver sees every chain of a frame at
/// once.
///
/// This bypasses `Queue::add_used` and so the queue's count of entries
/// added since the last notification check, which only matters with
/// VIRTIO_RING_F_EVENT_IDX; the device does not offer it.
fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let mut next = Wrapping(queue.next_used());
    for &(head, len) in entries {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        // struct virtq_used_elem { le32 id; le32 len; } after flags and idx.
        let offset = 4 + u64::from(next.0 % size) * 8;
        let addr = ring
            .checked_add(offset)
            .ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr)
            .map_err(virtio_queue::Error::GuestMemory)?;
        next += Wrapping(1);
    }
    let idx_addr = ring
        .checked_add(2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    // Release: the entries are visible before the index that covers them.
    mem.store(next.0.to_le(), idx_addr, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    queue.set_next_used(next.0);
    Ok(())
}

/// Interrupts the guest for `queue` if entries were added and the driver
/// wants to know.
fn signal(active: &mut Active, queue: usize, added: usize) -> Result<(), DeviceError> {
    if added == 0 {
        return Ok(());
    }
    let ring = if queue == RX_QUEUE {
        &mut active.rx
    } else {
        &mut active.tx
    };
    if ring
        .needs_notification(&active.mem)
        .map_err(|source| DeviceError::Queue { queue, source })?
    {
        // Queue indices are 0 and 1.
        active
            .interrupt
            .signal_used_queue(queue as u16)
            .map_err(|source| DeviceError::Interrupt { queue, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::net::test_utils::{
        open_test_tap, pattern, peer_hdr, tcp_frame, test_frame, udp_frame, wait_readable, TapPeer,
        GUEST_MAC, PEER_HDR_LEN,
    };
    use crate::virtio::test_utils::{
        test_interrupt, test_memory, TestQueue, DATA_BASE, MEM_SIZE, R, W,
    };
    use crate::virtio::EventFdInterrupt;

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    const MAC: u64 = 1 << VIRTIO_NET_F_MAC;
    const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
    const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    const BASE: u64 = VERSION_1 | MAC;
    const WAIT: Duration = Duration::from_secs(5);
    const HDR: usize = VNET_HDR_LEN;

    /// An empty, ready queue below DATA_BASE that the test leaves alone
    /// (TestQueue's layout uses 0x1000..0x5000).
    fn idle_queue(mem: &GuestMemoryMmap) -> Queue {
        mem.write_slice(&[0u8; 0x4000], GuestAddress(0x6000))
            .unwrap();
        let mut queue = Queue::new(16).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(0x6000))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(0x8000))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(0x9000))
            .unwrap();
        queue.set_ready(true);
        queue
    }

    struct Setup {
        net: Net,
        peer: TapPeer,
        interrupt: Arc<EventFdInterrupt>,
    }

    /// A device on a fresh tap, activated with `features` and `tq` as queue
    /// `tested` (the other queue stays empty).
    fn setup(tq: &TestQueue, tested: usize, features: u64) -> Setup {
        let tap = open_test_tap();
        let peer = TapPeer::new(tap.name());
        let mut net = Net::new(tap, Some(GUEST_MAC));
        let interrupt = test_interrupt();
        activate(&mut net, tq, tested, features, interrupt.clone());
        Setup {
            net,
            peer,
            interrupt,
        }
    }

    fn activate(
        net: &mut Net,
        tq: &TestQueue,
        tested: usize,
        features: u64,
        interrupt: Arc<EventFdInterrupt>,
    ) {
        assert_eq!(features & !net.avail_features(), 0);
        net.set_acked_features(features);
        let mut ctx = tq.activate_context(interrupt);
        let queue = ctx.queues.pop().unwrap();
        let idle = idle_queue(tq.mem());
        ctx.queues = if tested == RX_QUEUE {
            vec![queue, idle]
        } else {
            vec![idle, queue]
        };
        net.activate(ctx).unwrap();
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// A 12-byte header with the given flags and checksum offsets.
    fn tx_hdr(flags: u8, csum_start: u16, csum_offset: u16) -> [u8; HDR] {
        let mut hdr = [0u8; HDR];
        hdr[..PEER_HDR_LEN].copy_from_slice(&peer_hdr(flags, 0, 0, 0, csum_start, csum_offset));
        hdr
    }

    /// Sends `frame` from the host towards the device and waits until the
    /// tap has it.
    fn send_to_device(s: &Setup, hdr: [u8; PEER_HDR_LEN], frame: &[u8]) {
        s.peer.send(hdr, frame);
        assert!(wait_readable(s.net.tap_fd(), WAIT), "frame reached the tap");
    }

    fn tap_readable(net: &Net) -> bool {
        wait_readable(net.tap_fd(), Duration::ZERO)
    }

    #[test]
    fn describes_itself() {
        let net = Net::new(open_test_tap(), Some(GUEST_MAC));
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let offloads = (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_GUEST_UFO)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_UFO);
        assert_eq!(net.avail_features(), VERSION_1 | MAC | MRG | offloads);
        assert_eq!(net.mac(), Some(GUEST_MAC));

        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, GUEST_MAC);
        let mut word = [0xffu8; 4];
        net.read_config(4, &mut word);
        assert_eq!(word, [GUEST_MAC[4], GUEST_MAC[5], 0, 0]);

        let mut net = Net::new(open_test_tap(), None);
        assert_eq!(net.avail_features(), VERSION_1 | MRG | offloads);
        net.write_config(0, &[1, 2, 3, 4, 5, 6]);
        net.read_config(0, &mut mac);
        assert_eq!(mac, [0; 6], "no MAC, and the config space is read-only");
    }

    #[test]
    fn tx_writes_each_chain_to_the_tap_with_one_write() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        // Header and frame in separate descriptors, the frame itself split.
        let frame_a = test_frame(&pattern(500, 1));
        mem.write_slice(&tx_hdr(0, 0, 0), GuestAddress(DATA_BASE))
            .unwrap();
        mem.write_slice(&frame_a[..100], GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        mem.write_slice(&frame_a[100..], GuestAddress(DATA_BASE + 0x2000))
            .unwrap();
        tq.add_chain(&[
            (DATA_BASE, HDR as u32, R),
            (DATA_BASE + 0x1000, 100, R),
            (DATA_BASE + 0x2000, (frame_a.len() - 100) as u32, R),
        ]);
        // Header and frame in one descriptor.
        let frame_b = test_frame(&pattern(60, 2));
        let mut data = tx_hdr(0, 0, 0).to_vec();
        data.extend_from_slice(&frame_b);
        mem.write_slice(&data, GuestAddress(DATA_BASE + 0x3000))
            .unwrap();
        tq.add_chain(&[(DATA_BASE + 0x3000, data.len() as u32, R)]);
        let mut s = setup(&tq, TX_QUEUE, BASE);

        s.net.process_queue(TX_QUEUE).unwrap();

        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used_elem(0), (0, 0));
        assert_eq!(tq.used_elem(1), (3, 0));
        assert_eq!(s.interrupt.status(), 1);
        assert_eq!(
            s.peer.recv(WAIT),
            Some(([0; PEER_HDR_LEN], frame_a.clone()))
        );
        assert_eq!(
            s.peer.recv(WAIT),
            Some(([0; PEER_HDR_LEN], frame_b.clone()))
        );
        let stats = s.net.stats();
        assert_eq!((stats.tx_frames, stats.tx_dropped), (2, 0));
        assert_eq!(
            stats.tx_bytes,
            (2 * HDR + frame_a.len() + frame_b.len()) as u64
        );

        // Nothing new: no used entries, no interrupt.
        assert_eq!(s.interrupt.irqfd().read().unwrap(), 1);
        s.net.process_queue(TX_QUEUE).unwrap();
        assert_eq!(tq.used_idx(), 2);
        assert!(s.interrupt.irqfd().read().is_err());
    }

    #[test]
    fn tx_headers_pass_through_to_the_tap() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        // A UDP datagram whose checksum the host is asked to complete.
        let frame = udp_frame(&pattern(64, 3));
        let hdr = tx_hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 34, 6);
        let mut data = hdr.to_vec();
        data.extend_from_slice(&frame);
        mem.write_slice(&data, GuestAddress(DATA_BASE)).unwrap();
        tq.add_chain(&[(DATA_BASE, data.len() as u32, R)]);
        let mut s = setup(&tq, TX_QUEUE, BASE | (1 << VIRTIO_NET_F_CSUM));

        s.net.process_queue(TX_QUEUE).unwrap();

        let (got_hdr, got) = s.peer.recv(WAIT).expect("frame on the interface");
        assert_eq!(got, frame);
        assert_eq!(got_hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, "{got_hdr:?}");
        assert_eq!(u16::from_le_bytes([got_hdr[6], got_hdr[7]]), 34);
        assert_eq!(u16::from_le_bytes([got_hdr[8], got_hdr[9]]), 6);
    }

    #[test]
    fn malformed_tx_chains_are_dropped_and_returned() {
        let mem = test_memory();
        let end = MEM_SIZE;
        let frame = test_frame(&pattern(100, 4));
        let mut data = tx_hdr(0, 0, 0).to_vec();
        data.extend_from_slice(&frame);
        mem.write_slice(&data, GuestAddress(DATA_BASE)).unwrap();
        let len = data.len() as u32;
        let mut tq = TestQueue::new(&mem, 16);
        // 0: a device-writable buffer.
        tq.add_chain(&[(DATA_BASE, len, W)]);
        // 1: a header and nothing else.
        tq.add_chain(&[(DATA_BASE, HDR as u32, R)]);
        // 2: longer than the largest frame.
        tq.add_chain(&[(DATA_BASE, 0x10000, R), (DATA_BASE + 0x10000, 0x10000, R)]);
        // 4: outside guest memory.
        tq.add_chain(&[(DATA_BASE, HDR as u32, R), (end - 16, 64, R)]);
        // 6 -> 7 -> 6: a loop.
        tq.set_desc(6, DATA_BASE, len, R, Some(7));
        tq.set_desc(7, DATA_BASE, len, R, Some(6));
        tq.publish(6);
        // A head outside the table: dropped, never on the used ring.
        tq.publish(40);
        // 8: and a good frame after all that.
        tq.set_desc(8, DATA_BASE, len, R, None);
        tq.publish(8);
        let mut s = setup(&tq, TX_QUEUE, BASE);

        s.net.process_queue(TX_QUEUE).unwrap();

        assert_eq!(tq.used_idx(), 6);
        let used: Vec<_> = (0..6).map(|i| tq.used_elem(i)).collect();
        assert_eq!(used, vec![(0, 0), (1, 0), (2, 0), (4, 0), (6, 0), (8, 0)]);
        assert_eq!(s.peer.recv(WAIT), Some(([0; PEER_HDR_LEN], frame)));
        assert_eq!(
            s.peer.recv(Duration::from_millis(100)),
            None,
            "only one frame"
        );
        let stats = s.net.stats();
        assert_eq!((stats.tx_frames, stats.tx_dropped), (1, 6));
    }

    #[test]
    fn rx_puts_a_frame_into_one_chain() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        // Header and data in separate buffers.
        tq.add_chain(&[(DATA_BASE, HDR as u32, W), (DATA_BASE + 0x1000, 2048, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE);
        let frame = test_frame(&pattern(300, 5));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);

        s.net.process_tap_readable().unwrap();

        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used_elem(0), (0, (HDR + frame.len()) as u32));
        let mut expected_hdr = [0u8; HDR];
        expected_hdr[10] = 1; // num_buffers
        assert_eq!(read(&mem, DATA_BASE, HDR), expected_hdr);
        assert_eq!(read(&mem, DATA_BASE + 0x1000, frame.len()), frame);
        assert_eq!(s.interrupt.status(), 1);
        assert!(!tap_readable(&s.net));
        let stats = s.net.stats();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (1, 0));
        assert_eq!(stats.rx_bytes, (HDR + frame.len()) as u64);
    }

    #[test]
    fn rx_with_mrg_rxbuf_spreads_a_frame_over_chains() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        for i in 0..6 {
            tq.add_chain(&[(DATA_BASE + i * 0x100, 64, W)]);
        }
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG);
        // 12 + 200 bytes: 64 + 64 + 64 + 20.
        let frame = test_frame(&pattern(186, 6));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);

        s.net.process_tap_readable().unwrap();

        assert_eq!(tq.used_idx(), 4);
        let used: Vec<_> = (0..4).map(|i| tq.used_elem(i)).collect();
        assert_eq!(used, vec![(0, 64), (1, 64), (2, 64), (3, 20)]);
        let mut got = Vec::new();
        for (i, &(_, len)) in used.iter().enumerate() {
            got.extend(read(&mem, DATA_BASE + i as u64 * 0x100, len as usize));
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4, "num_buffers");
        assert_eq!(&got[HDR..], &frame[..]);
    }

    #[test]
    fn rx_leaves_frames_in_the_tap_until_buffers_arrive() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        let mut s = setup(&tq, RX_QUEUE, BASE);
        let frame = test_frame(&pattern(80, 7));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);

        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 0);
        assert!(tap_readable(&s.net), "the frame is still in the tap");
        assert_eq!(s.net.stats().rx_dropped, 0);
        assert_eq!(s.interrupt.status(), 0);

        // The driver adds a buffer and notifies the queue.
        tq.add_chain(&[(DATA_BASE, 2048, W)]);
        s.net.process_queue(RX_QUEUE).unwrap();
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used_elem(0), (0, (HDR + frame.len()) as u32));
        assert_eq!(read(&mem, DATA_BASE + HDR as u64, frame.len()), frame);
        assert!(!tap_readable(&s.net));
        assert_eq!(s.interrupt.status(), 1);
    }

    #[test]
    fn rx_with_mrg_rxbuf_waits_for_enough_chains() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 64, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG);
        let frame = test_frame(&pattern(186, 8));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);

        // One chain is not enough: the frame waits in the device.
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 0);
        assert!(!tap_readable(&s.net));

        for i in 1..4 {
            tq.add_chain(&[(DATA_BASE + i * 0x100, 64, W)]);
        }
        s.net.process_queue(RX_QUEUE).unwrap();
        assert_eq!(tq.used_idx(), 4);
        assert_eq!(tq.used_elem(0), (0, 64));
        assert_eq!(tq.used_elem(3), (3, 20));
        assert_eq!(read(&mem, DATA_BASE + 10, 2), [4, 0]);
        assert_eq!(s.net.stats().rx_frames, 1);
    }

    #[test]
    fn malformed_rx_chains_are_returned_empty() {
        let mem = test_memory();
        let end = MEM_SIZE;
        let mut tq = TestQueue::new(&mem, 16);
        // 0: device-readable.
        tq.add_chain(&[(DATA_BASE, 2048, R)]);
        // 1: no room for a header.
        tq.add_chain(&[(DATA_BASE, 8, W)]);
        // 2: outside guest memory.
        tq.add_chain(&[(end - 64, 2048, W)]);
        // 3 -> 4 -> 3: a loop.
        tq.set_desc(3, DATA_BASE, 2048, W, Some(4));
        tq.set_desc(4, DATA_BASE, 2048, W, Some(3));
        tq.publish(3);
        // A head outside the table: skipped, cannot be returned.
        tq.publish(99);
        // 5: good.
        tq.set_desc(5, DATA_BASE + 0x1000, 2048, W, None);
        tq.publish(5);
        let mut s = setup(&tq, RX_QUEUE, BASE);
        let frame = test_frame(&pattern(40, 9));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);

        s.net.process_tap_readable().unwrap();

        assert_eq!(tq.used_idx(), 5);
        let used: Vec<_> = (0..5).map(|i| tq.used_elem(i)).collect();
        let len = (HDR + frame.len()) as u32;
        assert_eq!(used, vec![(0, 0), (1, 0), (2, 0), (3, 0), (5, len)]);
        assert_eq!(
            read(&mem, DATA_BASE + 0x1000 + HDR as u64, frame.len()),
            frame
        );
        assert_eq!(read(&mem, DATA_BASE, 64), vec![0; 64], "nothing written");
        let stats = s.net.stats();
        assert_eq!((stats.rx_frames, stats.rx_chains_returned), (1, 4));
    }

    #[test]
    fn rx_frames_larger_than_the_chain_are_dropped_and_the_chain_kept() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 100, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE);
        send_to_device(&s, [0; PEER_HDR_LEN], &test_frame(&pattern(200, 10)));
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 0);
        assert_eq!(s.net.stats().rx_dropped, 1);

        let small = test_frame(&pattern(50, 11));
        send_to_device(&s, [0; PEER_HDR_LEN], &small);
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used_elem(0), (0, (HDR + small.len()) as u32));
    }

    #[test]
    fn a_malformed_chain_inside_a_mergeable_frame_drops_the_frame() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 64, W)]);
        tq.add_chain(&[(DATA_BASE + 0x100, 64, R)]);
        tq.add_chain(&[(DATA_BASE + 0x200, 2048, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG);
        send_to_device(&s, [0; PEER_HDR_LEN], &test_frame(&pattern(186, 12)));

        s.net.process_tap_readable().unwrap();

        // Both chains come back empty, the bad one first; chain 2 is kept.
        assert_eq!(tq.used_idx(), 2);
        assert_eq!((tq.used_elem(0), tq.used_elem(1)), ((1, 0), (0, 0)));
        let stats = s.net.stats();
        assert_eq!((stats.rx_dropped, stats.rx_chains_returned), (1, 2));

        let frame = test_frame(&pattern(186, 13));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 3);
        assert_eq!(tq.used_elem(2), (2, (HDR + frame.len()) as u32));
    }

    #[test]
    fn a_frame_larger_than_a_full_ring_is_dropped_instead_of_stalling() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        // 16 chains of 16 bytes: 256 bytes in all.
        for i in 0..16 {
            tq.add_chain(&[(DATA_BASE + i * 0x100, 16, W)]);
        }
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG);
        send_to_device(&s, [0; PEER_HDR_LEN], &test_frame(&pattern(300, 20)));
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 0, "the chains are kept");
        assert_eq!(s.net.stats().rx_dropped, 1);

        // 12 + 14 + 50 bytes fit in 5 of them.
        let frame = test_frame(&pattern(50, 21));
        send_to_device(&s, [0; PEER_HDR_LEN], &frame);
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 5);
        assert_eq!(tq.used_elem(4), (4, 12));
    }

    #[test]
    fn received_headers_are_checked_against_the_features() {
        let frame = |flags: u8, gso_type: u8| {
            let mut f = vec![0u8; HDR + ETH_HLEN + 40];
            f[0] = flags;
            f[1] = gso_type;
            f
        };
        let tso4 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;

        // Without GUEST_CSUM, flags are cleared.
        let mut f = frame(needs_csum | 2, 0);
        check_rx_header(&mut f, BASE).unwrap();
        assert_eq!(f[0], 0);
        let mut f = frame(needs_csum, 0);
        check_rx_header(&mut f, BASE | GUEST_CSUM).unwrap();
        assert_eq!(f[0], needs_csum);

        // GSO only as negotiated; never ECN or unknown types.
        assert!(check_rx_header(&mut frame(needs_csum, tso4), BASE | GUEST_CSUM).is_err());
        check_rx_header(&mut frame(needs_csum, tso4), BASE | GUEST_CSUM | GUEST_TSO4).unwrap();
        let all = BASE | GUEST_CSUM | GUEST_TSO4 | (1 << VIRTIO_NET_F_GUEST_TSO6);
        assert!(check_rx_header(&mut frame(needs_csum, tso4 | GSO_ECN), all).is_err());
        assert!(check_rx_header(&mut frame(needs_csum, 5), all).is_err());
        assert!(
            check_rx_header(&mut frame(needs_csum, 3), all).is_err(),
            "UFO not accepted"
        );

        // Shorter than a header and an Ethernet header.
        assert!(check_rx_header(&mut [0u8; HDR + ETH_HLEN - 1], BASE).is_err());
    }

    /// A TCP segment with 3000 bytes of payload, sent by the host as one
    /// GSO packet (gso_size 1000, checksum left to the receiver).
    fn send_gso_packet(s: &Setup) -> Vec<u8> {
        let frame = tcp_frame(&pattern(3000, 14));
        let hdr = peer_hdr(
            VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            54,
            1000,
            34,
            16,
        );
        send_to_device(s, hdr, &frame);
        frame
    }

    #[test]
    fn negotiated_tso_reaches_the_tap_and_the_guest_gets_whole_gso_packets() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 2048, W)]);
        tq.add_chain(&[(DATA_BASE + 0x1000, 2048, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG | GUEST_CSUM | GUEST_TSO4);
        let frame = send_gso_packet(&s);

        s.net.process_tap_readable().unwrap();

        assert_eq!(tq.used_idx(), 2, "one packet in two chains");
        assert_eq!(tq.used_elem(0), (0, 2048));
        assert_eq!(tq.used_elem(1), (1, (HDR + frame.len() - 2048) as u32));
        let hdr = read(&mem, DATA_BASE, HDR);
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, "{hdr:?}");
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4 as u8, "{hdr:?}");
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1000, "gso_size");
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
        let mut got = read(&mem, DATA_BASE + HDR as u64, 2048 - HDR);
        got.extend(read(&mem, DATA_BASE + 0x1000, frame.len() - got.len()));
        // The payload arrives intact (the IP header may be adjusted).
        assert_eq!(&got[54..], &frame[54..]);
    }

    #[test]
    fn without_offloads_the_host_segments_and_checksums_for_the_guest() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        for i in 0..4 {
            tq.add_chain(&[(DATA_BASE + i * 0x1000, 2048, W)]);
        }
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG);
        let frame = send_gso_packet(&s);

        // Segments may reach the tap one by one.
        let mut payload = 0;
        let mut segments = 0u16;
        let deadline = std::time::Instant::now() + WAIT;
        while payload < 3000 && std::time::Instant::now() < deadline {
            s.net.process_tap_readable().unwrap();
            while segments < tq.used_idx() {
                let (head, len) = tq.used_elem(segments);
                let got = read(&mem, DATA_BASE + u64::from(head) * 0x1000, len as usize);
                assert_eq!(got[0], 0, "flags: full checksum");
                assert_eq!(got[1], 0, "gso_type NONE");
                assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
                assert_eq!(len as usize, HDR + 54 + 1000);
                assert_eq!(&got[HDR + 54..], &frame[54 + payload..54 + payload + 1000]);
                payload += 1000;
                segments += 1;
            }
            wait_readable(s.net.tap_fd(), Duration::from_millis(100));
        }
        assert_eq!((segments, payload), (3, 3000));
    }

    #[test]
    fn the_event_loop_contract_with_edge_triggered_epoll() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 2048, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE);
        // SAFETY: epoll_create1(2) takes no pointers.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0);
        // SAFETY: `epfd` was just created and is owned by nothing else.
        let epoll = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epfd) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 7,
        };
        // SAFETY: epoll_ctl(2) reads one epoll_event, which lives across the
        // call; both descriptors are open.
        let ret = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                s.net.tap_fd(),
                &mut event,
            )
        };
        assert_eq!(ret, 0);
        let wait = |ms| {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: epoll_wait(2) writes at most 4 events into `events`.
            unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 4, ms) }
        };

        // Two frames, one buffer.
        let first = test_frame(&pattern(64, 15));
        let second = test_frame(&pattern(64, 16));
        s.peer.send([0; PEER_HDR_LEN], &first);
        s.peer.send([0; PEER_HDR_LEN], &second);
        assert_eq!(wait(5000), 1);
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 1);
        // The second frame waits in the tap, and the edge is spent: no busy
        // loop while the guest has no buffers.
        assert!(tap_readable(&s.net));
        assert_eq!(wait(0), 0);
        // The guest's RX notification resumes reading.
        tq.add_chain(&[(DATA_BASE + 0x1000, 2048, W)]);
        s.net.process_queue(RX_QUEUE).unwrap();
        assert_eq!(tq.used_idx(), 2);
        assert_eq!(
            read(&mem, DATA_BASE + 0x1000 + HDR as u64, second.len()),
            second
        );
    }

    #[test]
    fn inactive_devices_leave_frames_in_the_tap() {
        let tap = open_test_tap();
        let peer = TapPeer::new(tap.name());
        let mut net = Net::new(tap, None);
        peer.send([0; PEER_HDR_LEN], &test_frame(&pattern(64, 17)));
        assert!(wait_readable(net.tap_fd(), WAIT));
        net.process_tap_readable().unwrap();
        net.process_queue(RX_QUEUE).unwrap();
        net.process_queue(TX_QUEUE).unwrap();
        assert!(tap_readable(&net));
        assert!(matches!(
            net.process_queue(2),
            Err(DeviceError::UnknownQueue(2))
        ));
    }

    #[test]
    fn activation_and_reset() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 64, W)]);
        let mut s = setup(&tq, RX_QUEUE, BASE | MRG | GUEST_CSUM | GUEST_TSO4);
        assert!(s.net.is_activated());
        assert!(matches!(
            s.net.activate(tq.activate_context(test_interrupt())),
            Err(ActivateError::AlreadyActive)
        ));
        // A frame waiting in the device for more chains is dropped by reset.
        send_to_device(&s, [0; PEER_HDR_LEN], &test_frame(&pattern(186, 18)));
        s.net.process_tap_readable().unwrap();
        assert_eq!(tq.used_idx(), 0);
        s.net.reset();
        assert!(!s.net.is_activated());
        assert_eq!(s.net.stats().rx_dropped, 1);

        // Reset turned the tap's offloads off: a GSO packet sent now is
        // segmented by the host, even though the next activation accepts
        // TSO again.
        let frame = send_gso_packet(&s);
        let mut tq = TestQueue::new(&mem, 16);
        for i in 0..4 {
            tq.add_chain(&[(DATA_BASE + i * 0x1000, 2048, W)]);
        }
        let features = BASE | MRG | GUEST_CSUM | GUEST_TSO4;
        activate(&mut s.net, &tq, RX_QUEUE, features, s.interrupt.clone());
        let deadline = std::time::Instant::now() + WAIT;
        while tq.used_idx() < 3 && std::time::Instant::now() < deadline {
            s.net.process_tap_readable().unwrap();
            wait_readable(s.net.tap_fd(), Duration::from_millis(100));
        }
        assert_eq!(tq.used_idx(), 3, "three segments");
        for i in 0..3 {
            let (head, len) = tq.used_elem(i);
            assert_eq!(len as usize, HDR + 54 + 1000);
            let got = read(&mem, DATA_BASE + u64::from(head) * 0x1000, HDR + 54);
            assert_eq!(got[1], 0, "gso_type NONE");
            assert_eq!(got[HDR..HDR + 12], frame[..12], "Ethernet addresses");
        }

        let mut net = Net::new(open_test_tap(), None);
        assert!(matches!(
            net.activate(tq.activate_context(test_interrupt())),
            Err(ActivateError::QueueCount {
                expected: 2,
                actual: 1
            })
        ));
        assert!(!net.is_activated());
    }

    #[test]
    fn an_impossible_avail_index_is_a_device_error() {
        let mem = test_memory();
        let tq = TestQueue::new(&mem, 16);
        tq.set_avail_idx(100);
        let mut s = setup(&tq, TX_QUEUE, BASE);
        assert!(matches!(
            s.net.process_queue(TX_QUEUE),
            Err(DeviceError::Queue { queue: 1, .. })
        ));

        let tq = TestQueue::new(&mem, 16);
        tq.set_avail_idx(100);
        let mut s = setup(&tq, RX_QUEUE, BASE);
        send_to_device(&s, [0; PEER_HDR_LEN], &test_frame(&pattern(64, 19)));
        assert!(matches!(
            s.net.process_tap_readable(),
            Err(DeviceError::Queue { queue: 0, .. })
        ));
    }
}
