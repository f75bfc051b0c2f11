//! The shared connection sections of the configuration file.

use serde::Deserialize;

use crate::{ConfigError, Secret};

/// TLS on a link. Implemented for the source (`[source.tls]`); the other links reserve the same
/// fields for the TLS milestone and accept only `disabled` today, so a config written for it fails
/// loudly instead of silently connecting in plain text.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `disabled`, `required`, `verify_ca` or `verify_identity` (the modes of MySQL's
    /// `--ssl-mode` and Debezium's `database.ssl.mode`).
    #[serde(default)]
    pub mode: TlsMode,
    /// CA certificate (PEM) that signed the server's certificate. Without it, `verify_ca` and
    /// `verify_identity` trust the built-in public roots only, which a private CA is not in.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// How strictly a link uses TLS.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP. (MySQL's `caching_sha2_password` then authenticates over RSA.)
    #[default]
    Disabled,
    /// Encrypted, but the server certificate is not verified: protects against eavesdropping,
    /// not against a man in the middle.
    Required,
    /// Encrypted; the certificate chain must lead to `ca_file` (or a public root), but the host
    /// name is not checked.
    VerifyCa,
    /// Encrypted; chain and host name (the URL's host must be in the certificate) are verified.
    VerifyIdentity,
}

impl TlsMode {
    /// The mode as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Required => "required",
            TlsMode::VerifyCa => "verify_ca",
            TlsMode::VerifyIdentity => "verify_identity",
        }
    }
}

impl TlsConfig {
    /// Validates a link that implements TLS: a `ca_file` must exist and be readable.
    fn validate_implemented(&self, key: &str) -> Result<(), ConfigError> {
        if let Some(ca) = &self.ca_file {
            if self.mode == TlsMode::Disabled {
                return Err(ConfigError::invalid(
                    format!("{key}.ca_file"),
                    "is set but mode is \"disabled\": set mode = \"verify_identity\" (or \"verify_ca\") to use it, or remove ca_file",
                ));
            }
            if let Err(e) = std::fs::metadata(ca) {
                return Err(ConfigError::invalid(
                    format!("{key}.ca_file"),
                    format!("cannot read {ca:?}: {e}; point it at the PEM file of the CA that signed the server certificate"),
                ));
            }
        }
        Ok(())
    }

    /// Validates a link whose TLS lands with the TLS milestone: only `disabled` is accepted.
    fn validate_reserved(&self, key: &str) -> Result<(), ConfigError> {
        if self.mode != TlsMode::Disabled {
            return Err(ConfigError::invalid(
                format!("{key}.mode"),
                "TLS is not supported on this link yet; set it to \"disabled\" (TLS lands with the TLS/SASL milestone)",
            ));
        }
        Ok(())
    }
}

/// `[source]`: the MySQL or MariaDB server to read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Logical name of the source. Prefixes event ids, names the checkpoint, and is the default
    /// topic prefix. Must stay the same for the life of the pipeline.
    pub name: String,
    /// `mysql://user@host:port` of the source (a password here is accepted but `password` is
    /// preferred so the URL can be logged).
    pub url: String,
    /// Password of the CDC user.
    #[serde(default)]
    pub password: Secret,
    /// The replica `server_id` the reader registers with; unique among all replicas of the source.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// Tables to capture, as `db.table`. `db.*` takes every table of a database.
    pub include_tables: Vec<String>,
    /// Tables to leave out even if included, as `db.table`.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// TLS to the source.
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_server_id() -> u32 {
    5401
}

impl SourceConfig {
    /// Checks values that would fail later or lose data.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                "source.name",
                format!("{:?} must be non-empty and use only letters, digits, '_' and '-' (it becomes part of topic names)", self.name),
            ));
        }
        if !self.url.starts_with("mysql://") {
            return Err(ConfigError::invalid(
                "source.url",
                format!(
                    "{:?} must start with mysql:// (e.g. mysql://cdc@127.0.0.1:3306)",
                    self.url
                ),
            ));
        }
        if self.server_id == 0 {
            return Err(ConfigError::invalid(
                "source.server_id",
                "0 is not allowed: a replica needs a non-zero server_id unique among the source's replicas",
            ));
        }
        if self.include_tables.is_empty() {
            return Err(ConfigError::invalid(
                "source.include_tables",
                "is empty: name at least one table as \"db.table\" (e.g. [\"shop.orders\"])",
            ));
        }
        for (key, list) in [
            ("source.include_tables", &self.include_tables),
            ("source.exclude_tables", &self.exclude_tables),
        ] {
            for t in list {
                match t.split_once('.') {
                    Some((db, table)) if !db.is_empty() && !table.is_empty() => {}
                    _ => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{t:?} is not of the form \"db.table\" or \"db.*\""),
                        ))
                    }
                }
            }
        }
        self.tls.validate_implemented("source.tls")
    }

    /// The URL with the password filled in from `password` (if any).
    pub fn connection_url(&self) -> Result<String, ConfigError> {
        with_password(&self.url, self.password.resolve("source.password")?)
    }
}

/// `[kafka]`: the broker both the reader and the applier use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// Topic prefix: table topics are `<prefix>.<db>.<table>`. Defaults to `source.name`.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Partitions of table topics the reader creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics the reader creates (3 in production).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`), applied last.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    6
}
fn default_replication_factor() -> i32 {
    1
}

impl KafkaConfig {
    /// Checks values that would fail later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "is empty: give host:port of at least one broker",
            ));
        }
        if self.partitions < 1 {
            return Err(ConfigError::invalid(
                "kafka.partitions",
                "must be at least 1",
            ));
        }
        if self.replication_factor < 1 {
            return Err(ConfigError::invalid(
                "kafka.replication_factor",
                "must be at least 1",
            ));
        }
        if let Some(p) = &self.topic_prefix {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(ConfigError::invalid(
                    "kafka.topic_prefix",
                    format!(
                        "{p:?} must be non-empty and use only letters, digits, '.', '_' and '-'"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The topic prefix, defaulting to the source name.
    pub fn prefix<'a>(&'a self, source_name: &'a str) -> &'a str {
        self.topic_prefix.as_deref().unwrap_or(source_name)
    }
}

/// `[warehouse]`: the PostgreSQL database the applier writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// `postgres://user@host:port/db`.
    pub url: String,
    /// Password of the warehouse user.
    #[serde(default)]
    pub password: Secret,
    /// Schema that receives every replicated table (created if missing). When unset, each source
    /// database maps to a PostgreSQL schema of the same name: `shop.orders` → `shop.orders`.
    #[serde(default)]
    pub schema: Option<String>,
    /// Schema of cdcsync's own bookkeeping tables (processed messages, tombstones).
    #[serde(default = "default_meta_schema")]
    pub meta_schema: String,
    /// TLS to PostgreSQL.
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_meta_schema() -> String {
    "cdcsync".into()
}

impl WarehouseConfig {
    /// Checks values that would fail later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "warehouse.url",
                format!("{:?} must start with postgres:// (e.g. postgres://cdcsync@127.0.0.1:5432/warehouse)", self.url),
            ));
        }
        let schema = self.schema.as_deref().unwrap_or("public");
        for (key, v) in [
            ("warehouse.schema", schema),
            ("warehouse.meta_schema", self.meta_schema.as_str()),
        ] {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::invalid(
                    key,
                    format!("{v:?} must be a plain identifier (letters, digits, '_')"),
                ));
            }
        }
        self.tls.validate_reserved("warehouse.tls")
    }

    /// The PostgreSQL schema that receives tables of source database `db`.
    pub fn target_schema<'a>(&'a self, db: &'a str) -> &'a str {
        self.schema.as_deref().unwrap_or(db)
    }

    /// The URL with the password filled in from `password` (if any).
    pub fn connection_url(&self) -> Result<String, ConfigError> {
        with_password(&self.url, self.password.resolve("warehouse.password")?)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line (for log shippers).
    Json,
}

/// `[telemetry]`: logs, metrics endpoint, shutdown bound.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// `human` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax (`RUST_LOG` wins when set).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Upper bound on graceful shutdown after SIGTERM, in milliseconds.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            bind: default_bind(),
            log_format: LogFormat::Human,
            log_level: default_log_level(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }
    }
}

fn default_bind() -> String {
    "127.0.0.1:9464".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}

impl TelemetryConfig {
    /// Checks values that would fail later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "telemetry.bind",
                format!("{:?} is not an address like 127.0.0.1:9464", self.bind),
            ));
        }
        if self.shutdown_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "telemetry.shutdown_timeout_ms",
                "must be above 0",
            ));
        }
        Ok(())
    }
}

/// Puts `password` into the user-info part of `url` when one is given (percent-encoded).
fn with_password(url: &str, password: Option<String>) -> Result<String, ConfigError> {
    let Some(password) = password else {
        return Ok(url.to_string());
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (userinfo, host) = rest.split_once('@').ok_or_else(|| {
        ConfigError::invalid(
            "url",
            format!("{url:?} has no user@ part to attach the password to"),
        )
    })?;
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Ok(format!("{scheme}://{user}:{encoded}@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(extra: &str) -> Result<SourceConfig, ConfigError> {
        crate::from_toml(&format!(
            "name = \"shop\"\nurl = \"mysql://cdc@127.0.0.1:3306\"\ninclude_tables = [\"shop.orders\"]\n{extra}"
        ))
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = source("colour = \"blue\"").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("server_id = 0", "source.server_id"),
            ("exclude_tables = [\"orders\"]", "source.exclude_tables"),
            (
                "tls = { mode = \"verify_identity\", ca_file = \"/nonexistent/ca.pem\" }",
                "source.tls.ca_file",
            ),
            (
                "tls = { ca_file = \"/etc/hostname\" }",
                "source.tls.ca_file",
            ),
        ];
        for (extra, key) in cases {
            let err = source(extra).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        source("").unwrap().validate().unwrap();
        source("tls = { mode = \"required\" }")
            .unwrap()
            .validate()
            .unwrap();
        let e = source("tls = { mode = \"bogus\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("tls.mode"), "{e}");
    }

    #[test]
    fn password_goes_into_the_url_encoded() {
        let mut s = source("password = \"p@ss:word\"").unwrap();
        assert_eq!(
            s.connection_url().unwrap(),
            "mysql://cdc:p%40ss%3Aword@127.0.0.1:3306"
        );
        s.password = Secret::None;
        assert_eq!(s.connection_url().unwrap(), "mysql://cdc@127.0.0.1:3306");
        assert_eq!(format!("{:?}", Secret::Inline("x".into())), "<redacted>");
    }
}
