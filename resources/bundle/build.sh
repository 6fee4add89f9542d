#!/usr/bin/env bash
# Usage: resources/bundle/build.sh [--help]
#
# Builds a busybox OCI bundle for the guest agent's tests and the demo:
#   <dir>/rootfs/       Debian's busybox-static as /bin/busybox with a symlink
#                       for every applet, /etc/{passwd,group,hostname}
#                       (root and nobody), empty /proc /sys /dev /tmp /run
#                       /root /home mount points
#   <dir>/config.json   an OCI runtime-spec 1.0.2 config: `sh` as the
#                       process, mounts proc, /dev (tmpfs), devpts, /dev/shm,
#                       /dev/mqueue and sysfs, pid/mount/uts/ipc/network
#                       namespaces, a read-only root and example cgroup
#                       resources (memory 256 MiB, cpu 50 %, 128 pids)
#
# The result is cached outside the repository:
#   ${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/bundle/<key>/
# where <key> = sha256(this script + busybox-static package version). A
# complete cache entry is reused as is. The bundle directory is printed on
# stdout as the last line:
#   dir=$(resources/bundle/build.sh) && ls "$dir/rootfs/bin/sh"
# Treat the cached bundle as read-only: copy rootfs/ into a bundle directory
# of your own (cp -a) and write your own config.json next to it.
#
# When run as root, a missing busybox-static package is installed with apt-get.
set -euo pipefail

log() { printf 'bundle: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *) die "unexpected argument '$1' (see --help)" ;;
esac

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$script_dir/$(basename "${BASH_SOURCE[0]}")"
cache_root="${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/bundle"
busybox=/bin/busybox

if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  ((EUID == 0)) || die "Debian package busybox-static is not installed (run as root or install it)"
  log "installing busybox-static"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static >&2; }
fi
[[ -x "$busybox" ]] || die "$busybox missing"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked; the static one (busybox-static) is needed"
fi
bb_ver=$(dpkg-query -W -f='${Version}' busybox-static)

key=$({
  printf 'script\n'
  cat "$self"
  printf 'busybox-static %s\n' "$bb_ver"
} | sha256sum | cut -d' ' -f1)
out_dir="$cache_root/$key"

complete() { [[ -x "$1/rootfs/bin/busybox" && -L "$1/rootfs/bin/sh" && -s "$1/config.json" ]]; }

if complete "$out_dir"; then
  log "cached: $out_dir"
  printf '%s\n' "$out_dir"
  exit 0
fi

mkdir -p "$cache_root"
# Serialize concurrent builds of the same cache.
exec 9>"$cache_root/.lock"
flock 9
if complete "$out_dir"; then
  log "cached (built concurrently): $out_dir"
  printf '%s\n' "$out_dir"
  exit 0
fi
for stale in "$cache_root"/.build.*; do
  [[ -d "$stale" ]] || continue
  log "removing stale build tree $stale"
  rm -rf "$stale"
done
work=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "key $key (busybox-static $bb_ver)"
root="$work/out/rootfs"
mkdir -p "$root"
for d in bin sbin usr/bin usr/sbin etc proc sys dev run root home var mnt; do
  install -d -m 755 "$root/$d"
done
install -d -m 1777 "$root/tmp"
install -m 755 "$busybox" "$root/bin/busybox"
applets=0
while IFS= read -r path; do
  [[ "$path" == bin/busybox ]] && continue
  [[ -e "$root/$path" || -L "$root/$path" ]] && continue
  # Relative links keep the rootfs valid wherever it is copied or mounted.
  rel=$(realpath -m -s --relative-to="$(dirname "/$path")" /bin/busybox)
  ln -s "$rel" "$root/$path"
  applets=$((applets + 1))
done < <("$busybox" --list-full | LC_ALL=C sort)
[[ -L "$root/bin/sh" ]] || die "busybox has no sh applet"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf 'busybox\n' >"$root/etc/hostname"
chmod 644 "$root/etc/passwd" "$root/etc/group" "$root/etc/hostname"
chmod 700 "$root/root"

cat >"$work/out/config.json" <<'EOF'
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": { "uid": 0, "gid": 0 },
    "args": ["sh"],
    "env": [
      "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
      "HOME=/root",
      "TERM=xterm"
    ],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
      "effective": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
      "permitted": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
    },
    "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
    "noNewPrivileges": true
  },
  "root": { "path": "rootfs", "readonly": true },
  "hostname": "busybox",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
    { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
    { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
    { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }
  ],
  "linux": {
    "resources": {
      "devices": [{ "allow": false, "access": "rwm" }],
      "memory": { "limit": 268435456 },
      "cpu": { "quota": 50000, "period": 100000 },
      "pids": { "limit": 128 }
    },
    "namespaces": [
      { "type": "pid" },
      { "type": "network" },
      { "type": "ipc" },
      { "type": "uts" },
      { "type": "mount" }
    ],
    "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
    "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
chmod 644 "$work/out/config.json"
if command -v python3 >/dev/null; then
  python3 -m json.tool "$work/out/config.json" >/dev/null || die "generated config.json is not valid JSON"
fi

rm -rf "$out_dir" # an incomplete leftover, if any (we hold the lock)
mv -T "$work/out" "$out_dir"
log "done: $out_dir (busybox with $applets applets, $(du -sk "$out_dir" | cut -f1) KiB)"
printf '%s\n' "$out_dir"
