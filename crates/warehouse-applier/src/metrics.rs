//! The applier's metrics (names fixed in `docs/metrics.md`) and the small event structs that log
//! and count in one place, so business logic never touches a counter directly.

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_histogram, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Gauge, Histogram, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::error::PgErrorKind;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// `cdcsync_applier_consumer_lag_messages{topic,partition}`.
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "cdcsync_applier_consumer_lag_messages",
        "Log end offset minus committed offset, per assigned partition",
        &["topic", "partition"]
    )
    .unwrap()
});
/// `cdcsync_applier_backlog_messages`.
pub static BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "cdcsync_applier_backlog_messages",
        "Sum of the lag over the assigned partitions"
    )
    .unwrap()
});
/// `cdcsync_applier_end_to_end_latency_seconds`.
pub static END_TO_END: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "cdcsync_applier_end_to_end_latency_seconds",
        "Warehouse commit time minus source commit time",
        LATENCY_BUCKETS.to_vec()
    )
    .unwrap()
});
/// `cdcsync_applier_apply_latency_seconds`.
pub static APPLY_LATENCY: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "cdcsync_applier_apply_latency_seconds",
        "Warehouse commit time minus the time the message was consumed",
        LATENCY_BUCKETS.to_vec()
    )
    .unwrap()
});
/// `cdcsync_applier_rows_applied_total{table,op}`.
pub static ROWS_APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_applier_rows_applied_total",
        "Events whose effect was committed to PostgreSQL",
        &["table", "op"]
    )
    .unwrap()
});
/// `cdcsync_applier_duplicates_skipped_total{table}`.
pub static DUPLICATES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_applier_duplicates_skipped_total",
        "Events skipped because their id was already processed",
        &["table"]
    )
    .unwrap()
});
/// `cdcsync_applier_stale_skipped_total{table}`.
pub static STALE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_applier_stale_skipped_total",
        "Events the version guard ignored",
        &["table"]
    )
    .unwrap()
});
/// `cdcsync_applier_dead_letters_total{topic}`.
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_applier_dead_letters_total",
        "Messages sent to the dead-letter topic",
        &["topic"]
    )
    .unwrap()
});
/// `cdcsync_applier_batch_size_events`.
pub static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "cdcsync_applier_batch_size_events",
        "Events per applied batch",
        vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0]
    )
    .unwrap()
});
/// `cdcsync_applier_batch_duration_seconds`.
pub static BATCH_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "cdcsync_applier_batch_duration_seconds",
        "Time to apply and commit one batch",
        LATENCY_BUCKETS.to_vec()
    )
    .unwrap()
});
/// `cdcsync_applier_postgres_errors_total{kind}`.
pub static POSTGRES_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cdcsync_applier_postgres_errors_total",
        "PostgreSQL errors by kind",
        &["kind"]
    )
    .unwrap()
});
/// `cdcsync_applier_last_commit_timestamp_seconds`.
pub static LAST_COMMIT: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "cdcsync_applier_last_commit_timestamp_seconds",
        "Unix time offsets were last committed to Kafka"
    )
    .unwrap()
});

/// Registers every applier metric so that `/metrics` lists them from the start, including the
/// ones that have not moved yet.
pub fn register() {
    LazyLock::force(&CONSUMER_LAG);
    LazyLock::force(&BACKLOG);
    LazyLock::force(&END_TO_END);
    LazyLock::force(&APPLY_LATENCY);
    LazyLock::force(&ROWS_APPLIED);
    LazyLock::force(&DUPLICATES);
    LazyLock::force(&STALE);
    LazyLock::force(&DEAD_LETTERS);
    LazyLock::force(&BATCH_SIZE);
    LazyLock::force(&BATCH_DURATION);
    LazyLock::force(&POSTGRES_ERRORS);
    LazyLock::force(&LAST_COMMIT);
    for kind in ["connection", "serialization", "data", "other"] {
        POSTGRES_ERRORS.with_label_values(&[kind]);
    }
}

/// Counts of one committed batch for one table.
#[derive(Debug, Default, Clone)]
pub struct TableCounts {
    /// Fresh events by op: c, u, d, r.
    pub applied: [u64; 4],
    /// Events whose id was already in the processed-message table.
    pub duplicates: u64,
    /// Fresh events the version guard ignored.
    pub stale: u64,
}

/// A batch was committed.
pub struct BatchApplied<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Per table (`db.table`) counts.
    pub tables: &'a [(String, TableCounts)],
    /// Messages in the batch (including tombstones and dead letters).
    pub size: usize,
    /// Apply-and-commit time.
    pub duration: std::time::Duration,
}

impl BatchApplied<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        BATCH_SIZE.observe(self.size as f64);
        BATCH_DURATION.observe(self.duration.as_secs_f64());
        for (table, c) in self.tables {
            for (i, op) in ["c", "u", "d", "r"].iter().enumerate() {
                if c.applied[i] > 0 {
                    ROWS_APPLIED
                        .with_label_values(&[table.as_str(), op])
                        .inc_by(c.applied[i]);
                }
            }
            // Always touched, so the series exist (at 0) from the table's first batch on.
            DUPLICATES
                .with_label_values(&[table.as_str()])
                .inc_by(c.duplicates);
            STALE.with_label_values(&[table.as_str()]).inc_by(c.stale);
        }
        tracing::debug!(
            topic = self.topic,
            partition = self.partition,
            size = self.size,
            ms = self.duration.as_millis() as u64,
            "batch committed"
        );
    }
}

/// A message went to the dead-letter topic.
pub struct DeadLettered<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Why.
    pub error: &'a str,
}

impl DeadLettered<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        DEAD_LETTERS.with_label_values(&[self.topic]).inc();
        tracing::warn!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            error = self.error,
            "message sent to the dead-letter topic"
        );
    }
}

/// PostgreSQL returned an error.
pub struct PostgresError<'a> {
    /// Its kind.
    pub kind: PgErrorKind,
    /// The error.
    pub error: &'a sqlx::Error,
}

impl PostgresError<'_> {
    /// Logs and counts.
    pub fn emit(&self) {
        POSTGRES_ERRORS
            .with_label_values(&[self.kind.label()])
            .inc();
        tracing::warn!(kind = self.kind.label(), error = %self.error, "PostgreSQL error");
    }
}

/// Lag of the assigned partitions.
pub struct LagObserved<'a> {
    /// Per (topic, partition): log end offset − committed offset.
    pub partitions: &'a [(String, i32, i64)],
    /// Partitions reported before that are no longer assigned: their series are removed.
    pub gone: &'a [(String, i32)],
}

impl LagObserved<'_> {
    /// Sets the gauges. Only the series of partitions this member gave up are removed (not a
    /// reset of the whole vector, which would also drop the series other appliers in the same
    /// process set, as in the integration tests).
    pub fn emit(&self) {
        for (topic, partition) in self.gone {
            let _ = CONSUMER_LAG.remove_label_values(&[topic.as_str(), &partition.to_string()]);
        }
        let mut total = 0;
        for (topic, partition, lag) in self.partitions {
            CONSUMER_LAG
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(*lag);
            total += *lag;
        }
        BACKLOG.set(total);
    }
}

/// Offsets were committed to Kafka.
pub struct OffsetsCommitted;

impl OffsetsCommitted {
    /// Sets the timestamp gauge.
    pub fn emit(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        LAST_COMMIT.set(now);
    }
}

/// Latencies of one committed batch.
pub struct Latencies<'a> {
    /// `source.ts_ms` of every fresh event.
    pub source_ts_ms: &'a [i64],
    /// When the batch's messages were consumed.
    pub consumed: &'a [std::time::Instant],
}

impl Latencies<'_> {
    /// Observes the histograms against now (just after commit).
    pub fn emit(&self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for ts in self.source_ts_ms {
            END_TO_END.observe(((now_ms - ts).max(0)) as f64 / 1000.0);
        }
        let now = std::time::Instant::now();
        for c in self.consumed {
            APPLY_LATENCY.observe(now.duration_since(*c).as_secs_f64());
        }
    }
}
