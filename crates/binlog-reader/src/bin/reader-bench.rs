//! Reader benchmark: decode and produce a pre-written binlog as fast as possible.
//!
//! ```text
//! reader-bench prepare [rows]   # writes `rows` order inserts (default 1,000,000) into
//!                               # reader_bench.orders and prints the binlog position before them
//! reader-bench prepare-one-tx [rows]  # the same rows as ONE transaction (a single
//!                               # INSERT ... SELECT over MariaDB's seq_1_to_N table)
//! reader-bench run [rows]       # reads from that position until Kafka acknowledged `rows`
//!                               # events; prints rows/s and peak RSS of this process
//! ```
//!
//! Connection settings come from `MYSQL_URL`, `MYSQL_ADMIN_URL` and `KAFKA_BOOTSTRAP` (as
//! `eval "$(scripts/stack env)"` sets them). `prepare` stores the start position in
//! `target/reader-bench.start` so that `run` can be repeated on the same binlog. `run` is a
//! separate process so that its peak RSS is the reader's alone.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

const DB: &str = "reader_bench";

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: eval \"$(scripts/stack env)\""))
}

fn state_file() -> std::path::PathBuf {
    std::env::temp_dir().join("cdcsync-reader-bench.start")
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn prepare(rows: u64, one_tx: bool) {
    let admin = mysql_async::Pool::new(env("MYSQL_ADMIN_URL").as_str());
    let mut c = admin.get_conn().await.expect("connect as root");
    c.query_drop(format!(
        "DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}; USE {DB};
         CREATE TABLE orders (
           id BIGINT UNSIGNED PRIMARY KEY, user_id BIGINT NOT NULL, status ENUM('pending','paid','shipped','cancelled') NOT NULL,
           amount DECIMAL(12,2) NOT NULL, tax DECIMAL(12,2) NOT NULL, discount DECIMAL(12,2), currency CHAR(3) NOT NULL,
           items INT NOT NULL, weight_kg DOUBLE, address VARCHAR(200), note TEXT, created_at DATETIME(6) NOT NULL,
           paid_at DATETIME(6), updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), version INT NOT NULL)"
    ))
    .await
    .expect("create table");
    let gtid: String = c
        .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .unwrap()
        .unwrap_or_default();
    let row: mysql_async::Row = c
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .expect("binlog on");
    let (file, pos): (String, u64) = (row.get(0).unwrap(), row.get(1).unwrap());
    std::fs::write(state_file(), format!("{gtid}\n{file}\n{pos}\n{rows}\n")).expect("write state");
    let t = Instant::now();
    if one_tx {
        c.query_drop(format!(
            "INSERT INTO orders (id,user_id,status,amount,tax,discount,currency,items,weight_kg,address,note,created_at,paid_at,version)
             SELECT seq, seq % 50000, ELT(seq % 4 + 1, 'pending','paid','shipped','cancelled'), (seq % 10000) + (seq % 100) / 100,
                    seq % 1000, IF(seq % 3 = 0, NULL, seq % 20 + 0.5), 'EUR', seq % 9 + 1, (seq % 700) / 10,
                    CONCAT(seq % 999, ' Main Street, Springfield'), CONCAT('note ', seq), '2026-11-28 09:00:00.123456',
                    IF(seq % 4 = 0, NULL, NOW(6)), 1
               FROM seq_1_to_{rows}"
        ))
        .await
        .expect("one big transaction");
        println!("prepare: wrote {rows} rows in ONE transaction in {:.1} s; start position {file}:{pos} gtid {gtid:?}", t.elapsed().as_secs_f64());
        return;
    }
    // Two writers, 1000-row INSERTs (multi-row statements are how the binlog fills fast).
    let per = rows / 2;
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let pool = admin.clone();
        let n = if w == 0 { per } else { rows - per };
        let first = w * per;
        tasks.push(tokio::spawn(async move {
            let mut c = pool.get_conn().await.unwrap();
            c.query_drop(format!("USE {DB}")).await.unwrap();
            let mut i = 0;
            while i < n {
                let batch = (n - i).min(1000);
                let mut sql = String::with_capacity(batch as usize * 220);
                sql.push_str("INSERT INTO orders (id,user_id,status,amount,tax,discount,currency,items,weight_kg,address,note,created_at,paid_at,version) VALUES ");
                for k in 0..batch {
                    let id = first + i + k + 1;
                    if k > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "({id},{},'{}',{}.{:02},{}.{:02},{},'EUR',{},{},'{} Main Street, Springfield','note {id}','2026-11-28 09:00:00.{:06}',{},1)",
                        id % 50_000,
                        ["pending", "paid", "shipped", "cancelled"][(id % 4) as usize],
                        id % 10_000, id % 100, id % 1000, id % 100,
                        if id % 3 == 0 { "NULL".to_string() } else { format!("{}.50", id % 20) },
                        id % 9 + 1,
                        (id % 700) as f64 / 10.0,
                        id % 999,
                        id % 1_000_000,
                        if id % 4 == 0 { "NULL" } else { "NOW(6)" },
                    ));
                }
                c.query_drop(sql).await.unwrap();
                i += batch;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "prepare: wrote {rows} rows in {:.1} s; start position {file}:{pos} gtid {gtid:?}",
        t.elapsed().as_secs_f64()
    );
}

async fn run(rows_override: Option<u64>) {
    let state = std::fs::read_to_string(state_file()).expect("run `reader-bench prepare` first");
    let mut lines = state.lines();
    let gtid = lines.next().unwrap_or_default().to_string();
    let file = lines.next().unwrap_or_default().to_string();
    let pos: u64 = lines.next().unwrap_or("4").parse().unwrap();
    let rows: u64 = rows_override.unwrap_or_else(|| lines.next().unwrap_or("0").parse().unwrap());
    let name = format!("bench-{}", std::process::id());
    let url = env("MYSQL_URL");
    let toml = format!(
        "[source]\nname = \"{name}\"\nurl = \"{url}\"\nserver_id = {}\ninclude_tables = [\"{DB}.orders\"]\n\
         [kafka]\nbootstrap_servers = \"{}\"\npartitions = 6\n",
        30_000 + std::process::id() % 30_000,
        env("KAFKA_BOOTSTRAP")
    );
    #[derive(serde::Deserialize)]
    struct File {
        source: cdc_config::SourceConfig,
        kafka: cdc_config::KafkaConfig,
    }
    let f: File = cdc_config::from_toml(&toml).expect("config");
    let reader = binlog_reader::ReaderConfig::default();
    // Seed the checkpoint with the position before the pre-written rows.
    let cp = cdc_event::Checkpoint {
        flavor: cdc_event::Flavor::Mariadb,
        server_id: 1,
        gtid_set: gtid,
        position: cdc_event::BinlogPosition { file, pos },
        ts_ms: 0,
    };
    let topic = reader.checkpoint_topic(&name);
    let sink = binlog_reader::kafka::Sink::new(&f.kafka, &reader, topic.clone()).expect("sink");
    sink.ensure_topics(std::slice::from_ref(&topic))
        .await
        .expect("checkpoint topic");
    sink.save_checkpoint(&name, &cp)
        .await
        .expect("seed checkpoint");
    drop(sink);

    let shutdown = cdc_telemetry::Shutdown::new();
    let health = cdc_telemetry::Health::new();
    let s2 = shutdown.clone();
    let t0 = Instant::now();
    let task =
        tokio::spawn(
            async move { binlog_reader::run(&f.source, &f.kafka, &reader, health, s2).await },
        );
    let acked = || -> u64 {
        prometheus::default_registry()
            .gather()
            .iter()
            .filter(|m| m.name() == "cdcsync_reader_events_total")
            .flat_map(|m| {
                m.get_metric()
                    .iter()
                    .map(|x| x.get_counter().get_value() as u64)
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    let mut last_print = Instant::now();
    loop {
        let n = acked();
        if n >= rows {
            break;
        }
        if task.is_finished() {
            panic!("reader stopped: {:?}", task.await);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {n} events acknowledged after {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = task.await;
    println!(
        "run: {rows} row events acknowledged by Kafka in {secs:.2} s = {:.0} rows/s (includes connect and checkpoint load); peak RSS {:.1} MiB",
        rows as f64 / secs,
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows = args.get(2).and_then(|r| r.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("prepare") => rt.block_on(prepare(rows.unwrap_or(1_000_000), false)),
        Some("prepare-one-tx") => rt.block_on(prepare(rows.unwrap_or(1_000_000), true)),
        Some("run") => rt.block_on(run(rows)),
        _ => {
            eprintln!("usage: reader-bench prepare [rows] | prepare-one-tx [rows] | run [rows]");
            std::process::exit(2);
        }
    }
}
