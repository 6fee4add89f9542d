//! vmm-core: the KVM virtual machine.
//!
//! A [`Vm`] is built from a [`config::ValidatedConfig`] (vCPUs, memory,
//! kernel, initrd, command line, console) and started into a [`RunningVm`]:
//! one thread per vCPU running KVM_RUN and dispatching port and MMIO exits
//! to the device buses, plus one event thread. Nothing is global except the
//! vCPU kick signal handler, so many VMs can live in one process.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod backend;
pub mod config;
pub mod cpuid;
pub mod events;
pub mod exit;
pub mod hypervisor;
pub mod memory;
pub mod metrics;
pub mod vcpu;
pub mod virtio_slots;
pub mod vm;
pub mod x86_64;

pub use backend::{BackendKind, KvmInfo};
pub use config::{
    ConsoleConfig, DiskConfig, FsConfig, HostLimits, NetConfig, ValidatedConfig, VmConfig,
    VsockConfig,
};
pub use exit::ExitReason;
pub use hypervisor::Hypervisor;
pub use vm::{CoreDevices, ExtraDevice, RunningVm, Vm, VmError, VmOptions};
