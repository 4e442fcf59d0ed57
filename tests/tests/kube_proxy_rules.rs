//! The kube-proxy rules the Services benchmark compares gangplank with
//! (`gangplank::kube_proxy`) really proxy: applied on node-a of a
//! simulated cluster with `iptables-nft-restore` and with `nft -f`, they
//! take a pod to every endpoint through the cluster IP and a client outside
//! through the NodePort, and a single-endpoint change (kube-proxy's
//! partial/incremental sync) takes the removed endpoint out of rotation.
//! A benchmark of rules that did not work would measure nothing.
//!
//! Need root, iptables and nftables (`cargo xtask test` installs them).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use gangplank::kube_proxy::{self, ClusterRanges, ProxiedPort};
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::northsouth::{answered_by, probe};
use gangplank_tests::{Cluster, Proc};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
const NODE_PORT: u16 = 30080;
const TARGET: u16 = 8080;
const PODS: [&str; 3] = ["pod-a1", "pod-a2", "pod-b1"];
const RANGES: ClusterRanges = ClusterRanges {
    cluster_cidr: (Ipv4Addr::new(198, 19, 0, 0), 16),
    service_cidr: (Ipv4Addr::new(198, 18, 128, 0), 17),
};

struct Setup {
    c: Cluster,
    _servers: Vec<Proc>,
    ports: Vec<ProxiedPort>,
    web: usize,
}

/// The cluster, servers in every pod but the client (a pod reaching itself
/// through a Service needs the CNI's hairpin mode on its bridge port, which
/// the simulated cluster does not set: not what is tested here), `default/web` (NodePort, the three
/// pods) among 50 other Services, and the service ports read back from
/// the manifests.
fn setup(test: &str) -> Setup {
    let c = Cluster::new(
        test,
        &[
            ("node-a", &["pod-client", "pod-a1", "pod-a2"]),
            ("node-b", &["pod-b1"]),
        ],
    )
    .expect("building the simulated cluster");
    let servers = PODS
        .iter()
        .map(|p| c.serve(p, &[TARGET], &[]).expect("server"))
        .collect();
    let web = Service::node_port_service("default", "web", CLUSTER_IP)
        .port("http", 80, "TCP", Target::Number(TARGET))
        .node_port("http", NODE_PORT);
    let mut slice = EndpointSlice::new("default", "web", "web-abc12").port("http", TARGET, "TCP");
    for p in PODS {
        slice = slice.endpoint(Endpoint::ready(c.pod(p).ip, &c.pod(p).node));
    }
    manifests::write(
        c.manifests_dir(),
        "web.yaml",
        &[web.to_yaml(), slice.to_yaml()],
    )
    .unwrap();
    for i in 0..50u8 {
        let name = format!("other-{i}");
        let svc = Service::cluster_ip("default", &name, Ipv4Addr::new(198, 18, 201, i)).port(
            "http",
            80,
            "TCP",
            Target::Number(TARGET),
        );
        let slice = EndpointSlice::new("default", &name, &format!("{name}-x"))
            .port("http", TARGET, "TCP")
            .endpoint(Endpoint::ready(Ipv4Addr::new(198, 19, 9, i), "node-x"));
        manifests::write(
            c.manifests_dir(),
            &format!("{name}.yaml"),
            &[svc.to_yaml(), slice.to_yaml()],
        )
        .unwrap();
    }
    let ports = kube_proxy::proxied_ports_in_dir(c.manifests_dir()).expect("reading manifests");
    assert_eq!(ports.len(), 51);
    let web = ports.iter().position(|p| p.service.name == "web").unwrap();
    Setup {
        c,
        _servers: servers,
        ports,
        web,
    }
}

fn run_on_node_a(c: &Cluster, program: &str, args: &[&str], input: &str) {
    let file = c.manifests_dir().with_file_name(format!("{program}.in"));
    std::fs::write(&file, input).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args).arg(&file);
    let out = c
        .run_in_node("node-a", cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{program}: {e:#}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\ninput:\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pods that answered `count` connections from `from` to `addr`, all of
/// which must succeed.
fn answered(c: &Cluster, from: &str, addr: &str, count: usize) -> Vec<String> {
    let results = probe(c, from, &["tcp", addr, "--count", &count.to_string()]);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{from} → {addr}: {failed:?}");
    answered_by(&results).into_keys().collect()
}

/// ClusterIP from a pod and NodePort from the client both reach every pod.
fn assert_serves_all(c: &Cluster) {
    let node_a = c.node("node-a").address;
    for (from, addr) in [
        ("pod-client", format!("{CLUSTER_IP}:80")),
        ("client", format!("{node_a}:{NODE_PORT}")),
    ] {
        let pods = answered(c, from, &addr, 40);
        assert_eq!(pods, PODS, "{from} → {addr}: answered by {pods:?}");
    }
}

/// The service ports with pod-a2 gone from `web`'s endpoints: the two
/// left must then answer everything.
fn without_pod_a2(s: &Setup) -> Vec<ProxiedPort> {
    let mut ports = s.ports.clone();
    let a2 = s.c.pod("pod-a2").ip;
    ports[s.web].endpoints.retain(|e| *e.ip() != a2);
    ports
}

#[test]
fn iptables_mode_rules_proxy_and_follow_an_endpoint_change() {
    let s = setup("kp-iptables");
    let rules = kube_proxy::iptables_restore(&s.ports, &RANGES);
    run_on_node_a(&s.c, "iptables-nft-restore", &[], &rules);
    assert_serves_all(&s.c);

    let after = without_pod_a2(&s);
    let change = kube_proxy::iptables_endpoint_change(&after, s.web, &s.ports[s.web], &RANGES);
    run_on_node_a(&s.c, "iptables-nft-restore", &["--noflush"], &change);
    let pods = answered(&s.c, "pod-client", &format!("{CLUSTER_IP}:80"), 40);
    assert_eq!(pods, ["pod-a1", "pod-b1"], "after the change");
}

#[test]
fn nftables_mode_rules_proxy_and_follow_an_endpoint_change() {
    let s = setup("kp-nftables");
    let rules = kube_proxy::nft_ruleset(&s.ports, &RANGES);
    run_on_node_a(&s.c, "nft", &["-f"], &rules);
    assert_serves_all(&s.c);

    let after = without_pod_a2(&s);
    let change = kube_proxy::nft_endpoint_change(&after[s.web], &s.ports[s.web], &RANGES);
    run_on_node_a(&s.c, "nft", &["-f"], &change);
    let node_a = s.c.node("node-a").address;
    let pods = answered(&s.c, "client", &format!("{node_a}:{NODE_PORT}"), 40);
    assert_eq!(pods, ["pod-a1", "pod-b1"], "after the change");
}
