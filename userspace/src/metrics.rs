//! The agent's Prometheus metrics and its `/metrics`, `/healthz` and
//! `/readyz` endpoints.
//!
//! [`AgentMetrics`] is shared (`Arc`) between the agent loop, which sets
//! values, the conntrack GC, and [`MetricsServer`], which encodes them on
//! each scrape in the OpenMetrics text format.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::dataplane::ct_gc::GcStats;
use crate::http::{serve, text, Body, ServerThread};
use crate::source::kube::{ApiHealth, ApiStatus};
use crate::status::MapFill;

/// `/healthz` fails once the agent loop has not called
/// [`AgentMetrics::heartbeat`] for this long (by default).
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Metrics server errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server's runtime thread could not be started.
    #[error("starting the metrics server thread: {0}")]
    Start(#[source] io::Error),
    /// The metrics address could not be bound.
    #[error("metrics server: cannot listen on {addr}: {source} (is another agent running on this node?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

/// What the agent reports, and its liveness and readiness.
pub struct AgentMetrics {
    registry: Registry,
    services: Gauge,
    frontends: Gauge,
    backends: Gauge,
    sync_duration: Histogram,
    sync_errors: Counter,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    /// Maps last reported, to drop the series of maps that disappeared.
    map_names: Mutex<BTreeSet<String>>,
    ct_gc_deleted: Counter,
    ct_entries: Gauge,
    ready: AtomicBool,
    started: Instant,
    /// Milliseconds after `started` of the last heartbeat.
    last_beat_ms: AtomicU64,
    liveness_timeout: Duration,
    /// The API source's health, in cluster mode.
    api: OnceLock<Arc<ApiHealth>>,
    api_connected: Gauge,
    api_restarts: Counter,
    /// `api.restarts` already added to `api_restarts`.
    api_restarts_counted: AtomicU64,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics")
            .field("ready", &self.is_ready())
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl AgentMetrics {
    /// Fresh metrics: not ready, alive (start-up counts as a heartbeat).
    pub fn new() -> Self {
        Self::with_liveness_timeout(DEFAULT_LIVENESS_TIMEOUT)
    }

    /// Like [`new`](Self::new), with `/healthz` failing after `timeout`
    /// without a heartbeat.
    pub fn with_liveness_timeout(timeout: Duration) -> Self {
        let mut registry = Registry::with_prefix("gangplank");
        let services = Gauge::default();
        registry.register(
            "services",
            "Services the agent knows of (from the API server or the manifests)",
            services.clone(),
        );
        let frontends = Gauge::default();
        registry.register(
            "frontends",
            "Frontends (address, port, protocol, scope) programmed in the datapath",
            frontends.clone(),
        );
        let backends = Gauge::default();
        registry.register(
            "backends",
            "Backends programmed in the datapath",
            backends.clone(),
        );
        // 0.5 ms .. 16 s: from one Service change to a full start-up scan.
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "sync_duration",
            "Time to apply one batch of changes to the BPF maps",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let sync_errors = Counter::default();
        registry.register(
            "sync_errors",
            "Frontends that could not be programmed (retried later)",
            sync_errors.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries in each pinned BPF map (arrays report their size)",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_capacity",
            "max_entries of each pinned BPF map",
            map_capacity.clone(),
        );
        let ct_gc_deleted = Counter::default();
        registry.register(
            "conntrack_gc_deleted",
            "Expired conntrack entries deleted by the garbage collector",
            ct_gc_deleted.clone(),
        );
        let ct_entries = Gauge::default();
        registry.register(
            "conntrack_entries",
            "Live conntrack entries after the last garbage collection",
            ct_entries.clone(),
        );
        let api_connected = Gauge::default();
        registry.register(
            "api_connected",
            "1 while list and watch requests to the Kubernetes API server succeed (cluster mode)",
            api_connected.clone(),
        );
        let api_restarts = Counter::default();
        registry.register(
            "api_watch_restarts",
            "List and watch requests to the Kubernetes API server that failed and were retried",
            api_restarts.clone(),
        );
        Self {
            services,
            api: OnceLock::new(),
            api_connected,
            api_restarts,
            api_restarts_counted: AtomicU64::new(0),
            registry,
            frontends,
            backends,
            sync_duration,
            sync_errors,
            map_entries,
            map_capacity,
            map_names: Mutex::new(BTreeSet::new()),
            ct_gc_deleted,
            ct_entries,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            liveness_timeout: timeout,
        }
    }

    /// Services known now.
    pub fn set_services(&self, n: usize) {
        self.services.set(gauge_value(n as u64));
    }

    /// Frontends programmed now.
    pub fn set_frontends(&self, n: usize) {
        self.frontends.set(gauge_value(n as u64));
    }

    /// Backends programmed now.
    pub fn set_backends(&self, n: usize) {
        self.backends.set(gauge_value(n as u64));
    }

    /// One sync (a batch of changes written to the maps) took `elapsed`.
    pub fn observe_sync(&self, elapsed: Duration) {
        self.sync_duration.observe(elapsed.as_secs_f64());
    }

    /// `n` frontends failed to be programmed in a sync.
    pub fn add_sync_errors(&self, n: u64) {
        self.sync_errors.inc_by(n);
    }

    /// Fill levels from [`crate::status::map_fill`]. Maps not in `fill` any
    /// more lose their series.
    pub fn set_map_fill(&self, fill: &[MapFill]) {
        let mut names = self
            .map_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current: BTreeSet<String> = fill.iter().map(|m| m.name.clone()).collect();
        for gone in names.difference(&current) {
            let labels = MapLabels { map: gone.clone() };
            self.map_entries.remove(&labels);
            self.map_capacity.remove(&labels);
        }
        for m in fill {
            let labels = MapLabels {
                map: m.name.clone(),
            };
            self.map_entries
                .get_or_create(&labels)
                .set(gauge_value(m.entries));
            self.map_capacity
                .get_or_create(&labels)
                .set(i64::from(m.max_entries));
        }
        *names = current;
    }

    /// Account one conntrack garbage collection.
    pub fn record_ct_gc(&self, stats: &GcStats) {
        self.ct_gc_deleted.inc_by(stats.deleted);
        self.ct_entries.set(gauge_value(stats.live));
    }

    /// The agent loop is alive: call on every iteration (its periodic retry
    /// tick is enough), or `/healthz` fails after the liveness timeout.
    pub fn heartbeat(&self) {
        let ms = self.started.elapsed().as_millis();
        self.last_beat_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The initial sync is complete: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Time since the last heartbeat (or since start-up).
    pub fn since_heartbeat(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn is_alive(&self) -> bool {
        self.since_heartbeat() <= self.liveness_timeout
    }

    /// Reports the Kubernetes API source's health in the metrics and in
    /// `/healthz` (cluster mode).
    pub fn follow_api(&self, health: Arc<ApiHealth>) {
        let _ = self.api.set(health);
    }

    /// The API server status line for `/healthz`, in cluster mode.
    pub fn api_status(&self) -> Option<ApiStatus> {
        self.api.get().map(|api| api.status())
    }

    /// The scrape text (OpenMetrics).
    pub fn encode(&self) -> String {
        if let Some(status) = self.api_status() {
            self.api_connected.set(i64::from(status.connected));
            let counted = self
                .api_restarts_counted
                .swap(status.restarts, Ordering::Relaxed);
            self.api_restarts
                .inc_by(status.restarts.saturating_sub(counted));
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be a bug
        // in an encoder, reported in the output rather than by a panic.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out.push_str(&format!("# encoding failed: {e}\n"));
        }
        out
    }
}

/// `/metrics`, `/healthz` and `/readyz` on one address.
#[derive(Debug)]
pub struct MetricsServer {
    runtime: ServerThread,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl MetricsServer {
    /// Bind `addr` and serve `state` until [`stop`](Self::stop).
    pub fn start(addr: SocketAddr, state: Arc<AgentMetrics>) -> Result<Self> {
        let bind_err = |source| Error::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let runtime = ServerThread::start("gp-metrics").map_err(Error::Start)?;
        let (stop, stopped) = watch::channel(false);
        let handler = Arc::new(move |req: &Request<Incoming>| respond(&state, req));
        runtime.handle().spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, handler, stopped).await,
                Err(error) => warn!(%local_addr, %error, "cannot serve metrics"),
            }
        });
        info!(%local_addr, "serving /metrics, /healthz and /readyz");
        Ok(Self {
            runtime,
            local_addr,
            stop,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Close the listener and stop the server thread.
    pub fn stop(self) {
        self.stop.send_replace(true);
        self.runtime.stop();
    }
}

fn respond(state: &AgentMetrics, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, state.encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/healthz" => {
            if state.is_alive() {
                // Alive even while the API server is away: the datapath
                // keeps the last known state, and a restart would not
                // bring the API server back. Said in the body.
                match state.api_status() {
                    Some(api) => text(StatusCode::OK, format!("ok\n{api}\n")),
                    None => text(StatusCode::OK, "ok"),
                }
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "agent loop stalled: no heartbeat for {}s",
                        state.since_heartbeat().as_secs()
                    ),
                )
            }
        }
        "/readyz" => {
            if state.is_ready() {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "initial sync not complete")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_client::get;

    fn fill(name: &str, entries: u64, max: u32, lru: bool) -> MapFill {
        MapFill {
            name: name.into(),
            map_type: if lru { "lru_hash" } else { "hash" }.into(),
            entries,
            max_entries: max,
            lru,
        }
    }

    /// The scrape must contain `line` exactly (a sample with its value).
    fn assert_sample(scrape: &str, line: &str) {
        assert!(
            scrape.lines().any(|l| l == line),
            "expected the line {line:?} in the scrape:\n{scrape}"
        );
    }

    #[test]
    fn scrape_has_every_family_with_values() {
        let m = AgentMetrics::new();
        m.set_frontends(12);
        m.set_backends(30);
        m.observe_sync(Duration::from_millis(3));
        m.observe_sync(Duration::from_millis(40));
        m.add_sync_errors(2);
        m.set_map_fill(&[
            fill("GP_SERVICES", 42, 262_144, false),
            fill("GP_CT", 100, 262_144, true),
        ]);
        m.record_ct_gc(&GcStats {
            scanned: 120,
            deleted: 20,
            live: 100,
        });
        m.record_ct_gc(&GcStats {
            scanned: 100,
            deleted: 5,
            live: 95,
        });
        let s = m.encode();
        assert_sample(&s, "gangplank_frontends 12");
        assert_sample(&s, "gangplank_backends 30");
        assert_sample(&s, "gangplank_sync_duration_seconds_count 2");
        let sum: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix("gangplank_sync_duration_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no parsable histogram sum in:\n{s}"));
        assert!((sum - 0.043).abs() < 1e-9, "sum {sum}, expected 0.043");
        assert!(
            s.contains("# TYPE gangplank_sync_duration_seconds histogram"),
            "{s}"
        );
        assert_sample(&s, "gangplank_sync_errors_total 2");
        assert_sample(&s, "gangplank_map_entries{map=\"GP_SERVICES\"} 42");
        assert_sample(&s, "gangplank_map_entries{map=\"GP_CT\"} 100");
        assert_sample(&s, "gangplank_map_capacity{map=\"GP_CT\"} 262144");
        assert_sample(&s, "gangplank_conntrack_gc_deleted_total 25");
        assert_sample(&s, "gangplank_conntrack_entries 95");
        assert!(s.ends_with("# EOF\n"), "{s}");

        // A map that disappeared loses its series.
        m.set_map_fill(&[fill("GP_CT", 7, 262_144, true)]);
        let s = m.encode();
        assert!(!s.contains("GP_SERVICES"), "{s}");
        assert_sample(&s, "gangplank_map_entries{map=\"GP_CT\"} 7");
    }

    #[test]
    fn liveness_follows_heartbeats() {
        let m = AgentMetrics::with_liveness_timeout(Duration::from_millis(50));
        assert!(m.is_alive(), "start-up counts as a heartbeat");
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            !m.is_alive(),
            "alive {:?} after the last beat",
            m.since_heartbeat()
        );
        m.heartbeat();
        assert!(m.is_alive());
    }

    #[test]
    fn endpoints() {
        let state = Arc::new(AgentMetrics::with_liveness_timeout(Duration::from_millis(
            200,
        )));
        state.set_frontends(3);
        let server = MetricsServer::start(([127, 0, 0, 1], 0).into(), state.clone())
            .expect("starting the metrics server");
        let addr = server.local_addr();

        let metrics = get(addr, "/metrics").expect("GET /metrics");
        assert_eq!(metrics.status, 200, "{metrics:?}");
        assert!(
            metrics
                .headers
                .get("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{metrics:?}"
        );
        assert_sample(&metrics.body, "gangplank_frontends 3");

        let ready = get(addr, "/readyz").expect("GET /readyz");
        assert_eq!(
            (ready.status, ready.body.as_str()),
            (503, "initial sync not complete")
        );
        state.set_ready();
        let ready = get(addr, "/readyz").expect("GET /readyz");
        assert_eq!((ready.status, ready.body.as_str()), (200, "ok"));

        let health = get(addr, "/healthz").expect("GET /healthz");
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));
        std::thread::sleep(Duration::from_millis(300));
        let health = get(addr, "/healthz").expect("GET /healthz");
        assert_eq!(health.status, 503, "{health:?}");
        assert!(health.body.contains("stalled"), "{health:?}");
        state.heartbeat();
        assert_eq!(get(addr, "/healthz").expect("GET /healthz").status, 200);

        let missing = get(addr, "/nope").expect("GET /nope");
        assert_eq!(missing.status, 404, "{missing:?}");

        server.stop();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still open after stop"
        );
    }

    #[test]
    fn address_in_use_is_reported() {
        let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("blocker");
        let addr = blocker.local_addr().expect("blocker address");
        let err = MetricsServer::start(addr, Arc::new(AgentMetrics::new()))
            .expect_err("binding a used address must fail");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
