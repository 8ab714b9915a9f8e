//! The monoid laws and stream-split invariance, by property tests.
//!
//! Two kinds of data: dyadic values (k/8, small k), whose sums are exact in f64 so states
//! must be *equal*; and arbitrary floats, where states must agree to SUM_ORDER_REL_TOL.

mod common;

use common::{SUM_ORDER_REL_TOL, rel_err};
use headstart::pipeline;
use headstart::stats::{Batch, Scope, Stats};
use proptest::prelude::*;

const D: usize = 3;

/// A batch of 0..6 rows with labels in a small, non-contiguous id set.
fn batch(dyadic: bool) -> impl Strategy<Value = (Vec<f64>, Vec<i64>)> {
    (0usize..6).prop_flat_map(move |rows| {
        let value = if dyadic {
            (-80i32..80).prop_map(|k| k as f64 / 8.0).boxed()
        } else {
            (-1e3f64..1e3).boxed()
        };
        (
            proptest::collection::vec(value, rows * D),
            proptest::collection::vec(prop_oneof![Just(-4i64), Just(0), Just(9), Just(1 << 40)], rows),
        )
    })
}

fn stream(dyadic: bool) -> impl Strategy<Value = Vec<(Vec<f64>, Vec<i64>)>> {
    proptest::collection::vec(batch(dyadic), 0..8)
}

fn state_of(batches: &[(Vec<f64>, Vec<i64>)]) -> Stats {
    let mut s = Stats::new(D);
    for (x, y) in batches {
        s.update(x, y).unwrap();
    }
    s
}

fn assert_close(a: &Stats, b: &Stats) {
    assert_eq!(a.samples(), b.samples());
    assert_eq!(a.task_samples(), b.task_samples());
    assert_eq!(a.classes(), b.classes());
    for scope in [Scope::All, Scope::Task] {
        let (ga, gb) = (a.gram(scope), b.gram(scope));
        let flat = |g: &faer::Mat<f64>| (0..D * D).map(|k| g[(k / D, k % D)]).collect::<Vec<_>>();
        assert!(rel_err(&flat(&ga), &flat(&gb)) <= SUM_ORDER_REL_TOL);
        assert!(rel_err(&a.sum(scope).1, &b.sum(scope).1) <= SUM_ORDER_REL_TOL);
        for c in a.classes() {
            match (a.class_sum(c, scope), b.class_sum(c, scope)) {
                (Some((na, sa)), Some((nb, sb))) => {
                    assert_eq!(na, nb);
                    assert!(rel_err(&sa, &sb) <= SUM_ORDER_REL_TOL);
                }
                (None, None) => {}
                other => panic!("class {c} differs: {other:?}"),
            }
        }
    }
}

fn merged(parts: &[&Stats]) -> Stats {
    let mut s = Stats::new(D);
    for p in parts {
        s.merge(p).unwrap();
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn merge_is_associative_and_commutative_with_identity(a in stream(true), b in stream(true), c in stream(true)) {
        let (a, b, c) = (state_of(&a), state_of(&b), state_of(&c));
        let mut ab = a.clone(); ab.merge(&b).unwrap();
        let mut ab_c = ab.clone(); ab_c.merge(&c).unwrap();
        let mut bc = b.clone(); bc.merge(&c).unwrap();
        let mut a_bc = a.clone(); a_bc.merge(&bc).unwrap();
        prop_assert_eq!(&ab_c, &a_bc);
        let mut ba = b.clone(); ba.merge(&a).unwrap();
        prop_assert_eq!(&ab, &ba);
        let mut a_e = a.clone(); a_e.merge(&Stats::new(D)).unwrap();
        prop_assert_eq!(&a_e, &a);
        let mut e_a = Stats::new(D); e_a.merge(&a).unwrap();
        prop_assert_eq!(&e_a, &a);
    }

    #[test]
    fn merge_laws_hold_to_rounding_for_arbitrary_floats(a in stream(false), b in stream(false), c in stream(false)) {
        let (a, b, c) = (state_of(&a), state_of(&b), state_of(&c));
        assert_close(&merged(&[&merged(&[&a, &b]), &c]), &merged(&[&a, &merged(&[&b, &c])]));
        assert_close(&merged(&[&a, &b]), &merged(&[&b, &a]));
    }

    #[test]
    fn any_split_into_batches_and_producers_gives_the_same_state(
        rows in proptest::collection::vec(batch(true), 1..6),
        producers in 1usize..4,
        batch_size in 1usize..5,
    ) {
        // The whole stream as one batch.
        let x: Vec<f64> = rows.iter().flat_map(|(x, _)| x.clone()).collect();
        let y: Vec<i64> = rows.iter().flat_map(|(_, y)| y.clone()).collect();
        let mut whole = Stats::new(D);
        whole.update(&x, &y).unwrap();
        // The same rows re-batched and sent by several producer threads.
        let (producer, reducer) = pipeline::spawn(Stats::new(D), 2);
        let n = y.len();
        let share = n.div_ceil(producers).max(1);
        std::thread::scope(|s| {
            for start in (0..n).step_by(share) {
                let p = producer.clone();
                let (x, y) = (&x, &y);
                s.spawn(move || {
                    let end = (start + share).min(n);
                    for b in (start..end).step_by(batch_size) {
                        let e = (b + batch_size).min(end);
                        p.send(Batch::new(x[b * D..e * D].to_vec(), y[b..e].to_vec())).unwrap();
                    }
                });
            }
        });
        drop(producer);
        let streamed = reducer.join().unwrap();
        prop_assert_eq!(&streamed, &whole);
    }

    #[test]
    fn retract_undoes_update(a in stream(false), b in batch(false)) {
        let base = state_of(&a);
        let mut s = base.clone();
        s.update(&b.0, &b.1).unwrap();
        s.retract(&b.0, &b.1).unwrap();
        assert_close(&s, &base);
    }

    #[test]
    fn retract_undoes_update_exactly_on_dyadic_data(a in stream(true), b in batch(true)) {
        let base = state_of(&a);
        let mut s = base.clone();
        s.update(&b.0, &b.1).unwrap();
        s.retract(&b.0, &b.1).unwrap();
        prop_assert_eq!(&s, &base);
    }
}
