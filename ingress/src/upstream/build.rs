//! Building an [`UpstreamTable`] from Services and EndpointSlices: for every
//! Service backend a route names, the endpoint addresses of that Service
//! port, straight from the EndpointSlices (never the ClusterIP).
//!
//! Pure: no I/O. The model calls [`build_upstreams`] on every change of
//! routes, Services or EndpointSlices and swaps the result in.
//!
//! # Semantics
//! - **Service**: the one named by the backend, in the backend's (the
//!   Ingress's) namespace. Missing, or `type: ExternalName` (it has no
//!   endpoints; ingress-nginx proxies to the DNS name, we do not), is an
//!   [`UpstreamError`] and the backend gets no endpoints (503).
//! - **Port**: `port.number` is the Service port whose `port` equals it,
//!   `port.name` the one whose `name` equals it; only TCP ports (protocol
//!   unset means TCP). None is an [`UpstreamError`].
//! - **Endpoints**: the EndpointSlices of the same namespace labelled
//!   `kubernetes.io/service-name: <service>` (headless Services and slices
//!   labelled `service.kubernetes.io/headless` included: the proxy dials the
//!   pods either way); in each, the slice port whose `name` equals the Service
//!   port's name (unset and `""` alike) with protocol TCP and a port number,
//!   and of each endpoint its first address (slices of type FQDN, or an
//!   address that is not an IP, are skipped).
//! - **Conditions**, read as kube-proxy reads them: `ready` unset is true,
//!   `serving` unset is `ready`, `terminating` unset is false. The ready
//!   endpoints are used; when there is none, the serving and terminating
//!   ones (so connections drain gracefully during a rollout that scales to
//!   zero ready pods). An address ready in one slice and not in another (a
//!   pod moving between slices) counts as ready.
//! - Addresses are deduplicated and sorted, so equal inputs give equal
//!   tables whatever the order of slices.

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Service, ServicePort as K8sServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::UpstreamTable;
use crate::route::{Backend, RouteTable, ServiceBackend, ServicePort};

/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The namespace of an object without one (as for Ingresses).
const DEFAULT_NAMESPACE: &str = "default";

/// Why a Service backend has no endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No Service of that name in the namespace.
    ServiceNotFound,
    /// The Service is `type: ExternalName`: it has no endpoints to proxy to.
    ExternalName,
    /// The Service has no port with that number or name.
    PortNotFound,
    /// The Service port exists but not for TCP (e.g. `UDP`).
    PortNotTcp {
        /// The port's protocol.
        protocol: String,
    },
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamErrorKind::ServiceNotFound => f.write_str("Service not found"),
            UpstreamErrorKind::ExternalName => {
                f.write_str("Service is of type ExternalName, which has no endpoints")
            }
            UpstreamErrorKind::PortNotFound => f.write_str("Service has no such port"),
            UpstreamErrorKind::PortNotTcp { protocol } => {
                write!(f, "Service port is {protocol}, not TCP")
            }
        }
    }
}

/// A Service backend named by a route that cannot be served: requests for
/// it get 503. Displays as `Service backend ns/svc:port: Service not found`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Service backend {backend}: {kind}")]
pub struct UpstreamError {
    /// The backend as the Ingress wrote it.
    pub backend: ServiceBackend,
    /// What is wrong.
    pub kind: UpstreamErrorKind,
}

/// The upstream table for every Service backend `routes` names, from these
/// Services and EndpointSlices (any namespaces; only the matching ones are
/// used), and the backends that cannot be served. Every named backend is in
/// the table; the failing ones with no endpoints. Errors come one per
/// distinct backend, in the order the routes first name them.
pub fn build_upstreams<'a>(
    routes: &RouteTable,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> (UpstreamTable, Vec<UpstreamError>) {
    // (namespace, name) -> Service; the first wins if the input repeats one.
    let mut service_index: HashMap<(&str, &str), &Service> = HashMap::new();
    for svc in services {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        service_index
            .entry((namespace_of(svc.metadata.namespace.as_deref()), name))
            .or_insert(svc);
    }
    // (namespace, service name) -> its slices.
    let mut slice_index: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        slice_index
            .entry((namespace_of(slice.metadata.namespace.as_deref()), service))
            .or_default()
            .push(slice);
    }

    let mut table = UpstreamTable::new();
    let mut errors = Vec::new();
    let mut seen: HashSet<&ServiceBackend> = HashSet::new();
    for route in routes.routes() {
        let Backend::Service(backend) = &route.backend else {
            continue;
        };
        if !seen.insert(backend) {
            continue;
        }
        let key = (&*backend.namespace, &*backend.name);
        let addrs = match resolve_port(backend, service_index.get(&key).copied()) {
            Ok(port) => {
                let port_name = port.name.as_deref().unwrap_or("");
                let slices = slice_index.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                endpoint_addrs(slices, port_name)
            }
            Err(kind) => {
                errors.push(UpstreamError {
                    backend: backend.clone(),
                    kind,
                });
                Vec::new()
            }
        };
        table.insert(backend.clone(), addrs);
    }
    (table, errors)
}

/// An object's namespace, `default` when unset or empty.
fn namespace_of(namespace: Option<&str>) -> &str {
    match namespace {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    }
}

/// Whether a protocol field means TCP (unset means TCP).
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// The TCP Service port `backend` names.
fn resolve_port<'s>(
    backend: &ServiceBackend,
    service: Option<&'s Service>,
) -> Result<&'s K8sServicePort, UpstreamErrorKind> {
    let service = service.ok_or(UpstreamErrorKind::ServiceNotFound)?;
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(UpstreamErrorKind::ExternalName);
    }
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
    let matches = |p: &&K8sServicePort| match &backend.port {
        ServicePort::Number(n) => p.port == i32::from(*n),
        ServicePort::Name(name) => p.name.as_deref() == Some(&**name),
    };
    let mut other_protocol = None;
    for port in ports.iter().filter(matches) {
        if is_tcp(port.protocol.as_deref()) {
            return Ok(port);
        }
        other_protocol.get_or_insert_with(|| port.protocol.clone().unwrap_or_default());
    }
    Err(match other_protocol {
        Some(protocol) => UpstreamErrorKind::PortNotTcp { protocol },
        None => UpstreamErrorKind::PortNotFound,
    })
}

/// The sorted, deduplicated addresses of the slices' TCP port named
/// `port_name`: the ready endpoints, or if none, the serving terminating ones.
fn endpoint_addrs(slices: &[&EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(port) = slice_port(slice, port_name) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            match condition(endpoint) {
                Condition::Ready => {
                    ready.insert(addr);
                }
                Condition::ServingTerminating => {
                    terminating.insert(addr);
                }
                Condition::Unusable => {}
            }
        }
    }
    if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

/// The number of the slice's TCP port named `port_name` (unset is `""`).
fn slice_port(slice: &EndpointSlice, port_name: &str) -> Option<u16> {
    slice
        .ports
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == port_name && is_tcp(p.protocol.as_deref()))
        .and_then(|p| p.port)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n != 0)
}

/// How an endpoint may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    /// Ready: takes traffic.
    Ready,
    /// Not ready, but serving while terminating: takes traffic only when
    /// no endpoint is ready.
    ServingTerminating,
    /// Neither.
    Unusable,
}

/// The endpoint's conditions as kube-proxy reads them: `ready` unset is
/// true, `serving` unset is `ready`, `terminating` unset is false.
fn condition(endpoint: &Endpoint) -> Condition {
    let c = endpoint.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready {
        Condition::Ready
    } else if serving && terminating {
        Condition::ServingTerminating
    } else {
        Condition::Unusable
    }
}
