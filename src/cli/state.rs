//! `headstart ingest`, `inspect`, `merge` and `decay`: state files offline.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use headstart::snapshot;
use headstart::stats::Stats;

use super::stream::{InputArgs, StreamArgs, stream_files};
use super::{check_output, plural};

#[derive(Args)]
pub struct IngestArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The state file to create, or to extend if it exists.
    #[arg(long)]
    state: PathBuf,
    /// Mark a task boundary before these samples (a solve with --scope task then sees only them).
    #[arg(long)]
    begin_task: bool,
    /// Multiply the existing state's sums and weights by GAMMA in (0, 1] before adding these
    /// samples (a forgetting factor: older features fade, the new ones weigh 1).
    #[arg(long, value_name = "GAMMA", value_parser = parse_gamma, allow_hyphen_values = true)]
    decay: Option<f64>,
    #[command(flatten)]
    stream: StreamArgs,
}

pub fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    check_output("--state", &args.state)?;
    let (features, labels) = args.input.specs()?;
    // Read the existing state first: a damaged or mismatched file fails before the long work.
    let existing = if args.state.exists() {
        Some(snapshot::read(&args.state)?)
    } else {
        None
    };
    let config = args.stream.config(None);
    // Every row is read and checked before the state changes: a bad row anywhere leaves the
    // state file as it was.
    let streamed = stream_files(&features, &labels, &config)?;
    let mut state = match existing {
        Some(s) if s.input_dim() != streamed.dim => bail!(
            "{} has dimension {} but {} has {} columns",
            args.state.display(),
            s.input_dim(),
            args.input.features.display(),
            streamed.dim
        ),
        Some(s) if s.expansion() != streamed.train.expansion() => bail!(
            "{} was built {} but this ingest runs {}: pass the same --expand and --expand-seed",
            args.state.display(),
            expansion_text(s.expansion()),
            expansion_text(streamed.train.expansion())
        ),
        Some(s) => s,
        None => match streamed.train.expansion() {
            Some(&spec) => Stats::expanded(spec, config.precision),
            None => Stats::new(streamed.dim),
        },
    };
    let before = state.samples();
    if let Some(gamma) = args.decay {
        state
            .decay(gamma)
            .with_context(|| format!("{}: --decay", args.state.display()))?;
    }
    if args.begin_task {
        state.begin_task();
    }
    state.merge(&streamed.train)?;
    snapshot::write(&args.state, &state)?;
    outln!(
        "{} {}: {} added, {} in all, {}, dimension {} ({:.3} s)",
        if before == 0 && !args.begin_task {
            "wrote"
        } else {
            "extended"
        },
        args.state.display(),
        plural(streamed.rows, "sample", "samples"),
        state.samples(),
        plural(state.classes().len() as u64, "class", "classes"),
        state.dim(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    /// The state file.
    file: PathBuf,
    /// List every class (default: the first 100).
    #[arg(long)]
    all: bool,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let state = snapshot::decode(&bytes, &args.file)?;
    let classes = state.classes();
    let task: std::collections::BTreeSet<i64> = state.task_classes().into_iter().collect();
    outln!("state: {}", args.file.display())?;
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("decode checked the header"));
    outln!("format: version {version} ({} bytes)", bytes.len())?;
    outln!("dimension: {}", state.dim())?;
    if let Some(e) = state.expansion() {
        outln!("expansion: {e} (input dimension {})", e.input_dim)?;
    }
    outln!(
        "samples: {} ({} since the last task boundary)",
        state.samples(),
        state.task_samples()
    )?;
    let decayed = state.weight() != state.samples() as f64;
    if decayed {
        outln!(
            "weight: {} ({} since the last task boundary; decayed)",
            state.weight(),
            state.task_weight()
        )?;
    }
    outln!("task boundaries: {}", state.tasks_begun())?;
    outln!(
        "classes: {} ({} with samples since the last boundary)",
        classes.len(),
        task.len()
    )?;
    let shown = if args.all {
        classes.len()
    } else {
        classes.len().min(100)
    };
    if shown > 0 && decayed {
        outln!(
            "{:>20}  {:>12}  {:>14}  {:>14}",
            "class",
            "samples",
            "weight",
            "task weight"
        )?;
    } else if shown > 0 {
        outln!("{:>20}  {:>12}  {:>12}", "class", "samples", "since task")?;
    }
    for &id in &classes[..shown] {
        let in_task = state
            .class_sum(id, headstart::stats::Scope::Task)
            .map_or(0.0, |(n, _)| n);
        if decayed {
            outln!(
                "{id:>20}  {:>12}  {:>14.6}  {in_task:>14.6}",
                state.class_count(id),
                state.class_weight(id)
            )?;
        } else {
            outln!("{id:>20}  {:>12}  {in_task:>12}", state.class_count(id))?;
        }
    }
    if shown < classes.len() {
        outln!(
            "… and {} more (--all lists them)",
            plural((classes.len() - shown) as u64, "class", "classes")
        )?;
    }
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// State files to add up (same dimension).
    #[arg(required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// The merged state file.
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(args: MergeArgs) -> anyhow::Result<()> {
    check_output("--out", &args.out)?;
    let mut merged: Option<Stats> = None;
    for path in &args.inputs {
        let part = snapshot::read(path)?;
        match merged.as_mut() {
            None => merged = Some(part),
            Some(total) => {
                if total.dim() != part.dim() {
                    bail!(
                        "{} has dimension {} but {} has {}",
                        path.display(),
                        part.dim(),
                        args.inputs[0].display(),
                        total.dim()
                    );
                }
                total.merge(&part)?;
            }
        }
    }
    let merged = merged.expect("clap requires at least one input");
    snapshot::write(&args.out, &merged)?;
    outln!(
        "wrote {}: {}, {}, {}, dimension {}",
        args.out.display(),
        plural(args.inputs.len() as u64, "state", "states"),
        plural(merged.samples(), "sample", "samples"),
        plural(merged.classes().len() as u64, "class", "classes"),
        merged.dim()
    )?;
    Ok(())
}

#[derive(Args)]
pub struct DecayArgs {
    /// The state file (rewritten atomically unless --out is given).
    file: PathBuf,
    /// The forgetting factor in (0, 1]: every sum and weight is multiplied by it.
    #[arg(long, value_parser = parse_gamma, allow_hyphen_values = true)]
    gamma: f64,
    /// Write the decayed state here instead of over FILE.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn decay(args: DecayArgs) -> anyhow::Result<()> {
    let out = args.out.as_ref().unwrap_or(&args.file);
    if args.out.is_some() {
        check_output("--out", out)?;
    }
    let mut state = snapshot::read(&args.file)?;
    let before = state.weight();
    state
        .decay(args.gamma)
        .with_context(|| format!("{}", args.file.display()))?;
    snapshot::write(out, &state)?;
    outln!(
        "wrote {}: weight {before} -> {} ({}, {}), γ = {}",
        out.display(),
        state.weight(),
        plural(state.samples(), "sample", "samples"),
        plural(state.classes().len() as u64, "class", "classes"),
        args.gamma
    )?;
    Ok(())
}

/// A forgetting factor: a number in (0, 1].
fn parse_gamma(text: &str) -> Result<f64, String> {
    let gamma: f64 = text.parse().map_err(|_| format!("'{text}' is not a number"))?;
    if gamma > 0.0 && gamma <= 1.0 {
        Ok(gamma)
    } else {
        Err(format!("{gamma} is not in (0, 1]"))
    }
}

/// How a state expands its input, in the options' words.
pub(crate) fn expansion_text(e: Option<&headstart::expand::Expansion>) -> String {
    match e {
        Some(e) => format!("with --expand {} --expand-seed {}", e.features, e.seed),
        None => "without --expand".to_string(),
    }
}
