//! Positions in the source's binlog, checkpoints, and the version and id derived from them.
//!
//! A [`Version`] packs (binlog file sequence number, event position, row index) into one `u128`
//! so it orders exactly like the binlog itself: a later change always has a larger version.
//! Positions are only comparable within one source server's binlog history; moving the reader to
//! another server (failover) means a new snapshot, as with Debezium's file/pos offsets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which server family the source is; they differ in GTID format and replication protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// MariaDB: GTIDs are `domain-server-seq`, a position is a list with one GTID per domain.
    Mariadb,
    /// MySQL: GTIDs are `uuid[:tag]:n`, a position is a GTID set with intervals.
    Mysql,
}

impl Flavor {
    /// The `source.connector` value in the envelope.
    pub fn connector(self) -> &'static str {
        match self {
            Flavor::Mariadb => "mariadb",
            Flavor::Mysql => "mysql",
        }
    }
}

/// A binlog coordinate: file name and byte offset of an event in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogPosition {
    /// Binlog file name, e.g. `mysql-bin.000042`.
    pub file: String,
    /// Byte offset in that file.
    pub pos: u64,
}

impl BinlogPosition {
    /// The numeric suffix of the file name (`mysql-bin.000042` → 42), which orders files.
    pub fn file_seq(&self) -> Result<u32, VersionError> {
        let (_, suffix) = self
            .file
            .rsplit_once('.')
            .ok_or_else(|| VersionError::FileName(self.file.clone()))?;
        suffix
            .parse()
            .map_err(|_| VersionError::FileName(self.file.clone()))
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// The reader's durable progress: where to resume so that nothing is lost.
///
/// Saved only at transaction boundaries and only after Kafka acknowledged every event before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Server family the position belongs to.
    pub flavor: Flavor,
    /// The source server's `server_id` when the checkpoint was taken.
    pub server_id: u32,
    /// Executed GTID state at the boundary: a MariaDB GTID list (`0-1-23,1-2-5`) or a MySQL GTID
    /// set (`uuid:1-5`). Empty when GTIDs are off; then `position` is used.
    pub gtid_set: String,
    /// Binlog file/position of the first event after the boundary.
    pub position: BinlogPosition,
    /// Commit time (ms since the epoch) of the last transaction included.
    pub ts_ms: i64,
}

/// Errors building versions from positions.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The binlog file name has no numeric suffix.
    #[error("binlog file name {0:?} has no numeric suffix (expected e.g. mysql-bin.000042)")]
    FileName(String),
    /// The version text is not a decimal number.
    #[error("version {0:?} is not a decimal number")]
    Parse(String),
}

/// A source version: monotonic per source and totally ordered, derived from binlog coordinates.
///
/// Layout (most significant first): 32 bits binlog file sequence, 64 bits event position,
/// 32 bits row index within the rows event. A snapshot row read after observing position `P`
/// gets `Version::new(file, P, 0)`, which is below every row event that commits after `P`
/// (those start after their GTID/BEGIN event at `P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u128);

impl Version {
    /// Packs a binlog coordinate and a row index.
    pub fn new(file_seq: u32, pos: u64, row: u32) -> Self {
        Version(((file_seq as u128) << 96) | ((pos as u128) << 32) | row as u128)
    }

    /// The version of row `row` of the rows event at `position`.
    pub fn at(position: &BinlogPosition, row: u32) -> Result<Self, VersionError> {
        Ok(Self::new(position.file_seq()?, position.pos, row))
    }

    /// Parses the decimal text form used on the wire and in PostgreSQL (`numeric(39,0)`).
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        text.parse::<u128>()
            .map(Version)
            .map_err(|_| VersionError::Parse(text.to_string()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A string: the value exceeds what JSON numbers carry exactly in most consumers.
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A deterministic event id, unique per source: the same change read twice (after a crash, a
/// reconnect or a replay) gets the same id, never a random one.
///
/// Streaming: `<source name>:<file>:<pos>:<row>` plus `:d` / `:c` for the two halves of a primary
/// key change. Snapshot rows: `<source name>:snap:<file>:<pos>:<db>.<table>:<key json>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub String);

impl EventId {
    /// The id of row `row` of the rows event at `position`; `part` distinguishes the delete and
    /// create halves of a primary-key change (`None` for an ordinary change).
    pub fn streaming(
        source: &str,
        position: &BinlogPosition,
        row: u32,
        part: Option<char>,
    ) -> Self {
        match part {
            Some(p) => EventId(format!(
                "{source}:{}:{}:{row}:{p}",
                position.file, position.pos
            )),
            None => EventId(format!("{source}:{}:{}:{row}", position.file, position.pos)),
        }
    }

    /// The id of a snapshot row read at `position` with primary key `key_json`.
    pub fn snapshot(source: &str, position: &BinlogPosition, table: &str, key_json: &str) -> Self {
        EventId(format!(
            "{source}:snap:{}:{}:{table}:{key_json}",
            position.file, position.pos
        ))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(file: &str, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: file.into(),
            pos,
        }
    }

    #[test]
    fn versions_order_like_the_binlog() {
        let cases = [
            // (earlier, later)
            (
                (pos("mysql-bin.000001", 400), 0),
                (pos("mysql-bin.000001", 400), 1),
            ),
            (
                (pos("mysql-bin.000001", 400), 9999),
                (pos("mysql-bin.000001", 401), 0),
            ),
            (
                (pos("mysql-bin.000001", u32::MAX as u64 + 5), 7),
                (pos("mysql-bin.000002", 4), 0),
            ),
            (
                (pos("mysql-bin.000009", 4), 0),
                (pos("mysql-bin.000010", 4), 0),
            ),
        ];
        for ((a, ra), (b, rb)) in cases {
            let va = Version::at(&a, ra).unwrap();
            let vb = Version::at(&b, rb).unwrap();
            assert!(va < vb, "{a}#{ra} must be before {b}#{rb}");
        }
    }

    #[test]
    fn version_text_round_trip() {
        let v = Version::new(42, 123_456, 7);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, format!("\"{}\"", v.0));
        let back: Version = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        assert!(Version::parse("12a").is_err());
    }

    #[test]
    fn file_seq_needs_a_numeric_suffix() {
        assert_eq!(pos("mysql-bin.000042", 4).file_seq().unwrap(), 42);
        assert!(pos("mysql-bin", 4).file_seq().is_err());
        assert!(pos("mysql-bin.abc", 4).file_seq().is_err());
    }

    #[test]
    fn event_ids_are_deterministic() {
        let p = pos("mysql-bin.000003", 1234);
        assert_eq!(
            EventId::streaming("shop", &p, 2, None).0,
            "shop:mysql-bin.000003:1234:2"
        );
        assert_eq!(
            EventId::streaming("shop", &p, 2, Some('d')).0,
            "shop:mysql-bin.000003:1234:2:d"
        );
        assert_eq!(
            EventId::snapshot("shop", &p, "shop.orders", r#"{"id":5}"#).0,
            r#"shop:snap:mysql-bin.000003:1234:shop.orders:{"id":5}"#
        );
    }
}
