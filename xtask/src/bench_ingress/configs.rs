//! The one set of routes, certificate and worker count, written for each
//! proxy: Kubernetes manifests for gangplank-ingress, nginx.conf and
//! haproxy.cfg.
//!
//! Routes, as an Ingress for host `bench.example` (TLS) defines them:
//! - `/` (Prefix) → Service `web`;
//! - `/api` (Prefix: `/api` and `/api/...`, not `/apix`) → Service `api`;
//! - `/static/app.js` (Exact) → Service `web`;
//! - another host → 404.
//!
//! Both Services have the same two endpoints (`UPSTREAMS`). Every proxy
//! speaks HTTP/1.1 to them over pooled keep-alive connections and adds
//! X-Forwarded-For/-Proto/-Host.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};

/// The Ingress host, the certificate's name and the load's SNI.
pub const HOST: &str = "bench.example";
/// The endpoints of both Services (loopback addresses of the netns).
pub const UPSTREAMS: [(Ipv4Addr, u16); 2] = [
    (Ipv4Addr::new(127, 0, 0, 1), 8080),
    (Ipv4Addr::new(127, 0, 0, 2), 8080),
];
/// Where every proxy listens for TLS.
pub const HTTPS_ADDR: &str = "127.0.0.1:443";
/// Where every proxy listens for plain HTTP (not measured).
pub const HTTP_ADDR: &str = "127.0.0.1:80";
/// gangplank-ingress's metrics listener.
pub const METRICS_ADDR: &str = "127.0.0.1:10254";

/// The certificate every proxy serves.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate then key, as haproxy's `crt` wants them.
    pub combined: PathBuf,
    /// What it is, for the report.
    pub description: String,
}

/// A self-signed ECDSA P-256 certificate for `HOST` (a server certificate:
/// not a CA, so that rustls accepts it as the pinned end entity).
pub fn certificate(dir: &Path) -> Result<Certificate> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "30", "-subj"])
        .arg(format!("/CN={HOST}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{HOST}"))
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (cargo xtask bench ingress installs it)")?;
    if !status.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    let combined = dir.join("haproxy.pem");
    let pem = std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?;
    std::fs::write(&combined, pem)?;
    Ok(Certificate {
        cert,
        key,
        combined,
        description: format!("self-signed ECDSA P-256 for {HOST}"),
    })
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// gangplank-ingress's view: IngressClass, Secret, Ingress, Services and
/// EndpointSlices in `dir`.
pub fn manifests(dir: &Path, cert: &Certificate) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let class = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: gangplank\n  annotations:\n    ingressclass.kubernetes.io/is-default-class: \"true\"\nspec:\n  controller: gangplank.io/ingress\n".to_string();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-tls\n  namespace: bench\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(&std::fs::read(&cert.cert)?),
        base64(&std::fs::read(&cert.key)?)
    );
    let mut ingress = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: bench\n  namespace: bench\nspec:\n  ingressClassName: gangplank\n  tls:\n  - hosts:\n    - {HOST}\n    secretName: bench-tls\n  rules:\n  - host: {HOST}\n    http:\n      paths:\n"
    );
    for (path, kind, service) in [
        ("/", "Prefix", "web"),
        ("/api", "Prefix", "api"),
        ("/static/app.js", "Exact", "web"),
    ] {
        let _ = write!(
            ingress,
            "      - path: {path}\n        pathType: {kind}\n        backend:\n          service:\n            name: {service}\n            port:\n              name: http\n"
        );
    }
    let mut docs = vec![class, secret, ingress];
    for (i, name) in ["web", "api"].into_iter().enumerate() {
        let port = UPSTREAMS[0].1;
        let svc = Service::cluster_ip("bench", name, Ipv4Addr::new(10, 96, 0, 10 + i as u8)).port(
            "http",
            80,
            "TCP",
            Target::Number(port),
        );
        let mut slice =
            EndpointSlice::new("bench", name, &format!("{name}-abcde")).port("http", port, "TCP");
        for (ip, p) in UPSTREAMS {
            if p != port {
                bail!("the benchmark's upstreams must share one port");
            }
            slice = slice.endpoint(Endpoint::ready(ip, "bench-node"));
        }
        docs.push(svc.to_yaml());
        docs.push(slice.to_yaml());
    }
    manifests::write(dir, "bench.yaml", &docs)
}

/// nginx's version as (major, minor, patch) from `nginx -v`'s text.
fn nginx_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split("nginx/").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// nginx.conf: `worker_processes`, the routes, the certificate, HTTP/2,
/// upstream keep-alive pools, no access log.
pub fn nginx(work: &Path, cert: &Certificate, workers: usize, version: &str) -> String {
    let w = work.display();
    // `http2 on` exists from 1.25.1; before, HTTP/2 is a listen parameter.
    let (listen_h2, http2_on) = match nginx_version(version) {
        Some(v) if v >= (1, 25, 1) => ("", "\n        http2 on;"),
        _ => (" http2", ""),
    };
    let servers: String = UPSTREAMS
        .iter()
        .map(|(ip, port)| format!("        server {ip}:{port};\n"))
        .collect();
    let upstream = |name: &str| {
        format!(
            "    upstream {name} {{\n{servers}        keepalive 128;\n        keepalive_requests 1000000;\n    }}\n"
        )
    };
    let tls = format!(
        "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;{http2_on}",
        cert.cert.display(),
        cert.key.display()
    );
    format!(
        "# Written by cargo xtask bench ingress.
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {w}/nginx-tmp/client_body;
    proxy_temp_path {w}/nginx-tmp/proxy;
    fastcgi_temp_path {w}/nginx-tmp/fastcgi;
    uwsgi_temp_path {w}/nginx-tmp/uwsgi;
    scgi_temp_path {w}/nginx-tmp/scgi;
    # gangplank-ingress and haproxy never close a busy keep-alive
    # connection (nginx's default: after 1000 requests).
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{web}{api}
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    # The headers gangplank-ingress (and ingress-nginx) also send.
    proxy_set_header X-Forwarded-Port $server_port;
    proxy_set_header X-Real-IP $remote_addr;

    server {{
        listen {HTTPS_ADDR} ssl{listen_h2} default_server;
        listen {HTTP_ADDR} default_server;
        server_name _;
{tls}
        return 404;
    }}
    server {{
        listen {HTTPS_ADDR} ssl{listen_h2};
        listen {HTTP_ADDR};
        server_name {HOST};
{tls}
        location / {{
            proxy_pass http://web;
        }}
        location = /api {{
            proxy_pass http://api;
        }}
        location /api/ {{
            proxy_pass http://api;
        }}
        location = /static/app.js {{
            proxy_pass http://web;
        }}
    }}
}}
",
        web = upstream("web"),
        api = upstream("api"),
    )
}

/// haproxy.cfg: `nbthread`, the routes, the certificate with ALPN h2 and
/// http/1.1, connection reuse to the upstreams, no log.
pub fn haproxy(cert: &Certificate, workers: usize) -> String {
    let servers: String = UPSTREAMS
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| format!("    server up-{} {ip}:{port}\n", i + 1))
        .collect();
    let backend = |name: &str| {
        format!("backend {name}\n    balance roundrobin\n    http-reuse always\n{servers}\n")
    };
    format!(
        "# Written by cargo xtask bench ingress.
global
    nbthread {workers}
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-keep-alive 75s

frontend bench
    bind {HTTPS_ADDR} ssl crt {crt} alpn h2,http/1.1
    bind {HTTP_ADDR}
    option forwardfor
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Real-IP %[src]
    acl bench_host req.hdr(host),field(1,:) -i {HOST}
    acl api_path path /api
    acl api_path path_beg /api/
    acl static_path path /static/app.js
    use_backend api if bench_host api_path
    use_backend web if bench_host static_path
    use_backend web if bench_host
    default_backend not_found

{web}{api}backend not_found
    http-request return status 404
",
        crt = cert.combined.display(),
        web = backend("web"),
        api = backend("api"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "base64({plain:?})");
        }
    }

    #[test]
    fn nginx_version_parsed() {
        assert_eq!(
            nginx_version("nginx version: nginx/1.22.1\n"),
            Some((1, 22, 1))
        );
        assert_eq!(
            nginx_version("nginx version: nginx/1.25.3 (Ubuntu)"),
            Some((1, 25, 3))
        );
    }
}
