//! Socket-level service load balancing (cgroup `sock_addr` hooks).
//!
//! Modelled on Cilium's `bpf_sock.c`: translate at `connect()`/`sendmsg()`
//! time, remember the translation per socket cookie, and undo it for
//! `recvmsg()`/`getpeername()`.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use gangplank_common::{
    Affinity, AffinityKey, Backend, ServiceKey, ServiceValue, SockRevNat, SockRevNatKey,
    ECONNREFUSED, NODEPORT_ADDRESS, PROTO_TCP, PROTO_UDP,
};

use crate::maps::{
    GP_AFFINITY, GP_BACKENDS, GP_NODE_ADDRS, GP_REV_NAT, GP_SERVICES, GP_SOCK_REVNAT,
};

/// cgroup sock_addr verdicts.
const SOCK_PASS: i32 = 1;
const SOCK_REJECT: i32 = 0;

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Why a forward translation did not happen.
enum Skip {
    /// Not a frontend we serve: leave the call alone.
    NotAService,
    /// A frontend without any backend: fail the call like kube-proxy's
    /// REJECT rule would.
    NoBackend,
}

#[cgroup_sock_addr(connect4)]
pub fn gp_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn gp_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn gp_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    // recvmsg4 and getpeername4 must always return 1: the kernel refuses
    // to load a program for these hooks that could return anything else.
    SOCK_PASS
}

#[cgroup_sock_addr(getpeername4)]
pub fn gp_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    SOCK_PASS
}

#[inline(always)]
fn forward(ctx: &SockAddrContext) -> i32 {
    match try_forward(ctx) {
        Ok(()) | Err(Skip::NotAService) => SOCK_PASS,
        Err(Skip::NoBackend) => {
            // Returning 0 alone would make the syscall fail with EPERM;
            // bpf_set_retval (kernel 5.18+) lets us fail it the way an
            // iptables REJECT does, so clients see "connection refused".
            // SAFETY: plain helper call, allowed in connect4/sendmsg4.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            SOCK_REJECT
        }
    }
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext) -> &mut bpf_sock_addr {
    // SAFETY: the kernel hands every sock_addr program a valid context for
    // the duration of the call.
    unsafe { &mut *ctx.sock_addr }
}

#[inline(always)]
fn protocol(sa: &bpf_sock_addr) -> Option<u8> {
    match sa.protocol {
        p if p == PROTO_TCP as u32 => Some(PROTO_TCP),
        p if p == PROTO_UDP as u32 => Some(PROTO_UDP),
        _ => None,
    }
}

#[inline(always)]
fn try_forward(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = sock_addr(ctx);
    let proto = protocol(sa).ok_or(Skip::NotAService)?;
    let address = sa.user_ip4;
    // user_port holds the port in network byte order in its low 16 bits.
    let port = sa.user_port as u16;

    let key = frontend_key(address, port, proto).ok_or(Skip::NotAService)?;
    // SAFETY: values are plain integers and the map is not preallocated,
    // so the element stays whole (old or new, never recycled) while we read.
    // Copy the entry: every later decision then uses one consistent view,
    // and the compiler can see that `count` is not zero below.
    let svc = *unsafe { GP_SERVICES.get(&key) }.ok_or(Skip::NotAService)?;
    let svc = &svc;
    if svc.count == 0 {
        return Err(Skip::NoBackend);
    }

    let backend = match sticky_backend(ctx, &key, svc) {
        Some(backend) => backend,
        None => {
            let (slot, backend_id, backend) = match pick_backend(&key, svc) {
                Ok(found) => found,
                // The writer shrank the service after we copied its master
                // entry: it writes the new master before deleting slots or
                // backends, so one fresh read finds a consistent view.
                Err(_) => {
                    // SAFETY: see above.
                    let fresh = *unsafe { GP_SERVICES.get(&key) }.ok_or(Skip::NotAService)?;
                    if fresh.count == 0 {
                        return Err(Skip::NoBackend);
                    }
                    pick_backend(&key, &fresh)?
                }
            };
            remember_affinity(ctx, svc, backend_id, slot);
            backend
        }
    };

    remember_translation(ctx, svc, &backend, address, port);
    // Keep the verifier's view simple: the context fields are 32-bit wide
    // and must be written as such.
    sa.user_ip4 = backend.address;
    sa.user_port = backend.port as u32;
    Ok(())
}

/// The internal-scope master key for a dialled address: the frontend
/// itself, or the NodePort entry when the address is one of the node's.
#[inline(always)]
fn frontend_key(address: u32, port: u16, proto: u8) -> Option<ServiceKey> {
    let key = ServiceKey::new(address, port, proto, 0);
    // SAFETY: read-only lookups of plain integers.
    if unsafe { GP_SERVICES.get(&key) }.is_some() {
        return Some(key);
    }
    // SAFETY: as above.
    unsafe { GP_NODE_ADDRS.get(&address) }?;
    Some(ServiceKey::new(NODEPORT_ADDRESS, port, proto, 0))
}

/// Uniform random choice among the service's backend slots.
#[inline(always)]
fn pick_backend(key: &ServiceKey, svc: &ServiceValue) -> Result<(u16, u32, Backend), Skip> {
    // SAFETY: plain helper call.
    let rand = unsafe { bpf_get_prandom_u32() };
    // checked_rem: a panic path (even an unreachable one) makes the program
    // end in a call, which the verifier rejects.
    let slot = rand.checked_rem(svc.count as u32).ok_or(Skip::NoBackend)? as u16 + 1;
    let slot_key = ServiceKey::new(key.address, key.port, key.proto, slot);
    // A missing slot or backend means the writer is between steps (or the
    // maps are inconsistent): refuse rather than send traffic astray.
    // SAFETY: see try_forward.
    let slot_val = unsafe { GP_SERVICES.get(&slot_key) }.ok_or(Skip::NoBackend)?;
    let backend_id = slot_val.backend_id;
    // SAFETY: see try_forward.
    let backend = unsafe { GP_BACKENDS.get(&backend_id) }.ok_or(Skip::NoBackend)?;
    Ok((slot, backend_id, *backend))
}

#[inline(always)]
fn affinity_key(ctx: &SockAddrContext, svc: &ServiceValue) -> AffinityKey {
    AffinityKey {
        // SAFETY: plain helper call on our own context.
        client: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        rev_nat_id: svc.rev_nat_id,
        _pad0: 0,
        _pad1: 0,
    }
}

/// The backend this client used last, if `ClientIP` affinity is on and the
/// entry has not timed out.
#[inline(always)]
fn sticky_backend(ctx: &SockAddrContext, key: &ServiceKey, svc: &ServiceValue) -> Option<Backend> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    let entry = GP_AFFINITY.get_ptr_mut(affinity_key(ctx, svc))?;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: pointer from a successful lookup; LRU values stay valid for
    // the duration of the program (RCU).
    let (backend_id, slot, last_used) =
        unsafe { ((*entry).backend_id, (*entry).slot, (*entry).last_used_ns) };
    if now.saturating_sub(last_used) > svc.affinity_timeout as u64 * NSEC_PER_SEC {
        return None;
    }
    // The backend must still be this service's: the agent purges entries
    // of backends it removes, but a connect racing that purge, or an id
    // reused by another service since, is caught here.
    if slot == 0 || slot > svc.count {
        return None;
    }
    let slot_key = ServiceKey::new(key.address, key.port, key.proto, slot);
    // SAFETY: see try_forward.
    let in_slot = unsafe { GP_SERVICES.get(&slot_key) }?;
    if in_slot.backend_id != backend_id {
        return None;
    }
    // SAFETY: see try_forward.
    let backend = unsafe { GP_BACKENDS.get(&backend_id) }?;
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Some(*backend)
}

#[inline(always)]
fn remember_affinity(ctx: &SockAddrContext, svc: &ServiceValue, backend_id: u32, slot: u16) {
    if svc.affinity_timeout == 0 {
        return;
    }
    let key = affinity_key(ctx, svc);
    let value = Affinity {
        backend_id,
        slot,
        _pad: 0,
        // SAFETY: plain helper call.
        last_used_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Failure only loses stickiness for the next connection; nothing to do.
    let _ = GP_AFFINITY.insert(&key, &value, 0);
}

#[inline(always)]
fn remember_translation(
    ctx: &SockAddrContext,
    svc: &ServiceValue,
    backend: &Backend,
    address: u32,
    port: u16,
) {
    let key = SockRevNatKey {
        // SAFETY: plain helper call on our own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        address: backend.address,
        port: backend.port,
        _pad: 0,
    };
    let value = SockRevNat {
        address,
        port,
        rev_nat_id: svc.rev_nat_id,
    };
    // Unconnected UDP calls sendmsg per datagram: skip the write when the
    // entry is already there, as Cilium does, to keep the LRU quiet.
    // SAFETY: see try_forward.
    if let Some(old) = unsafe { GP_SOCK_REVNAT.get(&key) } {
        if *old == value {
            return;
        }
    }
    // Failure only means getpeername/recvmsg show the backend address.
    let _ = GP_SOCK_REVNAT.insert(&key, &value, 0);
}

/// Make a reply (recvmsg) or the peer name (getpeername) show the frontend
/// the socket dialled instead of the backend it was sent to.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let sa = sock_addr(ctx);
    let key = SockRevNatKey {
        // SAFETY: plain helper call on our own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        address: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    // SAFETY: see try_forward.
    let Some(entry) = (unsafe { GP_SOCK_REVNAT.get(&key) }) else {
        return;
    };
    // An entry whose service is gone (or whose id was reused for another
    // frontend) must not rewrite anything.
    // SAFETY: see try_forward.
    let Some(rev) = (unsafe { GP_REV_NAT.get(&entry.rev_nat_id) }) else {
        return;
    };
    // NodePort frontends are stored with address 0 and answer on any node
    // address: the entry holds the address actually dialled.
    if (rev.address != entry.address && rev.address != NODEPORT_ADDRESS) || rev.port != entry.port {
        return;
    }
    sa.user_ip4 = entry.address;
    sa.user_port = entry.port as u32;
}
