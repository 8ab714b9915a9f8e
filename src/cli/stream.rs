//! The command line's streaming options and progress bars; the streaming itself is
//! `headstart::ingest::stream`.

use std::path::Path;

use anyhow::bail;
use headstart::ingest::stream::stream_npy;
pub use headstart::ingest::stream::{Split, StreamConfig, Streamed, open_pair};
use headstart::stats::Precision;
use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

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

/// Streams the pair with a progress bar on stderr (drawn only on a terminal).
pub fn stream_files(features: &Path, labels: &Path, config: &StreamConfig) -> anyhow::Result<Streamed> {
    if config.batch == 0 || config.producers == 0 {
        bail!("--batch and --producers must be at least 1");
    }
    let rows = open_pair(features, labels)?.0.rows();
    let progress = progress_bar(rows, "rows");
    let streamed = stream_npy(features, labels, config, |n| progress.inc(n));
    progress.finish_and_clear();
    Ok(streamed?)
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
