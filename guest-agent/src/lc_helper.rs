//! libcontainer's forking calls (container create, exec) run in a freshly
//! exec'd, single-threaded copy of the agent: `guest-agent
//! __libcontainer-helper ...`.
//!
//! Why: libcontainer clones its intermediate and init processes with a raw
//! clone3, and the child runs ordinary Rust code (allocation, and
//! `std::process::exit`, whose runtime cleanup takes a std-internal lock that
//! every thread start and exit also takes). In the multithreaded agent (ttrpc
//! workers, stdio copiers) another thread can hold such a lock at the instant
//! of the clone, and the child then waits forever (seen in the 50-container
//! load test: `youki:[1:INTER]` stuck in `stack_overflow::drop_handler`). A
//! process that has just been exec'd has one thread and holds no lock, so
//! cloning there is safe: this is how a containerd shim uses runc.
//!
//! Protocol: the agent runs the helper with the container's stdio as the
//! helper's fds 0, 1, 2 (or /dev/null with a terminal, where the pty comes
//! through the console socket), and a result file path. The helper writes
//! one line into that file: `ok <pid>` or `err <kind> <message>`, and exits.
//! A file rather than a pipe, because the container processes are clones of
//! the helper and would keep a pipe's write end open until they exec.
//!
//! Processes: the helper is the agent's child, reaped here with `waitpid`
//! on its pid (the caller holds the reaper's libcontainer lock, so the
//! reaper leaves unknown children alone). libcontainer's init and exec
//! processes are created with CLONE_PARENT, i.e. as children of the helper;
//! when it exits they are reparented to the agent (PID 1 or a child
//! subreaper), whose reaper then collects their exits as before.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use crate::error::{AgentError, AgentResult};
use crate::stdio::ChildFds;

/// The hidden first argument that makes `guest-agent` act as the helper.
pub const HELPER_ARG: &str = "__libcontainer-helper";

/// The helper's log goes to this fd (a duplicate of the agent's log fd).
const HELPER_LOG_FD: i32 = 3;

static RESULT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The agent's log fd and filter, handed to every helper (set once by main).
static LOG: OnceLock<(RawFd, String)> = OnceLock::new();

/// Records the agent's log fd (which must stay open for the life of the
/// process) and log filter for the helpers.
pub fn set_log(fd: BorrowedFd<'static>, level: &str) {
    let _ = LOG.set((fd.as_raw_fd(), level.to_string()));
}

/// What the helper builds.
pub enum HelperOp<'a> {
    /// A container's init from the (shadow) bundle, stopped before the user
    /// process until Start.
    Create { bundle: &'a Path },
    /// A process in a running container, from an OCI process JSON file.
    Exec { process: &'a Path },
}

/// One helper run.
pub struct HelperRequest<'a> {
    pub lc_root: &'a Path,
    /// Directory for the result file.
    pub scratch: &'a Path,
    pub id: &'a str,
    pub op: HelperOp<'a>,
    pub console_socket: Option<&'a Path>,
    /// The process's stdio; None with a terminal.
    pub stdio: Option<ChildFds>,
}

/// Runs the helper and returns the new process's pid. The caller must hold
/// the reaper's libcontainer lock (see the module comment).
pub fn run(req: HelperRequest<'_>) -> AgentResult<u32> {
    let seq = RESULT_SEQ.fetch_add(1, Ordering::Relaxed);
    let result_path = req
        .scratch
        .join(format!("helper-{}-{seq}.result", std::process::id()));
    let _ = std::fs::remove_file(&result_path);

    let (log_fd, log_level) = match LOG.get() {
        Some((fd, level)) => (Some(*fd), level.as_str()),
        None => (None, "off"),
    };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_ARG);
    match &req.op {
        HelperOp::Create { bundle } => cmd.arg("create").arg(bundle),
        HelperOp::Exec { process } => cmd.arg("exec").arg(process),
    };
    cmd.arg(req.lc_root)
        .arg(req.id)
        .arg(&result_path)
        .arg(
            req.console_socket
                .map(Path::as_os_str)
                .unwrap_or("-".as_ref()),
        )
        .arg(log_level);
    match req.stdio {
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
    if let Some(raw) = log_fd {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2/fcntl, which are async-signal-safe; `raw` is the
        // agent's log fd, open for the life of the process (set_log).
        unsafe {
            cmd.pre_exec(move || {
                if raw == HELPER_LOG_FD {
                    // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                    if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, HELPER_LOG_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| AgentError::internal("starting the libcontainer helper", e))?;
    // The stdio fds were moved into `cmd`: drop it so the agent keeps no
    // copy of the child's ends.
    drop(cmd);
    let status = child
        .wait()
        .map_err(|e| AgentError::internal("waiting for the libcontainer helper", e))?;
    let result = std::fs::read_to_string(&result_path);
    let _ = std::fs::remove_file(&result_path);
    match result {
        Ok(line) => parse_result(&line),
        Err(e) => Err(AgentError::Internal(format!(
            "the libcontainer helper ended ({status}) without a result: {e}"
        ))),
    }
}

/// Parses the helper's result line.
fn parse_result(line: &str) -> AgentResult<u32> {
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .parse()
            .map_err(|_| AgentError::Internal(format!("helper result {line:?}: bad pid")));
    }
    let Some(rest) = line.strip_prefix("err ") else {
        return Err(AgentError::Internal(format!("helper result {line:?}")));
    };
    let (kind, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let message = message.to_string();
    Err(match kind {
        "already-exists" => AgentError::AlreadyExists(message),
        "failed-precondition" => AgentError::FailedPrecondition(message),
        "invalid-argument" => AgentError::InvalidArgument(message),
        "not-found" => AgentError::NotFound(message),
        _ => AgentError::Internal(message),
    })
}

/// Formats an error as the helper's result line.
fn format_error(e: &AgentError) -> String {
    let kind = match e {
        AgentError::AlreadyExists(_) => "already-exists",
        AgentError::FailedPrecondition(_) => "failed-precondition",
        AgentError::InvalidArgument(_) => "invalid-argument",
        AgentError::NotFound(_) => "not-found",
        _ => "internal",
    };
    // One line: newlines in libcontainer's debug output become spaces.
    format!("err {kind} {}\n", e.to_string().replace('\n', " "))
}

/// The helper's `main`: `args` are the arguments after [`HELPER_ARG`].
pub fn helper_main(args: &[OsString]) -> ExitCode {
    let [op, path, lc_root, id, result, console, log_level] = args else {
        eprintln!("guest-agent {HELPER_ARG}: internal use only (wrong arguments)");
        return ExitCode::from(2);
    };
    init_helper_logging(&log_level.to_string_lossy());
    let console = (console != "-").then(|| PathBuf::from(console));
    let id = id.to_string_lossy();
    let outcome = build(
        &op.to_string_lossy(),
        Path::new(path),
        Path::new(lc_root),
        &id,
        console,
    );
    let line = match &outcome {
        Ok(pid) => format!("ok {pid}\n"),
        Err(e) => format_error(e),
    };
    match std::fs::write(Path::new(result), line) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("writing the helper result: {e}");
            ExitCode::FAILURE
        }
    }
}

/// libcontainer's messages go to the agent's log (fd 3), never to fd 2,
/// which is the container's stderr.
fn init_helper_logging(level: &str) {
    // SAFETY: fcntl(F_GETFD) only inspects the descriptor table.
    if unsafe { libc::fcntl(HELPER_LOG_FD, libc::F_GETFD) } < 0 {
        return;
    }
    // SAFETY: fd 3 was placed by the agent for this process and nothing
    // else owns it; mark it close-on-exec so container processes that exec
    // do not keep it.
    let log = unsafe {
        libc::fcntl(HELPER_LOG_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(HELPER_LOG_FD)
    };
    let log = std::sync::Arc::new(std::fs::File::from(log));
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || HelperLog(log.clone()))
        .with_ansi(false)
        .try_init();
}

struct HelperLog(std::sync::Arc<std::fs::File>);

impl Write for HelperLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn dup_stdio(fd: BorrowedFd<'_>) -> AgentResult<OwnedFd> {
    fd.try_clone_to_owned()
        .map_err(|e| AgentError::internal("duplicating the helper's stdio", e))
}

/// The libcontainer call itself, in the helper.
fn build(
    op: &str,
    path: &Path,
    lc_root: &Path,
    id: &str,
    console: Option<PathBuf>,
) -> AgentResult<u32> {
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(lc_root)
        .map_err(|e| crate::container::lc_error("libcontainer root", e))?
        .with_console_socket(console.as_ref());
    if console.is_none() {
        builder = builder
            .with_stdin(dup_stdio(std::io::stdin().as_fd())?)
            .with_stdout(dup_stdio(std::io::stdout().as_fd())?)
            .with_stderr(dup_stdio(std::io::stderr().as_fd())?);
    }
    let pid = match op {
        "create" => {
            let container = builder
                .as_init(path)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| crate::container::lc_error("creating the container", e))?;
            container
                .pid()
                .ok_or_else(|| AgentError::Internal("libcontainer returned no init pid".into()))?
                .as_raw()
        }
        "exec" => builder
            .as_tenant()
            .with_process(Some(path))
            .with_detach(true)
            .build()
            .map_err(|e| crate::container::lc_error("starting the exec process", e))?
            .as_raw(),
        other => {
            return Err(AgentError::Internal(format!(
                "unknown helper operation {other:?}"
            )))
        }
    };
    u32::try_from(pid).map_err(|e| AgentError::internal("pid", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_with_their_codes() {
        assert_eq!(parse_result("ok 42\n").unwrap(), 42);
        let cases = [
            AgentError::AlreadyExists("dup".into()),
            AgentError::FailedPrecondition("state".into()),
            AgentError::InvalidArgument("bad\nspec".into()),
            AgentError::NotFound("gone".into()),
            AgentError::Internal("broke".into()),
        ];
        for e in cases {
            let code = e.code();
            let back = parse_result(&format_error(&e)).unwrap_err();
            assert_eq!(back.code(), code);
            assert!(!back.to_string().contains('\n'));
        }
    }

    #[test]
    fn garbage_results_are_internal_errors() {
        for line in ["", "ok", "ok x", "maybe 3", "ok -1"] {
            let e = parse_result(line).unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::INTERNAL, "{line:?}");
        }
    }

    #[test]
    fn helper_rejects_wrong_arguments() {
        assert_eq!(
            format!("{:?}", helper_main(&[])),
            format!("{:?}", ExitCode::from(2))
        );
    }
}
