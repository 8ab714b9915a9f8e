//! The fault soak: 8 clients push 1,000,000 samples to `headstart serve` through a proxy that
//! cuts every open connection at random moments, while the server is SIGKILLed and restarted
//! 5 times on the same state file. Each client has a resumable session (it keeps its batches
//! until a SYNC makes them durable and resumes after every drop), so the final state must hold
//! every batch exactly once: its sample count is exact, its session ledger holds each client's
//! last batch, and its statistics equal those of all the batches (to 1e-12; the data are
//! multiples of 1/8, so the sums are exact in any order).
//!
//! docs/protocol.md, "Exactly-once pushes", states the guarantee this checks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{SUM_ORDER_REL_TOL, Serve, rel_err, stats_of};
use headstart::net::protocol::Dtype;
use headstart::net::{Address, Client, ClientOptions, Reconnect};
use headstart::snapshot;
use headstart::solve::Scope;
use headstart::stats::Batch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLIENTS: usize = 8;
const SAMPLES: usize = 1_000_000;
/// Rows per batch: 8,000 batches, 1,000 per client.
const ROWS: usize = 125;
const D: usize = 16;
const CLASSES: i64 = 60;
const KILLS: usize = 5;
/// Each client syncs after this many batches (and once at the end).
const SYNC_EVERY: usize = 50;

/// Batch `i` of client `k`: values that are multiples of 1/8 in [-2, 2], so every product and
/// sum the statistics take is exact in f64.
fn batch(k: usize, i: usize) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64((k * 100_000 + i) as u64);
    let features: Vec<f32> = (0..ROWS * D)
        .map(|_| rng.random_range(-16i32..=16) as f32 / 8.0)
        .collect();
    let labels: Vec<i64> = (0..ROWS).map(|_| rng.random_range(0..CLASSES)).collect();
    Batch::new(features, labels)
}

#[test]
fn eight_clients_survive_five_kills_and_cut_connections_with_every_batch_applied_once() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("soak.hs");
    let per_client = SAMPLES / ROWS / CLIENTS;
    let total_batches = per_client * CLIENTS;

    let mut serve = Serve::start(&state, D, &[]);
    let proxy = Proxy::start(&serve.address.to_string());
    let proxy_address: Address = proxy.address.parse().unwrap();
    let pushed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (address, pushed) = (proxy_address.clone(), pushed.clone());
            std::thread::spawn(move || {
                let options = ClientOptions {
                    timeout: Some(Duration::from_secs(20)),
                    reconnect: Some(Reconnect {
                        patience: Duration::from_secs(120),
                        ..Reconnect::default()
                    }),
                    ..ClientOptions::default()
                };
                // The first connection may itself be cut: retry it as a user would.
                let mut c = loop {
                    match Client::connect_with(&address, &options).and_then(|mut c| {
                        c.open(D, Dtype::F32)?;
                        Ok(c)
                    }) {
                        Ok(c) => break c,
                        Err(e) if e.is_transient() => std::thread::sleep(Duration::from_millis(20)),
                        Err(e) => panic!("client {k}: {e}"),
                    }
                };
                c.set_window(4);
                for i in 0..per_client {
                    c.push(&batch(k, i))
                        .unwrap_or_else(|e| panic!("client {k}, batch {i}: {e}"));
                    pushed.fetch_add(1, Ordering::SeqCst);
                    if (i + 1) % SYNC_EVERY == 0 {
                        c.sync()
                            .unwrap_or_else(|e| panic!("client {k}, sync after batch {i}: {e}"));
                    }
                }
                c.flush().unwrap();
                c.sync().unwrap();
                (c.session().unwrap(), c.reconnects())
            })
        })
        .collect();

    // Cut every open connection every 5 to 40 ms until the clients are done.
    let cutter = {
        let done = done.clone();
        let cut_now = Arc::new(AtomicU64::new(0));
        let cut_flag = cut_now.clone();
        let handle = std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(25);
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
                cut_flag.fetch_add(1, Ordering::SeqCst);
            }
        });
        (handle, cut_now)
    };

    // Kill the server at 1/6, 2/6, …, 5/6 of the batches, and cut when the cutter says so.
    let mut kills = 0;
    let mut cuts_seen = 0;
    let mut skipped = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while kills < KILLS {
        assert!(
            Instant::now() < deadline,
            "the soak did not reach kill {} in 600 s",
            kills + 1
        );
        let now_cut = cutter.1.load(Ordering::SeqCst);
        if now_cut > cuts_seen {
            cuts_seen = now_cut;
            proxy.cut();
        }
        let progress = pushed.load(Ordering::SeqCst) as usize;
        if progress * (KILLS + 1) >= total_batches * (kills + 1) {
            skipped += skipped_so_far(&serve.address);
            serve.signal("-KILL");
            kills += 1;
            serve = Serve::start(&state, D, &[]);
            proxy.point_at(&serve.address.to_string());
            proxy.cut();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Keep cutting until the clients finish.
    let finished =
        std::thread::spawn(move || clients.into_iter().map(|c| c.join().unwrap()).collect::<Vec<_>>());
    while !finished.is_finished() {
        assert!(Instant::now() < deadline, "the clients did not finish in 600 s");
        let now_cut = cutter.1.load(Ordering::SeqCst);
        if now_cut > cuts_seen {
            cuts_seen = now_cut;
            proxy.cut();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    done.store(true, Ordering::SeqCst);
    cutter.0.join().unwrap();
    let sessions = finished.join().unwrap();
    skipped += skipped_so_far(&serve.address);
    assert!(serve.signal("-TERM").success());

    let (held, ledger) = snapshot::read_with_ledger(&state).unwrap();
    let reconnects: u64 = sessions.iter().map(|(_, r)| r).sum();
    let expected = {
        let all: Vec<Batch> = (0..CLIENTS)
            .flat_map(|k| (0..per_client).map(move |i| batch(k, i)))
            .collect();
        stats_of(D, &all)
    };
    let applied_twice_or_lost = held.samples() as i64 - SAMPLES as i64;
    eprintln!(
        "soak: {SAMPLES} samples in {total_batches} batches from {CLIENTS} clients; {kills} SIGKILLs, {} connections cut, {reconnects} reconnects, {skipped} resent batches skipped as held; samples held − pushed = {applied_twice_or_lost}; {:.1} s",
        proxy.cuts.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        held.samples(),
        SAMPLES as u64,
        "a batch was applied twice or lost"
    );
    for (k, (session, _)) in sessions.iter().enumerate() {
        assert_eq!(
            ledger.last(*session),
            Some(per_client as u64),
            "client {k}'s last batch in the ledger"
        );
    }
    assert!(
        reconnects >= KILLS as u64,
        "every client should have reconnected: {reconnects}"
    );
    let gram_err = rel_err(
        held.gram(Scope::All)
            .as_ref()
            .col_iter()
            .flat_map(|c| c.iter().copied())
            .collect::<Vec<_>>()
            .as_slice(),
        expected
            .gram(Scope::All)
            .as_ref()
            .col_iter()
            .flat_map(|c| c.iter().copied())
            .collect::<Vec<_>>()
            .as_slice(),
    );
    assert!(gram_err <= SUM_ORDER_REL_TOL, "Gram differs by {gram_err:e}");
    assert_eq!(held.classes(), expected.classes());
    for id in expected.classes() {
        let (n, sum) = held.class_sum(id, Scope::All).unwrap();
        let (n_ref, sum_ref) = expected.class_sum(id, Scope::All).unwrap();
        assert_eq!(n, n_ref, "class {id}'s count");
        let err = rel_err(&sum, &sum_ref);
        assert!(err <= SUM_ORDER_REL_TOL, "class {id}'s sum differs by {err:e}");
    }
}

/// Resent batches the server skipped since it started (STATS `resent_skipped`).
fn skipped_so_far(address: &Address) -> u64 {
    let mut c = Client::connect_timeout(address, Some(Duration::from_secs(20))).unwrap();
    c.stats().unwrap()["resent_skipped"].as_u64().unwrap()
}
