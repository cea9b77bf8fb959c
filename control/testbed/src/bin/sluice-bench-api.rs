//! `sluice-bench-api`: the REST API's latency at a steady rate on `GET /api/v1/counters` (and
//! wrk's highest rate, if wrk is installed), against a daemon in a namespace of its own.

use clap::Parser;
use sluice_testbed::bench_api;

#[derive(Debug, Parser)]
#[command(name = "sluice-bench-api", version, about = "Benchmark the Sluice REST API")]
struct Cli {
    #[command(flatten)]
    args: bench_api::BenchApiArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sluice_testbed::main_of("sluice-bench-api", || bench_api::run(&cli.args).map(drop))
}
