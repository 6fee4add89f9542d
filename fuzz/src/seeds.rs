//! The saved corpus (`fuzz/corpus/<target>/<name>`): well-formed requests a
//! driver would send, encoded in each target's input format. Regenerate
//! with `cargo run --manifest-path fuzz/Cargo.toml --example seeds`;
//! `tests/corpus.rs` checks that the files match and that each seed does
//! what its name says.

use devices::virtio::vsock::packet::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_SEND, TYPE_STREAM,
};
use devices::virtio::vsock::Header;

use crate::vsock::{GUEST_CID, HOST_PORT};
use crate::{data_addr, QueueSpec, RawDesc, F_NEXT, F_WRITE, REGIONS};

/// virtio-blk request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Get the device ID.
pub const T_GET_ID: u32 = 8;

/// Device-readable.
pub const R: bool = false;
/// Device-writable.
pub const W: bool = true;

/// The data area of a seed: bytes that go into the input, plus zeroed
/// scratch buffers in region 1 that cost no input bytes.
#[derive(Debug, Default)]
pub struct Data {
    bytes: Vec<u8>,
    scratch: u64,
}

impl Data {
    /// Places `b` in the data area (16-byte aligned); returns its address.
    pub fn put(&mut self, b: &[u8]) -> u64 {
        let offset = self.bytes.len().next_multiple_of(16);
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(b);
        data_addr(offset)
    }

    /// A zeroed buffer of `len` bytes (page aligned) that needs no input
    /// bytes: from the end of region 1 downwards.
    pub fn scratch(&mut self, len: u32) -> u64 {
        self.scratch += u64::from(len).next_multiple_of(0x1000);
        let end = REGIONS[1].0 + REGIONS[1].1 as u64;
        end - self.scratch
    }

    /// The bytes for the input.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Builds a [`QueueSpec`] the way a driver fills a queue.
#[derive(Debug)]
pub struct Ring {
    spec: QueueSpec,
}

impl Ring {
    /// An empty queue of `1 << size_log2` entries.
    pub fn new(size_log2: u8) -> Self {
        Self {
            spec: QueueSpec {
                size_log2,
                ..QueueSpec::default()
            },
        }
    }

    /// Starts at ring position `start` (as after that many requests).
    pub fn start(mut self, start: u16) -> Self {
        self.spec.start = start;
        self
    }

    /// Negotiates VIRTIO_RING_F_EVENT_IDX with this `used_event`.
    pub fn event_idx(mut self, used_event: u16) -> Self {
        self.spec.event_idx = true;
        self.spec.used_event = used_event;
        self
    }

    /// Adds `bufs` (address, length, device-writable) as a chain of
    /// consecutive descriptors and publishes it; returns its head.
    pub fn chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.spec.descs.len() as u16;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            self.spec.descs.push(RawDesc {
                addr,
                len,
                flags: if writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT },
                next: if last { 0 } else { head + i as u16 + 1 },
            });
        }
        self.spec.heads.push(head);
        self.spec.count += 1;
        assert!(self.spec.descs.len() <= usize::from(self.spec.size()));
        head
    }

    /// The finished queue.
    pub fn spec(self) -> QueueSpec {
        self.spec
    }
}

fn blk_header(data: &mut Data, request_type: u32, sector: u64) -> u64 {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    data.put(&h)
}

/// Adds a request with the usual Linux layout: header, data buffers,
/// status byte.
fn blk_request(
    ring: &mut Ring,
    data: &mut Data,
    request_type: u32,
    sector: u64,
    bufs: &[(u64, u32, bool)],
) {
    let header = blk_header(data, request_type, sector);
    let status = data.put(&[0xee]);
    let mut chain = vec![(header, 16, R)];
    chain.extend_from_slice(bufs);
    chain.push((status, 1, W));
    ring.chain(&chain);
}

/// Block seeds: (name, queue, data) for both block targets.
fn block_queues() -> Vec<(&'static str, QueueSpec, Data)> {
    let mut seeds = Vec::new();

    let mut d = Data::default();
    let mut q = Ring::new(4);
    let (a, b) = (d.scratch(1024), d.scratch(512));
    blk_request(&mut q, &mut d, T_IN, 1, &[(a, 1024, W), (b, 512, W)]);
    seeds.push(("read", q.spec(), d));

    let mut d = Data::default();
    let mut q = Ring::new(4);
    let buf = d.put(&[0x5a; 512]);
    let more = d.scratch(512);
    blk_request(&mut q, &mut d, T_OUT, 3, &[(buf, 512, R), (more, 512, R)]);
    seeds.push(("write", q.spec(), d));

    let mut d = Data::default();
    let mut q = Ring::new(4);
    blk_request(&mut q, &mut d, T_FLUSH, 0, &[]);
    seeds.push(("flush", q.spec(), d));

    let mut d = Data::default();
    let mut q = Ring::new(4);
    let id = d.scratch(20);
    blk_request(&mut q, &mut d, T_GET_ID, 0, &[(id, 20, W)]);
    seeds.push(("get_id", q.spec(), d));

    // Every type in one notification, plus an unsupported one (DISCARD)
    // and one past the end of the disk.
    let mut d = Data::default();
    let mut q = Ring::new(4);
    let (r, w, id) = (d.scratch(4096), d.put(&[0xa5; 512]), d.scratch(20));
    blk_request(&mut q, &mut d, T_IN, 120, &[(r, 4096, W)]);
    blk_request(&mut q, &mut d, T_OUT, 127, &[(w, 512, R)]);
    blk_request(&mut q, &mut d, T_FLUSH, 0, &[]);
    blk_request(&mut q, &mut d, T_GET_ID, 0, &[(id, 20, W)]);
    blk_request(&mut q, &mut d, 11, 0, &[]);
    blk_request(&mut q, &mut d, T_IN, 128, &[(r, 512, W)]);
    seeds.push(("mixed", q.spec(), d));

    // VIRTIO_F_ANY_LAYOUT: the header split over two descriptors (the
    // second also holding the data), and data sharing the status's one.
    let mut d = Data::default();
    let mut q = Ring::new(4);
    let mut header = [0u8; 16 + 512];
    header[0..4].copy_from_slice(&T_OUT.to_le_bytes());
    header[8..16].copy_from_slice(&5u64.to_le_bytes());
    let first = d.put(&header[..10]);
    let rest = d.put(&header[10..]);
    let status = d.put(&[0xee]);
    q.chain(&[(first, 10, R), (rest, 6 + 512, R), (status, 1, W)]);
    let header = blk_header(&mut d, T_IN, 5);
    let buf = d.scratch(513);
    q.chain(&[(header, 16, R), (buf, 513, W)]);
    seeds.push(("any_layout", q.spec(), d));

    // Ring indices about to wrap, and event index notification.
    let mut d = Data::default();
    let mut q = Ring::new(3).start(0xfffe).event_idx(0xffff);
    let buf = d.scratch(512);
    blk_request(&mut q, &mut d, T_IN, 0, &[(buf, 512, W)]);
    blk_request(&mut q, &mut d, T_FLUSH, 0, &[]);
    blk_request(&mut q, &mut d, T_GET_ID, 0, &[(buf, 20, W)]);
    seeds.push(("wrap_event_idx", q.spec(), d));

    seeds
}

fn vsock_header(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: 2,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// Adds a TX packet: header and payload in two descriptors, or in one.
fn vsock_tx(ring: &mut Ring, data: &mut Data, h: Header, payload: &[u8], one_descriptor: bool) {
    let mut bytes = h.to_bytes().to_vec();
    if one_descriptor {
        bytes.extend_from_slice(payload);
        let at = data.put(&bytes);
        ring.chain(&[(at, bytes.len() as u32, R)]);
    } else {
        let header = data.put(&bytes);
        if payload.is_empty() {
            ring.chain(&[(header, 44, R)]);
        } else {
            let body = data.put(payload);
            ring.chain(&[(header, 44, R), (body, payload.len() as u32, R)]);
        }
    }
}

/// RX buffers the way Linux posts them (header + 4 KiB, two descriptors)
/// or in one descriptor.
fn vsock_rx(ring: &mut Ring, data: &mut Data, n: usize, one_descriptor: bool) {
    for _ in 0..n {
        if one_descriptor {
            let buf = data.scratch(44 + 4096);
            ring.chain(&[(buf, 44 + 4096, W)]);
        } else {
            let (header, body) = (data.scratch(44), data.scratch(4096));
            ring.chain(&[(header, 44, W), (body, 4096, W)]);
        }
    }
}

fn vsock_input(cfg: u8, connect_port: u32, tx: QueueSpec, rx: QueueSpec, data: &Data) -> Vec<u8> {
    let mut out = vec![cfg];
    out.extend_from_slice(&connect_port.to_le_bytes());
    tx.encode(&mut out);
    rx.encode(&mut out);
    out.extend_from_slice(data.bytes());
    out
}

fn vsock_device_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let guest_port = 1025;

    // A guest connection to the host service: RESPONSE, then the
    // service's greeting as RW.
    let mut d = Data::default();
    let (mut tx, mut rx) = (Ring::new(4), Ring::new(4));
    vsock_tx(
        &mut tx,
        &mut d,
        vsock_header(OP_REQUEST, guest_port, HOST_PORT, 0),
        &[],
        false,
    );
    vsock_rx(&mut rx, &mut d, 4, false);
    seeds.push(("request", vsock_input(0, 0, tx.spec(), rx.spec(), &d)));

    // A whole connection in one notification: request, data (header and
    // payload split and in one descriptor), credit traffic, shutdown.
    let mut d = Data::default();
    let (mut tx, mut rx) = (Ring::new(4), Ring::new(4));
    let h = |op, len| vsock_header(op, guest_port, HOST_PORT, len);
    vsock_tx(&mut tx, &mut d, h(OP_REQUEST, 0), &[], false);
    vsock_tx(&mut tx, &mut d, h(OP_RW, 5), b"ping\n", false);
    vsock_tx(&mut tx, &mut d, h(OP_RW, 6), b"again\n", true);
    vsock_tx(&mut tx, &mut d, h(OP_CREDIT_UPDATE, 0), &[], false);
    vsock_tx(&mut tx, &mut d, h(OP_CREDIT_REQUEST, 0), &[], true);
    let mut shutdown = h(OP_SHUTDOWN, 0);
    shutdown.flags = SHUTDOWN_SEND;
    vsock_tx(&mut tx, &mut d, shutdown, &[], false);
    vsock_rx(&mut rx, &mut d, 8, false);
    seeds.push((
        "rw_credit_shutdown",
        vsock_input(0, 0, tx.spec(), rx.spec(), &d),
    ));

    // Requests to a port nobody listens on, a packet for no connection, a
    // reset, and a packet larger than 64 KiB: all answered with resets.
    let mut d = Data::default();
    let (mut tx, mut rx) = (Ring::new(4), Ring::new(3));
    vsock_tx(
        &mut tx,
        &mut d,
        vsock_header(OP_REQUEST, 2000, 9999, 0),
        &[],
        false,
    );
    vsock_tx(
        &mut tx,
        &mut d,
        vsock_header(OP_RW, 2001, HOST_PORT, 3),
        b"abc",
        false,
    );
    vsock_tx(
        &mut tx,
        &mut d,
        vsock_header(OP_RST, 2002, HOST_PORT, 0),
        &[],
        false,
    );
    let big = d.scratch(4096);
    let header = d.put(&vsock_header(OP_RW, 2003, HOST_PORT, 65537).to_bytes());
    tx.chain(&[(header, 44, R), (big, 4096, R)]);
    vsock_rx(&mut rx, &mut d, 4, true);
    seeds.push(("resets", vsock_input(0, 0, tx.spec(), rx.spec(), &d)));

    // A host-initiated connection: the host client's CONNECT 1234 becomes
    // a REQUEST on RX; the guest accepts (RESPONSE) and reads the host's
    // greeting.
    let mut d = Data::default();
    let (mut tx, mut rx) = (Ring::new(4), Ring::new(4));
    let local_port = devices::virtio::vsock::muxer::LOCAL_PORT_BASE;
    vsock_tx(
        &mut tx,
        &mut d,
        vsock_header(OP_RESPONSE, 1234, local_port, 0),
        &[],
        false,
    );
    vsock_rx(&mut rx, &mut d, 4, false);
    seeds.push((
        "host_connect",
        vsock_input(0b11, 1234, tx.spec(), rx.spec(), &d),
    ));

    seeds
}

fn vsock_packet_input(reply: Header, reply_len: u32, q: QueueSpec, data: &Data) -> Vec<u8> {
    let mut out = reply.to_bytes().to_vec();
    out.extend_from_slice(&reply_len.to_le_bytes());
    q.encode(&mut out);
    out.extend_from_slice(data.bytes());
    out
}

fn vsock_packet_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let reply = Header {
        src_cid: 2,
        dst_cid: GUEST_CID,
        src_port: HOST_PORT,
        dst_port: 1025,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_RW,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    };
    let mut seeds = Vec::new();

    let mut d = Data::default();
    let mut q = Ring::new(3);
    vsock_tx(
        &mut q,
        &mut d,
        vsock_header(OP_RW, 1025, HOST_PORT, 5),
        b"hello",
        false,
    );
    vsock_tx(
        &mut q,
        &mut d,
        vsock_header(OP_RW, 1025, HOST_PORT, 5),
        b"hello",
        true,
    );
    vsock_tx(
        &mut q,
        &mut d,
        vsock_header(OP_REQUEST, 1025, HOST_PORT, 0),
        &[],
        false,
    );
    seeds.push(("tx", vsock_packet_input(reply, 16, q.spec(), &d)));

    let mut d = Data::default();
    let mut q = Ring::new(3);
    vsock_rx(&mut q, &mut d, 1, false);
    vsock_rx(&mut q, &mut d, 1, true);
    seeds.push(("rx", vsock_packet_input(reply, 100, q.spec(), &d)));

    let mut d = Data::default();
    let mut q = Ring::new(3);
    let big = d.scratch(4096);
    let header = d.put(&vsock_header(OP_RW, 1025, HOST_PORT, 65537).to_bytes());
    q.chain(&[(header, 44, R), (big, 4096, R)]);
    seeds.push(("oversize", vsock_packet_input(reply, 0, q.spec(), &d)));

    seeds
}

/// Every seed: (target, name, input).
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, spec, data) in block_queues() {
        let device_input = |cfg: u8| {
            let mut input = vec![cfg];
            spec.encode(&mut input);
            input.extend_from_slice(data.bytes());
            input
        };
        seeds.push(("block", name, device_input(0)));
        if name == "write" {
            // Read-only disk; and FLUSH not negotiated (write-through).
            seeds.push(("block", "write_read_only", device_input(1)));
            seeds.push(("block", "write_through", device_input(2)));
        }

        // Limits as the device advertises them: 128 sectors, seg_max 128,
        // size_max 64 KiB; read_chain's limit 256.
        let mut input = 128u64.to_le_bytes().to_vec();
        input.push(128);
        input.extend_from_slice(&(64 * 1024u32).to_le_bytes());
        input.extend_from_slice(&0u16.to_le_bytes());
        spec.encode(&mut input);
        input.extend_from_slice(data.bytes());
        seeds.push(("block_request", name, input));
    }
    for (name, input) in vsock_device_seeds() {
        seeds.push(("vsock", name, input));
    }
    for (name, input) in vsock_packet_seeds() {
        seeds.push(("vsock_packet", name, input));
    }
    seeds
}
