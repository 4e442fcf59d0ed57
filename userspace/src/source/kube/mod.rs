//! Following the Kubernetes API server (cluster mode): the same objects and
//! the same [`DirChange`](crate::source::DirChange) batches as the manifest
//! watcher, from list+watch requests made with kube-rs.
//!
//! - [`connect`]: a client from `--kubeconfig`, `KUBECONFIG`,
//!   `~/.kube/config` or the pod's service account.
//! - [`ApiWatcher`]: one watch per [`WatchSpec`], batched.
//! - [`ApiHealth`]: whether the API server is reachable, for `/healthz` and
//!   the metrics.

mod batcher;
mod connect;
mod health;
mod watch;

pub use batcher::object_path;
pub use connect::{connect, describe, ConnectError, KubeOptions};
pub use health::{ApiHealth, ApiStatus};
pub use watch::{resource, ApiWatchConfig, ApiWatcher, WatchSpec};
