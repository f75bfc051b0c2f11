//! One shutdown signal for all tasks (mini-redis style): SIGTERM or SIGINT cancels a token that
//! every task watches; the binary then waits for the tasks, bounded by a timeout.

use tokio_util::sync::CancellationToken;

/// The process-wide shutdown token.
pub type Shutdown = CancellationToken;

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Shutdown {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        }
        t.cancel();
    });
    token
}
