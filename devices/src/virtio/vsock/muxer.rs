//! The hybrid vsock backend: guest vsock streams multiplexed onto host
//! unix sockets (the Firecracker / Cloud Hypervisor convention).
//!
//! - Host-initiated: the muxer listens on `uds_path`. A host client
//!   connects and writes `CONNECT <port>\n`; the muxer allocates a host
//!   port and sends the guest an `OP_REQUEST` from it to `<port>`. When the
//!   guest accepts (`OP_RESPONSE`) the client reads `OK <host_port>\n` and
//!   the stream is connected; when it refuses (`OP_RST`) the client's
//!   socket is closed.
//! - Guest-initiated: an `OP_REQUEST` to host port `P` connects to the
//!   unix socket `<uds_path>_P`; the guest gets `OP_RESPONSE` if that
//!   works and `OP_RST` if it does not.
//!
//! Connections live in a table keyed by [`ConnKey`] (host port, guest
//! port). Every host file descriptor (the listener, clients still sending
//! their `CONNECT` line, connection streams) is watched by a nested epoll
//! instance, so the VMM's event loop watches one descriptor,
//! [`VsockMuxer::host_fd`], and calls [`VsockMuxer::process_host_events`]
//! when it is readable. Interest in each stream follows what its
//! connection can do (read only with guest credit and no unread data
//! flagged, write only with bytes pending), so level-triggered readiness
//! never spins.
//!
//! The muxer does no guest memory access: the device feeds it the guest's
//! packets ([`VsockMuxer::handle_guest_packet`]) and asks it for packets
//! for the guest ([`VsockMuxer::next_packet_for_guest`]), served
//! round-robin across connections.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, ErrorKind, Read};
use std::ops::Bound;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnState, Connection};
use super::packet::{Header, Packet, HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};

/// Most connections (plus host clients still handshaking) at a time.
pub const MAX_CONNECTIONS: usize = 1024;
/// First host port handed to host-initiated connections; they are
/// allocated round-robin in `[1 << 30, 1 << 31)`.
pub const LOCAL_PORT_BASE: u32 = 1 << 30;
const LOCAL_PORT_END: u32 = 1 << 31;
/// Resets for packets without a connection that wait for RX buffers; more
/// are dropped.
const MAX_PENDING_RSTS: usize = 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Readiness events handled per call (the rest stay pending, so the outer
/// loop calls again).
const EVENTS_PER_CALL: usize = 64;
/// Clients accepted per listener event.
const ACCEPTS_PER_EVENT: usize = 64;

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Binding the host listening socket failed (for example a stale socket
    /// file is in the way).
    #[error("cannot listen on the vsock unix socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// Creating or setting up the nested epoll instance failed.
    #[error("cannot set up the vsock epoll instance: {0}")]
    Epoll(#[source] io::Error),
}

/// Identifies a connection: host-side port and guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
}

/// What a watched file descriptor belongs to.
#[derive(Clone, Copy, Debug)]
enum FdOwner {
    Listener,
    Handshake,
    Conn(ConnKey),
}

/// A connection and how its stream is watched.
#[derive(Debug)]
struct ConnEntry {
    conn: Connection<UnixStream>,
    /// Interest registered in the epoll instance; `None` when not
    /// registered (the stream hung up).
    watched: Option<EventSet>,
}

/// A host client that has not finished its `CONNECT <port>\n` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

enum HandshakeProgress {
    Incomplete,
    Connect(u32),
    Failed(String),
}

impl Handshake {
    /// Reads the line one byte at a time, so that nothing after the newline
    /// is consumed.
    fn read(&mut self) -> HandshakeProgress {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return HandshakeProgress::Failed("closed before CONNECT".into()),
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() > MAX_HANDSHAKE_LINE {
                        return HandshakeProgress::Failed("CONNECT line too long".into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return HandshakeProgress::Incomplete
                }
                Err(e) => return HandshakeProgress::Failed(format!("read failed: {e}")),
            }
        }
    }
}

/// Parses `CONNECT <port>` (keyword case-insensitive, optional `\r`).
fn parse_connect(line: &[u8]) -> HandshakeProgress {
    let failed = || HandshakeProgress::Failed(format!("bad CONNECT line {line:?}"));
    let Ok(text) = std::str::from_utf8(line) else {
        return failed();
    };
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(cmd), Some(port), None) if cmd.eq_ignore_ascii_case("connect") => {
            match port.parse::<u32>() {
                Ok(port) => HandshakeProgress::Connect(port),
                Err(_) => failed(),
            }
        }
        _ => failed(),
    }
}

/// The path of the unix socket serving host port `port`: `<uds_path>_<port>`.
pub fn host_port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds_path.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Connects to the unix socket at `path` without blocking: a listener
/// whose backlog is full fails with `WouldBlock` instead of stalling the
/// VMM's event thread (unix stream connects otherwise complete at once).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is a plain C struct; all-zero bytes are a valid
    // value of it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Leave room for the terminating NUL (already zero).
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "unix socket path too long or containing NUL",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // sockaddr_un is 110 bytes: fits in socklen_t.
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un that outlives the call
    // and `len` is its size; connect(2) only reads it. The result is
    // checked.
    let ret = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

fn epoll_event(events: EventSet, fd: RawFd) -> EpollEvent {
    // File descriptors are non-negative, so the round trip through u64 in
    // `EpollEvent::fd` is exact.
    EpollEvent::new(events, fd as u64)
}

/// The vsock connection multiplexer of the hybrid unix-socket backend.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: BTreeMap<ConnKey, ConnEntry>,
    handshakes: HashMap<RawFd, Handshake>,
    fds: HashMap<RawFd, FdOwner>,
    /// Connections that may have a packet for the guest.
    rx_ready: BTreeSet<ConnKey>,
    /// The connection served last, for round-robin.
    rx_cursor: Option<ConnKey>,
    /// Resets to send for packets that belong to no connection.
    rsts: VecDeque<ConnKey>,
    next_local_port: u32,
}

impl VsockMuxer {
    /// Listens on `uds_path` for host-initiated connections to the guest
    /// with CID `guest_cid`. The socket file is removed when the muxer is
    /// dropped; a stale one must be removed by the caller beforehand.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Result<Self, MuxerError> {
        let uds_path = uds_path.into();
        let listener = UnixListener::bind(&uds_path).map_err(|source| MuxerError::Bind {
            path: uds_path.clone(),
            source,
        })?;
        let setup = || -> io::Result<Epoll> {
            listener.set_nonblocking(true)?;
            let epoll = Epoll::new()?;
            let fd = listener.as_raw_fd();
            epoll.ctl(ControlOperation::Add, fd, epoll_event(EventSet::IN, fd))?;
            Ok(epoll)
        };
        let epoll = match setup() {
            Ok(epoll) => epoll,
            Err(e) => {
                let _ = std::fs::remove_file(&uds_path);
                return Err(MuxerError::Epoll(e));
            }
        };
        let mut fds = HashMap::new();
        fds.insert(listener.as_raw_fd(), FdOwner::Listener);
        info!(guest_cid, path = %uds_path.display(), "vsock: listening for host connections");
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            epoll,
            conns: BTreeMap::new(),
            handshakes: HashMap::new(),
            fds,
            rx_ready: BTreeSet::new(),
            rx_cursor: None,
            rsts: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
        })
    }

    /// The host socket path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The one descriptor to watch for readability: the nested epoll
    /// instance. It stays the same for the muxer's lifetime.
    pub fn host_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of connections in the table.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the connection `key` is in the table.
    pub fn has_connection(&self, key: ConnKey) -> bool {
        self.conns.contains_key(&key)
    }

    /// The connection `key`, if any.
    pub fn connection(&self, key: ConnKey) -> Option<&Connection<UnixStream>> {
        self.conns.get(&key).map(|e| &e.conn)
    }

    /// Handles the host descriptors that are ready (without blocking):
    /// accepts clients, reads `CONNECT` lines, marks streams readable or
    /// writable. Packets for the guest become available through
    /// [`next_packet_for_guest`](Self::next_packet_for_guest).
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_CALL];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(e) => {
                warn!("vsock: epoll_wait failed: {e}");
                return;
            }
        };
        for event in events.iter().take(count) {
            let fd = event.fd();
            let set = EventSet::from_bits_truncate(event.events());
            match self.fds.get(&fd).copied() {
                Some(FdOwner::Listener) => self.accept_clients(),
                Some(FdOwner::Handshake) => self.continue_handshake(fd),
                Some(FdOwner::Conn(key)) => self.stream_event(key, set),
                None => debug!(fd, "vsock: event for a descriptor already closed"),
            }
        }
    }

    /// Handles a packet the guest sent. Packets from or to the wrong CID
    /// are dropped; packets of another type than stream, and packets for
    /// no connection other than requests, are answered with a reset.
    pub fn handle_guest_packet(&mut self, pkt: &Packet) {
        let h = &pkt.header;
        let Some(key) = self.route(h) else {
            return;
        };
        if h.type_ != TYPE_STREAM {
            debug!(type_ = h.type_, "vsock: unsupported socket type, resetting");
            self.reset_or_reject(key, h.op);
            return;
        }
        if let Some(entry) = self.conns.get_mut(&key) {
            entry.conn.handle_guest_packet(pkt);
            self.refresh(key);
            return;
        }
        match h.op {
            OP_REQUEST => self.connect_to_host(h),
            // Nothing to reset.
            OP_RST => {}
            op => {
                debug!(
                    local_port = key.local_port,
                    peer_port = key.peer_port,
                    op,
                    "vsock: packet for no connection, resetting"
                );
                self.queue_rst(key);
            }
        }
    }

    /// Handles a guest packet that could not be accepted (its header
    /// announced too much payload): resets its connection, or answers
    /// with a reset.
    pub fn reject_guest_packet(&mut self, h: &Header) {
        if let Some(key) = self.route(h) {
            self.reset_or_reject(key, h.op);
        }
    }

    /// Whether [`next_packet_for_guest`](Self::next_packet_for_guest) may
    /// have a packet.
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// The next packet for the guest, with at most `max_data` payload
    /// bytes; `None` if nothing can be sent now.
    pub fn next_packet_for_guest(&mut self, max_data: usize) -> Option<Packet> {
        if let Some(key) = self.rsts.pop_front() {
            return Some(self.rst_packet(key));
        }
        // Each ready connection gets one chance, starting after the one
        // served last.
        for _ in 0..self.rx_ready.len() {
            let key = match self.rx_cursor {
                Some(cursor) => self
                    .rx_ready
                    .range((Bound::Excluded(cursor), Bound::Unbounded))
                    .next()
                    .or_else(|| self.rx_ready.iter().next()),
                None => self.rx_ready.iter().next(),
            }
            .copied()?;
            self.rx_cursor = Some(key);
            let pkt = self
                .conns
                .get_mut(&key)
                .and_then(|e| e.conn.next_packet_for_guest(max_data));
            self.refresh(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Drops every connection and pending client (their host sockets are
    /// closed) and every queued packet; keeps listening. For a device
    /// reset: the guest's sockets are gone.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            self.drop_handshake(fd);
        }
        self.rsts.clear();
        self.rx_ready.clear();
        self.rx_cursor = None;
    }

    /// The connection key of a guest packet addressed to the host, or
    /// `None` (logged) if it is not.
    fn route(&self, h: &Header) -> Option<ConnKey> {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            debug!(
                src_cid = h.src_cid,
                dst_cid = h.dst_cid,
                "vsock: dropping a packet with wrong CIDs"
            );
            return None;
        }
        Some(ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        })
    }

    fn reset_or_reject(&mut self, key: ConnKey, op: u16) {
        if let Some(entry) = self.conns.get_mut(&key) {
            entry.conn.reset();
            self.refresh(key);
        } else if op != OP_RST {
            self.queue_rst(key);
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rsts.len() < MAX_PENDING_RSTS {
            self.rsts.push_back(key);
        } else {
            debug!("vsock: too many pending resets, dropping one");
        }
    }

    fn rst_packet(&self, key: ConnKey) -> Packet {
        Packet {
            header: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                op: OP_RST,
                ..Header::default()
            },
            data: Vec::new(),
        }
    }

    /// A guest `OP_REQUEST` for host port `h.dst_port`: connect to
    /// `<uds_path>_<port>`.
    fn connect_to_host(&mut self, h: &Header) {
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            warn!(
                "vsock: {MAX_CONNECTIONS} connections open, refusing the guest's request to port {}",
                key.local_port
            );
            self.queue_rst(key);
            return;
        }
        let path = host_port_path(&self.uds_path, key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                info!(
                    local_port = key.local_port,
                    peer_port = key.peer_port,
                    "vsock: guest connection refused: {}: {e}",
                    path.display()
                );
                self.queue_rst(key);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            fd,
            epoll_event(EventSet::empty(), fd),
        ) {
            warn!("vsock: cannot watch {}: {e}", path.display());
            self.queue_rst(key);
            return;
        }
        info!(
            local_port = key.local_port,
            peer_port = key.peer_port,
            "vsock: guest connected to {}",
            path.display()
        );
        let conn = Connection::guest_initiated(stream, self.guest_cid, h);
        self.insert(key, fd, conn, Some(EventSet::empty()));
    }

    fn insert(
        &mut self,
        key: ConnKey,
        fd: RawFd,
        conn: Connection<UnixStream>,
        watched: Option<EventSet>,
    ) {
        self.fds.insert(fd, FdOwner::Conn(key));
        self.conns.insert(key, ConnEntry { conn, watched });
        self.refresh(key);
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("vsock: accepting a host connection failed: {e}");
                    return;
                }
            };
            if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                warn!("vsock: {MAX_CONNECTIONS} connections open, closing a new host client");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("vsock: cannot make a host client non-blocking: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, fd, epoll_event(EventSet::IN, fd))
            {
                warn!("vsock: cannot watch a host client: {e}");
                continue;
            }
            debug!(fd, "vsock: host client accepted, waiting for CONNECT");
            self.fds.insert(fd, FdOwner::Handshake);
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if let Some(handshake) = self.handshakes.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.fds.remove(&fd);
            // Closes the client's socket.
            drop(handshake);
        }
    }

    fn continue_handshake(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let peer_port = match handshake.read() {
            HandshakeProgress::Incomplete => return,
            HandshakeProgress::Failed(why) => {
                info!("vsock: closing a host client: {why}");
                self.drop_handshake(fd);
                return;
            }
            HandshakeProgress::Connect(port) => port,
        };
        let Some(local_port) = self.allocate_local_port() else {
            warn!("vsock: no free host port, closing a host client");
            self.drop_handshake(fd);
            return;
        };
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        info!(
            local_port,
            peer_port, "vsock: host client connecting to the guest"
        );
        let conn =
            Connection::host_initiated(handshake.stream, self.guest_cid, local_port, peer_port);
        // Still registered with the interest of the handshake.
        self.insert(key, fd, conn, Some(EventSet::IN));
    }

    fn local_port_in_use(&self, port: u32) -> bool {
        let first = ConnKey {
            local_port: port,
            peer_port: 0,
        };
        let last = ConnKey {
            local_port: port,
            peer_port: u32::MAX,
        };
        self.conns.range(first..=last).next().is_some()
    }

    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = if port + 1 >= LOCAL_PORT_END {
                LOCAL_PORT_BASE
            } else {
                port + 1
            };
            if !self.local_port_in_use(port) {
                return Some(port);
            }
        }
        None
    }

    fn stream_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::IN) {
            entry.conn.host_readable();
        }
        if set.contains(EventSet::OUT) {
            entry.conn.host_writable();
        }
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            debug!(
                local_port = key.local_port,
                peer_port = key.peer_port,
                "vsock: host stream hung up"
            );
            entry.conn.host_hung_up();
        }
        self.refresh(key);
    }

    /// Brings the bookkeeping of connection `key` up to date after anything
    /// happened to it: removes it once closed, tracks whether it has
    /// packets for the guest, and adjusts the epoll interest in its stream.
    fn refresh(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else {
            self.rx_ready.remove(&key);
            return;
        };
        if entry.conn.state() == ConnState::Closed {
            self.remove(key);
            return;
        }
        let fd = entry.conn.stream().as_raw_fd();
        let wanted = if entry.conn.host_hup() {
            None
        } else {
            let mut set = EventSet::empty();
            if entry.conn.wants_host_read() {
                set |= EventSet::IN;
            }
            if entry.conn.wants_host_write() {
                set |= EventSet::OUT;
            }
            Some(set)
        };
        if wanted != entry.watched {
            let result = match wanted {
                None => self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
                Some(set) => {
                    let op = if entry.watched.is_some() {
                        ControlOperation::Modify
                    } else {
                        ControlOperation::Add
                    };
                    self.epoll.ctl(op, fd, epoll_event(set, fd))
                }
            };
            match result {
                Ok(()) => entry.watched = wanted,
                Err(e) => {
                    warn!(
                        local_port = key.local_port,
                        peer_port = key.peer_port,
                        "vsock: cannot update the watch on a host stream, resetting: {e}"
                    );
                    entry.conn.reset();
                }
            }
        }
        if entry.conn.has_pending_rx() {
            self.rx_ready.insert(key);
        } else {
            self.rx_ready.remove(&key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        self.rx_ready.remove(&key);
        let Some(entry) = self.conns.remove(&key) else {
            return;
        };
        let fd = entry.conn.stream().as_raw_fd();
        if entry.watched.is_some() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.fds.remove(&fd);
        info!(
            local_port = key.local_port,
            peer_port = key.peer_port,
            "vsock: connection closed"
        );
        // Dropping the entry closes the host stream.
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            debug!("vsock: cannot remove {}: {e}", self.uds_path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::virtio::vsock::connection::CONN_BUF_SIZE;
    use crate::virtio::vsock::packet::{OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_SEND};
    use crate::virtio::vsock::test_support::{read_exactly, wait_readable, TempDir};

    const GUEST_CID: u64 = 3;

    fn guest(op: u16, src_port: u32, dst_port: u32, data: &[u8]) -> Packet {
        Packet {
            header: Header {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 65536,
                fwd_cnt: 0,
            },
            data: data.to_vec(),
        }
    }

    /// Processes host events until `cond` holds (2 s at most).
    fn pump_until(m: &mut VsockMuxer, mut cond: impl FnMut(&mut VsockMuxer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond(m) {
            assert!(Instant::now() < deadline, "timed out");
            wait_readable(m.host_fd(), 10);
            m.process_host_events();
        }
    }

    fn next(m: &mut VsockMuxer) -> Packet {
        m.next_packet_for_guest(4096)
            .expect("a packet for the guest")
    }

    #[test]
    fn guest_connects_to_a_host_port() {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let server = UnixListener::bind(host_port_path(&uds, 1234)).unwrap();
        let mut m = VsockMuxer::new(GUEST_CID, &uds).unwrap();

        m.handle_guest_packet(&guest(OP_REQUEST, 1000, 1234, b""));
        let response = next(&mut m);
        assert_eq!(response.header.op, OP_RESPONSE);
        assert_eq!(response.header.src_port, 1234);
        assert_eq!(response.header.dst_port, 1000);
        assert_eq!(response.header.dst_cid, GUEST_CID);
        assert_eq!(response.header.buf_alloc, CONN_BUF_SIZE);
        let key = ConnKey {
            local_port: 1234,
            peer_port: 1000,
        };
        assert!(m.has_connection(key));

        let (mut host, _) = server.accept().unwrap();
        m.handle_guest_packet(&guest(OP_RW, 1000, 1234, b"ping"));
        assert_eq!(read_exactly(&mut host, 4), b"ping");

        host.write_all(b"pong").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        let data = next(&mut m);
        assert_eq!(data.header.op, OP_RW);
        assert_eq!(data.data, b"pong");

        // The host closes: the guest hears it will get no more.
        drop(host);
        pump_until(&mut m, |m| m.has_pending_rx());
        let shutdown = next(&mut m);
        assert_eq!(shutdown.header.op, OP_SHUTDOWN);
        assert_eq!(shutdown.header.flags, SHUTDOWN_SEND);
        m.handle_guest_packet(&guest(OP_RST, 1000, 1234, b""));
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn guest_request_to_a_closed_port_is_reset() {
        let dir = TempDir::new();
        let mut m = VsockMuxer::new(GUEST_CID, dir.path().join("v.sock")).unwrap();
        m.handle_guest_packet(&guest(OP_REQUEST, 1000, 4321, b""));
        let rst = next(&mut m);
        assert_eq!(rst.header.op, OP_RST);
        assert_eq!((rst.header.src_port, rst.header.dst_port), (4321, 1000));
        assert_eq!(m.connection_count(), 0);
        assert!(!m.has_pending_rx());
    }

    #[test]
    fn host_client_connect_handshake() {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let mut m = VsockMuxer::new(GUEST_CID, &uds).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        let request = next(&mut m);
        assert_eq!(request.header.op, OP_REQUEST);
        assert_eq!(request.header.dst_port, 52);
        let host_port = request.header.src_port;
        assert_eq!(host_port, LOCAL_PORT_BASE);

        m.handle_guest_packet(&guest(OP_RESPONSE, 52, host_port, b""));
        let expected = format!("OK {host_port}\n");
        assert_eq!(
            read_exactly(&mut client, expected.len()),
            expected.as_bytes()
        );

        m.handle_guest_packet(&guest(OP_RW, 52, host_port, b"hi"));
        assert_eq!(read_exactly(&mut client, 2), b"hi");
        client.write_all(b"yo").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        assert_eq!(next(&mut m).data, b"yo");
    }

    #[test]
    fn host_client_refused_by_the_guest_is_closed() {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let mut m = VsockMuxer::new(GUEST_CID, &uds).unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"connect 99\r\n").unwrap();
        pump_until(&mut m, |m| m.has_pending_rx());
        let request = next(&mut m);
        m.handle_guest_packet(&guest(OP_RST, 99, request.header.src_port, b""));
        assert_eq!(m.connection_count(), 0);
        // The client sees end of file.
        let mut buf = [0u8; 8];
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn bad_connect_lines_close_the_client() {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let mut m = VsockMuxer::new(GUEST_CID, &uds).unwrap();
        let long = format!("CONNECT {}\n", "9".repeat(40));
        for line in [
            "HELLO 52\n",
            "CONNECT\n",
            "CONNECT x\n",
            "CONNECT 1 2\n",
            &long,
        ] {
            let mut client = UnixStream::connect(&uds).unwrap();
            client.write_all(line.as_bytes()).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 8];
            let deadline = Instant::now() + Duration::from_secs(2);
            // Closed by the muxer: end of file (or a reset for unread bytes).
            loop {
                m.process_host_events();
                client.set_nonblocking(true).unwrap();
                match client.read(&mut buf) {
                    Ok(0) => break,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                    other => panic!("{line:?}: {other:?}"),
                }
                assert!(Instant::now() < deadline, "{line:?} not closed");
                wait_readable(m.host_fd(), 10);
            }
            assert!(!m.has_pending_rx(), "{line:?}");
        }
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn packets_without_a_connection_are_reset_or_dropped() {
        let dir = TempDir::new();
        let mut m = VsockMuxer::new(GUEST_CID, dir.path().join("v.sock")).unwrap();
        // Data for no connection: reset.
        m.handle_guest_packet(&guest(OP_RW, 1000, 5, b"x"));
        assert_eq!(next(&mut m).header.op, OP_RST);
        // A reset for no connection: nothing.
        m.handle_guest_packet(&guest(OP_RST, 1000, 5, b""));
        assert!(!m.has_pending_rx());
        // Another socket type: reset.
        let mut dgram = guest(OP_REQUEST, 1000, 5, b"");
        dgram.header.type_ = 2;
        m.handle_guest_packet(&dgram);
        assert_eq!(next(&mut m).header.op, OP_RST);
        // Wrong source or destination CID: dropped.
        let mut spoofed = guest(OP_REQUEST, 1000, 5, b"");
        spoofed.header.src_cid = 42;
        m.handle_guest_packet(&spoofed);
        let mut elsewhere = guest(OP_REQUEST, 1000, 5, b"");
        elsewhere.header.dst_cid = 7;
        m.handle_guest_packet(&elsewhere);
        assert!(!m.has_pending_rx());
        // An oversize packet for no connection: reset.
        m.reject_guest_packet(&guest(OP_RW, 1000, 5, b"").header);
        assert_eq!(next(&mut m).header.op, OP_RST);
    }

    #[test]
    fn local_ports_skip_those_in_use() {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let mut m = VsockMuxer::new(GUEST_CID, &uds).unwrap();
        m.next_local_port = LOCAL_PORT_END - 1;
        assert_eq!(m.allocate_local_port(), Some(LOCAL_PORT_END - 1));
        assert_eq!(m.allocate_local_port(), Some(LOCAL_PORT_BASE));
        // A guest connection occupying BASE + 1.
        let _server = UnixListener::bind(host_port_path(&uds, LOCAL_PORT_BASE + 1)).unwrap();
        m.handle_guest_packet(&guest(OP_REQUEST, 7, LOCAL_PORT_BASE + 1, b""));
        assert_eq!(m.connection_count(), 1);
        assert_eq!(m.allocate_local_port(), Some(LOCAL_PORT_BASE + 2));
    }

    #[test]
    fn reset_closes_everything_and_the_socket_file_goes_on_drop() {
        let dir = TempDir::new();
        let uds = dir.path().join("v.sock");
        let _server = UnixListener::bind(host_port_path(&uds, 1)).unwrap();
        let mut m = VsockMuxer::new(GUEST_CID, &uds).unwrap();
        m.handle_guest_packet(&guest(OP_REQUEST, 1000, 1, b""));
        m.handle_guest_packet(&guest(OP_RW, 1000, 9, b""));
        assert_eq!(m.connection_count(), 1);
        m.reset();
        assert_eq!(m.connection_count(), 0);
        assert!(!m.has_pending_rx());
        assert!(uds.exists());
        // Binding again over a live socket fails with context.
        let err = VsockMuxer::new(GUEST_CID, &uds).unwrap_err();
        assert!(err.to_string().contains("v.sock"), "{err}");
        drop(m);
        assert!(!uds.exists());
    }
}
