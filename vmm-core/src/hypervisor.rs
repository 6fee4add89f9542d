//! The opened /dev/kvm plus host facts every VM build needs. Open it once
//! per process and share it: KVM_GET_SUPPORTED_CPUID alone costs
//! milliseconds, and its answer never changes while the process lives.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// An open KVM system handle with cached host capabilities.
pub struct Hypervisor {
    kvm: Kvm,
    supported_cpuid: CpuId,
    msr_index_list: Vec<u32>,
}

impl Hypervisor {
    /// Opens /dev/kvm and reads the supported CPUID and MSR index list.
    pub fn open() -> Result<Self, kvm_ioctls::Error> {
        Self::from_kvm(Kvm::new()?)
    }

    /// Wraps an already open KVM handle.
    pub fn from_kvm(kvm: Kvm) -> Result<Self, kvm_ioctls::Error> {
        let supported_cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
        // Some backends do not implement the MSR index list; then every boot
        // MSR is attempted.
        let msr_index_list = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        Ok(Hypervisor {
            kvm,
            supported_cpuid,
            msr_index_list,
        })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// KVM_GET_SUPPORTED_CPUID, read once.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// KVM_GET_MSR_INDEX_LIST, read once (empty if unsupported).
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msr_index_list
    }
}
