//! Cluster mode: the objects from the Kubernetes API server, only the
//! Secrets that served Ingresses name, and Ingress status written by the
//! elected replica.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use gangplank::source::kube::{ApiWatchConfig, ApiWatcher, WatchSpec};
use gangplank::source::{DirChange, Kind, ManifestWatcher, Object};
use gangplank_ingress::route::IngressRef;
use gangplank_ingress::status::{plan, IngressStatus, LbAddress};
use gangplank_ingress::tls::SecretRef;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Where the objects come from; stops when dropped.
pub enum Source {
    /// A manifest directory (it holds every Secret it has).
    Manifests(#[allow(dead_code)] ManifestWatcher),
    /// The API server.
    Api(Box<ApiWatcher<Object>>),
}

impl Source {
    /// Watches Ingresses, IngressClasses, Services and EndpointSlices on
    /// the API server (Secrets come with [`Source::read_secrets`]).
    pub fn api(client: Client) -> (Source, mpsc::Receiver<DirChange>) {
        let (watcher, changes) = ApiWatcher::start(
            client,
            &[
                WatchSpec::all(Kind::Ingress),
                WatchSpec::all(Kind::IngressClass),
                WatchSpec::all(Kind::Service),
                WatchSpec::all(Kind::EndpointSlice),
            ],
            std::sync::Arc::new(|o| o),
            ApiWatchConfig::default(),
        );
        (Source::Api(Box::new(watcher)), changes)
    }

    /// Reads exactly `secrets` (namespaced reads by name: no permission to
    /// list every Secret of the cluster is needed). Returns how many new
    /// watches started; until they have listed, batches say `synced:
    /// false`.
    pub fn read_secrets(&self, secrets: &BTreeSet<SecretRef>) -> usize {
        let Source::Api(watcher) = self else { return 0 };
        let specs: Vec<WatchSpec> = secrets
            .iter()
            .map(|s| WatchSpec::named(Kind::Secret, Some(&s.namespace), &s.name))
            .collect();
        watcher.set_dynamic(Kind::Secret, &specs)
    }
}

/// What the status writer works from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Snapshot {
    ingresses: Vec<IngressStatus>,
    publish: Vec<LbAddress>,
}

/// Writes `status.loadBalancer.ingress` while this replica leads.
pub struct StatusWriter {
    snapshot: watch::Sender<Snapshot>,
    task: JoinHandle<()>,
}

impl StatusWriter {
    /// Starts writing with `client` whenever `leading` is true.
    pub fn start(client: Client, leading: watch::Receiver<bool>) -> StatusWriter {
        let (snapshot, snapshots) = watch::channel(Snapshot::default());
        let task = tokio::spawn(run(client, snapshots, leading));
        StatusWriter { snapshot, task }
    }

    /// The Ingresses and addresses after a rebuild.
    pub fn update(&self, ingresses: Vec<IngressStatus>, publish: Vec<LbAddress>) {
        self.snapshot.send_if_modified(|s| {
            let next = Snapshot { ingresses, publish };
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets `status.loadBalancer.ingress` of Ingress `name` with a read and an
/// update (PUT) of the status subresource, as ingress-nginx does. The PUT
/// carries the whole object as read: for Ingresses the API server takes
/// metadata (labels, annotations, finalizers) from the body and only the
/// spec from storage, so a body with less would erase them. A conflict
/// (the Ingress changed in between) is read and tried again.
async fn write_status(
    api: &Api<Ingress>,
    name: &str,
    addresses: Vec<serde_json::Value>,
) -> Result<Ingress, kube::Error> {
    let load_balancer: k8s_openapi::api::networking::v1::IngressLoadBalancerStatus =
        serde_json::from_value(serde_json::json!({"ingress": addresses}))
            .map_err(kube::Error::SerdeError)?;
    let mut attempt = 0;
    loop {
        let mut ingress = api.get(name).await?;
        ingress.status = Some(k8s_openapi::api::networking::v1::IngressStatus {
            load_balancer: Some(load_balancer.clone()),
        });
        match api
            .replace_status(name, &PostParams::default(), &ingress)
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < 3 => attempt += 1,
            result => return result,
        }
    }
}

/// How long one status write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often writes are re-checked even without a change (a write that
/// failed, or a status someone else overwrote).
const RECHECK: Duration = Duration::from_secs(10);

async fn run(
    client: Client,
    mut snapshots: watch::Receiver<Snapshot>,
    mut leading: watch::Receiver<bool>,
) {
    // What we wrote and have not seen come back yet: not written again
    // until the next recheck.
    let mut written: HashMap<IngressRef, Vec<LbAddress>> = HashMap::new();
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        if *leading.borrow_and_update() {
            let snapshot = snapshots.borrow_and_update().clone();
            for update in plan(&snapshot.ingresses, &snapshot.publish) {
                // Leadership can end mid-pass: look before every write.
                if !*leading.borrow() {
                    break;
                }
                if written.get(&update.ingress) == Some(&update.addresses) {
                    continue;
                }
                let api: Api<Ingress> = Api::namespaced(client.clone(), &update.ingress.namespace);
                let addresses: Vec<serde_json::Value> =
                    update.addresses.iter().map(LbAddress::to_json).collect();
                let write = write_status(&api, &update.ingress.name, addresses);
                let written_now = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                    Ok(result) => result.map_err(|e| gangplank::source::kube::describe(&e)),
                    Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
                };
                match written_now {
                    Ok(_) => {
                        info!(ingress = %update.ingress, addresses = ?update.addresses, "Ingress status written");
                        written.insert(update.ingress, update.addresses);
                    }
                    Err(e) => {
                        warn!(ingress = %update.ingress, error = %e, "cannot write Ingress status; retrying")
                    }
                }
            }
        } else {
            written.clear();
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            _ = recheck.tick() => {
                debug!("rechecking Ingress status");
                written.clear();
            }
        }
    }
}
