//! Process stdio: the URLs the agent dials, the pipes or pty between the
//! process and the agent, and the copier threads in between.
//!
//! Transport (see docs/agent.md): each of stdin/stdout/stderr is one
//! stream connection the agent dials during Create/Exec; `unix:///path`,
//! `vsock://CID:PORT`, or empty for /dev/null. Output streams are closed
//! after the process side reaches EOF (all writers gone) and every byte was
//! written; the copier blocks on a slow reader (backpressure), never drops.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::error::{AgentError, AgentResult};

/// Where one stdio stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdioUrl {
    /// Empty string: /dev/null.
    Null,
    /// `unix:///abs/path`.
    Unix(PathBuf),
    /// `vsock://CID:PORT`.
    Vsock { cid: u32, port: u32 },
}

impl StdioUrl {
    /// Parses one of Create/Exec's stdin/stdout/stderr strings.
    pub fn parse(s: &str) -> AgentResult<Self> {
        let bad = |why: &str| AgentError::InvalidArgument(format!("stdio URL {s:?}: {why}"));
        if s.is_empty() {
            return Ok(Self::Null);
        }
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("unix path must be absolute"));
            }
            if path.len() >= 108 {
                return Err(bad("unix path longer than a socket address allows"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| bad("expected CID:PORT"))?;
            let cid = cid.parse().map_err(|_| bad("CID is not a number"))?;
            let port = port.parse().map_err(|_| bad("PORT is not a number"))?;
            return Ok(Self::Vsock { cid, port });
        }
        Err(bad("expected unix://, vsock:// or an empty string"))
    }

    /// Connects to the URL; `None` for /dev/null.
    fn dial(&self) -> AgentResult<Option<OwnedFd>> {
        match self {
            Self::Null => Ok(None),
            Self::Unix(path) => UnixStream::connect(path)
                .map(|s| Some(OwnedFd::from(s)))
                .map_err(|e| {
                    AgentError::InvalidArgument(format!(
                        "dialling stdio unix://{}: {e}",
                        path.display()
                    ))
                }),
            Self::Vsock { cid, port } => dial_vsock(*cid, *port).map(Some).map_err(|e| {
                AgentError::InvalidArgument(format!("dialling stdio vsock://{cid}:{port}: {e}"))
            }),
        }
    }
}

fn dial_vsock(cid: u32, port: u32) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(fd)
}

fn dev_null(write: bool) -> AgentResult<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| AgentError::internal("opening /dev/null", e))
}

fn pipe() -> AgentResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| AgentError::internal("pipe2", e))
}

/// The URLs of one process, kept for State.
#[derive(Debug, Clone, Default)]
pub struct StdioSpec {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Streams dialled and pipes made, before the process exists.
pub struct PreparedIo {
    terminal: bool,
    stdin_stream: Option<OwnedFd>,
    stdout_stream: Option<OwnedFd>,
    stderr_stream: Option<OwnedFd>,
    /// Agent ends of the pipes (non-terminal only): stdin writer, stdout
    /// and stderr readers.
    stdin_w: Option<OwnedFd>,
    stdout_r: Option<OwnedFd>,
    stderr_r: Option<OwnedFd>,
}

/// The fds the process gets (non-terminal mode).
pub struct ChildFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl PreparedIo {
    /// Dials the host's streams and, without a terminal, makes the pipes.
    /// Returns the fds for the child (None with a terminal: the pty comes
    /// from the console socket instead).
    pub fn open(spec: &StdioSpec) -> AgentResult<(Self, Option<ChildFds>)> {
        let stdin_url = StdioUrl::parse(&spec.stdin)?;
        let stdout_url = StdioUrl::parse(&spec.stdout)?;
        let stderr_url = StdioUrl::parse(&spec.stderr)?;
        if spec.terminal && stderr_url != StdioUrl::Null {
            return Err(AgentError::InvalidArgument(
                "terminal=true: stderr must be empty (the pty output goes to stdout)".into(),
            ));
        }
        let mut io = PreparedIo {
            terminal: spec.terminal,
            stdin_stream: stdin_url.dial()?,
            stdout_stream: stdout_url.dial()?,
            stderr_stream: stderr_url.dial()?,
            stdin_w: None,
            stdout_r: None,
            stderr_r: None,
        };
        if spec.terminal {
            return Ok((io, None));
        }
        let stdin = if io.stdin_stream.is_some() {
            let (r, w) = pipe()?;
            io.stdin_w = Some(w);
            r
        } else {
            dev_null(false)?
        };
        let out = |stream: &Option<OwnedFd>, slot: &mut Option<OwnedFd>| -> AgentResult<OwnedFd> {
            if stream.is_some() {
                let (r, w) = pipe()?;
                *slot = Some(r);
                Ok(w)
            } else {
                dev_null(true)
            }
        };
        let stdout = out(&io.stdout_stream, &mut io.stdout_r)?;
        let stderr = out(&io.stderr_stream, &mut io.stderr_r)?;
        Ok((
            io,
            Some(ChildFds {
                stdin,
                stdout,
                stderr,
            }),
        ))
    }

    /// CloseIO(stdin) before the exec was started: the copier will see EOF
    /// after the bytes already sent.
    pub fn close_stdin_before_start(&mut self) {
        if let Some(fd) = &self.stdin_stream {
            // SAFETY: shutdown on a socket fd we own; no memory involved.
            let _ = unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// Starts the copier threads once the process exists. `pty_master` is
    /// the master received over the console socket in terminal mode.
    pub fn start(self, name: &str, pty_master: Option<OwnedFd>) -> RunningIo {
        let (done_tx, done_rx) = mpsc::channel();
        let mut outputs = 0;
        let mut stdin_ctl = None;
        let pty = pty_master.map(|fd| Arc::new(File::from(fd)));

        if let Some(master) = &pty {
            if let Some(stream) = self.stdout_stream {
                outputs += 1;
                spawn_output(
                    name,
                    "pty",
                    PtyReader(master.clone()),
                    File::from(stream),
                    done_tx.clone(),
                );
            }
            if let Some(stream) = self.stdin_stream {
                stdin_ctl = spawn_input(name, stream, PtyWriter(master.clone()));
            }
        } else {
            if let (Some(r), Some(s)) = (self.stdout_r, self.stdout_stream) {
                outputs += 1;
                spawn_output(
                    name,
                    "stdout",
                    File::from(r),
                    File::from(s),
                    done_tx.clone(),
                );
            }
            if let (Some(r), Some(s)) = (self.stderr_r, self.stderr_stream) {
                outputs += 1;
                spawn_output(
                    name,
                    "stderr",
                    File::from(r),
                    File::from(s),
                    done_tx.clone(),
                );
            }
            if let (Some(w), Some(s)) = (self.stdin_w, self.stdin_stream) {
                stdin_ctl = spawn_input(name, s, File::from(w));
            }
        }
        RunningIo {
            stdin_ctl,
            pty,
            outputs,
            done: done_rx,
        }
    }
}

/// Copier threads of a live process.
pub struct RunningIo {
    /// A duplicate of the stdin stream, to shut its read side on CloseIO.
    stdin_ctl: Option<OwnedFd>,
    pty: Option<Arc<File>>,
    outputs: usize,
    done: Receiver<()>,
}

impl RunningIo {
    /// CloseIO(stdin): the stdin copier sees EOF, writes what it holds and
    /// closes the process's stdin.
    pub fn close_stdin(&mut self) {
        if let Some(fd) = self.stdin_ctl.take() {
            // SAFETY: shutdown on a socket fd we own; no memory involved.
            let _ = unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    /// Sets the pty window size.
    pub fn resize(&self, width: u32, height: u32) -> AgentResult<()> {
        let master = self
            .pty
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("process has no terminal".into()))?;
        let ws = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives on our stack
        // for the duration of the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(AgentError::internal(
                "TIOCSWINSZ",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits until every output stream was drained and closed, or until
    /// `deadline` (a process whose children keep the pipe open).
    pub fn wait_output(&mut self, deadline: Instant) -> bool {
        while self.outputs > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => self.outputs -= 1,
                Err(mpsc::RecvTimeoutError::Disconnected) => self.outputs = 0,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
        true
    }

    /// Drops the pty master (after the process is gone).
    pub fn release_pty(&mut self) {
        self.pty = None;
    }
}

struct PtyReader(Arc<File>);
impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (&*self.0).read(buf) {
            // EIO: every slave fd is closed, the pty's EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            r => r,
        }
    }
}

struct PtyWriter(Arc<File>);
impl Write for PtyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const COPY_BUF: usize = 64 * 1024;

fn spawn_output(
    name: &str,
    what: &'static str,
    mut src: impl Read + Send + 'static,
    mut dst: File,
    done: Sender<()>,
) {
    let label = format!("{name}/{what}");
    let spawned = thread::Builder::new().name(format!("out-{what}")).spawn(move || {
        let mut buf = vec![0u8; COPY_BUF];
        let mut dst_ok = true;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(stream = %label, "reading process output: {e}");
                    break;
                }
            };
            // Once the host side is gone keep draining, so the process
            // never blocks on a full pipe.
            if dst_ok {
                if let Err(e) = dst.write_all(&buf[..n]) {
                    tracing::warn!(stream = %label, "host stream closed: {e}; discarding the rest");
                    dst_ok = false;
                }
            }
        }
        drop(dst);
        let _ = done.send(());
    });
    if let Err(e) = spawned {
        tracing::error!("cannot spawn an output copier: {e}");
    }
}

/// Starts the stdin copier; returns a duplicate of the stream for CloseIO.
fn spawn_input(
    name: &str,
    stream: OwnedFd,
    mut dst: impl Write + Send + 'static,
) -> Option<OwnedFd> {
    let ctl = stream.try_clone().ok();
    let label = format!("{name}/stdin");
    let mut src = File::from(stream);
    let spawned = thread::Builder::new()
        .name("in-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; COPY_BUF];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(stream = %label, "reading stdin stream: {e}");
                        break;
                    }
                };
                if let Err(e) = dst.write_all(&buf[..n]) {
                    tracing::debug!(stream = %label, "process stdin closed: {e}");
                    break;
                }
            }
            // Dropping dst closes the process's stdin (pipe mode).
        });
    if let Err(e) = spawned {
        tracing::error!("cannot spawn the stdin copier: {e}");
    }
    ctl
}

/// Receives the pty master that libcontainer sends over the console socket.
pub fn recv_pty_master(listener: &std::os::unix::net::UnixListener) -> AgentResult<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    listener
        .set_nonblocking(true)
        .map_err(|e| AgentError::internal("console socket", e))?;
    let (conn, _) = listener
        .accept()
        .map_err(|e| AgentError::internal("console socket: no connection from the runtime", e))?;
    conn.set_nonblocking(false)
        .map_err(|e| AgentError::internal("console socket", e))?;
    let mut name = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| AgentError::internal("console socket recvmsg", e))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| AgentError::internal("console socket control message", e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut fds = fds.into_iter();
            if let Some(fd) = fds.next() {
                for extra in fds {
                    // SAFETY: the kernel just installed this fd for us and
                    // nothing else refers to it.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: as above; ownership passes to the OwnedFd.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(AgentError::Internal(
        "console socket: no pty master received".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    #[test]
    fn parse_urls() {
        assert_eq!(StdioUrl::parse("").unwrap(), StdioUrl::Null);
        assert_eq!(
            StdioUrl::parse("unix:///tmp/a.sock").unwrap(),
            StdioUrl::Unix(PathBuf::from("/tmp/a.sock"))
        );
        assert_eq!(
            StdioUrl::parse("vsock://2:6000").unwrap(),
            StdioUrl::Vsock { cid: 2, port: 6000 }
        );
        for bad in [
            "unix://rel",
            "vsock://2",
            "vsock://x:1",
            "vsock://2:y",
            "tcp://1:2",
            "/tmp/x",
            &format!("unix:///{}", "a".repeat(120)),
        ] {
            assert!(
                matches!(StdioUrl::parse(bad), Err(AgentError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn terminal_rejects_stderr() {
        let spec = StdioSpec {
            stderr: "unix:///x".into(),
            terminal: true,
            ..Default::default()
        };
        assert!(matches!(
            PreparedIo::open(&spec),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    #[test]
    fn pipes_carry_all_bytes_and_stdin_eof() {
        let dir = tempfile::tempdir().unwrap();
        let out_l = UnixListener::bind(dir.path().join("o")).unwrap();
        let in_l = UnixListener::bind(dir.path().join("i")).unwrap();
        let spec = StdioSpec {
            stdin: format!("unix://{}", dir.path().join("i").display()),
            stdout: format!("unix://{}", dir.path().join("o").display()),
            stderr: String::new(),
            terminal: false,
        };
        let (io, child) = PreparedIo::open(&spec).unwrap();
        let child = child.unwrap();
        let (mut host_out, _) = out_l.accept().unwrap();
        let (mut host_in, _) = in_l.accept().unwrap();
        let mut running = io.start("t", None);
        // Play the process: copy its stdin to its stdout, 3 MiB of data.
        let ChildFds {
            stdin,
            stdout,
            stderr,
        } = child;
        drop(stderr);
        let echo = thread::spawn(move || {
            let mut i = File::from(stdin);
            let mut o = File::from(stdout);
            io::copy(&mut i, &mut o).unwrap();
        });
        let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            host_out.read_to_end(&mut got).unwrap();
            got
        });
        host_in.write_all(&data).unwrap();
        running.close_stdin();
        let got = reader.join().unwrap();
        echo.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        assert!(running.wait_output(Instant::now() + Duration::from_secs(5)));
    }
}
