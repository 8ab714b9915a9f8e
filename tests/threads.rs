//! The product's thread count changes nothing but f64 rounding: every thread count gives the
//! Gram of a brute-force sum over samples, in both precisions and for both input types.

mod common;

use common::{labelled_data, rel_err};
use headstart::stats::{Precision, Scope, Stats, default_threads};

/// Σ x xᵀ summed sample by sample, lower triangle, column-major like `Stats::gram`.
fn brute_gram(x: &[f64], d: usize) -> Vec<f64> {
    let mut g = vec![0.0; d * d];
    for row in x.chunks_exact(d) {
        for j in 0..d {
            for i in j..d {
                g[j * d + i] += row[i] * row[j];
            }
        }
    }
    g
}

fn lower(stats: &Stats) -> Vec<f64> {
    let g = stats.gram(Scope::All);
    let d = stats.dim();
    let mut out = vec![0.0; d * d];
    for j in 0..d {
        for i in j..d {
            out[j * d + i] = g[(i, j)];
        }
    }
    out
}

#[test]
fn every_thread_count_gives_the_brute_force_gram() {
    // 2,600 rows: several 512-row product chunks and a short last one, in batches of 1,300.
    let d = 160;
    let (x, y) = labelled_data(11, 2600, d, &[0, 3, 7]);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let x32_wide: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let expected = brute_gram(&x32_wide, d);
    for precision in [Precision::Exact, Precision::Fast] {
        let tol = if precision == Precision::Exact {
            1e-12
        } else {
            1e-5
        };
        for threads in [1, 2, 3, 8] {
            let mut s = Stats::with_precision(d, precision).with_threads(threads);
            let mut s64 = Stats::with_precision(d, precision).with_threads(threads);
            for (part, labels) in x32.chunks(1300 * d).zip(y.chunks(1300)) {
                s.update(part, labels).unwrap();
            }
            for (part, labels) in x32_wide.chunks(1300 * d).zip(y.chunks(1300)) {
                s64.update(part, labels).unwrap();
            }
            for (what, state) in [("f32", &s), ("f64", &s64)] {
                let err = rel_err(&lower(state), &expected);
                assert!(err < tol, "{precision} {what} threads={threads}: {err}");
                assert_eq!(state.samples(), 2600);
            }
        }
    }
}

#[test]
fn zero_threads_means_every_available_core() {
    let mut s = Stats::new(3);
    assert_eq!(s.threads(), default_threads());
    s.set_threads(1);
    assert_eq!(s.threads(), 1);
    assert_eq!(s.clone().threads(), 1, "a clone keeps its thread count");
    s.set_threads(0);
    assert_eq!(s.threads(), default_threads());
}

#[test]
fn a_retraction_on_several_threads_removes_exactly_its_batch() {
    let d = 96;
    let (x, y) = labelled_data(5, 3000, d, &[1, 2]);
    let keep = 1800 * d;
    for threads in [1, 2, 4] {
        let mut s = Stats::new(d).with_threads(threads);
        s.update(&x[..keep], &y[..1800]).unwrap();
        s.update(&x[keep..], &y[1800..]).unwrap();
        s.retract(&x[keep..], &y[1800..]).unwrap();
        let err = rel_err(&lower(&s), &brute_gram(&x[..keep], d));
        assert!(err < 1e-12, "threads={threads}: {err}");
        assert_eq!(s.samples(), 1800);
    }
}

#[test]
fn a_state_built_on_several_threads_round_trips_through_its_parts() {
    // Stats equality compares whole Gram matrices; parts keep the lower triangle only, so this
    // fails if the workers' sums leave anything above the diagonal.
    let d = 64;
    let (x, y) = labelled_data(9, 2000, d, &[0, 1, 2]);
    for precision in [Precision::Exact, Precision::Fast] {
        let mut s = Stats::with_precision(d, precision).with_threads(3);
        s.update(&x, &y).unwrap();
        s.retract(&x[..600 * d], &y[..600]).unwrap();
        assert_eq!(Stats::from_parts(s.to_parts()).unwrap(), s, "{precision}");
    }
}
