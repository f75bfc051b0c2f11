//! Client options for every connection to the source, built in one place from `[source]`.
//!
//! The replication session, the preflight checks, the snapshot pool and reconciliation all
//! connect to the same server with the same credentials, TCP settings and TLS mode; building
//! their options here keeps a TLS setting from applying to one connection and silently not to
//! another.
//!
//! TLS modes follow MySQL's `--ssl-mode` (and Debezium's `database.ssl.mode`):
//!
//! | `source.tls.mode` | encrypted | chain verified | host name verified |
//! |---|---|---|---|
//! | `disabled` | no | — | — |
//! | `required` | yes | no | no |
//! | `verify_ca` | yes | yes, against `ca_file` (or public roots) | no |
//! | `verify_identity` | yes | yes | yes |
//!
//! A TLS mode other than `disabled` never falls back to plain text: a server without TLS is a
//! connection error (see [`tls_failure`]), not a downgrade.

use cdc_config::{ConfigError, SourceConfig, TlsMode};
use mysql_async::{OptsBuilder, SslOpts};

/// The options every source connection starts from: URL with password, TCP only (never the
/// local socket the URL's host might resolve to, whose TLS and auth rules differ), and TLS.
/// Callers add their own session `init` statements and pool bounds.
pub fn client_opts(source: &SourceConfig) -> Result<OptsBuilder, ConfigError> {
    let url = source.connection_url()?;
    let opts = mysql_async::Opts::from_url(&url)
        .map_err(|e| ConfigError::invalid("source.url", e.to_string()))?;
    Ok(OptsBuilder::from_opts(opts)
        .prefer_socket(false)
        .ssl_opts(ssl_opts(source)))
}

/// The TLS part of [`client_opts`].
fn ssl_opts(source: &SourceConfig) -> Option<SslOpts> {
    let tls = &source.tls;
    let with_ca = |o: SslOpts| match &tls.ca_file {
        // A private CA replaces the public roots: a certificate from any public CA is not
        // the source's.
        Some(ca) => o
            .with_root_certs(vec![std::path::PathBuf::from(ca).into()])
            .with_disable_built_in_roots(true),
        None => o,
    };
    match tls.mode {
        TlsMode::Disabled => None,
        TlsMode::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        TlsMode::VerifyCa => {
            Some(with_ca(SslOpts::default()).with_danger_skip_domain_validation(true))
        }
        TlsMode::VerifyIdentity => Some(with_ca(SslOpts::default())),
    }
}

/// When `e` is a TLS failure that reconnecting cannot cure (certificate not trusted or not for
/// this host, unreadable CA file, server without TLS), its description and the fix.
pub fn tls_failure(e: &mysql_async::Error) -> Option<(String, &'static str)> {
    use mysql_async::{DriverError, Error, IoError};
    match e {
        Error::Driver(DriverError::NoClientSslFlagFromServer) => Some((
            "the server does not offer TLS".into(),
            "enable TLS on the server (ssl_cert/ssl_key), or set source.tls.mode = \"disabled\"",
        )),
        Error::Io(IoError::Tls(t)) => Some((
            t.to_string(),
            "check source.tls.ca_file (a readable PEM file of the CA that signed the server certificate)",
        )),
        Error::Io(IoError::Io(io)) => {
            let text = io.to_string();
            let lower = text.to_ascii_lowercase();
            if lower.contains("certificate") || lower.contains("handshake") {
                Some((
                    text,
                    "set source.tls.ca_file to the CA that signed the server certificate, and use the host name the certificate names in source.url (or source.tls.mode = \"verify_ca\" to skip the host name check)",
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(tls: &str) -> SourceConfig {
        cdc_config::from_toml(&format!(
            "name = \"shop\"\nurl = \"mysql://cdc@127.0.0.1:3306\"\ninclude_tables = [\"shop.orders\"]\n{tls}"
        ))
        .unwrap()
    }

    #[test]
    fn tls_modes_map_to_client_settings() {
        assert!(ssl_opts(&source("")).is_none());
        let required = ssl_opts(&source("tls = { mode = \"required\" }")).unwrap();
        assert!(required.accept_invalid_certs() && required.skip_domain_validation());
        let ca = ssl_opts(&source(
            "tls = { mode = \"verify_ca\", ca_file = \"/etc/ssl/ca.pem\" }",
        ))
        .unwrap();
        assert!(!ca.accept_invalid_certs() && ca.skip_domain_validation());
        assert!(ca.disable_built_in_roots() && ca.root_certs().len() == 1);
        let identity = ssl_opts(&source("tls = { mode = \"verify_identity\" }")).unwrap();
        assert!(!identity.accept_invalid_certs() && !identity.skip_domain_validation());
        assert!(!identity.disable_built_in_roots());
    }
}
