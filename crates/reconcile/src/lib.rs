//! Reconciliation: proves that a source table and its warehouse table agree, names every row
//! that differs, and repairs through the pipeline (issue 8, `docs/reconciliation.md`).
//!
//! * [`run`]: one run of one table — keyset chunks compared by digest in parallel under a rate
//!   limit, drill-down of differing chunks, re-check of differences so that changes in flight
//!   are not reported, and the correctness arguments;
//! * [`canon`]: the type-exact canonical text of every value on both sides;
//! * [`plan`]: the SQL of one table on both sides;
//! * [`schema`]: the two tables' column types;
//! * [`repair`]: repair events into the table's topic;
//! * [`report`]: the human summary and the JSON-lines file;
//! * [`metrics`]: the `cdcsync_reconcile_*` metrics.
//!
//! **Architecture invariant:** reconciliation reads the source and the warehouse but writes only
//! to Kafka; a repair is a change event that the applier applies under its version guard, never
//! a direct write to the warehouse.

pub mod canon;
pub mod config;
pub mod error;
pub mod metrics;
pub mod plan;
mod repair;
pub mod report;
pub mod run;
pub mod schema;

use std::time::Duration;

use cdc_config::{KafkaConfig, SourceConfig, WarehouseConfig};
use cdc_event::TableId;
use tokio_util::sync::CancellationToken;

pub use config::ReconcileConfig;
pub use error::ReconcileError;
pub use report::{Difference, Kind, Report};
pub use run::Reconciler;

/// The tables the scheduled mode checks: `reconcile.tables`, else every exact `db.table` in
/// `source.include_tables`.
pub fn scheduled_tables(source: &SourceConfig, cfg: &ReconcileConfig) -> Vec<TableId> {
    let names: Vec<&String> = if cfg.tables.is_empty() {
        source.include_tables.iter().collect()
    } else {
        cfg.tables.iter().collect()
    };
    names
        .into_iter()
        .filter(|t| !t.contains('*'))
        .filter(|t| !source.exclude_tables.contains(t))
        .filter_map(|t| TableId::parse(t))
        .collect()
}

/// The daemon's scheduled mode: reconciles every scheduled table, then waits
/// `reconcile.interval_secs`, until `shutdown` is cancelled. A failed run is logged and retried
/// at the next interval (the `cdcsync_reconcile_last_success_timestamp_seconds` gauge then stops
/// moving, which is what the alert watches); it never stops the daemon. Returns at once when the
/// interval is 0 (scheduled reconciliation off).
pub async fn run_scheduled(
    source: &SourceConfig,
    warehouse: &WarehouseConfig,
    kafka: &KafkaConfig,
    cfg: &ReconcileConfig,
    shutdown: CancellationToken,
) -> Result<(), ReconcileError> {
    if cfg.interval_secs == 0 {
        return Ok(());
    }
    let tables = scheduled_tables(source, cfg);
    metrics::init(&tables.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    let reconciler = tokio::select! {
        r = Reconciler::connect(source, warehouse, kafka, cfg) => r?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    loop {
        for table in &tables {
            tokio::select! {
                r = reconciler.run(table, cfg.repair) => match r {
                    Ok(report) => {
                        if !report.is_clean() {
                            tracing::warn!(table = %table, "{}", report.summary());
                        }
                    }
                    Err(e) => tracing::error!(table = %table, definite = e.is_definite(), "reconciliation run failed: {e}"),
                },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(cfg.interval_secs)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// `cdcsync reconcile`: one run of `table`, the summary on stdout, the JSON-lines report to
/// `report_path` when given. Returns the report (the binary exits non-zero when it is not clean).
pub async fn run_once(
    source: &SourceConfig,
    warehouse: &WarehouseConfig,
    kafka: &KafkaConfig,
    cfg: &ReconcileConfig,
    table: &str,
    repair: bool,
    report_path: Option<&str>,
) -> Result<Report, ReconcileError> {
    let table = TableId::parse(table).ok_or_else(|| {
        ReconcileError::Definite(format!("--table {table:?} is not of the form db.table"))
    })?;
    let reconciler = Reconciler::connect(source, warehouse, kafka, cfg).await?;
    let report = reconciler.run(&table, repair).await?;
    if let Some(path) = report_path {
        report.write_file(path)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_tables_default_to_exact_included_tables() {
        let source: SourceConfig = cdc_config::from_toml(
            "name = \"s\"\nurl = \"mysql://u@h:1\"\ninclude_tables = [\"shop.orders\", \"shop.*\", \"shop.items\"]\nexclude_tables = [\"shop.items\"]\n",
        )
        .unwrap();
        let names = |cfg: &ReconcileConfig| {
            scheduled_tables(&source, cfg)
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ReconcileConfig::default()), vec!["shop.orders"]);
        let explicit = ReconcileConfig {
            tables: vec!["shop.users".into()],
            ..Default::default()
        };
        assert_eq!(names(&explicit), vec!["shop.users"]);
    }
}
