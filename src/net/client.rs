//! The Rust client of `headstart serve`.

use std::collections::VecDeque;
use std::io::BufReader;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SolveRequest;
use super::auth::{Role, Token};
use super::conn::{Address, Conn};
use super::protocol::{
    Dtype, ErrorCode, FrameError, PROTOCOL_VERSION, Reply, Request, Secret, kind, read_frame,
    write_batch_frame,
};
use super::tls::{self, TlsError, TlsStream};
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
    /// The server did not answer (or take the request) within the client's timeout
    /// ([`Client::set_timeout`]); the client closed the connection.
    #[error("{address}: timed out after {after:?} {doing} (the client closed the connection)")]
    TimedOut {
        /// The server's address.
        address: String,
        /// What the client was doing, in words (`waiting for the reply to HELLO`).
        doing: String,
        /// The timeout.
        after: Duration,
    },
    /// A reply announced more bytes than [`Client::set_max_reply_bytes`] allows; nothing was
    /// allocated for it and the client closed the connection.
    #[error(
        "{address}: the reply to {request} announces {length} bytes, more than the client's limit of {limit} (Client::set_max_reply_bytes); the client closed the connection"
    )]
    ReplyTooLarge {
        /// The server's address.
        address: String,
        /// The request, in words.
        request: &'static str,
        /// The length the reply's frame header announced.
        length: u64,
        /// The client's limit.
        limit: usize,
    },
    /// The TLS handshake failed (an untrusted certificate, a server that does not speak TLS).
    #[error("{address}: TLS handshake failed: {reason}")]
    Tls {
        /// The server's address.
        address: String,
        /// What failed, with a hint.
        reason: String,
    },
    /// The call needs an open session ([`Client::open`]) or a batch that fits it.
    #[error("{0}")]
    Usage(String),
    /// The connection dropped and reconnecting failed for the whole of the client's patience
    /// ([`Reconnect::patience`]); the batches not acknowledged are kept, and a later call
    /// tries again.
    #[error(
        "{address}: the connection dropped and reconnecting failed for {after:?} ({attempts} attempts; last: {last})"
    )]
    GaveUp {
        /// The server's address.
        address: String,
        /// How long the client tried.
        after: Duration,
        /// Connection attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
    /// A resumed session cannot go on without applying a batch twice or losing one: the
    /// server no longer knows the session, or holds fewer of its batches than it made durable.
    #[error("{address}: cannot resume session {session:016x}: {reason}")]
    Resume {
        /// The server's address.
        address: String,
        /// The session's id.
        session: u64,
        /// What the server holds, and which batches are in doubt.
        reason: String,
    },
}

impl ClientError {
    /// Whether a reconnect may cure the error: the connection broke, timed out, or the server
    /// was busy or stopping. A refusal of the request itself (a bad batch, a wrong token)
    /// is not cured by sending it again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::TimedOut { .. } => true,
            ClientError::Frame { source, .. } => matches!(source, FrameError::Io(_) | FrameError::Closed),
            ClientError::Server { code, .. } => {
                matches!(code, ErrorCode::Unavailable | ErrorCode::IdleTimeout)
            }
            _ => false,
        }
    }
}

/// How a client with a resumable session reconnects after the connection drops (a server
/// restart, a cut link, a timeout): it tries again and again, waiting `first_wait`, then
/// twice as long each time up to `max_wait`, for at most `patience` in all.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use headstart::net::{ClientOptions, Reconnect};
/// let options = ClientOptions {
///     reconnect: Some(Reconnect { patience: Duration::from_secs(300), ..Reconnect::default() }),
///     ..ClientOptions::default()
/// };
/// assert_eq!(options.reconnect.unwrap().first_wait, Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// How long to keep trying before a call fails with [`ClientError::GaveUp`].
    pub patience: Duration,
    /// The wait before the second attempt (the first is immediate).
    pub first_wait: Duration,
    /// The longest wait between attempts.
    pub max_wait: Duration,
}

impl Default for Reconnect {
    /// 60 s of patience, waits from 50 ms doubling to 2 s.
    fn default() -> Self {
        Reconnect {
            patience: Duration::from_secs(60),
            first_wait: Duration::from_millis(50),
            max_wait: Duration::from_secs(2),
        }
    }
}

/// How a client connects: timeout, token, TLS.
///
/// # Examples
/// ```no_run
/// use headstart::net::{Address, Client, ClientOptions};
/// use headstart::net::auth::Token;
/// let options = ClientOptions {
///     token: Token::for_client(None)?, // HEADSTART_TOKEN, if set
///     ..ClientOptions::default()
/// }
/// .with_tls_ca(std::path::Path::new("ca.pem"))?;
/// let client = Client::connect_with(&"edge.example:7070".parse::<Address>()?, &options)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for the connection, and then for each read or write (`None`: forever).
    pub timeout: Option<Duration>,
    /// The token, sent only when the server asks for one.
    pub token: Option<Token>,
    /// Connect with TLS, trusting this configuration's CA ([`tls::client_config`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Open resumable sessions, and reconnect this way when the connection drops (none: a
    /// plain session, and a dropped connection fails the call). See [`Client::open`]. After
    /// a reconnect, SYNC, SOLVE and STATS are sent again; BEGIN_TASK is not (it may or may
    /// not have been applied: the call fails). The first connection is not retried.
    pub reconnect: Option<Reconnect>,
}

impl Default for ClientOptions {
    /// A 60 s timeout, no token, no TLS, no reconnecting.
    fn default() -> Self {
        ClientOptions {
            timeout: Some(DEFAULT_TIMEOUT),
            token: None,
            tls: None,
            reconnect: None,
        }
    }
}

impl ClientOptions {
    /// These options with TLS, trusting the CA certificates in the PEM file `ca`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file.
    pub fn with_tls_ca(mut self, ca: &std::path::Path) -> Result<Self, TlsError> {
        self.tls = Some(tls::client_config(ca)?);
        Ok(self)
    }
}

/// Batches [`Client::push`] leaves unacknowledged by default (see [`Client::set_window`]).
pub const DEFAULT_WINDOW: usize = 8;

/// How long [`Client::connect`] waits for the connection, and then for each read or write,
/// before giving up (see [`Client::set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest reply frame a client accepts by default, 1 GiB (see
/// [`Client::set_max_reply_bytes`]).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1 << 30;

/// Feature bytes a resumable session keeps for resending before it syncs by itself, 64 MiB
/// (see [`Client::set_max_unsynced_bytes`]).
pub const DEFAULT_MAX_UNSYNCED_BYTES: usize = 64 << 20;

/// A resumable session: its id, and the batches it may still have to send again.
struct Resumable {
    session: u64,
    /// The server's eviction count when the session was opened ([`crate::ledger`]).
    evicted_at_open: u64,
    /// Every batch after `durable`, oldest first, with its number.
    kept: VecDeque<(u64, Batch)>,
    kept_bytes: usize,
    /// The last batch number a SYNC made durable.
    durable: u64,
}

/// A connection to a server.
///
/// [`push`](Client::push) keeps up to a window of batches unacknowledged, so that the server
/// applies one batch while the next travels; every other call first waits for those
/// acknowledgements ([`flush`](Client::flush)), so its reply covers every batch pushed before.
/// Dropping a client waits for the outstanding acknowledgements, but only `flush` reports
/// a refusal.
///
/// Every connect, read and write gives up after a timeout (60 s by default, see
/// [`set_timeout`](Client::set_timeout)), and replies longer than
/// 1 GiB are refused before anything is allocated for them
/// ([`set_max_reply_bytes`](Client::set_max_reply_bytes)); either closes the connection.
pub struct Client {
    address: Address,
    reader: BufReader<Conn>,
    writer: Conn,
    session: Option<(usize, Dtype)>,
    role: Role,
    server_dim: usize,
    samples_at_connect: u64,
    seq: u64,
    /// Sequence numbers sent and not yet acknowledged, oldest first.
    unacked: std::collections::VecDeque<u64>,
    window: usize,
    max_reply_bytes: usize,
    /// How the connection was made (and its current timeout), to make it again.
    options: ClientOptions,
    resumable: Option<Resumable>,
    max_unsynced_bytes: usize,
    reconnects: u64,
}

impl Client {
    /// Connects to `address` (`HOST:PORT` or `unix:PATH`) without TLS or a token, waiting
    /// at most 60 s (`DEFAULT_TIMEOUT`) for the connection and then for each read or write.
    ///
    /// # Errors
    /// As [`connect_with`](Client::connect_with).
    pub fn connect(address: &Address) -> Result<Client, ClientError> {
        Client::connect_with(address, &ClientOptions::default())
    }

    /// Connects to `address` without TLS or a token, waiting at most `timeout` for the
    /// connection and then for each read or write (`None`: wait forever).
    ///
    /// # Errors
    /// As [`connect_with`](Client::connect_with).
    pub fn connect_timeout(address: &Address, timeout: Option<Duration>) -> Result<Client, ClientError> {
        Client::connect_with(
            address,
            &ClientOptions {
                timeout,
                ..ClientOptions::default()
            },
        )
    }

    /// Connects to `address`, runs the TLS handshake if `options.tls` is set, and then the
    /// protocol's handshake: HELLO, and AUTH with the token if the server asks for one.
    ///
    /// # Errors
    /// [`ClientError::Io`] or [`ClientError::TimedOut`] connecting; [`ClientError::Tls`];
    /// [`ClientError::Server`] if the server refused the version (naming both), the token
    /// ([`ErrorCode::Unauthorized`]) or the transport ([`ErrorCode::Transport`]: TLS against
    /// plaintext or the other way round); [`ClientError::Usage`] for a zero timeout.
    pub fn connect_with(address: &Address, options: &ClientOptions) -> Result<Client, ClientError> {
        let timeout = options.timeout;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(ClientError::Usage("a client timeout must be more than 0".into()));
        }
        // The first connection is not retried: a wrong address or a server that is down
        // fails at once. Once a resumable session is open, a dropped connection is resumed.
        let mut client = Client::dialled(address, options)?;
        client.handshake()?;
        Ok(client)
    }

    /// A client on a new connection, before the handshake.
    fn dialled(address: &Address, options: &ClientOptions) -> Result<Client, ClientError> {
        let (reader, writer) = dial(address, options)?;
        Ok(Client {
            address: address.clone(),
            reader,
            writer,
            session: None,
            role: Role::Push,
            server_dim: 0,
            samples_at_connect: 0,
            seq: 0,
            unacked: std::collections::VecDeque::new(),
            window: DEFAULT_WINDOW,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            options: options.clone(),
            resumable: None,
            max_unsynced_bytes: DEFAULT_MAX_UNSYNCED_BYTES,
            reconnects: 0,
        })
    }

    fn handshake(&mut self) -> Result<(), ClientError> {
        let token = self.options.token.clone();
        let token = token.as_ref();
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
        };
        let token_required = match self.call(&hello, "HELLO") {
            Ok(Reply::Welcome { token_required, .. }) => token_required,
            Ok(other) => return Err(self.unexpected("HELLO", &other)),
            Err(ClientError::Server {
                address,
                code: ErrorCode::Malformed,
                fatal,
                message,
            }) => {
                return Err(ClientError::Server {
                    address,
                    code: ErrorCode::Malformed,
                    fatal,
                    message: format!(
                        "{message} (is the server older? this client speaks protocol version {PROTOCOL_VERSION})"
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        // A token goes only to a server that asks for it.
        let secret = match (token_required, token) {
            (true, Some(token)) => Secret(token.as_bytes().to_vec()),
            _ => Secret::default(),
        };
        match self.call(&Request::Auth(secret), "AUTH")? {
            Reply::Ready { role, dim, samples } => {
                self.role = role;
                self.server_dim = usize::try_from(dim).unwrap_or(usize::MAX);
                self.samples_at_connect = samples;
                Ok(())
            }
            other => Err(self.unexpected("AUTH", &other)),
        }
    }

    /// What the server's token check granted: [`Role::Admin`] on a server without tokens.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The dimension of the server's state.
    pub fn server_dim(&self) -> usize {
        self.server_dim
    }

    /// Samples the server's state held when the connection was made.
    pub fn samples_at_connect(&self) -> u64 {
        self.samples_at_connect
    }

    /// Whether the connection is encrypted (TLS).
    pub fn is_tls(&self) -> bool {
        self.writer.is_tls()
    }

    /// Sets how long each later read or write waits before the call fails with
    /// [`ClientError::TimedOut`] (`None`: forever). A SOLVE's reply comes only once the
    /// solve is done: allow for it.
    ///
    /// # Errors
    /// [`ClientError::Usage`] for `Some(Duration::ZERO)`; [`ClientError::Io`] if the socket
    /// refuses the option.
    ///
    /// # Examples
    /// ```no_run
    /// use std::time::Duration;
    /// use headstart::net::{Address, Client};
    /// let mut client = Client::connect(&"127.0.0.1:7070".parse::<Address>()?)?;
    /// client.set_timeout(Some(Duration::from_secs(600)))?; // a long solve
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(ClientError::Usage("a client timeout must be more than 0".into()));
        }
        self.writer
            .set_timeouts(timeout)
            .map_err(|source| ClientError::Io {
                address: self.address.to_string(),
                source,
            })?;
        self.options.timeout = timeout;
        Ok(())
    }

    /// The read/write timeout ([`set_timeout`](Client::set_timeout)).
    pub fn timeout(&self) -> Option<Duration> {
        self.options.timeout
    }

    /// Sets the largest reply frame accepted, in bytes (default 1 GiB);
    /// a longer one fails with [`ClientError::ReplyTooLarge`] before anything is allocated.
    /// A SOLVE's reply holds the head: about 4 × classes × (dimension + 1) bytes.
    pub fn set_max_reply_bytes(&mut self, limit: usize) {
        self.max_reply_bytes = limit;
    }

    /// The largest reply frame accepted ([`set_max_reply_bytes`](Client::set_max_reply_bytes)).
    pub fn max_reply_bytes(&self) -> usize {
        self.max_reply_bytes
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
            if let Err(e) = self.take_ack() {
                self.recover(e)?;
            }
        }
        Ok(())
    }

    /// Times this client reconnected and resumed its session.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The resumable session's id ([`Client::open`] with [`ClientOptions::reconnect`]).
    pub fn session(&self) -> Option<u64> {
        self.resumable.as_ref().map(|r| r.session)
    }

    /// Batches of the resumable session a SYNC made durable (the first this many pushed).
    pub fn durable(&self) -> u64 {
        self.resumable.as_ref().map_or(0, |r| r.durable)
    }

    /// Batches kept for resending: pushed since the last SYNC (acknowledged or not).
    pub fn unsynced(&self) -> usize {
        self.resumable.as_ref().map_or(0, |r| r.kept.len())
    }

    /// Sets how many feature bytes a resumable session keeps for resending before
    /// [`push`](Client::push) syncs by itself (default 64 MiB); the batches are dropped once
    /// a SYNC makes them durable.
    pub fn set_max_unsynced_bytes(&mut self, limit: usize) {
        self.max_unsynced_bytes = limit;
    }

    /// Handles a failed read or write: without [`ClientOptions::reconnect`], or for an error a
    /// reconnect does not cure, returns the error; otherwise reconnects (with backoff, within
    /// the patience), resumes the session if there is one and sends again every kept batch the
    /// server does not hold.
    fn recover(&mut self, error: ClientError) -> Result<(), ClientError> {
        let Some(reconnect) = self.options.reconnect else {
            return Err(error);
        };
        if !error.is_transient() {
            return Err(error);
        }
        self.writer.shutdown();
        let address = self.address.clone();
        with_patience(&address, reconnect, || {
            let reopened = self.reopen();
            if reopened.is_err() {
                self.writer.shutdown();
            }
            reopened
        })?;
        self.reconnects += 1;
        Ok(())
    }

    /// Connects again, resumes the session and sends the kept batches the server lacks.
    fn reopen(&mut self) -> Result<(), ClientError> {
        // The handshake's replies must not be taken for ACKs: the batches awaiting theirs are
        // set aside, and stay unacknowledged if the attempt fails (only RESUMED says which of
        // them the server holds).
        let mut pending = std::mem::take(&mut self.unacked);
        let resumed = self.resume_session(&mut pending);
        if resumed.is_err() {
            self.unacked = pending;
        }
        resumed
    }

    /// [`reopen`](Client::reopen)'s work; removes from `pending` the batches RESUMED says the
    /// server holds.
    fn resume_session(&mut self, pending: &mut VecDeque<u64>) -> Result<(), ClientError> {
        let (reader, writer) = dial(&self.address, &self.options)?;
        self.reader = reader;
        self.writer = writer;
        self.handshake()?;
        // A connection without a session (STATS, SOLVE, SYNC only) has nothing to resume.
        let Some(r) = self.resumable.as_ref() else {
            return Ok(());
        };
        let (session, durable, evicted_at_open) = (r.session, r.durable, r.evicted_at_open);
        let (dim, dtype) = self.session.expect("a resumable session is open");
        let request = Request::Resume {
            dim: dim as u64,
            dtype,
            session,
        };
        let (known, last, evicted) = match self.call_once(&request, "RESUME")? {
            Reply::Resumed {
                known, last, evicted, ..
            } => (known, last, evicted),
            other => return Err(self.unexpected("RESUME", &other)),
        };
        let refuse = |reason: String| ClientError::Resume {
            address: self.address.to_string(),
            session,
            reason,
        };
        let in_doubt = format!("batches {}..={} are in doubt", durable + 1, self.seq);
        if !known && evicted > evicted_at_open {
            return Err(refuse(format!(
                "the server no longer knows the session (it dropped {} sessions since this one opened: it keeps the {} most recently used); {in_doubt}",
                evicted - evicted_at_open,
                crate::ledger::MAX_SESSIONS
            )));
        }
        let held = if known { last } else { 0 };
        if held < durable {
            return Err(refuse(format!(
                "the server holds its batches up to {held}, but a SYNC made batches up to {durable} durable: its state file was replaced or restored from an older copy; {in_doubt}"
            )));
        }
        if held > self.seq {
            return Err(refuse(format!(
                "the server holds batches up to {held}, but this client sent only {}: is another client using the session id?",
                self.seq
            )));
        }
        // Send again, in order and within the window, every kept batch the server lacks.
        pending.retain(|&seq| seq > held);
        // The kept batches are numbered one after another, oldest first.
        let (first, count) = {
            let kept = &self.resumable.as_ref().expect("a resumable session").kept;
            (kept.partition_point(|(seq, _)| *seq <= held), kept.len())
        };
        for i in first..count {
            let (seq, batch) = &self.resumable.as_ref().expect("a resumable session").kept[i];
            let seq = *seq;
            if let Err(source) = write_batch_frame(&mut self.writer, seq, batch) {
                return Err(self.io_error(source, "sending BATCH again"));
            }
            self.unacked.push_back(seq);
            while self.unacked.len() >= self.window {
                self.take_ack()?;
            }
        }
        Ok(())
    }

    /// Batches pushed and acknowledged so far; after a refusal, the refused batch is the one
    /// pushed after these (counting from 0, it has this index).
    pub fn acknowledged(&self) -> u64 {
        self.seq - self.unacked.len() as u64
    }

    /// Batches pushed so far (written to the connection, acknowledged or not).
    pub fn sent(&self) -> u64 {
        self.seq
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

    /// Opens a session for batches of `dim` features of type `dtype` (once per connection);
    /// returns the number of samples the server's state holds.
    ///
    /// With [`ClientOptions::reconnect`] the session is *resumable*: it gets a random id, and
    /// its batches are numbered 1, 2, 3, …. The client keeps every batch until a SYNC makes
    /// it durable ([`sync`](Client::sync); [`push`](Client::push) syncs by itself beyond
    /// [`set_max_unsynced_bytes`](Client::set_max_unsynced_bytes)). When the connection drops
    /// (a server restart, a cut link, a timeout), the next call reconnects, resumes the
    /// session and sends again each kept batch the server does not hold; the server's ledger
    /// skips any batch it holds already. So every batch is applied exactly once
    /// (docs/protocol.md, "Exactly-once pushes").
    ///
    /// # Errors
    /// [`ClientError::Server`] if the server's dimension differs; [`ClientError::Usage`] for a
    /// second session on one connection.
    pub fn open(&mut self, dim: usize, dtype: Dtype) -> Result<u64, ClientError> {
        if self.session.is_some() {
            return Err(ClientError::Usage(
                "this connection has a session already (one per connection)".into(),
            ));
        }
        if self.options.reconnect.is_some() {
            let session = loop {
                let id: u64 = rand::random();
                if id != 0 {
                    break id;
                }
            };
            let request = Request::Resume {
                dim: dim as u64,
                dtype,
                session,
            };
            // Like the first connection, opening is not retried; resuming starts once open.
            return match self.call(&request, "RESUME")? {
                Reply::Resumed { samples, evicted, .. } => {
                    self.session = Some((dim, dtype));
                    self.resumable = Some(Resumable {
                        session,
                        evicted_at_open: evicted,
                        kept: VecDeque::new(),
                        kept_bytes: 0,
                        durable: 0,
                    });
                    Ok(samples)
                }
                other => Err(self.unexpected("RESUME", &other)),
            };
        }
        let request = Request::Open {
            dim: dim as u64,
            dtype,
        };
        match self.call(&request, "OPEN")? {
            Reply::Opened { samples } => {
                self.session = Some((dim, dtype));
                Ok(samples)
            }
            other => Err(self.unexpected("OPEN", &other)),
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
        self.push_cow(std::borrow::Cow::Borrowed(batch))
    }

    /// As [`push`](Client::push), taking the batch: a resumable session keeps it for
    /// resending without copying it.
    ///
    /// # Errors
    /// As [`push`](Client::push).
    pub fn push_owned(&mut self, batch: Batch) -> Result<(), ClientError> {
        self.push_cow(std::borrow::Cow::Owned(batch))
    }

    fn push_cow(&mut self, batch: std::borrow::Cow<'_, Batch>) -> Result<(), ClientError> {
        use std::borrow::Cow;
        let (dim, dtype) = self
            .session
            .ok_or_else(|| ClientError::Usage("push needs a session: call open first".into()))?;
        let batch = match (&batch.features, dtype) {
            (Features::F64(v), Dtype::F32) => Cow::Owned(Batch::new(
                v.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
                batch.labels.clone(),
            )),
            (Features::F32(v), Dtype::F64) => Cow::Owned(Batch::new(
                v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>(),
                batch.labels.clone(),
            )),
            _ => batch,
        };
        // Checked after the conversion: an f64 value beyond f32's range is refused here.
        batch
            .validate(dim)
            .map_err(|e| ClientError::Usage(format!("batch refused before sending: {e}")))?;
        if self.resumable.is_some() {
            return self.push_resumable(batch.into_owned());
        }
        let batch = &*batch;
        let seq = self.seq + 1;
        if let Err(source) = write_batch_frame(&mut self.writer, seq, batch) {
            // Not sent (a partial frame is never applied): not counted by `acknowledged`.
            // A server that refused an earlier batch of the window has closed the connection:
            // its error frame, still readable, says why.
            if !is_timeout(&source) {
                self.flush()?;
            }
            return Err(self.io_error(source, "sending BATCH"));
        }
        self.seq = seq;
        self.unacked.push_back(seq);
        while self.unacked.len() >= self.window {
            self.take_ack()?;
        }
        Ok(())
    }

    /// `push` in a resumable session: the batch is kept until a SYNC makes it durable, and a
    /// dropped connection is resumed instead of failing the call.
    fn push_resumable(&mut self, batch: Batch) -> Result<(), ClientError> {
        let bytes = batch.features.len()
            * if matches!(batch.features, Features::F32(_)) {
                4
            } else {
                8
            };
        let kept_bytes = self.resumable.as_ref().map_or(0, |r| r.kept_bytes);
        if kept_bytes > 0 && kept_bytes + bytes > self.max_unsynced_bytes {
            self.sync()?;
        }
        let seq = self.seq + 1;
        let r = self.resumable.as_mut().expect("a resumable session");
        r.kept.push_back((seq, batch));
        r.kept_bytes += bytes;
        self.seq = seq;
        self.unacked.push_back(seq);
        let kept = &self.resumable.as_ref().expect("a resumable session").kept;
        let batch = &kept.back().expect("the batch just kept").1;
        if let Err(source) = write_batch_frame(&mut self.writer, seq, batch) {
            let e = self.io_error(source, "sending BATCH");
            // Reconnecting sends this batch again with the other kept ones.
            self.recover(e)?;
        }
        while self.unacked.len() >= self.window {
            if let Err(e) = self.take_ack() {
                self.recover(e)?;
            }
        }
        Ok(())
    }

    /// Marks a task boundary and returns once it is applied.
    ///
    /// Not sent again after a reconnect: if the connection drops before the reply, the call
    /// fails and the boundary may or may not be applied (STATS' `tasks_begun` tells).
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
        match self.call_again(&Request::Sync, "SYNC")? {
            Reply::Synced(samples) => {
                // Every batch pushed was acknowledged before the reply: all durable now.
                if let Some(r) = self.resumable.as_mut() {
                    r.kept.clear();
                    r.kept_bytes = 0;
                    r.durable = self.seq;
                }
                Ok(samples)
            }
            other => Err(self.unexpected("SYNC", &other)),
        }
    }

    /// [`call`](Client::call) for a request that may be sent twice (SYNC, SOLVE, STATS): with
    /// [`ClientOptions::reconnect`], a dropped connection is made again (and the session
    /// resumed) and the request sent again.
    fn call_again(&mut self, request: &Request, what: &'static str) -> Result<Reply, ClientError> {
        loop {
            match self.call(request, what) {
                Ok(reply) => return Ok(reply),
                Err(e) => self.recover(e)?,
            }
        }
    }

    /// Solves a head on the server; returns the safetensors file's bytes.
    ///
    /// # Errors
    /// [`ClientError::Server`] with [`ErrorCode::Solve`] naming the problem.
    pub fn solve(&mut self, request: &SolveRequest) -> Result<Vec<u8>, ClientError> {
        let json = serde_json::to_string(request).expect("plain data serialises");
        match self.call_again(&Request::Solve(json), "SOLVE")? {
            Reply::Head(bytes) => Ok(bytes),
            other => Err(self.unexpected("SOLVE", &other)),
        }
    }

    /// A JSON summary of the server's state (dimension, samples, classes with counts, …).
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        match self.call_again(&Request::Stats, "STATS")? {
            Reply::Stats(json) => serde_json::from_str(&json).map_err(|e| ClientError::Unexpected {
                address: self.address.to_string(),
                request: "STATS",
                reply: format!("invalid JSON: {e}"),
            }),
            other => Err(self.unexpected("STATS", &other)),
        }
    }

    fn call(&mut self, request: &Request, what: &'static str) -> Result<Reply, ClientError> {
        // The outstanding ACKs first, resuming if the connection dropped: the request then
        // goes on a connection that has every pushed batch.
        self.flush()?;
        self.call_once(request, what)
    }

    /// Sends a request and reads its reply, with no batch awaiting its ACK.
    fn call_once(&mut self, request: &Request, what: &'static str) -> Result<Reply, ClientError> {
        let frame = super::protocol::encode_request(request);
        if let Err(source) = self.writer.write_all_frame(&frame) {
            return Err(self.io_error(source, &format!("sending {what}")));
        }
        self.read(what)
    }

    fn read(&mut self, what: &'static str) -> Result<Reply, ClientError> {
        let raw = match read_frame(&mut self.reader, self.max_reply_bytes) {
            Ok(raw) => raw,
            Err(FrameError::Io(source)) => {
                return Err(self.io_error(source, &format!("waiting for the reply to {what}")));
            }
            Err(FrameError::TooLarge { length, limit }) => {
                // The rest of the stream cannot be read in step: give it up.
                self.writer.shutdown();
                return Err(ClientError::ReplyTooLarge {
                    address: self.address.to_string(),
                    request: what,
                    length,
                    limit,
                });
            }
            Err(source) => {
                return Err(ClientError::Frame {
                    address: self.address.to_string(),
                    source,
                });
            }
        };
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

    /// An I/O error as a [`ClientError`]: a timeout closes the connection (a late reply
    /// would answer the wrong request) and says so.
    fn io_error(&mut self, source: std::io::Error, doing: &str) -> ClientError {
        if is_timeout(&source) {
            self.writer.shutdown();
        }
        classify(&self.address, source, doing, self.options.timeout)
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

/// Runs `attempt` until it succeeds, fails with an error a reconnect does not cure, or the
/// patience runs out: waits from `first_wait` doubling to `max_wait` between attempts.
fn with_patience<T>(
    address: &Address,
    reconnect: Reconnect,
    mut attempt: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let started = Instant::now();
    let mut wait = reconnect.first_wait;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt() {
            Err(e) if e.is_transient() => {
                if started.elapsed() + wait >= reconnect.patience {
                    return Err(ClientError::GaveUp {
                        address: address.to_string(),
                        after: started.elapsed(),
                        attempts,
                        last: Box::new(e),
                    });
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(reconnect.max_wait);
            }
            other => return other,
        }
    }
}

/// Connects, with TLS if the options say so: the reader and the writer of the connection.
fn dial(address: &Address, options: &ClientOptions) -> Result<(BufReader<Conn>, Conn), ClientError> {
    let timeout = options.timeout;
    let io = |source: std::io::Error| classify(address, source, "connecting", timeout);
    let mut conn = Conn::connect_timeout(address, timeout).map_err(io)?;
    conn.set_timeouts(timeout).map_err(io)?;
    if let Some(config) = &options.tls {
        let name = tls::server_name(address).map_err(|reason| ClientError::Tls {
            address: address.to_string(),
            reason,
        })?;
        conn = Conn::Tls(Box::new(
            TlsStream::connect(Arc::clone(config), name, conn)
                .map_err(|e| handshake_error(address, timeout, e))?,
        ));
    }
    let writer = conn.try_clone().map_err(io)?;
    Ok((BufReader::with_capacity(1 << 16, conn), writer))
}

/// Whether an I/O error is a socket timeout (`WouldBlock` from `SO_RCVTIMEO` on Unix).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// A failed TLS handshake as a [`ClientError`]: a plaintext server's ERROR frame becomes a
/// [`ClientError::Server`]; otherwise the TLS error with a hint.
fn handshake_error(address: &Address, timeout: Option<Duration>, e: tls::HandshakeError) -> ClientError {
    if e.received.len() > 4
        && e.received[4] == kind::ERROR
        && let Ok(raw) = read_frame(&mut &e.received[..], e.received.len())
        && let Ok(Reply::Error { code, fatal, message }) = Reply::decode(raw.kind, &raw.body)
    {
        return ClientError::Server {
            address: address.to_string(),
            code,
            fatal,
            message,
        };
    }
    if is_timeout(&e.error) {
        return classify(address, e.error, "in the TLS handshake", timeout);
    }
    let text = e.error.to_string();
    let hint = if text.contains("certificate") || text.contains("Certificate") {
        " (does the --tls-ca file hold the CA that signed the server's certificate, and does the certificate name this host?)"
    } else if e.received.is_empty() {
        " (the server closed the connection: is it serving TLS?)"
    } else {
        ""
    };
    ClientError::Tls {
        address: address.to_string(),
        reason: format!("{text}{hint}"),
    }
}

fn classify(
    address: &Address,
    source: std::io::Error,
    doing: &str,
    timeout: Option<Duration>,
) -> ClientError {
    match timeout {
        Some(after) if is_timeout(&source) => ClientError::TimedOut {
            address: address.to_string(),
            doing: doing.to_string(),
            after,
        },
        _ => ClientError::Io {
            address: address.to_string(),
            source,
        },
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
