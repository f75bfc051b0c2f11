//! Kafka message → an event ready to stage, or a tombstone to skip, or a poison message.
//!
//! Decoding borrows from the payload and parses only what applying needs: the row image that
//! identifies the row (`after`, or `before` for deletes), a few `source` fields, and the table
//! schema, which is parsed once per distinct schema text and shared ([`SchemaCache`]), because
//! every event carries it and re-building it per event would dominate the cost. The row image is
//! not built into a map: it is split into its columns' raw JSON texts ([`RawRow`], borrowed from
//! the payload) and each value is encoded from its text straight into `COPY` text, here, once,
//! so that a value that cannot be encoded is found before any SQL runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use cdc_event::{Op, TableSchema, Version};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::types::encode_copy;

/// A message as the consumer thread hands it to a partition worker.
#[derive(Debug)]
pub struct Message {
    /// Offset in the partition.
    pub offset: i64,
    /// Message key (JSON of the key columns).
    pub key: Option<Vec<u8>>,
    /// Message value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// When the consumer received it (for the apply-latency histogram).
    pub consumed_at: Instant,
}

/// A source table as events name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceTable {
    /// Source database.
    pub db: String,
    /// Source table.
    pub table: String,
}

/// A change event reduced to what staging needs.
#[derive(Debug)]
pub struct Prepared {
    /// Kafka offset.
    pub offset: i64,
    /// Deterministic event id (the processed-message id).
    pub message_id: String,
    /// Source version for the guard.
    pub version: Version,
    /// Kind of change.
    pub op: Op,
    /// Source commit time, ms since the epoch.
    pub source_ts_ms: i64,
    /// JSON of the key columns (the collapse key and the tombstone key).
    pub key: String,
    /// The source table.
    pub table: Arc<SourceTable>,
    /// Column types (shared between events with the same schema).
    pub schema: Arc<TableSchema>,
    /// The row's columns in `schema` order, `COPY`-encoded and tab-separated.
    pub row: Vec<u8>,
}

/// What a message turned out to be.
#[derive(Debug)]
pub enum Decoded {
    /// Apply it.
    Event(Prepared),
    /// The null-valued message that follows a delete (for log compaction): nothing to do.
    Tombstone,
    /// Cannot be applied; goes to the dead-letter topic with this reason.
    Poison(String),
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    source: WireSource<'a>,
    op: Op,
    #[serde(borrow)]
    schema: &'a RawValue,
}

#[derive(Deserialize)]
struct WireSource<'a> {
    ts_ms: i64,
    #[serde(borrow)]
    db: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    cdc_version: Version,
}

/// Parsed schemas and table names by their exact text, per worker.
///
/// Consecutive events almost always carry the same schema text and table, so the last hit of
/// each is compared first (a `memcmp`), before hashing the ~1 kB schema text.
#[derive(Default)]
pub struct SchemaCache {
    schemas: HashMap<Box<str>, Arc<TableSchema>>,
    tables: HashMap<(Box<str>, Box<str>), Arc<SourceTable>>,
    last_schema: Option<(Box<str>, Arc<TableSchema>)>,
    last_table: Option<Arc<SourceTable>>,
}

impl SchemaCache {
    fn schema(&mut self, raw: &str) -> Result<Arc<TableSchema>, String> {
        if let Some((text, s)) = &self.last_schema {
            if **text == *raw {
                return Ok(s.clone());
            }
        }
        let s = match self.schemas.get(raw) {
            Some(s) => s.clone(),
            None => {
                let s: TableSchema =
                    serde_json::from_str(raw).map_err(|e| format!("invalid schema: {e}"))?;
                if self.schemas.len() > 1000 {
                    self.schemas.clear();
                }
                let s = Arc::new(s);
                self.schemas.insert(raw.into(), s.clone());
                s
            }
        };
        self.last_schema = Some((raw.into(), s.clone()));
        Ok(s)
    }

    fn table(&mut self, db: &str, table: &str) -> Arc<SourceTable> {
        if let Some(t) = &self.last_table {
            if t.db == db && t.table == table {
                return t.clone();
            }
        }
        let t = match self
            .tables
            .get(&(db.into(), table.into()) as &(Box<str>, Box<str>))
        {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(SourceTable {
                    db: db.into(),
                    table: table.into(),
                });
                self.tables.insert((db.into(), table.into()), t.clone());
                t
            }
        };
        self.last_table = Some(t.clone());
        t
    }
}

/// A row image as (column name, raw JSON value) pairs in message order, borrowed from the
/// payload: no map and no per-value allocation.
struct RawRow<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawRow<'a> {
    /// The raw value of `name`; like a JSON object parsed into a map, the last of duplicate
    /// names wins.
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Whether the image lists exactly the schema's columns in schema order (the usual case), so
    /// that column `i` is at position `i` and no name repeats.
    fn in_schema_order(&self, columns: &[cdc_event::ColumnSchema]) -> bool {
        self.0.len() == columns.len() && self.0.iter().zip(columns).all(|((n, _), c)| *n == c.name)
    }
}

impl<'de> Deserialize<'de> for RawRow<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = RawRow<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRow<'de>, A::Error> {
                let mut cols = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((name, value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    cols.push((name.0, value));
                }
                Ok(RawRow(cols))
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// A column name, borrowed unless it had escapes (`Cow<str>`'s own `Deserialize` always copies).
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

/// The key columns of `row` as a JSON object in key order, byte for byte what
/// [`cdc_event::key_json`] makes of the parsed row (it is stored in the tombstone table, so it
/// must not depend on how it was computed): a plain integer or a string without escapes is
/// already in serde_json's output form; anything else is parsed and re-serialised.
fn key_json(key_columns: &[String], row: &RawRow<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(32);
    out.push('{');
    for (i, name) in key_columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let raw = row
            .get(name)
            .ok_or_else(|| format!("key column {name:?} is missing from the row image"))?;
        out.push_str(&serde_json::to_string(name).map_err(|e| e.to_string())?);
        out.push(':');
        let text = raw.get();
        if canonical(text) {
            out.push_str(text);
        } else {
            let v: Value =
                serde_json::from_str(text).map_err(|e| format!("key column {name:?}: {e}"))?;
            out.push_str(&serde_json::to_string(&v).map_err(|e| e.to_string())?);
        }
    }
    out.push('}');
    Ok(out)
}

/// Whether serde_json would write the JSON literal `text` back unchanged after parsing it into a
/// `Value`: an integer within `i64`/`u64` (not `-0`, which becomes a float), or a string without
/// escapes (it then holds no character that serde_json escapes).
fn canonical(text: &str) -> bool {
    let b = text.as_bytes();
    match b.first() {
        Some(b'"') => !text.contains('\\'),
        Some(b'-' | b'0'..=b'9') => {
            let digits = b.strip_prefix(b"-").unwrap_or(b);
            !digits.is_empty()
                && digits.iter().all(u8::is_ascii_digit)
                && text != "-0"
                && (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok())
        }
        _ => false,
    }
}

/// Decodes one message.
pub fn decode(cache: &mut SchemaCache, offset: i64, payload: Option<&[u8]>) -> Decoded {
    let Some(payload) = payload else {
        return Decoded::Tombstone;
    };
    match decode_event(cache, offset, payload) {
        Ok(p) => Decoded::Event(p),
        Err(reason) => Decoded::Poison(reason),
    }
}

fn decode_event(cache: &mut SchemaCache, offset: i64, payload: &[u8]) -> Result<Prepared, String> {
    let wire: Wire<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("invalid change event: {e}"))?;
    let schema = cache.schema(wire.schema.get())?;
    if schema.primary_key.is_empty() {
        return Err(format!(
            "table {}.{} has no primary key in the event schema; the applier needs a key to upsert",
            wire.source.db, wire.source.table
        ));
    }
    if wire.source.event_id.is_empty() {
        return Err("source.event_id is empty".into());
    }
    let image = match wire.op {
        Op::Delete => wire.before.ok_or("a delete without a before image")?,
        _ => wire
            .after
            .ok_or("a create/update/read without an after image")?,
    };
    let row: RawRow<'_> = serde_json::from_str(image.get())
        .map_err(|e| format!("row image is not a JSON object: {e}"))?;
    let key = key_json(&schema.primary_key, &row)?;
    let in_order = row.in_schema_order(&schema.columns);
    let mut encoded = Vec::with_capacity(image.get().len());
    for (i, col) in schema.columns.iter().enumerate() {
        if i > 0 {
            encoded.push(b'\t');
        }
        let raw = if in_order {
            Some(row.0[i].1)
        } else {
            row.get(&col.name)
        };
        let raw = raw.map_or("null", |v| v.get());
        encode_copy(&mut encoded, &col.name, &col.ty, raw).map_err(|e| e.to_string())?;
    }
    Ok(Prepared {
        offset,
        message_id: wire.source.event_id.into_owned(),
        version: wire.source.cdc_version,
        op: wire.op,
        source_ts_ms: wire.source.ts_ms,
        key,
        table: cache.table(&wire.source.db, &wire.source.table),
        schema,
        row: encoded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"columns":[{"name":"id","type":"int"},{"name":"note","type":"text"}],"primary_key":["id"]}"#;

    fn msg(op: &str, before: &str, after: &str) -> String {
        format!(
            r#"{{"before":{before},"after":{after},"op":"{op}","ts_ms":1,"schema":{SCHEMA},
            "source":{{"version":"0","connector":"mariadb","name":"s","ts_ms":1000,"snapshot":"false",
            "db":"shop","table":"t","server_id":1,"file":"b.000001","pos":4,"row":0,
            "event_id":"s:b.000001:4:0","cdc_version":"12345"}}}}"#
        )
    }

    #[test]
    fn decodes_and_classifies() {
        let mut cache = SchemaCache::default();
        let ok = msg("c", "null", r#"{"id":7,"note":"a\tb"}"#);
        match decode(&mut cache, 3, Some(ok.as_bytes())) {
            Decoded::Event(p) => {
                assert_eq!(p.key, r#"{"id":7}"#);
                assert_eq!(p.row, b"7\ta\\tb");
                assert_eq!(p.version, Version(12345));
                assert_eq!(p.message_id, "s:b.000001:4:0");
            }
            other => panic!("{other:?}"),
        }
        let del = msg("d", r#"{"id":8,"note":null}"#, "null");
        assert!(
            matches!(decode(&mut cache, 4, Some(del.as_bytes())), Decoded::Event(p) if p.row == b"8\t\\N")
        );
        assert!(matches!(decode(&mut cache, 5, None), Decoded::Tombstone));
        let cases = [
            ("not json".to_string(), "invalid change event"),
            (msg("x", "null", "{}"), "invalid change event"),
            (msg("c", "null", r#"{"note":"x"}"#), "key column \"id\""),
            (msg("d", "null", r#"{"id":1}"#), "without a before image"),
            (msg("c", "null", r#"{"id":"seven"}"#), "column \"id\""),
        ];
        for (m, want) in cases {
            match decode(&mut cache, 6, Some(m.as_bytes())) {
                Decoded::Poison(r) => assert!(r.contains(want), "{r}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
