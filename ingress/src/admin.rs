//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (initial configuration applied and
//! listeners serving), on the agent's small HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use gangplank::http::{self, Handler};
use gangplank_ingress::metrics::IngressMetrics;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Admin {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Admin {
    pub async fn start(addr: SocketAddr, metrics: Arc<IngressMetrics>) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        let handler: Handler = Arc::new(move |req| match req.uri().path() {
            "/metrics" => {
                let mut resp = Response::new(Full::new(metrics.encode().into()));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/healthz" => http::text(StatusCode::OK, "ok\n"),
            "/readyz" if metrics.is_ready() => http::text(StatusCode::OK, "ready\n"),
            "/readyz" => http::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(http::serve(listener, handler, stop_rx));
        Ok(Admin { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}
