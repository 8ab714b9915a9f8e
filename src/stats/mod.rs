//! The additive statistics: an exact, mergeable monoid.
//!
//! [`Stats`] keeps, for a feature dimension `d` fixed at creation, the sample weight N, the
//! Gram matrix G = Σ x xᵀ (lower triangle, f64), the global sum Σ x, and per-class sums and
//! weights for arbitrary `i64` class ids. Everything is a sum over samples, so two states
//! [`merge`](Stats::merge) exactly (up to f64 rounding), the empty state is the identity, and
//! [`retract`](Stats::retract) subtracts what [`update`](Stats::update) added.
//!
//! Every sample enters with weight 1, so until a [`decay`](Stats::decay) the weights equal
//! the sample counts. `decay(γ)` multiplies every sum and weight by γ: statistics from an
//! older backbone fade as in recursive least squares with a forgetting factor. The counts of
//! samples accumulated ([`samples`](Stats::samples)) stay exact integers beside the weights.
//!
//! The statistics are kept in two segments: what arrived before the last
//! [`begin_task`](Stats::begin_task) and what arrived since. A solve with scope `all` adds the
//! two; scope `task` uses the second alone. Each sample is accumulated once, so the marker
//! costs nothing per update.

mod batch;
mod gram;

pub use batch::{Batch, BatchError, Feature, Features, MAX_ABS_FEATURE, validate_batch};
pub use gram::Precision;
pub(crate) use gram::{CHUNK_ROWS, Prepared};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use faer::Mat;

use gram::Scratch;

use crate::expand::{Expansion, RandomFeatures};

/// The largest feature dimension a state may have: its Gram matrix alone then takes 32 GiB.
/// Inputs that declare more (a file's columns, a state file's header) are refused with an
/// error rather than attempted.
pub const MAX_DIM: usize = 1 << 16;

/// The threads a [`Stats`] uses for its products unless told otherwise: the available
/// parallelism of this process (its CPU affinity and cgroup quota included), at least 1.
///
/// # Examples
/// ```
/// assert!(headstart::stats::default_threads() >= 1);
/// ```
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Source of state versions, unique across all [`Stats`] values in the process.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed)
}

/// Why a [`Stats::retract`] was refused. A refused retraction changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetractError {
    /// The batch itself is malformed.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The batch holds a class the current task segment has never seen.
    #[error("cannot retract class {class}: it has no samples in the current task segment")]
    UnknownClass {
        /// The class id.
        class: i64,
    },
    /// The batch holds more samples of a class than the current task segment has.
    #[error(
        "cannot retract {retracting} samples of class {class}: the current task segment holds only {have}"
    )]
    TooFewSamples {
        /// The class id.
        class: i64,
        /// Samples of that class in the segment.
        have: u64,
        /// Samples of that class in the batch.
        retracting: u64,
    },
    /// The class's weight (shrunk by [`Stats::decay`]) is less than the batch's, each of
    /// whose samples weighs 1: retracting it would leave a negative weight.
    #[error(
        "cannot retract {retracting} samples of class {class}: after decay the current task segment holds a weight of only {weight} (each retracted sample weighs 1)"
    )]
    TooLittleWeight {
        /// The class id.
        class: i64,
        /// The class's weight in the segment.
        weight: f64,
        /// Samples of that class in the batch.
        retracting: u64,
    },
}

/// Why a [`Stats::decay`] was refused. A refused decay changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecayError {
    /// The factor is not in (0, 1].
    #[error("decay factor {gamma} is not in (0, 1]: it must be finite, positive and at most 1")]
    Factor {
        /// The factor given.
        gamma: f64,
    },
    /// The decay would shrink a weight below [`MIN_WEIGHT`], where f64 loses the statistics.
    #[error(
        "decay by {gamma} would shrink the weight of class {class} to {weight:e}, below the smallest kept weight {MIN_WEIGHT:e}; rebuild the statistics instead"
    )]
    Underflow {
        /// The factor given.
        gamma: f64,
        /// The class with the smallest weight.
        class: i64,
        /// Its weight after the decay.
        weight: f64,
    },
}

/// The smallest class weight a [`Stats`] keeps. A retraction that leaves a class lighter
/// than this forgets the class, and a [`decay`](Stats::decay) that would go below it is
/// refused (a fresh sample weighs 1).
pub const MIN_WEIGHT: f64 = 1e-9;

/// Why two states cannot be merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The states have different feature dimensions.
    #[error("cannot merge states of different dimensions: {left} and {right}")]
    Dimension {
        /// Dimension of the receiving state.
        left: usize,
        /// Dimension of the other state.
        right: usize,
    },
    /// The states expand their raw features differently (or one does not expand them).
    #[error("cannot merge states with different expansions: {left} and {right}")]
    Expansion {
        /// The receiving state's expansion, as text (`none` without one).
        left: String,
        /// The other state's.
        right: String,
    },
}

fn describe(expansion: Option<&Expansion>) -> String {
    expansion.map_or_else(|| "none".to_string(), |e| e.to_string())
}

/// Which samples a question about the state covers. Text and JSON: `all`, `task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every sample.
    #[default]
    All,
    /// Only samples since the last [`Stats::begin_task`].
    Task,
}

/// Per-class accumulators.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClassMoments {
    /// Samples accumulated (added minus retracted).
    pub(crate) count: u64,
    /// Their total weight: `count` until a decay.
    pub(crate) weight: f64,
    pub(crate) sum: Vec<f64>,
}

/// One segment of the statistics (sums over a set of samples).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Moments {
    /// Samples accumulated (added minus retracted).
    pub(crate) n: u64,
    /// Their total weight N: `n` until a decay.
    pub(crate) weight: f64,
    /// G = Σ x xᵀ; only the lower triangle (diagonal included) is kept up to date.
    pub(crate) gram: Mat<f64>,
    pub(crate) sum: Vec<f64>,
    pub(crate) classes: BTreeMap<i64, ClassMoments>,
}

impl Moments {
    fn new(dim: usize) -> Self {
        Moments {
            n: 0,
            weight: 0.0,
            gram: Mat::zeros(dim, dim),
            sum: vec![0.0; dim],
            classes: BTreeMap::new(),
        }
    }

    fn clear(&mut self) {
        let dim = self.sum.len();
        *self = Moments::new(dim);
    }

    fn add(&mut self, other: &Moments) {
        self.n += other.n;
        self.weight += other.weight;
        self.gram += &other.gram;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (&id, class) in &other.classes {
            match self.classes.get_mut(&id) {
                Some(mine) => {
                    mine.count += class.count;
                    mine.weight += class.weight;
                    for (a, b) in mine.sum.iter_mut().zip(&class.sum) {
                        *a += b;
                    }
                }
                None => {
                    self.classes.insert(id, class.clone());
                }
            }
        }
    }

    /// Multiplies every sum and weight by `gamma`.
    fn scale(&mut self, gamma: f64) {
        self.weight *= gamma;
        self.gram *= faer::Scale(gamma);
        self.sum.iter_mut().for_each(|v| *v *= gamma);
        for class in self.classes.values_mut() {
            class.weight *= gamma;
            class.sum.iter_mut().for_each(|v| *v *= gamma);
        }
    }

    /// Forgets the classes a retraction left with no samples or less than [`MIN_WEIGHT`],
    /// and the whole segment (rounding residue included) when nothing is left.
    fn drop_emptied(&mut self) {
        let emptied: Vec<i64> = self
            .classes
            .iter()
            .filter(|(_, c)| c.count == 0 || c.weight < MIN_WEIGHT)
            .map(|(&id, _)| id)
            .collect();
        for id in emptied {
            let class = self.classes.remove(&id).expect("listed above");
            self.weight -= class.weight;
            if class.count > 0 {
                // Decayed below MIN_WEIGHT: its samples leave the segment with it.
                self.n -= class.count;
                for (t, s) in self.sum.iter_mut().zip(&class.sum) {
                    *t -= s;
                }
            }
        }
        if self.n == 0 || self.classes.is_empty() {
            self.clear();
        }
    }
}

/// A [`Stats`] as plain vectors: what a state file stores, and what a collective (an
/// all-reduce across processes) can add up element by element.
///
/// # Examples
/// ```
/// use headstart::stats::Stats;
/// let mut s = Stats::new(2);
/// s.update(&[1.0f32, 2.0], &[7])?;
/// let parts = s.to_parts();
/// assert_eq!(parts.task.gram_lower, vec![1.0, 2.0, 4.0]); // G₀₀, G₁₀, G₁₁
/// assert_eq!(Stats::from_parts(parts)?, s);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatsParts {
    /// Feature dimension d.
    pub dim: u64,
    /// Task boundaries seen (the largest count among merged states).
    pub tasks_begun: u64,
    /// Samples before the last task boundary.
    pub before: SegmentParts,
    /// Samples since the last task boundary.
    pub task: SegmentParts,
    /// The random-feature expansion the statistics are of (then `dim` is its M), if any.
    pub expansion: Option<Expansion>,
}

/// One segment of [`StatsParts`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentParts {
    /// Samples accumulated.
    pub n: u64,
    /// Their total weight N (equal to `n` until a [`Stats::decay`]).
    pub weight: f64,
    /// The lower triangle of G = Σ x xᵀ, column by column: d(d+1)/2 values.
    pub gram_lower: Vec<f64>,
    /// Σ x (d values).
    pub sum: Vec<f64>,
    /// `(class id, count, weight, Σ x over the class)`, ascending by id, counts and
    /// weights positive.
    pub classes: Vec<(i64, u64, f64, Vec<f64>)>,
}

impl SegmentParts {
    fn of(m: &Moments) -> Self {
        let dim = m.sum.len();
        let mut gram_lower = Vec::with_capacity(dim * (dim + 1) / 2);
        for j in 0..dim {
            gram_lower.extend_from_slice(&m.gram.col_as_slice(j)[j..]);
        }
        SegmentParts {
            n: m.n,
            weight: m.weight,
            gram_lower,
            sum: m.sum.clone(),
            classes: m
                .classes
                .iter()
                .map(|(&id, c)| (id, c.count, c.weight, c.sum.clone()))
                .collect(),
        }
    }

    /// Rebuilds a segment, checking every length, count and value.
    fn restore(self, dim: usize, name: &str) -> Result<Moments, String> {
        let triangle = dim * (dim + 1) / 2;
        if self.gram_lower.len() != triangle {
            return Err(format!(
                "{name} segment: Gram has {} values, expected {triangle} for dimension {dim}",
                self.gram_lower.len()
            ));
        }
        if self.sum.len() != dim {
            return Err(format!(
                "{name} segment: sum has {} values, expected {dim}",
                self.sum.len()
            ));
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !finite(&self.gram_lower) || !finite(&self.sum) {
            return Err(format!("{name} segment: a Gram or sum value is not finite"));
        }
        let mut m = Moments::new(dim);
        m.n = self.n;
        m.sum = self.sum;
        let mut at = 0;
        for j in 0..dim {
            let len = dim - j;
            m.gram.col_as_slice_mut(j)[j..].copy_from_slice(&self.gram_lower[at..at + len]);
            at += len;
        }
        let mut total: u64 = 0;
        let mut total_weight = 0.0;
        let mut previous: Option<i64> = None;
        for (id, count, weight, sum) in self.classes {
            if previous.is_some_and(|p| p >= id) {
                return Err(format!(
                    "{name} segment: class ids are not strictly ascending at class {id}"
                ));
            }
            previous = Some(id);
            if count == 0 || sum.len() != dim || !finite(&sum) {
                return Err(format!(
                    "{name} segment: class {id} has count {count} and {} sum values (expected a positive count and {dim} finite values)",
                    sum.len()
                ));
            }
            // A weight is at most its count: samples enter with weight 1 and decay shrinks it.
            if !(weight.is_finite()
                && weight >= MIN_WEIGHT
                && weight <= count as f64 * (1.0 + WEIGHT_REL_TOL))
            {
                return Err(format!(
                    "{name} segment: class {id} has weight {weight} for {count} samples (expected a finite weight in [{MIN_WEIGHT:e}, {count}])"
                ));
            }
            total = total
                .checked_add(count)
                .ok_or_else(|| format!("{name} segment: class counts overflow"))?;
            total_weight += weight;
            m.classes.insert(id, ClassMoments { count, weight, sum });
        }
        if total != m.n {
            return Err(format!(
                "{name} segment: class counts add up to {total} but the segment holds {} samples",
                m.n
            ));
        }
        if !self.weight.is_finite()
            || (self.weight - total_weight).abs() > WEIGHT_REL_TOL * total_weight.max(1.0)
        {
            return Err(format!(
                "{name} segment: class weights add up to {total_weight} but the segment's weight is {}",
                self.weight
            ));
        }
        m.weight = self.weight;
        Ok(m)
    }
}

/// Relative rounding allowed between weights that should agree (a segment's and the sum of
/// its classes', a weight and its count).
const WEIGHT_REL_TOL: f64 = 1e-9;

/// Streaming sufficient statistics for least-squares heads.
///
/// Memory is O(d² + C·d) however many samples arrive.
///
/// # Examples
/// ```
/// use headstart::stats::Stats;
/// let mut a = Stats::new(2);
/// a.update(&[1.0f32, 2.0, 3.0, 4.0], &[7, 9])?;
/// let mut b = Stats::new(2);
/// b.update(&[5.0f64, 6.0], &[7])?;
/// a.merge(&b)?;
/// assert_eq!(a.samples(), 3);
/// assert_eq!(a.classes(), vec![7, 9]);
/// assert_eq!(a.class_count(7), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Stats {
    dim: usize,
    /// Samples that arrived before the last `begin_task`.
    before: Moments,
    /// Samples that arrived since the last `begin_task` (all samples if it was never called).
    task: Moments,
    tasks_begun: u64,
    version: u64,
    /// Raw features are expanded before they are accumulated; `dim` is then its M.
    expansion: Option<Arc<RandomFeatures>>,
    precision: Precision,
    /// Threads for each batch's product (not part of the statistics).
    threads: usize,
    scratch: Scratch,
}

impl PartialEq for Stats {
    /// Equal contents; the version (an identity for caching) and the precision of future
    /// updates are ignored.
    fn eq(&self, other: &Self) -> bool {
        self.dim == other.dim
            && self.before == other.before
            && self.task == other.task
            && self.tasks_begun == other.tasks_begun
            && self.expansion() == other.expansion()
    }
}

impl Stats {
    /// The empty state (the identity of [`merge`](Stats::merge)) for `dim`-dimensional features.
    ///
    /// # Panics
    /// If `dim` is zero or above [`MAX_DIM`].
    ///
    /// # Examples
    /// ```
    /// let s = headstart::stats::Stats::new(768);
    /// assert_eq!((s.dim(), s.samples()), (768, 0));
    /// ```
    pub fn new(dim: usize) -> Self {
        Stats::with_precision(dim, Precision::Exact)
    }

    /// The empty state whose updates compute each batch's product in `precision`.
    ///
    /// # Panics
    /// If `dim` is zero or above [`MAX_DIM`].
    ///
    /// # Examples
    /// ```
    /// use headstart::stats::{Precision, Stats};
    /// let mut fast = Stats::with_precision(2, Precision::Fast);
    /// let mut exact = Stats::new(2);
    /// for s in [&mut fast, &mut exact] {
    ///     s.update(&[0.1f32, 0.2, 0.3, 0.4], &[0, 1])?;
    /// }
    /// let (gf, ge) = (fast.gram(Default::default()), exact.gram(Default::default()));
    /// assert!(((gf[(1, 0)] - ge[(1, 0)]) / ge[(1, 0)]).abs() < 1e-6);
    /// # Ok::<(), headstart::stats::BatchError>(())
    /// ```
    pub fn with_precision(dim: usize, precision: Precision) -> Self {
        assert!(dim > 0, "feature dimension must be positive");
        assert!(
            dim <= MAX_DIM,
            "feature dimension {dim} exceeds MAX_DIM = {MAX_DIM}"
        );
        Stats {
            dim,
            before: Moments::new(dim),
            task: Moments::new(dim),
            tasks_begun: 0,
            version: next_version(),
            expansion: None,
            precision,
            threads: default_threads(),
            scratch: Scratch::default(),
        }
    }

    /// The empty state of the random-feature expansion `spec`: [`update`](Stats::update)
    /// takes raw `spec.input_dim`-dimensional features, and the statistics (and every head
    /// solved from them) are of the `spec.features` expanded ones, z = ReLU(x·R).
    ///
    /// Each batch is expanded and accumulated 512 rows at a time, so the expanded batch is
    /// never held whole. With [`Precision::Fast`] the projection x·R and the Gram product are
    /// f32 (f64 totals); with [`Precision::Exact`] both are f64.
    ///
    /// # Examples
    /// ```
    /// use headstart::{expand::Expansion, stats::{Precision, Stats}};
    /// let mut s = Stats::expanded(Expansion::new(2, 16, 0)?, Precision::Exact);
    /// s.update(&[0.5f32, -1.0, 2.0, 0.25], &[3, 4])?;
    /// assert_eq!((s.input_dim(), s.dim(), s.samples()), (2, 16, 2));
    /// assert!(s.update(&[0.5f32, -1.0, 2.0], &[3]).is_err()); // rows of 2 raw features
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn expanded(spec: Expansion, precision: Precision) -> Self {
        let mut stats = Stats::with_precision(spec.features, precision);
        stats.expansion = Some(Arc::new(RandomFeatures::new(spec)));
        stats
    }

    /// The expansion the statistics are of, if any.
    pub fn expansion(&self) -> Option<&Expansion> {
        self.expansion.as_deref().map(RandomFeatures::spec)
    }

    /// The expansion with its matrix R (shared with clones of this state), if any.
    pub fn random_features(&self) -> Option<&Arc<RandomFeatures>> {
        self.expansion.as_ref()
    }

    /// The dimension of the features [`update`](Stats::update) takes: the expansion's
    /// input dimension, or [`dim`](Stats::dim) without one.
    pub fn input_dim(&self) -> usize {
        self.expansion().map_or(self.dim, |e| e.input_dim)
    }

    /// The precision of each batch's product in [`update`](Stats::update) and
    /// [`retract`](Stats::retract).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Changes the precision of later updates; what is already accumulated stays as it is.
    /// A retraction should use the precision its batch was added with, or it leaves that
    /// batch's rounding difference behind.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Threads that compute each batch's product: by default every core the process may use
    /// ([`default_threads`]).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Sets the threads of later products; 0 means [`default_threads`]. The statistics do
    /// not depend on it beyond f64 rounding.
    ///
    /// With more than one thread, workers take a batch's 512-row chunks as they become free
    /// (a worker slowed by another process takes fewer), so the order in which chunk products
    /// are added, and with it the last bits of the f64 sums, can differ from run to run
    /// (relative differences around 1e-16 per addition). One thread is bitwise reproducible.
    ///
    /// # Examples
    /// ```
    /// let mut s = headstart::stats::Stats::new(4);
    /// s.set_threads(1);
    /// assert_eq!(s.threads(), 1);
    /// s.set_threads(0);
    /// assert_eq!(s.threads(), headstart::stats::default_threads());
    /// ```
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = if threads == 0 { default_threads() } else { threads };
    }

    /// The state with [`set_threads`](Stats::set_threads) applied, for chaining.
    ///
    /// # Examples
    /// ```
    /// let s = headstart::stats::Stats::new(4).with_threads(2);
    /// assert_eq!(s.threads(), 2);
    /// ```
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.set_threads(threads);
        self
    }

    /// The feature dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Samples accumulated (both segments): added minus retracted, however decayed.
    pub fn samples(&self) -> u64 {
        self.before.n + self.task.n
    }

    /// The total sample weight N that solves divide by (both segments): [`samples`](Stats::samples)
    /// until a [`decay`](Stats::decay), which multiplies it by γ.
    ///
    /// # Examples
    /// ```
    /// let mut s = headstart::stats::Stats::new(1);
    /// s.update(&[1.0f32, 2.0], &[0, 1])?;
    /// assert_eq!(s.weight(), 2.0);
    /// s.decay(0.5)?;
    /// assert_eq!((s.samples(), s.weight()), (2, 1.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn weight(&self) -> f64 {
        self.before.weight + self.task.weight
    }

    /// The sample weight since the last [`begin_task`](Stats::begin_task).
    pub fn task_weight(&self) -> f64 {
        self.task.weight
    }

    /// Number of samples since the last [`begin_task`](Stats::begin_task).
    ///
    /// # Examples
    /// ```
    /// let mut s = headstart::stats::Stats::new(1);
    /// s.update(&[1.0f32], &[0])?;
    /// s.begin_task();
    /// s.update(&[2.0f32, 3.0], &[1, 1])?;
    /// assert_eq!((s.samples(), s.task_samples()), (3, 2));
    /// # Ok::<(), headstart::stats::BatchError>(())
    /// ```
    pub fn task_samples(&self) -> u64 {
        self.task.n
    }

    /// How many times [`begin_task`](Stats::begin_task) was called (the largest count among merged states).
    pub fn tasks_begun(&self) -> u64 {
        self.tasks_begun
    }

    /// An identity for this exact content: it changes on every mutation and is unique across
    /// all states in the process (clones share it until one of them changes).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// All class ids seen (in either segment), ascending.
    pub fn classes(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .before
            .classes
            .keys()
            .chain(self.task.classes.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Class ids with samples since the last [`begin_task`](Stats::begin_task), ascending.
    pub fn task_classes(&self) -> Vec<i64> {
        self.task.classes.keys().copied().collect()
    }

    /// Number of samples of class `id` over both segments (0 if never seen).
    pub fn class_count(&self, id: i64) -> u64 {
        let count = |m: &Moments| m.classes.get(&id).map_or(0, |c| c.count);
        count(&self.before) + count(&self.task)
    }

    /// The weight of class `id` over both segments (0 if never seen): its count until a
    /// [`decay`](Stats::decay).
    pub fn class_weight(&self, id: i64) -> f64 {
        let weight = |m: &Moments| m.classes.get(&id).map_or(0.0, |c| c.weight);
        weight(&self.before) + weight(&self.task)
    }

    /// Bytes held by the statistics (Gram matrices and sums), for memory reports.
    pub fn heap_bytes(&self) -> usize {
        let seg = |m: &Moments| {
            (m.gram.nrows() * m.gram.ncols() + m.sum.len() + m.classes.len() * (self.dim + 4)) * 8
        };
        seg(&self.before) + seg(&self.task)
    }

    /// Adds a batch: `labels.len()` rows of `dim` features (row-major, `f32` or `f64`).
    ///
    /// The Gram matrix is updated by one rank-B product (faer, lower triangle). The batch is
    /// validated first; a rejected batch leaves the state untouched.
    ///
    /// # Errors
    /// [`BatchError::Shape`] if `features.len() != labels.len() × dim`;
    /// [`BatchError::NonFinite`] naming the first NaN/Inf value's row and column.
    ///
    /// # Examples
    /// ```
    /// let mut s = headstart::stats::Stats::new(3);
    /// s.update(&[1.0f32, 2.0, 3.0], &[42])?;
    /// assert!(s.update(&[1.0f32, f32::NAN, 3.0], &[42]).is_err());
    /// assert_eq!(s.samples(), 1);
    /// # Ok::<(), headstart::stats::BatchError>(())
    /// ```
    pub fn update<T: Feature>(&mut self, features: &[T], labels: &[i64]) -> Result<(), BatchError> {
        if self.expansion.is_some() {
            self.validate(features, labels)?;
            self.update_validated(features, labels);
            return Ok(());
        }
        if labels.is_empty() {
            return validate_batch(features, labels, self.dim);
        }
        // Laying the batch out checks it too, in the same pass.
        let mut prepared = std::mem::take(&mut self.scratch.prepared);
        let filled = prepared.fill(features, labels, self.dim, self.precision, self.threads);
        if filled.is_ok() {
            self.apply(&prepared, features);
        }
        self.scratch.prepared = prepared;
        filled
    }

    /// Checks a batch of raw features for this state ([`validate_batch`], and the expanded
    /// magnitude bound for an expanded state).
    ///
    /// # Errors
    /// As [`update`](Stats::update).
    pub fn validate<T: Feature>(&self, features: &[T], labels: &[i64]) -> Result<(), BatchError> {
        match &self.expansion {
            Some(rf) => rf.validate(features, labels),
            None => validate_batch(features, labels, self.dim),
        }
    }

    /// Expands `chunk` (at most 512 rows) and lays it out for [`apply_part`](Stats::apply_part).
    /// `shift` carries a batch's shift from chunk to chunk: None before its first chunk, which
    /// sets it (fast precision), so that every chunk shares one f32 accumulator (see
    /// [`Prepared::fill_expanded`]).
    pub(crate) fn prepare_expanded<T: Feature>(
        rf: &RandomFeatures,
        chunk: &[T],
        labels: &[i64],
        precision: Precision,
        par: faer::Par,
        shift: &mut Option<Vec<f64>>,
        prepared: &mut Prepared,
    ) {
        let z = rf.expand_chunk(chunk, precision == Precision::Exact, par);
        prepared.fill_expanded(z, labels, rf.spec().features, precision, shift.as_deref());
        if shift.is_none() {
            *shift = prepared.shift().map(<[f64]>::to_vec);
        }
    }

    /// Applies `sign` × the expansion of a validated batch, chunk by chunk; the chunks share
    /// the first one's shift (fast precision).
    fn apply_expanded<T: Feature>(&mut self, rf: &RandomFeatures, features: &[T], labels: &[i64], sign: f64) {
        let d = rf.spec().input_dim;
        let par = if self.threads > 1 {
            faer::Par::rayon(self.threads)
        } else {
            faer::Par::Seq
        };
        let mut prepared = std::mem::take(&mut self.scratch.prepared);
        let mut shift: Option<Vec<f64>> = None;
        for (chunk, chunk_labels) in features.chunks(CHUNK_ROWS * d).zip(labels.chunks(CHUNK_ROWS)) {
            Stats::prepare_expanded(
                rf,
                chunk,
                chunk_labels,
                self.precision,
                par,
                &mut shift,
                &mut prepared,
            );
            prepared.apply_part(&mut self.task, sign, &mut self.scratch.product, self.threads);
        }
        gram::fold_pending(&mut self.task, &mut self.scratch.product);
        self.scratch.prepared = prepared;
    }

    /// Adds one expanded chunk of a batch (the pipeline's reducer); the batch's last chunk
    /// must be followed by [`finish_parts`](Stats::finish_parts).
    pub(crate) fn apply_part(&mut self, prepared: &Prepared) {
        prepared.apply_part(&mut self.task, 1.0, &mut self.scratch.product, self.threads);
        self.version = next_version();
    }

    /// Completes the batch whose chunks [`apply_part`](Stats::apply_part) added.
    pub(crate) fn finish_parts(&mut self) {
        gram::fold_pending(&mut self.task, &mut self.scratch.product);
    }

    /// [`update`](Stats::update) of a batch that [`validate_batch`] accepted for this
    /// dimension (the pipeline validates on the producer's thread, not the reducer's).
    pub(crate) fn update_validated<T: Feature>(&mut self, features: &[T], labels: &[i64]) {
        debug_assert!(self.validate(features, labels).is_ok());
        if labels.is_empty() {
            return;
        }
        if let Some(rf) = self.expansion.clone() {
            self.apply_expanded(&rf, features, labels, 1.0);
            self.version = next_version();
            return;
        }
        let mut prepared = std::mem::take(&mut self.scratch.prepared);
        prepared
            .fill(features, labels, self.dim, self.precision, self.threads)
            .expect("the batch was validated");
        self.apply(&prepared, features);
        self.scratch.prepared = prepared;
    }

    /// Checks a batch and lays it out for [`apply`](Stats::apply) in `precision`, on any
    /// thread (the pipeline's producers do this).
    ///
    /// # Errors
    /// The batch's [`BatchError`] (see [`validate_batch`]).
    pub(crate) fn prepare(batch: &Batch, dim: usize, precision: Precision) -> Result<Prepared, BatchError> {
        let mut prepared = Prepared::default();
        match &batch.features {
            Features::F32(v) => prepared.fill(v, &batch.labels, dim, precision, 1),
            Features::F64(v) => prepared.fill(v, &batch.labels, dim, precision, 1),
        }?;
        Ok(prepared)
    }

    /// Adds a prepared batch: exactly what [`update`](Stats::update) of it would add.
    /// `batch` holds the batch's rows (see [`Prepared::apply`]).
    pub(crate) fn apply<T: Feature>(&mut self, prepared: &Prepared, batch: &[T]) {
        if prepared.rows() == 0 {
            return;
        }
        prepared.apply(
            batch,
            &mut self.task,
            1.0,
            &mut self.scratch.product,
            self.threads,
        );
        self.version = next_version();
    }

    /// Adds an owned [`Batch`]; see [`update`](Stats::update).
    ///
    /// # Errors
    /// As [`update`](Stats::update).
    pub fn update_batch(&mut self, batch: &Batch) -> Result<(), BatchError> {
        match &batch.features {
            Features::F32(v) => self.update(v, &batch.labels),
            Features::F64(v) => self.update(v, &batch.labels),
        }
    }

    /// Undoes [`update`](Stats::update) of the same batch within the current task segment
    /// (unlearning). Exact up to f64 rounding; counts are exact, and a class whose count
    /// returns to zero (or whose weight falls below [`MIN_WEIGHT`]) is forgotten.
    ///
    /// Each retracted sample weighs 1, as when it was added: this undoes an update made
    /// since the last [`decay`](Stats::decay). A batch added before a decay now weighs γ
    /// there, and retracting it removes more than it left.
    ///
    /// # Errors
    /// A malformed batch, or one holding a class (or more samples or weight of it) than the
    /// current task segment has; the state is then untouched.
    ///
    /// # Examples
    /// ```
    /// let mut s = headstart::stats::Stats::new(2);
    /// s.update(&[1.0f64, 2.0, 3.0, 4.0], &[0, 1])?;
    /// s.retract(&[3.0f64, 4.0], &[1])?;
    /// assert_eq!(s.classes(), vec![0]);
    /// assert!(s.retract(&[3.0f64, 4.0], &[1]).is_err());
    /// # Ok::<(), headstart::stats::RetractError>(())
    /// ```
    pub fn retract<T: Feature>(&mut self, features: &[T], labels: &[i64]) -> Result<(), RetractError> {
        self.validate(features, labels)?;
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for &l in labels {
            *counts.entry(l).or_insert(0) += 1;
        }
        for (&class, &retracting) in &counts {
            match self.task.classes.get(&class) {
                None => return Err(RetractError::UnknownClass { class }),
                Some(c) if c.count < retracting => {
                    return Err(RetractError::TooFewSamples {
                        class,
                        have: c.count,
                        retracting,
                    });
                }
                Some(c) if c.weight < retracting as f64 * (1.0 - WEIGHT_REL_TOL) => {
                    return Err(RetractError::TooLittleWeight {
                        class,
                        weight: c.weight,
                        retracting,
                    });
                }
                Some(_) => {}
            }
        }
        if labels.is_empty() {
            return Ok(());
        }
        if let Some(rf) = self.expansion.clone() {
            self.apply_expanded(&rf, features, labels, -1.0);
        } else {
            let mut prepared = std::mem::take(&mut self.scratch.prepared);
            prepared
                .fill(features, labels, self.dim, self.precision, self.threads)
                .expect("the batch was validated");
            prepared.apply(
                features,
                &mut self.task,
                -1.0,
                &mut self.scratch.product,
                self.threads,
            );
            self.scratch.prepared = prepared;
        }
        self.task.drop_emptied();
        self.version = next_version();
        Ok(())
    }

    /// Multiplies every accumulated sum and weight, in both segments, by `gamma` in (0, 1]:
    /// a forgetting factor. After `decay(γ)` and more updates, a solve weighs every earlier
    /// sample by γ and every later one by 1, exactly as recursive least squares with
    /// forgetting does; repeated decays multiply. Means (class sums over class weights) and
    /// G/N are unchanged by a decay alone. Costs O(d² + C·d).
    ///
    /// # Errors
    /// [`DecayError::Factor`] for γ outside (0, 1] (or NaN); [`DecayError::Underflow`] if a
    /// class's weight would fall below [`MIN_WEIGHT`]. The state is then untouched.
    ///
    /// # Examples
    /// ```
    /// use headstart::stats::{Scope, Stats};
    /// let mut s = Stats::new(1);
    /// s.update(&[2.0f32], &[0])?;    // an old sample
    /// s.decay(0.25)?;
    /// s.update(&[6.0f32], &[0])?;    // a new one, weight 1
    /// let (w, sum) = s.class_sum(0, Scope::All).unwrap();
    /// assert_eq!((w, sum[0] / w), (1.25, (0.25 * 2.0 + 6.0) / 1.25));
    /// assert!(s.decay(1.5).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decay(&mut self, gamma: f64) -> Result<(), DecayError> {
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(DecayError::Factor { gamma });
        }
        let lightest = self
            .before
            .classes
            .iter()
            .chain(&self.task.classes)
            .map(|(&id, c)| (id, c.weight * gamma))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((class, weight)) = lightest.filter(|&(_, w)| w < MIN_WEIGHT) {
            return Err(DecayError::Underflow { gamma, class, weight });
        }
        if gamma < 1.0 {
            self.before.scale(gamma);
            self.task.scale(gamma);
            self.version = next_version();
        }
        Ok(())
    }

    /// Retracts an owned [`Batch`]; see [`retract`](Stats::retract).
    ///
    /// # Errors
    /// As [`retract`](Stats::retract).
    pub fn retract_batch(&mut self, batch: &Batch) -> Result<(), RetractError> {
        match &batch.features {
            Features::F32(v) => self.retract(v, &batch.labels),
            Features::F64(v) => self.retract(v, &batch.labels),
        }
    }

    /// Starts a new task: what arrived so far moves to the "before" segment, and a solve with
    /// scope `task` sees only what arrives from now on. Costs O(d²) once.
    pub fn begin_task(&mut self) {
        let task = std::mem::replace(&mut self.task, Moments::new(self.dim));
        self.before.add(&task);
        self.tasks_begun += 1;
        self.version = next_version();
    }

    /// Adds another state's statistics, segment by segment (the merged task segment holds
    /// both states' task segments). The empty state is the identity; merging is associative
    /// and commutative up to f64 rounding.
    ///
    /// # Errors
    /// [`MergeError::Dimension`] if the dimensions differ; the state is then untouched.
    pub fn merge(&mut self, other: &Stats) -> Result<(), MergeError> {
        if self.dim != other.dim {
            return Err(MergeError::Dimension {
                left: self.dim,
                right: other.dim,
            });
        }
        if self.expansion() != other.expansion() {
            return Err(MergeError::Expansion {
                left: describe(self.expansion()),
                right: describe(other.expansion()),
            });
        }
        self.before.add(&other.before);
        self.task.add(&other.task);
        self.tasks_begun = self.tasks_begun.max(other.tasks_begun);
        self.version = next_version();
        Ok(())
    }

    /// The full symmetric Gram matrix G = Σ x xᵀ over `scope`.
    ///
    /// # Examples
    /// ```
    /// use headstart::stats::{Scope, Stats};
    /// let mut s = Stats::new(2);
    /// s.update(&[1.0f32, 2.0], &[0])?;
    /// let g = s.gram(Scope::All);
    /// assert_eq!((g[(0, 1)], g[(1, 0)], g[(1, 1)]), (2.0, 2.0, 4.0));
    /// # Ok::<(), headstart::stats::BatchError>(())
    /// ```
    pub fn gram(&self, scope: Scope) -> Mat<f64> {
        let mut g = Mat::zeros(self.dim, self.dim);
        for seg in self.segments(scope == Scope::Task) {
            g += &seg.gram;
        }
        for j in 0..self.dim {
            for i in 0..j {
                g[(i, j)] = g[(j, i)];
            }
        }
        g
    }

    /// The sample weight N and the sum Σ x over `scope`.
    pub fn sum(&self, scope: Scope) -> (f64, Vec<f64>) {
        let mut sum = vec![0.0; self.dim];
        let mut n = 0.0;
        for seg in self.segments(scope == Scope::Task) {
            n += seg.weight;
            sum.iter_mut().zip(&seg.sum).for_each(|(a, b)| *a += b);
        }
        (n, sum)
    }

    /// The weight and sum of class `id` over `scope` (the class mean is their ratio), or
    /// `None` if it has no samples there.
    pub fn class_sum(&self, id: i64, scope: Scope) -> Option<(f64, Vec<f64>)> {
        let mut out: Option<(f64, Vec<f64>)> = None;
        for seg in self.segments(scope == Scope::Task) {
            if let Some(c) = seg.classes.get(&id) {
                let (n, sum) = out.get_or_insert_with(|| (0.0, vec![0.0; self.dim]));
                *n += c.weight;
                sum.iter_mut().zip(&c.sum).for_each(|(a, b)| *a += b);
            }
        }
        out
    }

    /// The state as plain vectors (see [`StatsParts`]).
    pub fn to_parts(&self) -> StatsParts {
        StatsParts {
            dim: self.dim as u64,
            tasks_begun: self.tasks_begun,
            before: SegmentParts::of(&self.before),
            task: SegmentParts::of(&self.task),
            expansion: self.expansion().copied(),
        }
    }

    /// Rebuilds a state from its parts, checking every length, count and value.
    ///
    /// # Errors
    /// A message saying what is inconsistent (a length that does not fit the dimension,
    /// class ids out of order, counts that do not add up, a value that is not finite).
    pub fn from_parts(parts: StatsParts) -> Result<Stats, String> {
        let dim = usize::try_from(parts.dim)
            .ok()
            .filter(|&d| d > 0 && d <= MAX_DIM)
            .ok_or_else(|| format!("dimension {} outside 1..={MAX_DIM}", parts.dim))?;
        if parts.before.n.checked_add(parts.task.n).is_none() {
            return Err("the segments' sample counts overflow".into());
        }
        // Every segment is checked before its d × d matrix is allocated, so the memory used
        // is proportional to the data given (a hostile dimension alone allocates nothing).
        if let Some(e) = &parts.expansion {
            e.check().map_err(|e| e.to_string())?;
            if e.features != dim {
                return Err(format!(
                    "the expansion has {} features but the statistics have dimension {dim}",
                    e.features
                ));
            }
        }
        let before = parts.before.restore(dim, "before-task")?;
        let task = parts.task.restore(dim, "task")?;
        Ok(Stats {
            dim,
            before,
            task,
            tasks_begun: parts.tasks_begun,
            version: next_version(),
            expansion: parts.expansion.map(|e| Arc::new(RandomFeatures::new(e))),
            precision: Precision::Exact,
            threads: default_threads(),
            scratch: Scratch::default(),
        })
    }

    /// The segments making up a scope: `[before, task]` for all data, `[task]` for the task.
    pub(crate) fn segments(&self, task_only: bool) -> Vec<&Moments> {
        if task_only {
            vec![&self.task]
        } else {
            vec![&self.before, &self.task]
        }
    }
}
