//! vCPU threads: one named thread per vCPU running KVM_RUN and dispatching
//! port and MMIO exits to the device buses.
//!
//! Control (run, pause, stop) goes through a [`RunControl`] shared by all
//! vCPUs of a VM. A vCPU inside KVM_RUN is kicked out with a signal whose
//! handler sets `immediate_exit` in that thread's `kvm_run`, so a request can
//! never be missed between checking the state and entering the guest.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use devices::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::exit::{ExitLatch, ExitReason};

/// Offset from SIGRTMIN of the signal used to kick vCPUs out of KVM_RUN.
const KICK_SIGNAL_OFFSET: i32 = 0;

/// KVM system event types (uapi/linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

thread_local! {
    /// This thread's kvm_run page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: a thread-local read and a byte store.
    let _ = KVM_RUN.try_with(|run| {
        let ptr = run.get();
        if !ptr.is_null() {
            // SAFETY: `ptr` is this thread's mapped kvm_run page; it is set
            // by the vCPU thread after mapping and cleared before unmapping.
            unsafe { (*ptr).immediate_exit = 1 };
        }
    });
}

/// The kick signal number.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Installs the kick handler (process-wide, once; harmless for other threads).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALL: Once = Once::new();
    static RESULT: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    INSTALL.call_once(|| {
        let _ = RESULT.set(register_signal_handler(kick_signal(), kick_handler));
    });
    RESULT.get().cloned().unwrap_or(Ok(()))
}

/// What the vCPUs of a VM should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Desired {
    /// Run the guest.
    Run = 0,
    /// Park outside KVM_RUN.
    Pause = 1,
    /// Leave the thread.
    Stop = 2,
}

/// Run/pause/stop state shared by the vCPUs of one VM.
#[derive(Debug)]
pub struct RunControl {
    desired: AtomicU8,
    /// (parked, exited) vCPU counts.
    counts: Mutex<(usize, usize)>,
    changed: Condvar,
}

impl RunControl {
    /// Starts in `Run`.
    pub fn new() -> Self {
        RunControl {
            desired: AtomicU8::new(Desired::Run as u8),
            counts: Mutex::new((0, 0)),
            changed: Condvar::new(),
        }
    }

    /// The requested state.
    pub fn desired(&self) -> Desired {
        match self.desired.load(Ordering::SeqCst) {
            0 => Desired::Run,
            1 => Desired::Pause,
            _ => Desired::Stop,
        }
    }

    /// Requests a state (callers kick the vCPUs afterwards).
    pub fn set(&self, desired: Desired) {
        let _guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        self.desired.store(desired as u8, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Blocks until `n` vCPUs are parked or exited.
    pub fn wait_quiescent(&self, n: usize) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        while counts.0 + counts.1 < n && self.desired() == Desired::Pause {
            counts = self.changed.wait(counts).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn park(&self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.0 += 1;
        self.changed.notify_all();
        while self.desired() == Desired::Pause {
            counts = self.changed.wait(counts).unwrap_or_else(|p| p.into_inner());
        }
        counts.0 -= 1;
        self.changed.notify_all();
    }

    fn mark_exited(&self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.1 += 1;
        self.changed.notify_all();
    }
}

impl Default for RunControl {
    fn default() -> Self {
        Self::new()
    }
}

/// Exit counters, shared by all vCPUs of a VM.
#[derive(Debug, Default)]
pub struct ExitStats {
    /// Port reads/writes no device claimed.
    pub unclaimed_pio: AtomicU64,
    /// MMIO reads/writes no device claimed.
    pub unclaimed_mmio: AtomicU64,
    /// All exits handled.
    pub exits: AtomicU64,
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port-I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where the VM's exit reason is recorded.
    pub exit: Arc<ExitLatch>,
    /// Run/pause/stop control.
    pub control: Arc<RunControl>,
    /// Exit counters.
    pub stats: Arc<ExitStats>,
    /// Set by the first vCPU to enter KVM_RUN.
    pub first_run: Arc<OnceLock<Instant>>,
}

/// A vCPU ready to run.
pub struct Vcpu {
    /// Its index (also its APIC ID).
    pub index: u8,
    /// The KVM vCPU.
    pub fd: VcpuFd,
}

/// What one exit asks of the run loop.
enum Next {
    Continue,
    Exit(ExitReason),
}

impl Vcpu {
    /// Spawns the vCPU's thread, named `vcpu<index>`.
    pub fn start(self, ctx: VcpuContext) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || self.run(ctx))
    }

    fn run(mut self, ctx: VcpuContext) {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
        let index = self.index;
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_loop(&ctx)));
        KVM_RUN.with(|run| run.set(null_mut()));
        let reason = match outcome {
            Ok(Some(reason)) => Some(reason),
            Ok(None) => None,
            Err(panic) => Some(ExitReason::VcpuError {
                vcpu: index,
                message: format!("vCPU thread panicked: {}", panic_message(&panic)),
            }),
        };
        if let Some(reason) = reason {
            ctx.exit.record(reason);
        }
        ctx.control.mark_exited();
        tracing::debug!(vcpu = index, "vCPU thread exits");
    }

    /// Runs until stopped (None) or until the guest/KVM ends the VM.
    fn run_loop(&mut self, ctx: &VcpuContext) -> Option<ExitReason> {
        loop {
            self.fd.set_kvm_immediate_exit(0);
            match ctx.control.desired() {
                Desired::Stop => return None,
                Desired::Pause => {
                    ctx.control.park();
                    continue;
                }
                Desired::Run => {}
            }
            ctx.first_run.get_or_init(Instant::now);
            if let Next::Exit(reason) = self.run_once(ctx) {
                return Some(reason);
            }
        }
    }

    fn run_once(&mut self, ctx: &VcpuContext) -> Next {
        let index = self.index;
        let result = self.fd.run();
        ctx.stats.exits.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !dispatch(index, || ctx.pio.read(u64::from(port), data)) {
                    data.fill(0xff);
                    ctx.stats.unclaimed_pio.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(vcpu = index, port, "unclaimed port read");
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !dispatch(index, || ctx.pio.write(u64::from(port), data)) {
                    ctx.stats.unclaimed_pio.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(vcpu = index, port, "unclaimed port write");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !dispatch(index, || ctx.mmio.read(addr, data)) {
                    data.fill(0);
                    ctx.stats.unclaimed_mmio.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(vcpu = index, addr, "unclaimed MMIO read");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !dispatch(index, || ctx.mmio.write(addr, data)) {
                    ctx.stats.unclaimed_mmio.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(vcpu = index, addr, "unclaimed MMIO write");
                }
                Next::Continue
            }
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => Next::Continue,
            Ok(VcpuExit::Shutdown) => Next::Exit(ExitReason::TripleFault { vcpu: index }),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Exit(ExitReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Next::Exit(ExitReason::Reset),
                KVM_SYSTEM_EVENT_CRASH => Next::Exit(ExitReason::Crash { vcpu: index }),
                other => {
                    tracing::warn!(vcpu = index, kind = other, "unknown KVM system event ignored");
                    Next::Continue
                }
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::Exit(ExitReason::VcpuError {
                vcpu: index,
                message: format!(
                    "KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x}, host cpu {cpu})"
                ),
            }),
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the exit union is the one KVM filled.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Next::Exit(ExitReason::VcpuError {
                    vcpu: index,
                    message: format!(
                        "KVM_EXIT_INTERNAL_ERROR (suberror {suberror}: {})",
                        internal_error_name(suberror)
                    ),
                })
            }
            Ok(other) => Next::Exit(ExitReason::VcpuError {
                vcpu: index,
                message: format!("unexpected KVM exit: {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Exit(ExitReason::VcpuError {
                vcpu: index,
                message: format!("KVM_RUN failed: {e}"),
            }),
        }
    }
}

/// Runs a bus access, turning a device panic into a logged, unclaimed access
/// rather than a dead vCPU thread.
fn dispatch(vcpu: u8, access: impl FnOnce() -> bool) -> bool {
    match catch_unwind(AssertUnwindSafe(access)) {
        Ok(claimed) => claimed,
        Err(panic) => {
            tracing::error!(
                vcpu,
                "device panicked during an access: {}",
                panic_message(&panic)
            );
            true
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => {
            "emulation failure (an instruction KVM cannot emulate; on a PVM host a standard \
              guest kernel ends like this)"
        }
        2 => "simultaneous exception",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// Sends the kick signal to a vCPU thread.
pub fn kick(handle: &JoinHandle<()>) {
    if handle.is_finished() {
        return;
    }
    if let Err(e) = handle.kill(kick_signal()) {
        tracing::debug!("kick failed (thread gone?): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_control_pause_and_resume() {
        let control = Arc::new(RunControl::new());
        control.set(Desired::Pause);
        let parked = {
            let control = control.clone();
            std::thread::spawn(move || control.park())
        };
        control.wait_quiescent(1);
        assert_eq!(control.counts.lock().unwrap().0, 1);
        control.set(Desired::Run);
        parked.join().unwrap();
        assert_eq!(control.counts.lock().unwrap().0, 0);
    }

    #[test]
    fn exited_vcpus_count_as_quiescent() {
        let control = RunControl::new();
        control.set(Desired::Pause);
        control.mark_exited();
        control.wait_quiescent(1);
    }

    #[test]
    fn dispatch_contains_device_panics() {
        assert!(dispatch(0, || panic!("bad device")));
        assert!(!dispatch(0, || false));
    }
}
