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

/// The envelope. `after` is split into its columns while the envelope is parsed (it is the
/// image of every event but deletes); `before` is only kept as text and split for deletes.
/// `schema` is optional here only for the fast path of [`decode_event`], which parses the
/// envelope with its (known) schema block cut off; a message without one is still poison.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<RawRow<'a>>,
    #[serde(borrow)]
    source: WireSource<'a>,
    op: Op,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

/// The bytes between an envelope's last member and its closing brace when that member is the
/// schema block, as the reader writes it (`...,"schema":{...}}`).
const SCHEMA_MEMBER: &[u8] = b",\"schema\":";

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
    /// The envelope without its schema block (fast path of [`decode_event`]), reused.
    scratch: Vec<u8>,
}

impl SchemaCache {
    /// When `payload` ends with `,"schema":<the last schema seen>}`, the length of what precedes
    /// that member and the parsed schema.
    ///
    /// Cutting the member off is exact: `"` cannot appear unescaped inside a JSON string, so the
    /// bytes `,"schema":` before a complete JSON value and the final `}` can only be the last
    /// member of the top-level object or of an object nested in it, and in the nested case the
    /// remainder (the prefix plus `}`) has an unclosed bracket and fails to parse, which sends
    /// the message down the slow path.
    fn known_schema_suffix(&self, payload: &[u8]) -> Option<(usize, Arc<TableSchema>)> {
        let (text, schema) = self.last_schema.as_ref()?;
        let text = text.as_bytes();
        let tail = SCHEMA_MEMBER.len() + text.len() + 1;
        if payload.len() <= tail || payload.last() != Some(&b'}') {
            return None;
        }
        let start = payload.len() - tail;
        let (member, rest) = payload[start..payload.len() - 1].split_at(SCHEMA_MEMBER.len());
        (member == SCHEMA_MEMBER && rest == text).then(|| (start, schema.clone()))
    }

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

    /// Total length of the values' JSON texts (a capacity hint for the encoded row).
    fn text_len(&self) -> usize {
        self.0.iter().map(|(_, v)| v.get().len()).sum()
    }

    /// Whether the image lists exactly the schema's columns in schema order (the usual case), so
    /// that column `i` is at position `i` and no name repeats.
    fn in_schema_order(&self, columns: &[cdc_event::ColumnSchema]) -> bool {
        self.0.len() == columns.len() && self.0.iter().zip(columns).all(|((n, _), c)| *n == c.name)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawRow<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for RowVisitor<'a> {
            type Value = RawRow<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRow<'a>, A::Error> {
                let mut cols = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((name, value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    cols.push((name.0, value));
                }
                Ok(RawRow(cols))
            }
        }
        d.deserialize_map(RowVisitor(std::marker::PhantomData))
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
    // Fast path: consecutive events almost always end with the schema block of the previous
    // one, which is about half of the message. Comparing it is a `memcmp`; parsing the rest
    // without it saves serde_json validating those bytes once more.
    if let Some((cut, schema)) = cache.known_schema_suffix(payload) {
        let mut scratch = std::mem::take(&mut cache.scratch);
        scratch.clear();
        scratch.extend_from_slice(&payload[..cut]);
        scratch.push(b'}');
        let fast = match serde_json::from_slice::<Wire<'_>>(&scratch) {
            // A second schema member would be a duplicate field: leave it to the slow path.
            Ok(wire) if wire.schema.is_none() => Some(prepare(cache, offset, wire, schema)),
            _ => None,
        };
        cache.scratch = scratch;
        if let Some(result) = fast {
            return result;
        }
    }
    let wire: Wire<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("invalid change event: {e}"))?;
    let raw_schema = wire
        .schema
        .ok_or("invalid change event: missing field `schema`")?;
    let schema = cache.schema(raw_schema.get())?;
    prepare(cache, offset, wire, schema)
}

/// The event of an envelope whose schema is `schema`.
fn prepare(
    cache: &mut SchemaCache,
    offset: i64,
    wire: Wire<'_>,
    schema: Arc<TableSchema>,
) -> Result<Prepared, String> {
    if schema.primary_key.is_empty() {
        return Err(format!(
            "table {}.{} has no primary key in the event schema; the applier needs a key to upsert",
            wire.source.db, wire.source.table
        ));
    }
    if wire.source.event_id.is_empty() {
        return Err("source.event_id is empty".into());
    }
    let row: RawRow<'_> = match wire.op {
        Op::Delete => {
            let image = wire.before.ok_or("a delete without a before image")?;
            serde_json::from_str(image.get())
                .map_err(|e| format!("row image is not a JSON object: {e}"))?
        }
        _ => wire
            .after
            .ok_or("a create/update/read without an after image")?,
    };
    let key = key_json(&schema.primary_key, &row)?;
    let in_order = row.in_schema_order(&schema.columns);
    let mut encoded = Vec::with_capacity(row.text_len() + schema.columns.len());
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

    /// As the reader writes it: the schema block last.
    fn msg_schema_last(op: &str, before: &str, after: &str, pos: u32) -> String {
        format!(
            r#"{{"before":{before},"after":{after},"source":{{"version":"0","connector":"mariadb",
            "name":"s","ts_ms":1000,"snapshot":"false","db":"shop","table":"t","server_id":1,
            "file":"b.000001","pos":{pos},"row":0,"event_id":"s:b.000001:{pos}:0","cdc_version":"{pos}"}},
            "op":"{op}","ts_ms":1,"schema":{SCHEMA}}}"#
        )
    }

    #[test]
    fn known_schema_fast_path_decodes_like_the_full_parse() {
        let cases = [
            msg_schema_last("c", "null", r#"{"id":7,"note":"a\tb \"schema\":"}"#, 10),
            msg_schema_last("u", r#"{"id":7,"note":null}"#, r#"{"note":"x","id":7}"#, 11),
            msg_schema_last("d", r#"{"id":7,"note":"y"}"#, "null", 12),
            msg_schema_last("r", "null", r#"{"id":8,"note":"z"}"#, 13),
        ];
        let mut warm = SchemaCache::default();
        // Warm the cache so that every case below takes the fast path.
        assert!(matches!(
            decode(&mut warm, 0, Some(cases[0].as_bytes())),
            Decoded::Event(_)
        ));
        for (i, m) in cases.iter().enumerate() {
            assert!(warm.known_schema_suffix(m.as_bytes()).is_some(), "case {i}");
            let fast = decode(&mut warm, 1, Some(m.as_bytes()));
            let slow = decode(&mut SchemaCache::default(), 1, Some(m.as_bytes()));
            match (fast, slow) {
                (Decoded::Event(f), Decoded::Event(s)) => {
                    assert_eq!(
                        (
                            &f.message_id,
                            f.version,
                            f.op,
                            f.source_ts_ms,
                            &f.key,
                            &f.row
                        ),
                        (
                            &s.message_id,
                            s.version,
                            s.op,
                            s.source_ts_ms,
                            &s.key,
                            &s.row
                        ),
                        "case {i}"
                    );
                    assert_eq!(f.schema, s.schema);
                }
                other => panic!("case {i}: {other:?}"),
            }
        }
        // A second schema member is a duplicate field on both paths.
        let dup = msg_schema_last("c", "null", r#"{"id":1,"note":"a"}"#, 14).replacen(
            r#""before""#,
            &format!(r#""schema":{SCHEMA},"before""#),
            1,
        );
        assert!(warm.known_schema_suffix(dup.as_bytes()).is_some());
        match decode(&mut warm, 2, Some(dup.as_bytes())) {
            Decoded::Poison(r) => assert!(r.contains("duplicate field"), "{r}"),
            other => panic!("{other:?}"),
        }
        // The schema block nested in the last member is not the envelope's: full parse, which
        // finds no schema.
        let nested = msg_schema_last("c", "null", r#"{"id":1,"note":"a"}"#, 15).replacen(
            r#","schema":"#,
            r#","x":{"schema":"#,
            1,
        ) + "}";
        assert!(warm.known_schema_suffix(nested.as_bytes()).is_none());
        match decode(&mut warm, 3, Some(nested.as_bytes())) {
            Decoded::Poison(r) => assert!(r.contains("missing field `schema`"), "{r}"),
            other => panic!("{other:?}"),
        }
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
