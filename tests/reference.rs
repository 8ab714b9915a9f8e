//! Solved heads against a brute-force f64 solve from the explicit design matrix.
//!
//! The reference never touches the streaming statistics: it builds X (N × d) and the one-hot
//! targets, forms the normal equations with explicit loops, and solves them by Gaussian
//! elimination with partial pivoting (tests/common). For `ridge` it solves the (d+1)-unknown
//! least-squares problem with an explicit bias column, so the centring identity used by the
//! solver is checked too.

#![allow(clippy::needless_range_loop)] // index loops read like the formulas

mod common;

use common::{SOLVE_REL_TOL, gauss_solve, labelled_data, rel_err, rows};
use headstart::solve::{Form, Head, Lambda, Scope, SolveOptions, Solver};
use headstart::stats::Stats;

const D: usize = 11;
const CLASSES: [i64; 5] = [-7, 0, 3, 42, 1_000_000_007];

/// Reference head from explicit rows (the scope's rows only).
fn reference(
    x: &[f64],
    y: &[i64],
    classes: &[i64],
    form: Form,
    bias: bool,
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n = y.len() as f64;
    let xs = rows(x, D);
    let c = classes.len();
    let mut gram = vec![vec![0.0; D]; D];
    let mut mean = [0.0; D];
    for r in &xs {
        for i in 0..D {
            mean[i] += r[i] / n;
            for j in 0..D {
                gram[i][j] += r[i] * r[j] / n;
            }
        }
    }
    let mut weight = vec![0.0; c * D];
    let mut b = vec![0.0; c];
    match (form, bias) {
        (Form::Nc, _) => {
            let mut a = gram.clone();
            (0..D).for_each(|i| a[i][i] += lambda);
            let mut rhs = vec![vec![0.0; c]; D];
            for (k, &id) in classes.iter().enumerate() {
                let members: Vec<&&[f64]> = xs
                    .iter()
                    .zip(y)
                    .filter(|(_, l)| **l == id)
                    .map(|(r, _)| r)
                    .collect();
                for i in 0..D {
                    rhs[i][k] = members.iter().map(|r| r[i]).sum::<f64>() / members.len() as f64 / c as f64;
                }
            }
            let w = gauss_solve(a, rhs);
            for k in 0..c {
                for i in 0..D {
                    weight[k * D + i] = w[i][k];
                }
                if bias {
                    b[k] = 1.0 / c as f64 - (0..D).map(|i| w[i][k] * mean[i]).sum::<f64>();
                }
            }
        }
        (Form::Ridge, false) => {
            let mut a = gram.clone();
            (0..D).for_each(|i| a[i][i] += lambda);
            let mut rhs = vec![vec![0.0; c]; D];
            for (r, l) in xs.iter().zip(y) {
                if let Some(k) = classes.iter().position(|id| id == l) {
                    (0..D).for_each(|i| rhs[i][k] += r[i] / n);
                }
            }
            let w = gauss_solve(a, rhs);
            for k in 0..c {
                (0..D).for_each(|i| weight[k * D + i] = w[i][k]);
            }
        }
        (Form::Ridge, true) => {
            // Unknowns [w; b]: minimise (1/N)Σ(w·x + b − y)² + λ‖w‖².
            let mut a = vec![vec![0.0; D + 1]; D + 1];
            for i in 0..D {
                for j in 0..D {
                    a[i][j] = gram[i][j];
                }
                a[i][i] += lambda;
                a[i][D] = mean[i];
                a[D][i] = mean[i];
            }
            a[D][D] = 1.0;
            let mut rhs = vec![vec![0.0; c]; D + 1];
            for (r, l) in xs.iter().zip(y) {
                if let Some(k) = classes.iter().position(|id| id == l) {
                    (0..D).for_each(|i| rhs[i][k] += r[i] / n);
                    rhs[D][k] += 1.0 / n;
                }
            }
            let w = gauss_solve(a, rhs);
            for k in 0..c {
                (0..D).for_each(|i| weight[k * D + i] = w[i][k]);
                b[k] = w[D][k];
            }
        }
    }
    (weight, b)
}

/// Streams the data in uneven batches, half f32-exact values sent as f32, with a task marker.
fn build_state(x: &[f64], y: &[i64], task_start: usize) -> Stats {
    let mut s = Stats::new(D);
    let mut start = 0;
    for (i, size) in [1usize, 7, 64, 3, 200, 31].iter().cycle().enumerate() {
        if start >= y.len() {
            break;
        }
        let end = (start + size).min(y.len());
        let end = if start < task_start {
            end.min(task_start)
        } else {
            end
        };
        let xb = &x[start * D..end * D];
        if i % 2 == 0 {
            let narrowed: Vec<f32> = xb.iter().map(|&v| v as f32).collect();
            s.update(&narrowed, &y[start..end]).unwrap();
        } else {
            s.update(xb, &y[start..end]).unwrap();
        }
        start = end;
        if start == task_start {
            s.begin_task();
        }
    }
    s
}

fn check(head: &Head, expected: &(Vec<f64>, Vec<f64>)) -> f64 {
    let ew = rel_err(&head.weight, &expected.0);
    let eb = if expected.1.iter().all(|&b| b == 0.0) {
        assert!(
            head.bias.iter().all(|&b| b == 0.0),
            "bias must be exactly zero without bias"
        );
        0.0
    } else {
        rel_err(&head.bias, &expected.1)
    };
    ew.max(eb)
}

#[test]
fn every_form_scope_bias_and_subset_matches_the_design_matrix_solve() {
    let (x, y) = labelled_data(11, 600, D, &CLASSES);
    // Values exactly representable in f32, so f32 and f64 batches carry the same numbers.
    let x: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
    let task_start = 250;
    let stats = build_state(&x, &y, task_start);
    let solver = Solver::new();
    let mut worst: f64 = 0.0;
    let mut cases = 0;
    for form in [Form::Nc, Form::Ridge] {
        for bias in [true, false] {
            for scope in [Scope::All, Scope::Task] {
                for lambda in [0.0, 1e-3, 0.5] {
                    let factored_before = solver.factorisations();
                    for subset in [None, Some(vec![42, -7]), Some(vec![1_000_000_007])] {
                        let (sx, sy) = match scope {
                            Scope::All => (&x[..], &y[..]),
                            Scope::Task => (&x[task_start * D..], &y[task_start..]),
                        };
                        let classes = subset.clone().unwrap_or_else(|| {
                            let mut c: Vec<i64> = sy.to_vec();
                            c.sort_unstable();
                            c.dedup();
                            c
                        });
                        let opts = SolveOptions {
                            form,
                            scope,
                            lambda: lambda.into(),
                            bias,
                            classes: subset.clone(),
                        };
                        let head = solver.solve(&stats, &opts).unwrap();
                        assert_eq!(head.class_ids, classes);
                        let expected = reference(sx, sy, &classes, form, bias, lambda);
                        let err = check(&head, &expected);
                        assert!(err < SOLVE_REL_TOL, "{opts:?}: relative error {err:e}");
                        worst = worst.max(err);
                        cases += 1;
                    }
                    // The factor is reused for every class subset; nc without bias reuses
                    // the factor nc with bias made just before.
                    let new = solver.factorisations() - factored_before;
                    let expected = if form == Form::Nc && !bias { 0 } else { 1 };
                    assert_eq!(new, expected, "{form} bias={bias} {scope} λ={lambda}");
                }
            }
        }
    }
    eprintln!("largest relative error against the design-matrix reference over {cases} cases: {worst:.3e}");
}

#[test]
fn solving_a_changed_state_refactors() {
    let (x, y) = labelled_data(3, 100, D, &CLASSES);
    let mut stats = Stats::new(D);
    stats.update(&x, &y).unwrap();
    let solver = Solver::new();
    let before = solver.solve(&stats, &SolveOptions::default()).unwrap();
    stats.update(&x[..D], &y[..1]).unwrap();
    let after = solver.solve(&stats, &SolveOptions::default()).unwrap();
    assert_eq!(solver.factorisations(), 2);
    assert_ne!(before.weight, after.weight);
}

/// The mean eigenvalue tr(A₀)/d of the regularised matrix, from the explicit rows: A₀ = G/N,
/// or the covariance Σ for ridge with a bias.
fn mean_eigenvalue(x: &[f64], centred: bool) -> f64 {
    let xs = rows(x, D);
    let n = xs.len() as f64;
    (0..D)
        .map(|i| {
            let second = xs.iter().map(|r| r[i] * r[i]).sum::<f64>() / n;
            let mean = xs.iter().map(|r| r[i]).sum::<f64>() / n;
            if centred { second - mean * mean } else { second }
        })
        .sum::<f64>()
        / D as f64
}

#[test]
fn a_relative_lambda_is_its_factor_times_the_mean_eigenvalue() {
    let (x, y) = labelled_data(5, 400, D, &CLASSES);
    let x: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
    let task_start = 150;
    let stats = build_state(&x, &y, task_start);
    for form in [Form::Nc, Form::Ridge] {
        for bias in [true, false] {
            for scope in [Scope::All, Scope::Task] {
                for factor in [1e-3, 0.3] {
                    let (sx, sy) = match scope {
                        Scope::All => (&x[..], &y[..]),
                        Scope::Task => (&x[task_start * D..], &y[task_start..]),
                    };
                    let centred = form == Form::Ridge && bias;
                    let lambda = factor * mean_eigenvalue(sx, centred);
                    let opts = SolveOptions {
                        form,
                        scope,
                        lambda: Lambda::Relative(factor),
                        bias,
                        classes: Some(vec![42, -7]),
                    };
                    let head = Solver::new().solve(&stats, &opts).unwrap();
                    assert!(
                        (head.info.lambda - lambda).abs() <= 1e-12 * lambda,
                        "{opts:?}: λ {} against {lambda}",
                        head.info.lambda
                    );
                    assert_eq!(head.info.lambda_rule, Lambda::Relative(factor));
                    let expected = reference(sx, sy, &[42, -7], form, bias, lambda);
                    let err = check(&head, &expected);
                    assert!(err < SOLVE_REL_TOL, "{opts:?}: relative error {err:e}");
                }
            }
        }
    }
}

#[test]
fn with_a_relative_lambda_rescaled_features_give_the_same_logits() {
    let (x, y) = labelled_data(9, 300, D, &CLASSES);
    let probe: Vec<f64> = x[..20 * D].to_vec();
    for form in [Form::Nc, Form::Ridge] {
        let logits_at = |scale: f64, lambda: Lambda| {
            let scaled: Vec<f64> = x.iter().map(|v| v * scale).collect();
            let mut stats = Stats::new(D);
            stats.update(&scaled, &y).unwrap();
            let head = Solver::new()
                .solve(
                    &stats,
                    &SolveOptions {
                        form,
                        lambda,
                        ..SolveOptions::default()
                    },
                )
                .unwrap();
            probe
                .chunks(D)
                .flat_map(|r| head.logits(&r.iter().map(|v| v * scale).collect::<Vec<f64>>()))
                .collect::<Vec<f64>>()
        };
        let base = logits_at(1.0, Lambda::default());
        for scale in [1e-3, 100.0, 1e4] {
            let err = rel_err(&logits_at(scale, Lambda::default()), &base);
            assert!(err < 1e-9, "{form}, features × {scale}: logits moved by {err:e}");
        }
        // An absolute λ keeps its meaning, so the same λ on rescaled features is a different head.
        let err = rel_err(
            &logits_at(100.0, Lambda::Absolute(0.05)),
            &logits_at(1.0, Lambda::Absolute(0.05)),
        );
        assert!(
            err > 1e-3,
            "{form}: an absolute λ should not be scale-free ({err:e})"
        );
    }
}

/// The statistics against sums over the explicit rows, for batches of several 512-row product
/// chunks with a ragged last chunk, in both precisions, on one thread and on several workers.
#[test]
fn batches_of_several_chunks_match_the_explicit_sums_in_both_precisions() {
    use headstart::stats::Precision;
    const DIM: usize = 37;
    let classes = [-3i64, 1, 4, 9];
    let (x, y) = labelled_data(21, 4000, DIM, &classes);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let xs: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    // Independent sums over the rows as sent (f32 values, widened exactly).
    let n = y.len();
    let mut gram = vec![0.0f64; DIM * DIM];
    for r in xs.chunks(DIM) {
        for i in 0..DIM {
            for j in 0..DIM {
                gram[i + j * DIM] += r[i] * r[j];
            }
        }
    }
    let class_sums: Vec<Vec<f64>> = classes
        .iter()
        .map(|&id| {
            let mut s = vec![0.0; DIM];
            for (r, _) in xs.chunks(DIM).zip(&y).filter(|(_, l)| **l == id) {
                (0..DIM).for_each(|i| s[i] += r[i]);
            }
            s
        })
        .collect();
    // Batches of 1, 2 and 3 chunks, each with a ragged tail, and exact multiples.
    let sizes = [1300usize, 512, 1025, 1163];
    assert_eq!(sizes.iter().sum::<usize>(), n);
    // Exact: f64 rounding of sums of up to 4000 products. Fast: each batch's product in f32,
    // shifted by the batch mean: at worst about B·2⁻²⁴ = 8e-5 relative, 1.3e-7 measured.
    for (precision, tol) in [(Precision::Exact, 1e-12), (Precision::Fast, 1e-5)] {
        for threads in [1, 3] {
            let mut s = Stats::with_precision(DIM, precision).with_threads(threads);
            let mut start = 0;
            for size in sizes {
                s.update(&x32[start * DIM..(start + size) * DIM], &y[start..start + size])
                    .unwrap();
                start += size;
            }
            let g = s.gram(Scope::All);
            let got: Vec<f64> = (0..DIM)
                .flat_map(|j| (0..DIM).map(move |i| (i, j)))
                .map(|(i, j)| g[(i, j)])
                .collect();
            let err = rel_err(&got, &gram);
            assert!(
                err < tol,
                "{precision:?}, {threads} threads: Gram rel err {err:.2e} > {tol:.0e}"
            );
            assert_eq!(s.samples(), n as u64);
            for (k, &id) in classes.iter().enumerate() {
                let (count, sum) = s.class_sum(id, Scope::All).unwrap();
                assert_eq!(count as usize, y.iter().filter(|&&l| l == id).count());
                // Class sums are f64 in both precisions.
                assert!(rel_err(&sum, &class_sums[k]) < 1e-12, "{precision:?}: class {id}");
            }
            // The solved head against the design-matrix reference on the same values.
            let head = Solver::new()
                .solve(
                    &s,
                    &SolveOptions {
                        lambda: Lambda::Absolute(0.05),
                        ..SolveOptions::default()
                    },
                )
                .unwrap();
            let expected = reference_dim(&xs, &y, &classes, DIM, 0.05);
            let err = rel_err(&head.weight, &expected);
            let head_tol = if precision == Precision::Exact {
                SOLVE_REL_TOL
            } else {
                1e-4
            };
            assert!(
                err < head_tol,
                "{precision:?}, {threads} threads: head rel err {err:.2e}"
            );
        }
    }
}

/// NC weights `(1/C)·Mᵀ(G/N + λI)⁻¹` from explicit rows of any dimension.
fn reference_dim(x: &[f64], y: &[i64], classes: &[i64], dim: usize, lambda: f64) -> Vec<f64> {
    let n = y.len() as f64;
    let c = classes.len();
    let mut a = vec![vec![0.0; dim]; dim];
    for r in x.chunks(dim) {
        for i in 0..dim {
            for j in 0..dim {
                a[i][j] += r[i] * r[j] / n;
            }
        }
    }
    (0..dim).for_each(|i| a[i][i] += lambda);
    let mut rhs = vec![vec![0.0; c]; dim];
    for (k, &id) in classes.iter().enumerate() {
        let members: Vec<&[f64]> = x
            .chunks(dim)
            .zip(y)
            .filter(|(_, l)| **l == id)
            .map(|(r, _)| r)
            .collect();
        for i in 0..dim {
            rhs[i][k] = members.iter().map(|r| r[i]).sum::<f64>() / members.len() as f64 / c as f64;
        }
    }
    let w = gauss_solve(a, rhs);
    (0..c)
        .flat_map(|k| (0..dim).map(move |i| (i, k)))
        .map(|(i, k)| w[i][k])
        .collect()
}
