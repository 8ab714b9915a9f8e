//! `headstart solve`: a head from a state file or from a running server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use headstart::net::{Address, Client};
use headstart::snapshot;

use super::check_output;
use super::head::{HeadArgs, LambdaArg, held_out_note, print_summary, solve_and_write};
use super::secure::ClientSecurity;

#[derive(Args)]
#[group(id = "source", required = true, multiple = false, args = ["state", "connect"])]
pub struct SolveArgs {
    /// A state file (from `ingest`, `merge` or `serve`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// A running server, HOST:PORT or unix:PATH.
    #[arg(long)]
    connect: Option<String>,
    /// Where to write the head (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    head: HeadArgs,
    /// With --state and --lambda auto: held-out statistics (a state file of held-out data).
    #[arg(long, requires = "state")]
    val_state: Option<PathBuf>,
    #[command(flatten)]
    security: ClientSecurity,
}

pub fn run(args: SolveArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(address) = &args.connect {
        let address: Address = address.parse().map_err(|e| anyhow::anyhow!("--connect: {e}"))?;
        let request = args.head.remote_request()?;
        check_output("--out", &args.out)?;
        let mut client =
            Client::connect_with(&address, &args.security.options(Some(Duration::from_secs(60)))?)?;
        let bytes = client.solve(&request)?;
        headstart::export::write_atomically(&args.out, &bytes)?;
        let head = headstart::export::read_head(&args.out, &args.head.prefix)
            .with_context(|| format!("reading back {}", args.out.display()))?;
        outln!("classes: {} solved, dimension {}", head.class_ids.len(), head.dim)?;
        let meta = |key: &str| head.metadata.get(key).map_or("?", String::as_str);
        outln!(
            "lambda: {} ({}), form: {}, scope: {}",
            meta("lambda"),
            meta("lambda_rule"),
            request.form,
            request.scope
        )?;
        outln!("wrote {} (from {address})", args.out.display())?;
        return Ok(());
    }
    let path = args.state.as_ref().expect("clap requires --state or --connect");
    let prepared = args.head.prepare()?;
    match (&prepared.lambda, &args.val_state) {
        (LambdaArg::Auto, None) => bail!("--lambda auto needs held-out statistics: --val-state V.hs"),
        (LambdaArg::Fixed(_), Some(_)) => bail!("--val-state only applies with --lambda auto"),
        _ => {}
    }
    check_output("--out", &args.out)?;
    let state = snapshot::read(path)?;
    let validation = args
        .val_state
        .as_ref()
        .map(|v| snapshot::read_with_dim(v, state.dim()))
        .transpose()?;
    let read_seconds = started.elapsed().as_secs_f64();
    let mut extra = BTreeMap::new();
    extra.insert("state".to_string(), path.display().to_string());
    let solved = solve_and_write(
        prepared,
        &args.head,
        &state,
        validation.as_ref(),
        &args.out,
        extra,
    )?;
    let held_out = held_out_note(validation.as_ref());
    print_summary(
        &solved,
        &format!(
            "{} in the state, {} used for the head{held_out}",
            state.samples(),
            solved.head.info.samples
        ),
        &format!(
            "{:.3} s (reading the state {read_seconds:.3} s)",
            started.elapsed().as_secs_f64()
        ),
        &args.out,
        &args.head.prefix,
    )?;
    Ok(())
}
