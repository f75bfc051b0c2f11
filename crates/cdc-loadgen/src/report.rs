//! What a run reports: rows/s achieved, the operation counts, per-second commit counts and the
//! commit instant of every transaction (so a pipeline's end-to-end latency can be computed
//! against the source's commit times).

use std::time::Duration;

use serde::Serialize;

use crate::config::OpKind;

/// Row changes made, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    pub insert: u64,
    pub status: u64,
    pub amount: u64,
    pub delete: u64,
}

impl OpCounts {
    pub fn total(&self) -> u64 {
        self.insert + self.status + self.amount + self.delete
    }

    pub fn get(&self, kind: OpKind) -> u64 {
        match kind {
            OpKind::Insert => self.insert,
            OpKind::Status => self.status,
            OpKind::Amount => self.amount,
            OpKind::Delete => self.delete,
        }
    }

    pub fn add(&mut self, kind: OpKind, n: u64) {
        match kind {
            OpKind::Insert => self.insert += n,
            OpKind::Status => self.status += n,
            OpKind::Amount => self.amount += n,
            OpKind::Delete => self.delete += n,
        }
    }

    pub fn merge(&mut self, other: &OpCounts) {
        for k in OpKind::ALL {
            self.add(k, other.get(k));
        }
    }
}

/// One committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CommitRecord {
    /// Wall-clock time at which `COMMIT` returned, microseconds since the Unix epoch. The server
    /// made the transaction durable (and wrote it to the binlog) before this instant.
    pub commit_unix_us: i64,
    /// Row changes in the transaction.
    pub rows: u32,
    /// The connection (worker) that made it.
    pub worker: u32,
    /// Round trip of the whole transaction (all statements and the commit), microseconds.
    pub duration_us: u32,
}

/// Percentiles of the transactions' round trips, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    /// Nearest-rank percentiles; sorts `samples` in place.
    pub fn from_samples(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            u64::from(samples[i])
        };
        LatencySummary {
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: u64::from(samples[samples.len() - 1]),
        }
    }
}

/// The result of a workload run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub db: String,
    pub seed: u64,
    /// From the first worker start to the last worker's end, seconds.
    pub elapsed_secs: f64,
    pub target_rate: Option<f64>,
    /// Row changes committed (= `ops.total()`).
    pub rows: u64,
    pub ops: OpCounts,
    /// Operations the mix asked for that could not be made (no row eligible yet, e.g. a status
    /// change on an empty table) and were made as inserts instead; already counted in `ops`.
    pub fallbacks_to_insert: u64,
    pub transactions: u64,
    /// `rows / elapsed_secs`.
    pub rows_per_sec: f64,
    /// Rows committed in each whole second of the run (index 0 = the first second).
    pub per_second: Vec<u64>,
    /// Run start, microseconds since the Unix epoch (the origin of `per_second`).
    pub start_unix_us: i64,
    /// One record per committed transaction, in commit order per worker, up to the configured
    /// maximum; `commits_dropped` counts those not kept.
    pub commits: Vec<CommitRecord>,
    pub commits_dropped: u64,
    pub tx_latency: LatencySummary,
    /// The first id this run could use for a new order (ids below it existed before the run).
    pub first_new_id: u64,
}

impl RunReport {
    /// A human-readable summary, several lines.
    pub fn summary(&self) -> String {
        let target = match self.target_rate {
            Some(r) => format!("{r:.0} rows/s"),
            None => "flat out".into(),
        };
        let peak = self.per_second.iter().copied().max().unwrap_or(0);
        format!(
            "loadgen: {rows} row changes in {tx} transactions over {secs:.1} s = {rps:.0} rows/s (target {target}, peak second {peak})\n\
             loadgen: insert {i}, status {s}, amount {a}, delete {d} (fallbacks to insert {fb})\n\
             loadgen: transaction round trip p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; {kept} commit instants recorded",
            rows = self.rows,
            tx = self.transactions,
            secs = self.elapsed_secs,
            rps = self.rows_per_sec,
            i = self.ops.insert,
            s = self.ops.status,
            a = self.ops.amount,
            d = self.ops.delete,
            fb = self.fallbacks_to_insert,
            p50 = self.tx_latency.p50_us as f64 / 1000.0,
            p99 = self.tx_latency.p99_us as f64 / 1000.0,
            max = self.tx_latency.max_us as f64 / 1000.0,
            kept = self.commits.len(),
        )
    }
}

/// The result of a prefill.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillReport {
    pub db: String,
    pub rows: u64,
    /// Ids `first_id..=last_id` were inserted (none when `rows` is 0).
    pub first_id: u64,
    pub last_id: u64,
    pub elapsed_secs: f64,
    pub rows_per_sec: f64,
}

impl PrefillReport {
    pub fn summary(&self) -> String {
        format!(
            "loadgen: prefilled {} rows (ids {}..={}) into {}.orders in {:.1} s = {:.0} rows/s",
            self.rows, self.first_id, self.last_id, self.db, self.elapsed_secs, self.rows_per_sec
        )
    }
}

/// A periodic progress sample given to the caller's callback.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub rows: u64,
    pub transactions: u64,
    pub ops: OpCounts,
    /// Rows/s over the last interval.
    pub rows_per_sec: f64,
    /// The target at this instant (bursts included); `None` when flat out.
    pub target_rate: Option<f64>,
    pub in_burst: bool,
}

impl Progress {
    pub fn line(&self) -> String {
        let target = match self.target_rate {
            Some(r) => format!(
                "target {r:.0}/s{}",
                if self.in_burst { " BURST" } else { "" }
            ),
            None => "flat out".into(),
        };
        format!(
            "loadgen {:>6.1}s  rows {:>10} ({:>8.0}/s, {target})  ins {} st {} amt {} del {}  tx {}",
            self.elapsed.as_secs_f64(),
            self.rows,
            self.rows_per_sec,
            self.ops.insert,
            self.ops.status,
            self.ops.amount,
            self.ops.delete,
            self.transactions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s: Vec<u32> = (1..=100).rev().collect();
        let l = LatencySummary::from_samples(&mut s);
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (50, 99, 100));
        assert_eq!(
            LatencySummary::from_samples(&mut []),
            LatencySummary::default()
        );
        assert_eq!(LatencySummary::from_samples(&mut [7]).p99_us, 7);
    }
}
