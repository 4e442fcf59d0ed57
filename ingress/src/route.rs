//! Kubernetes Ingress v1 routing, exactly: served Ingresses become an
//! immutable [`RouteTable`] that answers "which backend serves this host and
//! path?" without allocating.
//!
//! Pure: no I/O. The proxy builds a table with [`RouteTable::build`] on every
//! change, logs the [`RouteError`]s, and swaps an `Arc<RouteTable>` in
//! atomically. One invalid Ingress (or one invalid path of it) never stops
//! the others from being served.
//!
//! # Semantics
//! Spec: <https://kubernetes.io/docs/concepts/services-networking/ingress/>
//! and the API reference of `HTTPIngressPath` / `IngressRule`.
//!
//! - **Classes** ([`ClassFilter`]): an Ingress is served when its
//!   `spec.ingressClassName` names an IngressClass whose `spec.controller` is
//!   ours; without a class, when the default IngressClass
//!   (`ingressclass.kubernetes.io/is-default-class: "true"`) is ours. The
//!   deprecated `kubernetes.io/ingress.class` annotation is honoured like
//!   ingress-nginx does (see [`ClassFilter`]).
//! - **Hosts**: exact (`foo.bar.com`) beats wildcard (`*.bar.com`, exactly one
//!   extra label) beats rules without a host (any host). The most specific
//!   host that has rules is chosen *first*, then only its paths are matched:
//!   a request for `foo.bar.com` never falls through to `*.bar.com` or to
//!   host-less paths (as nginx `server_name` and Envoy virtual hosts do).
//!   Request hosts are compared case-insensitively, a `:port` suffix is
//!   ignored and so is one trailing dot (`foo.bar.com.` is the same FQDN; nginx
//!   strips it too). IP-literal hosts only match host-less rules (the API
//!   server forbids IPs in `host`).
//! - **Paths**: `Exact` compares the whole path; `Prefix` compares element by
//!   element (split on `/`; a trailing `/` in the rule or the request is
//!   ignored; `/` matches every path); `ImplementationSpecific` is `Prefix`
//!   (an empty path there means `/`). Case-sensitive, byte for byte: the
//!   path is not percent-decoded or dot-segment-normalised here (that is the
//!   proxy's request-validation job). Anything from the first `?` or `#` on
//!   is ignored. The longest match wins; on a tie `Exact` beats `Prefix`,
//!   which means any Exact match wins (it is as long as the request path).
//! - **Merging**: rules for the same host from several Ingresses are merged.
//!   Two paths on the same host with the same matching key (the same Exact
//!   path, or Prefix/ImplementationSpecific paths equal up to a trailing `/`)
//!   conflict: the older Ingress wins (`creationTimestamp`, an Ingress without
//!   one counts as newest; then namespace/name; then the first in the
//!   Ingress), the loser gets a warning [`RouteErrorKind::Conflict`].
//! - **Default backends**: when no path of the chosen host matches, the
//!   `spec.defaultBackend` of the oldest Ingress that has rules for that host
//!   and a default backend is used (ingress-nginx does the same for a host's
//!   `/` location; a rule with a host and no `http` claims the host for its
//!   Ingress's default backend, as there). Otherwise, and for hosts no rule
//!   names, the cluster-wide default: the default backend of an Ingress
//!   *without rules* (the explicit catch-all), oldest first, else of the
//!   oldest Ingress with rules, so one team's per-host default does not
//!   swallow unknown hosts while a dedicated catch-all exists. No default: [`RouteTable::route`] returns `None` and
//!   the proxy answers 404.
//! - **Backends**: a Service backend names a Service in the Ingress's own
//!   namespace (v1 has no namespace field; [`ServiceBackend::namespace`] is
//!   always the Ingress's). `resource` backends are not served: the path is
//!   kept, routed to [`Backend::Resource`], and the proxy answers 503, so
//!   that its requests never leak to a shorter prefix that happens to match.
//!   An invalid backend is kept the same way as [`Backend::Invalid`].
//! - **Validation**: at least as strict as the API server
//!   (`pkg/apis/networking/validation`), because the manifests source has no
//!   API server in front of it: a bad path of any type (not absolute; containing `//`,
//!   `/./`, `/../`, `%2f`; ending in `/.` or `/..`; or containing `?`, `#`,
//!   whitespace or control characters, which no request path can contain)
//!   drops that path; a bad host drops that rule. Regex metacharacters are
//!   allowed (the API server allows them) and matched literally, with a
//!   warning, since Ingress v1 paths are not regexes.
//!
//! # Lookup structure
//! Per host (a `HashMap` for exact hosts, one keyed by the suffix for
//! wildcards, one slot for host-less rules), a `HashMap` of Exact paths and a
//! `HashMap` of normalised Prefix paths. A lookup is one Exact probe and then
//! one Prefix probe per `/` in the request path, longest first: O(path
//! elements), no allocation (the host is lowercased in a stack buffer).
//! matchit was not used: its catch-all `{*rest}` needs a non-empty rest
//! (`/foo/{*rest}` does not match `/foo/`), `{` and `}` in a path must be
//! escaped, and it picks one match by its own priority (static, then
//! parameter, then catch-all), so each Prefix path would become three
//! routes (`/foo`, `/foo/`, `/foo/{*rest}`) in a router separate from the
//! Exact one, with the longest-match and Exact-wins rules rebuilt around it.
//! Two hash maps are exact by construction, and fast: about 150 ns a lookup
//! (release build, 200 hosts, 4-element paths, SipHash).

mod build;
mod class;
mod error;
mod validate;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use crate::FastMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

pub use class::{
    ClassConfig, ClassFilter, DEFAULT_CONTROLLER, INGRESS_CLASS_ANNOTATION,
    IS_DEFAULT_CLASS_ANNOTATION,
};
pub use error::{RouteError, RouteErrorKind, Severity};

/// Names an Ingress: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressRef {
    /// The Ingress's namespace (`default` when the object had none).
    pub namespace: Arc<str>,
    /// The Ingress's name.
    pub name: Arc<str>,
}

impl IngressRef {
    /// A reference to `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        IngressRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for IngressRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `HTTPIngressPath.pathType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathType {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise prefix on `/`-separated elements.
    Prefix,
    /// Up to the controller: here exactly `Prefix`.
    ImplementationSpecific,
}

impl PathType {
    /// The API spelling, e.g. `"Prefix"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathType::Exact => "Exact",
            PathType::Prefix => "Prefix",
            PathType::ImplementationSpecific => "ImplementationSpecific",
        }
    }

    /// Parses the API spelling (case-sensitive, as the API server is).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "Exact" => Some(PathType::Exact),
            "Prefix" => Some(PathType::Prefix),
            "ImplementationSpecific" => Some(PathType::ImplementationSpecific),
            _ => None,
        }
    }
}

impl fmt::Display for PathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Service port: `port.number` or `port.name` of an `IngressServiceBackend`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServicePort {
    /// The Service's `spec.ports[].port`.
    Number(u16),
    /// The Service's `spec.ports[].name`.
    Name(Arc<str>),
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePort::Number(n) => write!(f, "{n}"),
            ServicePort::Name(n) => f.write_str(n),
        }
    }
}

/// A Service backend, always in the Ingress's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceBackend {
    /// The Ingress's namespace: v1 backends cannot name another one.
    pub namespace: Arc<str>,
    /// The Service's name.
    pub name: Arc<str>,
    /// Which of the Service's ports.
    pub port: ServicePort,
}

impl fmt::Display for ServiceBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// Where a matched request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Proxy to this Service's endpoints.
    Service(ServiceBackend),
    /// A `resource` backend (e.g. a storage bucket): not served, the proxy
    /// answers 503. The route exists so that the path still shadows shorter
    /// prefixes, exactly as the Ingress author wrote it.
    Resource {
        /// `apiGroup`, `None` for the core group.
        api_group: Option<Arc<str>>,
        /// `kind`.
        kind: Arc<str>,
        /// `name`.
        name: Arc<str>,
    },
    /// The backend failed validation (a [`RouteError`] says why): the proxy
    /// answers 503 rather than routing the path elsewhere.
    Invalid,
}

/// What a [`Route`] matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Matched {
    /// A rule's path, as written in the Ingress.
    Path {
        /// `HTTPIngressPath.path` (`/` for an empty ImplementationSpecific path).
        path: Arc<str>,
        /// `HTTPIngressPath.pathType`.
        path_type: PathType,
    },
    /// No path matched: `spec.defaultBackend`.
    DefaultBackend,
}

/// The answer to one lookup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The Ingress the rule (or default backend) comes from.
    pub ingress: IngressRef,
    /// The rule's `host` as written (e.g. `*.foo.com`); `None` for a rule
    /// without host and for the cluster-wide default backend. For TLS and
    /// redirect decisions.
    pub host: Option<Arc<str>>,
    /// The path or default backend that matched.
    pub matched: Matched,
    /// Where the request goes.
    pub backend: Backend,
}

/// The paths of one host (or of the host-less rules).
#[derive(Debug, Default)]
struct HostRoutes {
    /// Exact paths, as written.
    exact: FastMap<Box<str>, u32>,
    /// Prefix and ImplementationSpecific paths without their trailing `/`
    /// (`/` becomes the empty string).
    prefix: FastMap<Box<str>, u32>,
    /// The host's default backend (see the module docs).
    default: Option<u32>,
}

impl HostRoutes {
    /// The longest matching path, Exact first; the caller strips the query.
    fn match_path(&self, path: &str) -> Option<u32> {
        if let Some(&i) = self.exact.get(path) {
            return Some(i);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // A normalised Prefix key `k` matches `path` iff `path == k` or `path`
        // starts with `k` followed by `/`. The candidates are thus `path`
        // itself and every `path[..i]` where `path[i] == '/'`; the longest
        // one present wins. Keys never end in `/`, so `/foo/` finds `/foo`.
        if let Some(&i) = self.prefix.get(path) {
            return Some(i);
        }
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(slash) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if let Some(&i) = self.prefix.get(&path[..slash]) {
                return Some(i);
            }
            end = slash;
        }
        None
    }
}

/// An immutable routing table built from Ingresses; share it as
/// `Arc<RouteTable>`. The empty table (`default()`) routes nothing.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Every route; the maps below index into it.
    routes: Vec<Route>,
    /// Exact hosts, lowercase.
    exact_hosts: FastMap<Box<str>, HostRoutes>,
    /// Wildcard hosts keyed by what follows `*.`, lowercase.
    wildcard_hosts: FastMap<Box<str>, HostRoutes>,
    /// Rules without host.
    any_host: Option<HostRoutes>,
    /// The cluster-wide default backend.
    default: Option<u32>,
}

/// Longest host we look up: a DNS name is at most 253 characters; longer
/// Host headers cannot match a rule host (the API server caps them there).
const MAX_HOST_LEN: usize = 253;

impl RouteTable {
    /// Builds the table from every Ingress and IngressClass the source knows,
    /// serving those [`ClassFilter`] selects. Returns the problems found, per
    /// Ingress and field; they never stop other Ingresses from being served.
    pub fn build<'a>(
        ingresses: impl IntoIterator<Item = &'a Ingress>,
        classes: impl IntoIterator<Item = &'a IngressClass>,
        config: &ClassConfig,
    ) -> (RouteTable, Vec<RouteError>) {
        let filter = ClassFilter::new(classes, config);
        build::build(ingresses.into_iter().filter(|i| filter.serves(i)))
    }

    /// Builds the table from Ingresses already known to be served (no class
    /// filtering).
    pub fn from_served<'a>(
        ingresses: impl IntoIterator<Item = &'a Ingress>,
    ) -> (RouteTable, Vec<RouteError>) {
        build::build(ingresses)
    }

    /// Routes a request: `host` is the Host header or `:authority` (any
    /// `:port` is ignored), `path` the request path (a query string is
    /// ignored). `None`: no rule and no default backend, answer 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let path = match path.find(['?', '#']) {
            Some(end) => &path[..end],
            None => path,
        };
        // Origin-form paths always start with `/`; an empty one is `/`.
        let path = if path.is_empty() { "/" } else { path };
        let mut buf = [0u8; MAX_HOST_LEN];
        if let Some(hosts) = self.host_routes(normalize_host(host, &mut buf)) {
            if let Some(i) = hosts.match_path(path).or(hosts.default) {
                return Some(&self.routes[i as usize]);
            }
        }
        self.default.map(|i| &self.routes[i as usize])
    }

    /// The most specific host that has rules: exact, then wildcard, then
    /// host-less.
    fn host_routes(&self, host: Option<&str>) -> Option<&HostRoutes> {
        if let Some(host) = host {
            if let Some(routes) = self.exact_hosts.get(host) {
                return Some(routes);
            }
            if let Some((label, parent)) = host.split_once('.') {
                if !label.is_empty() && !parent.is_empty() {
                    if let Some(routes) = self.wildcard_hosts.get(parent) {
                        return Some(routes);
                    }
                }
            }
        }
        self.any_host.as_ref()
    }

    /// Every route in the table (paths and default backends), in no
    /// particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The cluster-wide default backend, if any.
    pub fn default_backend(&self) -> Option<&Route> {
        self.default.map(|i| &self.routes[i as usize])
    }

    /// The number of routes (paths and default backends).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table routes nothing.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The host part of a Host header, lowercase, without `:port` or one
/// trailing dot; `None` when it cannot be a DNS name (empty, IP-literal
/// `[v6]`, too long). Lowercases into `buf` only when needed.
fn normalize_host<'b>(host: &'b str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    if host.starts_with('[') {
        return None;
    }
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let buf = &mut buf[..host.len()];
    buf.copy_from_slice(host.as_bytes());
    buf.make_ascii_lowercase();
    // ASCII lowercasing keeps UTF-8 valid; the fallback is unreachable.
    std::str::from_utf8(buf).ok()
}
