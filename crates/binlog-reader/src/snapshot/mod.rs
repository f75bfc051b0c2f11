//! Snapshots: a chunked, parallel, resumable copy of whole tables that merges with the live
//! stream through the applier's version guard, without table locks or long transactions.
//!
//! # Why the warehouse converges to the source (the merge argument)
//!
//! The applier stores with every row the [`Version`](cdc_event::Version) of the event that last
//! wrote it and lets an event win only when its version is strictly greater; deletes keep their
//! version (soft delete or tombstone table). Streamed changes carry the version of their rows
//! event, `(binlog file, start offset, row index)`, which orders exactly like the binlog.
//!
//! A snapshot chunk is read in its own short transaction on MariaDB:
//!
//! ```sql
//! START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;
//! SHOW STATUS LIKE 'binlog_snapshot_%';          -- file F, position P
//! SELECT ... WHERE (pk) > (last) ORDER BY pk LIMIT n;
//! COMMIT;
//! ```
//!
//! MariaDB takes the read view and the binlog coordinates together under the lock that orders
//! commits (`LOCK_commit_ordered`), so `(F, P)` is *exactly* the boundary of the read view: every
//! transaction whose events lie before `P` in the binlog is visible to the `SELECT`, and none
//! after it is. This is the point of the status variable: `SHOW MASTER STATUS` read just before
//! the `SELECT` is *not* safe, because a transaction is written to the binlog before it commits
//! in InnoDB (two-phase commit); such a position can lie after a transaction the `SELECT` does
//! not see yet, and the stale snapshot row would then carry a version above that transaction's
//! change and overwrite it (a lost update).
//!
//! Every row of the chunk gets the version `V = (F, P, 0)`. `P` is a transaction boundary (the
//! next transaction's GTID event starts there), so no streamed event has version `V` itself, every
//! rows event of a transaction before `P` has a version `< V`, and every rows event of a
//! transaction after `P` (including the events of a compressed TRANSACTION_PAYLOAD, which start
//! after its GTID event) has a version `> V`.
//!
//! The argument below needs only one premise about the read view, weaker than what MariaDB
//! gives:
//!
//! **(A)** every transaction before `P` in the binlog is visible to the `SELECT`.
//!
//! It does *not* need the converse: transactions after `P` may be visible too (on MySQL some
//! are; see below). It also uses a fact about InnoDB: a transaction changing key `k` holds a lock
//! on `k`'s record (exclusive on a changed or delete-marked record; the duplicate-key check of an
//! insert waits on it) until it commits, and it is written to the binlog after its changes and
//! before its commit. So the transactions that change `k` are serialised: each writes `k` (and
//! then the binlog) only after the previous one committed, their binlog order is the order in
//! which they changed `k`, and the ones a read view sees form a **prefix** `c1 .. cm` of `k`'s
//! changes `c1 .. cn` (if `cj` committed before the read view, every earlier one did).
//!
//! By (A) every change of `k` before `P` is in that prefix, so the changes the `SELECT` misses,
//! `c(m+1) .. cn`, all lie after `P` and have versions `> V`. Now take any key `k` of the chunk's
//! key range:
//!
//! * `k` exists in the read view, with the image after `cm`: the snapshot event writes exactly
//!   that image with `V`. Streamed events before `P` lose against `V` whatever order they arrive
//!   in. If `k` changed after the read view (`n > m`), the last change `cn` has a version `> V`,
//!   wins whatever the arrival order, and carries a full row image (`binlog_row_image=FULL`), or
//!   is a delete that keeps its version. If not (`n = m`), the row ends either in the snapshot
//!   image (when `cn` lies before `P`) or in `cn`'s own streamed image (when `cn` lies after `P`
//!   but was visible): the same image. Either way the row ends in the image of the last change.
//! * `k` does not exist in the read view (never inserted, or deleted by a visible change — also
//!   one after `P`): the snapshot emits nothing for `k`; the stream alone decides it, as without
//!   a snapshot. An insert after `P` that the read view misses arrives through the stream with a
//!   version `> V`; one it sees is emitted at `V` and its streamed copy (same image) wins.
//!
//! A repair event of reconciliation (`read_rows_consistent`) follows the same cases, plus one:
//! for a key absent from the read view it emits a delete at `V`. Every change it could hide lies
//! before `P` and is already reflected (absent); every later change has a version `> V` and wins.
//!
//! MariaDB satisfies (A) exactly (and its converse): it takes the read view and the binlog
//! coordinates together under the lock that orders commits — but it *reports* them through a
//! status variable kept in shared storage, which a concurrent `SHOW STATUS` of another session
//! can overwrite between fill and read; `clock.rs` serialises and triple-checks the read, and the
//! remaining exposure is recorded in `docs/decisions/0002-snapshot-consistency.md`. MySQL
//! satisfies (A) through the fence described in the next section.
//!
//! This needs the stream to deliver every change after `V`: the stream's durable start position
//! `S0` must be `<= V`. A snapshot therefore waits until the stream has saved a checkpoint (on the
//! very first start the stream saves its start position before reading) and only then opens
//! chunk transactions, whose positions are then `>= S0`. Changes between `S0` and `V` are also
//! streamed; they lose against the snapshot row, which already contains them.
//!
//! Keyset chunks partition the key space: a segment is a half-open range of the leading key
//! column (`(lo, hi]`, the first and last open-ended), and its chunks walk it in key order with
//! `(pk) > (last)` and `LIMIT n`. Each key belongs to exactly one chunk of one segment, so each
//! key is covered by exactly one snapshot read (per run), with that chunk's own `V`. Chunks of
//! different segments (and tables) run concurrently, each with its own `V`; the argument above is
//! per key, so they need no coordination.
//!
//! Repeating a chunk (after a crash, or a failed delivery) is harmless: the same rows at the same
//! position have the same event ids (`EventId::snapshot` = position + table + key) and the
//! applier drops them; at a later position they are a newer correct read. (On MySQL a repeat at
//! the same position may have seen more changes after `P`; each read satisfies the argument on
//! its own, so whichever one the applier keeps is correct.)
//!
//! # Durability and resume
//!
//! Per table, progress (the segments and, per segment, the key of the last completed chunk) is
//! saved in the reader's compacted checkpoint topic under `<source>:snapshot:<db>.<table>`, and
//! only after Kafka acknowledged every event of that chunk (`acks=all`, idempotent producer). A
//! `kill -9` loses at most the chunks in flight; the restarted reader continues every unfinished
//! segment after its saved key.
//!
//! # MySQL: a GTID fence instead of `binlog_snapshot_position`
//!
//! MySQL has no binlog position recorded with the read view, and the obvious substitute — the
//! position of `SHOW BINARY LOG STATUS` next to the `SELECT` — violates (A): with two-phase
//! commit a transaction is written to the binlog (and, with `sync_binlog=1`, synced) *before* it
//! commits in InnoDB, so the reported position can lie after a transaction the read view does not
//! see, whose streamed change would then lose against the stale snapshot row (a lost update; the
//! test `mysql_fence_closes_the_two_phase_commit_window` holds such a window open and shows it).
//! [`SnapshotClock`] (`clock.rs`) closes it with a fence taken *before* the read view:
//!
//! 1. `SHOW BINARY LOG STATUS` gives `(F, P)` and `G = Executed_Gtid_Set`. The server reads `G`
//!    first and then the written end of the binlog `P` (under `LOCK_log`, so at a group boundary).
//!    Every transaction before `P` is in the binlog; the ones not in `G` were in flight (written,
//!    not yet through the engine commit) or committed in between.
//! 2. A non-blocking `COM_BINLOG_DUMP_GTID` that excludes `G` makes the server send only the
//!    transactions not in `G`; their GTID events before `(F, P)` give the set `I`. The dump reads
//!    to the binlog's *synced* end, which can lag `P` for the length of an fsync, so a dump that
//!    ends before reaching `P` is repeated. Now `G ∪ I` holds every transaction before `P`.
//! 3. `WAIT_FOR_EXECUTED_GTID_SET(I)`: MySQL adds a GTID to `gtid_executed` only after the engine
//!    commit of its transaction (the commit stage commits the group in the engines, then updates
//!    `gtid_executed`), so when the wait returns every transaction before `P` is committed.
//! 4. Only then `START TRANSACTION WITH CONSISTENT SNAPSHOT`: its read view is created after all
//!    of them committed, which is (A). Transactions committed after step 1 may be visible as well,
//!    which the argument allows. The chunk's version is `V = (F, P, 0)`.
//!
//! A fence stays valid for every transaction that starts after its wait returned, so it is reused
//! by the chunks of the next two seconds (then the per-chunk cost is the `START TRANSACTION`
//! alone), and the next fence's dump starts at the previous fence's position, before which
//! nothing can be in flight any more; only the first fence of a process scans from the start of
//! the binlog file the server picks. Fences are taken after the stream's first checkpoint, like
//! the MariaDB reads, so `S0 <= V` holds too.
//!
//! The dump runs with server_id 0, as `mysqlbinlog --read-from-remote-server` does: the server
//! then never blocks at the end of the log and never treats the reader's own dump thread as a
//! zombie to kill. The CDC user's `REPLICATION SLAVE` (dump) and `REPLICATION CLIENT`
//! (`SHOW BINARY LOG STATUS`) suffice; `WAIT_FOR_EXECUTED_GTID_SET` needs no privilege. The fence
//! needs `gtid_mode=ON` and refuses otherwise with a definite error (as does an anonymous
//! transaction found before `P`). The options weighed against this one are in
//! `docs/decisions/0002-snapshot-consistency.md`.

mod clock;
mod encode;
pub mod metrics;
pub mod progress;
mod run;
mod schema;
pub mod signal;

use std::collections::BTreeMap;

use cdc_config::ConfigError;
use serde::Deserialize;

pub use clock::SnapshotClock;
pub use run::{SnapshotError, Snapshots};
pub use signal::{request_snapshot, signal_topic, wait_for_snapshots};

/// When the reader snapshots tables by itself.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Only on demand (`cdcsync snapshot --table ...`): for a warehouse that already holds the
    /// tables (loaded by other means) and needs only the changes from now on.
    Never,
    /// On the first start (no checkpoint for this source): snapshot every included table while
    /// streaming from the position saved before the first chunk. Unfinished snapshots resume.
    /// The default, as in Debezium (`snapshot.mode=initial`): a new pipeline starts with a
    /// complete copy rather than with only the rows that happen to change.
    #[default]
    Initial,
    /// As `initial`, and also when the checkpoint can no longer be resumed (binlog purged, GTID
    /// unknown): the checkpoint is reset to the current position and every included table is
    /// snapshotted again, instead of stopping.
    WhenNeeded,
}

/// `[reader.snapshot]`: how tables are copied.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// `initial` (default), `never` or `when_needed`.
    pub mode: SnapshotMode,
    /// Rows per chunk (one short transaction and one progress record each).
    pub chunk_size: u32,
    /// Chunks read concurrently (each worker holds one source connection).
    pub workers: usize,
    /// Key columns for tables without a primary key (`"db.table" = ["col", ...]`); they must
    /// form a NOT NULL unique key. Without an entry such a table is refused.
    pub unique_keys: BTreeMap<String, Vec<String>>,
    /// Show a progress bar per table when stderr is a terminal.
    pub progress_bars: bool,
    /// Seconds between progress log lines per running table.
    pub log_interval_secs: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            mode: SnapshotMode::Initial,
            chunk_size: 10_000,
            workers: 4,
            unique_keys: BTreeMap::new(),
            progress_bars: true,
            log_interval_secs: 10,
        }
    }
}

impl SnapshotConfig {
    /// Checks values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.chunk_size == 0 || self.chunk_size > 1_000_000 {
            return Err(ConfigError::invalid(
                "reader.snapshot.chunk_size",
                "must be between 1 and 1000000",
            ));
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::invalid(
                "reader.snapshot.workers",
                "must be between 1 and 64",
            ));
        }
        if self.log_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "reader.snapshot.log_interval_secs",
                "must be greater than 0",
            ));
        }
        for (t, cols) in &self.unique_keys {
            if t.split_once('.').is_none() || cols.is_empty() {
                return Err(ConfigError::invalid(
                    "reader.snapshot.unique_keys",
                    format!("{t:?} must be db.table with a non-empty list of columns"),
                ));
            }
        }
        Ok(())
    }
}

/// Rows selected in one consistent-snapshot transaction and encoded exactly as snapshot rows.
#[derive(Debug)]
pub struct ConsistentRows {
    /// The version of the read (see [`SnapshotClock::begin`]): every change before it is in the
    /// rows; a change after it is either in the rows too or streamed with a greater version.
    pub position: cdc_event::BinlogPosition,
    /// The table's schema block, the same one snapshot and streamed events carry.
    pub schema: std::sync::Arc<cdc_event::TableSchema>,
    /// `(key JSON, row image JSON)` per row, byte-identical to a snapshot event's key and `after`.
    pub rows: Vec<(String, String)>,
}

/// Selects the rows of `table` matching `where_sql` (trusted SQL built by the caller) in a
/// consistent-snapshot transaction started by `clock` (the same one a snapshot chunk uses, on
/// either flavor) and encodes them with the snapshot encoder. Used by reconciliation
/// (`crates/reconcile`) to build repair events with the same argument as a snapshot chunk.
pub async fn read_rows_consistent(
    conn: &mut mysql_async::Conn,
    clock: &SnapshotClock,
    table: &cdc_event::TableId,
    where_sql: &str,
    zero: crate::config::ZeroDates,
) -> Result<ConsistentRows, SnapshotError> {
    use mysql_async::prelude::Queryable;
    let my = |e: mysql_async::Error| SnapshotError::Source(e.to_string());
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(my)?;
    let info = schema::load(conn, clock.flavor(), table, None).await?;
    let position = clock.begin(conn).await?;
    let result = async {
        let q = |s: &str| format!("`{}`", s.replace('`', "``"));
        let cols: Vec<String> = info.columns.iter().map(|c| q(&c.name)).collect();
        let sql = format!(
            "SELECT {} FROM {}.{} WHERE {where_sql}",
            cols.join(", "),
            q(&table.db),
            q(&table.table)
        );
        // The binary protocol (a prepared statement), as the snapshot reads: exact values.
        let rows: Vec<mysql_async::Row> = conn.exec(sql, ()).await.map_err(my)?;
        let mut img = crate::decode::Image::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let values = row.unwrap();
            encode::encode_row(&info, &values, zero, &mut img).map_err(|e| {
                SnapshotError::Table {
                    table: info.label.clone(),
                    problem: format!("cannot be encoded: {e}"),
                }
            })?;
            out.push((
                String::from_utf8_lossy(&img.key(&info)).into_owned(),
                String::from_utf8_lossy(&img.json).into_owned(),
            ));
        }
        Ok(ConsistentRows {
            position,
            schema: info.schema.clone(),
            rows: out,
        })
    }
    .await;
    let _ = conn.query_drop("COMMIT").await;
    result
}
