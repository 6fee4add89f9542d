//! Loading the initial ramdisk.
//!
//! The initrd goes as high as possible in the RAM below the MMIO hole,
//! page aligned, above the kernel: far from the kernel's decompression and
//! early allocations, and always addressable by the 32-bit `ramdisk_image`
//! field of the zero page.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{MMIO_HOLE_START, PAGE_SIZE};

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical address (page aligned).
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: usize,
}

/// Errors loading the initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// Reading the file failed.
    #[error("cannot read the initrd: {0}")]
    Io(#[source] std::io::Error),
    /// The file is empty.
    #[error("the initrd is empty")]
    Empty,
    /// Guest memory has no RAM region starting at 0.
    #[error("guest memory has no RAM at address 0 to hold the initrd")]
    NoLowMemory,
    /// Not enough room between the kernel and the top of low memory.
    #[error("initrd is larger than guest memory allows: {size} bytes, at most {max} (between the kernel end {kernel_end:#x} and {limit:#x})")]
    TooLarge {
        /// Initrd size.
        size: u64,
        /// Room available.
        max: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Top of the usable low memory.
        limit: u64,
    },
    /// Copying into guest memory failed.
    #[error("cannot copy the {size}-byte initrd to guest address {addr:#x}: {source}")]
    Copy {
        /// Destination.
        addr: u64,
        /// Size.
        size: usize,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Loads `initrd` at the top of the low RAM region, above `kernel_end` and
/// below the MMIO hole.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    kernel_end: GuestAddress,
) -> Result<InitrdRegion, InitrdError> {
    load_initrd_below(mem, initrd, kernel_end, GuestAddress(MMIO_HOLE_START))
}

/// Like [`load_initrd`], with the initrd ending at or below `limit` too
/// (pass [`LoadedKernel::initrd_limit`](super::LoadedKernel::initrd_limit)
/// to honour a bzImage's `initrd_addr_max`).
pub fn load_initrd_below<M: GuestMemoryBackend>(
    mem: &M,
    initrd: &mut File,
    kernel_end: GuestAddress,
    limit: GuestAddress,
) -> Result<InitrdRegion, InitrdError> {
    let size = initrd.metadata().map_err(InitrdError::Io)?.len();
    let low_end = mem
        .find_region(GuestAddress(0))
        .map(|r| r.start_addr().0 + r.len())
        .ok_or(InitrdError::NoLowMemory)?;
    let top = low_end.min(limit.0).min(MMIO_HOLE_START);
    let addr = initrd_placement(size, kernel_end.0, top)?;
    // `initrd_placement` guarantees addr + size <= top < 4 GiB.
    let len = size as usize;

    initrd.seek(SeekFrom::Start(0)).map_err(InitrdError::Io)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(|source| InitrdError::Copy {
            addr,
            size: len,
            source,
        })?;
    tracing::debug!(addr = format_args!("{addr:#x}"), size, "initrd loaded");
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size: len,
    })
}

/// The page-aligned address for a `size`-byte initrd ending at or below
/// `top` and starting at or above the page-aligned `kernel_end`.
pub fn initrd_placement(size: u64, kernel_end: u64, top: u64) -> Result<u64, InitrdError> {
    if size == 0 {
        return Err(InitrdError::Empty);
    }
    let lowest = kernel_end
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX);
    let max = top.saturating_sub(lowest);
    let too_large = || InitrdError::TooLarge {
        size,
        max,
        kernel_end,
        limit: top,
    };
    let start = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if start < lowest {
        return Err(too_large());
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::tests::{temp_file_with, test_memory};

    const MIB: u64 = 1 << 20;

    #[test]
    fn placement_is_page_aligned_at_the_top() {
        assert_eq!(
            initrd_placement(0x1800, 0x200_0000, 0x800_0000).unwrap(),
            0x7ffe000
        );
        assert_eq!(
            initrd_placement(0x1000, 0x200_0000, 0x800_0000).unwrap(),
            0x7fff000
        );
        // Exactly filling the gap above a page-aligned kernel end is fine.
        assert_eq!(
            initrd_placement(0x1000, 0x7ffe001, 0x800_0000).unwrap(),
            0x7fff000
        );
    }

    #[test]
    fn placement_too_large() {
        let err = initrd_placement(0x2000, 0x7ffe001, 0x800_0000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initrd is larger than guest memory allows: 8192 bytes, at most 4096 \
             (between the kernel end 0x7ffe001 and 0x8000000)"
        );
        assert!(matches!(
            initrd_placement(u64::MAX, 0, 0x800_0000),
            Err(InitrdError::TooLarge { .. })
        ));
        assert!(matches!(
            initrd_placement(0, 0, 0x800_0000),
            Err(InitrdError::Empty)
        ));
    }

    #[test]
    fn loads_at_the_top_of_ram() {
        let mem = test_memory(64 * MIB);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = temp_file_with(&data);
        let region = load_initrd(&mem, &mut file, GuestAddress(0x200_0000)).unwrap();
        assert_eq!(region.size, data.len());
        assert_eq!(region.addr.0 % PAGE_SIZE, 0);
        assert!(region.addr.0 + data.len() as u64 <= 64 * MIB);
        assert!(64 * MIB - (region.addr.0 + data.len() as u64) < PAGE_SIZE);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, region.addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn limit_lowers_the_placement() {
        let mem = test_memory(64 * MIB);
        let mut file = temp_file_with(&[1u8; 100]);
        let region =
            load_initrd_below(&mem, &mut file, GuestAddress(MIB), GuestAddress(32 * MIB)).unwrap();
        assert_eq!(region.addr.0, 32 * MIB - PAGE_SIZE);
    }

    #[test]
    fn too_large_for_guest_memory() {
        let mem = test_memory(16 * MIB);
        let mut file = temp_file_with(&vec![0u8; (8 * MIB) as usize]);
        let err = load_initrd(&mem, &mut file, GuestAddress(10 * MIB)).unwrap_err();
        assert!(
            matches!(err, InitrdError::TooLarge { size, max, .. } if size == 8 * MIB && max == 6 * MIB)
        );
        assert!(err
            .to_string()
            .starts_with("initrd is larger than guest memory allows"));
    }

    #[test]
    fn empty_initrd_is_an_error() {
        let mem = test_memory(16 * MIB);
        let mut file = temp_file_with(&[]);
        assert!(matches!(
            load_initrd(&mem, &mut file, GuestAddress(MIB)),
            Err(InitrdError::Empty)
        ));
    }
}
