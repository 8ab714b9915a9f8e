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
//! the root of L′(a) = (1/n) Σ_i [ Σ_k p_ik(a) v_ik − [y_i new] v_{i,y_i} ],
//! with p the softmax over all columns, found by Newton steps (L″ = mean Var_p v, v taken as 0
//! on the fixed columns) inside a bracket, with bisection as the safeguard. A sample that the new rows separate perfectly
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
    let sample = Sample::new(fixed, fixed_cols, new, new_cols, targets);
    let peak = new.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let reach = max_logit + fixed.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let upper = if peak > 0.0 { reach / peak } else { 1.0 };
    let (lo, hi) = (upper.min(1e-6), upper);
    let (scale, at_bound) = if sample.slope(hi).0 <= 0.0 {
        (hi, true)
    } else if sample.slope(lo).0 >= 0.0 {
        (lo, false)
    } else {
        (sample.root(lo, hi), false)
    };
    Ok(ScaleFit {
        scale,
        loss_before: sample.loss(1.0),
        loss_after: sample.loss(scale),
        at_bound,
    })
}

/// Where a sample's true column is.
#[derive(Clone, Copy)]
enum Target {
    /// A fixed column, with its logit (which does not depend on the scale).
    Fixed(f64),
    /// A new column.
    New(usize),
}

struct Sample<'a> {
    new: &'a [f64],
    new_cols: usize,
    /// Per sample: log Σ_k exp u_ik over the fixed columns (−∞ without any); it does not
    /// depend on the scale, so it is computed once.
    fixed_lse: Vec<f64>,
    targets: Vec<Target>,
}

/// One sample's softmax at scale a, over the fixed columns (through their log-sum-exp) and the
/// new ones: the largest logit, Σ exp(logit − largest), and Σ v·exp(·), Σ v²·exp(·) over the
/// new columns (v the new logits at a = 1).
struct Moments {
    top: f64,
    sum: f64,
    first: f64,
    second: f64,
}

impl<'a> Sample<'a> {
    fn new(fixed: &[f64], fixed_cols: usize, new: &'a [f64], new_cols: usize, targets: &[usize]) -> Self {
        let fixed_lse = (0..targets.len())
            .map(|i| {
                let u = &fixed[i * fixed_cols..(i + 1) * fixed_cols];
                let top = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if top == f64::NEG_INFINITY {
                    return top;
                }
                top + u.iter().map(|z| (z - top).exp()).sum::<f64>().ln()
            })
            .collect();
        let targets = targets
            .iter()
            .enumerate()
            .map(|(i, &t)| match t.checked_sub(fixed_cols) {
                Some(k) => Target::New(k),
                None => Target::Fixed(fixed[i * fixed_cols + t]),
            })
            .collect();
        Self {
            new,
            new_cols,
            fixed_lse,
            targets,
        }
    }

    fn len(&self) -> usize {
        self.targets.len()
    }

    /// Sample `i`'s new logits at a = 1.
    fn row(&self, i: usize) -> &[f64] {
        &self.new[i * self.new_cols..(i + 1) * self.new_cols]
    }

    fn moments(&self, i: usize, a: f64) -> Moments {
        let fixed = self.fixed_lse[i];
        let v = self.row(i);
        let top = v.iter().map(|z| a * z).fold(fixed, f64::max);
        let mut m = Moments {
            top,
            sum: (fixed - top).exp(),
            first: 0.0,
            second: 0.0,
        };
        for z in v {
            let e = (a * z - top).exp();
            m.sum += e;
            m.first += z * e;
            m.second += z * z * e;
        }
        m
    }

    /// Sample `i`'s target logit at scale `a`.
    fn picked(&self, i: usize, a: f64) -> f64 {
        match self.targets[i] {
            Target::Fixed(u) => u,
            Target::New(k) => a * self.row(i)[k],
        }
    }

    /// Mean cross-entropy at scale `a`.
    fn loss(&self, a: f64) -> f64 {
        let total: f64 = (0..self.len())
            .map(|i| {
                let m = self.moments(i, a);
                m.top + m.sum.ln() - self.picked(i, a)
            })
            .sum();
        total / self.len() as f64
    }

    /// L′(a) and L″(a): with p the softmax over all columns and v the new logits at a = 1
    /// (0 on the fixed columns), L′ = mean(E_p v − v_target) and L″ = mean(Var_p v).
    fn slope(&self, a: f64) -> (f64, f64) {
        let (mut first, mut second) = (0.0, 0.0);
        for i in 0..self.len() {
            let m = self.moments(i, a);
            let (mean, square) = (m.first / m.sum, m.second / m.sum);
            let own = match self.targets[i] {
                Target::Fixed(_) => 0.0,
                Target::New(k) => self.row(i)[k],
            };
            first += mean - own;
            second += (square - mean * mean).max(0.0);
        }
        let n = self.len() as f64;
        (first / n, second / n)
    }

    /// The root of L′ in (lo, hi), where L′(lo) < 0 < L′(hi). L is convex, so L′ rises
    /// through one root there. Newton steps on a, kept inside a bracket that every
    /// evaluation narrows; a bisection (on ln a) wherever a step would leave the bracket or
    /// does not shrink to half the step before last (as in Numerical Recipes' `rtsafe`).
    fn root(&self, mut lo: f64, mut hi: f64) -> f64 {
        let mut a = (lo * hi).sqrt();
        let (mut step, mut step_before) = (hi - lo, hi - lo);
        for _ in 0..200 {
            let (first, second) = self.slope(a);
            if first > 0.0 {
                hi = a;
            } else if first < 0.0 {
                lo = a;
            } else {
                return a;
            }
            let newton = a - first / second;
            let take_newton = second > 0.0
                && newton > lo
                && newton < hi
                && (2.0 * first).abs() <= (step_before * second).abs();
            step_before = step;
            let next = if take_newton { newton } else { (lo * hi).sqrt() };
            step = a - next;
            a = next;
            if step.abs() <= 1e-14 * a || hi - lo <= 1e-15 * hi {
                break;
            }
        }
        a
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

    /// L′(a) from the whole softmax, with no shortcut: the reference the fast slope and the
    /// Newton iteration are checked against.
    fn brute_slope(fixed: &[f64], fc: usize, new: &[f64], nc: usize, targets: &[usize], a: f64) -> f64 {
        let n = targets.len();
        (0..n)
            .map(|i| {
                let logits: Vec<f64> = fixed[i * fc..(i + 1) * fc]
                    .iter()
                    .copied()
                    .chain(new[i * nc..(i + 1) * nc].iter().map(|v| a * v))
                    .collect();
                let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logits.iter().map(|l| (l - top).exp()).sum();
                let expected: f64 = (0..nc)
                    .map(|k| new[i * nc + k] * (logits[fc + k] - top).exp())
                    .sum::<f64>()
                    / sum;
                expected
                    - if targets[i] >= fc {
                        new[i * nc + targets[i] - fc]
                    } else {
                        0.0
                    }
            })
            .sum::<f64>()
            / n as f64
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// On random samples (old logits up to ±40, new ones of either size, targets in both
        /// parts), the fitted scale is the root of the brute-force slope found by 200 bisection
        /// steps, to 1e-9 relative, and the losses match the brute-force loss to 1e-12.
        #[test]
        fn the_fitted_scale_is_the_root_of_the_brute_force_slope(
            seed in 0u64..u64::MAX, n in 1usize..120, fc in 0usize..7, nc in 1usize..6,
            spread in 0.01f64..40.0, new_size in 0.001f64..3.0,
        ) {
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            let fixed: Vec<f64> = (0..n * fc).map(|_| spread * (2.0 * next() - 1.0)).collect();
            let new: Vec<f64> = (0..n * nc).map(|_| new_size * (2.0 * next() - 1.0)).collect();
            // Mostly new targets, whose new logit leans positive, so the fit is not at a bound.
            let targets: Vec<usize> = (0..n).map(|_| (next() * (fc + nc) as f64) as usize).collect();
            let fit = fit_scale(&fixed, fc, &new, nc, &targets, 30.0).unwrap();
            let slope = |a: f64| brute_slope(&fixed, fc, &new, nc, &targets, a);
            let peak = new.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            let upper = (30.0 + fixed.iter().fold(0.0_f64, |m, v| m.max(v.abs()))) / peak;
            let (mut lo, mut hi) = (upper.min(1e-6).ln(), upper.ln());
            let want = if slope(hi.exp()) <= 0.0 {
                hi.exp()
            } else if slope(lo.exp()) >= 0.0 {
                lo.exp()
            } else {
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if slope(mid.exp()) > 0.0 { hi = mid } else { lo = mid }
                }
                (0.5 * (lo + hi)).exp()
            };
            proptest::prop_assert!((fit.scale - want).abs() <= 1e-9 * want, "{} vs {}", fit.scale, want);
            let brute = brute_loss(&fixed, fc, &new, nc, &targets, fit.scale);
            proptest::prop_assert!((fit.loss_after - brute).abs() <= 1e-12 * brute.abs().max(1.0));
        }
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
