//! The VM's event thread: turns device eventfds (reset, power-off) into exit
//! reasons and feeds console input from stdin to the serial port. Built on
//! event-manager; one thread per VM, named `vmm-events`. It also watches each
//! virtiofsd (its pidfd): a death is a device error of that share.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::virtio::fs::Virtiofsd;
use devices::virtio::net::RX_QUEUE as NET_RX_QUEUE;
use devices::virtio::vsock::RX_QUEUE as VSOCK_RX_QUEUE;
use devices::virtio::{Fs, QueueNotifier, Vsock};
use devices::Serial;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitLatch, ExitReason};
use crate::virtio_slots::QueueEvent;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Guest reset / power-off requests and the loop's own stop request.
struct Lifecycle {
    reset: EventFd,
    power_off: EventFd,
    stop: EventFd,
    exit: Arc<ExitLatch>,
    stopping: Arc<AtomicBool>,
}

impl MutEventSubscriber for Lifecycle {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.reset, &self.power_off, &self.stop] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                tracing::error!("cannot watch a lifecycle eventfd: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.record(ExitReason::Reset);
        } else if fd == self.power_off.as_raw_fd() {
            let _ = self.power_off.read();
            self.exit.record(ExitReason::PowerOff);
        } else if fd == self.stop.as_raw_fd() {
            let _ = self.stop.read();
            self.stopping.store(true, Ordering::SeqCst);
        }
    }
}

/// Bytes typed on our stdin, queued into the guest's serial FIFO.
struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    pending: Vec<u8>,
}

const STDIN: RawFd = 0;

impl ConsoleInput {
    /// Moves as much pending input as the FIFO takes. True if some remains.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        match serial.enqueue_input(&self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(e) => {
                tracing::warn!("console input dropped: {e}");
                self.pending.clear();
            }
        }
        !self.pending.is_empty()
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // stdin may be /dev/null or a regular file, which epoll refuses
        // (EPERM): then there simply is no console input.
        if let Err(e) = ops.add(Events::new_raw(STDIN, EventSet::IN)) {
            tracing::debug!("stdin cannot be watched, console input disabled: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if !self.pending.is_empty() {
            return; // FIFO still full; the loop retries with a timeout.
        }
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            std::io::stdin().lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF, hang-up or error: stop watching stdin.
            let _ = ops.remove(Events::empty_raw(STDIN));
            return;
        }
        self.pending.extend_from_slice(&buf[..n]);
        self.flush();
    }
}

/// Guest queue notifications (ioeventfds) delivered to virtio devices.
struct QueueNotifications {
    events: Vec<QueueEvent>,
}

impl MutEventSubscriber for QueueNotifications {
    fn init(&mut self, ops: &mut EventOps) {
        for q in &self.events {
            if let Err(e) = ops.add(Events::new(&q.event, EventSet::IN)) {
                tracing::error!(
                    queue = q.queue,
                    "cannot watch a queue notification eventfd: {e}"
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(q) = self.events.iter().find(|q| q.event.as_raw_fd() == fd) {
            let _ = q.event.read();
            q.notifier.notify(q.queue);
        }
    }
}

/// Host-side readiness of the vsock backend (its unix sockets).
pub struct VsockHostEvents {
    /// The device.
    pub device: Arc<Mutex<Vsock>>,
    /// Its transport's notifier (an error is reported through it).
    pub notifier: QueueNotifier,
}

impl MutEventSubscriber for VsockHostEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = self
            .device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .host_fds();
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("cannot watch a vsock host fd: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let result = self
            .device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .process_host_event(events.fd());
        if let Err(e) = result {
            // The device is now failed; the transport learns it on this
            // notification and sets DEVICE_NEEDS_RESET.
            tracing::warn!("vsock backend error: {e}");
            self.notifier.notify(VSOCK_RX_QUEUE as u32);
        }
    }
}

/// Frames arriving on a virtio-net device's tap (edge-triggered: the device
/// reads until the tap is empty or the guest has no buffers left, and
/// resumes on the guest's next RX notification).
pub struct TapEvents {
    /// The tap fd.
    pub tap_fd: RawFd,
    /// The device's transport notifier.
    pub notifier: QueueNotifier,
}

impl MutEventSubscriber for TapEvents {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(
            self.tap_fd,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )) {
            tracing::error!("cannot watch a tap fd: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.notifier.notify(NET_RX_QUEUE as u32);
    }
}

/// The virtiofsd process behind a virtio-fs device. Its pidfd turns
/// readable when it exits: the device then fails (DEVICE_NEEDS_RESET with a
/// configuration-change interrupt once the transport hears of it).
pub struct VirtiofsdEvents {
    /// The process (shared with the running VM, which stops it).
    pub daemon: Arc<Mutex<Virtiofsd>>,
    /// The device it serves.
    pub device: Arc<Mutex<Fs>>,
    /// The device's transport notifier.
    pub notifier: QueueNotifier,
}

impl VirtiofsdEvents {
    fn pidfd(&self) -> RawFd {
        self.daemon
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pidfd()
    }

    /// The process exited: reap it, fail the device, tell the transport.
    fn backend_exited(&self) {
        let (status, dir) = {
            let mut daemon = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
            let status = match daemon.try_wait() {
                Ok(Some(status)) => status.to_string(),
                Ok(None) => "an unknown status".to_string(),
                Err(e) => e.to_string(),
            };
            (status, daemon.shared_dir().display().to_string())
        };
        // Logged as an error by the device, with its tag.
        self.device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .backend_failed(format!("virtiofsd for {dir} exited with {status}"));
        self.notifier.notify(0);
    }
}

impl MutEventSubscriber for VirtiofsdEvents {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.pidfd(), EventSet::IN)) {
            tracing::error!("cannot watch virtiofsd's pidfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Level-triggered and readable for good: watch it once.
        let _ = ops.remove(events);
        self.backend_exited();
    }
}

/// A running event thread.
pub struct EventLoopHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl EventLoopHandle {
    /// Asks the thread to end and joins it.
    pub fn stop(self) {
        if let Err(e) = self.stop.write(1) {
            tracing::warn!("cannot signal the event thread: {e}");
        }
        if self.thread.join().is_err() {
            tracing::error!("the event thread panicked");
        }
    }
}

/// The device-side event sources of one VM.
#[derive(Default)]
pub struct DeviceEvents {
    /// Queue notification eventfds handled in the VMM.
    pub queue_events: Vec<QueueEvent>,
    /// The vsock backend's host sockets.
    pub vsock: Option<VsockHostEvents>,
    /// Tap devices.
    pub taps: Vec<TapEvents>,
    /// virtiofsd processes (one per virtio-fs share).
    pub virtiofsds: Vec<VirtiofsdEvents>,
}

/// Namespace for starting the loop.
pub struct EventLoop;

impl EventLoop {
    /// Starts the event thread.
    pub fn start(
        exit: Arc<ExitLatch>,
        reset: EventFd,
        power_off: EventFd,
        console: Option<Arc<Mutex<Serial>>>,
        devices: DeviceEvents,
    ) -> std::io::Result<EventLoopHandle> {
        let DeviceEvents {
            queue_events,
            vsock,
            taps,
            virtiofsds,
        } = devices;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let lifecycle = Lifecycle {
            reset,
            power_off,
            stop: stop.try_clone()?,
            exit,
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let stopping = lifecycle.stopping.clone();
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| std::io::Error::other(e.to_string()))?;
        manager.add_subscriber(Arc::new(Mutex::new(lifecycle)));
        let console = console.map(|serial| {
            Arc::new(Mutex::new(ConsoleInput {
                serial,
                pending: Vec::new(),
            }))
        });
        if let Some(console) = &console {
            manager.add_subscriber(console.clone());
        }
        for tap in taps {
            manager.add_subscriber(Arc::new(Mutex::new(tap)));
        }
        for virtiofsd in virtiofsds {
            manager.add_subscriber(Arc::new(Mutex::new(virtiofsd)));
        }
        if let Some(vsock) = vsock {
            manager.add_subscriber(Arc::new(Mutex::new(vsock)));
        }
        if !queue_events.is_empty() {
            manager.add_subscriber(Arc::new(Mutex::new(QueueNotifications {
                events: queue_events,
            })));
        }
        let thread = std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    let retry = console
                        .as_ref()
                        .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).flush())
                        .unwrap_or(false);
                    if let Err(e) = manager.run_with_timeout(if retry { 10 } else { -1 }) {
                        tracing::error!("event loop failed: {e}");
                        break;
                    }
                }
            })?;
        Ok(EventLoopHandle { stop, thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::virtio::fs::find_virtiofsd;
    use devices::virtio::{EventFdInterrupt, MmioTransport, VirtioDevice};

    #[test]
    fn a_virtiofsd_that_dies_fails_its_device_once() {
        let binary = find_virtiofsd().unwrap_or_else(|e| panic!("{e}"));
        let share = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-events-fs").unwrap();
        let (daemon, stream) = Virtiofsd::start(&binary, share.as_path()).unwrap();
        let pid = daemon.pid().unwrap();
        let device = Arc::new(Mutex::new(Fs::new("t", stream).unwrap()));
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let dyn_device: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let interrupt = Arc::new(EventFdInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        let transport = MmioTransport::new(dyn_device, mem, interrupt);
        let daemon = Arc::new(Mutex::new(daemon));
        let mut manager: EventManager<Subscriber> = EventManager::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(VirtiofsdEvents {
            daemon: daemon.clone(),
            device: device.clone(),
            notifier: transport.queue_notifier(),
        })));
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "alive: no event");

        // SAFETY: kill(2) of our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        assert_eq!(manager.run_with_timeout(10_000).unwrap(), 1);
        let failure = device.lock().unwrap().failure().map(str::to_string);
        assert!(
            failure
                .as_deref()
                .is_some_and(|f| f.contains("exited") && f.contains("9")),
            "{failure:?}"
        );
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "watched once");
        // Already reaped: stopping reports the status and removes the
        // socket directory.
        use std::os::unix::process::ExitStatusExt;
        let status = daemon.lock().unwrap().stop().map(|s| s.signal());
        assert_eq!(status, Some(Some(libc::SIGKILL)));
        assert!(daemon.lock().unwrap().stop().is_none());
    }
}
