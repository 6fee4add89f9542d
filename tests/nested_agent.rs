//! The sandbox guest image in a VM: Linux boots with the guest agent as
//! /init, and the host drives containers through the agent's Task API over
//! hybrid vsock (`vmmctl agent -a hvsock:UDS`), inside the nested test host
//! (this machine's /dev/kvm cannot boot Linux; see nested_boot.rs).
//!
//! Covers, in the guest (cgroup v2 only, as in production): create / start /
//! output / wait / delete, stdin with EOF, exec into a running container,
//! cgroup v2 stats with the spec's memory and pids limits, pause / resume
//! through the v2 freezer, kill with exit status 137, the event stream, and
//! Shutdown powering the VM off (vmmctl exits 0).

use std::path::PathBuf;

#[path = "common/nested.rs"]
mod nested;
use nested::{run_in_testhost, script_output};

/// The statically linked agent, built by `make agent-image` (which `make
/// test` runs first) into <target>/x86_64-unknown-linux-gnu/release. It is
/// not built here: cargo holds the target directory's lock while tests run.
fn static_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("VMM_GUEST_AGENT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/release/deps/<test> -> <target>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test executable lives in <target>/release/deps");
    let agent = target.join("x86_64-unknown-linux-gnu/release/guest-agent");
    assert!(
        agent.exists(),
        "the static guest agent {} is missing: run `make agent-image` (make test does), \
         or set VMM_GUEST_AGENT",
        agent.display()
    );
    agent
}

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet agent.hostname=sandbox-7";

fn script() -> String {
    format!(
        r#"
K=/x/vmlinux; I=/x/agent-initramfs.cpio.gz
A="/x/vmmctl agent -a hvsock:/tmp/agent.vsock --connect-timeout 240 --timeout 120"
case_begin() {{ echo "=== case $1 begin"; }}
case_end() {{ echo "=== case $1 end exit=$2"; }}
timeout 600 /x/vmmctl run --kernel $K --initrd $I --cpus 2 --memory 256 --boot-timer \
    --vsock cid=3,uds=/tmp/agent.vsock --console file:/tmp/console.log \
    --cmdline "{CMDLINE}" </dev/null >/tmp/vmmctl.out 2>&1 &
VM=$!

case_begin hello
$A run --id hello --bundle /bundles/hello
case_end hello $?

case_begin stdin
printf 'echo from-stdin-$((6*7))\nexit 5\n' | $A run --id sh1 --bundle /bundles/shell --stdin
case_end stdin $?

case_begin sleeper
$A run --id s1 --bundle /bundles/sleeper >/tmp/s1.out 2>&1 &
S1=$!
for i in $(seq 100); do $A state --id s1 2>/dev/null | grep -q status=RUNNING && break; sleep 0.2; done
$A state --id s1
$A exec --id s1 -- sh -c 'echo exec-in-s1 pid=$$; cat /proc/1/cmdline | tr "\0" " "; echo'
echo "exec-exit=$?"
$A stats --id s1
$A pause --id s1 && $A state --id s1
$A resume --id s1 && $A state --id s1
$A kill --id s1 --signal 9
wait $S1
echo "s1-exit=$?"
cat /tmp/s1.out
case_end sleeper 0

case_begin events
$A events --wait 2
case_end events $?

case_begin shutdown
$A shutdown
echo "shutdown-exit=$?"
wait $VM
echo "vm-exit=$?"
cat /tmp/vmmctl.out
echo "--- guest console"
cat /tmp/console.log
case_end shutdown 0
exit 0
"#
    )
}

#[test]
fn containers_run_in_the_vm_through_the_agent_over_hybrid_vsock() {
    let agent = static_agent();
    let kernel_dir = PathBuf::from(script_output("resources/guest-kernel/build.sh", &[]));
    let payload = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-nested-agent").unwrap();
    let p = payload.as_path();
    std::fs::copy(kernel_dir.join("vmlinux"), p.join("vmlinux")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vmmctl"), p.join("vmmctl")).unwrap();
    let image = p.join("agent-initramfs.cpio.gz");
    script_output(
        "resources/initramfs/build-agent-image.sh",
        &[agent.to_str().unwrap(), image.to_str().unwrap()],
    );
    let cases = run_in_testhost(p, &script(), 4, 180);
    let case = |name: &str| -> &(String, i32) {
        cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing from the console"))
    };

    let (hello, rc) = case("hello");
    assert_eq!(*rc, 0, "hello container exits 0:\n{hello}");
    assert!(
        hello.contains("Hello from a container in the sandbox VM"),
        "{hello}"
    );
    assert!(
        hello.contains("hostname: busybox"),
        "the container has its own UTS namespace with the spec's hostname:\n{hello}"
    );
    assert!(
        hello.contains("pid in container: 1"),
        "the container has its own pid namespace:\n{hello}"
    );

    let (stdin, rc) = case("stdin");
    assert_eq!(*rc, 5, "the shell's exit status comes back:\n{stdin}");
    assert!(
        stdin.contains("from-stdin-42"),
        "stdin reached sh:\n{stdin}"
    );

    let (sleeper, _) = case("sleeper");
    assert!(sleeper.contains("status=RUNNING"), "{sleeper}");
    assert!(sleeper.contains("exec-in-s1"), "exec ran:\n{sleeper}");
    assert!(
        sleeper.contains("sleep 600"),
        "exec sees the container's init as pid 1:\n{sleeper}"
    );
    assert!(sleeper.contains("exec-exit=0"), "{sleeper}");
    assert!(
        sleeper.contains("cgroup=v2 ") && sleeper.contains("memory.limit=67108864"),
        "cgroup v2 stats with the spec's 64 MiB limit:\n{sleeper}"
    );
    assert!(sleeper.contains("pids.limit=32"), "{sleeper}");
    assert!(sleeper.contains("status=PAUSED"), "v2 freezer:\n{sleeper}");
    let after_pause = sleeper.split("status=PAUSED").nth(1).unwrap_or_default();
    assert!(
        after_pause.contains("status=RUNNING"),
        "resumed after pause:\n{sleeper}"
    );
    assert!(
        sleeper.contains("s1-exit=137"),
        "SIGKILL -> 137:\n{sleeper}"
    );

    let (events, rc) = case("events");
    assert_eq!(*rc, 0, "{events}");
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/tasks/exec-added",
        "/tasks/paused",
        "/tasks/resumed",
    ] {
        assert!(events.contains(topic), "event {topic} queued:\n{events}");
    }

    let (shutdown, _) = case("shutdown");
    assert!(shutdown.contains("shutdown-exit=0"), "{shutdown}");
    assert!(
        shutdown.contains("vm-exit=0"),
        "the agent's Shutdown powers the VM off cleanly:\n{shutdown}"
    );
    assert!(
        shutdown.contains("boot-time-ms:"),
        "the agent signals the boot timer once it serves:\n{shutdown}"
    );
}
