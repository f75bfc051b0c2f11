//! `[reader]`: settings of the binlog reader that are not connection settings.

use std::time::Duration;

use cdc_config::ConfigError;
use serde::Deserialize;

/// How zero dates (`0000-00-00`, TIMESTAMP 0, dates with a zero month or day) travel.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ZeroDates {
    /// As JSON `null`: they are not valid dates anywhere downstream.
    #[default]
    Null,
    /// As their text, e.g. `"0000-00-00"`, for consumers that must tell them from NULL.
    String,
}

/// Where to start when no checkpoint exists yet.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The source's current position: only changes committed after the first start are read
    /// (history comes from a snapshot).
    #[default]
    Current,
    /// The oldest binlog the source still has.
    Earliest,
}

/// `[reader]` section of the configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReaderConfig {
    /// Follow every delete with a tombstone (same key, null value) so that log compaction can
    /// drop the key.
    pub tombstones: bool,
    /// How zero dates are encoded: `null` (default) or `string`.
    pub zero_dates: ZeroDates,
    /// Where to start when the checkpoint topic has no checkpoint for this source.
    pub start_from: StartFrom,
    /// Upper bound on bytes of events handed to Kafka but not yet acknowledged. When reached,
    /// binlog reading pauses (backpressure) instead of buffering without bound. One event larger
    /// than the remaining room is still sent, so the bound can be exceeded by one event.
    pub max_inflight_bytes: u64,
    /// Largest message the reader produces, and `max.message.bytes` of the topics it creates. A
    /// row with a >16 MiB LONGBLOB becomes a ~22 MiB base64 value, twice that for an update.
    pub max_message_bytes: u32,
    /// How often the checkpoint is saved while streaming, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Heartbeat period the reader asks of the source, in milliseconds; a silent connection is
    /// declared dead after three periods.
    pub heartbeat_interval_ms: u64,
    /// Producer `linger.ms`: how long librdkafka waits to fill a batch.
    pub linger_ms: u32,
    /// First reconnect delay after a transient error, in milliseconds (doubles up to the max).
    pub reconnect_backoff_initial_ms: u64,
    /// Largest reconnect delay, in milliseconds.
    pub reconnect_backoff_max_ms: u64,
    /// Bound on the graceful shutdown (flush and final checkpoint), in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Checkpoint topic; defaults to `<topic prefix>._checkpoints`.
    pub checkpoint_topic: Option<String>,
    /// `[reader.snapshot]`: initial and on-demand snapshots (see `snapshot/mod.rs`).
    pub snapshot: crate::snapshot::SnapshotConfig,
}

/// Default of [`ReaderConfig::max_inflight_bytes`]: 16 MiB, enough to keep batches full at
/// ~1 KB events while keeping the process under 128 MiB.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 16 << 20;
/// Default of [`ReaderConfig::max_message_bytes`]: 100 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 100 << 20;
/// Default of [`ReaderConfig::checkpoint_interval_ms`].
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// Default of [`ReaderConfig::heartbeat_interval_ms`].
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// Default of [`ReaderConfig::linger_ms`].
pub const DEFAULT_LINGER_MS: u32 = 5;
/// Default of [`ReaderConfig::reconnect_backoff_initial_ms`].
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 500;
/// Default of [`ReaderConfig::reconnect_backoff_max_ms`].
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Default of [`ReaderConfig::shutdown_timeout_ms`].
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 15_000;

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            tombstones: true,
            zero_dates: ZeroDates::Null,
            start_from: StartFrom::Current,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            checkpoint_interval_ms: DEFAULT_CHECKPOINT_INTERVAL_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            linger_ms: DEFAULT_LINGER_MS,
            reconnect_backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            reconnect_backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            checkpoint_topic: None,
            snapshot: crate::snapshot::SnapshotConfig::default(),
        }
    }
}

impl ReaderConfig {
    /// Checks values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_inflight_bytes < 1 << 20 {
            return Err(ConfigError::invalid(
                "reader.max_inflight_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.max_message_bytes < 1 << 20 || self.max_message_bytes > 1_000_000_000 {
            return Err(ConfigError::invalid(
                "reader.max_message_bytes",
                "must be between 1048576 (1 MiB) and 1000000000",
            ));
        }
        for (key, v) in [
            ("reader.checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("reader.heartbeat_interval_ms", self.heartbeat_interval_ms),
            (
                "reader.reconnect_backoff_initial_ms",
                self.reconnect_backoff_initial_ms,
            ),
            ("reader.shutdown_timeout_ms", self.shutdown_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        self.snapshot.validate()?;
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_initial_ms {
            return Err(ConfigError::invalid(
                "reader.reconnect_backoff_max_ms",
                "must be at least reader.reconnect_backoff_initial_ms",
            ));
        }
        if let Some(t) = &self.checkpoint_topic {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(ConfigError::invalid(
                    "reader.checkpoint_topic",
                    format!(
                        "{t:?} must be non-empty and use only letters, digits, '.', '_' and '-'"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The checkpoint topic for topic prefix `prefix`.
    pub fn checkpoint_topic(&self, prefix: &str) -> String {
        self.checkpoint_topic
            .clone()
            .unwrap_or_else(|| format!("{prefix}._checkpoints"))
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        ReaderConfig::default().validate().unwrap();
        type Case = (&'static str, fn(&mut ReaderConfig));
        let cases: [Case; 4] = [
            ("reader.max_inflight_bytes", |c| c.max_inflight_bytes = 10),
            ("reader.checkpoint_interval_ms", |c| {
                c.checkpoint_interval_ms = 0
            }),
            ("reader.reconnect_backoff_max_ms", |c| {
                c.reconnect_backoff_max_ms = 1
            }),
            ("reader.checkpoint_topic", |c| {
                c.checkpoint_topic = Some("a b".into())
            }),
        ];
        for (key, f) in cases {
            let mut c = ReaderConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        }
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_keys() {
        #[derive(Deserialize)]
        struct File {
            reader: ReaderConfig,
        }
        let f: File =
            cdc_config::from_toml("[reader]\ntombstones = false\nzero_dates = \"string\"\n")
                .unwrap();
        assert!(!f.reader.tombstones);
        assert_eq!(f.reader.zero_dates, ZeroDates::String);
        assert!(cdc_config::from_toml::<File>("[reader]\ntombstone = false\n").is_err());
    }
}
