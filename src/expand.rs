//! Seeded random-feature expansion: z = ReLU(x·R), as RanPAC and the ACIL family solve on.
//!
//! R is a `d × M` matrix that is never stored in a file: every entry is a pure function of
//! the seed and its position, so any implementation regenerates it bit for bit. The
//! generator (version 1) is:
//!
//! - **Philox4x32-10** (Salmon et al., SC 2011, as in Random123), key
//!   `[seed mod 2³², seed div 2³²]`, counter `[j, i, 0, 0]` for the entry in row `i`
//!   (input feature) and column `j` (expanded feature). One call gives four 32-bit words
//!   w₀…w₃.
//! - **An approximately standard normal value from the four words** (Irwin–Hall with n = 4,
//!   standardised): s = w₀ + w₁ + w₂ + w₃ as an integer, then
//!   `R[i, j] = f32(f64(s − (2³³ − 2)) · (√3 / 2³²))`: an exact integer, one f64 product
//!   with the f64 constant √3·2⁻³² (each correctly rounded), one rounding to f32. Mean 0,
//!   variance 1 − 2⁻⁶⁴, support ±2√3, excess kurtosis −0.3. No transcendental function is
//!   involved, so torch, numpy or CUDA reproduce it exactly with integer arithmetic.
//! - **ReLU**: z = max(x·R, 0).
//!
//! A [`Stats`](crate::stats::Stats) built with [`Stats::expanded`](crate::stats::Stats::expanded)
//! takes raw d-dimensional features and accumulates the statistics of z, M-dimensional,
//! 512 rows at a time: the expanded batch is never held whole.
//!
//! # Examples
//! ```
//! use headstart::expand::{Expansion, RandomFeatures};
//! let rf = RandomFeatures::new(Expansion::new(3, 8, 42)?);
//! let z = rf.transform(&[1.0f64, -2.0, 0.5], 1)?;
//! assert_eq!(z.len(), 8);
//! assert!(z.iter().all(|&v| v >= 0.0));
//! // Entries depend on the seed and position only.
//! assert_eq!(rf.matrix()[5], headstart::expand::entry(42, 0, 5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::OnceLock;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::stats::{BatchError, Feature, MAX_ABS_FEATURE, MAX_DIM, validate_batch};

/// The largest magnitude of an entry of R: (2³³ − 2)·√3/2³², just under 2√3.
pub const MAX_ABS_ENTRY: f64 = 3.464_101_615_137_754_6;

/// The version of the generator and the activation described in the [module](self) docs.
pub const VERSION: u32 = 1;

/// The counter-based generator of R's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Generator {
    /// Philox4x32-10 words summed to an approximately normal value (see the module docs).
    #[serde(rename = "philox4x32-10")]
    Philox4x32x10,
}

/// The nonlinearity applied to x·R.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// max(v, 0).
    #[serde(rename = "relu")]
    Relu,
}

/// What defines an expansion, and with it every entry of R: the input dimension d, the
/// expanded dimension M, the seed, the generator, the activation and the version. States,
/// state files and exported heads record it; states with different specs do not merge.
///
/// # Examples
/// ```
/// use headstart::expand::Expansion;
/// let spec = Expansion::new(768, 8192, 7)?;
/// assert_eq!((spec.input_dim, spec.features, spec.seed), (768, 8192, 7));
/// assert!(Expansion::new(768, 0, 7).is_err());
/// let json = spec.to_json();
/// assert_eq!(Expansion::from_json(&json)?, spec);
/// # Ok::<(), headstart::expand::ExpansionError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Expansion {
    /// The generator's version ([`VERSION`]).
    pub version: u32,
    /// d: the raw features' dimension.
    pub input_dim: usize,
    /// M: the expanded features' dimension (the statistics' dimension).
    pub features: usize,
    /// The seed of R.
    pub seed: u64,
    /// How R's entries are drawn.
    pub generator: Generator,
    /// The nonlinearity.
    pub activation: Activation,
}

/// Why an expansion spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpansionError {
    /// A dimension is zero or above [`MAX_DIM`].
    #[error("expansion {what} {value} is not in 1..={MAX_DIM}")]
    Dimension {
        /// `input dimension` or `feature count`.
        what: &'static str,
        /// The value given.
        value: usize,
    },
    /// A spec from a file or a peer has a version this build does not know.
    #[error("expansion version {0} is not supported (this build knows version {VERSION})")]
    Version(u32),
    /// A spec's text is not valid.
    #[error("expansion spec is not valid: {0}")]
    Parse(String),
}

impl Expansion {
    /// The version-1 ReLU expansion of `input_dim` features to `features`, seeded by `seed`.
    ///
    /// # Errors
    /// [`ExpansionError::Dimension`] for a dimension of 0 or above [`MAX_DIM`].
    pub fn new(input_dim: usize, features: usize, seed: u64) -> Result<Self, ExpansionError> {
        let spec = Expansion {
            version: VERSION,
            input_dim,
            features,
            seed,
            generator: Generator::Philox4x32x10,
            activation: Activation::Relu,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks a spec that came from outside (a file, a peer, a Python caller).
    ///
    /// # Errors
    /// An unknown version or a dimension out of range.
    pub fn check(&self) -> Result<(), ExpansionError> {
        if self.version != VERSION {
            return Err(ExpansionError::Version(self.version));
        }
        for (what, value) in [
            ("input dimension", self.input_dim),
            ("feature count", self.features),
        ] {
            if value == 0 || value > MAX_DIM {
                return Err(ExpansionError::Dimension { what, value });
            }
        }
        Ok(())
    }

    /// The spec as one line of JSON (safetensors metadata, the server's replies).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serialises")
    }

    /// Parses and [`check`](Expansion::check)s [`to_json`](Expansion::to_json)'s output.
    ///
    /// # Errors
    /// Text that is not such a spec.
    pub fn from_json(text: &str) -> Result<Self, ExpansionError> {
        let spec: Expansion = serde_json::from_str(text).map_err(|e| ExpansionError::Parse(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }
}

impl std::fmt::Display for Expansion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relu random features {} → {}, seed {}, philox4x32-10, version {}",
            self.input_dim, self.features, self.seed, self.version
        )
    }
}

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 of `counter` under `key` (Random123's `philox4x32(ctr, key)` with 10 rounds).
///
/// # Examples
/// ```
/// // Random123's known-answer vector for the zero counter and key.
/// assert_eq!(
///     headstart::expand::philox4x32_10([0; 4], [0; 2]),
///     [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
/// );
/// ```
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mulhilo = |a: u32, b: u32| {
        let p = u64::from(a) * u64::from(b);
        ((p >> 32) as u32, p as u32)
    };
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        let (hi0, lo0) = mulhilo(PHILOX_M0, c[0]);
        let (hi1, lo1) = mulhilo(PHILOX_M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The entry of R in row `i` (input feature) and column `j` (expanded feature) for `seed`,
/// exactly as the [module](self) docs define it.
///
/// # Examples
/// ```
/// let v = headstart::expand::entry(0, 0, 0);
/// assert!(v.abs() < 3.47);
/// assert_eq!(v, headstart::expand::entry(0, 0, 0));
/// assert_ne!(v, headstart::expand::entry(1, 0, 0));
/// ```
pub fn entry(seed: u64, i: usize, j: usize) -> f32 {
    let key = [seed as u32, (seed >> 32) as u32];
    let w = philox4x32_10([j as u32, i as u32, 0, 0], key);
    let s: i64 = w.iter().map(|&v| i64::from(v)).sum();
    let centred = s - ((1i64 << 33) - 2);
    (centred as f64 * (3f64.sqrt() / 4_294_967_296.0)) as f32
}

/// An [`Expansion`] with its matrix R, generated once on first use (in parallel, row by row)
/// and kept in memory: d·M·4 bytes (f32), plus as much again in f64 for exact products.
/// Clones share nothing; wrap it in an `Arc` to share.
pub struct RandomFeatures {
    spec: Expansion,
    matrix: OnceLock<Vec<f32>>,
    wide: OnceLock<Vec<f64>>,
}

impl std::fmt::Debug for RandomFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RandomFeatures({})", self.spec)
    }
}

impl Clone for RandomFeatures {
    fn clone(&self) -> Self {
        RandomFeatures::new(self.spec)
    }
}

/// The products x·R of a chunk's rows, before the ReLU (its consumer applies it as it passes
/// over them): column-major `rows × M`, in the precision asked for.
pub(crate) enum Expanded {
    /// Exact: f64 products of the widened input and R.
    Wide(Vec<f64>),
    /// Fast: f32 products.
    Narrow(Vec<f32>),
}

impl RandomFeatures {
    /// The expansion `spec` (R is generated on first use).
    pub fn new(spec: Expansion) -> Self {
        RandomFeatures {
            spec,
            matrix: OnceLock::new(),
            wide: OnceLock::new(),
        }
    }

    /// Its spec.
    pub fn spec(&self) -> &Expansion {
        &self.spec
    }

    /// R, row-major `d × M` (entry `(i, j)` at `i·M + j`), as [`entry`] defines it.
    pub fn matrix(&self) -> &[f32] {
        self.matrix.get_or_init(|| {
            use rayon::prelude::*;
            let (d, m, seed) = (self.spec.input_dim, self.spec.features, self.spec.seed);
            let mut r = vec![0f32; d * m];
            r.par_chunks_mut(m).enumerate().for_each(|(i, row)| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = entry(seed, i, j);
                }
            });
            r
        })
    }

    fn matrix_wide(&self) -> &[f64] {
        self.wide
            .get_or_init(|| self.matrix().iter().map(|&v| f64::from(v)).collect())
    }

    /// Expands `rows` rows of raw features (row-major `rows × d`) to row-major `rows × M`:
    /// f32 products for f32 input, f64 products for f64 input (the values are returned as
    /// f64 either way).
    ///
    /// # Errors
    /// A malformed batch (shape, NaN/Inf, magnitude) or a row whose expansion could exceed
    /// [`MAX_ABS_FEATURE`], naming the row.
    pub fn transform<T: Feature>(&self, features: &[T], rows: usize) -> Result<Vec<f64>, BatchError> {
        let labels = vec![0i64; rows];
        self.validate(features, &labels)?;
        let m = self.spec.features;
        let mut out = vec![0f64; rows * m];
        let d = self.spec.input_dim;
        for (chunk, dst) in features.chunks(512 * d).zip(out.chunks_mut(512 * m)) {
            let n = chunk.len() / d;
            match self.expand_chunk(chunk, !T::EXACT_IN_F32, default_par()) {
                Expanded::Wide(z) => transpose_into(&z, n, m, dst, |v| v.max(0.0)),
                Expanded::Narrow(z) => transpose_into(&z, n, m, dst, |v| f64::from(v.max(0.0))),
            }
        }
        Ok(out)
    }

    /// Validates raw input for this expansion: the batch itself, then every row's L1 norm
    /// times [`MAX_ABS_ENTRY`] (a bound on |x·R|) against [`MAX_ABS_FEATURE`].
    ///
    /// # Errors
    /// As [`validate_batch`], or [`BatchError::ExpandedOutOfRange`].
    pub fn validate<T: Feature>(&self, features: &[T], labels: &[i64]) -> Result<(), BatchError> {
        validate_batch(features, labels, self.spec.input_dim)?;
        self.check_magnitudes(features)
    }

    /// The expansion's own check of a batch that [`validate_batch`] accepted: every row's
    /// L1 norm times [`MAX_ABS_ENTRY`] within [`MAX_ABS_FEATURE`].
    pub(crate) fn check_magnitudes<T: Feature>(&self, features: &[T]) -> Result<(), BatchError> {
        let d = self.spec.input_dim;
        for (row, x) in features.chunks_exact(d).enumerate() {
            let l1: f64 = x.iter().map(|v| v.to_f64().abs()).sum();
            if l1 * MAX_ABS_ENTRY > MAX_ABS_FEATURE {
                return Err(BatchError::ExpandedOutOfRange {
                    row,
                    l1: format!("{l1:e}"),
                });
            }
        }
        Ok(())
    }

    /// x·R of one validated chunk of rows, column-major, before the ReLU. `exact` asks for f64 products;
    /// otherwise they are f32, unless the chunk's magnitudes could overflow f32 (then f64).
    pub(crate) fn expand_chunk<T: Feature>(&self, chunk: &[T], exact: bool, par: Par) -> Expanded {
        let (d, m) = (self.spec.input_dim, self.spec.features);
        let rows = chunk.len() / d;
        // |x·R| ≤ ‖x‖₁·max|R|; its square times the chunk's rows must stay inside f32.
        let largest = chunk
            .chunks_exact(d)
            .map(|x| x.iter().map(|v| v.to_f64().abs()).sum::<f64>())
            .fold(0.0, f64::max)
            * MAX_ABS_ENTRY;
        let fits_f32 = largest * largest * (d.max(rows) as f64) < f64::from(f32::MAX) / 4.0;
        if exact || !fits_f32 {
            let x: Vec<f64> = chunk.iter().map(|v| v.to_f64()).collect();
            let mut z = vec![0f64; rows * m];
            project(1.0, &x, self.matrix_wide(), (rows, d, m), &mut z, par);
            Expanded::Wide(z)
        } else {
            let x: Vec<f32> = chunk.iter().map(|v| v.to_f32()).collect();
            let mut z = vec![0f32; rows * m];
            project(1.0, &x, self.matrix(), (rows, d, m), &mut z, par);
            Expanded::Narrow(z)
        }
    }
}

/// `z = x·r` into column-major `rows × m`; x row-major `rows × d`, r row-major `d × m`.
fn project<T: faer::traits::ComplexField + Copy>(
    one: T,
    x: &[T],
    r: &[T],
    (rows, d, m): (usize, usize, usize),
    z: &mut [T],
    par: Par,
) {
    let xr = MatRef::from_row_major_slice(x, rows, d);
    let rr = MatRef::from_row_major_slice(r, d, m);
    let zr = MatMut::from_column_major_slice_mut(z, rows, m);
    matmul(zr, Accum::Replace, xr, rr, one, par);
}

/// Column-major `rows × m` into row-major `dst`.
fn transpose_into<U: Copy>(z: &[U], rows: usize, m: usize, dst: &mut [f64], f: impl Fn(U) -> f64) {
    for (j, column) in z.chunks_exact(rows).enumerate().take(m) {
        for (r, &v) in column.iter().enumerate() {
            dst[r * m + j] = f(v);
        }
    }
}

fn default_par() -> Par {
    let threads = crate::stats::default_threads();
    if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors (kat_vectors, philox4x32 with 10 rounds).
    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn entries_are_standardised() {
        let n = 200_000;
        let v: Vec<f64> = (0..n).map(|j| f64::from(entry(3, j / 1000, j % 1000))).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/√n ≈ 0.0022 for the mean, √(2/n)·… ≈ 0.003 for the variance.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        assert!(v.iter().all(|x| x.abs() <= MAX_ABS_ENTRY));
    }

    #[test]
    fn transform_matches_a_direct_f64_product() {
        let rf = RandomFeatures::new(Expansion::new(5, 700, 11).unwrap());
        let rows = 600; // two chunks
        let x: Vec<f64> = (0..rows * 5)
            .map(|k| ((k * 7919) % 13) as f64 / 7.0 - 0.9)
            .collect();
        let z = rf.transform(&x, rows).unwrap();
        for r in [0, 1, 511, 512, 599] {
            for j in [0, 1, 350, 699] {
                let dot: f64 = (0..5).map(|i| x[r * 5 + i] * f64::from(entry(11, i, j))).sum();
                let want = dot.max(0.0);
                assert!(
                    (z[r * 700 + j] - want).abs() <= 1e-12 * (1.0 + want.abs()),
                    "{r},{j}"
                );
            }
        }
    }

    #[test]
    fn bad_specs_and_rows_are_refused() {
        assert!(matches!(
            Expansion::new(0, 8, 0),
            Err(ExpansionError::Dimension { .. })
        ));
        let mut spec = Expansion::new(2, 8, 0).unwrap();
        spec.version = 2;
        assert_eq!(spec.check(), Err(ExpansionError::Version(2)));
        assert!(Expansion::from_json("{\"version\":1}").is_err());
        let rf = RandomFeatures::new(Expansion::new(2, 8, 0).unwrap());
        let err = rf.transform(&[1.0f64, 1e144, 0.0, 0.0], 2).unwrap_err();
        assert!(
            matches!(err, BatchError::ExpandedOutOfRange { row: 0, .. }),
            "{err}"
        );
        assert!(rf.transform(&[1.0f64, 2.0, 3.0], 2).is_err());
    }
}
