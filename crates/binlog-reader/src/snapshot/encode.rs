//! Snapshot rows → the same key and value bytes the stream produces.
//!
//! The `SELECT` runs over the binary protocol in a session with `SET NAMES utf8mb4` and
//! `time_zone = '+00:00'`, so the server sends exact floats, integers as integers, text already
//! converted to UTF-8 (latin1 columns included), TIMESTAMP in UTC, DECIMAL as its exact text with
//! `scale` digits, ENUM/SET as labels and BINARY(n) with its padding. Each value is then written
//! with the stream decoder's own writers (`decode::write_datetime`, `write_text`, ...), into the
//! same [`Image`] structure, so the key is cut out of the row image exactly as for streamed rows.
//! The integration test `snapshot_rows_equal_streamed_rows` compares both paths value for value.

use std::io::Write;

use cdc_event::CONNECTOR_VERSION;
use mysql_async::Value;

use crate::charset::Charset;
use crate::config::ZeroDates;
use crate::decode::{
    base64_into, frac, write_datetime, write_json, write_text, write_zero, DecodeError, Image,
};
use crate::table::{Column, Kind, TableInfo};

fn err(col: &Column, v: &Value) -> DecodeError {
    DecodeError {
        column: col.name.clone(),
        problem: format!("unexpected value {v:?} from the snapshot SELECT"),
    }
}

/// Writes one row (values in table column order) as a JSON object into `out`.
pub(crate) fn encode_row(
    table: &TableInfo,
    values: &[Value],
    zero: ZeroDates,
    out: &mut Image,
) -> Result<(), DecodeError> {
    out.json.clear();
    out.spans.clear();
    out.json.push(b'{');
    for (i, col) in table.columns.iter().enumerate() {
        if i > 0 {
            out.json.push(b',');
        }
        out.json.extend_from_slice(col.name_json.as_bytes());
        let start = out.json.len();
        let v = values.get(i).unwrap_or(&Value::NULL);
        encode_value(col, v, zero, &mut out.json)?;
        out.spans.push((start, out.json.len()));
    }
    out.json.push(b'}');
    Ok(())
}

fn encode_value(
    col: &Column,
    v: &Value,
    zero: ZeroDates,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    if matches!(v, Value::NULL) {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    match (&col.kind, v) {
        (Kind::Int { .. } | Kind::Year, Value::Int(i)) => write_json(out, i),
        (Kind::Int { .. } | Kind::Year, Value::UInt(u)) => write_json(out, u),
        (Kind::Float, Value::Float(f)) => {
            if f.is_finite() {
                write_json(out, f)
            } else {
                out.extend_from_slice(b"null")
            }
        }
        (Kind::Float, Value::Double(d)) => {
            let f = *d as f32;
            if f.is_finite() {
                write_json(out, &f)
            } else {
                out.extend_from_slice(b"null")
            }
        }
        (Kind::Double, Value::Double(d)) => {
            if d.is_finite() {
                write_json(out, d)
            } else {
                out.extend_from_slice(b"null")
            }
        }
        (Kind::Decimal { .. }, Value::Bytes(b)) => {
            let s = std::str::from_utf8(b).map_err(|_| err(col, v))?;
            if !s
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b'.' || c == b'-')
            {
                return Err(err(col, v));
            }
            out.push(b'"');
            out.extend_from_slice(b);
            out.push(b'"');
        }
        (Kind::Bit { .. }, Value::Bytes(b)) => {
            let n = b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64);
            write_json(out, &n);
        }
        (Kind::Bit { .. }, Value::Int(i)) => write_json(out, &(*i as u64)),
        (Kind::Bit { .. }, Value::UInt(u)) => write_json(out, u),
        (Kind::Date, Value::Date(y, m, d, ..)) => {
            if *y == 0 || *m == 0 || *d == 0 {
                write_zero(out, zero, &format!("{y:04}-{m:02}-{d:02}"));
            } else {
                let _ = write!(out, "\"{y:04}-{m:02}-{d:02}\"");
            }
        }
        (Kind::DateTime { fsp }, Value::Date(y, mo, d, h, mi, s, us)) => {
            write_datetime(out, *y, *mo, *d, *h, *mi, *s, *us, *fsp, zero)
        }
        (Kind::Timestamp { fsp }, Value::Date(y, mo, d, h, mi, s, us)) => {
            if *y == 0 && *mo == 0 && *d == 0 {
                write_zero(out, zero, "0000-00-00T00:00:00");
            } else {
                let _ = write!(out, "\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
                frac(out, *us, *fsp);
                out.extend_from_slice(b"Z\"");
            }
        }
        (Kind::Time { fsp }, Value::Time(neg, days, h, m, s, us)) => {
            let hours = days * 24 + *h as u32;
            let sign = if *neg { "-" } else { "" };
            let _ = write!(out, "\"{sign}{hours:02}:{m:02}:{s:02}");
            frac(out, *us, *fsp);
            out.push(b'"');
        }
        (
            Kind::VarString { charset, .. }
            | Kind::FixedString { charset, .. }
            | Kind::Blob { charset, .. },
            Value::Bytes(b),
        ) => {
            // The session converts every text column to utf8mb4; `binary` stays bytes.
            let cs = if *charset == Charset::Binary {
                Charset::Binary
            } else {
                Charset::Utf8
            };
            write_text(out, b, cs, None, col)?;
        }
        (Kind::JsonText { .. } | Kind::Json { .. }, Value::Bytes(b)) => {
            match serde_json::from_slice::<serde_json::Value>(b) {
                Ok(j) => write_json(out, &j),
                Err(_) => write_text(out, b, Charset::Utf8, None, col)?,
            }
        }
        (Kind::Enum { .. } | Kind::Set { .. }, Value::Bytes(b)) => {
            write_text(out, b, Charset::Utf8, None, col)?
        }
        (Kind::Geometry { .. }, Value::Bytes(b)) => {
            out.push(b'"');
            base64_into(out, b);
            out.push(b'"');
        }
        _ => return Err(err(col, v)),
    }
    Ok(())
}

/// The facts shared by every event of one chunk.
pub(crate) struct ChunkCtx<'a> {
    /// `"shop"` (JSON-escaped source name).
    pub name_json: &'a str,
    /// `mariadb` or `mysql`.
    pub connector: &'a str,
    /// `"db":"…","table":"…"`.
    pub db_table_json: &'a str,
    /// Source server id.
    pub server_id: u32,
    /// Read time of the chunk, ms since the epoch.
    pub ts_ms: i64,
    /// Binlog file of the chunk's read view.
    pub file: &'a str,
    /// Binlog position of the chunk's read view.
    pub pos: u64,
    /// The chunk's version, decimal text.
    pub version: &'a str,
}

/// Builds a snapshot event envelope, field for field as `cdc_event::ChangeEvent` serialises
/// (and as the stream writes it), with `op = "r"`, `before = null`, `gtid = null`, `row = 0`.
pub(crate) fn envelope(
    out: &mut Vec<u8>,
    ctx: &ChunkCtx<'_>,
    table: &TableInfo,
    after: &Image,
    event_id: &str,
    last: bool,
    now_ms: i64,
) {
    out.clear();
    out.extend_from_slice(b"{\"before\":null,\"after\":");
    out.extend_from_slice(&after.json);
    let _ = write!(
        out,
        ",\"source\":{{\"version\":\"{CONNECTOR_VERSION}\",\"connector\":\"{}\",\"name\":{},\"ts_ms\":{},\"snapshot\":\"{}\",{},\"server_id\":{},\"gtid\":null,\"file\":",
        ctx.connector,
        ctx.name_json,
        ctx.ts_ms,
        if last { "last" } else { "true" },
        ctx.db_table_json,
        ctx.server_id,
    );
    write_json(out, ctx.file);
    let _ = write!(out, ",\"pos\":{},\"row\":0,\"event_id\":", ctx.pos);
    write_json(out, event_id);
    let _ = write!(
        out,
        ",\"cdc_version\":\"{}\"}},\"op\":\"r\",\"ts_ms\":{now_ms},\"schema\":",
        ctx.version
    );
    out.extend_from_slice(table.schema_json.as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_event::{
        BinlogPosition, ChangeEvent, ColumnSchema, ColumnType, EventId, Op, SnapshotMarker,
        TableId, TableSchema, Version,
    };
    use std::sync::Arc;

    fn table() -> TableInfo {
        let cols = [
            (
                "id",
                Kind::Int {
                    bytes: 8,
                    unsigned: true,
                },
                ColumnType::BigInt { unsigned: true },
            ),
            (
                "amount",
                Kind::Decimal {
                    precision: 12,
                    scale: 2,
                },
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            (
                "at",
                Kind::DateTime { fsp: 3 },
                ColumnType::DateTime { fsp: 3 },
            ),
            (
                "ts",
                Kind::Timestamp { fsp: 0 },
                ColumnType::Timestamp { fsp: 0 },
            ),
            ("t", Kind::Time { fsp: 1 }, ColumnType::Time { fsp: 1 }),
            (
                "note",
                Kind::VarString {
                    prefix: 0,
                    charset: Charset::Latin1,
                },
                ColumnType::Text { max_len: None },
            ),
            (
                "raw",
                Kind::Blob {
                    prefix: 0,
                    charset: Charset::Binary,
                },
                ColumnType::Binary,
            ),
            ("doc", Kind::JsonText { prefix: 0 }, ColumnType::Json),
            ("b", Kind::Bit { bits: 9 }, ColumnType::Bit { bits: 9 }),
            ("d", Kind::Date, ColumnType::Date),
        ];
        let columns: Vec<Column> = cols
            .iter()
            .map(|(n, k, _)| Column {
                name: n.to_string(),
                name_json: format!("\"{n}\":"),
                kind: k.clone(),
            })
            .collect();
        let schema = Arc::new(TableSchema {
            columns: cols
                .iter()
                .map(|(n, _, t)| ColumnSchema {
                    name: n.to_string(),
                    ty: t.clone(),
                    nullable: true,
                })
                .collect(),
            primary_key: vec!["id".into()],
        });
        TableInfo {
            id: TableId::new("shop", "orders"),
            label: "shop.orders".into(),
            included: true,
            columns,
            key: vec![0],
            schema_json: serde_json::to_string(&*schema).unwrap(),
            schema,
        }
    }

    #[test]
    fn values_encode_as_the_stream_does_and_the_envelope_parses() {
        let t = table();
        let values = vec![
            Value::UInt(18446744073709551615),
            Value::Bytes(b"-12.50".to_vec()),
            Value::Date(2026, 11, 28, 9, 12, 13, 123_456),
            Value::Date(2026, 1, 2, 3, 4, 5, 0),
            Value::Time(true, 1, 2, 3, 4, 500_000),
            Value::Bytes("café".as_bytes().to_vec()),
            Value::Bytes(vec![0, 255]),
            Value::Bytes(br#"{"a": [1, 2.5]}"#.to_vec()),
            Value::Bytes(vec![1, 1]),
            Value::Date(0, 0, 0, 0, 0, 0, 0),
        ];
        let mut img = Image::default();
        encode_row(&t, &values, ZeroDates::Null, &mut img).unwrap();
        let row: serde_json::Value = serde_json::from_slice(&img.json).unwrap();
        assert_eq!(
            row,
            serde_json::json!({"id": 18446744073709551615u64, "amount": "-12.50", "at": "2026-11-28T09:12:13.123",
                "ts": "2026-01-02T03:04:05Z", "t": "-26:03:04.5", "note": "café", "raw": "AP8=",
                "doc": {"a": [1, 2.5]}, "b": 257, "d": null})
        );
        assert_eq!(img.key(&t), br#"{"id":18446744073709551615}"#);

        let pos = BinlogPosition {
            file: "mysql-bin.000007".into(),
            pos: 4711,
        };
        let version = Version::at(&pos, 0).unwrap();
        let id = EventId::snapshot(
            "shop",
            &pos,
            "shop.orders",
            r#"{"id":18446744073709551615}"#,
        );
        let ctx = ChunkCtx {
            name_json: "\"shop\"",
            connector: "mariadb",
            db_table_json: "\"db\":\"shop\",\"table\":\"orders\"",
            server_id: 1,
            ts_ms: 5,
            file: &pos.file,
            pos: pos.pos,
            version: &version.to_string(),
        };
        let mut out = Vec::new();
        envelope(&mut out, &ctx, &t, &img, &id.0, true, 9);
        let e: ChangeEvent = serde_json::from_slice(&out).unwrap();
        assert_eq!(e.op, Op::Read);
        assert_eq!(e.source.snapshot, SnapshotMarker::Last);
        assert_eq!(e.source.cdc_version, version);
        assert_eq!(e.source.event_id, id);
        assert_eq!(e.source.gtid, None);
        assert_eq!(e.key_json().unwrap().as_bytes(), img.key(&t).as_slice());
        assert_eq!(*e.schema, *t.schema);
    }

    #[test]
    fn unexpected_values_are_errors_not_guesses() {
        let t = table();
        let mut img = Image::default();
        let mut values = vec![Value::NULL; t.columns.len()];
        values[1] = Value::Bytes(b"12e5".to_vec());
        assert!(encode_row(&t, &values, ZeroDates::Null, &mut img).is_err());
        values[1] = Value::NULL;
        values[2] = Value::Int(5);
        assert!(encode_row(&t, &values, ZeroDates::Null, &mut img).is_err());
    }
}
