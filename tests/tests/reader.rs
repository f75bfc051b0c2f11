//! Reader integration tests on the real stack (MariaDB, MySQL 9, Kafka): exact events for every
//! kind of change and every column type, DDL and rotation mid-stream, the table filter,
//! crash-restart without loss, and the definite error for a purged binlog. Every case runs
//! against both server flavors as two tests, `<case>::mariadb` and `<case>::mysql`; the
//! MySQL-only cases (compressed transactions, tagged GTIDs, binary JSON) are in `mysql_reader.rs`.
//!
//! Each test runs the reader as a child process (`binlog-reader <config>`, the same library code
//! `cdcsync reader` runs) against its own database, topic prefix and replica `server_id`, so the
//! tests run in parallel and a crash test can `kill -9` a real process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdcsync_tests::{
    consume_all, split_password, stack, unique_name, Consumed, Flavor, SourceDb, SourceServer,
};
use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

/// The newest modification time of the sources the reader binary is built from.
fn newest_source() -> std::time::SystemTime {
    fn walk(dir: &std::path::Path, newest: &mut std::time::SystemTime) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, newest);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(t);
            }
        }
    }
    let mut newest = std::time::UNIX_EPOCH;
    for c in ["binlog-reader", "cdc-event", "cdc-config", "cdc-telemetry"] {
        walk(
            &cdcsync_tests::repo_root().join("crates").join(c),
            &mut newest,
        );
    }
    newest
}

/// The reader binary (`make test` builds it with the workspace); rebuilt here only when it is
/// missing or older than its sources.
fn reader_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CDCSYNC_READER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let bin = dir.join("binlog-reader");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let fresh = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= newest_source());
        if fresh {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "binlog-reader", "--bin", "binlog-reader"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building binlog-reader failed");
    });
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// One reader process with its own config and log file.
struct ReaderProc {
    child: Child,
    log: PathBuf,
    _dir: cdcsync_tests::tempdir::Dir,
}

/// Per-test reader settings.
#[derive(Clone)]
struct Setup {
    name: String,
    server: SourceServer,
    db: String,
    server_id: u32,
    extra_reader: String,
}

impl Setup {
    fn new(db: &SourceDb) -> Setup {
        Setup {
            name: unique_name("rd").replace('_', "-"),
            server: db.server.clone(),
            db: db.name.clone(),
            server_id: 20_000 + rand::random::<u16>() as u32,
            extra_reader: String::new(),
        }
    }

    fn toml(&self) -> String {
        let (url, password) = split_password(&self.server.url);
        format!(
            r#"[source]
name = "{name}"
url = "{url}"
password = "{password}"
server_id = {sid}
include_tables = ["{db}.*"]
exclude_tables = ["{db}.skipped"]

[kafka]
bootstrap_servers = "{kafka}"
partitions = 1

[reader]
checkpoint_interval_ms = 200
heartbeat_interval_ms = 1000
{extra}

# These cases are about the stream: rows written before a first start must not arrive as
# snapshot reads (tests/tests/snapshot.rs covers those).
[reader.snapshot]
mode = "never"
"#,
            name = self.name,
            sid = self.server_id,
            db = self.db,
            kafka = stack().kafka_bootstrap,
            extra = self.extra_reader,
        )
    }

    fn topic(&self, table: &str) -> String {
        format!("{}.{}.{table}", self.name, self.db)
    }

    /// Starts the reader and waits until it streams.
    fn start(&self) -> ReaderProc {
        let (dir, path) = cdcsync_tests::write_config(&self.toml());
        let log = dir.path().join("reader.log");
        let child = Command::new(reader_bin())
            .arg(&path)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn reader");
        let mut p = ReaderProc {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.log_text().contains("starting binlog stream") {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("reader exited early ({status}):\n{}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "reader did not start:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }
}

impl ReaderProc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit code.
    fn stop(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "reader did not stop on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`.
    fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; returns the exit code.
    fn wait_exit(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return (s.code().unwrap_or(-1), self.log_text());
            }
            if Instant::now() > deadline {
                let text = self.log_text();
                let _ = self.child.kill();
                panic!("reader did not exit:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ReaderProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a topic exists.
fn topic_exists(topic: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack().kafka_bootstrap)
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics().iter().any(|t| t.name() == topic)
}

/// Waits until `topic` exists (the reader creates it when it first sees the table).
fn wait_topic(topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !topic_exists(topic) {
        assert!(Instant::now() < deadline, "topic {topic} was not created");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn consume(topic: &str, expected: usize) -> Vec<Consumed> {
    wait_topic(topic);
    let got = consume_all(&[topic], expected, Duration::from_secs(60));
    assert_eq!(got.len(), expected, "messages on {topic}: {:#?}", got);
    got
}

fn header<'a>(m: &'a Consumed, k: &str) -> &'a str {
    m.headers
        .iter()
        .find(|(hk, _)| hk == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Standard base64 with padding (the tests avoid a dependency for it).
fn base64_decode(text: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut lut = [255u8; 256];
    for (i, c) in A.iter().enumerate() {
        lut[*c as usize] = i as u8;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in text.as_bytes().iter().filter(|c| **c != b'=') {
        let v = lut[c as usize];
        assert!(v != 255, "not base64: {c}");
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

async fn admin_exec(db: &SourceDb, sql: &str) {
    db.exec(sql).await;
}

/// The stack's server of `flavor`; `None` (the test passes without running) only when
/// `CDCSYNC_TEST_FLAVORS` leaves the flavor out on purpose. A flavor that is merely not running
/// fails the test: `scripts/stack up` starts both.
fn server_of(flavor: Flavor) -> Option<SourceServer> {
    let found = cdcsync_tests::source_servers()
        .into_iter()
        .find(|s| s.flavor == flavor);
    if found.is_none() && std::env::var("CDCSYNC_TEST_FLAVORS").is_ok_and(|f| !f.is_empty()) {
        eprintln!("{} left out by CDCSYNC_TEST_FLAVORS", flavor.connector());
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!(
            "no {} source in the stack: run `scripts/stack up`",
            flavor.connector()
        )
    }))
}

/// Declares, for each `async fn case(server: SourceServer)`, a module `case` with the tests
/// `mariadb` and `mysql`: the same case against both servers, reported (and filterable) apart.
macro_rules! per_flavor {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                if let Some(server) = super::server_of(super::Flavor::Mariadb) {
                    super::$case(server).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                if let Some(server) = super::server_of(super::Flavor::Mysql) {
                    super::$case(server).await;
                }
            }
        }
    )*};
}

per_flavor!(
    changes_become_exact_events_with_tombstones_pk_changes_and_filter,
    every_column_type_is_exact,
    alter_add_column_and_binlog_rotation_mid_stream,
    crash_restart_loses_nothing_and_repeats_keep_their_ids,
    purged_binlog_is_a_definite_error,
    unknown_gtid_is_a_definite_error,
);

async fn changes_become_exact_events_with_tombstones_pk_changes_and_filter(server: SourceServer) {
    let db = SourceDb::create(&server).await;
    admin_exec(
        &db,
        "CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(20) NOT NULL, amount DECIMAL(10,2));
         CREATE TABLE skipped (id INT PRIMARY KEY)",
    )
    .await;
    let s = Setup::new(&db);
    let reader = s.start();
    admin_exec(
        &db,
        "INSERT INTO orders VALUES (1, 'new', 10.50);
         BEGIN; INSERT INTO orders VALUES (2, 'new', 1), (3, 'new', NULL); COMMIT;
         UPDATE orders SET status = 'paid' WHERE id = 1;
         UPDATE orders SET id = 20 WHERE id = 2;
         DELETE FROM orders WHERE id = 3;
         INSERT INTO skipped VALUES (1)",
    )
    .await;
    let topic = s.topic("orders");
    // 3 creates, 1 update, PK change (delete + tombstone + create), delete + tombstone.
    let msgs = consume(&topic, 9);
    let summary: Vec<(String, Option<String>)> = msgs
        .iter()
        .map(|m| {
            (
                m.key.clone().unwrap(),
                m.value
                    .as_ref()
                    .map(|_| m.json()["op"].as_str().unwrap().to_string()),
            )
        })
        .collect();
    let k = |id: i64| format!("{{\"id\":{id}}}");
    assert_eq!(
        summary,
        vec![
            (k(1), Some("c".into())),
            (k(2), Some("c".into())),
            (k(3), Some("c".into())),
            (k(1), Some("u".into())),
            (k(2), Some("d".into())),
            (k(2), None),
            (k(20), Some("c".into())),
            (k(3), Some("d".into())),
            (k(3), None),
        ]
    );
    let first = msgs[0].json();
    assert_eq!(first["before"], Value::Null);
    assert_eq!(
        first["after"],
        json!({"id": 1, "status": "new", "amount": "10.50"})
    );
    let src = &first["source"];
    assert_eq!(src["connector"], server.flavor.connector());
    assert_eq!(src["name"], s.name.as_str());
    assert_eq!(src["db"], db.name.as_str());
    assert_eq!(src["table"], "orders");
    assert_eq!(src["snapshot"], "false");
    assert_eq!(src["row"], 0);
    let gtid = src["gtid"].as_str().unwrap();
    match server.flavor {
        // domain-server-seq of the stack's MariaDB (server_id 1).
        Flavor::Mariadb => assert!(gtid.starts_with("0-1-"), "{src}"),
        // uuid:gno of the stack's MySQL.
        Flavor::Mysql => assert!(gtid.len() > 37 && gtid.as_bytes()[36] == b':', "{src}"),
    }
    assert!(src["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let id = format!(
        "{}:{}:{}:0",
        s.name,
        src["file"].as_str().unwrap(),
        src["pos"]
    );
    assert_eq!(src["event_id"], id.as_str());
    assert_eq!(header(&msgs[0], "cdc_event_id"), id);
    assert_eq!(
        header(&msgs[0], "cdc_version"),
        src["cdc_version"].as_str().unwrap()
    );
    assert_eq!(
        first["schema"],
        json!({"columns": [
            {"name": "id", "type": "int", "unsigned": false, "nullable": false},
            {"name": "status", "type": "text", "nullable": false},
            {"name": "amount", "type": "decimal", "precision": 10, "scale": 2, "nullable": true}],
          "primary_key": ["id"]})
    );
    // The envelope deserialises into the shared wire type, and its key is `key_json`.
    let ev: cdc_event::ChangeEvent =
        serde_json::from_str(msgs[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(ev.key_json().unwrap(), msgs[0].key.clone().unwrap());
    // The multi-row transaction: one rows event, rows 0 and 1, same GTID.
    let (a, b) = (msgs[1].json(), msgs[2].json());
    assert_eq!(a["source"]["pos"], b["source"]["pos"]);
    assert_eq!(
        (a["source"]["row"].as_u64(), b["source"]["row"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(a["source"]["gtid"], b["source"]["gtid"]);
    assert_eq!(b["after"]["amount"], Value::Null);
    // Update: both images.
    let u = msgs[3].json();
    assert_eq!(u["before"]["status"], "new");
    assert_eq!(u["after"]["status"], "paid");
    // PK change: delete of the old key (:d), create of the new key (:c), same version.
    let (d, c) = (msgs[4].json(), msgs[6].json());
    assert!(d["source"]["event_id"].as_str().unwrap().ends_with(":d"));
    assert!(c["source"]["event_id"].as_str().unwrap().ends_with(":c"));
    assert_eq!(d["source"]["cdc_version"], c["source"]["cdc_version"]);
    assert_eq!(d["before"]["id"], 2);
    assert_eq!(
        c["after"],
        json!({"id": 20, "status": "new", "amount": "1.00"})
    );
    // Versions grow with the binlog.
    let versions: Vec<u128> = msgs
        .iter()
        .filter(|m| m.value.is_some())
        .map(|m| {
            m.json()["source"]["cdc_version"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    // The excluded table produced nothing, not even a topic.
    assert!(!topic_exists(&s.topic("skipped")));
    assert_eq!(reader.stop(), 0);
    db.drop_db().await;
}

async fn every_column_type_is_exact(server: SourceServer) {
    let db = SourceDb::create(&server).await;
    admin_exec(
        &db,
        "CREATE TABLE t (
            id INT PRIMARY KEY,
            ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, mu MEDIUMINT UNSIGNED,
            i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
            de DECIMAL(30,10), fl FLOAT, db DOUBLE,
            da DATE, dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME, tm6 TIME(6), y YEAR,
            ch CHAR(5), vc VARCHAR(300), l1 VARCHAR(20) CHARACTER SET latin1, tx TEXT,
            bn BINARY(4), vb VARBINARY(10), bl BLOB, lb LONGBLOB,
            en ENUM('new','paid','shipped'), st SET('a','b','c'), bt BIT(10), j JSON
         )",
    )
    .await;
    let s = Setup::new(&db);
    let reader = s.start();
    let mut conn = db.conn().await;
    conn.query_drop("SET time_zone = '+00:00', sql_mode = 'ALLOW_INVALID_DATES'")
        .await
        .unwrap();
    // Row 1: minimums; row 2: maximums; row 3: NULLs (and the >16 MiB LONGBLOB, alone).
    conn.query_drop(
        "INSERT INTO t VALUES (1,
            -128, 0, -32768, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
            -99999999999999999999.9999999999, -1.5, -2.5e-300,
            '1000-01-01', '1000-01-01 00:00:00', '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01.001', '-838:59:59', '-12:34:56.789012', 1901,
            '', '', 'Ä€', '', x'00', x'', x'', x'',
            'new', '', b'0', '[]')",
    )
    .await
    .unwrap();
    conn.query_drop(
        "INSERT INTO t VALUES (2,
            127, 255, 32767, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615,
            99999999999999999999.9999999999, 3.4e38, 1.7976931348623157e308,
            '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999', '838:59:59', '123:04:05.500000', 2155,
            'abcde', '日本語テキスト 😀🎉', 'café', 'emoji 🦀 and 中文', x'01020300', x'ff00', x'deadbeef', x'00',
            'shipped', 'a,c', b'1111111111', '{\"k\": [1, 2.5, \"x\", null, true], \"n\": {\"é\": {}}}')",
    )
    .await
    .unwrap();
    conn.query_drop("INSERT INTO t (id, y, da) VALUES (3, 0, '0000-00-00')")
        .await
        .unwrap();
    let big: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 251) as u8).collect();
    conn.exec_drop("INSERT INTO t (id, lb) VALUES (4, ?)", (big.clone(),))
        .await
        .unwrap();
    drop(conn);
    let msgs = consume(&s.topic("t"), 4);
    let after: Vec<Value> = msgs.iter().map(|m| m.json()["after"].clone()).collect();
    let want1 = json!({"id":1,
        "ti":-128,"tu":0,"si":-32768,"mi":-8388608,"mu":0,"i":-2147483648,"iu":0,"bi":-9223372036854775808i64,"bu":0,
        "de":"-99999999999999999999.9999999999","fl":-1.5,"db":-2.5e-300,
        "da":"1000-01-01","dt":"1000-01-01T00:00:00","dt6":"1000-01-01T00:00:00.000001","ts":"1970-01-01T00:00:01.001Z",
        "tm":"-838:59:59","tm6":"-12:34:56.789012","y":1901,
        "ch":"","vc":"","l1":"Ä€","tx":"","bn":"AAAAAA==","vb":"","bl":"","lb":"",
        "en":"new","st":"","bt":0,"j":[]});
    assert_eq!(after[0], want1);
    let want2 = json!({"id":2,
        "ti":127,"tu":255,"si":32767,"mi":8388607,"mu":16777215,"i":2147483647,"iu":4294967295u32,"bi":9223372036854775807i64,"bu":18446744073709551615u64,
        "de":"99999999999999999999.9999999999","fl":3.4e38,"db":1.7976931348623157e308,
        "da":"9999-12-31","dt":"9999-12-31T23:59:59","dt6":"9999-12-31T23:59:59.999999","ts":"2038-01-19T03:14:07.999Z",
        "tm":"838:59:59","tm6":"123:04:05.500000","y":2155,
        "ch":"abcde","vc":"日本語テキスト 😀🎉","l1":"café","tx":"emoji 🦀 and 中文","bn":"AQIDAA==","vb":"/wA=","bl":"3q2+7w==","lb":"AA==",
        "en":"shipped","st":"a,c","bt":1023,"j":{"k":[1,2.5,"x",null,true],"n":{"é":{}}}});
    assert_eq!(after[1], want2);
    // BIGINT UNSIGNED max is exact in the text, not rounded through a double.
    assert!(msgs[1]
        .value
        .as_deref()
        .unwrap()
        .contains("\"bu\":18446744073709551615,"));
    assert_eq!(after[2]["y"], 0);
    assert_eq!(after[2]["da"], Value::Null, "zero date → null");
    assert_eq!(after[2]["i"], Value::Null);
    let lb = base64_decode(after[3]["lb"].as_str().unwrap());
    assert!(lb == big, "17 MiB LONGBLOB intact ({} bytes)", lb.len());
    // The schema block carries the exact types.
    let schema = &msgs[1].json()["schema"]["columns"];
    let by_name: HashMap<&str, &Value> = schema
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c))
        .collect();
    assert_eq!(by_name["bu"]["type"], "big_int");
    assert_eq!(by_name["bu"]["unsigned"], true);
    assert_eq!(by_name["dt6"]["fsp"], 6);
    assert_eq!(by_name["j"]["type"], "json");
    assert_eq!(by_name["en"]["values"], json!(["new", "paid", "shipped"]));
    assert_eq!(by_name["bn"]["type"], "binary");
    assert_eq!(by_name["l1"]["type"], "text");
    assert_eq!(reader.stop(), 0);
    db.drop_db().await;
}

async fn alter_add_column_and_binlog_rotation_mid_stream(server: SourceServer) {
    let db = SourceDb::create(&server).await;
    admin_exec(&db, "CREATE TABLE o (id INT PRIMARY KEY, a VARCHAR(10))").await;
    let s = Setup::new(&db);
    let reader = s.start();
    admin_exec(&db, "INSERT INTO o VALUES (1, 'x')").await;
    admin_exec(&db, "ALTER TABLE o ADD COLUMN b INT NOT NULL DEFAULT 7").await;
    admin_exec(&db, "INSERT INTO o VALUES (2, 'y', 8)").await;
    admin_exec(&db, "FLUSH BINARY LOGS").await;
    admin_exec(&db, "UPDATE o SET b = 9 WHERE id = 1").await;
    let msgs = consume(&s.topic("o"), 3);
    let v: Vec<Value> = msgs.iter().map(|m| m.json()).collect();
    assert_eq!(v[0]["after"], json!({"id": 1, "a": "x"}));
    assert_eq!(v[1]["after"], json!({"id": 2, "a": "y", "b": 8}));
    assert_eq!(v[1]["schema"]["columns"][2]["name"], "b");
    assert_eq!(v[2]["before"], json!({"id": 1, "a": "x", "b": 7}));
    assert_eq!(v[2]["after"], json!({"id": 1, "a": "x", "b": 9}));
    let f1 = v[1]["source"]["file"].as_str().unwrap().to_string();
    let f2 = v[2]["source"]["file"].as_str().unwrap().to_string();
    assert!(f2 > f1, "rotation moved the file: {f1} → {f2}");
    let ver = |x: &Value| {
        x["source"]["cdc_version"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap()
    };
    assert!(ver(&v[2]) > ver(&v[1]) && ver(&v[1]) > ver(&v[0]));
    assert_eq!(reader.stop(), 0);
    db.drop_db().await;
}

/// kill -9 at random moments while a writer commits; afterwards every committed change is in
/// Kafka, and every repeated message is a byte-identical repeat of one already seen (same id).
async fn crash_restart_loses_nothing_and_repeats_keep_their_ids(server: SourceServer) {
    let db = SourceDb::create(&server).await;
    admin_exec(&db, "CREATE TABLE w (id INT PRIMARY KEY, n INT NOT NULL)").await;
    let s = Setup::new(&db);
    let mut reader = s.start();
    let writer_db = db.conn().await;
    let writer = tokio::spawn(async move {
        let mut conn = writer_db;
        let mut committed = 0u32;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(12) {
            // Each transaction inserts a row and updates the previous one.
            let i = committed + 1;
            conn.query_drop(format!("BEGIN; INSERT INTO w VALUES ({i}, 0); UPDATE w SET n = n + 1 WHERE id = {}; COMMIT", i - 1))
                .await
                .unwrap();
            committed = i;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        committed
    });
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800 + rand::random::<u64>() % 1500)).await;
        reader.crash();
        tokio::time::sleep(Duration::from_millis(200)).await;
        reader = s.start();
    }
    let committed = writer.await.unwrap();
    // Let the last reader catch up, then stop it gracefully.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reader.stop(), 0);
    let topic = s.topic("w");
    wait_topic(&topic);
    // Creates: `committed`; updates: committed - 1 (the first transaction updates nothing).
    let expected_distinct = (committed as usize) * 2 - 1;
    let msgs = consume_all(&[&topic], usize::MAX, Duration::from_secs(15));
    let mut by_id: BTreeMap<String, String> = BTreeMap::new();
    let mut dups = 0;
    for m in &msgs {
        let v = m.json();
        let id = v["source"]["event_id"].as_str().unwrap().to_string();
        // Compare everything but the reader's own processing time.
        let mut stable = v.clone();
        stable["ts_ms"] = Value::Null;
        let text = stable.to_string();
        if let Some(prev) = by_id.get(&id) {
            dups += 1;
            assert_eq!(prev, &text, "a repeat of {id} must be identical");
        } else {
            by_id.insert(id, text);
        }
    }
    let creates: HashSet<i64> = by_id
        .values()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|v| v["op"] == "c")
        .map(|v| v["after"]["id"].as_i64().unwrap())
        .collect();
    let missing: Vec<u32> = (1..=committed)
        .filter(|i| !creates.contains(&(*i as i64)))
        .collect();
    assert!(
        missing.is_empty(),
        "committed rows missing from Kafka: {missing:?}"
    );
    assert_eq!(by_id.len(), expected_distinct, "distinct events");
    eprintln!(
        "crash test: {committed} transactions, {} messages, {dups} repeats",
        msgs.len()
    );
    db.drop_db().await;
}

/// A checkpoint that points into a binlog file the server no longer has (what `PURGE BINARY
/// LOGS` leaves behind) stops the reader with the definite error, its fix, and exit code 1.
async fn purged_binlog_is_a_definite_error(server: SourceServer) {
    let db = SourceDb::create(&server).await;
    admin_exec(&db, "CREATE TABLE p (id INT PRIMARY KEY)").await;
    let s = Setup::new(&db);
    // A normal run first saves a real checkpoint.
    let reader = s.start();
    admin_exec(&db, "INSERT INTO p VALUES (1)").await;
    consume(&s.topic("p"), 1);
    assert_eq!(reader.stop(), 0);
    // Replace it with one in a purged file (file/position mode: no GTID).
    let producer = cdcsync_tests::producer();
    let (file, server_id) = match server.flavor {
        Flavor::Mariadb => ("mysql-bin.000000", 1),
        Flavor::Mysql => ("binlog.000000", 2),
    };
    let cp = json!({"flavor": server.flavor.connector(), "server_id": server_id, "gtid_set": "",
                    "position": {"file": file, "pos": 4}, "ts_ms": 0});
    cdcsync_tests::produce(
        &producer,
        &format!("{}._checkpoints", s.name),
        &s.name,
        Some(&cp.to_string()),
    )
    .await;
    let (dir, path) = cdcsync_tests::write_config(&s.toml());
    let log = dir.path().join("reader.log");
    let child = Command::new(reader_bin())
        .arg(&path)
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = ReaderProc {
        child,
        log,
        _dir: dir,
    };
    let (code, text) = p.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("purged"), "{text}");
    assert!(text.contains("cdcsync snapshot --table"), "{text}");
    db.drop_db().await;
}

/// A checkpoint whose GTID position the server never had (another server's, or a reset binlog)
/// stops the reader with the definite GTID error and exit code 1, instead of silently streaming
/// from somewhere else.
async fn unknown_gtid_is_a_definite_error(server: SourceServer) {
    let db = SourceDb::create(&server).await;
    admin_exec(&db, "CREATE TABLE g (id INT PRIMARY KEY)").await;
    let s = Setup::new(&db);
    let (gtid, server_id) = match server.flavor {
        // A domain this server never wrote.
        Flavor::Mariadb => ("0-1-1,4242-4242-99", 1),
        // Transactions of a server uuid this server never saw.
        Flavor::Mysql => ("0b8a6c4e-0000-4000-8000-00000000beef:1-100", 2),
    };
    let (file, _) = match server.flavor {
        Flavor::Mariadb => ("mysql-bin.000001", 0),
        Flavor::Mysql => ("binlog.000001", 0),
    };
    let topic = format!("{}._checkpoints", s.name);
    cdcsync_tests::create_topic(&topic, 1).await;
    let cp = json!({"flavor": server.flavor.connector(), "server_id": server_id, "gtid_set": gtid,
                    "position": {"file": file, "pos": 4}, "ts_ms": 0});
    cdcsync_tests::produce(
        &cdcsync_tests::producer(),
        &topic,
        &s.name,
        Some(&cp.to_string()),
    )
    .await;
    let (dir, path) = cdcsync_tests::write_config(&s.toml());
    let log = dir.path().join("reader.log");
    let child = Command::new(reader_bin())
        .arg(&path)
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let p = ReaderProc {
        child,
        log,
        _dir: dir,
    };
    let (code, text) = p.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("GTID"), "{text}");
    assert!(text.contains("cdcsync snapshot --table"), "{text}");
    db.drop_db().await;
}

/// A second reader registering the same `server_id` displaces the first; the displaced one
/// stops with the definite server_id error instead of fighting for the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_id_clash_is_a_definite_error() {
    let db = SourceDb::create(&cdcsync_tests::mariadb()).await;
    admin_exec(&db, "CREATE TABLE c (id INT PRIMARY KEY)").await;
    let a = Setup::new(&db);
    let mut b = Setup::new(&db);
    b.server_id = a.server_id;
    let first = a.start();
    let second = b.start();
    let (code, text) = first.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("server_id clash"), "{text}");
    assert!(
        text.contains("source.server_id"),
        "the message names the setting to fix: {text}"
    );
    assert_eq!(second.stop(), 0);
    db.drop_db().await;
}
