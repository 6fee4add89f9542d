//! Boot page tables: an identity map of the first 4 GiB with 2 MiB pages.
//!
//! PML4[0] -> PDPT; PDPT[0..4] -> four page directories, each mapping one
//! GiB with 512 large pages. The 64-bit Linux boot protocol requires the
//! kernel, the zero page and the command line to be identity mapped.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{PAGE_SIZE, PDE_START, PDPTE_START, PML4_START};
use super::SystemError;

/// Entry flag: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry flag: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page directory entry flag: maps a 2 MiB page instead of pointing to a page table.
pub const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Number of page directories (one per GiB identity mapped).
pub const PD_COUNT: u64 = 4;
/// Entries per page table.
const ENTRIES: u64 = 512;
/// Size of a large page.
const LARGE_PAGE: u64 = 2 << 20;
/// Mask of the physical address bits in an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Writes the identity map and returns the value for CR3 (the PML4 address).
pub fn setup_page_tables<M: GuestMemory>(mem: &M) -> Result<GuestAddress, SystemError> {
    let write = |value: u64, addr: u64, what: &'static str| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| SystemError::write(what, GuestAddress(addr), source))
    };

    // Start from clean tables: only the entries below are present.
    let zero_page = [0u8; PAGE_SIZE as usize];
    for table in [PML4_START, PDPTE_START] {
        mem.write_slice(&zero_page, GuestAddress(table))
            .map_err(|source| SystemError::write("page table", GuestAddress(table), source))?;
    }

    write(PDPTE_START | PTE_PRESENT | PTE_WRITABLE, PML4_START, "PML4")?;
    for gib in 0..PD_COUNT {
        let pd = PDE_START + gib * PAGE_SIZE;
        write(
            pd | PTE_PRESENT | PTE_WRITABLE,
            PDPTE_START + gib * 8,
            "PDPT",
        )?;
        for i in 0..ENTRIES {
            let phys = (gib * ENTRIES + i) * LARGE_PAGE;
            write(
                phys | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE,
                pd + i * 8,
                "page directory",
            )?;
        }
    }
    Ok(GuestAddress(PML4_START))
}

/// Translates `vaddr` through the tables rooted at `cr3` the way the MMU
/// would (4-level paging, stopping at a large page). `None` when unmapped
/// or when the tables cannot be read.
pub fn translate<M: GuestMemory>(mem: &M, cr3: GuestAddress, vaddr: u64) -> Option<u64> {
    let mut table = cr3.0 & ADDR_MASK;
    // Levels: PML4 (bits 47:39), PDPT (38:30), PD (29:21), PT (20:12).
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let index = (vaddr >> shift) & (ENTRIES - 1);
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let is_leaf = shift == 12 || (level > 0 && entry & PTE_PAGE_SIZE != 0);
        if is_leaf {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (vaddr & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::tests::test_memory;

    #[test]
    fn identity_maps_the_first_4_gib() {
        let mem = test_memory(16 << 20);
        let cr3 = setup_page_tables(&mem).unwrap();
        assert_eq!(cr3, GuestAddress(PML4_START));
        for addr in [
            0u64,
            0x1234,
            2 << 20,
            (2 << 20) + 0x1_2345,
            0x100_0000,
            (1 << 30) + 0x1234_5678,
            0xc000_0000,
            0xf999_9999, // ~3.9 GiB
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
    }

    #[test]
    fn entries_have_the_expected_flags() {
        let mem = test_memory(16 << 20);
        setup_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 0x3);
        for gib in 0..4 {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START + gib * 8)).unwrap();
            assert_eq!(pdpte, (PDE_START + gib * 0x1000) | 0x3);
        }
        let pdpte4: u64 = mem.read_obj(GuestAddress(PDPTE_START + 4 * 8)).unwrap();
        assert_eq!(pdpte4, 0);
        let last: u64 = mem
            .read_obj(GuestAddress(PDE_START + 4 * 0x1000 - 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
    }

    #[test]
    fn stale_entries_are_cleared() {
        let mem = test_memory(16 << 20);
        mem.write_obj(0xffff_u64, GuestAddress(PML4_START + 8))
            .unwrap();
        let cr3 = setup_page_tables(&mem).unwrap();
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
    }

    #[test]
    fn memory_too_small_for_the_tables_is_an_error() {
        let mem = test_memory(0xa000);
        assert!(matches!(
            setup_page_tables(&mem),
            Err(SystemError::GuestWrite { .. })
        ));
    }
}
