//! Building a VM from a validated config, and running it.
//!
//! [`Vm::build`] reads top to bottom as how a VM comes to life: KVM VM and
//! interrupt controllers, guest memory, kernel and boot structures, devices,
//! vCPUs. [`Vm::start`] turns it into a [`RunningVm`] with one thread per
//! vCPU plus one event thread (device eventfds, console input).

use std::ffi::CString;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boot::x86_64 as arch_boot;
use boot::x86_64::layout;
use devices::virtio::fs::Virtiofsd;
use devices::virtio::{Block, Fs, Net, Rng, Tap, Vsock};
use devices::{
    AcpiPm, BootTimer, BootTimestamp, Bus, BusDevice, ConsoleOutput, DebugPort, Serial, I8042,
};
use kvm_bindings::{kvm_mp_state, kvm_pit_config, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConsoleConfig, FsConfig, ValidatedConfig};
use crate::cpuid::{self, CpuidParams};
use crate::events::{
    DeviceEvents, EventLoop, EventLoopHandle, TapEvents, VirtiofsdEvents, VsockHostEvents,
};
use crate::exit::{ExitLatch, ExitReason};
use crate::hypervisor::Hypervisor;
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::vcpu::{self, Desired, ExitStats, RunControl, Vcpu, VcpuContext};
use crate::virtio_slots::{QueueEvent, VirtioSlots};
use crate::x86_64::{self as arch, ArchError};

/// Where the TSS goes (three pages just below the BIOS area, as QEMU/Firecracker).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Port of the debug device (Cloud Hypervisor's boot-progress convention).
pub const DEBUG_PORT: u64 = 0x80;

/// Why a VM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory setup failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or initrd file could not be opened.
    #[error("cannot open {what} {path}: {source}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// Its path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Loading the kernel failed.
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        /// Its path.
        path: String,
        /// The error.
        source: boot::x86_64::kernel::KernelError,
    },
    /// Loading the initrd failed.
    #[error("cannot load initrd {path}: {source}")]
    Initrd {
        /// Its path.
        path: String,
        /// The error.
        source: boot::x86_64::InitrdError,
    },
    /// Writing boot structures failed.
    #[error("cannot write boot structures: {0}")]
    System(#[from] boot::x86_64::SystemError),
    /// vCPU register setup failed.
    #[error("vCPU {vcpu}: {source}")]
    Arch {
        /// The vCPU.
        vcpu: u8,
        /// The error.
        source: ArchError,
    },
    /// A device could not be created or placed.
    #[error("device setup ({what}): {message}")]
    Device {
        /// Which device.
        what: &'static str,
        /// What failed.
        message: String,
    },
    /// A thread could not be spawned.
    #[error("cannot spawn the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn device_err(what: &'static str) -> impl FnOnce(String) -> VmError {
    move |message| VmError::Device { what, message }
}

/// A device the embedder adds to a bus (tests, benchmarks, future devices).
pub struct ExtraDevice {
    /// First address (port or guest physical).
    pub base: u64,
    /// Length of the range.
    pub len: u64,
    /// The device.
    pub device: Arc<Mutex<dyn BusDevice>>,
}

/// Knobs of a build that are not part of the user's VM config.
pub struct VmOptions {
    /// When the build started (boot time is measured from here).
    pub build_start: Instant,
    /// Serial output override (e.g. capture into a buffer); takes
    /// precedence over the config's console and disables stdin input.
    pub console_output: Option<ConsoleOutput>,
    /// Called once when the guest writes the boot-timer signal.
    pub on_boot: Option<Box<dyn FnMut(BootTimestamp) + Send>>,
    /// Extra port-I/O devices.
    pub extra_pio: Vec<ExtraDevice>,
    /// Extra MMIO devices.
    pub extra_mmio: Vec<ExtraDevice>,
    /// Start every vCPU at the kernel entry (synthetic guests), instead of
    /// leaving application processors waiting for INIT/SIPI from the BSP.
    pub start_all_vcpus: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            build_start: Instant::now(),
            console_output: None,
            on_boot: None,
            extra_pio: Vec::new(),
            extra_mmio: Vec::new(),
            start_all_vcpus: false,
        }
    }
}

/// Handles onto the devices every VM has.
#[derive(Clone)]
pub struct CoreDevices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// Boot timer at [`layout::BOOT_TIMER_ADDR`].
    pub boot_timer: Arc<Mutex<BootTimer>>,
    /// Debug port at [`DEBUG_PORT`].
    pub debug_port: Arc<Mutex<DebugPort>>,
}

/// A built VM, not yet running.
pub struct Vm {
    // Field order is drop order: vCPUs and the VM fd go before guest memory.
    vcpus: Vec<Vcpu>,
    vm_fd: VmFd,
    memory: GuestMemoryMmap,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    devices: CoreDevices,
    reset_evt: EventFd,
    power_off_evt: EventFd,
    stdin_input: bool,
    queue_events: Vec<QueueEvent>,
    vsock: Option<VsockHostEvents>,
    taps: Vec<TapEvents>,
    virtiofsds: Vec<VirtiofsdEvents>,
    build_start: Instant,
}

impl Vm {
    /// Builds a VM: everything up to, not including, running vCPUs.
    pub fn build(
        hypervisor: &Hypervisor,
        config: &ValidatedConfig,
        mut options: VmOptions,
    ) -> Result<Vm, VmError> {
        let kvm = hypervisor.kvm();
        let cfg = config.get();
        let span = tracing::info_span!("vm_build", vcpus = cfg.vcpus, memory_mib = cfg.memory_mib);
        let _enter = span.enter();
        vcpu::install_kick_handler().map_err(|e| VmError::Device {
            what: "vCPU kick signal",
            message: e.to_string(),
        })?;

        let build_start = options.build_start;
        let phase = |name: &str| {
            tracing::debug!(
                phase = name,
                elapsed_us = build_start.elapsed().as_micros() as u64,
                "build phase done"
            )
        };
        let vm_fd = create_kvm_vm(kvm)?;
        phase("kvm vm + irqchip + pit");
        let memory = memory::create_guest_memory(config.memory_bytes())?;
        memory::register_guest_memory(&vm_fd, &memory)?;
        phase("guest memory");

        let kernel = load_kernel(&memory, cfg)?;
        let initrd = load_initrd(&memory, cfg, &kernel)?;
        phase("kernel and initrd");

        let reset_evt = new_eventfd("reset")?;
        let power_off_evt = new_eventfd("power-off")?;
        // Guest input comes from our stdin only when the console is the
        // user's terminal, not when an embedder captures the output.
        let (console_output, stdin_input) = match options.console_output.take() {
            Some(output) => (output, false),
            None => (
                console_output_for(&cfg.console)?,
                cfg.console == ConsoleConfig::Stdio,
            ),
        };
        let (pio, mmio, devices) = create_devices(
            &vm_fd,
            &reset_evt,
            &power_off_evt,
            console_output,
            &mut options,
        )?;
        let mut mmio = mmio;
        let mut virtio = VirtioSlots::new();
        for disk in &cfg.disks {
            let block = open_disk(disk)?;
            virtio
                .attach(&vm_fd, &mut mmio, &memory, Arc::new(Mutex::new(block)))
                .map_err(|e| device_err("virtio-blk")(e.to_string()))?;
        }
        let mut taps = Vec::with_capacity(cfg.nets.len());
        for net_cfg in &cfg.nets {
            let tap = Tap::open_in_netns(&net_cfg.tap, net_cfg.netns.as_deref()).map_err(|e| {
                VmError::Device {
                    what: "virtio-net",
                    message: e.to_string(),
                }
            })?;
            let net = Net::new(tap, net_cfg.mac);
            let tap_fd = net.tap_fd();
            let notifier = virtio
                .attach(&vm_fd, &mut mmio, &memory, Arc::new(Mutex::new(net)))
                .map_err(|e| device_err("virtio-net")(e.to_string()))?;
            taps.push(TapEvents { tap_fd, notifier });
        }
        let vsock = match &cfg.vsock {
            Some(vsock_cfg) => {
                let device = Arc::new(Mutex::new(
                    Vsock::new(vsock_cfg.cid, &vsock_cfg.uds).map_err(|e| VmError::Device {
                        what: "virtio-vsock",
                        message: format!("{}: {e}", vsock_cfg.uds.display()),
                    })?,
                ));
                let notifier = virtio
                    .attach(&vm_fd, &mut mmio, &memory, device.clone())
                    .map_err(|e| device_err("virtio-vsock")(e.to_string()))?;
                Some(VsockHostEvents { device, notifier })
            }
            None => None,
        };
        if cfg.rng {
            virtio
                .attach(&vm_fd, &mut mmio, &memory, Arc::new(Mutex::new(Rng::new())))
                .map_err(|e| device_err("virtio-rng")(e.to_string()))?;
        }
        let mut virtiofsds = Vec::with_capacity(cfg.fs.len());
        for share in &cfg.fs {
            let (daemon, device) = start_share(share)?;
            let (daemon, device) = (Arc::new(Mutex::new(daemon)), Arc::new(Mutex::new(device)));
            let notifier = virtio
                .attach(&vm_fd, &mut mmio, &memory, device.clone())
                .map_err(|e| device_err("virtio-fs")(e.to_string()))?;
            virtiofsds.push(VirtiofsdEvents {
                daemon,
                device,
                notifier,
            });
        }
        phase("devices");

        let cmdline = CString::new(cfg.cmdline.as_bytes()).map_err(|_| VmError::Device {
            what: "command line",
            message: "contains a NUL byte".into(),
        })?;
        let vcpu_count = u8::try_from(cfg.vcpus).map_err(|_| VmError::Device {
            what: "vCPUs",
            message: format!("{} vCPUs cannot be described in boot tables", cfg.vcpus),
        })?;
        arch_boot::configure_system(
            &memory,
            &arch_boot::SystemConfig {
                kernel: &kernel,
                cmdline: &cmdline,
                initrd,
                num_cpus: vcpu_count,
                virtio_mmio: virtio.slots(),
            },
        )?;
        let cr3 = arch_boot::setup_page_tables(&memory)?;
        arch_boot::setup_gdt_idt(&memory, kernel.protocol)?;
        phase("boot structures");

        let vcpus = create_vcpus(
            hypervisor,
            &vm_fd,
            vcpu_count,
            &kernel,
            cr3,
            options.start_all_vcpus,
        )?;
        tracing::info!(
            elapsed_us = options.build_start.elapsed().as_micros() as u64,
            "VM built"
        );
        Ok(Vm {
            vcpus,
            vm_fd,
            memory,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            devices,
            reset_evt,
            power_off_evt,
            stdin_input,
            queue_events: virtio.take_queue_events(),
            vsock,
            taps,
            virtiofsds,
            build_start: options.build_start,
        })
    }

    /// Guest memory (tests inspect it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Starts the event thread and one thread per vCPU.
    pub fn start(self) -> Result<RunningVm, VmError> {
        let exit = Arc::new(ExitLatch::new().map_err(|e| VmError::Device {
            what: "exit latch",
            message: e.to_string(),
        })?);
        let control = Arc::new(RunControl::new());
        let stats = Arc::new(ExitStats::default());
        let first_run = Arc::new(OnceLock::new());
        let virtiofsds = self.virtiofsds.iter().map(|v| v.daemon.clone()).collect();
        let events = EventLoop::start(
            exit.clone(),
            self.reset_evt,
            self.power_off_evt,
            self.stdin_input.then(|| self.devices.serial.clone()),
            DeviceEvents {
                queue_events: self.queue_events,
                vsock: self.vsock,
                taps: self.taps,
                virtiofsds: self.virtiofsds,
            },
        )
        .map_err(|source| VmError::Thread {
            what: "vmm-events".into(),
            source,
        })?;
        let ctx = VcpuContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            exit: exit.clone(),
            control: control.clone(),
            stats: stats.clone(),
            first_run: first_run.clone(),
        };
        let mut running = RunningVm {
            vcpu_threads: Vec::with_capacity(self.vcpus.len()),
            events: Some(events),
            exit,
            control,
            stats,
            first_run,
            devices: self.devices,
            vcpu_count: self.vcpus.len(),
            build_start: self.build_start,
            memory_ranges: memory::host_ranges(&self.memory),
            virtiofsds,
            _vm_fd: self.vm_fd,
            _memory: self.memory,
        };
        for vcpu in self.vcpus {
            let index = vcpu.index;
            let handle = vcpu.start(ctx.clone()).map_err(|source| VmError::Thread {
                what: format!("vcpu{index}"),
                source,
            })?;
            running.vcpu_threads.push(handle);
        }
        Ok(running)
    }
}

/// Starts the virtiofsd of a share and connects a virtio-fs device to it.
/// On failure nothing is left running (the daemon is stopped on drop).
fn start_share(share: &FsConfig) -> Result<(Virtiofsd, Fs), VmError> {
    let fs_err = |message: String| VmError::Device {
        what: "virtio-fs",
        message: format!("share `{}` ({}): {message}", share.tag, share.dir.display()),
    };
    let binary = share
        .virtiofsd
        .as_deref()
        .ok_or_else(|| fs_err("no virtiofsd binary (the config was not validated)".into()))?;
    let (daemon, stream) =
        Virtiofsd::start(binary, &share.dir).map_err(|e| fs_err(e.to_string()))?;
    tracing::info!(tag = %share.tag, pid = daemon.pid(), "virtiofsd started");
    let device = Fs::new(&share.tag, stream).map_err(|e| fs_err(e.to_string()))?;
    Ok((daemon, device))
}

/// Opens a disk image (read-only when asked) as a virtio-blk device.
fn open_disk(disk: &crate::config::DiskConfig) -> Result<Block, VmError> {
    let shown = disk.path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path)
        .map_err(|source| VmError::Open {
            what: "disk",
            path: shown.clone(),
            source,
        })?;
    Block::new(file, disk.read_only, None).map_err(|e| VmError::Device {
        what: "virtio-blk",
        message: format!("{shown}: {e}"),
    })
}

fn new_eventfd(what: &'static str) -> Result<EventFd, VmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device {
        what,
        message: format!("eventfd: {e}"),
    })
}

fn create_kvm_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm_fd)
}

fn load_kernel(
    memory: &GuestMemoryMmap,
    cfg: &crate::config::VmConfig,
) -> Result<arch_boot::kernel::LoadedKernel, VmError> {
    let path = cfg.kernel.display().to_string();
    let mut file = File::open(&cfg.kernel).map_err(|source| VmError::Open {
        what: "kernel",
        path: path.clone(),
        source,
    })?;
    let kernel = arch_boot::kernel::load_kernel(memory, &mut file)
        .map_err(|source| VmError::Kernel { path, source })?;
    tracing::debug!(entry = kernel.entry.0, protocol = ?kernel.protocol, "kernel loaded");
    Ok(kernel)
}

fn load_initrd(
    memory: &GuestMemoryMmap,
    cfg: &crate::config::VmConfig,
    kernel: &arch_boot::kernel::LoadedKernel,
) -> Result<Option<arch_boot::InitrdRegion>, VmError> {
    let Some(path) = &cfg.initrd else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| VmError::Open {
        what: "initrd",
        path: shown.clone(),
        source,
    })?;
    arch_boot::load_initrd(memory, &mut file, kernel.kernel_end)
        .map(Some)
        .map_err(|source| VmError::Initrd {
            path: shown,
            source,
        })
}

fn console_output_for(console: &ConsoleConfig) -> Result<ConsoleOutput, VmError> {
    Ok(match console {
        ConsoleConfig::Stdio => ConsoleOutput::Stdout,
        ConsoleConfig::None => ConsoleOutput::Sink,
        ConsoleConfig::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| VmError::Device {
                    what: "console file",
                    message: format!("{}: {e}", path.display()),
                })?;
            ConsoleOutput::File(file)
        }
    })
}

fn create_devices(
    vm_fd: &VmFd,
    reset_evt: &EventFd,
    power_off_evt: &EventFd,
    console: ConsoleOutput,
    options: &mut VmOptions,
) -> Result<(Bus, Bus, CoreDevices), VmError> {
    let clone = |evt: &EventFd, what: &'static str| {
        evt.try_clone().map_err(|e| VmError::Device {
            what,
            message: format!("eventfd clone: {e}"),
        })
    };
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    let serial_irq = new_eventfd("serial interrupt")?;
    vm_fd
        .register_irqfd(&serial_irq, layout::SERIAL_COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, console).map_err(
        |e| VmError::Device {
            what: "serial",
            message: e.to_string(),
        },
    )?));
    pio.insert(
        serial.clone(),
        u64::from(layout::SERIAL_COM1_PORT),
        devices::serial::SERIAL_PORT_COUNT,
    )
    .map_err(|e| device_err("serial")(e.to_string()))?;

    let i8042 = Arc::new(Mutex::new(I8042::new(clone(reset_evt, "i8042")?)));
    pio.insert(
        i8042,
        u64::from(layout::I8042_PORT),
        u64::from(layout::I8042_PORT_LEN),
    )
    .map_err(|e| device_err("i8042")(e.to_string()))?;

    let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(
        clone(power_off_evt, "ACPI PM")?,
        clone(reset_evt, "ACPI PM")?,
    )));
    pio.insert(
        acpi_pm,
        u64::from(layout::ACPI_PM_SLEEP_CONTROL_PORT),
        devices::acpi_pm::ACPI_PM_PORT_COUNT,
    )
    .map_err(|e| device_err("ACPI PM")(e.to_string()))?;

    let debug_port = Arc::new(Mutex::new(DebugPort::new(options.build_start)));
    pio.insert(debug_port.clone(), DEBUG_PORT, 1)
        .map_err(|e| device_err("debug port")(e.to_string()))?;

    let mut timer = BootTimer::new(options.build_start, devices::process_cpu_time());
    if let Some(callback) = options.on_boot.take() {
        timer.on_boot(callback);
    }
    let boot_timer = Arc::new(Mutex::new(timer));
    mmio.insert(
        boot_timer.clone(),
        layout::BOOT_TIMER_ADDR,
        layout::BOOT_TIMER_SIZE,
    )
    .map_err(|e| device_err("boot timer")(e.to_string()))?;

    for extra in options.extra_pio.drain(..) {
        pio.insert(extra.device, extra.base, extra.len)
            .map_err(|e| device_err("extra port device")(e.to_string()))?;
    }
    for extra in options.extra_mmio.drain(..) {
        mmio.insert(extra.device, extra.base, extra.len)
            .map_err(|e| device_err("extra MMIO device")(e.to_string()))?;
    }
    Ok((
        pio,
        mmio,
        CoreDevices {
            serial,
            boot_timer,
            debug_port,
        },
    ))
}

fn create_vcpus(
    hypervisor: &Hypervisor,
    vm_fd: &VmFd,
    count: u8,
    kernel: &arch_boot::kernel::LoadedKernel,
    cr3: vm_memory::GuestAddress,
    start_all: bool,
) -> Result<Vec<Vcpu>, VmError> {
    let supported = hypervisor.supported_cpuid();
    let msr_list = hypervisor.msr_index_list();
    let regs = arch_boot::boot_regs(kernel);
    let mut vcpus = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let arch = |source| VmError::Arch {
            vcpu: index,
            source,
        };
        let fd = vm_fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let tsc_khz = fd.get_tsc_khz().ok().filter(|khz| *khz > 0);
        let mut cpuid = supported.clone();
        cpuid::normalize(
            &mut cpuid,
            CpuidParams {
                vcpu_index: index,
                vcpu_count: count,
                tsc_khz,
            },
        );
        fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        arch::setup_msrs(&fd, msr_list).map_err(arch)?;
        fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        let mut sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        arch_boot::boot_sregs(&mut sregs, kernel.protocol, cr3);
        fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        fd.set_fpu(&arch::boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        arch::setup_lapic(&fd).map_err(arch)?;
        if start_all && index > 0 {
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        }
        vcpus.push(Vcpu { index, fd });
    }
    Ok(vcpus)
}

/// A VM whose vCPUs are running (or paused).
pub struct RunningVm {
    vcpu_threads: Vec<JoinHandle<()>>,
    events: Option<EventLoopHandle>,
    exit: Arc<ExitLatch>,
    control: Arc<RunControl>,
    stats: Arc<ExitStats>,
    first_run: Arc<OnceLock<Instant>>,
    devices: CoreDevices,
    vcpu_count: usize,
    build_start: Instant,
    memory_ranges: Vec<(u64, u64)>,
    /// One per virtio-fs share; stopped when the VM ends.
    virtiofsds: Vec<Arc<Mutex<Virtiofsd>>>,
    // Dropped last, after every thread using them is joined.
    _vm_fd: VmFd,
    _memory: GuestMemoryMmap,
}

impl RunningVm {
    /// Parks every vCPU outside KVM_RUN; returns once all are parked.
    pub fn pause(&self) {
        self.control.set(Desired::Pause);
        self.kick_all();
        self.control.wait_quiescent(self.vcpu_count);
        tracing::info!("VM paused");
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        self.control.set(Desired::Run);
        tracing::info!("VM resumed");
    }

    /// Stops the VM (if still running) and returns why it ended.
    pub fn stop(&mut self) -> ExitReason {
        self.exit.record(ExitReason::Stopped);
        self.shutdown();
        self.exit.get().unwrap_or(ExitReason::Stopped)
    }

    /// Waits until the guest or an error ends the VM, then tears it down.
    pub fn wait(&mut self) -> ExitReason {
        let reason = self.exit.wait(None).unwrap_or(ExitReason::Stopped);
        self.shutdown();
        reason
    }

    /// Like [`wait`](Self::wait) with a deadline; `None` if still running
    /// (the VM keeps running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitReason> {
        let reason = self.exit.wait(Some(timeout))?;
        self.shutdown();
        Some(reason)
    }

    /// The exit reason, if the VM has ended.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.get()
    }

    /// When the first vCPU entered KVM_RUN.
    pub fn first_run_at(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// When the build started.
    pub fn build_start(&self) -> Instant {
        self.build_start
    }

    /// The always-present devices.
    pub fn devices(&self) -> &CoreDevices {
        &self.devices
    }

    /// (unclaimed port accesses, unclaimed MMIO accesses, all exits).
    pub fn exit_counts(&self) -> (u64, u64, u64) {
        (
            self.stats.unclaimed_pio.load(Ordering::Relaxed),
            self.stats.unclaimed_mmio.load(Ordering::Relaxed),
            self.stats.exits.load(Ordering::Relaxed),
        )
    }

    /// Host address ranges of guest RAM.
    pub fn guest_memory_host_ranges(&self) -> &[(u64, u64)] {
        &self.memory_ranges
    }

    fn kick_all(&self) {
        for handle in &self.vcpu_threads {
            vcpu::kick(handle);
        }
    }

    /// Stops vCPUs and the event thread and joins them. Idempotent.
    fn shutdown(&mut self) {
        self.control.set(Desired::Stop);
        // A vCPU may be between its state check and KVM_RUN: kick until it leaves.
        while self.vcpu_threads.iter().any(|h| !h.is_finished()) {
            self.kick_all();
            std::thread::sleep(Duration::from_micros(200));
        }
        for handle in self.vcpu_threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a vCPU thread panicked outside its guard");
            }
        }
        if let Some(events) = self.events.take() {
            events.stop();
        }
        // The guest is gone: stop each share's virtiofsd (kill, reap, remove
        // its socket directory).
        for daemon in self.virtiofsds.drain(..) {
            let mut daemon = daemon.lock().unwrap_or_else(|p| p.into_inner());
            let pid = daemon.pid();
            if let Some(status) = daemon.stop() {
                tracing::debug!(?pid, %status, "virtiofsd stopped");
            }
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.exit.get().is_none() {
            self.exit.record(ExitReason::Stopped);
        }
        self.shutdown();
    }
}
