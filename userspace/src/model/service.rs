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
    /// Why the Service produces no frontends on purpose, for debug logs.
    pub ignored: Option<&'static str>,
}

/// One Service port the datapath can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`, `""` if unnamed: EndpointSlice ports are named after it.
    pub name: String,
    /// `port`.
    pub port: u16,
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

    match spec.type_.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        // ExternalName Services are DNS-only (kube-proxy: ShouldSkipService).
        Some("ExternalName") => {
            info.ignored = Some("type ExternalName");
            return Ok(Converted {
                value: info,
                warnings,
            });
        }
        Some(other) => return Err(format!("spec.type: unsupported value {other:?}")),
    }

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
        info.ports.push(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
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
    // Kept for as long as the Service exists: no spare capacity.
    info.cluster_ips.shrink_to_fit();
    info.ports.shrink_to_fit();
    Ok(Converted {
        value: info,
        warnings,
    })
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
