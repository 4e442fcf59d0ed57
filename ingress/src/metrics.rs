//! Prometheus metrics of the Ingress proxy, served on the admin port with
//! `/healthz` and `/readyz` (see `admin`).
//!
//! Label sets are bounded by configuration, never by clients: `ingress`
//! and `service` come from the route table (empty when no route matched),
//! `status` is one of the few codes a proxy returns. They are kept as the
//! route's shared names and only spelled out when scraped, so counting a
//! request allocates nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::fmt::Write;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::route::{IngressRef, ServiceBackend};

/// A label value shown as its `Display` (`namespace/name` for an Ingress,
/// `namespace/name:port` for a backend), or empty when absent.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Shown<T>(pub Option<T>);

impl<T: std::fmt::Display> EncodeLabelValue for Shown<T> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(v) => write!(encoder, "{v}"),
            None => Ok(()),
        }
    }
}

/// `ingress`, `service`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The routed Ingress, if any.
    pub ingress: Shown<IngressRef>,
    /// The backend, if any.
    pub service: Shown<ServiceBackend>,
    /// The response status code.
    pub status: u16,
}

/// `ingress`, `service`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The routed Ingress, if any.
    pub ingress: Shown<IngressRef>,
    /// The backend, if any.
    pub service: Shown<ServiceBackend>,
}

/// `service`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The backend.
    pub service: Shown<ServiceBackend>,
}

/// `result`: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Every metric of the proxy.
#[derive(Debug)]
pub struct IngressMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    upstream_connect_errors: Family<ServiceLabels, Counter>,
    tls_handshakes: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    config_errors: Gauge,
    ready_gauge: Gauge,
    connections: Gauge,
    ready: AtomicBool,
}

impl Default for IngressMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngressMetrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gangplank_ingress");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by Ingress, backend Service and status",
            requests.clone(),
        );
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to ~65 s, doubling.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 18,
            ))
        });
        registry.register(
            "request_duration_seconds",
            "Time from the request's arrival to the end of the response",
            duration.clone(),
        );
        let upstream_connect_errors = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Failed connection attempts to endpoints (each one retried elsewhere when possible)",
            upstream_connect_errors.clone(),
        );
        let tls_handshakes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes with clients, by result",
            tls_handshakes.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads (routes, endpoints, certificates); error: applied with problems reported",
            reloads.clone(),
        );
        let config_errors = Gauge::default();
        registry.register(
            "config_errors",
            "Problems in the objects currently applied (each is logged naming the object)",
            config_errors.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 once the initial configuration is applied and the listeners are bound",
            ready_gauge.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open",
            connections.clone(),
        );
        IngressMetrics {
            registry,
            requests,
            duration,
            upstream_connect_errors,
            tls_handshakes,
            reloads,
            config_errors,
            ready_gauge,
            connections,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts one answered request.
    pub fn request(
        &self,
        ingress: Option<&IngressRef>,
        service: Option<&ServiceBackend>,
        status: u16,
        elapsed: Duration,
    ) {
        let route = RouteLabels {
            ingress: Shown(ingress.cloned()),
            service: Shown(service.cloned()),
        };
        self.duration
            .get_or_create(&route)
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                ingress: route.ingress,
                service: route.service,
                status,
            })
            .inc();
    }

    /// Counts a failed connection attempt to an endpoint of `service`.
    pub fn upstream_connect_error(&self, service: &ServiceBackend) {
        self.upstream_connect_errors
            .get_or_create(&ServiceLabels {
                service: Shown(Some(service.clone())),
            })
            .inc();
    }

    /// Counts a TLS handshake.
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts a reload and records how many problems the applied objects
    /// have.
    pub fn reload(&self, errors: usize) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if errors == 0 { "ok" } else { "error" },
            })
            .inc();
        self.config_errors
            .set(i64::try_from(errors).unwrap_or(i64::MAX));
    }

    /// A client connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// Marks the proxy ready (`/readyz` 200).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
        self.ready_gauge.set(1);
    }

    /// Whether [`IngressMetrics::set_ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_exposition() {
        let m = IngressMetrics::new();
        let ingress = IngressRef::new("default", "web");
        let service = ServiceBackend {
            namespace: "default".into(),
            name: "web".into(),
            port: crate::route::ServicePort::Number(80),
        };
        m.request(
            Some(&ingress),
            Some(&service),
            200,
            Duration::from_millis(3),
        );
        m.request(None, None, 404, Duration::from_millis(1));
        m.upstream_connect_error(&service);
        m.tls_handshake(true);
        m.reload(2);
        let text = m.encode();
        for expected in [
            "gangplank_ingress_requests_total{ingress=\"default/web\",service=\"default/web:80\",status=\"200\"} 1",
            "gangplank_ingress_request_duration_seconds_count{ingress=\"default/web\",service=\"default/web:80\"} 1",
            "gangplank_ingress_upstream_connect_errors_total{service=\"default/web:80\"} 1",
            "gangplank_ingress_tls_handshakes_total{result=\"ok\"} 1",
            "gangplank_ingress_reloads_total{result=\"error\"} 1",
            "gangplank_ingress_config_errors 2",
            "gangplank_ingress_ready 0",
            "gangplank_ingress_requests_total{ingress=\"\",service=\"\",status=\"404\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
