//! `cargo xtask demo`: a two-node simulated cluster, one agent per node,
//! real traffic through a ClusterIP from pods, and through NodePort,
//! LoadBalancer IP and `externalTrafficPolicy: Local` from a client outside
//! the cluster, with a short report of who answered and which client
//! address each pod saw; then HTTPS through `gangplank-ingress` on node-a
//! (host and path routing, a certificate by SNI, HTTP/2, the redirect, a
//! reload under load).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangplank_tests::agent::{Agent, AgentOpts};
use gangplank_tests::ingress::{self as ing, Env};
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::{Cluster, ProbeResult};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const PODS: [&str; 3] = ["pod-a1", "pod-a2", "pod-b1"];
/// `hello` is a LoadBalancer Service: cluster IP, node ports, and this
/// load-balancer IP (the "cloud" routes it to node-a).
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const NODE_PORT: u16 = 30080;
/// `hello-local`: `externalTrafficPolicy: Local`, endpoints on node-a only.
const LOCAL_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 11);
const LOCAL_NODE_PORT: u16 = 30081;
const HEALTH_PORT: u16 = 32000;

fn service() -> Service {
    Service::load_balancer("demo", "hello", VIP)
        .port("http", 80, "TCP", Target::Name("http".into()))
        .port("echo", 53, "UDP", Target::Number(UDP_PORT))
        .node_port("http", NODE_PORT)
        .node_port("echo", 30053)
        .lb_ingress(LB_IP)
}

fn local_service() -> Service {
    Service::load_balancer("demo", "hello-local", LOCAL_VIP)
        .port("http", 80, "TCP", Target::Number(HTTP_PORT))
        .node_port("http", LOCAL_NODE_PORT)
        .external_traffic_policy("Local")
        .health_check_node_port(HEALTH_PORT)
}

fn slice(c: &Cluster, pods: &[&str]) -> EndpointSlice {
    slice_for(c, "hello", pods)
}

fn slice_for(c: &Cluster, service: &str, pods: &[&str]) -> EndpointSlice {
    let mut s = EndpointSlice::new("demo", service, &format!("{service}-x7k2p"))
        .port("http", HTTP_PORT, "TCP")
        .port("echo", UDP_PORT, "UDP");
    for p in pods {
        let pod = c.pod(p);
        s = s.endpoint(Endpoint::ready(pod.ip, &pod.node));
    }
    s
}

fn write(c: &Cluster, pods: &[&str]) -> Result<()> {
    manifests::write(
        c.manifests_dir(),
        "hello.yaml",
        &[service().to_yaml(), slice(c, pods).to_yaml()],
    )
}

/// Whether every request of a probe run was answered.
fn all_ok(results: &[ProbeResult]) -> bool {
    !results.is_empty() && results.iter().all(|r| r.ok)
}

/// "pod-a1 ×4, pod-a2 ×3" (and "failed ×N") and the distinct values of
/// `field` over the answered requests; failures end up in the closing
/// table rather than stopping the demo.
fn summarize(
    results: &[ProbeResult],
    field: impl Fn(&ProbeResult) -> Option<String>,
) -> Result<(String, Vec<String>)> {
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = Vec::new();
    for r in results {
        if !r.ok {
            *by_pod.entry("failed".to_string()).or_default() += 1;
            continue;
        }
        *by_pod
            .entry(r.pod().unwrap_or("?").to_string())
            .or_default() += 1;
        if let Some(v) = field(r) {
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
    }
    let text = by_pod
        .iter()
        .map(|(p, n)| format!("{p} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((text, seen))
}

/// One line of the closing table: what was tried, whether it did what
/// Kubernetes says it must, and how fast.
struct Row {
    what: String,
    worked: bool,
    speed: String,
}

#[derive(Default)]
struct Scorecard(Vec<Row>);

impl Scorecard {
    fn add(&mut self, what: &str, worked: bool, speed: String) {
        self.0.push(Row {
            what: what.to_string(),
            worked,
            speed,
        });
    }

    fn print(&self) {
        println!("what worked, and how fast:\n");
        println!("  {:<66} {:<7} how fast", "", "worked");
        for r in &self.0 {
            println!(
                "  {:<66} {:<7} {}",
                r.what,
                if r.worked { "yes" } else { "NO" },
                r.speed
            );
        }
    }

    fn failures(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|r| !r.worked)
            .map(|r| r.what.as_str())
            .collect()
    }
}

/// "12 in 40 ms (3.3 ms each)": the wall time of `n` requests made by one
/// gp-probe run (its start-up included).
fn pace(n: usize, took: Duration) -> String {
    format!(
        "{n} in {} ms ({:.1} ms each)",
        took.as_millis(),
        took.as_secs_f64() * 1e3 / n.max(1) as f64
    )
}

pub fn run() -> Result<()> {
    gangplank_tests::check_privileges()?;
    let started = Instant::now();
    let cluster = Cluster::new(
        "demo",
        &[("node-a", &["pod-a1", "pod-a2"]), ("node-b", &["pod-b1"])],
    )
    .context("building the simulated cluster")?;
    let mut env = Env::with_cluster(cluster).context("preparing the ingress demo")?;
    let c = &env.c;

    println!("gangplank demo: simulated cluster {}", c.id());
    for node in c.nodes() {
        let pods: Vec<String> = c
            .pods()
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect();
        println!(
            "  {:<7} {:<13} pods: {}",
            node.name,
            node.address,
            pods.join(", ")
        );
    }

    let _servers = PODS
        .iter()
        .map(|p| c.serve(p, &[HTTP_PORT], &[UDP_PORT]))
        .collect::<Result<Vec<_>>>()
        .context("starting the pods' HTTP/UDP servers")?;
    write(c, &PODS)?;
    manifests::write(
        c.manifests_dir(),
        "hello-local.yaml",
        &[
            local_service().to_yaml(),
            slice_for(c, "hello-local", &["pod-a1", "pod-a2"]).to_yaml(),
        ],
    )?;
    println!(
        "  Service demo/hello  LoadBalancer {LB_IP}, ClusterIP {VIP}, NodePort {NODE_PORT}: http 80/TCP → pods' :{HTTP_PORT} (named targetPort), echo 53/UDP → :{UDP_PORT}"
    );
    println!(
        "  Service demo/hello-local  NodePort {LOCAL_NODE_PORT}, externalTrafficPolicy Local, endpoints on node-a only, health check :{HEALTH_PORT}"
    );
    println!(
        "  client {} outside the cluster, on the nodes' LAN",
        c.client().ip
    );

    let mut agents = ["node-a", "node-b"]
        .iter()
        .map(|n| Agent::start_with(c, n, AgentOpts::lan()))
        .collect::<Result<Vec<_>>>()
        .context("starting the agents")?;
    println!("  agents running on node-a and node-b: socket LB on each node's cgroup, tc/XDP on each node's eth0\n");

    let mut card = Scorecard::default();
    let url = format!("{VIP}:80");
    let t = Instant::now();
    let results = c.probe("pod-a1", ["tcp", url.as_str(), "--count", "12"])?;
    let took = t.elapsed();
    let (answered, clients) = summarize(&results, |r| r.client_addr().map(|a| a.ip().to_string()))?;
    card.add(
        "ClusterIP from a pod (socket LB), client address kept",
        all_ok(&results) && clients == [c.pod("pod-a1").ip.to_string()],
        pace(12, took),
    );
    let (_, peers) = summarize(&results, |r| r.peer.clone())?;
    println!(
        "1. 12 HTTP requests from pod-a1 ({}) to {url}",
        c.pod("pod-a1").ip
    );
    println!("   answered by:              {answered}");
    println!(
        "   client address seen:      {} (the pod's own: no SNAT, no iptables)",
        clients.join(", ")
    );
    println!(
        "   peer seen by the client:  {} (getpeername shows the ClusterIP)\n",
        peers.join(", ")
    );

    let t = Instant::now();
    let results = c.probe("pod-b1", ["tcp", url.as_str(), "--count", "12"])?;
    let took = t.elapsed();
    let (answered, _) = summarize(&results, |_| None)?;
    card.add(
        "ClusterIP from a pod on the other node",
        all_ok(&results) && results.len() == 12,
        pace(12, took),
    );
    println!("2. 12 HTTP requests from pod-b1 on node-b (its own agent)");
    println!("   answered by:              {answered}\n");

    let echo = format!("{VIP}:53");
    let t = Instant::now();
    let results = c.probe("pod-a2", ["udp", echo.as_str(), "--count", "6"])?;
    let took = t.elapsed();
    let (answered, froms) = summarize(&results, |r| r.from.clone())?;
    card.add(
        "UDP to a ClusterIP, replies from the ClusterIP",
        all_ok(&results) && froms == [echo.clone()],
        pace(6, took),
    );
    println!("3. 6 UDP datagrams (unconnected) from pod-a2 to {echo}");
    println!("   answered by:              {answered}");
    println!(
        "   replies came from:        {} (translated back to the ClusterIP)\n",
        froms.join(", ")
    );

    write(c, &["pod-a1", "pod-b1"])?;
    let change = Instant::now();
    let line = agents[0].wait_for_log(|l| l.contains("maps updated"), Duration::from_secs(5))?;
    let noticed = change.elapsed();
    let applied_us = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_us="))
        .unwrap_or("?");
    let results = c.probe("pod-a1", ["tcp", url.as_str(), "--count", "12"])?;
    let (answered, _) = summarize(&results, |_| None)?;
    card.add(
        "an endpoint removed: no request reaches it",
        all_ok(&results) && !answered.contains("pod-a2"),
        format!(
            "seen {} ms after the write, maps updated in {applied_us} µs",
            noticed.as_millis()
        ),
    );
    println!("4. pod-a2 removed from the EndpointSlice file:");
    println!(
        "   node-a's agent saw the change {} ms after the write and updated its maps in {applied_us} µs",
        noticed.as_millis()
    );
    println!("   answered by:              {answered}\n");

    north_south(c, &mut card)?;

    for (n, command) in [(9, "service list"), (10, "status")] {
        let mut cmd = gangplank_tests::agent::gangplank_cmd()?;
        cmd.args(command.split(' '))
            .arg("--bpffs")
            .arg(&agents[0].bpffs);
        let out = c.run_in_node("node-a", cmd, Duration::from_secs(10))?;
        println!("{n}. `gangplank {command}` on node-a (read from the pinned maps):");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            println!("   {line}");
        }
        println!();
        if command == "service list" {
            card.add(
                "`gangplank service list` shows what the kernel serves",
                out.status.success() && text.contains("demo/hello:http"),
                "-".into(),
            );
        }
    }

    ingress(&mut env, &mut card)?;

    drop(agents);
    drop(env);
    println!();
    card.print();
    println!(
        "\ndone in {:.1} s; namespaces, cgroups, pins and processes removed.",
        started.elapsed().as_secs_f64()
    );
    let failed = card.failures();
    if !failed.is_empty() {
        bail!("the demo found what does not work: {}", failed.join("; "));
    }
    Ok(())
}

/// Steps 5–8: traffic from the client outside the cluster.
fn north_south(c: &Cluster, card: &mut Scorecard) -> Result<()> {
    let client_ip = c.client().ip.to_string();
    let seen_as = |r: &ProbeResult| {
        r.client_addr().map(|a| {
            let ip = a.ip().to_string();
            let who = if ip == client_ip {
                "the client".to_string()
            } else if let Some(node) = c.nodes().iter().find(|n| n.address.to_string() == ip) {
                format!("{} (SNAT)", node.name)
            } else {
                ip
            };
            format!("{} → {who}", r.pod().unwrap_or("?"))
        })
    };
    for (n, node) in [(5, "node-a"), (6, "node-b")] {
        let address = c.node(node).address;
        let url = format!("{address}:{NODE_PORT}");
        let t = Instant::now();
        let results = c.probe("client", ["tcp", url.as_str(), "--count", "12"])?;
        let took = t.elapsed();
        let (answered, seen) = summarize(&results, seen_as)?;
        card.add(
            &format!("NodePort via {node} (Cluster policy): local pods see the client"),
            all_ok(&results) && seen.iter().any(|s| s.ends_with("→ the client")),
            pace(12, took),
        );
        println!("{n}. 12 HTTP requests from the client to NodePort {url}");
        println!("   answered by:              {answered}");
        println!("   client address pods saw:  {}", seen.join(", "));
        println!("   (pods on {node} see the client; pods on the other node see {node}, which SNATs so replies come back through it)\n");
    }

    c.ip(
        "client",
        &format!("route add {LB_IP}/32 via {}", c.node("node-a").address),
    )?;
    let url = format!("{LB_IP}:80");
    let t = Instant::now();
    let results = c.probe("client", ["tcp", url.as_str(), "--count", "12"])?;
    let took = t.elapsed();
    let (answered, peers) = summarize(&results, |r| r.peer.clone())?;
    card.add(
        "LoadBalancer IP from outside",
        all_ok(&results) && peers == [url.clone()],
        pace(12, took),
    );
    println!("7. 12 HTTP requests from the client to the LoadBalancer IP {url} (routed to node-a)");
    println!("   answered by:              {answered}");
    println!("   replies came from:        {}\n", peers.join(", "));

    let url = format!("{}:{LOCAL_NODE_PORT}", c.node("node-a").address);
    let t = Instant::now();
    let results = c.probe("client", ["tcp", url.as_str(), "--count", "6"])?;
    let took = t.elapsed();
    let (answered, seen) = summarize(&results, seen_as)?;
    println!("8. externalTrafficPolicy: Local, 6 requests to {url}");
    println!("   answered by:              {answered}");
    println!("   client address pods saw:  {}", seen.join(", "));
    let via_b = format!("{}:{LOCAL_NODE_PORT}", c.node("node-b").address);
    let r = c.probe("client", ["tcp", via_b.as_str(), "--timeout-ms", "500"])?;
    let refused = r.first().is_some_and(|r| !r.ok);
    card.add(
        "NodePort with Local policy: every pod sees the client",
        all_ok(&results) && seen.iter().all(|s| s.ends_with("→ the client")),
        pace(6, took),
    );
    card.add(
        "Local policy: a node without endpoints drops the traffic",
        refused,
        "-".into(),
    );
    println!(
        "   through node-b (no local endpoint): {}",
        if refused {
            "dropped, as Kubernetes requires"
        } else {
            "answered (unexpected!)"
        }
    );
    for node in ["node-a", "node-b"] {
        let url = format!("{}:{HEALTH_PORT}", c.node(node).address);
        let r = c.probe("client", ["tcp", url.as_str()])?;
        let (status, body) = r
            .first()
            .map(|r| (r.status.unwrap_or(0), r.reply.clone().unwrap_or_default()))
            .unwrap_or_default();
        let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
        println!("   health check {url}: {status} {body}");
    }
    println!();
    Ok(())
}

/// Ingress host and path (and certificate) of the demo shop.
const SHOP: &str = "shop.demo.example";
/// Port of the demo's HTTP upstreams (gp-http) in the pods.
const WEB_PORT: u16 = 9000;

/// Step 11: HTTPS through the Ingress proxy on node-a, from the client.
fn ingress(env: &mut Env, card: &mut Scorecard) -> Result<()> {
    env.upstream("pod-a2", "shop-web", WEB_PORT)?;
    env.upstream("pod-b1", "shop-api", WEB_PORT)?;
    let ip = |p: &str| env.c.pod(p).ip;
    let mut docs = ing::service("demo", "shop-web", 80, WEB_PORT, &[ip("pod-a2")]);
    docs.extend(ing::service(
        "demo",
        "shop-api",
        80,
        WEB_PORT,
        &[ip("pod-b1")],
    ));
    let cert = env.ca.issue(SHOP, &[SHOP])?;
    docs.push(ing::tls_secret("demo", "shop-tls", &cert));
    docs.push(
        ing::Ingress::new("demo", "shop")
            .class(Some(ing::CLASS))
            .tls(&[SHOP], "shop-tls")
            .path(SHOP, "/", "Prefix", "shop-web", 80)
            .path(SHOP, "/api", "Prefix", "shop-api", 80)
            .to_yaml(),
    );
    env.write("shop.yaml", &docs)?;
    env.start_proxy(&[])?;
    println!(
        "11. gangplank-ingress on node-a ({}:443), Ingress demo/shop: https://{SHOP}/ → shop-web (pod-a2), /api → shop-api (pod-b1), certificate from Secret demo/shop-tls",
        env.node_ip()
    );
    let mut routed = true;
    let t = Instant::now();
    for (url, flags, want) in [
        (format!("https://{SHOP}/"), vec!["--http2"], "200 shop-web"),
        (
            format!("https://{SHOP}/api/orders?id=7"),
            vec!["--http2"],
            "200 shop-api",
        ),
        (
            format!("https://{SHOP}/apiary"),
            vec!["--http1.1"],
            "200 shop-web",
        ),
        (format!("http://{SHOP}/cart"), vec![], "308 -"),
    ] {
        let r = env.curl(&url, &flags)?;
        let served_by = r
            .headers
            .get("x-served-by")
            .and_then(|v| v.first())
            .map_or("-", String::as_str);
        let location = r
            .headers
            .get("location")
            .and_then(|v| v.first())
            .map(|l| format!(" → {l}"))
            .unwrap_or_default();
        println!(
            "   {url:<45} HTTP/{:<3} {} answered by {served_by}{location}",
            r.version, r.status
        );
        routed &= format!("{} {served_by}", r.status) == want;
    }
    let took = t.elapsed();
    let cert = env.served_cert(Some(SHOP))?;
    let default = env.served_cert(Some("unknown.example"))?;
    println!(
        "   certificate for SNI {SHOP}: CN={}; for an unknown name: CN={} (the default)",
        cert.cn, default.cn
    );
    card.add(
        "Ingress: HTTPS host and path routing, HTTP/2, the redirect",
        routed,
        format!("4 curl runs in {} ms", took.as_millis()),
    );
    card.add(
        "Ingress: certificate by SNI, default for unknown names",
        cert.cn == SHOP && default.cn != SHOP,
        "-".into(),
    );

    // A reload while requests run: a new path appears, nothing fails.
    let mut args = vec![
        "load".to_string(),
        "--host".into(),
        SHOP.into(),
        "--requests".into(),
        "2000".into(),
        "--concurrency".into(),
        "8".into(),
    ];
    args.extend(env.tls_args(SHOP));
    let load = env.spawn_gp_http(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    docs.push(
        ing::Ingress::new("demo", "shop-search")
            .class(Some(ing::CLASS))
            .path(SHOP, "/search", "Exact", "shop-api", 80)
            .to_yaml(),
    );
    env.write("shop.yaml", &docs)?;
    let (r, took) = env.curl_until(
        &format!("https://{SHOP}/search"),
        &[],
        Duration::from_secs(5),
        // Until then the Prefix `/` of demo/shop answers it, from shop-web.
        |r| {
            r.headers
                .get("x-served-by")
                .and_then(|v| v.first())
                .is_some_and(|s| s == "shop-api")
        },
    );
    let r = r?;
    let out = load.wait_with_output(Duration::from_secs(60))?;
    let summary: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| {
            format!(
                "gp-http load printed no summary: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    println!(
        "   Ingress demo/shop-search (Exact /search → shop-api) added while 2,000 HTTPS requests ran: served ({}) {} ms after the write; requests ok {}, failed {} ({:.0} requests/s)",
        r.status,
        took.as_millis(),
        summary["ok"],
        summary["failed"],
        summary["ok"].as_f64().unwrap_or(0.0) * 1000.0
            / summary["elapsed_ms"].as_f64().unwrap_or(f64::INFINITY)
    );
    let rate = summary["ok"].as_f64().unwrap_or(0.0) * 1000.0
        / summary["elapsed_ms"].as_f64().unwrap_or(f64::INFINITY);
    card.add(
        "Ingress: a new route served under load, no request failed",
        summary["failed"].as_f64() == Some(0.0) && r.status == 200,
        format!(
            "served {} ms after the write; {rate:.0} requests/s",
            took.as_millis()
        ),
    );
    let log = env.proxy().access_log();
    if let Some(line) = log.iter().rev().find(|l| l["path"] == "/search") {
        println!("   access log line: {line}");
    }
    println!();
    Ok(())
}
