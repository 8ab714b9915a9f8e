//! Sources of labelled features.
//!
//! - [`source`]: the [`FeatureSource`](source::FeatureSource) and
//!   [`LabelSource`](source::LabelSource) readers every format implements, format detection,
//!   and the specs that open them.
//! - [`npy`]: `.npy` feature and label files, read in row ranges (never whole) so that any
//!   number of producer threads can stream disjoint parts of one file.
//! - `parquet` (feature `parquet`, on with `cli`): a list-of-floats feature column and an
//!   integer label column of a Parquet file, decoded a record batch at a time.
//! - [`safetensors`]: a 2-D float tensor of features and a 1-D integer tensor of labels,
//!   read in row ranges.
//! - [`stream`]: a feature/label pair through the pipeline from several producer threads,
//!   with an optional seeded validation split.

pub mod npy;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod safetensors;
pub mod source;
pub mod stream;
