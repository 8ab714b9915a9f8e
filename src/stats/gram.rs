//! The rank-B Gram update G ± XᵀX, in the two precisions.
//!
//! Both paths are triangular matrix products over 512-row chunks of each batch (faer, lower
//! triangle only): never a loop over samples. The chunks are shared among the state's
//! [`threads`](super::Stats::threads), each taking the next free one, so a core taken by
//! another process slows the product by its share only.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, MatRef, Par};

use super::{BatchError, ClassMoments, Feature, MAX_ABS_FEATURE, Moments, validate_batch};
use crate::expand::Expanded;

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

/// Rows per product chunk: a converted chunk stays in cache, and a rank-512 update is still
/// large enough to run at the kernel's full rate (measured: 512 beat 256, 1024 and 4096).
pub(crate) const CHUNK_ROWS: usize = 512;

/// A validated batch laid out for the reduction: its rows in column-major chunks of the
/// product's precision (faer's product runs about 1.5 times faster on column-major rows),
/// and its per-class counts and sums and its sum, in f64.
///
/// Preparing is O(B·d) and needs no state, so the [`pipeline`](crate::pipeline) does it on
/// the producer's thread; applying it is the O(B·d²) product, on the reducer's. A direct
/// [`Stats::update`](super::Stats::update) prepares and applies on one thread, so both paths
/// compute exactly the same state.
#[derive(Default)]
pub(crate) struct Prepared {
    dim: usize,
    rows: usize,
    /// Exact precision, f64 input: the rows as f64, one column-major chunk after another.
    wide: Vec<f64>,
    /// Laid out like `wide`, in f32: the rows themselves (exact precision, f32 input: they
    /// wait in half the memory and are widened chunk by chunk), or the rows minus `shift`
    /// rounded to f32 (fast precision).
    narrow: Vec<f32>,
    layout: Layout,
    /// Whether each chunk holds its rows row-major, as a batch arrives (plain batches), or
    /// column-major (expanded chunks, which the projection writes so).
    row_major: bool,
    shift: Vec<f64>,
    sum: Vec<f64>,
    class_ids: Vec<i64>,
    /// Each row's index in `class_ids`.
    slots: Vec<usize>,
    class_counts: Vec<u64>,
    /// Row-major: `class_ids.len()` rows of `dim` sums.
    class_sums: Vec<f64>,
}

/// Which buffer of a [`Prepared`] holds the rows, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Layout {
    /// `wide`, f64 (expanded chunks).
    #[default]
    Wide,
    /// Nowhere: the rows are the caller's batch (exact precision), which
    /// [`apply`](Prepared::apply) gets again as [`Rows`]; nothing is copied.
    InBatch,
    /// `narrow`, shifted by `shift` (fast precision).
    Shifted32,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Prepared({} rows × {}, {} classes)",
            self.rows,
            self.dim,
            self.class_ids.len()
        )
    }
}

impl Prepared {
    /// Rows in the batch.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Lays out a batch for `dim`, reusing this value's buffers, and checks it as
    /// [`validate_batch`] does, as a by-product of the same pass (on an error this value's
    /// contents are meaningless and nothing else was touched).
    ///
    /// One pass over the batch computes the class sums and writes the rows in the product's
    /// precision, row-major as they came: faer multiplies them so without a transposition.
    /// The work is split by column ranges, so every column is summed in row order whatever
    /// `threads` is: every thread count gives the same bits. In fast precision the rows are
    /// shifted by the first chunk's mean (f32-rounded), which a short pass over that chunk's
    /// rows computes first, while they are in cache.
    ///
    /// # Errors
    /// The error [`validate_batch`] gives.
    pub(crate) fn fill<T: Feature>(
        &mut self,
        features: &[T],
        labels: &[i64],
        dim: usize,
        precision: Precision,
        threads: usize,
    ) -> Result<(), BatchError> {
        let rows = labels.len();
        if rows.checked_mul(dim) != Some(features.len()) {
            return validate_batch(features, labels, dim);
        }
        self.dim = dim;
        self.rows = rows;
        self.row_major = true;
        self.class_ids.clear();
        self.class_ids.extend_from_slice(labels);
        self.class_ids.sort_unstable();
        self.class_ids.dedup();
        let k = self.class_ids.len();
        self.slots.clear();
        let ids = &self.class_ids;
        self.slots.extend(
            labels
                .iter()
                .map(|l| ids.binary_search(l).expect("every label was collected")),
        );
        self.class_counts.clear();
        self.class_counts.resize(k, 0);
        for &slot in &self.slots {
            self.class_counts[slot] += 1;
        }
        self.class_sums.clear();
        self.class_sums.resize(k * dim, 0.0);
        self.layout = if precision == Precision::Fast && rows > 0 {
            Layout::Shifted32
        } else {
            Layout::InBatch
        };
        self.shift.clear();
        if self.layout == Layout::Shifted32 {
            self.shift.resize(dim, 0.0);
        }
        let ranges = column_ranges(dim, if rows >= CHUNK_ROWS { threads } else { 1 });
        let (bad, largest) = match self.layout {
            Layout::InBatch | Layout::Wide => fill_columns::<T, (), SumsOnly>(
                features,
                &self.slots,
                dim,
                &ranges,
                &mut self.class_sums,
                &mut [],
                &mut Vec::new(),
            ),
            Layout::Shifted32 => fill_columns::<T, f32, ToShifted>(
                features,
                &self.slots,
                dim,
                &ranges,
                &mut self.class_sums,
                &mut self.shift,
                &mut self.narrow,
            ),
        };
        self.sum.clear();
        self.sum.resize(dim, 0.0);
        for sums in self.class_sums.chunks_exact(dim) {
            for (t, s) in self.sum.iter_mut().zip(sums) {
                *t += s;
            }
        }
        // f64 values were compared with the bound; a NaN or ±inf among f32 values (which
        // cannot overflow an f64 sum) leaves its column's sum non-finite.
        if bad || self.sum.iter().any(|s| !s.is_finite()) {
            return Err(validate_batch(features, labels, dim)
                .expect_err("a non-finite sum or an out-of-range value has a first bad value"));
        }
        if self.layout == Layout::Shifted32 {
            // Every partial sum of the f32 product is at most rows · max|z|²: keep it well
            // inside f32's range, or lay this batch out exactly instead.
            let largest = f64::from(f32::from_bits(largest as u32));
            if largest.powi(2) * rows as f64 >= f64::from(f32::MAX) / 4.0 {
                return self.fill(features, labels, dim, Precision::Exact, threads);
            }
        }
        Ok(())
    }

    /// Lays out one expanded chunk (column-major `rows × m`, at most [`CHUNK_ROWS`] rows):
    /// f64 rows as they are, f32 rows shifted (fast precision) as in [`fill`](Prepared::fill),
    /// by `shift` when given (the shift of the batch's first chunk, so that the batch's chunks
    /// share one f32 accumulator; see [`apply_part`](Prepared::apply_part)) or else by their
    /// mean.
    pub(crate) fn fill_expanded(
        &mut self,
        z: Expanded,
        labels: &[i64],
        m: usize,
        precision: Precision,
        shift: Option<&[f64]>,
    ) {
        let rows = labels.len();
        debug_assert!(rows <= CHUNK_ROWS);
        self.dim = m;
        self.rows = rows;
        self.row_major = false;
        self.class_ids.clear();
        self.class_ids.extend_from_slice(labels);
        self.class_ids.sort_unstable();
        self.class_ids.dedup();
        let k = self.class_ids.len();
        let slots: Vec<usize> = labels
            .iter()
            .map(|l| {
                self.class_ids
                    .binary_search(l)
                    .expect("every label was collected")
            })
            .collect();
        self.class_counts.clear();
        self.class_counts.resize(k, 0);
        for &slot in &slots {
            self.class_counts[slot] += 1;
        }
        self.class_sums.clear();
        self.class_sums.resize(k * m, 0.0);
        self.sum.clear();
        self.sum.resize(m, 0.0);
        if rows == 0 {
            self.layout = Layout::Wide;
            self.wide.clear();
            return;
        }
        // Column by column, while the column is in cache: the ReLU, the class sums and the
        // column's sum, then (fast precision) the shift, in place.
        let mut acc = vec![0f64; k];
        match z {
            Expanded::Wide(mut v) => {
                for (j, col) in v.chunks_exact_mut(rows).enumerate() {
                    self.sum[j] = relu_column(col, &slots, &mut acc, &mut self.class_sums[j..], m);
                }
                self.layout = Layout::Wide;
                self.wide = v;
            }
            Expanded::Narrow(mut v) if precision == Precision::Fast => {
                self.shift.clear();
                if let Some(given) = shift {
                    self.shift.extend_from_slice(given);
                }
                // The largest |x − shift|, as the bits of a non-negative f32 (whose order
                // is the values' order, and whose maximum vectorizes).
                let mut largest = 0u32;
                for (j, col) in v.chunks_exact_mut(rows).enumerate() {
                    let total = relu_column(col, &slots, &mut acc, &mut self.class_sums[j..], m);
                    self.sum[j] = total;
                    if shift.is_none() {
                        self.shift.push(f64::from((total / rows as f64) as f32));
                    }
                    let s = self.shift[j];
                    for x in col.iter_mut() {
                        *x = (f64::from(*x) - s) as f32;
                        largest = largest.max(x.to_bits() & 0x7fff_ffff);
                    }
                }
                self.layout = Layout::Shifted32;
                self.narrow = v;
                // The f32 accumulator may sum up to FOLD_ROWS such rows before it is folded.
                let largest = f64::from(f32::from_bits(largest));
                if largest.powi(2) * FOLD_ROWS as f64 >= f64::from(f32::MAX) / 4.0 {
                    self.layout = Layout::Wide;
                    self.wide = self.unshifted();
                }
            }
            Expanded::Narrow(mut v) => {
                for (j, col) in v.chunks_exact_mut(rows).enumerate() {
                    self.sum[j] = relu_column(col, &slots, &mut acc, &mut self.class_sums[j..], m);
                }
                self.layout = Layout::Wide;
                self.wide = v.iter().map(|&x| f64::from(x)).collect();
            }
        }
    }

    /// The shifted f32 rows widened and shifted back (an overflow fallback: rare).
    fn unshifted(&self) -> Vec<f64> {
        debug_assert!(!self.row_major, "only expanded chunks are unshifted");
        let rows = self.rows;
        let mut wide = Vec::with_capacity(self.narrow.len());
        for (col, &s) in self.narrow.chunks_exact(rows).zip(&self.shift) {
            wide.extend(col.iter().map(|&x| f64::from(x) + s));
        }
        wide
    }

    /// The shift of a fast-precision chunk (None for any other layout).
    pub(crate) fn shift(&self) -> Option<&[f64]> {
        (self.layout == Layout::Shifted32).then_some(self.shift.as_slice())
    }

    /// Like [`apply`](Prepared::apply) for one expanded chunk of a batch, except that a
    /// fast-precision chunk's f32 product is added into the open accumulator of the batch's
    /// earlier chunks with the same shift instead of being folded into the f64 Gram at once:
    /// folding an M × M product costs as much memory traffic as a chunk's product. The
    /// accumulator is folded after [`FOLD_ROWS`] rows, when the shift changes, and by
    /// [`fold_pending`], which must follow the batch's last chunk.
    pub(crate) fn apply_part(
        &self,
        m: &mut Moments,
        sign: f64,
        scratch: &mut ProductScratch,
        threads: usize,
    ) {
        if self.rows == 0 {
            return;
        }
        if self.layout != Layout::Shifted32 {
            self.apply::<f64>(&[], m, sign, scratch, threads);
            return;
        }
        let dim = self.dim;
        let compatible = scratch
            .pending
            .as_ref()
            .is_some_and(|p| p.sign == sign && p.rows + self.rows <= FOLD_ROWS && p.shift == self.shift);
        if !compatible {
            fold_pending(m, scratch);
        }
        if scratch.pending_product.nrows() != dim {
            scratch.pending_product = Mat::zeros(dim, dim);
        }
        let par = if threads > 1 {
            Par::rayon(threads)
        } else {
            Par::Seq
        };
        let accum = if scratch.pending.is_some() {
            Accum::Add
        } else {
            Accum::Replace
        };
        syrk(
            scratch.pending_product.as_mut(),
            &self.narrow,
            dim,
            self.row_major,
            accum,
            1.0,
            par,
        );
        let pending = scratch.pending.get_or_insert_with(|| Pending {
            shift: self.shift.clone(),
            sum: vec![0.0; dim],
            rows: 0,
            sign,
        });
        pending.rows += self.rows;
        for (t, s) in pending.sum.iter_mut().zip(&self.sum) {
            *t += s;
        }
        self.add_counts(m, sign);
    }

    /// `m ± this batch`: the Gram product (in the prepared precision), the count, the sums and
    /// the class sums and counts. For removal the counts were checked.
    ///
    /// The product's lower triangle is cut into column tiles of equal work that up to
    /// `threads` workers take one at a time (a worker slowed by another process simply takes
    /// fewer), each adding its tile straight into the Gram: no worker needs a Gram of its own.
    /// f32 rows in exact precision are widened [`widen_rows`] at a time.
    ///
    /// `batch` must be the batch's rows when they were left in it (exact precision); an
    /// expanded chunk or a fast-precision batch holds its own and ignores `batch`.
    pub(crate) fn apply<T: Feature>(
        &self,
        batch: &[T],
        m: &mut Moments,
        sign: f64,
        scratch: &mut ProductScratch,
        threads: usize,
    ) {
        if self.rows == 0 {
            return;
        }
        self.add_counts(m, sign);
        self.add_product(batch, m, sign, scratch, threads);
    }

    /// The Gram product part of [`apply`](Prepared::apply).
    fn add_product<T: Feature>(
        &self,
        batch: &[T],
        m: &mut Moments,
        sign: f64,
        scratch: &mut ProductScratch,
        threads: usize,
    ) {
        let dim = self.dim;
        let threads = threads.max(1);
        let row_major = self.row_major;
        match self.layout {
            Layout::Shifted32 => {
                // The batch's f32 product, then its f64 fold with the shift undone.
                if scratch.product.nrows() != dim {
                    scratch.product = Mat::zeros(dim, dim);
                }
                let x = transposed(&self.narrow, dim, row_major);
                syrk_tiled(scratch.product.as_mut(), x, Accum::Replace, 1.0, threads);
                fold_shifted(
                    m,
                    &self.shift,
                    &self.sum,
                    self.rows,
                    sign,
                    std::iter::once(&scratch.product),
                );
            }
            Layout::Wide => {
                let x = transposed(&self.wide, dim, row_major);
                syrk_tiled(m.gram.as_mut(), x, Accum::Add, sign, threads);
            }
            Layout::InBatch => {
                debug_assert_eq!(batch.len(), self.rows * dim);
                if let Some(x) = T::as_f64s(batch) {
                    syrk_tiled(
                        m.gram.as_mut(),
                        transposed(x, dim, true),
                        Accum::Add,
                        sign,
                        threads,
                    );
                } else if threads > 1 && dim < TILE_DIM && self.rows > CHUNK_ROWS {
                    syrk_chunked(&mut m.gram, batch, sign, threads, scratch);
                } else {
                    for chunk in batch.chunks(widen_rows(dim) * dim) {
                        widen(chunk, &mut scratch.wide, threads);
                        let x = transposed(&scratch.wide, dim, true);
                        syrk_tiled(m.gram.as_mut(), x, Accum::Add, sign, threads);
                    }
                }
            }
        }
    }

    /// `m ± this batch`'s count, sum and class counts and sums.
    fn add_counts(&self, m: &mut Moments, sign: f64) {
        let dim = self.dim;
        if sign > 0.0 {
            m.n += self.rows as u64;
        } else {
            m.n -= self.rows as u64;
        }
        m.weight += sign * self.rows as f64;
        for (t, s) in m.sum.iter_mut().zip(&self.sum) {
            *t += sign * s;
        }
        for ((&id, &count), sums) in self
            .class_ids
            .iter()
            .zip(&self.class_counts)
            .zip(self.class_sums.chunks_exact(dim))
        {
            let class = m.classes.entry(id).or_insert_with(|| ClassMoments {
                count: 0,
                weight: 0.0,
                sum: vec![0.0; dim],
            });
            class.weight += sign * count as f64;
            if sign > 0.0 {
                class.count += count;
            } else {
                class.count -= count;
            }
            for (t, s) in class.sum.iter_mut().zip(sums) {
                *t += sign * s;
            }
        }
    }
}

/// Reusable buffers of a [`Stats`](super::Stats): the prepared batch of a direct update and
/// the reducer's product buffers, so that a stream of batches allocates nothing per batch.
/// Cloning gives empty buffers: they hold no state.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) prepared: Prepared,
    pub(crate) product: ProductScratch,
}

/// The product's buffers: the f32 product of a fast-precision batch, a widened chunk of f32
/// rows (exact precision), and the open f32 accumulator of an expanded batch's chunks.
pub(crate) struct ProductScratch {
    product: Mat<f32>,
    wide: Vec<f64>,
    /// [`syrk_chunked`]'s workers after the first: a Gram and a widened chunk each.
    workers: Vec<(Mat<f64>, Vec<f64>)>,
    /// The open f32 accumulator of an expanded batch's chunks, and its bookkeeping.
    pending_product: Mat<f32>,
    pending: Option<Pending>,
}

impl Default for ProductScratch {
    fn default() -> Self {
        ProductScratch {
            product: Mat::new(),
            wide: Vec::new(),
            workers: Vec::new(),
            pending_product: Mat::new(),
            pending: None,
        }
    }
}

/// The next chunk index below `chunks`, or None when all are taken.
fn take(next: &AtomicUsize, chunks: usize) -> Option<usize> {
    let k = next.fetch_add(1, Ordering::Relaxed);
    (k < chunks).then_some(k)
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

/// Rows an open f32 accumulator takes before it is folded (see [`Prepared::apply_part`]).
pub(crate) const FOLD_ROWS: usize = 16 * CHUNK_ROWS;

/// The open f32 accumulator's bookkeeping: Σ (z − shift)(z − shift)ᵀ over `rows` rows, whose
/// sum is `sum`, to be folded with `sign`.
pub(crate) struct Pending {
    shift: Vec<f64>,
    sum: Vec<f64>,
    rows: usize,
    sign: f64,
}

/// Folds the open accumulator, if any, into `m`'s Gram.
pub(crate) fn fold_pending(m: &mut Moments, scratch: &mut ProductScratch) {
    if let Some(p) = scratch.pending.take() {
        fold_shifted(
            m,
            &p.shift,
            &p.sum,
            p.rows,
            p.sign,
            std::iter::once(&scratch.pending_product),
        );
    }
}

/// Adds `sign` × XᵀX to the Gram's lower triangle, given the f32 products Σ (x − s)(x − s)ᵀ
/// of X's rows (split among `products`), the shift s, X's column sums and its row count:
/// XᵀX = Σ (x − s)(x − s)ᵀ + s·sumᵀ + sum·sᵀ − rows·s·sᵀ.
fn fold_shifted<'a>(
    m: &mut Moments,
    shift: &[f64],
    sum: &[f64],
    rows: usize,
    sign: f64,
    products: impl Iterator<Item = &'a Mat<f32>>,
) {
    // One read-modify-write of the Gram per batch, compiled for the CPU's vector width.
    struct Fold<'a> {
        gram: &'a mut Mat<f64>,
        shift: &'a [f64],
        sum: &'a [f64],
        rows: f64,
        sign: f64,
        products: Vec<&'a Mat<f32>>,
    }
    impl pulp::WithSimd for Fold<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let Fold {
                gram,
                shift,
                sum,
                rows: b,
                sign,
                products,
            } = self;
            for j in 0..shift.len() {
                let dst = &mut gram.col_as_slice_mut(j)[j..];
                let (mj, sj) = (shift[j], sum[j]);
                let terms = dst.iter_mut().zip(&shift[j..]).zip(&sum[j..]);
                match products.as_slice() {
                    [product] => {
                        for (((d, &mi), &si), &z) in terms.zip(&product.col_as_slice(j)[j..]) {
                            *d += sign * ((mi * sj + si * mj - b * mi * mj) + f64::from(z));
                        }
                    }
                    _ => {
                        for ((d, &mi), &si) in terms {
                            *d += sign * (mi * sj + si * mj - b * mi * mj);
                        }
                        for product in &products {
                            for (d, &z) in dst.iter_mut().zip(&product.col_as_slice(j)[j..]) {
                                *d += sign * f64::from(z);
                            }
                        }
                    }
                }
            }
        }
    }
    pulp::Arch::new().dispatch(Fold {
        gram: &mut m.gram,
        shift,
        sum,
        rows: rows as f64,
        sign,
        products: products.collect(),
    });
}

/// The ReLU of one column, in place, then its [`column_sums`].
fn relu_column<U: Relu>(
    col: &mut [U],
    slots: &[usize],
    acc: &mut [f64],
    class_sums: &mut [f64],
    m: usize,
) -> f64 {
    for x in col.iter_mut() {
        *x = x.relu();
    }
    column_sums(col, slots, acc, class_sums, m)
}

/// max(x, 0) through the float's own `max`, which vectorizes (a generic `<` compare did not:
/// measured 10–15% slower on the expanded update).
trait Relu: Copy + Into<f64> {
    fn relu(self) -> Self;
}

impl Relu for f32 {
    #[inline]
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

impl Relu for f64 {
    #[inline]
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

/// One column's class sums, written to `class_sums[slot · m]` (row-major, one row of `m` per
/// slot, starting at the column), and its total: the sum of its classes' sums.
fn column_sums<U: Copy + Into<f64>>(
    col: &[U],
    slots: &[usize],
    acc: &mut [f64],
    class_sums: &mut [f64],
    m: usize,
) -> f64 {
    if acc.len() == 1 {
        // Eight running sums, so that the additions vectorize.
        let mut lanes = [0f64; 8];
        let mut blocks = col.chunks_exact(8);
        for block in &mut blocks {
            for (l, &v) in lanes.iter_mut().zip(block) {
                *l += v.into();
            }
        }
        let tail: f64 = blocks.remainder().iter().map(|&v| v.into()).sum();
        acc[0] = lanes.iter().sum::<f64>() + tail;
    } else {
        acc.fill(0.0);
        for (&slot, &v) in slots.iter().zip(col) {
            acc[slot] += v.into();
        }
    }
    let mut total = 0.0;
    for (slot, &a) in acc.iter().enumerate() {
        class_sums[slot * m] = a;
        total += a;
    }
    total
}

/// Column ranges for `threads` workers, each a multiple of 16 columns (whole cache lines of
/// f32) except the last.
fn column_ranges(dim: usize, threads: usize) -> Vec<Range<usize>> {
    let width = dim.div_ceil(threads.max(1)).next_multiple_of(16).max(1);
    (0..dim).step_by(width).map(|j| j..(j + width).min(dim)).collect()
}

/// The fused pass of [`Prepared::fill`], one worker per column range: adds every row's
/// values into its class's sums (`class_sums`, row-major `classes × dim`), writes
/// `convert(out_row, row, shift)` into `out` (row-major like `features`), and returns whether
/// an f64 value exceeded [`MAX_ABS_FEATURE`] and the largest value `convert` returned. A
/// non-empty `shift` is first set to the first chunk's column means, rounded to f32.
#[allow(clippy::too_many_arguments)]
fn fill_columns<T: Feature, U: Copy + Default + Send, C: Convert<T, U>>(
    features: &[T],
    slots: &[usize],
    dim: usize,
    ranges: &[Range<usize>],
    class_sums: &mut [f64],
    shift: &mut [f64],
    out: &mut Vec<U>,
) -> (bool, i32) {
    // Every slot is overwritten below; only a change of length needs a resize.
    if out.len() != features.len() {
        out.clear();
        out.resize(features.len(), U::default());
    }
    let shift_parts = if shift.is_empty() {
        ranges.iter().map(|_| Vec::new()).collect()
    } else {
        split_columns(shift, dim, ranges)
    };
    let parts = ranges
        .iter()
        .zip(split_columns(class_sums, dim, ranges))
        .zip(split_columns(out, dim, ranges))
        .zip(shift_parts)
        .map(|(((range, sums), outs), shift)| ColumnPart {
            range: range.clone(),
            sums,
            outs,
            shift,
        });
    let work = |part: ColumnPart<'_, U>| fill_part_dispatch::<T, U, C>(features, slots, dim, part);
    let combine = |(b1, l1): (bool, i32), (b2, l2): (bool, i32)| (b1 | b2, l1.max(l2));
    if ranges.len() > 1 {
        use rayon::prelude::*;
        parts
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(work)
            .reduce(|| (false, 0), combine)
    } else {
        parts.map(work).fold((false, 0), combine)
    }
}

/// How [`fill_columns`] writes a row's values in the product's precision.
trait Convert<T, U>: Sync {
    /// Writes `out` from `x` (and the row's `shift`, empty when the layout has none);
    /// returns a value whose maximum over the batch is wanted, or 0.
    fn row(out: &mut [U], x: &[T], shift: &[f64]) -> i32;
}

/// Exact precision: the sums only (the product reads the caller's rows).
struct SumsOnly;
/// Fast precision: x − shift rounded to f32; returns the largest |x − shift| as the bits of a
/// non-negative f32, an i32 whose order is the values' order (its maximum vectorizes).
struct ToShifted;

impl<T: Feature> Convert<T, ()> for SumsOnly {
    #[inline(always)]
    fn row(_: &mut [()], _: &[T], _: &[f64]) -> i32 {
        0
    }
}

impl<T: Feature> Convert<T, f32> for ToShifted {
    #[inline(always)]
    fn row(out: &mut [f32], x: &[T], shift: &[f64]) -> i32 {
        let mut largest = 0i32;
        for ((o, &v), &s) in out.iter_mut().zip(x).zip(shift) {
            *o = (v.to_f64() - s) as f32;
            let bits = (o.to_bits() & 0x7fff_ffff) as i32;
            if bits > largest {
                largest = bits;
            }
        }
        largest
    }
}

/// [`fill_part`] compiled for the widest vector instructions this CPU has (through pulp,
/// which faer uses too: AVX2 and FMA on x86-64; the rest of the crate targets the baseline).
/// Only the instruction set differs: every value is computed by the same operations in the
/// same order, so the results are the same bits.
fn fill_part_dispatch<T: Feature, U: Copy, C: Convert<T, U>>(
    features: &[T],
    slots: &[usize],
    dim: usize,
    part: ColumnPart<'_, U>,
) -> (bool, i32) {
    struct Op<'a, 'b, T, U, C> {
        features: &'a [T],
        slots: &'a [usize],
        dim: usize,
        part: ColumnPart<'b, U>,
        convert: std::marker::PhantomData<C>,
    }
    impl<T: Feature, U: Copy, C: Convert<T, U>> pulp::WithSimd for Op<'_, '_, T, U, C> {
        type Output = (bool, i32);
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Self::Output {
            fill_part::<T, U, C>(self.features, self.slots, self.dim, self.part)
        }
    }
    pulp::Arch::new().dispatch(Op::<T, U, C> {
        features,
        slots,
        dim,
        part,
        convert: std::marker::PhantomData,
    })
}

/// One column range of [`fill_columns`]: the shift (if any) from the first chunk's rows,
/// then every row's class sums and converted values, and the range check of f64 values.
#[inline(always)]
fn fill_part<T: Feature, U: Copy, C: Convert<T, U>>(
    features: &[T],
    slots: &[usize],
    dim: usize,
    part: ColumnPart<'_, U>,
) -> (bool, i32) {
    let ColumnPart {
        range,
        mut sums,
        mut outs,
        mut shift,
    } = part;
    let columns = |r: usize| &features[r * dim + range.start..r * dim + range.end];
    let shift: &[f64] = match shift.first_mut() {
        Some(shift) => {
            let first = slots.len().min(CHUNK_ROWS);
            for r in 0..first {
                for (s, &v) in shift.iter_mut().zip(columns(r)) {
                    *s += v.to_f64();
                }
            }
            for s in shift.iter_mut() {
                *s = f64::from((*s / first as f64) as f32);
            }
            shift
        }
        None => &[],
    };
    let mut bad = false;
    let mut largest = 0i32;
    for (r, (&slot, out)) in slots.iter().zip(outs.iter_mut()).enumerate() {
        let x = columns(r);
        for (s, &v) in sums[slot].iter_mut().zip(x) {
            *s += v.to_f64();
        }
        if !T::EXACT_IN_F32 {
            bad |= x
                .iter()
                .fold(false, |b, &v| b | (v.to_f64().abs() > MAX_ABS_FEATURE));
        }
        largest = largest.max(C::row(out, x, shift));
    }
    (bad, largest)
}

/// One worker's share of [`fill_columns`]: its columns of every class's sums, of every
/// output row and of the shift (empty when there is none).
struct ColumnPart<'a, U> {
    range: Range<usize>,
    sums: Vec<&'a mut [f64]>,
    outs: Vec<&'a mut [U]>,
    shift: Vec<&'a mut [f64]>,
}

/// Splits a row-major buffer of rows of `dim` values by column ranges: part `i` holds every
/// row's columns `ranges[i]`, one slice per row.
fn split_columns<'a, V>(buf: &'a mut [V], dim: usize, ranges: &[Range<usize>]) -> Vec<Vec<&'a mut [V]>> {
    let mut parts: Vec<Vec<&'a mut [V]>> = ranges
        .iter()
        .map(|_| Vec::with_capacity(buf.len() / dim.max(1)))
        .collect();
    for mut row in buf.chunks_exact_mut(dim.max(1)) {
        for (part, range) in parts.iter_mut().zip(ranges) {
            let (head, tail) = std::mem::take(&mut row).split_at_mut(range.len());
            part.push(head);
            row = tail;
        }
    }
    parts
}

/// Below this dimension, f32 rows in exact precision are multiplied by [`syrk_chunked`]
/// (measured faster there: 947k against 787k samples/s at d = 384, 2 threads) rather than
/// by tiles; its extra Gram per worker is then at most 8 MiB.
const TILE_DIM: usize = 1024;

/// `gram ± XᵀX` for row-major f32 rows X (exact precision) on `threads` workers that take
/// [`CHUNK_ROWS`]-row chunks from a shared counter, widen each and add its product into
/// their own accumulator (worker 0 straight into `gram`; the others' are added after).
fn syrk_chunked<T: Feature>(
    gram: &mut Mat<f64>,
    batch: &[T],
    sign: f64,
    threads: usize,
    scratch: &mut ProductScratch,
) {
    let dim = gram.nrows();
    let chunks = (batch.len() / dim).div_ceil(CHUNK_ROWS);
    let workers = threads.min(chunks);
    scratch
        .workers
        .resize_with(workers - 1, || (Mat::zeros(dim, dim), Vec::new()));
    for (g, _) in &mut scratch.workers {
        if g.nrows() != dim {
            *g = Mat::zeros(dim, dim);
        }
    }
    let next = AtomicUsize::new(0);
    let work = |mut acc: faer::MatMut<'_, f64>, wide: &mut Vec<f64>, alpha: f64, mut accum: Accum| {
        let mut used = false;
        while let Some(k) = take(&next, chunks) {
            let chunk = &batch[k * CHUNK_ROWS * dim..((k + 1) * CHUNK_ROWS * dim).min(batch.len())];
            widen(chunk, wide, 1);
            syrk(acc.as_mut(), wide, dim, true, accum, alpha, Par::Seq);
            accum = Accum::Add;
            used = true;
        }
        used
    };
    let mut used = vec![false; workers - 1];
    rayon::scope(|s| {
        for ((g, wide), used) in scratch.workers.iter_mut().zip(used.iter_mut()) {
            let work = &work;
            s.spawn(move |_| *used = work(g.as_mut(), wide, 1.0, Accum::Replace));
        }
        work(gram.as_mut(), &mut scratch.wide, sign, Accum::Add);
    });
    for ((g, _), _) in scratch.workers.iter().zip(&used).filter(|(_, u)| **u) {
        // Only the lower triangles were written; the upper ones stay zero.
        if sign > 0.0 {
            *gram += g;
        } else {
            *gram -= g;
        }
    }
}

/// Rows of f32 input widened at a time in exact precision: 4 MiB of f64 (at least
/// [`CHUNK_ROWS`]), so that small dimensions still give each product call enough work.
fn widen_rows(dim: usize) -> usize {
    ((4 << 20) / (8 * dim.max(1))).max(CHUNK_ROWS)
}

/// Xᵀ as a `dim × rows` view of X's rows, row-major or column-major.
fn transposed<T>(x: &[T], dim: usize, row_major: bool) -> MatRef<'_, T> {
    let rows = x.len() / dim;
    if row_major {
        MatRef::from_column_major_slice(x, dim, rows)
    } else {
        MatRef::from_column_major_slice(x, rows, dim).transpose()
    }
}

/// The column tiles of a `dim × dim` lower triangle: bounds `0 = b₀ < b₁ < … = dim` whose
/// tiles (columns bₖ..bₖ₊₁, rows bₖ..dim) hold about equal shares of the triangle, each at
/// least 32 columns wide and a multiple of 16 (except the last).
fn tile_bounds(dim: usize, tiles: usize) -> Vec<usize> {
    let total = (dim * (dim + 1) / 2) as f64;
    let mut bounds = vec![0];
    let mut a = 0usize;
    for t in 1..tiles {
        // Columns 0..b hold b·dim − b(b−1)/2 entries; solve for the t-th share.
        let target = total * t as f64 / tiles as f64;
        let n = dim as f64 + 0.5;
        let b = n - (n * n - 2.0 * target).max(0.0).sqrt();
        let b = ((b / 16.0).round() as usize * 16).min(dim);
        if b >= a + 32 && b + 32 <= dim {
            bounds.push(b);
            a = b;
        }
    }
    bounds.push(dim);
    bounds
}

/// `dst = accum(dst) + alpha · XᵀX` on the lower triangle, given `xt` = Xᵀ (`dim × rows`).
///
/// The triangle is cut into [`tile_bounds`] tiles (four per thread) that up to `threads`
/// workers take from a shared counter; each tile is a triangular diagonal block and a
/// rectangular block below it, both computed by faer's sequential kernels straight into
/// `dst`. One thread, or a dimension too small for tiles, runs one triangular product.
fn syrk_tiled<T: faer::traits::ComplexField + Copy + Send + Sync>(
    dst: faer::MatMut<'_, T>,
    xt: MatRef<'_, T>,
    accum: Accum,
    alpha: T,
    threads: usize,
) {
    let dim = xt.nrows();
    let bounds = if threads > 1 {
        tile_bounds(dim, 4 * threads)
    } else {
        vec![0, dim]
    };
    if bounds.len() <= 2 {
        matmul(
            dst,
            BlockStructure::TriangularLower,
            accum,
            xt,
            BlockStructure::Rectangular,
            xt.transpose(),
            BlockStructure::Rectangular,
            alpha,
            Par::Seq,
        );
        return;
    }
    let mut tiles = Vec::with_capacity(bounds.len() - 1);
    let mut rest = dst;
    for w in bounds.windows(2) {
        let (tile, right) = rest.split_at_col_mut(w[1] - w[0]);
        tiles.push(std::sync::Mutex::new(Some((w[0], tile))));
        rest = right;
    }
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some(t) = take(&next, tiles.len()) {
            let Some((a, tile)) = tiles[t].lock().unwrap_or_else(|p| p.into_inner()).take() else {
                continue;
            };
            let w = tile.ncols();
            let (top, below) = tile.split_at_row_mut(a + w);
            let diag = top.subrows_mut(a, w);
            let cols = xt.subrows(a, w);
            matmul(
                diag,
                BlockStructure::TriangularLower,
                accum,
                cols,
                BlockStructure::Rectangular,
                cols.transpose(),
                BlockStructure::Rectangular,
                alpha,
                Par::Seq,
            );
            if a + w < dim {
                faer::linalg::matmul::matmul(
                    below,
                    accum,
                    xt.subrows(a + w, dim - a - w),
                    cols.transpose(),
                    alpha,
                    Par::Seq,
                );
            }
        }
    };
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| work());
        }
        work();
    });
}

/// `wide` = `chunk` widened to f64 (exactly), with the CPU's vector width, on up to
/// `threads` threads.
fn widen<T: Feature>(chunk: &[T], wide: &mut Vec<f64>, threads: usize) {
    struct Op<'a, T>(&'a [T], &'a mut [f64]);
    impl<T: Feature> pulp::WithSimd for Op<'_, T> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            for (w, &v) in self.1.iter_mut().zip(self.0) {
                *w = v.to_f64();
            }
        }
    }
    if wide.len() != chunk.len() {
        wide.clear();
        wide.resize(chunk.len(), 0.0);
    }
    let piece = chunk.len().div_ceil(threads.max(1)).max(1 << 14);
    if threads > 1 && chunk.len() > piece {
        use rayon::prelude::*;
        chunk
            .par_chunks(piece)
            .zip(wide.par_chunks_mut(piece))
            .for_each(|(c, w)| pulp::Arch::new().dispatch(Op(c, w)));
    } else {
        pulp::Arch::new().dispatch(Op(chunk, wide));
    }
}

/// `dst = accum(dst) + alpha · XᵀX` on the lower triangle, X `rows × dim`, row-major or
/// column-major. Row-major X is Aᵀ with A = X's memory read as a column-major `dim × rows`
/// matrix, so XᵀX = A·Aᵀ: faer then packs its operands itself and nothing is transposed
/// beforehand.
fn syrk<T: faer::traits::ComplexField + Copy>(
    dst: faer::MatMut<'_, T>,
    x: &[T],
    dim: usize,
    row_major: bool,
    accum: Accum,
    alpha: T,
    par: Par,
) {
    let rows = x.len() / dim;
    let (lhs, rhs) = if row_major {
        let a = MatRef::from_column_major_slice(x, dim, rows);
        (a, a.transpose())
    } else {
        let r = MatRef::from_column_major_slice(x, rows, dim);
        (r.transpose(), r)
    };
    matmul(
        dst,
        BlockStructure::TriangularLower,
        accum,
        lhs,
        BlockStructure::Rectangular,
        rhs,
        BlockStructure::Rectangular,
        alpha,
        par,
    );
}
