//! The frontend against a hand-written vhost-user backend on a socketpair
//! (every message checked: features, memory table with its fds, vring setup
//! with the slot's eventfds, stop on reset, failures), and against the real
//! virtiofsd (handshake, activation, one FUSE_INIT round trip through guest
//! memory, death noticed through the pidfd).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::bus::BusDevice;
use crate::virtio::device::{DirectNotifiers, VirtioDevice, INTERRUPT_CONFIG_CHANGE};
use crate::virtio::interrupt::EventFdInterrupt;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::test_utils::{TestQueue, DATA_BASE, R, W};

// vhost-user request codes (vhost-user spec, "Front-end message types").
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const NEED_REPLY: u32 = 0x8;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const INDIRECT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
const PROTOCOL: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
/// What virtiofsd offers.
const BACKEND_FEATURES: u64 = VERSION_1 | INDIRECT | EVENT_IDX | PROTOCOL | LOG_ALL;

const MIB: u64 = 1 << 20;
/// Two RAM regions with a hole between them, both in one memfd.
const REGIONS: [(u64, u64, u64); 2] = [(0, MIB, 0), (2 * MIB, MIB, MIB)];
const QUEUE_NUM: u16 = 16;
/// Queue 0 (high priority) rings; queue 1 uses TestQueue's layout.
const HIPRIO_RINGS: (u64, u64, u64) = (0x5000, 0x6000, 0x7000);

/// One message the fake backend received.
struct Msg {
    request: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<File>,
}

impl Msg {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

fn recv_msg(sock: &UnixStream) -> Option<Msg> {
    let mut header = [0u8; 12];
    let mut fds: [RawFd; 8] = [-1; 8];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    }];
    // SAFETY: the iovec points at `header`, which outlives the call; the
    // kernel writes at most its length, and the fds it fills in are new and
    // owned by nobody else (taken over as Files below).
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut fds) }.ok()?;
    if n == 0 {
        return None;
    }
    assert_eq!(n, header.len(), "short vhost-user header");
    let fds = fds[..nfds]
        .iter()
        // SAFETY: each fd was just received and is owned by nobody else.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().unwrap());
    let mut body = vec![0u8; word(2) as usize];
    (&*sock).read_exact(&mut body).ok()?;
    Some(Msg {
        request: word(0),
        flags: word(1),
        body,
        fds,
    })
}

fn reply(sock: &UnixStream, request: u32, body: &[u8]) {
    let mut msg = Vec::new();
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, REPLY
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    (&*sock).write_all(&msg).unwrap();
}

/// A vhost-user backend that answers the requests the frontend sends,
/// records them, and hangs up on `hang_up_on` (without answering it).
struct FakeBackend {
    log: Arc<Mutex<Vec<Msg>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    fn start(features: u64, protocol: u64, hang_up_on: Option<u32>) -> (Self, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let log = log.clone();
            std::thread::spawn(move || {
                while let Some(msg) = recv_msg(&theirs) {
                    let (request, flags) = (msg.request, msg.flags);
                    let vring_index = (request == GET_VRING_BASE).then(|| msg.u32_at(0));
                    log.lock().unwrap().push(msg);
                    if hang_up_on == Some(request) {
                        return;
                    }
                    match request {
                        GET_FEATURES => reply(&theirs, request, &features.to_le_bytes()),
                        GET_PROTOCOL_FEATURES => reply(&theirs, request, &protocol.to_le_bytes()),
                        GET_VRING_BASE => {
                            let mut state = vring_index.unwrap().to_le_bytes().to_vec();
                            state.extend_from_slice(&0u32.to_le_bytes());
                            reply(&theirs, request, &state);
                        }
                        _ if flags & NEED_REPLY != 0 => {
                            reply(&theirs, request, &0u64.to_le_bytes())
                        }
                        _ => {}
                    }
                }
            })
        };
        (
            FakeBackend {
                log,
                thread: Some(thread),
            },
            ours,
        )
    }

    fn requests(&self) -> Vec<u32> {
        self.log.lock().unwrap().iter().map(|m| m.request).collect()
    }

    fn with_log<T>(&self, f: impl FnOnce(&[Msg]) -> T) -> T {
        f(&self.log.lock().unwrap())
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Guest memory as the VMM makes it: regions of one memfd, mapped shared.
fn shared_memory() -> (GuestMemoryMmap, File) {
    let name = c"fs-test-guest-ram";
    // SAFETY: `name` is NUL-terminated; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: memfd_create just returned this fd; nobody else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(2 * MIB).unwrap();
    let ranges: Vec<_> = REGIONS
        .iter()
        .map(|&(gpa, size, offset)| {
            let f = FileOffset::new(file.try_clone().unwrap(), offset);
            (GuestAddress(gpa), size as usize, Some(f))
        })
        .collect();
    (
        GuestMemoryMmap::from_ranges_with_files(ranges).unwrap(),
        file,
    )
}

/// A slot as vmm-core wires one for a direct-notification device.
struct Slot {
    transport: MmioTransport,
    device: Arc<Mutex<Fs>>,
    kicks: Vec<EventFd>,
    irqfd: EventFd,
    interrupt: Arc<EventFdInterrupt>,
}

fn slot(fs: Fs, mem: &GuestMemoryMmap) -> Slot {
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let device = Arc::new(Mutex::new(fs));
    assert!(device.lock().unwrap().wants_direct_notifiers());
    device
        .lock()
        .unwrap()
        .set_direct_notifiers(DirectNotifiers {
            kicks: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            call: irqfd.try_clone().unwrap(),
        });
    let interrupt = Arc::new(EventFdInterrupt::for_direct_backend(
        irqfd.try_clone().unwrap(),
    ));
    let dyn_device: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    let transport = MmioTransport::new(dyn_device, mem.clone(), interrupt.clone());
    Slot {
        transport,
        device,
        kicks,
        irqfd,
        interrupt,
    }
}

fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn device_features(t: &mut MmioTransport) -> u64 {
    write_reg(t, 0x14, 0);
    let low = read_reg(t, 0x10);
    write_reg(t, 0x14, 1);
    u64::from(low) | u64::from(read_reg(t, 0x10)) << 32
}

/// The driver side of initialisation, up to DRIVER_OK, with queue 1 at
/// `request_rings` (descriptor table, available ring, used ring); returns
/// Status.
fn drive(t: &mut MmioTransport, features: u64, request_rings: (u64, u64, u64)) -> u32 {
    write_reg(t, 0x70, 1);
    write_reg(t, 0x70, 1 | 2);
    write_reg(t, 0x24, 0);
    write_reg(t, 0x20, features as u32);
    write_reg(t, 0x24, 1);
    write_reg(t, 0x20, (features >> 32) as u32);
    write_reg(t, 0x70, 1 | 2 | 8);
    for (queue, (d, a, u)) in [(0u32, HIPRIO_RINGS), (1, request_rings)] {
        write_reg(t, 0x30, queue);
        write_reg(t, 0x38, u32::from(QUEUE_NUM));
        for (reg, addr) in [(0x80, d), (0x90, a), (0xa0, u)] {
            write_reg(t, reg, addr as u32);
            write_reg(t, reg + 4, (addr >> 32) as u32);
        }
        write_reg(t, 0x44, 1);
    }
    write_reg(t, 0x70, 1 | 2 | 8 | 4);
    read_reg(t, 0x70)
}

fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

fn same_file(a: &File, b: &File) -> bool {
    let (a, b) = (a.metadata().unwrap(), b.metadata().unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[test]
fn handshake_offers_version_1_and_the_backends_ring_features() {
    let protocol = (VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG)
        .bits();
    let (mut backend, stream) = FakeBackend::start(BACKEND_FEATURES, protocol, None);
    let fs = Fs::new("myfs", stream).unwrap();
    assert_eq!(fs.avail_features(), VERSION_1 | INDIRECT | EVENT_IDX);
    assert_eq!(
        fs.connection().protocol_features(),
        VhostUserProtocolFeatures::REPLY_ACK
    );
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let mut config = [0u8; CONFIG_SPACE_SIZE];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..5], b"myfs\0");
    assert_eq!(&config[TAG_LEN..], &1u32.to_le_bytes());
    drop(fs);
    backend.join();
    assert_eq!(
        backend.requests(),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES
        ]
    );
    backend.with_log(|log| {
        assert_eq!(
            log[3].u64_at(0),
            VhostUserProtocolFeatures::REPLY_ACK.bits()
        )
    });
}

#[test]
fn a_backend_without_version_1_or_a_bad_tag_is_refused() {
    let (_backend, stream) = FakeBackend::start(INDIRECT | EVENT_IDX, 0, None);
    assert!(matches!(
        Fs::new("t", stream),
        Err(FsError::NoVersion1(f)) if f == INDIRECT | EVENT_IDX
    ));
    let (_backend, stream) = FakeBackend::start(BACKEND_FEATURES, 0, None);
    assert!(matches!(
        Fs::new(&"x".repeat(TAG_LEN + 1), stream),
        Err(FsError::Tag(TagError::TooLong { .. }))
    ));
}

#[test]
fn driver_ok_hands_the_backend_memory_rings_and_the_slots_eventfds() {
    let protocol = VhostUserProtocolFeatures::REPLY_ACK.bits();
    let (mut backend, stream) = FakeBackend::start(BACKEND_FEATURES, protocol, None);
    let (mem, memfd) = shared_memory();
    let request_queue = TestQueue::new(&mem, QUEUE_NUM);
    let mut s = slot(Fs::new("share", stream).unwrap(), &mem);
    assert_eq!(
        device_features(&mut s.transport),
        VERSION_1 | INDIRECT | EVENT_IDX
    );
    let status = drive(
        &mut s.transport,
        VERSION_1 | EVENT_IDX,
        request_queue.addresses(),
    );
    assert_eq!(status, 0xf, "DRIVER_OK without NEEDS_RESET");
    assert!(s.device.lock().unwrap().is_activated());

    let per_queue = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
        SET_VRING_ENABLE,
    ];
    let mut expected = vec![
        SET_OWNER,
        GET_FEATURES,
        GET_PROTOCOL_FEATURES,
        SET_PROTOCOL_FEATURES,
        SET_FEATURES,
        SET_MEM_TABLE,
    ];
    expected.extend(per_queue);
    expected.extend(per_queue);
    assert_eq!(backend.requests(), expected);

    backend.with_log(|log| {
        // The driver's features plus the vhost-user protocol bit.
        assert_eq!(log[4].u64_at(0), VERSION_1 | EVENT_IDX | PROTOCOL);

        // One region per RAM range, each with the memfd and its offset.
        let table = &log[5];
        assert_eq!(table.u32_at(0), 2, "two regions");
        assert_eq!(table.fds.len(), 2, "one fd per region");
        for (i, (&(gpa, size, offset), region)) in REGIONS.iter().zip(mem.iter()).enumerate() {
            let at = 8 + i * 32;
            assert_eq!(table.u64_at(at), gpa);
            assert_eq!(table.u64_at(at + 8), size);
            assert_eq!(table.u64_at(at + 16), region.as_ptr() as u64);
            assert_eq!(table.u64_at(at + 24), offset);
            assert!(
                same_file(&table.fds[i], &memfd),
                "region {i} fd is the memfd"
            );
        }

        let rings = [HIPRIO_RINGS, request_queue.addresses()];
        for (queue, (desc, avail, used)) in rings.into_iter().enumerate() {
            let m = &log[6 + queue * per_queue.len()..];
            let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
            assert_eq!((m[0].u32_at(0), m[0].u32_at(4)), (queue as u32, 16), "NUM");
            assert_eq!(m[1].u32_at(0), queue as u32);
            assert_eq!(m[1].u64_at(8), host(desc), "descriptor table");
            assert_eq!(m[1].u64_at(16), host(used), "used ring");
            assert_eq!(m[1].u64_at(24), host(avail), "available ring");
            assert_eq!((m[2].u32_at(0), m[2].u32_at(4)), (queue as u32, 0), "BASE");
            assert_eq!(m[3].u64_at(0), queue as u64, "CALL carries an fd");
            assert_eq!(m[4].u64_at(0), queue as u64, "KICK carries an fd");
            assert_eq!(
                (m[5].u32_at(0), m[5].u32_at(4)),
                (queue as u32, 1),
                "ENABLE"
            );

            // The call fd is the slot's irqfd, the kick fd the queue's
            // notification eventfd: a write on one end reads on the other.
            (&m[3].fds[0]).write_all(&1u64.to_le_bytes()).unwrap();
            assert_eq!(s.irqfd.read().unwrap(), 1);
            (&m[4].fds[0]).write_all(&1u64.to_le_bytes()).unwrap();
            assert_eq!(s.kicks[queue].read().unwrap(), 1);
        }
    });
    // The backend raises used-ring interrupts itself: the status register
    // must report them for the driver to look at the rings.
    assert_eq!(read_reg(&mut s.transport, 0x60) & 1, 1);

    // Reset: every ring is stopped with GET_VRING_BASE.
    write_reg(&mut s.transport, 0x70, 0);
    assert_eq!(read_reg(&mut s.transport, 0x70), 0);
    assert!(!s.device.lock().unwrap().is_activated());
    let requests = backend.requests();
    assert_eq!(&requests[requests.len() - 2..], [GET_VRING_BASE; 2]);
    backend.with_log(|log| {
        let n = log.len();
        assert_eq!((log[n - 2].u32_at(0), log[n - 1].u32_at(0)), (0, 1));
    });

    // And the device can be driven again.
    let status = drive(&mut s.transport, VERSION_1, request_queue.addresses());
    assert_eq!(status, 0xf);
    drop(s);
    backend.join();
}

#[test]
fn a_backend_that_hangs_up_during_setup_leaves_the_device_needing_reset() {
    let protocol = VhostUserProtocolFeatures::REPLY_ACK.bits();
    let (mut backend, stream) = FakeBackend::start(BACKEND_FEATURES, protocol, Some(SET_MEM_TABLE));
    let (mem, _memfd) = shared_memory();
    let request_queue = TestQueue::new(&mem, QUEUE_NUM);
    let mut s = slot(Fs::new("share", stream).unwrap(), &mem);
    let status = drive(&mut s.transport, VERSION_1, request_queue.addresses());
    backend.join();
    assert_ne!(status & 0x40, 0, "DEVICE_NEEDS_RESET: {status:#x}");
    assert_ne!(s.interrupt.status() & INTERRUPT_CONFIG_CHANGE, 0);
    assert_eq!(s.irqfd.read().unwrap(), 1, "config-change interrupt raised");
    let failure = s.device.lock().unwrap().failure().map(str::to_string);
    assert!(
        failure
            .as_deref()
            .is_some_and(|f| f.contains("SET_MEM_TABLE")),
        "{failure:?}"
    );
}

#[test]
fn a_backend_that_dies_while_running_puts_the_device_into_needs_reset() {
    // A backend without VHOST_USER_F_PROTOCOL_FEATURES (and so without
    // REPLY_ACK: requests are not acknowledged).
    let (mut backend, stream) = FakeBackend::start(VERSION_1 | EVENT_IDX, 0, None);
    let (mem, _memfd) = shared_memory();
    let request_queue = TestQueue::new(&mem, QUEUE_NUM);
    let mut s = slot(Fs::new("share", stream).unwrap(), &mem);
    assert_eq!(
        drive(&mut s.transport, VERSION_1, request_queue.addresses()),
        0xf
    );
    // What the VMM's event thread does when virtiofsd's pidfd fires.
    s.device
        .lock()
        .unwrap()
        .backend_failed("virtiofsd exited with signal 9");
    s.transport.queue_notifier().notify(0);
    let status = read_reg(&mut s.transport, 0x70);
    assert_eq!(status, 0xf | 0x40, "DEVICE_NEEDS_RESET");
    assert_eq!(s.irqfd.read().unwrap(), 1, "config-change interrupt raised");
    assert_ne!(s.interrupt.status() & INTERRUPT_CONFIG_CHANGE, 0);

    // A reset does not revive it: activation fails again.
    write_reg(&mut s.transport, 0x70, 0);
    let status = drive(&mut s.transport, VERSION_1, request_queue.addresses());
    assert_ne!(status & 0x40, 0, "{status:#x}");
    drop(s);
    backend.join();
    // Without the protocol-features bit the frontend never asks for
    // protocol features and rings run without SET_VRING_ENABLE; once the
    // backend failed, neither the reset nor the new activation sends it
    // anything.
    let per_queue = [
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        SET_VRING_CALL,
        SET_VRING_KICK,
    ];
    let mut expected = vec![SET_OWNER, GET_FEATURES, SET_FEATURES, SET_MEM_TABLE];
    expected.extend(per_queue);
    expected.extend(per_queue);
    assert_eq!(backend.requests(), expected);
}

#[test]
fn a_notification_through_the_transport_is_forwarded_to_the_backend() {
    let (_backend, stream) = FakeBackend::start(BACKEND_FEATURES, 0, None);
    let (mem, _memfd) = shared_memory();
    let request_queue = TestQueue::new(&mem, QUEUE_NUM);
    let mut s = slot(Fs::new("share", stream).unwrap(), &mem);
    assert_eq!(
        drive(&mut s.transport, VERSION_1, request_queue.addresses()),
        0xf
    );
    write_reg(&mut s.transport, 0x50, 1);
    assert_eq!(s.kicks[1].read().unwrap(), 1);
    write_reg(&mut s.transport, 0x50, 7);
    assert_eq!(
        read_reg(&mut s.transport, 0x70),
        0xf,
        "unknown queue ignored"
    );
}

/// FUSE_INIT (opcode 26) request header and body, protocol 7.38.
fn fuse_init_request(unique: u64) -> Vec<u8> {
    let mut req = Vec::new();
    let len: u32 = 40 + 64;
    req.extend_from_slice(&len.to_le_bytes());
    req.extend_from_slice(&26u32.to_le_bytes());
    req.extend_from_slice(&unique.to_le_bytes());
    req.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    for word in [7u32, 38, 0x20000, 0, 0] {
        // major, minor, max_readahead, flags, flags2
        req.extend_from_slice(&word.to_le_bytes());
    }
    req.extend_from_slice(&[0u8; 44]);
    assert_eq!(req.len(), len as usize);
    req
}

#[test]
fn the_real_virtiofsd_serves_fuse_init_from_guest_memory_and_its_death_is_seen() {
    let binary = find_virtiofsd().unwrap_or_else(|e| panic!("{e}"));
    let share = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/fs-test-share").unwrap();
    let (mut daemon, stream) = Virtiofsd::start(&binary, share.as_path()).unwrap();
    let fs = Fs::new("real", stream).unwrap();
    assert_ne!(fs.avail_features() & VERSION_1, 0);

    let (mem, _memfd) = shared_memory();
    let mut request_queue = TestQueue::new(&mem, QUEUE_NUM);
    let mut s = slot(fs, &mem);
    let features = device_features(&mut s.transport);
    let status = drive(&mut s.transport, features, request_queue.addresses());
    assert_eq!(status, 0xf, "virtiofsd accepted the setup");

    let unique = 0x1234_5678;
    mem.write_slice(&fuse_init_request(unique), GuestAddress(DATA_BASE))
        .unwrap();
    let reply_at = DATA_BASE + 0x1000;
    request_queue.add_chain(&[(DATA_BASE, 104, R), (reply_at, 4096, W)]);
    s.kicks[1].write(1).unwrap();
    assert!(
        wait_readable(s.irqfd.as_raw_fd(), 10_000),
        "virtiofsd signalled the irqfd"
    );
    assert_eq!(request_queue.used_idx(), 1);
    let (head, written) = request_queue.used_elem(0);
    assert_eq!(head, 0);
    let out_len: u32 = mem.read_obj(GuestAddress(reply_at)).unwrap();
    let error: i32 = mem.read_obj(GuestAddress(reply_at + 4)).unwrap();
    let out_unique: u64 = mem.read_obj(GuestAddress(reply_at + 8)).unwrap();
    let major: u32 = mem.read_obj(GuestAddress(reply_at + 16)).unwrap();
    assert_eq!((error, out_unique, major), (0, unique, 7));
    assert_eq!(out_len, written, "reply length is what was written");

    // Death: the pidfd becomes readable and the exit status is collected.
    let pid = daemon.pid().unwrap();
    // SAFETY: plain kill(2) of our own child, which is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(wait_readable(daemon.pidfd(), 10_000), "pidfd readable");
    let status = daemon.try_wait().unwrap().expect("exited");
    assert!(!status.success());
    drop(s);
}

#[test]
fn stopping_virtiofsd_kills_it_and_removes_its_socket_directory() {
    let binary = find_virtiofsd().unwrap_or_else(|e| panic!("{e}"));
    let share = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/fs-test-share").unwrap();
    let (mut daemon, stream) = Virtiofsd::start(&binary, share.as_path()).unwrap();
    let socket_dir = stream
        .peer_addr()
        .unwrap()
        .as_pathname()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(socket_dir.is_dir());
    let pid = daemon.pid().unwrap();
    assert!(daemon.stop().is_some(), "reaped");
    assert!(!socket_dir.exists(), "{} removed", socket_dir.display());
    // SAFETY: signal 0 only checks whether the pid exists.
    assert_ne!(unsafe { libc::kill(pid as libc::pid_t, 0) }, 0, "gone");
    assert!(daemon.stop().is_none(), "idempotent");
}

#[test]
fn virtiofsd_that_cannot_serve_the_directory_is_reported() {
    let binary = find_virtiofsd().unwrap_or_else(|e| panic!("{e}"));
    let err = Virtiofsd::start(&binary, std::path::Path::new("/nonexistent/share")).unwrap_err();
    assert!(matches!(err, VirtiofsdError::EarlyExit { .. }), "{err}");
}
