//! Any file given to the `.npy` feature and label readers opens or fails with an `NpyError`,
//! and every row range of an opened file reads or fails with one, never a panic or a huge
//! allocation. Run: `cargo +nightly fuzz run npy_file`.
//!
//! The input is the whole file; it is written to a per-process file in the temporary
//! directory, opened as features and as labels, and read in a few row ranges.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use headstart::ingest::npy::{FeatureFile, LabelFile};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("headstart-fuzz-npy-{}.npy", std::process::id())))
}

/// Row ranges to read from a file of `rows` rows: all of it, halves, single rows at the ends,
/// and some outside it (which must be refused).
fn ranges(rows: u64) -> [(u64, u64); 7] {
    [
        (0, rows),
        (0, rows / 2),
        (rows / 2, rows - rows / 2),
        (rows.saturating_sub(1), 1),
        (rows, 1),
        (0, rows.saturating_add(1)),
        (u64::MAX, 2),
    ]
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("writing the temporary file");

    if let Ok(mut x) = FeatureFile::open(path) {
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

    if let Ok(mut y) = LabelFile::open(path) {
        let rows = y.rows();
        for (start, count) in ranges(rows) {
            let in_range = start.checked_add(count).is_some_and(|end| end <= rows);
            if let Ok(labels) = y.read_rows(start, count) {
                assert!(in_range, "rows {start}+{count} of {rows} read");
                assert_eq!(labels.len() as u64, count);
            }
        }
    }

    let _ = std::fs::remove_file(path);
});
