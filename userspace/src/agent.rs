//! The node agent's main loop: manifests → model → BPF maps.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, instrument, warn};

use crate::dataplane::{Datapath, LbMaps, Stats, Writer};
use crate::model::{Changes, ModelObject, ServiceStore};
use crate::preflight;
use crate::source::{DirChange, ManifestWatcher, WatchConfig};

/// Default pin directory.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/gangplank";

/// How often frontends that could not be programmed (a full map) are
/// tried again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Object kinds the agent reads.
pub const KINDS: &[&str] = &["Service", "EndpointSlice"];

/// Agent settings (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of manifests to follow.
    pub manifests: PathBuf,
    /// This node's name (EndpointSlice `nodeName`).
    pub node_name: String,
    /// cgroup v2 directory the socket hooks attach to.
    pub cgroup: PathBuf,
    /// bpffs directory for pins.
    pub bpffs: PathBuf,
}

/// Run until SIGTERM/SIGINT. The datapath stays in place afterwards.
pub async fn run(config: Config) -> Result<()> {
    preflight::require_root()?;
    preflight::require_kernel()?;
    preflight::require_cgroup2(&config.cgroup)?;
    preflight::require_bpffs(&config.bpffs)?;
    if !config.manifests.is_dir() {
        anyhow::bail!(
            "--manifests {}: not a directory",
            config.manifests.display()
        );
    }

    // Handlers first: a SIGTERM during start-up must still end in a clean
    // exit (after the maps are consistent), not in the default action.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let started = Instant::now();
    // The start-up scan allocates and frees tens of MB in small pieces on
    // several threads; keep glibc from trimming and re-growing its heaps
    // meanwhile (malloc_trim below hands the memory back once, at the end).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
    let (mut datapath, maps) =
        Datapath::load(&config.bpffs).context("loading the socket load balancer")?;
    let mut writer = Writer::new(maps).context("reading pinned maps")?;
    let adopted = writer.len();
    let installed = started.elapsed();

    // The watcher's first batches are a full scan of the directory, taken
    // after the watch is set up, so no change can slip in between. Objects
    // are converted to the model's compact form on the watcher thread, so
    // k8s-openapi objects never pile up here.
    let mut store = ServiceStore::with_node_name(config.node_name.clone());
    let (_watcher, mut changes) = ManifestWatcher::start_mapped(
        &config.manifests,
        KINDS,
        WatchConfig::default(),
        store.mapper(),
    )
    .with_context(|| format!("watching {}", config.manifests.display()))?;
    // The initial scan arrives in bounded batches. Each batch's frontends
    // are written as soon as it is parsed (map writes overlap with parsing
    // on the other core); what is no longer wanted is removed only once the
    // whole directory is known.
    let mut files = 0;
    let mut desired = HashSet::new();
    let mut stats = Stats::default();
    loop {
        let batch = changes
            .recv()
            .await
            .context("manifest watcher stopped during the first scan")?;
        files += batch.changed.len();
        report_files(&batch);
        let synced = batch.synced;
        let model = store.apply_model_batch(batch);
        report_model(&model);
        for (key, fe) in &model.frontends {
            if fe.is_some() {
                desired.insert(*key);
            } else {
                desired.remove(key);
            }
        }
        stats.add(writer.prefill(&model.frontends));
        if synced {
            break;
        }
    }
    let scanned = started.elapsed();
    stats.add(writer.finish_sync(&desired));
    // Only now do the new programs go live: with fresh maps (first start,
    // or an upgrade) they would otherwise pass service traffic through
    // untranslated until the sync was done. A previous agent's programs,
    // sharing these maps, kept serving meanwhile.
    datapath
        .attach(&config.cgroup)
        .context("attaching the socket load balancer")?;
    // Parsing thousands of manifests on several threads leaves freed memory
    // in glibc's per-thread arenas; hand it back so a steady-state agent's
    // RSS reflects what it keeps (35 MB instead of 60 at 10,000 services).
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }

    info!(
        node = %config.node_name,
        files,
        frontends = writer.len(),
        adopted_from_pins = adopted,
        upserted = stats.upserted,
        deleted = stats.deleted,
        failed = stats.failed,
        install_ms = installed.as_millis() as u64,
        scan_ms = scanned.as_millis() as u64,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "initial sync complete"
    );

    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => apply_change(&mut store, &mut writer, change),
                None => anyhow::bail!("manifest watcher stopped"),
            },
            _ = retry.tick() => retry_failed(&store, &mut writer),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping; programs stay attached and maps pinned, so traffic keeps flowing");
    Ok(())
}

/// Re-apply frontends whose last update failed, with their current
/// desired state (which may by now be "gone").
fn retry_failed<M: LbMaps>(store: &ServiceStore, writer: &mut Writer<M>) {
    let retry: std::collections::BTreeMap<_, _> = writer
        .failed()
        .map(|key| (*key, store.frontend(key)))
        .collect();
    if retry.is_empty() {
        return;
    }
    let stats = writer.apply(&retry);
    info!(
        frontends = retry.len(),
        upserted = stats.upserted,
        failed = stats.failed,
        "retried frontends that could not be programmed"
    );
}

#[instrument(skip_all, fields(changed = change.changed.len(), removed = change.removed.len()))]
fn apply_change<M: LbMaps>(
    store: &mut ServiceStore,
    writer: &mut Writer<M>,
    change: DirChange<ModelObject>,
) {
    let started = Instant::now();
    report_files(&change);
    let changes = store.apply_model_batch(change);
    report_model(&changes);
    let stats = writer.apply(&changes.frontends);
    info!(
        frontends = changes.frontends.len(),
        upserted = stats.upserted,
        deleted = stats.deleted,
        failed = stats.failed,
        elapsed_us = started.elapsed().as_micros() as u64,
        "maps updated"
    );
}

fn report_files(change: &DirChange<ModelObject>) {
    for (path, parsed) in &change.changed {
        for error in &parsed.errors {
            warn!(file = %path.display(), %error, "invalid manifest skipped");
        }
    }
}

fn report_model(changes: &Changes) {
    for error in &changes.errors {
        warn!(%error, "object skipped");
    }
}
