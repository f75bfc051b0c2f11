//! Canonical value text: one string per value that is byte-identical on both sides exactly when
//! the two values are equal under the type mapping of `docs/type-mapping.md`.
//!
//! Most canonical forms are computed **by the databases**, as SQL expressions, so that a chunk's
//! digest can be computed next to the data and only a count and a 64-bit digest cross the wire
//! when a chunk agrees:
//!
//! | source type | canonical text | MySQL/MariaDB | PostgreSQL |
//! |---|---|---|---|
//! | integers, YEAR | decimal integer | `CAST(c AS CHAR)` (`c+0` for YEAR) | `c::text` |
//! | DECIMAL(p,s) | exactly `s` fraction digits | `CAST(c AS CHAR)` | `numeric(p,s)::text` |
//! | FLOAT, DOUBLE | shortest round-trip text of the `f32`/`f64` | Rust: [`canonical_float`] of `CAST(c AS DOUBLE)` | Rust: [`canonical_float`] of `c::text` |
//! | BIT(n) | unsigned integer | `CAST(CAST(c AS UNSIGNED) AS CHAR)` | `bit` → bigint (+2^64 if negative) |
//! | DATE | `YYYY-MM-DD`, zero date → NULL | `DATE_FORMAT` | `to_char` |
//! | DATETIME(n), TIMESTAMP(n) | `YYYY-MM-DDTHH:MM:SS.ffffff`, both sessions in UTC; zero → NULL | `DATE_FORMAT(…%f)` | `to_char(…US)` |
//! | TIME(n) | signed total microseconds | from HOUR/MINUTE/SECOND/MICROSECOND | `extract(epoch from interval)·10⁶` |
//! | text, ENUM, SET | the UTF-8 text | `CONVERT(c USING utf8mb4)` | `c` |
//! | binary | upper-case hex | `HEX(c)` | `upper(encode(c,'hex'))` |
//! | JSON | PostgreSQL's `jsonb` output text | Rust: [`pg_jsonb_text`] of the parsed text | `c::text` |
//!
//! So a cent in a DECIMAL, a microsecond in a DATETIME(6), one character of text or one byte of
//! a BLOB changes the canonical text; `12.5` vs `12.50` cannot differ (the column's scale fixes
//! the digits); a TIMESTAMP is compared as an instant, never in a session zone.
//!
//! Floating-point text differs between the servers (`1e300` / `1e+300`, and MariaDB prints a
//! FLOAT with six digits), so FLOAT and DOUBLE are parsed and printed again in Rust on both
//! sides: the same bits give the same text.
//!
//! JSON cannot be canonicalised in both SQL dialects alike (MariaDB keeps the inserted text,
//! PostgreSQL reorders keys and reformats). PostgreSQL's `jsonb` output is already canonical
//! (keys sorted by length then bytes, fixed spacing, numbers as exact decimals), so the source
//! side is brought to the same form in Rust: parse the text as the reader does (numbers through
//! `f64`, as every JSON consumer must assume), then print it as `jsonb_out` would.
//!
//! Values are joined into one row text with a length prefix per value (`<chars>:<text>`, `-`
//! for NULL), which makes the concatenation unambiguous whatever the text contains.

use std::fmt::Write as _;

use cdc_event::ColumnType;
use serde_json::Value;

/// Quotes a MySQL identifier.
pub fn my_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a PostgreSQL identifier.
pub fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The MySQL expression of the canonical text of column `c` (quoted) of type `ty`; `None` for
/// JSON, which is canonicalised in Rust.
pub fn my_canonical(c: &str, ty: &ColumnType) -> Option<String> {
    use ColumnType::*;
    let zero_guard = |e: String| {
        format!("CASE WHEN YEAR({c}) = 0 OR MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0 THEN NULL ELSE {e} END")
    };
    Some(match ty {
        TinyInt { .. } | SmallInt { .. } | MediumInt { .. } | Int { .. } | BigInt { .. } | Decimal { .. } => format!("CAST({c} AS CHAR)"),
        Float | Double => format!("CAST({c} AS DOUBLE)"),
        Year => format!("CAST({c}+0 AS CHAR)"),
        Bit { .. } => format!("CAST(CAST({c} AS UNSIGNED) AS CHAR)"),
        Date => zero_guard(format!("DATE_FORMAT({c}, '%Y-%m-%d')")),
        DateTime { .. } | Timestamp { .. } => zero_guard(format!("DATE_FORMAT({c}, '%Y-%m-%dT%H:%i:%s.%f')")),
        Time { .. } => format!(
            "CAST(IF({c} < TIME'00:00:00', -1, 1) * ((HOUR({c}) * 3600 + MINUTE({c}) * 60 + SECOND({c})) * 1000000 + MICROSECOND({c})) AS CHAR)"
        ),
        Text { .. } | Enum { .. } | Set { .. } => format!("CONVERT({c} USING utf8mb4)"),
        Binary | Geometry => format!("HEX({c})"),
        Json => return None,
    })
}

/// Which columns are canonicalised in Rust rather than in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RustCanon {
    /// JSON: the source text through [`canonical_json`]; PostgreSQL's `jsonb` text as it is.
    Json,
    /// FLOAT: [`canonical_float`] as `f32` on both sides.
    Float32,
    /// DOUBLE: [`canonical_float`] as `f64` on both sides.
    Float64,
}

impl RustCanon {
    /// The kind for a source type, if it is canonicalised in Rust.
    pub fn of(ty: &ColumnType) -> Option<Self> {
        match ty {
            ColumnType::Json => Some(RustCanon::Json),
            ColumnType::Float => Some(RustCanon::Float32),
            ColumnType::Double => Some(RustCanon::Float64),
            _ => None,
        }
    }

    /// Canonical text of a source value's text.
    pub fn source(self, text: &str) -> String {
        match self {
            RustCanon::Json => canonical_json(text),
            RustCanon::Float32 => canonical_float(text, true),
            RustCanon::Float64 => canonical_float(text, false),
        }
    }

    /// Canonical text of a warehouse value's text.
    pub fn warehouse(self, text: &str) -> String {
        match self {
            RustCanon::Json => text.to_string(),
            RustCanon::Float32 => canonical_float(text, true),
            RustCanon::Float64 => canonical_float(text, false),
        }
    }
}

/// The shortest round-trip text of a floating-point value given in any notation (`1e+300`,
/// `1e300`, `1.100000023841858` for the FLOAT 1.1); text that is not a number stays as it is.
pub fn canonical_float(text: &str, single: bool) -> String {
    match text.trim().parse::<f64>() {
        Ok(v) if single => format!("{}", v as f32),
        Ok(v) => format!("{v}"),
        Err(_) => text.to_string(),
    }
}

/// The MySQL expression that fetches a JSON column's text.
pub fn my_json_text(c: &str) -> String {
    format!("CONVERT(CAST({c} AS CHAR) USING utf8mb4)")
}

/// The PostgreSQL expression of the canonical text of column `c` (quoted), whose source type is
/// `ty` and whose warehouse type is `pg` (`pg_type.typname`).
pub fn pg_canonical(c: &str, ty: &ColumnType, pg: &str) -> String {
    use ColumnType::*;
    match (ty, pg) {
        (Bit { .. }, "bit" | "varbit") => {
            format!("(CASE WHEN {c}::bigint < 0 THEN {c}::bigint::numeric + 18446744073709551616 ELSE {c}::bigint::numeric END)::text")
        }
        (Date, "date") => format!("to_char({c}, 'YYYY-MM-DD')"),
        (DateTime { .. } | Timestamp { .. }, "timestamp" | "timestamptz") => {
            format!("to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
        }
        (Time { .. }, "interval") => format!("(extract(epoch from {c}) * 1000000)::bigint::text"),
        (Binary | Geometry, "bytea") => format!("upper(encode({c}, 'hex'))"),
        _ => format!("{c}::text"),
    }
}

/// `<chars>:<text>` or `-` for NULL, in MySQL.
pub fn my_part(e: &str) -> String {
    format!("COALESCE(CONCAT(CHAR_LENGTH({e}), ':', {e}), '-')")
}

/// `<chars>:<text>` or `-` for NULL, in PostgreSQL.
pub fn pg_part(e: &str) -> String {
    format!("coalesce(length({e})::text || ':' || {e}, '-')")
}

/// Appends `<chars>:<text>` (or `-`) in Rust, identical to [`my_part`] / [`pg_part`].
pub fn push_part(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(b'-'),
        Some(t) => {
            let _ = write!(VecWriter(out), "{}:", t.chars().count());
            out.extend_from_slice(t.as_bytes());
        }
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The canonical text of a source JSON value given as text: what PostgreSQL prints for the
/// `jsonb` the pipeline stores. Text that is not JSON travels as a JSON string (as the reader
/// sends it).
pub fn canonical_json(text: &str) -> String {
    let v = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
    pg_jsonb_text(&v)
}

/// Prints `v` exactly as PostgreSQL's `jsonb_out` prints the `jsonb` parsed from
/// `serde_json::to_string(v)`: object keys ordered by byte length, then bytes; `", "` and `": "`
/// separators; numbers as PostgreSQL `numeric` prints them (plain decimal, scale kept, no
/// exponent); strings escaped like `escape_json`.
pub fn pg_jsonb_text(v: &Value) -> String {
    let mut out = String::new();
    write_jsonb(&mut out, v);
    out
}

fn write_jsonb(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&pg_numeric_text(&n.to_string())),
        Value::String(s) => write_json_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb(out, x);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| {
                a.len()
                    .cmp(&b.len())
                    .then_with(|| a.as_bytes().cmp(b.as_bytes()))
            });
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json_string(out, k);
                out.push_str(": ");
                write_jsonb(out, &m[k.as_str()]);
            }
            out.push('}');
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// PostgreSQL `numeric_out(numeric_in(text))` for a JSON number text: `1e2` → `100`,
/// `1.5e-7` → `0.00000015`, `100.0` → `100.0`, `-0.0` → `0.0`.
pub fn pg_numeric_text(text: &str) -> String {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mant, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let digits: String = format!("{int}{frac}");
    let shift = exp - frac.len() as i64;
    let (mut int_part, frac_part) = if shift >= 0 {
        (
            format!("{digits}{}", "0".repeat(shift as usize)),
            String::new(),
        )
    } else {
        let scale = (-shift) as usize;
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
        } else {
            digits
        };
        let cut = padded.len() - scale;
        (padded[..cut].to_string(), padded[cut..].to_string())
    };
    let trimmed = int_part.trim_start_matches('0');
    int_part = if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_string()
    };
    let zero = int_part == "0" && frac_part.bytes().all(|b| b == b'0');
    let mut out = String::new();
    if neg && !zero {
        out.push('-');
    }
    out.push_str(&int_part);
    if !frac_part.is_empty() {
        out.push('.');
        out.push_str(&frac_part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_like_postgres_numeric() {
        let cases = [
            ("1", "1"),
            ("-12", "-12"),
            ("100.0", "100.0"),
            ("1e2", "100"),
            ("1.5e-7", "0.00000015"),
            ("1e300", &format!("1{}", "0".repeat(300))),
            ("-0.0", "0.0"),
            ("0.1", "0.1"),
            ("18446744073709551615", "18446744073709551615"),
            ("1.25E+3", "1250"),
        ];
        for (input, want) in cases {
            assert_eq!(pg_numeric_text(input), want, "{input}");
        }
    }

    #[test]
    fn json_prints_like_jsonb_out() {
        // Keys by length then bytes, PostgreSQL spacing, escapes, numbers through f64.
        assert_eq!(
            canonical_json(r#"{"bb":1,"a":[1.50,true,null],"c":"x\"\n\u0001é"}"#),
            r#"{"a": [1.5, true, null], "c": "x\"\n\u0001é", "bb": 1}"#
        );
        assert_eq!(canonical_json("{}"), "{}");
        assert_eq!(canonical_json("[]"), "[]");
        assert_eq!(canonical_json("not json"), r#""not json""#);
        assert_eq!(
            pg_jsonb_text(&json!({"k": 1e20})),
            r#"{"k": 100000000000000000000}"#
        );
    }

    #[test]
    fn floats_compare_by_value_not_by_server_text() {
        assert_eq!(
            canonical_float("1e300", false),
            canonical_float("1e+300", false)
        );
        assert_eq!(
            canonical_float("1e-07", false),
            canonical_float("0.0000001", false)
        );
        assert_eq!(
            canonical_float("1.100000023841858", true),
            canonical_float("1.1", true)
        );
        assert_eq!(
            canonical_float("16777216", true),
            canonical_float("1.6777216e+07", true)
        );
        assert_ne!(
            canonical_float("0.1", false),
            canonical_float("0.10000000000000002", false)
        );
    }

    #[test]
    fn parts_are_length_prefixed_in_characters() {
        let mut out = Vec::new();
        push_part(&mut out, Some("é|x"));
        push_part(&mut out, None);
        push_part(&mut out, Some(""));
        assert_eq!(String::from_utf8(out).unwrap(), "3:é|x-0:");
    }
}
