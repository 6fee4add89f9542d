//! Test helpers for virtio-net: real taps with unique names, and the host
//! side of a tap (an AF_PACKET socket bound to it).
//!
//! A tap has two ends: the file the device reads and writes, and the host
//! interface. What the device writes arrives on the interface as received
//! traffic; what the host sends out of the interface is what the device
//! reads. [`TapPeer`] is that host side: an AF_PACKET socket with
//! `PACKET_VNET_HDR`, so that frames sent and received through it carry a
//! 10-byte `virtio_net_hdr` (no `num_buffers`), which lets tests send GSO
//! frames and see the offload metadata of what the device wrote.
//!
//! Tests need root (CAP_NET_ADMIN) and /dev/net/tun; without them they fail
//! with a message saying so. The frames never reach an IP stack: the tap has
//! no address, IPv6 is disabled on it, and test frames go to a locally
//! administered MAC address with an experimental EtherType or link-local
//! (169.254.0.0/16) IPv4 addresses.

// SAFETY comments are required on test unsafe blocks too (workspace lint).
#![allow(dead_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::tap::{Tap, TUN_DEVICE};

/// `PACKET_VNET_HDR` socket option (linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;
/// `sll_pkttype` of frames the host sent itself.
const PACKET_OUTGOING: u8 = 4;
/// Size of the header an AF_PACKET socket with `PACKET_VNET_HDR` uses.
pub const PEER_HDR_LEN: usize = 10;
/// IEEE 802 local experimental EtherType 1: never handled by any stack.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// Destination of test frames: a locally administered unicast address.
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The guest's MAC address in tests.
pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A fresh interface name, unique in this process and across concurrent
/// test processes (the pid is part of it); at most 15 bytes.
pub fn unique_tap_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "vmt{}n{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Opens a new tap, failing the test with an explanation when the host
/// does not allow it.
pub fn open_test_tap() -> Tap {
    let name = unique_tap_name();
    Tap::open(&name).unwrap_or_else(|err| {
        panic!(
            "virtio-net tests need {TUN_DEVICE} and CAP_NET_ADMIN (run them as root): \
             cannot open tap {name}: {err}"
        )
    })
}

/// An Ethernet frame to the peer MAC with the test EtherType and `payload`.
pub fn test_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A recognisable payload of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn check(ret: libc::c_int, what: &str) {
    if ret < 0 {
        panic!("{what} failed: {}", io::Error::last_os_error());
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap();
    // SAFETY: poll(2) reads and writes one pollfd, which lives across the
    // call.
    let ret = unsafe { libc::poll(&mut pollfd, 1, ms) };
    check(ret, "poll");
    ret > 0
}

/// The host side of a tap interface.
pub struct TapPeer {
    socket: OwnedFd,
    ifindex: libc::c_int,
}

impl TapPeer {
    /// Disables IPv6 on the interface `name` (no router solicitations or
    /// DAD probes in the tests' way), brings it up and binds an AF_PACKET
    /// socket with virtio-net headers to it.
    pub fn new(name: &str) -> Self {
        // The sysctl exists when the host has IPv6.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if std::path::Path::new(&sysctl).exists() {
            std::fs::write(&sysctl, "1").unwrap();
        }
        set_link_up(name);

        let c_name = CString::new(name).unwrap();
        // SAFETY: if_nametoindex(3) reads the NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {name}");
        let ifindex = libc::c_int::try_from(ifindex).unwrap();

        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        check(fd, "socket(AF_PACKET)");
        // SAFETY: `fd` was just created and is owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };

        let one: libc::c_int = 1;
        // SAFETY: setsockopt(2) reads `optlen` bytes from `&one`, an int
        // that lives across the call.
        let ret = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        check(ret, "setsockopt(PACKET_VNET_HDR)");

        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex;
        // SAFETY: bind(2) reads `addrlen` bytes of `addr`, a sockaddr_ll
        // that lives across the call.
        let ret = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind(AF_PACKET)");
        Self { socket, ifindex }
    }

    /// Sends `frame` out of the interface (towards the device) with the
    /// 10-byte virtio-net header `hdr`.
    pub fn send(&self, hdr: [u8; PEER_HDR_LEN], frame: &[u8]) {
        let mut data = hdr.to_vec();
        data.extend_from_slice(frame);
        // SAFETY: send(2) reads `data.len()` bytes of `data`.
        let ret =
            unsafe { libc::send(self.socket.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        assert_eq!(
            usize::try_from(ret).ok(),
            Some(data.len()),
            "AF_PACKET send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame the interface received (what the device wrote), with
    /// its 10-byte header; `None` after `timeout` without one.
    pub fn recv(&self, timeout: Duration) -> Option<([u8; PEER_HDR_LEN], Vec<u8>)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_readable(self.socket.as_raw_fd(), left) {
                return None;
            }
            let mut buf = vec![0u8; 70_000];
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom(2) writes at most `buf.len()` bytes into
            // `buf` and at most `addr_len` bytes into `addr`; both live
            // across the call.
            let ret = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut addr as *mut libc::sockaddr_ll).cast(),
                    &mut addr_len,
                )
            };
            let len = usize::try_from(ret).expect("AF_PACKET recvfrom");
            if addr.sll_pkttype == PACKET_OUTGOING || addr.sll_ifindex != self.ifindex {
                continue;
            }
            assert!(len >= PEER_HDR_LEN);
            let mut hdr = [0u8; PEER_HDR_LEN];
            hdr.copy_from_slice(&buf[..PEER_HDR_LEN]);
            return Some((hdr, buf[PEER_HDR_LEN..len].to_vec()));
        }
    }
}

/// Brings the interface `name` up (SIOCGIFFLAGS / SIOCSIFFLAGS).
pub fn set_link_up(name: &str) {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket(AF_INET)");
    // SAFETY: `fd` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data (a name and a union of plain data); all
    // zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of one
    // `struct ifreq`, which `req` is and which lives across the call.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(ret, "SIOCGIFFLAGS");
    // SAFETY: SIOCGIFFLAGS filled in `ifru_flags`, a c_short.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`, which `req` is.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(ret, "SIOCSIFFLAGS");
}

/// The index of interface `name` in the calling thread's network
/// namespace, or 0 when there is none.
pub fn ifindex(name: &str) -> u32 {
    let c_name = CString::new(name).unwrap();
    // SAFETY: if_nametoindex(3) reads the NUL-terminated name.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) }
}

/// Link-local addresses of the test IPv4 frames.
pub const GUEST_IP: [u8; 4] = [169, 254, 0, 2];
/// The peer's link-local address.
pub const PEER_IP: [u8; 4] = [169, 254, 0, 1];

fn ipv4_header(protocol: u8, payload_len: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let total = u16::try_from(20 + payload_len).unwrap();
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h
}

/// An Ethernet + IPv4 + UDP frame from the guest to the peer.
pub fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend(ipv4_header(17, 8 + payload.len(), GUEST_IP, PEER_IP));
    frame.extend_from_slice(&4000u16.to_be_bytes());
    frame.extend_from_slice(&4001u16.to_be_bytes());
    frame.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// An Ethernet + IPv4 + TCP frame from the peer to the guest.
pub fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend(ipv4_header(6, 20 + payload.len(), PEER_IP, GUEST_IP));
    frame.extend_from_slice(&5000u16.to_be_bytes());
    frame.extend_from_slice(&5001u16.to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes()); // seq
    frame.extend_from_slice(&0u32.to_be_bytes()); // ack
    frame.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A 10-byte virtio-net header: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset.
pub fn peer_hdr(
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) -> [u8; PEER_HDR_LEN] {
    let mut h = [0u8; PEER_HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}
