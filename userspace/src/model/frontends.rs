//! Joins a Service with its EndpointSlices into frontends with backends.
//!
//! Port matching and endpoint selection follow kube-proxy:
//! pkg/proxy/endpointslicecache.go (which slice port feeds which Service port)
//! and pkg/proxy/topology.go `CategorizeEndpoints` (ready, then
//! serving-terminating fallback; node-local endpoints for
//! `internalTrafficPolicy: Local` and `externalTrafficPolicy: Local`).
//!
//! Which frontends a Service port gets (pkg/proxy/iptables/proxier.go):
//! - each cluster IP: internal scope, endpoints per `internalTrafficPolicy`;
//! - its `nodePort` (NodePort and LoadBalancer Services), each
//!   `status.loadBalancer.ingress[].ip` and each `spec.externalIPs` entry:
//!   an internal frontend with every endpoint of the cluster (kube-proxy
//!   sends in-cluster clients of these addresses to the cluster-wide
//!   endpoints even with `externalTrafficPolicy: Local`, its "short
//!   circuit"), and an external one with the endpoints
//!   `externalTrafficPolicy` allows.

use std::net::Ipv4Addr;

use super::service::{ServiceInfo, ServicePort};
use super::slice::{SliceInfo, SlicePort};
use super::types::{BackendAddr, Frontend, FrontendKey, FrontendKind, Scope};

/// Which endpoints a frontend balances to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Every endpoint in the cluster (ready ones, else serving-terminating).
    Cluster,
    /// Only this node's endpoints (ready ones, else serving-terminating
    /// ones), for a `Local` traffic policy.
    Local,
}

/// The endpoints a frontend of `kind` in `scope` uses under the Service's
/// traffic policies.
pub fn endpoints_for(service: &ServiceInfo, kind: FrontendKind, scope: Scope) -> Endpoints {
    endpoints(service.internal_local, service.external_local, kind, scope)
}

/// [`endpoints_for`] from the two policies alone (the store keeps only these).
pub(super) fn endpoints(
    internal_local: bool,
    external_local: bool,
    kind: FrontendKind,
    scope: Scope,
) -> Endpoints {
    let local = match (kind, scope) {
        (FrontendKind::ClusterIp, _) => internal_local,
        (_, Scope::Internal) => false,
        (_, Scope::External) => external_local,
    };
    if local {
        Endpoints::Local
    } else {
        Endpoints::Cluster
    }
}

/// The frontends a Service defines given all slices of the Service (slices
/// of other Services must not be passed); none for Services that are not
/// proxied. See the module documentation for which.
pub fn build_frontends(service: &ServiceInfo, slices: &[&SliceInfo]) -> Vec<Frontend> {
    let keys = frontend_keys(service);
    let mut frontends = Vec::with_capacity(keys.len());
    // Per port: (cluster-wide, local) backends, computed when first needed.
    let mut cache: Vec<[Option<Vec<BackendAddr>>; 2]> = vec![[None, None]; service.ports.len()];
    for (i, kind, key) in keys {
        let port = &service.ports[i];
        let which = endpoints_for(service, kind, key.scope);
        let slot = &mut cache[i][which as usize];
        let backends = slot
            .get_or_insert_with(|| select_backends(port, which == Endpoints::Local, slices))
            .clone();
        frontends.push(Frontend {
            key,
            kind,
            service: service.id.clone(),
            port_name: port.name.clone(),
            backends,
            affinity_timeout: service.affinity_timeout,
            external_local: key.scope == Scope::External && service.external_local,
        });
    }
    frontends
}

/// The frontend keys a Service claims, each with the index of its port in
/// `service.ports` and its kind, without duplicates (an address listed both
/// as external and load-balancer IP keeps the first kind, in the order
/// cluster IP, NodePort, load-balancer IP, external IP).
pub fn frontend_keys(service: &ServiceInfo) -> Vec<(usize, FrontendKind, FrontendKey)> {
    let mut keys: Vec<(usize, FrontendKind, FrontendKey)> = Vec::with_capacity(
        service.ports.len()
            * (service.cluster_ips.len()
                + 2 * (1 + service.load_balancer_ips.len() + service.external_ips.len())),
    );
    let mut push = |i: usize, kind, key: FrontendKey| {
        if !keys.iter().any(|(_, _, k)| *k == key) {
            keys.push((i, kind, key));
        }
    };
    for (i, port) in service.ports.iter().enumerate() {
        let (number, protocol) = (port.port, port.protocol);
        for &address in &service.cluster_ips {
            push(
                i,
                FrontendKind::ClusterIp,
                FrontendKey::internal(address, number, protocol),
            );
        }
        if let Some(node_port) = port.node_port {
            let address = FrontendKey::NODEPORT_ADDRESS;
            push(
                i,
                FrontendKind::NodePort,
                FrontendKey::internal(address, node_port, protocol),
            );
            push(
                i,
                FrontendKind::NodePort,
                FrontendKey::external(address, node_port, protocol),
            );
        }
        for lb in &service.load_balancer_ips {
            if !lb.proxy {
                push(
                    i,
                    FrontendKind::LoadBalancer,
                    FrontendKey::internal(lb.address, number, protocol),
                );
            }
            push(
                i,
                FrontendKind::LoadBalancer,
                FrontendKey::external(lb.address, number, protocol),
            );
        }
        for &address in &service.external_ips {
            push(
                i,
                FrontendKind::ExternalIp,
                FrontendKey::internal(address, number, protocol),
            );
            push(
                i,
                FrontendKind::ExternalIp,
                FrontendKey::external(address, number, protocol),
            );
        }
    }
    keys
}

/// The slice port feeding `port`, if any.
///
/// kube-proxy keys endpoints by (Service, port name, protocol), and the
/// EndpointSlice controller names slice ports after the *Service* port, so
/// the name must match exactly (`""` for an unnamed port). As a fallback for
/// hand-written slices that name the port after the container port, a
/// `targetPort` name is tried too (kube-proxy does not do this; it only
/// applies when no slice port carries the Service port's name).
pub fn match_port<'a>(port: &ServicePort, slice: &'a SliceInfo) -> Option<&'a SlicePort> {
    let by_name = |name: &str| {
        slice
            .ports
            .iter()
            .find(|p| p.name == name && p.protocol == port.protocol)
    };
    by_name(&port.name).or_else(|| port.target_port_name.as_deref().and_then(by_name))
}

/// One endpoint:port candidate, merged over slices.
#[derive(Clone, Copy)]
struct Candidate {
    address: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

impl Candidate {
    /// Which copy of a duplicated endpoint to keep: kube-proxy favours the
    /// local one; we also prefer the more usable one, to be deterministic.
    fn preference(&self) -> (bool, bool, bool, bool) {
        (self.local, self.ready, self.serving, !self.terminating)
    }
}

/// The backends of one Service port, sorted and deduplicated.
///
/// Ready endpoints if there are any; otherwise the serving-and-terminating
/// ones (KEP-1669), marked `terminating`; otherwise none. With
/// `local_only` (internalTrafficPolicy: Local) the same rule is applied to
/// the endpoints on this node only.
pub fn select_backends(
    port: &ServicePort,
    local_only: bool,
    slices: &[&SliceInfo],
) -> Vec<BackendAddr> {
    let mut candidates: Vec<Candidate> = Vec::new();
    for slice in slices {
        let Some(slice_port) = match_port(port, slice) else {
            continue;
        };
        candidates.extend(
            slice
                .endpoints
                .iter()
                .filter(|e| !local_only || e.local)
                .map(|e| Candidate {
                    address: e.address,
                    port: slice_port.port,
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    local: e.local,
                }),
        );
    }
    // The same address:port may appear in several slices (e.g. while the
    // controller moves an endpoint); keep one, the most usable.
    candidates.sort_by(|a, b| {
        (a.address, a.port)
            .cmp(&(b.address, b.port))
            .then(b.preference().cmp(&a.preference()))
    });
    candidates.dedup_by_key(|c| (c.address, c.port));

    let backend = |c: &Candidate, terminating| BackendAddr {
        address: c.address,
        port: c.port,
        terminating,
        local: c.local,
    };
    let ready: Vec<BackendAddr> = candidates
        .iter()
        .filter(|c| c.ready)
        .map(|c| backend(c, false))
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .iter()
        .filter(|c| c.serving && c.terminating)
        .map(|c| backend(c, true))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{ServiceBuilder, SliceBuilder, TargetPort};
    use crate::model::service::service_from_k8s;
    use crate::model::slice::slice_from_k8s;
    use crate::model::types::{Protocol, Scope};

    fn service(builder: ServiceBuilder) -> ServiceInfo {
        service_from_k8s(&builder.build())
            .expect("valid service")
            .value
    }

    fn slice(builder: SliceBuilder) -> SliceInfo {
        slice_from_k8s(&builder.build(), Some("this-node")).value
    }

    fn web() -> ServiceBuilder {
        ServiceBuilder::new("default", "web").cluster_ip("198.18.200.10")
    }

    fn web_slice(name: &str) -> SliceBuilder {
        SliceBuilder::for_service("default", "web", name)
    }

    /// Frontend key → backends as strings.
    fn render(frontends: &[Frontend]) -> Vec<(String, Vec<String>)> {
        frontends
            .iter()
            .map(|f| {
                (
                    f.key.to_string(),
                    f.backends.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    const YES: Option<bool> = Some(true);
    const NO: Option<bool> = Some(false);

    #[test]
    fn one_frontend_per_cluster_ip_and_port_with_metadata() {
        let svc = service(
            web()
                .cluster_ips(&["198.18.200.10", "198.18.200.11"])
                .port("http", 80, "TCP", TargetPort::Number(8080))
                .client_ip_affinity(Some(30)),
        );
        let s = slice(
            web_slice("a")
                .port(Some("http"), 8080, "TCP")
                .ready("10.1.0.1"),
        );
        let frontends = build_frontends(&svc, &[&s]);
        assert_eq!(
            render(&frontends),
            [
                ("198.18.200.10:80/TCP".into(), strings(&["10.1.0.1:8080"])),
                ("198.18.200.11:80/TCP".into(), strings(&["10.1.0.1:8080"])),
            ]
        );
        assert_eq!(frontends[0].service.to_string(), "default/web");
        assert_eq!(frontends[0].port_name, "http");
        assert_eq!(frontends[0].affinity_timeout, 30);
        assert_eq!(frontends[0].kind, FrontendKind::ClusterIp);
    }

    #[test]
    fn several_slices_are_merged_and_deduplicated() {
        let svc = service(web().port("", 80, "TCP", TargetPort::Number(8080)));
        let a = slice(
            web_slice("a")
                .port(None, 8080, "TCP")
                .ready("10.1.0.2")
                .ready("10.1.0.1"),
        );
        let b = slice(
            web_slice("b")
                .port(None, 8080, "TCP")
                .ready("10.1.0.3")
                .endpoint("10.1.0.1", NO, NO, NO, None),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&a, &b])),
            [(
                "198.18.200.10:80/TCP".into(),
                strings(&["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"])
            )]
        );
    }

    #[test]
    fn ready_endpoints_only_then_serving_terminating_fallback() {
        let svc = service(web().port("", 80, "TCP", TargetPort::Unset));
        let mixed = slice(
            web_slice("a")
                .port(None, 80, "TCP")
                .endpoint("10.1.0.1", YES, YES, NO, None)
                .endpoint("10.1.0.2", NO, YES, YES, None)
                .endpoint("10.1.0.3", NO, NO, NO, None),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&mixed])),
            [("198.18.200.10:80/TCP".into(), strings(&["10.1.0.1:80"]))]
        );

        // No ready endpoint: serving+terminating ones, flagged. Not-serving
        // terminating and not-ready non-terminating ones stay out.
        let draining = slice(
            web_slice("a")
                .port(None, 80, "TCP")
                .endpoint("10.1.0.2", NO, YES, YES, None)
                .endpoint("10.1.0.3", NO, NO, YES, None)
                .endpoint("10.1.0.4", NO, YES, NO, None)
                // serving nil = true (kube-proxy), so this one is used.
                .endpoint("10.1.0.5", NO, None, YES, None),
        );
        let frontends = build_frontends(&svc, &[&draining]);
        assert_eq!(
            render(&frontends),
            [(
                "198.18.200.10:80/TCP".into(),
                strings(&["10.1.0.2:80 (terminating)", "10.1.0.5:80 (terminating)"])
            )]
        );

        let dead = slice(
            web_slice("a")
                .port(None, 80, "TCP")
                .endpoint("10.1.0.3", NO, NO, YES, None),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&dead])),
            [("198.18.200.10:80/TCP".into(), vec![])]
        );
        assert_eq!(
            render(&build_frontends(&svc, &[])),
            [("198.18.200.10:80/TCP".into(), vec![])]
        );
    }

    #[test]
    fn port_matching_by_name_protocol_and_target_port_name_fallback() {
        let svc = service(
            web()
                .port("http", 80, "TCP", TargetPort::Name("web"))
                .port("dns", 53, "TCP", TargetPort::Number(5353))
                .port("dns-udp", 53, "UDP", TargetPort::Number(5353))
                .port("metrics", 9100, "TCP", TargetPort::Name("prom")),
        );
        let s = slice(
            web_slice("a")
                // Hand-written: named after the container port.
                .port(Some("web"), 8080, "TCP")
                .port(Some("dns"), 5353, "TCP")
                .port(Some("dns-udp"), 5353, "UDP")
                // Wrong protocol: must not match "metrics".
                .port(Some("metrics"), 9100, "UDP")
                .ready("10.1.0.1"),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&s])),
            [
                ("198.18.200.10:80/TCP".into(), strings(&["10.1.0.1:8080"])),
                ("198.18.200.10:53/TCP".into(), strings(&["10.1.0.1:5353"])),
                ("198.18.200.10:53/UDP".into(), strings(&["10.1.0.1:5353"])),
                ("198.18.200.10:9100/TCP".into(), vec![]),
            ]
        );
    }

    #[test]
    fn exact_name_beats_target_port_name() {
        let svc = service(web().port("http", 80, "TCP", TargetPort::Name("web")));
        let s = slice(
            web_slice("a")
                .port(Some("web"), 1111, "TCP")
                .port(Some("http"), 2222, "TCP")
                .ready("10.1.0.1"),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&s])),
            [("198.18.200.10:80/TCP".into(), strings(&["10.1.0.1:2222"]))]
        );
    }

    #[test]
    fn unnamed_ports_match_unnamed_slice_ports_only() {
        let svc = service(web().port("", 80, "TCP", TargetPort::Unset));
        let named = slice(
            web_slice("a")
                .port(Some("http"), 8080, "TCP")
                .ready("10.1.0.1"),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&named])),
            [("198.18.200.10:80/TCP".into(), vec![])]
        );
    }

    #[test]
    fn same_address_different_ports_in_different_slices_are_distinct() {
        let svc = service(web().port("", 80, "TCP", TargetPort::Unset));
        let a = slice(web_slice("a").port(None, 8080, "TCP").ready("10.1.0.1"));
        let b = slice(web_slice("b").port(None, 8081, "TCP").ready("10.1.0.1"));
        assert_eq!(
            render(&build_frontends(&svc, &[&a, &b])),
            [(
                "198.18.200.10:80/TCP".into(),
                strings(&["10.1.0.1:8080", "10.1.0.1:8081"])
            )]
        );
    }

    #[test]
    fn internal_traffic_policy_local_uses_local_endpoints_with_local_fallback() {
        let svc = service(
            web()
                .port("", 80, "TCP", TargetPort::Unset)
                .internal_traffic_policy("Local"),
        );
        let s = slice(
            web_slice("a")
                .port(None, 80, "TCP")
                .endpoint("10.1.0.1", YES, YES, NO, Some("other-node"))
                .endpoint("10.1.0.2", YES, YES, NO, Some("this-node")),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&s])),
            [("198.18.200.10:80/TCP".into(), strings(&["10.1.0.2:80"]))]
        );
        // The local endpoint is terminating: fall back to it, not to the remote ready one.
        let s = slice(
            web_slice("a")
                .port(None, 80, "TCP")
                .endpoint("10.1.0.1", YES, YES, NO, Some("other-node"))
                .endpoint("10.1.0.2", NO, YES, YES, Some("this-node")),
        );
        assert_eq!(
            render(&build_frontends(&svc, &[&s])),
            [(
                "198.18.200.10:80/TCP".into(),
                strings(&["10.1.0.2:80 (terminating)"])
            )]
        );
        let remote_only = slice(web_slice("a").port(None, 80, "TCP").endpoint(
            "10.1.0.1",
            YES,
            YES,
            NO,
            Some("x"),
        ));
        assert_eq!(
            render(&build_frontends(&svc, &[&remote_only])),
            [("198.18.200.10:80/TCP".into(), vec![])]
        );
    }

    #[test]
    fn not_proxied_service_has_no_frontends() {
        let svc = service(
            web()
                .cluster_ip("None")
                .port("", 80, "TCP", TargetPort::Unset),
        );
        let s = slice(web_slice("a").port(None, 80, "TCP").ready("10.1.0.1"));
        assert!(build_frontends(&svc, &[&s]).is_empty());
    }

    /// Frontend key → kind, backends (`*` marks local ones) and the
    /// external-local mark.
    fn render_all(frontends: &[Frontend]) -> Vec<String> {
        frontends
            .iter()
            .map(|f| {
                let backends: Vec<String> = f
                    .backends
                    .iter()
                    .map(|b| format!("{b}{}", if b.local { "*" } else { "" }))
                    .collect();
                format!(
                    "{} {}{} [{}]",
                    f.key,
                    f.kind,
                    if f.external_local { " local" } else { "" },
                    backends.join(", ")
                )
            })
            .collect()
    }

    fn lb() -> ServiceBuilder {
        web()
            .type_("LoadBalancer")
            .port("http", 80, "TCP", TargetPort::Number(8080))
            .node_port(30080)
            .ingress_ip("198.18.150.1")
            .external_ips(&["198.18.100.1"])
    }

    fn two_nodes() -> SliceInfo {
        slice(
            web_slice("a")
                .port(Some("http"), 8080, "TCP")
                .ready_on("10.1.0.1", "this-node")
                .ready_on("10.2.0.1", "other-node"),
        )
    }

    #[test]
    fn every_kind_with_internal_and_external_scope() {
        let svc = service(lb());
        assert_eq!(
            render_all(&build_frontends(&svc, &[&two_nodes()])),
            [
                "198.18.200.10:80/TCP ClusterIP [10.1.0.1:8080*, 10.2.0.1:8080]",
                "0.0.0.0:30080/TCP NodePort [10.1.0.1:8080*, 10.2.0.1:8080]",
                "0.0.0.0:30080/TCP external NodePort [10.1.0.1:8080*, 10.2.0.1:8080]",
                "198.18.150.1:80/TCP LoadBalancer [10.1.0.1:8080*, 10.2.0.1:8080]",
                "198.18.150.1:80/TCP external LoadBalancer [10.1.0.1:8080*, 10.2.0.1:8080]",
                "198.18.100.1:80/TCP ExternalIP [10.1.0.1:8080*, 10.2.0.1:8080]",
                "198.18.100.1:80/TCP external ExternalIP [10.1.0.1:8080*, 10.2.0.1:8080]",
            ]
        );
    }

    #[test]
    fn external_traffic_policy_local_limits_only_external_frontends() {
        let svc = service(lb().external_traffic_policy("Local"));
        assert_eq!(
            render_all(&build_frontends(&svc, &[&two_nodes()])),
            [
                "198.18.200.10:80/TCP ClusterIP [10.1.0.1:8080*, 10.2.0.1:8080]",
                // In-cluster clients are short-circuited to every endpoint.
                "0.0.0.0:30080/TCP NodePort [10.1.0.1:8080*, 10.2.0.1:8080]",
                "0.0.0.0:30080/TCP external NodePort local [10.1.0.1:8080*]",
                "198.18.150.1:80/TCP LoadBalancer [10.1.0.1:8080*, 10.2.0.1:8080]",
                "198.18.150.1:80/TCP external LoadBalancer local [10.1.0.1:8080*]",
                "198.18.100.1:80/TCP ExternalIP [10.1.0.1:8080*, 10.2.0.1:8080]",
                "198.18.100.1:80/TCP external ExternalIP local [10.1.0.1:8080*]",
            ]
        );
    }

    #[test]
    fn external_local_falls_back_to_local_terminating_then_nothing() {
        let svc = service(
            web()
                .type_("NodePort")
                .port("http", 80, "TCP", TargetPort::Unset)
                .node_port(30080)
                .external_traffic_policy("Local"),
        );
        let external = |s: &SliceInfo| {
            build_frontends(&svc, &[s])
                .into_iter()
                .find(|f| f.key.scope == Scope::External)
                .map(|f| {
                    f.backends
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                })
        };
        // Local ready wins over local terminating.
        let s = slice(
            web_slice("a")
                .port(Some("http"), 80, "TCP")
                .ready_on("10.1.0.1", "this-node")
                .terminating_on("10.1.0.2", "this-node")
                .ready_on("10.2.0.1", "other-node"),
        );
        assert_eq!(external(&s), Some(strings(&["10.1.0.1:80"])));
        // Only a terminating local one: it is used, not the remote ready one.
        let s = slice(
            web_slice("a")
                .port(Some("http"), 80, "TCP")
                .terminating_on("10.1.0.2", "this-node")
                .ready_on("10.2.0.1", "other-node"),
        );
        assert_eq!(external(&s), Some(strings(&["10.1.0.2:80 (terminating)"])));
        // Nothing local: no backend (the datapath drops).
        let s = slice(
            web_slice("a")
                .port(Some("http"), 80, "TCP")
                .ready_on("10.2.0.1", "other-node"),
        );
        assert_eq!(external(&s), Some(vec![]));
    }

    #[test]
    fn proxy_mode_ingress_ips_get_no_internal_frontend() {
        let svc = service(
            web()
                .type_("LoadBalancer")
                .port("http", 80, "TCP", TargetPort::Unset)
                .ingress("198.18.150.2", "Proxy", ""),
        );
        let keys: Vec<String> = frontend_keys(&svc)
            .iter()
            .map(|(_, kind, key)| format!("{key} {kind}"))
            .collect();
        assert_eq!(
            keys,
            [
                "198.18.200.10:80/TCP ClusterIP",
                "198.18.150.2:80/TCP external LoadBalancer",
            ],
            "no nodePort set (allocateLoadBalancerNodePorts: false): no NodePort frontend"
        );
    }

    #[test]
    fn an_address_listed_twice_is_one_frontend_of_the_first_kind() {
        let svc = service(
            web()
                .type_("LoadBalancer")
                .port("http", 80, "TCP", TargetPort::Unset)
                .ingress_ip("198.18.150.1")
                .external_ips(&["198.18.150.1", "198.18.200.10"]),
        );
        let keys: Vec<String> = frontend_keys(&svc)
            .iter()
            .map(|(_, kind, key)| format!("{key} {kind}"))
            .collect();
        assert_eq!(
            keys,
            [
                "198.18.200.10:80/TCP ClusterIP",
                "198.18.150.1:80/TCP LoadBalancer",
                "198.18.150.1:80/TCP external LoadBalancer",
                "198.18.200.10:80/TCP external ExternalIP",
            ]
        );
    }

    #[test]
    fn match_port_respects_protocol() {
        let port = ServicePort {
            name: "p".into(),
            port: 1,
            protocol: Protocol::Udp,
            node_port: None,
            target_port_name: None,
        };
        let s = slice(
            web_slice("a")
                .port(Some("p"), 5, "TCP")
                .port(Some("p"), 6, "UDP"),
        );
        assert_eq!(match_port(&port, &s).map(|p| p.port), Some(6));
    }
}
