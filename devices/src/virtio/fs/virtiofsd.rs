//! The virtiofsd process behind one share: found, started, watched, stopped.
//!
//! [`Virtiofsd::start`] creates a private runtime directory (mode 0700) for
//! the vhost-user socket, starts `virtiofsd --socket-path SOCK --shared-dir
//! DIR --sandbox chroot`, waits for the socket and connects. The process is
//! watched through a pidfd ([`Virtiofsd::pidfd`], readable once it exits) so
//! the VMM's event thread sees its death at once. [`Virtiofsd::stop`] (and
//! drop) kills and reaps it and removes the runtime directory, so nothing is
//! left behind. virtiofsd also exits by itself when its vhost-user
//! connection closes, so a VMM that dies without cleaning up does not leave
//! it running.
//!
//! The chroot sandbox works for root everywhere this project runs (the
//! namespace sandbox needs pivot_root, which an initramfs root refuses).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vmm_sys_util::tempdir::TempDir;

/// Environment variable naming the virtiofsd binary to use.
pub const VIRTIOFSD_ENV: &str = "VMM_VIRTIOFSD";
/// How to install virtiofsd, for error messages.
pub const INSTALL_HINT: &str = "install it with `make deps` (runs `apt-get install libseccomp-dev libcap-ng-dev` and `cargo install virtiofsd --version 1.14.0 --locked`), or point VMM_VIRTIOFSD at the binary";
/// How long virtiofsd may take to create its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why virtiofsd could not be found, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// No virtiofsd binary anywhere we look.
    #[error(
        "virtiofsd not found (looked at ${VIRTIOFSD_ENV}, PATH and ~/.cargo/bin): {INSTALL_HINT}"
    )]
    NotFound,
    /// The binary named by the environment is not an executable file.
    #[error("{VIRTIOFSD_ENV}={0} is not an executable file")]
    BadEnvPath(PathBuf),
    /// The runtime directory could not be created.
    #[error("cannot create a runtime directory for virtiofsd: {0}")]
    RuntimeDir(String),
    /// The process could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it accepted a connection.
    #[error("virtiofsd for {dir} exited with {status} before accepting a connection (its messages are above)")]
    EarlyExit {
        /// The shared directory.
        dir: PathBuf,
        /// How it exited.
        status: ExitStatus,
    },
    /// The socket did not appear in time.
    #[error("virtiofsd for {dir} did not create its socket within {timeout:?}")]
    Timeout {
        /// The shared directory.
        dir: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// pidfd_open failed.
    #[error("cannot watch virtiofsd (pidfd_open): {0}")]
    Pidfd(#[source] std::io::Error),
    /// Waiting for the process failed.
    #[error("cannot reap virtiofsd: {0}")]
    Wait(#[source] std::io::Error),
}

/// Finds virtiofsd: `$VMM_VIRTIOFSD`, else `virtiofsd` on PATH, else in
/// cargo's bin directory (`$CARGO_HOME/bin`, `~/.cargo/bin`: where `cargo
/// install` puts it).
pub fn find_virtiofsd() -> Result<PathBuf, VirtiofsdError> {
    find_in(
        std::env::var_os(VIRTIOFSD_ENV),
        std::env::var_os("PATH"),
        std::env::var_os("CARGO_HOME"),
        std::env::var_os("HOME"),
    )
}

fn find_in(
    explicit: Option<OsString>,
    path: Option<OsString>,
    cargo_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, VirtiofsdError> {
    if let Some(explicit) = explicit.filter(|p| !p.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if is_executable(&explicit) {
            Ok(explicit)
        } else {
            Err(VirtiofsdError::BadEnvPath(explicit))
        };
    }
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("virtiofsd"));
    let in_cargo = cargo_home
        .map(|c| PathBuf::from(c).join("bin/virtiofsd"))
        .into_iter()
        .chain(home.map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd")));
    on_path
        .chain(in_cargo)
        .find(|p| is_executable(p))
        .ok_or(VirtiofsdError::NotFound)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running virtiofsd serving one shared directory.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Option<Child>,
    pidfd: OwnedFd,
    shared_dir: PathBuf,
    // Removed (with the socket) on drop, after the process is gone.
    runtime_dir: Option<TempDir>,
}

impl Virtiofsd {
    /// Starts `binary` for `shared_dir` and returns it with the connected
    /// vhost-user socket.
    pub fn start(binary: &Path, shared_dir: &Path) -> Result<(Self, UnixStream), VirtiofsdError> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let runtime_dir = TempDir::new_in(&base)
            .map_err(|e| VirtiofsdError::RuntimeDir(format!("in {}: {e}", base.display())))?;
        let socket = runtime_dir.as_path().join("vhost-user-fs.sock");
        let mut child = Command::new(binary)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(shared_dir)
            .args(["--sandbox", "chroot", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| VirtiofsdError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        debug!(pid = child.id(), dir = %shared_dir.display(), "virtiofsd started");
        let pidfd = match pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VirtiofsdError::Pidfd(e));
            }
        };
        // From here on, dropping `daemon` kills and reaps the process.
        let mut daemon = Virtiofsd {
            child: Some(child),
            pidfd,
            shared_dir: shared_dir.to_path_buf(),
            runtime_dir: Some(runtime_dir),
        };
        let stream = daemon.connect(&socket, START_TIMEOUT)?;
        Ok((daemon, stream))
    }

    fn connect(&mut self, socket: &Path, timeout: Duration) -> Result<UnixStream, VirtiofsdError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(VirtiofsdError::EarlyExit {
                    dir: self.shared_dir.clone(),
                    status,
                });
            }
            if let Ok(stream) = UnixStream::connect(socket) {
                return Ok(stream);
            }
            if Instant::now() >= deadline {
                return Err(VirtiofsdError::Timeout {
                    dir: self.shared_dir.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The shared directory.
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// A pidfd of the process: readable once it has exited.
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }

    /// The exit status if the process has exited (it is then reaped).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, VirtiofsdError> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().map_err(VirtiofsdError::Wait),
            None => Ok(None),
        }
    }

    /// Kills (if still running) and reaps the process and removes its
    /// runtime directory. Idempotent. Returns the exit status the first
    /// time, `None` afterwards.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let status = self.child.take().and_then(|mut child| {
            if let Ok(None) = child.try_wait() {
                if let Err(e) = child.kill() {
                    warn!(pid = child.id(), "cannot kill virtiofsd: {e}");
                }
            }
            match child.wait() {
                Ok(status) => Some(status),
                Err(e) => {
                    warn!(pid = child.id(), "cannot reap virtiofsd: {e}");
                    None
                }
            }
        });
        if let Some(dir) = self.runtime_dir.take() {
            if let Err(e) = dir.remove() {
                warn!("cannot remove virtiofsd's runtime directory: {e}");
            }
        }
        status
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn lookup_order_is_env_then_path_then_cargo_bin() {
        let tmp = TempDir::new().unwrap();
        let root = tmp.as_path();
        for d in ["env", "path1", "path2", "home/.cargo/bin"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let env_bin = executable(&root.join("env"), "my-virtiofsd");
        let path_bin = executable(&root.join("path2"), "virtiofsd");
        let cargo_bin = executable(&root.join("home/.cargo/bin"), "virtiofsd");
        let path = std::env::join_paths([root.join("path1"), root.join("path2")]).unwrap();
        let home = Some(root.join("home").into_os_string());

        let cargo_home = Some(root.join("cargo-home").into_os_string());
        std::fs::create_dir_all(root.join("cargo-home/bin")).unwrap();
        let path1 = Some(root.join("path1").into_os_string());

        let found = find_in(Some(env_bin.clone().into()), Some(path.clone()), None, None);
        assert_eq!(found.unwrap(), env_bin);
        let found = find_in(None, Some(path.clone()), None, home.clone());
        assert_eq!(found.unwrap(), path_bin);
        let found = find_in(
            Some(OsString::new()),
            path1.clone(),
            cargo_home.clone(),
            home.clone(),
        );
        assert_eq!(found.unwrap(), cargo_bin, "empty cargo home: ~/.cargo/bin");
        let cargo_home_bin = executable(&root.join("cargo-home/bin"), "virtiofsd");
        let found = find_in(None, path1.clone(), cargo_home, home.clone());
        assert_eq!(found.unwrap(), cargo_home_bin, "$CARGO_HOME/bin first");
        assert!(matches!(
            find_in(None, path1, None, None),
            Err(VirtiofsdError::NotFound)
        ));
        assert!(matches!(
            find_in(Some(root.join("env").into()), Some(path), None, home),
            Err(VirtiofsdError::BadEnvPath(_))
        ));
        let message = VirtiofsdError::NotFound.to_string();
        assert!(message.contains("cargo install virtiofsd"), "{message}");
    }
}
