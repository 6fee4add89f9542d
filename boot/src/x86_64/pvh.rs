//! PVH boot information: `hvm_start_info`, its memory map and module list.
//!
//! Layout from [`PVH_INFO_START`]: the start info, then the memory map
//! entries, then (with an initrd) one module entry; all of it must end
//! below the zero page.

use std::mem::size_of;

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use super::initrd::InitrdRegion;
use super::layout::{CMDLINE_START, PVH_INFO_START, RSDP_START, ZERO_PAGE_START};
use super::memmap::MemoryRange;
use super::SystemError;

/// `hvm_start_info::magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `hvm_start_info::version` written (1: has the memory map fields).
pub const START_INFO_VERSION: u32 = 1;

/// The PVH structures, ready to be written.
#[derive(Clone, Debug)]
pub struct PvhInfo {
    /// The start info, written at [`PVH_INFO_START`].
    pub start_info: hvm_start_info,
    /// Memory map, written at `start_info.memmap_paddr`.
    pub memmap: Vec<hvm_memmap_table_entry>,
    /// Module list (the initrd), written at `start_info.modlist_paddr`.
    pub modules: Vec<hvm_modlist_entry>,
}

/// Builds the PVH start info for the given memory map and initrd.
pub fn build_pvh_info(
    map: &[MemoryRange],
    initrd: Option<InitrdRegion>,
) -> Result<PvhInfo, SystemError> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.start,
            size: r.size,
            type_: r.kind.e820_type(),
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr.0,
            size: i.size as u64,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect();

    let memmap_addr = PVH_INFO_START + size_of::<hvm_start_info>() as u64;
    let modlist_addr = memmap_addr + (memmap.len() * size_of::<hvm_memmap_table_entry>()) as u64;
    let end = modlist_addr + (modules.len() * size_of::<hvm_modlist_entry>()) as u64;
    if end > ZERO_PAGE_START {
        return Err(SystemError::TooManyMemoryRanges {
            count: memmap.len(),
            max: (ZERO_PAGE_START - PVH_INFO_START) as usize / size_of::<hvm_memmap_table_entry>(),
        });
    }

    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        flags: 0,
        // Both counts are bounded by the space check above.
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_addr },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: RSDP_START,
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    Ok(PvhInfo {
        start_info,
        memmap,
        modules,
    })
}

/// Writes the start info, memory map and module list to guest memory.
pub fn write_pvh_info<M: GuestMemory>(mem: &M, info: &PvhInfo) -> Result<(), SystemError> {
    let write = |bytes: &[u8], addr: u64, what: &'static str| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| SystemError::write(what, GuestAddress(addr), source))
    };
    write(info.start_info.as_slice(), PVH_INFO_START, "PVH start info")?;
    let entry_len = size_of::<hvm_memmap_table_entry>() as u64;
    for (i, entry) in info.memmap.iter().enumerate() {
        let addr = info.start_info.memmap_paddr + i as u64 * entry_len;
        write(entry.as_slice(), addr, "PVH memory map")?;
    }
    let module_len = size_of::<hvm_modlist_entry>() as u64;
    for (i, module) in info.modules.iter().enumerate() {
        let addr = info.start_info.modlist_paddr + i as u64 * module_len;
        write(module.as_slice(), addr, "PVH module list")?;
    }
    Ok(())
}
