//! `sluice-bench-plugins`: the plugin host's costs (compile, instantiate, `init`, events to
//! applied table operations; events to the hook maps through the plugin pool, with 1 and 4
//! plugins, one of them slow) with the components `make plugins` builds.

use std::path::PathBuf;

use clap::Parser;
use sluice_testbed::bench_plugins;

#[derive(Debug, Parser)]
#[command(name = "sluice-bench-plugins", version, about = "Benchmark the Sluice plugin host")]
struct Cli {
    /// Where `make plugins` put the components.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release")]
    dir: PathBuf,
    /// Rounds of each measurement.
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
    /// Batches handed out to each configuration of the plugin pool (1 plugin, 4, 4 with a slow
    /// one), one every 10 ms.
    #[arg(long, default_value_t = 1000)]
    pool_rounds: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sluice_testbed::main_of("sluice-bench-plugins", || {
        let r = bench_plugins::bench(&cli.dir, cli.rounds.max(1), cli.pool_rounds.max(1))?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!("{r}");
        }
        Ok(())
    })
}
