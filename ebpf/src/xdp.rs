//! The XDP fast path: the same load balancer at the driver, for what ends
//! in local delivery (flows to backends on this node, new or known). Every
//! other packet goes on, untouched, to the tc programs, which do the rest.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::headers::Flow;
use crate::nodeport::{ingress, DsrOpt, Forward, Verdict};

#[xdp]
pub fn gp_xdp(mut ctx: XdpContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match ingress(&mut ctx, ifindex) {
        Verdict::Continue | Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        // The fast path never redirects (see `Forward::FAST_PATH`).
        Verdict::Redirected(_) => xdp_action::XDP_PASS,
    }
}

/// The benchmark's baseline: the cost of running any XDP program at all.
#[xdp]
pub fn gp_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

impl Forward for XdpContext {
    const FAST_PATH: bool = true;

    #[inline(always)]
    fn redirect(&mut self, _flow: &Flow, _ingress_ifindex: u32) -> Verdict {
        Verdict::Continue
    }

    #[inline(always)]
    fn push_dsr(&mut self, _opt: &DsrOpt) -> Option<()> {
        None
    }

    #[inline(always)]
    fn pop_dsr(&mut self, _opt: &DsrOpt) -> Option<()> {
        None
    }
}
