//! The `headstart` binary: fit writes a correct head; every error exits non-zero with one
//! line naming what and where, and leaves no output file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{F32_STORAGE_REL_TOL, labelled_data, rel_err};
use headstart::export::read_head;
use headstart::ingest::npy::{write_f32, write_i64};
use headstart::solve::{SolveOptions, Solver};
use headstart::stats::Stats;

const D: usize = 6;

fn headstart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(args)
        .output()
        .expect("running headstart")
}

struct Fixture {
    dir: tempfile::TempDir,
    x: Vec<f32>,
    y: Vec<i64>,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let (x, y) = labelled_data(77, n, D, &[4, 10, 12]);
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let dir = tempfile::tempdir().unwrap();
        write_f32(&dir.path().join("x.npy"), &x, n, D).unwrap();
        write_i64(&dir.path().join("y.npy"), &y).unwrap();
        Fixture { dir, x, y }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
    /// `headstart fit` on the fixture's x.npy/y.npy, writing `out`, with extra arguments.
    fn fit(&self, out: &str, extra: &[&str]) -> Output {
        let (x, y, o) = (self.s("x.npy"), self.s("y.npy"), self.s(out));
        let mut args = vec!["fit", "--features", &x, "--labels", &y, "--out", &o];
        args.extend_from_slice(extra);
        headstart(&args)
    }
}

fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {}", lines[0]);
    }
}

#[test]
fn fit_writes_the_head_the_library_solves() {
    let f = Fixture::new(500);
    let out = f.fit(
        "h.safetensors",
        &[
            "--batch",
            "37",
            "--producers",
            "3",
            "--classes",
            "12, 4",
            "--prefix",
            "fc.",
            "--lambda",
            "0.01",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in ["samples: 500", "classes: 2", "lambda: 0.01", "samples/s", "wrote"] {
        assert!(stdout.contains(needle), "'{needle}' missing from:\n{stdout}");
    }
    let stored = read_head(&f.path("h.safetensors"), "fc.").unwrap();
    let mut stats = Stats::new(D);
    stats.update(&f.x, &f.y).unwrap();
    let opts = SolveOptions {
        lambda: 0.01.into(),
        classes: Some(vec![12, 4]),
        ..Default::default()
    };
    let head = Solver::new().solve(&stats, &opts).unwrap();
    assert_eq!(stored.class_ids, vec![12, 4]);
    // Stored as f32: agreement to f32 rounding.
    assert!(rel_err(&stored.weight, &head.weight) < F32_STORAGE_REL_TOL);
    assert!(rel_err(&stored.bias, &head.bias) < F32_STORAGE_REL_TOL);
    let m = &stored.metadata;
    assert_eq!(
        (m["format"].as_str(), m["form"].as_str(), m["scope"].as_str()),
        ("pt", "nc", "all")
    );
    assert_eq!(
        (m["samples"].as_str(), m["dim"].as_str(), m["classes"].as_str()),
        ("500", "6", "[12,4]")
    );
    assert_eq!(m["lambda"], "0.01");
}

#[test]
fn lambda_auto_with_a_validation_fraction_records_the_choice() {
    let f = Fixture::new(800);
    let out = f.fit(
        "h.safetensors",
        &[
            "--lambda",
            "auto",
            "--val-fraction",
            "0.25",
            "--seed",
            "3",
            "--lambda-grid",
            "1e-4, 1e-2, 1, 100",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("auto: lowest held-out MSE"), "{stdout}");
    let stored = read_head(&f.path("h.safetensors"), "").unwrap();
    let selection = &stored.metadata["lambda_selection"];
    assert!(selection.contains("grid_mse"), "{selection}");
    let held_out: u64 = stdout
        .lines()
        .flat_map(|l| l.split(", "))
        .find_map(|p| p.strip_suffix(" held out"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (120..280).contains(&held_out),
        "held out {held_out} of 800 at 25%"
    );
    assert_eq!(stored.metadata["samples"], (800 - held_out).to_string());
}

#[test]
fn match_norm_scales_rows_to_the_reference_median() {
    let f = Fixture::new(300);
    let (x, y, r, h) = (
        f.s("x.npy"),
        f.s("y.npy"),
        f.s("ref.safetensors"),
        f.s("h.safetensors"),
    );
    let base = ["fit", "--features", &x, "--labels", &y, "--prefix", "fc."];
    let mut first = base.to_vec();
    first.extend(["--out", &r, "--lambda", "10"]);
    assert!(headstart(&first).status.success());
    let reference = read_head(&f.path("ref.safetensors"), "fc.").unwrap();
    let target = headstart::solve::median_row_norm(&reference.weight, D);
    let mut second = base.to_vec();
    second.extend(["--out", &h, "--match-norm", &r]);
    let out = headstart(&second);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let head = read_head(&f.path("h.safetensors"), "fc.").unwrap();
    for row in head.weight.chunks_exact(D) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - target).abs() < 1e-5 * target, "{norm} vs {target}");
    }
}

#[test]
fn every_error_is_one_line_and_leaves_no_file() {
    let f = Fixture::new(50);
    let mut nan = f.x.clone();
    nan[17 * D + 2] = f32::NAN;
    write_f32(&f.path("nan.npy"), &nan, 50, D).unwrap();
    write_i64(&f.path("short.npy"), &f.y[..49]).unwrap();
    std::fs::write(
        f.path("trunc.npy"),
        &std::fs::read(f.path("x.npy")).unwrap()[..30],
    )
    .unwrap();
    std::fs::copy(f.path("y.npy"), f.path("labels_as_features.npy")).unwrap();
    let out_path = f.s("h.safetensors");
    let x = f.s("x.npy");
    let y = f.s("y.npy");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![f.s("nan.npy"), y.clone()],
            vec!["nan.npy", "row 17, column 2", "NaN"],
        ),
        (vec![x.clone(), f.s("short.npy")], vec!["50 rows", "49 labels"]),
        (vec![f.s("trunc.npy"), y.clone()], vec!["trunc.npy", "header"]),
        (
            vec![f.s("labels_as_features.npy"), y.clone()],
            vec!["labels_as_features.npy", "2-D"],
        ),
        (vec![f.s("missing.npy"), y.clone()], vec!["missing.npy"]),
        (
            vec![x.clone(), y.clone(), "--classes".into(), "4,99".into()],
            vec!["class 99"],
        ),
        (
            vec![x.clone(), y.clone(), "--classes".into(), "4-x".into()],
            vec!["--classes", "not an integer"],
        ),
        (
            vec![x.clone(), y.clone(), "--lambda".into(), "-1".into()],
            vec!["--lambda"],
        ),
        (
            vec![x.clone(), y.clone(), "--lambda".into(), "auto".into()],
            vec!["held-out data"],
        ),
        (
            vec![
                x.clone(),
                y.clone(),
                "--lambda".into(),
                "0".into(),
                "--classes".into(),
                "4".into(),
            ],
            vec![],
        ),
        (
            vec![x.clone(), y.clone(), "--match-norm".into(), f.s("x.npy")],
            vec!["x.npy", "safetensors"],
        ),
    ];
    for (i, (inputs, needles)) in cases.into_iter().enumerate() {
        let mut args = vec![
            "fit".to_string(),
            "--features".into(),
            inputs[0].clone(),
            "--labels".into(),
            inputs[1].clone(),
        ];
        args.extend(inputs[2..].iter().cloned());
        args.extend(["--out".into(), out_path.clone()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = headstart(&argv);
        if needles.is_empty() {
            // λ = 0 on well-posed data succeeds; remove its output for the next case.
            assert!(
                out.status.success(),
                "case {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::remove_file(&out_path).unwrap();
            continue;
        }
        assert_one_line_error(&out, &needles);
        assert!(!Path::new(&out_path).exists(), "case {i} left {out_path} behind");
    }
    // No temporary files left in the output folder either.
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".headstart-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn rank_deficient_input_at_lambda_zero_suggests_a_positive_lambda() {
    let dir = tempfile::tempdir().unwrap();
    // d = 6 > N = 4.
    write_f32(
        &dir.path().join("x.npy"),
        &[1.0; 4 * 6].map(|v: f32| v * 2.0),
        4,
        6,
    )
    .unwrap();
    write_i64(&dir.path().join("y.npy"), &[0, 1, 0, 1]).unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    let out = headstart(&[
        "fit",
        "--features",
        &d("x.npy"),
        "--labels",
        &d("y.npy"),
        "--out",
        &d("h.st"),
        "--lambda",
        "0",
    ]);
    assert_one_line_error(&out, &["not positive definite", "lambda > 0"]);
    assert!(!dir.path().join("h.st").exists());
}

#[test]
fn demo_runs_and_writes_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = headstart(&["demo", "--out", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains('%')).count(), 5, "{stdout}");
    let head = read_head(&dir.path().join("head.safetensors"), "").unwrap();
    assert_eq!(head.class_ids, (0..10).collect::<Vec<i64>>());
}

fn stdout_line<'a>(out: &'a Output, prefix: &str) -> &'a str {
    std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn bench_streams_every_sample_and_reports_throughput() {
    for extra in [
        &[][..],
        &["--producers", "2", "--reducers", "2", "--precision", "fast"],
        &["--direct", "--input", "f64"],
    ] {
        let mut args = vec![
            "bench",
            "--dim",
            "16",
            "--batch",
            "64",
            "--samples",
            "1000",
            "--pool-mib",
            "0.05",
        ];
        args.extend_from_slice(extra);
        let out = headstart(&args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // 1000 samples in batches of 64: 16 whole batches.
        assert!(
            stdout_line(&out, "time:").contains("1024 samples in 16 batches"),
            "{extra:?}"
        );
        let rate: f64 = stdout_line(&out, "throughput: ")
            .trim_start_matches("throughput: ")
            .trim_end_matches(" samples/s")
            .parse()
            .unwrap();
        assert!(rate > 0.0 && rate.is_finite());
        // The last line is the throughput line, for scripts.
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.trim_end()
                .lines()
                .last()
                .unwrap()
                .starts_with("throughput: ")
        );
    }
    let out = headstart(&[
        "bench",
        "--solve",
        "--dim",
        "32",
        "--classes",
        "5",
        "--repeat",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout_line(&out, "solve: ").contains("ms median"));
    assert!(stdout_line(&out, "headstart bench --solve").contains("C=5"));
}

#[test]
fn bench_refuses_impossible_settings_in_one_line() {
    let out = headstart(&["bench", "--producers", "1", "--reducers", "2"]);
    assert_one_line_error(&out, &["--reducers (2)", "--producers (1)"]);
    let out = headstart(&["bench", "--dim", "0"]);
    assert_one_line_error(&out, &["--dim"]);
    let out = headstart(&["bench", "--precision", "half"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exact"));
}

#[test]
fn fit_in_fast_precision_agrees_with_exact_and_records_it() {
    let fx = Fixture::new(300);
    let exact = fx.fit("exact.safetensors", &[]);
    assert!(
        exact.status.success(),
        "{}",
        String::from_utf8_lossy(&exact.stderr)
    );
    let fast = fx.fit("fast.safetensors", &["--precision", "fast"]);
    assert!(fast.status.success(), "{}", String::from_utf8_lossy(&fast.stderr));
    let (e, f) = (
        read_head(&fx.path("exact.safetensors"), "").unwrap(),
        read_head(&fx.path("fast.safetensors"), "").unwrap(),
    );
    assert_eq!(f.metadata.get("precision").map(String::as_str), Some("fast"));
    assert_eq!(e.metadata.get("precision").map(String::as_str), Some("exact"));
    let err = rel_err(&f.weight, &e.weight);
    assert!(err < 1e-5, "fast vs exact head: {err:e}");
}

#[test]
fn class_lists_with_unicode_minus_or_huge_ranges_are_refused_not_panicked() {
    let f = Fixture::new(60);
    for item in [
        "\u{2212}1",
        "-9223372036854775808-9223372036854775807",
        "4,1\u{2013}3",
    ] {
        let out = f.fit("h.safetensors", &[&format!("--classes={item}")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "panicked on {item:?}: {err}");
        assert!(!err.contains("panicked"), "{item:?}: {err}");
        assert_one_line_error(&out, &["--classes", item.rsplit(',').next().unwrap()]);
        assert!(!f.path("h.safetensors").exists());
    }
}

/// Runs `headstart ARGS`, failing the test (not hanging) if it is still running after 20 s.
fn headstart_within(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running headstart");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} still running after 20 s; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn out_of_range_durations_are_usage_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs").display().to_string();
    let serve = |option: &str, value: &str| {
        headstart_within(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state",
            &state,
            "--dim",
            "3",
            &format!("{option}={value}"),
        ])
    };
    let cases = [
        ("--idle-timeout", "1e20", "too long"),
        ("--idle-timeout", "1e300", "too long"),
        ("--idle-timeout", "inf", "too long"),
        ("--idle-timeout", "NaN", "not a number"),
        ("--idle-timeout", "-1", "more than 0"),
        ("--idle-timeout", "0", "more than 0"),
        ("--idle-timeout", "1e-12", "rounds to 0"),
        ("--idle-timeout", "soon", "not a number"),
        ("--checkpoint-every", "1e19", "too long"),
        ("--checkpoint-every", "31536001", "too long"),
        ("--checkpoint-every", "0", "more than 0"),
    ];
    for (option, value, reason) in cases {
        let out = serve(option, value);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option}={value}: {err}");
        assert!(!err.contains("panicked"), "{option}={value}: {err}");
        assert!(
            err.contains(option) && err.contains(value) && err.contains(reason),
            "{option}={value}: {err}"
        );
        assert!(out.stdout.is_empty(), "{option}={value} started serving");
    }
    let fixture = Fixture::new(10);
    let (x, y) = (fixture.s("x.npy"), fixture.s("y.npy"));
    for value in ["1e20", "0", "-5", "NaN"] {
        let timeout = format!("--timeout={value}");
        for args in [
            vec![
                "push",
                "--connect",
                "127.0.0.1:9",
                "--features",
                &x,
                "--labels",
                &y,
                &timeout,
            ],
            vec!["sync", "--connect", "127.0.0.1:9", &timeout],
        ] {
            let out = headstart_within(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains("--timeout") && !err.contains("panicked"),
                "{args:?}: {err}"
            );
        }
    }
}

#[test]
fn fit_and_ingest_expand_to_random_features() {
    use headstart::expand::Expansion;
    use headstart::stats::Precision;
    let f = Fixture::new(700);
    let out = f.fit(
        "h.safetensors",
        &[
            "--expand",
            "40",
            "--expand-seed",
            "9",
            "--lambda",
            "0.01",
            "--batch",
            "300",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = read_head(&f.path("h.safetensors"), "").unwrap();
    let spec = Expansion::new(D, 40, 9).unwrap();
    assert_eq!((stored.dim, stored.info.expansion), (40, Some(spec)));
    let mut stats = Stats::expanded(spec, Precision::Exact);
    stats.update(&f.x, &f.y).unwrap();
    let opts = SolveOptions {
        lambda: 0.01.into(),
        ..Default::default()
    };
    let head = Solver::new().solve(&stats, &opts).unwrap();
    assert!(rel_err(&stored.weight, &head.weight) < F32_STORAGE_REL_TOL);
    assert!(rel_err(&stored.bias, &head.bias) < F32_STORAGE_REL_TOL);

    // ingest records the spec and refuses to extend a state with another one.
    let (x, y, s) = (f.s("x.npy"), f.s("y.npy"), f.s("s.hs"));
    let ingest = |extra: &[&str]| {
        let mut args = vec!["ingest", "--features", &x, "--labels", &y, "--state", &s];
        args.extend_from_slice(extra);
        headstart(&args)
    };
    assert!(ingest(&["--expand", "40", "--expand-seed", "9"]).status.success());
    let state = headstart::snapshot::read(&f.path("s.hs")).unwrap();
    assert_eq!(state.expansion(), Some(&spec));
    assert_one_line_error(
        &ingest(&["--expand", "40"]),
        &["s.hs", "--expand-seed 9", "--expand-seed 0"],
    );
    assert_one_line_error(&ingest(&[]), &["s.hs", "without --expand"]);
    assert_one_line_error(
        &f.fit("z.safetensors", &["--expand", "0"]),
        &["--expand", "feature count 0"],
    );
    assert!(!f.path("z.safetensors").exists());
}
