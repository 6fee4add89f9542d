//! Device-level tests: the three queues laid out by hand in guest memory the
//! way a driver would, real unix sockets in a temporary directory.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::connection::CONN_BUF_SIZE;
use super::device::{Vsock, VsockError, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use super::muxer::{host_port_path, ConnKey, LOCAL_PORT_BASE};
use super::packet::*;
use super::test_support::{read_exactly, wait_readable, TempDir};
use crate::virtio::device::{ActivateContext, ActivateError, DeviceError, VirtioDevice};
use crate::virtio::interrupt::EventFdInterrupt;
use crate::virtio::test_utils::{test_interrupt, R, W};

const GUEST_CID: u64 = 3;
const MEM_SIZE: u64 = 32 << 20;
/// Queue `i` lives at `QUEUE_AREA + i * 0x4000`: descriptors, then the
/// available ring 4 KiB above, the used ring 8 KiB above.
const QUEUE_AREA: u64 = 0x1000;
/// Each descriptor of each queue owns a buffer of `BUF_STRIDE` bytes here.
const BUF_AREA: u64 = 0x10_0000;
const BUF_STRIDE: u64 = 0x8000;
const QSIZE: u16 = 256;
/// Payload space of the RX buffers the tests give.
const RX_DATA: u32 = 4096;

/// (address, length, device-writable)
type Buf = (u64, u32, bool);
/// Puts a (bad) chain on a queue.
type BuildChain = dyn Fn(&mut GuestQueue);

/// A split virtqueue in guest memory, driven as the driver would.
struct GuestQueue {
    mem: GuestMemoryMmap,
    index: u64,
    avail_idx: u16,
    next_desc: u16,
    used_seen: u16,
}

impl GuestQueue {
    fn new(mem: &GuestMemoryMmap, index: usize) -> Self {
        let q = Self {
            mem: mem.clone(),
            index: index as u64,
            avail_idx: 0,
            next_desc: 0,
            used_seen: 0,
        };
        q.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(q.desc_table()))
            .unwrap();
        q
    }

    fn desc_table(&self) -> u64 {
        QUEUE_AREA + self.index * 0x4000
    }

    fn avail_ring(&self) -> u64 {
        self.desc_table() + 0x1000
    }

    fn used_ring(&self) -> u64 {
        self.desc_table() + 0x2000
    }

    /// The buffer owned by descriptor `desc`.
    fn buffer(&self, desc: u16) -> u64 {
        BUF_AREA + (self.index * u64::from(QSIZE) + u64::from(desc)) * BUF_STRIDE
    }

    fn set_desc(&self, index: u16, addr: u64, len: u32, writable: bool, next: Option<u16>) {
        let mut flags = 0;
        if writable {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if next.is_some() {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        let desc = Descriptor::new(addr, len, flags, next.unwrap_or(0));
        let at = self.desc_table() + u64::from(index) * 16;
        self.mem.write_obj(desc, GuestAddress(at)).unwrap();
    }

    fn publish(&mut self, head: u16) {
        let slot = self.avail_ring() + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail_ring() + 2))
            .unwrap();
    }

    /// Allocates `n` consecutive descriptors (round-robin).
    fn alloc(&mut self, n: u16) -> Vec<u16> {
        let first = self.next_desc;
        self.next_desc = (self.next_desc + n) % QSIZE;
        (0..n).map(|i| (first + i) % QSIZE).collect()
    }

    /// Writes a chain over `descs` with `(addr, len, writable)` buffers and
    /// publishes it.
    fn add_chain(&mut self, descs: &[u16], buffers: &[(u64, u32, bool)]) -> u16 {
        for (i, (&d, &(addr, len, writable))) in descs.iter().zip(buffers).enumerate() {
            self.set_desc(d, addr, len, writable, descs.get(i + 1).copied());
        }
        self.publish(descs[0]);
        descs[0]
    }

    /// New used ring entries: (head, length).
    fn take_used(&mut self) -> Vec<(u16, u32)> {
        let used_idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.used_ring() + 2))
            .unwrap();
        let mut out = Vec::new();
        while self.used_seen != used_idx {
            let at = self.used_ring() + 4 + u64::from(self.used_seen % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    fn queue(&self) -> Queue {
        let mut queue = Queue::new(QSIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(self.desc_table()))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(self.avail_ring()))
            .unwrap();
        queue
            .try_set_used_ring_address(GuestAddress(self.used_ring()))
            .unwrap();
        queue.set_ready(true);
        queue
    }
}

/// How a packet is laid out in descriptors.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Header and payload in one descriptor (Linux >= 6.2).
    Single,
    /// Header in one descriptor, payload in the next.
    Split,
}

fn guest_header(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

/// A device with its queues in guest memory and its socket in a temporary
/// directory.
struct Harness {
    _dir: TempDir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    rx: GuestQueue,
    tx: GuestQueue,
    dev: Vsock,
    interrupt: Arc<EventFdInterrupt>,
    /// Where header and payload of each outstanding RX chain are.
    rx_chains: HashMap<u16, (u64, u64)>,
    /// Packets received and not yet looked at.
    inbox: Vec<Packet>,
}

impl Harness {
    fn new() -> Self {
        let mut h = Self::inactive();
        h.activate();
        h
    }

    fn inactive() -> Self {
        let dir = TempDir::new();
        let uds = dir.path().join("vsock.sock");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let rx = GuestQueue::new(&mem, RX_QUEUE);
        let tx = GuestQueue::new(&mem, TX_QUEUE);
        let dev = Vsock::new(GUEST_CID, &uds).unwrap();
        Self {
            _dir: dir,
            uds,
            mem,
            rx,
            tx,
            dev,
            interrupt: test_interrupt(),
            rx_chains: HashMap::new(),
            inbox: Vec::new(),
        }
    }

    fn activate(&mut self) {
        let event = GuestQueue::new(&self.mem, EVENT_QUEUE);
        self.dev.set_acked_features(self.dev.avail_features());
        self.dev
            .activate(ActivateContext {
                mem: self.mem.clone(),
                queues: vec![self.rx.queue(), self.tx.queue(), event.queue()],
                interrupt: self.interrupt.clone(),
            })
            .unwrap();
    }

    fn host_port_path(&self, port: u32) -> PathBuf {
        host_port_path(&self.uds, port)
    }

    /// Puts a packet on the TX queue and notifies it.
    fn send(&mut self, header: Header, data: &[u8], layout: Layout) -> Result<(), DeviceError> {
        let header = Header {
            len: data.len() as u32,
            ..header
        };
        match layout {
            Layout::Single => {
                let d = self.tx.alloc(1);
                let addr = self.tx.buffer(d[0]);
                self.mem
                    .write_slice(&header.to_bytes(), GuestAddress(addr))
                    .unwrap();
                self.mem
                    .write_slice(data, GuestAddress(addr + HEADER_SIZE as u64))
                    .unwrap();
                let len = (HEADER_SIZE + data.len()) as u32;
                self.tx.add_chain(&d, &[(addr, len, R)]);
            }
            Layout::Split => {
                let d = self.tx.alloc(2);
                let (hdr_addr, data_addr) = (self.tx.buffer(d[0]), self.tx.buffer(d[1]));
                self.mem
                    .write_slice(&header.to_bytes(), GuestAddress(hdr_addr))
                    .unwrap();
                self.mem.write_slice(data, GuestAddress(data_addr)).unwrap();
                self.tx.add_chain(
                    &d,
                    &[
                        (hdr_addr, HEADER_SIZE as u32, R),
                        (data_addr, data.len().max(1) as u32, R),
                    ],
                );
            }
        }
        let result = self.dev.process_queue(TX_QUEUE);
        self.collect();
        result
    }

    /// Gives the device `n` RX buffers of `RX_DATA` payload bytes, in
    /// `layout`, and notifies the RX queue.
    fn give_rx(&mut self, n: usize, layout: Layout) {
        for _ in 0..n {
            match layout {
                Layout::Single => {
                    let d = self.rx.alloc(1);
                    let addr = self.rx.buffer(d[0]);
                    let head = self
                        .rx
                        .add_chain(&d, &[(addr, HEADER_SIZE as u32 + RX_DATA, W)]);
                    self.rx_chains
                        .insert(head, (addr, addr + HEADER_SIZE as u64));
                }
                Layout::Split => {
                    let d = self.rx.alloc(2);
                    let (hdr_addr, data_addr) = (self.rx.buffer(d[0]), self.rx.buffer(d[1]));
                    let head = self.rx.add_chain(
                        &d,
                        &[(hdr_addr, HEADER_SIZE as u32, W), (data_addr, RX_DATA, W)],
                    );
                    self.rx_chains.insert(head, (hdr_addr, data_addr));
                }
            }
        }
        self.dev.process_queue(RX_QUEUE).unwrap();
        self.collect();
    }

    /// Moves the packets the device put on the RX queue into the inbox.
    fn collect(&mut self) {
        for (head, len) in self.rx.take_used() {
            let (hdr_addr, data_addr) = self.rx_chains.remove(&head).expect("a known RX chain");
            let mut raw = [0u8; HEADER_SIZE];
            self.mem
                .read_slice(&mut raw, GuestAddress(hdr_addr))
                .unwrap();
            let header = Header::from_bytes(&raw);
            assert_eq!(len, HEADER_SIZE as u32 + header.len, "used length");
            let mut data = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(data_addr))
                .unwrap();
            self.inbox.push(Packet { header, data });
        }
        // The tests never leave TX buffers with the device.
        let _ = self.tx.take_used();
    }

    /// Takes the inbox.
    fn received(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.inbox)
    }

    /// Drives host events until `cond` holds on the inbox (2 s at most).
    fn pump_until(&mut self, mut cond: impl FnMut(&[Packet]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let fds = self.dev.host_fds();
        while !cond(&self.inbox) {
            assert!(
                Instant::now() < deadline,
                "timed out; inbox: {:?}",
                self.inbox
            );
            for &fd in &fds {
                wait_readable(fd, 10);
                self.dev.process_host_event(fd).unwrap();
            }
            self.collect();
        }
    }

    /// Drives host events for a while, for things that must not happen.
    fn pump_for(&mut self, millis: u64) {
        let deadline = Instant::now() + Duration::from_millis(millis);
        while Instant::now() < deadline {
            for fd in self.dev.host_fds() {
                wait_readable(fd, 5);
                self.dev.process_host_event(fd).unwrap();
            }
            self.collect();
        }
    }

    /// Expects exactly one new packet and returns it.
    fn one(&mut self) -> Packet {
        let mut packets = self.received();
        assert_eq!(packets.len(), 1, "{packets:?}");
        packets.remove(0)
    }
}

fn ops(packets: &[Packet]) -> Vec<u16> {
    packets.iter().map(|p| p.header.op).collect()
}

#[test]
fn describes_itself() {
    let h = Harness::inactive();
    let dev = &h.dev;
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), 1 << 32);
    let mut cid = [0xffu8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut high = [0xffu8; 4];
    dev.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    let mut past = [0xffu8; 4];
    dev.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
    dev.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(dev.host_fds().len(), 1);
}

#[test]
fn reserved_cids_are_refused() {
    let dir = TempDir::new();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32] {
        let err = Vsock::new(cid, dir.path().join("v.sock")).unwrap_err();
        assert!(matches!(err, VsockError::InvalidCid(c) if c == cid));
    }
}

#[test]
fn activation_needs_three_queues() {
    let mut h = Harness::inactive();
    let ctx = ActivateContext {
        mem: h.mem.clone(),
        queues: vec![h.rx.queue()],
        interrupt: h.interrupt.clone(),
    };
    assert!(matches!(
        h.dev.activate(ctx),
        Err(ActivateError::QueueCount {
            expected: 3,
            actual: 1
        })
    ));
    h.activate();
    let ctx = ActivateContext {
        mem: h.mem.clone(),
        queues: vec![h.rx.queue(), h.tx.queue(), h.tx.queue()],
        interrupt: h.interrupt.clone(),
    };
    assert!(matches!(
        h.dev.activate(ctx),
        Err(ActivateError::AlreadyActive)
    ));
    assert!(matches!(
        h.dev.process_queue(3),
        Err(DeviceError::UnknownQueue(3))
    ));
    h.dev.process_queue(EVENT_QUEUE).unwrap();
}

#[test]
fn guest_connects_to_a_host_socket_and_data_flows_both_ways() {
    let mut h = Harness::new();
    let server = UnixListener::bind(h.host_port_path(1234)).unwrap();
    h.give_rx(8, Layout::Split);

    h.send(guest_header(OP_REQUEST, 1025, 1234), b"", Layout::Split)
        .unwrap();
    let response = h.one();
    assert_eq!(response.header.op, OP_RESPONSE);
    assert_eq!(
        (response.header.src_cid, response.header.dst_cid),
        (HOST_CID, GUEST_CID)
    );
    assert_eq!(
        (response.header.src_port, response.header.dst_port),
        (1234, 1025)
    );
    assert_eq!(response.header.type_, TYPE_STREAM);
    assert_eq!(response.header.buf_alloc, CONN_BUF_SIZE);
    // Both the TX buffer and the RX buffer were used.
    assert_eq!(h.interrupt.status(), 1);
    assert_eq!(h.interrupt.irqfd().read().unwrap(), 2);

    let (mut host, _) = server.accept().unwrap();
    // Header and payload in separate descriptors, then in one.
    h.send(guest_header(OP_RW, 1025, 1234), b"hello ", Layout::Split)
        .unwrap();
    h.send(guest_header(OP_RW, 1025, 1234), b"world", Layout::Single)
        .unwrap();
    assert_eq!(read_exactly(&mut host, 11), b"hello world");
    assert!(h.received().is_empty());

    host.write_all(b"from the host").unwrap();
    h.pump_until(|inbox| !inbox.is_empty());
    let data = h.one();
    assert_eq!(data.header.op, OP_RW);
    assert_eq!(data.data, b"from the host");
    assert_eq!((data.header.src_port, data.header.dst_port), (1234, 1025));
    assert_eq!(data.header.fwd_cnt, 11);

    // The guest closes: SHUTDOWN both ways, answered with a reset, and the
    // host socket is closed.
    let mut shutdown = guest_header(OP_SHUTDOWN, 1025, 1234);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(shutdown, b"", Layout::Split).unwrap();
    assert_eq!(h.one().header.op, OP_RST);
    assert_eq!(h.dev.muxer().connection_count(), 0);
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}

#[test]
fn rx_buffers_with_header_and_payload_in_one_descriptor() {
    let mut h = Harness::new();
    let server = UnixListener::bind(h.host_port_path(7)).unwrap();
    h.give_rx(4, Layout::Single);
    h.send(guest_header(OP_REQUEST, 1025, 7), b"", Layout::Single)
        .unwrap();
    assert_eq!(h.one().header.op, OP_RESPONSE);
    let (mut host, _) = server.accept().unwrap();
    host.write_all(b"single").unwrap();
    h.pump_until(|inbox| !inbox.is_empty());
    assert_eq!(h.one().data, b"single");
}

#[test]
fn host_connect_handshake() {
    let mut h = Harness::new();
    h.give_rx(8, Layout::Split);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    h.pump_until(|inbox| !inbox.is_empty());
    let request = h.one();
    assert_eq!(request.header.op, OP_REQUEST);
    assert_eq!(request.header.dst_port, 52);
    assert_eq!(request.header.dst_cid, GUEST_CID);
    let host_port = request.header.src_port;
    assert!(host_port >= LOCAL_PORT_BASE);

    // Nothing is answered before the guest accepts.
    client.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 32];
    assert_eq!(
        client.read(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    h.send(guest_header(OP_RESPONSE, 52, host_port), b"", Layout::Split)
        .unwrap();
    let ok = format!("OK {host_port}\n");
    assert_eq!(read_exactly(&mut client, ok.len()), ok.as_bytes());

    client.write_all(b"to guest").unwrap();
    h.pump_until(|inbox| !inbox.is_empty());
    let data = h.one();
    assert_eq!(data.data, b"to guest");
    assert_eq!(
        (data.header.src_port, data.header.dst_port),
        (host_port, 52)
    );
    h.send(
        guest_header(OP_RW, 52, host_port),
        b"to host",
        Layout::Single,
    )
    .unwrap();
    assert_eq!(read_exactly(&mut client, 7), b"to host");

    // The client goes away: the guest is told the host sends no more.
    drop(client);
    h.pump_until(|inbox| !inbox.is_empty());
    let shutdown = h.one();
    assert_eq!(shutdown.header.op, OP_SHUTDOWN);
    assert_eq!(shutdown.header.flags, SHUTDOWN_SEND);
}

#[test]
fn host_connect_refused_by_the_guest_closes_the_client() {
    let mut h = Harness::new();
    h.give_rx(2, Layout::Split);
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 53\n").unwrap();
    h.pump_until(|inbox| !inbox.is_empty());
    let request = h.one();
    h.send(
        guest_header(OP_RST, 53, request.header.src_port),
        b"",
        Layout::Split,
    )
    .unwrap();
    assert_eq!(h.dev.muxer().connection_count(), 0);
    let mut buf = [0u8; 8];
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}

#[test]
fn host_clients_may_connect_before_the_guest_is_ready() {
    let mut h = Harness::inactive();
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    h.pump_for(50);
    h.activate();
    h.give_rx(1, Layout::Split);
    assert_eq!(h.one().header.op, OP_REQUEST);
}

#[test]
fn requests_to_unknown_ports_and_stray_packets_are_reset() {
    let mut h = Harness::new();
    h.give_rx(8, Layout::Split);
    h.send(guest_header(OP_REQUEST, 1025, 999), b"", Layout::Split)
        .unwrap();
    let rst = h.one();
    assert_eq!(rst.header.op, OP_RST);
    assert_eq!((rst.header.src_port, rst.header.dst_port), (999, 1025));
    assert_eq!(rst.header.dst_cid, GUEST_CID);

    h.send(guest_header(OP_RW, 1025, 999), b"stray", Layout::Split)
        .unwrap();
    assert_eq!(h.one().header.op, OP_RST);

    // Not a stream socket.
    let mut seqpacket = guest_header(OP_REQUEST, 1025, 999);
    seqpacket.type_ = 2;
    h.send(seqpacket, b"", Layout::Split).unwrap();
    assert_eq!(h.one().header.op, OP_RST);

    // Wrong CIDs: dropped silently.
    let mut spoofed = guest_header(OP_REQUEST, 1025, 999);
    spoofed.src_cid = 99;
    h.send(spoofed, b"", Layout::Split).unwrap();
    let mut elsewhere = guest_header(OP_REQUEST, 1025, 999);
    elsewhere.dst_cid = 5;
    h.send(elsewhere, b"", Layout::Split).unwrap();
    assert!(h.received().is_empty());

    // A header announcing more than 64 KiB: reset, the device carries on.
    let d = h.tx.alloc(2);
    let oversize = Header {
        len: MAX_PAYLOAD + 1,
        ..guest_header(OP_RW, 1025, 999)
    };
    let addr = h.tx.buffer(d[0]);
    h.mem
        .write_slice(&oversize.to_bytes(), GuestAddress(addr))
        .unwrap();
    h.tx.add_chain(
        &d,
        &[(addr, HEADER_SIZE as u32, R), (h.tx.buffer(d[1]), 16, R)],
    );
    h.dev.process_queue(TX_QUEUE).unwrap();
    h.collect();
    assert_eq!(h.one().header.op, OP_RST);
    assert_eq!(h.tx.take_used().len(), 0, "collect() already took them");
}

#[test]
fn the_device_never_exceeds_the_guest_credit() {
    let mut h = Harness::new();
    let server = UnixListener::bind(h.host_port_path(80)).unwrap();
    let mut request = guest_header(OP_REQUEST, 1025, 80);
    request.buf_alloc = 1000;
    h.give_rx(32, Layout::Split);
    h.send(request, b"", Layout::Split).unwrap();
    assert_eq!(h.one().header.op, OP_RESPONSE);
    let (mut host, _) = server.accept().unwrap();
    host.write_all(&[7u8; 5000]).unwrap();

    // 1000 bytes, then a credit request, then nothing.
    h.pump_until(|inbox| inbox.iter().any(|p| p.header.op == OP_CREDIT_REQUEST));
    h.pump_for(50);
    let packets = h.received();
    let sent: usize = packets.iter().map(|p| p.data.len()).sum();
    assert_eq!(sent, 1000, "{:?}", ops(&packets));
    assert_eq!(ops(&packets).last(), Some(&OP_CREDIT_REQUEST));

    // The guest read 400 bytes: 400 more.
    let mut update = guest_header(OP_CREDIT_UPDATE, 1025, 80);
    update.buf_alloc = 1000;
    update.fwd_cnt = 400;
    h.send(update, b"", Layout::Split).unwrap();
    h.pump_for(50);
    let sent: usize = h.received().iter().map(|p| p.data.len()).sum();
    assert_eq!(sent, 400);

    // A bigger buffer: the rest (3600 bytes).
    update.buf_alloc = 64 * 1024;
    update.fwd_cnt = 1400;
    h.send(update, b"", Layout::Split).unwrap();
    h.pump_until(|inbox| inbox.iter().map(|p| p.data.len()).sum::<usize>() == 3600);
}

#[test]
fn the_device_sends_credit_updates_as_the_host_consumes() {
    let mut h = Harness::new();
    let server = UnixListener::bind(h.host_port_path(81)).unwrap();
    h.give_rx(8, Layout::Split);
    h.send(guest_header(OP_REQUEST, 1025, 81), b"", Layout::Split)
        .unwrap();
    let response = h.one();
    assert_eq!(response.header.fwd_cnt, 0);
    let (mut host, _) = server.accept().unwrap();

    let chunk = vec![5u8; 30_000];
    let mut sent = 0u32;
    // Past half the buffer, the guest needs to hear about the space freed.
    while sent < CONN_BUF_SIZE / 2 + 30_000 {
        h.send(guest_header(OP_RW, 1025, 81), &chunk, Layout::Split)
            .unwrap();
        sent += 30_000;
        let got = read_exactly(&mut host, chunk.len());
        assert_eq!(got, chunk);
    }
    let packets = h.received();
    let updates: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.header.op == OP_CREDIT_UPDATE)
        .collect();
    assert!(!updates.is_empty(), "{:?}", ops(&packets));
    let last = updates.last().unwrap();
    assert_eq!(last.header.buf_alloc, CONN_BUF_SIZE);
    assert!(last.header.fwd_cnt >= CONN_BUF_SIZE / 2);
    assert!(last.header.fwd_cnt <= sent);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let mut h = Harness::new();
    let server = UnixListener::bind(h.host_port_path(82)).unwrap();
    h.give_rx(8, Layout::Split);
    h.send(guest_header(OP_REQUEST, 1025, 82), b"", Layout::Split)
        .unwrap();
    assert_eq!(h.one().header.op, OP_RESPONSE);
    // The host never reads: the socket fills up, then the device's buffer.
    let (_host, _) = server.accept().unwrap();
    let chunk = vec![1u8; 30_000];
    let mut reset = false;
    for _ in 0..100 {
        h.send(guest_header(OP_RW, 1025, 82), &chunk, Layout::Split)
            .unwrap();
        if h.received().iter().any(|p| p.header.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn sixty_four_concurrent_connections() {
    const N: u32 = 64;
    let mut h = Harness::new();
    let server = UnixListener::bind(h.host_port_path(5000)).unwrap();
    h.give_rx(N as usize, Layout::Split);
    for i in 0..N {
        h.send(
            guest_header(OP_REQUEST, 2000 + i, 5000),
            b"",
            Layout::Single,
        )
        .unwrap();
    }
    let responses = h.received();
    assert_eq!(responses.len(), N as usize);
    assert!(responses.iter().all(|p| p.header.op == OP_RESPONSE));
    assert_eq!(h.dev.muxer().connection_count(), N as usize);
    for i in 0..N {
        assert!(h.dev.muxer().has_connection(ConnKey {
            local_port: 5000,
            peer_port: 2000 + i
        }));
    }

    let mut hosts: Vec<UnixStream> = (0..N).map(|_| server.accept().unwrap().0).collect();
    for i in 0..N {
        let msg = format!("msg {:04}", 2000 + i);
        h.send(
            guest_header(OP_RW, 2000 + i, 5000),
            msg.as_bytes(),
            Layout::Split,
        )
        .unwrap();
    }
    // Every host stream got one message; answer on it.
    for host in &mut hosts {
        let msg = String::from_utf8(read_exactly(host, 8)).unwrap();
        let port = &msg[4..];
        host.write_all(format!("reply {port}").as_bytes()).unwrap();
    }
    h.give_rx(N as usize, Layout::Single);
    h.pump_until(|inbox| inbox.len() == N as usize);
    let mut seen = std::collections::BTreeSet::new();
    for p in h.received() {
        assert_eq!(p.header.op, OP_RW);
        assert_eq!(
            p.data,
            format!("reply {:04}", p.header.dst_port).into_bytes()
        );
        assert!(seen.insert(p.header.dst_port));
    }
    assert_eq!(seen.len(), N as usize);

    // A device reset closes them all.
    h.dev.reset();
    assert_eq!(h.dev.muxer().connection_count(), 0);
    let mut buf = [0u8; 1];
    for host in &mut hosts {
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }
}

fn expect_failed(result: Result<(), DeviceError>, queue: usize) {
    match result {
        Err(DeviceError::Queue { queue: q, .. }) => assert_eq!(q, queue),
        other => panic!("expected a failure on queue {queue}, got {other:?}"),
    }
}

#[test]
fn malformed_tx_chains_fail_the_device() {
    let header = guest_header(OP_RW, 1025, 1234);
    let cases: Vec<(&str, Box<BuildChain>)> = vec![
        (
            "header outside guest memory",
            Box::new(|q| {
                let d = q.alloc(1);
                q.add_chain(&d, &[(MEM_SIZE - 8, 44, R)]);
            }),
        ),
        (
            "data outside guest memory",
            Box::new(move |q| {
                let d = q.alloc(2);
                let addr = q.buffer(d[0]);
                let h = Header { len: 16, ..header };
                q.mem
                    .write_slice(&h.to_bytes(), GuestAddress(addr))
                    .unwrap();
                q.add_chain(&d, &[(addr, 44, R), (u64::MAX - 4, 16, R)]);
            }),
        ),
        (
            "a loop",
            Box::new(move |q| {
                let d = q.alloc(2);
                let addr = q.buffer(d[0]);
                q.mem
                    .write_slice(&header.to_bytes(), GuestAddress(addr))
                    .unwrap();
                q.set_desc(d[0], addr, 44, R, Some(d[1]));
                q.set_desc(d[1], q.buffer(d[1]), 16, R, Some(d[0]));
                q.publish(d[0]);
            }),
        ),
        (
            "a next index outside the table",
            Box::new(move |q| {
                let d = q.alloc(1);
                let addr = q.buffer(d[0]);
                q.mem
                    .write_slice(&header.to_bytes(), GuestAddress(addr))
                    .unwrap();
                q.set_desc(d[0], addr, 44, R, Some(QSIZE + 3));
                q.publish(d[0]);
            }),
        ),
        (
            "a head index outside the table",
            Box::new(|q| q.publish(QSIZE + 1)),
        ),
        (
            "a device-writable TX buffer",
            Box::new(move |q| {
                let d = q.alloc(1);
                let addr = q.buffer(d[0]);
                q.mem
                    .write_slice(&header.to_bytes(), GuestAddress(addr))
                    .unwrap();
                q.add_chain(&d, &[(addr, 44, W)]);
            }),
        ),
        (
            "a header descriptor shorter than a header",
            Box::new(|q| {
                let d = q.alloc(1);
                let addr = q.buffer(d[0]);
                q.add_chain(&d, &[(addr, 20, R)]);
            }),
        ),
        (
            "payload larger than its descriptor",
            Box::new(move |q| {
                let d = q.alloc(2);
                let addr = q.buffer(d[0]);
                let h = Header { len: 100, ..header };
                q.mem
                    .write_slice(&h.to_bytes(), GuestAddress(addr))
                    .unwrap();
                q.add_chain(&d, &[(addr, 44, R), (q.buffer(d[1]), 10, R)]);
            }),
        ),
        (
            "a descriptor length running past the end of memory",
            Box::new(move |q| {
                let d = q.alloc(2);
                let addr = q.buffer(d[0]);
                q.mem
                    .write_slice(&header.to_bytes(), GuestAddress(addr))
                    .unwrap();
                q.add_chain(&d, &[(addr, 44, R), (q.buffer(d[1]), u32::MAX, R)]);
            }),
        ),
    ];
    for (what, build) in cases {
        let mut h = Harness::new();
        build(&mut h.tx);
        expect_failed(h.dev.process_queue(TX_QUEUE), TX_QUEUE);
        // Failed until reset, whatever happens.
        expect_failed(h.dev.process_queue(RX_QUEUE), TX_QUEUE);
        let fd = h.dev.host_fds()[0];
        expect_failed(h.dev.process_host_event(fd), TX_QUEUE);
        h.dev.reset();
        assert!(!h.dev.is_activated(), "{what}");
        h.dev.process_queue(TX_QUEUE).unwrap();
    }
}

#[test]
fn malformed_rx_chains_fail_the_device() {
    let cases: Vec<(&str, Vec<Buf>)> = vec![
        (
            "device-readable",
            vec![(BUF_AREA, 44, R), (BUF_AREA + 0x1000, 64, R)],
        ),
        (
            "outside guest memory",
            vec![(MEM_SIZE - 16, 44, W), (BUF_AREA, 64, W)],
        ),
        (
            "payload too long",
            vec![(BUF_AREA, 44, W), (BUF_AREA + 0x1000, MAX_PAYLOAD + 1, W)],
        ),
    ];
    for (what, chain) in cases {
        let mut h = Harness::new();
        let d = h.rx.alloc(chain.len() as u16);
        h.rx.add_chain(&d, &chain);
        // Nothing to send yet: the buffer is not looked at.
        h.dev.process_queue(RX_QUEUE).unwrap();
        // A reset to send makes the device take it.
        let result = h.send(guest_header(OP_REQUEST, 1025, 999), b"", Layout::Split);
        expect_failed(result, RX_QUEUE);
        assert!(h.received().is_empty(), "{what}");
    }
}

#[test]
fn an_impossible_avail_index_is_a_device_error() {
    let mut h = Harness::new();
    h.tx.set_avail_idx(1000);
    expect_failed(h.dev.process_queue(TX_QUEUE), TX_QUEUE);
}

#[test]
fn notifications_before_activation_and_foreign_fds_are_ignored() {
    let mut h = Harness::inactive();
    h.dev.process_queue(TX_QUEUE).unwrap();
    h.dev.process_queue(RX_QUEUE).unwrap();
    h.dev.process_host_event(-1).unwrap();
    h.activate();
    h.dev.process_host_event(12345).unwrap();
}

/// The documented event-loop contract, through the real transport: host
/// readiness goes to `process_host_event`; when it fails, a notification of
/// the RX queue through the transport puts the device in
/// DEVICE_NEEDS_RESET.
#[test]
fn event_loop_contract_through_the_mmio_transport() {
    use std::sync::Mutex;

    use crate::bus::BusDevice;
    use crate::virtio::mmio::{MmioTransport, CONFIG_SPACE_OFFSET};

    const STATUS: u64 = 0x70;
    const NEEDS_RESET: u32 = 0x40;
    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    let dir = TempDir::new();
    let uds = dir.path().join("v.sock");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let mut rx = GuestQueue::new(&mem, RX_QUEUE);
    let tx = GuestQueue::new(&mem, TX_QUEUE);
    let event = GuestQueue::new(&mem, EVENT_QUEUE);
    let vsock = Arc::new(Mutex::new(Vsock::new(GUEST_CID, &uds).unwrap()));
    let fds = vsock.lock().unwrap().host_fds();
    let interrupt = test_interrupt();
    let mut transport = MmioTransport::new(vsock.clone(), mem.clone(), interrupt.clone());
    let notifier = transport.queue_notifier();

    let mut cid = [0u8; 8];
    transport.read(CONFIG_SPACE_OFFSET, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);

    // The driver's initialisation: ACKNOWLEDGE, DRIVER, VERSION_1,
    // FEATURES_OK, the three queues, DRIVER_OK.
    write(&mut transport, STATUS, 1);
    write(&mut transport, STATUS, 3);
    write(&mut transport, 0x24, 1);
    write(&mut transport, 0x20, 1);
    write(&mut transport, STATUS, 11);
    for (i, q) in [&rx, &tx, &event].into_iter().enumerate() {
        write(&mut transport, 0x30, i as u32);
        write(&mut transport, 0x38, u32::from(QSIZE));
        write(&mut transport, 0x80, q.desc_table() as u32);
        write(&mut transport, 0x90, q.avail_ring() as u32);
        write(&mut transport, 0xa0, q.used_ring() as u32);
        write(&mut transport, 0x44, 1);
    }
    write(&mut transport, STATUS, 15);
    assert_eq!(transport.status(), 15);
    assert!(vsock.lock().unwrap().is_activated());

    let pump = |vsock: &Mutex<Vsock>| -> Result<(), DeviceError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            for &fd in &fds {
                wait_readable(fd, 10);
                vsock.lock().unwrap().process_host_event(fd)?;
            }
            if Instant::now() > deadline {
                return Ok(());
            }
        }
    };

    // A good RX buffer and a host client: the guest gets the request.
    let d = rx.alloc(2);
    rx.add_chain(
        &d,
        &[(rx.buffer(d[0]), 44, W), (rx.buffer(d[1]), RX_DATA, W)],
    );
    notifier.notify(RX_QUEUE as u32);
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while rx.take_used().is_empty() {
        assert!(Instant::now() < deadline);
        for &fd in &fds {
            wait_readable(fd, 10);
            vsock.lock().unwrap().process_host_event(fd).unwrap();
        }
    }
    assert_eq!(transport.status() & NEEDS_RESET, 0);

    // A device-readable RX buffer and another client: process_host_event
    // fails; the RX notification hands the failure to the transport.
    let d = rx.alloc(2);
    rx.add_chain(
        &d,
        &[(rx.buffer(d[0]), 44, R), (rx.buffer(d[1]), RX_DATA, R)],
    );
    let mut client2 = UnixStream::connect(&uds).unwrap();
    client2.write_all(b"CONNECT 53\n").unwrap();
    let err = pump(&vsock).unwrap_err();
    assert!(matches!(
        err,
        DeviceError::Queue {
            queue: RX_QUEUE,
            ..
        }
    ));
    notifier.notify(RX_QUEUE as u32);
    assert_ne!(transport.status() & NEEDS_RESET, 0);

    // The driver resets the device: every connection is closed.
    write(&mut transport, STATUS, 0);
    assert!(!vsock.lock().unwrap().is_activated());
    assert_eq!(vsock.lock().unwrap().muxer().connection_count(), 0);
    let mut buf = [0u8; 1];
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}
