//! The fast precision (each batch's product in f32, totals in f64) against the exact one and
//! against a brute-force f64 Gram built from the raw rows.

mod common;

use common::{labelled_data, rel_err};
use headstart::solve::{SolveOptions, Solver};
use headstart::stats::{BatchError, MAX_ABS_FEATURE, Precision, Scope, Stats};

/// Unit roundoff of f32.
const U32: f64 = 1.0 / (1u64 << 24) as f64;

#[test]
fn fast_gram_is_within_the_f32_dot_product_bound_of_the_exact_gram() {
    let d = 24;
    let classes = [0, 1, 2];
    let (x, y) = labelled_data(3, 600, d, &classes);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let batch = 200;
    let mut fast = Stats::with_precision(d, Precision::Fast);
    for (xs, ys) in x32.chunks(batch * d).zip(y.chunks(batch)) {
        fast.update(xs, ys).unwrap();
    }
    let g = fast.gram(Scope::All);
    // A dot product of B terms in f32 is off by at most γ_B Σ|aᵢbᵢ| (Higham, Thm 3.5), with
    // γ_B = B·u/(1 − B·u); adding into f64 adds nothing comparable.
    let gamma = batch as f64 * U32 / (1.0 - batch as f64 * U32);
    let mut worst: f64 = 0.0;
    for i in 0..d {
        for j in 0..d {
            let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
            for r in x32.chunks_exact(d) {
                let p = f64::from(r[i]) * f64::from(r[j]);
                exact += p;
                magnitude += p.abs();
            }
            let err = (g[(i, j)] - exact).abs();
            assert!(
                err <= gamma * magnitude,
                "G[{i},{j}]: error {err:e} > bound {:e}",
                gamma * magnitude
            );
            worst = worst.max(err / magnitude);
        }
    }
    assert!(
        worst > 0.0,
        "the fast path should round somewhere (is it really f32?)"
    );
}

#[test]
fn fast_heads_match_exact_heads_on_the_demo_digits() {
    // The demo's data and λ; batches of 32 as the demo streams them, and of 4096.
    let (x, y) = headstart::demo::features(512, 7);
    let opts = SolveOptions {
        lambda: 1e-3.into(),
        ..Default::default()
    };
    // f32 rounding accumulates along each batch, so the error grows with B: the demo's
    // batches of 32 stay within 1e-5; one batch of all 1,797 rows within 2e-4.
    for (batch, tolerance) in [(32, 1e-5), (4096, 2e-4)] {
        let mut heads = Vec::new();
        for precision in [Precision::Exact, Precision::Fast] {
            let mut s = Stats::with_precision(512, precision);
            for (xs, ys) in x.chunks(batch * 512).zip(y.chunks(batch)) {
                s.update(xs, ys).unwrap();
            }
            heads.push(Solver::new().solve(&s, &opts).unwrap());
        }
        let err = rel_err(&heads[1].weight, &heads[0].weight);
        let bias_err = rel_err(&heads[1].bias, &heads[0].bias);
        println!(
            "B = {batch}: fast vs exact head, relative error {err:.2e} (weights), {bias_err:.2e} (bias)"
        );
        assert!(
            err <= tolerance && bias_err <= tolerance,
            "B = {batch}: {err:e}, {bias_err:e}"
        );
    }
}

#[test]
fn a_batch_whose_f32_product_would_overflow_is_computed_exactly() {
    // 1e20² overflows f32 but not f64; 1e100 does not even fit in f32.
    let big32 = [1e20f32, 2.0, -3e19, 1.0];
    let big64 = [1e100f64, 2.0, -3e-300, 1.0];
    let mut fast = Stats::with_precision(2, Precision::Fast);
    let mut exact = Stats::new(2);
    for s in [&mut fast, &mut exact] {
        s.update(&big32, &[0, 1]).unwrap();
    }
    assert_eq!(fast.gram(Scope::All), exact.gram(Scope::All));
    let mut fast = Stats::with_precision(2, Precision::Fast);
    let mut exact = Stats::new(2);
    for s in [&mut fast, &mut exact] {
        s.update(&big64, &[0, 1]).unwrap();
    }
    assert_eq!(fast.gram(Scope::All), exact.gram(Scope::All));
    assert_eq!(fast.gram(Scope::All)[(0, 0)], 1e200);
}

#[test]
fn values_whose_squares_could_overflow_f64_are_refused_by_row_and_column() {
    let mut s = Stats::new(2);
    s.update(&[1.0f64, 1.0], &[0]).unwrap();
    let before = s.clone();
    let err = s.update(&[1.0f64, 2.0, 3.0, -1e200], &[0, 1]).unwrap_err();
    assert!(
        matches!(err, BatchError::OutOfRange { row: 1, col: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 1, column 1"), "{err}");
    assert_eq!(s, before);
    // The limit itself is accepted, and even 2⁶⁴ copies of it would not overflow.
    s.update(&[MAX_ABS_FEATURE, 0.0], &[0]).unwrap();
    assert!(s.gram(Scope::All)[(0, 0)].is_finite());
}

#[test]
fn fast_retract_undoes_fast_update_and_sums_stay_exact() {
    let d = 9;
    let (x, y) = labelled_data(5, 300, d, &[4, 8]);
    let (x1, y1) = (&x[..100 * d], &y[..100]);
    let mut s = Stats::with_precision(d, Precision::Fast);
    s.update(x1, y1).unwrap();
    let before = s.clone();
    s.update(&x[100 * d..], &y[100..]).unwrap();
    s.retract(&x[100 * d..], &y[100..]).unwrap();
    let (a, b) = (s.gram(Scope::All), before.gram(Scope::All));
    let scale = (0..d).map(|i| b[(i, i)]).fold(0.0, f64::max);
    for i in 0..d {
        for j in 0..d {
            assert!((a[(i, j)] - b[(i, j)]).abs() <= 1e-12 * scale, "G[{i},{j}]");
        }
    }
    // Class sums and counts never go through f32.
    let mut exact = Stats::new(d);
    exact.update(x1, y1).unwrap();
    assert_eq!(before.class_sum(4, Scope::All), exact.class_sum(4, Scope::All));
    assert_eq!(before.sum(Scope::All), exact.sum(Scope::All));
}
