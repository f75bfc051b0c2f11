//! Errors of the applier, split the way the retry logic needs them.
//!
//! * [`ApplyError::Transient`]: PostgreSQL unreachable, connection reset, serialization failure,
//!   deadlock, server shutting down. The batch is retried with backoff, offsets stay uncommitted
//!   and the partition's consumption pauses; nothing needs an operator.
//! * [`ApplyError::Data`]: PostgreSQL rejected a value (SQLSTATE classes 22, 23, 54). The batch is
//!   retried row by row so that only the offending messages go to the dead-letter topic.
//! * [`ApplierError`]: definite failures that stop the applier and tell the operator what to do.

use cdc_config::ConfigError;

/// A definite failure of the applier: it stops, and the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ApplierError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka refused something that retrying will not fix (bad subscription, unknown group
    /// coordinator after start-up).
    #[error("Kafka: {0}")]
    Kafka(String),
    /// PostgreSQL refused something that retrying will not fix.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A target table does not match what the events need and the configuration forbids fixing
    /// it automatically.
    #[error("{0}")]
    Schema(String),
}

/// The kind of a PostgreSQL error, also the `kind` label of
/// `cdcsync_applier_postgres_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgErrorKind {
    /// Connection refused, reset or closed; server shutting down or starting.
    Connection,
    /// Serialization failure or deadlock.
    Serialization,
    /// A value or constraint was rejected.
    Data,
    /// Anything else.
    Other,
}

impl PgErrorKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            PgErrorKind::Connection => "connection",
            PgErrorKind::Serialization => "serialization",
            PgErrorKind::Data => "data",
            PgErrorKind::Other => "other",
        }
    }

    /// Classifies an sqlx error.
    pub fn of(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => PgErrorKind::Connection,
            sqlx::Error::Protocol(_) => PgErrorKind::Connection,
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                Self::of_sqlstate(&code)
            }
            _ => PgErrorKind::Other,
        }
    }

    /// Classifies a SQLSTATE.
    pub fn of_sqlstate(code: &str) -> Self {
        match code {
            "40001" | "40P01" => PgErrorKind::Serialization,
            c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                PgErrorKind::Connection
            }
            c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => {
                PgErrorKind::Data
            }
            _ => PgErrorKind::Other,
        }
    }
}

/// Why applying a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Retry the same batch later.
    #[error("transient PostgreSQL failure ({kind:?}): {message}")]
    Transient {
        /// What kind.
        kind: PgErrorKind,
        /// The error text.
        message: String,
    },
    /// A value was rejected: isolate it row by row.
    #[error("PostgreSQL rejected a value: {0}")]
    Data(String),
    /// Stop the applier.
    #[error(transparent)]
    Definite(#[from] ApplierError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        let kind = PgErrorKind::of(&e);
        crate::metrics::PostgresError { kind, error: &e }.emit();
        match kind {
            PgErrorKind::Data => ApplyError::Data(e.to_string()),
            // Unknown errors are retried rather than dropped: stalling one partition (visible as
            // lag, alerting) is better than losing data on an error we did not anticipate.
            _ => ApplyError::Transient {
                kind,
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify() {
        for (code, kind) in [
            ("40001", PgErrorKind::Serialization),
            ("40P01", PgErrorKind::Serialization),
            ("08006", PgErrorKind::Connection),
            ("57P01", PgErrorKind::Connection),
            ("22003", PgErrorKind::Data),
            ("23502", PgErrorKind::Data),
            ("42P01", PgErrorKind::Other),
        ] {
            assert_eq!(PgErrorKind::of_sqlstate(code), kind, "{code}");
        }
    }
}
