//! The applier: change events from Kafka → PostgreSQL, idempotently, in order, in batches.
//!
//! [`run`] only wires the parts together:
//!
//! * [`consumer`]: the consumer-group member (a dedicated thread polling librdkafka), rebalances,
//!   backpressure, offset storing and committing, lag metrics;
//! * [`worker`]: one task per assigned partition that batches, applies, dead-letters and reports
//!   offsets durable;
//! * [`apply`]: the set-based SQL of one batch and the argument why the result is exactly-once
//!   in effect;
//! * [`decode`], [`types`]: event → `COPY` text with the lossless type mapping;
//! * [`tables`]: target-table creation and evolution, and the bookkeeping tables;
//! * [`retention`]: pruning of the processed-message table, and why it is safe;
//! * [`dead_letter`]: the dead-letter topic.
//!
//! **Architecture invariant:** an offset is stored only after the PostgreSQL transaction holding
//! its effect has committed and its dead letters (if any) were acknowledged by Kafka.

pub mod apply;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod decode;
pub mod error;
pub mod metrics;
pub mod preflight;
pub mod retention;
pub mod tables;
pub mod types;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use cdc_config::{KafkaConfig, WarehouseConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;

pub use cdc_telemetry::{render_metrics, Health, Shutdown};
pub use config::{ApplierConfig, DeleteMode, SchemaEvolution};
pub use error::{ApplierError, ApplyError};

/// The librdkafka settings of the applier's consumer; `kafka.properties` is applied last.
pub fn consumer_config(kafka: &KafkaConfig, applier: &ApplierConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", &applier.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set(
            "statistics.interval.ms",
            applier.lag_interval_ms.to_string(),
        )
        // Bounds what librdkafka prefetches (and so the applier's memory) while PostgreSQL is
        // slow or down and partitions are paused. The bound counts fetched bytes, which the
        // reader's LZ4 batches are several times smaller than decompressed: with 16 MiB here the
        // decompressed message sets alone peaked at 77 MiB (heaptrack, snapshot benchmark). 4 MiB
        // of compressed prefetch is still hundreds of milliseconds of work at full speed.
        .set("queued.max.messages.kbytes", "4096")
        // ...and it may be overshot by one fetch per partition: keep that small too.
        .set("max.partition.fetch.bytes", "262144")
        // librdkafka waits this long before fetching again once that bound was reached (1 s by
        // default), which left the workers idle for most of each second in the benchmark.
        .set("fetch.queue.backoff.ms", "20")
        // A resumed partition waits for the broker's answer to the fetch in flight; keep that
        // long poll short.
        .set("fetch.wait.max.ms", "100")
        // A pattern subscription sees a new table topic (a table's first event, a snapshot of a
        // new table) only at the next metadata refresh; librdkafka's default is 5 min. Two
        // seconds keep that wait short at the cost of one small metadata request per refresh.
        .set("topic.metadata.refresh.interval.ms", "2000");
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c
}

fn base_client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        // Consumer-only properties would make producer/admin creation warn; pass the rest.
        if !k.starts_with("session.") && !k.starts_with("heartbeat.") && !k.starts_with("max.poll")
        {
            c.set(k, v);
        }
    }
    c
}

/// Runs the applier until `shutdown` is cancelled (then drains in-flight batches and commits) or
/// a definite error occurs.
pub async fn run(
    kafka: &KafkaConfig,
    warehouse: &WarehouseConfig,
    applier: &ApplierConfig,
    source_name: &str,
    health: Health,
    shutdown: Shutdown,
) -> Result<(), ApplierError> {
    kafka.validate()?;
    warehouse.validate()?;
    applier.validate()?;
    metrics::register();
    let prefix = kafka.prefix(source_name).to_string();

    let pool = PgPoolOptions::new()
        .max_connections(applier.max_concurrent_transactions)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&warehouse.connection_url()?)
        .map_err(|e| ApplierError::Postgres(format!("invalid warehouse.url: {e}")))?;

    // PostgreSQL may still be starting: retry the bookkeeping DDL like any transient failure.
    let mut backoff = Duration::from_millis(applier.retry_initial_backoff_ms);
    loop {
        match tables::ensure_meta(&pool, &warehouse.meta_schema).await {
            Ok(()) => break,
            Err(e) if error::PgErrorKind::of(&e) == error::PgErrorKind::Connection => {
                tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(applier.retry_max_backoff_ms));
            }
            Err(e) => {
                return Err(ApplierError::Postgres(format!(
                    "cannot create the bookkeeping tables in schema {}: {e} (grant CREATE on the database to the warehouse user)",
                    warehouse.meta_schema
                )))
            }
        }
    }

    let dead_letters = dead_letter::DeadLetters::new(
        &base_client_config(kafka),
        applier.dead_letter_topic(&prefix),
        kafka.replication_factor,
    )
    .await
    .map_err(ApplierError::Kafka)?;

    let shared = Arc::new(worker::WorkerShared {
        applier: apply::Applier {
            pool: pool.clone(),
            tables: tables::Tables::new(applier.create_tables, applier.schema_evolution),
            meta_schema: warehouse.meta_schema.clone(),
            delete_mode: applier.delete_mode,
            warehouse: warehouse.clone(),
        },
        dead_letters,
        batch_max_events: applier.batch_max_events,
        snapshot_batch_max_events: applier.snapshot_batch_max_events,
        batch_linger: Duration::from_millis(applier.batch_max_ms),
        slots: Arc::new(tokio::sync::Semaphore::new(
            applier.max_concurrent_transactions as usize,
        )),
        backoff_initial: Duration::from_millis(applier.retry_initial_backoff_ms),
        backoff_max: Duration::from_millis(applier.retry_max_backoff_ms),
    });
    let committed: consumer::Committed = Default::default();
    let ctx = consumer::Context::new(
        tokio::runtime::Handle::current(),
        shared,
        Duration::from_millis(applier.revoke_timeout_ms),
        committed.clone(),
    );
    let consumer: BaseConsumer<consumer::Context> = consumer_config(kafka, applier)
        .create_with_context(ctx)
        .map_err(|e| ApplierError::Kafka(format!("cannot create the consumer: {e}")))?;
    let subscription = applier.subscription(&prefix);
    let refs: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer
        .subscribe(&refs)
        .map_err(|e| ApplierError::Kafka(format!("cannot subscribe to {subscription:?}: {e}")))?;
    tracing::info!(group = %applier.group_id, ?subscription, "applier subscribed");

    let retention_stop = shutdown.child_token();
    let retention = tokio::spawn(retention::run(
        pool.clone(),
        warehouse.meta_schema.clone(),
        committed,
        Duration::from_secs(applier.processed_retention_secs),
        Duration::from_secs(applier.retention_interval_secs),
        retention_stop.clone(),
    ));
    health.set_ready(true);
    let h = health.clone();
    let result = tokio::task::spawn_blocking(move || consumer::poll_loop(consumer, shutdown, h))
        .await
        .unwrap_or_else(|e| {
            Err(ApplierError::Kafka(format!(
                "consumer thread panicked: {e}"
            )))
        });
    health.set_ready(false);
    retention_stop.cancel();
    let _ = retention.await;
    pool.close().await;
    result
}
