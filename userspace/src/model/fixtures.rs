//! Builders for Services and EndpointSlices, for tests (here and in the dataplane).
//!
//! They build the k8s-openapi objects exactly as the API server would serve
//! them, so tests exercise the same conversion code as real manifests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::slice::LABEL_SERVICE_NAME;
use crate::source::{Object, ParsedFile};

/// A Service port's `targetPort`.
#[derive(Clone, Copy, Debug)]
pub enum TargetPort<'a> {
    /// Not set (the API server would default it to `port`).
    Unset,
    /// A port number.
    Number(i32),
    /// A container port name.
    Name(&'a str),
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn set_label(meta: &mut ObjectMeta, key: &str, value: &str) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

/// Builds a `v1 Service`, e.g.
/// `ServiceBuilder::new("default", "web").cluster_ip("198.18.200.10").port("http", 80, "TCP", TargetPort::Name("web"))`.
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    service: Service,
}

impl ServiceBuilder {
    /// A Service with no cluster IP and no ports yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceBuilder {
            service: Service {
                metadata: meta(namespace, name),
                spec: Some(ServiceSpec::default()),
                status: None,
            },
        }
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.service.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// Sets `spec.clusterIP`.
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.to_owned());
        self
    }

    /// Sets `spec.clusterIPs`.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.spec().cluster_ips = Some(ips.iter().map(|ip| (*ip).to_owned()).collect());
        self
    }

    /// Adds a port; empty `name`/`protocol` leave the field unset.
    pub fn port(mut self, name: &str, port: i32, protocol: &str, target: TargetPort) -> Self {
        let port = ServicePort {
            name: (!name.is_empty()).then(|| name.to_owned()),
            port,
            protocol: (!protocol.is_empty()).then(|| protocol.to_owned()),
            target_port: match target {
                TargetPort::Unset => None,
                TargetPort::Number(n) => Some(IntOrString::Int(n)),
                TargetPort::Name(n) => Some(IntOrString::String(n.to_owned())),
            },
            ..ServicePort::default()
        };
        self.spec().ports.get_or_insert_with(Vec::new).push(port);
        self
    }

    /// Sets `nodePort` of the port added last (no-op without ports).
    pub fn node_port(mut self, node_port: i32) -> Self {
        if let Some(port) = self.spec().ports.as_mut().and_then(|p| p.last_mut()) {
            port.node_port = Some(node_port);
        }
        self
    }

    /// Sets `spec.externalIPs`.
    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|ip| (*ip).to_owned()).collect());
        self
    }

    /// Sets `spec.externalTrafficPolicy`.
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.to_owned());
        self
    }

    /// Sets `spec.healthCheckNodePort`.
    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    /// Adds a `status.loadBalancer.ingress[]` entry with this `ip` (empty:
    /// unset), `ipMode` (empty: unset) and `hostname` (empty: unset).
    pub fn ingress(mut self, ip: &str, ip_mode: &str, hostname: &str) -> Self {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        self.service
            .status
            .get_or_insert_with(ServiceStatus::default)
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default)
            .ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: some(ip),
                ip_mode: some(ip_mode),
                hostname: some(hostname),
                ports: None,
            });
        self
    }

    /// Adds a `status.loadBalancer.ingress[]` entry with just an `ip`.
    pub fn ingress_ip(self, ip: &str) -> Self {
        self.ingress(ip, "", "")
    }

    /// Sets `spec.type`.
    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.to_owned());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        set_label(&mut self.service.metadata, key, value);
        self
    }

    /// `sessionAffinity: ClientIP`, with the given timeout or the default.
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".to_owned());
        spec.session_affinity_config = timeout_seconds.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    /// Sets `spec.internalTrafficPolicy`.
    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.to_owned());
        self
    }

    /// Sets `metadata.creationTimestamp` (Unix seconds).
    pub fn created(mut self, unix_seconds: i64) -> Self {
        self.service.metadata.creation_timestamp =
            Timestamp::from_second(unix_seconds).ok().map(Time);
        self
    }

    /// The Service.
    pub fn build(self) -> Service {
        self.service
    }

    /// The Service as a source [`Object`].
    pub fn object(self) -> Object {
        Object::Service(Box::new(self.service))
    }
}

/// Builds a `discovery.k8s.io/v1 EndpointSlice`, e.g.
/// `SliceBuilder::for_service("default", "web", "web-abc").port(Some("http"), 8080, "TCP").ready("10.1.0.1")`.
#[derive(Clone, Debug)]
pub struct SliceBuilder {
    slice: EndpointSlice,
}

impl SliceBuilder {
    /// An IPv4 slice without the service-name label.
    pub fn new(namespace: &str, name: &str) -> Self {
        SliceBuilder {
            slice: EndpointSlice {
                metadata: meta(namespace, name),
                address_type: "IPv4".to_owned(),
                endpoints: Vec::new(),
                ports: None,
            },
        }
    }

    /// An IPv4 slice labelled for `service`.
    pub fn for_service(namespace: &str, service: &str, name: &str) -> Self {
        Self::new(namespace, name).label(LABEL_SERVICE_NAME, service)
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        set_label(&mut self.slice.metadata, key, value);
        self
    }

    /// Sets `addressType`.
    pub fn address_type(mut self, address_type: &str) -> Self {
        self.slice.address_type = address_type.to_owned();
        self
    }

    /// Adds a port; an empty `protocol` leaves it unset.
    pub fn port(mut self, name: Option<&str>, port: i32, protocol: &str) -> Self {
        self.slice
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: name.map(str::to_owned),
                port: Some(port),
                protocol: (!protocol.is_empty()).then(|| protocol.to_owned()),
                app_protocol: None,
            });
        self
    }

    /// Adds an endpoint with explicit conditions (`None` = field unset).
    pub fn endpoint(
        mut self,
        address: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
        node: Option<&str>,
    ) -> Self {
        self.slice.endpoints.push(Endpoint {
            addresses: vec![address.to_owned()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            node_name: node.map(str::to_owned),
            ..Endpoint::default()
        });
        self
    }

    /// Adds a ready endpoint (conditions as the controller sets them).
    pub fn ready(self, address: &str) -> Self {
        self.endpoint(address, Some(true), Some(true), Some(false), None)
    }

    /// Adds a ready endpoint on node `node`.
    pub fn ready_on(self, address: &str, node: &str) -> Self {
        self.endpoint(address, Some(true), Some(true), Some(false), Some(node))
    }

    /// Adds a serving, terminating (so not ready) endpoint on node `node`.
    pub fn terminating_on(self, address: &str, node: &str) -> Self {
        self.endpoint(address, Some(false), Some(true), Some(true), Some(node))
    }

    /// Adds an endpoint with these addresses and no conditions.
    pub fn endpoint_addresses(mut self, addresses: &[&str]) -> Self {
        self.slice.endpoints.push(Endpoint {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..Endpoint::default()
        });
        self
    }

    /// The EndpointSlice.
    pub fn build(self) -> EndpointSlice {
        self.slice
    }

    /// The EndpointSlice as a source [`Object`].
    pub fn object(self) -> Object {
        Object::EndpointSlice(Box::new(self.slice))
    }
}

/// A parsed file holding `objects` and no errors.
pub fn parsed(objects: Vec<Object>) -> ParsedFile {
    ParsedFile {
        objects,
        errors: Vec::new(),
    }
}
