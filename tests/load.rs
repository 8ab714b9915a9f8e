//! Load: one million samples (d = 384) from four clients over loopback into a `headstart
//! serve` process, in plaintext and then over TLS with push tokens; reports samples/s for both
//! (and their ratio) and the server's peak memory, and checks that the peak stays bounded while
//! clients keep pushing (backpressure: each client keeps at most a window of batches
//! unacknowledged, the server reads ahead at most `ACK_WINDOW`, the reducer's channel is
//! bounded; TLS adds buffers of its own, which must not grow with the stream either).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::{Serve, ok, s};
use headstart::net::auth::Token;
use headstart::net::protocol::Dtype;
use headstart::net::{Client, ClientOptions, tls};
use headstart::stats::Batch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D: usize = 384;
const ROWS: usize = 4096;
const CLIENTS: usize = 4;
const SAMPLES: u64 = 1 << 20;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_million_samples_from_four_clients_with_flat_server_memory_plaintext_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let plain = load(
        &dir.path().join("plain.hs"),
        &[],
        &ClientOptions::default(),
        "plaintext",
    );

    // TLS with tokens: the pushers hold a push token, the final STATS an admin one.
    ok(&["certs", "--out", &s(&dir.path().join("certs"))]);
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "push load-push-token-0123456789\nadmin load-admin-token-0123456789\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let serve_args = [
        "--token-file".to_string(),
        s(&tokens),
        "--tls-cert".into(),
        s(&dir.path().join("certs/server.pem")),
        "--tls-key".into(),
        s(&dir.path().join("certs/server.key")),
    ];
    let options = ClientOptions {
        token: Some(Token::new("load-push-token-0123456789").unwrap()),
        tls: Some(tls::client_config(&dir.path().join("certs/ca.pem")).unwrap()),
        ..ClientOptions::default()
    };
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let secure = load(&dir.path().join("tls.hs"), &serve_args, &options, "TLS + tokens");
    println!(
        "load: TLS + tokens / plaintext = {:.2} (one run each, same machine, one after the other)",
        secure / plain
    );
}

/// Streams the million samples into a fresh server started with `serve_args`, the clients
/// connecting with `options` (an admin token replaces a push token for the final STATS);
/// returns samples/s.
fn load(state: &std::path::Path, serve_args: &[&str], options: &ClientOptions, what: &str) -> f64 {
    let server = Serve::start(state, D, serve_args);
    let address = server.address.clone();
    let pid = server.child.id();

    // Eight distinct batches per client, cycled.
    let pool: Vec<Vec<Batch>> = (0..CLIENTS as u64)
        .map(|k| {
            (0..8)
                .map(|i| {
                    let mut rng = ChaCha8Rng::seed_from_u64(k * 100 + i);
                    let x: Vec<f32> = (0..ROWS * D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    let y: Vec<i64> = (0..ROWS).map(|_| rng.random_range(0..100)).collect();
                    Batch::new(x, y)
                })
                .collect()
        })
        .collect();
    let baseline_kib = peak_rss_kib(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let per_client = SAMPLES.div_ceil(CLIENTS as u64 * ROWS as u64);
    let started = Instant::now();
    let mut early_peak_kib = 0;
    std::thread::scope(|s| {
        for mine in &pool {
            let (address, sent) = (address.clone(), Arc::clone(&sent));
            s.spawn(move || {
                let mut c = Client::connect_with(&address, options).unwrap();
                assert_eq!(c.is_tls(), options.tls.is_some());
                c.open(D, Dtype::F32).unwrap();
                for i in 0..per_client as usize {
                    c.push(&mine[i % mine.len()]).unwrap();
                    sent.fetch_add(ROWS as u64, Ordering::SeqCst);
                }
                c.flush().unwrap();
            });
        }
        // The peak after a quarter of the stream, to compare with the peak at the end.
        while sent.load(Ordering::SeqCst) < SAMPLES / 4 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        early_peak_kib = peak_rss_kib(pid);
    });
    let seconds = started.elapsed().as_secs_f64();
    let total = sent.load(Ordering::SeqCst);
    let final_peak_kib = peak_rss_kib(pid);
    let admin = ClientOptions {
        token: options
            .token
            .as_ref()
            .map(|_| Token::new("load-admin-token-0123456789").unwrap()),
        ..options.clone()
    };
    let mut c = Client::connect_with(&address, &admin).unwrap();
    assert_eq!(c.stats().unwrap()["samples"], total);
    println!(
        "load ({what}): {total} samples (d = {D}, B = {ROWS}) from {CLIENTS} clients in {seconds:.2} s = {:.0} samples/s; \
         server peak RSS {:.1} MiB at 25% of the stream, {:.1} MiB at the end (idle {:.1} MiB)",
        total as f64 / seconds,
        early_peak_kib as f64 / 1024.0,
        final_peak_kib as f64 / 1024.0,
        baseline_kib as f64 / 1024.0
    );
    assert!(total >= 1_000_000);
    // Bounded whatever the timing: the stream is 1.5 GiB of features, and the server holds at
    // most the reducer's queue (8 batches) and the one it multiplies, plus per connection a
    // frame, its decoded batch and its layout: about 21 batches of 6 MiB, ~130 MiB. 400 MiB
    // above idle leaves room for the allocator and fails any buffering that grows with the
    // stream (the comparison of early and final peaks is printed, not asserted: it depends on
    // how the scheduler interleaves the clients).
    let growth_mib = (final_peak_kib - baseline_kib) as f64 / 1024.0;
    assert!(
        growth_mib < 400.0,
        "{what}: server peak RSS grew {growth_mib:.0} MiB above idle while taking the stream"
    );
    total as f64 / seconds
}
