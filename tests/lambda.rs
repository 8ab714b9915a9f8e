//! λ selection from statistics against the held-out MSE computed sample by sample.

mod common;

use common::{labelled_data, rel_err};
use headstart::solve::{Form, Lambda, SolveOptions, Solver, heldout_mse, select_lambda};
use headstart::stats::Stats;

const D: usize = 9;

#[test]
fn heldout_mse_from_statistics_equals_the_per_sample_mean() {
    let classes = [2, 5, 8, 13];
    let (x, y) = labelled_data(21, 400, D, &classes);
    let (vx, vy) = labelled_data(22, 150, D, &[2, 5, 8, 13, 99]); // 99: not in the head
    let mut train = Stats::new(D);
    train.update(&x, &y).unwrap();
    let mut val = Stats::new(D);
    val.update(&vx[..60 * D], &vy[..60]).unwrap();
    val.begin_task(); // the held-out MSE covers both segments
    val.update(&vx[60 * D..], &vy[60..]).unwrap();
    let solver = Solver::new();
    for form in [Form::Nc, Form::Ridge] {
        for bias in [true, false] {
            let head = solver
                .solve(
                    &train,
                    &SolveOptions {
                        form,
                        bias,
                        classes: Some(vec![13, 2, 5]),
                        ..Default::default()
                    },
                )
                .unwrap();
            let mut direct = 0.0;
            for (row, &label) in vx.chunks_exact(D).zip(&vy) {
                let logits = head.logits(row);
                for (k, &id) in head.class_ids.iter().enumerate() {
                    let target = if id == label { 1.0 } else { 0.0 };
                    direct += (logits[k] - target).powi(2);
                }
            }
            direct /= vy.len() as f64;
            let from_stats = heldout_mse(&head, &val).unwrap();
            let err = rel_err(&[from_stats], &[direct]);
            assert!(
                err < 1e-10,
                "{form} bias={bias}: {from_stats} vs {direct} ({err:e})"
            );
        }
    }
}

#[test]
fn selection_picks_the_grid_minimum_and_flags_the_edge() {
    let (x, y) = labelled_data(31, 300, D, &[0, 1, 2]);
    let (vx, vy) = labelled_data(31, 600, D, &[0, 1, 2]); // same centres, more samples
    let mut train = Stats::new(D);
    train.update(&x, &y).unwrap();
    let mut val = Stats::new(D);
    val.update(&vx[300 * D..], &vy[300..]).unwrap();
    let solver = Solver::new();
    let opts = SolveOptions::default();
    let grid = [1e-4, 1e-2, 1.0, 1e2].map(Lambda::Absolute);
    let choice = select_lambda(&solver, &train, &val, &opts, &grid).unwrap();
    let scores: Vec<f64> = choice.scores.iter().map(|s| s.mse.clone().unwrap()).collect();
    let min = scores.iter().cloned().fold(f64::MAX, f64::min);
    assert_eq!(choice.best_mse, min);
    assert_eq!(choice.best, grid[scores.iter().position(|&s| s == min).unwrap()]);
    assert_eq!(choice.on_edge, choice.best == grid[0] || choice.best == grid[3]);
    // A one-point grid is always on its edge; a grid of huge λ prefers the smallest.
    let huge = [1e3, 1e4, 1e5].map(Lambda::Absolute);
    let choice = select_lambda(&solver, &train, &val, &opts, &huge).unwrap();
    assert_eq!(
        (choice.best, choice.best_absolute, choice.on_edge),
        (huge[0], 1e3, true)
    );
    assert!(select_lambda(&solver, &train, &Stats::new(D + 1), &opts, &grid).is_err());
    assert!(select_lambda(&solver, &train, &val, &opts, &[0.1, -1.0].map(Lambda::Absolute)).is_err());
}
