//! Parquet and safetensors input to `fit`, `ingest` and `push`: the same head as the same
//! rows in `.npy`, whatever the layout; every bad file refused naming its row and column,
//! with nothing applied (an existing state file stays byte-identical).
//!
//! The Parquet files are written here with the parquet crate's `ArrowWriter`, in row groups
//! of 128 rows (600 rows: 5 groups), so that the producers' ranges and the record batches
//! cross row groups.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int8Array, Int32Array, Int64Array,
    LargeListArray, ListArray, RecordBatch, StringArray, UInt16Array, UInt64Array,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field};
use common::{headstart, labelled_data, ok, rel_err};
use headstart::export::read_head;
use headstart::ingest::npy::{write_f32, write_i64};
use headstart::ingest::parquet::{ParquetFeatures, ParquetLabels};
use headstart::ingest::source::{FeatureSpec, LabelSpec};
use headstart::ingest::stream::{Split, StreamConfig, stream_pair};
use headstart::stats::Features;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

const N: usize = 600;
const D: usize = 8;
const CLASSES: [i64; 4] = [3, 5, 11, 20];
/// Heads from the same rows differ only in the order of f64 additions (producers start at
/// row groups in Parquet, at equal shares in .npy), then are stored in f32: a relative
/// difference of at most 1e-6 (f32 rounding is 6e-8; 1e-6 leaves room for the order).
const SAME_ROWS_REL_TOL: f64 = 1e-6;

struct Data {
    dir: tempfile::TempDir,
    x: Vec<f32>,
    y: Vec<i64>,
}

impl Data {
    fn new() -> Self {
        let (x, y) = labelled_data(2026, N, D, &CLASSES);
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let dir = tempfile::tempdir().unwrap();
        write_f32(&dir.path().join("x.npy"), &x, N, D).unwrap();
        write_i64(&dir.path().join("y.npy"), &y).unwrap();
        Data { dir, x, y }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        s(&self.p(name))
    }
    fn x64(&self) -> Vec<f64> {
        self.x.iter().map(|&v| f64::from(v)).collect()
    }
    /// `fit` with the given input arguments into `out`; returns the head's weights and biases.
    fn fit(&self, input: &[&str], out: &str) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
        let out = self.s(out);
        let mut args = vec!["fit", "--out", &out, "--batch", "50"];
        if !input.contains(&"--producers") {
            args.extend(["--producers", "3"]);
        }
        args.extend_from_slice(input);
        ok(&args);
        let head = read_head(Path::new(&out), "").unwrap();
        (head.weight.clone(), head.bias.clone(), head.class_ids.clone())
    }
    /// The head `fit` writes from x.npy and y.npy.
    fn npy_head(&self) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
        let (x, y) = (self.s("x.npy"), self.s("y.npy"));
        self.fit(&["--features", &x, "--labels", &y], "npy.safetensors")
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn assert_same_head(
    a: &(Vec<f64>, Vec<f64>, Vec<i64>),
    b: &(Vec<f64>, Vec<f64>, Vec<i64>),
    tol: f64,
    what: &str,
) {
    assert_eq!(a.2, b.2, "{what}: class ids");
    let (w, bias) = (rel_err(&a.0, &b.0), rel_err(&a.1, &b.1));
    assert!(
        w <= tol && bias <= tol,
        "{what}: weight {w:e}, bias {bias:e} > {tol:e}"
    );
}

fn item(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, true))
}

fn fixed_f32(x: &[f32], d: usize) -> ArrayRef {
    let values = Arc::new(Float32Array::from(x.to_vec()));
    Arc::new(FixedSizeListArray::try_new(item(DataType::Float32), d as i32, values, None).unwrap())
}

fn fixed_f64(x: &[f64], d: usize) -> ArrayRef {
    let values = Arc::new(Float64Array::from(x.to_vec()));
    Arc::new(FixedSizeListArray::try_new(item(DataType::Float64), d as i32, values, None).unwrap())
}

/// A `List<Float32>` column; `lengths` gives each row's length (default `d`).
fn list_f32(x: &[f32], lengths: &[usize], nulls: Option<NullBuffer>) -> ArrayRef {
    let offsets = OffsetBuffer::<i32>::from_lengths(lengths.iter().copied());
    let values = Arc::new(Float32Array::from(x.to_vec()));
    Arc::new(ListArray::try_new(item(DataType::Float32), offsets, values, nulls).unwrap())
}

fn large_list_f64(x: &[f64], d: usize) -> ArrayRef {
    let offsets = OffsetBuffer::<i64>::from_lengths(std::iter::repeat_n(d, x.len() / d));
    let values = Arc::new(Float64Array::from(x.to_vec()));
    Arc::new(LargeListArray::try_new(item(DataType::Float64), offsets, values, None).unwrap())
}

fn int32(y: &[i64]) -> ArrayRef {
    Arc::new(Int32Array::from(y.iter().map(|&v| v as i32).collect::<Vec<_>>()))
}

/// Writes `columns` to a Parquet file in row groups of 128 rows.
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, compression: Compression) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(128))
        .set_compression(compression)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn every_parquet_layout_gives_the_head_of_the_same_npy_rows() {
    let data = Data::new();
    let expected = data.npy_head();
    let (x, x64, y) = (&data.x, data.x64(), &data.y);
    let zstd: Compression = "zstd(1)".parse().unwrap();
    let lengths = vec![D; N];
    let cases: Vec<(&str, ArrayRef, ArrayRef, Compression)> = vec![
        ("fixed_f32_snappy", fixed_f32(x, D), int32(y), Compression::SNAPPY),
        (
            "fixed_f32_plain",
            fixed_f32(x, D),
            Arc::new(Int64Array::from(y.clone())),
            Compression::UNCOMPRESSED,
        ),
        (
            "list_f32_zstd",
            list_f32(x, &lengths, None),
            Arc::new(UInt16Array::from(y.iter().map(|&v| v as u16).collect::<Vec<_>>())),
            zstd,
        ),
        (
            "fixed_f64_lz4",
            fixed_f64(&x64, D),
            Arc::new(Int8Array::from(y.iter().map(|&v| v as i8).collect::<Vec<_>>())),
            Compression::LZ4_RAW,
        ),
        (
            "large_list_f64_gzip",
            large_list_f64(&x64, D),
            int32(y),
            Compression::GZIP(Default::default()),
        ),
    ];
    for (name, features, labels, compression) in cases {
        let file = format!("{name}.parquet");
        let id: ArrayRef = Arc::new(Int64Array::from((0..N as i64).collect::<Vec<_>>()));
        write_parquet(
            &data.p(&file),
            vec![("id", id), ("emb", features), ("label", labels)],
            compression,
        );
        let f = data.s(&file);
        let head = data.fit(
            &[
                "--features",
                &f,
                "--feature-column",
                "emb",
                "--label-column",
                "label",
            ],
            &format!("{name}.safetensors"),
        );
        assert_same_head(&head, &expected, SAME_ROWS_REL_TOL, name);
    }

    // Found by its magic without the extension, and with one producer per row group.
    std::fs::copy(data.p("fixed_f32_snappy.parquet"), data.p("features.bin")).unwrap();
    let f = data.s("features.bin");
    let head = data.fit(
        &[
            "--features",
            &f,
            "--feature-column",
            "emb",
            "--label-column",
            "label",
            "--producers",
            "5",
        ],
        "magic.safetensors",
    );
    assert_same_head(&head, &expected, SAME_ROWS_REL_TOL, "by magic");
}

#[test]
fn labels_come_from_a_second_npy_or_parquet_file() {
    let data = Data::new();
    let expected = data.npy_head();
    write_parquet(
        &data.p("x.parquet"),
        vec![("emb", fixed_f32(&data.x, D))],
        Compression::SNAPPY,
    );
    write_parquet(
        &data.p("y.parquet"),
        vec![("cls", int32(&data.y))],
        Compression::UNCOMPRESSED,
    );
    let (f, ynpy, ypq) = (data.s("x.parquet"), data.s("y.npy"), data.s("y.parquet"));
    let head = data.fit(
        &["--features", &f, "--feature-column", "emb", "--labels", &ynpy],
        "a.safetensors",
    );
    assert_same_head(&head, &expected, SAME_ROWS_REL_TOL, "labels from .npy");
    let head = data.fit(
        &[
            "--features",
            &f,
            "--feature-column",
            "emb",
            "--labels",
            &ypq,
            "--label-column",
            "cls",
        ],
        "b.safetensors",
    );
    assert_same_head(&head, &expected, SAME_ROWS_REL_TOL, "labels from .parquet");
    // .npy features with Parquet labels.
    let x = data.s("x.npy");
    let head = data.fit(
        &["--features", &x, "--labels", &ypq, "--label-column", "cls"],
        "c.safetensors",
    );
    assert_same_head(
        &head,
        &expected,
        SAME_ROWS_REL_TOL,
        ".npy features, Parquet labels",
    );
    let meta = read_head(&data.p("b.safetensors"), "").unwrap().metadata;
    assert_eq!(meta["feature_column"], "emb");
    assert_eq!(meta["label_column"], "cls");
    assert_eq!(meta["labels"], ypq);
}

#[test]
fn ingest_states_and_the_validation_split_match_npy() {
    let data = Data::new();
    write_parquet(
        &data.p("d.parquet"),
        vec![("emb", fixed_f32(&data.x, D)), ("label", int32(&data.y))],
        Compression::SNAPPY,
    );
    let (x, y, f) = (data.s("x.npy"), data.s("y.npy"), data.s("d.parquet"));
    let (a, b) = (data.s("a.hs"), data.s("b.hs"));
    ok(&[
        "ingest",
        "--features",
        &x,
        "--labels",
        &y,
        "--state",
        &a,
        "--producers",
        "1",
        "--batch",
        "600",
    ]);
    ok(&[
        "ingest",
        "--features",
        &f,
        "--feature-column",
        "emb",
        "--label-column",
        "label",
        "--state",
        &b,
        "--producers",
        "1",
        "--batch",
        "600",
    ]);
    // One producer, one batch of every row in file order: the same sums in the same order.
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "state files differ"
    );

    // The seeded split holds out the same rows.
    let lambda = ["--lambda", "auto", "--val-fraction", "0.25", "--seed", "9"];
    let (mut npy, mut pq) = (
        vec!["--features", x.as_str(), "--labels", y.as_str()],
        vec![
            "--features",
            f.as_str(),
            "--feature-column",
            "emb",
            "--label-column",
            "label",
        ],
    );
    npy.extend(lambda);
    pq.extend(lambda);
    data.fit(&npy, "va.safetensors");
    data.fit(&pq, "vb.safetensors");
    let (ma, mb) = (
        read_head(&data.p("va.safetensors"), "").unwrap().metadata,
        read_head(&data.p("vb.safetensors"), "").unwrap().metadata,
    );
    assert_eq!(ma["samples"], mb["samples"]);
    assert_eq!(ma["class_counts"], mb["class_counts"]);
    assert!(ma["samples"].parse::<usize>().unwrap() < N);

    // Held-out data from a Parquet file (labels in it) picks the λ that the same .npy rows do;
    // --feature-column and --label-column then name the held-out file's columns only.
    let auto = ["--lambda", "auto", "--lambda-grid", "1e-4,1e-2,1,100"];
    let mut npy = vec![
        "--features",
        x.as_str(),
        "--labels",
        y.as_str(),
        "--val-features",
        x.as_str(),
        "--val-labels",
        y.as_str(),
    ];
    npy.extend(auto);
    let mut pq = vec![
        "--features",
        x.as_str(),
        "--labels",
        y.as_str(),
        "--val-features",
        f.as_str(),
        "--feature-column",
        "emb",
        "--label-column",
        "label",
    ];
    pq.extend(auto);
    data.fit(&npy, "auto_npy.safetensors");
    data.fit(&pq, "auto_pq.safetensors");
    let (ma, mb) = (
        read_head(&data.p("auto_npy.safetensors"), "").unwrap().metadata,
        read_head(&data.p("auto_pq.safetensors"), "").unwrap().metadata,
    );
    assert_eq!(ma["lambda"], mb["lambda"]);
    // A column option that fits neither pair is refused.
    let out = headstart(&[
        "fit",
        "--out",
        &data.s("no.safetensors"),
        "--features",
        &x,
        "--labels",
        &y,
        "--val-features",
        &x,
        "--val-labels",
        &y,
        "--feature-column",
        "emb",
        "--lambda",
        "auto",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--feature-column applies to Parquet features, but none of"),
        "{err}"
    );
}

#[test]
fn the_library_streams_any_range_and_any_number_of_producers() {
    let data = Data::new();
    let lengths = vec![D; N];
    write_parquet(
        &data.p("d.parquet"),
        vec![
            ("emb", list_f32(&data.x, &lengths, None)),
            ("label", int32(&data.y)),
        ],
        Compression::SNAPPY,
    );
    let mut reader = ParquetFeatures::open(&data.p("d.parquet"), Some("emb")).unwrap();
    assert_eq!(reader.row_groups(), &[0, 128, 256, 384, 512]);
    // Backwards, across row groups, and a single row.
    for (start, count) in [(500u64, 100u64), (100, 300), (0, 1), (127, 2), (599, 1), (0, 600)] {
        let Features::F32(rows) = reader.read_rows(start, count).unwrap() else {
            panic!("f32")
        };
        let (a, b) = (start as usize * D, (start + count) as usize * D);
        assert_eq!(rows, data.x[a..b], "rows {start}..{}", start + count);
    }
    assert!(
        reader
            .read_rows(599, 2)
            .unwrap_err()
            .to_string()
            .contains("rows 599..601 requested")
    );

    let (fs, ls) = (
        FeatureSpec::new(&data.p("d.parquet"), Some("emb".into())),
        LabelSpec::new(&data.p("d.parquet"), Some("label".into())),
    );
    let reference = {
        let mut s = headstart::stats::Stats::new(D);
        s.update(&data.x, &data.y).unwrap();
        s
    };
    for (producers, batch) in [(1, 600), (2, 7), (3, 128), (7, 1000)] {
        let config = StreamConfig {
            batch,
            producers,
            ..StreamConfig::default()
        };
        let streamed = stream_pair(&fs, &ls, &config, |_| {}).unwrap();
        assert_eq!(streamed.train.samples(), N as u64);
        assert_eq!(streamed.train.classes(), reference.classes());
        for &c in &CLASSES {
            assert_eq!(streamed.train.class_count(c), reference.class_count(c));
        }
    }
    let split = Split {
        fraction: 0.3,
        seed: 4,
    };
    let held = (0..N as u64).filter(|&r| split.is_validation(r)).count() as u64;
    let config = StreamConfig {
        batch: 33,
        producers: 2,
        split: Some(split),
        ..StreamConfig::default()
    };
    let streamed = stream_pair(&fs, &ls, &config, |_| {}).unwrap();
    assert_eq!(streamed.validation.unwrap().samples(), held);
    assert_eq!(streamed.train.samples(), N as u64 - held);
}

#[test]
fn wide_rows_are_decoded_in_pieces_and_gathered() {
    // 4096 float32 or 2048 float64 values a row: the reader decodes 16 rows at a time
    // (256 KiB), so a read of 50 rows gathers four pieces and keeps the rest for the next.
    let dir = tempfile::tempdir().unwrap();
    let rows = 300usize;
    for (d, f64s) in [(4096usize, false), (2048, true)] {
        let (x, y) = labelled_data(5, rows, d, &CLASSES);
        let mut bad = x.clone();
        bad[257 * d + d - 1] = f64::NEG_INFINITY;
        let lengths = vec![d; rows];
        let column = |x: &[f64]| -> ArrayRef {
            if f64s {
                large_list_f64(x, d)
            } else {
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                list_f32(&x32, &lengths, None)
            }
        };
        let (good_path, bad_path) = (
            dir.path().join(format!("w{d}.parquet")),
            dir.path().join(format!("b{d}.parquet")),
        );
        write_parquet(
            &good_path,
            vec![("emb", column(&x)), ("label", int32(&y))],
            Compression::SNAPPY,
        );
        write_parquet(
            &bad_path,
            vec![("emb", column(&bad)), ("label", int32(&y))],
            Compression::SNAPPY,
        );

        let mut reader = ParquetFeatures::open(&good_path, Some("emb")).unwrap();
        let expected = |a: usize, b: usize| -> Vec<f64> {
            if f64s {
                x[a * d..b * d].to_vec()
            } else {
                x[a * d..b * d].iter().map(|&v| f64::from(v as f32)).collect()
            }
        };
        let mut row = 0u64;
        for count in [50u64, 50, 7, 93, 100] {
            let got: Vec<f64> = match reader.read_rows(row, count).unwrap() {
                Features::F32(v) => v.iter().map(|&v| f64::from(v)).collect(),
                Features::F64(v) => v,
            };
            assert_eq!(
                got,
                expected(row as usize, (row + count) as usize),
                "d {d}, rows {row}..{}",
                row + count
            );
            row += count;
        }
        let got = reader.read_rows(120, 17).unwrap();
        assert_eq!(got.len(), 17 * d);

        let (fs, ls) = (
            FeatureSpec::new(&good_path, Some("emb".into())),
            LabelSpec::new(&good_path, Some("label".into())),
        );
        let config = StreamConfig {
            batch: 50,
            producers: 2,
            ..StreamConfig::default()
        };
        let streamed = stream_pair(&fs, &ls, &config, |_| {}).unwrap();
        assert_eq!(streamed.train.samples(), rows as u64);

        let mut reader = ParquetFeatures::open(&bad_path, Some("emb")).unwrap();
        let err = reader.read_rows(200, 100).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "row 257, column 'emb': element {}: feature value -inf is not finite",
                d - 1
            )),
            "{err}"
        );
        let (fs, ls) = (
            FeatureSpec::new(&bad_path, Some("emb".into())),
            LabelSpec::new(&bad_path, Some("label".into())),
        );
        let err = stream_pair(&fs, &ls, &config, |_| {}).unwrap_err().to_string();
        assert!(err.contains("row 257"), "{err}");
    }
}

/// A state file with some samples, and its bytes.
fn seeded_state(data: &Data) -> (String, Vec<u8>) {
    let (x, y, state) = (data.s("x.npy"), data.s("y.npy"), data.s("keep.hs"));
    if !data.p("keep.hs").exists() {
        ok(&["ingest", "--features", &x, "--labels", &y, "--state", &state]);
    }
    let bytes = std::fs::read(&state).unwrap();
    (state, bytes)
}

/// `fit`, `ingest` (onto an existing state) and `push` (prevalidation; no server needed, as
/// nothing is sent) each fail with every needle in their one-line message, and the state file
/// stays byte-identical.
/// [`refused_everywhere`] for `file` in the data folder, read with `--feature-column emb
/// --label-column label`.
fn refused_with_columns(data: &Data, file: &str, needles: &[&str]) {
    let f = data.s(file);
    refused_everywhere(
        data,
        &[
            "--features",
            &f,
            "--feature-column",
            "emb",
            "--label-column",
            "label",
        ],
        needles,
    );
}

fn refused_everywhere(data: &Data, input: &[&str], needles: &[&str]) {
    let out = data.s("never.safetensors");
    let (state, before) = seeded_state(data);
    let runs: [(Vec<&str>, &str); 3] = [
        (vec!["fit", "--out", &out], "fit"),
        (vec!["ingest", "--state", &state], "ingest"),
        (vec!["push", "--connect", "127.0.0.1:9"], "push"),
    ];
    for (mut args, command) in runs {
        args.extend_from_slice(input);
        let result = headstart(&args);
        assert!(!result.status.success(), "{command} {input:?} should fail");
        let err = String::from_utf8_lossy(&result.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{command}: expected one line, got {err}");
        for n in needles {
            assert!(
                lines[0].contains(n),
                "{command}: '{n}' missing from: {}",
                lines[0]
            );
        }
        if command == "push" && needles.iter().any(|n| n.starts_with("row ")) {
            assert!(lines[0].contains("nothing was sent"), "{}", lines[0]);
        }
        assert!(!data.p("never.safetensors").exists(), "fit left an output");
        assert_eq!(
            std::fs::read(&state).unwrap(),
            before,
            "{command} changed the state file"
        );
    }
}

#[test]
fn bad_rows_are_refused_by_row_and_column_and_nothing_is_applied() {
    let data = Data::new();
    let (x, y) = (&data.x, &data.y);
    const BAD: usize = 301; // in the third row group
    let write = |name: &str, emb: ArrayRef| {
        write_parquet(
            &data.p(name),
            vec![("emb", emb), ("label", int32(y))],
            Compression::SNAPPY,
        );
        data.s(name)
    };
    let run = |file: &str, needles: &[&str]| {
        refused_everywhere(
            &data,
            &[
                "--features",
                file,
                "--feature-column",
                "emb",
                "--label-column",
                "label",
            ],
            needles,
        );
    };

    // A list one value short.
    let mut lengths = vec![D; N];
    lengths[BAD] = D - 1;
    let short: Vec<f32> = x
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != BAD * D)
        .map(|(_, v)| *v)
        .collect();
    run(
        &write("short.parquet", list_f32(&short, &lengths, None)),
        &[
            "short.parquet",
            "row 301",
            "column 'emb'",
            "the list has 7 values; expected 8",
        ],
    );

    // A null list (FixedSizeList and List).
    let mut valid = vec![true; N];
    valid[BAD] = false;
    let values = Arc::new(Float32Array::from(x.clone()));
    let null_fixed = FixedSizeListArray::try_new(
        item(DataType::Float32),
        D as i32,
        values,
        Some(NullBuffer::from(valid.clone())),
    )
    .unwrap();
    run(
        &write("null_fixed.parquet", Arc::new(null_fixed)),
        &["row 301", "column 'emb'", "the list is null"],
    );
    let mut lengths = vec![D; N];
    lengths[BAD] = 0;
    let without: Vec<f32> = x
        .chunks(D)
        .enumerate()
        .filter(|(i, _)| *i != BAD)
        .flat_map(|(_, r)| r.to_vec())
        .collect();
    run(
        &write(
            "null_list.parquet",
            list_f32(&without, &lengths, Some(NullBuffer::from(valid))),
        ),
        &["row 301", "the list is null"],
    );

    // A null element.
    let mut builder = ListBuilder::new(Float32Builder::new());
    for (r, row) in x.chunks(D).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            if r == BAD && c == 2 {
                builder.values().append_null();
            } else {
                builder.values().append_value(v);
            }
        }
        builder.append(true);
    }
    run(
        &write("null_element.parquet", Arc::new(builder.finish())),
        &["row 301", "column 'emb'", "element 2 is null"],
    );

    // NaN and Inf (FixedSizeList<f32>, FixedSizeList<f64>).
    for (name, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let mut xb = x.clone();
        xb[BAD * D + 5] = bad;
        let text = format!("{bad:?}");
        run(
            &write(&format!("{name}.parquet"), fixed_f32(&xb, D)),
            &["row 301", "column 'emb'", "element 5", &text, "not finite"],
        );
        let xb64: Vec<f64> = xb.iter().map(|&v| f64::from(v)).collect();
        run(
            &write(&format!("{name}64.parquet"), fixed_f64(&xb64, D)),
            &["row 301", "element 5", "not finite"],
        );
    }
}

#[test]
fn bad_columns_are_refused_listing_the_columns_and_their_types() {
    let data = Data::new();
    let (x, y) = (&data.x, &data.y);
    let names: ArrayRef = Arc::new(StringArray::from(
        (0..N).map(|i| format!("r{i}")).collect::<Vec<_>>(),
    ));
    let mut nested = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
    for row in x.chunks(D) {
        nested.values().values().append_slice(row);
        nested.values().append(true);
        nested.append(true);
    }
    let floats: ArrayRef = Arc::new(Float32Array::from(
        y.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    ));
    write_parquet(
        &data.p("cols.parquet"),
        vec![
            ("name", names),
            ("nested", Arc::new(nested.finish())),
            ("emb", fixed_f32(x, D)),
            ("score", floats),
            ("label", int32(y)),
        ],
        Compression::SNAPPY,
    );
    let f = data.s("cols.parquet");
    let listing = [
        "name (Utf8)",
        "nested (List(",
        "emb (FixedSizeList(",
        "score (Float32)",
        "label (Int32)",
    ];
    let with =
        |extra: &[&str]| -> Vec<String> { listing.iter().chain(extra).map(|s| s.to_string()).collect() };
    let cases: [(&str, &str, Vec<String>); 4] = [
        ("nope", "label", with(&["no column 'nope'"])),
        (
            "name",
            "label",
            with(&[
                "column 'name' has type Utf8",
                "features must be a list of Float32 or Float64",
            ]),
        ),
        (
            "nested",
            "label",
            with(&["column 'nested' has type List(", "features must be a list"]),
        ),
        (
            "emb",
            "score",
            with(&["column 'score' has type Float32", "labels must be integers"]),
        ),
    ];
    for (feature, label, needles) in cases {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        refused_everywhere(
            &data,
            &[
                "--features",
                &f,
                "--feature-column",
                feature,
                "--label-column",
                label,
            ],
            &needles,
        );
    }
    // A missing label column, and no column named at all.
    refused_everywhere(
        &data,
        &[
            "--features",
            &f,
            "--feature-column",
            "emb",
            "--label-column",
            "cls",
        ],
        &["no column 'cls'", "label (Int32)"],
    );
    refused_everywhere(
        &data,
        &["--features", &f, "--label-column", "label"],
        &["--feature-column is required", "emb (FixedSizeList("],
    );
    refused_everywhere(
        &data,
        &["--features", &f, "--feature-column", "emb"],
        &["--label-column", "--labels"],
    );

    // Labels: null, and an unsigned value above i64::MAX.
    let nulls: ArrayRef = Arc::new(Int32Array::from(
        (0..N).map(|i| (i != 450).then_some(3)).collect::<Vec<_>>(),
    ));
    write_parquet(
        &data.p("null_label.parquet"),
        vec![("emb", fixed_f32(x, D)), ("label", nulls)],
        Compression::SNAPPY,
    );
    refused_with_columns(
        &data,
        "null_label.parquet",
        &["row 450", "column 'label'", "the label is null"],
    );
    let huge: ArrayRef = Arc::new(UInt64Array::from(
        (0..N as u64)
            .map(|i| if i == 77 { u64::MAX } else { 3 })
            .collect::<Vec<_>>(),
    ));
    write_parquet(
        &data.p("huge.parquet"),
        vec![("emb", fixed_f32(x, D)), ("label", huge)],
        Compression::SNAPPY,
    );
    refused_with_columns(
        &data,
        "huge.parquet",
        &["row 77", "label 18446744073709551615 does not fit"],
    );

    // Flags that do not fit the format.
    let (xn, yn) = (data.s("x.npy"), data.s("y.npy"));
    refused_everywhere(
        &data,
        &["--features", &xn, "--labels", &yn, "--feature-column", "emb"],
        &[
            "--feature-column applies to Parquet features",
            "x.npy is a .npy file",
        ],
    );
    refused_everywhere(
        &data,
        &["--features", &xn],
        &["--labels is required with .npy features"],
    );
}

/// Writes tensors to a safetensors file.
fn write_tensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| (*name, TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn bytes<T: Copy, const K: usize>(values: &[T], le: impl Fn(T) -> [u8; K]) -> Vec<u8> {
    values.iter().flat_map(|&v| le(v)).collect()
}

#[test]
fn safetensors_features_give_the_head_of_the_same_npy_rows() {
    let data = Data::new();
    let expected = data.npy_head();
    let (x, y) = (&data.x, &data.y);
    let y32: Vec<i32> = y.iter().map(|&v| v as i32).collect();
    let labels = bytes(&y32, i32::to_le_bytes);
    for (name, dtype, raw) in [
        ("f32", Dtype::F32, bytes(x, f32::to_le_bytes)),
        ("f64", Dtype::F64, bytes(&data.x64(), f64::to_le_bytes)),
    ] {
        let file = data.p(&format!("{name}.safetensors"));
        write_tensors(
            &file,
            &[
                ("feats", dtype, vec![N, D], raw),
                ("y", Dtype::I32, vec![N], labels.clone()),
            ],
        );
        let f = s(&file);
        let head = data.fit(
            &["--features", &f, "--tensor", "feats", "--label-tensor", "y"],
            &format!("h_{name}.safetensors"),
        );
        assert_same_head(&head, &expected, SAME_ROWS_REL_TOL, name);
    }
    // Labels from .npy.
    let (f, ynpy) = (data.s("f32.safetensors"), data.s("y.npy"));
    let head = data.fit(
        &["--features", &f, "--tensor", "feats", "--labels", &ynpy],
        "h_npy_labels.safetensors",
    );
    assert_same_head(&head, &expected, SAME_ROWS_REL_TOL, "labels from .npy");

    // F16 and BF16: exactly the head of their values widened to f32, and within their
    // rounding of the f32 head (a relative error of 2^-11 and 2^-8 per value; the heads
    // moved by 1.5e-3 and 1.2e-2 when written).
    for (name, dtype, raw, widened, tol) in [
        (
            "f16",
            Dtype::F16,
            bytes(x, |v| half::f16::from_f32(v).to_le_bytes()),
            x.iter()
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect::<Vec<f32>>(),
            5e-3,
        ),
        (
            "bf16",
            Dtype::BF16,
            bytes(x, |v| half::bf16::from_f32(v).to_le_bytes()),
            x.iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect::<Vec<f32>>(),
            4e-2,
        ),
    ] {
        let file = data.p(&format!("{name}.safetensors"));
        write_tensors(
            &file,
            &[
                ("feats", dtype, vec![N, D], raw),
                ("y", Dtype::U8, vec![N], y.iter().map(|&v| v as u8).collect()),
            ],
        );
        let npy = data.p(&format!("{name}.npy"));
        write_f32(&npy, &widened, N, D).unwrap();
        let (f, xw, ynpy) = (s(&file), s(&npy), data.s("y.npy"));
        let head = data.fit(
            &["--features", &f, "--tensor", "feats", "--label-tensor", "y"],
            &format!("h_{name}.safetensors"),
        );
        let exact = data.fit(
            &["--features", &xw, "--labels", &ynpy],
            &format!("h_{name}_npy.safetensors"),
        );
        assert_same_head(&head, &exact, SAME_ROWS_REL_TOL, name);
        assert_same_head(&head, &expected, tol, &format!("{name} against f32"));
    }
}

#[test]
fn bad_safetensors_inputs_are_refused_and_nothing_is_applied() {
    let data = Data::new();
    let (x, y) = (&data.x, &data.y);
    let labels = bytes(y, i64::to_le_bytes);
    let file = data.p("t.safetensors");
    let mut xb = x.clone();
    xb[250 * D + 6] = f32::NAN;
    write_tensors(
        &file,
        &[
            ("feats", Dtype::F32, vec![N, D], bytes(x, f32::to_le_bytes)),
            ("cube", Dtype::F32, vec![N, 2, 4], bytes(x, f32::to_le_bytes)),
            ("nan", Dtype::F32, vec![N, D], bytes(&xb, f32::to_le_bytes)),
            ("ids", Dtype::I64, vec![N], labels.clone()),
            ("short", Dtype::I64, vec![N - 1], labels[..(N - 1) * 8].to_vec()),
            (
                "float_ids",
                Dtype::F32,
                vec![N],
                bytes(x, f32::to_le_bytes)[..N * 4].to_vec(),
            ),
        ],
    );
    let f = s(&file);
    let listing = [
        "feats (F32 [600, 8])",
        "cube (F32 [600, 2, 4])",
        "ids (I64 [600])",
    ];
    let run = |tensor: &str, label: &str, needles: &[&str]| {
        refused_everywhere(
            &data,
            &["--features", &f, "--tensor", tensor, "--label-tensor", label],
            needles,
        );
    };
    let mut missing = vec!["no tensor 'nope'"];
    missing.extend(listing);
    run("nope", "ids", &missing);
    let mut cube = vec!["tensor 'cube' has shape [600, 2, 4]", "2-D"];
    cube.extend(listing);
    run("cube", "ids", &cube);
    run(
        "feats",
        "short",
        &[
            "(tensor 'feats') has 600 rows but",
            "(tensor 'short') has 599 labels",
        ],
    );
    run(
        "nan",
        "ids",
        &["tensor 'nan', row 250, column 6", "NaN", "not finite"],
    );
    run(
        "feats",
        "float_ids",
        &[
            "tensor 'float_ids' has dtype F32",
            "labels must be an integer dtype",
        ],
    );
    refused_everywhere(
        &data,
        &["--features", &f, "--label-tensor", "ids"],
        &["--tensor is required", "feats (F32 [600, 8])"],
    );
    // A label count that disagrees with a second file.
    write_i64(&data.p("y_short.npy"), &y[..N - 1]).unwrap();
    let ys = data.s("y_short.npy");
    refused_everywhere(
        &data,
        &["--features", &f, "--tensor", "feats", "--labels", &ys],
        &["has 600 rows but", "599 labels"],
    );
}

/// Inputs the fuzzer found (tests/data/fuzz/): each once panicked or looped forever inside
/// the parquet crate. Opening and reading them as features and as labels (the fuzz target's
/// calls) must not panic or hang (each file reads in microseconds; the limit is 60 s), and
/// each must be refused somewhere with an error that names the file.
#[test]
fn inputs_the_fuzzer_found_are_refused_naming_the_file() {
    common::within(std::time::Duration::from_secs(60), refuse_the_fuzzer_inputs);
}

fn refuse_the_fuzzer_inputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        seen += 1;
        let mut errors = Vec::new();
        for name in ["x", "y"] {
            // From the start, and from the middle (a seek inside a row group).
            match ParquetFeatures::open(&path, Some(name)) {
                Ok(mut x) => {
                    let rows = x.rows();
                    for (start, count) in [(0, rows.min(64)), (rows / 2, (rows - rows / 2).min(64))] {
                        errors.extend(x.read_rows(start, count).err().map(|e| e.to_string()));
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
            match ParquetLabels::open(&path, Some(name)) {
                Ok(mut y) => {
                    let rows = y.rows();
                    for (start, count) in [(0, rows.min(64)), (rows / 2, (rows - rows / 2).min(64))] {
                        errors.extend(y.read_rows(start, count).err().map(|e| e.to_string()));
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        assert!(!errors.is_empty(), "{} was read without an error", path.display());
        for err in errors {
            assert!(err.contains(&s(&path)), "{err}");
        }
    }
    assert!(seen > 0, "no fuzz inputs in {}", dir.display());
}

/// A page bigger than `HEADSTART_MAX_PAGE_MIB` is refused before it is decoded, naming the
/// file, the column and the limit; raising the limit (or the 1 GiB default) reads it.
#[test]
fn a_page_above_the_limit_is_refused_naming_file_column_and_limit_until_it_is_raised() {
    let data = Data::new();
    // 40 000 rows of 8 f32 in one 1.28 MB page, uncompressed.
    let rows = 40_000;
    let x: Vec<f32> = (0..rows * D).map(|i| (i % 97) as f32 / 97.0).collect();
    let y: Vec<i64> = (0..rows).map(|i| CLASSES[i % CLASSES.len()]).collect();
    let batch = RecordBatch::try_from_iter([("emb", fixed_f32(&x, D)), ("label", int32(&y))]).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_data_page_size_limit(64 << 20)
        .set_data_page_row_count_limit(usize::MAX)
        .build();
    let path = data.p("big_page.parquet");
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let out = data.s("big.safetensors");
    let run = |limit: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_headstart"));
        cmd.args([
            "fit",
            "--out",
            &out,
            "--features",
            &s(&path),
            "--feature-column",
            "emb",
        ])
        .args(["--label-column", "label"]);
        match limit {
            Some(mib) => cmd.env(headstart::ingest::parquet::MAX_PAGE_ENV, mib),
            None => cmd.env_remove(headstart::ingest::parquet::MAX_PAGE_ENV),
        };
        cmd.output().unwrap()
    };
    let refused = run(Some("1"));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    for needle in [
        &s(&path),
        "column 'emb'",
        "uncompressed bytes",
        "limit of 1048576 bytes",
        "HEADSTART_MAX_PAGE_MIB",
    ] {
        assert!(err.contains(needle), "'{needle}' missing from: {err}");
    }
    assert!(!data.p("big.safetensors").exists());
    let bad = run(Some("lots"));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a positive number of MiB"));
    for limit in [Some("2"), None] {
        let fine = run(limit);
        assert!(fine.status.success(), "{}", String::from_utf8_lossy(&fine.stderr));
    }
}

/// A safetensors header that lies (a length beyond the file, absurd shapes, offsets outside
/// the data or overflowing) is refused at open, naming the file, without allocating what it
/// claims (the test would abort on a 2⁶⁰-element allocation).
#[test]
fn hostile_safetensors_headers_are_refused_naming_the_file() {
    use headstart::ingest::safetensors::{TensorFeatures, TensorLabels};
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, header: &str, data: usize| {
        let path = dir.path().join(name);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let huge = 1u64 << 40;
    let cases = [
        // header length 2⁶⁰: more than the file.
        {
            let path = dir.path().join("long_header.safetensors");
            let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
            bytes.extend_from_slice(b"{}");
            std::fs::write(&path, bytes).unwrap();
            path
        },
        file(
            "shape.safetensors",
            &format!(r#"{{"x":{{"dtype":"F32","shape":[{huge},{huge}],"data_offsets":[0,16]}}}}"#),
            16,
        ),
        file(
            "overflow.safetensors",
            &format!(
                r#"{{"x":{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,0]}}}}"#,
                u64::MAX / 2,
                4
            ),
            16,
        ),
        file(
            "offsets.safetensors",
            r#"{"x":{"dtype":"F32","shape":[1000,4],"data_offsets":[0,16000]}}"#,
            16,
        ),
        file(
            "backwards.safetensors",
            r#"{"x":{"dtype":"F32","shape":[1,4],"data_offsets":[16,0]}}"#,
            16,
        ),
    ];
    for path in &cases {
        let features = TensorFeatures::open(path, Some("x")).err().map(|e| e.to_string());
        let labels = TensorLabels::open(path, Some("x")).err().map(|e| e.to_string());
        for err in [features, labels] {
            let err = err.unwrap_or_else(|| panic!("{} opened", path.display()));
            assert!(err.contains(&s(path)), "{err}");
        }
    }
}
