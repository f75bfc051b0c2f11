//! Errors of a reconciliation run, split into transient (retry the run later) and definite
//! (the operator must change something).

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The source database failed or went away; the next run may succeed.
    #[error("source database: {0}")]
    Source(#[from] mysql_async::Error),
    /// The warehouse failed or went away; the next run may succeed.
    #[error("warehouse: {0}")]
    Warehouse(#[from] sqlx::Error),
    /// Producing repair events failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The table cannot be reconciled as it is (no primary key, unsupported key type, missing
    /// warehouse table or column). The message names the fix.
    #[error("{0}")]
    Definite(String),
    /// Writing the report file failed.
    #[error("report file {path}: {source}")]
    Report {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Configuration.
    #[error(transparent)]
    Config(#[from] cdc_config::ConfigError),
}

impl ReconcileError {
    /// True when retrying without a change cannot help.
    pub fn is_definite(&self) -> bool {
        matches!(
            self,
            ReconcileError::Definite(_) | ReconcileError::Config(_) | ReconcileError::Report { .. }
        )
    }
}
