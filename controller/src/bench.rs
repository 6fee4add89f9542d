//! `vmmctl bench boot`: boot latency and VMM memory overhead.
//!
//! (a) VM build to first guest instruction, with a synthetic guest whose
//!     first instruction writes port 0x80 (works on any /dev/kvm, PVM too);
//! (b) VM build to guest init, with a Linux guest whose init writes the
//!     boot-timer signal (needs a KVM that boots standard kernels);
//! (c) the VMM's RSS excluding guest memory, before and with a VM running.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_core::{ConsoleConfig, HostLimits, Hypervisor, Vm, VmConfig, VmOptions};

use crate::launch::{open_kvm, LaunchError};
use crate::stats::{summarize, Summary};
use crate::synthetic;

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct BootBench {
    /// Runs per measurement.
    pub runs: usize,
    /// Linux guest kernel for (b); skipped when absent.
    pub kernel: Option<PathBuf>,
    /// Its initramfs (its init must write the boot-timer signal).
    pub initrd: Option<PathBuf>,
    /// Its command line.
    pub cmdline: String,
    /// Guest memory (MiB).
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Per-run limit for the Linux guest to reach init.
    pub timeout: Duration,
    /// Run (b) even where the backend cannot boot standard guests.
    pub force: bool,
}

/// Results of one benchmark invocation.
#[derive(Clone, Debug)]
pub struct BootBenchReport {
    /// (a), milliseconds.
    pub first_instruction_ms: Summary,
    /// (b), milliseconds, when run.
    pub linux_init_ms: Option<Summary>,
    /// Why (b) was not run.
    pub linux_skipped: Option<String>,
    /// RSS excluding guest memory before any VM, bytes.
    pub rss_baseline: u64,
    /// RSS excluding guest memory with one VM running, bytes (max over runs).
    pub rss_with_vm: u64,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// KVM setup failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A VM failed.
    #[error("run {run}: {message}")]
    Run {
        /// Which run.
        run: usize,
        /// What happened.
        message: String,
    },
    /// Temporary file handling failed.
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing to summarise.
    #[error("no samples (runs = 0?)")]
    NoSamples,
}

/// Runs the benchmark, printing progress to stderr.
pub fn bench_boot(cfg: &BootBench) -> Result<BootBenchReport, BenchError> {
    // (a) runs on any backend: open KVM without the standard-guest check.
    let (hypervisor, info) = open_kvm(true)?;
    let limits = HostLimits::probe(hypervisor.kvm()).map_err(LaunchError::from)?;
    let rss_baseline = vmm_core::metrics::rss_excluding(&[])?;

    let guest = vmm_sys_util::tempfile::TempFile::new_with_prefix("/tmp/vmm-bench-guest")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    guest
        .as_file()
        .write_all(&synthetic::first_instruction_guest())?;
    let synthetic_config = VmConfig {
        vcpus: 1,
        memory_mib: cfg.memory_mib,
        kernel: guest.as_path().to_path_buf(),
        initrd: None,
        cmdline: String::new(),
        console: ConsoleConfig::None,
        rng: false,
        disks: Vec::new(),
        vsock: None,
        nets: Vec::new(),
        fs: Vec::new(),
    }
    .validate(&limits)
    .map_err(LaunchError::from)?;

    let mut first_instruction = Vec::with_capacity(cfg.runs);
    let mut rss_with_vm = 0u64;
    for run in 0..cfg.runs {
        let (ms, rss) = first_instruction_run(&hypervisor, &synthetic_config)
            .map_err(|message| BenchError::Run { run, message })?;
        first_instruction.push(ms);
        rss_with_vm = rss_with_vm.max(rss);
        progress("synthetic", run, cfg.runs);
    }

    let (linux_init_ms, linux_skipped) = match (
        &cfg.kernel,
        info.backend.boots_standard_guests() || cfg.force,
    ) {
        (None, _) => (None, Some("no --kernel given".to_string())),
        (Some(_), false) => (
            None,
            Some(format!(
                "backend is {}: {}",
                info.backend,
                info.backend.explanation()
            )),
        ),
        (Some(kernel), true) => {
            let config = VmConfig {
                vcpus: cfg.vcpus,
                memory_mib: cfg.memory_mib,
                kernel: kernel.clone(),
                initrd: cfg.initrd.clone(),
                cmdline: cfg.cmdline.clone(),
                console: ConsoleConfig::None,
                rng: false,
                disks: Vec::new(),
                vsock: None,
                nets: Vec::new(),
                fs: Vec::new(),
            }
            .validate(&limits)
            .map_err(LaunchError::from)?;
            let mut samples = Vec::with_capacity(cfg.runs);
            for run in 0..cfg.runs {
                let (ms, rss) = linux_init_run(&hypervisor, &config, cfg.timeout)
                    .map_err(|message| BenchError::Run { run, message })?;
                samples.push(ms);
                rss_with_vm = rss_with_vm.max(rss);
                progress("linux", run, cfg.runs);
            }
            (
                Some(summarize(&samples).ok_or(BenchError::NoSamples)?),
                None,
            )
        }
    };

    Ok(BootBenchReport {
        first_instruction_ms: summarize(&first_instruction).ok_or(BenchError::NoSamples)?,
        linux_init_ms,
        linux_skipped,
        rss_baseline,
        rss_with_vm,
    })
}

fn progress(what: &str, run: usize, runs: usize) {
    if runs >= 10 && (run + 1).is_multiple_of((runs / 10).max(1)) {
        eprintln!("bench: {what} {}/{runs}", run + 1);
    }
}

/// One synthetic run: (ms from build start to the port-0x80 write, RSS).
fn first_instruction_run(
    hypervisor: &Hypervisor,
    config: &vmm_core::ValidatedConfig,
) -> Result<(f64, u64), String> {
    let options = VmOptions {
        build_start: Instant::now(),
        ..Default::default()
    };
    let vm = Vm::build(hypervisor, config, options).map_err(|e| e.to_string())?;
    let mut running = vm.start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let events = running
            .devices()
            .debug_port
            .lock()
            .map_err(|_| "debug port lock poisoned".to_string())?
            .events();
        if let Some((at, _)) = events.first() {
            break *at;
        }
        if let Some(reason) = running.exit_reason() {
            return Err(format!(
                "synthetic guest ended before its first write: {reason}"
            ));
        }
        if Instant::now() > deadline {
            return Err("synthetic guest did not write port 0x80 within 10 s".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let rss = vmm_core::metrics::rss_excluding(running.guest_memory_host_ranges())
        .map_err(|e| e.to_string())?;
    running.stop();
    Ok((first.as_secs_f64() * 1000.0, rss))
}

/// One Linux run: (ms from build start to the boot-timer write, RSS).
fn linux_init_run(
    hypervisor: &Hypervisor,
    config: &vmm_core::ValidatedConfig,
    timeout: Duration,
) -> Result<(f64, u64), String> {
    let (tx, rx) = mpsc::channel();
    let options = VmOptions {
        build_start: Instant::now(),
        on_boot: Some(Box::new(move |t| {
            let _ = tx.send(t);
        })),
        ..Default::default()
    };
    let vm = Vm::build(hypervisor, config, options).map_err(|e| e.to_string())?;
    let mut running = vm.start().map_err(|e| e.to_string())?;
    let stamp = match rx.recv_timeout(timeout) {
        Ok(stamp) => stamp,
        Err(_) => {
            let reason = running
                .exit_reason()
                .map(|r| format!("VM ended first: {r}"))
                .unwrap_or_else(|| format!("no boot-timer signal within {timeout:?}"));
            running.stop();
            return Err(reason);
        }
    };
    let rss = vmm_core::metrics::rss_excluding(running.guest_memory_host_ranges())
        .map_err(|e| e.to_string())?;
    running.stop();
    Ok((stamp.wall.as_secs_f64() * 1000.0, rss))
}

/// Formats a report: human lines, each also greppable (`key: value`).
pub fn format_report(report: &BootBenchReport, backend: &str) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let line = |name: &str, s: &Summary| {
        format!(
            "{name}: min {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} runs)\n",
            s.min, s.p50, s.p99, s.max, s.count
        )
    };
    let mut out = format!("backend: {backend}\n");
    out += &line(
        "first-instruction-ms (VM build -> first guest instruction, synthetic guest)",
        &report.first_instruction_ms,
    );
    match (&report.linux_init_ms, &report.linux_skipped) {
        (Some(s), _) => out += &line("linux-init-ms (VM build -> guest init boot-timer write)", s),
        (None, Some(why)) => out += &format!("linux-init-ms: skipped ({why})\n"),
        (None, None) => {}
    }
    out += &format!(
        "vmm-rss-mib (excluding guest memory): {:.2} before any VM, {:.2} with a VM running, {:.2} per-VM overhead\n",
        mib(report.rss_baseline),
        mib(report.rss_with_vm),
        mib(report.rss_with_vm.saturating_sub(report.rss_baseline))
    );
    out
}
