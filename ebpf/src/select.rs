//! Frontend lookup and backend choice for traffic arriving on the node's
//! devices: session affinity first, then the service's Maglev table (the
//! same backend for the same flow on every node), else a random slot.

use aya_ebpf::helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use gangplank_common::{
    Affinity, AffinityKey, Backend, MaglevKey, ServiceKey, ServiceValue, AFFINITY_CLIENT_IP,
    MAGLEV_CHUNK, MAGLEV_MAX_SIZE, NODEPORT_ADDRESS, SCOPE_EXTERNAL, SVC_FLAG_MAGLEV,
    SVC_FLAG_MAGLEV_GEN1,
};

use crate::headers::Flow;
use crate::maps::{GP_AFFINITY, GP_BACKENDS, GP_MAGLEV, GP_NODE_ADDRS, GP_SERVICES};

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The external-scope master entry for a packet's destination: the
/// frontend itself (load-balancer IP, external IP), or the NodePort entry
/// when the destination is one of the node's addresses.
#[inline(always)]
pub fn frontend(flow: &Flow) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey::scoped(flow.daddr, flow.dport, flow.proto, SCOPE_EXTERNAL, 0);
    // SAFETY: plain-integer values in a non-preallocated map: the element
    // stays whole while read; copied at once for a consistent view.
    if let Some(svc) = unsafe { GP_SERVICES.get(&key) } {
        return Some((key, *svc));
    }
    // SAFETY: as above.
    unsafe { GP_NODE_ADDRS.get(&flow.daddr) }?;
    let key = ServiceKey::scoped(NODEPORT_ADDRESS, flow.dport, flow.proto, SCOPE_EXTERNAL, 0);
    // SAFETY: as above.
    let svc = *unsafe { GP_SERVICES.get(&key) }?;
    Some((key, svc))
}

/// A flow hash that is the same on every node (no per-node seed): Maglev
/// then sends a flow to the same backend whichever node it arrives at.
/// Murmur3's finaliser over the 5-tuple.
#[inline(always)]
pub fn flow_hash(flow: &Flow) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    h = mix(h ^ flow.saddr);
    h = mix(h ^ flow.daddr);
    h = mix(h ^ ((flow.sport as u32) << 16 | flow.dport as u32));
    mix(h ^ flow.proto as u32)
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The chosen backend.
#[derive(Clone, Copy)]
pub struct Choice {
    pub backend_id: u32,
    pub backend: Backend,
}

/// Choose a backend for a new flow. The caller records the choice for
/// session affinity with [`remember`] once it commits to the flow.
#[inline(always)]
pub fn choose(key: &ServiceKey, svc: &ServiceValue, flow: &Flow) -> Option<Choice> {
    if svc.count == 0 {
        return None;
    }
    if svc.affinity_timeout != 0 {
        if let Some(choice) = sticky(svc, flow) {
            return Some(choice);
        }
    }
    match maglev(svc, flow) {
        Some(choice) => Some(choice),
        None => random_slot(key, svc),
    }
}

/// Record `choice` as this client's backend (`sessionAffinity: ClientIP`).
#[inline(always)]
pub fn remember(svc: &ServiceValue, flow: &Flow, choice: &Choice) {
    if svc.affinity_timeout == 0 {
        return;
    }
    let value = Affinity {
        backend_id: choice.backend_id,
        // Slot 0: chosen by the table, not by slot; reuse is checked
        // against the backend itself (see `sticky`).
        slot: 0,
        _pad: 0,
        // SAFETY: plain helper call.
        last_used_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Failure only loses stickiness for the next flow.
    let _ = GP_AFFINITY.insert(&affinity_key(svc, flow), &value, 0);
}

#[inline(always)]
fn affinity_key(svc: &ServiceValue, flow: &Flow) -> AffinityKey {
    AffinityKey {
        client: AFFINITY_CLIENT_IP | flow.saddr as u64,
        rev_nat_id: svc.rev_nat_id,
        _pad0: 0,
        _pad1: 0,
    }
}

/// The backend this client address used last, if still fresh. The agent
/// purges entries of backends it removes from the service; the protocol
/// check catches an id reused meanwhile for another protocol's backend.
#[inline(always)]
fn sticky(svc: &ServiceValue, flow: &Flow) -> Option<Choice> {
    let entry = GP_AFFINITY.get_ptr_mut(affinity_key(svc, flow))?;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: pointer from a successful lookup, valid for this run.
    let (backend_id, last_used) = unsafe { ((*entry).backend_id, (*entry).last_used_ns) };
    if now.saturating_sub(last_used) > svc.affinity_timeout as u64 * NSEC_PER_SEC {
        return None;
    }
    // SAFETY: see `frontend`.
    let backend = *unsafe { GP_BACKENDS.get(&backend_id) }?;
    if backend.proto != flow.proto {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Some(Choice {
        backend_id,
        backend,
    })
}

/// Look the flow up in the service's live Maglev table.
#[inline(always)]
fn maglev(svc: &ServiceValue, flow: &Flow) -> Option<Choice> {
    if svc.flags & SVC_FLAG_MAGLEV == 0 {
        return None;
    }
    let size = svc.backend_id;
    if size == 0 || size > MAGLEV_MAX_SIZE {
        return None;
    }
    let index = flow_hash(flow).checked_rem(size)?;
    let key = MaglevKey {
        rev_nat_id: svc.rev_nat_id,
        generation: (svc.flags & SVC_FLAG_MAGLEV_GEN1 != 0) as u8,
        _pad: 0,
        chunk: index / MAGLEV_CHUNK as u32,
    };
    let chunk = GP_MAGLEV.get_ptr(&key)?;
    let slot = (index as usize) & (MAGLEV_CHUNK - 1);
    // SAFETY: pointer from a successful lookup; `slot` < MAGLEV_CHUNK.
    let backend_id = unsafe { *(*chunk).backend_ids.get(slot)? };
    if backend_id == 0 {
        return None;
    }
    // SAFETY: see `frontend`.
    let backend = *unsafe { GP_BACKENDS.get(&backend_id) }?;
    Some(Choice {
        backend_id,
        backend,
    })
}

/// Uniform random choice among the backend slots (services without a
/// Maglev table, or a table being replaced).
#[inline(always)]
fn random_slot(key: &ServiceKey, svc: &ServiceValue) -> Option<Choice> {
    // SAFETY: plain helper call.
    let rand = unsafe { bpf_get_prandom_u32() };
    let slot = rand.checked_rem(svc.count as u32)? as u16 + 1;
    let slot_key = ServiceKey::scoped(key.address, key.port, key.proto, key.scope, slot);
    // SAFETY: see `frontend`.
    let backend_id = unsafe { GP_SERVICES.get(&slot_key) }?.backend_id;
    // SAFETY: as above.
    let backend = *unsafe { GP_BACKENDS.get(&backend_id) }?;
    Some(Choice {
        backend_id,
        backend,
    })
}

/// Whether a conntrack entry's backend is still there (same id, same
/// address): when it is gone the flow must choose again.
#[inline(always)]
pub fn backend_alive(backend_id: u32, address: u32, port: u16) -> bool {
    // SAFETY: see `frontend`.
    match unsafe { GP_BACKENDS.get(&backend_id) } {
        Some(b) => b.address == address && b.port == port,
        None => false,
    }
}
