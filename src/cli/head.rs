//! The solve options shared by `fit` and `solve`, and solving + writing a head.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use headstart::export::{self, WeightMatrix};
use headstart::net::SolveRequest;
use headstart::solve::{
    Form, Head, LambdaChoice, Scope, SolveOptions, Solver, default_lambda_grid, select_lambda,
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
    /// λ ≥ 0, or `auto` to pick it on held-out data.
    #[arg(long, default_value = "0.05", allow_hyphen_values = true)]
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
    /// With --lambda auto: the λ grid, comma-separated (default: 1e-6 … 1e2).
    #[arg(long)]
    pub lambda_grid: Option<String>,
    /// Scale each row to the median row norm of this existing head (safetensors).
    #[arg(long)]
    pub match_norm: Option<PathBuf>,
    /// The weight tensor to read from --match-norm (default: the only `*weight` 2-D tensor).
    #[arg(long, requires = "match_norm")]
    pub match_norm_tensor: Option<String>,
}

pub enum Lambda {
    Fixed(f64),
    Auto,
}

/// The options checked before any long work, so that a typo fails fast.
pub struct Prepared {
    pub lambda: Lambda,
    pub options: SolveOptions,
    pub grid: Vec<f64>,
    pub norm_target: Option<WeightMatrix>,
}

impl HeadArgs {
    pub fn prepare(&self) -> anyhow::Result<Prepared> {
        let lambda = match self.lambda.as_str() {
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
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| anyhow::anyhow!("--lambda-grid: '{v}' is not a number"))
                })
                .collect::<anyhow::Result<Vec<f64>>>()?,
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
                Lambda::Fixed(v) => v,
                Lambda::Auto => 0.0,
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
        if matches!(prepared.lambda, Lambda::Auto) {
            bail!("--lambda auto needs held-out statistics; with --connect give a number");
        }
        if self.match_norm.is_some() {
            bail!("--match-norm is applied locally: solve from a state file (--state) to use it");
        }
        Ok(SolveRequest {
            form: self.form.to_string(),
            bias: !self.no_bias,
            lambda: prepared.options.lambda,
            scope: self.scope.to_string(),
            classes: prepared.options.classes,
            prefix: self.prefix.clone(),
        })
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
        Lambda::Fixed(_) => None,
        Lambda::Auto => {
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

/// Prints λ (with the auto choice and its edge warning), form and bias.
pub fn print_choice(solved: &Solved) {
    let info = &solved.head.info;
    match &solved.choice {
        None => println!("lambda: {}", info.lambda),
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
    println!("form: {}, bias: {}, scope: {}", info.form, info.bias, info.scope);
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
