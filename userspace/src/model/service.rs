//! Turns a k8s `Service` into the compact [`ServiceInfo`] the model keeps.
//!
//! The rules follow kube-proxy (pkg/proxy/service.go, servicechangetracker.go)
//! and the API server's validation: what the API server would reject makes
//! the whole Service invalid here too.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::types::{Protocol, ServiceId};

/// Services with this label are handled by another proxy; kube-proxy's
/// informers select `!service.kubernetes.io/service-proxy-name` (any value).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// kube-proxy's informers also select `!service.kubernetes.io/headless`
/// (set by the endpoints controllers on headless Services' slices).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (API defaulting:
/// DefaultClientIPServiceAffinitySeconds = 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Maximum accepted affinity timeout (API validation: MaxClientIPServiceAffinitySeconds, 1 day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// What the model needs from a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace and name.
    pub id: ServiceId,
    /// `metadata.creationTimestamp` in Unix seconds: the older Service wins a
    /// frontend conflict.
    pub created: Option<i64>,
    /// The IPv4 cluster IPs; empty when the Service is not proxied.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// The ports the datapath can serve (unsupported protocols removed).
    pub ports: Vec<ServicePort>,
    /// ClientIP session affinity timeout in seconds, 0 for none.
    pub affinity_timeout: u32,
    /// `internalTrafficPolicy: Local`: cluster-IP traffic only goes to
    /// endpoints on this node.
    pub internal_local: bool,
    /// `spec.type` (ExternalName Services are ignored before this matters).
    pub type_: ServiceType,
    /// `spec.externalIPs` that the datapath can serve (IPv4, deduplicated).
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` of a `type: LoadBalancer` Service
    /// (IPv4, deduplicated).
    pub load_balancer_ips: Vec<LoadBalancerIp>,
    /// `externalTrafficPolicy: Local` applies: traffic from outside the
    /// cluster to NodePort, load-balancer and external IPs only goes to
    /// endpoints on this node. As kube-proxy (`ExternalPolicyLocal`), only
    /// for NodePort/LoadBalancer Services and Services with externalIPs.
    pub external_local: bool,
    /// `spec.healthCheckNodePort`, kept only where kube-proxy serves it
    /// (`type: LoadBalancer` with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// Why the Service produces no frontends on purpose, for debug logs.
    pub ignored: Option<&'static str>,
}

/// `spec.type`, for the types that are proxied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// `ClusterIP` (the default).
    #[default]
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
}

/// One `status.loadBalancer.ingress[]` address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadBalancerIp {
    /// `ip`.
    pub address: Ipv4Addr,
    /// `ipMode: Proxy`: the load balancer proxies (e.g. terminates TLS or
    /// adds PROXY protocol), so in-cluster clients must reach it rather than
    /// be short-circuited to the endpoints (KEP-1860). Such an address gets
    /// an external frontend only.
    pub proxy: bool,
}

/// One Service port the datapath can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`, `""` if unnamed: EndpointSlice ports are named after it.
    pub name: String,
    /// `port`.
    pub port: u16,
    /// `nodePort` of a NodePort or LoadBalancer Service, if set (it is not
    /// with `allocateLoadBalancerNodePorts: false`).
    pub node_port: Option<u16>,
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
    /// `targetPort` when it is a name (used only as a matching fallback).
    pub target_port_name: Option<String>,
}

/// A conversion result: the value plus problems that only dropped a part of
/// it (e.g. one SCTP port); the rest is still served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted<T> {
    /// The converted object.
    pub value: T,
    /// Problems with parts of it, each naming the field.
    pub warnings: Vec<String>,
}

/// Converts a Service. `Err` means the whole Service is invalid (as the API
/// server would have rejected it) and must be skipped; the message names the field.
pub fn service_from_k8s(service: &Service) -> Result<Converted<ServiceInfo>, String> {
    let metadata = &service.metadata;
    let id = ServiceId::new(
        metadata.namespace.as_deref().unwrap_or("default"),
        metadata.name.as_deref().unwrap_or_default(),
    );
    let mut info = ServiceInfo {
        id,
        created: metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        cluster_ips: Vec::new(),
        ports: Vec::new(),
        affinity_timeout: 0,
        internal_local: false,
        type_: ServiceType::ClusterIp,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        external_local: false,
        health_check_node_port: None,
        ignored: None,
    };
    let mut warnings = Vec::new();
    let labels = metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME)) {
        info.ignored = Some("labelled service.kubernetes.io/service-proxy-name");
        return Ok(Converted {
            value: info,
            warnings,
        });
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        info.ignored = Some("labelled service.kubernetes.io/headless");
        return Ok(Converted {
            value: info,
            warnings,
        });
    }
    let Some(spec) = &service.spec else {
        info.ignored = Some("no spec");
        return Ok(Converted {
            value: info,
            warnings,
        });
    };

    info.type_ = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        // ExternalName Services are DNS-only (kube-proxy: ShouldSkipService).
        Some("ExternalName") => {
            info.ignored = Some("type ExternalName");
            return Ok(Converted {
                value: info,
                warnings,
            });
        }
        Some(other) => return Err(format!("spec.type: unsupported value {other:?}")),
    };

    // kube-proxy uses spec.clusterIPs (dual-stack), which the API server fills
    // from spec.clusterIP; hand-written manifests often only set the latter.
    let (field, ips): (&str, Vec<&str>) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => {
            ("spec.clusterIPs", ips.iter().map(String::as_str).collect())
        }
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    // Headless ("None") or unallocated (""): no virtual IP to proxy
    // (kube-proxy: ShouldSkipService / IsServiceIPSet).
    if ips.first().is_none_or(|ip| ip.is_empty() || *ip == "None") {
        info.ignored = Some("headless (no cluster IP)");
        return Ok(Converted {
            value: info,
            warnings,
        });
    }
    for (i, ip) in ips.iter().enumerate() {
        match parse_ipv4(ip) {
            Some(ip) if !info.cluster_ips.contains(&ip) => info.cluster_ips.push(ip),
            Some(_) => {}
            // IPv6 cluster IPs: valid, but the datapath is IPv4-only for now.
            None if ip.parse::<Ipv6Addr>().is_ok() => {}
            None => {
                let field = if field == "spec.clusterIPs" {
                    format!("{field}[{i}]")
                } else {
                    field.to_owned()
                };
                return Err(format!("{field}: invalid IP address {ip:?}"));
            }
        }
    }

    let mut seen = HashSet::new();
    let mut seen_node_ports = HashSet::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!(
                    "spec.ports[{i}].port: {} is out of range 1-65535",
                    port.port
                )
            })?;
        let protocol = match Protocol::from_k8s(port.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(unsupported) => {
                // Only this port is lost; kube-proxy would serve SCTP, we can't yet.
                warnings.push(format!(
                    "spec.ports[{i}]: protocol {unsupported} is not supported; port {number} not served"
                ));
                continue;
            }
        };
        // API validation: (port, protocol) pairs are unique within a Service.
        if !seen.insert((number, protocol)) {
            return Err(format!(
                "spec.ports[{i}]: duplicate port {number}/{protocol}"
            ));
        }
        let target_port_name = match &port.target_port {
            Some(IntOrString::String(name)) if !name.is_empty() => Some(name.clone()),
            _ => None,
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            // API validation: nodePort is forbidden on ClusterIP Services.
            Some(_) if info.type_ == ServiceType::ClusterIp => {
                return Err(format!(
                    "spec.ports[{i}].nodePort: may not be used when spec.type is ClusterIP"
                ));
            }
            Some(n) => {
                let n = u16::try_from(n).ok().ok_or_else(|| {
                    format!("spec.ports[{i}].nodePort: {n} is out of range 1-65535")
                })?;
                // API validation: a node port serves one port per protocol.
                if !seen_node_ports.insert((n, protocol)) {
                    return Err(format!(
                        "spec.ports[{i}].nodePort: duplicate node port {n}/{protocol}"
                    ));
                }
                Some(n)
            }
        };
        info.ports.push(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
            node_port,
            target_port_name,
        });
    }

    match spec.session_affinity.as_deref() {
        None | Some("None") => {}
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            info.affinity_timeout = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(t))
                    .ok_or_else(|| {
                        format!(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is out of range 1-{MAX_AFFINITY_TIMEOUT}"
                        )
                    })?,
            };
        }
        Some(other) => return Err(format!("spec.sessionAffinity: unsupported value {other:?}")),
    }

    info.internal_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(format!(
                "spec.internalTrafficPolicy: unsupported value {other:?}"
            ));
        }
    };

    let raw_external_ips = spec.external_ips.as_deref().unwrap_or_default();
    for (i, ip) in raw_external_ips.iter().enumerate() {
        let field = || format!("spec.externalIPs[{i}]");
        if let Some(ip) = usable_ip(ip, field, &mut warnings) {
            if !info.external_ips.contains(&ip) {
                info.external_ips.push(ip);
            }
        }
    }
    if info.type_ == ServiceType::LoadBalancer {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default();
        for (i, entry) in ingress.iter().enumerate() {
            // Hostname-only entries (e.g. AWS ELB) have no address to serve.
            let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let field = || format!("status.loadBalancer.ingress[{i}].ip");
            let Some(address) = usable_ip(ip, field, &mut warnings) else {
                continue;
            };
            if !info.load_balancer_ips.iter().any(|l| l.address == address) {
                info.load_balancer_ips.push(LoadBalancerIp {
                    address,
                    proxy: entry.ip_mode.as_deref() == Some("Proxy"),
                });
            }
        }
    }

    let etp_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(format!(
                "spec.externalTrafficPolicy: unsupported value {other:?}"
            ));
        }
    };
    // kube-proxy's ExternalPolicyLocal: the policy means nothing for a
    // ClusterIP Service without external IPs (nothing external reaches it).
    info.external_local =
        etp_local && (info.type_ != ServiceType::ClusterIp || !raw_external_ips.is_empty());
    let needs_health_check = info.type_ == ServiceType::LoadBalancer && info.external_local;
    match spec.health_check_node_port {
        None | Some(0) => {}
        Some(port) if needs_health_check => {
            let port = u16::try_from(port).ok().ok_or_else(|| {
                format!("spec.healthCheckNodePort: {port} is out of range 1-65535")
            })?;
            info.health_check_node_port = Some(port);
        }
        // API validation (and kube-proxy's NeedsHealthCheck).
        Some(_) => {
            return Err(
                "spec.healthCheckNodePort: may only be set when spec.type is \
                        LoadBalancer and spec.externalTrafficPolicy is Local"
                    .to_owned(),
            );
        }
    }
    // Kept for as long as the Service exists: no spare capacity.
    info.cluster_ips.shrink_to_fit();
    info.ports.shrink_to_fit();
    info.external_ips.shrink_to_fit();
    info.load_balancer_ips.shrink_to_fit();
    Ok(Converted {
        value: info,
        warnings,
    })
}

/// An external or load-balancer IP the datapath can serve. IPv6 addresses
/// are skipped silently (the datapath is IPv4-only, as for cluster IPs);
/// anything else unusable is a warning naming `field`, and only that
/// address is lost.
fn usable_ip(
    text: &str,
    field: impl FnOnce() -> String,
    warnings: &mut Vec<String>,
) -> Option<Ipv4Addr> {
    let Some(ip) = parse_ipv4(text) else {
        if text.parse::<Ipv6Addr>().is_err() {
            warnings.push(format!(
                "{}: invalid IP address {text:?}; not served",
                field()
            ));
        }
        return None;
    };
    // The API server's ValidateNonSpecialIP: these never reach a node from
    // outside, and 0.0.0.0 is the NodePort key address.
    let special = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("not a unicast address")
    } else {
        None
    };
    if let Some(why) = special {
        warnings.push(format!("{}: {ip} is {why}; not served", field()));
        return None;
    }
    Some(ip)
}

/// Parses an IPv4 address like Kubernetes' `ParseIPSloppy`: leading zeros
/// are accepted and read as decimal (objects created before Go 1.17 may
/// have them), unlike Rust's strict parser.
pub fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{ServiceBuilder, TargetPort};

    fn convert(builder: ServiceBuilder) -> Result<Converted<ServiceInfo>, String> {
        service_from_k8s(&builder.build())
    }

    fn web() -> ServiceBuilder {
        ServiceBuilder::new("default", "web").cluster_ip("198.18.200.10")
    }

    #[test]
    fn cluster_ip_and_ports() {
        let info = convert(
            web()
                .port("http", 80, "TCP", TargetPort::Name("web"))
                .port("dns", 53, "UDP", TargetPort::Number(5353))
                .port("", 8080, "", TargetPort::Unset),
        )
        .expect("valid")
        .value;
        assert_eq!(info.id, ServiceId::new("default", "web"));
        assert_eq!(info.cluster_ips, [Ipv4Addr::new(198, 18, 200, 10)]);
        let ports: Vec<_> = info
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.port,
                    p.protocol,
                    p.target_port_name.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 80, Protocol::Tcp, Some("web")),
                ("dns", 53, Protocol::Udp, None),
                ("", 8080, Protocol::Tcp, None),
            ]
        );
        assert_eq!(info.affinity_timeout, 0);
        assert!(!info.internal_local);
        assert_eq!(info.ignored, None);
    }

    #[test]
    fn cluster_ips_win_over_cluster_ip_and_ipv6_is_skipped() {
        let info = convert(
            ServiceBuilder::new("default", "dual")
                .cluster_ip("10.0.0.9")
                .cluster_ips(&["fd00::1", "10.0.0.1", "10.0.0.1"])
                .port("", 80, "TCP", TargetPort::Unset),
        )
        .expect("valid")
        .value;
        assert_eq!(info.cluster_ips, [Ipv4Addr::new(10, 0, 0, 1)]);

        let v6 = convert(
            ServiceBuilder::new("default", "v6")
                .cluster_ip("fd00::1")
                .port("", 80, "TCP", TargetPort::Unset),
        )
        .expect("valid")
        .value;
        assert!(v6.cluster_ips.is_empty());
        assert_eq!(v6.ignored, None);
    }

    #[test]
    fn not_proxied_services_are_ignored_without_error() {
        let cases = [
            ("headless None", web().cluster_ip("None")),
            (
                "headless empty",
                ServiceBuilder::new("default", "x").cluster_ip(""),
            ),
            ("no cluster ip", ServiceBuilder::new("default", "x")),
            ("external name", web().type_("ExternalName")),
            ("proxy name", web().label(LABEL_SERVICE_PROXY_NAME, "other")),
            (
                "proxy name empty",
                web().label(LABEL_SERVICE_PROXY_NAME, ""),
            ),
            ("headless label", web().label(LABEL_HEADLESS, "")),
        ];
        for (what, builder) in cases {
            let converted = convert(builder.port("", 80, "TCP", TargetPort::Unset)).expect(what);
            assert!(converted.value.cluster_ips.is_empty(), "{what}");
            assert!(converted.value.ignored.is_some(), "{what}");
            assert!(converted.warnings.is_empty(), "{what}");
        }
    }

    #[test]
    fn invalid_services_are_errors_naming_the_field() {
        let cases = [
            (
                web().cluster_ip("300.1.1.1"),
                "spec.clusterIP: invalid IP address \"300.1.1.1\"",
            ),
            (
                web().cluster_ips(&["10.0.0.1", "nope"]),
                "spec.clusterIPs[1]: invalid IP address \"nope\"",
            ),
            (
                web().port("a", 0, "TCP", TargetPort::Unset),
                "spec.ports[0].port: 0 is out of range 1-65535",
            ),
            (
                web().port("a", 80, "TCP", TargetPort::Unset).port(
                    "b",
                    65536,
                    "TCP",
                    TargetPort::Unset,
                ),
                "spec.ports[1].port: 65536 is out of range 1-65535",
            ),
            (
                web()
                    .port("a", 80, "TCP", TargetPort::Unset)
                    .port("b", 80, "", TargetPort::Unset),
                "spec.ports[1]: duplicate port 80/TCP",
            ),
            (
                web().type_("Weird"),
                "spec.type: unsupported value \"Weird\"",
            ),
            (
                web().client_ip_affinity(Some(0)),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range 1-86400",
            ),
            (
                web().client_ip_affinity(Some(86_401)),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is out of range 1-86400",
            ),
        ];
        for (builder, want) in cases {
            assert_eq!(convert(builder).expect_err(want), want);
        }
    }

    #[test]
    fn sctp_port_is_a_warning_other_ports_served() {
        let converted = convert(web().port("sctp", 9000, "SCTP", TargetPort::Unset).port(
            "http",
            80,
            "TCP",
            TargetPort::Unset,
        ))
        .expect("valid");
        assert_eq!(converted.value.ports.len(), 1);
        assert_eq!(converted.value.ports[0].name, "http");
        assert_eq!(
            converted.warnings,
            ["spec.ports[0]: protocol SCTP is not supported; port 9000 not served"]
        );
    }

    #[test]
    fn session_affinity() {
        let default = convert(web().client_ip_affinity(None))
            .expect("valid")
            .value;
        assert_eq!(default.affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
        let explicit = convert(web().client_ip_affinity(Some(60)))
            .expect("valid")
            .value;
        assert_eq!(explicit.affinity_timeout, 60);
    }

    #[test]
    fn creation_timestamp_and_traffic_policy() {
        let info = convert(
            web()
                .created(1_700_000_000)
                .internal_traffic_policy("Local"),
        )
        .expect("valid")
        .value;
        assert_eq!(info.created, Some(1_700_000_000));
        assert!(info.internal_local);
        assert!(convert(web().internal_traffic_policy("Sometimes")).is_err());
    }

    fn lb() -> ServiceBuilder {
        web()
            .type_("LoadBalancer")
            .port("http", 80, "TCP", TargetPort::Unset)
            .node_port(30080)
    }

    #[test]
    fn node_ports_external_ips_and_load_balancer_status() {
        let info = convert(
            lb().port("dns", 53, "UDP", TargetPort::Unset)
                .external_ips(&["198.18.100.1", "fd00::1", "198.18.100.1"])
                .ingress("198.18.150.1", "", "")
                .ingress("198.18.150.2", "Proxy", "")
                .ingress("", "", "lb.example.com")
                .ingress("fd00::2", "VIP", "")
                .ingress("198.18.150.1", "VIP", ""),
        )
        .expect("valid");
        assert!(info.warnings.is_empty(), "{:?}", info.warnings);
        let info = info.value;
        assert_eq!(info.type_, ServiceType::LoadBalancer);
        let node_ports: Vec<_> = info.ports.iter().map(|p| p.node_port).collect();
        assert_eq!(node_ports, [Some(30080), None], "dns has no nodePort");
        assert_eq!(info.external_ips, [Ipv4Addr::new(198, 18, 100, 1)]);
        assert_eq!(
            info.load_balancer_ips,
            [
                LoadBalancerIp {
                    address: Ipv4Addr::new(198, 18, 150, 1),
                    proxy: false
                },
                LoadBalancerIp {
                    address: Ipv4Addr::new(198, 18, 150, 2),
                    proxy: true
                },
            ]
        );
        assert!(!info.external_local);
        assert_eq!(info.health_check_node_port, None);
    }

    #[test]
    fn load_balancer_status_only_counts_for_type_load_balancer() {
        let info = convert(
            web()
                .type_("NodePort")
                .port("", 80, "TCP", TargetPort::Unset)
                .node_port(30080)
                .ingress_ip("198.18.150.1"),
        )
        .expect("valid")
        .value;
        assert!(info.load_balancer_ips.is_empty());
        assert_eq!(info.ports[0].node_port, Some(30080));
    }

    #[test]
    fn unusable_external_and_status_ips_are_warnings_naming_the_field() {
        let converted = convert(
            lb().external_ips(&[
                "nope",
                "127.0.0.1",
                "0.0.0.0",
                "198.18.100.1",
                "169.254.1.1",
            ])
            .ingress_ip("300.0.0.1")
            .ingress_ip("224.0.0.1")
            .ingress_ip("198.18.150.1"),
        )
        .expect("only those addresses are lost");
        assert_eq!(
            converted.warnings,
            [
                "spec.externalIPs[0]: invalid IP address \"nope\"; not served",
                "spec.externalIPs[1]: 127.0.0.1 is a loopback address; not served",
                "spec.externalIPs[2]: 0.0.0.0 is unspecified; not served",
                "spec.externalIPs[4]: 169.254.1.1 is a link-local address; not served",
                "status.loadBalancer.ingress[0].ip: invalid IP address \"300.0.0.1\"; not served",
                "status.loadBalancer.ingress[1].ip: 224.0.0.1 is not a unicast address; not served",
            ]
        );
        assert_eq!(
            converted.value.external_ips,
            [Ipv4Addr::new(198, 18, 100, 1)]
        );
        assert_eq!(converted.value.load_balancer_ips.len(), 1);
    }

    #[test]
    fn external_traffic_policy_and_health_check_port() {
        let local = convert(
            lb().external_traffic_policy("Local")
                .health_check_node_port(32000),
        )
        .expect("valid")
        .value;
        assert!(local.external_local);
        assert_eq!(local.health_check_node_port, Some(32000));

        // NodePort: Local applies, but there is no health check port.
        let node_port = convert(
            web()
                .type_("NodePort")
                .port("", 80, "TCP", TargetPort::Unset)
                .node_port(30080)
                .external_traffic_policy("Local"),
        )
        .expect("valid")
        .value;
        assert!(node_port.external_local);
        assert_eq!(node_port.health_check_node_port, None);

        // ClusterIP: only meaningful with external IPs (kube-proxy's
        // ExternalPolicyLocal).
        let plain = convert(web().external_traffic_policy("Local"))
            .expect("valid")
            .value;
        assert!(!plain.external_local);
        let with_ips = convert(
            web()
                .external_traffic_policy("Local")
                .external_ips(&["198.18.100.1"]),
        )
        .expect("valid")
        .value;
        assert!(with_ips.external_local);
    }

    #[test]
    fn invalid_node_port_fields_make_the_service_invalid() {
        let cases = [
            (
                web()
                    .port("", 80, "TCP", TargetPort::Unset)
                    .node_port(30080),
                "spec.ports[0].nodePort: may not be used when spec.type is ClusterIP",
            ),
            (
                lb().port("b", 81, "TCP", TargetPort::Unset)
                    .node_port(70000),
                "spec.ports[1].nodePort: 70000 is out of range 1-65535",
            ),
            (
                lb().port("b", 81, "TCP", TargetPort::Unset)
                    .node_port(30080),
                "spec.ports[1].nodePort: duplicate node port 30080/TCP",
            ),
            (
                lb().external_traffic_policy("Nearby"),
                "spec.externalTrafficPolicy: unsupported value \"Nearby\"",
            ),
            (
                lb().health_check_node_port(32000),
                "spec.healthCheckNodePort: may only be set when spec.type is \
                 LoadBalancer and spec.externalTrafficPolicy is Local",
            ),
            (
                lb().external_traffic_policy("Local")
                    .health_check_node_port(-1),
                "spec.healthCheckNodePort: -1 is out of range 1-65535",
            ),
        ];
        for (builder, want) in cases {
            assert_eq!(convert(builder).expect_err(want), want);
        }
        // The same node port over TCP and UDP is one port per protocol: fine.
        let both = convert(
            lb().port("u", 80, "UDP", TargetPort::Unset)
                .node_port(30080),
        )
        .expect("valid")
        .value;
        assert_eq!(both.ports[1].node_port, Some(30080));
    }

    #[test]
    fn sloppy_ipv4_parsing() {
        assert_eq!(parse_ipv4("10.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            parse_ipv4("010.000.000.001"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.-4",
            "a.b.c.d",
            "0001.2.3.4",
            "::1",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }
}
