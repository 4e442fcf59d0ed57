//! Helpers shared by the north-south end-to-end tests (NodePort,
//! LoadBalancer, node addresses, observability): a test's world of agents
//! and servers on a cluster, and assertions on what gp-probe reports.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::agent::{gangplank_cmd, Agent};
use crate::probe::ProbeResult;
use crate::{Cluster, Proc};

/// How long a `gangplank` command run in a node may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// A test's world. Fields drop in order: agents and servers before the
/// cluster (which would kill them anyway).
pub struct Env {
    /// One agent per node that runs one.
    pub agents: Vec<Agent>,
    /// gp-probe servers in the pods.
    pub servers: Vec<Proc>,
    /// The simulated cluster.
    pub c: Cluster,
}

impl Env {
    /// The agent of `node`.
    pub fn agent(&self, node: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.node() == node)
            .unwrap_or_else(|| panic!("no agent on {node}"))
    }

    /// `node`'s address on the lan.
    pub fn node_ip(&self, node: &str) -> Ipv4Addr {
        self.c.node(node).address
    }

    /// The outside client's address.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.c.client().ip
    }

    /// Restart the agent of `node` (SIGTERM, start, wait until ready).
    pub fn restart(&mut self, node: &str) {
        let Env { agents, c, .. } = self;
        let agent = agents
            .iter_mut()
            .find(|a| a.node() == node)
            .unwrap_or_else(|| panic!("no agent on {node}"));
        agent
            .restart(c)
            .unwrap_or_else(|e| panic!("restarting the agent on {node}: {e:#}"));
    }

    /// Restart every agent, one after the other.
    pub fn restart_agents(&mut self) {
        let nodes: Vec<String> = self.agents.iter().map(|a| a.node().to_string()).collect();
        for node in nodes {
            self.restart(&node);
        }
    }
}

/// gp-probe from `from` with `args`; panics if it cannot run.
pub fn probe(c: &Cluster, from: &str, args: &[&str]) -> Vec<ProbeResult> {
    c.probe(from, args)
        .unwrap_or_else(|e| panic!("probe from {from} {args:?}: {e:#}"))
}

/// Which pod answered each attempt; panics on a failed attempt.
pub fn answered_by(results: &[ProbeResult]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in results {
        assert!(r.ok, "attempt failed: {r:?}");
        let pod = r
            .pod()
            .unwrap_or_else(|| panic!("reply without pod name: {r:?}"));
        *seen.entry(pod.to_string()).or_insert(0) += 1;
    }
    seen
}

/// The IPv4 address of `a`; panics on IPv6 (the simulation is IPv4).
pub fn v4(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => panic!("unexpected IPv6 address {ip}"),
    }
}

/// `gangplank status -o json` for `agent`'s pins, run in its node's
/// namespace (so interface names resolve there), parsed.
pub fn status(c: &Cluster, agent: &Agent) -> serde_json::Value {
    let mut cmd = gangplank_cmd().expect("gangplank binary (run `cargo build` first)");
    cmd.args(["status", "-o", "json", "--bpffs"])
        .arg(&agent.bpffs);
    let out = c
        .run_in_node(agent.node(), cmd, RUN_TIMEOUT)
        .expect("running gangplank status");
    assert!(
        out.status.success(),
        "gangplank status on {} failed ({}): {}",
        agent.node(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gangplank status printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
