//! One reconciliation run of one table: chunked digests, drill-down, re-check, repair.
//!
//! # Why a clean result means the tables agree
//!
//! The source table is cut into keyset ranges `(lo, hi]` on its primary key (chunk bounds come
//! from the source only; the last range is open-ended, so warehouse rows beyond the last source
//! key are in it too, and every key of either table lies in exactly one range). For each range,
//! both sides compute `count` and the XOR of a 64-bit row hash, where the row hash is the first 64
//! bits of MD5 (SHA-256 on MySQL 9, which has no `MD5()`) of the row text: every column, key
//! included, as its digest piece (`canon::Piece`), a form that splits back into the values, so
//! equal row texts mean equal rows. A missing, extra or changed row changes the count or,
//! except with probability about 2⁻⁶⁴ per range, the XOR. Equal rows whose pieces differ (a
//! MySQL JSON double in exponent form) only cost a drill-down, which compares exactly. The warehouse side counts only live
//! rows (`NOT _cdc_deleted`), so a soft-deleted row is "deleted" as the issue defines it.
//!
//! A range whose digests differ is drilled down: both sides' rows of the range are read with
//! their canonical values and compared key by key, which names each missing, extra and
//! mismatched row and the columns that differ. Memory is bounded by one range per worker.
//!
//! # Why changes in flight are not reported
//!
//! The source and the warehouse are read at slightly different times, and the pipeline lags the
//! source, so a row being changed can differ for a moment without any drift. Every difference is
//! therefore re-checked: after a pause, the source position is read, then the source row and the
//! warehouse row are read again. A row that has converged was a change in flight and is only
//! counted (`in_flight`). A row that still differs is checked again until
//! `reconcile.recheck_timeout_ms` has passed; what persists that long is reported, with the
//! warehouse row's `_cdc_version` and the source position observed before the last read. The
//! wait is bounded so that a run ends even when the pipeline is stopped (then the warehouse is
//! genuinely behind, and that is what the report says).
//!
//! # Why a repair cannot make things worse
//!
//! A repair is a change event like a snapshot row's: the source position `P` is read, then the
//! row is selected, and the event carries `Version::new(file(P), pos(P), 0)`. Every change that
//! committed before `P` is in the selected row, so the event is newer than anything the applier
//! has applied for that key; every change that commits after `P` has a larger version and wins
//! over the repair in the applier's version guard, in whatever order the two arrive. A row gone
//! from the source gets a delete at the same version. The events go to the table's topic with
//! the table's key, so per-key ordering and the applier's idempotency hold as for any change.
//! A warehouse row whose version is already at or beyond `P` (written by something other than
//! the pipeline) cannot be overridden by the guard; it is reported and left alone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdc_config::{KafkaConfig, SourceConfig, WarehouseConfig};
use cdc_event::{BinlogPosition, TableId, Version};
use futures::{StreamExt, TryStreamExt};
use mysql_async::prelude::Queryable;
use sqlx::Row as _;

use crate::canon::RustCanon;
use crate::config::ReconcileConfig;
use crate::error::ReconcileError;
use crate::metrics;
use crate::plan::{Key, Part, Range, RowHash, TablePlan};
use crate::report::{Difference, Kind, Report};
use crate::schema::{self, Flavor};

/// A connected reconciler: pools on both sides, reusable for many runs (the daemon keeps one).
pub struct Reconciler {
    pub(crate) cfg: ReconcileConfig,
    pub(crate) source: SourceConfig,
    pub(crate) warehouse: WarehouseConfig,
    pub(crate) kafka: KafkaConfig,
    pub(crate) my: mysql_async::Pool,
    pub(crate) pg: sqlx::PgPool,
    pub(crate) flavor: Flavor,
    limiter: RateLimiter,
}

/// A row with canonical values, from either side.
#[derive(Debug)]
pub(crate) struct CanonRow {
    pub(crate) vals: Vec<Option<String>>,
    pub(crate) deleted: bool,
    pub(crate) version: Option<String>,
}

/// A difference before it is confirmed.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) key: Key,
    pub(crate) kind: Kind,
    pub(crate) columns: Vec<String>,
    pub(crate) warehouse_version: Option<String>,
    pub(crate) position: BinlogPosition,
}

#[derive(Default)]
struct ChunkOutcome {
    source_rows: u64,
    warehouse_rows: u64,
    drilled: bool,
    candidates: Vec<Candidate>,
}

/// Spreads source reads so that all workers together stay under `max_rows_per_second`.
struct RateLimiter {
    per_row: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(rows_per_second: u64) -> Self {
        let per_row = if rows_per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(1_000_000_000 / rows_per_second.max(1))
        };
        RateLimiter {
            per_row,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self, rows: u64) {
        if self.per_row.is_zero() {
            return;
        }
        let start = {
            let mut next = self.next.lock().unwrap();
            let start = (*next).max(Instant::now());
            *next = start + self.per_row * rows.min(u32::MAX as u64) as u32;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

impl Reconciler {
    /// Connects to the source and the warehouse (sessions in UTC, so TIMESTAMP values compare
    /// as instants).
    pub async fn connect(
        source: &SourceConfig,
        warehouse: &WarehouseConfig,
        kafka: &KafkaConfig,
        cfg: &ReconcileConfig,
    ) -> Result<Self, ReconcileError> {
        cfg.validate()?;
        let constraints = mysql_async::PoolConstraints::new(0, cfg.parallelism + 2)
            .ok_or_else(|| ReconcileError::Definite("bad pool size".into()))?;
        let opts = binlog_reader::source::client_opts(source)?
            .init(vec![
                "SET time_zone = '+00:00', NAMES utf8mb4",
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ])
            .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints));
        let my = mysql_async::Pool::new(opts);
        let flavor = {
            let mut c = my.get_conn().await?;
            schema::flavor(&mut c).await?
        };
        let pg = sqlx::postgres::PgPoolOptions::new()
            .max_connections(cfg.parallelism as u32 + 2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // UTC and ISO dates make the digest pieces of both sides alike; the
                    // reconciler runs `parallelism` chunks at once already, so a parallel plan
                    // per chunk would only add worker start-up on a busy server.
                    sqlx::Executor::execute(
                        &mut *conn,
                        "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET max_parallel_workers_per_gather = 0",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with({
                use sqlx::ConnectOptions;
                // A digest query covers a whole chunk (50,000 rows by default, about a second
                // on a busy two-core machine): that is the design, not a slow statement worth
                // sqlx's per-statement warning; the run logs and exports its own durations.
                warehouse
                    .connection_url()?
                    .parse::<sqlx::postgres::PgConnectOptions>()?
                    .disable_statement_logging()
            })
            .await?;
        Ok(Reconciler {
            cfg: cfg.clone(),
            source: source.clone(),
            warehouse: warehouse.clone(),
            kafka: kafka.clone(),
            my,
            pg,
            flavor,
            limiter: RateLimiter::new(cfg.max_rows_per_second),
        })
    }

    /// The effective configuration.
    pub fn config(&self) -> &ReconcileConfig {
        &self.cfg
    }

    /// Compares `table` with its warehouse table; with `repair`, produces change events for
    /// what persists. Updates the metrics when the run completes.
    pub async fn run(&self, table: &TableId, repair: bool) -> Result<Report, ReconcileError> {
        let started = Instant::now();
        let plan = Arc::new(self.plan(table).await?);
        let mut report = Report {
            table: plan.label.clone(),
            warehouse_table: format!(
                "{}.{}",
                self.warehouse.target_schema(&table.db),
                table.table
            ),
            ..Report::default()
        };
        metrics::init(std::slice::from_ref(&plan.label));

        // Chunk bounds come from one source connection, lazily; the checks run up to
        // `parallelism` at a time.
        let bound_conn = self.my.get_conn().await?;
        let chunk_rows = self.cfg.chunk_rows;
        let bounds = futures::stream::unfold(Some((bound_conn, None::<Key>)), {
            let plan = plan.clone();
            move |state| {
                let plan = plan.clone();
                async move {
                    let (mut conn, lo) = state?;
                    match next_bound(&mut conn, &plan, lo.as_ref(), chunk_rows).await {
                        Ok(Some(hi)) => Some((
                            Ok(Range {
                                lo,
                                hi: Some(hi.clone()),
                            }),
                            Some((conn, Some(hi))),
                        )),
                        Ok(None) => Some((Ok(Range { lo, hi: None }), None)),
                        Err(e) => Some((Err(e), None)),
                    }
                }
            }
        });
        // The bounds are read ahead in their own task, so that a slot that frees up starts its
        // next chunk at once instead of first waiting for the `OFFSET` query of its bound.
        let (tx, rx) = tokio::sync::mpsc::channel(self.cfg.parallelism);
        tokio::spawn(async move {
            let mut bounds = std::pin::pin!(bounds);
            while let Some(b) = bounds.next().await {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        });
        let bounds =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let mut outcomes = std::pin::pin!(bounds
            .map_ok(|range| {
                let plan = plan.clone();
                async move { self.check_chunk(&plan, range).await }
            })
            .try_buffer_unordered(self.cfg.parallelism));
        let mut candidates = Vec::new();
        while let Some(o) = outcomes.try_next().await? {
            report.chunks += 1;
            report.rows_checked += o.source_rows;
            report.warehouse_rows += o.warehouse_rows;
            report.chunks_mismatched += o.drilled as u64;
            metrics::RowsChecked {
                table: &plan.label,
                rows: o.source_rows,
            }
            .emit();
            for c in o.candidates {
                if candidates.len() < self.cfg.max_differences {
                    candidates.push(c);
                } else {
                    report.not_listed[c.kind as usize] += 1;
                }
            }
        }

        let (persisting, converged) = self.recheck(&plan, candidates).await?;
        report.in_flight = converged;
        let mut differences: Vec<(Candidate, bool)> =
            persisting.into_iter().map(|c| (c, false)).collect();
        if repair && !differences.is_empty() {
            report.repaired = crate::repair::repair(self, &plan, &mut differences).await?;
        }
        differences
            .sort_by(|a, b| (a.0.kind as usize, &a.0.key).cmp(&(b.0.kind as usize, &b.0.key)));
        report.differences = differences
            .into_iter()
            .map(|(c, repaired)| Difference {
                table: plan.label.clone(),
                kind: c.kind,
                key: serde_json::from_str(&plan.key_json(&c.key)).unwrap_or_default(),
                columns: c.columns,
                warehouse_version: c.warehouse_version,
                source_position: c.position.to_string(),
                repaired,
            })
            .collect();
        report.duration_seconds = started.elapsed().as_secs_f64();
        metrics::RunCompleted { report: &report }.emit();
        Ok(report)
    }

    pub(crate) async fn plan(&self, table: &TableId) -> Result<TablePlan, ReconcileError> {
        let mut conn = self.my.get_conn().await?;
        let source = schema::source_schema(&mut conn, table).await?;
        let pg_schema = self.warehouse.target_schema(&table.db);
        let pg_cols = schema::warehouse_columns(&self.pg, pg_schema, &table.table).await?;
        TablePlan::new(table.clone(), source, pg_schema, &pg_cols, self.flavor)
    }

    async fn check_chunk(
        &self,
        plan: &TablePlan,
        range: Range,
    ) -> Result<ChunkOutcome, ReconcileError> {
        self.limiter.acquire(self.cfg.chunk_rows).await;
        let mut conn = self.my.get_conn().await?;
        let (s, w) = tokio::join!(
            source_digest(&mut conn, plan, &range),
            warehouse_digest(&self.pg, plan, &range)
        );
        let (s, w) = (s?, w?);
        let mut out = ChunkOutcome {
            source_rows: s.0,
            warehouse_rows: w.0,
            ..Default::default()
        };
        if s == w {
            return Ok(out);
        }
        // Drill down: both sides' rows of the range, compared key by key; a range larger than
        // `drill_rows` is first cut into sub-ranges of that many source rows, each compared by
        // digest again, so only differing sub-ranges are held in memory (one at a time).
        out.drilled = true;
        if self.cfg.chunk_rows <= self.cfg.drill_rows {
            out.candidates = self.drill(&mut conn, plan, &range).await?;
        } else {
            let mut lo = range.lo.clone();
            loop {
                let next = next_bound(&mut conn, plan, lo.as_ref(), self.cfg.drill_rows).await?;
                let hi = match (next, &range.hi) {
                    (Some(n), Some(h)) if n < *h => Some(n),
                    (Some(n), None) => Some(n),
                    _ => range.hi.clone(),
                };
                let sub = Range {
                    lo: lo.clone(),
                    hi: hi.clone(),
                };
                let (s, w) = tokio::join!(
                    source_digest(&mut conn, plan, &sub),
                    warehouse_digest(&self.pg, plan, &sub)
                );
                if s? != w? {
                    out.candidates
                        .extend(self.drill(&mut conn, plan, &sub).await?);
                }
                if hi == range.hi {
                    break;
                }
                lo = hi;
            }
        }
        tracing::debug!(table = %plan.label, ?range, differences = out.candidates.len(), "chunk digests differ; drilled down");
        Ok(out)
    }

    /// Both sides' rows of `range`, compared key by key, at the source position read first.
    async fn drill(
        &self,
        conn: &mut mysql_async::Conn,
        plan: &TablePlan,
        range: &Range,
    ) -> Result<Vec<Candidate>, ReconcileError> {
        let position = source_position(conn, self.flavor).await?;
        let source = source_rows(conn, plan, &plan.my_rows_in(range)).await?;
        let warehouse = warehouse_rows(&self.pg, plan, &plan.pg_rows_in(range)).await?;
        Ok(diff(plan, &source, &warehouse, &position))
    }

    /// Re-reads differing rows until they converge or `recheck_timeout_ms` passes; returns what
    /// persisted and how many converged.
    async fn recheck(
        &self,
        plan: &TablePlan,
        mut pending: Vec<Candidate>,
    ) -> Result<(Vec<Candidate>, u64), ReconcileError> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.recheck_timeout_ms);
        let mut converged = 0;
        while !pending.is_empty() && Instant::now() < deadline {
            let pause = Duration::from_millis(self.cfg.recheck_interval_ms)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            let mut conn = self.my.get_conn().await?;
            let mut next = Vec::with_capacity(pending.len());
            for batch in pending.chunks(1000) {
                let keys: Vec<Key> = batch.iter().map(|c| c.key.clone()).collect();
                let position = source_position(&mut conn, self.flavor).await?;
                let source = source_rows(&mut conn, plan, &plan.my_rows_for(&keys)).await?;
                let warehouse = warehouse_rows(&self.pg, plan, &plan.pg_rows_for(&keys)).await?;
                let now = diff(plan, &source, &warehouse, &position);
                converged += (batch.len() - now.len()) as u64;
                next.extend(now);
            }
            pending = next;
        }
        Ok((pending, converged))
    }
}

/// The source's current binlog position (`SHOW MASTER STATUS`, or `SHOW BINARY LOG STATUS` on
/// MySQL 8.2+).
pub(crate) async fn source_position(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
) -> Result<BinlogPosition, ReconcileError> {
    let sql = match flavor {
        Flavor::Mariadb => "SHOW MASTER STATUS",
        Flavor::Mysql => "SHOW BINARY LOG STATUS",
    };
    let row: Option<mysql_async::Row> = conn.query_first(sql).await?;
    let row = row.ok_or_else(|| {
        ReconcileError::Definite("the source has binary logging off (SHOW MASTER STATUS is empty); cdcsync needs log_bin".into())
    })?;
    let file: Option<String> = row.get(0);
    let pos: Option<u64> = row.get(1);
    match (file, pos) {
        (Some(file), Some(pos)) => Ok(BinlogPosition { file, pos }),
        _ => Err(ReconcileError::Definite(format!(
            "cannot read the binlog position from {sql}"
        ))),
    }
}

fn text(row: &mysql_async::Row, i: usize) -> Option<&str> {
    match row.as_ref(i) {
        Some(mysql_async::Value::Bytes(b)) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

fn parse_key(texts: impl Iterator<Item = Option<String>>) -> Result<Key, ReconcileError> {
    texts
        .map(|t| {
            t.as_deref()
                .and_then(|t| t.parse::<i128>().ok())
                .ok_or_else(|| {
                    ReconcileError::Definite(format!("key value {t:?} is not an integer"))
                })
        })
        .collect()
}

async fn next_bound(
    conn: &mut mysql_async::Conn,
    plan: &TablePlan,
    lo: Option<&Key>,
    n: u64,
) -> Result<Option<Key>, ReconcileError> {
    let row: Option<mysql_async::Row> = conn.query_first(plan.my_next_bound(lo, n)).await?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some(parse_key(
            (0..plan.key.len()).map(|i| text(&row, i).map(str::to_string)),
        )?)),
    }
}

/// `(count, xor)` of the source rows of a range.
async fn source_digest(
    conn: &mut mysql_async::Conn,
    plan: &TablePlan,
    range: &Range,
) -> Result<(u64, u64), ReconcileError> {
    let sql = plan.my_digest(range);
    if plan.my_parts.is_empty() {
        let row: Option<mysql_async::Row> = conn.query_first(sql).await?;
        let row =
            row.ok_or_else(|| ReconcileError::Definite("digest query returned nothing".into()))?;
        let n = text(&row, 0).and_then(|t| t.parse().ok()).unwrap_or(0);
        let x = text(&row, 1).and_then(|t| t.parse().ok()).unwrap_or(0);
        return Ok((n, x));
    }
    // The server sends the row text in segments around the columns made in Rust (JSON on
    // MariaDB, floats); the client makes those pieces and hashes the same bytes the warehouse
    // side hashes.
    let mut result = conn.query_iter(sql).await?;
    let mut acc = Accumulator::new(plan.hash);
    while let Some(row) = result.next().await? {
        acc.start();
        for (i, part) in plan.my_parts.iter().enumerate() {
            let v = match row.as_ref(i) {
                Some(mysql_async::Value::Bytes(b)) => Some(b.as_slice()),
                _ => None,
            };
            acc.part(*part, v, RustCanon::push_source);
        }
        acc.finish();
    }
    Ok((acc.count, acc.xor))
}

/// `(count, xor)` of the live warehouse rows of a range.
async fn warehouse_digest(
    pool: &sqlx::PgPool,
    plan: &TablePlan,
    range: &Range,
) -> Result<(u64, u64), ReconcileError> {
    let sql = plan.pg_digest(range);
    if plan.pg_parts.is_empty() {
        let (n, x) = sqlx::query_as::<_, (i64, i64)>(&sql)
            .fetch_one(pool)
            .await?;
        return Ok((n as u64, x as u64));
    }
    let mut rows = sqlx::query(&sql).fetch(pool);
    let mut acc = Accumulator::new(plan.hash);
    while let Some(row) = rows.try_next().await? {
        acc.start();
        for (i, part) in plan.pg_parts.iter().enumerate() {
            let v: Option<&str> = row.try_get(i)?;
            acc.part(*part, v.map(str::as_bytes), RustCanon::push_warehouse);
        }
        acc.finish();
    }
    Ok((acc.count, acc.xor))
}

/// Finishes row hashes in Rust: the row text assembled from the server's segments and the
/// pieces made here, hashed like the servers hash it (first 64 bits of the row hash, XOR-ed).
struct Accumulator {
    hash: RowHash,
    count: u64,
    xor: u64,
    buf: Vec<u8>,
}

impl Accumulator {
    fn new(hash: RowHash) -> Self {
        Accumulator {
            hash,
            count: 0,
            xor: 0,
            buf: Vec::with_capacity(1024),
        }
    }

    fn start(&mut self) {
        self.buf.clear();
    }

    /// Appends one selected value: a server segment as it is, or a column's piece made here
    /// (its canonical text, nothing for NULL) and its separator.
    fn part(&mut self, part: Part, v: Option<&[u8]>, push: fn(RustCanon, &mut Vec<u8>, &str)) {
        match (part, v) {
            (Part::Sql, v) => self.buf.extend_from_slice(v.unwrap_or_default()),
            (Part::Rust(r), Some(b)) => {
                match std::str::from_utf8(b) {
                    Ok(t) => push(r, &mut self.buf, t),
                    Err(_) => push(r, &mut self.buf, &String::from_utf8_lossy(b)),
                }
                self.buf.push(b',');
            }
            (Part::Rust(_), None) => self.buf.push(b','),
        }
    }

    fn finish(&mut self) {
        self.xor ^= self.hash.first64(&self.buf);
        self.count += 1;
    }
}

/// Source rows with canonical values (JSON brought to canonical text), by key.
pub(crate) async fn source_rows(
    conn: &mut mysql_async::Conn,
    plan: &TablePlan,
    sql: &str,
) -> Result<BTreeMap<Key, CanonRow>, ReconcileError> {
    let nk = plan.key.len();
    let rows: Vec<mysql_async::Row> = conn.query(sql).await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let key = parse_key((0..nk).map(|i| text(&row, i).map(str::to_string)))?;
        let vals = plan
            .cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = text(&row, nk + i);
                match c.rust {
                    Some(r) => t.map(|t| r.source(t)),
                    None => t.map(str::to_string),
                }
            })
            .collect();
        out.insert(
            key,
            CanonRow {
                vals,
                deleted: false,
                version: None,
            },
        );
    }
    Ok(out)
}

/// Warehouse rows (soft-deleted ones included) with canonical values, by key.
pub(crate) async fn warehouse_rows(
    pool: &sqlx::PgPool,
    plan: &TablePlan,
    sql: &str,
) -> Result<BTreeMap<Key, CanonRow>, ReconcileError> {
    let nk = plan.key.len();
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let key = parse_key((0..nk).map(|i| row.try_get::<Option<String>, _>(i).ok().flatten()))?;
        let mut vals = Vec::with_capacity(plan.cols.len());
        for (i, c) in plan.cols.iter().enumerate() {
            let v = row.try_get::<Option<String>, _>(nk + i)?;
            vals.push(match c.rust {
                Some(r) => v.map(|t| r.warehouse(&t)),
                None => v,
            });
        }
        let deleted: bool = row.try_get(nk + plan.cols.len())?;
        let version: Option<String> = row.try_get(nk + plan.cols.len() + 1)?;
        out.insert(
            key,
            CanonRow {
                vals,
                deleted,
                version,
            },
        );
    }
    Ok(out)
}

/// Classifies every key present on either side.
pub(crate) fn diff(
    plan: &TablePlan,
    source: &BTreeMap<Key, CanonRow>,
    warehouse: &BTreeMap<Key, CanonRow>,
    position: &BinlogPosition,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&Key> = source.keys().chain(warehouse.keys()).collect();
    for key in keys {
        let s = source.get(key);
        let w = warehouse.get(key);
        let found = match (s, w) {
            (Some(_), None) => Some((Kind::Missing, Vec::new())),
            (Some(_), Some(w)) if w.deleted => {
                Some((Kind::Missing, vec!["_cdc_deleted".to_string()]))
            }
            (None, Some(w)) if !w.deleted => Some((Kind::Extra, Vec::new())),
            (None, _) => None,
            (Some(s), Some(w)) => {
                let cols: Vec<String> = plan
                    .cols
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| s.vals[*i] != w.vals[*i])
                    .map(|(_, c)| c.name.clone())
                    .collect();
                (!cols.is_empty()).then_some((Kind::Mismatched, cols))
            }
        };
        if let Some((kind, columns)) = found {
            out.push(Candidate {
                key: key.clone(),
                kind,
                columns,
                warehouse_version: w.and_then(|w| w.version.clone()),
                position: position.clone(),
            });
        }
    }
    out
}

/// The version a repair read at `position` carries.
pub(crate) fn version_at(position: &BinlogPosition) -> Result<Version, ReconcileError> {
    Version::at(position, 0).map_err(|e| ReconcileError::Definite(e.to_string()))
}
