//! The whole configuration file: one section per component, composed here.
//!
//! See `config/cdcsync.example.toml` for every key with its documentation.

use cdc_config::{ConfigError, KafkaConfig, SourceConfig, TelemetryConfig, WarehouseConfig};
use serde::Deserialize;

/// The cdcsync configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[source]`: the MySQL/MariaDB server (needed by `reader`, `check`, `snapshot`, `reconcile`).
    pub source: Option<SourceConfig>,
    /// `[kafka]`: the broker.
    pub kafka: KafkaConfig,
    /// `[warehouse]`: PostgreSQL (needed by `applier`, `check`, `reconcile`).
    pub warehouse: Option<WarehouseConfig>,
    /// `[reader]`: binlog reading, event production, checkpoints, snapshots.
    #[serde(default)]
    pub reader: binlog_reader::ReaderConfig,
    /// `[applier]`: consumer group, batching, deletes, schema evolution, dead letters.
    #[serde(default)]
    pub applier: warehouse_applier::ApplierConfig,
    /// `[reconcile]`: chunking, parallelism, rate limit and schedule of reconciliation.
    #[serde(default)]
    pub reconcile: reconcile::ReconcileConfig,
    /// `[telemetry]`: logs, metrics endpoint, shutdown bound.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Loads the file with `CDCSYNC__SECTION__KEY` overrides and validates every section.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let config: Config = cdc_config::load(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Validates every section present, before anything connects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(s) = &self.source {
            s.validate()?;
        }
        self.kafka.validate()?;
        if let Some(w) = &self.warehouse {
            w.validate()?;
        }
        self.reader.validate()?;
        self.applier.validate()?;
        self.reconcile.validate()?;
        self.telemetry.validate()
    }

    /// The `[source]` section, or an error naming the command that needs it.
    pub fn source(&self, command: &str) -> Result<&SourceConfig, ConfigError> {
        self.source.as_ref().ok_or_else(|| {
            ConfigError::invalid(
                "source",
                format!("`cdcsync {command}` needs a [source] section"),
            )
        })
    }

    /// The name that prefixes topics when `kafka.topic_prefix` is unset: `source.name`. The
    /// applier needs no `[source]` section when `kafka.topic_prefix` is set.
    pub fn topic_source_name(&self) -> Result<&str, ConfigError> {
        match (&self.source, &self.kafka.topic_prefix) {
            (Some(s), _) => Ok(&s.name),
            (None, Some(p)) => Ok(p),
            (None, None) => Err(ConfigError::invalid(
                "kafka.topic_prefix",
                "is needed when there is no [source] section (it names the topics to consume)",
            )),
        }
    }

    /// The `[warehouse]` section, or an error naming the command that needs it.
    pub fn warehouse(&self, command: &str) -> Result<&WarehouseConfig, ConfigError> {
        self.warehouse.as_ref().ok_or_else(|| {
            ConfigError::invalid(
                "warehouse",
                format!("`cdcsync {command}` needs a [warehouse] section"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example documents every key; it must load and validate as it is (so it can
    /// never drift from the structs: unknown keys are errors).
    #[test]
    fn example_config_loads_and_validates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/cdcsync.example.toml"
        );
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.source("check").unwrap().include_tables,
            vec!["shop.orders".to_string()]
        );
        assert_eq!(config.applier.group_id, "cdcsync-applier");
    }

    #[test]
    fn environment_overrides_the_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/cdcsync.example.toml"
        );
        std::env::set_var("CDCSYNC__SOURCE__SERVER_ID", "5999");
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        std::env::remove_var("CDCSYNC__SOURCE__SERVER_ID");
        assert_eq!(config.source("check").unwrap().server_id, 5999);
    }
}
