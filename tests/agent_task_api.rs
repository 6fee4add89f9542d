//! Host tests of the guest agent's Task API: the agent runs (as root) in new
//! mount and pid namespaces with `--listen unix:PATH` and is driven with the
//! real containerd-shim-protos ttrpc TaskClient against busybox containers.

#[path = "agent_common/mod.rs"]
mod agent_common;

use std::io::Read;
use std::net::Shutdown;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_common::*;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::ttrpc::Code;
use serde_json::json;

/// Stream bytes as text for readable assertion failures.
fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ts_secs(t: &MessageField<Timestamp>) -> f64 {
    let t = t.as_ref().expect("exited_at is not set");
    t.seconds as f64 + t.nanos as f64 / 1e9
}

/// Asserts an exit timestamp lies within [from - 1 s, now + 1 s].
fn assert_exit_time(what: &str, t: &MessageField<Timestamp>, from: f64) {
    let s = ts_secs(t);
    let now = now_secs();
    assert!(
        s >= from - 1.0 && s <= now + 1.0,
        "{what}: exited_at {s} is not between {from} and {now}"
    );
}

/// Events until one with `topic` for `id` arrives (panics after 10 s).
fn events_until(agent: &Agent, topic: &str, id: &str) -> Vec<Envelope> {
    let mut seen = Vec::new();
    loop {
        let ev = agent
            .next_event(Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "no {topic} event for {id} within 10 s; got {:?}",
                    seen.iter()
                        .map(|e: &Envelope| e.topic.clone())
                        .collect::<Vec<_>>()
                )
            });
        assert_eq!(ev.namespace, "default", "event namespace");
        assert!(
            ev.timestamp.is_some(),
            "event {} has no timestamp",
            ev.topic
        );
        let done = ev.topic == topic && event_container(&ev) == id;
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn event_container(ev: &Envelope) -> String {
    let any = ev.event.as_ref().expect("event without payload");
    match ev.topic.as_str() {
        "/tasks/create" => unpack_event::<TaskCreate>(any).container_id,
        "/tasks/start" => unpack_event::<TaskStart>(any).container_id,
        "/tasks/exit" => unpack_event::<TaskExit>(any).container_id,
        "/tasks/delete" => unpack_event::<TaskDelete>(any).container_id,
        "/tasks/exec-added" => unpack_event::<TaskExecAdded>(any).container_id,
        "/tasks/exec-started" => unpack_event::<TaskExecStarted>(any).container_id,
        "/tasks/paused" => unpack_event::<TaskPaused>(any).container_id,
        "/tasks/resumed" => unpack_event::<TaskResumed>(any).container_id,
        _ => String::new(),
    }
}

fn topics(evs: &[Envelope]) -> Vec<&str> {
    evs.iter().map(|e| e.topic.as_str()).collect()
}

fn state(agent: &Agent, id: &str, exec_id: &str) -> api::StateResponse {
    agent
        .client
        .state(ctx(), &state_req(id, exec_id))
        .unwrap_or_else(|e| panic!("state {id}/{exec_id}: {e:?}"))
}

#[test]
fn echo_output_wait_delete_events_and_no_leftovers() {
    let agent = Agent::start("echo");
    let bundles = TestDir::new("echo-bundles");
    // One container first: what the agent opens once and keeps (as of now an
    // fd on "/" after its first container) is not a leak; what every
    // container leaves behind is.
    let (st, out) = run_to_completion(&agent, &agent.client, &bundles.path, "warmup", &["true"]);
    assert_eq!((st, out.len()), (0, 0));
    let (fds, threads) = (agent.fds(), agent.thread_count());
    let bundle = Bundle::new(
        &bundles.path,
        "echo1",
        &spec(&["echo", "hello", "from agent"], false),
    );
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let err = IoEndpoint::new(&agent.dir.path, "err");
    let (out_url, err_url) = (out.url.clone(), err.url.clone());
    let (out, err) = (out.collect(), err.collect());

    let c = agent
        .client
        .create(
            ctx(),
            &create_req("echo1", &bundle, false, "", &out_url, &err_url),
        )
        .expect("create");
    assert!(c.pid > 0, "Create returned pid 0");
    let st = state(&agent, "echo1", "");
    assert_eq!(
        st.status.enum_value(),
        Ok(Status::CREATED),
        "state after Create"
    );
    assert_eq!(st.pid, c.pid);
    assert_eq!(st.bundle, bundle.path());
    assert!(
        agent.host_pid(c.pid).is_some(),
        "the created process {} is not among the agent's descendants",
        c.pid
    );

    // The leak checks at the end look at these same places.
    assert!(
        !agent.cgroup_dirs().is_empty(),
        "no container cgroup under {} after Create",
        agent.cgroup_root
    );
    let started = now_secs();
    let s = agent
        .client
        .start(ctx(), &start_req("echo1", ""))
        .expect("start");
    assert_eq!(s.pid, c.pid, "Start pid != Create pid");
    let w = agent
        .client
        .wait(ctx(), &wait_req("echo1", ""))
        .expect("wait");
    assert_eq!(w.exit_status, 0);
    assert_exit_time("wait", &w.exited_at, started);
    assert_eq!(
        String::from_utf8(out.join().unwrap()).unwrap(),
        "hello from agent\n"
    );
    assert_eq!(text(err.join().unwrap()), "", "stderr");

    let st = state(&agent, "echo1", "");
    assert_eq!(
        st.status.enum_value(),
        Ok(Status::STOPPED),
        "state after exit"
    );
    assert_eq!(st.exit_status, 0);

    let d = agent
        .client
        .delete(ctx(), &delete_req("echo1", ""))
        .expect("delete");
    assert_eq!(d.exit_status, 0);
    assert_eq!(d.pid, c.pid);
    assert_eq!(
        ts_secs(&d.exited_at),
        ts_secs(&w.exited_at),
        "Delete and Wait exit times differ"
    );
    expect_code(
        "state after delete",
        agent.client.state(ctx(), &state_req("echo1", "")),
        Code::NOT_FOUND,
    );

    let evs: Vec<Envelope> = events_until(&agent, "/tasks/delete", "echo1")
        .into_iter()
        .filter(|e| event_container(e) == "echo1")
        .collect();
    let t = topics(&evs);
    let pos = |topic: &str| {
        t.iter()
            .position(|x| *x == topic)
            .unwrap_or_else(|| panic!("no {topic} event in {t:?}"))
    };
    assert!(
        pos("/tasks/create") < pos("/tasks/start") && pos("/tasks/start") < pos("/tasks/exit"),
        "event order {t:?}"
    );
    let exit_ev = &evs[pos("/tasks/exit")];
    let exit: TaskExit = unpack_event(exit_ev.event.as_ref().unwrap());
    assert_eq!(exit.container_id, "echo1");
    assert_eq!(
        exit.id, "echo1",
        "TaskExit.id of the init process is the container id"
    );
    assert_eq!(exit.pid, c.pid);
    assert_eq!(exit.exit_status, 0);
    let create: TaskCreate = unpack_event(evs[pos("/tasks/create")].event.as_ref().unwrap());
    assert_eq!(create.bundle, bundle.path());
    assert_eq!(create.pid, c.pid);

    agent.assert_clean(&bundles.path);
    agent.assert_no_fd_thread_leak(&fds, threads);
    agent.shutdown();
}

#[test]
fn large_output_is_byte_exact() {
    let agent = Agent::start("large");
    let bundles = TestDir::new("large-bundles");
    // seq 1 1200000 writes 8,488,895 bytes (> 8 MiB) in ~7-byte lines.
    let bundle = Bundle::new(
        &bundles.path,
        "big",
        &spec(&["sh", "-c", "seq 1 1200000; echo to-stderr >&2"], false),
    );
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let err = IoEndpoint::new(&agent.dir.path, "err");
    let (out_url, err_url) = (out.url.clone(), err.url.clone());
    let (out, err) = (out.collect(), err.collect());
    agent
        .client
        .create(
            ctx(),
            &create_req("big", &bundle, false, "", &out_url, &err_url),
        )
        .expect("create");
    agent
        .client
        .start(ctx(), &start_req("big", ""))
        .expect("start");
    let w = agent
        .client
        .wait(ctx(), &wait_req("big", ""))
        .expect("wait");
    assert_eq!(w.exit_status, 0);
    let got = out.join().unwrap();
    let mut want = String::with_capacity(8_500_000);
    for i in 1..=1_200_000u32 {
        want.push_str(&i.to_string());
        want.push('\n');
    }
    assert!(want.len() > 8 << 20);
    assert_eq!(got.len(), want.len(), "stdout length");
    if let Some(i) = got.iter().zip(want.as_bytes()).position(|(a, b)| a != b) {
        panic!("stdout differs at byte {i}");
    }
    assert_eq!(text(err.join().unwrap()), "to-stderr\n", "stderr");
    agent
        .client
        .delete(ctx(), &delete_req("big", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn stdin_passthrough_and_close_io_eof() {
    let agent = Agent::start("stdin");
    let bundles = TestDir::new("stdin-bundles");
    let bundle = Bundle::new(&bundles.path, "cat", &spec(&["cat"], false));
    let inp = IoEndpoint::new(&agent.dir.path, "in");
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let (in_url, out_url) = (inp.url.clone(), out.url.clone());
    let (inp, out) = (inp.accept(), out.accept());
    agent
        .client
        .create(
            ctx(),
            &create_req("cat", &bundle, false, &in_url, &out_url, ""),
        )
        .expect("create");
    let (mut inp, mut out) = (inp.join().unwrap(), out.join().unwrap());
    agent
        .client
        .start(ctx(), &start_req("cat", ""))
        .expect("start");

    // 1 MiB of a non-repeating-per-line pattern, echoed back by cat.
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let writer = std::thread::spawn(move || {
        write_all(&mut inp, &data);
        (inp, data)
    });
    let mut got = vec![0u8; 1 << 20];
    out.read_exact(&mut got).expect("reading cat's output back");
    let (inp, data) = writer.join().unwrap();
    assert!(got == data, "stdin passthrough changed the bytes");

    // Our stream stays open: only CloseIO may deliver EOF to cat.
    let mut req = api::CloseIORequest::new();
    req.id = "cat".into();
    req.stdin = true;
    agent.client.close_io(ctx(), &req).expect("close_io");
    let w = agent
        .client
        .wait(ctx(), &wait_req("cat", ""))
        .expect("wait after CloseIO");
    assert_eq!(w.exit_status, 0, "cat did not exit 0 after CloseIO");
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).expect("stdout EOF");
    assert!(
        rest.is_empty(),
        "extra output after the echoed data: {} bytes",
        rest.len()
    );
    drop(inp);
    agent
        .client
        .delete(ctx(), &delete_req("cat", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn exec_processes_signals_and_init_exit_kills_execs() {
    let agent = Agent::start("exec");
    let bundles = TestDir::new("exec-bundles");
    let bundle = Bundle::new(&bundles.path, "box", &spec(&["sleep", "1000"], false));
    let c = agent
        .client
        .create(ctx(), &create_req("box", &bundle, false, "", "", ""))
        .expect("create");
    agent
        .client
        .start(ctx(), &start_req("box", ""))
        .expect("start");

    // e1: output on both streams and an exit code.
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let err = IoEndpoint::new(&agent.dir.path, "err");
    let (out_url, err_url) = (out.url.clone(), err.url.clone());
    let (out, err) = (out.collect(), err.collect());
    let p = process(
        &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 7"],
        false,
    );
    agent
        .client
        .exec(
            ctx(),
            &exec_req("box", "e1", &p, false, "", &out_url, &err_url),
        )
        .expect("exec e1");
    assert_eq!(
        state(&agent, "box", "e1").status.enum_value(),
        Ok(Status::CREATED)
    );
    let s = agent
        .client
        .start(ctx(), &start_req("box", "e1"))
        .expect("start e1");
    assert!(
        s.pid > 0 && s.pid != c.pid,
        "exec pid {} (init {})",
        s.pid,
        c.pid
    );
    let w = agent
        .client
        .wait(ctx(), &wait_req("box", "e1"))
        .expect("wait e1");
    assert_eq!(w.exit_status, 7);
    assert_eq!(text(out.join().unwrap()), "exec-out\n", "exec stdout");
    assert_eq!(text(err.join().unwrap()), "exec-err\n", "exec stderr");
    let d = agent
        .client
        .delete(ctx(), &delete_req("box", "e1"))
        .expect("delete e1");
    assert_eq!(d.exit_status, 7);
    expect_code(
        "state of deleted exec",
        agent.client.state(ctx(), &state_req("box", "e1")),
        Code::NOT_FOUND,
    );

    // e2: stdin EOF from the stream itself (we shut our write side).
    let inp = IoEndpoint::new(&agent.dir.path, "in");
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let (in_url, out_url) = (inp.url.clone(), out.url.clone());
    let (inp, out) = (inp.accept(), out.collect());
    agent
        .client
        .exec(
            ctx(),
            &exec_req(
                "box",
                "e2",
                &process(&["cat"], false),
                false,
                &in_url,
                &out_url,
                "",
            ),
        )
        .expect("exec e2");
    let mut inp = inp.join().unwrap();
    agent
        .client
        .start(ctx(), &start_req("box", "e2"))
        .expect("start e2");
    write_all(&mut inp, b"through stdin\n");
    inp.shutdown(Shutdown::Write).unwrap();
    let w = agent
        .client
        .wait(ctx(), &wait_req("box", "e2"))
        .expect("wait e2");
    assert_eq!(w.exit_status, 0);
    assert_eq!(text(out.join().unwrap()), "through stdin\n", "exec stdout");
    agent
        .client
        .delete(ctx(), &delete_req("box", "e2"))
        .expect("delete e2");

    // e3: signalled with SIGTERM -> 128 + 15.
    let p = process(&["sleep", "1000"], false);
    agent
        .client
        .exec(ctx(), &exec_req("box", "e3", &p, false, "", "", ""))
        .expect("exec e3");
    let e3 = agent
        .client
        .start(ctx(), &start_req("box", "e3"))
        .expect("start e3");
    let mut pr = api::PidsRequest::new();
    pr.id = "box".into();
    let pids = agent.client.pids(ctx(), &pr).expect("pids");
    let listed: Vec<u32> = pids.processes.iter().map(|p| p.pid).collect();
    assert!(
        listed.contains(&c.pid) && listed.contains(&e3.pid),
        "Pids {listed:?} lacks init {} or exec {}",
        c.pid,
        e3.pid
    );
    let killed_at = now_secs();
    agent
        .client
        .kill(ctx(), &kill_req("box", "e3", 15, false))
        .expect("kill e3");
    let w = agent
        .client
        .wait(ctx(), &wait_req("box", "e3"))
        .expect("wait e3");
    assert_eq!(w.exit_status, 128 + 15, "SIGTERM exit status");
    assert_exit_time("wait e3", &w.exited_at, killed_at);
    agent
        .client
        .delete(ctx(), &delete_req("box", "e3"))
        .expect("delete e3");

    // e4 keeps running; SIGKILL to the init must take it down too.
    agent
        .client
        .exec(ctx(), &exec_req("box", "e4", &p, false, "", "", ""))
        .expect("exec e4");
    agent
        .client
        .start(ctx(), &start_req("box", "e4"))
        .expect("start e4");
    agent
        .client
        .kill(ctx(), &kill_req("box", "", 9, false))
        .expect("kill init");
    let w = agent
        .client
        .wait(ctx(), &wait_req("box", ""))
        .expect("wait init");
    assert_eq!(w.exit_status, 128 + 9, "SIGKILL exit status");
    let w4 = agent
        .client
        .wait(ctx(), &wait_req("box", "e4"))
        .expect("wait e4");
    assert_eq!(
        w4.exit_status,
        128 + 9,
        "exec left running after its init exited"
    );
    let evs = events_until(&agent, "/tasks/exit", "box");
    let t = topics(&evs);
    assert!(
        t.contains(&"/tasks/exec-added") && t.contains(&"/tasks/exec-started"),
        "events {t:?}"
    );
    let _ = agent.client.delete(ctx(), &delete_req("box", "e4"));
    let d = agent
        .client
        .delete(ctx(), &delete_req("box", ""))
        .expect("delete");
    assert_eq!(d.exit_status, 137);
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn terminal_processes_get_their_window_size() {
    let agent = Agent::start("tty");
    let bundles = TestDir::new("tty-bundles");
    let bundle = Bundle::new(&bundles.path, "tty", &spec(&["sh"], true));
    let inp = IoEndpoint::new(&agent.dir.path, "in");
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let (in_url, out_url) = (inp.url.clone(), out.url.clone());
    let (inp, out) = (inp.accept(), out.accept());
    agent
        .client
        .create(
            ctx(),
            &create_req("tty", &bundle, true, &in_url, &out_url, ""),
        )
        .expect("create with terminal");
    let (mut inp, mut out) = (inp.join().unwrap(), out.join().unwrap());
    agent
        .client
        .start(ctx(), &start_req("tty", ""))
        .expect("start");

    // A terminal exec first (the init shell must stay up for it).
    let ein = IoEndpoint::new(&agent.dir.path, "in");
    let eout = IoEndpoint::new(&agent.dir.path, "out");
    let (ein_url, eout_url) = (ein.url.clone(), eout.url.clone());
    let (ein, eout) = (ein.accept(), eout.accept());
    agent
        .client
        .exec(
            ctx(),
            &exec_req(
                "tty",
                "sh2",
                &process(&["sh"], true),
                true,
                &ein_url,
                &eout_url,
                "",
            ),
        )
        .expect("exec with terminal");
    let (mut ein, mut eout) = (ein.join().unwrap(), eout.join().unwrap());
    agent
        .client
        .start(ctx(), &start_req("tty", "sh2"))
        .expect("start exec");
    let mut rz = api::ResizePtyRequest::new();
    rz.id = "tty".into();
    rz.exec_id = "sh2".into();
    rz.width = 77;
    rz.height = 33;
    agent
        .client
        .resize_pty(ctx(), &rz)
        .expect("resize exec pty");
    write_all(&mut ein, b"stty size; tty; exit 5\n");
    let got = read_until(&mut eout, b"33 77\r\n");
    assert!(!got.is_empty());
    let w = agent
        .client
        .wait(ctx(), &wait_req("tty", "sh2"))
        .expect("wait exec");
    assert_eq!(w.exit_status, 5);
    let mut rest = Vec::new();
    let _ = eout.read_to_end(&mut rest);
    let all = String::from_utf8_lossy(&[got, rest].concat()).to_string();
    assert!(
        all.contains("/dev/pts/"),
        "exec's stdin is not a pty: {all:?}"
    );
    agent
        .client
        .delete(ctx(), &delete_req("tty", "sh2"))
        .expect("delete exec");

    let mut rz = api::ResizePtyRequest::new();
    rz.id = "tty".into();
    rz.width = 132;
    rz.height = 40;
    agent
        .client
        .resize_pty(ctx(), &rz)
        .expect("resize init pty");
    write_all(&mut inp, b"stty size; exit 3\n");
    read_until(&mut out, b"40 132\r\n");
    let w = agent
        .client
        .wait(ctx(), &wait_req("tty", ""))
        .expect("wait");
    assert_eq!(w.exit_status, 3);
    let _ = ein;
    agent
        .client
        .delete(ctx(), &delete_req("tty", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

fn read_trim(p: &std::path::Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The memory limit of container `id`: memory.limit_in_bytes (cgroup v1) or
/// memory.max (cgroup v2); fails if the container has neither.
fn memory_limit(agent: &Agent, id: &str) -> u64 {
    let f = agent
        .cgroup_file(id, "memory", "memory.limit_in_bytes")
        .or_else(|| agent.cgroup_file(id, "memory", "memory.max"))
        .unwrap_or_else(|| {
            panic!(
                "container {id} has neither /sys/fs/cgroup/memory/{root}/{id}/memory.limit_in_bytes \
                 (v1) nor /sys/fs/cgroup/{root}/{id}/memory.max (v2); cgroup dirs: {:?}",
                agent.cgroup_dirs(),
                root = agent.cgroup_root
            )
        });
    read_trim(&f)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}

#[test]
fn stats_memory_limit_and_update() {
    let agent = Agent::start("stats");
    let bundles = TestDir::new("stats-bundles");
    let bundle = Bundle::new(&bundles.path, "res", &spec(&["sleep", "1000"], false));
    agent
        .client
        .create(ctx(), &create_req("res", &bundle, false, "", "", ""))
        .expect("create");
    agent
        .client
        .start(ctx(), &start_req("res", ""))
        .expect("start");
    assert_eq!(
        memory_limit(&agent, "res"),
        SPEC_MEMORY_LIMIT,
        "memory limit from the spec"
    );

    let mut sr = api::StatsRequest::new();
    sr.id = "res".into();
    let st = agent.client.stats(ctx(), &sr).expect("stats");
    let any = st.stats.as_ref().expect("Stats returned no metrics");
    if any.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
        let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&any.value)
            .unwrap();
        let mem = m.memory.as_ref().expect("v1 metrics without memory");
        let usage = mem.usage.as_ref().expect("v1 memory without usage");
        assert!(usage.usage > 0, "memory usage is 0");
        assert_eq!(usage.limit, SPEC_MEMORY_LIMIT, "memory limit in stats");
        let pids = m.pids.as_ref().expect("v1 metrics without pids");
        assert!(pids.current >= 1, "pids.current {}", pids.current);
        assert_eq!(pids.limit, 64, "pids.limit");
    } else if any.type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
        let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
            .unwrap();
        let mem = m.memory.as_ref().expect("v2 metrics without memory");
        assert!(mem.usage > 0, "memory usage is 0");
        assert_eq!(mem.usage_limit, SPEC_MEMORY_LIMIT, "memory limit in stats");
        let pids = m.pids.as_ref().expect("v2 metrics without pids");
        assert!(pids.current >= 1, "pids.current {}", pids.current);
    } else {
        panic!("Stats Any has unexpected type {}", any.type_url);
    }

    let mut up = api::UpdateTaskRequest::new();
    up.id = "res".into();
    up.resources = MessageField::some(json_any(
        RESOURCES_TYPE_URL,
        &json!({ "memory": { "limit": 96u64 << 20 } }),
    ));
    agent.client.update(ctx(), &up).expect("update");
    assert_eq!(
        memory_limit(&agent, "res"),
        96 << 20,
        "memory limit after Update"
    );

    agent
        .client
        .kill(ctx(), &kill_req("res", "", 9, true))
        .expect("kill all");
    assert_eq!(
        agent
            .client
            .wait(ctx(), &wait_req("res", ""))
            .expect("wait")
            .exit_status,
        137
    );
    agent
        .client
        .delete(ctx(), &delete_req("res", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

/// Whether container `id` is frozen according to its freezer (v1
/// freezer.state or v2 cgroup.freeze); fails if it has neither.
fn frozen(agent: &Agent, id: &str) -> bool {
    if let Some(f) = agent.cgroup_file(id, "freezer", "freezer.state") {
        return read_trim(&f) == "FROZEN";
    }
    if let Some(f) = agent.cgroup_file(id, "freezer", "cgroup.freeze") {
        return read_trim(&f) == "1";
    }
    panic!("container {id} has no freezer (v1 freezer.state or v2 cgroup.freeze)");
}

#[test]
fn pause_and_resume_freeze_the_container() {
    let agent = Agent::start("pause");
    let bundles = TestDir::new("pause-bundles");
    let bundle = Bundle::new(
        &bundles.path,
        "pz",
        &spec(
            &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
            false,
        ),
    );
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let out_url = out.url.clone();
    let out = out.accept();
    agent
        .client
        .create(ctx(), &create_req("pz", &bundle, false, "", &out_url, ""))
        .expect("create");
    let mut out = out.join().unwrap();
    agent
        .client
        .start(ctx(), &start_req("pz", ""))
        .expect("start");
    read_until(&mut out, b"tick\n");

    let mut pr = api::PauseRequest::new();
    pr.id = "pz".into();
    agent.client.pause(ctx(), &pr).expect("pause");
    assert_eq!(
        state(&agent, "pz", "").status.enum_value(),
        Ok(Status::PAUSED)
    );
    assert!(
        frozen(&agent, "pz"),
        "freezer does not say frozen after Pause"
    );
    // Nothing is printed while frozen: drain what was already in flight
    // (at most 2 s), then expect 500 ms of silence.
    out.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let drain_until = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match out.read(&mut buf) {
            Ok(0) => panic!("stdout closed while the container was paused"),
            Ok(n) => assert!(
                std::time::Instant::now() < drain_until,
                "paused container still produces output ({n} bytes) 2 s after Pause"
            ),
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                break;
            }
        }
    }

    let mut rr = api::ResumeRequest::new();
    rr.id = "pz".into();
    agent.client.resume(ctx(), &rr).expect("resume");
    assert_eq!(
        state(&agent, "pz", "").status.enum_value(),
        Ok(Status::RUNNING)
    );
    assert!(!frozen(&agent, "pz"), "freezer still frozen after Resume");
    out.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    read_until(&mut out, b"tick\n");
    let evs = events_until(&agent, "/tasks/resumed", "pz");
    assert!(
        topics(&evs).contains(&"/tasks/paused"),
        "events {:?}",
        topics(&evs)
    );

    agent
        .client
        .kill(ctx(), &kill_req("pz", "", 9, false))
        .expect("kill");
    agent.client.wait(ctx(), &wait_req("pz", "")).expect("wait");
    agent
        .client
        .delete(ctx(), &delete_req("pz", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn shutdown_cleans_up_running_and_created_containers() {
    let agent = Agent::start("shutdown");
    let bundles = TestDir::new("shutdown-bundles");
    // s0 is created but never started.
    let bundle = Bundle::new(&bundles.path, "s0", &spec(&["sleep", "1000"], false));
    agent
        .client
        .create(ctx(), &create_req("s0", &bundle, false, "", "", ""))
        .expect("create");
    for id in ["s1", "s2"] {
        let bundle = Bundle::new(&bundles.path, id, &spec(&["sleep", "1000"], false));
        agent
            .client
            .create(ctx(), &create_req(id, &bundle, false, "", "", ""))
            .expect("create");
        agent
            .client
            .start(ctx(), &start_req(id, ""))
            .expect("start");
    }
    assert!(descendants(agent.pid).len() >= 3, "containers not running");
    let cgroups = agent.cgroup_dirs();
    assert!(
        cgroups.len() >= 3,
        "container cgroups before Shutdown: {cgroups:?}"
    );
    let pid = agent.pid;
    // shutdown() asserts the agent exits 0 and no container cgroup is left.
    agent.shutdown();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent process {pid} still exists after Shutdown"
    );
}

#[test]
fn oom_kill_gives_task_oom_event_and_exit_137() {
    let agent = Agent::start("oom");
    let bundles = TestDir::new("oom-bundles");
    let mut s = spec(
        &[
            "sh",
            "-c",
            "a=$(yes x | head -c 200000000 | tr -d '\\n'); echo survived",
        ],
        false,
    );
    s["linux"]["resources"]["memory"]["limit"] = json!(16u64 << 20);
    let bundle = Bundle::new(&bundles.path, "oom", &s);
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let out_url = out.url.clone();
    let out = out.collect();
    agent
        .client
        .create(ctx(), &create_req("oom", &bundle, false, "", &out_url, ""))
        .expect("create");
    agent
        .client
        .start(ctx(), &start_req("oom", ""))
        .expect("start");
    let w = agent
        .client
        .wait(ctx(), &wait_req("oom", ""))
        .expect("wait");
    assert_eq!(
        w.exit_status, 137,
        "the OOM-killed init did not exit with 128+SIGKILL"
    );
    assert_eq!(
        text(out.join().unwrap()),
        "",
        "the process survived its memory limit"
    );
    let evs = events_until(&agent, "/tasks/exit", "oom");
    let t = topics(&evs);
    let oom = evs
        .iter()
        .find(|e| e.topic == "/tasks/oom")
        .unwrap_or_else(|| panic!("no /tasks/oom event before the exit: {t:?}"));
    let ev: containerd_shim_protos::events::task::TaskOOM =
        unpack_event(oom.event.as_ref().unwrap());
    assert_eq!(ev.container_id, "oom");
    agent
        .client
        .delete(ctx(), &delete_req("oom", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn rootfs_mounts_from_create_are_mounted_then_unmounted() {
    let agent = Agent::start("rootfs-mounts");
    let bundles = TestDir::new("rootfs-mounts-bundles");
    // An empty rootfs dir: the busybox tree arrives as the overlay mount
    // Create passes (as containerd does with a snapshot).
    let mut s = spec(&["sh", "-c", "echo written > /marker; cat /marker"], false);
    s["root"]["readonly"] = json!(false);
    let dir = bundles.join("ovl");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let bundle = Bundle { dir: dir.clone() };
    bundle.write_spec(&s);
    let (upper, work) = (bundles.join("upper"), bundles.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut m = containerd_shim_protos::api::Mount::new();
    m.type_ = "overlay".into();
    m.source = "overlay".into();
    m.options = vec![
        format!("lowerdir={}", bundle_source().join("rootfs").display()),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];

    let out = IoEndpoint::new(&agent.dir.path, "out");
    let out_url = out.url.clone();
    let out = out.collect();
    let mut req = create_req("ovl", &bundle, false, "", &out_url, "");
    req.rootfs.push(m);
    agent
        .client
        .create(ctx(), &req)
        .expect("create with a rootfs mount");
    let mounted = agent.mounts_under(&dir);
    assert!(
        mounted
            .iter()
            .any(|p| p == dir.join("rootfs").to_str().unwrap()),
        "the rootfs mount is not on {}/rootfs in the agent's namespace: {mounted:?}",
        dir.display()
    );
    agent
        .client
        .start(ctx(), &start_req("ovl", ""))
        .expect("start");
    let w = agent
        .client
        .wait(ctx(), &wait_req("ovl", ""))
        .expect("wait");
    assert_eq!(w.exit_status, 0);
    assert_eq!(text(out.join().unwrap()), "written\n");
    assert_eq!(
        std::fs::read_to_string(upper.join("marker")).unwrap(),
        "written\n",
        "the container did not write through the overlay"
    );
    assert!(
        !bundle_source().join("rootfs/marker").exists(),
        "the write reached the read-only lower dir"
    );
    agent
        .client
        .delete(ctx(), &delete_req("ovl", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    assert!(
        std::fs::read_dir(dir.join("rootfs"))
            .unwrap()
            .next()
            .is_none(),
        "bundle rootfs not empty after Delete (still mounted?)"
    );
    agent.shutdown();
}

#[test]
fn default_bundle_config_from_resources_runs() {
    // The config.json that resources/bundle/build.sh writes (used by the
    // demo), with only the process arguments changed.
    let agent = Agent::start("default-bundle");
    let bundles = TestDir::new("default-bundle-bundles");
    let mut s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle_source().join("config.json")).unwrap())
            .unwrap();
    s["process"]["args"] = json!([
        "sh",
        "-c",
        "hostname; id -u; cat /proc/self/status | grep NoNewPrivs"
    ]);
    let bundle = Bundle::new(&bundles.path, "dflt", &s);
    let out = IoEndpoint::new(&agent.dir.path, "out");
    let out_url = out.url.clone();
    let out = out.collect();
    agent
        .client
        .create(ctx(), &create_req("dflt", &bundle, false, "", &out_url, ""))
        .expect("create with the default bundle config");
    agent
        .client
        .start(ctx(), &start_req("dflt", ""))
        .expect("start");
    let w = agent
        .client
        .wait(ctx(), &wait_req("dflt", ""))
        .expect("wait");
    let out = text(out.join().unwrap());
    assert_eq!(w.exit_status, 0, "output: {out:?}");
    assert_eq!(
        out.lines().next(),
        Some("busybox"),
        "hostname from the spec"
    );
    assert_eq!(
        memory_limit(&agent, "dflt"),
        256 << 20,
        "memory limit of the default config"
    );
    agent
        .client
        .delete(ctx(), &delete_req("dflt", ""))
        .expect("delete");
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}
