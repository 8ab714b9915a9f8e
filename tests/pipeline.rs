//! Pipeline semantics with several producers: snapshots see exactly what was sent before
//! them, backpressure bounds the queue, dropping producers drains, reducer errors surface.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use headstart::pipeline::{self, PipelineError};
use headstart::stats::{Batch, Stats};

const D: usize = 2;

fn one_row(label: i64) -> Batch {
    Batch::new(vec![label as f64, 1.0], vec![label])
}

#[test]
fn a_snapshot_includes_every_batch_sent_before_it_from_every_producer() {
    let (producer, reducer) = pipeline::spawn(Stats::new(D), 3);
    for round in 0..20 {
        // Four producers each send 25 batches; all sends return before the snapshot.
        std::thread::scope(|s| {
            for k in 0..4 {
                let p = producer.clone();
                s.spawn(move || {
                    for i in 0..25 {
                        p.send(one_row(k * 1000 + i)).unwrap();
                    }
                });
            }
        });
        let snap = producer.snapshot().unwrap();
        assert_eq!(snap.samples(), 100 * (round + 1), "round {round}");
        assert_eq!(snap.class_count(3 * 1000 + 24), round + 1);
    }
    drop(producer);
    assert_eq!(reducer.join().unwrap().samples(), 2000);
}

#[test]
fn a_snapshot_concurrent_with_sends_holds_whole_batches_only() {
    let (producer, reducer) = pipeline::spawn(Stats::new(D), 2);
    let sent = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..3 {
            let (p, sent) = (producer.clone(), Arc::clone(&sent));
            s.spawn(move || {
                for _ in 0..200 {
                    p.send(Batch::new(vec![1.0f32; 5 * D], vec![7; 5])).unwrap();
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for _ in 0..20 {
            let before = sent.load(Ordering::SeqCst) as u64;
            let snap = producer.snapshot().unwrap();
            assert_eq!(snap.samples() % 5, 0, "a partial batch was visible");
            assert!(
                snap.samples() >= 5 * before,
                "snapshot missed batches whose send returned"
            );
        }
    });
    drop(producer);
    assert_eq!(reducer.join().unwrap().samples(), 3 * 200 * 5);
}

#[test]
fn begin_task_is_ordered_with_the_batches() {
    let (producer, reducer) = pipeline::spawn(Stats::new(D), 1);
    producer.send(one_row(1)).unwrap();
    producer.begin_task().unwrap();
    producer.send(one_row(2)).unwrap();
    let snap = producer.snapshot().unwrap();
    assert_eq!(
        (snap.samples(), snap.task_samples(), snap.task_classes()),
        (2, 1, vec![2])
    );
    drop(producer);
    reducer.join().unwrap();
}

#[test]
fn a_full_channel_blocks_the_producer() {
    // 40 messages (a heavy batch, then a marker, 20 times) through a channel of 2. When the
    // last `mark` returns, at most 2 messages wait in the queue and the reducer holds one more,
    // so it must already have taken, and answered, every marker but the last two: each `send`
    // blocked until the reducer made room. An unbounded queue would return at once, long
    // before the reducer gets through the first few products.
    let (producer, reducer) = pipeline::spawn(Stats::new(256).with_threads(1), 2);
    let marks: Vec<_> = (0..20)
        .map(|_| {
            producer
                .send(Batch::new(vec![0.5f32; 1024 * 256], vec![1; 1024]))
                .unwrap();
            producer.mark().unwrap()
        })
        .collect();
    for (i, mark) in marks[..18].iter().enumerate() {
        assert!(
            mark.is_applied(),
            "marker {i} is still queued: the producer never waited"
        );
    }
    drop(producer);
    assert_eq!(reducer.join().unwrap().samples(), 20 * 1024);
}

#[test]
fn bad_batches_are_refused_at_send_and_never_reach_the_state() {
    let (producer, reducer) = pipeline::spawn(Stats::new(D), 2);
    producer.send(one_row(1)).unwrap();
    let err = producer
        .send(Batch::new(vec![1.0f64, f64::NAN], vec![1]))
        .unwrap_err();
    assert!(err.to_string().contains("row 0, column 1"), "{err}");
    let err = producer.send(Batch::new(vec![1.0f64; 3], vec![1])).unwrap_err();
    assert!(matches!(err, PipelineError::Batch(_)));
    assert_eq!(producer.snapshot().unwrap().samples(), 1);
    drop(producer);
    assert_eq!(reducer.join().unwrap().samples(), 1);
}

#[test]
fn a_reducer_error_reaches_every_caller_and_join() {
    let (producer, reducer) = pipeline::spawn(Stats::new(D), 2);
    producer.send(one_row(1)).unwrap();
    let other = producer.clone();
    // Retracting a class the state never saw stops the reducer.
    producer.retract(one_row(5)).unwrap();
    let err = other.snapshot().unwrap_err();
    assert!(matches!(err, PipelineError::ReducerFailed(_)), "{err:?}");
    assert!(err.to_string().contains("class 5"), "{err}");
    let err = producer.send(one_row(2)).unwrap_err();
    assert!(err.to_string().contains("class 5"), "{err}");
    drop((producer, other));
    let err = reducer.join().unwrap_err();
    assert!(err.to_string().contains("class 5"), "{err}");
}

#[test]
fn snapshots_queued_behind_a_failing_message_return_the_error() {
    // A large first batch keeps the reducer busy while the failing retraction and the
    // snapshots queue up behind it, so the snapshots are in the channel when it fails.
    const WIDE: usize = 256;
    let rows = 20_000;
    let features: Vec<f32> = (0..rows * WIDE).map(|i| (i % 7) as f32).collect();
    let (producer, reducer) = pipeline::spawn(Stats::new(WIDE), 16);
    producer.send(Batch::new(features, vec![1; rows])).unwrap();
    producer.retract(Batch::new(vec![0.0f32; WIDE], vec![5])).unwrap();
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    for _ in 0..4 {
        let p = producer.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || done.send(p.snapshot().map(|s| s.samples())).unwrap());
    }
    for _ in 0..4 {
        // A hang here is the bug: a caller waiting for a reply that never comes.
        let outcome = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a snapshot queued behind a failure must not hang");
        let err = outcome.unwrap_err();
        assert!(err.to_string().contains("class 5"), "{err}");
    }
    drop(producer);
    assert!(reducer.join().unwrap_err().to_string().contains("class 5"));
}

#[test]
fn dropping_every_producer_drains_the_queue() {
    let (producer, reducer) = pipeline::spawn(Stats::new(D), 64);
    for i in 0..64 {
        producer.send(one_row(i % 3)).unwrap();
    }
    drop(producer);
    let stats = reducer.join().unwrap();
    assert_eq!(stats.samples(), 64);
    assert_eq!(stats.class_count(0), 22);
}
