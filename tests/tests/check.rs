//! `cdcsync check` against the real stack: green on a correct setup, and the right failing line
//! (with its fix) and a non-zero exit on each deliberately broken one.

use std::process::Output;

use cdcsync_tests::{
    cdcsync_bin, source_servers, split_password, stack, unique_name, write_config, SourceDb,
    SourceServer,
};

/// A configuration for `db` on `server` as `url`, with `extra` appended to `[source]`.
fn config(server_url: &str, db: &str, table: &str, server_id: u32, kafka: &str) -> String {
    let (url, password) = split_password(server_url);
    let (pg, pg_password) = split_password(&stack().postgres_url);
    format!(
        r#"
[source]
name = "checktest"
url = "{url}"
password = "{password}"
server_id = {server_id}
include_tables = ["{db}.{table}"]

[kafka]
bootstrap_servers = "{kafka}"

[warehouse]
url = "{pg}"
password = "{pg_password}"
"#
    )
}

fn run_check(toml: &str) -> (bool, String) {
    let (_dir, path) = write_config(toml);
    let Output {
        status,
        stdout,
        stderr,
    } = std::process::Command::new(cdcsync_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run cdcsync check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

/// The line for check `name`, and the fix line under it if any.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{out}"))
}

async fn db_with_tables(server: &SourceServer) -> SourceDb {
    let db = SourceDb::create(server).await;
    db.exec(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT);
         CREATE TABLE audit_log (at DATETIME, what TEXT)",
    )
    .await;
    db
}

#[tokio::test]
async fn green_on_a_correct_setup() {
    for server in source_servers() {
        let db = db_with_tables(&server).await;
        let (ok, out) = run_check(&config(
            &server.url,
            &db.name,
            "orders",
            5401,
            &stack().kafka_bootstrap,
        ));
        assert!(ok, "{:?}: check failed:\n{out}", server.flavor);
        for name in [
            "log_bin",
            "binlog_format",
            "binlog_row_image",
            "privileges",
            "server_id",
            "kafka",
            "warehouse",
        ] {
            assert!(line(&out, name).starts_with("PASS"), "{name}: {out}");
        }
        assert!(
            line(&out, &format!("table {}.orders", db.name)).contains("primary key (id)"),
            "{out}"
        );
        assert!(!out.contains("FAIL"), "{out}");
        db.drop_db().await;
    }
}

#[tokio::test]
async fn table_without_primary_key_fails_with_its_fix() {
    for server in source_servers() {
        let db = db_with_tables(&server).await;
        let (ok, out) = run_check(&config(
            &server.url,
            &db.name,
            "audit_log",
            5401,
            &stack().kafka_bootstrap,
        ));
        assert!(!ok, "must exit non-zero:\n{out}");
        let l = line(&out, &format!("table {}.audit_log", db.name));
        assert!(
            l.starts_with("FAIL") && l.contains("has no primary key"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "fix: ALTER TABLE {}.audit_log ADD PRIMARY KEY",
                db.name
            )),
            "{out}"
        );
        db.drop_db().await;
    }
}

#[tokio::test]
async fn missing_table_fails() {
    let server = &source_servers()[0];
    let db = db_with_tables(server).await;
    let (ok, out) = run_check(&config(
        &server.url,
        &db.name,
        "no_such_table",
        5401,
        &stack().kafka_bootstrap,
    ));
    assert!(!ok);
    assert!(
        line(&out, &format!("table {}.no_such_table", db.name)).contains("does not exist"),
        "{out}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn user_without_replication_slave_fails_with_the_grant_to_run() {
    for server in source_servers() {
        let db = db_with_tables(&server).await;
        let user = unique_name("u");
        let host = if server.flavor == cdcsync_tests::Flavor::Mariadb {
            "127.0.0.1"
        } else {
            "%"
        };
        db.exec(&format!(
            "CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw-{user}';
             GRANT SELECT, REPLICATION CLIENT ON *.* TO '{user}'@'{host}'"
        ))
        .await;
        let (base, _) = split_password(&server.url);
        let (scheme_user, hostport) = base.split_once('@').unwrap();
        let scheme = scheme_user.split("://").next().unwrap();
        let url = format!("{scheme}://{user}:pw-{user}@{hostport}");
        let (ok, out) = run_check(&config(
            &url,
            &db.name,
            "orders",
            5401,
            &stack().kafka_bootstrap,
        ));
        assert!(!ok, "{out}");
        let l = line(&out, "privileges");
        assert!(
            l.starts_with("FAIL") && l.contains("missing REPLICATION SLAVE"),
            "{out}"
        );
        assert!(out.contains("fix: GRANT REPLICATION SLAVE ON *.*"), "{out}");
        db.exec(&format!("DROP USER '{user}'@'{host}'")).await;
        db.drop_db().await;
    }
}

#[tokio::test]
async fn server_id_clash_and_unreachable_kafka_fail() {
    let server = &source_servers()[0];
    let db = db_with_tables(server).await;
    let mut conn = db.conn().await;
    use mysql_async::prelude::Queryable;
    let theirs: u32 = conn
        .query_first("SELECT @@server_id")
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    // Port 1 on loopback: nothing listens there.
    let (ok, out) = run_check(&config(
        &server.url,
        &db.name,
        "orders",
        theirs,
        "127.0.0.1:1",
    ));
    assert!(!ok);
    assert!(line(&out, "server_id").starts_with("FAIL"), "{out}");
    assert!(line(&out, "kafka").starts_with("FAIL"), "{out}");
    db.drop_db().await;
}

#[tokio::test]
async fn wrong_password_and_bad_config_are_reported_before_anything_else() {
    let server = &source_servers()[0];
    let (base, _) = split_password(&server.url);
    let (scheme_user, hostport) = base.split_once('@').unwrap();
    let url = format!("{scheme_user}:wrong-password@{hostport}");
    let (ok, out) = run_check(&config(
        &url,
        "shop",
        "orders",
        5401,
        &stack().kafka_bootstrap,
    ));
    assert!(!ok);
    let l = line(&out, "source connection");
    assert!(
        l.starts_with("FAIL") && l.contains("Access denied"),
        "{out}"
    );

    let broken = config(
        &server.url,
        "shop",
        "orders",
        5401,
        &stack().kafka_bootstrap,
    )
    .replace("[kafka]", "[kafka]\nparitions = 3");
    let (ok, out) = run_check(&broken);
    assert!(!ok);
    assert!(
        out.contains("paritions"),
        "the unknown key must be named: {out}"
    );
    let zero = config(&server.url, "shop", "orders", 0, &stack().kafka_bootstrap);
    let (ok, out) = run_check(&zero);
    assert!(!ok);
    assert!(out.contains("source.server_id"), "{out}");
}

/// TLS to the source (MySQL 9 on the stack has a certificate from a private CA that names
/// 127.0.0.1): verified TLS shows the protocol in the report; a CA that did not sign the
/// certificate, and TLS against a server without it (MariaDB on the stack), fail with the fix.
#[tokio::test]
async fn source_tls_is_verified_and_its_failures_name_the_fix() {
    let Some(mysql) = source_servers()
        .into_iter()
        .find(|s| s.flavor == cdcsync_tests::Flavor::Mysql)
    else {
        panic!("MySQL 9 is not configured: run `scripts/stack up mysql9`");
    };
    let ca = stack()
        .mysql9_ssl_ca
        .clone()
        .expect("MYSQL9_SSL_CA is set with MySQL 9");
    let with_tls = |server: &SourceServer, db: &str, tls: &str| {
        config(&server.url, db, "orders", 5401, &stack().kafka_bootstrap).replacen(
            "include_tables",
            &format!("tls = {tls}\ninclude_tables"),
            1,
        )
    };
    let db = db_with_tables(&mysql).await;

    let (ok, out) = run_check(&with_tls(
        &mysql,
        &db.name,
        &format!("{{ mode = \"verify_identity\", ca_file = \"{ca}\" }}"),
    ));
    assert!(ok, "verified TLS must pass:\n{out}");
    let l = line(&out, "source TLS");
    assert!(
        l.starts_with("PASS") && l.contains("TLSv1.") && l.contains("verify_identity"),
        "{out}"
    );

    // The system bundle holds public CAs only, none of which signed the stack's certificate.
    let (ok, out) = run_check(&with_tls(
        &mysql,
        &db.name,
        "{ mode = \"verify_ca\", ca_file = \"/etc/ssl/certs/ca-certificates.crt\" }",
    ));
    assert!(!ok, "an untrusted certificate must fail:\n{out}");
    let l = line(&out, "source TLS");
    assert!(l.starts_with("FAIL"), "{out}");
    assert!(
        out.contains("source.tls.ca_file"),
        "the fix names ca_file:\n{out}"
    );

    // `required` encrypts without verifying, so the untrusted certificate is accepted.
    let (ok, out) = run_check(&with_tls(&mysql, &db.name, "{ mode = \"required\" }"));
    assert!(ok, "{out}");
    assert!(line(&out, "source TLS").contains("TLSv1."), "{out}");
    db.drop_db().await;

    let maria = cdcsync_tests::mariadb();
    let mdb = db_with_tables(&maria).await;
    let (ok, out) = run_check(&with_tls(&maria, &mdb.name, "{ mode = \"required\" }"));
    assert!(
        !ok,
        "TLS against a server without TLS must fail, never downgrade:\n{out}"
    );
    let l = line(&out, "source TLS");
    assert!(l.starts_with("FAIL") && l.contains("SSL"), "{out}");
    mdb.drop_db().await;
}
