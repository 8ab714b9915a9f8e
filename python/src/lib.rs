//! Python bindings of headstart: `headstart.Stats`, `headstart.Head` and the stream-feed
//! client `headstart.Client` with its `headstart.ServerError` (module `headstart._native`,
//! re-exported by `headstart/__init__.py`; the client is in [`client`]).
//!
//! Features must be float32 or float64, as the CLI's `.npy` reader takes them; any other
//! dtype (integers, float16, ...) is refused with a `ValueError` saying to convert first.
//! Labels may be any integer dtype. Any memory layout is accepted (C, Fortran, strided):
//! each batch is copied once, with the GIL released, into an owned buffer that is both
//! validated and added, so a thread writing the arrays meanwhile cannot slip unvalidated
//! values into the state. The arithmetic runs with the GIL released.
//!
//! Features may also be Arrow arrays (pyarrow, or the Arrow PyCapsule interface):
//! `headstart/_arrow.py` turns each chunk into a numpy view of its buffer, checking nulls and
//! list lengths, and the chunks are copied into one batch as above (`batch_arg`).
//!
//! A `Stats` keeps its state behind a mutex that is only ever waited for with the GIL
//! released: several Python threads may call one `Stats` at once, and their calls take turns.
//!
//! Every error is a Python exception carrying the Rust error's message: `ValueError` for bad
//! input (which never changes the state), `OSError` for files.

mod client;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use headstart::expand::{Expansion, RandomFeatures};
use headstart::export;
use headstart::snapshot::{self, SnapshotError};
use headstart::solve::{
    Form, Head as CoreHead, Lambda, Scope, SolveOptions, Solver, default_lambda_grid, select_lambda,
};
use headstart::stats::{Precision, SegmentParts, Stats as CoreStats, StatsParts};
use numpy::ndarray::{ArrayView1, ArrayView2};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn snapshot_error(e: SnapshotError) -> PyErr {
    match e {
        SnapshotError::Io { .. } => PyOSError::new_err(e.to_string()),
        other => value_error(other),
    }
}

/// Features as a borrowed 2-D array of either float type, in any memory layout.
enum FeaturesArg<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

/// A batch's feature rows as one or more borrowed 2-D arrays of one float type, in row order:
/// one array for numpy input, one view per chunk for Arrow input.
enum FeatureChunks<'py> {
    F32(Vec<PyReadonlyArray2<'py, f32>>),
    F64(Vec<PyReadonlyArray2<'py, f64>>),
}

impl<'py> FeatureChunks<'py> {
    /// Joins single arrays (at least one) that share their dtype and column count.
    fn new(parts: Vec<FeaturesArg<'py>>) -> PyResult<Self> {
        let mut out = match parts.first() {
            Some(FeaturesArg::F32(_)) => FeatureChunks::F32(Vec::with_capacity(parts.len())),
            Some(FeaturesArg::F64(_)) => FeatureChunks::F64(Vec::with_capacity(parts.len())),
            None => return Err(value_error("features: no arrays")),
        };
        for part in parts {
            match (&mut out, part) {
                (FeatureChunks::F32(v), FeaturesArg::F32(a)) => v.push(a),
                (FeatureChunks::F64(v), FeaturesArg::F64(a)) => v.push(a),
                _ => return Err(value_error("features: chunks of different dtypes")),
            }
        }
        let shapes: Vec<&[usize]> = match &out {
            FeatureChunks::F32(v) => v.iter().map(|a| a.shape()).collect(),
            FeatureChunks::F64(v) => v.iter().map(|a| a.shape()).collect(),
        };
        if shapes.iter().any(|s| s[1] != shapes[0][1]) {
            return Err(value_error("features: chunks of different widths"));
        }
        Ok(out)
    }

    /// (rows over all chunks, columns).
    fn shape(&self) -> (usize, usize) {
        fn of<T: numpy::Element>(v: &[PyReadonlyArray2<'_, T>]) -> (usize, usize) {
            (v.iter().map(|a| a.shape()[0]).sum(), v[0].shape()[1])
        }
        match self {
            FeatureChunks::F32(v) => of(v),
            FeatureChunks::F64(v) => of(v),
        }
    }

    fn views(&self) -> RowsView<'_> {
        match self {
            FeatureChunks::F32(v) => RowsView::F32(v.iter().map(|a| a.as_array()).collect()),
            FeatureChunks::F64(v) => RowsView::F64(v.iter().map(|a| a.as_array()).collect()),
        }
    }
}

/// Whether `obj` is an Arrow object for `headstart._arrow`: it exports the Arrow PyCapsule
/// interface and is a pyarrow object (Array, ChunkedArray, Table, ...) or no numpy-style
/// array (a pandas object or a `pyarrow.Tensor` still goes through numpy). Never imports
/// pyarrow.
fn is_arrow(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if obj.cast::<numpy::PyUntypedArray>().is_ok()
        || !(obj.hasattr("__arrow_c_array__")? || obj.hasattr("__arrow_c_stream__")?)
    {
        return Ok(false);
    }
    let module = obj.get_type().module()?;
    let module = module.to_cow()?;
    Ok(module == "pyarrow" || module.starts_with("pyarrow.") || !obj.hasattr("__array__")?)
}

fn contiguous<'py>(obj: &Bound<'py, PyAny>, dtype: &str) -> PyResult<Bound<'py, PyAny>> {
    let np = obj.py().import("numpy")?;
    let kwargs = PyDict::new(obj.py());
    kwargs.set_item("dtype", dtype)?;
    np.call_method("ascontiguousarray", (obj,), Some(&kwargs))
}

fn features_arg<'py>(obj: &Bound<'py, PyAny>) -> PyResult<FeaturesArg<'py>> {
    // Native float32/float64 arrays of any layout are borrowed as they are: `OwnedRows`
    // copies them once, in row order.
    if let Ok(a) = obj.cast::<PyArray2<f32>>() {
        return Ok(FeaturesArg::F32(a.try_readonly().map_err(value_error)?));
    }
    if let Ok(a) = obj.cast::<PyArray2<f64>>() {
        return Ok(FeaturesArg::F64(a.try_readonly().map_err(value_error)?));
    }
    let np = obj.py().import("numpy")?;
    let array = np.call_method1("asarray", (obj,))?;
    let ndim: usize = array.getattr("ndim")?.extract()?;
    let shape: Vec<usize> = array.getattr("shape")?.extract()?;
    if ndim != 2 {
        return Err(value_error(format!(
            "features must be a 2-D array (B, d), got shape {shape:?}"
        )));
    }
    // Only the two dtypes the CLI's .npy reader takes (here also in a non-native byte order
    // or from a list of floats); anything else would be a silent, lossy or costly widening.
    let name: String = array.getattr("dtype")?.getattr("name")?.extract()?;
    let target = match name.as_str() {
        "float32" | "float64" => name.as_str(),
        _ => {
            return Err(value_error(format!(
                "features must be float32 or float64 (as the CLI's .npy reader), got dtype \
                 {name}; convert them first, e.g. x.astype(np.float32)"
            )));
        }
    };
    let converted = contiguous(&array, target)?;
    if target == "float32" {
        let a = converted.cast_into::<PyArray2<f32>>().map_err(value_error)?;
        Ok(FeaturesArg::F32(a.try_readonly().map_err(value_error)?))
    } else {
        let a = converted.cast_into::<PyArray2<f64>>().map_err(value_error)?;
        Ok(FeaturesArg::F64(a.try_readonly().map_err(value_error)?))
    }
}

/// A batch's features and labels, from numpy (or anything `numpy.asarray` takes) or Arrow.
///
/// Arrow input becomes numpy views of its chunks' buffers (`headstart/_arrow.py`, imported
/// only then), with nulls and list lengths checked there against `dim`; NaN/inf are checked
/// later, on the copy, as for numpy.
fn batch_arg<'py>(
    features: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    dim: usize,
) -> PyResult<(FeatureChunks<'py>, PyReadonlyArray1<'py, i64>)> {
    if !(is_arrow(features)? || is_arrow(labels)?) {
        return Ok((
            FeatureChunks::new(vec![features_arg(features)?])?,
            labels_arg(labels)?,
        ));
    }
    let helper = features.py().import("headstart._arrow")?;
    let (chunks, labels): (Vec<Bound<'py, PyAny>>, Bound<'py, PyAny>) =
        helper.call_method1("batch", (features, labels, dim))?.extract()?;
    let parts = chunks.iter().map(features_arg).collect::<PyResult<Vec<_>>>()?;
    Ok((FeatureChunks::new(parts)?, labels_arg(&labels)?))
}

fn labels_arg<'py>(obj: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray1<'py, i64>> {
    if let Ok(a) = obj.cast::<PyArray1<i64>>()
        && a.is_c_contiguous()
    {
        return a.try_readonly().map_err(value_error);
    }
    let np = obj.py().import("numpy")?;
    let array = np.call_method1("asarray", (obj,))?;
    let shape: Vec<usize> = array.getattr("shape")?.extract()?;
    if shape.len() != 1 {
        return Err(value_error(format!(
            "labels must be a 1-D array (B,), got shape {shape:?}"
        )));
    }
    let dtype = array.getattr("dtype")?;
    let (kind, name): (String, String) = (
        dtype.getattr("kind")?.extract()?,
        dtype.getattr("name")?.extract()?,
    );
    match kind.as_str() {
        "i" => {}
        "u" if name == "uint64" => {
            let too_big: bool = array
                .call_method1("__gt__", (i64::MAX as u64,))?
                .call_method0("any")?
                .extract()?;
            if too_big {
                return Err(value_error("labels above 2^63 - 1 do not fit a class id (int64)"));
            }
        }
        "u" => {}
        _ => return Err(value_error(format!("labels must be integers, got dtype {name}"))),
    }
    contiguous(&array, "int64")?
        .cast_into::<PyArray1<i64>>()
        .map_err(value_error)?
        .try_readonly()
        .map_err(value_error)
}

/// Streaming sufficient statistics for least-squares heads: sample count, Gram matrix,
/// class sums and counts (f64), for a feature dimension fixed at creation.
///
/// `Stats(dim, precision="exact", threads=None)`; `precision="fast"` computes each batch's
/// product in float32 (totals stay float64); `threads` computes it on that many threads
/// (None or 0: every available core).
///
/// Safe to share between Python threads: the state sits behind a mutex, waited for with the
/// GIL released, so concurrent calls take turns (the class is `frozen`: no call ever borrows
/// it mutably, so none can fail with "Already borrowed").
#[pyclass(name = "Stats", module = "headstart", frozen)]
struct PyStats {
    /// The statistics; lock through [`PyStats::with_state`] or [`PyStats::quick`] only.
    inner: Mutex<CoreStats>,
    /// The statistics' dimension (fixed at creation), readable without the lock.
    dim: usize,
    /// The dimension of the features `update` takes: `dim`, or the expansion's input.
    input_dim: usize,
    solver: Solver,
    /// Copy buffers of earlier batches, kept for the next ones: a fresh buffer per call
    /// costs page faults and the kernel's zeroing (9 % of `update` at d = 2048).
    spare: Mutex<Vec<OwnedRows>>,
}

/// Copy buffers kept between calls (one per concurrent caller, up to this many), each
/// only if it holds at most `SPARE_BYTES`: a one-off huge batch does not pin its memory.
const SPARE_BUFFERS: usize = 2;
const SPARE_BYTES: usize = 64 << 20;

/// Feature rows of either float type, borrowed from the caller's arrays (any layout), in
/// row order.
enum RowsView<'a> {
    F32(Vec<ArrayView2<'a, f32>>),
    F64(Vec<ArrayView2<'a, f64>>),
}

/// A batch's features copied out of the caller's array, in row order. Validation and the
/// update both read this copy, so they see the same values whatever other threads do to the
/// array meanwhile.
enum OwnedRows {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl OwnedRows {
    fn capacity_bytes(&self) -> usize {
        match self {
            OwnedRows::F32(v) => v.capacity() * 4,
            OwnedRows::F64(v) => v.capacity() * 8,
        }
    }
}

impl RowsView<'_> {
    /// Copies the rows once, into one buffer (a memcpy per C-contiguous array, an ordered
    /// walk otherwise), reusing `spare`'s memory when its type matches.
    fn to_owned_rows(&self, spare: Option<OwnedRows>) -> OwnedRows {
        fn copy<T: Copy>(views: &[ArrayView2<'_, T>], mut out: Vec<T>) -> Vec<T> {
            out.clear();
            out.reserve(views.iter().map(|v| v.len()).sum());
            for view in views {
                match view.as_slice() {
                    Some(slice) => out.extend_from_slice(slice),
                    None => out.extend(view.iter().copied()),
                }
            }
            out
        }
        match (self, spare) {
            (RowsView::F32(v), Some(OwnedRows::F32(out))) => OwnedRows::F32(copy(v, out)),
            (RowsView::F64(v), Some(OwnedRows::F64(out))) => OwnedRows::F64(copy(v, out)),
            (RowsView::F32(v), _) => OwnedRows::F32(copy(v, Vec::new())),
            (RowsView::F64(v), _) => OwnedRows::F64(copy(v, Vec::new())),
        }
    }
}

/// Copies the labels once (see [`OwnedRows`]).
fn owned_labels(view: &ArrayView1<'_, i64>) -> Vec<i64> {
    match view.as_slice() {
        Some(slice) => slice.to_vec(),
        None => view.iter().copied().collect(),
    }
}

impl PyStats {
    fn wrap(inner: CoreStats) -> Self {
        PyStats {
            dim: inner.dim(),
            input_dim: inner.input_dim(),
            inner: Mutex::new(inner),
            solver: Solver::new(),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// The state, locked. A panic inside an earlier call poisons the mutex; the state's own
    /// methods check a batch before changing anything, so the state is still whole and the
    /// lock is taken over.
    fn lock(&self) -> MutexGuard<'_, CoreStats> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the locked state with the GIL released: waiting for another thread's call
    /// never holds the GIL (which that call might need to finish) and never stalls other
    /// Python threads.
    fn with_state<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut CoreStats) -> R + Send) -> R {
        py.detach(|| f(&mut self.lock()))
    }

    /// [`with_state`](Self::with_state) for cheap reads: runs `f` at once, GIL held, when
    /// the lock is free, and waits with the GIL released otherwise.
    fn quick<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&CoreStats) -> R + Send) -> R {
        match self.inner.try_lock() {
            Ok(state) => f(&state),
            Err(_) => self.with_state(py, |state| f(state)),
        }
    }

    /// A copy of the state.
    fn snapshot(&self, py: Python<'_>) -> CoreStats {
        self.with_state(py, |state| state.clone())
    }

    /// The state, for a `PyStats` that nobody else holds.
    fn into_core(self) -> CoreStats {
        self.inner.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn checked<'py>(
        &self,
        features: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
    ) -> PyResult<(FeatureChunks<'py>, PyReadonlyArray1<'py, i64>)> {
        let (x, y) = batch_arg(features, labels, self.input_dim)?;
        let (rows, cols) = x.shape();
        if cols != self.input_dim {
            return Err(value_error(if self.input_dim != self.dim {
                format!(
                    "features have {cols} columns but the state expands {}-dimensional features",
                    self.input_dim
                )
            } else {
                format!(
                    "features have {cols} columns but the state's dimension is {}",
                    self.dim
                )
            }));
        }
        if rows != y.len() {
            return Err(value_error(format!("{rows} feature rows but {} labels", y.len())));
        }
        Ok((x, y))
    }

    /// Checks and borrows a batch; then, with the GIL released, copies it once and runs `op`
    /// on the locked state with that copy (which `op` validates and uses).
    fn with_batch(
        &self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        op: impl FnOnce(&mut CoreStats, &OwnedRows, &[i64]) -> PyResult<()> + Send,
    ) -> PyResult<()> {
        let (x, y) = self.checked(features, labels)?;
        let rows = x.views();
        let y = y.as_array();
        py.detach(|| {
            // Copied before the lock is taken: concurrent callers copy in parallel.
            let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let (rows, labels) = (rows.to_owned_rows(spare), owned_labels(&y));
            let result = op(&mut self.lock(), &rows, &labels);
            let mut kept = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() < SPARE_BUFFERS && rows.capacity_bytes() <= SPARE_BYTES {
                kept.push(rows);
            }
            result
        })
    }
}

/// A λ as Python gives it: a number, "rel", "rel:R" or "auto".
enum LambdaArg {
    Fixed(Lambda),
    Auto,
}

fn lambda_arg(obj: &Bound<'_, PyAny>) -> PyResult<LambdaArg> {
    if let Ok(text) = obj.extract::<String>() {
        if text == "auto" {
            return Ok(LambdaArg::Auto);
        }
        return text.parse::<Lambda>().map(LambdaArg::Fixed).map_err(value_error);
    }
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(value_error(
            "lam must be a number, \"rel\", \"rel:R\" or \"auto\", got a bool",
        ));
    }
    let v: f64 = obj
        .extract()
        .map_err(|_| value_error("lam must be a number, \"rel\", \"rel:R\" or \"auto\""))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(value_error(format!(
            "lambda must be a finite number ≥ 0, got {v}"
        )));
    }
    Ok(LambdaArg::Fixed(Lambda::Absolute(v)))
}

#[pymethods]
impl PyStats {
    #[new]
    #[pyo3(signature = (dim, precision = "exact", threads = None, expand = None))]
    fn new(
        dim: usize,
        precision: &str,
        threads: Option<usize>,
        expand: Option<&PyRandomFeatures>,
    ) -> PyResult<Self> {
        if dim == 0 || dim > headstart::stats::MAX_DIM {
            return Err(value_error(format!(
                "dim must lie in 1..={}, got {dim}",
                headstart::stats::MAX_DIM
            )));
        }
        let precision: Precision = precision.parse().map_err(value_error)?;
        let stats = match expand {
            Some(rf) if rf.inner.spec().input_dim != dim => {
                return Err(value_error(format!(
                    "expand= expands {}-dimensional features but dim is {dim}",
                    rf.inner.spec().input_dim
                )));
            }
            Some(rf) => CoreStats::expanded(*rf.inner.spec(), precision),
            None => CoreStats::with_precision(dim, precision),
        };
        Ok(PyStats::wrap(stats.with_threads(threads.unwrap_or(0))))
    }

    /// The random-feature expansion `update` applies (a `RandomFeatures`), or None.
    #[getter]
    fn expansion(&self, py: Python<'_>) -> Option<PyRandomFeatures> {
        self.quick(py, |s| s.random_features().cloned())
            .map(|inner| PyRandomFeatures { inner })
    }

    /// The dimension of the features `update` takes: the expansion's input dimension, or
    /// `dim` without one.
    #[getter]
    fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// Adds a batch: `features` (B, d) float32/float64 (any other dtype raises ValueError),
    /// `labels` (B,) integers. The batch is copied once, in any layout, then checked and added
    /// from that copy. A rejected batch (dtype, shape, NaN/inf, magnitude) raises ValueError
    /// and changes nothing.
    ///
    /// `features` may also be a pyarrow array of B rows: a `FixedSizeListArray` of d
    /// float32/float64 values, a `ListArray`/`LargeListArray` whose every list holds d values,
    /// or a `ChunkedArray` of them; `labels` a pyarrow integer Array/ChunkedArray (any integer
    /// type) or numpy. Its buffers are read in place (no Python lists); a null list, a null
    /// value, a list of another length or a NaN/inf raises ValueError naming the row (0-based)
    /// and changes nothing, for all chunks together.
    fn update(&self, py: Python<'_>, features: &Bound<'_, PyAny>, labels: &Bound<'_, PyAny>) -> PyResult<()> {
        self.with_batch(py, features, labels, |stats, x, y| match x {
            OwnedRows::F32(x) => stats.update(x, y).map_err(value_error),
            OwnedRows::F64(x) => stats.update(x, y).map_err(value_error),
        })
    }

    /// Adds the rows of a pyarrow `Table` or `RecordBatch`: its column `feature_column` as
    /// `update`'s Arrow features and `label_column` as its labels. A missing column raises
    /// ValueError.
    fn update_table(
        &self,
        py: Python<'_>,
        table: &Bound<'_, PyAny>,
        feature_column: &str,
        label_column: &str,
    ) -> PyResult<()> {
        let helper = py.import("headstart._arrow")?;
        let (features, labels): (Bound<'_, PyAny>, Bound<'_, PyAny>) = helper
            .call_method1("table_columns", (table, feature_column, label_column))?
            .extract()?;
        self.update(py, &features, &labels)
    }

    /// Removes a batch added since the last task boundary (unlearning); ValueError, with no
    /// change, if the state does not hold those samples.
    fn retract(
        &self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.with_batch(py, features, labels, |stats, x, y| match x {
            OwnedRows::F32(x) => stats.retract(x, y).map_err(value_error),
            OwnedRows::F64(x) => stats.retract(x, y).map_err(value_error),
        })
    }

    /// Adds another state's statistics (exact; the empty state is the identity).
    fn merge(&self, py: Python<'_>, other: &Bound<'_, Self>) -> PyResult<()> {
        // A copy, so that no call holds two locks (no lock order, and `a.merge(a)` works).
        let other = other.get().snapshot(py);
        self.with_state(py, |state| state.merge(&other).map_err(value_error))
    }

    /// Marks a task boundary: `solve(scope="task")` then sees only what arrives afterwards.
    fn begin_task(&self, py: Python<'_>) {
        self.with_state(py, |state| state.begin_task());
    }

    /// Multiplies every accumulated sum and weight by `gamma` in (0, 1]: a forgetting
    /// factor. Samples added later weigh 1, earlier ones γ (repeated decays multiply), as in
    /// recursive least squares with forgetting. Raises ValueError (changing nothing) for γ
    /// outside (0, 1] or a weight that would fall below 1e-9.
    fn decay(&self, py: Python<'_>, gamma: f64) -> PyResult<()> {
        self.with_state(py, |state| state.decay(gamma).map_err(value_error))
    }

    /// Samples N accumulated (added minus retracted), however decayed.
    #[getter]
    fn n(&self, py: Python<'_>) -> u64 {
        self.quick(py, |s| s.samples())
    }

    /// The total sample weight that solves divide by: `n` until a `decay`.
    #[getter]
    fn weight(&self, py: Python<'_>) -> f64 {
        self.quick(py, |s| s.weight())
    }

    /// The sample weight since the last task boundary.
    #[getter]
    fn task_weight(&self, py: Python<'_>) -> f64 {
        self.quick(py, |s| s.task_weight())
    }

    /// Samples since the last task boundary.
    #[getter]
    fn task_n(&self, py: Python<'_>) -> u64 {
        self.quick(py, |s| s.task_samples())
    }

    /// Feature dimension d.
    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }

    /// Task boundaries marked so far.
    #[getter]
    fn tasks_begun(&self, py: Python<'_>) -> u64 {
        self.quick(py, |s| s.tasks_begun())
    }

    /// `"exact"` or `"fast"`.
    #[getter]
    fn precision(&self, py: Python<'_>) -> String {
        self.quick(py, |s| s.precision().to_string())
    }

    /// Threads computing each batch's product (settable; 0 means every available core).
    #[getter]
    fn threads(&self, py: Python<'_>) -> usize {
        self.quick(py, |s| s.threads())
    }

    #[setter]
    fn set_threads(&self, py: Python<'_>, threads: usize) {
        self.with_state(py, |s| s.set_threads(threads));
    }

    /// Class ids seen, ascending.
    #[getter]
    fn classes(&self, py: Python<'_>) -> Vec<i64> {
        self.quick(py, |s| s.classes())
    }

    /// Class ids with samples since the last task boundary, ascending.
    #[getter]
    fn task_classes(&self, py: Python<'_>) -> Vec<i64> {
        self.quick(py, |s| s.task_classes())
    }

    /// Samples of class `id` (0 if never seen).
    fn class_count(&self, py: Python<'_>, id: i64) -> u64 {
        self.quick(py, |s| s.class_count(id))
    }

    /// The weight of class `id` (0.0 if never seen): its count until a `decay`.
    fn class_weight(&self, py: Python<'_>, id: i64) -> f64 {
        self.quick(py, |s| s.class_weight(id))
    }

    /// An independent copy.
    fn copy(&self, py: Python<'_>) -> Self {
        PyStats::wrap(self.snapshot(py))
    }

    /// Writes the state file (the CLI's `.hs` format), atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        self.with_state(py, |s| snapshot::write(&path, s).map_err(snapshot_error))
    }

    /// Reads a state file written by `save`, `headstart ingest` or `headstart serve`.
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        snapshot::read(&path).map(PyStats::wrap).map_err(snapshot_error)
    }

    /// The state file's bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = self.with_state(py, |s| snapshot::encode(s));
        PyBytes::new(py, &bytes)
    }

    /// A state from `to_bytes` output.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        snapshot::decode(data, std::path::Path::new("<bytes>"))
            .map(PyStats::wrap)
            .map_err(snapshot_error)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyBytes>,))> {
        let py = slf.py();
        let from_bytes = py.get_type::<PyStats>().getattr("from_bytes")?;
        Ok((from_bytes, (slf.get().to_bytes(py),)))
    }

    /// Solves a head. `form`: "nc" (Harun & Kanan, Eq. 3) or "ridge"; `classes`: ids in row
    /// order (default: all, ascending); `scope`: "all" or "task".
    ///
    /// `lam`: None or "rel" (the default: 0.01 × the features' mean eigenvalue tr(G/N)/d, so
    /// the head's logits do not change when the features are rescaled), "rel:R" (R × the mean
    /// eigenvalue), a number (absolute λ, the paper's, e.g. the backbone's weight decay), or
    /// "auto": the λ of `grid` (default: relative factors 1e-6 … 1e2; numbers or "rel:R"
    /// strings) with the lowest held-out MSE on `val`, a `Stats` or a (features, labels) pair.
    #[pyo3(signature = (form = "nc", lam = None, classes = None, bias = true, scope = "all", val = None, grid = None))]
    #[allow(clippy::too_many_arguments)]
    fn solve(
        &self,
        py: Python<'_>,
        form: &str,
        lam: Option<&Bound<'_, PyAny>>,
        classes: Option<Vec<i64>>,
        bias: bool,
        scope: &str,
        val: Option<&Bound<'_, PyAny>>,
        grid: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<PyHead> {
        let rule = match lam {
            None => LambdaArg::Fixed(Lambda::default()),
            Some(obj) => lambda_arg(obj)?,
        };
        let mut opts = SolveOptions {
            form: form.parse::<Form>().map_err(value_error)?,
            scope: scope.parse::<Scope>().map_err(value_error)?,
            lambda: Lambda::default(),
            bias,
            classes,
        };
        // For lam="auto": the held-out statistics and the grid.
        let auto = match rule {
            LambdaArg::Fixed(lambda) => {
                if val.is_some() || grid.is_some() {
                    return Err(value_error("val and grid only apply with lam=\"auto\""));
                }
                opts.lambda = lambda;
                None
            }
            LambdaArg::Auto => {
                let val = val.ok_or_else(|| {
                    value_error("lam=\"auto\" needs held-out data: val=Stats or val=(features, labels)")
                })?;
                let held_out = match val.cast::<PyStats>() {
                    // A copy: the solve below then holds only this state's lock.
                    Ok(stats) => stats.get().snapshot(py),
                    Err(_) => {
                        let (x, y): (Bound<'_, PyAny>, Bound<'_, PyAny>) = val
                            .extract()
                            .map_err(|_| value_error("val must be a Stats or a (features, labels) pair"))?;
                        let held_out = PyStats::wrap(match self.quick(py, |s| s.expansion().copied()) {
                            Some(spec) => CoreStats::expanded(spec, Precision::Exact),
                            None => CoreStats::new(self.dim),
                        });
                        held_out.update(py, &x, &y)?;
                        held_out.into_core()
                    }
                };
                if held_out.samples() == 0 {
                    return Err(value_error("lam=\"auto\": the held-out data is empty"));
                }
                let grid = match grid {
                    None => default_lambda_grid(),
                    Some(points) => points
                        .iter()
                        .map(|p| match lambda_arg(p)? {
                            LambdaArg::Fixed(l) => Ok(l),
                            LambdaArg::Auto => Err(value_error("grid: 'auto' is not a grid point")),
                        })
                        .collect::<PyResult<Vec<Lambda>>>()?,
                };
                Some((held_out, grid))
            }
        };
        let solver = &self.solver;
        self.with_state(py, move |state| {
            if let Some((held_out, grid)) = auto {
                let choice = select_lambda(solver, state, &held_out, &opts, &grid).map_err(value_error)?;
                opts.lambda = choice.best;
            }
            solver.solve(state, &opts).map_err(value_error)
        })
        .map(|inner| PyHead { inner })
    }

    /// The statistics as plain arrays (a dict), for collectives such as an all-reduce.
    fn _parts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let parts = self.with_state(py, |s| s.to_parts());
        let out = PyDict::new(py);
        out.set_item("dim", parts.dim)?;
        out.set_item("tasks_begun", parts.tasks_begun)?;
        out.set_item("expansion", parts.expansion.map(|e| e.to_json()))?;
        for (name, seg) in [("before", &parts.before), ("task", &parts.task)] {
            let d = PyDict::new(py);
            d.set_item("n", seg.n)?;
            d.set_item("weight", seg.weight)?;
            d.set_item("gram_lower", PyArray1::from_slice(py, &seg.gram_lower))?;
            d.set_item("sum", PyArray1::from_slice(py, &seg.sum))?;
            let ids: Vec<i64> = seg.classes.iter().map(|c| c.0).collect();
            let counts: Vec<u64> = seg.classes.iter().map(|c| c.1).collect();
            let weights: Vec<f64> = seg.classes.iter().map(|c| c.2).collect();
            let sums: Vec<f64> = seg.classes.iter().flat_map(|c| c.3.iter().copied()).collect();
            d.set_item("class_ids", PyArray1::from_vec(py, ids))?;
            d.set_item("class_counts", PyArray1::from_vec(py, counts))?;
            d.set_item("class_weights", PyArray1::from_vec(py, weights))?;
            d.set_item(
                "class_sums",
                PyArray1::from_vec(py, sums).reshape([seg.classes.len(), parts.dim as usize])?,
            )?;
            out.set_item(name, d)?;
        }
        Ok(out)
    }

    /// Rebuilds a state from `_parts` output (every length, count and value is checked).
    /// Parts without weights (`weight`, `class_weights`) are undecayed: weights = counts.
    #[staticmethod]
    fn _from_parts(parts: &Bound<'_, PyDict>) -> PyResult<Self> {
        fn get<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
            d.get_item(key)?
                .ok_or_else(|| value_error(format!("parts: missing '{key}'")))
        }
        let dim: u64 = get(parts, "dim")?.extract()?;
        let segment = |name: &str| -> PyResult<SegmentParts> {
            let seg = get(parts, name)?;
            let seg = seg.cast::<PyDict>().map_err(value_error)?;
            let vector = |key: &str| -> PyResult<Vec<f64>> {
                contiguous(&get(seg, key)?, "float64")?
                    .call_method0("ravel")?
                    .extract()
            };
            let ids: Vec<i64> = contiguous(&get(seg, "class_ids")?, "int64")?
                .call_method0("ravel")?
                .extract()?;
            let counts: Vec<u64> = contiguous(&get(seg, "class_counts")?, "uint64")?
                .call_method0("ravel")?
                .extract()?;
            let weights: Vec<f64> = match seg.get_item("class_weights")? {
                Some(w) => contiguous(&w, "float64")?.call_method0("ravel")?.extract()?,
                None => counts.iter().map(|&c| c as f64).collect(),
            };
            let sums = vector("class_sums")?;
            let d = dim as usize;
            if ids.len() != counts.len() || weights.len() != ids.len() || sums.len() != ids.len() * d {
                return Err(value_error(format!(
                    "parts: {name}: {} class ids, {} counts, {} weights and {} sum values do not match dimension {d}",
                    ids.len(),
                    counts.len(),
                    weights.len(),
                    sums.len()
                )));
            }
            let n: u64 = get(seg, "n")?.extract()?;
            Ok(SegmentParts {
                n,
                weight: match seg.get_item("weight")? {
                    Some(w) => w.extract()?,
                    None => n as f64,
                },
                gram_lower: vector("gram_lower")?,
                sum: vector("sum")?,
                classes: ids
                    .into_iter()
                    .zip(counts)
                    .zip(weights)
                    .zip(sums.chunks(d.max(1)))
                    .map(|(((id, count), weight), s)| (id, count, weight, s.to_vec()))
                    .collect(),
            })
        };
        let expansion = match parts.get_item("expansion")? {
            Some(e) if !e.is_none() => {
                Some(Expansion::from_json(&e.extract::<String>()?).map_err(value_error)?)
            }
            _ => None,
        };
        let rebuilt = StatsParts {
            dim,
            tasks_begun: get(parts, "tasks_begun")?.extract()?,
            before: segment("before")?,
            task: segment("task")?,
            expansion,
        };
        CoreStats::from_parts(rebuilt)
            .map(PyStats::wrap)
            .map_err(value_error)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        self.quick(py, |s| {
            format!(
                "Stats(dim={}, n={}, classes={}, tasks_begun={}, precision='{}'{})",
                s.dim(),
                s.samples(),
                s.classes().len(),
                s.tasks_begun(),
                s.precision(),
                s.expansion()
                    .map(|e| format!(
                        ", expand=RandomFeatures({}, {}, seed={})",
                        e.input_dim, e.features, e.seed
                    ))
                    .unwrap_or_default()
            )
        })
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> bool {
        let Ok(other) = other.cast::<PyStats>() else {
            return false;
        };
        let other = other.get();
        if std::ptr::eq(self, other) {
            return true; // a state holds no NaN, so it equals itself
        }
        // A copy of one side, so that no call holds two locks.
        let theirs = other.snapshot(py);
        self.with_state(py, |s| *s == theirs)
    }
}

/// A solved head: `weight` (C, d), `bias` (C,), `class_ids` (C,), float64 / int64 arrays.
#[pyclass(name = "Head", module = "headstart")]
struct PyHead {
    inner: CoreHead,
}

#[pymethods]
impl PyHead {
    /// (C, d) float64: row i is the weight vector of class `class_ids[i]`.
    #[getter]
    fn weight<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        PyArray1::from_slice(py, &self.inner.weight).reshape([self.inner.rows(), self.inner.dim])
    }

    /// (C,) float64.
    #[getter]
    fn bias<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.inner.bias)
    }

    /// (C,) int64: the class id of each row.
    #[getter]
    fn class_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.inner.class_ids)
    }

    /// Feature dimension d.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim
    }

    /// The absolute λ that was added to G/N (or Σ).
    #[getter]
    fn lam(&self) -> f64 {
        self.inner.info.lambda
    }

    /// How λ was given: "rel:R" (relative to the mean eigenvalue) or the absolute number.
    #[getter]
    fn lam_rule(&self) -> String {
        self.inner.info.lambda_rule.to_string()
    }

    /// "nc" or "ridge".
    #[getter]
    fn form(&self) -> String {
        self.inner.info.form.to_string()
    }

    /// "all" or "task".
    #[getter]
    fn scope(&self) -> String {
        self.inner.info.scope.to_string()
    }

    /// Samples in the scope the head was solved from.
    #[getter]
    fn samples(&self) -> u64 {
        self.inner.info.samples
    }

    /// The random-feature expansion its inputs go through (a `RandomFeatures`), or None.
    /// The head's `dim` is then the expansion's `m`.
    #[getter]
    fn expansion(&self) -> Option<PyRandomFeatures> {
        self.inner.info.expansion.map(|spec| PyRandomFeatures {
            inner: Arc::new(RandomFeatures::new(spec)),
        })
    }

    /// Writes the CLI's safetensors format: `{prefix}weight` [C, d] F32, `{prefix}bias` [C],
    /// `{prefix}class_ids` [C] I64, with metadata.
    #[pyo3(signature = (path, prefix = ""))]
    fn save(&self, path: PathBuf, prefix: &str) -> PyResult<()> {
        let mut extra = BTreeMap::new();
        extra.insert("source".to_string(), "headstart (Python)".to_string());
        export::write_head(&path, &self.inner, prefix, &extra).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Head(classes={}, dim={}, form='{}', lam={}, scope='{}')",
            self.inner.rows(),
            self.inner.dim,
            self.inner.info.form,
            self.inner.info.lambda,
            self.inner.info.scope
        )
    }
}

/// A seeded random-feature expansion z = ReLU(x·R), R ∈ ℝ^{dim×m} regenerated from `seed`
/// (Philox4x32-10; docs/math.md, "Random features"). Give it to `Stats(dim, expand=...)`
/// to accumulate the statistics of z from raw features.
#[pyclass(name = "RandomFeatures", module = "headstart", frozen)]
#[derive(Clone)]
struct PyRandomFeatures {
    inner: Arc<RandomFeatures>,
}

#[pymethods]
impl PyRandomFeatures {
    #[new]
    #[pyo3(signature = (dim, m, seed = 0))]
    fn new(dim: usize, m: usize, seed: u64) -> PyResult<Self> {
        let spec = Expansion::new(dim, m, seed).map_err(value_error)?;
        Ok(PyRandomFeatures {
            inner: Arc::new(RandomFeatures::new(spec)),
        })
    }

    /// The raw features' dimension d.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.spec().input_dim
    }

    /// The expanded dimension M.
    #[getter]
    fn m(&self) -> usize {
        self.inner.spec().features
    }

    /// The seed of R.
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.spec().seed
    }

    /// The spec as JSON (what state files and head files record).
    #[getter]
    fn spec(&self) -> String {
        self.inner.spec().to_json()
    }

    /// R, (dim, m) float32, regenerated from the seed (and kept for later calls).
    fn matrix<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let rf = Arc::clone(&self.inner);
        let r = py.detach(move || rf.matrix().to_vec());
        PyArray1::from_vec(py, r).reshape([self.dim(), self.m()])
    }

    /// ReLU(x·R) of `x` (B, dim): float32 in, float32 out (f32 products); float64 in,
    /// float64 out (f64 products). Bad input (dtype, shape, NaN/inf) raises ValueError.
    fn transform<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let chunks = FeatureChunks::new(vec![features_arg(x)?])?;
        let (rows, cols) = chunks.shape();
        if cols != self.dim() {
            return Err(value_error(format!(
                "features have {cols} columns but the expansion takes {}",
                self.dim()
            )));
        }
        let view = chunks.views();
        let rf = Arc::clone(&self.inner);
        let m = self.m();
        let out = py.detach(move || match view.to_owned_rows(None) {
            OwnedRows::F32(v) => rf.transform(&v, rows).map(|z| (z, true)),
            OwnedRows::F64(v) => rf.transform(&v, rows).map(|z| (z, false)),
        });
        let (z, narrow) = out.map_err(value_error)?;
        if narrow {
            let z: Vec<f32> = z.into_iter().map(|v| v as f32).collect();
            Ok(PyArray1::from_vec(py, z).reshape([rows, m])?.into_any())
        } else {
            Ok(PyArray1::from_vec(py, z).reshape([rows, m])?.into_any())
        }
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (usize, usize, u64))> {
        let me = slf.get();
        Ok((slf.get_type().into_any(), (me.dim(), me.m(), me.seed())))
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyRandomFeatures>()
            .is_ok_and(|o| o.get().inner.spec() == self.inner.spec())
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.spec().hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "RandomFeatures({}, {}, seed={})",
            self.dim(),
            self.m(),
            self.seed()
        )
    }
}

/// The scale a > 0 of new rows that minimises the mean cross-entropy on a sample (see
/// `headstart.torch.init_rows(calibrate=...)`): `fixed` (n, k) logits of the other rows,
/// `new` (n, m) logits of the new rows at scale 1, `targets` (n,) true columns of
/// `[fixed | new]`. Returns (scale, loss at 1, loss at scale, whether the cap was hit: new
/// logits at most `max_logit` beyond the largest |fixed| logit).
#[pyfunction]
#[pyo3(signature = (fixed, new, targets, max_logit = 30.0))]
fn fit_scale(
    py: Python<'_>,
    fixed: PyReadonlyArray2<'_, f64>,
    new: PyReadonlyArray2<'_, f64>,
    targets: PyReadonlyArray1<'_, i64>,
    max_logit: f64,
) -> PyResult<(f64, f64, f64, bool)> {
    let (fixed_cols, new_cols) = (fixed.shape()[1], new.shape()[1]);
    let fixed = fixed.as_slice().map_err(value_error)?.to_vec();
    let new = new.as_slice().map_err(value_error)?.to_vec();
    let targets: Vec<usize> = targets
        .as_slice()
        .map_err(value_error)?
        .iter()
        .map(|&t| usize::try_from(t).unwrap_or(usize::MAX))
        .collect();
    let fit = py
        .detach(|| headstart::solve::fit_scale(&fixed, fixed_cols, &new, new_cols, &targets, max_logit))
        .map_err(value_error)?;
    Ok((fit.scale, fit.loss_before, fit.loss_after, fit.at_bound))
}

/// The native part of the `headstart` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStats>()?;
    m.add_class::<PyHead>()?;
    m.add_class::<PyRandomFeatures>()?;
    m.add_class::<client::PyClient>()?;
    m.add("ServerError", m.py().get_type::<client::ServerError>())?;
    m.add_function(wrap_pyfunction!(fit_scale, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
