//! The class-incremental demonstration on bundled real data.
//!
//! The UCI digits (1,797 real 8 × 8 images, CC BY 4.0) pass through a fixed, seeded random
//! ReLU projection (a RanPAC-style stand-in for a frozen backbone) and arrive as a sequence
//! of tasks of two classes each, streamed by several producer threads through the
//! [`pipeline`]. The layer grows at each task: old rows are kept, new rows are added. After
//! each task the demo reports:
//!
//! - the test accuracy of the LS head (`nc`, scope `all`) over every class seen so far;
//! - the cross-entropy, over every seen class, of the layer at the task switch on the new
//!   classes' training data (rehearsal-free: only the new task's data), with the new rows
//!   started (a) as headstart's recommended start: LS rows (`nc`, scope `all`, the default
//!   scale-free λ) calibrated by [`fit_scale`] on a sample of [`DemoConfig::calibration`] rows
//!   of the new task, (b) as the same LS rows uncalibrated, or (c) at random as PyTorch's
//!   `nn.Linear` does (weights and bias uniform in ±1/√d; mean over 10 draws). The layer's
//!   old rows are the calibrated rows of the earlier tasks, and the loss is taken on the task's
//!   training rows outside the calibration sample.
//!
//! [`fit_scale`]: crate::solve::fit_scale

mod digits;

pub use digits::{PIXELS, digits};

use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::pipeline::{self, PipelineError};
use crate::solve::{
    CalibrateError, Form, Head, Lambda, ScaleFit, Scope, SolveError, SolveOptions, Solver, fit_scale,
};
use crate::stats::{Batch, Stats};

/// Settings of the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Feature dimension of the random ReLU projection.
    pub dim: usize,
    /// Classes per task (10 digits must divide evenly).
    pub classes_per_task: usize,
    /// Producer threads streaming each task.
    pub producers: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Share of each class held out for testing.
    pub test_fraction: f64,
    /// λ for every solve.
    pub lambda: Lambda,
    /// Rows of each new task that calibrate the new rows' scale (taken before the loss rows).
    pub calibration: usize,
    /// Seed of the projection, the split, the class order and the random rows.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            dim: 512,
            classes_per_task: 2,
            producers: 3,
            batch: 32,
            test_fraction: 0.3,
            lambda: Lambda::default(),
            calibration: 64,
            seed: 7,
        }
    }
}

/// One row of the demo's table.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task number (1-based).
    pub task: usize,
    /// The classes this task added.
    pub new_classes: Vec<i64>,
    /// Every class seen so far.
    pub seen: Vec<i64>,
    /// Training samples streamed in this task.
    pub samples: usize,
    /// Test accuracy of the LS head over the seen classes.
    pub test_accuracy: f64,
    /// Cross-entropy at the switch on the new classes' training data outside the calibration
    /// sample, new rows started as calibrated LS rows.
    pub ce_calibrated: f64,
    /// Same, uncalibrated LS rows.
    pub ce_ls: f64,
    /// Same, randomly initialised new rows (mean over 10 draws).
    pub ce_random: f64,
    /// The scale fitted for the new LS rows.
    pub scale: f64,
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// One row per task.
    pub rows: Vec<TaskRow>,
    /// The final LS head over all classes.
    pub head: Head,
    /// Wall time of the whole run, in seconds.
    pub seconds: f64,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A solve failed.
    #[error(transparent)]
    Solve(#[from] SolveError),
    /// Calibrating new rows failed.
    #[error(transparent)]
    Calibrate(#[from] CalibrateError),
    /// Writing the head failed.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// The configuration is unusable.
    #[error("invalid demo configuration: {0}")]
    Config(String),
}

/// Maps 64 pixels to `dim` ReLU features with a fixed seeded Gaussian projection.
struct Projection {
    /// `dim` rows of 64 weights.
    weights: Vec<f32>,
}

impl Projection {
    fn new(dim: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scale = 1.0 / (PIXELS as f32).sqrt();
        let weights = (0..dim * PIXELS)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut rng);
                z * scale
            })
            .collect();
        Projection { weights }
    }

    /// ReLU(P · (x/8 − 1)) for one image.
    fn features(&self, pixels: &[f32]) -> Vec<f32> {
        let centred: Vec<f32> = pixels.iter().map(|p| p / 8.0 - 1.0).collect();
        self.weights
            .chunks_exact(PIXELS)
            .map(|w| w.iter().zip(&centred).map(|(a, b)| a * b).sum::<f32>().max(0.0))
            .collect()
    }
}

/// The demo's features: every bundled digit through the seeded random ReLU projection to
/// `dim` features, with its label (0–9).
///
/// # Examples
/// ```
/// let (x, y) = headstart::demo::features(16, 7);
/// assert_eq!(x.len(), 16 * y.len());
/// assert!(x.iter().all(|v| *v >= 0.0));
/// ```
pub fn features(dim: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let (pixels, labels) = digits();
    let projection = Projection::new(dim, seed);
    let x = pixels
        .chunks_exact(PIXELS)
        .flat_map(|p| projection.features(p))
        .collect();
    (x, labels)
}

/// Runs the demo; writes the final head to `out_dir/head.safetensors` when given.
///
/// # Errors
/// [`DemoError`] if the configuration is unusable, or streaming, solving or writing fails.
///
/// # Examples
/// ```
/// use headstart::demo::{run, DemoConfig};
/// let report = run(&DemoConfig { dim: 64, ..DemoConfig::default() }, None)?;
/// assert_eq!(report.rows.len(), 5);
/// assert!(report.rows[0].test_accuracy > 0.9);
/// # Ok::<(), headstart::demo::DemoError>(())
/// ```
pub fn run(config: &DemoConfig, out_dir: Option<&Path>) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    if config.classes_per_task == 0 || 10 % config.classes_per_task != 0 {
        return Err(DemoError::Config("classes_per_task must divide 10".into()));
    }
    if config.dim > crate::stats::MAX_DIM {
        return Err(DemoError::Config(format!(
            "dim must be at most {}",
            crate::stats::MAX_DIM
        )));
    }
    if config.dim == 0 || config.producers == 0 || config.batch == 0 || config.calibration == 0 {
        return Err(DemoError::Config(
            "dim, producers, batch and calibration must be positive".into(),
        ));
    }
    if !(0.0..1.0).contains(&config.test_fraction) {
        return Err(DemoError::Config("test_fraction must lie in [0, 1)".into()));
    }
    let (pixels, labels) = digits();
    let projection = Projection::new(config.dim, config.seed);
    let features: Vec<Vec<f32>> = pixels
        .chunks_exact(PIXELS)
        .map(|p| projection.features(p))
        .collect();

    // Seeded, per-class split into training and test rows, and a seeded class order.
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5eed);
    let mut train: Vec<Vec<usize>> = vec![Vec::new(); 10];
    let mut test: Vec<usize> = Vec::new();
    for class in 0..10 {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        let n_test = (members.len() as f64 * config.test_fraction).round() as usize;
        test.extend_from_slice(&members[..n_test]);
        train[class as usize] = members[n_test..].to_vec();
    }
    let mut order: Vec<i64> = (0..10).collect();
    order.shuffle(&mut rng);

    let solver = Solver::new();
    let (producer, reducer) = pipeline::spawn(Stats::new(config.dim), 2 * config.producers);
    let mut rows = Vec::new();
    let mut seen: Vec<i64> = Vec::new();
    // The layer as it stands: the calibrated rows of every earlier task.
    let mut layer: Option<Head> = None;
    for (t, new_classes) in order.chunks(config.classes_per_task).enumerate() {
        if t > 0 {
            producer.begin_task()?;
        }
        let mut task_rows: Vec<usize> = new_classes
            .iter()
            .flat_map(|&c| train[c as usize].clone())
            .collect();
        task_rows.shuffle(&mut rng);
        stream_task(&producer, &task_rows, &features, &labels, config)?;
        let stats = producer.snapshot()?;
        seen.extend_from_slice(new_classes);

        let solve = |classes: &[i64]| {
            solver.solve(
                &stats,
                &SolveOptions {
                    form: Form::Nc,
                    scope: Scope::All,
                    lambda: config.lambda,
                    bias: true,
                    classes: Some(classes.to_vec()),
                },
            )
        };
        let head_all = solve(&seen)?;
        let test_seen: Vec<usize> = test
            .iter()
            .copied()
            .filter(|&i| seen.contains(&labels[i]))
            .collect();
        let correct = test_seen
            .iter()
            .filter(|&&i| head_all.predict(&widen(&features[i])) == labels[i])
            .count();

        // The new rows: LS rows, calibrated on the first rows of the task, and the loss at the
        // switch on the rest.
        let ls_rows = solve(new_classes)?;
        let split = config.calibration.min(task_rows.len() / 2);
        let (calibration, rest) = task_rows.split_at(split);
        let fit = calibrate(layer.as_ref(), &ls_rows, calibration, &features, &labels)?;
        let calibrated = scaled(&ls_rows, fit.scale);
        let own: Vec<&Vec<f32>> = rest.iter().map(|&i| &features[i]).collect();
        let own_labels: Vec<i64> = rest.iter().map(|&i| labels[i]).collect();
        let ce_calibrated = cross_entropy(layer.as_ref(), &calibrated, &own, &own_labels);
        let ce_ls = cross_entropy(layer.as_ref(), &ls_rows, &own, &own_labels);
        let draws = 10;
        let mut ce_random = 0.0;
        for _ in 0..draws {
            let random = random_rows(new_classes, config.dim, &mut rng);
            ce_random += cross_entropy(layer.as_ref(), &random, &own, &own_labels) / draws as f64;
        }
        rows.push(TaskRow {
            task: t + 1,
            new_classes: new_classes.to_vec(),
            seen: seen.clone(),
            samples: task_rows.len(),
            test_accuracy: correct as f64 / test_seen.len().max(1) as f64,
            ce_calibrated,
            ce_ls,
            ce_random,
            scale: fit.scale,
        });
        layer = Some(match layer {
            Some(old) => stacked(&old, &calibrated),
            None => calibrated,
        });
    }
    drop(producer);
    let final_stats = reducer.join()?;
    let head = solver.solve(
        &final_stats,
        &SolveOptions {
            form: Form::Nc,
            scope: Scope::All,
            lambda: config.lambda,
            bias: true,
            classes: None,
        },
    )?;
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).map_err(|source| crate::export::ExportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(
            "source".into(),
            "headstart demo (UCI digits, seeded random ReLU features)".into(),
        );
        extra.insert("demo_seed".into(), config.seed.to_string());
        crate::export::write_head(&dir.join("head.safetensors"), &head, "", &extra)?;
    }
    Ok(DemoReport {
        rows,
        head,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Streams one task's rows from `config.producers` threads, each sending its share in batches.
fn stream_task(
    producer: &pipeline::Producer,
    rows: &[usize],
    features: &[Vec<f32>],
    labels: &[i64],
    config: &DemoConfig,
) -> Result<(), PipelineError> {
    let share = rows.len().div_ceil(config.producers);
    std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(share.max(1))
            .map(|part| {
                let p = producer.clone();
                scope.spawn(move || {
                    for chunk in part.chunks(config.batch) {
                        let x: Vec<f32> = chunk.iter().flat_map(|&i| features[i].iter().copied()).collect();
                        let y: Vec<i64> = chunk.iter().map(|&i| labels[i]).collect();
                        p.send(Batch::new(x, y))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("producer thread panicked"))
    })
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// New rows as PyTorch's `nn.Linear` initialises them: weight and bias uniform in ±1/√d.
fn random_rows(classes: &[i64], dim: usize, rng: &mut ChaCha8Rng) -> Head {
    let bound = 1.0 / (dim as f64).sqrt();
    let c = classes.len();
    Head {
        weight: (0..c * dim).map(|_| rng.random_range(-bound..bound)).collect(),
        bias: (0..c).map(|_| rng.random_range(-bound..bound)).collect(),
        class_ids: classes.to_vec(),
        dim,
        info: crate::solve::HeadInfo {
            expansion: None,
            form: Form::Nc,
            scope: Scope::Task,
            lambda: 0.0,
            lambda_rule: Lambda::Absolute(0.0),
            bias: true,
            samples: 0,
            class_counts: vec![0; c],
        },
    }
}

/// The layer's logits on `x`: the `old` rows, then the `new` rows, with the class ids in order.
fn layer_logits(old: Option<&Head>, new: &Head, x: &[f64]) -> (Vec<f64>, Vec<i64>) {
    let mut logits = old.map(|h| h.logits(x)).unwrap_or_default();
    let mut ids = old.map(|h| h.class_ids.clone()).unwrap_or_default();
    logits.extend(new.logits(x));
    ids.extend_from_slice(&new.class_ids);
    (logits, ids)
}

/// Mean cross-entropy of the layer made of `old` rows followed by `new` rows, on the samples.
fn cross_entropy(old: Option<&Head>, new: &Head, xs: &[&Vec<f32>], ys: &[i64]) -> f64 {
    let mut ce = 0.0;
    for (x, &y) in xs.iter().zip(ys) {
        let (logits, ids) = layer_logits(old, new, &widen(x));
        let target = ids.iter().position(|&c| c == y).expect("sample of a head class");
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        ce += lse - logits[target];
    }
    ce / xs.len().max(1) as f64
}

/// Fits the scale of the `new` rows joining the `old` ones on the sample rows `sample`.
fn calibrate(
    old: Option<&Head>,
    new: &Head,
    sample: &[usize],
    features: &[Vec<f32>],
    labels: &[i64],
) -> Result<ScaleFit, DemoError> {
    let (mut fixed, mut fresh, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    let old_cols = old.map_or(0, Head::rows);
    for &i in sample {
        let (logits, ids) = layer_logits(old, new, &widen(&features[i]));
        fixed.extend_from_slice(&logits[..old_cols]);
        fresh.extend_from_slice(&logits[old_cols..]);
        targets.push(
            ids.iter()
                .position(|&c| c == labels[i])
                .expect("sample of a head class"),
        );
    }
    Ok(fit_scale(&fixed, old_cols, &fresh, new.rows(), &targets, 30.0)?)
}

/// `head` with every weight and bias multiplied by `factor`.
fn scaled(head: &Head, factor: f64) -> Head {
    let mut out = head.clone();
    out.weight
        .iter_mut()
        .chain(out.bias.iter_mut())
        .for_each(|v| *v *= factor);
    out
}

/// The rows of `old` followed by the rows of `new`.
fn stacked(old: &Head, new: &Head) -> Head {
    let mut out = old.clone();
    out.weight.extend_from_slice(&new.weight);
    out.bias.extend_from_slice(&new.bias);
    out.class_ids.extend_from_slice(&new.class_ids);
    out.info.class_counts.extend_from_slice(&new.info.class_counts);
    out
}

/// Formats the report as the table `headstart demo` prints.
pub fn format_report(report: &DemoReport) -> String {
    let mut out = String::new();
    out.push_str("                          LS head     loss at the switch (new task's data)\n");
    out.push_str("task  new   seen  train   test acc   calibrated LS      LS  random   scale\n");
    for r in &report.rows {
        let new: Vec<String> = r.new_classes.iter().map(i64::to_string).collect();
        out.push_str(&format!(
            "{:>4}  {:<4}  {:>4}  {:>5}  {:>8.1}%  {:>14.3}  {:>6.3}  {:>6.3}  {:>6.1}\n",
            r.task,
            new.join(","),
            r.seen.len(),
            r.samples,
            100.0 * r.test_accuracy,
            r.ce_calibrated,
            r.ce_ls,
            r.ce_random,
            r.scale
        ));
    }
    out
}
