//! `[reconcile]`: how reconciliation runs (chunking, concurrency, rate limit, re-check, repair).

use cdc_config::ConfigError;
use serde::Deserialize;

/// `[reconcile]` section of the configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Tables the scheduled mode checks, as `db.table`. Empty: every table named exactly in
    /// `source.include_tables` (wildcards are skipped).
    pub tables: Vec<String>,
    /// Rows per primary-key chunk: the unit of digest comparison and of parallelism. A larger
    /// chunk means fewer, cheaper-per-row digest queries.
    pub chunk_rows: u64,
    /// Most source rows read into memory at once when a chunk's digests differ: a differing
    /// chunk larger than this is cut into sub-ranges of this many rows, each compared by digest
    /// again, and only the differing sub-ranges are read row by row. Bounds the memory of a
    /// drill-down independently of `chunk_rows`.
    pub drill_rows: u64,
    /// Chunks compared at once (each holds one source and one warehouse connection).
    pub parallelism: usize,
    /// Upper bound on source rows read per second, over all chunks (0 = unlimited), so a run can
    /// go against a production source without hurting it.
    pub max_rows_per_second: u64,
    /// How long differing rows are re-checked before they are reported, in milliseconds: a row
    /// that converges within this time was a change in flight, not drift. Bounded so a run ends
    /// even when the pipeline is stopped (what persists is then reported).
    pub recheck_timeout_ms: u64,
    /// Pause between re-check rounds, in milliseconds.
    pub recheck_interval_ms: u64,
    /// At most this many differing keys are kept per run (re-checked, reported and repaired); the
    /// rest are counted. Bounds memory when a warehouse table is badly out of date.
    pub max_differences: usize,
    /// Scheduled mode: seconds between the end of one run and the start of the next (0 = the
    /// daemon does not reconcile on its own).
    pub interval_secs: u64,
    /// Scheduled mode: repair what persists, through the pipeline.
    pub repair: bool,
    /// Follow a repair delete with a tombstone (same key, null value), like the reader does.
    pub tombstones: bool,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            tables: Vec::new(),
            // 50,000: the digest queries' per-query overhead is then small enough for ~200k rows/s
            // on two cores (`docs/benchmarks.md`); drill-downs stay at `drill_rows`.
            chunk_rows: 50_000,
            drill_rows: 10_000,
            parallelism: 2,
            max_rows_per_second: 0,
            recheck_timeout_ms: 10_000,
            recheck_interval_ms: 500,
            max_differences: 100_000,
            interval_secs: 0,
            repair: false,
            tombstones: true,
        }
    }
}

impl ReconcileConfig {
    /// Checks values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=1_000_000).contains(&self.chunk_rows) {
            return Err(ConfigError::invalid(
                "reconcile.chunk_rows",
                "must be between 100 and 1000000",
            ));
        }
        if !(100..=1_000_000).contains(&self.drill_rows) {
            return Err(ConfigError::invalid(
                "reconcile.drill_rows",
                "must be between 100 and 1000000",
            ));
        }
        if !(1..=64).contains(&self.parallelism) {
            return Err(ConfigError::invalid(
                "reconcile.parallelism",
                "must be between 1 and 64",
            ));
        }
        if self.recheck_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "reconcile.recheck_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.max_differences == 0 {
            return Err(ConfigError::invalid(
                "reconcile.max_differences",
                "must be greater than 0",
            ));
        }
        for t in &self.tables {
            if cdc_event::TableId::parse(t).is_none() || t.contains('*') {
                return Err(ConfigError::invalid(
                    "reconcile.tables",
                    format!("{t:?} is not of the form \"db.table\""),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        reconcile: ReconcileConfig,
    }

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        ReconcileConfig::default().validate().unwrap();
        type Breaker = fn(&mut ReconcileConfig);
        let cases: [(&str, Breaker); 5] = [
            ("reconcile.chunk_rows", |c| c.chunk_rows = 10),
            ("reconcile.drill_rows", |c| c.drill_rows = 0),
            ("reconcile.parallelism", |c| c.parallelism = 0),
            ("reconcile.recheck_interval_ms", |c| {
                c.recheck_interval_ms = 0
            }),
            ("reconcile.tables", |c| c.tables = vec!["orders".into()]),
        ];
        for (key, f) in cases {
            let mut c = ReconcileConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e} should name {key}");
        }
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_keys() {
        let f: File =
            cdc_config::from_toml("[reconcile]\nchunk_rows = 500\nrepair = true\n").unwrap();
        assert_eq!(f.reconcile.chunk_rows, 500);
        assert!(f.reconcile.repair);
        assert_eq!(f.reconcile.parallelism, 2);
        assert!(cdc_config::from_toml::<File>("[reconcile]\nchunk_size = 5\n").is_err());
    }
}
