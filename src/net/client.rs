//! The Rust client of `headstart serve`.

use std::io::BufReader;

use super::SolveRequest;
use super::conn::{Address, Conn};
use super::protocol::{
    Dtype, ErrorCode, FrameError, PROTOCOL_VERSION, Reply, Request, read_frame, write_batch_frame,
};
use crate::stats::{Batch, Features};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    #[error("{address}: {source}")]
    Io {
        /// The server's address.
        address: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server's reply could not be read.
    #[error("{address}: {source}")]
    Frame {
        /// The server's address.
        address: String,
        /// The error.
        #[source]
        source: FrameError,
    },
    /// The server answered with an error frame.
    #[error("{address}: server error ({code:?}{}): {message}", if *fatal { ", connection closed" } else { "" })]
    Server {
        /// The server's address.
        address: String,
        /// Its error code.
        code: ErrorCode,
        /// Whether it closed the connection.
        fatal: bool,
        /// Its message.
        message: String,
    },
    /// The server sent a reply that does not answer the request.
    #[error("{address}: unexpected reply to {request}: {reply}")]
    Unexpected {
        /// The server's address.
        address: String,
        /// The request, in words.
        request: &'static str,
        /// The reply, in words.
        reply: String,
    },
    /// The call needs an open session ([`Client::hello`]) or a batch that fits it.
    #[error("{0}")]
    Usage(String),
}

/// Batches [`Client::push`] leaves unacknowledged by default (see [`Client::set_window`]).
pub const DEFAULT_WINDOW: usize = 8;

/// A connection to a server.
///
/// [`push`](Client::push) keeps up to a window of batches unacknowledged, so that the server
/// applies one batch while the next travels; every other call first waits for those
/// acknowledgements ([`flush`](Client::flush)), so its reply covers every batch pushed before.
/// Dropping a client waits for the outstanding acknowledgements, but only `flush` reports
/// a refusal.
pub struct Client {
    address: Address,
    reader: BufReader<Conn>,
    writer: Conn,
    session: Option<(usize, Dtype)>,
    seq: u64,
    /// Sequence numbers sent and not yet acknowledged, oldest first.
    unacked: std::collections::VecDeque<u64>,
    window: usize,
}

impl Client {
    /// Connects to `address` (`HOST:PORT` or `unix:PATH`).
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub fn connect(address: &Address) -> Result<Client, ClientError> {
        let io = |source| ClientError::Io {
            address: address.to_string(),
            source,
        };
        let conn = Conn::connect(address).map_err(io)?;
        let writer = conn.try_clone().map_err(io)?;
        Ok(Client {
            address: address.clone(),
            reader: BufReader::with_capacity(1 << 16, conn),
            writer,
            session: None,
            seq: 0,
            unacked: std::collections::VecDeque::new(),
            window: DEFAULT_WINDOW,
        })
    }

    /// Sets how many pushed batches may await their acknowledgement (at least 1; 1 makes
    /// every [`push`](Client::push) wait until its batch is applied).
    ///
    /// # Examples
    /// ```no_run
    /// use headstart::net::{Address, Client};
    /// let mut client = Client::connect(&"127.0.0.1:7070".parse::<Address>()?)?;
    /// client.set_window(1); // stop-and-wait
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    /// Waits until every pushed batch is acknowledged (applied by the server).
    ///
    /// # Errors
    /// The first batch the server refused ([`ClientError::Server`]), or a connection error.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        while !self.unacked.is_empty() {
            self.take_ack()?;
        }
        Ok(())
    }

    /// Batches pushed and acknowledged so far; after a refusal, the refused batch is the one
    /// pushed after these (counting from 0, it has this index).
    pub fn acknowledged(&self) -> u64 {
        self.seq - self.unacked.len() as u64
    }

    fn take_ack(&mut self) -> Result<(), ClientError> {
        let expected = *self.unacked.front().expect("an unacknowledged batch");
        match self.read("BATCH")? {
            Reply::Ack(s) if s == expected => {
                self.unacked.pop_front();
                Ok(())
            }
            other => Err(self.unexpected("BATCH", &other)),
        }
    }

    /// Opens a session for batches of `dim` features of type `dtype`; returns the number of
    /// samples the server's state holds.
    ///
    /// # Errors
    /// [`ClientError::Server`] if the server's dimension or protocol version differs.
    pub fn hello(&mut self, dim: usize, dtype: Dtype) -> Result<u64, ClientError> {
        let request = Request::Hello {
            version: PROTOCOL_VERSION,
            dim: dim as u64,
            dtype,
        };
        match self.call(&request, "HELLO")? {
            Reply::Welcome { samples, .. } => {
                self.session = Some((dim, dtype));
                Ok(samples)
            }
            other => Err(self.unexpected("HELLO", &other)),
        }
    }

    /// Sends a batch; returns once at most the window's size less one pushed batches await
    /// their acknowledgement ([`flush`](Client::flush) waits for all). Values are sent in the
    /// session's dtype (f64 values are rounded to f32 in an f32 session).
    ///
    /// # Errors
    /// [`ClientError::Usage`] without a session or for a batch of the wrong width (nothing
    /// is sent); [`ClientError::Server`] if the server refused this batch or an earlier
    /// unacknowledged one (the server then closes the connection).
    pub fn push(&mut self, batch: &Batch) -> Result<(), ClientError> {
        let (dim, dtype) = self
            .session
            .ok_or_else(|| ClientError::Usage("push needs a session: call hello first".into()))?;
        batch
            .validate(dim)
            .map_err(|e| ClientError::Usage(format!("batch refused before sending: {e}")))?;
        let converted;
        let batch = match (&batch.features, dtype) {
            (Features::F64(v), Dtype::F32) => {
                converted = Batch::new(
                    v.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
                    batch.labels.clone(),
                );
                &converted
            }
            (Features::F32(v), Dtype::F64) => {
                converted = Batch::new(
                    v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>(),
                    batch.labels.clone(),
                );
                &converted
            }
            _ => batch,
        };
        self.seq += 1;
        let seq = self.seq;
        if let Err(source) = write_batch_frame(&mut self.writer, seq, batch) {
            // A server that refused an earlier batch of the window has closed the connection:
            // its error frame, still readable, says why.
            self.flush()?;
            return Err(ClientError::Io {
                address: self.address.to_string(),
                source,
            });
        }
        self.unacked.push_back(seq);
        while self.unacked.len() >= self.window {
            self.take_ack()?;
        }
        Ok(())
    }

    /// Marks a task boundary and returns once it is applied.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn begin_task(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::BeginTask, "BEGIN_TASK")? {
            Reply::TaskBegun => Ok(()),
            other => Err(self.unexpected("BEGIN_TASK", &other)),
        }
    }

    /// Returns once every batch acknowledged before this call (on any connection) is in the
    /// state file; the number of samples the file holds.
    ///
    /// # Errors
    /// [`ClientError::Server`] with [`ErrorCode::Durability`] if the write failed.
    pub fn sync(&mut self) -> Result<u64, ClientError> {
        match self.call(&Request::Sync, "SYNC")? {
            Reply::Synced(samples) => Ok(samples),
            other => Err(self.unexpected("SYNC", &other)),
        }
    }

    /// Solves a head on the server; returns the safetensors file's bytes.
    ///
    /// # Errors
    /// [`ClientError::Server`] with [`ErrorCode::Solve`] naming the problem.
    pub fn solve(&mut self, request: &SolveRequest) -> Result<Vec<u8>, ClientError> {
        let json = serde_json::to_string(request).expect("plain data serialises");
        match self.call(&Request::Solve(json), "SOLVE")? {
            Reply::Head(bytes) => Ok(bytes),
            other => Err(self.unexpected("SOLVE", &other)),
        }
    }

    /// A JSON summary of the server's state (dimension, samples, classes with counts, …).
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        match self.call(&Request::Stats, "STATS")? {
            Reply::Stats(json) => serde_json::from_str(&json).map_err(|e| ClientError::Unexpected {
                address: self.address.to_string(),
                request: "STATS",
                reply: format!("invalid JSON: {e}"),
            }),
            other => Err(self.unexpected("STATS", &other)),
        }
    }

    fn call(&mut self, request: &Request, what: &'static str) -> Result<Reply, ClientError> {
        let frame = super::protocol::encode_request(request);
        self.writer
            .write_all_frame(&frame)
            .map_err(|source| ClientError::Io {
                address: self.address.to_string(),
                source,
            })?;
        // The server replies in request order: the pushed batches' ACKs come first.
        self.flush()?;
        self.read(what)
    }

    fn read(&mut self, _what: &'static str) -> Result<Reply, ClientError> {
        let frame_error = |source| ClientError::Frame {
            address: self.address.to_string(),
            source,
        };
        let raw = read_frame(&mut self.reader, usize::MAX >> 1).map_err(frame_error)?;
        let reply = Reply::decode(raw.kind, &raw.body).map_err(|source| ClientError::Frame {
            address: self.address.to_string(),
            source,
        })?;
        if let Reply::Error { code, fatal, message } = reply {
            return Err(ClientError::Server {
                address: self.address.to_string(),
                code,
                fatal,
                message,
            });
        }
        Ok(reply)
    }

    fn unexpected(&self, request: &'static str, reply: &Reply) -> ClientError {
        let reply = match reply {
            Reply::Head(b) => format!("HEAD ({} bytes)", b.len()),
            other => format!("{other:?}"),
        };
        ClientError::Unexpected {
            address: self.address.to_string(),
            request,
            reply,
        }
    }
}

impl Drop for Client {
    /// Waits for the outstanding acknowledgements (errors are dropped with the client: call
    /// [`flush`](Client::flush) to see them), so that batches pushed just before a client goes
    /// out of scope are not cut off by the closing connection.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

trait WriteFrame {
    fn write_all_frame(&mut self, frame: &[u8]) -> std::io::Result<()>;
}

impl WriteFrame for Conn {
    fn write_all_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.write_all(frame)?;
        self.flush()
    }
}
