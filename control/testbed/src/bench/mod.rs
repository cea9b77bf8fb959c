//! `sluice-bench`: the forwarding benchmark of the README. Several forwarders carry the same
//! traffic through the same veth chain in one run, with one route and with a full Internet table,
//! for IPv4 and IPv6, so that their ratios mean something even where absolute rates drift between
//! runs and machines.
//!
//! ```text
//!  gen ns                    router ns                                   sink ns
//!  sluice_gen --veth--> rtr_in [forwarder under test] rtr_out --veth--> sluice_sink
//! ```
//!
//! The forwarders, one after the other on the router:
//! - **linux**: the kernel's own forwarding (`ip_forward=1`, no XDP);
//! - **`fib_lookup`**: `sluice_fib_fwd`, the kernel's `xdp_fwd` sample: `bpf_fib_lookup` in the
//!   kernel's FIB, TTL decrement, MACs from the lookup, redirect through a devmap;
//! - **ceiling**: `sluice_ceiling`, which rewrites the MACs from a map and redirects through a
//!   devmap without looking at the packet: the best any XDP router can do on this chain;
//! - **`ceiling_read`**: `sluice_ceiling_read`, the ceiling after it reads the Ethernet type and the
//!   destination address, the least a router reads: the frame arrives cold, written on the
//!   generator's CPU, and this read waits for it where the ceiling's writes do not;
//! - **sluice**: the daemon (`sluice daemon`, the product's binary) with kernel forwarding off.
//!
//! The tables: **one route** (the default route via the sink) and a **full table**, a synthetic
//! copy of today's default-free zone ([`table`](crate::table): 1,000,000 IPv4 or 230,000 IPv6
//! prefixes by default, spread over a few sink-side next hops), put into the router's kernel over
//! rtnetlink.
//! Linux and `bpf_fib_lookup` read it there; the daemon mirrors it into its maps. Both tables are
//! measured with the same frames: destinations drawn at random from the full table's prefixes.
//! Each family's one-route cell runs first; the full tables come last, IPv6 before IPv4, so that
//! the large IPv4 table is installed once and never removed (the namespace takes it along).
//!
//! The generator is an XDP program run by `BPF_PROG_TEST_RUN` in live-frames mode from a thread
//! inside the gen namespace: each frame it writes is sent out of the gen-side veth. The sink, an
//! XDP program too, counts the generated frames per CPU and drops everything. The rate is frames
//! counted at the sink over the time the generator ran. The router gets permanent neighbours for
//! the sink-side next hops, so Linux never queues on resolution, and GRO on `rtr_in`, because
//! frames redirected into a veth are only taken when its peer runs NAPI (an XDP program or GRO).
//!
//! Everything runs to completion on the generator's CPU: each batch is received, forwarded and
//! sunk in the softirq work of the test run, so no frame is lost and the rate is the inverse of
//! the whole chain's cost per frame (generator and sink included, the same for every forwarder).
//! Moving the router's NAPI to a thread on the other CPU made the forwarders slower here, with
//! most frames dropped at the full veth ring. An XDP sink is also the cheapest one for Linux,
//! though veth copies each forwarded skb into a page to run XDP on it.
//!
//! Beside the rates: the frames per devmap flush of each XDP forwarder (counted at the
//! `xdp:xdp_devmap_xmit` tracepoint for the router's two veths, which get ifindexes no other
//! namespace is likely to use; the generator's own flushes there count the frames the router's
//! input ring had no room for), the time the daemon takes to carry the table into its maps when it
//! starts with the table already in the kernel and its resident memory then, the time to install
//! the table in the kernel, and the route-add latency: from `ip route add` in the router
//! namespace until the prefix is in the dataplane's route trie (and, with one route, until it
//! shows in `sluice routes --json`).
//!
//! And, steadier than rates on a shared machine, the time each XDP forwarder's program takes per
//! packet by the kernel's own accounting: after a forwarder's rate in the last round, while it is
//! still attached, BPF run-time statistics are turned on (`BPF_ENABLE_STATS`, off again when its
//! descriptor closes), a fixed number of frames is sent, and the added `run_time_ns` of the
//! program attached to `rtr_in` is divided by its added `run_cnt`. The statistics' own cost
//! (two clock reads per run) is part of the figure; `--no-program-time` skips it.
//!
//! Results: a table on stdout, everything as JSON (`--json`) and a bar chart as SVG (`--plot`,
//! by default beside the JSON).
//!
//! Where things are: `args` (the options), `matrix` (the run: cells, rounds, forwarders),
//! `topology` (namespaces, veths, address plan, CPUs), `programs` (the benchmark's XDP
//! programs: generator, sink, ceilings, `bpf_fib_lookup`, flush counter) and `frames` (the
//! generator's frames), `daemon` (the Sluice daemon under test), `latency` (route-add
//! latency, load lag), `program_time` (time per packet by BPF run-time statistics),
//! `measurement`, `report` (JSON and tables) and `plot` (SVG), `interrupt` (SIGINT and
//! SIGTERM).

mod args;
mod daemon;
mod frames;
mod interrupt;
mod latency;
mod matrix;
mod measurement;
mod plot;
mod program_time;
mod programs;
mod report;
mod steps;
mod topology;

pub use args::{BenchArgs, FamilyChoice, Forwarder, FrameSize, TableChoice, TableSizes};
pub use matrix::run;
