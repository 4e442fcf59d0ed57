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

/// [`ServiceKey::scope`]: the frontend as seen by everyone.
pub const SCOPE_EXTERNAL: u8 = 0;

/// [`Backend::flags`]: the endpoint is terminating (KEP-1669 fallback).
pub const BACKEND_FLAG_TERMINATING: u8 = 1;

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
    /// [`SCOPE_EXTERNAL`] (traffic-policy scopes come with NodePort).
    pub scope: u8,
    pub _pad: [u8; 2],
}

impl ServiceKey {
    pub const fn new(address: u32, port: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address,
            port,
            backend_slot,
            proto,
            scope: SCOPE_EXTERNAL,
            _pad: [0; 2],
        }
    }
}

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slots `1..=count`: the backend id; master entry: 0.
    pub backend_id: u32,
    /// Master entry: number of backend slots (0 means "reject").
    pub count: u16,
    /// Master entry: index into the reverse-NAT map.
    pub rev_nat_id: u16,
    /// Master entry: `sessionAffinity: ClientIP` timeout in seconds, 0 = off.
    pub affinity_timeout: u32,
    pub flags: u16,
    pub _pad: u16,
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
};
