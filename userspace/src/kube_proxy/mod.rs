//! The rules kube-proxy would program for a set of Services, in its
//! iptables mode (`iptables-restore` input) and its nftables mode (`nft -f`
//! input), for `gangplank bench` / `cargo xtask bench` to measure gangplank
//! against what users would otherwise run, on the same Services.
//!
//! The structure follows kube-proxy's proxiers (pkg/proxy/iptables and
//! pkg/proxy/nftables, v1.31+): the same chains, the same order of rules in
//! them, the same chain names (hashes included), the same masquerade
//! marking. What is left out does not touch the measured path: IPv6,
//! session affinity, load-balancer source ranges, health-check node ports,
//! `Local` traffic policies and the "no endpoints" REJECT rules (every
//! Service measured has endpoints).

mod iptables;
mod names;
mod nftables;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use crate::model::{Protocol, ServiceId, ServiceInfo, ServiceType, SliceInfo};

pub use iptables::{iptables_endpoint_change, iptables_restore};
pub use nftables::{nft_endpoint_change, nft_ruleset, NFT_TABLE};

/// One Service port as kube-proxy programs it (its `ServicePortName`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedPort {
    /// The Service.
    pub service: ServiceId,
    /// The port's `name` (`""` when unnamed).
    pub port_name: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The Service's (first IPv4) cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// `port`.
    pub port: u16,
    /// `nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// Ready endpoints, in the order kube-proxy sorts them (by address
    /// string, as `endpointsInfo` are sorted before the chains are written).
    pub endpoints: Vec<SocketAddrV4>,
}

impl ProxiedPort {
    /// `namespace/name:port` (or `namespace/name` for an unnamed port), as
    /// kube-proxy's `ServicePortName.String()` spells it in hashes and comments.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            self.service.to_string()
        } else {
            format!("{}:{}", self.service, self.port_name)
        }
    }

    /// The protocol as kube-proxy hashes it (`strings.ToLower`).
    fn proto(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The cluster's address ranges, which the rules mention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterRanges {
    /// `--cluster-cidr`: traffic from outside it to a cluster IP is
    /// masqueraded (kube-proxy's `LocalDetector` by CIDR).
    pub cluster_cidr: (Ipv4Addr, u8),
    /// The Service CIDR: nftables mode drops traffic to unallocated cluster IPs in it.
    pub service_cidr: (Ipv4Addr, u8),
}

/// Joins Services with their EndpointSlices the way kube-proxy does: one
/// [`ProxiedPort`] per Service port, its endpoints the ready ones of slices
/// with a port of the same name and protocol. Services without a cluster
/// IP, and ports without endpoints, are left out (kube-proxy would write
/// REJECT rules for the latter, which no measured packet meets).
pub fn proxied_ports(services: &[ServiceInfo], slices: &[SliceInfo]) -> Vec<ProxiedPort> {
    let mut by_service: HashMap<&ServiceId, Vec<&SliceInfo>> = HashMap::new();
    for slice in slices {
        if let Some(service) = &slice.service {
            by_service.entry(service).or_default().push(slice);
        }
    }
    let mut out = Vec::new();
    for service in services {
        let Some(&cluster_ip) = service.cluster_ips.first() else {
            continue;
        };
        let slices = by_service.get(&service.id).map_or(&[][..], Vec::as_slice);
        for port in &service.ports {
            let mut endpoints: Vec<SocketAddrV4> = slices
                .iter()
                .filter_map(|s| {
                    let sp = s
                        .ports
                        .iter()
                        .find(|p| p.name == port.name && p.protocol == port.protocol)?;
                    Some(
                        s.endpoints
                            .iter()
                            .filter(|e| e.ready)
                            .map(move |e| SocketAddrV4::new(e.address, sp.port)),
                    )
                })
                .flatten()
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            // kube-proxy sorts endpoints by their "ip:port" string.
            endpoints.sort_by_key(|e| e.to_string());
            endpoints.dedup();
            let node_port = match service.type_ {
                ServiceType::ClusterIp => None,
                ServiceType::NodePort | ServiceType::LoadBalancer => port.node_port,
            };
            out.push(ProxiedPort {
                service: service.id.clone(),
                port_name: port.name.clone(),
                protocol: port.protocol,
                cluster_ip,
                port: port.port,
                node_port,
                endpoints,
            });
        }
    }
    out
}

/// [`proxied_ports`] of the Services and EndpointSlices in the manifest
/// directory `dir`, read as the agent reads it. Fails on the first problem
/// (a file or document that cannot be used, an invalid Service), naming it:
/// rules for comparison must describe exactly the Services gangplank serves.
pub fn proxied_ports_in_dir(dir: &Path) -> anyhow::Result<Vec<ProxiedPort>> {
    use crate::model::{service_from_k8s, slice_from_k8s};
    use crate::source::{load_dir, Object};
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (path, parsed) in load_dir(dir, &["Service", "EndpointSlice"])? {
        if let Some(err) = parsed.errors.first() {
            anyhow::bail!("{err}");
        }
        for object in parsed.objects {
            match object {
                Object::Service(svc) => services.push(
                    service_from_k8s(&svc)
                        .map_err(|e| anyhow::anyhow!("{}: Service: {e}", path.display()))?
                        .value,
                ),
                Object::EndpointSlice(slice) => slices.push(slice_from_k8s(&slice, None).value),
                _ => {}
            }
        }
    }
    Ok(proxied_ports(&services, &slices))
}

fn cidr((ip, len): (Ipv4Addr, u8)) -> String {
    format!("{ip}/{len}")
}

#[cfg(test)]
mod tests;
