//! The `gangplank-ingress` proxy end to end: real clients (curl, openssl
//! s_client, gp-http's gRPC, WebSocket and load clients) in the client
//! namespace talk to the proxy on node-a's address, which proxies to gp-http
//! upstreams in pods:
//!
//! ```text
//! client 198.18.0.100 ── lan ── node-a 198.18.0.10 (gangplank-ingress :80 :443 :10254)
//!                                 ├── pod-a1 198.19.1.10 (gp-http)
//!                                 └── pod-a2 198.19.1.11 (gp-http, or nothing listening)
//! ```
//!
//! No agent runs: EndpointSlices list pod IPs, which the node reaches over
//! its bridge. Every test builds its own cluster (removed on drop, also on
//! failure). Need root; run `cargo build --workspace` first (they start
//! target/debug/gangplank-ingress and gp-http).

use std::time::{Duration, Instant};

use gangplank_tests::ingress::{
    metric_sum, tls_secret, tls_secret_raw, CurlResponse, Env, Ingress, DEFAULT_CERT_CN,
    METRICS_PORT,
};
use serde_json::Value;

/// The port every gp-http upstream listens on, unless a test needs several.
const UP: u16 = 8080;
/// Service port of every Service.
const SVC_PORT: u16 = 80;
/// "Changes apply within 1 s" (the proxy's contract), plus slack for CI.
const RELOAD: Duration = Duration::from_millis(1500);

fn env(test: &str, pods: &[&str]) -> Env {
    Env::new(test, pods).expect("building the simulated cluster")
}

fn ok<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Service `name` → pods' `port`.
fn write_service(e: &Env, name: &str, pods: &[&str], port: u16) {
    let ips: Vec<_> = pods.iter().map(|p| e.pod_ip(p)).collect();
    ok(
        e.write(
            &format!("svc-{name}.yaml"),
            &gangplank_tests::ingress::service("default", name, SVC_PORT, port, &ips),
        ),
        "writing a Service",
    );
}

fn write_ingress(e: &Env, ing: &Ingress, file: &str) {
    ok(e.write(file, &[ing.to_yaml()]), "writing an Ingress");
}

fn curl(e: &Env, url: &str, extra: &[&str]) -> CurlResponse {
    e.curl(url, extra)
        .unwrap_or_else(|err| panic!("{err:#}\n--- proxy log ---\n{}", tail(&e.proxy_log(), 3000)))
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Waits until the proxy's whole log (also lines before `ingress ready`)
/// contains `needle`.
fn wait_log(e: &Env, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !e.proxy_log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "expected the proxy to log {needle:?} within {timeout:?}; its log:\n{}",
            tail(&e.proxy_log(), 4000)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// node-a with pod-a1 running gp-http `web`, Service `web`, and two TLS
/// Secrets: `cert-a` (a.example.com) and `cert-wild` (*.example.com).
fn tls_env(test: &str) -> Env {
    let mut e = env(test, &["pod-a1"]);
    ok(e.upstream("pod-a1", "web", UP), "starting gp-http");
    write_service(&e, "web", &["pod-a1"], UP);
    let a = ok(e.ca.issue("cert-a", &["a.example.com"]), "issuing cert-a");
    let wild = ok(
        e.ca.issue("cert-wild", &["*.example.com"]),
        "issuing cert-wild",
    );
    ok(
        e.write(
            "secrets.yaml",
            &[
                tls_secret("default", "cert-a", &a),
                tls_secret("default", "cert-wild", &wild),
            ],
        ),
        "writing Secrets",
    );
    e
}

// -- routing -----------------------------------------------------------------

/// Kubernetes host and path semantics
/// (<https://kubernetes.io/docs/concepts/services-networking/ingress/#examples>):
/// exact host beats `*.example.com`, which matches exactly one label; the
/// docs' path table (Exact/Prefix/ImplementationSpecific, element-wise
/// prefixes, longest match, Exact beats Prefix on a tie); the default
/// backend for unmatched hosts and paths; 503 for a Service without
/// endpoints; 404 once no default backend is left.
#[test]
fn routes_by_host_and_path() {
    let mut e = env("ing-routing", &["pod-a1"]);
    let backends = [
        "exact-host",
        "wildcard",
        "exact-foo",
        "prefix-foo",
        "prefix-aaa",
        "prefix-aaa-bbb",
        "prefix-bar",
        "exact-baz",
        "impl",
        "root",
        "default-be",
    ];
    for (i, name) in backends.iter().enumerate() {
        let port = 8001 + i as u16;
        ok(e.upstream("pod-a1", name, port), "starting gp-http");
        write_service(&e, name, &["pod-a1"], port);
    }
    write_service(&e, "empty", &[], UP);

    let hosts = Ingress::new("default", "hosts")
        .host("a.example.com", "exact-host", SVC_PORT)
        .host("*.example.com", "wildcard", SVC_PORT);
    let h = "paths.example.com";
    let paths = Ingress::new("default", "paths")
        .path(h, "/foo", "Exact", "exact-foo", SVC_PORT)
        .path(h, "/foo", "Prefix", "prefix-foo", SVC_PORT)
        .path(h, "/aaa", "Prefix", "prefix-aaa", SVC_PORT)
        .path(h, "/aaa/bbb", "Prefix", "prefix-aaa-bbb", SVC_PORT)
        .path(h, "/bar/", "Prefix", "prefix-bar", SVC_PORT)
        .path(h, "/baz/", "Exact", "exact-baz", SVC_PORT)
        .path(h, "/impl", "ImplementationSpecific", "impl", SVC_PORT)
        .path(h, "/", "Prefix", "root", SVC_PORT);
    let noroot = Ingress::new("default", "noroot").path(
        "noroot.example.com",
        "/aaa",
        "Prefix",
        "prefix-aaa",
        SVC_PORT,
    );
    let empty = Ingress::new("default", "empty").host("empty.example.com", "empty", SVC_PORT);
    let fallback = Ingress::new("default", "fallback").default_backend("default-be", SVC_PORT);
    write_ingress(&e, &hosts, "ing-hosts.yaml");
    write_ingress(&e, &paths, "ing-paths.yaml");
    write_ingress(&e, &noroot, "ing-noroot.yaml");
    write_ingress(&e, &empty, "ing-empty.yaml");
    write_ingress(&e, &fallback, "ing-fallback.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    let cases: &[(&str, &str, &str)] = &[
        // Hosts.
        ("a.example.com", "/", "exact-host"),
        ("a.example.com", "/anything/else", "exact-host"),
        ("b.example.com", "/", "wildcard"),
        ("zz-9.example.com", "/x", "wildcard"),
        ("x.y.example.com", "/", "default-be"),
        ("example.com", "/", "default-be"),
        ("unknown.org", "/", "default-be"),
        // The docs' path table.
        (h, "/foo", "exact-foo"),
        (h, "/foo?q=1", "exact-foo"),
        (h, "/foo/", "prefix-foo"),
        (h, "/foo/x", "prefix-foo"),
        (h, "/foobar", "root"),
        (h, "/aaa/bbb", "prefix-aaa-bbb"),
        (h, "/aaa/bbb/", "prefix-aaa-bbb"),
        (h, "/aaa/bbb/ccc", "prefix-aaa-bbb"),
        (h, "/aaa/bbbxyz", "prefix-aaa"),
        (h, "/aaa/ccc", "prefix-aaa"),
        (h, "/bar", "prefix-bar"),
        (h, "/bar/", "prefix-bar"),
        (h, "/baz/", "exact-baz"),
        (h, "/baz", "root"),
        (h, "/impl/x", "impl"),
        (h, "/ccc", "root"),
        (h, "/", "root"),
        // A host with rules but no matching path: the default backend.
        ("noroot.example.com", "/aaa/x", "prefix-aaa"),
        ("noroot.example.com", "/ccc", "default-be"),
    ];
    let mut wrong = Vec::new();
    for (host, path, want) in cases {
        let r = curl(&e, &format!("http://{host}{path}"), &[]);
        let echo = r.echo();
        if r.status != 200 || r.served_by() != *want {
            wrong.push(format!(
                "{host}{path}: want 200 from {want}, got {}",
                r.summary()
            ));
        } else if echo["path"] != *path || echo["host"] != *host {
            wrong.push(format!(
                "{host}{path}: upstream saw host {} path {} (want them unchanged)",
                echo["host"], echo["path"]
            ));
        }
    }
    // Hosts compare case-insensitively (RFC 9110 §4.2.3).
    let r = curl(&e, "http://a.example.com/", &["-H", "Host: A.Example.COM"]);
    if r.served_by() != "exact-host" {
        wrong.push(format!(
            "Host A.Example.COM: want exact-host, got {}",
            r.summary()
        ));
    }
    let r = curl(&e, "http://empty.example.com/", &[]);
    if r.status != 503 {
        wrong.push(format!(
            "empty.example.com (no endpoints): want 503, got {}",
            r.summary()
        ));
    }
    assert!(
        wrong.is_empty(),
        "{} of {} routing checks failed:\n  {}\n--- proxy log ---\n{}",
        wrong.len(),
        cases.len() + 2,
        wrong.join("\n  "),
        tail(&e.proxy_log(), 3000)
    );

    // Without the catch-all, unknown hosts and unmatched paths get 404.
    ok(
        e.remove("ing-fallback.yaml"),
        "removing the fallback Ingress",
    );
    let (r, took) = e.curl_until("http://unknown.org/", &[], RELOAD, |r| r.status == 404);
    let r = ok(r, "curl unknown.org");
    assert_eq!(
        r.status,
        404,
        "unknown host without any default backend: want 404 within {RELOAD:?}, got {} after {took:?}",
        r.summary()
    );
    let r = curl(&e, "http://noroot.example.com/ccc", &[]);
    assert_eq!(
        r.status,
        404,
        "unmatched path without default backend: {}",
        r.summary()
    );
    let r = curl(&e, "http://a.example.com/", &[]);
    assert_eq!(
        r.served_by(),
        "exact-host",
        "other routes unchanged: {}",
        r.summary()
    );
}

/// An invalid path, an Ingress of another class and a valid Ingress side by
/// side: the valid ones (and the valid path of the broken one) are served,
/// the error names the broken Ingress.
#[test]
fn broken_ingress_does_not_stop_the_others() {
    let mut e = env("ing-broken", &["pod-a1"]);
    ok(e.upstream("pod-a1", "web", UP), "starting gp-http");
    write_service(&e, "web", &["pod-a1"], UP);
    let good = Ingress::new("default", "good").host("good.example.com", "web", SVC_PORT);
    let broken = Ingress::new("default", "broken")
        .path("broken.example.com", "/ok", "Prefix", "web", SVC_PORT)
        .path(
            "broken.example.com",
            "no-leading-slash",
            "Prefix",
            "web",
            SVC_PORT,
        );
    let foreign = Ingress::new("default", "foreign")
        .class(Some("nginx"))
        .host("foreign.example.com", "web", SVC_PORT);
    write_ingress(&e, &good, "good.yaml");
    write_ingress(&e, &broken, "broken.yaml");
    write_ingress(&e, &foreign, "foreign.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    wait_log(&e, "Ingress default/broken", Duration::from_secs(3));
    let r = curl(&e, "http://good.example.com/", &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "web"),
        "good Ingress: {}",
        r.summary()
    );
    let r = curl(&e, "http://broken.example.com/ok", &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "web"),
        "the valid path of the broken Ingress: {}",
        r.summary()
    );
    let r = curl(&e, "http://broken.example.com/no-leading-slash", &[]);
    assert_eq!(
        r.status,
        404,
        "the invalid path must not be served: {}",
        r.summary()
    );
    let r = curl(&e, "http://foreign.example.com/", &[]);
    assert_eq!(
        r.status,
        404,
        "an Ingress of class nginx must not be served: {}",
        r.summary()
    );

    // Breaking it later keeps the rest too (one reload with an error).
    let worse = Ingress::new("default", "good2")
        .path("good2.example.com", "/", "Prefix", "web", SVC_PORT)
        .path("good2.example.com", "/a/../b", "Prefix", "web", SVC_PORT);
    write_ingress(&e, &worse, "good2.yaml");
    let (r, took) = e.curl_until("http://good2.example.com/", &[], RELOAD, |r| {
        r.status == 200
    });
    let r = ok(r, "curl good2");
    assert_eq!(
        r.status,
        200,
        "new Ingress with one bad path not served after {took:?}: {}",
        r.summary()
    );
    wait_log(&e, "Ingress default/good2", Duration::from_secs(2));
    let r = curl(&e, "http://good.example.com/", &[]);
    assert_eq!(
        r.status,
        200,
        "good Ingress after the reload: {}",
        r.summary()
    );
}

// -- TLS -----------------------------------------------------------------------

/// The certificate for each SNI: the exact host's, the wildcard's for one
/// extra label, the default certificate for anything else and for no SNI. A
/// missing and an invalid Secret are named in the log while every other
/// host keeps working.
#[test]
fn serves_the_certificate_for_each_sni() {
    let mut e = tls_env("ing-sni");
    ok(
        e.write(
            "garbage.yaml",
            &[tls_secret_raw(
                "default",
                "garbage-secret",
                b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
                b"not a key",
            )],
        ),
        "writing the garbage Secret",
    );
    let tls = Ingress::new("default", "tls")
        .host("a.example.com", "web", SVC_PORT)
        .host("*.example.com", "web", SVC_PORT)
        .tls(&["a.example.com"], "cert-a")
        .tls(&["*.example.com"], "cert-wild");
    let missing = Ingress::new("default", "missing")
        .host("m.other.org", "web", SVC_PORT)
        .tls(&["m.other.org"], "absent-secret");
    let invalid = Ingress::new("default", "invalid")
        .host("i.other.org", "web", SVC_PORT)
        .tls(&["i.other.org"], "garbage-secret");
    write_ingress(&e, &tls, "tls.yaml");
    write_ingress(&e, &missing, "missing.yaml");
    write_ingress(&e, &invalid, "invalid.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    for (sni, want) in [
        (Some("a.example.com"), "cert-a"),
        (Some("b.example.com"), "cert-wild"),
        (Some("B.EXAMPLE.COM"), "cert-wild"),
        (Some("x.y.example.com"), DEFAULT_CERT_CN),
        (Some("example.com"), DEFAULT_CERT_CN),
        (Some("unknown.org"), DEFAULT_CERT_CN),
        (None, DEFAULT_CERT_CN),
    ] {
        let got = e
            .served_cert(sni)
            .unwrap_or_else(|err| panic!("SNI {sni:?}: {err:#}\n{}", tail(&e.proxy_log(), 3000)));
        assert_eq!(got.cn, want, "certificate for SNI {sni:?}: {got:?}");
    }
    wait_log(&e, "absent-secret", Duration::from_secs(3));
    wait_log(&e, "garbage-secret", Duration::from_secs(3));

    // Verified against the CA by curl: names match, the chain is right.
    for host in ["a.example.com", "b.example.com"] {
        let r = curl(&e, &format!("https://{host}/"), &[]);
        assert_eq!(
            (r.status, r.served_by()),
            (200, "web"),
            "https://{host}/: {}",
            r.summary()
        );
    }
}

/// HTTP → HTTPS 308 (path and query kept) for a host with `spec.tls`; none
/// with `gangplank.io/ssl-redirect: "false"` or without TLS.
#[test]
fn redirects_http_to_https_for_tls_hosts() {
    let mut e = tls_env("ing-redirect");
    let secure = Ingress::new("default", "secure")
        .host("a.example.com", "web", SVC_PORT)
        .tls(&["a.example.com"], "cert-a");
    let opt_out = Ingress::new("default", "opt-out")
        .annotation("gangplank.io/ssl-redirect", "false")
        .host("n.example.com", "web", SVC_PORT)
        .tls(&["n.example.com"], "cert-wild");
    let plain = Ingress::new("default", "plain").host("p.example.com", "web", SVC_PORT);
    write_ingress(&e, &secure, "secure.yaml");
    write_ingress(&e, &opt_out, "opt-out.yaml");
    write_ingress(&e, &plain, "plain.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    let r = curl(&e, "http://a.example.com/x/y?q=1&r=2", &[]);
    assert_eq!(r.status, 308, "http://a.example.com: {}", r.summary());
    assert_eq!(
        r.header("location"),
        Some("https://a.example.com/x/y?q=1&r=2"),
        "redirect target"
    );
    assert_eq!(
        r.served_by(),
        "-",
        "the redirect must not reach the upstream"
    );
    let r = curl(&e, "https://a.example.com/x/y?q=1", &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "web"),
        "https: {}",
        r.summary()
    );

    for url in ["http://n.example.com/z", "http://p.example.com/z"] {
        let r = curl(&e, url, &[]);
        assert_eq!(
            (r.status, r.served_by()),
            (200, "web"),
            "{url} (no redirect): {}",
            r.summary()
        );
        assert_eq!(r.echo()["headers"]["x-forwarded-proto"], "http", "{url}");
    }
}

/// X-Forwarded-For and X-Real-IP carry the client namespace's address (a
/// client's own X-Forwarded-For is not trusted without --trusted-proxies),
/// X-Forwarded-Proto the scheme.
#[test]
fn forwarded_headers_name_the_client() {
    let mut e = tls_env("ing-xff");
    let tls = Ingress::new("default", "tls")
        .host("a.example.com", "web", SVC_PORT)
        .tls(&["a.example.com"], "cert-a");
    write_ingress(&e, &tls, "tls.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");
    let client = e.client_ip().to_string();

    let r = curl(&e, "https://a.example.com/h", &[]);
    let h = &r.echo()["headers"];
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        h["x-forwarded-for"],
        client.as_str(),
        "X-Forwarded-For: {h}"
    );
    assert_eq!(h["x-real-ip"], client.as_str(), "X-Real-IP: {h}");
    assert_eq!(h["x-forwarded-proto"], "https", "X-Forwarded-Proto: {h}");

    let r = curl(
        &e,
        "https://a.example.com/h",
        &[
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "X-Real-IP: 203.0.113.9",
        ],
    );
    let h = &r.echo()["headers"];
    assert_eq!(
        h["x-real-ip"],
        client.as_str(),
        "a spoofed X-Real-IP must be replaced: {h}"
    );
    let xff = h["x-forwarded-for"].as_str().unwrap_or("");
    assert_eq!(
        xff.rsplit(',').next().map(str::trim),
        Some(client.as_str()),
        "X-Forwarded-For must end with the real client: {h}"
    );
}

// -- protocols -------------------------------------------------------------------

/// HTTP/2 to the proxy over TLS (ALPN) and as h2c prior knowledge; HTTP/1.1
/// to the upstream by default and h2c with `gangplank.io/backend-protocol: h2c`.
#[test]
fn http2_to_clients_and_h2c_to_upstreams() {
    let mut e = tls_env("ing-h2");
    let tls = Ingress::new("default", "tls")
        .host("a.example.com", "web", SVC_PORT)
        .tls(&["a.example.com"], "cert-a");
    let h2c = Ingress::new("default", "h2c")
        .annotation("gangplank.io/backend-protocol", "h2c")
        .annotation("gangplank.io/ssl-redirect", "false")
        .host("h2c.example.com", "web", SVC_PORT)
        .tls(&["h2c.example.com"], "cert-wild");
    write_ingress(&e, &tls, "tls.yaml");
    write_ingress(&e, &h2c, "h2c.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("https://a.example.com/", &["--http2"], "2", "HTTP/1.1"),
        ("https://a.example.com/", &["--http1.1"], "1.1", "HTTP/1.1"),
        ("https://h2c.example.com/", &["--http2"], "2", "HTTP/2.0"),
        (
            "https://h2c.example.com/",
            &["--http1.1"],
            "1.1",
            "HTTP/2.0",
        ),
        (
            "http://h2c.example.com/",
            &["--http2-prior-knowledge"],
            "2",
            "HTTP/2.0",
        ),
    ];
    for (url, flags, client_version, upstream_version) in cases {
        let r = curl(&e, url, flags);
        assert_eq!(r.status, 200, "{url} {flags:?}: {}", r.summary());
        assert_eq!(
            r.version, *client_version,
            "{url} {flags:?}: client-side version"
        );
        assert_eq!(
            r.echo()["version"],
            *upstream_version,
            "{url} {flags:?}: upstream-side version"
        );
    }
    // A request body crosses HTTP/2 on both sides intact.
    let body = "x".repeat(100_000);
    let r = curl(
        &e,
        "https://h2c.example.com/upload",
        &["--http2", "--data-binary", &body],
    );
    assert_eq!(r.echo()["body_len"], 100_000, "{}", r.summary());
    let r = curl(&e, "https://a.example.com/bulk/1000000", &["--http2"]);
    assert_eq!(
        r.body.len(),
        1_000_000,
        "bulk body through HTTP/2: {}",
        r.summary()
    );
}

/// gRPC over TLS (ALPN h2) with `gangplank.io/backend-protocol: grpc`: the
/// messages and the trailers (grpc-status 0, the upstream's own trailer)
/// arrive; an unknown method's grpc-status 12 too.
#[test]
fn grpc_through_tls_keeps_trailers() {
    let mut e = tls_env("ing-grpc");
    let grpc = Ingress::new("default", "grpc")
        .annotation("gangplank.io/backend-protocol", "grpc")
        .host("grpc.example.com", "web", SVC_PORT)
        .tls(&["grpc.example.com"], "cert-wild");
    write_ingress(&e, &grpc, "grpc.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    let mut args: Vec<String> = vec!["grpc-call".into()];
    args.extend(e.tls_args("grpc.example.com"));
    args.extend(
        [
            "--authority",
            "grpc.example.com",
            "--message",
            "hello",
            "--message",
            "world",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = e
        .gp_http(&argv)
        .unwrap_or_else(|err| panic!("{err:#}\n--- proxy log ---\n{}", tail(&e.proxy_log(), 3000)));
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["headers"]["content-type"], "application/grpc", "{v}");
    assert_eq!(v["messages"], serde_json::json!(["hello", "world"]), "{v}");
    assert_eq!(
        v["trailers"]["grpc-status"], "0",
        "trailers must arrive: {v}"
    );
    assert_eq!(v["trailers"]["grpc-message"], "ok", "{v}");
    assert_eq!(v["trailers"]["x-served-by-trailer"], "web", "{v}");

    let mut argv2 = argv.clone();
    argv2.extend(["--path", "/gp.test.Echo/Nope"]);
    let v = ok(e.gp_http(&argv2), "gRPC call to an unknown method");
    assert_eq!(
        v["trailers"]["grpc-status"], "12",
        "unimplemented must pass through: {v}"
    );
}

/// WebSocket echo through the proxy (wss and ws), and an open WebSocket
/// keeps working across a reload.
#[test]
fn websocket_echo_survives_a_reload() {
    let mut e = tls_env("ing-ws");
    let ws = Ingress::new("default", "ws")
        .host("ws.example.com", "web", SVC_PORT)
        .tls(&["ws.example.com"], "cert-wild");
    let plain = Ingress::new("default", "plain").host("p.example.com", "web", SVC_PORT);
    write_ingress(&e, &ws, "ws.yaml");
    write_ingress(&e, &plain, "plain.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    let mut wss: Vec<String> = vec!["ws-call".into()];
    wss.extend(e.tls_args("ws.example.com"));
    wss.extend(["--url", "wss://ws.example.com/ws"].map(String::from));
    let mut ws_plain: Vec<String> = vec!["ws-call".into()];
    ws_plain.extend(e.plain_args());
    ws_plain.extend(["--url", "ws://p.example.com/ws"].map(String::from));
    for base in [&wss, &ws_plain] {
        let mut argv: Vec<&str> = base.iter().map(String::as_str).collect();
        argv.extend(["--message", "one", "--message", "two"]);
        let out = ok(e.gp_http_output(&argv), "ws-call");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout == "connected web\necho one\necho two\nclosed\n",
            "ws-call {argv:?}: {}\nstdout {stdout:?}\nstderr {}\n--- proxy log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&e.proxy_log(), 3000)
        );
    }

    // A long-lived session across a reload.
    let argv: Vec<&str> = wss.iter().map(String::as_str).collect();
    let mut session = ok(e.spawn_gp_http(&argv), "starting ws-call");
    let t = Duration::from_secs(5);
    ok(
        session.wait_for_line(|l| l == "connected web", t),
        "WebSocket handshake",
    );
    ok(session.send_line("before"), "sending");
    ok(
        session.wait_for_line(|l| l == "echo before", t),
        "echo before the reload",
    );
    // A host outside *.example.com: the Ingress's wildcard certificate
    // would cover (and so redirect) any new.example.com.
    let more = Ingress::new("default", "ws")
        .host("ws.example.com", "web", SVC_PORT)
        .host("new.other.org", "web", SVC_PORT)
        .tls(&["ws.example.com"], "cert-wild");
    write_ingress(&e, &more, "ws.yaml");
    let (r, took) = e.curl_until("http://new.other.org/", &[], RELOAD, |r| r.status == 200);
    let r = ok(r, "curl new.other.org");
    assert_eq!(
        r.status,
        200,
        "the reload was not applied within {took:?}: {}",
        r.summary()
    );
    ok(session.send_line("after"), "sending after the reload");
    session
        .wait_for_line(|l| l == "echo after", t)
        .unwrap_or_else(|err| {
            panic!(
                "the WebSocket did not survive the reload: {err:#}\n--- proxy log ---\n{}",
                tail(&e.proxy_log(), 3000)
            )
        });
}

// -- upstreams and reloads ---------------------------------------------------------

/// One of two endpoints has nothing listening: every request (GET over
/// keep-alive, and POSTs, since a refused connect never sent anything)
/// still succeeds, answered by the live one.
#[test]
fn retries_past_a_dead_endpoint() {
    let mut e = env("ing-retry", &["pod-a1", "pod-a2"]);
    ok(e.upstream("pod-a1", "web", UP), "starting gp-http");
    // pod-a2 exists (its address answers ARP) but nothing listens on UP.
    write_service(&e, "flaky", &["pod-a1", "pod-a2"], UP);
    let ing = Ingress::new("default", "flaky").host("flaky.example.com", "flaky", SVC_PORT);
    write_ingress(&e, &ing, "flaky.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    let mut argv: Vec<String> = vec!["load".into()];
    argv.extend(e.plain_args());
    argv.extend(
        [
            "--host",
            "flaky.example.com",
            "--requests",
            "40",
            "--concurrency",
            "2",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let v = ok(e.gp_http(&argv), "gp-http load");
    assert_eq!(
        (v["ok"].as_u64(), v["failed"].as_u64()),
        (Some(40), Some(0)),
        "every GET must succeed with a dead endpoint: {v}\n--- proxy log ---\n{}",
        tail(&e.proxy_log(), 3000)
    );
    assert_eq!(v["served_by"]["web"], 40, "{v}");
    // The dead endpoint was really picked (and the request retried), not
    // silently left out.
    let retried = e
        .proxy()
        .access_log()
        .iter()
        .filter(|l| l["attempts"].as_u64().is_some_and(|a| a >= 2))
        .count();
    assert!(
        retried > 0,
        "no access-log line with attempts >= 2: was the dead endpoint ever tried?"
    );
    for i in 0..6 {
        let r = curl(
            &e,
            &format!("http://flaky.example.com/post{i}"),
            &["-d", "payload"],
        );
        assert_eq!(
            (r.status, r.served_by()),
            (200, "web"),
            "POST {i}: {}",
            r.summary()
        );
        assert_eq!(
            r.echo()["body_len"],
            7,
            "POST {i}: body must arrive once, whole"
        );
    }
}

/// While 1,000 keep-alive HTTPS requests run, a route is added, the
/// endpoints change and the certificate Secret is rotated: no request fails,
/// and each change is served within about a second.
#[test]
fn reloads_under_load_without_errors() {
    let mut e = env("ing-reload", &["pod-a1", "pod-a2"]);
    ok(e.upstream("pod-a1", "web-a1", UP), "starting gp-http");
    ok(e.upstream("pod-a2", "web-a2", UP), "starting gp-http");
    write_service(&e, "web", &["pod-a1"], UP);
    let v1 = ok(
        e.ca.issue("load-v1", &["load.example.com"]),
        "issuing a certificate",
    );
    let v2 = ok(
        e.ca.issue("load-v2", &["load.example.com"]),
        "issuing a certificate",
    );
    ok(
        e.write("secret.yaml", &[tls_secret("default", "load-cert", &v1)]),
        "writing the Secret",
    );
    let main = Ingress::new("default", "main")
        .host("load.example.com", "web", SVC_PORT)
        .tls(&["load.example.com"], "load-cert");
    write_ingress(&e, &main, "main.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");
    let r = curl(&e, "https://load.example.com/", &[]);
    assert_eq!(
        (r.status, r.served_by()),
        (200, "web-a1"),
        "before the load: {}",
        r.summary()
    );

    let mut argv: Vec<String> = vec!["load".into()];
    argv.extend(e.tls_args("load.example.com"));
    argv.extend(
        [
            "--host",
            "load.example.com",
            "--requests",
            "1000",
            "--concurrency",
            "4",
            "--interval-ms",
            "15",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let load = ok(e.spawn_gp_http(&argv), "starting gp-http load");
    std::thread::sleep(Duration::from_millis(300));

    // 1. A new route.
    let extra = Ingress::new("default", "extra").host("new.example.com", "web", SVC_PORT);
    write_ingress(&e, &extra, "extra.yaml");
    let (r, took_route) = e.curl_until("http://new.example.com/", &[], RELOAD, |r| r.status == 200);
    let r = ok(r, "curl new.example.com");
    assert_eq!(
        r.status,
        200,
        "new route not served after {took_route:?}: {}",
        r.summary()
    );

    // 2. Other endpoints.
    write_service(&e, "web", &["pod-a2"], UP);
    let (r, took_eps) = e.curl_until("https://load.example.com/", &[], RELOAD, |r| {
        r.served_by() == "web-a2"
    });
    let r = ok(r, "curl load.example.com");
    assert_eq!(
        r.served_by(),
        "web-a2",
        "endpoint change not applied after {took_eps:?}: {}",
        r.summary()
    );

    // 3. A rotated certificate.
    ok(
        e.write("secret.yaml", &[tls_secret("default", "load-cert", &v2)]),
        "rotating the Secret",
    );
    let running = load.try_wait().ok().flatten().is_none();
    let start = Instant::now();
    let cn = loop {
        let cn = e
            .served_cert(Some("load.example.com"))
            .map(|c| c.cn)
            .unwrap_or_default();
        if cn == "load-v2" || start.elapsed() >= RELOAD {
            break cn;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took_cert = start.elapsed();
    assert_eq!(
        cn, "load-v2",
        "rotated certificate not served after {took_cert:?}"
    );
    assert!(
        running,
        "the load finished before the last change; the test must change things while it runs"
    );

    let status = load.wait_timeout(Duration::from_secs(60)).ok().flatten();
    let last = load.stdout_lines().last().cloned().unwrap_or_default();
    let v: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    assert!(
        status.is_some_and(|s| s.success())
            && v["ok"] == 1000
            && v["failed"] == 0
            && v["retried"] == 0,
        "1000 requests during three reloads: want 1000 ok, 0 failed, 0 retried on a closed keep-alive connection; got {last} ({status:?})\n{}\n--- proxy log ---\n{}",
        load.output_summary(),
        tail(&e.proxy_log(), 3000)
    );
    assert!(
        v["served_by"]["web-a1"].as_u64() > Some(0) && v["served_by"]["web-a2"].as_u64() > Some(0),
        "the endpoint change must have happened during the load: {v}"
    );
    eprintln!(
        "reload latencies: route {took_route:?}, endpoints {took_eps:?}, certificate {took_cert:?}; load {v}"
    );
}

// -- observability -----------------------------------------------------------------

/// `requests_total` on the metrics endpoint, /healthz and /readyz, and one
/// JSON access-log line per request on stdout with the documented fields.
#[test]
fn metrics_and_access_log() {
    let mut e = env("ing-metrics", &["pod-a1"]);
    ok(e.upstream("pod-a1", "web", UP), "starting gp-http");
    write_service(&e, "web", &["pod-a1"], UP);
    let ing = Ingress::new("default", "web").host("m.example.com", "web", SVC_PORT);
    write_ingress(&e, &ing, "web.yaml");
    ok(e.start_proxy(&[]), "starting gangplank-ingress");

    for _ in 0..3 {
        let r = curl(&e, "http://m.example.com/logged?x=1", &[]);
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    let r = curl(&e, "http://nowhere.example.com/", &[]);
    assert_eq!(r.status, 404, "{}", r.summary());

    let node = e.node_ip();
    let metrics = curl(&e, &format!("http://{node}:{METRICS_PORT}/metrics"), &[]);
    assert_eq!(metrics.status, 200, "{}", metrics.summary());
    let served = metric_sum(
        &metrics.body,
        "gangplank_ingress_requests_total",
        &[("ingress", "default/web"), ("status", "200")],
    );
    assert!(
        served.is_some_and(|n| n >= 3.0),
        "requests_total{{ingress=\"default/web\",status=\"200\"}} should be >= 3, is {served:?}:\n{}",
        metrics.body
    );
    assert!(
        metric_sum(
            &metrics.body,
            "gangplank_ingress_request_duration_seconds_count",
            &[]
        )
        .is_some_and(|n| n >= 4.0),
        "request_duration_seconds histogram:\n{}",
        metrics.body
    );
    assert_eq!(
        metric_sum(&metrics.body, "gangplank_ingress_ready", &[]),
        Some(1.0),
        "ready gauge:\n{}",
        metrics.body
    );
    for path in ["/healthz", "/readyz"] {
        let r = curl(&e, &format!("http://{node}:{METRICS_PORT}{path}"), &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
    }

    // The access log: one line per request, the documented fields.
    let deadline = Instant::now() + Duration::from_secs(2);
    let log = loop {
        let log = e.proxy().access_log();
        let n = log.iter().filter(|l| l["message"] == "request").count();
        if n >= 4 || Instant::now() >= deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines = |host: &str| -> Vec<&Value> { log.iter().filter(|l| l["host"] == host).collect() };
    let ok_lines = lines("m.example.com");
    assert_eq!(
        ok_lines.len(),
        3,
        "one access-log line per request; stdout:\n{log:#?}"
    );
    let l = ok_lines[0];
    for field in [
        "timestamp",
        "level",
        "target",
        "message",
        "method",
        "host",
        "path",
        "status",
        "protocol",
        "client",
        "ingress",
        "service",
        "upstream",
        "duration_ms",
        "upstream_ms",
        "attempts",
    ] {
        assert!(
            l.get(field).is_some(),
            "access-log field {field:?} missing: {l}"
        );
    }
    let client = format!("{}:", e.client_ip());
    let upstream = format!("{}:{UP}", e.pod_ip("pod-a1"));
    assert_eq!(l["message"], "request", "{l}");
    assert_eq!(l["method"], "GET", "{l}");
    assert!(
        l["path"].as_str().is_some_and(|p| p.starts_with("/logged")),
        "path: {l}"
    );
    assert_eq!(l["status"], 200, "{l}");
    assert!(
        l["client"].as_str().is_some_and(|c| c.starts_with(&client)),
        "client: {l}"
    );
    assert_eq!(l["ingress"], "default/web", "{l}");
    assert_eq!(l["service"], "default/web:80", "{l}");
    assert_eq!(l["upstream"], upstream.as_str(), "{l}");
    assert_eq!(l["attempts"], 1, "{l}");
    assert!(
        l["duration_ms"].is_number() && l["upstream_ms"].is_number(),
        "timings: {l}"
    );
    let miss = lines("nowhere.example.com");
    assert!(
        miss.len() == 1 && miss[0]["status"] == 404 && miss[0]["ingress"] == "",
        "the 404 is logged without an Ingress: {miss:?}"
    );
}
