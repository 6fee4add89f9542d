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
# Seconds a command takes, from /proc/uptime (centiseconds; transfers here take seconds).
elapsed() { t0=\$(cut -d' ' -f1 /proc/uptime); "\$@" >/dev/null 2>&1; t1=\$(cut -d' ' -f1 /proc/uptime); echo "\$t0 \$t1" | awk '{ print \$2 - \$1 }'; }
mibps() { awk -v m=$size -v s="\$1" 'BEGIN { if (s > 0) printf "%.1f", m / s }'; }
truncate -s ${size}M /tmp/disk.img
host_w=\$(mibps \$(elapsed dd if=/dev/zero of=/tmp/host.img bs=1M count=$size conv=fsync))
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
host_r=\$(mibps \$(elapsed dd if=/tmp/host.img of=/dev/null bs=1M))
rm -f /tmp/host.img
GUEST="t0=\\\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/dev/vda bs=1M count=$size oflag=direct 2>/dev/null; t1=\\\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null; t2=\\\$(cut -d' ' -f1 /proc/uptime); echo guest-times \\\$t0 \\\$t1 \\\$t2"
out=\$(timeout 300 /x/vmmctl run --kernel /x/vmlinux --initrd /x/initramfs.cpio.gz --memory 512 --disk /tmp/disk.img \
  --cmdline "console=ttyS0 reboot=k panic=1 quiet -- sh -c \\"\$GUEST\\"" </dev/null 2>&1)
times=\$(echo "\$out" | sed -n 's/^guest-times //p')
guest_w=\$(mibps \$(echo "\$times" | awk '{ print \$2 - \$1 }'))
guest_r=\$(mibps \$(echo "\$times" | awk '{ print \$3 - \$2 }'))
echo "blk-seq-write-mibps host=\$host_w guest=\$guest_w ratio=\$(awk -v g="\$guest_w" -v h="\$host_w" 'BEGIN { if (h > 0) printf "%.3f", g / h }')"
echo "blk-seq-read-mibps host=\$host_r guest=\$guest_r ratio=\$(awk -v g="\$guest_r" -v h="\$host_r" 'BEGIN { if (h > 0) printf "%.3f", g / h }')"
[ -n "\$guest_w" ] && [ -n "\$guest_r" ] || { echo "guest transfer failed:"; echo "\$out" | tail -20 | sed 's/^/guest transfer failed: /'; exit 1; }
SCRIPT
"$here/../testhost/run" "$payload" "$payload/bench.sh" | grep -E '^(blk-|guest transfer|testhost: script)'
