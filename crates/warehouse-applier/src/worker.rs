//! One task per assigned partition: collect a batch, apply it, dead-letter what cannot be
//! applied, then report the offset as durable.
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
//! shutdown) lets a running transaction finish but starts no new one and abandons backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
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
    /// Batch bound in time from its first event.
    pub batch_max: Duration,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
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
    let mut batch: Vec<Message> = Vec::with_capacity(shared.batch_max_events);
    'outer: loop {
        // Collect: wait for a first message, then fill up to the size or time bound.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = rx.recv() => m,
        };
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + shared.batch_max;
        batch.push(first);
        while batch.len() < shared.batch_max_events {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::select! {
                        biased;
                        // Abort: the collected messages were not applied and their offsets are
                        // not stored; the next owner of the partition reads them again.
                        _ = stop.cancelled() => break 'outer,
                        _ = tokio::time::sleep_until(deadline) => break,
                        m = rx.recv() => match m {
                            Some(m) => batch.push(m),
                            None => break,
                        },
                    }
                }
            }
        }

        match process(&shared, &topic, partition, &mut cache, &batch, &stop).await {
            Ok(true) => {
                let offset = batch.last().map(|m| m.offset).unwrap_or_default();
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

/// Applies one batch. `Ok(true)`: durable; `Ok(false)`: abandoned because of a stop request.
async fn process(
    shared: &WorkerShared,
    topic: &str,
    partition: i32,
    cache: &mut SchemaCache,
    batch: &[Message],
    stop: &CancellationToken,
) -> Result<bool, ApplierError> {
    let mut prepared: Vec<Prepared> = Vec::with_capacity(batch.len());
    // Index into `batch` of each prepared event, and the messages that are poison.
    let mut origin: Vec<usize> = Vec::with_capacity(batch.len());
    let mut dead: Vec<(usize, &'static str, String)> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        match decode(cache, m.offset, m.payload.as_deref()) {
            Decoded::Event(p) => {
                prepared.push(p);
                origin.push(i);
            }
            Decoded::Tombstone => {}
            Decoded::Poison(reason) => dead.push((i, "decode", reason)),
        }
    }

    let started = Instant::now();
    let mut backoff = shared.backoff_initial;
    let applied = loop {
        if stop.is_cancelled() {
            return Ok(false);
        }
        match shared.applier.apply(topic, partition, &prepared).await {
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
    for (i, err) in &applied.rejected {
        dead.push((origin[*i], "postgres", err.clone()));
    }
    let duration = started.elapsed();
    metrics::BatchApplied {
        topic,
        partition,
        tables: &applied.tables,
        size: batch.len(),
        duration,
    }
    .emit();
    let consumed: Vec<Instant> = batch.iter().map(|m| m.consumed_at).collect();
    metrics::Latencies {
        source_ts_ms: &applied.source_ts_ms,
        consumed: &consumed,
    }
    .emit();

    dead.sort_by_key(|d| d.0);
    for (i, kind, error) in &dead {
        let msg = &batch[*i];
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
