//! Criterion benchmarks of the core operations:
//! - `update/{exact,fast}/d{384,768,2048}/B{256,4096}`: `Stats::update` on f32 batches;
//! - `pipeline/{producers,reducers}`: producers → channel → reducer(s) on shared batches;
//! - `solve/d{768,2048}/C{100,1000}`: a fresh factor + solve, and a cached factor;
//! - `lambda/select`: λ selection over the default 25-point grid.
//!
//! Run with `cargo bench --bench core`; filter with e.g. `cargo bench --bench core -- update/fast`.
//! Throughputs are in samples (elements) per second. For numpy and scipy side by side, see
//! `benches/compare.py` and docs/benchmarks.md.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headstart::pipeline;
use headstart::solve::{SolveOptions, Solver, default_lambda_grid, select_lambda};
use headstart::stats::{Batch, Precision, Stats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn batch(seed: u64, rows: usize, dim: usize, classes: i64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let y = (0..rows).map(|i| i as i64 % classes).collect();
    (x, y)
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(10);
    for precision in [Precision::Exact, Precision::Fast] {
        for dim in [384usize, 768, 2048] {
            for rows in [256usize, 4096] {
                // Several batches, cycled, so that one batch is not always hot in cache.
                let batches: Vec<_> = (0..8).map(|s| batch(s, rows, dim, 100)).collect();
                let mut stats = Stats::with_precision(dim, precision);
                let mut next = 0;
                group.throughput(Throughput::Elements(rows as u64));
                let id = BenchmarkId::new(format!("{precision}/d{dim}"), format!("B{rows}"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        let (x, y) = &batches[next % batches.len()];
                        next += 1;
                        stats.update(x, y).unwrap()
                    })
                });
            }
        }
    }
    group.finish();
}

fn pipeline_shapes(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    let (dim, rows, batches) = (768usize, 4096usize, 16usize);
    let pool: Vec<Arc<Batch>> = (0..batches as u64)
        .map(|s| {
            let (x, y) = batch(s, rows, dim, 100);
            Arc::new(Batch::new(x, y))
        })
        .collect();
    group.throughput(Throughput::Elements((rows * batches) as u64));
    for (producers, reducers) in [(1usize, 1usize), (2, 1), (2, 2)] {
        let id = BenchmarkId::new("producers_reducers", format!("{producers}p{reducers}r"));
        group.bench_function(id, |b| {
            b.iter(|| {
                let shards: Vec<_> = (0..reducers)
                    .map(|_| pipeline::spawn(Stats::new(dim), 2 * producers))
                    .collect();
                std::thread::scope(|s| {
                    for k in 0..producers {
                        let (p, pool) = (shards[k % reducers].0.clone(), &pool);
                        s.spawn(move || {
                            for batch in pool.iter().skip(k).step_by(producers) {
                                p.send(Arc::clone(batch)).unwrap();
                            }
                        });
                    }
                });
                let mut total = Stats::new(dim);
                for (p, r) in shards {
                    drop(p);
                    total.merge(&r.join().unwrap()).unwrap();
                }
                total
            })
        });
    }
    group.finish();
}

fn solve(c: &mut Criterion) {
    let mut group = c.benchmark_group("solve");
    group.sample_size(10);
    for dim in [768usize, 2048] {
        for classes in [100i64, 1000] {
            let (x, y) = batch(7, 4096.max(2 * dim), dim, classes);
            let mut stats = Stats::new(dim);
            stats.update(&x, &y).unwrap();
            // A fresh solver each time: factor + solve.
            group.bench_function(
                BenchmarkId::new(format!("factor_and_solve/d{dim}"), format!("C{classes}")),
                |b| b.iter(|| Solver::new().solve(&stats, &SolveOptions::default()).unwrap()),
            );
            // A warm solver: the cached factor, solving every class again.
            let solver = Solver::new();
            solver.solve(&stats, &SolveOptions::default()).unwrap();
            group.bench_function(
                BenchmarkId::new(format!("cached_factor/d{dim}"), format!("C{classes}")),
                |b| b.iter(|| solver.solve(&stats, &SolveOptions::default()).unwrap()),
            );
        }
    }
    group.finish();
}

fn lambda(c: &mut Criterion) {
    let mut group = c.benchmark_group("lambda");
    group.sample_size(10);
    let dim = 384;
    let (x, y) = batch(11, 8192, dim, 100);
    let (mut train, mut val) = (Stats::new(dim), Stats::new(dim));
    train.update(&x[..6144 * dim], &y[..6144]).unwrap();
    val.update(&x[6144 * dim..], &y[6144..]).unwrap();
    let grid = default_lambda_grid();
    group.bench_function(
        BenchmarkId::new("select", format!("d{dim}_grid{}", grid.len())),
        |b| b.iter(|| select_lambda(&Solver::new(), &train, &val, &SolveOptions::default(), &grid).unwrap()),
    );
    group.finish();
}

criterion_group!(benches, update, pipeline_shapes, solve, lambda);
criterion_main!(benches);
