//! Connection tracking for the tc/XDP load balancer: one entry per
//! direction of a translated flow, in an LRU map; lifetimes follow TCP
//! state (SYN, established, closing) or an idle timeout for UDP.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use gangplank_common::{
    CtEntry, CtKey, CT_FLAG_CLOSING, CT_FLAG_FIN, CT_FLAG_PEER_FIN, CT_FLAG_SEEN_REPLY,
    CT_TIMEOUT_OTHER, CT_TIMEOUT_TCP_CLOSING, CT_TIMEOUT_TCP_ESTABLISHED, CT_TIMEOUT_TCP_SYN,
    CT_TIMEOUT_UDP, PROTO_TCP, PROTO_UDP,
};

use crate::headers::{TCP_FIN, TCP_RST};
use crate::maps::GP_CT;

/// `BPF_NOEXIST`: create only.
pub const BPF_NOEXIST: u64 = 1;

/// Seconds on the clock the agent's garbage collector uses as well
/// (CLOCK_MONOTONIC).
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: plain helper call.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey {
    CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        dir,
        _pad: 0,
    }
}

/// A live entry for `key`, with the current time: expired entries are
/// treated as absent (the garbage collector may not have reached them
/// yet). The clock is read only on a hit, so the many packets that match
/// nothing do not pay for it.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<(*mut CtEntry, u32)> {
    let entry = GP_CT.get_ptr_mut(key)?;
    let now = now_secs();
    // SAFETY: pointer from a successful lookup, valid for this program run.
    if unsafe { (*entry).expires } < now {
        return None;
    }
    Some((entry, now))
}

/// How long an entry lives after a packet with `tcp_flags` and entry
/// `flags`.
#[inline(always)]
pub fn lifetime(proto: u8, flags: u16) -> u32 {
    match proto {
        PROTO_TCP if flags & CT_FLAG_CLOSING != 0 => CT_TIMEOUT_TCP_CLOSING,
        PROTO_TCP if flags & CT_FLAG_SEEN_REPLY != 0 => CT_TIMEOUT_TCP_ESTABLISHED,
        PROTO_TCP => CT_TIMEOUT_TCP_SYN,
        PROTO_UDP => CT_TIMEOUT_UDP,
        _ => CT_TIMEOUT_OTHER,
    }
}

/// Record a packet of this entry's direction: FIN and RST state,
/// `add_flags` (e.g. seen-reply), and a new expiry.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, proto: u8, tcp_flags: u8, add_flags: u16, now: u32) {
    let mut add = add_flags;
    if proto == PROTO_TCP {
        if tcp_flags & TCP_RST != 0 {
            add |= CT_FLAG_CLOSING;
        }
        if tcp_flags & TCP_FIN != 0 {
            add |= CT_FLAG_FIN;
        }
    }
    update(entry, proto, add, now);
}

/// The same packet, recorded on the entry of the other direction (if it
/// still exists): both entries of a flow then live and end together, so a
/// reply entry (and its SNAT port) never outlives its flow, nor expires
/// under a flow that only sends one way.
///
/// The entry counts only if it belongs to this flow: its translation must
/// lead back to `packet` (the packet being handled, as it arrived): an
/// entry taken over by a newer flow (see [`reclaimable`]) is left alone,
/// and `false` says this flow has no peer any more, so that late packets
/// of a finished flow neither feed the new one nor mark it closing.
#[inline(always)]
pub fn touch_peer(
    key: &CtKey,
    packet: &CtKey,
    proto: u8,
    tcp_flags: u8,
    add_flags: u16,
    now: u32,
) -> bool {
    let Some((entry, _)) = lookup(key) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup, valid for this program run.
    let e = unsafe { &*entry };
    if e.new_saddr != packet.daddr
        || e.new_daddr != packet.saddr
        || e.new_sport != packet.dport
        || e.new_dport != packet.sport
    {
        return false;
    }
    let mut add = add_flags;
    if proto == PROTO_TCP {
        if tcp_flags & TCP_RST != 0 {
            add |= CT_FLAG_CLOSING;
        }
        if tcp_flags & TCP_FIN != 0 {
            add |= CT_FLAG_PEER_FIN;
        }
    }
    update(entry, proto, add, now);
    true
}

/// Add flags and push the expiry out. Writes only when something changes
/// (the expiry has a one-second grain), to keep the cache line quiet under
/// load.
#[inline(always)]
fn update(entry: *mut CtEntry, proto: u8, add: u16, now: u32) {
    // SAFETY: pointer from a successful lookup, valid for this program run;
    // concurrent writers race benignly (both write a sensible value).
    unsafe {
        let mut flags = (*entry).flags | add;
        if flags & (CT_FLAG_FIN | CT_FLAG_PEER_FIN) == CT_FLAG_FIN | CT_FLAG_PEER_FIN {
            flags |= CT_FLAG_CLOSING;
        }
        let expires = now.saturating_add(lifetime(proto, flags));
        if flags != (*entry).flags {
            (*entry).flags = flags;
        }
        if expires != (*entry).expires {
            (*entry).expires = expires;
        }
    }
}

/// Whether the entry at `key` belongs to a flow that is over, so that a new
/// flow may take its place: expired (the garbage collector has not reached
/// it yet), or, for a new TCP connection (`syn`), closed by a RST or a FIN
/// each way, as the kernel lets a SYN reuse a tuple in TIME_WAIT or CLOSE.
/// Without this, at thousands of connections a second, finished flows hold
/// SNAT ports for their closing lifetime and new flows find none free.
#[inline(always)]
pub fn reclaimable(key: &CtKey, syn: bool) -> bool {
    let Some(entry) = GP_CT.get_ptr(key) else {
        // Gone since the failed insert: free.
        return true;
    };
    // SAFETY: pointer from a successful lookup, valid for this program run.
    let (expires, flags) = unsafe { ((*entry).expires, (*entry).flags) };
    expires < now_secs() || (syn && flags & CT_FLAG_CLOSING != 0)
}

/// Create or replace an entry.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry, flags: u64) -> Option<()> {
    GP_CT.insert(key, entry, flags).ok()
}
