//! Streaming a `.npy` feature/label pair through the pipeline from several producer threads.
//!
//! Each producer reads its own contiguous range of rows in batches and sends them to the
//! reducer; with a [`Split`], each row goes to a training or a validation pipeline by a hash
//! of its position, so the split does not depend on batching or on the number of producers.
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
    /// Feature dimension.
    pub dim: usize,
}

/// Why a stream failed. Nothing is returned: a partial state is never handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A file could not be read (the message names it, and the row for bad values).
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// The files disagree on the number of rows.
    #[error("{features} has {rows} rows but {labels} has {labels_rows} labels")]
    RowMismatch {
        /// The feature file.
        features: PathBuf,
        /// Its rows.
        rows: u64,
        /// The label file.
        labels: PathBuf,
        /// Its labels.
        labels_rows: u64,
    },
    /// The pipeline refused a batch or stopped.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// `batch` or `producers` is 0.
    #[error("batch and producers must be at least 1")]
    Config,
}

/// Opens a feature/label pair and checks that they agree on the number of rows.
///
/// # Errors
/// [`StreamError::Npy`] or [`StreamError::RowMismatch`].
pub fn open_pair(features: &Path, labels: &Path) -> Result<(FeatureFile, LabelFile), StreamError> {
    let x = FeatureFile::open(features)?;
    let y = LabelFile::open(labels)?;
    if x.rows() != y.rows() {
        return Err(StreamError::RowMismatch {
            features: features.to_path_buf(),
            rows: x.rows(),
            labels: labels.to_path_buf(),
            labels_rows: y.rows(),
        });
    }
    Ok((x, y))
}

/// Streams every row of the pair through one pipeline (two with a split) and returns the
/// final states. `progress` is called with the number of rows of each batch sent, from the
/// producer threads (a progress bar's `inc`).
///
/// # Errors
/// The first error of any producer; the other producers stop at their next batch.
pub fn stream_npy(
    features: &Path,
    labels: &Path,
    config: &StreamConfig,
    progress: impl Fn(u64) + Sync,
) -> Result<Streamed, StreamError> {
    if config.batch == 0 || config.producers == 0 {
        return Err(StreamError::Config);
    }
    let (x, _) = open_pair(features, labels)?;
    let (rows, dim) = (x.rows(), x.dim());
    drop(x);

    let capacity = 2 * config.producers;
    let state = || Stats::with_precision(dim, config.precision).with_threads(config.threads);
    let (train_tx, train_reducer) = pipeline::spawn(state(), capacity);
    let val = config.split.map(|_| pipeline::spawn(state(), capacity));
    let (val_tx, val_reducer) = match val {
        Some((tx, rx)) => (Some(tx), Some(rx)),
        None => (None, None),
    };
    let stop = AtomicBool::new(false);
    let per_producer = rows.div_ceil(config.producers as u64).max(1);
    let outcome: Result<(), StreamError> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..config.producers as u64)
            .map(|k| (k * per_producer, ((k + 1) * per_producer).min(rows)))
            .filter(|(start, end)| start < end)
            .map(|range| {
                let (train_tx, val_tx, progress, stop) = (train_tx.clone(), val_tx.clone(), &progress, &stop);
                scope.spawn(move || {
                    let sinks = Sinks {
                        train: &train_tx,
                        validation: val_tx.as_ref(),
                    };
                    let result = produce(features, labels, range, config, sinks, progress, stop);
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

/// Where a producer sends its batches.
#[derive(Clone, Copy)]
struct Sinks<'a> {
    train: &'a Producer,
    validation: Option<&'a Producer>,
}

fn produce(
    features: &Path,
    labels: &Path,
    (start, end): (u64, u64),
    config: &StreamConfig,
    sinks: Sinks<'_>,
    progress: &(impl Fn(u64) + Sync),
    stop: &AtomicBool,
) -> Result<(), StreamError> {
    let (mut x, mut y) = open_pair(features, labels)?;
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
