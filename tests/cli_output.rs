//! What the CLI writes: stdout closed early, output files' permissions, summaries and their
//! wording.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{headstart, ok, s};
use headstart::export::read_head;
use headstart::ingest::npy::{write_f32, write_i64};

const BIN: &str = env!("CARGO_BIN_EXE_headstart");

/// Runs with stdout a pipe whose read end is closed before the program writes.
fn with_stdout_closed(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running headstart");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small seeded .npy pair: 60 rows of 4 features, classes 0, 1, 2.
fn pair(dir: &Path) -> (String, String) {
    let (rows, cols) = (60, 4);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 101) as f32 / 10.0 + (i % cols) as f32)
        .collect();
    let y: Vec<i64> = (0..rows as i64).map(|i| i % 3).collect();
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    write_f32(&xp, &x, rows, cols).unwrap();
    write_i64(&yp, &y).unwrap();
    (s(&xp), s(&yp))
}

fn ingest(x: &str, y: &str, state: &str) -> String {
    ok(&["ingest", "--features", x, "--labels", y, "--state", state])
}

#[test]
fn closing_stdout_early_ends_quietly_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path());
    let state = s(&dir.path().join("s.hs"));
    ingest(&x, &y, &state);

    let (code, err) = with_stdout_closed(&["inspect", &state, "--all"]);
    assert_eq!(code, Some(0), "inspect: {err}");
    assert!(!err.contains("panicked"), "inspect: {err}");

    let head = dir.path().join("h.safetensors");
    let (code, err) = with_stdout_closed(&["fit", "--features", &x, "--labels", &y, "--out", &s(&head)]);
    assert_eq!(code, Some(0), "fit: {err}");
    assert!(!err.contains("panicked"), "fit: {err}");
    // The head was written before the summary: it is complete.
    let stored = read_head(&head, "").expect("a complete head");
    assert_eq!(stored.class_ids, vec![0, 1, 2]);

    let demo = dir.path().join("demo");
    let (code, err) = with_stdout_closed(&["demo", "--out", &s(&demo)]);
    assert_eq!(code, Some(0), "demo: {err}");
    assert!(!err.contains("panicked"), "demo: {err}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn output_files_get_ordinary_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path());
    let head = dir.path().join("h.safetensors");
    let state = dir.path().join("s.hs");
    // A new file: 0666 less the umask (022 → 0644).
    let script = "umask 022 && \"$0\" fit --features \"$1\" --labels \"$2\" --out \"$3\" >/dev/null && \
                  \"$0\" ingest --features \"$1\" --labels \"$2\" --state \"$4\" >/dev/null";
    let run = || {
        let out = Command::new("sh")
            .args(["-c", script, BIN, &x, &y, &s(&head), &s(&state)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    assert_eq!(mode(&head), 0o644, "new head");
    assert_eq!(mode(&state), 0o644, "new state");
    // Replacing a file keeps its mode.
    for p in [&head, &state] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    run();
    assert_eq!(mode(&head), 0o640, "replaced head");
    assert_eq!(mode(&state), 0o640, "extended state");
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn counts_are_pluralised() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path());
    let state = s(&dir.path().join("s.hs"));
    ingest(&x, &y, &state);
    let merged = s(&dir.path().join("m.hs"));
    let out = ok(&["merge", &state, "--out", &merged]);
    assert!(out.contains("1 state,"), "{out}");
    assert!(!out.contains("1 states"), "{out}");
    let out = ok(&["merge", &state, &merged, "--out", &merged]);
    assert!(out.contains("2 states,"), "{out}");
    assert!(out.contains("120 samples, 3 classes"), "{out}");
}

#[test]
fn solve_from_a_state_prints_the_same_summary_as_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path());
    let state = s(&dir.path().join("s.hs"));
    ingest(&x, &y, &state);
    let fit_out = ok(&[
        "fit",
        "--features",
        &x,
        "--labels",
        &y,
        "--out",
        &s(&dir.path().join("f.safetensors")),
    ]);
    let head = s(&dir.path().join("h.safetensors"));
    let solve_out = ok(&["solve", "--state", &state, "--out", &head]);
    for out in [&fit_out, &solve_out] {
        let starts: Vec<&str> = out.lines().map(|l| l.split([':', ' ']).next().unwrap()).collect();
        assert_eq!(
            starts,
            ["samples", "classes", "lambda", "form", "time", "wrote"],
            "{out}"
        );
        assert!(out.contains("60 used for the head"), "{out}");
        assert!(out.contains("(3 × 4, prefix '')"), "{out}");
    }
    assert!(solve_out.contains(&format!("wrote {head} (3 × 4")), "{solve_out}");
}

#[test]
fn fit_refuses_scope_task_and_bad_val_fraction_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = pair(dir.path());
    let head = s(&dir.path().join("h.safetensors"));
    let out = headstart(&[
        "fit",
        "--features",
        &x,
        "--labels",
        &y,
        "--out",
        &head,
        "--scope",
        "task",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--scope task") && err.contains("no task boundary"),
        "{err}"
    );
    assert!(!PathBuf::from(&head).exists());

    for bad in ["-0.2", "0", "1", "1.5", "x"] {
        let out = headstart(&[
            "fit",
            "--features",
            &x,
            "--labels",
            &y,
            "--out",
            &head,
            "--lambda",
            "auto",
            "--val-fraction",
            bad,
        ]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--val-fraction") && err.contains("must be in (0, 1)"),
            "{bad}: {err}"
        );
        assert!(!err.contains("unexpected argument"), "{bad}: {err}");
    }
}
