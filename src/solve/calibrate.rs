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
//! has its infimum at a → ∞, so the scale is capped: the largest |a·v_ik| on the sample may
//! exceed the largest |u_ik| by at most `max_logit`. The cap is relative to the fixed logits
//! because rows that were trained for long can be confident far beyond any fixed bound: new rows
//! must be able to outbid them on their own classes.

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
/// in the concatenation `[fixed | new]`. The scale is kept in
/// [10⁻⁶, (max_logit + max|u|) / max|v|], u the fixed logits and v the new ones.
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
    let reach = max_logit + fixed.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let upper = if peak > 0.0 { reach / peak } else { 1.0 };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean cross-entropy at scale `a`, computed directly (softmax over the whole row).
    fn brute_loss(fixed: &[f64], fc: usize, new: &[f64], nc: usize, targets: &[usize], a: f64) -> f64 {
        let n = targets.len();
        (0..n)
            .map(|i| {
                let logits: Vec<f64> = fixed[i * fc..(i + 1) * fc]
                    .iter()
                    .copied()
                    .chain(new[i * nc..(i + 1) * nc].iter().map(|v| a * v))
                    .collect();
                let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
                lse - logits[targets[i]]
            })
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn the_fitted_scale_is_the_minimum_of_a_fine_grid() {
        // Two fixed columns, two new ones; a mix of old and new targets and one wrong new row.
        let fixed = [1.0, -0.5, 0.2, 0.8, -0.3, 0.1, 0.5, 0.4, 0.0, 0.2];
        let new = [0.3, -0.2, -0.1, 0.4, 0.2, 0.1, 0.05, 0.3, -0.2, 0.25];
        let targets = [0, 2, 3, 1, 3];
        let fit = fit_scale(&fixed, 2, &new, 2, &targets, 30.0).unwrap();
        assert!(!fit.at_bound);
        let best = (0..4000)
            .map(|k| 10f64.powf(-2.0 + 4.0 * k as f64 / 4000.0))
            .map(|a| brute_loss(&fixed, 2, &new, 2, &targets, a))
            .fold(f64::INFINITY, f64::min);
        let at_fit = brute_loss(&fixed, 2, &new, 2, &targets, fit.scale);
        assert!(at_fit <= best + 1e-12, "{at_fit} > {best}");
        assert!((at_fit - fit.loss_after).abs() < 1e-12);
        assert!((brute_loss(&fixed, 2, &new, 2, &targets, 1.0) - fit.loss_before).abs() < 1e-12);
    }

    #[test]
    fn a_separable_sample_stops_max_logit_beyond_the_largest_fixed_logit() {
        // The new rows rank every target first: the loss falls for ever as a grows.
        let fixed = [12.0, 5.0];
        let new = [0.5, -0.5, -0.4, 0.6];
        let fit = fit_scale(&fixed, 1, &new, 2, &[1, 2], 10.0).unwrap();
        assert!(fit.at_bound);
        // max |a·v| = 0.6·a reaches 10 + max|u| = 22.
        assert!((fit.scale * 0.6 - 22.0).abs() < 1e-9, "{}", fit.scale);
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(fit_scale(&[], 1, &[], 1, &[], 30.0), Err(CalibrateError::Empty));
        assert!(matches!(
            fit_scale(&[1.0], 1, &[f64::NAN], 1, &[0], 30.0),
            Err(CalibrateError::NonFinite { what: "new", row: 0 })
        ));
        assert!(matches!(
            fit_scale(&[1.0], 1, &[1.0], 1, &[2], 30.0),
            Err(CalibrateError::Target {
                row: 0,
                target: 2,
                cols: 2
            })
        ));
        assert_eq!(
            fit_scale(&[1.0], 1, &[1.0], 1, &[0], 0.0),
            Err(CalibrateError::MaxLogit(0.0))
        );
    }
}
