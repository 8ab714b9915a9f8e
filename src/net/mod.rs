//! The edge stream feed: a server that owns a state file, its framed protocol, and a client.
//!
//! - [`protocol`]: frames, requests, replies, limits (docs/protocol.md).
//! - [`Server`]: accepts TCP or Unix-socket clients, feeds their batches through the
//!   [`pipeline`](crate::pipeline), acknowledges each once applied, checkpoints the state
//!   atomically (on SYNC, every `checkpoint_every`, and at shutdown).
//! - [`Client`]: the Rust client.
//!
//! # Examples
//! ```
//! use headstart::net::{Address, Client, Server, ServerConfig, SolveRequest};
//! use headstart::net::protocol::Dtype;
//! use headstart::stats::{Batch, Stats};
//! let dir = tempfile::tempdir()?;
//! let config = ServerConfig::new(dir.path().join("state.hs"));
//! let server = Server::start(&"127.0.0.1:0".parse()?, Stats::new(2), config)?;
//! let mut client = Client::connect(&server.address())?;
//! client.open(2, Dtype::F32)?;
//! client.push(&Batch::new(vec![1.0f32, 0.0, 0.0, 1.0], vec![3, 4]))?;
//! assert_eq!(client.sync()?, 2); // both rows are on disk now
//! let head = client.solve(&SolveRequest::default())?; // safetensors bytes
//! assert!(!head.is_empty());
//! assert_eq!(server.shutdown()?.samples(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
mod client;
mod conn;
pub mod protocol;
mod server;
pub mod tls;

pub use client::{Client, ClientError, ClientOptions, DEFAULT_WINDOW, Reconnect};
pub use conn::{Address, Conn};
pub use server::{MAX_CHECKPOINT_RETRY, Server, ServerConfig, ServerError};

use crate::solve::{Form, Lambda, Scope, SolveOptions};

/// The options of a remote solve, sent as JSON in a SOLVE frame. Every field is optional.
///
/// # Examples
/// ```
/// use headstart::net::SolveRequest;
/// use headstart::solve::Lambda;
/// let r: SolveRequest = serde_json::from_str(r#"{"form": "ridge", "lambda": 0.1, "classes": [3, 5]}"#)?;
/// assert_eq!(r.options().unwrap().lambda, Lambda::Absolute(0.1));
/// let r: SolveRequest = serde_json::from_str(r#"{"lambda_rel": 0.01}"#)?;
/// assert_eq!(r.options().unwrap().lambda, Lambda::Relative(0.01));
/// let default: SolveRequest = serde_json::from_str("{}")?;             // the scale-free default
/// assert_eq!(default.options().unwrap().lambda, Lambda::default());
/// assert!(serde_json::from_str::<SolveRequest>(r#"{"lamda": 1}"#).is_err()); // typo: refused
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SolveRequest {
    /// `nc` or `ridge`.
    pub form: Form,
    /// Whether to solve a bias.
    pub bias: bool,
    /// An absolute λ ≥ 0.
    pub lambda: Option<f64>,
    /// A relative λ factor ≥ 0 ([`Lambda::Relative`]); with neither field, the default
    /// relative factor.
    pub lambda_rel: Option<f64>,
    /// `all` or `task`.
    pub scope: Scope,
    /// Classes to solve, in row order (default: all, ascending).
    pub classes: Option<Vec<i64>>,
    /// Prefix of the tensor names in the reply.
    pub prefix: String,
}

impl Default for SolveRequest {
    /// Every default; no λ field, so the server's default (`rel`) applies.
    fn default() -> Self {
        SolveRequest {
            lambda: None,
            lambda_rel: None,
            ..SolveRequest::new(&SolveOptions::default(), "")
        }
    }
}

impl SolveRequest {
    /// The request for `options`, naming tensors with `prefix`.
    ///
    /// # Examples
    /// ```
    /// use headstart::net::SolveRequest;
    /// use headstart::solve::{Lambda, SolveOptions};
    /// let opts = SolveOptions { lambda: Lambda::Absolute(0.5), ..SolveOptions::default() };
    /// assert_eq!(SolveRequest::new(&opts, "fc.").options().unwrap(), opts);
    /// ```
    pub fn new(options: &SolveOptions, prefix: &str) -> Self {
        let (lambda, lambda_rel) = match options.lambda {
            Lambda::Absolute(v) => (Some(v), None),
            Lambda::Relative(r) => (None, Some(r)),
        };
        SolveRequest {
            form: options.form,
            bias: options.bias,
            lambda,
            lambda_rel,
            scope: options.scope,
            classes: options.classes.clone(),
            prefix: prefix.to_string(),
        }
    }

    /// The solver options this request describes.
    ///
    /// # Errors
    /// A message when both `lambda` and `lambda_rel` are given.
    pub fn options(&self) -> Result<SolveOptions, String> {
        Ok(SolveOptions {
            form: self.form,
            scope: self.scope,
            lambda: match (self.lambda, self.lambda_rel) {
                (Some(_), Some(_)) => return Err("give lambda or lambda_rel, not both".into()),
                (Some(v), None) => Lambda::Absolute(v),
                (None, Some(r)) => Lambda::Relative(r),
                (None, None) => Lambda::default(),
            },
            bias: self.bias,
            classes: self.classes.clone(),
        })
    }
}
