//! One vsock stream connection between a guest port and a host byte stream:
//! the state machine and the credit accounting of virtio 1.x section
//! 5.10.6.3, with no I/O beyond the [`HostStream`] it owns, so it can be
//! tested with an in-memory stream.
//!
//! The connection never blocks: it writes to the host stream what the host
//! accepts and keeps the rest (at most [`CONN_BUF_SIZE`] bytes, the buffer
//! it advertises to the guest), and reads from the host stream only when
//! asked for a packet for the guest, only after the muxer saw the stream
//! readable, and never more than the guest's free credit.
//!
//! Credit (both directions, counters wrap at 2^32):
//! - guest to host: the device advertises `buf_alloc` = [`CONN_BUF_SIZE`]
//!   and `fwd_cnt` = bytes written to the host stream. A guest that sends
//!   more than the free space gets a reset. Once the guest's view of the
//!   free space drops below [`CREDIT_UPDATE_THRESHOLD`] while the host has
//!   consumed bytes the guest does not know about, an `OP_CREDIT_UPDATE` is
//!   queued (every packet to the guest carries the counters too).
//! - host to guest: every guest packet updates the peer's `buf_alloc` and
//!   `fwd_cnt`; the device sends at most `buf_alloc - (rx_cnt - fwd_cnt)`
//!   bytes, and asks for credit (`OP_CREDIT_REQUEST`, once) when it has
//!   data but no credit.
//!
//! Closing: an `OP_RST` from either side ends the connection at once. A
//! guest `OP_SHUTDOWN` with both flags is answered with a reset once what
//! the guest sent has reached the host; with `SHUTDOWN_SEND` alone the
//! host stream's write half is shut down after the last byte. End of file
//! on the host stream becomes an `OP_SHUTDOWN` with `SHUTDOWN_SEND` (the
//! host sends no more; the guest may still write). A host stream error
//! resets the connection.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use tracing::{debug, info};

use super::packet::{
    Header, Packet, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer the device advertises to the guest for each connection
/// (`buf_alloc`): guest bytes not yet written to the host stream.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// A credit update is queued once the guest believes less than this much
/// of [`CONN_BUF_SIZE`] is free while more actually is.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// The host side of a connection: a non-blocking byte stream
/// (`ErrorKind::WouldBlock` means "not now").
pub trait HostStream: Read + Write {
    /// Shuts down the writing half: the host peer reads end of file after
    /// the bytes already written.
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: the `OP_REQUEST` to the guest is queued or sent; the
    /// guest's `OP_RESPONSE` is awaited.
    Connecting,
    /// Connected; data flows in the directions not shut down.
    Established,
    /// Reset (an `OP_RST` was sent or received): the connection is dead
    /// and its owner drops it.
    Closed,
}

/// Control packets waiting for the guest, sent in this order.
#[derive(Debug, Default)]
struct PendingOps {
    rst: bool,
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    shutdown: bool,
}

impl PendingOps {
    fn any(&self) -> bool {
        self.rst
            || self.request
            || self.response
            || self.credit_update
            || self.credit_request
            || self.shutdown
    }
}

/// A vsock stream connection (see the module documentation).
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: ConnState,
    pending: PendingOps,

    /// `OK <port>\n` for a host-initiated connection, written to the host
    /// before any guest data and not counted as guest data.
    handshake_reply: Vec<u8>,
    /// Guest bytes the host has not taken yet.
    to_host: VecDeque<u8>,
    /// The muxer saw the host stream readable and no read has drained it
    /// since.
    host_readable: bool,
    /// The host stream hung up: reads never block any more (data or end of
    /// file) and no more readiness events come.
    host_hup: bool,
    /// The host stream reached end of file.
    host_eof: bool,
    /// The host stream's write half was shut down.
    host_write_shut: bool,
    /// The guest will receive no more data.
    peer_shut_recv: bool,
    /// The guest will send no more data.
    peer_shut_send: bool,
    /// Reset once `to_host` has drained (the guest shut down both ways).
    rst_after_flush: bool,

    // Our receive side (guest -> host).
    buf_alloc: u32,
    /// Guest bytes received.
    recv_cnt: Wrapping<u32>,
    /// Guest bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,

    // The guest's receive side (host -> guest).
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// An `OP_CREDIT_REQUEST` went out and no credit came back since.
    credit_requested: bool,
}

impl<S: HostStream> Connection<S> {
    /// A host-initiated connection from host port `local_port` to guest
    /// port `peer_port`: queues the `OP_REQUEST` for the guest.
    pub fn host_initiated(stream: S, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Self::new(
            stream,
            guest_cid,
            local_port,
            peer_port,
            ConnState::Connecting,
        );
        conn.pending.request = true;
        conn
    }

    /// A guest-initiated connection whose host end is `stream`, for the
    /// guest's `OP_REQUEST` `request`: queues the `OP_RESPONSE`.
    pub fn guest_initiated(stream: S, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Self::new(
            stream,
            guest_cid,
            request.dst_port,
            request.src_port,
            ConnState::Established,
        );
        conn.update_peer_credit(request);
        conn.pending.response = true;
        conn
    }

    fn new(stream: S, guest_cid: u64, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Self {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            pending: PendingOps::default(),
            handshake_reply: Vec::new(),
            to_host: VecDeque::new(),
            host_readable: false,
            host_hup: false,
            host_eof: false,
            host_write_shut: false,
            peer_shut_recv: false,
            peer_shut_send: false,
            rst_after_flush: false,
            buf_alloc: CONN_BUF_SIZE,
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
        }
    }

    /// Where the connection stands.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host-side port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The guest-side port.
    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    /// The host stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Bytes the device may still send the guest before it needs more
    /// credit.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes written to the host stream so far (wrapping).
    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt.0
    }

    /// Guest bytes waiting for the host stream to accept them.
    pub fn pending_to_host(&self) -> usize {
        self.handshake_reply.len() + self.to_host.len()
    }

    /// Handles a packet the guest sent on this connection. Protocol
    /// violations reset the connection.
    pub fn handle_guest_packet(&mut self, pkt: &Packet) {
        let h = &pkt.header;
        if self.state == ConnState::Closed {
            return;
        }
        if h.op == OP_RST {
            info!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                "vsock: connection reset by the guest"
            );
            self.state = ConnState::Closed;
            self.pending = PendingOps::default();
            return;
        }
        if self.pending.rst {
            // Being reset already: nothing the guest says matters.
            return;
        }
        self.update_peer_credit(h);

        match (self.state, h.op) {
            (ConnState::Connecting, OP_RESPONSE) => {
                info!(
                    local_port = self.local_port,
                    peer_port = self.peer_port,
                    "vsock: host-initiated connection established"
                );
                self.state = ConnState::Established;
                self.handshake_reply = format!("OK {}\n", self.local_port).into_bytes();
                self.flush_to_host();
            }
            (ConnState::Established, OP_RW) => self.receive_data(&pkt.data),
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            (ConnState::Established, OP_CREDIT_REQUEST) => self.pending.credit_update = true,
            (ConnState::Established, OP_SHUTDOWN) => self.peer_shutdown(h.flags),
            (state, op) => {
                debug!(
                    local_port = self.local_port,
                    peer_port = self.peer_port,
                    op,
                    ?state,
                    "vsock: unexpected packet, resetting the connection"
                );
                self.queue_rst();
            }
        }
    }

    /// Whether [`next_packet_for_guest`](Self::next_packet_for_guest) may
    /// have a packet.
    pub fn has_pending_rx(&self) -> bool {
        if self.state == ConnState::Closed {
            return false;
        }
        self.pending.any()
            || (self.can_read_host()
                && self.host_has_data()
                && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// The next packet for the guest, with at most `max_data` payload
    /// bytes; `None` when there is nothing to send now. Reads the host
    /// stream for data packets.
    pub fn next_packet_for_guest(&mut self, max_data: usize) -> Option<Packet> {
        if self.state == ConnState::Closed {
            return None;
        }
        if !self.pending.rst {
            if self.pending.request {
                self.pending.request = false;
                return Some(self.control_packet(OP_REQUEST, 0));
            }
            if self.pending.response {
                self.pending.response = false;
                return Some(self.control_packet(OP_RESPONSE, 0));
            }
            if let Some(pkt) = self.read_host(max_data) {
                return Some(pkt);
            }
        }
        // Reading may have queued a reset.
        if self.pending.rst {
            info!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                "vsock: connection reset by the host side"
            );
            self.pending = PendingOps::default();
            self.state = ConnState::Closed;
            return Some(self.control_packet(OP_RST, 0));
        }
        if self.pending.credit_update {
            return Some(self.control_packet(OP_CREDIT_UPDATE, 0));
        }
        if self.pending.credit_request {
            self.pending.credit_request = false;
            return Some(self.control_packet(OP_CREDIT_REQUEST, 0));
        }
        if self.pending.shutdown {
            self.pending.shutdown = false;
            return Some(self.control_packet(OP_SHUTDOWN, SHUTDOWN_SEND));
        }
        None
    }

    /// The host stream became readable.
    pub fn host_readable(&mut self) {
        self.host_readable = true;
    }

    /// The host stream became writable: writes what it can.
    pub fn host_writable(&mut self) {
        self.flush_to_host();
    }

    /// The host stream hung up (or reported an error): from now on the
    /// connection reads it without waiting for readiness, and a write
    /// failure resets the connection.
    pub fn host_hung_up(&mut self) {
        self.host_hup = true;
        self.flush_to_host();
    }

    /// Whether the stream should be watched for readability.
    pub fn wants_host_read(&self) -> bool {
        !self.host_hup && !self.host_readable && self.can_read_host()
    }

    /// Whether the stream should be watched for writability.
    pub fn wants_host_write(&self) -> bool {
        !self.host_hup && self.state != ConnState::Closed && self.pending_to_host() > 0
    }

    /// Whether the host stream no longer delivers readiness events (it hung
    /// up), so it should not be watched at all.
    pub fn host_hup(&self) -> bool {
        self.host_hup
    }

    /// Resets the connection from the host side: an `OP_RST` is queued for
    /// the guest.
    pub fn reset(&mut self) {
        if self.state != ConnState::Closed {
            self.queue_rst();
        }
    }

    fn queue_rst(&mut self) {
        self.pending = PendingOps {
            rst: true,
            ..PendingOps::default()
        };
    }

    fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.pending.rst
            && !self.host_eof
            && !self.peer_shut_recv
    }

    fn host_has_data(&self) -> bool {
        self.host_readable || self.host_hup
    }

    fn peer_shutdown(&mut self, flags: u32) {
        self.peer_shut_recv |= flags & SHUTDOWN_RCV != 0;
        self.peer_shut_send |= flags & SHUTDOWN_SEND != 0;
        debug!(
            local_port = self.local_port,
            peer_port = self.peer_port,
            flags,
            "vsock: guest shut down"
        );
        if self.peer_shut_recv && self.peer_shut_send {
            self.rst_after_flush = true;
        }
        self.flush_to_host();
    }

    fn receive_data(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.peer_shut_send {
            debug!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                "vsock: data after the guest's send shutdown, resetting"
            );
            self.queue_rst();
            return;
        }
        let free = (self.buf_alloc as usize).saturating_sub(self.to_host.len());
        if data.len() > free {
            debug!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                len = data.len(),
                free,
                "vsock: the guest exceeded its credit, resetting"
            );
            self.queue_rst();
            return;
        }
        // data.len() <= buf_alloc, which fits in u32.
        self.recv_cnt += data.len() as u32;
        let mut rest = data;
        if self.handshake_reply.is_empty() && self.to_host.is_empty() {
            // Fast path: hand the bytes straight to the host.
            match write_some(&mut self.stream, data) {
                Ok(n) => {
                    // n <= data.len() <= buf_alloc, which fits in u32.
                    self.fwd_cnt += n as u32;
                    rest = &data[n..];
                }
                Err(e) => return self.host_write_failed(&e),
            }
        }
        self.to_host.extend(rest);
        self.flush_to_host();
    }

    fn host_write_failed(&mut self, err: &io::Error) {
        info!(
            local_port = self.local_port,
            peer_port = self.peer_port,
            "vsock: writing to the host stream failed, resetting: {err}"
        );
        self.queue_rst();
    }

    /// Writes pending bytes to the host, then handles what becomes possible
    /// once they are through (shutdowns, credit update).
    fn flush_to_host(&mut self) {
        if self.state == ConnState::Closed || self.pending.rst {
            return;
        }
        if !self.handshake_reply.is_empty() {
            match write_some(&mut self.stream, &self.handshake_reply) {
                Ok(n) => {
                    self.handshake_reply.drain(..n);
                }
                Err(e) => return self.host_write_failed(&e),
            }
            if !self.handshake_reply.is_empty() {
                return;
            }
        }
        while !self.to_host.is_empty() {
            let chunk = self.to_host.as_slices().0;
            let len = chunk.len();
            match write_some(&mut self.stream, chunk) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    // n <= buf_alloc, which fits in u32.
                    self.fwd_cnt += n as u32;
                    if n < len {
                        break;
                    }
                }
                Err(e) => return self.host_write_failed(&e),
            }
        }
        if self.to_host.is_empty() {
            if self.rst_after_flush {
                self.queue_rst();
                return;
            }
            if self.peer_shut_send && !self.host_write_shut {
                self.host_write_shut = true;
                if let Err(e) = self.stream.shutdown_write() {
                    debug!("vsock: shutting down the host stream's write half failed: {e}");
                }
            }
        }
        self.check_credit_update();
    }

    fn check_credit_update(&mut self) {
        let unadvertised = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if unadvertised == 0 {
            return;
        }
        let believed_used = (self.recv_cnt - self.last_fwd_cnt_sent).0;
        let believed_free = self.buf_alloc.saturating_sub(believed_used);
        if believed_free < CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Reads host data for the guest, within its credit.
    fn read_host(&mut self, max_data: usize) -> Option<Packet> {
        if !self.can_read_host() || !self.host_has_data() || max_data == 0 {
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending.credit_request = true;
            }
            return None;
        }
        let want = max_data.min(credit).min(MAX_PAYLOAD as usize);
        let mut buf = vec![0u8; want];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    info!(
                        local_port = self.local_port,
                        peer_port = self.peer_port,
                        "vsock: the host side will send no more"
                    );
                    self.host_readable = false;
                    self.host_eof = true;
                    self.pending.shutdown = true;
                    return None;
                }
                Ok(n) => {
                    if n < want {
                        self.host_readable = false;
                    }
                    buf.truncate(n);
                    // n <= MAX_PAYLOAD, which fits in u32.
                    self.rx_cnt += n as u32;
                    let mut pkt = self.control_packet(OP_RW, 0);
                    pkt.header.len = n as u32;
                    pkt.data = buf;
                    return Some(pkt);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(e) => {
                    info!(
                        local_port = self.local_port,
                        peer_port = self.peer_port,
                        "vsock: reading the host stream failed, resetting: {e}"
                    );
                    self.queue_rst();
                    return None;
                }
            }
        }
    }

    /// A packet to the guest on this connection, carrying the current
    /// credit counters.
    fn control_packet(&mut self, op: u16, flags: u32) -> Packet {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        Packet {
            header: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: self.local_port,
                dst_port: self.peer_port,
                len: 0,
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc: self.buf_alloc,
                fwd_cnt: self.fwd_cnt.0,
            },
            data: Vec::new(),
        }
    }
}

/// Writes as much of `buf` as `stream` takes without blocking.
fn write_some<S: Write>(stream: &mut S, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_CID: u64 = 3;

    /// An in-memory non-blocking stream.
    #[derive(Debug, Default)]
    struct FakeStream {
        /// What the host sends (read by the connection).
        input: VecDeque<u8>,
        /// The host closed its side: reads return 0 once `input` is empty.
        input_eof: bool,
        /// What the host received.
        output: Vec<u8>,
        /// Bytes the host accepts before writes would block.
        room: usize,
        /// Writes fail with EPIPE.
        broken: bool,
        write_shut: bool,
    }

    impl FakeStream {
        fn new() -> Self {
            Self {
                room: usize::MAX,
                ..Self::default()
            }
        }
    }

    impl Read for FakeStream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return if self.input_eof {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.input.len());
            for (dst, src) in buf.iter_mut().zip(self.input.drain(..n)) {
                *dst = src;
            }
            Ok(n)
        }
    }

    impl Write for FakeStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken {
                return Err(ErrorKind::BrokenPipe.into());
            }
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HostStream for FakeStream {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.write_shut = true;
            Ok(())
        }
    }

    fn guest(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn pkt(header: Header, data: &[u8]) -> Packet {
        Packet {
            header: Header {
                len: data.len() as u32,
                ..header
            },
            data: data.to_vec(),
        }
    }

    fn established(buf_alloc: u32) -> Connection<FakeStream> {
        let mut conn = Connection::guest_initiated(
            FakeStream::new(),
            GUEST_CID,
            &guest(OP_REQUEST, buf_alloc, 0),
        );
        let response = conn.next_packet_for_guest(4096).unwrap();
        assert_eq!(response.header.op, OP_RESPONSE);
        conn
    }

    fn drain(conn: &mut Connection<FakeStream>, max: usize) -> Vec<Packet> {
        let mut out = Vec::new();
        while conn.has_pending_rx() {
            match conn.next_packet_for_guest(max) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    #[test]
    fn guest_initiated_sends_response_with_credit() {
        let mut conn =
            Connection::guest_initiated(FakeStream::new(), GUEST_CID, &guest(OP_REQUEST, 4096, 0));
        assert_eq!(conn.local_port(), 52);
        assert_eq!(conn.peer_port(), 1000);
        assert!(conn.has_pending_rx());
        let p = conn.next_packet_for_guest(0).unwrap();
        assert_eq!(
            p.header,
            Header {
                src_cid: HOST_CID,
                dst_cid: GUEST_CID,
                src_port: 52,
                dst_port: 1000,
                len: 0,
                type_: TYPE_STREAM,
                op: OP_RESPONSE,
                flags: 0,
                buf_alloc: CONN_BUF_SIZE,
                fwd_cnt: 0,
            }
        );
        assert!(!conn.has_pending_rx());
        assert_eq!(conn.peer_credit(), 4096);
        assert!(conn.wants_host_read());
    }

    #[test]
    fn host_initiated_handshake() {
        let mut conn = Connection::host_initiated(FakeStream::new(), GUEST_CID, 1 << 30, 52);
        assert_eq!(conn.state(), ConnState::Connecting);
        let p = conn.next_packet_for_guest(4096).unwrap();
        assert_eq!(p.header.op, OP_REQUEST);
        assert_eq!((p.header.src_port, p.header.dst_port), (1 << 30, 52));
        assert!(!conn.wants_host_read());

        let mut response = guest(OP_RESPONSE, 4096, 0);
        response.src_port = 52;
        response.dst_port = 1 << 30;
        conn.handle_guest_packet(&pkt(response, b""));
        assert_eq!(conn.state(), ConnState::Established);
        assert_eq!(
            conn.stream().output,
            format!("OK {}\n", 1u32 << 30).as_bytes()
        );
        // The handshake reply is not guest data.
        assert_eq!(conn.fwd_cnt(), 0);
    }

    #[test]
    fn host_initiated_refused_by_the_guest() {
        let mut conn = Connection::host_initiated(FakeStream::new(), GUEST_CID, 1 << 30, 52);
        conn.next_packet_for_guest(4096).unwrap();
        conn.handle_guest_packet(&pkt(guest(OP_RST, 0, 0), b""));
        assert_eq!(conn.state(), ConnState::Closed);
        assert!(!conn.has_pending_rx());
        assert!(conn.stream().output.is_empty());
    }

    #[test]
    fn guest_data_reaches_the_host_and_is_counted() {
        let mut conn = established(4096);
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), b"hello"));
        assert_eq!(conn.stream().output, b"hello");
        assert_eq!(conn.fwd_cnt(), 5);
        // Small amounts do not trigger a credit update on their own.
        assert!(!conn.has_pending_rx());
    }

    #[test]
    fn host_data_is_limited_by_the_guest_credit() {
        let mut conn = established(1000);
        conn.stream.input.extend(vec![7u8; 5000]);
        conn.host_readable();
        assert!(!conn.wants_host_read());
        let packets = drain(&mut conn, 300);
        let data: usize = packets
            .iter()
            .filter(|p| p.header.op == OP_RW)
            .map(|p| p.data.len())
            .sum();
        assert_eq!(data, 1000);
        assert!(packets.iter().all(|p| p.data.len() <= 300));
        // Out of credit: one credit request, then silence.
        assert_eq!(packets.last().unwrap().header.op, OP_CREDIT_REQUEST);
        assert_eq!(conn.peer_credit(), 0);
        assert!(!conn.has_pending_rx());

        // The guest consumed 600 bytes.
        conn.handle_guest_packet(&pkt(guest(OP_CREDIT_UPDATE, 1000, 600), b""));
        assert_eq!(conn.peer_credit(), 600);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets[0].header.op, OP_RW);
        assert_eq!(packets[0].data.len(), 600);
    }

    #[test]
    fn credit_updates_follow_host_consumption() {
        let mut conn = established(4096);
        let chunk = vec![1u8; 32 * 1024];
        // The host takes nothing for now.
        conn.stream.room = 0;
        let mut sent = 0u32;
        while sent + chunk.len() as u32 <= CONN_BUF_SIZE {
            conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), &chunk));
            sent += chunk.len() as u32;
        }
        assert_eq!(conn.pending_to_host(), CONN_BUF_SIZE as usize);
        assert!(conn.wants_host_write());
        assert!(!conn.has_pending_rx());

        // The host drains everything: the guest must hear about it.
        conn.stream.room = usize::MAX;
        conn.host_writable();
        assert_eq!(conn.fwd_cnt(), CONN_BUF_SIZE);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_CREDIT_UPDATE);
        assert_eq!(packets[0].header.fwd_cnt, CONN_BUF_SIZE);
        assert_eq!(packets[0].header.buf_alloc, CONN_BUF_SIZE);
    }

    #[test]
    fn a_guest_exceeding_its_credit_is_reset() {
        let mut conn = established(4096);
        conn.stream.room = 0;
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..4 {
            conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), &chunk));
        }
        assert!(!conn.has_pending_rx());
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), b"x"));
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_RST);
        assert_eq!(conn.state(), ConnState::Closed);
    }

    #[test]
    fn credit_request_is_answered() {
        let mut conn = established(4096);
        conn.handle_guest_packet(&pkt(guest(OP_CREDIT_REQUEST, 4096, 0), b""));
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_CREDIT_UPDATE);
    }

    #[test]
    fn host_eof_becomes_a_send_shutdown() {
        let mut conn = established(4096);
        conn.stream.input.extend(b"bye");
        conn.stream.input_eof = true;
        conn.host_readable();
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].data, b"bye");
        // A short read waits for the next readiness event, which shows the
        // end of file.
        conn.host_readable();
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_SHUTDOWN);
        assert_eq!(packets[0].header.flags, SHUTDOWN_SEND);
        assert!(!conn.wants_host_read());
        // The guest can still send.
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 3), b"ok"));
        assert_eq!(conn.stream().output, b"ok");
        // Then closes: reset.
        let mut shutdown = guest(OP_SHUTDOWN, 4096, 3);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        conn.handle_guest_packet(&pkt(shutdown, b""));
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_RST);
        assert_eq!(conn.state(), ConnState::Closed);
    }

    #[test]
    fn guest_full_shutdown_waits_for_pending_data() {
        let mut conn = established(4096);
        conn.stream.room = 2;
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), b"hello"));
        let mut shutdown = guest(OP_SHUTDOWN, 4096, 0);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        conn.handle_guest_packet(&pkt(shutdown, b""));
        assert!(!conn.has_pending_rx());
        conn.stream.room = usize::MAX;
        conn.host_writable();
        assert_eq!(conn.stream().output, b"hello");
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.last().unwrap().header.op, OP_RST);
    }

    #[test]
    fn guest_send_shutdown_half_closes_the_host_stream() {
        let mut conn = established(4096);
        let mut shutdown = guest(OP_SHUTDOWN, 4096, 0);
        shutdown.flags = SHUTDOWN_SEND;
        conn.handle_guest_packet(&pkt(shutdown, b""));
        assert!(conn.stream().write_shut);
        assert_eq!(conn.state(), ConnState::Established);
        // The host may still answer.
        conn.stream.input.extend(b"answer");
        conn.host_readable();
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets[0].data, b"answer");
        // More data from the guest is a violation.
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), b"late"));
        assert_eq!(drain(&mut conn, 4096)[0].header.op, OP_RST);
    }

    #[test]
    fn host_write_errors_reset() {
        let mut conn = established(4096);
        conn.stream.broken = true;
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), b"hello"));
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header.op, OP_RST);
    }

    #[test]
    fn unexpected_ops_reset() {
        for op in [OP_REQUEST, OP_RESPONSE, 0, 99] {
            let mut conn = established(4096);
            conn.handle_guest_packet(&pkt(guest(op, 4096, 0), b""));
            assert_eq!(drain(&mut conn, 4096)[0].header.op, OP_RST, "op {op}");
        }
        // Data before the handshake completes.
        let mut conn = Connection::host_initiated(FakeStream::new(), GUEST_CID, 1 << 30, 52);
        conn.next_packet_for_guest(4096).unwrap();
        conn.handle_guest_packet(&pkt(guest(OP_RW, 4096, 0), b"early"));
        assert_eq!(drain(&mut conn, 4096)[0].header.op, OP_RST);
        assert!(conn.stream().output.is_empty());
    }

    #[test]
    fn bogus_peer_counters_never_grant_credit() {
        let mut conn = established(1000);
        // fwd_cnt ahead of what was sent: in flight wraps to a huge value.
        conn.handle_guest_packet(&pkt(guest(OP_CREDIT_UPDATE, 1000, 5000), b""));
        assert_eq!(conn.peer_credit(), 0);
    }

    #[test]
    fn counters_wrap() {
        let mut conn = established(u32::MAX);
        conn.rx_cnt = Wrapping(u32::MAX - 10);
        conn.peer_fwd_cnt = Wrapping(u32::MAX - 20);
        assert_eq!(conn.peer_credit(), u32::MAX - 10);
        conn.rx_cnt = Wrapping(5);
        assert_eq!(conn.peer_credit(), u32::MAX - 26);
    }

    #[test]
    fn hung_up_streams_are_read_to_the_end() {
        let mut conn = established(4096);
        conn.stream.input.extend(b"abc");
        conn.stream.input_eof = true;
        conn.host_hung_up();
        assert!(!conn.wants_host_read());
        assert!(conn.has_pending_rx());
        // Small reads do not lose the end of file.
        let packets = drain(&mut conn, 2);
        let ops: Vec<u16> = packets.iter().map(|p| p.header.op).collect();
        assert_eq!(ops, vec![OP_RW, OP_RW, OP_SHUTDOWN]);
    }
}
