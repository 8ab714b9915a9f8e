//! The server: concurrent clients, limits, hostile bytes, SIGTERM and SIGKILL.
//!
//! In-process servers (`Server::start`) for protocol behaviour; the `headstart` binary for
//! signals and the command-line clients.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{F32_STORAGE_REL_TOL, Serve, labelled_data, rel_err};
use headstart::export::decode_head;
use headstart::net::protocol::{
    Dtype, ErrorCode, Reply, Request, encode_request, kind, read_frame, write_frame,
};
use headstart::net::{Address, Client, ClientError, Server, ServerConfig, SolveRequest};
use headstart::snapshot;
use headstart::solve::{SolveOptions, Solver};
use headstart::stats::{Batch, Stats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D: usize = 6;

fn server(dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut config = ServerConfig::new(dir.join("state.hs"));
    tweak(&mut config);
    Server::start(&"127.0.0.1:0".parse().unwrap(), Stats::new(D), config).unwrap()
}

fn batches(seed: u64, count: usize, rows: usize) -> Vec<Batch> {
    let (x, y) = labelled_data(seed, count * rows, D, &[2, 3, 5, 8]);
    x.chunks(rows * D)
        .zip(y.chunks(rows))
        .map(|(x, y)| Batch::new(x.iter().map(|&v| v as f32).collect::<Vec<f32>>(), y.to_vec()))
        .collect()
}

fn reference(batches: &[Batch]) -> Stats {
    let mut s = Stats::new(D);
    for b in batches {
        s.update_batch(b).unwrap();
    }
    s
}

/// The reply to raw bytes on a fresh connection, or `None` if the server closed it first.
fn raw_exchange(address: &Address, bytes: &[u8]) -> Option<Reply> {
    let Address::Tcp(a) = address else { unreachable!() };
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let raw = read_frame(&mut s, 1 << 20).ok()?;
    let reply = Reply::decode(raw.kind, &raw.body).unwrap();
    if matches!(reply, Reply::Error { fatal: true, .. }) {
        // A fatal error closes the connection: nothing follows it.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "bytes after a fatal error: {rest:?}");
    }
    Some(reply)
}

fn error_code(reply: Option<Reply>) -> ErrorCode {
    match reply {
        Some(Reply::Error {
            code, fatal: true, ..
        }) => code,
        other => panic!("expected a fatal error frame, got {other:?}"),
    }
}

fn hello(dim: u64, dtype: Dtype) -> Vec<u8> {
    encode_request(&Request::Hello {
        version: 1,
        dim,
        dtype,
    })
}

#[test]
fn concurrent_clients_feed_one_state_and_the_remote_head_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let address = server.address();
    let all: Vec<Vec<Batch>> = (0..4).map(|k| batches(10 + k, 25, 16)).collect();
    std::thread::scope(|s| {
        for mine in &all {
            let address = address.clone();
            s.spawn(move || {
                let mut c = Client::connect(&address).unwrap();
                c.hello(D, Dtype::F32).unwrap();
                for b in mine {
                    c.push(b).unwrap();
                }
            });
        }
    });
    let expected = reference(&all.concat());
    let mut c = Client::connect(&address).unwrap();
    let stats = c.stats().unwrap();
    assert_eq!(stats["samples"], 4 * 25 * 16);
    assert_eq!(stats["classes"]["5"], expected.class_count(5));
    let opts = SolveRequest {
        lambda: Some(0.01),
        classes: Some(vec![8, 2]),
        ..SolveRequest::default()
    };
    let bytes = c.solve(&opts).unwrap();
    let remote = decode_head(&bytes, "", Path::new("reply")).unwrap();
    let local = Solver::new().solve(&expected, &opts.options().unwrap()).unwrap();
    assert_eq!(remote.class_ids, vec![8, 2]);
    assert!(rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL);
    assert!(rel_err(&remote.bias, &local.bias) < F32_STORAGE_REL_TOL);
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
        "{err}"
    );
    assert!(err.to_string().contains("99"), "{err}");
    assert_eq!(c.sync().unwrap(), 1600);
    let on_disk = snapshot::read(&dir.path().join("state.hs")).unwrap();
    assert_eq!(on_disk.samples(), 1600);
    let final_state = server.shutdown().unwrap();
    assert_eq!(final_state.class_count(3), expected.class_count(3));
}

#[test]
fn hostile_bytes_get_error_frames_and_never_disturb_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| {
        c.limits.max_frame_bytes = 4096;
        c.limits.max_rows = 32;
    });
    let address = server.address();
    let good = batches(3, 10, 8);
    let mut client = Client::connect(&address).unwrap();
    client.hello(D, Dtype::F32).unwrap();
    for b in &good[..5] {
        client.push(b).unwrap();
    }

    let batch_frame = |rows: usize, value: f32| {
        let b = Batch::new(vec![value; rows * D], vec![1; rows]);
        let mut f = hello(D as u64, Dtype::F32);
        f.extend(encode_request(&Request::Batch { seq: 1, batch: b }));
        f
    };
    // Oversized length: refused before the body is read.
    assert_eq!(
        error_code(raw_exchange(&address, &u32::MAX.to_le_bytes())),
        ErrorCode::TooLarge
    );
    // Zero length, unknown kind, a BATCH before HELLO, wrong dimension, bad dtype.
    assert_eq!(
        error_code(raw_exchange(&address, &[0, 0, 0, 0])),
        ErrorCode::Malformed
    );
    assert_eq!(
        error_code(raw_exchange(&address, &[1, 0, 0, 0, 0x42])),
        ErrorCode::Malformed
    );
    let mut before_hello = Vec::new();
    write_frame(&mut before_hello, kind::BATCH, &[0; 12]).unwrap();
    assert_eq!(
        error_code(raw_exchange(&address, &before_hello)),
        ErrorCode::Session
    );
    assert_eq!(
        error_code(raw_exchange(&address, &hello(D as u64 + 1, Dtype::F32))),
        ErrorCode::Session
    );
    let mut bad_dtype = hello(D as u64, Dtype::F32);
    *bad_dtype.last_mut().unwrap() = 7;
    assert_eq!(
        error_code(raw_exchange(&address, &bad_dtype)),
        ErrorCode::Malformed
    );
    // A NaN, too many rows, a body one byte short (length fixed up), a truncated frame.
    let err = raw_exchange(&address, &batch_frame(2, f32::NAN));
    let Some(Reply::Welcome { .. }) = err else {
        // The WELCOME comes first; read the real reply on a dedicated connection below.
        panic!("expected WELCOME first, got {err:?}")
    };
    let mut c = RawClient::new(&address);
    c.send(&batch_frame(2, f32::NAN));
    assert!(matches!(c.reply(), Some(Reply::Welcome { .. })));
    match c.reply() {
        Some(Reply::Error {
            code: ErrorCode::BadBatch,
            fatal: true,
            message,
        }) => {
            assert!(message.contains("row 0, column 0"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let mut c = RawClient::new(&address);
    c.send(&batch_frame(33, 1.0));
    assert!(matches!(c.reply(), Some(Reply::Welcome { .. })));
    assert!(matches!(
        c.reply(),
        Some(Reply::Error {
            code: ErrorCode::TooManyRows,
            ..
        })
    ));
    let mut short = batch_frame(2, 1.0);
    let hello_len = hello(D as u64, Dtype::F32).len();
    short.pop();
    let body_len = (short.len() - hello_len - 4) as u32;
    short[hello_len..hello_len + 4].copy_from_slice(&body_len.to_le_bytes());
    let mut c = RawClient::new(&address);
    c.send(&short);
    assert!(matches!(c.reply(), Some(Reply::Welcome { .. })));
    assert!(matches!(
        c.reply(),
        Some(Reply::Error {
            code: ErrorCode::Malformed,
            ..
        })
    ));
    let whole = batch_frame(2, 1.0);
    let mut c = RawClient::new(&address);
    c.send(&whole[..whole.len() - 3]);
    c.close_write();
    assert!(matches!(c.reply(), Some(Reply::Welcome { .. })));
    assert!(matches!(
        c.reply(),
        Some(Reply::Error {
            code: ErrorCode::Malformed,
            ..
        }) | None
    ));
    // Random bytes, many times.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for _ in 0..200 {
        let len = rng.random_range(0..64);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = raw_exchange(&address, &junk);
    }

    // The good client's connection and the state are untouched; new clients are served.
    for b in &good[5..] {
        client.push(b).unwrap();
    }
    let expected = reference(&good);
    let opts = SolveRequest::default();
    let bytes = Client::connect(&address).unwrap().solve(&opts).unwrap();
    let remote = decode_head(&bytes, "", Path::new("reply")).unwrap();
    let local = Solver::new().solve(&expected, &SolveOptions::default()).unwrap();
    assert!(rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL);
    assert_eq!(server.shutdown().unwrap().samples(), expected.samples());
}

struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    fn new(address: &Address) -> Self {
        let Address::Tcp(a) = address else { unreachable!() };
        let stream = TcpStream::connect(a).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawClient { stream }
    }
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }
    fn close_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
    fn reply(&mut self) -> Option<Reply> {
        let raw = read_frame(&mut self.stream, 1 << 20).ok()?;
        Some(Reply::decode(raw.kind, &raw.body).unwrap())
    }
}

#[test]
fn idle_and_surplus_connections_are_closed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let idle_server = server(dir.path(), |c| {
        c.idle_timeout = Duration::from_millis(300);
        c.max_connections = 2;
    });
    let address = idle_server.address();
    let started = Instant::now();
    let mut idle = RawClient::new(&address);
    match idle.reply() {
        Some(Reply::Error {
            code: ErrorCode::IdleTimeout,
            message,
            ..
        }) => assert!(message.contains("idle"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
    idle_server.shutdown().unwrap();

    // Two connections held open; a third is refused with a reason. Each of the two has had a
    // reply, so the server counts both before the third arrives (no sleep), and the idle
    // timeout is far longer than any pause of a loaded machine.
    let server = server(dir.path(), |c| {
        c.idle_timeout = Duration::from_secs(120);
        c.max_connections = 2;
    });
    let address = server.address();
    let mut first = Client::connect(&address).unwrap();
    first.hello(D, Dtype::F64).unwrap();
    let mut second = RawClient::new(&address);
    second.send(&hello(D as u64, Dtype::F32));
    assert!(matches!(second.reply(), Some(Reply::Welcome { .. })));
    let mut third = RawClient::new(&address);
    assert!(matches!(
        third.reply(),
        Some(Reply::Error {
            code: ErrorCode::Unavailable,
            ..
        })
    ));
    server.shutdown().unwrap();
}

// ---------------------------------------------------------------- the binary

#[test]
fn the_command_line_clients_push_sync_and_solve_and_sigterm_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = labelled_data(21, 500, D, &[1, 4, 6]);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    headstart::ingest::npy::write_f32(&dir.path().join("x.npy"), &x32, 500, D).unwrap();
    headstart::ingest::npy::write_i64(&dir.path().join("y.npy"), &y).unwrap();
    let state = dir.path().join("s.hs");
    let mut serve = Serve::start(&state, D, &[]);
    let addr = serve.address.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_headstart"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    let (x_arg, y_arg) = (x_path.to_str().unwrap(), y_path.to_str().unwrap());
    let push = |extra: &[&str]| {
        let mut args = vec!["push", "--connect", &addr, "--features", x_arg, "--labels", y_arg];
        args.extend_from_slice(extra);
        run(&args)
    };
    let pushed = push(&["--batch", "64"]);
    assert!(pushed.contains("pushed 500 samples in 8 batches"), "{pushed}");
    assert!(run(&["sync", "--connect", &addr]).contains("holds 500 samples"));
    let head_path = dir.path().join("h.safetensors");
    run(&[
        "solve",
        "--connect",
        &addr,
        "--lambda",
        "0.01",
        "--out",
        head_path.to_str().unwrap(),
    ]);
    let mut expected = Stats::new(D);
    expected.update(&x32, &y).unwrap();
    let local = Solver::new()
        .solve(
            &expected,
            &SolveOptions {
                lambda: 0.01.into(),
                ..SolveOptions::default()
            },
        )
        .unwrap();
    let remote = headstart::export::read_head(&head_path, "").unwrap();
    assert!(rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL);
    // Push more without a sync, then SIGTERM: the final checkpoint holds them too.
    push(&["--begin-task"]);
    let status = serve.signal("-TERM");
    assert_eq!(status.code(), Some(0));
    let saved = snapshot::read(&serve.state).unwrap();
    assert_eq!(
        (saved.samples(), saved.task_samples(), saved.tasks_begun()),
        (1000, 500, 1)
    );
    // A restart continues from the file; solving the file offline gives the same head.
    let serve = Serve::start(&state, D, &[]);
    let mut c = Client::connect(&serve.address).unwrap();
    assert_eq!(c.hello(D, Dtype::F32).unwrap(), 1000);
}

/// Streams unique-class batches from several clients, kills the server with SIGKILL at random
/// moments, restarts it, and checks the state file: every batch acknowledged before the last
/// completed SYNC is there, any other batch is there whole or not at all.
#[test]
fn after_sigkill_the_state_holds_every_synced_batch_and_only_whole_batches() {
    const ROWS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut guaranteed: BTreeSet<i64> = BTreeSet::new();
    let mut sent_max: i64 = 0;
    let mut total_synced_rounds = 0;
    for round in 0..5 {
        let mut serve = Serve::start(&state, D, &["--checkpoint-every", "0.05"]);
        let acked = Arc::new(Mutex::new(BTreeSet::<i64>::new()));
        let synced = Arc::new(Mutex::new(BTreeSet::<i64>::new()));
        let next_id = Arc::new(Mutex::new(sent_max + 1));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|k| {
                let (address, acked, synced, next_id, stop) = (
                    serve.address.clone(),
                    acked.clone(),
                    synced.clone(),
                    next_id.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let Ok(mut c) = Client::connect(&address) else {
                        return;
                    };
                    if c.hello(D, Dtype::F32).is_err() {
                        return;
                    }
                    // Pushed ids in order; the first `c.acknowledged()` of them have an ACK.
                    let mut pending = std::collections::VecDeque::new();
                    let mut done = 0u64;
                    let mut note_acks = |c: &Client, pending: &mut std::collections::VecDeque<i64>| {
                        while done < c.acknowledged() {
                            acked.lock().unwrap().insert(pending.pop_front().unwrap());
                            done += 1;
                        }
                    };
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        n += 1;
                        if k == 0 && n % 5 == 0 {
                            // Everything acknowledged so far, on any client, must survive this sync.
                            let before: BTreeSet<i64> = acked.lock().unwrap().clone();
                            match c.sync() {
                                Ok(_) => synced.lock().unwrap().extend(before),
                                Err(_) => return,
                            }
                            note_acks(&c, &mut pending);
                            continue;
                        }
                        let id = {
                            let mut next = next_id.lock().unwrap();
                            *next += 1;
                            *next - 1
                        };
                        let batch = Batch::new(vec![id as f32; ROWS * D], vec![id; ROWS]);
                        pending.push_back(id);
                        match c.push(&batch) {
                            Ok(()) => note_acks(&c, &mut pending),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // Kill at a random moment after this round's first completed sync (not after a fixed
        // sleep, which a loaded machine could spend before any sync).
        let deadline = Instant::now() + Duration::from_secs(60);
        while synced.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "round {round}: no sync covered an acknowledged batch in 60 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        serve.signal("-KILL");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        sent_max = *next_id.lock().unwrap();
        let synced = synced.lock().unwrap().clone();
        if !synced.is_empty() {
            total_synced_rounds += 1;
        }
        guaranteed.extend(synced);

        let saved = snapshot::read(&state).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let counts: BTreeMap<i64, u64> = saved
            .classes()
            .into_iter()
            .map(|id| (id, saved.class_count(id)))
            .collect();
        for (&id, &count) in &counts {
            assert_eq!(
                count, ROWS as u64,
                "round {round}: class {id} holds part of a batch"
            );
            assert!(
                id >= 1 && id < sent_max,
                "round {round}: class {id} was never sent"
            );
            let sum = saved.class_sum(id, Default::default()).unwrap().1;
            assert!(
                sum.iter().all(|&v| v == (id * ROWS as i64) as f64),
                "round {round}: class {id}'s sums"
            );
        }
        for id in &guaranteed {
            assert!(
                counts.contains_key(id),
                "round {round}: batch {id} was synced but is missing"
            );
        }
        assert_eq!(saved.samples(), counts.len() as u64 * ROWS as u64);
    }
    assert_eq!(total_synced_rounds, 5, "every round kills after a sync");
    assert!(
        guaranteed.len() >= 10,
        "too few synced batches: {}",
        guaranteed.len()
    );
}

#[test]
fn a_window_of_batches_is_acknowledged_in_order_and_a_refusal_stops_it_exactly_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let address = server.address();
    let good = batches(40, 12, 9);
    let mut bad = good[7].clone();
    if let headstart::stats::Features::F32(v) = &mut bad.features {
        v[3 * D + 1] = f32::NAN;
    }

    // Every frame goes out before any reply is read: 6 batches, a STATS, 1 batch, a SOLVE,
    // the refused batch, then 4 batches that must never be applied.
    let mut c = RawClient::new(&address);
    let mut bytes = hello(D as u64, Dtype::F32);
    let mut seq = 0u64;
    let mut frame = |batch: &Batch, bytes: &mut Vec<u8>| {
        seq += 1;
        bytes.extend(encode_request(&Request::Batch {
            seq,
            batch: batch.clone(),
        }));
    };
    for b in &good[..6] {
        frame(b, &mut bytes);
    }
    bytes.extend(encode_request(&Request::Stats));
    frame(&good[6], &mut bytes);
    bytes.extend(encode_request(&Request::Solve("{}".into())));
    frame(&bad, &mut bytes);
    for b in &good[8..] {
        frame(b, &mut bytes);
    }
    c.send(&bytes);
    c.close_write();

    assert!(matches!(c.reply(), Some(Reply::Welcome { .. })));
    for s in 1..=6 {
        assert_eq!(c.reply(), Some(Reply::Ack(s)));
    }
    // STATS sent behind six unacknowledged batches counts all of them.
    let Some(Reply::Stats(json)) = c.reply() else {
        panic!("expected STATS")
    };
    let stats: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stats["samples"], 6 * 9);
    assert_eq!(c.reply(), Some(Reply::Ack(7)));
    // The SOLVE's head is the library's head of exactly the seven batches.
    let Some(Reply::Head(bytes)) = c.reply() else {
        panic!("expected HEAD")
    };
    let remote = decode_head(&bytes, "", Path::new("reply")).unwrap();
    let local = Solver::new()
        .solve(&reference(&good[..7]), &SolveOptions::default())
        .unwrap();
    assert!(rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL);
    // The NaN batch is refused, naming the row and column, and nothing follows.
    match c.reply() {
        Some(Reply::Error {
            code: ErrorCode::BadBatch,
            fatal: true,
            message,
        }) => assert!(
            message.contains("row 3") && message.contains("column 1"),
            "{message}"
        ),
        other => panic!("expected BadBatch, got {other:?}"),
    }
    assert_eq!(c.reply(), None);

    let mut check = Client::connect(&address).unwrap();
    assert_eq!(check.stats().unwrap()["samples"], 7 * 9);
    let state = server.shutdown().unwrap();
    let expected = reference(&good[..7]);
    assert_eq!(state.samples(), expected.samples());
    for id in expected.classes() {
        assert_eq!(state.class_count(id), expected.class_count(id), "class {id}");
    }
}

#[test]
fn the_client_window_keeps_every_batch_and_reports_a_refused_one_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let address = server.address();
    let good = batches(41, 30, 5);
    for window in [1, 3, 8, 64] {
        let mut c = Client::connect(&address).unwrap();
        c.set_window(window);
        c.hello(D, Dtype::F32).unwrap();
        for b in &good {
            c.push(b).unwrap();
        }
        c.flush().unwrap();
        assert_eq!(c.acknowledged(), good.len() as u64);
    }
    let mut c = Client::connect(&address).unwrap();
    assert_eq!(c.stats().unwrap()["samples"], 4 * 30 * 5);

    // A batch only the server can refuse: more rows than its limit. The batches behind it
    // in the window are never applied.
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let limited = server_with_rows(dir.path(), 5);
    let mut c = Client::connect(&limited.address()).unwrap();
    c.set_window(8);
    c.hello(D, Dtype::F32).unwrap();
    let big = batches(42, 1, 6).remove(0);
    let mut failed = None;
    for (i, b) in good[..4].iter().chain([&big]).chain(&good[4..8]).enumerate() {
        if let Err(e) = c.push(b) {
            failed = Some((i, e));
            break;
        }
    }
    let err = match failed {
        Some((_, e)) => e,
        None => c.flush().unwrap_err(),
    };
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
    let state = limited.shutdown().unwrap();
    assert_eq!(state.samples(), 4 * 5);
}

fn server_with_rows(dir: &Path, max_rows: usize) -> Server {
    server(dir, |c| c.limits.max_rows = max_rows)
}

// ---------------------------------------------------------------- hardening

/// A fake server on loopback: `serve(stream)` runs on the accepted connection, which stays
/// open until the test ends.
fn fake_server(serve: impl FnOnce(&mut TcpStream) + Send + 'static) -> Address {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string().parse().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        serve(&mut stream);
        std::thread::sleep(Duration::from_secs(120));
        drop(stream);
    });
    address
}

/// Runs `f` on a thread; fails the test if it has not returned within `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: the client hangs"))
}

#[test]
fn the_client_times_out_on_a_silent_server_and_names_it() {
    let address = fake_server(|_| {});
    let client = Client::connect(&address).unwrap();
    assert_eq!(
        client.timeout(),
        Some(Duration::from_secs(60)),
        "the default timeout"
    );
    drop(client);
    let address = fake_server(|_| {});
    let (result, elapsed) = within(Duration::from_secs(15), {
        let address = address.clone();
        move || {
            let mut client = Client::connect(&address).unwrap();
            client.set_timeout(Some(Duration::from_millis(300))).unwrap();
            let started = Instant::now();
            let result = client.hello(D, Dtype::F32).map_err(|e| (e.to_string(), e));
            (result, started.elapsed())
        }
    });
    let (message, error) = result.unwrap_err();
    assert!(matches!(error, ClientError::TimedOut { .. }), "{error:?}");
    assert!(
        message.contains(&address.to_string()) && message.contains("timed out") && message.contains("HELLO"),
        "{message}"
    );
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert!(matches!(
        Client::connect(&address)
            .unwrap()
            .set_timeout(Some(Duration::ZERO)),
        Err(ClientError::Usage(_))
    ));
}

#[test]
fn the_client_refuses_a_reply_announcing_2_gib_without_reading_it() {
    let address = fake_server(|s| {
        // A WELCOME frame header claiming 2 GiB, then nothing.
        s.write_all(&(1u32 << 31).to_le_bytes()).unwrap();
        s.write_all(&[kind::WELCOME]).unwrap();
    });
    let error = within(Duration::from_secs(15), {
        let address = address.clone();
        move || {
            let mut client = Client::connect(&address).unwrap();
            assert_eq!(client.max_reply_bytes(), 1 << 30);
            client.hello(D, Dtype::F32).unwrap_err()
        }
    });
    let message = error.to_string();
    assert!(
        matches!(
            error,
            ClientError::ReplyTooLarge {
                length: 2_147_483_648,
                limit: 1_073_741_824,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        message.contains(&address.to_string()) && message.contains("HELLO"),
        "{message}"
    );
    // A lower limit applies to ordinary replies too.
    let address = fake_server(|s| {
        s.write_all(&100u32.to_le_bytes()).unwrap();
    });
    let mut client = Client::connect(&address).unwrap();
    client.set_max_reply_bytes(64);
    assert!(matches!(
        client.hello(D, Dtype::F32),
        Err(ClientError::ReplyTooLarge {
            length: 100,
            limit: 64,
            ..
        })
    ));
}

fn samples_on(address: &Address) -> u64 {
    Client::connect(address).unwrap().stats().unwrap()["samples"]
        .as_u64()
        .unwrap()
}

#[test]
fn push_checks_the_whole_file_first_and_resumes_with_skip_rows() {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = labelled_data(31, N, D, &[1, 4, 6]);
    let clean: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut bad = clean.clone();
    bad[1234 * D + 2] = f32::NAN;
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    headstart::ingest::npy::write_f32(&x_path, &bad, N, D).unwrap();
    headstart::ingest::npy::write_i64(&y_path, &y).unwrap();
    let serve = Serve::start(&dir.path().join("s.hs"), D, &[]);
    let addr = serve.address.to_string();
    let push = |extra: &[&str]| {
        let mut args = vec![
            "push",
            "--connect",
            &addr,
            "--features",
            x_path.to_str().unwrap(),
            "--labels",
            y_path.to_str().unwrap(),
            "--batch",
            "256",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_headstart"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // By default nothing is sent: the server's count is unchanged, the message names the row.
    let (ok, err) = push(&[]);
    assert!(!ok);
    assert!(
        err.contains("row 1234, column 2") && err.contains("nothing was sent"),
        "{err}"
    );
    assert_eq!(samples_on(&serve.address), 0);
    // Without the check, the batches before the bad one are applied, and the error says how
    // far and how to resume.
    let (ok, err) = push(&["--no-prevalidate"]);
    assert!(!ok);
    assert!(
        err.contains("rows 0..1024 of") && err.contains("were acknowledged; resume with --skip-rows 1024"),
        "{err}"
    );
    assert!(err.contains("row 1234"), "{err}");
    assert_eq!(samples_on(&serve.address), 1024);
    // Fixed, the file resumes at row 1024: every row counted once.
    headstart::ingest::npy::write_f32(&x_path, &clean, N, D).unwrap();
    let (ok, err) = push(&["--skip-rows", "1024"]);
    assert!(ok, "{err}");
    let mut expected = Stats::new(D);
    expected.update(&clean, &y).unwrap();
    let mut client = Client::connect(&serve.address).unwrap();
    client.sync().unwrap();
    let saved = snapshot::read(&serve.state).unwrap();
    assert_eq!(saved.samples(), N as u64);
    for class in expected.classes() {
        assert_eq!(
            saved.class_count(class),
            expected.class_count(class),
            "class {class}"
        );
    }
    let (scope, tol) = (headstart::solve::Scope::All, common::SUM_ORDER_REL_TOL);
    assert!(rel_err(&saved.sum(scope).1, &expected.sum(scope).1) < tol);
    // Past the end is refused before connecting.
    let (ok, err) = push(&["--skip-rows", "3001"]);
    assert!(
        !ok && err.contains("--skip-rows 3001") && err.contains("3000 rows"),
        "{err}"
    );
    assert_eq!(samples_on(&serve.address), N as u64);
}

#[test]
fn the_shutdown_line_goes_to_stderr_and_stdout_holds_only_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .args(["--dim", &D.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.starts_with("listening on "), "{first:?}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(rest, "", "stdout after the first line");
    assert!(err.contains("signal 15: checkpointed 0 samples to"), "{err}");
}
