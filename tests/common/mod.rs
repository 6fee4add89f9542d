//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controller::synthetic;
use devices::{BusDevice, ConsoleOutput};
use vmm_core::{
    ConsoleConfig, ExtraDevice, HostLimits, Hypervisor, RunningVm, Vm, VmConfig, VmOptions,
};

/// Opens /dev/kvm, or prints a named skip line and returns None when the
/// host has no KVM at all (the Makefile counts these lines and reports them).
pub fn kvm_or_skip(test: &str) -> Option<Hypervisor> {
    if !Path::new("/dev/kvm").exists() {
        println!("SKIPPED {test}: /dev/kvm is not present on this host");
        eprintln!("SKIPPED {test}: /dev/kvm is not present on this host");
        return None;
    }
    Some(Hypervisor::open().expect("/dev/kvm exists but cannot be opened"))
}

/// Collects 32-bit values a synthetic guest reports on its report port.
#[derive(Default)]
pub struct Reports {
    pub values: Vec<u32>,
    pub count: Arc<AtomicU64>,
}

impl BusDevice for Reports {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        if self.values.len() < 4096 {
            self.values.push(u32::from_le_bytes(bytes));
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A synthetic guest ready to start, with its report device and console.
pub struct Synthetic {
    pub vm: Vm,
    pub reports: Arc<Mutex<Reports>>,
    pub console: Arc<Mutex<Vec<u8>>>,
    pub _image: vmm_sys_util::tempfile::TempFile,
}

/// Builds a VM that runs `code` as its kernel.
pub fn synthetic_vm(kvm: &Hypervisor, code: &[u8], vcpus: u32, start_all_vcpus: bool) -> Synthetic {
    let image = vmm_sys_util::tempfile::TempFile::new_with_prefix("/tmp/vmm-synthetic").unwrap();
    image
        .as_file()
        .write_all(&synthetic::elf_image(code))
        .unwrap();
    let config = VmConfig {
        vcpus,
        memory_mib: 64,
        kernel: image.as_path().to_path_buf(),
        initrd: None,
        cmdline: "synthetic".into(),
        console: ConsoleConfig::None,
        rng: false,
        disks: Vec::new(),
        vsock: None,
        nets: Vec::new(),
        fs: Vec::new(),
    }
    .validate(&HostLimits::probe(kvm.kvm()).unwrap())
    .unwrap();
    let reports = Arc::new(Mutex::new(Reports::default()));
    let console = Arc::new(Mutex::new(Vec::new()));
    let options = VmOptions {
        console_output: Some(ConsoleOutput::Shared(console.clone())),
        extra_pio: vec![ExtraDevice {
            base: u64::from(synthetic::REPORT_PORT),
            len: 4,
            device: reports.clone(),
        }],
        start_all_vcpus,
        ..Default::default()
    };
    let vm = Vm::build(kvm, &config, options).unwrap();
    Synthetic {
        vm,
        reports,
        console,
        _image: image,
    }
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Runs the VM until it exits on its own (panics after `timeout`).
pub fn run_to_exit(vm: Vm, timeout: Duration) -> (vmm_core::ExitReason, RunningVm) {
    let mut running = vm.start().unwrap();
    let reason = running
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("guest did not end within {timeout:?}"));
    (reason, running)
}

/// Number of open fds and threads of this process.
pub fn fds_and_threads() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    (count("/proc/self/fd"), count("/proc/self/task"))
}
