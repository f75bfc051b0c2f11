//! Pruning of the processed-message table.
//!
//! # Why pruning is safe
//!
//! An id is only needed while its message can be delivered again *by the normal course of
//! consumption*: after a crash or rebalance, Kafka redelivers from the group's committed offset,
//! so only messages at or above the committed offset can come back. The job deletes an id only if
//! its offset is below the committed offset of its partition (as this member last committed it)
//! **and** it is older than `applier.processed_retention_secs`, so both conditions protect it.
//! The one way an older message comes back is an explicit replay (offsets reset to an earlier
//! point); then a pruned id is applied again, and the version guard makes that a no-op for every
//! row whose stored version is newer or equal — the warehouse does not change, only the
//! duplicate counter under-counts. Each member prunes only partitions assigned to it, whose
//! committed offsets it knows.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::consumer::Committed;
use crate::types::ident;

/// Runs the retention job every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    meta: String,
    committed: Committed,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match prune_once(&pool, &meta, &committed, retention).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "pruned processed-message ids"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention job failed; will retry"),
        }
    }
}

/// One pass: deletes ids older than `retention` and below their partition's committed offset.
pub async fn prune_once(
    pool: &PgPool,
    meta: &str,
    committed: &Committed,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let (topics, partitions, offsets): (Vec<String>, Vec<i32>, Vec<i64>) = {
        let c = committed.lock().unwrap();
        let mut t = Vec::new();
        let mut p = Vec::new();
        let mut o = Vec::new();
        for ((topic, partition), off) in c.iter() {
            t.push(topic.clone());
            p.push(*partition);
            o.push(*off);
        }
        (t, p, o)
    };
    if topics.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM {}.processed_messages p USING unnest($1::text[], $2::int4[], $3::int8[]) AS c(topic, partition, committed) \
         WHERE p.topic = c.topic AND p.partition = c.partition AND p.kafka_offset < c.committed \
         AND p.applied_at < now() - make_interval(secs => $4)",
        ident(meta)
    );
    let r = sqlx::query(&sql)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}
