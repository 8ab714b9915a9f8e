//! The SIGKILL crash test of `headstart serve`, shared by tests/server.rs (plaintext) and
//! tests/secure.rs (TLS with tokens).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headstart::net::protocol::Dtype;
use headstart::net::{Client, ClientOptions};
use headstart::snapshot;
use headstart::solve::Scope;
use headstart::stats::Batch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Serve;

/// Rows in each pushed batch; every batch is one class of its own.
const ROWS: usize = 8;
/// Push clients per round; client 0 also syncs.
const WORKERS: usize = 3;

/// How [`crash_rounds`] runs its server and kills it.
pub struct Crash<'a> {
    /// The state file.
    pub state: &'a Path,
    /// The feature dimension.
    pub dim: usize,
    /// `serve`'s options after `--listen 127.0.0.1:0 --state STATE --dim DIM --quiet`.
    pub serve_args: &'a [&'a str],
    /// How many times the server is started and killed.
    pub rounds: usize,
    /// Seeds the moments of the kills.
    pub seed: u64,
    /// Each kill comes 0 to this many milliseconds after the round's first completed sync.
    pub kill_within_ms: u64,
}

/// What [`crash_rounds`] saw.
pub struct Crashed {
    /// Per round, how many batches a completed SYNC covered.
    pub synced_per_round: Vec<usize>,
    /// Every batch (class id) a completed SYNC covered, over all rounds.
    pub guaranteed: BTreeSet<i64>,
}

/// Starts `headstart serve` `crash.rounds` times and kills it with SIGKILL at a random moment
/// while [`WORKERS`] clients (connected with `options(k)` for client `k`; client 0 must be
/// allowed to sync) stream unique-class batches and client 0 syncs every fifth request.
/// After each kill the state file must hold every batch acknowledged before the last
/// completed SYNC, and whole batches only; over all rounds at least 10 batches must be synced.
/// Each client is checked to use TLS exactly when its options ask for it.
pub fn crash_rounds(crash: &Crash, options: impl Fn(usize) -> ClientOptions) -> Crashed {
    let dim = crash.dim;
    let mut rng = ChaCha8Rng::seed_from_u64(crash.seed);
    let mut guaranteed: BTreeSet<i64> = BTreeSet::new();
    let mut synced_per_round = Vec::with_capacity(crash.rounds);
    let mut sent_max: i64 = 0;
    for round in 0..crash.rounds {
        let mut serve = Serve::start(crash.state, dim, crash.serve_args);
        let acked = Arc::new(Mutex::new(BTreeSet::<i64>::new()));
        let synced = Arc::new(Mutex::new(BTreeSet::<i64>::new()));
        let next_id = Arc::new(Mutex::new(sent_max + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|k| {
                let (address, acked, synced, next_id, stop) = (
                    serve.address.clone(),
                    acked.clone(),
                    synced.clone(),
                    next_id.clone(),
                    stop.clone(),
                );
                let options = options(k);
                std::thread::spawn(move || {
                    let Ok(mut c) = Client::connect_with(&address, &options) else {
                        return;
                    };
                    assert_eq!(c.is_tls(), options.tls.is_some(), "client {k}'s transport");
                    if c.open(dim, Dtype::F32).is_err() {
                        return;
                    }
                    // Pushed ids in order; the first `c.acknowledged()` of them have an ACK.
                    let mut pending = VecDeque::new();
                    let mut done = 0u64;
                    let mut note_acks = |c: &Client, pending: &mut VecDeque<i64>| {
                        while done < c.acknowledged() {
                            acked.lock().unwrap().insert(pending.pop_front().unwrap());
                            done += 1;
                        }
                    };
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        if k == 0 && n.is_multiple_of(5) {
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
                        let batch = Batch::new(vec![id as f32; ROWS * dim], vec![id; ROWS]);
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
        std::thread::sleep(Duration::from_millis(rng.random_range(0..crash.kill_within_ms)));
        serve.signal("-KILL");
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        sent_max = *next_id.lock().unwrap();
        let synced = synced.lock().unwrap().clone();
        synced_per_round.push(synced.len());
        guaranteed.extend(synced);

        let saved = snapshot::read(crash.state).unwrap_or_else(|e| panic!("round {round}: {e}"));
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
            let sum = saved.class_sum(id, Scope::All).unwrap().1;
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
    assert!(
        guaranteed.len() >= 10,
        "too few synced batches: {}",
        guaranteed.len()
    );
    Crashed {
        synced_per_round,
        guaranteed,
    }
}
