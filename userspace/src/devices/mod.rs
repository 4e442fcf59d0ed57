//! The network devices the agent serves external traffic on (`--devices`),
//! the node addresses they hold, and notifications when those change.
//!
//! Everything is read over rtnetlink in the agent's own network namespace,
//! never from `/sys` or `/proc/net`: a process that entered a namespace with
//! `nsenter --net` (as the simulated nodes' agents do) still sees the host's
//! `/sys/class/net`, so sysfs would describe the wrong machine.
//!
//! The selection rules are pure functions over an inventory of links,
//! addresses and routes, so they are unit-tested without a kernel; the
//! `netlink` submodule fills the inventory and runs the [`AddressWatcher`].

mod netlink;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

pub use netlink::AddressWatcher;

/// Device discovery errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink socket operation failed.
    #[error("rtnetlink: {op} failed: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("rtnetlink: the kernel refused {request}: {source}")]
    Kernel {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A reply was malformed (truncated, or not what was asked for).
    #[error("rtnetlink: bad reply to {request}: {reason}")]
    Decode {
        request: &'static str,
        reason: String,
    },
    /// `--devices` names a device this namespace does not have.
    #[error(
        "--devices: no device named {name:?} in this network namespace (devices here: {known})"
    )]
    UnknownDevice { name: String, known: String },
    /// `--devices` names a device whose frames are not Ethernet.
    #[error(
        "--devices: {name} is not an Ethernet device (the load balancer parses Ethernet frames)"
    )]
    NotEthernet { name: String },
    /// `--devices` was given without any name.
    #[error("--devices is empty: name at least one device, or leave the flag out to detect them")]
    EmptyDeviceList,
    /// Auto-detection found no device for external traffic.
    #[error(
        "no device qualifies for external (NodePort/LoadBalancer/ExternalIP) traffic; looked at: \
         {looked_at}. A device qualifies when it is up, holds a global IPv4 address and carries \
         a route, and is not loopback, a bridge or enslaved to one. Name the devices with \
         --devices IFACE[,IFACE...]"
    )]
    NoDevices { looked_at: String },
    /// The watcher thread could not be started.
    #[error("starting the address watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A device the agent attaches to, with the node addresses it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    pub name: String,
    pub ifindex: u32,
    /// Global-scope IPv4 addresses, primary addresses first, each group in
    /// the kernel's order; the first one is the SNAT source for the device.
    pub addresses: Vec<Ipv4Addr>,
    /// The rtnetlink link kind (`veth`, `vlan`, `bond`...); none for a
    /// physical NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl NetDevice {
    /// The device's primary IPv4 address, if it has one.
    pub fn primary(&self) -> Option<Ipv4Addr> {
        self.addresses.first().copied()
    }
}

/// Default device selection (no `--devices`): the interfaces that are up,
/// hold a global-scope IPv4 address and carry an IPv4 route in the main
/// table, minus loopback, bridges and bridge/bond ports. Sorted by ifindex.
///
/// Fails, listing every device looked at and why it was left out, when none
/// qualifies.
pub fn detect() -> Result<Vec<NetDevice>> {
    select_auto(&netlink::inventory()?)
}

/// Explicit selection (`--devices a,b`): every name must exist in this
/// namespace. A device without an IPv4 address is accepted with a warning:
/// NodePort answers on none of its addresses until one appears (the
/// [`AddressWatcher`] tells when). Sorted by ifindex, duplicates dropped.
pub fn resolve(names: &[String]) -> Result<Vec<NetDevice>> {
    select_named(&netlink::inventory()?, names)
}

/// `--devices` if given ([`resolve`]), else [`detect`].
pub fn select(names: Option<&[String]>) -> Result<Vec<NetDevice>> {
    match names {
        Some(names) => resolve(names),
        None => detect(),
    }
}

/// How long a burst of notifications (an address added brings an
/// RTM_NEWADDR and often an RTM_NEWLINK) may take to settle before
/// the devices are read again once for all of it.
const SETTLE: Duration = Duration::from_millis(20);

/// Blocks following `devices`: after each (coalesced) notification from an
/// [`AddressWatcher`] on `changes`, re-reads them and calls `on_change` if
/// anything changed. Returns when the watcher is gone or `on_change` returns
/// false.
pub fn follow(
    devices: &mut [NetDevice],
    changes: &mpsc::Receiver<()>,
    mut on_change: impl FnMut(&[NetDevice]) -> bool,
) -> Result<()> {
    while changes.recv().is_ok() {
        std::thread::sleep(SETTLE);
        while changes.try_recv().is_ok() {}
        if refresh(devices)? && !on_change(devices) {
            break;
        }
    }
    Ok(())
}

/// Re-reads the addresses of `devices` (after the [`AddressWatcher`]
/// reported a change) and returns whether anything changed.
///
/// Devices are looked up by name: one that was deleted and re-created gets
/// its new ifindex (the caller must then attach its programs again), one
/// that is gone keeps its old ifindex with no address, so NodePort stops
/// answering on what it used to hold. Devices are never added or dropped
/// here: the set chosen at start-up stays.
pub fn refresh(devices: &mut [NetDevice]) -> Result<bool> {
    Ok(refresh_from(&netlink::inventory()?, devices))
}

// ---------------------------------------------------------------------------
// The inventory and the pure selection rules
// ---------------------------------------------------------------------------

/// One network interface, as far as selection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    /// IFF_UP: administratively up.
    pub up: bool,
    /// IFF_LOOPBACK.
    pub loopback: bool,
    /// ARPHRD_ETHER: frames start with an Ethernet header, which is what
    /// the tc/XDP programs parse (tunnels such as ipip or WireGuard carry
    /// bare IP packets).
    pub ethernet: bool,
    /// IFLA_INFO_KIND ("bridge", "veth", "bond", ...); None for physical NICs.
    pub kind: Option<String>,
    /// IFLA_MASTER: the bridge, bond or VRF this device is a port of.
    pub controller: Option<u32>,
}

/// One IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addr {
    pub index: u32,
    pub address: Ipv4Addr,
    /// RT_SCOPE_UNIVERSE: reachable from other hosts (not 127/8, not
    /// link-scoped).
    pub global: bool,
    /// IFA_F_SECONDARY: an extra address in a subnet the device already has
    /// a primary address in.
    pub secondary: bool,
}

/// A snapshot of the namespace's links, IPv4 addresses and main-table IPv4
/// routes (only their output devices matter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Inventory {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    /// Output interfaces of IPv4 routes in the main table (multipath
    /// routes contribute every next hop's device).
    pub route_oifs: BTreeSet<u32>,
}

/// Why auto-detection left a device out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Skip {
    Down,
    Loopback,
    /// Not an Ethernet device (ipip, WireGuard, ...).
    NotEthernet,
    /// Cilium leaves bridges out too: they front pods ("very unlikely to be
    /// used for K8s purposes"); the uplink is what external traffic enters.
    Bridge,
    /// A port of a bridge or bond: traffic is seen on the controller device.
    Enslaved(String),
    NoGlobalAddress,
    NoRoute,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Down => f.write_str("down"),
            Skip::Loopback => f.write_str("loopback"),
            Skip::NotEthernet => f.write_str("not Ethernet"),
            Skip::Bridge => f.write_str("bridge"),
            Skip::Enslaved(controller) => write!(f, "port of {controller}"),
            Skip::NoGlobalAddress => f.write_str("no global IPv4 address"),
            Skip::NoRoute => f.write_str("no IPv4 route"),
        }
    }
}

impl Inventory {
    /// Global IPv4 addresses of device `index`, primaries first.
    fn global_addresses(&self, index: u32) -> Vec<Ipv4Addr> {
        let mine = || {
            self.addrs
                .iter()
                .filter(move |a| a.index == index && a.global)
        };
        // A stable two-pass split keeps the kernel's order within each group,
        // so the first primary (the source the kernel itself prefers for the
        // subnet it was added first for) stays first.
        let mut out: Vec<Ipv4Addr> = mine().filter(|a| !a.secondary).map(|a| a.address).collect();
        for a in mine().filter(|a| a.secondary) {
            if !out.contains(&a.address) {
                out.push(a.address);
            }
        }
        out
    }

    fn link_name(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("ifindex {index}"))
    }

    /// Why `link` is not an auto-detected device, or None if it is one.
    fn skip_reason(&self, link: &Link) -> Option<Skip> {
        if link.loopback {
            return Some(Skip::Loopback);
        }
        if !link.ethernet {
            return Some(Skip::NotEthernet);
        }
        if matches!(link.kind.as_deref(), Some("bridge" | "openvswitch")) {
            return Some(Skip::Bridge);
        }
        if let Some(controller) = link.controller {
            return Some(Skip::Enslaved(self.link_name(controller)));
        }
        if !link.up {
            return Some(Skip::Down);
        }
        // Pod-side veths hold no address in the node's namespace, so this
        // also leaves them out; a veth that does hold a global address and a
        // route is an uplink (as in the simulated cluster) and qualifies.
        if !self.addrs.iter().any(|a| a.index == link.index && a.global) {
            return Some(Skip::NoGlobalAddress);
        }
        if !self.route_oifs.contains(&link.index) {
            return Some(Skip::NoRoute);
        }
        None
    }

    fn device(&self, link: &Link) -> NetDevice {
        NetDevice {
            name: link.name.clone(),
            ifindex: link.index,
            addresses: self.global_addresses(link.index),
            kind: link.kind.clone(),
        }
    }
}

pub(crate) fn select_auto(inv: &Inventory) -> Result<Vec<NetDevice>> {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for link in &inv.links {
        match inv.skip_reason(link) {
            None => chosen.push(inv.device(link)),
            Some(reason) => {
                debug!(device = %link.name, ifindex = link.index, %reason, "not an external device");
                skipped.push(format!("{} ({reason})", link.name));
            }
        }
    }
    if chosen.is_empty() {
        return Err(Error::NoDevices {
            looked_at: if skipped.is_empty() {
                "no device at all".into()
            } else {
                skipped.join(", ")
            },
        });
    }
    chosen.sort_by_key(|d| d.ifindex);
    Ok(chosen)
}

pub(crate) fn select_named(inv: &Inventory, names: &[String]) -> Result<Vec<NetDevice>> {
    let mut seen = HashSet::new();
    let mut chosen = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !seen.insert(name) {
            continue;
        }
        let Some(link) = inv.links.iter().find(|l| l.name == name) else {
            let mut known: Vec<&str> = inv.links.iter().map(|l| l.name.as_str()).collect();
            known.sort_unstable();
            return Err(Error::UnknownDevice {
                name: name.to_string(),
                known: known.join(", "),
            });
        };
        if !link.ethernet {
            return Err(Error::NotEthernet {
                name: name.to_string(),
            });
        }
        let device = inv.device(link);
        if device.addresses.is_empty() {
            warn!(
                device = %device.name,
                "device has no global IPv4 address: NodePort answers on none of its addresses until one is added"
            );
        }
        if !link.up {
            warn!(device = %device.name, "device is down");
        }
        chosen.push(device);
    }
    if chosen.is_empty() {
        return Err(Error::EmptyDeviceList);
    }
    chosen.sort_by_key(|d| d.ifindex);
    Ok(chosen)
}

pub(crate) fn refresh_from(inv: &Inventory, devices: &mut [NetDevice]) -> bool {
    let mut changed = false;
    for device in devices.iter_mut() {
        let (ifindex, addresses) = match inv.links.iter().find(|l| l.name == device.name) {
            Some(link) => (link.index, inv.global_addresses(link.index)),
            None => {
                if !device.addresses.is_empty() {
                    warn!(device = %device.name, "device is gone: its addresses are no longer node addresses");
                }
                (device.ifindex, Vec::new())
            }
        };
        if ifindex != device.ifindex {
            warn!(
                device = %device.name,
                old = device.ifindex,
                new = ifindex,
                "device was re-created with a new ifindex"
            );
        }
        if ifindex != device.ifindex || addresses != device.addresses {
            device.ifindex = ifindex;
            device.addresses = addresses;
            changed = true;
        }
    }
    if changed {
        devices.sort_by_key(|d| d.ifindex);
    }
    changed
}

/// A plain-text table of `devices` for `gangplank devices`.
pub fn table(devices: &[NetDevice]) -> String {
    let mut rows = vec![(
        "DEVICE".to_string(),
        "IFINDEX".to_string(),
        "ADDRESSES".to_string(),
    )];
    for d in devices {
        let addrs: Vec<String> = d.addresses.iter().map(|a| a.to_string()).collect();
        rows.push((
            d.name.clone(),
            d.ifindex.to_string(),
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(",")
            },
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, index, addrs) in rows {
        out.push_str(&format!("{name:<w0$}  {index:<w1$}  {addrs}\n"));
    }
    out
}
