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
//!    On the plain-HTTP listener, a host with a certificate from `spec.tls`
//!    gets a 308 to `https://` unless its Ingress says
//!    `gangplank.io/ssl-redirect: "false"`. A `Content-Length` over
//!    [`ProxyConfig::max_body_bytes`]: 413 (a streamed body that grows past
//!    it is cut off, and the client gets 413 too).
//! 4. **Headers**: hop-by-hop headers stripped both ways (see
//!    [`headers::strip_hop_by_hop`]); `X-Forwarded-For/-Proto/-Host/-Port`
//!    and `X-Real-IP` set (see [`headers::set_forwarded`]); `Host` forwarded
//!    as the client sent it (the authority for HTTP/2 clients); HTTP/2
//!    cookie crumbs joined.
//! 5. **Forward**: to the endpoint the Ingress's balancing policy picks
//!    (round-robin, or least requests by power of two choices), over
//!    HTTP/1.1 or, with `gangplank.io/backend-protocol: h2c|grpc`, HTTP/2
//!    with prior knowledge. When connecting fails (refused, unreachable, connect timeout) the
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
//! 8. **Record**: when the response ends (or the client leaves), one JSON
//!    access-log line and the request metrics (see [`record`]).
//!
//! # Reloads
//! [`Proxy::apply`] swaps one immutable [`ProxyState`] (routes, endpoints,
//! Ingress options and TLS hosts together, so a new route never meets an
//! old endpoint table); each request reads it once, so a reload applies to
//! the next request and never disturbs one in flight (nor an open
//! connection or upgraded tunnel).

mod body;
mod client;
pub mod headers;
pub mod path;
pub mod record;
mod serve;

#[cfg(test)]
mod tests;

use crate::FastMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme as UriScheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tracing::{debug, warn};

pub use body::{ActiveRequest, BodySlot, BodyTooLarge, ResponseBody, UpstreamBody};
pub use client::{ClientError, PooledBody, Protocol, UpstreamClient};
pub use headers::{Cidr, CidrError};
pub use serve::{serve, serve_connection, serve_tls};

use crate::annotations::{BackendProtocol, IngressOptions};
use crate::metrics::IngressMetrics;
use crate::route::{Backend, IngressRef, RouteTable};
use crate::tls::CertStore;
use crate::upstream::UpstreamTable;
use record::RequestRecord;

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
    /// How long a client connection may sit with no request in flight and
    /// no bytes moving before it is closed (nginx `keepalive_timeout`).
    /// Default 75 s.
    pub idle_timeout: Duration,
    /// How long a client may take to complete the TLS handshake. Default
    /// 10 s.
    pub tls_handshake_timeout: Duration,
    /// Largest request body (413 beyond; nginx `client_max_body_size`).
    /// Default 100 MiB.
    pub max_body_bytes: u64,
    /// Largest request head, HTTP/1 read buffer and HTTP/2 header list
    /// (431 beyond). Default 64 KiB; HTTP/1 needs at least 8 KiB.
    pub max_header_bytes: usize,
    /// Concurrent streams per HTTP/2 client connection. Default 128.
    pub max_concurrent_streams: u32,
    /// Streams an HTTP/2 client may reset before we accept them, or make
    /// us reset, before the connection is closed with GOAWAY
    /// `ENHANCE_YOUR_CALM` (rapid reset, CVE-2023-44487 and
    /// CVE-2025-8671). Default 50.
    pub max_reset_streams: usize,
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
            idle_timeout: Duration::from_secs(75),
            tls_handshake_timeout: Duration::from_secs(10),
            max_body_bytes: 100 << 20,
            max_header_bytes: 64 << 10,
            max_concurrent_streams: 128,
            max_reset_streams: 50,
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

/// Everything a request is routed with, swapped as one.
#[derive(Clone, Debug, Default)]
pub struct ProxyState {
    /// Host and path rules.
    pub routes: Arc<RouteTable>,
    /// Ready endpoints per backend.
    pub upstreams: Arc<UpstreamTable>,
    /// Annotation-driven options per Ingress (defaults when absent).
    pub options: Arc<FastMap<IngressRef, IngressOptions>>,
    /// The certificates: hosts they cover are redirected to HTTPS.
    pub tls: Option<Arc<CertStore>>,
}

/// The proxy: the current [`ProxyState`], the upstream client pools and the
/// server settings. Share it as `Arc<Proxy>`.
pub struct Proxy {
    config: ProxyConfig,
    state: ArcSwap<ProxyState>,
    client: UpstreamClient,
    server: auto::Builder<TokioExecutor>,
    metrics: Option<Arc<IngressMetrics>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A response body before it is wrapped for the record: the upstream's or
/// our own.
type Body = Either<PooledBody, Full<Bytes>>;

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
    /// A proxy with empty tables (every request is 404 until
    /// [`Proxy::apply`]) and no metrics.
    pub fn new(config: ProxyConfig) -> Self {
        Self::with_metrics(config, None)
    }

    /// A proxy that counts requests and upstream errors in `metrics`.
    pub fn with_metrics(config: ProxyConfig, metrics: Option<Arc<IngressMetrics>>) -> Self {
        let client = UpstreamClient::new(client::PoolConfig {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_endpoint: config.pool_max_idle_per_endpoint,
        });
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            // hyper answers 431 when a request head outgrows the buffer.
            .max_buf_size(config.max_header_bytes.max(8192));
        server
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(config.max_reset_streams)
            .max_local_error_reset_streams(config.max_reset_streams);
        Proxy {
            config,
            state: ArcSwap::default(),
            client,
            server,
            metrics,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The metrics, when counted.
    pub fn metrics(&self) -> Option<&Arc<IngressMetrics>> {
        self.metrics.as_ref()
    }

    /// Replaces the whole state at once; the next request uses it.
    pub fn apply(&self, state: ProxyState) {
        self.state.store(Arc::new(state));
    }

    /// The current state.
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.load_full()
    }

    /// Replaces the route table only (tests and simple callers).
    pub fn set_routes(&self, routes: Arc<RouteTable>) {
        self.state.rcu(|s| ProxyState {
            routes: routes.clone(),
            ..ProxyState::clone(s)
        });
    }

    /// Replaces the upstream table only (tests and simple callers).
    pub fn set_upstreams(&self, upstreams: Arc<UpstreamTable>) {
        self.state.rcu(|s| ProxyState {
            upstreams: upstreams.clone(),
            ..ProxyState::clone(s)
        });
    }

    /// Answers one request from a client on `conn`; the access-log line
    /// and metrics follow when the response ends.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ResponseBody> {
        let host = request_host(&req);
        let mut record = RequestRecord::start(&req, host.as_ref(), conn.peer, self.metrics.clone());
        // Boxed: the routing and forwarding future is kilobytes, and the
        // future `handle` returns is moved several times on its way into a
        // task (by hyper, and per stream for HTTP/2). Copied once into the
        // heap instead, it stopped being a tenth of the CPU.
        let resp = Box::pin(self.route_and_forward(req, host, conn, &mut record)).await;
        record.status = resp.status().as_u16();
        resp.map(|body| ResponseBody::new(body).with_record(record))
    }

    async fn route_and_forward(
        &self,
        mut req: Request<Incoming>,
        host: Option<HeaderValue>,
        conn: ConnInfo,
        record: &mut RequestRecord,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
        }
        let Some(host) = host else {
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
        let state = self.state();
        let Some(route) = state.routes.route(host_str, &path) else {
            debug!(host = host_str, %path, "no route");
            return local(StatusCode::NOT_FOUND, "no route\n");
        };
        record.ingress = Some(route.ingress.clone());
        let options = state
            .options
            .get(&route.ingress)
            .copied()
            .unwrap_or_default();
        if conn.scheme == Scheme::Http && options.ssl_redirect {
            let bare_host = strip_port(host_str);
            if state.tls.as_ref().is_some_and(|tls| tls.has_tls(bare_host)) {
                return redirect_to_https(bare_host, req.uri());
            }
        }
        let Backend::Service(service) = &route.backend else {
            debug!(host = host_str, %path, ingress = %route.ingress, "backend not served");
            return local(StatusCode::SERVICE_UNAVAILABLE, "backend not available\n");
        };
        record.service = Some(service.clone());
        let Some(endpoints) = state.upstreams.get(service).filter(|e| !e.is_empty()) else {
            debug!(%service, "no ready endpoints");
            return local(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoints\n");
        };
        if content_length(req.headers()).is_some_and(|len| len > self.config.max_body_bytes) {
            return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
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
            // headers; its extended CONNECT is not enabled), and only an
            // HTTP/1.1 upstream can switch.
            Some(protocol)
                if req.version() == Version::HTTP_11
                    && options.backend_protocol == BackendProtocol::Http1 =>
            {
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
        let body = BodySlot::new(req.into_body(), self.config.max_body_bytes);
        let retry_no_response = body.is_empty() && is_idempotent(&method);
        let start = endpoints.pick(options.load_balance).unwrap_or(0);
        let protocol = match options.backend_protocol {
            BackendProtocol::Http1 => Protocol::Http1,
            BackendProtocol::H2c => Protocol::H2c,
        };
        let max_attempts = self.config.max_attempts.max(1);
        let mut offset = 0;
        let mut attempts = 0;
        let mut retried_no_response = false;
        let failure = loop {
            attempts += 1;
            let addr = endpoints.get(start + offset);
            record.attempts = attempts;
            record.upstream = Some(addr);
            let upstream_req = match build_request(
                &method,
                endpoints.authority(start + offset),
                &path_and_query,
                &headers,
                &body,
                protocol,
            ) {
                Some(r) => r,
                None => break Failure::Upstream,
            };
            let in_flight = endpoints.start_request(start + offset);
            // Boxed as well, to keep the retry loop's future small.
            let sent = Box::pin(tokio::time::timeout(
                self.config.response_header_timeout,
                self.client.send(addr, protocol, upstream_req),
            ))
            .await;
            match sent {
                Ok(Ok(resp)) => {
                    debug!(%service, upstream = %addr, status = resp.status().as_u16(), attempts, "proxied");
                    record.upstream_time = Some(record.started().elapsed());
                    record.in_flight = Some(in_flight);
                    return respond(resp, client_upgrade);
                }
                Err(_) => {
                    warn!(%service, upstream = %addr, timeout = ?self.config.response_header_timeout, "upstream response timed out");
                    break Failure::Timeout;
                }
                Ok(Err(_)) if body.was_too_large() => {
                    return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                }
                Ok(Err(e)) if e.is_connect() => {
                    let timed_out = e.is_timeout();
                    warn!(%service, upstream = %addr, error = %error_chain(&e), "upstream connect failed");
                    if let Some(metrics) = &self.metrics {
                        metrics.upstream_connect_error(service);
                    }
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

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

/// The `Content-Length` a request declares, if any and valid.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// 308 to the same host (default port) and request target over HTTPS:
/// unlike 301/302, 308 keeps the method and body.
fn redirect_to_https(host: &str, uri: &Uri) -> Response<Body> {
    let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let mut resp = local(StatusCode::PERMANENT_REDIRECT, "redirecting to HTTPS\n");
    match HeaderValue::try_from(format!("https://{host}{target}")) {
        Ok(location) => {
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
        // Not reached: host and target were valid header text already.
        Err(_) => local(StatusCode::BAD_REQUEST, "invalid request target\n"),
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
    authority: &Authority,
    path_and_query: &PathAndQuery,
    headers: &HeaderMap,
    body: &BodySlot,
    protocol: Protocol,
) -> Option<Request<UpstreamBody>> {
    // HTTP/1.1 writes the URI as it is: origin-form. HTTP/2 needs the
    // scheme and authority for its pseudo-headers.
    let uri = match protocol {
        Protocol::Http1 => Uri::from(path_and_query.clone()),
        Protocol::H2c => Uri::builder()
            .scheme(UriScheme::HTTP)
            .authority(authority.clone())
            .path_and_query(path_and_query.clone())
            .build()
            .ok()?,
    };
    let mut req = Request::new(body.attempt());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers.clone();
    if protocol == Protocol::H2c {
        *req.version_mut() = Version::HTTP_2;
        // HTTP/2 carries the host in `:authority` (hyper fills it from the
        // URI); a `Host` header naming the client's host is still
        // allowed, and what virtual-hosting upstreams look at.
        req.headers_mut().remove(header::CONNECTION);
    }
    Some(req)
}

/// The client's response from the upstream's: hop-by-hop headers removed,
/// a protocol switch spliced.
fn respond(mut resp: Response<PooledBody>, client_upgrade: Option<OnUpgrade>) -> Response<Body> {
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
fn local(status: StatusCode, message: &'static str) -> Response<Body> {
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
