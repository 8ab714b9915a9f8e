//! Streaming `.npy` files through the pipeline from several producer threads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use headstart::ingest::npy::{FeatureFile, LabelFile};
use headstart::pipeline::{self, Producer};
use headstart::stats::{Batch, Features, Precision, Stats};
use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// A seeded split of the input rows into training and validation.
#[derive(Clone, Copy)]
pub struct Split {
    pub fraction: f64,
    pub seed: u64,
}

impl Split {
    /// Whether file row `row` goes to validation: a hash of (seed, row), so the split does
    /// not depend on batching or on the number of producers.
    fn is_validation(&self, row: u64) -> bool {
        let mut z = self.seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < self.fraction
    }
}

/// How `fit` and `ingest` read their input.
#[derive(clap::Args, Clone, Copy)]
pub struct StreamArgs {
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    pub batch: usize,
    /// Producer threads reading the input.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// exact (each batch's product in f64) or fast (in f32, totals in f64; see docs/math.md).
    #[arg(long, default_value = "exact")]
    pub precision: Precision,
    /// Threads computing each batch's product (0: every available core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl StreamArgs {
    /// The streaming configuration, with an optional validation split.
    pub fn config(&self, split: Option<Split>) -> StreamConfig {
        StreamConfig {
            batch: self.batch,
            producers: self.producers,
            split,
            precision: self.precision,
            threads: self.threads,
        }
    }
}

pub struct StreamConfig {
    pub batch: usize,
    pub producers: usize,
    pub split: Option<Split>,
    pub precision: Precision,
    pub threads: usize,
}

pub struct Streamed {
    pub train: Stats,
    pub validation: Option<Stats>,
    pub rows: u64,
    pub dim: usize,
}

/// Opens a feature/label pair and checks that they agree.
pub fn open_pair(features: &Path, labels: &Path) -> anyhow::Result<(FeatureFile, LabelFile)> {
    let x = FeatureFile::open(features)?;
    let y = LabelFile::open(labels)?;
    if x.rows() != y.rows() {
        bail!(
            "{} has {} rows but {} has {} labels",
            features.display(),
            x.rows(),
            labels.display(),
            y.rows()
        );
    }
    Ok((x, y))
}

/// Streams every row of the pair through one pipeline (two with a split) and returns the
/// final states. Shows a progress bar on stderr when it is a terminal.
pub fn stream_files(features: &Path, labels: &Path, config: &StreamConfig) -> anyhow::Result<Streamed> {
    if config.batch == 0 || config.producers == 0 {
        bail!("--batch and --producers must be at least 1");
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
    let progress = progress_bar(rows, "rows");
    let stop = AtomicBool::new(false);
    let per_producer = rows.div_ceil(config.producers as u64).max(1);
    let outcome: anyhow::Result<()> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..config.producers as u64)
            .map(|k| (k * per_producer, ((k + 1) * per_producer).min(rows)))
            .filter(|(start, end)| start < end)
            .map(|range| {
                let (train_tx, val_tx, progress, stop) = (train_tx.clone(), val_tx.clone(), &progress, &stop);
                scope.spawn(move || {
                    let result = produce(
                        features,
                        labels,
                        range,
                        config,
                        &train_tx,
                        val_tx.as_ref(),
                        progress,
                        stop,
                    );
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
    let train = train_reducer.join().context("reducer")?;
    let validation = val_reducer
        .map(|r| r.join().context("validation reducer"))
        .transpose()?;
    progress.finish_and_clear();
    outcome?;
    Ok(Streamed {
        train,
        validation,
        rows,
        dim,
    })
}

#[allow(clippy::too_many_arguments)]
fn produce(
    features: &Path,
    labels: &Path,
    (start, end): (u64, u64),
    config: &StreamConfig,
    train: &Producer,
    validation: Option<&Producer>,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let (mut x, mut y) = open_pair(features, labels)?;
    let mut row = start;
    while row < end && !stop.load(Ordering::Relaxed) {
        let count = (config.batch as u64).min(end - row);
        let xs = x.read_rows(row, count)?;
        let ys = y.read_rows(row, count)?;
        match (config.split, validation) {
            (Some(split), Some(val)) => {
                let (t, v) = split_batch(xs, ys, row, x.dim(), &split);
                if !t.labels.is_empty() {
                    train.send(t)?;
                }
                if !v.labels.is_empty() {
                    val.send(v)?;
                }
            }
            _ => train.send(Batch::new(xs, ys))?,
        }
        row += count;
        progress.inc(count);
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

/// A progress bar on stderr counting `len` items described by `what` (e.g. "rows");
/// indicatif draws nothing when stderr is not a terminal.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{human_pos}}/{{human_len}} {what}, {{rate}}, eta {{eta}}"
        ))
        .expect("a valid template")
        .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", format_rate(state.per_sec()));
        }),
    );
    bar
}

/// A rate rounded to a whole number with thousands separators: `297,402/s`.
pub fn format_rate(per_sec: f64) -> String {
    let rounded = if per_sec.is_finite() && per_sec > 0.0 {
        per_sec.round() as u64
    } else {
        0
    };
    format!("{}/s", HumanCount(rounded))
}

#[cfg(test)]
mod tests {
    use super::format_rate;

    #[test]
    fn rates_are_whole_numbers_with_separators() {
        assert_eq!(format_rate(297_401.900_7), "297,402/s");
        assert_eq!(format_rate(0.4), "0/s");
        assert_eq!(format_rate(f64::NAN), "0/s");
    }
}
