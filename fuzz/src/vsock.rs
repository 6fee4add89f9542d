//! virtio-vsock harnesses.
//!
//! - [`run_device`] (target `vsock`): a [`Vsock`] (guest CID 3) with a
//!   fuzzed TX queue (1) and RX queue (0), driven through its public API
//!   with a real host side: a unix socket listening on host port
//!   [`HOST_PORT`] (`<uds>_52`), so guest `OP_REQUEST`s to it connect, and
//!   optionally a host client doing the `CONNECT <port>` handshake. Input:
//!
//!   ```text
//!   u8  cfg    bit 0: a host client connects first ("CONNECT <port>\n")
//!              bit 1: an RX notification before the TX one
//!   u32 port   the guest port the host client asks for
//!   QueueSpec (TX), QueueSpec (RX), then the data area
//!   ```
//!
//!   Sequence: activate; [host client connects, host events]; [RX
//!   notification]; TX notification; the harness accepts what the guest
//!   connected to port 52 and writes to it; host events; RX notification.
//!
//! - [`run_packet`] (target `vsock_packet`): every available chain through
//!   [`Packet::from_tx_chain`] and, from a clone, [`RxBuffer::new`] +
//!   [`RxBuffer::write`] with a fuzzed packet. Input:
//!
//!   ```text
//!   44 bytes  header of the packet written into RX buffers
//!   u32       its payload length (bytes 0xab)
//!   QueueSpec, then the data area
//!   ```

use std::io::{ErrorKind, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use devices::virtio::vsock::packet::{RxBuffer, HEADER_SIZE, MAX_PAYLOAD};
use devices::virtio::vsock::{host_port_path, Header, Packet, PacketError, RX_QUEUE, TX_QUEUE};
use devices::virtio::{ActivateContext, DeviceError, EventFdInterrupt, VirtioDevice, Vsock};
use virtio_queue::QueueOwnedT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::{
    guest_memory, may_write_rings, scratch_dir, used_entries, write_data, QueueSpec, Reader,
};

/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// The host port with a listening unix socket.
pub const HOST_PORT: u32 = 52;
/// What the host side writes to every connection the guest opened.
pub const HOST_GREETING: &[u8] = b"hello from the host\n";

fn uds_path() -> PathBuf {
    scratch_dir().join("vsock.sock")
}

/// The host service on port [`HOST_PORT`], listening for the whole process.
fn host_service() -> &'static UnixListener {
    static LISTENER: OnceLock<UnixListener> = OnceLock::new();
    LISTENER.get_or_init(|| {
        let path = host_port_path(&uds_path(), HOST_PORT);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("host service socket");
        listener.set_nonblocking(true).expect("non-blocking");
        listener
    })
}

/// What one [`run_device`] did, for the corpus tests.
#[derive(Debug)]
pub struct DeviceOutcome {
    /// TX used entries (head, length).
    pub tx_used: Vec<(u32, u32)>,
    /// RX used entries (head, length).
    pub rx_used: Vec<(u32, u32)>,
    /// Connections the guest opened to [`HOST_PORT`].
    pub host_accepted: usize,
    /// What the guest sent to them, concatenated.
    pub host_received: Vec<u8>,
    /// Whether the device failed (a malformed chain).
    pub failed: bool,
    /// Connections in the muxer at the end.
    pub connections: usize,
    /// Guest memory afterwards.
    pub mem: GuestMemoryMmap,
}

/// Only a malformed chain or a broken queue may fail the device.
fn check(result: Result<(), DeviceError>, failed: &mut bool) {
    if let Err(err) = result {
        assert!(
            matches!(err, DeviceError::Queue { .. }),
            "unexpected device error: {err}"
        );
        *failed = true;
    }
}

/// Reads what is there without blocking.
fn drain(stream: &mut UnixStream, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Target `vsock`: the device behind its public API, with a live host side.
pub fn run_device(input: &[u8]) -> DeviceOutcome {
    let mut r = Reader::new(input);
    let cfg = r.u8();
    let connect_port = r.u32();
    let tx_spec = QueueSpec::parse(&mut r);
    let rx_spec = QueueSpec::parse(&mut r);
    let mem = guest_memory();
    write_data(&mem, r.rest());
    let event_spec = QueueSpec::default();
    let queues = vec![
        rx_spec.install(&mem, RX_QUEUE),
        tx_spec.install(&mem, TX_QUEUE),
        event_spec.install(&mem, 2),
    ];

    let service = host_service();
    let path = uds_path();
    let _ = std::fs::remove_file(&path);
    let mut vsock = Vsock::new(GUEST_CID, &path).expect("vsock device");
    vsock.set_acked_features(vsock.avail_features());
    let interrupt = Arc::new(EventFdInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    ));
    vsock
        .activate(ActivateContext {
            mem: mem.clone(),
            queues,
            interrupt,
        })
        .expect("activation with three queues");
    let host_fd: RawFd = vsock.host_fds()[0];
    let mut failed = false;

    // A host-initiated connection: accepted, then its CONNECT line read.
    let mut client = None;
    if cfg & 1 != 0 {
        let mut stream = UnixStream::connect(&path).expect("connect to the device");
        stream
            .write_all(format!("CONNECT {connect_port}\n").as_bytes())
            .expect("CONNECT line");
        stream.set_nonblocking(true).expect("non-blocking");
        check(vsock.process_host_event(host_fd), &mut failed);
        check(vsock.process_host_event(host_fd), &mut failed);
        client = Some(stream);
    }
    if cfg & 2 != 0 {
        check(vsock.process_queue(RX_QUEUE), &mut failed);
    }
    check(vsock.process_queue(TX_QUEUE), &mut failed);

    // The host service accepts and answers what the guest connected.
    let mut accepted = Vec::new();
    let mut host_received = Vec::new();
    loop {
        match service.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(true).expect("non-blocking");
                let _ = stream.write_all(HOST_GREETING);
                drain(&mut stream, &mut host_received);
                accepted.push(stream);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if let Some(stream) = client.as_mut() {
        let _ = stream.write_all(HOST_GREETING);
    }
    check(vsock.process_host_event(host_fd), &mut failed);
    check(vsock.process_host_event(host_fd), &mut failed);
    check(vsock.process_queue(RX_QUEUE), &mut failed);
    check(vsock.process_queue(2), &mut failed);
    assert!(matches!(
        vsock.process_queue(3),
        Err(DeviceError::UnknownQueue(3))
    ));
    for stream in &mut accepted {
        drain(stream, &mut host_received);
    }

    let check = !may_write_rings(&[&tx_spec, &rx_spec]);
    let tx_used = used_entries(&mem, TX_QUEUE, &tx_spec, check);
    let rx_used = used_entries(&mem, RX_QUEUE, &rx_spec, check);
    if check {
        assert!(tx_used.iter().all(|&(_, len)| len == 0), "{tx_used:?}");
        for &(id, len) in &rx_used {
            assert!(
                (HEADER_SIZE as u32..=HEADER_SIZE as u32 + MAX_PAYLOAD).contains(&len),
                "RX used length {len} for head {id}"
            );
        }
    }
    let connections = vsock.muxer().connection_count();

    vsock.reset();
    assert_eq!(vsock.muxer().connection_count(), 0);
    assert!(!vsock.is_activated());
    drop(vsock);

    DeviceOutcome {
        tx_used,
        rx_used,
        host_accepted: accepted.len(),
        host_received,
        failed,
        connections,
        mem,
    }
}

/// What [`run_packet`] did with one chain, for the corpus tests.
#[derive(Debug)]
pub struct PacketOutcome {
    /// The TX parse.
    pub tx: Result<Packet, String>,
    /// The RX buffer's capacity and the used length `write` returned.
    pub rx: Result<(usize, u32), String>,
}

/// Target `vsock_packet`: the packet layer on its own.
pub fn run_packet(input: &[u8]) -> Vec<PacketOutcome> {
    let mut r = Reader::new(input);
    let reply_header = Header::from_bytes(&r.bytes::<HEADER_SIZE>());
    let reply_len = r.u32();
    let spec = QueueSpec::parse(&mut r);
    let mem = guest_memory();
    write_data(&mem, r.rest());
    let mut queue = spec.install(&mem, 0);

    let mut outcome = Vec::new();
    let Ok(chains) = queue.iter(&mem) else {
        return outcome;
    };
    for chain in chains {
        let mut tx_chain = chain.clone();
        let tx = match Packet::from_tx_chain(&mem, &mut tx_chain) {
            Ok(pkt) => {
                assert_eq!(pkt.data.len(), pkt.header.len as usize);
                assert!(pkt.header.len <= MAX_PAYLOAD);
                Ok(pkt)
            }
            Err(err) => {
                if let PacketError::Oversize { header, .. } = &err {
                    assert!(header.len > MAX_PAYLOAD, "{err}");
                }
                Err(err.to_string())
            }
        };

        let mut rx_chain = chain;
        let rx = match RxBuffer::new(&mem, &mut rx_chain) {
            Ok(buffer) => {
                let capacity = buffer.capacity();
                assert!(capacity <= MAX_PAYLOAD as usize);
                // Bounded so that a huge reply_len costs nothing.
                let len = (reply_len as usize).min(MAX_PAYLOAD as usize + 1);
                let packet = Packet {
                    header: reply_header,
                    data: vec![0xab; len],
                };
                match buffer.write(&packet) {
                    Ok(used) => {
                        assert_eq!(used as usize, HEADER_SIZE + len.min(capacity));
                        Ok((capacity, used))
                    }
                    Err(err) => Err(format!("write: {err}")),
                }
            }
            Err(err) => Err(err.to_string()),
        };
        outcome.push(PacketOutcome { tx, rx });
    }
    outcome
}
