//! Host-side client for the agent: a typed Task API client, the agent's own
//! events method, and helpers that play the host end of the stdio streams.
//!
//! Used by the integration tests and by the host controller.

use std::io::{self, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub use containerd_shim_protos::api;
pub use containerd_shim_protos::shim::event::Envelope;
pub use containerd_shim_protos::TaskClient;
use protobuf::Message;

use crate::events::{EVENTS_METHOD, EVENTS_SERVICE};

/// Errors of the client helpers.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // `error`, not `source`: the message already carries it, and a source
    // would make error-chain printers repeat it.
    #[error("connecting to {what}: {error}")]
    Connect { what: String, error: io::Error },
    #[error("hybrid vsock handshake with {path}: {detail}")]
    Handshake { path: PathBuf, detail: String },
    #[error("ttrpc: {0}")]
    Ttrpc(#[from] ttrpc::Error),
    #[error("decoding event envelope: {0}")]
    Decode(#[from] protobuf::Error),
}

/// A connection to the agent: the typed containerd Task client plus the
/// agent's events method on the same connection.
#[derive(Clone)]
pub struct AgentClient {
    raw: ttrpc::Client,
    task: TaskClient,
}

impl AgentClient {
    /// Connects to an agent listening on a unix socket path.
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|error| ClientError::Connect {
            what: path.display().to_string(),
            error,
        })?;
        Self::from_stream(stream)
    }

    /// Uses an already connected stream (for example one that went through
    /// the hybrid vsock handshake).
    pub fn from_stream(stream: UnixStream) -> Result<Self, ClientError> {
        let raw = ttrpc::Client::new(stream.into_raw_fd())?;
        let task = TaskClient::new(raw.clone());
        Ok(Self { raw, task })
    }

    /// Connects through a VMM's hybrid vsock unix socket: sends
    /// `CONNECT <port>\n`, expects `OK <host port>\n`, then speaks ttrpc.
    pub fn connect_hybrid_vsock(
        uds_path: impl AsRef<Path>,
        port: u32,
    ) -> Result<Self, ClientError> {
        let stream = hybrid_vsock_stream(uds_path.as_ref(), port)?;
        Self::from_stream(stream)
    }

    /// The typed containerd Task API client.
    pub fn task(&self) -> &TaskClient {
        &self.task
    }

    /// Waits up to `timeout` for the next event queued in the agent.
    /// Returns `Ok(None)` when none arrived in time.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<Envelope>, ClientError> {
        let timeout_nano = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX).max(1);
        let mut req = ttrpc::Request::new();
        req.set_service(EVENTS_SERVICE.to_string());
        req.set_method(EVENTS_METHOD.to_string());
        req.set_timeout_nano(timeout_nano);
        req.payload = protobuf::well_known_types::empty::Empty::new().write_to_bytes()?;
        match self.raw.request(req) {
            Ok(res) => Ok(Some(Envelope::parse_from_bytes(&res.payload)?)),
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::DEADLINE_EXCEEDED => {
                Ok(None)
            }
            // The client side gave up at the same deadline before the
            // agent's DeadlineExceeded arrived.
            Err(ttrpc::Error::Others(m)) if m.contains("timeout") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A ttrpc context with the given timeout (for the typed Task calls).
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_duration(timeout)
}

/// Opens a stream to `port` through a hybrid vsock unix socket.
pub fn hybrid_vsock_stream(uds_path: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let handshake = |detail: String| ClientError::Handshake {
        path: uds_path.to_path_buf(),
        detail,
    };
    let mut stream = UnixStream::connect(uds_path).map_err(|error| ClientError::Connect {
        what: uds_path.display().to_string(),
        error,
    })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| handshake(format!("write: {e}")))?;
    // Read the reply byte by byte so nothing after the newline is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        let n = stream
            .read(&mut byte)
            .map_err(|e| handshake(format!("read: {e}")))?;
        if n == 0 {
            return Err(handshake("connection closed before the reply".into()));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let reply = String::from_utf8_lossy(&line);
    if !reply.starts_with("OK ") {
        return Err(handshake(format!("unexpected reply {reply:?}")));
    }
    Ok(stream)
}

/// The host end of one stdio stream: a unix socket the agent dials.
pub struct StdioListener {
    listener: UnixListener,
    path: PathBuf,
    /// Set for a hybrid vsock endpoint (URL `vsock://2:PORT`).
    vsock_port: Option<u32>,
}

impl StdioListener {
    /// Binds `<dir>/<name>.sock`.
    pub fn bind(dir: impl AsRef<Path>, name: &str) -> io::Result<Self> {
        let path = dir.as_ref().join(format!("{name}.sock"));
        let listener = UnixListener::bind(&path)?;
        Ok(Self {
            listener,
            path,
            vsock_port: None,
        })
    }

    /// The host end of a stream the guest dials over vsock to the host
    /// (CID 2) `port`: with a VMM's hybrid vsock at `uds`, that connection
    /// arrives on the unix socket `<uds>_<port>`. Its URL is
    /// `vsock://2:<port>`.
    pub fn bind_hybrid_vsock(uds: impl AsRef<Path>, port: u32) -> io::Result<Self> {
        let mut name = uds.as_ref().as_os_str().to_owned();
        name.push(format!("_{port}"));
        let path = PathBuf::from(name);
        let listener = UnixListener::bind(&path)?;
        Ok(Self {
            listener,
            path,
            vsock_port: Some(port),
        })
    }

    /// The URL to put in Create/Exec's stdin/stdout/stderr field.
    pub fn url(&self) -> String {
        match self.vsock_port {
            Some(port) => format!("vsock://2:{port}"),
            None => format!("unix://{}", self.path.display()),
        }
    }

    /// Accepts the agent's connection, waiting at most `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<UnixStream> {
        self.listener.set_nonblocking(true)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "agent did not connect to the stdio socket",
                        ));
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Accepts in a background thread and reads everything until EOF.
    pub fn collect(self, timeout: Duration) -> Collector {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            let result = self.accept_timeout(timeout).and_then(|mut s| {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).map(|_| buf)
            });
            let _ = tx.send(());
            result
        });
        Collector { handle, done: rx }
    }

    /// Accepts in a background thread, writes `data`, then closes the
    /// stream (EOF on the process's stdin) when `close` is true, or keeps
    /// it open until the agent closes its end.
    pub fn feed(self, data: Vec<u8>, close: bool, timeout: Duration) -> JoinHandle<io::Result<()>> {
        thread::spawn(move || {
            let mut s = self.accept_timeout(timeout)?;
            s.write_all(&data)?;
            if close {
                s.shutdown(std::net::Shutdown::Write)?;
            } else {
                // Hold the stream open until the agent goes away.
                let mut sink = [0u8; 256];
                while s.read(&mut sink)? > 0 {}
            }
            Ok(())
        })
    }
}

impl Drop for StdioListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bytes collected from one stdout/stderr stream.
pub struct Collector {
    handle: JoinHandle<io::Result<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collector {
    /// Waits up to `timeout` for EOF and returns all bytes.
    pub fn wait(self, timeout: Duration) -> io::Result<Vec<u8>> {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => self
                .handle
                .join()
                .map_err(|_| io::Error::other("collector thread panicked"))?,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "stdio stream not closed in time",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake hybrid vsock endpoint: reads the CONNECT line, answers `reply`,
    /// then echoes one message.
    fn fake_vmm(dir: &Path, reply: &'static str) -> (PathBuf, JoinHandle<String>) {
        let path = dir.join("vsock.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            s.write_all(reply.as_bytes()).unwrap();
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf).unwrap();
            }
            String::from_utf8(line).unwrap()
        });
        (path, h)
    }

    #[test]
    fn hybrid_vsock_handshake_then_raw_bytes() {
        let d = tempfile::tempdir().unwrap();
        let (path, h) = fake_vmm(d.path(), "OK 1073741824\n");
        let mut s = hybrid_vsock_stream(&path, 1024).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(h.join().unwrap(), "CONNECT 1024");
    }

    #[test]
    fn hybrid_vsock_refusal_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let (path, h) = fake_vmm(d.path(), "ERR no listener\n");
        match hybrid_vsock_stream(&path, 1024) {
            Err(ClientError::Handshake { detail, .. }) => {
                assert!(detail.contains("ERR"), "{detail}")
            }
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
        drop(h);
    }

    #[test]
    fn stdio_listener_collects_and_feeds() {
        let d = tempfile::tempdir().unwrap();
        let out = StdioListener::bind(d.path(), "out").unwrap();
        let url = out.url();
        assert!(url.starts_with("unix:///"));
        let collector = out.collect(Duration::from_secs(5));
        let mut s = UnixStream::connect(url.trim_start_matches("unix://")).unwrap();
        s.write_all(b"hello").unwrap();
        drop(s);
        assert_eq!(collector.wait(Duration::from_secs(5)).unwrap(), b"hello");

        let inp = StdioListener::bind(d.path(), "in").unwrap();
        let url = inp.url();
        let feeder = inp.feed(b"data".to_vec(), true, Duration::from_secs(5));
        let mut s = UnixStream::connect(url.trim_start_matches("unix://")).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"data");
        feeder.join().unwrap().unwrap();
    }

    #[test]
    fn hybrid_vsock_stdio_listener_path_and_url() {
        let d = tempfile::tempdir().unwrap();
        let l = StdioListener::bind_hybrid_vsock(d.path().join("v.sock"), 6000).unwrap();
        assert_eq!(l.url(), "vsock://2:6000");
        assert!(d.path().join("v.sock_6000").exists());
    }
}
