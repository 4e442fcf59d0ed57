//! Accepting and serving client connections: the plain-HTTP and TLS accept
//! loops, and one connection's life (idle timeout, graceful shutdown).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{error_chain, ConnInfo, Proxy, Scheme};

/// Accepts plain-TCP connections on `listener` and serves them with `proxy`
/// (HTTP/1.1, and HTTP/2 with prior knowledge) until `shutdown` completes.
/// Then it stops accepting, lets requests in flight finish (idle keep-alive
/// connections are closed, HTTP/2 clients get GOAWAY) for at most
/// [`ProxyConfig::shutdown_grace`](super::ProxyConfig), closes what is
/// left and returns. Upgraded connections (WebSockets) are not waited for.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    accept_loop(listener, proxy, None, shutdown).await;
}

/// [`serve`] over TLS: each connection's handshake (certificate by SNI,
/// ALPN `h2` or `http/1.1`, see `tls::server_config`) must finish within
/// [`ProxyConfig::tls_handshake_timeout`](super::ProxyConfig).
pub async fn serve_tls(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    accept_loop(listener, proxy, Some(TlsAcceptor::from(tls)), shutdown).await;
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
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
                    let scheme = if tls.is_some() { Scheme::Https } else { Scheme::Http };
                    let conn = ConnInfo { peer, local, scheme };
                    conns.spawn(accept_one(stream, conn, proxy.clone(), tls.clone(), stop_rx.clone()));
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

/// One accepted connection: the TLS handshake if any, then HTTP.
async fn accept_one(
    stream: TcpStream,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let Some(acceptor) = tls else {
        return serve_connection(stream, conn, proxy, stop).await;
    };
    let handshake =
        tokio::time::timeout(proxy.config.tls_handshake_timeout, acceptor.accept(stream)).await;
    let ok = matches!(handshake, Ok(Ok(_)));
    if let Some(metrics) = &proxy.metrics {
        metrics.tls_handshake(ok);
    }
    match handshake {
        Ok(Ok(stream)) => serve_connection(stream, conn, proxy, stop).await,
        Ok(Err(e)) => debug!(peer = %conn.peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(peer = %conn.peer, "TLS handshake timed out"),
    }
}

/// Whether a connection moves bytes, and how many of its requests are
/// being answered: idle means neither for [`ProxyConfig::idle_timeout`](super::ProxyConfig).
///
/// Reads and writes only bump a counter; the connection's timer compares it
/// between ticks. A clock read per read and write cost more than the whole
/// idle check.
#[derive(Debug, Default)]
struct Activity {
    /// Reads and writes that moved bytes, and requests that ended.
    moves: AtomicU64,
    active: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// One request being answered on a connection; dropped with its response
/// body.
#[derive(Debug)]
struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A client byte stream that records when it last moved bytes.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a client connection in the metrics while it is open.
struct ConnectionGauge(Arc<Proxy>);

impl ConnectionGauge {
    fn open(proxy: &Arc<Proxy>) -> Self {
        if let Some(m) = &proxy.metrics {
            m.connection(1);
        }
        ConnectionGauge(proxy.clone())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        if let Some(m) = &self.0.metrics {
            m.connection(-1);
        }
    }
}

/// Serves one client connection (plain TCP or TLS) until it closes, until
/// it has been idle for [`ProxyConfig::idle_timeout`](super::ProxyConfig),
/// or, once `shutdown` turns true, until its in-flight requests are done.
pub async fn serve_connection<I>(
    io: I,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _gauge = ConnectionGauge::open(&proxy);
    let activity = Arc::new(Activity::default());
    let io = Tracked {
        inner: io,
        activity: activity.clone(),
    };
    let service_proxy = proxy.clone();
    let service_activity = activity.clone();
    let service = service_fn(move |req| {
        let proxy = service_proxy.clone();
        let guard = service_activity.enter();
        async move {
            let mut resp = proxy.handle(req, conn).await;
            resp.body_mut().on_end(Box::new(guard));
            Ok::<_, Infallible>(resp)
        }
    });
    let connection = proxy
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // The guard `wait_for` returns is not `Send`: drop it inside.
    let stop = async move {
        let _ = shutdown.wait_for(|&stop| stop).await.map(drop);
    };
    tokio::pin!(stop);
    let idle_timeout = proxy.config.idle_timeout;
    // Checked a few times per timeout: a connection closes between 1 and
    // 1.5 timeouts after it went quiet (the first quiet tick may come a
    // quarter late).
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_moves = 0;
    let mut quiet_since = Instant::now();
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = &mut stop, if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            now = tick.tick(), if !closing => {
                let moves = activity.moves.load(Ordering::Relaxed);
                if moves != seen_moves || activity.active.load(Ordering::Relaxed) > 0 {
                    seen_moves = moves;
                    quiet_since = now.into_std();
                } else if now.into_std().duration_since(quiet_since) >= idle_timeout {
                    debug!(peer = %conn.peer, "closing idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(peer = %conn.peer, error = %error_chain(&*e), "client connection ended with an error");
    }
}
