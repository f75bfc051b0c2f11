//! What MySQL 9 sends on the replication protocol, as the binlog client (mysql_async and
//! mysql_common, see docs/decisions/0001-binlog-client.md) hands it to the reader.
//!
//! These tests pin the facts the reader's MySQL support is built on, below the reader, so that a
//! server or library upgrade that changes one of them fails here with a precise message instead
//! of as a mysterious difference in the reader's output:
//!
//! * `binlog_transaction_compression=ON` wraps a whole transaction in one
//!   TRANSACTION_PAYLOAD_EVENT (type 40, zstd); the client yields that event and then the
//!   decompressed inner events, whose headers carry `log_pos = 0`. The reader therefore has to
//!   take binlog coordinates (event ids, versions) from the payload event, not the inner events.
//! * A tagged GTID (`SET gtid_next='AUTOMATIC:tag'`, MySQL 8.3+) arrives as
//!   GTID_TAGGED_LOG_EVENT (type 42) with its tag, and `@@gtid_executed` lists it as `uuid:...:tag:n`.
//! * JSON columns arrive as MySQL's binary JSON and decode to the document that was written.
//! * Heartbeats are HEARTBEAT_EVENT (type 27), not the v2 event (type 41) the client cannot parse.

use futures::StreamExt;
use mysql_async::binlog::events::EventData;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::binlog::EventType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, OptsBuilder};
use serde_json::{json, Value as Json};

fn opts(url: Option<&String>) -> OptsBuilder {
    let url =
        url.expect("MYSQL9_URL / MYSQL9_ADMIN_URL are not set: run `scripts/stack up mysql9`");
    OptsBuilder::from_opts(Opts::from_url(url).expect("a mysql:// URL")).prefer_socket(false)
}

/// One event as the tests look at it.
#[derive(Debug)]
struct Seen {
    kind: EventType,
    log_pos: u32,
    gtid: Option<(Option<String>, u64)>,
    /// After-images of written rows: (id, j as JSON).
    rows: Vec<(i64, Json)>,
}

/// Writes `sql` (each statement its own transaction, on one admin session) into a fresh
/// database and returns every event the CDC user's binlog stream yields for them.
async fn capture(setup: &str, sql: &[String]) -> (Vec<Seen>, String) {
    let env = cdcsync_tests::stack();
    let mut admin = Conn::new(opts(env.mysql9_admin_url.as_ref()))
        .await
        .expect("admin login");
    let db = cdcsync_tests::unique_name("m9proto");
    admin
        .query_drop(format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    admin
        .query_drop(format!(
            "CREATE TABLE {db}.t (id BIGINT PRIMARY KEY, j JSON, s VARCHAR(50)) {setup}"
        ))
        .await
        .unwrap();
    let status: mysql_async::Row = admin
        .query_first("SHOW BINARY LOG STATUS")
        .await
        .unwrap()
        .unwrap();
    let (file, pos): (String, u64) = (status.get(0).unwrap(), status.get(1).unwrap());
    for stmt in sql {
        admin.query_drop(stmt.replace("{db}", &db)).await.unwrap();
    }
    let end: mysql_async::Row = admin
        .query_first("SHOW BINARY LOG STATUS")
        .await
        .unwrap()
        .unwrap();
    let end_pos: u64 = end.get(1).unwrap();
    let gtid_executed: String = admin
        .query_first("SELECT @@gtid_executed")
        .await
        .unwrap()
        .unwrap();

    let mut conn = Conn::new(opts(env.mysql9_url.as_ref()))
        .await
        .expect("CDC user login");
    conn.query_drop("SET @source_heartbeat_period = 200000000")
        .await
        .unwrap();
    let mut stream = conn
        .get_binlog_stream(
            BinlogStreamRequest::new(rand::random::<u32>() | 0x4000_0000)
                .with_filename(file.as_bytes())
                .with_pos(pos),
        )
        .await
        .expect("COM_BINLOG_DUMP");
    let mut seen = Vec::new();
    let mut heartbeats = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while heartbeats < 2 {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events and then heartbeats within 20 s")
            .expect("the stream stays open")
            .expect("a well-formed event");
        let h = ev.header();
        let kind = h
            .event_type()
            .unwrap_or_else(|t| panic!("unknown event type {t:?}"));
        let mut s = Seen {
            kind,
            log_pos: h.log_pos(),
            gtid: None,
            rows: Vec::new(),
        };
        match ev.read_data().expect("event body parses") {
            Some(EventData::GtidEvent(g)) => {
                s.gtid = Some((g.tag().map(|t| t.to_string()), g.gno()))
            }
            Some(EventData::RowsEvent(r)) => {
                let tme = stream.get_tme(r.table_id()).expect("table map before rows");
                if tme.database_name() == db {
                    for row in r.rows(tme) {
                        let (_, after) = row.expect("row image parses");
                        let mut after = after.expect("after image");
                        let id = match after.take(0) {
                            Some(BinlogValue::Value(mysql_async::Value::Int(i))) => i,
                            other => panic!("id: {other:?}"),
                        };
                        let j = match after.take(1) {
                            Some(BinlogValue::Jsonb(v)) => {
                                Json::from(v.parse().expect("binary JSON decodes"))
                            }
                            other => panic!("j: {other:?}"),
                        };
                        s.rows.push((id, j));
                    }
                }
            }
            _ => {}
        }
        if kind == EventType::HEARTBEAT_EVENT {
            // Heartbeats come only once the stream has caught up with the end of the binlog.
            assert!(
                u64::from(s.log_pos) >= end_pos || s.log_pos == 0,
                "heartbeat at {}",
                s.log_pos
            );
            heartbeats += 1;
        }
        seen.push(s);
    }
    admin
        .query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
    (seen, gtid_executed)
}

fn rows(seen: &[Seen]) -> Vec<(i64, Json)> {
    seen.iter().flat_map(|s| s.rows.clone()).collect()
}

/// Indexes of the transactions (their GTID event) that wrote rows of the test's own database:
/// the captured range is the server's whole binlog, which holds other tests' transactions too.
fn own_transactions(seen: &[Seen]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut current = None;
    for (i, s) in seen.iter().enumerate() {
        if s.gtid.is_some() {
            current = Some(i);
        }
        if !s.rows.is_empty() {
            if let Some(g) = current.take() {
                out.push(g);
            }
        }
    }
    out
}

#[tokio::test]
async fn compressed_transactions_arrive_as_payload_events_with_inner_log_pos_zero() {
    let sql = vec![
        "SET SESSION binlog_transaction_compression = ON".to_string(),
        "INSERT INTO {db}.t VALUES (1, '[1,2]', 'a'), (2, '{\"k\":\"v\"}', 'b')".to_string(),
        "INSERT INTO {db}.t VALUES (3, 'null', 'c')".to_string(),
        "SET SESSION binlog_transaction_compression = OFF".to_string(),
    ];
    let (seen, _) = capture("", &sql).await;
    // The event after each of the test's own GTID events.
    let payloads: Vec<usize> = own_transactions(&seen).iter().map(|g| g + 1).collect();
    assert!(
        payloads
            .iter()
            .all(|&i| seen[i].kind == EventType::TRANSACTION_PAYLOAD_EVENT),
        "each compressed transaction is one payload event after its GTID: {seen:#?}"
    );
    assert_eq!(
        payloads.len(),
        2,
        "one payload event per compressed transaction: {seen:#?}"
    );
    for &i in &payloads {
        assert!(seen[i].log_pos > 0, "the payload event has a real position");
        // The inner events follow the payload event, end with the commit (XID), and all carry
        // log_pos 0: coordinates must come from the payload event.
        let inner: Vec<&Seen> = seen[i + 1..]
            .iter()
            .take_while(|s| s.log_pos == 0)
            .collect();
        assert_eq!(
            inner.iter().map(|s| s.kind).collect::<Vec<_>>(),
            [
                EventType::QUERY_EVENT,
                EventType::TABLE_MAP_EVENT,
                EventType::WRITE_ROWS_EVENT,
                EventType::XID_EVENT
            ],
            "inner events of the payload at {}",
            seen[i].log_pos
        );
    }
    assert_eq!(
        rows(&seen),
        vec![(1, json!([1, 2])), (2, json!({"k": "v"})), (3, Json::Null)],
        "rows decode from the decompressed payloads"
    );
}

#[tokio::test]
async fn tagged_gtids_arrive_with_their_tag() {
    let sql = vec![
        "INSERT INTO {db}.t VALUES (1, '1', 'untagged')".to_string(),
        "SET gtid_next = 'AUTOMATIC:cdcsync_t9'".to_string(),
        "INSERT INTO {db}.t VALUES (2, '2', 'tagged')".to_string(),
        "SET gtid_next = 'AUTOMATIC'".to_string(),
    ];
    let (seen, executed) = capture("", &sql).await;
    let gtids: Vec<(EventType, Option<String>)> = own_transactions(&seen)
        .iter()
        .map(|&i| (seen[i].kind, seen[i].gtid.as_ref().unwrap().0.clone()))
        .collect();
    // The table's CREATE is before the captured range; the two inserts are in it.
    assert_eq!(
        gtids,
        vec![
            (EventType::GTID_EVENT, None),
            (
                EventType::GTID_TAGGED_LOG_EVENT,
                Some("cdcsync_t9".to_string())
            ),
        ]
    );
    assert!(
        executed.contains(":cdcsync_t9:"),
        "gtid_executed lists the tag: {executed}"
    );
    assert_eq!(rows(&seen), vec![(1, json!(1)), (2, json!(2))]);
}

#[tokio::test]
async fn binary_json_decodes_nested_arrays_large_and_unicode_documents() {
    let nested = json!({"a": {"b": {"c": [1, {"d": [true, false, null]}, -2.5, "x"]}}, "e": []});
    let unicode =
        json!({"ключ": "значение", "emoji": "🔑🎉", "cjk": "数据库", "esc": "quote\" back\\ nl\n"});
    let numbers = json!([
        0,
        -1,
        9223372036854775807_i64,
        18446744073709551615_u64,
        1.5e300,
        -0.0001
    ]);
    // Larger than 64 KiB, so MySQL stores it in its "large" binary JSON format (32-bit offsets).
    let large = Json::Array(
        (0..5000)
            .map(|i| json!({"i": i, "pad": "p".repeat(20)}))
            .collect(),
    );
    let docs = [nested, unicode, numbers, large];
    let sql: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let text = d.to_string().replace('\\', "\\\\").replace('\'', "\\'");
            format!("INSERT INTO {{db}}.t VALUES ({i}, '{text}', 'json')")
        })
        .collect();
    let (seen, _) = capture("", &sql).await;
    let got = rows(&seen);
    assert_eq!(got.len(), docs.len());
    for ((id, got), want) in got.iter().zip(&docs) {
        // MySQL normalises numbers (e.g. -0.0001 stays a double); compare as JSON values.
        assert_eq!(got, want, "document {id}");
    }
}
