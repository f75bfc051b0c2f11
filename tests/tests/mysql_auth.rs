//! Authentication against real MySQL 9 (`scripts/stack up mysql9`): `caching_sha2_password`, the
//! default and only built-in password plugin there, over both of its full-authentication paths.
//!
//! `caching_sha2_password` has a fast path (the server has the account's hash cached from an
//! earlier login) and a full-authentication path (first login after the account was created or
//! the cache was flushed). Full authentication sends the password itself, so the server accepts
//! it only over TLS (as cleartext inside the tunnel) or, without TLS, RSA-encrypted with the
//! server's public key that the client requests. A client library that implements only the
//! fast path works in a developer's loop and fails in production after every server restart,
//! so each test here creates a fresh account: its first login is guaranteed to be a full
//! authentication, and the second one takes the fast path.
//!
//! The accounts get the same grants as the stack's CDC user, and the tests end by reading the
//! binlog status the reader's preflight reads, so they prove the least-privilege login works
//! for what CDC needs, not only that a socket opened.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use rand::Rng;
use std::path::PathBuf;

/// `MYSQL9_ADMIN_URL` from the harness (the environment of `eval "$(scripts/stack env)"`, or
/// `scripts/stack env` itself). The tests fail, never skip, when MySQL 9 is not configured: a
/// skipped auth test would hide exactly the breakage it exists to catch.
fn admin_opts() -> Opts {
    let url = cdcsync_tests::stack()
        .mysql9_admin_url
        .clone()
        .expect("MYSQL9_ADMIN_URL is not set: run `scripts/stack up mysql9`");
    Opts::from_url(&url).expect("MYSQL9_ADMIN_URL is a mysql:// URL")
}

/// The CA that signed the stack's MySQL 9 server certificate.
fn ca_path() -> PathBuf {
    PathBuf::from(
        cdcsync_tests::stack()
            .mysql9_ssl_ca
            .as_deref()
            .expect("MYSQL9_SSL_CA is not set: run `scripts/stack up mysql9`"),
    )
}

/// TLS that verifies the server certificate against the stack's CA *and* its host name
/// (the stack's server certificate names 127.0.0.1 and localhost).
fn verified_tls() -> SslOpts {
    SslOpts::default()
        .with_root_certs(vec![ca_path().into()])
        .with_disable_built_in_roots(true)
}

/// A fresh account with the CDC grants, dropped again by `drop_user`.
struct TestUser {
    name: String,
    password: String,
}

async fn create_user() -> TestUser {
    let suffix: u32 = rand::rng().random();
    let user = TestUser {
        name: format!("auth_{suffix:08x}"),
        // Long and with characters that must survive the XOR-with-nonce and RSA padding intact.
        password: format!("pw-{suffix:08x}-ünïcødé-🔑-{}", "x".repeat(40)),
    };
    let mut admin = Conn::new(admin_opts())
        .await
        .expect("admin login to MySQL 9");
    admin
        .query_drop(format!(
            "CREATE USER '{}'@'127.0.0.1' IDENTIFIED WITH caching_sha2_password BY '{}'",
            user.name, user.password
        ))
        .await
        .unwrap();
    admin
        .query_drop(format!(
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO '{}'@'127.0.0.1'",
            user.name
        ))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    user
}

async fn drop_user(user: &TestUser) {
    let mut admin = Conn::new(admin_opts()).await.unwrap();
    admin
        .query_drop(format!("DROP USER IF EXISTS '{}'@'127.0.0.1'", user.name))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
}

fn user_opts(user: &TestUser, tls: Option<SslOpts>) -> OptsBuilder {
    OptsBuilder::from_opts(admin_opts())
        .user(Some(user.name.clone()))
        .pass(Some(user.password.clone()))
        .ssl_opts(tls)
        // A unix socket counts as secure for full authentication; force TCP so that the
        // non-TLS test really takes the RSA path.
        .prefer_socket(false)
}

/// Logs in, and returns (authentication plugin of the session's account, TLS version or "").
async fn login(opts: OptsBuilder) -> Result<(String, String), mysql_async::Error> {
    let mut conn = Conn::new(opts).await?;
    let plugin: String = conn
        .query_first("SELECT plugin FROM mysql.user WHERE CONCAT(user, '@', host) = CURRENT_USER()")
        .await?
        .unwrap_or_default();
    let tls: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
        .await?;
    // What the reader's preflight needs from a least-privilege account.
    let status: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOG STATUS").await?;
    assert_eq!(status.len(), 1, "SHOW BINARY LOG STATUS returns one row");
    conn.disconnect().await?;
    Ok((plugin, tls.map(|(_, v)| v).unwrap_or_default()))
}

#[tokio::test]
async fn caching_sha2_full_auth_over_verified_tls() {
    let user = create_user().await;
    let first = login(user_opts(&user, Some(verified_tls()))).await;
    let second = login(user_opts(&user, Some(verified_tls()))).await;
    drop_user(&user).await;
    let (plugin, tls) = first.expect("first (full-authentication) login over TLS");
    assert_eq!(plugin, "caching_sha2_password");
    assert!(
        tls.starts_with("TLSv1."),
        "session is encrypted: Ssl_version={tls:?}"
    );
    let (_, tls) = second.expect("second (cached, fast-path) login over TLS");
    assert!(tls.starts_with("TLSv1."));
}

#[tokio::test]
async fn caching_sha2_full_auth_over_rsa_without_tls() {
    let user = create_user().await;
    let first = login(user_opts(&user, None)).await;
    let second = login(user_opts(&user, None)).await;
    drop_user(&user).await;
    let (plugin, tls) =
        first.expect("first (full-authentication, RSA-encrypted) login without TLS");
    assert_eq!(plugin, "caching_sha2_password");
    assert_eq!(
        tls, "",
        "this login must not use TLS, or it would not test the RSA path"
    );
    second.expect("second (cached, fast-path) login without TLS");
}

#[tokio::test]
async fn full_auth_again_after_the_cache_is_flushed() {
    // A server restart empties the cache just as FLUSH PRIVILEGES does; the reader must log in
    // again afterwards without TLS configured.
    let user = create_user().await;
    let warm = login(user_opts(&user, None)).await;
    let mut admin = Conn::new(admin_opts()).await.unwrap();
    admin.query_drop("FLUSH PRIVILEGES").await.unwrap();
    admin.disconnect().await.unwrap();
    let after_flush = login(user_opts(&user, None)).await;
    drop_user(&user).await;
    warm.expect("login before the flush");
    after_flush.expect("full authentication after FLUSH PRIVILEGES");
}

#[tokio::test]
async fn wrong_password_is_access_denied() {
    let user = create_user().await;
    let mut opts = user_opts(&user, None);
    opts = opts.pass(Some(format!("{}-wrong", user.password)));
    let result = login(opts).await;
    drop_user(&user).await;
    match result {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045, "{e}"),
        other => panic!("expected access denied (1045), got {other:?}"),
    }
}

#[tokio::test]
async fn tls_rejects_a_server_certificate_from_another_ca() {
    // Host-name and chain verification are both on: with the system roots only (which do not
    // contain the stack's private CA) the handshake must fail. This proves the TLS test above
    // verified the certificate rather than accepting anything.
    let user = create_user().await;
    let result = login(user_opts(&user, Some(SslOpts::default()))).await;
    drop_user(&user).await;
    let err = result
        .expect_err("TLS with an unknown CA must fail")
        .to_string();
    assert!(
        err.contains("UnknownIssuer") || err.to_ascii_lowercase().contains("certificate"),
        "the failure must be certificate verification, got: {err}"
    );
}
