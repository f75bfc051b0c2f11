//! What a run does: the operation mix, the rate and its bursts, transactions and connections.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::LoadgenError;

/// The kinds of row change the generator makes. Every operation changes exactly one row, so
/// "rows/s" and "operations/s" are the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// A new order (`INSERT`), status `pending`.
    Insert,
    /// The next step of the order's life: pending → paid → shipped → delivered, paid or
    /// shipped → refunded, pending → cancelled (`UPDATE` of `status`, and `paid_at` on payment).
    Status,
    /// A changed amount, discount and tax (`UPDATE` of the DECIMAL columns).
    Amount,
    /// A removed order (`DELETE`).
    Delete,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [
        OpKind::Insert,
        OpKind::Status,
        OpKind::Amount,
        OpKind::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Insert => "insert",
            OpKind::Status => "status",
            OpKind::Amount => "amount",
            OpKind::Delete => "delete",
        }
    }
}

/// Relative weights of the operation kinds, e.g. `insert=50,status=30,amount=15,delete=5`.
/// Weights need not add up to 100; a kind left out has weight 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub insert: u32,
    pub status: u32,
    pub amount: u32,
    pub delete: u32,
}

impl Default for Mix {
    /// An order system's typical shape: half new orders, most of the rest status changes.
    fn default() -> Self {
        Mix {
            insert: 50,
            status: 30,
            amount: 15,
            delete: 5,
        }
    }
}

impl Mix {
    /// Inserts only (benchmarks that want a known number of rows).
    pub const INSERT_ONLY: Mix = Mix {
        insert: 1,
        status: 0,
        amount: 0,
        delete: 0,
    };

    pub fn weight(&self, kind: OpKind) -> u32 {
        match kind {
            OpKind::Insert => self.insert,
            OpKind::Status => self.status,
            OpKind::Amount => self.amount,
            OpKind::Delete => self.delete,
        }
    }

    pub fn total(&self) -> u64 {
        OpKind::ALL.iter().map(|k| u64::from(self.weight(*k))).sum()
    }

    /// The kind whose cumulative weight interval contains `x` (`x < total()`).
    pub fn pick(&self, mut x: u64) -> OpKind {
        for kind in OpKind::ALL {
            let w = u64::from(self.weight(kind));
            if x < w {
                return kind;
            }
            x -= w;
        }
        OpKind::Insert
    }
}

impl FromStr for Mix {
    type Err = LoadgenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            insert: 0,
            status: 0,
            amount: 0,
            delete: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                LoadgenError::Config(format!(
                    "mix entry {part:?} is not KIND=WEIGHT (e.g. insert=50)"
                ))
            })?;
            let value: u32 = value.trim().parse().map_err(|_| {
                LoadgenError::Config(format!(
                    "mix weight {value:?} of {key:?} is not a whole number"
                ))
            })?;
            match key.trim() {
                "insert" => mix.insert = value,
                "status" => mix.status = value,
                "amount" => mix.amount = value,
                "delete" => mix.delete = value,
                other => {
                    return Err(LoadgenError::Config(format!(
                        "unknown mix kind {other:?}: use insert, status, amount, delete"
                    )))
                }
            }
        }
        if mix.total() == 0 {
            return Err(LoadgenError::Config(
                "the mix has no positive weight".into(),
            ));
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "insert={},status={},amount={},delete={}",
            self.insert, self.status, self.amount, self.delete
        )
    }
}

/// The "promotion burst": every `every`, the target rate is multiplied by `factor` for `length`.
/// The first burst starts after one full `every`, so a run opens at the base rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub every: Duration,
    pub length: Duration,
    pub factor: f64,
}

impl Burst {
    /// Whether `elapsed` (since the start of the run) falls inside a burst.
    pub fn active_at(&self, elapsed: Duration) -> bool {
        if self.every.is_zero() || elapsed < self.every {
            return false;
        }
        let into = (elapsed.as_nanos() - self.every.as_nanos()) % self.every.as_nanos();
        into < self.length.as_nanos()
    }
}

/// A whole workload run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Database that holds the `orders` table; created if missing.
    pub db: String,
    /// Target rows per second over all connections; `None` runs flat out.
    pub rate: Option<f64>,
    /// Optional promotion bursts on top of `rate` (ignored when running flat out).
    pub burst: Option<Burst>,
    /// Stop after this long; `None` runs until `max_rows` or the stop token.
    pub duration: Option<Duration>,
    /// Stop after exactly this many row changes (split over the connections); tests use it to
    /// know the exact number of changes made.
    pub max_rows: Option<u64>,
    /// Row changes per transaction. Single-row transactions are bound by the server's fsync
    /// (about 2,000/s here), so thousands of rows/s need tens of rows per transaction.
    pub tx_rows: u32,
    /// Concurrent connections, each with its own share of the rows so they never contend.
    pub connections: u32,
    /// Relative weights of the operation kinds.
    pub mix: Mix,
    /// Seed of the whole run: the same seed, configuration and starting table give each
    /// connection the same sequence of changes.
    pub seed: u64,
    /// Keep one record per committed transaction (commit instant, rows) in the report. Bounded
    /// by `max_commit_records`, after which only the per-second counts are kept.
    pub record_commits: bool,
    pub max_commit_records: usize,
    /// How many existing rows each connection loads at start and keeps track of as candidates
    /// for updates and deletes; bounds the generator's memory on a large table.
    pub max_tracked_rows_per_connection: usize,
    /// Interval of the progress callback.
    pub progress_interval: Duration,
}

impl WorkloadConfig {
    /// A configuration with the defaults of the `loadgen` command.
    pub fn new(db: impl Into<String>) -> Self {
        WorkloadConfig {
            db: db.into(),
            rate: Some(1000.0),
            burst: None,
            duration: Some(Duration::from_secs(60)),
            max_rows: None,
            tx_rows: 50,
            connections: 4,
            mix: Mix::default(),
            seed: 42,
            record_commits: true,
            max_commit_records: 1_000_000,
            max_tracked_rows_per_connection: 250_000,
            progress_interval: Duration::from_secs(1),
        }
    }

    pub fn validate(&self) -> Result<(), LoadgenError> {
        crate::schema::validate_db_name(&self.db)?;
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(LoadgenError::Config(format!(
                    "rate {rate} must be a positive number of rows/s"
                )));
            }
        }
        if let Some(b) = self.burst {
            if b.every.is_zero() || b.length >= b.every || !(b.factor.is_finite() && b.factor > 0.0)
            {
                return Err(LoadgenError::Config(format!(
                    "burst every {:?} for {:?} ×{}: the burst must be shorter than its period, and the factor positive",
                    b.every, b.length, b.factor
                )));
            }
        }
        if self.tx_rows == 0 || self.tx_rows > 100_000 {
            return Err(LoadgenError::Config(format!(
                "tx-rows {} must be within 1..=100000",
                self.tx_rows
            )));
        }
        if self.connections == 0 || self.connections > 256 {
            return Err(LoadgenError::Config(format!(
                "connections {} must be within 1..=256",
                self.connections
            )));
        }
        if self.mix.total() == 0 {
            return Err(LoadgenError::Config(
                "the mix has no positive weight".into(),
            ));
        }
        if self.progress_interval.is_zero() {
            return Err(LoadgenError::Config(
                "progress interval must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The target rate (rows/s, all connections) at `elapsed`, with bursts applied.
    pub fn rate_at(&self, elapsed: Duration) -> Option<f64> {
        let base = self.rate?;
        match self.burst {
            Some(b) if b.active_at(elapsed) => Some(base * b.factor),
            _ => Some(base),
        }
    }
}

/// A fast bulk load of new orders (multi-row `INSERT`s), for benchmarks and the snapshot.
#[derive(Debug, Clone)]
pub struct PrefillConfig {
    pub db: String,
    /// Exactly this many rows are inserted, with ids following the table's current maximum.
    pub rows: u64,
    /// Rows per `INSERT` statement (each statement is its own transaction).
    pub batch_rows: u32,
    /// Concurrent connections.
    pub connections: u32,
    pub seed: u64,
}

impl PrefillConfig {
    pub fn new(db: impl Into<String>, rows: u64) -> Self {
        PrefillConfig {
            db: db.into(),
            rows,
            batch_rows: 1000,
            connections: 2,
            seed: 42,
        }
    }

    pub fn validate(&self) -> Result<(), LoadgenError> {
        crate::schema::validate_db_name(&self.db)?;
        if self.batch_rows == 0 || self.batch_rows > 50_000 {
            return Err(LoadgenError::Config(format!(
                "prefill batch {} must be within 1..=50000",
                self.batch_rows
            )));
        }
        if self.connections == 0 || self.connections > 64 {
            return Err(LoadgenError::Config(format!(
                "prefill connections {} must be within 1..=64",
                self.connections
            )));
        }
        Ok(())
    }
}

/// Parses `90`, `90s`, `1500ms`, `2m`, `1h` into a duration (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, LoadgenError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| LoadgenError::Config(format!("{s:?} is not a duration (e.g. 90s, 2m)")))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(LoadgenError::Config(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h)"
            )))
        }
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(LoadgenError::Config(format!("{s:?} is not a duration")));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parsing() {
        assert_eq!(
            "insert=50,status=30,amount=15,delete=5"
                .parse::<Mix>()
                .unwrap(),
            Mix::default()
        );
        assert_eq!("insert=1".parse::<Mix>().unwrap(), Mix::INSERT_ONLY);
        assert_eq!(
            " status = 2 , insert=1".parse::<Mix>().unwrap(),
            Mix {
                insert: 1,
                status: 2,
                amount: 0,
                delete: 0
            }
        );
        for bad in [
            "",
            "insert=0",
            "insert",
            "insert=x",
            "update=3",
            "insert=-1",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mix_pick_follows_weights() {
        let mix = Mix {
            insert: 2,
            status: 0,
            amount: 1,
            delete: 1,
        };
        let picked: Vec<OpKind> = (0..mix.total()).map(|x| mix.pick(x)).collect();
        assert_eq!(
            picked,
            vec![
                OpKind::Insert,
                OpKind::Insert,
                OpKind::Amount,
                OpKind::Delete
            ]
        );
    }

    #[test]
    fn burst_windows() {
        let b = Burst {
            every: Duration::from_secs(10),
            length: Duration::from_secs(2),
            factor: 10.0,
        };
        let at = |s: f64| b.active_at(Duration::from_secs_f64(s));
        assert!(!at(0.0) && !at(5.0) && !at(9.99));
        assert!(at(10.0) && at(11.9));
        assert!(!at(12.0) && !at(19.9));
        assert!(at(20.5) && !at(22.5));
        let mut cfg = WorkloadConfig::new("shop");
        cfg.rate = Some(100.0);
        cfg.burst = Some(b);
        assert_eq!(cfg.rate_at(Duration::from_secs(1)), Some(100.0));
        assert_eq!(cfg.rate_at(Duration::from_secs(11)), Some(1000.0));
    }

    #[test]
    fn durations() {
        for (s, d) in [
            ("90", 90.0),
            ("90s", 90.0),
            ("1500ms", 1.5),
            ("2m", 120.0),
            ("1h", 3600.0),
            ("0.5s", 0.5),
        ] {
            assert_eq!(
                parse_duration(s).unwrap(),
                Duration::from_secs_f64(d),
                "{s}"
            );
        }
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn validation() {
        let mut c = WorkloadConfig::new("shop");
        assert!(c.validate().is_ok());
        c.tx_rows = 0;
        assert!(c.validate().is_err());
        let mut c = WorkloadConfig::new("shop");
        c.burst = Some(Burst {
            every: Duration::from_secs(5),
            length: Duration::from_secs(5),
            factor: 10.0,
        });
        assert!(c.validate().is_err());
    }
}
