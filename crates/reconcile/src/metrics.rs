//! Reconciliation metrics (names fixed in `docs/metrics.md`), set from one event struct so that
//! the comparison code never touches a metric directly.

use std::sync::LazyLock;

use prometheus::{
    register_gauge_vec, register_int_counter_vec, register_int_gauge_vec, GaugeVec, IntCounterVec,
    IntGaugeVec,
};

use crate::report::{Kind, Report};

/// `cdcsync_reconcile_rows_checked_total{table}`.
pub static ROWS_CHECKED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_reconcile_rows_checked_total",
        "Rows compared by reconciliation",
        &["table"]
    )
    .unwrap()
});
/// `cdcsync_reconcile_mismatches{table,kind}`.
pub static MISMATCHES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "cdcsync_reconcile_mismatches",
        "Differences found by the last completed reconciliation run",
        &["table", "kind"]
    )
    .unwrap()
});
/// `cdcsync_reconcile_duration_seconds{table}`.
pub static DURATION: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "cdcsync_reconcile_duration_seconds",
        "Duration of the last completed reconciliation run",
        &["table"]
    )
    .unwrap()
});
/// `cdcsync_reconcile_last_success_timestamp_seconds{table}`.
pub static LAST_SUCCESS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "cdcsync_reconcile_last_success_timestamp_seconds",
        "Unix time of the last reconciliation run that completed",
        &["table"]
    )
    .unwrap()
});

/// Creates every series of `tables` at 0, so alerts see the first change (`docs/metrics.md`).
pub fn init(tables: &[String]) {
    for t in tables {
        ROWS_CHECKED.with_label_values(&[t.as_str()]);
        for k in Kind::ALL {
            MISMATCHES.with_label_values(&[t.as_str(), k.as_str()]);
        }
        DURATION.with_label_values(&[t.as_str()]);
        LAST_SUCCESS.with_label_values(&[t.as_str()]);
    }
}

/// Rows of a chunk were compared.
pub struct RowsChecked<'a> {
    /// `db.table`.
    pub table: &'a str,
    /// Source rows in the chunk.
    pub rows: u64,
}

impl RowsChecked<'_> {
    /// Counts.
    pub fn emit(self) {
        ROWS_CHECKED
            .with_label_values(&[self.table])
            .inc_by(self.rows);
    }
}

/// A run completed.
pub struct RunCompleted<'a> {
    /// The run's report.
    pub report: &'a Report,
}

impl RunCompleted<'_> {
    /// Logs the outcome and sets the gauges.
    pub fn emit(self) {
        let r = self.report;
        let t = r.table.as_str();
        for k in Kind::ALL {
            MISMATCHES
                .with_label_values(&[t, k.as_str()])
                .set(r.total(k) as i64);
        }
        DURATION.with_label_values(&[t]).set(r.duration_seconds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        LAST_SUCCESS.with_label_values(&[t]).set(now);
        tracing::info!(
            table = t,
            rows = r.rows_checked,
            missing = r.total(Kind::Missing),
            extra = r.total(Kind::Extra),
            mismatched = r.total(Kind::Mismatched),
            in_flight = r.in_flight,
            repaired = r.repaired,
            seconds = r.duration_seconds,
            "reconciliation run completed"
        );
    }
}
