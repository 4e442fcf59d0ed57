//! `cargo xtask demo`: a two-node simulated cluster, one agent per node,
//! real traffic through a ClusterIP, and a short report of who answered.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangplank_tests::agent::Agent;
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::{Cluster, ProbeResult};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const PODS: [&str; 3] = ["pod-a1", "pod-a2", "pod-b1"];

fn service() -> Service {
    Service::cluster_ip("demo", "hello", VIP)
        .port("http", 80, "TCP", Target::Name("http".into()))
        .port("echo", 53, "UDP", Target::Number(UDP_PORT))
}

fn slice(c: &Cluster, pods: &[&str]) -> EndpointSlice {
    let mut s = EndpointSlice::new("demo", "hello", "hello-x7k2p")
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

/// "pod-a1 ×4, pod-a2 ×3" and the distinct values of `field`.
fn summarize(
    results: &[ProbeResult],
    field: impl Fn(&ProbeResult) -> Option<String>,
) -> Result<(String, Vec<String>)> {
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = Vec::new();
    for r in results {
        if !r.ok {
            bail!("request failed: {r:?}");
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

pub fn run() -> Result<()> {
    gangplank_tests::check_privileges()?;
    let started = Instant::now();
    let c = Cluster::new(
        "demo",
        &[("node-a", &["pod-a1", "pod-a2"]), ("node-b", &["pod-b1"])],
    )
    .context("building the simulated cluster")?;

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
    write(&c, &PODS)?;
    println!(
        "  Service demo/hello  ClusterIP {VIP}  http 80/TCP → pods' :{HTTP_PORT} (named targetPort), echo 53/UDP → :{UDP_PORT}"
    );

    let mut agents = ["node-a", "node-b"]
        .iter()
        .map(|n| Agent::start(&c, n))
        .collect::<Result<Vec<_>>>()
        .context("starting the agents")?;
    println!("  agents running on node-a and node-b (socket LB attached to each node's cgroup)\n");

    let url = format!("{VIP}:80");
    let results = c.probe("pod-a1", ["tcp", url.as_str(), "--count", "12"])?;
    let (answered, clients) = summarize(&results, |r| r.client_addr().map(|a| a.ip().to_string()))?;
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

    let results = c.probe("pod-b1", ["tcp", url.as_str(), "--count", "12"])?;
    let (answered, _) = summarize(&results, |_| None)?;
    println!("2. 12 HTTP requests from pod-b1 on node-b (its own agent)");
    println!("   answered by:              {answered}\n");

    let echo = format!("{VIP}:53");
    let results = c.probe("pod-a2", ["udp", echo.as_str(), "--count", "6"])?;
    let (answered, froms) = summarize(&results, |r| r.from.clone())?;
    println!("3. 6 UDP datagrams (unconnected) from pod-a2 to {echo}");
    println!("   answered by:              {answered}");
    println!(
        "   replies came from:        {} (translated back to the ClusterIP)\n",
        froms.join(", ")
    );

    write(&c, &["pod-a1", "pod-b1"])?;
    let change = Instant::now();
    let line = agents[0].wait_for_log(|l| l.contains("maps updated"), Duration::from_secs(5))?;
    let noticed = change.elapsed();
    let applied_us = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_us="))
        .unwrap_or("?");
    let results = c.probe("pod-a1", ["tcp", url.as_str(), "--count", "12"])?;
    let (answered, _) = summarize(&results, |_| None)?;
    println!("4. pod-a2 removed from the EndpointSlice file:");
    println!(
        "   node-a's agent saw the change {} ms after the write and updated its maps in {applied_us} µs",
        noticed.as_millis()
    );
    println!("   answered by:              {answered}\n");

    let mut list = gangplank_tests::agent::gangplank_cmd()?;
    list.args(["service", "list", "--bpffs"])
        .arg(&agents[0].bpffs);
    let out = c.run_in_node("node-a", list, Duration::from_secs(10))?;
    println!("5. `gangplank service list` on node-a (read from the pinned maps):");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }

    drop(agents);
    drop(c);
    println!(
        "\ndone in {:.1} s; namespaces, cgroups, pins and processes removed.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
