//! Builders for the Kubernetes manifests the tests and the demo write, in
//! the shape the API server serves them (`kubectl get -o yaml`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

/// A `targetPort`: a number or a container port name.
#[derive(Debug, Clone)]
pub enum Target {
    /// A port number on the pod.
    Number(u16),
    /// A named container port.
    Name(String),
}

#[derive(Debug, Clone)]
struct ServicePort {
    name: String,
    port: u16,
    protocol: String,
    target: Target,
    node_port: Option<u16>,
}

/// A v1 Service.
#[derive(Debug, Clone)]
pub struct Service {
    namespace: String,
    name: String,
    type_: String,
    cluster_ip: String,
    ports: Vec<ServicePort>,
    affinity_timeout: Option<u32>,
    labels: Vec<(String, String)>,
    external_name: Option<String>,
    external_ips: Vec<Ipv4Addr>,
    lb_ingress: Vec<Ipv4Addr>,
    external_traffic_policy: Option<String>,
    internal_traffic_policy: Option<String>,
    health_check_node_port: Option<u16>,
}

impl Service {
    /// A ClusterIP service.
    pub fn cluster_ip(namespace: &str, name: &str, ip: Ipv4Addr) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            type_: "ClusterIP".into(),
            cluster_ip: ip.to_string(),
            ports: vec![],
            affinity_timeout: None,
            labels: vec![],
            external_name: None,
            external_ips: vec![],
            lb_ingress: vec![],
            external_traffic_policy: None,
            internal_traffic_policy: None,
            health_check_node_port: None,
        }
    }

    /// `type: NodePort` (set each port's `nodePort` with
    /// [`Service::node_port`]; ports without one get none, as if the API
    /// server had not allocated it yet).
    pub fn node_port_service(namespace: &str, name: &str, ip: Ipv4Addr) -> Self {
        Self {
            type_: "NodePort".into(),
            ..Self::cluster_ip(namespace, name, ip)
        }
    }

    /// `type: LoadBalancer` (add `status.loadBalancer.ingress` addresses
    /// with [`Service::lb_ingress`]).
    pub fn load_balancer(namespace: &str, name: &str, ip: Ipv4Addr) -> Self {
        Self {
            type_: "LoadBalancer".into(),
            ..Self::cluster_ip(namespace, name, ip)
        }
    }

    /// The `nodePort` of the port called `port_name` (added before).
    pub fn node_port(mut self, port_name: &str, node_port: u16) -> Self {
        let p = self
            .ports
            .iter_mut()
            .find(|p| p.name == port_name)
            .unwrap_or_else(|| panic!("node_port({port_name:?}): no such service port"));
        p.node_port = Some(node_port);
        self
    }

    /// Add to `spec.externalIPs`.
    pub fn external_ip(mut self, ip: Ipv4Addr) -> Self {
        self.external_ips.push(ip);
        self
    }

    /// Add to `status.loadBalancer.ingress[].ip`.
    pub fn lb_ingress(mut self, ip: Ipv4Addr) -> Self {
        self.lb_ingress.push(ip);
        self
    }

    /// `spec.externalTrafficPolicy`: "Cluster" or "Local".
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.external_traffic_policy = Some(policy.into());
        self
    }

    /// `spec.internalTrafficPolicy`: "Cluster" or "Local".
    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.internal_traffic_policy = Some(policy.into());
        self
    }

    /// `spec.healthCheckNodePort` (the API server allocates one for
    /// LoadBalancer services with `externalTrafficPolicy: Local`).
    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.health_check_node_port = Some(port);
        self
    }

    /// A headless service (`clusterIP: None`).
    pub fn headless(namespace: &str, name: &str) -> Self {
        Self {
            cluster_ip: "None".into(),
            ..Self::cluster_ip(namespace, name, Ipv4Addr::UNSPECIFIED)
        }
    }

    /// `type: ExternalName`.
    pub fn external_name(namespace: &str, name: &str, target: &str) -> Self {
        Self {
            type_: "ExternalName".into(),
            cluster_ip: String::new(),
            external_name: Some(target.into()),
            ..Self::cluster_ip(namespace, name, Ipv4Addr::UNSPECIFIED)
        }
    }

    /// Add a service port (`protocol`: TCP or UDP).
    pub fn port(mut self, name: &str, port: u16, protocol: &str, target: Target) -> Self {
        self.ports.push(ServicePort {
            name: name.into(),
            port,
            protocol: protocol.into(),
            target,
            node_port: None,
        });
        self
    }

    /// `sessionAffinity: ClientIP`; `None` timeout leaves the default.
    pub fn client_ip_affinity(mut self, timeout_seconds: Option<u32>) -> Self {
        self.affinity_timeout = Some(timeout_seconds.unwrap_or(0));
        self
    }

    /// Add a metadata label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "apiVersion: v1\nkind: Service\nmetadata:");
        let _ = writeln!(y, "  name: {}\n  namespace: {}", self.name, self.namespace);
        let _ = writeln!(y, "  creationTimestamp: \"2026-11-01T00:00:00Z\"");
        if !self.labels.is_empty() {
            let _ = writeln!(y, "  labels:");
            for (k, v) in &self.labels {
                let _ = writeln!(y, "    {k}: \"{v}\"");
            }
        }
        let _ = writeln!(y, "spec:\n  type: {}", self.type_);
        if let Some(target) = &self.external_name {
            let _ = writeln!(y, "  externalName: {target}");
        }
        if !self.cluster_ip.is_empty() {
            let _ = writeln!(y, "  clusterIP: {}", self.cluster_ip);
            let _ = writeln!(y, "  clusterIPs:\n  - {}", self.cluster_ip);
        }
        if !self.external_ips.is_empty() {
            let _ = writeln!(y, "  externalIPs:");
            for ip in &self.external_ips {
                let _ = writeln!(y, "  - {ip}");
            }
        }
        if let Some(p) = &self.external_traffic_policy {
            let _ = writeln!(y, "  externalTrafficPolicy: {p}");
        }
        if let Some(p) = &self.internal_traffic_policy {
            let _ = writeln!(y, "  internalTrafficPolicy: {p}");
        }
        if let Some(p) = self.health_check_node_port {
            let _ = writeln!(y, "  healthCheckNodePort: {p}");
        }
        match self.affinity_timeout {
            Some(0) => {
                let _ = writeln!(y, "  sessionAffinity: ClientIP");
            }
            Some(t) => {
                let _ = writeln!(
                    y,
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}"
                );
            }
            None => {
                let _ = writeln!(y, "  sessionAffinity: None");
            }
        }
        if !self.ports.is_empty() {
            let _ = writeln!(y, "  ports:");
            for p in &self.ports {
                let target = match &p.target {
                    Target::Number(n) => n.to_string(),
                    Target::Name(n) => n.clone(),
                };
                let _ = writeln!(
                    y,
                    "  - name: {}\n    port: {}\n    protocol: {}\n    targetPort: {}",
                    if p.name.is_empty() { "\"\"" } else { &p.name },
                    p.port,
                    p.protocol,
                    target
                );
                if let Some(np) = p.node_port {
                    let _ = writeln!(y, "    nodePort: {np}");
                }
            }
        }
        if !self.lb_ingress.is_empty() {
            let _ = writeln!(y, "status:\n  loadBalancer:\n    ingress:");
            for ip in &self.lb_ingress {
                let _ = writeln!(y, "    - ip: {ip}");
            }
        }
        y
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod address.
    pub ip: Ipv4Addr,
    /// `nodeName`.
    pub node: String,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Endpoint {
    /// A ready endpoint.
    pub fn ready(ip: Ipv4Addr, node: &str) -> Self {
        Self {
            ip,
            node: node.into(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Terminating but still serving (KEP-1669).
    pub fn terminating(ip: Ipv4Addr, node: &str) -> Self {
        Self {
            ready: false,
            serving: true,
            terminating: true,
            ..Self::ready(ip, node)
        }
    }
}

/// A discovery.k8s.io/v1 EndpointSlice for one service.
#[derive(Debug, Clone)]
pub struct EndpointSlice {
    namespace: String,
    name: String,
    service: String,
    ports: Vec<(String, u16, String)>,
    endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// An empty slice `name` of `namespace/service`.
    pub fn new(namespace: &str, service: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            service: service.into(),
            ports: vec![],
            endpoints: vec![],
        }
    }

    /// A slice port; `name` is the *service* port's name, as the
    /// EndpointSlice controller writes it.
    pub fn port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports.push((name.into(), port, protocol.into()));
        self
    }

    /// Add an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice");
        let _ = writeln!(
            y,
            "metadata:\n  name: {}\n  namespace: {}",
            self.name, self.namespace
        );
        let _ = writeln!(
            y,
            "  labels:\n    kubernetes.io/service-name: {}\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io",
            self.service
        );
        let _ = writeln!(y, "addressType: IPv4");
        if self.endpoints.is_empty() {
            let _ = writeln!(y, "endpoints: []");
        } else {
            let _ = writeln!(y, "endpoints:");
        }
        for e in &self.endpoints {
            let _ = writeln!(
                y,
                "- addresses:\n  - {}\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n  nodeName: {}",
                e.ip, e.ready, e.serving, e.terminating, e.node
            );
        }
        if self.ports.is_empty() {
            let _ = writeln!(y, "ports: []");
        } else {
            let _ = writeln!(y, "ports:");
        }
        for (name, port, protocol) in &self.ports {
            let name = if name.is_empty() { "\"\"" } else { name };
            let _ = writeln!(y, "- name: {name}\n  port: {port}\n  protocol: {protocol}");
        }
        y
    }
}

/// Write documents to `dir/file` atomically (a hidden temp file renamed
/// into place), as `kubectl`-driven tooling or a ConfigMap update would, so
/// the agent never reads half a file.
pub fn write(dir: &Path, file: &str, docs: &[String]) -> Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    let text = docs.join("---\n");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file))
        .with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Remove `dir/file`.
pub fn remove(dir: &Path, file: &str) -> Result<()> {
    std::fs::remove_file(dir.join(file)).with_context(|| format!("removing {file}"))
}
