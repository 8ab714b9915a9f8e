//! Faults: a disk that refuses the state file (a file-size limit, `RLIMIT_FSIZE`, which needs
//! no root).
//!
//! `headstart serve` runs under `ulimit -S -f` (bash sets the soft `RLIMIT_FSIZE`, which
//! `prlimit` can lift again without root); `headstart` turns the
//! SIGXFSZ that would kill it into EFBIG. Once the state outgrows the limit, SYNC gets a
//! durability error naming the file and the cause, the previous state file stays intact and
//! loadable, the server keeps serving from memory, and after `prlimit` lifts the limit its
//! retry writes everything it acknowledged.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{rel_err, stats_of};
use headstart::net::protocol::{Dtype, ErrorCode};
use headstart::net::{Address, Client, ClientError};
use headstart::snapshot;
use headstart::stats::{Batch, Scope, Stats};

const D: usize = 32;
/// Relative agreement of the server's Gram matrix with the library's over the same batches:
/// both sum the same f64 products, in blocks that may differ.
const SAME_BATCHES_REL_TOL: f64 = 1e-12;

/// `rows` rows of dimension [`D`], labelled round-robin from `classes` classes starting at
/// `first`.
fn batch(seed: u64, rows: usize, first: i64, classes: i64) -> Batch {
    let x: Vec<f32> = (0..rows * D)
        .map(|i| (((i as u64 + 1) * (seed * 2 + 1)) % 1009) as f32 / 1009.0 - 0.5)
        .collect();
    let y: Vec<i64> = (0..rows as i64).map(|i| first + i % classes).collect();
    Batch::new(x, y)
}

/// `serve` under a file-size limit of `kib` KiB, its stderr in `log`; returns the child and
/// its address.
fn serve_limited(state: &Path, log: &Path, kib: u64) -> (Child, Address) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -S -f {kib} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_headstart"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dim",
            &D.to_string(),
            "--quiet",
        ])
        .args(["--checkpoint-retry", "0.2", "--state"])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
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
    (child, address)
}

fn assert_same_stats(actual: &Stats, expected: &Stats, what: &str) {
    assert_eq!(actual.samples(), expected.samples(), "{what}");
    assert_eq!(actual.classes(), expected.classes(), "{what}");
    let (a, e) = (actual.gram(Scope::All), expected.gram(Scope::All));
    let flat = |m: &faer::Mat<f64>| -> Vec<f64> {
        (0..D)
            .flat_map(|i| (0..D).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)])
            .collect()
    };
    let err = rel_err(&flat(&a), &flat(&e));
    assert!(err <= SAME_BATCHES_REL_TOL, "{what}: Gram differs by {err:e}");
    for id in expected.classes() {
        let (_, sum) = actual.class_sum(id, Scope::All).unwrap();
        let (_, want) = expected.class_sum(id, Scope::All).unwrap();
        assert!(rel_err(&sum, &want) <= SAME_BATCHES_REL_TOL, "{what}: class {id}");
    }
}

/// The state-file folder holds only the state file (a failed write leaves no temporary).
fn only_the_state_file(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "serve.log")
        .collect();
    assert_eq!(names, ["state.hs"], "{names:?}");
}

#[test]
fn a_full_disk_keeps_the_old_state_file_reports_to_sync_and_is_retried_until_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (state, log) = (dir.path().join("state.hs"), dir.path().join("serve.log"));
    // 64 KiB: an empty state of dimension 32 (8 KiB of Gram) fits; 400 classes (100 KiB of
    // class sums) do not.
    let (mut child, address) = serve_limited(&state, &log, 64);
    let mut c = Client::connect(&address).unwrap();
    c.open(D, Dtype::F32).unwrap();

    let small = batch(1, 300, 0, 4);
    c.push(&small).unwrap();
    assert_eq!(c.sync().unwrap(), 300);
    let durable = std::fs::read(&state).unwrap();
    assert_same_stats(
        &snapshot::read(&state).unwrap(),
        &stats_of(D, std::slice::from_ref(&small)),
        "first sync",
    );

    // Past the limit: SYNC fails, naming the file and the cause; the old file stays.
    let wide = batch(2, 800, 100, 400);
    c.push(&wide).unwrap();
    let err = c.sync().unwrap_err();
    let ClientError::Server {
        code, fatal, message, ..
    } = &err
    else {
        panic!("expected a server error, got {err}")
    };
    assert_eq!((*code, *fatal), (ErrorCode::Durability, false), "{err}");
    assert!(message.contains(&state.display().to_string()), "{message}");
    assert!(message.contains("File too large"), "{message}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        durable,
        "the durable state file changed"
    );
    assert_eq!(snapshot::read(&state).unwrap().samples(), 300);
    only_the_state_file(dir.path());

    // The server keeps serving from memory: pushes, STATS and more failed SYNCs.
    let more = batch(3, 200, 0, 4);
    c.push(&more).unwrap();
    assert_eq!(c.stats().unwrap()["samples"], 1300);
    assert!(c.sync().is_err());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        std::fs::read(&state).unwrap(),
        durable,
        "a retry under the limit changed the file"
    );
    only_the_state_file(dir.path());

    // Lift the limit: the retry (backoff from 0.2 s) writes everything acknowledged.
    let lifted = Command::new("prlimit")
        .args(["--pid", &child.id().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(lifted.success(), "prlimit failed");
    let all = stats_of(D, &[small, wide, more]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot::read(&state).unwrap().samples() != 1300 {
        assert!(Instant::now() < deadline, "no retry wrote the state within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_same_stats(&snapshot::read(&state).unwrap(), &all, "after the retry");
    assert_eq!(c.sync().unwrap(), 1300);
    only_the_state_file(dir.path());

    drop(c);
    common::send_signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("checkpoint failed") && log.contains("retrying in"),
        "{log}"
    );
    assert!(
        log.contains("checkpoint written after failures: 1300 samples"),
        "{log}"
    );
}

#[test]
fn a_shutdown_on_a_full_disk_fails_loudly_and_leaves_the_last_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let (state, log) = (dir.path().join("state.hs"), dir.path().join("serve.log"));
    let (mut child, address) = serve_limited(&state, &log, 64);
    let mut c = Client::connect(&address).unwrap();
    c.open(D, Dtype::F32).unwrap();
    let small = batch(4, 100, 0, 3);
    c.push(&small).unwrap();
    assert_eq!(c.sync().unwrap(), 100);
    let durable = std::fs::read(&state).unwrap();
    c.push(&batch(5, 800, 100, 400)).unwrap();
    c.flush().unwrap();
    drop(c);

    common::send_signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(!status.success(), "a shutdown whose checkpoint failed exited 0");
    let log = std::fs::read_to_string(&log).unwrap();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(&state.display().to_string()),
        "{log}"
    );
    assert!(last.contains("File too large"), "{log}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        durable,
        "the durable state file changed"
    );
    assert_same_stats(
        &snapshot::read(&state).unwrap(),
        &stats_of(D, &[small]),
        "after the failed shutdown",
    );
    only_the_state_file(dir.path());
}
