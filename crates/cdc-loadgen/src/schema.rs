//! The `orders` table the generator writes: one realistic order row of 15 columns that covers
//! the types a CDC pipeline gets wrong most often (unsigned BIGINT, ENUM, DECIMAL, JSON,
//! non-ASCII text including 4-byte UTF-8, `DATETIME(6)` and `TIMESTAMP(6)`).
//!
//! `updated_time` is set to `NOW(6)` by every statement that writes a row, so the demo can
//! measure end-to-end latency as the warehouse's `_cdc_applied_at` minus `updated_time`. `NOW(6)`
//! is the statement's start time, a little before its commit, so that difference slightly
//! over-states the pipeline's latency (by the transaction's own duration, which the run report
//! gives as `commit latency`).

use mysql_async::prelude::Queryable;

use crate::LoadgenError;

/// The table name inside the configured database.
pub const TABLE: &str = "orders";

/// The order statuses, in the order of the ENUM definition.
pub const STATUSES: [&str; 6] = [
    "pending",
    "paid",
    "shipped",
    "delivered",
    "refunded",
    "cancelled",
];

/// Quotes a database name as a MySQL identifier. Names are validated by
/// [`validate_db_name`] first, so the backquote never needs escaping; this is belt and braces.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The fully qualified, quoted table name, `` `db`.`orders` ``.
pub fn table_ref(db: &str) -> String {
    format!("{}.{}", quote_ident(db), quote_ident(TABLE))
}

/// Accepts the names MySQL accepts unquoted (letters, digits, `_`, `$`), at most 64 characters,
/// so that a typo in `--db` cannot turn into surprising SQL.
pub fn validate_db_name(db: &str) -> Result<(), LoadgenError> {
    let ok = !db.is_empty()
        && db.len() <= 64
        && db
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ok {
        Ok(())
    } else {
        Err(LoadgenError::Config(format!(
            "database name {db:?} is not allowed: use 1 to 64 ASCII letters, digits, '_' or '$'"
        )))
    }
}

/// The `CREATE TABLE` statement for `db`.
pub fn create_table_sql(db: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  user_id BIGINT NOT NULL,
  status ENUM('pending','paid','shipped','delivered','refunded','cancelled') NOT NULL DEFAULT 'pending',
  amount DECIMAL(12,2) NOT NULL,
  discount DECIMAL(12,2) NOT NULL DEFAULT 0.00,
  tax DECIMAL(12,2) NOT NULL DEFAULT 0.00,
  currency CHAR(3) NOT NULL,
  item_count INT NOT NULL,
  attributes JSON NULL,
  shipping_address VARCHAR(255) NOT NULL,
  note TEXT NULL,
  created_at DATETIME(6) NOT NULL,
  paid_at TIMESTAMP(6) NULL DEFAULT NULL,
  updated_time DATETIME(6) NOT NULL,
  version INT NOT NULL DEFAULT 1,
  PRIMARY KEY (id),
  KEY idx_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
        table = table_ref(db)
    )
}

/// Creates the database and the table if they do not exist. Existing rows are kept: a run after
/// a prefill continues with the next free id.
pub async fn ensure_schema(conn: &mut mysql_async::Conn, db: &str) -> Result<(), LoadgenError> {
    validate_db_name(db)?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {} DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        quote_ident(db)
    ))
    .await?;
    conn.query_drop(create_table_sql(db)).await?;
    Ok(())
}

/// Drops the database (tests and `--recreate`).
pub async fn drop_database(conn: &mut mysql_async::Conn, db: &str) -> Result<(), LoadgenError> {
    validate_db_name(db)?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS {}", quote_ident(db)))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_names() {
        for ok in ["shop", "loadgen_test_1", "a$b"] {
            assert!(validate_db_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "shop;drop", "sh op", "x`y", &"a".repeat(65)] {
            assert!(validate_db_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_has_fifteen_columns() {
        let sql = create_table_sql("shop");
        let columns = sql
            .lines()
            .filter(|l| {
                l.starts_with("  ")
                    && !l.trim_start().starts_with("PRIMARY")
                    && !l.trim_start().starts_with("KEY")
            })
            .count();
        assert_eq!(columns, 15, "{sql}");
    }
}
