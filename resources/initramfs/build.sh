#!/usr/bin/env bash
# Usage: resources/initramfs/build.sh [OUTPUT.cpio.gz] [--agent PATH] [--extra SRC:DEST ...]
#
# Builds the guest initramfs: Debian's busybox-static as /bin/busybox with a
# symlink for every applet, /dev/console, the standard directories, and
# resources/initramfs/init as /init. The init mounts proc/sys/dev, writes the
# boot-timer byte (devmem 0xc0000000 8 123), prints
#   vmm-guest: init reached
#   vmm-guest: cpus=<N>
# runs the command given after `--` on the kernel command line (printing
# `vmm-guest: command exit=<status>`), then runs `poweroff -f`.
#
# --agent PATH makes the sandbox image instead: the statically linked
# guest agent at PATH becomes /init (/sbin/guest-agent links to it); busybox stays for
# debugging and `exec`. The agent mounts the filesystems itself, writes the
# boot-timer byte and serves the Task API on vsock port 1024.
#
# OUTPUT defaults to ${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/initramfs/initramfs.cpio.gz
# (agent-initramfs.cpio.gz with --agent).
# --extra SRC:DEST (repeatable) adds a file or a directory tree SRC at the
# absolute path DEST inside the image (modes kept; a later entry replaces an
# earlier one, so --extra my-init:/init overrides the init).
# The archive is deterministic (uid 0, mtime ${SOURCE_DATE_EPOCH:-0}, sorted,
# gzip -n) and written atomically. The output path is printed on stdout.
#
# When run as root, a missing busybox-static package is installed with apt-get.
set -euo pipefail

log() { printf 'initramfs: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/cpio.sh
source "$script_dir/../lib/cpio.sh"

output=
agent=
extras=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --extra)
      (($# >= 2)) || die "--extra needs SRC:DEST"
      extras+=("$2")
      shift 2
      ;;
    --extra=*) extras+=("${1#--extra=}"); shift ;;
    --agent)
      (($# >= 2)) || die "--agent needs PATH"
      agent=$2
      shift 2
      ;;
    --agent=*) agent=${1#--agent=}; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ -z "$output" ]] || die "more than one OUTPUT given"
      output=$1
      shift
      ;;
  esac
done
default_name=initramfs.cpio.gz
[[ -z "$agent" ]] || default_name=agent-initramfs.cpio.gz
output=${output:-${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/initramfs/$default_name}

if [[ -n "$agent" ]]; then
  [[ -f "$agent" && -x "$agent" ]] || die "--agent $agent: not an executable file"
  # A static-pie binary has no program interpreter (ldd would call it
  # "statically linked" and still succeed, so ask the ELF headers).
  if LC_ALL=C readelf -l "$agent" 2>/dev/null | grep -q 'program interpreter'; then
    die "--agent $agent is dynamically linked; build it statically (see docs/agent.md)"
  fi
fi

for e in "${extras[@]}"; do
  [[ "$e" == *:/* ]] || die "--extra '$e': expected SRC:/absolute/dest"
  [[ -e "${e%:/*}" ]] || die "--extra '$e': ${e%:/*} does not exist"
done

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

mkdir -p "$(dirname "$output")"
tmp=$(mktemp "$output.tmp.XXXXXX")
trap 'rm -f "$tmp" "$tmp.cpio"' EXIT

cpio_begin "$tmp.cpio"
for d in bin sbin usr/bin usr/sbin etc proc sys dev run root mnt var; do
  cpio_dir "/$d" 755
done
cpio_dir /tmp 1777
cpio_chardev /dev/console 600 5 1
cpio_chardev /dev/null 666 1 3
cpio_file /bin/busybox 755 "$busybox"
applets=0
while IFS= read -r path; do
  [[ "$path" == bin/busybox ]] && continue
  cpio_symlink "/$path" /bin/busybox
  applets=$((applets + 1))
done < <("$busybox" --list-full | LC_ALL=C sort)
if [[ -n "$agent" ]]; then
  cpio_file /init 755 "$agent"
  cpio_symlink /sbin/guest-agent /init
else
  cpio_file /init 755 "$script_dir/init"
fi
for e in "${extras[@]}"; do
  src=${e%:/*}
  dest=/${e##*:/}
  if [[ -d "$src" ]]; then
    cpio_tree "$src" "$dest"
  else
    cpio_file "$dest" "$(stat -L -c %a -- "$src")" "$src"
  fi
  log "added $src -> $dest"
done
cpio_end

gzip -n -6 -c "$tmp.cpio" >"$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$output"
log "wrote $output ($(stat -c %s "$output") bytes, busybox with $applets applets)"
printf '%s\n' "$output"
