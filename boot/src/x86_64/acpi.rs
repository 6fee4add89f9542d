//! Minimal ACPI tables for a hardware-reduced machine.
//!
//! RSDP -> XSDT -> {FADT -> DSDT, MADT}, packed one after another from
//! [`RSDP_START`]. The FADT declares a HW-reduced platform whose only ACPI
//! hardware is the sleep control/status and reset registers on I/O ports;
//! the DSDT carries just the `\_S5_` object so the guest can power off; the
//! MADT lists the local APICs and the I/O APIC.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use super::layout::{
    ACPI_LIMIT, ACPI_PM_RESET_PORT, ACPI_PM_SLEEP_CONTROL_PORT, ACPI_PM_SLEEP_STATUS_PORT,
    ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, IOAPIC_ADDR, LAPIC_ADDR, RSDP_START, SERIAL_COM1_IRQ,
    SERIAL_COM1_PORT,
};
use super::mptable::{byte_sum, ioapic_id};
use super::SystemError;

/// OEM id written into every table.
const OEM_ID: [u8; 6] = *b"SNDBOX";
/// Creator id written into every table.
const CREATOR_ID: [u8; 4] = *b"SBXV";
/// Tables are placed at this alignment.
const TABLE_ALIGN: u64 = 16;

/// Header common to every system description table.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SdtHeader {
    /// Table signature.
    pub signature: [u8; 4],
    /// Length of the whole table.
    pub length: u32,
    /// Table revision.
    pub revision: u8,
    /// Makes the whole table sum to zero.
    pub checksum: u8,
    /// OEM id.
    pub oem_id: [u8; 6],
    /// OEM table id.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
    /// Creator id.
    pub creator_id: [u8; 4],
    /// Creator revision.
    pub creator_revision: u32,
}

/// Root System Description Pointer, revision 2.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Rsdp {
    /// `RSD PTR `.
    pub signature: [u8; 8],
    /// Makes the first 20 bytes sum to zero.
    pub checksum: u8,
    /// OEM id.
    pub oem_id: [u8; 6],
    /// 2: ACPI 2.0+ with an XSDT.
    pub revision: u8,
    /// 32-bit RSDT address (none).
    pub rsdt_addr: u32,
    /// Length of this structure (36).
    pub length: u32,
    /// XSDT address.
    pub xsdt_addr: u64,
    /// Makes all 36 bytes sum to zero.
    pub extended_checksum: u8,
    /// Reserved.
    pub reserved: [u8; 3],
}

/// Generic Address Structure.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gas {
    /// Address space: 0 memory, 1 system I/O.
    pub space_id: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Register offset in bits.
    pub bit_offset: u8,
    /// Access size: 1 byte, 2 word, 3 dword, 4 qword.
    pub access_size: u8,
    /// Address (port number for system I/O).
    pub address: u64,
}

impl Gas {
    /// An 8-bit register at I/O port `port`.
    pub fn io_port_u8(port: u16) -> Self {
        Gas {
            space_id: 1,
            bit_width: 8,
            bit_offset: 0,
            access_size: 1,
            address: u64::from(port),
        }
    }
}

/// Fixed ACPI Description Table body (after the header), revision 6.
///
/// Field names follow the ACPI 6.5 specification (table 5.9); everything a
/// HW-reduced platform does not have is zero.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FadtBody {
    /// 32-bit FACS address (none: HW-reduced).
    pub firmware_ctrl: u32,
    /// 32-bit DSDT address (unused: `x_dsdt` is set).
    pub dsdt: u32,
    /// Reserved (ACPI 1.0 INT_MODEL).
    pub reserved0: u8,
    /// Preferred power management profile (0: unspecified).
    pub preferred_pm_profile: u8,
    /// SCI interrupt (none: HW-reduced).
    pub sci_int: u16,
    /// SMI command port (none).
    pub smi_cmd: u32,
    /// Value written to SMI_CMD to enable ACPI (none).
    pub acpi_enable: u8,
    /// Value written to SMI_CMD to disable ACPI (none).
    pub acpi_disable: u8,
    /// Value written to SMI_CMD for S4BIOS (none).
    pub s4bios_req: u8,
    /// Value written to SMI_CMD for P-state control (none).
    pub pstate_cnt: u8,
    /// PM1a event block port (none).
    pub pm1a_evt_blk: u32,
    /// PM1b event block port (none).
    pub pm1b_evt_blk: u32,
    /// PM1a control block port (none).
    pub pm1a_cnt_blk: u32,
    /// PM1b control block port (none).
    pub pm1b_cnt_blk: u32,
    /// PM2 control block port (none).
    pub pm2_cnt_blk: u32,
    /// PM timer block port (none).
    pub pm_tmr_blk: u32,
    /// GPE0 block port (none).
    pub gpe0_blk: u32,
    /// GPE1 block port (none).
    pub gpe1_blk: u32,
    /// PM1 event block length.
    pub pm1_evt_len: u8,
    /// PM1 control block length.
    pub pm1_cnt_len: u8,
    /// PM2 control block length.
    pub pm2_cnt_len: u8,
    /// PM timer block length.
    pub pm_tmr_len: u8,
    /// GPE0 block length.
    pub gpe0_blk_len: u8,
    /// GPE1 block length.
    pub gpe1_blk_len: u8,
    /// First GPE1 event number.
    pub gpe1_base: u8,
    /// Value written to SMI_CMD for _CST support (none).
    pub cst_cnt: u8,
    /// C2 latency.
    pub p_lvl2_lat: u16,
    /// C3 latency.
    pub p_lvl3_lat: u16,
    /// Cache flush size (legacy).
    pub flush_size: u16,
    /// Cache flush stride (legacy).
    pub flush_stride: u16,
    /// Duty cycle offset in P_CNT.
    pub duty_offset: u8,
    /// Duty cycle width in P_CNT.
    pub duty_width: u8,
    /// RTC day-of-month alarm index.
    pub day_alrm: u8,
    /// RTC month alarm index.
    pub mon_alrm: u8,
    /// RTC century index.
    pub century: u8,
    /// IA-PC boot architecture flags (`IAPC_*`).
    pub iapc_boot_arch: u16,
    /// Reserved.
    pub reserved1: u8,
    /// Fixed feature flags (`FADT_*`).
    pub flags: u32,
    /// Reset register.
    pub reset_reg: Gas,
    /// Value to write to the reset register.
    pub reset_value: u8,
    /// ARM boot architecture flags.
    pub arm_boot_arch: u16,
    /// FADT minor version.
    pub minor_version: u8,
    /// 64-bit FACS address (none).
    pub x_firmware_ctrl: u64,
    /// 64-bit DSDT address.
    pub x_dsdt: u64,
    /// PM1a event block (none).
    pub x_pm1a_evt_blk: Gas,
    /// PM1b event block (none).
    pub x_pm1b_evt_blk: Gas,
    /// PM1a control block (none).
    pub x_pm1a_cnt_blk: Gas,
    /// PM1b control block (none).
    pub x_pm1b_cnt_blk: Gas,
    /// PM2 control block (none).
    pub x_pm2_cnt_blk: Gas,
    /// PM timer block (none).
    pub x_pm_tmr_blk: Gas,
    /// GPE0 block (none).
    pub x_gpe0_blk: Gas,
    /// GPE1 block (none).
    pub x_gpe1_blk: Gas,
    /// HW-reduced sleep control register.
    pub sleep_control_reg: Gas,
    /// HW-reduced sleep status register.
    pub sleep_status_reg: Gas,
    /// Hypervisor vendor identity.
    pub hypervisor_vendor_id: [u8; 8],
}

/// MADT entry: processor local APIC (type 0).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MadtLocalApic {
    /// 0.
    pub entry_type: u8,
    /// 8.
    pub length: u8,
    /// ACPI processor UID.
    pub processor_uid: u8,
    /// Local APIC id.
    pub apic_id: u8,
    /// Bit 0: enabled.
    pub flags: u32,
}

/// MADT entry: I/O APIC (type 1).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MadtIoApic {
    /// 1.
    pub entry_type: u8,
    /// 12.
    pub length: u8,
    /// I/O APIC id.
    pub ioapic_id: u8,
    /// Reserved.
    pub reserved: u8,
    /// MMIO address.
    pub address: u32,
    /// First GSI served by this I/O APIC.
    pub gsi_base: u32,
}

// SAFETY: the ACPI structures are `repr(C, packed)` (no padding, alignment
// 1), contain only integers and byte arrays, and every bit pattern is a
// valid value.
unsafe impl ByteValued for SdtHeader {}
// SAFETY: as above.
unsafe impl ByteValued for Rsdp {}
// SAFETY: as above.
unsafe impl ByteValued for Gas {}
// SAFETY: as above.
unsafe impl ByteValued for FadtBody {}
// SAFETY: as above.
unsafe impl ByteValued for MadtLocalApic {}
// SAFETY: as above.
unsafe impl ByteValued for MadtIoApic {}

const _: () = {
    assert!(size_of::<SdtHeader>() == 36);
    assert!(size_of::<Rsdp>() == 36);
    assert!(size_of::<Gas>() == 12);
    assert!(size_of::<SdtHeader>() + size_of::<FadtBody>() == 276);
    assert!(size_of::<MadtLocalApic>() == 8);
    assert!(size_of::<MadtIoApic>() == 12);
};

/// FADT flag: the reset register is supported.
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// FADT flag: hardware-reduced ACPI (no PM1/GPE blocks, no SCI).
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH: an 8042 keyboard controller is present (deliberately not set).
pub const IAPC_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: VGA is not present.
pub const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: no CMOS RTC.
pub const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// DSDT body: `Name (_S5_, Package () { ACPI_S5_SLEEP_TYPE, 0, 0, 0 })`.
///
/// ```text
/// 08                NameOp
/// 5f 53 35 5f       NameString "_S5_"
/// 12                PackageOp
/// 07                PkgLength: 7 bytes, counting itself, up to the end
/// 04                NumElements: 4
/// 0a 05             BytePrefix 0x05: SLP_TYPa = ACPI_S5_SLEEP_TYPE
/// 00 00 00          ZeroOp x3: SLP_TYPb and two reserved elements
/// ```
pub const DSDT_AML: [u8; 13] = [
    0x08,
    b'_',
    b'S',
    b'5',
    b'_',
    0x12,
    0x07,
    0x04,
    0x0a,
    ACPI_S5_SLEEP_TYPE,
    0x00,
    0x00,
    0x00,
];

/// AML for the COM1 device (placed under `\_SB` by [`sb_scope_aml`]), so
/// the guest can map its interrupt.
///
/// With HW-reduced ACPI Linux drops the legacy PIC and preallocates no ISA
/// interrupts, so the 8250 driver's built-in "COM1 at 0x3f8, IRQ 4" cannot
/// request IRQ 4 and every open of ttyS0 fails (kernel printk still works,
/// it polls). Describing the port as a PNP0501 device lets the 8250 PNP
/// driver register it with an IRQ mapped through the I/O APIC.
///
/// ```text
/// Scope (\_SB) {
///   Device (COM1) {
///     Name (_HID, EisaId ("PNP0501"))
///     Name (_UID, Zero)
///     Name (_CRS, ResourceTemplate () {
///       IO (Decode16, 0x3F8, 0x3F8, 0x00, 0x08)
///       IRQNoFlags () { 4 }
///     })
///   }
/// }
/// ```
pub fn com1_aml() -> Vec<u8> {
    let port = SERIAL_COM1_PORT.to_le_bytes();
    let irq_mask = (1u16 << SERIAL_COM1_IRQ).to_le_bytes();
    // Resource template: IO port descriptor, IRQ descriptor, end tag.
    let resources: Vec<u8> = [
        &[0x47, 0x01, port[0], port[1], port[0], port[1], 0x00, 0x08][..],
        &[0x22, irq_mask[0], irq_mask[1]],
        &[0x79, 0x00],
    ]
    .concat();
    let mut crs_buffer = vec![0x0a, resources.len() as u8]; // BufferSize: BytePrefix n
    crs_buffer.extend_from_slice(&resources);
    let mut device_body = Vec::new();
    device_body.extend_from_slice(b"COM1");
    // EisaId("PNP0501"): three 5-bit letters then the product number, big endian.
    device_body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01]);
    device_body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x00]);
    device_body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S']);
    device_body.extend_from_slice(&aml_package(0x11, &crs_buffer)); // BufferOp
    aml_device(&device_body)
}

/// A virtio-mmio slot as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Base of the 4 KiB register window.
    pub base: u64,
    /// Its interrupt (a GSI on the I/O APIC).
    pub irq: u32,
}

/// Size of one virtio-mmio register window.
const VIRTIO_MMIO_WINDOW: u32 = 0x1000;

/// AML for one virtio-mmio device, as Linux's virtio_mmio driver matches it
/// through ACPI (`LNRO0005`).
///
/// Announcing virtio-mmio devices on the kernel command line
/// (`virtio_mmio.device=4K@base:irq`) does not work with HW-reduced ACPI:
/// the driver requests the raw ISA IRQ number, which Linux never allocated
/// (no legacy PIC), and the probe fails with -EINVAL. Described here, the
/// interrupt is mapped through the I/O APIC like COM1's.
///
/// ```text
/// Device (VMnn) {
///   Name (_HID, "LNRO0005")
///   Name (_UID, nn)
///   Name (_CRS, ResourceTemplate () {
///     Memory32Fixed (ReadWrite, base, 0x1000)
///     Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { irq }
///   })
/// }
/// ```
pub fn virtio_mmio_device_aml(index: u8, slot: VirtioMmioSlot) -> Vec<u8> {
    let hex = |n: u8| b"0123456789ABCDEF"[usize::from(n & 0xf)];
    // Register windows live in the 32-bit MMIO hole, so the base fits in 32 bits.
    let base = (slot.base as u32).to_le_bytes();
    let len = VIRTIO_MMIO_WINDOW.to_le_bytes();
    let irq = slot.irq.to_le_bytes();
    let resources: Vec<u8> = [
        // Memory32Fixed: large item 0x86, length 9, read-write, base, length.
        &[0x86, 0x09, 0x00, 0x01][..],
        &base,
        &len,
        // Extended Interrupt: large item 0x89, length 6, flags
        // (consumer | edge, active high, exclusive), one interrupt.
        &[0x89, 0x06, 0x00, 0x03, 0x01],
        &irq,
        &[0x79, 0x00],
    ]
    .concat();
    let mut crs_buffer = vec![0x0a, resources.len() as u8];
    crs_buffer.extend_from_slice(&resources);
    let mut body = vec![b'V', b'M', hex(index >> 4), hex(index)];
    body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0d]);
    body.extend_from_slice(b"LNRO0005\0");
    body.extend_from_slice(&[0x08, b'_', b'U', b'I', b'D', 0x0a, index]);
    body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S']);
    body.extend_from_slice(&aml_package(0x11, &crs_buffer));
    aml_device(&body)
}

/// `Scope (\_SB) { COM1, one device per virtio-mmio slot }`.
pub fn sb_scope_aml(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut body = b"\\_SB_".to_vec();
    body.extend_from_slice(&com1_aml());
    for (index, slot) in virtio.iter().enumerate() {
        body.extend_from_slice(&virtio_mmio_device_aml(index as u8, *slot));
    }
    aml_package(0x10, &body) // ScopeOp
}

/// `DeviceOp PkgLength body` (DeviceOp is the extended opcode 5B 82).
fn aml_device(body: &[u8]) -> Vec<u8> {
    [&[0x5b][..], &aml_package(0x82, body)].concat()
}

/// `op PkgLength body`, with the one- or two-byte PkgLength encoding.
fn aml_package(op: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![op];
    let one_byte = body.len() + 1;
    if one_byte < 0x40 {
        out.push(one_byte as u8);
    } else {
        let total = body.len() + 2;
        out.push(0x40 | (total & 0x0f) as u8);
        out.push((total >> 4) as u8);
    }
    out.extend_from_slice(body);
    out
}

/// The whole DSDT body: `\_S5_`, COM1 and the virtio-mmio devices.
pub fn dsdt_aml(virtio: &[VirtioMmioSlot]) -> Vec<u8> {
    [&DSDT_AML[..], &sb_scope_aml(virtio)].concat()
}

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// Zero CPUs, or so many that no APIC id is left for the I/O APIC.
    #[error("cannot describe {num_cpus} CPUs in the MADT (1 to 254)")]
    CpuCount {
        /// Requested CPUs.
        num_cpus: u8,
    },
    /// The tables do not fit below [`ACPI_LIMIT`].
    #[error("ACPI tables end at {end:#x}, past {ACPI_LIMIT:#x}")]
    TooLarge {
        /// End of the last table.
        end: u64,
    },
}

/// A table and the guest address it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedTable {
    /// Guest physical address.
    pub addr: u64,
    /// Table bytes.
    pub bytes: Vec<u8>,
}

/// Builds a system description table: header (with length and checksum) + `body`.
fn sdt(signature: [u8; 4], revision: u8, table_id: [u8; 8], body: &[u8]) -> Vec<u8> {
    let mut header = SdtHeader {
        signature,
        // Table bodies here are at most a few KiB.
        length: (size_of::<SdtHeader>() + body.len()) as u32,
        revision,
        checksum: 0,
        oem_id: OEM_ID,
        oem_table_id: table_id,
        oem_revision: 1,
        creator_id: CREATOR_ID,
        creator_revision: 1,
    };
    header.checksum = byte_sum(header.as_slice())
        .wrapping_add(byte_sum(body))
        .wrapping_neg();
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(body);
    table
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let body = FadtBody {
        iapc_boot_arch: IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT,
        flags: FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP,
        reset_reg: Gas::io_port_u8(ACPI_PM_RESET_PORT),
        reset_value: ACPI_RESET_VALUE,
        minor_version: 5,
        x_dsdt: dsdt_addr,
        sleep_control_reg: Gas::io_port_u8(ACPI_PM_SLEEP_CONTROL_PORT),
        sleep_status_reg: Gas::io_port_u8(ACPI_PM_SLEEP_STATUS_PORT),
        hypervisor_vendor_id: *b"SANDBOX ",
        ..FadtBody::default()
    };
    sdt(*b"FACP", 6, *b"SBXFACP ", body.as_slice())
}

fn madt(num_cpus: u8) -> Vec<u8> {
    const PCAT_COMPAT: u32 = 0;
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&PCAT_COMPAT.to_le_bytes());
    for cpu in 0..num_cpus {
        let lapic = MadtLocalApic {
            entry_type: 0,
            length: size_of::<MadtLocalApic>() as u8,
            processor_uid: cpu,
            apic_id: cpu,
            flags: 1,
        };
        body.extend_from_slice(lapic.as_slice());
    }
    let ioapic = MadtIoApic {
        entry_type: 1,
        length: size_of::<MadtIoApic>() as u8,
        ioapic_id: ioapic_id(num_cpus),
        reserved: 0,
        address: IOAPIC_ADDR as u32,
        gsi_base: 0,
    };
    body.extend_from_slice(ioapic.as_slice());
    sdt(*b"APIC", 5, *b"SBXMADT ", &body)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
    sdt(*b"XSDT", 1, *b"SBXXSDT ", &body)
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut rsdp = Rsdp {
        signature: *b"RSD PTR ",
        oem_id: OEM_ID,
        revision: 2,
        length: size_of::<Rsdp>() as u32,
        xsdt_addr,
        ..Rsdp::default()
    };
    // The ACPI 1.0 checksum covers the first 20 bytes, the extended one all 36.
    rsdp.checksum = byte_sum(&rsdp.as_slice()[..20]).wrapping_neg();
    rsdp.extended_checksum = byte_sum(rsdp.as_slice()).wrapping_neg();
    rsdp.as_slice().to_vec()
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

/// Builds RSDP, XSDT, FADT, DSDT and MADT for `num_cpus` CPUs, each with
/// the address it must be written to (RSDP first, at [`RSDP_START`]).
pub fn build_acpi_tables(
    num_cpus: u8,
    virtio: &[VirtioMmioSlot],
) -> Result<Vec<PlacedTable>, AcpiError> {
    if num_cpus == 0 || num_cpus == u8::MAX {
        return Err(AcpiError::CpuCount { num_cpus });
    }
    let dsdt = sdt(*b"DSDT", 2, *b"SBXDSDT ", &dsdt_aml(virtio));
    let madt = madt(num_cpus);

    // The XSDT and FADT sizes do not depend on the addresses they contain.
    let xsdt_addr = align(RSDP_START + size_of::<Rsdp>() as u64);
    let fadt_addr = align(xsdt_addr + (size_of::<SdtHeader>() + 2 * 8) as u64);
    let dsdt_addr = align(fadt_addr + (size_of::<SdtHeader>() + size_of::<FadtBody>()) as u64);
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);
    let end = madt_addr + madt.len() as u64;
    if end > ACPI_LIMIT {
        return Err(AcpiError::TooLarge { end });
    }

    Ok(vec![
        PlacedTable {
            addr: RSDP_START,
            bytes: rsdp(xsdt_addr),
        },
        PlacedTable {
            addr: xsdt_addr,
            bytes: xsdt(&[fadt_addr, madt_addr]),
        },
        PlacedTable {
            addr: fadt_addr,
            bytes: fadt(dsdt_addr),
        },
        PlacedTable {
            addr: dsdt_addr,
            bytes: dsdt,
        },
        PlacedTable {
            addr: madt_addr,
            bytes: madt,
        },
    ])
}

/// Writes the ACPI tables for `num_cpus` CPUs; the RSDP is at [`RSDP_START`].
pub fn setup_acpi<M: GuestMemory>(
    mem: &M,
    num_cpus: u8,
    virtio: &[VirtioMmioSlot],
) -> Result<(), SystemError> {
    for table in build_acpi_tables(num_cpus, virtio)? {
        let addr = GuestAddress(table.addr);
        mem.write_slice(&table.bytes, addr)
            .map_err(|source| SystemError::write("ACPI table", addr, source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::tests::test_memory;

    fn decode<T: ByteValued + Default>(bytes: &[u8]) -> T {
        let mut value = T::default();
        value
            .as_mut_slice()
            .copy_from_slice(&bytes[..size_of::<T>()]);
        value
    }

    /// Reads the table at `addr`, checks its checksum and signature, and
    /// returns it whole.
    fn read_table(mem: &impl GuestMemory, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header: SdtHeader = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(&header.signature, signature);
        let mut bytes = vec![0u8; header.length as usize];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        assert_eq!(
            byte_sum(&bytes),
            0,
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        assert!(addr + bytes.len() as u64 <= ACPI_LIMIT);
        bytes
    }

    struct Tables {
        fadt: Vec<u8>,
        dsdt: Vec<u8>,
        madt: Vec<u8>,
    }

    /// Follows RSDP -> XSDT -> FADT/MADT -> DSDT as a guest would.
    fn walk(num_cpus: u8) -> Tables {
        let mem = test_memory(2 << 20);
        setup_acpi(&mem, num_cpus, &[]).unwrap();

        let rsdp: Rsdp = mem.read_obj(GuestAddress(RSDP_START)).unwrap();
        assert_eq!(&rsdp.signature, b"RSD PTR ");
        assert_eq!(rsdp.revision, 2);
        assert_eq!({ rsdp.length }, 36);
        assert_eq!(byte_sum(&rsdp.as_slice()[..20]), 0, "RSDP checksum");
        assert_eq!(byte_sum(rsdp.as_slice()), 0, "RSDP extended checksum");

        let xsdt = read_table(&mem, rsdp.xsdt_addr, b"XSDT");
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = read_table(&mem, entries[0], b"FACP");
        let madt = read_table(&mem, entries[1], b"APIC");
        let body: FadtBody = decode(&fadt[36..]);
        let dsdt = read_table(&mem, body.x_dsdt, b"DSDT");
        Tables { fadt, dsdt, madt }
    }

    #[test]
    fn fadt_describes_a_hw_reduced_machine() {
        let t = walk(1);
        let header: SdtHeader = decode(&t.fadt);
        assert_eq!((header.revision, header.length), (6, 276));
        let body: FadtBody = decode(&t.fadt[36..]);
        assert_eq!(body.minor_version, 5);
        let flags = body.flags;
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        let boot_arch = body.iapc_boot_arch;
        assert_eq!(
            boot_arch & IAPC_8042,
            0,
            "no 8042 bit: Linux must skip the i8042 probe"
        );
        assert_eq!({ body.reset_reg }, Gas::io_port_u8(0x602));
        assert_eq!(body.reset_value, 1);
        assert_eq!({ body.sleep_control_reg }, Gas::io_port_u8(0x600));
        assert_eq!({ body.sleep_status_reg }, Gas::io_port_u8(0x601));
        // Raw offsets from the ACPI 6.5 FADT layout.
        assert_eq!(&t.fadt[116..120], &[1, 8, 0, 1]); // RESET_REG: system I/O, 8 bits, byte access
        assert_eq!(
            u64::from_le_bytes(t.fadt[120..128].try_into().unwrap()),
            0x602
        );
        assert_eq!(t.fadt[128], 1); // RESET_VALUE
        assert_eq!(u64::from_le_bytes(t.fadt[140..148].try_into().unwrap()), {
            body.x_dsdt
        });
        assert_eq!(
            u64::from_le_bytes(t.fadt[248..256].try_into().unwrap()),
            0x600
        );
        assert_eq!(
            u64::from_le_bytes(t.fadt[260..268].try_into().unwrap()),
            0x601
        );
        assert_eq!(
            u32::from_le_bytes(t.fadt[112..116].try_into().unwrap()),
            flags
        );
    }

    #[test]
    fn dsdt_holds_the_s5_package_and_com1() {
        let t = walk(1);
        assert_eq!(t.dsdt.len(), 36 + 13 + 52);
        assert_eq!(
            &t.dsdt[36..49],
            &[0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00]
        );
        assert_eq!(&t.dsdt[49..], &sb_scope_aml(&[])[..]);
    }

    #[test]
    fn com1_aml_bytes() {
        // Hand-assembled from the ASL in com1_aml's documentation.
        let expected: Vec<u8> = vec![
            0x10, 0x33, b'\\', b'_', b'S', b'B', b'_', // Scope (\_SB), PkgLength 51
            0x5b, 0x82, 0x2b, b'C', b'O', b'M', b'1', // Device (COM1), PkgLength 43
            0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x05, 0x01, // _HID PNP0501
            0x08, b'_', b'U', b'I', b'D', 0x00, // _UID 0
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x10, 0x0a, 0x0d, // _CRS Buffer(13)
            0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, // IO 0x3f8, 8 ports
            0x22, 0x10, 0x00, // IRQ 4
            0x79, 0x00, // end tag
        ];
        assert_eq!(sb_scope_aml(&[]), expected);
    }

    #[test]
    fn virtio_mmio_device_bytes() {
        let aml = virtio_mmio_device_aml(
            0x1a,
            VirtioMmioSlot {
                base: 0xd000_1000,
                irq: 6,
            },
        );
        let expected: Vec<u8> = [
            &[0x5b, 0x82, 59, b'V', b'M', b'1', b'A'][..],
            &[0x08, b'_', b'H', b'I', b'D', 0x0d],
            b"LNRO0005\0",
            &[0x08, b'_', b'U', b'I', b'D', 0x0a, 0x1a],
            &[0x08, b'_', b'C', b'R', b'S', 0x11, 26, 0x0a, 23],
            &[
                0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00,
            ],
            &[0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0],
            &[0x79, 0x00],
        ]
        .concat();
        assert_eq!(aml, expected);
    }

    #[test]
    fn scope_grows_with_virtio_devices() {
        let slots: Vec<VirtioMmioSlot> = (0..3)
            .map(|i| VirtioMmioSlot {
                base: 0xd000_0000 + i * 0x1000,
                irq: 5 + i as u32,
            })
            .collect();
        let scope = sb_scope_aml(&slots);
        // Two-byte PkgLength once past 63 bytes: 0x4N | low nibble, then the rest.
        let body_len = 5 + com1_aml().len() + 3 * 61;
        let total = body_len + 2;
        assert_eq!(scope[0], 0x10);
        assert_eq!(scope[1], 0x40 | (total & 0xf) as u8);
        assert_eq!(usize::from(scope[2]), total >> 4);
        assert_eq!(scope.len(), 1 + total);
        assert!(scope.windows(4).any(|w| w == b"VM02"));
    }

    #[test]
    fn aml_package_lengths() {
        assert_eq!(aml_package(0x10, &[0; 3]), vec![0x10, 4, 0, 0, 0]);
        let long = aml_package(0x10, &[0; 100]);
        assert_eq!(&long[..3], &[0x10, 0x40 | (102 & 0xf), 102 >> 4]);
        assert_eq!(long.len(), 103);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        for num_cpus in [1u8, 2, 32, 254] {
            let t = walk(num_cpus);
            let header: SdtHeader = decode(&t.madt);
            assert_eq!(header.revision, 5);
            assert_eq!(
                u32::from_le_bytes(t.madt[36..40].try_into().unwrap()),
                0xfee0_0000
            );
            assert_eq!(
                u32::from_le_bytes(t.madt[40..44].try_into().unwrap()),
                0,
                "PCAT_COMPAT"
            );
            let mut rest = &t.madt[44..];
            let mut cpus = 0u8;
            let mut ioapics = Vec::new();
            while !rest.is_empty() {
                let (kind, len) = (rest[0], usize::from(rest[1]));
                match kind {
                    0 => {
                        let lapic: MadtLocalApic = decode(rest);
                        assert_eq!(len, 8);
                        assert_eq!((lapic.processor_uid, lapic.apic_id), (cpus, cpus));
                        assert_eq!({ lapic.flags }, 1);
                        cpus += 1;
                    }
                    1 => {
                        assert_eq!(len, 12);
                        ioapics.push(decode::<MadtIoApic>(rest));
                    }
                    other => panic!("unexpected MADT entry {other}"),
                }
                rest = &rest[len..];
            }
            assert_eq!(cpus, num_cpus);
            assert_eq!(ioapics.len(), 1);
            assert_eq!(ioapics[0].ioapic_id, num_cpus);
            assert_eq!({ ioapics[0].address }, 0xfec0_0000);
            assert_eq!({ ioapics[0].gsi_base }, 0);
        }
    }

    #[test]
    fn tables_do_not_overlap() {
        let tables = build_acpi_tables(8, &[]).unwrap();
        for pair in tables.windows(2) {
            assert!(pair[0].addr + pair[0].bytes.len() as u64 <= pair[1].addr);
            assert_eq!(pair[1].addr % TABLE_ALIGN, 0);
        }
    }

    #[test]
    fn cpu_count_bounds() {
        assert_eq!(
            build_acpi_tables(0, &[]),
            Err(AcpiError::CpuCount { num_cpus: 0 })
        );
        assert_eq!(
            build_acpi_tables(255, &[]),
            Err(AcpiError::CpuCount { num_cpus: 255 })
        );
    }
}
