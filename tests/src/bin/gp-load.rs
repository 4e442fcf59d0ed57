//! gp-load: HTTPS load generator for the Ingress benchmark
//! (`cargo xtask bench ingress`).
//!
//! Three modes, each for a fixed time after a warm-up:
//! - `keepalive`: `--concurrency` HTTP/1.1 connections over TLS, each sending
//!   requests back to back;
//! - `newconn`: every request on a new TCP connection with a full TLS
//!   handshake (session resumption off) and `Connection: close`;
//! - `h2`: `--concurrency` HTTP/2 connections with `--streams` concurrent
//!   streams each.
//!
//! Every request's latency is recorded (from sending the request, or from
//! `connect()` in `newconn`, to the last byte of the body). A transport
//! error, a timeout or a status other than 2xx counts as an error. The result
//! is one JSON object on stdout; a sample of each kind of error goes to
//! stderr.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// HTTP/1.1 over TLS, connections kept alive.
    Keepalive,
    /// A new TCP connection and full TLS handshake per request.
    Newconn,
    /// HTTP/2 over TLS, several concurrent streams per connection.
    H2,
}

#[derive(Parser, Debug)]
#[command(
    name = "gp-load",
    about = "HTTPS load generator for the Ingress benchmark"
)]
struct Args {
    /// The URL requested: its host is the SNI and Host header, its path and
    /// query the request target (e.g. https://bench.example/api/ping).
    #[arg(long)]
    url: http::Uri,
    /// Where to connect (default: the URL's host and port, which must then
    /// be an IP address).
    #[arg(long)]
    connect: Option<SocketAddr>,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Concurrent connections (`newconn`: concurrent requests).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// `h2`: concurrent streams per connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// PEM certificate to trust (the server's self-signed certificate).
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<std::path::PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// Seconds before one request counts as failed (timeout).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// The JSON line printed at the end.
#[derive(Serialize)]
struct Report {
    mode: Mode,
    url: String,
    concurrency: usize,
    streams: usize,
    threads: usize,
    duration_s: f64,
    /// Successful requests started in the measured window.
    requests: u64,
    /// Failed requests (transport error, timeout, non-2xx) in the window.
    errors: u64,
    /// `requests / duration_s`.
    rps: f64,
    /// Latency of successful requests, in microseconds.
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
    /// Response body bytes of successful requests.
    body_bytes: u64,
    /// Connections (TCP + TLS handshakes) opened in the window.
    connections: u64,
    /// Errors by kind ("connect", "tls", "http", "timeout", "status 503"...).
    error_kinds: BTreeMap<String, u64>,
    /// TLS version of the first connection (e.g. "TLSv1_3").
    tls_version: String,
    /// ALPN protocol of the first connection (e.g. "h2").
    alpn: String,
}

/// The fixed parts of every request and connection.
struct Target {
    mode: Mode,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    uri: http::Uri,
    authority: String,
    connector: TlsConnector,
    timeout: Duration,
    warmup_end: Instant,
    end: Instant,
    /// TLS version and ALPN of the first connection, for the report.
    negotiated: std::sync::OnceLock<(String, String)>,
}

/// What one task (connection or stream) measured.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    body_bytes: u64,
    connections: u64,
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.body_bytes += other.body_bytes;
        self.connections += other.connections;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, s) in other.samples {
            self.samples.entry(k).or_insert(s);
        }
    }

    fn error(&mut self, counted: bool, kind: &str, detail: impl FnOnce() -> String) {
        if counted {
            *self.errors.entry(kind.to_string()).or_default() += 1;
        }
        if !self.samples.contains_key(kind) {
            self.samples.insert(kind.to_string(), detail());
        }
    }
}

/// Why a request failed: its kind (for counting) and the message.
struct Failure {
    kind: String,
    detail: String,
}

impl Failure {
    fn new(kind: &str, detail: impl std::fmt::Display) -> Self {
        Self {
            kind: kind.into(),
            detail: detail.to_string(),
        }
    }
}

fn tls_config(args: &Args) -> Result<rustls::ClientConfig> {
    let mut config = gangplank_tests::tls_client::client_config(args.ca.as_deref(), args.insecure)
        .context("give --ca FILE (the certificate to trust) or --insecure")?;
    config.alpn_protocols = match args.mode {
        Mode::H2 => vec![b"h2".to_vec()],
        Mode::Keepalive | Mode::Newconn => vec![b"http/1.1".to_vec()],
    };
    if args.mode == Mode::Newconn {
        // Every connection pays the full handshake, as a new client does.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

impl Target {
    fn request(&self, close: bool) -> http::Request<Empty<Bytes>> {
        let mut b = match self.mode {
            // HTTP/2 carries the authority as a pseudo-header.
            Mode::H2 => http::Request::get(self.uri.clone()),
            Mode::Keepalive | Mode::Newconn => {
                http::Request::get(self.uri.path_and_query().map_or("/", |p| p.as_str()))
                    .header(http::header::HOST, self.authority.as_str())
            }
        };
        if close {
            b = b.header(http::header::CONNECTION, "close");
        }
        b.header(http::header::USER_AGENT, "gp-load")
            .body(Empty::new())
            .expect("a valid request")
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, Failure> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| Failure::new("connect", e))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Failure::new("tls", e))?;
        self.negotiated.get_or_init(|| {
            let conn = tls.get_ref().1;
            let version = conn
                .protocol_version()
                .map_or_else(String::new, |v| format!("{v:?}"));
            let alpn = conn
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_default();
            (version, alpn)
        });
        Ok(tls)
    }

    async fn http1(&self) -> Result<http1::SendRequest<Empty<Bytes>>, Failure> {
        let tls = self.connect().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Failure::new("http", e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn http2(&self) -> Result<http2::SendRequest<Empty<Bytes>>, Failure> {
        let tls = self.connect().await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Failure::new("alpn", "the server did not negotiate h2"));
        }
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| Failure::new("http", e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// A response's status and body size, or why there is none.
    async fn finish(
        resp: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
    ) -> Result<u64, Failure> {
        let resp = resp.map_err(|e| Failure::new("http", e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::new("body", e))?
            .to_bytes();
        if !status.is_success() {
            return Err(Failure::new(
                &format!("status {}", status.as_u16()),
                String::from_utf8_lossy(&body[..body.len().min(200)]),
            ));
        }
        Ok(body.len() as u64)
    }

    /// Runs `fut` with the request timeout, recording its outcome.
    async fn record(
        &self,
        tally: &mut Tally,
        started: Instant,
        fut: impl std::future::Future<Output = Result<u64, Failure>>,
    ) -> bool {
        let counted = started >= self.warmup_end && started < self.end;
        let outcome = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(
                "timeout",
                format!("no answer in {:?}", self.timeout),
            )),
        };
        match outcome {
            Ok(bytes) => {
                if counted {
                    tally.latencies_ns.push(started.elapsed().as_nanos() as u64);
                    tally.body_bytes += bytes;
                }
                true
            }
            Err(f) => {
                tally.error(counted, &f.kind, || f.detail);
                false
            }
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Gives a failing server a moment rather than spinning on it.
    async fn back_off() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    async fn keepalive(self: Arc<Self>) -> Tally {
        let mut tally = Tally::default();
        'conn: while self.running() {
            let started = Instant::now();
            let mut sender = match self.http1().await {
                Ok(s) => s,
                Err(f) => {
                    tally.error(started >= self.warmup_end, &f.kind, || f.detail);
                    Self::back_off().await;
                    continue;
                }
            };
            if started >= self.warmup_end {
                tally.connections += 1;
            }
            while self.running() {
                if sender.ready().await.is_err() {
                    // The server closed the connection: open another.
                    continue 'conn;
                }
                let started = Instant::now();
                let req = sender.send_request(self.request(false));
                let ok = self
                    .record(&mut tally, started, async { Self::finish(req.await).await })
                    .await;
                if !ok {
                    Self::back_off().await;
                    continue 'conn;
                }
            }
        }
        tally
    }

    async fn newconn(self: Arc<Self>) -> Tally {
        let mut tally = Tally::default();
        while self.running() {
            let started = Instant::now();
            let ok = self
                .record(&mut tally, started, async {
                    let mut sender = self.http1().await?;
                    sender.ready().await.map_err(|e| Failure::new("http", e))?;
                    Self::finish(sender.send_request(self.request(true)).await).await
                })
                .await;
            if started >= self.warmup_end && started < self.end {
                tally.connections += 1;
            }
            if !ok {
                Self::back_off().await;
            }
        }
        tally
    }

    async fn h2(self: Arc<Self>, streams: usize) -> Tally {
        let mut tally = Tally::default();
        while self.running() {
            let started = Instant::now();
            let sender = match self.http2().await {
                Ok(s) => s,
                Err(f) => {
                    tally.error(started >= self.warmup_end, &f.kind, || f.detail);
                    Self::back_off().await;
                    continue;
                }
            };
            if started >= self.warmup_end {
                tally.connections += 1;
            }
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..streams {
                let this = self.clone();
                let mut sender = sender.clone();
                set.spawn(async move {
                    let mut tally = Tally::default();
                    while this.running() {
                        if sender.ready().await.is_err() {
                            break;
                        }
                        let started = Instant::now();
                        let req = sender.send_request(this.request(false));
                        let ok = this
                            .record(&mut tally, started, async { Self::finish(req.await).await })
                            .await;
                        if !ok {
                            Self::back_off().await;
                            if sender.is_closed() {
                                break;
                            }
                        }
                    }
                    tally
                });
            }
            drop(sender);
            while let Some(t) = set.join_next().await {
                match t {
                    Ok(t) => tally.merge(t),
                    Err(e) => tally.error(true, "task", || e.to_string()),
                }
            }
        }
        tally
    }
}

/// The `q`-quantile of sorted nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e3
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

async fn run(args: Args) -> Result<Report> {
    let host = args
        .url
        .host()
        .ok_or_else(|| anyhow!("--url {} has no host", args.url))?
        .to_string();
    let port = args.url.port_u16().unwrap_or(443);
    let addr = match args.connect {
        Some(a) => a,
        None => format!("{host}:{port}")
            .parse()
            .context("--url's host is not an IP address: give --connect ADDR")?,
    };
    let authority = args
        .url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host.clone());
    let server_name = ServerName::try_from(host.clone())
        .with_context(|| format!("{host} is not a valid TLS server name"))?;
    if args.concurrency == 0 || args.streams == 0 {
        bail!("--concurrency and --streams must be at least 1");
    }
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(args.warmup);
    let target = Arc::new(Target {
        mode: args.mode,
        addr,
        server_name,
        uri: args.url.clone(),
        authority,
        connector: TlsConnector::from(Arc::new(tls_config(&args)?)),
        timeout: Duration::from_secs_f64(args.timeout),
        warmup_end,
        end: warmup_end + Duration::from_secs_f64(args.duration),
        negotiated: std::sync::OnceLock::new(),
    });

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let t = target.clone();
        match args.mode {
            Mode::Keepalive => set.spawn(t.keepalive()),
            Mode::Newconn => set.spawn(t.newconn()),
            Mode::H2 => set.spawn(t.h2(args.streams)),
        };
    }
    let mut tally = Tally::default();
    while let Some(t) = set.join_next().await {
        tally.merge(t.context("a load task panicked")?);
    }

    for (kind, detail) in &tally.samples {
        eprintln!("gp-load: {kind}: {detail}");
    }
    let mut lat = std::mem::take(&mut tally.latencies_ns);
    lat.sort_unstable();
    let requests = lat.len() as u64;
    let mean_us = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&n| n as f64).sum::<f64>() / lat.len() as f64 / 1e3
    };
    Ok(Report {
        mode: args.mode,
        url: args.url.to_string(),
        concurrency: args.concurrency,
        streams: if args.mode == Mode::H2 {
            args.streams
        } else {
            1
        },
        threads: args.threads,
        duration_s: args.duration,
        requests,
        errors: tally.errors.values().sum(),
        rps: round1(requests as f64 / args.duration),
        p50_us: round1(quantile_us(&lat, 0.50)),
        p90_us: round1(quantile_us(&lat, 0.90)),
        p99_us: round1(quantile_us(&lat, 0.99)),
        max_us: round1(quantile_us(&lat, 1.0)),
        mean_us: round1(mean_us),
        body_bytes: tally.body_bytes,
        connections: tally.connections,
        error_kinds: tally.errors,
        tls_version: target
            .negotiated
            .get()
            .map(|n| n.0.clone())
            .unwrap_or_default(),
        alpn: target
            .negotiated
            .get()
            .map(|n| n.1.clone())
            .unwrap_or_default(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gp-load: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("the report serialises")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gp-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
