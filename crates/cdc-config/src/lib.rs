//! Configuration shared by the cdcsync components, and the loader for the one TOML file.
//!
//! Following Vector's component model, each component owns its own section type
//! (`binlog_reader::ReaderConfig`, `warehouse_applier::ApplierConfig`); this crate holds the
//! connection sections that several components share ([`SourceConfig`], [`KafkaConfig`],
//! [`WarehouseConfig`], [`TelemetryConfig`]), the [`Secret`] type, and [`load`], which reads a
//! TOML file with `CDCSYNC__SECTION__KEY` environment overrides. Every section has
//! `deny_unknown_fields` and a `validate()` that names the key and the problem; the binary calls
//! them all before anything connects.

mod secret;
mod sections;

pub use secret::Secret;
pub use sections::{
    KafkaConfig, LogFormat, SourceConfig, TelemetryConfig, TlsConfig, TlsMode, WarehouseConfig,
};

use serde::de::DeserializeOwned;

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key is unknown or has the wrong type.
    #[error("configuration {path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// The `config` crate's message (names the key).
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("configuration key `{key}`: {problem}")]
    Invalid {
        /// Full dotted key, e.g. `kafka.partitions`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A secret could not be read.
    #[error("configuration key `{key}`: cannot read secret file {path}: {source}")]
    SecretFile {
        /// The key that names the file.
        key: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Loads `T` from the TOML file at `path`, then applies environment overrides of the form
/// `CDCSYNC__SECTION__KEY=value` (double underscores separate levels, so keys may contain
/// single underscores). Unknown keys are errors.
pub fn load<T: DeserializeOwned>(path: &str) -> Result<T, ConfigError> {
    let err = |e: config::ConfigError| ConfigError::Load {
        path: path.to_string(),
        message: e.to_string(),
    };
    config::Config::builder()
        .add_source(config::File::new(path, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("CDCSYNC")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("source.include_tables")
                .with_list_parse_key("source.exclude_tables")
                .try_parsing(true),
        )
        .build()
        .map_err(err)?
        .try_deserialize()
        .map_err(err)
}

/// Parses `T` from TOML text (tests and tools that build configs in memory).
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load {
            path: "<inline>".into(),
            message: e.to_string(),
        })
}
