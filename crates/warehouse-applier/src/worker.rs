//! One task per assigned partition: collect a batch, apply it, dead-letter what cannot be
//! applied, then report the offset as durable.
//!
//! # A batch is applied as soon as it can be
//!
//! The partitions share `applier.max_concurrent_transactions` PostgreSQL connections, handed out
//! by a fair semaphore ([`WorkerShared::slots`]). A worker waits for its batch's first message,
//! lingers `applier.batch_max_ms` for more (0, the default, skips this), then waits for a
//! transaction slot; all the while the consumer thread keeps filling its channel. Once it holds
//! a slot it takes everything already queued, up to `applier.batch_max_events`, and applies that.
//! So at a moderate rate a batch is exactly what arrived while the previous transactions ran
//! (no fixed window is waited out: latency is about one transaction), and under a backlog the
//! channel always holds a full batch, so batches stay at `batch_max_events` and throughput is
//! that of full batches. Messages are decoded as they arrive, while the worker waits, so the
//! slot is held only for the SQL.
//!
//! # Offsets move only after the effect is durable
//!
//! The worker reports `Durable { offset }` (the last offset of the batch) only after the
//! PostgreSQL transaction committed *and* every dead-letter message of the batch was acknowledged
//! by Kafka. The consumer thread then stores it (`enable.auto.offset.store=false`) and it is
//! committed by the next auto-commit, on revoke, or on shutdown. A crash anywhere before that
//! re-delivers the batch, which the processed-message table and the version guard absorb.
//!
//! Transient PostgreSQL failures retry the same batch with exponential backoff; the worker stops
//! reading its channel meanwhile, the channel fills, and the consumer thread pauses the partition,
//! so memory stays bounded and the consumer stays in its group. A stop request (revoke or
//! shutdown) lets a running transaction finish but starts no new one and abandons backoff (and
//! a batch still being collected or waiting for a slot is dropped unapplied: its offsets were
//! never stored, so the next owner reads it again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_event::Op;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::dead_letter::DeadLetters;
use crate::decode::{decode, Decoded, Message, Prepared, SchemaCache};
use crate::error::{ApplierError, ApplyError};
use crate::metrics;

/// What a worker tells the consumer thread.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Everything up to and including `offset` is durably applied (or dead-lettered).
    Durable {
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: i32,
        /// Last offset of the batch.
        offset: i64,
    },
    /// The worker has stopped.
    Exited {
        /// Topic.
        topic: Arc<str>,
        /// Partition.
        partition: i32,
    },
    /// A definite failure: the applier must stop.
    Fatal(ApplierError),
}

/// Settings and shared parts of every worker.
pub struct WorkerShared {
    /// The PostgreSQL side.
    pub applier: Applier,
    /// The dead-letter producer.
    pub dead_letters: DeadLetters,
    /// Batch bound in events.
    pub batch_max_events: usize,
    /// Batch bound while every event of the batch is a snapshot row (`op = "r"`).
    pub snapshot_batch_max_events: usize,
    /// How long a batch lingers for more events after its first one before it competes for a
    /// transaction slot (zero: not at all).
    pub batch_linger: Duration,
    /// Transaction slots, `applier.max_concurrent_transactions` of them (the pool's size): a
    /// worker holds one from the moment it stops collecting until its transaction has ended, so
    /// it never waits for a connection with a closed batch while more events queue up behind it.
    pub slots: Arc<Semaphore>,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

/// A batch being collected: the messages in offset order, each decoded when it arrived.
struct Batch {
    messages: Vec<Message>,
    /// Decoded events, in offset order.
    prepared: Vec<Prepared>,
    /// Index into `messages` of each prepared event.
    origin: Vec<usize>,
    /// Messages that cannot be applied: index into `messages`, error kind and reason.
    dead: Vec<(usize, &'static str, String)>,
    max: usize,
    /// The bound while `only_snapshot`.
    snapshot_max: usize,
    /// Every message so far is a snapshot row: a snapshot burst is applied in bigger batches
    /// (fewer transactions and staging tables per row); the first other event brings the bound
    /// back to `max` (the batch then ends at once if it is already beyond it).
    only_snapshot: bool,
}

impl Batch {
    fn new(max: usize, snapshot_max: usize) -> Self {
        Batch {
            messages: Vec::with_capacity(max),
            prepared: Vec::with_capacity(max),
            origin: Vec::with_capacity(max),
            dead: Vec::new(),
            max,
            snapshot_max: snapshot_max.max(max),
            only_snapshot: true,
        }
    }

    fn is_full(&self) -> bool {
        let bound = if self.only_snapshot {
            self.snapshot_max
        } else {
            self.max
        };
        self.messages.len() >= bound
    }

    fn push(&mut self, cache: &mut SchemaCache, m: Message) {
        let i = self.messages.len();
        match decode(cache, m.offset, m.payload.as_deref()) {
            Decoded::Event(p) => {
                self.only_snapshot &= p.op == Op::Read;
                self.prepared.push(p);
                self.origin.push(i);
            }
            Decoded::Tombstone => self.only_snapshot = false,
            Decoded::Poison(reason) => {
                self.only_snapshot = false;
                self.dead.push((i, "decode", reason))
            }
        }
        self.messages.push(m);
    }

    /// Takes what is already queued, up to the bound. Returns false when the channel is closed.
    fn drain(&mut self, cache: &mut SchemaCache, rx: &mut mpsc::Receiver<Message>) -> bool {
        while !self.is_full() {
            match rx.try_recv() {
                Ok(m) => self.push(cache, m),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.prepared.clear();
        self.origin.clear();
        self.dead.clear();
        self.only_snapshot = true;
    }
}

/// Runs the worker of `topic`/`partition` until `stop` is cancelled or its channel closes.
pub async fn run_worker(
    shared: Arc<WorkerShared>,
    topic: Arc<str>,
    partition: i32,
    mut rx: mpsc::Receiver<Message>,
    stop: CancellationToken,
    events: std::sync::mpsc::Sender<WorkerEvent>,
) {
    let mut cache = SchemaCache::default();
    let mut batch = Batch::new(shared.batch_max_events, shared.snapshot_batch_max_events);
    'outer: loop {
        // Collect: wait for a first message.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = rx.recv() => m,
        };
        let Some(first) = first else { break };
        batch.push(&mut cache, first);
        let mut open = true;

        // Linger, if configured.
        if !shared.batch_linger.is_zero() {
            let deadline = tokio::time::Instant::now() + shared.batch_linger;
            while open && !batch.is_full() {
                open = batch.drain(&mut cache, &mut rx);
                if !open || batch.is_full() {
                    break;
                }
                tokio::select! {
                    biased;
                    // Abort: the collected messages were not applied and their offsets are
                    // not stored; the next owner of the partition reads them again.
                    _ = stop.cancelled() => break 'outer,
                    _ = tokio::time::sleep_until(deadline) => break,
                    m = rx.recv() => match m {
                        Some(m) => batch.push(&mut cache, m),
                        None => open = false,
                    },
                }
            }
        }

        // Wait for a transaction slot, collecting (and decoding) meanwhile. The acquire future
        // lives across the loop so the worker keeps its place in the semaphore's queue.
        let acquire = shared.slots.clone().acquire_owned();
        tokio::pin!(acquire);
        let permit = loop {
            if open {
                open = batch.drain(&mut cache, &mut rx);
            }
            if !open || batch.is_full() {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break 'outer,
                    p = &mut acquire => break p,
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break 'outer,
                p = &mut acquire => break p,
                m = rx.recv() => match m {
                    Some(m) => batch.push(&mut cache, m),
                    None => open = false,
                },
            }
        };
        let Ok(permit) = permit else { break };
        // What arrived while the slot was being handed over.
        if open {
            batch.drain(&mut cache, &mut rx);
        }

        match process(&shared, &topic, partition, &mut batch, permit, &stop).await {
            Ok(true) => {
                let offset = batch.messages.last().map(|m| m.offset).unwrap_or_default();
                let _ = events.send(WorkerEvent::Durable {
                    topic: topic.clone(),
                    partition,
                    offset,
                });
            }
            Ok(false) => break,
            Err(fatal) => {
                tracing::error!(%topic, partition, error = %fatal, "applier stopping");
                let _ = events.send(WorkerEvent::Fatal(fatal));
                break;
            }
        }
        batch.clear();
    }
    let _ = events.send(WorkerEvent::Exited { topic, partition });
}

/// Applies one batch while holding the transaction slot `permit` (released once the transaction
/// has ended). `Ok(true)`: durable; `Ok(false)`: abandoned because of a stop request.
async fn process(
    shared: &WorkerShared,
    topic: &str,
    partition: i32,
    batch: &mut Batch,
    permit: OwnedSemaphorePermit,
    stop: &CancellationToken,
) -> Result<bool, ApplierError> {
    let prepared = &batch.prepared;
    let origin = &batch.origin;
    let dead = &mut batch.dead;
    let started = Instant::now();
    let mut backoff = shared.backoff_initial;
    let applied = loop {
        if stop.is_cancelled() {
            return Ok(false);
        }
        match shared.applier.apply(topic, partition, prepared).await {
            Ok(a) => break a,
            Err(ApplyError::Definite(e)) => return Err(e),
            Err(ApplyError::Data(e)) => {
                // Row-by-row isolation only returns Data for a single event; reaching here means
                // the error did not come from one row (e.g. DDL). Treat it like a transient one.
                tracing::warn!(topic, partition, error = %e, "batch failed with a data error outside any row; retrying");
                shared.applier.tables.invalidate();
            }
            Err(ApplyError::Transient { kind, message }) => {
                tracing::warn!(topic, partition, ?kind, error = %message, backoff_ms = backoff.as_millis() as u64,
                    "transient PostgreSQL failure; retrying the batch");
                if kind == crate::error::PgErrorKind::Other {
                    shared.applier.tables.invalidate();
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.backoff_max);
    };
    drop(permit);
    for (i, err) in &applied.rejected {
        dead.push((origin[*i], "postgres", err.clone()));
    }
    let duration = started.elapsed();
    metrics::BatchApplied {
        topic,
        partition,
        tables: &applied.tables,
        size: batch.messages.len(),
        duration,
    }
    .emit();
    let consumed: Vec<Instant> = batch.messages.iter().map(|m| m.consumed_at).collect();
    metrics::Latencies {
        source_ts_ms: &applied.source_ts_ms,
        consumed: &consumed,
    }
    .emit();

    dead.sort_by_key(|d| d.0);
    for (i, kind, error) in dead.iter() {
        let msg = &batch.messages[*i];
        let mut backoff = shared.backoff_initial;
        loop {
            match shared
                .dead_letters
                .send(topic, partition, msg, kind, error)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(topic, partition, offset = msg.offset, error = %e, "cannot produce to the dead-letter topic; retrying");
                    tokio::select! {
                        // The batch is committed in PostgreSQL but its offsets are not stored: the
                        // next owner re-reads it, skips the applied events and dead-letters again.
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(shared.backoff_max);
                }
            }
        }
        metrics::DeadLettered {
            topic,
            partition,
            offset: msg.offset,
            error,
        }
        .emit();
    }
    Ok(true)
}
