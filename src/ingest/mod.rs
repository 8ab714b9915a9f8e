//! Sources of labelled features.
//!
//! - [`npy`]: `.npy` feature and label files, read in row ranges (never whole) so that any
//!   number of producer threads can stream disjoint parts of one file.

pub mod npy;
