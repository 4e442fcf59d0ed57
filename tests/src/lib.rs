//! gangplank's end-to-end tests and their tools.
//!
//! The simulated cluster itself is the `gangplank-sim` crate, re-exported
//! here so the tests name it as before; this crate adds what only tests
//! use: a fake API server, the Ingress
//! harness and north-south helpers.

#![warn(missing_docs)]

pub use gangplank::bench::{packet, test_run};
pub use gangplank_sim::{
    agent, check_privileges, cluster, manifests, probe, probe_cmd, process, sweep_stale,
    target_binary, Cluster, Host, Node, Pod, ProbeResult, Proc,
};

pub mod bpf;
pub mod chart;
pub mod fake_api;
pub mod ingress;
pub mod northsouth;
pub mod tls_client;
