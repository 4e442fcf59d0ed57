//! Per-Ingress behaviour set by `gangplank.io/*` annotations.
//!
//! - `gangplank.io/ssl-redirect`: `"true"` (default) or `"false"`. With
//!   `true`, plain-HTTP requests routed to this Ingress get a 308 to
//!   `https://` when their host has a certificate from `spec.tls`
//!   (ingress-nginx's `ssl-redirect`, with 308 so methods and bodies
//!   survive the redirect).
//! - `gangplank.io/backend-protocol`: `http` (default, HTTP/1.1 to the
//!   endpoints), `h2c` or `grpc` (HTTP/2 with prior knowledge: gRPC servers
//!   speak nothing else).
//! - `gangplank.io/load-balance`: `round-robin` (default) or
//!   `least-requests` (power of two choices over in-flight requests).
//!
//! A value we do not know is reported (naming the Ingress and the
//! annotation) and the default is used: a typo must not take routes down.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::networking::v1::Ingress;

/// `gangplank.io/ssl-redirect`.
pub const SSL_REDIRECT: &str = "gangplank.io/ssl-redirect";
/// `gangplank.io/backend-protocol`.
pub const BACKEND_PROTOCOL: &str = "gangplank.io/backend-protocol";
/// `gangplank.io/load-balance`.
pub const LOAD_BALANCE: &str = "gangplank.io/load-balance";

/// How the proxy talks to an Ingress's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), also for gRPC.
    H2c,
}

/// How an endpoint is picked for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The one with fewer requests in flight of two picked at random.
    LeastRequests,
}

/// An Ingress's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressOptions {
    /// Redirect plain HTTP to HTTPS for hosts with TLS.
    pub ssl_redirect: bool,
    /// Protocol to the endpoints.
    pub backend_protocol: BackendProtocol,
    /// Endpoint choice.
    pub load_balance: LoadBalance,
}

impl Default for IngressOptions {
    fn default() -> Self {
        IngressOptions {
            ssl_redirect: true,
            backend_protocol: BackendProtocol::default(),
            load_balance: LoadBalance::default(),
        }
    }
}

/// An annotation with a value we do not understand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationError {
    /// The annotation's key.
    pub annotation: &'static str,
    /// What it said.
    pub value: String,
    /// What it may say.
    pub expected: &'static str,
}

impl fmt::Display for AnnotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {}: {:?} is not one of {} (using the default)",
            self.annotation, self.value, self.expected
        )
    }
}

impl IngressOptions {
    /// The options `ingress`'s annotations ask for, and the annotations
    /// that were ignored.
    pub fn from_ingress(ingress: &Ingress) -> (Self, Vec<AnnotationError>) {
        let empty = BTreeMap::new();
        let annotations = ingress.metadata.annotations.as_ref().unwrap_or(&empty);
        let mut options = IngressOptions::default();
        let mut errors = Vec::new();
        let mut check = |key: &'static str, expected: &'static str| -> Option<String> {
            let value = annotations.get(key)?;
            let normalized = value.trim().to_ascii_lowercase();
            if !expected.split(", ").any(|v| v == normalized) {
                errors.push(AnnotationError {
                    annotation: key,
                    value: value.clone(),
                    expected,
                });
                return None;
            }
            Some(normalized)
        };
        if let Some(v) = check(SSL_REDIRECT, "true, false") {
            options.ssl_redirect = v == "true";
        }
        if let Some(v) = check(BACKEND_PROTOCOL, "http, h2c, grpc") {
            options.backend_protocol = match v.as_str() {
                "h2c" | "grpc" => BackendProtocol::H2c,
                _ => BackendProtocol::Http1,
            };
        }
        if let Some(v) = check(LOAD_BALANCE, "round-robin, least-requests") {
            options.load_balance = match v.as_str() {
                "least-requests" => LoadBalance::LeastRequests,
                _ => LoadBalance::RoundRobin,
            };
        }
        (options, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(annotations: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "annotations": annotations},
        }))
        .expect("valid Ingress")
    }

    #[test]
    fn defaults_without_annotations() {
        let (options, errors) = IngressOptions::from_ingress(&with(json!({})));
        assert_eq!(options, IngressOptions::default());
        assert!(options.ssl_redirect);
        assert!(errors.is_empty());
    }

    #[test]
    fn every_annotation_is_read() {
        let (options, errors) = IngressOptions::from_ingress(&with(json!({
            SSL_REDIRECT: "false",
            BACKEND_PROTOCOL: "GRPC",
            LOAD_BALANCE: "least-requests",
        })));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!options.ssl_redirect);
        assert_eq!(options.backend_protocol, BackendProtocol::H2c);
        assert_eq!(options.load_balance, LoadBalance::LeastRequests);
        let (options, _) = IngressOptions::from_ingress(&with(json!({BACKEND_PROTOCOL: "h2c"})));
        assert_eq!(options.backend_protocol, BackendProtocol::H2c);
    }

    #[test]
    fn unknown_values_are_reported_and_defaulted() {
        let (options, errors) = IngressOptions::from_ingress(&with(json!({
            SSL_REDIRECT: "yes",
            BACKEND_PROTOCOL: "https",
        })));
        assert_eq!(options, IngressOptions::default());
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].annotation, SSL_REDIRECT);
        assert!(errors[1].to_string().contains("\"https\""), "{}", errors[1]);
    }
}
