//! The x86_64 guest physical address layout (see `docs/contracts.md`).
//!
//! Every address the VMM and the guest have to agree on lives here, so that
//! the boot structures, the device model and the kernel command line are
//! built from one table.

use vm_memory::GuestAddress;

/// Size of one guest page.
pub const PAGE_SIZE: u64 = 0x1000;

// ---- Boot structures in the first megabyte -------------------------------

/// Global descriptor table (4 entries, 32 bytes).
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (one empty entry).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`; its memory map and module list follow it.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (one per GiB) of the boot identity map.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, terminating NUL included (a bzImage header may lower it).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area: the MP table lives here and
/// conventional RAM reported to the guest ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer and configuration table (in the EBDA).
pub const MPTABLE_START: u64 = EBDA_START;
/// End of conventional memory (start of the legacy VGA hole).
pub const MPTABLE_LIMIT: u64 = 0xa0000;
/// ACPI RSDP; XSDT, FADT, DSDT and MADT follow it.
pub const RSDP_START: u64 = 0xe0000;
/// The ACPI tables must end below this address (the BIOS area ends at 1 MiB).
pub const ACPI_LIMIT: u64 = HIMEM_START;
/// Start of high memory (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

// ---- The 32-bit MMIO hole -------------------------------------------------

/// Start of the 32-bit MMIO hole; guest RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole: 4 GiB.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Boot timer device (the guest writes the byte 123 here once booted).
pub const BOOT_TIMER_ADDR: u64 = 0xc000_0000;
/// Size of the boot timer MMIO window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// First virtio-mmio slot; slot `n` is at `VIRTIO_MMIO_START + n * VIRTIO_MMIO_SLOT_SIZE`.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// IRQ (IOAPIC pin) of the first virtio-mmio slot; slot `n` uses `VIRTIO_MMIO_FIRST_IRQ + n`.
pub const VIRTIO_MMIO_FIRST_IRQ: u32 = 5;
/// Last IOAPIC pin (the KVM IOAPIC has 24 pins).
pub const IOAPIC_MAX_IRQ: u32 = 23;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

// ---- I/O ports --------------------------------------------------------------

/// ACPI sleep control register (HW-reduced FADT), 8-bit I/O port.
pub const ACPI_PM_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (HW-reduced FADT), 8-bit I/O port.
pub const ACPI_PM_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register, 8-bit I/O port.
pub const ACPI_PM_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_PM_RESET_PORT`] to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP value of the S5 (soft off) state, as announced by the DSDT `_S5_` object.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
/// 16550 UART COM1 base I/O port (8 ports).
pub const SERIAL_COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const SERIAL_COM1_IRQ: u32 = 4;
/// i8042 controller base I/O port.
pub const I8042_PORT: u16 = 0x60;
/// Number of I/O ports claimed by the i8042 bus range (0x60..=0x64).
pub const I8042_PORT_LEN: u16 = 5;

// Compile-time checks of the layout's internal consistency.
const _: () = {
    // The boot stack grows down from below the page tables, above the zero page.
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + PAGE_SIZE);
    // The page directories end before the command line.
    assert!(PDE_START + 4 * PAGE_SIZE <= CMDLINE_START);
    // MMIO devices live inside the hole.
    assert!(BOOT_TIMER_ADDR >= MMIO_HOLE_START && VIRTIO_MMIO_START > BOOT_TIMER_ADDR);
    assert!(VIRTIO_MMIO_START < IOAPIC_ADDR && LAPIC_ADDR < MMIO_HOLE_END);
};

/// Guest RAM regions for `mem_bytes` of memory: one region from 0 up to
/// the MMIO hole and, when the memory does not fit below the hole, a
/// second region from 4 GiB holding the rest.
pub fn ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    // This module only exists on x86_64, where `usize` is 64 bits wide: the
    // `as usize` conversions below are lossless.
    if mem_bytes == 0 {
        Vec::new()
    } else if mem_bytes <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (
                GuestAddress(MMIO_HOLE_END),
                (mem_bytes - MMIO_HOLE_START) as usize,
            ),
        ]
    }
}

/// Address of virtio-mmio slot `slot`.
pub fn virtio_mmio_addr(slot: u32) -> u64 {
    VIRTIO_MMIO_START + u64::from(slot) * VIRTIO_MMIO_SLOT_SIZE
}

/// IRQ of virtio-mmio slot `slot`, or `None` when the IOAPIC has no pin left.
pub fn virtio_mmio_irq(slot: u32) -> Option<u32> {
    VIRTIO_MMIO_FIRST_IRQ
        .checked_add(slot)
        .filter(|irq| *irq <= IOAPIC_MAX_IRQ)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
        assert_eq!(
            ram_regions(3 * GIB),
            vec![(GuestAddress(0), (3 * GIB) as usize)]
        );
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn memory_above_the_hole_continues_at_4_gib() {
        assert_eq!(
            ram_regions(3 * GIB + MIB),
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), MIB as usize)
            ]
        );
        let regions = ram_regions(8 * GIB);
        assert_eq!(regions[1], (GuestAddress(4 * GIB), (5 * GIB) as usize));
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 8 * GIB);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, size) of every fixed structure below 1 MiB.
        let mut areas = [
            (GDT_START, 4 * 8),
            (IDT_START, 8),
            (PVH_INFO_START, ZERO_PAGE_START - PVH_INFO_START),
            (ZERO_PAGE_START, PAGE_SIZE),
            (PML4_START, PAGE_SIZE),
            (PDPTE_START, PAGE_SIZE),
            (PDE_START, 4 * PAGE_SIZE),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, MPTABLE_LIMIT - MPTABLE_START),
            (RSDP_START, ACPI_LIMIT - RSDP_START),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }

    #[test]
    fn virtio_slots_and_irqs() {
        assert_eq!(virtio_mmio_addr(0), 0xd000_0000);
        assert_eq!(virtio_mmio_addr(2), 0xd000_2000);
        assert_eq!(virtio_mmio_irq(0), Some(5));
        assert_eq!(virtio_mmio_irq(18), Some(23));
        assert_eq!(virtio_mmio_irq(19), None);
    }
}
