//! Least-squares heads solved on demand from [`Stats`].
//!
//! Let N, G/N and μ_G be taken over every sample in the scope, and M (d × C) hold the means
//! of the C solved classes. With A = G/N + λI:
//!
//! - [`Form::Nc`] (default): W = (1/C)·Mᵀ A⁻¹ and b = (1/C)·1 − W μ_G (Harun & Kanan,
//!   Eq. 3, after Han, Papyan & Donoho). Without bias, b = 0.
//! - [`Form::Ridge`]: each class's one-hot indicator regressed on x with an unpenalised bias:
//!   w_c = (Σ + λI)⁻¹ (s_c/N − μ_G n_c/N), b_c = n_c/N − w_c·μ_G, Σ = G/N − μ_G μ_Gᵀ.
//!   Without bias, w_c = A⁻¹ s_c/N and b = 0.
//!
//! λ is added here, never stored. It is either absolute ([`Lambda::Absolute`], the paper's λ,
//! equal to the backbone's weight decay) or relative to the scale of the features
//! ([`Lambda::Relative`], the default): λ = r · tr(A₀)/d, where A₀ is the matrix λ is added to
//! (G/N, or Σ for ridge with a bias) and tr(A₀)/d its mean eigenvalue. A relative λ makes the
//! head scale-free: multiplying every feature by s > 0 divides W by s and leaves b, and so every
//! logit, unchanged. A [`Solver`] factors each (state version, λ, scope, centring) once with
//! faer's Cholesky and reuses the factor for any class subset. The derivations are in
//! `docs/math.md`.

mod calibrate;
mod lambda;

pub use calibrate::{CalibrateError, ScaleFit, fit_scale};

pub use lambda::{LambdaChoice, LambdaScore, default_lambda_grid, heldout_mse, select_lambda};

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use faer::linalg::solvers::{Llt, Solve};
use faer::{Mat, Side};

pub use crate::stats::Scope;
use crate::stats::{Moments, Stats};

/// Which least-squares head to solve. Text and JSON: `nc`, `ridge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// The neural-collapse LS head of Harun & Kanan (Eq. 3): W = (1/C)·Mᵀ(G/N + λI)⁻¹.
    #[default]
    Nc,
    /// Ridge regression of one-hot targets, bias unpenalised.
    Ridge,
}

macro_rules! text_enum {
    ($ty:ty, $what:literal, $($variant:path => $name:literal),+) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($variant => $name),+ })
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($name => Ok($variant),)+
                    other => Err(format!(concat!("unknown ", $what, " '{}', expected one of: {}"), other, [$($name),+].join(", "))) }
            }
        }
    };
}
text_enum!(Form, "form", Form::Nc => "nc", Form::Ridge => "ridge");
text_enum!(Scope, "scope", Scope::All => "all", Scope::Task => "task");

/// How λ is chosen: a fixed value, or a factor of the features' mean eigenvalue.
///
/// Text form (CLI, server, Python): `0.05` is absolute, `rel` the default relative factor
/// [`DEFAULT_RELATIVE_LAMBDA`], `rel:0.01` a given factor.
///
/// # Examples
/// ```
/// use headstart::solve::{Lambda, DEFAULT_RELATIVE_LAMBDA};
/// assert_eq!("0.05".parse::<Lambda>(), Ok(Lambda::Absolute(0.05)));
/// assert_eq!("rel".parse::<Lambda>(), Ok(Lambda::Relative(DEFAULT_RELATIVE_LAMBDA)));
/// assert_eq!("rel:1e-3".parse::<Lambda>(), Ok(Lambda::Relative(1e-3)));
/// assert_eq!(Lambda::Relative(0.5).resolve(4.0), 2.0); // 0.5 × mean eigenvalue 4
/// assert!("-1".parse::<Lambda>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lambda {
    /// λ itself, in the features' squared units (the paper's λ, the backbone's weight decay).
    Absolute(f64),
    /// λ = factor · tr(A₀)/d, the mean eigenvalue of the regularised matrix: scale-free.
    Relative(f64),
}

/// The relative λ factor used when none is given (`rel`): λ = 10⁻³ · tr(G/N)/d, chosen by
/// held-out accuracy and switch loss on the feature sets of `docs/results.md`.
///
/// Chosen by measurement on held-out data of several feature sets (`docs/results.md`).
pub const DEFAULT_RELATIVE_LAMBDA: f64 = 1e-3;

impl Default for Lambda {
    fn default() -> Self {
        Lambda::Relative(DEFAULT_RELATIVE_LAMBDA)
    }
}

impl Lambda {
    /// The number given, absolute or relative.
    pub fn value(self) -> f64 {
        match self {
            Lambda::Absolute(v) | Lambda::Relative(v) => v,
        }
    }

    /// The absolute λ for a matrix whose mean eigenvalue (trace / d) is `mean_eigenvalue`.
    pub fn resolve(self, mean_eigenvalue: f64) -> f64 {
        match self {
            Lambda::Absolute(v) => v,
            Lambda::Relative(r) => r * mean_eigenvalue,
        }
    }

    pub(crate) fn check(self) -> Result<(), SolveError> {
        let v = self.value();
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(SolveError::InvalidLambda { lambda: v })
        }
    }
}

impl From<f64> for Lambda {
    fn from(v: f64) -> Self {
        Lambda::Absolute(v)
    }
}

impl fmt::Display for Lambda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lambda::Absolute(v) => write!(f, "{v:?}"),
            Lambda::Relative(r) => write!(f, "rel:{r:?}"),
        }
    }
}

impl FromStr for Lambda {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let (relative, number) = match text {
            "rel" => return Ok(Lambda::default()),
            _ => match text.strip_prefix("rel:") {
                Some(rest) => (true, rest),
                None => (false, text),
            },
        };
        let v: f64 = number.parse().map_err(|_| {
            format!("lambda '{s}' is not a number, 'rel' or 'rel:FACTOR' (e.g. 0.05, rel, rel:0.01)")
        })?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("lambda must be a finite number ≥ 0, got {number}"));
        }
        Ok(if relative {
            Lambda::Relative(v)
        } else {
            Lambda::Absolute(v)
        })
    }
}

/// What to solve.
///
/// # Examples
/// ```
/// use headstart::solve::{Form, Scope, SolveOptions};
/// let opts = SolveOptions { form: Form::Ridge, scope: Scope::Task, lambda: 1e-3.into(),
///                           classes: Some(vec![4, 2]), ..SolveOptions::default() };
/// assert!(opts.bias);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SolveOptions {
    /// Which head.
    pub form: Form,
    /// Which samples.
    pub scope: Scope,
    /// λ ≥ 0, added to G/N (or Σ) at solve time: absolute, or relative (the default).
    pub lambda: Lambda,
    /// Whether to solve a bias (otherwise b = 0).
    pub bias: bool,
    /// Classes to solve, in output order; `None`: every class with samples in the scope.
    pub classes: Option<Vec<i64>>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            form: Form::Nc,
            scope: Scope::All,
            lambda: Lambda::default(),
            bias: true,
            classes: None,
        }
    }
}

/// Why a head could not be solved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SolveError {
    /// λ is negative, NaN or infinite.
    #[error("lambda must be a finite number ≥ 0, got {lambda}")]
    InvalidLambda {
        /// The value given.
        lambda: f64,
    },
    /// The scope holds no samples.
    #[error("no samples in scope '{scope}'")]
    NoSamples {
        /// The scope.
        scope: Scope,
    },
    /// No class to solve.
    #[error("no classes to solve in scope '{scope}'")]
    NoClasses {
        /// The scope.
        scope: Scope,
    },
    /// A requested class has no samples in the scope.
    #[error("class {class} has no samples in scope '{scope}' (classes there: {known})")]
    UnknownClass {
        /// The class id.
        class: i64,
        /// The scope.
        scope: Scope,
        /// The classes the scope does hold, abbreviated.
        known: String,
    },
    /// A class was requested twice.
    #[error("class {class} is requested more than once")]
    DuplicateClass {
        /// The class id.
        class: i64,
    },
    /// G/N + λI (or Σ + λI) is not numerically positive definite.
    #[error(
        "the {what} matrix + {lambda}·I of scope '{scope}' ({samples} samples, dimension {dim}) is not positive definite (pivot {pivot}); use lambda > 0 or a larger one"
    )]
    NotPositiveDefinite {
        /// "second-moment" (G/N) or "covariance" (Σ).
        what: &'static str,
        /// λ used.
        lambda: f64,
        /// The scope.
        scope: Scope,
        /// Samples in scope.
        samples: u64,
        /// Feature dimension.
        dim: usize,
        /// Index of the failing pivot.
        pivot: usize,
    },
    /// The solved weights are not finite (overflow).
    #[error("the solved head is not finite at lambda {lambda}; use a larger lambda")]
    NonFinite {
        /// λ used.
        lambda: f64,
    },
    /// Two states of different dimension were combined.
    #[error("dimension mismatch: head or state of dimension {left} against {right}")]
    Dimension {
        /// One dimension.
        left: usize,
        /// The other.
        right: usize,
    },
    /// Held-out statistics of another random-feature expansion than the training ones.
    #[error("the held-out statistics are {right} but the training statistics are {left}")]
    Expansion {
        /// The training statistics' expansion, as text (`not expanded` without one).
        left: String,
        /// The held-out statistics'.
        right: String,
    },
}

/// What a head was solved from, for reproducibility.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadInfo {
    /// The form.
    pub form: Form,
    /// The scope.
    pub scope: Scope,
    /// The absolute λ added to the matrix.
    pub lambda: f64,
    /// How λ was given: for [`Lambda::Relative`], `lambda` = factor × the mean eigenvalue.
    pub lambda_rule: Lambda,
    /// Whether a bias was solved.
    pub bias: bool,
    /// Samples N in the scope.
    pub samples: u64,
    /// Samples of each solved class in the scope, in row order.
    pub class_counts: Vec<u64>,
    /// The random-feature expansion the head's inputs go through, if the statistics had one:
    /// the head then takes z = ReLU(x·R) (`dim` = M), and exported files carry the spec.
    pub expansion: Option<crate::expand::Expansion>,
}

/// A solved linear head: `logits = weight · x + bias`, row `i` for class `class_ids[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// C × d weights, row-major.
    pub weight: Vec<f64>,
    /// C biases.
    pub bias: Vec<f64>,
    /// The class id of each row.
    pub class_ids: Vec<i64>,
    /// Feature dimension d.
    pub dim: usize,
    /// How it was solved.
    pub info: HeadInfo,
}

impl Head {
    /// Number of rows (classes).
    pub fn rows(&self) -> usize {
        self.class_ids.len()
    }

    /// The weight row of row index `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.weight[i * self.dim..(i + 1) * self.dim]
    }

    /// The logits `W x + b` of one feature vector.
    ///
    /// # Panics
    /// If `x.len() != dim`.
    pub fn logits(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.dim, "feature vector has the wrong dimension");
        (0..self.rows())
            .map(|i| dot(self.row(i), x) + self.bias[i])
            .collect()
    }

    /// The class whose logit is largest.
    pub fn predict(&self, x: &[f64]) -> i64 {
        let logits = self.logits(x);
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        self.class_ids[best]
    }

    /// The median Euclidean norm of the weight rows (0 for an empty head).
    pub fn median_row_norm(&self) -> f64 {
        median_row_norm(&self.weight, self.dim)
    }

    /// Scales each row (and its bias) so that every weight row has Euclidean norm `target`,
    /// e.g. the median row norm of a head trained with cross-entropy. Zero rows stay zero.
    ///
    /// # Examples
    /// ```
    /// use headstart::{stats::Stats, solve::{Solver, SolveOptions}};
    /// let mut s = Stats::new(2);
    /// s.update(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 0.2], &[0, 1, 0])?;
    /// let mut head = Solver::new().solve(&s, &SolveOptions::default())?;
    /// head.match_norm(3.0);
    /// assert!((head.median_row_norm() - 3.0).abs() < 1e-12);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn match_norm(&mut self, target: f64) {
        for i in 0..self.rows() {
            let norm = dot(self.row(i), self.row(i)).sqrt();
            if norm > 0.0 {
                let scale = target / norm;
                self.weight[i * self.dim..(i + 1) * self.dim]
                    .iter_mut()
                    .for_each(|w| *w *= scale);
                self.bias[i] *= scale;
            }
        }
    }
}

/// The median Euclidean norm of the rows of a row-major matrix with `dim` columns.
pub fn median_row_norm(weight: &[f64], dim: usize) -> f64 {
    let mut norms: Vec<f64> = weight.chunks_exact(dim).map(|r| dot(r, r).sqrt()).collect();
    if norms.is_empty() {
        return 0.0;
    }
    norms.sort_by(f64::total_cmp);
    let m = norms.len();
    if m % 2 == 1 {
        norms[m / 2]
    } else {
        0.5 * (norms[m / 2 - 1] + norms[m / 2])
    }
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Identifies one factorisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FactorKey {
    version: u64,
    lambda_relative: bool,
    lambda_bits: u64,
    scope: Scope,
    centred: bool,
}

/// The Cholesky factor of (G/N or Σ) + λI for one scope, with that scope's N and mean.
struct Factor {
    llt: Llt<f64>,
    /// The absolute λ that was added.
    lambda: f64,
    samples: u64,
    mean: Vec<f64>,
}

/// How many factorisations a [`Solver`] keeps.
const CACHE_ENTRIES: usize = 8;

/// Solves heads, caching one Cholesky factor per (state version, λ, scope, centring).
///
/// A `Solver` is `Sync`: share it between threads. Solving the same state again with another
/// class subset reuses the factor; any change to the state gives it a new version.
///
/// # Examples
/// ```
/// use headstart::{stats::Stats, solve::{Solver, SolveOptions}};
/// let mut s = Stats::new(2);
/// s.update(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[0, 1, 2])?;
/// let solver = Solver::new();
/// let all = solver.solve(&s, &SolveOptions::default())?;
/// let two = solver.solve(&s, &SolveOptions { classes: Some(vec![2, 0]), ..Default::default() })?;
/// assert_eq!((all.rows(), two.class_ids.clone()), (3, vec![2, 0]));
/// assert_eq!(solver.factorisations(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Solver {
    cache: Mutex<Vec<(FactorKey, Arc<Factor>)>>,
    factorisations: std::sync::atomic::AtomicUsize,
}

impl Solver {
    /// A solver with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many Cholesky factorisations this solver has computed.
    pub fn factorisations(&self) -> usize {
        self.factorisations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Solves the head described by `opts` from `stats`.
    ///
    /// # Errors
    /// See [`SolveError`]: an invalid λ, an empty scope, an unknown or repeated class, a
    /// matrix that is not positive definite (with a hint to raise λ), non-finite weights.
    pub fn solve(&self, stats: &Stats, opts: &SolveOptions) -> Result<Head, SolveError> {
        opts.lambda.check()?;
        let segments = stats.segments(opts.scope == Scope::Task);
        let samples: u64 = segments.iter().map(|m| m.n).sum();
        let n: f64 = segments.iter().map(|m| m.weight).sum();
        if samples == 0 {
            return Err(SolveError::NoSamples { scope: opts.scope });
        }
        let classes = resolve_classes(&segments, opts)?;
        let centred = opts.form == Form::Ridge && opts.bias;
        let key = FactorKey {
            version: stats.version(),
            lambda_relative: matches!(opts.lambda, Lambda::Relative(_)),
            lambda_bits: opts.lambda.value().to_bits(),
            scope: opts.scope,
            centred,
        };
        let factor = self.factor(key, &segments, stats.dim(), opts)?;
        let lambda = factor.lambda;

        let dim = stats.dim();
        let c = classes.len();
        let mut rhs = Mat::<f64>::zeros(dim, c);
        let mut counts = Vec::with_capacity(c);
        let mut weights = Vec::with_capacity(c);
        for (k, &id) in classes.iter().enumerate() {
            let (weight, sum) = stats
                .class_sum(id, opts.scope)
                .expect("resolve_classes checked presence");
            let count = segments
                .iter()
                .filter_map(|m| m.classes.get(&id))
                .map(|m| m.count)
                .sum();
            counts.push(count);
            weights.push(weight);
            let col = rhs
                .col_mut(k)
                .try_as_col_major_mut()
                .expect("owned columns are contiguous")
                .as_slice_mut();
            for j in 0..dim {
                col[j] = match (opts.form, opts.bias) {
                    (Form::Nc, _) => sum[j] / weight / c as f64,
                    (Form::Ridge, true) => (sum[j] - factor.mean[j] * weight) / n,
                    (Form::Ridge, false) => sum[j] / n,
                };
            }
        }
        factor.llt.solve_in_place(rhs.as_mut());

        let mut weight = vec![0.0; c * dim];
        for k in 0..c {
            for j in 0..dim {
                weight[k * dim + j] = rhs[(j, k)];
            }
        }
        let bias: Vec<f64> = (0..c)
            .map(|k| {
                if !opts.bias {
                    return 0.0;
                }
                let wmu = dot(&weight[k * dim..(k + 1) * dim], &factor.mean);
                match opts.form {
                    Form::Nc => 1.0 / c as f64 - wmu,
                    Form::Ridge => weights[k] / n - wmu,
                }
            })
            .collect();
        if !weight.iter().chain(&bias).all(|v| v.is_finite()) {
            return Err(SolveError::NonFinite { lambda });
        }
        Ok(Head {
            weight,
            bias,
            class_ids: classes,
            dim,
            info: HeadInfo {
                form: opts.form,
                scope: opts.scope,
                lambda,
                lambda_rule: opts.lambda,
                bias: opts.bias,
                samples: factor.samples,
                class_counts: counts,
                expansion: stats.expansion().copied(),
            },
        })
    }

    fn factor(
        &self,
        key: FactorKey,
        segments: &[&Moments],
        dim: usize,
        opts: &SolveOptions,
    ) -> Result<Arc<Factor>, SolveError> {
        if let Some((_, f)) = self
            .cache
            .lock()
            .expect("solver cache poisoned")
            .iter()
            .find(|(k, _)| *k == key)
        {
            return Ok(Arc::clone(f));
        }
        let factor = Arc::new(factorise(segments, dim, opts, key.centred)?);
        self.factorisations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cache = self.cache.lock().expect("solver cache poisoned");
        if cache.len() >= CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((key, Arc::clone(&factor)));
        Ok(factor)
    }
}

/// Builds (G/N or Σ) + λI for the scope and factors it.
fn factorise(
    segments: &[&Moments],
    dim: usize,
    opts: &SolveOptions,
    centred: bool,
) -> Result<Factor, SolveError> {
    let samples: u64 = segments.iter().map(|m| m.n).sum();
    let n: f64 = segments.iter().map(|m| m.weight).sum();
    let mean: Vec<f64> = (0..dim)
        .map(|j| segments.iter().map(|seg| seg.sum[j]).sum::<f64>() / n)
        .collect();

    // Copy the first non-empty segment rather than adding it to zeros (d² fewer reads).
    let mut filled = segments.iter().filter(|seg| seg.n > 0);
    let mut a = filled
        .next()
        .map_or_else(|| Mat::zeros(dim, dim), |seg| seg.gram.clone());
    for seg in filled {
        a += &seg.gram;
    }
    let mut trace = 0.0;
    for j in 0..dim {
        for i in j..dim {
            let mut v = a[(i, j)] / n;
            if centred {
                v -= mean[i] * mean[j];
            }
            if i == j {
                trace += v;
            }
            a[(i, j)] = v;
        }
    }
    let lambda = opts.lambda.resolve(trace.max(0.0) / dim as f64);
    let mut max_diag: f64 = 0.0;
    for j in 0..dim {
        a[(j, j)] += lambda;
        max_diag = max_diag.max(a[(j, j)]);
    }
    let not_pd = |pivot| SolveError::NotPositiveDefinite {
        what: if centred { "covariance" } else { "second-moment" },
        lambda,
        scope: opts.scope,
        samples,
        dim,
        pivot,
    };
    let llt = a.llt(Side::Lower).map_err(|e| match e {
        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => not_pd(index),
    })?;
    // A pivot that is positive only through rounding means a numerically singular matrix.
    let tiny = max_diag * dim as f64 * f64::EPSILON;
    let l = llt.L();
    if let Some(pivot) = (0..dim).find(|&i| l[(i, i)] * l[(i, i)] <= tiny) {
        return Err(not_pd(pivot));
    }
    Ok(Factor {
        llt,
        lambda,
        samples,
        mean,
    })
}

/// The class ids to solve, checked against the scope.
fn resolve_classes(segments: &[&Moments], opts: &SolveOptions) -> Result<Vec<i64>, SolveError> {
    let present: BTreeSet<i64> = segments.iter().flat_map(|m| m.classes.keys().copied()).collect();
    let classes = match &opts.classes {
        None => present.iter().copied().collect(),
        Some(ids) => {
            let mut seen = BTreeSet::new();
            for &class in ids {
                if !seen.insert(class) {
                    return Err(SolveError::DuplicateClass { class });
                }
                if !present.contains(&class) {
                    return Err(SolveError::UnknownClass {
                        class,
                        scope: opts.scope,
                        known: abbreviate(&present),
                    });
                }
            }
            ids.clone()
        }
    };
    if classes.is_empty() {
        return Err(SolveError::NoClasses { scope: opts.scope });
    }
    Ok(classes)
}

fn abbreviate(ids: &BTreeSet<i64>) -> String {
    let shown: Vec<String> = ids.iter().take(12).map(i64::to_string).collect();
    let more = ids.len().saturating_sub(12);
    if ids.is_empty() {
        "none".into()
    } else if more > 0 {
        format!("{} … and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
