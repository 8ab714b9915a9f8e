//! Streaming readers for tensors in a safetensors file.
//!
//! Features: a 2-D tensor `[rows, dim]` of `F32`, `F64`, `F16` or `BF16` (the half types
//! widened to f32, exactly). Labels: a 1-D tensor of any integer dtype (`I8`…`I64`,
//! `U8`…`U64`). The header is read on its own (at most 100 MB, like the safetensors crate),
//! the file's size is checked against it, and rows are read on demand by seeking, so a file
//! is never loaded whole.
//!
//! # Examples
//! ```
//! use headstart::ingest::safetensors::{TensorFeatures, TensorLabels};
//! use safetensors::{Dtype, tensor::TensorView};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("data.safetensors");
//! let x: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! let y: Vec<u8> = [7i64, 8, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
//! let tensors = [
//!     ("x", TensorView::new(Dtype::F32, vec![3, 2], &x)?),
//!     ("y", TensorView::new(Dtype::I64, vec![3], &y)?),
//! ];
//! safetensors::serialize_to_file(tensors, None, &path)?;
//! let mut features = TensorFeatures::open(&path, Some("x"))?;
//! let mut labels = TensorLabels::open(&path, Some("y"))?;
//! assert_eq!((features.rows(), features.dim()), (3, 2));
//! assert_eq!(features.read_rows(1, 2)?.len(), 4);
//! assert_eq!(labels.read_rows(0, 3)?, vec![7, 8, 7]);
//! let missing = TensorFeatures::open(&path, Some("z")).err().unwrap().to_string();
//! assert!(missing.contains("no tensor 'z'") && missing.contains("x (F32 [3, 2])"), "{missing}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ::safetensors::Dtype;
use ::safetensors::tensor::{Metadata, TensorInfo};

use super::npy::{Scalar, decode_values, first_non_finite};
use super::source::{FeatureSource, LabelSource, SourceError};
use crate::stats::{Features, MAX_DIM};

/// Largest header accepted (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Why a safetensors input could not be read. Each message starts with the file's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorInputError {
    /// Opening, seeking or reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header is missing, truncated or malformed, or disagrees with the file's size.
    #[error("{path}: malformed safetensors file: {what}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The tensor is missing, or its rank or dtype is not one this reader takes. The message
    /// lists the file's tensors.
    #[error("{path}: {what}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// What is wrong, and the tensors the file holds.
        what: String,
    },
    /// A feature value is NaN or infinite.
    #[error("{path}: tensor '{tensor}', row {row}, column {col}: feature value {value} is not finite")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Row (0-based).
        row: u64,
        /// Column (0-based).
        col: usize,
        /// The value, as text.
        value: String,
    },
    /// A label does not fit in i64.
    #[error("{path}: tensor '{tensor}', row {row}: label {value} does not fit in a signed 64-bit class id")]
    LabelRange {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Row (0-based).
        row: u64,
        /// The value.
        value: u64,
    },
    /// A row range outside the tensor was asked for.
    #[error("{path}: rows {start}..{end} requested but tensor '{tensor}' has {rows} rows")]
    Range {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// First row asked for.
        start: u64,
        /// One past the last row asked for.
        end: u64,
        /// Rows in the tensor.
        rows: u64,
    },
}

/// One tensor of an opened file, read in row ranges.
struct Tensor {
    path: PathBuf,
    name: String,
    info: TensorInfo,
    reader: BufReader<File>,
    /// Byte offset of the tensor's first row in the file.
    data_start: u64,
    row_bytes: u64,
    rows: u64,
    raw: Vec<u8>,
}

/// `name (DTYPE [shape])` for each tensor, in file order.
fn listing(metadata: &Metadata) -> String {
    let names = metadata.offset_keys();
    if names.is_empty() {
        return "the file holds no tensors".into();
    }
    let items: Vec<String> = names
        .iter()
        .filter_map(|n| {
            metadata
                .info(n)
                .map(|i| format!("{n} ({:?} {:?})", i.dtype, i.shape))
        })
        .collect();
    format!("the file holds: {}", items.join(", "))
}

impl Tensor {
    /// Opens `path`, checks its header against its size, and finds tensor `name` (`what` is
    /// "feature" or "label", for messages).
    fn open(path: &Path, name: Option<&str>, what: &str) -> Result<(Self, String), TensorInputError> {
        let io = |source| TensorInputError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header = |what: String| TensorInputError::Header {
            path: path.to_path_buf(),
            what,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let mut len = [0u8; 8];
        reader
            .read_exact(&mut len)
            .map_err(|_| header("file is shorter than the 8-byte header length".into()))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER_BYTES {
            return Err(header(format!(
                "header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        if 8 + n > file_len {
            return Err(header(format!(
                "header length {n} runs past the end of the {file_len}-byte file"
            )));
        }
        let mut text = vec![0u8; n as usize];
        reader.read_exact(&mut text).map_err(io)?;
        let metadata: Metadata = serde_json::from_slice(&text).map_err(|e| header(e.to_string()))?;
        let data_len = metadata.data_len() as u64;
        if 8 + n + data_len != file_len {
            return Err(header(format!(
                "the header describes {data_len} data bytes but the file holds {}",
                file_len - 8 - n
            )));
        }
        let tensor = |what: String| TensorInputError::Tensor {
            path: path.to_path_buf(),
            what,
        };
        let Some(name) = name else {
            return Err(tensor(format!(
                "name the tensor that holds the {what}s; {}",
                listing(&metadata)
            )));
        };
        let Some(info) = metadata.info(name).cloned() else {
            return Err(tensor(format!("no tensor '{name}'; {}", listing(&metadata))));
        };
        let rows = info.shape.first().copied().unwrap_or(0) as u64;
        let width = (info.dtype.bitsize() / 8) as u64;
        let row_bytes = info
            .shape
            .iter()
            .skip(1)
            .fold(width, |a, &d| a.saturating_mul(d as u64));
        Ok((
            Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                data_start: 8 + n + info.data_offsets.0 as u64,
                info,
                reader,
                row_bytes,
                rows,
                raw: Vec::new(),
            },
            listing(&metadata),
        ))
    }

    fn read_raw(&mut self, start: u64, count: u64) -> Result<Vec<u8>, TensorInputError> {
        let Some(end) = start.checked_add(count).filter(|&e| e <= self.rows) else {
            return Err(TensorInputError::Range {
                path: self.path.clone(),
                tensor: self.name.clone(),
                start,
                end: start.saturating_add(count),
                rows: self.rows,
            });
        };
        let io = |source| TensorInputError::Io {
            path: self.path.clone(),
            source,
        };
        let mut raw = std::mem::take(&mut self.raw);
        raw.resize(((end - start) * self.row_bytes) as usize, 0);
        self.reader
            .seek(SeekFrom::Start(self.data_start + start * self.row_bytes))
            .map_err(io)?;
        self.reader.read_exact(&mut raw).map_err(io)?;
        Ok(raw)
    }
}

/// A 2-D float tensor of features, read in row ranges.
pub struct TensorFeatures {
    tensor: Tensor,
    dim: usize,
}

impl TensorFeatures {
    /// Opens tensor `name` of the safetensors file `path` as features: 2-D, `F32`, `F64`,
    /// `F16` or `BF16`, 1 to 65,536 columns.
    ///
    /// # Errors
    /// [`TensorInputError`] naming the file; a missing, wrongly shaped or wrongly typed
    /// tensor's message lists the file's tensors.
    pub fn open(path: &Path, name: Option<&str>) -> Result<Self, TensorInputError> {
        let (tensor, listing) = Tensor::open(path, name, "feature")?;
        let refuse = |what: String| TensorInputError::Tensor {
            path: path.to_path_buf(),
            what: format!("{what}; {listing}"),
        };
        let (name, info) = (&tensor.name, &tensor.info);
        if info.shape.len() != 2 {
            return Err(refuse(format!(
                "tensor '{name}' has shape {:?}; features must be a 2-D tensor [rows, dim]",
                info.shape
            )));
        }
        if !matches!(info.dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16) {
            return Err(refuse(format!(
                "tensor '{name}' has dtype {:?}; features must be F32, F64, F16 or BF16",
                info.dtype
            )));
        }
        let dim = info.shape[1];
        if dim == 0 || dim > MAX_DIM {
            return Err(refuse(format!(
                "tensor '{name}' has {dim} columns; headstart keeps a d × d Gram matrix and supports 1 to {MAX_DIM}"
            )));
        }
        Ok(TensorFeatures { tensor, dim })
    }

    /// Rows in the tensor.
    pub fn rows(&self) -> u64 {
        self.tensor.rows
    }

    /// Columns (the feature dimension).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The stored dtype.
    pub fn dtype(&self) -> Dtype {
        self.tensor.info.dtype
    }

    /// Reads rows `start..start + count` (f64 for `F64`, f32 otherwise), checking every
    /// value is finite.
    ///
    /// # Errors
    /// [`TensorInputError::Range`], [`TensorInputError::Io`], or
    /// [`TensorInputError::NonFinite`] naming the row and column.
    pub fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, TensorInputError> {
        let raw = self.tensor.read_raw(start, count)?;
        let features = match self.tensor.info.dtype {
            Dtype::F64 => Features::F64(decode_values(&raw, false, f64::from_be_bytes, f64::from_le_bytes)),
            Dtype::F16 => Features::F32(decode_values(
                &raw,
                false,
                |b| half::f16::from_be_bytes(b).to_f32(),
                |b| half::f16::from_le_bytes(b).to_f32(),
            )),
            Dtype::BF16 => Features::F32(decode_values(
                &raw,
                false,
                |b| half::bf16::from_be_bytes(b).to_f32(),
                |b| half::bf16::from_le_bytes(b).to_f32(),
            )),
            _ => Features::F32(decode_values(&raw, false, f32::from_be_bytes, f32::from_le_bytes)),
        };
        self.tensor.raw = raw;
        let bad = match &features {
            Features::F32(v) => first_non_finite(v),
            Features::F64(v) => first_non_finite(v),
        };
        if let Some((pos, value)) = bad {
            return Err(TensorInputError::NonFinite {
                path: self.tensor.path.clone(),
                tensor: self.tensor.name.clone(),
                row: start + (pos / self.dim) as u64,
                col: pos % self.dim,
                value,
            });
        }
        Ok(features)
    }
}

impl FeatureSource for TensorFeatures {
    fn path(&self) -> &Path {
        &self.tensor.path
    }
    fn rows(&self) -> u64 {
        self.tensor.rows
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn scalar(&self) -> Scalar {
        match self.tensor.info.dtype {
            Dtype::F64 => Scalar::F64,
            _ => Scalar::F32,
        }
    }
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, SourceError> {
        Ok(TensorFeatures::read_rows(self, start, count)?)
    }
}

/// A 1-D integer tensor of labels, read in row ranges.
pub struct TensorLabels {
    tensor: Tensor,
}

impl TensorLabels {
    /// Opens tensor `name` of the safetensors file `path` as labels: 1-D, any integer dtype.
    ///
    /// # Errors
    /// [`TensorInputError`] naming the file; a missing, wrongly shaped or wrongly typed
    /// tensor's message lists the file's tensors.
    pub fn open(path: &Path, name: Option<&str>) -> Result<Self, TensorInputError> {
        let (tensor, listing) = Tensor::open(path, name, "label")?;
        let refuse = |what: String| TensorInputError::Tensor {
            path: path.to_path_buf(),
            what: format!("{what}; {listing}"),
        };
        let (name, info) = (&tensor.name, &tensor.info);
        if info.shape.len() != 1 {
            return Err(refuse(format!(
                "tensor '{name}' has shape {:?}; labels must be a 1-D tensor [rows]",
                info.shape
            )));
        }
        if integer(info.dtype).is_none() {
            return Err(refuse(format!(
                "tensor '{name}' has dtype {:?}; labels must be an integer dtype (I8…I64, U8…U64)",
                info.dtype
            )));
        }
        Ok(TensorLabels { tensor })
    }

    /// Labels in the tensor.
    pub fn rows(&self) -> u64 {
        self.tensor.rows
    }

    /// Reads labels `start..start + count` as i64.
    ///
    /// # Errors
    /// [`TensorInputError::Range`], [`TensorInputError::Io`], or
    /// [`TensorInputError::LabelRange`] for an unsigned value above `i64::MAX`.
    pub fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, TensorInputError> {
        let raw = self.tensor.read_raw(start, count)?;
        let (signed, width) = integer(self.tensor.info.dtype).expect("checked at open");
        let labels = raw
            .chunks_exact(width)
            .enumerate()
            .map(|(i, b)| {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(b);
                if signed && width < 8 && le[width - 1] & 0x80 != 0 {
                    le[width..].fill(0xff); // sign-extend
                }
                let value = u64::from_le_bytes(le);
                if !signed && value > i64::MAX as u64 {
                    return Err(TensorInputError::LabelRange {
                        path: self.tensor.path.clone(),
                        tensor: self.tensor.name.clone(),
                        row: start + i as u64,
                        value,
                    });
                }
                Ok(value as i64)
            })
            .collect();
        self.tensor.raw = raw;
        labels
    }
}

/// Whether an integer dtype is signed, and its width in bytes.
fn integer(dtype: Dtype) -> Option<(bool, usize)> {
    Some(match dtype {
        Dtype::I8 => (true, 1),
        Dtype::I16 => (true, 2),
        Dtype::I32 => (true, 4),
        Dtype::I64 => (true, 8),
        Dtype::U8 => (false, 1),
        Dtype::U16 => (false, 2),
        Dtype::U32 => (false, 4),
        Dtype::U64 => (false, 8),
        _ => return None,
    })
}

impl LabelSource for TensorLabels {
    fn path(&self) -> &Path {
        &self.tensor.path
    }
    fn rows(&self) -> u64 {
        self.tensor.rows
    }
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, SourceError> {
        Ok(TensorLabels::read_rows(self, start, count)?)
    }
}
