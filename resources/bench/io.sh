#!/usr/bin/env bash
# Usage: resources/bench/io.sh VMMCTL KERNEL_DIR INITRAMFS [SIZE_MIB]
#
# virtio throughput as ratios against the host, inside one nested test-host
# boot (absolute numbers are TCG numbers; the ratios are the result):
# - virtio-blk: a sequential write and read of SIZE_MIB (default 128) with dd
#   on the test host itself (a file on its tmpfs), then the same transfers by
#   the guest on /dev/vda backed by a file on that same tmpfs (O_DIRECT in the
#   guest so its page cache does not serve the reads);
# - virtio-vsock: SIZE_MIB echoed through hybrid vsock to an echo server in
#   the guest (vmmctl vsock-connect), against the same echo through a unix
#   socket to an echo server on the test host itself. MiB/s counts one
#   direction. Needs cc (static build of tests/guest-tools/*.c).
set -euo pipefail
vmmctl=$1 kernel_dir=$2 initramfs=$3 size=${4:-128}
here=$(cd "$(dirname "$0")" && pwd)
payload=$(mktemp -d /tmp/vmm-bench-io.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$vmmctl" "$kernel_dir/vmlinux" "$payload/"
repo=$(cd "$here/../.." && pwd)
cc -static -O2 -o "$payload/vsock-echo" "$repo/tests/guest-tools/vsock_echo.c"
cc -static -O2 -o "$payload/unix-echo" "$repo/tests/guest-tools/unix_echo.c"
"$here/../initramfs/build.sh" "$payload/initramfs.cpio.gz" --extra "$payload/vsock-echo:/bin/vsock-echo" >/dev/null
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
[ -n "\$guest_w" ] && [ -n "\$guest_r" ] || { echo "\$out" | tail -20 | sed 's/^/guest transfer failed: /'; exit 1; }
# vsock: baseline through a unix socket on this host, then through the VM.
/x/unix-echo /tmp/echo.sock 1 >/dev/null &
sleep 0.5
host_v=\$(mibps \$(elapsed /x/unix-echo connect /tmp/echo.sock $((size * 1048576))))
wait
timeout 300 /x/vmmctl run --kernel /x/vmlinux --initrd /x/initramfs.cpio.gz --memory 256 --vsock cid=3,uds=/tmp/v.sock \
  --cmdline "console=ttyS0 reboot=k panic=1 quiet -- /bin/vsock-echo 5000 2" </dev/null >/dev/null 2>&1 &
echo warmup | /x/vmmctl vsock-connect --uds /tmp/v.sock --port 5000 --wait 120 >/dev/null
head -c $((size * 1048576)) /dev/zero >/tmp/vsock.data
t0=\$(cut -d' ' -f1 /proc/uptime)
echoed=\$(/x/vmmctl vsock-connect --uds /tmp/v.sock --port 5000 --wait 30 </tmp/vsock.data 2>/tmp/vsock.err | wc -c)
t1=\$(cut -d' ' -f1 /proc/uptime)
wait
[ "\$echoed" = "$((size * 1048576))" ] || { echo "guest transfer failed: vsock echoed \$echoed of $((size * 1048576)) bytes: \$(cat /tmp/vsock.err)"; exit 1; }
guest_v=\$(mibps \$(echo "\$t0 \$t1" | awk '{ print \$2 - \$1 }'))
echo "vsock-echo-mibps host=\$host_v guest=\$guest_v ratio=\$(awk -v g="\$guest_v" -v h="\$host_v" 'BEGIN { if (h > 0) printf "%.3f", g / h }')"
SCRIPT
"$here/../testhost/run" "$payload" "$payload/bench.sh" | grep -E '^(blk-|vsock-|guest transfer|testhost: script)'
