//! Header rewriting tests: hop-by-hop removal, forwarded headers, CIDRs.

use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).map(|v| v.to_str().expect("ascii"))
}

#[test]
fn strips_hop_by_hop_and_listed_headers() {
    let mut h = map(&[
        ("connection", "keep-alive, X-Secret"),
        ("connection", "x-other"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
        ("trailer", "x-checksum"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("x-secret", "1"),
        ("x-other", "2"),
        ("x-kept", "3"),
        ("host", "a.example"),
    ]);
    let upgrade = strip_hop_by_hop(&mut h);
    assert_eq!(
        upgrade, None,
        "no upgrade token in Connection: expected none"
    );
    let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["host", "x-kept"], "expected only end-to-end headers");
}

#[test]
fn keeps_te_trailers_only() {
    let mut h = map(&[("te", "gzip, trailers;q=1")]);
    strip_hop_by_hop(&mut h);
    assert_eq!(get(&h, "te"), Some("trailers"));
    let mut h = map(&[("te", "gzip")]);
    strip_hop_by_hop(&mut h);
    assert_eq!(get(&h, "te"), None);
}

#[test]
fn reports_upgrade_only_with_the_connection_token() {
    let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
    assert_eq!(
        strip_hop_by_hop(&mut h).as_ref().map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert!(h.get("upgrade").is_none() && h.get("connection").is_none());
    let mut h = map(&[("upgrade", "websocket")]);
    assert_eq!(
        strip_hop_by_hop(&mut h),
        None,
        "Upgrade without Connection: upgrade is not an upgrade request"
    );
}

#[test]
fn cidr_parse_and_contains() {
    let net: Cidr = "10.1.0.0/16".parse().expect("valid");
    assert!(net.contains("10.1.200.3".parse().expect("ip")));
    assert!(!net.contains("10.2.0.1".parse().expect("ip")));
    assert!(
        net.contains("::ffff:10.1.0.9".parse().expect("ip")),
        "an IPv4-mapped peer must match an IPv4 network"
    );
    let host: Cidr = "192.0.2.7".parse().expect("valid");
    assert!(host.contains("192.0.2.7".parse().expect("ip")));
    assert!(!host.contains("192.0.2.8".parse().expect("ip")));
    let all: Cidr = "0.0.0.0/0".parse().expect("valid");
    assert!(all.contains("203.0.113.1".parse().expect("ip")));
    let v6: Cidr = "2001:db8::/32".parse().expect("valid");
    assert!(v6.contains("2001:db8:1::1".parse().expect("ip")));
    assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
    for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129", "10.0.0.0/"] {
        assert!(
            bad.parse::<Cidr>().is_err(),
            "expected {bad:?} to be rejected"
        );
    }
}

fn client(peer: &str) -> (SocketAddr, HeaderValue) {
    (
        peer.parse().expect("addr"),
        HeaderValue::from_static("a.example:8080"),
    )
}

#[test]
fn untrusted_peer_replaces_everything() {
    let mut h = map(&[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "1"),
    ]);
    let (peer, host) = client("198.51.100.4:40000");
    let c = Client {
        peer,
        proto: "http",
        host: &host,
        port: 8080,
    };
    set_forwarded(&mut h, c, &[]);
    assert_eq!(get(&h, "x-forwarded-for"), Some("198.51.100.4"));
    assert_eq!(get(&h, "x-real-ip"), Some("198.51.100.4"));
    assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
    assert_eq!(get(&h, "x-forwarded-host"), Some("a.example:8080"));
    assert_eq!(get(&h, "x-forwarded-port"), Some("8080"));
}

#[test]
fn trusted_peer_appends_and_finds_the_real_client() {
    let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("cidr")];
    let mut h = map(&[
        ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
        ("x-forwarded-for", "10.0.0.5"),
        ("x-forwarded-proto", "https"),
    ]);
    let (peer, host) = client("10.0.0.2:1234");
    let c = Client {
        peer,
        proto: "http",
        host: &host,
        port: 80,
    };
    set_forwarded(&mut h, c, &trusted);
    assert_eq!(
        get(&h, "x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.9, 10.0.0.5, 10.0.0.2")
    );
    assert_eq!(
        get(&h, "x-real-ip"),
        Some("203.0.113.9"),
        "expected the rightmost untrusted hop, not the client-supplied 6.6.6.6"
    );
    assert_eq!(
        get(&h, "x-forwarded-proto"),
        Some("https"),
        "kept from the trusted proxy"
    );
    assert_eq!(get(&h, "x-forwarded-port"), Some("80"), "set when absent");
}

#[test]
fn trusted_peer_without_header_is_the_client() {
    let trusted: Vec<Cidr> = vec!["127.0.0.0/8".parse().expect("cidr")];
    let mut h = HeaderMap::new();
    let (peer, host) = client("127.0.0.1:1");
    let c = Client {
        peer,
        proto: "https",
        host: &host,
        port: 443,
    };
    set_forwarded(&mut h, c, &trusted);
    assert_eq!(get(&h, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(get(&h, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
}

#[test]
fn joins_h2_cookie_crumbs() {
    let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
    join_cookies(&mut h);
    assert_eq!(h.get_all("cookie").iter().count(), 1);
    assert_eq!(get(&h, "cookie"), Some("a=1; b=2"));
}
