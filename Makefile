# Thin entry points; the work is in scripts/ and cargo.
SHELL := /bin/bash
.DEFAULT_GOAL := build
CARGO ?= cargo
SLUICE := target/release/sluice
# The lab and the benchmarks: binaries of the testbed crate, which the product does not ship.
TESTBED := target/release
# The nightly toolchain that builds the eBPF program, chosen by scripts/setup.sh: exported only
# when it is not plain `nightly`, so that builds from make and from cargo share their cache.
EBPF_TOOLCHAIN := $(shell cat target/.ebpf-toolchain 2>/dev/null)
ifneq ($(filter-out nightly,$(EBPF_TOOLCHAIN)),)
export SLUICE_EBPF_TOOLCHAIN = $(EBPF_TOOLCHAIN)
endif

.PHONY: setup build testbed test test-unit test-core lab lab-down bench bench-imix lint fmt clean plugins bench-plugins bench-api image image-test

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --locked -p sluice
	@echo "built $(SLUICE)"

# The testbed's binaries (sluice-lab, sluice-bench, sluice-bench-api, sluice-bench-plugins) and
# the sluice they start.
testbed: build
	$(CARGO) build --release --locked -p sluice-testbed --bins

# Every tier (unit, packet, namespace) in one build: tests run with the release profile, so the
# binary the namespace tests start is the one `make build` makes.
test: setup
	bash scripts/test.sh

# Unit tests only: no root needed.
test-unit:
	$(CARGO) test --release --locked --lib --bins -p sluice -p sluice-core -p sluice-dataplane -p sluice-common -p sluice-store -p sluice-testbed

# The pure logic alone: stable toolchain, no eBPF build, seconds.
test-core:
	$(CARGO) test --locked -p sluice-core

# The example and test plugins, as components for wasm32-wasip2 (plugins/target/wasm32-wasip2/release).
plugins: setup
	cd plugins && $(CARGO) build --release --locked --target wasm32-wasip2 --target-dir target

# The appliance image: vm-images/out/sluice.qcow2 and sluice.raw (Debian stable by mmdebstrap,
# its cloud kernel, sluice as a service). Needs root and the Debian mirror.
image: build
	bash vm-images/build.sh

# Boots the image under qemu (TCG) with two routed NICs in namespaces and checks that it routes
# with XDP, that the setup token works once and that the configuration survives an upgrade.
image-test: image
	$(CARGO) nextest run --release --locked -p sluice --test image

lab: testbed
	$(TESTBED)/sluice-lab up

lab-down:
	@if [ -x $(TESTBED)/sluice-lab ]; then $(TESTBED)/sluice-lab down; else echo "no lab binary built"; fi

# The forwarding matrix in one run: Linux, bpf_fib_lookup, the XDP ceiling (also as it is after
# reading the destination address) and Sluice; one route
# and a synthetic full table (1M IPv4, 230k IPv6 prefixes); IPv4 and IPv6. Writes the JSON and
# its bar chart. Pass options through BENCH_ARGS, e.g. BENCH_ARGS="--table-size 20000".
bench: testbed
	@mkdir -p artifacts
	$(TESTBED)/sluice-bench --json artifacts/bench.json --plot artifacts/bench.svg $(BENCH_ARGS)

# The same matrix with IMIX frames (7 x 64, 4 x 590, 1 x 1514 bytes), rates also in Gbit/s.
bench-imix: testbed
	@mkdir -p artifacts
	$(TESTBED)/sluice-bench --frame-size imix --json artifacts/bench-imix.json --plot artifacts/bench-imix.svg $(BENCH_ARGS)

# The REST API: latency of GET /api/v1/counters at 1,000 requests/s (BENCH_API_ARGS to change).
bench-api: testbed
	@mkdir -p artifacts
	$(TESTBED)/sluice-bench-api --json artifacts/bench-api.json $(BENCH_API_ARGS)

# The plugin host: compile, instantiate, event-to-tables latency.
bench-plugins: testbed plugins
	$(TESTBED)/sluice-bench-plugins

lint:
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check
	$(CARGO) clippy --release --locked -p sluice -p sluice-core -p sluice-dataplane -p sluice-common -p sluice-store -p sluice-testbed --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all

clean:
	$(CARGO) clean
