//! gangplank's Ingress proxy: Kubernetes Ingress v1 objects become an
//! immutable route table (`route`) and a certificate store chosen by SNI
//! (`tls`); the proxy swaps both atomically on every change.
#![forbid(unsafe_code)]
pub mod access_log;
pub mod annotations;
pub mod config;
pub mod leader;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod status;
pub mod tls;
pub mod upstream;

/// The hash map of tables looked up on every request (routes, options,
/// endpoints, upstream connections): foldhash instead of SipHash, which
/// cost more than the lookups themselves. Keys come from configuration,
/// never from a client, so SipHash's flooding resistance buys nothing.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
