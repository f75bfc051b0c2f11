//! Reconciliation against the real pipeline: `cdcsync reader` (initial snapshot, then streaming)
//! and `cdcsync applier` running as processes, `cdcsync reconcile` as the operator runs it.
//!
//! After the pipeline caught up the report is empty (a correct pipeline gives no false
//! mismatches, on the real type mapping); it stays empty while a writer keeps changing the
//! source; tampering behind the pipeline's back is reported with the exact keys and kinds;
//! `--repair` goes through Kafka and the applier, and the next run is empty again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cdcsync_tests::{
    cdcsync_bin, mariadb, source_servers, split_password, stack, unique_name, write_config, Flavor,
    PgSchema, SourceDb, SourceServer,
};

struct Pipeline {
    db: SourceDb,
    pg: PgSchema,
    dir: cdcsync_tests::tempdir::Dir,
    config: PathBuf,
    children: Vec<Child>,
}

impl Pipeline {
    async fn new(server: &SourceServer) -> Pipeline {
        let db = SourceDb::create(server).await;
        let pg = PgSchema::create().await;
        let name = unique_name("rcp");
        let (url, password) = split_password(&db.server.url);
        let (pg_url, pg_password) = split_password(&stack().postgres_url);
        let toml = format!(
            r#"[source]
name = "{name}"
url = "{url}"
password = "{password}"
server_id = {sid}
include_tables = ["{db}.orders"]

[kafka]
bootstrap_servers = "{kafka}"
partitions = 3

[reader]
checkpoint_interval_ms = 200

[reader.snapshot]
mode = "initial"

[warehouse]
url = "{pg_url}"
password = "{pg_password}"
schema = "{schema}"

[applier]
group_id = "{name}-applier"
batch_max_ms = 50

[reconcile]
chunk_rows = 500
recheck_timeout_ms = 8000
recheck_interval_ms = 250

[telemetry]
bind = "127.0.0.1:0"
"#,
            sid = 40_000 + rand::random::<u16>() as u32,
            db = db.name,
            kafka = stack().kafka_bootstrap,
            schema = pg.name,
        );
        let (dir, config) = write_config(&toml);
        Pipeline {
            db,
            pg,
            dir,
            config,
            children: Vec::new(),
        }
    }

    fn log(&self, what: &str) -> PathBuf {
        self.dir.path().join(format!("{what}.log"))
    }

    fn log_tail(&self, what: &str) -> String {
        let s = std::fs::read_to_string(self.log(what)).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn(&mut self, args: &[&str], log: &str) {
        let child = Command::new(cdcsync_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log(log)).unwrap())
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn loadgen(&self, args: &[&str], log: &str) -> Child {
        Command::new(cdcsync_bin())
            .args([
                "loadgen",
                "--url",
                &self.db.server.admin_url,
                "--db",
                &self.db.name,
                "--quiet",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log(log)).unwrap())
            .spawn()
            .unwrap()
    }

    fn reconcile(&self, extra: &[&str]) -> Output {
        Command::new(cdcsync_bin())
            .args(["reconcile", "--config"])
            .arg(&self.config)
            .args(["--table", &format!("{}.orders", self.db.name)])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Runs `cdcsync reconcile` until it reports the warehouse equal to the source.
    fn wait_equal(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self.reconcile(&[]);
            if out.status.success() {
                return;
            }
            last = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!(
            "not equal within {timeout:?}:\n{last}\nreader:\n{}\napplier:\n{}",
            self.log_tail("reader"),
            self.log_tail("applier")
        );
    }

    async fn pg(&self, sql: &str) {
        let sql = sql.replace("T.", &format!("\"{}\".orders", self.pg.name));
        sqlx::query(&sql)
            .execute(&self.pg.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn finish(mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.db.drop_db().await;
        self.pg.drop_schema().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_reconciles_clean_finds_tampering_and_repairs_through_kafka() {
    pipeline_case(&mariadb()).await;
}

/// The same on MySQL 9: the repair reads through the snapshot's GTID fence
/// (`docs/decisions/0002-snapshot-consistency.md`).
#[tokio::test(flavor = "multi_thread")]
async fn mysql_pipeline_reconciles_clean_finds_tampering_and_repairs_through_kafka() {
    let Some(server) = source_servers()
        .into_iter()
        .find(|s| s.flavor == Flavor::Mysql)
    else {
        assert!(
            std::env::var("CDCSYNC_TEST_FLAVORS").is_ok_and(|f| !f.is_empty()),
            "no MySQL source in the stack: run `scripts/stack up`"
        );
        return;
    };
    pipeline_case(&server).await;
}

async fn pipeline_case(server: &SourceServer) {
    let mut p = Pipeline::new(server).await;
    let status = p.loadgen(&["--prefill", "3000"], "prefill").wait().unwrap();
    assert!(status.success(), "prefill: {}", p.log_tail("prefill"));
    p.spawn(&["reader"], "reader");
    p.spawn(&["applier"], "applier");

    // 1. A correct pipeline gives an empty report (exit 0) once it caught up.
    p.wait_equal(Duration::from_secs(180));

    // 2. While a writer keeps inserting, updating and deleting, no false mismatches.
    let mut writer = p.loadgen(&["--rate", "150", "--duration", "40s"], "writer");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..3 {
        let out = p.reconcile(&[]);
        assert!(
            out.status.success(),
            "round {round}: differences reported while the source changes:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &writer.id().to_string()])
        .status();
    let _ = writer.wait();
    p.wait_equal(Duration::from_secs(120));

    // 3. Tampering behind the pipeline's back.
    use mysql_async::prelude::Queryable;
    let mut c = p.db.conn().await;
    let ids: Vec<u64> = c
        .query("SELECT id FROM orders ORDER BY id LIMIT 5")
        .await
        .unwrap();
    drop(c);
    let (a, b, d, e, g) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    p.pg(&format!("DELETE FROM T. WHERE id = {a}")).await;
    p.pg(&format!(
        "UPDATE T. SET amount = amount + 0.01 WHERE id = {b}"
    ))
    .await;
    p.pg(&format!("UPDATE T. SET created_at = created_at + interval '1 microsecond', shipping_address = shipping_address || 'x' WHERE id = {d}")).await;
    p.pg(&format!("UPDATE T. SET attributes = attributes || '{{\"gift\": true, \"x\": 1}}'::jsonb WHERE id = {e}")).await;
    p.pg(&format!("UPDATE T. SET _cdc_deleted = true WHERE id = {g}"))
        .await;
    p.pg("INSERT INTO T. (id, user_id, status, amount, discount, tax, currency, item_count, shipping_address, created_at, updated_time, version, _cdc_version) \
          VALUES (999999999, 1, 'paid', 1, 0, 0, 'EUR', 1, 'x', now(), now(), 1, 1)").await;
    let report_file = p.dir.path().join("report.jsonl");
    let out = p.reconcile(&["--report", report_file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "differences exit with 3:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let found: BTreeSet<(String, u64, Vec<String>)> = lines
        .iter()
        .filter(|l| l["type"] == "difference")
        .map(|l| {
            let cols = l["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            (
                l["kind"].as_str().unwrap().to_string(),
                l["key"]["id"].as_u64().unwrap(),
                cols,
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let want: BTreeSet<(String, u64, Vec<String>)> = [
        ("missing".to_string(), a, s(&[])),
        ("mismatched".to_string(), b, s(&["amount"])),
        (
            "mismatched".to_string(),
            d,
            s(&["shipping_address", "created_at"]),
        ),
        ("mismatched".to_string(), e, s(&["attributes"])),
        ("missing".to_string(), g, s(&["_cdc_deleted"])),
        ("extra".to_string(), 999_999_999, s(&[])),
    ]
    .into_iter()
    .collect();
    assert_eq!(found, want, "{}", String::from_utf8_lossy(&out.stdout));

    // 4. Repair through Kafka; the applier applies it; the next run is empty.
    let out = p.reconcile(&["--repair"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("repair: 6 change events produced"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    p.wait_equal(Duration::from_secs(60));
    p.finish().await;
}
