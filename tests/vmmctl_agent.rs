//! `vmmctl agent` against a real guest agent on this host (as root): the
//! agent runs in new mount and pid namespaces with `--listen unix:PATH`, and
//! vmmctl creates, starts, streams, execs into, inspects and deletes busybox
//! containers through it. The same commands drive the agent inside a VM in
//! nested_agent.rs; here the stdio sockets are unix sockets in a private
//! directory instead of hybrid-vsock ports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The guest-agent binary of the same build (`cargo test --workspace`
/// builds every binary before running tests).
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let agent = dir.join("guest-agent");
    assert!(
        agent.exists(),
        "{} missing: build the workspace (cargo test --workspace builds it)",
        agent.display()
    );
    agent
}

fn vmmctl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmmctl"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmmctl starts");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

struct Agent {
    child: Child,
    dir: vmm_sys_util::tempdir::TempDir,
    cgroup_root: String,
}

impl Agent {
    fn start() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "these tests need root (namespaces, mounts, cgroups); they are not skipped"
        );
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmmctl-agent").unwrap();
        let cgroup_root = format!("vmmctl-agent-test-{}", std::process::id());
        let socket = dir.as_path().join("agent.sock");
        let child = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc"])
            .arg(agent_binary())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--state-dir")
            .arg(dir.as_path().join("state"))
            .args(["--cgroup-root", &cgroup_root, "--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare + guest-agent start");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the agent did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            dir,
            cgroup_root,
        }
    }

    fn address(&self) -> String {
        format!("unix:{}", self.dir.as_path().join("agent.sock").display())
    }

    /// A bundle with the busybox rootfs and `args` as the process.
    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let source = Command::new(repo_root().join("resources/bundle/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("resources/bundle/build.sh runs");
        assert!(source.status.success());
        let source = PathBuf::from(
            String::from_utf8_lossy(&source.stdout)
                .lines()
                .last()
                .unwrap()
                .trim(),
        );
        let bundle = self.dir.as_path().join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        let cp = Command::new("cp")
            .arg("-a")
            .arg(source.join("rootfs"))
            .arg(bundle.join("rootfs"))
            .status()
            .unwrap();
        assert!(cp.success());
        let config = std::fs::read_to_string(source.join("config.json")).unwrap();
        let args_json = format!(
            "[{}]",
            args.iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let config = config.replacen("\"args\": [\"sh\"]", &format!("\"args\": {args_json}"), 1);
        assert!(config.contains(&args_json), "args replaced in config.json");
        std::fs::write(bundle.join("config.json"), config).unwrap();
        bundle
    }

    fn agent(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let address = self.address();
        let mut all = vec!["agent", "-a", &address, "--connect-timeout", "5"];
        all.extend_from_slice(args);
        vmmctl(&all, stdin)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.agent(&["shutdown"], None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for hierarchy in ["", "memory/", "pids/", "cpu,cpuacct/", "freezer/"] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{hierarchy}{}", self.cgroup_root));
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_exec_stats_events_and_errors_through_vmmctl_agent() {
    let agent = Agent::start();

    // run: output on stdout and stderr, the exit status passes through.
    let b = agent.bundle(
        "hello",
        &["sh", "-c", "echo out-line; echo err-line >&2; exit 7"],
    );
    let out = agent.agent(
        &["run", "--id", "hello", "--bundle", b.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out-line\n");
    assert!(
        text(&out.stderr).contains("err-line"),
        "{}",
        text(&out.stderr)
    );

    // run --stdin: the tool's stdin reaches the process, EOF ends it.
    let b = agent.bundle("cat", &["sh", "-c", "tr a-z A-Z; echo eof-seen"]);
    let out = agent.agent(
        &[
            "run",
            "--id",
            "cat",
            "--bundle",
            b.to_str().unwrap(),
            "--stdin",
        ],
        Some(b"through stdin\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "THROUGH STDIN\neof-seen\n");

    // A running container: exec, stats, pause/resume, kill, delete.
    let b = agent.bundle("sleeper", &["sleep", "600"]);
    let address = agent.address();
    let sleeper = Command::new(env!("CARGO_BIN_EXE_vmmctl"))
        .args([
            "agent", "-a", &address, "run", "--id", "sleeper", "--bundle",
        ])
        .arg(&b)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = agent.agent(&["state", "--id", "sleeper"], None);
        if text(&state.stdout).contains("status=RUNNING") {
            break;
        }
        assert!(Instant::now() < deadline, "sleeper never ran: {state:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let exec = agent.agent(
        &[
            "exec",
            "--id",
            "sleeper",
            "--",
            "sh",
            "-c",
            "echo exec-ok; exit 4",
        ],
        None,
    );
    assert_eq!(exec.status.code(), Some(4), "{}", text(&exec.stderr));
    assert_eq!(text(&exec.stdout), "exec-ok\n");
    let stats = agent.agent(&["stats", "--id", "sleeper"], None);
    assert!(stats.status.success(), "{}", text(&stats.stderr));
    assert!(
        text(&stats.stdout).contains("memory.limit=268435456"),
        "the bundle's 256 MiB limit: {}",
        text(&stats.stdout)
    );
    assert!(agent
        .agent(&["pause", "--id", "sleeper"], None)
        .status
        .success());
    assert!(
        text(&agent.agent(&["state", "--id", "sleeper"], None).stdout).contains("status=PAUSED")
    );
    assert!(agent
        .agent(&["resume", "--id", "sleeper"], None)
        .status
        .success());
    let kill = agent.agent(&["kill", "--id", "sleeper", "--signal", "9"], None);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let done = sleeper.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(137), "{}", text(&done.stderr));

    // Events were queued for every step.
    let events = text(&agent.agent(&["events", "--wait", "1"], None).stdout);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(events.contains(topic), "{topic} in:\n{events}");
    }

    // Errors: one line with the gRPC code, exit status 1.
    let missing = agent.agent(&["state", "--id", "nope"], None);
    assert_eq!(missing.status.code(), Some(1));
    let err = text(&missing.stderr);
    assert!(
        err.starts_with("vmmctl: error: State nope: NOT_FOUND"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let bad = agent.agent(&["run", "--id", "bad", "--bundle", "/no/such/bundle"], None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("INVALID_ARGUMENT"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn bad_addresses_are_one_line_errors() {
    for (address, expect) in [
        ("tcp:1.2.3.4", "expected unix:PATH or hvsock:UDS[:PORT]"),
        ("unix:", "empty unix socket path"),
        ("hvsock:/tmp/x:notaport", "bad port"),
        ("unix:/nonexistent/agent.sock", "/nonexistent/agent.sock"),
    ] {
        let out = vmmctl(
            &[
                "agent",
                "-a",
                address,
                "--connect-timeout",
                "0",
                "state",
                "--id",
                "x",
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{address}");
        let err = text(&out.stderr);
        assert!(err.starts_with("vmmctl: error: "), "{address}: {err}");
        assert!(err.contains(expect), "{address}: {err}");
        assert_eq!(err.lines().count(), 1, "{address}: {err}");
    }
}
