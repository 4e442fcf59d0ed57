//! `status.loadBalancer.ingress` of Ingresses: which addresses to publish
//! and which Ingresses need a write. Pure: the binary's status writer
//! applies the plan through the API (only on the elected replica).
//!
//! - Served Ingresses get the published addresses: `--publish-address`,
//!   or the load-balancer addresses of `--publish-service`'s Service (as
//!   ingress-nginx does).
//! - An Ingress we no longer serve (it left the class, or the class is no
//!   longer ours) and that still shows exactly our addresses is cleared;
//!   one showing someone else's is left alone.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;

use crate::route::IngressRef;

/// One published address: an IP or a hostname (a cloud load balancer's
/// DNS name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbAddress {
    /// `ip`.
    Ip(String),
    /// `hostname`.
    Hostname(String),
}

impl LbAddress {
    /// `--publish-address` values: an IP address, or a hostname.
    pub fn parse(s: &str) -> LbAddress {
        if s.parse::<std::net::IpAddr>().is_ok() {
            LbAddress::Ip(s.to_owned())
        } else {
            LbAddress::Hostname(s.to_owned())
        }
    }

    /// The JSON of one `status.loadBalancer.ingress` entry.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            LbAddress::Ip(ip) => serde_json::json!({ "ip": ip }),
            LbAddress::Hostname(h) => serde_json::json!({ "hostname": h }),
        }
    }
}

/// What to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Publish {
    /// Nothing: Ingress status is not written.
    #[default]
    Nothing,
    /// These addresses.
    Addresses(Vec<LbAddress>),
    /// The load-balancer addresses of this Service (`namespace`, `name`).
    Service(String, String),
}

/// An Ingress as the status writer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressStatus {
    /// Which Ingress.
    pub ingress: IngressRef,
    /// Whether this controller serves it.
    pub served: bool,
    /// Its `status.loadBalancer.ingress` now, sorted.
    pub current: Vec<LbAddress>,
}

/// One write: set `ingress`'s addresses (empty: clear them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Which Ingress.
    pub ingress: IngressRef,
    /// Its new `status.loadBalancer.ingress`.
    pub addresses: Vec<LbAddress>,
}

/// The addresses of a Service's `status.loadBalancer.ingress`, sorted.
pub fn service_addresses(service: &Service) -> Vec<LbAddress> {
    let entries = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    addresses(
        entries
            .into_iter()
            .flatten()
            .map(|i| (i.ip.as_ref(), i.hostname.as_ref())),
    )
}

/// An Ingress's current `status.loadBalancer.ingress`, sorted.
pub fn ingress_addresses(ingress: &Ingress) -> Vec<LbAddress> {
    let entries = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    addresses(
        entries
            .into_iter()
            .flatten()
            .map(|i| (i.ip.as_ref(), i.hostname.as_ref())),
    )
}

/// `(ip, hostname)` entries as sorted addresses (the IP when both are set).
fn addresses<'a>(
    entries: impl Iterator<Item = (Option<&'a String>, Option<&'a String>)>,
) -> Vec<LbAddress> {
    let mut out: Vec<LbAddress> = entries
        .filter_map(|(ip, hostname)| match (ip, hostname) {
            (Some(ip), _) => Some(LbAddress::Ip(ip.clone())),
            (None, Some(h)) => Some(LbAddress::Hostname(h.clone())),
            (None, None) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The writes that bring `ingresses` to publishing `addresses`.
pub fn plan(ingresses: &[IngressStatus], addresses: &[LbAddress]) -> Vec<StatusUpdate> {
    let ours: BTreeSet<&LbAddress> = addresses.iter().collect();
    let mut wanted: Vec<LbAddress> = ours.iter().map(|a| (*a).clone()).collect();
    wanted.sort();
    ingresses
        .iter()
        .filter_map(|i| {
            let target = if i.served {
                wanted.clone()
            } else if !i.current.is_empty() && i.current == wanted {
                Vec::new()
            } else {
                return None;
            };
            (i.current != target).then(|| StatusUpdate {
                ingress: i.ingress.clone(),
                addresses: target,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, served: bool, current: &[&str]) -> IngressStatus {
        IngressStatus {
            ingress: IngressRef::new("web", name),
            served,
            current: current.iter().map(|a| LbAddress::parse(a)).collect(),
        }
    }

    #[test]
    fn served_ingresses_get_the_addresses_and_left_ones_are_cleared() {
        let ours = [
            LbAddress::parse("192.0.2.10"),
            LbAddress::parse("lb.example.com"),
        ];
        let ingresses = [
            status("new", true, &[]),
            status("done", true, &["192.0.2.10", "lb.example.com"]),
            status("stale", true, &["192.0.2.99"]),
            status("left", false, &["192.0.2.10", "lb.example.com"]),
            status("someone-elses", false, &["198.51.100.1"]),
            status("never-ours", false, &[]),
        ];
        let names: Vec<(String, usize)> = plan(&ingresses, &ours)
            .into_iter()
            .map(|u| (u.ingress.name.to_string(), u.addresses.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("new".to_owned(), 2),
                ("stale".to_owned(), 2),
                ("left".to_owned(), 0)
            ]
        );
    }

    #[test]
    fn addresses_are_ips_or_hostnames() {
        assert_eq!(
            LbAddress::parse("2001:db8::1"),
            LbAddress::Ip("2001:db8::1".into())
        );
        assert_eq!(
            LbAddress::parse("lb.example.com").to_json(),
            serde_json::json!({"hostname": "lb.example.com"})
        );
    }
}
