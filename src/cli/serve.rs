//! `headstart serve`, and the clients `push` and `sync`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use headstart::ingest::npy::Scalar;
use headstart::net::protocol::{Dtype, Limits};
use headstart::net::{Address, Client, Server, ServerConfig};
use headstart::snapshot;
use headstart::stats::{Batch, Stats};

use super::stream::{open_pair, progress_bar};

#[derive(Args)]
pub struct ServeArgs {
    /// HOST:PORT (port 0 picks one) or unix:PATH.
    #[arg(long)]
    listen: String,
    /// The state file: loaded if it exists, replaced atomically at every checkpoint.
    #[arg(long)]
    state: PathBuf,
    /// Feature dimension of a new state (required when --state does not exist yet).
    #[arg(long)]
    dim: Option<usize>,
    /// Checkpoint this often (seconds) when the state changed; SYNC and SIGTERM always do.
    #[arg(long)]
    checkpoint_every: Option<f64>,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Largest batch accepted, in rows.
    #[arg(long, default_value_t = Limits::default().max_rows)]
    max_rows: usize,
    /// Close a connection silent for this many seconds.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Threads computing each batch's product (0: every available core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Do not log checkpoints and closed connections.
    #[arg(long)]
    quiet: bool,
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{name} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let address: Address = args
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    let mut state = if args.state.exists() {
        let s = snapshot::read(&args.state)?;
        if let Some(d) = args.dim.filter(|&d| d != s.dim()) {
            bail!("--dim {d} but {} has dimension {}", args.state.display(), s.dim());
        }
        s
    } else {
        match args.dim {
            Some(0) => bail!("--dim must be at least 1"),
            Some(d) if d > headstart::stats::MAX_DIM => {
                bail!(
                    "--dim {d} exceeds the largest supported dimension, {}",
                    headstart::stats::MAX_DIM
                )
            }
            Some(d) => Stats::new(d),
            None => bail!(
                "{} does not exist; pass --dim to start an empty state",
                args.state.display()
            ),
        }
    };
    state.set_threads(args.threads);
    let mut config = ServerConfig::new(args.state.clone());
    config.limits = Limits {
        max_frame_bytes: args.max_frame_bytes,
        max_rows: args.max_rows,
    };
    config.idle_timeout = seconds("--idle-timeout", args.idle_timeout)?;
    config.checkpoint_every = args
        .checkpoint_every
        .map(|v| seconds("--checkpoint-every", v))
        .transpose()?;
    config.max_connections = args.max_connections.max(1);
    config.verbose = !args.quiet;
    let (dim, samples) = (state.dim(), state.samples());
    // Catch SIGTERM and SIGINT before serving, so none can arrive unhandled.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
            .context("installing signal handlers")?;
    let server = Server::start(&address, state, config)?;
    println!(
        "listening on {} (state {}: dimension {dim}, {samples} samples)",
        server.address(),
        args.state.display()
    );
    std::io::stdout().flush()?;
    let signal = signals.forever().next().unwrap_or(signal_hook::consts::SIGTERM);
    let final_state = server.shutdown()?;
    println!(
        "signal {signal}: checkpointed {} samples to {}; exiting",
        final_state.samples(),
        args.state.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct PushArgs {
    /// The server, HOST:PORT or unix:PATH.
    #[arg(long)]
    connect: String,
    /// Features: a 2-D float32/float64 .npy file, C order.
    #[arg(long)]
    features: PathBuf,
    /// Labels: a 1-D integer .npy file, one per feature row.
    #[arg(long)]
    labels: PathBuf,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Send a task boundary before the batches.
    #[arg(long)]
    begin_task: bool,
    /// Batches sent ahead of their acknowledgement (1: wait for each).
    #[arg(long, default_value_t = headstart::net::DEFAULT_WINDOW)]
    window: usize,
}

pub fn push(args: PushArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    let address: Address = args
        .connect
        .parse()
        .map_err(|e| anyhow::anyhow!("--connect: {e}"))?;
    let (mut x, mut y) = open_pair(&args.features, &args.labels)?;
    let dtype = match x.scalar() {
        Scalar::F64 => Dtype::F64,
        _ => Dtype::F32,
    };
    let started = Instant::now();
    let mut client = Client::connect(&address)?;
    client.set_window(args.window);
    client.hello(x.dim(), dtype)?;
    if args.begin_task {
        client.begin_task()?;
    }
    let rows = x.rows();
    let bar = progress_bar(rows, "rows sent");
    // With a window, the batch a refusal names is the first one not yet acknowledged.
    let refused = |client: &Client| {
        let first = client.acknowledged() * args.batch as u64;
        format!(
            "rows {first}..{} of {}",
            (first + args.batch as u64).min(rows),
            args.features.display()
        )
    };
    let (mut row, mut batches) = (0u64, 0u64);
    while row < rows {
        let count = (args.batch as u64).min(rows - row);
        let batch = Batch::new(x.read_rows(row, count)?, y.read_rows(row, count)?);
        if let Err(e) = client.push(&batch) {
            return Err(anyhow::Error::new(e).context(refused(&client)));
        }
        row += count;
        batches += 1;
        bar.inc(count);
    }
    if let Err(e) = client.flush() {
        return Err(anyhow::Error::new(e).context(refused(&client)));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "pushed {rows} samples in {batches} batches to {address}, all acknowledged ({seconds:.3} s, {:.0} samples/s)",
        rows as f64 / seconds.max(1e-9)
    );
    Ok(())
}

#[derive(Args)]
pub struct SyncArgs {
    /// The server, HOST:PORT or unix:PATH.
    #[arg(long)]
    connect: String,
}

pub fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let address: Address = args
        .connect
        .parse()
        .map_err(|e| anyhow::anyhow!("--connect: {e}"))?;
    let samples = Client::connect(&address)?.sync()?;
    println!("synced: the state file holds {samples} samples, every acknowledged batch included");
    Ok(())
}
