//! A manual end-to-end check of a running agent, meant for cgroup v2
//! machines (the nested test host's outer level, or the guest):
//!
//!   agent_smoke SOCKET BUNDLE_DIR         (agent on this machine)
//!   agent_smoke --vm UDS BUNDLE_DIR        (agent in a VM, hybrid vsock)
//!   agent_smoke --print-spec               (the config.json it uses)
//!
//! Locally, BUNDLE_DIR holds a busybox `rootfs/` and this tool writes its
//! config.json there. With --vm, BUNDLE_DIR is a path inside the guest that
//! already holds `rootfs/` and the `--print-spec` config.json; the agent is
//! reached through the VMM's hybrid vsock socket UDS (port 1024) and the
//! guest dials the container's stdio to host ports 6000/6001
//! (`<UDS>_<port>`). Checks: output, Stats (v2 type, memory limit), Update,
//! Pause/Resume (State PAUSED), an exec, Wait, Delete, the events; locally
//! also memory.max, cgroup.freeze and that the cgroup is gone. Prints
//! `agent-smoke: ok` and exits 0 on success.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use guest_agent::client::{ctx, AgentClient, StdioListener};

const LIMIT: u64 = 64 * 1024 * 1024;
const T: Duration = Duration::from_secs(30);

fn fail(msg: String) -> ! {
    eprintln!("agent-smoke: FAILED: {msg}");
    std::process::exit(1);
}

fn check(cond: bool, msg: impl FnOnce() -> String) {
    if !cond {
        fail(msg());
    }
}

fn spec() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo hello-v2; sleep 3"],
            "env": ["PATH=/bin:/usr/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "smoke",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "resources": {"memory": {"limit": LIMIT}, "pids": {"limit": 32}},
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]
        }
    })
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| fail(format!("{}: {e}", p.display())))
}

fn metrics(
    task: &containerd_shim_protos::TaskClient,
) -> containerd_shim_protos::cgroups_v2::metrics::Metrics {
    let mut st = api::StatsRequest::new();
    st.id = "smoke".into();
    let stats = task
        .stats(ctx(T), &st)
        .unwrap_or_else(|e| fail(format!("stats: {e:?}")));
    let any = stats
        .stats
        .into_option()
        .unwrap_or_else(|| fail("stats: no Any".into()));
    check(any.type_url == "io.containerd.cgroups.v2.Metrics", || {
        format!("stats type {}", any.type_url)
    });
    containerd_shim_protos::protobuf::Message::parse_from_bytes(&any.value)
        .unwrap_or_else(|e| fail(format!("metrics decode: {e}")))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 2 && args[1] == "--print-spec" {
        println!("{}", spec());
        return;
    }
    let (vm, socket, bundle) = match args.as_slice() {
        [_, flag, uds, b] if flag == "--vm" => (true, PathBuf::from(uds), PathBuf::from(b)),
        [_, sock, b] => (false, PathBuf::from(sock), PathBuf::from(b)),
        _ => {
            eprintln!("usage: agent_smoke [--vm] SOCKET BUNDLE_DIR | agent_smoke --print-spec");
            std::process::exit(2);
        }
    };
    // Local mode only: the cgroup files are visible here.
    let local_cgroup = (!vm).then(|| Path::new("/sys/fs/cgroup/vmm-agent/smoke"));
    if !vm {
        if let Err(e) = std::fs::write(bundle.join("config.json"), spec().to_string()) {
            fail(format!("writing config.json: {e}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(if vm { 240 } else { 30 });
    let agent = loop {
        let c = if vm {
            AgentClient::connect_hybrid_vsock(&socket, 1024)
        } else {
            AgentClient::connect_unix(&socket)
        };
        match c {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => fail(format!("connect: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let task = agent.task();
    let io_dir = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
    let listener = |name: &str, port: u32| {
        let l = if vm {
            StdioListener::bind_hybrid_vsock(&socket, port)
        } else {
            StdioListener::bind(io_dir.path(), name)
        };
        l.unwrap_or_else(|e| fail(format!("bind {name}: {e}")))
    };

    let out = listener("out", 6000);
    let mut req = api::CreateTaskRequest::new();
    req.id = "smoke".into();
    req.bundle = bundle.display().to_string();
    req.stdout = out.url();
    let out = out.collect(T);
    let created = task
        .create(ctx(T), &req)
        .unwrap_or_else(|e| fail(format!("create: {e:?}")));
    check(created.pid > 0, || "create pid 0".into());
    let mut sreq = api::StartRequest::new();
    sreq.id = "smoke".into();
    task.start(ctx(T), &sreq)
        .unwrap_or_else(|e| fail(format!("start: {e:?}")));

    let m = metrics(task);
    check(m.memory.usage_limit == LIMIT, || {
        format!("metrics memory limit {}", m.memory.usage_limit)
    });
    check(m.pids.current >= 1, || {
        format!("metrics pids {}", m.pids.current)
    });
    if let Some(cg) = local_cgroup {
        let max = read(&cg.join("memory.max"));
        check(max.trim() == LIMIT.to_string(), || {
            format!("memory.max {max}")
        });
    }

    let mut up = api::UpdateTaskRequest::new();
    up.id = "smoke".into();
    let mut res = Any::new();
    res.type_url = "opencontainers/runtime-spec/1/LinuxResources".into();
    res.value = serde_json::json!({"memory": {"limit": 2 * LIMIT}})
        .to_string()
        .into_bytes();
    up.resources = MessageField::some(res);
    task.update(ctx(T), &up)
        .unwrap_or_else(|e| fail(format!("update: {e:?}")));
    let m = metrics(task);
    check(m.memory.usage_limit == 2 * LIMIT, || {
        format!("memory limit after update {}", m.memory.usage_limit)
    });

    let mut p = api::PauseRequest::new();
    p.id = "smoke".into();
    task.pause(ctx(T), &p)
        .unwrap_or_else(|e| fail(format!("pause: {e:?}")));
    let mut sq = api::StateRequest::new();
    sq.id = "smoke".into();
    let state = task
        .state(ctx(T), &sq)
        .unwrap_or_else(|e| fail(format!("state: {e:?}")));
    check(
        state.status.value() == containerd_shim_protos::types::task::Status::PAUSED as i32,
        || format!("state after pause {:?}", state.status),
    );
    if let Some(cg) = local_cgroup {
        let frozen = read(&cg.join("cgroup.freeze"));
        check(frozen.trim() == "1", || {
            format!("cgroup.freeze after pause {frozen}")
        });
    }
    let mut r = api::ResumeRequest::new();
    r.id = "smoke".into();
    task.resume(ctx(T), &r)
        .unwrap_or_else(|e| fail(format!("resume: {e:?}")));
    if let Some(cg) = local_cgroup {
        let frozen = read(&cg.join("cgroup.freeze"));
        check(frozen.trim() == "0", || {
            format!("cgroup.freeze after resume {frozen}")
        });
    }

    let eout = listener("eout", 6001);
    let mut ex = api::ExecProcessRequest::new();
    ex.id = "smoke".into();
    ex.exec_id = "e1".into();
    ex.stdout = eout.url();
    let mut pspec = Any::new();
    pspec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    pspec.value = serde_json::json!({
        "user": {"uid": 0, "gid": 0}, "args": ["echo", "exec-ok"], "env": ["PATH=/bin"], "cwd": "/"
    })
    .to_string()
    .into_bytes();
    ex.spec = MessageField::some(pspec);
    let eout = eout.collect(T);
    task.exec(ctx(T), &ex)
        .unwrap_or_else(|e| fail(format!("exec: {e:?}")));
    let mut es = api::StartRequest::new();
    es.id = "smoke".into();
    es.exec_id = "e1".into();
    task.start(ctx(T), &es)
        .unwrap_or_else(|e| fail(format!("exec start: {e:?}")));
    let got = eout
        .wait(T)
        .unwrap_or_else(|e| fail(format!("exec output: {e}")));
    check(got == b"exec-ok\n", || {
        format!("exec output {:?}", String::from_utf8_lossy(&got))
    });

    let mut w = api::WaitRequest::new();
    w.id = "smoke".into();
    let waited = task
        .wait(ctx(T), &w)
        .unwrap_or_else(|e| fail(format!("wait: {e:?}")));
    check(waited.exit_status == 0, || {
        format!("exit status {}", waited.exit_status)
    });
    let got = out.wait(T).unwrap_or_else(|e| fail(format!("output: {e}")));
    check(got == b"hello-v2\n", || {
        format!("output {:?}", String::from_utf8_lossy(&got))
    });

    let mut d = api::DeleteRequest::new();
    d.id = "smoke".into();
    task.delete(ctx(T), &d)
        .unwrap_or_else(|e| fail(format!("delete: {e:?}")));
    if let Some(cg) = local_cgroup {
        check(!cg.exists(), || "cgroup left after delete".into());
    }

    let mut topics = Vec::new();
    while let Ok(Some(ev)) = agent.next_event(Duration::from_millis(200)) {
        topics.push(ev.topic);
    }
    for t in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        check(topics.iter().any(|x| x == t), || {
            format!("no {t} event in {topics:?}")
        });
    }
    println!("agent-smoke: ok ({} events)", topics.len());
    if vm {
        // The agent as init powers the VM off.
        let _ = task.shutdown(ctx(T), &api::ShutdownRequest::new());
    }
}
