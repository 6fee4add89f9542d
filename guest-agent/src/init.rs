//! PID 1 duties inside the sandbox VM: early mounts, cgroup2 controllers,
//! hostname, loopback, and powering off.

use std::path::Path;

use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: &'static str,
        target: &'static str,
        source: nix::Error,
    },
    #[error("setting the hostname: {0}")]
    Hostname(nix::Error),
    #[error("bringing up lo: {0}")]
    Loopback(std::io::Error),
}

struct EarlyMount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        fstype: "proc",
        target: "/proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    EarlyMount {
        fstype: "sysfs",
        target: "/sys",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
    EarlyMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    EarlyMount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    EarlyMount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    EarlyMount {
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    EarlyMount {
        fstype: "tmpfs",
        target: "/tmp",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    EarlyMount {
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
    },
];

/// Mounts the early filesystems (an already mounted target is fine).
pub fn mount_early() -> Result<(), InitError> {
    for m in MOUNTS {
        let _ = std::fs::create_dir_all(m.target);
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => tracing::debug!(target = m.target, "mounted {}", m.fstype),
            Err(nix::errno::Errno::EBUSY) => tracing::debug!(target = m.target, "already mounted"),
            Err(source) => {
                return Err(InitError::Mount {
                    what: m.fstype,
                    target: m.target,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Enables every available controller for the children of the root cgroup.
pub fn enable_controllers(root: &Path) {
    let available = match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("reading cgroup.controllers: {e}");
            return;
        }
    };
    for c in available.split_whitespace() {
        if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            tracing::warn!(controller = c, "enabling cgroup controller: {e}");
        }
    }
}

/// The `agent.hostname=` value of a kernel command line.
pub fn hostname_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("agent.hostname="))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

pub fn set_hostname(name: &str) -> Result<(), InitError> {
    nix::unistd::sethostname(name).map_err(InitError::Hostname)
}

/// Sets IFF_UP on `lo` with SIOCGIFFLAGS/SIOCSIFFLAGS.
pub fn loopback_up() -> Result<(), InitError> {
    // SAFETY: a plain socket(2) call; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(InitError::Loopback(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr, which lives for the call.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(InitError::Loopback(std::io::Error::last_os_error()));
    }
    // SAFETY: after SIOCGIFFLAGS the union holds ifru_flags.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads ifr, which lives for the call.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(InitError::Loopback(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Everything PID 1 does before serving. Failures are logged, not fatal:
/// a half-set-up guest can still report what went wrong over the API.
pub fn setup(hostname: Option<&str>) {
    if let Err(e) = mount_early() {
        tracing::error!("{e}");
    }
    enable_controllers(Path::new("/sys/fs/cgroup"));
    let name = hostname.map(str::to_string).or_else(|| {
        std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| hostname_from_cmdline(&c))
    });
    if let Some(n) = name {
        if let Err(e) = set_hostname(&n) {
            tracing::error!("{e}");
        }
    }
    if let Err(e) = loopback_up() {
        tracing::error!("{e}");
    }
}

/// Flushes filesystems and powers the VM off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    tracing::info!("powering off");
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!("reboot(RB_POWER_OFF) failed: {err:?}");
    // PID 1 must not exit (the kernel would panic); idle instead.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_cmdline() {
        assert_eq!(
            hostname_from_cmdline("console=ttyS0 agent.hostname=sb-1 quiet").as_deref(),
            Some("sb-1")
        );
        assert_eq!(hostname_from_cmdline("console=ttyS0"), None);
        assert_eq!(hostname_from_cmdline("agent.hostname="), None);
    }
}
