//! Which KVM implementation backs /dev/kvm, and what it can boot.
//!
//! Some hosts expose `/dev/kvm` through PVM (Pagetable-based Virtual
//! Machine), a software hypervisor that only runs PVM-aware guest kernels at
//! speed. A standard kernel there runs in an instruction emulator, ~1000x
//! slower, and dies early in boot. We detect that and say so instead of
//! letting a boot hang.

use std::fmt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Leaf some PVM builds use to identify themselves (EBX == "PVM").
const PVM_CPUID_LEAF: u32 = 0x4000_0002;
const PVM_CPUID_SIGNATURE: u32 = 0x004d_5650;
/// MSR only PVM hosts list in KVM_GET_MSR_INDEX_LIST.
const PVM_MSR_INDEX: u32 = 0x4b56_4df1;

/// The kind of KVM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Intel VT-x (kvm_intel).
    HardwareVmx,
    /// AMD-V (kvm_amd).
    HardwareSvm,
    /// PVM: software virtualization for PVM-aware guest kernels only.
    Pvm,
    /// Something else (no vmx/svm flag, no PVM module found).
    Unknown,
}

impl BackendKind {
    /// Whether a standard (non-PVM) Linux guest kernel can boot on it.
    pub fn boots_standard_guests(self) -> bool {
        matches!(self, BackendKind::HardwareVmx | BackendKind::HardwareSvm)
    }

    /// A plain-words explanation of what this backend can boot.
    pub fn explanation(self) -> &'static str {
        match self {
            BackendKind::HardwareVmx | BackendKind::HardwareSvm => {
                "hardware virtualization: standard Linux guest kernels boot"
            }
            BackendKind::Pvm => {
                "PVM (software virtualization): a standard Linux guest kernel cannot boot here \
                 (its kernel mode runs in an instruction emulator ~1000x slower and stops on \
                 instructions such as xrstor or int3); a PVM guest kernel \
                 (CONFIG_PVM_GUEST + CONFIG_X86_PIE) is required. Short synthetic guests work. \
                 Use the nested test host (resources/testhost/run) to boot standard guests"
            }
            BackendKind::Unknown => {
                "unknown KVM backend (no vmx/svm CPU flag, no PVM module): a standard guest \
                 kernel may not boot"
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::HardwareVmx => "hardware (Intel VMX)",
            BackendKind::HardwareSvm => "hardware (AMD SVM)",
            BackendKind::Pvm => "PVM",
            BackendKind::Unknown => "unknown",
        })
    }
}

/// What `vmmctl kvm-info` reports.
#[derive(Clone, Debug)]
pub struct KvmInfo {
    /// KVM_GET_API_VERSION (12 on every supported kernel).
    pub api_version: i32,
    /// KVM_CAP_NR_VCPUS: the recommended maximum.
    pub recommended_vcpus: usize,
    /// KVM_CAP_MAX_VCPUS.
    pub max_vcpus: usize,
    /// KVM_CAP_NR_MEMSLOTS.
    pub max_memslots: usize,
    /// Capabilities this VMM uses, and whether the host has them.
    pub capabilities: Vec<(&'static str, bool)>,
    /// The backend kind.
    pub backend: BackendKind,
    /// Why we believe it is that kind.
    pub evidence: String,
}

/// Capabilities the VMM relies on (name, cap, required).
pub const CAPABILITIES: &[(&str, Cap, bool)] = &[
    ("KVM_CAP_IRQCHIP", Cap::Irqchip, true),
    ("KVM_CAP_USER_MEMORY", Cap::UserMemory, true),
    ("KVM_CAP_SET_TSS_ADDR", Cap::SetTssAddr, true),
    ("KVM_CAP_EXT_CPUID", Cap::ExtCpuid, true),
    ("KVM_CAP_IRQFD", Cap::Irqfd, true),
    ("KVM_CAP_IOEVENTFD", Cap::Ioeventfd, true),
    ("KVM_CAP_PIT2", Cap::Pit2, true),
    ("KVM_CAP_IMMEDIATE_EXIT", Cap::ImmediateExit, true),
    ("KVM_CAP_GET_TSC_KHZ", Cap::GetTscKhz, false),
    ("KVM_CAP_TSC_CONTROL", Cap::TscControl, false),
    ("KVM_CAP_TSC_DEADLINE_TIMER", Cap::TscDeadlineTimer, false),
    ("KVM_CAP_ADJUST_CLOCK", Cap::AdjustClock, false),
];

impl KvmInfo {
    /// Queries the open KVM handle and the host.
    pub fn probe(kvm: &Kvm) -> Self {
        let capabilities = CAPABILITIES
            .iter()
            .map(|(name, cap, _)| (*name, kvm.check_extension(*cap)))
            .collect();
        let (backend, evidence) = detect_backend(kvm, Path::new("/"));
        KvmInfo {
            api_version: kvm.get_api_version(),
            recommended_vcpus: kvm.get_nr_vcpus(),
            max_vcpus: kvm.get_max_vcpus(),
            max_memslots: kvm.get_nr_memslots(),
            capabilities,
            backend,
            evidence,
        }
    }

    /// Names of required capabilities the host lacks.
    pub fn missing_required(&self) -> Vec<&'static str> {
        CAPABILITIES
            .iter()
            .zip(&self.capabilities)
            .filter(|((_, _, required), (_, present))| *required && !present)
            .map(|((name, _, _), _)| *name)
            .collect()
    }
}

impl fmt::Display for KvmInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "KVM API version:   {}", self.api_version)?;
        writeln!(f, "backend:           {} ({})", self.backend, self.evidence)?;
        writeln!(
            f,
            "standard guests:   {}",
            if self.backend.boots_standard_guests() {
                "can boot"
            } else {
                "CANNOT boot"
            }
        )?;
        writeln!(f, "                   {}", self.backend.explanation())?;
        writeln!(
            f,
            "vCPUs:             {} max, {} recommended",
            self.max_vcpus, self.recommended_vcpus
        )?;
        writeln!(f, "memory slots:      {}", self.max_memslots)?;
        writeln!(f, "capabilities:")?;
        for ((name, present), (_, _, required)) in self.capabilities.iter().zip(CAPABILITIES) {
            writeln!(
                f,
                "  {:<28} {}{}",
                name,
                if *present { "yes" } else { "no" },
                if *required && !present {
                    "  (required!)"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// Decides the backend kind from loaded modules, CPU flags, CPUID and MSRs.
/// `root` is the filesystem root (a test can point it at a fake tree).
pub fn detect_backend(kvm: &Kvm, root: &Path) -> (BackendKind, String) {
    if let Some(found) = detect_from_host_files(root) {
        return found;
    }
    if let Ok(cpuid) = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES) {
        if cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == PVM_CPUID_LEAF && e.ebx == PVM_CPUID_SIGNATURE)
        {
            return (BackendKind::Pvm, "CPUID 0x40000002 EBX is \"PVM\"".into());
        }
    }
    if let Ok(msrs) = kvm.get_msr_index_list() {
        if msrs.as_slice().contains(&PVM_MSR_INDEX) {
            return (
                BackendKind::Pvm,
                format!("MSR {PVM_MSR_INDEX:#x} is in KVM_GET_MSR_INDEX_LIST"),
            );
        }
    }
    (
        BackendKind::Unknown,
        "no kvm_intel/kvm_amd/kvm_pvm module and no vmx/svm CPU flag".into(),
    )
}

/// The file-based part of detection: modules in /sys/module, then CPU flags.
fn detect_from_host_files(root: &Path) -> Option<(BackendKind, String)> {
    let module = |name: &str| root.join("sys/module").join(name).exists();
    if module("kvm_pvm") {
        return Some((BackendKind::Pvm, "module kvm_pvm is loaded".into()));
    }
    if module("kvm_intel") {
        return Some((
            BackendKind::HardwareVmx,
            "module kvm_intel is loaded".into(),
        ));
    }
    if module("kvm_amd") {
        return Some((BackendKind::HardwareSvm, "module kvm_amd is loaded".into()));
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if has("vmx") {
        Some((
            BackendKind::HardwareVmx,
            "CPU flag vmx (KVM built in)".into(),
        ))
    } else if has("svm") {
        Some((
            BackendKind::HardwareSvm,
            "CPU flag svm (KVM built in)".into(),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_root(modules: &[&str], flags: &str) -> vmm_sys_util::tempdir::TempDir {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        for m in modules {
            fs::create_dir_all(dir.as_path().join("sys/module").join(m)).unwrap();
        }
        fs::create_dir_all(dir.as_path().join("proc")).unwrap();
        fs::write(
            dir.as_path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn pvm_module_wins() {
        let root = fake_root(&["kvm", "kvm_pvm"], "");
        let (kind, why) = detect_from_host_files(root.as_path()).unwrap();
        assert_eq!(kind, BackendKind::Pvm);
        assert!(why.contains("kvm_pvm"));
        assert!(!kind.boots_standard_guests());
        assert!(kind.explanation().contains("cannot boot"));
    }

    #[test]
    fn hardware_modules_and_flags() {
        let root = fake_root(&["kvm", "kvm_amd"], "");
        assert_eq!(
            detect_from_host_files(root.as_path()).unwrap().0,
            BackendKind::HardwareSvm
        );
        let root = fake_root(&["kvm", "kvm_intel"], "");
        assert_eq!(
            detect_from_host_files(root.as_path()).unwrap().0,
            BackendKind::HardwareVmx
        );
        let root = fake_root(&[], "vmx");
        assert_eq!(
            detect_from_host_files(root.as_path()).unwrap().0,
            BackendKind::HardwareVmx
        );
        assert!(BackendKind::HardwareVmx.boots_standard_guests());
    }

    #[test]
    fn nothing_found_defers_to_kvm_queries() {
        let root = fake_root(&[], "");
        assert!(detect_from_host_files(root.as_path()).is_none());
    }
}
