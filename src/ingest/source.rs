//! Feature and label sources of any format, read in row ranges.
//!
//! A [`FeatureSource`] is a 2-D table of float rows and a [`LabelSource`] a column of integer
//! class ids; both are read in row ranges, never whole, so that producer threads can stream
//! disjoint parts of one file with bounded memory. `.npy` files ([`super::npy`]), Parquet
//! columns (`headstart::ingest::parquet`, feature `parquet`) and safetensors tensors
//! ([`super::safetensors`]) implement them. A [`FeatureSpec`] or [`LabelSpec`] says where
//! the rows are (path, format, column or tensor name) and opens a fresh reader, one per
//! producer thread.
//!
//! # Examples
//! ```
//! use headstart::ingest::{npy, source::{FeatureSpec, Format, LabelSpec}};
//! let dir = tempfile::tempdir()?;
//! let (f, l) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
//! npy::write_f32(&f, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2)?;
//! npy::write_i64(&l, &[7, 8, 7])?;
//! let features = FeatureSpec::new(&f, None);
//! assert_eq!(features.format, Format::Npy);
//! let mut x = features.open()?;
//! let mut y = LabelSpec::new(&l, None).open()?;
//! assert_eq!((x.rows(), x.dim(), y.rows()), (3, 2, 3));
//! assert_eq!(x.read_rows(2, 1)?.len(), 2);
//! assert_eq!(y.read_rows(1, 2)?, vec![8, 7]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use super::npy::{FeatureFile, LabelFile, NpyError, Scalar};
use crate::stats::Features;

/// The file formats features and labels may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NumPy `.npy` ([`super::npy`]).
    Npy,
    /// Apache Parquet: a list column of features, an integer column of labels
    /// (`headstart::ingest::parquet`; needs the crate feature `parquet`).
    Parquet,
    /// safetensors: a 2-D float tensor of features, a 1-D integer tensor of labels
    /// ([`super::safetensors`]).
    Safetensors,
}

impl Format {
    /// The format of `path`: by its extension (`.npy`; `.parquet` or `.pq`; `.safetensors`),
    /// else by its first bytes (`\x93NUMPY`; `PAR1`; a safetensors header length followed by
    /// `{`). Anything else, or a file that cannot be read, counts as `.npy`, whose reader then
    /// says what is wrong.
    ///
    /// # Examples
    /// ```
    /// use headstart::ingest::source::Format;
    /// let dir = tempfile::tempdir()?;
    /// let odd = dir.path().join("features.bin");
    /// std::fs::write(&odd, b"PAR1....")?;
    /// assert_eq!(Format::detect(&odd), Format::Parquet);
    /// assert_eq!(Format::detect("x.pq".as_ref()), Format::Parquet);
    /// assert_eq!(Format::detect("missing".as_ref()), Format::Npy);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn detect(path: &Path) -> Format {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("npy") => return Format::Npy,
            Some("parquet" | "pq") => return Format::Parquet,
            Some("safetensors") => return Format::Safetensors,
            _ => {}
        }
        let mut head = [0u8; 9];
        let read = std::fs::File::open(path).and_then(|mut f| {
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        });
        match read {
            Ok(n) if n >= 4 && &head[..4] == b"PAR1" => Format::Parquet,
            Ok(9) if head[8] == b'{' && u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) > 1 => {
                Format::Safetensors
            }
            _ => Format::Npy,
        }
    }

    /// A short name for messages: `.npy`, `Parquet`, `safetensors`.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(headstart::ingest::source::Format::Parquet.name(), "Parquet");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Format::Npy => ".npy",
            Format::Parquet => "Parquet",
            Format::Safetensors => "safetensors",
        }
    }
}

/// Why a source could not be opened or read. Each message starts with the file's path and,
/// for a bad value, names its row (0-based in the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A `.npy` file.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// A Parquet file.
    #[cfg(feature = "parquet")]
    #[error(transparent)]
    Parquet(#[from] super::parquet::ParquetInputError),
    /// A safetensors file.
    #[error(transparent)]
    Safetensors(#[from] super::safetensors::TensorInputError),
    /// The format needs something the spec does not give, or the build lacks it.
    #[error("{path}: {what}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
}

/// Rows of float features, read in ranges.
pub trait FeatureSource: Send {
    /// The file, for messages.
    fn path(&self) -> &Path;
    /// Rows in the source.
    fn rows(&self) -> u64;
    /// Values per row (the feature dimension).
    fn dim(&self) -> usize;
    /// The precision [`read_rows`](Self::read_rows) returns: [`Scalar::F32`] (also for
    /// float16 and bfloat16 sources, widened exactly) or [`Scalar::F64`].
    fn scalar(&self) -> Scalar;
    /// Rows at which a producer's range best starts (Parquet row groups); empty when any
    /// row will do.
    fn split_points(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Rows `start..start + count`, row-major, every value checked finite. Reading ranges
    /// in order is the fast path; any range may be read.
    ///
    /// # Errors
    /// A range outside the source, a read failure, or a bad value named by its row.
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, SourceError>;
}

/// Integer class ids, read in ranges.
pub trait LabelSource: Send {
    /// The file, for messages.
    fn path(&self) -> &Path;
    /// Labels in the source.
    fn rows(&self) -> u64;
    /// Labels `start..start + count` as i64.
    ///
    /// # Errors
    /// A range outside the source, a read failure, or a label that is null or above
    /// `i64::MAX`, named by its row.
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, SourceError>;
}

impl FeatureSource for FeatureFile {
    fn path(&self) -> &Path {
        FeatureFile::path(self)
    }
    fn rows(&self) -> u64 {
        FeatureFile::rows(self)
    }
    fn dim(&self) -> usize {
        FeatureFile::dim(self)
    }
    fn scalar(&self) -> Scalar {
        FeatureFile::scalar(self)
    }
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, SourceError> {
        Ok(FeatureFile::read_rows(self, start, count)?)
    }
}

impl LabelSource for LabelFile {
    fn path(&self) -> &Path {
        LabelFile::path(self)
    }
    fn rows(&self) -> u64 {
        LabelFile::rows(self)
    }
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, SourceError> {
        Ok(LabelFile::read_rows(self, start, count)?)
    }
}

/// Where features are: a file, its format, and the Parquet column or safetensors tensor
/// that holds them (`None` for `.npy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSpec {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The Parquet column or safetensors tensor.
    pub name: Option<String>,
}

impl FeatureSpec {
    /// A spec whose format is [detected](Format::detect) from `path`.
    ///
    /// # Examples
    /// ```
    /// use headstart::ingest::source::{FeatureSpec, Format};
    /// let spec = FeatureSpec::new("emb.parquet".as_ref(), Some("emb".into()));
    /// assert_eq!((spec.format, spec.name.as_deref()), (Format::Parquet, Some("emb")));
    /// ```
    pub fn new(path: &Path, name: Option<String>) -> Self {
        FeatureSpec {
            path: path.to_path_buf(),
            format: Format::detect(path),
            name,
        }
    }

    /// A `.npy` file, whatever its name.
    ///
    /// # Examples
    /// ```
    /// let spec = headstart::ingest::source::FeatureSpec::npy("x.data".as_ref());
    /// assert_eq!(spec.format, headstart::ingest::source::Format::Npy);
    /// ```
    pub fn npy(path: &Path) -> Self {
        FeatureSpec {
            path: path.to_path_buf(),
            format: Format::Npy,
            name: None,
        }
    }

    /// Opens a fresh reader (each producer thread opens its own).
    ///
    /// # Errors
    /// The format's error naming the file; [`SourceError::Spec`] for a Parquet file without
    /// the crate feature `parquet`.
    pub fn open(&self) -> Result<Box<dyn FeatureSource>, SourceError> {
        Ok(match self.format {
            Format::Npy => Box::new(FeatureFile::open(&self.path)?),
            Format::Safetensors => Box::new(super::safetensors::TensorFeatures::open(
                &self.path,
                self.name.as_deref(),
            )?),
            #[cfg(feature = "parquet")]
            Format::Parquet => Box::new(super::parquet::ParquetFeatures::open(
                &self.path,
                self.name.as_deref(),
            )?),
            #[cfg(not(feature = "parquet"))]
            Format::Parquet => return Err(no_parquet(&self.path)),
        })
    }
}

/// Where labels are: a file, its format, and the Parquet column or safetensors tensor that
/// holds them (`None` for `.npy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSpec {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The Parquet column or safetensors tensor.
    pub name: Option<String>,
}

impl LabelSpec {
    /// A spec whose format is [detected](Format::detect) from `path`.
    ///
    /// # Examples
    /// ```
    /// use headstart::ingest::source::{Format, LabelSpec};
    /// let spec = LabelSpec::new("data.safetensors".as_ref(), Some("y".into()));
    /// assert_eq!(spec.format, Format::Safetensors);
    /// ```
    pub fn new(path: &Path, name: Option<String>) -> Self {
        LabelSpec {
            path: path.to_path_buf(),
            format: Format::detect(path),
            name,
        }
    }

    /// A `.npy` file, whatever its name.
    ///
    /// # Examples
    /// ```
    /// let spec = headstart::ingest::source::LabelSpec::npy("y.data".as_ref());
    /// assert_eq!(spec.format, headstart::ingest::source::Format::Npy);
    /// ```
    pub fn npy(path: &Path) -> Self {
        LabelSpec {
            path: path.to_path_buf(),
            format: Format::Npy,
            name: None,
        }
    }

    /// Opens a fresh reader.
    ///
    /// # Errors
    /// As [`FeatureSpec::open`].
    pub fn open(&self) -> Result<Box<dyn LabelSource>, SourceError> {
        Ok(match self.format {
            Format::Npy => Box::new(LabelFile::open(&self.path)?),
            Format::Safetensors => Box::new(super::safetensors::TensorLabels::open(
                &self.path,
                self.name.as_deref(),
            )?),
            #[cfg(feature = "parquet")]
            Format::Parquet => Box::new(super::parquet::ParquetLabels::open(
                &self.path,
                self.name.as_deref(),
            )?),
            #[cfg(not(feature = "parquet"))]
            Format::Parquet => return Err(no_parquet(&self.path)),
        })
    }
}

#[cfg(not(feature = "parquet"))]
fn no_parquet(path: &Path) -> SourceError {
    SourceError::Spec {
        path: path.to_path_buf(),
        what: "a Parquet file, but headstart was built without its `parquet` feature".into(),
    }
}
