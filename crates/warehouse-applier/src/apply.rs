//! Applying one partition's batch to PostgreSQL in one transaction, set-based.
//!
//! # Why the warehouse ends equal to the source, with nothing applied twice
//!
//! Every event carries a full row image (the `after` image, or the `before` image of a delete)
//! and a source version that orders it against every other change of the same row. The effect of
//! an event is therefore "make the row equal to this image at this version", and the target row
//! remembers the version that last wrote it (`_cdc_version`). The upsert only wins when
//! `target._cdc_version < EXCLUDED._cdc_version` (strictly: an equal version is the same event
//! again). Applying a set of events under this guard yields the image of the highest version
//! whatever the order and however often each is applied; so:
//!
//! * a duplicate delivery, a replay from offset 0, or an event older than what is stored changes
//!   nothing;
//! * within a batch, only the highest-version event per key (the *winner*) needs to be written:
//!   applying the others first would be overwritten by it in the same transaction. Collapsing in
//!   the client also avoids `ON CONFLICT DO UPDATE` touching a row twice in one statement.
//! * a soft delete is the before image with `_cdc_deleted = true` at the delete's version, so a
//!   later-arriving older upsert loses against it; in hard mode the row is removed and the
//!   delete's version is kept in `<meta>.tombstones`, which upserts consult for the same effect.
//!
//! The processed-message table records each event id in the same transaction as its effect
//! (`INSERT ... ON CONFLICT DO NOTHING RETURNING`), and only winners whose id was fresh are
//! written. A winner whose id was already processed was applied by an earlier transaction, so
//! the row's version is at least the winner's and every other event of that key in the batch is
//! older: skipping them is what the guard would do anyway. Because the id insert and the row
//! write commit atomically, and offsets are stored only after the commit (see `worker`), a crash
//! at any point leaves either both or neither, and redelivery is absorbed.
//!
//! # Snapshot rows (`op = "r"`) skip the processed-message table
//!
//! The ids only matter for events the guard alone would not absorb, and snapshot rows are not
//! among them. A snapshot row of key `k` read at position `P` carries the version `V = (F, P, 0)`
//! (see the reader's snapshot module): no streamed event has version `V`, every streamed change
//! committed before the read has a smaller version and every later one a larger. So:
//!
//! * the same snapshot row delivered again (Kafka redelivery, a repeated chunk at the same
//!   position) carries the same `V`; the stored row's version is then `>= V` (the first delivery
//!   or a later change wrote it) and the strict guard `t._cdc_version < EXCLUDED._cdc_version`
//!   ignores the repeat;
//! * a snapshot row older than a change already applied to `k` (a stream update or delete with a
//!   version `> V`) loses to the guard, and in hard-delete mode to the tombstone check, which
//!   snapshot rows go through exactly like upserts (`tb.version >= s._cdc_ver` keeps them out);
//! * a snapshot row newer than the stored row wins, as it must: the read saw every change of `k`
//!   below `V`;
//! * a later chunk at another position is a newer, correct read of the same rows and wins.
//!
//! Within a batch, winners are still chosen by version across snapshot and streamed events of a
//! key, and a winner that is a snapshot row is always written (under the guard). If the winner is
//! a streamed event whose id was already processed, the row's version is at least the winner's,
//! which is above every snapshot row of that key in the batch, so skipping them is again what
//! the guard would do. Skipping the ids saves, per snapshot row, one index insert into
//! `processed_messages` and the WAL for it (about 40% of the apply cost in MEASURED.md), and the
//! retention job has nothing to prune for a snapshot of millions of rows.
//!
//! What the metrics can still tell apart: a snapshot row is never a *duplicate* (no id was
//! looked up), except for an id repeated within one batch; a snapshot row the guard ignored,
//! whether stale or a repeat of an earlier delivery, counts as *stale*. As for streamed events,
//! `rows_applied` counts every event whose effect is in the committed transaction, including
//! those the guard ignored.
//!
//! # Shape of the SQL (one round trip per step, never one per row)
//!
//! Per run of events of one table and schema: `CREATE TEMP TABLE ... ON COMMIT DROP AS SELECT`
//! from the target (so the staging columns have the target's exact types), `COPY ... FROM STDIN`
//! of every event (ids for all, row values for winners only), then one statement whose CTEs
//! insert the ids, upsert the fresh winners with the version guard (and in hard mode delete and
//! record tombstones), and return counts. `COPY` text was chosen over `UNNEST` arrays because the
//! row is encoded once while decoding, with no per-value allocations (`docs/benchmarks.md`).

use std::collections::HashMap;
use std::sync::Arc;

use cdc_event::Op;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::config::DeleteMode;
use crate::decode::Prepared;
use crate::error::ApplyError;
use crate::metrics::TableCounts;
use crate::tables::{Tables, Target};
use crate::types::{escape_into, ident};

/// What one partition worker needs to apply batches.
pub struct Applier {
    /// Connection pool, sized to the concurrency bound.
    pub pool: PgPool,
    /// Target table cache.
    pub tables: Tables,
    /// Meta schema (processed messages, tombstones).
    pub meta_schema: String,
    /// Soft or hard deletes.
    pub delete_mode: DeleteMode,
    /// Maps a source db to a PostgreSQL schema.
    pub warehouse: cdc_config::WarehouseConfig,
}

/// Result of applying a batch: counts per source table and the events rejected by PostgreSQL.
#[derive(Debug, Default)]
pub struct Applied {
    /// Counts per `db.table`.
    pub tables: Vec<(String, TableCounts)>,
    /// Indexes (into the input) of events PostgreSQL rejected, with the error.
    pub rejected: Vec<(usize, String)>,
    /// `source.ts_ms` of the events that were applied (for the latency histogram), only filled
    /// when the batch had no duplicates, so replays do not pollute the histogram.
    pub source_ts_ms: Vec<i64>,
}

/// A run: consecutive events of one table with one schema.
struct Run<'a> {
    target: Arc<Target>,
    label: String,
    events: Vec<(usize, &'a Prepared)>,
}

impl Applier {
    /// Applies `events` (in offset order) in one transaction. On a data error the transaction is
    /// retried with one savepoint per event, and the events PostgreSQL rejects are returned in
    /// [`Applied::rejected`] while the rest commit.
    pub async fn apply(
        &self,
        topic: &str,
        partition: i32,
        events: &[Prepared],
    ) -> Result<Applied, ApplyError> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        // A definite error preparing a later run (a table that may not be created or widened)
        // still lets the earlier runs commit, so the applier stops exactly at the first event it
        // cannot apply; that event's offset is never stored.
        let (runs, stop) = self.runs(events).await;
        if !runs.is_empty() {
            let applied = match self.apply_runs(topic, partition, &runs).await {
                Err(ApplyError::Data(e)) => {
                    tracing::info!(topic, partition, error = %e, "data error in batch; retrying row by row to isolate it");
                    self.apply_row_by_row(topic, partition, &runs).await
                }
                other => other,
            };
            if stop.is_none() {
                return applied;
            }
            applied?;
        }
        match stop {
            Some(e) => Err(e),
            None => Ok(Applied::default()),
        }
    }

    async fn runs<'a>(&self, events: &'a [Prepared]) -> (Vec<Run<'a>>, Option<ApplyError>) {
        let mut runs: Vec<Run<'a>> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if let Some(last) = runs.last_mut() {
                let (_, first) = last.events[0];
                if Arc::ptr_eq(&first.schema, &e.schema) && first.table == e.table {
                    last.events.push((i, e));
                    continue;
                }
            }
            let schema = self.warehouse.target_schema(&e.table.db).to_string();
            match self
                .tables
                .ensure(&self.pool, &schema, &e.table.table, &e.schema)
                .await
            {
                Ok(target) => runs.push(Run {
                    target,
                    label: format!("{}.{}", e.table.db, e.table.table),
                    events: vec![(i, e)],
                }),
                Err(err) => return (runs, Some(err)),
            }
        }
        (runs, None)
    }

    async fn apply_runs(
        &self,
        topic: &str,
        partition: i32,
        runs: &[Run<'_>],
    ) -> Result<Applied, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let mut out = Applied::default();
        for (n, run) in runs.iter().enumerate() {
            let (counts, fresh_ts) = self
                .apply_run(&mut tx, n, topic, partition, run, &run.events)
                .await?;
            merge(&mut out, &run.label, counts, fresh_ts);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn apply_row_by_row(
        &self,
        topic: &str,
        partition: i32,
        runs: &[Run<'_>],
    ) -> Result<Applied, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let mut out = Applied::default();
        let mut n = 0;
        for run in runs {
            for one in &run.events {
                n += 1;
                sqlx::query("SAVEPOINT cdcsync_row")
                    .execute(&mut *tx)
                    .await?;
                match self
                    .apply_run(&mut tx, n, topic, partition, run, std::slice::from_ref(one))
                    .await
                {
                    Ok((counts, ts)) => {
                        sqlx::query("RELEASE SAVEPOINT cdcsync_row")
                            .execute(&mut *tx)
                            .await?;
                        merge(&mut out, &run.label, counts, ts);
                    }
                    Err(ApplyError::Data(e)) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT cdcsync_row")
                            .execute(&mut *tx)
                            .await?;
                        out.rejected.push((one.0, e));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Stages and applies `events` (all of `run`'s table and schema) in the open transaction.
    async fn apply_run(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        n: usize,
        topic: &str,
        partition: i32,
        run: &Run<'_>,
        events: &[(usize, &Prepared)],
    ) -> Result<(TableCounts, Vec<i64>), ApplyError> {
        let schema = &events[0].1.schema;
        let target = &run.target;
        let stage = format!("_cdc_stage_{n}");
        let cols: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();

        // Winners: the highest version per key; duplicates of an id within the batch are
        // staged once.
        let mut winners: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        let mut seen_ids: std::collections::HashSet<&str> =
            std::collections::HashSet::with_capacity(events.len());
        let mut in_batch_dups = 0u64;
        let mut staged: Vec<&Prepared> = Vec::with_capacity(events.len());
        for (_, e) in events {
            if !seen_ids.insert(e.message_id.as_str()) {
                in_batch_dups += 1;
                continue;
            }
            let idx = staged.len();
            staged.push(e);
            winners
                .entry(e.key.as_str())
                .and_modify(|w| {
                    if staged[*w].version < e.version {
                        *w = idx;
                    }
                })
                .or_insert(idx);
        }
        let mut is_winner = vec![false; staged.len()];
        for &w in winners.values() {
            is_winner[w] = true;
        }

        let conn: &mut PgConnection = tx;
        sqlx::query(&format!(
            "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT \
             NULL::text COLLATE \"C\" AS _cdc_mid, NULL::bigint AS _cdc_off, NULL::numeric(39,0) AS _cdc_ver, \
             NULL::boolean AS _cdc_del, NULL::bigint AS _cdc_ts, NULL::text AS _cdc_op, NULL::boolean AS _cdc_win, \
             NULL::text COLLATE \"C\" AS _cdc_key, {} FROM {} t WITH NO DATA",
            cols.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", "),
            target.qualified
        ))
        .execute(&mut *conn)
        .await?;

        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {stage} (_cdc_mid, _cdc_off, _cdc_ver, _cdc_del, _cdc_ts, _cdc_op, _cdc_win, _cdc_key, {}) FROM STDIN",
                cols.join(", ")
            ))
            .await?;
        let null_row: Vec<u8> = {
            let mut v = Vec::new();
            for i in 0..cols.len() {
                if i > 0 {
                    v.push(b'\t');
                }
                v.extend_from_slice(b"\\N");
            }
            v
        };
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        for (i, e) in staged.iter().enumerate() {
            use std::io::Write;
            escape_into(&mut buf, &e.message_id);
            let _ = write!(
                buf,
                "\t{}\t{}\t{}\t{}\t{}\t{}\t",
                e.offset,
                e.version,
                if e.op == Op::Delete { 't' } else { 'f' },
                e.source_ts_ms,
                e.op.code(),
                if is_winner[i] { 't' } else { 'f' },
            );
            if is_winner[i] {
                escape_into(&mut buf, &e.key);
                buf.push(b'\t');
                buf.extend_from_slice(&e.row);
            } else {
                buf.extend_from_slice(b"\\N\t");
                buf.extend_from_slice(&null_row);
            }
            buf.push(b'\n');
            if buf.len() >= 256 * 1024 {
                copy.send(std::mem::take(&mut buf)).await?;
                buf.reserve(256 * 1024);
            }
        }
        if !buf.is_empty() {
            copy.send(buf).await?;
        }
        copy.finish().await?;

        let n_read = staged.iter().filter(|e| e.op == Op::Read).count();
        let only_snapshot = n_read == staged.len();
        let sql = if only_snapshot {
            self.snapshot_statement(&stage, target, &cols, winners.len() as i64)
        } else {
            self.statement(&stage, target, &cols, n_read > 0)
        };
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(&sql)
            .bind(topic)
            .bind(partition)
            .bind(&target.name)
            .fetch_all(&mut *conn)
            .await?;
        let mut counts = TableCounts::default();
        let mut fresh = 0u64;
        let mut fresh_winners = 0u64;
        let mut written = 0u64;
        for (op, n_fresh, n_win, n_written) in rows {
            let i = match op.as_str() {
                "c" => 0,
                "u" => 1,
                "d" => 2,
                _ => 3,
            };
            counts.applied[i] += n_fresh as u64;
            fresh += n_fresh as u64;
            fresh_winners += n_win as u64;
            written = n_written as u64;
        }
        counts.duplicates = in_batch_dups + (staged.len() as u64 - fresh);
        counts.stale = fresh_winners.saturating_sub(written);
        let ts = if counts.duplicates == 0 {
            staged.iter().map(|e| e.source_ts_ms).collect()
        } else {
            Vec::new()
        };
        Ok((counts, ts))
    }

    /// The statement for a run made only of snapshot rows: no id is recorded (module docs), so
    /// there is no `fresh` set to build, join or count; the winners are upserted under the same
    /// guard (and in hard mode the same tombstone check) as in [`Self::statement`]. Snapshot rows
    /// are never deletes, so nothing is deleted or tombstoned. It returns the same row shape:
    /// every staged event is fresh (`count(*)`), `winners` of them are winners, and `up` counts
    /// the rows written.
    fn snapshot_statement(
        &self,
        stage: &str,
        target: &Target,
        cols: &[String],
        winners: i64,
    ) -> String {
        let (col_list, s_cols, keys, set) = upsert_parts(target, cols);
        let up_filter = match self.delete_mode {
            DeleteMode::Soft => String::new(),
            DeleteMode::Hard => self.tombstone_filter(),
        };
        format!(
            "WITH up AS (\
               INSERT INTO {t} AS t ({col_list}, _cdc_version, _cdc_deleted, _cdc_source_ts, _cdc_applied_at) \
               SELECT {s_cols}, s._cdc_ver, s._cdc_del, to_timestamp(s._cdc_ts / 1000.0), clock_timestamp() \
               FROM {stage} s WHERE s._cdc_win{up_filter} \
               ON CONFLICT ({keys}) DO UPDATE SET {set} WHERE t._cdc_version < EXCLUDED._cdc_version \
               RETURNING 1) \
             SELECT 'r'::text, (SELECT count(*) FROM {stage}), {winners}::bigint, (SELECT count(*) FROM up)",
            t = target.qualified,
        )
    }

    /// Hard mode: an upsert loses to a tombstone at its version or later.
    fn tombstone_filter(&self) -> String {
        format!(
            " AND NOT s._cdc_del AND NOT EXISTS (SELECT 1 FROM {}.tombstones tb \
             WHERE tb.target_table = $3 AND tb.row_key = s._cdc_key AND tb.version >= s._cdc_ver)",
            ident(&self.meta_schema)
        )
    }

    /// The one statement that records ids and applies the fresh winners of a staged run.
    /// Parameters: `$1` topic, `$2` partition, `$3` target name (tombstone key). With
    /// `has_snapshot`, snapshot rows (`op = "r"`) record no id and count as fresh (module docs).
    fn statement(
        &self,
        stage: &str,
        target: &Target,
        cols: &[String],
        has_snapshot: bool,
    ) -> String {
        let m = ident(&self.meta_schema);
        let t = &target.qualified;
        let (col_list, s_cols, keys, set) = upsert_parts(target, cols);
        let key_cols: Vec<String> = target.key.iter().map(|k| ident(k)).collect();
        // The run's events that need their id recorded, the winners to write, and how the
        // counting query tells fresh events (ids newly recorded, and snapshot rows) apart.
        let (id_filter, fresh_winner, count_from) = if has_snapshot {
            (
                " WHERE s._cdc_op <> 'r'",
                "s._cdc_win AND (s._cdc_op = 'r' OR s._cdc_mid IN (SELECT message_id FROM fresh))",
                format!(
                    "{stage} s LEFT JOIN fresh f ON f.message_id = s._cdc_mid \
                     WHERE s._cdc_op = 'r' OR f.message_id IS NOT NULL"
                ),
            )
        } else {
            (
                "",
                "s._cdc_win AND s._cdc_mid IN (SELECT message_id FROM fresh)",
                format!("{stage} s JOIN fresh f ON f.message_id = s._cdc_mid"),
            )
        };
        let (up_filter, extra) = match self.delete_mode {
            DeleteMode::Soft => (String::new(), String::new()),
            DeleteMode::Hard => {
                let key_match = key_cols
                    .iter()
                    .map(|k| format!("t.{k} = s.{k}"))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                (
                    self.tombstone_filter(),
                    format!(
                        ", del AS (DELETE FROM {t} t USING {stage} s WHERE {fresh_winner} AND s._cdc_del \
                         AND {key_match} AND t._cdc_version < s._cdc_ver RETURNING 1), \
                         tomb AS (INSERT INTO {m}.tombstones AS tb (target_table, row_key, version, deleted_at) \
                         SELECT $3, s._cdc_key, s._cdc_ver, now() FROM {stage} s WHERE {fresh_winner} AND s._cdc_del \
                         ON CONFLICT (target_table, row_key) DO UPDATE SET version = EXCLUDED.version, \
                         deleted_at = EXCLUDED.deleted_at WHERE tb.version < EXCLUDED.version RETURNING 1)"
                    ),
                )
            }
        };
        let written = match self.delete_mode {
            DeleteMode::Soft => "(SELECT count(*) FROM up)".to_string(),
            DeleteMode::Hard => {
                "(SELECT count(*) FROM up) + (SELECT count(*) FROM del)".to_string()
            }
        };
        format!(
            "WITH fresh AS (\
               INSERT INTO {m}.processed_messages AS p (message_id, topic, partition, kafka_offset, applied_at) \
               SELECT s._cdc_mid, $1, $2, s._cdc_off, now() FROM {stage} s{id_filter} \
               ON CONFLICT (message_id) DO NOTHING RETURNING p.message_id), \
             up AS (\
               INSERT INTO {t} AS t ({col_list}, _cdc_version, _cdc_deleted, _cdc_source_ts, _cdc_applied_at) \
               SELECT {s_cols}, s._cdc_ver, s._cdc_del, to_timestamp(s._cdc_ts / 1000.0), clock_timestamp() \
               FROM {stage} s WHERE {fresh_winner}{up_filter} \
               ON CONFLICT ({keys}) DO UPDATE SET {set} WHERE t._cdc_version < EXCLUDED._cdc_version \
               RETURNING 1){extra} \
             SELECT s._cdc_op, count(*), count(*) FILTER (WHERE s._cdc_win), {written} \
             FROM {count_from} GROUP BY s._cdc_op",
        )
    }
}

/// The parts of the guarded upsert shared by both statements: the target's column list, the
/// same columns from the stage `s`, the conflict keys and the `SET` list.
fn upsert_parts(target: &Target, cols: &[String]) -> (String, String, String, String) {
    let key_cols: Vec<String> = target.key.iter().map(|k| ident(k)).collect();
    let s_cols = cols
        .iter()
        .map(|c| format!("s.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut set: Vec<String> = cols
        .iter()
        .filter(|c| !key_cols.contains(c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    for b in crate::tables::BOOKKEEPING {
        set.push(format!("{b} = EXCLUDED.{b}"));
    }
    (cols.join(", "), s_cols, key_cols.join(", "), set.join(", "))
}

fn merge(out: &mut Applied, label: &str, c: TableCounts, ts: Vec<i64>) {
    match out.tables.iter_mut().find(|(l, _)| l == label) {
        Some((_, t)) => {
            for i in 0..4 {
                t.applied[i] += c.applied[i];
            }
            t.duplicates += c.duplicates;
            t.stale += c.stale;
        }
        None => out.tables.push((label.to_string(), c)),
    }
    out.source_ts_ms.extend(ts);
}
