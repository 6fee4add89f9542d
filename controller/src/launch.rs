//! Booting one VM for `vmmctl run`: backend check, config validation, build,
//! run to exit, and the timing lines.

use std::time::Instant;

use kvm_ioctls::Kvm;
use vmm_core::{
    BackendKind, ExitReason, HostLimits, Hypervisor, KvmInfo, RunningVm, Vm, VmConfig, VmOptions,
};

/// Command line used when the user gives none: serial console, reboot via
/// the keyboard controller, no i8042 probing delays, no module loading.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Why a launch failed before or while the VM ran.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    Kvm(kvm_ioctls::Error),
    /// The backend cannot boot a standard guest.
    #[error("refusing to boot: this host's KVM backend is {kind}: {explanation} (pass --force to try anyway, e.g. with a PVM guest kernel)")]
    UnsupportedBackend {
        /// The backend.
        kind: BackendKind,
        /// Why it cannot boot.
        explanation: &'static str,
    },
    /// KVM lacks a capability the VMM needs.
    #[error("KVM lacks required capabilities: {0}")]
    MissingCapabilities(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] vmm_core::config::ConfigError),
    /// Building or starting the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The guest or the VMM ended the VM abnormally.
    #[error("VM ended: {0}")]
    AbnormalExit(ExitReason),
}

use vmm_core::VmError;

/// Options of `vmmctl run` beyond the VM config.
#[derive(Debug, Default, Clone, Copy)]
pub struct LaunchOptions {
    /// Boot even where the backend cannot boot standard kernels.
    pub force: bool,
    /// Print `boot-time-ms:` and `vmm-setup-ms:`.
    pub boot_timer: bool,
}

/// Opens KVM and checks the backend and capabilities.
pub fn open_kvm(force: bool) -> Result<(Hypervisor, KvmInfo), LaunchError> {
    let kvm = Kvm::new().map_err(LaunchError::Kvm)?;
    let info = KvmInfo::probe(&kvm);
    check_backend(&info, force)?;
    Ok((Hypervisor::from_kvm(kvm).map_err(LaunchError::Kvm)?, info))
}

/// Refuses backends that lack required capabilities, and PVM (which cannot
/// boot a standard kernel) unless `force`.
pub fn check_backend(info: &KvmInfo, force: bool) -> Result<(), LaunchError> {
    let missing = info.missing_required();
    if !missing.is_empty() {
        return Err(LaunchError::MissingCapabilities(missing.join(", ")));
    }
    if !info.backend.boots_standard_guests() {
        if force {
            tracing::warn!(
                backend = %info.backend,
                "{}; booting anyway (--force)",
                info.backend.explanation()
            );
        } else if info.backend == BackendKind::Pvm {
            return Err(LaunchError::UnsupportedBackend {
                kind: info.backend,
                explanation: info.backend.explanation(),
            });
        } else {
            tracing::warn!(backend = %info.backend, "{}", info.backend.explanation());
        }
    }
    Ok(())
}

/// Boots `config`, runs it to its end, prints timing lines, and returns the
/// exit reason when the guest ended cleanly (power off or reset).
pub fn run(
    process_start: Instant,
    config: VmConfig,
    options: LaunchOptions,
) -> Result<ExitReason, LaunchError> {
    let build_start = Instant::now();
    let kvm = Kvm::new().map_err(LaunchError::Kvm)?;
    // Input errors first: they are the user's to fix whatever the host.
    let config = config.validate(&HostLimits::probe(&kvm)?)?;
    check_backend(&KvmInfo::probe(&kvm), options.force)?;
    let hypervisor = Hypervisor::from_kvm(kvm).map_err(LaunchError::Kvm)?;
    let mut vm_options = VmOptions {
        build_start,
        ..Default::default()
    };
    if options.boot_timer {
        vm_options.on_boot = Some(Box::new(|t| {
            // Printed on stderr so it never interleaves with the guest console
            // on stdout mid-line.
            eprintln!("boot-time-ms: {:.3}", t.wall.as_secs_f64() * 1000.0);
            eprintln!("boot-cpu-ms: {:.3}", t.process_cpu.as_secs_f64() * 1000.0);
        }));
    }
    let vm = Vm::build(&hypervisor, &config, vm_options)?;
    let mut running = vm.start()?;
    let reason = running.wait();
    if options.boot_timer {
        report_setup_time(process_start, &running);
    }
    let (pio, mmio, exits) = running.exit_counts();
    tracing::info!(
        unclaimed_pio = pio,
        unclaimed_mmio = mmio,
        exits,
        "VM statistics"
    );
    if reason.is_clean() {
        Ok(reason)
    } else {
        Err(LaunchError::AbnormalExit(reason))
    }
}

fn report_setup_time(process_start: Instant, running: &RunningVm) {
    match running.first_run_at() {
        Some(first) => eprintln!(
            "vmm-setup-ms: {:.3}",
            first.duration_since(process_start).as_secs_f64() * 1000.0
        ),
        None => eprintln!("vmm-setup-ms: none (no vCPU entered the guest)"),
    }
    if running
        .devices()
        .boot_timer
        .lock()
        .map(|t| t.boot_time().is_none())
        .unwrap_or(true)
    {
        eprintln!("boot-time-ms: none (the guest never wrote the boot-timer signal)");
    }
}
