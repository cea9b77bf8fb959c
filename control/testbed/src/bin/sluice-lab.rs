//! `sluice-lab`: the demo topology of `make lab`, in network namespaces on this machine, with
//! the router forwarding and the console up.

use clap::{Parser, Subcommand};
use sluice_testbed::lab;

#[derive(Debug, Parser)]
#[command(name = "sluice-lab", version, about = "A Sluice router lab in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the lab, start the daemon in it and show traffic crossing.
    Up(lab::LabOptions),
    /// Stop the lab's daemon and remove the lab.
    Down(lab::LabOptions),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sluice_testbed::main_of("sluice-lab", || match cli.command {
        Command::Up(opts) => lab::up(&opts),
        Command::Down(opts) => lab::down(&opts),
    })
}
