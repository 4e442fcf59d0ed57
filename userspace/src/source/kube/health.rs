//! Whether the API server is being followed: shared between the watchers,
//! which report successes and failures, and `/healthz` and the metrics,
//! which show them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The connection to the API server as the watchers see it.
#[derive(Debug, Default)]
pub struct ApiHealth {
    state: Mutex<State>,
    restarts: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The watches failing now, and since when (one healthy watch does
    /// not hide another's failure).
    failing: HashMap<String, Instant>,
    last_error: Option<String>,
}

/// A snapshot of [`ApiHealth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiStatus {
    /// No failure since the last successful list or watch event.
    pub connected: bool,
    /// How long requests have been failing (0 when connected).
    pub failing_for: Duration,
    /// The latest failure, once there has been one.
    pub last_error: Option<String>,
    /// List or watch requests that failed and were retried, since start.
    pub restarts: u64,
}

impl ApiHealth {
    /// `watch` got an event, or its resource answered a request.
    pub fn succeeded(&self, watch: &str) {
        let mut state = self.lock();
        if state.failing.remove(watch).is_some() && state.failing.is_empty() {
            tracing::info!("Kubernetes API reachable again");
        }
    }

    /// A list or watch request of `watch` failed with `error` (it is
    /// retried).
    pub fn failed(&self, watch: &str, error: String) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state
            .failing
            .entry(watch.to_owned())
            .or_insert_with(Instant::now);
        state.last_error = Some(error);
    }

    /// Whether `watch` is failing now.
    pub fn is_failing(&self, watch: &str) -> bool {
        self.lock().failing.contains_key(watch)
    }

    /// The current status.
    pub fn status(&self) -> ApiStatus {
        let state = self.lock();
        ApiStatus {
            connected: state.failing.is_empty(),
            failing_for: state
                .failing
                .values()
                .map(Instant::elapsed)
                .max()
                .unwrap_or(Duration::ZERO),
            last_error: state.last_error.clone(),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.connected {
            return f.write_str("Kubernetes API: following");
        }
        write!(
            f,
            "Kubernetes API: unreachable for {} s, serving the last known state, retrying",
            self.failing_for.as_secs()
        )?;
        if let Some(e) = &self.last_error {
            write!(f, " (last error: {e})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_cleared_by_a_success() {
        let health = ApiHealth::default();
        assert!(health.status().connected);
        health.failed("services", "connection refused".into());
        health.failed("endpointslices", "connection refused again".into());
        let status = health.status();
        assert!(!status.connected);
        assert_eq!(status.restarts, 2);
        assert_eq!(
            status.last_error.as_deref(),
            Some("connection refused again")
        );
        assert!(status.to_string().contains("unreachable"), "{status}");
        health.succeeded("services");
        assert!(!health.status().connected, "endpointslices still fail");
        health.succeeded("endpointslices");
        let status = health.status();
        assert!(status.connected);
        assert_eq!(status.restarts, 2, "restarts are a running count");
        assert_eq!(status.to_string(), "Kubernetes API: following");
    }
}
