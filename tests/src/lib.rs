//! Integration test harness: every test gets its own source database, PostgreSQL schema, Kafka
//! topic prefix and consumer group on the real services that `scripts/stack` runs, so tests run
//! in parallel and never see each other's data.
//!
//! Connection settings come from the environment that `eval "$(scripts/stack env)"` sets (as
//! `make test` does); when they are missing, the harness asks `scripts/stack env` itself, so a
//! plain `cargo test` works once the stack is up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

pub use cdc_event::Flavor;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Connection settings of the local stack.
#[derive(Debug, Clone)]
pub struct StackEnv {
    /// MariaDB as the CDC user.
    pub mysql_url: String,
    /// MariaDB as root.
    pub mysql_admin_url: String,
    /// MySQL 9 as the CDC user, when the stack runs it.
    pub mysql9_url: Option<String>,
    /// MySQL 9 as root, when the stack runs it.
    pub mysql9_admin_url: Option<String>,
    /// The CA (PEM file) that signed MySQL 9's server certificate, which names 127.0.0.1 and
    /// localhost.
    pub mysql9_ssl_ca: Option<String>,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// PostgreSQL warehouse URL.
    pub postgres_url: String,
}

/// The stack's settings (read once per test process).
pub fn stack() -> &'static StackEnv {
    static ENV: OnceLock<StackEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        if !vars.contains_key("MYSQL_URL") {
            let out = std::process::Command::new(repo_root().join("scripts/stack"))
                .arg("env")
                .output()
                .expect("run scripts/stack env");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                    vars.insert(k.to_string(), v.trim_matches('\'').to_string());
                }
            }
        }
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} is not set: run `scripts/stack up` first"))
        };
        StackEnv {
            mysql_url: get("MYSQL_URL"),
            mysql_admin_url: get("MYSQL_ADMIN_URL"),
            mysql9_url: vars.get("MYSQL9_URL").cloned(),
            mysql9_admin_url: vars.get("MYSQL9_ADMIN_URL").cloned(),
            mysql9_ssl_ca: vars.get("MYSQL9_SSL_CA").cloned(),
            kafka_bootstrap: get("KAFKA_BOOTSTRAP"),
            postgres_url: get("POSTGRES_URL"),
        }
    })
}

/// A name unique to this test run: `<prefix>_<pid>_<counter>_<random>`, lower case, safe as a
/// database, schema, topic or group name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{n}_{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A source server the reader can read from.
#[derive(Debug, Clone)]
pub struct SourceServer {
    /// MariaDB or MySQL.
    pub flavor: Flavor,
    /// URL as the CDC user.
    pub url: String,
    /// URL as root.
    pub admin_url: String,
}

/// The source servers to run source-side tests against: MariaDB always, MySQL 9 when the stack
/// runs it (set `CDCSYNC_TEST_FLAVORS=mariadb` to restrict).
pub fn source_servers() -> Vec<SourceServer> {
    let env = stack();
    let only = std::env::var("CDCSYNC_TEST_FLAVORS").unwrap_or_default();
    let wanted = |f: &str| only.is_empty() || only.split(',').any(|x| x.trim() == f);
    let mut out = Vec::new();
    if wanted("mariadb") {
        out.push(SourceServer {
            flavor: Flavor::Mariadb,
            url: env.mysql_url.clone(),
            admin_url: env.mysql_admin_url.clone(),
        });
    }
    if let (Some(url), Some(admin)) = (&env.mysql9_url, &env.mysql9_admin_url) {
        if wanted("mysql") {
            out.push(SourceServer {
                flavor: Flavor::Mysql,
                url: url.clone(),
                admin_url: admin.clone(),
            });
        }
    }
    out
}

/// The MariaDB server of the stack.
pub fn mariadb() -> SourceServer {
    let env = stack();
    SourceServer {
        flavor: Flavor::Mariadb,
        url: env.mysql_url.clone(),
        admin_url: env.mysql_admin_url.clone(),
    }
}

/// A fresh database on a source server, for one test.
pub struct SourceDb {
    /// The server.
    pub server: SourceServer,
    /// The database name.
    pub name: String,
    /// A root connection pool.
    pub admin: mysql_async::Pool,
}

impl SourceDb {
    /// Creates a database with a unique name on `server`.
    pub async fn create(server: &SourceServer) -> SourceDb {
        let admin = mysql_async::Pool::new(server.admin_url.as_str());
        let name = unique_name("t");
        let mut conn = admin
            .get_conn()
            .await
            .expect("connect to the source as root");
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .await
            .expect("create test database");
        SourceDb {
            server: server.clone(),
            name,
            admin,
        }
    }

    /// Runs SQL statements (separated by `;` at line ends) as root in this database.
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.admin.get_conn().await.expect("connect");
        conn.query_drop(format!("USE `{}`", self.name))
            .await
            .expect("use db");
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A root connection with this database selected.
    pub async fn conn(&self) -> mysql_async::Conn {
        let mut conn = self.admin.get_conn().await.expect("connect");
        conn.query_drop(format!("USE `{}`", self.name))
            .await
            .expect("use db");
        conn
    }

    /// Drops the database.
    pub async fn drop_db(self) {
        if let Ok(mut c) = self.admin.get_conn().await {
            let _ = c
                .query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name))
                .await;
        }
        let _ = self.admin.disconnect().await;
    }
}

/// A fresh PostgreSQL schema for one test, with a pool on the warehouse database.
pub struct PgSchema {
    /// The schema name.
    pub name: String,
    /// A pool on the warehouse database.
    pub pool: sqlx::PgPool,
}

impl PgSchema {
    /// Creates a schema with a unique name.
    pub async fn create() -> PgSchema {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&stack().postgres_url)
            .await
            .expect("connect to PostgreSQL");
        let name = unique_name("w");
        sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&pool)
            .await
            .expect("create schema");
        PgSchema { name, pool }
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}

fn kafka_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &stack().kafka_bootstrap);
    c
}

/// Creates a topic with `partitions` partitions (replication factor 1).
pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create topic");
    for r in res {
        if let Err((t, e)) = r {
            if e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                panic!("create topic {t}: {e}");
            }
        }
    }
}

/// A producer for test input.
pub fn producer() -> FutureProducer {
    kafka_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// Produces one message (value `None` = tombstone) and waits for the acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, key: &str, value: Option<&str>) {
    let mut record = FutureRecord::<str, str>::to(topic).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key as text.
    pub key: Option<String>,
    /// Value as text (`None` for a tombstone).
    pub value: Option<String>,
    /// Headers as text.
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    /// The value parsed as JSON (`Null` for a tombstone).
    pub fn json(&self) -> serde_json::Value {
        self.value
            .as_deref()
            .map(|v| serde_json::from_str(v).expect("value is JSON"))
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Reads every message of the topics from the beginning until `expected` messages arrived or the
/// topic stayed idle for `idle` after at least `min_wait`, at most `timeout` in all. Messages are
/// returned in (partition, offset) order.
pub fn consume_all(topics: &[&str], expected: usize, timeout: Duration) -> Vec<Consumed> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", unique_name("g"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    h.value
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

/// The built `cdcsync` binary (`make test` builds it before the tests; `CDCSYNC_BIN` overrides).
pub fn cdcsync_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CDCSYNC_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test exe> → target/<profile>/cdcsync
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("cdcsync"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p cdcsync`",
        bin.display()
    );
    bin
}

/// Writes a configuration file for one test and returns its path (in a temp directory that
/// lives as long as the returned guard).
pub fn write_config(toml: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("cdcsync.toml");
    std::fs::write(&path, toml).expect("write config");
    (dir, path)
}

/// A minimal temporary directory (removed on drop).
pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed when dropped.
    #[derive(Debug)]
    pub struct Dir(PathBuf);

    impl Dir {
        /// Creates a fresh directory.
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(super::unique_name("cdcsync"));
            std::fs::create_dir_all(&p).expect("create temp dir");
            Dir(p)
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Default for Dir {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The password-free part of a `mysql://user:pass@host:port` URL and the password, for configs.
pub fn split_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (userinfo, host) = rest.split_once('@').expect("user@host");
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    (format!("{scheme}://{user}@{host}"), pass.to_string())
}
