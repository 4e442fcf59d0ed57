//! The load-balancer maps as a small set of operations, so the writer's
//! ordering rules can be checked against an in-memory model and the real
//! BPF maps alike.

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use gangplank_common::{
    Affinity, AffinityKey, Backend, RevNat, ServiceKey, ServiceName, ServiceValue,
};

use super::{Error, Result};

/// Names of the pinned maps (the statics in `ebpf/src/sock_lb.rs`).
pub const SERVICES: &str = "GP_SERVICES";
pub const BACKENDS: &str = "GP_BACKENDS";
pub const REV_NAT: &str = "GP_REV_NAT";
pub const AFFINITY: &str = "GP_AFFINITY";
pub const SVC_NAMES: &str = "GP_SVC_NAMES";
pub const SOCK_REVNAT: &str = "GP_SOCK_REVNAT";

/// Every map the agent pins, for uninstall.
pub const ALL: [&str; 6] = [
    SERVICES,
    BACKENDS,
    REV_NAT,
    AFFINITY,
    SVC_NAMES,
    SOCK_REVNAT,
];

/// Everything the writer needs to rebuild its view of programmed state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: HashMap<u32, Backend>,
    pub rev_nats: HashMap<u16, RevNat>,
    pub names: HashMap<u16, ServiceName>,
}

/// Operations on the load-balancer maps, one syscall each on the real maps.
pub trait LbMaps {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn put_rev_nat(&mut self, id: u16, rev: &RevNat, name: &ServiceName) -> Result<()>;
    fn delete_rev_nat(&mut self, id: u16) -> Result<()>;
    /// Forget `ClientIP` affinity for `rev_nat_id`: all of it, or only the
    /// entries that point at `backends`.
    fn purge_affinity(&mut self, rev_nat_id: u16, backends: Option<&HashSet<u32>>) -> Result<()>;
    /// Read back everything (at start-up, to reconcile with pinned state).
    fn snapshot(&self) -> Result<Snapshot>;
}

/// The real, pinned BPF maps.
pub struct BpfMaps {
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: BpfHashMap<MapData, u32, Backend>,
    rev_nat: BpfHashMap<MapData, u16, RevNat>,
    names: BpfHashMap<MapData, u16, ServiceName>,
    affinity: BpfHashMap<MapData, AffinityKey, Affinity>,
}

fn typed<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: Option<Map>,
) -> Result<BpfHashMap<MapData, K, V>> {
    let map = map.ok_or(Error::MissingMap(name))?;
    BpfHashMap::try_from(map).map_err(|source| Error::Map {
        map: name,
        op: "open",
        source,
    })
}

impl BpfMaps {
    /// Take the maps out of a loaded object (their pins stay in place).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        Ok(Self {
            services: typed(SERVICES, ebpf.take_map(SERVICES))?,
            backends: typed(BACKENDS, ebpf.take_map(BACKENDS))?,
            rev_nat: typed(REV_NAT, ebpf.take_map(REV_NAT))?,
            names: typed(SVC_NAMES, ebpf.take_map(SVC_NAMES))?,
            affinity: typed(AFFINITY, ebpf.take_map(AFFINITY))?,
        })
    }

    /// Open the pinned maps under `dir` without loading any program (for
    /// `gangplank service list`).
    pub fn open_pinned(dir: &std::path::Path) -> Result<Self> {
        fn open<K: aya::Pod, V: aya::Pod>(
            dir: &std::path::Path,
            name: &'static str,
        ) -> Result<BpfHashMap<MapData, K, V>> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| Error::OpenPin {
                path: path.clone(),
                source,
            })?;
            let map = Map::from_map_data(data).map_err(|source| Error::Map {
                map: name,
                op: "open",
                source,
            })?;
            typed(name, Some(map))
        }
        Ok(Self {
            services: open(dir, SERVICES)?,
            backends: open(dir, BACKENDS)?,
            rev_nat: open(dir, REV_NAT)?,
            names: open(dir, SVC_NAMES)?,
            affinity: open(dir, AFFINITY)?,
        })
    }
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, op, source }
}

/// Deleting what is already gone is not an error: the goal is reached.
fn ignore_missing(result: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn collect<K, V>(name: &'static str, map: &BpfHashMap<MapData, K, V>) -> Result<HashMap<K, V>>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let mut out = HashMap::new();
    for entry in map.iter() {
        match entry {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            // An entry deleted between get_next_key and lookup: skip it.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name, "iterate")(e)),
        }
    }
    Ok(out)
}

impl LbMaps for BpfMaps {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(map_err(BACKENDS, "update"))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id)).map_err(map_err(BACKENDS, "delete"))
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err(SERVICES, "update"))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        ignore_missing(self.services.remove(key)).map_err(map_err(SERVICES, "delete"))
    }

    fn put_rev_nat(&mut self, id: u16, rev: &RevNat, name: &ServiceName) -> Result<()> {
        self.names
            .insert(id, name, 0)
            .map_err(map_err(SVC_NAMES, "update"))?;
        self.rev_nat
            .insert(id, rev, 0)
            .map_err(map_err(REV_NAT, "update"))
    }

    fn delete_rev_nat(&mut self, id: u16) -> Result<()> {
        ignore_missing(self.rev_nat.remove(&id)).map_err(map_err(REV_NAT, "delete"))?;
        ignore_missing(self.names.remove(&id)).map_err(map_err(SVC_NAMES, "delete"))
    }

    fn purge_affinity(&mut self, rev_nat_id: u16, backends: Option<&HashSet<u32>>) -> Result<()> {
        let stale: Vec<AffinityKey> = collect(AFFINITY, &self.affinity)?
            .into_iter()
            .filter(|(k, v)| {
                k.rev_nat_id == rev_nat_id && backends.is_none_or(|b| b.contains(&v.backend_id))
            })
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            ignore_missing(self.affinity.remove(&key)).map_err(map_err(AFFINITY, "delete"))?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            services: collect(SERVICES, &self.services)?,
            backends: collect(BACKENDS, &self.backends)?,
            rev_nats: collect(REV_NAT, &self.rev_nat)?,
            names: collect(SVC_NAMES, &self.names)?,
        })
    }
}
