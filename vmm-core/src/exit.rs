//! Why a VM stopped, and the latch that records the first reason.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5 or a KVM system-event shutdown).
    PowerOff,
    /// The guest asked to reset (i8042 pulse, ACPI reset register, KVM reset event).
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU that faulted.
        vcpu: u8,
    },
    /// The guest reported a crash (KVM system event).
    Crash {
        /// The vCPU that reported it.
        vcpu: u8,
    },
    /// The host stopped the VM.
    Stopped,
    /// A vCPU hit an error KVM or the VMM could not handle.
    VcpuError {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        message: String,
    },
    /// A device failed in a way that ends the VM.
    DeviceError(String),
}

impl ExitReason {
    /// True for the ways a guest ends on purpose (and a host stop).
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::PowerOff | ExitReason::Reset | ExitReason::Stopped
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => f.write_str("guest powered off"),
            ExitReason::Reset => f.write_str("guest reset"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            ExitReason::Crash { vcpu } => write!(f, "guest crashed (reported by vCPU {vcpu})"),
            ExitReason::Stopped => f.write_str("stopped by the host"),
            ExitReason::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu} error: {message}"),
            ExitReason::DeviceError(message) => write!(f, "device error: {message}"),
        }
    }
}

/// Records the first [`ExitReason`] and wakes whoever waits for it.
#[derive(Debug)]
pub struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    changed: Condvar,
    event: EventFd,
}

impl ExitLatch {
    /// A latch with its wake-up eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitLatch {
            reason: Mutex::new(None),
            changed: Condvar::new(),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one was recorded already. Returns whether it won.
    pub fn record(&self, reason: ExitReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            tracing::debug!(%reason, "later exit reason ignored");
            return false;
        }
        tracing::info!(%reason, "VM exit");
        *slot = Some(reason);
        self.changed.notify_all();
        if let Err(e) = self.event.write(1) {
            tracing::warn!("cannot signal the exit eventfd: {e}");
        }
        true
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks until a reason is recorded, or `timeout` passes.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return Some(reason.clone());
            }
            match deadline {
                None => slot = self.changed.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    slot = self
                        .changed
                        .wait_timeout(slot, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// The eventfd written when a reason is recorded.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_waiters() {
        let latch = Arc::new(ExitLatch::new().unwrap());
        assert_eq!(latch.wait(Some(Duration::from_millis(5))), None);
        let waiter = {
            let latch = latch.clone();
            std::thread::spawn(move || latch.wait(None))
        };
        assert!(latch.record(ExitReason::PowerOff));
        assert!(!latch.record(ExitReason::Reset));
        assert_eq!(waiter.join().unwrap(), Some(ExitReason::PowerOff));
        assert_eq!(latch.get(), Some(ExitReason::PowerOff));
        assert_eq!(latch.event().read().unwrap(), 1);
    }

    #[test]
    fn clean_reasons() {
        assert!(ExitReason::PowerOff.is_clean());
        assert!(ExitReason::Reset.is_clean());
        assert!(ExitReason::Stopped.is_clean());
        assert!(!ExitReason::TripleFault { vcpu: 0 }.is_clean());
        assert!(!ExitReason::DeviceError("x".into()).is_clean());
        assert_eq!(
            ExitReason::VcpuError {
                vcpu: 1,
                message: "boom".into()
            }
            .to_string(),
            "vCPU 1 error: boom"
        );
    }
}
