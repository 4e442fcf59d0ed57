//! Turns a k8s `EndpointSlice` into the compact [`SliceInfo`] the model keeps.
//!
//! Mirrors kube-proxy's EndpointSliceCache (pkg/proxy/endpointslicecache.go):
//! slices are lenient, a bad port or endpoint is skipped, never the slice.

use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::service::{parse_ipv4, Converted, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};
use super::types::{Protocol, ServiceId};

/// The label joining a slice to its Service (discovery.LabelServiceName).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// What the model needs from an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to; `None` when the slice is not used (no
    /// service-name label, not IPv4, or labelled for another proxy).
    pub service: Option<ServiceId>,
    /// Usable ports (named after the Service port, `""` if unnamed).
    pub ports: Vec<SlicePort>,
    /// Endpoints with a valid IPv4 first address.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One EndpointSlice port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// `name`; nil is `""`, as the API server defaults it.
    pub name: String,
    /// `port`: the port to send to on every endpoint.
    pub port: u16,
    /// `protocol` (TCP when absent).
    pub protocol: Protocol,
}

/// One endpoint with its conditions, as kube-proxy interprets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// `addresses[0]`.
    pub address: Ipv4Addr,
    /// `conditions.ready`, nil = true.
    pub ready: bool,
    /// `conditions.serving`, nil = true.
    pub serving: bool,
    /// `conditions.terminating`, nil = false.
    pub terminating: bool,
    /// `nodeName` is this node (for `internalTrafficPolicy: Local`).
    pub local: bool,
}

/// Converts a slice. `node_name` is this node's name, if known (endpoints
/// are local when their `nodeName` equals it). Never fails: problems only
/// drop the affected port or endpoint and are returned as warnings.
pub fn slice_from_k8s(slice: &EndpointSlice, node_name: Option<&str>) -> Converted<SliceInfo> {
    let mut info = SliceInfo {
        service: None,
        ports: Vec::new(),
        endpoints: Vec::new(),
    };
    let mut warnings = Vec::new();
    let labels = slice.metadata.labels.as_ref();
    // kube-proxy only watches slices without these labels (its informer's
    // label selector), and ignores slices without a service-name label.
    let service_name = labels
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .filter(|n| !n.is_empty());
    let foreign = labels.is_some_and(|l| {
        l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS)
    });
    // The IPv4 datapath only uses IPv4 slices (IPv6 and FQDN are skipped).
    let (Some(service_name), false, "IPv4") = (service_name, foreign, slice.address_type.as_str())
    else {
        return Converted {
            value: info,
            warnings,
        };
    };
    info.service = Some(ServiceId::new(
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        service_name.as_str(),
    ));

    for port in slice.ports.iter().flatten() {
        // nil or 0 port: kube-proxy logs "Ignoring invalid endpoint port".
        let Some(number) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        // An SCTP slice port can only match an SCTP Service port, which is
        // already reported on the Service.
        let Ok(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
            continue;
        };
        info.ports.push(SlicePort {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
        });
    }

    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // kube-proxy only looks at the first address; the API documents the
        // others as having no defined semantics.
        let Some(address) = endpoint.addresses.first() else {
            continue;
        };
        let Some(address) = parse_ipv4(address) else {
            warnings.push(format!(
                "endpoints[{i}].addresses[0]: invalid IPv4 address {address:?}; endpoint skipped"
            ));
            continue;
        };
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        info.endpoints.push(SliceEndpoint {
            address,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            local: node_name.is_some_and(|node| endpoint.node_name.as_deref() == Some(node)),
        });
    }
    // Kept for as long as the slice exists: no spare capacity.
    info.ports.shrink_to_fit();
    info.endpoints.shrink_to_fit();
    Converted {
        value: info,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::SliceBuilder;

    #[test]
    fn ports_endpoints_and_condition_defaults() {
        let slice = SliceBuilder::for_service("shop", "web", "web-1")
            .port(Some("http"), 8080, "TCP")
            .port(None, 53, "UDP")
            .port(Some("zero"), 0, "TCP")
            .port(Some("sctp"), 9, "SCTP")
            .endpoint("10.1.0.1", None, None, None, Some("n1"))
            .endpoint("10.1.0.2", Some(false), Some(true), Some(true), Some("n2"))
            .build();
        let converted = slice_from_k8s(&slice, Some("n1"));
        assert!(converted.warnings.is_empty());
        let info = converted.value;
        assert_eq!(info.service, Some(ServiceId::new("shop", "web")));
        let ports: Vec<_> = info
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [("http", 8080, Protocol::Tcp), ("", 53, Protocol::Udp)]
        );
        assert_eq!(
            info.endpoints,
            [
                SliceEndpoint {
                    address: Ipv4Addr::new(10, 1, 0, 1),
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                },
                SliceEndpoint {
                    address: Ipv4Addr::new(10, 1, 0, 2),
                    ready: false,
                    serving: true,
                    terminating: true,
                    local: false,
                },
            ]
        );
    }

    #[test]
    fn only_first_address_is_used_bad_addresses_skipped() {
        let slice = SliceBuilder::for_service("default", "web", "web-1")
            .endpoint_addresses(&["10.1.0.1", "10.1.0.99"])
            .endpoint_addresses(&[])
            .endpoint_addresses(&["bogus"])
            .build();
        let converted = slice_from_k8s(&slice, None);
        let addresses: Vec<_> = converted
            .value
            .endpoints
            .iter()
            .map(|e| e.address)
            .collect();
        assert_eq!(addresses, [Ipv4Addr::new(10, 1, 0, 1)]);
        assert_eq!(
            converted.warnings,
            ["endpoints[2].addresses[0]: invalid IPv4 address \"bogus\"; endpoint skipped"]
        );
        assert!(
            !converted.value.endpoints[0].local,
            "no node name: nothing is local"
        );
    }

    #[test]
    fn unusable_slices_have_no_service() {
        let cases = [
            ("no label", SliceBuilder::new("default", "s")),
            (
                "empty label",
                SliceBuilder::new("default", "s").label(LABEL_SERVICE_NAME, ""),
            ),
            (
                "ipv6",
                SliceBuilder::for_service("default", "web", "s").address_type("IPv6"),
            ),
            (
                "fqdn",
                SliceBuilder::for_service("default", "web", "s").address_type("FQDN"),
            ),
            (
                "other proxy",
                SliceBuilder::for_service("default", "web", "s")
                    .label(LABEL_SERVICE_PROXY_NAME, "x"),
            ),
            (
                "headless",
                SliceBuilder::for_service("default", "web", "s").label(LABEL_HEADLESS, ""),
            ),
        ];
        for (what, builder) in cases {
            let info = slice_from_k8s(
                &builder.endpoint("10.1.0.1", None, None, None, None).build(),
                None,
            )
            .value;
            assert_eq!(info.service, None, "{what}");
        }
    }
}
