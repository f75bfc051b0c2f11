//! One replication session: connect as a replica, read the binlog from the saved checkpoint,
//! turn row changes of included tables into change events, produce them, and checkpoint.
//!
//! **Why nothing is lost.** A session starts from the last checkpoint durably stored in Kafka
//! (or, on the very first start, from the source's current position). It ends with an error (the
//! caller reconnects and starts a new session from the checkpoint again) or with a graceful
//! shutdown that drains the producer before saving. Checkpoints name transaction boundaries whose
//! every event Kafka acknowledged (see `kafka.rs`), so the events between the checkpoint and any
//! crash are read again; they get the same ids and versions because both are derived from the
//! binlog coordinates (file, start offset of the rows event, row index), which do not depend on
//! where reading started.
//!
//! **Why nothing is skipped.** Every event type is dispatched explicitly; types the reader does
//! not understand (MariaDB's compressed events 165–171, XA prepare, partial JSON updates, unknown
//! future types, an incident) stop the session with a definite error naming the position.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cdc_config::SourceConfig;
use cdc_event::{
    topic_name, BinlogPosition, Checkpoint, Flavor, TableId, Version, CONNECTOR_VERSION,
};
use cdc_telemetry::{Health, Shutdown};
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::binlog::events::{
    Event, EventData, GtidEvent, QueryEvent, RotateEvent, RowsEventData, TableMapEvent,
};
use mysql_common::io::ParseBuf;
use prometheus::IntCounter;

use crate::config::{ReaderConfig, StartFrom};
use crate::decode::{decode_image, digits, digits128, Image};
use crate::gtid::{format_uuid, GtidPosition, MariadbGtidList, MysqlGtidSet};
use crate::kafka::{new_tx, AckQueue, Sink, TxState};
use crate::metrics;
use crate::preflight::{check_source, TableFilter};
use crate::table::{self, InfoSchemaTable, TableInfo};
use crate::ReaderError;

// Binlog event type codes (MySQL `Log_event_type`, MariaDB additions from 160).
const QUERY: u8 = 2;
const STOP: u8 = 3;
const ROTATE: u8 = 4;
const INTVAR: u8 = 5;
const RAND: u8 = 13;
const USER_VAR: u8 = 14;
const FORMAT_DESCRIPTION: u8 = 15;
const XID: u8 = 16;
const BEGIN_LOAD_QUERY: u8 = 17;
const EXECUTE_LOAD_QUERY: u8 = 18;
const TABLE_MAP: u8 = 19;
const WRITE_ROWS_V1: u8 = 23;
const UPDATE_ROWS_V1: u8 = 24;
const DELETE_ROWS_V1: u8 = 25;
const INCIDENT: u8 = 26;
const HEARTBEAT: u8 = 27;
const IGNORABLE: u8 = 28;
const ROWS_QUERY: u8 = 29;
const WRITE_ROWS: u8 = 30;
const UPDATE_ROWS: u8 = 31;
const DELETE_ROWS: u8 = 32;
const GTID: u8 = 33;
const ANONYMOUS_GTID: u8 = 34;
const PREVIOUS_GTIDS: u8 = 35;
const TRANSACTION_CONTEXT: u8 = 36;
const VIEW_CHANGE: u8 = 37;
const XA_PREPARE: u8 = 38;
const PARTIAL_UPDATE_ROWS: u8 = 39;
const TRANSACTION_PAYLOAD: u8 = 40;
const HEARTBEAT_V2: u8 = 41;
const GTID_TAGGED: u8 = 42;
const MARIA_ANNOTATE_ROWS: u8 = 160;
const MARIA_BINLOG_CHECKPOINT: u8 = 161;
const MARIA_GTID: u8 = 162;
const MARIA_GTID_LIST: u8 = 163;
const MARIA_START_ENCRYPTION: u8 = 164;

/// Everything a session needs that outlives it.
pub(crate) struct Reader<'a> {
    pub source: &'a SourceConfig,
    pub cfg: &'a ReaderConfig,
    pub sink: &'a Sink,
    pub health: &'a Health,
    pub shutdown: &'a Shutdown,
    pub prefix: String,
}

/// A table map turned into what the hot loop needs.
struct Mapped {
    /// The TABLE_MAP event body it was built from (a repeat with equal bytes reuses this).
    raw: Vec<u8>,
    info: Arc<TableInfo>,
    topic: String,
    /// `"db":"…","table":"…"`, escaped once.
    db_table_json: String,
    /// `cdcsync_reader_events_total{table, op}` for c, u, d.
    counters: [IntCounter; 3],
}

/// The open source transaction.
struct OpenTx {
    state: Arc<TxState>,
    gtid: Option<GtidOfTx>,
    /// `BEGIN` seen: the transaction ends at XID/COMMIT, not after the next statement.
    begun: bool,
    has_rows: bool,
}

#[derive(Clone)]
enum GtidOfTx {
    Mariadb { domain: u32, server: u32, seq: u64 },
    Mysql { uuid: String, tag: String, gno: u64 },
}

impl GtidOfTx {
    fn text(&self) -> String {
        match self {
            GtidOfTx::Mariadb {
                domain,
                server,
                seq,
            } => format!("{domain}-{server}-{seq}"),
            GtidOfTx::Mysql { uuid, tag, gno } if tag.is_empty() => format!("{uuid}:{gno}"),
            GtidOfTx::Mysql { uuid, tag, gno } => format!("{uuid}:{tag}:{gno}"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn connect_opts(source: &SourceConfig) -> Result<mysql_async::Opts, ReaderError> {
    Ok(crate::source::client_opts(source)?
        .conn_ttl(None::<Duration>)
        .into())
}

async fn connect(opts: &mysql_async::Opts) -> Result<Conn, ReaderError> {
    Conn::new(opts.clone())
        .await
        .map_err(ReaderError::from_mysql)
}

/// The source's current binlog file and position.
async fn master_status(conn: &mut Conn, flavor: Flavor) -> Result<(String, u64), ReaderError> {
    let row: Option<mysql_async::Row> = match flavor {
        Flavor::Mariadb => conn
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(ReaderError::from_mysql)?,
        Flavor::Mysql => match conn.query_first("SHOW BINARY LOG STATUS").await {
            Ok(r) => r,
            // Before 8.2 the statement is SHOW MASTER STATUS.
            Err(_) => conn
                .query_first("SHOW MASTER STATUS")
                .await
                .map_err(ReaderError::from_mysql)?,
        },
    };
    let row = row.ok_or_else(|| {
        ReaderError::SourceSetting("the source has no binary log (log_bin is OFF)".into())
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(4);
    Ok((file, pos))
}

/// Where a session starts reading.
struct Start {
    gtid: GtidPosition,
    position: BinlogPosition,
}

async fn start_position(
    conn: &mut Conn,
    flavor: Flavor,
    saved: Option<&Checkpoint>,
    cfg: &ReaderConfig,
) -> Result<Start, ReaderError> {
    let parse = |flavor: Flavor, text: &str| -> Result<GtidPosition, ReaderError> {
        match flavor {
            Flavor::Mariadb => MariadbGtidList::parse(text).map(GtidPosition::Mariadb),
            Flavor::Mysql => MysqlGtidSet::parse(text).map(GtidPosition::Mysql),
        }
        .map_err(|e| ReaderError::GtidUnknown {
            detail: e.to_string(),
        })
    };
    if let Some(cp) = saved {
        if cp.flavor != flavor {
            return Err(ReaderError::GtidUnknown {
                detail: format!(
                    "the checkpoint was taken on a {} server but the source is {}",
                    cp.flavor.connector(),
                    flavor.connector()
                ),
            });
        }
        return Ok(Start {
            gtid: parse(flavor, &cp.gtid_set)?,
            position: cp.position.clone(),
        });
    }
    match cfg.start_from {
        StartFrom::Current => {
            let gtid_text: Option<String> = match flavor {
                Flavor::Mariadb => conn
                    .query_first("SELECT @@GLOBAL.gtid_binlog_pos")
                    .await
                    .map_err(ReaderError::from_mysql)?,
                Flavor::Mysql => {
                    let mode: Option<String> = conn
                        .query_first("SELECT @@GLOBAL.gtid_mode")
                        .await
                        .map_err(ReaderError::from_mysql)?;
                    if mode.as_deref() == Some("ON") {
                        conn.query_first("SELECT @@GLOBAL.gtid_executed")
                            .await
                            .map_err(ReaderError::from_mysql)?
                    } else {
                        None
                    }
                }
            };
            let (file, pos) = master_status(conn, flavor).await?;
            Ok(Start {
                gtid: parse(
                    flavor,
                    gtid_text
                        .as_deref()
                        .unwrap_or("")
                        .replace('\n', "")
                        .as_str(),
                )?,
                position: BinlogPosition { file, pos },
            })
        }
        StartFrom::Earliest => {
            let first: Option<String> = conn
                .query_first("SHOW BINARY LOGS")
                .await
                .map_err(ReaderError::from_mysql)?;
            let file = first.ok_or_else(|| {
                ReaderError::SourceSetting("the source has no binary logs".into())
            })?;
            Ok(Start {
                gtid: parse(flavor, "")?,
                position: BinlogPosition { file, pos: 4 },
            })
        }
    }
}

/// Reads `information_schema` facts about one table.
async fn info_schema(
    conn: &mut Conn,
    flavor: Flavor,
    t: &TableId,
) -> Result<InfoSchemaTable, ReaderError> {
    let columns: Vec<(String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&t.db, &t.table),
        )
        .await
        .map_err(ReaderError::from_mysql)?;
    let primary_key: Vec<String> = table::primary_key_columns(conn, t)
        .await
        .map_err(ReaderError::from_mysql)?;
    let json_columns = table::mariadb_json_columns(conn, flavor, t)
        .await
        .map_err(ReaderError::from_mysql)?;
    Ok(InfoSchemaTable {
        columns,
        primary_key,
        json_columns,
    })
}

/// Polls the source's own position for `cdcsync_source_binlog_*` every 10 s.
fn spawn_source_poller(opts: mysql_async::Opts, flavor: Flavor) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn: Option<Conn> = None;
        loop {
            if conn.is_none() {
                conn = Conn::new(opts.clone()).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                match master_status(c, flavor).await {
                    Ok((file, pos)) => {
                        let seq = BinlogPosition { file, pos }.file_seq().unwrap_or(0);
                        metrics::SOURCE_FILE_NUMBER.set(seq as i64);
                        metrics::SOURCE_OFFSET.set(pos as i64);
                    }
                    Err(_) => conn = None,
                }
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the 4 checksum bytes that trail the file name of the artificial ROTATE event that
/// starts every dump: it arrives before the FORMAT_DESCRIPTION event that announces checksums,
/// so the parser cannot know to strip them. A CRC32 match proves they are a checksum.
fn rotate_file_name(ev: &Event, name: &[u8]) -> String {
    if name.len() > 4 {
        let h = ev.header();
        let mut bytes = Vec::with_capacity(19 + ev.data().len());
        bytes.extend_from_slice(&h.timestamp().to_le_bytes());
        bytes.push(h.event_type_raw());
        bytes.extend_from_slice(&h.server_id().to_le_bytes());
        bytes.extend_from_slice(&h.event_size().to_le_bytes());
        bytes.extend_from_slice(&h.log_pos().to_le_bytes());
        bytes.extend_from_slice(&h.flags_raw().to_le_bytes());
        let data = ev.data();
        if data.len() >= 4 {
            bytes.extend_from_slice(&data[..data.len() - 4]);
            let want = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap_or([0; 4]));
            if crc32fast::hash(&bytes) == want {
                return String::from_utf8_lossy(&name[..name.len() - 4]).into_owned();
            }
        }
    }
    String::from_utf8_lossy(name).into_owned()
}

/// Runs one session until graceful shutdown (`Ok`) or an error.
pub(crate) async fn session(r: &Reader<'_>) -> Result<(), ReaderError> {
    let saved = r.sink.load_checkpoint(&r.source.name).await?;
    let opts = connect_opts(r.source)?;
    // Connect once ourselves first so that bad credentials and an unreachable server are told
    // apart (definite vs transient) before the preflight runs.
    let mut meta = connect(&opts).await?;
    let checks = check_source(r.source).await;
    let flavor = checks
        .flavor
        .ok_or_else(|| ReaderError::Source("preflight could not connect".into()))?;
    if checks.failed() {
        let failed: Vec<String> = checks
            .reports
            .iter()
            .filter(|c| c.is_failure())
            .map(|c| c.to_string())
            .collect();
        let server_id_clash = checks
            .reports
            .iter()
            .any(|c| c.is_failure() && c.name == "server_id");
        let text = failed.join("; ");
        return Err(if server_id_clash {
            ReaderError::ServerId { detail: text }
        } else {
            ReaderError::SourceSetting(text)
        });
    }
    let source_server_id: u32 = meta
        .query_first::<u32, _>("SELECT @@GLOBAL.server_id")
        .await
        .map_err(ReaderError::from_mysql)?
        .unwrap_or(0);
    let start = start_position(&mut meta, flavor, saved.as_ref(), r.cfg).await?;
    if let GtidPosition::Mariadb(list) = &start.gtid {
        // MariaDB accepts a connect state with a domain its binlog never had and streams anyway
        // (seen on 10.11), so the reader checks the position against the server's binlog state
        // itself: every domain must exist there, at or beyond the checkpoint's sequence number.
        let state: Option<String> = meta
            .query_first("SELECT @@GLOBAL.gtid_binlog_state")
            .await
            .map_err(ReaderError::from_mysql)?;
        let server = MariadbGtidList::parse_state(state.as_deref().unwrap_or(""))
            .map_err(|e| ReaderError::Source(e.to_string()))?;
        if let Some(problem) = server.missing_from(list) {
            return Err(ReaderError::GtidUnknown {
                detail: format!("checkpoint {list}: {problem}"),
            });
        }
    }
    if saved.is_none() {
        // Persist the starting point at once: a crash before the first transaction must not
        // move the start to a later "current" position and lose what happened in between.
        let cp = Checkpoint {
            flavor,
            server_id: source_server_id,
            gtid_set: start.gtid.to_string(),
            position: start.position.clone(),
            ts_ms: 0,
        };
        r.sink.save_checkpoint(&r.source.name, &cp).await?;
    }
    tracing::info!(
        flavor = flavor.connector(),
        gtid = %start.gtid,
        position = %start.position,
        resumed = saved.is_some(),
        "starting binlog stream"
    );

    // The replication connection.
    let mut bconn = connect(&opts).await?;
    let hb_ns = r.cfg.heartbeat().as_nanos() as u64;
    bconn
        .query_drop(format!("SET @master_heartbeat_period = {hb_ns}"))
        .await
        .map_err(ReaderError::from_mysql)?;
    let use_gtid = !start.gtid.is_empty();
    let sids;
    let mut request = BinlogStreamRequest::new(r.source.server_id);
    match (&start.gtid, flavor) {
        (GtidPosition::Mariadb(list), _) => {
            bconn
                .query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(ReaderError::from_mysql)?;
            if use_gtid {
                bconn
                    .exec_drop("SET @slave_connect_state = ?", (list.to_string(),))
                    .await
                    .map_err(ReaderError::from_mysql)?;
                bconn
                    .query_drop("SET @slave_gtid_strict_mode = 0")
                    .await
                    .map_err(ReaderError::from_mysql)?;
                bconn
                    .query_drop("SET @slave_gtid_ignore_duplicates = 0")
                    .await
                    .map_err(ReaderError::from_mysql)?;
            } else {
                request = request
                    .with_filename(start.position.file.as_bytes())
                    .with_pos(start.position.pos);
            }
        }
        (GtidPosition::Mysql(set), _) => {
            if use_gtid {
                sids = set.to_sids();
                request = request.with_gtid().with_gtid_set(sids.iter().cloned());
            } else {
                request = request
                    .with_filename(start.position.file.as_bytes())
                    .with_pos(start.position.pos);
            }
        }
    }
    let mut stream = bconn
        .get_binlog_stream(request)
        .await
        .map_err(ReaderError::from_mysql)?;
    let _poller = AbortOnDrop(spawn_source_poller(opts.clone(), flavor));

    let mut st = State {
        r,
        flavor,
        filter: TableFilter::new(r.source),
        meta,
        gtid: start.gtid,
        file: start.position.file.clone(),
        file_seq: start.position.file_seq().unwrap_or(0),
        source_server_id,
        tables: HashMap::new(),
        info_cache: HashMap::new(),
        ensured_topics: HashSet::new(),
        open: None,
        ack: AckQueue::default(),
        last_saved: saved,
        payload: None,
        before: Image::default(),
        after: Image::default(),
        value: Vec::with_capacity(4096),
        id_buf: Vec::with_capacity(64),
        ver_buf: Vec::with_capacity(40),
        name_json: serde_json::to_string(&r.source.name).unwrap_or_default(),
        last_ts: 0,
    };
    r.health.set_ready(true);

    let idle_limit = r.cfg.heartbeat() * 3 + Duration::from_secs(2);
    let mut tick = tokio::time::interval(Duration::from_millis(r.cfg.checkpoint_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            biased;
            _ = r.shutdown.cancelled() => {
                drop(stream);
                return st.finish().await;
            }
            _ = tick.tick() => {
                r.health.beat();
                st.checkpoint_if_due().await?;
                continue;
            }
            ev = tokio::time::timeout(idle_limit, stream.next()) => ev,
        };
        let ev = match next {
            Err(_) => {
                return Err(ReaderError::Source(format!(
                    "no event or heartbeat from the source for {idle_limit:?}"
                )))
            }
            Ok(None) => {
                return Err(ReaderError::Source(
                    "the source closed the binlog stream".into(),
                ))
            }
            Ok(Some(Err(e))) => return Err(ReaderError::from_mysql(e)),
            Ok(Some(Ok(ev))) => ev,
        };
        st.handle(&ev).await?;
    }
}

/// Position of the enclosing TRANSACTION_PAYLOAD event while its inner events are read.
struct Payload {
    pos: u64,
    end: u64,
    next_row: u32,
}

struct State<'r, 'a> {
    r: &'r Reader<'a>,
    flavor: Flavor,
    filter: TableFilter,
    meta: Conn,
    gtid: GtidPosition,
    file: String,
    file_seq: u32,
    source_server_id: u32,
    tables: HashMap<u64, Mapped>,
    info_cache: HashMap<TableId, InfoSchemaTable>,
    ensured_topics: HashSet<String>,
    open: Option<OpenTx>,
    ack: AckQueue,
    last_saved: Option<Checkpoint>,
    payload: Option<Payload>,
    before: Image,
    after: Image,
    value: Vec<u8>,
    id_buf: Vec<u8>,
    ver_buf: Vec<u8>,
    name_json: String,
    last_ts: u32,
}

impl State<'_, '_> {
    fn unsupported(
        &self,
        pos: u64,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> ReaderError {
        ReaderError::UnsupportedEvent {
            file: self.file.clone(),
            pos,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    async fn handle(&mut self, ev: &Event) -> Result<(), ReaderError> {
        let h = ev.header();
        let ty = h.event_type_raw();
        let end = h.log_pos() as u64;
        let size = h.event_size() as u64;
        // mysql_async yields a TRANSACTION_PAYLOAD event and then the events decompressed from
        // it, all with log_pos 0, the last one the commit that closes the payload. When it cannot
        // parse or decompress a payload it yields nothing after it and reports no error, so an
        // event with a real position (or another payload) while a payload is open means that
        // transaction's changes were dropped: stop rather than skip them.
        if let Some(p) = &self.payload {
            if end != 0 || ty == TRANSACTION_PAYLOAD {
                return Err(self.unsupported(
                    p.pos,
                    "compressed transaction (TRANSACTION_PAYLOAD) yielded no complete transaction: the client library could not decompress it",
                    "SET GLOBAL binlog_transaction_compression=OFF on the source, re-snapshot the captured tables with `cdcsync snapshot --table <db.table>`, and report a bug",
                ));
            }
        }
        let inner = self.payload.is_some() && ty != TRANSACTION_PAYLOAD;
        let start = if inner {
            self.payload.as_ref().map_or(0, |p| p.pos)
        } else {
            end.saturating_sub(size)
        };
        if !inner && end > 0 {
            metrics::PositionRead {
                file_seq: self.file_seq,
                offset: end,
                event_ts: h.timestamp(),
                bytes: size,
            }
            .emit();
        }
        if h.timestamp() > 0 {
            self.last_ts = h.timestamp();
        }
        match ty {
            FORMAT_DESCRIPTION
            | INTVAR
            | RAND
            | USER_VAR
            | BEGIN_LOAD_QUERY
            | EXECUTE_LOAD_QUERY
            | IGNORABLE
            | ROWS_QUERY
            | PREVIOUS_GTIDS
            | TRANSACTION_CONTEXT
            | VIEW_CHANGE
            | MARIA_ANNOTATE_ROWS
            | MARIA_BINLOG_CHECKPOINT
            | STOP => {}
            HEARTBEAT | HEARTBEAT_V2 => {
                metrics::CaughtUp.emit();
                self.r.health.beat();
            }
            ROTATE => {
                let re: RotateEvent<'_> = ev.read_event().map_err(|e| {
                    self.unsupported(start, format!("bad ROTATE: {e}"), "report a bug")
                })?;
                let name = rotate_file_name(ev, re.name_raw());
                self.file_seq = BinlogPosition {
                    file: name.clone(),
                    pos: 0,
                }
                .file_seq()
                .unwrap_or(0);
                self.file = name;
            }
            MARIA_GTID => {
                let d = ev.data();
                if d.len() < 13 {
                    return Err(self.unsupported(
                        start,
                        "short MariaDB GTID event",
                        "report a bug",
                    ));
                }
                let seq = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
                let domain = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
                let flags = d[12];
                self.begin(Some(GtidOfTx::Mariadb {
                    domain,
                    server: h.server_id(),
                    seq,
                }));
                // MariaDB's GTID event stands in for BEGIN: the group ends at XID or COMMIT,
                // unless FL_STANDALONE (1) marks a single statement (DDL) that ends after the
                // next QUERY event.
                if let Some(o) = self.open.as_mut() {
                    o.begun = flags & 1 == 0;
                }
            }
            MARIA_GTID_LIST => {
                // The GTID state at the start of a binlog file; adopt it when starting by
                // file/position without a GTID state, so later checkpoints carry GTIDs.
                if let GtidPosition::Mariadb(list) = &mut self.gtid {
                    if list.is_empty() {
                        let d = ev.data();
                        if d.len() >= 4 {
                            let n = (u32::from_le_bytes(d[0..4].try_into().unwrap_or_default())
                                & 0x0fff_ffff) as usize;
                            for i in 0..n {
                                let o = 4 + i * 16;
                                if d.len() >= o + 16 {
                                    let domain = u32::from_le_bytes(
                                        d[o..o + 4].try_into().unwrap_or_default(),
                                    );
                                    let server = u32::from_le_bytes(
                                        d[o + 4..o + 8].try_into().unwrap_or_default(),
                                    );
                                    let seq = u64::from_le_bytes(
                                        d[o + 8..o + 16].try_into().unwrap_or_default(),
                                    );
                                    list.update(domain, server, seq);
                                }
                            }
                        }
                    }
                }
            }
            GTID | GTID_TAGGED => {
                let g: GtidEvent = ev.read_event().map_err(|e| {
                    self.unsupported(start, format!("bad GTID event: {e}"), "report a bug")
                })?;
                let tag = g.tag().map(|t| t.to_string()).unwrap_or_default();
                self.begin(Some(GtidOfTx::Mysql {
                    uuid: format_uuid(&g.sid()),
                    tag,
                    gno: g.gno(),
                }));
            }
            ANONYMOUS_GTID => self.begin(None),
            QUERY => {
                let q: QueryEvent<'_> = ev.read_event().map_err(|e| {
                    self.unsupported(start, format!("bad QUERY event: {e}"), "report a bug")
                })?;
                let text = q.query();
                let t = text.trim();
                let upper: String = t.chars().take(16).collect::<String>().to_ascii_uppercase();
                if upper == "BEGIN"
                    || upper.starts_with("XA START")
                    || upper.starts_with("XA BEGIN")
                {
                    if upper.starts_with("XA") {
                        return Err(self.unsupported(start, "XA transaction", "XA transactions are not supported by the reader; avoid XA on captured tables"));
                    }
                    if self.open.is_none() {
                        self.begin(None);
                    }
                    if let Some(o) = self.open.as_mut() {
                        o.begun = true;
                    }
                } else if upper == "COMMIT" || upper == "ROLLBACK" {
                    // A ROLLBACK event ends a transaction that touched non-transactional tables:
                    // those changes happened and were produced.
                    self.commit(end, h.timestamp()).await?;
                } else if upper.starts_with("SAVEPOINT") || upper.starts_with("ROLLBACK TO") {
                } else {
                    // DDL (or another statement logged as text): column facts may change.
                    self.info_cache.clear();
                    tracing::debug!(query = %t.chars().take(200).collect::<String>(), "DDL in the binlog; schema caches dropped");
                    if self.open.as_ref().is_none_or(|o| !o.begun) {
                        if self.open.is_none() {
                            self.begin(None);
                        }
                        self.commit(end, h.timestamp()).await?;
                    }
                }
            }
            XID => self.commit(end, h.timestamp()).await?,
            TABLE_MAP => self.table_map(ev, start).await?,
            WRITE_ROWS_V1 | UPDATE_ROWS_V1 | DELETE_ROWS_V1 | WRITE_ROWS | UPDATE_ROWS
            | DELETE_ROWS => {
                self.rows(ev, start).await?;
            }
            PARTIAL_UPDATE_ROWS => {
                return Err(self.unsupported(
                    start,
                    "PARTIAL_UPDATE_ROWS event (binlog_row_value_options=PARTIAL_JSON)",
                    "SET GLOBAL binlog_row_value_options='' so JSON updates carry full images",
                ));
            }
            TRANSACTION_PAYLOAD => {
                // mysql_async decompresses the payload and yields its events next; they share
                // this event's position, and rows are numbered across the payload.
                self.payload = Some(Payload {
                    pos: start,
                    end,
                    next_row: 0,
                });
            }
            INCIDENT => {
                return Err(self.unsupported(
                    start,
                    "INCIDENT event: the source reports that its binlog may be missing changes",
                    "re-snapshot the captured tables with `cdcsync snapshot --table <db.table>`",
                ));
            }
            XA_PREPARE => {
                return Err(self.unsupported(
                    start,
                    "XA PREPARE event",
                    "XA transactions are not supported by the reader; avoid XA on captured tables",
                ));
            }
            MARIA_START_ENCRYPTION => {
                return Err(self.unsupported(
                    start,
                    "START_ENCRYPTION event",
                    "replicate from a server whose binlog is not encrypted, or report a bug",
                ));
            }
            other => {
                let what = match other {
                    165 => "MariaDB QUERY_COMPRESSED event (log_bin_compress=ON)".to_string(),
                    166..=171 => {
                        format!("MariaDB compressed rows event type {other} (log_bin_compress=ON)")
                    }
                    _ => format!("unknown event type {other}"),
                };
                return Err(self.unsupported(start, what, "SET GLOBAL log_bin_compress=OFF on the source and re-snapshot the captured tables with `cdcsync snapshot --table <db.table>`"));
            }
        }
        Ok(())
    }

    fn begin(&mut self, gtid: Option<GtidOfTx>) {
        self.open = Some(OpenTx {
            state: new_tx(),
            gtid,
            begun: false,
            has_rows: false,
        });
    }

    async fn commit(&mut self, end: u64, ts: u32) -> Result<(), ReaderError> {
        // A commit always closes an open payload, even one whose transaction was not tracked.
        let payload = self.payload.take();
        let Some(tx) = self.open.take() else {
            return Ok(());
        };
        match (&tx.gtid, &mut self.gtid) {
            (
                Some(GtidOfTx::Mariadb {
                    domain,
                    server,
                    seq,
                }),
                GtidPosition::Mariadb(list),
            ) => list.update(*domain, *server, *seq),
            (Some(GtidOfTx::Mysql { uuid, tag, gno }), GtidPosition::Mysql(set)) => {
                set.add(uuid, tag, *gno)
            }
            _ => {}
        }
        let pos = match payload {
            Some(p) => p.end,
            None => end,
        };
        if tx.has_rows {
            metrics::TRANSACTIONS.inc();
        }
        let cp = Checkpoint {
            flavor: self.flavor,
            server_id: self.source_server_id,
            gtid_set: self.gtid.to_string(),
            position: BinlogPosition {
                file: self.file.clone(),
                pos,
            },
            ts_ms: ts as i64 * 1000,
        };
        self.ack.close(tx.state, cp);
        Ok(())
    }

    async fn checkpoint_if_due(&mut self) -> Result<(), ReaderError> {
        self.r.sink.check_errors()?;
        let Some(cp) = self.ack.advance()?.cloned() else {
            return Ok(());
        };
        if self.last_saved.as_ref() != Some(&cp) {
            self.r
                .sink
                .save_checkpoint(&self.r.source.name, &cp)
                .await?;
            self.last_saved = Some(cp);
        }
        Ok(())
    }

    /// Graceful end: wait for acknowledgements (bounded), then save the last complete boundary.
    async fn finish(&mut self) -> Result<(), ReaderError> {
        let bound = Duration::from_millis(self.r.cfg.shutdown_timeout_ms);
        let drained = self
            .r
            .sink
            .drain(bound.saturating_sub(Duration::from_secs(2)))
            .await;
        self.checkpoint_if_due().await?;
        if !drained {
            return Err(ReaderError::Shutdown("Kafka did not acknowledge every event within reader.shutdown_timeout_ms; the checkpoint was saved at the last acknowledged transaction".into()));
        }
        tracing::info!(checkpoint = ?self.last_saved.as_ref().map(|c| c.position.to_string()), "reader stopped; checkpoint saved");
        Ok(())
    }

    async fn table_map(&mut self, ev: &Event, pos: u64) -> Result<(), ReaderError> {
        let tme: TableMapEvent<'_> = ev
            .read_event()
            .map_err(|e| self.unsupported(pos, format!("bad TABLE_MAP: {e}"), "report a bug"))?;
        let table_id = tme.table_id();
        if let Some(m) = self.tables.get(&table_id) {
            if m.raw == ev.data() {
                return Ok(());
            }
        }
        let id = TableId::new(tme.database_name(), tme.table_name());
        let included = self.filter.matches(&id.db, &id.table);
        let mut info = None;
        if included {
            let needs_info =
                self.flavor == Flavor::Mariadb || tme.iter_optional_meta().next().is_none();
            if needs_info {
                if !self.info_cache.contains_key(&id) {
                    let i = info_schema(&mut self.meta, self.flavor, &id).await?;
                    self.info_cache.insert(id.clone(), i);
                }
                info = self.info_cache.get(&id);
            }
        }
        let built = table::build(&tme, included, info).map_err(|e| {
            self.unsupported(
                pos,
                e.to_string(),
                "fix the table (or exclude it in source.exclude_tables) and re-snapshot it",
            )
        })?;
        let topic = topic_name(&self.r.prefix, &id);
        if included && !self.ensured_topics.contains(&topic) {
            self.r
                .sink
                .ensure_topics(std::slice::from_ref(&topic))
                .await?;
            self.ensured_topics.insert(topic.clone());
        }
        let label = built.label.clone();
        let counters = ["c", "u", "d"].map(|op| metrics::EVENTS.with_label_values(&[&label, op]));
        let db_table_json = format!(
            "\"db\":{},\"table\":{}",
            serde_json::to_string(&id.db).unwrap_or_default(),
            serde_json::to_string(&id.table).unwrap_or_default()
        );
        // Keep the map small: table ids change after DDL, and long-running readers see many.
        if self.tables.len() > 10_000 {
            self.tables.clear();
        }
        self.tables.insert(
            table_id,
            Mapped {
                raw: ev.data().to_vec(),
                info: Arc::new(built),
                topic,
                db_table_json,
                counters,
            },
        );
        Ok(())
    }

    async fn rows(&mut self, ev: &Event, pos: u64) -> Result<(), ReaderError> {
        let data = ev
            .read_data()
            .map_err(|e| self.unsupported(pos, format!("bad rows event: {e}"), "report a bug"))?;
        let Some(EventData::RowsEvent(rows)) = data else {
            return Err(self.unsupported(pos, "rows event did not parse", "report a bug"));
        };
        let Some(m) = self.tables.get(&rows.table_id()) else {
            return Err(self.unsupported(
                pos,
                format!(
                    "rows event for table id {} without a TABLE_MAP",
                    rows.table_id()
                ),
                "report a bug",
            ));
        };
        if !m.info.included {
            return Ok(());
        }
        let info = m.info.clone();
        let topic = m.topic.clone();
        let db_table_json = m.db_table_json.clone();
        let counters = m.counters.clone();
        if self.open.is_none() {
            self.begin(None);
        }
        let (tx_state, gtid_text) = {
            let o = self.open.as_mut().expect("open transaction");
            o.has_rows = true;
            (o.state.clone(), o.gtid.as_ref().map(|g| g.text()))
        };
        let before_cols: Vec<bool> = rows
            .columns_before_image()
            .map(|b| b.iter().by_vals().collect())
            .unwrap_or_default();
        let after_cols: Vec<bool> = rows
            .columns_after_image()
            .map(|b| b.iter().by_vals().collect())
            .unwrap_or_default();
        let kind = match &rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => 'c',
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => 'u',
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => 'd',
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(self.unsupported(
                    pos,
                    "PARTIAL_UPDATE_ROWS event",
                    "SET GLOBAL binlog_row_value_options=''",
                ));
            }
        };
        let ts_ms = ev.header().timestamp() as i64 * 1000;
        let server_id = ev.header().server_id();
        let mut buf = ParseBuf(rows.rows_data());
        let mut row_in_event: u32 = 0;
        let zero = self.r.cfg.zero_dates;
        let file = self.file.clone();
        while !buf.is_empty() {
            let row = match self.payload.as_mut() {
                Some(p) => {
                    p.next_row += 1;
                    p.next_row - 1
                }
                None => row_in_event,
            };
            row_in_event += 1;
            let derr = |e: crate::decode::DecodeError| ReaderError::UnsupportedEvent {
                file: file.clone(),
                pos,
                detail: format!("{}: {e}", info.label),
                fix: "report a bug with the column's type; exclude the table meanwhile".into(),
            };
            match kind {
                'c' => decode_image(&info, &after_cols, &mut buf, zero, &mut self.after)
                    .map_err(derr)?,
                'd' => decode_image(&info, &before_cols, &mut buf, zero, &mut self.before)
                    .map_err(derr)?,
                _ => {
                    decode_image(&info, &before_cols, &mut buf, zero, &mut self.before)
                        .map_err(derr)?;
                    decode_image(&info, &after_cols, &mut buf, zero, &mut self.after)
                        .map_err(derr)?;
                }
            }
            let ctx = RowCtx {
                topic: &topic,
                info: &info,
                db_table_json: &db_table_json,
                gtid: gtid_text.as_deref(),
                server_id,
                ts_ms,
                pos,
                row,
            };
            match kind {
                'c' => {
                    let key = self.after.key(&info);
                    self.emit(
                        &ctx,
                        &key,
                        None,
                        Some(true),
                        "c",
                        None,
                        &tx_state,
                        &counters[0],
                    )
                    .await?;
                }
                'd' => {
                    let key = self.before.key(&info);
                    self.emit(
                        &ctx,
                        &key,
                        Some(true),
                        None,
                        "d",
                        None,
                        &tx_state,
                        &counters[2],
                    )
                    .await?;
                }
                _ => {
                    let kb = self.before.key(&info);
                    let ka = self.after.key(&info);
                    if kb == ka {
                        self.emit(
                            &ctx,
                            &ka,
                            Some(true),
                            Some(true),
                            "u",
                            None,
                            &tx_state,
                            &counters[1],
                        )
                        .await?;
                    } else {
                        // A primary-key change: delete the old key, create the new one.
                        self.emit(
                            &ctx,
                            &kb,
                            Some(true),
                            None,
                            "d",
                            Some('d'),
                            &tx_state,
                            &counters[2],
                        )
                        .await?;
                        self.emit(
                            &ctx,
                            &ka,
                            None,
                            Some(true),
                            "c",
                            Some('c'),
                            &tx_state,
                            &counters[0],
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Builds the envelope (field order and spelling exactly as `cdc_event::ChangeEvent`
    /// serialises) and produces it, plus a tombstone after a delete.
    #[allow(clippy::too_many_arguments)]
    async fn emit(
        &mut self,
        ctx: &RowCtx<'_>,
        key: &[u8],
        before: Option<bool>,
        after: Option<bool>,
        op: &str,
        part: Option<char>,
        tx: &Arc<TxState>,
        counter: &IntCounter,
    ) -> Result<(), ReaderError> {
        self.r.sink.wait_for_room().await?;
        // Event id and version go into reusable buffers: this runs once per row.
        let id = &mut self.id_buf;
        id.clear();
        id.extend_from_slice(self.r.source.name.as_bytes());
        id.push(b':');
        id.extend_from_slice(self.file.as_bytes());
        id.push(b':');
        digits(id, ctx.pos, 1);
        id.push(b':');
        digits(id, ctx.row as u64, 1);
        if let Some(p) = part {
            id.push(b':');
            id.push(p as u8);
        }
        let ver = &mut self.ver_buf;
        ver.clear();
        digits128(ver, Version::new(self.file_seq, ctx.pos, ctx.row).0, 1);
        let v = &mut self.value;
        v.clear();
        v.extend_from_slice(b"{\"before\":");
        match before {
            Some(_) => v.extend_from_slice(&self.before.json),
            None => v.extend_from_slice(b"null"),
        }
        v.extend_from_slice(b",\"after\":");
        match after {
            Some(_) => v.extend_from_slice(&self.after.json),
            None => v.extend_from_slice(b"null"),
        }
        v.extend_from_slice(b",\"source\":{\"version\":\"");
        v.extend_from_slice(CONNECTOR_VERSION.as_bytes());
        v.extend_from_slice(b"\",\"connector\":\"");
        v.extend_from_slice(self.flavor.connector().as_bytes());
        v.extend_from_slice(b"\",\"name\":");
        v.extend_from_slice(self.name_json.as_bytes());
        v.extend_from_slice(b",\"ts_ms\":");
        digits(v, ctx.ts_ms as u64, 1);
        v.extend_from_slice(b",\"snapshot\":\"false\",");
        v.extend_from_slice(ctx.db_table_json.as_bytes());
        v.extend_from_slice(b",\"server_id\":");
        digits(v, ctx.server_id as u64, 1);
        v.extend_from_slice(b",\"gtid\":");
        match ctx.gtid {
            Some(g) => {
                let _ = serde_json::to_writer(&mut *v, g);
            }
            None => v.extend_from_slice(b"null"),
        }
        v.extend_from_slice(b",\"file\":");
        let _ = serde_json::to_writer(&mut *v, &self.file);
        v.extend_from_slice(b",\"pos\":");
        digits(v, ctx.pos, 1);
        v.extend_from_slice(b",\"row\":");
        digits(v, ctx.row as u64, 1);
        // Ids are built from the source name (letters, digits, '_', '-') and the file name, so
        // they need no JSON escaping.
        v.extend_from_slice(b",\"event_id\":\"");
        v.extend_from_slice(&self.id_buf);
        v.extend_from_slice(b"\",\"cdc_version\":\"");
        v.extend_from_slice(&self.ver_buf);
        v.extend_from_slice(b"\"},\"op\":\"");
        v.extend_from_slice(op.as_bytes());
        v.extend_from_slice(b"\",\"ts_ms\":");
        digits(v, now_ms() as u64, 1);
        v.extend_from_slice(b",\"schema\":");
        v.extend_from_slice(ctx.info.schema_json.as_bytes());
        v.push(b'}');
        self.r
            .sink
            .send(
                ctx.topic,
                key,
                Some(&self.value),
                Some((&self.id_buf, &self.ver_buf)),
                tx,
                Some(counter.clone()),
            )
            .await?;
        if op == "d" && self.r.cfg.tombstones {
            self.r
                .sink
                .send(ctx.topic, key, None, None, tx, None)
                .await?;
        }
        Ok(())
    }
}

/// Per-row facts shared by the events of one row.
struct RowCtx<'a> {
    topic: &'a str,
    info: &'a TableInfo,
    db_table_json: &'a str,
    gtid: Option<&'a str>,
    server_id: u32,
    ts_ms: i64,
    pos: u64,
    row: u32,
}
