//! The `gangplank-ingress` proxy on a simulated node, for the Ingress
//! end-to-end tests: `gp-http` upstreams in pods, Ingress / IngressClass /
//! Service / EndpointSlice / Secret manifests, test certificates from a
//! private CA (openssl CLI), and real clients (curl, openssl s_client,
//! `gp-http grpc-call|ws-call|load`) run from the client namespace.
//!
//! The proxy needs no agent: EndpointSlices list pod IPs, and the proxy
//! connects to them directly from the node, which routes its own pods over
//! its bridge. Every connection stays inside the cluster's namespaces.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use crate::{target_binary, Cluster, Proc};

/// The IngressClass the tests' Ingresses name.
pub const CLASS: &str = "gangplank";
/// `IngressClass.spec.controller` of the proxy.
pub const CONTROLLER: &str = "gangplank.io/ingress";
/// CN of the certificate the proxy generates when no default is configured.
pub const DEFAULT_CERT_CN: &str = "gangplank-ingress default certificate";
/// Ports the proxy listens on, on the node's lan address.
pub const HTTP_PORT: u16 = 80;
/// TLS listener port.
pub const HTTPS_PORT: u16 = 443;
/// Metrics listener port.
pub const METRICS_PORT: u16 = 10254;
/// How long the proxy may take to print `ingress ready`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one client command (curl, openssl, gp-http).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// `gp-http`, next to the running test binary.
pub fn gp_http_cmd() -> Result<Command> {
    Ok(Command::new(target_binary("gp-http")?))
}

/// Starts `gp-http --name NAME` on 0.0.0.0:`port` in `pod` (one worker) and
/// waits until it listens.
pub fn serve_http(c: &Cluster, pod: &str, name: &str, port: u16) -> Result<Proc> {
    let mut cmd = gp_http_cmd()?;
    cmd.args(["--listen", &format!("0.0.0.0:{port}"), "--name", name])
        .args(["--workers", "1"]);
    let mut proc = c.spawn_in(pod, cmd)?;
    proc.wait_for_line(|l| l.starts_with("listening on"), Duration::from_secs(10))
        .with_context(|| format!("gp-http {name} in {pod}"))?;
    Ok(proc)
}

// -- manifests ----------------------------------------------------------------

/// `IngressClass NAME` with our controller.
pub fn ingress_class(name: &str) -> String {
    doc(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": CONTROLLER},
    }))
}

/// A ClusterIP Service `ns/name` with one port `http` (`port` →
/// `target`), and its EndpointSlice listing `ips` as ready endpoints on
/// node-a (no endpoints: an empty slice).
pub fn service(ns: &str, name: &str, port: u16, target: u16, ips: &[Ipv4Addr]) -> Vec<String> {
    // The address is never used: the proxy connects to endpoints directly.
    let svc = Service::cluster_ip(ns, name, Ipv4Addr::new(198, 18, 200, 1)).port(
        "http",
        port,
        "TCP",
        Target::Number(target),
    );
    let mut slice = EndpointSlice::new(ns, name, &format!("{name}-x1")).port("http", target, "TCP");
    for ip in ips {
        slice = slice.endpoint(Endpoint::ready(*ip, "node-a"));
    }
    vec![svc.to_yaml(), slice.to_yaml()]
}

/// A `kubernetes.io/tls` Secret holding `cert`.
pub fn tls_secret(ns: &str, name: &str, cert: &Cert) -> String {
    tls_secret_raw(ns, name, cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
}

/// A `kubernetes.io/tls` Secret with arbitrary (possibly invalid) contents.
pub fn tls_secret_raw(ns: &str, name: &str, crt: &[u8], key: &[u8]) -> String {
    doc(&json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64(crt), "tls.key": base64(key)},
    }))
}

/// An Ingress backend: a Service and its port number.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Service name (in the Ingress's namespace).
    pub service: String,
    /// Service port number.
    pub port: u16,
}

impl Backend {
    fn to_json(&self) -> Value {
        json!({"service": {"name": self.service, "port": {"number": self.port}}})
    }
}

/// A networking.k8s.io/v1 Ingress (served by [`CLASS`] unless
/// [`Ingress::class`] says otherwise).
#[derive(Debug, Clone)]
pub struct Ingress {
    namespace: String,
    name: String,
    class: Option<String>,
    annotations: BTreeMap<String, String>,
    default_backend: Option<Backend>,
    tls: Vec<(Vec<String>, String)>,
    /// (host or "" for none, path, pathType, backend), rules grouped by host in order.
    paths: Vec<(String, String, String, Backend)>,
}

impl Ingress {
    /// An empty Ingress `ns/name` of class [`CLASS`].
    pub fn new(ns: &str, name: &str) -> Self {
        Self {
            namespace: ns.into(),
            name: name.into(),
            class: Some(CLASS.into()),
            annotations: BTreeMap::new(),
            default_backend: None,
            tls: Vec::new(),
            paths: Vec::new(),
        }
    }

    /// `spec.ingressClassName` (None: no class).
    pub fn class(mut self, class: Option<&str>) -> Self {
        self.class = class.map(str::to_string);
        self
    }

    /// A `metadata.annotations` entry.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// `spec.defaultBackend`.
    pub fn default_backend(mut self, service: &str, port: u16) -> Self {
        self.default_backend = Some(Backend {
            service: service.into(),
            port,
        });
        self
    }

    /// A `spec.tls` entry.
    pub fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        self.tls
            .push((hosts.iter().map(|h| h.to_string()).collect(), secret.into()));
        self
    }

    /// A path of the rule for `host` ("" for a rule without host).
    pub fn path(
        mut self,
        host: &str,
        path: &str,
        path_type: &str,
        service: &str,
        port: u16,
    ) -> Self {
        self.paths.push((
            host.into(),
            path.into(),
            path_type.into(),
            Backend {
                service: service.into(),
                port,
            },
        ));
        self
    }

    /// `Prefix /` of `host` to `service:port`.
    pub fn host(self, host: &str, service: &str, port: u16) -> Self {
        self.path(host, "/", "Prefix", service, port)
    }

    /// The manifest (JSON, which is YAML too).
    pub fn to_yaml(&self) -> String {
        let mut rules: Vec<(String, Vec<Value>)> = Vec::new();
        for (host, path, path_type, backend) in &self.paths {
            let p = json!({"path": path, "pathType": path_type, "backend": backend.to_json()});
            match rules.iter_mut().find(|(h, _)| h == host) {
                Some((_, paths)) => paths.push(p),
                None => rules.push((host.clone(), vec![p])),
            }
        }
        let rules: Vec<Value> = rules
            .into_iter()
            .map(|(host, paths)| {
                let mut r = json!({"http": {"paths": paths}});
                if !host.is_empty() {
                    r["host"] = json!(host);
                }
                r
            })
            .collect();
        let mut spec = json!({});
        if let Some(class) = &self.class {
            spec["ingressClassName"] = json!(class);
        }
        if let Some(b) = &self.default_backend {
            spec["defaultBackend"] = b.to_json();
        }
        if !self.tls.is_empty() {
            spec["tls"] = self
                .tls
                .iter()
                .map(|(hosts, secret)| json!({"hosts": hosts, "secretName": secret}))
                .collect();
        }
        if !rules.is_empty() {
            spec["rules"] = json!(rules);
        }
        let mut meta = json!({"name": self.name, "namespace": self.namespace});
        if !self.annotations.is_empty() {
            meta["annotations"] = json!(self.annotations);
        }
        doc(&json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": meta,
            "spec": spec,
        }))
    }
}

fn doc(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Standard base64 with padding (Secret `data`).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// -- certificates -------------------------------------------------------------

/// A private CA (openssl CLI) that issues the tests' server certificates.
#[derive(Debug)]
pub struct Ca {
    dir: PathBuf,
    /// The CA certificate (PEM), for `curl --cacert` and `gp-http --cacert`.
    pub cert: PathBuf,
    serial: AtomicU32,
}

/// A server certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Cert {
    /// Subject CN (unique per certificate, so a test can tell which is served).
    pub cn: String,
    /// Certificate (PEM).
    pub cert_pem: String,
    /// PKCS#8 private key (PEM).
    pub key_pem: String,
}

fn openssl(args: &[&str], cwd: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Ca {
    /// A new CA (P-256, valid 2 days) in `dir` (created).
    pub fn new(dir: &Path) -> Result<Ca> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.crt"),
            serial: AtomicU32::new(1),
        };
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=gangplank test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir,
        )?;
        Ok(ca)
    }

    /// A certificate with subject CN `cn` for the DNS names `sans` (wildcards
    /// like `*.example.com` allowed), signed by this CA.
    pub fn issue(&self, cn: &str, sans: &[&str]) -> Result<Cert> {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let (key, csr, crt, ext) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.crt"),
            format!("leaf{n}.ext"),
        );
        let san: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
                san.join(",")
            ),
        )
        .context("writing the extensions file")?;
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
            &self.dir,
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &(1000 + n).to_string(),
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
            &self.dir,
        )?;
        let read = |f: &str| {
            std::fs::read_to_string(self.dir.join(f)).with_context(|| format!("reading {f}"))
        };
        Ok(Cert {
            cn: cn.into(),
            cert_pem: read(&crt)?,
            key_pem: read(&key)?,
        })
    }
}

// -- the proxy -----------------------------------------------------------------

/// A running `gangplank-ingress` on a node.
pub struct IngressProxy {
    /// The process (stderr: logs; stdout: the JSON access log).
    pub proc: Proc,
    /// The node's lan address the listeners are bound to.
    pub ip: Ipv4Addr,
}

impl IngressProxy {
    /// Starts `gangplank-ingress --manifests <cluster manifests>` in `node`'s
    /// netns, listening on the node address (ports 80, 443, 10254), with two
    /// workers and `extra` flags, and waits for `ingress ready`.
    pub fn start(c: &Cluster, node: &str, extra: &[&str]) -> Result<IngressProxy> {
        let manifests = c.manifests_dir().display().to_string();
        Self::spawn(c, node, &["--manifests", &manifests], extra)
    }

    /// [`IngressProxy::start`] in cluster mode: following the API server
    /// of `kubeconfig` instead of the manifests.
    pub fn start_with_api(
        c: &Cluster,
        node: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<IngressProxy> {
        let kubeconfig = kubeconfig.display().to_string();
        Self::spawn(c, node, &["--kubeconfig", &kubeconfig], extra)
    }

    fn spawn(c: &Cluster, node: &str, source: &[&str], extra: &[&str]) -> Result<IngressProxy> {
        let ip = c.node(node).address;
        let mut cmd = Command::new(target_binary("gangplank-ingress")?);
        cmd.args(source)
            .args(["--http-bind", &format!("{ip}:{HTTP_PORT}")])
            .args(["--https-bind", &format!("{ip}:{HTTPS_PORT}")])
            .args(["--metrics-addr", &format!("{ip}:{METRICS_PORT}")])
            .args(["--workers", "2"])
            .args(extra)
            .env("RUST_LOG", "info");
        let mut proc = c.spawn_in_node(node, cmd)?;
        proc.wait_for_stderr_line(|l| l.contains("ingress ready"), START_TIMEOUT)
            .with_context(|| format!("gangplank-ingress on {node} did not become ready"))?;
        Ok(IngressProxy { proc, ip })
    }

    /// Everything it logged (stderr).
    pub fn log(&self) -> String {
        self.proc.stderr_text()
    }

    /// The access log so far: stdout lines that are JSON objects.
    pub fn access_log(&self) -> Vec<Value> {
        self.proc
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Waits for a stderr line matching `pred` (after the previous match).
    pub fn wait_for_log(
        &mut self,
        pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        self.proc.wait_for_stderr_line(pred, timeout)
    }
}

// -- the environment -------------------------------------------------------------

/// A cluster with one node (`node-a`) and the given pods, a CA, upstreams,
/// and (once started) the proxy on node-a. Dropping it stops everything.
pub struct Env {
    /// The proxy, once [`Env::start_proxy`] ran.
    pub proxy: Option<IngressProxy>,
    upstreams: Vec<Proc>,
    /// The tests' CA.
    pub ca: Ca,
    scratch: PathBuf,
    counter: AtomicU32,
    /// Declared last: dropped (torn down) after everything running in it.
    pub c: Cluster,
}

impl Env {
    /// Cluster `test` with node-a running `pods`, the IngressClass
    /// [`CLASS`] written, and a CA.
    pub fn new(test: &str, pods: &[&str]) -> Result<Env> {
        Self::with_cluster(Cluster::new(test, &[("node-a", pods)])?)
    }

    /// An environment around an existing cluster (the demo's): the
    /// IngressClass [`CLASS`] written, and a CA. The proxy runs on node-a.
    pub fn with_cluster(c: Cluster) -> Result<Env> {
        // Next to (not inside) the watched manifests directory.
        let scratch = c
            .manifests_dir()
            .parent()
            .ok_or_else(|| anyhow!("manifests dir has no parent"))?
            .join("ingress");
        let ca = Ca::new(&scratch.join("ca"))?;
        manifests::write(c.manifests_dir(), "class.yaml", &[ingress_class(CLASS)])?;
        Ok(Env {
            proxy: None,
            upstreams: Vec::new(),
            ca,
            scratch,
            counter: AtomicU32::new(0),
            c,
        })
    }

    /// The pod's IP.
    pub fn pod_ip(&self, pod: &str) -> Ipv4Addr {
        self.c.pod(pod).ip
    }

    /// node-a's lan address (where the proxy listens).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.c.node("node-a").address
    }

    /// The client namespace's address.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.c.client().ip
    }

    /// Starts a gp-http upstream named `name` in `pod` on `port` (kept until drop).
    pub fn upstream(&mut self, pod: &str, name: &str, port: u16) -> Result<()> {
        let p = serve_http(&self.c, pod, name, port)?;
        self.upstreams.push(p);
        Ok(())
    }

    /// Writes manifests file `file` (atomically).
    pub fn write(&self, file: &str, docs: &[String]) -> Result<()> {
        manifests::write(self.c.manifests_dir(), file, docs)
    }

    /// Removes manifests file `file`.
    pub fn remove(&self, file: &str) -> Result<()> {
        manifests::remove(self.c.manifests_dir(), file)
    }

    /// Starts the proxy on node-a (see [`IngressProxy::start`]).
    pub fn start_proxy(&mut self, extra: &[&str]) -> Result<()> {
        self.proxy = Some(IngressProxy::start(&self.c, "node-a", extra)?);
        Ok(())
    }

    /// The running proxy; panics if it was not started.
    pub fn proxy(&mut self) -> &mut IngressProxy {
        self.proxy.as_mut().expect("start_proxy was not called")
    }

    /// The proxy's log (stderr), or "" before it started.
    pub fn proxy_log(&self) -> String {
        self.proxy
            .as_ref()
            .map(IngressProxy::log)
            .unwrap_or_default()
    }

    fn scratch_file(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.scratch.join(format!("{what}-{n}"))
    }

    /// `curl URL` from the client namespace, with the URL's host resolved
    /// to the proxy (`--resolve`) and the tests' CA trusted; `extra` are
    /// more curl flags (`--http2`, `-H ...`, `-k`). A transfer error (no
    /// HTTP response at all) is an `Err`.
    pub fn curl(&self, url: &str, extra: &[&str]) -> Result<CurlResponse> {
        let (host, port) = url_host_port(url)?;
        let body_file = self.scratch_file("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--noproxy", "*"]);
        if host.parse::<Ipv4Addr>().is_err() {
            cmd.arg("--resolve")
                .arg(format!("{host}:{port}:{}", self.node_ip()));
        }
        cmd.arg("--cacert")
            .arg(&self.ca.cert)
            .arg("-o")
            .arg(&body_file)
            .args(["-w", "%{json}\n--gp-split--\n%{header_json}"])
            .args(extra)
            .arg(url);
        let out = self.c.run_in_client(cmd, CLIENT_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let body = std::fs::read(&body_file).unwrap_or_default();
        let _ = std::fs::remove_file(&body_file);
        let (info, headers) = stdout
            .split_once("\n--gp-split--\n")
            .ok_or_else(|| anyhow!("curl {url}: unexpected output {stdout:?} (stderr {stderr})"))?;
        let info: Value = serde_json::from_str(info)
            .with_context(|| format!("curl {url}: bad %{{json}} output {info:?}"))?;
        let status = info["http_code"].as_u64().unwrap_or(0) as u16;
        if !out.status.success() || status == 0 {
            bail!(
                "curl {url} {extra:?} failed ({}): {} {}",
                out.status,
                stderr.trim(),
                info["errormsg"].as_str().unwrap_or("")
            );
        }
        let headers: BTreeMap<String, Vec<String>> = serde_json::from_str(headers.trim())
            .with_context(|| format!("curl {url}: bad %{{header_json}} output {headers:?}"))?;
        Ok(CurlResponse {
            status,
            version: info["http_version"].as_str().unwrap_or("").to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            stderr,
        })
    }

    /// Like [`Env::curl`], retried until `check` accepts the response or
    /// `timeout` passes (for changes the proxy applies asynchronously);
    /// returns the last response and how long it took.
    pub fn curl_until(
        &self,
        url: &str,
        extra: &[&str],
        timeout: Duration,
        mut check: impl FnMut(&CurlResponse) -> bool,
    ) -> (Result<CurlResponse>, Duration) {
        let start = Instant::now();
        loop {
            let r = self.curl(url, extra);
            if r.as_ref().is_ok_and(&mut check) || start.elapsed() >= timeout {
                return (r, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The certificate the proxy serves for `sni` (None: no SNI at all),
    /// read with `openssl s_client` from the client namespace.
    pub fn served_cert(&self, sni: Option<&str>) -> Result<CertInfo> {
        let sni_arg = match sni {
            Some(name) => format!("-servername '{name}'"),
            None => "-noservername".to_string(),
        };
        let script = format!(
            "openssl s_client -connect {}:{HTTPS_PORT} {sni_arg} </dev/null 2>/dev/null \
             | openssl x509 -noout -subject -nameopt RFC2253 -ext subjectAltName",
            self.node_ip()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let out = self.c.run_in_client(cmd, CLIENT_TIMEOUT)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "no certificate for SNI {sni:?}: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        CertInfo::parse(&text)
    }

    /// Runs `gp-http ARGS` (a client subcommand) in the client namespace and
    /// parses its last stdout line as JSON; a non-zero exit is an `Err`.
    pub fn gp_http(&self, args: &[&str]) -> Result<Value> {
        let out = self.gp_http_output(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "gp-http {args:?} failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last)
            .with_context(|| format!("gp-http {args:?}: bad output {stdout:?}"))
    }

    /// Runs `gp-http ARGS` in the client namespace, returning its output.
    pub fn gp_http_output(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = gp_http_cmd()?;
        cmd.args(args);
        self.c.run_in_client(cmd, Duration::from_secs(60))
    }

    /// Starts `gp-http ARGS` in the client namespace without waiting.
    pub fn spawn_gp_http(&self, args: &[&str]) -> Result<Proc> {
        let mut cmd = gp_http_cmd()?;
        cmd.args(args);
        self.c.spawn_in_client(cmd)
    }

    /// `--connect NODE:443 --tls --sni HOST --cacert CA`, for gp-http clients.
    pub fn tls_args(&self, host: &str) -> Vec<String> {
        vec![
            "--connect".into(),
            SocketAddr::from((self.node_ip(), HTTPS_PORT)).to_string(),
            "--tls".into(),
            "--sni".into(),
            host.into(),
            "--cacert".into(),
            self.ca.cert.display().to_string(),
        ]
    }

    /// `--connect NODE:80`, for gp-http clients over plain HTTP.
    pub fn plain_args(&self) -> Vec<String> {
        vec![
            "--connect".into(),
            SocketAddr::from((self.node_ip(), HTTP_PORT)).to_string(),
        ]
    }
}

fn url_host_port(url: &str) -> Result<(String, u16)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("{url}: no scheme"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let default = match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => bail!("{url}: unknown scheme"),
    };
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().with_context(|| format!("{url}: bad port"))?,
        ),
        None => (authority.to_string(), default),
    })
}

/// What `curl` got.
#[derive(Debug, Clone)]
pub struct CurlResponse {
    /// HTTP status.
    pub status: u16,
    /// "1.1" or "2".
    pub version: String,
    /// Response headers, lowercase names.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Response body (lossily decoded).
    pub body: String,
    /// curl's stderr (`-v` output when asked for).
    pub stderr: String,
}

impl CurlResponse {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.first().map(String::as_str)
    }

    /// The upstream that answered (`x-served-by`), or "-" if none did.
    pub fn served_by(&self) -> &str {
        self.header("x-served-by").unwrap_or("-")
    }

    /// The body as gp-http's JSON echo (Null if it is not JSON).
    pub fn echo(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `status served_by`, for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} from {} (HTTP/{})",
            self.status,
            self.served_by(),
            self.version
        );
        if self.served_by() == "-" {
            let _ = write!(
                s,
                " body {:?}",
                self.body.chars().take(200).collect::<String>()
            );
        }
        s
    }
}

/// Names in a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject CN ("" if none).
    pub cn: String,
    /// subjectAltName DNS names.
    pub dns_names: Vec<String>,
}

impl CertInfo {
    fn parse(text: &str) -> Result<CertInfo> {
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("subject="))
            .ok_or_else(|| anyhow!("no subject in {text:?}"))?;
        let cn = subject
            .split(',')
            .find_map(|p| p.trim().strip_prefix("CN="))
            .unwrap_or("")
            .to_string();
        let dns_names = text
            .lines()
            .skip_while(|l| !l.contains("Subject Alternative Name"))
            .nth(1)
            .map(|l| {
                l.split(',')
                    .filter_map(|p| p.trim().strip_prefix("DNS:"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CertInfo { cn, dns_names })
    }
}

/// Metric `name` with all of `labels` (`key="value"` pairs) summed over
/// the Prometheus text `metrics`; None if no sample matches.
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labelset, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels.iter().all(|(k, v)| {
            labelset
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        }) {
            if let Ok(v) = value.trim().parse::<f64>() {
                *total.get_or_insert(0.0) += v;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc, "{raw:?}");
        }
    }

    #[test]
    fn cert_info_parses_openssl_output() {
        let text = "subject=CN=cert-a\nX509v3 Subject Alternative Name: \n    DNS:a.example.com, DNS:*.example.com\n";
        assert_eq!(
            CertInfo::parse(text).expect("parses"),
            CertInfo {
                cn: "cert-a".into(),
                dns_names: vec!["a.example.com".into(), "*.example.com".into()],
            }
        );
    }

    #[test]
    fn metric_sum_filters_labels() {
        let m = "# TYPE x counter\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total{a=\"2\"} 5\ny 1\n";
        assert_eq!(metric_sum(m, "x_total", &[("a", "1")]), Some(7.0));
        assert_eq!(metric_sum(m, "x_total", &[("b", "3")]), Some(4.0));
        assert_eq!(metric_sum(m, "x_total", &[("a", "9")]), None);
        assert_eq!(metric_sum(m, "y", &[]), Some(1.0));
    }

    #[test]
    fn ingress_manifest_groups_paths_by_host() {
        let y = Ingress::new("default", "web")
            .annotation("gangplank.io/ssl-redirect", "false")
            .tls(&["a.example.com"], "cert-a")
            .path("a.example.com", "/foo", "Exact", "svc", 80)
            .path("a.example.com", "/", "Prefix", "svc", 80)
            .host("", "other", 8080)
            .default_backend("fallback", 80)
            .to_yaml();
        let v: Value = serde_json::from_str(&y).expect("JSON");
        assert_eq!(v["spec"]["ingressClassName"], CLASS);
        assert_eq!(v["spec"]["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["spec"]["rules"][0]["host"], "a.example.com");
        assert_eq!(
            v["spec"]["rules"][0]["http"]["paths"][0]["pathType"],
            "Exact"
        );
        assert!(v["spec"]["rules"][1].get("host").is_none());
        assert_eq!(v["spec"]["defaultBackend"]["service"]["port"]["number"], 80);
        assert_eq!(v["spec"]["tls"][0]["secretName"], "cert-a");
    }
}
