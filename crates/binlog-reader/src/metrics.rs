//! The reader's metrics (names fixed by `docs/metrics.md`), and the small event structs through
//! which the reader logs and counts in one place (Vector's `internal_events` style).

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_int_counter, register_int_counter_vec, register_int_gauge, Gauge,
    IntCounter, IntCounterVec, IntGauge,
};

macro_rules! lazy {
    ($name:ident: $ty:ty = $init:expr) => {
        pub(crate) static $name: LazyLock<$ty> =
            LazyLock::new(|| $init.expect("metric registers once"));
    };
}

lazy!(EVENTS: IntCounterVec = register_int_counter_vec!("cdcsync_reader_events_total", "Change events produced and acknowledged by Kafka.", &["table", "op"]));
lazy!(BINLOG_BYTES: IntCounter = register_int_counter!("cdcsync_reader_binlog_bytes_total", "Binlog bytes received from the source."));
lazy!(TRANSACTIONS: IntCounter = register_int_counter!("cdcsync_reader_transactions_total", "Source transactions read (with at least one included row)."));
lazy!(LAG: Gauge = register_gauge!("cdcsync_reader_lag_seconds", "Now minus commit time of the last event read; 0 when caught up."));
lazy!(FILE_NUMBER: IntGauge = register_int_gauge!("cdcsync_reader_binlog_file_number", "Numeric suffix of the binlog file the reader is at."));
lazy!(OFFSET: IntGauge = register_int_gauge!("cdcsync_reader_binlog_offset_bytes", "Offset in the binlog file the reader is at."));
lazy!(SOURCE_FILE_NUMBER: IntGauge = register_int_gauge!("cdcsync_source_binlog_file_number", "The source's current binlog file (polled every 10 s)."));
lazy!(SOURCE_OFFSET: IntGauge = register_int_gauge!("cdcsync_source_binlog_offset_bytes", "The source's current offset in its binlog file."));
lazy!(CHECKPOINT_TS: IntGauge = register_int_gauge!("cdcsync_reader_checkpoint_timestamp_seconds", "Unix time the checkpoint was last saved."));
lazy!(INFLIGHT_TX: IntGauge = register_int_gauge!("cdcsync_reader_inflight_transactions", "Transactions produced but not yet fully acknowledged by Kafka."));
lazy!(INFLIGHT_BYTES: IntGauge = register_int_gauge!("cdcsync_reader_inflight_bytes", "Bytes of events produced but not yet acknowledged."));
lazy!(PRODUCE_ERRORS: IntCounter = register_int_counter!("cdcsync_reader_produce_errors_total", "Kafka produce failures (each retried or fatal)."));
lazy!(ERRORS: IntCounterVec = register_int_counter_vec!("cdcsync_reader_errors_total", "Reader failures by kind; definite ones stop the reader.", &["kind"]));

/// Touches every reader metric so that all are exported from the start (a dashboard sees zeros
/// instead of gaps), and the error kinds with a zero series each.
pub(crate) fn register() {
    LazyLock::force(&EVENTS);
    LazyLock::force(&BINLOG_BYTES);
    LazyLock::force(&TRANSACTIONS);
    LazyLock::force(&LAG);
    LazyLock::force(&FILE_NUMBER);
    LazyLock::force(&OFFSET);
    LazyLock::force(&SOURCE_FILE_NUMBER);
    LazyLock::force(&SOURCE_OFFSET);
    LazyLock::force(&CHECKPOINT_TS);
    LazyLock::force(&INFLIGHT_TX);
    LazyLock::force(&INFLIGHT_BYTES);
    LazyLock::force(&PRODUCE_ERRORS);
    for kind in [
        "purged",
        "gtid_unknown",
        "server_id",
        "auth",
        "tls",
        "config",
        "unsupported_event",
        "transient",
    ] {
        ERRORS.with_label_values(&[kind]);
    }
    // `cdcsync_build_info` may already be registered by the binary; then the register call
    // above failed and we must not panic, so it is set through the registry-independent path.
    if let Ok(g) = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("cdcsync_build_info", "Always 1."),
        &["version", "component"],
    ) {
        if prometheus::register(Box::new(g.clone())).is_ok() {
            g.with_label_values(&[env!("CARGO_PKG_VERSION"), "reader"])
                .set(1);
        }
    }
}

/// A reader error: logged at error (definite) or warn (transient) level and counted by kind.
pub(crate) struct ReaderErrorEvent<'a> {
    /// The error.
    pub error: &'a crate::ReaderError,
}

impl ReaderErrorEvent<'_> {
    pub(crate) fn emit(self) {
        let kind = self.error.kind();
        ERRORS.with_label_values(&[kind]).inc();
        if self.error.is_definite() {
            tracing::error!(kind, error = %self.error, "reader stopped by a definite error");
        } else {
            tracing::warn!(kind, error = %self.error, "transient reader error; reconnecting");
        }
    }
}

/// The reader's position in the source binlog moved.
pub(crate) struct PositionRead {
    pub file_seq: u32,
    pub offset: u64,
    /// Commit time of the event, seconds since the epoch (0 for artificial events).
    pub event_ts: u32,
    pub bytes: u64,
}

impl PositionRead {
    pub(crate) fn emit(self) {
        FILE_NUMBER.set(self.file_seq as i64);
        OFFSET.set(self.offset as i64);
        BINLOG_BYTES.inc_by(self.bytes);
        if self.event_ts > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            LAG.set((now - self.event_ts as f64).max(0.0));
        }
    }
}

/// The source has nothing more to send right now (a heartbeat arrived): lag is 0.
pub(crate) struct CaughtUp;

impl CaughtUp {
    pub(crate) fn emit(self) {
        LAG.set(0.0);
    }
}

/// A checkpoint was durably saved in Kafka.
pub(crate) struct CheckpointSaved<'a> {
    pub checkpoint: &'a cdc_event::Checkpoint,
}

impl CheckpointSaved<'_> {
    pub(crate) fn emit(self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CHECKPOINT_TS.set(now as i64);
        tracing::debug!(gtid = %self.checkpoint.gtid_set, position = %self.checkpoint.position, "checkpoint saved");
    }
}

/// A produce failed (librdkafka retries internally first; this is after that).
pub(crate) struct ProduceFailed<'a> {
    pub error: &'a str,
}

impl ProduceFailed<'_> {
    pub(crate) fn emit(self) {
        PRODUCE_ERRORS.inc();
        tracing::warn!(error = self.error, "Kafka produce failed");
    }
}
