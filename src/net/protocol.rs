//! The framed binary protocol between clients and `headstart serve` (docs/protocol.md).
//!
//! Every frame is `u32 length (LE) | u8 kind | body`, where `length` counts the kind byte
//! and the body. A reader checks `length` against its limit before allocating anything.
//!
//! # Examples
//! ```
//! use headstart::net::protocol::{Dtype, Limits, Request, read_frame, encode_request};
//! let frame = encode_request(&Request::Open { dim: 4, dtype: Dtype::F32 });
//! let raw = read_frame(&mut &frame[..], Limits::default().max_frame_bytes)?;
//! let back = Request::decode(raw.kind, &raw.body, None)?;
//! assert_eq!(back, Request::Open { dim: 4, dtype: Dtype::F32 });
//! # Ok::<(), headstart::net::protocol::FrameError>(())
//! ```

use std::io::{Read, Write};

use super::auth::{MAX_TOKEN_LEN, Role};
use crate::stats::{Batch, BatchError};

/// The protocol version this build speaks. Version 2 added the handshake (HELLO, AUTH) that
/// every connection begins with, and moved the session's dimension and dtype to OPEN.
pub const PROTOCOL_VERSION: u32 = 2;

/// Frame kinds sent by clients.
pub mod kind {
    /// Opens the connection: the client's protocol version.
    pub const HELLO: u8 = 0x01;
    /// A labelled batch.
    pub const BATCH: u8 = 0x02;
    /// A task boundary.
    pub const BEGIN_TASK: u8 = 0x03;
    /// Solve a head (JSON options).
    pub const SOLVE: u8 = 0x04;
    /// Make every acknowledged batch durable.
    pub const SYNC: u8 = 0x05;
    /// A summary of the state.
    pub const STATS: u8 = 0x06;
    /// The client's token (empty when it has none).
    pub const AUTH: u8 = 0x07;
    /// Opens a batch session: dimension and dtype.
    pub const OPEN: u8 = 0x08;
    /// Opens a batch session that resumes across connections: dimension, dtype, session id.
    pub const RESUME: u8 = 0x09;
    /// Reply to HELLO.
    pub const WELCOME: u8 = 0x81;
    /// Reply to BATCH once applied.
    pub const ACK: u8 = 0x82;
    /// Reply to BEGIN_TASK once applied.
    pub const TASK_BEGUN: u8 = 0x83;
    /// Reply to SOLVE: safetensors bytes.
    pub const HEAD: u8 = 0x84;
    /// Reply to SYNC once durable.
    pub const SYNCED: u8 = 0x85;
    /// Reply to STATS: JSON.
    pub const STATS_REPLY: u8 = 0x86;
    /// Reply to AUTH: the role granted, the state's dimension and samples.
    pub const READY: u8 = 0x87;
    /// Reply to OPEN.
    pub const OPENED: u8 = 0x88;
    /// Reply to RESUME: samples, and what the server's ledger holds for the session.
    pub const RESUMED: u8 = 0x89;
    /// An error; `fatal` ones close the connection.
    pub const ERROR: u8 = 0xFF;
}

/// Element type of a session's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE 754 binary32, little-endian.
    F32,
    /// IEEE 754 binary64, little-endian.
    F64,
}

impl Dtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }

    fn code(self) -> u8 {
        match self {
            Dtype::F32 => 1,
            Dtype::F64 => 2,
        }
    }
}

/// A server's limits on what one frame may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `length` accepted (kind byte and body).
    pub max_frame_bytes: usize,
    /// Largest number of rows in one batch.
    pub max_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 << 20,
            max_rows: 65_536,
        }
    }
}

/// Error codes carried by ERROR frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be parsed.
    Malformed = 1,
    /// The frame is longer than the server accepts.
    TooLarge = 2,
    /// The batch has more rows than the server accepts.
    TooManyRows = 3,
    /// The batch was refused (shape, NaN/Inf, range).
    BadBatch = 4,
    /// HELLO was wrong or missing (version, dimension, dtype, order).
    Session = 5,
    /// The solve failed (unknown class, not positive definite, …).
    Solve = 6,
    /// The state could not be written.
    Durability = 7,
    /// The connection was idle too long.
    IdleTimeout = 8,
    /// The server is shutting down or too busy.
    Unavailable = 9,
    /// The token is missing or wrong.
    Unauthorized = 10,
    /// The token's role does not allow the request.
    Forbidden = 11,
    /// The client speaks plaintext to a TLS server, or TLS to a plaintext one.
    Transport = 12,
}

impl ErrorCode {
    fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        [
            Malformed,
            TooLarge,
            TooManyRows,
            BadBatch,
            Session,
            Solve,
            Durability,
            IdleTimeout,
            Unavailable,
            Unauthorized,
            Forbidden,
            Transport,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
    }
}

/// Bytes that must not be printed (a token in an AUTH frame); `Debug` hides them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A client's request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Opens the connection (the first frame on every connection).
    Hello {
        /// The client's protocol version ([`PROTOCOL_VERSION`]).
        version: u32,
    },
    /// The client's token, right after HELLO (empty when the server asks for none).
    Auth(Secret),
    /// Opens a batch session: what BATCH frames on this connection carry.
    Open {
        /// Feature dimension the client will send.
        dim: u64,
        /// Element type of its features.
        dtype: Dtype,
    },
    /// Opens a batch session as OPEN does, for client session `session` (non-zero): the
    /// connection's batches are numbered in that session, and one the server holds already
    /// is acknowledged without being applied again.
    Resume {
        /// Feature dimension the client will send.
        dim: u64,
        /// Element type of its features.
        dtype: Dtype,
        /// The client session's id.
        session: u64,
    },
    /// A labelled batch; `seq` is echoed in the ACK.
    Batch {
        /// Client-chosen sequence number.
        seq: u64,
        /// The rows and labels.
        batch: Batch,
    },
    /// A task boundary.
    BeginTask,
    /// Solve with these options (JSON, see [`crate::net::SolveRequest`]).
    Solve(String),
    /// Make every acknowledged batch durable.
    Sync,
    /// Ask for a summary.
    Stats,
}

/// A server's reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The versions match.
    Welcome {
        /// The server's protocol version.
        version: u32,
        /// Whether AUTH must carry a token.
        token_required: bool,
    },
    /// The client is authenticated.
    Ready {
        /// What its token allows.
        role: Role,
        /// The state's dimension.
        dim: u64,
        /// Samples in the state now.
        samples: u64,
    },
    /// The batch session is open.
    Opened {
        /// Samples in the state now.
        samples: u64,
    },
    /// The resumable session is open.
    Resumed {
        /// Samples in the state now.
        samples: u64,
        /// Whether the server's ledger held the session before.
        known: bool,
        /// The session's last applied batch number (0 if unknown).
        last: u64,
        /// Sessions the ledger has dropped so far (its expiry rule).
        evicted: u64,
    },
    /// Batch `seq` was applied.
    Ack(u64),
    /// The task boundary was applied.
    TaskBegun,
    /// The solved head as safetensors bytes.
    Head(Vec<u8>),
    /// Every batch acknowledged before the SYNC is on disk; the checkpoint holds `samples`.
    Synced(u64),
    /// A JSON summary of the state.
    Stats(String),
    /// An error; after a fatal one the server closes the connection.
    Error {
        /// What kind of error.
        code: ErrorCode,
        /// Whether the connection closes.
        fatal: bool,
        /// Human-readable, names what and where.
        message: String,
    },
}

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// Reading or writing failed (including timeouts).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The announced length exceeds the limit (nothing was allocated).
    #[error("frame of {length} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// The batch announces more rows than allowed.
    #[error("batch of {rows} rows exceeds the limit of {limit}")]
    TooManyRows {
        /// Announced rows.
        rows: u64,
        /// The limit.
        limit: usize,
    },
    /// The frame's content is not what its kind requires.
    #[error("malformed {what} frame: {reason}")]
    Malformed {
        /// The frame kind, in words.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The batch parsed but was refused.
    #[error("batch refused: {0}")]
    Batch(#[from] BatchError),
    /// A HELLO of another protocol version (its body's layout may differ).
    #[error("the client speaks protocol version {client}; this server speaks {PROTOCOL_VERSION}")]
    Version {
        /// The version the HELLO named.
        client: u32,
    },
}

impl FrameError {
    /// The error code to report for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::TooManyRows { .. } => ErrorCode::TooManyRows,
            FrameError::Batch(_) => ErrorCode::BadBatch,
            FrameError::Version { .. } => ErrorCode::Session,
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                ErrorCode::IdleTimeout
            }
            _ => ErrorCode::Malformed,
        }
    }
}

/// One frame as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The kind byte.
    pub kind: u8,
    /// Everything after it.
    pub body: Vec<u8>,
}

/// Reads one frame, refusing a length above `max_frame_bytes` before allocating.
///
/// # Errors
/// [`FrameError::Closed`] at a clean end of stream, [`FrameError::TooLarge`],
/// [`FrameError::Malformed`] for a zero length, [`FrameError::Io`] otherwise (a stream that
/// ends inside a frame is `UnexpectedEof`).
pub fn read_frame(r: &mut impl Read, max_frame_bytes: usize) -> Result<RawFrame, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let length = u32::from_le_bytes(len) as u64;
    if length == 0 {
        return Err(FrameError::Malformed {
            what: "any",
            reason: "length 0 (every frame has a kind byte)".into(),
        });
    }
    if length > max_frame_bytes as u64 {
        return Err(FrameError::TooLarge {
            length,
            limit: max_frame_bytes,
        });
    }
    let mut kind = [0u8];
    r.read_exact(&mut kind)?;
    // Read into reserved, unzeroed memory: the body is copied once, from the socket.
    let want = length as usize - 1;
    let mut body = Vec::with_capacity(want);
    r.take(want as u64).read_to_end(&mut body)?;
    if body.len() < want {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(RawFrame { kind: kind[0], body })
}

/// Writes one frame.
///
/// # Errors
/// I/O errors; a body too long for a `u32` length is `InvalidInput`.
pub fn write_frame(w: &mut impl Write, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(body.len() + 1)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&length.to_le_bytes());
    head[4] = kind;
    if body.len() <= 1 << 16 {
        // One write, so that a small frame leaves in one segment: a TLS client that reads a
        // plaintext server's ERROR during its handshake gets the whole frame at once.
        let mut frame = Vec::with_capacity(5 + body.len());
        frame.extend_from_slice(&head);
        frame.extend_from_slice(body);
        w.write_all(&frame)?;
    } else {
        w.write_all(&head)?;
        w.write_all(body)?;
    }
    w.flush()
}

/// A cursor over a frame body that reports what is missing by name.
struct Body<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(FrameError::Malformed {
                what: self.what,
                reason: format!("{field}: needs {n} bytes, {} left", self.bytes.len()),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self, field: &str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2, field)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, field: &str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, field: &str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed {
                what: self.what,
                reason: format!("{} unexpected trailing bytes", self.bytes.len()),
            })
        }
    }
    fn text(self) -> Result<String, FrameError> {
        String::from_utf8(self.bytes.to_vec()).map_err(|e| FrameError::Malformed {
            what: self.what,
            reason: format!("not UTF-8: {e}"),
        })
    }
}

impl Request {
    /// Decodes a request body. BATCH needs the session's `(dim, dtype, limits)` from HELLO;
    /// without a session it is a [`FrameError::Malformed`].
    ///
    /// # Errors
    /// [`FrameError::Malformed`], [`FrameError::TooManyRows`], [`FrameError::Batch`].
    pub fn decode(
        kind: u8,
        body: &[u8],
        session: Option<(usize, Dtype, Limits)>,
    ) -> Result<Request, FrameError> {
        let what = match kind {
            kind::HELLO => "HELLO",
            kind::BATCH => "BATCH",
            kind::BEGIN_TASK => "BEGIN_TASK",
            kind::SOLVE => "SOLVE",
            kind::SYNC => "SYNC",
            kind::STATS => "STATS",
            kind::AUTH => "AUTH",
            kind::OPEN => "OPEN",
            kind::RESUME => "RESUME",
            other => {
                return Err(FrameError::Malformed {
                    what: "unknown",
                    reason: format!("kind 0x{other:02x} is not a request"),
                });
            }
        };
        let mut b = Body { bytes: body, what };
        let request = match kind {
            kind::HELLO => {
                // Every version's HELLO starts with the version; what follows may differ.
                let version = b.u32("version")?;
                if version != PROTOCOL_VERSION {
                    return Err(FrameError::Version { client: version });
                }
                b.end()?;
                Request::Hello { version }
            }
            kind::AUTH => {
                if body.len() > MAX_TOKEN_LEN {
                    return Err(FrameError::Malformed {
                        what,
                        reason: format!("a token of {} bytes (at most {MAX_TOKEN_LEN})", body.len()),
                    });
                }
                Request::Auth(Secret(body.to_vec()))
            }
            kind::OPEN | kind::RESUME => {
                let dim = b.u64("dimension")?;
                let dtype = match b.u8("dtype")? {
                    1 => Dtype::F32,
                    2 => Dtype::F64,
                    other => {
                        return Err(FrameError::Malformed {
                            what,
                            reason: format!("dtype {other} (expected 1 = f32 or 2 = f64)"),
                        });
                    }
                };
                if kind == kind::OPEN {
                    b.end()?;
                    Request::Open { dim, dtype }
                } else {
                    let session = b.u64("session id")?;
                    b.end()?;
                    if session == 0 {
                        return Err(FrameError::Malformed {
                            what,
                            reason: "session id 0 (a session id is non-zero)".into(),
                        });
                    }
                    Request::Resume { dim, dtype, session }
                }
            }
            kind::BATCH => {
                let Some((dim, dtype, limits)) = session else {
                    return Err(FrameError::Malformed {
                        what,
                        reason: "BATCH before OPEN".into(),
                    });
                };
                let seq = b.u64("sequence number")?;
                let rows = b.u32("row count")? as u64;
                if rows > limits.max_rows as u64 {
                    return Err(FrameError::TooManyRows {
                        rows,
                        limit: limits.max_rows,
                    });
                }
                let rows = rows as usize;
                // The body must hold exactly rows × (8 + dim × size) more bytes.
                let expected = (rows as u128) * (8 + dim as u128 * dtype.size() as u128);
                if expected != b.bytes.len() as u128 {
                    return Err(FrameError::Malformed {
                        what,
                        reason: format!(
                            "{rows} rows of dimension {dim} need {expected} bytes of labels and features, the frame has {}",
                            b.bytes.len()
                        ),
                    });
                }
                let labels: Vec<i64> = from_le(b.take(rows * 8, "labels")?);
                let values = b.take(rows * dim * dtype.size(), "features")?;
                let batch = match dtype {
                    Dtype::F32 => Batch::new(from_le::<f32>(values), labels),
                    Dtype::F64 => Batch::new(from_le::<f64>(values), labels),
                };
                // The values are checked where the batch is laid out for the state (the
                // server's one pass over it), not here: a second pass cost the server ~3 %.
                Request::Batch { seq, batch }
            }
            kind::BEGIN_TASK => {
                b.end()?;
                Request::BeginTask
            }
            kind::SOLVE => Request::Solve(b.text()?),
            kind::SYNC => {
                b.end()?;
                Request::Sync
            }
            _ => {
                b.end()?;
                Request::Stats
            }
        };
        Ok(request)
    }
}

/// A request as one frame's bytes (length prefix included).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let (kind, body) = match request {
        Request::Hello { version } => (kind::HELLO, version.to_le_bytes().to_vec()),
        Request::Auth(secret) => (kind::AUTH, secret.0.clone()),
        Request::Open { dim, dtype } => {
            let mut body = Vec::with_capacity(9);
            body.extend_from_slice(&dim.to_le_bytes());
            body.push(dtype.code());
            (kind::OPEN, body)
        }
        Request::Resume { dim, dtype, session } => {
            let mut body = Vec::with_capacity(17);
            body.extend_from_slice(&dim.to_le_bytes());
            body.push(dtype.code());
            body.extend_from_slice(&session.to_le_bytes());
            (kind::RESUME, body)
        }
        Request::Batch { seq, batch } => (kind::BATCH, encode_batch_body(*seq, batch)),
        Request::BeginTask => (kind::BEGIN_TASK, Vec::new()),
        Request::Solve(json) => (kind::SOLVE, json.as_bytes().to_vec()),
        Request::Sync => (kind::SYNC, Vec::new()),
        Request::Stats => (kind::STATS, Vec::new()),
    };
    let mut out = Vec::with_capacity(body.len() + 5);
    write_frame(&mut out, kind, &body).expect("writing into a Vec cannot fail");
    out
}

/// The body of a BATCH frame: sequence number, row count, labels, features (the batch's own
/// element type, little-endian).
pub fn encode_batch_body(seq: u64, batch: &Batch) -> Vec<u8> {
    use crate::stats::Features;
    let rows = batch.labels.len();
    let mut body = Vec::with_capacity(12 + rows * 8 + batch.features.len() * 8);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&(rows as u32).to_le_bytes());
    extend_le(&mut body, &batch.labels);
    match &batch.features {
        Features::F32(v) => extend_le(&mut body, v),
        Features::F64(v) => extend_le(&mut body, v),
    }
    body
}

/// Writes a BATCH frame straight from the batch's buffers (no encoded copy on little-endian
/// machines); the bytes equal `write_frame(w, kind::BATCH, &encode_batch_body(seq, batch))`.
///
/// # Errors
/// I/O errors; a frame over 4 GiB is `InvalidInput`.
///
/// # Examples
/// ```
/// use headstart::net::protocol::{encode_batch_body, kind, write_batch_frame, write_frame};
/// use headstart::stats::Batch;
/// let batch = Batch::new(vec![1.0f32, 2.0], vec![3]);
/// let (mut direct, mut copied) = (Vec::new(), Vec::new());
/// write_batch_frame(&mut direct, 9, &batch)?;
/// write_frame(&mut copied, kind::BATCH, &encode_batch_body(9, &batch))?;
/// assert_eq!(direct, copied);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_batch_frame(w: &mut impl Write, seq: u64, batch: &Batch) -> std::io::Result<()> {
    use crate::stats::Features;
    if cfg!(target_endian = "big") {
        return write_frame(w, kind::BATCH, &encode_batch_body(seq, batch));
    }
    let features: &[u8] = match &batch.features {
        Features::F32(v) => bytemuck::cast_slice(v),
        Features::F64(v) => bytemuck::cast_slice(v),
    };
    let labels: &[u8] = bytemuck::cast_slice(&batch.labels);
    let too_long = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame longer than 4 GiB");
    let length = u32::try_from(1 + 12 + labels.len() + features.len()).map_err(|_| too_long())?;
    let rows = u32::try_from(batch.labels.len()).map_err(|_| too_long())?;
    let mut head = [0u8; 17];
    head[..4].copy_from_slice(&length.to_le_bytes());
    head[4] = kind::BATCH;
    head[5..13].copy_from_slice(&seq.to_le_bytes());
    head[13..].copy_from_slice(&rows.to_le_bytes());
    w.write_all(&head)?;
    w.write_all(labels)?;
    w.write_all(features)?;
    w.flush()
}

/// Appends numbers as little-endian bytes (one copy on little-endian machines).
fn extend_le<T: bytemuck::Pod>(body: &mut Vec<u8>, values: &[T]) {
    let start = body.len();
    body.extend_from_slice(bytemuck::cast_slice(values));
    if cfg!(target_endian = "big") {
        body[start..]
            .chunks_exact_mut(size_of::<T>())
            .for_each(<[u8]>::reverse);
    }
}

/// Reads little-endian numbers (`bytes.len()` a multiple of the size; any alignment).
fn from_le<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    // Aligned bytes (f32 features always are) copy straight into unzeroed memory.
    let mut values: Vec<T> = match bytemuck::try_cast_slice::<u8, T>(bytes) {
        Ok(aligned) => aligned.to_vec(),
        Err(_) => bytemuck::pod_collect_to_vec(bytes),
    };
    if cfg!(target_endian = "big") {
        bytemuck::cast_slice_mut::<T, u8>(&mut values)
            .chunks_exact_mut(size_of::<T>())
            .for_each(<[u8]>::reverse);
    }
    values
}

impl Reply {
    /// The reply's kind byte and body.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Reply::Welcome {
                version,
                token_required,
            } => {
                let mut body = version.to_le_bytes().to_vec();
                body.push(u8::from(*token_required));
                (kind::WELCOME, body)
            }
            Reply::Ready { role, dim, samples } => {
                let mut body = vec![role.code()];
                body.extend_from_slice(&dim.to_le_bytes());
                body.extend_from_slice(&samples.to_le_bytes());
                (kind::READY, body)
            }
            Reply::Opened { samples } => (kind::OPENED, samples.to_le_bytes().to_vec()),
            Reply::Resumed {
                samples,
                known,
                last,
                evicted,
            } => {
                let mut body = Vec::with_capacity(25);
                body.extend_from_slice(&samples.to_le_bytes());
                body.push(u8::from(*known));
                body.extend_from_slice(&last.to_le_bytes());
                body.extend_from_slice(&evicted.to_le_bytes());
                (kind::RESUMED, body)
            }
            Reply::Ack(seq) => (kind::ACK, seq.to_le_bytes().to_vec()),
            Reply::TaskBegun => (kind::TASK_BEGUN, Vec::new()),
            Reply::Head(bytes) => (kind::HEAD, bytes.clone()),
            Reply::Synced(samples) => (kind::SYNCED, samples.to_le_bytes().to_vec()),
            Reply::Stats(json) => (kind::STATS_REPLY, json.as_bytes().to_vec()),
            Reply::Error { code, fatal, message } => {
                let mut body = Vec::with_capacity(3 + message.len());
                body.extend_from_slice(&(*code as u16).to_le_bytes());
                body.push(u8::from(*fatal));
                body.extend_from_slice(message.as_bytes());
                (kind::ERROR, body)
            }
        }
    }

    /// Decodes a reply body.
    ///
    /// # Errors
    /// [`FrameError::Malformed`].
    pub fn decode(kind: u8, body: &[u8]) -> Result<Reply, FrameError> {
        let what = "reply";
        let mut b = Body { bytes: body, what };
        let reply = match kind {
            kind::WELCOME => {
                let version = b.u32("version")?;
                if version != PROTOCOL_VERSION {
                    // The rest of another version's WELCOME may differ.
                    return Err(FrameError::Malformed {
                        what,
                        reason: format!(
                            "the server speaks protocol version {version}; this client speaks {PROTOCOL_VERSION}"
                        ),
                    });
                }
                Reply::Welcome {
                    version,
                    token_required: match b.u8("token flag")? {
                        0 => false,
                        1 => true,
                        other => {
                            return Err(FrameError::Malformed {
                                what,
                                reason: format!("token flag {other} (expected 0 or 1)"),
                            });
                        }
                    },
                }
            }
            kind::READY => {
                let code = b.u8("role")?;
                Reply::Ready {
                    role: Role::from_code(code).ok_or_else(|| FrameError::Malformed {
                        what,
                        reason: format!("role {code} (expected 1 = push or 2 = admin)"),
                    })?,
                    dim: b.u64("dimension")?,
                    samples: b.u64("samples")?,
                }
            }
            kind::OPENED => Reply::Opened {
                samples: b.u64("samples")?,
            },
            kind::RESUMED => Reply::Resumed {
                samples: b.u64("samples")?,
                known: match b.u8("known flag")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(FrameError::Malformed {
                            what,
                            reason: format!("known flag {other} (expected 0 or 1)"),
                        });
                    }
                },
                last: b.u64("last sequence number")?,
                evicted: b.u64("evicted sessions")?,
            },
            kind::ACK => Reply::Ack(b.u64("sequence number")?),
            kind::TASK_BEGUN => Reply::TaskBegun,
            kind::HEAD => return Ok(Reply::Head(body.to_vec())),
            kind::SYNCED => Reply::Synced(b.u64("samples")?),
            kind::STATS_REPLY => return Ok(Reply::Stats(b.text()?)),
            kind::ERROR => {
                let raw = b.u16("error code")?;
                let code = ErrorCode::from_u16(raw).ok_or_else(|| FrameError::Malformed {
                    what,
                    reason: format!("unknown error code {raw}"),
                })?;
                let fatal = b.u8("fatal flag")? != 0;
                return Ok(Reply::Error {
                    code,
                    fatal,
                    message: b.text()?,
                });
            }
            other => {
                return Err(FrameError::Malformed {
                    what,
                    reason: format!("kind 0x{other:02x} is not a reply"),
                });
            }
        };
        b.end()?;
        Ok(reply)
    }
}
