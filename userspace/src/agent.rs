//! The node agent's main loop: manifests → model → BPF maps.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, instrument, warn};

use crate::dataplane::ct_gc::CtGc;
use crate::dataplane::loader::{LbMode, XdpSetting};
use crate::dataplane::node_maps::NodeMaps;
use crate::dataplane::{Datapath, LbMaps, Stats, Writer};
use crate::devices::{self, AddressWatcher, NetDevice};
use crate::health::HealthServer;
use crate::metrics::{AgentMetrics, MetricsServer};
use crate::model::{Changes, HealthCheck, ModelObject, ServiceStore};
use crate::preflight;
use crate::source::kube::KubeOptions;
use crate::source::DirChange;

mod source;
use crate::status;
use source::Source;

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
    /// Where Services and EndpointSlices come from.
    pub source: SourceConfig,
    /// This node's name (EndpointSlice `nodeName`).
    pub node_name: String,
    /// cgroup v2 directory the socket hooks attach to.
    pub cgroup: PathBuf,
    /// bpffs directory for pins.
    pub bpffs: PathBuf,
    /// `--devices`: where NodePort/LoadBalancer/external-IP traffic arrives
    /// (None: detected).
    pub devices: Option<Vec<String>>,
    /// `--xdp`.
    pub xdp: XdpSetting,
    /// `--lb-mode`.
    pub lb_mode: LbMode,
    /// `--maglev-table-size`.
    pub maglev_table_size: u32,
    /// `--metrics-addr`: Prometheus metrics, /healthz and /readyz.
    pub metrics_addr: Option<SocketAddr>,
    /// Address the health-check node ports listen on (all by default).
    pub health_bind: IpAddr,
    /// How often expired conntrack entries are collected.
    pub ct_gc_interval: Duration,
}

/// Where the agent reads Services and EndpointSlices.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A manifest directory, followed with inotify.
    Manifests(PathBuf),
    /// The Kubernetes API server (cluster mode).
    Api(KubeOptions),
}

/// How often map fill levels are sampled for the metrics.
const MAP_FILL_INTERVAL: Duration = Duration::from_secs(15);

/// Run until SIGTERM/SIGINT. The datapath stays in place afterwards.
pub async fn run(config: Config) -> Result<()> {
    preflight::require_root()?;
    preflight::require_kernel()?;
    preflight::require_cgroup2(&config.cgroup)?;
    preflight::require_bpffs(&config.bpffs)?;
    if let SourceConfig::Manifests(dir) = &config.source {
        if !dir.is_dir() {
            anyhow::bail!("--manifests {}: not a directory", dir.display());
        }
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
    let metrics = Arc::new(AgentMetrics::new());
    let _metrics_server = match config.metrics_addr {
        Some(addr) => Some(
            MetricsServer::start(addr, metrics.clone())
                .with_context(|| format!("serving metrics on {addr}"))?,
        ),
        None => None,
    };
    // Address changes come from a netlink thread; a tokio channel brings
    // them into the main loop. Started before the devices are read, so a
    // change in between is not lost.
    let (addr_tx, mut addr_changes) = tokio::sync::mpsc::unbounded_channel();
    let _address_watcher = AddressWatcher::start_with(move || addr_tx.send(()).is_ok())
        .context("watching the node's addresses")?;
    let mut devices = match &config.devices {
        Some(names) => devices::resolve(names).context("--devices")?,
        // Nothing qualifying is not fatal: ClusterIP service still works;
        // only traffic arriving from outside the node is not balanced.
        None => devices::detect().unwrap_or_else(|e| {
            warn!(error = %e, "no device for NodePort/LoadBalancer traffic; pass --devices to choose");
            Vec::new()
        }),
    };
    warn_if_ports_overlap();
    let (mut datapath, maps) =
        Datapath::load_socket_only(&config.bpffs).context("loading the datapath")?;
    datapath
        .set_lb_mode(config.lb_mode)
        .context("setting --lb-mode")?;
    let mut node_maps = NodeMaps::open_pinned(&config.bpffs.join("maps"))
        .context("opening the node address maps")?;
    let node_changes = node_maps
        .sync(&devices)
        .context("writing the node's addresses")?;
    info!(devices = %devices::table(&devices).trim_end(), changes = ?node_changes, "devices");
    let mut writer = Writer::new(maps)
        .context("reading pinned maps")?
        .with_maglev_table_size(config.maglev_table_size)
        .context("--maglev-table-size")?;
    let adopted = writer.len();
    let installed = started.elapsed();
    // Verifying the tc/XDP programs and attaching tc (tcx waits for RCU
    // grace periods, ~10 ms per hook) take tens of milliseconds: done while
    // the manifests are read. Attaching before the maps are synced is
    // safe for tc, unlike for the socket hooks: a packet the maps do not
    // know yet goes on untranslated, exactly as with no program at all, and
    // pinned maps of a previous agent are served as that agent left them.
    let tc_devices = devices.clone();
    let tc_attach = std::thread::Builder::new()
        .name("gp-tc-attach".into())
        .spawn(move || {
            datapath
                .load_device_programs()
                .context("loading the tc/XDP programs")?;
            attach_tc(&mut datapath, &tc_devices).map(|()| datapath)
        })
        .context("starting the tc attach thread")?;

    // The watcher's first batches are a full scan of the directory, taken
    // after the watch is set up, so no change can slip in between. Objects
    // are converted to the model's compact form on the watcher thread, so
    // k8s-openapi objects never pile up here.
    let mut store = ServiceStore::with_node_name(config.node_name.clone());
    let (source, mut changes) = Source::start(&config, store.mapper()).await?;
    if let Some(api) = source.api_health() {
        metrics.follow_api(api.clone());
    }
    // The initial scan arrives in bounded batches. Each batch's frontends
    // are written as soon as it is parsed (map writes overlap with parsing
    // on the other core); what is no longer wanted is removed only once the
    // whole directory is known.
    let mut files = 0;
    let mut desired = HashSet::new();
    // A manifest file holds a Service with its EndpointSlices, so each
    // batch can go to the maps as soon as it is parsed. The API delivers
    // Services and EndpointSlices through separate watches: a Service
    // often comes before its slices, and writing it then would replace the
    // pinned entry (which a previous agent's programs are serving) with
    // one without backends. So in cluster mode nothing is written before
    // every list is in.
    let overlap_writes = matches!(config.source, SourceConfig::Manifests(_));
    let mut stats = Stats::default();
    // The API server may be unreachable for a while: the pinned maps keep
    // serving meanwhile, and the agent must stay alive (a restart would
    // not help), so the wait beats the heartbeat and says what it waits for.
    let mut waiting = tokio::time::interval(RETRY_INTERVAL);
    waiting.tick().await;
    loop {
        let batch = tokio::select! {
            batch = changes.recv() => batch.context("the source stopped during the initial sync")?,
            _ = waiting.tick() => {
                metrics.heartbeat();
                if let Some(api) = source.api_health() {
                    warn!(status = %api.status(), "waiting for the initial list of Services and EndpointSlices; the pinned datapath keeps serving");
                }
                continue;
            }
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
        };
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
        if overlap_writes {
            stats.add(writer.prefill(&model.frontends));
        }
        if synced {
            break;
        }
    }
    if !overlap_writes {
        // Held back until the lists are complete; built from the model in
        // chunks, so that no second copy of every frontend is ever held.
        let keys: Vec<_> = desired.iter().copied().collect();
        for chunk in keys.chunks(1024) {
            let batch: Vec<_> = chunk.iter().map(|k| (*k, store.frontend(k))).collect();
            stats.add(writer.prefill(batch.iter().map(|(k, f)| (k, f))));
        }
    }
    let scanned = started.elapsed();
    stats.add(writer.finish_sync(&desired));
    let mut datapath = tc_attach
        .join()
        .map_err(|_| anyhow::anyhow!("the tc attach thread panicked"))??;
    // Only now do the new programs go live: with fresh maps (first start,
    // or an upgrade) they would otherwise pass service traffic through
    // untranslated until the sync was done. A previous agent's programs,
    // sharing these maps, kept serving meanwhile.
    datapath
        .attach(&config.cgroup)
        .context("attaching the socket load balancer")?;
    let health =
        HealthServer::start(config.health_bind).context("starting the health-check server")?;
    let mut health_checks: Vec<HealthCheck> = store.health_checks();
    report_health(health.update(health_checks.clone()));
    let _ct_gc = CtGc::start(
        config.bpffs.join("maps").join(crate::dataplane::loader::CT),
        config.ct_gc_interval,
        Some(metrics.clone()),
    )
    .context("starting the conntrack garbage collector")?;

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
    metrics.observe_sync(started.elapsed());
    report_sizes(&metrics, &store, &writer);
    // tc already does everything; the XDP fast path (a driver
    // reconfiguration, tens of milliseconds on some drivers) comes after.
    attach_xdp(&mut datapath, &devices, config.xdp)?;
    // The first map-fill sample before ready, so that a scrape right after
    // shows it; later ones run off the loop (see below).
    sample_map_fill(&config.bpffs, &metrics).await;
    metrics.set_ready();
    info!("agent ready");

    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fill = tokio::time::interval_at(
        tokio::time::Instant::now() + MAP_FILL_INTERVAL,
        MAP_FILL_INTERVAL,
    );
    fill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => {
                    let started = Instant::now();
                    apply_change(&mut store, &mut writer, change);
                    metrics.observe_sync(started.elapsed());
                    report_sizes(&metrics, &store, &writer);
                    let checks = store.health_checks();
                    if checks != health_checks {
                        health_checks = checks;
                        report_health(health.update(health_checks.clone()));
                    }
                }
                None => anyhow::bail!("the source stopped"),
            },
            Some(()) = addr_changes.recv() => {
                // Coalesce a burst (an address brings NEWADDR and NEWLINK).
                tokio::time::sleep(Duration::from_millis(20)).await;
                while addr_changes.try_recv().is_ok() {}
                follow_devices(&mut devices, &mut node_maps, &mut datapath, config.xdp);
            }
            _ = retry.tick() => {
                retry_failed(&store, &mut writer);
                // Also re-tries health-check ports that could not be bound.
                report_health(health.update(health_checks.clone()));
                metrics.heartbeat();
            }
            _ = fill.tick() => {
                // Counting entries walks every map (a quarter of a second
                // at 10,000 services): off the loop, so that no Service
                // change waits for it.
                let (bpffs, metrics) = (config.bpffs.clone(), metrics.clone());
                tokio::spawn(async move { sample_map_fill(&bpffs, &metrics).await });
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    health.stop();
    info!("stopping; programs stay attached and maps pinned, so traffic keeps flowing");
    Ok(())
}

/// Samples the pinned maps' fill levels into the metrics, on a blocking
/// thread.
async fn sample_map_fill(bpffs: &std::path::Path, metrics: &Arc<AgentMetrics>) {
    let (bpffs, metrics) = (bpffs.to_path_buf(), metrics.clone());
    let sampled = tokio::task::spawn_blocking(move || match status::map_fill(&bpffs) {
        Ok(fill) => metrics.set_map_fill(&fill),
        Err(e) => warn!(error = %e, "cannot read map fill levels"),
    });
    // Only a panic in the sampler ends up here: nothing to add to it.
    let _ = sampled.await;
}

fn report_sizes<M: LbMaps>(metrics: &AgentMetrics, store: &ServiceStore, writer: &Writer<M>) {
    metrics.set_services(store.service_count());
    metrics.set_frontends(writer.len());
    metrics.set_backends(writer.backend_count());
}

fn device_list(devices: &[NetDevice]) -> Vec<(String, u32)> {
    devices
        .iter()
        .map(|d| (d.name.clone(), d.ifindex))
        .collect()
}

fn attach_tc(datapath: &mut Datapath, devices: &[NetDevice]) -> Result<()> {
    datapath
        .attach_devices(&device_list(devices))
        .context("attaching the device programs")
}

fn attach_xdp(datapath: &mut Datapath, devices: &[NetDevice], xdp: XdpSetting) -> Result<()> {
    // `auto` leaves veths to tc (see `XdpSetting::Auto`).
    let (veths, others): (Vec<NetDevice>, Vec<NetDevice>) = devices
        .iter()
        .cloned()
        .partition(|d| d.kind.as_deref() == Some("veth"));
    let veth_xdp = match xdp {
        XdpSetting::Auto => XdpSetting::Off,
        other => other,
    };
    let mut attached = datapath
        .attach_xdp(&device_list(&others), xdp)
        .context("attaching the XDP fast path")?;
    attached.extend(
        datapath
            .attach_xdp(&device_list(&veths), veth_xdp)
            .context("attaching the XDP fast path")?,
    );
    for dev in attached {
        info!(device = %dev.name, ifindex = dev.ifindex, xdp = dev.xdp, "device load balancer attached");
    }
    Ok(())
}

/// Addresses changed: update the node address maps; a device that was
/// re-created (new ifindex) gets its programs attached again.
fn follow_devices(
    devices: &mut [NetDevice],
    node_maps: &mut NodeMaps,
    datapath: &mut Datapath,
    xdp: XdpSetting,
) {
    let before: Vec<u32> = devices.iter().map(|d| d.ifindex).collect();
    match devices::refresh(devices) {
        Ok(false) => return,
        Ok(true) => {}
        Err(e) => {
            warn!(error = %e, "cannot re-read the devices");
            return;
        }
    }
    match node_maps.sync(devices) {
        Ok(changes) => info!(?changes, "node addresses changed"),
        Err(e) => warn!(error = %e, "cannot update the node addresses"),
    }
    let after: Vec<u32> = devices.iter().map(|d| d.ifindex).collect();
    if before != after {
        let attached =
            attach_tc(datapath, devices).and_then(|()| attach_xdp(datapath, devices, xdp));
        if let Err(e) = attached {
            warn!(error = %format!("{e:#}"), "cannot attach to a re-created device");
        }
    }
}

/// The SNAT range sits above the kernel's default ephemeral range; a node
/// tuned to use those ports for its own connections could see replies to
/// one of them taken for a NodePort flow's. Say so (changing the node's
/// sysctls is not the agent's business).
fn warn_if_ports_overlap() {
    use gangplank_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut bounds = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    if let (Some(low), Some(high)) = (bounds.next(), bounds.next()) {
        if high >= SNAT_PORT_MIN as u32 && low <= SNAT_PORT_MAX as u32 {
            warn!(
                ephemeral = %format!("{low}-{high}"),
                snat = %format!("{SNAT_PORT_MIN}-{SNAT_PORT_MAX}"),
                "net.ipv4.ip_local_port_range overlaps gangplank's SNAT ports: \
                 lower it below {SNAT_PORT_MIN}, or reserve the range in \
                 net.ipv4.ip_local_reserved_ports"
            );
        }
    }
}

fn report_health(errors: Vec<crate::health::Error>) {
    for error in errors {
        warn!(%error, "health-check node port not served");
    }
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
