//! What is known about one request, filled in as it is handled and written
//! out (one JSON access-log line, the request metrics) when the response
//! ends: its body finished, or the client went away. Logging at the end,
//! not at the response headers, is what makes `duration_ms` the time the
//! client really waited and `bytes` what it really got.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri, Version};

use crate::metrics::IngressMetrics;
use crate::route::{IngressRef, ServiceBackend};
use crate::upstream::InFlight;

/// The `tracing` target of access-log lines (routed to stdout as JSON by
/// the binary).
pub const ACCESS_LOG_TARGET: &str = "access";

/// One request's facts; logged and counted on drop.
#[derive(Debug)]
pub struct RequestRecord {
    start: Instant,
    metrics: Option<Arc<IngressMetrics>>,
    method: Method,
    version: Version,
    host: Option<HeaderValue>,
    /// Shares the request's buffers: no copy of the path.
    uri: Uri,
    client: SocketAddr,
    /// The Ingress whose rule matched.
    pub ingress: Option<IngressRef>,
    /// The backend that rule names.
    pub service: Option<ServiceBackend>,
    /// The endpoint of the last attempt.
    pub upstream: Option<SocketAddr>,
    /// Upstream attempts made.
    pub attempts: usize,
    /// Time from arrival to the upstream's response headers.
    pub upstream_time: Option<Duration>,
    /// The status sent to the client.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Keeps the endpoint's in-flight count (least-requests) until the
    /// response ends.
    pub in_flight: Option<InFlight>,
}

impl RequestRecord {
    /// Starts the record of a request.
    pub fn start<B>(
        req: &http::Request<B>,
        host: Option<&HeaderValue>,
        client: SocketAddr,
        metrics: Option<Arc<IngressMetrics>>,
    ) -> Self {
        RequestRecord {
            start: Instant::now(),
            metrics,
            method: req.method().clone(),
            version: req.version(),
            host: host.cloned(),
            uri: req.uri().clone(),
            client,
            ingress: None,
            service: None,
            upstream: None,
            attempts: 0,
            upstream_time: None,
            status: 0,
            bytes: 0,
            in_flight: None,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.start
    }
}

/// An optional value displayed as itself, or as nothing.
struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.request(
                self.ingress.as_ref(),
                self.service.as_ref(),
                self.status,
                elapsed,
            );
        }
        if !tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO) {
            return;
        }
        // Display values are formatted straight into the line by the
        // access-log layer: nothing is allocated here.
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = self.method.as_str(),
            host = self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            path = self.uri.path(),
            status = self.status,
            protocol = ?self.version,
            client = %self.client,
            ingress = %Shown(self.ingress.as_ref()),
            service = %Shown(self.service.as_ref()),
            upstream = %Shown(self.upstream.as_ref()),
            attempts = self.attempts,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            upstream_ms = self.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            bytes = self.bytes,
            "request"
        );
    }
}
