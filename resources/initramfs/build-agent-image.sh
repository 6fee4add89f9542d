#!/usr/bin/env bash
# Usage: resources/initramfs/build-agent-image.sh AGENT [OUTPUT.cpio.gz]
#
# Builds the sandbox guest image: the statically linked guest agent AGENT as
# /init (resources/initramfs/build.sh --agent), plus three OCI bundles made
# from the busybox bundle of resources/bundle/build.sh, for the demo and the
# in-VM tests (paths as the agent sees them):
#   /bundles/hello    prints a greeting, the hostname and the kernel, exits 0
#   /bundles/sleeper  `sleep 600` with a 64 MiB memory and 32 pids limit
#                     (for exec, stats, pause/resume, kill)
#   /bundles/shell    `sh`, reading its commands from stdin
# Build the agent first (see docs/agent.md; `make agent-image` does both):
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
#     -p guest-agent --target x86_64-unknown-linux-gnu
#
# OUTPUT defaults to
# ${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/initramfs/agent-initramfs.cpio.gz;
# its path is printed on stdout as the last line.
set -euo pipefail

log() { printf 'agent-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${1:-}" in
  -h | --help | "")
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    [[ -n "${1:-}" ]] || exit 2
    exit 0
    ;;
esac
agent=$1
output=${2:-${VMM_CACHE_DIR:-/var/cache/vmm-sandbox}/initramfs/agent-initramfs.cpio.gz}
(($# <= 2)) || die "too many arguments (see --help)"
[[ -x "$agent" ]] || die "agent binary $agent missing: build it first (see --help)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle=$("$here/../bundle/build.sh" | tail -n 1)
[[ -f "$bundle/config.json" && -d "$bundle/rootfs" ]] || die "no bundle at '$bundle'"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# make_bundle NAME ARGS_JSON [RESOURCES_JSON]: the busybox bundle with another
# process command line (and cgroup limits).
make_bundle() {
  local name=$1 args=$2 resources=${3:-}
  local dir="$work/bundles/$name"
  mkdir -p "$dir"
  cp -a "$bundle/rootfs" "$dir/rootfs"
  sed -e "s|\"args\": \\[\"sh\"\\]|\"args\": $args|" "$bundle/config.json" >"$dir/config.json"
  grep -qF "\"args\": $args" "$dir/config.json" ||
    die "bundle $name: could not set the process args in config.json"
  if [[ -n "$resources" ]]; then
    # Replace the whole "resources" object (one line per key in build.sh's output).
    awk -v repl="\"resources\": $resources," '
      /"resources": \{/ { print repl; skip = 1; depth = 0 }
      skip { n = gsub(/\{/, "{"); m = gsub(/\}/, "}"); depth += n - m; if (depth <= 0) { skip = 0 }; next }
      { print }
    ' "$dir/config.json" >"$dir/config.json.new"
    mv "$dir/config.json.new" "$dir/config.json"
    grep -qF "$resources" "$dir/config.json" || die "bundle $name: could not set the resources"
  fi
}

make_bundle hello '["sh", "-c", "echo Hello from a container in the sandbox VM; echo hostname: $(hostname); echo kernel: $(uname -sr); echo pid in container: $$"]'
make_bundle sleeper '["sleep", "600"]' '{ "memory": { "limit": 67108864 }, "pids": { "limit": 32 } }'
make_bundle shell '["sh"]'

"$here/build.sh" "$output" --agent "$agent" --extra "$work/bundles:/bundles" | tail -n 1
