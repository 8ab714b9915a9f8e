//! Any file given to the Parquet feature and label readers opens or fails with a
//! `ParquetInputError`, and every row range of an opened column reads or fails with one:
//! never a panic, a hang or an allocation beyond the documented limit. Run:
//! `cargo +nightly fuzz run parquet_file`.
//!
//! The input is the whole file. It is written to a per-process file in the temporary
//! directory and opened with the column names the seeds use (`x` for features, `y` for
//! labels), then read in a few row ranges. Panics of the parquet crate's decoder, which the
//! reader turns into errors, are not crashes here; every other panic is.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use headstart::ingest::parquet::{ParquetFeatures, ParquetLabels};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("headstart-fuzz-parquet-{}.parquet", std::process::id())))
}

/// Row ranges to read from a column of `rows` rows: a prefix, the middle, the last row, and
/// some outside it (which must be refused).
fn ranges(rows: u64) -> [(u64, u64); 5] {
    [
        (0, rows.min(64)),
        (rows / 2, (rows - rows / 2).min(64)),
        (rows.saturating_sub(1), rows.min(1)),
        (rows, 1),
        (u64::MAX, 2),
    ]
}

// libFuzzer's hook aborts on every panic, even one that is caught. The reader catches the
// parquet crate's decoder panics and returns them as errors, so only those are let through;
// any other panic still aborts.
fuzz_target!(init: headstart::ingest::parquet::quiet_decoder_panics(), |data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("writing the temporary file");

    for name in ["x", "y"] {
        if let Ok(mut x) = ParquetFeatures::open(path, Some(name)) {
            let (rows, dim) = (x.rows(), x.dim());
            assert!(dim > 0);
            for (start, count) in ranges(rows) {
                let in_range = start.checked_add(count).is_some_and(|end| end <= rows);
                if let Ok(features) = x.read_rows(start, count) {
                    assert!(in_range, "rows {start}+{count} of {rows} read");
                    assert_eq!(features.len() as u64, count * dim as u64);
                }
            }
        }
        if let Ok(mut y) = ParquetLabels::open(path, Some(name)) {
            let rows = y.rows();
            for (start, count) in ranges(rows) {
                let in_range = start.checked_add(count).is_some_and(|end| end <= rows);
                if let Ok(labels) = y.read_rows(start, count) {
                    assert!(in_range, "rows {start}+{count} of {rows} read");
                    assert_eq!(labels.len() as u64, count);
                }
            }
        }
    }

    let _ = std::fs::remove_file(path);
});
