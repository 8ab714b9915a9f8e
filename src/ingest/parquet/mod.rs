//! Streaming readers for a feature column and a label column of a Parquet file (crate
//! feature `parquet`).
//!
//! Features: a column of `FixedSizeList`, `List` or `LargeList` of `Float32` or `Float64`,
//! one list of `dim` values per row (for `List`/`LargeList`, `dim` is the first row's
//! length). Labels: a column of any integer type (`Int8`…`Int64`, `UInt8`…`UInt64`).
//! Rows are decoded in order, a record batch at a time, from the row group that holds the
//! first row asked for, projecting only the one column: memory is a batch and a page or so,
//! whatever the file's size. A null list, a null element, a list of the wrong length, NaN,
//! ±Inf, a null label or an unsigned label above `i64::MAX` is an error naming its row
//! (0-based in the file) and column. A missing column, or one of another type, is an error
//! listing the file's columns and their types.
//!
//! # Examples
//! ```
//! use std::sync::Arc;
//! use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch};
//! use arrow_schema::{DataType, Field};
//! use headstart::ingest::parquet::{ParquetFeatures, ParquetLabels};
//! use parquet::arrow::ArrowWriter;
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("data.parquet");
//! let item = Arc::new(Field::new("item", DataType::Float32, true));
//! let values = Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
//! let emb: ArrayRef = Arc::new(FixedSizeListArray::try_new(item, 2, values, None)?);
//! let label: ArrayRef = Arc::new(Int32Array::from(vec![7, 8, 7]));
//! let batch = RecordBatch::try_from_iter([("emb", emb), ("label", label)])?;
//! let mut writer = ArrowWriter::try_new(std::fs::File::create(&path)?, batch.schema(), None)?;
//! writer.write(&batch)?;
//! writer.close()?;
//!
//! let mut x = ParquetFeatures::open(&path, Some("emb"))?;
//! let mut y = ParquetLabels::open(&path, Some("label"))?;
//! assert_eq!((x.rows(), x.dim(), y.rows()), (3, 2, 3));
//! assert_eq!(x.read_rows(1, 2)?, headstart::stats::Features::F32(vec![3.0, 4.0, 5.0, 6.0]));
//! assert_eq!(y.read_rows(0, 3)?, vec![7, 8, 7]);
//! let missing = ParquetFeatures::open(&path, Some("x")).err().unwrap().to_string();
//! assert!(missing.contains("no column 'x'") && missing.contains("label (Int32)"), "{missing}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use ::parquet::arrow::ProjectionMask;
use ::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use ::parquet::errors::ParquetError;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, OffsetSizeTrait, PrimitiveArray};
use arrow_schema::DataType;

mod guard;
mod pages;
pub use guard::{decoding, quiet_decoder_panics};
pub use pages::{DEFAULT_MAX_PAGE_BYTES, MAX_PAGE_ENV, max_page_bytes};

use super::npy::Scalar;
use super::source::{FeatureSource, LabelSource, SourceError};
use crate::stats::{Feature, Features, MAX_DIM};

/// Bytes of feature values per record batch decoded; a `read_rows` of more rows gathers
/// several. Buffers this small stay in the cache and are reused by the allocator: decoding
/// 4096 rows × 768 float32 at once (12 MiB of values, 12 MiB of levels) cost page faults and
/// zeroing on every batch, 1.6× the reading time and 4× the memory (docs/benchmarks.md).
const DECODE_BYTES: usize = 256 * 1024;

/// Why a Parquet input could not be read. Each message starts with the file's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetInputError {
    /// Opening the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The Parquet reader failed (a malformed or truncated file, an unsupported encoding).
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ParquetError,
    },
    /// The column is missing or of a type this reader does not take; the message lists the
    /// file's columns and their types.
    #[error("{path}: {what}")]
    Column {
        /// The file.
        path: PathBuf,
        /// What is wrong, and the columns the file holds.
        what: String,
    },
    /// A value is refused: null, NaN or ±Inf, a list of the wrong length, a label out of
    /// range.
    #[error("{path}: row {row}, column '{column}': {what}")]
    Row {
        /// The file.
        path: PathBuf,
        /// Row in the file (0-based).
        row: u64,
        /// The column.
        column: String,
        /// What is wrong.
        what: String,
    },
    /// The file's metadata or a page header claims more than this reader accepts (see
    /// [`max_page_bytes`]) or lies about where its bytes are: refused before the
    /// decoder allocates what it claims.
    #[error("{path}: column '{column}': {what}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Which row group and page, and what is wrong.
        what: String,
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

/// One top-level column of a Parquet file, decoded in order from any row.
struct Column {
    path: PathBuf,
    name: String,
    /// The column's position among the top-level fields.
    index: usize,
    data_type: DataType,
    file: File,
    metadata: ArrowReaderMetadata,
    /// First row of each row group, then the number of rows.
    starts: Vec<u64>,
    reader: Option<ParquetRecordBatchReader>,
    /// Decoded rows not yet returned.
    pending: Option<ArrayRef>,
    /// The file row of the next row the reader (or `pending`) yields.
    next: u64,
    /// Rows per record batch decoded (default: the rows asked for).
    decode_rows: Option<usize>,
}

impl Column {
    /// Opens `path` and finds column `name` (`what`: "feature" or "label", for messages).
    fn open(path: &Path, name: Option<&str>, what: &str) -> Result<Self, ParquetInputError> {
        let file = File::open(path).map_err(|source| ParquetInputError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(ParquetInputError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory, not a Parquet file",
                ),
            });
        }
        let metadata = ArrowReaderMetadata::load(&file, Default::default()).map_err(|source| {
            ParquetInputError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let column = |what: String| ParquetInputError::Column {
            path: path.to_path_buf(),
            what,
        };
        let listing = columns(&metadata);
        let Some(name) = name else {
            return Err(column(format!(
                "name the column that holds the {what}s; {listing}"
            )));
        };
        let Some(index) = metadata.schema().fields().iter().position(|f| f.name() == name) else {
            return Err(column(format!("no column '{name}'; {listing}")));
        };
        let data_type = metadata.schema().field(index).data_type().clone();
        let refused = |what: String| ParquetInputError::Refused {
            path: path.to_path_buf(),
            column: name.to_string(),
            what,
        };
        check_pages(&file, &metadata, index).map_err(refused)?;
        let mut starts = vec![0u64];
        for (g, group) in metadata.metadata().row_groups().iter().enumerate() {
            let last = *starts.last().expect("starts with 0");
            let rows = u64::try_from(group.num_rows())
                .ok()
                .and_then(|n| last.checked_add(n))
                .ok_or_else(|| refused(format!("row group {g} claims {} rows", group.num_rows())))?;
            starts.push(rows);
        }
        Ok(Column {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            data_type,
            file,
            metadata,
            starts,
            reader: None,
            pending: None,
            next: 0,
            decode_rows: None,
        })
    }

    fn rows(&self) -> u64 {
        *self.starts.last().expect("starts with 0")
    }

    fn read_error(&self, source: ParquetError) -> ParquetInputError {
        ParquetInputError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// Starts decoding at file row `start`, `batch` rows per record batch.
    fn seek(&mut self, start: u64, batch: usize) -> Result<(), ParquetInputError> {
        self.reader = None;
        self.pending = None;
        let group = self.starts.partition_point(|&s| s <= start).saturating_sub(1);
        let groups = self.starts.len() - 1;
        let file = self.file.try_clone().map_err(|source| ParquetInputError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mask = ProjectionMask::roots(self.metadata.parquet_schema(), [self.index]);
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
            .with_projection(mask)
            .with_row_groups((group.min(groups)..groups).collect())
            .with_batch_size(batch.max(1));
        let mut reader = guard::guarded(|| builder.build())
            .map_err(|e| self.read_error(ParquetError::General(e)))?
            .map_err(|e| self.read_error(e))?;
        // The rows of the group before `start` are decoded and dropped here, not skipped by
        // the reader (`with_offset`): the parquet crate's skip loops forever on a page whose
        // levels are shorter than its header claims (found by fuzzing), where decoding fails.
        let mut skip = (start - self.starts[group.min(groups)]) as usize;
        while skip > 0 {
            let next =
                guard::guarded(|| reader.next()).map_err(|e| self.read_error(ParquetError::General(e)))?;
            let array = match next {
                Some(Ok(batch)) => batch.column(0).clone(),
                Some(Err(e)) => return Err(self.read_error(ParquetError::General(e.to_string()))),
                None => {
                    return Err(
                        self.read_error(ParquetError::EOF(format!("the file ended before row {start}")))
                    );
                }
            };
            if array.len() <= skip {
                skip -= array.len();
            } else {
                self.pending = Some(array.slice(skip, array.len() - skip));
                skip = 0;
            }
        }
        self.reader = Some(reader);
        self.next = start;
        Ok(())
    }

    /// Hands rows `start..start + count` to `take` in pieces, each with its first file row.
    fn read(
        &mut self,
        start: u64,
        count: u64,
        mut take: impl FnMut(&dyn Array, u64) -> Result<(), ParquetInputError>,
    ) -> Result<(), ParquetInputError> {
        let rows = self.rows();
        if start.checked_add(count).is_none_or(|end| end > rows) {
            return Err(ParquetInputError::Range {
                path: self.path.clone(),
                start,
                end: start.saturating_add(count),
                rows,
            });
        }
        if count == 0 {
            return Ok(());
        }
        if self.reader.is_none() || self.next != start {
            let rows = self.decode_rows.unwrap_or(count as usize);
            self.seek(start, rows.min(count as usize))?;
        }
        let mut left = count as usize;
        while left > 0 {
            let array = match self.pending.take() {
                Some(a) => a,
                None => {
                    let reader = self.reader.as_mut().expect("sought above");
                    let next = match guard::guarded(|| reader.next()) {
                        Ok(next) => next,
                        Err(e) => {
                            // A reader that panicked is never used again.
                            self.reader = None;
                            return Err(self.read_error(ParquetError::General(e)));
                        }
                    };
                    match next {
                        Some(Ok(batch)) => batch.column(0).clone(),
                        Some(Err(e)) => {
                            let e = self.read_error(ParquetError::General(e.to_string()));
                            self.reader = None;
                            return Err(e);
                        }
                        None => {
                            self.reader = None;
                            return Err(self.read_error(ParquetError::EOF(format!(
                                "the file ended at row {} of {rows}",
                                self.next
                            ))));
                        }
                    }
                }
            };
            let n = left.min(array.len());
            let result = take(&array.slice(0, n), self.next);
            if let Err(e) = result {
                // Resume from a clean position next time.
                self.reader = None;
                return Err(e);
            }
            if n < array.len() {
                self.pending = Some(array.slice(n, array.len() - n));
            }
            self.next += n as u64;
            left -= n;
        }
        Ok(())
    }

    fn row_error(&self, row: u64, what: String) -> ParquetInputError {
        ParquetInputError::Row {
            path: self.path.clone(),
            row,
            column: self.name.clone(),
            what,
        }
    }
}

/// Walks the page headers of every column chunk under top-level field `index`, in every row
/// group (pages::check_chunk).
fn check_pages(file: &File, metadata: &ArrowReaderMetadata, index: usize) -> Result<(), String> {
    let limit = pages::max_page_bytes()?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let schema = metadata.parquet_schema();
    let leaves: Vec<usize> = (0..schema.num_columns())
        .filter(|&leaf| schema.get_column_root_idx(leaf) == index)
        .collect();
    for (g, group) in metadata.metadata().row_groups().iter().enumerate() {
        for &leaf in &leaves {
            let chunk = group.column(leaf);
            // `byte_range` would panic on a negative offset or size.
            let start = chunk.dictionary_page_offset().unwrap_or(chunk.data_page_offset());
            let (Ok(start), Ok(len)) = (u64::try_from(start), u64::try_from(chunk.compressed_size())) else {
                return Err(format!(
                    "row group {g}: the column chunk claims offset {start} and size {}",
                    chunk.compressed_size()
                ));
            };
            pages::check_chunk(file, start, len, file_len, limit)
                .map_err(|what| format!("row group {g}: {what}"))?;
        }
    }
    Ok(())
}

/// `the file's columns: a (Int64), emb (FixedSizeList(…))`.
fn columns(metadata: &ArrowReaderMetadata) -> String {
    let fields = metadata.schema().fields();
    if fields.is_empty() {
        return "the file has no columns".into();
    }
    let items: Vec<String> = fields
        .iter()
        .map(|f| format!("{} ({})", f.name(), f.data_type()))
        .collect();
    format!("the file's columns: {}", items.join(", "))
}

/// How a feature column stores its lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lists {
    Fixed,
    Small,
    Large,
}

/// A list-of-floats feature column, read in row ranges.
pub struct ParquetFeatures {
    column: Column,
    lists: Lists,
    scalar: Scalar,
    dim: usize,
}

impl ParquetFeatures {
    /// Opens column `name` of the Parquet file `path` as features. For `List` and
    /// `LargeList` columns the first row is read to learn the dimension.
    ///
    /// # Errors
    /// [`ParquetInputError`] naming the file; a missing column, or one of another type, lists
    /// the file's columns.
    pub fn open(path: &Path, name: Option<&str>) -> Result<Self, ParquetInputError> {
        let mut column = Column::open(path, name, "feature")?;
        let (lists, item, size) = match &column.data_type {
            DataType::FixedSizeList(f, n) => (Lists::Fixed, f.data_type(), Some(*n)),
            DataType::List(f) => (Lists::Small, f.data_type(), None),
            DataType::LargeList(f) => (Lists::Large, f.data_type(), None),
            _ => (Lists::Fixed, &DataType::Null, None),
        };
        let scalar = match item {
            DataType::Float32 => Scalar::F32,
            DataType::Float64 => Scalar::F64,
            _ => {
                return Err(ParquetInputError::Column {
                    path: path.to_path_buf(),
                    what: format!(
                        "column '{}' has type {}; features must be a list of Float32 or Float64 \
                         (FixedSizeList, List or LargeList), one list per row; {}",
                        column.name,
                        column.data_type,
                        columns(&column.metadata)
                    ),
                });
            }
        };
        let dim = match size {
            Some(n) => n.max(0) as usize,
            None if column.rows() == 0 => {
                return Err(ParquetInputError::Column {
                    path: path.to_path_buf(),
                    what: format!(
                        "column '{}' ({}) has no rows, so its dimension is unknown",
                        column.name, column.data_type
                    ),
                });
            }
            None => {
                let mut first = None;
                column.read(0, 1, |a, _| {
                    first = Some(if a.is_null(0) {
                        None
                    } else {
                        Some(list_lengths(a, lists)[0])
                    });
                    Ok(())
                })?;
                match first.flatten() {
                    Some(n) => n,
                    None => return Err(column.row_error(0, "the list is null".into())),
                }
            }
        };
        if dim == 0 || dim > MAX_DIM {
            return Err(ParquetInputError::Column {
                path: path.to_path_buf(),
                what: format!(
                    "column '{}' holds lists of {dim} values; headstart keeps a d × d Gram matrix and supports 1 to {MAX_DIM}",
                    column.name
                ),
            });
        }
        let width = if scalar == Scalar::F64 { 8 } else { 4 };
        column.decode_rows = Some((DECODE_BYTES / (dim * width)).max(1));
        // The first row was read one row at a time: start afresh.
        column.reader = None;
        column.pending = None;
        Ok(ParquetFeatures {
            column,
            lists,
            scalar,
            dim,
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.column.rows()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The first row of each row group.
    pub fn row_groups(&self) -> &[u64] {
        &self.column.starts[..self.column.starts.len() - 1]
    }

    /// Reads rows `start..start + count` in the column's precision, checking every list and
    /// value.
    ///
    /// # Errors
    /// [`ParquetInputError::Range`], [`ParquetInputError::Read`], or
    /// [`ParquetInputError::Row`] naming the first bad row.
    pub fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, ParquetInputError> {
        let (lists, dim) = (self.lists, self.dim);
        let len = (count as usize).saturating_mul(dim);
        match self.scalar {
            Scalar::F64 => {
                let mut out = Vec::with_capacity(len);
                let column = &mut self.column;
                let (path, name) = (column.path.clone(), column.name.clone());
                column.read(start, count, |a, first| {
                    append::<Float64Type>(a, first, lists, dim, &mut out, &path, &name)
                })?;
                Ok(Features::F64(out))
            }
            _ => {
                let mut out = Vec::with_capacity(len);
                let column = &mut self.column;
                let (path, name) = (column.path.clone(), column.name.clone());
                column.read(start, count, |a, first| {
                    append::<Float32Type>(a, first, lists, dim, &mut out, &path, &name)
                })?;
                Ok(Features::F32(out))
            }
        }
    }
}

/// Each row's list length (`a` holds lists of the given kind).
fn list_lengths(a: &dyn Array, lists: Lists) -> Vec<usize> {
    fn lengths<O: OffsetSizeTrait>(a: &dyn Array) -> Vec<usize> {
        a.as_list::<O>()
            .value_offsets()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_usize())
            .collect()
    }
    match lists {
        Lists::Fixed => {
            let l = a.as_fixed_size_list();
            vec![l.value_length().max(0) as usize; l.len()]
        }
        Lists::Small => lengths::<i32>(a),
        Lists::Large => lengths::<i64>(a),
    }
}

/// Checks the rows of `a` (lists of `T`, the first at file row `first`) and appends their
/// values to `out`.
fn append<T: ArrowPrimitiveType>(
    a: &dyn Array,
    first: u64,
    lists: Lists,
    dim: usize,
    out: &mut Vec<T::Native>,
    path: &Path,
    column: &str,
) -> Result<(), ParquetInputError>
where
    T::Native: Feature,
{
    let refuse = |row: usize, what: String| ParquetInputError::Row {
        path: path.to_path_buf(),
        row: first + row as u64,
        column: column.to_string(),
        what,
    };
    if let Some(nulls) = a.logical_nulls().filter(|n| n.null_count() > 0) {
        let row = nulls.iter().position(|valid| !valid).expect("a null");
        return Err(refuse(row, "the list is null".into()));
    }
    // The values of these rows, one slice, and where in it each row starts.
    let (values, base): (&PrimitiveArray<T>, usize) = match lists {
        Lists::Fixed => (a.as_fixed_size_list().values().as_primitive::<T>(), 0),
        Lists::Small | Lists::Large => {
            let lengths = list_lengths(a, lists);
            if let Some(row) = lengths.iter().position(|&n| n != dim) {
                return Err(refuse(
                    row,
                    format!(
                        "the list has {} values; expected {dim} (the first row's length)",
                        lengths[row]
                    ),
                ));
            }
            match lists {
                Lists::Small => {
                    let l = a.as_list::<i32>();
                    (l.values().as_primitive::<T>(), l.value_offsets()[0] as usize)
                }
                _ => {
                    let l = a.as_list::<i64>();
                    (l.values().as_primitive::<T>(), l.value_offsets()[0] as usize)
                }
            }
        }
    };
    let n = a.len() * dim;
    let slice = &values.values()[base..base + n];
    if let Some(nulls) = values.nulls().filter(|x| x.null_count() > 0)
        && let Some(at) = (base..base + n).position(|i| nulls.is_null(i))
    {
        return Err(refuse(at / dim, format!("element {} is null", at % dim)));
    }
    if let Some(at) = slice.iter().position(|v| !v.is_finite_value()) {
        return Err(refuse(
            at / dim,
            format!(
                "element {}: feature value {:?} is not finite",
                at % dim,
                slice[at]
            ),
        ));
    }
    out.extend_from_slice(slice);
    Ok(())
}

impl FeatureSource for ParquetFeatures {
    fn path(&self) -> &Path {
        &self.column.path
    }
    fn rows(&self) -> u64 {
        self.column.rows()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn scalar(&self) -> Scalar {
        self.scalar
    }
    fn split_points(&self) -> Vec<u64> {
        self.row_groups().to_vec()
    }
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Features, SourceError> {
        Ok(ParquetFeatures::read_rows(self, start, count)?)
    }
}

/// An integer label column, read in row ranges.
pub struct ParquetLabels {
    column: Column,
}

impl ParquetLabels {
    /// Opens column `name` of the Parquet file `path` as labels (any integer type).
    ///
    /// # Errors
    /// [`ParquetInputError`] naming the file; a missing column, or one of another type, lists
    /// the file's columns.
    pub fn open(path: &Path, name: Option<&str>) -> Result<Self, ParquetInputError> {
        let column = Column::open(path, name, "label")?;
        if !column.data_type.is_integer() {
            return Err(ParquetInputError::Column {
                path: path.to_path_buf(),
                what: format!(
                    "column '{}' has type {}; labels must be integers (Int8…Int64, UInt8…UInt64); {}",
                    column.name,
                    column.data_type,
                    columns(&column.metadata)
                ),
            });
        }
        Ok(ParquetLabels { column })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.column.rows()
    }

    /// Reads labels `start..start + count` as i64.
    ///
    /// # Errors
    /// [`ParquetInputError::Range`], [`ParquetInputError::Read`], or
    /// [`ParquetInputError::Row`] for a null label or an unsigned one above `i64::MAX`.
    pub fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, ParquetInputError> {
        let mut out = Vec::with_capacity(count as usize);
        let column = &mut self.column;
        let (path, name) = (column.path.clone(), column.name.clone());
        column.read(start, count, |a, first| {
            let refuse = |row: usize, what: String| ParquetInputError::Row {
                path: path.clone(),
                row: first + row as u64,
                column: name.clone(),
                what,
            };
            if let Some(nulls) = a.logical_nulls().filter(|n| n.null_count() > 0) {
                let row = nulls.iter().position(|valid| !valid).expect("a null");
                return Err(refuse(row, "the label is null".into()));
            }
            let result = match a.data_type() {
                DataType::Int8 => labels::<Int8Type>(a, &mut out),
                DataType::Int16 => labels::<Int16Type>(a, &mut out),
                DataType::Int32 => labels::<Int32Type>(a, &mut out),
                DataType::Int64 => labels::<Int64Type>(a, &mut out),
                DataType::UInt8 => labels::<UInt8Type>(a, &mut out),
                DataType::UInt16 => labels::<UInt16Type>(a, &mut out),
                DataType::UInt32 => labels::<UInt32Type>(a, &mut out),
                DataType::UInt64 => labels::<UInt64Type>(a, &mut out),
                other => unreachable!("checked at open: {other}"),
            };
            result.map_err(|(row, value)| {
                refuse(
                    row,
                    format!("label {value} does not fit in a signed 64-bit class id"),
                )
            })
        })?;
        Ok(out)
    }
}

/// Appends the integers of `a` to `out` as i64, or says which row does not fit.
fn labels<T: ArrowPrimitiveType>(a: &dyn Array, out: &mut Vec<i64>) -> Result<(), (usize, String)>
where
    T::Native: TryInto<i64> + std::fmt::Display,
{
    for (row, &v) in a.as_primitive::<T>().values().iter().enumerate() {
        match v.try_into() {
            Ok(id) => out.push(id),
            Err(_) => return Err((row, v.to_string())),
        }
    }
    Ok(())
}

impl LabelSource for ParquetLabels {
    fn path(&self) -> &Path {
        &self.column.path
    }
    fn rows(&self) -> u64 {
        self.column.rows()
    }
    fn read_rows(&mut self, start: u64, count: u64) -> Result<Vec<i64>, SourceError> {
        Ok(ParquetLabels::read_rows(self, start, count)?)
    }
}
