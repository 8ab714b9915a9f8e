//! Calibrating new rows to the layer they join: one positive scale for their logits.
//!
//! LS rows regress targets of 1/C, so their logits are of order 1/C, while rows trained with
//! cross-entropy produce logits many times larger. Multiplying the new rows' weights and biases
//! by one factor a > 0 keeps their decision functions and sets their confidence. For a sample
//! with fixed logits u_i (the layer's other rows) and new-row logits v_i at a = 1, the mean
//! cross-entropy
//!
//! ```text
//! L(a) = (1/n) Σ_i [ log(Σ_k exp u_ik + Σ_k exp(a·v_ik)) − z_i(a) ],   z_i(a) = u_{i,y_i} or a·v_{i,y_i}
//! ```
//!
//! is convex in a (a log-sum-exp of affine functions minus an affine one), so its minimiser is
//! found exactly by bisection on the sign of L′(a) = (1/n) Σ_i [ Σ_k p_ik(a) v_ik − [y_i new] v_{i,y_i} ],
//! with p the softmax restricted to the new rows. A sample that the new rows separate perfectly
//! has its infimum at a → ∞; the scale is capped where the largest |a·v_ik| reaches `max_logit`.

/// The outcome of [`fit_scale`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleFit {
    /// The fitted factor a > 0 for the new rows' weights and biases.
    pub scale: f64,
    /// Mean cross-entropy on the sample at a = 1.
    pub loss_before: f64,
    /// Mean cross-entropy on the sample at the fitted a.
    pub loss_after: f64,
    /// Whether a stopped at its cap (the sample alone would push it higher).
    pub at_bound: bool,
}

/// Why a scale could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrateError {
    /// No sample.
    #[error("the calibration sample is empty")]
    Empty,
    /// A logit array does not have `rows × columns` entries.
    #[error("{what} logits: {len} values is not {rows} rows × {cols} columns")]
    Shape {
        /// "fixed" or "new".
        what: &'static str,
        /// Values given.
        len: usize,
        /// Rows expected (the sample size).
        rows: usize,
        /// Columns expected.
        cols: usize,
    },
    /// No new row to scale.
    #[error("there are no new rows to calibrate")]
    NoNewRows,
    /// A target column outside the logits.
    #[error("target {target} of sample row {row} is outside the {cols} logit columns")]
    Target {
        /// The sample row.
        row: usize,
        /// The target column.
        target: usize,
        /// Columns in all.
        cols: usize,
    },
    /// A NaN or infinite logit.
    #[error("{what} logit at sample row {row} is not finite")]
    NonFinite {
        /// "fixed" or "new".
        what: &'static str,
        /// The sample row.
        row: usize,
    },
    /// `max_logit` is not a positive finite number.
    #[error("max_logit must be a finite number > 0, got {0}")]
    MaxLogit(f64),
}

/// The scale of the new rows that minimises the mean cross-entropy on a sample.
///
/// `fixed` holds the logits of the layer's other rows (n × `fixed_cols`, row-major), `new` the
/// new rows' logits at scale 1 (n × `new_cols`), and `targets[i]` the true column of sample `i`
/// in the concatenation `[fixed | new]`. The scale is kept in [10⁻⁶, max_logit / max|v|].
///
/// # Errors
/// [`CalibrateError`]: an empty sample, mismatched lengths, a target outside the columns,
/// a non-finite logit, a bad `max_logit`.
///
/// # Examples
/// ```
/// use headstart::solve::fit_scale;
/// // One old row with logit 2; two new rows with small logits that rank the truth first.
/// let fixed = [2.0, 2.0, 2.0, 2.0];
/// let new = [0.3, -0.1, 0.2, 0.1, -0.2, 0.4, 0.1, 0.3];
/// let fit = fit_scale(&fixed, 1, &new, 2, &[1, 1, 2, 2], 30.0)?;
/// assert!(fit.scale > 1.0 && fit.loss_after < fit.loss_before);
/// # Ok::<(), headstart::solve::CalibrateError>(())
/// ```
pub fn fit_scale(
    fixed: &[f64],
    fixed_cols: usize,
    new: &[f64],
    new_cols: usize,
    targets: &[usize],
    max_logit: f64,
) -> Result<ScaleFit, CalibrateError> {
    let n = targets.len();
    if n == 0 {
        return Err(CalibrateError::Empty);
    }
    if new_cols == 0 {
        return Err(CalibrateError::NoNewRows);
    }
    if !(max_logit.is_finite() && max_logit > 0.0) {
        return Err(CalibrateError::MaxLogit(max_logit));
    }
    for (what, values, cols) in [("fixed", fixed, fixed_cols), ("new", new, new_cols)] {
        if values.len() != n * cols {
            return Err(CalibrateError::Shape {
                what,
                len: values.len(),
                rows: n,
                cols,
            });
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(CalibrateError::NonFinite { what, row: i / cols });
        }
    }
    let cols = fixed_cols + new_cols;
    if let Some((row, &target)) = targets.iter().enumerate().find(|(_, t)| **t >= cols) {
        return Err(CalibrateError::Target { row, target, cols });
    }
    let sample = Sample {
        fixed,
        fixed_cols,
        new,
        new_cols,
        targets,
    };
    let peak = new.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let upper = if peak > 0.0 { max_logit / peak } else { 1.0 };
    let (mut lo, mut hi) = (upper.min(1e-6).ln(), upper.ln());
    let (scale, at_bound) = if sample.slope(hi.exp()) <= 0.0 {
        (hi.exp(), true)
    } else if sample.slope(lo.exp()) >= 0.0 {
        (lo.exp(), false)
    } else {
        // Bisection on ln a: the slope's sign changes once because L is convex.
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if sample.slope(mid.exp()) > 0.0 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        ((0.5 * (lo + hi)).exp(), false)
    };
    Ok(ScaleFit {
        scale,
        loss_before: sample.loss(1.0),
        loss_after: sample.loss(scale),
        at_bound,
    })
}

struct Sample<'a> {
    fixed: &'a [f64],
    fixed_cols: usize,
    new: &'a [f64],
    new_cols: usize,
    targets: &'a [usize],
}

impl Sample<'_> {
    /// Sample `i`: its fixed logits, its new logits at a = 1, its target column.
    fn row(&self, i: usize) -> (&[f64], &[f64], usize) {
        (
            &self.fixed[i * self.fixed_cols..(i + 1) * self.fixed_cols],
            &self.new[i * self.new_cols..(i + 1) * self.new_cols],
            self.targets[i],
        )
    }

    /// The largest logit at scale `a` and Σ exp(logit − largest) over all columns.
    fn normaliser(u: &[f64], v: &[f64], a: f64) -> (f64, f64) {
        let top = u
            .iter()
            .copied()
            .chain(v.iter().map(|z| a * z))
            .fold(f64::NEG_INFINITY, f64::max);
        let sum = u
            .iter()
            .map(|z| (z - top).exp())
            .chain(v.iter().map(|z| (a * z - top).exp()))
            .sum();
        (top, sum)
    }

    /// Mean cross-entropy at scale `a`.
    fn loss(&self, a: f64) -> f64 {
        let total: f64 = (0..self.targets.len())
            .map(|i| {
                let (u, v, t) = self.row(i);
                let (top, sum) = Self::normaliser(u, v, a);
                let picked = if t < self.fixed_cols {
                    u[t]
                } else {
                    a * v[t - self.fixed_cols]
                };
                top + sum.ln() - picked
            })
            .sum();
        total / self.targets.len() as f64
    }

    /// L′(a).
    fn slope(&self, a: f64) -> f64 {
        let total: f64 = (0..self.targets.len())
            .map(|i| {
                let (u, v, t) = self.row(i);
                let (top, sum) = Self::normaliser(u, v, a);
                let expected: f64 = v.iter().map(|z| z * (a * z - top).exp()).sum::<f64>() / sum;
                let own = if t >= self.fixed_cols {
                    v[t - self.fixed_cols]
                } else {
                    0.0
                };
                expected - own
            })
            .sum();
        total / self.targets.len() as f64
    }
}
