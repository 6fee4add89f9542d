#!/usr/bin/env bash
# Usage: resources/guest-kernel/build.sh [--help]
#
# Builds the minimal x86_64 guest kernel (Linux 6.1 from Debian's
# linux-source-6.1 package): `make tinyconfig`, merge config.fragment
# (merge_config.sh -m + make olddefconfig), verify that every option of the
# fragment survived, then `make vmlinux bzImage`.
#
# The result is cached outside the repository:
#   ${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/guest-kernel/<key>/{vmlinux,bzImage,config}
# where <key> = sha256(config.fragment + this script + linux-source-6.1
# package version). A complete cache entry is reused as is (nothing is built).
# The cache directory is printed on stdout as the last line:
#   dir=$(resources/guest-kernel/build.sh) && ls "$dir/vmlinux"
# Progress goes to stderr; the full build log of a failed build is left at
# the path printed in the error message (it is removed by the next build).
#
# Environment:
#   VMM_CACHE_DIR      cache root (default /var/cache/vmm-sandbox)
#   VMM_KERNEL_JOBS    make -j value (default 3)
#
# When run as root, missing Debian build dependencies are installed with
# apt-get.
set -euo pipefail

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
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
fragment="$script_dir/config.fragment"
self="$script_dir/$(basename "${BASH_SOURCE[0]}")"
cache_root="${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/guest-kernel"
jobs="${VMM_KERNEL_JOBS:-3}"
src_pkg=linux-source-6.1
tarball=/usr/src/linux-source-6.1.tar.xz

[[ -f "$fragment" ]] || die "missing $fragment"

# --- build dependencies -----------------------------------------------------
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  if ((EUID != 0)); then
    die "missing Debian packages: ${missing[*]} (run as root or install them)"
  fi
  log "installing missing packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}
ensure_packages "$src_pkg" gcc make flex bison bc libelf-dev libssl-dev xz-utils binutils

[[ -f "$tarball" ]] || die "$tarball not found although $src_pkg is installed"
src_ver=$(dpkg-query -W -f='${Version}' "$src_pkg")

key=$({
  printf 'fragment\n'
  cat "$fragment"
  printf 'script\n'
  cat "$self"
  printf 'linux-source %s\n' "$src_ver"
} | sha256sum | cut -d' ' -f1)
out_dir="$cache_root/$key"

complete() { [[ -s "$1/vmlinux" && -s "$1/bzImage" && -s "$1/config" ]]; }

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

# Build trees kept by earlier failed builds are stale now that we hold the lock.
for stale in "$cache_root"/.build.*; do
  [[ -d "$stale" ]] || continue
  log "removing stale build tree $stale"
  rm -rf "$stale"
done
work=$(mktemp -d "$cache_root/.build.XXXXXX")
keep_work=0
cleanup() { ((keep_work)) || rm -rf "$work"; }
trap cleanup EXIT
build_log="$work/build.log"

fail_build() {
  keep_work=1
  log "ERROR: $1"
  log "last lines of $build_log:"
  tail -n 40 "$build_log" >&2 || true
  log "build tree kept in $work"
  exit 1
}

log "key $key ($src_pkg $src_ver)"
log "extracting $tarball"
mkdir -p "$work/src"
tar -xJf "$tarball" -C "$work/src" --strip-components=1
cd "$work/src"

export KBUILD_BUILD_USER=vmm-sandbox KBUILD_BUILD_HOST=vmm-sandbox
export KBUILD_BUILD_TIMESTAMP="linux-source $src_ver"
mk() { make ARCH=x86_64 "$@" >>"$build_log" 2>&1; }

log "configuring (tinyconfig + config.fragment)"
mk tinyconfig || fail_build "make tinyconfig failed"
scripts/kconfig/merge_config.sh -m .config "$fragment" >>"$build_log" 2>&1 ||
  fail_build "merge_config.sh failed"
mk olddefconfig || fail_build "make olddefconfig failed"

# --- verify: every option requested by the fragment survived -----------------
dropped=()
while IFS= read -r line; do
  if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    want="${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
    if ! grep -qxF -- "$want" .config; then
      got=$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" .config || true)
      dropped+=("$want (final: ${got:-absent})")
    fi
  elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    if got=$(grep -E "^${BASH_REMATCH[1]}=" .config); then
      dropped+=("${BASH_REMATCH[1]} should be unset (final: $got)")
    fi
  fi
done <"$fragment"
if ((${#dropped[@]} > 0)); then
  keep_work=1
  log "ERROR: ${#dropped[@]} option(s) of config.fragment did not survive olddefconfig:"
  printf '  %s\n' "${dropped[@]}" >&2
  log "check dependencies with: make ARCH=x86_64 menuconfig in $work/src"
  exit 1
fi
log "config verified: all fragment options present"

log "building vmlinux + bzImage with -j$jobs (about 5 minutes on 2 cores)"
start=$SECONDS
mk -j"$jobs" vmlinux bzImage || fail_build "kernel build failed"
log "built in $((SECONDS - start)) s"

if ! readelf -n vmlinux | grep -Eq 'Xen.*(0x00000012|PHYS32_ENTRY)'; then
  fail_build "vmlinux has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12)"
fi

mkdir "$work/out"
cp vmlinux "$work/out/vmlinux"
cp arch/x86/boot/bzImage "$work/out/bzImage"
cp .config "$work/out/config"
rm -rf "$out_dir" # an incomplete leftover, if any (we hold the lock)
mv -T "$work/out" "$out_dir"
log "done: vmlinux $(stat -c %s "$out_dir/vmlinux") bytes, bzImage $(stat -c %s "$out_dir/bzImage") bytes"
printf '%s\n' "$out_dir"
