//! Intel MultiProcessor Specification 1.4 tables.
//!
//! Kernels built without ACPI find their CPUs and the IOAPIC here. The
//! floating pointer and the configuration table sit together in the EBDA
//! at [`MPTABLE_START`] and must end below [`MPTABLE_LIMIT`], which bounds
//! the number of CPUs.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

use super::layout::{IOAPIC_ADDR, IOAPIC_MAX_IRQ, LAPIC_ADDR, MPTABLE_LIMIT, MPTABLE_START};
use super::SystemError;

/// MP floating pointer structure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpFloatingPointer {
    /// `_MP_`.
    pub signature: [u8; 4],
    /// Address of the configuration table.
    pub config_table: u32,
    /// Length in 16-byte units (1).
    pub length: u8,
    /// Specification revision (4 = 1.4).
    pub spec_rev: u8,
    /// Makes the 16 bytes sum to zero.
    pub checksum: u8,
    /// Feature bytes; all zero: a configuration table is present.
    pub features: [u8; 5],
}

/// MP configuration table header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpConfigHeader {
    /// `PCMP`.
    pub signature: [u8; 4],
    /// Length of the header plus all entries.
    pub length: u16,
    /// Specification revision (4).
    pub spec_rev: u8,
    /// Makes the whole table sum to zero.
    pub checksum: u8,
    /// OEM id, space padded.
    pub oem_id: [u8; 8],
    /// Product id, space padded.
    pub product_id: [u8; 12],
    /// OEM table pointer (none).
    pub oem_table: u32,
    /// OEM table size (none).
    pub oem_table_size: u16,
    /// Number of entries after the header.
    pub entry_count: u16,
    /// Local APIC address.
    pub lapic_addr: u32,
    /// Extended table length (none).
    pub ext_length: u16,
    /// Extended table checksum (none).
    pub ext_checksum: u8,
    /// Reserved.
    pub reserved: u8,
}

/// Processor entry (type 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpProcessor {
    /// 0.
    pub entry_type: u8,
    /// Local APIC id.
    pub apic_id: u8,
    /// Local APIC version.
    pub apic_version: u8,
    /// Bit 0 enabled, bit 1 bootstrap processor.
    pub cpu_flags: u8,
    /// CPUID signature (stepping/model/family).
    pub signature: u32,
    /// CPUID feature flags.
    pub features: u32,
    /// Reserved.
    pub reserved: [u32; 2],
}

/// Bus entry (type 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpBus {
    /// 1.
    pub entry_type: u8,
    /// Bus id.
    pub bus_id: u8,
    /// Bus type string, space padded.
    pub bus_type: [u8; 6],
}

/// I/O APIC entry (type 2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpIoApic {
    /// 2.
    pub entry_type: u8,
    /// I/O APIC id.
    pub apic_id: u8,
    /// I/O APIC version.
    pub apic_version: u8,
    /// Bit 0: usable.
    pub flags: u8,
    /// MMIO address.
    pub addr: u32,
}

/// I/O interrupt (type 3) and local interrupt (type 4) assignment entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpInterrupt {
    /// 3 (I/O) or 4 (local).
    pub entry_type: u8,
    /// 0 INT, 1 NMI, 2 SMI, 3 ExtINT.
    pub irq_type: u8,
    /// Polarity and trigger mode; 0 = conforms to the bus.
    pub irq_flags: u16,
    /// Source bus id.
    pub src_bus: u8,
    /// Source bus IRQ.
    pub src_irq: u8,
    /// Destination (I/O or local) APIC id; 0xff = all local APICs.
    pub dst_apic: u8,
    /// Destination pin (IOAPIC INTIN or LINTIN).
    pub dst_pin: u8,
}

// SAFETY: the MP structures are `repr(C)`, contain only integers and byte
// arrays, have no padding (sizes checked below) and every bit pattern is a
// valid value.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: as above.
unsafe impl ByteValued for MpBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: as above.
unsafe impl ByteValued for MpInterrupt {}

const _: () = {
    assert!(size_of::<MpFloatingPointer>() == 16);
    assert!(size_of::<MpConfigHeader>() == 44);
    assert!(size_of::<MpProcessor>() == 20);
    assert!(size_of::<MpBus>() == 8);
    assert!(size_of::<MpIoApic>() == 8);
    assert!(size_of::<MpInterrupt>() == 8);
};

/// Entry type: processor.
pub const MP_PROCESSOR: u8 = 0;
/// Entry type: bus.
pub const MP_BUS: u8 = 1;
/// Entry type: I/O APIC.
pub const MP_IOAPIC: u8 = 2;
/// Entry type: I/O interrupt assignment.
pub const MP_IO_INTERRUPT: u8 = 3;
/// Entry type: local interrupt assignment.
pub const MP_LOCAL_INTERRUPT: u8 = 4;
/// Interrupt type: vectored interrupt.
pub const MP_INT: u8 = 0;
/// Interrupt type: NMI.
pub const MP_NMI: u8 = 1;
/// Interrupt type: external (8259) interrupt.
pub const MP_EXTINT: u8 = 3;
/// Processor flag: usable.
pub const CPU_ENABLED: u8 = 1;
/// Processor flag: bootstrap processor.
pub const CPU_BSP: u8 = 2;

const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPUID signature reported for every CPU (family 6).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID features reported: FPU and APIC.
const CPU_FEATURES: u32 = 0x201;
/// Fixed size of everything but the processor entries.
const FIXED_SIZE: usize = size_of::<MpFloatingPointer>()
    + size_of::<MpConfigHeader>()
    + size_of::<MpBus>()
    + size_of::<MpIoApic>()
    + (IOAPIC_MAX_IRQ as usize + 1) * size_of::<MpInterrupt>()
    + 2 * size_of::<MpInterrupt>();

/// Most CPUs whose MP table fits below [`MPTABLE_LIMIT`].
pub const MAX_CPUS: u8 =
    (((MPTABLE_LIMIT - MPTABLE_START) as usize - FIXED_SIZE) / size_of::<MpProcessor>()) as u8;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// Zero CPUs.
    #[error("the MP table needs at least one CPU")]
    NoCpus,
    /// The table would not fit in the EBDA.
    #[error(
        "{num_cpus} CPUs do not fit in the MP table below {MPTABLE_LIMIT:#x}: at most {MAX_CPUS}"
    )]
    TooManyCpus {
        /// Requested CPUs.
        num_cpus: u8,
    },
}

/// The APIC id of the I/O APIC: the first id after the CPUs'.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// Sum of all bytes, modulo 256.
pub(crate) fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Builds the floating pointer followed by the configuration table, as
/// they are to be written at [`MPTABLE_START`].
pub fn build_mptable(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus { num_cpus });
    }
    let ioapic = ioapic_id(num_cpus);

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BSP } else { 0 };
        push(
            MpProcessor {
                entry_type: MP_PROCESSOR,
                apic_id: cpu,
                apic_version: LAPIC_VERSION,
                cpu_flags: CPU_ENABLED | bsp,
                signature: CPU_SIGNATURE,
                features: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        MpBus {
            entry_type: MP_BUS,
            bus_id: 0,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    push(
        MpIoApic {
            entry_type: MP_IOAPIC,
            apic_id: ioapic,
            apic_version: IOAPIC_VERSION,
            flags: 1,
            addr: IOAPIC_ADDR as u32,
        }
        .as_slice(),
    );
    // ISA IRQ n is wired to IOAPIC pin n, as in KVM's default GSI routing;
    // pins 16..=23 serve the virtio-mmio devices.
    for irq in 0..=IOAPIC_MAX_IRQ as u8 {
        push(
            MpInterrupt {
                entry_type: MP_IO_INTERRUPT,
                irq_type: MP_INT,
                irq_flags: 0,
                src_bus: 0,
                src_irq: irq,
                dst_apic: ioapic,
                dst_pin: irq,
            }
            .as_slice(),
        );
    }
    // 8259 on LINT0 of the BSP, NMI on LINT1 of every CPU.
    for (irq_type, dst_apic, dst_pin) in [(MP_EXTINT, 0, 0), (MP_NMI, 0xff, 1)] {
        push(
            MpInterrupt {
                entry_type: MP_LOCAL_INTERRUPT,
                irq_type,
                irq_flags: 0,
                src_bus: 0,
                src_irq: 0,
                dst_apic,
                dst_pin,
            }
            .as_slice(),
        );
    }

    let header_len = size_of::<MpConfigHeader>();
    let mut header = MpConfigHeader {
        signature: *b"PCMP",
        // Bounded by MAX_CPUS to well under 1 KiB.
        length: (header_len + entries.len()) as u16,
        spec_rev: 4,
        checksum: 0,
        oem_id: *b"SANDBOX ",
        product_id: *b"MICROVM     ",
        oem_table: 0,
        oem_table_size: 0,
        entry_count: count,
        lapic_addr: LAPIC_ADDR as u32,
        ext_length: 0,
        ext_checksum: 0,
        reserved: 0,
    };
    header.checksum = byte_sum(header.as_slice())
        .wrapping_add(byte_sum(&entries))
        .wrapping_neg();

    let fp_len = size_of::<MpFloatingPointer>();
    let mut fp = MpFloatingPointer {
        signature: *b"_MP_",
        config_table: (MPTABLE_START + fp_len as u64) as u32,
        length: 1,
        spec_rev: 4,
        checksum: 0,
        features: [0; 5],
    };
    fp.checksum = byte_sum(fp.as_slice()).wrapping_neg();

    let mut out = Vec::with_capacity(fp_len + header_len + entries.len());
    out.extend_from_slice(fp.as_slice());
    out.extend_from_slice(header.as_slice());
    out.extend_from_slice(&entries);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs at [`MPTABLE_START`].
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), SystemError> {
    let table = build_mptable(num_cpus)?;
    let addr = GuestAddress(MPTABLE_START);
    mem.write_slice(&table, addr)
        .map_err(|source| SystemError::write("MP table", addr, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::tests::test_memory;

    fn decode<T: ByteValued + Default>(bytes: &[u8]) -> T {
        let mut value = T::default();
        value.as_mut_slice().copy_from_slice(bytes);
        value
    }

    /// Parses a written MP table back, checking structure and checksums;
    /// returns the header and the entries, each as (type, bytes).
    fn parse(mem: &impl GuestMemory) -> (MpConfigHeader, Vec<(u8, Vec<u8>)>) {
        let fp: MpFloatingPointer = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&fp.signature, b"_MP_");
        assert_eq!((fp.length, fp.spec_rev), (1, 4));
        assert_eq!(byte_sum(fp.as_slice()), 0, "floating pointer checksum");

        let table_addr = GuestAddress(u64::from(fp.config_table));
        let header: MpConfigHeader = mem.read_obj(table_addr).unwrap();
        assert_eq!(&header.signature, b"PCMP");
        let mut table = vec![0u8; usize::from(header.length)];
        mem.read_slice(&mut table, table_addr).unwrap();
        assert_eq!(byte_sum(&table), 0, "configuration table checksum");
        assert!(table_addr.0 + table.len() as u64 <= MPTABLE_LIMIT);

        let mut entries = Vec::new();
        let mut rest = &table[size_of::<MpConfigHeader>()..];
        while let Some(&kind) = rest.first() {
            let len = if kind == MP_PROCESSOR { 20 } else { 8 };
            entries.push((kind, rest[..len].to_vec()));
            rest = &rest[len..];
        }
        assert_eq!(entries.len(), usize::from(header.entry_count));
        (header, entries)
    }

    fn check(num_cpus: u8) {
        let mem = test_memory(2 << 20);
        setup_mptable(&mem, num_cpus).unwrap();
        let (header, entries) = parse(&mem);
        assert_eq!(u64::from(header.lapic_addr), LAPIC_ADDR);

        let cpus: Vec<MpProcessor> = entries
            .iter()
            .filter(|(t, _)| *t == MP_PROCESSOR)
            .map(|(_, b)| decode(b))
            .collect();
        assert_eq!(cpus.len(), usize::from(num_cpus));
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(usize::from(cpu.apic_id), i);
            let expected = if i == 0 {
                CPU_ENABLED | CPU_BSP
            } else {
                CPU_ENABLED
            };
            assert_eq!(cpu.cpu_flags, expected);
        }

        let buses: Vec<_> = entries.iter().filter(|(t, _)| *t == MP_BUS).collect();
        assert_eq!(buses.len(), 1);
        assert_eq!(&buses[0].1[2..8], b"ISA   ");

        let ioapics: Vec<MpIoApic> = entries
            .iter()
            .filter(|(t, _)| *t == MP_IOAPIC)
            .map(|(_, b)| decode(b))
            .collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(u64::from(ioapics[0].addr), IOAPIC_ADDR);
        assert_eq!(ioapics[0].apic_id, num_cpus);

        let io_ints: Vec<MpInterrupt> = entries
            .iter()
            .filter(|(t, _)| *t == MP_IO_INTERRUPT)
            .map(|(_, b)| decode(b))
            .collect();
        assert_eq!(io_ints.len(), 24);
        for (pin, int) in io_ints.iter().enumerate() {
            assert_eq!(usize::from(int.src_irq), pin);
            assert_eq!(usize::from(int.dst_pin), pin);
            assert_eq!(int.dst_apic, num_cpus);
            assert_eq!(int.irq_type, MP_INT);
        }

        let local: Vec<MpInterrupt> = entries
            .iter()
            .filter(|(t, _)| *t == MP_LOCAL_INTERRUPT)
            .map(|(_, b)| decode(b))
            .collect();
        assert_eq!(local.len(), 2);
        assert_eq!((local[0].irq_type, local[0].dst_pin), (MP_EXTINT, 0));
        assert_eq!(
            (local[1].irq_type, local[1].dst_pin, local[1].dst_apic),
            (MP_NMI, 1, 0xff)
        );
    }

    #[test]
    fn one_cpu() {
        check(1);
    }

    #[test]
    fn two_cpus() {
        check(2);
    }

    #[test]
    fn thirty_two_cpus() {
        check(32);
    }

    #[test]
    fn max_cpus_fits_exactly_below_the_limit() {
        assert_eq!(MAX_CPUS, 37);
        check(MAX_CPUS);
        let len = build_mptable(MAX_CPUS).unwrap().len() as u64;
        assert!(MPTABLE_START + len <= MPTABLE_LIMIT);
    }

    #[test]
    fn too_many_or_no_cpus() {
        assert_eq!(
            build_mptable(MAX_CPUS + 1),
            Err(MptableError::TooManyCpus {
                num_cpus: MAX_CPUS + 1
            })
        );
        assert_eq!(build_mptable(0), Err(MptableError::NoCpus));
    }
}
