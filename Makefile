# Top-level entry points. `make demo` boots a sandbox VM and shows it working;
# `make test` runs the whole test suite (what CI runs). Both install what
# they need on Debian 12 (as root).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CACHE ?= $(or $(VMM_CACHE_DIR),/var/cache/vmm-sandbox)
export VMM_CACHE_DIR := $(CACHE)
CARGO ?= cargo
VMMCTL := target/release/vmmctl
INITRAMFS := $(CACHE)/initramfs/initramfs.cpio.gz
# The guest agent, statically linked (no musl target here: glibc static-pie).
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_STATIC := target/$(AGENT_TARGET)/release/guest-agent
AGENT_IMAGE := $(CACHE)/initramfs/agent-initramfs.cpio.gz
DEBIAN_PACKAGES := build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils kmod \
	linux-source-6.1 busybox-static qemu-system-x86 device-tree-compiler e2fsprogs
# virtio-fs backend: virtiofsd from crates.io (pinned), built against these.
DEBIAN_PACKAGES += libseccomp-dev libcap-ng-dev
VIRTIOFSD_VERSION := 1.14.0

.PHONY: all deps build kernel initramfs agent-image demo test bench lint fmt clean-cache fuzz

all: build

## deps: install Debian packages and check the Rust toolchain
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing Debian packages:$$missing" >&2; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: run as root (or install:$$missing)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# Rust: use the machine's toolchain when it is new enough (1.85+, for youki's libcontainer); else
	@# Debian 12's current one (the *-web packages, Rust 1.9x, with clippy and rustfmt).
	@minor=$$($(CARGO) --version 2>/dev/null | sed -n 's/^cargo 1\.\([0-9]*\).*/\1/p'); \
	if [ -z "$$minor" ] || [ "$$minor" -lt 85 ]; then \
	  echo "make: installing Rust from Debian (cargo-web, rustc-web, rust-web-clippy, rustfmt-web)" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    cargo-web rustc-web rust-web-clippy rustfmt-web >/dev/null; \
	fi
	@$(CARGO) --version >&2
	@# virtiofsd for virtio-fs (vmmctl run --fs): cargo install, skipped when
	@# the pinned version is already in cargo's bin directory.
	@bin="$${CARGO_HOME:-$$HOME/.cargo}/bin/virtiofsd"; \
	if [ "$$("$$bin" --version 2>/dev/null)" != "virtiofsd $(VIRTIOFSD_VERSION)" ]; then \
	  echo "make: installing virtiofsd $(VIRTIOFSD_VERSION) (cargo install, a few minutes)" >&2; \
	  $(CARGO) install virtiofsd --version $(VIRTIOFSD_VERSION) --locked --force; \
	fi

## build: the workspace in release mode
build: deps
	$(CARGO) build --release --workspace

## kernel: the guest kernel (cached under $(CACHE)/guest-kernel/<key>)
kernel: deps
	@resources/guest-kernel/build.sh >/dev/null

## initramfs: the busybox guest initramfs
initramfs: deps
	@mkdir -p $(dir $(INITRAMFS))
	@resources/initramfs/build.sh $(INITRAMFS) >/dev/null

## agent-image: the static guest agent and the sandbox guest image (agent as /init + demo bundles)
agent-image: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p guest-agent --bin guest-agent --target $(AGENT_TARGET)
	@resources/initramfs/build-agent-image.sh $(AGENT_STATIC) $(AGENT_IMAGE) >/dev/null

## demo: boot a sandbox VM and run containers in it through the agent (directly when this host's KVM can, else in the nested test host)
demo: build kernel agent-image
	@resources/demo.sh "$(VMMCTL)" "$$(resources/guest-kernel/build.sh)" "$(AGENT_IMAGE)"

## bench: boot latency + VMM memory (direct KVM, and Linux in the nested test host), container create+start+wait latency, virtio-blk/vsock throughput ratios
bench: build kernel initramfs
	$(VMMCTL) bench boot --runs 50
	$(CARGO) bench -p guest-agent --bench container_latency
	@resources/bench/boot.sh "$(VMMCTL)" "$$(resources/guest-kernel/build.sh)" "$(INITRAMFS)"
	@resources/bench/io.sh "$(VMMCTL)" "$$(resources/guest-kernel/build.sh)" "$(INITRAMFS)"

## lint: formatting and clippy, warnings are errors
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: everything (unit, direct-KVM synthetic guests, bad input, nested test host)
test: deps kernel lint agent-image
	@mkdir -p target
	$(CARGO) test --release --workspace -- --test-threads=2 --nocapture 2>&1 | tee target/test.log
	$(CARGO) test --manifest-path fuzz/Cargo.toml 2>&1 | tee -a target/test.log
	@# Bounded, reproducible fuzzing of the virtio parsers (fixed seed and run count).
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	FUZZ_RUNS=$(FUZZ_CI_RUNS) CARGO="$(CARGO)" fuzz/run.sh 0 $(FUZZ_TARGETS) 2>&1 | tee -a target/test.log
	@grep '^SKIPPED ' target/test.log | sort -u >&2 || true
	@# One closing line for the whole run. A test that printed SKIPPED returned
	@# early without checking anything: it is counted as skipped, not passed.
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$i ~ /^passed/) p += $$(i-1); if ($$i ~ /^failed/) f += $$(i-1) } } \
	     /^SKIPPED / { if (!seen[$$2]++) k++ } \
	     END { printf "tests: %d passed, %d failed, %d skipped\n", p - k, f, k }' target/test.log

## fuzz: every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each from the saved corpus; fails on a crash
FUZZ_SECONDS ?= 60
FUZZ_CI_RUNS ?= 100000
FUZZ_TARGETS ?= block block_request vsock vsock_packet
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@CARGO="$(CARGO)" fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)
