//! Every map of the datapath, pinned by name under the agent's bpffs
//! directory so they survive agent restarts. Key and value layouts are in
//! `gangplank-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use gangplank_common::{
    Affinity, AffinityKey, Backend, Config, CtEntry, CtKey, Device, MaglevChunk, MaglevKey,
    NodeAddr, RevNat, ServiceKey, ServiceName, ServiceValue, SockRevNat, SockRevNatKey,
    AFFINITY_MAP_SIZE, BACKENDS_MAP_SIZE, CT_MAP_SIZE, DEVICES_MAP_SIZE, MAGLEV_MAP_SIZE,
    NODE_ADDRS_MAP_SIZE, REV_NAT_MAP_SIZE, SERVICES_MAP_SIZE, SERVICE_NAMES_MAP_SIZE,
    SOCK_REV_NAT_MAP_SIZE,
};

// The maps the agent updates while programs read them are not
// preallocated: a preallocated hash map recycles a replaced element at
// once, so a reader could see another key's value; without preallocation
// elements are freed after an RCU grace period and a reader always sees a
// whole old or a whole new value.

/// Frontends and their backend slots, see [`ServiceKey`].
#[map]
pub static GP_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(SERVICES_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Backends by id.
#[map]
pub static GP_BACKENDS: HashMap<u32, Backend> =
    HashMap::pinned(BACKENDS_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Frontend address by reverse-NAT id.
#[map]
pub static GP_REV_NAT: HashMap<u16, RevNat> = HashMap::pinned(REV_NAT_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Which backend each socket was sent to, to undo the translation on the
/// way back. LRU: entries of closed sockets age out by themselves.
#[map]
pub static GP_SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNat> =
    LruHashMap::pinned(SOCK_REV_NAT_MAP_SIZE, 0);

/// `sessionAffinity: ClientIP` state.
#[map]
pub static GP_AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::pinned(AFFINITY_MAP_SIZE, 0);

/// Human-readable frontend names for `gangplank service list`. Never read by
/// the datapath: it lives here so that it is created and pinned with the
/// other maps.
#[map]
pub static GP_SVC_NAMES: HashMap<u16, ServiceName> =
    HashMap::pinned(SERVICE_NAMES_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Maglev lookup tables of external frontends, in chunks (see
/// [`MaglevKey`]). Not preallocated: tables are written while read.
#[map]
pub static GP_MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::pinned(MAGLEV_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Connection tracking for traffic translated by the tc/XDP programs. LRU,
/// so a flood of new flows evicts the oldest entries instead of failing;
/// the agent's garbage collector removes expired entries before that.
#[map]
pub static GP_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(CT_MAP_SIZE, 0);

/// The node's addresses: NodePort frontends answer on each of them.
#[map]
pub static GP_NODE_ADDRS: HashMap<u32, NodeAddr> =
    HashMap::pinned(NODE_ADDRS_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Devices the tc/XDP programs run on, with their SNAT source address.
#[map]
pub static GP_DEVICES: HashMap<u32, Device> = HashMap::pinned(DEVICES_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Run-time settings (`--lb-mode`).
#[map]
pub static GP_CONFIG: Array<Config> = Array::pinned(1, 0);
