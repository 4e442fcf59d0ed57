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

/// What the datapath matches on: destination address, port and protocol.
/// Displays as `1.2.3.4:80/TCP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    /// Destination address (a cluster IP, for now).
    pub address: Ipv4Addr,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol)
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

/// How traffic reaches a frontend. Only cluster IPs exist today; NodePort,
/// external IPs and load-balancer IPs will be added as variants, each with
/// its own key address (and node-local endpoint rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// `spec.clusterIPs`: reachable from inside the cluster.
    ClusterIp,
}

/// The desired state of one frontend: where it points and how to balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The address/port/protocol matched in the datapath.
    pub key: FrontendKey,
    /// How traffic reaches this frontend.
    pub kind: FrontendKind,
    /// The Service it belongs to.
    pub service: ServiceId,
    /// The Service port's name (`""` if unnamed).
    pub port_name: String,
    /// Backends, sorted and deduplicated; empty means reject (ECONNREFUSED),
    /// as kube-proxy does for a Service without endpoints.
    pub backends: Vec<BackendAddr>,
    /// Session affinity (ClientIP) timeout in seconds; 0 = no affinity.
    pub affinity_timeout: u32,
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
        let key = FrontendKey {
            address: Ipv4Addr::new(1, 2, 3, 4),
            port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(key.to_string(), "1.2.3.4:80/TCP");
        assert_eq!(ServiceId::new("default", "web").to_string(), "default/web");
        let backend = BackendAddr {
            address: Ipv4Addr::new(10, 1, 0, 5),
            port: 8080,
            terminating: true,
        };
        assert_eq!(backend.to_string(), "10.1.0.5:8080 (terminating)");
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        assert_eq!(Protocol::from_k8s(None), Ok(Protocol::Tcp));
        assert_eq!(Protocol::from_k8s(Some("UDP")), Ok(Protocol::Udp));
        assert_eq!(Protocol::from_k8s(Some("SCTP")), Err("SCTP"));
        assert_eq!(Protocol::Udp.ip_protocol(), 17);
    }

    #[test]
    fn keys_order_by_address_port_protocol() {
        let k = |a: u8, port, protocol| FrontendKey {
            address: Ipv4Addr::new(10, 0, 0, a),
            port,
            protocol,
        };
        let mut keys = vec![
            k(2, 1, Protocol::Tcp),
            k(1, 80, Protocol::Udp),
            k(1, 80, Protocol::Tcp),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                k(1, 80, Protocol::Tcp),
                k(1, 80, Protocol::Udp),
                k(2, 1, Protocol::Tcp)
            ]
        );
    }
}
