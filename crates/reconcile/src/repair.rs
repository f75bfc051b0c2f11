//! Repair through the pipeline: a fresh change event per differing key, into the table's topic.
//! The argument why this is safe is at the top of `run.rs`.

use std::collections::HashMap;
use std::time::Duration;

use binlog_reader::snapshot::SnapshotClock;
use binlog_reader::ZeroDates;
use cdc_event::{ChangeEvent, EventId, Op, SnapshotMarker, Source, Version, CONNECTOR_VERSION};
use mysql_async::prelude::Queryable;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{Map, Value};

use crate::error::ReconcileError;
use crate::plan::{int_json, Key, TablePlan};
use crate::run::{version_at, Candidate, Reconciler};
use crate::schema::Flavor;

fn producer(r: &Reconciler) -> Result<FutureProducer, ReconcileError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &r.kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's partitioner, like the reader, so a key lands where its changes are.
        .set("partitioner", "murmur2_random")
        .set("compression.type", "lz4");
    for (k, v) in &r.kafka.properties {
        c.set(k, v);
    }
    c.create().map_err(|e| ReconcileError::Kafka(e.to_string()))
}

/// Creates the table topic when it does not exist yet, as the reader would (same partition count
/// and replication factor from `[kafka]`, so keys land where the reader's changes will).
async fn ensure_topic(r: &Reconciler, topic: &str) -> Result<(), ReconcileError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &r.kafka.bootstrap_servers);
    for (k, v) in &r.kafka.properties {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = c
        .create()
        .map_err(|e| ReconcileError::Kafka(e.to_string()))?;
    let t = NewTopic::new(
        topic,
        r.kafka.partitions,
        TopicReplication::Fixed(r.kafka.replication_factor),
    );
    let res = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .map_err(|e| ReconcileError::Kafka(e.to_string()))?;
    for x in res {
        if let Err((t, e)) = x {
            if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(ReconcileError::Kafka(format!("creating topic {t}: {e}")));
            }
        }
    }
    Ok(())
}

/// Produces one repair event per difference (marking each repaired) and returns how many were
/// produced.
///
/// The rows are read and encoded by the reader's own snapshot code
/// (`binlog_reader::snapshot::read_rows_consistent`): a consistent-snapshot transaction started
/// by the snapshot's [`SnapshotClock`] (on MariaDB the read view's exact binlog position, on
/// MySQL a GTID-fenced position every earlier transaction of which is visible), and the snapshot
/// encoder, so a repair event is byte for byte what a snapshot of those rows would produce.
pub(crate) async fn repair(
    r: &Reconciler,
    plan: &TablePlan,
    differences: &mut [(Candidate, bool)],
) -> Result<u64, ReconcileError> {
    let flavor = match r.flavor {
        Flavor::Mariadb => cdc_event::Flavor::Mariadb,
        Flavor::Mysql => cdc_event::Flavor::Mysql,
    };
    let clock = SnapshotClock::new(flavor);
    let producer = producer(r)?;
    let prefix = r.kafka.prefix(&r.source.name).to_string();
    let topic = cdc_event::topic_name(&prefix, &plan.table);
    ensure_topic(r, &topic).await?;
    let mut conn = r.my.get_conn().await?;
    let server_id: Option<u32> = conn.query_first("SELECT @@server_id").await?;
    let mut produced = 0u64;
    for batch in differences.chunks_mut(1000) {
        let keys: Vec<Key> = batch.iter().map(|(c, _)| c.key.clone()).collect();
        let read = binlog_reader::snapshot::read_rows_consistent(
            &mut conn,
            &clock,
            &plan.table,
            &plan.my_keys_where(&keys),
            ZeroDates::Null,
        )
        .await
        .map_err(|e| ReconcileError::Definite(format!("reading the rows to repair: {e}")))?;
        let position = read.position;
        let version = version_at(&position)?;
        let mut current: HashMap<String, Map<String, Value>> = HashMap::new();
        for (key, image) in read.rows {
            let image: Map<String, Value> = serde_json::from_str(&image)
                .map_err(|e| ReconcileError::Definite(format!("row image: {e}")))?;
            current.insert(key, image);
        }
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut messages: Vec<(String, String, OwnedHeaders)> = Vec::new();
        let mut tombstones = Vec::new();
        for (c, repaired) in batch.iter_mut() {
            let stale_guard = c
                .warehouse_version
                .as_deref()
                .and_then(|v| Version::parse(v).ok())
                .is_some_and(|v| v >= version);
            if stale_guard {
                tracing::warn!(
                    table = %plan.label,
                    key = %plan.key_json(&c.key),
                    warehouse_version = ?c.warehouse_version,
                    "the warehouse row's _cdc_version is at or beyond the source's current position, so the applier's version guard would ignore a repair; it was written outside the pipeline: fix or delete it by hand"
                );
                continue;
            }
            let key_json = plan.key_json(&c.key);
            let (op, before, after) = match current.remove(&key_json) {
                Some(image) => (Op::Read, None, Some(image)),
                None => {
                    // Gone from the source: a delete whose before image carries the key.
                    let mut image = Map::new();
                    for col in &read.schema.columns {
                        let v = plan
                            .key
                            .iter()
                            .position(|&k| plan.cols[k].name == col.name)
                            .map(|n| int_json(c.key[n]))
                            .unwrap_or(Value::Null);
                        image.insert(col.name.clone(), v);
                    }
                    (Op::Delete, Some(image), None)
                }
            };
            let event = ChangeEvent {
                before,
                after,
                source: Source {
                    version: CONNECTOR_VERSION.into(),
                    connector: flavor.connector().into(),
                    name: r.source.name.clone(),
                    ts_ms,
                    snapshot: SnapshotMarker::True,
                    db: plan.table.db.clone(),
                    table: plan.table.table.clone(),
                    server_id: server_id.unwrap_or(0),
                    gtid: None,
                    file: position.file.clone(),
                    pos: position.pos,
                    row: 0,
                    event_id: EventId::snapshot(&r.source.name, &position, &plan.label, &key_json),
                    cdc_version: version,
                },
                op,
                ts_ms,
                schema: read.schema.clone(),
            };
            let payload =
                serde_json::to_string(&event).map_err(|e| ReconcileError::Kafka(e.to_string()))?;
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "cdc_event_id",
                    value: Some(event.source.event_id.0.as_bytes()),
                })
                .insert(Header {
                    key: "cdc_version",
                    value: Some(version.to_string().as_bytes()),
                });
            if op == Op::Delete && r.cfg.tombstones {
                tombstones.push(key_json.clone());
            }
            messages.push((key_json, payload, headers));
            *repaired = true;
            produced += 1;
        }
        let deliveries: Vec<_> = messages
            .iter()
            .map(|(k, p, h)| {
                producer.send(
                    FutureRecord::to(&topic)
                        .key(k.as_str())
                        .payload(p.as_str())
                        .headers(h.clone()),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for d in futures::future::join_all(deliveries).await {
            d.map_err(|(e, _)| {
                ReconcileError::Kafka(format!("producing a repair event to {topic}: {e}"))
            })?;
        }
        // Tombstones after their deletes were acknowledged: same key, same partition, later offset.
        let sends: Vec<_> = tombstones
            .iter()
            .map(|k| {
                producer.send(
                    FutureRecord::<str, str>::to(&topic).key(k.as_str()),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for d in futures::future::join_all(sends).await {
            d.map_err(|(e, _)| {
                ReconcileError::Kafka(format!("producing a tombstone to {topic}: {e}"))
            })?;
        }
    }
    tracing::info!(table = %plan.label, topic = %topic, events = produced, "repair events produced");
    Ok(produced)
}
