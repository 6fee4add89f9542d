//! Boot register state of an aarch64 vCPU, per the arm64 Linux boot protocol
//! (Documentation/arch/arm64/booting.rst): the boot vCPU starts at the
//! kernel entry in EL1h with all of DAIF masked, X0 holding the FDT address
//! and X1-X3 zero. Secondary vCPUs stay powered off until PSCI CPU_ON.
//!
//! Plain data: the VMM writes these values with KVM_SET_ONE_REG.

/// PSTATE.M: EL1 using SP_EL1 (EL1h).
pub const PSR_MODE_EL1H: u64 = 0x5;
/// PSTATE.F: FIQ masked.
pub const PSR_F_BIT: u64 = 1 << 6;
/// PSTATE.I: IRQ masked.
pub const PSR_I_BIT: u64 = 1 << 7;
/// PSTATE.A: SError masked.
pub const PSR_A_BIT: u64 = 1 << 8;
/// PSTATE.D: debug exceptions masked.
pub const PSR_D_BIT: u64 = 1 << 9;
/// PSTATE at the kernel entry: EL1h with D, A, I and F masked (0x3c5).
pub const BOOT_PSTATE: u64 = PSR_MODE_EL1H | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT;

/// Register values of the boot vCPU at the kernel entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRegs {
    /// Program counter: the kernel entry point.
    pub pc: u64,
    /// X0: guest physical address of the FDT.
    pub x0: u64,
    /// PSTATE.
    pub pstate: u64,
}

/// The boot vCPU's registers for a kernel entered at `entry` with the FDT at `fdt_addr`.
pub fn boot_regs(entry: u64, fdt_addr: u64) -> BootRegs {
    BootRegs {
        pc: entry,
        x0: fdt_addr,
        pstate: BOOT_PSTATE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_state() {
        let regs = boot_regs(0x8000_0000, 0x8fe0_0000);
        assert_eq!(regs.pc, 0x8000_0000);
        assert_eq!(regs.x0, 0x8fe0_0000);
        assert_eq!(regs.pstate, 0x3c5);
    }
}
