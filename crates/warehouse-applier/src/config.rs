//! `[applier]`: the applier's own section of the configuration file.

use cdc_config::ConfigError;
use serde::Deserialize;

/// How a source delete shows up in the warehouse.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Keep the row with `_cdc_deleted = true` and the delete's version, so that an older upsert
    /// arriving later cannot resurrect it and analysts can see deletions.
    #[default]
    Soft,
    /// Remove the row and keep the delete's version in `<meta_schema>.tombstones`, which gives the
    /// same protection against a late older upsert.
    Hard,
}

/// What to do when an event carries a column the target table does not have.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SchemaEvolution {
    /// `ALTER TABLE ... ADD COLUMN` (nullable) and carry on.
    #[default]
    AddColumns,
    /// Stop the applier with an error naming the column, for warehouses whose DDL is managed by
    /// hand.
    Fail,
}

/// `[applier]`: consuming change events from Kafka and applying them to PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplierConfig {
    /// Kafka consumer group. Every applier process of one pipeline uses the same group so that
    /// they share the partitions; the committed offsets of the group are the applier's progress.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Explicit list of table topics to consume. When empty, `topic_pattern` is used.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Regular expression (librdkafka syntax, must start with `^`) of table topics to consume when
    /// `topics` is empty. Default: `^<prefix>\.[^.]+\.[^.]+$`, every `<prefix>.<db>.<table>`.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Most events in one partition's batch (one PostgreSQL transaction). A batch is applied as
    /// soon as a transaction slot is free, with whatever has arrived by then up to this bound, so
    /// batches reach it only under a backlog.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// The bound of a batch made only of snapshot rows (`op = "r"`, an initial or on-demand
    /// snapshot flooding the topic). At least `batch_max_events`; a streamed event in the batch
    /// brings the bound back to that. The default equals `batch_max_events`: 10,000-row snapshot
    /// batches were not measurably faster (1M-row snapshot-bench, three runs each: median 17.3 s
    /// vs 17.6 s) but raised the applier's peak RSS from 82 MiB to 124–134 MiB (164 MiB at 5M).
    #[serde(default = "default_snapshot_batch_max_events")]
    pub snapshot_batch_max_events: usize,
    /// How long (ms) a batch lingers for more events after its first one before it waits for a
    /// transaction slot, unless it is full. 0 (the default) applies as soon as a slot is free,
    /// which gives the lowest latency; a few ms make batches larger at low rates (fewer, bigger
    /// transactions) at the cost of that much latency.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// Upper bound on PostgreSQL transactions running at once (one per partition being applied),
    /// which is also the size of the connection pool.
    #[serde(default = "default_max_concurrent_transactions")]
    pub max_concurrent_transactions: u32,
    /// Soft (default) or hard deletes.
    #[serde(default)]
    pub delete_mode: DeleteMode,
    /// Create a missing target table (and schema) from the first event's column types. When
    /// false, a missing table stops the applier with an error naming it.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// Add new source columns to target tables, or fail.
    #[serde(default)]
    pub schema_evolution: SchemaEvolution,
    /// Processed-message ids older than this (seconds) and below the committed offset of their
    /// partition are pruned. Must exceed the longest time an event can wait in Kafka before it is
    /// redelivered (a rebalance or crash replays at most the uncommitted tail).
    #[serde(default = "default_processed_retention_secs")]
    pub processed_retention_secs: u64,
    /// How often the retention job runs, in seconds.
    #[serde(default = "default_retention_interval_secs")]
    pub retention_interval_secs: u64,
    /// Topic that receives messages which cannot be applied (created if missing). Default:
    /// `<prefix>.dead_letter`, which the default `topic_pattern` does not match.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// First wait after a transient failure (PostgreSQL unreachable, serialization failure); it
    /// doubles up to `retry_max_backoff_ms`.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Longest wait between retries of a transient failure.
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// How often consumer lag is refreshed (librdkafka's `statistics.interval.ms`).
    #[serde(default = "default_lag_interval_ms")]
    pub lag_interval_ms: u64,
    /// On a partition revoke, how long to wait for the in-flight batch of that partition to commit
    /// before giving the partition up anyway (its uncommitted tail is then applied again by the
    /// next owner and skipped as duplicates).
    #[serde(default = "default_revoke_timeout_ms")]
    pub revoke_timeout_ms: u64,
}

fn default_group_id() -> String {
    "cdcsync-applier".into()
}
fn default_batch_max_events() -> usize {
    2000
}
fn default_snapshot_batch_max_events() -> usize {
    default_batch_max_events()
}
fn default_batch_max_ms() -> u64 {
    0
}
fn default_max_concurrent_transactions() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_processed_retention_secs() -> u64 {
    7 * 24 * 3600
}
fn default_retention_interval_secs() -> u64 {
    300
}
fn default_retry_initial_backoff_ms() -> u64 {
    200
}
fn default_retry_max_backoff_ms() -> u64 {
    30_000
}
fn default_lag_interval_ms() -> u64 {
    5_000
}
fn default_revoke_timeout_ms() -> u64 {
    10_000
}

impl Default for ApplierConfig {
    fn default() -> Self {
        ApplierConfig {
            group_id: default_group_id(),
            topics: Vec::new(),
            topic_pattern: None,
            batch_max_events: default_batch_max_events(),
            snapshot_batch_max_events: default_snapshot_batch_max_events(),
            batch_max_ms: default_batch_max_ms(),
            max_concurrent_transactions: default_max_concurrent_transactions(),
            delete_mode: DeleteMode::default(),
            create_tables: true,
            schema_evolution: SchemaEvolution::default(),
            processed_retention_secs: default_processed_retention_secs(),
            retention_interval_secs: default_retention_interval_secs(),
            dead_letter_topic: None,
            retry_initial_backoff_ms: default_retry_initial_backoff_ms(),
            retry_max_backoff_ms: default_retry_max_backoff_ms(),
            lag_interval_ms: default_lag_interval_ms(),
            revoke_timeout_ms: default_revoke_timeout_ms(),
        }
    }
}

impl ApplierConfig {
    /// Checks values that would fail later; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "applier.group_id",
                "is empty: name the consumer group (e.g. \"cdcsync-applier\")",
            ));
        }
        if let Some(p) = &self.topic_pattern {
            if !self.topics.is_empty() {
                return Err(ConfigError::invalid(
                    "applier.topic_pattern",
                    "set either applier.topics or applier.topic_pattern, not both",
                ));
            }
            if !p.starts_with('^') {
                return Err(ConfigError::invalid(
                    "applier.topic_pattern",
                    format!(
                        "{p:?} must start with '^' (librdkafka treats only such names as patterns)"
                    ),
                ));
            }
        }
        if self.batch_max_events == 0 || self.batch_max_events > 100_000 {
            return Err(ConfigError::invalid(
                "applier.batch_max_events",
                "must be between 1 and 100000",
            ));
        }
        if self.snapshot_batch_max_events > 100_000 {
            return Err(ConfigError::invalid(
                "applier.snapshot_batch_max_events",
                "must be at most 100000",
            ));
        }
        if self.batch_max_ms > 60_000 {
            return Err(ConfigError::invalid(
                "applier.batch_max_ms",
                "must be at most 60000 (it adds that much latency to every batch)",
            ));
        }
        if self.max_concurrent_transactions == 0 {
            return Err(ConfigError::invalid(
                "applier.max_concurrent_transactions",
                "must be at least 1",
            ));
        }
        if self.retention_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "applier.retention_interval_secs",
                "must be above 0",
            ));
        }
        if self.processed_retention_secs < 60 {
            return Err(ConfigError::invalid(
                "applier.processed_retention_secs",
                "must be at least 60: ids younger than a redelivery window must be kept",
            ));
        }
        if self.retry_initial_backoff_ms == 0
            || self.retry_max_backoff_ms < self.retry_initial_backoff_ms
        {
            return Err(ConfigError::invalid(
                "applier.retry_max_backoff_ms",
                "must be at least applier.retry_initial_backoff_ms, which must be above 0",
            ));
        }
        if self.lag_interval_ms < 100 {
            return Err(ConfigError::invalid(
                "applier.lag_interval_ms",
                "must be at least 100",
            ));
        }
        if let Some(t) = &self.dead_letter_topic {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(ConfigError::invalid(
                    "applier.dead_letter_topic",
                    format!("{t:?} must be a Kafka topic name (letters, digits, '.', '_', '-')"),
                ));
            }
            if self.topics.iter().any(|x| x == t) {
                return Err(ConfigError::invalid(
                    "applier.dead_letter_topic",
                    "must not be one of applier.topics",
                ));
            }
        }
        Ok(())
    }

    /// The subscription: the explicit topics, or the pattern (default derived from `prefix`).
    pub fn subscription(&self, prefix: &str) -> Vec<String> {
        if !self.topics.is_empty() {
            return self.topics.clone();
        }
        vec![self
            .topic_pattern
            .clone()
            .unwrap_or_else(|| format!("^{}\\.[^.]+\\.[^.]+$", prefix.replace('.', "\\.")))]
    }

    /// The dead-letter topic, defaulting to `<prefix>.dead_letter`.
    pub fn dead_letter_topic(&self, prefix: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{prefix}.dead_letter"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<ApplierConfig, ConfigError> {
        cdc_config::from_toml(extra)
    }

    #[test]
    fn defaults_are_valid_and_unknown_keys_rejected() {
        let c = parse("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.delete_mode, DeleteMode::Soft);
        assert_eq!(
            c.subscription("shop"),
            vec!["^shop\\.[^.]+\\.[^.]+$".to_string()]
        );
        assert_eq!(c.dead_letter_topic("shop"), "shop.dead_letter");
        let e = parse("colour = 1").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("batch_max_events = 0", "applier.batch_max_events"),
            ("batch_max_ms = 60001", "applier.batch_max_ms"),
            (
                "snapshot_batch_max_events = 100001",
                "applier.snapshot_batch_max_events",
            ),
            (
                "max_concurrent_transactions = 0",
                "applier.max_concurrent_transactions",
            ),
            ("topic_pattern = \"shop.*\"", "applier.topic_pattern"),
            (
                "topics = [\"a\"]\ntopic_pattern = \"^a\"",
                "applier.topic_pattern",
            ),
            (
                "processed_retention_secs = 5",
                "applier.processed_retention_secs",
            ),
            ("dead_letter_topic = \"a b\"", "applier.dead_letter_topic"),
            (
                "retry_initial_backoff_ms = 100\nretry_max_backoff_ms = 50",
                "applier.retry_max_backoff_ms",
            ),
        ];
        for (extra, key) in cases {
            let err = parse(extra).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let c = parse("delete_mode = \"hard\"\nschema_evolution = \"fail\"").unwrap();
        assert_eq!(
            (c.delete_mode, c.schema_evolution),
            (DeleteMode::Hard, SchemaEvolution::Fail)
        );
    }
}
