//! Labelled feature batches and their validation.

use std::fmt;

/// A floating-point feature type that a batch may hold: `f32` or `f64`.
///
/// Both are widened to `f64` (exactly) before they touch the statistics.
pub trait Feature: Copy + Send + Sync + 'static + fmt::Debug {
    /// Whether every value converts to `f32` exactly (so a batch can wait in `f32`, half the
    /// memory of `f64`, and still be widened exactly for the product).
    const EXACT_IN_F32: bool = false;
    /// The value as `f64` (exact for both `f32` and `f64`).
    fn to_f64(self) -> f64;
    /// Whether the value is neither NaN nor infinite.
    fn is_finite_value(self) -> bool;
    /// The value rounded to `f32` (exact for `f32`), for the fast precision.
    fn to_f32(self) -> f32;
    /// The values as `f64`s when they are `f64`s (the exact product then reads them in
    /// place), else `None` (they are widened a chunk at a time).
    fn as_f64s(values: &[Self]) -> Option<&[f64]> {
        let _ = values;
        None
    }
}

impl Feature for f32 {
    const EXACT_IN_F32: bool = true;
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

impl Feature for f64 {
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline]
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
    fn as_f64s(values: &[f64]) -> Option<&[f64]> {
        Some(values)
    }
}

/// Why a batch was rejected. A rejected batch never changes any state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The feature buffer does not hold `labels × dim` values.
    #[error(
        "batch has {values} feature values for {labels} labels, expected {labels} rows × {dim} columns = {expected}"
    )]
    Shape {
        /// Number of feature values given.
        values: usize,
        /// Number of labels given.
        labels: usize,
        /// Feature dimension of the state.
        dim: usize,
        /// `labels × dim`.
        expected: usize,
    },
    /// A feature value is NaN or infinite.
    #[error("batch row {row}, column {col}: feature value {value} is not finite")]
    NonFinite {
        /// Row within the batch (0-based).
        row: usize,
        /// Column (0-based).
        col: usize,
        /// The offending value, as text (`NaN`, `inf`, `-inf`).
        value: String,
    },
    /// A finite feature value whose magnitude exceeds [`MAX_ABS_FEATURE`].
    #[error(
        "batch row {row}, column {col}: feature value {value} is too large (|x| must be at most 2^479 ≈ 1.56e144 so that sums of squares cannot overflow)"
    )]
    OutOfRange {
        /// Row within the batch (0-based).
        row: usize,
        /// Column (0-based).
        col: usize,
        /// The offending value, as text.
        value: String,
    },
    /// A row whose L1 norm is so large that its random-feature expansion could exceed
    /// [`MAX_ABS_FEATURE`] (see [`crate::expand`]).
    #[error(
        "batch row {row}: its L1 norm {l1} times the largest entry of R (2√3) could exceed 1.56e144 after the random-feature expansion"
    )]
    ExpandedOutOfRange {
        /// Row within the batch (0-based).
        row: usize,
        /// The row's L1 norm, as text.
        l1: String,
    },
}

/// The largest feature magnitude a batch may hold, 2⁴⁷⁹ ≈ 1.56e144: its square times 2⁶⁴
/// samples (every count a `u64` can hold) stays below `f64::MAX`, so no sum can overflow.
/// Every finite `f32` is far below it.
pub const MAX_ABS_FEATURE: f64 = 1.560_874_275_157_996_1e144;

/// Checks that `features` holds `labels.len()` rows of `dim` finite values, none larger in
/// magnitude than [`MAX_ABS_FEATURE`].
///
/// # Errors
/// [`BatchError::Shape`], [`BatchError::NonFinite`] or [`BatchError::OutOfRange`] (naming
/// the first bad row and column).
///
/// # Examples
/// ```
/// use headstart::stats::{validate_batch, BatchError};
/// assert!(validate_batch(&[1.0f32, 2.0, 3.0, 4.0], &[7, 8], 2).is_ok());
/// let err = validate_batch(&[1.0f64, f64::NAN], &[7], 2).unwrap_err();
/// assert!(matches!(err, BatchError::NonFinite { row: 0, col: 1, .. }));
/// ```
pub fn validate_batch<T: Feature>(features: &[T], labels: &[i64], dim: usize) -> Result<(), BatchError> {
    let expected = labels.len().checked_mul(dim);
    if expected != Some(features.len()) {
        return Err(BatchError::Shape {
            values: features.len(),
            labels: labels.len(),
            dim,
            expected: expected.unwrap_or(usize::MAX),
        });
    }
    // One comparison per value: NaN, ±inf and magnitudes beyond the limit all fail it.
    // Blocks are checked without early exit (which vectorises), then searched if one fails.
    let in_range = |v: &T| v.to_f64().abs() <= MAX_ABS_FEATURE;
    let bad_block = features
        .chunks(1024)
        .position(|block| block.iter().filter(|v| !in_range(v)).count() != 0);
    if let Some(pos) = bad_block.map(|b| {
        b * 1024
            + features[b * 1024..]
                .iter()
                .position(|v| !in_range(v))
                .unwrap_or(0)
    }) {
        let (row, col, value) = (pos / dim, pos % dim, format!("{:?}", features[pos]));
        return Err(if features[pos].is_finite_value() {
            BatchError::OutOfRange { row, col, value }
        } else {
            BatchError::NonFinite { row, col, value }
        });
    }
    Ok(())
}

/// Feature values of an owned batch, in either precision.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// Single-precision rows, row-major.
    F32(Vec<f32>),
    /// Double-precision rows, row-major.
    F64(Vec<f64>),
}

impl Features {
    /// Number of values held.
    pub fn len(&self) -> usize {
        match self {
            Features::F32(v) => v.len(),
            Features::F64(v) => v.len(),
        }
    }

    /// Whether no values are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<f32>> for Features {
    fn from(v: Vec<f32>) -> Self {
        Features::F32(v)
    }
}

impl From<Vec<f64>> for Features {
    fn from(v: Vec<f64>) -> Self {
        Features::F64(v)
    }
}

/// An owned batch: `labels.len()` rows of features (row-major) and one label per row.
///
/// This is what travels through the [`pipeline`](crate::pipeline).
///
/// # Examples
/// ```
/// use headstart::stats::Batch;
/// let batch = Batch::new(vec![1.0f32, 0.0, 0.0, 1.0], vec![3, 5]);
/// assert_eq!(batch.rows(), 2);
/// assert!(batch.validate(2).is_ok());
/// assert!(batch.validate(3).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Feature rows, row-major.
    pub features: Features,
    /// One class id per row.
    pub labels: Vec<i64>,
}

impl Batch {
    /// A batch from row-major features (`Vec<f32>` or `Vec<f64>`) and labels.
    pub fn new(features: impl Into<Features>, labels: Vec<i64>) -> Self {
        Batch {
            features: features.into(),
            labels,
        }
    }

    /// Number of rows (labels).
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Validates the batch against a feature dimension; see [`validate_batch`].
    ///
    /// # Errors
    /// As [`validate_batch`].
    pub fn validate(&self, dim: usize) -> Result<(), BatchError> {
        match &self.features {
            Features::F32(v) => validate_batch(v, &self.labels, dim),
            Features::F64(v) => validate_batch(v, &self.labels, dim),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magnitude_limit_is_two_to_the_479() {
        assert_eq!(MAX_ABS_FEATURE, 2f64.powi(479));
        // Its square times 2⁶⁴ samples is still finite.
        assert!((MAX_ABS_FEATURE * MAX_ABS_FEATURE * 2f64.powi(64)).is_finite());
    }
}
