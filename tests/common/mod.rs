//! Shared test helpers: seeded data, tolerances, and an independent dense solver.
#![allow(dead_code, clippy::needless_range_loop)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use headstart::export::decode_head;
use headstart::net::protocol::{ErrorCode, Reply};
use headstart::net::{Address, Client, ClientError, SolveRequest};
use headstart::solve::{SolveOptions, Solver};
use headstart::stats::{Batch, Stats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub mod crash;
pub mod proxy;

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

/// `count` f32 batches of `rows` rows each from [`labelled_data`] (classes 2, 3, 5 and 8).
pub fn labelled_batches(seed: u64, count: usize, rows: usize, d: usize) -> Vec<Batch> {
    let (x, y) = labelled_data(seed, count * rows, d, &[2, 3, 5, 8]);
    x.chunks(rows * d)
        .zip(y.chunks(rows))
        .map(|(x, y)| Batch::new(x.iter().map(|&v| v as f32).collect::<Vec<f32>>(), y.to_vec()))
        .collect()
}

/// The library's statistics of `batches` of dimension `d`.
pub fn stats_of(d: usize, batches: &[Batch]) -> Stats {
    let mut s = Stats::new(d);
    for b in batches {
        s.update_batch(b).unwrap();
    }
    s
}

/// Runs `f` on a thread; fails the test if it has not returned within `limit`.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: the client hangs"))
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

/// Checks an admin client `c` on a server fed the batches of `expected`: its STATS agree, its
/// head of classes 8 and 2 (lambda 0.01) matches the library's, a solve error (class 99) is
/// reported and leaves the connection usable, and a SYNC then reports every sample. `what`
/// names the case in failure messages.
pub fn check_remote_solve(c: &mut Client, expected: &Stats, what: &str) {
    let stats = c.stats().unwrap();
    assert_eq!(stats["samples"], expected.samples(), "{what}");
    assert_eq!(stats["classes"]["5"], expected.class_count(5), "{what}");
    let opts = SolveRequest {
        lambda: Some(0.01),
        classes: Some(vec![8, 2]),
        ..SolveRequest::default()
    };
    let bytes = c.solve(&opts).unwrap();
    let remote = decode_head(&bytes, "", Path::new("reply")).unwrap();
    let local = Solver::new().solve(expected, &opts.options().unwrap()).unwrap();
    assert_eq!(remote.class_ids, vec![8, 2], "{what}");
    assert!(
        rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL,
        "{what}"
    );
    assert!(rel_err(&remote.bias, &local.bias) < F32_STORAGE_REL_TOL, "{what}");
    // A solve error is reported and the connection stays usable.
    let err = c
        .solve(&SolveRequest {
            classes: Some(vec![99]),
            ..SolveRequest::default()
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::Solve,
                fatal: false,
                ..
            }
        ),
        "{what}: {err}"
    );
    assert!(err.to_string().contains("99"), "{what}: {err}");
    assert_eq!(c.sync().unwrap(), expected.samples(), "{what}");
}

/// Reads, with `reply`, what a raw connection gets for a STATS pipelined behind batches of
/// `before` samples, the next batch and a SOLVE `{}`: STATS counting every batch sent before
/// it (acknowledged or not), ACK `seq`, and the library's head of `expected`.
pub fn expect_stats_ack_head(
    mut reply: impl FnMut() -> Option<Reply>,
    before: u64,
    seq: u64,
    expected: &Stats,
) {
    let Some(Reply::Stats(json)) = reply() else {
        panic!("expected STATS")
    };
    let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stats["samples"], before);
    assert_eq!(reply(), Some(Reply::Ack(seq)));
    // The SOLVE's head is the library's head of exactly the batches before it.
    let Some(Reply::Head(head)) = reply() else {
        panic!("expected HEAD")
    };
    let remote = decode_head(&head, "", Path::new("reply")).unwrap();
    let local = Solver::new().solve(expected, &SolveOptions::default()).unwrap();
    assert!(rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL);
}

/// Pushes `good[..4]`, then `big` (a batch only the server refuses: too many rows), then
/// `good[4..8]` through `c`'s window, and checks that the push or the final flush fails with
/// a fatal TooManyRows and that exactly the four batches before `big` were acknowledged.
pub fn expect_window_stops_at_refused(c: &mut Client, good: &[Batch], big: &Batch) {
    let mut failed = None;
    for b in good[..4].iter().chain([big]).chain(&good[4..8]) {
        if let Err(e) = c.push(b) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.unwrap_or_else(|| c.flush().unwrap_err());
    assert!(
        matches!(
            &err,
            ClientError::Server {
                code: ErrorCode::TooManyRows,
                fatal: true,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(c.acknowledged(), 4, "the refused batch is the fifth pushed");
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
        let (state_arg, dim_arg) = (state.to_str().unwrap(), dim.to_string());
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--state", state_arg];
        args.extend(["--dim", &dim_arg, "--quiet"]);
        args.extend(extra);
        let (child, line) = spawn_first_line(&args, Stdio::inherit());
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
        send_signal(&self.child, signal);
        self.child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `headstart` program with `args`, stdout piped and stderr to `stderr`, and reads
/// the first line of its stdout (for `serve`: `listening on ADDRESS …`).
pub fn spawn_first_line(args: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// Sends `signal` (e.g. `-TERM`) to `child` with kill(1); does not wait.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {}", child.id());
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
