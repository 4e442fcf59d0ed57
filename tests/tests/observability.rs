//! What a live agent shows about itself, and what it must not leave behind
//! (issue 3, sections 1-3): `/metrics`, `/healthz` and `/readyz` on
//! `--metrics-addr`, `gangplank status -o json` with conntrack fill, device
//! links and XDP, the conntrack garbage collector at work, no iptables or
//! nftables rule anywhere, and `internalTrafficPolicy: Local` in the socket
//! load balancer.
//!
//! Every test builds its own cluster:
//!
//! ```text
//! client 198.18.0.100 ── lan ──┬── node-a 198.18.0.10 ── pod-a1 198.19.1.10, pod-a2 .11, pod-a3 .12
//!                              └── node-b 198.18.0.11 ── pod-b1 198.19.2.10, pod-b2 .11, pod-b3 .12
//! ```
//!
//! (pod-a3 and pod-b3 are clients, the others run servers.)
//!
//! Need root; run `cargo build` first (they start target/debug/gangplank).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use gangplank_tests::agent::{Agent, AgentOpts};
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::northsouth::{answered_by, probe, status, Env};
use gangplank_tests::test_run::in_netns;
use gangplank_tests::{Cluster, ProbeResult};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const HTTP_PORT: u16 = 80;
const DNS_PORT: u16 = 53;
const NP_TCP: u16 = 30080;
const NP_UDP: u16 = 30053;
const HC_PORT: u16 = 32000;
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
/// `--metrics-addr`, inside each node's own network namespace.
const METRICS: &str = "127.0.0.1:9962";
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pods running servers; pod-a3 and pod-b3 are clients.
const SERVERS: &[&str] = &["pod-a1", "pod-a2", "pod-b1", "pod-b2"];

fn cluster(test: &str) -> Cluster {
    Cluster::new(
        test,
        &[
            ("node-a", &["pod-a1", "pod-a2", "pod-a3"]),
            ("node-b", &["pod-b1", "pod-b2", "pod-b3"]),
        ],
    )
    .expect("building the simulated cluster")
}

/// `name`: `http` 80/TCP → 8080 and `dns` 53/UDP → 5353, with node ports
/// 30080/30053 unless it is a ClusterIP service.
fn service(type_: &str, name: &str, ip: Ipv4Addr) -> Service {
    let svc = match type_ {
        "ClusterIP" => Service::cluster_ip("default", name, ip),
        "NodePort" => Service::node_port_service("default", name, ip),
        "LoadBalancer" => Service::load_balancer("default", name, ip),
        other => panic!("service type {other}"),
    };
    let svc = svc
        .port("http", HTTP_PORT, "TCP", Target::Number(TCP_TARGET))
        .port("dns", DNS_PORT, "UDP", Target::Number(UDP_TARGET));
    if type_ == "ClusterIP" {
        svc
    } else {
        svc.node_port("http", NP_TCP).node_port("dns", NP_UDP)
    }
}

/// Write `svc` (named `name`) with ready endpoints in `pods`.
fn write(c: &Cluster, name: &str, svc: &Service, pods: &[&str]) {
    let mut slice = EndpointSlice::new("default", name, &format!("{name}-abc12"))
        .port("http", TCP_TARGET, "TCP")
        .port("dns", UDP_TARGET, "UDP");
    for p in pods {
        let pod = c.pod(p);
        slice = slice.endpoint(Endpoint::ready(pod.ip, &pod.node));
    }
    manifests::write(
        c.manifests_dir(),
        &format!("{name}.yaml"),
        &[svc.to_yaml(), slice.to_yaml()],
    )
    .expect("writing manifests");
}

/// Cluster, servers, services from `write_services`, one agent per node.
fn setup(test: &str, opts: AgentOpts, write_services: impl FnOnce(&Cluster)) -> Env {
    let c = cluster(test);
    let servers = SERVERS
        .iter()
        .map(|p| {
            c.serve(p, &[TCP_TARGET], &[UDP_TARGET])
                .unwrap_or_else(|e| panic!("server in {p}: {e:#}"))
        })
        .collect();
    write_services(&c);
    let agents = Agent::start_all(&c, &opts).expect("starting the agents");
    Env { agents, servers, c }
}

/// `default/web`, a NodePort service with endpoints on both nodes.
fn nodeport_env(test: &str, opts: AgentOpts) -> Env {
    setup(test, opts, |c| {
        write(
            c,
            "web",
            &service("NodePort", "web", CLUSTER_IP),
            &["pod-a1", "pod-b1"],
        )
    })
}

/// `--metrics-addr 127.0.0.1:9962 --ct-gc-interval 1` on top of `opts`.
fn observed(opts: AgentOpts) -> AgentOpts {
    AgentOpts {
        metrics_addr: Some(METRICS.into()),
        ..opts
    }
    .arg("--ct-gc-interval")
    .arg("1")
}

/// `count` attempts of gp-probe `mode` (tcp or udp) from `from` to `ip:port`.
fn attempts(
    c: &Cluster,
    from: &str,
    mode: &str,
    ip: Ipv4Addr,
    port: u16,
    count: usize,
) -> Vec<ProbeResult> {
    probe(
        c,
        from,
        &[mode, &format!("{ip}:{port}"), "--count", &count.to_string()],
    )
}

/// NodePort traffic from the client through node-a: `tcp` connections and
/// `udp` datagrams (fresh sockets, so distinct flows), all answered.
fn nodeport_traffic(env: &Env, tcp: usize, udp: usize) {
    let a = env.node_ip("node-a");
    answered_by(&attempts(&env.c, "client", "tcp", a, NP_TCP, tcp));
    answered_by(&attempts(&env.c, "client", "udp", a, NP_UDP, udp));
}

// -- metrics ----------------------------------------------------------------

/// `GET path` on the agent's metrics address, from inside `node`:
/// (status, body).
fn http_get(c: &Cluster, node: &str, path: &str) -> (u16, String) {
    let r = c
        .probe_from_node(node, ["tcp", METRICS, "--path", path])
        .unwrap_or_else(|e| panic!("GET {path} on {node}: {e:#}"))
        .remove(0);
    assert!(r.ok, "GET http://{METRICS}{path} on {node} failed: {r:?}");
    let status = r
        .status
        .unwrap_or_else(|| panic!("GET {path} on {node}: not an HTTP answer: {r:?}"));
    (status, r.reply.unwrap_or_default())
}

/// The value of the sample `series` (name with labels, exactly as
/// exported) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn scrape(c: &Cluster, node: &str) -> String {
    let (status, body) = http_get(c, node, "/metrics");
    assert_eq!(status, 200, "GET /metrics on {node}: {body}");
    body
}

/// Scrape `node` until `pred` holds for `series` (at most `timeout`).
fn wait_for_sample(
    c: &Cluster,
    node: &str,
    series: &str,
    timeout: Duration,
    pred: impl Fn(f64) -> bool,
) -> (f64, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let body = scrape(c, node);
        if let Some(v) = sample(&body, series) {
            if pred(v) {
                return (v, body);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{series} on {node} did not reach the expected value within {timeout:?}; last scrape:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// -- status -----------------------------------------------------------------

/// The `maps` row called `name` of a status.
fn map_row<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("{name} missing from the status maps: {status}"))
}

fn ct_entries(status: &serde_json::Value) -> u64 {
    map_row(status, "GP_CT")["entries"]
        .as_u64()
        .unwrap_or_else(|| panic!("GP_CT has no entry count: {status}"))
}

/// The `links` row called `name`, if any.
fn link<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["links"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no links list: {status}"))
        .iter()
        .find(|l| l["name"] == name)
}

/// `ip -d link show dev eth0` in `node`: whether an XDP program is attached
/// (the kernel's own view, independent of gangplank's pins).
fn kernel_has_xdp(c: &Cluster, node: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", c.netns(node), "-d", "link", "show", "dev", "eth0"])
        .output()
        .expect("running ip link show");
    assert!(out.status.success(), "ip link show: {out:?}");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

// ---------------------------------------------------------------------------
// metrics, health and readiness
// ---------------------------------------------------------------------------

#[test]
fn metrics_endpoint_serves_readiness_liveness_map_fill_and_conntrack() {
    let env = nodeport_env("obs-metrics", observed(AgentOpts::lan()));
    for node in ["node-a", "node-b"] {
        // Agent::start returned after "agent ready" (ready = synced and attached).
        let (status, body) = http_get(&env.c, node, "/readyz");
        assert_eq!(status, 200, "/readyz on {node} after the sync: {body}");
        let (status, body) = http_get(&env.c, node, "/healthz");
        assert_eq!(status, 200, "/healthz on {node}: {body}");
        let (status, _) = http_get(&env.c, node, "/nope");
        assert_eq!(status, 404, "unknown path on {node}");

        let body = scrape(&env.c, node);
        let services = sample(&body, "gangplank_map_entries{map=\"GP_SERVICES\"}");
        assert!(
            services.is_some_and(|n| n > 0.0),
            "{node}: gangplank_map_entries{{map=\"GP_SERVICES\"}} should be > 0 after the sync \
             (ClusterIP + NodePort frontends), got {services:?}:\n{body}"
        );
        let capacity = sample(&body, "gangplank_map_capacity{map=\"GP_CT\"}");
        assert!(
            capacity.is_some_and(|n| n > 0.0),
            "{node}: GP_CT capacity: {capacity:?}:\n{body}"
        );
        let frontends = sample(&body, "gangplank_frontends");
        assert!(
            frontends.is_some_and(|n| n > 0.0),
            "{node}: gangplank_frontends: {frontends:?}:\n{body}"
        );
    }

    // UDP flows stay in conntrack for 60 s; the GC (every second here)
    // reports the live entries it finds.
    nodeport_traffic(&env, 5, 5);
    let (live, body) = wait_for_sample(
        &env.c,
        "node-a",
        "gangplank_conntrack_entries",
        Duration::from_secs(10),
        |n| n >= 5.0,
    );
    assert!(
        sample(&body, "gangplank_conntrack_gc_deleted_total").is_some(),
        "the GC's deletion counter is exported:\n{body}"
    );
    eprintln!("node-a: gangplank_conntrack_entries {live} after 5 UDP + 5 TCP NodePort flows");
}

// ---------------------------------------------------------------------------
// gangplank status on a live agent
// ---------------------------------------------------------------------------

/// Traffic through node-a, then node-a's status: conntrack filled, tc links
/// on eth0, node address and device; returns the status.
fn live_status(env: &Env) -> serde_json::Value {
    nodeport_traffic(env, 5, 5);
    let st = status(&env.c, env.agent("node-a"));
    let ct = ct_entries(&st);
    assert!(
        ct > 0,
        "GP_CT should hold entries after NodePort traffic: {}",
        map_row(&st, "GP_CT")
    );
    assert_eq!(map_row(&st, "GP_CT")["lru"], true, "{st}");
    for (name, program) in [
        ("tc_in_eth0", "gp_tc_ingress"),
        ("tc_out_eth0", "gp_tc_egress"),
    ] {
        let l = link(&st, name).unwrap_or_else(|| panic!("no {name} link in {st}"));
        assert_eq!(l["program"], program, "{name}: {l}");
    }
    for (name, program) in [
        ("gp_connect4", "gp_connect4"),
        ("gp_sendmsg4", "gp_sendmsg4"),
    ] {
        let l = link(&st, name).unwrap_or_else(|| panic!("no {name} link in {st}"));
        assert_eq!(l["program"], program, "{name}: {l}");
    }
    let a = env.node_ip("node-a").to_string();
    assert_eq!(st["node_addresses"][0]["address"], a.as_str(), "{st}");
    assert_eq!(st["node_addresses"][0]["interface"], "eth0", "{st}");
    assert_eq!(st["devices"][0]["interface"], "eth0", "{st}");
    assert_eq!(st["devices"][0]["snat_address"], a.as_str(), "{st}");
    assert_eq!(st["lb_mode"], "snat", "{st}");
    st
}

#[test]
fn status_of_a_live_agent_with_xdp_native_shows_conntrack_tc_and_xdp() {
    let env = nodeport_env("obs-status-xdp", AgentOpts::lan().xdp("native"));
    let st = live_status(&env);
    // Native XDP works on veth (since Linux 4.19).
    let xdp = link(&st, "xdp_eth0").unwrap_or_else(|| {
        panic!(
            "--xdp native on a veth: expected an xdp_eth0 link in the status: {st}\nagent log:\n{}",
            env.agent("node-a").log()
        )
    });
    assert_eq!(xdp["program"], "gp_xdp", "{xdp}");
    assert_eq!(xdp["link_type"], "xdp", "{xdp}");
    assert!(
        kernel_has_xdp(&env.c, "node-a"),
        "the kernel shows no XDP program on node-a's eth0"
    );
}

#[test]
fn status_of_a_live_agent_with_xdp_off_shows_no_xdp_link() {
    assert_no_xdp("obs-status-tc", "off");
}

/// `auto` leaves veths to tc: native XDP there costs TCP stream throughput.
#[test]
fn xdp_auto_leaves_a_veth_to_tc() {
    assert_no_xdp("obs-status-auto", "auto");
}

fn assert_no_xdp(test: &str, xdp: &str) {
    let env = nodeport_env(test, AgentOpts::lan().xdp(xdp));
    let st = live_status(&env);
    let names: Vec<&str> = st["links"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !names.iter().any(|n| n.starts_with("xdp")),
        "--xdp {xdp} on a veth: no XDP link expected, links: {names:?}"
    );
    assert!(
        !kernel_has_xdp(&env.c, "node-a"),
        "--xdp {xdp} on a veth: the kernel shows an XDP program on node-a's eth0"
    );
}

// ---------------------------------------------------------------------------
// conntrack garbage collection
// ---------------------------------------------------------------------------

#[test]
fn conntrack_gc_removes_closed_tcp_flows_and_keeps_live_udp_ones() {
    let env = nodeport_env("obs-ct-gc", observed(AgentOpts::lan()));
    let agent = env.agent("node-a");
    let before = ct_entries(&status(&env.c, agent));
    // Closed TCP flows expire 10 s (CT_TIMEOUT_TCP_CLOSING) after their
    // FIN; UDP flows only after 60 s idle, longer than this test.
    nodeport_traffic(&env, 10, 3);
    let filled = ct_entries(&status(&env.c, agent));
    assert!(
        filled >= before + 13,
        "13 NodePort flows through node-a should add at least 13 GP_CT entries: {before} -> {filled}"
    );
    let started = Instant::now();
    let (deleted, body) = wait_for_sample(
        &env.c,
        "node-a",
        "gangplank_conntrack_gc_deleted_total",
        Duration::from_secs(25),
        |n| n >= 10.0,
    );
    let after = ct_entries(&status(&env.c, agent));
    eprintln!(
        "GP_CT: {before} -> {filled} -> {after}; GC deleted {deleted} after {:?}",
        started.elapsed()
    );
    assert!(
        after < filled,
        "the GC should have shrunk GP_CT ({filled} -> {after})"
    );
    assert!(
        after >= 3,
        "the 3 UDP flows (60 s idle timeout) are still in GP_CT: {after} entries"
    );
    let live = sample(&body, "gangplank_conntrack_entries");
    assert!(
        live.is_some_and(|n| n >= 3.0),
        "gangplank_conntrack_entries should count the live UDP flows: {live:?}\n{body}"
    );
}

// ---------------------------------------------------------------------------
// no iptables, no nftables
// ---------------------------------------------------------------------------

/// Number of nf_tables tables (of every family) in the calling thread's
/// network namespace: an NFT_MSG_GETTABLE dump over nfnetlink, which is
/// what `nft list tables` sends (so this check needs no nft binary).
fn nft_table_count() -> io::Result<usize> {
    // include/uapi/linux/netfilter/nfnetlink.h and nf_tables.h.
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_GETTABLE: u16 = 1;
    // include/uapi/linux/netlink.h.
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const HDR: usize = 16;

    let check = |rc: isize| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    };
    // SAFETY: socket(2) has no memory arguments.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    } as isize)?;
    // SAFETY: fd is the socket just created; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: the option value is a live timeval of the given size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    } as isize)?;

    // struct nlmsghdr + struct nfgenmsg { family: NFPROTO_UNSPEC (all),
    // version: NFNETLINK_V0, res_id: 0 }.
    let mut req = [0u8; HDR + 4];
    req[0..4].copy_from_slice(&((HDR + 4) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: req is a live buffer of req.len() bytes; the kernel fills in
    // the destination (a NULL address means the kernel, pid 0).
    check(unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) })?;

    let mut tables = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes.
        let n =
            check(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })?;
        let mut off = 0;
        while off + HDR <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            if len < HDR || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed netlink message (len {len} at {off} of {n})"),
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(tables),
                NLMSG_ERROR => {
                    let errno =
                        i32::from_ne_bytes(buf[off + HDR..off + HDR + 4].try_into().expect("4"));
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => tables += 1,
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// `cat /proc/net/<file>` in `node` (the legacy iptables table list of its
/// namespace; a table exists once anything has used it), or None if the
/// kernel has no such file (module not loaded).
fn legacy_tables(c: &Cluster, node: &str, file: &str) -> Option<String> {
    let mut cmd = Command::new("cat");
    cmd.arg(format!("/proc/net/{file}"));
    let out = c.run_in_node(node, cmd, RUN_TIMEOUT).expect("running cat");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `tool args` in `node` if the tool is installed: Some(stdout).
fn run_tool(c: &Cluster, node: &str, tool: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(tool);
    cmd.args(args);
    match c.run_in_node(node, cmd, RUN_TIMEOUT) {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{tool} {args:?} in {node} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) => {
            eprintln!("note: {tool} not run in {node} ({e:#}); is it installed?");
            None
        }
    }
}

#[test]
fn no_iptables_or_nftables_rules_are_written() {
    // Every kind of frontend and both policies, so every code path that
    // could have wanted a rule has run: NodePort, LoadBalancer IP, a
    // health-check node port, UDP, and pod-to-ClusterIP traffic.
    let env = setup("obs-no-rules", AgentOpts::lan(), |c| {
        write(
            c,
            "web",
            &service("NodePort", "web", CLUSTER_IP),
            &["pod-a1", "pod-b1"],
        );
        write(
            c,
            "lb",
            &service("LoadBalancer", "lb", Ipv4Addr::new(198, 18, 200, 11))
                .node_port("http", 30081)
                .node_port("dns", 30054)
                .lb_ingress(LB_IP)
                .external_traffic_policy("Local")
                .health_check_node_port(HC_PORT),
            &["pod-a1"],
        );
    });
    let a = env.node_ip("node-a");
    env.c
        .ip("client", &format!("route add {LB_IP}/32 via {a}"))
        .expect("client route");
    nodeport_traffic(&env, 5, 5);
    answered_by(&attempts(&env.c, "client", "tcp", LB_IP, HTTP_PORT, 5));
    answered_by(&attempts(&env.c, "client", "udp", LB_IP, DNS_PORT, 5));
    let hc = attempts(&env.c, "client", "tcp", a, HC_PORT, 1).remove(0);
    assert_eq!(hc.status, Some(200), "health check: {hc:?}");
    answered_by(&attempts(&env.c, "pod-a3", "tcp", CLUSTER_IP, HTTP_PORT, 5));
    answered_by(&attempts(&env.c, "pod-b3", "udp", CLUSTER_IP, DNS_PORT, 5));

    for node in ["node-a", "node-b"] {
        let netns = env.c.node(node).netns.clone();
        let tables = in_netns(&netns, nft_table_count)
            .and_then(|r| r.map_err(anyhow::Error::from))
            .unwrap_or_else(|e| panic!("listing nf_tables tables in {node}: {e:#}"));
        assert_eq!(
            tables, 0,
            "{node}: gangplank must not create nftables tables"
        );
        for file in ["ip_tables_names", "ip6_tables_names", "arp_tables_names"] {
            match legacy_tables(&env.c, node, file) {
                Some(names) => assert!(
                    names.is_empty(),
                    "{node}: legacy iptables tables exist ({file}: {names:?}); gangplank must not use iptables"
                ),
                None => eprintln!("note: /proc/net/{file} does not exist: no legacy tables possible"),
            }
        }
        // The tools' own view, where they are installed (they are not
        // installed by the tests).
        if let Some(rules) = run_tool(&env.c, node, "nft", &["list", "ruleset"]) {
            assert!(
                rules.trim().is_empty(),
                "{node}: nft list ruleset:\n{rules}"
            );
        }
        if let Some(saved) = run_tool(&env.c, node, "iptables-save", &[]) {
            let rules: Vec<&str> = saved.lines().filter(|l| l.starts_with("-A")).collect();
            assert!(rules.is_empty(), "{node}: iptables-save:\n{saved}");
        }
    }
}

// ---------------------------------------------------------------------------
// internalTrafficPolicy: Local
// ---------------------------------------------------------------------------

#[test]
fn internal_traffic_policy_local_keeps_pod_traffic_on_its_node() {
    let local_ip = Ipv4Addr::new(198, 18, 200, 20);
    let cluster_ip = Ipv4Addr::new(198, 18, 200, 21);
    let env = setup("obs-itp-local", AgentOpts::lan(), |c| {
        write(
            c,
            "local",
            &service("ClusterIP", "local", local_ip).internal_traffic_policy("Local"),
            SERVERS,
        );
        // The control: the same endpoints without the policy.
        write(
            c,
            "spread",
            &service("ClusterIP", "spread", cluster_ip),
            SERVERS,
        );
    });
    for (from, local) in [
        ("pod-a3", ["pod-a1", "pod-a2"]),
        ("pod-b3", ["pod-b1", "pod-b2"]),
        ("node-a", ["pod-a1", "pod-a2"]),
    ] {
        for mode in ["tcp", "udp"] {
            let port = if mode == "tcp" { HTTP_PORT } else { DNS_PORT };
            let seen = answered_by(&attempts(&env.c, from, mode, local_ip, port, 30));
            assert_eq!(
                seen.keys().map(String::as_str).collect::<Vec<_>>(),
                local,
                "internalTrafficPolicy Local: {mode} from {from} must reach exactly the \
                 endpoints on its own node: {seen:?}"
            );
        }
    }
    let seen = answered_by(&attempts(
        &env.c, "pod-a3", "tcp", cluster_ip, HTTP_PORT, 40,
    ));
    assert!(
        seen.keys().any(|p| p.starts_with("pod-a")) && seen.keys().any(|p| p.starts_with("pod-b")),
        "without the policy, pod-a3 reaches endpoints on both nodes: {seen:?}"
    );
}
