//! The node's addresses and devices as the tc/XDP datapath sees them:
//! `GP_NODE_ADDRS` (every address NodePort answers on) and `GP_DEVICES`
//! (the devices the programs run on, with their SNAT source address).
//!
//! Both maps are small, so each sync reads them back whole and writes the
//! difference: whatever a previous agent pinned is reconciled too.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use gangplank_common::{Device, NodeAddr};

use super::{Error, Result};
use crate::devices::NetDevice;

/// Names of the maps (the statics in the eBPF object).
pub const NODE_ADDRS: &str = "GP_NODE_ADDRS";
pub const DEVICES: &str = "GP_DEVICES";

/// What a [`sync_node_maps`] changed, for one log line. Addresses and
/// ifindexes are sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMapChanges {
    /// New node addresses: NodePort now answers on them.
    pub addresses_added: Vec<Ipv4Addr>,
    /// Addresses NodePort no longer answers on.
    pub addresses_removed: Vec<Ipv4Addr>,
    /// Addresses still there but now on another device.
    pub addresses_moved: Vec<Ipv4Addr>,
    /// Devices (ifindex) newly in `GP_DEVICES`.
    pub devices_added: Vec<u32>,
    /// Devices (ifindex) removed from `GP_DEVICES`.
    pub devices_removed: Vec<u32>,
    /// Devices (ifindex) whose primary (SNAT source) address changed.
    pub devices_updated: Vec<u32>,
}

impl NodeMapChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// "node addresses: +198.18.0.10 -198.18.0.55; devices: +2; new primary
/// address on 3" (ifindexes); "no change" when empty.
impl fmt::Display for NodeMapChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(sign: &str, items: &[T]) -> Vec<String> {
            items.iter().map(|i| format!("{sign}{i}")).collect()
        }
        let mut parts = Vec::new();
        let addrs: Vec<String> = list("+", &self.addresses_added)
            .into_iter()
            .chain(list("-", &self.addresses_removed))
            .chain(list("~", &self.addresses_moved))
            .collect();
        if !addrs.is_empty() {
            parts.push(format!("node addresses: {}", addrs.join(" ")));
        }
        let devices: Vec<String> = list("+", &self.devices_added)
            .into_iter()
            .chain(list("-", &self.devices_removed))
            .collect();
        if !devices.is_empty() {
            parts.push(format!("devices (ifindex): {}", devices.join(" ")));
        }
        if !self.devices_updated.is_empty() {
            parts.push(format!(
                "new primary address on ifindex {}",
                list("", &self.devices_updated).join(", ")
            ));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Map writes that turn the current contents into the desired ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NodeMapPlan {
    pub put_devices: Vec<(u32, Device)>,
    pub put_addrs: Vec<(u32, NodeAddr)>,
    pub delete_addrs: Vec<u32>,
    pub delete_devices: Vec<u32>,
}

/// Map key of an address: the IPv4 address in network byte order.
fn key(address: Ipv4Addr) -> u32 {
    u32::from(address).to_be()
}

fn address_of(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(key))
}

/// Computes the writes and the change report (pure).
///
/// An address held by two devices is keyed once, by the first device in
/// `current` (the lowest ifindex, as `devices` sorts them): `NodeAddr` is
/// informational, so which one wins only has to be stable.
pub(crate) fn plan(
    existing_addrs: &HashMap<u32, NodeAddr>,
    existing_devices: &HashMap<u32, Device>,
    current: &[NetDevice],
) -> (NodeMapPlan, NodeMapChanges) {
    let mut want_devices: BTreeMap<u32, Device> = BTreeMap::new();
    let mut want_addrs: BTreeMap<u32, NodeAddr> = BTreeMap::new();
    for device in current {
        want_devices.entry(device.ifindex).or_insert(Device {
            address: device.primary().map(key).unwrap_or(0),
        });
        for address in &device.addresses {
            want_addrs.entry(key(*address)).or_insert(NodeAddr {
                ifindex: device.ifindex,
            });
        }
    }

    let mut plan = NodeMapPlan::default();
    let mut changes = NodeMapChanges::default();
    for (&k, want) in &want_devices {
        match existing_devices.get(&k) {
            Some(have) if have == want => {}
            Some(_) => {
                plan.put_devices.push((k, *want));
                changes.devices_updated.push(k);
            }
            None => {
                plan.put_devices.push((k, *want));
                changes.devices_added.push(k);
            }
        }
    }
    for (&k, want) in &want_addrs {
        match existing_addrs.get(&k) {
            Some(have) if have == want => {}
            Some(_) => {
                plan.put_addrs.push((k, *want));
                changes.addresses_moved.push(address_of(k));
            }
            None => {
                plan.put_addrs.push((k, *want));
                changes.addresses_added.push(address_of(k));
            }
        }
    }
    for &k in existing_addrs.keys() {
        if !want_addrs.contains_key(&k) {
            plan.delete_addrs.push(k);
            changes.addresses_removed.push(address_of(k));
        }
    }
    for &k in existing_devices.keys() {
        if !want_devices.contains_key(&k) {
            plan.delete_devices.push(k);
            changes.devices_removed.push(k);
        }
    }
    plan.delete_addrs.sort_unstable();
    plan.delete_devices.sort_unstable();
    changes.addresses_added.sort_unstable();
    changes.addresses_removed.sort_unstable();
    changes.addresses_moved.sort_unstable();
    changes.devices_removed.sort_unstable();
    (plan, changes)
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, op, source }
}

/// Reads a whole map (both are a few entries).
fn read<V: aya::Pod>(
    name: &'static str,
    map: &BpfHashMap<MapData, u32, V>,
) -> Result<HashMap<u32, V>> {
    let mut out = HashMap::new();
    for entry in map.iter() {
        match entry {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            // Deleted between get_next_key and lookup (another writer): gone.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name, "iterate")(e)),
        }
    }
    Ok(out)
}

/// Deleting what is already gone is not an error: the goal is reached.
fn remove<V: aya::Pod>(
    name: &'static str,
    map: &mut BpfHashMap<MapData, u32, V>,
    key: u32,
) -> Result<()> {
    match map.remove(&key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(name, "delete")(e)),
    }
}

/// Makes `GP_NODE_ADDRS` and `GP_DEVICES` describe `current` exactly:
/// inserts and updates first, deletions last, so an address that moves
/// between devices never leaves NodePort unanswered in between, and every
/// address's device is in `GP_DEVICES` by the time the address is.
///
/// A map that is full (more than 256 addresses or 64 devices) fails here
/// with the map's name; entries written before the failure stay and the next
/// sync completes the job.
pub fn sync_node_maps(
    node_addrs: &mut BpfHashMap<MapData, u32, NodeAddr>,
    devices: &mut BpfHashMap<MapData, u32, Device>,
    current: &[NetDevice],
) -> Result<NodeMapChanges> {
    let existing_addrs = read(NODE_ADDRS, node_addrs)?;
    let existing_devices = read(DEVICES, devices)?;
    let (plan, changes) = plan(&existing_addrs, &existing_devices, current);
    for (k, v) in &plan.put_devices {
        devices
            .insert(k, v, 0)
            .map_err(map_err(DEVICES, "update"))?;
    }
    for (k, v) in &plan.put_addrs {
        node_addrs
            .insert(k, v, 0)
            .map_err(map_err(NODE_ADDRS, "update"))?;
    }
    for k in &plan.delete_addrs {
        remove(NODE_ADDRS, node_addrs, *k)?;
    }
    for k in &plan.delete_devices {
        remove(DEVICES, devices, *k)?;
    }
    Ok(changes)
}

/// Both maps, taken from the loaded object or opened from their pins.
pub struct NodeMaps {
    pub node_addrs: BpfHashMap<MapData, u32, NodeAddr>,
    pub devices: BpfHashMap<MapData, u32, Device>,
}

/// What the maps hold, decoded (for `status` and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMapsContents {
    /// Node address → ifindex of the device holding it.
    pub node_addrs: BTreeMap<Ipv4Addr, u32>,
    /// ifindex → primary address (None: the device has no address).
    pub devices: BTreeMap<u32, Option<Ipv4Addr>>,
}

fn typed<V: aya::Pod>(
    name: &'static str,
    map: Option<aya::maps::Map>,
) -> Result<BpfHashMap<MapData, u32, V>> {
    let map = map.ok_or(Error::MissingMap(name))?;
    BpfHashMap::try_from(map).map_err(map_err(name, "open"))
}

impl NodeMaps {
    /// Takes both maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        Ok(Self {
            node_addrs: typed(NODE_ADDRS, ebpf.take_map(NODE_ADDRS))?,
            devices: typed(DEVICES, ebpf.take_map(DEVICES))?,
        })
    }

    /// Opens both maps from their pins in `dir` (no program is loaded).
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        fn open<V: aya::Pod>(
            dir: &Path,
            name: &'static str,
        ) -> Result<BpfHashMap<MapData, u32, V>> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| Error::OpenPin {
                path: path.clone(),
                source,
            })?;
            let map = aya::maps::Map::from_map_data(data).map_err(map_err(name, "open"))?;
            typed(name, Some(map))
        }
        Ok(Self {
            node_addrs: open(dir, NODE_ADDRS)?,
            devices: open(dir, DEVICES)?,
        })
    }

    /// [`sync_node_maps`] on both maps.
    pub fn sync(&mut self, current: &[NetDevice]) -> Result<NodeMapChanges> {
        sync_node_maps(&mut self.node_addrs, &mut self.devices, current)
    }

    /// Reads both maps back.
    pub fn contents(&self) -> Result<NodeMapsContents> {
        Ok(NodeMapsContents {
            node_addrs: read(NODE_ADDRS, &self.node_addrs)?
                .into_iter()
                .map(|(k, v)| (address_of(k), v.ifindex))
                .collect(),
            devices: read(DEVICES, &self.devices)?
                .into_iter()
                .map(|(k, v)| (k, (v.address != 0).then(|| address_of(v.address))))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, ifindex: u32, addresses: &[[u8; 4]]) -> NetDevice {
        NetDevice {
            name: name.into(),
            ifindex,
            addresses: addresses.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            kind: None,
        }
    }

    fn k(a: [u8; 4]) -> u32 {
        key(a.into())
    }

    /// Applies a plan to in-memory maps, as `sync_node_maps` does to BPF maps.
    fn apply(
        addrs: &mut HashMap<u32, NodeAddr>,
        devices: &mut HashMap<u32, Device>,
        current: &[NetDevice],
    ) -> NodeMapChanges {
        let (plan, changes) = plan(addrs, devices, current);
        devices.extend(plan.put_devices);
        addrs.extend(plan.put_addrs);
        for key in plan.delete_addrs {
            addrs.remove(&key);
        }
        for key in plan.delete_devices {
            devices.remove(&key);
        }
        changes
    }

    #[test]
    fn keys_are_addresses_in_network_byte_order() {
        assert_eq!(k([198, 18, 0, 10]).to_ne_bytes(), [198, 18, 0, 10]);
        assert_eq!(
            address_of(k([198, 18, 0, 10])),
            Ipv4Addr::new(198, 18, 0, 10)
        );
    }

    #[test]
    fn first_sync_writes_every_address_and_device() {
        let (mut addrs, mut devices) = (HashMap::new(), HashMap::new());
        let current = [dev("eth0", 2, &[[198, 18, 0, 10], [198, 18, 0, 210]])];
        let changes = apply(&mut addrs, &mut devices, &current);
        assert_eq!(
            addrs,
            HashMap::from([
                (k([198, 18, 0, 10]), NodeAddr { ifindex: 2 }),
                (k([198, 18, 0, 210]), NodeAddr { ifindex: 2 }),
            ])
        );
        assert_eq!(
            devices,
            HashMap::from([(
                2,
                Device {
                    address: k([198, 18, 0, 10])
                }
            )])
        );
        assert_eq!(
            changes.to_string(),
            "node addresses: +198.18.0.10 +198.18.0.210; devices (ifindex): +2"
        );

        // Nothing changed: nothing written.
        let (plan, changes) = plan(&addrs, &devices, &current);
        assert_eq!(plan, NodeMapPlan::default());
        assert!(changes.is_empty());
        assert_eq!(changes.to_string(), "no change");
    }

    #[test]
    fn stale_pinned_entries_are_removed_and_changes_reported() {
        let mut addrs = HashMap::from([
            (k([198, 18, 0, 10]), NodeAddr { ifindex: 2 }),
            (k([198, 18, 0, 55]), NodeAddr { ifindex: 2 }),
            (k([10, 0, 0, 1]), NodeAddr { ifindex: 7 }),
        ]);
        let mut devices = HashMap::from([
            (
                2,
                Device {
                    address: k([198, 18, 0, 55]),
                },
            ),
            (
                7,
                Device {
                    address: k([10, 0, 0, 1]),
                },
            ),
        ]);
        let current = [dev("eth0", 2, &[[198, 18, 0, 10], [198, 18, 0, 210]])];
        let changes = apply(&mut addrs, &mut devices, &current);
        assert_eq!(
            changes,
            NodeMapChanges {
                addresses_added: vec![Ipv4Addr::new(198, 18, 0, 210)],
                addresses_removed: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(198, 18, 0, 55)],
                addresses_moved: vec![],
                devices_added: vec![],
                devices_removed: vec![7],
                devices_updated: vec![2],
            }
        );
        assert_eq!(
            changes.to_string(),
            "node addresses: +198.18.0.210 -10.0.0.1 -198.18.0.55; devices (ifindex): -7; \
             new primary address on ifindex 2"
        );
        assert_eq!(addrs.len(), 2);
        assert_eq!(
            devices,
            HashMap::from([(
                2,
                Device {
                    address: k([198, 18, 0, 10])
                }
            )])
        );
    }

    #[test]
    fn a_device_without_an_address_is_a_device_with_address_zero() {
        let (mut addrs, mut devices) = (HashMap::new(), HashMap::new());
        apply(&mut addrs, &mut devices, &[dev("eth1", 5, &[])]);
        assert!(addrs.is_empty());
        assert_eq!(devices, HashMap::from([(5, Device { address: 0 })]));
    }

    #[test]
    fn an_address_on_two_devices_is_keyed_by_the_first_and_moves_are_reported() {
        let (mut addrs, mut devices) = (HashMap::new(), HashMap::new());
        let both = [
            dev("eth0", 2, &[[10, 0, 0, 1]]),
            dev("eth1", 3, &[[10, 0, 0, 1], [10, 0, 1, 1]]),
        ];
        apply(&mut addrs, &mut devices, &both);
        assert_eq!(addrs[&k([10, 0, 0, 1])], NodeAddr { ifindex: 2 });

        let moved = [
            dev("eth0", 2, &[]),
            dev("eth1", 3, &[[10, 0, 0, 1], [10, 0, 1, 1]]),
        ];
        let changes = apply(&mut addrs, &mut devices, &moved);
        assert_eq!(changes.addresses_moved, [Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(changes.devices_updated, [2]);
        assert_eq!(addrs[&k([10, 0, 0, 1])], NodeAddr { ifindex: 3 });
        assert_eq!(devices[&2], Device { address: 0 });
    }

    #[test]
    fn a_re_created_device_replaces_the_old_one() {
        let addrs = HashMap::from([(k([10, 0, 0, 1]), NodeAddr { ifindex: 2 })]);
        let devices = HashMap::from([(
            2,
            Device {
                address: k([10, 0, 0, 1]),
            },
        )]);
        let (plan, _) = plan(&addrs, &devices, &[dev("eth0", 9, &[[10, 0, 0, 2]])]);
        assert_eq!(
            plan,
            NodeMapPlan {
                put_devices: vec![(
                    9,
                    Device {
                        address: k([10, 0, 0, 2])
                    }
                )],
                put_addrs: vec![(k([10, 0, 0, 2]), NodeAddr { ifindex: 9 })],
                delete_addrs: vec![k([10, 0, 0, 1])],
                delete_devices: vec![2],
            }
        );
    }
}
