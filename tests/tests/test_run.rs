//! The BPF_PROG_TEST_RUN wrapper itself, on constant programs (root: it
//! loads programs).

use std::os::fd::AsFd;

use gangplank_tests::packet::{Packet, TCP_SYN};
use gangplank_tests::test_run::*;

fn frame() -> Vec<u8> {
    Packet::tcp(
        "198.18.0.100:40000".parse().unwrap(),
        "198.18.0.10:30080".parse().unwrap(),
        TCP_SYN,
    )
    .build()
}

#[test]
fn test_run_plumbing_with_constant_programs() {
    gangplank_tests::check_privileges().expect("needs root");
    let xdp = load_constant_program(PROG_TYPE_XDP, XDP_PASS as i32).expect("load XDP");
    let r = run(xdp.as_fd(), &frame(), Ctx::None, 1000).expect("XDP test run");
    assert_eq!(r.retval, XDP_PASS);
    assert_eq!(r.data, frame(), "unchanged frame comes back");
    assert!(r.duration_ns < 10_000, "{r:?}");
    let r = run(
        xdp.as_fd(),
        &frame(),
        Ctx::Xdp(XdpCtx {
            ingress_ifindex: 1,
            rx_queue_index: 0,
        }),
        1,
    )
    .expect("XDP test run with a loopback context");
    assert_eq!(r.retval, XDP_PASS);

    let tc = load_constant_program(PROG_TYPE_SCHED_CLS, TC_ACT_SHOT as i32).expect("load tc");
    let r = run(
        tc.as_fd(),
        &frame(),
        Ctx::Skb(SkbCtx {
            ifindex: 1,
            ..SkbCtx::default()
        }),
        1,
    )
    .expect("tc test run");
    assert_eq!(r.retval, TC_ACT_SHOT);
    assert_eq!(r.data, frame());

    // Shorter than an Ethernet header: refused before the program runs.
    let e = run(tc.as_fd(), &frame()[..13], Ctx::None, 1).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    let e = run(xdp.as_fd(), &frame()[..13], Ctx::None, 1).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
}
