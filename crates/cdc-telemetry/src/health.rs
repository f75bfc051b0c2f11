//! Liveness and readiness state, updated by the components and read by `/healthz`, `/readyz`
//! and the systemd watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shared health of one process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Last time (ms since the epoch) the main loop reported it is alive.
    heartbeat_ms: AtomicU64,
    /// Connected to the source/sinks and making progress.
    ready: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    /// A new state: alive now, not ready.
    pub fn new() -> Self {
        let h = Health::default();
        h.beat();
        h
    }

    /// The main loop calls this on every iteration (and at least every few seconds when idle).
    pub fn beat(&self) {
        self.inner.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Sets readiness: connected and making progress.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the main loop reported within `max_silence`.
    pub fn is_alive(&self, max_silence: Duration) -> bool {
        now_ms().saturating_sub(self.inner.heartbeat_ms.load(Ordering::Relaxed))
            <= max_silence.as_millis() as u64
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}
