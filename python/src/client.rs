//! `headstart.Client`: the stream-feed client (`headstart serve`), a wrapper of the Rust
//! client [`headstart::net::Client`], so that Rust and Python share one implementation of the
//! protocol, its tokens and its TLS.
//!
//! The Rust client sits behind a mutex (the class is `frozen`): several Python threads may
//! share one `Client`, and their calls take turns. Every network call, and every wait for the
//! mutex, runs with the GIL released.
//!
//! Errors: [`ServerError`] for an ERROR frame (with `code`, `fatal` and `message`),
//! `TimeoutError`, `ConnectionError` (I/O, TLS, a reply out of step, a closed or broken
//! connection), `ValueError` for arguments and arrays refused before anything is sent, and
//! `ValueError`/`PermissionError`/`OSError` for token and CA files. No message holds a token.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use headstart::export;
use headstart::net::auth::{AuthError, Token};
use headstart::net::protocol::Dtype;
use headstart::net::tls::TlsError;
use headstart::net::{Address, Client, ClientError, ClientOptions, DEFAULT_WINDOW, Reconnect, SolveRequest};
use headstart::solve::{Form, Lambda, Scope};
use headstart::stats::Batch;
use numpy::PyUntypedArrayMethods;
use pyo3::create_exception;
use pyo3::exceptions::{
    PyBrokenPipeError, PyConnectionAbortedError, PyConnectionError, PyConnectionRefusedError,
    PyConnectionResetError, PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyTimeoutError,
};
use pyo3::prelude::*;

use crate::{LambdaArg, OwnedRows, PyHead, batch_arg, lambda_arg, owned_labels, value_error};

create_exception!(
    headstart,
    ServerError,
    PyException,
    "The server answered with an ERROR frame: `code` (its name, e.g. \"Forbidden\"), `fatal` \
     (whether the server closed the connection) and `message` (the server's words)."
);

/// Why a call failed, before it becomes a Python exception (which needs the GIL).
enum CallError {
    Client(ClientError),
    /// The connection was closed by `close()`, or is unusable after an earlier error.
    Closed(String),
    Value(String),
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        CallError::Client(e)
    }
}

fn io_exception(kind: std::io::ErrorKind, message: String) -> PyErr {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::ConnectionRefused => PyConnectionRefusedError::new_err(message),
        ErrorKind::ConnectionReset => PyConnectionResetError::new_err(message),
        ErrorKind::ConnectionAborted => PyConnectionAbortedError::new_err(message),
        ErrorKind::BrokenPipe => PyBrokenPipeError::new_err(message),
        _ => PyConnectionError::new_err(message),
    }
}

impl CallError {
    fn into_py(self, py: Python<'_>) -> PyErr {
        let e = match self {
            CallError::Closed(message) => return PyConnectionError::new_err(message),
            CallError::Value(message) => return value_error(message),
            CallError::Client(e) => e,
        };
        let text = e.to_string();
        match e {
            ClientError::Server {
                code, fatal, message, ..
            } => {
                let err = ServerError::new_err(text);
                let value = err.value(py);
                let set = value
                    .setattr("code", format!("{code:?}"))
                    .and_then(|()| value.setattr("fatal", fatal))
                    .and_then(|()| value.setattr("message", message));
                match set {
                    Ok(()) => err,
                    Err(other) => other,
                }
            }
            ClientError::TimedOut { .. } => PyTimeoutError::new_err(text),
            ClientError::Usage(_) => value_error(text),
            ClientError::Io { source, .. } => io_exception(source.kind(), text),
            // TLS, a reply that cannot be read or does not answer the request, one too large:
            // the connection is unusable.
            _ => PyConnectionError::new_err(text),
        }
    }
}

/// Whether the connection is unusable after this error (the server closed it, or the stream
/// is out of step).
fn breaks_connection(e: &ClientError) -> bool {
    match e {
        ClientError::Server { fatal, .. } => *fatal,
        // A resumable session that could not reconnect yet keeps its batches: a later call
        // tries again.
        ClientError::Usage(_) | ClientError::GaveUp { .. } => false,
        _ => true,
    }
}

fn auth_error(e: AuthError) -> PyErr {
    let text = e.to_string();
    match e {
        AuthError::Permissions { .. } => PyPermissionError::new_err(text),
        AuthError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(text),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(text),
            _ => PyOSError::new_err(text),
        },
        _ => value_error(text),
    }
}

fn tls_error(ca: &std::path::Path, e: TlsError) -> PyErr {
    if !ca.exists() {
        return PyFileNotFoundError::new_err(format!("tls_ca: {e}"));
    }
    value_error(format!("tls_ca: {e}"))
}

fn duration(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Duration::try_from_secs_f64(s)
            .map(Some)
            .map_err(|e| value_error(format!("timeout: {e}"))),
        Some(s) => Err(value_error(format!(
            "timeout must be a number of seconds > 0, or None to wait forever; got {s}"
        ))),
    }
}

fn window_arg(window: usize) -> PyResult<usize> {
    if window == 0 {
        return Err(value_error("window must be at least 1, got 0"));
    }
    Ok(window)
}

/// The connection and what the wrapper tracks around it.
struct State {
    /// `None` once closed.
    client: Option<Client>,
    /// Why the connection is unusable (an earlier error), if it is.
    broken: Option<String>,
    /// The session's dimension and dtype, once the first push opened it.
    session: Option<(usize, Dtype)>,
    window: usize,
    /// `sent` and `acknowledged` as they were when the connection was closed.
    counts_at_close: (u64, u64),
}

impl State {
    /// The live client, or why there is none.
    fn live(&mut self, address: &str) -> Result<&mut Client, CallError> {
        let Some(client) = self.client.as_mut() else {
            return Err(CallError::Closed(format!("{address}: the client is closed")));
        };
        if let Some(reason) = &self.broken {
            return Err(CallError::Closed(format!(
                "{address}: the connection is unusable after an earlier error ({reason}); connect again"
            )));
        }
        Ok(client)
    }

    /// Runs `f` on the live client; an error that leaves the connection unusable marks it so.
    fn call<R>(
        &mut self,
        address: &str,
        f: impl FnOnce(&mut Client) -> Result<R, ClientError>,
    ) -> Result<R, CallError> {
        let result = f(self.live(address)?);
        if let Err(e) = &result
            && breaks_connection(e)
        {
            self.broken = Some(e.to_string());
        }
        result.map_err(CallError::Client)
    }

    fn counts(&self) -> (u64, u64) {
        match &self.client {
            Some(c) => (c.sent(), c.acknowledged()),
            None => self.counts_at_close,
        }
    }

    /// Takes the client out (closing); first, with `flush`, waits for the outstanding
    /// acknowledgements unless the connection is broken.
    fn close(&mut self, flush: bool) -> Result<(), CallError> {
        let Some(mut client) = self.client.take() else {
            return Ok(());
        };
        let mut flushed = Ok(());
        if self.broken.is_some() {
            // The client's `Drop` waits for outstanding acknowledgements: don't wait long on
            // a connection already known to be broken.
            let _ = client.set_timeout(Some(Duration::from_millis(200)));
        } else if flush && let Err(e) = client.flush() {
            self.broken = Some(e.to_string());
            flushed = Err(CallError::Client(e));
        }
        self.counts_at_close = (client.sent(), client.acknowledged());
        drop(client);
        flushed
    }
}

/// A connection to `headstart serve` (the stream feed): pushes batches of features, marks
/// task boundaries, syncs the state file, reads its summary and solves heads on the server.
///
/// `Client(address, token=None, token_file=None, tls_ca=None, timeout=60.0, window=8, reconnect=60.0)`:
/// `address` is "HOST:PORT" or "unix:PATH"; the token is `token`, else the first token of
/// `token_file` (a private file, mode 0600), else the environment variable HEADSTART_TOKEN, else
/// none (sent only when the server asks for one); `tls_ca` (a PEM file of the CA that signed
/// the server's certificate, e.g. from `headstart certs`) connects with TLS; `timeout` bounds
/// the connection and every later read or write, in seconds (None: forever); `window`
/// batches may await their acknowledgement (see `push`); `reconnect` is how many seconds a
/// call keeps reconnecting after the connection drops (0 or None: it fails at once).
///
/// With `reconnect` (the default), the session is resumable and every pushed batch is applied
/// exactly once: the client keeps each batch until a `sync` makes it durable (it syncs by
/// itself beyond 64 MiB of kept batches), and after a dropped connection, a timeout or a
/// server restart the next call reconnects, resumes the session and sends again each batch the
/// server lacks; the server skips any it holds already. `reconnects` counts the resumptions.
/// `close()` (and leaving a `with` block) flushes but does not sync: call `sync()` first if
/// the batches must survive a server crash after the client is gone.
/// It raises `ConnectionError` if the server cannot resume without applying a batch twice or
/// losing one (docs/protocol.md, "Exactly-once pushes").
///
/// The connection, TLS and token handshakes happen here: a refused token raises `ServerError`
/// with code "Unauthorized", a TLS client against a plaintext server (or the other way round)
/// "Transport", an untrusted certificate `ConnectionError`.
///
/// Use it as a context manager: leaving the block without an exception flushes (waits for
/// every pushed batch to be acknowledged, raising if one was refused); it always closes.
/// One `Client` may be shared by several threads: calls take turns, with the GIL released.
#[pyclass(name = "Client", module = "headstart", frozen)]
pub(crate) struct PyClient {
    state: Mutex<State>,
    address: String,
    role: &'static str,
    dim: usize,
    tls: bool,
}

impl PyClient {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the locked state with the GIL released (network calls and waits for
    /// another thread's call alike).
    fn with_state<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut State, &str) -> Result<R, CallError> + Send,
    ) -> PyResult<R> {
        let address = self.address.as_str();
        py.detach(|| f(&mut self.lock(), address))
            .map_err(|e| e.into_py(py))
    }

    /// Runs `f` at once, GIL held, when the lock is free; waits with the GIL released otherwise.
    fn quick<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&State) -> R + Send) -> R {
        match self.state.try_lock() {
            Ok(state) => f(&state),
            Err(_) => py.detach(|| f(&self.lock())),
        }
    }
}

/// Rows converted to the session's dtype (as the server will hold them).
fn batch_in(rows: OwnedRows, labels: Vec<i64>, dtype: Dtype) -> Batch {
    match (rows, dtype) {
        (OwnedRows::F32(v), Dtype::F32) => Batch::new(v, labels),
        (OwnedRows::F64(v), Dtype::F64) => Batch::new(v, labels),
        (OwnedRows::F64(v), Dtype::F32) => {
            Batch::new(v.into_iter().map(|x| x as f32).collect::<Vec<f32>>(), labels)
        }
        (OwnedRows::F32(v), Dtype::F64) => {
            Batch::new(v.into_iter().map(f64::from).collect::<Vec<f64>>(), labels)
        }
    }
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (address, token = None, token_file = None, tls_ca = None, timeout = Some(60.0), window = DEFAULT_WINDOW, reconnect = Some(60.0)))]
    #[pyo3(
        text_signature = "(address, token=None, token_file=None, tls_ca=None, timeout=60.0, window=8, reconnect=60.0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        address: &str,
        token: Option<&str>,
        token_file: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        timeout: Option<f64>,
        window: usize,
        reconnect: Option<f64>,
    ) -> PyResult<Self> {
        let parsed: Address = address.parse().map_err(value_error)?;
        let window = window_arg(window)?;
        let token = match (token, token_file) {
            (Some(_), Some(_)) => return Err(value_error("give token or token_file, not both")),
            (Some(t), None) => Some(Token::new(t).map_err(auth_error)?),
            (None, file) => Token::for_client(file.as_deref()).map_err(auth_error)?,
        };
        let reconnect = match reconnect {
            None => None,
            Some(0.0) => None,
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return Err(value_error(format!(
                    "reconnect must be a number of seconds > 0, or 0 or None for no reconnecting; got {s}"
                )));
            }
            Some(s) => duration(Some(s))?.map(|patience| Reconnect {
                patience,
                ..Reconnect::default()
            }),
        };
        let mut options = ClientOptions {
            timeout: duration(timeout)?,
            token,
            reconnect,
            ..ClientOptions::default()
        };
        if let Some(ca) = &tls_ca {
            options = options.with_tls_ca(ca).map_err(|e| tls_error(ca, e))?;
        }
        let mut client = py
            .detach(|| Client::connect_with(&parsed, &options))
            .map_err(|e| CallError::Client(e).into_py(py))?;
        client.set_window(window);
        Ok(PyClient {
            address: parsed.to_string(),
            role: client.role().name(),
            dim: client.server_dim(),
            tls: client.is_tls(),
            state: Mutex::new(State {
                client: Some(client),
                broken: None,
                session: None,
                window,
                counts_at_close: (0, 0),
            }),
        })
    }

    /// Sends a batch: `features` (B, d) float32/float64 (any layout; other dtypes raise
    /// ValueError: convert first) or the Arrow arrays `Stats.update` takes, `labels` (B,)
    /// integers. The first push opens the session
    /// with the array's dtype; later batches are sent in that dtype (float64 values rounded
    /// to float32 in a float32 session). A batch with the wrong shape, a NaN or infinity (also
    /// after that rounding) or a magnitude above 2^479 raises ValueError and sends nothing.
    ///
    /// Returns once at most `window - 1` pushed batches await their acknowledgement; `flush`
    /// waits for all, and so does every other call. A batch the server refuses raises
    /// `ServerError` from this or a later call (`acknowledged` then counts the batches applied
    /// before it); the server closes the connection.
    fn push(&self, py: Python<'_>, features: &Bound<'_, PyAny>, labels: &Bound<'_, PyAny>) -> PyResult<()> {
        let (x, y) = batch_arg(features, labels, self.dim)?;
        let (rows, cols) = x.shape();
        if cols != self.dim {
            return Err(value_error(format!(
                "features have shape ({rows}, {cols}) but the server's dimension is {}; nothing was sent",
                self.dim
            )));
        }
        if rows != y.len() {
            return Err(value_error(format!(
                "{rows} feature rows but {} labels (shape ({},)); nothing was sent",
                y.len(),
                y.len()
            )));
        }
        let view = x.views();
        let labels = y.as_array();
        self.with_state(py, |state, address| {
            let (rows, labels) = (view.to_owned_rows(None), owned_labels(&labels));
            state.live(address)?;
            let dtype = match state.session {
                Some((_, dtype)) => dtype,
                None => {
                    let dtype = match rows {
                        OwnedRows::F32(_) => Dtype::F32,
                        OwnedRows::F64(_) => Dtype::F64,
                    };
                    // Validated before the session is opened: a refused first batch opens nothing.
                    let batch = batch_in(rows, labels, dtype);
                    batch
                        .validate(cols)
                        .map_err(|e| CallError::Value(format!("batch refused before sending: {e}")))?;
                    state.call(address, |c| c.open(cols, dtype))?;
                    state.session = Some((cols, dtype));
                    return state.call(address, |c| c.push_owned(batch));
                }
            };
            let batch = batch_in(rows, labels, dtype);
            state.call(address, |c| c.push_owned(batch))
        })
    }

    /// Waits until every pushed batch is acknowledged (applied by the server); raises
    /// `ServerError` for the first one it refused.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with_state(py, |state, address| state.call(address, Client::flush))
    }

    /// Marks a task boundary (the server's `solve(scope="task")` then sees only later batches);
    /// returns once it is applied. Needs an admin token on a server with tokens.
    fn begin_task(&self, py: Python<'_>) -> PyResult<()> {
        self.with_state(py, |state, address| state.call(address, Client::begin_task))
    }

    /// Returns once every batch acknowledged so far (on any connection) is in the state file:
    /// the number of samples the file holds; the batches kept for resending are then dropped.
    /// A push token may sync.
    fn sync(&self, py: Python<'_>) -> PyResult<u64> {
        self.with_state(py, |state, address| state.call(address, Client::sync))
    }

    /// A summary of the server's state as a dict (dim, samples, classes with their counts,
    /// tasks_begun, task_samples, ...). Needs an admin token on a server with tokens.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.with_state(py, |state, address| {
            state.call(address, Client::stats).map(|v| v.to_string())
        })?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Solves a head on the server (after every batch pushed before) and returns it as a
    /// `headstart.Head` (values as the server stored them: float32, widened).
    ///
    /// `form`: "nc" or "ridge"; `bias`: solve a bias; `lam`: an absolute λ ≥ 0, or "rel" /
    /// "rel:R" (R × the features' mean eigenvalue); `lambda_rel`: R as a number (give `lam` or
    /// `lambda_rel`, not both; with neither, the server's scale-free default); `scope`: "all"
    /// or "task"; `classes`: ids in row order (default: all, ascending); `prefix`: of the
    /// tensor names in the reply. Bad options raise ValueError before sending; a solve the
    /// server refuses (an unknown class, ...) raises `ServerError` with code "Solve", and the
    /// connection stays usable. Needs an admin token on a server with tokens.
    #[pyo3(signature = (form = "nc", bias = true, lam = None, lambda_rel = None, scope = "all", classes = None, prefix = ""))]
    #[allow(clippy::too_many_arguments)]
    fn solve(
        &self,
        py: Python<'_>,
        form: &str,
        bias: bool,
        lam: Option<&Bound<'_, PyAny>>,
        lambda_rel: Option<f64>,
        scope: &str,
        classes: Option<Vec<i64>>,
        prefix: &str,
    ) -> PyResult<PyHead> {
        let lambda = match lam {
            None => None,
            Some(obj) => match lambda_arg(obj)? {
                LambdaArg::Fixed(l) => Some(l),
                LambdaArg::Auto => {
                    return Err(value_error(
                        "lam=\"auto\" needs held-out data, which a remote solve does not take; \
                         give a number, \"rel\" or \"rel:R\"",
                    ));
                }
            },
        };
        if let Some(r) = lambda_rel
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(value_error(format!(
                "lambda_rel must be a finite number ≥ 0, got {r}"
            )));
        }
        let (lambda, lambda_rel) = match (lambda, lambda_rel) {
            (Some(_), Some(_)) => return Err(value_error("give lam or lambda_rel, not both")),
            (Some(Lambda::Absolute(v)), None) => (Some(v), None),
            (Some(Lambda::Relative(r)), None) => (None, Some(r)),
            (None, rel) => (None, rel),
        };
        let request = SolveRequest {
            form: form.parse::<Form>().map_err(value_error)?,
            bias,
            lambda,
            lambda_rel,
            scope: scope.parse::<Scope>().map_err(value_error)?,
            classes,
            prefix: prefix.to_string(),
        };
        let bytes = self.with_state(py, |state, address| state.call(address, |c| c.solve(&request)))?;
        let origin = PathBuf::from(format!("the SOLVE reply of {}", self.address));
        let stored = py
            .detach(|| export::decode_head(&bytes, prefix, &origin))
            .map_err(|e| PyConnectionError::new_err(format!("{}: unreadable head: {e}", self.address)))?;
        Ok(PyHead { inner: stored.head })
    }

    /// Closes the connection: first waits for the outstanding acknowledgements (raising
    /// `ServerError` if a batch was refused) unless the connection already failed. Closing
    /// twice is harmless; every later call raises ConnectionError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.with_state(py, |state, _| state.close(true))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Flushes when the block raised nothing (and the connection has not failed); always
    /// closes. Never swallows the block's exception.
    #[pyo3(signature = (exc_type = None, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let raised = exc_type.is_some_and(|t| !t.is_none());
        // After an exception, close without raising over it (dropping the Rust client still
        // waits for the outstanding acknowledgements, unless the connection failed).
        self.with_state(py, |state, _| state.close(!raised))?;
        Ok(false)
    }

    /// Batches pushed and acknowledged so far; after a refusal, the refused batch is the one
    /// pushed after these (counting from 0, it has this index).
    #[getter]
    fn acknowledged(&self, py: Python<'_>) -> u64 {
        self.quick(py, |s| s.counts().1)
    }

    /// Batches pushed so far (sent, acknowledged or not).
    #[getter]
    fn sent(&self, py: Python<'_>) -> u64 {
        self.quick(py, |s| s.counts().0)
    }

    /// Times the client reconnected and resumed its session after a dropped connection.
    #[getter]
    fn reconnects(&self, py: Python<'_>) -> u64 {
        self.quick(py, |s| s.client.as_ref().map_or(0, Client::reconnects))
    }

    /// Pushed batches kept for resending (not yet made durable by a `sync`).
    #[getter]
    fn unsynced(&self, py: Python<'_>) -> usize {
        self.quick(py, |s| s.client.as_ref().map_or(0, Client::unsynced))
    }

    /// What the server granted this connection: "push" (batches, and syncing them) or "admin"
    /// (everything; also on a server without tokens).
    #[getter]
    fn role(&self) -> &'static str {
        self.role
    }

    /// The dimension of the server's state (every batch must have this many columns).
    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }

    /// Whether the connection is encrypted (TLS).
    #[getter]
    fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server's address, as given ("HOST:PORT" or "unix:PATH").
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// Whether the client is closed (by `close()` or leaving a `with` block).
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.quick(py, |s| s.client.is_none())
    }

    /// Batches `push` may leave awaiting their acknowledgement (settable, at least 1; 1 makes
    /// every push wait until its batch is applied).
    #[getter]
    fn window(&self, py: Python<'_>) -> usize {
        self.quick(py, |s| s.window)
    }

    #[setter]
    fn set_window(&self, py: Python<'_>, window: usize) -> PyResult<()> {
        let window = window_arg(window)?;
        self.with_state(py, |state, _| {
            state.window = window;
            if let Some(c) = state.client.as_mut() {
                c.set_window(window);
            }
            Ok(())
        })
    }

    /// Seconds each read or write may wait (settable; None: forever). A solve's reply comes
    /// only once the solve is done: allow for it.
    #[getter]
    fn timeout(&self, py: Python<'_>) -> Option<f64> {
        self.quick(py, |s| {
            s.client
                .as_ref()
                .and_then(|c| c.timeout())
                .map(|t| t.as_secs_f64())
        })
    }

    #[setter]
    fn set_timeout(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = duration(timeout)?;
        self.with_state(py, |state, address| {
            state.call(address, |c| c.set_timeout(timeout))
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let (status, (sent, acknowledged)) = self.quick(py, |s| {
            let status = if s.client.is_none() {
                "closed"
            } else if s.broken.is_some() {
                "failed"
            } else {
                "open"
            };
            (status, s.counts())
        });
        format!(
            "Client('{}', role='{}', dim={}, tls={}, sent={sent}, acknowledged={acknowledged}, {status})",
            self.address,
            self.role,
            self.dim,
            if self.tls { "True" } else { "False" },
        )
    }
}
