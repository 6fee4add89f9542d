//! Guest RAM: one memfd, mapped as one vm-memory region per RAM range.
//!
//! The memfd makes the memory shareable (vhost-user backends map the same
//! file), and keeps guest RAM out of the VMM's own anonymous mappings, which
//! is how the benchmark tells guest memory from VMM overhead.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MmapRegion,
};

/// The guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(std::io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size the guest memory file to {size} bytes: {source}")]
    Resize {
        /// Requested size.
        size: u64,
        /// The error.
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("cannot map guest memory ({size} bytes at guest {addr:#x}): {source}")]
    Map {
        /// Guest address of the region.
        addr: u64,
        /// Region size.
        size: usize,
        /// The error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The region layout was rejected.
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} ({size} bytes at {addr:#x}): {source}")]
    SetSlot {
        /// Slot number.
        slot: u32,
        /// Guest address.
        addr: u64,
        /// Size.
        size: u64,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// Creates guest RAM of `mem_bytes`, laid out by the boot crate's
/// `ram_regions` around the 32-bit MMIO hole, backed by one memfd.
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = boot::x86_64::layout::ram_regions(mem_bytes);
    let file = memfd("vmm-guest-ram")?;
    file.set_len(mem_bytes)
        .map_err(|source| MemoryError::Resize {
            size: mem_bytes,
            source,
        })?;
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset = 0u64;
    for (addr, size) in ranges {
        let clone = file.try_clone().map_err(MemoryError::Memfd)?;
        let mapping = MmapRegion::<()>::from_file(FileOffset::new(clone, file_offset), size)
            .map_err(|source| MemoryError::Map {
                addr: addr.raw_value(),
                size,
                source,
            })?;
        let region = vm_memory::GuestRegionMmap::new(mapping, addr).ok_or_else(|| {
            MemoryError::Layout(format!("region at {:#x} overflows", addr.raw_value()))
        })?;
        regions.push(region);
        file_offset += size as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let name = CString::new(name).map_err(|e| MemoryError::Memfd(std::io::Error::other(e)))?;
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Registers every region of `mem` as a KVM memory slot (slot = region index).
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (index, region) in mem.iter().enumerate() {
        let slot = index as u32;
        let host_addr = region.as_ptr() as u64;
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr,
        };
        // SAFETY: the mapping described by `host_addr`/`len` belongs to `mem`,
        // which the caller keeps alive for as long as the VM exists (the Vm
        // owns both and drops the VM fd first).
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(|source| {
            MemoryError::SetSlot {
                slot,
                addr: region.start_addr().raw_value(),
                size: region.len(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Host virtual address ranges of guest RAM (to exclude from VMM RSS).
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            (start, start + r.len())
        })
        .collect()
}

/// True when `addr` is guest RAM (not the MMIO hole, not past the end).
pub fn is_ram(mem: &GuestMemoryMmap, addr: GuestAddress) -> bool {
    mem.address_in_range(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_memory_is_one_region_and_writable() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(is_ram(&mem, GuestAddress((64 << 20) - 1)));
        assert!(!is_ram(&mem, GuestAddress(64 << 20)));
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        // 3 GiB + 64 MiB: mappings are lazy, nothing is touched beyond a page.
        let mem = create_guest_memory((3 << 30) + (64 << 20)).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(!is_ram(&mem, GuestAddress(0xC000_0000)));
        assert!(!is_ram(&mem, GuestAddress(0xFFFF_F000)));
        assert!(is_ram(&mem, GuestAddress(0x1_0000_0000)));
        mem.write_obj(7u8, GuestAddress(0x1_0000_0000)).unwrap();
        let ranges = host_ranges(&mem);
        assert_eq!(ranges.len(), 2);
        let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert_eq!(total, (3 << 30) + (64 << 20));
    }
}
