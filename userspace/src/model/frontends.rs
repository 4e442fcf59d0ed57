//! Joins a Service with its EndpointSlices into frontends with backends.
//!
//! Port matching and endpoint selection follow kube-proxy:
//! pkg/proxy/endpointslicecache.go (which slice port feeds which Service port)
//! and pkg/proxy/topology.go `CategorizeEndpoints` (ready, then
//! serving-terminating fallback; node-local endpoints for
//! `internalTrafficPolicy: Local`).

use std::net::Ipv4Addr;

use super::service::{ServiceInfo, ServicePort};
use super::slice::{SliceInfo, SlicePort};
use super::types::{BackendAddr, Frontend, FrontendKey, FrontendKind};

/// The frontends a Service defines given all slices of the Service (slices
/// of other Services must not be passed). One frontend per cluster IP × port;
/// none for Services that are not proxied.
pub fn build_frontends(service: &ServiceInfo, slices: &[&SliceInfo]) -> Vec<Frontend> {
    let mut frontends = Vec::with_capacity(service.cluster_ips.len() * service.ports.len());
    for (i, key) in frontend_keys(service) {
        let port = &service.ports[i];
        frontends.push(Frontend {
            key,
            kind: FrontendKind::ClusterIp,
            service: service.id.clone(),
            port_name: port.name.clone(),
            backends: select_backends(port, service.internal_local, slices),
            affinity_timeout: service.affinity_timeout,
        });
    }
    frontends
}

/// The frontend keys a Service claims, each with the index of its port in
/// `service.ports`: every cluster IP × every port.
pub fn frontend_keys(service: &ServiceInfo) -> impl Iterator<Item = (usize, FrontendKey)> + '_ {
    service.ports.iter().enumerate().flat_map(move |(i, port)| {
        service.cluster_ips.iter().map(move |&address| {
            (
                i,
                FrontendKey {
                    address,
                    port: port.port,
                    protocol: port.protocol,
                },
            )
        })
    })
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
    use crate::model::types::Protocol;

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

    #[test]
    fn match_port_respects_protocol() {
        let port = ServicePort {
            name: "p".into(),
            port: 1,
            protocol: Protocol::Udp,
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
