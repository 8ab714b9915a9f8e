//! Command-line interface: `headstart fit`, `headstart demo` and `headstart bench`.

mod bench;
mod classes;
mod demo;
mod fit;
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
