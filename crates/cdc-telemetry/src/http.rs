//! The HTTP server for `/metrics`, `/healthz` and `/readyz`.

use std::time::Duration;

use axum::{http::StatusCode, routing::get, Router};
use tokio_util::sync::CancellationToken;

use crate::Health;

/// How long the main loop may be silent before `/healthz` fails.
const LIVENESS_WINDOW: Duration = Duration::from_secs(30);

/// Errors starting the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source} (change telemetry.bind)")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Binds `addr` and serves the endpoints until `shutdown` is cancelled. Returns the bound address
/// (useful with port 0) and the server task.
pub async fn serve(
    addr: &str,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let h1 = health.clone();
    let h2 = health;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    crate::render_metrics(),
                )
            }),
        )
        .route(
            "/healthz",
            get(move || async move {
                if h1.is_alive(LIVENESS_WINDOW) {
                    (StatusCode::OK, "alive\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n")
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                if h2.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((local, task))
}
