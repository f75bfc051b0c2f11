//! Per-table column information, built once per TABLE_MAP event (not per row: rebuilding it for
//! every row is what made the generic row API of the binlog client 6× slower).
//!
//! Column names, signedness, charsets, ENUM/SET labels and the primary key come from the table
//! map's optional metadata (`binlog_row_metadata=FULL`), which describes the table *as of that
//! event*, so decoding stays right across `ALTER TABLE` without asking the server. Without that
//! metadata the reader falls back to `information_schema`, which describes the table *now*; that
//! cache is dropped whenever a DDL statement appears in the binlog, and a column-count mismatch
//! is a definite error instead of a silent misdecode. MariaDB stores JSON as LONGTEXT with a
//! `json_valid()` check; which columns those are is only in `information_schema`.

use std::collections::HashSet;
use std::sync::Arc;

use cdc_event::{ColumnSchema, ColumnType, TableId, TableSchema};
use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_common::constants::ColumnType as T;

use crate::charset::Charset;
use cdc_event::Flavor;
use mysql_async::prelude::Queryable;

/// How a column's binlog bytes are laid out and what JSON they become.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Integer of `bytes` bytes (1, 2, 3, 4, 8), little-endian.
    Int { bytes: u8, unsigned: bool },
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// DECIMAL(precision, scale).
    Decimal { precision: u8, scale: u8 },
    /// BIT(bits).
    Bit { bits: u16 },
    /// YEAR (one byte, offset 1900).
    Year,
    /// DATE (3 bytes).
    Date,
    /// DATETIME2 (MySQL 5.6+ format) with `fsp` fraction digits.
    DateTime { fsp: u8 },
    /// Old DATETIME (8-byte decimal YYYYMMDDhhmmss).
    DateTimeOld,
    /// TIMESTAMP2.
    Timestamp { fsp: u8 },
    /// Old TIMESTAMP (4 bytes).
    TimestampOld,
    /// TIME2.
    Time { fsp: u8 },
    /// Old TIME (3 bytes).
    TimeOld,
    /// VARCHAR/VARBINARY: length prefix of 1 or 2 bytes.
    VarString { prefix: u8, charset: Charset },
    /// CHAR/BINARY: length prefix of 1 or 2 bytes; `max_bytes` pads BINARY back to its width.
    FixedString {
        prefix: u8,
        max_bytes: u16,
        charset: Charset,
    },
    /// BLOB/TEXT: length prefix of 1–4 bytes.
    Blob { prefix: u8, charset: Charset },
    /// MariaDB JSON (LONGTEXT with a json_valid check): text parsed as JSON.
    JsonText { prefix: u8 },
    /// MySQL binary JSON.
    Json { prefix: u8 },
    /// ENUM stored in `pack` bytes.
    Enum { pack: u8, labels: Arc<Vec<String>> },
    /// SET stored in `pack` bytes.
    Set { pack: u8, labels: Arc<Vec<String>> },
    /// GEOMETRY: length prefix.
    Geometry { prefix: u8 },
}

/// One column, ready for decoding.
#[derive(Debug, Clone)]
pub struct Column {
    /// Name.
    pub name: String,
    /// `"name":`, JSON-escaped once.
    pub name_json: String,
    /// Layout and encoding.
    pub kind: Kind,
}

/// A table as a TABLE_MAP event describes it, ready to decode rows events.
#[derive(Debug)]
pub struct TableInfo {
    /// `db.table`.
    pub id: TableId,
    /// `db.table` as text (metric label).
    pub label: String,
    /// Whether the table filter includes it (an excluded table's rows are never decoded).
    pub included: bool,
    /// Columns in table order (empty for excluded tables).
    pub columns: Vec<Column>,
    /// Indexes of the key columns in key order.
    pub key: Vec<usize>,
    /// The schema block, serialised once.
    pub schema_json: String,
    /// The schema block.
    pub schema: Arc<TableSchema>,
}

impl TableInfo {
    /// An included table: its schema block (with the key columns' names) built and serialised
    /// once, for the stream's TABLE_MAP path and the snapshot alike.
    pub fn included(
        id: TableId,
        label: String,
        columns: Vec<Column>,
        key: Vec<usize>,
        schema_cols: Vec<ColumnSchema>,
    ) -> TableInfo {
        let schema = Arc::new(TableSchema {
            columns: schema_cols,
            primary_key: key.iter().map(|&k| columns[k].name.clone()).collect(),
        });
        let schema_json = serde_json::to_string(&*schema).unwrap_or_default();
        TableInfo {
            id,
            label,
            included: true,
            columns,
            key,
            schema_json,
            schema,
        }
    }
}

/// Column facts from `information_schema`, the fallback and MariaDB JSON source.
#[derive(Debug, Clone, Default)]
pub struct InfoSchemaTable {
    /// (name, COLUMN_TYPE, CHARACTER_SET_NAME) in ordinal order.
    pub columns: Vec<(String, String, Option<String>)>,
    /// Primary key column names in key order.
    pub primary_key: Vec<String>,
    /// Columns with a `json_valid()` check (MariaDB JSON).
    pub json_columns: HashSet<String>,
}

/// Why a table map cannot be turned into a decoder.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Something the reader cannot decode exactly.
    #[error("table {table}: {problem}")]
    Unsupported {
        /// `db.table`.
        table: String,
        /// What and why.
        problem: String,
    },
}

/// Optional metadata pulled out of a table map event.
#[derive(Default)]
struct Meta {
    names: Vec<String>,
    signedness: Vec<bool>,
    charsets: Vec<u16>,
    default_charset: Option<u16>,
    non_default: Vec<(u64, u16)>,
    enum_set_charsets: Vec<u16>,
    enum_labels: Vec<Vec<String>>,
    set_labels: Vec<Vec<String>>,
    primary_key: Vec<usize>,
    has_primary_key_field: bool,
}

fn read_meta(tme: &TableMapEvent<'_>) -> std::io::Result<Meta> {
    let mut m = Meta::default();
    for field in tme.iter_optional_meta() {
        match field? {
            OptionalMetadataField::Signedness(bits) => {
                m.signedness = bits.iter().by_vals().collect()
            }
            OptionalMetadataField::DefaultCharset(d) => {
                m.default_charset = Some(d.default_charset());
                for nd in d.iter_non_default() {
                    let nd = nd?;
                    m.non_default.push((nd.column_index(), nd.charset()));
                }
            }
            OptionalMetadataField::ColumnCharset(c) => {
                for cs in c.iter_charsets() {
                    m.charsets.push(cs?);
                }
            }
            OptionalMetadataField::ColumnName(names) => {
                for n in names.iter_names() {
                    m.names.push(n?.name().into_owned());
                }
            }
            OptionalMetadataField::EnumStrValue(v) => {
                for col in v.iter_values() {
                    let col = col?;
                    m.enum_labels.push(
                        col.values()
                            .iter()
                            .map(|x| x.value().into_owned())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for col in v.iter_values() {
                    let col = col?;
                    m.set_labels.push(
                        col.values()
                            .iter()
                            .map(|x| x.value().into_owned())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SimplePrimaryKey(pk) => {
                m.has_primary_key_field = true;
                for i in pk.iter_indexes() {
                    m.primary_key.push(i? as usize);
                }
            }
            OptionalMetadataField::PrimaryKeyWithPrefix(pk) => {
                m.has_primary_key_field = true;
                for k in pk.iter_keys() {
                    m.primary_key.push(k?.column_index() as usize);
                }
            }
            OptionalMetadataField::EnumAndSetDefaultCharset(d) => {
                m.enum_set_charsets.push(d.default_charset())
            }
            OptionalMetadataField::EnumAndSetColumnCharset(_)
            | OptionalMetadataField::GeometryType(_)
            | OptionalMetadataField::ColumnVisibility(_)
            | OptionalMetadataField::Dimensionality(_) => {}
        }
    }
    Ok(m)
}

impl Meta {
    /// Charset of the `n`-th character column.
    fn charset(&self, n: usize) -> Option<u16> {
        if !self.charsets.is_empty() {
            return self.charsets.get(n).copied();
        }
        let d = self.default_charset?;
        Some(
            self.non_default
                .iter()
                .find(|(i, _)| *i as usize == n)
                .map(|(_, c)| *c)
                .unwrap_or(d),
        )
    }

    /// Whether the server sent FULL metadata (names are the tell-tale).
    fn is_full(&self) -> bool {
        !self.names.is_empty()
    }
}

/// Builds the decoder for a table map. `info` must be given when the table is included and the
/// server is MariaDB (JSON columns) or the table map lacks FULL metadata.
pub fn build(
    tme: &TableMapEvent<'_>,
    included: bool,
    info: Option<&InfoSchemaTable>,
) -> Result<TableInfo, TableError> {
    let id = TableId::new(tme.database_name(), tme.table_name());
    let label = id.to_string();
    let unsupported = |problem: String| TableError::Unsupported {
        table: label.clone(),
        problem,
    };
    if !included {
        return Ok(TableInfo {
            id,
            label: label.clone(),
            included: false,
            columns: Vec::new(),
            key: Vec::new(),
            schema_json: String::new(),
            schema: Arc::new(TableSchema {
                columns: Vec::new(),
                primary_key: Vec::new(),
            }),
        });
    }
    let meta = read_meta(tme).map_err(|e| unsupported(format!("bad optional metadata: {e}")))?;
    let n = tme.columns_count() as usize;
    if let Some(info) = info {
        if !meta.is_full() && info.columns.len() != n {
            return Err(unsupported(format!(
                "the binlog has {n} columns but information_schema has {} (a DDL ran after this event); set binlog_row_metadata=FULL on the source so the binlog describes each event's table",
                info.columns.len()
            )));
        }
    } else if !meta.is_full() {
        return Err(unsupported(
            "no column metadata: set binlog_row_metadata=FULL".into(),
        ));
    }

    let nulls = tme.null_bitmask();
    let mut columns = Vec::with_capacity(n);
    let mut schema_cols = Vec::with_capacity(n);
    let (mut numeric_i, mut char_i, mut enum_i, mut set_i) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..n {
        let ty = tme
            .get_column_type(i)
            .map_err(|e| unsupported(format!("column {i}: {e}")))?
            .ok_or_else(|| unsupported(format!("column {i}: no type")))?;
        let meta_bytes = tme.get_column_metadata(i).unwrap_or(&[]);
        let name = meta
            .names
            .get(i)
            .cloned()
            .or_else(|| info.and_then(|x| x.columns.get(i).map(|c| c.0.clone())))
            .ok_or_else(|| unsupported(format!("column {i}: no name")))?;
        let info_col = info.and_then(|x| x.columns.iter().find(|c| c.0 == name));
        let unsigned = if ty.is_numeric_type() {
            let u = meta.signedness.get(numeric_i).copied();
            numeric_i += 1;
            u.unwrap_or_else(|| info_col.is_some_and(|c| c.1.contains("unsigned")))
        } else {
            false
        };
        let charset = if ty.is_character_type() {
            let c = meta.charset(char_i);
            char_i += 1;
            match c {
                Some(c) => Charset::from_collation(c),
                None => match info_col.and_then(|c| c.2.as_deref()) {
                    Some(name) => Charset::from_name(name).unwrap_or(Charset::Unsupported(0)),
                    None => Charset::Binary,
                },
            }
        } else {
            Charset::Binary
        };
        if let Charset::Unsupported(c) = charset {
            return Err(unsupported(format!(
                "column {name}: character set (collation id {c}) is not supported; convert the column to utf8mb4 or latin1"
            )));
        }
        let m = |k: usize| meta_bytes.get(k).copied().unwrap_or(0);
        let is_json_text = info.is_some_and(|x| x.json_columns.contains(&name));
        let (kind, cty) = match ty {
            T::MYSQL_TYPE_TINY => (
                Kind::Int { bytes: 1, unsigned },
                ColumnType::TinyInt { unsigned },
            ),
            T::MYSQL_TYPE_SHORT => (
                Kind::Int { bytes: 2, unsigned },
                ColumnType::SmallInt { unsigned },
            ),
            T::MYSQL_TYPE_INT24 => (
                Kind::Int { bytes: 3, unsigned },
                ColumnType::MediumInt { unsigned },
            ),
            T::MYSQL_TYPE_LONG => (
                Kind::Int { bytes: 4, unsigned },
                ColumnType::Int { unsigned },
            ),
            T::MYSQL_TYPE_LONGLONG => (
                Kind::Int { bytes: 8, unsigned },
                ColumnType::BigInt { unsigned },
            ),
            T::MYSQL_TYPE_FLOAT => (Kind::Float, ColumnType::Float),
            T::MYSQL_TYPE_DOUBLE => (Kind::Double, ColumnType::Double),
            T::MYSQL_TYPE_NEWDECIMAL => (
                Kind::Decimal {
                    precision: m(0),
                    scale: m(1),
                },
                ColumnType::Decimal {
                    precision: m(0),
                    scale: m(1),
                },
            ),
            T::MYSQL_TYPE_BIT => {
                let bits = m(1) as u16 * 8 + m(0) as u16;
                (Kind::Bit { bits }, ColumnType::Bit { bits: bits as u8 })
            }
            T::MYSQL_TYPE_YEAR => (Kind::Year, ColumnType::Year),
            T::MYSQL_TYPE_DATE | T::MYSQL_TYPE_NEWDATE => (Kind::Date, ColumnType::Date),
            T::MYSQL_TYPE_DATETIME2 => (
                Kind::DateTime { fsp: m(0) },
                ColumnType::DateTime { fsp: m(0) },
            ),
            T::MYSQL_TYPE_DATETIME => (Kind::DateTimeOld, ColumnType::DateTime { fsp: 0 }),
            T::MYSQL_TYPE_TIMESTAMP2 => (
                Kind::Timestamp { fsp: m(0) },
                ColumnType::Timestamp { fsp: m(0) },
            ),
            T::MYSQL_TYPE_TIMESTAMP => (Kind::TimestampOld, ColumnType::Timestamp { fsp: 0 }),
            T::MYSQL_TYPE_TIME2 => (Kind::Time { fsp: m(0) }, ColumnType::Time { fsp: m(0) }),
            T::MYSQL_TYPE_TIME => (Kind::TimeOld, ColumnType::Time { fsp: 0 }),
            T::MYSQL_TYPE_VARCHAR | T::MYSQL_TYPE_VAR_STRING => {
                let max = u16::from_le_bytes([m(0), m(1)]);
                let prefix = if max < 256 { 1 } else { 2 };
                let cty = if charset == Charset::Binary {
                    ColumnType::Binary
                } else {
                    ColumnType::Text { max_len: None }
                };
                (Kind::VarString { prefix, charset }, cty)
            }
            T::MYSQL_TYPE_STRING => {
                let (b0, b1) = (m(0) as u16, m(1) as u16);
                let len = if (b0 & 0x30) != 0x30 {
                    b1 | (((b0 & 0x30) ^ 0x30) << 4)
                } else {
                    b1
                };
                let prefix = if len < 256 { 1 } else { 2 };
                let cty = if charset == Charset::Binary {
                    ColumnType::Binary
                } else {
                    ColumnType::Text { max_len: None }
                };
                (
                    Kind::FixedString {
                        prefix,
                        max_bytes: len,
                        charset,
                    },
                    cty,
                )
            }
            T::MYSQL_TYPE_ENUM => {
                let labels = meta
                    .enum_labels
                    .get(enum_i)
                    .cloned()
                    .or_else(|| info_col.map(|c| parse_labels(&c.1)));
                enum_i += 1;
                let labels = labels.ok_or_else(|| {
                    unsupported(format!(
                        "column {name}: ENUM labels unknown (set binlog_row_metadata=FULL)"
                    ))
                })?;
                (
                    Kind::Enum {
                        pack: m(1),
                        labels: Arc::new(labels.clone()),
                    },
                    ColumnType::Enum { values: labels },
                )
            }
            T::MYSQL_TYPE_SET => {
                let labels = meta
                    .set_labels
                    .get(set_i)
                    .cloned()
                    .or_else(|| info_col.map(|c| parse_labels(&c.1)));
                set_i += 1;
                let labels = labels.ok_or_else(|| {
                    unsupported(format!(
                        "column {name}: SET labels unknown (set binlog_row_metadata=FULL)"
                    ))
                })?;
                (
                    Kind::Set {
                        pack: m(1),
                        labels: Arc::new(labels.clone()),
                    },
                    ColumnType::Set { values: labels },
                )
            }
            T::MYSQL_TYPE_BLOB
            | T::MYSQL_TYPE_TINY_BLOB
            | T::MYSQL_TYPE_MEDIUM_BLOB
            | T::MYSQL_TYPE_LONG_BLOB => {
                if is_json_text {
                    (Kind::JsonText { prefix: m(0) }, ColumnType::Json)
                } else {
                    let cty = if charset == Charset::Binary {
                        ColumnType::Binary
                    } else {
                        ColumnType::Text { max_len: None }
                    };
                    (
                        Kind::Blob {
                            prefix: m(0),
                            charset,
                        },
                        cty,
                    )
                }
            }
            T::MYSQL_TYPE_JSON => (
                Kind::Json {
                    prefix: m(0).max(1),
                },
                ColumnType::Json,
            ),
            T::MYSQL_TYPE_GEOMETRY => (Kind::Geometry { prefix: m(0) }, ColumnType::Geometry),
            other => {
                return Err(unsupported(format!(
                    "column {name}: type {other:?} is not supported"
                )))
            }
        };
        let nullable = nulls.get(i).as_deref().copied().unwrap_or(true);
        schema_cols.push(ColumnSchema {
            name: name.clone(),
            ty: cty,
            nullable,
        });
        let name_json = format!("{}:", serde_json::to_string(&name).unwrap_or_default());
        columns.push(Column {
            name,
            name_json,
            kind,
        });
    }

    let key: Vec<usize> = if meta.has_primary_key_field {
        meta.primary_key.clone()
    } else if let Some(info) = info {
        info.primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect()
    } else {
        Vec::new()
    };
    if key.is_empty() || key.iter().any(|&k| k >= columns.len()) {
        return Err(unsupported(
            "has no primary key; cdcsync keys events by primary key. Add one, or exclude the table"
                .into(),
        ));
    }
    Ok(TableInfo::included(id, label, columns, key, schema_cols))
}

/// Parses the labels of `enum('a','b''c')` / `set(...)` from `COLUMN_TYPE`.
pub fn parse_labels(column_type: &str) -> Vec<String> {
    let Some(start) = column_type.find('(') else {
        return Vec::new();
    };
    let body = &column_type[start + 1..column_type.rfind(')').unwrap_or(column_type.len())];
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quote, c) {
            (false, '\'') => in_quote = true,
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            (true, '\'') => {
                in_quote = false;
                out.push(std::mem::take(&mut cur));
            }
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (true, c) => cur.push(c),
            (false, _) => {}
        }
    }
    out
}

/// The primary-key columns of `t` in key order, from `information_schema` (empty: no key).
pub(crate) async fn primary_key_columns(
    conn: &mut mysql_async::Conn,
    t: &TableId,
) -> Result<Vec<String>, mysql_async::Error> {
    conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
        (&t.db, &t.table),
    )
    .await
}

/// MariaDB stores JSON as LONGTEXT with a `json_valid(col)` check: the names of such columns of
/// `t` (always empty on MySQL, which has a real JSON type).
pub(crate) async fn mariadb_json_columns(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
    t: &TableId,
) -> Result<HashSet<String>, mysql_async::Error> {
    let mut json_columns = HashSet::new();
    if flavor == Flavor::Mariadb {
        let checks: Vec<String> = conn
            .exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.db, &t.table),
            )
            .await?;
        for c in checks {
            if let Some(rest) = c.trim().strip_prefix("json_valid(`") {
                if let Some(name) = rest.strip_suffix("`)") {
                    json_columns.insert(name.replace("``", "`"));
                }
            }
        }
    }
    Ok(json_columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_parse_with_quotes() {
        assert_eq!(
            parse_labels("enum('a','b''c','x,y')"),
            vec!["a", "b'c", "x,y"]
        );
        assert_eq!(parse_labels("set('r','w')"), vec!["r", "w"]);
        assert!(parse_labels("int(11)").is_empty());
    }
}
