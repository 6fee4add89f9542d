#!/usr/bin/env bash
# Usage: resources/bench/boot.sh VMMCTL KERNEL_DIR INITRAMFS [RUNS]
# `vmmctl bench boot` with the Linux guest, inside the nested test host
# (where KVM can boot a standard kernel). TCG times: compare ratios only.
set -euo pipefail
vmmctl=$1 kernel_dir=$2 initramfs=$3 runs=${4:-10}
here=$(cd "$(dirname "$0")" && pwd)
payload=$(mktemp -d /tmp/vmm-bench-boot.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$vmmctl" "$kernel_dir/vmlinux" "$payload/"
cp "$initramfs" "$payload/initramfs.cpio.gz"
echo "/x/vmmctl bench boot --runs $runs --kernel /x/vmlinux --initrd /x/initramfs.cpio.gz" >"$payload/bench.sh"
"$here/../testhost/run" "$payload" "$payload/bench.sh" | grep -E '^(backend|first-instruction|linux-init|vmm-rss|bench:|testhost: script)'
