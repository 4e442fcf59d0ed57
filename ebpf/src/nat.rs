//! Rewriting addresses and ports with every checksum kept valid: the IPv4
//! header checksum, the TCP/UDP checksum (pseudo-header included; a zero
//! UDP checksum stays zero), and for ICMP errors the quoted header and the
//! ICMP checksum that covers it.

use crate::headers::{Flow, IcmpError, IP_CSUM, IP_DADDR, IP_SADDR, IP_TTL};
use crate::packet::{Csum, Packet};

/// A rewrite of a 5-tuple: new source and destination.
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub saddr: u32,
    pub sport: u16,
    pub daddr: u32,
    pub dport: u16,
}

/// Replace a 32-bit field at `off` and fix the given checksums.
#[inline(always)]
fn set_u32<P: Packet>(
    p: &mut P,
    off: usize,
    from: u32,
    to: u32,
    sums: &[(Csum, bool)],
) -> Option<()> {
    if from == to {
        return Some(());
    }
    p.store(off, &to)?;
    for (csum, pseudo) in sums {
        p.csum_replace(*csum, from, to, 4, *pseudo)?;
    }
    Some(())
}

/// Replace a 16-bit field at `off` and fix the given checksum.
#[inline(always)]
fn set_u16<P: Packet>(p: &mut P, off: usize, from: u16, to: u16, csum: Csum) -> Option<()> {
    if from == to {
        return Some(());
    }
    p.store(off, &to)?;
    p.csum_replace(csum, from as u32, to as u32, 2, false)
}

/// Apply `rw` to a TCP/UDP packet described by `flow`.
#[inline(always)]
pub fn rewrite_flow<P: Packet>(p: &mut P, flow: &Flow, rw: &Rewrite) -> Option<()> {
    let l4 = flow.l4_csum();
    set_u32(
        p,
        IP_SADDR,
        flow.saddr,
        rw.saddr,
        &[(Csum::Ip(IP_CSUM), false), (l4, true)],
    )?;
    set_u32(
        p,
        IP_DADDR,
        flow.daddr,
        rw.daddr,
        &[(Csum::Ip(IP_CSUM), false), (l4, true)],
    )?;
    set_u16(p, flow.l4_off, flow.sport, rw.sport, l4)?;
    set_u16(p, flow.l4_off + 2, flow.dport, rw.dport, l4)
}

/// Decrement the TTL, as a router must: the packet is forwarded by
/// redirect, bypassing the kernel's forwarding path that would do it.
/// `None` when it would reach zero (the caller drops the packet).
#[inline(always)]
pub fn decrement_ttl<P: Packet>(p: &mut P) -> Option<()> {
    // TTL and protocol form one 16-bit word of the header checksum.
    let old: u16 = p.load(IP_TTL)?;
    let ttl = (old & 0xff) as u8;
    if ttl <= 1 {
        return None;
    }
    let new = (old & 0xff00) | (ttl - 1) as u16;
    p.store(IP_TTL, &new)?;
    p.csum_replace(Csum::Ip(IP_CSUM), old as u32, new as u32, 2, false)
}

/// The outer and quoted rewrites of an ICMP error about a translated flow.
pub struct IcmpRewrite {
    /// New outer source and destination addresses.
    pub outer_saddr: u32,
    pub outer_daddr: u32,
    /// New quoted 5-tuple.
    pub inner: Rewrite,
}

/// Rewrite an ICMP error: the outer addresses (IPv4 checksum only: ICMP has
/// no pseudo-header), the quoted addresses and ports, the quoted IPv4
/// header checksum, and the ICMP checksum over all the quoted changes. The
/// quoted TCP/UDP checksum is left alone: it usually is not even complete
/// in the quote, and no receiver checks it.
#[inline(always)]
pub fn rewrite_icmp_error<P: Packet>(p: &mut P, icmp: &IcmpError, rw: &IcmpRewrite) -> Option<()> {
    let ip = Csum::Ip(IP_CSUM);
    let icmp_csum = Csum::Icmp(icmp.icmp_off + 2);
    set_u32(p, IP_SADDR, icmp.saddr, rw.outer_saddr, &[(ip, false)])?;
    set_u32(p, IP_DADDR, icmp.daddr, rw.outer_daddr, &[(ip, false)])?;

    let inner = &icmp.inner;
    let inner_csum_off = icmp.inner_ip_off + 10;
    let old_inner_csum: u16 = p.load(inner_csum_off)?;
    let inner_ip = Csum::Ip(inner_csum_off);
    set_u32(
        p,
        icmp.inner_ip_off + 12,
        inner.saddr,
        rw.inner.saddr,
        &[(inner_ip, false), (icmp_csum, false)],
    )?;
    set_u32(
        p,
        icmp.inner_ip_off + 16,
        inner.daddr,
        rw.inner.daddr,
        &[(inner_ip, false), (icmp_csum, false)],
    )?;
    set_u16(p, inner.l4_off, inner.sport, rw.inner.sport, icmp_csum)?;
    set_u16(p, inner.l4_off + 2, inner.dport, rw.inner.dport, icmp_csum)?;
    // The quoted header checksum is itself covered by the ICMP checksum.
    let new_inner_csum: u16 = p.load(inner_csum_off)?;
    if new_inner_csum != old_inner_csum {
        p.csum_replace(
            icmp_csum,
            old_inner_csum as u32,
            new_inner_csum as u32,
            2,
            false,
        )?;
    }
    Some(())
}
