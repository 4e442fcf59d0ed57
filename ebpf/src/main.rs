//! gangplank's kernel side.
//!
//! Socket-level load balancing (east-west): cgroup `sock_addr` hooks rewrite
//! the destination of `connect()` and `sendmsg()` from a service frontend to
//! a backend, so pod-to-service traffic never needs per-packet NAT, and
//! rewrite the source seen by `recvmsg()`/`getpeername()` back to the
//! frontend so applications see the address they dialled.
//!
//! Per-packet load balancing (north-south): tc programs on the node's
//! devices, with an XDP fast path, serve NodePort, LoadBalancer and
//! external-IP frontends with conntrack, SNAT or DSR (see `nodeport`).
//!
//! Map layout and update order are described in `gangplank-common`.
#![no_std]
#![no_main]

mod conntrack;
mod headers;
mod maps;
mod nat;
mod nodeport;
mod packet;
mod select;
mod sock_lb;
mod tc;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
