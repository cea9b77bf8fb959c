#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a Debian machine, and nothing that is already
# there: apt packages, the nightly toolchain with rust-src (the eBPF program is built with
# -Z build-std), bpf-linker against Debian's LLVM 22, cargo-nextest, and bpffs / tracefs mounts.
# Safe to run again and again; when everything is present it only checks.
set -euo pipefail

LLVM_VERSION=22
BPF_LINKER_VERSION=0.13.0
# The nightly whose LLVM matches bpf-linker's (LLVM 22): bitcode is only read by the same major.
NIGHTLY_PINNED=nightly-2026-05-19
APT_PACKAGES=(
  "llvm-${LLVM_VERSION}-dev" "libpolly-${LLVM_VERSION}-dev" libzstd-dev zlib1g-dev
  iproute2 ethtool iputils-ping bpftool tcpdump procps util-linux bird2 curl ca-certificates
  chromium traceroute
  # The appliance image (make image, make image-test).
  mmdebstrap qemu-system-x86 syslinux syslinux-common mtools dosfstools fdisk e2fsprogs faketime
)
# Node.js drives the console's browser tests (Playwright); any Node 18 or later will do.
command -v node >/dev/null && command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs packages and mounts bpffs)" >&2; exit 1; }; }

# 1. Debian packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Commands that a package above may have displaced (qemu-system-x86 replaces a qemu-utils of
# another release, taking qemu-img with it): installed again by package if missing.
for pair in qemu-img:qemu-utils; do
  command -v "${pair%%:*}" >/dev/null && continue
  need_root
  say "installing ${pair#*:} (for ${pair%%:*})"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null
done

# 2. Rust: stable (the image's default) and a nightly with LLVM 22 and rust-src.
command -v rustup >/dev/null || { echo "setup: rustup is required (https://rustup.rs)" >&2; exit 1; }
nightly_llvm() { rustup run "$1" rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'; }
EBPF_TOOLCHAIN=nightly
if [ "$(nightly_llvm nightly)" != "$LLVM_VERSION" ]; then
  EBPF_TOOLCHAIN=$NIGHTLY_PINNED
  if [ "$(nightly_llvm "$NIGHTLY_PINNED")" != "$LLVM_VERSION" ]; then
    say "installing $NIGHTLY_PINNED (LLVM $LLVM_VERSION, for the eBPF program)"
    rustup toolchain install "$NIGHTLY_PINNED" --profile minimal --component rust-src >/dev/null
  fi
fi
if ! rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to $EBPF_TOOLCHAIN"
  rustup component add rust-src --toolchain "$EBPF_TOOLCHAIN" >/dev/null
fi
mkdir -p target
echo "$EBPF_TOOLCHAIN" > target/.ebpf-toolchain
# Plugins are WebAssembly components, built with the default toolchain.
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$'; then
  say "adding the wasm32-wasip2 target (plugins)"
  rustup target add wasm32-wasip2 >/dev/null
fi

# 3. bpf-linker, built against Debian's LLVM.
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_VERSION (about a minute)"
  env LLVM_PREFIX=/usr/lib/llvm-$LLVM_VERSION "LLVM_SYS_${LLVM_VERSION}1_PREFIX=/usr/lib/llvm-$LLVM_VERSION" \
    cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked --no-default-features \
    --features "llvm-$LLVM_VERSION" --quiet
fi

# 4. cargo-nextest runs the test tiers.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
fi

# 5. bpffs for pinned maps and links; tracefs for drop reasons when debugging.
if [ "$(id -u)" = 0 ]; then
  mountpoint -q /sys/fs/bpf || { say "mounting bpffs on /sys/fs/bpf"; mount -t bpf bpf /sys/fs/bpf; }
  mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
# 6. Playwright for the console's browser tests (the browser is Debian's chromium).
CONSOLE_TESTS="$(cd "$(dirname "$0")/.." && pwd)/web-ui/tests"
if [ ! -d "$CONSOLE_TESTS/node_modules/playwright-core" ]; then
  say "installing playwright-core for the console tests (web-ui/tests)"
  npm ci --prefix "$CONSOLE_TESTS" --no-audit --no-fund --loglevel=error >/dev/null
fi
say "ready (eBPF toolchain: $EBPF_TOOLCHAIN)"
