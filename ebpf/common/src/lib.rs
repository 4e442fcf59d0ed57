//! Map keys, values and sizes shared by gangplank's eBPF programs and its
//! userspace agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel and
//! userspace agree on the layout byte for byte, and no implicit hole can leak
//! uninitialised stack into a map key (which would make lookups miss).
//! Addresses and ports are kept in network byte order, exactly as they appear
//! in `struct bpf_sock_addr`, so the datapath never has to swap bytes.
#![no_std]

/// Frontend entries: one slot-0 entry per `{vip, port, proto, scope}` plus
/// one entry per backend slot. 10,000 services with 10 endpoints and two
/// ports fit with room to spare.
pub const SERVICES_MAP_SIZE: u32 = 262_144;
/// Backends, shared by every frontend that points at the same address.
pub const BACKENDS_MAP_SIZE: u32 = 262_144;
/// Reverse-NAT entries: one per frontend.
pub const REV_NAT_MAP_SIZE: u32 = 65_536;
/// Per-socket reverse translation for `recvmsg4`/`getpeername4` (LRU).
pub const SOCK_REV_NAT_MAP_SIZE: u32 = 262_144;
/// Session affinity entries (LRU).
pub const AFFINITY_MAP_SIZE: u32 = 65_536;
/// Frontend names for `gangplank service list`; never read by the datapath.
pub const SERVICE_NAMES_MAP_SIZE: u32 = 65_536;
/// Longest "namespace/name:port" stored in [`ServiceName`].
pub const SERVICE_NAME_LEN: usize = 120;

/// IANA protocol numbers, as used in [`ServiceKey::proto`].
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// [`ServiceKey::scope`]: what the socket hooks look up, for traffic that
/// starts on the node or in its pods. ClusterIP entries hold the endpoints
/// `internalTrafficPolicy` allows; NodePort, LoadBalancer and external-IP
/// entries hold every ready endpoint (kube-proxy's "short circuit": in-cluster
/// clients of an `externalTrafficPolicy: Local` service are not limited to
/// node-local endpoints).
pub const SCOPE_INTERNAL: u8 = 0;
/// [`ServiceKey::scope`]: what the tc/XDP programs look up, for traffic that
/// arrives on the node's devices: NodePort, LoadBalancer and external-IP
/// frontends, with the endpoints `externalTrafficPolicy` allows.
pub const SCOPE_EXTERNAL: u8 = 1;

/// NodePort frontends are keyed with this address: they answer on every
/// address in [`NodeAddrs`](NODE_ADDRS_MAP_SIZE) (the datapath checks the
/// destination is one of the node's addresses, then looks up this key).
pub const NODEPORT_ADDRESS: u32 = 0;

/// [`Backend::flags`]: the endpoint is terminating (KEP-1669 fallback).
pub const BACKEND_FLAG_TERMINATING: u8 = 1;
/// [`Backend::flags`]: the endpoint runs on this node (its EndpointSlice
/// `nodeName` is the agent's `--node-name`): reached without SNAT or DSR.
pub const BACKEND_FLAG_LOCAL: u8 = 2;

/// [`ServiceValue::flags`] (master entry): external lookups use the Maglev
/// table of this service instead of a random slot. The master entry's
/// `backend_id` then holds the table size (a prime).
pub const SVC_FLAG_MAGLEV: u16 = 1;
/// [`ServiceValue::flags`]: which of the two Maglev table generations is
/// live (see [`MaglevKey::generation`]). Writers fill the other generation,
/// then flip this bit in the master entry, then delete the old one.
pub const SVC_FLAG_MAGLEV_GEN1: u16 = 2;
/// [`ServiceValue::flags`]: `externalTrafficPolicy: Local`. Only local
/// backends are listed; with none the traffic is dropped (not rejected).
pub const SVC_FLAG_LOCAL: u16 = 4;
/// [`ServiceValue::flags`]: this is a NodePort frontend (key address is
/// [`NODEPORT_ADDRESS`]).
pub const SVC_FLAG_NODEPORT: u16 = 8;

/// Maglev lookup tables are stored in chunks of this many backend ids.
pub const MAGLEV_CHUNK: usize = 1024;
/// Default Maglev table size (a prime, as Maglev requires; Cilium's default).
pub const MAGLEV_DEFAULT_SIZE: u32 = 16_381;
/// Largest table size the datapath accepts (keeps the chunk index bounded).
pub const MAGLEV_MAX_SIZE: u32 = 131_071;
/// Maglev chunks: 4,096 services with the default table size.
pub const MAGLEV_MAP_SIZE: u32 = 65_536;

/// Conntrack entries (LRU): two per translated flow.
pub const CT_MAP_SIZE: u32 = 262_144;
/// Node addresses NodePort answers on.
pub const NODE_ADDRS_MAP_SIZE: u32 = 256;
/// Devices the tc/XDP programs run on.
pub const DEVICES_MAP_SIZE: u32 = 64;

/// [`AffinityKey::client`] bit that marks an IPv4 client address (external
/// traffic) rather than a network-namespace cookie (socket hooks): the low
/// 32 bits are then the address in network byte order.
pub const AFFINITY_CLIENT_IP: u64 = 1 << 63;

/// SNAT source ports for flows to endpoints on other nodes: above the
/// kernel's default ephemeral range (32768-60999) so they never collide with
/// the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Conntrack lifetimes in seconds (Cilium's and the kernel's defaults).
pub const CT_TIMEOUT_TCP_SYN: u32 = 60;
pub const CT_TIMEOUT_TCP_ESTABLISHED: u32 = 21_600;
/// After a FIN or RST: long enough for the last ACKs and retransmissions.
pub const CT_TIMEOUT_TCP_CLOSING: u32 = 10;
pub const CT_TIMEOUT_UDP: u32 = 60;
pub const CT_TIMEOUT_OTHER: u32 = 60;

/// [`CtKey::dir`]: a packet from the client to a frontend, seen on the
/// device's ingress (the original direction).
pub const CT_DIR_IN: u8 = 0;
/// [`CtKey::dir`]: a reply from a remote backend to the node's SNAT address
/// and port, seen on ingress.
pub const CT_DIR_REPLY_SNAT: u8 = 1;
/// [`CtKey::dir`]: a reply from a local backend to the client, seen on the
/// device's egress (no SNAT was done, or DSR).
pub const CT_DIR_REPLY_OUT: u8 = 2;

/// [`CtEntry::flags`]: after translation, send the packet out through the
/// FIB (another node or the client) instead of up the local stack.
pub const CT_FLAG_REDIRECT: u16 = 1;
/// [`CtEntry::flags`]: forward with the DSR IPv4 option (TCP SYN and every
/// UDP packet), so the backend's node can answer the client directly.
pub const CT_FLAG_DSR: u16 = 2;
/// [`CtEntry::flags`]: the source was rewritten (SNAT to a node address).
pub const CT_FLAG_SNAT: u16 = 4;
/// [`CtEntry::flags`]: a packet in the other direction was seen.
pub const CT_FLAG_SEEN_REPLY: u16 = 8;
/// [`CtEntry::flags`]: a RST was seen, or a FIN in each direction; the
/// entry lives for [`CT_TIMEOUT_TCP_CLOSING`] more seconds.
pub const CT_FLAG_CLOSING: u16 = 16;
/// [`CtEntry::flags`]: this entry's direction sent a FIN.
pub const CT_FLAG_FIN: u16 = 32;
/// [`CtEntry::flags`]: the other direction sent a FIN (a half-closed
/// connection is not closing: the other side may still send for long).
pub const CT_FLAG_PEER_FIN: u16 = 64;

/// The DSR IPv4 option, as Cilium encodes it: type (copied flag | 0x1a),
/// length 8, service port, service address.
pub const DSR_OPT_TYPE: u8 = 0x9a;
pub const DSR_OPT_LEN: u8 = 8;

/// `--lb-mode`, read by the datapath from a load-time constant.
pub const LB_MODE_SNAT: u8 = 0;
pub const LB_MODE_DSR: u8 = 1;
/// DSR for TCP, SNAT for UDP.
pub const LB_MODE_HYBRID: u8 = 2;

/// Errno the socket hooks hand back when a service has no backend, the same
/// error a kube-proxy `REJECT` rule produces for TCP.
pub const ECONNREFUSED: i32 = 111;

/// Key of the services map.
///
/// `backend_slot == 0` is the service's master entry ([`ServiceValue::count`],
/// flags, reverse-NAT id); slots `1..=count` each name one backend. Writers
/// fill slots first and the master entry last, so a reader that found the
/// master entry always finds every slot it points to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend IPv4 address, network byte order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    /// 0 for the master entry, 1..=count for backend slots.
    pub backend_slot: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`]: the same port over TCP and UDP are
    /// different frontends.
    pub proto: u8,
    /// [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl ServiceKey {
    /// An internal-scope key (the socket hooks' view).
    pub const fn new(address: u32, port: u16, proto: u8, backend_slot: u16) -> Self {
        Self::scoped(address, port, proto, SCOPE_INTERNAL, backend_slot)
    }

    pub const fn scoped(address: u32, port: u16, proto: u8, scope: u8, backend_slot: u16) -> Self {
        Self {
            address,
            port,
            backend_slot,
            proto,
            scope,
            _pad: [0; 2],
        }
    }
}

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slots `1..=count`: the backend id. Master entry: the Maglev table
    /// size when [`SVC_FLAG_MAGLEV`] is set, else 0.
    pub backend_id: u32,
    /// Master entry: number of backend slots (0 means "reject").
    pub count: u16,
    /// Master entry: index into the reverse-NAT map.
    pub rev_nat_id: u16,
    /// Master entry: `sessionAffinity: ClientIP` timeout in seconds, 0 = off.
    pub affinity_timeout: u32,
    /// Master entry: `SVC_FLAG_*`.
    pub flags: u16,
    pub _pad: u16,
}

/// Key of the Maglev map: one chunk of one service's lookup table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    /// The external-scope master entry's `rev_nat_id`.
    pub rev_nat_id: u16,
    /// 0 or 1: the table generation ([`SVC_FLAG_MAGLEV_GEN1`]).
    pub generation: u8,
    pub _pad: u8,
    /// Which [`MAGLEV_CHUNK`]-sized piece of the table.
    pub chunk: u32,
}

/// Value of the Maglev map: backend ids for table positions
/// `chunk * MAGLEV_CHUNK ..`; positions past the table size are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub backend_ids: [u32; MAGLEV_CHUNK],
}

/// Value of the node-addresses map (keyed by a `u32` IPv4 address in
/// network byte order): addresses NodePort frontends answer on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// Index of the interface holding the address (informational).
    pub ifindex: u32,
}

/// Value of the devices map (keyed by a `u32` ifindex): the devices the
/// tc/XDP programs are attached to, with the address used as SNAT source
/// for flows leaving through them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// Primary IPv4 address of the device, network byte order (0: none).
    pub address: u32,
}

/// Key of the conntrack map: a packet's 5-tuple as seen on the wire at the
/// point of lookup, and which direction it represents.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: u16,
}

/// Value of the conntrack map: how to rewrite a matching packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// New source address and port (equal to the old ones when unchanged).
    pub new_saddr: u32,
    /// New destination address and port.
    pub new_daddr: u32,
    pub new_sport: u16,
    pub new_dport: u16,
    /// `CT_DIR_IN` entries: the backend chosen; checked against the
    /// backends map so a flow leaves a backend that is gone. 0 otherwise.
    pub backend_id: u32,
    /// `bpf_ktime_get_ns() / 1e9` after which the entry is dead; the agent's
    /// garbage collector deletes dead entries.
    pub expires: u32,
    /// The frontend's reverse-NAT id (for ICMP errors and `status`).
    pub rev_nat_id: u16,
    /// `CT_FLAG_*`.
    pub flags: u16,
}

/// Value of the config map (a one-element array): settings the agent may
/// change at run time without reloading programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// `LB_MODE_*`.
    pub lb_mode: u8,
    pub _pad: [u8; 7],
}

/// Value of the backends map, keyed by a `u32` backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Endpoint IPv4 address, network byte order.
    pub address: u32,
    /// Endpoint port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_FLAG_*`.
    pub flags: u8,
}

/// Value of the reverse-NAT map, keyed by a `u16` reverse-NAT id: the
/// frontend a translated flow must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat {
    /// Frontend address, network byte order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Key of the per-socket reverse translation map: which backend a given
/// socket was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie()` of the client socket.
    pub cookie: u64,
    /// Backend address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Value of the per-socket reverse translation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat {
    /// Frontend address, network byte order.
    pub address: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    /// Checked against the reverse-NAT map so that an entry that outlived its
    /// service is not used.
    pub rev_nat_id: u16,
}

/// Key of the session affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The client: its network namespace cookie. The socket hooks run before
    /// the source address is chosen, and every pod has its own namespace, so
    /// this identifies a client as `ClientIP` affinity means it.
    /// External traffic (tc/XDP) uses `AFFINITY_CLIENT_IP | address`.
    pub client: u64,
    pub rev_nat_id: u16,
    pub _pad0: u16,
    pub _pad1: u32,
}

/// Value of the session affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    pub backend_id: u32,
    /// The slot the backend was found in: on reuse the datapath checks that
    /// the slot still holds this backend, so a stale entry can never send
    /// a client to another service's pod after ids were reused.
    pub slot: u16,
    pub _pad: u16,
    /// `bpf_ktime_get_ns()` of the last connection that used the entry.
    pub last_used_ns: u64,
}

/// Value of the service names map (keyed by reverse-NAT id): a NUL-padded
/// "namespace/name:port" for humans.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub name: [u8; SERVICE_NAME_LEN],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made only of integers, with
    // every padding byte spelled out as a field: any bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNat {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for MaglevChunk {}
    unsafe impl aya::Pod for NodeAddr {}
    unsafe impl aya::Pod for Device {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for Config {}
}

// Layouts the kernel side relies on; a change here must be deliberate.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 12);
    assert!(core::mem::size_of::<ServiceValue>() == 16);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<RevNat>() == 8);
    assert!(core::mem::size_of::<SockRevNatKey>() == 16);
    assert!(core::mem::size_of::<SockRevNat>() == 8);
    assert!(core::mem::size_of::<AffinityKey>() == 16);
    assert!(core::mem::size_of::<Affinity>() == 16);
    assert!(core::mem::size_of::<ServiceName>() == SERVICE_NAME_LEN);
    assert!(core::mem::size_of::<MaglevKey>() == 8);
    assert!(core::mem::size_of::<MaglevChunk>() == 4 * MAGLEV_CHUNK);
    assert!(core::mem::size_of::<NodeAddr>() == 4);
    assert!(core::mem::size_of::<Device>() == 4);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtEntry>() == 24);
    assert!(core::mem::size_of::<Config>() == 8);
};
