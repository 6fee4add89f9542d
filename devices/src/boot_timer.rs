//! Guest boot-completion signal (Firecracker convention).
//!
//! The guest writes the byte 123 to offset 0 of the boot timer's MMIO page
//! (0xC000_0000) once it considers itself booted (typically from its init).
//! The first such write records how long the boot took, in wall-clock time
//! since the VM build started and in CPU time consumed by the VMM process.

use std::fmt;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::bus::BusDevice;

/// The value the guest writes to signal that it has booted.
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// Size of the boot timer's MMIO region.
pub const BOOT_TIMER_MMIO_LEN: u64 = 0x1000;

/// How long the guest took to signal boot completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimestamp {
    /// Wall-clock time since the VM build started.
    pub wall: Duration,
    /// CPU time the VMM process consumed since the VM build started (all
    /// threads, vCPUs included).
    pub process_cpu: Duration,
}

/// Callback invoked once when the guest signals boot completion.
pub type BootCallback = Box<dyn FnMut(BootTimestamp) + Send>;

/// Records the moment the guest signals boot completion.
pub struct BootTimer {
    start: Instant,
    start_cpu: Duration,
    booted: Option<BootTimestamp>,
    callback: Option<BootCallback>,
}

impl BootTimer {
    /// Creates a boot timer measuring from `start` (wall clock) and
    /// `start_cpu` (the value of [`process_cpu_time`] at the same moment).
    pub fn new(start: Instant, start_cpu: Duration) -> Self {
        Self {
            start,
            start_cpu,
            booted: None,
            callback: None,
        }
    }

    /// The boot time, once the guest has signalled it. Only the first signal
    /// counts; later ones are ignored.
    pub fn boot_time(&self) -> Option<BootTimestamp> {
        self.booted
    }

    /// Registers `callback` to run once, on the vCPU thread, when the guest
    /// signals boot completion. Registering after the signal already arrived
    /// runs it immediately. A later registration replaces an earlier one that
    /// has not run yet.
    ///
    /// The callback runs while the bus holds this device's lock, so it must
    /// be quick and must not access the boot timer itself.
    pub fn on_boot(&mut self, mut callback: BootCallback) {
        match self.booted {
            Some(timestamp) => callback(timestamp),
            None => self.callback = Some(callback),
        }
    }

    fn record_boot(&mut self) {
        if self.booted.is_some() {
            debug!("boot timer: repeated boot-complete signal ignored");
            return;
        }
        let timestamp = BootTimestamp {
            wall: self.start.elapsed(),
            process_cpu: process_cpu_time().saturating_sub(self.start_cpu),
        };
        self.booted = Some(timestamp);
        info!(
            wall_us = timestamp.wall.as_micros(),
            process_cpu_us = timestamp.process_cpu.as_micros(),
            "guest signalled boot completion"
        );
        if let Some(mut callback) = self.callback.take() {
            callback(timestamp);
        }
    }
}

impl fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootTimer")
            .field("start", &self.start)
            .field("start_cpu", &self.start_cpu)
            .field("booted", &self.booted)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Accept any access width as long as the value written is exactly the
        // magic number (little-endian, upper bytes zero).
        let is_magic = data.split_first().is_some_and(|(&first, rest)| {
            first == BOOT_COMPLETE_MAGIC && rest.iter().all(|&b| b == 0)
        });
        if offset == 0 && is_magic {
            self.record_boot();
        } else {
            debug!(offset, ?data, "boot timer: write ignored");
        }
    }
}

/// CPU time consumed so far by this process (all threads), from
/// `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
///
/// Returns zero if the clock cannot be read, which Linux does not do for this
/// clock.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and
    // CLOCK_PROCESS_CPUTIME_ID is a clock id every Linux kernel supports.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot read the process CPU clock"
        );
        return Duration::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn spin(duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn first_magic_write_is_recorded_once() {
        let before = Instant::now();
        let mut timer = BootTimer::new(Instant::now(), process_cpu_time());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = calls.clone();
        timer.on_boot(Box::new(move |ts| sink.lock().unwrap().push(ts)));

        spin(Duration::from_millis(5));
        assert_eq!(timer.boot_time(), None);
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        let elapsed_max = before.elapsed();

        let ts = timer.boot_time().unwrap();
        assert!(ts.wall >= Duration::from_millis(5), "{ts:?}");
        assert!(ts.wall <= elapsed_max, "{ts:?}");
        // We burnt CPU while spinning; the process clock must show it.
        assert!(ts.process_cpu >= Duration::from_millis(1), "{ts:?}");

        spin(Duration::from_millis(2));
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        assert_eq!(timer.boot_time(), Some(ts), "later signals are ignored");
        assert_eq!(
            calls.lock().unwrap().as_slice(),
            &[ts],
            "callback runs once"
        );
    }

    #[test]
    fn wide_magic_write_counts() {
        let mut timer = BootTimer::new(Instant::now(), process_cpu_time());
        timer.write(0, &u32::from(BOOT_COMPLETE_MAGIC).to_le_bytes());
        assert!(timer.boot_time().is_some());
    }

    #[test]
    fn other_values_and_offsets_are_ignored() {
        let mut timer = BootTimer::new(Instant::now(), process_cpu_time());
        let called = Arc::new(Mutex::new(false));
        let flag = called.clone();
        timer.on_boot(Box::new(move |_| *flag.lock().unwrap() = true));

        timer.write(0, &[0]);
        timer.write(0, &[BOOT_COMPLETE_MAGIC + 1]);
        timer.write(0, &[BOOT_COMPLETE_MAGIC, 1]);
        timer.write(4, &[BOOT_COMPLETE_MAGIC]);
        timer.write(0, &[]);
        assert_eq!(timer.boot_time(), None);
        assert!(!*called.lock().unwrap());
    }

    #[test]
    fn reads_return_zero() {
        let mut timer = BootTimer::new(Instant::now(), process_cpu_time());
        let mut data = [0xffu8; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        timer.read(8, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn late_registration_runs_immediately() {
        let mut timer = BootTimer::new(Instant::now(), process_cpu_time());
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        let seen = Arc::new(Mutex::new(None));
        let sink = seen.clone();
        timer.on_boot(Box::new(move |ts| *sink.lock().unwrap() = Some(ts)));
        assert_eq!(*seen.lock().unwrap(), timer.boot_time());
    }

    #[test]
    fn process_cpu_time_is_monotonic() {
        let a = process_cpu_time();
        spin(Duration::from_millis(2));
        let b = process_cpu_time();
        assert!(b > a);
    }
}
