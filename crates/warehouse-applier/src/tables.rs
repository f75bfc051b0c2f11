//! Target tables: created on the first event, widened when a new source column appears, and the
//! bookkeeping tables in the meta schema.
//!
//! DDL runs in its own short transaction under a transaction-scoped advisory lock keyed by the
//! table name, so that two workers (or two applier processes) seeing a new table or column at the
//! same time do not race on `CREATE TABLE` / `ADD COLUMN`; both use `IF NOT EXISTS` and re-read
//! the catalog under the lock. Columns are never dropped or narrowed: a column dropped at the
//! source simply stops being written, so every non-key column is nullable.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cdc_event::TableSchema;
use sqlx::PgPool;

use crate::config::SchemaEvolution;
use crate::error::{ApplierError, ApplyError};
use crate::types::{ident, literal, pg_type};

/// Bookkeeping columns every target table has, after the source columns.
pub const BOOKKEEPING: [&str; 4] = [
    "_cdc_version",
    "_cdc_deleted",
    "_cdc_source_ts",
    "_cdc_applied_at",
];

/// A target table as the applier knows it.
#[derive(Debug)]
pub struct Target {
    /// `"schema"."table"`, quoted.
    pub qualified: String,
    /// `schema.table`, unquoted (the tombstone table's key).
    pub name: String,
    /// Key columns (the primary key).
    pub key: Vec<String>,
    /// Columns that exist in the table.
    pub columns: HashSet<String>,
}

/// The cache of target tables, shared by the workers.
pub struct Tables {
    cache: Mutex<HashMap<(String, String), Arc<Target>>>,
    create: bool,
    evolution: SchemaEvolution,
}

impl Tables {
    /// An empty cache.
    pub fn new(create: bool, evolution: SchemaEvolution) -> Self {
        Tables {
            cache: Mutex::new(HashMap::new()),
            create,
            evolution,
        }
    }

    /// Forgets what is known about tables (after an error that may come from a stale view).
    pub fn invalidate(&self) {
        self.cache.lock().unwrap().clear();
    }

    /// Returns the target table `schema.table` with every column of `source` present, creating
    /// or widening it as configured.
    pub async fn ensure(
        &self,
        pool: &PgPool,
        schema: &str,
        table: &str,
        source: &TableSchema,
    ) -> Result<Arc<Target>, ApplyError> {
        let k = (schema.to_string(), table.to_string());
        if let Some(t) = self.cache.lock().unwrap().get(&k) {
            if source.columns.iter().all(|c| t.columns.contains(&c.name)) {
                return Ok(t.clone());
            }
        }
        let target = self.ensure_slow(pool, schema, table, source).await?;
        let target = Arc::new(target);
        self.cache.lock().unwrap().insert(k, target.clone());
        Ok(target)
    }

    async fn ensure_slow(
        &self,
        pool: &PgPool,
        schema: &str,
        table: &str,
        source: &TableSchema,
    ) -> Result<Target, ApplyError> {
        let qualified = format!("{}.{}", ident(schema), ident(table));
        let name = format!("{schema}.{table}");
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("cdcsync-ddl:{name}"))
            .execute(&mut *tx)
            .await?;
        let existing: Vec<(String,)> = sqlx::query_as(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        let mut columns: HashSet<String> = existing.into_iter().map(|(c,)| c).collect();
        if columns.is_empty() {
            if !self.create {
                return Err(ApplierError::Schema(format!(
                    "target table {name} does not exist; create it (see docs/type-mapping.md) or set applier.create_tables = true"
                ))
                .into());
            }
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
                .execute(&mut *tx)
                .await?;
            sqlx::query(&create_table_sql(&qualified, source))
                .execute(&mut *tx)
                .await?;
            tracing::info!(table = %name, "created target table");
            columns = source.columns.iter().map(|c| c.name.clone()).collect();
            columns.extend(BOOKKEEPING.iter().map(|s| s.to_string()));
        } else {
            for c in &source.columns {
                if columns.contains(&c.name) {
                    continue;
                }
                if self.evolution == SchemaEvolution::Fail {
                    return Err(ApplierError::Schema(format!(
                        "source column {}.{} is missing from target table {name}; add it (type {}) or set applier.schema_evolution = \"add_columns\"",
                        table, c.name, pg_type(&c.ty)
                    ))
                    .into());
                }
                sqlx::query(&format!(
                    "ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {}",
                    ident(&c.name),
                    pg_type(&c.ty)
                ))
                .execute(&mut *tx)
                .await?;
                tracing::info!(table = %name, column = %c.name, "added column to target table");
                columns.insert(c.name.clone());
            }
        }
        let key: Vec<(String,)> = sqlx::query_as(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        )
        .bind(&qualified)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let key: Vec<String> = key.into_iter().map(|(k,)| k).collect();
        if key.is_empty() {
            return Err(ApplierError::Schema(format!(
                "target table {name} has no primary key; add PRIMARY KEY ({}) so upserts can find rows",
                source.primary_key.join(", ")
            ))
            .into());
        }
        Ok(Target {
            qualified,
            name,
            key,
            columns,
        })
    }
}

/// `CREATE TABLE` for a new target table.
pub fn create_table_sql(qualified: &str, source: &TableSchema) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {qualified} (\n");
    for c in &source.columns {
        let not_null = if source.primary_key.contains(&c.name) {
            " NOT NULL"
        } else {
            ""
        };
        sql.push_str(&format!(
            "  {} {}{not_null},\n",
            ident(&c.name),
            pg_type(&c.ty)
        ));
    }
    sql.push_str("  _cdc_version numeric(39,0) NOT NULL,\n");
    sql.push_str("  _cdc_deleted boolean NOT NULL DEFAULT false,\n");
    sql.push_str("  _cdc_source_ts timestamptz,\n");
    sql.push_str("  _cdc_applied_at timestamptz,\n");
    let key: Vec<String> = source.primary_key.iter().map(|k| ident(k)).collect();
    sql.push_str(&format!("  PRIMARY KEY ({})\n)", key.join(", ")));
    sql
}

/// Creates the meta schema, the processed-message table and the tombstone table if missing.
pub async fn ensure_meta(pool: &PgPool, meta: &str) -> Result<(), sqlx::Error> {
    let m = ident(meta);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("cdcsync-ddl:{meta}"))
        .execute(&mut *tx)
        .await?;
    for sql in [
        format!("CREATE SCHEMA IF NOT EXISTS {m}"),
        // COLLATE "C": ids are compared byte-wise, which is all dedup needs and cheaper than a
        // linguistic collation (MEASURED.md: 7-15% of the processed-id cost).
        format!(
            "CREATE TABLE IF NOT EXISTS {m}.processed_messages (\
             message_id text COLLATE \"C\" PRIMARY KEY, topic text NOT NULL, partition integer NOT NULL, \
             kafka_offset bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ),
        // BRIN: ids are inserted in time order, so the retention job finds old ones cheaply and
        // the hot path pays almost nothing to maintain it.
        format!("CREATE INDEX IF NOT EXISTS processed_messages_applied_at ON {m}.processed_messages USING brin (applied_at)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {m}.tombstones (\
             target_table text COLLATE \"C\" NOT NULL, row_key text COLLATE \"C\" NOT NULL, \
             version numeric(39,0) NOT NULL, deleted_at timestamptz NOT NULL, PRIMARY KEY (target_table, row_key))"
        ),
        format!("COMMENT ON TABLE {m}.processed_messages IS {}", literal("cdcsync: ids of applied change events (dedup); pruned by the retention job")),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdc_event::{ColumnSchema, ColumnType};

    #[test]
    fn create_table_has_key_and_bookkeeping() {
        let s = TableSchema {
            columns: vec![
                ColumnSchema {
                    name: "id".into(),
                    ty: ColumnType::BigInt { unsigned: true },
                    nullable: false,
                },
                ColumnSchema {
                    name: "total".into(),
                    ty: ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    nullable: false,
                },
            ],
            primary_key: vec!["id".into()],
        };
        let sql = create_table_sql("\"shop\".\"orders\"", &s);
        assert!(sql.contains("\"id\" numeric(20,0) NOT NULL"), "{sql}");
        assert!(sql.contains("\"total\" numeric(12,2),"), "{sql}");
        assert!(sql.contains("_cdc_version numeric(39,0) NOT NULL"), "{sql}");
        assert!(sql.contains("PRIMARY KEY (\"id\")"), "{sql}");
    }
}
