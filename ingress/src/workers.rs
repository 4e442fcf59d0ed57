//! Serving threads: one single-threaded tokio runtime per worker, each
//! accepting on the same listening sockets (file descriptors duplicated
//! into every worker's reactor) and serving the connections it accepted
//! from start to end.
//!
//! Why not one multi-threaded runtime: a proxied request wakes three tasks
//! (client connection, upstream connection, the request), and the
//! work-stealing scheduler paid for that in atomics and cross-thread
//! wake-ups on every request. Here a connection, the upstream connections
//! it borrows (the upstream pool is sharded by thread) and its requests
//! stay on one thread, as nginx's workers do. The control plane (manifest
//! watcher, reloads, admin server) runs on the main thread's runtime.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use gangplank_ingress::proxy::{self, Proxy};
use tokio::sync::{oneshot, watch};

/// The running workers.
pub struct Workers {
    threads: Vec<(JoinHandle<()>, oneshot::Receiver<()>)>,
}

/// What every worker serves.
pub struct Listeners {
    /// Plain HTTP.
    pub http: std::net::TcpListener,
    /// HTTPS.
    pub https: std::net::TcpListener,
    /// The TLS settings for `https`.
    pub tls: Arc<rustls::ServerConfig>,
}

impl Workers {
    /// Starts `count` workers serving `listeners` with `proxy` until `stop`
    /// turns true. Fails if a worker's runtime cannot start; then the
    /// workers already started are stopped by the caller's `stop`.
    pub fn start(
        count: usize,
        listeners: &Listeners,
        proxy: &Arc<Proxy>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Workers> {
        let mut threads = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let http = listeners
                .http
                .try_clone()
                .context("sharing the HTTP listener with a worker")?;
            let https = listeners
                .https
                .try_clone()
                .context("sharing the HTTPS listener with a worker")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker's runtime")?;
            let (proxy, tls, stop) = (proxy.clone(), listeners.tls.clone(), stop.clone());
            let (done_tx, done_rx) = oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("ingress-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let (http, https) = match (
                            tokio::net::TcpListener::from_std(http),
                            tokio::net::TcpListener::from_std(https),
                        ) {
                            (Ok(http), Ok(https)) => (http, https),
                            (Err(e), _) | (_, Err(e)) => {
                                tracing::error!(worker = index, error = %e, "worker cannot serve its listeners");
                                return;
                            }
                        };
                        tokio::join!(
                            proxy::serve(http, proxy.clone(), stopped(stop.clone())),
                            proxy::serve_tls(https, proxy.clone(), tls, stopped(stop)),
                        );
                    });
                    let _ = done_tx.send(());
                })
                .context("starting a worker thread")?;
            threads.push((thread, done_rx));
        }
        Ok(Workers { threads })
    }

    /// Waits until every worker has finished (after `stop`).
    pub async fn join(self) {
        for (thread, done) in self.threads {
            // An error means the worker panicked before signalling; the
            // thread is over either way.
            let _ = done.await;
            let _ = thread.join();
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await.map(drop);
}

/// A listening socket, non-blocking as the workers' reactors need it.
pub fn bind(addr: std::net::SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the {what} listener on {addr}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("making the {what} listener on {addr} non-blocking"))?;
    Ok(listener)
}
