//! `cdcsync watch`: the live terminal view of a running pipeline (used by `make demo`).
//!
//! Once a second it scrapes the reader's and the applier's `/metrics` and asks the warehouse for
//! the end-to-end latency of the rows applied in the last second, measured on the rows themselves
//! (`_cdc_applied_at − updated_time`: the applier's clock at apply minus the source's `NOW(6)` at
//! write, both on this machine), which is exact to the microsecond, unlike the binlog's
//! one-second event timestamps. Soft-deleted rows are left out: they keep the `updated_time` of
//! their last write, so their "latency" would be the row's age.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to watch.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The reader's metrics address (host:port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub reader: String,
    /// The applier's metrics address (host:port).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub applier: String,
    /// PostgreSQL URL of the warehouse (for latency).
    #[arg(long, env = "POSTGRES_URL")]
    pub warehouse: Option<String>,
    /// The warehouse table whose rows carry `updated_time` (for latency).
    #[arg(long, default_value = "shop.orders")]
    pub table: String,
    /// Stop after this many seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// After `--seconds`, keep watching until the pipeline has caught up (nothing captured or
    /// applied and no backlog for 3 s in a row), at most this many more seconds.
    #[arg(long, default_value_t = 0)]
    pub catch_up_seconds: u64,
}

/// Sum of every sample of each metric family, from the Prometheus text format.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

async fn scrape(addr: &str) -> Option<HashMap<String, f64>> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        Some(parse_metrics(buf.split_once("\r\n\r\n")?.1))
    };
    tokio::time::timeout(Duration::from_secs(1), fut)
        .await
        .ok()
        .flatten()
}

fn rate(now: &HashMap<String, f64>, before: &HashMap<String, f64>, name: &str, secs: f64) -> f64 {
    (now.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)).max(0.0)
        / secs
}

/// Runs the view until Ctrl-C or `--seconds`.
pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let pool = match &args.warehouse {
        Some(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?,
        ),
        None => None,
    };
    let (schema, table) = args
        .table
        .split_once('.')
        .unwrap_or(("public", &args.table));
    let latency_sql = format!(
        "SELECT count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
           FROM (SELECT extract(epoch FROM _cdc_applied_at - (updated_time AT TIME ZONE 'UTC')) * 1000 AS d
                   FROM \"{schema}\".\"{table}\"
                  WHERE _cdc_applied_at > clock_timestamp() - interval '1 second' AND NOT _cdc_deleted) s"
    );
    let start = Instant::now();
    let mut prev_r = scrape(&args.reader).await.unwrap_or_default();
    let mut prev_a = scrape(&args.applier).await.unwrap_or_default();
    let mut prev_t = Instant::now();
    let mut quiet_for = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let r = scrape(&args.reader).await;
        let a = scrape(&args.applier).await;
        let secs = prev_t.elapsed().as_secs_f64();
        prev_t = Instant::now();
        let mut line = format!("{:>4}s", start.elapsed().as_secs());
        let mut busy = false;
        match &r {
            Some(r) => {
                let captured = rate(r, &prev_r, "cdcsync_reader_events_total", secs);
                busy |= captured > 0.0;
                line += &format!(
                    " | captured {captured:>7.0} rows/s | reader lag {:>3.0} s",
                    r.get("cdcsync_reader_lag_seconds").copied().unwrap_or(0.0)
                );
                prev_r = r.clone();
            }
            None => line += " | reader: no metrics",
        }
        match &a {
            Some(a) => {
                let applied = rate(a, &prev_a, "cdcsync_applier_rows_applied_total", secs);
                let backlog = a
                    .get("cdcsync_applier_backlog_messages")
                    .copied()
                    .unwrap_or(0.0);
                busy |= applied > 0.0 || backlog > 0.0;
                line += &format!(" | applied {applied:>7.0} rows/s | backlog {backlog:>7.0} msgs");
                prev_a = a.clone();
            }
            None => line += " | applier: no metrics",
        }
        if let Some(pool) = &pool {
            let row: Result<(i64, Option<f64>, Option<f64>), _> =
                sqlx::query_as(&latency_sql).fetch_one(pool).await;
            match row {
                Ok((n, Some(p50), Some(p99))) if n > 0 => {
                    line +=
                        &format!(" | e2e latency p50 {p50:>5.1} ms p99 {p99:>6.1} ms ({n} rows)")
                }
                Ok(_) => line += " | e2e latency: no rows applied in the last second",
                Err(_) => line += " | e2e latency: table not there yet",
            }
        }
        println!("{line}");
        quiet_for = if busy { 0 } else { quiet_for + 1 };
        let elapsed = start.elapsed().as_secs();
        if args.seconds > 0 && elapsed >= args.seconds {
            if args.catch_up_seconds == 0 {
                return Ok(());
            }
            if quiet_for >= 3 {
                println!("caught up: nothing captured or applied and no backlog for 3 s");
                return Ok(());
            }
            if elapsed >= args.seconds + args.catch_up_seconds {
                anyhow::bail!(
                    "the pipeline did not catch up within {} s after the workload",
                    args.catch_up_seconds
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_a_family() {
        let text = "# HELP x y\n# TYPE cdcsync_reader_events_total counter\n\
                    cdcsync_reader_events_total{table=\"shop.orders\",op=\"c\"} 10\n\
                    cdcsync_reader_events_total{table=\"shop.orders\",op=\"u\"} 5\n\
                    cdcsync_reader_lag_seconds 2\n";
        let m = parse_metrics(text);
        assert_eq!(m["cdcsync_reader_events_total"], 15.0);
        assert_eq!(m["cdcsync_reader_lag_seconds"], 2.0);
        let before = HashMap::from([("cdcsync_reader_events_total".to_string(), 5.0)]);
        assert_eq!(rate(&m, &before, "cdcsync_reader_events_total", 2.0), 5.0);
    }
}
