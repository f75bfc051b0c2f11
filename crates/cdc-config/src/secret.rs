//! Secrets: given inline, from an environment variable, or from a file; never printed.

use std::fmt;

use serde::Deserialize;

use crate::ConfigError;

/// A secret value. In TOML either a string, or `{ env = "VAR" }`, or `{ file = "/path" }`
/// (a Kubernetes Secret mount or a systemd credential). `Debug` prints `<redacted>`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Secret {
    /// No secret.
    #[default]
    None,
    /// The value itself (fine for local stacks; prefer `env` or `file` in production).
    Inline(String),
    /// Read from an environment variable at start.
    Env {
        /// The variable's name.
        env: String,
    },
    /// Read from a file at start (trailing newline removed).
    File {
        /// The file's path.
        file: String,
    },
}

impl Secret {
    /// Resolves the secret; `key` names the configuration key in errors.
    pub fn resolve(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self {
            Secret::None => Ok(None),
            Secret::Inline(v) => Ok(Some(v.clone())),
            Secret::Env { env } => std::env::var(env).map(Some).map_err(|_| {
                ConfigError::invalid(key, format!("environment variable {env} is not set"))
            }),
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|source| ConfigError::SecretFile {
                    key: key.into(),
                    path: file.clone(),
                    source,
                }),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::None => f.write_str("None"),
            Secret::Inline(_) => f.write_str("<redacted>"),
            Secret::Env { env } => write!(f, "env:{env}"),
            Secret::File { file } => write!(f, "file:{file}"),
        }
    }
}
