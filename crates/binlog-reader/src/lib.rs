//! The reader: MySQL/MariaDB row-based binlog → change events in Kafka.
//!
//! `run()` wires the parts: the Kafka [`kafka::Sink`] (idempotent producer, in-flight bound,
//! checkpoint topic) and replication sessions ([`stream`]) that read the binlog from the saved
//! checkpoint, decode rows ([`table`], [`decode`]) and produce them. A transient error ends the
//! session and a new one starts from the checkpoint after a backoff; a definite error stops the
//! reader with a message naming the cause and the fix. The event format is specified in
//! `docs/event-format.md`.

pub mod charset;
pub mod config;
pub mod decode;
mod error;
pub mod gtid;
pub mod kafka;
mod metrics;
pub mod preflight;
pub mod snapshot;
pub mod source;
mod stream;
pub mod table;

use std::time::Duration;

use cdc_config::{KafkaConfig, SourceConfig};
use cdc_telemetry::{Health, Shutdown};

pub use config::{ReaderConfig, StartFrom, ZeroDates};
pub use error::ReaderError;

/// Runs the reader until `shutdown` fires (graceful: `Ok`) or a definite error occurs.
pub async fn run(
    source: &SourceConfig,
    kafka: &KafkaConfig,
    reader: &ReaderConfig,
    health: Health,
    shutdown: Shutdown,
) -> Result<(), ReaderError> {
    let result = run_inner(source, kafka, reader, &health, &shutdown).await;
    if let Err(e) = &result {
        metrics::ReaderErrorEvent { error: e }.emit();
    }
    health.set_ready(false);
    result
}

async fn run_inner(
    source: &SourceConfig,
    kafka: &KafkaConfig,
    reader: &ReaderConfig,
    health: &Health,
    shutdown: &Shutdown,
) -> Result<(), ReaderError> {
    source.validate()?;
    kafka.validate()?;
    reader.validate()?;
    metrics::register();
    let prefix = kafka.prefix(&source.name).to_string();
    let checkpoint_topic = reader.checkpoint_topic(&prefix);
    let sink = std::sync::Arc::new(kafka::Sink::new(kafka, reader, checkpoint_topic.clone())?);
    // Before the first session: on a first start, the initial snapshot is recorded before the
    // stream saves its start position (see `snapshot/mod.rs`).
    let snapshots =
        snapshot::Snapshots::start(source, kafka, reader, sink.clone(), shutdown.clone()).await?;
    let r = stream::Reader {
        source,
        cfg: reader,
        sink: &sink,
        health,
        shutdown,
        prefix,
    };
    let mut backoff = Duration::from_millis(reader.reconnect_backoff_initial_ms);
    let max_backoff = Duration::from_millis(reader.reconnect_backoff_max_ms);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let attempt = async {
            sink.ensure_topics(std::slice::from_ref(&checkpoint_topic))
                .await?;
            stream::session(&r).await
        };
        let started = tokio::time::Instant::now();
        match attempt.await {
            Ok(()) => {
                sink.flush(Duration::from_secs(2));
                return Ok(());
            }
            Err(e) if e.is_definite() && snapshots.recover(&e).await? => {
                metrics::ReaderErrorEvent { error: &e }.emit();
                sink.drain(Duration::from_secs(10)).await;
                sink.reset_errors();
            }
            Err(e) if e.is_definite() => {
                // Let what was produced be acknowledged; the checkpoint stays where it was.
                sink.drain(Duration::from_secs(5)).await;
                return Err(e);
            }
            Err(e) => {
                metrics::ReaderErrorEvent { error: &e }.emit();
                health.set_ready(false);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(reader.reconnect_backoff_initial_ms);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
                // The next session restarts from the saved checkpoint: wait (bounded) for what
                // the failed one handed to Kafka, then forget its delivery errors.
                sink.drain(Duration::from_secs(10)).await;
                sink.reset_errors();
            }
        }
    }
}
