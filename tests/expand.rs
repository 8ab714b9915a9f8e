//! Random-feature statistics against a brute-force f64 reference built from the documented
//! entries of R, in both precisions, through `Stats::update` and the pipeline.

use headstart::expand::{Expansion, entry};
use headstart::pipeline;
use headstart::snapshot;
use headstart::stats::{Batch, MergeError, Precision, Scope, Stats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Z = ReLU(X·R) and its Gram, sums and class sums, in plain f64 loops.
struct Reference {
    gram: Vec<f64>,
    sum: Vec<f64>,
    class_sums: std::collections::BTreeMap<i64, Vec<f64>>,
}

fn reference(spec: &Expansion, x: &[f64], labels: &[i64]) -> Reference {
    let (d, m) = (spec.input_dim, spec.features);
    let r: Vec<f64> = (0..d * m)
        .map(|k| f64::from(entry(spec.seed, k / m, k % m)))
        .collect();
    let mut gram = vec![0.0; m * m];
    let mut sum = vec![0.0; m];
    let mut class_sums = std::collections::BTreeMap::new();
    for (row, &label) in x.chunks_exact(d).zip(labels) {
        let z: Vec<f64> = (0..m)
            .map(|j| (0..d).map(|i| row[i] * r[i * m + j]).sum::<f64>().max(0.0))
            .collect();
        for a in 0..m {
            sum[a] += z[a];
            for b in 0..m {
                gram[a * m + b] += z[a] * z[b];
            }
        }
        let cs = class_sums.entry(label).or_insert_with(|| vec![0.0; m]);
        cs.iter_mut().zip(&z).for_each(|(c, v)| *c += v);
    }
    Reference {
        gram,
        sum,
        class_sums,
    }
}

fn data(rows: usize, d: usize, seed: u64) -> (Vec<f64>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels = (0..rows).map(|_| rng.random_range(0..4)).collect();
    (x, labels)
}

/// Largest |a − b| relative to the largest |b|.
fn rel_diff(a: impl IntoIterator<Item = f64>, b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |s, v| s.max(v.abs()));
    a.into_iter().zip(b).fold(0f64, |e, (x, y)| e.max((x - y).abs())) / scale
}

fn check(stats: &Stats, want: &Reference, tol: f64, what: &str) {
    let m = stats.dim();
    let g = stats.gram(Scope::All);
    let e = rel_diff((0..m * m).map(|k| g[(k / m, k % m)]), &want.gram);
    assert!(
        e <= tol,
        "{what}: Gram differs by {e:e} relative (tolerance {tol:e})"
    );
    let e = rel_diff(stats.sum(Scope::All).1, &want.sum);
    assert!(e <= tol, "{what}: sum differs by {e:e}");
    assert_eq!(
        stats.classes(),
        want.class_sums.keys().copied().collect::<Vec<_>>()
    );
    for (&id, cs) in &want.class_sums {
        let e = rel_diff(stats.class_sum(id, Scope::All).unwrap().1, cs);
        assert!(e <= tol, "{what}: class {id} sum differs by {e:e}");
    }
}

#[test]
fn exact_statistics_match_the_f64_reference_across_chunks_and_threads() {
    let spec = Expansion::new(7, 40, 123).unwrap();
    // 1,100 rows: two full chunks of 512 and a partial one.
    let (x, labels) = data(1100, 7, 1);
    let want = reference(&spec, &x, &labels);
    for threads in [1, 2] {
        let mut s = Stats::expanded(spec, Precision::Exact).with_threads(threads);
        s.update(&x, &labels).unwrap();
        assert_eq!((s.samples(), s.input_dim(), s.dim()), (1100, 7, 40));
        check(&s, &want, 1e-10, &format!("exact, {threads} threads"));
    }
}

#[test]
fn fast_statistics_are_within_f32_rounding() {
    let spec = Expansion::new(16, 64, 9).unwrap();
    let (x, labels) = data(900, 16, 2);
    let want = reference(&spec, &x, &labels);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut s = Stats::expanded(spec, Precision::Fast);
    s.update(&x32, &labels).unwrap();
    // f32 inputs and products: a few units of 2⁻²⁴ ≈ 6e-8 per term, well under 1e-5.
    check(&s, &want, 1e-5, "fast");
    // And not exact: the rounding is really there (the test can tell the paths apart).
    let g = s.gram(Scope::All);
    let e = rel_diff((0..64 * 64).map(|k| g[(k / 64, k % 64)]), &want.gram);
    assert!(e > 1e-12, "fast path should carry f32 rounding, got {e:e}");
}

#[test]
fn fast_batches_longer_than_one_f32_accumulator_match_the_reference() {
    // 9,000 rows: the fast path's f32 accumulator takes 8,192 (16 chunks) before it is
    // folded, so this batch folds once midway and once at its end. Then a one-class batch
    // (its own class-sum path), through update, the pipeline and a retraction.
    let spec = Expansion::new(6, 24, 31).unwrap();
    let (x, labels) = data(9000, 6, 21);
    let (y, _) = data(700, 6, 22);
    let single = vec![7i64; 700];
    let all_x: Vec<f64> = x.iter().chain(&y).copied().collect();
    let all_labels: Vec<i64> = labels.iter().chain(&single).copied().collect();
    let want = reference(&spec, &all_x, &all_labels);
    let (x32, y32): (Vec<f32>, Vec<f32>) = (
        x.iter().map(|&v| v as f32).collect(),
        y.iter().map(|&v| v as f32).collect(),
    );
    let mut direct = Stats::expanded(spec, Precision::Fast);
    direct.update(&x32, &labels).unwrap();
    direct.update(&y32, &single).unwrap();
    check(&direct, &want, 1e-5, "fast, direct");

    let (producer, reducer) = pipeline::spawn(Stats::expanded(spec, Precision::Fast), 2);
    producer.send(Batch::new(x32.clone(), labels.clone())).unwrap();
    producer.send(Batch::new(y32.clone(), single.clone())).unwrap();
    drop(producer);
    let piped = reducer.join().unwrap();
    check(&piped, &want, 1e-5, "fast, pipeline");

    // Retracting the long batch leaves the one-class batch alone.
    direct.retract(&x32, &labels).unwrap();
    let only = reference(&spec, &y, &single);
    check(&direct, &only, 1e-5, "fast, after the retraction");
}

#[test]
fn the_pipeline_expands_on_producers_and_matches_update() {
    let spec = Expansion::new(5, 30, 4).unwrap();
    let batches: Vec<(Vec<f64>, Vec<i64>)> = (0..6).map(|k| data(300 + 250 * k, 5, 10 + k as u64)).collect();
    let mut direct = Stats::expanded(spec, Precision::Exact);
    for (x, l) in &batches {
        direct.update(x, l).unwrap();
    }
    let (producer, reducer) = pipeline::spawn(Stats::expanded(spec, Precision::Exact), 2);
    assert_eq!(producer.dim(), 5);
    std::thread::scope(|scope| {
        for pair in batches.chunks(2) {
            let p = producer.clone();
            scope.spawn(move || {
                for (x, l) in pair {
                    p.send(Batch::new(x.clone(), l.clone())).unwrap();
                }
            });
        }
    });
    // A raw row of the wrong width is refused on the producer.
    assert!(producer.send(Batch::new(vec![0.0f64; 30], vec![0])).is_err());
    drop(producer);
    let piped = reducer.join().unwrap();
    assert_eq!(piped.samples(), direct.samples());
    let (g, h) = (piped.gram(Scope::All), direct.gram(Scope::All));
    let want: Vec<f64> = (0..900).map(|k| h[(k / 30, k % 30)]).collect();
    let e = rel_diff((0..900).map(|k| g[(k / 30, k % 30)]), &want);
    assert!(e <= 1e-13, "pipeline and update differ by {e:e}");
}

#[test]
fn specs_must_match_to_merge_and_survive_state_files() {
    let (x, labels) = data(50, 3, 3);
    let mut a = Stats::expanded(Expansion::new(3, 12, 1).unwrap(), Precision::Exact);
    a.update(&x, &labels).unwrap();
    let b = Stats::expanded(Expansion::new(3, 12, 2).unwrap(), Precision::Exact);
    let err = a.merge(&b).unwrap_err();
    assert!(matches!(err, MergeError::Expansion { .. }));
    assert!(
        err.to_string().contains("seed 1") && err.to_string().contains("seed 2"),
        "{err}"
    );
    let plain = Stats::new(12);
    assert!(a.clone().merge(&plain).unwrap_err().to_string().contains("none"));
    let before = a.clone();
    assert!(a.merge(&b).is_err());
    assert_eq!(a, before, "a refused merge changed the state");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("expanded.hs");
    snapshot::write(&path, &a).unwrap();
    let back = snapshot::read(&path).unwrap();
    assert_eq!(back, a);
    assert_eq!(back.expansion(), a.expansion());
    // The state read back expands new raw batches as the original does.
    let (y, l2) = data(20, 3, 4);
    let (mut p, mut q) = (a.clone(), back);
    p.update(&y, &l2).unwrap();
    q.update(&y, &l2).unwrap();
    assert_eq!(p, q);
}

#[test]
fn retracting_an_expanded_batch_undoes_it() {
    let spec = Expansion::new(4, 20, 8).unwrap();
    let (x, labels) = data(600, 4, 5);
    let (y, more) = data(700, 4, 6);
    let mut s = Stats::expanded(spec, Precision::Exact);
    s.update(&x, &labels).unwrap();
    let kept = s.clone();
    s.update(&y, &more).unwrap();
    s.retract(&y, &more).unwrap();
    assert_eq!(s.samples(), kept.samples());
    let (g, h) = (s.gram(Scope::All), kept.gram(Scope::All));
    let want: Vec<f64> = (0..400).map(|k| h[(k / 20, k % 20)]).collect();
    assert!(rel_diff((0..400).map(|k| g[(k / 20, k % 20)]), &want) < 1e-12);
}

#[test]
fn rows_too_large_to_expand_are_refused_without_change() {
    let mut s = Stats::expanded(Expansion::new(2, 8, 0).unwrap(), Precision::Exact);
    s.update(&[1.0f64, 2.0], &[0]).unwrap();
    let before = s.clone();
    let err = s.update(&[1.0f64, 2.0, 1e144, 1e144], &[0, 1]).unwrap_err();
    assert!(err.to_string().contains("row 1"), "{err}");
    assert_eq!(s, before);
}

#[test]
fn inconsistent_expansion_parts_are_refused() {
    let s = Stats::expanded(Expansion::new(3, 12, 1).unwrap(), Precision::Exact);
    let mut parts = s.to_parts();
    parts.expansion.as_mut().unwrap().features = 13;
    let err = Stats::from_parts(parts).unwrap_err();
    assert!(
        err.contains("13 features") && err.contains("dimension 12"),
        "{err}"
    );
    let mut parts = s.to_parts();
    parts.expansion.as_mut().unwrap().version = 9;
    assert!(Stats::from_parts(parts).unwrap_err().contains("version 9"));
}

#[test]
fn heads_of_expanded_statistics_carry_the_spec_through_files() {
    use headstart::export;
    use headstart::solve::{SolveOptions, Solver};
    let spec = Expansion::new(3, 24, 5).unwrap();
    let (x, labels) = data(400, 3, 7);
    let mut s = Stats::expanded(spec, Precision::Exact);
    s.update(&x, &labels).unwrap();
    let head = Solver::new().solve(&s, &SolveOptions::default()).unwrap();
    assert_eq!((head.dim, head.info.expansion), (24, Some(spec)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.safetensors");
    export::write_head(&path, &head, "", &Default::default()).unwrap();
    let back = export::read_head(&path, "").unwrap();
    assert_eq!(back.info.expansion, Some(spec));
    assert_eq!(Expansion::from_json(&back.metadata["expansion"]).unwrap(), spec);
    // A plain head has none.
    let mut plain = Stats::new(3);
    plain.update(&x, &labels).unwrap();
    let head = Solver::new().solve(&plain, &SolveOptions::default()).unwrap();
    export::write_head(&path, &head, "", &Default::default()).unwrap();
    assert_eq!(export::read_head(&path, "").unwrap().info.expansion, None);
    // A spec that does not fit the weight is named.
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "expansion".to_string(),
        Expansion::new(3, 25, 5).unwrap().to_json(),
    );
    export::write_head(&path, &head, "", &extra).unwrap();
    let err = export::read_head(&path, "").unwrap_err().to_string();
    assert!(err.contains("25 features") && err.contains("3 columns"), "{err}");
}
