//! `headstart serve`: one state, many clients, checkpoints on disk.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SolveRequest;
use super::conn::{Address, Conn};
use super::protocol::{
    Dtype, ErrorCode, FrameError, Limits, PROTOCOL_VERSION, Reply, Request, read_frame, write_frame,
};
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
    /// Connections served at once; more get an error frame and are closed.
    pub max_connections: usize,
    /// Capacity of the channel into the reducer (batches).
    pub channel_capacity: usize,
    /// Print connection errors and checkpoints on stderr.
    pub verbose: bool,
}

impl ServerConfig {
    /// Defaults: 64 MiB frames, 65,536 rows, 60 s idle timeout, no periodic checkpoint,
    /// 64 connections, a channel of 8 batches, quiet.
    pub fn new(state_path: PathBuf) -> Self {
        ServerConfig {
            state_path,
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(60),
            checkpoint_every: None,
            max_connections: 64,
            channel_capacity: 8,
            verbose: false,
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

struct Shared {
    producer: Producer,
    dim: usize,
    config: ServerConfig,
    /// Held for reading while a batch or task boundary is sent and acknowledged; shutdown
    /// takes it for writing, so that every acknowledged batch precedes the final checkpoint.
    draining: RwLock<bool>,
    /// Serialises checkpoints (a later snapshot is never overwritten by an earlier one) and
    /// remembers the version last written.
    checkpoint: Mutex<Option<u64>>,
    stop: AtomicBool,
    connections: AtomicUsize,
    acknowledged: AtomicU64,
    solver: Solver,
}

impl Shared {
    /// Writes the state if it changed since the last checkpoint; returns its sample count.
    fn checkpoint(&self) -> Result<u64, ServerError> {
        let mut last = self.checkpoint.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.producer.snapshot()?;
        if *last != Some(state.version()) {
            let started = Instant::now();
            snapshot::write(&self.config.state_path, &state)?;
            *last = Some(state.version());
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

        let dim = initial.dim();
        let samples = initial.samples();
        let (producer, reducer) = pipeline::spawn(initial, config.channel_capacity);
        let shared = Arc::new(Shared {
            producer,
            dim,
            config,
            draining: RwLock::new(false),
            checkpoint: Mutex::new(None),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            acknowledged: AtomicU64::new(samples),
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
        let checkpointer = shared.config.checkpoint_every.map(|every| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("headstart-checkpoint".into())
                .spawn(move || checkpoint_loop(every, shared))
                .expect("spawning the checkpoint thread")
        });
        Ok(Server {
            shared,
            address: bound,
            accept: Some(accept),
            checkpointer,
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

fn checkpoint_loop(every: Duration, shared: Arc<Shared>) {
    // A period beyond what an `Instant` can reach means no periodic checkpoint.
    let after = |t: Instant| t.checked_add(every);
    let mut next = after(Instant::now());
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(every));
        if next.is_some_and(|n| Instant::now() >= n) {
            if let Err(e) = shared.checkpoint() {
                eprintln!("headstart serve: periodic checkpoint failed: {e}");
            }
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
    Applied {
        applied: Applied,
        rows: u64,
        reply: Reply,
    },
    /// Sent as it is; a fatal error closes the connection.
    Now(Reply),
}

fn serve_connection(conn: Conn, shared: Arc<Shared>) {
    let _slot = Slot(&shared.connections);
    let open = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if open > shared.config.max_connections {
        let _ = send(
            &mut writer,
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
    // Replies leave from their own thread, so that the next batch is read and queued while
    // earlier ones are applied: a client may keep a window of batches unacknowledged.
    let (outgoing, replies) = crossbeam_channel::bounded::<Outgoing>(ACK_WINDOW);
    let replier = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("headstart-replies".into())
            .spawn(move || write_replies(writer, replies, &shared))
    };
    let Ok(replier) = replier else {
        conn.shutdown();
        return;
    };
    let mut reader = BufReader::with_capacity(1 << 16, conn);
    read_requests(&mut reader, &shared, &outgoing);
    drop(outgoing);
    let _ = replier.join();
    reader.get_ref().shutdown();
}

/// Reads requests until the connection ends or a fatal reply is queued.
fn read_requests(reader: &mut BufReader<Conn>, shared: &Shared, outgoing: &Sender<Outgoing>) {
    let mut session: Option<(usize, Dtype)> = None;
    let limits = shared.config.limits;
    let refuse = |code: ErrorCode, message: String| {
        if shared.config.verbose {
            eprintln!("headstart serve: closing a connection: {message}");
        }
        let _ = outgoing.send(Outgoing::Now(fatal(code, message)));
    };
    loop {
        let raw = match read_frame(reader, limits.max_frame_bytes) {
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
        let request = match Request::decode(raw.kind, &raw.body, session.map(|(d, t)| (d, t, limits))) {
            Ok(r) => r,
            Err(e) => {
                let code = match &e {
                    FrameError::Malformed { reason, .. } if reason.contains("before HELLO") => {
                        ErrorCode::Session
                    }
                    other => other.code(),
                };
                return refuse(code, e.to_string());
            }
        };
        let next = match request {
            Request::Hello { version, dim, dtype } => Outgoing::Now(if version != PROTOCOL_VERSION {
                fatal(
                    ErrorCode::Session,
                    format!("protocol version {version}; this server speaks {PROTOCOL_VERSION}"),
                )
            } else if dim != shared.dim as u64 {
                fatal(
                    ErrorCode::Session,
                    format!(
                        "the server's state has dimension {}, the client sends {dim}",
                        shared.dim
                    ),
                )
            } else if session.is_some() {
                fatal(ErrorCode::Session, "a second HELLO on one connection".into())
            } else {
                session = Some((shared.dim, dtype));
                Reply::Welcome {
                    version: PROTOCOL_VERSION,
                    dim: shared.dim as u64,
                    samples: shared.acknowledged.load(Ordering::SeqCst),
                }
            }),
            // `Request::decode` validated the batch against the session's dimension.
            Request::Batch { seq, batch } => {
                let rows = batch.rows() as u64;
                queue(shared, rows, Reply::Ack(seq), |p| p.send_valid(&batch))
            }
            Request::BeginTask => queue(shared, 0, Reply::TaskBegun, Producer::begin_task),
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

/// Writes replies in request order, each acknowledgement once its batch is applied. Stops at
/// a fatal reply or a failed write, closing the connection so that the reader stops too.
fn write_replies(mut writer: Conn, replies: Receiver<Outgoing>, shared: &Shared) {
    for next in replies.iter() {
        let reply = match next {
            Outgoing::Applied { applied, rows, reply } => match applied.wait() {
                Ok(()) => {
                    shared.acknowledged.fetch_add(rows, Ordering::SeqCst);
                    reply
                }
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
    rows: u64,
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
        Ok(applied) => Outgoing::Applied { applied, rows, reply },
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
                "samples": state.samples(),
                "task_samples": state.task_samples(),
                "tasks_begun": state.tasks_begun(),
                "classes": classes,
                "task_classes": state.task_classes(),
                "connections": shared.connections.load(Ordering::SeqCst),
                "state_file": shared.config.state_path.display().to_string(),
            });
            Reply::Stats(summary.to_string())
        }
        Err(e) => fatal(ErrorCode::Unavailable, format!("the reducer stopped: {e}")),
    }
}
