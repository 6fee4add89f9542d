//! Container lifecycle on top of libcontainer: preparing the bundle,
//! create/start of the init, exec processes, deletion.
//!
//! libcontainer reads the spec from a bundle directory itself, so the agent
//! writes a "shadow bundle" per container (`<state>/bundles/<id>/config.json`)
//! holding the validated spec with root.path made absolute (the canonical
//! path that was checked to lie inside the caller's bundle) and the default
//! cgroupsPath filled in. The caller's bundle is never modified.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use libcontainer::error::LibcontainerError;
use oci_spec::runtime::Spec;

use crate::error::{AgentError, AgentResult};
use crate::process::Proc;
use crate::stdio::{ChildFds, PreparedIo};
use crate::validate;

/// Where the agent keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// libcontainer's state root (`<state>/containers`).
    pub lc_root: PathBuf,
    /// Shadow bundles (`<state>/bundles`).
    pub bundles: PathBuf,
    /// Console sockets (`<state>/sockets`).
    pub sockets: PathBuf,
}

impl Paths {
    pub fn new(state_dir: &Path) -> std::io::Result<Self> {
        let p = Self {
            lc_root: state_dir.join("containers"),
            bundles: state_dir.join("bundles"),
            sockets: state_dir.join("sockets"),
        };
        for d in [&p.lc_root, &p.bundles, &p.sockets] {
            std::fs::create_dir_all(d)?;
        }
        Ok(p)
    }
}

/// One container.
pub struct Container {
    pub id: String,
    /// The bundle path as the caller gave it.
    pub bundle: String,
    pub shadow: PathBuf,
    pub cgroup_path: PathBuf,
    pub rootfs_mounts: Vec<PathBuf>,
    pub init: Arc<Proc>,
    execs: Mutex<std::collections::HashMap<String, Arc<Proc>>>,
    pub paused: AtomicBool,
    /// oom_kill counter last seen, to publish TaskOOM once per kill.
    pub oom_seen: AtomicU64,
}

impl Container {
    pub fn execs(&self) -> MutexGuard<'_, std::collections::HashMap<String, Arc<Proc>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The init (empty exec id) or an exec process.
    pub fn process(&self, exec_id: &str) -> AgentResult<Arc<Proc>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs().get(exec_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!(
                "exec {exec_id:?} not found in container {:?}",
                self.id
            ))
        })
    }
}

/// The spec prepared for libcontainer.
pub struct PreparedSpec {
    pub shadow: PathBuf,
    pub cgroup_path: PathBuf,
    pub spec: Spec,
}

/// Reads and validates `<bundle>/config.json`, checks root.path, writes the
/// shadow bundle.
pub fn prepare_spec(
    paths: &Paths,
    id: &str,
    bundle: &Path,
    terminal: bool,
    cgroup_root: &str,
) -> AgentResult<PreparedSpec> {
    let text = std::fs::read_to_string(bundle.join("config.json")).map_err(|e| {
        AgentError::InvalidArgument(format!("reading {}/config.json: {e}", bundle.display()))
    })?;
    let mut spec: Spec = serde_json::from_str(&text)
        .map_err(|e| AgentError::InvalidArgument(format!("invalid config.json: {e}")))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| AgentError::InvalidArgument("config.json has no root".into()))?
        .path()
        .clone();
    let root = validate::root_inside_bundle(bundle, &root)?;
    if let Some(r) = spec.root_mut().as_mut() {
        r.set_path(root);
    }
    check_process(spec.process().as_ref())?;
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_terminal(Some(terminal));
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    if linux.seccomp().is_some() {
        tracing::warn!(
            id,
            "linux.seccomp is ignored: the agent is built without libseccomp"
        );
    }
    let cgroup_path = match linux.cgroups_path() {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(format!("/{cgroup_root}/{id}"));
            linux.set_cgroups_path(Some(p.clone()));
            p
        }
    };
    spec.set_linux(Some(linux));
    let shadow = paths.bundles.join(id);
    std::fs::create_dir_all(&shadow)
        .map_err(|e| AgentError::internal("creating the shadow bundle", e))?;
    let json = serde_json::to_vec(&spec).map_err(|e| AgentError::internal("encoding spec", e))?;
    std::fs::write(shadow.join("config.json"), json)
        .map_err(|e| AgentError::internal("writing the shadow config.json", e))?;
    Ok(PreparedSpec {
        shadow,
        cgroup_path,
        spec,
    })
}

/// Checks what libcontainer would only find out inside the forked init
/// (and report as a broken channel): args present, cwd absolute.
pub fn check_process(p: Option<&oci_spec::runtime::Process>) -> AgentResult<()> {
    let p = p.ok_or_else(|| AgentError::InvalidArgument("config.json has no process".into()))?;
    if p.args()
        .as_ref()
        .is_none_or(|a| a.is_empty() || a[0].is_empty())
    {
        return Err(AgentError::InvalidArgument(
            "process.args must not be empty".into(),
        ));
    }
    if !p.cwd().is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "process.cwd {} must be absolute",
            p.cwd().display()
        )));
    }
    Ok(())
}

/// Maps libcontainer's errors onto request errors.
pub fn lc_error(context: &str, e: LibcontainerError) -> AgentError {
    match e {
        LibcontainerError::Exist => AgentError::AlreadyExists(format!("{context}: {e}")),
        LibcontainerError::IncorrectStatus(_) => {
            AgentError::FailedPrecondition(format!("{context}: {e}"))
        }
        LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_)
        | LibcontainerError::InvalidInput(_)
        | LibcontainerError::Spec(_) => AgentError::InvalidArgument(format!("{context}: {e:?}")),
        other => AgentError::Internal(format!("{context}: {other:?}")),
    }
}

static CONSOLE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A console socket for one terminal process; removed on drop.
pub struct ConsoleSocket {
    pub path: PathBuf,
    pub listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new(paths: &Paths) -> AgentResult<Self> {
        let n = CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = paths
            .sockets
            .join(format!("console-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| AgentError::internal("binding a console socket", e))?;
        Ok(Self { path, listener })
    }

    pub fn master(&self) -> AgentResult<OwnedFd> {
        crate::stdio::recv_pty_master(&self.listener)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the agent's own root is the initial ramfs ("rootfs"), on which
/// pivot_root(2) fails with EINVAL (unless guest_root moved it). Containers are then entered with
/// MS_MOVE + chroot (libcontainer's no_pivot, runc's ramdisk mode).
pub fn root_is_initramfs() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // In init mode guest_root has normally moved the root onto a bind
        // mount of the initramfs (still type rootfs in mountinfo), where
        // pivot_root works: only fall back when that did not happen.
        let yes = mountinfo_root_is_rootfs(&info) && !crate::guest_root::root_was_moved();
        if yes {
            tracing::info!(
                "running from the initramfs: containers use MS_MOVE+chroot instead of pivot_root"
            );
        }
        yes
    })
}

/// True when the mount on "/" in `mountinfo` text is of type rootfs.
pub fn mountinfo_root_is_rootfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(pre), Some(post)) = (halves.next(), halves.next()) else {
            return false;
        };
        pre.split_whitespace().nth(4) == Some("/")
            && post.split_whitespace().next() == Some("rootfs")
    })
}

/// Creates the container's init (stopped before the user process, waiting
/// for Start). Call with the reaper's libcontainer lock held. Returns the
/// init pid and the pty master in terminal mode.
pub fn create_init(
    paths: &Paths,
    id: &str,
    shadow: &Path,
    io: &PreparedIo,
    child: Option<ChildFds>,
) -> AgentResult<(u32, Option<OwnedFd>)> {
    let console = if io.terminal() {
        Some(ConsoleSocket::new(paths)?)
    } else {
        None
    };
    let pid = crate::lc_helper::run(
        paths,
        crate::lc_helper::CREATE,
        id,
        shadow,
        console.as_ref().map(|c| c.path.as_path()),
        child,
    )?;
    let master = match &console {
        Some(c) => Some(c.master()?),
        None => None,
    };
    Ok((pid, master))
}

fn load(paths: &Paths, id: &str) -> AgentResult<libcontainer::container::Container> {
    libcontainer::container::Container::load(paths.lc_root.join(id))
        .map_err(|e| lc_error("loading container state", e))
}

/// Lets the created init run the user process. Lock held by the caller.
pub fn start_init(paths: &Paths, id: &str) -> AgentResult<()> {
    load(paths, id)?
        .start()
        .map_err(|e| lc_error("starting the container", e))
}

/// Starts an exec process in the running container. Lock held by the
/// caller. Returns its pid and the pty master in terminal mode.
pub fn start_exec(
    paths: &Paths,
    c: &Container,
    exec_id: &str,
    process: &oci_spec::runtime::Process,
    io: &PreparedIo,
    child: Option<ChildFds>,
) -> AgentResult<(u32, Option<OwnedFd>)> {
    let spec_path = c.shadow.join(format!("exec-{exec_id}.json"));
    let json =
        serde_json::to_vec(process).map_err(|e| AgentError::internal("encoding exec spec", e))?;
    std::fs::write(&spec_path, json).map_err(|e| AgentError::internal("writing exec spec", e))?;
    let console = if io.terminal() {
        Some(ConsoleSocket::new(paths)?)
    } else {
        None
    };
    let pid = crate::lc_helper::run(
        paths,
        crate::lc_helper::EXEC,
        &c.id,
        &spec_path,
        console.as_ref().map(|c| c.path.as_path()),
        child,
    );
    let _ = std::fs::remove_file(&spec_path);
    let pid = pid?;
    let master = match &console {
        Some(c) => Some(c.master()?),
        None => None,
    };
    Ok((pid, master))
}

/// Pause or resume through libcontainer (cgroup freezer).
pub fn set_paused(paths: &Paths, id: &str, pause: bool) -> AgentResult<()> {
    let mut c = load(paths, id)?;
    if pause {
        c.pause().map_err(|e| lc_error("pausing", e))
    } else {
        c.resume().map_err(|e| lc_error("resuming", e))
    }
}

/// Removes libcontainer's state and cgroup (force: kills what is left).
/// Lock held by the caller. Always removes the directories.
pub fn destroy(paths: &Paths, id: &str, shadow: &Path) {
    match load(paths, id) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::warn!(id, "libcontainer delete: {e:?}");
            }
        }
        Err(e) => tracing::debug!(id, "no libcontainer state to delete: {e}"),
    }
    let _ = std::fs::remove_dir_all(paths.lc_root.join(id));
    let _ = std::fs::remove_dir_all(shadow);
}

/// Builds a container record.
pub fn new_container(
    id: &str,
    bundle: &str,
    prepared: &PreparedSpec,
    rootfs_mounts: Vec<PathBuf>,
    init: Arc<Proc>,
) -> Container {
    Container {
        id: id.to_string(),
        bundle: bundle.to_string(),
        shadow: prepared.shadow.clone(),
        cgroup_path: prepared.cgroup_path.clone(),
        rootfs_mounts,
        init,
        execs: Mutex::new(Default::default()),
        paused: AtomicBool::new(false),
        oom_seen: AtomicU64::new(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().canonicalize().unwrap();
        std::fs::create_dir(b.join("rootfs")).unwrap();
        std::fs::write(b.join("config.json"), config).unwrap();
        (d, b)
    }

    #[test]
    fn initramfs_root_detection() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=100k\n14 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n";
        assert!(mountinfo_root_is_rootfs(initramfs));
        let disk = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n23 22 0:5 / /dev rw - devtmpfs udev rw\n";
        assert!(!mountinfo_root_is_rootfs(disk));
    }

    #[test]
    fn spec_errors_are_invalid_argument() {
        let state = tempfile::tempdir().unwrap();
        let paths = Paths::new(state.path()).unwrap();
        let (_d, b) = bundle_with("{ not json");
        match prepare_spec(&paths, "c1", &b, false, "vmm-agent") {
            Err(AgentError::InvalidArgument(m)) => {
                assert!(m.contains("invalid config.json"), "{m}")
            }
            other => panic!("{:?}", other.err()),
        }
        let (_d, b) = bundle_with(
            r#"{"ociVersion":"1.0.2","root":{"path":"../.."},"process":{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0}}}"#,
        );
        assert!(matches!(
            prepare_spec(&paths, "c1", &b, false, "vmm-agent"),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    #[test]
    fn shadow_spec_has_absolute_root_and_cgroup() {
        let state = tempfile::tempdir().unwrap();
        let paths = Paths::new(state.path()).unwrap();
        let (_d, b) = bundle_with(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0}}}"#,
        );
        let p = prepare_spec(&paths, "c1", &b, true, "vmm-agent").unwrap();
        assert_eq!(p.cgroup_path, PathBuf::from("/vmm-agent/c1"));
        let written: Spec =
            serde_json::from_slice(&std::fs::read(p.shadow.join("config.json")).unwrap()).unwrap();
        assert_eq!(written.root().as_ref().unwrap().path(), &b.join("rootfs"));
        assert_eq!(written.process().as_ref().unwrap().terminal(), Some(true));
    }
}
