//! The API source's tasks: one kube-runtime watcher per [`WatchSpec`]
//! (list, then watch from the list's resourceVersion, with bookmarks; a
//! relist on 410 Gone; exponential backoff on errors), and one task that
//! gathers their events into [`DirChange`] batches (see [`super::batcher`]).
//!
//! Batches are not timed: the gathering task takes what is queued, sends
//! it, and waits for more. A burst is therefore coalesced into as few
//! batches as the consumer's pace allows, and a lone event is sent at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::NamespaceResourceScope;
use kube::api::ListParams;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::source::{DirChange, Kind, Object, ObjectMapper};

use super::batcher::{object_path, Batcher, WatchEvent};
use super::connect::describe;
use super::health::ApiHealth;

/// What one watch follows: a kind, cluster-wide or in one namespace, all
/// objects or one by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchSpec {
    /// The kind.
    pub kind: Kind,
    /// `None`: every namespace (or a cluster-scoped kind).
    pub namespace: Option<String>,
    /// Only the object of this name.
    pub name: Option<String>,
}

impl WatchSpec {
    /// Every object of `kind`.
    pub fn all(kind: Kind) -> Self {
        WatchSpec {
            kind,
            namespace: None,
            name: None,
        }
    }

    /// The one object `namespace/name` (`None` for a cluster-scoped kind).
    pub fn named(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        WatchSpec {
            kind,
            namespace: namespace.map(str::to_owned),
            name: Some(name.to_owned()),
        }
    }
}

impl std::fmt::Display for WatchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (group, plural) = resource(self.kind);
        let group = if group.is_empty() { "core" } else { group };
        write!(f, "{plural} ({group})")?;
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            (Some(ns), None) => write!(f, " in namespace {ns}"),
            (None, None) => f.write_str(" in all namespaces"),
        }
    }
}

/// API group and plural resource name of `kind`, as RBAC rules name them.
pub fn resource(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Service => ("", "services"),
        Kind::EndpointSlice => ("discovery.k8s.io", "endpointslices"),
        Kind::Node => ("", "nodes"),
        Kind::Ingress => ("networking.k8s.io", "ingresses"),
        Kind::IngressClass => ("networking.k8s.io", "ingressclasses"),
        Kind::Secret => ("", "secrets"),
    }
}

/// Tuning of the API source.
#[derive(Debug, Clone)]
pub struct ApiWatchConfig {
    /// Batches queued for the consumer before the source waits.
    pub channel_capacity: usize,
    /// Objects per batch at most (bounds the memory a batch holds).
    pub max_batch: usize,
    /// Objects per list page.
    pub page_size: u32,
}

impl Default for ApiWatchConfig {
    fn default() -> Self {
        ApiWatchConfig {
            channel_capacity: 4,
            max_batch: 1024,
            page_size: 500,
        }
    }
}

/// How often a failing watch checks whether its resource answers again.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

type Events<T> = mpsc::UnboundedSender<(WatchSpec, WatchEvent<T>)>;

/// Follows objects on the API server and sends [`DirChange`] batches, like
/// [`ManifestWatcher`](crate::source::ManifestWatcher) does for a
/// directory. Dropping it stops every watch.
pub struct ApiWatcher<T: Send + 'static> {
    client: Client,
    map: Arc<ObjectMapper<T>>,
    config: ApiWatchConfig,
    events: Events<T>,
    health: Arc<ApiHealth>,
    watches: Mutex<HashMap<WatchSpec, JoinHandle<()>>>,
    gather: JoinHandle<()>,
}

impl<T: Send + 'static> ApiWatcher<T> {
    /// Starts watching `specs` (more can be added later, see
    /// [`ApiWatcher::set_dynamic`]). Every object goes through `map` as it
    /// arrives. Must be called within a tokio runtime.
    pub fn start(
        client: Client,
        specs: &[WatchSpec],
        map: Arc<ObjectMapper<T>>,
        config: ApiWatchConfig,
    ) -> (ApiWatcher<T>, mpsc::Receiver<DirChange<T>>) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(config.channel_capacity.max(1));
        let mut batcher = Batcher::default();
        for spec in specs {
            batcher.add_watch(spec.clone());
        }
        let gather = tokio::spawn(gather(batcher, events_rx, out_tx, config.max_batch.max(1)));
        let watcher = ApiWatcher {
            client,
            map,
            config,
            events: events_tx,
            health: Arc::new(ApiHealth::default()),
            watches: Mutex::default(),
            gather,
        };
        for spec in specs {
            watcher.spawn(spec.clone());
        }
        (watcher, out_rx)
    }

    /// What the watches have seen of the API server.
    pub fn health(&self) -> &Arc<ApiHealth> {
        &self.health
    }

    /// Makes the watches of `kind` other than `specs`' stop (their objects
    /// are removed from the batches) and starts the missing ones. Used for
    /// Secrets: only those that served Ingresses name are read. Returns how
    /// many watches it started: until they have listed, batches say
    /// `synced: false`, and the one that completes them says `true`.
    pub fn set_dynamic(&self, kind: Kind, specs: &[WatchSpec]) -> usize {
        let mut watches = self.lock();
        let stale: Vec<WatchSpec> = watches
            .keys()
            .filter(|s| s.kind == kind && !specs.contains(s))
            .cloned()
            .collect();
        for spec in stale {
            if let Some(task) = watches.remove(&spec) {
                task.abort();
            }
            let _ = self.events.send((spec, WatchEvent::Stopped));
        }
        drop(watches);
        let mut started = 0;
        for spec in specs {
            if !self.lock().contains_key(spec) {
                // Registered before any of its events can arrive.
                let _ = self.events.send((spec.clone(), WatchEvent::Started));
                self.spawn(spec.clone());
                started += 1;
            }
        }
        started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WatchSpec, JoinHandle<()>>> {
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self, spec: WatchSpec) {
        let task = Watch {
            client: self.client.clone(),
            spec: spec.clone(),
            map: self.map.clone(),
            events: self.events.clone(),
            health: self.health.clone(),
            page_size: self.config.page_size,
        };
        let handle = match spec.kind {
            Kind::Service => {
                tokio::spawn(task.run(namespaced::<Service>, |o| Object::Service(Box::new(o))))
            }
            Kind::EndpointSlice => tokio::spawn(task.run(namespaced::<EndpointSlice>, |o| {
                Object::EndpointSlice(Box::new(o))
            })),
            Kind::Node => tokio::spawn(task.run(cluster::<Node>, |o| Object::Node(Box::new(o)))),
            Kind::Ingress => {
                tokio::spawn(task.run(namespaced::<Ingress>, |o| Object::Ingress(Box::new(o))))
            }
            Kind::IngressClass => tokio::spawn(task.run(cluster::<IngressClass>, |o| {
                Object::IngressClass(Box::new(o))
            })),
            Kind::Secret => {
                tokio::spawn(task.run(namespaced::<Secret>, |o| Object::Secret(Box::new(o))))
            }
        };
        if let Some(old) = self.lock().insert(spec, handle) {
            old.abort();
        }
    }
}

impl<T: Send + 'static> Drop for ApiWatcher<T> {
    fn drop(&mut self) {
        for task in self.lock().values() {
            task.abort();
        }
        self.gather.abort();
    }
}

/// One watch's task.
struct Watch<T> {
    client: Client,
    spec: WatchSpec,
    map: Arc<ObjectMapper<T>>,
    events: Events<T>,
    health: Arc<ApiHealth>,
    page_size: u32,
}

impl<T: Send + 'static> Watch<T> {
    async fn run<K>(self, api: fn(Client, Option<&str>) -> Api<K>, wrap: fn(K) -> Object)
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let api = api(self.client.clone(), self.spec.namespace.as_deref());
        let mut config = watcher::Config::default().page_size(self.page_size);
        let mut probe_params = ListParams::default().limit(1);
        if let Some(name) = &self.spec.name {
            config = config.fields(&format!("metadata.name={name}"));
            probe_params = probe_params.fields(&format!("metadata.name={name}"));
        }
        let label = self.spec.to_string();
        let stream = watcher(api.clone(), config).default_backoff();
        futures_util::pin_mut!(stream);
        // A watch that resumes after an outage says nothing until an object
        // changes: while it is failing, a one-item list of the same
        // resource tells whether the API server answers again.
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = stream.next() => match event {
                    Some(event) => event,
                    None => break,
                },
                _ = probe.tick(), if self.health.is_failing(&label) => {
                    if api.list(&probe_params).await.is_ok() {
                        self.health.succeeded(&label);
                    }
                    continue;
                }
            };
            let event = match event {
                Ok(Event::Init) => WatchEvent::Init,
                Ok(Event::InitApply(object) | Event::Apply(object)) => {
                    self.health.succeeded(&label);
                    let path = self.path_of(&object);
                    WatchEvent::Apply(path, (self.map)(strip(wrap(object))))
                }
                Ok(Event::Delete(object)) => WatchEvent::Delete(self.path_of(&object)),
                Ok(Event::InitDone) => {
                    self.health.succeeded(&label);
                    WatchEvent::InitDone
                }
                Err(e) => {
                    let message = self.explain(&e);
                    warn!(watch = %self.spec, error = %message, "Kubernetes API request failed; retrying with backoff");
                    self.health.failed(&label, message);
                    continue;
                }
            };
            if self.events.send((self.spec.clone(), event)).is_err() {
                return;
            }
        }
        debug!(watch = %self.spec, "watch stream ended");
    }

    fn path_of<K: Resource>(&self, object: &K) -> std::path::PathBuf {
        let meta = object.meta();
        let namespace = if self.spec.kind.is_namespaced() {
            Some(meta.namespace.as_deref().unwrap_or("default"))
        } else {
            None
        };
        object_path(
            self.spec.kind,
            namespace,
            meta.name.as_deref().unwrap_or(""),
        )
    }

    /// The error, and for a refusal the permission that is missing.
    fn explain(&self, e: &watcher::Error) -> String {
        let (verb, cause) = match e {
            watcher::Error::InitialListFailed(e) => ("list", describe(e)),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                ("watch", describe(e))
            }
            watcher::Error::WatchError(status) => {
                ("watch", describe(&kube::Error::Api(status.clone())))
            }
            other => ("watch", other.to_string()),
        };
        let forbidden = matches!(
            e,
            watcher::Error::InitialListFailed(kube::Error::Api(s))
                | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                | watcher::Error::WatchFailed(kube::Error::Api(s))
                if s.code == 403
        );
        if forbidden {
            let (group, plural) = resource(self.spec.kind);
            let group = if group.is_empty() {
                "\"\" (core)"
            } else {
                group
            };
            let scope = match &self.spec.namespace {
                Some(ns) => format!("in namespace {ns}"),
                None => "cluster-wide".to_owned(),
            };
            format!("{verb} {plural} {scope}: {cause}; the RBAC rules must grant verb `{verb}` on resource `{plural}` of API group {group}")
        } else {
            format!("{verb} {}: {cause}", self.spec)
        }
    }
}

/// The API for a namespaced kind: one namespace or all.
fn namespaced<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// The API for a cluster-scoped kind.
fn cluster<K: Resource<DynamicType = ()>>(client: Client, _namespace: Option<&str>) -> Api<K> {
    Api::all(client)
}

/// Drops what the API server keeps for its own bookkeeping and we never
/// read: managedFields (often larger than the object) and kubectl's copy
/// of the last applied manifest.
fn strip(mut object: Object) -> Object {
    let meta = object.metadata_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    object
}

/// Gathers events into batches until the consumer or every watch is gone.
async fn gather<T>(
    mut batcher: Batcher<T>,
    mut events: mpsc::UnboundedReceiver<(WatchSpec, WatchEvent<T>)>,
    out: mpsc::Sender<DirChange<T>>,
    max_batch: usize,
) {
    while let Some((spec, event)) = events.recv().await {
        batcher.event(&spec, event);
        // Whatever else is queued joins this batch.
        while batcher.pending() < max_batch {
            match events.try_recv() {
                Ok((spec, event)) => batcher.event(&spec, event),
                Err(_) => break,
            }
        }
        if batcher.has_batch() && out.send(batcher.take()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_is_coalesced_and_a_lone_event_goes_at_once() {
        let spec = WatchSpec::all(Kind::Service);
        let mut batcher = Batcher::default();
        batcher.add_watch(spec.clone());
        let (events, events_rx) = mpsc::unbounded_channel();
        let (out, mut batches) = mpsc::channel(4);
        // A burst queued before the gathering task runs: a relist.
        events.send((spec.clone(), WatchEvent::Init)).expect("send");
        for i in 0..1000 {
            let path = object_path(Kind::Service, Some("default"), &format!("s{i}"));
            events
                .send((spec.clone(), WatchEvent::Apply(path, i)))
                .expect("send");
        }
        events
            .send((spec.clone(), WatchEvent::InitDone))
            .expect("send");
        tokio::spawn(gather(batcher, events_rx, out, 1024));
        let first = batches.recv().await.expect("a batch");
        assert_eq!(first.changed.len(), 1000, "one batch for the burst");
        assert!(first.synced);
        // Then one event alone: sent as it is, not held for company.
        let path = object_path(Kind::Service, Some("default"), "lone");
        events
            .send((spec, WatchEvent::Apply(path, 0)))
            .expect("send");
        let lone = batches.recv().await.expect("a batch");
        assert_eq!(lone.changed.len(), 1);
    }
}
