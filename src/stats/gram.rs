//! The rank-B Gram update G ± XᵀX, in the two precisions.
//!
//! Both paths are one triangular matrix product per batch (faer, lower triangle only, on
//! the calling thread): never a loop over samples.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, MatRef, Par};

use super::Feature;

/// How each batch's product XᵀX is computed. The totals are f64 in both.
///
/// # Examples
/// ```
/// use headstart::stats::{Precision, Stats};
/// let mut s = Stats::with_precision(2, Precision::Fast);
/// s.update(&[1.0f32, 2.0], &[0])?;
/// assert_eq!(s.precision(), Precision::Fast);
/// # Ok::<(), headstart::stats::BatchError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    /// The product in f64 (f32 input widened exactly): the Gram is exact up to f64
    /// rounding of the sums.
    #[default]
    Exact,
    /// The product in f32 (f64 input rounded to f32), added into the f64 totals: about
    /// twice the floating-point rate. Each batch's product carries f32 rounding (relative
    /// error around B·2⁻²⁴ at worst, far less on average); counts and class sums stay exact.
    /// A batch whose f32 product would overflow is computed exactly instead.
    Fast,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Exact => "exact",
            Precision::Fast => "fast",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Precision::Exact),
            "fast" => Ok(Precision::Fast),
            other => Err(format!(
                "unknown precision `{other}` (expected `exact` or `fast`)"
            )),
        }
    }
}

/// Rows converted per product when the input's type differs from the product's: the
/// converted chunk stays in cache, and a rank-512 update is still large enough to run at
/// the kernel's full rate.
const CHUNK_ROWS: usize = 512;

/// Reusable buffers, so that a stream of batches allocates nothing per batch. Cloning gives
/// empty buffers: they hold no state.
pub(crate) struct Scratch {
    wide: Vec<f64>,
    narrow: Vec<f32>,
    product: Mat<f32>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            wide: Vec::new(),
            narrow: Vec::new(),
            product: Mat::new(),
        }
    }
}

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch::default()
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// `gram += sign · XᵀX` (lower triangle) for the row-major `rows × dim` matrix `features`.
pub(crate) fn add_product<T: Feature>(
    gram: &mut Mat<f64>,
    features: &[T],
    dim: usize,
    sign: f64,
    precision: Precision,
    scratch: &mut Scratch,
) {
    if precision == Precision::Fast && add_product_f32(gram, features, dim, sign, scratch) {
        return;
    }
    for chunk in features.chunks(CHUNK_ROWS * dim) {
        transpose_into(&mut scratch.wide, chunk, dim, |v, _| v.to_f64());
        syrk(gram.as_mut(), &scratch.wide, dim, Accum::Add, sign);
    }
}

/// Writes the row-major `rows × dim` chunk into `out` column-major (each feature's values
/// contiguous), converting each value with `convert(value, column)`. faer's product runs
/// about 1.5 times faster on column-major rows than on row-major ones, which pays for this
/// copy many times over.
fn transpose_into<T: Feature, U: Copy + Default>(
    out: &mut Vec<U>,
    chunk: &[T],
    dim: usize,
    convert: impl Fn(T, usize) -> U,
) {
    let rows = chunk.len() / dim;
    // Every slot is overwritten below; only a change of length needs a resize.
    if out.len() != chunk.len() {
        out.clear();
        out.resize(chunk.len(), U::default());
    }
    // Column by column: the chunk's rows (at most CHUNK_ROWS cache lines per column) stay
    // in L1 across the next columns, so each input line is fetched once.
    for (j, column) in out.chunks_exact_mut(rows).enumerate() {
        for (slot, &v) in column.iter_mut().zip(chunk[j..].iter().step_by(dim)) {
            *slot = convert(v, j);
        }
    }
}

/// The fast path: the batch's product in f32, then added into `gram`. Returns `false`
/// (having changed nothing) when the f32 product overflowed.
///
/// The rows are shifted by the batch mean m (rounded to f32) before the f32 product, and
/// the shift is undone in f64: XᵀX = ZᵀZ + m sᵀ + s mᵀ − B m mᵀ, with Z = X − 1mᵀ and
/// s = Σ x in f64. f32 rounding then scales with the spread of the rows, not with their
/// magnitude: features with a large common offset (ReLU outputs) lose far less.
fn add_product_f32<T: Feature>(
    gram: &mut Mat<f64>,
    features: &[T],
    dim: usize,
    sign: f64,
    scratch: &mut Scratch,
) -> bool {
    let rows = features.len() / dim;
    let mut sum = vec![0.0f64; dim];
    for row in features.chunks_exact(dim) {
        for (s, x) in sum.iter_mut().zip(row) {
            *s += x.to_f64();
        }
    }
    let shift: Vec<f64> = sum.iter().map(|s| f64::from((s / rows as f64) as f32)).collect();
    if scratch.product.nrows() != dim {
        scratch.product = Mat::zeros(dim, dim);
    }
    let mut accum = Accum::Replace;
    for chunk in features.chunks(CHUNK_ROWS * dim) {
        // Shifted in f64, then rounded once to f32.
        transpose_into(&mut scratch.narrow, chunk, dim, |v, j| {
            (v.to_f64() - shift[j]) as f32
        });
        syrk(scratch.product.as_mut(), &scratch.narrow, dim, accum, 1.0);
        accum = Accum::Add;
    }
    let product = &scratch.product;
    // |Gᵢⱼ| ≤ √(Gᵢᵢ Gⱼⱼ): a finite diagonal bounds every entry.
    if !(0..dim).all(|i| product[(i, i)].is_finite()) {
        return false;
    }
    let b = rows as f64;
    for j in 0..dim {
        let src = &product.col_as_slice(j)[j..];
        let dst = &mut gram.col_as_slice_mut(j)[j..];
        let (mj, sj) = (shift[j], sum[j]);
        for (k, (d, &z)) in dst.iter_mut().zip(src).enumerate() {
            let i = j + k;
            let (mi, si) = (shift[i], sum[i]);
            *d += sign * (f64::from(z) + mi * sj + si * mj - b * mi * mj);
        }
    }
    true
}

/// `dst = accum(dst) + alpha · XᵀX` on the lower triangle, X column-major `rows × dim`.
fn syrk<T: faer::traits::ComplexField + Copy>(
    dst: faer::MatMut<'_, T>,
    x: &[T],
    dim: usize,
    accum: Accum,
    alpha: T,
) {
    let rows = MatRef::from_column_major_slice(x, x.len() / dim, dim);
    matmul(
        dst,
        BlockStructure::TriangularLower,
        accum,
        rows.transpose(),
        BlockStructure::Rectangular,
        rows,
        BlockStructure::Rectangular,
        alpha,
        Par::Seq,
    );
}
