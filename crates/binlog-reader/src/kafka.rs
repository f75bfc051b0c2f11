//! The Kafka side: an idempotent producer with bounded in-flight bytes, per-transaction
//! acknowledgement tracking, topic creation, and the checkpoint topic.
//!
//! **Why a checkpoint never runs ahead of Kafka.** Every message of a source transaction holds a
//! reference to that transaction's [`TxState`], whose `pending` counter is incremented before the
//! message is handed to librdkafka and decremented in the delivery callback. A transaction's
//! checkpoint becomes *committable* only when its counter and the counters of every earlier
//! transaction are zero (the [`AckQueue`] pops strictly in order), and a failed delivery marks
//! the transaction failed, which stops the session before its checkpoint can be saved. So the
//! saved position is always at a transaction boundary with every earlier event acknowledged
//! (`acks=all`, idempotent producer), and a restart loses nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdc_config::KafkaConfig;
use cdc_event::Checkpoint;
use prometheus::IntCounter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{oneshot, Notify};

use crate::config::ReaderConfig;
use crate::metrics;
use crate::ReaderError;

/// Acknowledgement state of one source transaction.
#[derive(Debug, Default)]
pub struct TxState {
    /// Messages handed to Kafka and not yet acknowledged.
    pending: AtomicU64,
    /// Messages handed to Kafka in total.
    sent: AtomicU64,
    /// A delivery failed.
    failed: AtomicBool,
}

impl TxState {
    /// Whether every message handed to Kafka under this state was acknowledged or failed.
    pub fn is_done(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Whether a delivery under this state failed (the snapshot re-reads such a chunk).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// What the delivery callback gets back for each message.
pub enum Opaque {
    /// A change event or tombstone.
    Row {
        /// Its transaction.
        tx: Arc<TxState>,
        /// Bytes counted against the in-flight bound.
        bytes: u64,
        /// `cdcsync_reader_events_total{table,op}` (none for tombstones).
        counter: Option<IntCounter>,
    },
    /// A checkpoint; the saver waits for the result.
    Checkpoint(oneshot::Sender<Result<(), String>>),
}

/// Shared between the producer's delivery thread and the reader.
#[derive(Default)]
struct Inflight {
    bytes: AtomicU64,
    notify: Notify,
    first_error: Mutex<Option<(String, bool)>>,
}

/// librdkafka callbacks.
pub struct Ctx {
    inflight: Arc<Inflight>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Opaque>) {
        match *opaque {
            Opaque::Row { tx, bytes, counter } => {
                match result {
                    Ok(_) => {
                        if let Some(c) = counter {
                            c.inc();
                        }
                    }
                    Err((e, _)) => {
                        let text = e.to_string();
                        metrics::ProduceFailed { error: &text }.emit();
                        tx.failed.store(true, Ordering::Release);
                        let fatal = matches!(
                            e.rdkafka_error_code(),
                            Some(
                                RDKafkaErrorCode::MessageSizeTooLarge
                                    | RDKafkaErrorCode::InvalidRecord
                            )
                        );
                        let mut g = self
                            .inflight
                            .first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        g.get_or_insert((text, fatal));
                    }
                }
                tx.pending.fetch_sub(1, Ordering::AcqRel);
                let left = self.inflight.bytes.fetch_sub(bytes, Ordering::AcqRel) - bytes;
                metrics::INFLIGHT_BYTES.set(left as i64);
                self.inflight.notify.notify_waiters();
            }
            Opaque::Checkpoint(tx) => {
                let _ = tx.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
            }
        }
    }
}

/// The reader's producer.
pub struct Sink {
    producer: ThreadedProducer<Ctx>,
    inflight: Arc<Inflight>,
    max_inflight: u64,
    base: ClientConfig,
    partitions: i32,
    replication: i32,
    max_message_bytes: u32,
    checkpoint_topic: String,
}

fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

fn kerr(e: KafkaError) -> ReaderError {
    ReaderError::Kafka(e.to_string())
}

impl Sink {
    /// Creates the producer (no network I/O yet).
    pub fn new(
        kafka: &KafkaConfig,
        reader: &ReaderConfig,
        checkpoint_topic: String,
    ) -> Result<Self, ReaderError> {
        let inflight = Arc::new(Inflight::default());
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &kafka.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", reader.linger_ms.to_string())
            .set("batch.size", "1000000")
            // Java's default partitioner: murmur2 of the key bytes.
            .set("partitioner", "murmur2_random")
            .set("message.max.bytes", reader.max_message_bytes.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set(
                "queue.buffering.max.kbytes",
                ((reader.max_inflight_bytes + 2 * reader.max_message_bytes as u64) / 1024 + 1024)
                    .min(2_097_151)
                    .to_string(),
            );
        for (k, v) in &kafka.properties {
            c.set(k, v);
        }
        let producer = c
            .create_with_context(Ctx {
                inflight: inflight.clone(),
            })
            .map_err(|e| {
                ReaderError::Config(cdc_config::ConfigError::invalid(
                    "kafka.properties",
                    e.to_string(),
                ))
            })?;
        Ok(Sink {
            producer,
            inflight,
            max_inflight: reader.max_inflight_bytes,
            base: base_config(kafka),
            partitions: kafka.partitions,
            replication: kafka.replication_factor,
            max_message_bytes: reader.max_message_bytes,
            checkpoint_topic,
        })
    }

    /// Creates `topics` if missing (table topics; `compact` for the checkpoint topic).
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<(), ReaderError> {
        let admin: AdminClient<DefaultClientContext> = self.base.create().map_err(kerr)?;
        let mmb = self.max_message_bytes.to_string();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                if *t == self.checkpoint_topic {
                    NewTopic::new(t, 1, TopicReplication::Fixed(self.replication))
                        .set("cleanup.policy", "compact")
                } else {
                    NewTopic::new(
                        t,
                        self.partitions,
                        TopicReplication::Fixed(self.replication),
                    )
                    .set("max.message.bytes", &mmb)
                }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics(new.iter(), &opts).await.map_err(kerr)? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(ReaderError::Kafka(format!(
                        "cannot create topic {t}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Waits until in-flight bytes are under the bound (backpressure on binlog reading).
    pub async fn wait_for_room(&self) -> Result<(), ReaderError> {
        loop {
            self.check_errors()?;
            if self.inflight.bytes.load(Ordering::Acquire) <= self.max_inflight {
                return Ok(());
            }
            let notified = self.inflight.notify.notified();
            if self.inflight.bytes.load(Ordering::Acquire) <= self.max_inflight {
                return Ok(());
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// Fails if any delivery failed since the session began.
    pub fn check_errors(&self) -> Result<(), ReaderError> {
        let g = self
            .inflight
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*g {
            None => Ok(()),
            Some((e, true)) => Err(ReaderError::KafkaFatal(e.clone())),
            Some((e, false)) => Err(ReaderError::Kafka(e.clone())),
        }
    }

    /// Clears a recorded delivery error (a new session starts from the saved checkpoint).
    pub fn reset_errors(&self) {
        *self
            .inflight
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Hands one message to librdkafka, counted against `tx`.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        headers: Option<(&[u8], &[u8])>,
        tx: &Arc<TxState>,
        counter: Option<IntCounter>,
    ) -> Result<(), ReaderError> {
        let bytes = (key.len() + value.map_or(0, |v| v.len()) + 64) as u64;
        if bytes > self.max_message_bytes as u64 {
            return Err(ReaderError::KafkaFatal(format!(
                "a {bytes}-byte event for topic {topic} exceeds reader.max_message_bytes ({})",
                self.max_message_bytes
            )));
        }
        tx.pending.fetch_add(1, Ordering::AcqRel);
        tx.sent.fetch_add(1, Ordering::AcqRel);
        let now = self.inflight.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        metrics::INFLIGHT_BYTES.set(now as i64);
        let mut record = BaseRecord::with_opaque_to(
            topic,
            Box::new(Opaque::Row {
                tx: tx.clone(),
                bytes,
                counter,
            }),
        )
        .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some((id, version)) = headers {
            record = record.headers(
                OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: "cdc_event_id",
                        value: Some(id),
                    })
                    .insert(Header {
                        key: "cdc_version",
                        value: Some(version),
                    }),
            );
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, r)) => {
                    // The record (and its opaque) is dropped: undo the accounting by hand.
                    drop(r);
                    tx.pending.fetch_sub(1, Ordering::AcqRel);
                    self.inflight.bytes.fetch_sub(bytes, Ordering::AcqRel);
                    metrics::ProduceFailed {
                        error: &e.to_string(),
                    }
                    .emit();
                    return Err(match e {
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                            ReaderError::KafkaFatal(e.to_string())
                        }
                        _ => kerr(e),
                    });
                }
            }
        }
    }

    /// Waits until every handed-over message is acknowledged or failed, up to `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.inflight.bytes.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let notified = self.inflight.notify.notified();
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }

    /// Saves a checkpoint and waits for Kafka's acknowledgement.
    pub async fn save_checkpoint(
        &self,
        source_name: &str,
        cp: &Checkpoint,
    ) -> Result<(), ReaderError> {
        let value = serde_json::to_vec(cp).map_err(|e| ReaderError::Kafka(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let record =
            BaseRecord::with_opaque_to(&self.checkpoint_topic, Box::new(Opaque::Checkpoint(tx)))
                .key(source_name)
                .payload(&value);
        self.producer.send(record).map_err(|(e, _)| kerr(e))?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(()))) => {
                metrics::CheckpointSaved { checkpoint: cp }.emit();
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(ReaderError::Kafka(format!("saving the checkpoint: {e}"))),
            _ => Err(ReaderError::Kafka("saving the checkpoint timed out".into())),
        }
    }

    /// Saves `value` (or a tombstone) under `key` in the checkpoint topic and waits for Kafka's
    /// acknowledgement; the snapshot keeps its per-table progress there (`snapshot::progress`).
    pub async fn save_record(&self, key: &str, value: Option<&[u8]>) -> Result<(), ReaderError> {
        let (tx, rx) = oneshot::channel();
        let mut record =
            BaseRecord::with_opaque_to(&self.checkpoint_topic, Box::new(Opaque::Checkpoint(tx)))
                .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        self.producer.send(record).map_err(|(e, _)| kerr(e))?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ReaderError::Kafka(format!("saving {key}: {e}"))),
            _ => Err(ReaderError::Kafka(format!("saving {key} timed out"))),
        }
    }

    /// Reads the latest checkpoint of `source_name` from the checkpoint topic.
    pub async fn load_checkpoint(
        &self,
        source_name: &str,
    ) -> Result<Option<Checkpoint>, ReaderError> {
        let base = self.base.clone();
        let topic = self.checkpoint_topic.clone();
        let name = source_name.to_string();
        tokio::task::spawn_blocking(move || load_checkpoint_blocking(base, &topic, &name))
            .await
            .map_err(|e| ReaderError::Kafka(e.to_string()))?
    }

    /// Flushes librdkafka's queues (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

fn load_checkpoint_blocking(
    mut base: ClientConfig,
    topic: &str,
    name: &str,
) -> Result<Option<Checkpoint>, ReaderError> {
    let consumer: BaseConsumer = base
        .set("group.id", format!("cdcsync-checkpoint-reader-{name}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(kerr)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(15))
        .map_err(kerr)?;
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(kerr)?;
    consumer.assign(&tpl).map_err(kerr)?;
    let mut latest: Option<Checkpoint> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(ReaderError::Kafka(format!(
                "reading checkpoint topic {topic} timed out"
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(kerr)?;
        if m.key() == Some(name.as_bytes()) {
            latest = match m.payload() {
                // A tombstone resets the checkpoint (e.g. after a re-snapshot).
                None => None,
                Some(p) => Some(serde_json::from_slice(p).map_err(|e| {
                    ReaderError::Kafka(format!(
                        "checkpoint at {topic}@{} is not valid: {e}",
                        m.offset()
                    ))
                })?),
            };
        }
        if m.offset() >= high - 1 {
            return Ok(latest);
        }
    }
}

/// Transactions closed by the reader, oldest first, with the checkpoint each one completes.
#[derive(Default)]
pub struct AckQueue {
    queue: VecDeque<(Arc<TxState>, Checkpoint)>,
    committable: Option<Checkpoint>,
}

impl AckQueue {
    /// Records that the transaction `tx` ended; `cp` is the position after it.
    pub fn close(&mut self, tx: Arc<TxState>, cp: Checkpoint) {
        let empty = tx.sent.load(Ordering::Acquire) == 0;
        if empty {
            // No messages of its own: it is committable exactly when the one before it is.
            match self.queue.back_mut() {
                Some(back) => back.1 = cp,
                None => self.committable = Some(cp),
            }
        } else {
            self.queue.push_back((tx, cp));
        }
        metrics::INFLIGHT_TX.set(self.queue.len() as i64);
    }

    /// Pops acknowledged transactions; returns the newest committable checkpoint. Errors if a
    /// delivery of a pending transaction failed.
    pub fn advance(&mut self) -> Result<Option<&Checkpoint>, ReaderError> {
        while let Some((tx, _)) = self.queue.front() {
            if tx.failed.load(Ordering::Acquire) {
                return Err(ReaderError::Kafka(
                    "a message of a pending transaction failed delivery".into(),
                ));
            }
            if !tx.is_done() {
                break;
            }
            let (_, cp) = self.queue.pop_front().expect("front exists");
            self.committable = Some(cp);
        }
        metrics::INFLIGHT_TX.set(self.queue.len() as i64);
        Ok(self.committable.as_ref())
    }

    /// Whether every closed transaction is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Starts a transaction's acknowledgement state.
pub fn new_tx() -> Arc<TxState> {
    Arc::new(TxState::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_event::{BinlogPosition, Flavor};

    fn cp(pos: u64) -> Checkpoint {
        Checkpoint {
            flavor: Flavor::Mariadb,
            server_id: 1,
            gtid_set: format!("0-1-{pos}"),
            position: BinlogPosition {
                file: "mysql-bin.000001".into(),
                pos,
            },
            ts_ms: 0,
        }
    }

    fn tx_with(pending: u64) -> Arc<TxState> {
        let t = new_tx();
        t.pending.store(pending, Ordering::Release);
        t.sent.store(pending, Ordering::Release);
        t
    }

    #[test]
    fn checkpoint_waits_for_every_earlier_transaction() {
        let mut q = AckQueue::default();
        let a = tx_with(2);
        let b = tx_with(1);
        q.close(a.clone(), cp(100));
        q.close(b.clone(), cp(200));
        q.close(new_tx(), cp(300)); // empty: rides on b
        assert_eq!(q.advance().unwrap(), None);
        b.pending.store(0, Ordering::Release); // later one acked first
        assert_eq!(q.advance().unwrap(), None, "a is still pending");
        a.pending.store(0, Ordering::Release);
        assert_eq!(q.advance().unwrap().unwrap().position.pos, 300);
        assert!(q.is_empty());
        q.close(new_tx(), cp(400));
        assert_eq!(q.advance().unwrap().unwrap().position.pos, 400);
    }

    #[test]
    fn failed_delivery_blocks_the_checkpoint() {
        let mut q = AckQueue::default();
        let a = tx_with(1);
        q.close(a.clone(), cp(100));
        a.failed.store(true, Ordering::Release);
        a.pending.store(0, Ordering::Release);
        assert!(q.advance().is_err());
    }
}
