//! `cargo xtask`: Wattson's developer tasks. `lab` is the main job on one host, `setup` installs every prerequisite, `test` is the
//! one test command (CI runs exactly it), `vm-test` is the VM lab, `bench` prints the table of
//! side-by-side measurements.

mod bench;
mod cmd;
mod fleet_sim;
mod initramfs;
mod lab;
mod setup;
mod test;
mod view;
mod vm;

use clap::{Parser, Subcommand};

// The collector's allocator, so the in-process ingest bench measures what `wattson-collector`
// runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Wattson developer tasks.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// The main job: a one-host lab showing power by function, live (collector + agent + demo).
    Lab(lab::Args),
    /// Install every prerequisite (apt packages, rust-src, bpf-linker, VM kernels), idempotently.
    Setup(setup::Args),
    /// The one test command: setup, fmt, clippy, unit and integration tests, then the VM lab.
    Test(test::Args),
    /// Boot Debian kernels under QEMU (TCG) and run the in-VM kernel tests in each.
    VmTest(vm::Args),
    /// Stream a synthetic fleet (weeks of backfilled profiles, known regressions) through the
    /// real gRPC ingest path to a collector, and write its ground truth as JSON.
    FleetSim(fleet_sim::Args),
    /// Side-by-side measurements (agent overhead, ingest and query speed); prints a table.
    Bench(bench::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    wattson_proto::cli::exit(match cli.task {
        Task::Lab(args) => lab::run(&args),
        Task::Setup(args) => setup::run(&args),
        Task::Test(args) => test::run(&args),
        Task::VmTest(args) => vm::run(&args),
        Task::FleetSim(args) => fleet_sim::run(&args),
        Task::Bench(args) => bench::run(&args),
    })
}
