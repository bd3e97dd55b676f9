//! `wattson-collector`: the command-line edge of the collector library.
use clap::Parser;

/// Wattson collector: receives interval profiles from agents and answers queries.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
