//! On-demand snapshots: `cdcsync snapshot --table db.table` writes a request to the Kafka control
//! topic `<prefix>._signals`; the running reader consumes it.
//!
//! A Kafka topic rather than Debezium's signal table: the CDC user needs no write privilege on
//! the source, the request works while the source is busy or read-only, and the reader already
//! talks to Kafka. The reader consumes the topic in its own consumer group
//! (`cdcsync-snapshot-signals-<source name>`, from the earliest offset, so a request sent while
//! the reader is down is not lost) and commits a request's offset only after it recorded the
//! requested tables' progress records, so a crash in between repeats the request instead of
//! losing it.

use std::time::Duration;

use cdc_config::{KafkaConfig, SourceConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// The control topic of a topic prefix.
pub fn signal_topic(prefix: &str) -> String {
    format!("{prefix}._signals")
}

/// One request on the control topic (key: the source name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Always `snapshot` for now.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tables to snapshot, `db.table`.
    pub tables: Vec<String>,
    /// When it was requested, ms since the epoch (also its id in logs).
    pub ts_ms: i64,
}

fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

/// Creates the control topic if missing (one partition: requests stay in order).
pub async fn ensure_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), SnapshotError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .map_err(|e| SnapshotError::Kafka(e.to_string()))?;
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(kafka.replication_factor));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics([&t], &opts)
        .await
        .map_err(|e| SnapshotError::Kafka(e.to_string()))?
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(SnapshotError::Kafka(format!(
                    "cannot create topic {t}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Sends a snapshot request for `tables` to the running reader of `source`; returns the topic
/// and the request time (ms), which [`wait_for_snapshots`] takes.
pub async fn request_snapshot(
    source: &SourceConfig,
    kafka: &KafkaConfig,
    tables: &[String],
) -> Result<(String, i64), SnapshotError> {
    let filter = crate::preflight::TableFilter::new(source);
    for t in tables {
        let Some((db, table)) = t.split_once('.') else {
            return Err(SnapshotError::Request(format!("{t:?} is not db.table")));
        };
        if !filter.matches(db, table) {
            return Err(SnapshotError::Request(format!(
                "{t} is not captured by this reader (source.include_tables / exclude_tables); only captured tables can be snapshotted"
            )));
        }
    }
    let topic = signal_topic(kafka.prefix(&source.name));
    ensure_topic(kafka, &topic).await?;
    let producer: FutureProducer = client_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|e| SnapshotError::Kafka(e.to_string()))?;
    let signal = Signal {
        kind: "snapshot".into(),
        tables: tables.to_vec(),
        ts_ms: super::run::now_ms(),
    };
    let value = serde_json::to_vec(&signal).map_err(|e| SnapshotError::Kafka(e.to_string()))?;
    producer
        .send(
            FutureRecord::to(&topic).key(&source.name).payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| {
            SnapshotError::Kafka(format!("sending the snapshot request to {topic}: {e}"))
        })?;
    Ok((topic, signal.ts_ms))
}

/// Waits until every table in `tables` has a snapshot run requested at or after `since_ms` that
/// is done (`Ok`) or failed (`Err`), reading the progress records; `Err` also on `timeout`.
pub async fn wait_for_snapshots(
    kafka: &KafkaConfig,
    checkpoint_topic: &str,
    source_name: &str,
    tables: &[String],
    since_ms: i64,
    timeout: Duration,
) -> Result<Vec<super::progress::TableProgress>, SnapshotError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (k, t, n) = (
            kafka.clone(),
            checkpoint_topic.to_string(),
            source_name.to_string(),
        );
        let all = tokio::task::spawn_blocking(move || super::progress::load_all(&k, &t, &n))
            .await
            .map_err(|e| SnapshotError::Kafka(e.to_string()))??;
        let mut done = Vec::new();
        for t in tables {
            match all.get(t) {
                Some(p) if p.run.parse::<i64>().unwrap_or(0) >= since_ms => match p.state {
                    super::progress::State::Done => done.push(p.clone()),
                    super::progress::State::Failed => {
                        return Err(SnapshotError::Request(format!(
                            "snapshot of {t} failed: {}",
                            p.error.clone().unwrap_or_default()
                        )));
                    }
                    super::progress::State::Running => {}
                },
                _ => {}
            }
        }
        if done.len() == tables.len() {
            return Ok(done);
        }
        if std::time::Instant::now() > deadline {
            return Err(SnapshotError::Request(format!(
                "the snapshot did not finish within {timeout:?} (is the reader running?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reader's consumer of the control topic.
pub(crate) struct SignalConsumer {
    consumer: StreamConsumer,
    source_name: String,
}

impl SignalConsumer {
    pub(crate) async fn new(
        kafka: &KafkaConfig,
        source_name: &str,
        topic: &str,
    ) -> Result<Self, SnapshotError> {
        ensure_topic(kafka, topic).await?;
        let consumer: StreamConsumer = client_config(kafka)
            .set(
                "group.id",
                format!("cdcsync-snapshot-signals-{source_name}"),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| SnapshotError::Kafka(e.to_string()))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| SnapshotError::Kafka(e.to_string()))?;
        Ok(SignalConsumer {
            consumer,
            source_name: source_name.to_string(),
        })
    }

    /// The next request for this source; the caller acknowledges it with [`Self::commit`] after
    /// recording it durably. Requests for other sources sharing the prefix are skipped.
    pub(crate) async fn next(
        &self,
    ) -> Result<(Signal, rdkafka::message::OwnedMessage), SnapshotError> {
        loop {
            let m = self
                .consumer
                .recv()
                .await
                .map_err(|e| SnapshotError::Kafka(e.to_string()))?;
            let m = m.detach();
            if m.key() != Some(self.source_name.as_bytes()) {
                continue;
            }
            match m.payload().map(serde_json::from_slice::<Signal>) {
                Some(Ok(s)) if s.kind == "snapshot" => return Ok((s, m)),
                other => {
                    tracing::warn!(
                        offset = m.offset(),
                        "ignoring an unreadable control message: {:?}",
                        other.map(|r| r.err())
                    );
                    self.commit(&m)?;
                }
            }
        }
    }

    /// Commits the offset after `m` (synchronously: the request is recorded by now).
    pub(crate) fn commit(&self, m: &rdkafka::message::OwnedMessage) -> Result<(), SnapshotError> {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            m.topic(),
            m.partition(),
            rdkafka::Offset::Offset(m.offset() + 1),
        )
        .map_err(|e| SnapshotError::Kafka(e.to_string()))?;
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| SnapshotError::Kafka(e.to_string()))
    }
}
