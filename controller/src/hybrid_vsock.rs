//! Client side of hybrid vsock (Firecracker / Cloud Hypervisor convention):
//! connect to the VMM's unix socket, send `CONNECT <port>\n`, and read
//! `OK <host_port>\n`; the stream is then connected to the guest listener.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest handshake reply we accept ("OK " + a u32 + "\n" fits easily).
const MAX_REPLY: usize = 32;

/// Why a hybrid-vsock connection failed.
#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    /// The unix socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The handshake failed (guest not listening, VMM gone, bad reply).
    #[error("vsock handshake for port {port} failed: {reason}")]
    Handshake {
        /// Guest port.
        port: u32,
        /// What happened.
        reason: String,
    },
}

/// Connects to guest `port` through the VMM's socket at `uds`.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, HybridVsockError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| HybridVsockError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    let handshake = |reason: String| HybridVsockError::Handshake { port, reason };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| handshake(e.to_string()))?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(handshake(
                    "connection closed (is the guest listening on that port?)".into(),
                ))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if reply.len() < MAX_REPLY => reply.push(byte[0]),
            Ok(_) => return Err(handshake("reply line too long".into())),
            Err(e) => return Err(handshake(e.to_string())),
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    match reply.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(_host_port)) => Ok(stream),
        _ => Err(handshake(format!("unexpected reply {reply:?}"))),
    }
}

/// Like [`connect`], retrying until `wait` passes (the VMM or the guest
/// listener may not be up yet).
pub fn connect_with_retry(
    uds: &Path,
    port: u32,
    wait: Duration,
) -> Result<UnixStream, HybridVsockError> {
    let deadline = Instant::now() + wait;
    loop {
        match connect(uds, port) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!("vsock connect retry: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Copies stdin to the stream (then shuts its write half) while copying the
/// stream to stdout, until both directions end.
pub fn relay_stdio(stream: UnixStream) -> io::Result<()> {
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let sender = std::thread::spawn(move || -> io::Result<()> {
        io::copy(&mut io::stdin().lock(), &mut writer)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut stdout = io::stdout().lock();
    io::copy(&mut reader, &mut stdout)?;
    stdout.flush()?;
    sender
        .join()
        .map_err(|_| io::Error::other("stdin relay thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn fake_vmm(reply: &'static [u8]) -> (vmm_sys_util::tempdir::TempDir, std::path::PathBuf) {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hvsock").unwrap();
        let path = dir.as_path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            // The client may hang up after a refused reply: ignore EPIPE.
            let _ = s.write_all(reply).and_then(|()| s.write_all(b"payload"));
        });
        (dir, path)
    }

    #[test]
    fn handshake_ok_then_data() {
        let (_d, path) = fake_vmm(b"OK 1073741824\n");
        let mut s = connect(&path, 1024).unwrap();
        let mut data = String::new();
        s.read_to_string(&mut data).unwrap();
        assert_eq!(data, "payload");
    }

    #[test]
    fn refused_and_garbled_replies_are_errors() {
        let (_d, path) = fake_vmm(b"NO\n");
        assert!(connect(&path, 1024)
            .unwrap_err()
            .to_string()
            .contains("unexpected reply"));
        let err = connect(Path::new("/nonexistent/v.sock"), 1).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/v.sock"));
    }
}
