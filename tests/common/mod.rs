//! Shared test helpers: seeded data, tolerances, and an independent dense solver.
#![allow(dead_code, clippy::needless_range_loop)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use headstart::net::Address;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Relative tolerance for f64 solves against the brute-force reference.
pub const SOLVE_REL_TOL: f64 = 1e-9;
/// Relative tolerance for heads stored as f32 against the f64 solve (f32 rounding is 6e-8).
pub const F32_STORAGE_REL_TOL: f64 = 1e-6;
/// Relative tolerance for states that differ only in the order of f64 additions.
pub const SUM_ORDER_REL_TOL: f64 = 1e-12;

/// `max |a − e| / max |e|` (or the absolute error when `e` is all zero).
pub fn rel_err(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
    if scale == 0.0 { diff } else { diff / scale }
}

/// Seeded labelled data: `n` rows of `d` features around per-class centres, labels drawn
/// from `classes` (not contiguous). Rows are f64; callers narrow to f32 as needed.
pub fn labelled_data(seed: u64, n: usize, d: usize, classes: &[i64]) -> (Vec<f64>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f64>> = classes
        .iter()
        .map(|_| (0..d).map(|_| rng.random_range(-2.0..2.0)).collect())
        .collect();
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let k = rng.random_range(0..classes.len());
        y.push(classes[k]);
        for j in 0..d {
            x.push(centres[k][j] + rng.random_range(-1.0..1.0));
        }
    }
    (x, y)
}

/// Solves `a · x = b` (a: n × n, b: n × m, both row-major `Vec<Vec<_>>`) by Gaussian
/// elimination with partial pivoting: independent of faer and of Cholesky.
pub fn gauss_solve(mut a: Vec<Vec<f64>>, mut b: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        b.swap(col, pivot);
        assert!(a[col][col].abs() > 1e-300, "reference system is singular");
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            if f == 0.0 {
                continue;
            }
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            for k in 0..b[row].len() {
                b[row][k] -= f * b[col][k];
            }
        }
    }
    let m = b[0].len();
    let mut x = vec![vec![0.0; m]; n];
    for row in (0..n).rev() {
        for k in 0..m {
            let mut v = b[row][k];
            for j in row + 1..n {
                v -= a[row][j] * x[j][k];
            }
            x[row][k] = v / a[row][row];
        }
    }
    x
}

/// The design matrix's rows as slices.
pub fn rows(x: &[f64], d: usize) -> Vec<&[f64]> {
    x.chunks_exact(d).collect()
}

/// A `headstart serve` process on a free loopback port, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub address: Address,
    pub state: PathBuf,
}

impl Serve {
    /// Starts `serve --listen 127.0.0.1:0 --state STATE --dim DIM --quiet EXTRA…` and reads
    /// the address from its first line.
    pub fn start(state: &Path, dim: usize, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_headstart"))
            .args(["serve", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .args(["--dim", &dim.to_string(), "--quiet"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Serve {
            child,
            address,
            state: state.to_path_buf(),
        }
    }
    /// Sends `signal` (e.g. `-TERM`) with kill(1) and waits for the exit.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `headstart` program with `args`.
pub fn headstart(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(args)
        .output()
        .expect("running headstart")
}

/// Runs `headstart`, expects success, and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = headstart(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `headstart`, expects failure, and returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = headstart(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
