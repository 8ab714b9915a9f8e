//! The offline workflow: `ingest`, `inspect`, `merge` and `solve --state`.

mod common;

use std::path::PathBuf;

use common::{F32_STORAGE_REL_TOL, SUM_ORDER_REL_TOL, headstart, labelled_data, ok, rel_err};
use headstart::export::read_head;
use headstart::ingest::npy::{write_f32, write_i64};
use headstart::snapshot;
use headstart::solve::{Scope, SolveOptions, Solver};
use headstart::stats::Stats;

const D: usize = 5;

/// `ingest` of the given files into `state`.
fn ingest_args<'a>(features: &'a str, labels: &'a str, state: &'a str) -> [&'a str; 7] {
    [
        "ingest",
        "--features",
        features,
        "--labels",
        labels,
        "--state",
        state,
    ]
}

fn one_line_error(args: &[&str], needles: &[&str]) {
    let out = headstart(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {}", lines[0]);
    }
}

/// Three .npy pairs (parts of one seeded data set) and their f32 rows.
struct Parts {
    dir: tempfile::TempDir,
    rows: Vec<(Vec<f32>, Vec<i64>)>,
}

impl Parts {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        for (k, n) in [(0u64, 300usize), (1, 200), (2, 250)] {
            let (x, y) = labelled_data(40 + k, n, D, &[-1, 3, 8, 20]);
            let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            write_f32(&dir.path().join(format!("x{k}.npy")), &x, n, D).unwrap();
            write_i64(&dir.path().join(format!("y{k}.npy")), &y).unwrap();
            rows.push((x, y));
        }
        Parts { dir, rows }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
    fn ingest(&self, part: usize, state: &str, extra: &[&str]) -> String {
        let (x, y, s) = (
            self.s(&format!("x{part}.npy")),
            self.s(&format!("y{part}.npy")),
            self.s(state),
        );
        let mut args = ingest_args(&x, &y, &s).to_vec();
        args.extend_from_slice(&["--batch", "64"]);
        args.extend_from_slice(extra);
        ok(&args)
    }
    fn all(&self) -> Stats {
        let mut s = Stats::new(D);
        for (x, y) in &self.rows {
            s.update(x, y).unwrap();
        }
        s
    }
}

fn assert_states_close(a: &Stats, b: &Stats) {
    assert_eq!(a.classes(), b.classes());
    assert_eq!(a.samples(), b.samples());
    for id in a.classes() {
        assert_eq!(a.class_count(id), b.class_count(id));
        let (sa, sb) = (
            a.class_sum(id, Scope::All).unwrap().1,
            b.class_sum(id, Scope::All).unwrap().1,
        );
        assert!(rel_err(&sa, &sb) < SUM_ORDER_REL_TOL);
    }
    let (ga, gb) = (a.gram(Scope::All), b.gram(Scope::All));
    let flat = |g: &faer::Mat<f64>| {
        (0..D)
            .flat_map(|i| (0..D).map(move |j| (i, j)))
            .map(|(i, j)| g[(i, j)])
            .collect::<Vec<_>>()
    };
    assert!(rel_err(&flat(&ga), &flat(&gb)) < SUM_ORDER_REL_TOL);
}

#[test]
fn extending_and_merging_state_files_equal_ingesting_everything_at_once() {
    let parts = Parts::new();
    // One file extended three times; three files merged.
    for k in 0..3 {
        parts.ingest(k, "extended.hs", &[]);
        parts.ingest(k, &format!("part{k}.hs"), &[]);
    }
    let out = ok(&[
        "merge",
        &parts.s("part0.hs"),
        &parts.s("part1.hs"),
        &parts.s("part2.hs"),
        "--out",
        &parts.s("merged.hs"),
    ]);
    assert!(out.contains("3 states, 750 samples"), "{out}");
    let reference = parts.all();
    let extended = snapshot::read(&parts.p("extended.hs")).unwrap();
    let merged = snapshot::read(&parts.p("merged.hs")).unwrap();
    assert_states_close(&extended, &reference);
    assert_states_close(&merged, &reference);

    // Solving the merged file gives the head of all the data.
    ok(&[
        "solve",
        "--state",
        &parts.s("merged.hs"),
        "--lambda",
        "0.02",
        "--classes",
        "20,-1",
        "--out",
        &parts.s("h.safetensors"),
    ]);
    let head = read_head(&parts.p("h.safetensors"), "").unwrap();
    let opts = SolveOptions {
        lambda: 0.02.into(),
        classes: Some(vec![20, -1]),
        ..SolveOptions::default()
    };
    let expected = Solver::new().solve(&reference, &opts).unwrap();
    assert_eq!(head.class_ids, vec![20, -1]);
    assert!(rel_err(&head.weight, &expected.weight) < F32_STORAGE_REL_TOL);
    assert!(rel_err(&head.bias, &expected.bias) < F32_STORAGE_REL_TOL);
    assert_eq!(
        head.metadata.get("state").map(String::as_str),
        Some(parts.s("merged.hs").as_str())
    );
}

#[test]
fn inspect_summarises_and_a_task_boundary_scopes_the_solve() {
    let parts = Parts::new();
    parts.ingest(0, "s.hs", &[]);
    let out = parts.ingest(1, "s.hs", &["--begin-task"]);
    assert!(out.contains("extended"), "{out}");
    let text = ok(&["inspect", &parts.s("s.hs")]);
    let (x1, y1) = &parts.rows[1];
    let count3 = |y: &[i64]| y.iter().filter(|&&l| l == 3).count();
    assert!(text.contains("dimension: 5"), "{text}");
    assert!(
        text.contains("samples: 500 (200 since the last task boundary)"),
        "{text}"
    );
    assert!(text.contains("task boundaries: 1"), "{text}");
    let line3 = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("3"))
        .unwrap();
    let fields: Vec<&str> = line3.split_whitespace().collect();
    assert_eq!(
        fields[1].parse::<usize>().unwrap(),
        count3(&parts.rows[0].1) + count3(y1)
    );
    assert_eq!(fields[2].parse::<usize>().unwrap(), count3(y1));

    ok(&[
        "solve",
        "--state",
        &parts.s("s.hs"),
        "--scope",
        "task",
        "--out",
        &parts.s("t.safetensors"),
    ]);
    let head = read_head(&parts.p("t.safetensors"), "").unwrap();
    let mut task_only = Stats::new(D);
    task_only.update(x1, y1).unwrap();
    let expected = Solver::new().solve(&task_only, &SolveOptions::default()).unwrap();
    assert!(rel_err(&head.weight, &expected.weight) < F32_STORAGE_REL_TOL);

    // λ chosen on a held-out state file.
    parts.ingest(2, "val.hs", &[]);
    let out = ok(&[
        "solve",
        "--state",
        &parts.s("s.hs"),
        "--lambda",
        "auto",
        "--val-state",
        &parts.s("val.hs"),
        "--out",
        &parts.s("a.safetensors"),
    ]);
    assert!(out.contains("auto: lowest held-out MSE"), "{out}");
}

#[test]
fn state_file_errors_are_one_line_and_name_the_file() {
    let parts = Parts::new();
    parts.ingest(0, "s.hs", &[]);
    // A different dimension.
    let wide: Vec<f32> = vec![0.5; 4 * (D + 1)];
    write_f32(&parts.p("wide.npy"), &wide, 4, D + 1).unwrap();
    write_i64(&parts.p("wide_y.npy"), &[1, 1, 2, 2]).unwrap();
    let (wide_x, wide_y) = (parts.s("wide.npy"), parts.s("wide_y.npy"));
    one_line_error(
        &ingest_args(&wide_x, &wide_y, &parts.s("s.hs")),
        &["s.hs", "dimension 5", "6 columns"],
    );
    ok(&ingest_args(&wide_x, &wide_y, &parts.s("w.hs")));
    one_line_error(
        &[
            "merge",
            &parts.s("s.hs"),
            &parts.s("w.hs"),
            "--out",
            &parts.s("m.hs"),
        ],
        &["w.hs", "dimension 6"],
    );
    assert!(!parts.p("m.hs").exists());
    // Damaged files: truncated, flipped, not a state at all.
    let bytes = std::fs::read(parts.p("s.hs")).unwrap();
    std::fs::write(parts.p("cut.hs"), &bytes[..bytes.len() - 9]).unwrap();
    one_line_error(&["inspect", &parts.s("cut.hs")], &["cut.hs", "truncated"]);
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(parts.p("flip.hs"), &flipped).unwrap();
    one_line_error(
        &[
            "solve",
            "--state",
            &parts.s("flip.hs"),
            "--out",
            &parts.s("x.safetensors"),
        ],
        &["flip.hs", "checksum"],
    );
    assert!(!parts.p("x.safetensors").exists());
    one_line_error(
        &["inspect", &parts.s("x0.npy")],
        &["x0.npy", "not a headstart state file"],
    );
    // An ingest into a damaged file refuses before reading the features, and leaves it alone.
    one_line_error(
        &ingest_args(&parts.s("x1.npy"), &parts.s("y1.npy"), &parts.s("cut.hs")),
        &["cut.hs"],
    );
    assert_eq!(
        std::fs::read(parts.p("cut.hs")).unwrap(),
        &bytes[..bytes.len() - 9]
    );
    one_line_error(
        &[
            "solve",
            "--state",
            &parts.s("s.hs"),
            "--lambda",
            "auto",
            "--out",
            &parts.s("y.safetensors"),
        ],
        &["--val-state"],
    );
    one_line_error(
        &[
            "solve",
            "--connect",
            "127.0.0.1:1",
            "--lambda",
            "auto",
            "--out",
            &parts.s("y.safetensors"),
        ],
        &["--lambda auto", "--connect"],
    );
}

/// A head read back is the head written: its solve description exactly (from the metadata),
/// its values to f32 storage, and a file whose metadata lacks a field is refused by name.
#[test]
fn a_stored_head_reads_back_as_the_head_with_its_solve_description() {
    use headstart::export::{decode_head, to_safetensors};
    use headstart::solve::{Form, Lambda};
    use std::collections::BTreeMap;
    let (x, y) = labelled_data(5, 300, 4, &[2, 9, 11]);
    let mut s = Stats::new(4);
    s.update(&x, &y).unwrap();
    let opts = SolveOptions {
        form: Form::Ridge,
        lambda: Lambda::Relative(0.01),
        classes: Some(vec![11, 2]),
        ..SolveOptions::default()
    };
    let head = Solver::new().solve(&s, &opts).unwrap();
    let mut extra = BTreeMap::new();
    extra.insert("note".to_string(), "kept".to_string());
    let bytes = to_safetensors(&head, "fc.", &extra);
    let stored = decode_head(&bytes, "fc.", std::path::Path::new("h")).unwrap();
    assert_eq!(stored.info, head.info);
    assert_eq!((stored.class_ids.clone(), stored.dim), (vec![11, 2], 4));
    assert!(rel_err(&stored.weight, &head.weight) < F32_STORAGE_REL_TOL);
    assert_eq!(stored.metadata["note"], "kept");
    assert_eq!(stored.info.lambda_rule, Lambda::Relative(0.01));
    assert_eq!(stored.info.scope, Scope::All);

    // The same tensors without the solve description: refused, naming the field.
    let mut bare = BTreeMap::new();
    bare.insert("format".to_string(), "pt".to_string());
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors.tensors();
    let stripped = safetensors::tensor::serialize(views, Some(bare.into_iter().collect())).unwrap();
    let err = decode_head(&stripped, "fc.", std::path::Path::new("h")).unwrap_err();
    assert!(err.to_string().contains("metadata 'form'"), "{err}");
}

#[test]
fn decay_and_ingest_with_decay_equal_the_library_and_refuse_bad_factors() {
    let parts = Parts::new();
    // Library reference: part 0, decayed by 0.5, then part 1 added after a decay of 0.8.
    let mut want = Stats::new(D);
    want.update(&parts.rows[0].0, &parts.rows[0].1).unwrap();
    want.decay(0.5).unwrap();
    want.decay(0.8).unwrap();
    want.update(&parts.rows[1].0, &parts.rows[1].1).unwrap();

    parts.ingest(0, "s.hs", &[]);
    let out = ok(&[
        "decay",
        &parts.s("s.hs"),
        "--gamma",
        "0.5",
        "--out",
        &parts.s("d.hs"),
    ]);
    assert!(out.contains("0.5"), "{out}");
    // FILE itself is untouched when --out is given.
    assert_eq!(snapshot::read(&parts.p("s.hs")).unwrap().weight(), 300.0);
    parts.ingest(1, "d.hs", &["--decay", "0.8"]);
    let got = snapshot::read(&parts.p("d.hs")).unwrap();
    assert_eq!(got.samples(), 500);
    assert!((got.weight() - want.weight()).abs() < 1e-9, "{}", got.weight());
    for id in want.classes() {
        let (a, b) = (got.class_weight(id), want.class_weight(id));
        assert!((a - b).abs() < 1e-9 * b.max(1.0), "class {id}: {a} vs {b}");
    }
    let solve = |s: &Stats| Solver::new().solve(s, &SolveOptions::default()).unwrap().weight;
    assert!(rel_err(&solve(&got), &solve(&want)) < 1e-6);
    let info = ok(&["inspect", &parts.s("d.hs")]);
    assert!(info.contains("decayed"), "{info}");

    // Bad factors: clap's usage error names the flag and the value; the file is unchanged.
    let refused = |args: &[&str], flag: &str, bad: &str| {
        let out = headstart(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(bad), "{args:?}: {err}");
    };
    let before = std::fs::read(parts.p("d.hs")).unwrap();
    for bad in ["0", "1.5", "-0.1", "NaN", "x"] {
        refused(&["decay", &parts.s("d.hs"), "--gamma", bad], "--gamma", bad);
        let (x, y, s) = (parts.s("x2.npy"), parts.s("y2.npy"), parts.s("d.hs"));
        let mut args = ingest_args(&x, &y, &s).to_vec();
        args.extend_from_slice(&["--decay", bad]);
        refused(&args, "--decay", bad);
    }
    assert_eq!(std::fs::read(parts.p("d.hs")).unwrap(), before);
}
