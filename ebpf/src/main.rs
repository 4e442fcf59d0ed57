//! gangplank's kernel side.
//!
//! Socket-level load balancing (east-west): cgroup `sock_addr` hooks rewrite
//! the destination of `connect()` and `sendmsg()` from a service frontend to
//! a backend, so pod-to-service traffic never needs per-packet NAT, and
//! rewrite the source seen by `recvmsg()`/`getpeername()` back to the
//! frontend so applications see the address they dialled.
//!
//! Map layout and update order are described in `gangplank-common`.
#![no_std]
#![no_main]

mod sock_lb;

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
