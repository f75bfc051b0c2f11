//! Snapshot metrics (names fixed by `docs/metrics.md`, section "Snapshot") and the events that
//! log and count in one place.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};

pub(crate) static ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_snapshot_rows_total",
        "Rows read and produced by snapshots (acknowledged by Kafka).",
        &["table"]
    )
    .expect("metric registers once")
});
pub(crate) static CHUNKS_REMAINING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "cdcsync_snapshot_chunks_remaining",
        "Estimated chunks left in the running snapshot.",
        &["table"]
    )
    .expect("metric registers once")
});
pub(crate) static RUNNING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "cdcsync_snapshot_running",
        "1 while a snapshot of the table runs.",
        &["table"]
    )
    .expect("metric registers once")
});
pub(crate) static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_snapshot_failures_total",
        "Snapshots that failed.",
        &["table"]
    )
    .expect("metric registers once")
});

/// Creates the series of every `table` at 0 (see "Labelled series exist from the start").
pub(crate) fn register(tables: &[String]) {
    for t in tables {
        ROWS.with_label_values(&[t]);
        CHUNKS_REMAINING.with_label_values(&[t]);
        RUNNING.with_label_values(&[t]);
        FAILURES.with_label_values(&[t]);
    }
}

/// A snapshot of one table could not complete.
pub(crate) struct SnapshotFailed<'a> {
    pub table: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl SnapshotFailed<'_> {
    pub(crate) fn emit(self) {
        FAILURES.with_label_values(&[self.table]).inc();
        RUNNING.with_label_values(&[self.table]).set(0);
        tracing::error!(table = self.table, error = %self.error, "snapshot failed");
    }
}
