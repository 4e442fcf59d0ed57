//! The upstream client: connections to endpoint addresses, pooled per
//! endpoint, HTTP/1.1 with keep-alive or h2c.
//!
//! Why not hyper-util's pooled client: it keys its pool by URI authority
//! (a SipHash per request), hands every idle connection back through a task
//! of its own that waits for readiness, and its errors hide whether a
//! request reached the upstream. This one is smaller and does what the
//! proxy needs:
//!
//! - **Sharded by worker thread.** Each thread takes and returns
//!   connections in its own shard, so a connection's task and the requests
//!   that use it stay on one thread (the binary runs one single-threaded
//!   runtime per worker, see `main.rs`).
//! - **HTTP/1.1 connections go back to the pool when the response body
//!   ends** ([`PooledBody`]), not before: a response still streaming owns
//!   its connection. A body dropped half-way (the client left) takes the
//!   connection down with it, as hyper closes a connection whose response
//!   was not read.
//! - **h2c**: one multiplexed connection per endpoint, shared by all
//!   requests of the shard.
//! - **Stale connections are retried transparently**: when a pooled
//!   connection turns out closed before the request was written
//!   ([`SendRequest::try_send_request`] hands the request back), the next
//!   idle one or a new one gets it. Whether the request went out is known,
//!   so this never repeats a request.
//! - Idle connections older than the idle timeout are closed by a sweeper
//!   task, started with the first request.

use crate::FastMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::UpstreamBody;

#[cfg(test)]
mod tests;

/// Why a request got no response from an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made: nothing was sent.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TCP connection did not complete in time: nothing was sent.
    #[error("connect to {addr}: timed out after {timeout:?}")]
    ConnectTimeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The connection failed during the exchange (or its HTTP/2 handshake):
    /// the request may have reached the upstream.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl ClientError {
    /// Whether the connection could not be made (the request was never
    /// sent, so any request may be retried elsewhere).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::ConnectTimeout { .. }
        )
    }

    /// Whether the connect timeout expired.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::ConnectTimeout { .. })
    }
}

/// Which protocol the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    H2c,
}

/// Pool limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint and worker thread.
    pub max_idle_per_endpoint: usize,
}

/// Connections to endpoints. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PoolConfig,
    shards: Box<[Mutex<Shard>]>,
    sweeper_started: AtomicBool,
}

#[derive(Debug, Default)]
struct Shard {
    /// Idle HTTP/1.1 connections per endpoint, oldest first.
    http1: FastMap<SocketAddr, Vec<Idle>>,
    /// The shared h2c connection per endpoint.
    h2c: FastMap<SocketAddr, http2::SendRequest<UpstreamBody>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// How often an h2c connection is pinged, and how long an answer may take.
const H2C_PING_EVERY: Duration = Duration::from_secs(30);
const H2C_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// This thread's shard number, assigned on first use.
fn shard_index(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % shards.max(1)
}

impl UpstreamClient {
    /// A client with one pool shard per CPU.
    pub fn new(config: PoolConfig) -> Self {
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        UpstreamClient {
            inner: Arc::new(Inner {
                config,
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (its URI in the form `protocol` needs: origin-form for
    /// HTTP/1.1, absolute for h2c) to `addr`, on an idle pooled connection
    /// if there is one.
    pub async fn send(
        &self,
        addr: SocketAddr,
        protocol: Protocol,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        self.start_sweeper();
        match protocol {
            Protocol::Http1 => self.send_http1(addr, req).await,
            Protocol::H2c => self.send_h2c(addr, req).await,
        }
    }

    async fn send_http1(
        &self,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        let shard = shard_index(self.inner.shards.len());
        let request_sent = req.body().finished();
        // Pooled connections first; any of them may have been closed by the
        // upstream since, which shows as the request handed back unsent.
        while let Some(mut sender) = self.inner.take_idle(shard, addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, shard, addr, sender, request_sent)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        debug!(upstream = %addr, error = %e.error(), "pooled connection closed; trying another");
                        req = unsent;
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: the connect and handshake futures are large, and would
        // otherwise be part of every request's future (moved several
        // times per request: a quarter of the CPU under HTTP/2).
        let mut sender = Box::pin(self.connect_http1(addr)).await?;
        let resp = sender.send_request(req).await?;
        Ok(self.pooled(resp, shard, addr, sender, request_sent))
    }

    async fn connect_http1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<UpstreamBody>, ClientError> {
        let io = self.connect(addr).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn send_h2c(
        &self,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, ClientError> {
        let shard = shard_index(self.inner.shards.len());
        let mut req = req;
        // The shared connection may have closed or got GOAWAY since it
        // was last used: a request handed back unsent goes on a new one.
        let mut fresh = false;
        loop {
            let shared = self.inner.lock(shard).h2c.get(&addr).cloned();
            let mut sender = match shared {
                Some(sender) if !sender.is_closed() && !fresh => sender,
                // Boxed for the same reason as in `send_http1`.
                _ => {
                    fresh = true;
                    Box::pin(self.connect_h2c(shard, addr)).await?
                }
            };
            if sender.ready().await.is_err() && !fresh {
                self.inner.forget_h2c(shard, addr);
                fresh = true;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(PooledBody::unpooled)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        debug!(upstream = %addr, error = %e.error(), "h2c connection gone; trying a new one");
                        self.inner.forget_h2c(shard, addr);
                        req = unsent;
                        fresh = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    async fn connect_h2c(
        &self,
        shard: usize,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<UpstreamBody>, ClientError> {
        let io = self.connect(addr).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // A connection that died silently (no RST, no FIN) is noticed
            // by its pings, not by requests timing out for minutes.
            .keep_alive_interval(H2C_PING_EVERY)
            .keep_alive_timeout(H2C_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(upstream = %addr, error = %e, "upstream h2c connection ended with an error");
            }
        });
        self.inner.lock(shard).h2c.insert(addr, sender.clone());
        Ok(sender)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TokioIo<TcpStream>, ClientError> {
        let timeout = self.inner.config.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Err(_) => return Err(ClientError::ConnectTimeout { addr, timeout }),
        };
        // Requests are small writes: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    fn pooled(
        &self,
        resp: Response<Incoming>,
        shard: usize,
        addr: SocketAddr,
        sender: http1::SendRequest<UpstreamBody>,
        request_sent: Arc<AtomicBool>,
    ) -> Response<PooledBody> {
        // A protocol switch takes the connection over: never reuse it.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(PooledBody::unpooled);
        }
        let release = Release {
            pool: Arc::downgrade(&self.inner),
            shard,
            addr,
            sender,
            request_sent,
        };
        resp.map(|body| PooledBody::new(body, release))
    }

    fn start_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(&self.inner);
        let every = (self.inner.config.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The client is gone: so is the pool.
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    /// Idle HTTP/1.1 connections to `addr` in all shards (for tests).
    #[cfg(test)]
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        (0..self.inner.shards.len())
            .map(|s| self.inner.lock(s).http1.get(&addr).map_or(0, Vec::len))
            .sum()
    }
}

impl Inner {
    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding the lock leaves a map of connections,
        // still consistent: keep using it.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `addr` that is still open
    /// and not expired.
    fn take_idle(
        &self,
        shard: usize,
        addr: SocketAddr,
    ) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut shard = self.lock(shard);
        let idle = shard.http1.get_mut(&addr)?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.config.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put_idle(&self, shard: usize, addr: SocketAddr, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        if self.config.max_idle_per_endpoint == 0 {
            return;
        }
        let mut shard = self.lock(shard);
        let idle = shard.http1.entry(addr).or_default();
        if idle.len() >= self.config.max_idle_per_endpoint {
            // Full: the oldest goes (dropping it closes the connection).
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops the shared h2c connection to `addr` if it is closed (another
    /// request may have replaced it with a live one meanwhile; the new
    /// connection about to be made replaces it anyway).
    fn forget_h2c(&self, shard: usize, addr: SocketAddr) {
        let mut shard = self.lock(shard);
        if shard
            .h2c
            .get(&addr)
            .is_some_and(http2::SendRequest::is_closed)
        {
            shard.h2c.remove(&addr);
        }
    }

    /// Closes idle connections that expired or were closed by the
    /// upstream, and forgets closed h2c connections.
    fn sweep(&self) {
        for shard in 0..self.shards.len() {
            let mut shard = self.lock(shard);
            shard.http1.retain(|_, idle| {
                idle.retain(|c| {
                    !c.sender.is_closed() && c.since.elapsed() < self.config.idle_timeout
                });
                !idle.is_empty()
            });
            shard.h2c.retain(|_, sender| !sender.is_closed());
        }
    }
}

/// An HTTP/1.1 connection to hand back to its pool once its response is
/// read to the end.
#[derive(Debug)]
struct Release {
    pool: Weak<Inner>,
    shard: usize,
    addr: SocketAddr,
    sender: http1::SendRequest<UpstreamBody>,
    /// The request body has been sent to the end.
    request_sent: Arc<AtomicBool>,
}

impl Release {
    fn release(self) {
        // An upstream that answered before reading the whole upload (a
        // 401 or 413 to a POST) still has the connection busy: not for
        // another request. Dropping the sender lets it close when done.
        if !self.request_sent.load(Ordering::Relaxed) {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.put_idle(self.shard, self.addr, self.sender);
        }
    }
}

/// An upstream response body that returns its HTTP/1.1 connection to the
/// pool when it ends.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    release: Option<Release>,
}

impl PooledBody {
    fn new(inner: Incoming, release: Release) -> Self {
        let mut body = PooledBody {
            inner,
            release: Some(release),
        };
        // An empty body (HEAD, 204, 304) may never be polled.
        if body.inner.is_end_stream() {
            body.finished();
        }
        body
    }

    fn unpooled(inner: Incoming) -> Self {
        PooledBody {
            inner,
            release: None,
        }
    }

    fn finished(&mut self) {
        if let Some(release) = self.release.take() {
            release.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finished(),
            Poll::Ready(None) => this.finished(),
            // An error: the connection is not reusable; dropping the
            // sender lets it close.
            Poll::Ready(Some(Err(_))) => this.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
