//! Per-Ingress options, limits, idle connections, HTTP/2 abuse and the
//! per-request record, through the real accept loop.

use serde_json::json;

use super::*;
use crate::annotations::{BackendProtocol, IngressOptions, LoadBalance};
use crate::metrics::IngressMetrics;
use crate::route::IngressRef;
use crate::tls::CertStore;

/// A TLS store where `a.example` has a `spec.tls` entry (its Secret is
/// missing: the host still counts as a TLS host, as in ingress-nginx).
fn tls_for_a_example() -> Arc<CertStore> {
    let ing: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "site", "namespace": "default"},
        "spec": {"tls": [{"hosts": ["a.example"], "secretName": "missing"}]},
    }))
    .expect("Ingress");
    let (store, _) = CertStore::build([&ing], [], None, None);
    Arc::new(store)
}

fn site_options(options: IngressOptions) -> Arc<crate::FastMap<IngressRef, IngressOptions>> {
    Arc::new(crate::FastMap::from_iter([(
        IngressRef::new("default", "site"),
        options,
    )]))
}

async fn started(
    config: ProxyConfig,
    state: ProxyState,
    metrics: Option<Arc<IngressMetrics>>,
) -> Harness {
    let proxy = Arc::new(Proxy::with_metrics(config, metrics));
    proxy.apply(state);
    Harness::serving(proxy).await
}

/// Upstream `web` behind Ingress default/site: `a.example/` (Prefix) to
/// Service web:80.
async fn site() -> (Upstream, ProxyState) {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    (web, state(table, upstreams))
}

fn state(routes: RouteTable, upstreams: UpstreamTable) -> ProxyState {
    ProxyState {
        routes: Arc::new(routes),
        upstreams: Arc::new(upstreams),
        ..ProxyState::default()
    }
}

#[tokio::test]
async fn tls_hosts_are_redirected_to_https_unless_the_ingress_opts_out() {
    let web = Upstream::start("web").await;
    let table = routes(&[ingress(
        "site",
        &[
            ("a.example", &[("/", "Prefix", "web")]),
            ("b.example", &[("/", "Prefix", "web")]),
        ],
    )]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![web.addr]);
    let mut st = state(table, upstreams);
    st.tls = Some(tls_for_a_example());
    let h = started(ProxyConfig::default(), st.clone(), None).await;

    let resp = raw(h.addr, "POST /x/y?q=1 HTTP/1.1\r\nHost: a.example:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 308"),
        "a TLS host is redirected with 308: {resp}"
    );
    assert!(
        resp.to_ascii_lowercase()
            .contains("location: https://a.example/x/y?q=1\r\n"),
        "to the same host and target over HTTPS: {resp}"
    );
    let (status, body) = get(&http1_client(), h.addr, "b.example", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web"),
        "a host without TLS is proxied"
    );

    st.options = site_options(IngressOptions {
        ssl_redirect: false,
        ..IngressOptions::default()
    });
    h.proxy.apply(st);
    let (status, body) = get(&http1_client(), h.addr, "a.example", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web"),
        "ssl-redirect: false proxies plain HTTP"
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_whether_declared_or_streamed() {
    let (web, st) = site().await;
    let config = ProxyConfig {
        max_body_bytes: 1000,
        ..ProxyConfig::default()
    };
    let h = started(config, st, None).await;

    let resp = raw(h.addr, "POST /echo HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1001\r\nConnection: close\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "declared length over the limit: {resp}"
    );
    assert!(
        web.seen().is_empty(),
        "refused before reaching the upstream"
    );

    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let resp = raw(h.addr, &chunked).await;
    assert!(
        resp.starts_with("HTTP/1.1 413"),
        "streamed body growing past the limit: {resp}"
    );

    let small = format!(
        "POST /echo HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let resp = raw(h.addr, &small).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "a body under the limit passes: {resp}"
    );
    assert!(
        resp.ends_with(&chunk) || resp.contains(&chunk),
        "and is streamed through"
    );
}

#[tokio::test]
async fn oversized_request_heads_are_431() {
    let (_web, st) = site().await;
    let config = ProxyConfig {
        max_header_bytes: 16 << 10,
        ..ProxyConfig::default()
    };
    let h = started(config, st, None).await;
    let big = "v".repeat(20 << 10);
    let resp = raw(
        h.addr,
        &format!("GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "expected 431, got {resp:.200}"
    );
    let fits = "v".repeat(8 << 10);
    let resp = raw(
        h.addr,
        &format!("GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: {fits}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "a head under the limit passes: {resp:.200}"
    );
}

#[tokio::test]
async fn h2c_backend_protocol_speaks_http2_to_the_endpoint() {
    let (web, st) = site().await;
    let mut st = st;
    st.options = site_options(IngressOptions {
        backend_protocol: BackendProtocol::H2c,
        ..IngressOptions::default()
    });
    let h = started(ProxyConfig::default(), st, None).await;
    for _ in 0..3 {
        let (status, body) = get(&http1_client(), h.addr, "a.example", "/x").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "web"));
    }
    let seen = web.last();
    assert_eq!(seen.version, http::Version::HTTP_2, "h2c to the endpoint");
    assert_eq!(
        header(&seen, "host"),
        Some("a.example"),
        "the client's host is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_new_requests_away_from_a_busy_endpoint() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let table = routes(&[ingress("site", &[("a.example", &[("/", "Prefix", "web")])])]);
    let upstreams = UpstreamTable::new().with("default", "web", 80, vec![a.addr, b.addr]);
    let mut st = state(table, upstreams);
    st.options = site_options(IngressOptions {
        load_balance: LoadBalance::LeastRequests,
        ..IngressOptions::default()
    });
    let h = started(ProxyConfig::default(), st, None).await;
    let addr = h.addr;
    // Holds one endpoint busy for 2 s.
    let slow = tokio::spawn(async move { get(&http1_client(), addr, "a.example", "/slow").await });
    let busy = loop {
        if !a.seen().is_empty() {
            break "a";
        }
        if !b.seen().is_empty() {
            break "b";
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client = http1_client();
    for i in 0..10 {
        let (status, body) = get(&client, addr, "a.example", "/fast").await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(
            body, busy,
            "request {i} went to the endpoint with a request in flight"
        );
    }
    let (status, _) = slow.await.expect("slow request");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let (_web, st) = site().await;
    let config = ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let h = started(config, st, None).await;
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the keep-alive connection is closed once idle"
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "after answering the request: {text}"
    );

    // A request that takes longer than the idle timeout is not cut off.
    let (status, body) = get(&http1_client(), h.addr, "a.example", "/slow").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "web"));
}

/// An HTTP/2 frame header.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn http2_stream_limit_is_advertised_and_rapid_reset_gets_goaway() {
    let (web, st) = site().await;
    let config = ProxyConfig {
        max_reset_streams: 10,
        max_concurrent_streams: 17,
        ..ProxyConfig::default()
    };
    let h = started(config, st, None).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // HPACK: :method GET, :scheme http, :path /slow (literal), :authority a.example.
    let mut block = vec![0x82, 0x86, 0x44, 5];
    block.extend_from_slice(b"/slow");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"a.example");
    for i in 0..500u32 {
        let id = 2 * i + 1;
        out.extend(frame(0x1, 0x5, id, &block)); // HEADERS, END_STREAM|END_HEADERS
        out.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    // The server may close while we write: that is the point.
    let _ = stream.write_all(&out).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    // Find a GOAWAY (type 7) frame and its error code.
    let mut pos = 0;
    let mut goaway = None;
    while pos + 9 <= got.len() {
        let len = usize::from(got[pos]) << 16
            | usize::from(got[pos + 1]) << 8
            | usize::from(got[pos + 2]);
        if got[pos + 3] == 0x7 && pos + 9 + 8 <= got.len() {
            let code = &got[pos + 9 + 4..pos + 9 + 8];
            goaway = Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
        }
        pos += 9 + len;
    }
    assert_eq!(
        goaway,
        Some(0xb),
        "expected GOAWAY ENHANCE_YOUR_CALM after a reset flood"
    );
    assert!(
        web.seen().len() < 500,
        "the flood did not all reach the upstream ({} did)",
        web.seen().len()
    );
}

#[tokio::test]
async fn every_request_is_counted_with_its_ingress_service_and_status() {
    let (_web, st) = site().await;
    let metrics = Arc::new(IngressMetrics::new());
    let h = started(ProxyConfig::default(), st, Some(metrics.clone())).await;
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(
            get(&client, h.addr, "a.example", "/big").await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(&client, h.addr, "nowhere.example", "/").await.0,
        StatusCode::NOT_FOUND
    );
    let text = metrics.encode();
    for expected in [
        "gangplank_ingress_requests_total{ingress=\"default/site\",service=\"default/web:80\",status=\"200\"} 3",
        "gangplank_ingress_requests_total{ingress=\"\",service=\"\",status=\"404\"} 1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[tokio::test]
async fn a_client_sending_its_head_too_slowly_is_dropped() {
    let (web, st) = site().await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let h = started(config, st, None).await;
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    // Slowloris: a head that never ends, one byte at a time.
    let started_at = std::time::Instant::now();
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: "
        .iter()
        .cycle()
        .take(100)
    {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the connection was closed while the head trickled in"
    );
    assert!(
        started_at.elapsed() < Duration::from_secs(4),
        "closed after the header read timeout, not at the end of the trickle"
    );
    assert!(web.seen().is_empty(), "nothing reached the upstream");
}
