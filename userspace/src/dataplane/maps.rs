//! The load-balancer maps as a small set of operations, so the writer's
//! ordering rules can be checked against an in-memory model and the real
//! BPF maps alike.

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, IterableMap, Map, MapData, MapError};
use gangplank_common::{
    Affinity, AffinityKey, Backend, MaglevChunk, MaglevKey, RevNat, ServiceKey, ServiceName,
    ServiceValue,
};

use super::{Error, Result};

/// Names of the pinned maps (the statics in `ebpf/src/sock_lb.rs`).
pub const SERVICES: &str = "GP_SERVICES";
pub const BACKENDS: &str = "GP_BACKENDS";
pub const REV_NAT: &str = "GP_REV_NAT";
pub const AFFINITY: &str = "GP_AFFINITY";
pub const SVC_NAMES: &str = "GP_SVC_NAMES";
pub const SOCK_REVNAT: &str = "GP_SOCK_REVNAT";
pub const MAGLEV: &str = "GP_MAGLEV";

/// Every map the agent pins, for uninstall.
pub const ALL: [&str; 7] = [
    SERVICES,
    BACKENDS,
    REV_NAT,
    AFFINITY,
    SVC_NAMES,
    SOCK_REVNAT,
    MAGLEV,
];

/// Maglev chunks per BPF_MAP_UPDATE_BATCH call: each is 4 KiB, so this
/// keeps the kernel's copy of one call at 1 MiB.
const MAGLEV_BATCH: usize = 256;

/// Everything the writer needs to rebuild its view of programmed state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub backends: HashMap<u32, Backend>,
    pub rev_nats: HashMap<u16, RevNat>,
    pub names: HashMap<u16, ServiceName>,
    /// Keys of the Maglev chunks (the contents, 4 KiB each, are read one
    /// table at a time with [`LbMaps::maglev_chunk`] when needed).
    pub maglev: HashSet<MaglevKey>,
}

/// Affinity entries to forget, by reverse-NAT id: all of them (`None`) or
/// only those pointing at some backends.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AffinityPurges(pub HashMap<u16, Option<HashSet<u32>>>);

impl AffinityPurges {
    /// Forget every entry of `rev_nat_id`.
    pub fn all(&mut self, rev_nat_id: u16) {
        self.0.insert(rev_nat_id, None);
    }

    /// Forget the entries of `rev_nat_id` that point at `backends`.
    pub fn backends(&mut self, rev_nat_id: u16, backends: &HashSet<u32>) {
        // `None` (everything) already covers any set.
        if let Some(set) = self
            .0
            .entry(rev_nat_id)
            .or_insert_with(|| Some(HashSet::new()))
        {
            set.extend(backends);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the entry `rev_nat_id → backend_id` goes.
    pub fn matches(&self, rev_nat_id: u16, backend_id: u32) -> bool {
        match self.0.get(&rev_nat_id) {
            Some(None) => true,
            Some(Some(set)) => set.contains(&backend_id),
            None => false,
        }
    }
}

/// Operations on the load-balancer maps, one syscall each on the real maps.
pub trait LbMaps {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn put_rev_nat(&mut self, id: u16, rev: &RevNat, name: &ServiceName) -> Result<()>;
    fn delete_rev_nat(&mut self, id: u16) -> Result<()>;
    fn put_maglev_chunk(&mut self, key: &MaglevKey, chunk: &MaglevChunk) -> Result<()>;
    fn delete_maglev_chunk(&mut self, key: &MaglevKey) -> Result<()>;
    /// One Maglev chunk (to check a pinned table at start-up).
    fn maglev_chunk(&self, key: &MaglevKey) -> Result<Option<MaglevChunk>>;
    /// Forget `ClientIP` affinity entries, in one pass over the map.
    fn purge_affinity(&mut self, purges: &AffinityPurges) -> Result<()>;
    /// Read back everything (at start-up, to reconcile with pinned state).
    fn snapshot(&self) -> Result<Snapshot>;

    /// Many backends at once (start-up). Callers order batches exactly as
    /// they would order single writes.
    fn put_backends(&mut self, entries: &[(u32, Backend)]) -> Result<()> {
        entries
            .iter()
            .try_for_each(|(id, b)| self.put_backend(*id, b))
    }

    /// Many service entries at once (start-up).
    fn put_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<()> {
        entries.iter().try_for_each(|(k, v)| self.put_service(k, v))
    }

    /// Many reverse-NAT entries (and their names) at once (start-up).
    fn put_rev_nats(&mut self, entries: &[(u16, RevNat, ServiceName)]) -> Result<()> {
        entries
            .iter()
            .try_for_each(|(id, rev, name)| self.put_rev_nat(*id, rev, name))
    }

    /// Many Maglev chunks at once (start-up).
    fn put_maglev_chunks(&mut self, entries: &[(MaglevKey, MaglevChunk)]) -> Result<()> {
        entries
            .iter()
            .try_for_each(|(k, c)| self.put_maglev_chunk(k, c))
    }
}

/// The real, pinned BPF maps.
pub struct BpfMaps {
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: BpfHashMap<MapData, u32, Backend>,
    rev_nat: BpfHashMap<MapData, u16, RevNat>,
    names: BpfHashMap<MapData, u16, ServiceName>,
    affinity: BpfHashMap<MapData, AffinityKey, Affinity>,
    maglev: BpfHashMap<MapData, MaglevKey, MaglevChunk>,
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
            maglev: typed(MAGLEV, ebpf.take_map(MAGLEV))?,
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
            maglev: open(dir, MAGLEV)?,
        })
    }
}

/// One BPF_MAP_UPDATE_BATCH pass over `entries` instead of a syscall each.
fn batch<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &BpfHashMap<MapData, K, V>,
    keys: Vec<K>,
    values: Vec<V>,
) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.map().fd().as_fd().as_raw_fd();
    super::sys::update_batch(fd, &keys, &values).map_err(|io_error| Error::Map {
        map: name,
        op: "batch update",
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "BPF_MAP_UPDATE_BATCH",
            io_error,
        }),
    })
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

/// Every entry of a hash map (the test-run helpers read maps with it too).
pub(crate) fn collect<K, V>(
    name: &'static str,
    map: &BpfHashMap<MapData, K, V>,
) -> Result<HashMap<K, V>>
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
        // Reverse-NAT first: the writer trusts a present name to mean the
        // reverse-NAT entry was written too.
        self.rev_nat
            .insert(id, rev, 0)
            .map_err(map_err(REV_NAT, "update"))?;
        self.names
            .insert(id, name, 0)
            .map_err(map_err(SVC_NAMES, "update"))
    }

    fn delete_rev_nat(&mut self, id: u16) -> Result<()> {
        ignore_missing(self.rev_nat.remove(&id)).map_err(map_err(REV_NAT, "delete"))?;
        ignore_missing(self.names.remove(&id)).map_err(map_err(SVC_NAMES, "delete"))
    }

    fn put_maglev_chunk(&mut self, key: &MaglevKey, chunk: &MaglevChunk) -> Result<()> {
        self.maglev
            .insert(key, chunk, 0)
            .map_err(map_err(MAGLEV, "update"))
    }

    fn delete_maglev_chunk(&mut self, key: &MaglevKey) -> Result<()> {
        ignore_missing(self.maglev.remove(key)).map_err(map_err(MAGLEV, "delete"))
    }

    fn maglev_chunk(&self, key: &MaglevKey) -> Result<Option<MaglevChunk>> {
        match self.maglev.get(key, 0) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(map_err(MAGLEV, "lookup")(e)),
        }
    }

    fn purge_affinity(&mut self, purges: &AffinityPurges) -> Result<()> {
        let stale: Vec<AffinityKey> = collect(AFFINITY, &self.affinity)?
            .into_iter()
            .filter(|(k, v)| purges.matches(k.rev_nat_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            ignore_missing(self.affinity.remove(&key)).map_err(map_err(AFFINITY, "delete"))?;
        }
        Ok(())
    }

    fn put_backends(&mut self, entries: &[(u32, Backend)]) -> Result<()> {
        let (keys, values) = entries.iter().copied().unzip();
        batch(BACKENDS, &self.backends, keys, values)
    }

    fn put_services(&mut self, entries: &[(ServiceKey, ServiceValue)]) -> Result<()> {
        let (keys, values) = entries.iter().copied().unzip();
        batch(SERVICES, &self.services, keys, values)
    }

    fn put_rev_nats(&mut self, entries: &[(u16, RevNat, ServiceName)]) -> Result<()> {
        let ids: Vec<u16> = entries.iter().map(|e| e.0).collect();
        let names = entries.iter().map(|e| e.2).collect();
        let revs = entries.iter().map(|e| e.1).collect();
        batch(REV_NAT, &self.rev_nat, ids.clone(), revs)?;
        batch(SVC_NAMES, &self.names, ids, names)
    }

    fn put_maglev_chunks(&mut self, entries: &[(MaglevKey, MaglevChunk)]) -> Result<()> {
        for group in entries.chunks(MAGLEV_BATCH) {
            let (keys, values) = group.iter().copied().unzip();
            batch(MAGLEV, &self.maglev, keys, values)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut maglev = HashSet::new();
        // Keys only: reading every chunk would copy 64 KiB per table.
        for key in self.maglev.keys() {
            match key {
                Ok(key) => {
                    maglev.insert(key);
                }
                // Deleted while iterating: skip it.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAGLEV, "iterate")(e)),
            }
        }
        Ok(Snapshot {
            services: collect(SERVICES, &self.services)?,
            backends: collect(BACKENDS, &self.backends)?,
            rev_nats: collect(REV_NAT, &self.rev_nat)?,
            names: collect(SVC_NAMES, &self.names)?,
            maglev,
        })
    }
}
