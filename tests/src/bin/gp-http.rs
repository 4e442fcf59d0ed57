//! gp-http: the HTTP upstream (and HTTP clients) of the Ingress tests and
//! benchmarks.
//!
//! Without a subcommand it serves HTTP/1.1 and h2c (prior knowledge) on every
//! `--listen` address and prints `listening on ADDR` per listener once bound:
//!
//! - any path: 200 with a JSON echo of the request (name, method, path and
//!   query, host, version, headers, body length) and `x-served-by: NAME`;
//! - `/bulk/N`: N bytes of 'a'..'z' repeating, streamed;
//! - `/delay/MS`: the JSON answer after MS milliseconds;
//! - `/status/CODE`: the JSON answer with that status;
//! - `/ws` with `Upgrade: websocket`: a WebSocket echo;
//! - gRPC (HTTP/2 POST, `content-type: application/grpc`):
//!   `/gp.test.Echo/Echo` echoes each length-prefixed message, with trailers
//!   `grpc-status: 0`, `grpc-message: ok`, `x-served-by-trailer: NAME`; any
//!   other method ends with `grpc-status: 12` (unimplemented).
//!
//! It is also the benchmark upstream, so it logs nothing per request.
//!
//! The subcommands are clients that print JSON on stdout for the tests:
//! `grpc-call` (one gRPC call over h2/TLS or h2c), `ws-call` (a WebSocket
//! echo session driven by stdin lines) and `load` (many keep-alive requests,
//! counting failures). Network errors are reported, never panics.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Parser)]
#[command(
    name = "gp-http",
    about = "HTTP/1.1 + h2c test upstream (JSON echo, bulk, delay, status, WebSocket, gRPC) and test clients",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to serve on (repeatable); port 0 picks one (printed).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Name reported in answers (`x-served-by`, JSON "name").
    #[arg(long)]
    name: Option<String>,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// One unary gRPC call to /gp.test.Echo/Echo (or --path); prints
    /// {"status","version","headers","messages","trailers"} as JSON.
    GrpcCall {
        #[command(flatten)]
        conn: ConnArgs,
        /// :authority of the request (default: --sni, else the address).
        #[arg(long)]
        authority: Option<String>,
        /// gRPC method path.
        #[arg(long, default_value = "/gp.test.Echo/Echo")]
        path: String,
        /// Message payload (repeatable: one length-prefixed message each).
        #[arg(long = "message", default_value = "hello")]
        messages: Vec<String>,
    },
    /// A WebSocket session: prints `connected`, then sends each stdin line
    /// (or each --message) as a text message and prints `echo TEXT` for what
    /// comes back; closes on stdin EOF (or after the last --message).
    WsCall {
        #[command(flatten)]
        conn: ConnArgs,
        /// Request URL (its host becomes the Host header), e.g. ws://echo.example.com/ws.
        #[arg(long)]
        url: String,
        /// Messages to send instead of reading stdin (repeatable).
        #[arg(long = "message")]
        messages: Vec<String>,
    },
    /// GET requests over keep-alive connections; prints one JSON summary
    /// {"requests","ok","failed","retried","connections","statuses","served_by","errors","elapsed_ms"}.
    Load {
        #[command(flatten)]
        conn: ConnArgs,
        /// Host header (HTTP/1.1) or :authority (HTTP/2).
        #[arg(long)]
        host: String,
        /// Request path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Total number of requests.
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        /// Concurrent connections (each sends its requests one after another).
        #[arg(long, default_value_t = 4)]
        concurrency: u64,
        /// Pause between a connection's requests, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// HTTP/2 (ALPN h2 with --tls, else h2c prior knowledge) instead of HTTP/1.1.
        #[arg(long)]
        h2: bool,
        /// Status that counts as success.
        #[arg(long, default_value_t = 200)]
        expect_status: u16,
        /// Per-request timeout, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

/// Where and how a client connects.
#[derive(Args, Clone)]
struct ConnArgs {
    /// TCP address to connect to.
    #[arg(long)]
    connect: SocketAddr,
    /// Use TLS.
    #[arg(long)]
    tls: bool,
    /// TLS server name (SNI and verification); default: the request's host.
    #[arg(long)]
    sni: Option<String>,
    /// PEM CA certificate(s) to verify the server with (TLS).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Accept any server certificate (TLS).
    #[arg(long)]
    insecure: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.cmd {
        None => cli.serve.workers,
        // Clients: two threads are plenty and keep CI's two cores for the proxy.
        Some(_) => Some(2),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = workers {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gp-http: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            None => serve(cli.serve).await,
            Some(Cmd::GrpcCall {
                conn,
                authority,
                path,
                messages,
            }) => grpc_call(conn, authority, path, messages).await,
            Some(Cmd::WsCall {
                conn,
                url,
                messages,
            }) => ws_call(conn, url, messages).await,
            Some(Cmd::Load {
                conn,
                host,
                path,
                requests,
                concurrency,
                interval_ms,
                h2,
                expect_status,
                timeout_ms,
            }) => {
                load(LoadOpts {
                    conn,
                    host,
                    path,
                    requests,
                    concurrency: concurrency.max(1),
                    interval: Duration::from_millis(interval_ms),
                    h2,
                    expect_status,
                    timeout: Duration::from_millis(timeout_ms),
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gp-http: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
const GRPC_ECHO: &str = "/gp.test.Echo/Echo";
/// Upper bound for `/delay/MS`, so a typo cannot park a connection for days.
const MAX_DELAY_MS: u64 = 600_000;

struct Ctx {
    name: String,
    served_by: HeaderValue,
}

async fn serve(args: ServeArgs) -> Result<()> {
    if args.listen.is_empty() {
        bail!("nothing to serve: give at least one --listen ADDR (or a subcommand, see --help)");
    }
    let name = args
        .name
        .ok_or_else(|| anyhow!("--name NAME is required when serving"))?;
    let ctx = Arc::new(Ctx {
        served_by: HeaderValue::from_str(&name)
            .with_context(|| format!("--name {name:?} is not a valid header value"))?,
        name,
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);

    let mut tasks = Vec::new();
    for addr in &args.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr().unwrap_or(*addr);
        println!("listening on {local}");
        tasks.push(tokio::spawn(accept_loop(
            listener,
            ctx.clone(),
            builder.clone(),
        )));
    }
    for t in tasks {
        t.await.context("listener task")?;
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("gp-http: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, ctx.clone()));
            // Connection errors (resets, bad requests) are the client's business.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Response bodies: a whole buffer, a streamed bulk pattern, or a gRPC
/// answer (data then trailers). One concrete type, no boxing.
enum RespBody {
    Full(Option<Bytes>),
    Bulk {
        remaining: u64,
    },
    Grpc {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

/// 'a'..'z' repeating; a multiple of 26 long, so every chunk starts with 'a'.
fn bulk_chunk() -> Bytes {
    static CHUNK: OnceLock<Bytes> = OnceLock::new();
    CHUNK
        .get_or_init(|| {
            let v: Vec<u8> = (0..26 * 2520).map(|i| b'a' + (i % 26) as u8).collect();
            Bytes::from(v)
        })
        .clone()
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(match this {
            RespBody::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
            RespBody::Bulk { remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let chunk = bulk_chunk();
                    let n = (chunk.len() as u64).min(*remaining) as usize;
                    *remaining -= n as u64;
                    Some(Ok(Frame::data(chunk.slice(..n))))
                }
            }
            RespBody::Grpc { data, trailers } => match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            },
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(d) => d.is_none(),
            RespBody::Bulk { remaining } => *remaining == 0,
            RespBody::Grpc { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            RespBody::Bulk { remaining } => SizeHint::with_exact(*remaining),
            RespBody::Grpc { data, .. } => {
                let mut h = SizeHint::new();
                h.set_lower(data.as_ref().map_or(0, |d| d.len() as u64));
                h
            }
        }
    }
}

fn response(
    ctx: &Ctx,
    status: StatusCode,
    content_type: &'static str,
    body: RespBody,
) -> Response<RespBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(X_SERVED_BY, ctx.served_by.clone());
    resp
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<Ctx>,
) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path().to_string();

    if req.version() == Version::HTTP_2
        && req.method() == Method::POST
        && header_str(req.headers(), &header::CONTENT_TYPE)
            .is_some_and(|ct| ct.starts_with("application/grpc"))
    {
        return Ok(grpc(req, &ctx).await);
    }
    if path == "/ws" && is_websocket_upgrade(req.headers()) {
        return Ok(websocket(req, &ctx));
    }
    if let Some(n) = path.strip_prefix("/bulk/") {
        return Ok(match n.parse::<u64>() {
            Ok(n) => {
                drain(req.body_mut()).await;
                response(
                    &ctx,
                    StatusCode::OK,
                    "application/octet-stream",
                    RespBody::Bulk { remaining: n },
                )
            }
            Err(_) => bad_request(&ctx, "/bulk/N: N must be a byte count"),
        });
    }
    let mut status = StatusCode::OK;
    if let Some(ms) = path.strip_prefix("/delay/") {
        match ms.parse::<u64>() {
            Ok(ms) => tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await,
            Err(_) => return Ok(bad_request(&ctx, "/delay/MS: MS must be milliseconds")),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(s) if s.as_u16() >= 200 => status = s,
            _ => return Ok(bad_request(&ctx, "/status/CODE: CODE must be 200-999")),
        }
    }
    let body_len = drain(req.body_mut()).await;
    let echo = echo_json(&req, &ctx.name, body_len);
    let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        RespBody::Full(None)
    } else {
        RespBody::Full(Some(Bytes::from(echo)))
    };
    Ok(response(&ctx, status, "application/json", body))
}

fn bad_request(ctx: &Ctx, msg: &'static str) -> Response<RespBody> {
    response(
        ctx,
        StatusCode::BAD_REQUEST,
        "text/plain",
        RespBody::Full(Some(Bytes::from_static(msg.as_bytes()))),
    )
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the whole request body, returning its length (what arrived before
/// an error, if any).
async fn drain(body: &mut Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    n
}

fn echo_json(req: &Request<Incoming>, name: &str, body_len: u64) -> Vec<u8> {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(k.as_str())
            .and_modify(|s| {
                s.push_str(", ");
                s.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let host = header_str(req.headers(), &header::HOST)
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let v = json!({
        "name": name,
        "method": req.method().as_str(),
        "path": path,
        "host": host,
        "version": format!("{:?}", req.version()),
        "headers": headers,
        "body_len": body_len,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn is_websocket_upgrade(h: &HeaderMap) -> bool {
    header_str(h, &header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && h.contains_key(header::SEC_WEBSOCKET_KEY)
}

fn websocket(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request(ctx, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return bad_request(ctx, "bad Sec-WebSocket-Key");
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            // Pings are answered by tungstenite itself; a Close is answered
            // on the next read, which then ends the stream.
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(RespBody::Full(None));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    h.insert(X_SERVED_BY, ctx.served_by.clone());
    resp
}

/// Splits a gRPC body into its length-prefixed messages (flag byte, u32 BE
/// length, payload); None if it is not a whole number of messages.
fn grpc_messages(mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let rest = &body[5..];
        if rest.len() < len {
            return None;
        }
        out.push(&rest[..len]);
        body = &rest[len..];
    }
    Some(out)
}

fn grpc_frame(out: &mut BytesMut, msg: &[u8]) {
    out.put_u8(0);
    out.put_u32(msg.len() as u32);
    out.put_slice(msg);
}

async fn grpc(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let known = req.uri().path() == GRPC_ECHO;
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut trailers = HeaderMap::new();
    let mut data = None;
    let (status, message) = if !known {
        ("12", "unknown method")
    } else {
        match grpc_messages(&body) {
            Some(msgs) => {
                let mut out = BytesMut::with_capacity(body.len());
                for m in msgs {
                    grpc_frame(&mut out, m);
                }
                data = Some(out.freeze());
                ("0", "ok")
            }
            None => ("13", "truncated message"),
        }
    };
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    trailers.insert("x-served-by-trailer", ctx.served_by.clone());
    response(
        ctx,
        StatusCode::OK,
        "application/grpc",
        RespBody::Grpc {
            data,
            trailers: Some(trailers),
        },
    )
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// Any byte stream a client speaks HTTP or WebSocket over.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Connects (TCP, then TLS if asked) and returns the stream and the
/// negotiated ALPN protocol.
async fn connect(
    conn: &ConnArgs,
    host: &str,
    alpn: &[&[u8]],
) -> Result<(Box<dyn Io>, Option<Vec<u8>>)> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(conn.connect))
        .await
        .map_err(|_| anyhow!("connecting to {}: timed out", conn.connect))?
        .with_context(|| format!("connecting to {}", conn.connect))?;
    let _ = tcp.set_nodelay(true);
    if !conn.tls {
        return Ok((Box::new(tcp), None));
    }
    let config = tls_config(conn, alpn)?;
    let sni = conn.sni.as_deref().unwrap_or(host);
    let sni = host_without_port(sni);
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())
        .with_context(|| format!("{sni:?} is not a valid TLS server name"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {} (SNI {sni})", conn.connect))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    Ok((Box::new(tls), alpn))
}

fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

fn tls_config(conn: &ConnArgs, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
    let mut config =
        gangplank_tests::tls_client::client_config(conn.cacert.as_deref(), conn.insecure)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes());
        m.entry(k.as_str())
            .and_modify(|s| {
                s.push_str(", ");
                s.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    json!(m)
}

async fn grpc_call(
    conn: ConnArgs,
    authority: Option<String>,
    path: String,
    messages: Vec<String>,
) -> Result<()> {
    let authority = authority
        .or_else(|| conn.sni.clone())
        .unwrap_or_else(|| conn.connect.to_string());
    let (io, alpn) = connect(&conn, &authority, &[b"h2"]).await?;
    if conn.tls && alpn.as_deref() != Some(b"h2") {
        bail!(
            "the server did not negotiate ALPN h2 (got {:?})",
            alpn.map(|a| String::from_utf8_lossy(&a).into_owned())
        );
    }
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    let mut body = BytesMut::new();
    for m in &messages {
        grpc_frame(&mut body, m.as_bytes());
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{scheme}://{authority}{path}"))
        .version(Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(body.freeze()))
        .context("building the request")?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("no response within 10s"))?
        .context("sending the gRPC request")?;
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .map_err(|_| anyhow!("response body not complete within 10s"))?
        .context("reading the gRPC response")?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let msgs: Vec<String> = grpc_messages(&data)
        .ok_or_else(|| anyhow!("response body is not whole gRPC messages: {data:?}"))?
        .into_iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let out = json!({
        "status": parts.status.as_u16(),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "messages": msgs,
        "trailers": headers_json(&trailers),
    });
    println!("{out}");
    Ok(())
}

async fn ws_call(conn: ConnArgs, url: String, messages: Vec<String>) -> Result<()> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("--url {url:?} has no host"))?
        .to_string();
    let (io, _) = connect(&conn, &host, &[b"http/1.1"]).await?;
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url.as_str(), io),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake: timed out"))?
    .context("WebSocket handshake")?;
    let served_by = header_str(resp.headers(), &X_SERVED_BY).unwrap_or("");
    println!("connected {served_by}");

    // Lines to send: the --message list, else stdin (read on a plain thread,
    // tokio's stdin needs a feature the workspace does not enable).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    if messages.is_empty() {
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    } else {
        for m in messages {
            let _ = tx.send(m);
        }
        drop(tx);
    }
    while let Some(line) = rx.recv().await {
        ws.send(Message::text(line.clone()))
            .await
            .context("sending a message")?;
        let echo = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .map_err(|_| anyhow!("no echo for {line:?} within 10s"))?
                .ok_or_else(|| anyhow!("connection closed while waiting for the echo of {line:?}"))?
                .context("reading the echo")?;
            match msg {
                Message::Text(t) => break t.to_string(),
                Message::Binary(b) => break String::from_utf8_lossy(&b).into_owned(),
                Message::Close(c) => {
                    bail!("server closed the WebSocket ({c:?}) instead of echoing {line:?}")
                }
                _ => continue,
            }
        };
        println!("echo {echo}");
    }
    let _ = ws.close(None).await;
    println!("closed");
    Ok(())
}

struct LoadOpts {
    conn: ConnArgs,
    host: String,
    path: String,
    requests: u64,
    concurrency: u64,
    interval: Duration,
    h2: bool,
    expect_status: u16,
    timeout: Duration,
}

#[derive(Default)]
struct LoadStats {
    ok: u64,
    failed: u64,
    retried: u64,
    connections: u64,
    statuses: BTreeMap<String, u64>,
    served_by: BTreeMap<String, u64>,
    errors: Vec<String>,
}

impl LoadStats {
    fn merge(&mut self, o: LoadStats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.retried += o.retried;
        self.connections += o.connections;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.served_by {
            *self.served_by.entry(k).or_default() += v;
        }
        for e in o.errors {
            if self.errors.len() < 20 {
                self.errors.push(e);
            }
        }
    }

    fn error(&mut self, e: String) {
        self.failed += 1;
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = hyper::Result<Response<Incoming>>> + Send>> {
        match self {
            Sender::H1(s) => Box::pin(s.send_request(req)),
            Sender::H2(s) => Box::pin(s.send_request(req)),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }
}

async fn load_connect(o: &LoadOpts) -> Result<Sender> {
    let alpn: &[&[u8]] = if o.h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let (io, negotiated) = connect(&o.conn, &o.host, alpn).await?;
    if o.conn.tls && o.h2 && negotiated.as_deref() != Some(b"h2") {
        bail!("ALPN h2 not negotiated");
    }
    let io = TokioIo::new(io);
    Ok(if o.h2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(c);
        Sender::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io)
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(c);
        Sender::H1(s)
    })
}

/// One request; Err(retryable, message).
async fn load_one(o: &LoadOpts, sender: &mut Sender) -> Result<Response<Bytes>, (bool, String)> {
    let scheme = if o.conn.tls { "https" } else { "http" };
    let mut b = Request::builder().method(Method::GET);
    b = if o.h2 {
        b.uri(format!("{scheme}://{}{}", o.host, o.path))
            .version(Version::HTTP_2)
    } else {
        b.uri(o.path.as_str()).header(header::HOST, o.host.as_str())
    };
    let req = b
        .body(Full::new(Bytes::new()))
        .map_err(|e| (false, format!("building the request: {e}")))?;
    let fut = async {
        // A keep-alive connection the server closed in the meantime fails
        // here or in send, before anything was processed: retryable.
        sender
            .ready()
            .await
            .map_err(|e| (true, format!("connection not ready: {e}")))?;
        let resp = sender.send(req).await.map_err(|e| {
            let retry = e.is_canceled() || e.is_incomplete_message() || e.is_closed();
            (retry, format!("request: {e}"))
        })?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| {
                (
                    false,
                    format!("reading the body (status {}): {e}", parts.status),
                )
            })?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    };
    tokio::time::timeout(o.timeout, fut).await.map_err(|_| {
        (
            false,
            format!("no complete response within {:?}", o.timeout),
        )
    })?
}

async fn load_worker(o: Arc<LoadOpts>, count: u64) -> LoadStats {
    let mut st = LoadStats::default();
    let mut sender: Option<Sender> = None;
    for i in 0..count {
        if i > 0 && !o.interval.is_zero() {
            tokio::time::sleep(o.interval).await;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fresh = sender.is_none();
            if sender.is_none() {
                match load_connect(&o).await {
                    Ok(s) => {
                        st.connections += 1;
                        sender = Some(s);
                    }
                    Err(e) => {
                        st.error(format!("{e:#}"));
                        break;
                    }
                }
            }
            let Some(s) = sender.as_mut() else { break };
            match load_one(&o, s).await {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    *st.statuses.entry(code.to_string()).or_default() += 1;
                    if let Some(by) = header_str(resp.headers(), &X_SERVED_BY) {
                        *st.served_by.entry(by.to_string()).or_default() += 1;
                    }
                    if code == o.expect_status {
                        st.ok += 1;
                    } else {
                        let body =
                            String::from_utf8_lossy(&resp.body()[..resp.body().len().min(200)])
                                .into_owned();
                        st.error(format!("status {code}: {body}"));
                    }
                    if header_str(resp.headers(), &header::CONNECTION)
                        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                    {
                        sender = None;
                    }
                    break;
                }
                Err((retryable, e)) => {
                    sender = None;
                    // Like any HTTP client: a request that failed on a reused
                    // connection before the server saw it is retried once on
                    // a fresh one (RFC 9110 §9.2.2, idempotent GET).
                    if retryable && !fresh && attempt == 1 {
                        st.retried += 1;
                        continue;
                    }
                    st.error(e);
                    break;
                }
            }
        }
    }
    st
}

async fn load(o: LoadOpts) -> Result<()> {
    let started = Instant::now();
    let o = Arc::new(o);
    let per = o.requests / o.concurrency;
    let extra = o.requests % o.concurrency;
    let mut tasks = Vec::new();
    for w in 0..o.concurrency {
        let n = per + u64::from(w < extra);
        tasks.push(tokio::spawn(load_worker(o.clone(), n)));
    }
    let mut total = LoadStats::default();
    for t in tasks {
        total.merge(t.await.context("load worker")?);
    }
    let out = json!({
        "requests": o.requests,
        "ok": total.ok,
        "failed": total.failed,
        "retried": total.retried,
        "connections": total.connections,
        "statuses": total.statuses,
        "served_by": total.served_by,
        "errors": total.errors,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{out}");
    Ok(())
}
