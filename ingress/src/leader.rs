//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it, so that among several ingress replicas exactly
//! one writes Ingress status.
//!
//! - The holder renews `renewTime` every `renew_every`; others check as
//!   often.
//! - A Lease is taken over when nobody holds it, or when it has not
//!   changed (same resourceVersion) for `leaseDurationSeconds` *as
//!   measured on this machine*: clocks of different nodes are never
//!   compared.
//! - Every write carries the resourceVersion read, so of two replicas
//!   racing for it one gets 409 Conflict and stays a follower.
//! - A holder that cannot renew within `renew_deadline` (10 s, shorter
//!   than the 15 s lease) stops leading before anyone else may take over;
//!   every request has a timeout, so a silent network cannot keep a
//!   replica believing it leads.
//! - [`Elector::stop`] hands over: the holder clears `holderIdentity`, and
//!   the next replica to look takes it at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Which Lease, who we are, and the timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal (15 s by default, as
    /// client-go).
    pub lease_duration: Duration,
    /// How often the holder renews and the others look (2 s).
    pub renew_every: Duration,
    /// How long the holder keeps leading without a successful renewal
    /// (10 s): less than `lease_duration`, so it has stopped before
    /// another replica can take the lease.
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// client-go's defaults for `namespace/name` and `identity`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// A running election.
pub struct Elector {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts taking part in the election.
    pub fn start(client: Client, config: LeaseConfig) -> Elector {
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let task = tokio::spawn(run(api, config, leading_tx, stop_rx));
        Elector {
            leading,
            stop,
            task,
        }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Follows leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops, handing the Lease over if this replica holds it.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut observed: Option<(String, Instant)> = None;
    let mut last_renewed: Option<Instant> = None;
    // One round may not take longer than this (the API client itself has
    // no read timeout).
    let round_timeout = (config.renew_deadline / 2).max(Duration::from_secs(1));
    loop {
        let round = tokio::time::timeout(
            round_timeout,
            try_acquire_or_renew(&api, &config, &mut observed),
        )
        .await
        .unwrap_or(Err(RoundError::TimedOut(round_timeout)));
        match round {
            Ok(true) => {
                last_renewed = Some(Instant::now());
                if !leading.send_replace(true) {
                    info!(lease = %config.name, identity = %config.identity, "leading: this replica writes Ingress status");
                }
            }
            Ok(false) => {
                if leading.send_replace(false) {
                    info!(lease = %config.name, "no longer leading");
                }
            }
            Err(e) => {
                warn!(lease = %config.name, error = %e, "cannot read or renew the leader Lease");
                let lapsed = last_renewed.is_none_or(|t| t.elapsed() >= config.renew_deadline);
                if lapsed && leading.send_replace(false) {
                    warn!(lease = %config.name, "lease not renewed in time: no longer leading");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.renew_every) => {}
            _ = stop.changed() => break,
        }
    }
    if *leading.borrow() {
        // Stop leading first: nothing is written while the release runs.
        leading.send_replace(false);
        match tokio::time::timeout(Duration::from_secs(2), release(&api, &config)).await {
            Ok(Ok(())) => info!(lease = %config.name, "lease released for the next replica"),
            Ok(Err(e)) => {
                warn!(lease = %config.name, error = %e, "cannot release the lease; it expires on its own")
            }
            Err(_) => {
                warn!(lease = %config.name, "releasing the lease timed out; it expires on its own")
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1)
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// One round: `Ok(true)` when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, RoundError> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds(config.lease_duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let version = lease.metadata.resource_version.clone().unwrap_or_default();
    if observed.as_ref().is_none_or(|(v, _)| *v != version) {
        *observed = Some((version, Instant::now()));
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.lease_duration, Duration::from_secs);
    let unchanged_for = observed
        .as_ref()
        .map_or(Duration::ZERO, |(_, t)| t.elapsed());
    let ours = holder == config.identity;
    if !ours && !holder.is_empty() && unchanged_for < duration {
        return Ok(false);
    }
    if !ours {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(config.identity.clone());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds(config.lease_duration));
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        // Someone else wrote first: theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Clears the holder, so that the next replica takes over without waiting
/// for the lease to expire.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(drop)
}
