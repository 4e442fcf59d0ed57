//! The agent in cluster mode: following the (fake) Kubernetes API server
//! instead of a manifest directory, on a simulated node, with real
//! traffic. Needs root.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use gangplank_tests::agent::{Agent, AgentOpts};
use gangplank_tests::chart;
use gangplank_tests::fake_api::FakeApi;
use gangplank_tests::manifests::{Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::{Cluster, ProbeResult, Proc};

const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 210, 10);
const DB: Ipv4Addr = Ipv4Addr::new(198, 18, 210, 11);
const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9962";

struct Env {
    // Dropped first: the API server, then the agent, then the cluster.
    api: FakeApi,
    agent: Agent,
    _servers: Vec<Proc>,
    c: Cluster,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    /// Every test ran within the chart's RBAC (unless it failed already).
    fn drop(&mut self) {
        let refused = self.api.refused();
        if !std::thread::panicking() {
            assert!(
                refused.is_empty(),
                "the chart's RBAC refused the agent: {refused:?}"
            );
        }
    }
}

fn service(name: &str, ip: Ipv4Addr) -> String {
    Service::cluster_ip("default", name, ip)
        .port("http", 80, "TCP", Target::Number(PORT))
        .to_yaml()
}

fn slice(c: &Cluster, service: &str, pods: &[&str]) -> String {
    let mut slice =
        EndpointSlice::new("default", service, &format!("{service}-x1")).port("http", PORT, "TCP");
    for p in pods {
        let pod = c.pod(p);
        slice = slice.endpoint(Endpoint::ready(pod.ip, &pod.node));
    }
    slice.to_yaml()
}

/// node-a (pod-a1, pod-a2, client-a), the API server in node-a's network
/// namespace with `web` on pod-a1, and the agent following it.
fn env(test: &str) -> Env {
    let c = Cluster::new(test, &[("node-a", &["pod-a1", "pod-a2", "client-a"])]).expect("cluster");
    let servers = ["pod-a1", "pod-a2"]
        .iter()
        .map(|p| c.serve(p, &[PORT], &[]).expect("server"))
        .collect();
    let api =
        FakeApi::start_in_netns(c.netns("node-a"), [127, 0, 0, 1].into()).expect("fake API server");
    api.apply_yaml(&service("web", WEB)).expect("web");
    api.apply_yaml(&slice(&c, "web", &["pod-a1"]))
        .expect("web slice");
    api.apply_yaml("apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n")
        .expect("node");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), "node-a").expect("kubeconfig");
    // Exactly what the Helm chart grants the agent: anything more is
    // refused, and Env's drop checks nothing was.
    let rules = chart::rbac_rules("gangplank", "kube-system", "gangplank-agent").expect("rules");
    api.authorize("node-a", rules);
    let opts = AgentOpts {
        metrics_addr: Some(METRICS.into()),
        ..AgentOpts::default()
    }
    .kubeconfig(kubeconfig);
    let agent = Agent::start_with(&c, "node-a", opts).expect("agent in cluster mode");
    Env {
        api,
        agent,
        _servers: servers,
        c,
        _dir: dir,
    }
}

fn tcp(c: &Cluster, vip: Ipv4Addr) -> ProbeResult {
    c.probe(
        "client-a",
        ["tcp", &format!("{vip}:80"), "--timeout-ms", "500"],
    )
    .expect("probe")
    .remove(0)
}

/// Probes `vip` until the answer satisfies `pred` (10 s at most).
fn until(
    c: &Cluster,
    vip: Ipv4Addr,
    what: &str,
    pred: impl Fn(&ProbeResult) -> bool,
) -> ProbeResult {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tcp(c, vip);
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn answered_by(r: &ProbeResult, pod: &str) -> bool {
    r.ok && r.pod() == Some(pod)
}

fn http_get(c: &Cluster, path: &str) -> (u16, String) {
    let r = c
        .probe_from_node("node-a", ["tcp", METRICS, "--path", path])
        .expect("GET")
        .remove(0);
    assert!(r.ok, "GET {path}: {r:?}");
    (
        r.status.expect("an HTTP answer"),
        r.reply.unwrap_or_default(),
    )
}

#[test]
fn the_agent_follows_services_and_endpoints_from_the_api() {
    let e = env("api-follow");
    assert!(
        answered_by(&tcp(&e.c, WEB), "pod-a1"),
        "initial list served"
    );

    // A new Service with its slice.
    e.api.apply_yaml(&service("db", DB)).expect("db");
    e.api
        .apply_yaml(&slice(&e.c, "db", &["pod-a2"]))
        .expect("db slice");
    until(&e.c, DB, "the new Service", |r| answered_by(r, "pod-a2"));

    // Endpoints move.
    e.api
        .apply_yaml(&slice(&e.c, "web", &["pod-a2"]))
        .expect("web slice");
    until(&e.c, WEB, "the moved endpoint", |r| {
        answered_by(r, "pod-a2")
    });

    // A deleted Service stops being translated.
    assert!(e.api.delete("Service", Some("default"), "db"));
    until(&e.c, DB, "the deleted Service", |r| !r.ok);

    let (status, body) = http_get(&e.c, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Kubernetes API: following"), "{body}");
    // web (on pod-a2) is left; db's slice without its Service programs
    // nothing. (The sizes are set just after the maps are written: poll.)
    let wanted = [
        "gangplank_api_connected 1",
        "gangplank_services 1",
        "gangplank_backends 1",
        "gangplank_frontends 1",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = http_get(&e.c, "/metrics");
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|series| !metrics.lines().any(|l| l == *series))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{missing:?} missing:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        e.agent.log().contains("found this node's Node object"),
        "{}",
        e.agent.log()
    );
}

#[test]
fn an_api_outage_keeps_the_datapath_and_converges_after() {
    let e = env("api-outage");
    let mut hold =
        e.c.spawn_probe("client-a", ["hold", &format!("{WEB}:80")])
            .expect("hold");
    hold.wait_for_line(|l| l.contains("\"ok\":true"), Duration::from_secs(5))
        .expect("connected");

    e.api.refuse_connections(true);
    // The watch notices on its next request; the agent says so.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(&e.c, "/healthz");
        assert_eq!(status, 200, "alive during the outage: {body}");
        if body.contains("unreachable") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage never showed in /healthz: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = http_get(&e.c, "/metrics");
    assert!(
        metrics.lines().any(|l| l == "gangplank_api_connected 0"),
        "{metrics}"
    );
    assert!(
        answered_by(&tcp(&e.c, WEB), "pod-a1"),
        "the last known state is served"
    );

    // Changes made while the agent cannot see them arrive once it can.
    e.api.apply_yaml(&service("db", DB)).expect("db");
    e.api
        .apply_yaml(&slice(&e.c, "db", &["pod-a2"]))
        .expect("db slice");
    e.api.compact();
    e.api.refuse_connections(false);
    until(&e.c, DB, "convergence after the outage", |r| {
        answered_by(r, "pod-a2")
    });
    hold.send_line("after").expect("send");
    hold.wait_for_line(|l| l.contains("line=after"), Duration::from_secs(5))
        .expect("the connection from before the outage still works");
}

#[test]
fn a_restart_removes_what_was_deleted_while_the_agent_was_down() {
    let mut e = env("api-restart");
    e.api.apply_yaml(&service("db", DB)).expect("db");
    e.api
        .apply_yaml(&slice(&e.c, "db", &["pod-a2"]))
        .expect("db slice");
    until(&e.c, DB, "db", |r| answered_by(r, "pod-a2"));

    e.agent.stop().expect("stop");
    assert!(e.api.delete("Service", Some("default"), "db"));
    assert!(e.api.delete("EndpointSlice", Some("default"), "db-x1"));
    e.agent.restart(&e.c).expect("restart");
    // Ready means reconciled: the stale Service is gone already.
    let list = e.agent.service_list(&e.c).expect("service list");
    let text = list.to_string();
    assert!(
        !text.contains(&DB.to_string()),
        "db still programmed after the restart: {text}"
    );
    assert!(text.contains(&WEB.to_string()), "web kept: {text}");
    assert!(!tcp(&e.c, DB).ok, "db still answers");
    assert!(answered_by(&tcp(&e.c, WEB), "pod-a1"));
}

#[test]
fn a_restart_with_an_incomplete_list_leaves_the_pinned_datapath_alone() {
    let mut e = env("api-partial");
    assert!(answered_by(&tcp(&e.c, WEB), "pod-a1"));
    // Services list, EndpointSlices do not: writing the Services alone
    // would replace the pinned entries with ones without backends.
    e.api.deny("list", "endpointslices");
    e.agent.restart_unready(&e.c).expect("restart");
    e.agent
        .wait_for_log(|l| l.contains("forbidden"), Duration::from_secs(10))
        .expect("the refusal is reported");
    for _ in 0..5 {
        assert!(
            answered_by(&tcp(&e.c, WEB), "pod-a1"),
            "the pinned state keeps serving while the lists are incomplete"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    e.api.allow("list", "endpointslices");
    e.agent
        .wait_for_log(|l| l.contains("agent ready"), Duration::from_secs(20))
        .expect("ready once every list is in");
    assert!(answered_by(&tcp(&e.c, WEB), "pod-a1"));
}
