//! The command line's streaming options and progress bars; the streaming itself is
//! `headstart::ingest::stream`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use headstart::ingest::source::{FeatureSpec, Format, LabelSpec};
use headstart::ingest::stream::stream_pair;
pub use headstart::ingest::stream::{Split, StreamConfig, Streamed, open_sources};
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
    #[command(flatten)]
    pub expand: ExpandArgs,
}

/// The random-feature expansion of `fit`, `ingest` and `serve`.
#[derive(clap::Args, Clone, Copy, Default)]
pub struct ExpandArgs {
    /// Accumulate M random features z = ReLU(x·R) instead of the raw features (R is
    /// regenerated from --expand-seed, never stored; docs/math.md, "Random features").
    #[arg(long, value_name = "M")]
    pub expand: Option<usize>,
    /// The seed of R for --expand.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "expand")]
    pub expand_seed: u64,
}

impl ExpandArgs {
    /// The expansion of `dim` raw features, if asked for.
    pub fn spec(&self, dim: usize) -> anyhow::Result<Option<headstart::expand::Expansion>> {
        self.expand
            .map(|m| headstart::expand::Expansion::new(dim, m, self.expand_seed))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--expand: {e}"))
    }
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
            expand: self.expand.expand,
            expand_seed: self.expand.expand_seed,
        }
    }
}

/// Where `fit`, `ingest` and `push` read their features and labels.
#[derive(clap::Args, Clone)]
pub struct InputArgs {
    /// Features: a 2-D float32/float64 .npy file (C order), a Parquet file (.parquet, .pq;
    /// with --feature-column) or a safetensors file (with --tensor).
    #[arg(long)]
    pub features: PathBuf,
    /// Labels: a 1-D integer .npy file, one per feature row, or a Parquet file (with
    /// --label-column) or a safetensors file (with --label-tensor). Not needed when the
    /// features' Parquet or safetensors file holds them.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Parquet features: the column holding them (FixedSizeList, List or LargeList of
    /// float32/float64).
    #[arg(long)]
    pub feature_column: Option<String>,
    /// Parquet labels: the integer column holding them, in --labels or else in --features.
    #[arg(long)]
    pub label_column: Option<String>,
    /// safetensors features: the 2-D tensor holding them (F32, F64, F16 or BF16).
    #[arg(long)]
    pub tensor: Option<String>,
    /// safetensors labels: the 1-D integer tensor holding them, in --labels or else in
    /// --features.
    #[arg(long)]
    pub label_tensor: Option<String>,
}

impl InputArgs {
    /// The specs of --features and --labels; a column or tensor option that does not fit
    /// their format is an error.
    pub fn specs(&self) -> anyhow::Result<(FeatureSpec, LabelSpec)> {
        self.resolve(
            &self.features,
            self.labels.as_deref(),
            "--features",
            "--labels",
            true,
        )
    }

    /// The specs of a pair read with these column and tensor options (`fit --val-features`
    /// too); `features_flag` and `labels_flag` name the options in messages. Unless `strict`,
    /// an option that does not fit the pair's format is ignored ([`Self::check_used`] then
    /// checks that it fits one of the pairs).
    pub fn resolve(
        &self,
        features: &Path,
        labels: Option<&Path>,
        features_flag: &str,
        labels_flag: &str,
        strict: bool,
    ) -> anyhow::Result<(FeatureSpec, LabelSpec)> {
        let format = Format::detect(features);
        let (column, tensor) = (&self.feature_column, &self.tensor);
        let wrong = |flag: &str, applies: &str, path: &Path, format: Format| {
            anyhow::anyhow!(
                "{flag} applies to {applies}, but {} is a {} file",
                path.display(),
                format.name()
            )
        };
        let name = match format {
            Format::Npy | Format::Safetensors if strict && column.is_some() => {
                return Err(wrong("--feature-column", "Parquet features", features, format));
            }
            Format::Npy | Format::Parquet if strict && tensor.is_some() => {
                return Err(wrong("--tensor", "safetensors features", features, format));
            }
            Format::Npy => None,
            Format::Parquet => column.clone(),
            Format::Safetensors => tensor.clone(),
        };
        let feature_spec = FeatureSpec {
            path: features.to_path_buf(),
            format,
            name,
        };
        if feature_spec.name.is_none() && format != Format::Npy {
            let flag = if format == Format::Parquet {
                "--feature-column"
            } else {
                "--tensor"
            };
            let e = feature_spec
                .open()
                .err()
                .map_or_else(|| anyhow::anyhow!("{}", features.display()), anyhow::Error::new);
            return Err(e.context(format!("{flag} is required with {} features", format.name())));
        }
        let (label_path, label_format) = match labels {
            Some(path) => (path, Format::detect(path)),
            None => (features, format),
        };
        let (lcolumn, ltensor) = (&self.label_column, &self.label_tensor);
        let name = match label_format {
            Format::Npy | Format::Safetensors if strict && lcolumn.is_some() => {
                return Err(wrong(
                    "--label-column",
                    "Parquet labels",
                    label_path,
                    label_format,
                ));
            }
            Format::Npy | Format::Parquet if strict && ltensor.is_some() => {
                return Err(wrong(
                    "--label-tensor",
                    "safetensors labels",
                    label_path,
                    label_format,
                ));
            }
            Format::Npy if labels.is_none() => {
                bail!(
                    "{labels_flag} is required with .npy features ({features_flag} {})",
                    features.display()
                )
            }
            Format::Npy => None,
            Format::Parquet => lcolumn.clone(),
            Format::Safetensors => ltensor.clone(),
        };
        if name.is_none() && label_format != Format::Npy {
            let flag = if label_format == Format::Parquet {
                "--label-column"
            } else {
                "--label-tensor"
            };
            bail!(
                "the labels need {flag} (the labels' {} in {}){}",
                if label_format == Format::Parquet {
                    "column"
                } else {
                    "tensor"
                },
                label_path.display(),
                if labels.is_none() {
                    format!(", or {labels_flag} FILE")
                } else {
                    String::new()
                }
            );
        }
        let label_spec = LabelSpec {
            path: label_path.to_path_buf(),
            format: label_format,
            name,
        };
        Ok((feature_spec, label_spec))
    }

    /// Checks that each column or tensor option given fits the format of one of `pairs`.
    pub fn check_used(&self, pairs: &[&(FeatureSpec, LabelSpec)]) -> anyhow::Result<()> {
        let features = |f: Format| pairs.iter().any(|(x, _)| x.format == f);
        let labels = |f: Format| pairs.iter().any(|(_, y)| y.format == f);
        let files: Vec<String> = pairs.iter().map(|(x, _)| x.path.display().to_string()).collect();
        for (flag, given, used, applies) in [
            (
                "--feature-column",
                self.feature_column.is_some(),
                features(Format::Parquet),
                "Parquet features",
            ),
            (
                "--tensor",
                self.tensor.is_some(),
                features(Format::Safetensors),
                "safetensors features",
            ),
            (
                "--label-column",
                self.label_column.is_some(),
                labels(Format::Parquet),
                "Parquet labels",
            ),
            (
                "--label-tensor",
                self.label_tensor.is_some(),
                labels(Format::Safetensors),
                "safetensors labels",
            ),
        ] {
            if given && !used {
                bail!(
                    "{flag} applies to {applies}, but none of {} has them",
                    files.join(", ")
                );
            }
        }
        Ok(())
    }

    /// What the head's metadata records about the input: `features`, `labels`, and the
    /// columns or tensors given.
    pub fn metadata(&self, labels: &LabelSpec) -> Vec<(String, String)> {
        let mut entries = vec![
            ("features".to_string(), self.features.display().to_string()),
            ("labels".to_string(), labels.path.display().to_string()),
        ];
        for (key, value) in [
            ("feature_column", &self.feature_column),
            ("label_column", &self.label_column),
            ("tensor", &self.tensor),
            ("label_tensor", &self.label_tensor),
        ] {
            if let Some(v) = value {
                entries.push((key.to_string(), v.clone()));
            }
        }
        entries
    }
}

/// Streams the pair with a progress bar on stderr (drawn only on a terminal).
pub fn stream_files(
    features: &FeatureSpec,
    labels: &LabelSpec,
    config: &StreamConfig,
) -> anyhow::Result<Streamed> {
    if config.batch == 0 || config.producers == 0 {
        bail!("--batch and --producers must be at least 1");
    }
    let rows = open_sources(features, labels)?.0.rows();
    let progress = progress_bar(rows, "rows");
    let streamed = stream_pair(features, labels, config, |n| progress.inc(n));
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
