//! Applies desired frontends to the maps with the fewest writes, in an order
//! that never lets the datapath see a half-written service:
//!
//! 1. new backends,
//! 2. backend slots `1..=count`,
//! 3. external frontends whose backend set changed: the new Maglev table,
//!    written into the generation the master entry does *not* point at,
//! 4. the slot-0 master entry (count, reverse-NAT id, affinity, flags, and
//!    the Maglev size and live generation),
//! 5. slots beyond the new count,
//! 6. the previous Maglev generation,
//! 7. backends nobody points at any more.
//!
//! A connect() racing with an update sees either the old or the new master
//! entry. If it copied the old one and the slot it picks was just deleted
//! (step 5), it reads the master again and finds the new one, which step 4
//! wrote before anything was deleted. A packet on a device reads whichever
//! table generation the master it found names; both are complete while
//! either can be named, and every backend either one points at still exists.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use gangplank_common::{
    Backend, MaglevChunk, MaglevKey, RevNat, ServiceKey, ServiceName, ServiceValue,
    BACKENDS_MAP_SIZE, BACKEND_FLAG_LOCAL, BACKEND_FLAG_TERMINATING, MAGLEV_CHUNK, MAGLEV_MAX_SIZE,
    PROTO_TCP, PROTO_UDP, REV_NAT_MAP_SIZE, SCOPE_EXTERNAL, SCOPE_INTERNAL, SERVICE_NAME_LEN,
    SVC_FLAG_LOCAL, SVC_FLAG_MAGLEV, SVC_FLAG_MAGLEV_GEN1, SVC_FLAG_NODEPORT,
};
use tracing::{debug, warn};

use super::ids::IdAllocator;
use super::maps::{AffinityPurges, LbMaps, Snapshot};
use super::{Error, Result};
use crate::model::{BackendAddr, Frontend, FrontendKey, FrontendKind, Protocol, Scope};

use super::maglev::{self, TableSize};

/// Writer settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterConfig {
    /// Size of the Maglev table of every external frontend
    /// (`--maglev-table-size`; parse it with `TableSize::from_str`, which
    /// refuses sizes the datapath cannot use).
    pub maglev_table_size: TableSize,
}

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
    /// Backend id of slot `i + 1` (0: a hole found in pinned state, to be
    /// rewritten).
    slots: Vec<u32>,
    affinity_timeout: u32,
    /// Master entry flags other than the Maglev ones
    /// (`SVC_FLAG_LOCAL`, `SVC_FLAG_NODEPORT`).
    flags: u16,
    /// The Maglev table the master entry points at, if any.
    maglev: Option<LiveTable>,
    /// All zeroes when the reverse-NAT entry must be rewritten.
    name: ServiceName,
}

/// A Maglev table in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveTable {
    /// 0 or 1 (`MaglevKey::generation`, `SVC_FLAG_MAGLEV_GEN1`).
    generation: u8,
    /// Entries (`M`), as in the master entry's `backend_id`.
    size: u32,
    /// The backend ids it was built from, sorted. Empty for a pinned table
    /// that could not be checked at start-up: it never matches a desired
    /// set, so the next write replaces it.
    ids: Vec<u32>,
}

/// See `Writer::last_table`.
#[derive(Debug)]
struct LastTable {
    /// (address, port, id), sorted.
    backends: Vec<(Ipv4Addr, u16, u32)>,
    table: Vec<u32>,
}

/// Maglev chunks `bulk_insert` collects before writing them (1 MiB).
const CHUNKS_PER_WRITE: usize = 256;

/// Keeps the BPF maps equal to the desired frontends.
pub struct Writer<M> {
    maps: M,
    maglev_size: TableSize,
    /// The last Maglev table computed and the backends it was computed
    /// for (address, port, id; sorted): the external frontends of one
    /// Service port (NodePort, load-balancer IPs, external IPs) share their
    /// backends, so one computation serves them all.
    last_table: Option<LastTable>,
    frontends: HashMap<ServiceKey, Programmed>,
    backends: HashMap<BackendKey, BackendEntry>,
    backend_by_id: HashMap<u32, BackendKey>,
    backend_ids: IdAllocator,
    rev_nat_ids: IdAllocator,
    /// Entries found in pinned maps that belong to nothing, removed by the
    /// next [`Writer::sync`].
    orphans: Orphans,
    /// Affinity entries to forget, collected during one call and purged in
    /// one pass over the affinity map at its end.
    purges: AffinityPurges,
    /// Frontends whose last update failed (a full map), for [`Writer::failed`].
    failed: BTreeSet<FrontendKey>,
}

#[derive(Debug, Default)]
struct Orphans {
    slots: Vec<ServiceKey>,
    rev_nats: Vec<u16>,
    backends: Vec<u32>,
    /// Maglev chunks no live table uses (a generation left by a crash
    /// mid-update, or tables of frontends that are gone).
    chunks: Vec<MaglevKey>,
}

/// Map entries touched by one call, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub upserted: usize,
    pub deleted: usize,
    pub failed: usize,
}

impl Stats {
    pub fn add(&mut self, other: Stats) {
        self.upserted += other.upserted;
        self.deleted += other.deleted;
        self.failed += other.failed;
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

fn scope_number(scope: Scope) -> u8 {
    match scope {
        Scope::Internal => SCOPE_INTERNAL,
        Scope::External => SCOPE_EXTERNAL,
    }
}

/// Map-side key of a frontend's entry `slot` (addresses and ports in
/// network byte order, as the datapath sees them; NodePort frontends have
/// address 0, `NODEPORT_ADDRESS`).
pub fn service_key(key: &FrontendKey, slot: u16) -> ServiceKey {
    ServiceKey::scoped(
        u32::from(key.address).to_be(),
        key.port.to_be(),
        proto_number(key.protocol),
        scope_number(key.scope),
        slot,
    )
}

/// Master entry flags a frontend needs, apart from the Maglev ones.
fn base_flags(fe: &Frontend) -> u16 {
    let mut flags = 0;
    if fe.external_local && fe.key.scope == Scope::External {
        flags |= SVC_FLAG_LOCAL;
    }
    if fe.kind == FrontendKind::NodePort {
        flags |= SVC_FLAG_NODEPORT;
    }
    flags
}

fn maglev_key(rev_nat_id: u16, generation: u8, chunk: u32) -> MaglevKey {
    MaglevKey {
        rev_nat_id,
        generation,
        _pad: 0,
        chunk,
    }
}

/// A table cut into map values; the last one is padded with 0 ("no
/// backend", never read: the datapath stays below the table size).
fn chunk_values(table: &[u32]) -> impl Iterator<Item = (u32, MaglevChunk)> + '_ {
    table.chunks(MAGLEV_CHUNK).enumerate().map(|(i, part)| {
        let mut chunk = MaglevChunk {
            backend_ids: [0; MAGLEV_CHUNK],
        };
        chunk.backend_ids[..part.len()].copy_from_slice(part);
        // At most MAGLEV_MAX_SIZE / MAGLEV_CHUNK chunks.
        (i as u32, chunk)
    })
}

fn slot_key(master: &ServiceKey, slot: usize) -> ServiceKey {
    ServiceKey {
        backend_slot: slot as u16,
        ..*master
    }
}

fn slot_value(backend_id: u32, rev_nat_id: u16) -> ServiceValue {
    ServiceValue {
        backend_id,
        count: 0,
        rev_nat_id,
        affinity_timeout: 0,
        flags: 0,
        _pad: 0,
    }
}

fn master_value(
    count: u16,
    rev_nat_id: u16,
    affinity_timeout: u32,
    flags: u16,
    table: Option<&LiveTable>,
) -> ServiceValue {
    let (backend_id, maglev_flags) = match table {
        Some(t) if t.generation == 1 => (t.size, SVC_FLAG_MAGLEV | SVC_FLAG_MAGLEV_GEN1),
        Some(t) => (t.size, SVC_FLAG_MAGLEV),
        None => (0, 0),
    };
    ServiceValue {
        backend_id,
        count,
        rev_nat_id,
        affinity_timeout,
        flags: flags | maglev_flags,
        _pad: 0,
    }
}

fn rev_nat_value(master: &ServiceKey) -> RevNat {
    RevNat {
        address: master.address,
        port: master.port,
        _pad: 0,
    }
}

/// "198.18.200.10:80/TCP" (or "0.0.0.0:30080/TCP external") for logs.
pub fn describe(key: &ServiceKey) -> String {
    let proto = match key.proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    };
    let scope = if key.scope == SCOPE_EXTERNAL {
        " external"
    } else {
        ""
    };
    format!(
        "{}:{}/{proto}{scope}",
        Ipv4Addr::from(u32::from_be(key.address)),
        u16::from_be(key.port)
    )
}

/// The backend entry for an endpoint. The flags are part of its identity:
/// an endpoint that becomes terminating gets a new entry (and id) rather
/// than a rewritten one, so flows and frontends that still use the old
/// entry see consistent flags.
fn backend_key(addr: &BackendAddr, proto: u8) -> BackendKey {
    let mut flags = 0;
    if addr.terminating {
        flags |= BACKEND_FLAG_TERMINATING;
    }
    if addr.local {
        flags |= BACKEND_FLAG_LOCAL;
    }
    BackendKey {
        address: u32::from(addr.address).to_be(),
        port: addr.port.to_be(),
        proto,
        flags,
    }
}

fn backend_value(key: &BackendKey) -> Backend {
    Backend {
        address: key.address,
        port: key.port,
        proto: key.proto,
        flags: key.flags,
    }
}

const NO_NAME: ServiceName = ServiceName {
    name: [0; SERVICE_NAME_LEN],
};

/// The last byte of a [`ServiceName`] holds the frontend's kind (the maps
/// have no other place for it, and only `service list` reads names); the
/// text stops before it, so it is always NUL-terminated.
pub const NAME_KIND_BYTE: usize = SERVICE_NAME_LEN - 1;

/// The code stored at [`NAME_KIND_BYTE`] (0 = unknown, e.g. written by an
/// older agent).
pub fn kind_code(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::ClusterIp => 1,
        FrontendKind::NodePort => 2,
        FrontendKind::LoadBalancer => 3,
        FrontendKind::ExternalIp => 4,
    }
}

/// The text and kind of a [`ServiceName`] written by [`service_name`].
pub fn parse_name(name: &ServiceName) -> (String, Option<FrontendKind>) {
    let text = &name.name[..NAME_KIND_BYTE];
    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
    let kind = match name.name[NAME_KIND_BYTE] {
        1 => Some(FrontendKind::ClusterIp),
        2 => Some(FrontendKind::NodePort),
        3 => Some(FrontendKind::LoadBalancer),
        4 => Some(FrontendKind::ExternalIp),
        _ => None,
    };
    (String::from_utf8_lossy(&text[..end]).into_owned(), kind)
}

fn service_name(fe: &Frontend) -> ServiceName {
    let text = if fe.port_name.is_empty() {
        format!("{}", fe.service)
    } else {
        format!("{}:{}", fe.service, fe.port_name)
    };
    let mut name = NO_NAME;
    let bytes = text.as_bytes();
    let len = bytes.len().min(NAME_KIND_BYTE);
    name.name[..len].copy_from_slice(&bytes[..len]);
    name.name[NAME_KIND_BYTE] = kind_code(fe.kind);
    name
}

/// Backends of a frontend, deduplicated: a repeated endpoint must not
/// take two references (or two slots).
fn unique_backends(fe: &Frontend, proto: u8) -> Vec<BackendKey> {
    let mut seen = HashSet::with_capacity(fe.backends.len());
    fe.backends
        .iter()
        .map(|a| backend_key(a, proto))
        .filter(|k| seen.insert(*k))
        .collect()
}

/// Slot assignment that keeps every surviving backend in its slot, so one
/// endpoint change costs one or two writes instead of rewriting the table.
fn assign_slots(old: &[u32], desired: &[u32]) -> Vec<u32> {
    let wanted: HashSet<u32> = desired.iter().copied().collect();
    // A repeated id in the old slots (pinned by an agent killed between a
    // slot write and the master write) keeps only its first slot.
    let mut seen = HashSet::new();
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| (wanted.contains(id) && seen.insert(*id)).then_some(*id))
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
    /// reuses ids and only writes what differs. Default settings.
    pub fn new(maps: M) -> Result<Self> {
        Self::with_config(maps, WriterConfig::default())
    }

    /// [`Writer::new`] with settings. Pinned Maglev tables of another size
    /// are rebuilt at the next sync.
    pub fn with_config(maps: M, config: WriterConfig) -> Result<Self> {
        let snapshot = maps.snapshot()?;
        let mut writer = Self {
            maps,
            maglev_size: config.maglev_table_size,
            last_table: None,
            frontends: HashMap::new(),
            backends: HashMap::new(),
            backend_by_id: HashMap::new(),
            backend_ids: IdAllocator::new(1, BACKENDS_MAP_SIZE),
            rev_nat_ids: IdAllocator::new(1, REV_NAT_MAP_SIZE.min(u16::MAX as u32)),
            orphans: Orphans::default(),
            purges: AffinityPurges::default(),
            failed: BTreeSet::new(),
        };
        writer.adopt(snapshot);
        Ok(writer)
    }

    /// Sets the Maglev table size (`--maglev-table-size`), refusing sizes
    /// the datapath cannot use. Pinned tables of this size are checked (and
    /// kept if right) rather than rebuilt; tables of another size are
    /// rebuilt by the next sync.
    pub fn with_maglev_table_size(
        mut self,
        size: u32,
    ) -> std::result::Result<Self, maglev::InvalidTableSize> {
        let size = TableSize::new(size)?;
        if size != self.maglev_size {
            self.maglev_size = size;
            self.last_table = None;
            let unchecked: Vec<(ServiceKey, u16, u8)> = self
                .frontends
                .iter()
                .filter_map(|(key, p)| {
                    let t = p.maglev.as_ref()?;
                    (t.ids.is_empty() && t.size == size.get()).then_some((
                        *key,
                        p.rev_nat_id,
                        t.generation,
                    ))
                })
                .collect();
            for (key, rev_nat_id, generation) in unchecked {
                let ids = self.adopt_table(&key, rev_nat_id, generation, size.get());
                if let Some(t) = self.frontends.get_mut(&key).and_then(|p| p.maglev.as_mut()) {
                    t.ids = ids;
                }
            }
        }
        Ok(self)
    }

    /// Rebuild bookkeeping from map contents. Anything inconsistent is
    /// either marked for rewriting (holes, a wrong reverse-NAT entry) or
    /// recorded as an orphan for the next sync.
    fn adopt(&mut self, snap: Snapshot) {
        for (id, backend) in &snap.backends {
            let key = BackendKey {
                address: backend.address,
                port: backend.port,
                proto: backend.proto,
                flags: backend.flags,
            };
            let in_range = *id != 0 && *id <= BACKENDS_MAP_SIZE;
            if !in_range || self.backends.contains_key(&key) {
                // A duplicate or an impossible id (a foreign or corrupted
                // writer): slots that name it count as holes and get
                // rewritten; the entry itself goes in the final sweep.
                self.backend_ids.reserve(*id);
                self.orphans.backends.push(*id);
                continue;
            }
            self.backend_ids.reserve(*id);
            self.backends.insert(key, BackendEntry { id: *id, refs: 0 });
            self.backend_by_id.insert(*id, key);
        }
        for (key, value) in &snap.services {
            if key.backend_slot != 0 {
                continue;
            }
            let mut seen = HashSet::new();
            let slots: Vec<u32> = (1..=value.count as usize)
                .map(|slot| match snap.services.get(&slot_key(key, slot)) {
                    Some(v)
                        if self.backend_by_id.contains_key(&v.backend_id)
                            && seen.insert(v.backend_id) =>
                    {
                        v.backend_id
                    }
                    // A hole (or a second slot for the same backend, left
                    // by a crash mid-update): the next sync rewrites it,
                    // and only one reference is counted per backend.
                    _ => 0,
                })
                .collect();
            for id in slots.iter().filter(|id| **id != 0) {
                if let Some(entry) = self
                    .backend_by_id
                    .get(id)
                    .and_then(|bk| self.backends.get_mut(bk))
                {
                    entry.refs += 1;
                }
            }
            self.rev_nat_ids.reserve(value.rev_nat_id as u32);
            // Names are written after reverse-NAT entries; a name whose
            // reverse-NAT entry is missing or wrong forces both to be
            // rewritten (UDP replies depend on it).
            let rev_ok = snap.rev_nats.get(&value.rev_nat_id) == Some(&rev_nat_value(key));
            let name = match snap.names.get(&value.rev_nat_id) {
                Some(name) if rev_ok => *name,
                _ => NO_NAME,
            };
            let maglev = (value.flags & SVC_FLAG_MAGLEV != 0).then(|| {
                let generation = u8::from(value.flags & SVC_FLAG_MAGLEV_GEN1 != 0);
                // A corrupted size must not make the clean-up walk
                // millions of chunk keys; no valid table is larger.
                let size = value.backend_id.min(MAGLEV_MAX_SIZE);
                LiveTable {
                    generation,
                    size,
                    ids: if snap
                        .maglev
                        .contains(&maglev_key(value.rev_nat_id, generation, 0))
                    {
                        self.adopt_table(key, value.rev_nat_id, generation, size)
                    } else {
                        Vec::new()
                    },
                }
            });
            self.frontends.insert(
                *key,
                Programmed {
                    rev_nat_id: value.rev_nat_id,
                    slots,
                    affinity_timeout: value.affinity_timeout,
                    flags: value.flags & (SVC_FLAG_LOCAL | SVC_FLAG_NODEPORT),
                    maglev,
                    name,
                },
            );
        }
        // Chunks no live table reads: deleted before anything is written.
        let live: HashMap<(u16, u8), u32> = self
            .frontends
            .values()
            .filter_map(|p| {
                let t = p.maglev.as_ref()?;
                Some(((p.rev_nat_id, t.generation), maglev::chunks_for(t.size)))
            })
            .collect();
        for key in &snap.maglev {
            let chunks = live.get(&(key.rev_nat_id, key.generation));
            let used = key._pad == 0 && chunks.is_some_and(|n| key.chunk < *n);
            if !used {
                self.orphans.chunks.push(*key);
            }
        }
        for key in snap.services.keys().filter(|k| k.backend_slot != 0) {
            let in_range = self
                .frontends
                .get(&slot_key(key, 0))
                .is_some_and(|p| (key.backend_slot as usize) <= p.slots.len());
            if !in_range {
                self.orphans.slots.push(*key);
            }
        }
        let used: HashSet<u16> = self.frontends.values().map(|p| p.rev_nat_id).collect();
        let unused: BTreeSet<u16> = snap
            .rev_nats
            .keys()
            .chain(snap.names.keys())
            .filter(|id| !used.contains(id))
            .copied()
            .collect();
        for id in unused {
            // Reserved until swept, so no new frontend gets it while
            // affinity entries may still carry it.
            self.rev_nat_ids.reserve(id as u32);
            self.orphans.rev_nats.push(id);
        }
    }

    /// The backend ids of a pinned Maglev table (sorted), if it is complete
    /// and exactly what this writer would build for them: a table from a
    /// crash mid-update, of another size, or from an agent that hashed
    /// differently is reported as unknown (empty) and rebuilt by the next
    /// write. Costs one table computation per pinned external frontend.
    fn adopt_table(
        &mut self,
        master: &ServiceKey,
        rev_nat_id: u16,
        generation: u8,
        size: u32,
    ) -> Vec<u32> {
        if size != self.maglev_size.get() {
            return Vec::new();
        }
        let mut table = Vec::with_capacity(size as usize);
        for chunk in 0..maglev::chunks_for(size) {
            let key = maglev_key(rev_nat_id, generation, chunk);
            match self.maps.maglev_chunk(&key) {
                Ok(Some(values)) => table.extend_from_slice(&values.backend_ids),
                Ok(None) => return Vec::new(),
                Err(error) => {
                    warn!(frontend = %describe(master), %error,
                          "pinned Maglev table unreadable; rebuilding it");
                    return Vec::new();
                }
            }
        }
        table.truncate(size as usize);
        let mut ids = table.clone();
        ids.sort_unstable();
        ids.dedup();
        let known = ids.iter().all(|id| self.backend_by_id.contains_key(id));
        if !known || self.table_for(&ids) != table {
            debug!(frontend = %describe(master), "pinned Maglev table is stale; rebuilding it");
            return Vec::new();
        }
        ids
    }

    /// The Maglev table for backend ids `ids`, by their addresses.
    fn table_for(&mut self, ids: &[u32]) -> Vec<u32> {
        let mut backends: Vec<(Ipv4Addr, u16, u32)> = ids
            .iter()
            .filter_map(|id| {
                let key = self.backend_by_id.get(id)?;
                Some((
                    Ipv4Addr::from(u32::from_be(key.address)),
                    u16::from_be(key.port),
                    *id,
                ))
            })
            .collect();
        backends.sort_unstable();
        if let Some(last) = &self.last_table {
            if last.backends == backends {
                return last.table.clone();
            }
        }
        let table = maglev::table(&backends, self.maglev_size);
        self.last_table = Some(LastTable {
            backends,
            table: table.clone(),
        });
        table
    }

    /// Number of frontends programmed.
    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// Number of distinct backends programmed (shared by frontends that
    /// point at the same endpoint).
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Frontends whose last update failed and that are not in the maps;
    /// re-apply them later (the agent retries periodically).
    pub fn failed(&self) -> impl Iterator<Item = &FrontendKey> {
        self.failed.iter()
    }

    /// Make the maps hold exactly `desired` (start-up and full resyncs).
    ///
    /// Order: orphans of an earlier run go first (nothing points at them,
    /// and a later write may reuse their keys), then frontends that are no
    /// longer wanted (room in full maps), then updates, then new frontends
    /// in batches, and unused backends last.
    pub fn sync<F: Borrow<Frontend>>(&mut self, desired: impl IntoIterator<Item = F>) -> Stats {
        let mut stats = Stats::default();
        self.sweep_orphans(&mut stats);
        let mut wanted = HashMap::new();
        for fe in desired {
            let fe = fe.borrow();
            wanted
                .entry(service_key(&fe.key, 0))
                .or_insert_with(|| fe.clone());
        }
        let keys: HashSet<FrontendKey> = wanted.values().map(|fe| fe.key).collect();
        self.remove_unwanted(&keys, &mut stats);
        self.program(wanted.values(), &mut stats);
        // Pinned state's reference counts were rebuilt from slots that may
        // have had holes; recount once so nothing unused stays behind.
        self.sweep_unreferenced(&mut stats);
        self.flush_purges(&mut stats);
        stats
    }

    /// Start-up, while the directory is still being read: program one
    /// batch's frontends as soon as it is parsed, so that map writes overlap
    /// with parsing instead of following it. Nothing is deleted here (`None`
    /// is skipped): until the whole directory is known, a frontend missing
    /// from a batch may still come in a later one. [`Writer::finish_sync`]
    /// removes what is not wanted. Safe to run while a previous agent's
    /// programs still serve from these maps: every frontend is written in
    /// the usual order.
    pub fn prefill<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a FrontendKey, &'a Option<Frontend>)>,
    ) -> Stats {
        let mut stats = Stats::default();
        // Orphans first, before any write reuses their keys (no-op after
        // the first call).
        self.sweep_orphans(&mut stats);
        self.program(
            changes.into_iter().filter_map(|(_, fe)| fe.as_ref()),
            &mut stats,
        );
        stats
    }

    /// End of start-up: remove every frontend not in `desired` (pinned by
    /// an earlier run, or dropped during the scan), then backends nobody
    /// uses.
    pub fn finish_sync(&mut self, desired: &HashSet<FrontendKey>) -> Stats {
        let mut stats = Stats::default();
        self.remove_unwanted(desired, &mut stats);
        self.sweep_unreferenced(&mut stats);
        self.flush_purges(&mut stats);
        stats
    }

    /// Update programmed frontends one by one; write new ones in batches.
    fn program<'a>(
        &mut self,
        frontends: impl IntoIterator<Item = &'a Frontend>,
        stats: &mut Stats,
    ) {
        let mut fresh = Vec::new();
        for fe in frontends {
            if self.frontends.contains_key(&service_key(&fe.key, 0)) {
                self.upsert_logged(fe, stats);
            } else {
                fresh.push(fe.clone());
            }
        }
        self.bulk_insert(&fresh, stats);
    }

    /// Delete every programmed frontend not in `desired`, and forget
    /// failures of frontends no longer wanted.
    fn remove_unwanted(&mut self, desired: &HashSet<FrontendKey>, stats: &mut Stats) {
        let wanted: HashSet<ServiceKey> = desired.iter().map(|k| service_key(k, 0)).collect();
        self.failed.retain(|key| desired.contains(key));
        let stale: Vec<ServiceKey> = self
            .frontends
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for key in stale {
            self.delete_logged(&key, stats);
        }
    }

    /// Apply a set of per-frontend changes (`None` deletes). Deletions go
    /// first so that a full map has room for the updates.
    pub fn apply<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a FrontendKey, &'a Option<Frontend>)>,
    ) -> Stats {
        let mut stats = Stats::default();
        let mut upserts = Vec::new();
        for (key, desired) in changes {
            match desired {
                Some(fe) => upserts.push(fe),
                None => {
                    self.failed.remove(key);
                    self.delete_logged(&service_key(key, 0), &mut stats);
                }
            }
        }
        for fe in upserts {
            self.upsert_logged(fe, &mut stats);
        }
        self.flush_purges(&mut stats);
        stats
    }

    /// Program frontends that are not in the maps yet with a handful of
    /// batch syscalls instead of one per entry (start-up at 10,000 services
    /// writes ~230,000 entries). The phases keep the single-write order:
    /// all backends, all reverse-NAT entries, all slots, all Maglev chunks
    /// (generation 0), then all master entries, so no master entry is
    /// visible before what it points to. Tables are computed and written a
    /// few hundred chunks at a time, so thousands of external frontends
    /// never hold all their tables (64 KiB each) in memory at once.
    /// If anything fails (a full map), everything planned is removed again
    /// and the frontends go through the one-at-a-time path, which reports
    /// exactly which ones do not fit.
    fn bulk_insert(&mut self, fresh: &[Frontend], stats: &mut Stats) {
        if fresh.is_empty() {
            return;
        }
        let mut backends = Vec::new();
        let mut rev_nats = Vec::with_capacity(fresh.len());
        let mut slots = Vec::new();
        let mut masters = Vec::with_capacity(fresh.len());
        let mut planned = Vec::with_capacity(fresh.len());
        // (reverse-NAT id, sorted backend ids) of each table to write.
        let mut tables: Vec<(u16, Vec<u32>)> = Vec::new();
        let maglev_size = self.maglev_size.get();
        let plan = (|| -> Result<()> {
            for fe in fresh {
                let master_key = service_key(&fe.key, 0);
                let keys = unique_backends(fe, master_key.proto);
                let count = u16::try_from(keys.len()).map_err(|_| Error::TooManyBackends {
                    frontend: fe.key.to_string(),
                    count: keys.len(),
                })?;
                let rev_nat_id =
                    self.rev_nat_ids
                        .allocate()
                        .ok_or(Error::IdsExhausted("reverse-NAT"))? as u16;
                let name = service_name(fe);
                let flags = base_flags(fe);
                // Recorded before the backends are reserved, so that a
                // failure below is undone by `delete` like the rest.
                self.frontends.insert(
                    master_key,
                    Programmed {
                        rev_nat_id,
                        slots: Vec::with_capacity(keys.len()),
                        affinity_timeout: fe.affinity_timeout,
                        flags,
                        maglev: None,
                        name,
                    },
                );
                planned.push(master_key);
                rev_nats.push((rev_nat_id, rev_nat_value(&master_key), name));
                for (i, key) in keys.into_iter().enumerate() {
                    let (id, new) = self.reserve_backend(key)?;
                    if let Some(p) = self.frontends.get_mut(&master_key) {
                        p.slots.push(id);
                    }
                    if new {
                        backends.push((id, backend_value(&key)));
                    }
                    slots.push((slot_key(&master_key, i + 1), slot_value(id, rev_nat_id)));
                }
                let mut table = None;
                if let Some(p) = self.frontends.get_mut(&master_key) {
                    if master_key.scope == SCOPE_EXTERNAL && !p.slots.is_empty() {
                        let mut ids = p.slots.clone();
                        ids.sort_unstable();
                        tables.push((rev_nat_id, ids.clone()));
                        p.maglev = Some(LiveTable {
                            generation: 0,
                            size: maglev_size,
                            ids,
                        });
                    }
                    table = p.maglev.as_ref();
                }
                masters.push((
                    master_key,
                    master_value(count, rev_nat_id, fe.affinity_timeout, flags, table),
                ));
            }
            Ok(())
        })();
        let written = plan.and_then(|()| {
            self.maps.put_backends(&backends)?;
            self.maps.put_rev_nats(&rev_nats)?;
            self.maps.put_services(&slots)?;
            let mut chunks = Vec::new();
            for (rev_nat_id, ids) in &tables {
                let table = self.table_for(ids);
                chunks
                    .extend(chunk_values(&table).map(|(i, c)| (maglev_key(*rev_nat_id, 0, i), c)));
                if chunks.len() >= CHUNKS_PER_WRITE {
                    self.maps.put_maglev_chunks(&chunks)?;
                    chunks.clear();
                }
            }
            self.maps.put_maglev_chunks(&chunks)?;
            self.maps.put_services(&masters)
        });
        match written {
            Ok(()) => {
                stats.upserted += planned.len();
                for fe in fresh {
                    self.failed.remove(&fe.key);
                }
            }
            Err(error) => {
                warn!(%error, frontends = fresh.len(),
                      "batch write failed; programming frontends one at a time");
                let mut ignored = Stats::default();
                for key in &planned {
                    // Removes whatever part of it reached the maps and
                    // gives back its ids and backend references.
                    self.delete_logged(key, &mut ignored);
                }
                for fe in fresh {
                    self.upsert_logged(fe, stats);
                }
            }
        }
    }

    fn upsert_logged(&mut self, fe: &Frontend, stats: &mut Stats) {
        match self.upsert(fe) {
            Ok(wrote) => {
                self.failed.remove(&fe.key);
                if wrote {
                    stats.upserted += 1;
                }
            }
            Err(error) => {
                stats.failed += 1;
                self.failed.insert(fe.key);
                warn!(frontend = %fe.key, service = %fe.service, %error,
                      "frontend could not be programmed; removed it so no half-written state stays, will retry");
            }
        }
    }

    fn delete_logged(&mut self, key: &ServiceKey, stats: &mut Stats) {
        match self.delete(key) {
            Ok(true) => stats.deleted += 1,
            Ok(false) => {}
            Err(error) => {
                stats.failed += 1;
                warn!(frontend = %describe(key), %error, "frontend could not be removed");
            }
        }
    }

    /// Program one frontend. Returns whether anything was written. On
    /// failure (a full map, say) the frontend is taken out entirely rather
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
                .max(acquired.len());
            let rev_nat = old.as_ref().map(|p| p.rev_nat_id).or(new_rev_nat);
            // Either generation may hold (part of) a table: the live one and
            // the one being written.
            let mut table_size = old
                .as_ref()
                .and_then(|p| p.maglev.as_ref())
                .map_or(0, |t| t.size);
            if master_key.scope == SCOPE_EXTERNAL {
                table_size = table_size.max(self.maglev_size.get());
            }
            let tables = if table_size == 0 {
                Vec::new()
            } else {
                vec![(0, table_size), (1, table_size)]
            };
            self.take_down(&master_key, most_slots, rev_nat, &tables, true);
            if let Some(old) = old {
                self.release_all(&old.slots);
            }
            self.release_all(&acquired);
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
        let name = service_name(fe);
        let flags = base_flags(fe);

        let keys = unique_backends(fe, master_key.proto);
        if keys.len() > u16::MAX as usize {
            return Err(Error::TooManyBackends {
                frontend: fe.key.to_string(),
                count: keys.len(),
            });
        }
        // 1. Backends first: every id a slot will name must exist.
        for key in keys {
            acquired.push(self.acquire_backend(key)?);
        }

        let old = self.frontends.get(&master_key).cloned();
        let old_slots = old.as_ref().map(|p| p.slots.clone()).unwrap_or_default();
        let slots = assign_slots(&old_slots, acquired);

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
            self.maps
                .put_rev_nat(rev_nat_id, &rev_nat_value(&master_key), &name)?;
            wrote = true;
        }

        // 2. Slots that changed.
        for (i, id) in slots.iter().enumerate() {
            if old_slots.get(i) == Some(id) {
                continue;
            }
            self.maps
                .put_service(&slot_key(&master_key, i + 1), &slot_value(*id, rev_nat_id))?;
            wrote = true;
        }

        // 3. The Maglev table, into the generation not in use.
        let old_table = old.as_ref().and_then(|p| p.maglev.clone());
        let table = self.write_table(&master_key, rev_nat_id, &slots, old_table.as_ref())?;
        wrote |= table != old_table;

        // 4. The master entry.
        let master_changed = old.as_ref().is_none_or(|p| {
            p.slots.len() != slots.len()
                || p.affinity_timeout != fe.affinity_timeout
                || p.flags != flags
                || p.maglev != table
        });
        if master_changed {
            let value = master_value(
                slots.len() as u16,
                rev_nat_id,
                fe.affinity_timeout,
                flags,
                table.as_ref(),
            );
            self.maps.put_service(&master_key, &value)?;
            wrote = true;
        }

        // 5. Slots beyond the new count.
        for slot in slots.len()..old_slots.len() {
            self.maps.delete_service(&slot_key(&master_key, slot + 1))?;
            wrote = true;
        }

        // 6. The table generation no master entry names any more.
        if let Some(old_table) = &old_table {
            if table.as_ref().map(|t| t.generation) != Some(old_table.generation) {
                self.delete_table(rev_nat_id, old_table.generation, old_table.size)?;
            }
        }

        // From here on the frontend is fully written; what follows is
        // housekeeping and must not take the service down if it fails.
        self.frontends.insert(
            master_key,
            Programmed {
                rev_nat_id,
                slots: slots.clone(),
                affinity_timeout: fe.affinity_timeout,
                flags,
                maglev: table,
                name,
            },
        );
        acquired.clear();

        // 7. Affinity entries pointing at backends that left, and the old
        // slots' references (backends nobody uses go last).
        let removed: HashSet<u32> = old_slots
            .iter()
            .filter(|id| !slots.contains(id))
            .copied()
            .collect();
        if let Some(old) = &old {
            if old.affinity_timeout != fe.affinity_timeout {
                self.purges.all(rev_nat_id);
            } else if fe.affinity_timeout != 0 && !removed.is_empty() {
                self.purges.backends(rev_nat_id, &removed);
            }
        }
        self.release_all(&old_slots);
        Ok(wrote)
    }

    /// Writes the Maglev table an external frontend with backend `slots`
    /// needs, unless the live one (`old`) already is it, and returns the
    /// table the master entry must name (`None`: no table, for internal
    /// frontends and frontends without backends). A new table goes into the
    /// generation `old` does not use, so the datapath keeps reading a
    /// complete table until the master entry flips.
    fn write_table(
        &mut self,
        master_key: &ServiceKey,
        rev_nat_id: u16,
        slots: &[u32],
        old: Option<&LiveTable>,
    ) -> Result<Option<LiveTable>> {
        if master_key.scope != SCOPE_EXTERNAL || slots.is_empty() {
            return Ok(None);
        }
        let mut ids = slots.to_vec();
        ids.sort_unstable();
        let size = self.maglev_size.get();
        if let Some(old) = old.filter(|t| t.size == size && t.ids == ids) {
            return Ok(Some(old.clone()));
        }
        let generation = old.map_or(0, |t| 1 - t.generation);
        let table = self.table_for(&ids);
        for (i, chunk) in chunk_values(&table) {
            if let Err(e) = self
                .maps
                .put_maglev_chunk(&maglev_key(rev_nat_id, generation, i), &chunk)
            {
                // Most likely the Maglev map is full (its size bounds how many
                // external frontends get a table). Serving the frontend with
                // uniform random choice beats not serving it: the master
                // entry goes out without a table, and what was written of
                // this one is removed again.
                warn!(
                    frontend = %describe(master_key),
                    error = %e,
                    "no room for a Maglev table: balancing this frontend uniformly at random"
                );
                for written in 0..i {
                    let _ = self
                        .maps
                        .delete_maglev_chunk(&maglev_key(rev_nat_id, generation, written));
                }
                return Ok(None);
            }
        }
        Ok(Some(LiveTable {
            generation,
            size,
            ids,
        }))
    }

    /// Deletes every chunk of a table of `size` entries.
    fn delete_table(&mut self, rev_nat_id: u16, generation: u8, size: u32) -> Result<()> {
        for chunk in 0..maglev::chunks_for(size) {
            self.maps
                .delete_maglev_chunk(&maglev_key(rev_nat_id, generation, chunk))?;
        }
        Ok(())
    }

    /// Remove one frontend: master entry first so no new connection picks
    /// it, then its slots, reverse-NAT entry, Maglev table and unused
    /// backends. If the master entry cannot be removed, nothing else is
    /// touched and the frontend stays known, so a later call can try again.
    fn delete(&mut self, master_key: &ServiceKey) -> Result<bool> {
        let Some(old) = self.frontends.get(master_key).cloned() else {
            return Ok(false);
        };
        self.maps.delete_service(master_key)?;
        self.frontends.remove(master_key);
        let tables: Vec<(u8, u32)> = old.maglev.iter().map(|t| (t.generation, t.size)).collect();
        self.take_down(
            master_key,
            old.slots.len(),
            Some(old.rev_nat_id),
            &tables,
            false,
        );
        self.release_all(&old.slots);
        Ok(true)
    }

    /// Best-effort removal of a frontend's entries (its master entry is
    /// already gone unless `with_master`), including the Maglev `tables`
    /// (generation, size) of its reverse-NAT id. Slots and chunks left
    /// behind by a failure are harmless without a master entry naming them
    /// and are swept as orphans on restart.
    fn take_down(
        &mut self,
        master: &ServiceKey,
        slots: usize,
        rev_nat: Option<u16>,
        tables: &[(u8, u32)],
        with_master: bool,
    ) {
        if with_master {
            if let Err(error) = self.maps.delete_service(master) {
                warn!(frontend = %describe(master), %error, "master entry could not be removed");
            }
        }
        for slot in 1..=slots {
            if let Err(error) = self.maps.delete_service(&slot_key(master, slot)) {
                debug!(frontend = %describe(master), slot, %error, "slot could not be removed");
            }
        }
        if let Some(id) = rev_nat {
            for &(generation, size) in tables {
                if let Err(error) = self.delete_table(id, generation, size) {
                    warn!(frontend = %describe(master), generation, %error,
                          "Maglev table could not be removed");
                }
            }
        }
        if let Some(id) = rev_nat {
            if let Err(error) = self.maps.delete_rev_nat(id) {
                warn!(frontend = %describe(master), rev_nat_id = id, %error,
                      "reverse-NAT entry could not be removed");
            }
            // Affinity entries of the old frontend must not carry over to
            // whichever frontend gets this id next.
            self.purges.all(id);
            self.rev_nat_ids.free(id as u32);
        }
    }

    /// Take a reference on the backend entry for `key`, allocating an id if
    /// it is new. Returns the id and whether the entry still has to be
    /// written to the map.
    fn reserve_backend(&mut self, key: BackendKey) -> Result<(u32, bool)> {
        if let Some(entry) = self.backends.get_mut(&key) {
            entry.refs += 1;
            return Ok((entry.id, false));
        }
        let id = self
            .backend_ids
            .allocate()
            .ok_or(Error::IdsExhausted("backend"))?;
        self.backends.insert(key, BackendEntry { id, refs: 1 });
        self.backend_by_id.insert(id, key);
        Ok((id, true))
    }

    fn acquire_backend(&mut self, key: BackendKey) -> Result<u32> {
        let (id, new) = self.reserve_backend(key)?;
        if new {
            if let Err(e) = self.maps.put_backend(id, &backend_value(&key)) {
                self.backends.remove(&key);
                self.backend_by_id.remove(&id);
                self.backend_ids.free(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Drop one reference per id; backends nobody uses are deleted. Keeps
    /// going past errors: a backend left in the map is only wasted space,
    /// and the next sync sweeps it.
    fn release_all(&mut self, ids: &[u32]) {
        for id in ids {
            let Some(key) = self.backend_by_id.get(id).copied() else {
                continue;
            };
            let Some(entry) = self.backends.get_mut(&key) else {
                continue;
            };
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs > 0 {
                continue;
            }
            if let Err(error) = self.maps.delete_backend(*id) {
                warn!(backend_id = id, %error, "unused backend could not be removed");
                continue;
            }
            self.backends.remove(&key);
            self.backend_by_id.remove(id);
            self.backend_ids.free(*id);
        }
    }

    fn flush_purges(&mut self, stats: &mut Stats) {
        if self.purges.is_empty() {
            return;
        }
        let purges = std::mem::take(&mut self.purges);
        if let Err(error) = self.maps.purge_affinity(&purges) {
            // Stale affinity only costs stickiness accuracy: the datapath
            // checks that a remembered backend still sits in its slot.
            stats.failed += 1;
            warn!(%error, "affinity entries could not be purged");
        }
    }

    /// Remove what an earlier run left that belongs to nothing. Runs before
    /// any write, so keys and ids it frees cannot collide with new ones.
    fn sweep_orphans(&mut self, stats: &mut Stats) {
        let mut swept = Stats::default();
        for key in std::mem::take(&mut self.orphans.slots) {
            match self.maps.delete_service(&key) {
                Ok(()) => swept.deleted += 1,
                Err(error) => {
                    swept.failed += 1;
                    warn!(frontend = %describe(&key), slot = key.backend_slot, %error,
                          "stale slot could not be removed");
                }
            }
        }
        for key in std::mem::take(&mut self.orphans.chunks) {
            match self.maps.delete_maglev_chunk(&key) {
                Ok(()) => swept.deleted += 1,
                Err(error) => {
                    swept.failed += 1;
                    warn!(rev_nat_id = key.rev_nat_id, generation = key.generation,
                          chunk = key.chunk, %error, "stale Maglev chunk could not be removed");
                }
            }
        }
        for id in std::mem::take(&mut self.orphans.rev_nats) {
            match self.maps.delete_rev_nat(id) {
                Ok(()) => swept.deleted += 1,
                Err(error) => {
                    swept.failed += 1;
                    warn!(rev_nat_id = id, %error, "stale reverse-NAT entry could not be removed");
                }
            }
            self.purges.all(id);
            self.rev_nat_ids.free(id as u32);
        }
        stats.failed += swept.failed;
        if swept.deleted > 0 {
            debug!(
                entries = swept.deleted,
                "removed orphaned entries from pinned maps"
            );
        }
    }

    /// Recount backend references from the programmed frontends and delete
    /// backends nobody points at (and orphans found at adoption).
    fn sweep_unreferenced(&mut self, stats: &mut Stats) {
        let mut refs: HashMap<u32, u32> = HashMap::new();
        for p in self.frontends.values() {
            for id in &p.slots {
                *refs.entry(*id).or_default() += 1;
            }
        }
        // Slots recorded as holes, and pinned tables that could not be
        // checked, may still name an orphan backend in the map; keep
        // orphans until every one of them has been rewritten.
        let holes = self
            .frontends
            .values()
            .any(|p| p.slots.contains(&0) || p.maglev.as_ref().is_some_and(|t| t.ids.is_empty()));
        let mut unused = if holes {
            Vec::new()
        } else {
            std::mem::take(&mut self.orphans.backends)
        };
        for entry in self.backends.values_mut() {
            entry.refs = refs.get(&entry.id).copied().unwrap_or(0);
            if entry.refs == 0 {
                unused.push(entry.id);
            }
        }
        for id in unused {
            if let Err(error) = self.maps.delete_backend(id) {
                stats.failed += 1;
                warn!(backend_id = id, %error, "unused backend could not be removed");
                continue;
            }
            if let Some(key) = self.backend_by_id.remove(&id) {
                self.backends.remove(&key);
            }
            self.backend_ids.free(id);
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
