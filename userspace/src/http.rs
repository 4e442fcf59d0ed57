//! The little HTTP/1.1 plumbing shared by the health-check node ports and the
//! metrics endpoint: a connection loop over a tokio listener with a
//! synchronous handler, bounded slow clients, graceful stop, and a runtime on
//! a thread of its own so the agent's loop never waits on a client.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::{debug, warn};

/// Response body type of every handler: the whole body is known up front.
pub type Body = Full<Bytes>;

/// A request handler. Synchronous on purpose: every answer is computed from
/// in-memory state, so there is nothing to await and nothing to cancel.
pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Body> + Send + Sync>;

/// A client must send a complete request head within this time, counted from
/// the start of the connection or the end of the previous response, or the
/// connection is closed: a slow or idle client cannot pin a task forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once per listener; further ones are closed right
/// after accept. Health checkers and scrapers open a handful.
pub const MAX_CONNECTIONS: usize = 128;

/// After a failed accept (EMFILE, ENOBUFS), wait this long before the next
/// one instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A plain-text response.
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serve `handler` on `listener` until `stop` turns true (or its sender is
/// dropped). Returns once the listener is closed; connections still open
/// finish their current request and close (bounded by
/// [`HEADER_READ_TIMEOUT`] for idle ones).
pub async fn serve(listener: TcpListener, handler: Handler, stop: watch::Receiver<bool>) {
    serve_with_timeout(listener, handler, stop, HEADER_READ_TIMEOUT).await
}

async fn serve_with_timeout(
    listener: TcpListener,
    handler: Handler,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(?local, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(?local, %peer, "too many connections; closing a new one");
            continue;
        };
        let handler = handler.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let resp = handler(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let finished = tokio::select! {
                result = conn.as_mut() => Some(result),
                () = stopped(&mut stop) => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    // Finish the request in flight, close when idle.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                debug!(?local, %peer, %error, "connection ended with an error");
            }
        });
    }
    debug!(?local, "listener closed");
}

/// Resolves once `stop` is true or its sender is gone. (Returns `()`, not
/// the `watch::Ref` guard `wait_for` yields, which is not `Send` and must not
/// be held across an await.)
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// A current-thread tokio runtime on a dedicated OS thread. The agent's own
/// loop may be synchronous or run on another runtime: servers are spawned
/// here through [`ServerThread::handle`] and never compete with it.
///
/// Stopping (or dropping) it ends every task it runs, which closes their
/// listeners and connections.
#[derive(Debug)]
pub struct ServerThread {
    handle: Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Start the runtime on a thread called `name`.
    pub fn start(name: &str) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (shutdown, done) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // A current-thread runtime runs its spawned tasks only while
                // something blocks on it: this thread does, until shutdown.
                runtime.block_on(async {
                    let _ = done.await;
                });
                // Dropping the runtime here, outside any async context,
                // cancels the remaining tasks.
            })?;
        Ok(Self {
            handle,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Where to spawn servers.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stop every task and wait for the thread to end.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("HTTP server thread panicked");
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

#[cfg(test)]
pub(crate) mod test_client {
    //! A blocking HTTP/1.1 client just big enough for the servers' tests.

    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// A parsed response: status, lower-cased header names, body.
    #[derive(Debug)]
    pub struct Reply {
        pub status: u16,
        pub headers: BTreeMap<String, String>,
        pub body: String,
    }

    /// `GET path` on a fresh connection (closed after the response).
    pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {raw:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Reply {
            status,
            headers,
            body: body.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    fn hello() -> Handler {
        Arc::new(|req: &Request<Incoming>| {
            text(http::StatusCode::OK, format!("hello {}", req.uri().path()))
        })
    }

    fn start(rt: &ServerThread) -> (std::net::SocketAddr, watch::Sender<bool>) {
        start_with_timeout(rt, HEADER_READ_TIMEOUT)
    }

    fn start_with_timeout(
        rt: &ServerThread,
        timeout: Duration,
    ) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (stop, stopped) = watch::channel(false);
        rt.handle().spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            serve_with_timeout(listener, hello(), stopped, timeout).await;
        });
        (addr, stop)
    }

    #[test]
    fn serves_and_stops() {
        let rt = ServerThread::start("http-test").expect("runtime thread");
        let (addr, stop) = start(&rt);
        let reply = test_client::get(addr, "/x").expect("GET /x");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "hello /x"),
            "{reply:?}"
        );
        stop.send_replace(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{addr} still accepts connections after stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        rt.stop();
    }

    #[test]
    fn stopping_the_thread_closes_listeners() {
        let rt = ServerThread::start("http-test").expect("runtime thread");
        let (addr, _stop) = start(&rt);
        test_client::get(addr, "/").expect("GET / before stop");
        rt.stop();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still accepts connections after the runtime stopped"
        );
    }

    #[test]
    fn keep_alive_connections_are_served_then_closed_on_stop() {
        let rt = ServerThread::start("http-test").expect("runtime thread");
        let (addr, stop) = start(&rt);
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(stream, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).expect("response");
        let first = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(first.ends_with("hello /a"), "first response: {first:?}");
        // The idle keep-alive connection is closed by a graceful stop.
        stop.send_replace(true);
        let n = stream.read(&mut buf).expect("EOF after stop");
        assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
    }

    #[test]
    fn silent_clients_are_disconnected() {
        let rt = ServerThread::start("http-test").expect("runtime thread");
        let (addr, _stop) = start_with_timeout(&rt, Duration::from_millis(200));
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        // Half a request line, then silence.
        write!(stream, "GET /slo").expect("partial request");
        let started = Instant::now();
        let mut buf = [0u8; 512];
        // hyper may answer 408 before closing; either way the connection ends.
        while stream.read(&mut buf).expect("read until close") > 0 {}
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a silent client was kept for {:?}",
            started.elapsed()
        );
    }
}
