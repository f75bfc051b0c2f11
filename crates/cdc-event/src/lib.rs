//! The change-event wire format of cdcsync: what the reader writes to Kafka and the applier reads.
//!
//! This crate owns the contract documented in `docs/event-format.md` and does no I/O. The
//! envelope is Debezium's JSON change-event envelope (`before`, `after`, `source`, `op`,
//! `ts_ms`) so that existing consumers understand the topics, plus what exactly-once apply needs:
//!
//! * a deterministic [`EventId`] (the same change read twice gets the same id), which the applier
//!   records in its processed-message table, and
//! * a [`Version`] that is monotonic per source and comparable, derived from the binlog
//!   coordinates, which the applier's version guard uses so that a stale event never overwrites a
//!   newer row;
//! * a [`TableSchema`] with exact column types so that the applier can create and evolve target
//!   tables without guessing.

mod envelope;
mod position;
mod schema;

pub use envelope::{key_json, ChangeEvent, Op, SnapshotMarker, Source, CONNECTOR_VERSION};
pub use position::{BinlogPosition, Checkpoint, EventId, Flavor, Version, VersionError};
pub use schema::{ColumnSchema, ColumnType, TableId, TableSchema};

/// The Kafka topic for a table: `<prefix>.<db>.<table>`, as Debezium names them.
pub fn topic_name(prefix: &str, table: &TableId) -> String {
    format!("{prefix}.{}.{}", table.db, table.table)
}
