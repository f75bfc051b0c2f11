//! Row images → JSON text, straight from the rows event bytes.
//!
//! The decoder writes each row image as a JSON object into a reusable buffer and remembers where
//! each column's value starts and ends, so the message key (the key columns' values) is cut out
//! of the same bytes: key and value always agree, and nothing is encoded twice. Value parsing
//! of the intricate formats (DECIMAL, the packed temporal types, MySQL binary JSON) uses
//! `mysql_common`'s binlog parsers; the layout of the simple types is read here directly.
//! Every value encoding is specified in `docs/event-format.md`.

use std::io::Write;

use base64::Engine;
use mysql_common::binlog::{decimal::Decimal, jsonb, misc};
use mysql_common::io::ParseBuf;
use mysql_common::value::Value as MyValue;

use crate::charset::{decode_latin1, Charset};
use crate::config::ZeroDates;
use crate::table::{Column, Kind, TableInfo};

/// A value the decoder cannot represent exactly, or bytes that do not match the table map.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: {problem}")]
pub struct DecodeError {
    /// Column name.
    pub column: String,
    /// What went wrong.
    pub problem: String,
}

/// One decoded row image: JSON object text plus the value span of each column.
#[derive(Debug, Default)]
pub struct Image {
    /// `{"a":1,"b":"x"}`.
    pub json: Vec<u8>,
    /// `(start, end)` of each column's value text within `json`.
    pub spans: Vec<(usize, usize)>,
}

impl Image {
    /// The key object (`{"id":7}`) of this image, byte-identical to `cdc_event::key_json`.
    pub fn key(&self, table: &TableInfo) -> Vec<u8> {
        let mut k = Vec::with_capacity(32);
        k.push(b'{');
        for (n, &i) in table.key.iter().enumerate() {
            if n > 0 {
                k.push(b',');
            }
            k.extend_from_slice(table.columns[i].name_json.as_bytes());
            let (s, e) = self.spans[i];
            k.extend_from_slice(&self.json[s..e]);
        }
        k.push(b'}');
        k
    }

    /// The value text of column `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        let (s, e) = self.spans[i];
        &self.json[s..e]
    }
}

fn err(col: &Column, problem: impl Into<String>) -> DecodeError {
    DecodeError {
        column: col.name.clone(),
        problem: problem.into(),
    }
}

fn take<'a>(buf: &mut ParseBuf<'a>, n: usize, col: &Column) -> Result<&'a [u8], DecodeError> {
    buf.checked_eat(n)
        .ok_or_else(|| err(col, format!("row image ends early (needed {n} bytes)")))
}

fn uint_le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// Decodes one row image for `present` columns (the rows event's column bitmap) into `out`.
pub fn decode_image(
    table: &TableInfo,
    present: &[bool],
    buf: &mut ParseBuf<'_>,
    zero_dates: ZeroDates,
    out: &mut Image,
) -> Result<(), DecodeError> {
    out.json.clear();
    out.spans.clear();
    let n_present = present.iter().filter(|p| **p).count();
    let first = table.columns.first();
    if n_present != table.columns.len() {
        let c = first.map(|c| c.name.clone()).unwrap_or_default();
        return Err(DecodeError {
            column: c,
            problem: format!(
                "row image has {n_present} of {} columns: binlog_row_image must be FULL",
                table.columns.len()
            ),
        });
    }
    let null_bytes = n_present.div_ceil(8);
    let nulls = buf.checked_eat(null_bytes).ok_or_else(|| DecodeError {
        column: String::new(),
        problem: "row image ends in the null bitmap".into(),
    })?;
    out.json.push(b'{');
    for (i, col) in table.columns.iter().enumerate() {
        if i > 0 {
            out.json.push(b',');
        }
        out.json.extend_from_slice(col.name_json.as_bytes());
        let start = out.json.len();
        if nulls[i / 8] & (1 << (i % 8)) != 0 {
            out.json.extend_from_slice(b"null");
        } else {
            decode_value(col, buf, zero_dates, &mut out.json)?;
        }
        out.spans.push((start, out.json.len()));
    }
    out.json.push(b'}');
    Ok(())
}

pub(crate) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

pub(crate) fn write_text(
    out: &mut Vec<u8>,
    bytes: &[u8],
    charset: Charset,
    pad_to: Option<usize>,
    col: &Column,
) -> Result<(), DecodeError> {
    match charset {
        Charset::Utf8 => {
            let s =
                std::str::from_utf8(bytes).map_err(|e| err(col, format!("invalid UTF-8: {e}")))?;
            write_json(out, s);
        }
        Charset::Latin1 => write_json(out, &decode_latin1(bytes)),
        Charset::Binary => {
            out.push(b'"');
            match pad_to {
                Some(w) if bytes.len() < w => {
                    let mut padded = bytes.to_vec();
                    padded.resize(w, 0);
                    base64_into(out, &padded);
                }
                _ => base64_into(out, bytes),
            }
            out.push(b'"');
        }
        Charset::Unsupported(c) => return Err(err(col, format!("unsupported collation {c}"))),
    }
    Ok(())
}

/// Appends standard base64 (with padding) of `bytes` without an intermediate String.
pub(crate) fn base64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let n = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + n, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

/// Appends `v` as at least `width` decimal digits (the hot path avoids `fmt`).
pub(crate) fn digits(out: &mut Vec<u8>, v: u64, width: usize) {
    digits128(out, v as u128, width)
}

/// [`digits`] for `u128` (versions).
pub(crate) fn digits128(out: &mut Vec<u8>, mut v: u128, width: usize) {
    let mut buf = [b'0'; 40];
    let mut i = buf.len();
    while v > 0 {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let start = i.min(buf.len() - width.min(40));
    out.extend_from_slice(&buf[start..]);
}

pub(crate) fn frac(out: &mut Vec<u8>, micros: u32, fsp: u8) {
    if fsp > 0 {
        let mut six = Vec::with_capacity(6);
        digits(&mut six, micros as u64 % 1_000_000, 6);
        out.push(b'.');
        out.extend_from_slice(&six[..fsp.min(6) as usize]);
    }
}

/// `"YYYY-MM-DDTHH:MM:SS` (opening quote, no closing one).
#[allow(clippy::too_many_arguments)]
fn ymdhms(out: &mut Vec<u8>, y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32) {
    out.push(b'"');
    digits(out, y as u64, 4);
    out.push(b'-');
    digits(out, mo as u64, 2);
    out.push(b'-');
    digits(out, d as u64, 2);
    out.push(b'T');
    digits(out, h as u64, 2);
    out.push(b':');
    digits(out, mi as u64, 2);
    out.push(b':');
    digits(out, s as u64, 2);
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

pub(crate) fn write_zero(out: &mut Vec<u8>, zero_dates: ZeroDates, text: &str) {
    match zero_dates {
        ZeroDates::Null => out.extend_from_slice(b"null"),
        ZeroDates::String => write_json(out, text),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write_datetime(
    out: &mut Vec<u8>,
    y: u16,
    mo: u8,
    d: u8,
    h: u8,
    mi: u8,
    s: u8,
    us: u32,
    fsp: u8,
    zero_dates: ZeroDates,
) {
    if y == 0 || mo == 0 || d == 0 {
        let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
        return write_zero(out, zero_dates, &text);
    }
    ymdhms(
        out, y as u32, mo as u32, d as u32, h as u32, mi as u32, s as u32,
    );
    frac(out, us, fsp);
    out.push(b'"');
}

fn decode_value(
    col: &Column,
    buf: &mut ParseBuf<'_>,
    zero_dates: ZeroDates,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    match &col.kind {
        Kind::Int { bytes, unsigned } => {
            let b = take(buf, *bytes as usize, col)?;
            let u = uint_le(b);
            if *unsigned {
                write_json(out, &u);
            } else {
                let shift = 64 - 8 * *bytes as u32;
                write_json(out, &(((u << shift) as i64) >> shift));
            }
        }
        Kind::Float => {
            let b = take(buf, 4, col)?;
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if v.is_finite() {
                write_json(out, &v)
            } else {
                out.extend_from_slice(b"null")
            }
        }
        Kind::Double => {
            let b = take(buf, 8, col)?;
            let v = f64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            if v.is_finite() {
                write_json(out, &v)
            } else {
                out.extend_from_slice(b"null")
            }
        }
        Kind::Decimal { precision, scale } => {
            let d = Decimal::read_bin(&mut *buf, *precision as usize, *scale as usize, false)
                .map_err(|e| err(col, format!("bad DECIMAL: {e}")))?;
            let _ = write!(out, "\"{d}\"");
        }
        Kind::Bit { bits } => {
            let b = take(buf, (*bits as usize).div_ceil(8), col)?;
            let v = b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64);
            write_json(out, &v);
        }
        Kind::Year => {
            let y = take(buf, 1, col)?[0];
            write_json(out, &if y == 0 { 0u16 } else { 1900 + y as u16 });
        }
        Kind::Date => {
            let v = uint_le(take(buf, 3, col)?);
            let (d, m, y) = ((v & 31) as u8, ((v >> 5) & 15) as u8, (v >> 9) as u16);
            if y == 0 || m == 0 || d == 0 {
                write_zero(out, zero_dates, &format!("{y:04}-{m:02}-{d:02}"));
            } else {
                out.push(b'"');
                digits(out, y as u64, 4);
                out.push(b'-');
                digits(out, m as u64, 2);
                out.push(b'-');
                digits(out, d as u64, 2);
                out.push(b'"');
            }
        }
        Kind::DateTime { fsp } => {
            let packed = misc::my_datetime_packed_from_binary(&mut *buf, *fsp as u32)
                .map_err(|e| err(col, format!("bad DATETIME: {e}")))?;
            match misc::datetime_from_packed(packed) {
                MyValue::Date(y, mo, d, h, mi, s, us) => {
                    write_datetime(out, y, mo, d, h, mi, s, us, *fsp, zero_dates)
                }
                _ => return Err(err(col, "bad DATETIME")),
            }
        }
        Kind::DateTimeOld => {
            let v = uint_le(take(buf, 8, col)?);
            let (d, t) = (v / 1_000_000, v % 1_000_000);
            write_datetime(
                out,
                (d / 10000) as u16,
                ((d % 10000) / 100) as u8,
                (d % 100) as u8,
                (t / 10000) as u8,
                ((t % 10000) / 100) as u8,
                (t % 100) as u8,
                0,
                0,
                zero_dates,
            );
        }
        Kind::Timestamp { fsp } => {
            let (sec, usec) = misc::my_timestamp_from_binary(&mut *buf, *fsp)
                .map_err(|e| err(col, format!("bad TIMESTAMP: {e}")))?;
            write_timestamp(out, sec as u32 as i64, usec.max(0) as u32, *fsp, zero_dates);
        }
        Kind::TimestampOld => {
            let v = uint_le(take(buf, 4, col)?);
            write_timestamp(out, v as i64, 0, 0, zero_dates);
        }
        Kind::Time { fsp } => {
            let packed = misc::my_time_packed_from_binary(&mut *buf, *fsp as u32)
                .map_err(|e| err(col, format!("bad TIME: {e}")))?;
            match misc::time_from_packed(packed) {
                MyValue::Time(neg, days, h, m, s, us) => {
                    let hours = days * 24 + h as u32;
                    let sign = if neg { "-" } else { "" };
                    let _ = write!(out, "\"{sign}{hours:02}:{m:02}:{s:02}");
                    frac(out, us, *fsp);
                    out.push(b'"');
                }
                _ => return Err(err(col, "bad TIME")),
            }
        }
        Kind::TimeOld => {
            let raw = uint_le(take(buf, 3, col)?) as i64;
            let v = (raw << 40) >> 40;
            let sign = if v < 0 { "-" } else { "" };
            let a = v.abs();
            let _ = write!(
                out,
                "\"{sign}{:02}:{:02}:{:02}\"",
                a / 10000,
                (a % 10000) / 100,
                a % 100
            );
        }
        Kind::VarString { prefix, charset } => {
            let len = uint_le(take(buf, *prefix as usize, col)?) as usize;
            let b = take(buf, len, col)?;
            write_text(out, b, *charset, None, col)?;
        }
        Kind::FixedString {
            prefix,
            max_bytes,
            charset,
        } => {
            let len = uint_le(take(buf, *prefix as usize, col)?) as usize;
            let b = take(buf, len, col)?;
            // The server strips BINARY(n)'s trailing zero bytes in the binlog; the column's
            // value has them, so they are put back.
            write_text(out, b, *charset, Some(*max_bytes as usize), col)?;
        }
        Kind::Blob { prefix, charset } => {
            let len = uint_le(take(buf, *prefix as usize, col)?) as usize;
            let b = take(buf, len, col)?;
            write_text(out, b, *charset, None, col)?;
        }
        Kind::Geometry { prefix } => {
            let len = uint_le(take(buf, *prefix as usize, col)?) as usize;
            let b = take(buf, len, col)?;
            write_text(out, b, Charset::Binary, None, col)?;
        }
        Kind::JsonText { prefix } => {
            let len = uint_le(take(buf, *prefix as usize, col)?) as usize;
            let b = take(buf, len, col)?;
            match serde_json::from_slice::<serde_json::Value>(b) {
                Ok(v) => write_json(out, &v),
                // MariaDB only checks JSON when a CHECK constraint is on; text that is not JSON
                // travels as a string rather than being lost.
                Err(_) => write_text(out, b, Charset::Utf8, None, col)?,
            }
        }
        Kind::Json { prefix } => {
            let len = uint_le(take(buf, *prefix as usize, col)?) as usize;
            let b = take(buf, len, col)?;
            let v: jsonb::Value<'_> = ParseBuf(b)
                .parse(())
                .map_err(|e| err(col, format!("bad binary JSON: {e}")))?;
            let v = serde_json::Value::try_from(v)
                .map_err(|e| err(col, format!("bad binary JSON: {e}")))?;
            write_json(out, &v);
        }
        Kind::Enum { pack, labels } => {
            let idx = uint_le(take(buf, *pack as usize, col)?) as usize;
            if idx == 0 {
                out.extend_from_slice(b"\"\"");
            } else {
                let l = labels.get(idx - 1).ok_or_else(|| {
                    err(
                        col,
                        format!("ENUM index {idx} beyond {} labels", labels.len()),
                    )
                })?;
                write_json(out, l.as_str());
            }
        }
        Kind::Set { pack, labels } => {
            let bits = uint_le(take(buf, *pack as usize, col)?);
            let mut s = String::new();
            for (i, l) in labels.iter().enumerate() {
                if bits & (1 << i) != 0 {
                    if !s.is_empty() {
                        s.push(',');
                    }
                    s.push_str(l);
                }
            }
            write_json(out, &s);
        }
    }
    Ok(())
}

pub(crate) fn write_timestamp(
    out: &mut Vec<u8>,
    sec: i64,
    usec: u32,
    fsp: u8,
    zero_dates: ZeroDates,
) {
    if sec == 0 && usec == 0 {
        return write_zero(out, zero_dates, "0000-00-00T00:00:00");
    }
    let (days, secs) = (sec.div_euclid(86_400), sec.rem_euclid(86_400) as u32);
    let (y, m, d) = civil_from_days(days);
    ymdhms(out, y as u32, m, d, secs / 3600, secs / 60 % 60, secs % 60);
    frac(out, usec, fsp);
    out.extend_from_slice(b"Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn col(kind: Kind) -> Column {
        Column {
            name: "c".into(),
            name_json: "\"c\":".into(),
            kind,
        }
    }

    fn dec(kind: Kind, bytes: &[u8]) -> String {
        let mut out = Vec::new();
        decode_value(&col(kind), &mut ParseBuf(bytes), ZeroDates::Null, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_keep_sign_and_full_unsigned_range() {
        let cases: [(Kind, &[u8], &str); 6] = [
            (
                Kind::Int {
                    bytes: 1,
                    unsigned: false,
                },
                &[0x80],
                "-128",
            ),
            (
                Kind::Int {
                    bytes: 1,
                    unsigned: true,
                },
                &[0xff],
                "255",
            ),
            (
                Kind::Int {
                    bytes: 3,
                    unsigned: false,
                },
                &[0xff, 0xff, 0xff],
                "-1",
            ),
            (
                Kind::Int {
                    bytes: 8,
                    unsigned: true,
                },
                &[0xff; 8],
                "18446744073709551615",
            ),
            (
                Kind::Int {
                    bytes: 8,
                    unsigned: false,
                },
                &[0, 0, 0, 0, 0, 0, 0, 0x80],
                "-9223372036854775808",
            ),
            (Kind::Year, &[0], "0"),
        ];
        for (k, b, want) in cases {
            assert_eq!(dec(k, b), want);
        }
        assert_eq!(dec(Kind::Year, &[126]), "2026");
    }

    #[test]
    fn dates_zero_dates_and_enums() {
        // DATE 2026-11-28: y<<9 | m<<5 | d.
        let v: u32 = (2026 << 9) | (11 << 5) | 28;
        assert_eq!(dec(Kind::Date, &v.to_le_bytes()[..3]), "\"2026-11-28\"");
        assert_eq!(dec(Kind::Date, &[0, 0, 0]), "null");
        let mut out = Vec::new();
        decode_value(
            &col(Kind::Date),
            &mut ParseBuf(&[0, 0, 0]),
            ZeroDates::String,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"\"0000-00-00\"");
        let labels = Arc::new(vec!["a".to_string(), "b".into(), "c".into()]);
        assert_eq!(
            dec(
                Kind::Enum {
                    pack: 1,
                    labels: labels.clone()
                },
                &[2]
            ),
            "\"b\""
        );
        assert_eq!(
            dec(
                Kind::Enum {
                    pack: 1,
                    labels: labels.clone()
                },
                &[0]
            ),
            "\"\""
        );
        assert_eq!(dec(Kind::Set { pack: 1, labels }, &[0b101]), "\"a,c\"");
        assert_eq!(dec(Kind::Bit { bits: 10 }, &[0x02, 0x01]), "513");
    }

    #[test]
    fn text_charsets_and_binary_padding() {
        assert_eq!(
            dec(
                Kind::VarString {
                    prefix: 1,
                    charset: Charset::Latin1
                },
                b"\x04caf\xe9"
            ),
            "\"café\""
        );
        assert_eq!(
            dec(
                Kind::VarString {
                    prefix: 1,
                    charset: Charset::Utf8
                },
                "\x04\"é\n".as_bytes()
            ),
            r#""\"é\n""#
        );
        assert_eq!(
            dec(
                Kind::FixedString {
                    prefix: 1,
                    max_bytes: 4,
                    charset: Charset::Binary
                },
                b"\x02ab"
            ),
            "\"YWIAAA==\""
        );
        let mut out = Vec::new();
        assert!(decode_value(
            &col(Kind::Blob {
                prefix: 1,
                charset: Charset::Utf8
            }),
            &mut ParseBuf(b"\x02\xff\xfe"),
            ZeroDates::Null,
            &mut out
        )
        .is_err());
        assert!(
            decode_value(
                &col(Kind::Blob {
                    prefix: 2,
                    charset: Charset::Utf8
                }),
                &mut ParseBuf(b"\x09\x00abc"),
                ZeroDates::Null,
                &mut out
            )
            .is_err(),
            "short image is an error, not a panic"
        );
    }

    #[test]
    fn civil_dates_match_chrono() {
        for days in [
            -719_468i64,
            -1,
            0,
            59,
            365,
            10_956,
            11_016,
            19_000,
            24_855,
            2_932_896,
        ] {
            let t = chrono::DateTime::from_timestamp(days * 86_400, 0).unwrap();
            let want = t.format("%Y-%m-%d").to_string();
            let (y, m, d) = civil_from_days(days);
            assert_eq!(format!("{y:04}-{m:02}-{d:02}"), want, "day {days}");
        }
        let mut out = Vec::new();
        digits(&mut out, 7, 2);
        digits(&mut out, 0, 4);
        digits(&mut out, 123_456, 6);
        assert_eq!(out, b"070000123456");
    }

    #[test]
    fn timestamps_are_utc_with_z() {
        // 1700000000 = 2023-11-14T22:13:20Z; TIMESTAMP2 is big-endian seconds, then fraction.
        let mut b = 1_700_000_000u32.to_be_bytes().to_vec();
        b.extend_from_slice(&[0x01, 0xe2, 0x40]); // 123456 µs, fsp 6 (3 bytes big-endian)
        assert_eq!(
            dec(Kind::Timestamp { fsp: 6 }, &b),
            "\"2023-11-14T22:13:20.123456Z\""
        );
        assert_eq!(dec(Kind::Timestamp { fsp: 0 }, &[0, 0, 0, 0]), "null");
    }
}
