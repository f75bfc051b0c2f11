//! Reconciliation against the real MariaDB and PostgreSQL (and Kafka for repairs).
//!
//! The rows are loaded into both databases directly by the test (the warehouse table is created
//! with the applier's own DDL, `warehouse_applier::tables::create_table_sql`), then tampered
//! with behind the pipeline's back; each test asserts the exact keys and kinds reported.

use std::collections::BTreeSet;
use std::time::Duration;

use cdc_config::{KafkaConfig, SourceConfig, WarehouseConfig};
use cdc_event::TableId;
use cdcsync_tests::{consume_all, mariadb, stack, unique_name, PgSchema, SourceDb};
use mysql_async::prelude::Queryable;
use reconcile::{Kind, ReconcileConfig, Reconciler, Report};

const TABLE_DDL: &str = "CREATE TABLE items (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  note TEXT NULL,
  amount DECIMAL(12,2) NOT NULL,
  created DATETIME(6) NOT NULL,
  paid TIMESTAMP(6) NULL DEFAULT NULL,
  attrs JSON NULL,
  data VARBINARY(16) NULL,
  status ENUM('new','paid','gone') NOT NULL,
  flags SET('x','y','z') NOT NULL,
  dur TIME(6) NULL,
  yr YEAR NULL,
  bits BIT(5) NULL,
  ratio DOUBLE NULL,
  score FLOAT NULL,
  day DATE NULL,
  qty INT NOT NULL
) CHARACTER SET utf8mb4";

/// One row's values as SQL literals for MariaDB and for PostgreSQL (`None` = NULL).
struct Lit {
    my: Vec<String>,
    pg: Vec<String>,
}

fn my_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn pg_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Row `i`: every value differs from row to row and covers the hard cases (4-byte UTF-8, tabs
/// and newlines, negative DECIMAL and TIME, microseconds, NULLs, JSON whose key order and
/// spacing differ from PostgreSQL's).
fn row(i: u64) -> Lit {
    let mut my = Vec::new();
    let mut pg = Vec::new();
    let mut both = |m: String, p: String| {
        my.push(m);
        pg.push(p);
    };
    let null = || ("NULL".to_string(), "NULL".to_string());
    both(i.to_string(), i.to_string());
    let name = format!("name-{i}-ü€😀");
    both(my_str(&name), pg_str(&name));
    let (m, p) = if i % 7 == 0 {
        null()
    } else {
        let note = format!("line1\nline2\t'q' \\ {i}");
        (my_str(&note), pg_str(&note))
    };
    both(m, p);
    let amount = format!(
        "{}{}.{:02}",
        if i % 11 == 0 { "-" } else { "" },
        i * 3 % 100_000,
        i % 100
    );
    both(my_str(&amount), pg_str(&amount));
    let created = format!(
        "2026-01-{:02} 10:{:02}:{:02}.{:06}",
        1 + i % 28,
        i % 60,
        (i / 60) % 60,
        i * 37 % 1_000_000
    );
    both(my_str(&created), pg_str(&created));
    let (m, p) = if i % 5 == 0 {
        null()
    } else {
        let paid = format!("2025-06-01 12:{:02}:00.{:06}", i % 60, i * 13 % 1_000_000);
        (my_str(&paid), pg_str(&format!("{paid}+00")))
    };
    both(m, p);
    let (m, p) = if i % 6 == 0 {
        null()
    } else {
        // Key order, spacing and a number in exponent form that PostgreSQL prints differently.
        let json = format!(
            r#"{{"tags":["a","b"],"n":{i},"price":1.5e1,"nested":{{"z":true,"a":null,"s":"é\"x"}}}}"#
        );
        // The warehouse gets what the pipeline carries: the reader parses the text and the
        // applier writes serde_json's text of it (`1.5e1` arrives as `15.0`).
        let carried =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&json).unwrap())
                .unwrap();
        (my_str(&json), pg_str(&carried))
    };
    both(m, p);
    let (m, p) = if i % 4 == 0 {
        null()
    } else {
        let hex = format!("{:02x}00ff{:02x}", i % 256, i * 7 % 256);
        (format!("X'{hex}'"), format!("'\\x{hex}'"))
    };
    both(m, p);
    let status = ["new", "paid", "gone"][(i % 3) as usize];
    both(my_str(status), pg_str(status));
    let flags = ["", "x", "x,z", "y"][(i % 4) as usize];
    both(my_str(flags), pg_str(flags));
    let (m, p) = if i % 9 == 0 {
        null()
    } else {
        let dur = format!(
            "{}{:02}:{:02}:{:02}.{:06}",
            if i % 2 == 0 { "-" } else { "" },
            i % 839,
            i % 60,
            i * 7 % 60,
            i * 13 % 1_000_000
        );
        (my_str(&dur), pg_str(&dur))
    };
    both(m, p);
    let (m, p) = if i % 10 == 0 {
        null()
    } else {
        ((1901 + i % 255).to_string(), (1901 + i % 255).to_string())
    };
    both(m, p);
    let (m, p) = if i % 8 == 0 {
        null()
    } else {
        ((i % 32).to_string(), format!("B'{:05b}'", i % 32))
    };
    both(m, p);
    let (m, p) = if i % 3 == 0 {
        null()
    } else {
        let r = format!("{}", i as f64 / 7.0);
        (r.clone(), format!("{r}::float8"))
    };
    both(m, p);
    let (m, p) = if i % 3 == 1 {
        null()
    } else {
        let r = format!("{}", (i as f32) * 1.1f32);
        (r.clone(), format!("{r}::real"))
    };
    both(m, p);
    let (m, p) = if i % 5 == 1 {
        null()
    } else {
        let d = format!("2024-{:02}-{:02}", 1 + i % 12, 1 + i % 28);
        (my_str(&d), pg_str(&d))
    };
    both(m, p);
    let qty = (i as i64) * if i % 2 == 0 { -1 } else { 1 };
    both(qty.to_string(), qty.to_string());
    Lit { my, pg }
}

struct Fixture {
    db: SourceDb,
    pg: PgSchema,
    table: TableId,
    prefix: String,
}

impl Fixture {
    /// `rows` rows in MariaDB and the same rows in PostgreSQL (applier DDL, version 1000 + id).
    async fn new(rows: u64) -> Fixture {
        let db = SourceDb::create(&mariadb()).await;
        db.exec(TABLE_DDL).await;
        let pg = PgSchema::create().await;
        let table = TableId::new(db.name.clone(), "items");
        let mut conn = db.conn().await;
        conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
        let source_schema = reconcile::schema::source_schema(&mut conn, &table)
            .await
            .unwrap();
        let qualified = format!("\"{}\".\"items\"", pg.name);
        sqlx::query(&warehouse_applier::tables::create_table_sql(
            &qualified,
            &source_schema,
        ))
        .execute(&pg.pool)
        .await
        .unwrap();
        let ids: Vec<u64> = (1..=rows).collect();
        for batch in ids.chunks(500) {
            let lits: Vec<Lit> = batch.iter().map(|&i| row(i)).collect();
            let my: Vec<String> = lits
                .iter()
                .map(|l| format!("({})", l.my.join(", ")))
                .collect();
            conn.query_drop(format!("INSERT INTO items VALUES {}", my.join(", ")))
                .await
                .unwrap();
            let pgv: Vec<String> = lits
                .iter()
                .zip(batch)
                .map(|(l, i)| format!("({}, {}, false, now(), now())", l.pg.join(", "), 1000 + i))
                .collect();
            sqlx::query(&format!(
                "INSERT INTO {qualified} VALUES {}",
                pgv.join(", ")
            ))
            .execute(&pg.pool)
            .await
            .unwrap();
        }
        Fixture {
            db,
            pg,
            table,
            prefix: unique_name("rc"),
        }
    }

    fn configs(&self) -> (SourceConfig, WarehouseConfig, KafkaConfig) {
        let env = stack();
        let source: SourceConfig = cdc_config::from_toml(&format!(
            "name = \"shop\"\nurl = \"{}\"\ninclude_tables = [\"{}\"]\n",
            env.mysql_url, self.table
        ))
        .unwrap();
        let warehouse: WarehouseConfig = cdc_config::from_toml(&format!(
            "url = \"{}\"\nschema = \"{}\"\n",
            env.postgres_url, self.pg.name
        ))
        .unwrap();
        let kafka: KafkaConfig = cdc_config::from_toml(&format!(
            "bootstrap_servers = \"{}\"\ntopic_prefix = \"{}\"\n",
            env.kafka_bootstrap, self.prefix
        ))
        .unwrap();
        (source, warehouse, kafka)
    }

    fn config(&self, recheck_ms: u64) -> ReconcileConfig {
        ReconcileConfig {
            chunk_rows: 500,
            // Smaller than a chunk, so a differing chunk is cut into sub-ranges before its rows
            // are read (the drill-down path a large production chunk takes).
            drill_rows: 100,
            parallelism: 2,
            recheck_timeout_ms: recheck_ms,
            recheck_interval_ms: 100,
            ..Default::default()
        }
    }

    async fn reconciler(&self, cfg: &ReconcileConfig) -> Reconciler {
        let (s, w, k) = self.configs();
        Reconciler::connect(&s, &w, &k, cfg).await.unwrap()
    }

    async fn pg(&self, sql: &str) {
        let sql = sql.replace("T.", &format!("\"{}\".items", self.pg.name));
        sqlx::query(&sql)
            .execute(&self.pg.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn drop(self) {
        self.db.drop_db().await;
        self.pg.drop_schema().await;
    }
}

/// `(kind, id, columns)` of every difference.
fn found(r: &Report) -> BTreeSet<(Kind, u64, Vec<String>)> {
    r.differences
        .iter()
        .map(|d| (d.kind, d.key["id"].as_u64().unwrap(), d.columns.clone()))
        .collect()
}

fn expected(items: &[(Kind, u64, &[&str])]) -> BTreeSet<(Kind, u64, Vec<String>)> {
    items
        .iter()
        .map(|(k, id, cols)| (*k, *id, cols.iter().map(|c| c.to_string()).collect()))
        .collect()
}

/// Tampering applied behind the pipeline's back, and what the report must say about it.
async fn tamper(f: &Fixture) -> BTreeSet<(Kind, u64, Vec<String>)> {
    f.pg("DELETE FROM T. WHERE id = 10").await;
    f.pg("UPDATE T. SET note = overlay(note placing 'X' from 3 for 1) WHERE id = 20")
        .await;
    f.pg("UPDATE T. SET amount = amount + 0.01 WHERE id = 30")
        .await;
    f.pg("UPDATE T. SET created = created + interval '1 microsecond' WHERE id = 40")
        .await;
    f.pg("UPDATE T. SET attrs = jsonb_set(attrs, '{nested,z}', 'false') WHERE id = 50")
        .await;
    f.pg("UPDATE T. SET _cdc_deleted = true WHERE id = 61")
        .await;
    f.pg("UPDATE T. SET paid = paid + interval '1 hour', data = '\\x00'::bytea WHERE id = 77")
        .await;
    f.pg("UPDATE T. SET dur = dur + interval '1 microsecond' WHERE id = 1203")
        .await;
    f.pg("UPDATE T. SET score = score * 2 WHERE id = 1502")
        .await;
    f.pg("INSERT INTO T. (id, name, amount, created, status, flags, qty, _cdc_version) VALUES (100000, 'x', 1, now(), 'new', '', 1, 5)").await;
    // Deleted at the source but still live in the warehouse: extra.
    f.db.exec("DELETE FROM items WHERE id = 1999").await;
    // Deleted at both (soft-deleted in the warehouse): consistent.
    f.db.exec("DELETE FROM items WHERE id = 2001").await;
    f.pg("UPDATE T. SET _cdc_deleted = true WHERE id = 2001")
        .await;
    expected(&[
        (Kind::Missing, 10, &[]),
        (Kind::Missing, 61, &["_cdc_deleted"]),
        (Kind::Extra, 1999, &[]),
        (Kind::Extra, 100000, &[]),
        (Kind::Mismatched, 20, &["note"]),
        (Kind::Mismatched, 30, &["amount"]),
        (Kind::Mismatched, 40, &["created"]),
        (Kind::Mismatched, 50, &["attrs"]),
        (Kind::Mismatched, 77, &["paid", "data"]),
        (Kind::Mismatched, 1203, &["dur"]),
        (Kind::Mismatched, 1502, &["score"]),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_copy_is_clean_and_tampering_is_found_exactly() {
    let f = Fixture::new(2_500).await;
    let cfg = f.config(300);
    let r = f.reconciler(&cfg).await;
    let clean = r.run(&f.table, false).await.unwrap();
    assert!(
        clean.is_clean(),
        "a faithful copy must give an empty report:\n{}",
        clean.summary()
    );
    assert_eq!(clean.rows_checked, 2_500);
    assert_eq!(clean.warehouse_rows, 2_500);
    assert_eq!(
        clean.chunks, 6,
        "5 full chunks of 500 and the open-ended tail"
    );
    assert_eq!(clean.chunks_mismatched, 0);

    let want = tamper(&f).await;
    let report = r.run(&f.table, false).await.unwrap();
    assert_eq!(found(&report), want, "{}", report.summary());
    assert_eq!(report.rows_checked, 2_498);
    assert!(
        report.chunks_mismatched >= 4 && report.chunks_mismatched <= 6,
        "{}",
        report.chunks_mismatched
    );

    // The JSON-lines file names the same keys and ends with the summary.
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique_name("report")));
    report.write_file(path.to_str().unwrap()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), want.len() + 1);
    assert!(lines[..want.len()]
        .iter()
        .all(|l| l["type"] == "difference" && l["key"]["id"].is_u64()));
    let last = &lines[want.len()];
    assert_eq!(
        (
            last["type"].as_str(),
            last["missing"].as_u64(),
            last["extra"].as_u64(),
            last["mismatched"].as_u64()
        ),
        (Some("summary"), Some(2), Some(2), Some(7))
    );
    let _ = std::fs::remove_file(path);

    // Metrics of the last completed run.
    let m = cdc_telemetry::render_metrics();
    let label = f.table.to_string();
    for (kind, n) in [("missing", 2), ("extra", 2), ("mismatched", 7)] {
        let line = format!("cdcsync_reconcile_mismatches{{kind=\"{kind}\",table=\"{label}\"}} {n}");
        assert!(m.contains(&line), "missing `{line}` in\n{m}");
    }
    assert!(
        m.contains(&format!(
            "cdcsync_reconcile_rows_checked_total{{table=\"{label}\"}} 4998"
        )),
        "{m}"
    );
    f.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_emits_events_with_current_versions_into_the_table_topic() {
    let f = Fixture::new(1_200).await;
    let cfg = f.config(200);
    let r = f.reconciler(&cfg).await;
    f.pg("DELETE FROM T. WHERE id = 5").await;
    f.pg("UPDATE T. SET amount = amount + 0.01 WHERE id = 6")
        .await;
    f.pg("UPDATE T. SET _cdc_deleted = true WHERE id = 7").await;
    f.db.exec("DELETE FROM items WHERE id = 8").await;
    let position_before: (String, u64) = {
        let mut c = f.db.conn().await;
        let row: mysql_async::Row = c.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    };
    let report = r.run(&f.table, true).await.unwrap();
    assert_eq!(
        found(&report),
        expected(&[
            (Kind::Missing, 5, &[]),
            (Kind::Missing, 7, &["_cdc_deleted"]),
            (Kind::Extra, 8, &[]),
            (Kind::Mismatched, 6, &["amount"])
        ])
    );
    assert_eq!(report.repaired, 4);
    assert!(report.differences.iter().all(|d| d.repaired));

    let topic = format!("{}.{}.items", f.prefix, f.db.name);
    let msgs = consume_all(&[topic.as_str()], 5, Duration::from_secs(30));
    assert_eq!(msgs.len(), 5, "four events and one tombstone: {msgs:?}");
    let floor = cdc_event::Version::at(
        &cdc_event::BinlogPosition {
            file: position_before.0,
            pos: position_before.1,
        },
        0,
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    for m in &msgs {
        let key = m.key.clone().unwrap();
        let Some(_) = &m.value else {
            assert_eq!(
                key, r#"{"id":8}"#,
                "only the delete is followed by a tombstone"
            );
            continue;
        };
        let v = m.json();
        let event: cdc_event::ChangeEvent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            event.key_json().as_deref(),
            Some(key.as_str()),
            "message key = key_json of the row"
        );
        assert_eq!(v["source"]["snapshot"], "true");
        assert!(
            event.source.cdc_version >= floor,
            "repair version {} must be at or after the position before the run {}",
            event.source.cdc_version,
            floor
        );
        assert!(
            event.source.cdc_version > cdc_event::Version(1000 + 1200),
            "newer than every applied version"
        );
        assert_eq!(
            m.headers
                .iter()
                .find(|(k, _)| k == "cdc_version")
                .map(|(_, v)| v.clone()),
            Some(event.source.cdc_version.to_string())
        );
        let id = event.row().unwrap()["id"].as_u64().unwrap();
        seen.insert((id, event.op.code()));
        if event.op == cdc_event::Op::Read {
            let after = event.after.as_ref().unwrap();
            // The current source row in the wire format of docs/event-format.md.
            assert_eq!(after["name"], format!("name-{id}-ü€😀"));
            assert!(
                after["amount"].is_string() && after["created"].as_str().unwrap().contains('T')
            );
            if id % 6 == 0 {
                assert!(after["attrs"].is_null());
            } else {
                assert_eq!(after["attrs"]["n"], id);
            }
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([(5, "r"), (6, "r"), (7, "r"), (8, "d")])
    );
    f.drop().await;
}

/// A stand-in pipeline: every source change reaches the warehouse `lag` later. The reconciler
/// sees many rows differ in its first pass and must report none of them.
#[tokio::test(flavor = "multi_thread")]
async fn changes_in_flight_are_not_reported() {
    let f = Fixture::new(2_000).await;
    let cfg = ReconcileConfig {
        recheck_timeout_ms: 5_000,
        ..f.config(0)
    };
    let r = f.reconciler(&cfg).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        let mut conn = f.db.conn().await;
        let pool = f.pg.pool.clone();
        let qualified = format!("\"{}\".items", f.pg.name);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let id = 1 + (n * 7919) % 2_000;
                n += 1;
                conn.query_drop(format!(
                    "UPDATE items SET amount = amount + 1, note = CONCAT('w', {n}) WHERE id = {id}"
                ))
                .await
                .unwrap();
                let (pool, q) = (pool.clone(), qualified.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    sqlx::query(&format!("UPDATE {q} SET amount = amount + 1, note = 'w' || {n}, _cdc_version = _cdc_version + 1 WHERE id = {id}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = r.run(&f.table, false).await.unwrap();
    stop.cancel();
    let writes = writer.await.unwrap();
    assert!(writes > 50, "the writer made {writes} changes");
    assert!(
        report.in_flight > 0,
        "the first pass must have seen changes in flight (else this test proves nothing)"
    );
    assert!(
        report.is_clean(),
        "no false mismatches while the source changes:\n{}",
        report.summary()
    );

    // Let the stand-in pipeline deliver the last changes.
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Without a re-check a difference is reported at once: the re-check is what filters.
    let no_recheck = ReconcileConfig {
        recheck_timeout_ms: 0,
        ..cfg.clone()
    };
    let r0 = f.reconciler(&no_recheck).await;
    let mut conn = f.db.conn().await;
    for id in [3u64, 4, 5] {
        conn.query_drop(format!(
            "UPDATE items SET amount = amount + 1 WHERE id = {id}"
        ))
        .await
        .unwrap();
    }
    let report = r0.run(&f.table, false).await.unwrap();
    // Pool::disconnect in drop_db waits for every connection to come back.
    drop(conn);
    assert_eq!(
        found(&report),
        expected(&[
            (Kind::Mismatched, 3, &["amount"]),
            (Kind::Mismatched, 4, &["amount"]),
            (Kind::Mismatched, 5, &["amount"])
        ])
    );
    f.drop().await;
}

/// Values that the digest's row text must tell apart although their texts are close (a comma
/// moved between two text columns, NULL against the empty string or empty binary, JSON `null`
/// against SQL NULL, a microsecond across midnight, trailing zeros of fractional seconds, JSON
/// values swapped between keys or changing type), plus values that are equal although both sides
/// print them differently (JSON key order, spacing, escapes and number forms; fractional seconds
/// with and without trailing zeros). Each edge row sits alone in its own chunk among filler
/// rows, so a change the digest could not see would leave its chunk un-drilled and its row
/// unreported; the drill-down of another chunk cannot hide it. Runs on every source flavor (the
/// JSON digest is made by MySQL's server but in Rust for MariaDB).
#[tokio::test(flavor = "multi_thread")]
async fn digest_tells_close_values_apart_and_equal_values_alike() {
    const DDL: &str = "CREATE TABLE edge (
      id INT NOT NULL PRIMARY KEY,
      t1 VARCHAR(20) NULL,
      t2 VARCHAR(20) NULL,
      b VARBINARY(8) NULL,
      d DATETIME(6) NULL,
      ts TIMESTAMP(6) NULL DEFAULT NULL,
      d0 DATETIME NULL,
      j JSON NULL,
      amount DECIMAL(10,3) NULL
    ) CHARACTER SET utf8mb4";
    // (column, source literal, warehouse literal) per edge row; other columns are NULL.
    let json = |s: &str| -> (String, String) {
        let carried =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(s).unwrap()).unwrap();
        (my_str(s), pg_str(&carried))
    };
    let same = |s: &str| (my_str(s), pg_str(s));
    let rows: Vec<Vec<(&str, (String, String))>> = vec![
        /* 1 */ vec![("t1", same("a,")), ("t2", same("b"))],
        /* 2 */ vec![("t1", same(""))],
        /* 3 */ vec![("t2", same("")), ("t1", same("-"))],
        /* 4 */ vec![("b", ("X''".into(), "'\\x'".into()))],
        /* 5 */ vec![("b", ("X'00'".into(), "'\\x00'".into()))],
        /* 6 */ vec![("d", same("2026-01-01 23:59:59.999999"))],
        /* 7 */ vec![("d", same("2026-01-01 00:00:00.100000"))],
        /* 8 */
        vec![(
            "ts",
            (
                "'2026-01-01 00:00:00.000000'".into(),
                "'2026-01-01 00:00:00+00'".into(),
            ),
        )],
        /* 9 */ vec![("j", json(r#"{"b": 2, "a": 1}"#))],
        /* 10 */
        vec![(
            "j",
            json(r#"{"a":"1","n":[1.0,1e3,-2.5,12345678901234567]}"#),
        )],
        /* 11 */ vec![("j", json(r#"{"k":[],"e":{},"z":[[{}]]}"#))],
        /* 12 */
        vec![(
            "j",
            json(r#"{"u":"\u00e9\u20ac\ud83d\ude00","s":"x\"y\\z\n\t/","é":{"bb":true,"a":null}}"#),
        )],
        /* 13 */ vec![("amount", same("-0.001"))],
        /* 14 */ vec![("d0", same("2026-01-01 00:00:00"))],
        // A zero date, which the pipeline carries as NULL: its digest piece differs on purpose
        // (cheaper than a guard on every row), and the drill-down finds the row equal.
        /* 15 */
        vec![("d", (my_str("0000-00-00 00:00:00"), "NULL".into()))],
    ];
    let zero_date_chunks = 1;
    let tamper: Vec<(u64, &str, &[&str])> = vec![
        (1, "t1 = 'a', t2 = ',b'", &["t1", "t2"]),
        (2, "t1 = NULL", &["t1"]),
        (3, "t2 = NULL, t1 = NULL", &["t1", "t2"]),
        (4, "b = NULL", &["b"]),
        (5, "b = '\\x'", &["b"]),
        (6, "d = d + interval '1 microsecond'", &["d"]),
        (7, "d = '2026-01-01 00:00:00.01'", &["d"]),
        (8, "ts = ts + interval '1 microsecond'", &["ts"]),
        (9, "j = '{\"a\": 2, \"b\": 1}'", &["j"]),
        (10, "j = jsonb_set(j, '{a}', '1')", &["j"]),
        (11, "j = '{\"k\": {}, \"e\": [], \"z\": [[{}]]}'", &["j"]),
        (12, "j = 'null'", &["j"]),
        (13, "amount = 0.001", &["amount"]),
        (14, "d0 = d0 + interval '1 second'", &["d0"]),
    ];
    for server in cdcsync_tests::source_servers() {
        let db = SourceDb::create(&server).await;
        db.exec(DDL).await;
        let pg = PgSchema::create().await;
        let table = TableId::new(db.name.clone(), "edge");
        let mut conn = db.conn().await;
        conn.query_drop("SET time_zone = '+00:00', sql_mode = ''")
            .await
            .unwrap();
        let schema = reconcile::schema::source_schema(&mut conn, &table)
            .await
            .unwrap();
        let q = format!("\"{}\".\"edge\"", pg.name);
        sqlx::query(&warehouse_applier::tables::create_table_sql(&q, &schema))
            .execute(&pg.pool)
            .await
            .unwrap();
        // Edge row n has id 100·n and 99 filler rows follow it, so with chunks of 100 keys each
        // edge row is alone in its chunk.
        for (n, cols) in rows.iter().enumerate() {
            let id = 100 * (n as u64 + 1);
            let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
            let my: Vec<&str> = cols.iter().map(|c| c.1 .0.as_str()).collect();
            let pgv: Vec<&str> = cols.iter().map(|c| c.1 .1.as_str()).collect();
            conn.query_drop(format!(
                "INSERT INTO edge (id, {}) VALUES ({id}, {})",
                names.join(", "),
                my.join(", ")
            ))
            .await
            .unwrap();
            sqlx::query(&format!(
                "INSERT INTO {q} (id, {}, _cdc_version) VALUES ({id}, {}, 1)",
                names.join(", "),
                pgv.join(", ")
            ))
            .execute(&pg.pool)
            .await
            .unwrap();
            let fill: Vec<String> = (id + 1..id + 100).map(|k| format!("({k})")).collect();
            conn.query_drop(format!("INSERT INTO edge (id) VALUES {}", fill.join(", ")))
                .await
                .unwrap();
            let fill: Vec<String> = (id + 1..id + 100).map(|k| format!("({k}, 1)")).collect();
            sqlx::query(&format!(
                "INSERT INTO {q} (id, _cdc_version) VALUES {}",
                fill.join(", ")
            ))
            .execute(&pg.pool)
            .await
            .unwrap();
        }
        drop(conn);
        let env = stack();
        let source: SourceConfig = cdc_config::from_toml(&format!(
            "name = \"shop\"\nurl = \"{}\"\ninclude_tables = [\"{table}\"]\n",
            server.url
        ))
        .unwrap();
        let warehouse: WarehouseConfig = cdc_config::from_toml(&format!(
            "url = \"{}\"\nschema = \"{}\"\n",
            env.postgres_url, pg.name
        ))
        .unwrap();
        let kafka: KafkaConfig = cdc_config::from_toml(&format!(
            "bootstrap_servers = \"{}\"\n",
            env.kafka_bootstrap
        ))
        .unwrap();
        let cfg = ReconcileConfig {
            chunk_rows: 100,
            parallelism: 2,
            recheck_timeout_ms: 0,
            recheck_interval_ms: 100,
            ..Default::default()
        };
        let r = Reconciler::connect(&source, &warehouse, &kafka, &cfg)
            .await
            .unwrap();
        let clean = r.run(&table, false).await.unwrap();
        assert!(clean.is_clean(), "{:?}: {}", server.flavor, clean.summary());
        assert_eq!(clean.rows_checked, 100 * rows.len() as u64);
        assert_eq!(
            clean.chunks_mismatched, zero_date_chunks,
            "{:?}: equal values must give equal digests (else every run drills down)",
            server.flavor
        );
        for (n, set, _) in &tamper {
            sqlx::query(&format!("UPDATE {q} SET {set} WHERE id = {}", 100 * n))
                .execute(&pg.pool)
                .await
                .unwrap_or_else(|e| panic!("{set}: {e}"));
        }
        let report = r.run(&table, false).await.unwrap();
        let want: Vec<(Kind, u64, &[&str])> = tamper
            .iter()
            .map(|(n, _, cols)| (Kind::Mismatched, 100 * n, *cols))
            .collect();
        assert_eq!(
            found(&report),
            expected(&want),
            "{:?}: {}",
            server.flavor,
            report.summary()
        );
        assert_eq!(
            report.chunks_mismatched,
            tamper.len() as u64 + zero_date_chunks,
            "{:?}: every tampered row must change its own chunk's digest",
            server.flavor
        );
        db.drop_db().await;
        pg.drop_schema().await;
    }
}
