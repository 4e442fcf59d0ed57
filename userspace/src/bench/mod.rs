//! `gangplank bench`: the Services benchmark on a simulated cluster built
//! on this machine (network namespaces, with no route out of them), so that
//! users measure their own nodes the way the project measures its releases
//! (`cargo xtask bench --only services` runs this same code).
//!
//! [`services`] compares gangplank with the rules kube-proxy would write
//! for the same Services; [`conn`] is the load generator and the backends'
//! server, run inside the simulated pods as `gangplank bench-conn`.
//! [`packets`] times each tc/XDP program per packet with BPF_PROG_TEST_RUN
//! ([`test_run`], on frames built with [`packet`]); the end-to-end tests
//! use those two modules as well.

pub mod conn;
// Header fields and constants are named as in the RFCs and uapi headers.
#[allow(missing_docs)]
pub mod packet;
pub mod packets;
mod plot;
pub mod services;
#[allow(missing_docs)]
pub mod test_run;

pub use gangplank_sim::bench_options::{
    Dataplane, IptablesBackend, PacketOptions, ServicesOptions, FONT_PATHS,
};
