//! What the Helm chart's node-level helpers run:
//!
//! - `gangplank mount-bpffs DIR`: mounts a bpf filesystem at DIR unless
//!   one is there (the agent's init container, for nodes without
//!   /sys/fs/bpf);
//! - `gangplank pause`: waits for SIGTERM (the clean-up DaemonSet's main
//!   container, which keeps its pod Ready once `gangplank uninstall` has
//!   cleaned the node in the init container);
//! - `gangplank uninstall-wait --daemonset NS/NAME`: waits until every pod
//!   of that DaemonSet is Ready, i.e. every node is clean, then deletes it
//!   (the post-delete Job Helm waits for).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::DeleteParams;
use kube::{Api, Client};

use crate::preflight;

/// Mounts a bpf filesystem at `dir` unless `dir` already is one. Returns
/// whether it mounted.
pub fn mount_bpffs(dir: &Path) -> Result<bool> {
    if preflight::is_bpffs(dir) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{}: a path with a NUL byte", dir.display()))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mounting a bpf filesystem at {}: {e}", dir.display());
    }
    Ok(true)
}

/// Blocks until SIGTERM or SIGINT. (As a container's PID 1 the process
/// would otherwise ignore them: PID 1 gets no default signal actions.)
pub async fn pause() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// How far a DaemonSet's rollout is, from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Nodes that should run a pod.
    pub desired: i32,
    /// Pods of the current template that are Ready.
    pub ready: i32,
    /// Whether the status describes the current spec (else the counts
    /// are stale and mean nothing yet).
    pub observed: bool,
}

impl Progress {
    /// The progress of `ds`.
    pub fn of(ds: &DaemonSet) -> Progress {
        let generation = ds.metadata.generation.unwrap_or(0);
        let none = k8s_openapi::api::apps::v1::DaemonSetStatus::default();
        let status = ds.status.as_ref().unwrap_or(&none);
        Progress {
            desired: status.desired_number_scheduled,
            ready: status
                .number_ready
                .min(status.updated_number_scheduled.unwrap_or(0)),
            observed: status.observed_generation.unwrap_or(0) >= generation,
        }
    }

    /// Every node has a Ready pod (no node at all counts as done).
    pub fn done(&self) -> bool {
        self.observed && self.ready >= self.desired
    }
}

/// How long one request to the API server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until every pod of the DaemonSet `namespace/name` is Ready, then
/// deletes it. After `timeout` it deletes it too (left behind, it would
/// keep a privileged pod on every node) and fails naming how many nodes
/// are clean.
pub async fn wait_and_delete(
    client: Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    let deadline = Instant::now() + timeout;
    let mut last: Option<Progress> = None;
    let outcome = loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, api.get(name)).await {
            Ok(Ok(ds)) => {
                let progress = Progress::of(&ds);
                if last != Some(progress) {
                    println!(
                        "{namespace}/{name}: {} of {} nodes clean",
                        progress.ready, progress.desired
                    );
                    last = Some(progress);
                }
                if progress.done() {
                    break Ok(());
                }
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                bail!("DaemonSet {namespace}/{name} does not exist: nothing tells which nodes are clean");
            }
            Ok(Err(e)) => eprintln!(
                "reading DaemonSet {namespace}/{name}: {}",
                crate::source::kube::describe(&e)
            ),
            Err(_) => eprintln!(
                "reading DaemonSet {namespace}/{name}: no answer within {REQUEST_TIMEOUT:?}"
            ),
        }
        if Instant::now() >= deadline {
            let left = last.map_or("its status was never read".to_string(), |p| {
                format!("{} of {} nodes are clean", p.ready, p.desired)
            });
            break Err(anyhow::anyhow!(
                "DaemonSet {namespace}/{name} not done after {}s: {left}; run `gangplank uninstall --cgroup <cgroup2 mount>` on the other nodes",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let deleted = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        api.delete(name, &DeleteParams::background()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!(crate::source::kube::describe(&e))),
        Err(_) => Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
    }
    .with_context(|| format!("deleting DaemonSet {namespace}/{name}"));
    outcome?;
    deleted?;
    println!("{namespace}/{name}: every node is clean; deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetStatus;

    use super::*;

    fn ds(generation: i64, observed: i64, desired: i32, ready: i32, updated: i32) -> DaemonSet {
        let mut ds = DaemonSet::default();
        ds.metadata.generation = Some(generation);
        ds.status = Some(DaemonSetStatus {
            observed_generation: Some(observed),
            desired_number_scheduled: desired,
            number_ready: ready,
            updated_number_scheduled: Some(updated),
            ..DaemonSetStatus::default()
        });
        ds
    }

    #[test]
    fn done_when_every_node_has_a_ready_pod_of_the_current_spec() {
        assert!(Progress::of(&ds(1, 1, 3, 3, 3)).done());
        assert!(!Progress::of(&ds(1, 1, 3, 2, 3)).done(), "one node left");
        assert!(!Progress::of(&ds(2, 1, 3, 3, 3)).done(), "status is stale");
        assert!(
            !Progress::of(&ds(1, 1, 3, 3, 1)).done(),
            "old pods are ready"
        );
        assert!(Progress::of(&ds(1, 1, 0, 0, 0)).done(), "no node to clean");
        // A DaemonSet the controller has not looked at yet.
        assert!(!Progress::of(&DaemonSet {
            metadata: kube::api::ObjectMeta {
                generation: Some(1),
                ..Default::default()
            },
            ..DaemonSet::default()
        })
        .done());
    }

    #[test]
    fn mount_bpffs_refuses_a_path_with_a_nul() {
        let p = Path::new("/tmp/\0x");
        assert!(mount_bpffs(p).is_err());
    }
}
