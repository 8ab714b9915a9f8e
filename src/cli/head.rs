//! The solve options shared by `fit` and `solve`, and solving + writing a head.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use headstart::export::{self, WeightMatrix};
use headstart::net::SolveRequest;
use headstart::solve::{
    Form, Head, Lambda, LambdaChoice, Scope, SolveOptions, Solver, default_lambda_grid, select_lambda,
};
use headstart::stats::Stats;

use super::classes::parse_classes;

#[derive(Args, Clone)]
pub struct HeadArgs {
    /// nc (Harun & Kanan Eq. 3) or ridge (one-hot regression).
    #[arg(long, default_value = "nc")]
    pub form: Form,
    /// Solve no bias (b = 0).
    #[arg(long)]
    pub no_bias: bool,
    /// λ: `rel` (the default: 0.001 × the features' mean eigenvalue, scale-free), `rel:R` (R ×
    /// the mean eigenvalue), a number ≥ 0 (absolute, the paper's λ), or `auto` (picked on
    /// held-out data).
    #[arg(long, default_value = "rel", allow_hyphen_values = true)]
    pub lambda: String,
    /// all (every sample) or task (only samples since the last task boundary).
    #[arg(long, default_value = "all")]
    pub scope: Scope,
    /// Classes to solve, in row order, e.g. `3,5,10-19` (default: every class, ascending).
    #[arg(long, allow_hyphen_values = true)]
    pub classes: Option<String>,
    /// Prefix of the tensor names, e.g. `fc.`.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// With --lambda auto: the λ grid, comma-separated, each absolute (`1e-3`) or relative
    /// (`rel:1e-3`) (default: relative factors 1e-6 … 1e2).
    #[arg(long)]
    pub lambda_grid: Option<String>,
    /// Scale each row to the median row norm of this existing head (safetensors).
    #[arg(long)]
    pub match_norm: Option<PathBuf>,
    /// The weight tensor to read from --match-norm (default: the only `*weight` 2-D tensor).
    #[arg(long, requires = "match_norm")]
    pub match_norm_tensor: Option<String>,
}

pub enum LambdaArg {
    Fixed(Lambda),
    Auto,
}

/// The options checked before any long work, so that a typo fails fast.
pub struct Prepared {
    pub lambda: LambdaArg,
    pub options: SolveOptions,
    pub grid: Vec<Lambda>,
    pub norm_target: Option<WeightMatrix>,
}

impl HeadArgs {
    pub fn prepare(&self) -> anyhow::Result<Prepared> {
        let lambda = match self.lambda.as_str() {
            "auto" => LambdaArg::Auto,
            text => LambdaArg::Fixed(
                text.parse::<Lambda>()
                    .map_err(|e| anyhow::anyhow!("--lambda: {e}, or 'auto'"))?,
            ),
        };
        let classes = self
            .classes
            .as_deref()
            .map(parse_classes)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--classes: {e}"))?;
        let grid = match &self.lambda_grid {
            None => default_lambda_grid(),
            Some(text) => text
                .split(',')
                .map(|v| {
                    v.parse::<Lambda>()
                        .map_err(|e| anyhow::anyhow!("--lambda-grid: {e}"))
                })
                .collect::<anyhow::Result<Vec<Lambda>>>()?,
        };
        let norm_target = self
            .match_norm
            .as_deref()
            .map(|p| export::read_weight(p, self.match_norm_tensor.as_deref()))
            .transpose()?;
        let options = SolveOptions {
            form: self.form,
            scope: self.scope,
            lambda: match lambda {
                LambdaArg::Fixed(v) => v,
                LambdaArg::Auto => Lambda::default(),
            },
            bias: !self.no_bias,
            classes,
        };
        Ok(Prepared {
            lambda,
            options,
            grid,
            norm_target,
        })
    }

    /// The request for a server's solve; options that need local data are refused.
    pub fn remote_request(&self) -> anyhow::Result<SolveRequest> {
        let prepared = self.prepare()?;
        if matches!(prepared.lambda, LambdaArg::Auto) {
            bail!("--lambda auto needs held-out statistics; with --connect give a number or rel:R");
        }
        if self.match_norm.is_some() {
            bail!("--match-norm is applied locally: solve from a state file (--state) to use it");
        }
        Ok(SolveRequest::new(&prepared.options, &self.prefix))
    }
}

pub struct Solved {
    pub head: Head,
    pub choice: Option<LambdaChoice>,
}

/// Solves (choosing λ on `validation` with `--lambda auto`), matches norms, writes `out`.
pub fn solve_and_write(
    prepared: Prepared,
    args: &HeadArgs,
    train: &Stats,
    validation: Option<&Stats>,
    out: &Path,
    mut extra: BTreeMap<String, String>,
) -> anyhow::Result<Solved> {
    let solver = Solver::new();
    let mut opts = prepared.options;
    let choice = match prepared.lambda {
        LambdaArg::Fixed(_) => None,
        LambdaArg::Auto => {
            let val = validation.context("--lambda auto needs held-out data")?;
            if val.samples() == 0 {
                bail!("the held-out data is empty; raise --val-fraction or pass other held-out data");
            }
            let choice =
                select_lambda(&solver, train, val, &opts, &prepared.grid).context("choosing lambda")?;
            opts.lambda = choice.best;
            Some(choice)
        }
    };
    let mut head = solver.solve(train, &opts).context("solving the head")?;
    if let Some(reference) = &prepared.norm_target {
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
    if let Some(c) = &choice {
        extra.insert("lambda_selection".into(), lambda_json(c));
    }
    if let (Some(p), Some(r)) = (&args.match_norm, &prepared.norm_target) {
        extra.insert("match_norm".into(), format!("{} ({})", p.display(), r.name));
    }
    export::write_head(out, &head, &args.prefix, &extra)?;
    Ok(Solved { head, choice })
}

/// Prints what `fit` and `solve --state` report after writing a head: `samples` (its own
/// line), the classes and dimension, the choice of λ, `time` (its own line) and the file.
/// `", N held out"` for the summary's samples line, or nothing without held-out statistics.
pub fn held_out_note(validation: Option<&headstart::stats::Stats>) -> String {
    validation
        .map(|v| format!(", {} held out", v.samples()))
        .unwrap_or_default()
}

pub fn print_summary(
    solved: &Solved,
    samples: &str,
    time: &str,
    out: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<()> {
    let (rows, dim) = (solved.head.rows(), solved.head.dim);
    outln!("samples: {samples}")?;
    outln!("classes: {rows} solved, dimension {dim}")?;
    print_choice(solved)?;
    outln!("time: {time}")?;
    outln!("wrote {} ({rows} × {dim}, prefix '{prefix}')", out.display())
}

/// Prints λ (with the auto choice and its edge warning), form and bias.
fn print_choice(solved: &Solved) -> anyhow::Result<()> {
    let info = &solved.head.info;
    match &solved.choice {
        None => outln!("lambda: {}", describe_lambda(info.lambda, info.lambda_rule))?,
        Some(c) => {
            outln!(
                "lambda: {} (auto: lowest held-out MSE {:.6} over {} grid values)",
                describe_lambda(info.lambda, c.best),
                c.best_mse,
                c.scores.len()
            )?;
            if c.on_edge {
                outln!("warning: the best lambda lies on the edge of the grid; widen it with --lambda-grid")?;
            }
        }
    }
    outln!("form: {}, bias: {}, scope: {}", info.form, info.bias, info.scope)
}

/// `0.05`, or `0.000123 (rel:0.01 × mean eigenvalue 0.0123)`.
pub fn describe_lambda(absolute: f64, rule: Lambda) -> String {
    match rule {
        Lambda::Absolute(_) => format!("{absolute}"),
        Lambda::Relative(r) if r > 0.0 => {
            format!("{absolute:.6e} ({rule} × mean eigenvalue {:.6e})", absolute / r)
        }
        Lambda::Relative(_) => format!("{absolute} ({rule})"),
    }
}

fn lambda_json(c: &LambdaChoice) -> String {
    let points: Vec<serde_json::Value> = c
        .scores
        .iter()
        .map(|s| {
            serde_json::json!([
                s.lambda.to_string(),
                s.absolute.is_finite().then_some(s.absolute),
                s.mse.as_ref().ok()
            ])
        })
        .collect();
    serde_json::json!({
        "best": c.best.to_string(),
        "best_absolute": c.best_absolute,
        "on_edge": c.on_edge,
        "grid_mse": points,
    })
    .to_string()
}
