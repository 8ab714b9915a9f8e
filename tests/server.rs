//! The server: concurrent clients, limits, hostile bytes, SIGTERM and SIGKILL.
//!
//! In-process servers (`Server::start`) for protocol behaviour; the `headstart` binary for
//! signals and the command-line clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::crash::{Crash, crash_rounds};
use common::{
    F32_STORAGE_REL_TOL, Serve, check_remote_solve, expect_stats_ack_head, expect_window_stops_at_refused,
    labelled_data, rel_err, within,
};
use headstart::export::decode_head;
use headstart::net::auth::Role;
use headstart::net::protocol::{
    Dtype, ErrorCode, PROTOCOL_VERSION, Reply, Request, Secret, encode_request, kind, read_frame, write_frame,
};
use headstart::net::{Address, Client, ClientError, ClientOptions, Server, ServerConfig, SolveRequest};
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
    common::labelled_batches(seed, count, rows, D)
}

fn reference(batches: &[Batch]) -> Stats {
    common::stats_of(D, batches)
}

/// The first reply to raw bytes on a fresh connection that is not one of the handshake's
/// (WELCOME, READY, OPENED, which must come in that order), or `None` if the server closed
/// the connection first.
fn raw_exchange(address: &Address, bytes: &[u8]) -> Option<Reply> {
    let mut c = RawClient::new(address);
    c.send(bytes);
    c.close_write();
    let reply = c.after_handshake()?;
    if matches!(reply, Reply::Error { fatal: true, .. }) {
        // A fatal error closes the connection: nothing follows it.
        let mut rest = Vec::new();
        let _ = c.stream.read_to_end(&mut rest);
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

/// A fatal error's code and message.
fn fatal_error(reply: Option<Reply>) -> (ErrorCode, String) {
    match reply {
        Some(Reply::Error {
            code,
            fatal: true,
            message,
        }) => (code, message),
        other => panic!("expected a fatal error frame, got {other:?}"),
    }
}

/// HELLO (this build's version) and AUTH without a token: the start of every connection to a
/// server without tokens.
fn hello_auth() -> Vec<u8> {
    let mut bytes = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    bytes.extend(encode_request(&Request::Auth(Secret::default())));
    bytes
}

/// HELLO, AUTH without a token and OPEN: what a raw client sends before its batches.
fn session(dim: u64, dtype: Dtype) -> Vec<u8> {
    let mut bytes = hello_auth();
    bytes.extend(encode_request(&Request::Open { dim, dtype }));
    bytes
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
                c.open(D, Dtype::F32).unwrap();
                for b in mine {
                    c.push(b).unwrap();
                }
            });
        }
    });
    let expected = reference(&all.concat());
    let mut c = Client::connect(&address).unwrap();
    assert_eq!(expected.samples(), 4 * 25 * 16);
    check_remote_solve(&mut c, &expected, "plaintext");
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
    client.open(D, Dtype::F32).unwrap();
    for b in &good[..5] {
        client.push(b).unwrap();
    }

    let batch_frame = |rows: usize, value: f32| {
        let b = Batch::new(vec![value; rows * D], vec![1; rows]);
        let mut f = session(D as u64, Dtype::F32);
        f.extend(encode_request(&Request::Batch { seq: 1, batch: b }));
        f
    };
    // Oversized length: refused before the body is read.
    assert_eq!(
        error_code(raw_exchange(&address, &u32::MAX.to_le_bytes())),
        ErrorCode::TooLarge
    );
    // Zero length, unknown kind, a BATCH as the first frame, a BATCH before OPEN, wrong
    // dimension, bad dtype.
    assert_eq!(
        error_code(raw_exchange(&address, &[0, 0, 0, 0])),
        ErrorCode::Malformed
    );
    assert_eq!(
        error_code(raw_exchange(&address, &[1, 0, 0, 0, 0x42])),
        ErrorCode::Malformed
    );
    let mut batch_first = Vec::new();
    write_frame(&mut batch_first, kind::BATCH, &[0; 12]).unwrap();
    assert_eq!(
        error_code(raw_exchange(&address, &batch_first)),
        ErrorCode::Session
    );
    let mut before_open = hello_auth();
    before_open.extend(&batch_first);
    let (code, message) = fatal_error(raw_exchange(&address, &before_open));
    assert_eq!(code, ErrorCode::Session, "{message}");
    assert!(message.contains("before OPEN"), "{message}");
    let (code, message) = fatal_error(raw_exchange(&address, &session(D as u64 + 1, Dtype::F32)));
    assert_eq!(code, ErrorCode::Session, "{message}");
    assert!(
        message.contains(&format!("dimension {D}")) && message.contains(&(D + 1).to_string()),
        "{message}"
    );
    let mut bad_dtype = session(D as u64, Dtype::F32);
    *bad_dtype.last_mut().unwrap() = 7;
    assert_eq!(
        error_code(raw_exchange(&address, &bad_dtype)),
        ErrorCode::Malformed
    );
    // A NaN, too many rows, a body one byte short (length fixed up), a truncated frame: each
    // after a complete handshake.
    match raw_exchange(&address, &batch_frame(2, f32::NAN)) {
        Some(Reply::Error {
            code: ErrorCode::BadBatch,
            fatal: true,
            message,
        }) => assert!(message.contains("row 0, column 0"), "{message}"),
        other => panic!("{other:?}"),
    }
    let mut c = RawClient::new(&address);
    c.send(&batch_frame(33, 1.0));
    c.expect_handshake();
    assert!(matches!(
        c.reply(),
        Some(Reply::Error {
            code: ErrorCode::TooManyRows,
            ..
        })
    ));
    let mut short = batch_frame(2, 1.0);
    let session_len = session(D as u64, Dtype::F32).len();
    short.pop();
    let body_len = (short.len() - session_len - 4) as u32;
    short[session_len..session_len + 4].copy_from_slice(&body_len.to_le_bytes());
    let mut c = RawClient::new(&address);
    c.send(&short);
    c.expect_handshake();
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
    c.expect_handshake();
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
    /// Reads the replies to HELLO, AUTH and OPEN (`session`) from a server without tokens;
    /// returns the samples READY and OPENED report.
    fn expect_handshake(&mut self) -> (u64, u64) {
        assert_eq!(
            self.reply(),
            Some(Reply::Welcome {
                version: PROTOCOL_VERSION,
                token_required: false
            })
        );
        let ready = match self.reply() {
            Some(Reply::Ready {
                role: Role::Admin,
                dim,
                samples,
            }) if dim == D as u64 => samples,
            other => panic!("expected READY (admin, dimension {D}), got {other:?}"),
        };
        let Some(Reply::Opened { samples: opened }) = self.reply() else {
            panic!("expected OPENED")
        };
        assert!(opened >= ready, "{opened} < {ready}");
        (ready, opened)
    }
    /// The first reply that is not the handshake's WELCOME, READY or OPENED (which must come
    /// in that order, each at most once), or `None` at the end of the stream.
    fn after_handshake(&mut self) -> Option<Reply> {
        let mut step = 0;
        loop {
            let reply = self.reply()?;
            match (step, &reply) {
                (0, Reply::Welcome { version, .. }) => assert_eq!(*version, PROTOCOL_VERSION),
                (1, Reply::Ready { role, dim, .. }) => {
                    assert_eq!((*role, *dim), (Role::Admin, D as u64))
                }
                (2, Reply::Opened { .. }) => {}
                _ => return Some(reply),
            }
            step += 1;
        }
    }
}

/// Version 2 begins every connection with HELLO and AUTH: any other first frame, and a
/// version 1 HELLO (which carried the dimension and dtype), are refused with a reason.
#[test]
fn the_handshake_comes_first_and_an_older_client_is_told_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let address = server.address();
    let mut pushed = Client::connect(&address).unwrap();
    pushed.open(D, Dtype::F32).unwrap();
    for b in &batches(5, 3, 4) {
        pushed.push(b).unwrap();
    }
    pushed.flush().unwrap();

    // A version 1 HELLO: u32 version, u64 dimension, u8 dtype (13 bytes), then a batch.
    let mut v1 = Vec::new();
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend((D as u64).to_le_bytes());
    body.push(1);
    assert_eq!(body.len(), 13);
    write_frame(&mut v1, kind::HELLO, &body).unwrap();
    v1.extend(encode_request(&Request::Batch {
        seq: 1,
        batch: Batch::new(vec![1.0f32; D], vec![1]),
    }));
    let (code, message) = fatal_error(raw_exchange(&address, &v1));
    assert_eq!(code, ErrorCode::Session, "{message}");
    assert!(
        message.contains("version 1") && message.contains(&format!("speaks {PROTOCOL_VERSION}")),
        "{message}"
    );
    // A HELLO of a later version, with a body of any length.
    let mut later = Vec::new();
    write_frame(&mut later, kind::HELLO, &7u32.to_le_bytes()).unwrap();
    let (code, message) = fatal_error(raw_exchange(&address, &later));
    assert_eq!(code, ErrorCode::Session, "{message}");
    assert!(
        message.contains("version 7") && message.contains("2"),
        "{message}"
    );

    // Any request but HELLO as the first frame, each followed by a batch that must not count.
    for first in [
        Request::Solve("{}".into()),
        Request::Stats,
        Request::Sync,
        Request::BeginTask,
        Request::Open {
            dim: D as u64,
            dtype: Dtype::F32,
        },
        Request::Auth(Secret::default()),
    ] {
        let mut bytes = encode_request(&first);
        bytes.extend(session(D as u64, Dtype::F32));
        let (code, message) = fatal_error(raw_exchange(&address, &bytes));
        assert_eq!(code, ErrorCode::Session, "{first:?}: {message}");
        assert!(
            message.contains("first frame must be HELLO"),
            "{first:?}: {message}"
        );
    }
    // AUTH must follow HELLO; a second HELLO, AUTH or OPEN is refused.
    let mut hello_open = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    hello_open.extend(encode_request(&Request::Open {
        dim: D as u64,
        dtype: Dtype::F32,
    }));
    let (code, message) = fatal_error(raw_exchange(&address, &hello_open));
    assert_eq!(code, ErrorCode::Session, "{message}");
    assert!(message.contains("AUTH must follow HELLO"), "{message}");
    for again in [hello_auth(), encode_request(&Request::Auth(Secret::default()))] {
        let mut bytes = hello_auth();
        bytes.extend(again);
        assert_eq!(error_code(raw_exchange(&address, &bytes)), ErrorCode::Session);
    }
    let mut twice = session(D as u64, Dtype::F32);
    twice.extend(encode_request(&Request::Open {
        dim: D as u64,
        dtype: Dtype::F32,
    }));
    let (code, message) = fatal_error(raw_exchange(&address, &twice));
    assert_eq!(code, ErrorCode::Session, "{message}");
    assert!(message.contains("second OPEN"), "{message}");

    // Nothing was applied; the pushing client is still served.
    let mut admin = Client::connect(&address).unwrap();
    assert_eq!(admin.role(), Role::Admin, "a server without tokens grants admin");
    assert_eq!((admin.server_dim(), admin.samples_at_connect()), (D, 12));
    assert_eq!(admin.stats().unwrap()["samples"], 12);
    pushed.push(&batches(6, 1, 4)[0]).unwrap();
    pushed.flush().unwrap();
    assert_eq!(server.shutdown().unwrap().samples(), 16);
}

#[test]
fn idle_and_surplus_connections_are_closed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let idle_server = server(dir.path(), |c| {
        c.idle_timeout = Duration::from_millis(300);
        c.max_connections = 2;
    });
    let address = idle_server.address();
    // Silent after the handshake, and after OPEN (silent from the start: the test below).
    for (sent, replies) in [(hello_auth(), 2), (session(D as u64, Dtype::F32), 3)] {
        let started = Instant::now();
        let mut idle = RawClient::new(&address);
        idle.send(&sent);
        for _ in 0..replies {
            assert!(matches!(
                idle.reply(),
                Some(Reply::Welcome { .. } | Reply::Ready { .. } | Reply::Opened { .. })
            ));
        }
        match idle.reply() {
            Some(Reply::Error {
                code: ErrorCode::IdleTimeout,
                message,
                ..
            }) => assert!(message.contains("idle"), "{message}"),
            other => panic!("after {replies} replies: {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
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
    first.open(D, Dtype::F64).unwrap();
    let mut second = RawClient::new(&address);
    second.send(&session(D as u64, Dtype::F32));
    assert_eq!(second.expect_handshake(), (0, 0));
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

/// A connection that sends nothing at all is told why it is closed, like one that falls
/// silent later (the server waits for its first byte to tell TLS from plaintext).
#[test]
fn a_connection_silent_from_the_start_is_told_it_was_idle() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |c| c.idle_timeout = Duration::from_millis(300));
    let started = Instant::now();
    let mut idle = RawClient::new(&server.address());
    match idle.reply() {
        Some(Reply::Error {
            code: ErrorCode::IdleTimeout,
            message,
            ..
        }) => assert!(message.contains("idle"), "{message}"),
        other => panic!("expected an IdleTimeout error, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));
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
    assert_eq!(c.samples_at_connect(), 1000);
    assert_eq!(c.open(D, Dtype::F32).unwrap(), 1000);
}

/// Streams unique-class batches from several clients, kills the server with SIGKILL at random
/// moments, restarts it, and checks the state file: every batch acknowledged before the last
/// completed SYNC is there, any other batch is there whole or not at all
/// ([`common::crash::crash_rounds`]).
#[test]
fn after_sigkill_the_state_holds_every_synced_batch_and_only_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let crashed = crash_rounds(
        &Crash {
            state: &state,
            dim: D,
            serve_args: &["--checkpoint-every", "0.05"],
            rounds: 5,
            seed: 2024,
            kill_within_ms: 300,
        },
        |_| ClientOptions::default(),
    );
    let total_synced_rounds = crashed.synced_per_round.iter().filter(|&&n| n > 0).count();
    assert_eq!(total_synced_rounds, 5, "every round kills after a sync");
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
    let mut bytes = session(D as u64, Dtype::F32);
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

    assert_eq!(c.expect_handshake(), (0, 0));
    for s in 1..=6 {
        assert_eq!(c.reply(), Some(Reply::Ack(s)));
    }
    // STATS sent behind six unacknowledged batches counts all of them; the SOLVE's head is
    // the library's head of exactly the seven batches.
    expect_stats_ack_head(|| c.reply(), 6 * 9, 7, &reference(&good[..7]));
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
        c.open(D, Dtype::F32).unwrap();
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
    c.open(D, Dtype::F32).unwrap();
    let big = batches(42, 1, 6).remove(0);
    expect_window_stops_at_refused(&mut c, &good, &big);
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

/// Answers HELLO and AUTH as a server without tokens would.
fn fake_handshake(s: &mut TcpStream) {
    let reply = |s: &mut TcpStream, reply: Reply| {
        let (kind, body) = reply.encode();
        write_frame(s, kind, &body).unwrap();
    };
    assert_eq!(read_frame(s, 1 << 20).unwrap().kind, kind::HELLO);
    reply(
        s,
        Reply::Welcome {
            version: PROTOCOL_VERSION,
            token_required: false,
        },
    );
    assert_eq!(read_frame(s, 1 << 20).unwrap().kind, kind::AUTH);
    reply(
        s,
        Reply::Ready {
            role: Role::Admin,
            dim: D as u64,
            samples: 0,
        },
    );
}

#[test]
fn the_client_times_out_on_a_silent_server_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), |_| {});
    let client = Client::connect(&server.address()).unwrap();
    assert_eq!(
        client.timeout(),
        Some(Duration::from_secs(60)),
        "the default timeout"
    );
    drop(client);
    assert!(matches!(
        Client::connect(&server.address())
            .unwrap()
            .set_timeout(Some(Duration::ZERO)),
        Err(ClientError::Usage(_))
    ));
    assert!(matches!(
        Client::connect_timeout(&server.address(), Some(Duration::ZERO)),
        Err(ClientError::Usage(_))
    ));
    // Silent from the start: the connection's HELLO times out.
    let address = fake_server(|_| {});
    let (result, elapsed) = within(Duration::from_secs(15), {
        let address = address.clone();
        move || {
            let started = Instant::now();
            let result = Client::connect_timeout(&address, Some(Duration::from_millis(300)))
                .map(drop)
                .map_err(|e| (e.to_string(), e));
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
    // Silent after the handshake: OPEN times out, after the timeout set on the connection.
    let address = fake_server(fake_handshake);
    let (result, elapsed) = within(Duration::from_secs(15), {
        let address = address.clone();
        move || {
            let mut client = Client::connect(&address).unwrap();
            client.set_timeout(Some(Duration::from_millis(300))).unwrap();
            let started = Instant::now();
            let result = client.open(D, Dtype::F32).map_err(|e| (e.to_string(), e));
            (result, started.elapsed())
        }
    });
    let (message, error) = result.unwrap_err();
    assert!(matches!(error, ClientError::TimedOut { .. }), "{error:?}");
    assert!(
        message.contains(&address.to_string()) && message.contains("timed out") && message.contains("OPEN"),
        "{message}"
    );
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
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
        move || Client::connect(&address).map(drop).unwrap_err()
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
        fake_handshake(s);
        s.write_all(&100u32.to_le_bytes()).unwrap();
    });
    let mut client = Client::connect(&address).unwrap();
    assert_eq!(client.max_reply_bytes(), 1 << 30);
    client.set_max_reply_bytes(64);
    assert!(matches!(
        client.open(D, Dtype::F32),
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

#[test]
fn an_expanded_server_takes_raw_features_and_solves_heads_that_carry_the_spec() {
    use headstart::expand::Expansion;
    use headstart::stats::Precision;
    let dir = tempfile::tempdir().unwrap();
    let spec = Expansion::new(D, 32, 5).unwrap();
    let config = ServerConfig::new(dir.path().join("state.hs"));
    let initial = Stats::expanded(spec, Precision::Exact);
    let server = Server::start(&"127.0.0.1:0".parse().unwrap(), initial, config).unwrap();
    let address = server.address();
    let pushed = batches(3, 6, 700); // chunks of 512 rows and partial ones
    let mut c = Client::connect(&address).unwrap();
    // Clients send raw features: the session's dimension is d, not M.
    assert!(c.open(32, Dtype::F32).is_err());
    let mut c = Client::connect(&address).unwrap();
    c.open(D, Dtype::F32).unwrap();
    for b in &pushed {
        c.push(b).unwrap();
    }
    let summary = c.stats().unwrap();
    assert_eq!(
        (summary["dim"].as_u64(), summary["input_dim"].as_u64()),
        (Some(32), Some(D as u64))
    );
    assert_eq!(summary["expansion"]["seed"].as_u64(), Some(5));
    let mut expected = Stats::expanded(spec, Precision::Exact);
    for b in &pushed {
        expected.update_batch(b).unwrap();
    }
    let bytes = c.solve(&SolveRequest::default()).unwrap();
    let remote = decode_head(&bytes, "", Path::new("reply")).unwrap();
    let local = Solver::new().solve(&expected, &SolveOptions::default()).unwrap();
    assert_eq!(remote.info.expansion, Some(spec));
    assert!(rel_err(&remote.weight, &local.weight) < F32_STORAGE_REL_TOL);
    let final_state = server.shutdown().unwrap();
    assert_eq!(final_state.expansion(), Some(&spec));
    assert_eq!(
        snapshot::read(&dir.path().join("state.hs")).unwrap().expansion(),
        Some(&spec)
    );
}

#[test]
fn an_expanded_server_refuses_rows_too_large_to_expand() {
    use headstart::expand::Expansion;
    use headstart::stats::Precision;
    let dir = tempfile::tempdir().unwrap();
    let spec = Expansion::new(D, 16, 1).unwrap();
    let config = ServerConfig::new(dir.path().join("state.hs"));
    let initial = Stats::expanded(spec, Precision::Exact);
    let server = Server::start(&"127.0.0.1:0".parse().unwrap(), initial, config).unwrap();
    let mut c = Client::connect(&server.address()).unwrap();
    c.open(D, Dtype::F64).unwrap();
    // Every value is within the plain limit, but the row's L1 norm times 2√3 is not.
    let mut x = vec![1.0f64; 2 * D];
    x[D..].iter_mut().for_each(|v| *v = 1e144);
    let refused = c
        .push(&Batch::new(x, vec![0, 1]))
        .and_then(|_| c.stats().map(|_| ()));
    assert!(refused.is_err(), "the batch should have been refused");
    assert!(refused.unwrap_err().to_string().contains("row 1"));
    let state = server.shutdown().unwrap();
    assert_eq!(state.samples(), 0);
}
