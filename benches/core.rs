//! Criterion benchmarks of the core operations: the statistics update (f32 and f64 input),
//! the pipeline with several producers, and the solve.
//!
//! Run with `cargo bench --bench core`; filter with e.g. `cargo bench --bench core -- update`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headstart::pipeline;
use headstart::solve::{SolveOptions, Solver};
use headstart::stats::{Batch, Stats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLASSES: i64 = 100;

fn batch(seed: u64, rows: usize, dim: usize) -> (Vec<f32>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let y = (0..rows).map(|_| rng.random_range(0..CLASSES)).collect();
    (x, y)
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(10);
    for dim in [384usize, 768] {
        let rows = 4096;
        let (x, y) = batch(1, rows, dim);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        group.throughput(Throughput::Elements(rows as u64));
        let mut stats = Stats::new(dim);
        group.bench_function(BenchmarkId::new("f32", dim), |b| {
            b.iter(|| stats.update(&x, &y).unwrap())
        });
        let mut stats = Stats::new(dim);
        group.bench_function(BenchmarkId::new("f64", dim), |b| {
            b.iter(|| stats.update(&x64, &y).unwrap())
        });
    }
    group.finish();
}

fn pipeline_producers(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    let (dim, rows, batches) = (384usize, 1024usize, 16usize);
    let pool: Vec<(Vec<f32>, Vec<i64>)> = (0..batches as u64).map(|s| batch(s, rows, dim)).collect();
    group.throughput(Throughput::Elements((rows * batches) as u64));
    for producers in [1usize, 2] {
        group.bench_function(BenchmarkId::new("producers", producers), |b| {
            b.iter(|| {
                let (producer, reducer) = pipeline::spawn(Stats::new(dim), 2 * producers);
                std::thread::scope(|s| {
                    for k in 0..producers {
                        let (p, pool) = (producer.clone(), &pool);
                        s.spawn(move || {
                            for (x, y) in pool.iter().skip(k).step_by(producers) {
                                p.send(Batch::new(x.clone(), y.clone())).unwrap();
                            }
                        });
                    }
                });
                drop(producer);
                reducer.join().unwrap()
            })
        });
    }
    group.finish();
}

fn solve(c: &mut Criterion) {
    let mut group = c.benchmark_group("solve");
    group.sample_size(10);
    for dim in [384usize, 768] {
        let (x, y) = batch(7, 4096, dim);
        let mut stats = Stats::new(dim);
        stats.update(&x, &y).unwrap();
        // A fresh solver each time: factor + solve for 100 classes.
        group.bench_function(BenchmarkId::new("factor_and_solve", dim), |b| {
            b.iter(|| Solver::new().solve(&stats, &SolveOptions::default()).unwrap())
        });
        // A warm solver: the cached factor, solving a class subset.
        let solver = Solver::new();
        let subset = SolveOptions {
            classes: Some((0..10).collect()),
            ..Default::default()
        };
        solver.solve(&stats, &subset).unwrap();
        group.bench_function(BenchmarkId::new("cached_factor_10_classes", dim), |b| {
            b.iter(|| solver.solve(&stats, &subset).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, update, pipeline_producers, solve);
criterion_main!(benches);
