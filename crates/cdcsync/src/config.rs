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
