//! One process the agent tracks (a container's init or an exec): its
//! status, stdio and exit, with a condition variable for Wait.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{AgentError, AgentResult};
use crate::stdio::{ChildFds, PreparedIo, RunningIo, StdioSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started (init: waiting in libcontainer; exec: only
    /// registered).
    Created,
    Running,
    Stopped,
}

/// An exit as Wait and Delete report it.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

pub struct ProcState {
    pub pid: u32,
    pub status: Status,
    pub exit: Option<Exit>,
    /// Dialled but not yet attached (exec before Start).
    pub pending_io: Option<(PreparedIo, Option<ChildFds>)>,
    pub io: Option<RunningIo>,
    /// Exec only: the OCI process to run.
    pub exec_spec: Option<oci_spec::runtime::Process>,
    /// Start is in progress: its start event is not published yet, so the
    /// exit event waits (events keep the start-before-exit order).
    pub starting: bool,
}

pub struct Proc {
    pub container_id: String,
    /// Empty for the container's init.
    pub exec_id: String,
    pub stdio: StdioSpec,
    state: Mutex<ProcState>,
    exited: Condvar,
}

impl Proc {
    pub fn new(container_id: &str, exec_id: &str, stdio: StdioSpec) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            state: Mutex::new(ProcState {
                pid: 0,
                status: Status::Created,
                exit: None,
                pending_io: None,
                io: None,
                exec_spec: None,
                starting: false,
            }),
            exited: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit
    }

    /// Marks Start as in progress (see `ProcState::starting`).
    pub fn begin_start(&self) {
        self.lock().starting = true;
    }

    /// Start finished (its event, if any, is published).
    pub fn end_start(&self) {
        self.lock().starting = false;
        self.exited.notify_all();
    }

    /// Waits (bounded) until no Start is in progress.
    pub fn wait_start_done(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.starting {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .exited
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Records the exit and wakes waiters.
    pub fn set_exited(&self, exit: Exit) {
        let mut st = self.lock();
        st.status = Status::Stopped;
        st.exit = Some(exit);
        if let Some(io) = st.io.as_mut() {
            io.release_pty();
        }
        drop(st);
        self.exited.notify_all();
    }

    /// Blocks until the process exited, the deadline passed or `cancelled`
    /// says the client went away.
    pub fn wait(
        &self,
        deadline: Option<Instant>,
        cancelled: &dyn Fn() -> bool,
    ) -> AgentResult<Exit> {
        let mut st = self.lock();
        loop {
            if let Some(e) = st.exit {
                return Ok(e);
            }
            if cancelled() {
                return Err(AgentError::Internal(
                    "wait cancelled: connection closed".into(),
                ));
            }
            let mut slice = Duration::from_millis(100);
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Err(AgentError::DeadlineExceeded(
                        "wait: deadline exceeded".into(),
                    ));
                }
                slice = slice.min(d - now);
            }
            st = self
                .exited
                .wait_timeout(st, slice)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_sees_exit_from_another_thread() {
        let p = Arc::new(Proc::new("c", "", StdioSpec::default()));
        let p2 = p.clone();
        let t = std::thread::spawn(move || p2.wait(None, &|| false));
        std::thread::sleep(Duration::from_millis(20));
        p.set_exited(Exit {
            status: 7,
            at: SystemTime::now(),
        });
        assert_eq!(t.join().unwrap().unwrap().status, 7);
        assert_eq!(p.status(), Status::Stopped);
    }

    #[test]
    fn wait_honours_deadline() {
        let p = Proc::new("c", "", StdioSpec::default());
        let r = p.wait(Some(Instant::now() + Duration::from_millis(30)), &|| false);
        assert!(r.is_err());
    }
}
