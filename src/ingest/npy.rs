//! Streaming readers for NumPy `.npy` files.
//!
//! Features: 2-D, `float32` or `float64` (either byte order), C order. Fortran order is
//! refused with a hint (`np.ascontiguousarray`). Labels: 1-D, any integer dtype.
//! The header is parsed strictly (lengths capped before anything is allocated), the file's
//! size is checked against the shape up front, and rows are read on demand by seeking, so a
//! file is never loaded whole.
//!
//! # Examples
//! ```
//! use headstart::ingest::npy::{FeatureFile, LabelFile};
//! let dir = tempfile::tempdir()?;
//! let (f, l) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
//! headstart::ingest::npy::write_f32(&f, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2)?;
//! headstart::ingest::npy::write_i64(&l, &[7, 8, 7])?;
//! let mut x = FeatureFile::open(&f)?;
//! let mut y = LabelFile::open(&l)?;
//! assert_eq!((x.rows(), x.dim(), y.rows()), (3, 2, 3));
//! let batch = x.read_rows(1, 2)?;
//! assert_eq!(batch.len(), 4);
//! assert_eq!(y.read_rows(1, 2)?, vec![8, 7]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::stats::{Feature, Features, MAX_DIM};

/// Largest header accepted (numpy writes a few hundred bytes).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Why an `.npy` file could not be read. Each message starts with the file's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// Opening, seeking or reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header is missing, truncated or malformed.
    #[error("{path}: malformed .npy header: {what}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The dtype, rank or order is not one this reader takes.
    #[error("{path}: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is wrong and what is expected.
        what: String,
    },
    /// The file is shorter or longer than its header says.
    #[error("{path}: file holds {actual} data bytes but its header (shape {shape:?}) needs {expected}")]
    Size {
        /// The file.
        path: PathBuf,
        /// The shape in the header.
        shape: Vec<u64>,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes present after the header.
        actual: u64,
    },
    /// A feature value is NaN or infinite.
    #[error("{path}: row {row}, column {col}: feature value {value} is not finite")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// Row in the file (0-based).
        row: u64,
        /// Column (0-based).
        col: usize,
        /// The value, as text.
        value: String,
    },
    /// A label does not fit in i64.
    #[error("{path}: row {row}: label {value} does not fit in a signed 64-bit class id")]
    LabelRange {
        /// The file.
        path: PathBuf,
        /// Row (0-based).
        row: u64,
        /// The value.
        value: u64,
    },
    /// A row range outside the file was asked for.
    #[error("{path}: rows {start}..{end} requested but the file has {rows} rows")]
    Range {
        /// The file.
        path: PathBuf,
        /// First row asked for.
        start: u64,
        /// One past the last row asked for.
        end: u64,
        /// Rows in the file.
        rows: u64,
    },
}

/// The element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// `f4`.
    F32,
    /// `f8`.
    F64,
    /// Signed integer of the given byte width (1, 2, 4, 8).
    Int(usize),
    /// Unsigned integer of the given byte width (1, 2, 4, 8).
    Uint(usize),
}

impl Scalar {
    fn width(self) -> usize {
        match self {
            Scalar::F32 => 4,
            Scalar::F64 => 8,
            Scalar::Int(w) | Scalar::Uint(w) => w,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The `descr` string as written (e.g. `<f4`).
    pub descr: String,
    /// Element type, if it is one this module reads.
    pub scalar: Option<Scalar>,
    /// Whether the data is big-endian.
    pub big_endian: bool,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The shape.
    pub shape: Vec<u64>,
    /// Byte offset of the data.
    pub data_offset: u64,
}

/// Parses the header at the start of `reader`, leaving it at the data.
///
/// # Errors
/// A description of what is malformed (the caller adds the path).
pub fn parse_header(reader: &mut impl Read) -> Result<Header, String> {
    let mut preamble = [0u8; 8];
    reader
        .read_exact(&mut preamble)
        .map_err(|_| "file is shorter than the 8-byte preamble".to_string())?;
    if &preamble[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic string; not an .npy file".into());
    }
    let (major, minor) = (preamble[6], preamble[7]);
    let len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => return Err(format!("unsupported format version {major}.{minor}")),
    };
    let mut len_buf = [0u8; 4];
    reader
        .read_exact(&mut len_buf[..len_bytes])
        .map_err(|_| "file ends inside the header length".to_string())?;
    let header_len = u32::from_le_bytes(len_buf) as usize;
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    let mut text = vec![0u8; header_len];
    reader
        .read_exact(&mut text)
        .map_err(|_| format!("file ends inside the {header_len}-byte header"))?;
    let text = String::from_utf8(text).map_err(|_| "header is not UTF-8 text".to_string())?;
    let dict = parse_dict(text.trim_end_matches(['\n', ' ', '\0']))?;
    let descr = dict.descr.ok_or("header has no 'descr'")?;
    let fortran_order = dict.fortran_order.ok_or("header has no 'fortran_order'")?;
    let shape = dict.shape.ok_or("header has no 'shape'")?;
    let (big_endian, scalar) = parse_descr(&descr);
    Ok(Header {
        descr,
        scalar,
        big_endian,
        fortran_order,
        shape,
        data_offset: (8 + len_bytes + header_len) as u64,
    })
}

fn parse_descr(descr: &str) -> (bool, Option<Scalar>) {
    let mut chars = descr.chars();
    let order = chars.next();
    let big = order == Some('>');
    let native_ok = matches!(order, Some('<' | '>' | '|' | '='));
    let rest: String = chars.collect();
    let scalar = match rest.as_str() {
        "f4" => Some(Scalar::F32),
        "f8" => Some(Scalar::F64),
        "i1" => Some(Scalar::Int(1)),
        "i2" => Some(Scalar::Int(2)),
        "i4" => Some(Scalar::Int(4)),
        "i8" => Some(Scalar::Int(8)),
        "u1" => Some(Scalar::Uint(1)),
        "u2" => Some(Scalar::Uint(2)),
        "u4" => Some(Scalar::Uint(4)),
        "u8" => Some(Scalar::Uint(8)),
        _ => None,
    };
    (big, if native_ok { scalar } else { None })
}

#[derive(Default)]
struct Dict {
    descr: Option<String>,
    fortran_order: Option<bool>,
    shape: Option<Vec<u64>>,
}

/// Parses the Python dict literal numpy writes: `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }`.
fn parse_dict(text: &str) -> Result<Dict, String> {
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    let mut dict = Dict::default();
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => {
                p.skip_ws();
                if p.peek() != Some(b'\'') && p.peek() != Some(b'"') {
                    return Err(
                        "'descr' is not a plain dtype string (structured arrays are not supported)".into(),
                    );
                }
                dict.descr = Some(p.string()?);
            }
            "fortran_order" => dict.fortran_order = Some(p.boolean()?),
            "shape" => dict.shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key '{other}'")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", p.i));
    }
    Ok(dict)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quoted string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == quote {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(s);
            }
            if c == b'\\' {
                return Err(format!("escape sequences are not supported (byte {})", self.i));
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }
    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_ws();
        for (word, value) in [("True", true), ("False", false)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!("expected True or False at byte {}", self.i))
    }
    fn tuple(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            self.skip_ws();
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
            let dim: u64 = digits
                .parse()
                .map_err(|_| format!("bad dimension '{digits}' in shape at byte {start}"))?;
            dims.push(dim);
            if dims.len() > 32 {
                return Err("shape has more than 32 dimensions".into());
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// An opened `.npy` array: its header and a buffered reader positioned anywhere in it.
struct Array {
    path: PathBuf,
    header: Header,
    reader: BufReader<File>,
    /// Bytes per row.
    row_bytes: u64,
    rows: u64,
}

impl Array {
    /// Opens `path`, checks its rank, its dtype (`dtype` says what is wrong with it, if
    /// anything) and its size.
    fn open(path: &Path, rank: usize, dtype: impl Fn(&Header) -> Option<String>) -> Result<Self, NpyError> {
        let io = |source| NpyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if metadata.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory, not an .npy file",
            )));
        }
        let file_len = metadata.len();
        let mut reader = BufReader::new(file);
        let header = parse_header(&mut reader).map_err(|what| NpyError::Header {
            path: path.to_path_buf(),
            what,
        })?;
        let unsupported = |what: String| NpyError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        if header.shape.len() != rank {
            return Err(unsupported(format!(
                "expected a {rank}-D array, found shape {:?}",
                header.shape
            )));
        }
        // Before the size check: an unsupported dtype's width is unknown, so the size
        // check would report a misleading mismatch.
        if let Some(what) = dtype(&header) {
            return Err(unsupported(what));
        }
        let width = header.scalar.map_or(1, Scalar::width) as u64;
        let expected = header.shape.iter().try_fold(width, |acc, &d| acc.checked_mul(d));
        let actual = file_len.saturating_sub(header.data_offset);
        if expected != Some(actual) {
            return Err(NpyError::Size {
                path: path.to_path_buf(),
                shape: header.shape.clone(),
                expected: expected.unwrap_or(u64::MAX),
                actual,
            });
        }
        let rows = header.shape[0];
        // With zero rows the size check above passes for any row width: check it on its own.
        let row_bytes = header.shape[1..]
            .iter()
            .try_fold(width, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                unsupported(format!(
                    "rows of shape {:?} do not fit in 2^64 bytes",
                    &header.shape[1..]
                ))
            })?;
        Ok(Array {
            path: path.to_path_buf(),
            header,
            reader,
            row_bytes,
            rows,
        })
    }

    fn read_raw(&mut self, start: u64, count: u64, buf: &mut Vec<u8>) -> Result<(), NpyError> {
        let end = start.checked_add(count).filter(|&e| e <= self.rows);
        let Some(end) = end else {
            return Err(NpyError::Range {
                path: self.path.clone(),
                start,
                end: start.saturating_add(count),
                rows: self.rows,
            });
        };
        let io = |source| NpyError::Io {
            path: self.path.clone(),
            source,
        };
        let len = ((end - start) * self.row_bytes) as usize;
        buf.resize(len, 0);
        self.reader
            .seek(SeekFrom::Start(self.header.data_offset + start * self.row_bytes))
            .map_err(io)?;
        self.reader.read_exact(buf).map_err(io)
    }
}

/// A 2-D float feature file read in row ranges.
pub struct FeatureFile {
    array: Array,
    raw: Vec<u8>,
}

impl FeatureFile {
    /// Opens and checks a feature file (2-D, f32/f64, C order, size matching the header).
    ///
    /// # Errors
    /// [`NpyError`] naming the file and the problem.
    pub fn open(path: &Path) -> Result<Self, NpyError> {
        let array = Array::open(path, 2, |h| match h.scalar {
            Some(Scalar::F32 | Scalar::F64) => None,
            _ if h.descr.get(1..) == Some("f2") || h.descr == "e" => Some(format!(
                "float16 ('{}') is not supported: convert to float32 (e.g. x.astype(np.float32))",
                h.descr
            )),
            _ => Some(format!(
                "features have dtype '{}'; expected float32 or float64 (e.g. x.astype(np.float32))",
                h.descr
            )),
        })?;
        let h = &array.header;
        let unsupported = |what: String| NpyError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        if h.fortran_order && h.shape[0] > 1 && h.shape[1] > 1 {
            return Err(unsupported(
                "features are in Fortran (column-major) order; save np.ascontiguousarray(x) instead".into(),
            ));
        }
        if h.shape[1] == 0 {
            return Err(unsupported("features have 0 columns".into()));
        }
        if h.shape[1] > MAX_DIM as u64 {
            return Err(unsupported(format!(
                "features have {} columns; headstart keeps a d × d Gram matrix and supports at most {MAX_DIM}",
                h.shape[1]
            )));
        }
        Ok(FeatureFile {
            array,
            raw: Vec::new(),
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.array.rows
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.array.path
    }

    /// Columns (the feature dimension).
    pub fn dim(&self) -> usize {
        self.array.header.shape[1] as usize
    }

    /// The stored element type (`F32` or `F64`).
    pub fn scalar(&self) -> Scalar {
        self.array.header.scalar.expect("checked at open")
    }

    /// Reads rows `start..start + count` in the file's precision, checking every value is
    /// finite.
    ///
    /// # Errors
    /// [`NpyError::Range`], [`NpyError::Io`], or [`NpyError::NonFinite`] naming the row and
    /// column in the file.
    pub fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, NpyError> {
        let mut raw = std::mem::take(&mut self.raw);
        let result = self
            .array
            .read_raw(start, count, &mut raw)
            .and_then(|()| self.decode(&raw, start));
        self.raw = raw;
        result
    }

    fn decode(&self, raw: &[u8], start: u64) -> Result<Features, NpyError> {
        let big = self.array.header.big_endian;
        let features = match self.scalar() {
            Scalar::F32 => Features::F32(decode_values(raw, big, f32::from_be_bytes, f32::from_le_bytes)),
            _ => Features::F64(decode_values(raw, big, f64::from_be_bytes, f64::from_le_bytes)),
        };
        let bad = match &features {
            Features::F32(v) => first_non_finite(v),
            Features::F64(v) => first_non_finite(v),
        };
        if let Some((pos, value)) = bad {
            let dim = self.dim();
            return Err(NpyError::NonFinite {
                path: self.array.path.clone(),
                row: start + (pos / dim) as u64,
                col: pos % dim,
                value,
            });
        }
        Ok(features)
    }
}

/// Decodes fixed-width values in the file's byte order. The conversions are generic (not
/// function pointers) and the byte-order branch sits outside the loop, so the loop inlines
/// and vectorises (with function pointers, the out-of-line per-value call took ~30% of a
/// reading profile).
pub(crate) fn decode_values<T, const N: usize>(
    raw: &[u8],
    big: bool,
    be: impl Fn([u8; N]) -> T,
    le: impl Fn([u8; N]) -> T,
) -> Vec<T> {
    let bytes = |b: &[u8]| -> [u8; N] { b.try_into().expect("chunks_exact yields N bytes") };
    if big {
        raw.chunks_exact(N).map(|b| be(bytes(b))).collect()
    } else {
        raw.chunks_exact(N).map(|b| le(bytes(b))).collect()
    }
}

/// The position and text of the first NaN or infinite value.
pub(crate) fn first_non_finite<T: Feature>(values: &[T]) -> Option<(usize, String)> {
    values
        .iter()
        .position(|v| !v.is_finite_value())
        .map(|p| (p, format!("{:?}", values[p])))
}

/// A 1-D integer label file read in row ranges.
pub struct LabelFile {
    array: Array,
    raw: Vec<u8>,
}

impl LabelFile {
    /// Opens and checks a label file (1-D, any integer dtype).
    ///
    /// # Errors
    /// [`NpyError`] naming the file and the problem.
    pub fn open(path: &Path) -> Result<Self, NpyError> {
        let array = Array::open(path, 1, |h| match h.scalar {
            Some(Scalar::Int(_) | Scalar::Uint(_)) => None,
            _ => Some(format!(
                "labels have dtype '{}'; expected an integer dtype (e.g. y.astype(np.int64))",
                h.descr
            )),
        })?;
        Ok(LabelFile {
            array,
            raw: Vec::new(),
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.array.rows
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.array.path
    }

    /// Reads labels `start..start + count` as i64.
    ///
    /// # Errors
    /// [`NpyError::Range`], [`NpyError::Io`], or [`NpyError::LabelRange`] for an unsigned
    /// value above `i64::MAX`.
    pub fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, NpyError> {
        let mut raw = std::mem::take(&mut self.raw);
        let result = self
            .array
            .read_raw(start, count, &mut raw)
            .and_then(|()| self.decode(&raw, start));
        self.raw = raw;
        result
    }

    fn decode(&self, raw: &[u8], start: u64) -> Result<Vec<i64>, NpyError> {
        let h = &self.array.header;
        let scalar = h.scalar.expect("checked at open");
        let width = scalar.width();
        raw.chunks_exact(width)
            .enumerate()
            .map(|(i, b)| {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(b);
                if h.big_endian {
                    le[..width].reverse();
                }
                let signed = matches!(scalar, Scalar::Int(_));
                if signed && width < 8 && le[width - 1] & 0x80 != 0 {
                    le[width..].fill(0xff); // sign-extend
                }
                let value = u64::from_le_bytes(le);
                if !signed && value > i64::MAX as u64 {
                    return Err(NpyError::LabelRange {
                        path: self.array.path.clone(),
                        row: start + i as u64,
                        value,
                    });
                }
                Ok(value as i64)
            })
            .collect()
    }
}

fn write_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut file = std::io::BufWriter::new(File::create(path)?);
    file.write_all(b"\x93NUMPY\x01\x00")?;
    file.write_all(&(header.len() as u16).to_le_bytes())?;
    file.write_all(header.as_bytes())?;
    file.write_all(data)?;
    file.flush()
}

/// Writes a C-order float32 `.npy` file of `rows × cols` values (for tests and the demo).
///
/// # Errors
/// The file system's error.
pub fn write_f32(path: &Path, values: &[f32], rows: usize, cols: usize) -> std::io::Result<()> {
    assert_eq!(values.len(), rows * cols, "values must fill rows × cols");
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", &format!("({rows}, {cols})"), &data)
}

/// Writes a 1-D int64 `.npy` file.
///
/// # Errors
/// The file system's error.
pub fn write_i64(path: &Path, values: &[i64]) -> std::io::Result<()> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<i8", &format!("({},)", values.len()), &data)
}
