//! Exactly-once pushes across reconnects (docs/protocol.md, "Exactly-once pushes"): RESUME
//! on the wire, the session ledger in the state file, and the client's resumption after a
//! cut connection, a server restart and a state file that lost what was durable.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::proxy::Proxy;
use common::{Serve, labelled_batches, stats_of};
use headstart::net::protocol::{
    Dtype, ErrorCode, PROTOCOL_VERSION, Reply, Request, Secret, encode_request, read_frame,
};
use headstart::net::{Address, Client, ClientError, ClientOptions, Reconnect, Server, ServerConfig};
use headstart::snapshot;
use headstart::stats::{Batch, Stats};

const D: usize = 4;

fn raw_resume(address: &Address, session: u64) -> (TcpStream, Reply) {
    let Address::Tcp(a) = address else {
        panic!("a TCP address")
    };
    let mut stream = TcpStream::connect(a).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut bytes = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    bytes.extend(encode_request(&Request::Auth(Secret::default())));
    bytes.extend(encode_request(&Request::Resume {
        dim: D as u64,
        dtype: Dtype::F32,
        session,
    }));
    std::io::Write::write_all(&mut stream, &bytes).unwrap();
    for _ in 0..2 {
        reply(&mut stream); // WELCOME, READY
    }
    let resumed = reply(&mut stream);
    (stream, resumed)
}

fn reply(stream: &mut TcpStream) -> Reply {
    let raw = read_frame(stream, 1 << 20).unwrap();
    Reply::decode(raw.kind, &raw.body).unwrap()
}

fn send_batch(stream: &mut TcpStream, seq: u64, batch: &Batch) {
    let frame = encode_request(&Request::Batch {
        seq,
        batch: batch.clone(),
    });
    std::io::Write::write_all(stream, &frame).unwrap();
}

fn samples(address: &Address) -> u64 {
    Client::connect(address).unwrap().stats().unwrap()["samples"]
        .as_u64()
        .unwrap()
}

fn resuming() -> ClientOptions {
    ClientOptions {
        timeout: Some(Duration::from_secs(20)),
        reconnect: Some(Reconnect {
            patience: Duration::from_secs(30),
            ..Reconnect::default()
        }),
        ..ClientOptions::default()
    }
}

#[test]
fn a_batch_sent_again_on_a_new_connection_is_acknowledged_and_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &"127.0.0.1:0".parse().unwrap(),
        Stats::new(D),
        ServerConfig::new(dir.path().join("s.hs")),
    )
    .unwrap();
    let address = server.address();
    let b = labelled_batches(3, 4, 5, D);
    let (mut first, opened) = raw_resume(&address, 77);
    assert!(
        matches!(
            opened,
            Reply::Resumed {
                known: false,
                last: 0,
                ..
            }
        ),
        "{opened:?}"
    );
    send_batch(&mut first, 1, &b[0]);
    send_batch(&mut first, 2, &b[1]);
    assert_eq!(
        (reply(&mut first), reply(&mut first)),
        (Reply::Ack(1), Reply::Ack(2))
    );
    drop(first); // as if both ACKs had been lost on the way

    let (mut second, resumed) = raw_resume(&address, 77);
    assert!(
        matches!(
            resumed,
            Reply::Resumed {
                known: true,
                last: 2,
                samples: 10,
                ..
            }
        ),
        "{resumed:?}"
    );
    // Batch 2 again (the client did not see its ACK), then batch 3.
    send_batch(&mut second, 2, &b[1]);
    send_batch(&mut second, 3, &b[2]);
    assert_eq!(
        (reply(&mut second), reply(&mut second)),
        (Reply::Ack(2), Reply::Ack(3))
    );
    assert_eq!(samples(&address), 15, "batch 2 once, batch 3 once");
    let stats = Client::connect(&address).unwrap().stats().unwrap();
    assert_eq!(stats["resent_skipped"].as_u64(), Some(1));

    // A batch number that skips one is refused, and nothing is applied.
    let (mut third, _) = raw_resume(&address, 77);
    send_batch(&mut third, 5, &b[3]);
    match reply(&mut third) {
        Reply::Error {
            code: ErrorCode::Session,
            fatal: true,
            message,
        } => assert!(
            message.contains("batch 5") && message.contains("up to 3"),
            "{message}"
        ),
        other => panic!("expected a Session error, got {other:?}"),
    }
    assert_eq!(samples(&address), 15);

    // The ledger is in the state file, and a restarted server resumes from it.
    let state = dir.path().join("s.hs");
    drop(server.shutdown().unwrap());
    let (held, ledger) = snapshot::read_with_ledger(&state).unwrap();
    assert_eq!((held.samples(), ledger.last(77)), (15, Some(3)));
    assert_eq!(held, stats_of(D, &b[..3]), "batches 1, 2 and 3, once each");
    let server = Server::start_with_ledger(
        &"127.0.0.1:0".parse().unwrap(),
        held,
        ledger,
        ServerConfig::new(state),
    )
    .unwrap();
    let (_, resumed) = raw_resume(&server.address(), 77);
    assert!(
        matches!(
            resumed,
            Reply::Resumed {
                known: true,
                last: 3,
                ..
            }
        ),
        "{resumed:?}"
    );
}

#[test]
fn a_client_resends_after_a_cut_and_a_kill_what_the_server_lacks_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let mut serve = Serve::start(&state, D, &[]);
    let proxy = Proxy::start(&serve.address.to_string());
    let mut c = Client::connect_with(&proxy.address.parse().unwrap(), &resuming()).unwrap();
    c.open(D, Dtype::F32).unwrap();
    let b = labelled_batches(9, 12, 7, D);
    for batch in &b[..4] {
        c.push(batch).unwrap();
    }
    c.sync().unwrap();
    assert_eq!(c.unsynced(), 0, "a SYNC drops the kept batches");
    for batch in &b[4..8] {
        c.push(batch).unwrap();
    }
    c.flush().unwrap();
    assert_eq!(c.unsynced(), 4);
    // A cut link: the next push resumes on a new connection.
    proxy.cut();
    c.push(&b[8]).unwrap();
    c.flush().unwrap();
    assert_eq!(c.reconnects(), 1);
    // SIGKILL: batches 5..=9 were acknowledged but never synced, so the file lacks them.
    serve.signal("-KILL");
    assert_eq!(snapshot::read(&state).unwrap().samples(), 4 * 7);
    serve = Serve::start(&state, D, &[]);
    proxy.point_at(&serve.address.to_string());
    proxy.cut();
    for batch in &b[9..] {
        c.push(batch).unwrap();
    }
    let synced = c.sync().unwrap();
    assert_eq!(synced, 12 * 7);
    assert_eq!(c.reconnects(), 2);
    // SOLVE and STATS are sent again after a reconnect too, with or without a session.
    let mut reader = Client::connect_with(&proxy.address.parse().unwrap(), &resuming()).unwrap();
    assert_eq!(reader.stats().unwrap()["samples"].as_u64(), Some(12 * 7));
    proxy.cut();
    assert_eq!(c.stats().unwrap()["samples"].as_u64(), Some(12 * 7));
    assert_eq!(reader.stats().unwrap()["samples"].as_u64(), Some(12 * 7));
    assert_eq!((c.reconnects(), reader.reconnects()), (3, 1));
    drop(reader);
    assert!(serve.signal("-TERM").success());
    assert_eq!(
        snapshot::read(&state).unwrap(),
        stats_of(D, &b),
        "every batch, once"
    );
}

#[test]
fn a_client_refuses_to_resume_when_the_server_lost_what_it_had_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let mut serve = Serve::start(&state, D, &[]);
    let proxy = Proxy::start(&serve.address.to_string());
    let mut c = Client::connect_with(&proxy.address.parse().unwrap(), &resuming()).unwrap();
    c.open(D, Dtype::F32).unwrap();
    let b = labelled_batches(4, 3, 5, D);
    c.push(&b[0]).unwrap();
    c.push(&b[1]).unwrap();
    c.sync().unwrap();
    // The state file is replaced by an empty one: batches 1 and 2, durable, are gone.
    assert!(serve.signal("-TERM").success());
    std::fs::remove_file(&state).unwrap();
    serve = Serve::start(&state, D, &[]);
    proxy.point_at(&serve.address.to_string());
    proxy.cut();
    let e = c.push(&b[2]).unwrap_err();
    assert!(matches!(e, ClientError::Resume { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("made batches up to 2 durable") && text.contains("batches 3..=3 are in doubt"),
        "{text}"
    );
    assert_eq!(samples(&serve.address), 0, "nothing applied twice or half");
}

#[test]
fn headstart_push_resumes_through_cut_connections_and_every_row_lands_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let mut serve = Serve::start(&state, D, &[]);
    let proxy = std::sync::Arc::new(Proxy::start(&serve.address.to_string()));
    // 20,000 rows in batches of 10: 2,000 batches, with every connection cut every 20 ms.
    let (rows, batch) = (20_000usize, 10);
    let (x, y) = common::labelled_data(31, rows, D, &[0, 1, 2, 3, 4]);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    headstart::ingest::npy::write_f32(&x_path, &x32, rows, D).unwrap();
    headstart::ingest::npy::write_i64(&y_path, &y).unwrap();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let cutter = {
        let (proxy, done, direct) = (proxy.clone(), done.clone(), serve.address.clone());
        std::thread::spawn(move || {
            // The first connection is not retried: cut only once the push's session is open
            // and applying batches.
            while samples(&direct) == 0 && !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                proxy.cut();
            }
        })
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(["push", "--connect", &proxy.address, "--batch", &batch.to_string()])
        .arg("--features")
        .arg(&x_path)
        .arg("--labels")
        .arg(&y_path)
        .output()
        .unwrap();
    done.store(true, Ordering::SeqCst);
    cutter.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all acknowledged and durable, each once (resumed after"),
        "{stdout}"
    );
    assert!(serve.signal("-TERM").success());
    let expected = stats_of(D, &[Batch::new(x32, y)]);
    let held = snapshot::read(&state).unwrap();
    assert_eq!(held.samples(), rows as u64, "every row once");
    let gram = |s: &Stats| -> Vec<f64> {
        let g = s.gram(headstart::solve::Scope::All);
        (0..D)
            .flat_map(|i| (0..D).map(move |j| (i, j)))
            .map(|(i, j)| g[(i, j)])
            .collect()
    };
    let err = common::rel_err(&gram(&held), &gram(&expected));
    assert!(err <= common::SUM_ORDER_REL_TOL, "Gram differs by {err:e}");
}

#[test]
fn headstart_push_gives_up_after_its_patience_and_says_which_rows_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.hs");
    let mut serve = Serve::start(&state, D, &[]);
    let proxy = Proxy::start(&serve.address.to_string());
    let rows = 200_000usize;
    let (x, y) = common::labelled_data(32, rows, D, &[0, 1, 2]);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    headstart::ingest::npy::write_f32(&x_path, &x32, rows, D).unwrap();
    headstart::ingest::npy::write_i64(&y_path, &y).unwrap();
    let push = std::process::Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args([
            "push",
            "--connect",
            &proxy.address,
            "--batch",
            "10",
            "--reconnect",
            "1",
        ])
        .arg("--features")
        .arg(&x_path)
        .arg("--labels")
        .arg(&y_path)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once batches are applied, the server dies for good.
    while samples(&serve.address) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    serve.signal("-KILL");
    proxy.cut();
    let started = std::time::Instant::now();
    let out = push.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    eprintln!("{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(err.contains("reconnecting failed for"), "{err}");
    assert!(
        err.contains("but only rows 0..0 are durable") && err.contains("were not yet synced"),
        "{err}"
    );
}

#[test]
fn an_expanded_state_skips_a_resent_batch_too() {
    use headstart::expand::Expansion;
    use headstart::stats::Precision;
    let dir = tempfile::tempdir().unwrap();
    let spec = Expansion::new(D, 24, 3).unwrap();
    let server = Server::start(
        &"127.0.0.1:0".parse().unwrap(),
        Stats::expanded(spec, Precision::Exact),
        ServerConfig::new(dir.path().join("s.hs")),
    )
    .unwrap();
    let address = server.address();
    // 700 rows: expanded in chunks of 512 rows and a partial one.
    let b = labelled_batches(5, 3, 700, D);
    let (mut first, _) = raw_resume(&address, 5);
    send_batch(&mut first, 1, &b[0]);
    send_batch(&mut first, 2, &b[1]);
    assert_eq!(
        (reply(&mut first), reply(&mut first)),
        (Reply::Ack(1), Reply::Ack(2))
    );
    drop(first);
    let (mut second, resumed) = raw_resume(&address, 5);
    assert!(matches!(resumed, Reply::Resumed { last: 2, .. }), "{resumed:?}");
    send_batch(&mut second, 2, &b[1]);
    send_batch(&mut second, 3, &b[2]);
    assert_eq!(
        (reply(&mut second), reply(&mut second)),
        (Reply::Ack(2), Reply::Ack(3))
    );
    let held = server.shutdown().unwrap();
    let mut expected = Stats::expanded(spec, Precision::Exact);
    for batch in &b {
        expected.update_batch(batch).unwrap();
    }
    assert_eq!(held.samples(), 2100);
    let gram = |s: &Stats| -> Vec<f64> {
        let g = s.gram(headstart::solve::Scope::All);
        (0..24)
            .flat_map(|i| (0..24).map(move |j| (i, j)))
            .map(|(i, j)| g[(i, j)])
            .collect()
    };
    let err = common::rel_err(&gram(&held), &gram(&expected));
    assert!(err <= common::SUM_ORDER_REL_TOL, "Gram differs by {err:e}");
}
