//! Preflight checks of the source server: the settings without which CDC would lose data.
//!
//! `cdcsync check` prints every report; the reader runs the same checks at start and refuses to
//! stream when any of them fails. Each failing check names the setting, what was found, and the
//! fix, so that an operator can act on the line alone.

use cdc_config::SourceConfig;
use cdc_event::Flavor;
use cdc_telemetry::CheckReport;
use mysql_async::prelude::Queryable;

/// Which tables the configuration selects: `include_tables` minus `exclude_tables`, where an
/// entry is `db.table` or `db.*`.
#[derive(Debug, Clone)]
pub struct TableFilter {
    include: Vec<(String, String)>,
    exclude: Vec<(String, String)>,
}

fn split_patterns(list: &[String]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|t| t.split_once('.'))
        .map(|(d, t)| (d.to_string(), t.to_string()))
        .collect()
}

impl TableFilter {
    /// Builds the filter from the `[source]` section (already validated).
    pub fn new(source: &SourceConfig) -> Self {
        TableFilter {
            include: split_patterns(&source.include_tables),
            exclude: split_patterns(&source.exclude_tables),
        }
    }

    /// Whether changes of `db.table` are captured.
    pub fn matches(&self, db: &str, table: &str) -> bool {
        let hit = |(d, t): &(String, String)| d == db && (t == "*" || t == table);
        self.include.iter().any(hit) && !self.exclude.iter().any(hit)
    }

    /// The databases named by the include list.
    pub fn databases(&self) -> Vec<&str> {
        let mut dbs: Vec<&str> = self.include.iter().map(|(d, _)| d.as_str()).collect();
        dbs.sort_unstable();
        dbs.dedup();
        dbs
    }
}

/// The outcome of checking a source: the detected flavor (when the server could be reached) and
/// one report per check.
#[derive(Debug)]
pub struct SourceChecks {
    /// MariaDB or MySQL; `None` when the connection failed.
    pub flavor: Option<Flavor>,
    /// One line per check, in a stable order.
    pub reports: Vec<CheckReport>,
}

impl SourceChecks {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.reports.iter().any(CheckReport::is_failure)
    }
}

/// Reads a global variable as text; `None` when the server does not have it.
async fn var(conn: &mut mysql_async::Conn, name: &str) -> Option<String> {
    // Variable names come from this module only, never from input.
    conn.query_first::<Option<String>, _>(format!("SELECT @@GLOBAL.{name}"))
        .await
        .ok()
        .flatten()
        .flatten()
}

/// Runs every source check. Never fails itself: a failure to connect is a failing report.
pub async fn check_source(source: &SourceConfig) -> SourceChecks {
    let mut reports = Vec::new();
    let opts = match crate::source::client_opts(source) {
        Ok(o) => o,
        Err(e) => {
            reports.push(CheckReport::fail(
                "source connection",
                e.to_string(),
                "fix the [source] url/password setting (mysql://user@host:port)",
            ));
            return SourceChecks {
                flavor: None,
                reports,
            };
        }
    };
    let mut conn = match mysql_async::Conn::new(opts).await {
        Ok(c) => c,
        Err(e) => {
            let tls = crate::source::tls_failure(&e);
            let fix = match (&e, &tls) {
                (_, Some((_, fix))) => fix,
                (mysql_async::Error::Server(s), _) if s.code == 1045 => {
                    "check source.url user and source.password (access denied)"
                }
                _ => "check that the server runs and source.url points at it",
            };
            let name = if tls.is_some() {
                "source TLS"
            } else {
                "source connection"
            };
            reports.push(CheckReport::fail(name, e.to_string(), fix));
            return SourceChecks {
                flavor: None,
                reports,
            };
        }
    };
    check_tls(&mut conn, source, &mut reports).await;
    let version = var(&mut conn, "version").await.unwrap_or_default();
    let flavor = if version.to_ascii_lowercase().contains("mariadb") {
        Flavor::Mariadb
    } else {
        Flavor::Mysql
    };
    reports.push(CheckReport::pass(
        "server",
        format!("{} {version}", flavor.connector()),
    ));
    check_binlog_settings(&mut conn, flavor, &mut reports).await;
    check_server_id(&mut conn, source.server_id, &mut reports).await;
    check_privileges(&mut conn, &mut reports).await;
    check_tables(&mut conn, &TableFilter::new(source), &mut reports).await;
    let _ = conn.disconnect().await;
    SourceChecks {
        flavor: Some(flavor),
        reports,
    }
}

/// Reports whether the session is encrypted, so an operator sees the effective TLS state (the
/// connection itself already failed if a required TLS mode could not be met).
async fn check_tls(
    conn: &mut mysql_async::Conn,
    source: &SourceConfig,
    reports: &mut Vec<CheckReport>,
) {
    let version: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
        .await
        .ok()
        .flatten();
    let version = version.map(|(_, v)| v).unwrap_or_default();
    let mode = source.tls.mode.as_str();
    reports.push(match (source.tls.mode, version.is_empty()) {
        (cdc_config::TlsMode::Disabled, _) => CheckReport::pass(
            "source TLS",
            "disabled (source.tls.mode): rows cross the network in plain text",
        ),
        (_, false) => CheckReport::pass("source TLS", format!("{version} ({mode})")),
        (_, true) => CheckReport::fail(
            "source TLS",
            format!("source.tls.mode is {mode} but the session is not encrypted"),
            "enable TLS on the server (ssl_cert/ssl_key)",
        ),
    });
}

async fn check_binlog_settings(
    conn: &mut mysql_async::Conn,
    flavor: Flavor,
    reports: &mut Vec<CheckReport>,
) {
    let log_bin = var(conn, "log_bin").await.unwrap_or_default();
    reports.push(if log_bin == "1" || log_bin.eq_ignore_ascii_case("ON") {
        CheckReport::pass("log_bin", "ON")
    } else {
        CheckReport::fail(
            "log_bin",
            format!("{log_bin:?}"),
            "start the server with log_bin=mysql-bin (needs a restart)",
        )
    });
    for (name, want, fix) in [
        (
            "binlog_format",
            "ROW",
            "SET GLOBAL binlog_format='ROW' and put binlog_format=ROW in the server config",
        ),
        (
            "binlog_row_image",
            "FULL",
            "SET GLOBAL binlog_row_image='FULL' and put binlog_row_image=FULL in the server config",
        ),
    ] {
        let got = var(conn, name).await.unwrap_or_default();
        reports.push(if got.eq_ignore_ascii_case(want) {
            CheckReport::pass(name, got)
        } else {
            CheckReport::fail(name, format!("{got:?}, need {want}"), fix)
        });
    }
    match var(conn, "binlog_row_metadata").await {
        Some(v) if v.eq_ignore_ascii_case("FULL") => reports.push(CheckReport::pass("binlog_row_metadata", v)),
        other => reports.push(CheckReport::warn(
            "binlog_row_metadata",
            format!("{:?}: column names and types come from information_schema instead (re-read after DDL)", other.unwrap_or_default()),
            "SET GLOBAL binlog_row_metadata='FULL' for exact column metadata in every event",
        )),
    }
    match flavor {
        Flavor::Mariadb => {
            let compress = var(conn, "log_bin_compress").await.unwrap_or_default();
            reports.push(
                if compress == "0" || compress.eq_ignore_ascii_case("OFF") || compress.is_empty() {
                    CheckReport::pass("log_bin_compress", "OFF")
                } else {
                    CheckReport::fail(
                        "log_bin_compress",
                        "ON: compressed binlog events cannot be decoded, changes would be lost",
                        "SET GLOBAL log_bin_compress=OFF (and in the server config)",
                    )
                },
            );
            let gtid = var(conn, "gtid_binlog_pos").await.unwrap_or_default();
            let strict = var(conn, "gtid_strict_mode").await.unwrap_or_default();
            reports.push(if strict == "1" || strict.eq_ignore_ascii_case("ON") {
                CheckReport::pass(
                    "gtid",
                    format!("gtid_strict_mode=ON, gtid_binlog_pos={gtid:?}"),
                )
            } else {
                CheckReport::warn(
                    "gtid",
                    format!("gtid_strict_mode=OFF, gtid_binlog_pos={gtid:?}"),
                    "SET GLOBAL gtid_strict_mode=ON so GTID positions stay unambiguous",
                )
            });
        }
        Flavor::Mysql => {
            let mode = var(conn, "gtid_mode").await.unwrap_or_default();
            let enforce = var(conn, "enforce_gtid_consistency")
                .await
                .unwrap_or_default();
            reports.push(if mode.eq_ignore_ascii_case("ON") {
                CheckReport::pass("gtid", format!("gtid_mode=ON, enforce_gtid_consistency={enforce}"))
            } else {
                CheckReport::warn(
                    "gtid",
                    format!("gtid_mode={mode}: resuming falls back to binlog file/position, and snapshots and reconcile --repair are refused (their consistency fence waits for GTIDs)"),
                    "set gtid_mode=ON and enforce_gtid_consistency=ON (position-independent resume, snapshots, repair)",
                )
            });
            let compression = var(conn, "binlog_transaction_compression")
                .await
                .unwrap_or_default();
            reports.push(
                if compression == "0"
                    || compression.eq_ignore_ascii_case("OFF")
                    || compression.is_empty()
                {
                    CheckReport::pass("binlog_transaction_compression", "OFF")
                } else {
                    // Decoded (tests/tests/mysql_reader.rs), but the client library decompresses
                    // each compressed transaction whole into memory.
                    CheckReport::warn(
                        "binlog_transaction_compression",
                        "ON: compressed transactions are decoded, but each is decompressed whole in memory, so the reader's memory grows by the uncompressed size of the largest transaction",
                        "SET GLOBAL binlog_transaction_compression=OFF if the source commits very large transactions",
                    )
                },
            );
            // PARTIAL_JSON logs JSON updates as diffs (PARTIAL_UPDATE_ROWS events): the full
            // document after the update is not in the binlog, so the reader would stop there.
            let value_options = var(conn, "binlog_row_value_options")
                .await
                .unwrap_or_default();
            reports.push(if value_options.is_empty() {
                CheckReport::pass("binlog_row_value_options", "'' (full JSON images)")
            } else {
                CheckReport::fail(
                    "binlog_row_value_options",
                    format!("{value_options:?}: JSON updates are logged as partial diffs without the full document"),
                    "SET GLOBAL binlog_row_value_options='' and remove it from the server config",
                )
            });
        }
    }
    let expire_seconds = match var(conn, "binlog_expire_logs_seconds")
        .await
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(s) if s > 0 => Some(s),
        _ => var(conn, "expire_logs_days")
            .await
            .and_then(|v| v.parse::<f64>().ok())
            .map(|d| (d * 86_400.0) as u64),
    };
    reports.push(match expire_seconds {
        Some(0) | None => CheckReport::pass("binlog retention", "binlogs never expire"),
        Some(s) if s < 86_400 => CheckReport::warn(
            "binlog retention",
            format!(
                "{:.1} h: a reader stopped longer than that must re-snapshot",
                s as f64 / 3600.0
            ),
            "raise binlog_expire_logs_seconds to several days",
        ),
        Some(s) => CheckReport::pass(
            "binlog retention",
            format!("{:.1} days", s as f64 / 86_400.0),
        ),
    });
}

async fn check_server_id(conn: &mut mysql_async::Conn, ours: u32, reports: &mut Vec<CheckReport>) {
    let theirs: u32 = var(conn, "server_id")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    reports.push(if theirs == ours {
        CheckReport::fail(
            "server_id",
            format!("source.server_id {ours} equals the source's own server_id"),
            "choose a source.server_id unique among the source and all its replicas",
        )
    } else {
        CheckReport::pass("server_id", format!("reader {ours}, source {theirs}"))
    });
}

async fn check_privileges(conn: &mut mysql_async::Conn, reports: &mut Vec<CheckReport>) {
    let grants: Vec<String> = conn
        .query("SHOW GRANTS FOR CURRENT_USER()")
        .await
        .unwrap_or_default();
    let global: Vec<String> = grants
        .iter()
        .filter(|g| g.contains(" ON *.* "))
        .map(|g| g.to_ascii_uppercase())
        .collect();
    let has = |p: &str| {
        global
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains(p))
    };
    let mut missing = Vec::new();
    if !has("REPLICATION SLAVE") {
        missing.push("REPLICATION SLAVE");
    }
    // MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR.
    if !(has("REPLICATION CLIENT") || has("BINLOG MONITOR")) {
        missing.push("REPLICATION CLIENT");
    }
    let select_global = has("SELECT");
    reports.push(if missing.is_empty() {
        CheckReport::pass(
            "privileges",
            format!(
                "REPLICATION SLAVE, REPLICATION CLIENT{}",
                if select_global { ", SELECT" } else { "" }
            ),
        )
    } else {
        CheckReport::fail(
            "privileges",
            format!("missing {}", missing.join(", ")),
            format!("GRANT {} ON *.* TO <the CDC user>", missing.join(", ")),
        )
    });
}

async fn check_tables(
    conn: &mut mysql_async::Conn,
    filter: &TableFilter,
    reports: &mut Vec<CheckReport>,
) {
    let mut found_any = false;
    for db in filter.databases() {
        let rows: Vec<(String, Option<String>)> = match conn
            .exec(
                "SELECT t.TABLE_NAME,
                        (SELECT GROUP_CONCAT(k.COLUMN_NAME ORDER BY k.ORDINAL_POSITION)
                           FROM information_schema.KEY_COLUMN_USAGE k
                          WHERE k.TABLE_SCHEMA = t.TABLE_SCHEMA AND k.TABLE_NAME = t.TABLE_NAME
                            AND k.CONSTRAINT_NAME = 'PRIMARY')
                   FROM information_schema.TABLES t
                  WHERE t.TABLE_SCHEMA = ? AND t.TABLE_TYPE = 'BASE TABLE'
                  ORDER BY t.TABLE_NAME",
                (db,),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                reports.push(CheckReport::fail(
                    format!("tables in {db}"),
                    e.to_string(),
                    "grant SELECT on the captured databases",
                ));
                continue;
            }
        };
        for (table, pk) in rows.iter().filter(|(t, _)| filter.matches(db, t)) {
            found_any = true;
            let name = format!("table {db}.{table}");
            reports.push(match pk {
                Some(cols) => CheckReport::pass(name, format!("primary key ({cols})")),
                None => CheckReport::fail(
                    name,
                    "has no primary key: changes cannot be keyed or applied idempotently",
                    format!("ALTER TABLE {db}.{table} ADD PRIMARY KEY (...), or exclude it in source.exclude_tables"),
                ),
            });
        }
    }
    // Name configured tables that do not exist.
    let wanted: Vec<(String, String)> = filter
        .include
        .iter()
        .filter(|(_, t)| t != "*")
        .cloned()
        .collect();
    for (db, table) in wanted {
        let exists: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&db, &table),
            )
            .await
            .ok()
            .flatten();
        if exists.is_none() {
            reports.push(CheckReport::fail(
                format!("table {db}.{table}"),
                "does not exist (or the CDC user cannot see it)",
                "create it, fix source.include_tables, or GRANT SELECT on it",
            ));
        }
    }
    if !found_any && reports.iter().all(|r| !r.name.starts_with("table ")) {
        reports.push(CheckReport::fail(
            "tables",
            "source.include_tables matches no table",
            "check the database and table names in source.include_tables",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(include: &[&str], exclude: &[&str]) -> SourceConfig {
        SourceConfig {
            name: "t".into(),
            url: "mysql://u@h:1".into(),
            password: Default::default(),
            server_id: 9,
            include_tables: include.iter().map(|s| s.to_string()).collect(),
            exclude_tables: exclude.iter().map(|s| s.to_string()).collect(),
            tls: Default::default(),
        }
    }

    #[test]
    fn filter_includes_and_excludes() {
        let f = TableFilter::new(&source(&["shop.orders", "crm.*"], &["crm.secrets"]));
        let cases = [
            ("shop", "orders", true),
            ("shop", "users", false),
            ("crm", "leads", true),
            ("crm", "secrets", false),
            ("other", "orders", false),
        ];
        for (db, t, want) in cases {
            assert_eq!(f.matches(db, t), want, "{db}.{t}");
        }
        assert_eq!(f.databases(), vec!["crm", "shop"]);
    }
}
