#!/usr/bin/env bash
# Usage: resources/rootfs/build.sh OUTPUT.ext4 [SIZE_MIB]
#
# Builds an ext4 root filesystem image for booting the guest from virtio-blk
# (`--disk OUTPUT.ext4` and `root=/dev/vda rw init=/init` on the guest
# command line). Its contents are exactly the guest initramfs's (busybox and
# /init, from resources/initramfs/build.sh), so the same /init runs either
# way. Needs mkfs.ext4 with -d (e2fsprogs >= 1.43) and cpio; run as root so
# device nodes (/dev/console) can be unpacked. SIZE_MIB defaults to 64.
set -euo pipefail

out=${1:?usage: $0 OUTPUT.ext4 [SIZE_MIB]}
size_mib=${2:-64}
here=$(cd "$(dirname "$0")" && pwd)

for tool in mkfs.ext4 cpio; do
    command -v "$tool" >/dev/null || { echo "rootfs: $tool is missing (apt-get install e2fsprogs cpio)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/vmm-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$here/../initramfs/build.sh" "$work/initramfs.cpio.gz" >/dev/null
mkdir "$work/root"
(cd "$work/root" && gzip -dc "$work/initramfs.cpio.gz" | cpio -idm --quiet)
rm -f "$out"
mkfs.ext4 -q -F -L vmm-root -d "$work/root" "$out" "${size_mib}M" >&2
echo "rootfs: $out (${size_mib} MiB ext4, $(du -sk "$work/root" | cut -f1) KiB of files)" >&2
echo "$out"
