//! `headstart fit`: stream features (.npy, Parquet or safetensors) into statistics, solve a
//! head, write it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use headstart::solve::Scope;

use super::check_output;
use super::head::{HeadArgs, LambdaArg, held_out_note, print_summary, solve_and_write};
use super::stream::{InputArgs, Split, StreamArgs, StreamConfig, stream_files};

#[derive(Args)]
pub struct FitArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Where to write the head (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    head: HeadArgs,
    #[command(flatten)]
    stream: StreamArgs,
    /// With --lambda auto: held-out features, in any input format (read with the same
    /// --feature-column or --tensor as --features).
    #[arg(long)]
    val_features: Option<PathBuf>,
    /// With --lambda auto: held-out labels (not needed when --val-features holds them, by
    /// --label-column or --label-tensor).
    #[arg(long, requires = "val_features")]
    val_labels: Option<PathBuf>,
    /// With --lambda auto: hold out this fraction of the input (a seeded split).
    #[arg(long, conflicts_with = "val_features", allow_negative_numbers = true, value_parser = parse_fraction)]
    val_fraction: Option<f64>,
    /// Seed of the --val-fraction split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `--val-fraction`: a number strictly between 0 and 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    let f: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number; it must be in (0, 1), e.g. 0.1"))?;
    if f > 0.0 && f < 1.0 {
        Ok(f)
    } else {
        Err(format!("must be in (0, 1), strictly between 0 and 1; got {text}"))
    }
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Every option is checked (and --match-norm read) before the long work.
    if args.head.scope == Scope::Task {
        bail!(
            "--scope task does not apply to fit: its input has no task boundary, so every \
             sample is in the task. Mark boundaries with `ingest --begin-task` and solve the state \
             with `solve --state S.hs --scope task`"
        );
    }
    let prepared = args.head.prepare()?;
    check_output("--out", &args.out)?;
    let split = match (&prepared.lambda, args.val_fraction, &args.val_features) {
        (LambdaArg::Fixed(_), Some(_), _) | (LambdaArg::Fixed(_), _, Some(_)) => {
            bail!("--val-features/--val-fraction only apply with --lambda auto")
        }
        (LambdaArg::Auto, None, None) => {
            bail!("--lambda auto needs held-out data: --val-features and --val-labels, or --val-fraction")
        }
        (LambdaArg::Auto, Some(f), _) => {
            if !(f > 0.0 && f < 1.0) {
                bail!("--val-fraction must lie strictly between 0 and 1, got {f}");
            }
            Some(Split {
                fraction: f,
                seed: args.seed,
            })
        }
        _ => None,
    };

    // With --val-features, a column or tensor option may name the held-out file's only.
    let strict = args.val_features.is_none();
    let input = &args.input;
    let (features, labels) = input.resolve(
        &input.features,
        input.labels.as_deref(),
        "--features",
        "--labels",
        strict,
    )?;
    let val_specs = match &args.val_features {
        Some(vf) => {
            let val = input.resolve(
                vf,
                args.val_labels.as_deref(),
                "--val-features",
                "--val-labels",
                false,
            )?;
            input.check_used(&[&(features.clone(), labels.clone()), &val])?;
            Some(val)
        }
        None => None,
    };
    let config = args.stream.config(split);
    let streamed = stream_files(&features, &labels, &config)?;
    let mut validation = streamed.validation;
    if let (Some((vf, vl)), Some(vf_path)) = (&val_specs, &args.val_features) {
        let v = stream_files(
            vf,
            vl,
            &StreamConfig {
                split: None,
                ..config
            },
        )?;
        if v.dim != streamed.dim {
            bail!(
                "{} has {} columns but {} has {}",
                vf_path.display(),
                v.dim,
                args.input.features.display(),
                streamed.dim
            );
        }
        validation = Some(v.train);
    }
    let ingest_seconds = started.elapsed().as_secs_f64();

    let mut extra = BTreeMap::new();
    extra.extend(args.input.metadata(&labels));
    extra.insert("precision".to_string(), args.stream.precision.to_string());
    if let (LambdaArg::Auto, Some(s)) = (&prepared.lambda, split) {
        extra.insert("val_fraction".into(), s.fraction.to_string());
        extra.insert("val_seed".into(), s.seed.to_string());
    }
    let solved = solve_and_write(
        prepared,
        &args.head,
        &streamed.train,
        validation.as_ref(),
        &args.out,
        extra,
    )?;

    let total = started.elapsed().as_secs_f64();
    let held_out = held_out_note(validation.as_ref());
    print_summary(
        &solved,
        &format!(
            "{} read, {} used for the head{held_out}",
            streamed.rows,
            streamed.train.samples()
        ),
        &format!(
            "{total:.3} s (reading and accumulating {ingest_seconds:.3} s, {:.0} samples/s)",
            streamed.rows as f64 / ingest_seconds.max(1e-9)
        ),
        &args.out,
        &args.head.prefix,
    )?;
    Ok(())
}
