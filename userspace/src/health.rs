//! Health-check node ports (`spec.healthCheckNodePort` of `type:
//! LoadBalancer` Services with `externalTrafficPolicy: Local`), answered
//! exactly as kube-proxy's `pkg/proxy/healthcheck/service_health.go` does, so
//! cloud load balancers steer traffic to the nodes that have a local endpoint:
//! any path, `application/json`, 200 with a local endpoint, 503 without.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::http::{serve, Body, Handler, ServerThread};
use crate::model::{HealthCheck, ServiceId};

/// How long [`HealthServer::update`] waits for a removed port's listener to
/// close (it takes microseconds; the bound only guards against a wedged
/// runtime).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Health-check server errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server's runtime thread could not be started.
    #[error("starting the health-check server thread: {0}")]
    Start(#[source] io::Error),
    /// A health-check port could not be opened (typically: in use by another
    /// process). Retried on the next [`HealthServer::update`].
    #[error("health check of service {service}: cannot listen on {addr}: {source}")]
    Bind {
        service: ServiceId,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one port answers; replaced in place when the count changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    service: ServiceId,
    local_endpoints: usize,
}

struct Port {
    answer: Arc<RwLock<Answer>>,
    stop: watch::Sender<bool>,
    /// Disconnected once the serving task (and so the listener) is gone.
    closed: mpsc::Receiver<()>,
}

/// The health-check listeners of one node.
pub struct HealthServer {
    bind: IpAddr,
    runtime: ServerThread,
    ports: Mutex<BTreeMap<u16, Port>>,
    proxy_healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer")
            .field("bind", &self.bind)
            .field("ports", &self.ports())
            .finish()
    }
}

impl HealthServer {
    /// Start serving on `bind` (every health-check port listens on this
    /// address; `0.0.0.0` for all of the node's addresses). No port is open
    /// until the first [`update`](Self::update).
    pub fn start(bind: IpAddr) -> Result<Self> {
        let runtime = ServerThread::start("gp-healthcheck").map_err(Error::Start)?;
        Ok(Self {
            bind,
            runtime,
            ports: Mutex::new(BTreeMap::new()),
            proxy_healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Serve exactly `checks`: open ports that are new, close ports that are
    /// gone, and change the answer of the others in place (no re-bind, so a
    /// checker never sees a refused connection because a count changed).
    ///
    /// A port that cannot be opened is logged with its service and returned;
    /// the others are served regardless, and the failed one is tried again
    /// on the next call (so call this periodically, not only on changes, to
    /// recover from a port that was briefly taken).
    pub fn update(&self, checks: Vec<HealthCheck>) -> Vec<Error> {
        let wanted = by_port(checks);
        let mut ports = self.ports.lock().unwrap_or_else(PoisonError::into_inner);

        // Close first, so that nothing we own is in the way of what opens.
        let removed: Vec<u16> = ports
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        let mut closing = Vec::new();
        for port in removed {
            if let Some(p) = ports.remove(&port) {
                let service = read(&p.answer).service;
                info!(%service, port, "closing health check port");
                p.stop.send_replace(true);
                closing.push((port, p.closed));
            }
        }
        for (port, closed) in closing {
            // Ok or Disconnected: the task is gone, and with it the listener.
            if let Err(mpsc::RecvTimeoutError::Timeout) = closed.recv_timeout(CLOSE_TIMEOUT) {
                warn!(port, "health check listener did not close in time");
            }
        }

        let mut errors = Vec::new();
        for (port, check) in wanted {
            let answer = Answer {
                service: check.service,
                local_endpoints: check.local_endpoints,
            };
            if let Some(p) = ports.get(&port) {
                let mut current = p.answer.write().unwrap_or_else(PoisonError::into_inner);
                if *current != answer {
                    debug!(service = %answer.service, port, local_endpoints = answer.local_endpoints,
                        "health check answer changed");
                    *current = answer;
                }
                continue;
            }
            match self.open(port, answer) {
                Ok(p) => {
                    ports.insert(port, p);
                }
                Err(error) => {
                    warn!(%error, "health check port not served; retrying on the next update");
                    errors.push(error);
                }
            }
        }
        errors
    }

    /// Mirror of kube-proxy's `serviceProxyHealthy`: while false, every
    /// health check answers 503, whatever its endpoints, so load balancers
    /// stop sending traffic to a node whose agent is not keeping up.
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.proxy_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        self.ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Close every port and stop the server thread.
    pub fn stop(self) {
        self.runtime.stop();
    }

    fn open(&self, port: u16, answer: Answer) -> Result<Port> {
        let addr = SocketAddr::new(self.bind, port);
        let bind_err = |service: &ServiceId, source| Error::Bind {
            service: service.clone(),
            addr,
            source,
        };
        // Bound here, synchronously, so that a conflict is reported to the
        // caller; the runtime only serves it.
        let listener =
            std::net::TcpListener::bind(addr).map_err(|e| bind_err(&answer.service, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bind_err(&answer.service, e))?;
        info!(service = %answer.service, port, local_endpoints = answer.local_endpoints,
            "serving health check port");
        let answer = Arc::new(RwLock::new(answer));
        let handler = handler(answer.clone(), self.proxy_healthy.clone());
        let (stop, stopped) = watch::channel(false);
        let (closed_tx, closed) = mpsc::channel::<()>();
        self.runtime.handle().spawn(async move {
            // Dropped when this task ends or is cancelled: `closed` then
            // reports Disconnected.
            let _closed = closed_tx;
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, handler, stopped).await,
                Err(error) => warn!(%addr, %error, "cannot serve health check port"),
            }
        });
        Ok(Port {
            answer,
            stop,
            closed,
        })
    }
}

fn read(answer: &RwLock<Answer>) -> Answer {
    answer
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// One check per port. The API server never gives two Services the same
/// `healthCheckNodePort`, but manifests can: the first in (namespace, name)
/// order keeps it, as a port can only have one answer.
fn by_port(mut checks: Vec<HealthCheck>) -> BTreeMap<u16, HealthCheck> {
    checks.sort();
    let mut wanted: BTreeMap<u16, HealthCheck> = BTreeMap::new();
    for check in checks {
        if check.node_port == 0 {
            warn!(service = %check.service, "health check without a port ignored");
            continue;
        }
        match wanted.get(&check.node_port) {
            Some(kept) if kept.service != check.service => warn!(
                port = check.node_port,
                kept = %kept.service,
                ignored = %check.service,
                "two services claim the same healthCheckNodePort"
            ),
            Some(_) => {}
            None => {
                wanted.insert(check.node_port, check);
            }
        }
    }
    wanted
}

fn handler(answer: Arc<RwLock<Answer>>, proxy_healthy: Arc<AtomicBool>) -> Handler {
    Arc::new(move |_req: &Request<Incoming>| {
        let Answer {
            service,
            local_endpoints,
        } = read(&answer);
        respond(
            &service,
            local_endpoints,
            proxy_healthy.load(Ordering::Relaxed),
        )
    })
}

/// kube-proxy's answer, byte for byte: its body is a tab-indented JSON
/// document without a trailing newline (`strings.Trim(dedent.Dedent(...))`),
/// and it answers any method and path.
fn respond(service: &ServiceId, local_endpoints: usize, proxy_healthy: bool) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body(
        service,
        local_endpoints,
        proxy_healthy,
    ))));
    *resp.status_mut() = if local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn body(service: &ServiceId, local_endpoints: usize, proxy_healthy: bool) -> String {
    // Go's %q and JSON agree on Kubernetes names (DNS labels); JSON escaping
    // keeps the document valid for anything else.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&service.namespace),
        quote(&service.name),
        local_endpoints,
        proxy_healthy
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream};

    use super::*;
    use crate::http::test_client::{get, Reply};

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        std::net::TcpListener::bind((LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("finding a free port")
            .port()
    }

    fn check(ns: &str, name: &str, port: u16, local: usize) -> HealthCheck {
        HealthCheck {
            service: ServiceId::new(ns, name),
            node_port: port,
            local_endpoints: local,
        }
    }

    fn probe(port: u16) -> Reply {
        get(SocketAddr::new(LOCALHOST, port), "/any/path?x=1")
            .unwrap_or_else(|e| panic!("GET on health check port {port}: {e}"))
    }

    fn server() -> HealthServer {
        HealthServer::start(LOCALHOST).expect("starting the health server")
    }

    #[test]
    fn body_matches_kube_proxy() {
        assert_eq!(
            body(&ServiceId::new("default", "web"), 2, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
    }

    #[test]
    fn answers_200_with_local_endpoints_and_503_without() {
        let hs = server();
        let (up, down) = (free_port(), free_port());
        let errors = hs.update(vec![
            check("default", "web", up, 2),
            check("shop", "cart", down, 0),
        ]);
        assert!(errors.is_empty(), "unexpected bind errors: {errors:?}");

        let ok = probe(up);
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(
            ok.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "{ok:?}"
        );
        assert_eq!(
            ok.headers.get("x-content-type-options").map(String::as_str),
            Some("nosniff"),
            "{ok:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&ok.body).expect("JSON body");
        assert_eq!(
            json,
            serde_json::json!({
                "service": {"namespace": "default", "name": "web"},
                "localEndpoints": 2,
                "serviceProxyHealthy": true
            })
        );

        let unavailable = probe(down);
        assert_eq!(unavailable.status, 503, "{unavailable:?}");
        assert_eq!(
            unavailable.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let json: serde_json::Value = serde_json::from_str(&unavailable.body).expect("JSON body");
        assert_eq!(json["localEndpoints"], 0, "{json}");
        assert_eq!(json["service"]["name"], "cart", "{json}");
        hs.stop();
    }

    #[test]
    fn count_changes_in_place_on_the_same_connection() {
        let hs = server();
        let port = free_port();
        assert!(hs.update(vec![check("default", "web", port, 1)]).is_empty());

        // One keep-alive connection across the update: had the port been
        // re-bound, this connection would be gone.
        let mut conn = TcpStream::connect((LOCALHOST, port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let ask = |conn: &mut TcpStream| -> String {
            write!(conn, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).expect("response");
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        let first = ask(&mut conn);
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains("\"localEndpoints\": 1"), "{first}");

        assert!(hs.update(vec![check("default", "web", port, 0)]).is_empty());
        let second = ask(&mut conn);
        assert!(second.starts_with("HTTP/1.1 503"), "{second}");
        assert!(second.contains("\"localEndpoints\": 0"), "{second}");

        assert!(hs.update(vec![check("default", "web", port, 3)]).is_empty());
        let third = ask(&mut conn);
        assert!(third.starts_with("HTTP/1.1 200"), "{third}");
        assert!(third.contains("\"localEndpoints\": 3"), "{third}");
        assert_eq!(hs.ports(), vec![port]);
    }

    #[test]
    fn removed_ports_are_closed() {
        let hs = server();
        let (keep, gone) = (free_port(), free_port());
        assert!(hs
            .update(vec![
                check("default", "keep", keep, 1),
                check("default", "gone", gone, 1),
            ])
            .is_empty());
        assert_eq!(probe(gone).status, 200);

        assert!(hs
            .update(vec![check("default", "keep", keep, 1)])
            .is_empty());
        assert!(
            TcpStream::connect((LOCALHOST, gone)).is_err(),
            "port {gone} still accepts connections after its check was removed"
        );
        assert_eq!(probe(keep).status, 200);
        assert_eq!(hs.ports(), vec![keep]);

        // And the port can be served again right away.
        assert!(hs
            .update(vec![check("default", "gone", gone, 1)])
            .is_empty());
        assert_eq!(probe(gone).status, 200);
    }

    #[test]
    fn a_port_in_use_is_reported_and_retried_while_others_serve() {
        let hs = server();
        let blocker = std::net::TcpListener::bind((LOCALHOST, 0)).expect("blocker");
        let taken = blocker.local_addr().expect("blocker address").port();
        let free = free_port();
        let checks = vec![
            check("default", "blocked", taken, 1),
            check("default", "fine", free, 1),
        ];

        let errors = hs.update(checks.clone());
        assert_eq!(errors.len(), 1, "expected one bind error, got {errors:?}");
        match &errors[0] {
            Error::Bind {
                service,
                addr,
                source,
            } => {
                assert_eq!(service, &ServiceId::new("default", "blocked"));
                assert_eq!(addr.port(), taken);
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{source}");
            }
            other => panic!("expected a bind error, got {other:?}"),
        }
        let message = errors[0].to_string();
        assert!(
            message.contains("default/blocked") && message.contains(&taken.to_string()),
            "the error should name the service and port: {message}"
        );
        assert_eq!(probe(free).status, 200);
        assert_eq!(hs.ports(), vec![free]);

        // Once the port is free, the next update takes it.
        drop(blocker);
        let errors = hs.update(checks);
        assert!(errors.is_empty(), "retry failed: {errors:?}");
        let reply = probe(taken);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.body.contains("\"blocked\""), "{reply:?}");
    }

    #[test]
    fn unhealthy_proxy_fails_every_check() {
        let hs = server();
        let port = free_port();
        assert!(hs.update(vec![check("default", "web", port, 2)]).is_empty());
        hs.set_proxy_healthy(false);
        let reply = probe(port);
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            reply.body.contains("\"serviceProxyHealthy\": false"),
            "{reply:?}"
        );
        hs.set_proxy_healthy(true);
        assert_eq!(probe(port).status, 200);
    }

    #[test]
    fn one_answer_per_port() {
        let wanted = by_port(vec![
            check("b", "second", 30000, 1),
            check("a", "first", 30000, 0),
            check("a", "first", 30000, 0),
            check("a", "zero", 0, 1),
        ]);
        assert_eq!(wanted.len(), 1, "{wanted:?}");
        assert_eq!(wanted[&30000].service, ServiceId::new("a", "first"));
    }
}
