//! Command-line interface: `fit`, `demo`, `ingest`, `inspect`, `merge`, `solve`, `serve`,
//! `push`, `sync` and `bench`.

mod bench;
mod classes;
mod demo;
mod fit;
mod head;
mod serve;
mod solve;
mod state;
mod stream;

use clap::{Parser, Subcommand};

/// Least-squares heads for new classes, computed from a stream of labelled features.
#[derive(Parser)]
#[command(name = "headstart", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
enum Command {
    /// Solve a head from .npy features and labels and write it as safetensors.
    Fit(fit::FitArgs),
    /// Class-incremental demo on the bundled UCI digits: LS rows against random rows.
    Demo(demo::DemoArgs),
    /// Add .npy features to a state file (created if missing).
    Ingest(state::IngestArgs),
    /// Summarise a state file.
    Inspect(state::InspectArgs),
    /// Add state files up into one (exact).
    Merge(state::MergeArgs),
    /// Solve a head from a state file or a running server and write it as safetensors.
    Solve(solve::SolveArgs),
    /// Serve a state over TCP or a Unix socket (docs/protocol.md).
    Serve(serve::ServeArgs),
    /// Send .npy features to a server; exits 0 once every batch is acknowledged.
    Push(serve::PushArgs),
    /// Make every batch a server has acknowledged durable in its state file.
    Sync(serve::SyncArgs),
    /// Update throughput through the pipeline on seeded random batches (or, with --solve,
    /// factor + solve latency).
    Bench(bench::BenchArgs),
}

/// Runs the CLI and returns the process exit code. Errors print as one line on stderr.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fit(args) => fit::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Ingest(args) => state::ingest(args),
        Command::Inspect(args) => state::inspect(args),
        Command::Merge(args) => state::merge(args),
        Command::Solve(args) => solve::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Push(args) => serve::push(args),
        Command::Sync(args) => serve::sync(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
