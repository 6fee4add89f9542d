//! Child reaping and signal delivery.
//!
//! Design (why it is safe next to libcontainer):
//!
//! * The agent is PID 1 or a child subreaper, so container processes (which
//!   libcontainer clones with CLONE_PARENT from its intermediate process)
//!   and every orphan in the agent's subtree become the agent's children.
//! * libcontainer itself forks children (its intermediate process, hooks)
//!   and collects them with `waitpid(<that pid>)` inside its calls. A
//!   blanket `waitpid(-1)` in the reaper could steal those statuses.
//! * So the reaper reaps in two ways:
//!   1. pids the service registered as its own (container inits and exec
//!      processes) with `waitpid(pid, WNOHANG)`, one by one; libcontainer
//!      never waits for those;
//!   2. everything else (orphans reparented to us) only while it holds the
//!      libcontainer lock (`try_lock`, never blocking): while it holds it,
//!      no libcontainer call is running, so no libcontainer child exists
//!      whose status someone else waits for. It peeks with
//!      `waitid(P_ALL, WNOWAIT)` and reaps the pid it saw.
//! * The service calls libcontainer only under that lock and registers the
//!   new pid before releasing it, so a process that exits at once is never
//!   mistaken for an orphan. Each exit is therefore collected exactly once.
//! * Signals (SIGCHLD, SIGTERM, SIGINT) are caught with a handler that
//!   writes the signal number to a non-blocking self-pipe; signals are not
//!   blocked, because libcontainer does not reset the signal mask and a
//!   blocked mask would be inherited by the container processes.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Called once with (exit status, exit time) when a registered pid exits.
pub type ExitCallback = Box<dyn FnOnce(u32, SystemTime) + Send>;

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls (errno access, write) on a fd
    // that stays open for the life of the process; errno is restored.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = WAKE_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let b = u8::try_from(sig).unwrap_or(0);
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Converts a wait status into the containerd exit status (128+signal).
pub fn exit_code(status: WaitStatus) -> Option<u32> {
    match status {
        WaitStatus::Exited(_, code) => Some(u32::try_from(code).unwrap_or(255)),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as u32),
        _ => None,
    }
}

/// What woke the reaper besides children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    Terminate,
}

pub struct Reaper {
    owned: Mutex<HashMap<i32, ExitCallback>>,
    lc_lock: Mutex<()>,
    wake_r: OwnedFd,
    wake_w: OwnedFd,
}

impl Reaper {
    /// Installs the signal handlers (once per process) and returns the
    /// reaper. `subreaper`: also make this process a child subreaper.
    pub fn install(subreaper: bool) -> std::io::Result<Arc<Self>> {
        if subreaper {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(std::io::Error::from)?;
        WAKE_FD.store(w.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            // SAFETY: installs a handler that only does async-signal-safe
            // work; the sigaction struct is fully initialised.
            let rc = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Arc::new(Self {
            owned: Mutex::new(HashMap::new()),
            lc_lock: Mutex::new(()),
            wake_r: r,
            wake_w: w,
        }))
    }

    /// Takes the libcontainer lock: hold it around every libcontainer call
    /// that may fork, and register the pids it created before dropping it.
    pub fn lc_lock(&self) -> LcGuard<'_> {
        LcGuard {
            _guard: self.lc_lock.lock().unwrap_or_else(|p| p.into_inner()),
            reaper: self,
        }
    }

    /// Registers a pid the service owns; `on_exit` runs once when it exits.
    pub fn register(&self, pid: i32, on_exit: ExitCallback) {
        self.owned_lock().insert(pid, on_exit);
        self.kick();
    }

    fn owned_lock(&self) -> MutexGuard<'_, HashMap<i32, ExitCallback>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the reaper thread.
    pub fn kick(&self) {
        let b = [0u8];
        let _ = nix::unistd::write(self.wake_w.as_fd(), &b);
    }

    /// Runs the reaper loop on a new thread; `on_wake` gets SIGTERM/SIGINT.
    pub fn spawn(self: &Arc<Self>, on_wake: impl Fn(Wake) + Send + 'static) -> std::io::Result<()> {
        let me = self.clone();
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || me.run(on_wake))?;
        Ok(())
    }

    fn run(&self, on_wake: impl Fn(Wake)) {
        let mut buf = [0u8; 64];
        loop {
            let mut fds = [nix::poll::PollFd::new(
                self.wake_r.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16));
            loop {
                match nix::unistd::read(self.wake_r.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if buf[..n]
                            .iter()
                            .any(|&s| i32::from(s) == libc::SIGTERM || i32::from(s) == libc::SIGINT)
                        {
                            on_wake(Wake::Terminate);
                        }
                    }
                }
            }
            self.reap();
        }
    }

    /// One reaping pass (see the module comment).
    pub fn reap(&self) {
        let mut exits = Vec::new();
        {
            let mut owned = self.owned_lock();
            let pids: Vec<i32> = owned.keys().copied().collect();
            for pid in pids {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(status) => {
                        if let Some(code) = exit_code(status) {
                            if let Some(cb) = owned.remove(&pid) {
                                exits.push((pid, code, cb));
                            }
                        }
                    }
                    Err(Errno::ECHILD) => {
                        tracing::warn!(pid, "registered pid is not our child any more");
                        if let Some(cb) = owned.remove(&pid) {
                            exits.push((pid, 255, cb));
                        }
                    }
                    Err(e) => tracing::warn!(pid, "waitpid: {e}"),
                }
            }
        }
        let now = SystemTime::now();
        for (pid, code, cb) in exits {
            tracing::debug!(pid, code, "process exited");
            cb(code, now);
        }
        self.reap_orphans();
    }

    fn reap_orphans(&self) {
        let Ok(_lc) = self.lc_lock.try_lock() else {
            // A libcontainer call is running; orphans wait for the next pass.
            return;
        };
        loop {
            let peek = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let pid = match peek {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => match s.pid() {
                    Some(p) => p,
                    None => return,
                },
            };
            let cb = self.owned_lock().remove(&pid.as_raw());
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => {
                    let code = exit_code(status).unwrap_or(255);
                    match cb {
                        Some(cb) => cb(code, SystemTime::now()),
                        None => tracing::debug!(pid = pid.as_raw(), code, "reaped an orphan"),
                    }
                }
                Err(e) => {
                    tracing::warn!(pid = pid.as_raw(), "waitpid after peek: {e}");
                    return;
                }
            }
        }
    }
}

/// Held around libcontainer calls; wakes the reaper when released so
/// orphans that exited meanwhile are collected.
pub struct LcGuard<'a> {
    _guard: MutexGuard<'a, ()>,
    reaper: &'a Reaper,
}

impl Drop for LcGuard<'_> {
    fn drop(&mut self) {
        self.reaper.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let p = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(
                p,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
