//! The binlog version of a consistent-snapshot transaction, on both server families: the one
//! place that starts the read of a snapshot chunk or of reconciliation's repair rows. Why the
//! version is safe is argued at the top of `snapshot/mod.rs`; this module implements the two
//! recipes it names.
//!
//! * MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT` then `binlog_snapshot_file/position`,
//!   which MariaDB records together with the read view (exact).
//! * MySQL: a *fence* `(F, P)` read with `SHOW BINARY LOG STATUS`, the GTIDs of every transaction
//!   written before `P` found with a non-blocking binlog dump, `WAIT_FOR_EXECUTED_GTID_SET` on
//!   those, and only then `START TRANSACTION WITH CONSISTENT SNAPSHOT`. Every transaction before
//!   `P` is then visible to the read view; some after `P` may be too, which the argument allows.

use std::time::{Duration, Instant};

use cdc_event::{BinlogPosition, Flavor};
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::binlog::events::{GtidEvent, RotateEvent};

use crate::gtid::{format_uuid, MysqlGtidSet};

use super::SnapshotError;

// Binlog event type codes used here (MySQL `Log_event_type`).
const ROTATE: u8 = 4;
const GTID: u8 = 33;
const ANONYMOUS_GTID: u8 = 34;
const GTID_TAGGED: u8 = 42;

/// How long a MySQL fence is reused by later reads before a new one is taken. Reuse is safe
/// (each read's transaction still starts after the fence's wait returned; see `snapshot/mod.rs`)
/// and keeps the per-chunk cost at one `START TRANSACTION`; the bound keeps versions recent.
const FENCE_REUSE: Duration = Duration::from_secs(2);

/// How long `WAIT_FOR_EXECUTED_GTID_SET` may wait for transactions that are in the binlog but
/// not yet committed (normally milliseconds: they are between binlog fsync and engine commit).
const WAIT_SECONDS: u32 = 60;

fn my(e: mysql_async::Error) -> SnapshotError {
    SnapshotError::Source(e.to_string())
}

/// Starts consistent-snapshot transactions and tells their binlog version; one per source,
/// shared by every reader of that source (snapshot workers, repair batches).
#[derive(Debug)]
pub struct SnapshotClock {
    flavor: Flavor,
    /// MySQL: the last fence whose wait completed, reused for [`FENCE_REUSE`] and the start of
    /// the next fence's binlog scan (everything before it is known to be committed).
    fence: tokio::sync::Mutex<Option<Fence>>,
}

#[derive(Debug, Clone)]
struct Fence {
    position: BinlogPosition,
    taken: Instant,
}

/// What one MySQL fence cost, for the debug log and the benchmark notes.
#[derive(Debug, Default)]
struct FenceStats {
    dumps: u32,
    in_flight: usize,
    waited: Duration,
}

impl SnapshotClock {
    /// A clock for a source of `flavor`.
    pub fn new(flavor: Flavor) -> Self {
        SnapshotClock {
            flavor,
            fence: tokio::sync::Mutex::new(None),
        }
    }

    /// A clock for the server `conn` is connected to (from `SELECT VERSION()`).
    pub async fn detect(conn: &mut Conn) -> Result<Self, SnapshotError> {
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(my)?
            .unwrap_or_default();
        Ok(Self::new(
            if version.to_ascii_lowercase().contains("mariadb") {
                Flavor::Mariadb
            } else {
                Flavor::Mysql
            },
        ))
    }

    /// The source's flavor.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Starts `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY` on `conn` and returns the
    /// binlog position `V` to version what it reads: every transaction before `V` is visible to
    /// the transaction (on MariaDB under REPEATABLE READ also: none after it). The caller ends
    /// the transaction; on an error none is open.
    ///
    /// Only the first half is relied on (`snapshot/mod.rs`), so the session's isolation level
    /// does not matter for correctness: under READ COMMITTED (reconciliation's sessions) each
    /// `SELECT` takes a newer read view, which sees at least as much.
    pub async fn begin(&self, conn: &mut Conn) -> Result<BinlogPosition, SnapshotError> {
        match self.flavor {
            Flavor::Mariadb => {
                conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await
                    .map_err(my)?;
                match mariadb_snapshot_position(conn).await {
                    Ok(p) => Ok(p),
                    Err(e) => {
                        let _ = conn.query_drop("ROLLBACK").await;
                        Err(e)
                    }
                }
            }
            Flavor::Mysql => {
                let position = self.mysql_fence(conn).await?;
                // The read view is created here, after the fence's wait returned.
                conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await
                    .map_err(my)?;
                Ok(position)
            }
        }
    }

    /// A fence whose wait has completed: reused while recent, else taken anew (one at a time;
    /// concurrent callers wait for it and share it).
    async fn mysql_fence(&self, conn: &mut Conn) -> Result<BinlogPosition, SnapshotError> {
        let mut slot = self.fence.lock().await;
        if let Some(f) = slot.as_ref() {
            if f.taken.elapsed() < FENCE_REUSE {
                return Ok(f.position.clone());
            }
        }
        let started = Instant::now();
        let prev = slot.as_ref().map(|f| f.position.clone());
        let (position, stats) = take_mysql_fence(conn, prev.as_ref()).await?;
        tracing::debug!(
            file = %position.file, pos = position.pos, dumps = stats.dumps,
            in_flight = stats.in_flight, waited_ms = stats.waited.as_millis() as u64,
            took_ms = started.elapsed().as_millis() as u64,
            "MySQL snapshot fence: every transaction before it is committed"
        );
        *slot = Some(Fence {
            position: position.clone(),
            taken: Instant::now(),
        });
        Ok(position)
    }
}

/// MariaDB's `binlog_snapshot_file/position` of the consistent-snapshot transaction just
/// started on `conn`.
///
/// MariaDB fills these status variables into *process-wide* static storage on every
/// `SHOW STATUS` and reads them back, so a session can see the value another session's
/// `SHOW STATUS` put there (reproduced: four sessions in their own snapshots, each reading its
/// position 3,000 times under writes, saw the others' positions 0.1–0.5 % of the time; see
/// `docs/decisions/0002-snapshot-consistency.md`). A later position than the session's own breaks
/// the merge argument. This process's reads are therefore serialised (its own workers no longer
/// race each other), and a value is accepted only when three consecutive reads agree; sessions of
/// other processes calling `SHOW STATUS` at the same moment can still race, which is open.
async fn mariadb_snapshot_position(conn: &mut Conn) -> Result<BinlogPosition, SnapshotError> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = SERIAL.lock().await;
    let mut last: Option<BinlogPosition> = None;
    let mut agreeing = 0;
    for _ in 0..50 {
        let p = mariadb_status_once(conn).await?;
        if last.as_ref() == Some(&p) {
            agreeing += 1;
        } else {
            agreeing = 1;
            last = Some(p);
        }
        if agreeing == 3 {
            return Ok(last.unwrap_or_else(|| unreachable!("set above")));
        }
    }
    Err(SnapshotError::Source(
        "binlog_snapshot_position did not read the same three times in a row".into(),
    ))
}

async fn mariadb_status_once(conn: &mut Conn) -> Result<BinlogPosition, SnapshotError> {
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(my)?;
    let get = |n: &str| {
        status
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    match (
        get("binlog_snapshot_file"),
        get("binlog_snapshot_position").and_then(|p| p.parse::<u64>().ok()),
    ) {
        (Some(file), Some(pos)) if !file.is_empty() => Ok(BinlogPosition { file, pos }),
        _ => Err(SnapshotError::SourceSetting(
            "the source reports no binlog_snapshot_file/position: is log_bin ON? Fix: enable the binary log (log_bin, binlog_format=ROW)".into(),
        )),
    }
}

/// Takes a MySQL fence: `(F, P)` such that every transaction written to the binlog before `P`
/// is committed in the engine when this returns. `prev` is an earlier fence (everything before
/// it is committed), where the binlog scan may start instead of the start of a file.
async fn take_mysql_fence(
    conn: &mut Conn,
    prev: Option<&BinlogPosition>,
) -> Result<(BinlogPosition, FenceStats), SnapshotError> {
    let mut stats = FenceStats::default();
    // The server reads Executed_Gtid_Set first and the position after it (both under their own
    // locks, not together), so G holds no transaction after P; the ones before P missing from G
    // are the ones in flight between binlog write and engine commit, or committed in between.
    let row: Option<mysql_async::Row> = match conn.query_first("SHOW BINARY LOG STATUS").await {
        Ok(r) => r,
        // Before 8.2 the statement is SHOW MASTER STATUS.
        Err(_) => conn.query_first("SHOW MASTER STATUS").await.map_err(my)?,
    };
    let row = row.ok_or_else(|| {
        SnapshotError::SourceSetting(
            "the source has no binary log (log_bin is OFF); Fix: enable log_bin".into(),
        )
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or(0);
    let executed: String = row.get(4).unwrap_or_default();
    if file.is_empty() || pos == 0 {
        return Err(SnapshotError::SourceSetting(
            "the source reports no binary log position; Fix: enable log_bin".into(),
        ));
    }
    let fence = BinlogPosition { file, pos };
    let gtid_mode: Option<String> = conn
        .query_first("SELECT @@GLOBAL.gtid_mode")
        .await
        .map_err(my)?;
    if gtid_mode.as_deref() != Some("ON") {
        return Err(SnapshotError::SourceSetting(format!(
            "snapshots of a MySQL source need gtid_mode=ON (it is {}): the read view is fenced by waiting for GTIDs. Fix: SET PERSIST enforce_gtid_consistency=ON, gtid_mode=ON (stepwise, see the MySQL manual)",
            gtid_mode.as_deref().unwrap_or("unknown")
        )));
    }
    let executed = MysqlGtidSet::parse(&executed.replace('\n', ""))
        .map_err(|e| SnapshotError::Source(e.to_string()))?;
    let opts = conn.opts().clone();
    let in_flight = match prev {
        Some(start) => {
            match gtids_before(&opts, Some(start), &executed, &fence, &mut stats).await {
                Ok(s) => s,
                // The earlier fence's file may have been purged: scan from the server's choice.
                Err(SnapshotError::Source(e)) => {
                    tracing::debug!(error = %e, "fence scan from the previous fence failed; scanning from the first file with unexecuted GTIDs");
                    gtids_before(&opts, None, &executed, &fence, &mut stats).await?
                }
                Err(e) => return Err(e),
            }
        }
        None => gtids_before(&opts, None, &executed, &fence, &mut stats).await?,
    };
    if !in_flight.is_empty() {
        let t = Instant::now();
        let timed_out: Option<i64> = conn
            .exec_first(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
                (in_flight.to_string(), WAIT_SECONDS),
            )
            .await
            .map_err(my)?;
        stats.waited = t.elapsed();
        if timed_out != Some(0) {
            return Err(SnapshotError::Source(format!(
                "transactions {in_flight} are in the binary log before {}:{} but were not committed within {WAIT_SECONDS} s",
                fence.file, fence.pos
            )));
        }
    }
    Ok((fence, stats))
}

/// The GTIDs of the transactions that start before `upto` in the binlog and are not in
/// `executed`, read with a non-blocking `COM_BINLOG_DUMP_GTID` that excludes `executed` (the
/// server skips those transactions and sends the others). It starts at `start`, or, without
/// one, where the server's GTID auto-positioning starts (the first file holding a GTID not in
/// `executed`).
///
/// The dump reads up to the binlog's *synced* end, which can briefly lag `upto` (the position
/// `SHOW BINARY LOG STATUS` reports is the written end); a dump that ends before reaching `upto`
/// is repeated until one does.
///
/// The dump uses server_id 0, as `mysqlbinlog --read-from-remote-server` does: the server then
/// never blocks at the end of the log, and it skips the "zombie" check that would otherwise end
/// another dump thread with the same server_id (such as the reader's own stream).
async fn gtids_before(
    opts: &mysql_async::Opts,
    start: Option<&BinlogPosition>,
    executed: &MysqlGtidSet,
    upto: &BinlogPosition,
    stats: &mut FenceStats,
) -> Result<MysqlGtidSet, SnapshotError> {
    let sids = executed.to_sids();
    let mut backoff = Duration::from_millis(2);
    for _ in 0..200 {
        stats.dumps += 1;
        let conn = Conn::new(opts.clone()).await.map_err(my)?;
        let mut request = BinlogStreamRequest::new(0)
            .with_gtid()
            .with_gtid_set(sids.iter().cloned())
            .with_non_blocking();
        if let Some(s) = start {
            request = request.with_filename(s.file.as_bytes()).with_pos(s.pos);
        }
        let mut stream = conn.get_binlog_stream(request).await.map_err(my)?;
        let mut scan = Scan::new(upto);
        while let Some(ev) = stream.next().await {
            let ev = ev.map_err(my)?;
            if scan.event(&ev)? {
                break;
            }
        }
        let _ = stream.close().await;
        if scan.reached {
            stats.in_flight = scan.count;
            return Ok(scan.found);
        }
        tracing::trace!(
            ?backoff,
            "fence scan ended before the fence (binlog not yet synced that far); repeating"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
    Err(SnapshotError::Source(format!(
        "the binlog dump never reached {}:{} (is the binary log being written?)",
        upto.file, upto.pos
    )))
}

/// The state of one fence scan over the dumped events.
struct Scan<'a> {
    upto: &'a BinlogPosition,
    /// Whether the events are in `upto`'s file (files before it hold only earlier positions).
    in_target: bool,
    /// Whether the scan has seen the binlog up to `upto` (so nothing before it is missing).
    reached: bool,
    found: MysqlGtidSet,
    count: usize,
}

impl<'a> Scan<'a> {
    fn new(upto: &'a BinlogPosition) -> Self {
        Scan {
            upto,
            in_target: false,
            reached: false,
            found: MysqlGtidSet::default(),
            count: 0,
        }
    }

    /// Where a file named by a ROTATE event lies relative to `upto`'s file. Binlog file names
    /// share the base name and differ in a zero-padded sequence number, so a longer name is later
    /// and names of equal length compare as bytes. The first, artificial ROTATE of a dump
    /// arrives before the FORMAT_DESCRIPTION that announces checksums, so its name may carry
    /// the 4 checksum bytes, which are dropped here (a real name 4 bytes longer than `upto`'s
    /// would need a sequence number beyond 10^9).
    fn file_order(&self, name: &[u8]) -> std::cmp::Ordering {
        let f = self.upto.file.as_bytes();
        let name = if name.len() == f.len() + 4 {
            &name[..f.len()]
        } else {
            name
        };
        (name.len(), name).cmp(&(f.len(), f))
    }

    /// Takes one event; returns whether the scan is complete.
    fn event(&mut self, ev: &mysql_common::binlog::events::Event) -> Result<bool, SnapshotError> {
        let h = ev.header();
        let end = h.log_pos() as u64;
        let step = match h.event_type_raw() {
            ROTATE => {
                let re: RotateEvent<'_> = ev
                    .read_event()
                    .map_err(|e| SnapshotError::Source(format!("bad ROTATE event: {e}")))?;
                Step::Rotate {
                    name: re.name_raw().to_vec(),
                    pos: re.position(),
                }
            }
            GTID | GTID_TAGGED => {
                let g: GtidEvent = ev
                    .read_event()
                    .map_err(|e| SnapshotError::Source(format!("bad GTID event: {e}")))?;
                Step::Gtid {
                    start: end.saturating_sub(h.event_size() as u64),
                    uuid: format_uuid(&g.sid()),
                    tag: g.tag().map(|t| t.to_string()).unwrap_or_default(),
                    gno: g.gno(),
                }
            }
            ANONYMOUS_GTID => Step::Anonymous,
            _ => Step::Other { end },
        };
        self.step(step)
    }

    /// The scan's logic on one classified event; returns whether the scan is complete.
    fn step(&mut self, step: Step) -> Result<bool, SnapshotError> {
        match step {
            Step::Rotate { name, pos } => match self.file_order(&name) {
                // A file before upto's: all of it lies before the fence.
                std::cmp::Ordering::Less => self.in_target = false,
                std::cmp::Ordering::Equal => {
                    self.in_target = true;
                    self.reached = pos >= self.upto.pos;
                }
                // Past upto's file: everything before the fence was seen. (Also when the server
                // starts the dump after it: every transaction up to that file is then in the
                // excluded set, so none before the fence is in flight.)
                std::cmp::Ordering::Greater => self.reached = true,
            },
            Step::Gtid {
                start,
                uuid,
                tag,
                gno,
            } => {
                if self.in_target && start >= self.upto.pos {
                    self.reached = true;
                } else {
                    self.found.add(&uuid, &tag, gno);
                    self.count += 1;
                }
            }
            Step::Anonymous => {
                return Err(SnapshotError::SourceSetting(
                    "the binary log holds anonymous transactions (gtid_mode was not ON when they were written): snapshots of a MySQL source need every transaction to have a GTID. Fix: wait until the binary logs with anonymous transactions are purged, or snapshot later".into(),
                ));
            }
            // Events decompressed from a TRANSACTION_PAYLOAD carry log_pos 0; heartbeats carry
            // the end of the transactions the server skipped.
            Step::Other { end } => {
                self.reached = self.in_target && end >= self.upto.pos;
            }
        }
        Ok(self.reached)
    }
}

/// A dumped event as the fence scan sees it.
#[derive(Debug)]
enum Step {
    /// A ROTATE (artificial at the start of each file, or real at the end of one).
    Rotate { name: Vec<u8>, pos: u64 },
    /// A transaction's GTID event and its start position.
    Gtid {
        start: u64,
        uuid: String,
        tag: String,
        gno: u64,
    },
    /// An ANONYMOUS_GTID event.
    Anonymous,
    /// Any other event (also a heartbeat) and its end position (`log_pos`, 0 when unknown).
    Other { end: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    fn gtid(start: u64, tag: &str, gno: u64) -> Step {
        Step::Gtid {
            start,
            uuid: U.into(),
            tag: tag.into(),
            gno,
        }
    }

    fn rotate(name: &[u8], pos: u64) -> Step {
        Step::Rotate {
            name: name.to_vec(),
            pos,
        }
    }

    /// Feeds the steps until the scan completes; returns (reached, found, steps taken).
    fn run(upto: (&str, u64), steps: Vec<Step>) -> (bool, String, usize) {
        let upto = BinlogPosition {
            file: upto.0.into(),
            pos: upto.1,
        };
        let mut scan = Scan::new(&upto);
        let mut n = 0;
        for s in steps {
            n += 1;
            if scan.step(s).unwrap() {
                break;
            }
        }
        (scan.reached, scan.found.to_string(), n)
    }

    #[test]
    fn collects_the_gtids_before_the_fence_in_its_file_and_earlier_files() {
        let (reached, found, n) = run(
            ("binlog.000007", 1000),
            vec![
                // The artificial first ROTATE still carries 4 checksum bytes.
                rotate(b"binlog.000006\x01\x02\x03\x04", 4),
                Step::Other { end: 126 },
                gtid(5_000_000, "", 3), // an earlier file: before the fence whatever its offset
                rotate(b"binlog.000007", 4),
                gtid(400, "", 4),
                Step::Other { end: 900 },
                gtid(900, "tag_a", 1),
                Step::Other { end: 1000 }, // ends at the fence: the scan is complete
                gtid(1000, "", 5),
            ],
        );
        assert!(reached);
        assert_eq!(found, format!("{U}:3-4:tag_a:1"));
        assert_eq!(n, 8);
        // A transaction that starts at the fence is not before it.
        let (reached, found, n) = run(
            ("binlog.000007", 1000),
            vec![
                rotate(b"binlog.000007", 900),
                gtid(1000, "", 5),
                gtid(1200, "", 6),
            ],
        );
        assert!(reached);
        assert_eq!(found, "");
        assert_eq!(n, 2);
    }

    #[test]
    fn a_dump_that_ends_before_the_fence_has_not_reached_it() {
        // The synced end lagged the written end: the last thing seen is a heartbeat before P.
        let (reached, found, _) = run(
            ("binlog.000007", 1000),
            vec![
                rotate(b"binlog.000007\x01\x02\x03\x04", 4),
                gtid(400, "", 4),
                Step::Other { end: 700 },
            ],
        );
        assert!(!reached);
        assert_eq!(found, format!("{U}:4"));
        // A heartbeat for skipped transactions that ends at the fence completes it.
        let (reached, found, _) = run(
            ("binlog.000007", 1000),
            vec![rotate(b"binlog.000007", 500), Step::Other { end: 1000 }],
        );
        assert!(reached);
        assert_eq!(found, "");
    }

    #[test]
    fn starting_at_the_fence_or_passing_its_file_completes_the_scan() {
        let (reached, _, n) = run(
            ("binlog.000007", 1000),
            vec![rotate(b"binlog.000007", 1000), gtid(1000, "", 9)],
        );
        assert!(reached);
        assert_eq!(n, 1);
        let (reached, found, _) = run(
            ("binlog.000007", 1000),
            vec![
                rotate(b"binlog.000007", 900),
                gtid(950, "", 8),
                rotate(b"binlog.000008", 4),
            ],
        );
        assert!(reached);
        assert_eq!(found, format!("{U}:8"));
        // Events decompressed from a payload (log_pos 0) say nothing about the position.
        let (reached, _, _) = run(
            ("binlog.000007", 1000),
            vec![rotate(b"binlog.000007", 900), Step::Other { end: 0 }],
        );
        assert!(!reached);
        // The server started the dump after the fence's file (everything up to it executed):
        // nothing is collected from the later file.
        let (reached, found, n) = run(
            ("binlog.000007", 1000),
            vec![
                rotate(b"binlog.000008\x01\x02\x03\x04", 4),
                gtid(100, "", 9),
            ],
        );
        assert!(reached);
        assert_eq!(found, "");
        assert_eq!(n, 1);
        // Sequence numbers past six digits still order after the fence's file.
        let (reached, _, _) = run(("binlog.999999", 1000), vec![rotate(b"binlog.1000000", 4)]);
        assert!(reached);
    }

    #[test]
    fn anonymous_transactions_are_refused() {
        let upto = BinlogPosition {
            file: "binlog.000001".into(),
            pos: 10,
        };
        let mut scan = Scan::new(&upto);
        assert!(matches!(
            scan.step(Step::Anonymous),
            Err(SnapshotError::SourceSetting(_))
        ));
    }
}
