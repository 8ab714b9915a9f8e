//! Streaming a feature/label pair through the pipeline from several producer threads.
//!
//! Each producer opens its own readers ([`FeatureSpec::open`], [`LabelSpec::open`]), reads
//! its own contiguous range of rows in batches and sends them to the reducer; ranges start at
//! the features' [split points](super::source::FeatureSource::split_points) (Parquet row
//! groups) when there are enough of them. With a [`Split`], each row goes to a training or a
//! validation pipeline by a hash of its position, so the split does not depend on batching
//! or on the number of producers. [`stream_pair`] takes any format; [`stream_npy`] is the
//! same for a `.npy` pair.
//!
//! # Examples
//! ```
//! use headstart::ingest::{npy, stream::{StreamConfig, stream_npy}};
//! let dir = tempfile::tempdir()?;
//! let (f, l) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
//! npy::write_f32(&f, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)?;
//! npy::write_i64(&l, &[4, 7, 4])?;
//! let config = StreamConfig { batch: 2, producers: 2, ..StreamConfig::default() };
//! let streamed = stream_npy(&f, &l, &config, |_rows| {})?;
//! assert_eq!((streamed.rows, streamed.dim), (3, 2));
//! assert_eq!(streamed.train.classes(), vec![4, 7]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::npy::{FeatureFile, LabelFile, NpyError};
use super::source::{FeatureSource, FeatureSpec, Format, LabelSource, LabelSpec, SourceError};
use crate::pipeline::{self, PipelineError, Producer};
use crate::stats::{Batch, Features, Precision, Stats};

/// A seeded split of the input rows into training and validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// The fraction of rows held out, in (0, 1).
    pub fraction: f64,
    /// The seed of the row hash.
    pub seed: u64,
}

impl Split {
    /// Whether file row `row` goes to validation: a hash of (seed, row), so the split does
    /// not depend on batching or on the number of producers.
    ///
    /// # Examples
    /// ```
    /// let split = headstart::ingest::stream::Split { fraction: 0.25, seed: 1 };
    /// let held = (0..10_000).filter(|&r| split.is_validation(r)).count();
    /// assert!((2_300..2_700).contains(&held));
    /// ```
    pub fn is_validation(&self, row: u64) -> bool {
        let mut z = self.seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < self.fraction
    }
}

/// How a pair of files is streamed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamConfig {
    /// Rows per batch (at least 1).
    pub batch: usize,
    /// Producer threads, each reading its own range of rows (at least 1).
    pub producers: usize,
    /// Rows held out into a second state.
    pub split: Option<Split>,
    /// The precision of the states.
    pub precision: Precision,
    /// Threads of each batch's product (0: every available core).
    pub threads: usize,
    /// Expand the features to this many random features (`crate::expand`): the states are
    /// then of z = ReLU(x·R), with R seeded by `expand_seed`.
    pub expand: Option<usize>,
    /// The seed of R when `expand` is set.
    pub expand_seed: u64,
}

impl Default for StreamConfig {
    /// 4096-row batches, 2 producers, no split, exact, every core.
    fn default() -> Self {
        StreamConfig {
            batch: 4096,
            producers: 2,
            split: None,
            precision: Precision::Exact,
            threads: 0,
            expand: None,
            expand_seed: 0,
        }
    }
}

/// The states a stream produced.
#[derive(Debug)]
pub struct Streamed {
    /// Every row not held out.
    pub train: Stats,
    /// The held-out rows, with a [`Split`].
    pub validation: Option<Stats>,
    /// Rows read.
    pub rows: u64,
    /// Feature dimension of the input (the raw features, before any expansion).
    pub dim: usize,
}

/// Why a stream failed. Nothing is returned: a partial state is never handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A `.npy` file could not be read (the message names it, and the row for bad values).
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// A Parquet or safetensors input could not be read (the message names the file, and the
    /// row for bad values).
    #[error(transparent)]
    Source(SourceError),
    /// The files (or columns, or tensors) disagree on the number of rows.
    #[error(
        "{}{} has {rows} rows but {}{} has {labels_rows} labels",
        features.display(),
        within(features_name),
        labels.display(),
        within(labels_name)
    )]
    RowMismatch {
        /// The feature file.
        features: PathBuf,
        /// Its column or tensor, as `column 'emb'` or `tensor 'x'`.
        features_name: Option<String>,
        /// Its rows.
        rows: u64,
        /// The label file.
        labels: PathBuf,
        /// Its column or tensor.
        labels_name: Option<String>,
        /// Its labels.
        labels_rows: u64,
    },
    /// The pipeline refused a batch or stopped.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// `batch` or `producers` is 0.
    #[error("batch and producers must be at least 1")]
    Config,
    /// The expansion asked for is not valid.
    #[error("--expand: {0}")]
    Expansion(#[from] crate::expand::ExpansionError),
}

/// ` (column 'emb')` after a path, or nothing.
fn within(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

/// `column 'emb'` or `tensor 'x'` for a spec's name, by its format.
fn described(format: Format, name: &Option<String>) -> Option<String> {
    let kind = match format {
        Format::Parquet => "column",
        Format::Safetensors => "tensor",
        Format::Npy => return None,
    };
    name.as_ref().map(|n| format!("{kind} '{n}'"))
}

impl From<SourceError> for StreamError {
    /// `.npy` errors stay [`StreamError::Npy`]; the others are [`StreamError::Source`].
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Npy(e) => StreamError::Npy(e),
            other => StreamError::Source(other),
        }
    }
}

/// Opens a `.npy` feature/label pair and checks that they agree on the number of rows.
///
/// # Errors
/// [`StreamError::Npy`] or [`StreamError::RowMismatch`].
pub fn open_pair(features: &Path, labels: &Path) -> Result<(FeatureFile, LabelFile), StreamError> {
    let x = FeatureFile::open(features)?;
    let y = LabelFile::open(labels)?;
    if x.rows() != y.rows() {
        return Err(StreamError::RowMismatch {
            features: features.to_path_buf(),
            features_name: None,
            rows: x.rows(),
            labels: labels.to_path_buf(),
            labels_name: None,
            labels_rows: y.rows(),
        });
    }
    Ok((x, y))
}

/// The readers of a feature/label pair, as [`open_sources`] returns them.
pub type Sources = (Box<dyn FeatureSource>, Box<dyn LabelSource>);

/// Opens the readers of a feature/label pair of any format and checks that they agree on
/// the number of rows.
///
/// # Examples
/// ```
/// use headstart::ingest::{npy, source::{FeatureSpec, LabelSpec}, stream::open_sources};
/// let dir = tempfile::tempdir()?;
/// let (f, l) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
/// npy::write_f32(&f, &[1.0, 2.0, 3.0, 4.0], 2, 2)?;
/// npy::write_i64(&l, &[4, 7, 4])?;
/// let err = open_sources(&FeatureSpec::new(&f, None), &LabelSpec::new(&l, None)).err().unwrap();
/// assert!(err.to_string().contains("has 2 rows but"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The format's error, or [`StreamError::RowMismatch`].
pub fn open_sources(features: &FeatureSpec, labels: &LabelSpec) -> Result<Sources, StreamError> {
    let x = features.open()?;
    let y = labels.open()?;
    if x.rows() != y.rows() {
        return Err(StreamError::RowMismatch {
            features: features.path.clone(),
            features_name: described(features.format, &features.name),
            rows: x.rows(),
            labels: labels.path.clone(),
            labels_name: described(labels.format, &labels.name),
            labels_rows: y.rows(),
        });
    }
    Ok((x, y))
}

/// Streams every row of a `.npy` pair through one pipeline (two with a split) and returns
/// the final states: [`stream_pair`] with [`FeatureSpec::npy`] and [`LabelSpec::npy`].
///
/// # Errors
/// As [`stream_pair`].
pub fn stream_npy(
    features: &Path,
    labels: &Path,
    config: &StreamConfig,
    progress: impl Fn(u64) + Sync,
) -> Result<Streamed, StreamError> {
    stream_pair(
        &FeatureSpec::npy(features),
        &LabelSpec::npy(labels),
        config,
        progress,
    )
}

/// Streams every row of the pair through one pipeline (two with a split) and returns the
/// final states. `progress` is called with the number of rows of each batch sent, from the
/// producer threads (a progress bar's `inc`). A bad row anywhere fails the whole stream, so
/// no state built from part of the input is ever returned.
///
/// # Examples
/// ```
/// use headstart::ingest::{npy, source::{FeatureSpec, LabelSpec}, stream::{StreamConfig, stream_pair}};
/// let dir = tempfile::tempdir()?;
/// let (f, l) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
/// npy::write_f32(&f, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)?;
/// npy::write_i64(&l, &[4, 7, 4])?;
/// let (x, y) = (FeatureSpec::new(&f, None), LabelSpec::new(&l, None));
/// let streamed = stream_pair(&x, &y, &StreamConfig::default(), |_rows| {})?;
/// assert_eq!(streamed.train.samples(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// The first error of any producer; the other producers stop at their next batch.
pub fn stream_pair(
    features: &FeatureSpec,
    labels: &LabelSpec,
    config: &StreamConfig,
    progress: impl Fn(u64) + Sync,
) -> Result<Streamed, StreamError> {
    if config.batch == 0 || config.producers == 0 {
        return Err(StreamError::Config);
    }
    let (x, _) = open_sources(features, labels)?;
    let (rows, dim) = (x.rows(), x.dim());
    let ranges = producer_ranges(rows, config.producers, &x.split_points());
    drop(x);

    let capacity = 2 * config.producers;
    let expansion = config
        .expand
        .map(|m| crate::expand::Expansion::new(dim, m, config.expand_seed))
        .transpose()?;
    let state = || {
        match expansion {
            Some(spec) => Stats::expanded(spec, config.precision),
            None => Stats::with_precision(dim, config.precision),
        }
        .with_threads(config.threads)
    };
    let (train_tx, train_reducer) = pipeline::spawn(state(), capacity);
    let val = config.split.map(|_| pipeline::spawn(state(), capacity));
    let (val_tx, val_reducer) = match val {
        Some((tx, rx)) => (Some(tx), Some(rx)),
        None => (None, None),
    };
    let stop = AtomicBool::new(false);
    let outcome: Result<(), StreamError> = std::thread::scope(|scope| {
        let workers: Vec<_> = ranges
            .into_iter()
            .map(|range| {
                let (train_tx, val_tx, progress, stop) = (train_tx.clone(), val_tx.clone(), &progress, &stop);
                scope.spawn(move || {
                    let sinks = Sinks {
                        train: &train_tx,
                        validation: val_tx.as_ref(),
                    };
                    let result = open_sources(features, labels).and_then(|(mut x, mut y)| {
                        produce(&mut *x, &mut *y, range, config, sinks, progress, stop)
                    });
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("producer thread panicked"))
    });
    drop((train_tx, val_tx));
    let train = train_reducer.join()?;
    let validation = val_reducer.map(|r| r.join()).transpose()?;
    outcome?;
    Ok(Streamed {
        train,
        validation,
        rows,
        dim,
    })
}

/// Contiguous row ranges for `producers` threads: equal shares, each cut moved to the
/// nearest split point when there are at least as many split points as producers (so that
/// a Parquet reader starts at a row group instead of decoding its way into one).
///
/// # Examples
/// ```
/// use headstart::ingest::stream::producer_ranges;
/// assert_eq!(producer_ranges(10, 3, &[]), vec![(0, 4), (4, 8), (8, 10)]);
/// assert_eq!(producer_ranges(10, 2, &[0, 3, 6, 9]), vec![(0, 6), (6, 10)]);
/// assert_eq!(producer_ranges(0, 2, &[]), vec![]);
/// ```
pub fn producer_ranges(rows: u64, producers: usize, split_points: &[u64]) -> Vec<(u64, u64)> {
    let producers = producers.max(1) as u64;
    let per_producer = rows.div_ceil(producers).max(1);
    let mut cuts: Vec<u64> = (0..=producers).map(|k| (k * per_producer).min(rows)).collect();
    if split_points.len() as u64 >= producers {
        for cut in &mut cuts[1..producers as usize] {
            let nearest = split_points
                .iter()
                .copied()
                .filter(|&p| p <= rows)
                .min_by_key(|&p| p.abs_diff(*cut));
            if let Some(p) = nearest {
                *cut = p;
            }
        }
        cuts.sort_unstable();
    }
    cuts.windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(start, end)| start < end)
        .collect()
}

/// Where a producer sends its batches.
#[derive(Clone, Copy)]
struct Sinks<'a> {
    train: &'a Producer,
    validation: Option<&'a Producer>,
}

fn produce(
    x: &mut dyn FeatureSource,
    y: &mut dyn LabelSource,
    (start, end): (u64, u64),
    config: &StreamConfig,
    sinks: Sinks<'_>,
    progress: &(impl Fn(u64) + Sync),
    stop: &AtomicBool,
) -> Result<(), StreamError> {
    let mut row = start;
    while row < end && !stop.load(Ordering::Relaxed) {
        let count = (config.batch as u64).min(end - row);
        let xs = x.read_rows(row, count)?;
        let ys = y.read_rows(row, count)?;
        match (config.split, sinks.validation) {
            (Some(split), Some(val)) => {
                let (t, v) = split_batch(xs, ys, row, x.dim(), &split);
                if !t.labels.is_empty() {
                    sinks.train.send(t)?;
                }
                if !v.labels.is_empty() {
                    val.send(v)?;
                }
            }
            _ => sinks.train.send(Batch::new(xs, ys))?,
        }
        row += count;
        progress(count);
    }
    Ok(())
}

fn split_batch(xs: Features, ys: Vec<i64>, first_row: u64, dim: usize, split: &Split) -> (Batch, Batch) {
    fn part<T: Copy>(v: &[T], dim: usize, keep: &[bool], want: bool) -> Vec<T> {
        v.chunks_exact(dim)
            .zip(keep)
            .filter(|(_, k)| **k == want)
            .flat_map(|(r, _)| r.iter().copied())
            .collect()
    }
    let is_val: Vec<bool> = (0..ys.len() as u64)
        .map(|i| split.is_validation(first_row + i))
        .collect();
    let labels = |want| {
        ys.iter()
            .zip(&is_val)
            .filter(|(_, v)| **v == want)
            .map(|(l, _)| *l)
            .collect()
    };
    let (tx, vx): (Features, Features) = match &xs {
        Features::F32(v) => (
            part(v, dim, &is_val, false).into(),
            part(v, dim, &is_val, true).into(),
        ),
        Features::F64(v) => (
            part(v, dim, &is_val, false).into(),
            part(v, dim, &is_val, true).into(),
        ),
    };
    (Batch::new(tx, labels(false)), Batch::new(vx, labels(true)))
}
