//! The simulated cluster: network namespaces, bridges, veths, routes, cgroups
//! and a private bpffs, torn down on drop.
//!
//! ```text
//! client ns ── lan ns (bridge br0) ──┬── node-a ns (bridge cbr0 for pods) ──┬── pod-a1 ns
//!                                    │                                      └── pod-a2 ns
//!                                    └── node-b ns ──── pod-b1 ns
//! ```
//!
//! Addressing is the same in every cluster (namespaces isolate them):
//! lan 198.18.0.0/24, node i = 198.18.0.(10+i), client = 198.18.0.100;
//! node i's pod CIDR 198.19.(i+1).0/24 with cbr0 = .1 and pod j = .(10+j).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::probe::{self, ProbeResult};
use crate::process::{self, lock, Placement, Proc, SharedChild};
use crate::sys::{self, IpBatch, Sysctl};

/// Interface names, identical in every namespace of their kind.
const LAN_BRIDGE: &str = "br0";
const NODE_LAN_IF: &str = "eth0";
const NODE_BRIDGE: &str = "cbr0";
const POD_IF: &str = "eth0";
const CLIENT_IF: &str = "eth0";

/// How long `Cluster::serve` waits for "ready", and `Cluster::probe` for gp-probe to finish.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for cgroups to empty after their processes were reaped.
const CGROUP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-process cluster counter (the `<n>` in `gpt-<pid>-<n>`).
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Ids of clusters alive in this process; `sweep_stale` never touches them.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether cluster `id` belongs to a live `Cluster` in this process.
pub(crate) fn is_live(id: &str) -> bool {
    lock(&LIVE).contains(id)
}

/// A simulated Kubernetes node: a network namespace on the lan with a bridge
/// for its pods, a cgroup subtree for them, and a bpffs pin directory.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name as given to [`Cluster::new`], e.g. "node-a".
    pub name: String,
    /// 0-based position in the cluster (determines its addresses).
    pub index: usize,
    /// Network namespace name (under /run/netns), `<id>-<name>`.
    pub netns: String,
    /// The node's cgroup2 directory, `<cgroup2>/<id>/<name>`; its pods are children.
    pub cgroup: PathBuf,
    /// Address on the lan (`eth0`), 198.18.0.(10+index).
    pub address: Ipv4Addr,
    /// Pod CIDR, (198.19.(index+1).0, 24).
    pub pod_cidr: (Ipv4Addr, u8),
    /// The pod bridge's address (pods' default gateway), 198.19.(index+1).1.
    pub bridge_ip: Ipv4Addr,
    /// Pin directory for this node's agent, `<cluster bpffs>/<name>` (exists).
    pub bpffs: PathBuf,
    /// Interface facing the lan ("eth0").
    pub lan_if: String,
    /// Bridge the pods' veths are attached to ("cbr0").
    pub bridge: String,
    /// Names of the pods on this node.
    pub pods: Vec<String>,
}

/// A simulated pod: a network namespace with `eth0` on its node's bridge and
/// a cgroup under its node's cgroup.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod name, e.g. "pod-a1".
    pub name: String,
    /// Name of the node it runs on.
    pub node: String,
    /// Network namespace name (under /run/netns), `<id>-<name>`.
    pub netns: String,
    /// Pod IP (on `eth0`, /24), 198.19.(node+1).(10+j).
    pub ip: Ipv4Addr,
    /// The pod's cgroup2 directory, `<node cgroup>/<name>`.
    pub cgroup: PathBuf,
    /// Default gateway: the node's bridge address.
    pub gateway: Ipv4Addr,
    /// Host side of the pod's veth, in the node's namespace (e.g. "veth0").
    pub host_if: String,
}

/// A plain host on the lan (the outside client).
#[derive(Debug, Clone)]
pub struct Host {
    /// "client".
    pub name: String,
    /// Network namespace name (under /run/netns), `<id>-client`.
    pub netns: String,
    /// Address on the lan (`eth0`, /24; no other route), 198.18.0.100.
    pub ip: Ipv4Addr,
}

/// A simulated cluster (see the module docs for the topology). Everything it
/// creates is removed on drop, including after a panic in the test.
pub struct Cluster {
    id: String,
    test: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    client: Host,
    lan_netns: String,
    /// `<cgroup2>/<id>`.
    cgroup: PathBuf,
    /// `/tmp/gangplank-tests/<id>-<label>`.
    tmp: PathBuf,
    bpffs: PathBuf,
    manifests: PathBuf,
    // What has been created so far, so a half-built cluster cleans up exactly that.
    tmp_created: bool,
    bpffs_mounted: bool,
    cgroups_created: Vec<PathBuf>,
    netns_created: Vec<String>,
    /// Every process started in the cluster, leaked handles included.
    procs: Mutex<Vec<SharedChild>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("test", &self.test)
            .field("nodes", &self.nodes)
            .field("pods", &self.pods)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Checks a node/pod name: it becomes part of netns, cgroup and directory names.
fn check_name(kind: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        bail!("invalid {kind} name {name:?}: use 1-48 characters from [A-Za-z0-9._-], not starting with '.' or '-'");
    }
    if name == "client" || name == "lan" {
        bail!("{kind} name {name:?} is reserved (it names the client / lan namespace)");
    }
    Ok(())
}

/// Makes the test label safe for a directory name.
fn sanitize_label(test: &str) -> String {
    let s: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "cluster".into()
    } else {
        s
    }
}

/// Picks the next free `gpt-<pid>-<n>` and marks it live.
///
/// The pid makes ids unique across processes; ids still present from an
/// earlier process that had the same pid (not yet swept) are skipped.
fn allocate_id(tmp_root: &Path, cgroup_root: &Path) -> Result<String> {
    let pid = std::process::id();
    let existing: Vec<String> = sys::dir_names(Path::new(sys::NETNS_DIR))?
        .into_iter()
        .chain(sys::dir_names(tmp_root)?)
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    loop {
        let id = format!("gpt-{pid}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let prefix = format!("{id}-");
        if existing.iter().any(|n| n.starts_with(&prefix)) || cgroup_root.join(&id).exists() {
            continue;
        }
        lock(&LIVE).insert(id.clone());
        return Ok(id);
    }
}

impl Cluster {
    /// Builds a cluster. `test` is a short label (used in the temp dir name);
    /// `nodes` lists nodes with their pods, e.g.
    /// `&[("node-a", &["pod-a1", "pod-a2"]), ("node-b", &["pod-b1"])]`.
    ///
    /// Node and pod names must be unique within the cluster. Fails (after
    /// removing whatever was already created) if anything goes wrong.
    pub fn new(test: &str, nodes: &[(&str, &[&str])]) -> Result<Cluster> {
        crate::check_privileges()?;
        if nodes.len() > 89 {
            bail!("at most 89 nodes (198.18.0.10-98); got {}", nodes.len());
        }
        let mut seen = BTreeSet::new();
        for (node, pods) in nodes {
            check_name("node", node)?;
            if pods.len() > 240 {
                bail!("at most 240 pods per node; {node} has {}", pods.len());
            }
            for pod in pods.iter() {
                check_name("pod", pod)?;
            }
            for name in std::iter::once(node).chain(pods.iter()) {
                if !seen.insert(*name) {
                    bail!("duplicate node/pod name {name:?}");
                }
            }
        }

        let tmp_root = sys::ensure_tmp_root()?;
        let cgroup_root = sys::cgroup2_root()?;
        // Nothing fallible between allocating the id and constructing the
        // Cluster, whose Drop releases it again.
        let id = allocate_id(&tmp_root, cgroup_root)?;
        let tmp = tmp_root.join(format!("{id}-{}", sanitize_label(test)));
        let bpffs = tmp.join("bpffs");
        let cgroup = cgroup_root.join(&id);

        let mut cluster = Cluster {
            client: Host {
                name: "client".into(),
                netns: format!("{id}-client"),
                ip: Ipv4Addr::new(198, 18, 0, 100),
            },
            lan_netns: format!("{id}-lan"),
            manifests: tmp.join("manifests"),
            test: test.to_string(),
            nodes: Vec::new(),
            pods: Vec::new(),
            cgroup,
            tmp,
            bpffs,
            id,
            tmp_created: false,
            bpffs_mounted: false,
            cgroups_created: Vec::new(),
            netns_created: Vec::new(),
            procs: Mutex::new(Vec::new()),
        };
        // On error `cluster` is dropped here, which removes what was created.
        cluster
            .plan(nodes)
            .with_context(|| format!("planning cluster {} ({test})", cluster.id))?;
        cluster
            .build()
            .with_context(|| format!("creating cluster {} ({test})", cluster.id))?;
        Ok(cluster)
    }

    /// Computes names and addresses of nodes and pods (validated by `new`).
    fn plan(&mut self, nodes: &[(&str, &[&str])]) -> Result<()> {
        let (id, cgroup, bpffs) = (&self.id, &self.cgroup, &self.bpffs);
        let mut node_list = Vec::new();
        let mut pod_list = Vec::new();
        for (i, (node, pods)) in nodes.iter().enumerate() {
            let third = u8::try_from(i + 1).map_err(|_| anyhow!("too many nodes"))?;
            let node_cgroup = cgroup.join(node);
            let bridge_ip = Ipv4Addr::new(198, 19, third, 1);
            for (j, pod) in pods.iter().enumerate() {
                pod_list.push(Pod {
                    name: pod.to_string(),
                    node: node.to_string(),
                    netns: format!("{id}-{pod}"),
                    ip: Ipv4Addr::new(
                        198,
                        19,
                        third,
                        u8::try_from(10 + j).map_err(|_| anyhow!("too many pods"))?,
                    ),
                    cgroup: node_cgroup.join(pod),
                    gateway: bridge_ip,
                    host_if: format!("veth{j}"),
                });
            }
            node_list.push(Node {
                name: node.to_string(),
                index: i,
                netns: format!("{id}-{node}"),
                cgroup: node_cgroup,
                address: Ipv4Addr::new(
                    198,
                    18,
                    0,
                    u8::try_from(10 + i).map_err(|_| anyhow!("too many nodes"))?,
                ),
                pod_cidr: (Ipv4Addr::new(198, 19, third, 0), 24),
                bridge_ip,
                bpffs: bpffs.join(node),
                lan_if: NODE_LAN_IF.into(),
                bridge: NODE_BRIDGE.into(),
                pods: pods.iter().map(|p| p.to_string()).collect(),
            });
        }

        self.nodes = node_list;
        self.pods = pod_list;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        // Temp dir, owner marker (lets sweep_stale detect pid reuse), bpffs.
        fs::create_dir(&self.tmp).with_context(|| format!("creating {}", self.tmp.display()))?;
        self.tmp_created = true;
        let pid = std::process::id();
        let start = sys::pid_start_time(pid).unwrap_or(0);
        fs::write(
            self.tmp.join("owner"),
            format!("pid={pid}\nstarttime={start}\ntest={}\n", self.test),
        )
        .context("writing owner marker")?;
        fs::create_dir(&self.manifests).context("creating manifests dir")?;
        fs::create_dir(&self.bpffs).context("creating bpffs mount point")?;
        sys::mount_bpffs(&self.bpffs)?;
        self.bpffs_mounted = true;
        for n in &self.nodes {
            fs::create_dir(&n.bpffs).with_context(|| format!("creating {}", n.bpffs.display()))?;
        }

        // cgroups, top-down (recorded in creation order, removed in reverse).
        let mut cgroups = vec![self.cgroup.clone()];
        for n in &self.nodes {
            cgroups.push(n.cgroup.clone());
            cgroups.extend(
                self.pods
                    .iter()
                    .filter(|p| p.node == n.name)
                    .map(|p| p.cgroup.clone()),
            );
        }
        for cg in cgroups {
            fs::create_dir(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
            self.cgroups_created.push(cg);
        }

        // Namespaces. Recorded before creation: deletion skips missing ones.
        let all_netns: Vec<String> = [self.lan_netns.clone(), self.client.netns.clone()]
            .into_iter()
            .chain(self.nodes.iter().map(|n| n.netns.clone()))
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .collect();
        self.netns_created = all_netns.clone();
        let script: String = all_netns
            .iter()
            .map(|n| format!("netns add {n}\n"))
            .collect();
        {
            // The first `ip netns add` on a machine turns /run/netns into a
            // shared bind mount of itself; two doing that concurrently stack
            // two mounts. Serialize creation until that mount exists.
            static FIRST_NETNS: Mutex<()> = Mutex::new(());
            let netns_dir = Path::new(sys::NETNS_DIR);
            let set_up = sys::mounts()?.iter().any(|m| m.mount_point == netns_dir);
            let _serial = (!set_up).then(|| lock(&FIRST_NETNS));
            sys::ip_batches(&[IpBatch {
                netns: None,
                force: false,
                script,
            }])?;
        }

        // sysctls before any interface exists, so `default` applies to all of them:
        // - rp_filter off: the service datapath may legitimately produce
        //   asymmetric paths; the host's setting must not leak into tests.
        // - IPv6 off: no DAD/RS/MLD chatter on the wires (addresses are v4 only).
        // - Forwarding on nodes only.
        let sysctl = |key, value, optional| Sysctl {
            key,
            value,
            optional,
        };
        let common = vec![
            // Explicit, as IPv4 settings of new namespaces are copied from the host's.
            sysctl("net.ipv4.ip_forward", "0", false),
            sysctl("net.ipv4.conf.all.rp_filter", "0", false),
            sysctl("net.ipv4.conf.default.rp_filter", "0", false),
            sysctl("net.ipv6.conf.all.disable_ipv6", "1", true),
            sysctl("net.ipv6.conf.default.disable_ipv6", "1", true),
        ];
        let mut node_sysctls = common.clone();
        node_sysctls.push(sysctl("net.ipv4.ip_forward", "1", false));
        let jobs: Vec<(String, Vec<Sysctl>)> = all_netns
            .iter()
            .map(|ns| {
                let is_node = self.nodes.iter().any(|n| &n.netns == ns);
                (
                    ns.clone(),
                    if is_node {
                        node_sysctls.clone()
                    } else {
                        common.clone()
                    },
                )
            })
            .collect();
        sys::write_sysctls(&jobs)?;

        // Links. Every veth is created inside the namespace of one end with
        // its peer moved straight into the other: nothing touches the root
        // namespace. Order matters: lan (creates nodes' eth0), then nodes
        // (create pods' eth0), then pods and the client.
        let mut lan = String::new();
        let _ = writeln!(lan, "link set lo up");
        let _ = writeln!(lan, "link add {LAN_BRIDGE} type bridge");
        let _ = writeln!(lan, "link set {LAN_BRIDGE} up");
        for n in &self.nodes {
            let port = format!("vn{}", n.index);
            let _ = writeln!(
                lan,
                "link add {port} type veth peer name {NODE_LAN_IF} netns {}",
                n.netns
            );
            let _ = writeln!(lan, "link set {port} master {LAN_BRIDGE} up");
        }
        let _ = writeln!(
            lan,
            "link add vclient type veth peer name {CLIENT_IF} netns {}",
            self.client.netns
        );
        let _ = writeln!(lan, "link set vclient master {LAN_BRIDGE} up");
        sys::ip_batches(&[IpBatch {
            netns: Some(self.lan_netns.clone()),
            force: false,
            script: lan,
        }])?;

        let mut node_batches = Vec::new();
        for n in &self.nodes {
            let mut s = String::new();
            let _ = writeln!(s, "link set lo up");
            let _ = writeln!(s, "addr add {}/24 dev {NODE_LAN_IF}", n.address);
            let _ = writeln!(s, "link set {NODE_LAN_IF} up");
            let _ = writeln!(s, "link add {NODE_BRIDGE} type bridge");
            let _ = writeln!(
                s,
                "addr add {}/{} dev {NODE_BRIDGE}",
                n.bridge_ip, n.pod_cidr.1
            );
            let _ = writeln!(s, "link set {NODE_BRIDGE} up");
            for p in self.pods.iter().filter(|p| p.node == n.name) {
                let _ = writeln!(
                    s,
                    "link add {} type veth peer name {POD_IF} netns {}",
                    p.host_if, p.netns
                );
                let _ = writeln!(s, "link set {} master {NODE_BRIDGE} up", p.host_if);
            }
            for other in self.nodes.iter().filter(|o| o.name != n.name) {
                let _ = writeln!(
                    s,
                    "route add {}/{} via {} dev {NODE_LAN_IF}",
                    other.pod_cidr.0, other.pod_cidr.1, other.address
                );
            }
            node_batches.push(IpBatch {
                netns: Some(n.netns.clone()),
                force: false,
                script: s,
            });
        }
        sys::ip_batches(&node_batches)?;

        let mut leaf_batches = Vec::new();
        for p in &self.pods {
            let mut s = String::new();
            let _ = writeln!(s, "link set lo up");
            let _ = writeln!(s, "addr add {}/24 dev {POD_IF}", p.ip);
            let _ = writeln!(s, "link set {POD_IF} up");
            let _ = writeln!(s, "route add default via {} dev {POD_IF}", p.gateway);
            leaf_batches.push(IpBatch {
                netns: Some(p.netns.clone()),
                force: false,
                script: s,
            });
        }
        let mut s = String::new();
        let _ = writeln!(s, "link set lo up");
        let _ = writeln!(s, "addr add {}/24 dev {CLIENT_IF}", self.client.ip);
        let _ = writeln!(s, "link set {CLIENT_IF} up");
        leaf_batches.push(IpBatch {
            netns: Some(self.client.netns.clone()),
            force: false,
            script: s,
        });
        sys::ip_batches(&leaf_batches)?;
        Ok(())
    }

    /// Unique id, `gpt-<pid>-<n>`; prefix of every netns and the cgroup dir name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The test label given to [`Cluster::new`].
    pub fn test(&self) -> &str {
        &self.test
    }

    /// The node called `name`. Panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.find_node(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The pod called `name`. Panics if there is none.
    pub fn pod(&self, name: &str) -> &Pod {
        self.find_pod(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn find_node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            anyhow!(
                "cluster {}: no node named {name:?} (nodes: {})",
                self.id,
                known.join(", ")
            )
        })
    }

    fn find_pod(&self, name: &str) -> Result<&Pod> {
        self.pods.iter().find(|p| p.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
            anyhow!(
                "cluster {}: no pod named {name:?} (pods: {})",
                self.id,
                known.join(", ")
            )
        })
    }

    /// The outside client (on the lan only).
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// All nodes, in the order given to [`Cluster::new`].
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All pods, node by node in the order given to [`Cluster::new`].
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Network namespace name of a pod, a node, "client" or "lan" (for `ip -n`).
    /// Panics if there is no such member.
    pub fn netns(&self, name: &str) -> &str {
        match name {
            "client" => &self.client.netns,
            "lan" => &self.lan_netns,
            _ => match (self.find_pod(name), self.find_node(name)) {
                (Ok(p), _) => &p.netns,
                (_, Ok(n)) => &n.netns,
                _ => panic!(
                    "cluster {}: no pod, node, client or lan called {name:?}",
                    self.id
                ),
            },
        }
    }

    /// The cluster's own cgroup2 directory (`<cgroup2>/<id>`), parent of the nodes'.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// A fresh, private bpffs instance mounted for this cluster; each node
    /// gets `<bpffs>/<node>` (created) as its pin directory ([`Node::bpffs`]).
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The cluster's own temp dir (root's, under /tmp/gangplank-tests),
    /// removed with the cluster: for files its users write, e.g. rule sets.
    pub fn work_dir(&self) -> &Path {
        &self.tmp
    }

    /// A temp dir for Kubernetes manifests, shared by all nodes (like the API server).
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }

    // -- processes ----------------------------------------------------------

    fn register(&self, child: SharedChild) {
        let mut procs = lock(&self.procs);
        // Forget children already reaped (their status is cached in the
        // Child), so long tests running many commands don't accumulate them.
        procs.retain(|c| match c.try_lock() {
            Ok(mut c) => !matches!(c.try_wait(), Ok(Some(_))),
            Err(_) => true,
        });
        procs.push(child);
    }

    fn spawn_placed(&self, placement: Placement, cmd: Command, piped_stdin: bool) -> Result<Proc> {
        let (proc, shared) = process::spawn(cmd, &placement, piped_stdin)?;
        self.register(shared);
        Ok(proc)
    }

    /// Where a pod, node ("in the node", i.e. with its cgroup), "client" or "lan" runs things.
    fn placement(&self, name: &str) -> Result<Placement> {
        let label = |what: &str| format!("{what} ({})", self.id);
        Ok(match name {
            "client" => Placement {
                label: label("client"),
                netns: Some(self.client.netns.clone()),
                cgroup: None,
            },
            "lan" => Placement {
                label: label("lan"),
                netns: Some(self.lan_netns.clone()),
                cgroup: None,
            },
            _ => {
                if let Ok(p) = self.find_pod(name) {
                    Placement {
                        label: label(&p.name),
                        netns: Some(p.netns.clone()),
                        cgroup: Some(p.cgroup.clone()),
                    }
                } else if let Ok(n) = self.find_node(name) {
                    Placement {
                        label: label(&n.name),
                        netns: Some(n.netns.clone()),
                        cgroup: Some(n.cgroup.clone()),
                    }
                } else {
                    bail!(
                        "cluster {}: no pod, node, client or lan called {name:?}",
                        self.id
                    )
                }
            }
        })
    }

    /// Starts a process in a pod: its netns and its cgroup
    /// (`<node cgroup>/<pod>`), both entered between fork and exec.
    /// stdin/stdout/stderr are piped; see [`Proc`].
    pub fn spawn_in_pod(&self, pod: &str, cmd: Command) -> Result<Proc> {
        self.find_pod(pod)?;
        self.spawn_placed(self.placement(pod)?, cmd, true)
    }

    /// Starts a process on a node: the node's netns and the node's cgroup
    /// (directly in it, next to the pods' cgroups; no controllers are enabled,
    /// so cgroup v2's no-internal-process rule does not apply).
    pub fn spawn_in_node(&self, node: &str, cmd: Command) -> Result<Proc> {
        self.find_node(node)?;
        self.spawn_placed(self.placement(node)?, cmd, true)
    }

    /// Starts the agent for a node: the node's netns but *not* its cgroup
    /// subtree (the agent should not live in the cgroup it manages).
    pub fn spawn_agent_process(&self, node: &str, cmd: Command) -> Result<Proc> {
        let n = self.find_node(node)?;
        let placement = Placement {
            label: format!("agent@{} ({})", n.name, self.id),
            netns: Some(n.netns.clone()),
            cgroup: None,
        };
        self.spawn_placed(placement, cmd, true)
    }

    /// Starts a process in the client namespace.
    pub fn spawn_in_client(&self, cmd: Command) -> Result<Proc> {
        self.spawn_placed(self.placement("client")?, cmd, true)
    }

    /// Starts a process in a pod, a node (with its cgroup), "client" or "lan".
    pub fn spawn_in(&self, name: &str, cmd: Command) -> Result<Proc> {
        self.spawn_placed(self.placement(name)?, cmd, true)
    }

    /// Runs a command to completion in a pod (as [`Cluster::spawn_in_pod`],
    /// stdin = /dev/null). Killed after `timeout`, which is then an error
    /// naming the command with its stderr; a non-zero exit is not an error.
    pub fn run_in_pod(&self, pod: &str, cmd: Command, timeout: Duration) -> Result<Output> {
        self.find_pod(pod)?;
        self.spawn_placed(self.placement(pod)?, cmd, false)?
            .wait_with_output(timeout)
    }

    /// Runs a command to completion on a node (netns + node cgroup); see [`Cluster::run_in_pod`].
    pub fn run_in_node(&self, node: &str, cmd: Command, timeout: Duration) -> Result<Output> {
        self.find_node(node)?;
        self.spawn_placed(self.placement(node)?, cmd, false)?
            .wait_with_output(timeout)
    }

    /// Runs a command to completion in the client namespace; see [`Cluster::run_in_pod`].
    pub fn run_in_client(&self, cmd: Command, timeout: Duration) -> Result<Output> {
        self.spawn_placed(self.placement("client")?, cmd, false)?
            .wait_with_output(timeout)
    }

    /// Runs a command to completion in a pod, node, "client" or "lan"; see [`Cluster::run_in_pod`].
    pub fn run_in(&self, name: &str, cmd: Command, timeout: Duration) -> Result<Output> {
        self.spawn_placed(self.placement(name)?, cmd, false)?
            .wait_with_output(timeout)
    }

    /// Runs `ip` commands (`ip -batch` syntax, one per line, without the
    /// leading `ip`) in the netns of a pod, node, "client" or "lan", e.g.
    /// `c.ip("client", "route add 198.18.0.200/32 via 198.18.0.10")`.
    /// Only ever touches the cluster's own namespaces.
    pub fn ip(&self, name: &str, script: &str) -> Result<()> {
        let netns = match self.placement(name)?.netns {
            Some(ns) => ns,
            None => bail!("{name} has no network namespace"),
        };
        let mut script = script.to_string();
        if !script.ends_with('\n') {
            script.push('\n');
        }
        sys::ip_batches(&[IpBatch {
            netns: Some(netns),
            force: false,
            script,
        }])
    }

    /// The `ifindex` of interface `iface` in the netns of a pod, node,
    /// "client" or "lan".
    pub fn ifindex(&self, name: &str, iface: &str) -> Result<u32> {
        let netns = match self.placement(name)?.netns {
            Some(ns) => ns,
            None => bail!("{name} has no network namespace"),
        };
        crate::sys::ifindex_in(&netns, iface)
    }

    // -- gp-probe -----------------------------------------------------------

    /// Starts `gp-probe serve --name <pod>` with the given ports in `pod` (or
    /// any other member, see [`Cluster::spawn_in`]) and waits for it to be ready.
    pub fn serve(&self, pod: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> Result<Proc> {
        let mut cmd = probe::probe_cmd()?;
        cmd.args(["serve", "--name", pod]);
        for p in tcp_ports {
            cmd.arg("--tcp").arg(p.to_string());
        }
        for p in udp_ports {
            cmd.arg("--udp").arg(p.to_string());
        }
        let mut proc = self.spawn_in(pod, cmd)?;
        proc.wait_for_line(|l| l == "ready", SERVE_READY_TIMEOUT)?;
        Ok(proc)
    }

    /// Starts `gp-probe <args>` in a pod, node (with its cgroup) or "client"
    /// without waiting, e.g. for `hold` (drive it with [`Proc::send_line`] and
    /// [`Proc::wait_for_line`]).
    pub fn spawn_probe<I, S>(&self, name: &str, args: I) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = probe::probe_cmd()?;
        cmd.args(args);
        self.spawn_in(name, cmd)
    }

    /// [`Cluster::probe`] from a node's own netns and cgroup (like a
    /// host-network process); fails if `node` is not a node.
    pub fn probe_from_node<I, S>(&self, node: &str, args: I) -> Result<Vec<ProbeResult>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.find_node(node)?;
        self.probe(node, args)
    }

    /// Runs `gp-probe <args>` in a pod, node, or "client" and parses its
    /// JSON lines, e.g. `c.probe("pod-a1", ["tcp", "198.19.2.10:80", "--count", "3"])`.
    /// gp-probe exiting non-zero (bad arguments, ...) is an error; failed
    /// attempts are not (they are results with `ok: false`).
    pub fn probe<I, S>(&self, from: &str, args: I) -> Result<Vec<ProbeResult>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = probe::probe_cmd()?;
        cmd.args(args);
        let desc = format!("{cmd:?}");
        let out = self.run_in(from, cmd, PROBE_RUN_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "{desc} in {from} ({}) {}:\n{}{}",
                self.id,
                process::describe_status(out.status),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        probe::parse_lines(&String::from_utf8_lossy(&out.stdout))
    }

    // -- teardown -----------------------------------------------------------

    /// Removes everything, in dependency order; returns what could not be removed.
    fn teardown(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();

        // 1. Processes: ours only, by handle (pid reuse safe).
        let procs = std::mem::take(&mut *lock(&self.procs));
        for p in &procs {
            if let Err(e) = process::kill_and_reap(p) {
                errors.push(anyhow!("killing a process: {e}"));
            }
        }

        // 2. Namespaces (the kernel frees interfaces once nothing uses them).
        if let Err(e) = sys::delete_netns(&self.netns_created) {
            errors.push(e);
        }

        // 3. cgroups, bottom-up. Reaped processes leave their cgroup right
        // away, but give stragglers (children of our processes) a moment.
        let deadline = Instant::now() + CGROUP_DRAIN_TIMEOUT;
        for cg in self.cgroups_created.iter().rev() {
            let mut pids = sys::cgroup_pids(cg);
            while !pids.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                pids = sys::cgroup_pids(cg);
            }
            match fs::remove_dir(cg) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => errors.push(anyhow!(
                    "rmdir {}: {e} (processes still inside, not started by the harness: {pids:?})",
                    cg.display()
                )),
            }
        }

        // 4. bpffs, then 5. the temp dir, but never recursively delete across
        // a mount that is still there.
        let mut tmp_removable = true;
        if self.bpffs_mounted {
            if let Err(e) = sys::umount_detach(&self.bpffs) {
                errors.push(e);
                tmp_removable = false;
            }
        }
        if self.tmp_created && tmp_removable {
            match sys::mounts_under(&self.tmp) {
                Ok(m) if m.is_empty() => {
                    if let Err(e) = sys::remove_tree(&self.tmp) {
                        errors.push(e);
                    }
                }
                Ok(m) => errors.push(anyhow!(
                    "not removing {}: still mounted: {m:?}",
                    self.tmp.display()
                )),
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("gangplank-sim: cleaning up cluster {}: {e:#}", self.id);
        }
        lock(&LIVE).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("pod", "pod-a1").is_ok());
        assert!(check_name("pod", "").is_err());
        assert!(check_name("pod", "a/b").is_err());
        assert!(check_name("pod", "..").is_err());
        assert!(check_name("node", "client").is_err());
        assert_eq!(sanitize_label("ns/with space"), "ns_with_space");
    }
}
