//! Runs one long-lived component (reader or applier) as a daemon: telemetry endpoints, systemd
//! readiness and watchdog notifications, and a bounded graceful shutdown.
//!
//! Shutdown follows mini-redis: SIGTERM/SIGINT cancel one token that the component watches; the
//! component drains (flushes, commits what is durable) and returns; if it has not returned within
//! `telemetry.shutdown_timeout_ms` the process exits non-zero anyway, so a service manager never
//! waits forever.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use cdc_config::TelemetryConfig;
use cdc_telemetry::{Health, Shutdown};
use sd_notify::NotifyState;

/// Whether an error means "stop and tell the operator" rather than "retry".
pub trait Definite {
    /// True for definite failures (they exit with code 2, transient-but-fatal ones with 1).
    fn is_definite(&self) -> bool;
}

/// Runs `component` until it returns or the process is asked to stop.
pub async fn run<F, Fut, E>(
    telemetry: &TelemetryConfig,
    name: &'static str,
    component: F,
) -> ExitCode
where
    F: FnOnce(Health, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Definite + Send + 'static,
{
    let shutdown = cdc_telemetry::shutdown_signal();
    let health = Health::new();
    build_info(name);
    let server = match cdc_telemetry::serve(&telemetry.bind, health.clone(), shutdown.clone()).await
    {
        Ok((addr, task)) => {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            task
        }
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = tokio::spawn(systemd_notifier(health.clone(), shutdown.clone()));
    let mut task = tokio::spawn(component(health, shutdown.clone()));
    let result = tokio::select! {
        r = &mut task => r,
        _ = shutdown.cancelled() => {
            let bound = Duration::from_millis(telemetry.shutdown_timeout_ms);
            match tokio::time::timeout(bound, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(timeout_ms = telemetry.shutdown_timeout_ms, "{name} did not stop within the shutdown bound; exiting");
                    task.abort();
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    shutdown.cancel();
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    notifier.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    match result {
        Ok(Ok(())) => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            tracing::error!(definite = e.is_definite(), "{name} failed: {e}");
            eprintln!("error: {name} failed: {e}");
            ExitCode::from(if e.is_definite() { 2 } else { 1 })
        }
        Err(e) => {
            tracing::error!("{name} panicked: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cdcsync_build_info{version, component} 1`.
fn build_info(component: &str) {
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "cdcsync_build_info",
            "Always 1; labels name the version and component.",
        ),
        &["version", "component"],
    )
    .expect("valid metric");
    if cdc_telemetry::registry()
        .register(Box::new(gauge.clone()))
        .is_ok()
    {
        gauge
            .with_label_values(&[env!("CARGO_PKG_VERSION"), component])
            .set(1);
    }
}

/// Tells systemd (when run under it with `Type=notify`) READY=1 once the component is ready, and
/// pets the watchdog while the main loop beats. Outside systemd the calls do nothing.
async fn systemd_notifier(health: Health, shutdown: Shutdown) {
    let mut usec = 0u64;
    let watchdog =
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
    let mut ready_sent = false;
    let mut last_pet = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if !ready_sent && health.is_ready() {
            let _ = sd_notify::notify(false, &[NotifyState::Ready]);
            ready_sent = true;
        }
        if let Some(interval) = watchdog {
            // Only pet the watchdog while the main loop is alive: a stuck loop gets restarted.
            if last_pet.elapsed() >= interval && health.is_alive(interval * 2) {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                last_pet = tokio::time::Instant::now();
            }
        }
    }
}
