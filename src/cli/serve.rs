//! `headstart serve`, and the clients `push` and `sync`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use headstart::ingest::npy::Scalar;
use headstart::ingest::source::{FeatureSource, LabelSource};
use headstart::net::protocol::{Dtype, Limits};
use headstart::net::{Address, Client, ClientError, Server, ServerConfig};
use headstart::snapshot;
use headstart::stats::{Batch, BatchError, Stats};

use super::secure::{ClientSecurity, ServeSecurity};
use super::stream::{InputArgs, open_sources, progress_bar};

#[derive(Args)]
pub struct ServeArgs {
    /// HOST:PORT (port 0 picks one) or unix:PATH.
    #[arg(long)]
    listen: String,
    /// The state file: loaded if it exists, replaced atomically at every checkpoint.
    #[arg(long)]
    state: PathBuf,
    /// Feature dimension of a new state (required when --state does not exist yet); with
    /// --expand, the raw features' dimension that clients send.
    #[arg(long)]
    dim: Option<usize>,
    /// exact or fast products for the batches (as `fit --precision`).
    #[arg(long, default_value = "exact")]
    precision: headstart::stats::Precision,
    #[command(flatten)]
    expand: super::stream::ExpandArgs,
    /// Checkpoint this often (seconds, more than 0, at most a year) when the state changed;
    /// SYNC and SIGTERM always do.
    #[arg(long, value_parser = parse_seconds)]
    checkpoint_every: Option<Duration>,
    /// After a failed checkpoint (full disk, file-size limit, I/O error) the server keeps
    /// serving from memory and retries this many seconds later, doubling the wait after each
    /// failure up to a minute.
    #[arg(long, value_parser = parse_seconds, default_value = "1")]
    checkpoint_retry: Duration,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Largest batch accepted, in rows.
    #[arg(long, default_value_t = Limits::default().max_rows)]
    max_rows: usize,
    /// Close a connection silent for this many seconds (more than 0, at most a year).
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    idle_timeout: Duration,
    /// Threads computing each batch's product (0: every available core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Do not log checkpoints and closed connections.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    security: ServeSecurity,
}

/// The longest duration a seconds option accepts: one year (365 days).
const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Parses a number of seconds for clap: finite, more than 0 and at most [`MAX_SECONDS`], so
/// that no `Duration` conversion or `Instant + duration` can panic or overflow. clap names
/// the option in its error (usage error, exit code 2).
/// As [`parse_seconds`], and 0 (meaning "off").
fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(text),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if v.is_nan() {
        return Err(format!("'{text}' is not a number of seconds"));
    }
    if v <= 0.0 {
        return Err(format!("{text} seconds: must be more than 0"));
    }
    if v > MAX_SECONDS as f64 {
        return Err(format!(
            "{text} seconds is too long: at most {MAX_SECONDS} (one year)"
        ));
    }
    let d = Duration::try_from_secs_f64(v).map_err(|e| format!("{text} seconds: {e}"))?;
    if d.is_zero() {
        return Err(format!("{text} seconds rounds to 0: must be at least 1 ns"));
    }
    Ok(d)
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let address: Address = args
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    // The session ledger comes with the state file; a new state has none.
    let (mut state, ledger) = if args.state.exists() {
        let (mut s, ledger) = snapshot::read_with_ledger(&args.state)?;
        if let Some(d) = args.dim.filter(|&d| d != s.input_dim()) {
            bail!(
                "--dim {d} but {} has dimension {}",
                args.state.display(),
                s.input_dim()
            );
        }
        let asked = args.expand.spec(s.input_dim())?;
        if args.expand.expand.is_some() && asked.as_ref() != s.expansion() {
            bail!(
                "{} was built {} but serve runs {}",
                args.state.display(),
                super::state::expansion_text(s.expansion()),
                super::state::expansion_text(asked.as_ref())
            );
        }
        s.set_precision(args.precision);
        (s, ledger)
    } else {
        let state = match args.dim {
            Some(0) => bail!("--dim must be at least 1"),
            Some(d) if d > headstart::stats::MAX_DIM => {
                bail!(
                    "--dim {d} exceeds the largest supported dimension, {}",
                    headstart::stats::MAX_DIM
                )
            }
            Some(d) => match args.expand.spec(d)? {
                Some(spec) => Stats::expanded(spec, args.precision),
                None => Stats::with_precision(d, args.precision),
            },
            None => bail!(
                "{} does not exist; pass --dim to start an empty state",
                args.state.display()
            ),
        };
        (state, headstart::ledger::Ledger::new())
    };
    state.set_threads(args.threads);
    let mut config = ServerConfig::new(args.state.clone());
    config.limits = Limits {
        max_frame_bytes: args.max_frame_bytes,
        max_rows: args.max_rows,
    };
    config.idle_timeout = args.idle_timeout;
    config.checkpoint_every = args.checkpoint_every;
    config.checkpoint_retry = args.checkpoint_retry;
    config.max_connections = args.max_connections.max(1);
    config.verbose = !args.quiet;
    args.security.apply(&address, &mut config)?;
    let (dim, samples) = (state.dim(), state.samples());
    // Catch SIGTERM and SIGINT before serving, so none can arrive unhandled.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
            .context("installing signal handlers")?;
    let server_tokens = config.tokens.as_ref().map(|t| t.counts());
    let server_tls = config.tls.is_some();
    let server = Server::start_with_ledger(&address, state, ledger, config)?;
    // Scripts read this line to learn the address; a reader that went away does not stop
    // the server.
    let guard = match (&server_tokens, server_tls) {
        (Some((push, admin)), true) => format!(", TLS, {push} push and {admin} admin tokens"),
        (Some((push, admin)), false) => format!(", {push} push and {admin} admin tokens"),
        (None, true) => ", TLS, no tokens".to_string(),
        (None, false) => String::new(),
    };
    let _ = outln!(
        "listening on {} (state {}: dimension {dim}, {samples} samples{guard})",
        server.address(),
        args.state.display()
    );
    let _ = std::io::stdout().flush();
    let signal = signals.forever().next().unwrap_or(signal_hook::consts::SIGTERM);
    let final_state = server.shutdown()?;
    // A log line like the checkpoints: stderr (stdout holds only the "listening on" line).
    eprintln!(
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
    #[command(flatten)]
    input: InputArgs,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Send a task boundary before the batches.
    #[arg(long)]
    begin_task: bool,
    /// Batches sent ahead of their acknowledgement (1: wait for each).
    #[arg(long, default_value_t = headstart::net::DEFAULT_WINDOW)]
    window: usize,
    /// Seconds to wait for the connection, and then for each reply or write, before giving up
    /// (more than 0, at most a year).
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    timeout: Duration,
    /// Skip the check of the whole input before sending. By default push first reads every
    /// row to be sent and checks it (label count = row count, every feature finite and at
    /// most 2^479 in magnitude), so that a bad row sends nothing; without the check, the
    /// batches before a bad row are applied and the push then fails.
    #[arg(long)]
    no_prevalidate: bool,
    /// Seconds to keep reconnecting when the connection drops (a server restart, a cut link, a
    /// timeout): the push then resumes its session, and the server applies every batch exactly
    /// once. 0: no resuming, a dropped connection fails the push.
    #[arg(long, default_value = "60", value_parser = parse_seconds_or_zero)]
    reconnect: Duration,
    /// MiB of pushed features kept for resending (with --reconnect) before push syncs by
    /// itself: the client's memory is about this much beyond a batch.
    #[arg(long, default_value_t = 64)]
    max_unsynced_mib: usize,
    /// Start at this row (0-based), skipping the rows before it: after a push that failed
    /// saying "rows 0..N were acknowledged", `--skip-rows N` sends each remaining row once.
    #[arg(long, default_value_t = 0)]
    skip_rows: u64,
    #[command(flatten)]
    security: ClientSecurity,
}

/// Checks rows `start..` of the pair as the server would, `batch` rows at a time, naming the
/// first bad value by its row in the file.
fn prevalidate(
    x: &mut dyn FeatureSource,
    y: &mut dyn LabelSource,
    start: u64,
    batch: usize,
    features: &std::path::Path,
) -> anyhow::Result<()> {
    let (rows, dim) = (x.rows(), x.dim());
    let mut row = start;
    while row < rows {
        let count = (batch as u64).min(rows - row);
        let b = Batch::new(x.read_rows(row, count)?, y.read_rows(row, count)?);
        if let Err(e) = b.validate(dim) {
            let at = |r: usize, col: usize| {
                format!("{}: row {}, column {col}", features.display(), row + r as u64)
            };
            let what = match e {
                BatchError::NonFinite { row: r, col, value } => {
                    format!("{}: feature value {value} is not finite", at(r, col))
                }
                BatchError::OutOfRange { row: r, col, value } => format!(
                    "{}: feature value {value} is too large (|x| must be at most 2^479)",
                    at(r, col)
                ),
                other => format!("{}: rows {row}..{}: {other}", features.display(), row + count),
            };
            bail!("{what}");
        }
        row += count;
    }
    Ok(())
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
    // Checks that there is one label per row.
    let (features, labels) = args.input.specs()?;
    let (mut x, mut y) = open_sources(&features, &labels)?;
    let rows = x.rows();
    if args.skip_rows > rows {
        bail!(
            "--skip-rows {} but {} has only {rows} rows",
            args.skip_rows,
            args.input.features.display()
        );
    }
    let dtype = match x.scalar() {
        Scalar::F64 => Dtype::F64,
        _ => Dtype::F32,
    };
    if !args.no_prevalidate {
        prevalidate(&mut *x, &mut *y, args.skip_rows, args.batch, &args.input.features).with_context(|| {
            format!(
                "nothing was sent: checking every row of {} before sending (--no-prevalidate skips the check)",
                args.input.features.display()
            )
        })?;
    }
    let mut options = args.security.options(Some(args.timeout))?;
    if !args.reconnect.is_zero() {
        options.reconnect = Some(headstart::net::Reconnect {
            patience: args.reconnect,
            ..headstart::net::Reconnect::default()
        });
    }
    let started = Instant::now();
    let mut client = Client::connect_with(&address, &options)?;
    client.set_window(args.window);
    client.set_max_unsynced_bytes(args.max_unsynced_mib.saturating_mul(1 << 20));
    client.open(x.dim(), dtype)?;
    if args.begin_task {
        client.begin_task()?;
    }
    let bar = progress_bar(rows - args.skip_rows, "rows sent");
    let (mut row, mut batches) = (args.skip_rows, 0u64);
    let mut sent = || -> anyhow::Result<()> {
        while row < rows {
            let count = (args.batch as u64).min(rows - row);
            let batch = Batch::new(x.read_rows(row, count)?, y.read_rows(row, count)?);
            client
                .push_owned(batch)
                .with_context(|| format!("sending rows {row}..{}", row + count))?;
            row += count;
            batches += 1;
            bar.inc(count);
        }
        client.flush()?;
        if client.session().is_some() {
            // Until a SYNC, the client keeps every batch to send it again after a restart.
            client.sync().context("making the pushed batches durable")?;
        }
        Ok(())
    };
    if let Err(e) = sent() {
        bar.finish_and_clear();
        return Err(stopped(e, &mut client, &args, rows));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let pushed = rows - args.skip_rows;
    let from = if args.skip_rows > 0 {
        format!(" (rows {}..{rows})", args.skip_rows)
    } else {
        String::new()
    };
    outln!(
        "pushed {}{from} in {} to {address}, all acknowledged{} ({seconds:.3} s, {:.0} samples/s)",
        super::plural(pushed, "sample", "samples"),
        super::plural(batches, "batch", "batches"),
        match (client.session().is_some(), client.reconnects()) {
            (false, _) => String::new(),
            (true, 0) => " and durable".to_string(),
            (true, n) => format!(
                " and durable, each once (resumed after {})",
                super::plural(n, "dropped connection", "dropped connections")
            ),
        },
        pushed as f64 / seconds.max(1e-9)
    )?;
    Ok(())
}

/// The error of a push that stopped after sending batches, saying which rows the server
/// acknowledged and how to resume.
fn stopped(e: anyhow::Error, client: &mut Client, args: &PushArgs, rows: u64) -> anyhow::Error {
    let client_error = e.chain().find_map(|c| c.downcast_ref::<ClientError>());
    // A batch refused before sending, or a file error: the server is fine, so the batches in
    // flight settle and the count below is exact. After a timeout or a refusal, they do not.
    // A resumable session then also syncs, so that what was acknowledged is durable too.
    let settled = match client_error {
        None | Some(ClientError::Usage(_)) => {
            client.flush().is_ok() && (client.session().is_none() || client.sync().is_ok())
        }
        Some(ClientError::Server { .. }) => true,
        Some(_) => false,
    };
    let batch = args.batch as u64;
    let acked = (args.skip_rows + client.acknowledged() * batch).min(rows);
    let in_flight = (args.skip_rows + client.sent() * batch).min(rows);
    let task = if args.begin_task {
        " (without --begin-task)"
    } else {
        ""
    };
    let durable = (args.skip_rows + client.durable() * batch).min(rows);
    let mut context = if client.session().is_some() && durable < acked {
        format!(
            "rows {}..{acked} of {} were acknowledged, but only rows {}..{durable} are durable: rows {durable}..{acked} were not yet synced, and a server killed before its next checkpoint loses them. Check the server's sample count, then resume with --skip-rows {acked} if it holds them, or --skip-rows {durable} if not{task}",
            args.skip_rows,
            args.input.features.display(),
            args.skip_rows,
        )
    } else {
        format!(
            "rows {}..{acked} of {} were acknowledged; resume with --skip-rows {acked}{task}",
            args.skip_rows,
            args.input.features.display(),
        )
    };
    if !settled && in_flight > acked {
        context += &format!(
            "; rows {acked}..{in_flight} were sent without an acknowledgement: each of those batches may or may not be applied, so check the server's sample count first"
        );
    }
    e.context(context)
}

#[derive(Args)]
pub struct SyncArgs {
    /// The server, HOST:PORT or unix:PATH.
    #[arg(long)]
    connect: String,
    /// Seconds to wait for the connection, and then for the reply, before giving up (more
    /// than 0, at most a year).
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    timeout: Duration,
    #[command(flatten)]
    security: ClientSecurity,
}

pub fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let address: Address = args
        .connect
        .parse()
        .map_err(|e| anyhow::anyhow!("--connect: {e}"))?;
    let options = args.security.options(Some(args.timeout))?;
    let samples = Client::connect_with(&address, &options)?.sync()?;
    outln!(
        "synced: the state file holds {}, every acknowledged batch included",
        super::plural(samples, "sample", "samples")
    )?;
    Ok(())
}
