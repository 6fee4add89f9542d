//! Bad requests to the guest agent: each gets the contract's gRPC code and
//! the agent keeps serving (and leaves nothing behind).

#[path = "agent_common/mod.rs"]
mod agent_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use agent_common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::ttrpc::{self, Code};
use serde_json::json;

/// Create of `id` with `bundle_path` (nothing else set).
fn create_path(id: &str, bundle_path: &str) -> api::CreateTaskRequest {
    let mut r = api::CreateTaskRequest::new();
    r.id = id.to_string();
    r.bundle = bundle_path.to_string();
    r
}

/// After a failed Create of `id`: the id is free again and nothing is left.
fn assert_create_left_nothing(agent: &mut Agent, id: &str, bundles: &TestDir) {
    agent.assert_alive();
    expect_code(
        &format!("state of {id} after its failed create"),
        agent.client.state(ctx(), &state_req(id, "")),
        Code::NOT_FOUND,
    );
    agent.assert_clean(&bundles.path);
}

#[test]
fn missing_bundle_is_invalid_argument() {
    let mut agent = Agent::start("bad-missing");
    let bundles = TestDir::new("bad-missing-bundles");
    let missing = bundles.join("does-not-exist");
    expect_code(
        "create with a missing bundle dir",
        agent
            .client
            .create(ctx(), &create_path("m1", missing.to_str().unwrap())),
        Code::INVALID_ARGUMENT,
    );
    expect_code(
        "create with a relative bundle path",
        agent
            .client
            .create(ctx(), &create_path("m1", "relative/bundle")),
        Code::INVALID_ARGUMENT,
    );
    expect_code(
        "create with an empty bundle path",
        agent.client.create(ctx(), &create_path("m1", "")),
        Code::INVALID_ARGUMENT,
    );
    // A bundle dir with a rootfs but no config.json.
    let b = Bundle::new(&bundles.path, "noconfig", &spec(&["true"], false));
    std::fs::remove_file(b.dir.join("config.json")).unwrap();
    expect_code(
        "create with no config.json",
        agent.client.create(ctx(), &create_path("m1", &b.path())),
        Code::INVALID_ARGUMENT,
    );
    assert_create_left_nothing(&mut agent, "m1", &bundles);
    agent.shutdown();
}

#[test]
fn invalid_config_json_is_invalid_argument() {
    let mut agent = Agent::start("bad-config");
    let bundles = TestDir::new("bad-config-bundles");
    let b = Bundle::new(&bundles.path, "cfg", &spec(&["true"], false));
    let mut failures = Vec::new();
    for (what, text) in [
        ("not JSON", "{ this is not json".to_string()),
        ("a JSON array", "[1, 2, 3]".to_string()),
        (
            "wrong field types",
            r#"{"ociVersion": 5, "process": "sh", "root": []}"#.to_string(),
        ),
        ("no process args", {
            let mut s = spec(&["true"], false);
            s["process"]["args"] = json!([]);
            s.to_string()
        }),
        ("no root", {
            let mut s = spec(&["true"], false);
            s.as_object_mut().unwrap().remove("root");
            s.to_string()
        }),
    ] {
        std::fs::write(b.dir.join("config.json"), &text).unwrap();
        match code_mismatch(
            &format!("create with config.json: {what}"),
            agent.client.create(ctx(), &create_path("cfg", &b.path())),
            Code::INVALID_ARGUMENT,
        ) {
            None => assert_create_left_nothing(&mut agent, "cfg", &bundles),
            Some(m) => {
                failures.push(m);
                // A wrongly accepted create must not block the next case.
                let _ = agent.client.delete(ctx(), &delete_req("cfg", ""));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The same id with a good config now works.
    b.write_spec(&spec(&["true"], false));
    let (status, _) = {
        agent
            .client
            .create(ctx(), &create_path("cfg", &b.path()))
            .expect("create after fixing config");
        agent
            .client
            .start(ctx(), &start_req("cfg", ""))
            .expect("start");
        let w = agent
            .client
            .wait(ctx(), &wait_req("cfg", ""))
            .expect("wait");
        agent
            .client
            .delete(ctx(), &delete_req("cfg", ""))
            .expect("delete");
        (w.exit_status, ())
    };
    assert_eq!(status, 0);
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn unknown_ids_are_not_found() {
    let mut agent = Agent::start("bad-unknown");
    let c = &agent.client;
    expect_code(
        "state",
        c.state(ctx(), &state_req("nope", "")),
        Code::NOT_FOUND,
    );
    expect_code(
        "start",
        c.start(ctx(), &start_req("nope", "")),
        Code::NOT_FOUND,
    );
    expect_code(
        "wait",
        c.wait(ctx(), &wait_req("nope", "")),
        Code::NOT_FOUND,
    );
    expect_code(
        "kill",
        c.kill(ctx(), &kill_req("nope", "", 9, false)),
        Code::NOT_FOUND,
    );
    expect_code(
        "delete",
        c.delete(ctx(), &delete_req("nope", "")),
        Code::NOT_FOUND,
    );
    let p = process(&["true"], false);
    expect_code(
        "exec",
        c.exec(ctx(), &exec_req("nope", "x", &p, false, "", "", "")),
        Code::NOT_FOUND,
    );
    let mut r = api::PidsRequest::new();
    r.id = "nope".into();
    expect_code("pids", c.pids(ctx(), &r), Code::NOT_FOUND);
    let mut r = api::StatsRequest::new();
    r.id = "nope".into();
    expect_code("stats", c.stats(ctx(), &r), Code::NOT_FOUND);
    let mut r = api::PauseRequest::new();
    r.id = "nope".into();
    expect_code("pause", c.pause(ctx(), &r), Code::NOT_FOUND);
    let mut r = api::ResumeRequest::new();
    r.id = "nope".into();
    expect_code("resume", c.resume(ctx(), &r), Code::NOT_FOUND);
    let mut r = api::CloseIORequest::new();
    r.id = "nope".into();
    r.stdin = true;
    expect_code("close_io", c.close_io(ctx(), &r), Code::NOT_FOUND);
    let mut r = api::ResizePtyRequest::new();
    r.id = "nope".into();
    r.width = 80;
    r.height = 24;
    expect_code("resize_pty", c.resize_pty(ctx(), &r), Code::NOT_FOUND);
    let mut r = api::CheckpointTaskRequest::new();
    r.id = "nope".into();
    r.path = "/tmp/nope".into();
    expect_code("checkpoint", c.checkpoint(ctx(), &r), Code::UNIMPLEMENTED);
    agent.assert_alive();

    // Unknown exec ids of a known container.
    let bundles = TestDir::new("bad-unknown-bundles");
    let b = Bundle::new(&bundles.path, "known", &spec(&["sleep", "1000"], false));
    agent
        .client
        .create(ctx(), &create_req("known", &b, false, "", "", ""))
        .expect("create");
    agent
        .client
        .start(ctx(), &start_req("known", ""))
        .expect("start");
    let c = &agent.client;
    expect_code(
        "state exec",
        c.state(ctx(), &state_req("known", "nope")),
        Code::NOT_FOUND,
    );
    expect_code(
        "start exec",
        c.start(ctx(), &start_req("known", "nope")),
        Code::NOT_FOUND,
    );
    expect_code(
        "wait exec",
        c.wait(ctx(), &wait_req("known", "nope")),
        Code::NOT_FOUND,
    );
    expect_code(
        "kill exec",
        c.kill(ctx(), &kill_req("known", "nope", 9, false)),
        Code::NOT_FOUND,
    );
    expect_code(
        "delete exec",
        c.delete(ctx(), &delete_req("known", "nope")),
        Code::NOT_FOUND,
    );
    agent
        .client
        .kill(ctx(), &kill_req("known", "", 9, false))
        .expect("kill");
    agent
        .client
        .wait(ctx(), &wait_req("known", ""))
        .expect("wait");
    agent
        .client
        .delete(ctx(), &delete_req("known", ""))
        .expect("delete");
    agent.assert_alive();
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn duplicates_and_wrong_states() {
    let mut agent = Agent::start("bad-state");
    let bundles = TestDir::new("bad-state-bundles");
    let b = Bundle::new(&bundles.path, "dup", &spec(&["sleep", "1000"], false));
    let c = agent.client.clone();
    c.create(ctx(), &create_req("dup", &b, false, "", "", ""))
        .expect("create");
    let b2 = Bundle::new(&bundles.path, "dup2", &spec(&["sleep", "1000"], false));
    expect_code(
        "create with a duplicate id",
        c.create(ctx(), &create_req("dup", &b2, false, "", "", "")),
        Code::ALREADY_EXISTS,
    );
    let mut r = api::PauseRequest::new();
    r.id = "dup".into();
    expect_code(
        "pause of a created (not running) container",
        c.pause(ctx(), &r),
        Code::FAILED_PRECONDITION,
    );
    c.start(ctx(), &start_req("dup", "")).expect("start");
    expect_code(
        "second start",
        c.start(ctx(), &start_req("dup", "")),
        Code::FAILED_PRECONDITION,
    );
    expect_code(
        "delete of a running container",
        c.delete(ctx(), &delete_req("dup", "")),
        Code::FAILED_PRECONDITION,
    );
    let mut r = api::ResumeRequest::new();
    r.id = "dup".into();
    expect_code(
        "resume of a running container",
        c.resume(ctx(), &r),
        Code::FAILED_PRECONDITION,
    );

    let p = process(&["sleep", "1000"], false);
    c.exec(ctx(), &exec_req("dup", "x1", &p, false, "", "", ""))
        .expect("exec");
    expect_code(
        "exec with a duplicate exec id",
        c.exec(ctx(), &exec_req("dup", "x1", &p, false, "", "", "")),
        Code::ALREADY_EXISTS,
    );
    // Bad spec Anys.
    let mut bad = exec_req("dup", "x2", &p, false, "", "", "");
    bad.spec = MessageField::some(json_any(PROCESS_TYPE_URL, &json!("not a process")));
    expect_code(
        "exec with a bad Process JSON",
        c.exec(ctx(), &bad),
        Code::INVALID_ARGUMENT,
    );
    bad.spec = MessageField::none();
    expect_code(
        "exec without a spec",
        c.exec(ctx(), &bad),
        Code::INVALID_ARGUMENT,
    );
    let mut up = api::UpdateTaskRequest::new();
    up.id = "dup".into();
    up.resources = MessageField::some(json_any(RESOURCES_TYPE_URL, &json!({ "memory": "lots" })));
    expect_code(
        "update with bad LinuxResources JSON",
        c.update(ctx(), &up),
        Code::INVALID_ARGUMENT,
    );

    c.kill(ctx(), &kill_req("dup", "", 9, false)).expect("kill");
    assert_eq!(
        c.wait(ctx(), &wait_req("dup", ""))
            .expect("wait")
            .exit_status,
        137
    );
    expect_code(
        "exec into a stopped container",
        c.exec(ctx(), &exec_req("dup", "x3", &p, false, "", "", "")),
        Code::FAILED_PRECONDITION,
    );
    expect_code(
        "start of a stopped container",
        c.start(ctx(), &start_req("dup", "")),
        Code::FAILED_PRECONDITION,
    );
    let mut r = api::PauseRequest::new();
    r.id = "dup".into();
    expect_code(
        "pause of a stopped container",
        c.pause(ctx(), &r),
        Code::FAILED_PRECONDITION,
    );
    let _ = c.delete(ctx(), &delete_req("dup", "x1"));
    c.delete(ctx(), &delete_req("dup", "")).expect("delete");
    agent.assert_alive();
    agent.assert_clean(&bundles.path);
    agent.shutdown();
}

#[test]
fn rootfs_escaping_the_bundle_is_invalid_argument() {
    let mut agent = Agent::start("bad-escape");
    let bundles = TestDir::new("bad-escape-bundles");
    let b = Bundle::new(&bundles.path, "esc", &spec(&["true"], false));
    let outside = bundles.join("outside");
    std::fs::create_dir_all(&outside).unwrap();

    for (what, root) in [
        ("root.path ../..", "../.."),
        ("root.path rootfs/../../outside", "rootfs/../../outside"),
        (
            "absolute root.path outside the bundle",
            outside.to_str().unwrap(),
        ),
    ] {
        let mut s = spec(&["true"], false);
        s["root"]["path"] = json!(root);
        b.write_spec(&s);
        expect_code(
            what,
            agent.client.create(ctx(), &create_path("esc", &b.path())),
            Code::INVALID_ARGUMENT,
        );
        assert_create_left_nothing(&mut agent, "esc", &bundles);
    }

    // root.path is a symlink leading out of the bundle.
    for (what, target) in [
        ("symlink to /", "/".to_string()),
        ("symlink to ../outside", "../outside".to_string()),
    ] {
        let link = b.dir.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut s = spec(&["true"], false);
        s["root"]["path"] = json!("escape");
        b.write_spec(&s);
        expect_code(
            what,
            agent.client.create(ctx(), &create_path("esc", &b.path())),
            Code::INVALID_ARGUMENT,
        );
        assert_create_left_nothing(&mut agent, "esc", &bundles);
    }
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "the agent wrote outside the bundle"
    );
    agent.shutdown();
}

/// Reads one ttrpc frame (10-byte header + payload) from `s`.
fn read_frame(s: &mut UnixStream) -> (u32, u8, Vec<u8>) {
    let mut h = [0u8; 10];
    s.read_exact(&mut h).expect("reading a response header");
    let len = u32::from_be_bytes(h[0..4].try_into().unwrap());
    let stream = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)
        .expect("reading a response payload");
    let _ = stream;
    (stream, h[8], payload)
}

fn write_frame(s: &mut UnixStream, stream_id: u32, payload: &[u8]) {
    let mut h = Vec::with_capacity(10);
    h.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    h.extend_from_slice(&stream_id.to_be_bytes());
    h.push(1); // MESSAGE_TYPE_REQUEST
    h.push(0);
    s.write_all(&h).unwrap();
    s.write_all(payload).unwrap();
}

#[test]
fn oversized_message_is_invalid_argument() {
    let mut agent = Agent::start("bad-oversize");
    // The ttrpc client refuses to send more than 4 MiB, so the oversized
    // request is written as a raw frame: a Create whose stdout URL is 5 MiB.
    let mut create = api::CreateTaskRequest::new();
    create.id = "huge".into();
    create.bundle = "/nonexistent".into();
    create.stdout = "x".repeat(5 << 20);
    let mut req = ttrpc::Request::new();
    req.service = "containerd.task.v3.Task".into();
    req.method = "Create".into();
    req.payload = create.write_to_bytes().unwrap();
    let body = req.write_to_bytes().unwrap();
    assert!(body.len() > 4 << 20);

    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
    write_frame(&mut s, 1, &body);
    let (stream, kind, payload) = read_frame(&mut s);
    assert_eq!(
        (stream, kind),
        (1, 2),
        "expected a response frame for stream 1"
    );
    let resp = ttrpc::Response::parse_from_bytes(&payload).unwrap();
    let status = resp.status.as_ref().expect("response without status");
    assert_eq!(
        status.code(),
        Code::INVALID_ARGUMENT,
        "oversized request answered with {:?} ({})",
        status.code(),
        status.message
    );

    // The same connection still carries requests.
    let mut req = ttrpc::Request::new();
    req.service = "containerd.task.v3.Task".into();
    req.method = "Connect".into();
    req.payload = api::ConnectRequest::new().write_to_bytes().unwrap();
    write_frame(&mut s, 3, &req.write_to_bytes().unwrap());
    let (stream, _, payload) = read_frame(&mut s);
    assert_eq!(stream, 3);
    let resp = ttrpc::Response::parse_from_bytes(&payload).unwrap();
    assert!(
        resp.status
            .as_ref()
            .map(|s| s.code() == Code::OK)
            .unwrap_or(true),
        "Connect after the oversized request failed: {:?}",
        resp.status
    );
    let connect = api::ConnectResponse::parse_from_bytes(&resp.payload).unwrap();
    assert!(connect.shim_pid > 0);

    // Garbage that is not a ttrpc Request at all.
    write_frame(&mut s, 5, &[0xff; 64]);
    drop(s);
    agent.assert_alive();
    agent.shutdown();
}
