//! Source column types → PostgreSQL types, and event values → `COPY` text format.
//!
//! The mapping is lossless: every value the source can hold has exactly one PostgreSQL value
//! that reads back equal (see `docs/type-mapping.md`). Values are encoded straight from the
//! event's JSON into PostgreSQL's `COPY ... FROM STDIN` text format, so PostgreSQL's own input
//! functions parse them into the staging table's typed columns; a value PostgreSQL rejects
//! surfaces as a data error (SQLSTATE class 22) and the batch is retried row by row to isolate it.

use std::borrow::Cow;

use base64::Engine;
use cdc_event::ColumnType;

/// The PostgreSQL type of a column of source type `ty`.
pub fn pg_type(ty: &ColumnType) -> String {
    use ColumnType::*;
    match ty {
        TinyInt { .. } => "smallint".into(),
        SmallInt { unsigned: false } => "smallint".into(),
        SmallInt { unsigned: true } => "integer".into(),
        MediumInt { .. } => "integer".into(),
        Int { unsigned: false } => "integer".into(),
        Int { unsigned: true } => "bigint".into(),
        BigInt { unsigned: false } => "bigint".into(),
        BigInt { unsigned: true } => "numeric(20,0)".into(),
        Decimal { precision, scale } => format!("numeric({},{})", (*precision).max(1), scale),
        Float => "real".into(),
        Double => "double precision".into(),
        Bit { bits } => format!("bit({})", (*bits).clamp(1, 64)),
        Date => "date".into(),
        DateTime { fsp } => format!("timestamp({}) without time zone", (*fsp).min(6)),
        Timestamp { fsp } => format!("timestamp({}) with time zone", (*fsp).min(6)),
        Time { fsp } => format!("interval({})", (*fsp).min(6)),
        Year => "smallint".into(),
        Text { .. } | Enum { .. } | Set { .. } => "text".into(),
        Binary | Geometry => "bytea".into(),
        Json => "jsonb".into(),
    }
}

/// A value that cannot be encoded for its column type (the message goes to the dead-letter
/// topic).
#[derive(Debug, thiserror::Error)]
#[error("column {column:?}: {problem}")]
pub struct EncodeError {
    /// The column.
    pub column: String,
    /// What is wrong with the value.
    pub problem: String,
}

/// Appends the value of a column of type `ty`, given as its raw JSON text `raw` (borrowed from
/// the message), to `out` in `COPY` text format (no delimiter). JSON `null` becomes `\N`.
///
/// Working on the raw text instead of a parsed `serde_json::Value` avoids a map and a `String`
/// per value: a number is passed on as the literal the reader wrote (so a DECIMAL or DOUBLE
/// literal reaches PostgreSQL's input function without an intermediate `f64`), and a string
/// without escapes is copied as is, because a JSON string cannot hold the raw control characters
/// or the backslash that `COPY` text would need escaped. Only strings with escapes are unescaped.
pub fn encode_copy(
    out: &mut Vec<u8>,
    column: &str,
    ty: &ColumnType,
    raw: &str,
) -> Result<(), EncodeError> {
    let err = |problem: String| EncodeError {
        column: column.to_string(),
        problem,
    };
    let kind = raw.as_bytes().first().copied().unwrap_or(b'n');
    let is_number = kind == b'-' || kind.is_ascii_digit();
    match (ty, kind) {
        (_, b'n') if raw == "null" => out.extend_from_slice(b"\\N"),
        (ColumnType::Json, _) => {
            // The value's own JSON text; `jsonb` normalises it. Whitespace and backslashes are
            // escaped for `COPY`.
            escape_into(out, raw);
        }
        (ColumnType::Binary | ColumnType::Geometry, b'"') => {
            let b64 = json_str(raw).map_err(|e| err(e.to_string()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| err(format!("not base64: {e}")))?;
            // bytea hex input `\x..`, with the backslash escaped for COPY.
            out.extend_from_slice(b"\\\\x");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in bytes {
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        (ColumnType::Bit { bits }, _) if is_number => {
            let v: u64 = raw
                .parse()
                .map_err(|_| err(format!("BIT value {raw} is not an unsigned integer")))?;
            let bits = (*bits).clamp(1, 64) as usize;
            if bits < 64 && v >> bits != 0 {
                return Err(err(format!(
                    "BIT({bits}) value {v} has more than {bits} bits"
                )));
            }
            use std::io::Write;
            let _ = write!(out, "{v:0bits$b}");
        }
        (ColumnType::Float | ColumnType::Double, b'"')
            if matches!(raw, "\"NaN\"" | "\"Infinity\"" | "\"-Infinity\"") =>
        {
            out.extend_from_slice(&raw.as_bytes()[1..raw.len() - 1])
        }
        (
            ColumnType::TinyInt { .. }
            | ColumnType::SmallInt { .. }
            | ColumnType::MediumInt { .. }
            | ColumnType::Int { .. }
            | ColumnType::BigInt { .. }
            | ColumnType::Year
            | ColumnType::Float
            | ColumnType::Double
            | ColumnType::Decimal { .. },
            _,
        ) if is_number => {
            // A JSON number literal (validated by the parser) is also valid PostgreSQL numeric
            // input; one that does not fit the column is rejected there as a data error.
            out.extend_from_slice(raw.as_bytes());
        }
        (ColumnType::Decimal { .. }, b'"') => {
            let s = json_str(raw).map_err(|e| err(e.to_string()))?;
            if s.is_empty()
                || !s.bytes().all(|b| {
                    b.is_ascii_digit()
                        || b == b'.'
                        || b == b'-'
                        || b == b'+'
                        || b == b'e'
                        || b == b'E'
                })
            {
                return Err(err(format!("{s:?} is not a decimal number")));
            }
            out.extend_from_slice(s.as_bytes());
        }
        (
            ColumnType::Date
            | ColumnType::DateTime { .. }
            | ColumnType::Timestamp { .. }
            | ColumnType::Time { .. }
            | ColumnType::Text { .. }
            | ColumnType::Enum { .. }
            | ColumnType::Set { .. },
            b'"',
        ) => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains('\\') {
                escape_into(out, &json_str(raw).map_err(|e| err(e.to_string()))?);
            } else {
                // No escapes: the text is the value, and it holds nothing `COPY` must escape.
                out.extend_from_slice(inner.as_bytes());
            }
        }
        (ty, _) => return Err(err(format!("a {} value cannot hold {raw}", type_word(ty)))),
    }
    Ok(())
}

/// The value of the JSON string literal `raw`, borrowed when it has no escapes.
fn json_str(raw: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    let inner = &raw[1..raw.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(inner))
    }
}

fn type_word(ty: &ColumnType) -> &'static str {
    use ColumnType::*;
    match ty {
        TinyInt { .. } | SmallInt { .. } | MediumInt { .. } | Int { .. } | BigInt { .. } | Year => {
            "integer"
        }
        Decimal { .. } => "decimal",
        Float | Double => "floating-point",
        Bit { .. } => "BIT",
        Date | DateTime { .. } | Timestamp { .. } | Time { .. } => "temporal",
        Text { .. } | Enum { .. } | Set { .. } => "text",
        Binary | Geometry => "binary (base64)",
        Json => "JSON",
    }
}

/// Appends `s` escaped for the `COPY` text format.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t'))
    {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

/// Quotes a PostgreSQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn enc(ty: ColumnType, v: Value) -> Result<String, EncodeError> {
        let mut out = Vec::new();
        encode_copy(&mut out, "c", &ty, &serde_json::to_string(&v).unwrap())?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn mapping_is_exact() {
        use ColumnType::*;
        let cases = [
            (BigInt { unsigned: true }, "numeric(20,0)"),
            (Int { unsigned: true }, "bigint"),
            (TinyInt { unsigned: true }, "smallint"),
            (
                Decimal {
                    precision: 65,
                    scale: 30,
                },
                "numeric(65,30)",
            ),
            (DateTime { fsp: 6 }, "timestamp(6) without time zone"),
            (Timestamp { fsp: 3 }, "timestamp(3) with time zone"),
            (Time { fsp: 0 }, "interval(0)"),
            (Bit { bits: 64 }, "bit(64)"),
            (Json, "jsonb"),
            (Binary, "bytea"),
            (Enum { values: vec![] }, "text"),
            (Year, "smallint"),
        ];
        for (ty, pg) in cases {
            assert_eq!(pg_type(&ty), pg, "{ty:?}");
        }
    }

    #[test]
    fn values_encode_for_copy() {
        use ColumnType::*;
        let ones = "1".repeat(64);
        let cases: Vec<(ColumnType, Value, &str)> = vec![
            (
                Text { max_len: None },
                json!("a\tb\\c\nd"),
                "a\\tb\\\\c\\nd",
            ),
            (Text { max_len: None }, Value::Null, "\\N"),
            (
                BigInt { unsigned: true },
                json!(18446744073709551615u64),
                "18446744073709551615",
            ),
            (
                Decimal {
                    precision: 12,
                    scale: 2,
                },
                json!("-12.50"),
                "-12.50",
            ),
            (Binary, json!("AP8="), "\\\\x00ff"),
            (Bit { bits: 5 }, json!(5), "00101"),
            (Bit { bits: 64 }, json!(u64::MAX), &ones),
            (Json, json!({"a": "x\\y"}), "{\"a\":\"x\\\\\\\\y\"}"),
            (Time { fsp: 0 }, json!("-838:59:59"), "-838:59:59"),
            (Double, json!(1.5e300), "1.5e+300"),
            (Text { max_len: None }, json!("plain é"), "plain é"),
            (
                Text { max_len: None },
                json!("q\"uote\u{1}"),
                "q\"uote\u{1}",
            ),
            (Float, json!("NaN"), "NaN"),
            (Json, json!("s"), "\"s\""),
        ];
        for (ty, v, want) in cases {
            assert_eq!(enc(ty.clone(), v.clone()).unwrap(), want, "{ty:?} {v}");
        }
        // A number literal reaches PostgreSQL as written, with no `f64` in between.
        let mut out = Vec::new();
        encode_copy(
            &mut out,
            "c",
            &Decimal {
                precision: 30,
                scale: 0,
            },
            "123456789012345678901234567890",
        )
        .unwrap();
        assert_eq!(out, b"123456789012345678901234567890");
    }

    #[test]
    fn wrong_values_are_rejected() {
        use ColumnType::*;
        assert!(enc(Int { unsigned: false }, json!("12")).is_err());
        assert!(enc(Binary, json!("not base64!")).is_err());
        assert!(enc(Bit { bits: 3 }, json!(8)).is_err());
        assert!(enc(
            Decimal {
                precision: 5,
                scale: 0
            },
            json!("1;drop")
        )
        .is_err());
        assert!(enc(Text { max_len: None }, json!({"a": 1})).is_err());
        assert!(enc(Bit { bits: 8 }, json!(1.5)).is_err());
        assert!(enc(Bit { bits: 8 }, json!(-1)).is_err());
        assert!(enc(Double, json!("1.5")).is_err());
        assert!(enc(Date, json!(20261128)).is_err());
    }
}
