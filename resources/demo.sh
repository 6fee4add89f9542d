#!/usr/bin/env bash
# Usage: resources/demo.sh VMMCTL KERNEL_DIR AGENT_IMAGE
# Boots a sandbox VM (the guest kernel with the guest agent as /init, from
# resources/initramfs/build-agent-image.sh) and runs containers in it through
# the agent's Task API over hybrid vsock (`vmmctl agent`). Runs directly when
# this host's KVM can boot a standard kernel; otherwise inside the nested test
# host (QEMU TCG with emulated AMD SVM). Shows the boot time, the containers'
# output, their cgroup stats and the guest console.
set -euo pipefail
vmmctl=$1 kernel_dir=$2 image=$3
here=$(cd "$(dirname "$0")" && pwd)

# The demo, as a script for sh; $1 = vmmctl, $2 = vmlinux, $3 = image, $4 = scratch dir.
demo_script='
set -u
V=$1; K=$2; I=$3; D=$4
A="$V agent -a hvsock:$D/vsock --connect-timeout 240"
echo "== booting the sandbox VM (2 vCPUs, 256 MiB, agent as /init)"
$V run --kernel $K --initrd $I --cpus 2 --memory 256 --boot-timer \
    --vsock cid=3,uds=$D/vsock --console file:$D/console.log \
    --cmdline "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet agent.hostname=demo-sandbox" \
    </dev/null 2>$D/vmmctl.err &
VM=$!
echo "== vmmctl agent run --bundle /bundles/hello"
$A run --id hello --bundle /bundles/hello
echo "   (exit status $?)"
echo "== a long-running container, an exec into it, its cgroup v2 stats"
$A run --id sleeper --bundle /bundles/sleeper >/dev/null 2>&1 &
for i in $(seq 100); do $A state --id sleeper 2>/dev/null | grep -q status=RUNNING && break; sleep 0.2; done
$A exec --id sleeper -- sh -c "echo exec: \$(id -un) in \$(hostname), processes: \$(ls -d /proc/[0-9]* | wc -l)"
$A stats --id sleeper
$A kill --id sleeper --signal 9
wait $! 2>/dev/null
echo "== events the agent queued"
$A events --wait 1
echo "== shutdown (the agent powers the VM off)"
$A shutdown
wait $VM
echo "   vmmctl exit status $?"
grep -E "boot-time-ms|vmm-setup-ms" $D/vmmctl.err
echo "== guest console"
cat $D/console.log
'

echo "== vmmctl kvm-info" >&2
"$vmmctl" kvm-info
if "$vmmctl" kvm-info | grep -q "standard guests:   can boot"; then
    echo "== running directly on this host's KVM" >&2
    scratch=$(mktemp -d /tmp/vmm-demo.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    exec sh -c "$demo_script" demo "$vmmctl" "$kernel_dir/vmlinux" "$image" "$scratch"
fi

echo "== this host's KVM cannot boot a standard guest kernel: using the nested test host" >&2
payload=$(mktemp -d /tmp/vmm-demo.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$vmmctl" "$kernel_dir/vmlinux" "$payload/"
cp "$image" "$payload/sandbox.cpio.gz"
printf '%s\n' "$demo_script" >"$payload/demo.sh"
cat >"$payload/demo-script.sh" <<'SCRIPT'
echo "== inside the test host:"
/x/vmmctl kvm-info
mkdir -p /tmp/demo
sh /x/demo.sh /x/vmmctl /x/vmlinux /x/sandbox.cpio.gz /tmp/demo
SCRIPT
"$here/testhost/run" "$payload" "$payload/demo-script.sh"
