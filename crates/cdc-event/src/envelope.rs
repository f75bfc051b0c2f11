//! The Debezium-compatible change-event envelope.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{EventId, TableSchema, Version};

/// The `source.version` field: the cdcsync version that wrote the event.
pub const CONNECTOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The kind of change, as Debezium spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Insert.
    #[serde(rename = "c")]
    Create,
    /// Update.
    #[serde(rename = "u")]
    Update,
    /// Delete.
    #[serde(rename = "d")]
    Delete,
    /// Snapshot read.
    #[serde(rename = "r")]
    Read,
}

impl Op {
    /// The one-letter code, also used as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }
}

/// Debezium's `source.snapshot`: `"false"` while streaming, `"true"` for snapshot rows, `"last"`
/// for the last row of a table's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMarker {
    /// A streamed change.
    False,
    /// A snapshot row.
    True,
    /// The last snapshot row of a table.
    Last,
}

/// Where a change came from: Debezium's `source` block plus cdcsync's `event_id` and
/// `cdc_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// cdcsync version that produced the event.
    pub version: String,
    /// `mysql` or `mariadb`.
    pub connector: String,
    /// Logical name of the source (`source.name` in config); prefixes topics and ids.
    pub name: String,
    /// Commit time of the transaction at the source, ms since the epoch (binlog event time,
    /// second resolution on the server; the snapshot's read time for snapshot rows).
    pub ts_ms: i64,
    /// Snapshot marker.
    pub snapshot: SnapshotMarker,
    /// Source database.
    pub db: String,
    /// Source table.
    pub table: String,
    /// `server_id` of the server that wrote the binlog event.
    pub server_id: u32,
    /// GTID of the transaction (`0-1-23` or `uuid:23`); absent for snapshot rows.
    #[serde(default)]
    pub gtid: Option<String>,
    /// Binlog file of the rows event.
    pub file: String,
    /// Position of the rows event in that file.
    pub pos: u64,
    /// Row index within the rows event.
    pub row: u32,
    /// Deterministic id of this event (see [`EventId`]).
    pub event_id: EventId,
    /// Monotonic, comparable source version (see [`Version`]).
    pub cdc_version: Version,
}

/// One change event: the value of a Kafka message on a table topic.
///
/// The key of the message is the JSON object of the key columns (see `key_json`). A delete is
/// followed by a tombstone: same key, null value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Row image before the change (updates and deletes).
    pub before: Option<Map<String, Value>>,
    /// Row image after the change (creates, updates, snapshot reads).
    pub after: Option<Map<String, Value>>,
    /// Origin of the change.
    pub source: Source,
    /// Kind of change.
    pub op: Op,
    /// When the reader processed the event, ms since the epoch.
    pub ts_ms: i64,
    /// Column types and key of the table at the time of the change.
    pub schema: Arc<TableSchema>,
}

impl ChangeEvent {
    /// The row image that identifies the row: `after` for creates, updates and reads, `before`
    /// for deletes.
    pub fn row(&self) -> Option<&Map<String, Value>> {
        match self.op {
            Op::Delete => self.before.as_ref(),
            _ => self.after.as_ref(),
        }
    }

    /// The Kafka message key: a JSON object of the key columns in key order, serialised the same
    /// way every time so equal keys are equal bytes (and so land in the same partition).
    pub fn key_json(&self) -> Option<String> {
        key_json(&self.schema.primary_key, self.row()?)
    }
}

/// Serialises the key columns of `row` as a JSON object in key order; `None` when a key column
/// is missing.
pub fn key_json(key_columns: &[String], row: &Map<String, Value>) -> Option<String> {
    let mut out = String::with_capacity(32);
    out.push('{');
    for (i, name) in key_columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).ok()?);
        out.push(':');
        out.push_str(&serde_json::to_string(row.get(name)?).ok()?);
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinlogPosition, ColumnSchema, ColumnType};
    use serde_json::json;

    fn sample() -> ChangeEvent {
        let pos = BinlogPosition {
            file: "mysql-bin.000003".into(),
            pos: 1234,
        };
        ChangeEvent {
            before: None,
            after: Some(
                json!({"id": 7, "amount": "12.50"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            source: Source {
                version: CONNECTOR_VERSION.into(),
                connector: "mariadb".into(),
                name: "shop".into(),
                ts_ms: 1_700_000_000_000,
                snapshot: SnapshotMarker::False,
                db: "shop".into(),
                table: "orders".into(),
                server_id: 1,
                gtid: Some("0-1-23".into()),
                file: pos.file.clone(),
                pos: pos.pos,
                row: 0,
                event_id: EventId::streaming("shop", &pos, 0, None),
                cdc_version: Version::at(&pos, 0).unwrap(),
            },
            op: Op::Create,
            ts_ms: 1_700_000_000_100,
            schema: Arc::new(TableSchema {
                columns: vec![
                    ColumnSchema {
                        name: "id".into(),
                        ty: ColumnType::BigInt { unsigned: true },
                        nullable: false,
                    },
                    ColumnSchema {
                        name: "amount".into(),
                        ty: ColumnType::Decimal {
                            precision: 12,
                            scale: 2,
                        },
                        nullable: true,
                    },
                ],
                primary_key: vec!["id".into()],
            }),
        }
    }

    #[test]
    fn envelope_round_trips_with_debezium_field_names() {
        let e = sample();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["op"], "c");
        assert_eq!(v["source"]["snapshot"], "false");
        assert_eq!(v["source"]["event_id"], "shop:mysql-bin.000003:1234:0");
        assert!(v["source"]["cdc_version"].is_string());
        assert_eq!(v["before"], Value::Null);
        let back: ChangeEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn key_is_stable_and_in_key_order() {
        let e = sample();
        assert_eq!(e.key_json().unwrap(), r#"{"id":7}"#);
        let row = json!({"b": "x", "a": 1}).as_object().unwrap().clone();
        assert_eq!(
            key_json(&["b".into(), "a".into()], &row).unwrap(),
            r#"{"b":"x","a":1}"#
        );
        assert!(key_json(&["missing".into()], &row).is_none());
    }
}
