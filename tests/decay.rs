//! `Stats::decay` (a forgetting factor) against a brute-force weighted design-matrix solve,
//! and what merging, retracting, task scopes and state files do with decayed weights.
//!
//! The reference gives every sample the weight it should have after the decays that came
//! after it (the product of their factors), forms the weighted normal equations from the
//! explicit rows, and solves them by Gaussian elimination (tests/common): it never touches
//! the streaming statistics.

#![allow(clippy::needless_range_loop)] // index loops read like the formulas

mod common;

use common::{SUM_ORDER_REL_TOL, gauss_solve, labelled_data, rel_err};
use headstart::snapshot;
use headstart::solve::{Form, Lambda, Scope, SolveOptions, Solver};
use headstart::stats::{DecayError, MIN_WEIGHT, RetractError, Stats};

const D: usize = 7;
const CLASSES: [i64; 4] = [-3, 0, 9, 40];
/// Weighted solves against the reference: f64 rounding of sums of a few hundred products
/// and a 7 × 7 solve, measured around 1e-14; the bound leaves room for other machines.
const WEIGHTED_REL_TOL: f64 = 1e-10;

/// Reference nc or ridge head (with bias) from explicit rows with per-sample weights.
fn weighted_reference(
    x: &[f64],
    y: &[i64],
    w: &[f64],
    classes: &[i64],
    form: Form,
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n: f64 = w.iter().sum();
    let c = classes.len();
    let mut gram = vec![vec![0.0; D]; D];
    let mut mean = [0.0; D];
    for ((r, _), &wi) in x.chunks(D).zip(y).zip(w) {
        for i in 0..D {
            mean[i] += wi * r[i] / n;
            for j in 0..D {
                gram[i][j] += wi * r[i] * r[j] / n;
            }
        }
    }
    let mut weight = vec![0.0; c * D];
    let mut bias = vec![0.0; c];
    match form {
        Form::Nc => {
            let mut a = gram.clone();
            (0..D).for_each(|i| a[i][i] += lambda);
            let mut rhs = vec![vec![0.0; c]; D];
            for (k, &id) in classes.iter().enumerate() {
                let mut wsum = 0.0;
                for ((r, &l), &wi) in x.chunks(D).zip(y).zip(w) {
                    if l == id {
                        wsum += wi;
                        (0..D).for_each(|i| rhs[i][k] += wi * r[i]);
                    }
                }
                (0..D).for_each(|i| rhs[i][k] /= wsum * c as f64);
            }
            let sol = gauss_solve(a, rhs);
            for k in 0..c {
                (0..D).for_each(|i| weight[k * D + i] = sol[i][k]);
                bias[k] = 1.0 / c as f64 - (0..D).map(|i| sol[i][k] * mean[i]).sum::<f64>();
            }
        }
        Form::Ridge => {
            // Unknowns [w; b]: minimise Σ wᵢ(w·xᵢ + b − yᵢ)² / Σ wᵢ + λ‖w‖².
            let mut a = vec![vec![0.0; D + 1]; D + 1];
            for i in 0..D {
                a[i][..D].copy_from_slice(&gram[i]);
                a[i][i] += lambda;
                a[i][D] = mean[i];
                a[D][i] = mean[i];
            }
            a[D][D] = 1.0;
            let mut rhs = vec![vec![0.0; c]; D + 1];
            for ((r, l), &wi) in x.chunks(D).zip(y).zip(w) {
                if let Some(k) = classes.iter().position(|id| id == l) {
                    (0..D).for_each(|i| rhs[i][k] += wi * r[i] / n);
                    rhs[D][k] += wi / n;
                }
            }
            let sol = gauss_solve(a, rhs);
            for k in 0..c {
                (0..D).for_each(|i| weight[k * D + i] = sol[i][k]);
                bias[k] = sol[D][k];
            }
        }
    }
    (weight, bias)
}

/// Three epochs of data with a decay after each of the first two (γ₁ after epoch 0, γ₂
/// after epoch 1), a task boundary before epoch 2, and the per-sample weights that result.
struct Decayed {
    x: Vec<f64>,
    y: Vec<i64>,
    weights: Vec<f64>,
    /// Samples in epochs 0 and 1 (epoch 2 is the task segment).
    task_start: usize,
    stats: Stats,
}

fn decayed(gammas: [f64; 2], sizes: [usize; 3], seed: u64) -> Decayed {
    let n: usize = sizes.iter().sum();
    let (x, y) = labelled_data(seed, n, D, &CLASSES);
    // f32-exact values, so the f32 batches and the reference see the same numbers.
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v as f32)).collect();
    let mut stats = Stats::new(D);
    let mut weights = Vec::with_capacity(n);
    let mut start = 0;
    for (epoch, &size) in sizes.iter().enumerate() {
        let end = start + size;
        // Uneven batches inside the epoch, alternately f32 and f64 (f32-exact values).
        let mut at = start;
        for (i, b) in [5usize, 1, 33, 12].iter().cycle().enumerate() {
            if at >= end {
                break;
            }
            let to = (at + b).min(end);
            if i % 2 == 0 {
                let narrowed: Vec<f32> = x[at * D..to * D].iter().map(|&v| v as f32).collect();
                stats.update(&narrowed, &y[at..to]).unwrap();
            } else {
                stats.update(&x[at * D..to * D], &y[at..to]).unwrap();
            }
            at = to;
        }
        let later: f64 = gammas[epoch.min(2)..].iter().product();
        weights.extend(std::iter::repeat_n(later, size));
        if epoch < 2 {
            stats.decay(gammas[epoch]).unwrap();
        }
        if epoch == 1 {
            stats.begin_task();
        }
        start = end;
    }
    Decayed {
        x,
        y,
        weights,
        task_start: sizes[0] + sizes[1],
        stats,
    }
}

fn solve(stats: &Stats, form: Form, scope: Scope, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let head = Solver::new()
        .solve(
            stats,
            &SolveOptions {
                form,
                scope,
                lambda: Lambda::Absolute(lambda),
                classes: Some(CLASSES.to_vec()),
                ..SolveOptions::default()
            },
        )
        .unwrap();
    (head.weight, head.bias)
}

#[test]
fn decayed_solves_match_a_weighted_design_matrix_solve() {
    for (gammas, lambda) in [([0.5, 0.25], 0.05), ([0.9, 0.999], 1e-3), ([1e-3, 0.7], 0.1)] {
        let d = decayed(gammas, [150, 120, 130], 11);
        for form in [Form::Nc, Form::Ridge] {
            let (w, b) = solve(&d.stats, form, Scope::All, lambda);
            let (rw, rb) = weighted_reference(&d.x, &d.y, &d.weights, &CLASSES, form, lambda);
            let (ew, eb) = (rel_err(&w, &rw), rel_err(&b, &rb));
            assert!(
                ew < WEIGHTED_REL_TOL && eb < WEIGHTED_REL_TOL,
                "γ = {gammas:?}, {form:?}: weight err {ew:.1e}, bias err {eb:.1e}"
            );
            // The task scope holds only epoch 2's samples, each still at weight 1.
            let t = d.task_start;
            let (w, b) = solve(&d.stats, form, Scope::Task, lambda);
            let (rw, rb) =
                weighted_reference(&d.x[t * D..], &d.y[t..], &d.weights[t..], &CLASSES, form, lambda);
            assert!(rel_err(&w, &rw) < WEIGHTED_REL_TOL && rel_err(&b, &rb) < WEIGHTED_REL_TOL);
        }
        let expected_weight: f64 = d.weights.iter().sum();
        assert!((d.stats.weight() - expected_weight).abs() < 1e-12 * expected_weight);
        assert_eq!(d.stats.samples(), 400);
        for &id in &CLASSES {
            let w: f64 =
                d.y.iter()
                    .zip(&d.weights)
                    .filter(|(l, _)| **l == id)
                    .map(|(_, w)| w)
                    .sum();
            assert!((d.stats.class_weight(id) - w).abs() < 1e-12 * w, "class {id}");
        }
    }
}

#[test]
fn a_decay_alone_changes_no_head_and_unit_decay_changes_nothing() {
    let d = decayed([1.0, 1.0], [80, 80, 80], 3);
    let before = solve(&d.stats, Form::Nc, Scope::All, 0.05);
    let mut s = d.stats.clone();
    s.decay(1.0).unwrap();
    assert_eq!(s, d.stats);
    s.decay(0.125).unwrap(); // a power of two: every product is exact
    assert_eq!(s.weight(), 0.125 * 240.0);
    let after = solve(&s, Form::Nc, Scope::All, 0.05);
    assert!(rel_err(&after.0, &before.0) < 1e-14 && rel_err(&after.1, &before.1) < 1e-14);
}

#[test]
fn decay_distributes_over_merge() {
    let a = decayed([0.5, 0.8], [60, 40, 50], 5).stats;
    let b = decayed([0.3, 0.9], [30, 70, 20], 6).stats;
    let mut merged_then_decayed = a.clone();
    merged_then_decayed.merge(&b).unwrap();
    merged_then_decayed.decay(0.6).unwrap();
    let (mut a6, mut b6) = (a.clone(), b.clone());
    a6.decay(0.6).unwrap();
    b6.decay(0.6).unwrap();
    a6.merge(&b6).unwrap();
    for scope in [Scope::All, Scope::Task] {
        let (x, y) = (
            solve(&a6, Form::Nc, scope, 0.05),
            solve(&merged_then_decayed, Form::Nc, scope, 0.05),
        );
        assert!(rel_err(&x.0, &y.0) < SUM_ORDER_REL_TOL * 100.0, "{scope:?}");
        assert!((a6.sum(scope).0 - merged_then_decayed.sum(scope).0).abs() < 1e-12);
    }
    assert_eq!(a6.samples(), a.samples() + b.samples());
}

#[test]
fn retract_undoes_an_update_made_after_a_decay() {
    let (x, y) = labelled_data(8, 60, D, &CLASSES);
    let mut s = Stats::new(D);
    s.update(&x[..40 * D], &y[..40]).unwrap();
    s.decay(0.5).unwrap();
    let reference = s.clone();
    s.update(&x[40 * D..], &y[40..]).unwrap();
    s.retract(&x[40 * D..], &y[40..]).unwrap();
    assert_eq!(s.samples(), reference.samples());
    assert!((s.weight() - reference.weight()).abs() < 1e-12);
    let (got, want) = (
        solve(&s, Form::Nc, Scope::All, 0.05),
        solve(&reference, Form::Nc, Scope::All, 0.05),
    );
    assert!(rel_err(&got.0, &want.0) < 1e-10);
}

#[test]
fn retract_refuses_more_weight_than_a_decayed_class_holds() {
    let mut s = Stats::new(2);
    s.update(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 1, 2]).unwrap();
    s.decay(0.25).unwrap(); // class 1: 2 samples, weight 0.5
    let before = s.clone();
    let err = s.retract(&[1.0f64, 2.0], &[1]).unwrap_err();
    assert_eq!(
        err,
        RetractError::TooLittleWeight {
            class: 1,
            weight: 0.5,
            retracting: 1
        }
    );
    assert!(err.to_string().contains("weight of only 0.5"), "{err}");
    assert_eq!(s, before);
    assert_eq!(s.version(), before.version());
}

#[test]
fn retract_to_below_min_weight_forgets_the_class() {
    let mut s = Stats::new(1);
    s.update(&[1.0f64, 1.0], &[3, 3]).unwrap();
    s.decay(0.5).unwrap(); // weight 1 over 2 samples
    s.update(&[4.0f64], &[5]).unwrap();
    s.retract(&[1.0f64], &[3]).unwrap(); // weight 0, one sample left: forgotten
    assert_eq!(s.classes(), vec![5]);
    assert_eq!((s.samples(), s.weight()), (1, 1.0));
    assert_eq!(s.class_sum(5, Scope::All).unwrap(), (1.0, vec![4.0]));
}

#[test]
fn bad_factors_and_underflow_are_refused_and_change_nothing() {
    let mut s = Stats::new(2);
    s.update(&[1.0f32, 2.0], &[0]).unwrap();
    let before = s.clone();
    for gamma in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY, -0.0] {
        let err = s.decay(gamma).unwrap_err();
        assert!(matches!(err, DecayError::Factor { .. }), "{gamma}: {err:?}");
        assert!(err.to_string().contains("not in (0, 1]"), "{err}");
    }
    let err = s.decay(MIN_WEIGHT / 2.0).unwrap_err();
    assert!(matches!(err, DecayError::Underflow { class: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("class 0"), "{err}");
    assert_eq!(s, before);
    assert_eq!(s.version(), before.version());
    // The empty state decays (nothing to underflow).
    Stats::new(3).decay(1e-300).unwrap();
}

#[test]
fn decayed_states_survive_state_files() {
    let d = decayed([0.5, 0.3], [40, 40, 40], 9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.hs");
    snapshot::write(&path, &d.stats).unwrap();
    let back = snapshot::read(&path).unwrap();
    assert_eq!(back, d.stats);
    assert_eq!(back.weight(), d.stats.weight());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
}

/// A version-2 file: version 3's payload of a state without an expansion, less the final
/// byte that says "no expansion", under a version-2 header.
#[test]
fn version_2_state_files_still_read() {
    let d = decayed([0.5, 1.0], [30, 20, 25], 6);
    let v3 = snapshot::encode(&d.stats);
    assert_eq!(*v3.last().unwrap(), 0, "the payload should end with `None`");
    let payload = &v3[snapshot::HEADER_LEN..v3.len() - 1];
    let mut v2 = v3[..snapshot::HEADER_LEN].to_vec();
    v2[8..12].copy_from_slice(&2u32.to_le_bytes());
    v2[24..32].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    v2[32..36].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&v2[..36]);
    v2[36..40].copy_from_slice(&crc.to_le_bytes());
    v2.extend_from_slice(payload);
    let back = snapshot::decode(&v2, std::path::Path::new("v2.hs")).unwrap();
    assert_eq!(back, d.stats);
    assert_eq!(back.expansion(), None);
}

/// A named corruption of a state's parts.
type Corruption = (&'static str, fn(&mut headstart::stats::StatsParts));

#[test]
fn hostile_weights_in_a_state_file_are_refused() {
    let mut s = Stats::new(2);
    s.update(&[1.0f32, 2.0, 3.0, 4.0], &[0, 1]).unwrap();
    let cases: [Corruption; 4] = [
        ("weight 3 for 1 samples", |p| p.task.classes[0].2 = 3.0),
        ("weight NaN", |p| p.task.classes[0].2 = f64::NAN),
        ("weight -1", |p| p.task.classes[1].2 = -1.0),
        ("class weights add up to 2 but the segment's weight is 5", |p| {
            p.task.weight = 5.0
        }),
    ];
    for (message, damage) in cases {
        let mut parts = s.to_parts();
        damage(&mut parts);
        let err = Stats::from_parts(parts).unwrap_err();
        assert!(err.contains(message), "{message}: {err}");
    }
}

/// A version-1 state file, as the format was before weights: built here from
/// docs/formats.md's layout (bincode 2 standard configuration, two CRC-32s).
fn v1_file(s: &Stats) -> Vec<u8> {
    type SegmentV1 = (u64, Vec<f64>, Vec<f64>, Vec<(i64, u64, Vec<f64>)>);
    let p = s.to_parts();
    let seg = |g: &headstart::stats::SegmentParts| -> SegmentV1 {
        (
            g.n,
            g.gram_lower.clone(),
            g.sum.clone(),
            g.classes
                .iter()
                .map(|(id, n, _, sum)| (*id, *n, sum.clone()))
                .collect(),
        )
    };
    let v1 = (p.dim, p.tasks_begun, seg(&p.before), seg(&p.task));
    let payload = bincode::serde::encode_to_vec(v1, bincode::config::standard()).unwrap();
    let mut out = b"HDSTATE\n".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&p.dim.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[..36]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

#[test]
fn version_1_state_files_read_with_weights_equal_to_counts() {
    let d = decayed([1.0, 1.0], [30, 20, 25], 4);
    let bytes = v1_file(&d.stats);
    let back = snapshot::decode(&bytes, std::path::Path::new("old.hs")).unwrap();
    assert_eq!(back, d.stats);
    assert_eq!(back.weight(), 75.0);
    assert_eq!(back.task_weight(), 25.0);
    // A version-1 payload under a version-2 header does not decode as version 2.
    let mut relabelled = bytes.clone();
    relabelled[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&relabelled[..36]);
    relabelled[36..40].copy_from_slice(&crc.to_le_bytes());
    let err = snapshot::decode(&relabelled, std::path::Path::new("x.hs")).unwrap_err();
    assert!(err.to_string().contains("x.hs"), "{err}");
    // Version 5 is named as unknown.
    let mut future = bytes;
    future[8..12].copy_from_slice(&5u32.to_le_bytes());
    let crc = crc32fast::hash(&future[..36]);
    future[36..40].copy_from_slice(&crc.to_le_bytes());
    let err = snapshot::decode(&future, std::path::Path::new("new.hs")).unwrap_err();
    assert!(err.to_string().contains("reads versions 1 to 4"), "{err}");
}
