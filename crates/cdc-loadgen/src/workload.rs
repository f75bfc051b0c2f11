//! The workload driver: N connections, each making transactions of `tx_rows` row changes drawn
//! from the mix, paced to the target rate (with promotion bursts) or flat out.
//!
//! Why connections never contend: each connection owns a disjoint set of rows. Existing rows
//! (ids below the run's first new id) belong to connection `id % N`; new rows are created by
//! connection `w` with ids `first_new_id + w + k·N`, and only `w` ever touches them. So there
//! are no lock waits or deadlocks between connections, and every statement is guaranteed to
//! find the row it targets (as long as nothing else writes the table), which is what lets the
//! tests compare the table with the report exactly.
//!
//! Why a run is repeatable: connection `w` draws every choice from its own generator, seeded
//! from `(seed, w)`, and starts from the same table state, so it makes the same sequence of
//! changes every time. Only the interleaving of connections depends on timing.
//!
//! A row is taken out of its connection's candidate pool while a transaction changes it, so
//! one transaction never changes the same row twice (which would make statement grouping
//! order-dependent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{OpKind, WorkloadConfig};
use crate::report::{CommitRecord, LatencySummary, OpCounts, Progress, RunReport};
use crate::rng::Rng;
use crate::row::{cents, insert_tuple, money, INSERT_COLUMNS};
use crate::schema::{ensure_schema, table_ref, STATUSES};
use crate::LoadgenError;

const PENDING: u8 = 0;
const PAID: u8 = 1;
const SHIPPED: u8 = 2;
const DELIVERED: u8 = 3;
const REFUNDED: u8 = 4;
const CANCELLED: u8 = 5;

fn is_terminal(status: u8) -> bool {
    matches!(status, DELIVERED | REFUNDED | CANCELLED)
}

/// The next status of an order that is not yet in a terminal state.
fn next_status(rng: &mut Rng, status: u8) -> u8 {
    match status {
        PENDING => {
            if rng.chance(0.85) {
                PAID
            } else {
                CANCELLED
            }
        }
        PAID => {
            if rng.chance(0.9) {
                SHIPPED
            } else {
                REFUNDED
            }
        }
        _ => {
            if rng.chance(0.9) {
                DELIVERED
            } else {
                REFUNDED
            }
        }
    }
}

/// Counters shared with the progress reporter; workers add after each commit.
#[derive(Default)]
struct Live {
    rows: AtomicU64,
    transactions: AtomicU64,
    ops: [AtomicU64; 4],
}

impl Live {
    fn ops(&self) -> OpCounts {
        let mut c = OpCounts::default();
        for (i, k) in OpKind::ALL.iter().enumerate() {
            c.add(*k, self.ops[i].load(Ordering::Relaxed));
        }
        c
    }
}

/// The rows one connection may update or delete: open orders with their status, and orders in
/// a terminal status (which only get amount edits and deletes).
#[derive(Default)]
struct Candidates {
    open: Vec<(u64, u8)>,
    closed: Vec<u64>,
    cap: usize,
}

impl Candidates {
    fn put(&mut self, rng: &mut Rng, id: u64, status: u8) {
        if self.open.len() + self.closed.len() >= self.cap {
            // Forget a random candidate (the row stays in the table) to bound memory.
            let i = rng.below((self.open.len() + self.closed.len()) as u64) as usize;
            self.take_at(i);
        }
        if is_terminal(status) {
            self.closed.push(id);
        } else {
            self.open.push((id, status));
        }
    }

    fn len(&self) -> usize {
        self.open.len() + self.closed.len()
    }

    fn take_at(&mut self, i: usize) -> (u64, u8) {
        if i < self.open.len() {
            self.open.swap_remove(i)
        } else {
            (self.closed.swap_remove(i - self.open.len()), DELIVERED)
        }
    }
}

/// What one worker hands back at the end.
struct WorkerResult {
    ops: OpCounts,
    fallbacks: u64,
    transactions: u64,
    per_second: Vec<u64>,
    commits: Vec<CommitRecord>,
    commits_dropped: u64,
    latencies_us: Vec<u32>,
}

struct Worker {
    index: u32,
    cfg: Arc<WorkloadConfig>,
    table: String,
    rng: Rng,
    rows: Candidates,
    next_id: u64,
    id_step: u64,
    quota: Option<u64>,
    start: Instant,
    start_unix_us: i64,
    live: Arc<Live>,
    commit_budget: Arc<AtomicU64>,
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Worker {
    async fn run(
        mut self,
        pool: Pool,
        stop: CancellationToken,
    ) -> Result<WorkerResult, LoadgenError> {
        let mut conn = pool.get_conn().await?;
        let mut out = WorkerResult {
            ops: OpCounts::default(),
            fallbacks: 0,
            transactions: 0,
            per_second: Vec::new(),
            commits: Vec::new(),
            commits_dropped: 0,
            latencies_us: Vec::new(),
        };
        let connections = f64::from(self.cfg.connections);
        let mut next_at = self.start;
        let mut done: u64 = 0;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let elapsed = self.start.elapsed();
            if self.cfg.duration.is_some_and(|d| elapsed >= d) {
                break;
            }
            let remaining = self.quota.map(|q| q - done);
            if remaining == Some(0) {
                break;
            }
            if self.cfg.rate.is_some() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep_until(next_at.into()) => {}
                }
                if self.cfg.duration.is_some_and(|d| self.start.elapsed() >= d) {
                    break;
                }
            }
            let n = remaining.map_or(self.cfg.tx_rows, |r| {
                r.min(u64::from(self.cfg.tx_rows)) as u32
            });
            let (sql, kinds, fallbacks, touched) = self.build_transaction(n);
            let t0 = Instant::now();
            conn.query_drop(&sql).await?;
            let took = t0.elapsed();
            let committed_at = SystemTime::now();
            done += u64::from(n);

            // The transaction is durable: its rows become candidates again with their new state.
            for (id, status) in touched {
                self.rows.put(&mut self.rng, id, status);
            }
            for (kind, count) in OpKind::ALL.iter().zip(kinds) {
                out.ops.add(*kind, count);
            }
            out.fallbacks += fallbacks;
            out.transactions += 1;
            let second = (unix_us(committed_at) - self.start_unix_us).max(0) as usize / 1_000_000;
            if out.per_second.len() <= second {
                out.per_second.resize(second + 1, 0);
            }
            out.per_second[second] += u64::from(n);
            let duration_us = took.as_micros().min(u128::from(u32::MAX)) as u32;
            out.latencies_us.push(duration_us);
            if self.cfg.record_commits
                && self
                    .commit_budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_ok()
            {
                out.commits.push(CommitRecord {
                    commit_unix_us: unix_us(committed_at),
                    rows: n,
                    worker: self.index,
                    duration_us,
                });
            } else {
                out.commits_dropped += 1;
            }
            self.live.rows.fetch_add(u64::from(n), Ordering::Relaxed);
            self.live.transactions.fetch_add(1, Ordering::Relaxed);
            for (i, count) in kinds.iter().enumerate() {
                self.live.ops[i].fetch_add(*count, Ordering::Relaxed);
            }

            if let Some(rate) = self.cfg.rate_at(self.start.elapsed()) {
                next_at += Duration::from_secs_f64(f64::from(n) * connections / rate);
                // A worker that fell behind (a slow commit, a stalled server) catches up by at
                // most one second of work instead of firing an unbounded backlog at once.
                let now = Instant::now();
                if next_at + Duration::from_secs(1) < now {
                    next_at = now - Duration::from_secs(1);
                }
            }
        }
        Ok(out)
    }

    /// Draws `n` operations and renders them as one multi-statement transaction (one round
    /// trip). Returns the SQL, the count per kind, the number of fallbacks to insert, and the
    /// rows to put back into the candidate pool after the commit.
    fn build_transaction(&mut self, n: u32) -> (String, [u64; 4], u64, Vec<(u64, u8)>) {
        let mut inserts: Vec<String> = Vec::new();
        let mut status_groups: [Vec<u64>; 6] = Default::default();
        let mut amounts: Vec<String> = Vec::new();
        let mut deletes: Vec<u64> = Vec::new();
        let mut touched: Vec<(u64, u8)> = Vec::new();
        let mut kinds = [0u64; 4];
        let mut fallbacks = 0;
        let total = self.cfg.mix.total();
        for _ in 0..n {
            let mut kind = self.cfg.mix.pick(self.rng.below(total));
            let eligible = match kind {
                OpKind::Insert => true,
                OpKind::Status => !self.rows.open.is_empty(),
                OpKind::Amount | OpKind::Delete => self.rows.len() > 0,
            };
            if !eligible {
                kind = OpKind::Insert;
                fallbacks += 1;
            }
            match kind {
                OpKind::Insert => {
                    let id = self.next_id;
                    self.next_id += self.id_step;
                    inserts.push(insert_tuple(&mut self.rng, id, STATUSES[PENDING as usize]));
                    touched.push((id, PENDING));
                }
                OpKind::Status => {
                    let i = self.rng.below(self.rows.open.len() as u64) as usize;
                    let (id, status) = self.rows.open.swap_remove(i);
                    let next = next_status(&mut self.rng, status);
                    status_groups[next as usize].push(id);
                    touched.push((id, next));
                }
                OpKind::Amount => {
                    let i = self.rng.below(self.rows.len() as u64) as usize;
                    let (id, status) = self.rows.take_at(i);
                    let m = money(&mut self.rng);
                    amounts.push(format!(
                        "UPDATE {t} SET amount={},discount={},tax={},updated_time=NOW(6),version=version+1 WHERE id={id}",
                        cents(m.amount),
                        cents(m.discount),
                        cents(m.tax),
                        t = self.table
                    ));
                    touched.push((id, status));
                }
                OpKind::Delete => {
                    let i = self.rng.below(self.rows.len() as u64) as usize;
                    let (id, _) = self.rows.take_at(i);
                    deletes.push(id);
                }
            }
            kinds[OpKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)] += 1;
        }

        let mut sql = String::with_capacity(256 + inserts.len() * 400 + amounts.len() * 160);
        sql.push_str("START TRANSACTION;");
        if !inserts.is_empty() {
            sql.push_str(&format!(
                "INSERT INTO {} {INSERT_COLUMNS} VALUES {};",
                self.table,
                inserts.join(",")
            ));
        }
        for (status, ids) in status_groups.iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            let paid = if status == PAID as usize {
                "paid_at=NOW(6),"
            } else {
                ""
            };
            sql.push_str(&format!(
                "UPDATE {} SET status='{}',{paid}updated_time=NOW(6),version=version+1 WHERE id IN ({});",
                self.table,
                STATUSES[status],
                join_ids(ids)
            ));
        }
        for a in &amounts {
            sql.push_str(a);
            sql.push(';');
        }
        if !deletes.is_empty() {
            sql.push_str(&format!(
                "DELETE FROM {} WHERE id IN ({});",
                self.table,
                join_ids(&deletes)
            ));
        }
        sql.push_str("COMMIT");
        (sql, kinds, fallbacks, touched)
    }
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Runs the workload described by `cfg` until its duration or row quota is reached or `stop` is
/// cancelled, calling `on_progress` every `cfg.progress_interval`. Creates the schema if needed.
pub async fn run_workload(
    pool: &Pool,
    cfg: &WorkloadConfig,
    stop: CancellationToken,
    mut on_progress: impl FnMut(&Progress),
) -> Result<RunReport, LoadgenError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg.clone());
    let table = table_ref(&cfg.db);
    let connections = u64::from(cfg.connections);

    let mut conn = pool.get_conn().await?;
    ensure_schema(&mut conn, &cfg.db).await?;
    let max_id: Option<u64> = conn
        .query_first(format!("SELECT MAX(id) FROM {table}"))
        .await?
        .flatten();
    let first_new_id = max_id.unwrap_or(0) + 1;

    // The most recent existing rows become update/delete candidates, split by owner.
    let mut pools: Vec<Candidates> = (0..connections)
        .map(|_| Candidates {
            cap: cfg.max_tracked_rows_per_connection.max(1),
            ..Default::default()
        })
        .collect();
    if max_id.is_some() {
        let limit = cfg.max_tracked_rows_per_connection as u64 * connections;
        let rows: Vec<(u64, String)> = conn
            .query(format!(
                "SELECT id, CAST(status AS CHAR) FROM {table} ORDER BY id DESC LIMIT {limit}"
            ))
            .await?;
        let mut seeder = Rng::stream(cfg.seed, u64::MAX);
        // Oldest first, so that the same table gives the same pool order on every run.
        for (id, status) in rows.into_iter().rev() {
            let s = STATUSES.iter().position(|x| *x == status).unwrap_or(0) as u8;
            pools[(id % connections) as usize].put(&mut seeder, id, s);
        }
    }
    drop(conn);

    let live = Arc::new(Live::default());
    let commit_budget = Arc::new(AtomicU64::new(cfg.max_commit_records as u64));
    let start = Instant::now();
    let start_unix_us = unix_us(SystemTime::now());
    let worker_stop = stop.child_token();
    let mut set = JoinSet::new();
    for (w, rows) in pools.into_iter().enumerate() {
        let w64 = w as u64;
        let quota = cfg
            .max_rows
            .map(|m| m / connections + u64::from(w64 < m % connections));
        let worker = Worker {
            index: w as u32,
            cfg: cfg.clone(),
            table: table.clone(),
            rng: Rng::stream(cfg.seed, w64),
            rows,
            next_id: first_new_id + w64,
            id_step: connections,
            quota,
            start,
            start_unix_us,
            live: live.clone(),
            commit_budget: commit_budget.clone(),
        };
        set.spawn(worker.run(pool.clone(), worker_stop.clone()));
    }

    let mut results = Vec::new();
    let mut first_error: Option<LoadgenError> = None;
    let mut ticker = tokio::time::interval_at(
        (start + cfg.progress_interval).into(),
        cfg.progress_interval,
    );
    let mut last = (Duration::ZERO, 0u64);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(Ok(r))) => results.push(r),
                Some(Ok(Err(e))) => {
                    worker_stop.cancel();
                    first_error.get_or_insert(e);
                }
                Some(Err(join)) => {
                    worker_stop.cancel();
                    first_error.get_or_insert(LoadgenError::Worker(join.to_string()));
                }
            },
            _ = ticker.tick() => {
                let elapsed = start.elapsed();
                let rows = live.rows.load(Ordering::Relaxed);
                let dt = (elapsed - last.0).as_secs_f64().max(1e-9);
                let rate = (rows - last.1) as f64 / dt;
                last = (elapsed, rows);
                on_progress(&Progress {
                    elapsed,
                    rows,
                    transactions: live.transactions.load(Ordering::Relaxed),
                    ops: live.ops(),
                    rows_per_sec: rate,
                    target_rate: cfg.rate_at(elapsed),
                    in_burst: cfg.burst.is_some_and(|b| b.active_at(elapsed)),
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = start.elapsed();

    let mut ops = OpCounts::default();
    let mut per_second: Vec<u64> = Vec::new();
    let mut commits = Vec::new();
    let mut latencies = Vec::new();
    let (mut fallbacks, mut transactions, mut commits_dropped) = (0, 0, 0);
    for r in results {
        ops.merge(&r.ops);
        fallbacks += r.fallbacks;
        transactions += r.transactions;
        commits_dropped += r.commits_dropped;
        if per_second.len() < r.per_second.len() {
            per_second.resize(r.per_second.len(), 0);
        }
        for (i, c) in r.per_second.iter().enumerate() {
            per_second[i] += c;
        }
        commits.extend(r.commits);
        latencies.extend(r.latencies_us);
    }
    commits.sort_by_key(|c| c.commit_unix_us);
    let rows = ops.total();
    Ok(RunReport {
        db: cfg.db.clone(),
        seed: cfg.seed,
        elapsed_secs: elapsed.as_secs_f64(),
        target_rate: cfg.rate,
        rows,
        ops,
        fallbacks_to_insert: fallbacks,
        transactions,
        rows_per_sec: rows as f64 / elapsed.as_secs_f64().max(1e-9),
        per_second,
        start_unix_us,
        commits,
        commits_dropped,
        tx_latency: LatencySummary::from_samples(&mut latencies),
        first_new_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mix;

    fn worker(mix: Mix, existing: &[(u64, u8)]) -> Worker {
        let mut cfg = WorkloadConfig::new("shop");
        cfg.mix = mix;
        let mut rows = Candidates {
            cap: 1000,
            ..Default::default()
        };
        let mut r = Rng::new(0);
        for (id, s) in existing {
            rows.put(&mut r, *id, *s);
        }
        Worker {
            index: 0,
            cfg: Arc::new(cfg),
            table: table_ref("shop"),
            rng: Rng::new(5),
            rows,
            next_id: 100,
            id_step: 2,
            quota: None,
            start: Instant::now(),
            start_unix_us: 0,
            live: Arc::new(Live::default()),
            commit_budget: Arc::new(AtomicU64::new(0)),
        }
    }

    #[test]
    fn status_transitions_only_move_forward() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(matches!(next_status(&mut r, PENDING), PAID | CANCELLED));
            assert!(matches!(next_status(&mut r, PAID), SHIPPED | REFUNDED));
            assert!(matches!(next_status(&mut r, SHIPPED), DELIVERED | REFUNDED));
        }
    }

    #[test]
    fn empty_table_falls_back_to_inserts() {
        let mut w = worker(
            Mix {
                insert: 0,
                status: 1,
                amount: 0,
                delete: 1,
            },
            &[],
        );
        let (sql, kinds, fallbacks, touched) = w.build_transaction(3);
        assert_eq!(kinds, [3, 0, 0, 0]);
        assert_eq!(fallbacks, 3);
        assert_eq!(
            touched.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![100, 102, 104]
        );
        assert!(
            sql.starts_with("START TRANSACTION;INSERT INTO `shop`.`orders`"),
            "{sql}"
        );
        assert!(sql.ends_with(";COMMIT"));
    }

    #[test]
    fn one_transaction_never_touches_a_row_twice() {
        let existing: Vec<(u64, u8)> = (1..=5).map(|id| (id, PENDING)).collect();
        let mut w = worker(
            Mix {
                insert: 0,
                status: 1,
                amount: 1,
                delete: 1,
            },
            &existing,
        );
        let (sql, kinds, fallbacks, touched) = w.build_transaction(5);
        assert_eq!(kinds.iter().sum::<u64>(), 5);
        assert_eq!(fallbacks, 0);
        let mut ids: Vec<u64> = touched.iter().map(|t| t.0).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len() as u64 + kinds[3], 5, "{sql}");
        // Every row was taken out of the pool for the transaction.
        assert_eq!(w.rows.len(), 0);
    }

    #[test]
    fn same_seed_same_transaction() {
        let existing: Vec<(u64, u8)> = (1..=50).map(|id| (id, (id % 6) as u8)).collect();
        let a = worker(Mix::default(), &existing).build_transaction(20).0;
        let b = worker(Mix::default(), &existing).build_transaction(20).0;
        assert_eq!(a, b);
    }
}
