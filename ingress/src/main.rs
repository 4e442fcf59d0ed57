//! `gangplank-ingress`: the Ingress proxy.
//!
//! Reads Ingresses, IngressClasses, Services, EndpointSlices and TLS Secrets
//! from a manifest directory (watched; every change applied within the
//! watcher's 100 ms batching plus a rebuild), serves HTTP and HTTPS, and
//! answers `/metrics`, `/healthz` and `/readyz` on a separate admin port.
//!
//! Logs: operational lines on stderr (human-readable); the access log, one
//! JSON object per request, on stdout (target `access`), so that log
//! shippers can take it as is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use gangplank::source::kube::{connect, KubeOptions};
use gangplank_ingress::access_log::{FlushGuard, JsonLines, LogBuffer};
use gangplank_ingress::config::{ObjectStore, Settings, KINDS};
use gangplank_ingress::leader::{Elector, LeaseConfig};
use gangplank_ingress::metrics::IngressMetrics;
use gangplank_ingress::proxy::record::ACCESS_LOG_TARGET;
use gangplank_ingress::proxy::{Cidr, Proxy, ProxyConfig};
use gangplank_ingress::route::{ClassConfig, DEFAULT_CONTROLLER};
use gangplank_ingress::status::{LbAddress, Publish};
use gangplank_ingress::tls::{self, CertResolver, SecretRef};

mod admin;
mod cluster;
mod reload;
mod workers;

/// mimalloc: per-thread free lists suit a proxy's many short-lived
/// buffers (requests, headers, frames) better than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "gangplank-ingress",
    version,
    about = "Kubernetes Ingress proxy: host and path routing, TLS by SNI, HTTP/1.1 and HTTP/2, straight to endpoints"
)]
struct Args {
    /// Directory of Kubernetes manifests (Ingress, IngressClass, Service,
    /// EndpointSlice, Secret of type kubernetes.io/tls), followed for
    /// changes. Without it, the Kubernetes API server is followed.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// kubeconfig file for the API server (default: KUBECONFIG, then
    /// ~/.kube/config, then the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Publish this Service's load-balancer addresses in the status of
    /// served Ingresses (NAMESPACE/NAME; cluster mode).
    #[arg(long, value_parser = parse_secret_ref, conflicts_with = "publish_address")]
    publish_service: Option<SecretRef>,
    /// Publish these addresses (IPs or hostnames, comma separated) in the
    /// status of served Ingresses (cluster mode).
    #[arg(long, value_delimiter = ',')]
    publish_address: Vec<String>,
    /// Name of the Lease that elects the replica writing Ingress status.
    #[arg(long, default_value = "gangplank-ingress-leader")]
    election_id: String,
    /// This replica's name in the election (default: the hostname, which
    /// is the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Namespace of the election Lease (the ingress's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// Plain-HTTP listener (HTTP/1.1 and h2c with prior knowledge).
    #[arg(long, default_value = "0.0.0.0:80")]
    http_bind: SocketAddr,
    /// TLS listener (HTTP/1.1 and HTTP/2 by ALPN).
    #[arg(long, default_value = "0.0.0.0:443")]
    https_bind: SocketAddr,
    /// Admin listener: /metrics (Prometheus), /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:10254")]
    metrics_addr: SocketAddr,
    /// Serve only the IngressClass of this name (it must name our
    /// controller); default: every IngressClass of our controller.
    #[arg(long)]
    ingress_class: Option<String>,
    /// `spec.controller` of the IngressClasses to serve.
    #[arg(long, default_value = DEFAULT_CONTROLLER)]
    controller_name: String,
    /// Secret NAMESPACE/NAME (type kubernetes.io/tls) served for unknown or
    /// absent SNI; default: a generated self-signed certificate.
    #[arg(long, value_parser = parse_secret_ref)]
    default_certificate: Option<SecretRef>,
    /// Worker threads, each serving the connections it accepts on a
    /// single-threaded runtime (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Proxies whose X-Forwarded-* headers are trusted (CIDRs, comma
    /// separated).
    #[arg(long, value_delimiter = ',')]
    trusted_proxies: Vec<Cidr>,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 100 << 20)]
    max_body_bytes: u64,
    /// Largest request head in bytes (431 beyond).
    #[arg(long, default_value_t = 64 << 10)]
    max_header_bytes: usize,
    /// Seconds a client may take to send a request head.
    #[arg(long, default_value_t = 30)]
    header_read_timeout: u64,
    /// Seconds a client connection may stay idle.
    #[arg(long, default_value_t = 75)]
    idle_timeout: u64,
    /// Seconds to wait for a TCP connection to an endpoint.
    #[arg(long, default_value_t = 5)]
    connect_timeout: u64,
    /// Seconds to wait for an endpoint's response headers (504 beyond).
    #[arg(long, default_value_t = 60)]
    response_timeout: u64,
    /// Seconds in-flight requests get to finish on SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Write the access log (JSON lines on stdout).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    access_log: bool,
}

fn parse_secret_ref(s: &str) -> Result<SecretRef, String> {
    s.parse()
        .map_err(|e: gangplank_ingress::tls::InvalidSecretRef| e.to_string())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Flushes the access log's buffer when main returns.
    let _access_log = init_logging(args.access_log);
    // The control plane (watcher, reloads, admin) on this thread; requests
    // on the workers' threads (see `workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

/// stderr: operational logs; stdout: access log as JSON lines. The access
/// log is written by a thread of its own from a buffer (see
/// `access_log::LogBuffer`): a `write(2)` per request on the request path
/// cost a third of the throughput. Returns the guard that flushes it on
/// drop.
fn init_logging(access_log: bool) -> Option<FlushGuard> {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    // Per-layer callsite filters only (EnvFilter, Targets), and no layer
    // more verbose than RUST_LOG: then the subscriber's maximum level is
    // RUST_LOG's, and the h2 crate's per-frame `trace!` calls stop at a
    // level comparison. A layer open to TRACE (even one that drops the
    // event later) made every one of them walk the filter directives: a
    // tenth of the CPU under HTTP/2 load. A `filter_fn` is worse: asked
    // again on every span and event.
    let ops_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // The access log has its own layer and switch (--access-log).
        .add_directive(
            format!("{ACCESS_LOG_TARGET}=off")
                .parse()
                .unwrap_or_else(|_| LevelFilter::OFF.into()),
        );
    let ops = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(ops_filter);
    let buffer = if access_log {
        match LogBuffer::new(std::io::stdout()) {
            Ok(buffer) => Some(buffer),
            Err(e) => {
                eprintln!("gangplank-ingress: no access log: cannot start its thread: {e}");
                None
            }
        }
    } else {
        None
    };
    let (access, guard) = if let Some((writer, guard)) = buffer {
        let layer = JsonLines::new(writer)
            .with_filter(Targets::new().with_target(ACCESS_LOG_TARGET, LevelFilter::INFO));
        (Some(layer), Some(guard))
    } else {
        (None, None)
    };
    tracing_subscriber::registry().with(ops).with(access).init();
    guard
}

async fn run(args: Args) -> Result<()> {
    let metrics = Arc::new(IngressMetrics::new());
    let config = ProxyConfig {
        connect_timeout: Duration::from_secs(args.connect_timeout),
        response_header_timeout: Duration::from_secs(args.response_timeout),
        trusted_proxies: args.trusted_proxies.clone(),
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_body_bytes: args.max_body_bytes,
        max_header_bytes: args.max_header_bytes,
        ..ProxyConfig::default()
    };
    let proxy = Arc::new(Proxy::with_metrics(config, Some(metrics.clone())));
    let settings = Settings {
        class: ClassConfig {
            controller: args.controller_name.clone(),
            class_name: args.ingress_class.clone(),
        },
        default_certificate: args.default_certificate.clone(),
        publish: if let Some(service) = &args.publish_service {
            Publish::Service(service.namespace.clone(), service.name.clone())
        } else if !args.publish_address.is_empty() {
            Publish::Addresses(
                args.publish_address
                    .iter()
                    .map(|a| LbAddress::parse(a))
                    .collect(),
            )
        } else {
            Publish::Nothing
        },
    };

    // Bind everything first: a port in use fails start-up, before any
    // work. Connections queue in the backlog until the first build.
    let admin = admin::Admin::start(args.metrics_addr, metrics.clone()).await?;
    let http = workers::bind(args.http_bind, "HTTP")?;
    let https = workers::bind(args.https_bind, "HTTPS")?;

    let publishing = settings.publish != Publish::Nothing;
    let (source, mut changes, client) = match &args.manifests {
        Some(dir) => {
            let (watcher, changes) = gangplank::source::ManifestWatcher::start(dir, KINDS)
                .with_context(|| format!("watching {}", dir.display()))?;
            (cluster::Source::Manifests(watcher), changes, None)
        }
        None => {
            let client = connect(&KubeOptions {
                kubeconfig: args.kubeconfig.clone(),
            })
            .await?;
            let (source, changes) = cluster::Source::api(client.clone());
            (source, changes, Some(client))
        }
    };
    let mut reloader = reload::Reloader::new(ObjectStore::new(), settings, proxy.clone());
    // The initial scan may come in several batches; serve once it is whole.
    wait_for_sync(&mut changes, &mut reloader).await?;
    let mut applied = reloader.rebuild();
    // In cluster mode, the Secrets those objects name are read now; serve
    // once they are in too.
    if source.read_secrets(&applied.secrets) > 0 {
        wait_for_secrets(&mut changes, &mut reloader, &applied.secrets).await?;
        applied = reloader.rebuild();
    }
    let elector = match (&client, publishing) {
        (Some(client), true) => {
            let identity = match &args.pod_name {
                Some(name) => name.clone(),
                None => gangplank::preflight::hostname("--pod-name", "POD_NAME")?,
            };
            Some(Elector::start(
                client.clone(),
                LeaseConfig::new(&args.pod_namespace, &args.election_id, &identity),
            ))
        }
        _ => None,
    };
    let status = match (&client, &elector) {
        (Some(client), Some(elector)) => Some(cluster::StatusWriter::start(
            client.clone(),
            elector.subscribe(),
        )),
        _ => None,
    };
    if let Some(status) = &status {
        status.update(applied.ingresses.clone(), applied.publish.clone());
    }
    let resolver = Arc::new(CertResolver::new(applied.certs.clone()));
    reloader.set_resolver(resolver.clone());
    let tls_config =
        Arc::new(tls::server_config(resolver).context("building the TLS configuration")?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let count = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let listeners = workers::Listeners {
        http,
        https,
        tls: tls_config,
    };
    let workers = match workers::Workers::start(count, &listeners, &proxy, &stop_rx) {
        Ok(workers) => workers,
        Err(e) => {
            stop_tx.send_replace(true);
            return Err(e);
        }
    };
    drop(listeners);
    metrics.set_ready();
    tracing::info!(
        http = %args.http_bind,
        https = %args.https_bind,
        admin = %admin.local_addr(),
        "ingress ready"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => {
                    reloader.stage(change);
                    // Take whatever else is already queued: one rebuild.
                    while let Ok(more) = changes.try_recv() {
                        reloader.stage(more);
                    }
                    let applied = reloader.rebuild();
                    source.read_secrets(&applied.secrets);
                    if let Some(status) = &status {
                        status.update(applied.ingresses, applied.publish);
                    }
                }
                None => {
                    tracing::error!("the manifest watcher stopped: configuration is frozen until restart");
                    // Keep serving what we have; wait for a signal only.
                    wait_for_signal(&mut sigterm).await;
                    break;
                }
            },
            () = wait_for_signal(&mut sigterm) => break,
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
    drop(source);
    if let Some(elector) = elector {
        // Hands the Lease over to the next replica at once.
        elector.stop().await;
    }
    stop_tx.send_replace(true);
    workers.join().await;
    admin.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Stages batches until one says the source is in sync.
async fn wait_for_sync(
    changes: &mut tokio::sync::mpsc::Receiver<gangplank::source::DirChange>,
    reloader: &mut reload::Reloader,
) -> Result<()> {
    loop {
        let Some(change) = changes.recv().await else {
            anyhow::bail!("the source stopped before the initial sync completed");
        };
        let synced = change.synced;
        reloader.stage(change);
        if synced {
            return Ok(());
        }
    }
}

/// How long start-up waits for the Secrets Ingresses name: they come in
/// milliseconds when they exist; one that does not is reported and its
/// hosts get the default certificate.
const SECRETS_DEADLINE: Duration = Duration::from_secs(5);

/// Stages batches until every Secret of `secrets` is in (or
/// [`SECRETS_DEADLINE`] passed). Waiting for a `synced` batch instead could
/// take one that was queued before the Secret watches started.
async fn wait_for_secrets(
    changes: &mut tokio::sync::mpsc::Receiver<gangplank::source::DirChange>,
    reloader: &mut reload::Reloader,
    secrets: &std::collections::BTreeSet<SecretRef>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SECRETS_DEADLINE;
    while !reloader.has_secrets(secrets) {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Ok(Some(change)) => reloader.stage(change),
            Ok(None) => anyhow::bail!("the source stopped during the initial sync"),
            Err(_) => {
                tracing::warn!(
                    "not every Secret the Ingresses name arrived within {SECRETS_DEADLINE:?}; serving without them"
                );
                break;
            }
        }
    }
    Ok(())
}

async fn wait_for_signal(sigterm: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
