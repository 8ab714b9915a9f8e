//! `headstart bench`: update throughput through the whole pipeline on synthetic batches.
//!
//! A pool of seeded random batches, larger than the last-level cache, is generated before
//! the clock starts; producers cycle through it, so every batch comes from memory as a real
//! stream's would, and nothing in the timed part does I/O or generates data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use headstart::pipeline;
use headstart::solve::{SolveOptions, Solver};
use headstart::stats::{Batch, Precision, Stats};
use indicatif::ProgressBar;

use super::plural;
use super::stream::progress_bar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// f64 FMA peak of one core of the development machine: 4.1 GHz boost × 2 FMA units ×
/// 8 f64 lanes (AVX-512) × 2 flops per FMA. f32 has twice the lanes.
const DEFAULT_PEAK_F64_GFLOPS: f64 = 131.2;

#[derive(Args)]
pub struct BenchArgs {
    /// Feature dimension d.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Rows per batch B.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Samples N to stream in the timed part.
    #[arg(long, default_value_t = 1_000_000)]
    samples: u64,
    /// Number of classes C (labels drawn uniformly).
    #[arg(long, default_value_t = 100)]
    classes: i64,
    /// Producer threads sending batches.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Reducer shards: independent pipelines, each one reducer thread, whose states are
    /// merged at the end (exact: the statistics are sums). Producer k feeds shard k mod R.
    #[arg(long, default_value_t = 1)]
    reducers: usize,
    /// Threads computing the products in all (0: every available core), shared among the
    /// reducers (each gets at least one).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// exact (f64 products) or fast (f32 products, f64 totals).
    #[arg(long, default_value = "exact")]
    precision: Precision,
    /// Element type of the generated batches.
    #[arg(long, value_enum, default_value_t = Input::F32)]
    input: Input,
    /// Call `Stats::update` on this thread instead of going through the pipeline (to
    /// measure the pipeline's overhead on the same batches).
    #[arg(long)]
    direct: bool,
    /// Size of the batch pool in MiB (default: 1.25 × the last-level cache, at least 64).
    #[arg(long)]
    pool_mib: Option<f64>,
    /// Seed of the generated batches.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Peak GFLOP/s of one core in f64 (f32 counts twice), for the fraction-of-peak line.
    #[arg(long, default_value_t = DEFAULT_PEAK_F64_GFLOPS)]
    peak_gflops: f64,
    /// Instead of the update: time `--repeat` fresh factor + solve of a C-class head.
    #[arg(long)]
    solve: bool,
    /// With --solve: repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// With --solve: the ridge λ added to G/N.
    #[arg(long, default_value_t = 0.05)]
    lambda: f64,
    /// Expand the batches to M random features (`--dim` is then the raw dimension d).
    #[command(flatten)]
    expand: super::stream::ExpandArgs,
}

/// The empty state the bench accumulates into: plain, or of the expansion asked for.
fn new_state(args: &BenchArgs, threads: usize) -> anyhow::Result<Stats> {
    Ok(match args.expand.spec(args.dim)? {
        Some(spec) => Stats::expanded(spec, args.precision),
        None => Stats::with_precision(args.dim, args.precision),
    }
    .with_threads(threads))
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Input {
    F32,
    F64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.dim == 0 || args.batch == 0 || args.classes <= 0 || args.producers == 0 || args.reducers == 0 {
        bail!("--dim, --batch, --classes, --producers and --reducers must be at least 1");
    }
    if args.dim > headstart::stats::MAX_DIM {
        bail!(
            "--dim {} exceeds the largest supported dimension, {}",
            args.dim,
            headstart::stats::MAX_DIM
        );
    }
    if args.reducers > args.producers {
        bail!(
            "--reducers ({}) must not exceed --producers ({}): each shard needs a producer",
            args.reducers,
            args.producers
        );
    }
    if args.solve {
        return run_solve(&args);
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let element = match args.input {
        Input::F32 => 4,
        Input::F64 => 8,
    };
    let batch_bytes = (args.batch * args.dim * element + args.batch * 8) as f64;
    let llc = last_level_cache_bytes();
    let pool_bytes = match args.pool_mib {
        Some(mib) if !(mib > 0.0 && mib.is_finite()) => bail!("--pool-mib must be positive"),
        Some(mib) => mib * MIB,
        None => (1.25 * llc.unwrap_or(0) as f64).max(64.0 * MIB),
    };
    let batches = ((pool_bytes / batch_bytes).ceil() as usize).max(1);
    let started = Instant::now();
    let pool = generate_pool(&args, batches);
    outln!(
        "headstart bench: d={} B={} C={} N={} producers={} reducers={} threads={} precision={} input={} {}",
        args.dim,
        args.batch,
        args.classes,
        args.samples,
        args.producers,
        args.reducers,
        total_threads(&args),
        args.precision,
        if args.input == Input::F32 { "f32" } else { "f64" },
        if args.direct { "direct" } else { "pipeline" },
    )?;
    if let Some(m) = args.expand.expand {
        outln!(
            "expansion: ReLU random features {} → {m}, seed {}",
            args.dim,
            args.expand.expand_seed
        )?;
    }
    outln!(
        "pool: {}, {:.0} MiB (last-level cache {}), generated in {:.1} s",
        plural(batches as u64, "batch", "batches"),
        batches as f64 * batch_bytes / MIB,
        llc.map_or("unknown".into(), |b| format!("{:.0} MiB", b as f64 / MIB)),
        started.elapsed().as_secs_f64()
    )?;

    let total_batches = args.samples.div_ceil(args.batch as u64);
    let progress = progress_bar(total_batches * args.batch as u64, "samples");
    let per_reducer = if args.direct {
        total_threads(&args)
    } else {
        (total_threads(&args) / args.reducers).max(1)
    };
    let stats = new_state(&args, per_reducer)?;
    let (elapsed, stats) = if args.direct {
        stream_direct(stats, &pool, total_batches, &progress)?
    } else {
        stream_pipeline(
            stats,
            &pool,
            total_batches,
            args.producers,
            args.reducers,
            &progress,
        )?
    };
    progress.finish_and_clear();
    report(&args, &stats, elapsed, batches as f64 * batch_bytes)?;
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// `--threads`, with 0 meaning every available core.
fn total_threads(args: &BenchArgs) -> usize {
    match args.threads {
        0 => headstart::stats::default_threads(),
        n => n,
    }
}

/// Seeded random batches (uniform in [−1, 1), uniform labels), generated in parallel; the
/// content depends only on the seed and the batch index.
fn generate_pool(args: &BenchArgs, batches: usize) -> Vec<Arc<Batch>> {
    let (rows, dim, classes) = (args.batch, args.dim, args.classes);
    (0..batches)
        .into_par_iter()
        .map(|i| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(args.seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64));
            let labels: Vec<i64> = (0..rows).map(|_| rng.random_range(0..classes)).collect();
            let batch = match args.input {
                Input::F32 => {
                    let x: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    Batch::new(x, labels)
                }
                Input::F64 => {
                    let x: Vec<f64> = (0..rows * dim).map(|_| rng.random_range(-1.0f64..1.0)).collect();
                    Batch::new(x, labels)
                }
            };
            Arc::new(batch)
        })
        .collect()
}

/// The timed part through the pipeline: producer k sends batches k, k + K, k + 2K, … of the
/// cycled pool to shard k mod R; the clock stops when every shard has applied its last
/// batch and the shards' states are merged.
fn stream_pipeline(
    stats: Stats,
    pool: &[Arc<Batch>],
    total_batches: u64,
    producers: usize,
    reducers: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(Duration, Stats)> {
    let (dim, precision, threads, expansion) = (
        stats.dim(),
        stats.precision(),
        stats.threads(),
        stats.expansion().copied(),
    );
    let mut initial = Some(stats);
    let shards: Vec<_> = (0..reducers)
        .map(|_| {
            let state = initial.take().unwrap_or_else(|| {
                match expansion {
                    Some(spec) => Stats::expanded(spec, precision),
                    None => Stats::with_precision(dim, precision),
                }
                .with_threads(threads)
            });
            // One batch waits per producer beyond the first (the first hands its batch over).
            pipeline::spawn(state, producers.div_ceil(reducers) - 1)
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..producers as u64)
            .map(|k| {
                let p = shards[k as usize % reducers].0.clone();
                s.spawn(move || -> anyhow::Result<()> {
                    let mut i = k;
                    while i < total_batches {
                        let batch = &pool[(i % pool.len() as u64) as usize];
                        p.send(Arc::clone(batch))?;
                        progress.inc(batch.rows() as u64);
                        i += producers as u64;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("producer thread panicked")?;
        }
        Ok(())
    })?;
    let mut merged: Option<Stats> = None;
    for (producer, reducer) in shards {
        drop(producer);
        let part = reducer.join().context("reducer")?;
        match merged.as_mut() {
            None => merged = Some(part),
            Some(total) => total.merge(&part)?,
        }
    }
    let stats = merged.expect("at least one shard");
    Ok((start.elapsed(), stats))
}

/// The same batches applied by `Stats::update_batch` on this thread, with no pipeline.
fn stream_direct(
    mut stats: Stats,
    pool: &[Arc<Batch>],
    total_batches: u64,
    progress: &ProgressBar,
) -> anyhow::Result<(Duration, Stats)> {
    let start = Instant::now();
    for i in 0..total_batches {
        let batch = &pool[(i % pool.len() as u64) as usize];
        stats.update_batch(batch)?;
        progress.inc(batch.rows() as u64);
    }
    Ok((start.elapsed(), stats))
}

fn report(args: &BenchArgs, stats: &Stats, elapsed: Duration, pool_bytes: f64) -> anyhow::Result<()> {
    let seconds = elapsed.as_secs_f64();
    let samples = stats.samples() as f64;
    let d = args.dim as f64;
    let m = stats.dim() as f64;
    // The lower triangle with its diagonal: m(m+1)/2 multiply-adds per sample, and d·m more
    // for an expansion's projection (m = d without one).
    let projection = if stats.expansion().is_some() {
        2.0 * d * m
    } else {
        0.0
    };
    let gflops = samples * (m * (m + 1.0) + projection) / seconds / 1e9;
    let peak = match args.precision {
        Precision::Exact => args.peak_gflops,
        Precision::Fast => 2.0 * args.peak_gflops,
    };
    outln!(
        "time: {seconds:.3} s for {} in {}",
        plural(stats.samples(), "sample", "samples"),
        plural(stats.samples().div_ceil(args.batch as u64), "batch", "batches")
    )?;
    outln!(
        "gflops: {gflops:.1} GFLOP/s in the Gram product{} ({:.0}% of one core's {} peak, {peak:.1} GFLOP/s)",
        if stats.expansion().is_some() {
            " and the projection"
        } else {
            ""
        },
        100.0 * gflops / peak,
        if args.precision == Precision::Exact {
            "f64"
        } else {
            "f32"
        },
    )?;
    match peak_rss_bytes() {
        Some(rss) => outln!(
            "memory: peak RSS {:.1} MiB = pool {:.1} MiB + {:.1} MiB other; state {:.1} MiB",
            rss as f64 / MIB,
            pool_bytes / MIB,
            (rss as f64 - pool_bytes) / MIB,
            stats.heap_bytes() as f64 / MIB
        )?,
        None => outln!("memory: peak RSS unknown (no /proc/self/status)")?,
    }
    outln!("throughput: {:.0} samples/s", samples / seconds)
}

/// `--solve`: the median of `--repeat` factor + solve runs, each with a fresh solver.
fn run_solve(args: &BenchArgs) -> anyhow::Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    // Enough samples for a well-conditioned G; labels in turn, so every class is present.
    let rows = (2 * args.dim).max(4 * args.classes as usize).max(args.batch);
    let bench = BenchArgs {
        batch: rows,
        input: Input::F32,
        ..*args
    };
    let pool = generate_pool(&bench, 1);
    let labels: Vec<i64> = (0..rows as i64).map(|i| i % args.classes).collect();
    let mut stats = new_state(args, 0)?;
    stats.update_batch(&Batch::new(pool[0].features.clone(), labels))?;
    let rss_before = peak_rss_bytes();
    let opts = SolveOptions {
        lambda: args.lambda.into(),
        ..Default::default()
    };
    let mut times: Vec<f64> = (0..args.repeat)
        .map(|_| {
            let start = Instant::now();
            let head = Solver::new().solve(&stats, &opts)?;
            std::hint::black_box(head);
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<anyhow::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    outln!(
        "headstart bench --solve: d={} C={} λ={} ({}), {}",
        stats.dim(),
        stats.classes().len(),
        args.lambda,
        plural(rows as u64, "sample", "samples"),
        plural(args.repeat as u64, "run", "runs")
    )?;
    outln!(
        "solve: {:.3} ms median (min {:.3}, max {:.3})",
        1e3 * times[times.len() / 2],
        1e3 * times[0],
        1e3 * times[times.len() - 1]
    )?;
    if let (Some(before), Some(after)) = (rss_before, peak_rss_bytes()) {
        outln!(
            "memory: peak RSS {:.1} MiB ({:.1} MiB before the solves; state {:.1} MiB)",
            after as f64 / MIB,
            before as f64 / MIB,
            stats.heap_bytes() as f64 / MIB
        )?;
    }
    Ok(())
}

/// The largest CPU cache the kernel reports (L3 on most x86 machines).
fn last_level_cache_bytes() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| parse_size(s.trim()))
        .max()
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "" => n,
        "K" => n << 10,
        "M" => n << 20,
        "G" => n << 30,
        _ => return None,
    })
}

/// Peak resident set size (VmHWM) of this process.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn cache_sizes_parse_with_their_units() {
        assert_eq!(parse_size("480M"), Some(480 << 20));
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1T"), None);
        assert_eq!(parse_size("M"), None);
    }
}
