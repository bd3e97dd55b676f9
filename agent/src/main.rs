//! `wattson-agent`: the command-line edge of the agent library. Each subcommand keeps its
//! options (an `Args` struct) and its `run` in its own module; adding one is an enum variant
//! here plus a match arm.
use clap::{Parser, Subcommand};

mod doctor;
mod record;
mod run;

/// Wattson host agent: samples stacks with eBPF and attributes CPU energy to functions.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Record a one-shot profile of this host (or one process) to a file, like `perf record`.
    Record(record::RecordArgs),
    /// Check what this host supports (BPF, BTF, perf events, privileges, symbols, frame
    /// pointers) and say how to fix what is missing.
    Doctor(doctor::DoctorArgs),
    /// Run the daemon: sample every interval and ship energy-weighted profiles to a collector.
    Run(Box<run::RunArgs>),
}

fn main() -> std::process::ExitCode {
    wattson_proto::cli::exit(try_main())
}

fn try_main() -> anyhow::Result<()> {
    wattson_proto::cli::init_logging("info");
    let cli = Cli::parse();
    match &cli.command {
        Command::Record(args) => record::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Run(args) => run::run(args),
    }
}
