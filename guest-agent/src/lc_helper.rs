//! libcontainer's forking calls (create, exec) run in a short-lived helper
//! process: the agent re-executes itself (`/proc/self/exe __lc-create ...`).
//!
//! Why: libcontainer clones with a raw clone3 from the calling process. In
//! the multithreaded agent the clone copies every lock as it was at that
//! instant; libcontainer's intermediate process then calls
//! `std::process::exit`, whose runtime cleanup takes a std-internal lock
//! that threads take when they start or exit. A thread starting or exiting
//! at the wrong moment (ttrpc connections come and go) left the child
//! blocked for ever. The clone also copied every fd of the agent, so a
//! created-but-not-started container held other containers' stdio streams
//! open. The helper is single-threaded and has only the fds it is given
//! (stdin/stdout/stderr = the container's stdio), so neither can happen.
//!
//! The container's processes are the helper's children until it exits;
//! then they are reparented to the agent (PID 1 or child subreaper). The
//! agent runs the helper under the reaper's libcontainer lock, waits for it,
//! and registers the pid it reported before releasing the lock.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::container::{lc_error, root_is_initramfs, Paths};
use crate::error::{AgentError, AgentResult};
use crate::stdio::ChildFds;

pub const CREATE: &str = "__lc-create";
pub const EXEC: &str = "__lc-exec";

#[derive(Debug, Serialize, Deserialize)]
enum Kind {
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Internal,
}

#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Pid(i32),
    Error { kind: Kind, message: String },
}

impl From<AgentError> for Outcome {
    fn from(e: AgentError) -> Self {
        let kind = match e {
            AgentError::AlreadyExists(_) => Kind::AlreadyExists,
            AgentError::InvalidArgument(_) => Kind::InvalidArgument,
            AgentError::FailedPrecondition(_) => Kind::FailedPrecondition,
            _ => Kind::Internal,
        };
        Outcome::Error {
            kind,
            message: e.to_string(),
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Agent side: runs the helper for `op` and returns the pid it created.
/// Call with the reaper's libcontainer lock held.
pub fn run(
    paths: &Paths,
    op: &str,
    id: &str,
    target: &Path,
    console: Option<&Path>,
    child: Option<ChildFds>,
) -> AgentResult<u32> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let result = paths
        .sockets
        .join(format!("result-{}-{n}.json", std::process::id()));
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(op)
        .arg(&paths.lc_root)
        .arg(id)
        .arg(target)
        .arg(&result)
        .arg(console.map(PathBuf::from).unwrap_or_default());
    match child {
        Some(fds) => {
            cmd.stdin(Stdio::from(fds.stdin))
                .stdout(Stdio::from(fds.stdout))
                .stderr(Stdio::from(fds.stderr));
        }
        None => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
    }
    let status = cmd
        .status()
        .map_err(|e| AgentError::internal("running the libcontainer helper", e))?;
    let text = std::fs::read_to_string(&result);
    let _ = std::fs::remove_file(&result);
    let text = text.map_err(|e| {
        AgentError::Internal(format!(
            "libcontainer helper ({status}) left no result: {e}"
        ))
    })?;
    let outcome: Outcome = serde_json::from_str(&text)
        .map_err(|e| AgentError::internal("libcontainer helper result", e))?;
    match outcome {
        Outcome::Pid(pid) => u32::try_from(pid).map_err(|e| AgentError::internal("helper pid", e)),
        Outcome::Error { kind, message } => Err(match kind {
            Kind::AlreadyExists => AgentError::AlreadyExists(message),
            Kind::InvalidArgument => AgentError::InvalidArgument(message),
            Kind::FailedPrecondition => AgentError::FailedPrecondition(message),
            Kind::Internal => AgentError::Internal(message),
        }),
    }
}

/// Helper side: `guest-agent __lc-create|__lc-exec LC_ROOT ID TARGET RESULT CONSOLE`
/// (TARGET: shadow bundle for create, process.json for exec; CONSOLE empty
/// without a terminal). stdin/stdout/stderr are the container's stdio.
pub fn main(args: &[String]) -> ExitCode {
    let [op, lc_root, id, target, result, console] = args else {
        return ExitCode::from(2);
    };
    let console = (!console.is_empty()).then(|| PathBuf::from(console));
    let outcome = match build(op, Path::new(lc_root), id, Path::new(target), console) {
        Ok(pid) => Outcome::Pid(pid),
        Err(e) => e.into(),
    };
    let written = serde_json::to_vec(&outcome)
        .map_err(std::io::Error::other)
        .and_then(|j| std::fs::write(result, j));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn build(
    op: &str,
    lc_root: &Path,
    id: &str,
    target: &Path,
    console: Option<PathBuf>,
) -> AgentResult<i32> {
    let b = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(lc_root)
        .map_err(|e| lc_error("libcontainer root", e))?
        .with_console_socket(console);
    match op {
        CREATE => {
            let c = b
                .as_init(target)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(root_is_initramfs())
                .build()
                .map_err(|e| lc_error("creating the container", e))?;
            c.pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| AgentError::Internal("libcontainer returned no init pid".into()))
        }
        EXEC => b
            .as_tenant()
            .with_process(Some(target))
            .with_detach(true)
            .build()
            .map(|p| p.as_raw())
            .map_err(|e| lc_error("starting the exec process", e)),
        other => Err(AgentError::InvalidArgument(format!(
            "unknown helper op {other}"
        ))),
    }
}
