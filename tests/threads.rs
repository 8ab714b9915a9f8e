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

#[test]
fn the_class_sums_and_the_sum_have_the_same_bits_at_every_thread_count() {
    // d = 37: column ranges that are not whole cache lines; 1,700 rows: several chunks.
    let d = 37;
    let (x, y) = labelled_data(5, 1700, d, &[2, 4, 9, 11]);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    for precision in [Precision::Exact, Precision::Fast] {
        let build = |threads: usize| {
            let mut s32 = Stats::with_precision(d, precision).with_threads(threads);
            s32.update(&x32, &y).unwrap();
            let mut s64 = Stats::with_precision(d, precision).with_threads(threads);
            s64.update(&x, &y).unwrap();
            [s32, s64]
        };
        let one = build(1);
        for threads in [2, 3, 8] {
            for (a, b) in one.iter().zip(build(threads).iter()) {
                assert_eq!(
                    a.sum(Scope::All),
                    b.sum(Scope::All),
                    "{precision} threads={threads}"
                );
                for class in a.classes() {
                    assert_eq!(
                        a.class_sum(class, Scope::All),
                        b.class_sum(class, Scope::All),
                        "{precision} threads={threads} class {class}"
                    );
                }
            }
        }
        // And they are the rows' sums (f64 sums of f32 values: within 1e-12).
        let mut expected = vec![0.0f64; d];
        for row in x32.chunks_exact(d) {
            for (e, &v) in expected.iter_mut().zip(row) {
                *e += f64::from(v);
            }
        }
        let err = rel_err(&one[0].sum(Scope::All).1, &expected);
        assert!(err < 1e-12, "{precision}: {err}");
    }
}

#[test]
fn a_bad_value_is_found_by_row_and_column_at_every_thread_count() {
    let d = 40;
    let (x, y) = labelled_data(6, 1100, d, &[0, 1]);
    for (row, col) in [(0, 0), (700, 39), (1099, 17)] {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            x32[row * d + col] = bad as f32;
            for precision in [Precision::Exact, Precision::Fast] {
                for threads in [1, 2] {
                    let mut s = Stats::with_precision(d, precision).with_threads(threads);
                    let err = s.update(&x32, &y).unwrap_err().to_string();
                    assert!(
                        err.contains(&format!("row {row}")) && err.contains(&format!("column {col}")),
                        "{precision} threads={threads}: {err}"
                    );
                    assert_eq!(s.samples(), 0, "nothing applied");
                    assert_eq!(s.sum(Scope::All).1, vec![0.0; d]);
                }
            }
        }
    }
}
