//! The HTTP request path: accept connections (HTTP/1.1 and HTTP/2 with prior
//! knowledge on the same plain-TCP listener), route each request on its host
//! and normalised path, and forward it to a ready endpoint of the routed
//! Service through a pooled keep-alive HTTP/1.1 client, streaming both
//! bodies.
//!
//! # Per request
//! 1. **Host**: the URI authority (`:authority` in HTTP/2, absolute-form in
//!    HTTP/1.1, which RFC 9112 section 3.2.2 says wins over `Host`), else
//!    the `Host` header. No host, several `Host` headers or a non-text one:
//!    400. `CONNECT`: 405 (an Ingress proxies resources, not tunnels).
//! 2. **Path**: normalised by [`path::normalize`] (unreserved characters
//!    decoded, dot segments removed, `%2F` never decoded); a bad
//!    percent-encoding or a non-origin-form target is 400. The normalised
//!    path is what is routed *and* what is forwarded.
//! 3. **Route**: none, 404. A `resource` or invalid backend, a Service the
//!    [`UpstreamTable`] does not know or one without ready endpoints, 503.
//! 4. **Headers**: hop-by-hop headers stripped both ways (see
//!    [`headers::strip_hop_by_hop`]); `X-Forwarded-For/-Proto/-Host/-Port`
//!    and `X-Real-IP` set (see [`headers::set_forwarded`]); `Host` forwarded
//!    as the client sent it (the authority for HTTP/2 clients); HTTP/2
//!    cookie crumbs joined.
//! 5. **Forward**: to the endpoint the Service's round-robin cursor points
//!    at. When connecting fails (refused, unreachable, connect timeout) the
//!    next endpoint is tried, whatever the method: nothing was sent. When
//!    an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) without
//!    a body gets no response (the connection failed after it was sent), it
//!    is retried once on the next endpoint. At most
//!    [`ProxyConfig::max_attempts`] attempts in all.
//! 6. **Answer**: the upstream's response, streamed. No response headers
//!    within [`ProxyConfig::response_header_timeout`], or every connect
//!    attempt timed out: 504. Any other upstream failure: 502.
//! 7. **Upgrade**: an HTTP/1.1 request with `Connection: upgrade` and
//!    `Upgrade` keeps both; on `101 Switching Protocols` from the upstream
//!    the two upgraded connections are spliced byte for byte
//!    (WebSocket and any other protocol).
//!
//! # Reloads
//! [`Proxy::set_routes`] and [`Proxy::set_upstreams`] swap immutable
//! snapshots; each request reads each snapshot once, so a reload applies to
//! the next request and never disturbs one in flight (nor an open
//! connection or upgraded tunnel).

mod body;
pub mod headers;
pub mod path;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use body::{BodySlot, ResponseBody, UpstreamBody};
pub use headers::{Cidr, CidrError};

use crate::route::{Backend, RouteTable};
use crate::upstream::UpstreamTable;

/// How the proxy behaves towards clients and upstreams.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long to wait for a TCP connection to an endpoint before trying
    /// the next one (the attempt counts as a connect failure). Default 5 s,
    /// as ingress-nginx's `proxy-connect-timeout`.
    pub connect_timeout: Duration,
    /// How long one attempt may take from the start of connecting until the
    /// upstream's response headers arrive; then the client gets 504 and the
    /// request is not retried (the upstream may be acting on it). Default
    /// 60 s, as nginx's `proxy_read_timeout`.
    pub response_header_timeout: Duration,
    /// Most upstream attempts per request, the first included (at least 1):
    /// connect failures move on to the next endpoint while an untried one
    /// is left, and one "no response" retry is allowed for idempotent
    /// requests without a body. Default 3.
    pub max_attempts: usize,
    /// Proxies in front of this one (for example a cloud load balancer)
    /// whose `X-Forwarded-*` headers are believed. Empty (the default):
    /// trust no one, every client's forwarded headers are replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// Merge runs of `/` in request paths before routing and forwarding
    /// (nginx `merge_slashes`). Default off: `//` is kept, as Envoy does,
    /// because some backends give empty segments a meaning.
    pub merge_slashes: bool,
    /// How long an idle keep-alive connection to an endpoint stays in the
    /// pool. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Most idle keep-alive connections kept per endpoint. Default 128.
    pub pool_max_idle_per_endpoint: usize,
    /// How long an HTTP/1 client may take to send a request's headers before
    /// its connection is closed (slowloris). Default 30 s.
    pub header_read_timeout: Duration,
    /// After shutdown is requested, how long in-flight requests may take to
    /// finish before their connections are closed. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            max_attempts: 3,
            trusted_proxies: Vec::new(),
            merge_slashes: false,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_endpoint: 128,
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The listener's scheme, for `X-Forwarded-Proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP.
    Http,
    /// TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the proxy knows about a client connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The client's socket address.
    pub peer: SocketAddr,
    /// Our socket address (its port is `X-Forwarded-Port`).
    pub local: SocketAddr,
    /// The listener's scheme.
    pub scheme: Scheme,
}

/// The proxy: the current route and upstream snapshots, the upstream client
/// pool and the server settings. Share it as `Arc<Proxy>`.
pub struct Proxy {
    config: ProxyConfig,
    routes: RwLock<Arc<RouteTable>>,
    upstreams: RwLock<Arc<UpstreamTable>>,
    client: Client<HttpConnector, UpstreamBody>,
    server: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why an upstream attempt sequence ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Every connect attempt timed out, or the response headers did not
    /// arrive in time: 504.
    Timeout,
    /// Anything else: 502.
    Upstream,
}

impl Proxy {
    /// A proxy with empty route and upstream tables (every request is 404
    /// until [`Proxy::set_routes`]).
    pub fn new(config: ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint)
            // We set Host ourselves, from the client's request.
            .set_host(false)
            .build(connector);
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        server.http2().timer(TokioTimer::new());
        Proxy {
            config,
            routes: RwLock::default(),
            upstreams: RwLock::default(),
            client,
            server,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Replaces the route table; the next request uses it.
    pub fn set_routes(&self, routes: Arc<RouteTable>) {
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = routes;
    }

    /// Replaces the upstream table; the next request uses it.
    pub fn set_upstreams(&self, upstreams: Arc<UpstreamTable>) {
        *self
            .upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner) = upstreams;
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current upstream table.
    pub fn upstreams(&self) -> Arc<UpstreamTable> {
        self.upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers one request from a client on `conn`.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ResponseBody> {
        if req.method() == Method::CONNECT {
            return local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
        }
        let Some(host) = request_host(&req) else {
            return local(StatusCode::BAD_REQUEST, "missing or invalid Host\n");
        };
        let Ok(host_str) = host.to_str() else {
            return local(StatusCode::BAD_REQUEST, "missing or invalid Host\n");
        };
        let path = match path::normalize(req.uri().path(), self.config.merge_slashes) {
            Ok(path) => path,
            Err(e) => {
                debug!(error = %e, path = req.uri().path(), "bad request path");
                return local(StatusCode::BAD_REQUEST, "invalid request path\n");
            }
        };
        let routes = self.routes();
        let Some(route) = routes.route(host_str, &path) else {
            debug!(host = host_str, %path, "no route");
            return local(StatusCode::NOT_FOUND, "no route\n");
        };
        let Backend::Service(service) = &route.backend else {
            debug!(host = host_str, %path, ingress = %route.ingress, "backend not served");
            return local(StatusCode::SERVICE_UNAVAILABLE, "backend not available\n");
        };
        let upstreams = self.upstreams();
        let Some(endpoints) = upstreams.get(service).filter(|e| !e.is_empty()) else {
            debug!(%service, "no ready endpoints");
            return local(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoints\n");
        };
        let path_and_query = match req.uri().query() {
            Some(q) => PathAndQuery::from_maybe_shared(Bytes::from(format!("{path}?{q}"))),
            None => match path {
                std::borrow::Cow::Borrowed(p) => {
                    PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(p.as_bytes()))
                }
                std::borrow::Cow::Owned(p) => PathAndQuery::from_maybe_shared(Bytes::from(p)),
            },
        };
        let Ok(path_and_query) = path_and_query else {
            return local(StatusCode::BAD_REQUEST, "invalid request path\n");
        };

        // Headers for the upstream, built once; each attempt gets a copy.
        let is_http2 = req.version() == Version::HTTP_2;
        let client_upgrade: Option<OnUpgrade>;
        let mut headers = std::mem::take(req.headers_mut());
        let upgrade = headers::strip_hop_by_hop(&mut headers);
        match upgrade {
            // Only HTTP/1.1 has Upgrade (HTTP/2 forbids connection-specific
            // headers; its extended CONNECT is not enabled).
            Some(protocol) if req.version() == Version::HTTP_11 => {
                headers::restore_upgrade(&mut headers, protocol);
                client_upgrade = Some(hyper::upgrade::on(&mut req));
            }
            _ => client_upgrade = None,
        }
        if is_http2 {
            headers::join_cookies(&mut headers);
        }
        headers::set_forwarded(
            &mut headers,
            headers::Client {
                peer: conn.peer,
                proto: conn.scheme.as_str(),
                host: &host,
                port: conn.local.port(),
            },
            &self.config.trusted_proxies,
        );
        headers.insert(header::HOST, host.clone());

        let method = req.method().clone();
        let body = BodySlot::new(req.into_body());
        let retry_no_response = body.is_empty() && is_idempotent(&method);
        let start = endpoints.next().unwrap_or(0);
        let max_attempts = self.config.max_attempts.max(1);
        let mut offset = 0;
        let mut attempts = 0;
        let mut retried_no_response = false;
        let failure = loop {
            attempts += 1;
            let addr = endpoints.get(start + offset);
            let upstream_req = match build_request(&method, addr, &path_and_query, &headers, &body)
            {
                Some(r) => r,
                None => break Failure::Upstream,
            };
            let sent = tokio::time::timeout(
                self.config.response_header_timeout,
                self.client.request(upstream_req),
            )
            .await;
            match sent {
                Ok(Ok(resp)) => {
                    debug!(%service, upstream = %addr, status = resp.status().as_u16(), attempts, "proxied");
                    return respond(resp, client_upgrade);
                }
                Err(_) => {
                    warn!(%service, upstream = %addr, timeout = ?self.config.response_header_timeout, "upstream response timed out");
                    break Failure::Timeout;
                }
                Ok(Err(e)) if e.is_connect() => {
                    let timed_out = is_timeout(&e);
                    warn!(%service, upstream = %addr, error = %error_chain(&e), "upstream connect failed");
                    offset += 1;
                    let failure = if timed_out {
                        Failure::Timeout
                    } else {
                        Failure::Upstream
                    };
                    if attempts >= max_attempts || offset >= endpoints.len() || !body.is_untouched()
                    {
                        break failure;
                    }
                }
                Ok(Err(e)) => {
                    warn!(%service, upstream = %addr, error = %error_chain(&e), "upstream request failed");
                    if retry_no_response && !retried_no_response && attempts < max_attempts {
                        retried_no_response = true;
                        offset += 1;
                        continue;
                    }
                    break Failure::Upstream;
                }
            }
        };
        match failure {
            Failure::Timeout => local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
            Failure::Upstream => local(StatusCode::BAD_GATEWAY, "upstream failed\n"),
        }
    }
}

/// The request host: URI authority (without userinfo), else the one `Host`
/// header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority() {
        let host = authority.as_str().rsplit('@').next().unwrap_or("");
        return HeaderValue::from_str(host).ok().filter(|h| !h.is_empty());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if !host.is_empty() => Some(host.clone()),
        _ => None,
    }
}

/// RFC 9110 section 9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// One attempt's request to `addr`. `None` only if the URI cannot be built
/// (not expected: every part was valid already).
fn build_request(
    method: &Method,
    addr: SocketAddr,
    path_and_query: &PathAndQuery,
    headers: &HeaderMap,
    body: &BodySlot,
) -> Option<Request<UpstreamBody>> {
    let authority = Authority::try_from(addr.to_string()).ok()?;
    let uri = Uri::builder()
        .scheme(UriScheme::HTTP)
        .authority(authority)
        .path_and_query(path_and_query.clone())
        .build()
        .ok()?;
    let mut req = Request::new(body.attempt());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers.clone();
    Some(req)
}

/// The client's response from the upstream's: hop-by-hop headers removed,
/// a protocol switch spliced.
fn respond(
    mut resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let upgrade = headers::strip_hop_by_hop(resp.headers_mut());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client), Some(protocol)) = (client_upgrade, upgrade) else {
            warn!("upstream switched protocols without being asked");
            return local(StatusCode::BAD_GATEWAY, "upstream failed\n");
        };
        let upstream = hyper::upgrade::on(&mut resp);
        headers::restore_upgrade(resp.headers_mut(), protocol);
        tokio::spawn(tunnel(client, upstream));
    }
    // Our response to the client is ours, whatever version the upstream
    // spoke; hyper writes the client's protocol.
    *resp.version_mut() = Version::HTTP_11;
    resp.map(Either::Left)
}

/// Splices an upgraded client connection with the upgraded upstream one
/// until either side closes.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(
            bytes_up = up,
            bytes_down = down,
            "upgraded connection closed"
        ),
        Err(e) => debug!(error = %e, "upgraded connection failed"),
    }
}

/// A response of the proxy's own.
fn local(status: StatusCode, message: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        message.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Whether a connect error was the connect timeout.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// An error and its causes, `: `-separated, for logs (hyper's top-level
/// messages alone say little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

/// Accepts plain-TCP connections on `listener` and serves them with `proxy`
/// (HTTP/1.1, and HTTP/2 with prior knowledge) until `shutdown` completes.
/// Then it stops accepting, lets requests in flight finish (idle keep-alive
/// connections are closed, HTTP/2 clients get GOAWAY) for at most
/// [`ProxyConfig::shutdown_grace`], closes what is left and returns.
/// Upgraded connections (WebSockets) are not waited for.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let local = match stream.local_addr() {
                        Ok(local) => local,
                        Err(e) => {
                            debug!(error = %e, %peer, "connection gone before it was served");
                            continue;
                        }
                    };
                    // Small responses should not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let conn = ConnInfo { peer, local, scheme: Scheme::Http };
                    conns.spawn(serve_connection(stream, conn, proxy.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    info!(
        connections = conns.len(),
        "shutting down: draining connections"
    );
    stop_tx.send_replace(true);
    let grace = proxy.config.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            connections = conns.len(),
            ?grace,
            "grace period over: closing connections"
        );
        conns.shutdown().await;
    }
}

/// Serves one client connection (any byte stream: plain TCP here, TLS
/// later) until it closes, or, once `shutdown` turns true, until its
/// in-flight requests are done.
pub async fn serve_connection<I>(
    io: I,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_proxy = proxy.clone();
    let service = service_fn(move |req| {
        let proxy = service_proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
    });
    let connection = proxy
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // The guard `wait_for` returns is not `Send`: drop it inside.
    let stop = async move {
        let _ = shutdown.wait_for(|&stop| stop).await.map(drop);
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %error_chain(&*e), "client connection ended with an error");
    }
}
