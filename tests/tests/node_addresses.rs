//! Node addresses and devices end to end (issue 3, sections 1 and 4): the
//! agent follows address changes on its devices, detects its devices when
//! `--devices` is not given, and every node picks the same Maglev backend
//! for the same flow.
//!
//! Every test builds its own cluster:
//!
//! ```text
//! client 198.18.0.100 ── lan ──┬── node-a 198.18.0.10 ── pod-a1 198.19.1.10, pod-a2 .11
//!                              └── node-b 198.18.0.11 ── pod-b1 198.19.2.10, pod-b2 .11
//! ```
//!
//! Need root; run `cargo build` first (they start target/debug/gangplank).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use gangplank_tests::agent::{Agent, AgentOpts};
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::northsouth::{answered_by, probe, status, v4, Env};
use gangplank_tests::{Cluster, ProbeResult};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
/// `status.loadBalancer.ingress[].ip`, routed by the client via one node.
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// An address added to node-a's eth0 while the agent runs (same subnet as
/// the lan, so the client reaches it by ARP).
const EXTRA_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 210);
const HTTP_PORT: u16 = 80;
const DNS_PORT: u16 = 53;
const NP_TCP: u16 = 30080;
const NP_UDP: u16 = 30053;
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
/// How long the agent may take to follow an address change.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);

const PODS: &[&str] = &["pod-a1", "pod-a2", "pod-b1", "pod-b2"];

/// `default/web`: `http` 80/TCP (nodePort 30080), `dns` 53/UDP (nodePort
/// 30053), of `type_` "NodePort" or "LoadBalancer".
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

/// Cluster, gp-probe servers in every pod, `svc` with ready endpoints
/// `pods`, and an agent per node with `opts`.
fn setup(test: &str, svc: &Service, pods: &[&str], opts: AgentOpts) -> Env {
    let c = Cluster::new(
        test,
        &[
            ("node-a", &["pod-a1", "pod-a2"]),
            ("node-b", &["pod-b1", "pod-b2"]),
        ],
    )
    .expect("building the simulated cluster");
    let servers = PODS
        .iter()
        .map(|p| {
            c.serve(p, &[TCP_TARGET], &[UDP_TARGET])
                .unwrap_or_else(|e| panic!("server in {p}: {e:#}"))
        })
        .collect();
    let mut slice = EndpointSlice::new("default", "web", "web-abc12")
        .port("http", TCP_TARGET, "TCP")
        .port("dns", UDP_TARGET, "UDP");
    for p in pods {
        let pod = c.pod(p);
        slice = slice.endpoint(Endpoint::ready(pod.ip, &pod.node));
    }
    manifests::write(
        c.manifests_dir(),
        "web.yaml",
        &[svc.to_yaml(), slice.to_yaml()],
    )
    .expect("writing manifests");
    let agents = Agent::start_all(&c, &opts).expect("starting the agents");
    Env { agents, servers, c }
}

/// `count` HTTP requests from the client to `ip:port`, each bounded by `timeout_ms`.
fn tcp(c: &Cluster, ip: Ipv4Addr, port: u16, count: usize, timeout_ms: u64) -> Vec<ProbeResult> {
    probe(
        c,
        "client",
        &[
            "tcp",
            &format!("{ip}:{port}"),
            "--count",
            &count.to_string(),
            "--timeout-ms",
            &timeout_ms.to_string(),
        ],
    )
}

/// `(address, interface)` of each `node_addresses` row of a status.
fn node_addresses(status: &serde_json::Value) -> Vec<(String, String)> {
    status["node_addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no node_addresses list: {status}"))
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap_or_default().to_string(),
                a["interface"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Names of the pinned links in a status.
fn links(status: &serde_json::Value) -> Vec<String> {
    status["links"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no links list: {status}"))
        .iter()
        .map(|l| l["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Poll `gangplank status` on `agent` until `pred` holds for its node addresses.
fn wait_for_addresses(
    c: &Cluster,
    agent: &Agent,
    what: &str,
    pred: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    loop {
        let addrs = node_addresses(&status(c, agent));
        if pred(&addrs) {
            return addrs;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: gangplank status on {} still shows node addresses {addrs:?} after {FOLLOW_TIMEOUT:?}\nagent log:\n{}",
            agent.node(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The MAC address of `iface` in the network namespace of `member`.
fn mac(c: &Cluster, member: &str, iface: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", c.netns(member), "-o", "link", "show", "dev", iface])
        .output()
        .expect("running ip link show");
    assert!(out.status.success(), "ip link show {iface}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether in {text:?}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// following node addresses
// ---------------------------------------------------------------------------

#[test]
fn nodeport_follows_an_address_added_to_and_removed_from_the_device() {
    let env = setup(
        "addr-follow",
        &web("NodePort"),
        &["pod-a1", "pod-b1"],
        AgentOpts::lan(),
    );
    let agent = env.agent("node-a");
    let extra = EXTRA_IP.to_string();
    let has_extra = |addrs: &[(String, String)]| addrs.iter().any(|(a, _)| *a == extra);
    assert!(
        !has_extra(&node_addresses(&status(&env.c, agent))),
        "{EXTRA_IP} is not a node address yet"
    );

    env.c
        .ip("node-a", &format!("addr add {EXTRA_IP}/24 dev eth0"))
        .expect("adding an address to node-a's eth0");
    // The NodePort answers on the new address within a few seconds.
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    loop {
        let r = tcp(&env.c, EXTRA_IP, NP_TCP, 1, 1000).remove(0);
        if r.ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NodePort {EXTRA_IP}:{NP_TCP} did not answer within {FOLLOW_TIMEOUT:?} of the \
             address being added to node-a's eth0; last attempt: {r:?}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let results = tcp(&env.c, EXTRA_IP, NP_TCP, 20, 2000);
    let seen = answered_by(&results);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["pod-a1", "pod-b1"],
        "20 connections to the new address should reach both endpoints: {seen:?}"
    );
    let want_peer = SocketAddr::from((EXTRA_IP, NP_TCP)).to_string();
    for r in &results {
        assert_eq!(
            r.peer.as_deref(),
            Some(want_peer.as_str()),
            "the client must see the new node address as its peer: {r:?}"
        );
        let client = v4(r
            .client_addr()
            .unwrap_or_else(|| panic!("no client= in {r:?}")));
        if r.pod() == Some("pod-a1") {
            assert_eq!(client, env.c.client().ip, "local backend, no SNAT: {r:?}");
        } else {
            assert!(
                client == env.node_ip("node-a") || client == EXTRA_IP,
                "remote backend sees a node-a address (SNAT): {r:?}"
            );
        }
    }
    // UDP too.
    let results = probe(
        &env.c,
        "client",
        &["udp", &format!("{EXTRA_IP}:{NP_UDP}"), "--count", "5"],
    );
    let want_from = SocketAddr::from((EXTRA_IP, NP_UDP)).to_string();
    for r in &results {
        assert!(r.ok, "UDP NodePort on the new address: {r:?}");
        assert_eq!(r.from.as_deref(), Some(want_from.as_str()), "{r:?}");
    }
    let addrs = wait_for_addresses(&env.c, agent, "after the address was added", has_extra);
    assert!(
        addrs.contains(&(extra.clone(), "eth0".to_string())),
        "status should list {EXTRA_IP} on eth0: {addrs:?}"
    );

    env.c
        .ip("node-a", &format!("addr del {EXTRA_IP}/24 dev eth0"))
        .expect("removing the address again");
    let addrs = wait_for_addresses(&env.c, agent, "after the address was removed", |a| {
        !has_extra(a)
    });
    assert_eq!(
        addrs,
        [(env.node_ip("node-a").to_string(), "eth0".to_string())],
        "only the primary address is left"
    );
    // Keep the client sending to node-a's MAC (its ARP entry would do so
    // for a while anyway), so the packets do reach node-a's eth0: what
    // must stop them is the agent no longer treating the address as its own.
    env.c
        .ip(
            "client",
            &format!(
                "neigh replace {EXTRA_IP} lladdr {} dev eth0 nud permanent",
                mac(&env.c, "node-a", "eth0")
            ),
        )
        .expect("pinning the client's neighbour entry");
    for r in tcp(&env.c, EXTRA_IP, NP_TCP, 3, 1000) {
        assert!(
            !r.ok,
            "NodePort on {EXTRA_IP} must stop once the address is removed from node-a: {r:?}"
        );
    }
    // The primary address is unaffected.
    answered_by(&tcp(&env.c, env.node_ip("node-a"), NP_TCP, 5, 2000));
}

// ---------------------------------------------------------------------------
// default device detection
// ---------------------------------------------------------------------------

#[test]
fn without_devices_the_agent_attaches_to_the_uplink_only() {
    let env = setup(
        "addr-default-devices",
        &web("NodePort"),
        &["pod-a1", "pod-b1"],
        AgentOpts::default(),
    );
    for node in ["node-a", "node-b"] {
        let st = status(&env.c, env.agent(node));
        let names = links(&st);
        for want in ["tc_in_eth0", "tc_out_eth0"] {
            assert!(
                names.iter().any(|n| n == want),
                "{node}: expected link {want} (device detected without --devices), links: {names:?}"
            );
        }
        let device_links: Vec<&String> = names
            .iter()
            .filter(|n| {
                ["tc_in_", "tc_out_", "xdp_"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .collect();
        assert!(
            device_links.iter().all(|n| n.ends_with("_eth0")),
            "{node}: device programs only on eth0 (not on cbr0, pod veths or lo): {device_links:?}"
        );
        let devices: Vec<&str> = st["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("no devices in {st}"))
            .iter()
            .map(|d| d["interface"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(devices, ["eth0"], "{node}: devices in {st}");
        assert_eq!(
            node_addresses(&st),
            [(env.node_ip(node).to_string(), "eth0".to_string())],
            "{node}: the node addresses come from eth0 only (not the pod bridge's)"
        );
    }
    for node in ["node-a", "node-b"] {
        let seen = answered_by(&tcp(&env.c, env.node_ip(node), NP_TCP, 20, 2000));
        assert_eq!(
            seen.len(),
            2,
            "NodePort through {node} with detected devices: {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Maglev: the same backend whichever node the flow enters
// ---------------------------------------------------------------------------

/// Client source ports of the flows compared (below the ephemeral range,
/// so nothing else in the client namespace picks them).
const MAGLEV_PORTS: std::ops::Range<u16> = 20_000..20_016;

/// For each source port, the pod that answered one connection from the
/// client to `LB_IP:80` from that port. Checks that the flow entered
/// through node `via`: a backend there sees the client, one elsewhere sees
/// `via`'s address (SNAT).
fn backends_by_port(c: &Cluster, via: &str) -> BTreeMap<u16, String> {
    MAGLEV_PORTS
        .map(|port| {
            let r = probe(
                c,
                "client",
                &[
                    "tcp",
                    &format!("{LB_IP}:{HTTP_PORT}"),
                    "--source-port",
                    &port.to_string(),
                ],
            )
            .remove(0);
            assert!(
                r.ok,
                "{LB_IP}:{HTTP_PORT} via {via} from port {port}: {r:?}"
            );
            assert_eq!(
                r.local.as_deref(),
                Some(format!("{}:{port}", c.client().ip).as_str()),
                "gp-probe --source-port: {r:?}"
            );
            let pod = r
                .pod()
                .unwrap_or_else(|| panic!("no pod= in {r:?}"))
                .to_string();
            let seen = v4(r
                .client_addr()
                .unwrap_or_else(|| panic!("no client= in {r:?}")));
            let want = if c.pod(&pod).node == via {
                c.client().ip
            } else {
                c.node(via).address
            };
            assert_eq!(
                seen, want,
                "the flow from port {port} should have entered through {via}: {r:?}"
            );
            (port, pod)
        })
        .collect()
}

#[test]
fn maglev_picks_the_same_backend_for_a_flow_on_either_node() {
    let svc = web("LoadBalancer").lb_ingress(LB_IP);
    let env = setup("addr-maglev", &svc, PODS, AgentOpts::lan());
    let (a, b) = (env.node_ip("node-a"), env.node_ip("node-b"));
    env.c
        .ip("client", &format!("route add {LB_IP}/32 via {a}"))
        .expect("client route via node-a");
    let via_a = backends_by_port(&env.c, "node-a");

    // An upstream router moving the LB IP to the other node.
    env.c
        .ip("client", &format!("route replace {LB_IP}/32 via {b}"))
        .expect("client route via node-b");
    let via_b = backends_by_port(&env.c, "node-b");

    let distinct: BTreeSet<&String> = via_a.values().collect();
    assert!(
        distinct.len() >= 2,
        "{} flows should spread over several of the 4 backends: {via_a:?}",
        MAGLEV_PORTS.len()
    );
    let moved: Vec<(u16, &String, &String)> = via_a
        .iter()
        .filter_map(|(port, pod)| {
            let other = &via_b[port];
            (other != pod).then_some((*port, pod, other))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "Maglev: the same flow (client source port) must reach the same backend through \
         node-a and node-b; (port, via node-a, via node-b) that differ: {moved:?}\n\
         via node-a: {via_a:?}\nvia node-b: {via_b:?}"
    );
}
