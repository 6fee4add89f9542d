//! The aarch64 guest physical address layout.
//!
//! Devices live in the first 2 GiB, RAM starts at 2 GiB:
//!
//! | what | address |
//! | --- | --- |
//! | GIC distributor | 0x0800_0000, 64 KiB |
//! | GICv2 CPU interface | 0x0801_0000, 8 KiB |
//! | GICv3 redistributors | 0x080a_0000, 128 KiB per vCPU, up to 0x0900_0000 |
//! | 16550 UART | 0x0900_0000, 4 KiB, SPI 1 |
//! | virtio-mmio slots | 0x0a00_0000 + n * 4 KiB, SPI 16 + n |
//! | RAM | 0x8000_0000 .. |
//! | FDT | last 2 MiB-aligned block of RAM, at most 2 MiB |

/// Start of guest RAM.
pub const DRAM_START: u64 = 0x8000_0000;
/// Where the kernel `Image` is loaded (2 MiB aligned, start of RAM).
pub const KERNEL_LOAD_ADDR: u64 = DRAM_START;

/// GIC distributor.
pub const GIC_DIST_START: u64 = 0x0800_0000;
/// Size of the GIC distributor.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GICv2 CPU interface.
pub const GICV2_CPU_START: u64 = 0x0801_0000;
/// Size of the GICv2 CPU interface.
pub const GICV2_CPU_SIZE: u64 = 0x2000;
/// First GICv3 redistributor.
pub const GICV3_REDIST_START: u64 = 0x080a_0000;
/// Size of one vCPU's redistributor (RD + SGI frames).
pub const GICV3_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// End (exclusive) of the redistributor window.
pub const GICV3_REDIST_LIMIT: u64 = SERIAL_MMIO_START;
/// Most vCPUs whose redistributors fit in the window.
pub const MAX_CPUS: u64 = (GICV3_REDIST_LIMIT - GICV3_REDIST_START) / GICV3_REDIST_SIZE_PER_CPU;
/// GIC maintenance interrupt (PPI number).
pub const GIC_MAINT_PPI: u32 = 9;

/// 16550 UART MMIO base.
pub const SERIAL_MMIO_START: u64 = 0x0900_0000;
/// Size of the UART MMIO window.
pub const SERIAL_MMIO_SIZE: u64 = 0x1000;
/// UART interrupt (SPI number).
pub const SERIAL_SPI: u32 = 1;
/// Frequency of the fixed APB clock feeding the UART.
pub const UART_CLOCK_HZ: u32 = 24_000_000;

/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = 0x0a00_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u32 = 32;
/// SPI of the first virtio-mmio slot; slot `n` uses `VIRTIO_MMIO_FIRST_SPI + n`.
pub const VIRTIO_MMIO_FIRST_SPI: u32 = 16;

/// Architected timer PPIs: secure physical, non-secure physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// Largest FDT (the arm64 boot protocol limit).
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// FDT alignment: the blob must not cross a 2 MiB boundary.
const FDT_ALIGN: u64 = 0x20_0000;

const _: () = {
    assert!(GICV2_CPU_START >= GIC_DIST_START + GIC_DIST_SIZE);
    assert!(GICV3_REDIST_START >= GICV2_CPU_START + GICV2_CPU_SIZE);
    assert!(VIRTIO_MMIO_START >= SERIAL_MMIO_START + SERIAL_MMIO_SIZE);
    assert!(VIRTIO_MMIO_START + VIRTIO_MMIO_SLOTS as u64 * VIRTIO_MMIO_SLOT_SIZE <= DRAM_START);
};

/// Size of the redistributor region for `num_cpus` vCPUs.
pub fn gicv3_redist_size(num_cpus: u64) -> u64 {
    num_cpus * GICV3_REDIST_SIZE_PER_CPU
}

/// Address and SPI of virtio-mmio slot `slot`, or `None` past the last slot.
pub fn virtio_mmio_slot(slot: u32) -> Option<(u64, u32)> {
    (slot < VIRTIO_MMIO_SLOTS).then(|| {
        (
            VIRTIO_MMIO_START + u64::from(slot) * VIRTIO_MMIO_SLOT_SIZE,
            VIRTIO_MMIO_FIRST_SPI + slot,
        )
    })
}

/// Where the FDT goes for `ram_size` bytes of RAM: the last 2 MiB-aligned
/// block of RAM, so the blob (at most [`FDT_MAX_SIZE`]) never crosses a
/// 2 MiB boundary. `None` when RAM is smaller than 4 MiB (no room for a
/// kernel below the FDT) or would overflow the address space.
pub fn fdt_addr(ram_size: u64) -> Option<u64> {
    if ram_size < 2 * FDT_MAX_SIZE {
        return None;
    }
    let ram_end = DRAM_START.checked_add(ram_size)?;
    Some((ram_end - FDT_MAX_SIZE) & !(FDT_ALIGN - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn fdt_sits_in_the_last_2_mib_block() {
        assert_eq!(fdt_addr(128 * MIB), Some(DRAM_START + 126 * MIB));
        // Unaligned RAM sizes round down to a 2 MiB boundary inside RAM.
        assert_eq!(fdt_addr(129 * MIB), Some(DRAM_START + 126 * MIB));
        for size in [4 * MIB, 5 * MIB, 1 << 33] {
            let addr = fdt_addr(size).unwrap();
            assert_eq!(addr % (2 * MIB), 0);
            assert!(addr + FDT_MAX_SIZE <= DRAM_START + size);
            assert!(addr >= DRAM_START);
        }
        assert_eq!(fdt_addr(3 * MIB), None);
        assert_eq!(fdt_addr(u64::MAX), None);
    }

    #[test]
    fn gic_redistributors_fit_below_the_uart() {
        assert_eq!(MAX_CPUS, 123);
        assert!(GICV3_REDIST_START + gicv3_redist_size(MAX_CPUS) <= SERIAL_MMIO_START);
    }

    #[test]
    fn virtio_slots() {
        assert_eq!(virtio_mmio_slot(0), Some((0x0a00_0000, 16)));
        assert_eq!(virtio_mmio_slot(31), Some((0x0a01_f000, 47)));
        assert_eq!(virtio_mmio_slot(32), None);
    }
}
