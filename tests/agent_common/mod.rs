//! Helpers shared by the guest agent's host tests and its benchmark: a busybox
//! bundle per test, the agent started in fresh mount and pid namespaces, a
//! ttrpc Task client, stdio endpoints the agent dials, and leak probes
//! (descendant processes, fds, threads, mounts, cgroup directories).
//!
//! Everything here fails loudly (panics with a message): these tests need
//! root, `unshare` and the busybox bundle, and never skip.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{MessageField, MessageFull};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::ttrpc::context::{self, Context};
use containerd_shim_protos::ttrpc::{self, Code};
use containerd_shim_protos::TaskClient;
use guest_agent::client::{AgentClient, StdioListener};
use serde_json::{json, Value};

/// How long one Task API call may take before the test fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stdio endpoint waits for the agent to dial it / for EOF.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Panics unless the test runs as root (namespaces, mounts and cgroups need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the guest agent tests must run as root (euid is {euid}): they create namespaces, \
         mounts and cgroups; run them with sudo, they are not skipped"
    );
}

/// The cached busybox bundle built by resources/bundle/build.sh.
pub fn bundle_source() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/bundle/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}); see its stderr above",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(
            stdout
                .lines()
                .last()
                .unwrap_or_else(|| panic!("{} printed no bundle dir", script.display()))
                .trim(),
        );
        assert!(
            dir.join("rootfs/bin/busybox").is_file(),
            "bundle {} has no rootfs/bin/busybox",
            dir.display()
        );
        dir
    })
}

/// A scratch directory under /tmp, removed (recursively, not across mounts)
/// when dropped.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(unique(&format!("agent-{name}")));
        fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // `rm --one-file-system` never follows a mount left behind by a
        // failing agent into the host's filesystems.
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.path)
            .status();
    }
}

/// A bundle directory: a copy of the busybox rootfs and a config.json
/// written by the test.
pub struct Bundle {
    pub dir: PathBuf,
}

impl Bundle {
    /// Copies the busybox rootfs into `parent/name/rootfs` and writes `spec`.
    pub fn new(parent: &Path, name: &str, spec: &Value) -> Self {
        let dir = parent.join(name);
        fs::create_dir_all(&dir).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(bundle_source().join("rootfs"))
            .arg(dir.join("rootfs"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cp -a rootfs into {} failed",
            dir.display()
        );
        let b = Bundle { dir };
        b.write_spec(spec);
        b
    }

    pub fn write_spec(&self, spec: &Value) {
        fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(spec).unwrap(),
        )
        .unwrap();
    }

    pub fn path(&self) -> String {
        self.dir.to_str().unwrap().to_string()
    }
}

/// An OCI Process object (as used in config.json and in Exec's spec Any).
pub fn process(args: &[&str], terminal: bool) -> Value {
    json!({
        "terminal": terminal,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"],
            "effective": ["CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"],
            "permitted": ["CAP_KILL", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true
    })
}

/// Memory limit every test spec sets (checked in the container's cgroup).
pub const SPEC_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// A complete OCI config.json for the busybox rootfs running `args`.
pub fn spec(args: &[&str], terminal: bool) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process(args, terminal),
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "agent-test",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }
        ],
        "linux": {
            "resources": {
                "memory": { "limit": SPEC_MEMORY_LIMIT },
                "pids": { "limit": 64 }
            },
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "network" }
            ]
        }
    })
}

/// A running agent in its own mount and pid namespaces.
pub struct Agent {
    pub dir: TestDir,
    pub socket: PathBuf,
    pub cgroup_root: String,
    pub log: PathBuf,
    /// Host pid of the agent process itself (the child of `unshare`).
    pub pid: u32,
    unshare: Child,
    /// The agent's own client (Task API + events) on one connection.
    pub agent_client: AgentClient,
    /// Its typed Task API client.
    pub client: TaskClient,
}

impl Agent {
    /// Starts the agent and connects a Task client; panics with the agent's
    /// log if it does not come up within 20 s.
    pub fn start(name: &str) -> Self {
        let level = std::env::var("AGENT_TEST_LOG_LEVEL").unwrap_or_else(|_| "debug".into());
        Self::start_with_log_level(name, &level)
    }

    /// Like `start`, with the agent's `--log-level`.
    pub fn start_with_log_level(name: &str, log_level: &str) -> Self {
        require_root();
        let dir = TestDir::new(name);
        let socket = dir.join("agent.sock");
        let state = dir.join("state");
        let log = dir.join("agent.log");
        let cgroup_root = unique("vmm-agent-test");
        let log_file = fs::File::create(&log).unwrap();
        let agent_bin = env!("CARGO_BIN_EXE_guest-agent");
        let unshare = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc"])
            .arg(agent_bin)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--state-dir")
            .arg(&state)
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .arg("--log-level")
            .arg(log_level)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run unshare (util-linux) for {agent_bin}: {e}"));
        let mut unshare = KillOnDrop(Some(unshare));
        let deadline = Instant::now() + Duration::from_secs(20);
        let agent_client = loop {
            if let Some(status) = unshare.child().try_wait().unwrap() {
                panic!(
                    "the guest agent exited during startup ({status}); its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if is_socket(&socket) {
                if let Ok(c) = AgentClient::connect_unix(&socket) {
                    break c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the guest agent did not listen on {} within 20 s; its log:\n{}",
                socket.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let unshare = unshare.0.take().unwrap();
        let pid = children_of(unshare.id())
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("unshare {} has no child", unshare.id()));
        Agent {
            dir,
            socket,
            cgroup_root,
            log,
            pid,
            unshare,
            client: agent_client.task().clone(),
            agent_client,
        }
    }

    /// A second, independent ttrpc connection to the agent.
    pub fn connect(&self) -> TaskClient {
        AgentClient::connect_unix(&self.socket)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()))
            .task()
            .clone()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<cannot read log: {e}>"))
    }

    /// Asserts the agent process is still alive (a bad request must not kill it).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.unshare.try_wait().unwrap() {
            panic!(
                "the guest agent died ({status}); its log:\n{}",
                self.log_text()
            );
        }
        let resp = self
            .client
            .connect(ctx(), &api::ConnectRequest::new())
            .unwrap_or_else(|e| {
                panic!(
                    "agent stopped serving: Connect failed: {e:?}\nlog:\n{}",
                    self.log_text()
                )
            });
        assert!(resp.shim_pid > 0, "Connect returned agent pid 0");
    }

    /// Host pid of a process given its pid in the agent's pid namespace
    /// (searched among the agent's descendants).
    pub fn host_pid(&self, ns_pid: u32) -> Option<u32> {
        descendants(self.pid).into_iter().find(|p| {
            fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("NSpid:"))
                        .map(|l| l.split_whitespace().nth(2) == Some(&ns_pid.to_string()[..]))
                })
                .unwrap_or(false)
        })
    }

    /// The agent's open fds: fd number -> link target.
    pub fn fds(&self) -> std::collections::BTreeMap<u32, String> {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.parse().ok()?;
                Some((n, fs::read_link(e.path()).ok()?.display().to_string()))
            })
            .collect()
    }

    /// Waits (up to 10 s) until the agent has no fd beyond `base_fds` and at
    /// most `base_threads` threads; panics naming the extra fds otherwise.
    pub fn assert_no_fd_thread_leak(
        &self,
        base_fds: &std::collections::BTreeMap<u32, String>,
        base_threads: usize,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (fds, threads) = (self.fds(), self.thread_count());
            let extra: Vec<_> = fds
                .iter()
                .filter(|(n, t)| base_fds.get(n) != Some(t))
                .collect();
            if extra.is_empty() && threads <= base_threads {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent leaked: fds not open before: {extra:?} ({} fds now, {} before); \
                 threads {threads} (before {base_threads})",
                fds.len(),
                base_fds.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn thread_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap()
            .count()
    }

    /// Mount points in the agent's mount namespace under `path`.
    pub fn mounts_under(&self, path: &Path) -> Vec<String> {
        mount_points(&format!("/proc/{}/mountinfo", self.pid), path)
    }

    /// Container cgroup directories left under this agent's cgroup root, in
    /// any hierarchy (v1 controllers or the v2 root).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in cgroup_root_dirs(&self.cgroup_root) {
            if let Ok(rd) = fs::read_dir(&root) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }

    /// The cgroup file `name` of container `id` (e.g. memory.limit_in_bytes),
    /// in the hierarchy where it exists.
    pub fn cgroup_file(&self, id: &str, v1_controller: &str, name: &str) -> Option<PathBuf> {
        let v1 = Path::new("/sys/fs/cgroup")
            .join(v1_controller)
            .join(&self.cgroup_root)
            .join(id)
            .join(name);
        let v2 = Path::new("/sys/fs/cgroup")
            .join(&self.cgroup_root)
            .join(id)
            .join(name);
        [v1, v2].into_iter().find(|p| p.exists())
    }

    /// Asserts nothing of the agent's containers is left: no descendant
    /// processes, no mounts under `under`, no container cgroups.
    pub fn assert_clean(&self, under: &Path) {
        let procs = descendants(self.pid);
        assert!(
            procs.is_empty(),
            "processes left behind under the agent: {:?}",
            procs
                .iter()
                .map(|p| (
                    p,
                    fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default()
                ))
                .collect::<Vec<_>>()
        );
        let mounts = self.mounts_under(under);
        assert!(
            mounts.is_empty(),
            "mounts left behind in the agent's namespace: {mounts:?}"
        );
        let host: Vec<String> = mount_points("/proc/self/mountinfo", under);
        assert!(
            host.is_empty(),
            "mounts leaked into the host's namespace: {host:?}"
        );
        let cgroups = self.cgroup_dirs();
        assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    }

    /// Next event from the agent's queue, or None when `timeout` passes
    /// (DeadlineExceeded).
    pub fn next_event(&self, timeout: Duration) -> Option<Envelope> {
        self.agent_client
            .next_event(timeout)
            .unwrap_or_else(|e| panic!("Events.Next failed: {e}"))
    }

    /// Shuts the agent down with Shutdown and waits for it to exit 0.
    pub fn shutdown(mut self) {
        let mut req = api::ShutdownRequest::new();
        req.now = true;
        let _ = self.client.shutdown(ctx(), &req);
        let status = wait_child(&mut self.unshare, Duration::from_secs(20));
        match status {
            Some(s) => assert!(
                s.success(),
                "agent exited with {s} after Shutdown; log:\n{}",
                self.log_text()
            ),
            None => panic!(
                "agent did not exit within 20 s of Shutdown; log:\n{}",
                self.log_text()
            ),
        }
        // Checked here, before Drop tidies the cgroup root up.
        let left = self.cgroup_dirs();
        assert!(
            left.is_empty(),
            "container cgroups left after Shutdown: {left:?}"
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            let mut req = api::ShutdownRequest::new();
            req.now = true;
            let _ = self
                .client
                .shutdown(context::with_timeout(5_000_000_000), &req);
            if wait_child(&mut self.unshare, Duration::from_secs(10)).is_none() {
                // Killing the pid namespace's init kills every container too.
                if self.pid != 0 {
                    // SAFETY: plain kill(2) of a pid this test started.
                    unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                }
                let _ = self.unshare.kill();
                let _ = self.unshare.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- guest agent log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        // Remove whatever the agent left of its cgroup root (leaves first).
        // Processes killed with the agent's pid namespace take a moment to
        // leave their cgroups, so retry for a while.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = false;
            for root in cgroup_root_dirs(&self.cgroup_root) {
                if let Ok(rd) = fs::read_dir(&root) {
                    for e in rd.flatten() {
                        if e.path().is_dir() {
                            left |= fs::remove_dir(e.path()).is_err();
                        }
                    }
                }
                left |= fs::remove_dir(&root).is_err();
            }
            if !left || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Kills and reaps a child unless disarmed (startup failure paths).
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            // unshare forwards nothing; killing its child (the agent, pid 1 of
            // the namespace) ends the namespace.
            for p in children_of(c.id()) {
                // SAFETY: plain kill(2) of a process this test started.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_socket(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Directories that can hold `root` as a cgroup: every v1 hierarchy under
/// /sys/fs/cgroup and the v2 root itself.
fn cgroup_root_dirs(root: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut out = vec![base.join(root)];
    if let Ok(rd) = fs::read_dir(base) {
        for e in rd.flatten() {
            out.push(e.path().join(root));
        }
    }
    out.into_iter().filter(|p| p.is_dir()).collect()
}

/// Mount points listed in `mountinfo` at or under `path`.
pub fn mount_points(mountinfo: &str, path: &Path) -> Vec<String> {
    let prefix = path.to_str().unwrap();
    fs::read_to_string(mountinfo)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|mp| mp == prefix || mp.starts_with(&format!("{prefix}/")))
        .collect()
}

/// Direct children of `pid` (all its threads' children).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out.into_iter().collect()
}

/// All descendants of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = children_of(pid);
    while let Some(p) = todo.pop() {
        out.push(p);
        todo.extend(children_of(p));
    }
    out
}

/// A ttrpc context with the per-call timeout.
pub fn ctx() -> Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// None if `r` failed with `code`, else a description of what happened.
pub fn code_mismatch<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, ttrpc::Error>,
    code: Code,
) -> Option<String> {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) if s.code() == code => None,
        Err(ttrpc::Error::RpcStatus(s)) => Some(format!(
            "{what}: expected {code:?}, got {:?} ({})",
            s.code(),
            s.message
        )),
        other => Some(format!("{what}: expected {code:?}, got {other:?}")),
    }
}

/// Asserts `r` failed with `code`.
pub fn expect_code<T: std::fmt::Debug>(what: &str, r: Result<T, ttrpc::Error>, code: Code) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => assert_eq!(
            s.code(),
            code,
            "{what}: expected {code:?}, got {:?} ({})",
            s.code(),
            s.message
        ),
        other => panic!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// Decodes an event Any, checking its type name.
pub fn unpack_event<M: MessageFull>(any: &Any) -> M {
    let name = M::descriptor().full_name().to_string();
    assert!(
        any.type_url.ends_with(&name),
        "event type_url {} is not {name}",
        any.type_url
    );
    M::parse_from_bytes(&any.value).unwrap()
}

/// Packs an OCI JSON object (Process or LinuxResources) into an Any.
pub fn json_any(type_url: &str, v: &Value) -> Any {
    let mut a = Any::new();
    a.type_url = type_url.to_string();
    a.value = serde_json::to_vec(v).unwrap();
    a
}

pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// An endpoint the agent dials for one stdio stream (`unix:///path`).
pub struct IoEndpoint {
    pub url: String,
    listener: StdioListener,
}

impl IoEndpoint {
    pub fn new(dir: &Path, name: &str) -> Self {
        let listener = StdioListener::bind(dir, &unique(name)).unwrap();
        IoEndpoint {
            url: listener.url(),
            listener,
        }
    }

    /// Accepts the agent's connection in a thread and collects everything
    /// until EOF.
    pub fn collect(self) -> JoinHandle<Vec<u8>> {
        let accepted = self.accept();
        std::thread::spawn(move || {
            let mut s = accepted.join().unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("reading stdio stream (got {} bytes): {e}", out.len()));
            out
        })
    }

    /// Accepts the agent's connection in a thread and hands the stream back.
    pub fn accept(self) -> JoinHandle<UnixStream> {
        std::thread::spawn(move || {
            let s = self
                .listener
                .accept_timeout(IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("the agent never connected to {}: {e}", self.url));
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s
        })
    }
}

/// Reads from `s` until `needle` has been seen (or panics after IO_TIMEOUT);
/// returns everything read.
pub fn read_until(s: &mut UnixStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    while !out.windows(needle.len()).any(|w| w == needle) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {:?}",
            String::from_utf8_lossy(needle)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "EOF before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&out)
            ),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}; got {:?}", String::from_utf8_lossy(&out)),
        }
    }
    out
}

pub fn write_all(s: &mut UnixStream, data: &[u8]) {
    s.write_all(data).unwrap();
}

/// Task API request builders.
pub fn create_req(
    id: &str,
    bundle: &Bundle,
    terminal: bool,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> api::CreateTaskRequest {
    let mut r = api::CreateTaskRequest::new();
    r.id = id.to_string();
    r.bundle = bundle.path();
    r.terminal = terminal;
    r.stdin = stdin.to_string();
    r.stdout = stdout.to_string();
    r.stderr = stderr.to_string();
    r
}

pub fn start_req(id: &str, exec_id: &str) -> api::StartRequest {
    let mut r = api::StartRequest::new();
    r.id = id.to_string();
    r.exec_id = exec_id.to_string();
    r
}

pub fn wait_req(id: &str, exec_id: &str) -> api::WaitRequest {
    let mut r = api::WaitRequest::new();
    r.id = id.to_string();
    r.exec_id = exec_id.to_string();
    r
}

pub fn delete_req(id: &str, exec_id: &str) -> api::DeleteRequest {
    let mut r = api::DeleteRequest::new();
    r.id = id.to_string();
    r.exec_id = exec_id.to_string();
    r
}

pub fn state_req(id: &str, exec_id: &str) -> api::StateRequest {
    let mut r = api::StateRequest::new();
    r.id = id.to_string();
    r.exec_id = exec_id.to_string();
    r
}

pub fn kill_req(id: &str, exec_id: &str, signal: u32, all: bool) -> api::KillRequest {
    let mut r = api::KillRequest::new();
    r.id = id.to_string();
    r.exec_id = exec_id.to_string();
    r.signal = signal;
    r.all = all;
    r
}

pub fn exec_req(
    id: &str,
    exec_id: &str,
    proc_json: &Value,
    terminal: bool,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> api::ExecProcessRequest {
    let mut r = api::ExecProcessRequest::new();
    r.id = id.to_string();
    r.exec_id = exec_id.to_string();
    r.terminal = terminal;
    r.stdin = stdin.to_string();
    r.stdout = stdout.to_string();
    r.stderr = stderr.to_string();
    r.spec = MessageField::some(json_any(PROCESS_TYPE_URL, proc_json));
    r
}

/// Runs create+start+wait+delete of `args` with stdout collected; returns
/// (exit status, stdout).
pub fn run_to_completion(
    agent: &Agent,
    client: &TaskClient,
    bundle_parent: &Path,
    id: &str,
    args: &[&str],
) -> (u32, Vec<u8>) {
    let bundle = Bundle::new(bundle_parent, id, &spec(args, false));
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let url = out.url.clone();
    let out = out.collect();
    client
        .create(ctx(), &create_req(id, &bundle, false, "", &url, ""))
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    client
        .start(ctx(), &start_req(id, ""))
        .unwrap_or_else(|e| panic!("start {id}: {e:?}"));
    let w = client
        .wait(ctx(), &wait_req(id, ""))
        .unwrap_or_else(|e| panic!("wait {id}: {e:?}"));
    client
        .delete(ctx(), &delete_req(id, ""))
        .unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
    (w.exit_status, out.join().unwrap())
}
