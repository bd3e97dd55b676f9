//! `wattson-agent`: the command-line edge of the agent library. Each subcommand keeps its
//! options (an `Args` struct) and its `run` in its own module; adding one is an enum variant
//! here plus a match arm.
use clap::{Parser, Subcommand};

mod doctor;
mod record;
mod run;

/// Wattson host agent: samples stacks with eBPF and attributes CPU energy to functions.
#[derive(Parser, Debug)]
#[command(version, about)]
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

/// Errors print as one line with their causes (`a: b: c`), never as a backtrace: they are
/// meant for the operator, and a `RUST_BACKTRACE` left set in the environment would bury them.
fn main() -> std::process::ExitCode {
    match try_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match &cli.command {
        Command::Record(args) => record::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Run(args) => run::run(args),
    }
}
