//! Choosing λ from held-out statistics, with no stored samples.
//!
//! For a head (W, b) over classes c and a held-out state V (N_v, G_v, s_v, per-class s_{v,c},
//! n_{v,c}), the mean squared error to one-hot targets over the solved classes is
//!
//! ```text
//! N_v·MSE = Σ_c w_cᵀ G_v w_c + 2 Σ_c b_c w_c·s_v + N_v Σ_c b_c² − 2 Σ_c (w_c·s_{v,c} + b_c n_{v,c}) + Σ_c n_{v,c}
//! ```
//!
//! (a held-out sample of a class outside the head has the all-zero target). Every term is a
//! statistic of V, so the MSE is exact up to rounding.

use faer::Mat;

use super::{Head, Lambda, Scope, SolveError, SolveOptions, Solver, dot};
use crate::stats::Stats;

/// One point of the λ grid.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaScore {
    /// λ, as given in the grid.
    pub lambda: Lambda,
    /// The absolute λ it resolved to (NaN where the head could not be solved).
    pub absolute: f64,
    /// Held-out MSE, or why the head could not be solved at this λ.
    pub mse: Result<f64, String>,
}

/// The outcome of [`select_lambda`].
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaChoice {
    /// The λ with the lowest held-out MSE, as given in the grid.
    pub best: Lambda,
    /// The absolute λ it resolved to on the training statistics.
    pub best_absolute: f64,
    /// Its MSE.
    pub best_mse: f64,
    /// Every grid point, in grid order.
    pub scores: Vec<LambdaScore>,
    /// Whether the best λ is the grid's smallest or largest value (widen the grid).
    pub on_edge: bool,
}

/// The default grid, scale-free: relative factors 1, 2 and 5 times each power of ten from
/// 10⁻⁶ to 10² (λ = factor × the mean eigenvalue, see [`Lambda::Relative`]).
///
/// # Examples
/// ```
/// use headstart::solve::{Lambda, default_lambda_grid};
/// let grid = default_lambda_grid();
/// assert_eq!((grid.len(), grid[0], grid[24]), (25, Lambda::Relative(1e-6), Lambda::Relative(1e2)));
/// ```
pub fn default_lambda_grid() -> Vec<Lambda> {
    let mut grid: Vec<f64> = (-6..2)
        .flat_map(|e| [1, 2, 5].map(|m| format!("{m}e{e}").parse().expect("a decimal literal")))
        .collect();
    grid.push(1e2);
    grid.into_iter().map(Lambda::Relative).collect()
}

/// The exact mean squared error of `head` on the held-out samples summarised by `val`
/// (all its samples), to one-hot targets over the head's classes.
///
/// # Errors
/// [`SolveError::Dimension`] if the dimensions differ, [`SolveError::NoSamples`] if `val`
/// is empty.
pub fn heldout_mse(head: &Head, val: &Stats) -> Result<f64, SolveError> {
    if head.dim != val.dim() {
        return Err(SolveError::Dimension {
            left: head.dim,
            right: val.dim(),
        });
    }
    let (nv, sum) = val.sum(Scope::All);
    if nv <= 0.0 {
        return Err(SolveError::NoSamples { scope: Scope::All });
    }
    let d = head.dim;
    let c = head.rows();
    let g = val.gram(Scope::All);
    let wt = Mat::<f64>::from_fn(d, c, |j, k| head.weight[k * d + j]);
    let gw = &g * &wt;
    let mut total = 0.0;
    for k in 0..c {
        let w = head.row(k);
        let b = head.bias[k];
        let quad: f64 = (0..d).map(|j| w[j] * gw[(j, k)]).sum();
        let (count, class_sum) = val
            .class_sum(head.class_ids[k], Scope::All)
            .unwrap_or((0.0, vec![0.0; d]));
        total += quad + 2.0 * b * dot(w, &sum) + nv * b * b - 2.0 * (dot(w, &class_sum) + b * count) + count;
    }
    Ok(total / nv)
}

/// Solves `opts` at every λ in `grid` on `train` and scores each head on `val`.
///
/// # Errors
/// [`SolveError::InvalidLambda`] for a bad grid value, [`SolveError::Dimension`] for states
/// of different dimension, and the last solve error if no grid point could be solved.
///
/// # Examples
/// ```
/// use headstart::{stats::Stats, solve::{Lambda, Solver, SolveOptions, select_lambda}};
/// let mut train = Stats::new(1);
/// train.update(&[1.0f64, 1.1, -1.0, -0.9], &[0, 0, 1, 1])?;
/// let mut val = Stats::new(1);
/// val.update(&[0.9f64, -1.2], &[0, 1])?;
/// let grid = [1e-3, 1e-1, 10.0].map(Lambda::Absolute);
/// let choice = select_lambda(&Solver::new(), &train, &val, &SolveOptions::default(), &grid)?;
/// assert_eq!(choice.scores.len(), 3);
/// assert!(choice.best_mse <= choice.scores.iter().filter_map(|s| s.mse.clone().ok()).fold(f64::MAX, f64::min));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn select_lambda(
    solver: &Solver,
    train: &Stats,
    val: &Stats,
    opts: &SolveOptions,
    grid: &[Lambda],
) -> Result<LambdaChoice, SolveError> {
    if train.dim() != val.dim() {
        return Err(SolveError::Dimension {
            left: train.dim(),
            right: val.dim(),
        });
    }
    if train.expansion() != val.expansion() {
        let text = |e: Option<&crate::expand::Expansion>| {
            e.map_or_else(|| "not expanded".to_string(), |e| format!("expanded by {e}"))
        };
        return Err(SolveError::Expansion {
            left: text(train.expansion()),
            right: text(val.expansion()),
        });
    }
    for lambda in grid {
        lambda.check()?;
    }
    let mut scores = Vec::with_capacity(grid.len());
    let mut best: Option<(usize, f64)> = None;
    let mut last_error = None;
    for (i, &lambda) in grid.iter().enumerate() {
        let attempt = solver
            .solve(
                train,
                &SolveOptions {
                    lambda,
                    ..opts.clone()
                },
            )
            .and_then(|head| Ok((head.info.lambda, heldout_mse(&head, val)?)));
        match attempt {
            Ok((absolute, mse)) => {
                if best.is_none_or(|(_, b)| mse < b) {
                    best = Some((i, mse));
                }
                scores.push(LambdaScore {
                    lambda,
                    absolute,
                    mse: Ok(mse),
                });
            }
            Err(e) => {
                scores.push(LambdaScore {
                    lambda,
                    absolute: f64::NAN,
                    mse: Err(e.to_string()),
                });
                last_error = Some(e);
            }
        }
    }
    match best {
        Some((i, best_mse)) => Ok(LambdaChoice {
            best: grid[i],
            best_absolute: scores[i].absolute,
            best_mse,
            scores,
            on_edge: i == 0 || i + 1 == grid.len(),
        }),
        None => Err(last_error.unwrap_or(SolveError::NoSamples { scope: opts.scope })),
    }
}
