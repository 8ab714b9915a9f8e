//! Command-line interface: `fit`, `demo`, `ingest`, `inspect`, `merge`, `solve`, `serve`,
//! `push`, `sync`, `certs` and `bench`.

/// `println!` that returns an error instead of panicking: `outln!("…")?`. A closed stdout
/// (`… | head -1`) surfaces as [`StdoutClosed`], which [`main`] turns into a quiet exit 0.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that returns an error instead of panicking; see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod bench;
mod classes;
mod demo;
mod fit;
mod head;
mod secure;
mod serve;
mod solve;
mod state;
mod stream;

use std::io::Write;

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
    /// Solve a head from features and labels (.npy, Parquet, safetensors) and write it as safetensors.
    Fit(fit::FitArgs),
    /// Class-incremental demo on the bundled UCI digits: LS rows against random rows.
    Demo(demo::DemoArgs),
    /// Add features (.npy, Parquet, safetensors) to a state file (created if missing).
    Ingest(state::IngestArgs),
    /// Summarise a state file.
    Inspect(state::InspectArgs),
    /// Add state files up into one (exact).
    Merge(state::MergeArgs),
    /// Multiply a state file's statistics by a forgetting factor (older samples fade).
    Decay(state::DecayArgs),
    /// Solve a head from a state file or a running server and write it as safetensors.
    Solve(solve::SolveArgs),
    /// Serve a state over TCP or a Unix socket (docs/protocol.md).
    Serve(serve::ServeArgs),
    /// Send features (.npy, Parquet, safetensors) to a server; exits 0 once every batch is acknowledged.
    Push(serve::PushArgs),
    /// Make every batch a server has acknowledged durable in its state file.
    Sync(serve::SyncArgs),
    /// Make a private CA and a server certificate for `serve --tls-cert` (clients: --tls-ca).
    Certs(secure::CertsArgs),
    /// Update throughput through the pipeline on seeded random batches (or, with --solve,
    /// factor + solve latency).
    Bench(bench::BenchArgs),
}

/// Runs the CLI and returns the process exit code. Errors print as one line on stderr.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // The Parquet reader turns a panic of the parquet crate's decoder into an error naming
    // the file; the default hook would print it as a crash first.
    headstart::ingest::parquet::quiet_decoder_panics();
    // Past a file-size limit (RLIMIT_FSIZE) a write should fail with EFBIG, which names the
    // file and leaves the old one in place, instead of SIGXFSZ killing the process.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let result = match cli.command {
        Command::Fit(args) => fit::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Ingest(args) => state::ingest(args),
        Command::Inspect(args) => state::inspect(args),
        Command::Merge(args) => state::merge(args),
        Command::Decay(args) => state::decay(args),
        Command::Solve(args) => solve::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Push(args) => serve::push(args),
        Command::Sync(args) => serve::sync(args),
        Command::Certs(args) => secure::certs(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => 0,
        // The reader went away (`headstart inspect S.hs | head -1`): stop quietly. Every
        // command writes its output file before its summary, so that file is complete.
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", error_text(&e));
            1
        }
    }
}

/// The error and its causes on one line, each message once: a cause whose text the message
/// already holds (`path: {source}` errors that also return the source) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Fails fast, before any long work, when `path` (given as `option`) cannot be written: its
/// folder is missing or not a folder, it is itself a folder, or the folder refuses new files.
pub fn check_output(option: &str, path: &std::path::Path) -> anyhow::Result<()> {
    headstart::atomic::check_writable(path).map_err(|e| anyhow::anyhow!("{option} {}: {e}", path.display()))
}

/// `1 state`, `2 states`.
pub fn plural(count: impl Into<u64>, one: &str, many: &str) -> String {
    let count = count.into();
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Standard output was closed by its reader.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to standard output; a closed pipe is [`StdoutClosed`], any other failure an error
/// that says it was standard output.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("writing to standard output")
        }
    })
}
