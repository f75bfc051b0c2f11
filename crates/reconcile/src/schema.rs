//! The two tables being compared: the source table's columns and key from
//! `information_schema` (as `cdc_event::ColumnType`, the same vocabulary as the change events),
//! and the warehouse table's actual PostgreSQL column types from the catalog.
//!
//! The warehouse types are read rather than assumed so that the comparison follows the applier's
//! type mapping as it is (`docs/type-mapping.md`), and a missing column is a clear error.

use std::collections::HashMap;

use cdc_event::{ColumnSchema, ColumnType, TableId, TableSchema};
use mysql_async::prelude::Queryable;

use crate::error::ReconcileError;

/// Which server family the source is (they differ in how to read the binlog position and how
/// JSON is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB: `SHOW MASTER STATUS`, JSON is LONGTEXT with a `json_valid` check.
    Mariadb,
    /// MySQL: `SHOW BINARY LOG STATUS` (8.2+), binary JSON.
    Mysql,
}

/// Reads the server flavor from `VERSION()`.
pub async fn flavor(conn: &mut mysql_async::Conn) -> Result<Flavor, ReconcileError> {
    let v: Option<String> = conn.query_first("SELECT VERSION()").await?;
    Ok(
        if v.unwrap_or_default()
            .to_ascii_lowercase()
            .contains("mariadb")
        {
            Flavor::Mariadb
        } else {
            Flavor::Mysql
        },
    )
}

/// Reads the source table's columns and primary key.
pub async fn source_schema(
    conn: &mut mysql_async::Conn,
    table: &TableId,
) -> Result<TableSchema, ReconcileError> {
    type Row = (
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        String,
    );
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, IS_NULLABLE \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&table.db, &table.table),
        )
        .await?;
    if rows.is_empty() {
        return Err(ReconcileError::Definite(format!(
            "source table {table} does not exist (or the source user cannot see it: grant SELECT on it)"
        )));
    }
    let primary_key: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
            (&table.db, &table.table),
        )
        .await?;
    if primary_key.is_empty() {
        return Err(ReconcileError::Definite(format!(
            "source table {table} has no primary key; reconciliation compares rows by primary key (add one)"
        )));
    }
    // MariaDB's JSON is LONGTEXT with a json_valid() check; only the check tells them apart.
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.db, &table.table),
        )
        .await
        .unwrap_or_default();
    let mut columns = Vec::with_capacity(rows.len());
    for (name, data_type, column_type, precision, scale, dt_precision, nullable) in rows {
        let json_check = checks.iter().any(|c| {
            let c = c.to_ascii_lowercase();
            c.contains("json_valid")
                && (c.contains(&format!("`{}`", name.to_ascii_lowercase()))
                    || c.contains(&format!("({})", name.to_ascii_lowercase())))
        });
        let ty = column_type_of(
            &data_type,
            &column_type,
            precision,
            scale,
            dt_precision,
            json_check,
        )
        .ok_or_else(|| {
            ReconcileError::Definite(format!(
                "source column {table}.{name}: type {column_type} is not supported"
            ))
        })?;
        columns.push(ColumnSchema {
            name,
            ty,
            nullable: nullable == "YES",
        });
    }
    Ok(TableSchema {
        columns,
        primary_key,
    })
}

/// Maps `information_schema.COLUMNS` facts to the change-event column type.
pub fn column_type_of(
    data_type: &str,
    column_type: &str,
    precision: Option<u64>,
    scale: Option<u64>,
    dt_precision: Option<u64>,
    json_check: bool,
) -> Option<ColumnType> {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    let fsp = dt_precision.unwrap_or(0).min(6) as u8;
    Some(match data_type.to_ascii_lowercase().as_str() {
        "tinyint" => ColumnType::TinyInt { unsigned },
        "smallint" => ColumnType::SmallInt { unsigned },
        "mediumint" => ColumnType::MediumInt { unsigned },
        "int" | "integer" => ColumnType::Int { unsigned },
        "bigint" => ColumnType::BigInt { unsigned },
        "decimal" | "numeric" => ColumnType::Decimal {
            precision: precision.unwrap_or(10).min(65) as u8,
            scale: scale.unwrap_or(0).min(38) as u8,
        },
        "float" => ColumnType::Float,
        "double" | "real" => ColumnType::Double,
        "bit" => ColumnType::Bit {
            bits: precision.unwrap_or(1).clamp(1, 64) as u8,
        },
        "date" => ColumnType::Date,
        "datetime" => ColumnType::DateTime { fsp },
        "timestamp" => ColumnType::Timestamp { fsp },
        "time" => ColumnType::Time { fsp },
        "year" => ColumnType::Year,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            if json_check {
                ColumnType::Json
            } else {
                ColumnType::Text { max_len: None }
            }
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ColumnType::Binary
        }
        "enum" => ColumnType::Enum {
            values: binlog_reader::table::parse_labels(column_type),
        },
        "set" => ColumnType::Set {
            values: binlog_reader::table::parse_labels(column_type),
        },
        "json" => ColumnType::Json,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => ColumnType::Geometry,
        _ => return None,
    })
}

/// The warehouse table's columns: name → PostgreSQL type name (`pg_type.typname`, e.g. `int8`,
/// `numeric`, `timestamptz`, `interval`, `bit`, `jsonb`).
pub async fn warehouse_columns(
    pool: &sqlx::PgPool,
    schema: &str,
    table: &str,
) -> Result<HashMap<String, String>, ReconcileError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, t.typname::text FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn information_schema_types_map_like_the_reader() {
        let cases = [
            (
                ("bigint", "bigint(20) unsigned", None, None, None, false),
                ColumnType::BigInt { unsigned: true },
            ),
            (
                ("decimal", "decimal(12,2)", Some(12), Some(2), None, false),
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            (
                ("datetime", "datetime(6)", None, None, Some(6), false),
                ColumnType::DateTime { fsp: 6 },
            ),
            (
                ("longtext", "longtext", None, None, None, true),
                ColumnType::Json,
            ),
            (
                ("longtext", "longtext", None, None, None, false),
                ColumnType::Text { max_len: None },
            ),
            (
                ("bit", "bit(5)", Some(5), None, None, false),
                ColumnType::Bit { bits: 5 },
            ),
            (
                ("enum", "enum('a','b''c')", None, None, None, false),
                ColumnType::Enum {
                    values: vec!["a".into(), "b'c".into()],
                },
            ),
            (
                ("varbinary", "varbinary(4)", None, None, None, false),
                ColumnType::Binary,
            ),
        ];
        for ((d, c, p, s, f, j), want) in cases {
            assert_eq!(column_type_of(d, c, p, s, f, j), Some(want), "{c}");
        }
        assert_eq!(
            column_type_of("vector", "vector(3)", None, None, None, false),
            None
        );
    }
}
