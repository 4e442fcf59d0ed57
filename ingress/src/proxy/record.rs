//! What is known about one request, filled in as it is handled and written
//! out (one JSON access-log line, the request metrics) when the response
//! ends: its body finished, or the client went away. Logging at the end,
//! not at the response headers, is what makes `duration_ms` the time the
//! client really waited and `bytes` what it really got.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Version};

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
    host: String,
    path: String,
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
        host: Option<&str>,
        client: SocketAddr,
        metrics: Option<Arc<IngressMetrics>>,
    ) -> Self {
        RequestRecord {
            start: Instant::now(),
            metrics,
            method: req.method().clone(),
            version: req.version(),
            host: host.unwrap_or("").to_owned(),
            path: req.uri().path().to_owned(),
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
        let ingress = self
            .ingress
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let service = self
            .service
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = self.method.as_str(),
            host = self.host.as_str(),
            path = self.path.as_str(),
            status = self.status,
            protocol = ?self.version,
            client = %self.client,
            ingress = ingress.as_str(),
            service = service.as_str(),
            upstream = self.upstream.map(|a| a.to_string()).unwrap_or_default(),
            attempts = self.attempts,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            upstream_ms = self.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            bytes = self.bytes,
            "request"
        );
    }
}
