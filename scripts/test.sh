#!/usr/bin/env bash
# Runs every test tier in one build: unit tests (no privileges), packet tests through
# BPF_PROG_TEST_RUN, and namespace tests with real traffic. The privileged tiers need root and
# bpffs; with CI=true a privileged test that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# The same packages as the test run below: another set unifies features differently and builds
# everything twice.
packages=(-p sluice -p sluice-core -p sluice-dataplane -p sluice-testbed -p sluice-common -p sluice-store)
cargo build --release --locked "${packages[@]}" --all-targets
# The pure logic on its own: the stable toolchain, and neither the nightly nor bpf-linker on PATH.
nobpf=$(mktemp -d)
trap 'rm -rf "$nobpf"' EXIT
for tool in cargo rustc rustup; do ln -s "$(command -v $tool)" "$nobpf/$tool"; done
env PATH="$nobpf:/usr/bin:/bin" RUSTUP_TOOLCHAIN=stable cargo test --release --locked -q -p sluice-core
# The plugins the host's tests run (components for wasm32-wasip2).
(cd plugins && cargo build --release --locked --target wasm32-wasip2 --target-dir target)
if [ "$(id -u)" != 0 ]; then
  echo "test: not root: the packet and namespace tiers will report themselves as not run" >&2
fi
status=0
cargo nextest run --release --locked "${packages[@]}" --no-fail-fast \
  --test-threads "${SLUICE_TEST_THREADS:-2}" -E 'not binary_id(sluice::image)' "$@" || status=$?
# The appliance image, booted under qemu on its own: its emulated CPUs would take the cores the
# timing-sensitive namespace tests need. (Only for a whole run: arguments select tests.)
if [ $# -eq 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    bash vm-images/build.sh || status=$?
  fi
  # The same packages again: another set would unify features differently and build again.
  cargo nextest run --release --locked "${packages[@]}" -E 'binary_id(sluice::image)' || status=$?
fi
echo "test: all tiers done in $(( $(date +%s) - start )) s"
exit $status
