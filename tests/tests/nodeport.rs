//! NodePort, LoadBalancer and external-IP Services end to end: a client
//! outside the cluster, two nodes each running an agent with the tc/XDP
//! datapath on `eth0`, and real sockets (issue 3, section 7).
//!
//! Every test builds its own cluster:
//!
//! ```text
//! client 198.18.0.100 ── lan ──┬── node-a 198.18.0.10 ── pod-a1 198.19.1.10, pod-a2 .11
//!                              └── node-b 198.18.0.11 ── pod-b1 198.19.2.10, pod-b2 .11
//! ```
//!
//! The client has only the lan route: it reaches services through the
//! nodes' addresses (NodePort) or through /32 routes to a load-balancer or
//! external IP via a node, as an upstream router would have.
//!
//! Need root; run `cargo build` first (they start target/debug/gangplank).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use gangplank_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};
use gangplank_tests::agent::{Agent, AgentOpts};
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::northsouth::{answered_by, probe, v4, Env};
use gangplank_tests::probe::parse_lines;
use gangplank_tests::{Cluster, ProbeResult, Proc};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
/// `status.loadBalancer.ingress[].ip`; the client routes it via node-a.
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// `spec.externalIPs`; the client routes it via node-b.
const EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);
/// Service ports, node ports and the pods' ports.
const HTTP_PORT: u16 = 80;
const DNS_PORT: u16 = 53;
const NP_TCP: u16 = 30080;
const NP_UDP: u16 = 30053;
const HC_PORT: u16 = 32000;
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;

const PODS: &[&str] = &["pod-a1", "pod-a2", "pod-b1", "pod-b2"];

fn cluster(test: &str) -> Cluster {
    Cluster::new(
        test,
        &[
            ("node-a", &["pod-a1", "pod-a2"]),
            ("node-b", &["pod-b1", "pod-b2"]),
        ],
    )
    .expect("building the simulated cluster")
}

/// gp-probe servers (TCP 8080, UDP 5353) in `pods`.
fn serve(c: &Cluster, pods: &[&str]) -> Vec<Proc> {
    pods.iter()
        .map(|p| {
            c.serve(p, &[TCP_TARGET], &[UDP_TARGET])
                .unwrap_or_else(|e| panic!("server in {p}: {e:#}"))
        })
        .collect()
}

/// `default/web`: `http` 80/TCP (nodePort 30080) and `dns` 53/UDP
/// (nodePort 30053).
fn web(type_: &str) -> Service {
    let svc = match type_ {
        "NodePort" => Service::node_port_service("default", "web", CLUSTER_IP),
        "LoadBalancer" => Service::load_balancer("default", "web", CLUSTER_IP),
        other => panic!("service type {other}"),
    };
    svc.port("http", HTTP_PORT, "TCP", Target::Number(TCP_TARGET))
        .port("dns", DNS_PORT, "UDP", Target::Number(UDP_TARGET))
        .node_port("http", NP_TCP)
        .node_port("dns", NP_UDP)
}

fn slice(name: &str, endpoints: &[Endpoint]) -> EndpointSlice {
    let mut s = EndpointSlice::new("default", name, &format!("{name}-abc12"))
        .port("http", TCP_TARGET, "TCP")
        .port("dns", UDP_TARGET, "UDP");
    for e in endpoints {
        s = s.endpoint(e.clone());
    }
    s
}

fn ready(c: &Cluster, pods: &[&str]) -> Vec<Endpoint> {
    pods.iter()
        .map(|p| {
            let pod = c.pod(p);
            Endpoint::ready(pod.ip, &pod.node)
        })
        .collect()
}

fn write(c: &Cluster, file: &str, svc: &Service, endpoints: &[Endpoint]) {
    let name = file.trim_end_matches(".yaml");
    manifests::write(
        c.manifests_dir(),
        file,
        &[svc.to_yaml(), slice(name, endpoints).to_yaml()],
    )
    .expect("writing manifests");
}

/// Cluster, servers in every pod, `svc` with endpoints `pods`, and an agent
/// per node with `opts`.
fn setup(test: &str, svc: &Service, pods: &[&str], opts: AgentOpts) -> Env {
    let c = cluster(test);
    let servers = serve(&c, PODS);
    write(&c, "web.yaml", svc, &ready(&c, pods));
    let agents = Agent::start_all(&c, &opts).expect("starting the agents");
    Env { agents, servers, c }
}

fn tcp(c: &Cluster, from: &str, ip: Ipv4Addr, port: u16, count: usize) -> Vec<ProbeResult> {
    probe(
        c,
        from,
        &[
            "tcp",
            &format!("{ip}:{port}"),
            "--count",
            &count.to_string(),
        ],
    )
}

fn udp(
    c: &Cluster,
    from: &str,
    ip: Ipv4Addr,
    port: u16,
    count: usize,
    connected: bool,
) -> Vec<ProbeResult> {
    let addr = format!("{ip}:{port}");
    let count = count.to_string();
    let mut args = vec!["udp", &addr, "--count", &count];
    if connected {
        args.push("--connected");
    }
    probe(c, from, &args)
}

/// The client address the backend saw, parsed.
fn seen_client(r: &ProbeResult) -> SocketAddr {
    r.client_addr()
        .unwrap_or_else(|| panic!("no client= in the reply: {r:?}"))
}

/// SNAT rules of externalTrafficPolicy Cluster for a request that entered
/// through `entry` (a node name): a backend on `entry` sees the client, a
/// backend elsewhere sees `entry`'s address with a port from the SNAT range.
fn assert_snat_rules(env: &Env, entry: &str, results: &[ProbeResult]) {
    for r in results {
        let pod = r.pod().unwrap_or_else(|| panic!("no pod= in {r:?}"));
        let client = seen_client(r);
        if env.c.pod(pod).node == entry {
            assert_eq!(
                v4(client),
                env.client_ip(),
                "a backend on the entry node ({entry}) must see the client's address (no SNAT): {r:?}"
            );
        } else {
            assert_eq!(
                v4(client),
                env.node_ip(entry),
                "a backend on another node must see the entry node {entry}'s address (SNAT): {r:?}"
            );
            assert!(
                (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&client.port()),
                "SNAT source port {} outside {SNAT_PORT_MIN}..={SNAT_PORT_MAX}: {r:?}",
                client.port()
            );
        }
    }
}

fn assert_peer(results: &[ProbeResult], ip: Ipv4Addr, port: u16) {
    let want = SocketAddr::from((ip, port)).to_string();
    for r in results {
        assert_eq!(
            r.peer.as_deref(),
            Some(want.as_str()),
            "the client must see the frontend as its peer: {r:?}"
        );
    }
}

fn assert_from(results: &[ProbeResult], ip: Ipv4Addr, port: u16) {
    let want = SocketAddr::from((ip, port)).to_string();
    for r in results {
        assert!(r.ok, "UDP attempt failed: {r:?}");
        assert_eq!(
            r.from.as_deref(),
            Some(want.as_str()),
            "UDP replies must come from the frontend address: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// externalTrafficPolicy: Cluster
// ---------------------------------------------------------------------------

fn cluster_policy_reaches_both_nodes(test: &str, opts: AgentOpts) {
    let env = setup(test, &web("NodePort"), &["pod-a1", "pod-b1"], opts);
    for entry in ["node-a", "node-b"] {
        let ip = env.node_ip(entry);
        let results = tcp(&env.c, "client", ip, NP_TCP, 40);
        let seen = answered_by(&results);
        assert_eq!(
            seen.keys().map(String::as_str).collect::<Vec<_>>(),
            ["pod-a1", "pod-b1"],
            "40 connections through {entry} should reach the endpoints on both nodes: {seen:?}"
        );
        assert_peer(&results, ip, NP_TCP);
        assert_snat_rules(&env, entry, &results);
    }
}

#[test]
fn nodeport_cluster_policy_reaches_endpoints_on_both_nodes() {
    cluster_policy_reaches_both_nodes("np-cluster", AgentOpts::lan());
}

#[test]
fn nodeport_cluster_policy_tc_only() {
    cluster_policy_reaches_both_nodes("np-cluster-tc", AgentOpts::lan().xdp("off"));
}

#[test]
fn udp_nodeport_works_both_ways() {
    let env = setup(
        "np-udp",
        &web("NodePort"),
        &["pod-a1", "pod-b1"],
        AgentOpts::lan(),
    );
    for entry in ["node-a", "node-b"] {
        let ip = env.node_ip(entry);
        for connected in [false, true] {
            let results = udp(&env.c, "client", ip, NP_UDP, 30, connected);
            let seen = answered_by(&results);
            assert_eq!(
                seen.len(),
                2,
                "30 datagrams (fresh sockets) through {entry} should reach both endpoints: {seen:?}"
            );
            assert_from(&results, ip, NP_UDP);
            if connected {
                assert_peer(&results, ip, NP_UDP);
            }
            assert_snat_rules(&env, entry, &results);
        }
    }
}

// ---------------------------------------------------------------------------
// externalTrafficPolicy: Local and health checks
// ---------------------------------------------------------------------------

/// `GET /` on a health-check node port from the client: (status, JSON body).
fn health(c: &Cluster, node_ip: Ipv4Addr) -> (u16, serde_json::Value) {
    let r = tcp(c, "client", node_ip, HC_PORT, 1).remove(0);
    assert!(
        r.ok,
        "health check {node_ip}:{HC_PORT} did not answer: {r:?}"
    );
    let status = r
        .status
        .unwrap_or_else(|| panic!("health check answer is not HTTP: {r:?}"));
    let body = r.reply.as_deref().unwrap_or_default();
    let json = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("health check body is not JSON ({e}): {body:?}"));
    (status, json)
}

/// Poll until node `ip`'s health check answers `status` (the agent serves it
/// after its sync; a change of endpoints takes a moment).
fn wait_health(c: &Cluster, ip: Ipv4Addr, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tcp(c, "client", ip, HC_PORT, 1).remove(0);
        if r.ok && r.status == Some(status) {
            return health(c, ip).1;
        }
        assert!(
            Instant::now() < deadline,
            "health check on {ip}:{HC_PORT} should answer {status}; last answer: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn local_service() -> Service {
    web("LoadBalancer")
        .lb_ingress(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT)
}

#[test]
fn local_policy_keeps_the_client_address_and_the_node_without_endpoints_drops() {
    let env = setup(
        "np-local",
        &local_service(),
        &["pod-a1", "pod-a2"],
        AgentOpts::lan(),
    );
    let (a, b) = (env.node_ip("node-a"), env.node_ip("node-b"));

    let results = tcp(&env.c, "client", a, NP_TCP, 30);
    let seen = answered_by(&results);
    assert!(
        seen.keys().all(|p| p.starts_with("pod-a")),
        "Local: only node-a's endpoints: {seen:?}"
    );
    for r in &results {
        assert_eq!(
            v4(seen_client(r)),
            env.client_ip(),
            "Local: never SNAT: {r:?}"
        );
    }
    let results = udp(&env.c, "client", a, NP_UDP, 10, false);
    assert_from(&results, a, NP_UDP);
    for r in &results {
        assert_eq!(v4(seen_client(r)), env.client_ip(), "{r:?}");
    }

    // node-b has no local endpoint: the SYN is dropped, not answered with a
    // RST (which the kernel would send if nobody handled the port).
    let r = probe(
        &env.c,
        "client",
        &["tcp", &format!("{b}:{NP_TCP}"), "--timeout-ms", "700"],
    )
    .remove(0);
    assert!(
        !r.ok && r.error.as_deref() == Some("timeout"),
        "node-b (no local endpoint) must drop the connection attempt (timeout), got {r:?}"
    );

    // Health checks: 200 with the count where there are local endpoints,
    // 503 where there are none.
    let json = wait_health(&env.c, a, 200);
    assert_eq!(json["localEndpoints"], 2, "node-a health body: {json}");
    assert_eq!(json["service"]["name"], "web", "{json}");
    let json = wait_health(&env.c, b, 503);
    assert_eq!(json["localEndpoints"], 0, "node-b health body: {json}");

    // Dialled from inside node-b, the NodePort still works (socket LB, every
    // ready endpoint: kube-proxy's short circuit for in-cluster clients).
    let results = probe(
        &env.c,
        "node-b",
        &["tcp", &format!("{b}:{NP_TCP}"), "--count", "3"],
    );
    answered_by(&results);
}

#[test]
fn local_policy_with_only_terminating_endpoints_fails_the_health_check() {
    let c = cluster("np-local-term");
    let servers = serve(&c, PODS);
    let pod = c.pod("pod-a1");
    write(
        &c,
        "web.yaml",
        &local_service(),
        &[Endpoint::terminating(pod.ip, &pod.node)],
    );
    let agents = Agent::start_all(&c, &AgentOpts::lan()).expect("agents");
    let env = Env { agents, servers, c };
    let a = env.node_ip("node-a");
    let json = wait_health(&env.c, a, 503);
    assert_eq!(
        json["localEndpoints"], 0,
        "terminating endpoints are not counted: {json}"
    );
    // ... but they are still used, being all that is left.
    let results = tcp(&env.c, "client", a, NP_TCP, 5);
    assert_eq!(answered_by(&results).get("pod-a1"), Some(&5));
}

// ---------------------------------------------------------------------------
// LoadBalancer and external IPs
// ---------------------------------------------------------------------------

#[test]
fn load_balancer_ip_and_external_ip_frontends_work() {
    let svc = web("LoadBalancer").lb_ingress(LB_IP).external_ip(EXT_IP);
    let env = setup("lb-ext", &svc, &["pod-a1", "pod-b1"], AgentOpts::lan());
    // What an upstream router would do: the LB IP to node-a, the external
    // IP to node-b (routes inside the client's namespace only).
    env.c
        .ip(
            "client",
            &format!(
                "route add {LB_IP}/32 via {}\nroute add {EXT_IP}/32 via {}",
                env.node_ip("node-a"),
                env.node_ip("node-b")
            ),
        )
        .expect("client routes");

    for (vip, entry) in [(LB_IP, "node-a"), (EXT_IP, "node-b")] {
        let results = tcp(&env.c, "client", vip, HTTP_PORT, 30);
        let seen = answered_by(&results);
        assert_eq!(seen.len(), 2, "{vip} through {entry}: {seen:?}");
        assert_peer(&results, vip, HTTP_PORT);
        assert_snat_rules(&env, entry, &results);

        let results = udp(&env.c, "client", vip, DNS_PORT, 10, false);
        assert_from(&results, vip, DNS_PORT);
        assert_snat_rules(&env, entry, &results);

        // The service port only: the node port is not open on the VIP.
        let r = probe(
            &env.c,
            "client",
            &["tcp", &format!("{vip}:{NP_TCP}"), "--timeout-ms", "700"],
        )
        .remove(0);
        assert!(!r.ok, "{vip}:{NP_TCP} is not a frontend: {r:?}");
    }

    // The same frontends dialled from inside node-a (socket LB).
    for (vip, port) in [(LB_IP, HTTP_PORT), (EXT_IP, HTTP_PORT)] {
        let results = probe(
            &env.c,
            "node-a",
            &["tcp", &format!("{vip}:{port}"), "--count", "5"],
        );
        answered_by(&results);
        assert_peer(&results, vip, port);
    }
}

// ---------------------------------------------------------------------------
// from inside the node
// ---------------------------------------------------------------------------

#[test]
fn nodeport_dialled_from_inside_node_a_and_its_pods() {
    let env = setup(
        "np-inside",
        &web("NodePort"),
        &["pod-a1", "pod-b1"],
        AgentOpts::lan(),
    );
    for target in ["node-a", "node-b"] {
        let ip = env.node_ip(target);
        for from in ["node-a", "pod-a2"] {
            let results = tcp(&env.c, from, ip, NP_TCP, 20);
            let seen = answered_by(&results);
            assert_eq!(
                seen.len(),
                2,
                "{from} -> {ip}:{NP_TCP}: both endpoints: {seen:?}"
            );
            assert_peer(&results, ip, NP_TCP);
            let results = udp(&env.c, from, ip, NP_UDP, 5, false);
            assert_from(&results, ip, NP_UDP);
        }
    }
}

// ---------------------------------------------------------------------------
// conntrack: endpoint changes and restarts
// ---------------------------------------------------------------------------

/// Probe until some new connection through `ip` lands on `pod` (the agents
/// have picked up a new endpoint).
fn wait_for_pod(c: &Cluster, ip: Ipv4Addr, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let results = tcp(c, "client", ip, NP_TCP, 10);
        if results.iter().any(|r| r.pod() == Some(pod)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection through {ip} reached {pod}: {results:?}"
        );
    }
}

#[test]
fn a_long_tcp_connection_survives_an_endpoint_being_added_and_agent_restarts() {
    let mut env = setup("np-long", &web("NodePort"), &["pod-b1"], AgentOpts::lan());
    let a = env.node_ip("node-a");
    // Through node-a to pod-b1: the SNAT path, with the most state.
    let mut hold = env
        .c
        .spawn_probe("client", ["hold", &format!("{a}:{NP_TCP}")])
        .expect("hold");
    let first = hold
        .wait_for_line(|l| l.contains("\"ok\""), Duration::from_secs(5))
        .expect("hold connected");
    assert!(first.contains("\"ok\":true"), "{first}");
    let exchange = |hold: &mut Proc, word: &str, when: &str| {
        hold.send_line(word).expect("send");
        let line = hold
            .wait_for_line(
                |l| l.contains(&format!("line={word}")),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("no reply {when}: {e:#}"));
        let r = &parse_lines(&line).expect("JSON")[0];
        assert_eq!(r.pod(), Some("pod-b1"), "{when}: {r:?}");
        r.clone()
    };
    let before = exchange(&mut hold, "before", "before any change");

    write(
        &env.c,
        "web.yaml",
        &web("NodePort"),
        &ready(&env.c, &["pod-b1", "pod-a1"]),
    );
    wait_for_pod(&env.c, a, "pod-a1");
    exchange(&mut hold, "added", "after an endpoint was added");

    env.restart_agents();
    let after = exchange(&mut hold, "restarted", "after both agents restarted");
    assert_eq!(
        before.client(),
        after.client(),
        "the same connection, with the same SNAT address and port"
    );
    answered_by(&tcp(&env.c, "client", a, NP_TCP, 10));
}

#[test]
fn a_thousand_requests_across_an_agent_restart_fail_none() {
    let mut env = setup(
        "np-restart-load",
        &web("NodePort"),
        &["pod-a1", "pod-b1"],
        AgentOpts::lan(),
    );
    let a = env.node_ip("node-a");
    let started = Instant::now();
    let mut load = env
        .c
        .spawn_probe(
            "client",
            [
                "tcp",
                &format!("{a}:{NP_TCP}"),
                "--count",
                "1000",
                "--interval-ms",
                "4",
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("load");
    let mut n = 0;
    load.wait_for_line(
        |_| {
            n += 1;
            n >= 150
        },
        Duration::from_secs(30),
    )
    .expect("load running");
    env.restart("node-a");
    let mut n = 0;
    load.wait_for_line(
        |_| {
            n += 1;
            n >= 150
        },
        Duration::from_secs(30),
    )
    .expect("load still running");
    env.restart("node-b");

    let status = load
        .wait_timeout(Duration::from_secs(90))
        .expect("waiting for the load")
        .unwrap_or_else(|| panic!("1000 requests did not finish within 90 s"));
    assert!(status.success(), "gp-probe: {}", load.output_summary());
    let results = parse_lines(&load.stdout_lines().join("\n")).expect("gp-probe output");
    assert_eq!(results.len(), 1000);
    let failed: Vec<(usize, &ProbeResult)> =
        results.iter().enumerate().filter(|(_, r)| !r.ok).collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 requests failed across the restarts (first: {:?})",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(answered_by(&results).len(), 2);
    eprintln!("1000 requests in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// DSR
// ---------------------------------------------------------------------------

#[test]
fn dsr_keeps_the_client_address_for_a_remote_backend() {
    let env = setup(
        "np-dsr",
        &web("NodePort"),
        &["pod-b1"],
        AgentOpts::lan().lb_mode("dsr"),
    );
    let a = env.node_ip("node-a");
    // Through node-a to pod-b1 on node-b: the reply goes from node-b
    // straight to the client, with node-a's address as its source (TCP could
    // not even connect otherwise).
    let results = tcp(&env.c, "client", a, NP_TCP, 10);
    assert_eq!(answered_by(&results).get("pod-b1"), Some(&10));
    assert_peer(&results, a, NP_TCP);
    for r in &results {
        assert_eq!(
            v4(seen_client(r)),
            env.client_ip(),
            "DSR: the remote backend sees the client: {r:?}"
        );
    }
    let results = udp(&env.c, "client", a, NP_UDP, 10, true);
    assert_from(&results, a, NP_UDP);
    for r in &results {
        assert_eq!(v4(seen_client(r)), env.client_ip(), "DSR UDP: {r:?}");
    }
}

#[test]
fn hybrid_mode_is_dsr_for_tcp_and_snat_for_udp() {
    let env = setup(
        "np-hybrid",
        &web("NodePort"),
        &["pod-b1"],
        AgentOpts::lan().lb_mode("hybrid"),
    );
    let a = env.node_ip("node-a");
    let results = tcp(&env.c, "client", a, NP_TCP, 5);
    answered_by(&results);
    for r in &results {
        assert_eq!(v4(seen_client(r)), env.client_ip(), "hybrid TCP: {r:?}");
    }
    let results = udp(&env.c, "client", a, NP_UDP, 5, false);
    assert_from(&results, a, NP_UDP);
    assert_snat_rules(&env, "node-a", &results);
}

// ---------------------------------------------------------------------------
// session affinity, ICMP
// ---------------------------------------------------------------------------

#[test]
fn client_ip_affinity_holds_for_nodeport_traffic() {
    let svc = web("NodePort").client_ip_affinity(Some(300));
    let env = setup("np-affinity", &svc, PODS, AgentOpts::lan());
    for entry in ["node-a", "node-b"] {
        let seen = answered_by(&tcp(&env.c, "client", env.node_ip(entry), NP_TCP, 30));
        assert_eq!(
            seen.len(),
            1,
            "sessionAffinity ClientIP: 30 connections through {entry} go to one backend: {seen:?}"
        );
    }
}

#[test]
fn icmp_port_unreachable_from_a_backend_reaches_the_client() {
    // Two more services whose only endpoint has no UDP listener: pod-a2
    // (local to node-a, DNAT only) and pod-b2 (remote, SNAT).
    let c = cluster("np-icmp");
    let servers: Vec<Proc> = ["pod-a1", "pod-b1"]
        .iter()
        .map(|p| c.serve(p, &[TCP_TARGET], &[UDP_TARGET]).expect("server"))
        .collect();
    write(&c, "web.yaml", &web("NodePort"), &ready(&c, &["pod-a1"]));
    for (name, pod, np, ip) in [
        (
            "deaf-local",
            "pod-a2",
            30054,
            Ipv4Addr::new(198, 18, 200, 54),
        ),
        (
            "deaf-remote",
            "pod-b2",
            30055,
            Ipv4Addr::new(198, 18, 200, 55),
        ),
    ] {
        let svc = Service::node_port_service("default", name, ip)
            .port("dns", DNS_PORT, "UDP", Target::Number(UDP_TARGET))
            .node_port("dns", np);
        write(&c, &format!("{name}.yaml"), &svc, &ready(&c, &[pod]));
    }
    let agents = Agent::start_all(&c, &AgentOpts::lan()).expect("agents");
    let env = Env { agents, servers, c };
    let a = env.node_ip("node-a");
    // A working UDP NodePort first, so a failure below is about ICMP.
    assert_from(&udp(&env.c, "client", a, NP_UDP, 1, true), a, NP_UDP);
    for (np, what) in [(30054, "local backend"), (30055, "remote backend")] {
        let r = udp(&env.c, "client", a, np, 1, true).remove(0);
        assert!(
            !r.ok && r.errno == Some(libc::ECONNREFUSED) && r.stage.as_deref() == Some("recv"),
            "UDP to a NodePort whose {what} has no listener: the backend's ICMP port \
             unreachable, translated back, must give the connected socket ECONNREFUSED; got {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// uninstall
// ---------------------------------------------------------------------------

#[test]
fn uninstall_detaches_the_device_programs() {
    let svc = web("NodePort");
    let mut env = setup("np-uninstall", &svc, &["pod-a1"], AgentOpts::lan());
    let node_a = env.node_ip("node-a");
    let bpffs = env.agents[0].bpffs.clone();
    for agent in &mut env.agents {
        agent.stop().expect("stopping the agent");
    }
    assert!(
        tcp(&env.c, "client", node_a, NP_TCP, 1)[0].ok,
        "a stopped agent leaves the tc/XDP programs serving"
    );

    let mut cmd = gangplank_tests::agent::gangplank_cmd().expect("gangplank");
    cmd.arg("uninstall").arg("--bpffs").arg(&bpffs);
    let out = env
        .c
        .run_in_node("node-a", cmd, Duration::from_secs(10))
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed = String::from_utf8_lossy(&out.stdout);
    for link in ["tc_in_eth0", "tc_out_eth0"] {
        assert!(removed.contains(link), "{link} unpinned: {removed}");
    }

    // Nothing translates the node port any more: the node's own stack
    // answers (nothing listens there).
    let r = probe(
        &env.c,
        "client",
        &["tcp", &format!("{node_a}:{NP_TCP}"), "--timeout-ms", "700"],
    )
    .remove(0);
    assert!(!r.ok, "NodePort no longer served after uninstall: {r:?}");
    let mut ip = std::process::Command::new("ip");
    ip.args(["-d", "link", "show", "dev", "eth0"]);
    let out = env
        .c
        .run_in_node("node-a", ip, Duration::from_secs(5))
        .expect("ip link");
    let link = String::from_utf8_lossy(&out.stdout);
    assert!(!link.contains("xdp"), "no XDP program left on eth0: {link}");
}

// ---------------------------------------------------------------------------
// bulk transfers (GSO-sized segments through every path)
// ---------------------------------------------------------------------------

/// 4 MB up and 4 MB down per connection, every byte checked by gp-probe,
/// to pod-a1: through node-a it is a local backend (DNAT only), through
/// node-b a remote one (SNAT or DSR), so both directions of every
/// translation carry full-sized (GSO) segments. With XDP on the node's
/// veth, the kernel turns off segmentation offload on its peer, so only
/// `--xdp off` sees 64 KB segments arrive.
fn bulk_transfers(mode: &str, xdp: &str) {
    let svc = web("NodePort");
    let opts = AgentOpts::lan().lb_mode(mode).xdp(xdp);
    let env = setup(&format!("np-bulk-{mode}-{xdp}"), &svc, &["pod-a1"], opts);
    for entry in ["node-a", "node-b"] {
        let results = probe(
            &env.c,
            "client",
            &[
                "tcp",
                &format!("{}:{NP_TCP}", env.node_ip(entry)),
                "--count",
                "3",
                "--path",
                "/bulk/4000000",
                "--upload",
                "4000000",
                "--timeout-ms",
                "20000",
            ],
        );
        let seen = answered_by(&results);
        assert_eq!(
            seen.get("pod-a1"),
            Some(&3),
            "{mode} through {entry}: {seen:?}"
        );
    }
}

#[test]
fn bulk_transfers_survive_snat() {
    bulk_transfers("snat", "native");
    bulk_transfers("snat", "off");
}

#[test]
fn bulk_transfers_survive_dsr() {
    bulk_transfers("dsr", "native");
    bulk_transfers("dsr", "off");
}

/// More new connections to one remote endpoint than the SNAT port range
/// holds (61000-65535: 4,536 ports per endpoint), each closed by the
/// client with a RST as soon as it is answered: every one must succeed,
/// because a closed flow's SNAT port is taken over by the next SYN that
/// needs it rather than held for the closing entry's 10 s lifetime.
#[test]
fn snat_ports_of_closed_flows_are_reused() {
    let env = setup(
        "np-snat-reuse",
        &web("NodePort"),
        &["pod-b1"],
        AgentOpts::lan(),
    );
    // The benchmark's load generator.
    let mut cmd = gangplank_tests::agent::gangplank_cmd().expect("gangplank built");
    cmd.arg("bench-conn")
        .arg(format!("--target={}:{NP_TCP}", env.node_ip("node-a")))
        .args([
            "--count=6000",
            "--concurrency=8",
            "--warmup=0",
            "--duration=120",
        ]);
    let out = env
        .c
        .run_in_client(cmd, Duration::from_secs(180))
        .expect("bench-conn");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bench-conn: {e}: {out:?}"));
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connections"], 6000, "{report}");
}

/// A client port that just finished a connection to one NodePort is
/// reused at once for another NodePort whose backend is the same local
/// pod: both flows have the same reply tuple (client → pod:8080), and the
/// first one's closing entry must give way, not drop the new SYN (and its
/// retransmissions) for the closing entry's lifetime.
#[test]
fn client_port_reused_across_frontends_sharing_a_local_backend() {
    let env = setup(
        "np-port-reuse",
        &web("NodePort"),
        &["pod-a1"],
        AgentOpts::lan(),
    );
    let other = Service::node_port_service("default", "web2", Ipv4Addr::new(198, 18, 200, 11))
        .port("http", HTTP_PORT, "TCP", Target::Number(TCP_TARGET))
        .node_port("http", NP_TCP + 1);
    write(&env.c, "web2.yaml", &other, &ready(&env.c, &["pod-a1"]));
    let node_a = env.node_ip("node-a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp(&env.c, "client", node_a, NP_TCP + 1, 1)[0].ok {
        assert!(Instant::now() < deadline, "web2's NodePort never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    for port in [NP_TCP, NP_TCP + 1, NP_TCP] {
        let results = probe(
            &env.c,
            "client",
            &[
                "tcp",
                &format!("{node_a}:{port}"),
                "--source-port",
                "40123",
                "--timeout-ms",
                "3000",
            ],
        );
        assert!(
            results.iter().all(|r| r.ok),
            "NodePort {port} from client port 40123: {results:?}"
        );
    }
}
