//! `bzImage` kernels (Linux x86 boot protocol).
//!
//! The setup header is validated here (boot protocol >= 2.12 with a 64-bit
//! entry point, setup sectors and protected-mode code inside the file, load
//! address inside guest memory), then `linux_loader::loader::BzImage`
//! copies the protected-mode code to `code32_start`. The 64-bit entry point
//! is 0x200 bytes into it (`startup_64`).

use std::fs::File;
use std::mem::size_of;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use super::BootProtocol;
use super::{check_in_file, check_range, cmdline_max, KernelError, LoadedKernel};
use crate::x86_64::layout::HIMEM_START;

/// Offset of the setup header in the image (and in the zero page).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the `HdrS` magic.
const MAGIC_OFFSET: usize = 0x202;
/// `HdrS`, as stored in `setup_header::header`.
pub(crate) const HDRS_MAGIC: u32 = 0x5372_6448;
/// First boot protocol version with `xloadflags` (and so `XLF_KERNEL_64`).
const MIN_VERSION: u16 = 0x020c;
/// `loadflags`: protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x1;
/// `xloadflags`: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 0x1;
/// Offset of the 64-bit entry point from the load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Size of a setup sector.
const SECTOR: u64 = 512;

/// Whether the file has the `HdrS` magic of the Linux boot protocol.
pub(super) fn is_bzimage(head: &[u8]) -> bool {
    head.get(MAGIC_OFFSET..MAGIC_OFFSET + 4) == Some(&HDRS_MAGIC.to_le_bytes()[..])
}

/// Validates and loads a bzImage. `head` holds the start of the file.
pub(super) fn load<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
    head: &[u8],
    file_size: u64,
) -> Result<LoadedKernel, KernelError> {
    let header_len = size_of::<setup_header>();
    let raw = head
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + header_len)
        .ok_or(KernelError::Truncated {
            what: "setup header",
            offset: SETUP_HEADER_OFFSET as u64,
            len: header_len as u64,
            file_size,
        })?;
    let mut header = setup_header::default();
    header.as_mut_slice().copy_from_slice(raw);

    let version = header.version;
    if version < MIN_VERSION {
        return Err(KernelError::UnsupportedBzImage(format!(
            "boot protocol {}.{:02} is older than 2.12",
            version >> 8,
            version & 0xff
        )));
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(KernelError::UnsupportedBzImage(
            "not loaded high (LOADED_HIGH clear)".to_string(),
        ));
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelError::UnsupportedBzImage(
            "no 64-bit entry point (XLF_KERNEL_64 clear)".to_string(),
        ));
    }
    let code32_start = u64::from(header.code32_start);
    if code32_start < HIMEM_START {
        return Err(KernelError::UnsupportedBzImage(format!(
            "load address {code32_start:#x} is below high memory ({HIMEM_START:#x})"
        )));
    }

    // Real-mode setup: the boot sector plus `setup_sects` sectors (0 means 4).
    let setup_sects = match header.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * SECTOR;
    check_in_file("real-mode setup code", 0, setup_len, file_size)?;
    let payload_len = file_size - setup_len;
    if payload_len <= ENTRY_64_OFFSET {
        return Err(KernelError::Truncated {
            what: "protected-mode kernel",
            offset: setup_len,
            len: ENTRY_64_OFFSET + 1,
            file_size,
        });
    }
    // `syssize` announces the protected-mode code size in 16-byte units.
    let announced = u64::from(header.syssize) * 16;
    if announced > payload_len {
        return Err(KernelError::Truncated {
            what: "protected-mode kernel",
            offset: setup_len,
            len: announced,
            file_size,
        });
    }
    // The decompressor needs `init_size` bytes from the load address.
    let footprint = payload_len.max(u64::from(header.init_size));
    check_range(mem, "protected-mode kernel", code32_start, footprint)?;

    let result =
        BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            KernelError::Load {
                format: "bzImage",
                source,
            }
        })?;
    let load = result.kernel_load.0;
    Ok(LoadedKernel {
        entry: GuestAddress(load + ENTRY_64_OFFSET),
        protocol: BootProtocol::Linux64,
        kernel_end: GuestAddress(load + footprint),
        setup_header: result.setup_header.or(Some(header)),
        cmdline_max: cmdline_max(header.cmdline_size),
    })
}
