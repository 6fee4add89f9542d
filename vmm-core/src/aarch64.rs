//! aarch64 KVM glue: vCPU initialisation, boot registers through
//! KVM_SET_ONE_REG, and the in-kernel GICv3.
//!
//! Compiled only for aarch64 targets (`cfg(target_arch = "aarch64")` in
//! lib.rs). The development and CI machines are x86_64 with no aarch64
//! standard library or cross toolchain, so this file is NOT built there;
//! the device-tree and register-state code it relies on lives in
//! `boot::aarch64` and is unit-tested on x86_64.

use std::mem::offset_of;

use boot::aarch64::layout;
use boot::aarch64::regs::BootRegs;
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_regs, kvm_vcpu_init, user_pt_regs,
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
    KVM_DEV_TYPE_ARM_VGIC_V3, KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
    KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VcpuFd, VmFd};

/// Interrupts the GIC implements: 32 private + 96 shared.
const GIC_NR_IRQS: u32 = 128;

/// ONE_REG id of a 64-bit core register at byte `offset` in `kvm_regs`.
fn core_reg_id(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

fn set_core_reg(vcpu: &VcpuFd, offset: usize, value: u64) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_one_reg(core_reg_id(offset), &value.to_le_bytes())
        .map(|_| ())
}

/// Initialises a vCPU for the host's preferred target with PSCI 0.2;
/// secondary vCPUs start powered off until the guest's PSCI CPU_ON.
pub fn init_vcpu(vm: &VmFd, vcpu: &VcpuFd, index: u8) -> Result<(), kvm_ioctls::Error> {
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)?;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&init)
}

/// Writes PSTATE, PC and X0 of the boot vCPU.
pub fn set_boot_regs(vcpu: &VcpuFd, regs: &BootRegs) -> Result<(), kvm_ioctls::Error> {
    let base = offset_of!(kvm_regs, regs);
    set_core_reg(vcpu, base + offset_of!(user_pt_regs, pstate), regs.pstate)?;
    set_core_reg(vcpu, base + offset_of!(user_pt_regs, pc), regs.pc)?;
    set_core_reg(vcpu, base + offset_of!(user_pt_regs, regs), regs.x0)
}

fn set_attr(
    gic: &DeviceFd,
    group: u32,
    attr: u64,
    value: *const u64,
) -> Result<(), kvm_ioctls::Error> {
    gic.set_device_attr(&kvm_device_attr {
        group,
        attr,
        addr: value as u64,
        flags: 0,
    })
}

/// Creates the in-kernel GICv3 (distributor + one redistributor per vCPU)
/// at the addresses the FDT announces. Call after every vCPU is created.
pub fn create_gic_v3(vm: &VmFd) -> Result<DeviceFd, kvm_ioctls::Error> {
    let mut device = kvm_create_device {
        type_: KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm.create_device(&mut device)?;
    let dist = layout::GIC_DIST_START;
    let redist = layout::GICV3_REDIST_START;
    let nr_irqs = u64::from(GIC_NR_IRQS);
    // KVM reads each attribute value through the pointer during the ioctl;
    // the locals outlive the calls.
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
        &dist,
    )?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
        &redist,
    )?;
    set_attr(&gic, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, &nr_irqs)?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        std::ptr::null(),
    )?;
    Ok(gic)
}
