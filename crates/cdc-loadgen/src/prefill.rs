//! Prefill: inserts exactly N orders as fast as the server allows, with multi-row `INSERT`s
//! (1,000 rows per statement by default, each its own transaction) on a few connections.
//!
//! The ids are `first_id..first_id + N` where `first_id` follows the table's current maximum,
//! and chunk `i` (ids `first_id + i·batch ..`) is always generated from the generator stream
//! `(seed, i)`, so the table content does not depend on which connection wrote which chunk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::PrefillConfig;
use crate::report::PrefillReport;
use crate::rng::Rng;
use crate::row::{insert_tuple, INSERT_COLUMNS};
use crate::schema::{ensure_schema, table_ref, STATUSES};
use crate::LoadgenError;

/// The status distribution of prefilled orders: a table that has been live for a while.
fn prefill_status(rng: &mut Rng) -> &'static str {
    let x = rng.below(100);
    let i = match x {
        0..=29 => 0,  // pending
        30..=49 => 1, // paid
        50..=69 => 2, // shipped
        70..=89 => 3, // delivered
        90..=94 => 4, // refunded
        _ => 5,       // cancelled
    };
    STATUSES[i]
}

/// The `INSERT` statement of chunk `chunk` (ids `first_id + chunk·batch ..`, at most `rows` in
/// total).
pub fn chunk_sql(cfg: &PrefillConfig, first_id: u64, chunk: u64) -> String {
    let batch = u64::from(cfg.batch_rows);
    let lo = chunk * batch;
    let hi = (lo + batch).min(cfg.rows);
    let mut rng = Rng::stream(cfg.seed, (1 << 40) + chunk);
    let tuples: Vec<String> = (lo..hi)
        .map(|i| {
            let status = prefill_status(&mut rng);
            insert_tuple(&mut rng, first_id + i, status)
        })
        .collect();
    format!(
        "INSERT INTO {} {INSERT_COLUMNS} VALUES {}",
        table_ref(&cfg.db),
        tuples.join(",")
    )
}

/// Inserts exactly `cfg.rows` new orders. `on_progress(rows_done, elapsed)` is called about once
/// a second. Cancelling `stop` ends early with an error (the table then holds a prefix of whole
/// chunks).
pub async fn prefill(
    pool: &Pool,
    cfg: &PrefillConfig,
    stop: CancellationToken,
    mut on_progress: impl FnMut(u64, Duration),
) -> Result<PrefillReport, LoadgenError> {
    cfg.validate()?;
    let mut conn = pool.get_conn().await?;
    ensure_schema(&mut conn, &cfg.db).await?;
    let max_id: Option<u64> = conn
        .query_first(format!("SELECT MAX(id) FROM {}", table_ref(&cfg.db)))
        .await?
        .flatten();
    drop(conn);
    let first_id = max_id.unwrap_or(0) + 1;
    let chunks = cfg.rows.div_ceil(u64::from(cfg.batch_rows));
    let next_chunk = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let cfg = Arc::new(cfg.clone());
    let start = Instant::now();

    let mut set = JoinSet::new();
    for _ in 0..cfg.connections.min(chunks.max(1) as u32) {
        let (pool, cfg, next_chunk, done, stop) = (
            pool.clone(),
            cfg.clone(),
            next_chunk.clone(),
            done.clone(),
            stop.clone(),
        );
        set.spawn(async move {
            let mut conn = pool.get_conn().await?;
            loop {
                if stop.is_cancelled() {
                    return Err(LoadgenError::Cancelled);
                }
                let chunk = next_chunk.fetch_add(1, Ordering::Relaxed);
                if chunk >= chunks {
                    return Ok::<(), LoadgenError>(());
                }
                let sql = chunk_sql(&cfg, first_id, chunk);
                conn.query_drop(sql).await?;
                let rows = conn.affected_rows();
                done.fetch_add(rows, Ordering::Relaxed);
            }
        });
    }
    let mut ticker = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut first_error = None;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { stop.cancel(); first_error.get_or_insert(e); }
                Some(Err(e)) => { stop.cancel(); first_error.get_or_insert(LoadgenError::Worker(e.to_string())); }
            },
            _ = ticker.tick() => on_progress(done.load(Ordering::Relaxed), start.elapsed()),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rows = done.load(Ordering::Relaxed);
    if rows != cfg.rows {
        return Err(LoadgenError::Worker(format!(
            "prefill inserted {rows} rows, expected {}",
            cfg.rows
        )));
    }
    Ok(PrefillReport {
        db: cfg.db.clone(),
        rows,
        first_id,
        last_id: if rows == 0 {
            first_id.saturating_sub(1)
        } else {
            first_id + rows - 1
        },
        elapsed_secs: elapsed,
        rows_per_sec: rows as f64 / elapsed.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_exactly_the_requested_ids() {
        let mut cfg = PrefillConfig::new("shop", 2500);
        cfg.batch_rows = 1000;
        let last = chunk_sql(&cfg, 11, 2);
        assert_eq!(last.matches("NOW(6),1)").count(), 500);
        assert!(last.contains("VALUES (2011,"), "{}", &last[..200]);
        assert!(last.contains("(2510,"));
        assert!(!last.contains("(2511,"));
        // Chunk content depends only on the seed and the chunk number.
        assert_eq!(chunk_sql(&cfg, 11, 1), chunk_sql(&cfg, 11, 1));
        cfg.seed = 43;
        assert_ne!(
            chunk_sql(&cfg, 11, 1),
            chunk_sql(&PrefillConfig::new("shop", 2500), 11, 1)
        );
    }
}
