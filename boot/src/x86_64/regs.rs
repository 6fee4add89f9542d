//! Initial vCPU register state for the boot vCPU.

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestAddress;

use super::gdt::{gdt_table, kvm_segment_from_gdt, CODE_INDEX, DATA_INDEX, GDT_ENTRIES, TSS_INDEX};
use super::kernel::{BootProtocol, LoadedKernel};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PVH_INFO_START, ZERO_PAGE_START};

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 set (interrupts off).
pub const RFLAGS_BOOT: u64 = 0x2;

/// General purpose registers at the kernel entry.
///
/// Linux64: RIP = entry, RSP = RBP = boot stack, RSI = zero page.
/// PVH: RIP = entry, RBX = `hvm_start_info`.
pub fn boot_regs(kernel: &LoadedKernel) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: kernel.entry.0,
        rflags: RFLAGS_BOOT,
        ..kvm_regs::default()
    };
    match kernel.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// Fills the segment, descriptor table and control registers of `sregs`
/// (as read from KVM) for `protocol`; other fields (APIC base, ...) are
/// kept.
///
/// Linux64: long mode with paging through `cr3` (from
/// [`setup_page_tables`](super::setup_page_tables)). PVH: 32-bit protected
/// mode, paging off (`cr3` is not used). The segments are decoded from the
/// same GDT that [`setup_gdt_idt`](super::setup_gdt_idt) writes.
pub fn boot_sregs(sregs: &mut kvm_sregs, protocol: BootProtocol, cr3: GuestAddress) {
    let gdt = gdt_table(protocol);
    let code = kvm_segment_from_gdt(gdt[CODE_INDEX], CODE_INDEX);
    let data = kvm_segment_from_gdt(gdt[DATA_INDEX], DATA_INDEX);
    let tss = kvm_segment_from_gdt(gdt[TSS_INDEX], TSS_INDEX);

    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = cr3.0;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::layout::{CMDLINE_MAX_SIZE, PML4_START};

    fn kernel(protocol: BootProtocol) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol,
            kernel_end: GuestAddress(0x200_0000),
            setup_header: None,
            cmdline_max: CMDLINE_MAX_SIZE,
        }
    }

    #[test]
    fn linux64_registers() {
        let regs = boot_regs(&kernel(BootProtocol::Linux64));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!((regs.rsp, regs.rbp), (0x8ff0, 0x8ff0));
        assert_eq!(regs.rsi, 0x7000);
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rbx, 0);
    }

    #[test]
    fn pvh_registers() {
        let regs = boot_regs(&kernel(BootProtocol::Pvh));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rbx, 0x6000);
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rsi, 0);
    }

    #[test]
    fn linux64_long_mode() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010, // reset value: CD | NW | ET
            apic_base: 0xfee0_0900,
            ..kvm_sregs::default()
        };
        boot_sregs(&mut sregs, BootProtocol::Linux64, GuestAddress(PML4_START));
        assert_eq!(sregs.cr0, 0x8000_0011);
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.cr4, X86_CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0x520, 7));
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x08, 1, 0));
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x10, 3, 1));
        }
        assert_eq!((sregs.tr.selector, sregs.tr.type_), (0x18, 0xb));
        assert_eq!(sregs.apic_base, 0xfee0_0900, "unrelated state is kept");
    }

    #[test]
    fn pvh_protected_mode_without_paging() {
        let mut sregs = kvm_sregs::default();
        boot_sregs(&mut sregs, BootProtocol::Pvh, GuestAddress(PML4_START));
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!(
            (sregs.cs.l, sregs.cs.db, sregs.cs.limit),
            (0, 1, 0xffff_ffff)
        );
        assert_eq!(
            (sregs.ds.db, sregs.ds.limit, sregs.ds.type_),
            (1, 0xffff_ffff, 3)
        );
        assert_eq!(sregs.tr.limit, 0x67);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
    }
}
