//! Boots the project's Linux guest with `vmmctl run` inside the nested test
//! host (QEMU TCG with emulated AMD SVM and a real kvm-amd), because the
//! development machines' own /dev/kvm (PVM) cannot boot a standard kernel.
//!
//! One test-host boot runs every case (boot timings vary ~30% between
//! test-host boots, and each boot costs seconds); the script prints each
//! case's output between markers and the test checks them one by one.

use std::path::PathBuf;
use std::process::Command;

#[path = "common/nested.rs"]
mod nested;
use nested::{parse_cases, repo_root, run_in_testhost, script_output};

const GUEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

fn script() -> String {
    format!(
        r#"
K=/x/vmlinux; B=/x/bzImage; I=/x/initramfs.cpio.gz
CMD="{GUEST_CMDLINE}"
run_case() {{
    name=$1; shift
    echo "=== case $name begin"
    # Output streams to the console as it comes, so the test host's stall
    # watchdog sees progress and a hung case is told apart from a frozen host.
    timeout 90 "$@" </dev/null 2>&1
    rc=$?
    echo "=== case $name end exit=$rc"
}}
run_case kvm-info /x/vmmctl kvm-info
run_case boot-1cpu /x/vmmctl run --kernel $K --initrd $I --cpus 1 --memory 256 --boot-timer --cmdline "$CMD -- echo hello-from-guest"
run_case boot-2cpu /x/vmmctl run --kernel $K --initrd $I --cpus 2 --memory 256 --boot-timer --cmdline "$CMD"
run_case reboot /x/vmmctl run --kernel $K --initrd $I --cpus 1 --memory 256 --cmdline "$CMD -- reboot -f"
run_case bzimage /x/vmmctl run --kernel $B --initrd $I --cpus 1 --memory 256 --boot-timer --cmdline "$CMD"
run_case console-file /x/vmmctl run --kernel $K --initrd $I --console file:/tmp/guest-console.log --cmdline "$CMD -- echo to-the-file"
echo "=== case console-file-contents begin"; cat /tmp/guest-console.log; echo "=== case console-file-contents end exit=0"
echo "=== case stdin begin"
# Typed input reaches the guest shell through the serial port; sent late
# enough that the guest's 8250 driver is up (it clears the FIFO at startup).
(sleep 12; printf 'echo typed-$((6*7))\n'; sleep 4; printf 'poweroff -f\n') | timeout 90 /x/vmmctl run --kernel $K --initrd $I --cmdline "$CMD quiet -- sh" 2>&1
echo "=== case stdin end exit=$?"
run_case rng /x/vmmctl run --kernel $K --initrd $I --rng --cmdline "$CMD -- sh -c \"cat /sys/class/misc/hw_random/rng_current; head -c 32 /dev/hwrng | od -An -tx1; grep virtio /proc/interrupts\""
ROOT="console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/init"
run_case blk-root /x/vmmctl run --kernel $K --disk /x/root.ext4 --disk /x/data.img,ro --cmdline "$ROOT -- sh -c \"cat /sys/block/vda/ro /sys/block/vdb/ro; echo blk-marker-7f3a9c > /written-by-guest; sync; dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync; echo dd-exit=\$?\""
echo "=== case blk-image begin"; echo "marker-count=$(grep -c blk-marker-7f3a9c /x/root.ext4)"; cmp -s /x/data.img /x/data.img.orig && echo "ro-image-unchanged"; echo "=== case blk-image end exit=0"
echo "=== case vsock begin"
# Guest -> host first (the VMM connects guest port 6000 to /tmp/v.sock_6000),
# then the guest serves host -> guest connections on port 5000.
/x/unix-echo /tmp/v.sock_6000 1 >/tmp/unix-echo.out 2>&1 &
UE=$!
timeout 180 /x/vmmctl run --kernel $K --initrd /x/initramfs-vsock.cpio.gz --vsock cid=3,uds=/tmp/v.sock --cmdline "$CMD quiet -- sh -c \"/bin/vsock-echo connect 2 6000 10485760; /bin/vsock-echo 5000 66\"" </dev/null >/tmp/vm.out 2>&1 &
VM=$!
echo "echo-reply: $(echo hello-vsock | /x/vmmctl vsock-connect --uds /tmp/v.sock --port 5000 --wait 90)"
head -c 104857600 /dev/urandom >/tmp/big
want=$(md5sum </tmp/big | cut -d' ' -f1)
got=$(/x/vmmctl vsock-connect --uds /tmp/v.sock --port 5000 --wait 10 </tmp/big | md5sum | cut -d' ' -f1)
rm -f /tmp/big
echo "big-transfer: want=$want got=$got"
pids=""
for i in $(seq 64); do (echo "conn-$i" | /x/vmmctl vsock-connect --uds /tmp/v.sock --port 5000 --wait 10 >/tmp/c$i) & pids="$pids $!"; done
wait $pids
ok=0; for i in $(seq 64); do [ "$(cat /tmp/c$i)" = "conn-$i" ] && ok=$((ok+1)); done
echo "concurrent-ok=$ok"
wait $VM; echo "vm-exit=$?"
wait $UE
cat /tmp/vm.out /tmp/unix-echo.out
echo "=== case vsock end exit=0"
echo "=== case net begin"
# vmmctl creates the tap; the host side then gets its link-local address and
# sends 50 MiB. The guest receives to EOF and checksums before powering off
# (a sender that powers off right after close could still have data queued).
head -c 52428800 /dev/urandom >/tmp/net-send
echo "host-md5=$(md5sum </tmp/net-send | cut -d' ' -f1)"
(for i in $(seq 300); do ip link set vmmtap0 up 2>/dev/null && break; sleep 0.2; done
 ip addr add 169.254.10.1/24 dev vmmtap0
 for i in $(seq 240); do nc 169.254.10.2 5001 </tmp/net-send && break; sleep 0.5; done
 echo "host-send-done") >/tmp/sender.out 2>&1 &
SENDER=$!
GUEST_NET="ip link set eth0 up; ip addr add 169.254.10.2/24 dev eth0; for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 2 169.254.10.1 >/dev/null && break; done; ping -c 3 169.254.10.1; nc -l -p 5001 >/tmp/f; echo nc-exit=\$?; echo guest-md5=\$(md5sum </tmp/f | cut -d' ' -f1)"
timeout 150 /x/vmmctl run --kernel $K --initrd $I --memory 256 --net tap=vmmtap0,mac=02:00:00:00:00:02 --cmdline "$CMD quiet -- sh -c \"$GUEST_NET\"" </dev/null 2>&1
echo "vm-exit=$?"
wait $SENDER
# Printed only now: written while the guest console streams, it could land mid-line.
grep -v "Connection refused" /tmp/sender.out
rm -f /tmp/net-send /tmp/sender.out
echo "=== case net end exit=0"
echo "=== case fs begin"
# virtio-fs: vmmctl starts virtiofsd (/x/virtiofsd, first on PATH) for the
# share; the guest mounts it, reads the host's file and writes its own, which
# the host then reads after the VM is gone.
rm -rf /tmp/share; mkdir /tmp/share; echo fs-host-content-5e1d >/tmp/share/from-host
GUEST_FS="mkdir -p /mnt; mount -t virtiofs hostshare /mnt && echo mount-ok; cat /mnt/from-host; echo fs-guest-content-9b2c >/mnt/from-guest; sync; umount /mnt; echo umount-exit=\$?"
timeout 120 /x/vmmctl run --kernel $K --initrd $I --memory 256 --fs tag=hostshare,dir=/tmp/share --cmdline "$CMD quiet -- sh -c \"$GUEST_FS\"" </dev/null 2>&1
echo "vm-exit=$?"
echo "host-sees: $(cat /tmp/share/from-guest)"
echo "virtiofsd-left=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -cx virtiofsd)"
echo "=== case fs end exit=0"
echo "=== case fs-backend-death begin"
# virtiofsd killed under a running guest: the VMM logs it and the device
# enters DEVICE_NEEDS_RESET, which the guest's driver sees in its status.
GUEST_DEATH="echo fs-ready; i=0; while [ \$i -lt 90 ]; do s=\$(cat /sys/bus/virtio/devices/virtio0/status); [ \$s = 0x0000004f ] && break; sleep 1; i=\$((i+1)); done; echo guest-status=\$s"
timeout 150 /x/vmmctl run --kernel $K --initrd $I --memory 256 --fs tag=hostshare,dir=/tmp/share --cmdline "$CMD quiet -- sh -c \"$GUEST_DEATH\"" </dev/null >/tmp/fs-death.out 2>&1 &
VM=$!
for i in $(seq 240); do grep -q fs-ready /tmp/fs-death.out && break; sleep 0.5; done
for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = virtiofsd ] && kill -9 ${{p#/proc/}} && echo killed-virtiofsd; done
wait $VM; echo "vm-exit=$?"
cat /tmp/fs-death.out
echo "=== case fs-backend-death end exit=0"
exit 0
"#
    )
}

fn float_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn vmmctl_boots_linux_in_the_nested_test_host() {
    let kernel_dir = PathBuf::from(script_output("resources/guest-kernel/build.sh", &[]));
    let payload =
        vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-nested-payload").unwrap();
    let p = payload.as_path();
    std::fs::copy(kernel_dir.join("vmlinux"), p.join("vmlinux")).unwrap();
    std::fs::copy(kernel_dir.join("bzImage"), p.join("bzImage")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vmmctl"), p.join("vmmctl")).unwrap();
    // virtio-fs backend (dynamically linked: the test host copies its
    // libraries); `make deps` installs it.
    let virtiofsd = devices::virtio::fs::find_virtiofsd().unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&virtiofsd, p.join("virtiofsd")).unwrap();
    let initramfs = p.join("initramfs.cpio.gz");
    script_output(
        "resources/initramfs/build.sh",
        &[initramfs.to_str().unwrap()],
    );
    let echo = p.join("vsock-echo");
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&echo)
        .arg(repo_root().join("tests/guest-tools/vsock_echo.c"))
        .status()
        .expect("a C compiler (cc) builds the guest's vsock echo tool");
    assert!(cc.success(), "cc -static vsock_echo.c failed");
    let unix_echo = p.join("unix-echo");
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&unix_echo)
        .arg(repo_root().join("tests/guest-tools/unix_echo.c"))
        .status()
        .expect("cc builds the test host's unix echo tool");
    assert!(cc.success(), "cc -static unix_echo.c failed");
    let vsock_initramfs = p.join("initramfs-vsock.cpio.gz");
    let extra = format!("{}:/bin/vsock-echo", echo.display());
    script_output(
        "resources/initramfs/build.sh",
        &[vsock_initramfs.to_str().unwrap(), "--extra", &extra],
    );
    let root = p.join("root.ext4");
    script_output("resources/rootfs/build.sh", &[root.to_str().unwrap(), "32"]);
    std::fs::copy(&root, p.join("data.img")).unwrap();
    std::fs::copy(&root, p.join("data.img.orig")).unwrap();
    // Benchmarks run in `make bench`, not here, to keep VM starts per
    // test-host boot (and so the chance of a QEMU freeze) low.
    let cases = run_in_testhost(p, &script(), 4, 120);

    let case = |name: &str| -> &(String, i32) {
        cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} missing from the console"))
    };

    let (info, rc) = case("kvm-info");
    assert_eq!(*rc, 0, "{info}");
    assert!(info.contains("hardware (AMD SVM)"), "{info}");
    assert!(info.contains("standard guests:   can boot"), "{info}");

    let (boot1, rc) = case("boot-1cpu");
    assert_eq!(
        *rc, 0,
        "1-vCPU boot must end with status 0 after poweroff -f:\n{boot1}"
    );
    assert!(boot1.contains("vmm-guest: init reached"), "{boot1}");
    assert!(boot1.contains("vmm-guest: cpus=1"), "{boot1}");
    assert!(boot1.contains("hello-from-guest"), "{boot1}");
    assert!(boot1.contains("vmm-guest: command exit=0"), "{boot1}");
    let boot_ms = float_after(boot1, "boot-time-ms:").expect("boot-time-ms printed");
    assert!(boot_ms > 0.0 && boot_ms < 120_000.0, "{boot_ms}");
    let setup_ms = float_after(boot1, "vmm-setup-ms:").expect("vmm-setup-ms printed");
    assert!(
        setup_ms > 0.0 && setup_ms < boot_ms,
        "setup {setup_ms} vs boot {boot_ms}"
    );

    let (boot2, rc) = case("boot-2cpu");
    assert_eq!(*rc, 0, "{boot2}");
    assert!(
        boot2.contains("vmm-guest: cpus=2"),
        "both vCPUs online:\n{boot2}"
    );
    assert!(float_after(boot2, "boot-time-ms:").is_some(), "{boot2}");

    let (reboot, rc) = case("reboot");
    assert_eq!(*rc, 0, "reboot -f must end vmmctl with status 0:\n{reboot}");
    assert!(reboot.contains("vmm-guest: init reached"), "{reboot}");
    assert!(
        !reboot.contains("vmm-guest: command exit="),
        "reboot -f does not return:\n{reboot}"
    );

    let (bz, rc) = case("bzimage");
    assert_eq!(*rc, 0, "{bz}");
    assert!(bz.contains("vmm-guest: init reached"), "{bz}");

    let (file_run, rc) = case("console-file");
    assert_eq!(*rc, 0, "{file_run}");
    assert!(
        !file_run.contains("to-the-file"),
        "console went to the file, not stdout"
    );
    let (contents, _) = case("console-file-contents");
    assert!(contents.contains("to-the-file"), "{contents}");

    let (stdin, rc) = case("stdin");
    assert_eq!(*rc, 0, "{stdin}");
    assert!(
        stdin.lines().any(|l| l.trim() == "typed-42"),
        "a command typed on vmmctl's stdin ran in the guest:\n{stdin}"
    );

    let (rng, rc) = case("rng");
    assert_eq!(*rc, 0, "{rng}");
    assert!(
        rng.contains("virtio_rng.0"),
        "virtio-rng is the guest's hwrng:\n{rng}"
    );
    assert!(
        rng.contains("vmm-guest: command exit=0"),
        "reading /dev/hwrng works:\n{rng}"
    );
    let random_bytes: Vec<&str> = rng
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() == 16
                && words
                    .iter()
                    .all(|w| w.len() == 2 && u8::from_str_radix(w, 16).is_ok())
        })
        .collect();
    assert_eq!(random_bytes.len(), 2, "32 bytes from /dev/hwrng:\n{rng}");
    assert!(
        rng.contains("IO-APIC   5-edge      virtio0"),
        "slot 0 interrupt mapped through ACPI:\n{rng}"
    );

    let (blk, rc) = case("blk-root");
    assert_eq!(*rc, 0, "{blk}");
    assert!(
        blk.contains("EXT4-fs (vda): mounted filesystem"),
        "root on virtio-blk:\n{blk}"
    );
    assert!(blk.contains("vmm-guest: init reached"), "{blk}");
    assert!(blk.contains("[vdb] 65536 512-byte logical blocks"), "{blk}");
    assert!(
        blk.contains("dd-exit=1"),
        "writing the read-only disk fails:\n{blk}"
    );
    let ro_flags: Vec<&str> = blk.lines().filter(|l| *l == "0" || *l == "1").collect();
    assert_eq!(
        ro_flags,
        vec!["0", "1"],
        "vda writable, vdb read-only:\n{blk}"
    );
    let (image, _) = case("blk-image");
    assert!(
        image.contains("marker-count=1"),
        "the guest's write reached the image:\n{image}"
    );
    assert!(image.contains("ro-image-unchanged"), "{image}");

    let (vsock, _) = case("vsock");
    assert!(
        vsock.contains("echo-reply: hello-vsock"),
        "host -> guest echo:\n{vsock}"
    );
    let big = vsock
        .lines()
        .find_map(|l| l.strip_prefix("big-transfer: "))
        .expect("big transfer line");
    let (want, got) = big.split_once(' ').unwrap();
    assert_eq!(
        want.trim_start_matches("want="),
        got.trim_start_matches("got="),
        "100 MiB echoed with the same checksum"
    );
    assert!(
        vsock.contains("concurrent-ok=64"),
        "64 concurrent connections:\n{vsock}"
    );
    assert!(
        vsock.contains("vsock-echo: done, all connections ok"),
        "{vsock}"
    );
    assert!(vsock.contains("vm-exit=0"), "{vsock}");

    let (net, _) = case("net");
    assert!(
        net.contains("3 packets transmitted, 3 packets received"),
        "ping over virtio-net:\n{net}"
    );
    let md5 = |key: &str| {
        net.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{key} missing:\n{net}"))
    };
    assert_eq!(
        md5("guest-md5="),
        md5("host-md5="),
        "50 MiB TCP transfer host -> guest intact"
    );
    assert!(net.contains("nc-exit=0"), "{net}");
    assert!(net.contains("host-send-done"), "{net}");
    assert!(net.contains("vm-exit=0"), "{net}");

    let (fs, _) = case("fs");
    assert!(
        fs.contains("mount-ok"),
        "guest mounts the virtio-fs share:\n{fs}"
    );
    assert!(
        fs.lines().any(|l| l.trim() == "fs-host-content-5e1d"),
        "guest reads the host's file:\n{fs}"
    );
    assert!(fs.contains("umount-exit=0"), "{fs}");
    assert!(fs.contains("vmm-guest: command exit=0"), "{fs}");
    assert!(fs.contains("vm-exit=0"), "{fs}");
    assert!(
        fs.contains("host-sees: fs-guest-content-9b2c"),
        "the host sees the guest's write:\n{fs}"
    );
    assert!(
        fs.contains("virtiofsd-left=0"),
        "virtiofsd stopped with the VM:\n{fs}"
    );

    let (death, _) = case("fs-backend-death");
    assert!(death.contains("killed-virtiofsd"), "{death}");
    assert!(
        death.contains("virtio-fs backend failed: virtiofsd for /tmp/share exited"),
        "the VMM reports the death:\n{death}"
    );
    assert!(
        death.contains("device needs reset"),
        "the device fails:\n{death}"
    );
    assert!(
        death.contains("guest-status=0x0000004f"),
        "the guest sees DEVICE_NEEDS_RESET:\n{death}"
    );
    assert!(death.contains("vm-exit=0"), "{death}");
}

#[test]
fn case_parser_splits_console() {
    let c = parse_cases("noise\n=== case a begin\nx\ny\n=== case a end exit=3\n=== case b begin\n=== case b end exit=0\n");
    assert_eq!(c["a"], ("x\ny\n".to_string(), 3));
    assert_eq!(c["b"], (String::new(), 0));
    assert_eq!(
        float_after("boot-time-ms: 12.5\n", "boot-time-ms:"),
        Some(12.5)
    );
}
