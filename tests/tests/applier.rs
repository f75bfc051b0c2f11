//! Applier integration tests on the real Kafka and PostgreSQL of `scripts/stack`.
//!
//! Each test produces change events itself (with the `cdc-event` types, as the reader would),
//! runs the applier against its own topic, consumer group and PostgreSQL schema, and ends by
//! comparing the warehouse table row for row, every column including the bookkeeping ones, with
//! the state the events imply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_config::{KafkaConfig, Secret, TlsConfig, WarehouseConfig};
use cdc_event::{
    BinlogPosition, ChangeEvent, ColumnSchema, ColumnType, EventId, Op, SnapshotMarker, Source,
    TableSchema, Version,
};
use cdcsync_tests::{consume_all, create_topic, stack, unique_name, PgSchema};
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Map, Value};
use sqlx::Row;
use warehouse_applier::{
    ApplierConfig, ApplierError, DeleteMode, Health, SchemaEvolution, Shutdown,
};

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

struct Fx {
    pg: PgSchema,
    topic: String,
    kafka: KafkaConfig,
    warehouse: WarehouseConfig,
    applier: ApplierConfig,
    producer: FutureProducer,
    /// Application name of the applier's PostgreSQL sessions (to find and sever them).
    app_name: String,
}

async fn fixture(partitions: i32) -> Fx {
    let pg = PgSchema::create().await;
    let prefix = unique_name("a");
    let topic = format!("{prefix}.shop.orders");
    create_topic(&topic, partitions).await;
    let app_name = unique_name("applier");
    let mut properties = BTreeMap::new();
    // Fast failure detection for the kill -9 and scale-out tests (the broker's minimum).
    properties.insert("session.timeout.ms".to_string(), "6000".to_string());
    properties.insert("heartbeat.interval.ms".to_string(), "500".to_string());
    let kafka = KafkaConfig {
        bootstrap_servers: stack().kafka_bootstrap.clone(),
        topic_prefix: Some(prefix.clone()),
        partitions,
        replication_factor: 1,
        properties,
    };
    let sep = if stack().postgres_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let warehouse = WarehouseConfig {
        url: format!("{}{sep}application_name={app_name}", stack().postgres_url),
        password: Secret::None,
        schema: Some(pg.name.clone()),
        meta_schema: pg.name.clone(),
        tls: TlsConfig::default(),
    };
    let applier = ApplierConfig {
        group_id: unique_name("g"),
        topics: vec![topic.clone()],
        batch_max_events: 100,
        batch_max_ms: 50,
        retry_initial_backoff_ms: 100,
        retry_max_backoff_ms: 1000,
        lag_interval_ms: 500,
        ..ApplierConfig::default()
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    Fx {
        pg,
        topic,
        kafka,
        warehouse,
        applier,
        producer,
        app_name,
    }
}

struct Running {
    shutdown: Shutdown,
    handle: Option<tokio::task::JoinHandle<Result<(), ApplierError>>>,
}

impl Running {
    async fn stop(mut self) -> Result<(), ApplierError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle.take().unwrap())
            .await
            .expect("applier stops within 30 s")
            .expect("applier task")
    }

    /// Waits for the applier to stop by itself.
    async fn join(mut self, timeout: Duration) -> Result<(), ApplierError> {
        tokio::time::timeout(timeout, self.handle.take().unwrap())
            .await
            .expect("applier stops by itself")
            .expect("applier task")
    }
}

impl Drop for Running {
    /// A failing test must not leave the applier's consumer thread running, or the runtime
    /// would wait for it forever instead of reporting the failure.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start(fx: &Fx, applier: &ApplierConfig) -> Running {
    let shutdown = Shutdown::new();
    let (k, w, a, s) = (
        fx.kafka.clone(),
        fx.warehouse.clone(),
        applier.clone(),
        shutdown.clone(),
    );
    let handle = tokio::spawn(async move {
        warehouse_applier::run(&k, &w, &a, "unused", Health::new(), s).await
    });
    Running {
        shutdown,
        handle: Some(handle),
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// The rich `orders` table: one column of most source types.
fn orders_schema() -> Arc<TableSchema> {
    use ColumnType::*;
    let col = |name: &str, ty: ColumnType| ColumnSchema {
        name: name.into(),
        ty,
        nullable: name != "id",
    };
    Arc::new(TableSchema {
        columns: vec![
            col("id", BigInt { unsigned: true }),
            col("customer", Text { max_len: Some(64) }),
            col(
                "amount",
                Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            col(
                "status",
                Enum {
                    values: vec!["new".into(), "paid".into(), "shipped".into()],
                },
            ),
            col("created_at", DateTime { fsp: 6 }),
            col("updated_time", Timestamp { fsp: 3 }),
            col("wait", Time { fsp: 0 }),
            col("doc", Json),
            col("payload", Binary),
            col("flags", Bit { bits: 5 }),
            col("yr", Year),
            col("ratio", Double),
            col("big", BigInt { unsigned: true }),
            col("small", TinyInt { unsigned: true }),
        ],
        primary_key: vec!["id".into()],
    })
}

/// Expected PostgreSQL text of every column of the `orders` table, in the query's order.
const ORDERS_SELECT: &str = "id::text, customer, amount::text, status, created_at::text, \
    (updated_time AT TIME ZONE 'UTC')::text, wait::text, doc::text, payload::text, flags::text, yr::text, \
    ratio::text, big::text, small::text";

/// Row `id` in its `rev`-th revision: (JSON image, expected text of each column).
fn order_row(id: u64, rev: u32) -> (Map<String, Value>, Vec<Option<String>>) {
    let cents = id * 100 + rev as u64;
    let status = ["new", "paid", "shipped"][(rev % 3) as usize];
    let note = format!("c{id}\t\"r{rev}\"\\ é\n");
    let us = (id % 1000) * 1000 + rev as u64 % 1000;
    let secs = rev % 60;
    let wait_neg = id % 2 == 0;
    let wait = if wait_neg {
        format!("-{}:59:{:02}", 800 + rev, secs)
    } else {
        format!("{}:00:{:02}", 25 + rev, secs)
    };
    let bytes = [0u8, 255, (id % 256) as u8, rev as u8];
    let b64 = base64(&bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let flags = (id + rev as u64) % 32;
    let big = u64::MAX - id;
    let image = json!({
        "id": id,
        "customer": note,
        "amount": format!("{}.{:02}", cents / 100, cents % 100),
        "status": status,
        "created_at": format!("2024-05-06T07:08:09.{us:06}"),
        "updated_time": format!("2025-01-02T03:04:{secs:02}.123Z"),
        "wait": wait,
        "doc": {"rev": rev},
        "payload": b64,
        "flags": flags,
        "yr": 2000 + rev,
        "ratio": 0.25,
        "big": big,
        "small": 255,
    });
    let expected = vec![
        Some(id.to_string()),
        Some(note),
        Some(format!("{}.{:02}", cents / 100, cents % 100)),
        Some(status.to_string()),
        Some(
            format!("2024-05-06 07:08:09.{us:06}")
                .trim_end_matches('0')
                .to_string(),
        ),
        Some(format!("2025-01-02 03:04:{secs:02}.123")),
        Some(wait),
        Some(format!("{{\"rev\": {rev}}}")),
        Some(format!("\\x{hex}")),
        Some(format!("{flags:05b}")),
        Some((2000 + rev).to_string()),
        Some("0.25".to_string()),
        Some(big.to_string()),
        Some("255".to_string()),
    ];
    (image.as_object().unwrap().clone(), expected)
}

/// Standard base64 with padding (the binary value encoding of the event format).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Builds change events with increasing binlog positions, as the reader would.
struct Source_ {
    pos: u64,
}

impl Source_ {
    fn new() -> Self {
        Source_ { pos: 1000 }
    }

    fn next_pos(&mut self) -> u64 {
        self.pos += 100;
        self.pos
    }

    fn event(
        &mut self,
        schema: &Arc<TableSchema>,
        op: Op,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
    ) -> ChangeEvent {
        let pos = self.next_pos();
        self.event_at(schema, op, before, after, pos)
    }

    fn event_at(
        &self,
        schema: &Arc<TableSchema>,
        op: Op,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
        pos: u64,
    ) -> ChangeEvent {
        let p = BinlogPosition {
            file: "mysql-bin.000001".into(),
            pos,
        };
        ChangeEvent {
            before,
            after,
            source: Source {
                version: "test".into(),
                connector: "mariadb".into(),
                name: "src".into(),
                ts_ms: 1_700_000_000_000 + pos as i64,
                snapshot: SnapshotMarker::False,
                db: "shop".into(),
                table: "orders".into(),
                server_id: 1,
                gtid: None,
                file: p.file.clone(),
                pos,
                row: 0,
                event_id: EventId::streaming("src", &p, 0, None),
                cdc_version: Version::at(&p, 0).unwrap(),
            },
            op,
            ts_ms: 0,
            schema: schema.clone(),
        }
    }
}

impl Source_ {
    /// A snapshot row (`op = "r"`) of `image` read at binlog position `pos`, as the reader's
    /// snapshot makes it: version `(file, pos, 0)`, a deterministic snapshot event id.
    fn snapshot_at(
        &self,
        schema: &Arc<TableSchema>,
        image: Map<String, Value>,
        pos: u64,
    ) -> ChangeEvent {
        let mut e = self.event_at(schema, Op::Read, None, Some(image), pos);
        let p = BinlogPosition {
            file: e.source.file.clone(),
            pos,
        };
        e.source.snapshot = SnapshotMarker::True;
        e.source.event_id = EventId::snapshot("src", &p, "shop.orders", &e.key_json().unwrap());
        e
    }
}

/// A Kafka message: key and value (`None` = tombstone).
type Msg = (String, Option<String>);

fn msg(e: &ChangeEvent) -> Msg {
    (
        e.key_json().unwrap(),
        Some(serde_json::to_string(e).unwrap()),
    )
}

fn tombstone(e: &ChangeEvent) -> Msg {
    (e.key_json().unwrap(), None)
}

/// Produces `msgs` in order (idempotent producer: per-partition order is kept) and waits for all.
async fn produce_all(p: &FutureProducer, topic: &str, msgs: &[Msg]) {
    for chunk in msgs.chunks(5000) {
        let futs = chunk.iter().map(|(k, v)| {
            let mut r = FutureRecord::<str, str>::to(topic).key(k.as_str());
            if let Some(v) = v {
                r = r.payload(v.as_str());
            }
            p.send(r, Duration::from_secs(30))
        });
        for r in join_all(futs).await {
            r.map_err(|(e, _)| e).expect("produce");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expected state and comparison
// ---------------------------------------------------------------------------------------------

/// The expected warehouse row: column texts, version, deleted flag, source ts.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    cols: Vec<Option<String>>,
    version: u128,
    deleted: bool,
    source_ts_ms: i64,
}

/// The warehouse state a sequence of events implies (applied in version order, last wins).
#[derive(Default)]
struct Model {
    rows: BTreeMap<u64, Expected>,
    hard: bool,
}

impl Model {
    fn apply(&mut self, e: &ChangeEvent, texts: Vec<Option<String>>) {
        let image = e.row().unwrap();
        let id = image["id"].as_u64().unwrap();
        let v = e.source.cdc_version.0;
        if let Some(cur) = self.rows.get(&id) {
            if cur.version >= v {
                return;
            }
        }
        if self.hard && e.op == Op::Delete {
            // A tombstone version blocks older upserts: model it as a deleted row we drop later.
        }
        self.rows.insert(
            id,
            Expected {
                cols: texts,
                version: v,
                deleted: e.op == Op::Delete,
                source_ts_ms: e.source.ts_ms,
            },
        );
    }

    fn expected_rows(&self, select_cols: usize) -> Vec<Vec<Option<String>>> {
        self.rows
            .values()
            .filter(|r| !(self.hard && r.deleted))
            .map(|r| {
                let mut cols = r.cols.clone();
                cols.truncate(select_cols);
                cols.push(Some(r.version.to_string()));
                cols.push(Some(r.deleted.to_string()));
                cols.push(Some(r.source_ts_ms.to_string()));
                cols.push(Some("true".into()));
                cols
            })
            .collect()
    }
}

/// Every row of `schema.table`, all listed columns plus bookkeeping, as text, by id.
async fn warehouse_rows(
    pool: &sqlx::PgPool,
    schema: &str,
    table: &str,
    select: &str,
) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
    let sql = format!(
        "SELECT {select}, _cdc_version::text, _cdc_deleted::text, \
         (extract(epoch from _cdc_source_ts) * 1000)::bigint::text, (_cdc_applied_at IS NOT NULL)::text \
         FROM \"{schema}\".\"{table}\" t ORDER BY t.id"
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect())
}

/// Waits until the warehouse equals `expected` (row for row, all columns), then asserts it.
async fn assert_warehouse(
    fx: &Fx,
    table: &str,
    select: &str,
    expected: &[Vec<Option<String>>],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = warehouse_rows(&fx.pg.pool, &fx.pg.name, table, select)
            .await
            .unwrap_or_default();
        if got == expected {
            return;
        }
        if Instant::now() > deadline {
            let first_diff = got.iter().zip(expected).position(|(a, b)| a != b);
            panic!(
                "warehouse differs after {timeout:?}: {} rows, expected {}; first difference at {first_diff:?}:\n got  {:?}\n want {:?}",
                got.len(),
                expected.len(),
                first_diff.and_then(|i| got.get(i)),
                first_diff.and_then(|i| expected.get(i)),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn processed_count(fx: &Fx) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".processed_messages",
        fx.pg.name
    ))
    .fetch_one(&fx.pg.pool)
    .await
    .unwrap_or(0)
}

/// A realistic stream over `keys` rows: inserts, several updates each, some deletes (each
/// followed by its tombstone). Returns the messages and the model of the final state.
fn workload(
    src: &mut Source_,
    schema: &Arc<TableSchema>,
    keys: std::ops::Range<u64>,
    updates: u32,
    delete_every: u64,
) -> (Vec<Msg>, Model) {
    let mut msgs = Vec::new();
    let mut model = Model::default();
    for id in keys.clone() {
        let (img, texts) = order_row(id, 0);
        let e = src.event(schema, Op::Create, None, Some(img));
        model.apply(&e, texts);
        msgs.push(msg(&e));
    }
    for rev in 1..=updates {
        for id in keys.clone() {
            let (before, _) = order_row(id, rev - 1);
            let (after, texts) = order_row(id, rev);
            let e = src.event(schema, Op::Update, Some(before), Some(after));
            model.apply(&e, texts);
            msgs.push(msg(&e));
        }
    }
    for id in keys.clone().filter(|id| id % delete_every == 0) {
        let (before, texts) = order_row(id, updates);
        let e = src.event(schema, Op::Delete, Some(before), None);
        model.apply(&e, texts);
        msgs.push(msg(&e));
        msgs.push(tombstone(&e));
    }
    (msgs, model)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every event of a mixed stream over three partitions is applied, with every type mapped
/// exactly; then the same messages produced again, and a full replay from offset 0 by a new
/// group, change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_applied_then_duplicates_and_full_replay_change_nothing() {
    let fx = fixture(3).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let (msgs, model) = workload(&mut src, &schema, 1..301, 3, 7);
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    let expected = model.expected_rows(14);
    let run = start(&fx, &fx.applier);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    let events = msgs.iter().filter(|m| m.1.is_some()).count() as i64;
    assert_eq!(processed_count(&fx).await, events);

    // The same messages again (a producer retry, a reader restart): skipped as duplicates.
    produce_all(&fx.producer, &fx.topic, &msgs[..200]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.stop().await.unwrap();
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(processed_count(&fx).await, events);

    // A full replay from offset 0 under a new group: nothing changes, not even _cdc_applied_at.
    let applied_at_before: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT _cdc_applied_at::text FROM \"{}\".orders t ORDER BY t.id",
        fx.pg.name
    ))
    .fetch_all(&fx.pg.pool)
    .await
    .unwrap();
    let replay = ApplierConfig {
        group_id: unique_name("g"),
        ..fx.applier.clone()
    };
    let run = start(&fx, &replay);
    // Wait until the new group has consumed everything (its lag reaches 0 means committed).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = group_committed(&replay.group_id, &fx.topic, 3).await;
        if lag >= (msgs.len() + 200) as i64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.stop().await.unwrap();
    assert_eq!(
        group_committed(&replay.group_id, &fx.topic, 3).await,
        (msgs.len() + 200) as i64,
        "replay consumed everything"
    );
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(5),
    )
    .await;
    let applied_at_after: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT _cdc_applied_at::text FROM \"{}\".orders t ORDER BY t.id",
        fx.pg.name
    ))
    .fetch_all(&fx.pg.pool)
    .await
    .unwrap();
    assert_eq!(
        applied_at_before, applied_at_after,
        "a replay must not rewrite any row"
    );
    fx.pg.drop_schema().await;
}

/// Sum of the committed offsets of `group` over the topic's partitions (-1 on error).
async fn group_committed(group: &str, topic: &str, partitions: i32) -> i64 {
    let (g, t) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || group_committed_sync(&g, &t, partitions))
        .await
        .unwrap()
}

fn group_committed_sync(group: &str, topic: &str, partitions: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = match c.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(got) => got,
        Err(e) => {
            eprintln!("committed offsets of {group}: {e}");
            return -1;
        }
    };
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// An older version produced after a newer one, and a stale update after a delete, never win
/// (soft delete keeps the row with its delete version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_events_never_regress_rows_soft_delete() {
    stale_events(DeleteMode::Soft).await;
}

/// The same with hard deletes: the row is gone and the tombstone table blocks the stale update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_events_never_regress_rows_hard_delete() {
    stale_events(DeleteMode::Hard).await;
}

async fn stale_events(mode: DeleteMode) {
    let fx = fixture(1).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let mut model = Model {
        hard: mode == DeleteMode::Hard,
        ..Model::default()
    };
    let mut msgs = Vec::new();
    // Row 1: insert@v1, update@v3 produced, then update@v2 (older) produced after it.
    let (i1, t1) = order_row(1, 0);
    let e1 = src.event(&schema, Op::Create, None, Some(i1.clone()));
    let pos_v2 = src.next_pos();
    let (u2, t2) = order_row(1, 2);
    let (u3, t3) = order_row(1, 3);
    let e3 = src.event(&schema, Op::Update, Some(i1.clone()), Some(u3));
    let e2 = src.event_at(&schema, Op::Update, Some(i1), Some(u2), pos_v2);
    for (e, t) in [(&e1, t1), (&e3, t3), (&e2, t2)] {
        model.apply(e, t);
        msgs.push(msg(e));
    }
    // Row 2: insert, delete, then an update older than the delete arrives.
    let (i, ti) = order_row(2, 0);
    let ins = src.event(&schema, Op::Create, None, Some(i.clone()));
    let stale_pos = src.next_pos();
    let del = src.event(&schema, Op::Delete, Some(i.clone()), None);
    let (u, tu) = order_row(2, 1);
    let stale = src.event_at(&schema, Op::Update, Some(i.clone()), Some(u), stale_pos);
    for (e, t) in [(&ins, ti.clone()), (&del, ti), (&stale, tu)] {
        model.apply(e, t);
        msgs.push(msg(e));
        if e.op == Op::Delete {
            msgs.push(tombstone(e));
        }
    }
    // Row 3: the stale events come in a later batch than the newer ones.
    let (i, ti) = order_row(3, 0);
    let pos_old = src.next_pos();
    let ins3 = src.event(&schema, Op::Create, None, Some(i.clone()));
    let (u, tu) = order_row(3, 5);
    let old = src.event_at(&schema, Op::Update, Some(i.clone()), Some(u), pos_old);
    model.apply(&ins3, ti);
    model.apply(&old, tu);
    let applier = ApplierConfig {
        delete_mode: mode,
        batch_max_events: 1,
        ..fx.applier.clone()
    };
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    produce_all(&fx.producer, &fx.topic, &[msg(&ins3)]).await;
    let run = start(&fx, &applier);
    let expected = model.expected_rows(14);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(30),
    )
    .await;
    produce_all(&fx.producer, &fx.topic, &[msg(&old)]).await;
    // Wait until the stale event is recorded as processed, then the state must be unchanged.
    let total = msgs.iter().filter(|m| m.1.is_some()).count() as i64 + 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed_count(&fx).await < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processed_count(&fx).await, total);
    run.stop().await.unwrap();
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(5),
    )
    .await;
    if mode == DeleteMode::Hard {
        let tomb: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT row_key, version::text FROM \"{}\".tombstones",
            fx.pg.name
        ))
        .fetch_all(&fx.pg.pool)
        .await
        .unwrap();
        assert_eq!(
            tomb,
            vec![(
                r#"{"id":2}"#.to_string(),
                del.source.cdc_version.to_string()
            )]
        );
    }
    fx.pg.drop_schema().await;
}

/// Snapshot rows (`op = "r"`) take the bulk path: no processed-message ids, the version guard
/// alone decides. Delivered twice (in one batch and in a later one), older than an applied stream
/// update, newer than the stored row, and older than a later delete: the warehouse ends exactly
/// as the versions say (soft deletes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_merge_through_the_version_guard_soft_delete() {
    snapshot_rows(DeleteMode::Soft).await;
}

/// The same with hard deletes: a snapshot row older than the delete's tombstone stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_merge_through_the_version_guard_hard_delete() {
    snapshot_rows(DeleteMode::Hard).await;
}

async fn snapshot_rows(mode: DeleteMode) {
    let fx = fixture(1).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let mut model = Model {
        hard: mode == DeleteMode::Hard,
        ..Model::default()
    };
    let mut first = Vec::new();
    let mut stream_events = 0i64;

    // Row 10: a snapshot row, delivered twice in a row (one batch), and again later.
    let (img10, t10) = order_row(10, 4);
    let snap10 = src.snapshot_at(&schema, img10, src.pos + 50);
    src.next_pos();
    model.apply(&snap10, t10);
    first.push(msg(&snap10));
    first.push(msg(&snap10));

    // Row 11: insert@v1, update@v3 applied; the snapshot row read at v2 arrives afterwards.
    let (i11, ti11) = order_row(11, 0);
    let ins11 = src.event(&schema, Op::Create, None, Some(i11.clone()));
    let pos_snap11 = src.next_pos();
    let (u11, tu11) = order_row(11, 3);
    let upd11 = src.event(&schema, Op::Update, Some(i11), Some(u11));
    let (s11, ts11) = order_row(11, 1);
    let snap11 = src.snapshot_at(&schema, s11, pos_snap11);

    // Row 12: insert@v1 applied; a snapshot row read later (v2 > v1, another image) wins.
    let (i12, ti12) = order_row(12, 0);
    let ins12 = src.event(&schema, Op::Create, None, Some(i12));
    let pos_snap12 = src.next_pos();
    let (s12, ts12) = order_row(12, 7);
    let snap12 = src.snapshot_at(&schema, s12, pos_snap12);

    // Row 13: insert@v1, delete@v3 applied; the snapshot row read at v2 must not resurrect it.
    let (i13, ti13) = order_row(13, 0);
    let ins13 = src.event(&schema, Op::Create, None, Some(i13.clone()));
    let pos_snap13 = src.next_pos();
    let del13 = src.event(&schema, Op::Delete, Some(i13.clone()), None);
    let snap13 = src.snapshot_at(&schema, i13, pos_snap13);

    for (e, t) in [
        (&ins11, ti11),
        (&upd11, tu11),
        (&ins12, ti12),
        (&ins13, ti13.clone()),
        (&del13, ti13.clone()),
    ] {
        model.apply(e, t);
        first.push(msg(e));
        stream_events += 1;
        if e.op == Op::Delete {
            first.push(tombstone(e));
        }
    }
    let applier = ApplierConfig {
        delete_mode: mode,
        ..fx.applier.clone()
    };
    produce_all(&fx.producer, &fx.topic, &first).await;
    let run = start(&fx, &applier);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &model.expected_rows(14),
        Duration::from_secs(30),
    )
    .await;

    // The late snapshot rows, each in its own batch after the stream's effects are committed,
    // and row 10's snapshot row once more.
    let second = [msg(&snap11), msg(&snap12), msg(&snap13), msg(&snap10)];
    model.apply(&snap11, ts11);
    model.apply(&snap12, ts12);
    model.apply(&snap13, ti13);
    produce_all(&fx.producer, &fx.topic, &second).await;
    // Snapshot rows leave no processed id, so wait for the group's committed offset instead.
    let total = (first.len() + second.len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_committed(&applier.group_id, &fx.topic, 1).await < total
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.stop().await.unwrap();
    assert_eq!(
        group_committed(&applier.group_id, &fx.topic, 1).await,
        total,
        "every message consumed and committed"
    );
    let expected = model.expected_rows(14);
    // The model says: 10 = its snapshot image, 11 = the stream update (v3), 12 = the snapshot
    // image (v2), 13 = deleted at v3 (soft: kept as deleted; hard: absent).
    let ids: Vec<String> = expected.iter().map(|r| r[0].clone().unwrap()).collect();
    let want_ids = if mode == DeleteMode::Hard {
        vec!["10", "11", "12"]
    } else {
        vec!["10", "11", "12", "13"]
    };
    assert_eq!(ids, want_ids);
    assert_eq!(
        expected[1][14],
        Some(upd11.source.cdc_version.to_string()),
        "row 11 keeps the stream update's version"
    );
    assert_eq!(
        expected[2][14],
        Some(snap12.source.cdc_version.to_string()),
        "row 12 takes the snapshot's version"
    );
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(5),
    )
    .await;
    // Only the streamed events recorded ids: the snapshot rows took the bulk path.
    assert_eq!(processed_count(&fx).await, stream_events);
    if mode == DeleteMode::Hard {
        let tomb: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT row_key, version::text FROM \"{}\".tombstones",
            fx.pg.name
        ))
        .fetch_all(&fx.pg.pool)
        .await
        .unwrap();
        assert_eq!(
            tomb,
            vec![(
                r#"{"id":13}"#.to_string(),
                del13.source.cdc_version.to_string()
            )]
        );
    }
    fx.pg.drop_schema().await;
}

/// A poison message among good ones: invalid JSON, a missing key column and a value PostgreSQL
/// rejects each go to the dead-letter topic with headers; everything else is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic() {
    let fx = fixture(1).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let (mut msgs, model) = workload(&mut src, &schema, 1..41, 1, 1000);
    let mut bad_date = order_row(999, 0).0;
    bad_date.insert("created_at".into(), json!("2024-02-30T00:00:00.000000"));
    let rejected = src.event(&schema, Op::Create, None, Some(bad_date));
    let mut no_key = order_row(998, 0).0;
    no_key.remove("id");
    let no_key = src.event(&schema, Op::Create, None, Some(no_key));
    let mut no_key_msg = (
        r#"{"id":998}"#.to_string(),
        Some(serde_json::to_string(&no_key).unwrap()),
    );
    no_key_msg.0 = r#"{"id":998}"#.into();
    // Interleave: the bad ones sit in the middle of good batches.
    msgs.insert(10, (r#"{"id":997}"#.into(), Some("{not json".into())));
    msgs.insert(30, no_key_msg);
    msgs.insert(50, msg(&rejected));
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    let run = start(&fx, &fx.applier);
    let expected = model.expected_rows(14);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    let dlq = format!("{}.dead_letter", fx.kafka.topic_prefix.as_deref().unwrap());
    let dead = consume_all(&[dlq.as_str()], 3, Duration::from_secs(30));
    run.stop().await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let header = |m: &cdcsync_tests::Consumed, k: &str| {
        m.headers
            .iter()
            .find(|h| h.0 == k)
            .map(|h| h.1.clone())
            .unwrap_or_default()
    };
    let offsets: Vec<String> = dead
        .iter()
        .map(|m| header(m, "cdcsync.source_offset"))
        .collect();
    assert_eq!(offsets, vec!["10", "30", "50"]);
    for m in &dead {
        assert_eq!(header(m, "cdcsync.source_topic"), fx.topic);
        assert_eq!(header(m, "cdcsync.source_partition"), "0");
    }
    assert_eq!(header(&dead[0], "cdcsync.error_kind"), "decode");
    assert!(
        header(&dead[1], "cdcsync.error").contains("key column \"id\""),
        "{:?}",
        dead[1].headers
    );
    assert_eq!(header(&dead[2], "cdcsync.error_kind"), "postgres");
    assert!(
        header(&dead[2], "cdcsync.error").contains("out of range"),
        "{:?}",
        dead[2].headers
    );
    assert_eq!(
        dead[2].value.as_deref(),
        msg(&rejected).1.as_deref(),
        "the dead letter carries the original value"
    );
    // The rejected row left no trace in the warehouse or the processed table.
    assert_eq!(processed_count(&fx).await, (msgs.len() - 3) as i64);
    fx.pg.drop_schema().await;
}

/// A column added at the source mid-stream is added to the target; rows last written before it
/// have NULL there. With `schema_evolution = "fail"` the applier stops naming the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_column_mid_stream_is_added() {
    let fx = fixture(1).await;
    let v1 = Arc::new(TableSchema {
        columns: vec![
            ColumnSchema {
                name: "id".into(),
                ty: ColumnType::Int { unsigned: false },
                nullable: false,
            },
            ColumnSchema {
                name: "note".into(),
                ty: ColumnType::Text { max_len: None },
                nullable: true,
            },
        ],
        primary_key: vec!["id".into()],
    });
    let mut v2 = (*v1).clone();
    v2.columns.push(ColumnSchema {
        name: "discount".into(),
        ty: ColumnType::Decimal {
            precision: 5,
            scale: 2,
        },
        nullable: true,
    });
    let v2 = Arc::new(v2);
    let mut src = Source_::new();
    let mut msgs = Vec::new();
    let mut expected = Vec::new();
    for id in 1..=20u64 {
        let e = src.event(
            &v1,
            Op::Create,
            None,
            Some(
                json!({"id": id, "note": format!("n{id}")})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        );
        msgs.push(msg(&e));
        expected.push((
            id,
            vec![Some(id.to_string()), Some(format!("n{id}")), None],
            e.source.cdc_version.0,
            e.source.ts_ms,
        ));
    }
    for id in 11..=30u64 {
        let e = src.event(
            &v2,
            if id > 20 { Op::Create } else { Op::Update },
            None,
            Some(
                json!({"id": id, "note": format!("m{id}"), "discount": format!("{}.50", id)})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        );
        msgs.push(msg(&e));
        let row = (
            id,
            vec![
                Some(id.to_string()),
                Some(format!("m{id}")),
                Some(format!("{id}.50")),
            ],
            e.source.cdc_version.0,
            e.source.ts_ms,
        );
        match expected.iter_mut().find(|r| r.0 == id) {
            Some(r) => *r = row,
            None => expected.push(row),
        }
    }
    let expected: Vec<Vec<Option<String>>> = expected
        .into_iter()
        .map(|(_, mut cols, v, ts)| {
            cols.extend([
                Some(v.to_string()),
                Some("false".into()),
                Some(ts.to_string()),
                Some("true".into()),
            ]);
            cols
        })
        .collect();

    // First with schema_evolution = fail: the v1 events apply, then the applier stops.
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    let strict = ApplierConfig {
        schema_evolution: SchemaEvolution::Fail,
        batch_max_events: 20,
        ..fx.applier.clone()
    };
    let run = start(&fx, &strict);
    let res = run.join(Duration::from_secs(60)).await;
    let err = res
        .expect_err("schema_evolution = fail must stop the applier")
        .to_string();
    assert!(
        err.contains("discount") && err.contains("schema_evolution"),
        "{err}"
    );
    let v1_only: Vec<Vec<Option<String>>> = (1..=20u64)
        .map(|id| {
            let v = Version::at(
                &BinlogPosition {
                    file: "mysql-bin.000001".into(),
                    pos: 1000 + 100 * id,
                },
                0,
            )
            .unwrap();
            vec![
                Some(id.to_string()),
                Some(format!("n{id}")),
                Some(v.to_string()),
                Some("false".into()),
                Some((1_700_000_000_000i64 + 1000 + 100 * id as i64).to_string()),
                Some("true".into()),
            ]
        })
        .collect();
    assert_warehouse(
        &fx,
        "orders",
        "id::text, note",
        &v1_only,
        Duration::from_secs(5),
    )
    .await;

    // Then with the default: the column is added and everything applies.
    let run = start(&fx, &fx.applier);
    assert_warehouse(
        &fx,
        "orders",
        "id::text, note, discount::text",
        &expected,
        Duration::from_secs(60),
    )
    .await;
    run.stop().await.unwrap();
    let ty: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'discount'",
    )
    .bind(format!("\"{}\".orders", fx.pg.name))
    .fetch_one(&fx.pg.pool)
    .await
    .unwrap();
    assert_eq!(ty, "numeric(5,2)");
    fx.pg.drop_schema().await;
}

/// PostgreSQL connections severed during apply. We do not restart the shared server (other
/// engineers' tests use it): we terminate this applier's own backends with
/// `pg_terminate_backend` repeatedly while it applies, which is what it sees when the server
/// restarts (connection reset, then reconnect). The applier retries with backoff and the final
/// state is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_severed_during_apply() {
    let fx = fixture(2).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let (msgs, model) = workload(&mut src, &schema, 1..1001, 2, 5);
    let applier = ApplierConfig {
        batch_max_events: 50,
        ..fx.applier.clone()
    };
    let run = start(&fx, &applier);
    let producing = {
        let (p, t, m) = (fx.producer.clone(), fx.topic.clone(), msgs.clone());
        tokio::spawn(async move {
            for chunk in m.chunks(500) {
                produce_all(&p, &t, chunk).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut killed = 0i64;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t")
            .bind(&fx.app_name)
            .fetch_one(&fx.pg.pool)
            .await
            .unwrap();
        killed += n;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    producing.await.unwrap();
    assert!(
        killed >= 3,
        "the test must actually sever connections (severed {killed})"
    );
    let expected = model.expected_rows(14);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    run.stop().await.unwrap();
    let events = msgs.iter().filter(|m| m.1.is_some()).count() as i64;
    assert_eq!(processed_count(&fx).await, events);
    fx.pg.drop_schema().await;
}

/// Two appliers in one group share four partitions; one is stopped mid-run and the other takes
/// its partitions over: nothing lost, nothing applied twice (each id processed once, every row
/// exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliers_in_one_group_one_stopped_mid_run() {
    let fx = fixture(4).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let (msgs, model) = workload(&mut src, &schema, 1..1501, 2, 9);
    let applier = ApplierConfig {
        batch_max_events: 100,
        ..fx.applier.clone()
    };
    let a = start(&fx, &applier);
    let b = start(&fx, &applier);
    let third = msgs.len() / 3;
    produce_all(&fx.producer, &fx.topic, &msgs[..third]).await;
    // Both members must have received partitions and applied something before A is stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // (The bookkeeping table appears once an applier has started.)
        let parts: i64 = sqlx::query_scalar(&format!(
            "SELECT count(DISTINCT partition) FROM \"{}\".processed_messages",
            fx.pg.name
        ))
        .fetch_one(&fx.pg.pool)
        .await
        .unwrap_or(0);
        if parts == 4 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producing = {
        let (p, t, m) = (
            fx.producer.clone(),
            fx.topic.clone(),
            msgs[third..].to_vec(),
        );
        tokio::spawn(async move {
            for chunk in m.chunks(300) {
                produce_all(&p, &t, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop().await.unwrap();
    producing.await.unwrap();
    let expected = model.expected_rows(14);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(60),
    )
    .await;
    b.stop().await.unwrap();
    let events = msgs.iter().filter(|m| m.1.is_some()).count() as i64;
    assert_eq!(processed_count(&fx).await, events);
    assert_eq!(
        group_committed(&applier.group_id, &fx.topic, 4).await,
        msgs.len() as i64,
        "all offsets committed"
    );
    fx.pg.drop_schema().await;
}

/// `kill -9` of an applier process in the middle of applying, then a restart: the warehouse
/// ends exact. The child is this test binary re-executed to run `applier_child_process`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_then_restart() {
    let fx = fixture(2).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let (msgs, model) = workload(&mut src, &schema, 1..4001, 2, 11);
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    let events = msgs.iter().filter(|m| m.1.is_some()).count() as i64;
    let spawn_child = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "applier_child_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CDCSYNC_CHILD_TOPIC", &fx.topic)
            .env("CDCSYNC_CHILD_GROUP", &fx.applier.group_id)
            .env("CDCSYNC_CHILD_SCHEMA", &fx.pg.name)
            .env(
                "CDCSYNC_CHILD_PREFIX",
                fx.kafka.topic_prefix.as_deref().unwrap(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn_child();
    // Kill once a good part, but not all, is applied: batches are being applied continuously.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut at_kill = 0;
    while Instant::now() < deadline {
        at_kill = processed_count(&fx).await;
        if at_kill >= events / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        at_kill > 0 && at_kill < events,
        "killed mid-stream ({at_kill} of {events} applied)"
    );
    let after_kill = processed_count(&fx).await;
    assert!(after_kill < events, "the kill must leave work to do");
    // Restart (the same group): it resumes from the committed offsets.
    let mut child = spawn_child();
    let expected = model.expected_rows(14);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &expected,
        Duration::from_secs(90),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(processed_count(&fx).await, events);
    fx.pg.drop_schema().await;
}

/// Not a test on its own: the applier process that `kill_9_mid_batch_then_restart` starts and
/// kills. Runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_9_mid_batch_then_restart"]
async fn applier_child_process() {
    let var = |k: &str| std::env::var(k).expect("run only by kill_9_mid_batch_then_restart");
    let (topic, group, schema, prefix) = (
        var("CDCSYNC_CHILD_TOPIC"),
        var("CDCSYNC_CHILD_GROUP"),
        var("CDCSYNC_CHILD_SCHEMA"),
        var("CDCSYNC_CHILD_PREFIX"),
    );
    let mut properties = BTreeMap::new();
    properties.insert("session.timeout.ms".to_string(), "6000".to_string());
    let kafka = KafkaConfig {
        bootstrap_servers: stack().kafka_bootstrap.clone(),
        topic_prefix: Some(prefix),
        partitions: 2,
        replication_factor: 1,
        properties,
    };
    let warehouse = WarehouseConfig {
        url: stack().postgres_url.clone(),
        password: Secret::None,
        schema: Some(schema.clone()),
        meta_schema: schema,
        tls: TlsConfig::default(),
    };
    let applier = ApplierConfig {
        group_id: group,
        topics: vec![topic],
        batch_max_events: 200,
        batch_max_ms: 50,
        ..ApplierConfig::default()
    };
    warehouse_applier::run(
        &kafka,
        &warehouse,
        &applier,
        "unused",
        Health::new(),
        Shutdown::new(),
    )
    .await
    .unwrap();
}

/// The retention job prunes ids that are both old and below the committed offset, and keeps
/// the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_only_old_committed_ids() {
    let pg = PgSchema::create().await;
    warehouse_applier::tables::ensure_meta(&pg.pool, &pg.name)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{0}\".processed_messages (message_id, topic, partition, kafka_offset, applied_at) VALUES \
         ('old-committed', 't', 0, 5, now() - interval '2 hours'), \
         ('old-uncommitted', 't', 0, 10, now() - interval '2 hours'), \
         ('new-committed', 't', 0, 6, now()), \
         ('old-other-partition', 't', 1, 1, now() - interval '2 hours')",
        pg.name
    ))
    .execute(&pg.pool)
    .await
    .unwrap();
    let committed: warehouse_applier::consumer::Committed = Default::default();
    committed.lock().unwrap().insert(("t".into(), 0), 10);
    let n = warehouse_applier::retention::prune_once(
        &pg.pool,
        &pg.name,
        &committed,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let left: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT message_id FROM \"{}\".processed_messages ORDER BY 1",
        pg.name
    ))
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        vec!["new-committed", "old-other-partition", "old-uncommitted"]
    );
    pg.drop_schema().await;
}

/// Every applier metric of `docs/metrics.md` is exported, and the lag gauges are set for the
/// partitions of a running applier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported() {
    let fx = fixture(1).await;
    let schema = orders_schema();
    let mut src = Source_::new();
    let (msgs, model) = workload(&mut src, &schema, 1..21, 1, 1000);
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    let run = start(&fx, &fx.applier);
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &model.expected_rows(14),
        Duration::from_secs(30),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let lag_line = format!(
        "cdcsync_applier_consumer_lag_messages{{partition=\"0\",topic=\"{}\"}}",
        fx.topic
    );
    let mut text = String::new();
    while Instant::now() < deadline {
        text = warehouse_applier::render_metrics();
        if text.contains(&lag_line) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.stop().await.unwrap();
    for name in [
        "cdcsync_applier_consumer_lag_messages",
        "cdcsync_applier_backlog_messages",
        "cdcsync_applier_end_to_end_latency_seconds_bucket",
        "cdcsync_applier_apply_latency_seconds_bucket",
        "cdcsync_applier_rows_applied_total{op=\"c\",table=\"shop.orders\"}",
        "cdcsync_applier_duplicates_skipped_total",
        "cdcsync_applier_stale_skipped_total",
        "cdcsync_applier_dead_letters_total",
        "cdcsync_applier_batch_size_events_bucket",
        "cdcsync_applier_batch_duration_seconds_bucket",
        "cdcsync_applier_postgres_errors_total{kind=\"connection\"}",
        "cdcsync_applier_last_commit_timestamp_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(
        text.contains(&lag_line),
        "lag gauge for the assigned partition missing"
    );
    fx.pg.drop_schema().await;
}

/// Sum of `cdcsync_applier_consumer_lag_messages` over the partitions of `topic`, and how many
/// partitions report it. The per-partition gauges are used rather than the process-wide
/// `cdcsync_applier_backlog_messages` (their sum over one applier) because the tests run several
/// appliers in one process, which all set that one gauge.
fn topic_lag(topic: &str) -> (i64, usize) {
    let suffix = format!(",topic=\"{topic}\"}} ");
    let mut sum = 0;
    let mut partitions = 0;
    for line in warehouse_applier::render_metrics().lines() {
        if let Some(rest) = line.strip_prefix("cdcsync_applier_consumer_lag_messages{") {
            if let Some((_, value)) = rest.split_once(&suffix) {
                sum += value.trim().parse::<i64>().unwrap();
                partitions += 1;
            }
        }
    }
    (sum, partitions)
}

async fn wait_for_lag(
    topic: &str,
    partitions: usize,
    want: i64,
    timeout: Duration,
) -> (i64, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = topic_lag(topic);
        if seen == (want, partitions) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backlog gauges count exactly the unapplied messages while PostgreSQL cannot take them
/// (the processed-message table is locked), and return to 0 within moments of the last commit
/// (regression: they were computed from librdkafka's statistics `committed_offset`, which stayed
/// stale, so the gauge showed the whole partition long after everything was applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_gauge_counts_the_backlog_and_returns_to_zero() {
    let fx = fixture(2).await;
    let run = start(&fx, &fx.applier);
    // Assigned, bookkeeping tables created, and the (empty) partitions report no lag.
    assert_eq!(
        wait_for_lag(&fx.topic, 2, 0, Duration::from_secs(30)).await,
        (0, 2),
        "lag gauges of an idle applier"
    );

    // Block every apply transaction: it has to insert into the processed-message table.
    let mut lock = fx.pg.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "LOCK TABLE \"{}\".processed_messages IN ACCESS EXCLUSIVE MODE",
        fx.pg.name
    ))
    .execute(&mut *lock)
    .await
    .unwrap();
    let schema = orders_schema();
    let mut src = Source_::new();
    let (msgs, model) = workload(&mut src, &schema, 1..101, 2, 7);
    produce_all(&fx.producer, &fx.topic, &msgs).await;
    let backlog = msgs.len() as i64;
    assert_eq!(
        wait_for_lag(&fx.topic, 2, backlog, Duration::from_secs(15)).await,
        (backlog, 2),
        "while nothing can be applied the lag is every produced message"
    );

    lock.rollback().await.unwrap();
    assert_warehouse(
        &fx,
        "orders",
        ORDERS_SELECT,
        &model.expected_rows(14),
        Duration::from_secs(30),
    )
    .await;
    // The warehouse is complete, but trailing tombstones may not be committed yet: wait until
    // the group's committed offsets (what Kafka's ConsumerGroupCommand reports) cover every
    // message, then the gauges must follow within moments and stay at 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    while group_committed(&fx.applier.group_id, &fx.topic, 2).await < backlog {
        assert!(
            Instant::now() < deadline,
            "offsets not committed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        wait_for_lag(&fx.topic, 2, 0, Duration::from_secs(3)).await,
        (0, 2),
        "lag 3 s after everything was committed"
    );
    // And it stays there: no stale value comes back with the next statistics.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(topic_lag(&fx.topic), (0, 2));
    }
    run.stop().await.unwrap();
    fx.pg.drop_schema().await;
}
