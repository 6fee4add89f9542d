#!/usr/bin/env bash
# Usage: resources/demo.sh VMMCTL KERNEL_DIR INITRAMFS
# Boots the guest with vmmctl directly when this host's KVM can boot a
# standard kernel; otherwise boots it inside the nested test host (QEMU TCG
# with emulated AMD SVM). Shows the guest console and the boot time.
set -euo pipefail
vmmctl=$1 kernel_dir=$2 initramfs=$3
here=$(cd "$(dirname "$0")" && pwd)
cmdline="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd"
guest_cmd='-- sh -c "echo; echo Hello from the sandbox VM; uname -a; echo vCPUs: $(grep -c ^processor /proc/cpuinfo); free -m | head -2"'

echo "== vmmctl kvm-info" >&2
"$vmmctl" kvm-info
if "$vmmctl" kvm-info | grep -q "standard guests:   can boot"; then
    echo "== booting directly on this host's KVM" >&2
    exec "$vmmctl" run --kernel "$kernel_dir/vmlinux" --initrd "$initramfs" --cpus 2 --memory 256 \
        --boot-timer --cmdline "$cmdline $guest_cmd" </dev/null
fi

echo "== this host's KVM cannot boot a standard guest kernel: using the nested test host" >&2
payload=$(mktemp -d /tmp/vmm-demo.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$vmmctl" "$kernel_dir/vmlinux" "$initramfs" "$payload/"
cat >"$payload/demo-script.sh" <<SCRIPT
echo "== inside the test host:"
/x/vmmctl kvm-info
echo "== vmmctl run (2 vCPUs, 256 MiB)"
/x/vmmctl run --kernel /x/vmlinux --initrd /x/$(basename "$initramfs") --cpus 2 --memory 256 \
    --boot-timer --cmdline '$cmdline $guest_cmd' </dev/null
SCRIPT
"$here/testhost/run" "$payload" "$payload/demo-script.sh"
