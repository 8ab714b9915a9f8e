//! Every bad input to the statistics and the solver: the error names what and where, and the
//! state is exactly as before (contents and version).

mod common;

use common::labelled_data;
use headstart::solve::{Form, Scope, SolveError, SolveOptions, Solver};
use headstart::stats::{BatchError, MergeError, RetractError, Stats};

fn seeded_state() -> Stats {
    let (x, y) = labelled_data(5, 40, 4, &[1, 2, 3]);
    let mut s = Stats::new(4);
    s.update(&x, &y).unwrap();
    s.begin_task();
    s.update(&x[..8 * 4], &y[..8]).unwrap();
    s
}

fn assert_untouched(before: &Stats, after: &Stats) {
    assert_eq!(before, after, "state changed");
    assert_eq!(before.version(), after.version(), "version changed");
}

#[test]
fn wrong_shapes_are_refused_without_change() {
    let mut s = seeded_state();
    let before = s.clone();
    let err = s.update(&[1.0f32; 7], &[1, 2]).unwrap_err();
    assert_eq!(
        err,
        BatchError::Shape {
            values: 7,
            labels: 2,
            dim: 4,
            expected: 8
        }
    );
    assert!(err.to_string().contains("expected 2 rows × 4 columns = 8"));
    assert!(s.update(&[1.0f64; 8], &[1]).is_err());
    assert!(s.update(&[1.0f64; 4], &[]).is_err());
    assert_untouched(&before, &s);
}

#[test]
fn non_finite_values_are_named_by_row_and_column() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut s = seeded_state();
        let before = s.clone();
        let mut x = vec![0.5f64; 3 * 4];
        x[2 * 4 + 3] = bad;
        let err = s.update(&x, &[1, 2, 3]).unwrap_err();
        assert!(
            matches!(err, BatchError::NonFinite { row: 2, col: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("row 2, column 3"), "{err}");
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        assert!(matches!(
            s.update(&x32, &[1, 2, 3]),
            Err(BatchError::NonFinite { row: 2, col: 3, .. })
        ));
        assert_untouched(&before, &s);
    }
}

#[test]
fn retracting_what_is_not_there_is_refused_without_change() {
    let mut s = seeded_state();
    let before = s.clone();
    // Class 99 never seen.
    let err = s.retract(&[0.0f64; 4], &[99]).unwrap_err();
    assert_eq!(err, RetractError::UnknownClass { class: 99 });
    // More samples of a class than the task segment holds.
    let class = s.task_classes()[0];
    let many = vec![class; 1000];
    let err = s.retract(&vec![0.0f64; 4000], &many).unwrap_err();
    assert!(
        matches!(err, RetractError::TooFewSamples { retracting: 1000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("class {class}")));
    // Malformed retraction.
    assert!(matches!(
        s.retract(&[f64::NAN; 4], &[class]),
        Err(RetractError::Batch(_))
    ));
    assert_untouched(&before, &s);
}

#[test]
fn merging_different_dimensions_is_refused_without_change() {
    let mut s = seeded_state();
    let before = s.clone();
    let err = s.merge(&Stats::new(5)).unwrap_err();
    assert_eq!(err, MergeError::Dimension { left: 4, right: 5 });
    assert_untouched(&before, &s);
}

#[test]
fn solve_errors_name_the_problem_and_never_return_nan() {
    let s = seeded_state();
    let solver = Solver::new();
    let solve = |opts: SolveOptions| solver.solve(&s, &opts).unwrap_err();
    for lambda in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            solve(SolveOptions {
                lambda: lambda.into(),
                ..Default::default()
            }),
            SolveError::InvalidLambda { .. }
        ));
    }
    let err = solve(SolveOptions {
        classes: Some(vec![1, 77]),
        ..Default::default()
    });
    assert!(
        err.to_string().contains("class 77 has no samples in scope 'all'"),
        "{err}"
    );
    assert!(err.to_string().contains("1, 2, 3"), "{err}");
    let err = solve(SolveOptions {
        classes: Some(vec![2, 2]),
        ..Default::default()
    });
    assert_eq!(err, SolveError::DuplicateClass { class: 2 });
    let err = solve(SolveOptions {
        classes: Some(vec![]),
        ..Default::default()
    });
    assert!(matches!(err, SolveError::NoClasses { .. }));

    let mut empty_task = s.clone();
    empty_task.begin_task();
    let err = solver
        .solve(
            &empty_task,
            &SolveOptions {
                scope: Scope::Task,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err, SolveError::NoSamples { scope: Scope::Task });
}

#[test]
fn rank_deficient_second_moment_at_lambda_zero_is_an_error_suggesting_lambda() {
    // d = 6 > N = 3: G/N has rank 3.
    let mut s = Stats::new(6);
    let (x, y) = labelled_data(9, 3, 6, &[0, 1]);
    s.update(&x, &y).unwrap();
    let solver = Solver::new();
    for form in [Form::Nc, Form::Ridge] {
        for bias in [true, false] {
            let err = solver
                .solve(
                    &s,
                    &SolveOptions {
                        form,
                        bias,
                        lambda: 0.0.into(),
                        ..Default::default()
                    },
                )
                .unwrap_err();
            assert!(
                matches!(err, SolveError::NotPositiveDefinite { .. }),
                "{form} {bias}: {err:?}"
            );
            assert!(err.to_string().contains("lambda > 0"), "{err}");
            // With λ > 0 the same state solves, with finite weights.
            let head = solver
                .solve(
                    &s,
                    &SolveOptions {
                        form,
                        bias,
                        lambda: 1e-3.into(),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert!(head.weight.iter().chain(&head.bias).all(|v| v.is_finite()));
        }
    }
    // An exactly repeated feature column: singular at any N.
    let mut s = Stats::new(3);
    let x: Vec<f64> = (0..50)
        .flat_map(|i| [i as f64, i as f64, (i % 7) as f64])
        .collect();
    s.update(&x, &vec![0; 50]).unwrap();
    let err = solver
        .solve(
            &s,
            &SolveOptions {
                lambda: 0.0.into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, SolveError::NotPositiveDefinite { .. }), "{err:?}");
}

#[test]
fn task_scope_refuses_classes_only_seen_before_the_marker() {
    let mut s = Stats::new(2);
    s.update(&[1.0f32, 0.0, 0.0, 1.0], &[1, 2]).unwrap();
    s.begin_task();
    s.update(&[1.0f32, 1.0, 2.0, 1.0], &[3, 3]).unwrap();
    let solver = Solver::new();
    let opts = SolveOptions {
        scope: Scope::Task,
        classes: Some(vec![3, 1]),
        ..Default::default()
    };
    let err = solver.solve(&s, &opts).unwrap_err();
    assert!(
        err.to_string().contains("class 1 has no samples in scope 'task'"),
        "{err}"
    );
    let head = solver
        .solve(
            &s,
            &SolveOptions {
                scope: Scope::Task,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(head.class_ids, vec![3]);
}

mod cli_errors {
    //! The CLI's error line: each message once, naming the path the user gave.

    use std::path::Path;

    use super::common::{fails, s};
    use headstart::ingest::npy::{write_f32, write_i64};

    fn pair(dir: &Path) -> (String, String) {
        let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
        write_f32(&xp, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2).unwrap();
        write_i64(&yp, &[1, 2, 1]).unwrap();
        (s(&xp), s(&yp))
    }

    #[test]
    fn os_errors_appear_once_and_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = pair(dir.path());
        let missing = s(&dir.path().join("nope.npy"));
        let out = s(&dir.path().join("h.safetensors"));
        let err = fails(&["fit", "--features", &missing, "--labels", &y, "--out", &out]);
        assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
        assert!(err.contains(&missing), "{err}");

        let folder = s(dir.path());
        let err = fails(&["solve", "--state", &folder, "--out", &out]);
        assert_eq!(err.matches("Is a directory").count(), 1, "{err}");
        assert!(err.contains(&folder), "{err}");

        // A safetensors file whose header length is absurd.
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, u64::MAX.to_le_bytes()).unwrap();
        let err = fails(&[
            "fit",
            "--features",
            &x,
            "--labels",
            &y,
            "--out",
            &out,
            "--match-norm",
            &s(&bad),
        ]);
        assert!(err.contains(&s(&bad)), "{err}");
        let first = err.trim_start_matches("error: ").trim_end();
        let parts: Vec<&str> = first.split(": ").collect();
        let mut unique = parts.clone();
        unique.dedup();
        assert_eq!(parts, unique, "a message repeats: {err}");
    }

    #[test]
    fn a_bad_output_path_fails_first_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = pair(dir.path());
        let out = s(&dir.path().join("no-such-folder").join("h.safetensors"));
        // The features do not exist either: the output is checked before any input is read.
        let missing = s(&dir.path().join("nope.npy"));
        for features in [&x, &missing] {
            let err = fails(&["fit", "--features", features, "--labels", &y, "--out", &out]);
            assert!(err.contains(&format!("--out {out}")), "{err}");
            assert!(err.contains("does not exist"), "{err}");
            assert!(!err.contains(".headstart-") && !err.contains("at path"), "{err}");
        }
        let folder = s(dir.path());
        let err = fails(&["fit", "--features", &missing, "--labels", &y, "--out", &folder]);
        assert!(
            err.contains(&format!("--out {folder}")) && err.contains("is a folder"),
            "{err}"
        );

        let state = s(&dir.path().join("no-such-folder").join("s.hs"));
        let err = fails(&[
            "ingest",
            "--features",
            &missing,
            "--labels",
            &y,
            "--state",
            &state,
        ]);
        assert!(err.contains(&format!("--state {state}")), "{err}");
        let err = fails(&["solve", "--state", &missing, "--out", &out]);
        assert!(err.contains(&format!("--out {out}")), "{err}");
    }

    #[test]
    fn float16_features_and_a_folder_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (_, y) = pair(dir.path());
        let out = s(&dir.path().join("h.safetensors"));
        let x16 = dir.path().join("x16.npy");
        let header = "{'descr': '<f2', 'fortran_order': False, 'shape': (3, 2), }";
        let header = format!("{header:<117}\n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 12]);
        std::fs::write(&x16, bytes).unwrap();
        let err = fails(&["fit", "--features", &s(&x16), "--labels", &y, "--out", &out]);
        assert!(
            err.contains("float16 ('<f2') is not supported: convert to float32"),
            "{err}"
        );
        assert!(!err.contains("data bytes"), "{err}");

        let folder = s(dir.path());
        let err = fails(&["fit", "--features", &folder, "--labels", &y, "--out", &out]);
        assert!(err.contains(&folder) && err.contains("is a directory"), "{err}");
        assert!(!err.contains("preamble"), "{err}");
    }
}
