//! Problems found while building a route table, per Ingress and field.

use std::fmt;

use super::{IngressRef, PathType};

/// How bad a [`RouteError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Served, but not everything as written (shadowed, matched literally).
    Warning,
    /// Part of the Ingress (the field named) is not served.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem in one Ingress. Displays as
/// `error: Ingress ns/name spec.rules[0].host: invalid host ...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: Ingress {ingress} {field}: {kind}", kind.severity())]
pub struct RouteError {
    /// The Ingress at fault.
    pub ingress: IngressRef,
    /// The field at fault, e.g. `spec.rules[0].http.paths[1].path`.
    pub field: String,
    /// What is wrong.
    pub kind: RouteErrorKind,
}

impl RouteError {
    /// Warning or error.
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }
}

/// What is wrong with an Ingress field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteErrorKind {
    /// `metadata.name` is missing: nothing of the Ingress is served.
    #[error("missing; the Ingress is ignored")]
    MissingName,
    /// Neither `spec.rules` nor `spec.defaultBackend`: nothing to serve.
    #[error("either defaultBackend or rules must be specified")]
    NothingToServe,
    /// A rule's host is not a DNS name or wildcard: the rule is not served.
    #[error("invalid host {host:?}: {reason}; the rule is ignored")]
    InvalidHost {
        /// The host as written.
        host: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A rule with `http` but no paths.
    #[error("no paths; the rule routes nothing")]
    NoPaths,
    /// `pathType` is not Exact, Prefix or ImplementationSpecific: the path is
    /// not served.
    #[error(
        "unsupported pathType {0:?} (Exact, Prefix or ImplementationSpecific); the path is ignored"
    )]
    InvalidPathType(String),
    /// The path is invalid: it is not served.
    #[error("invalid path {path:?}: {reason}; the path is ignored")]
    InvalidPath {
        /// The path as written.
        path: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The path has regex metacharacters; Ingress v1 paths are literal.
    #[error("path {0:?} contains regex metacharacters; it is matched literally, not as a regex")]
    RegexPath(String),
    /// The backend is invalid: the path (or default backend) is kept and
    /// answered 503.
    #[error("invalid backend: {0}; requests for it are answered 503")]
    InvalidBackend(String),
    /// A `resource` backend, which is not served: requests are answered 503.
    #[error("resource backend {kind} {name:?} is not supported; requests for it are answered 503")]
    ResourceBackend {
        /// The resource's kind.
        kind: String,
        /// The resource's name.
        name: String,
    },
    /// The same host, path and match kind as an older rule: not served.
    #[error(
        "{path_type} path {path:?} for {} is already routed by Ingress {winner} {winner_field}, which wins (older, or first by namespace/name)",
        host_display(host)
    )]
    Conflict {
        /// The rule's host (`None`: any host).
        host: Option<String>,
        /// The path as written.
        path: String,
        /// The path type as written.
        path_type: PathType,
        /// The Ingress whose rule is served instead.
        winner: IngressRef,
        /// The field of the winning rule.
        winner_field: String,
    },
    /// Another Ingress's default backend is used where this one would apply.
    #[error(
        "not used for {}: the default backend of Ingress {winner} wins (older, or first by namespace/name)",
        match host { Some(h) => format!("host {h:?}"), None => "unmatched hosts".to_owned() }
    )]
    DefaultBackendShadowed {
        /// The host (`None`: the cluster-wide default for unmatched hosts).
        host: Option<String>,
        /// The Ingress whose default backend is used instead.
        winner: IngressRef,
    },
}

fn host_display(host: &Option<String>) -> String {
    match host {
        Some(h) => format!("host {h:?}"),
        None => "any host".to_owned(),
    }
}

impl RouteErrorKind {
    /// Warning or error.
    pub fn severity(&self) -> Severity {
        match self {
            RouteErrorKind::RegexPath(_)
            | RouteErrorKind::Conflict { .. }
            | RouteErrorKind::DefaultBackendShadowed { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }
}
