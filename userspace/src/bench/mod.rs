//! `gangplank bench`: the Services benchmark on a simulated cluster built
//! on this machine (network namespaces, with no route out of them), so that
//! users measure their own nodes the way the project measures its releases
//! (`cargo xtask bench --only services` runs this same code).
//!
//! [`services`] compares gangplank with the rules kube-proxy would write
//! for the same Services; [`conn`] is the load generator and the backends'
//! server, run inside the simulated pods as `gangplank bench-conn`.

pub mod conn;
mod plot;
pub mod services;

pub use gangplank_sim::bench_options::{Dataplane, IptablesBackend, ServicesOptions};
pub use plot::FONT_PATHS;
