//! Applier benchmark: fills a topic with order change events (inserts, updates, deletes in a
//! realistic mix), then measures in the same run
//!
//! 1. **raw baseline**: the same batched SQL (`COPY` into a staging table, one statement that
//!    records processed ids and upserts with the version guard) driven straight from memory by a
//!    minimal client: events pre-decoded, split by key into the same number of partitions, one
//!    task per partition, the same batch size and connection count; no Kafka;
//! 2. **applier**: `warehouse_applier::run` in a child process (so its peak RSS is its own)
//!    consuming the topic from offset 0 into an empty schema, until every event is applied.
//!
//! It prints rows/s for both, the ratio, and the applier's peak RSS (`VmHWM`).
//!
//! ```text
//! eval "$(scripts/stack env)"
//! cargo run --release -p warehouse-applier --bin applier-bench -- --events 1000000
//! ```
//! Options: `--events N` (default 1000000), `--partitions P` (2), `--batch B` (2000),
//! `--concurrency C` (2), `--skip-fill TOPIC` (reuse a filled topic), `--phase applier|baseline|both|decode`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdc_config::{KafkaConfig, Secret, TlsConfig, WarehouseConfig};
use cdc_event::{
    BinlogPosition, ChangeEvent, ColumnSchema, ColumnType, EventId, Op, SnapshotMarker, Source,
    TableSchema, Version,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgPoolOptions;
use warehouse_applier::apply::Applier;
use warehouse_applier::decode::{decode, Decoded, Prepared, SchemaCache};
use warehouse_applier::{ApplierConfig, Health, Shutdown};

struct Args {
    events: usize,
    partitions: i32,
    batch: usize,
    concurrency: u32,
    topic: Option<String>,
    phase: String,
    child: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 1_000_000,
        partitions: 2,
        batch: 2000,
        concurrency: 2,
        topic: None,
        phase: "both".into(),
        child: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--events" => a.events = v().parse().unwrap(),
            "--partitions" => a.partitions = v().parse().unwrap(),
            "--batch" => a.batch = v().parse().unwrap(),
            "--concurrency" => a.concurrency = v().parse().unwrap(),
            "--skip-fill" => a.topic = Some(v()),
            "--phase" => a.phase = v(),
            "--child" => a.child = true,
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: eval \"$(scripts/stack env)\""))
}

/// The 15-column `orders` table of MEASURED.md.
fn schema() -> Arc<TableSchema> {
    use ColumnType::*;
    let c = |n: &str, ty: ColumnType| ColumnSchema {
        name: n.into(),
        ty,
        nullable: n != "id",
    };
    Arc::new(TableSchema {
        columns: vec![
            c("id", BigInt { unsigned: true }),
            c("customer_id", Int { unsigned: true }),
            c(
                "status",
                Enum {
                    values: vec!["new".into(), "paid".into(), "shipped".into()],
                },
            ),
            c(
                "amount",
                Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            c("currency", Text { max_len: Some(3) }),
            c("items", SmallInt { unsigned: false }),
            c("shipping_address", Text { max_len: Some(200) }),
            c("note", Text { max_len: None }),
            c("country", Text { max_len: Some(2) }),
            c(
                "discount",
                Decimal {
                    precision: 5,
                    scale: 2,
                },
            ),
            c("weight_kg", Double),
            c("created_time", DateTime { fsp: 6 }),
            c("paid_time", DateTime { fsp: 6 }),
            c("updated_time", Timestamp { fsp: 3 }),
            c("version", Int { unsigned: false }),
        ],
        primary_key: vec!["id".into()],
    })
}

fn row(id: u64, stage: u32) -> Map<String, Value> {
    let status = ["new", "paid", "shipped"][stage.min(2) as usize];
    let country = ["DE", "FR", "NL", "IT"][(id % 4) as usize];
    json!({
        "id": id,
        "customer_id": (id * 7919) % 100_000,
        "status": status,
        "amount": format!("{}.{:02}", 10 + id % 990, id % 100),
        "currency": "EUR",
        "items": 1 + id % 9,
        "shipping_address": format!("{} Main Street, Springfield {}", id % 1000, id % 97),
        "note": if id % 5 == 0 { Value::Null } else { json!(format!("gift wrap please #{id}")) },
        "country": country,
        "discount": format!("{}.{:02}", id % 30, id % 100),
        "weight_kg": (id % 5000) as f64 / 100.0,
        "created_time": format!("2026-11-28T09:{:02}:{:02}.{:06}", id / 60 % 60, id % 60, id % 1_000_000),
        "paid_time": if stage >= 1 { json!(format!("2026-11-28T10:{:02}:{:02}.000000", id / 60 % 60, id % 60)) } else { Value::Null },
        "updated_time": format!("2026-11-28T10:{:02}:{:02}.{:03}Z", id / 60 % 60, id % 60, stage),
        "version": stage,
    })
    .as_object()
    .unwrap()
    .clone()
}

/// The realistic mix: orders are created, then paid, then shipped, and 20% of shipped orders
/// are deleted later, in interleaved waves of 10,000 orders (so a batch mixes inserts, updates
/// and deletes of different orders): ~31% inserts, ~62% updates, ~6% deletes.
fn generate(total: usize, mut sink: impl FnMut(ChangeEvent)) {
    let schema = schema();
    let mut pos = 4u64;
    let mut emitted = 0usize;
    let wave = 10_000u64;
    let mut w = 0u64;
    let mut mk = |op: Op, before: Option<Map<String, Value>>, after: Option<Map<String, Value>>| {
        pos += 300;
        let p = BinlogPosition {
            file: "mysql-bin.000001".into(),
            pos,
        };
        ChangeEvent {
            before,
            after,
            source: Source {
                version: "bench".into(),
                connector: "mariadb".into(),
                name: "bench".into(),
                ts_ms: 1_795_857_133_000,
                snapshot: SnapshotMarker::False,
                db: "shop".into(),
                table: "orders".into(),
                server_id: 1,
                gtid: Some(format!("0-1-{pos}")),
                file: p.file.clone(),
                pos,
                row: 0,
                event_id: EventId::streaming("bench", &p, 0, None),
                cdc_version: Version::at(&p, 0).unwrap(),
            },
            op,
            ts_ms: 1_795_857_133_100,
            schema: schema.clone(),
        }
    };
    'outer: loop {
        // Wave w: create orders of wave w, pay wave w-1, ship wave w-2, delete 20% of wave w-3.
        for k in 0..wave {
            let mut step = |e: ChangeEvent| {
                sink(e);
                emitted += 1;
                emitted >= total
            };
            let id = w * wave + k + 1;
            if step(mk(Op::Create, None, Some(row(id, 0)))) {
                break 'outer;
            }
            if w >= 1 {
                let id = id - wave;
                if step(mk(Op::Update, Some(row(id, 0)), Some(row(id, 1)))) {
                    break 'outer;
                }
            }
            if w >= 2 {
                let id = id - 2 * wave;
                if step(mk(Op::Update, Some(row(id, 1)), Some(row(id, 2)))) {
                    break 'outer;
                }
            }
            if w >= 3 && k % 5 == 0 {
                let id = id - 3 * wave;
                if step(mk(Op::Delete, Some(row(id, 2)), None)) {
                    break 'outer;
                }
            }
        }
        w += 1;
    }
}

async fn fill(topic: &str, args: &Args) -> (usize, usize) {
    let bootstrap = env("KAFKA_BOOTSTRAP");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in res {
        r.map_err(|(t, e)| format!("{t}: {e}")).unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut pending = Vec::with_capacity(20_000);
    let mut messages = 0usize;
    let mut bytes = 0usize;
    // Streamed: each event is serialised and handed to librdkafka at once; every 20,000
    // messages we wait for the acknowledgements, which bounds the producer queue.
    generate(args.events, |e| {
        let key = e.key_json().unwrap();
        let value = serde_json::to_string(&e).unwrap();
        bytes += value.len();
        let mut send = |v: Option<&str>| {
            let mut r = FutureRecord::<str, str>::to(topic).key(&key);
            if let Some(v) = v {
                r = r.payload(v);
            }
            pending.push(producer.send_result(r).map_err(|(e, _)| e).unwrap());
            messages += 1;
        };
        send(Some(&value));
        if e.op == Op::Delete {
            send(None);
        }
        if pending.len() >= 20_000 {
            for r in futures::executor::block_on(futures::future::join_all(pending.drain(..))) {
                r.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    });
    for r in futures::future::join_all(pending.drain(..)).await {
        r.unwrap().map_err(|(e, _)| e).unwrap();
    }
    eprintln!(
        "filled {topic}: {messages} messages ({} events, {:.0} MB of values) in {:.1} s",
        args.events,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    (messages, bytes)
}

async fn fresh_schema(pool: &sqlx::PgPool, name: &str) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
        .execute(pool)
        .await
        .unwrap();
}

fn warehouse(schema: &str) -> WarehouseConfig {
    WarehouseConfig {
        url: env("POSTGRES_URL"),
        password: Secret::None,
        schema: Some(schema.into()),
        meta_schema: schema.into(),
        tls: TlsConfig::default(),
    }
}

/// Raw baseline: pre-decoded events, same SQL, same partitioning and concurrency, no Kafka.
async fn baseline(args: &Args, admin: &sqlx::PgPool) -> f64 {
    let schema_name = "bench_baseline";
    fresh_schema(admin, schema_name).await;
    let wh = warehouse(schema_name);
    let pool = PgPoolOptions::new()
        .max_connections(args.concurrency)
        .connect(&wh.url)
        .await
        .unwrap();
    warehouse_applier::tables::ensure_meta(&pool, schema_name)
        .await
        .unwrap();
    let applier = Arc::new(Applier {
        pool: pool.clone(),
        tables: warehouse_applier::tables::Tables::new(
            true,
            warehouse_applier::SchemaEvolution::AddColumns,
        ),
        meta_schema: schema_name.into(),
        delete_mode: warehouse_applier::DeleteMode::Soft,
        warehouse: wh,
    });
    // Decode outside the timed section: the baseline measures the SQL path only.
    let mut parts: Vec<Vec<Prepared>> = (0..args.partitions).map(|_| Vec::new()).collect();
    let mut cache = SchemaCache::default();
    let mut offsets = vec![0i64; args.partitions as usize];
    generate(args.events, |e| {
        let id = e.row().unwrap()["id"].as_u64().unwrap();
        let p = (id % args.partitions as u64) as usize;
        let payload = serde_json::to_vec(&e).unwrap();
        if let Decoded::Event(prep) = decode(&mut cache, offsets[p], Some(&payload)) {
            parts[p].push(prep);
        }
        offsets[p] += 1;
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, events) in parts.into_iter().enumerate() {
        let applier = applier.clone();
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let topic = format!("baseline.{p}");
            for chunk in events.chunks(batch) {
                applier.apply(&topic, p as i32, chunk).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = args.events as f64 / secs;
    eprintln!(
        "baseline: {} events in {secs:.1} s = {rate:.0} rows/s",
        args.events
    );
    pool.close().await;
    rate
}

/// Decoding alone (the applier's per-event CPU outside librdkafka and PostgreSQL), for profiling:
/// `--phase decode` serialises the events first, then times `decode` over all of them.
fn decode_only(args: &Args) {
    let mut payloads = Vec::with_capacity(args.events);
    generate(args.events, |e| {
        payloads.push(serde_json::to_vec(&e).unwrap())
    });
    let mut cache = SchemaCache::default();
    let started = Instant::now();
    let mut events = 0usize;
    for (i, p) in payloads.iter().enumerate() {
        if let Decoded::Event(prep) = decode(&mut cache, i as i64, Some(p)) {
            events += prep.row.len().min(1);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "decode           {events} events in {secs:.2} s = {:.2} µs per event",
        secs * 1e6 / args.events as f64
    );
}

/// User + system CPU seconds of this process so far (from /proc/self/stat, in clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The applier phase, run in a child process: prints `RESULT <rows/s> <steady rows/s> <peak RSS KiB>`.
async fn applier_child(args: &Args) {
    let topic = args.topic.clone().unwrap();
    let prefix = topic.split('.').next().unwrap().to_string();
    let schema_name = "bench_applier";
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env("POSTGRES_URL"))
        .await
        .unwrap();
    fresh_schema(&admin, schema_name).await;
    let kafka = KafkaConfig {
        bootstrap_servers: env("KAFKA_BOOTSTRAP"),
        topic_prefix: Some(prefix),
        partitions: args.partitions,
        replication_factor: 1,
        properties: BTreeMap::new(),
    };
    let cfg = ApplierConfig {
        group_id: format!("bench-{}", std::process::id()),
        topics: vec![topic],
        batch_max_events: args.batch,
        max_concurrent_transactions: args.concurrency,
        lag_interval_ms: 1000,
        ..ApplierConfig::default()
    };
    let shutdown = Shutdown::new();
    let wh = warehouse(schema_name);
    let started = Instant::now();
    let (k, w, c, s) = (kafka.clone(), wh.clone(), cfg.clone(), shutdown.clone());
    let run =
        tokio::spawn(
            async move { warehouse_applier::run(&k, &w, &c, "bench", Health::new(), s).await },
        );
    let count_sql = format!("SELECT count(*) FROM \"{schema_name}\".processed_messages");
    let mut first: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n: i64 = sqlx::query_scalar(&count_sql)
            .fetch_one(&admin)
            .await
            .unwrap_or(0);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n as usize >= args.events {
            break;
        }
    }
    let total = started.elapsed().as_secs_f64();
    // Exact end: the last transaction's time relative to the first one's, from PostgreSQL.
    let span: f64 = sqlx::query_scalar(&format!(
        "SELECT extract(epoch from max(applied_at) - min(applied_at))::float8 FROM \"{schema_name}\".processed_messages"
    ))
    .fetch_one(&admin)
    .await
    .unwrap();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let rate = args.events as f64 / total;
    let steady = args.events as f64 / span.max(0.001);
    println!(
        "RESULT {rate:.0} {steady:.0} {} {:.2}",
        vm_hwm_kib(),
        cpu_seconds()
    );
    eprintln!("applier: {} events in {total:.1} s incl. group join = {rate:.0} rows/s; first→last commit {span:.1} s = {steady:.0} rows/s", args.events);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    if args.child {
        // RUST_LOG=warehouse_applier=debug shows every batch.
        let telemetry: cdc_config::TelemetryConfig =
            cdc_config::from_toml("log_level = \"warn\"").unwrap();
        cdc_telemetry::init_tracing(&telemetry);
        applier_child(&args).await;
        return;
    }
    if args.phase == "decode" {
        decode_only(&args);
        return;
    }
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env("POSTGRES_URL"))
        .await
        .unwrap();
    let topic = match &args.topic {
        Some(t) => t.clone(),
        None => {
            let t = format!("bench{}.shop.orders", std::process::id());
            fill(&t, &args).await;
            t
        }
    };
    let mut base = None;
    if args.phase == "baseline" || args.phase == "both" {
        base = Some(baseline(&args, &admin).await);
    }
    if args.phase == "applier" || args.phase == "both" {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--child",
                "--skip-fill",
                &topic,
                "--events",
                &args.events.to_string(),
                "--partitions",
                &args.partitions.to_string(),
                "--batch",
                &args.batch.to_string(),
                "--concurrency",
                &args.concurrency.to_string(),
            ])
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .expect("child result");
        let f: Vec<f64> = line[7..].split(' ').map(|x| x.parse().unwrap()).collect();
        println!("topic            {topic}");
        println!("events           {}", args.events);
        println!(
            "partitions       {}  batch {}  connections {}",
            args.partitions, args.batch, args.concurrency
        );
        if let Some(b) = base {
            println!("raw baseline     {b:.0} rows/s");
        }
        println!("applier          {:.0} rows/s (wall, incl. group join)  {:.0} rows/s (first→last commit)", f[0], f[1]);
        if let Some(b) = base {
            println!(
                "applier/baseline {:.0}% (wall)  {:.0}% (first→last commit)",
                100.0 * f[0] / b,
                100.0 * f[1] / b
            );
        }
        println!("applier peak RSS {:.1} MiB", f[2] / 1024.0);
        println!(
            "applier CPU      {:.1} s user+sys = {:.1} µs per event (client side only)",
            f[3],
            f[3] * 1e6 / args.events as f64
        );
    }
}
