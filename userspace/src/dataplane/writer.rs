//! Applies desired frontends to the maps with the fewest writes, in an order
//! that never lets the datapath see a half-written service:
//!
//! 1. new backends,
//! 2. backend slots `1..=count`,
//! 3. the slot-0 master entry (count, reverse-NAT id, affinity),
//! 4. slots beyond the new count,
//! 5. backends nobody points at any more.
//!
//! A connect() racing with an update therefore sees either the old or the new
//! master entry, and every slot below either count holds a live backend.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use gangplank_common::{
    Backend, RevNat, ServiceKey, ServiceName, ServiceValue, BACKEND_FLAG_TERMINATING, PROTO_TCP,
    PROTO_UDP, SERVICE_NAME_LEN,
};
use tracing::warn;

use super::ids::IdAllocator;
use super::maps::{LbMaps, Snapshot};
use super::{Error, Result};
use crate::model::{BackendAddr, Frontend, FrontendKey, Protocol};

/// Identity of a backend map entry. Frontends that point at the same
/// endpoint share one entry (and one id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BackendKey {
    address: u32,
    port: u16,
    proto: u8,
    flags: u8,
}

#[derive(Debug)]
struct BackendEntry {
    id: u32,
    refs: u32,
}

/// What is in the maps for one frontend.
#[derive(Debug, Clone, PartialEq)]
struct Programmed {
    rev_nat_id: u16,
    /// Backend id of slot `i + 1`.
    slots: Vec<u32>,
    affinity_timeout: u32,
    name: ServiceName,
}

/// Keeps the BPF maps equal to the desired frontends.
pub struct Writer<M> {
    maps: M,
    frontends: HashMap<ServiceKey, Programmed>,
    backends: HashMap<BackendKey, BackendEntry>,
    backend_by_id: HashMap<u32, BackendKey>,
    backend_ids: IdAllocator,
    rev_nat_ids: IdAllocator,
    /// Entries found in pinned maps that belong to nothing; removed by
    /// [`Writer::sync`] once the desired state is known.
    orphans: Orphans,
}

#[derive(Debug, Default)]
struct Orphans {
    slots: Vec<ServiceKey>,
    rev_nats: Vec<u16>,
}

/// Map entries touched by one call, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub upserted: usize,
    pub deleted: usize,
    pub failed: usize,
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// Map-side key of a frontend's master entry (addresses and ports in
/// network byte order, as the socket hooks see them).
pub fn service_key(key: &FrontendKey, slot: u16) -> ServiceKey {
    ServiceKey::new(
        u32::from(key.address).to_be(),
        key.port.to_be(),
        proto_number(key.protocol),
        slot,
    )
}

fn backend_key(addr: &BackendAddr, proto: u8) -> BackendKey {
    BackendKey {
        address: u32::from(addr.address).to_be(),
        port: addr.port.to_be(),
        proto,
        flags: if addr.terminating {
            BACKEND_FLAG_TERMINATING
        } else {
            0
        },
    }
}

fn service_name(fe: &Frontend) -> ServiceName {
    let text = if fe.port_name.is_empty() {
        format!("{}", fe.service)
    } else {
        format!("{}:{}", fe.service, fe.port_name)
    };
    let mut name = [0u8; SERVICE_NAME_LEN];
    let bytes = text.as_bytes();
    let len = bytes.len().min(SERVICE_NAME_LEN);
    name[..len].copy_from_slice(&bytes[..len]);
    ServiceName { name }
}

/// Slot assignment that keeps every surviving backend in its slot, so one
/// endpoint change costs one or two writes instead of rewriting the table.
fn assign_slots(old: &[u32], desired: &[u32]) -> Vec<u32> {
    let wanted: HashSet<u32> = desired.iter().copied().collect();
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| wanted.contains(id).then_some(*id))
        .collect();
    let kept: HashSet<u32> = slots.iter().flatten().copied().collect();
    let mut additions = desired.iter().copied().filter(|id| !kept.contains(id));
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = additions.next();
    }
    slots.extend(additions.map(Some));
    // Close remaining holes with entries from the tail.
    while let Some(hole) = slots.iter().position(Option::is_none) {
        match slots.pop() {
            Some(Some(last)) if hole < slots.len() => slots[hole] = Some(last),
            _ => {}
        }
    }
    slots.into_iter().flatten().collect()
}

impl<M: LbMaps> Writer<M> {
    /// Start from whatever the (pinned) maps hold, so a restarted agent
    /// reuses ids and only writes what differs.
    pub fn new(maps: M) -> Result<Self> {
        let snapshot = maps.snapshot()?;
        let mut writer = Self {
            maps,
            frontends: HashMap::new(),
            backends: HashMap::new(),
            backend_by_id: HashMap::new(),
            backend_ids: IdAllocator::new(1, u32::MAX),
            rev_nat_ids: IdAllocator::new(1, u16::MAX as u32),
            orphans: Orphans::default(),
        };
        writer.adopt(snapshot);
        Ok(writer)
    }

    /// Rebuild bookkeeping from map contents.
    fn adopt(&mut self, snap: Snapshot) {
        for (id, backend) in &snap.backends {
            let key = BackendKey {
                address: backend.address,
                port: backend.port,
                proto: backend.proto,
                flags: backend.flags,
            };
            if self.backends.contains_key(&key) {
                // A duplicate can only come from a foreign writer; let the
                // refcount sweep below remove it.
                continue;
            }
            self.backend_ids.reserve(*id);
            self.backends.insert(key, BackendEntry { id: *id, refs: 0 });
            self.backend_by_id.insert(*id, key);
        }
        let mut used_rev_nats = HashSet::new();
        for (key, value) in &snap.services {
            if key.backend_slot != 0 {
                continue;
            }
            let mut slots = Vec::with_capacity(value.count as usize);
            for slot in 1..=value.count {
                let slot_key = ServiceKey {
                    backend_slot: slot,
                    ..*key
                };
                match snap.services.get(&slot_key) {
                    Some(v) if self.backend_by_id.contains_key(&v.backend_id) => {
                        slots.push(v.backend_id)
                    }
                    // A hole in a pinned service: the next sync rewrites it.
                    _ => slots.push(0),
                }
            }
            for id in slots.iter().filter(|id| **id != 0) {
                if let Some(bk) = self.backend_by_id.get(id) {
                    if let Some(entry) = self.backends.get_mut(bk) {
                        entry.refs += 1;
                    }
                }
            }
            used_rev_nats.insert(value.rev_nat_id);
            self.rev_nat_ids.reserve(value.rev_nat_id as u32);
            self.frontends.insert(
                *key,
                Programmed {
                    rev_nat_id: value.rev_nat_id,
                    slots,
                    affinity_timeout: value.affinity_timeout,
                    name: snap
                        .names
                        .get(&value.rev_nat_id)
                        .copied()
                        .unwrap_or(ServiceName {
                            name: [0; SERVICE_NAME_LEN],
                        }),
                },
            );
        }
        for key in snap.services.keys() {
            if key.backend_slot == 0 {
                continue;
            }
            let master = ServiceKey {
                backend_slot: 0,
                ..*key
            };
            let in_range = self
                .frontends
                .get(&master)
                .is_some_and(|p| (key.backend_slot as usize) <= p.slots.len());
            if !in_range {
                self.orphans.slots.push(*key);
            }
        }
        for id in snap.rev_nats.keys().chain(snap.names.keys()) {
            if !used_rev_nats.contains(id) && !self.orphans.rev_nats.contains(id) {
                self.orphans.rev_nats.push(*id);
            }
        }
    }

    /// Number of frontends programmed.
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// Make the maps hold exactly `desired` (start-up and full resyncs):
    /// upsert every desired frontend, delete every other one, then remove
    /// orphaned entries left in pinned maps by an earlier run.
    pub fn sync<F: Borrow<Frontend>>(&mut self, desired: impl IntoIterator<Item = F>) -> Stats {
        let mut stats = Stats::default();
        let mut wanted = HashSet::new();
        for fe in desired {
            let fe = fe.borrow();
            wanted.insert(service_key(&fe.key, 0));
            self.upsert_logged(fe, &mut stats);
        }
        let stale: Vec<ServiceKey> = self
            .frontends
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in stale {
            self.delete_logged(&key, &mut stats);
        }
        self.sweep_orphans(&mut stats);
        stats
    }

    /// Apply a set of per-frontend changes (`None` deletes).
    pub fn apply<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a FrontendKey, &'a Option<Frontend>)>,
    ) -> Stats {
        let mut stats = Stats::default();
        for (key, desired) in changes {
            match desired {
                Some(fe) => self.upsert_logged(fe, &mut stats),
                None => self.delete_logged(&service_key(key, 0), &mut stats),
            }
        }
        stats
    }

    fn upsert_logged(&mut self, fe: &Frontend, stats: &mut Stats) {
        match self.upsert(fe) {
            Ok(true) => stats.upserted += 1,
            Ok(false) => {}
            Err(error) => {
                stats.failed += 1;
                warn!(frontend = %fe.key, service = %fe.service, %error,
                      "frontend could not be programmed; removed it so no half-written state stays");
            }
        }
    }

    fn delete_logged(&mut self, key: &ServiceKey, stats: &mut Stats) {
        match self.delete(key) {
            Ok(true) => stats.deleted += 1,
            Ok(false) => {}
            Err(error) => {
                stats.failed += 1;
                warn!(frontend = ?key, %error, "frontend could not be removed");
            }
        }
    }

    /// Program one frontend. Returns whether anything was written. On
    /// failure (a full map, say) the frontend is removed entirely rather
    /// than left half-written.
    fn upsert(&mut self, fe: &Frontend) -> Result<bool> {
        let master_key = service_key(&fe.key, 0);
        let mut acquired = Vec::with_capacity(fe.backends.len());
        let mut new_rev_nat = None;
        let result = self.write_frontend(fe, &master_key, &mut acquired, &mut new_rev_nat);
        if result.is_err() {
            let old = self.frontends.remove(&master_key);
            let most_slots = old
                .as_ref()
                .map_or(0, |p| p.slots.len())
                .max(fe.backends.len());
            // Best effort: the error that matters is the one returned.
            let _ = self.maps.delete_service(&master_key);
            for slot in 1..=most_slots {
                let key = ServiceKey {
                    backend_slot: slot as u16,
                    ..master_key
                };
                let _ = self.maps.delete_service(&key);
            }
            let rev_nat = old.as_ref().map(|p| p.rev_nat_id).or(new_rev_nat);
            if let Some(id) = rev_nat {
                let _ = self.maps.delete_rev_nat(id);
                self.rev_nat_ids.free(id as u32);
            }
            if let Some(old) = old {
                let _ = self.release_all(&old.slots);
            }
            let _ = self.release_all(&acquired);
        }
        result
    }

    fn write_frontend(
        &mut self,
        fe: &Frontend,
        master_key: &ServiceKey,
        acquired: &mut Vec<u32>,
        new_rev_nat: &mut Option<u16>,
    ) -> Result<bool> {
        let master_key = *master_key;
        let proto = master_key.proto;
        let name = service_name(fe);

        // 1. Backends first: every id a slot will name must exist.
        for addr in &fe.backends {
            acquired.push(self.acquire_backend(backend_key(addr, proto))?);
        }

        let old = self.frontends.get(&master_key).cloned();
        let old_slots = old.as_ref().map(|p| p.slots.clone()).unwrap_or_default();
        let slots = assign_slots(&old_slots, acquired);
        if slots.len() > u16::MAX as usize {
            return Err(Error::TooManyBackends {
                frontend: fe.key.to_string(),
                count: slots.len(),
            });
        }

        let rev_nat_id = match &old {
            Some(p) => p.rev_nat_id,
            None => {
                let id = self
                    .rev_nat_ids
                    .allocate()
                    .ok_or(Error::IdsExhausted("reverse-NAT"))? as u16;
                *new_rev_nat = Some(id);
                id
            }
        };
        let mut wrote = false;
        if old.as_ref().is_none_or(|p| p.name != name) {
            let rev = RevNat {
                address: master_key.address,
                port: master_key.port,
                _pad: 0,
            };
            self.maps.put_rev_nat(rev_nat_id, &rev, &name)?;
            wrote = true;
        }

        // 2. Slots that changed.
        for (i, id) in slots.iter().enumerate() {
            if old_slots.get(i) == Some(id) {
                continue;
            }
            let key = ServiceKey {
                backend_slot: (i + 1) as u16,
                ..master_key
            };
            let value = ServiceValue {
                backend_id: *id,
                count: 0,
                rev_nat_id,
                affinity_timeout: 0,
                flags: 0,
                _pad: 0,
            };
            self.maps.put_service(&key, &value)?;
            wrote = true;
        }

        // 3. The master entry.
        let master = ServiceValue {
            backend_id: 0,
            count: slots.len() as u16,
            rev_nat_id,
            affinity_timeout: fe.affinity_timeout,
            flags: 0,
            _pad: 0,
        };
        let master_changed = old.as_ref().is_none_or(|p| {
            p.slots.len() != slots.len() || p.affinity_timeout != fe.affinity_timeout
        });
        if master_changed {
            self.maps.put_service(&master_key, &master)?;
            wrote = true;
        }

        // 4. Slots beyond the new count.
        for slot in slots.len()..old_slots.len() {
            let key = ServiceKey {
                backend_slot: (slot + 1) as u16,
                ..master_key
            };
            self.maps.delete_service(&key)?;
            wrote = true;
        }

        self.frontends.insert(
            master_key,
            Programmed {
                rev_nat_id,
                slots: slots.clone(),
                affinity_timeout: fe.affinity_timeout,
                name,
            },
        );

        // 5. References: the new slots hold one each (acquired above), the
        // old slots give theirs back; backends nobody uses go last.
        acquired.clear();
        let removed: HashSet<u32> = old_slots
            .iter()
            .filter(|id| !slots.contains(id))
            .copied()
            .collect();
        if fe.affinity_timeout != 0 && !removed.is_empty() {
            self.maps.purge_affinity(rev_nat_id, Some(&removed))?;
        }
        if old
            .as_ref()
            .is_some_and(|p| p.affinity_timeout != fe.affinity_timeout)
        {
            self.maps.purge_affinity(rev_nat_id, None)?;
        }
        self.release_all(&old_slots)?;
        Ok(wrote)
    }

    /// Remove one frontend: master entry first so no new connection picks
    /// it, then its slots, reverse-NAT entry and unused backends.
    fn delete(&mut self, master_key: &ServiceKey) -> Result<bool> {
        let Some(old) = self.frontends.remove(master_key) else {
            return Ok(false);
        };
        self.maps.delete_service(master_key)?;
        for slot in 1..=old.slots.len() {
            let key = ServiceKey {
                backend_slot: slot as u16,
                ..*master_key
            };
            self.maps.delete_service(&key)?;
        }
        self.maps.delete_rev_nat(old.rev_nat_id)?;
        if old.affinity_timeout != 0 {
            self.maps.purge_affinity(old.rev_nat_id, None)?;
        }
        self.rev_nat_ids.free(old.rev_nat_id as u32);
        self.release_all(&old.slots)?;
        Ok(true)
    }

    fn acquire_backend(&mut self, key: BackendKey) -> Result<u32> {
        if let Some(entry) = self.backends.get_mut(&key) {
            entry.refs += 1;
            return Ok(entry.id);
        }
        let id = self
            .backend_ids
            .allocate()
            .ok_or(Error::IdsExhausted("backend"))?;
        let backend = Backend {
            address: key.address,
            port: key.port,
            proto: key.proto,
            flags: key.flags,
        };
        if let Err(e) = self.maps.put_backend(id, &backend) {
            self.backend_ids.free(id);
            return Err(e);
        }
        self.backends.insert(key, BackendEntry { id, refs: 1 });
        self.backend_by_id.insert(id, key);
        Ok(id)
    }

    fn release_all(&mut self, ids: &[u32]) -> Result<()> {
        for id in ids {
            self.release_backend(*id)?;
        }
        Ok(())
    }

    fn release_backend(&mut self, id: u32) -> Result<()> {
        let Some(key) = self.backend_by_id.get(&id).copied() else {
            return Ok(());
        };
        let Some(entry) = self.backends.get_mut(&key) else {
            return Ok(());
        };
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs == 0 {
            self.maps.delete_backend(id)?;
            self.backends.remove(&key);
            self.backend_by_id.remove(&id);
            self.backend_ids.free(id);
        }
        Ok(())
    }

    fn sweep_orphans(&mut self, stats: &mut Stats) {
        for key in std::mem::take(&mut self.orphans.slots) {
            if let Err(error) = self.maps.delete_service(&key) {
                stats.failed += 1;
                warn!(slot = ?key, %error, "stale slot could not be removed");
            }
        }
        for id in std::mem::take(&mut self.orphans.rev_nats) {
            if self.frontends.values().any(|p| p.rev_nat_id == id) {
                continue;
            }
            if let Err(error) = self.maps.delete_rev_nat(id) {
                stats.failed += 1;
                warn!(rev_nat_id = id, %error, "stale reverse-NAT entry could not be removed");
            }
            self.rev_nat_ids.free(id as u32);
        }
        let unused: Vec<u32> = self
            .backends
            .values()
            .filter(|e| e.refs == 0)
            .map(|e| e.id)
            .collect();
        for id in unused {
            // refs is already 0: release deletes it.
            if let Some(key) = self.backend_by_id.get(&id).copied() {
                if let Some(e) = self.backends.get_mut(&key) {
                    e.refs = 1;
                }
            }
            if let Err(error) = self.release_backend(id) {
                stats.failed += 1;
                warn!(backend_id = id, %error, "stale backend could not be removed");
            }
        }
    }

    /// The maps (for tests and inspection).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    #[cfg(test)]
    pub fn maps_mut_for_test(&mut self) -> &mut M {
        &mut self.maps
    }
}

/// Frontend address for display.
pub fn frontend_addr(key: &ServiceKey) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from_be(key.address)),
        u16::from_be(key.port),
    )
}
