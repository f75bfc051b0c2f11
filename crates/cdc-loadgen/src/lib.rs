//! The order workload generator: writes a realistic stream of changes to `shop.orders` in a
//! MySQL/MariaDB source, for `make demo`, the integration tests and the benchmarks.
//!
//! * [`schema`] — the 15-column `orders` table (unsigned BIGINT id, ENUM status, DECIMAL
//!   amounts, JSON, non-ASCII text, `DATETIME(6)`/`TIMESTAMP(6)`, `updated_time`).
//! * [`prefill`] — exactly N new orders, as fast as possible (multi-row `INSERT`s).
//! * [`workload`] — a mix of inserts, status transitions, amount edits and deletes at a target
//!   rate (with "promotion bursts") or flat out, in multi-row transactions on N connections,
//!   repeatable from a seed. Single-row autocommit writes are fsync-bound (about 2,000/s on the
//!   reference machine), which is why transactions carry `tx_rows` changes each.
//! * [`report`] — rows/s achieved, counts by operation, rows per second of the run and the
//!   commit instant of every transaction, for end-to-end latency measurement.
//! * [`cli`] — the `loadgen` command's arguments, shared by `cdcsync loadgen` and the
//!   stand-alone `cdc-loadgen` binary.
//!
//! The generator writes only through the admin connection it is given and never reads the
//! binlog, Kafka or the warehouse: it is a source-side tool.

pub mod cli;
pub mod config;
pub mod prefill;
pub mod report;
pub mod rng;
pub mod row;
pub mod schema;
pub mod workload;

pub use config::{Burst, Mix, OpKind, PrefillConfig, WorkloadConfig};
pub use prefill::prefill;
pub use report::{CommitRecord, OpCounts, PrefillReport, Progress, RunReport};
pub use workload::run_workload;

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A setting is invalid; nothing was written. The message names the setting and the fix.
    #[error("invalid loadgen setting: {0}")]
    Config(String),
    /// The database refused or dropped a statement. A connection error is transient (run
    /// again); a SQL error on the generator's own statements means the table is not the one
    /// it created (e.g. an older layout: drop the database or pass another `--db`).
    #[error("database error: {0}")]
    Mysql(#[from] mysql_async::Error),
    /// A worker task failed in an unexpected way.
    #[error("loadgen worker failed: {0}")]
    Worker(String),
    /// The run was stopped before it finished (prefill only; a workload run just ends early).
    #[error("cancelled")]
    Cancelled,
}

impl LoadgenError {
    /// Whether running again unchanged may succeed (the server was unreachable or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LoadgenError::Mysql(mysql_async::Error::Io(_))
                | LoadgenError::Mysql(mysql_async::Error::Driver(_))
        )
    }
}

/// A connection pool for the generator: at most `connections` connections (plus one for
/// schema work), no statement cache (the generator sends text statements only).
pub fn connect(url: &str, connections: u32) -> Result<mysql_async::Pool, LoadgenError> {
    let opts = mysql_async::Opts::from_url(url).map_err(|e| {
        LoadgenError::Config(format!(
            "MySQL URL is not valid ({e}); expected mysql://user:password@host:port"
        ))
    })?;
    let max = connections.max(1) as usize + 1;
    let constraints = mysql_async::PoolConstraints::new(0, max)
        .ok_or_else(|| LoadgenError::Config("invalid connection count".into()))?;
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints))
        .stmt_cache_size(0);
    Ok(mysql_async::Pool::new(opts))
}
