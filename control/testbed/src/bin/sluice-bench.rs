//! `sluice-bench`: the forwarding benchmark of `make bench` (Linux, `bpf_fib_lookup`, the ceiling
//! and Sluice on one veth chain; one route and a full table; IPv4 and IPv6) and route-change
//! latency.

use clap::Parser;
use sluice_testbed::bench;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Benchmark forwarding, Linux against Sluice on one veth chain, and route-add latency"
)]
struct Cli {
    #[command(flatten)]
    args: bench::BenchArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sluice_testbed::main_of("sluice-bench", || bench::run(&cli.args))
}
