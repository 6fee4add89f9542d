//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::initrd::InitrdRegion;
use super::kernel::LoadedKernel;
use super::layout::{CMDLINE_START, RSDP_START, ZERO_PAGE_START};
use super::memmap::MemoryRange;
use super::SystemError;

/// `boot_flag` value of a valid header.
const BOOT_FLAG: u16 = 0xaa55;
/// `HdrS`.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: undefined / not registered.
const LOADER_UNDEFINED: u8 = 0xff;
/// Physical alignment a kernel without a header is assumed to need.
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// The header to start from when the kernel brought none (ELF vmlinux).
fn fresh_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        kernel_alignment: KERNEL_ALIGNMENT,
        ..setup_header::default()
    }
}

/// Builds the zero page.
///
/// `cmdline_len` counts the terminating NUL; `map` is the memory map from
/// [`memory_map`](super::memmap::memory_map).
pub fn build_boot_params(
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
    map: &[MemoryRange],
) -> Result<boot_params, SystemError> {
    let mut params = boot_params {
        hdr: kernel.setup_header.unwrap_or_else(fresh_header),
        ..boot_params::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size =
        u32::try_from(cmdline_len).map_err(|_| SystemError::CmdlineTooLong {
            len: cmdline_len,
            max: kernel.cmdline_max,
        })?;
    if let Some(initrd) = initrd {
        let addr = initrd.addr.0;
        let size = initrd.size as u64;
        // Low 32 bits in the header, high 32 bits in the ext_ fields.
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.acpi_rsdp_addr = RSDP_START;

    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(SystemError::TooManyMemoryRanges {
            count: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, range) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: range.start,
            size: range.size,
            r#type: range.kind.e820_type(),
        };
    }
    // Bounded by E820_MAX_ENTRIES_ZEROPAGE (128) above.
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_boot_params<M: GuestMemory>(mem: &M, params: &boot_params) -> Result<(), SystemError> {
    let addr = GuestAddress(ZERO_PAGE_START);
    mem.write_obj(*params, addr)
        .map_err(|source| SystemError::write("zero page", addr, source))
}
