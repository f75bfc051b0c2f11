//! The `loadgen` command: arguments and the function that runs them. Shared by
//! `cdcsync loadgen` and the stand-alone `cdc-loadgen` binary so both behave identically.

use std::io::Write;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::{parse_duration, Burst, Mix, PrefillConfig, WorkloadConfig};
use crate::{connect, prefill, run_workload, LoadgenError};

/// Drive an order workload (or a bulk prefill) against a MySQL/MariaDB source.
///
/// With `--prefill N` alone, inserts exactly N orders and exits. Otherwise (after the prefill,
/// if any) runs the change mix until `--duration` or `--max-rows` is reached, or until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Admin connection URL of the source (needs CREATE, INSERT, UPDATE, DELETE).
    #[arg(long, env = "MYSQL_ADMIN_URL", hide_env_values = true)]
    pub url: String,
    /// Database holding the `orders` table; created if missing.
    #[arg(long, default_value = "shop")]
    pub db: String,
    /// Target row changes per second over all connections, or `max` for flat out.
    #[arg(long, default_value = "1000")]
    pub rate: String,
    /// How long to run the change mix, e.g. `60s`, `5m` (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<String>,
    /// Stop after exactly this many row changes.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// Row changes per transaction.
    #[arg(long, default_value_t = 50)]
    pub tx_rows: u32,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Start a promotion burst this often, e.g. `30s`.
    #[arg(long, requires = "burst_for")]
    pub burst_every: Option<String>,
    /// Length of each promotion burst, e.g. `5s`.
    #[arg(long, requires = "burst_every")]
    pub burst_for: Option<String>,
    /// Rate multiplier during a burst.
    #[arg(long, default_value_t = 10.0)]
    pub burst_factor: f64,
    /// Operation weights, e.g. `insert=50,status=30,amount=15,delete=5`.
    #[arg(long, default_value = "insert=50,status=30,amount=15,delete=5")]
    pub mix: String,
    /// Insert exactly N new orders first, as fast as possible.
    #[arg(long)]
    pub prefill: Option<u64>,
    /// Rows per multi-row INSERT during the prefill.
    #[arg(long, default_value_t = 1000)]
    pub prefill_batch: u32,
    /// Seed of every random choice; the same seed repeats the same changes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Drop the database first.
    #[arg(long)]
    pub recreate: bool,
    /// Write the full report (per-second counts, every commit instant) as JSON to this file.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// No progress lines, only the final summary.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadgenArgs {
    /// The workload configuration these arguments describe.
    pub fn workload_config(&self) -> Result<WorkloadConfig, LoadgenError> {
        let mut cfg = WorkloadConfig::new(self.db.clone());
        cfg.rate = match self.rate.trim() {
            "max" | "flat" | "0" => None,
            r => Some(r.parse().map_err(|_| {
                LoadgenError::Config(format!("--rate {r:?} is not a number of rows/s or `max`"))
            })?),
        };
        cfg.duration = self.duration.as_deref().map(parse_duration).transpose()?;
        cfg.max_rows = self.max_rows;
        cfg.tx_rows = self.tx_rows;
        cfg.connections = self.connections;
        cfg.mix = self.mix.parse::<Mix>()?;
        cfg.seed = self.seed;
        cfg.burst = match (&self.burst_every, &self.burst_for) {
            (Some(every), Some(length)) => Some(Burst {
                every: parse_duration(every)?,
                length: parse_duration(length)?,
                factor: self.burst_factor,
            }),
            _ => None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether the change mix runs (it does not with `--prefill` alone).
    pub fn runs_workload(&self) -> bool {
        self.prefill.is_none() || self.duration.is_some() || self.max_rows.is_some()
    }
}

/// Runs the command; Ctrl-C ends the run gracefully (the report still prints).
pub async fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    let cfg = args.workload_config()?;
    let pool = connect(&args.url, args.connections.max(2))?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("loadgen: stopping (Ctrl-C)");
                stop.cancel();
            }
        });
    }
    if args.recreate {
        let mut conn = pool.get_conn().await?;
        crate::schema::drop_database(&mut conn, &args.db).await?;
    }
    let mut json = serde_json::Map::new();
    if let Some(rows) = args.prefill {
        let mut pcfg = PrefillConfig::new(args.db.clone(), rows);
        pcfg.batch_rows = args.prefill_batch;
        pcfg.connections = args.connections.clamp(1, 4);
        pcfg.seed = args.seed;
        let quiet = args.quiet;
        let report = prefill(&pool, &pcfg, stop.clone(), |done, elapsed| {
            if !quiet {
                eprintln!(
                    "loadgen prefill {:>6.1}s  rows {done:>10}/{rows}",
                    elapsed.as_secs_f64()
                );
            }
        })
        .await?;
        println!("{}", report.summary());
        json.insert(
            "prefill".into(),
            serde_json::to_value(&report).unwrap_or_default(),
        );
    }
    if args.runs_workload() {
        let quiet = args.quiet;
        let report = run_workload(&pool, &cfg, stop.clone(), |p| {
            if !quiet {
                eprintln!("{}", p.line());
            }
        })
        .await?;
        println!("{}", report.summary());
        json.insert(
            "run".into(),
            serde_json::to_value(&report).unwrap_or_default(),
        );
    }
    if let Some(path) = &args.report_json {
        let mut f = std::fs::File::create(path).map_err(|e| {
            LoadgenError::Config(format!("cannot write report {}: {e}", path.display()))
        })?;
        serde_json::to_writer(&mut f, &serde_json::Value::Object(json)).map_err(|e| {
            LoadgenError::Config(format!("cannot write report {}: {e}", path.display()))
        })?;
        let _ = f.flush();
    }
    let _ = pool.disconnect().await;
    Ok(())
}
