//! `headstart fit`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use headstart::export;
use headstart::solve::{Form, LambdaChoice, Scope, SolveOptions, Solver, default_lambda_grid, select_lambda};
use headstart::stats::Precision;

use super::classes::parse_classes;
use super::stream::{Split, StreamConfig, stream_files};

#[derive(Args)]
pub struct FitArgs {
    /// Features: a 2-D float32/float64 .npy file, C order.
    #[arg(long)]
    features: PathBuf,
    /// Labels: a 1-D integer .npy file, one per feature row.
    #[arg(long)]
    labels: PathBuf,
    /// Where to write the head (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// nc (Harun & Kanan Eq. 3) or ridge (one-hot regression).
    #[arg(long, default_value = "nc")]
    form: Form,
    /// Solve no bias (b = 0).
    #[arg(long)]
    no_bias: bool,
    /// λ ≥ 0, or `auto` to pick it on held-out data.
    #[arg(long, default_value = "0.05", allow_hyphen_values = true)]
    lambda: String,
    /// Classes to solve, in row order, e.g. `3,5,10-19` (default: every class, ascending).
    #[arg(long, allow_hyphen_values = true)]
    classes: Option<String>,
    /// Prefix of the tensor names, e.g. `fc.`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Producer threads reading the input.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// exact (each batch's product in f64) or fast (in f32, totals in f64; see docs/math.md).
    #[arg(long, default_value = "exact")]
    precision: Precision,
    /// With --lambda auto: held-out features.
    #[arg(long, requires = "val_labels")]
    val_features: Option<PathBuf>,
    /// With --lambda auto: held-out labels.
    #[arg(long, requires = "val_features")]
    val_labels: Option<PathBuf>,
    /// With --lambda auto: hold out this fraction of the input (a seeded split).
    #[arg(long, conflicts_with = "val_features")]
    val_fraction: Option<f64>,
    /// Seed of the --val-fraction split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// With --lambda auto: the λ grid, comma-separated (default: 1e-6 … 1e2).
    #[arg(long)]
    lambda_grid: Option<String>,
    /// Scale each row to the median row norm of this existing head (safetensors).
    #[arg(long)]
    match_norm: Option<PathBuf>,
    /// The weight tensor to read from --match-norm (default: the only `*weight` 2-D tensor).
    #[arg(long, requires = "match_norm")]
    match_norm_tensor: Option<String>,
}

enum Lambda {
    Fixed(f64),
    Auto,
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let lambda = match args.lambda.as_str() {
        "auto" => Lambda::Auto,
        text => {
            let v: f64 = text
                .parse()
                .map_err(|_| anyhow::anyhow!("--lambda '{text}' is neither a number nor 'auto'"))?;
            if !(v.is_finite() && v >= 0.0) {
                bail!("--lambda must be a finite number ≥ 0, got {text}");
            }
            Lambda::Fixed(v)
        }
    };
    let split = match (&lambda, args.val_fraction, &args.val_features) {
        (Lambda::Fixed(_), Some(_), _) | (Lambda::Fixed(_), _, Some(_)) => {
            bail!("--val-features/--val-fraction only apply with --lambda auto")
        }
        (Lambda::Auto, None, None) => {
            bail!("--lambda auto needs held-out data: --val-features and --val-labels, or --val-fraction")
        }
        (Lambda::Auto, Some(f), _) => {
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
    let classes = args
        .classes
        .as_deref()
        .map(parse_classes)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--classes: {e}"))?;
    let grid = match &args.lambda_grid {
        None => default_lambda_grid(),
        Some(text) => text
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("--lambda-grid: '{v}' is not a number"))
            })
            .collect::<anyhow::Result<Vec<f64>>>()?,
    };
    // Read the reference head before the long work, so a bad file fails fast.
    let norm_target = args
        .match_norm
        .as_deref()
        .map(|p| export::read_weight(p, args.match_norm_tensor.as_deref()))
        .transpose()?;

    let config = StreamConfig {
        batch: args.batch,
        producers: args.producers,
        split,
        precision: args.precision,
    };
    let streamed = stream_files(&args.features, &args.labels, &config)?;
    let mut validation = streamed.validation;
    if let (Some(vf), Some(vl)) = (&args.val_features, &args.val_labels) {
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
                vf.display(),
                v.dim,
                args.features.display(),
                streamed.dim
            );
        }
        validation = Some(v.train);
    }
    let ingest_seconds = started.elapsed().as_secs_f64();

    let solver = Solver::new();
    let mut opts = SolveOptions {
        form: args.form,
        scope: Scope::All,
        lambda: 0.0,
        bias: !args.no_bias,
        classes,
    };
    let choice: Option<LambdaChoice> = match lambda {
        Lambda::Fixed(v) => {
            opts.lambda = v;
            None
        }
        Lambda::Auto => {
            let val = validation.as_ref().expect("validation data is required above");
            if val.samples() == 0 {
                bail!("the validation split is empty; raise --val-fraction or pass --val-features");
            }
            let choice =
                select_lambda(&solver, &streamed.train, val, &opts, &grid).context("choosing lambda")?;
            opts.lambda = choice.best;
            Some(choice)
        }
    };
    let mut head = solver.solve(&streamed.train, &opts).context("solving the head")?;
    if let Some(reference) = &norm_target {
        if reference.cols != head.dim {
            bail!(
                "--match-norm: tensor '{}' has {} columns but the features have {}",
                reference.name,
                reference.cols,
                head.dim
            );
        }
        head.match_norm(headstart::solve::median_row_norm(
            &reference.values,
            reference.cols,
        ));
    }

    let mut extra = BTreeMap::new();
    extra.insert("features".to_string(), args.features.display().to_string());
    extra.insert("labels".to_string(), args.labels.display().to_string());
    extra.insert("precision".to_string(), args.precision.to_string());
    if let Some(c) = &choice {
        extra.insert("lambda_selection".into(), lambda_json(c));
        if let Some(s) = split {
            extra.insert("val_fraction".into(), s.fraction.to_string());
            extra.insert("val_seed".into(), s.seed.to_string());
        }
    }
    if let (Some(p), Some(r)) = (&args.match_norm, &norm_target) {
        extra.insert("match_norm".into(), format!("{} ({})", p.display(), r.name));
    }
    export::write_head(&args.out, &head, &args.prefix, &extra)?;

    let total = started.elapsed().as_secs_f64();
    let train_n = streamed.train.samples();
    println!(
        "samples: {} read, {} used for the head{}",
        streamed.rows,
        train_n,
        validation
            .as_ref()
            .map(|v| format!(", {} held out", v.samples()))
            .unwrap_or_default()
    );
    println!("classes: {} solved, dimension {}", head.rows(), head.dim);
    match &choice {
        None => println!("lambda: {}", opts.lambda),
        Some(c) => {
            println!(
                "lambda: {} (auto: lowest held-out MSE {:.6} over {} grid values)",
                c.best,
                c.best_mse,
                c.scores.len()
            );
            if c.on_edge {
                println!(
                    "warning: the best lambda lies on the edge of the grid; widen it with --lambda-grid"
                );
            }
        }
    }
    println!("form: {}, bias: {}", opts.form, opts.bias);
    println!(
        "time: {total:.3} s (reading and accumulating {ingest_seconds:.3} s, {:.0} samples/s)",
        streamed.rows as f64 / ingest_seconds.max(1e-9)
    );
    println!(
        "wrote {} ({} × {}, prefix '{}')",
        args.out.display(),
        head.rows(),
        head.dim,
        args.prefix
    );
    Ok(())
}

fn lambda_json(c: &LambdaChoice) -> String {
    let points: Vec<String> = c
        .scores
        .iter()
        .map(|s| match &s.mse {
            Ok(m) => format!("[{:?},{:?}]", s.lambda, m),
            Err(_) => format!("[{:?},null]", s.lambda),
        })
        .collect();
    format!(
        "{{\"best\":{:?},\"on_edge\":{},\"grid_mse\":[{}]}}",
        c.best,
        c.on_edge,
        points.join(",")
    )
}
