//! The upstream pool against a real HTTP/1.1 server that counts its
//! connections and requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{PoolConfig, Protocol, UpstreamClient};
use crate::proxy::body::BodySlot;

/// Connections accepted and requests answered by a test upstream.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// An HTTP/1.1 upstream: `/big` answers 4 MiB, `/empty` 204, anything else
/// a short body.
async fn upstream() -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let resp = match req.uri().path() {
                            "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 4 << 20]))),
                            "/empty" => {
                                let mut r = Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = StatusCode::NO_CONTENT;
                                r
                            }
                            _ => Response::new(Full::new(Bytes::from_static(b"ok"))),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, counts)
}

fn client(idle_timeout: Duration) -> UpstreamClient {
    UpstreamClient::new(PoolConfig {
        connect_timeout: Duration::from_secs(2),
        idle_timeout,
        max_idle_per_endpoint: 8,
    })
}

fn request(method: Method, path: &'static str) -> Request<super::UpstreamBody> {
    let mut req = Request::new(BodySlot::empty().attempt());
    *req.method_mut() = method;
    *req.uri_mut() = Uri::from_static(path);
    req.headers_mut()
        .insert(hyper::header::HOST, "upstream".parse().expect("value"));
    req
}

/// One request, its body read to the end.
async fn fetch(
    client: &UpstreamClient,
    addr: SocketAddr,
    path: &'static str,
) -> (StatusCode, usize) {
    let resp = client
        .send(addr, Protocol::Http1, request(Method::GET, path))
        .await
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.len())
}

#[tokio::test]
async fn a_connection_is_reused_once_its_response_was_read() {
    let (addr, counts) = upstream().await;
    let client = client(Duration::from_secs(60));
    for _ in 0..5 {
        assert_eq!(fetch(&client, addr, "/").await, (StatusCode::OK, 2));
    }
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        1,
        "one keep-alive connection"
    );
    assert_eq!(client.idle_count(addr), 1);
}

#[tokio::test]
async fn an_empty_response_returns_its_connection_at_once() {
    let (addr, counts) = upstream().await;
    let client = client(Duration::from_secs(60));
    for method in [Method::GET, Method::HEAD] {
        let resp = client
            .send(addr, Protocol::Http1, request(method.clone(), "/empty"))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{method}");
        // Never polled, as hyper does not poll an empty body.
        drop(resp);
        assert_eq!(client.idle_count(addr), 1, "{method}: back in the pool");
    }
    let resp = client
        .send(addr, Protocol::Http1, request(Method::HEAD, "/"))
        .await
        .expect("response");
    drop(resp);
    assert_eq!(fetch(&client, addr, "/").await, (StatusCode::OK, 2));
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_dropped_half_way_closes_its_connection() {
    let (addr, counts) = upstream().await;
    let client = client(Duration::from_secs(60));
    let resp = client
        .send(addr, Protocol::Http1, request(Method::GET, "/big"))
        .await
        .expect("response");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(
        first.data_ref().is_some_and(|d| d.len() < 4 << 20),
        "only part of it read"
    );
    drop(body);
    assert_eq!(
        client.idle_count(addr),
        0,
        "not reusable: the rest is unread"
    );
    assert_eq!(fetch(&client, addr, "/").await, (StatusCode::OK, 2));
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
    // Read to the end, the big one is reused.
    assert_eq!(
        fetch(&client, addr, "/big").await,
        (StatusCode::OK, 4 << 20)
    );
    assert_eq!(fetch(&client, addr, "/").await, (StatusCode::OK, 2));
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
}

/// An upstream that answers one request per connection, keep-alive as
/// far as the client can tell, then closes: every pooled connection goes
/// stale.
async fn closing_upstream() -> (SocketAddr, Arc<Counts>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                c.requests.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_without_repeating_the_request() {
    let (addr, counts) = closing_upstream().await;
    let client = client(Duration::from_secs(60));
    for round in 1..=3 {
        assert_eq!(
            fetch(&client, addr, "/").await,
            (StatusCode::OK, 2),
            "round {round}"
        );
        // Blocks the (single-threaded) runtime: the close arrives while
        // the pooled connection's task cannot notice it, so the next
        // request takes it from the pool and only learns it is closed
        // when it tries to use it.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        counts.requests.load(Ordering::SeqCst),
        3,
        "no request sent twice"
    );
    assert_eq!(counts.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_connections_expire() {
    let (addr, counts) = upstream().await;
    let client = client(Duration::from_millis(100));
    assert_eq!(fetch(&client, addr, "/").await, (StatusCode::OK, 2));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fetch(&client, addr, "/").await, (StatusCode::OK, 2));
    assert_eq!(
        counts.connections.load(Ordering::SeqCst),
        2,
        "the expired connection is not used"
    );
    // The sweeper (every second at least) drops the expired one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(client.idle_count(addr), 0);
}

#[tokio::test]
async fn connect_errors_say_nothing_was_sent() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let client = client(Duration::from_secs(60));
    let err = client
        .send(closed, Protocol::Http1, request(Method::POST, "/"))
        .await
        .expect_err("nothing listens");
    assert!(err.is_connect() && !err.is_timeout(), "{err}");
    assert!(err.to_string().contains(&closed.to_string()), "{err}");
}
