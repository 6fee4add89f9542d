//! x86_64 vCPU state at boot: MSRs, FPU, local APIC.
//! (Registers, segments and page tables come from the boot crate.)

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// MSR indices set at boot.
mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}
/// IA32_MISC_ENABLE: fast-string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Local APIC register offsets and delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Why vCPU state could not be set.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// An ioctl failed.
    #[error("{what}: {source}")]
    Ioctl {
        /// Which operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some MSRs.
    #[error("KVM set only {set} of {wanted} boot MSRs (first rejected: {first_rejected:#x})")]
    PartialMsrs {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
        /// Index of the first MSR KVM refused.
        first_rejected: u32,
    },
    /// Building the MSR list failed.
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |source| ArchError::Ioctl { what, source }
}

/// The MSR values a vCPU starts with (Linux's expectations at entry).
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(msr::IA32_SYSENTER_CS, 0),
        entry(msr::IA32_SYSENTER_ESP, 0),
        entry(msr::IA32_SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::IA32_TSC, 0),
        entry(msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(msr::MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// Sets the boot MSRs, keeping only those KVM lists as supported.
pub fn setup_msrs(vcpu: &VcpuFd, supported: &[u32]) -> Result<(), ArchError> {
    let entries: Vec<kvm_msr_entry> = boot_msr_entries()
        .into_iter()
        .filter(|e| supported.is_empty() || supported.contains(&e.index))
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| ArchError::MsrList(format!("{e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(ArchError::PartialMsrs {
            set,
            wanted: entries.len(),
            first_rejected: entries.get(set).map(|e| e.index).unwrap_or(0),
        });
    }
    Ok(())
}

/// The FPU state a vCPU starts with (x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Programs the local APIC: LINT0 as ExtINT (the PIC), LINT1 as NMI.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), ArchError> {
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))
}

fn set_lvt_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = &mut lapic.regs[offset..offset + 4];
    let bytes: [u8; 4] = [reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8];
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
        *dst = src as _;
    }
}

fn lvt_value(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let reg = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8])
}

/// LVT LINT0/LINT1 delivery modes (for tests and diagnostics).
pub fn lint_modes(lapic: &kvm_lapic_state) -> (u32, u32) {
    (
        (lvt_value(lapic, APIC_LVT_LINT0) >> 8) & 7,
        (lvt_value(lapic, APIC_LVT_LINT1) >> 8) & 7,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_mtrr_and_fast_strings() {
        let msrs = boot_msr_entries();
        let get = |i| msrs.iter().find(|e| e.index == i).unwrap().data;
        assert_eq!(get(msr::MTRR_DEF_TYPE), (1 << 11) | 6);
        assert_eq!(get(msr::IA32_MISC_ENABLE), 1);
        assert_eq!(get(msr::LSTAR), 0);
    }

    #[test]
    fn lvt_programming_keeps_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT_LINT0] = 0x11;
        lapic.regs[APIC_LVT_LINT0 + 2] = 0x01; // mask bit 16
        set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
        assert_eq!(lint_modes(&lapic), (APIC_MODE_EXTINT, APIC_MODE_NMI));
        assert_eq!(lvt_value(&lapic, APIC_LVT_LINT0), 0x0001_0711);
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!(fpu.fcw, 0x37f);
        assert_eq!(fpu.mxcsr, 0x1f80);
    }
}
