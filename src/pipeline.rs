//! Producers → bounded channel → reducer thread.
//!
//! [`spawn`] starts a reducer thread that owns a [`Stats`] and returns a cloneable
//! [`Producer`] handle (`Send + Sync`) and a [`Reducer`] handle.
//!
//! # Semantics
//! - Every message travels through one bounded FIFO channel, so a full channel blocks
//!   [`Producer::send`] (backpressure); nothing is ever queued without bound.
//! - [`Producer::send`] validates the batch on the calling thread (a bad batch is refused
//!   there, naming its row and column, and never reaches the state), lays it out for the
//!   product there too (class sums, column-major chunks: the O(B·d) work), and returns once
//!   it is queued. The reducer is left with the O(B·d²) Gram product, so with one producer
//!   per spare core it is the only bottleneck. The state is exactly what
//!   [`Stats::update`] of the same batches gives.
//! - [`Producer::snapshot`] returns a copy of the state that includes **every batch whose
//!   `send` returned before `snapshot` was called**, on any producer: those batches are ahead
//!   of the request in the FIFO queue, and the reducer applies messages in queue order.
//!   Batches sent concurrently with the request may or may not be included, but each is
//!   either wholly in or wholly out. A solve mid-stream is `Solver::solve(&snapshot, …)`.
//! - [`Producer::begin_task`] and [`Producer::retract`] are ordered the same way.
//! - [`Producer::send_tagged`] sends batch `seq` of a client session: the reducer checks the
//!   session's [`Ledger`] in the step that would apply it, and skips a batch it already holds
//!   (the same or a later number of that session). A batch sent again after a lost
//!   acknowledgement is therefore applied at most once, however the sends race.
//! - When every producer handle is dropped, the reducer drains the queue and stops;
//!   [`Reducer::join`] then returns the final state.
//! - If the reducer fails (a retraction of samples it does not hold), it stops applying
//!   messages at once: the failed message changes nothing, messages already queued are
//!   dropped unapplied (a pending snapshot returns the error), later calls on any producer
//!   return [`PipelineError::ReducerFailed`], and [`Reducer::join`] returns the error once
//!   every producer is dropped.
//!
//! # Examples
//! ```
//! use headstart::{pipeline, stats::{Batch, Stats}};
//! let (producer, reducer) = pipeline::spawn(Stats::new(2), 4);
//! let workers: Vec<_> = (0..3).map(|k| {
//!     let p = producer.clone();
//!     std::thread::spawn(move || p.send(Batch::new(vec![k as f32, 1.0], vec![k])))
//! }).collect();
//! for w in workers { w.join().unwrap()?; }
//! assert_eq!(producer.snapshot()?.samples(), 3);
//! drop(producer);
//! let stats = reducer.join()?;
//! assert_eq!(stats.classes(), vec![0, 1, 2]);
//! # Ok::<(), headstart::pipeline::PipelineError>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::expand::RandomFeatures;
use crate::ledger::{Ledger, Opened};
use crate::stats::{Batch, BatchError, Features, Precision, Prepared, RetractError, Stats};

/// Why a pipeline call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The batch was refused before it was queued; the state is untouched.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The reducer stopped on an error; nothing after the failing message was applied.
    #[error("reducer stopped: {0}")]
    ReducerFailed(#[source] ReducerError),
    /// The reducer thread panicked.
    #[error("reducer thread panicked: {0}")]
    ReducerPanicked(String),
}

/// An error raised inside the reducer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReducerError {
    /// A retraction was refused.
    #[error("retract refused: {0}")]
    Retract(#[from] RetractError),
    /// A producer stopped (its thread panicked) halfway through sending an expanded batch.
    /// The reducer stops rather than keep a state holding part of a batch.
    #[error(
        "a producer stopped after sending {applied} of the {rows} rows of an expanded batch; the state is discarded rather than kept with part of a batch"
    )]
    IncompleteBatch {
        /// Rows of the batch already accumulated.
        applied: usize,
        /// Rows in the batch.
        rows: usize,
    },
}

/// One piece of an expanded batch, sent by its producer as it computes them.
enum Chunk {
    Part(Box<Prepared>),
    End,
}

/// A batch's client session and number, for [`Ledger::admit`].
#[derive(Clone, Copy)]
struct Tag {
    session: u64,
    seq: u64,
}

enum Message {
    /// A laid-out batch and the batch itself (whose rows the product reads in exact precision).
    Update(Box<Prepared>, Arc<Batch>, Option<Tag>),
    /// An expanded batch of `rows` rows, arriving chunk by chunk on its own channel (the
    /// expanded rows are never held whole). The reducer takes all of it before the next
    /// message, so each batch is wholly in a snapshot or wholly out.
    Expanded {
        rows: usize,
        chunks: Receiver<Chunk>,
        tag: Option<Tag>,
    },
    Retract(Arc<Batch>),
    BeginTask,
    Open(u64, Sender<Opened>),
    Snapshot(Sender<(Stats, Ledger)>),
    Barrier(Sender<()>),
}

struct Shared {
    /// The raw features' dimension (the expansion's input dimension for an expanded state).
    dim: usize,
    expansion: Option<Arc<RandomFeatures>>,
    precision: Precision,
    failure: OnceLock<ReducerError>,
    /// Samples in the state after the last message the reducer applied.
    samples: AtomicU64,
    /// Tagged batches skipped because the ledger held them already.
    duplicates: AtomicU64,
}

/// A cloneable handle that feeds the reducer. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Producer {
    tx: Sender<Message>,
    shared: Arc<Shared>,
}

/// The reducer thread's handle.
pub struct Reducer {
    handle: JoinHandle<Result<Stats, ReducerError>>,
}

/// Starts a reducer that owns `initial` and a channel holding at most `capacity` messages.
/// With `capacity` 0 each send waits until the reducer takes the batch: a producer then
/// lays out the next batch while the reducer multiplies, and no laid-out batch waits in
/// between (one batch's sums and copies less memory; the bench measured no throughput cost).
pub fn spawn(initial: Stats, capacity: usize) -> (Producer, Reducer) {
    spawn_with_ledger(initial, Ledger::new(), capacity)
}

/// As [`spawn`], with the session ledger `ledger` (read from a state file with
/// [`snapshot::read_with_ledger`](crate::snapshot::read_with_ledger)).
///
/// # Examples
/// ```
/// use headstart::{ledger::Ledger, pipeline, stats::{Batch, Stats}};
/// let (producer, reducer) = pipeline::spawn_with_ledger(Stats::new(1), Ledger::new(), 4);
/// let opened = producer.open_session(99)?;
/// assert_eq!((opened.known, opened.last), (false, 0));
/// let batch = std::sync::Arc::new(Batch::new(vec![1.0f32], vec![0]));
/// producer.send_tagged(batch.clone(), 99, 1)?;
/// producer.send_tagged(batch, 99, 1)?; // sent again: skipped
/// let (stats, ledger) = producer.snapshot_with_ledger()?;
/// assert_eq!((stats.samples(), ledger.last(99)), (1, Some(1)));
/// assert_eq!(producer.duplicates(), 1);
/// # drop(producer); reducer.join()?;
/// # Ok::<(), headstart::pipeline::PipelineError>(())
/// ```
pub fn spawn_with_ledger(initial: Stats, ledger: Ledger, capacity: usize) -> (Producer, Reducer) {
    let (tx, rx) = bounded(capacity);
    let shared = Arc::new(Shared {
        dim: initial.input_dim(),
        expansion: initial.random_features().cloned(),
        precision: initial.precision(),
        failure: OnceLock::new(),
        samples: AtomicU64::new(initial.samples()),
        duplicates: AtomicU64::new(0),
    });
    let reducer_shared = Arc::clone(&shared);
    let handle = std::thread::Builder::new()
        .name("headstart-reducer".into())
        .spawn(move || reduce(initial, ledger, rx, &reducer_shared))
        .expect("spawning the reducer thread");
    (Producer { tx, shared }, Reducer { handle })
}

fn reduce(
    mut stats: Stats,
    mut ledger: Ledger,
    rx: Receiver<Message>,
    shared: &Shared,
) -> Result<Stats, ReducerError> {
    // Whether a batch is new (and now recorded as applied), or one the ledger holds already.
    let fresh = |ledger: &mut Ledger, tag: Option<Tag>| {
        let fresh = tag.is_none_or(|t| ledger.admit(t.session, t.seq));
        if !fresh {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    };
    for message in rx.iter() {
        let outcome = match message {
            Message::Update(prepared, batch, tag) => {
                // `send` validated and laid it out on the producer's thread.
                if fresh(&mut ledger, tag) {
                    match &batch.features {
                        Features::F32(v) => stats.apply(&prepared, v),
                        Features::F64(v) => stats.apply(&prepared, v),
                    }
                }
                Ok(())
            }
            Message::Expanded { rows, chunks, tag } => {
                let apply = fresh(&mut ledger, tag);
                let mut applied = 0;
                loop {
                    match chunks.recv() {
                        Ok(Chunk::Part(prepared)) => {
                            applied += prepared.rows();
                            if apply {
                                stats.apply_part(&prepared);
                            }
                        }
                        Ok(Chunk::End) => {
                            // An empty batch has no parts to finish (it only moves the ledger).
                            if apply && applied > 0 {
                                stats.finish_parts();
                            }
                            break Ok(());
                        }
                        Err(_) => break Err(ReducerError::IncompleteBatch { applied, rows }),
                    }
                }
            }
            Message::Retract(batch) => stats.retract_batch(&batch).map_err(ReducerError::from),
            Message::BeginTask => {
                stats.begin_task();
                Ok(())
            }
            Message::Open(session, reply) => {
                let _ = reply.send(ledger.open(session));
                Ok(())
            }
            Message::Snapshot(reply) => {
                // The requester may have given up; that is not the reducer's error.
                let _ = reply.send((stats.clone(), ledger.clone()));
                Ok(())
            }
            Message::Barrier(reply) => {
                let _ = reply.send(());
                Ok(())
            }
        };
        shared.samples.store(stats.samples(), Ordering::SeqCst);
        if let Err(e) = outcome {
            let _ = shared.failure.set(e.clone());
            // Keep taking messages until every producer is gone, dropping them unapplied.
            // A queued snapshot's reply sender is dropped here, so its caller wakes with the
            // error; dropping `rx` instead would leave queued messages in the channel's
            // buffer (crossbeam drops them only with the last sender) and hang that caller.
            for _ in rx.iter() {}
            return Err(e);
        }
    }
    Ok(stats)
}

impl Producer {
    /// The feature dimension the reducer expects (for an expanded state, the raw features'
    /// dimension: batches are expanded on the producer's thread).
    pub fn dim(&self) -> usize {
        self.shared.dim
    }

    /// Messages queued and not yet taken by the reducer (at most the channel's capacity).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Validates `batch` here and queues it; blocks while the channel is full.
    ///
    /// Takes a [`Batch`] or an `Arc<Batch>`: a shared batch travels without being copied,
    /// so one batch can feed several pipelines or be sent again.
    ///
    /// # Errors
    /// [`PipelineError::Batch`] for a malformed batch (nothing queued);
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    pub fn send(&self, batch: impl Into<Arc<Batch>>) -> Result<(), PipelineError> {
        self.send_with(batch.into(), None)
    }

    /// Sends batch `seq` of client session `session` (a non-zero id): as [`send`](Producer::send),
    /// but the reducer skips it if the session's ledger holds `seq` or a later number already
    /// ([`duplicates`](Producer::duplicates) counts those).
    ///
    /// # Errors
    /// As [`send`](Producer::send).
    pub fn send_tagged(
        &self,
        batch: impl Into<Arc<Batch>>,
        session: u64,
        seq: u64,
    ) -> Result<(), PipelineError> {
        self.send_with(batch.into(), Some(Tag { session, seq }))
    }

    fn send_with(&self, batch: Arc<Batch>, tag: Option<Tag>) -> Result<(), PipelineError> {
        if let Some(rf) = &self.shared.expansion {
            batch.validate(self.shared.dim)?;
            return match &batch.features {
                Features::F32(v) => self.send_expanded(rf, v, &batch.labels, tag),
                Features::F64(v) => self.send_expanded(rf, v, &batch.labels, tag),
            };
        }
        // A plain state's batch is checked in the one pass that lays it out: the O(B·d)
        // work (class sums, checks, the fast shift) happens here, on the producer's thread;
        // the reducer is left with the O(B·d²) product.
        let prepared = Stats::prepare(&batch, self.shared.dim, self.shared.precision)?;
        self.put(Message::Update(Box::new(prepared), batch, tag))
    }

    /// Registers client session `session` in the ledger if it is new, and reports its last
    /// applied batch number; ordered with the batches as [`snapshot`](Producer::snapshot) is.
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    pub fn open_session(&self, session: u64) -> Result<Opened, PipelineError> {
        let (reply_tx, reply_rx) = bounded(1);
        self.put(Message::Open(session, reply_tx))?;
        reply_rx.recv().map_err(|_| self.stopped())
    }

    /// Samples in the state after the last message the reducer applied (never blocks).
    pub fn samples(&self) -> u64 {
        self.shared.samples.load(Ordering::SeqCst)
    }

    /// Tagged batches skipped so far because the ledger held them already.
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Checks a batch as [`send`](Producer::send) does, without queueing it.
    ///
    /// # Errors
    /// The batch's [`BatchError`].
    pub fn validate(&self, batch: &Batch) -> Result<(), BatchError> {
        match (&self.shared.expansion, &batch.features) {
            (Some(rf), Features::F32(v)) => rf.validate(v, &batch.labels),
            (Some(rf), Features::F64(v)) => rf.validate(v, &batch.labels),
            (None, _) => batch.validate(self.shared.dim),
        }
    }

    /// Expands a validated batch here, `CHUNK_ROWS` (512) rows at a time, and hands each chunk to the
    /// reducer as soon as it is ready (at most two wait at once).
    fn send_expanded<T: crate::stats::Feature>(
        &self,
        rf: &RandomFeatures,
        features: &[T],
        labels: &[i64],
        tag: Option<Tag>,
    ) -> Result<(), PipelineError> {
        rf.check_magnitudes(features)?;
        // An empty tagged batch still goes to the reducer: the ledger records its number.
        if labels.is_empty() && tag.is_none() {
            return Ok(());
        }
        let (tx, rx) = bounded(2);
        self.put(Message::Expanded {
            rows: labels.len(),
            chunks: rx,
            tag,
        })?;
        let d = rf.spec().input_dim;
        let rows = crate::stats::CHUNK_ROWS;
        // The chunks share the first one's shift, and so one f32 accumulator (fast precision).
        let mut shift: Option<Vec<f64>> = None;
        for (chunk, chunk_labels) in features.chunks(rows * d).zip(labels.chunks(rows)) {
            let mut prepared = Box::<Prepared>::default();
            Stats::prepare_expanded(
                rf,
                chunk,
                chunk_labels,
                self.shared.precision,
                faer::Par::Seq,
                &mut shift,
                &mut prepared,
            );
            tx.send(Chunk::Part(prepared)).map_err(|_| self.stopped())?;
        }
        tx.send(Chunk::End).map_err(|_| self.stopped())
    }

    /// Queues the retraction of a batch sent earlier in the current task.
    ///
    /// # Errors
    /// [`PipelineError::Batch`] for a malformed batch. A retraction the reducer refuses
    /// stops the reducer; the error then reaches later calls and [`Reducer::join`].
    pub fn retract(&self, batch: impl Into<Arc<Batch>>) -> Result<(), PipelineError> {
        let batch = batch.into();
        self.validate(&batch)?;
        self.put(Message::Retract(batch))
    }

    /// Queues a task boundary (see [`Stats::begin_task`]).
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    pub fn begin_task(&self) -> Result<(), PipelineError> {
        self.put(Message::BeginTask)
    }

    /// A copy of the state including every batch whose `send` returned before this call.
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    pub fn snapshot(&self) -> Result<Stats, PipelineError> {
        self.snapshot_with_ledger().map(|(stats, _)| stats)
    }

    /// As [`snapshot`](Producer::snapshot), with the session ledger as of the same moment.
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    pub fn snapshot_with_ledger(&self) -> Result<(Stats, Ledger), PipelineError> {
        let (reply_tx, reply_rx) = bounded(1);
        self.put(Message::Snapshot(reply_tx))?;
        reply_rx.recv().map_err(|_| self.stopped())
    }

    /// Returns once every message queued before this call, on any producer, is applied: a
    /// batch whose `send` returned before `barrier` is then part of the state (a server
    /// acknowledges a batch this way). Cheaper than [`snapshot`](Producer::snapshot): no copy.
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    ///
    /// # Examples
    /// ```
    /// use headstart::{pipeline, stats::{Batch, Stats}};
    /// let (producer, reducer) = pipeline::spawn(Stats::new(1), 4);
    /// producer.send(Batch::new(vec![2.0f32], vec![0]))?;
    /// producer.barrier()?; // the batch is applied now
    /// drop(producer);
    /// assert_eq!(reducer.join()?.samples(), 1);
    /// # Ok::<(), headstart::pipeline::PipelineError>(())
    /// ```
    pub fn barrier(&self) -> Result<(), PipelineError> {
        self.mark()?.wait()
    }

    /// Queues a marker and returns at once; [`Applied::wait`] then returns once every message
    /// queued before the marker, on any producer, is applied. A server reads the next batch
    /// while the previous ones are being applied, and acknowledges each when its marker
    /// resolves.
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer has stopped.
    ///
    /// # Examples
    /// ```
    /// use headstart::{pipeline, stats::{Batch, Stats}};
    /// let (producer, reducer) = pipeline::spawn(Stats::new(1), 4);
    /// producer.send(Batch::new(vec![1.0f32], vec![0]))?;
    /// let first = producer.mark()?;
    /// producer.send(Batch::new(vec![2.0f32], vec![0]))?;
    /// first.wait()?; // the first batch is applied; the second may still be queued
    /// drop(producer);
    /// assert_eq!(reducer.join()?.samples(), 2);
    /// # Ok::<(), headstart::pipeline::PipelineError>(())
    /// ```
    pub fn mark(&self) -> Result<Applied, PipelineError> {
        let (reply_tx, reply_rx) = bounded(1);
        self.put(Message::Barrier(reply_tx))?;
        Ok(Applied {
            rx: reply_rx,
            shared: Arc::clone(&self.shared),
        })
    }

    fn put(&self, message: Message) -> Result<(), PipelineError> {
        if self.shared.failure.get().is_some() {
            return Err(self.stopped());
        }
        self.tx.send(message).map_err(|_| self.stopped())
    }

    fn stopped(&self) -> PipelineError {
        self.shared.stopped()
    }
}

impl Shared {
    fn stopped(&self) -> PipelineError {
        match self.failure.get() {
            Some(e) => PipelineError::ReducerFailed(e.clone()),
            None => PipelineError::ReducerPanicked("the reducer exited unexpectedly".into()),
        }
    }
}

/// A marker queued by [`Producer::mark`].
pub struct Applied {
    rx: Receiver<()>,
    shared: Arc<Shared>,
}

impl Applied {
    /// Returns once every message queued before the marker is applied.
    ///
    /// # Errors
    /// [`PipelineError::ReducerFailed`] if the reducer stopped first.
    pub fn wait(self) -> Result<(), PipelineError> {
        self.rx.recv().map_err(|_| self.shared.stopped())
    }

    /// Whether every message queued before the marker is applied already (never blocks).
    pub fn is_applied(&self) -> bool {
        !self.rx.is_empty()
    }
}

impl Reducer {
    /// Waits until every [`Producer`] is dropped and the queue is drained, then returns the
    /// final state.
    ///
    /// # Errors
    /// The reducer's error, or [`PipelineError::ReducerPanicked`].
    pub fn join(self) -> Result<Stats, PipelineError> {
        match self.handle.join() {
            Ok(result) => result.map_err(PipelineError::ReducerFailed),
            Err(panic) => Err(PipelineError::ReducerPanicked(crate::panic::message(
                &*panic,
                "unknown panic",
            ))),
        }
    }
}
