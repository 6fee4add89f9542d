//! Making the initramfs usable as a root that containers can pivot away from,
//! and signalling the VMM's boot timer. PID 1 only.
//!
//! pivot_root(2) refuses to move away from the initial ramfs ("rootfs"): the
//! kernel's root mount has no parent, and pivot_root needs the current root
//! to be an attached mount. Copying the initramfs into a tmpfs (what
//! switch_root does) would double its memory; instead PID 1 bind-mounts `/`
//! onto a directory of itself, moves that bind mount over `/` and chroots
//! into it. The new root is the same files (no copy), but it is a mount with
//! a parent, so every container's pivot_root works. The same fix is used by
//! other initramfs-based agents (the "no pivot" fallback, MS_MOVE + chroot,
//! would weaken every container instead).

use std::ffi::CString;
use std::io;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// statfs magic numbers of the filesystems an initramfs can be.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where `/` is bind-mounted before it is moved over `/`.
const STAGING_DIR: &str = "/.agent-root";

/// Errors of the root switch, with the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("making the initramfs root pivotable: {step}: {source}")]
pub struct GuestRootError {
    step: &'static str,
    source: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> GuestRootError {
    move |e| GuestRootError {
        step,
        source: io::Error::from(e),
    }
}

/// True when `/` is the kernel's initial ramfs (ramfs or tmpfs) and this
/// module has not already moved it (the staging directory is the marker: it
/// exists in the new root, which shows the same files).
pub fn root_is_initramfs() -> bool {
    let Ok(stat) = nix::sys::statfs::statfs("/") else {
        return false;
    };
    is_ram_filesystem(stat.filesystem_type().0) && !root_was_moved()
}

/// True when make_root_pivotable() moved this root (also in processes
/// started later, such as the libcontainer helper: the marker is a path).
pub fn root_was_moved() -> bool {
    Path::new(STAGING_DIR).exists()
}

fn is_ram_filesystem(magic: i64) -> bool {
    magic == RAMFS_MAGIC || magic == TMPFS_MAGIC
}

/// Moves PID 1 onto a bind mount of the initramfs so containers can
/// pivot_root. Returns false (and does nothing) when `/` is not the initramfs.
pub fn make_root_pivotable() -> Result<bool, GuestRootError> {
    if !root_is_initramfs() {
        return Ok(false);
    }
    std::fs::create_dir_all(STAGING_DIR).map_err(|source| GuestRootError {
        step: "creating the staging directory",
        source,
    })?;
    mount(
        Some("/"),
        STAGING_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("bind-mounting / onto the staging directory"))?;
    nix::unistd::chdir(STAGING_DIR).map_err(step("entering the staging directory"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("moving the bind mount over /"))?;
    nix::unistd::chroot(".").map_err(step("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    Ok(true)
}

/// Physical address of the VMM's boot-timer device (Firecracker convention).
const BOOT_TIMER_ADDR: libc::off_t = 0xc000_0000;
/// The byte that stops the boot timer.
const BOOT_TIMER_MAGIC: u8 = 123;

/// Writes the boot-timer byte through /dev/mem, so the VMM can report the
/// time from VM build to "agent ready". Failures (no such device: another
/// VMM, or a kernel without /dev/mem) are returned for logging only.
pub fn signal_boot_timer() -> io::Result<()> {
    signal_boot_timer_at(Path::new("/dev/mem"))
}

fn signal_boot_timer_at(dev_mem: &Path) -> io::Result<()> {
    let path = CString::new(dev_mem.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with NUL"))?;
    // SAFETY: path is a valid NUL-terminated string; the fd is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh shared mapping of one page of the device at a page
    // aligned offset; nothing else refers to that address range.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            BOOT_TIMER_ADDR,
        )
    };
    let result = if page == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: page maps 4096 bytes; offset 0 is inside it. A volatile
        // write so the MMIO store is not elided.
        unsafe { std::ptr::write_volatile(page.cast::<u8>(), BOOT_TIMER_MAGIC) };
        // SAFETY: unmapping exactly the mapping created above.
        unsafe { libc::munmap(page, 4096) };
        Ok(())
    };
    // SAFETY: fd was opened above and is not used afterwards.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ram_filesystems_count_as_initramfs() {
        assert!(is_ram_filesystem(RAMFS_MAGIC));
        assert!(is_ram_filesystem(TMPFS_MAGIC));
        assert!(!is_ram_filesystem(0xef53)); // ext4
        assert!(!is_ram_filesystem(0x794c_7630)); // overlayfs
    }

    #[test]
    fn host_root_is_not_the_initramfs() {
        // Unit tests run on a disk (or overlay) root, never the initramfs, so
        // make_root_pivotable() must leave the host alone.
        assert!(!root_is_initramfs());
        assert!(!make_root_pivotable().unwrap());
    }

    #[test]
    fn boot_timer_write_reports_errors() {
        let missing = signal_boot_timer_at(Path::new("/nonexistent/mem"));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
