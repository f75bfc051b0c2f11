//! Canonical value text, in two forms.
//!
//! **Digest pieces** ([`my_piece`], [`pg_piece`], [`Piece`]) are what a chunk's digest hashes:
//! one cheap text per value, joined into a row text that splits back into its values, so equal
//! row texts mean equal rows. They only have to be *injective* (different values never print
//! alike); equal values that print differently cost a drill-down, never a wrong result. They
//! are chosen for cost (measured in `docs/benchmarks.md`): native `::text` / `CAST(… AS CHAR)`
//! instead of `to_char` / `DATE_FORMAT`, a length prefix only for text, none for JSON (a JSON
//! text has one end).
//!
//! **Drill-down values** ([`my_canonical`], [`pg_canonical`]) are compared column by column to
//! name what differs, and must be *exactly* equal when the values are equal under the type
//! mapping of `docs/type-mapping.md`:
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
//! sides, in the digest too: the same bits give the same text.
//!
//! JSON: PostgreSQL's `jsonb` output is canonical (keys sorted by length then bytes, fixed
//! spacing, numbers as exact decimals), and MySQL's JSON text has the same key order and
//! spacing, so on MySQL the digest uses the server's text. MariaDB keeps the inserted text
//! (`JSON_NORMALIZE` sorts keys by bytes, rewrites numbers as `1.0E0` and costs ~5 µs a row), so
//! the source side is brought to `jsonb`'s form in Rust: parse the text as the reader does
//! (numbers through `f64`, as every JSON consumer must assume), then print it as `jsonb_out`
//! would ([`push_canonical_json`] without allocating a value for the common documents).

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

    /// Appends [`Self::source`]`(text)` to `out` (JSON without an intermediate value).
    pub fn push_source(self, out: &mut Vec<u8>, text: &str) {
        match self {
            RustCanon::Json => push_canonical_json(out, text),
            _ => out.extend_from_slice(self.source(text).as_bytes()),
        }
    }

    /// Appends [`Self::warehouse`]`(text)` to `out`.
    pub fn push_warehouse(self, out: &mut Vec<u8>, text: &str) {
        match self {
            RustCanon::Json => out.extend_from_slice(text.as_bytes()),
            _ => out.extend_from_slice(self.warehouse(text).as_bytes()),
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

/// How one column enters a digest's row text (see [`my_piece`]); the row text is every column's
/// piece in column order, each followed by `,`.
///
/// The pieces are built so that the row text can be split back into its columns without knowing
/// the values, whichever side produced it, which is what makes equal row texts mean equal rows:
///
/// * **fixed-alphabet** values (integers, DECIMAL, BIT, YEAR, dates and times, hex) never contain
///   `,` and are never empty, so NULL is the empty piece and a piece ends at the next `,`;
/// * **text** (text, ENUM, SET) is `<chars>:<text>` or `-` for NULL: the length says where it ends,
///   whatever the text contains, and `0:` (empty) differs from `-` (NULL);
/// * **JSON** text is self-delimiting (a JSON value has exactly one end) and never empty, so NULL
///   is the empty piece;
/// * **binary** is `x` followed by upper-case hex (`x` alone is the empty value, NULL is empty).
///
/// These forms are cheaper than the per-column canonical text the drill-down uses (no `to_char`,
/// no `DATE_FORMAT`, one length prefix only where a value can contain `,`), and they need only
/// be *injective*: equal pieces must mean equal values. Equal values that print differently
/// (a MySQL JSON double in exponent form) only cost a drill-down, which compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Never empty, never contains `,`; NULL is empty.
    Fixed,
    /// `<chars>:<text>`, NULL is `-`.
    Counted,
    /// A JSON text, NULL is empty.
    Json,
}

/// The MySQL/MariaDB expression of column `c`'s digest piece (never NULL), or `None` when the
/// column is finished in Rust: FLOAT and DOUBLE always, JSON unless `json_in_sql` (MySQL's JSON
/// text has PostgreSQL's key order and spacing; MariaDB keeps the inserted text).
pub fn my_piece(c: &str, ty: &ColumnType, json_in_sql: bool) -> Option<String> {
    use ColumnType::*;
    // PostgreSQL prints fractional seconds without trailing zeros (and without the point when
    // they are all zero); MySQL prints exactly `fsp` digits. Trimming on the MySQL side is
    // cheaper than `to_char` on the PostgreSQL side, and only applies when there is a point.
    // Zero dates are left as they are: `0000-00-00` (or a zero month or day) is a text
    // PostgreSQL cannot print, so such a row differs in the digest and the drill-down, which
    // maps zero dates to NULL like the reader, decides (cheaper than a guard on every row).
    let datetime = |fsp: u8| {
        let t = format!("CAST({c} AS CHAR)");
        if fsp > 0 {
            format!("TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {t}))")
        } else {
            t
        }
    };
    Some(match ty {
        TinyInt { .. }
        | SmallInt { .. }
        | MediumInt { .. }
        | Int { .. }
        | BigInt { .. }
        | Decimal { .. } => {
            format!("IFNULL({c}, '')")
        }
        Year => format!("IFNULL({c}+0, '')"),
        Bit { .. } => format!("IFNULL(CAST({c} AS UNSIGNED), '')"),
        Date => format!("IFNULL(CAST({c} AS CHAR), '')"),
        DateTime { fsp } | Timestamp { fsp } => format!("IFNULL({}, '')", datetime(*fsp)),
        Time { .. } => format!("IFNULL({}, '')", my_canonical(c, ty)?),
        Text { .. } | Enum { .. } | Set { .. } => {
            format!("IFNULL(CONCAT(CHAR_LENGTH({c}), ':', CONVERT({c} USING utf8mb4)), '-')")
        }
        Binary | Geometry => format!("IFNULL(CONCAT('x', HEX({c})), '')"),
        Json if json_in_sql => format!("IFNULL({}, '')", my_json_text(c)),
        Json | Float | Double => return None,
    })
}

/// The PostgreSQL expression of column `c`'s digest piece (never NULL), matching [`my_piece`];
/// `None` for FLOAT and DOUBLE, which are finished in Rust. The session must use `DateStyle`
/// ISO and time zone UTC (the reconciler's connections do).
pub fn pg_piece(c: &str, ty: &ColumnType, pg: &str) -> Option<String> {
    use ColumnType::*;
    Some(match (ty, pg) {
        (Float | Double, _) => return None,
        (Text { .. } | Enum { .. } | Set { .. }, _) => {
            format!("coalesce(length({c}::text)::text || ':' || {c}::text, '-')")
        }
        (Binary | Geometry, "bytea") => format!("coalesce('x' || upper(encode({c}, 'hex')), '')"),
        // In UTC a timestamptz prints as `… +00`; the source prints the same instant without it.
        (DateTime { .. } | Timestamp { .. }, "timestamptz") => {
            format!("coalesce(left({c}::text, -3), '')")
        }
        (DateTime { .. } | Timestamp { .. } | Date, "timestamp" | "date") => {
            format!("coalesce({c}::text, '')")
        }
        _ => format!("coalesce({}, '')", pg_canonical(c, ty, pg)),
    })
}

/// Which kind of piece a column of type `ty` makes.
pub fn piece_kind(ty: &ColumnType) -> Piece {
    use ColumnType::*;
    match ty {
        Text { .. } | Enum { .. } | Set { .. } => Piece::Counted,
        Json => Piece::Json,
        _ => Piece::Fixed,
    }
}

/// The canonical text of a source JSON value given as text: what PostgreSQL prints for the
/// `jsonb` the pipeline stores. Text that is not JSON travels as a JSON string (as the reader
/// sends it).
pub fn canonical_json(text: &str) -> String {
    let v = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
    pg_jsonb_text(&v)
}

/// Appends [`canonical_json`]`(text)` to `out`, without building a `serde_json::Value` for the
/// documents that need no decoding: strings without escapes, integers that print as they are
/// written, no duplicate keys. Anything else is handed to [`canonical_json`], which stays the
/// reference (a unit test compares the two on generated and tricky documents).
pub fn push_canonical_json(out: &mut Vec<u8>, text: &str) {
    let start = out.len();
    let b = text.as_bytes();
    let mut i = 0;
    let ok = fast_json_value(b, &mut i, out, 0).is_some() && {
        skip_ws(b, &mut i);
        i == b.len()
    };
    if !ok {
        out.truncate(start);
        out.extend_from_slice(canonical_json(text).as_bytes());
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
        *i += 1;
    }
}

/// A string without escapes or control characters: its bytes between the quotes, which is
/// also how PostgreSQL prints it.
fn fast_json_str<'a>(b: &'a [u8], i: &mut usize) -> Option<&'a [u8]> {
    if b.get(*i) != Some(&b'"') {
        return None;
    }
    let s = *i + 1;
    let mut j = s;
    while j < b.len() {
        match b[j] {
            b'"' => {
                *i = j + 1;
                return Some(&b[s..j]);
            }
            b'\\' => return None,
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
    None
}

fn fast_json_value(b: &[u8], i: &mut usize, out: &mut Vec<u8>, depth: usize) -> Option<()> {
    // serde_json refuses documents nested deeper than 128; leave those to the reference.
    if depth >= 100 {
        return None;
    }
    skip_ws(b, i);
    match *b.get(*i)? {
        b'{' => {
            *i += 1;
            // Members are printed into a scratch buffer, then copied out in jsonb key order.
            let mut scratch = Vec::with_capacity(64);
            let mut members: Vec<(&[u8], usize, usize)> = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
            } else {
                loop {
                    skip_ws(b, i);
                    let key = fast_json_str(b, i)?;
                    skip_ws(b, i);
                    if b.get(*i) != Some(&b':') {
                        return None;
                    }
                    *i += 1;
                    let from = scratch.len();
                    fast_json_value(b, i, &mut scratch, depth + 1)?;
                    members.push((key, from, scratch.len()));
                    skip_ws(b, i);
                    match b.get(*i)? {
                        b',' => *i += 1,
                        b'}' => {
                            *i += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            members.sort_by(|x, y| x.0.len().cmp(&y.0.len()).then_with(|| x.0.cmp(y.0)));
            // A repeated key keeps its last value in both serde_json and jsonb; rare enough to
            // leave to the reference.
            if members.windows(2).any(|w| w[0].0 == w[1].0) {
                return None;
            }
            out.push(b'{');
            for (n, (k, from, to)) in members.iter().enumerate() {
                if n > 0 {
                    out.extend_from_slice(b", ");
                }
                out.push(b'"');
                out.extend_from_slice(k);
                out.extend_from_slice(b"\": ");
                out.extend_from_slice(&scratch[*from..*to]);
            }
            out.push(b'}');
        }
        b'[' => {
            *i += 1;
            out.push(b'[');
            skip_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
            } else {
                let mut first = true;
                loop {
                    if !first {
                        out.extend_from_slice(b", ");
                    }
                    first = false;
                    fast_json_value(b, i, out, depth + 1)?;
                    skip_ws(b, i);
                    match b.get(*i)? {
                        b',' => *i += 1,
                        b']' => {
                            *i += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            out.push(b']');
        }
        b'"' => {
            let s = fast_json_str(b, i)?;
            out.push(b'"');
            out.extend_from_slice(s);
            out.push(b'"');
        }
        b't' if b[*i..].starts_with(b"true") => {
            *i += 4;
            out.extend_from_slice(b"true");
        }
        b'f' if b[*i..].starts_with(b"false") => {
            *i += 5;
            out.extend_from_slice(b"false");
        }
        b'n' if b[*i..].starts_with(b"null") => {
            *i += 4;
            out.extend_from_slice(b"null");
        }
        // An integer of at most 18 digits without a leading zero or a minus zero is an i64/u64
        // for serde_json and prints as written; other numbers go through the reference.
        b'-' | b'0'..=b'9' => {
            let s = *i;
            let neg = b[s] == b'-';
            let mut j = s + neg as usize;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let digits = &b[s + neg as usize..j];
            let plain = !digits.is_empty()
                && digits.len() <= 18
                && (digits[0] != b'0' || (digits.len() == 1 && !neg))
                && !matches!(b.get(j), Some(b'.' | b'e' | b'E'));
            if !plain {
                return None;
            }
            out.extend_from_slice(&b[s..j]);
            *i = j;
        }
        _ => return None,
    }
    Some(())
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

    /// The fast path must print exactly what the reference prints, on the loadgen's documents
    /// and on the ones it hands over (escapes, unicode, numbers of every form, duplicates, deep
    /// nesting, text that is not JSON).
    #[test]
    fn fast_json_equals_the_reference() {
        let mut docs: Vec<String> = vec![
            r#"{"channel":"ios","gift":false,"items":[{"sku":"SKU-21867","qty":1}]}"#.into(),
            r#"{"channel":"web","coupon":"VIP20","gift":true,"items":[{"sku":"A","qty":1},{"sku":"B","qty":2}]}"#.into(),
            r#" { "bb" : 1 , "a" : [ 1.50 , true , null ] , "c" : "x\"\n\u0001é" } "#.into(),
            r#"{"é":"ü€😀","e":"\u00e9","z":{},"y":[],"x":[[]],"w":[{}]}"#.into(),
            r#"[1, -1, 0, -0, 1.0, 1e3, 1E3, -1.5e-7, 12345678901234567890, 123456789012345678, -123456789012345678, 1234567890123456789, 0.1]"#.into(),
            r#"{"a":1,"a":2}"#.into(),
            r#"{"b":{"a":1,"a":[2]},"c":"d"}"#.into(),
            r#""just a string""#.into(),
            "17".into(),
            "null".into(),
            "not json".into(),
            "{\"a\":1} trailing".into(),
            "{\"unterminated\": [1, 2".into(),
            "[01]".into(),
            "".into(),
            format!("{}1{}", "[".repeat(120), "]".repeat(120)),
            format!("{}1{}", "[".repeat(99), "]".repeat(99)),
            "{\"tab\tin\":1}".into(),
            r#"{"k\u0000":"\ud83d\ude00","/":"\/"}"#.into(),
        ];
        // Generated documents with keys of equal and different lengths in every order.
        let keys = ["a", "b", "ab", "ba", "abc", "B", "é", "aé", "zz"];
        for n in 0..200u32 {
            let mut m = String::from("{");
            for (j, k) in keys.iter().enumerate() {
                if (n >> (j % 8)) & 1 == 1 || j == n as usize % keys.len() {
                    if m.len() > 1 {
                        m.push(',');
                    }
                    m.push_str(&format!(
                        "\"{k}\":[{n},\"v{j}\",{{\"q\":{}}}]",
                        n as i64 - 100
                    ));
                }
            }
            m.push('}');
            docs.push(m);
        }
        for d in &docs {
            let mut fast = Vec::new();
            push_canonical_json(&mut fast, d);
            assert_eq!(String::from_utf8(fast).unwrap(), canonical_json(d), "{d}");
        }
    }

    /// Pieces of the kinds `canon::Piece` describes, written as the SQL writes them, split
    /// back without knowing the values: two different rows can never make the same row text.
    #[test]
    fn row_texts_split_back_into_their_values() {
        fn piece(out: &mut String, kind: Piece, v: Option<&str>) {
            match (kind, v) {
                (Piece::Counted, Some(t)) => out.push_str(&format!("{}:{t}", t.chars().count())),
                (Piece::Counted, None) => out.push('-'),
                (_, Some(t)) => out.push_str(t),
                (_, None) => {}
            }
            out.push(',');
        }
        fn split(text: &str, kinds: &[Piece]) -> Vec<Option<String>> {
            let mut rest = text;
            let mut out = Vec::new();
            for k in kinds {
                let (v, r) = match k {
                    Piece::Counted if rest.starts_with('-') => (None, &rest[1..]),
                    Piece::Counted => {
                        let (n, r) = rest.split_once(':').unwrap();
                        let n: usize = n.parse().unwrap();
                        let end = r.char_indices().nth(n).map(|(i, _)| i).unwrap_or(r.len());
                        (Some(r[..end].to_string()), &r[end..])
                    }
                    Piece::Json if !rest.starts_with(',') => {
                        let mut de = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                        de.next().unwrap().unwrap();
                        let end = de.byte_offset();
                        (Some(rest[..end].to_string()), &rest[end..])
                    }
                    Piece::Fixed if !rest.starts_with(',') => {
                        let end = rest.find(',').unwrap();
                        (Some(rest[..end].to_string()), &rest[end..])
                    }
                    _ => (None, rest),
                };
                assert!(r.starts_with(','), "{text}");
                rest = &r[1..];
                out.push(v);
            }
            assert!(rest.is_empty());
            out
        }
        let kinds = [
            Piece::Fixed,
            Piece::Counted,
            Piece::Json,
            Piece::Counted,
            Piece::Fixed,
        ];
        let texts = [
            None,
            Some(""),
            Some("-"),
            Some("0:"),
            Some("1:a,"),
            Some("a,b"),
            Some("é,:x"),
        ];
        let jsons = [
            None,
            Some("\"a,b\""),
            Some("{\"a\": [1, \",\"]}"),
            Some("1"),
            Some("[]"),
        ];
        let fixed = [None, Some("-1.50"), Some("2026-01-02 03:04:05.5")];
        for a in fixed {
            for t in texts {
                for j in jsons {
                    for u in texts {
                        let vals = [a, t, j, u, a];
                        let mut s = String::new();
                        for (k, v) in kinds.iter().zip(vals) {
                            piece(&mut s, *k, v);
                        }
                        let want: Vec<Option<String>> =
                            vals.iter().map(|v| v.map(str::to_string)).collect();
                        assert_eq!(split(&s, &kinds), want, "{s}");
                    }
                }
            }
        }
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
}
