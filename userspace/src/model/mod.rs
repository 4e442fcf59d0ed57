//! The load-balancing model: pure functions and an incremental store from
//! Services and EndpointSlices to the desired frontends (kube-proxy semantics):
//! cluster IPs, NodePorts, load-balancer and external IPs, each in the
//! scope (socket hooks or tc/XDP) and with the endpoints the traffic
//! policies allow, plus the `healthCheckNodePort`s to serve.
//!
//! k8s objects are converted to compact types right away ([`ServiceInfo`],
//! [`SliceInfo`], wrapped in [`ModelObject`]); the [`ServiceStore`] never
//! keeps the k8s-openapi structs. The memory-lean way to feed it is to parse
//! with [`ServiceStore::mapper`] (e.g. `ManifestWatcher::start_mapped`) and
//! apply with [`ServiceStore::apply_model_batch`]; `apply_batch` on plain
//! k8s objects gives the same results.

pub mod bench;
mod error;
pub mod fixtures;
mod frontends;
mod object;
mod service;
mod slice;
mod store;
mod types;

pub use error::ModelError;
pub use frontends::{
    build_frontends, endpoints_for, frontend_keys, match_port, select_backends, Endpoints,
};
pub use object::ModelObject;
pub use service::{
    parse_ipv4, service_from_k8s, Converted, LoadBalancerIp, ServiceInfo, ServicePort, ServiceType,
    DEFAULT_AFFINITY_TIMEOUT, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, MAX_AFFINITY_TIMEOUT,
};
pub use slice::{slice_from_k8s, SliceEndpoint, SliceInfo, SlicePort, LABEL_SERVICE_NAME};
pub use store::{Changes, ServiceStore};
pub use types::{
    BackendAddr, Frontend, FrontendKey, FrontendKind, HealthCheck, Protocol, Scope, ServiceId,
};
