//! Text decoding from a column's character set to UTF-8.
//!
//! The binlog carries text as the bytes stored in the column's charset. cdcsync supports the
//! charsets seen in practice: the UTF-8 family and ASCII (validated, passed through), and MySQL's
//! `latin1`, which is Windows-1252 with the five undefined bytes mapped to the C1 controls (so
//! that every byte round-trips). Anything else stops the reader with a definite error rather than
//! emitting mangled text.

use mysql_common::collations::{Collation, CollationId};

/// How to turn a column's bytes into a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3 (utf8), ascii: the bytes are UTF-8.
    Utf8,
    /// MySQL latin1 (cp1252).
    Latin1,
    /// `binary`: not text; base64.
    Binary,
    /// Anything else, by collation id.
    Unsupported(u16),
}

impl Charset {
    /// The charset of a collation id from the table map's metadata.
    pub fn from_collation(id: u16) -> Self {
        if id == 63 {
            return Charset::Binary;
        }
        Self::from_name(Collation::from(CollationId::from(id)).charset())
            .unwrap_or(Charset::Unsupported(id))
    }

    /// The charset named `name` (`information_schema.COLUMNS.CHARACTER_SET_NAME`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Some(Charset::Utf8),
            "latin1" => Some(Charset::Latin1),
            "binary" => Some(Charset::Binary),
            _ => None,
        }
    }
}

/// cp1252 code points for 0x80..=0x9F; 0x81, 0x8D, 0x8F, 0x90, 0x9D map to themselves as
/// MySQL's latin1 does.
const CP1252_HIGH: [u16; 32] = [
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
];

/// Decodes MySQL latin1 bytes.
pub fn decode_latin1(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => {
                char::from_u32(CP1252_HIGH[(b - 0x80) as usize] as u32).unwrap_or('\u{FFFD}')
            }
            _ => b as char,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collations_map_to_charsets() {
        let cases = [
            (45, Charset::Utf8),
            (255, Charset::Utf8),
            (33, Charset::Utf8),
            (8, Charset::Latin1),
            (47, Charset::Latin1),
            (63, Charset::Binary),
            (11, Charset::Utf8),
        ];
        for (id, cs) in cases {
            assert_eq!(Charset::from_collation(id), cs, "collation {id}");
        }
        assert!(
            matches!(Charset::from_collation(28), Charset::Unsupported(28)),
            "gbk"
        );
    }

    #[test]
    fn latin1_is_cp1252() {
        assert_eq!(decode_latin1(b"caf\xe9 \x80 \x81 \x9f"), "café € \u{81} Ÿ");
    }
}
