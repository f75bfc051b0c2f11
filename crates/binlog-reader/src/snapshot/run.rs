//! The snapshot runner: plans segments, runs chunks on a bounded pool, saves progress after
//! Kafka acknowledged each chunk, resumes unfinished tables, and serves on-demand requests.
//! The correctness argument is in the module docs (`snapshot/mod.rs`).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdc_config::{KafkaConfig, SourceConfig};
use cdc_event::{topic_name, BinlogPosition, EventId, Flavor, TableId, Version};
use cdc_telemetry::Shutdown;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::config::{ReaderConfig, ZeroDates};
use crate::decode::Image;
use crate::kafka::{new_tx, Sink, TxState};
use crate::preflight::TableFilter;
use crate::table::TableInfo;
use crate::ReaderError;

use super::encode::{encode_row, envelope, ChunkCtx};
use super::metrics::{self as m, SnapshotFailed};
use super::progress::{self, KeyVal, Segment, State, TableProgress};
use super::signal::{signal_topic, SignalConsumer};
use super::{schema, SnapshotClock, SnapshotConfig, SnapshotMode};

/// Why a snapshot (or a request) failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A source query failed (retried).
    #[error("source: {0}")]
    Source(String),
    /// Kafka failed (retried).
    #[error("kafka: {0}")]
    Kafka(String),
    /// The table cannot be snapshotted as it is (definite).
    #[error("table {table} {problem}")]
    Table {
        /// `db.table`.
        table: String,
        /// What and the fix.
        problem: String,
    },
    /// A source setting makes a consistent snapshot impossible (definite; names the fix).
    #[error("source setting: {0}")]
    SourceSetting(String),
    /// A bad request.
    #[error("{0}")]
    Request(String),
    /// Producing failed.
    #[error(transparent)]
    Produce(#[from] ReaderError),
}

impl SnapshotError {
    fn is_definite(&self) -> bool {
        match self {
            SnapshotError::Source(_) | SnapshotError::Kafka(_) => false,
            SnapshotError::Produce(e) => e.is_definite(),
            _ => true,
        }
    }

    fn into_reader(self) -> ReaderError {
        match self {
            SnapshotError::Source(s) => ReaderError::Source(s),
            SnapshotError::Kafka(s) => ReaderError::Kafka(s),
            SnapshotError::Produce(e) => e,
            SnapshotError::SourceSetting(s) => ReaderError::SourceSetting(s),
            other => ReaderError::SourceSetting(other.to_string()),
        }
    }
}

fn my(e: mysql_async::Error) -> SnapshotError {
    SnapshotError::Source(e.to_string())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Everything the snapshot tasks share.
struct Shared {
    name: String,
    name_json: String,
    prefix: String,
    kafka: KafkaConfig,
    cfg: SnapshotConfig,
    zero: ZeroDates,
    sink: Arc<Sink>,
    pool: Pool,
    flavor: Flavor,
    /// Starts each chunk's consistent-snapshot transaction and gives its version (per flavor).
    clock: SnapshotClock,
    server_id: u32,
    /// Bounds the chunks read at once over all tables.
    permits: Semaphore,
    /// Tables with a run in this process (a second request for one of them waits its turn).
    active: Mutex<HashSet<String>>,
    bars: Option<indicatif::MultiProgress>,
    shutdown: Shutdown,
}

/// A table run to start, with whether it must wait for the stream's first checkpoint.
struct Job {
    progress: TableProgress,
}

/// The running snapshot machinery of one reader; dropping it stops every snapshot task (their
/// progress is durable, so they resume on the next start).
pub struct Snapshots {
    shared: Option<Arc<Shared>>,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    tables: Vec<String>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn included_tables(
    conn: &mut mysql_async::Conn,
    source: &SourceConfig,
) -> Result<Vec<String>, SnapshotError> {
    let filter = TableFilter::new(source);
    let mut out = Vec::new();
    for db in filter.databases() {
        let names: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (db,),
            )
            .await
            .map_err(my)?;
        out.extend(
            names
                .into_iter()
                .filter(|t| filter.matches(db, t))
                .map(|t| format!("{db}.{t}")),
        );
    }
    Ok(out)
}

impl Snapshots {
    /// Prepares snapshots before the stream starts: on a first start (no checkpoint) in
    /// `initial`/`when_needed` mode, records a request for every included table *before* the
    /// stream saves its start position, so a crash in between cannot skip the initial snapshot;
    /// then starts the runner (unfinished tables resume, requests arrive on the control topic).
    /// Transient failures (source or Kafka not reachable yet) are retried with backoff here,
    /// as the stream's sessions are, so a reader started before its source still comes up.
    pub async fn start(
        source: &SourceConfig,
        kafka: &KafkaConfig,
        reader: &ReaderConfig,
        sink: Arc<Sink>,
        shutdown: Shutdown,
    ) -> Result<Snapshots, ReaderError> {
        let mut backoff = Duration::from_millis(reader.reconnect_backoff_initial_ms);
        loop {
            match Self::start_once(source, kafka, reader, sink.clone(), shutdown.clone()).await {
                Err(_) if shutdown.is_cancelled() => {
                    return Ok(Snapshots {
                        shared: None,
                        jobs: None,
                        tables: Vec::new(),
                        task: None,
                    });
                }
                Err(e) if !e.is_definite() => {
                    tracing::warn!(error = %e, "snapshot setup: transient error; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff =
                        (backoff * 2).min(Duration::from_millis(reader.reconnect_backoff_max_ms));
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        source: &SourceConfig,
        kafka: &KafkaConfig,
        reader: &ReaderConfig,
        sink: Arc<Sink>,
        shutdown: Shutdown,
    ) -> Result<Snapshots, ReaderError> {
        let cfg = reader.snapshot.clone();
        cfg.validate()?;
        let prefix = kafka.prefix(&source.name).to_string();
        let checkpoint_topic = reader.checkpoint_topic(&prefix);
        let opts: mysql_async::Opts = crate::source::client_opts(source)?
            .init(vec![
                "SET NAMES utf8mb4",
                "SET time_zone = '+00:00'",
                "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            ])
            .pool_opts(
                mysql_async::PoolOpts::default()
                    .with_reset_connection(false)
                    .with_constraints(
                        mysql_async::PoolConstraints::new(0, cfg.workers + 2).expect("min <= max"),
                    ),
            )
            .into();
        let pool = Pool::new(opts);
        let mut conn = pool.get_conn().await.map_err(ReaderError::from_mysql)?;
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(ReaderError::from_mysql)?
            .unwrap_or_default();
        let flavor = if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::Mariadb
        } else {
            Flavor::Mysql
        };
        let server_id: u32 = conn
            .query_first("SELECT @@GLOBAL.server_id")
            .await
            .map_err(ReaderError::from_mysql)?
            .unwrap_or(0);
        let tables = included_tables(&mut conn, source)
            .await
            .map_err(SnapshotError::into_reader)?;
        drop(conn);
        m::register(&tables);
        for t in &tables {
            crate::metrics::EVENTS.with_label_values(&[t, "r"]);
        }
        sink.ensure_topics(std::slice::from_ref(&checkpoint_topic))
            .await?;
        let records = {
            let (k, t, n) = (kafka.clone(), checkpoint_topic.clone(), source.name.clone());
            tokio::task::spawn_blocking(move || progress::load_all(&k, &t, &n))
                .await
                .map_err(|e| ReaderError::Kafka(e.to_string()))?
                .map_err(SnapshotError::into_reader)?
        };
        let checkpoint = sink.load_checkpoint(&source.name).await?;
        let mut jobs: Vec<TableProgress> = records
            .values()
            .filter(|r| r.state == State::Running)
            .cloned()
            .collect();
        if checkpoint.is_none() && cfg.mode != SnapshotMode::Never {
            let now = now_ms();
            for t in &tables {
                if jobs.iter().any(|j| &j.table == t) {
                    continue;
                }
                let p = TableProgress::requested(t, "initial", now);
                save(&sink, &source.name, &p)
                    .await
                    .map_err(SnapshotError::into_reader)?;
                jobs.push(p);
            }
            tracing::info!(tables = ?tables, "first start without a checkpoint: initial snapshot requested");
        }
        let bars = (cfg.progress_bars && std::io::stderr().is_terminal())
            .then(indicatif::MultiProgress::new);
        let shared = Arc::new(Shared {
            name: source.name.clone(),
            name_json: serde_json::to_string(&source.name).unwrap_or_default(),
            prefix: prefix.clone(),
            kafka: kafka.clone(),
            zero: reader.zero_dates,
            permits: Semaphore::new(cfg.workers),
            cfg,
            sink,
            pool,
            flavor,
            clock: SnapshotClock::new(flavor),
            server_id,
            active: Mutex::new(HashSet::new()),
            bars,
            shutdown,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        for p in jobs {
            let _ = tx.send(Job { progress: p });
        }
        let task = tokio::spawn(coordinator(
            shared.clone(),
            rx,
            tables.clone(),
            source.clone(),
        ));
        Ok(Snapshots {
            shared: Some(shared),
            jobs: Some(tx),
            tables,
            task: Some(task),
        })
    }

    /// In `when_needed` mode, turns a checkpoint the source can no longer serve (purged binlog,
    /// unknown GTID) into a reset plus a new snapshot of every included table: the checkpoint is
    /// deleted (the next session starts at the current position and saves it), and the tables
    /// are requested again. Returns whether the reader should go on.
    pub async fn recover(&self, e: &ReaderError) -> Result<bool, ReaderError> {
        let (Some(shared), Some(jobs)) = (&self.shared, &self.jobs) else {
            return Ok(false);
        };
        if shared.cfg.mode != SnapshotMode::WhenNeeded
            || !matches!(
                e,
                ReaderError::Purged { .. } | ReaderError::GtidUnknown { .. }
            )
        {
            return Ok(false);
        }
        tracing::warn!(error = %e, "snapshot.mode = when_needed: resetting the checkpoint to the current position and snapshotting every captured table again");
        let now = now_ms();
        let mut requested = Vec::new();
        for t in &self.tables {
            let p = TableProgress::requested(t, "when_needed", now);
            save(&shared.sink, &shared.name, &p)
                .await
                .map_err(SnapshotError::into_reader)?;
            requested.push(p);
        }
        shared.sink.save_record(&shared.name, None).await?;
        for p in requested {
            let _ = jobs.send(Job { progress: p });
        }
        Ok(true)
    }
}

async fn save(sink: &Sink, name: &str, p: &TableProgress) -> Result<(), SnapshotError> {
    let v = serde_json::to_vec(p).map_err(|e| SnapshotError::Kafka(e.to_string()))?;
    sink.save_record(&progress::record_key(name, &p.table), Some(&v))
        .await
        .map_err(SnapshotError::Produce)
}

/// Waits (polling) until the stream saved a checkpoint: chunk positions must not precede the
/// stream's start (see the module docs).
async fn wait_for_stream_checkpoint(shared: &Shared) {
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        if let Ok(Some(_)) = shared.sink.load_checkpoint(&shared.name).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn coordinator(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    tables: Vec<String>,
    source: SourceConfig,
) {
    let signals = {
        let mut backoff = Duration::from_millis(500);
        loop {
            match SignalConsumer::new(&shared.kafka, &shared.name, &signal_topic(&shared.prefix))
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot consume the snapshot control topic yet; retrying");
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    let filter = TableFilter::new(&source);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            job = rx.recv() => {
                let Some(job) = job else { return };
                let s = shared.clone();
                tokio::spawn(async move {
                    wait_for_stream_checkpoint(&s).await;
                    run_table(s, job.progress).await;
                });
            }
            sig = signals.next() => {
                let (sig, msg) = match sig {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the snapshot control topic failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                tracing::info!(tables = ?sig.tables, requested_ms = sig.ts_ms, "snapshot requested");
                let mut ok = true;
                for t in &sig.tables {
                    let valid = t.split_once('.').is_some_and(|(d, n)| filter.matches(d, n)) && tables.contains(t);
                    if !valid {
                        let e = SnapshotError::Request(format!("{t} is not a captured table of this reader"));
                        tracing::error!(error = %e, "snapshot request refused");
                        continue;
                    }
                    let p = TableProgress::requested(t, "signal", now_ms());
                    if let Err(e) = save(&shared.sink, &shared.name, &p).await {
                        tracing::warn!(error = %e, "cannot record the snapshot request; it will be read again");
                        ok = false;
                        break;
                    }
                    let s = shared.clone();
                    tokio::spawn(async move {
                        wait_for_stream_checkpoint(&s).await;
                        run_table(s, p).await;
                    });
                }
                if ok {
                    if let Err(e) = signals.commit(&msg) {
                        tracing::warn!(error = %e, "cannot commit the control topic offset; the request may repeat (harmless)");
                    }
                }
            }
        }
    }
}

/// Runs (or resumes) one table's snapshot to its end; failures are recorded, not propagated.
async fn run_table(shared: Arc<Shared>, mut p: TableProgress) {
    // One run per table at a time in this process: a second request waits for the first.
    let claim = |t: &str| {
        shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t.to_string())
    };
    loop {
        if claim(&p.table) {
            break;
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    let table = p.table.clone();
    m::RUNNING.with_label_values(&[&table]).set(1);
    let result = run_table_inner(&shared, &mut p).await;
    shared
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&table);
    match result {
        Ok(true) => {
            m::RUNNING.with_label_values(&[&table]).set(0);
            m::CHUNKS_REMAINING.with_label_values(&[&table]).set(0);
        }
        Ok(false) => {} // shutdown: progress is durable, the next start resumes
        Err(e) => {
            SnapshotFailed {
                table: &table,
                error: &e,
            }
            .emit();
            p.state = State::Failed;
            p.error = Some(e.to_string());
            let _ = save(&shared.sink, &shared.name, &p).await;
        }
    }
}

/// The mutable progress of a table run, shared by its segment tasks.
struct Run {
    p: tokio::sync::Mutex<TableProgress>,
    info: Arc<TableInfo>,
    topic: String,
    db_table_json: String,
    started: Instant,
    rows_at_start: u64,
    bar: Option<indicatif::ProgressBar>,
}

async fn run_table_inner(
    shared: &Arc<Shared>,
    p: &mut TableProgress,
) -> Result<bool, SnapshotError> {
    let id = TableId::parse(&p.table)
        .ok_or_else(|| SnapshotError::Request(format!("{} is not db.table", p.table)))?;
    let unique_key = shared.cfg.unique_keys.get(&p.table).map(|v| v.as_slice());
    let info = {
        let mut conn = retry(shared, || async {
            shared.pool.get_conn().await.map_err(my)
        })
        .await?;
        Arc::new(schema::load(&mut conn, shared.flavor, &id, unique_key).await?)
    };
    let topic = topic_name(&shared.prefix, &id);
    shared
        .sink
        .ensure_topics(std::slice::from_ref(&topic))
        .await?;
    if p.segments.is_empty() {
        plan(shared, &info, p).await?;
        save(&shared.sink, &shared.name, p).await?;
    }
    let done_segments = p.segments.iter().filter(|s| s.done).count();
    tracing::info!(
        table = %p.table, run = %p.run, trigger = %p.trigger, segments = p.segments.len(), done_segments,
        rows_done = p.rows, chunks_done = p.chunks, estimated_rows = p.estimated_rows,
        "snapshot {}", if p.chunks > 0 { "resuming after the last completed chunk" } else { "starting" }
    );
    let bar = shared.bars.as_ref().map(|mp| {
        let b = mp.add(indicatif::ProgressBar::new(p.estimated_rows.max(p.rows)));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>24} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(p.table.clone());
        b.set_position(p.rows);
        b
    });
    let run = Arc::new(Run {
        db_table_json: format!(
            "\"db\":{},\"table\":{}",
            serde_json::to_string(&id.db).unwrap_or_default(),
            serde_json::to_string(&id.table).unwrap_or_default()
        ),
        p: tokio::sync::Mutex::new(p.clone()),
        info,
        topic,
        started: Instant::now(),
        rows_at_start: p.rows,
        bar,
    });
    update_remaining(shared, &*run.p.lock().await);
    let mut set = tokio::task::JoinSet::new();
    let n = p.segments.len();
    for (i, s) in p.segments.iter().enumerate() {
        if !s.done {
            let (shared, run) = (shared.clone(), run.clone());
            set.spawn(async move { run_segment(&shared, &run, i, i + 1 == n).await });
        }
    }
    let logger = {
        let (shared, run) = (shared.clone(), run.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(shared.cfg.log_interval_secs));
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = run.p.lock().await;
                let rate = (p.rows - run.rows_at_start) as f64
                    / run.started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(table = %p.table, rows_done = p.rows, estimated_rows = p.estimated_rows, chunks_done = p.chunks,
                    rows_per_sec = rate as u64, "snapshot progress");
            }
        })
    };
    let mut result = Ok(true);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => result = Ok(false),
            Ok(Err(e)) => {
                result = Err(e);
                set.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                result = Err(SnapshotError::Request(format!(
                    "segment task panicked: {e}"
                )));
                set.abort_all();
            }
        }
    }
    logger.abort();
    if let Some(b) = &run.bar {
        b.finish();
    }
    *p = run.p.lock().await.clone();
    if let Ok(true) = result {
        if p.segments.iter().all(|s| s.done) {
            p.state = State::Done;
            save(&shared.sink, &shared.name, p).await?;
            let secs = run.started.elapsed().as_secs_f64();
            tracing::info!(table = %p.table, rows = p.rows, chunks = p.chunks, seconds = secs,
                rows_per_sec = ((p.rows - run.rows_at_start) as f64 / secs.max(0.001)) as u64, "snapshot done");
        } else {
            result = Ok(false);
        }
    }
    result
}

fn update_remaining(shared: &Shared, p: &TableProgress) {
    let est = p.estimated_rows.div_ceil(shared.cfg.chunk_size as u64);
    let open = p.segments.iter().filter(|s| !s.done).count() as u64;
    m::CHUNKS_REMAINING
        .with_label_values(&[&p.table])
        .set(est.saturating_sub(p.chunks).max(open) as i64);
}

/// Splits the table into segments of its leading key column: equal integer ranges between
/// MIN and MAX when that column is an integer and the table spans several chunks, else one.
async fn plan(
    shared: &Shared,
    info: &TableInfo,
    p: &mut TableProgress,
) -> Result<(), SnapshotError> {
    let mut conn = retry(shared, || async {
        shared.pool.get_conn().await.map_err(my)
    })
    .await?;
    let est: Option<u64> = conn
        .exec_first(
            "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&info.id.db, &info.id.table),
        )
        .await
        .map_err(my)?
        .flatten();
    p.estimated_rows = est.unwrap_or(0);
    let lead = &info.columns[info.key[0]];
    let chunk = shared.cfg.chunk_size as i128;
    let max_segments = shared.cfg.workers as i128 * 4;
    let mut bounds: Vec<KeyVal> = Vec::new();
    if matches!(lead.kind, crate::table::Kind::Int { .. }) {
        // MIN/MAX of the leading key column come from the index ends (no scan). The span also
        // stands in for the row estimate, which InnoDB may not have computed yet.
        let col = quote(&lead.name);
        let sql = format!(
            "SELECT MIN({col}), MAX({col}) FROM {}.{}",
            quote(&info.id.db),
            quote(&info.id.table)
        );
        // The binary protocol (exec) returns typed integers; the text protocol would not.
        let row: Option<(Value, Value)> = conn.exec_first(sql, ()).await.map_err(my)?;
        tracing::debug!(table = %info.label, ?row, "key range of the leading key column");
        if let Some((lo, hi)) = row {
            if let (Some(lo), Some(hi)) = (KeyVal::from_value(&lo), KeyVal::from_value(&hi)) {
                let unsigned = matches!(hi, KeyVal::U(_));
                if let (Some(a), Some(b)) = (lo.as_i128(), hi.as_i128()) {
                    let span = b - a + 1;
                    // InnoDB's TABLE_ROWS can be far off right after a bulk load.
                    if (p.estimated_rows as i128) < span / 2 {
                        p.estimated_rows = span.max(0) as u64;
                    }
                    let wanted = (span / chunk).clamp(1, max_segments);
                    let step = (b - a) / wanted;
                    if wanted > 1 && step > 0 {
                        for i in 1..wanted {
                            let v = a + step * i;
                            bounds.push(if unsigned {
                                KeyVal::U(v as u64)
                            } else {
                                KeyVal::I(v as i64)
                            });
                        }
                    }
                }
            }
        }
    }
    let mut segs = Vec::with_capacity(bounds.len() + 1);
    let mut lo = None;
    for b in bounds {
        segs.push(Segment {
            lo: lo.clone(),
            hi: Some(b.clone()),
            after: None,
            done: false,
        });
        lo = Some(b);
    }
    segs.push(Segment {
        lo,
        hi: None,
        after: None,
        done: false,
    });
    p.segments = segs;
    Ok(())
}

/// Retries a transient failure with backoff until it succeeds, a definite error, or shutdown.
async fn retry<T, F, Fut>(shared: &Shared, mut f: F) -> Result<T, SnapshotError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SnapshotError>>,
{
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_definite() || attempts >= 20 => return Err(e),
            Err(e) => {
                attempts += 1;
                tracing::warn!(error = %e, attempt = attempts, "snapshot: transient error; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A chunk whose events were handed to Kafka, waiting for acknowledgement.
struct Produced {
    tx: Arc<TxState>,
    rows: u64,
    after: Option<Vec<KeyVal>>,
    last: bool,
}

/// Walks one segment chunk by chunk. Chunk `i + 1` is read while chunk `i` is being
/// acknowledged; progress is saved strictly in chunk order, each after its acknowledgement.
async fn run_segment(
    shared: &Shared,
    run: &Run,
    seg: usize,
    last_segment: bool,
) -> Result<bool, SnapshotError> {
    let (mut after, lo, hi) = {
        let p = run.p.lock().await;
        let s = &p.segments[seg];
        (s.after.clone(), s.lo.clone(), s.hi.clone())
    };
    let mut pending: Option<Produced> = None;
    loop {
        if shared.shutdown.is_cancelled() {
            return Ok(false);
        }
        let chunk = {
            let _permit = shared
                .permits
                .acquire()
                .await
                .map_err(|e| SnapshotError::Request(e.to_string()))?;
            retry(shared, || {
                read_chunk(
                    shared,
                    run,
                    lo.as_ref(),
                    hi.as_ref(),
                    after.as_deref(),
                    last_segment,
                )
            })
            .await?
        };
        if let Some(prev) = pending.take() {
            finish_chunk(shared, run, seg, prev).await?;
        }
        let done = chunk.last;
        if chunk.after.is_some() {
            after = chunk.after.clone();
        }
        pending = Some(chunk);
        if done {
            break;
        }
    }
    if let Some(prev) = pending.take() {
        finish_chunk(shared, run, seg, prev).await?;
    }
    Ok(true)
}

/// Waits for the chunk's acknowledgements, then records it durably.
async fn finish_chunk(
    shared: &Shared,
    run: &Run,
    seg: usize,
    c: Produced,
) -> Result<(), SnapshotError> {
    while !c.tx.is_done() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if c.tx.has_failed() {
        shared.sink.check_errors()?;
        return Err(SnapshotError::Kafka(
            "a snapshot event failed delivery".into(),
        ));
    }
    let mut p = run.p.lock().await;
    let s = &mut p.segments[seg];
    if c.after.is_some() {
        s.after = c.after;
    }
    s.done = c.last;
    p.rows += c.rows;
    p.chunks += 1;
    save(&shared.sink, &shared.name, &p).await?;
    m::ROWS.with_label_values(&[&p.table]).inc_by(c.rows);
    update_remaining(shared, &p);
    if let Some(b) = &run.bar {
        if p.rows > b.length().unwrap_or(0) {
            b.set_length(p.rows);
        }
        b.set_position(p.rows);
    }
    Ok(())
}

/// The keyset query of a chunk: the segment's range of the leading key column and the rows
/// after `after` in key order (`(a > ?) OR (a = ? AND b > ?) ...`, which every server turns
/// into an index range), `LIMIT n`.
fn chunk_query(
    info: &TableInfo,
    lo: Option<&KeyVal>,
    hi: Option<&KeyVal>,
    after: Option<&[KeyVal]>,
    limit: u32,
) -> (String, Vec<Value>) {
    let cols: Vec<String> = info.columns.iter().map(|c| quote(&c.name)).collect();
    let keys: Vec<String> = info
        .key
        .iter()
        .map(|&i| quote(&info.columns[i].name))
        .collect();
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if let Some(lo) = lo {
        conds.push(format!("{} > ?", keys[0]));
        params.push(lo.to_value());
    }
    if let Some(hi) = hi {
        conds.push(format!("{} <= ?", keys[0]));
        params.push(hi.to_value());
    }
    if let Some(after) = after {
        let mut ors = Vec::new();
        for i in 0..keys.len() {
            let mut ands = Vec::new();
            for j in 0..i {
                ands.push(format!("{} = ?", keys[j]));
                params.push(after[j].to_value());
            }
            ands.push(format!("{} > ?", keys[i]));
            params.push(after[i].to_value());
            ors.push(format!("({})", ands.join(" AND ")));
        }
        conds.push(format!("({})", ors.join(" OR ")));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "SELECT {} FROM {}.{}{where_} ORDER BY {} LIMIT {limit}",
        cols.join(", "),
        quote(&info.id.db),
        quote(&info.id.table),
        keys.join(", ")
    );
    (sql, params)
}

/// Reads one chunk in its own consistent-snapshot transaction and hands its events to Kafka.
async fn read_chunk(
    shared: &Shared,
    run: &Run,
    lo: Option<&KeyVal>,
    hi: Option<&KeyVal>,
    after: Option<&[KeyVal]>,
    last_segment: bool,
) -> Result<Produced, SnapshotError> {
    let info = &run.info;
    let limit = shared.cfg.chunk_size;
    let (sql, params) = chunk_query(info, lo, hi, after, limit);
    let mut conn = shared.pool.get_conn().await.map_err(my)?;
    let position = shared.clock.begin(&mut conn).await?;
    let version = Version::at(&position, 0)
        .map_err(|e| SnapshotError::Source(e.to_string()))?
        .to_string();
    let ts_ms = now_ms();
    let ctx = ChunkCtx {
        name_json: &shared.name_json,
        connector: shared.flavor.connector(),
        db_table_json: &run.db_table_json,
        server_id: shared.server_id,
        ts_ms,
        file: &position.file,
        pos: position.pos,
        version: &version,
    };
    let counter = crate::metrics::EVENTS.with_label_values(&[&info.label, "r"]);
    let tx = new_tx();
    let mut rows: u64 = 0;
    let mut img = Image::default();
    let mut value = Vec::with_capacity(4096);
    // One row is held back so that the table's very last row can be marked `"last"`.
    let mut held: Option<Vec<Value>> = None;
    let mut last_key: Option<Vec<Value>> = None;
    {
        let mut result = conn
            .exec_iter(sql, Params::Positional(params))
            .await
            .map_err(my)?;
        while let Some(row) = result.next().await.map_err(my)? {
            let values = row.unwrap();
            if let Some(prev) = held.replace(values) {
                produce(
                    shared, run, &ctx, &position, &prev, false, &tx, &counter, &mut img, &mut value,
                )
                .await?;
            }
            rows += 1;
        }
    }
    conn.query_drop("COMMIT").await.map_err(my)?;
    let end_of_segment = rows < limit as u64;
    if let Some(prev) = held.take() {
        last_key = Some(info.key.iter().map(|&i| prev[i].clone()).collect());
        produce(
            shared,
            run,
            &ctx,
            &position,
            &prev,
            end_of_segment && last_segment,
            &tx,
            &counter,
            &mut img,
            &mut value,
        )
        .await?;
    }
    let after = match last_key {
        Some(k) => Some(
            k.iter()
                .map(KeyVal::from_value)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| SnapshotError::Table {
                    table: info.label.clone(),
                    problem: "has a NULL key value".into(),
                })?,
        ),
        None => None,
    };
    Ok(Produced {
        tx,
        rows,
        after,
        last: end_of_segment,
    })
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    shared: &Shared,
    run: &Run,
    ctx: &ChunkCtx<'_>,
    position: &BinlogPosition,
    values: &[Value],
    last: bool,
    tx: &Arc<TxState>,
    counter: &prometheus::IntCounter,
    img: &mut Image,
    value: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    let info = &run.info;
    encode_row(info, values, shared.zero, img).map_err(|e| SnapshotError::Table {
        table: info.label.clone(),
        problem: format!("cannot be encoded: {e}"),
    })?;
    let key = img.key(info);
    let key_text = std::str::from_utf8(&key).unwrap_or_default();
    let id = EventId::snapshot(&shared.name, position, &info.label, key_text);
    envelope(value, ctx, info, img, &id.0, last, now_ms());
    shared.sink.wait_for_room().await?;
    shared
        .sink
        .send(
            &run.topic,
            &key,
            Some(value),
            Some((id.0.as_bytes(), ctx.version.as_bytes())),
            tx,
            Some(counter.clone()),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charset::Charset;
    use crate::table::{Column, Kind};
    use cdc_event::TableSchema;

    fn info(keys: &[usize]) -> TableInfo {
        let columns = ["a", "b", "c"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                name_json: format!("\"{n}\":"),
                kind: Kind::VarString {
                    prefix: 0,
                    charset: Charset::Utf8,
                },
            })
            .collect();
        TableInfo {
            id: TableId::new("d", "t"),
            label: "d.t".into(),
            included: true,
            columns,
            key: keys.to_vec(),
            schema_json: String::new(),
            schema: Arc::new(TableSchema {
                columns: vec![],
                primary_key: vec![],
            }),
        }
    }

    #[test]
    fn keyset_queries_never_use_offset() {
        let (sql, params) = chunk_query(&info(&[0]), None, None, None, 10);
        assert_eq!(
            sql,
            "SELECT `a`, `b`, `c` FROM `d`.`t` ORDER BY `a` LIMIT 10"
        );
        assert!(params.is_empty());
        let (sql, params) = chunk_query(
            &info(&[0, 1]),
            Some(&KeyVal::I(5)),
            Some(&KeyVal::I(9)),
            Some(&[KeyVal::I(6), KeyVal::I(2)]),
            3,
        );
        assert_eq!(
            sql,
            "SELECT `a`, `b`, `c` FROM `d`.`t` WHERE `a` > ? AND `a` <= ? AND ((`a` > ?) OR (`a` = ? AND `b` > ?)) ORDER BY `a`, `b` LIMIT 3"
        );
        assert_eq!(
            params,
            vec![
                Value::Int(5),
                Value::Int(9),
                Value::Int(6),
                Value::Int(6),
                Value::Int(2)
            ]
        );
        assert!(!sql.contains("OFFSET"));
    }
}
