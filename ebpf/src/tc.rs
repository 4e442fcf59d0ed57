//! tc programs on the node's devices (clsact ingress and egress): the full
//! north-south load balancer.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_fib_lookup, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};

use crate::headers::{Flow, ETH_HLEN, IP_CSUM, IP_OFF, IP_OPTIONS, IP_TOT_LEN};
use crate::nat::decrement_ttl;
use crate::nodeport::{egress, ingress, DsrOpt, Forward, Verdict};
use crate::packet::{Csum, Packet};

/// `TC_ACT_UNSPEC`: not ours; with tcx the next program runs, with a
/// classic clsact filter the packet continues as if we were not there.
const TC_ACT_UNSPEC: i32 = -1;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

#[classifier]
pub fn gp_tc_ingress(mut ctx: TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    verdict(ingress(&mut ctx, ifindex))
}

#[classifier]
pub fn gp_tc_egress(mut ctx: TcContext) -> i32 {
    verdict(egress(&mut ctx))
}

#[inline(always)]
fn verdict(v: Verdict) -> i32 {
    match v {
        Verdict::Continue => TC_ACT_UNSPEC,
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Redirected(ret) => ret,
    }
}

/// The two 16-bit words of the IPv4 header that change with the header
/// length: version/IHL/TOS and the total length.
#[inline(always)]
fn resize_header(ctx: &mut TcContext, grow: bool) -> Option<()> {
    let first: u16 = Packet::load(ctx, IP_OFF)?;
    let tot_len: u16 = Packet::load(ctx, IP_TOT_LEN)?;
    // IHL is the low nibble of the first byte, i.e. of the loaded word's
    // low byte on a little-endian CPU; it counts 32-bit words.
    let (new_first, new_len) = if grow {
        (first + 2, (u16::from_be(tot_len) + 8).to_be())
    } else {
        (first - 2, (u16::from_be(tot_len) - 8).to_be())
    };
    Packet::store(ctx, IP_OFF, &new_first)?;
    ctx.csum_replace(Csum::Ip(IP_CSUM), first as u32, new_first as u32, 2, false)?;
    Packet::store(ctx, IP_TOT_LEN, &new_len)?;
    ctx.csum_replace(Csum::Ip(IP_CSUM), tot_len as u32, new_len as u32, 2, false)
}

/// The option's two 32-bit words, as they enter the header checksum.
#[inline(always)]
fn opt_words(opt: &DsrOpt) -> (u32, u32) {
    // SAFETY: DsrOpt is 8 bytes of plain integers.
    let words: [u32; 2] = unsafe { core::mem::transmute(*opt) };
    (words[0], words[1])
}

impl Forward for TcContext {
    const FAST_PATH: bool = false;

    #[inline(always)]
    fn redirect(&mut self, flow: &Flow, ingress_ifindex: u32) -> Verdict {
        if decrement_ttl(self).is_none() {
            return Verdict::Drop;
        }
        // SAFETY: all-zero is a valid bpf_fib_lookup.
        let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        params.family = AF_INET;
        params.l4_protocol = flow.proto;
        params.sport = flow.sport;
        params.dport = flow.dport;
        // tot_len stays 0: with a length the kernel compares it with the
        // route MTU and refuses GSO packets (64 KB aggregates from GRO or a
        // local sender's TSO) as "fragmentation needed"; without one it
        // checks forwardability the way the stack does, segments included.
        params.ifindex = ingress_ifindex;
        params.__bindgen_anon_3.ipv4_src = flow.saddr;
        params.__bindgen_anon_4.ipv4_dst = flow.daddr;
        // SAFETY: valid context and a properly sized parameter block.
        let ret = unsafe {
            fib_lookup(
                self.as_ptr(),
                &mut params,
                size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        };
        match ret {
            BPF_FIB_LKUP_RET_SUCCESS => {
                let macs: [[u8; 6]; 2] = [params.dmac, params.smac];
                if Packet::store(self, 0, &macs).is_none() {
                    return Verdict::Drop;
                }
                // SAFETY: plain helper call.
                Verdict::Redirected(unsafe { bpf_redirect(params.ifindex, 0) } as i32)
            }
            BPF_FIB_LKUP_RET_NO_NEIGH => {
                // The next hop's MAC is not resolved yet: let the kernel's
                // neighbour code resolve it and send the packet on.
                // SAFETY: null parameters: the kernel routes by itself.
                Verdict::Redirected(unsafe {
                    bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0)
                } as i32)
            }
            // No route (or it is not forwardable): nothing sensible to do.
            _ => Verdict::Drop,
        }
    }

    #[inline(always)]
    fn push_dsr(&mut self, opt: &DsrOpt) -> Option<()> {
        // The header must have room for 8 more bytes (IHL is at most 15).
        let ver_ihl: u8 = Packet::load(self, IP_OFF)?;
        if ver_ihl & 0x0f > 13 {
            return None;
        }
        // Room right after the 20-byte base header (BPF_ADJ_ROOM_NET adds
        // it there, before any existing option).
        self.adjust_room(8, BPF_ADJ_ROOM_NET, 0).ok()?;
        Packet::store(self, IP_OPTIONS, opt)?;
        let (w0, w1) = opt_words(opt);
        self.csum_replace(Csum::Ip(IP_CSUM), 0, w0, 4, false)?;
        self.csum_replace(Csum::Ip(IP_CSUM), 0, w1, 4, false)?;
        resize_header(self, true)
    }

    #[inline(always)]
    fn pop_dsr(&mut self, opt: &DsrOpt) -> Option<()> {
        let (w0, w1) = opt_words(opt);
        self.csum_replace(Csum::Ip(IP_CSUM), w0, 0, 4, false)?;
        self.csum_replace(Csum::Ip(IP_CSUM), w1, 0, 4, false)?;
        resize_header(self, false)?;
        self.adjust_room(-8, BPF_ADJ_ROOM_NET, 0).ok()
    }
}

// Keep ETH_HLEN referenced for readers: the frame starts with Ethernet.
const _: usize = ETH_HLEN;
