//! The consumer thread: one Kafka consumer-group member that polls, dispatches messages to the
//! partition workers, stores offsets they report durable, and handles rebalances.
//!
//! It is a plain OS thread running librdkafka's `BaseConsumer::poll`, because the rebalance
//! callbacks run inside `poll` and the revoke callback must *wait* for the revoked partitions'
//! in-flight transactions; blocking there is harmless on a dedicated thread and would starve a
//! tokio worker.
//!
//! # Rebalances (cooperative-sticky)
//!
//! * **Assign**: a worker task and a bounded channel are created per new partition; consumption
//!   resumes from the group's committed offset (or the earliest offset for a new group).
//! * **Revoke**: each revoked partition's worker is told to stop: a transaction already running
//!   finishes, nothing new starts. The callback waits (bounded by `applier.revoke_timeout_ms`)
//!   for the workers to exit, stores the offsets they reported durable, and commits
//!   synchronously before librdkafka gives the partitions up. Whatever was not durable is
//!   re-read by the next owner and absorbed by the processed-message table.
//!
//! # Backpressure
//!
//! Each worker channel holds one batch: the worker moves messages from it into the batch it is
//! collecting even while it waits for a transaction slot, so the channel only has to hold what
//! arrives while the worker's transaction runs. When it is full, the thread waits briefly for room
//! (`HANDOVER_WAIT`, about a batch's apply time); if there is still none, messages are kept in the
//! partition's pending queue, and once that holds half a batch the partition is paused; it is
//! resumed once the queue drained into the channel. So at most about two and a half batches per
//! partition (the one being applied, the channel, the pending queue; plus librdkafka's bounded
//! prefetch, `queued.max.messages.kbytes`) are in memory, and a stalled PostgreSQL pauses
//! consumption instead of growing memory, while the thread keeps polling and the member stays in
//! its group.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::Message;
use crate::error::ApplierError;
use crate::metrics;
use crate::worker::{run_worker, WorkerEvent, WorkerShared};

/// How long the poll loop waits for room in a worker's channel before pausing the partition.
const HANDOVER_WAIT: Duration = Duration::from_millis(500);

/// Committed offsets of the assigned partitions, for the retention job.
pub type Committed = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// What the lag of one assigned partition is computed from.
///
/// The committed offset comes from this member's own commits ([`Context::committed`], filled by
/// the commit callback) and only before its first commit from what the group had committed when
/// the partition was assigned. librdkafka's statistics are used for the high watermark alone:
/// their `committed_offset` was seen stale or `-1` long after this member had committed, which
/// made the gauge report the whole partition as lag for as long as no new message arrived.
#[derive(Debug, Clone, Copy)]
struct Watermark {
    /// Log end offset (high watermark) from the latest statistics; `None` before the first.
    high: Option<i64>,
    /// Committed offset of the group when the partition was assigned (`None`: none yet; the
    /// member then starts at the log start offset, `auto.offset.reset=earliest`).
    committed_at_assign: Option<i64>,
    /// Log start offset from the latest statistics.
    low: i64,
}

struct Worker {
    tx: mpsc::Sender<Message>,
    stop: CancellationToken,
    pending: VecDeque<Message>,
    paused: bool,
    /// One past the last offset received: a lower bound of the log end offset that is never
    /// older than the last message, unlike the statistics' `hi_offset`.
    received_end: i64,
}

/// Worker bookkeeping shared by the poll loop and the rebalance callbacks (both on the consumer
/// thread; the mutex only satisfies `&self` in the callbacks).
struct State {
    workers: HashMap<String, HashMap<i32, Worker>>,
    fatal: Option<ApplierError>,
}

/// The librdkafka context: rebalance, commit and statistics callbacks.
pub struct Context {
    state: Mutex<State>,
    runtime: tokio::runtime::Handle,
    shared: Arc<WorkerShared>,
    events_tx: std::sync::mpsc::Sender<WorkerEvent>,
    events_rx: Mutex<std::sync::mpsc::Receiver<WorkerEvent>>,
    revoke_timeout: Duration,
    channel_capacity: usize,
    committed: Committed,
    /// Per assigned partition, what its lag is computed from; only locked after `state` and
    /// `committed` have been released, and it is released before `committed` is locked.
    watermarks: Mutex<HashMap<(String, i32), Watermark>>,
    /// The partitions whose lag series were last published (to remove the revoked ones).
    published: Mutex<Vec<(String, i32)>>,
}

impl Context {
    /// A context whose workers apply with `shared` on `runtime`.
    pub fn new(
        runtime: tokio::runtime::Handle,
        shared: Arc<WorkerShared>,
        revoke_timeout: Duration,
        committed: Committed,
    ) -> Self {
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        // One batch, filled while the worker's previous batch is applied; the worker itself
        // collects the next one while it waits for a transaction slot.
        let channel_capacity = shared.batch_max_events.max(1);
        Context {
            state: Mutex::new(State {
                workers: HashMap::new(),
                fatal: None,
            }),
            runtime,
            shared,
            events_tx,
            events_rx: Mutex::new(events_rx),
            revoke_timeout,
            channel_capacity,
            committed,
            watermarks: Mutex::new(HashMap::new()),
            published: Mutex::new(Vec::new()),
        }
    }

    /// Sets the lag gauges from the high watermarks and this member's committed offsets. Called
    /// on every statistics report and after every commit, so a commit shows within moments.
    fn publish_lag(&self) {
        let received: HashMap<(String, i32), i64> = {
            let st = self.state.lock().unwrap();
            st.workers
                .iter()
                .flat_map(|(t, ps)| {
                    ps.iter()
                        .map(move |(p, w)| ((t.clone(), *p), w.received_end))
                })
                .collect()
        };
        let marks: Vec<((String, i32), Watermark)> = self
            .watermarks
            .lock()
            .unwrap()
            .iter()
            .map(|(k, w)| (k.clone(), *w))
            .collect();
        let committed = self.committed.lock().unwrap();
        let mut lags = Vec::with_capacity(marks.len());
        for ((topic, partition), w) in marks {
            // Statistics are queued behind the prefetched messages, so their `hi_offset` can be
            // seconds old while the applier is behind; a message already received bounds it.
            let received_end = received
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(0);
            let Some(high) = w.high.map(|h| h.max(received_end)) else {
                continue;
            };
            let base = committed
                .get(&(topic.clone(), partition))
                .copied()
                .or(w.committed_at_assign)
                .unwrap_or(w.low)
                .max(w.low);
            lags.push((topic, partition, (high - base).max(0)));
        }
        drop(committed);
        let now: Vec<(String, i32)> = lags.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let before = std::mem::replace(&mut *self.published.lock().unwrap(), now);
        let gone: Vec<(String, i32)> = before
            .into_iter()
            .filter(|(t, p)| !lags.iter().any(|(lt, lp, _)| lt == t && lp == p))
            .collect();
        metrics::LagObserved {
            partitions: &lags,
            gone: &gone,
        }
        .emit();
    }

    fn spawn_worker(&self, state: &mut State, topic: &str, partition: i32) {
        let (tx, rx) = mpsc::channel(self.channel_capacity);
        let stop = CancellationToken::new();
        self.runtime.spawn(run_worker(
            self.shared.clone(),
            Arc::from(topic),
            partition,
            rx,
            stop.clone(),
            self.events_tx.clone(),
        ));
        state.workers.entry(topic.to_string()).or_default().insert(
            partition,
            Worker {
                tx,
                stop,
                pending: VecDeque::new(),
                paused: false,
                received_end: 0,
            },
        );
        // The dead-letter counter of the topic exists (at 0) from its first assignment on.
        metrics::DEAD_LETTERS.with_label_values(&[topic]);
        tracing::info!(topic, partition, "partition assigned");
    }

    /// Handles worker reports until `until` returns true or `deadline` passes (or just drains
    /// what is there when `deadline` is `None`).
    fn drain_events(
        &self,
        consumer: &BaseConsumer<Context>,
        deadline: Option<Instant>,
        mut waiting: Option<&mut HashMap<(String, i32), ()>>,
    ) {
        let rx = self.events_rx.lock().unwrap();
        loop {
            if let Some(w) = waiting.as_deref() {
                if w.is_empty() {
                    return;
                }
            }
            let ev = match deadline {
                None => match rx.try_recv() {
                    Ok(ev) => ev,
                    Err(_) => return,
                },
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(ev) => ev,
                        Err(_) => return,
                    }
                }
            };
            match ev {
                WorkerEvent::Durable {
                    topic,
                    partition,
                    offset,
                } => {
                    // `rd_kafka_offset_store` stores offset + 1: the next message to read.
                    if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                        tracing::debug!(%topic, partition, error = %e, "offset not stored (partition no longer assigned)");
                    }
                }
                WorkerEvent::Exited { topic, partition } => {
                    if let Some(w) = waiting.as_deref_mut() {
                        w.remove(&(topic.to_string(), partition));
                    }
                }
                WorkerEvent::Fatal(e) => {
                    let mut st = self.state.lock().unwrap();
                    st.fatal.get_or_insert(e);
                }
            }
        }
    }

    /// Stops the workers of `partitions` (all when `None`), waits for them and commits.
    fn stop_workers(
        &self,
        consumer: &BaseConsumer<Context>,
        partitions: Option<&TopicPartitionList>,
    ) {
        let mut waiting = HashMap::new();
        {
            let mut st = self.state.lock().unwrap();
            let keys: Vec<(String, i32)> = match partitions {
                Some(tpl) => tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect(),
                None => st
                    .workers
                    .iter()
                    .flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p)))
                    .collect(),
            };
            for (t, p) in keys {
                if let Some(w) = st.workers.get_mut(&t).and_then(|ps| ps.remove(&p)) {
                    w.stop.cancel();
                    waiting.insert((t.clone(), p), ());
                }
                self.committed.lock().unwrap().remove(&(t.clone(), p));
                self.watermarks.lock().unwrap().remove(&(t.clone(), p));
                tracing::info!(topic = %t, partition = p, "partition revoked");
            }
        }
        if waiting.is_empty() {
            return;
        }
        self.drain_events(
            consumer,
            Some(Instant::now() + self.revoke_timeout),
            Some(&mut waiting),
        );
        if !waiting.is_empty() {
            tracing::warn!(partitions = ?waiting.keys().collect::<Vec<_>>(),
                "in-flight batches did not finish within applier.revoke_timeout_ms; their tail will be re-read by the next owner");
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => metrics::OffsetsCommitted.emit(),
            Err(e) => tracing::debug!(error = %e, "nothing committed on revoke"),
        }
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        {
            let mut marks = self.watermarks.lock().unwrap();
            for (name, topic) in &statistics.topics {
                for (p, part) in &topic.partitions {
                    if let Some(w) = marks.get_mut(&(name.clone(), *p)) {
                        if part.hi_offset >= 0 {
                            w.high = Some(part.hi_offset);
                        }
                        w.low = part.lo_offset.max(0);
                    }
                }
            }
        }
        self.publish_lag();
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.stop_workers(consumer, Some(tpl));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                {
                    let mut st = self.state.lock().unwrap();
                    for e in tpl.elements() {
                        self.spawn_worker(&mut st, e.topic(), e.partition());
                    }
                }
                // The group's committed offsets, the lag's base until this member commits. Once
                // per assignment, bounded; without them the lag counts from the log start.
                let at_assign = match consumer
                    .committed_offsets((*tpl).clone(), Duration::from_secs(2))
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "committed offsets not fetched; lag counts from the log start until the first commit");
                        TopicPartitionList::new()
                    }
                };
                {
                    // An offset this member committed during an earlier ownership is stale now.
                    let mut c = self.committed.lock().unwrap();
                    for e in tpl.elements() {
                        c.remove(&(e.topic().to_string(), e.partition()));
                    }
                }
                let mut marks = self.watermarks.lock().unwrap();
                for e in tpl.elements() {
                    let committed_at_assign = at_assign
                        .find_partition(e.topic(), e.partition())
                        .and_then(|c| match c.offset() {
                            Offset::Offset(o) if o >= 0 => Some(o),
                            _ => None,
                        });
                    marks.insert(
                        (e.topic().to_string(), e.partition()),
                        Watermark {
                            high: None,
                            committed_at_assign,
                            low: 0,
                        },
                    );
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_err() {
            return;
        }
        metrics::OffsetsCommitted.emit();
        {
            let mut c = self.committed.lock().unwrap();
            for e in offsets.elements() {
                if let Offset::Offset(o) = e.offset() {
                    c.insert((e.topic().to_string(), e.partition()), o);
                }
            }
        }
        self.publish_lag();
    }
}

/// Polls until `shutdown` or a fatal error; then stops the workers and commits.
pub fn poll_loop(
    consumer: BaseConsumer<Context>,
    shutdown: CancellationToken,
    health: cdc_telemetry::Health,
) -> Result<(), ApplierError> {
    let ctx = consumer.context();
    loop {
        health.beat();
        if shutdown.is_cancelled() || ctx.state.lock().unwrap().fatal.is_some() {
            break;
        }
        ctx.drain_events(&consumer, None, None);
        // Move pending messages into channels that have room; resume drained partitions.
        let mut backlogged = false;
        {
            let mut st = ctx.state.lock().unwrap();
            for (topic, ps) in st.workers.iter_mut() {
                for (p, w) in ps.iter_mut() {
                    while let Some(m) = w.pending.pop_front() {
                        match w.tx.try_send(m) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(m)) => {
                                w.pending.push_front(m);
                                break;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                w.pending.clear();
                                break;
                            }
                        }
                    }
                    backlogged |= !w.pending.is_empty() || w.paused;
                    if w.paused && w.pending.is_empty() {
                        let mut tpl_one = TopicPartitionList::new();
                        tpl_one.add_partition(topic, *p);
                        if consumer.resume(&tpl_one).is_ok() {
                            tracing::debug!(topic = %topic, partition = *p, "partition resumed");
                            w.paused = false;
                        }
                    }
                }
            }
        }
        // While some partition waits for its worker, come back soon to hand over its messages
        // and resume it; otherwise block in poll longer.
        let timeout = if backlogged {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        let Some(res) = consumer.poll(timeout) else {
            continue;
        };
        let m = match res {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                continue;
            }
        };
        let msg = Message {
            offset: m.offset(),
            key: m.key().map(|k| k.to_vec()),
            payload: m.payload().map(|p| p.to_vec()),
            consumed_at: Instant::now(),
        };
        let mut st = ctx.state.lock().unwrap();
        let Some(w) = st
            .workers
            .get_mut(m.topic())
            .and_then(|ps| ps.get_mut(&m.partition()))
        else {
            tracing::debug!(
                topic = m.topic(),
                partition = m.partition(),
                "message for an unassigned partition dropped"
            );
            continue;
        };
        w.received_end = w.received_end.max(m.offset() + 1);
        if !w.pending.is_empty() {
            w.pending.push_back(msg);
            if !w.paused && w.pending.len() >= ctx.channel_capacity / 2 {
                let mut tpl_one = TopicPartitionList::new();
                tpl_one.add_partition(m.topic(), m.partition());
                if consumer.pause(&tpl_one).is_ok() {
                    tracing::debug!(
                        topic = m.topic(),
                        partition = m.partition(),
                        "partition paused: its worker is behind"
                    );
                    w.paused = true;
                }
            }
            continue;
        }
        // A full channel usually frees up within one batch's apply time: wait for that briefly
        // instead of pausing, because a pause drops librdkafka's prefetched messages of the
        // partition and the refetch costs a fetch round trip (up to `fetch.wait.max.ms`).
        let mut msg = msg;
        let wait_until = Instant::now() + HANDOVER_WAIT;
        let full = loop {
            match w.tx.try_send(msg) {
                Ok(()) => break None,
                Err(mpsc::error::TrySendError::Full(m)) if Instant::now() < wait_until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => break Some(e),
            }
        };
        match full {
            None => {}
            Some(mpsc::error::TrySendError::Full(msg)) => {
                w.pending.push_back(msg);
                // Pause only once a further batch is waiting: pausing drops librdkafka's
                // prefetched messages of the partition, which then have to be fetched again.
                if !w.paused && w.pending.len() >= ctx.channel_capacity / 2 {
                    let mut tpl_one = TopicPartitionList::new();
                    tpl_one.add_partition(m.topic(), m.partition());
                    if consumer.pause(&tpl_one).is_ok() {
                        tracing::debug!(
                            topic = m.topic(),
                            partition = m.partition(),
                            "partition paused: its worker is behind"
                        );
                        w.paused = true;
                    }
                }
            }
            Some(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    tracing::info!("applier stopping: finishing in-flight batches");
    ctx.stop_workers(&consumer, None);
    ctx.drain_events(&consumer, None, None);
    let fatal = ctx.state.lock().unwrap().fatal.take();
    drop(consumer);
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
