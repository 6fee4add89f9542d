//! vsock packets on the virtqueues (virtio 1.x section 5.10.6).
//!
//! Every packet is a 44-byte little-endian header ([`Header`]) followed by
//! `len` payload bytes. The driver may put header and payload in one
//! descriptor (Linux >= 6.2) or in two; virtio-vsock's [`VsockPacket`]
//! parses both layouts. This module wraps it:
//!
//! - [`Packet::from_tx_chain`] copies a packet the guest sent out of guest memory,
//!   after checking that its descriptor chain is well formed;
//! - [`RxBuffer`] is an empty guest buffer on the RX queue that the device
//!   fills with one [`Packet`] for the guest.
//!
//! Errors are split by who can recover: [`PacketError::Oversize`] is a bad
//! packet (the header is intact, so the device can answer it with a reset),
//! everything else is a malformed descriptor chain.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{Error as ParseError, VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};

/// The host's CID: every packet the guest sends to the host goes there.
pub const HOST_CID: u64 = 2;
/// The only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection refused or torn down.
pub const OP_RST: u16 = 3;
/// The sender will not receive and/or send any more (see the `SHUTDOWN_*`
/// flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Payload.
pub const OP_RW: u16 = 5;
/// Unsolicited credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// The sender asks for an [`OP_CREDIT_UPDATE`].
pub const OP_CREDIT_REQUEST: u16 = 7;

/// [`OP_SHUTDOWN`] flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// [`OP_SHUTDOWN`] flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Size of the packet header.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;
/// Largest payload the device accepts from or sends to the guest (the
/// Linux driver's own limit, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Most descriptors walked when checking that a chain is well formed.
const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// A vsock packet header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*` for [`OP_SHUTDOWN`]).
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far
    /// (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes a header from its little-endian wire format.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header in its little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn from_packet(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }
}

/// A packet with its payload (`header.len == data.len()`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// The header.
    pub header: Header,
    /// The payload.
    pub data: Vec<u8>,
}

/// Why a descriptor chain did not yield a packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The chain does not end: a loop, a `next` index outside the
    /// descriptor table, or an unreadable descriptor.
    #[error("chain {head} breaks off after {count} descriptors (a loop or a next index outside the table)")]
    Truncated {
        /// Head index of the chain.
        head: u16,
        /// Descriptors read before the chain broke off.
        count: usize,
    },
    /// A buffer of the chain is not (entirely) in guest memory.
    #[error("chain {head}: buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutsideMemory {
        /// Head index of the chain.
        head: u16,
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The chain's buffers cannot hold a packet: wrong direction, too
    /// short, outside guest memory, split across memory regions...
    #[error("chain {head} is not a valid vsock packet: {source}")]
    Malformed {
        /// Head index of the chain.
        head: u16,
        /// What virtio-vsock reported.
        #[source]
        source: ParseError,
    },
    /// The header announces more payload than [`MAX_PAYLOAD`]. The header
    /// itself is valid, so the sender can be told.
    #[error("chain {head}: the header announces {} payload bytes, more than {MAX_PAYLOAD}", header.len)]
    Oversize {
        /// Head index of the chain.
        head: u16,
        /// The header as the guest wrote it.
        header: Header,
    },
}

impl PacketError {
    /// Whether the descriptor chain itself is malformed (as opposed to a
    /// well-formed chain carrying a bad packet).
    pub fn is_malformed_chain(&self) -> bool {
        !matches!(self, Self::Oversize { .. })
    }
}

/// Checks the whole of `chain` without consuming it: it must end (no loop,
/// no `next` index outside the table), every buffer must lie in guest
/// memory and go in the expected direction. virtio-queue's iterator stops
/// silently at a loop or a bad index, and virtio-vsock only looks at the
/// descriptors it needs, so this walks all of them.
fn check_chain(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
    device_writable: bool,
) -> Result<(), PacketError> {
    let head = chain.head_index();
    let mut count = 0usize;
    let mut announces_next = true;
    for desc in chain.clone().take(MAX_CHAIN_DESCRIPTORS) {
        if desc.is_write_only() != device_writable {
            let source = if device_writable {
                ParseError::UnexpectedReadOnlyDescriptor
            } else {
                ParseError::UnexpectedWriteOnlyDescriptor
            };
            return Err(PacketError::Malformed { head, source });
        }
        let access = if device_writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        // u32 always fits in usize on the 64-bit hosts this VMM supports.
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(PacketError::OutsideMemory {
                head,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        count += 1;
        announces_next = desc.has_next();
    }
    if announces_next {
        return Err(PacketError::Truncated { head, count });
    }
    Ok(())
}

impl Packet {
    /// Reads the packet the guest put on the TX queue in `chain` out of
    /// guest memory.
    pub fn from_tx_chain(
        mem: &GuestMemoryMmap,
        chain: &mut DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Packet, PacketError> {
        let head = chain.head_index();
        check_chain(mem, chain, false)?;
        // Kept to re-read the header if virtio-vsock rejects its length.
        let head_desc = chain.clone().next();
        let pkt = match VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PAYLOAD) {
            Ok(pkt) => pkt,
            Err(ParseError::InvalidHeaderLen(_)) => {
                let mut raw = [0u8; HEADER_SIZE];
                // virtio-vsock read the header before it checked `len`, so
                // this read succeeds; if it does not, the chain is broken.
                let desc = head_desc.ok_or(PacketError::Malformed {
                    head,
                    source: ParseError::DescriptorChainTooShort,
                })?;
                mem.read_slice(&mut raw, desc.addr())
                    .map_err(|e| PacketError::Malformed {
                        head,
                        source: ParseError::InvalidMemoryAccess(e),
                    })?;
                return Err(PacketError::Oversize {
                    head,
                    header: Header::from_bytes(&raw),
                });
            }
            Err(source) => return Err(PacketError::Malformed { head, source }),
        };
        let header = Header::from_packet(&pkt);
        let mut data = Vec::new();
        if let Some(slice) = pkt.data_slice() {
            // virtio-vsock sized the slice to exactly `len` (<= MAX_PAYLOAD).
            data.resize(slice.len(), 0);
            slice
                .read_slice(&mut data, 0)
                .map_err(|e| PacketError::Malformed {
                    head,
                    source: ParseError::InvalidVolatileAccess(e),
                })?;
        }
        Ok(Packet { header, data })
    }
}

/// An empty device-writable buffer from the RX queue.
#[derive(Debug)]
pub struct RxBuffer<'a> {
    packet: VsockPacket<'a, ()>,
}

impl<'a> RxBuffer<'a> {
    /// Takes the buffers of `chain` for one packet to the guest.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: &mut DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let head = chain.head_index();
        check_chain(mem, chain, true)?;
        let packet = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PAYLOAD)
            .map_err(|source| PacketError::Malformed { head, source })?;
        Ok(Self { packet })
    }

    /// Payload bytes the buffer can hold (at most [`MAX_PAYLOAD`]).
    pub fn capacity(&self) -> usize {
        let max = MAX_PAYLOAD as usize;
        self.packet.data_slice().map_or(0, |s| s.len().min(max))
    }

    /// Writes `packet` into the buffer and returns the used length to
    /// report (header plus payload). The payload is cut to
    /// [`capacity`](Self::capacity) and `header.len` set to what was
    /// written.
    pub fn write(mut self, packet: &Packet) -> Result<u32, ParseError> {
        let n = packet.data.len().min(self.capacity());
        let data = packet.data.get(..n).unwrap_or_default();
        if let Some(slice) = self.packet.data_slice() {
            slice
                .write_slice(data, 0)
                .map_err(ParseError::InvalidVolatileAccess)?;
        }
        let mut header = packet.header;
        // n <= MAX_PAYLOAD, which fits in u32.
        header.len = n as u32;
        self.packet.set_header_from_raw(&header.to_bytes())?;
        Ok(HEADER_SIZE as u32 + header.len)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueOwnedT;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::test_utils::{test_memory, TestQueue, DATA_BASE, MEM_SIZE, R, W};

    /// (address, length, device-writable)
    type Buf = (u64, u32, bool);

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1025,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 17,
        }
    }

    fn pop(tq: &TestQueue) -> Result<Packet, PacketError> {
        let mut queue = tq.queue();
        let mut chain = queue.iter(tq.mem()).unwrap().next().unwrap();
        Packet::from_tx_chain(tq.mem(), &mut chain)
    }

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            ..sample()
        };
        let bytes = h.to_bytes();
        assert_eq!(&bytes[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[30..32], &[5, 0]);
        assert_eq!(Header::from_bytes(&bytes), h);
    }

    #[test]
    fn tx_header_and_data_in_separate_descriptors() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        mem.write_slice(&sample().to_bytes(), GuestAddress(DATA_BASE))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        tq.add_chain(&[
            (DATA_BASE, HEADER_SIZE as u32, R),
            (DATA_BASE + 0x1000, 64, R),
        ]);
        let pkt = pop(&tq).unwrap();
        assert_eq!(pkt.header, sample());
        assert_eq!(pkt.data, b"hello");
    }

    #[test]
    fn tx_header_and_data_in_one_descriptor() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        mem.write_slice(&sample().to_bytes(), GuestAddress(DATA_BASE))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(DATA_BASE + HEADER_SIZE as u64))
            .unwrap();
        tq.add_chain(&[(DATA_BASE, HEADER_SIZE as u32 + 5, R)]);
        let pkt = pop(&tq).unwrap();
        assert_eq!(pkt.data, b"hello");
    }

    #[test]
    fn oversize_len_keeps_the_header_for_a_reset() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        let header = Header {
            len: MAX_PAYLOAD + 1,
            ..sample()
        };
        mem.write_slice(&header.to_bytes(), GuestAddress(DATA_BASE))
            .unwrap();
        tq.add_chain(&[
            (DATA_BASE, HEADER_SIZE as u32, R),
            (DATA_BASE + 0x1000, 64, R),
        ]);
        let err = pop(&tq).unwrap_err();
        assert!(!err.is_malformed_chain());
        assert!(matches!(err, PacketError::Oversize { header: h, .. } if h == header));
    }

    #[test]
    fn malformed_tx_chains_are_errors() {
        let mem = test_memory();
        let header = sample().to_bytes();
        mem.write_slice(&header, GuestAddress(DATA_BASE)).unwrap();
        let cases: Vec<(&str, Vec<Buf>)> = vec![
            (
                "writable header",
                vec![(DATA_BASE, 44, W), (DATA_BASE + 0x1000, 64, R)],
            ),
            (
                "writable data",
                vec![(DATA_BASE, 44, R), (DATA_BASE + 0x1000, 64, W)],
            ),
            ("short header", vec![(DATA_BASE, 20, R)]),
            ("missing data", vec![(DATA_BASE, 44, R)]),
            (
                "short data",
                vec![(DATA_BASE, 44, R), (DATA_BASE + 0x1000, 2, R)],
            ),
            ("header outside memory", vec![(MEM_SIZE - 8, 44, R)]),
            (
                "data outside memory",
                vec![(DATA_BASE, 44, R), (MEM_SIZE - 2, 5, R)],
            ),
            (
                "huge data length",
                vec![(DATA_BASE, 44, R), (DATA_BASE + 0x1000, u32::MAX, R)],
            ),
        ];
        for (what, chain) in cases {
            let mut tq = TestQueue::new(&mem, 16);
            tq.add_chain(&chain);
            let err = pop(&tq).unwrap_err();
            assert!(err.is_malformed_chain(), "{what}: {err}");
        }
    }

    #[test]
    fn a_looping_chain_is_an_error() {
        let mem = test_memory();
        mem.write_slice(&sample().to_bytes(), GuestAddress(DATA_BASE))
            .unwrap();
        let mut tq = TestQueue::new(&mem, 16);
        // 0 -> 1 -> 0: enough for header and data, but never ends.
        tq.set_desc(0, DATA_BASE, 44, R, Some(1));
        tq.set_desc(1, DATA_BASE + 0x1000, 64, R, Some(0));
        tq.publish(0);
        assert!(matches!(
            pop(&tq),
            Err(PacketError::Truncated { head: 0, .. })
        ));

        // A next index outside the table.
        let mut tq = TestQueue::new(&mem, 16);
        tq.set_desc(0, DATA_BASE, 44, R, Some(1));
        tq.set_desc(1, DATA_BASE + 0x1000, 64, R, Some(200));
        tq.publish(0);
        assert!(matches!(pop(&tq), Err(PacketError::Truncated { .. })));
    }

    #[test]
    fn rx_buffers_in_both_layouts() {
        let mem = test_memory();
        let packet = Packet {
            header: sample(),
            data: b"hello".to_vec(),
        };
        for split in [true, false] {
            let mut tq = TestQueue::new(&mem, 16);
            if split {
                tq.add_chain(&[(DATA_BASE, 44, W), (DATA_BASE + 0x1000, 4096, W)]);
            } else {
                tq.add_chain(&[(DATA_BASE, 44 + 4096, W)]);
            }
            let mut queue = tq.queue();
            let mut chain = queue.iter(&mem).unwrap().next().unwrap();
            let rx = RxBuffer::new(&mem, &mut chain).unwrap();
            assert_eq!(rx.capacity(), 4096);
            assert_eq!(rx.write(&packet).unwrap(), 49);
            let mut raw = [0u8; HEADER_SIZE];
            mem.read_slice(&mut raw, GuestAddress(DATA_BASE)).unwrap();
            assert_eq!(Header::from_bytes(&raw), sample());
            let data_at = if split {
                DATA_BASE + 0x1000
            } else {
                DATA_BASE + 44
            };
            let mut data = [0u8; 5];
            mem.read_slice(&mut data, GuestAddress(data_at)).unwrap();
            assert_eq!(&data, b"hello");
        }
    }

    #[test]
    fn rx_payload_is_cut_to_the_buffer() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(DATA_BASE, 44, W), (DATA_BASE + 0x1000, 3, W)]);
        let mut queue = tq.queue();
        let mut chain = queue.iter(&mem).unwrap().next().unwrap();
        let rx = RxBuffer::new(&mem, &mut chain).unwrap();
        let packet = Packet {
            header: sample(),
            data: b"hello".to_vec(),
        };
        assert_eq!(rx.write(&packet).unwrap(), 47);
        let mut raw = [0u8; HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(DATA_BASE)).unwrap();
        assert_eq!(Header::from_bytes(&raw).len, 3);
    }

    #[test]
    fn malformed_rx_chains_are_errors() {
        let mem = test_memory();
        let cases: Vec<(&str, Vec<Buf>)> = vec![
            (
                "readable header",
                vec![(DATA_BASE, 44, R), (DATA_BASE + 0x1000, 64, W)],
            ),
            (
                "readable data",
                vec![(DATA_BASE, 44, W), (DATA_BASE + 0x1000, 64, R)],
            ),
            ("header only", vec![(DATA_BASE, 44, W)]),
            (
                "short header",
                vec![(DATA_BASE, 10, W), (DATA_BASE + 0x1000, 64, W)],
            ),
            (
                "outside memory",
                vec![(DATA_BASE, 44, W), (MEM_SIZE - 8, 64, W)],
            ),
            (
                "too long",
                vec![(DATA_BASE, 44, W), (DATA_BASE + 0x1000, MAX_PAYLOAD + 1, W)],
            ),
        ];
        for (what, chain) in cases {
            let mut tq = TestQueue::new(&mem, 16);
            tq.add_chain(&chain);
            let mut queue = tq.queue();
            let mut chain = queue.iter(&mem).unwrap().next().unwrap();
            let err = RxBuffer::new(&mem, &mut chain).unwrap_err();
            assert!(err.is_malformed_chain(), "{what}: {err}");
        }
    }
}
