#!/usr/bin/env bash
# Usage: resources/bench/io.sh VMMCTL KERNEL_DIR INITRAMFS [SIZE_MIB]
#
# virtio-blk throughput as a ratio against the host: inside one nested
# test-host boot, a sequential write and read of SIZE_MIB (default 128) with
# dd on the test host itself (a file on its tmpfs), then the same transfers
# by the guest on /dev/vdb backed by a file on that same tmpfs (O_DIRECT in
# the guest so its page cache does not serve the reads). Absolute numbers
# are TCG numbers; the ratios are the result.
set -euo pipefail
vmmctl=$1 kernel_dir=$2 initramfs=$3 size=${4:-128}
here=$(cd "$(dirname "$0")" && pwd)
payload=$(mktemp -d /tmp/vmm-bench-io.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$vmmctl" "$kernel_dir/vmlinux" "$payload/"
cp "$initramfs" "$payload/initramfs.cpio.gz"
cat >"$payload/bench.sh" <<SCRIPT
set -u
mibps() { sed -n 's/.* copied, \([0-9.]*\) seconds.*/\1/p' | awk -v m=$size '{ if (\$1 > 0) printf "%.1f", m / \$1 }'; }
truncate -s ${size}M /tmp/disk.img
host_w=\$(dd if=/dev/zero of=/tmp/host.img bs=1M count=$size conv=fsync 2>&1 | mibps)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
host_r=\$(dd if=/tmp/host.img of=/dev/null bs=1M 2>&1 | mibps)
rm -f /tmp/host.img
out=\$(timeout 300 /x/vmmctl run --kernel /x/vmlinux --initrd /x/initramfs.cpio.gz --memory 512 --disk /tmp/disk.img \
  --cmdline "console=ttyS0 reboot=k panic=1 quiet -- sh -c \\"dd if=/dev/zero of=/dev/vda bs=1M count=$size oflag=direct 2>&1 | sed s/^/guest-write:/; dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>&1 | sed s/^/guest-read:/\\"" </dev/null 2>&1)
guest_w=\$(echo "\$out" | grep '^guest-write:' | mibps)
guest_r=\$(echo "\$out" | grep '^guest-read:' | mibps)
echo "blk-seq-write-mibps host=\$host_w guest=\$guest_w ratio=\$(awk -v g=\$guest_w -v h=\$host_w 'BEGIN { if (h > 0) printf "%.3f", g / h }')"
echo "blk-seq-read-mibps host=\$host_r guest=\$guest_r ratio=\$(awk -v g=\$guest_r -v h=\$host_r 'BEGIN { if (h > 0) printf "%.3f", g / h }')"
[ -n "\$guest_w" ] && [ -n "\$guest_r" ] || { echo "guest transfer failed:"; echo "\$out" | tail -20; exit 1; }
SCRIPT
"$here/../testhost/run" "$payload" "$payload/bench.sh" | grep -E '^(blk-|guest transfer|testhost: script)'
