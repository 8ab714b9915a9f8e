//! `headstart serve`: one state, many clients, checkpoints on disk.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SolveRequest;
use super::auth::{Role, Tokens};
use super::conn::{Address, Conn};
use super::protocol::{
    Dtype, ErrorCode, FrameError, Limits, PROTOCOL_VERSION, Reply, Request, kind, read_frame, write_frame,
};
use super::tls::{TLS_HANDSHAKE_BYTE, TlsStream};
use crate::ledger::Ledger;
use crate::pipeline::{self, Applied, PipelineError, Producer, Reducer};
use crate::snapshot::{self, SnapshotError};
use crate::solve::Solver;
use crate::stats::Stats;
use crossbeam_channel::{Receiver, Sender};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The state file: checkpoints replace it atomically.
    pub state_path: PathBuf,
    /// Frame and batch limits.
    pub limits: Limits,
    /// A connection silent this long (or not reading its replies) is closed.
    pub idle_timeout: Duration,
    /// Checkpoint this often when the state changed (none: only on SYNC and shutdown).
    pub checkpoint_every: Option<Duration>,
    /// After a failed checkpoint (a full disk, a file-size limit, an I/O error), the first
    /// retry comes this much later; each further failure doubles the wait, up to
    /// [`MAX_CHECKPOINT_RETRY`]. A success ends the retries.
    pub checkpoint_retry: Duration,
    /// Connections served at once; more get an error frame and are closed.
    pub max_connections: usize,
    /// Capacity of the channel into the reducer (batches).
    pub channel_capacity: usize,
    /// Print connection errors and checkpoints on stderr.
    pub verbose: bool,
    /// The tokens clients must present, with their roles (none: every client is admin).
    pub tokens: Option<Tokens>,
    /// Serve TLS only ([`tls::server_config`](super::tls::server_config)); none: plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerConfig {
    /// Defaults: 64 MiB frames, 65,536 rows, 60 s idle timeout, no periodic checkpoint, a
    /// failed checkpoint retried after 1 s (doubling to a minute), 64 connections, a channel of 8 batches, quiet, no tokens, no TLS.
    pub fn new(state_path: PathBuf) -> Self {
        ServerConfig {
            state_path,
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(60),
            checkpoint_every: None,
            checkpoint_retry: Duration::from_secs(1),
            max_connections: 64,
            channel_capacity: 8,
            verbose: false,
            tokens: None,
            tls: None,
        }
    }
}

/// Why the server could not start, checkpoint or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding or accepting failed.
    #[error("{address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state could not be written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The reducer stopped.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The longest wait between retries of a failed checkpoint.
pub const MAX_CHECKPOINT_RETRY: Duration = Duration::from_secs(60);

/// The last checkpoint's outcome, while checkpoints fail.
struct Retry {
    /// When the next attempt is due.
    at: Instant,
    /// The wait after the next failure.
    wait: Duration,
}

struct Shared {
    producer: Producer,
    dim: usize,
    config: ServerConfig,
    /// Held for reading while a batch or task boundary is sent and acknowledged; shutdown
    /// takes it for writing, so that every acknowledged batch precedes the final checkpoint.
    draining: RwLock<bool>,
    /// Serialises checkpoints (a later snapshot is never overwritten by an earlier one) and
    /// remembers the state's and the ledger's versions last written.
    checkpoint: Mutex<Option<(u64, u64)>>,
    /// Set while checkpoints fail: the checkpoint thread retries with backoff.
    retry: Mutex<Option<Retry>>,
    stop: AtomicBool,
    connections: AtomicUsize,
    solver: Solver,
}

impl Shared {
    /// Writes the state if it changed since the last checkpoint; returns its sample count.
    fn checkpoint(&self) -> Result<u64, ServerError> {
        let mut last = self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        let (state, ledger) = self.producer.snapshot_with_ledger()?;
        let version = (state.version(), ledger.changes());
        if *last != Some(version) {
            let started = Instant::now();
            let written = snapshot::write_with_ledger(&self.config.state_path, &state, &ledger);
            let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = written {
                // The previous file is untouched (atomic replace): retry later, from memory.
                let wait = retry.as_ref().map_or(self.config.checkpoint_retry, |r| r.wait);
                eprintln!(
                    "headstart serve: checkpoint failed: {e}; the state stays in memory, retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                *retry = Some(Retry {
                    at: Instant::now() + wait,
                    wait: (wait * 2).min(MAX_CHECKPOINT_RETRY),
                });
                return Err(e.into());
            }
            if retry.take().is_some() {
                eprintln!(
                    "headstart serve: checkpoint written after failures: {} samples → {}",
                    state.samples(),
                    self.config.state_path.display()
                );
            }
            *last = Some(version);
            if self.config.verbose {
                eprintln!(
                    "checkpoint: {} samples, {} classes → {} ({:.0} ms)",
                    state.samples(),
                    state.classes().len(),
                    self.config.state_path.display(),
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        Ok(state.samples())
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A running server. [`shutdown`](Server::shutdown) stops it with a final checkpoint.
pub struct Server {
    shared: Arc<Shared>,
    address: Address,
    accept: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    reducer: Option<Reducer>,
}

impl Server {
    /// Binds `address` (TCP port 0 picks a free port; see [`address`](Server::address)),
    /// starts the reducer on `initial`, writes a first checkpoint, and serves in background
    /// threads.
    ///
    /// # Errors
    /// [`ServerError::Listen`] if the address cannot be bound (a Unix socket path that
    /// another server answers on is refused; a stale one is replaced);
    /// [`ServerError::Snapshot`] if the state file cannot be written.
    pub fn start(address: &Address, initial: Stats, config: ServerConfig) -> Result<Server, ServerError> {
        Server::start_with_ledger(address, initial, Ledger::new(), config)
    }

    /// As [`start`](Server::start), with the session ledger read from the state file
    /// ([`snapshot::read_with_ledger`]), so that clients resuming their sessions after a
    /// restart find the batches the state holds.
    ///
    /// # Errors
    /// As [`start`](Server::start).
    pub fn start_with_ledger(
        address: &Address,
        initial: Stats,
        ledger: Ledger,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        let listen_error = |source| ServerError::Listen {
            address: address.to_string(),
            source,
        };
        let (listener, bound) = match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(listen_error)?;
                let local = l.local_addr().map_err(listen_error)?;
                (Listener::Tcp(l), Address::Tcp(local.to_string()))
            }
            Address::Unix(path) => {
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(listen_error(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another server is listening on this socket",
                        )));
                    }
                    std::fs::remove_file(path).map_err(listen_error)?;
                }
                let l = UnixListener::bind(path).map_err(listen_error)?;
                (Listener::Unix(l, path.clone()), address.clone())
            }
        };
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
        .map_err(listen_error)?;

        // Clients send raw features: an expanded state expands them on the pipeline.
        let dim = initial.input_dim();
        let (producer, reducer) = pipeline::spawn_with_ledger(initial, ledger, config.channel_capacity);
        let shared = Arc::new(Shared {
            producer,
            dim,
            config,
            draining: RwLock::new(false),
            checkpoint: Mutex::new(None),
            retry: Mutex::new(None),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            solver: Solver::new(),
        });
        shared.checkpoint()?;
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("headstart-accept".into())
                .spawn(move || accept_loop(listener, shared))
                .expect("spawning the accept thread")
        };
        let checkpointer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("headstart-checkpoint".into())
                .spawn(move || checkpoint_loop(shared))
                .expect("spawning the checkpoint thread")
        };
        Ok(Server {
            shared,
            address: bound,
            accept: Some(accept),
            checkpointer: Some(checkpointer),
            reducer: Some(reducer),
        })
    }

    /// The bound address (with the actual port for TCP port 0).
    pub fn address(&self) -> Address {
        self.address.clone()
    }

    /// Writes a checkpoint now (if the state changed) and returns its sample count.
    ///
    /// # Errors
    /// [`ServerError::Snapshot`] or [`ServerError::Pipeline`].
    pub fn checkpoint(&self) -> Result<u64, ServerError> {
        self.shared.checkpoint()
    }

    /// Stops accepting, refuses further batches, waits for batches being acknowledged,
    /// writes a final checkpoint and returns the final state.
    ///
    /// # Errors
    /// As [`checkpoint`](Server::checkpoint).
    pub fn shutdown(mut self) -> Result<Stats, ServerError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        *self.shared.draining.write().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.checkpoint()?;
        let state = self.shared.producer.snapshot()?;
        for handle in [self.accept.take(), self.checkpointer.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
        // The reducer stops once the last producer handle (held by connections) is gone;
        // connection threads end on their own, so it is not joined here.
        drop(self.reducer.take());
        Ok(state)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }),
            Listener::Unix(l, _) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(false)?;
                Ok(Conn::Unix(s))
            }),
        };
        match accepted {
            Ok(conn) => {
                let shared = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("headstart-conn".into())
                    .spawn(move || serve_connection(conn, shared));
                if let Err(e) = spawned {
                    eprintln!("headstart serve: cannot start a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("headstart serve: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    if let Listener::Unix(_, path) = listener {
        let _ = std::fs::remove_file(path);
    }
}

/// Checkpoints every `checkpoint_every` (if set), and retries a failed checkpoint when its
/// backoff is due, whatever failed it (a periodic checkpoint or a SYNC).
fn checkpoint_loop(shared: Arc<Shared>) {
    // A period beyond what an `Instant` can reach means no periodic checkpoint.
    let every = shared.config.checkpoint_every;
    let after = |t: Instant| every.and_then(|every| t.checked_add(every));
    let mut next = after(Instant::now());
    let tick = every.map_or(Duration::from_millis(20), |e| e.min(Duration::from_millis(20)));
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        let now = Instant::now();
        let retry_due = shared
            .retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|r| now >= r.at);
        if retry_due || next.is_some_and(|n| now >= n) {
            // A failure is logged and scheduled for retry inside `checkpoint`.
            let _ = shared.checkpoint();
            next = after(Instant::now());
        }
    }
}

/// Decrements the connection count however the connection ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Batches a connection may have read and queued before their ACKs are written; beyond
/// this the connection stops reading until ACKs go out (TCP backpressure).
pub const ACK_WINDOW: usize = 64;

/// What a connection's writer sends, in the order the requests arrived.
enum Outgoing {
    /// Sent once `applied` resolves.
    Applied { applied: Applied, reply: Reply },
    /// Sent as it is; a fatal error closes the connection.
    Now(Reply),
}

fn serve_connection(conn: Conn, shared: Arc<Shared>) {
    let _slot = Slot(&shared.connections);
    let open = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let mut conn = conn;
    if open > shared.config.max_connections {
        let _ = send(
            &mut conn,
            &fatal(
                ErrorCode::Unavailable,
                format!(
                    "server busy: {} connections at most",
                    shared.config.max_connections
                ),
            ),
        );
        conn.shutdown();
        return;
    }
    if conn.set_timeouts(Some(shared.config.idle_timeout)).is_err() {
        return;
    }
    let Some((conn, first)) = transport(conn, &shared) else {
        return;
    };
    let Ok(writer) = conn.try_clone() else {
        return;
    };
    // Replies leave from their own thread, so that the next batch is read and queued while
    // earlier ones are applied: a client may keep a window of batches unacknowledged.
    let (outgoing, replies) = crossbeam_channel::bounded::<Outgoing>(ACK_WINDOW);
    let replier = std::thread::Builder::new()
        .name("headstart-replies".into())
        .spawn(move || write_replies(writer, replies));
    let Ok(replier) = replier else {
        conn.shutdown();
        return;
    };
    let mut reader = BufReader::with_capacity(1 << 16, conn);
    read_requests(&mut reader, first, &shared, &outgoing);
    drop(outgoing);
    let _ = replier.join();
    reader.get_ref().shutdown();
}

/// Reads the connection's first byte and sets up its transport: TLS when the server has a
/// certificate and the byte starts a TLS handshake, plaintext when it has none and the byte
/// starts a frame (the byte is returned, to be read again). A client of the other kind gets
/// a plaintext ERROR frame that says so, and the connection closes.
fn transport(mut conn: Conn, shared: &Shared) -> Option<(Conn, Option<u8>)> {
    let verbose = shared.config.verbose;
    let mut first = [0u8; 1];
    loop {
        match conn.read(&mut first) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    let message = format!("idle for more than {:?}: closing", shared.config.idle_timeout);
                    if verbose {
                        eprintln!("headstart serve: closing a connection: {message}");
                    }
                    let _ = send(&mut conn, &fatal(ErrorCode::IdleTimeout, message));
                    conn.shutdown();
                }
                return None;
            }
        }
    }
    let refuse = |conn: &mut Conn, message: &str| {
        if verbose {
            eprintln!("headstart serve: closing a connection: {message}");
        }
        let _ = send(conn, &fatal(ErrorCode::Transport, message.to_string()));
        conn.shutdown();
        None
    };
    match (&shared.config.tls, first[0] == TLS_HANDSHAKE_BYTE) {
        (Some(config), true) => match TlsStream::accept(Arc::clone(config), conn, &first) {
            Ok(stream) => Some((Conn::Tls(Box::new(stream)), None)),
            Err(e) => {
                if verbose {
                    eprintln!(
                        "headstart serve: closing a connection: TLS handshake failed: {}",
                        e.error
                    );
                }
                None
            }
        },
        (Some(_), false) => refuse(
            &mut conn,
            "this server accepts TLS connections only: connect with the CA certificate that signed its certificate (--tls-ca CA.pem; tls_ca= in Python)",
        ),
        (None, true) => refuse(
            &mut conn,
            "this server does not use TLS (it was started without --tls-cert): connect without --tls-ca",
        ),
        (None, false) => Some((conn, Some(first[0]))),
    }
}

/// Where a connection stands in the handshake (docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet: HELLO must come first.
    Start,
    /// HELLO answered: AUTH must come next.
    Welcomed,
    /// Authenticated with this role.
    Ready(Role),
}

/// Reads requests until the connection ends or a fatal reply is queued. `first` is a byte
/// already read from the stream, to be read again.
fn read_requests(
    reader: &mut BufReader<Conn>,
    mut first: Option<u8>,
    shared: &Shared,
    outgoing: &Sender<Outgoing>,
) {
    let mut session: Option<(usize, Dtype)> = None;
    let mut numbering: Option<Numbering> = None;
    let mut phase = Phase::Start;
    let limits = shared.config.limits;
    let refuse = |code: ErrorCode, message: String| {
        if shared.config.verbose {
            eprintln!("headstart serve: closing a connection: {message}");
        }
        let _ = outgoing.send(Outgoing::Now(fatal(code, message)));
    };
    loop {
        let read = match first.take() {
            Some(byte) => read_frame(&mut (&[byte][..]).chain(&mut *reader), limits.max_frame_bytes),
            None => read_frame(reader, limits.max_frame_bytes),
        };
        let raw = match read {
            Ok(raw) => raw,
            Err(FrameError::Closed) => return,
            Err(e) => {
                let message = match e.code() {
                    ErrorCode::IdleTimeout => {
                        format!("idle for more than {:?}: closing", shared.config.idle_timeout)
                    }
                    _ => e.to_string(),
                };
                return refuse(e.code(), message);
            }
        };
        if let Err((code, message)) = admit(phase, raw.kind) {
            return refuse(code, message);
        }
        let request = match Request::decode(raw.kind, &raw.body, session.map(|(d, t)| (d, t, limits))) {
            Ok(r) => r,
            Err(e) => {
                let code = match &e {
                    FrameError::Malformed { reason, .. } if reason.contains("before OPEN") => {
                        ErrorCode::Session
                    }
                    other => other.code(),
                };
                return refuse(code, e.to_string());
            }
        };
        let next = match request {
            Request::Hello { .. } => {
                phase = Phase::Welcomed;
                Outgoing::Now(Reply::Welcome {
                    version: PROTOCOL_VERSION,
                    token_required: shared.config.tokens.is_some(),
                })
            }
            Request::Auth(secret) => {
                let role = match &shared.config.tokens {
                    None => Role::Admin,
                    Some(tokens) => match tokens.role_of(&secret.0) {
                        Some(role) => role,
                        None if secret.0.is_empty() => {
                            return refuse(
                                ErrorCode::Unauthorized,
                                "this server requires a token: give the client one (--token-file F or HEADSTART_TOKEN)".into(),
                            );
                        }
                        None => return refuse(ErrorCode::Unauthorized, "wrong token".into()),
                    },
                };
                phase = Phase::Ready(role);
                Outgoing::Now(Reply::Ready {
                    role,
                    dim: shared.dim as u64,
                    samples: shared.producer.samples(),
                })
            }
            Request::Open { dim, dtype } => Outgoing::Now(match refuse_open(shared, dim, session) {
                Some(refused) => refused,
                None => {
                    session = Some((shared.dim, dtype));
                    Reply::Opened {
                        samples: shared.producer.samples(),
                    }
                }
            }),
            Request::Resume {
                dim,
                dtype,
                session: id,
            } => Outgoing::Now(if let Some(refused) = refuse_open(shared, dim, session) {
                refused
            } else {
                match shared.producer.open_session(id) {
                    Ok(opened) => {
                        session = Some((shared.dim, dtype));
                        numbering = Some(Numbering {
                            session: id,
                            next: None,
                            opened_at: opened.last,
                        });
                        Reply::Resumed {
                            samples: shared.producer.samples(),
                            known: opened.known,
                            last: opened.last,
                            evicted: opened.evicted,
                        }
                    }
                    Err(e) => fatal(ErrorCode::Unavailable, format!("the reducer stopped: {e}")),
                }
            }),
            // `Request::decode` checked the shape; `send` checks the values in the same pass
            // that lays the batch out, and a bad one closes the connection as before.
            Request::Batch { seq, batch } => match numbering.as_mut() {
                None => queue(shared, Reply::Ack(seq), |p| p.send(Arc::new(batch))),
                Some(numbering) => match numbering.check(seq) {
                    Ok(()) => queue(shared, Reply::Ack(seq), |p| {
                        p.send_tagged(Arc::new(batch), numbering.session, seq)
                    }),
                    Err(message) => return refuse(ErrorCode::Session, message),
                },
            },
            Request::BeginTask => queue(shared, Reply::TaskBegun, Producer::begin_task),
            // The snapshots behind these include every batch queued above on this
            // connection (the reducer's queue is FIFO), acknowledged yet or not.
            Request::Solve(json) => Outgoing::Now(solve(shared, &json)),
            Request::Sync => Outgoing::Now(match shared.checkpoint() {
                Ok(samples) => Reply::Synced(samples),
                Err(e) => Reply::Error {
                    code: ErrorCode::Durability,
                    fatal: false,
                    message: format!("checkpoint failed: {e}"),
                },
            }),
            Request::Stats => Outgoing::Now(stats(shared)),
        };
        let close = matches!(next, Outgoing::Now(Reply::Error { fatal: true, .. }));
        if outgoing.send(next).is_err() || close {
            return;
        }
    }
}

/// The fatal reply to an OPEN or RESUME of another dimension, or a second one on a
/// connection; none if the session may open.
fn refuse_open(shared: &Shared, dim: u64, session: Option<(usize, Dtype)>) -> Option<Reply> {
    if dim != shared.dim as u64 {
        Some(fatal(
            ErrorCode::Session,
            format!(
                "the server's state has dimension {}, the client sends {dim}",
                shared.dim
            ),
        ))
    } else if session.is_some() {
        Some(fatal(
            ErrorCode::Session,
            "a second OPEN on one connection".into(),
        ))
    } else {
        None
    }
}

/// The batch numbers of a resumed session on one connection: they run on by one from the
/// first, which may repeat batches the ledger holds but may not skip one.
struct Numbering {
    session: u64,
    /// The number the next batch must carry (none before the first batch).
    next: Option<u64>,
    /// The session's last applied batch when the connection opened it.
    opened_at: u64,
}

impl Numbering {
    fn check(&mut self, seq: u64) -> Result<(), String> {
        let ok = match self.next {
            Some(next) => seq == next,
            None => (1..=self.opened_at.saturating_add(1)).contains(&seq),
        };
        if !ok {
            return Err(match self.next {
                Some(next) => format!(
                    "batch {seq} of session {:016x}: the batches of a session are numbered one after another, and {next} comes next on this connection",
                    self.session
                ),
                None => format!(
                    "batch {seq} of session {:016x}: the server holds its batches up to {}, so a resumed session starts at {} or earlier",
                    self.session,
                    self.opened_at,
                    self.opened_at.saturating_add(1)
                ),
            });
        }
        self.next = Some(seq + 1);
        Ok(())
    }
}

/// Whether a connection in `phase` may make `request`: HELLO first, then AUTH, then what the
/// role allows (push: OPEN, RESUME, BATCH and SYNC; admin: everything). The error closes the connection.
///
/// Checked on the frame's kind, before its body is decoded. A kind that is no request passes:
/// decoding refuses it.
fn admit(phase: Phase, frame_kind: u8) -> Result<(), (ErrorCode, String)> {
    let name = match frame_kind {
        kind::HELLO => "HELLO",
        kind::AUTH => "AUTH",
        kind::OPEN => "OPEN",
        kind::RESUME => "RESUME",
        kind::BATCH => "BATCH",
        kind::BEGIN_TASK => "BEGIN_TASK",
        kind::SOLVE => "SOLVE",
        kind::SYNC => "SYNC",
        kind::STATS => "STATS",
        _ => return Ok(()),
    };
    let session = |m: String| Err((ErrorCode::Session, m));
    match (phase, frame_kind) {
        (Phase::Start, kind::HELLO) | (Phase::Welcomed, kind::AUTH) => Ok(()),
        (Phase::Start, _) => session(format!(
            "the first frame must be HELLO (protocol version {PROTOCOL_VERSION} begins every connection with HELLO and AUTH), not {name}: is the client older than the server?"
        )),
        (Phase::Welcomed, _) => session(format!("AUTH must follow HELLO, not {name}")),
        (Phase::Ready(_), kind::HELLO | kind::AUTH) => session(format!("a second {name} on one connection")),
        (Phase::Ready(_), kind::OPEN | kind::RESUME | kind::BATCH | kind::SYNC)
        | (Phase::Ready(Role::Admin), _) => Ok(()),
        (Phase::Ready(role), _) => Err((
            ErrorCode::Forbidden,
            format!(
                "this connection's token has the role `{role}`, which may only send batches and sync them; {name} needs an `admin` token"
            ),
        )),
    }
}

/// Writes replies in request order, each acknowledgement once its batch is applied. Stops at
/// a fatal reply or a failed write, closing the connection so that the reader stops too.
fn write_replies(mut writer: Conn, replies: Receiver<Outgoing>) {
    for next in replies.iter() {
        let reply = match next {
            Outgoing::Applied { applied, reply } => match applied.wait() {
                Ok(()) => reply,
                Err(e) => fatal(ErrorCode::Unavailable, format!("the reducer stopped: {e}")),
            },
            Outgoing::Now(reply) => reply,
        };
        let close = matches!(reply, Reply::Error { fatal: true, .. });
        if send(&mut writer, &reply).is_err() || close {
            writer.shutdown();
            return;
        }
    }
}

fn fatal(code: ErrorCode, message: String) -> Reply {
    Reply::Error {
        code,
        fatal: true,
        message,
    }
}

fn send(writer: &mut Conn, reply: &Reply) -> std::io::Result<()> {
    let (kind, body) = reply.encode();
    write_frame(writer, kind, &body)
}

/// Queues a batch or boundary and a marker behind it, under the read side of the drain
/// gate: shutdown takes the write side before its final snapshot, so every message queued
/// here precedes that snapshot in the reducer's FIFO, and every acknowledgement sent later
/// is covered by the final checkpoint.
fn queue(
    shared: &Shared,
    reply: Reply,
    apply: impl FnOnce(&Producer) -> Result<(), PipelineError>,
) -> Outgoing {
    let draining = shared.draining.read().unwrap_or_else(|p| p.into_inner());
    if *draining {
        return Outgoing::Now(fatal(
            ErrorCode::Unavailable,
            "the server is shutting down".into(),
        ));
    }
    match apply(&shared.producer).and_then(|()| shared.producer.mark()) {
        Ok(applied) => Outgoing::Applied { applied, reply },
        // Refused before it was queued: the state is untouched; the connection closes.
        Err(PipelineError::Batch(e)) => {
            Outgoing::Now(fatal(ErrorCode::BadBatch, format!("batch refused: {e}")))
        }
        Err(e) => Outgoing::Now(fatal(ErrorCode::Unavailable, format!("the reducer stopped: {e}"))),
    }
}

fn solve(shared: &Shared, json: &str) -> Reply {
    let failed = |message: String| Reply::Error {
        code: ErrorCode::Solve,
        fatal: false,
        message,
    };
    // An empty body means every default, like `{}`.
    let json = if json.trim().is_empty() { "{}" } else { json };
    let request: SolveRequest = match serde_json::from_str(json) {
        Ok(r) => r,
        Err(e) => return failed(format!("solve options: {e}")),
    };
    let opts = match request.options() {
        Ok(o) => o,
        Err(e) => return failed(format!("solve options: {e}")),
    };
    let state = match shared.producer.snapshot() {
        Ok(s) => s,
        Err(e) => return fatal(ErrorCode::Unavailable, format!("the reducer stopped: {e}")),
    };
    match shared.solver.solve(&state, &opts) {
        Ok(head) => {
            let mut extra = BTreeMap::new();
            extra.insert(
                "source".to_string(),
                format!("headstart serve ({})", shared.config.state_path.display()),
            );
            Reply::Head(crate::export::to_safetensors(&head, &request.prefix, &extra))
        }
        Err(e) => failed(e.to_string()),
    }
}

fn stats(shared: &Shared) -> Reply {
    match shared.producer.snapshot() {
        Ok(state) => {
            let classes: serde_json::Map<String, serde_json::Value> = state
                .classes()
                .into_iter()
                .map(|id| (id.to_string(), state.class_count(id).into()))
                .collect();
            let summary = serde_json::json!({
                "dim": state.dim(),
                "input_dim": state.input_dim(),
                "expansion": state.expansion(),
                "samples": state.samples(),
                "task_samples": state.task_samples(),
                "tasks_begun": state.tasks_begun(),
                "classes": classes,
                "task_classes": state.task_classes(),
                "connections": shared.connections.load(Ordering::SeqCst),
                "resent_skipped": shared.producer.duplicates(),
                "state_file": shared.config.state_path.display().to_string(),
            });
            Reply::Stats(summary.to_string())
        }
        Err(e) => fatal(ErrorCode::Unavailable, format!("the reducer stopped: {e}")),
    }
}
