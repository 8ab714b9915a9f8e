//! `.npy` files written by numpy (tests/data), read back; malformed files refused.
//!
//! The files were made with numpy 2:
//! ```python
//! x = (np.arange(12, dtype=np.float64).reshape(4, 3) - 5.5) / 4
//! np.save("x_f32.npy", x.astype("<f4")); np.save("x_f64_big.npy", x.astype(">f8"))
//! np.save("x_fortran.npy", np.asfortranarray(x.astype("<f4")))
//! np.save("x_int.npy", np.arange(12, dtype=np.int32).reshape(4, 3))
//! np.save("x_3d.npy", np.zeros((2, 2, 2), dtype=np.float32))
//! xn = x.astype(np.float32).copy(); xn[2, 1] = np.nan; np.save("x_nan_row2_col1.npy", xn)
//! np.save("y_i32.npy", np.array([7, -1, 7, 300], dtype="<i4"))
//! np.save("y_u8.npy", np.array([7, 1, 7, 255], dtype="u1"))
//! np.save("y_i16_big.npy", np.array([7, -1, 7, 300], dtype=">i2"))
//! np.save("y_float.npy", np.array([7, 1, 7, 3], dtype=np.float32))
//! np.save("y_short.npy", np.array([7, 1, 7], dtype=np.int64))
//! np.save("y_u64_huge.npy", np.array([1, 2, 2**63 + 5, 0], dtype=np.uint64))
//! ```

use std::path::{Path, PathBuf};

use headstart::ingest::npy::{FeatureFile, LabelFile, NpyError};
use headstart::stats::Features;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn expected_x() -> Vec<f64> {
    (0..12).map(|v| (v as f64 - 5.5) / 4.0).collect()
}

#[test]
fn reads_float32_and_big_endian_float64_written_by_numpy() {
    let mut f = FeatureFile::open(&data("x_f32.npy")).unwrap();
    assert_eq!((f.rows(), f.dim()), (4, 3));
    let Features::F32(all) = f.read_rows(0, 4).unwrap() else {
        panic!("expected f32")
    };
    assert_eq!(all.iter().map(|&v| v as f64).collect::<Vec<_>>(), expected_x());
    let Features::F32(tail) = f.read_rows(2, 2).unwrap() else {
        panic!("expected f32")
    };
    assert_eq!(
        tail.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        expected_x()[6..]
    );

    let mut g = FeatureFile::open(&data("x_f64_big.npy")).unwrap();
    assert_eq!(g.read_rows(0, 4).unwrap(), Features::F64(expected_x()));
}

#[test]
fn reads_every_integer_label_dtype() {
    for (file, expected) in [
        ("y_i32.npy", vec![7, -1, 7, 300]),
        ("y_u8.npy", vec![7, 1, 7, 255]),
        ("y_i16_big.npy", vec![7, -1, 7, 300]),
    ] {
        let mut y = LabelFile::open(&data(file)).unwrap();
        assert_eq!(y.read_rows(0, 4).unwrap(), expected, "{file}");
    }
}

fn message(e: NpyError) -> String {
    e.to_string()
}

#[test]
fn refuses_wrong_dtypes_ranks_and_order_with_the_path() {
    let cases = [
        (
            FeatureFile::open(&data("x_int.npy")).err().map(message),
            "x_int.npy",
            "expected float32 or float64",
        ),
        (
            FeatureFile::open(&data("x_3d.npy")).err().map(message),
            "x_3d.npy",
            "expected a 2-D array",
        ),
        (
            FeatureFile::open(&data("x_fortran.npy")).err().map(message),
            "x_fortran.npy",
            "Fortran",
        ),
        (
            LabelFile::open(&data("y_float.npy")).err().map(message),
            "y_float.npy",
            "expected an integer dtype",
        ),
        (
            LabelFile::open(&data("x_f32.npy")).err().map(message),
            "x_f32.npy",
            "expected a 1-D array",
        ),
    ];
    for (err, file, needle) in cases {
        let err = err.unwrap_or_else(|| panic!("{file} was accepted"));
        assert!(err.contains(file) && err.contains(needle), "{file}: {err}");
    }
}

#[test]
fn names_the_row_and_column_of_a_nan() {
    let mut f = FeatureFile::open(&data("x_nan_row2_col1.npy")).unwrap();
    assert!(f.read_rows(0, 2).is_ok());
    let err = f.read_rows(1, 3).unwrap_err().to_string();
    assert!(err.contains("row 2, column 1") && err.contains("NaN"), "{err}");
}

#[test]
fn refuses_labels_beyond_i64() {
    let mut y = LabelFile::open(&data("y_u64_huge.npy")).unwrap();
    assert_eq!(y.read_rows(0, 2).unwrap(), vec![1, 2]);
    let err = y.read_rows(0, 4).unwrap_err().to_string();
    assert!(
        err.contains("row 2") && err.contains("9223372036854775813"),
        "{err}"
    );
}

#[test]
fn refuses_truncated_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(data("x_f32.npy")).unwrap();
    let header_end = 10 + u16::from_le_bytes([good[8], good[9]]) as usize;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "shorter than the 8-byte preamble"),
        ("magic", b"NOTNUMPY\x00\x00".to_vec(), "magic"),
        (
            "version",
            [&good[..6], &[9u8, 0]].concat(),
            "unsupported format version 9.0",
        ),
        ("cut-header", good[..40].to_vec(), "ends inside the"),
        ("cut-data", good[..good.len() - 5].to_vec(), "needs 48"),
        (
            "extra-data",
            [&good[..], &[0u8; 4]].concat(),
            "holds 52 data bytes",
        ),
        (
            "huge-header",
            [&b"\x93NUMPY\x02\x00"[..], &u32::MAX.to_le_bytes()].concat(),
            "exceeds",
        ),
    ];
    let mut garbled = good.clone();
    garbled[header_end - 20..header_end - 10].copy_from_slice(b"(4, x3), }");
    cases.push(("garbled-shape", garbled, "malformed .npy header"));
    let mut no_shape = good.clone();
    let text = String::from_utf8_lossy(&good[10..header_end]).replace("'shape'", "'shope'");
    no_shape[10..header_end].copy_from_slice(text.as_bytes());
    cases.push(("unknown-key", no_shape, "unexpected key 'shope'"));
    for (name, bytes, needle) in cases {
        let path = dir.path().join(format!("{name}.npy"));
        std::fs::write(&path, bytes).unwrap();
        let err = FeatureFile::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"))
            .to_string();
        assert!(
            err.contains(&format!("{name}.npy")) && err.contains(needle),
            "{name}: {err}"
        );
    }
}

#[test]
fn refuses_row_ranges_outside_the_file() {
    let mut f = FeatureFile::open(&data("x_f32.npy")).unwrap();
    let err = f.read_rows(3, 2).unwrap_err().to_string();
    assert!(err.contains("rows 3..5") && err.contains("4 rows"), "{err}");
}

#[test]
fn refuses_absurd_row_widths_even_with_zero_rows() {
    // Found by the npy_file fuzz target: 0 rows of 10^19 float64 columns holds zero data
    // bytes, so the size check passes; the row width (8 × 10^19 bytes) must not overflow.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, shape: &str| {
        let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let Err(err) = FeatureFile::open(&write("wide.npy", "(0, 10000000000000000000)")) else {
        panic!("accepted")
    };
    assert!(err.to_string().contains("do not fit in 2^64 bytes"), "{err}");
    assert!(err.to_string().contains("wide.npy"), "{err}");
    let Err(err) = FeatureFile::open(&write("cols.npy", "(0, 70000)")) else {
        panic!("accepted")
    };
    assert!(err.to_string().contains("70000 columns"), "{err}");
    assert!(err.to_string().contains("65536"), "{err}");
}
