//! The snapshot's view of a table: the same [`TableInfo`] the stream builds from a TABLE_MAP
//! event, built here from `information_schema` (the table *now*, which is what a `SELECT` reads).
//!
//! The `schema` block must be the one the stream sends for the same table, because the applier
//! creates and evolves target columns from whichever event arrives first; the mapping below
//! follows `table::build` type for type (see `docs/event-format.md`).

use std::collections::HashSet;
use std::sync::Arc;

use cdc_event::{ColumnSchema, ColumnType, Flavor, TableId};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::charset::Charset;
use crate::table::{parse_labels, Column, Kind, TableInfo};

use super::SnapshotError;

/// One row of `information_schema.COLUMNS`.
struct ColumnRow {
    name: String,
    data_type: String,
    column_type: String,
    charset: Option<String>,
    nullable: bool,
    precision: Option<u64>,
    scale: Option<u64>,
    dt_precision: Option<u64>,
}

/// Reads the table's columns and key; `unique_key` replaces a missing primary key.
pub(crate) async fn load(
    conn: &mut Conn,
    flavor: Flavor,
    t: &TableId,
    unique_key: Option<&[String]>,
) -> Result<TableInfo, SnapshotError> {
    let q = |e: mysql_async::Error| SnapshotError::Source(e.to_string());
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, String, String, Option<String>, String, Option<u64>, Option<u64>, Option<u64>)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, IS_NULLABLE, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&t.db, &t.table),
        )
        .await
        .map_err(q)?;
    if rows.is_empty() {
        return Err(SnapshotError::Table {
            table: t.to_string(),
            problem: "does not exist (or the CDC user cannot see it)".into(),
        });
    }
    let cols: Vec<ColumnRow> = rows
        .into_iter()
        .map(
            |(name, data_type, column_type, charset, nullable, precision, scale, dt_precision)| {
                ColumnRow {
                    name,
                    data_type: data_type.to_ascii_lowercase(),
                    column_type: column_type.to_ascii_lowercase(),
                    charset,
                    nullable: nullable == "YES",
                    precision,
                    scale,
                    dt_precision,
                }
            },
        )
        .collect();
    let pk: Vec<String> = crate::table::primary_key_columns(conn, t)
        .await
        .map_err(q)?;
    let json_columns = crate::table::mariadb_json_columns(conn, flavor, t)
        .await
        .map_err(q)?;
    let key_names: Vec<String> = if !pk.is_empty() {
        pk
    } else if let Some(k) = unique_key {
        k.to_vec()
    } else {
        return Err(SnapshotError::Table {
            table: t.to_string(),
            problem: "has no primary key; cdcsync keys events by primary key. Add one, or configure a NOT NULL unique key for it in reader.snapshot.unique_keys".into(),
        });
    };
    build(t, &cols, &key_names, &json_columns)
}

fn build(
    t: &TableId,
    cols: &[ColumnRow],
    key_names: &[String],
    json_columns: &HashSet<String>,
) -> Result<TableInfo, SnapshotError> {
    let label = t.to_string();
    let bad = |problem: String| SnapshotError::Table {
        table: label.clone(),
        problem,
    };
    let mut columns = Vec::with_capacity(cols.len());
    let mut schema_cols = Vec::with_capacity(cols.len());
    for c in cols {
        let unsigned = c.column_type.contains("unsigned");
        let charset = match c.charset.as_deref() {
            None => Charset::Binary,
            Some(n) => Charset::from_name(n).ok_or_else(|| {
                bad(format!("column {}: character set {n} is not supported; convert the column to utf8mb4 or latin1", c.name))
            })?,
        };
        let text_or_binary = if charset == Charset::Binary {
            ColumnType::Binary
        } else {
            ColumnType::Text { max_len: None }
        };
        let fsp = c.dt_precision.unwrap_or(0) as u8;
        let (kind, ty) = match c.data_type.as_str() {
            "tinyint" => (
                Kind::Int { bytes: 1, unsigned },
                ColumnType::TinyInt { unsigned },
            ),
            "smallint" => (
                Kind::Int { bytes: 2, unsigned },
                ColumnType::SmallInt { unsigned },
            ),
            "mediumint" => (
                Kind::Int { bytes: 3, unsigned },
                ColumnType::MediumInt { unsigned },
            ),
            "int" | "integer" => (
                Kind::Int { bytes: 4, unsigned },
                ColumnType::Int { unsigned },
            ),
            "bigint" => (
                Kind::Int { bytes: 8, unsigned },
                ColumnType::BigInt { unsigned },
            ),
            "float" => (Kind::Float, ColumnType::Float),
            "double" | "real" => (Kind::Double, ColumnType::Double),
            "decimal" | "numeric" => {
                let (p, s) = (c.precision.unwrap_or(10) as u8, c.scale.unwrap_or(0) as u8);
                (
                    Kind::Decimal {
                        precision: p,
                        scale: s,
                    },
                    ColumnType::Decimal {
                        precision: p,
                        scale: s,
                    },
                )
            }
            "bit" => {
                let bits = c.precision.unwrap_or(1) as u16;
                (Kind::Bit { bits }, ColumnType::Bit { bits: bits as u8 })
            }
            "year" => (Kind::Year, ColumnType::Year),
            "date" => (Kind::Date, ColumnType::Date),
            "datetime" => (Kind::DateTime { fsp }, ColumnType::DateTime { fsp }),
            "timestamp" => (Kind::Timestamp { fsp }, ColumnType::Timestamp { fsp }),
            "time" => (Kind::Time { fsp }, ColumnType::Time { fsp }),
            "char" | "binary" => (
                Kind::FixedString {
                    prefix: 0,
                    max_bytes: 0,
                    charset,
                },
                text_or_binary,
            ),
            "varchar" | "varbinary" => (Kind::VarString { prefix: 0, charset }, text_or_binary),
            "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob"
            | "mediumblob" | "longblob" => {
                if json_columns.contains(&c.name) {
                    (Kind::JsonText { prefix: 0 }, ColumnType::Json)
                } else {
                    (Kind::Blob { prefix: 0, charset }, text_or_binary)
                }
            }
            "json" => (Kind::Json { prefix: 0 }, ColumnType::Json),
            "enum" => {
                let labels = parse_labels(&c.column_type);
                (
                    Kind::Enum {
                        pack: 0,
                        labels: Arc::new(labels.clone()),
                    },
                    ColumnType::Enum { values: labels },
                )
            }
            "set" => {
                let labels = parse_labels(&c.column_type);
                (
                    Kind::Set {
                        pack: 0,
                        labels: Arc::new(labels.clone()),
                    },
                    ColumnType::Set { values: labels },
                )
            }
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" | "geomcollection" => {
                (Kind::Geometry { prefix: 0 }, ColumnType::Geometry)
            }
            other => {
                return Err(bad(format!(
                    "column {}: type {other} is not supported",
                    c.name
                )))
            }
        };
        schema_cols.push(ColumnSchema {
            name: c.name.clone(),
            ty,
            nullable: c.nullable,
        });
        let name_json = format!("{}:", serde_json::to_string(&c.name).unwrap_or_default());
        columns.push(Column {
            name: c.name.clone(),
            name_json,
            kind,
        });
    }
    let mut key = Vec::with_capacity(key_names.len());
    for k in key_names {
        let i = columns
            .iter()
            .position(|c| &c.name == k)
            .ok_or_else(|| bad(format!("key column {k} does not exist")))?;
        if schema_cols[i].nullable {
            return Err(bad(format!(
                "key column {k} is nullable; a snapshot key must be NOT NULL"
            )));
        }
        key.push(i);
    }
    Ok(TableInfo::included(
        t.clone(),
        label,
        columns,
        key,
        schema_cols,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(
        name: &str,
        data_type: &str,
        column_type: &str,
        charset: Option<&str>,
        nullable: bool,
    ) -> ColumnRow {
        ColumnRow {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            charset: charset.map(Into::into),
            nullable,
            precision: Some(12),
            scale: Some(2),
            dt_precision: Some(6),
        }
    }

    #[test]
    fn maps_types_like_the_stream_and_refuses_bad_keys() {
        let t = TableId::new("shop", "orders");
        let cols = vec![
            col("id", "bigint", "bigint(20) unsigned", None, false),
            col("amount", "decimal", "decimal(12,2)", None, true),
            col("at", "datetime", "datetime(6)", None, true),
            col("note", "varchar", "varchar(20)", Some("latin1"), true),
            col("raw", "varbinary", "varbinary(8)", Some("binary"), true),
            col("doc", "longtext", "longtext", Some("utf8mb4"), true),
            col("st", "enum", "enum('a','b''c')", Some("utf8mb4"), true),
        ];
        let json: HashSet<String> = ["doc".to_string()].into();
        let info = build(&t, &cols, &["id".into()], &json).unwrap();
        let tys: Vec<&ColumnType> = info.schema.columns.iter().map(|c| &c.ty).collect();
        assert_eq!(tys[0], &ColumnType::BigInt { unsigned: true });
        assert_eq!(
            tys[1],
            &ColumnType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(tys[2], &ColumnType::DateTime { fsp: 6 });
        assert_eq!(tys[3], &ColumnType::Text { max_len: None });
        assert_eq!(tys[4], &ColumnType::Binary);
        assert_eq!(tys[5], &ColumnType::Json);
        assert_eq!(
            tys[6],
            &ColumnType::Enum {
                values: vec!["a".into(), "b'c".into()]
            }
        );
        assert_eq!(info.key, vec![0]);
        assert_eq!(info.schema.primary_key, vec!["id".to_string()]);
        let e = build(&t, &cols, &["amount".into()], &json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nullable"), "{e}");
        let e = build(&t, &cols, &["nope".into()], &json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
