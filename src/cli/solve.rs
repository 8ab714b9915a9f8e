//! `headstart solve`: a head from a state file or from a running server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use headstart::net::{Address, Client};
use headstart::snapshot;

use super::head::{HeadArgs, LambdaArg, print_choice, solve_and_write};

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
}

pub fn run(args: SolveArgs) -> anyhow::Result<()> {
    if let Some(address) = &args.connect {
        let address: Address = address.parse().map_err(|e| anyhow::anyhow!("--connect: {e}"))?;
        let request = args.head.remote_request()?;
        let mut client = Client::connect(&address)?;
        let bytes = client.solve(&request)?;
        headstart::export::write_atomically(&args.out, &bytes)?;
        let head = headstart::export::read_head(&args.out, &args.head.prefix)
            .with_context(|| format!("reading back {}", args.out.display()))?;
        println!("classes: {} solved, dimension {}", head.class_ids.len(), head.dim);
        let meta = |key: &str| head.metadata.get(key).map_or("?", String::as_str);
        println!(
            "lambda: {} ({}), form: {}, scope: {}",
            meta("lambda"),
            meta("lambda_rule"),
            request.form,
            request.scope
        );
        println!("wrote {} (from {address})", args.out.display());
        return Ok(());
    }
    let path = args.state.as_ref().expect("clap requires --state or --connect");
    let prepared = args.head.prepare()?;
    let state = snapshot::read(path)?;
    let validation = match (&prepared.lambda, &args.val_state) {
        (LambdaArg::Auto, None) => bail!("--lambda auto needs held-out statistics: --val-state V.hs"),
        (LambdaArg::Fixed(_), Some(_)) => bail!("--val-state only applies with --lambda auto"),
        (_, Some(v)) => Some(snapshot::read_with_dim(v, state.dim())?),
        (_, None) => None,
    };
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
    println!(
        "samples: {} in the state, {} in the solve",
        state.samples(),
        solved.head.info.samples
    );
    println!(
        "classes: {} solved, dimension {}",
        solved.head.rows(),
        solved.head.dim
    );
    print_choice(&solved);
    println!("wrote {}", args.out.display());
    Ok(())
}
