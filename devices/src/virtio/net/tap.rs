//! A Linux tap interface opened for a virtio-net device.
//!
//! [`Tap::open`] opens `/dev/net/tun` non-blocking and attaches it to the
//! named tap interface (creating it if it does not exist) with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every frame read or written carries
//! a 12-byte `virtio_net_hdr_v1` in front, which is exactly the header a
//! virtio 1.x driver puts in front of its frames, so it passes through
//! untouched. Offloads start disabled; [`Tap::set_offload`] enables the ones
//! the guest negotiated ([`offload_flags`]).
//!
//! A tap created by this process (rather than attached to a persistent one
//! made with `ip tuntap add`) disappears when the [`Tap`] is dropped.
//!
//! [`Tap::open_in_netns`] does the same inside another network namespace:
//! a short-lived thread enters it with `setns(2)` and opens the tap there
//! (a tun file belongs to the namespace of the thread that opened it), so
//! the namespace of the calling thread never changes.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::VNET_HDR_LEN;

/// The tun/tap clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name, without the terminating NUL (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The flags every tap of this crate is opened with.
const TAP_FLAGS: c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// Most iovecs one `writev(2)` accepts (`UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains a NUL byte.
    #[error("invalid tap name {name:?}: it must be 1 to {MAX_NAME_LEN} bytes without NUL")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// `/dev/net/tun` cannot be opened (absent: no tun module; EPERM: no
    /// CAP_NET_ADMIN).
    #[error("tap {name}: cannot open {TUN_DEVICE}: {source}")]
    OpenTun {
        /// The tap being opened.
        name: String,
        /// The open(2) error.
        #[source]
        source: io::Error,
    },
    /// An ioctl on the tun file failed.
    #[error("tap {name}: ioctl {ioctl} failed: {source}")]
    Ioctl {
        /// The tap.
        name: String,
        /// Which ioctl (TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD...).
        ioctl: &'static str,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// The network namespace file cannot be opened.
    #[error("tap {name}: cannot open network namespace {}: {source}", path.display())]
    OpenNetns {
        /// The tap being opened.
        name: String,
        /// The namespace path (e.g. `/run/netns/NAME`).
        path: PathBuf,
        /// The open(2) error.
        #[source]
        source: io::Error,
    },
    /// Entering the network namespace failed (not a network namespace, or
    /// no CAP_SYS_ADMIN).
    #[error("tap {name}: cannot enter network namespace {}: {source}", path.display())]
    EnterNetns {
        /// The tap being opened.
        name: String,
        /// The namespace path.
        path: PathBuf,
        /// The setns(2) error.
        #[source]
        source: io::Error,
    },
    /// The helper thread that enters the namespace could not be started or
    /// died.
    #[error("tap {name}: network namespace helper thread failed: {reason}")]
    NetnsThread {
        /// The tap being opened.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// An open tap interface: a non-blocking tun file attached to it.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it.
///
/// The kernel's `struct ifreq` is `char ifr_name[IFNAMSIZ]` followed by a
/// 24-byte union (its largest members are `struct sockaddr`, 16 bytes, and
/// `struct ifmap`, 24 bytes on 64-bit hosts, 8-byte aligned); the tun ioctls
/// only use the `short ifr_flags` member at the start of the union. Declaring
/// it as the name, the flags and padding up to the same 40 bytes (with the
/// union's 8-byte alignment) gives the kernel exactly the layout it copies.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
    _align: [u64; 0],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: &str, flags: c_int) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            // The TUN flags all fit in the low 16 bits.
            flags: flags as libc::c_short,
            _pad: [0; 22],
            _align: [],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn name(&self) -> String {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

impl Tap {
    /// Opens (creating if needed) the tap interface `name` in the caller's
    /// network namespace, with a 12-byte virtio-net header on every frame
    /// and all offloads off.
    pub fn open(name: &str) -> Result<Self, TapError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;

        let mut req = IfReq::new(name, TAP_FLAGS);
        // SAFETY: TUNSETIFF reads and writes back one `struct ifreq`; `req`
        // has its layout (see `IfReq`) and lives across the call. The file
        // descriptor is owned by `file`.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::Ioctl {
                name: name.to_owned(),
                ioctl: "TUNSETIFF",
                source: io::Error::last_os_error(),
            });
        }
        let tap = Self {
            file,
            name: req.name(),
        };

        let hdr_len = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; it
        // points at `hdr_len`, which lives across the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        // A persistent tap keeps the offloads of its previous user.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// Like [`open`](Self::open), but inside the network namespace at
    /// `netns_path` (a file such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`); `None` opens it in the caller's namespace.
    ///
    /// A dedicated thread enters the namespace, opens the tap and exits: the
    /// calling thread's namespace never changes. The tap stays in that
    /// namespace; its file works from any thread.
    pub fn open_in_netns(name: &str, netns_path: Option<&Path>) -> Result<Self, TapError> {
        let Some(path) = netns_path else {
            return Self::open(name);
        };
        check_name(name)?;
        let netns = File::open(path).map_err(|source| TapError::OpenNetns {
            name: name.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let thread_name = name.to_owned();
        let thread_path = path.to_owned();
        let handle = std::thread::Builder::new()
            .name("tap-netns".into())
            .spawn(move || {
                // SAFETY: setns(2) only takes a file descriptor (owned by
                // `netns`, open across the call) and a namespace type; it
                // changes the namespace of this helper thread alone.
                let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                if ret < 0 {
                    return Err(TapError::EnterNetns {
                        name: thread_name,
                        path: thread_path,
                        source: io::Error::last_os_error(),
                    });
                }
                Self::open(&thread_name)
            })
            .map_err(|err| TapError::NetnsThread {
                name: name.to_owned(),
                reason: err.to_string(),
            })?;
        handle.join().map_err(|_| TapError::NetnsThread {
            name: name.to_owned(),
            reason: "the thread panicked".into(),
        })?
    }

    /// The interface name the kernel reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the offloads the reader of this tap accepts (`TUN_F_*`, see
    /// [`offload_flags`]): which partially checksummed or GSO frames the
    /// kernel may hand to [`read`](Self::read). Frames written to the tap
    /// may always carry them.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed. The file descriptor is owned by `self.file`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The `IFF_*` flags of the attachment (TUNGETIFF), e.g. to check that
    /// `IFF_VNET_HDR` is set.
    pub fn flags(&self) -> Result<c_int, TapError> {
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes one `struct ifreq` through the pointer;
        // `req` has that layout (see `IfReq`) and lives across the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        if ret < 0 {
            return Err(self.ioctl_error("TUNGETIFF"));
        }
        // The kernel reports the flags as an unsigned short.
        Ok(c_int::from(req.flags as u16))
    }

    /// Reads one frame (header included) into `buf`. A frame longer than
    /// `buf` is truncated by the kernel. Returns `WouldBlock` when no frame
    /// is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`, a live
        // exclusive borrow. The file descriptor is owned by `self.file`.
        let ret = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(ret).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one frame (header included) gathered from `slices` with a
    /// single `writev(2)`; the tap takes a frame whole or not at all.
    pub fn write_slices<B: BitmapSlice>(
        &self,
        slices: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        if slices.len() > MAX_IOVECS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} buffers, at most {MAX_IOVECS} fit one writev",
                    slices.len()
                ),
            ));
        }
        // The guards keep the memory behind each pointer mapped until the
        // write returns.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: every iovec describes `len` readable bytes kept mapped by
        // its guard; writev(2) only reads them. The count is at most
        // MAX_IOVECS, so it fits in c_int. The file descriptor is owned by
        // `self.file`.
        let ret = unsafe {
            libc::writev(
                self.file.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as c_int,
            )
        };
        usize::try_from(ret).map_err(|_| io::Error::last_os_error())
    }

    fn ioctl_error(&self, ioctl: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            ioctl,
            source: io::Error::last_os_error(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(TapError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The tap offloads (`TUN_F_*`) matching the virtio-net features the guest
/// accepted: what the guest can receive.
///
/// - `VIRTIO_NET_F_GUEST_CSUM` → `TUN_F_CSUM` (partially checksummed
///   frames),
/// - `VIRTIO_NET_F_GUEST_TSO4`/`TSO6` → `TUN_F_TSO4`/`TSO6`,
/// - `VIRTIO_NET_F_GUEST_UFO` → `TUN_F_UFO`.
///
/// The segmentation offloads need checksum offload (virtio 1.x, 5.1.3.1;
/// the kernel refuses them without `TUN_F_CSUM`), so without GUEST_CSUM the
/// result is 0. Host-side features (CSUM, HOST_TSO*) need no flag: a tap
/// with `IFF_VNET_HDR` always accepts such frames from its reader.
pub fn offload_flags(acked_features: u64) -> libc::c_uint {
    let has = |bit: u32| acked_features & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4};

    use super::*;
    use crate::virtio::net::test_utils::{
        ifindex, open_test_tap, pattern, test_frame, unique_tap_name, TapPeer, PEER_HDR_LEN,
    };

    const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
    const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
    const GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
    const GUEST_UFO: u64 = 1 << VIRTIO_NET_F_GUEST_UFO;

    /// A network namespace that lives as long as a parked thread, named by
    /// that thread's `/proc/PID/task/TID/ns/net`.
    struct ThreadNetns {
        path: PathBuf,
        stop: Option<mpsc::Sender<()>>,
        thread: Option<JoinHandle<()>>,
    }

    impl ThreadNetns {
        fn new() -> Self {
            let (path_tx, path_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                // SAFETY: unshare(2) takes no pointers; it gives this thread
                // alone a new network namespace.
                let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                if ret < 0 {
                    path_tx.send(Err(io::Error::last_os_error())).unwrap();
                    return;
                }
                // SAFETY: gettid(2) has no arguments.
                let tid = unsafe { libc::gettid() };
                let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
                path_tx.send(Ok(PathBuf::from(path))).unwrap();
                let _ = stop_rx.recv();
            });
            let path = path_rx
                .recv()
                .unwrap()
                .unwrap_or_else(|err| panic!("unshare(CLONE_NEWNET) needs root: {err}"));
            Self {
                path,
                stop: Some(stop_tx),
                thread: Some(thread),
            }
        }
    }

    impl Drop for ThreadNetns {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Runs `f` on a thread inside the namespace at `path`.
    fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = File::open(path).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns(2) takes an fd owned by `netns` and a type; it
            // moves this helper thread alone.
            let ret = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn own_netns() -> PathBuf {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    }

    #[test]
    fn opens_a_tap_with_vnet_headers_non_blocking() {
        let tap = open_test_tap();
        assert!(tap.name().starts_with("vmt"));
        assert_ne!(ifindex(tap.name()), 0, "the interface exists");
        let flags = tap.flags().unwrap();
        assert_eq!(
            flags & (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR),
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
            "{flags:#x}"
        );
        let mut buf = [0u8; 64];
        let err = tap.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        // The interface goes away with the file.
        let name = tap.name().to_owned();
        drop(tap);
        assert_eq!(ifindex(&name), 0);
    }

    #[test]
    fn a_second_open_of_a_tap_in_use_fails_with_context() {
        let tap = open_test_tap();
        let err = Tap::open(tap.name()).unwrap_err();
        assert!(
            matches!(err, TapError::Ioctl { ioctl: "TUNSETIFF", ref name, .. } if name == tap.name()),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(tap.name()) && message.contains("TUNSETIFF"),
            "{message}"
        );
    }

    #[test]
    fn invalid_names_are_rejected_before_any_syscall() {
        for name in ["", "sixteen-chars-xx", "a\0b"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName { .. })),
                "{name:?}"
            );
            assert!(matches!(
                Tap::open_in_netns(name, Some(Path::new("/nonexistent"))),
                Err(TapError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn offload_flags_follow_the_guest_features() {
        assert_eq!(offload_flags(0), 0);
        // Segmentation offloads need checksum offload.
        assert_eq!(offload_flags(GUEST_TSO4 | GUEST_TSO6 | GUEST_UFO), 0);
        // Host-side features do not concern the tap's reader.
        assert_eq!(
            offload_flags(1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4),
            0
        );
        assert_eq!(offload_flags(GUEST_CSUM), libc::TUN_F_CSUM);
        assert_eq!(
            offload_flags(GUEST_CSUM | GUEST_TSO4),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        assert_eq!(
            offload_flags(GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_UFO),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
        );
    }

    #[test]
    fn the_kernel_accepts_every_offload_set_the_device_can_ask_for() {
        let tap = open_test_tap();
        let guest = [GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_UFO];
        for mask in 0..16u64 {
            let features = (0..4)
                .filter(|bit| mask & (1 << bit) != 0)
                .fold(0, |acc, bit| acc | guest[bit]);
            let flags = offload_flags(features);
            tap.set_offload(flags)
                .unwrap_or_else(|err| panic!("features {features:#x} -> {flags:#x}: {err}"));
        }
        // What the kernel refuses is reported with the ioctl's name.
        let err = tap.set_offload(libc::TUN_F_TSO4).unwrap_err();
        assert!(
            matches!(
                err,
                TapError::Ioctl {
                    ioctl: "TUNSETOFFLOAD",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn frames_pass_both_ways_with_their_header() {
        let tap = open_test_tap();
        let peer = TapPeer::new(tap.name());

        // Host -> tap reader: a 12-byte header, then the frame.
        let frame = test_frame(&pattern(100, 1));
        peer.send([0; PEER_HDR_LEN], &frame);
        assert!(crate::virtio::net::test_utils::wait_readable(
            tap.as_raw_fd(),
            Duration::from_secs(5)
        ));
        let mut buf = vec![0u8; 2048];
        let n = tap.read(&mut buf).unwrap();
        assert_eq!(n, VNET_HDR_LEN + frame.len());
        assert_eq!(&buf[VNET_HDR_LEN..n], &frame[..]);

        // Tap writer -> host, gathered from two slices.
        let frame = test_frame(&pattern(300, 2));
        let mut data = vec![0u8; VNET_HDR_LEN];
        data.extend_from_slice(&frame);
        let (a, b) = data.split_at_mut(20);
        // SAFETY: the slices point into `data`, which outlives them.
        let slices = unsafe {
            [
                VolatileSlice::new(a.as_mut_ptr(), a.len()),
                VolatileSlice::new(b.as_mut_ptr(), b.len()),
            ]
        };
        assert_eq!(tap.write_slices(&slices).unwrap(), data.len());
        let (hdr, got) = peer
            .recv(Duration::from_secs(5))
            .expect("frame on the interface");
        assert_eq!(hdr, [0; PEER_HDR_LEN]);
        assert_eq!(got, frame);
    }

    #[test]
    fn open_in_netns_creates_the_tap_there_without_moving_the_caller() {
        let netns = ThreadNetns::new();
        let before = own_netns();
        let name = unique_tap_name();
        let tap = Tap::open_in_netns(&name, Some(&netns.path)).unwrap();
        assert_eq!(tap.name(), name);
        assert_eq!(own_netns(), before, "the calling thread stayed put");
        assert_eq!(ifindex(&name), 0, "not in the caller's namespace");
        let lookup = name.clone();
        assert_ne!(in_netns(&netns.path, move || ifindex(&lookup)), 0);
        assert_ne!(tap.flags().unwrap() & libc::IFF_VNET_HDR, 0);

        // None means the caller's namespace.
        let tap = Tap::open_in_netns(&unique_tap_name(), None).unwrap();
        assert_ne!(ifindex(tap.name()), 0);
    }

    #[test]
    fn open_in_netns_reports_bad_namespaces() {
        let name = unique_tap_name();
        let err = Tap::open_in_netns(&name, Some(Path::new("/nonexistent/netns"))).unwrap_err();
        assert!(matches!(err, TapError::OpenNetns { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
        // A namespace of another type.
        let err = Tap::open_in_netns(&name, Some(Path::new("/proc/self/ns/uts"))).unwrap_err();
        assert!(matches!(err, TapError::EnterNetns { .. }), "{err}");
        assert_eq!(ifindex(&name), 0);
    }

    /// Removes a named network namespace (`ip netns`) on drop.
    struct NamedNetns(String);

    impl Drop for NamedNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    #[test]
    fn open_in_netns_works_with_ip_netns() {
        let ns_name = format!("vmtns{}", std::process::id());
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &ns_name])
            .status()
            .unwrap_or_else(|err| panic!("this test needs iproute2's `ip` as root: {err}"));
        assert!(
            status.success(),
            "ip netns add {ns_name} failed (needs root)"
        );
        let netns = NamedNetns(ns_name);
        let path = PathBuf::from(format!("/run/netns/{}", netns.0));

        let name = unique_tap_name();
        let tap = Tap::open_in_netns(&name, Some(&path)).unwrap();
        assert_eq!(ifindex(&name), 0);
        let lookup = name.clone();
        assert_ne!(in_netns(&path, move || ifindex(&lookup)), 0);
        drop(tap);
        assert_eq!(
            in_netns(&path, move || ifindex(&name)),
            0,
            "removed with its file"
        );
        drop(netns);
        assert!(!path.exists(), "namespace cleaned up");
    }
}
