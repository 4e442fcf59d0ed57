//! End-to-end proxy tests with real sockets on 127.0.0.1: hyper upstream
//! servers that record what they see, the proxy's own accept loop, and
//! hyper (HTTP/1.1 and h2c) or raw TCP clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::route::RouteTable;
use crate::upstream::UpstreamTable;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// An Ingress in `default` with rules `(host, [(path, pathType, service)])`,
/// every backend on Service port 80.
/// `(path, pathType, service)`.
type PathRule<'a> = (&'a str, &'a str, &'a str);

/// `(host, paths)`; `""` for no host.
type HostRule<'a> = (&'a str, &'a [PathRule<'a>]);

fn ingress(name: &str, rules: &[HostRule<'_>]) -> Ingress {
    let rules: Vec<_> = rules
        .iter()
        .map(|(host, paths)| {
            let paths: Vec<_> = paths
                .iter()
                .map(|(path, path_type, service)| {
                    json!({
                        "path": path,
                        "pathType": path_type,
                        "backend": {"service": {"name": service, "port": {"number": 80}}},
                    })
                })
                .collect();
            let mut rule = json!({"http": {"paths": paths}});
            if !host.is_empty() {
                rule["host"] = json!(host);
            }
            rule
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": rules},
    }))
    .expect("valid Ingress JSON")
}

/// A route table from Ingresses, asserting it has no errors.
fn routes(ingresses: &[Ingress]) -> RouteTable {
    let (table, errors) = RouteTable::from_served(ingresses);
    assert!(
        errors.is_empty(),
        "expected no route errors, got {errors:#?}"
    );
    table
}

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    version: http::Version,
    headers: HeaderMap,
}

/// A test upstream: a hyper server (HTTP/1.1 and h2c) that answers with its
/// name and records every request. Paths:
/// `/slow` waits 2 s; `/echo` streams the request body back; `/big`
/// streams 10 MiB; `Upgrade: echo` switches protocols and echoes bytes;
/// `/hop` answers with hop-by-hop headers; anything else answers the name.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_handler(name, log.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    fn last(&self) -> Seen {
        self.seen()
            .pop()
            .expect("expected the upstream to have seen a request, it saw none")
    }
}

type TestBody = BoxBody<Bytes, hyper::Error>;

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

async fn upstream_handler(
    name: &'static str,
    log: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    log.lock().expect("log").push(Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(full(""))
            .expect("response");
        return Ok(resp);
    }
    let resp = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full(name))
        }
        "/echo" => Response::new(req.into_body().boxed()),
        "/big" => Response::new(
            Repeat::new(10 << 20)
                .map_err(|never| match never {})
                .boxed(),
        ),
        "/hop" => Response::builder()
            .header("connection", "x-resp-private")
            .header("x-resp-private", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-resp-kept", "1")
            .body(full(name))
            .expect("response"),
        _ => Response::builder()
            .header("x-upstream", name)
            .body(full(name))
            .expect("response"),
    };
    Ok(resp)
}

/// A body of `left` bytes in 64 KiB chunks, of unknown length (chunked).
struct Repeat {
    chunk: Bytes,
    left: usize,
}

impl Repeat {
    fn new(len: usize) -> Self {
        Repeat {
            chunk: Bytes::from(vec![b'x'; 64 << 10]),
            left: len,
        }
    }
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(this.chunk.len());
        this.left -= n;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }
}

/// The proxy under test, serving on 127.0.0.1 with its own accept loop.
struct Harness {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Harness {
    async fn start(config: ProxyConfig, routes: RouteTable, upstreams: UpstreamTable) -> Harness {
        let proxy = Arc::new(Proxy::new(config));
        proxy.set_routes(Arc::new(routes));
        proxy.set_upstreams(Arc::new(upstreams));
        Harness::serving(proxy).await
    }

    /// Serves `proxy` on 127.0.0.1 with its own accept loop.
    async fn serving(proxy: Arc<Proxy>) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, proxy.clone(), async move {
            let _ = stopped.await;
        }));
        Harness {
            addr,
            proxy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Requests shutdown and waits for `serve` to return.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("serve should return within 10 s of shutdown")
                .expect("serve task");
        }
    }
}

type ClientBody = BoxBody<Bytes, Infallible>;

fn http1_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn empty() -> ClientBody {
    Empty::new().boxed()
}

/// One HTTP/1.1 request through the proxy: status and body text.
async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody>,
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    let req = Request::get(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(empty())
        .expect("request");
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("request http://{host}{path}: {e:?}"));
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends raw bytes on a new connection and reads until the server closes
/// it (send `Connection: close`).
async fn raw(proxy: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect proxy");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'s>(seen: &'s Seen, name: &str) -> Option<&'s str> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A server that accepts, reads the request, and closes the connection
/// without answering; counts connections.
async fn resetting_upstream() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    (addr, count, task)
}

// ---------------------------------------------------------------------------
// Routing and local answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn routes_by_host_and_path_to_the_right_upstream() {
    let web = Upstream::start("web").await;
    let api = Upstream::start("api").await;
    let other = Upstream::start("other").await;
    let table = routes(&[ingress(
        "site",
        &[
            (
                "foo.example",
                &[("/", "Prefix", "web"), ("/api", "Prefix", "api")],
            ),
            ("*.bar.example", &[("/", "Prefix", "other")]),
        ],
    )]);
    let upstreams = UpstreamTable::new()
        .with("default", "web", 80, vec![web.addr])
        .with("default", "api", 80, vec![api.addr])
        .with("default", "other", 80, vec![other.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    for (host, path, want) in [
        ("foo.example", "/", "web"),
        ("foo.example", "/apix", "web"),
        ("foo.example", "/api", "api"),
        ("foo.example", "/api/v1?x=1", "api"),
        ("FOO.example:8080", "/api/", "api"),
        ("a.bar.example", "/api", "other"),
    ] {
        let (status, body) = get(&client, h.addr, host, path).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, want),
            "request http://{host}{path}: expected 200 from {want}"
        );
    }
    assert_eq!(
        api.last().uri,
        "/api/",
        "the upstream gets the origin-form path"
    );
    let seen = api.seen();
    assert!(
        seen.iter().any(|s| s.uri == "/api/v1?x=1"),
        "expected the query string forwarded untouched, saw {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn no_route_is_404_and_unservable_backends_are_503() {
    let web = Upstream::start("web").await;
    let mut resource: Ingress = ingress("res", &[]);
    resource.spec.as_mut().expect("spec").rules = Some(
        serde_json::from_value(json!([{
            "host": "res.example",
            "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"resource": {"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "b"}},
            }]},
        }]))
        .expect("rules"),
    );
    // The resource backend is reported (a warning), and still routed.
    let (table, _) = RouteTable::from_served(&[
        ingress(
            "site",
            &[
                ("web.example", &[("/", "Prefix", "web")]),
                ("gone.example", &[("/", "Prefix", "gone")]),
                ("empty.example", &[("/", "Prefix", "empty")]),
            ],
        ),
        resource,
    ]);
    let upstreams = UpstreamTable::new()
        .with("default", "web", 80, vec![web.addr])
        .with("default", "empty", 80, Vec::new());
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    for (host, want, why) in [
        ("web.example", StatusCode::OK, "routed with endpoints"),
        (
            "nothing.example",
            StatusCode::NOT_FOUND,
            "no rule, no default backend",
        ),
        (
            "res.example",
            StatusCode::SERVICE_UNAVAILABLE,
            "resource backend",
        ),
        (
            "gone.example",
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unknown to the upstream table",
        ),
        (
            "empty.example",
            StatusCode::SERVICE_UNAVAILABLE,
            "Service without ready endpoints",
        ),
    ] {
        let (status, _) = get(&client, h.addr, host, "/").await;
        assert_eq!(
            status, want,
            "{why}: http://{host}/ expected {want}, got {status}"
        );
    }
}

#[tokio::test]
async fn bad_requests_are_400() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    for (request, why) in [
        (
            "GET /a%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "bad percent-encoding",
        ),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            "two Host headers",
        ),
        (
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nConnection: close\r\n\r\n",
            "CONNECT",
        ),
    ] {
        let resp = raw(h.addr, request).await;
        let want = if why == "CONNECT" {
            "HTTP/1.1 405"
        } else {
            "HTTP/1.1 400"
        };
        assert!(
            resp.starts_with(want),
            "{why}: expected {want}, got {resp:?}"
        );
    }
    assert!(
        web.seen().is_empty(),
        "no bad request may reach the upstream"
    );
}

#[tokio::test]
async fn normalised_path_is_routed_and_forwarded() {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let table = routes(&[ingress(
        "site",
        &[(
            "a.example",
            &[
                ("/public", "Prefix", "public"),
                ("/admin", "Prefix", "admin"),
            ],
        )],
    )]);
    let upstreams = UpstreamTable::new()
        .with("default", "public", 80, vec![public.addr])
        .with("default", "admin", 80, vec![admin.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    let (status, body) = get(&client, h.addr, "a.example", "/public/%2e%2e/admin/x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "admin"),
        "encoded dot segments"
    );
    assert_eq!(
        admin.last().uri,
        "/admin/x",
        "the upstream sees the normalised path"
    );
    let (status, body) = get(&client, h.addr, "a.example", "/public/..%2Fadmin").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "public"),
        "an encoded slash is not a separator"
    );
    assert_eq!(public.last().uri, "/public/..%2Fadmin");
    let (_, body) = get(&client, h.addr, "a.example", "/%61dmin?q=%2e").await;
    assert_eq!(body, "admin", "unreserved characters are decoded");
    assert_eq!(admin.last().uri, "/admin?q=%2e", "the query is not touched");
}

// ---------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_over_two_upstreams() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![a.addr, b.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    let mut order = Vec::new();
    for _ in 0..6 {
        let (status, body) = get(&client, h.addr, "x.example", "/").await;
        assert_eq!(status, StatusCode::OK);
        order.push(body);
    }
    assert_eq!(
        order,
        ["a", "b", "a", "b", "a", "b"],
        "expected strict alternation"
    );
}

#[tokio::test]
async fn forwarded_headers_reach_the_upstream() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    let req = Request::get(format!("http://{}/x", h.addr))
        .header("host", "a.example:8443")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = web.last();
    let port = h.addr.port().to_string();
    for (name, want) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "a.example:8443"),
        ("x-forwarded-port", port.as_str()),
        ("host", "a.example:8443"),
    ] {
        assert_eq!(
            header(&seen, name),
            Some(want),
            "{name}: expected {want:?} (client-supplied values are not trusted by default)"
        );
    }
    assert_eq!(seen.version, http::Version::HTTP_11, "HTTP/1.1 upstream");
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_is_appended() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let config = ProxyConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..ProxyConfig::default()
    };
    let h = Harness::start(config, table, upstreams).await;
    let client = http1_client();
    let req = Request::get(format!("http://{}/", h.addr))
        .header("host", "a.example")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .expect("request");
    client.request(req).await.expect("response");
    let seen = web.last();
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(header(&seen, "x-real-ip"), Some("203.0.113.7"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let resp = raw(
        h.addr,
        "GET /hop HTTP/1.1\r\nHost: a.example\r\nConnection: close, x-private\r\n\
         X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         TE: trailers, deflate\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    let seen = web.last();
    for name in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            header(&seen, name),
            None,
            "request header {name} is hop-by-hop and must not reach the upstream"
        );
    }
    assert_eq!(
        header(&seen, "te"),
        Some("trailers"),
        "TE: trailers survives"
    );
    assert_eq!(header(&seen, "x-kept"), Some("yes"));
    let resp_lower = resp.to_ascii_lowercase();
    assert!(
        resp_lower.starts_with("http/1.1 200"),
        "expected 200, got {resp:?}"
    );
    for name in ["x-resp-private:", "keep-alive:", "proxy-connection:"] {
        assert!(
            !resp_lower.contains(name),
            "response header {name} is hop-by-hop and must not reach the client: {resp:?}"
        );
    }
    assert!(
        resp_lower.contains("x-resp-kept: 1"),
        "end-to-end response headers kept: {resp:?}"
    );
}

// ---------------------------------------------------------------------------
// Failures, retries, timeouts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn retries_another_endpoint_when_connect_fails() {
    let live = Upstream::start("live").await;
    let dead = closed_port().await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![dead, live.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    for i in 0..6 {
        let (status, body) = get(&client, h.addr, "x.example", "/").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    // A POST with a body is retried too: nothing was sent to the dead one.
    for i in 0..4 {
        let req = Request::post(format!("http://{}/echo", h.addr))
            .header("host", "x.example")
            .body(Full::new(Bytes::from_static(b"payload")).boxed())
            .expect("request");
        let resp = client.request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "POST {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            &body[..],
            b"payload",
            "POST {i}: body echoed after the retry"
        );
    }
    assert_eq!(
        live.last().method,
        Method::POST,
        "the retried POST reached the live endpoint"
    );
}

#[tokio::test]
async fn all_endpoints_refusing_is_502() {
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with(
        "default",
        "web",
        80,
        vec![closed_port().await, closed_port().await],
    );
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let (status, _) = get(&http1_client(), h.addr, "x.example", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let config = ProxyConfig {
        response_header_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let h = Harness::start(config, table, upstreams).await;
    let started = tokio::time::Instant::now();
    let (status, _) = get(&http1_client(), h.addr, "x.example", "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "expected the 504 after about 300 ms, took {:?}",
        started.elapsed()
    );
    assert_eq!(web.seen().len(), 1, "a timed-out request is not retried");
}

#[tokio::test]
async fn reset_before_response_is_502_after_one_retry_for_idempotent_requests() {
    let (addr, connections, task) = resetting_upstream().await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    let (status, _) = get(&client, h.addr, "x.example", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "a GET without body is retried exactly once"
    );
    let req = Request::post(format!("http://{}/", h.addr))
        .header("host", "x.example")
        .body(Full::new(Bytes::from_static(b"x")).boxed())
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "a POST that may have been processed is never retried"
    );
    task.abort();
}

#[tokio::test]
async fn idempotent_request_is_retried_on_a_healthy_endpoint_after_a_reset() {
    let (bad, connections, task) = resetting_upstream().await;
    let good = Upstream::start("good").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![bad, good.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    for i in 0..4 {
        let (status, body) = get(&client, h.addr, "x.example", "/").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "good"), "GET {i}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the resetting endpoint was tried twice"
    );
    task.abort();
}

// ---------------------------------------------------------------------------
// Protocols and bodies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2c_prior_knowledge_client() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let stream = TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get("http://a.example/h2")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), StatusCode::OK, "h2 request {i}");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"web");
    }
    let seen = web.last();
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "the upstream speaks HTTP/1.1"
    );
    assert_eq!(
        header(&seen, "host"),
        Some("a.example"),
        "Host from :authority"
    );
    assert_eq!(
        header(&seen, "cookie"),
        Some("a=1; b=2"),
        "cookie crumbs joined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_is_spliced() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("101 within 5 s")
            .expect("read");
        assert_eq!(n, 1, "connection closed before the response head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101"),
        "expected 101, got {head:?}"
    );
    assert!(
        head.contains("upgrade: echo"),
        "Upgrade forwarded back: {head:?}"
    );
    assert!(
        head.contains("connection: upgrade"),
        "Connection: upgrade back: {head:?}"
    );
    let seen = web.last();
    assert_eq!(
        header(&seen, "upgrade"),
        Some("echo"),
        "Upgrade forwarded to the upstream"
    );
    for msg in [&b"hello"[..], b"second message"] {
        stream.write_all(msg).await.expect("write");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .expect("echo within 5 s")
            .expect("read echo");
        assert_eq!(buf, msg, "bytes echoed through the tunnel");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_large_bodies_both_ways() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let client = http1_client();
    const LEN: usize = 10 << 20;
    let req = Request::post(format!("http://{}/echo", h.addr))
        .header("host", "a.example")
        .body(Repeat::new(LEN).boxed())
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            total += data.len();
        }
    }
    assert_eq!(total, LEN, "10 MiB request body echoed back in full");
    let req = Request::get(format!("http://{}/big", h.addr))
        .header("host", "a.example")
        .body(empty())
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), LEN, "10 MiB response body in full");
}

// ---------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let mut h = Harness::start(ProxyConfig::default(), table, upstreams).await;
    let addr = h.addr;
    let in_flight =
        tokio::spawn(async move { get(&http1_client(), addr, "x.example", "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        web.seen().len(),
        1,
        "the slow request reached the upstream before shutdown"
    );
    h.shutdown().await;
    let (status, body) = in_flight.await.expect("in-flight request task");
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web"),
        "the in-flight request completes during shutdown"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection is accepted after shutdown"
    );
}

#[tokio::test]
async fn shutdown_grace_is_bounded() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let config = ProxyConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let mut h = Harness::start(config, table, upstreams).await;
    let addr = h.addr;
    let in_flight = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/slow"))
            .header("host", "x.example")
            .body(empty())
            .expect("request");
        http1_client().request(req).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    h.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown should give up after the 200 ms grace, took {:?}",
        started.elapsed()
    );
    let result = in_flight.await.expect("task");
    assert!(
        result.is_err(),
        "the cut-off request fails on the client, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_swap_under_load_applies_to_the_next_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let to_a = routes(&[ingress("site", &[("x.example", &[("/", "Prefix", "a")])])]);
    let to_b = Arc::new(routes(&[ingress(
        "site",
        &[("x.example", &[("/", "Prefix", "b")])],
    )]));
    let upstreams = UpstreamTable::new()
        .with("default", "a", 80, vec![a.addr])
        .with("default", "b", 80, vec![b.addr]);
    let h = Harness::start(ProxyConfig::default(), to_a, upstreams).await;
    let addr = h.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let client = http1_client();
            let mut done = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = get(&client, addr, "x.example", "/").await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "request {done} under load failed: {body}"
                );
                assert!(body == "a" || body == "b", "unexpected upstream {body:?}");
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.proxy.set_routes(to_b);
    let (_, body) = get(&http1_client(), addr, "x.example", "/").await;
    assert_eq!(
        body, "b",
        "the first request after the swap goes to the new route"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        total += task.await.expect("load task panicked (a request failed)");
    }
    assert!(
        total > 50,
        "expected real load during the swap, got {total} requests"
    );
    assert!(
        !a.seen().is_empty() && !b.seen().is_empty(),
        "both routes served"
    );
}

/// A listener whose accept queue is full and never drained: the kernel
/// drops further SYNs (`sk_acceptq_is_full` in `tcp_conn_request`), so a
/// connect to it hangs until the connector's timeout. Keep the returned
/// sockets alive for as long as the address must stay a black hole.
async fn black_hole() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    // Backlog 0 holds one connection; fill it (and a spare) until a connect
    // hangs.
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    (addr, listener, fillers)
}

#[tokio::test]
async fn connect_timeout_moves_on_and_is_504_when_all_time_out() {
    let (hole, _listener, _fillers) = black_hole().await;
    let probe = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hole)).await;
    assert!(
        probe.is_err(),
        "test setup: expected a connect to the full accept queue to hang, got {probe:?}"
    );
    let live = Upstream::start("live").await;
    let table = routes(&[ingress("site", &[("", &[("/", "Prefix", "web")])])]);
    let config = ProxyConfig {
        connect_timeout: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    let upstreams = UpstreamTable::new()
        .with("default", "web", 80, vec![hole, live.addr])
        .with("default", "hole", 80, vec![hole]);
    let h = Harness::start(config, table, upstreams).await;
    let client = http1_client();
    for i in 0..4 {
        let (status, body) = get(&client, h.addr, "x.example", "/").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}: a connect timeout moves on to the next endpoint"
        );
    }
    let only_hole = routes(&[ingress("site", &[("", &[("/", "Prefix", "hole")])])]);
    h.proxy.set_routes(Arc::new(only_hole));
    let started = tokio::time::Instant::now();
    let (status, _) = get(&client, h.addr, "x.example", "/").await;
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "every connect timed out"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "expected the 504 after about 200 ms, took {:?}",
        started.elapsed()
    );
}

mod features;
