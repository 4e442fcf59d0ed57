//! ClusterIP services through the socket-level load balancer, end to end:
//! real agents on simulated nodes, real sockets in pods.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use gangplank_tests::agent::Agent;
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::{Cluster, ProbeResult, Proc};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 11);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

/// The usual cluster: node-a with pod-a1, pod-a2; node-b with pod-b1.
fn cluster(test: &str) -> Cluster {
    Cluster::new(
        test,
        &[
            ("node-a", &["pod-a1", "pod-a2", "client-a"]),
            ("node-b", &["pod-b1"]),
        ],
    )
    .expect("building the simulated cluster")
}

/// Start gp-probe servers in `pods`.
fn serve(c: &Cluster, pods: &[&str]) -> Vec<Proc> {
    pods.iter()
        .map(|p| {
            c.serve(p, &[TCP_PORT], &[UDP_PORT])
                .unwrap_or_else(|e| panic!("server in {p}: {e:#}"))
        })
        .collect()
}

/// A web service on VIP: `http` 80/TCP → named port, `dns` 53/UDP → 5353.
fn web_service() -> Service {
    Service::cluster_ip("default", "web", VIP)
        .port("http", 80, "TCP", Target::Name("http-alt".into()))
        .port("dns", 53, "UDP", Target::Number(UDP_PORT))
}

fn web_slice(c: &Cluster, pods: &[&str]) -> EndpointSlice {
    let mut slice = EndpointSlice::new("default", "web", "web-abc12")
        .port("http", TCP_PORT, "TCP")
        .port("dns", UDP_PORT, "UDP");
    for p in pods {
        let pod = c.pod(p);
        slice = slice.endpoint(Endpoint::ready(pod.ip, &pod.node));
    }
    slice
}

fn write_web(c: &Cluster, pods: &[&str]) {
    manifests::write(
        c.manifests_dir(),
        "web.yaml",
        &[web_service().to_yaml(), web_slice(c, pods).to_yaml()],
    )
    .expect("writing manifests");
}

fn probe(c: &Cluster, from: &str, args: &[&str]) -> Vec<ProbeResult> {
    c.probe(from, args)
        .unwrap_or_else(|e| panic!("probe from {from} {args:?}: {e:#}"))
}

fn tcp(c: &Cluster, from: &str, vip: Ipv4Addr, port: u16, count: usize) -> Vec<ProbeResult> {
    probe(
        c,
        from,
        &[
            "tcp",
            &format!("{vip}:{port}"),
            "--count",
            &count.to_string(),
        ],
    )
}

/// Which pod answered each attempt; panics on a failed attempt.
fn answered_by(results: &[ProbeResult]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in results {
        assert!(r.ok, "connection failed: {r:?}");
        let pod = r
            .pod()
            .unwrap_or_else(|| panic!("reply without pod name: {r:?}"));
        *seen.entry(pod.to_string()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn pod_reaches_a_two_pod_service_over_tcp_and_udp() {
    let c = cluster("tcp-udp");
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    write_web(&c, &["pod-a2", "pod-b1"]);
    let _agent = Agent::start(&c, "node-a").expect("agent");
    let client_ip = c.pod("client-a").ip;

    let results = tcp(&c, "client-a", VIP, 80, 20);
    let seen = answered_by(&results);
    assert!(
        seen.keys().all(|p| p == "pod-a2" || p == "pod-b1"),
        "only the two backends answer: {seen:?}"
    );
    for r in &results {
        assert_eq!(
            r.peer.as_deref(),
            Some("198.18.200.10:80"),
            "getpeername() must show the ClusterIP, not the backend: {r:?}"
        );
        assert_eq!(
            r.client_addr().map(|a| a.ip()),
            Some(std::net::IpAddr::V4(client_ip)),
            "the backend sees the pod's own address (no SNAT): {r:?}"
        );
    }

    // Unconnected UDP: the reply must appear to come from the ClusterIP.
    let udp = probe(
        &c,
        "client-a",
        &["udp", &format!("{VIP}:53"), "--count", "10"],
    );
    for r in &udp {
        assert!(r.ok, "UDP attempt failed: {r:?}");
        assert_eq!(
            r.from.as_deref(),
            Some("198.18.200.10:53"),
            "reply source: {r:?}"
        );
    }
    answered_by(&udp);

    // Connected UDP: getpeername and the reply both show the ClusterIP.
    let udp = probe(
        &c,
        "client-a",
        &["udp", &format!("{VIP}:53"), "--count", "10", "--connected"],
    );
    for r in &udp {
        assert!(r.ok, "connected UDP attempt failed: {r:?}");
        assert_eq!(r.peer.as_deref(), Some("198.18.200.10:53"), "{r:?}");
    }
    answered_by(&udp);
}

#[test]
fn two_hundred_connections_spread_over_both_backends() {
    let c = cluster("spread");
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    write_web(&c, &["pod-a2", "pod-b1"]);
    let _agent = Agent::start(&c, "node-a").expect("agent");

    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 200));
    for pod in ["pod-a2", "pod-b1"] {
        let n = seen.get(pod).copied().unwrap_or(0);
        assert!(
            n >= 50,
            "each backend should get at least 25% of 200 connections; {pod} got {n}: {seen:?}"
        );
    }
}

#[test]
fn pod_on_node_a_reaches_a_backend_on_node_b_and_node_processes_too() {
    let c = cluster("cross-node");
    let _servers = serve(&c, &["pod-b1"]);
    write_web(&c, &["pod-b1"]);
    let _agent = Agent::start(&c, "node-a").expect("agent");

    let seen = answered_by(&tcp(&c, "pod-a1", VIP, 80, 5));
    assert_eq!(seen.get("pod-b1"), Some(&5), "{seen:?}");

    // A process of the node itself (node-a's cgroup, node-a's netns).
    let results = c
        .probe_from_node("node-a", ["tcp", &format!("{VIP}:80"), "--count", "3"])
        .expect("probe from node-a");
    assert_eq!(answered_by(&results).get("pod-b1"), Some(&3));

    // node-b runs no agent: its pods' connections to the VIP are not
    // translated (the programs are scoped to node-a's cgroup subtree).
    let r = tcp(&c, "pod-b1", VIP, 80, 1);
    assert!(
        !r[0].ok,
        "node-b has no agent, the VIP must not work there: {:?}",
        r[0]
    );
}

#[test]
fn named_target_ports_multi_port_and_tcp_udp_on_the_same_port() {
    let c = cluster("ports");
    // pod-a2 listens on 8080/tcp and 5353/udp; pod-b1 the same.
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    // Port 53 over TCP goes to pod-a2 only, port 53 over UDP to pod-b1 only,
    // through two slices with different port names.
    let svc = Service::cluster_ip("default", "dns", VIP2)
        .port("dns-tcp", 53, "TCP", Target::Name("dns-tcp".into()))
        .port("dns-udp", 53, "UDP", Target::Name("dns-udp".into()));
    let a = EndpointSlice::new("default", "dns", "dns-a")
        .port("dns-tcp", TCP_PORT, "TCP")
        .endpoint(Endpoint::ready(c.pod("pod-a2").ip, "node-a"));
    let b = EndpointSlice::new("default", "dns", "dns-b")
        .port("dns-udp", UDP_PORT, "UDP")
        .endpoint(Endpoint::ready(c.pod("pod-b1").ip, "node-b"));
    manifests::write(
        c.manifests_dir(),
        "dns.yaml",
        &[svc.to_yaml(), a.to_yaml(), b.to_yaml()],
    )
    .expect("write");
    write_web(&c, &["pod-b1"]);
    let _agent = Agent::start(&c, "node-a").expect("agent");

    assert_eq!(
        answered_by(&tcp(&c, "client-a", VIP2, 53, 5)).get("pod-a2"),
        Some(&5)
    );
    let udp = probe(
        &c,
        "client-a",
        &["udp", &format!("{VIP2}:53"), "--count", "5"],
    );
    assert_eq!(answered_by(&udp).get("pod-b1"), Some(&5), "{udp:?}");
    // The second port of the multi-port web service.
    let udp = probe(
        &c,
        "client-a",
        &["udp", &format!("{VIP}:53"), "--count", "3"],
    );
    assert_eq!(answered_by(&udp).get("pod-b1"), Some(&3), "{udp:?}");
}

#[test]
fn several_slices_and_terminating_fallback() {
    let c = cluster("slices");
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    let svc = web_service();
    let s1 = EndpointSlice::new("default", "web", "web-1")
        .port("http", TCP_PORT, "TCP")
        .endpoint(Endpoint::ready(c.pod("pod-a2").ip, "node-a"));
    let s2 = EndpointSlice::new("default", "web", "web-2")
        .port("http", TCP_PORT, "TCP")
        .endpoint(Endpoint::ready(c.pod("pod-b1").ip, "node-b"));
    manifests::write(
        c.manifests_dir(),
        "web.yaml",
        &[svc.to_yaml(), s1.to_yaml(), s2.to_yaml()],
    )
    .expect("write");
    let agent = Agent::start(&c, "node-a").expect("agent");
    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 60));
    assert_eq!(seen.len(), 2, "both slices' endpoints serve: {seen:?}");

    // Both endpoints terminating, only pod-b1 still serving: it is used
    // (KEP-1669), and service list shows it as terminating.
    let s1 = EndpointSlice::new("default", "web", "web-1")
        .port("http", TCP_PORT, "TCP")
        .endpoint(Endpoint {
            serving: false,
            ..Endpoint::terminating(c.pod("pod-a2").ip, "node-a")
        });
    let s2 = EndpointSlice::new("default", "web", "web-2")
        .port("http", TCP_PORT, "TCP")
        .endpoint(Endpoint::terminating(c.pod("pod-b1").ip, "node-b"));
    manifests::write(
        c.manifests_dir(),
        "web.yaml",
        &[svc.to_yaml(), s1.to_yaml(), s2.to_yaml()],
    )
    .expect("write");
    wait_for_backends(&agent, &c, "198.18.200.10:80", 1);
    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 20));
    assert_eq!(seen.get("pod-b1"), Some(&20), "{seen:?}");
    let list = agent.service_list(&c).expect("service list");
    let text = list.to_string();
    assert!(
        text.contains("terminating"),
        "service list shows the terminating backend: {text}"
    );
}

#[test]
fn no_endpoints_is_connection_refused_at_once() {
    let c = cluster("refused");
    write_web(&c, &[]);
    let _agent = Agent::start(&c, "node-a").expect("agent");
    let started = Instant::now();
    let r = tcp(&c, "client-a", VIP, 80, 1);
    assert!(!r[0].ok, "{:?}", r[0]);
    assert_eq!(
        r[0].errno,
        Some(libc::ECONNREFUSED),
        "kube-proxy REJECTs: {:?}",
        r[0]
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal must not wait for a timeout"
    );
    let u = probe(
        &c,
        "client-a",
        &["udp", &format!("{VIP}:53"), "--count", "1"],
    );
    assert_eq!(
        u[0].errno,
        Some(libc::ECONNREFUSED),
        "UDP send refused too: {:?}",
        u[0]
    );
}

#[test]
fn client_ip_affinity_pins_fifty_connections_to_one_backend() {
    let c = cluster("affinity");
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    let svc = web_service().client_ip_affinity(Some(600));
    manifests::write(
        c.manifests_dir(),
        "web.yaml",
        &[
            svc.to_yaml(),
            web_slice(&c, &["pod-a2", "pod-b1"]).to_yaml(),
        ],
    )
    .expect("write");
    let _agent = Agent::start(&c, "node-a").expect("agent");
    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 50));
    assert_eq!(seen.len(), 1, "all 50 connections on one backend: {seen:?}");
    // Without affinity the same 50 spread (control).
    write_web(&c, &["pod-a2", "pod-b1"]);
    std::thread::sleep(Duration::from_secs(1));
    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 50));
    assert_eq!(seen.len(), 2, "affinity off again: {seen:?}");
}

#[test]
fn headless_externalname_and_foreign_proxy_services_are_left_alone() {
    let c = cluster("ignored");
    let _servers = serve(&c, &["pod-a2"]);
    let docs = vec![
        Service::headless("default", "headless")
            .port("http", 80, "TCP", Target::Number(TCP_PORT))
            .to_yaml(),
        EndpointSlice::new("default", "headless", "headless-1")
            .port("http", TCP_PORT, "TCP")
            .endpoint(Endpoint::ready(c.pod("pod-a2").ip, "node-a"))
            .to_yaml(),
        Service::external_name("default", "ext", "example.invalid").to_yaml(),
        Service::cluster_ip("default", "other", VIP2)
            .label("service.kubernetes.io/service-proxy-name", "someone-else")
            .port("http", 80, "TCP", Target::Number(TCP_PORT))
            .to_yaml(),
        EndpointSlice::new("default", "other", "other-1")
            .port("http", TCP_PORT, "TCP")
            .endpoint(Endpoint::ready(c.pod("pod-a2").ip, "node-a"))
            .to_yaml(),
    ];
    manifests::write(c.manifests_dir(), "ignored.yaml", &docs).expect("write");
    write_web(&c, &["pod-a2"]);
    let agent = Agent::start(&c, "node-a").expect("agent");
    let list = agent.service_list(&c).expect("service list");
    let frontends: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|f| f["frontend"].as_str())
        .collect();
    assert_eq!(
        frontends,
        vec!["198.18.200.10:53", "198.18.200.10:80"],
        "only web is served"
    );
    let r = tcp(&c, "client-a", VIP2, 80, 1);
    assert!(
        !r[0].ok,
        "a service of another proxy is not translated: {:?}",
        r[0]
    );
}

/// Poll `service list` until `frontend` has `n` backends.
fn wait_for_backends(agent: &Agent, c: &Cluster, frontend: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list = agent.service_list(c).expect("service list");
        let count = list
            .as_array()
            .and_then(|a| a.iter().find(|f| f["frontend"] == frontend))
            .and_then(|f| f["backends"].as_array().map(Vec::len));
        if count == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{frontend} should have {n} backends, has {count:?}: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn removing_an_endpoint_stops_new_connections_to_it_within_a_second() {
    let c = cluster("remove-ep");
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    write_web(&c, &["pod-a2", "pod-b1"]);
    let _agent = Agent::start(&c, "node-a").expect("agent");
    assert_eq!(answered_by(&tcp(&c, "client-a", VIP, 80, 40)).len(), 2);

    write_web(&c, &["pod-b1"]);
    std::thread::sleep(Duration::from_secs(1));
    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 50));
    assert_eq!(
        seen.get("pod-b1"),
        Some(&50),
        "1 s after the endpoint left the manifest, no new connection reaches it: {seen:?}"
    );

    // A new service file, then its removal.
    manifests::write(
        c.manifests_dir(),
        "extra.yaml",
        &[
            Service::cluster_ip("default", "extra", VIP2)
                .port("http", 81, "TCP", Target::Number(TCP_PORT))
                .to_yaml(),
            EndpointSlice::new("default", "extra", "extra-1")
                .port("http", TCP_PORT, "TCP")
                .endpoint(Endpoint::ready(c.pod("pod-a2").ip, "node-a"))
                .to_yaml(),
        ],
    )
    .expect("write");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        answered_by(&tcp(&c, "client-a", VIP2, 81, 3)).get("pod-a2"),
        Some(&3)
    );
    manifests::remove(c.manifests_dir(), "extra.yaml").expect("remove");
    std::thread::sleep(Duration::from_secs(1));
    let r = tcp(&c, "client-a", VIP2, 81, 1);
    assert!(!r[0].ok, "removed file, removed service: {:?}", r[0]);
}

#[test]
fn a_live_tcp_connection_survives_an_agent_restart() {
    let c = cluster("restart");
    let _servers = serve(&c, &["pod-a2"]);
    write_web(&c, &["pod-a2"]);
    let mut agent = Agent::start(&c, "node-a").expect("agent");

    let mut hold = c
        .spawn_probe("client-a", ["hold", &format!("{VIP}:80")])
        .expect("hold");
    let first = hold
        .wait_for_line(|l| l.contains("\"ok\":true"), Duration::from_secs(5))
        .expect("connected");
    assert!(
        first.contains("198.18.200.10:80"),
        "peer is the VIP: {first}"
    );
    hold.send_line("before").expect("send");
    hold.wait_for_line(|l| l.contains("line=before"), Duration::from_secs(5))
        .expect("reply before restart");

    agent.stop().expect("SIGTERM stops the agent cleanly");
    // With the agent gone the datapath keeps serving new connections too.
    assert_eq!(
        answered_by(&tcp(&c, "client-a", VIP, 80, 3)).get("pod-a2"),
        Some(&3)
    );
    agent.restart(&c).expect("restart");

    hold.send_line("after").expect("send");
    hold.wait_for_line(|l| l.contains("line=after"), Duration::from_secs(5))
        .expect("the connection made before the restart still works");
    assert_eq!(
        answered_by(&tcp(&c, "client-a", VIP, 80, 3)).get("pod-a2"),
        Some(&3)
    );
}

#[test]
fn restart_reconciles_pinned_state_with_the_manifests() {
    let c = cluster("reconcile");
    let _servers = serve(&c, &["pod-a2", "pod-b1"]);
    write_web(&c, &["pod-a2", "pod-b1"]);
    manifests::write(
        c.manifests_dir(),
        "extra.yaml",
        &[Service::cluster_ip("default", "extra", VIP2)
            .port("http", 81, "TCP", Target::Number(TCP_PORT))
            .to_yaml()],
    )
    .expect("write");
    let mut agent = Agent::start(&c, "node-a").expect("agent");
    let before = agent.service_list(&c).expect("list");
    assert_eq!(before.as_array().map(Vec::len), Some(3), "{before}");

    agent.stop().expect("stop");
    // While the agent is down: a service disappears, an endpoint changes.
    manifests::remove(c.manifests_dir(), "extra.yaml").expect("remove");
    write_web(&c, &["pod-b1"]);
    agent.restart(&c).expect("restart");

    let after = agent.service_list(&c).expect("list");
    let frontends = after.as_array().expect("array");
    assert_eq!(frontends.len(), 2, "the stale service is gone: {after}");
    for f in frontends {
        let backends = f["backends"].as_array().expect("backends");
        assert_eq!(
            backends.len(),
            1,
            "nothing duplicated, stale backend gone: {f}"
        );
        assert_eq!(f["state"], "active", "{f}");
    }
    let seen = answered_by(&tcp(&c, "client-a", VIP, 80, 10));
    assert_eq!(seen.get("pod-b1"), Some(&10), "{seen:?}");
}

#[test]
fn an_invalid_manifest_next_to_a_valid_one_leaves_the_valid_service_working() {
    let c = cluster("invalid");
    let _servers = serve(&c, &["pod-a2"]);
    write_web(&c, &["pod-a2"]);
    // A file that is not YAML at all, and a file with one bad object next
    // to a good one.
    std::fs::write(
        c.manifests_dir().join("broken.yaml"),
        "kind: Service\n  : : [unclosed\n",
    )
    .expect("write");
    manifests::write(
        c.manifests_dir(),
        "mixed.yaml",
        &[
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  clusterIP: 198.18.200.300\n  ports:\n  - port: 80\n".to_string(),
            Service::cluster_ip("default", "good", VIP2)
                .port("http", 80, "TCP", Target::Number(TCP_PORT))
                .to_yaml(),
            EndpointSlice::new("default", "good", "good-1")
                .port("http", TCP_PORT, "TCP")
                .endpoint(Endpoint::ready(c.pod("pod-a2").ip, "node-a"))
                .to_yaml(),
        ],
    )
    .expect("write");
    let agent = Agent::start(&c, "node-a").expect("agent");
    let log = agent.log();
    assert!(
        log.contains("broken.yaml"),
        "the broken file is named: {log}"
    );
    assert!(
        log.contains("mixed.yaml") && log.contains("default/bad"),
        "the bad object is named with its file: {log}"
    );
    assert_eq!(
        answered_by(&tcp(&c, "client-a", VIP, 80, 3)).get("pod-a2"),
        Some(&3)
    );
    assert_eq!(
        answered_by(&tcp(&c, "client-a", VIP2, 80, 3)).get("pod-a2"),
        Some(&3)
    );
}

fn uninstall(c: &Cluster, bpffs: &std::path::Path, cgroup: Option<&std::path::Path>) -> String {
    let mut cmd = gangplank_tests::agent::gangplank_cmd().expect("gangplank");
    cmd.arg("uninstall").arg("--bpffs").arg(bpffs);
    if let Some(cgroup) = cgroup {
        cmd.arg("--cgroup").arg(cgroup);
    }
    let out = c
        .run_in_node("node-a", cmd, Duration::from_secs(10))
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn uninstall_detaches_and_unpins_everything() {
    let c = cluster("uninstall");
    let _servers = serve(&c, &["pod-a2"]);
    write_web(&c, &["pod-a2"]);
    let mut agent = Agent::start(&c, "node-a").expect("agent");
    assert!(tcp(&c, "client-a", VIP, 80, 1)[0].ok);
    agent.stop().expect("stop");
    assert!(
        tcp(&c, "client-a", VIP, 80, 1)[0].ok,
        "a stopped agent leaves the datapath"
    );

    uninstall(&c, &agent.bpffs, None);
    assert!(!agent.bpffs.exists(), "pin directory removed");
    let r = tcp(&c, "client-a", VIP, 80, 1);
    assert!(!r[0].ok, "the VIP is no longer translated: {:?}", r[0]);
}

#[test]
fn uninstall_with_cgroup_finds_links_whose_pins_are_elsewhere() {
    let c = cluster("uninstall-cg");
    let _servers = serve(&c, &["pod-a2"]);
    write_web(&c, &["pod-a2"]);
    let mut agent = Agent::start(&c, "node-a").expect("agent");
    agent.stop().expect("stop");
    assert!(tcp(&c, "client-a", VIP, 80, 1)[0].ok);

    // The operator does not remember the agent's --bpffs: --cgroup still
    // finds gangplank's links at the cgroup and detaches them.
    let elsewhere = c.bpffs().join("not-the-agents");
    let out = uninstall(&c, &elsewhere, Some(&agent.cgroup));
    for program in [
        "gp_connect4",
        "gp_sendmsg4",
        "gp_recvmsg4",
        "gp_getpeername4",
    ] {
        assert!(out.contains(&format!("detached {program}")), "{out}");
    }
    let r = tcp(&c, "client-a", VIP, 80, 1);
    assert!(!r[0].ok, "the VIP is no longer translated: {:?}", r[0]);
}

#[test]
fn pinned_maps_of_another_layout_are_refused_with_a_clear_message() {
    let c = cluster("layout");
    write_web(&c, &[]);
    let node = c.node("node-a");
    let maps = node.bpffs.join("maps");
    std::fs::create_dir_all(&maps).expect("maps dir");
    // As an older gangplank with a different key layout might have left it.
    gangplank_tests::bpf::pin_hash_map(&maps.join("GP_SERVICES"), 8, 16, 1024)
        .expect("planting a map");

    let mut cmd = gangplank_tests::agent::gangplank_cmd().expect("gangplank");
    cmd.arg("agent")
        .arg("--manifests")
        .arg(c.manifests_dir())
        .args(["--node-name", "node-a", "--cgroup"])
        .arg(&node.cgroup)
        .arg("--bpffs")
        .arg(&node.bpffs);
    let out = c
        .spawn_agent_process("node-a", cmd)
        .expect("spawn")
        .wait_with_output(Duration::from_secs(20))
        .expect("agent exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must refuse: {stderr}");
    assert!(
        stderr.contains("pinned map GP_SERVICES") && stderr.contains("gangplank uninstall"),
        "the error names the map and the way out: {stderr}"
    );
    // Nothing was attached: the VIP is not translated.
    let r = tcp(&c, "client-a", VIP, 80, 1);
    assert!(
        r[0].errno != Some(libc::ECONNREFUSED),
        "no program attached: {:?}",
        r[0]
    );
}
