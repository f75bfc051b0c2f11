//! Telemetry shared by every cdcsync process: tracing setup, the Prometheus registry, the HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`) and the shutdown signal.
//!
//! Metrics live in the process-wide default Prometheus registry; each component declares its
//! metrics once, as `LazyLock` statics in its own `metrics` module, named
//! `cdcsync_<name>_<unit>[_total]` (see `docs/metrics.md`).

mod health;
mod http;
mod shutdown;

pub use health::Health;
pub use http::{serve, HttpError};
pub use shutdown::{shutdown_signal, Shutdown};

use cdc_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: `RUST_LOG` if set, else `config.log_level`; human or
/// JSON lines on stderr. Safe to call more than once (later calls do nothing).
pub fn init_tracing(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide registry that `/metrics` exposes (Prometheus' default registry, which also
/// carries the `process_*` collector on Linux).
pub fn registry() -> &'static prometheus::Registry {
    prometheus::default_registry()
}

/// Renders every registered metric in the Prometheus text format.
pub fn render_metrics() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    let _ = encoder.encode(&registry().gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

mod check;
pub use check::{CheckReport, CheckStatus};
