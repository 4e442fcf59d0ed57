//! gangplank agent library: Kubernetes Services and EndpointSlices in,
//! eBPF load-balancer maps out (source → model → dataplane).
pub mod agent;
pub mod bench;
pub mod cleanup;
pub mod dataplane;
pub mod devices;
pub mod health;
pub mod http;
pub mod inspect;
pub mod kube_proxy;
pub mod metrics;
pub mod model;
pub mod preflight;
pub mod source;
pub mod status;
