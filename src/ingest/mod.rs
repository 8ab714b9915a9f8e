//! Sources of labelled features.
//!
//! - [`npy`]: `.npy` feature and label files, read in row ranges (never whole) so that any
//!   number of producer threads can stream disjoint parts of one file.
//! - [`stream`]: a feature/label pair through the pipeline from several producer threads,
//!   with an optional seeded validation split.

pub mod npy;
pub mod stream;
