//! The reader against real MySQL 9, where MySQL differs from MariaDB exactly where CDC breaks:
//! GTID sets with tagged GTIDs as the resume position, binlog transaction compression
//! (TRANSACTION_PAYLOAD events), binary JSON, `SHOW BINARY LOG STATUS`, and the purged-binlog
//! error of a GTID-based dump. The flavor-independent cases (every type, updates, deletes, key
//! changes, crash tests) run against both servers in the reader's own suite; these cases need
//! MySQL-only features and therefore run against MySQL only.
//!
//! Each test runs the reader in-process (`binlog_reader::run`) with its own source name, so its
//! table topic, checkpoint topic and checkpoint are its own, and its own database on the stack's
//! MySQL 9 (`scripts/stack up mysql9`). One test purges binary logs, which would break any other
//! test of this file that is stopped between two runs at that moment; [`SERVER`] keeps it apart.

use std::time::Duration;

use binlog_reader::{ReaderConfig, ReaderError};
use cdc_config::{KafkaConfig, SourceConfig};
use cdc_telemetry::{Health, Shutdown};
use cdcsync_tests::{
    consume_all, source_servers, stack, unique_name, Consumed, Flavor, SourceDb, SourceServer,
};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value as Json};
use tokio::sync::RwLock;

/// Shared by every test; taken exclusively by the test that purges binary logs.
static SERVER: RwLock<()> = RwLock::const_new(());

fn mysql9() -> SourceServer {
    source_servers()
        .into_iter()
        .find(|s| s.flavor == Flavor::Mysql)
        .expect("MySQL 9 is not configured: run `scripts/stack up mysql9` (MYSQL9_URL, MYSQL9_ADMIN_URL)")
}

/// A reader running in this process.
struct Running {
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), ReaderError>>,
}

/// The reader's configuration for one test: source `name` (also the topic prefix), capturing
/// `db.*`, one partition so that the consumed order is the produced order.
fn configs(
    server: &SourceServer,
    name: &str,
    db: &str,
) -> (SourceConfig, KafkaConfig, ReaderConfig) {
    let source: SourceConfig = serde_json::from_value(json!({
        "name": name,
        "url": server.url,
        "server_id": 1_000_000 + rand::random::<u32>() % 1_000_000,
        "include_tables": [format!("{db}.*")],
    }))
    .expect("source config");
    let kafka: KafkaConfig = serde_json::from_value(json!({
        "bootstrap_servers": stack().kafka_bootstrap,
        "partitions": 1,
    }))
    .expect("kafka config");
    let reader = ReaderConfig {
        heartbeat_interval_ms: 1_000,
        checkpoint_interval_ms: 100,
        // These cases are about the stream; rows written before a first start must not arrive
        // as snapshot reads (the snapshot suite covers those on MySQL).
        snapshot: binlog_reader::snapshot::SnapshotConfig {
            mode: binlog_reader::snapshot::SnapshotMode::Never,
            ..Default::default()
        },
        ..ReaderConfig::default()
    };
    (source, kafka, reader)
}

async fn start(server: &SourceServer, name: &str, db: &str) -> Running {
    let (source, kafka, reader) = configs(server, name, db);
    start_with(source, kafka, reader).await
}

async fn start_with(source: SourceConfig, kafka: KafkaConfig, reader: ReaderConfig) -> Running {
    let shutdown = Shutdown::new();
    let health = Health::new();
    let task = {
        let (shutdown, health) = (shutdown.clone(), health.clone());
        tokio::spawn(
            async move { binlog_reader::run(&source, &kafka, &reader, health, shutdown).await },
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !health.is_ready() {
        assert!(
            !task.is_finished(),
            "the reader stopped before streaming: {:?}",
            task.await
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader did not start streaming within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running { shutdown, task }
}

impl Running {
    /// Graceful stop: the reader flushes and saves its checkpoint.
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the reader stops within 30 s")
            .expect("the reader task did not panic");
        result.expect("a graceful stop is Ok");
    }
}

/// Waits (bounded) until `topic` exists: the reader creates a table's topic when it first sees
/// a change of the table, and subscribing before that is an error.
fn wait_topic(topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_bootstrap)
        .create()
        .expect("consumer");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        if md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "topic {topic} was not created within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Value messages (tombstones left out) of `topic`, waiting until `expected` messages in all.
async fn consume(topic: &str, expected: usize) -> Vec<Json> {
    let topic = topic.to_string();
    let all: Vec<Consumed> = tokio::task::spawn_blocking(move || {
        wait_topic(&topic);
        consume_all(&[&topic], expected, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(
        all.len() >= expected,
        "expected {expected} messages, got {}: {all:#?}",
        all.len()
    );
    all.iter()
        .filter(|m| m.value.is_some())
        .map(Consumed::json)
        .collect()
}

/// The latest checkpoint of source `name`.
async fn checkpoint(name: &str) -> Json {
    let topic = format!("{name}._checkpoints");
    let all = tokio::task::spawn_blocking(move || {
        wait_topic(&topic);
        consume_all(&[&topic], usize::MAX, Duration::from_secs(5))
    })
    .await
    .unwrap();
    all.iter()
        .rev()
        .find(|m| m.key.as_deref() == Some(name) && m.value.is_some())
        .map(Consumed::json)
        .expect("a checkpoint was saved")
}

fn after(ev: &Json) -> &Json {
    &ev["after"]
}

/// Asserts the invariants the applier relies on: unique event ids and strictly increasing
/// versions in commit order (one partition, so consumed order is produced order).
fn assert_ids_and_versions(events: &[Json]) {
    let mut ids = std::collections::HashSet::new();
    let mut last: u128 = 0;
    for ev in events {
        let id = ev["source"]["event_id"]
            .as_str()
            .expect("event_id")
            .to_string();
        assert!(ids.insert(id.clone()), "duplicate event id {id}");
        let v: u128 = ev["source"]["cdc_version"]
            .as_str()
            .expect("cdc_version")
            .parse()
            .expect("numeric version");
        assert!(
            v > last,
            "version {v} of {id} is not above the previous {last}"
        );
        last = v;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_transactions_are_decoded_with_distinct_ids() {
    let _shared = SERVER.read().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, j JSON, s VARCHAR(50))")
        .await;
    let name = unique_name("m9zstd");
    let reader = start(&server, &name, &db.name).await;

    let mut c = db.conn().await;
    c.query_drop("INSERT INTO t VALUES (1, '[1]', 'plain'), (2, '[2]', 'plain')")
        .await
        .unwrap();
    c.query_drop("SET SESSION binlog_transaction_compression = ON")
        .await
        .unwrap();
    // One compressed transaction with several rows events of every kind ...
    c.query_drop(
        "BEGIN; INSERT INTO t VALUES (3, '{\"k\":3}', 'z'), (4, '{\"k\":4}', 'z'), (5, 'null', 'z');
         UPDATE t SET s = 'z2' WHERE id = 1; DELETE FROM t WHERE id = 2; COMMIT",
    )
    .await
    .unwrap();
    // ... and a second one, so that two payloads must get different coordinates.
    c.query_drop(&*format!(
        "INSERT INTO t VALUES (6, '{}', 'big')",
        json!({"pad": "x".repeat(100_000)})
    ))
    .await
    .unwrap();
    c.query_drop("SET SESSION binlog_transaction_compression = OFF")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t VALUES (7, '[7]', 'plain')")
        .await
        .unwrap();
    drop(c);

    // 2 + (3 + 1 + 1 and its tombstone) + 1 + 1 messages.
    let events = consume(&format!("{name}.{}.t", db.name), 10).await;
    reader.stop().await;
    let ops: Vec<(String, Json)> = events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                if e["op"] == "d" {
                    e["before"]["id"].clone()
                } else {
                    after(e)["id"].clone()
                },
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("c", 1),
            ("c", 2),
            ("c", 3),
            ("c", 4),
            ("c", 5),
            ("u", 1),
            ("d", 2),
            ("c", 6),
            ("c", 7)
        ]
        .map(|(o, i)| (o.to_string(), json!(i)))
    );
    assert_eq!(after(&events[2])["j"], json!({"k": 3}));
    assert_eq!(after(&events[4])["j"], Json::Null);
    assert_eq!(events[5]["before"]["s"], "plain");
    assert_eq!(after(&events[5])["s"], "z2");
    assert_eq!(
        after(&events[7])["j"]["pad"].as_str().map(str::len),
        Some(100_000)
    );
    assert_ids_and_versions(&events);
    // All rows of one compressed transaction share the payload's position and are numbered
    // across its rows events.
    let payload: Vec<(u64, u64)> = events[2..7]
        .iter()
        .map(|e| {
            (
                e["source"]["pos"].as_u64().unwrap(),
                e["source"]["row"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        payload.iter().all(|(p, _)| *p == payload[0].0),
        "one position per payload: {payload:?}"
    );
    assert_eq!(
        payload.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_ne!(events[7]["source"]["pos"], events[2]["source"]["pos"]);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtid_resume_with_tagged_gtids_loses_and_repeats_nothing() {
    let _shared = SERVER.read().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, note VARCHAR(20))")
        .await;
    let name = unique_name("m9gtid");
    let topic = format!("{name}.{}.t", db.name);
    let tag_a = format!("cdcsync_a{:x}", rand::random::<u16>());
    let tag_b = format!("cdcsync_b{:x}", rand::random::<u16>());
    let write = |id: u32, tag: Option<String>| {
        let db = &db;
        async move {
            let mut c = db.conn().await;
            if let Some(tag) = &tag {
                c.query_drop(format!("SET gtid_next = 'AUTOMATIC:{tag}'"))
                    .await
                    .unwrap();
            }
            c.query_drop(format!(
                "INSERT INTO t VALUES ({id}, '{}')",
                tag.as_deref().unwrap_or("untagged")
            ))
            .await
            .unwrap();
        }
    };

    let reader = start(&server, &name, &db.name).await;
    write(1, None).await;
    write(2, Some(tag_a.clone())).await;
    assert_eq!(consume(&topic, 2).await.len(), 2);
    reader.stop().await;
    let cp = checkpoint(&name).await;
    let gtid_set = cp["gtid_set"].as_str().expect("gtid_set").to_string();
    assert!(
        gtid_set.contains(&format!(":{tag_a}:")),
        "the checkpoint carries the tagged GTID: {gtid_set}"
    );
    assert_eq!(cp["flavor"], "mysql");

    // Written while the reader is down: must all arrive after the restart, none twice.
    write(3, Some(tag_b.clone())).await;
    write(4, None).await;
    write(5, Some(tag_a.clone())).await;
    let reader = start(&server, &name, &db.name).await;
    write(6, None).await;
    let events = consume(&topic, 6).await;
    reader.stop().await;
    let ids: Vec<Json> = events.iter().map(|e| after(e)["id"].clone()).collect();
    assert_eq!(
        ids,
        (1..=6).map(|i| json!(i)).collect::<Vec<_>>(),
        "every change exactly once, in order"
    );
    let gtids: Vec<&str> = events
        .iter()
        .map(|e| e["source"]["gtid"].as_str().expect("source.gtid"))
        .collect();
    assert!(gtids[1].contains(&format!(":{tag_a}:")), "{gtids:?}");
    assert!(gtids[2].contains(&format!(":{tag_b}:")), "{gtids:?}");
    assert!(!gtids[3].contains("cdcsync_"), "{gtids:?}");
    assert_ids_and_versions(&events);
    let gtid_set = checkpoint(&name).await["gtid_set"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(gtid_set.contains(&format!(":{tag_b}:")), "{gtid_set}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_json_documents_arrive_exactly() {
    let _shared = SERVER.read().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, j JSON)")
        .await;
    let name = unique_name("m9json");
    let reader = start(&server, &name, &db.name).await;
    let docs = [
        json!({"a": {"b": {"c": [1, {"d": [true, false, null]}, -2.5, "x"]}}, "e": [], "f": {}}),
        json!([[], [[]], [1, [2, [3, [4]]]], {"k": [{"l": "m"}]}]),
        json!({"ключ": "значение", "emoji": "🔑🎉", "cjk": "数据库", "esc": "quote\" back\\ nl\n tab\t"}),
        json!([
            0,
            -1,
            9223372036854775807_i64,
            -9223372036854775808_i64,
            18446744073709551615_u64,
            1.5e300,
            -0.0001
        ]),
        json!("a bare string"),
        json!(42),
        // Over 64 KiB: MySQL's "large" binary JSON layout with 32-bit offsets.
        Json::Array(
            (0..4000)
                .map(|i| json!({"i": i, "name": format!("élément {i}")}))
                .collect(),
        ),
    ];
    let mut c = db.conn().await;
    for (i, d) in docs.iter().enumerate() {
        c.exec_drop(
            "INSERT INTO t VALUES (?, CAST(? AS JSON))",
            (i as u64, d.to_string()),
        )
        .await
        .unwrap();
    }
    // A partial-looking update (only a path changes) still carries the full document, because
    // binlog_row_value_options is empty on the stack.
    c.query_drop("UPDATE t SET j = JSON_SET(j, '$.a.b.c[0]', 99) WHERE id = 0")
        .await
        .unwrap();
    drop(c);
    let events = consume(&format!("{name}.{}.t", db.name), docs.len() + 1).await;
    reader.stop().await;
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(&after(&events[i])["j"], d, "document {i}");
    }
    let mut updated = docs[0].clone();
    updated["a"]["b"]["c"][0] = json!(99);
    assert_eq!(events[docs.len()]["before"]["j"], docs[0]);
    assert_eq!(after(&events[docs.len()])["j"], updated);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_column_mid_stream_appears_without_a_restart() {
    let _shared = SERVER.read().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, s VARCHAR(20))")
        .await;
    let name = unique_name("m9ddl");
    let reader = start(&server, &name, &db.name).await;
    db.exec("INSERT INTO t VALUES (1, 'before')").await;
    db.exec("ALTER TABLE t ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'dflt' AFTER id, ADD COLUMN n INT").await;
    db.exec("INSERT INTO t VALUES (2, 'given', 'after', 7)")
        .await;
    db.exec("UPDATE t SET s = 'changed' WHERE id = 1").await;
    let events = consume(&format!("{name}.{}.t", db.name), 3).await;
    reader.stop().await;
    assert_eq!(after(&events[0]), &json!({"id": 1, "s": "before"}));
    assert_eq!(
        after(&events[1]),
        &json!({"id": 2, "note": "given", "s": "after", "n": 7})
    );
    assert_eq!(
        events[2]["before"],
        json!({"id": 1, "note": "dflt", "s": "before", "n": null})
    );
    assert_eq!(
        after(&events[2]),
        &json!({"id": 1, "note": "dflt", "s": "changed", "n": null})
    );
    let names: Vec<&str> = events[1]["schema"]["columns"]
        .as_array()
        .expect("schema.columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "note", "s", "n"]);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_binlog_is_a_definite_error_that_names_the_fix() {
    let _exclusive = SERVER.write().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY)").await;
    let name = unique_name("m9purge");
    let reader = start(&server, &name, &db.name).await;
    db.exec("INSERT INTO t VALUES (1)").await;
    consume(&format!("{name}.{}.t", db.name), 1).await;
    reader.stop().await;

    // Changes the stopped reader has not read, then their binlog is purged: the checkpoint's
    // GTID set no longer reaches the server's history.
    db.exec("INSERT INTO t VALUES (2)").await;
    let mut c = db.conn().await;
    c.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let status: mysql_async::Row = c
        .query_first("SHOW BINARY LOG STATUS")
        .await
        .unwrap()
        .unwrap();
    let current: String = status.get(0).unwrap();
    c.query_drop(format!("PURGE BINARY LOGS TO '{current}'"))
        .await
        .unwrap();
    drop(c);

    let (source, kafka, cfg) = configs(&server, &name, &db.name);
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        binlog_reader::run(&source, &kafka, &cfg, Health::new(), Shutdown::new()),
    )
    .await
    .expect("the reader stops by itself instead of retrying");
    let err = result.expect_err("resuming from a purged position must fail");
    assert!(
        matches!(err, ReaderError::Purged { .. }),
        "a purged-binlog error, got {err:?}"
    );
    assert!(err.is_definite());
    let text = err.to_string();
    assert!(
        text.contains("purged") && text.contains("cdcsync snapshot"),
        "{text}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_partial_json_and_warns_about_compression() {
    // Changes global settings for a moment: exclusive, and restored before the lock is released.
    let _exclusive = SERVER.write().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, j JSON)")
        .await;
    let (source, _, _) = configs(&server, &unique_name("m9pre"), &db.name);
    let mut admin = db.conn().await;
    let report = |checks: &binlog_reader::preflight::SourceChecks, name: &str| {
        checks
            .reports
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no {name} check in {:?}", checks.reports))
            .to_string()
    };

    let clean = binlog_reader::preflight::check_source(&source).await;
    assert!(!clean.failed(), "{:?}", clean.reports);

    admin
        .query_drop("SET GLOBAL binlog_row_value_options = 'PARTIAL_JSON'")
        .await
        .unwrap();
    admin
        .query_drop("SET GLOBAL binlog_transaction_compression = ON")
        .await
        .unwrap();
    let checks = binlog_reader::preflight::check_source(&source).await;
    admin
        .query_drop("SET GLOBAL binlog_row_value_options = ''")
        .await
        .unwrap();
    admin
        .query_drop("SET GLOBAL binlog_transaction_compression = OFF")
        .await
        .unwrap();
    drop(admin);

    assert!(
        checks.failed(),
        "PARTIAL_JSON must be refused: {:?}",
        checks.reports
    );
    let partial = report(&checks, "binlog_row_value_options");
    assert!(
        partial.contains("binlog_row_value_options=''"),
        "names the fix: {partial}"
    );
    let compression = report(&checks, "binlog_transaction_compression");
    assert!(compression.contains("in memory"), "{compression}");
    let only_failure: Vec<&str> = checks
        .reports
        .iter()
        .filter(|r| r.is_failure())
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        only_failure,
        ["binlog_row_value_options"],
        "compression alone is not refused"
    );
    db.drop_db().await;
}

/// Crashes (the reader task is aborted: no flush, no final checkpoint) while a writer commits
/// compressed transactions: afterwards every committed change is in Kafka, and a repeated
/// message is identical to the first one, id included. This is what makes the payload's
/// position (not the inner events' `log_pos` 0) the right coordinate: it is the same on every
/// read, and the checkpoint after a payload resumes after the whole transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_with_compressed_transactions_loses_nothing() {
    let _shared = SERVER.read().await;
    let server = mysql9();
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE w (id INT PRIMARY KEY, n INT NOT NULL, j JSON)")
        .await;
    let name = unique_name("m9crash");
    let topic = format!("{name}.{}.w", db.name);
    let mut reader = start(&server, &name, &db.name).await;
    let mut conn = db.conn().await;
    let writer = tokio::spawn(async move {
        conn.query_drop("SET SESSION binlog_transaction_compression = ON")
            .await
            .unwrap();
        let mut committed = 0u32;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            let i = committed + 1;
            conn.query_drop(format!(
                "BEGIN; INSERT INTO w VALUES ({i}, 0, '{{\"i\": {i}, \"tags\": [\"a\", \"b\"]}}');
                 UPDATE w SET n = n + 1 WHERE id = {}; COMMIT",
                i - 1
            ))
            .await
            .unwrap();
            committed = i;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        committed
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + rand::random::<u64>() % 1500)).await;
        reader.task.abort();
        let _ = reader.task.await;
        reader = start(&server, &name, &db.name).await;
    }
    let committed = writer.await.unwrap();
    // Creates: `committed`; updates: one fewer (the first transaction updates nothing).
    let expected = committed as usize * 2 - 1;
    // At least every distinct event (repeats count too, so this may return early), then let
    // the last reader catch up, stop it gracefully and read the whole topic.
    consume(&topic, expected).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    reader.stop().await;
    let all: Vec<Json> = tokio::task::spawn_blocking(move || {
        consume_all(&[&topic], usize::MAX, Duration::from_secs(10))
    })
    .await
    .unwrap()
    .iter()
    .filter(|m| m.value.is_some())
    .map(Consumed::json)
    .collect();
    let mut first_seen: std::collections::HashMap<String, String> = Default::default();
    let mut repeats = 0;
    for ev in &all {
        let id = ev["source"]["event_id"].as_str().unwrap().to_string();
        let mut stable = ev.clone();
        stable["ts_ms"] = Json::Null;
        let text = stable.to_string();
        match first_seen.get(&id) {
            Some(prev) => {
                repeats += 1;
                assert_eq!(prev, &text, "a repeat of {id} must be identical");
            }
            None => {
                first_seen.insert(id, text);
            }
        }
    }
    let created: std::collections::HashSet<i64> = all
        .iter()
        .filter(|e| e["op"] == "c")
        .map(|e| after(e)["id"].as_i64().unwrap())
        .collect();
    let missing: Vec<u32> = (1..=committed)
        .filter(|i| !created.contains(&i64::from(*i)))
        .collect();
    assert!(missing.is_empty(), "committed rows missing: {missing:?}");
    assert_eq!(first_seen.len(), expected, "distinct events");
    eprintln!(
        "compressed crash test: {committed} transactions, {} messages, {repeats} repeats",
        all.len()
    );
    db.drop_db().await;
}

/// The replication session honours `source.tls`: with the stack's CA and host-name verification
/// the reader streams over TLS (the server shows an encrypted binlog dump session), and with a
/// CA that did not sign the server's certificate it stops at once with a definite TLS error
/// instead of retrying or falling back to plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_verified_tls_and_refuses_an_untrusted_certificate() {
    let _shared = SERVER.read().await;
    let server = mysql9();
    let ca = stack()
        .mysql9_ssl_ca
        .clone()
        .expect("MYSQL9_SSL_CA is set with MySQL 9");
    let db = SourceDb::create(&server).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, note VARCHAR(20))")
        .await;

    let name = unique_name("m9tls");
    let (mut source, kafka, reader) = configs(&server, &name, &db.name);
    source.tls = serde_json::from_value(json!({"mode": "verify_identity", "ca_file": ca}))
        .expect("tls config");
    let running = start_with(source.clone(), kafka.clone(), reader.clone()).await;
    db.exec("INSERT INTO t VALUES (1, 'über TLS'), (2, 'b')")
        .await;
    let events = consume(&format!("{name}.{}.t", db.name), 2).await;
    assert_eq!(after(&events[0])["note"], json!("über TLS"));
    assert_eq!(after(&events[1])["id"], json!(2));
    // Only this test connects with TLS, so an encrypted binlog dump session is the reader's.
    let mut admin =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&server.admin_url).expect("admin url"))
            .await
            .expect("admin connection");
    let encrypted: Vec<(u64, String)> = admin
        .query(
            "SELECT t.THREAD_ID, s.VARIABLE_VALUE FROM performance_schema.threads t \
             JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID \
             WHERE t.PROCESSLIST_COMMAND LIKE 'Binlog Dump%' AND s.VARIABLE_NAME = 'Ssl_version' \
             AND s.VARIABLE_VALUE <> ''",
        )
        .await
        .expect("performance_schema query");
    assert!(
        encrypted.iter().any(|(_, v)| v.starts_with("TLSv1.")),
        "no encrypted binlog dump session on the server: {encrypted:?}"
    );
    drop(admin);
    running.stop().await;

    let mut untrusted = source;
    untrusted.tls = serde_json::from_value(json!({
        "mode": "verify_ca",
        "ca_file": "/etc/ssl/certs/ca-certificates.crt",
    }))
    .expect("tls config");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        binlog_reader::run(&untrusted, &kafka, &reader, Health::new(), Shutdown::new()),
    )
    .await
    .expect("an untrusted certificate stops the reader at once, without retrying");
    match result {
        Err(e @ ReaderError::Tls { .. }) => {
            assert!(e.is_definite());
            assert!(e.to_string().contains("source.tls.ca_file"), "{e}");
        }
        other => panic!("expected a definite TLS error, got {other:?}"),
    }
    db.drop_db().await;
}
