//! Reader errors, split into definite failures (halt, tell the operator what to do) and transient
//! ones (reconnect with backoff).

use cdc_config::ConfigError;

/// Why the reader stopped or has to reconnect.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The source's binlog no longer has the position the reader must resume from.
    #[error("the source purged the binlog the reader needs ({detail}); changes since the checkpoint are lost to the reader. Fix: re-snapshot the captured tables with `cdcsync snapshot --table <db.table>` (which resets the checkpoint), and raise binlog retention (expire_logs_days / binlog_expire_logs_seconds) above the longest reader outage")]
    Purged {
        /// The server's message and the position asked for.
        detail: String,
    },
    /// The checkpoint's GTID is not in the source's binlog history (another server, a reset).
    #[error("the source does not know the checkpoint's GTID position ({detail}); the checkpoint belongs to another server or the source's binlog was reset. Fix: re-snapshot with `cdcsync snapshot --table <db.table>`, or point source.url at the server the checkpoint came from")]
    GtidUnknown {
        /// The server's message.
        detail: String,
    },
    /// Another replica (or the source itself) uses the configured `server_id`.
    #[error("server_id clash: {detail}. Fix: set source.server_id to a value unique among the source's replicas and different from the source's own @@server_id")]
    ServerId {
        /// What clashed.
        detail: String,
    },
    /// The source refused the credentials or lacks privileges.
    #[error("the source refused the CDC user: {detail}. Fix: check source.url / source.password and grant REPLICATION SLAVE, REPLICATION CLIENT, SELECT")]
    Auth {
        /// The server's message.
        detail: String,
    },
    /// TLS to the source failed in a way reconnecting cannot cure.
    #[error("TLS to the source failed: {detail}. Fix: {fix}")]
    Tls {
        /// What failed.
        detail: String,
        /// What the operator can do.
        fix: &'static str,
    },
    /// The source runs with settings the reader would lose data under.
    #[error("source setting refused: {0}")]
    SourceSetting(String),
    /// A binlog event the reader does not understand; skipping it could lose changes.
    #[error("unsupported binlog event at {file}:{pos}: {detail}. The reader stops rather than skip changes. Fix: {fix}")]
    UnsupportedEvent {
        /// Binlog file.
        file: String,
        /// Event position.
        pos: u64,
        /// What was found.
        detail: String,
        /// What the operator can do.
        fix: String,
    },
    /// Kafka rejected a message permanently (e.g. larger than the broker allows).
    #[error("Kafka rejected a message permanently: {0}. Fix: raise reader.max_message_bytes and the broker's message.max.bytes, or check the topic's configuration")]
    KafkaFatal(String),
    /// A source connection or query failed in a way that a reconnect may cure.
    #[error("source connection: {0}")]
    Source(String),
    /// Kafka is unreachable or a produce timed out.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Graceful shutdown could not flush within the bound.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

impl ReaderError {
    /// Definite errors halt the reader with a non-zero exit; the rest are retried.
    pub fn is_definite(&self) -> bool {
        !matches!(self, ReaderError::Source(_) | ReaderError::Kafka(_))
    }

    /// The `kind` label of `cdcsync_reader_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReaderError::Config(_) | ReaderError::SourceSetting(_) | ReaderError::KafkaFatal(_) => {
                "config"
            }
            ReaderError::Purged { .. } => "purged",
            ReaderError::GtidUnknown { .. } => "gtid_unknown",
            ReaderError::ServerId { .. } => "server_id",
            ReaderError::Auth { .. } => "auth",
            ReaderError::Tls { .. } => "tls",
            ReaderError::UnsupportedEvent { .. } => "unsupported_event",
            ReaderError::Source(_) | ReaderError::Kafka(_) | ReaderError::Shutdown(_) => {
                "transient"
            }
        }
    }

    /// Classifies a MySQL client error: server error codes that mean "this will never work" are
    /// definite, I/O and the rest are transient.
    pub fn from_mysql(e: mysql_async::Error) -> Self {
        match &e {
            mysql_async::Error::Server(s) => classify_server_error(s.code, &s.message),
            _ => match crate::source::tls_failure(&e) {
                Some((detail, fix)) => ReaderError::Tls { detail, fix },
                None => ReaderError::Source(e.to_string()),
            },
        }
    }
}

/// Maps a server error code and message to an error (see the server's `ER_*` list).
pub(crate) fn classify_server_error(code: u16, message: &str) -> ReaderError {
    let m = message.to_ascii_lowercase();
    match code {
        // ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR,
        // ER_ACCOUNT_HAS_BEEN_LOCKED, ER_TABLEACCESS_DENIED_ERROR.
        1045 | 1044 | 1227 | 3118 | 1142 => ReaderError::Auth {
            detail: format!("error {code}: {message}"),
        },
        // MariaDB ER_SLAVE_SAME_ID: another replica registered with our server_id and the
        // server dropped this connection in its favour.
        4052 => ReaderError::ServerId {
            detail: format!("error {code}: {message}"),
        },
        // ER_MASTER_FATAL_ERROR_READING_BINLOG: the message tells which case it is.
        1236 => {
            if m.contains("purged")
                || m.contains("could not find first log file")
                || m.contains("could not find gtid state")
            {
                ReaderError::Purged {
                    detail: format!("error {code}: {message}"),
                }
            } else if m.contains("same server") || (m.contains("equal") && m.contains("server id"))
            {
                ReaderError::ServerId {
                    detail: format!("error {code}: {message}"),
                }
            } else if m.contains("gtid") {
                ReaderError::GtidUnknown {
                    detail: format!("error {code}: {message}"),
                }
            } else {
                ReaderError::Source(format!("error {code}: {message}"))
            }
        }
        _ => ReaderError::Source(format!("error {code}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_classified() {
        let cases = [
            (1045, "Access denied for user 'cdc'@'localhost'", "auth", true),
            (1236, "Could not find first log file name in binary log index file", "purged", true),
            (1236, "Could not find GTID state requested by slave in any binlog files. Probably the slave state is too old and required binlog files have been purged.", "purged", true),
            (1236, "Cannot replicate because the source purged required binary logs.", "purged", true),
            (1236, "Error: connecting slave requested to start from GTID 0-1-999, which is not in the master's binlog", "gtid_unknown", true),
            (1236, "A slave with the same server_uuid/server_id as this slave has connected to the master", "server_id", true),
            (4052, "A slave with the same server_uuid/server_id is already connected", "server_id", true),
            (2013, "Lost connection", "transient", false),
        ];
        for (code, msg, kind, definite) in cases {
            let e = classify_server_error(code, msg);
            assert_eq!(e.kind(), kind, "{msg}");
            assert_eq!(e.is_definite(), definite, "{msg}");
        }
    }

    #[test]
    fn definite_messages_name_the_fix() {
        let e = ReaderError::Purged { detail: "x".into() };
        assert!(e.to_string().contains("cdcsync snapshot --table"));
    }
}
