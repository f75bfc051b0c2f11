//! Preflight checks of the warehouse: reachable, and the schemas the applier writes are writable.
//!
//! The writability probe creates a table inside a transaction that is always rolled back
//! (PostgreSQL DDL is transactional), so checking leaves nothing behind.

use cdc_config::WarehouseConfig;
use cdc_telemetry::CheckReport;
use sqlx::{Connection, PgConnection};

/// Runs the warehouse checks. Never fails itself: a failure to connect is a failing report.
pub async fn check_warehouse(warehouse: &WarehouseConfig) -> Vec<CheckReport> {
    let mut reports = Vec::new();
    let url = match warehouse.connection_url() {
        Ok(u) => u,
        Err(e) => {
            reports.push(CheckReport::fail(
                "warehouse connection",
                e.to_string(),
                "fix warehouse.password",
            ));
            return reports;
        }
    };
    let mut conn = match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            let fix = match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("28P01") => {
                    "check the user in warehouse.url and warehouse.password (authentication failed)"
                }
                _ => "check that PostgreSQL runs and warehouse.url points at it",
            };
            reports.push(CheckReport::fail(
                "warehouse connection",
                e.to_string(),
                fix,
            ));
            return reports;
        }
    };
    match sqlx::query_scalar::<_, String>("SELECT version()")
        .fetch_one(&mut conn)
        .await
    {
        Ok(v) => reports.push(CheckReport::pass(
            "warehouse",
            v.split(" on ").next().unwrap_or(&v).to_string(),
        )),
        Err(e) => reports.push(CheckReport::fail(
            "warehouse",
            e.to_string(),
            "check the PostgreSQL server log",
        )),
    }
    let mut schemas = vec![("warehouse.meta_schema", warehouse.meta_schema.clone())];
    match &warehouse.schema {
        Some(s) => schemas.push(("warehouse.schema", s.clone())),
        None => {
            // Each source database becomes a schema: the user must be able to create schemas.
            let can_create: bool = sqlx::query_scalar(
                "SELECT has_database_privilege(current_user, current_database(), 'CREATE')",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap_or(false);
            reports.push(if can_create {
                CheckReport::pass("create schemas", "allowed (one schema per source database)")
            } else {
                CheckReport::fail(
                    "create schemas",
                    "the warehouse user may not create schemas in this database",
                    "GRANT CREATE ON DATABASE <db> TO <user>, or set warehouse.schema to an existing writable schema",
                )
            });
        }
    }
    for (key, schema) in schemas {
        let name = format!("schema {schema} writable");
        reports.push(match probe_schema(&mut conn, &schema).await {
            Ok(()) => CheckReport::pass(name, format!("({key})")),
            Err(e) => CheckReport::fail(
                name,
                e.to_string(),
                format!("GRANT CREATE ON DATABASE, or CREATE SCHEMA {schema} AUTHORIZATION <user>, or change {key}"),
            ),
        });
    }
    let _ = conn.close().await;
    reports
}

/// Creates the schema (if needed) and a probe table in it, then rolls everything back.
async fn probe_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE TABLE {quoted}._cdcsync_probe (i int)"))
        .execute(&mut *tx)
        .await?;
    tx.rollback().await
}
