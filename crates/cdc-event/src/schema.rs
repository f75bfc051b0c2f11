//! Table identity and column types carried in every change event.
//!
//! The reader fills these from the binlog's table metadata (`binlog_row_metadata=FULL`) or from
//! `information_schema`; the applier maps them to PostgreSQL types (`docs/type-mapping.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A source table, `db.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId {
    /// The source database (MySQL schema).
    pub db: String,
    /// The table name.
    pub table: String,
}

impl TableId {
    /// Builds a table id.
    pub fn new(db: impl Into<String>, table: impl Into<String>) -> Self {
        TableId {
            db: db.into(),
            table: table.into(),
        }
    }

    /// Parses `db.table`; `None` when there is no dot or a part is empty.
    pub fn parse(text: &str) -> Option<Self> {
        let (db, table) = text.split_once('.')?;
        (!db.is_empty() && !table.is_empty()).then(|| TableId::new(db, table))
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.table)
    }
}

/// The source type of a column, with what is needed to map it exactly.
///
/// On the wire: `{"name": "amount", "type": "decimal", "precision": 12, "scale": 2, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnType {
    /// TINYINT (8 bits).
    TinyInt {
        /// UNSIGNED.
        #[serde(default)]
        unsigned: bool,
    },
    /// SMALLINT (16 bits).
    SmallInt {
        /// UNSIGNED.
        #[serde(default)]
        unsigned: bool,
    },
    /// MEDIUMINT (24 bits).
    MediumInt {
        /// UNSIGNED.
        #[serde(default)]
        unsigned: bool,
    },
    /// INT (32 bits).
    Int {
        /// UNSIGNED.
        #[serde(default)]
        unsigned: bool,
    },
    /// BIGINT (64 bits). Unsigned values above 2^63 travel as exact JSON integers.
    BigInt {
        /// UNSIGNED.
        #[serde(default)]
        unsigned: bool,
    },
    /// DECIMAL(p,s); values travel as exact decimal strings.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// FLOAT (single precision).
    Float,
    /// DOUBLE.
    Double,
    /// BIT(n); values travel as unsigned integers.
    Bit {
        /// Number of bits, 1..=64.
        bits: u8,
    },
    /// DATE as `YYYY-MM-DD`.
    Date,
    /// DATETIME(fsp) as ISO-8601 without zone, with `fsp` fractional digits.
    DateTime {
        /// Fractional seconds precision, 0..=6.
        fsp: u8,
    },
    /// TIMESTAMP(fsp) as UTC ISO-8601 with `Z`.
    Timestamp {
        /// Fractional seconds precision, 0..=6.
        fsp: u8,
    },
    /// TIME(fsp) as `[-]HHH:MM:SS[.ffffff]` (negative and over 24 h allowed).
    Time {
        /// Fractional seconds precision, 0..=6.
        fsp: u8,
    },
    /// YEAR as an integer.
    Year,
    /// CHAR/VARCHAR/TEXT family: UTF-8 text.
    Text {
        /// Declared maximum length in characters, when known (CHAR/VARCHAR).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_len: Option<u32>,
    },
    /// BINARY/VARBINARY/BLOB family: base64.
    Binary,
    /// ENUM as its label.
    Enum {
        /// The labels in declaration order.
        values: Vec<String>,
    },
    /// SET as comma-separated labels.
    Set {
        /// The labels in declaration order.
        values: Vec<String>,
    },
    /// JSON as a JSON value.
    Json,
    /// GEOMETRY types as base64 of the server's internal (SRID + WKB) bytes.
    Geometry,
}

/// One column of a table as the reader saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// Column name.
    pub name: String,
    /// Source type.
    #[serde(flatten)]
    pub ty: ColumnType,
    /// Whether NULL is allowed.
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// The columns of a table and its primary key (or configured unique key), in source order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableSchema {
    /// Columns in source order.
    pub columns: Vec<ColumnSchema>,
    /// Names of the key columns, in key order.
    pub primary_key: Vec<String>,
}

impl TableSchema {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_wire_form_is_flat() {
        let c = ColumnSchema {
            name: "amount".into(),
            ty: ColumnType::Decimal {
                precision: 12,
                scale: 2,
            },
            nullable: false,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"name":"amount","type":"decimal","precision":12,"scale":2,"nullable":false}"#
        );
        assert_eq!(serde_json::from_str::<ColumnSchema>(&json).unwrap(), c);
        let e: ColumnSchema =
            serde_json::from_str(r#"{"name":"s","type":"enum","values":["a","b"]}"#).unwrap();
        assert!(e.nullable);
        assert_eq!(
            e.ty,
            ColumnType::Enum {
                values: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn table_ids_parse() {
        assert_eq!(
            TableId::parse("shop.orders"),
            Some(TableId::new("shop", "orders"))
        );
        assert_eq!(TableId::parse("orders"), None);
        assert_eq!(TableId::parse(".orders"), None);
    }
}
