#!/usr/bin/env bash
# Bounded fuzzing run (what `make fuzz` does): builds every cargo-fuzz
# target, then runs each given target for SECONDS from its saved corpus
# (fuzz/corpus/<target>, read-only; new inputs go to the scratch corpus
# fuzz/target/corpus/<target>). Prints one line per target:
#   fuzz <target>: N runs, no crash in S s
# and fails if any target crashed (reproducer under fuzz/artifacts/<target>/)
# or did not run.
#
# Usage: fuzz/run.sh SECONDS TARGET...
# With FUZZ_RUNS=N in the environment each target instead runs exactly N
# inputs from a fixed seed (FUZZ_SEED, default 1) and a fresh scratch
# corpus, so the run is reproducible: what `make test` (CI) uses, so that a
# CI run explores exactly what the same command explored on a developer's
# machine.
# Needs cargo-fuzz and a C++ compiler (libfuzzer-sys builds libFuzzer). On
# a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc take the -Z flags
# cargo-fuzz passes (-Zsanitizer=address, sanitizer coverage).
set -uo pipefail

if [ $# -lt 2 ]; then
	echo "usage: $0 SECONDS TARGET..." >&2
	exit 2
fi
seconds=$1
shift
cargo=${CARGO:-cargo}
cd "$(dirname "$0")/.." || exit 1
export RUSTC_BOOTSTRAP=1

if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null; then
	echo "fuzz: no C++ compiler (install build-essential)" >&2
	exit 1
fi

build_start=$(date +%s)
if ! "$cargo" fuzz build; then
	echo "fuzz: build failed" >&2
	exit 1
fi
echo "fuzz: built in $(($(date +%s) - build_start)) s"

failed=()
for target in "$@"; do
	if [ ! -d "fuzz/corpus/$target" ]; then
		echo "fuzz $target: no saved corpus fuzz/corpus/$target" >&2
		failed+=("$target")
		continue
	fi
	log="fuzz/target/fuzz-$target.log"
	if [ -n "${FUZZ_RUNS:-}" ]; then
		work="fuzz/target/corpus-reproducible/$target"
		rm -rf "$work"
		bound=(-runs="$FUZZ_RUNS" -seed="${FUZZ_SEED:-1}")
	else
		work="fuzz/target/corpus/$target"
		bound=(-max_total_time="$seconds")
	fi
	mkdir -p "$work"
	# -timeout: one input running 10 s is a hang (a finding); the outer
	# timeout only guards against libFuzzer itself never stopping.
	timeout $((seconds + 600)) "$cargo" fuzz run "$target" "$work" "fuzz/corpus/$target" -- \
		"${bound[@]}" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 >"$log" 2>&1
	rc=$?
	done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)
	runs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/' <<<"$done_line")
	secs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/' <<<"$done_line")
	seeds=$(sed -nE 's/^INFO: seed corpus: files: ([0-9]+).*/\1/p' "$log" | head -n 1)
	if [ "$rc" -ne 0 ]; then
		echo "fuzz $target: FAILED (exit $rc), log $log:" >&2
		grep -E 'panicked at|ERROR: |SUMMARY: |Test unit written to|Failing input' -A2 "$log" | head -n 40 >&2
		ls fuzz/artifacts/"$target"/ 2>/dev/null | sed 's|^|  artifact: fuzz/artifacts/'"$target"'/|' >&2
		failed+=("$target")
	elif [ -z "$runs" ] || [ "$runs" -eq 0 ] || [ -z "$seeds" ] || [ "$seeds" -eq 0 ]; then
		echo "fuzz $target: FAILED: no runs, or the saved corpus was not loaded (log $log)" >&2
		tail -n 20 "$log" >&2
		failed+=("$target")
	else
		echo "fuzz $target: $runs runs, no crash in $secs s"
	fi
done

if [ ${#failed[@]} -ne 0 ]; then
	echo "fuzz: failed: ${failed[*]}" >&2
	exit 1
fi
