//! gangplank's Ingress proxy: Kubernetes Ingress v1 objects become an
//! immutable route table (`route`) and a certificate store chosen by SNI
//! (`tls`); the proxy swaps both atomically on every change.
#![forbid(unsafe_code)]
pub mod access_log;
pub mod annotations;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod tls;
pub mod upstream;
