//! Durable snapshot progress, kept in the reader's compacted checkpoint topic.
//!
//! Key `<source name>:snapshot:<db>.<table>`, value a [`TableProgress`] JSON. The stream's own
//! checkpoint uses the key `<source name>`, so both live side by side and compaction keeps the
//! latest of each. A record is written when a snapshot is requested (before any chunk), after the
//! segments are planned, after every chunk whose events Kafka acknowledged, and when the table is
//! done or failed.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use cdc_config::KafkaConfig;
use mysql_async::Value;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// One key column value, as bound into the keyset query (typed, so it round-trips exactly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyVal {
    /// Signed integer.
    I(i64),
    /// Unsigned integer.
    U(u64),
    /// Bytes (strings, decimals, binary), base64.
    B(String),
    /// FLOAT/DOUBLE.
    F(f64),
    /// DATE/DATETIME/TIMESTAMP: year, month, day, hour, minute, second, microsecond.
    D(u16, u8, u8, u8, u8, u8, u32),
    /// TIME: negative, days, hours, minutes, seconds, microseconds.
    T(bool, u32, u8, u8, u8, u32),
}

impl KeyVal {
    /// From a value the server returned.
    pub fn from_value(v: &Value) -> Option<KeyVal> {
        Some(match v {
            Value::Int(i) => KeyVal::I(*i),
            Value::UInt(u) => KeyVal::U(*u),
            Value::Bytes(b) => KeyVal::B(base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Float(f) => KeyVal::F(*f as f64),
            Value::Double(d) => KeyVal::F(*d),
            Value::Date(y, mo, d, h, mi, s, us) => KeyVal::D(*y, *mo, *d, *h, *mi, *s, *us),
            Value::Time(n, d, h, m, s, us) => KeyVal::T(*n, *d, *h, *m, *s, *us),
            Value::NULL => return None,
        })
    }

    /// The value to bind.
    pub fn to_value(&self) -> Value {
        match self {
            KeyVal::I(i) => Value::Int(*i),
            KeyVal::U(u) => Value::UInt(*u),
            KeyVal::B(b) => Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_default(),
            ),
            KeyVal::F(f) => Value::Double(*f),
            KeyVal::D(y, mo, d, h, mi, s, us) => Value::Date(*y, *mo, *d, *h, *mi, *s, *us),
            KeyVal::T(n, d, h, m, s, us) => Value::Time(*n, *d, *h, *m, *s, *us),
        }
    }

    /// As a signed 128-bit integer, for splitting an integer key range.
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            KeyVal::I(i) => Some(*i as i128),
            KeyVal::U(u) => Some(*u as i128),
            _ => None,
        }
    }
}

/// A range of the leading key column, `(lo, hi]`; `None` bounds are open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Exclusive lower bound of the leading key column.
    pub lo: Option<KeyVal>,
    /// Inclusive upper bound of the leading key column.
    pub hi: Option<KeyVal>,
    /// Full key of the last row of the last completed chunk; the next chunk starts after it.
    pub after: Option<Vec<KeyVal>>,
    /// Every chunk of the segment is done.
    pub done: bool,
}

/// Where a table's snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Requested or in progress; resumed after a restart.
    Running,
    /// Every segment done.
    Done,
    /// Stopped with an error; a new request starts it again from scratch.
    Failed,
}

/// The durable progress of one table's snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableProgress {
    /// `db.table`.
    pub table: String,
    /// Id of this run (request time, ms), to tell runs apart in logs.
    pub run: String,
    /// What started it: `initial`, `signal`, `when_needed`.
    pub trigger: String,
    /// Running, done or failed.
    pub state: State,
    /// The key ranges; empty until planned.
    pub segments: Vec<Segment>,
    /// Rows produced and acknowledged by completed chunks.
    pub rows: u64,
    /// Completed chunks.
    pub chunks: u64,
    /// Row estimate of the table when planned (`information_schema.TABLES.TABLE_ROWS`).
    pub estimated_rows: u64,
    /// The error of a failed run.
    #[serde(default)]
    pub error: Option<String>,
}

impl TableProgress {
    /// A new, unplanned run.
    pub fn requested(table: &str, trigger: &str, now_ms: i64) -> Self {
        TableProgress {
            table: table.to_string(),
            run: now_ms.to_string(),
            trigger: trigger.to_string(),
            state: State::Running,
            segments: Vec::new(),
            rows: 0,
            chunks: 0,
            estimated_rows: 0,
            error: None,
        }
    }
}

/// The record key of `table`'s progress.
pub fn record_key(source_name: &str, table: &str) -> String {
    format!("{source_name}:snapshot:{table}")
}

/// Reads the latest progress record of every table of `source_name` (blocking; a few seconds
/// at most on a compacted topic).
pub fn load_all(
    kafka: &KafkaConfig,
    topic: &str,
    source_name: &str,
) -> Result<HashMap<String, TableProgress>, SnapshotError> {
    let kerr = |e: rdkafka::error::KafkaError| SnapshotError::Kafka(e.to_string());
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    let consumer: BaseConsumer = c
        .set(
            "group.id",
            format!("cdcsync-snapshot-progress-{source_name}"),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(kerr)?;
    let mut out = HashMap::new();
    let (low, high) = match consumer.fetch_watermarks(topic, 0, Duration::from_secs(15)) {
        Ok(w) => w,
        Err(rdkafka::error::KafkaError::MetadataFetch(_)) => return Ok(out),
        Err(e) => return Err(kerr(e)),
    };
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(kerr)?;
    consumer.assign(&tpl).map_err(kerr)?;
    let prefix = format!("{source_name}:snapshot:");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(SnapshotError::Kafka(format!(
                "reading snapshot progress from {topic} timed out"
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(kerr)?;
        if let Some(table) = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix(&prefix))
        {
            match m.payload() {
                None => {
                    out.remove(table);
                }
                Some(p) => {
                    let rec: TableProgress = serde_json::from_slice(p).map_err(|e| {
                        SnapshotError::Kafka(format!(
                            "snapshot progress at {topic}@{} is not valid: {e}",
                            m.offset()
                        ))
                    })?;
                    out.insert(table.to_string(), rec);
                }
            }
        }
        if m.offset() >= high - 1 {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_round_trip_through_json() {
        let vals = [
            Value::Int(-5),
            Value::UInt(u64::MAX),
            Value::Bytes(vec![0, 1, 255]),
            Value::Double(1.5),
            Value::Date(2026, 11, 28, 1, 2, 3, 4),
            Value::Time(true, 1, 2, 3, 4, 5),
        ];
        for v in vals {
            let k = KeyVal::from_value(&v).unwrap();
            let back: KeyVal = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
            assert_eq!(back.to_value(), v);
        }
        assert!(KeyVal::from_value(&Value::NULL).is_none());
    }
}
