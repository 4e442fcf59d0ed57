//! The model's output: load-balancer frontends and their backends, in compact form.

use std::fmt;
use std::net::Ipv4Addr;

/// Identifies a Service: namespace and name. Displays as `ns/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceId {
    /// A Service id from its namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol the datapath balances. SCTP is not supported (yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (IP protocol 6), the Kubernetes default.
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP` or `UDP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// The IP protocol number, as found in the IPv4 header.
    pub fn ip_protocol(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// Parses a Kubernetes `protocol` field; `None` (absent) means TCP, as
    /// the API server defaults it. `Err` carries the unsupported value.
    pub fn from_k8s(protocol: Option<&str>) -> Result<Protocol, &str> {
        match protocol {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some(other) => Err(other),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which datapath hooks look a frontend up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The socket hooks: traffic that starts on the node or in its pods
    /// (`SCOPE_INTERNAL`).
    Internal,
    /// The tc/XDP programs: traffic arriving on the node's devices
    /// (`SCOPE_EXTERNAL`).
    External,
}

impl Scope {
    /// `internal` or `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Internal => "internal",
            Scope::External => "external",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the datapath matches on: destination address, port, protocol and
/// which hooks look it up. Displays as `1.2.3.4:80/TCP` (internal scope) or
/// `0.0.0.0:30080/TCP external`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    /// Destination address: a cluster IP, an external or load-balancer IP,
    /// or [`FrontendKey::NODEPORT_ADDRESS`] for NodePort frontends (which
    /// answer on every node address).
    pub address: Ipv4Addr,
    /// Destination port (the `nodePort` for NodePort frontends).
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Which hooks look it up.
    pub scope: Scope,
}

impl FrontendKey {
    /// The key address of NodePort frontends (`NODEPORT_ADDRESS` in the map
    /// contract).
    pub const NODEPORT_ADDRESS: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

    /// An internal-scope key (what cluster IPs use).
    pub fn internal(address: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        FrontendKey {
            address,
            port,
            protocol,
            scope: Scope::Internal,
        }
    }

    /// An external-scope key.
    pub fn external(address: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        FrontendKey {
            address,
            port,
            protocol,
            scope: Scope::External,
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol)?;
        if self.scope == Scope::External {
            f.write_str(" external")?;
        }
        Ok(())
    }
}

/// One endpoint to balance to. Displays as `10.1.0.5:8080`, with
/// ` (terminating)` appended for terminating-fallback backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    /// The endpoint's address.
    pub address: Ipv4Addr,
    /// The endpoint's port (from the EndpointSlice, i.e. the resolved targetPort).
    pub port: u16,
    /// True when the backend is only used because no endpoint is ready and it
    /// is serving but terminating (KEP-1669 fallback). False for every
    /// backend of a frontend that has ready endpoints.
    pub terminating: bool,
    /// The endpoint runs on this node (its EndpointSlice `nodeName` is the
    /// store's node name): the datapath reaches it without SNAT or DSR.
    pub local: bool,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.address, self.port)?;
        if self.terminating {
            f.write_str(" (terminating)")?;
        }
        Ok(())
    }
}

/// How traffic reaches a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// `spec.clusterIPs`: reachable from inside the cluster.
    ClusterIp,
    /// `spec.ports[].nodePort` on every node address.
    NodePort,
    /// `status.loadBalancer.ingress[].ip` of a `type: LoadBalancer` Service.
    LoadBalancer,
    /// `spec.externalIPs`.
    ExternalIp,
}

impl FrontendKind {
    /// The Kubernetes-style name: `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalIP`.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIP",
        }
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The desired state of one frontend: where it points and how to balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The address/port/protocol/scope matched in the datapath.
    pub key: FrontendKey,
    /// How traffic reaches this frontend.
    pub kind: FrontendKind,
    /// The Service it belongs to.
    pub service: ServiceId,
    /// The Service port's name (`""` if unnamed).
    pub port_name: String,
    /// Backends, sorted and deduplicated; empty means reject (ECONNREFUSED),
    /// as kube-proxy does for a Service without endpoints, or drop when
    /// `external_local` is set.
    pub backends: Vec<BackendAddr>,
    /// Session affinity (ClientIP) timeout in seconds; 0 = no affinity.
    pub affinity_timeout: u32,
    /// `externalTrafficPolicy: Local` applies (external scope only):
    /// `backends` holds only this node's endpoints, and with none the
    /// traffic is dropped, not rejected (`SVC_FLAG_LOCAL`).
    pub external_local: bool,
}

/// What a Service's `healthCheckNodePort` answers on this node
/// (`type: LoadBalancer` with `externalTrafficPolicy: Local`), as kube-proxy
/// serves it: 200 when `local_endpoints > 0`, 503 otherwise.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HealthCheck {
    /// The Service.
    pub service: ServiceId,
    /// `spec.healthCheckNodePort`.
    pub node_port: u16,
    /// Ready (not terminating) endpoints of the Service on this node. Zero
    /// when only terminating endpoints are left, so load balancers steer away
    /// (upstream e2e: "should fail health check node port if there are only
    /// terminating endpoints").
    pub local_endpoints: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays() {
        let key = FrontendKey::internal(Ipv4Addr::new(1, 2, 3, 4), 80, Protocol::Tcp);
        assert_eq!(key.to_string(), "1.2.3.4:80/TCP");
        let nodeport = FrontendKey::external(FrontendKey::NODEPORT_ADDRESS, 30080, Protocol::Udp);
        assert_eq!(nodeport.to_string(), "0.0.0.0:30080/UDP external");
        assert_eq!(ServiceId::new("default", "web").to_string(), "default/web");
        let backend = BackendAddr {
            address: Ipv4Addr::new(10, 1, 0, 5),
            port: 8080,
            terminating: true,
            local: false,
        };
        assert_eq!(backend.to_string(), "10.1.0.5:8080 (terminating)");
        assert_eq!(FrontendKind::ExternalIp.to_string(), "ExternalIP");
        assert_eq!(Scope::External.to_string(), "external");
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        assert_eq!(Protocol::from_k8s(None), Ok(Protocol::Tcp));
        assert_eq!(Protocol::from_k8s(Some("UDP")), Ok(Protocol::Udp));
        assert_eq!(Protocol::from_k8s(Some("SCTP")), Err("SCTP"));
        assert_eq!(Protocol::Udp.ip_protocol(), 17);
    }

    #[test]
    fn keys_order_by_address_port_protocol_scope() {
        let k = |a: u8, port, protocol, scope| FrontendKey {
            address: Ipv4Addr::new(10, 0, 0, a),
            port,
            protocol,
            scope,
        };
        let mut keys = vec![
            k(2, 1, Protocol::Tcp, Scope::Internal),
            k(1, 80, Protocol::Tcp, Scope::External),
            k(1, 80, Protocol::Udp, Scope::Internal),
            k(1, 80, Protocol::Tcp, Scope::Internal),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                k(1, 80, Protocol::Tcp, Scope::Internal),
                k(1, 80, Protocol::Tcp, Scope::External),
                k(1, 80, Protocol::Udp, Scope::Internal),
                k(2, 1, Protocol::Tcp, Scope::Internal)
            ]
        );
    }
}
