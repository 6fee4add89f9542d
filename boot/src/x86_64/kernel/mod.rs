//! Loading the guest kernel into guest memory.
//!
//! Two image formats are accepted, recognised by their magic numbers:
//! an ELF `vmlinux` (booted through PVH when it carries a PVH entry note,
//! otherwise through the 64-bit Linux boot protocol at its ELF entry) and a
//! `bzImage` (64-bit Linux boot protocol at load address + 0x200). The image
//! is checked first (sizes, offsets, target addresses) so that a truncated
//! or corrupt file gives an error naming what is wrong; the copying itself
//! is done by `linux-loader`.

mod bzimage;
mod elf;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::io::Read;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::{CMDLINE_MAX_SIZE, MMIO_HOLE_START};

/// How the kernel expects to be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// Xen PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
}

/// A kernel placed in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Guest physical address of the first instruction to run.
    pub entry: GuestAddress,
    /// How to enter it.
    pub protocol: BootProtocol,
    /// First address past the memory the kernel occupies (or, for a
    /// bzImage, needs while decompressing).
    pub kernel_end: GuestAddress,
    /// The bzImage setup header, the starting point of the zero page.
    pub setup_header: Option<setup_header>,
    /// Longest accepted command line, terminating NUL included.
    pub cmdline_max: usize,
}

impl LoadedKernel {
    /// Highest address (exclusive) the initrd may reach: the MMIO hole, or
    /// lower when the bzImage header announces a lower `initrd_addr_max`.
    pub fn initrd_limit(&self) -> GuestAddress {
        let header_limit = self
            .setup_header
            .map(|h| h.initrd_addr_max)
            .filter(|max| *max != 0)
            .map_or(MMIO_HOLE_START, |max| u64::from(max) + 1);
        GuestAddress(header_limit.min(MMIO_HOLE_START))
    }
}

/// Errors loading the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Reading the image file failed.
    #[error("cannot read the kernel image: {0}")]
    Io(#[source] std::io::Error),
    /// The image file is empty.
    #[error("the kernel image is empty")]
    Empty,
    /// Neither ELF nor bzImage.
    #[error("the kernel image ({size} bytes, starting with {magic:02x?}) is neither an ELF vmlinux nor a bzImage")]
    UnrecognisedFormat {
        /// File size.
        size: u64,
        /// The first bytes of the file.
        magic: Vec<u8>,
    },
    /// Part of the image lies past the end of the file.
    #[error("the kernel image is truncated: the {what} at offset {offset:#x} ({len:#x} bytes) ends past the end of the {file_size:#x}-byte file")]
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
        /// Its offset in the file.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file size.
        file_size: u64,
    },
    /// An ELF image this VMM cannot boot (wrong class, endianness or machine).
    #[error("unsupported ELF kernel: {0}")]
    UnsupportedElf(String),
    /// A bzImage this VMM cannot boot.
    #[error("unsupported bzImage: {0}")]
    UnsupportedBzImage(String),
    /// The image wants memory the guest does not have.
    #[error("the kernel {what} at guest address {addr:#x} ({size:#x} bytes) does not fit in guest memory")]
    OutsideMemory {
        /// What was to be placed (segment, entry point...).
        what: &'static str,
        /// Guest physical address.
        addr: u64,
        /// Size in bytes.
        size: u64,
    },
    /// `linux-loader` refused or failed to copy the image.
    #[error("loading the {format} kernel failed")]
    Load {
        /// "ELF" or "bzImage".
        format: &'static str,
        /// The loader error.
        #[source]
        source: linux_loader::loader::Error,
    },
}

/// Bytes read from the start of the file to recognise the format.
const PROBE_LEN: usize = 1024;

/// Loads `kernel` into `mem` and returns where and how to enter it.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
) -> Result<LoadedKernel, KernelError> {
    let file_size = kernel.metadata().map_err(KernelError::Io)?.len();
    if file_size == 0 {
        return Err(KernelError::Empty);
    }
    let head = read_head(kernel)?;

    let loaded = if elf::is_elf(&head) {
        elf::load(mem, kernel, file_size)?
    } else if bzimage::is_bzimage(&head) {
        bzimage::load(mem, kernel, &head, file_size)?
    } else {
        return Err(KernelError::UnrecognisedFormat {
            size: file_size,
            magic: head.iter().take(8).copied().collect(),
        });
    };

    check_range(mem, "entry point", loaded.entry.0, 1)?;
    tracing::debug!(
        entry = format_args!("{:#x}", loaded.entry.0),
        end = format_args!("{:#x}", loaded.kernel_end.0),
        protocol = ?loaded.protocol,
        "kernel loaded"
    );
    Ok(loaded)
}

/// Reads up to [`PROBE_LEN`] bytes from the start of the file.
fn read_head(file: &mut File) -> Result<Vec<u8>, KernelError> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).map_err(KernelError::Io)?;
    let mut head = Vec::with_capacity(PROBE_LEN);
    file.by_ref()
        .take(PROBE_LEN as u64)
        .read_to_end(&mut head)
        .map_err(KernelError::Io)?;
    Ok(head)
}

/// Fails unless `[addr, addr + size)` is guest memory.
fn check_range<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    size: u64,
) -> Result<(), KernelError> {
    let fits = usize::try_from(size).is_ok_and(|len| {
        addr.checked_add(size).is_some() && mem.check_range(GuestAddress(addr), len)
    });
    if fits {
        Ok(())
    } else {
        Err(KernelError::OutsideMemory { what, addr, size })
    }
}

/// Fails unless `[offset, offset + len)` lies within a file of `file_size` bytes.
fn check_in_file(
    what: &'static str,
    offset: u64,
    len: u64,
    file_size: u64,
) -> Result<(), KernelError> {
    match offset.checked_add(len) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(KernelError::Truncated {
            what,
            offset,
            len,
            file_size,
        }),
    }
}

/// Largest command line (NUL included) for a kernel whose header announces
/// `cmdline_size` (0 when unknown).
fn cmdline_max(cmdline_size: u32) -> usize {
    match usize::try_from(cmdline_size) {
        Ok(size) if size != 0 => size.saturating_add(1).min(CMDLINE_MAX_SIZE),
        _ => CMDLINE_MAX_SIZE,
    }
}

/// Little-endian field readers for fixed-size header buffers.
fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
