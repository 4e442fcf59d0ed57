//! North-south load balancing: what the tc (and XDP) programs on the
//! node's devices do with a packet.
//!
//! Ingress, in order:
//! 1. a DSR option from another node: remember how to answer the client
//!    directly, strip the option, deliver;
//! 2. a conntrack hit in the original direction: same backend as before;
//! 3. a reply to one of our SNAT ports: translate back, send to the client;
//! 4. a new flow to a frontend: choose a backend; local backends are
//!    reached by DNAT only (the pod sees the client), remote ones by SNAT to
//!    this node (replies come back here) or by DSR (they do not);
//! 5. ICMP errors about translated flows are translated back.
//! Egress: replies of local backends (and of DSR flows) get the frontend
//! as their source; ICMP errors they send are translated likewise.

use gangplank_common::{
    Config, CtEntry, ServiceKey, BACKEND_FLAG_LOCAL, CT_DIR_IN, CT_DIR_REPLY_OUT,
    CT_DIR_REPLY_SNAT, CT_FLAG_CLOSING, CT_FLAG_DSR, CT_FLAG_REDIRECT, CT_FLAG_SEEN_REPLY,
    CT_FLAG_SNAT, DSR_OPT_LEN, DSR_OPT_TYPE, LB_MODE_DSR, LB_MODE_HYBRID, NODEPORT_ADDRESS,
    PROTO_UDP, SCOPE_EXTERNAL, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_FLAG_LOCAL,
};

use crate::conntrack::{self, now_secs, BPF_NOEXIST};
use crate::headers::{
    parse, Flow, IcmpError, Parsed, IP_OFF, IP_OPTIONS, IP_TTL, TCP_ACK, TCP_RST, TCP_SYN,
};
use crate::maps::{GP_CONFIG, GP_DEVICES, GP_NODE_ADDRS, GP_SERVICES};
use crate::nat::{rewrite_flow, rewrite_icmp_error, IcmpRewrite, Rewrite};
use crate::packet::Packet;
use crate::select::{backend_alive, choose, flow_hash, frontend, remember};

/// What to do with the packet.
pub enum Verdict {
    /// Not ours (or nothing to do): let the next program / the stack have it.
    Continue,
    /// Translated for local delivery: hand it to the stack.
    Pass,
    /// Drop it.
    Drop,
    /// Already handed to `bpf_redirect*`: return this value.
    Redirected(i32),
}

/// The DSR IPv4 option (see `DSR_OPT_TYPE`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DsrOpt {
    pub kind: u8,
    pub len: u8,
    pub port: u16,
    pub address: u32,
}

/// What the tc and XDP programs can do differently.
pub trait Forward: Packet {
    /// XDP handles only what ends in local delivery and leaves the rest,
    /// untouched, to tc (which can grow packets and redirect with neighbour
    /// resolution).
    const FAST_PATH: bool;
    /// Send the (already rewritten) packet out through the FIB.
    fn redirect(&mut self, flow: &Flow, ingress_ifindex: u32) -> Verdict;
    /// Insert the DSR option after the base IPv4 header.
    fn push_dsr(&mut self, opt: &DsrOpt) -> Option<()>;
    /// Remove our DSR option (first option of the header).
    fn pop_dsr(&mut self, opt: &DsrOpt) -> Option<()>;
}

#[inline(always)]
fn lb_mode() -> u8 {
    match GP_CONFIG.get(0) {
        Some(Config { lb_mode, .. }) => *lb_mode,
        None => 0,
    }
}

/// Ingress on a device.
#[inline(always)]
pub fn ingress<P: Forward>(p: &mut P, ifindex: u32) -> Verdict {
    match parse(p) {
        Some(Parsed::Flow(flow)) => ingress_flow(p, &flow, ifindex),
        Some(Parsed::IcmpError(icmp)) if !P::FAST_PATH => ingress_icmp(p, &icmp, ifindex),
        _ => Verdict::Continue,
    }
}

#[inline(always)]
fn ingress_flow<P: Forward>(p: &mut P, flow: &Flow, ifindex: u32) -> Verdict {
    if flow.has_options && !P::FAST_PATH {
        if let Some(opt) = p.load::<DsrOpt>(IP_OPTIONS) {
            if opt.kind == DSR_OPT_TYPE && opt.len == DSR_OPT_LEN {
                return dsr_arrival(p, flow, &opt, now_secs());
            }
        }
    }

    // 2. A known flow.
    let in_key = conntrack::key(
        flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, CT_DIR_IN,
    );
    if let Some((entry, now)) = conntrack::lookup(&in_key) {
        // SAFETY: pointer from a successful lookup, valid for this run.
        let ct = unsafe { *entry };
        let reopened = flow.is_tcp()
            && ct.flags & CT_FLAG_CLOSING != 0
            && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if !reopened && backend_alive(ct.backend_id, ct.new_daddr, ct.new_dport) {
            if P::FAST_PATH && ct.flags & CT_FLAG_REDIRECT != 0 {
                return Verdict::Continue;
            }
            // Replies of a DSR flow never come back here: the client's
            // first packet after its SYN is what says "established".
            let established =
                if ct.flags & CT_FLAG_DSR != 0 && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
                    CT_FLAG_SEEN_REPLY
                } else {
                    0
                };
            conntrack::touch(entry, flow.proto, flow.tcp_flags, established, now);
            // The entry the replies use (none on this node for DSR) must
            // live as long: if it is gone (evicted), the flow starts over.
            let peer_alive = ct.flags & CT_FLAG_DSR != 0 || {
                let dir = if ct.flags & CT_FLAG_SNAT != 0 {
                    CT_DIR_REPLY_SNAT
                } else {
                    CT_DIR_REPLY_OUT
                };
                let peer = conntrack::key(
                    ct.new_daddr,
                    ct.new_saddr,
                    ct.new_dport,
                    ct.new_sport,
                    flow.proto,
                    dir,
                );
                conntrack::touch_peer(&peer, &in_key, flow.proto, flow.tcp_flags, 0, now)
            };
            if peer_alive {
                return forward_known(p, flow, &ct, ifindex);
            }
        }
        // The backend is gone (or the client reuses the ports of a closed
        // connection, or the reply entry was evicted): choose again below.
        // A TCP flow that is not at its SYN will be reset by the new
        // backend, which is what the client should see.
    }

    // 3. A reply to one of our SNAT ports (only those are looked up: most
    // packets arriving at a node are not).
    if !P::FAST_PATH && u16::from_be(flow.dport) >= SNAT_PORT_MIN {
        let key = conntrack::key(
            flow.saddr,
            flow.daddr,
            flow.sport,
            flow.dport,
            flow.proto,
            CT_DIR_REPLY_SNAT,
        );
        if let Some((entry, now)) = conntrack::lookup(&key) {
            // SAFETY: as above.
            let ct = unsafe { *entry };
            conntrack::touch(entry, flow.proto, flow.tcp_flags, CT_FLAG_SEEN_REPLY, now);
            // The original direction: client → frontend.
            let peer = conntrack::key(
                ct.new_daddr,
                ct.new_saddr,
                ct.new_dport,
                ct.new_sport,
                flow.proto,
                CT_DIR_IN,
            );
            conntrack::touch_peer(
                &peer,
                &key,
                flow.proto,
                flow.tcp_flags,
                CT_FLAG_SEEN_REPLY,
                now,
            );
            let rw = translation(&ct);
            if rewrite_flow(p, flow, &rw).is_none() {
                return Verdict::Drop;
            }
            return p.redirect(&rewritten(flow, &rw), ifindex);
        }
    }

    // 4. A new flow.
    new_flow(p, flow, ifindex)
}

/// The rewrite a conntrack entry prescribes.
#[inline(always)]
fn translation(ct: &CtEntry) -> Rewrite {
    Rewrite {
        saddr: ct.new_saddr,
        sport: ct.new_sport,
        daddr: ct.new_daddr,
        dport: ct.new_dport,
    }
}

/// The flow as it is after a rewrite (for routing decisions).
#[inline(always)]
fn rewritten(flow: &Flow, rw: &Rewrite) -> Flow {
    Flow {
        saddr: rw.saddr,
        daddr: rw.daddr,
        sport: rw.sport,
        dport: rw.dport,
        ..*flow
    }
}

#[inline(always)]
fn forward_known<P: Forward>(p: &mut P, flow: &Flow, ct: &CtEntry, ifindex: u32) -> Verdict {
    let rw = translation(ct);
    if rewrite_flow(p, flow, &rw).is_none() {
        return Verdict::Drop;
    }
    if ct.flags & CT_FLAG_REDIRECT == 0 {
        return Verdict::Pass;
    }
    if ct.flags & CT_FLAG_DSR != 0 && needs_dsr_option(flow) {
        let opt = dsr_opt(flow);
        if p.push_dsr(&opt).is_none() {
            return Verdict::Drop;
        }
    }
    p.redirect(&rewritten(flow, &rw), ifindex)
}

/// TCP carries the option on its SYN only (the backend's node keeps the
/// state from then on); UDP has no handshake, so every datagram carries it.
#[inline(always)]
fn needs_dsr_option(flow: &Flow) -> bool {
    flow.proto == PROTO_UDP || flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn dsr_opt(flow: &Flow) -> DsrOpt {
    DsrOpt {
        kind: DSR_OPT_TYPE,
        len: DSR_OPT_LEN,
        port: flow.dport,
        address: flow.daddr,
    }
}

#[inline(always)]
fn new_flow<P: Forward>(p: &mut P, flow: &Flow, ifindex: u32) -> Verdict {
    // A RST of no known flow opens nothing (and a RST scan creates no state).
    if flow.is_tcp() && flow.tcp_flags & TCP_RST != 0 {
        return Verdict::Continue;
    }
    let Some((key, svc)) = frontend(flow) else {
        return Verdict::Continue;
    };
    let now = now_secs();
    let local_only = svc.flags & SVC_FLAG_LOCAL != 0;
    let Some(choice) = choose(&key, &svc, flow) else {
        // No backend (or, with externalTrafficPolicy Local, none on this
        // node): drop, so the client's load balancer retries elsewhere.
        return Verdict::Drop;
    };
    let backend = choice.backend;
    let lifetime_flags = 0;
    let expires = now.saturating_add(conntrack::lifetime(flow.proto, lifetime_flags));

    if backend.flags & BACKEND_FLAG_LOCAL != 0 {
        remember(&svc, flow, &choice);
        // Local backend: DNAT only; the reply leaves through our egress.
        let reply = CtEntry {
            new_saddr: flow.daddr,
            new_daddr: flow.saddr,
            new_sport: flow.dport,
            new_dport: flow.sport,
            backend_id: 0,
            expires,
            rev_nat_id: svc.rev_nat_id,
            flags: 0,
        };
        let reply_key = conntrack::key(
            backend.address,
            flow.saddr,
            backend.port,
            flow.sport,
            flow.proto,
            CT_DIR_REPLY_OUT,
        );
        let orig = CtEntry {
            new_saddr: flow.saddr,
            new_daddr: backend.address,
            new_sport: flow.sport,
            new_dport: backend.port,
            backend_id: choice.backend_id,
            expires,
            rev_nat_id: svc.rev_nat_id,
            flags: 0,
        };
        let in_key = conntrack::key(
            flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, CT_DIR_IN,
        );
        // The reply key has no frontend in it: the same client address and
        // port talking to two frontends that share this backend would
        // clash. The key is taken over when it is this flow's own (same
        // frontend) or its flow is over (see `conntrack::reclaimable`): a
        // client reuses a port soon after a connection to another
        // frontend was reset. Only a live flow to another frontend keeps
        // it, and this one is refused rather than steal its replies.
        if conntrack::insert(&reply_key, &reply, BPF_NOEXIST).is_none() {
            let syn = flow.is_tcp() && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            // (`reclaimable` covers an entry gone or expired meanwhile.)
            let take = conntrack::reclaimable(&reply_key, syn)
                || conntrack::lookup(&reply_key).is_some_and(|(old, _)| {
                    // SAFETY: pointer from a successful lookup.
                    let old = unsafe { *old };
                    old.new_saddr == reply.new_saddr && old.new_sport == reply.new_sport
                });
            if !take || conntrack::insert(&reply_key, &reply, 0).is_none() {
                return Verdict::Drop;
            }
        }
        if conntrack::insert(&in_key, &orig, 0).is_none() {
            return Verdict::Drop;
        }
        return forward_known(p, flow, &orig, ifindex);
    }
    if P::FAST_PATH || local_only {
        // XDP: tc will do it. Local policy: remote backends are never
        // listed, so this is a writer bug or a race: do not SNAT.
        return if local_only {
            Verdict::Drop
        } else {
            Verdict::Continue
        };
    }

    // Checked before any state is created for a packet that will be dropped.
    match p.load::<u8>(IP_TTL) {
        Some(ttl) if ttl > 1 => {}
        _ => return Verdict::Drop,
    }
    remember(&svc, flow, &choice);
    let mode = lb_mode();
    // A header already holding more than 32 bytes of options has no room
    // for ours: such (rare) flows are SNATed instead.
    let room = flow.l4_off - IP_OFF + DSR_OPT_LEN as usize <= 60;
    let dsr = room && (mode == LB_MODE_DSR || (mode == LB_MODE_HYBRID && flow.is_tcp()));
    let in_key = conntrack::key(
        flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, CT_DIR_IN,
    );
    if dsr {
        let orig = CtEntry {
            new_saddr: flow.saddr,
            new_daddr: backend.address,
            new_sport: flow.sport,
            new_dport: backend.port,
            backend_id: choice.backend_id,
            expires,
            rev_nat_id: svc.rev_nat_id,
            flags: CT_FLAG_REDIRECT | CT_FLAG_DSR,
        };
        if conntrack::insert(&in_key, &orig, 0).is_none() {
            return Verdict::Drop;
        }
        return forward_known(p, flow, &orig, ifindex);
    }

    // SNAT to this node, from a port of our range that is free for this
    // backend: claimed by creating the reply entry with NOEXIST.
    let Some(snat_addr) = snat_address(flow, ifindex) else {
        return Verdict::Drop;
    };
    let reply = CtEntry {
        new_saddr: flow.daddr,
        new_daddr: flow.saddr,
        new_sport: flow.dport,
        new_dport: flow.sport,
        backend_id: 0,
        expires,
        rev_nat_id: svc.rev_nat_id,
        flags: 0,
    };
    let range = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let hash = flow_hash(flow);
    let syn = flow.is_tcp() && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut snat_port = 0u16;
    // First a free port; failing that, one whose flow is over (see
    // `conntrack::reclaimable`), so that a live flow's port is never taken
    // while a free one may exist.
    let mut attempt = 0u32;
    while attempt < 32 {
        let reclaim = attempt >= 16;
        let candidate =
            SNAT_PORT_MIN + (hash.wrapping_add((attempt % 16).wrapping_mul(7919)) % range) as u16;
        let port = candidate.to_be();
        let key = conntrack::key(
            backend.address,
            snat_addr,
            backend.port,
            port,
            flow.proto,
            CT_DIR_REPLY_SNAT,
        );
        let claimed = if reclaim {
            conntrack::reclaimable(&key, syn) && conntrack::insert(&key, &reply, 0).is_some()
        } else {
            conntrack::insert(&key, &reply, BPF_NOEXIST).is_some()
        };
        if claimed {
            snat_port = port;
            break;
        }
        attempt += 1;
    }
    if snat_port == 0 {
        // Sixteen candidate ports all held by live flows (each tried free,
        // then reclaimable): the range is nearly exhausted
        // for this backend. Dropping lets the client retry with a new port.
        return Verdict::Drop;
    }
    let orig = CtEntry {
        new_saddr: snat_addr,
        new_daddr: backend.address,
        new_sport: snat_port,
        new_dport: backend.port,
        backend_id: choice.backend_id,
        expires,
        rev_nat_id: svc.rev_nat_id,
        flags: CT_FLAG_REDIRECT | CT_FLAG_SNAT,
    };
    if conntrack::insert(&in_key, &orig, 0).is_none() {
        return Verdict::Drop;
    }
    forward_known(p, flow, &orig, ifindex)
}

/// The node address SNATed flows leave with: the device's primary address,
/// or the destination itself when it is a node address (NodePort).
#[inline(always)]
fn snat_address(flow: &Flow, ifindex: u32) -> Option<u32> {
    // SAFETY: plain-integer values, read once.
    if let Some(dev) = unsafe { GP_DEVICES.get(&ifindex) } {
        if dev.address != 0 {
            return Some(dev.address);
        }
    }
    // SAFETY: as above.
    unsafe { GP_NODE_ADDRS.get(&flow.daddr) }?;
    Some(flow.daddr)
}

/// A request forwarded by another node in DSR mode: remember to answer the
/// client from the frontend, strip the option, deliver to the local pod.
#[inline(always)]
fn dsr_arrival<P: Forward>(p: &mut P, flow: &Flow, opt: &DsrOpt, now: u32) -> Verdict {
    // The option must name one of our external frontends: anything else
    // is not a peer node's DSR and must not get to choose our replies'
    // source address.
    if !is_external_frontend(opt.address, opt.port, flow.proto) {
        return Verdict::Drop;
    }
    let key = conntrack::key(
        flow.daddr,
        flow.saddr,
        flow.dport,
        flow.sport,
        flow.proto,
        CT_DIR_REPLY_OUT,
    );
    let entry = CtEntry {
        new_saddr: opt.address,
        new_daddr: flow.saddr,
        new_sport: opt.port,
        new_dport: flow.sport,
        backend_id: 0,
        expires: now.saturating_add(conntrack::lifetime(flow.proto, 0)),
        rev_nat_id: 0,
        flags: CT_FLAG_DSR,
    };
    if conntrack::insert(&key, &entry, 0).is_none() || p.pop_dsr(opt).is_none() {
        return Verdict::Drop;
    }
    Verdict::Pass
}

/// Whether `address:port` is an external frontend of ours (a load-balancer
/// or external IP, or a NodePort of any node: the option then carries the
/// entry node's address, which is not ours).
#[inline(always)]
fn is_external_frontend(address: u32, port: u16, proto: u8) -> bool {
    let exact = ServiceKey::scoped(address, port, proto, SCOPE_EXTERNAL, 0);
    let node_port = ServiceKey::scoped(NODEPORT_ADDRESS, port, proto, SCOPE_EXTERNAL, 0);
    // SAFETY: read-only lookups of plain integers.
    unsafe { GP_SERVICES.get(&exact).is_some() || GP_SERVICES.get(&node_port).is_some() }
}

/// The reply entry (direction `dir`) of the flow an ICMP error quotes: the
/// quoted packet went toward the backend, so the entry is keyed by the
/// backend's answer to it.
#[inline(always)]
fn quoted_flow(inner: &Flow, dir: u8) -> Option<CtEntry> {
    let key = conntrack::key(
        inner.daddr,
        inner.saddr,
        inner.dport,
        inner.sport,
        inner.proto,
        dir,
    );
    let (entry, _) = conntrack::lookup(&key)?;
    // SAFETY: pointer from a successful lookup, valid for this run.
    Some(unsafe { *entry })
}

/// ICMP errors arriving for a SNATed flow (from the backend's node or a
/// router between): translate to what the client sent, send to the client.
#[inline(always)]
fn ingress_icmp<P: Forward>(p: &mut P, icmp: &IcmpError, ifindex: u32) -> Verdict {
    // The quoted packet went node → backend (SNATed).
    let Some(ct) = quoted_flow(&icmp.inner, CT_DIR_REPLY_SNAT) else {
        return Verdict::Continue;
    };
    let rw = IcmpRewrite {
        outer_saddr: ct.new_saddr,
        outer_daddr: ct.new_daddr,
        inner: Rewrite {
            saddr: ct.new_daddr,
            sport: ct.new_dport,
            daddr: ct.new_saddr,
            dport: ct.new_sport,
        },
    };
    if rewrite_icmp_error(p, icmp, &rw).is_none() {
        return Verdict::Drop;
    }
    let routed = Flow {
        saddr: ct.new_saddr,
        daddr: ct.new_daddr,
        sport: 0,
        dport: 0,
        proto: 1,
        tcp_flags: 0,
        has_options: false,
        l4_off: icmp.icmp_off,
    };
    p.redirect(&routed, ifindex)
}

/// Egress on a device.
#[inline(always)]
pub fn egress<P: Packet>(p: &mut P) -> Verdict {
    match parse(p) {
        Some(Parsed::Flow(flow)) => egress_flow(p, &flow),
        Some(Parsed::IcmpError(icmp)) => egress_icmp(p, &icmp),
        None => Verdict::Continue,
    }
}

#[inline(always)]
fn egress_flow<P: Packet>(p: &mut P, flow: &Flow) -> Verdict {
    let key = conntrack::key(
        flow.saddr,
        flow.daddr,
        flow.sport,
        flow.dport,
        flow.proto,
        CT_DIR_REPLY_OUT,
    );
    let Some((entry, now)) = conntrack::lookup(&key) else {
        return Verdict::Continue;
    };
    // SAFETY: pointer from a successful lookup.
    let ct = unsafe { *entry };
    conntrack::touch(entry, flow.proto, flow.tcp_flags, CT_FLAG_SEEN_REPLY, now);
    if ct.flags & CT_FLAG_DSR == 0 {
        let peer = conntrack::key(
            flow.daddr,
            ct.new_saddr,
            flow.dport,
            ct.new_sport,
            flow.proto,
            CT_DIR_IN,
        );
        conntrack::touch_peer(
            &peer,
            &key,
            flow.proto,
            flow.tcp_flags,
            CT_FLAG_SEEN_REPLY,
            now,
        );
    }
    let rw = Rewrite {
        saddr: ct.new_saddr,
        sport: ct.new_sport,
        daddr: flow.daddr,
        dport: flow.dport,
    };
    match rewrite_flow(p, flow, &rw) {
        Some(()) => Verdict::Pass,
        None => Verdict::Drop,
    }
}

/// ICMP errors a local backend sends about a flow we DNATed: make them
/// come from the frontend and quote the frontend.
#[inline(always)]
fn egress_icmp<P: Packet>(p: &mut P, icmp: &IcmpError) -> Verdict {
    let inner = &icmp.inner;
    // The quoted packet went client → backend (DNATed).
    let Some(ct) = quoted_flow(inner, CT_DIR_REPLY_OUT) else {
        return Verdict::Continue;
    };
    let rw = IcmpRewrite {
        outer_saddr: ct.new_saddr,
        outer_daddr: icmp.daddr,
        inner: Rewrite {
            saddr: inner.saddr,
            sport: inner.sport,
            daddr: ct.new_saddr,
            dport: ct.new_sport,
        },
    };
    match rewrite_icmp_error(p, icmp, &rw) {
        Some(()) => Verdict::Pass,
        None => Verdict::Drop,
    }
}
