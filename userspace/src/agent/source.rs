//! Where the agent's Services and EndpointSlices come from: a manifest
//! directory or the Kubernetes API server. Both deliver the same batches;
//! the rest of the agent does not know which it follows.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::model::ModelObject;
use crate::source::kube::{connect, ApiHealth, ApiWatchConfig, ApiWatcher, WatchSpec};
use crate::source::{DirChange, Kind, ManifestWatcher, Object, ObjectMapper, WatchConfig};

use super::{Config, SourceConfig, KINDS};

/// A running source; stops when dropped.
pub(super) enum Source {
    /// Held for its lifetime: dropping it stops the watch.
    Manifests(#[allow(dead_code)] ManifestWatcher),
    /// Boxed: the watcher is large, and there is one `Source`.
    Api(Box<ApiSource>),
}

impl Source {
    /// Starts following what `config` says, converting objects with `map`.
    pub(super) async fn start(
        config: &Config,
        map: Arc<ObjectMapper<ModelObject>>,
    ) -> Result<(Source, mpsc::Receiver<DirChange<ModelObject>>)> {
        match &config.source {
            SourceConfig::Manifests(dir) => {
                let (watcher, changes) =
                    ManifestWatcher::start_mapped(dir, KINDS, WatchConfig::default(), map)
                        .with_context(|| format!("watching {}", dir.display()))?;
                Ok((Source::Manifests(watcher), changes))
            }
            SourceConfig::Api(options) => {
                let client = connect(options).await?;
                info!("following Services and EndpointSlices on the Kubernetes API");
                let (services, changes) = ApiWatcher::start(
                    client.clone(),
                    &[
                        WatchSpec::all(Kind::Service),
                        WatchSpec::all(Kind::EndpointSlice),
                    ],
                    map,
                    ApiWatchConfig::default(),
                );
                let node = NodeCheck::start(client, &config.node_name);
                Ok((
                    Source::Api(Box::new(ApiSource {
                        services,
                        _node: node,
                    })),
                    changes,
                ))
            }
        }
    }

    /// The API server's reachability, in cluster mode.
    pub(super) fn api_health(&self) -> Option<&Arc<ApiHealth>> {
        match self {
            Source::Manifests(_) => None,
            Source::Api(api) => Some(api.services.health()),
        }
    }
}

pub(super) struct ApiSource {
    services: ApiWatcher<ModelObject>,
    _node: NodeCheck,
}

/// Follows this node's Node object: endpoints are "local" by the
/// EndpointSlice `nodeName`, so a `--node-name` that names no Node makes
/// every endpoint look remote (externalTrafficPolicy: Local then drops
/// everything). Said loudly, once, and again when it is fixed.
pub(super) struct NodeCheck {
    _watcher: ApiWatcher<Object>,
    task: JoinHandle<()>,
}

impl NodeCheck {
    fn start(client: kube::Client, node_name: &str) -> NodeCheck {
        let (watcher, mut changes) = ApiWatcher::start(
            client,
            &[WatchSpec::named(Kind::Node, None, node_name)],
            Arc::new(|o| o),
            ApiWatchConfig::default(),
        );
        let name = node_name.to_owned();
        let task = tokio::spawn(async move {
            // Whether the Node is there, across batches (its object and
            // the sync can come in separate ones).
            let (mut present, mut synced, mut reported) = (false, false, None);
            while let Some(change) = changes.recv().await {
                if !change.changed.is_empty() {
                    present = true;
                } else if !change.removed.is_empty() {
                    present = false;
                }
                synced |= change.synced;
                if !synced || reported == Some(present) {
                    continue;
                }
                reported = Some(present);
                if present {
                    info!(node = %name, "found this node's Node object");
                } else {
                    warn!(node = %name, "no Node object named {name:?}: --node-name (or NODE_NAME) must be this node's name in the cluster, or endpoints on this node count as remote");
                }
            }
        });
        NodeCheck {
            _watcher: watcher,
            task,
        }
    }
}

impl Drop for NodeCheck {
    fn drop(&mut self) {
        self.task.abort();
    }
}
