//! The boot GDT and IDT.
//!
//! The GDT holds four descriptors: null, code, data and TSS. The code
//! descriptor depends on the boot protocol: 64-bit (L bit) for the Linux
//! 64-bit protocol, 32-bit (D bit) for PVH, which starts the kernel in
//! 32-bit protected mode. The same table is used to write guest memory and
//! to fill the hidden segment state of the vCPU, so the two always agree.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::kernel::BootProtocol;
use super::layout::{GDT_START, IDT_START};
use super::SystemError;

/// Number of GDT entries.
pub const GDT_ENTRIES: usize = 4;
/// Index of the code segment descriptor (selector 0x08).
pub const CODE_INDEX: usize = 1;
/// Index of the data segment descriptor (selector 0x10).
pub const DATA_INDEX: usize = 2;
/// Index of the TSS descriptor (selector 0x18).
pub const TSS_INDEX: usize = 3;

/// Flags (access byte in bits 0-7, G/DB/L/AVL in bits 12-15) of a 64-bit code segment.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit code segment (PVH).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat read/write data segment.
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a busy 64-bit TSS (4 KiB granularity).
pub const TSS_FLAGS: u16 = 0x808b;
/// Flags of a busy 32-bit TSS (byte granularity), as PVH requires.
pub const TSS32_FLAGS: u16 = 0x008b;
/// Limit of the PVH TSS (a minimal 32-bit TSS).
pub const TSS32_LIMIT: u32 = 0x67;
/// Limit field of the flat segments (in 4 KiB units when G is set: 4 GiB).
pub const FLAT_LIMIT: u32 = 0xfffff;

/// Encodes a segment descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT for `protocol`.
pub fn gdt_table(protocol: BootProtocol) -> [u64; GDT_ENTRIES] {
    let (code, tss) = match protocol {
        BootProtocol::Linux64 => (
            gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
            gdt_entry(TSS_FLAGS, 0, FLAT_LIMIT),
        ),
        // PVH: 32-bit code, and a 32-bit TSS with base 0 and limit 0x67.
        BootProtocol::Pvh => (
            gdt_entry(CODE32_FLAGS, 0, FLAT_LIMIT),
            gdt_entry(TSS32_FLAGS, 0, TSS32_LIMIT),
        ),
    };
    [0, code, gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT), tss]
}

/// Decodes descriptor `index` of `table` into the vCPU's hidden segment state.
pub fn kvm_segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With 4 KiB granularity the limit covers the whole last page.
        limit: if granularity == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT for `protocol` at [`GDT_START`] and an empty IDT at [`IDT_START`].
pub fn setup_gdt_idt<M: GuestMemory>(mem: &M, protocol: BootProtocol) -> Result<(), SystemError> {
    for (i, entry) in gdt_table(protocol).iter().enumerate() {
        let addr = GuestAddress(GDT_START + (i * 8) as u64);
        mem.write_obj(*entry, addr)
            .map_err(|source| SystemError::write("GDT", addr, source))?;
    }
    let idt = GuestAddress(IDT_START);
    mem.write_obj(0u64, idt)
        .map_err(|source| SystemError::write("IDT", idt, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::tests::test_memory;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        assert_eq!(
            gdt_entry(CODE64_FLAGS, 0, FLAT_LIMIT),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, FLAT_LIMIT), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(CODE32_FLAGS, 0, FLAT_LIMIT),
            0x00cf_9b00_0000_ffff
        );
        // Base bits are split across the descriptor.
        assert_eq!(gdt_entry(0x93, 0x1234_5678, 0xabcde), 0x120a_9334_5678_bcde);
    }

    #[test]
    fn linux64_code_segment_decodes_as_long_mode() {
        let table = gdt_table(BootProtocol::Linux64);
        let cs = kvm_segment_from_gdt(table[CODE_INDEX], CODE_INDEX);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x08));
        assert_eq!((cs.type_, cs.present, cs.dpl, cs.s), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));
    }

    #[test]
    fn pvh_code_segment_is_32_bit() {
        let table = gdt_table(BootProtocol::Pvh);
        let cs = kvm_segment_from_gdt(table[CODE_INDEX], CODE_INDEX);
        assert_eq!((cs.l, cs.db, cs.g, cs.type_), (0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let tr = kvm_segment_from_gdt(table[TSS_INDEX], TSS_INDEX);
        assert_eq!(
            (tr.base, tr.limit, tr.g, tr.type_, tr.present),
            (0, 0x67, 0, 0xb, 1)
        );
    }

    #[test]
    fn data_and_tss_segments() {
        let table = gdt_table(BootProtocol::Linux64);
        let ds = kvm_segment_from_gdt(table[DATA_INDEX], DATA_INDEX);
        assert_eq!(
            (ds.base, ds.limit, ds.selector, ds.type_),
            (0, 0xffff_ffff, 0x10, 0x3)
        );
        assert_eq!((ds.db, ds.s, ds.present, ds.l), (1, 1, 1, 0));
        let tr = kvm_segment_from_gdt(table[TSS_INDEX], TSS_INDEX);
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.present, tr.g),
            (0x18, 0xb, 0, 1, 1)
        );
        let null = kvm_segment_from_gdt(table[0], 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn gdt_and_idt_are_written() {
        let mem = test_memory(16 << 20);
        mem.write_obj(0xdead_beef_u64, GuestAddress(IDT_START))
            .unwrap();
        setup_gdt_idt(&mem, BootProtocol::Linux64).unwrap();
        for (i, expected) in gdt_table(BootProtocol::Linux64).iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *expected);
        }
        assert_eq!(mem.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);

        setup_gdt_idt(&mem, BootProtocol::Pvh).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(code, gdt_entry(CODE32_FLAGS, 0, FLAT_LIMIT));
    }
}
