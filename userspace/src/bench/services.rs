//! `gangplank bench` (and `cargo xtask bench --only services`, which runs
//! it): gangplank against kube-proxy's iptables and nftables modes, on the
//! same Services, in one run, on a simulated cluster built on this machine.
//!
//! A two-node simulated cluster: node-a holds the client pod and five
//! backend pods, node-b five more; every backend runs `gangplank bench-conn
//! --serve` on
//! 8080 (a fixed 200 per connection: a server that costs little, so the
//! connection rate shows the path rather than the server).
//! For each size N (1, 100, 1,000, 10,000 by default), N Services with the
//! same 10 endpoints each (the ten backends) are written as manifests, and
//! then, one mode at a time, on node-a only:
//!
//! - **gangplank**: the agent, started on the manifests (socket LB for the
//!   pod, tc NodePort datapath on eth0), removed with `gangplank uninstall`
//!   afterwards;
//! - **iptables**: the rules kube-proxy's iptables mode writes for the same
//!   manifests (`gangplank::kube_proxy::iptables_restore`), applied with
//!   `iptables-restore` (nf_tables backend unless `--iptables legacy`);
//! - **nftables**: kube-proxy's nftables-mode table, applied with `nft -f`.
//!
//! Each mode is measured with nothing of the others in place (conntrack is
//! flushed between modes). Measured, `--conn-repeats` times each:
//!
//! - ClusterIP from the client pod: `gangplank bench-conn` opens connections to the
//!   cluster IPs of a sample of up to 32 Services spread through the set
//!   (a short HTTP exchange each), giving connections/s and p50/p99;
//! - NodePort from the client namespace: the same to node-a's address, at
//!   the NodePorts of the same sample;
//! - one long TCP stream through a NodePort (iperf3, to a backend on
//!   node-b);
//! - programming: the whole set applied (agent start to every frontend in
//!   the maps; `iptables-restore`; `nft -f`), then single-endpoint changes
//!   (the agent's own timing from the parsed file to the maps written;
//!   `iptables-restore --noflush` of what kube-proxy's partial sync writes;
//!   `nft -f` of its incremental transaction).
//!
//! Output, in the directory given: `services.md` (also printed),
//! `services.json` and PNG plots (see `plot`).
//!
//! A kube-proxy mode is measured only where its tools are installed
//! (`iptables-restore` or `nft`, and `conntrack`), the stream only where
//! iperf3 is, so that the benchmark runs on any node; what is left out is
//! said.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangplank_sim::agent::{Agent, AgentOpts};
use gangplank_sim::bench_options::{Dataplane, IptablesBackend, ServicesOptions};
use gangplank_sim::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_sim::measure::{field, machine_summary, median, service_ip as vip};
use gangplank_sim::{target_binary, Cluster, Proc};
use serde::Serialize;

use super::conn;
use super::plot;
use crate::kube_proxy::{self, ClusterRanges, ProxiedPort};

const CLIENT_POD: &str = "pod-client";
const BACKENDS_A: [&str; 5] = ["be-a1", "be-a2", "be-a3", "be-a4", "be-a5"];
const BACKENDS_B: [&str; 5] = ["be-b1", "be-b2", "be-b3", "be-b4", "be-b5"];
/// The iperf3 server's pod (on node-b, so the stream crosses nodes).
const IPERF_POD: &str = "be-b1";
const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
const IPERF_NODE_PORT: u16 = 32_000;
const NODE_PORT_BASE: u16 = 30_000;
/// Services measured per size: spread through the set.
const SAMPLE: usize = 32;
/// Single-endpoint changes timed per mode and size.
const CHANGES: usize = 5;
/// The simulated cluster's pod CIDR (both nodes' /24s), kube-proxy's
/// `--cluster-cidr`.
const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// The cluster IPs' range (`gangplank_sim::measure::service_ip`).
const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);

/// One load run.
pub type ConnRun = conn::Report;

/// Picks one path's runs out of a result.
pub type RunsOf = fn(&ModeResult) -> &[ConnRun];

/// Everything measured for one size and mode.
#[derive(Clone, Debug, Serialize)]
pub struct ModeResult {
    pub services: usize,
    pub mode: Dataplane,
    pub cluster_ip: Vec<ConnRun>,
    pub node_port: Vec<ConnRun>,
    /// iperf3 through the NodePort, Gbit/s.
    pub stream_gbps: Option<f64>,
    /// Applying the whole set, ms.
    pub program_ms: f64,
    /// What `program_ms` covers.
    pub program_what: &'static str,
    /// Single-endpoint changes, ms each.
    pub change_ms: Vec<f64>,
    /// Rules or map entries written for the set.
    pub objects: usize,
    /// gangplank only: what the socket load balancer adds to `connect()`.
    pub socket_lb: Option<SocketLbCost>,
}

/// Nanoseconds per UDP `connect()` (no packet is sent; medians of 3 runs
/// of 200,000 calls).
#[derive(Clone, Debug, Serialize)]
pub struct SocketLbCost {
    /// From the client pod to a cluster IP: the hook translates.
    pub translated_ns: f64,
    /// From the client pod to a pod address: the hook runs, no service.
    pub not_a_service_ns: f64,
    /// From a pod on node-b, which has no socket load balancer.
    pub without_hook_ns: f64,
}

/// One `bench-conn --udp-connects` run: ns per call.
fn udp_connect_ns(c: &Cluster, tools: &Tools, from: &str, target: SocketAddr) -> Result<f64> {
    let mut cmd = tools.conn_cmd();
    cmd.arg(format!("--target={target}"))
        .arg("--udp-connects=200000");
    let out = c.run_in(from, cmd, Duration::from_secs(60))?;
    if !out.status.success() {
        bail!(
            "bench-conn --udp-connects from {from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cost: conn::ConnectCost = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bench-conn output {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(cost.ns_per_connect)
}

fn socket_lb_cost(c: &Cluster, tools: &Tools) -> Result<SocketLbCost> {
    // The iperf Service's UDP port.
    let vip_target = SocketAddr::new(vip(32_000).into(), 5201);
    let pod_target = SocketAddr::new(c.pod(BACKENDS_A[0]).ip.into(), HTTP_PORT);
    let mut runs = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..3 {
        // (The socket LB's getpeername hook shows the cluster IP as the
        // peer, so translation cannot be checked from here; the ClusterIP
        // runs above show it works.)
        runs[0].push(udp_connect_ns(c, tools, CLIENT_POD, vip_target)?);
        runs[1].push(udp_connect_ns(c, tools, CLIENT_POD, pod_target)?);
        runs[2].push(udp_connect_ns(c, tools, IPERF_POD, pod_target)?);
    }
    Ok(SocketLbCost {
        translated_ns: median(&runs[0]),
        not_a_service_ns: median(&runs[1]),
        without_hook_ns: median(&runs[2]),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn backend_pods() -> impl Iterator<Item = &'static str> {
    BACKENDS_A.iter().chain(BACKENDS_B.iter()).copied()
}

/// The Services measured at size `n`: up to [`SAMPLE`] indices spread evenly.
fn sample(n: usize) -> Vec<usize> {
    let k = n.min(SAMPLE);
    (0..k).map(|j| j * n / k).collect()
}

/// Writes N Services (sampled ones NodePort) with the ten backends as
/// endpoints, plus the iperf3 NodePort Service, replacing earlier files.
fn write_manifests(c: &Cluster, n: usize) -> Result<()> {
    let dir = c.manifests_dir();
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    let sampled = sample(n);
    let endpoints: Vec<(Ipv4Addr, &str)> = backend_pods()
        .map(|p| (c.pod(p).ip, c.pod(p).node.as_str()))
        .collect();
    for i in 0..n {
        let name = format!("svc-{i:05}");
        let svc = match sampled.iter().position(|&s| s == i) {
            Some(k) => Service::node_port_service("bench", &name, vip(i))
                .port("http", 80, "TCP", Target::Number(HTTP_PORT))
                .node_port("http", NODE_PORT_BASE + k as u16),
            None => Service::cluster_ip("bench", &name, vip(i)).port(
                "http",
                80,
                "TCP",
                Target::Number(HTTP_PORT),
            ),
        };
        let slice = endpoints.iter().fold(
            EndpointSlice::new("bench", &name, &format!("{name}-abcde"))
                .port("http", HTTP_PORT, "TCP"),
            |s, (ip, node)| s.endpoint(Endpoint::ready(*ip, node)),
        );
        manifests::write(
            dir,
            &format!("{name}.yaml"),
            &[svc.to_yaml(), slice.to_yaml()],
        )?;
    }
    let iperf_ip = c.pod(IPERF_POD).ip;
    let svc = Service::node_port_service("bench", "iperf", vip(32_000))
        .port("iperf", 5201, "TCP", Target::Number(IPERF_PORT))
        .node_port("iperf", IPERF_NODE_PORT)
        // A UDP port: the socket LB's connect() cost is timed on UDP sockets.
        .port("udp", 5201, "UDP", Target::Number(IPERF_PORT));
    let slice = EndpointSlice::new("bench", "iperf", "iperf-abcde")
        .port("iperf", IPERF_PORT, "TCP")
        .port("udp", IPERF_PORT, "UDP")
        .endpoint(Endpoint::ready(iperf_ip, &c.pod(IPERF_POD).node));
    manifests::write(dir, "iperf.yaml", &[svc.to_yaml(), slice.to_yaml()])?;
    Ok(())
}

/// The same Service file with its last endpoint moved to an address no pod
/// has (`generation` odd) or back (even): one endpoint changed.
fn write_changed_service(c: &Cluster, generation: usize) -> Result<()> {
    let i = 0;
    let name = format!("svc-{i:05}");
    // Service 0 is always the first of the sample (NodePort k = 0).
    let svc = Service::node_port_service("bench", &name, vip(i))
        .port("http", 80, "TCP", Target::Number(HTTP_PORT))
        .node_port("http", NODE_PORT_BASE);
    let mut slice =
        EndpointSlice::new("bench", &name, &format!("{name}-abcde")).port("http", HTTP_PORT, "TCP");
    for (j, pod) in backend_pods().enumerate() {
        let ip = if j == 9 && generation % 2 == 1 {
            Ipv4Addr::new(198, 19, 2, 250)
        } else {
            c.pod(pod).ip
        };
        slice = slice.endpoint(Endpoint::ready(ip, &c.pod(pod).node));
    }
    manifests::write(
        c.manifests_dir(),
        &format!("{name}.yaml"),
        &[svc.to_yaml(), slice.to_yaml()],
    )
}

/// Runs `cmd` on node-a and fails with its output if it fails; returns the
/// wall time.
fn run_on_node(c: &Cluster, cmd: Command, what: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = c.run_in_node("node-a", cmd, Duration::from_secs(600))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(took)
}

/// How long starting a process on node-a takes by itself (subtracted from
/// the `iptables-restore`/`nft` timings, which are process runs).
fn spawn_overhead(c: &Cluster) -> Result<Duration> {
    let mut runs: Vec<f64> = Vec::new();
    for _ in 0..5 {
        runs.push(run_on_node(c, Command::new("true"), "true")?.as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(&runs)))
}

/// What every measurement uses.
struct Tools {
    /// The gangplank binary: the agent, and `bench-conn` (load and servers).
    gangplank: PathBuf,
    iptables_restore: &'static str,
    /// Whether `conntrack` is installed (flushes between runs; the
    /// kube-proxy modes need it).
    conntrack: bool,
    /// Seconds of the iperf3 stream (0: not measured).
    stream_seconds: u32,
    /// Where rule files are written.
    work: PathBuf,
    /// Process start-up on node-a, subtracted from rule-applying runs.
    overhead: Duration,
}

impl Tools {
    /// `iptables-restore` of `file`.
    fn iptables(&self, file: &Path) -> Command {
        let mut cmd = Command::new(self.iptables_restore);
        cmd.arg(file);
        self.private_lock(cmd)
    }

    /// `cmd` with iptables' lock file in the cluster's temp dir: the
    /// legacy backend otherwise takes the machine's /run/xtables.lock,
    /// and a long restore would hold off the node's own kube-proxy.
    fn private_lock(&self, mut cmd: Command) -> Command {
        cmd.env("XTABLES_LOCKFILE", self.work.join("xtables.lock"));
        cmd
    }

    /// `gangplank bench-conn`, to which the caller adds arguments.
    fn conn_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.gangplank);
        cmd.arg("bench-conn");
        cmd
    }
}

/// Flushes node-a's conntrack table, so that no run meets another's
/// entries (gangplank's own flows are in its BPF maps, removed with it).
fn conntrack_flush(c: &Cluster, tools: &Tools) -> Result<()> {
    if !tools.conntrack {
        return Ok(());
    }
    // Exit 1 with "0 flow entries" is fine: nothing to flush.
    let _ = c.run_in_node("node-a", conntrack_cmd(), Duration::from_secs(30))?;
    Ok(())
}

fn conntrack_cmd() -> Command {
    let mut cmd = Command::new("conntrack");
    cmd.arg("-F");
    cmd
}

/// One `bench-conn` run from `from` ("pod-client" or "client").
fn conn_run(
    c: &Cluster,
    tools: &Tools,
    from: &str,
    targets: &[SocketAddr],
    opts: &ServicesOptions,
    warmup: f64,
    duration: f64,
) -> Result<ConnRun> {
    let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let mut cmd = tools.conn_cmd();
    cmd.arg(format!("--target={}", list.join(",")))
        .arg(format!("--concurrency={}", opts.conn_concurrency))
        .arg(format!("--warmup={warmup}"))
        .arg(format!("--duration={duration}"));
    let out = c.run_in(from, cmd, Duration::from_secs_f64(warmup + duration + 30.0))?;
    if !out.status.success() {
        bail!(
            "bench-conn from {from} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("bench-conn output {line:?}"))
}

/// A short run that must have no errors: the mode really serves every target.
fn check_serves(
    c: &Cluster,
    tools: &Tools,
    from: &str,
    targets: &[SocketAddr],
    opts: &ServicesOptions,
    mode: Dataplane,
) -> Result<()> {
    let run = conn_run(c, tools, from, targets, opts, 0.0, 0.3)?;
    if run.errors > 0 || run.connections == 0 {
        bail!(
            "{}: {} to {} targets: {} connections, {} errors ({:?}): the datapath does not serve them",
            mode.label(),
            from,
            targets.len(),
            run.connections,
            run.errors,
            run.error_kinds
        );
    }
    Ok(())
}

fn iperf(c: &Cluster, node_ip: Ipv4Addr, seconds: u32) -> Result<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &node_ip.to_string(),
        "-p",
        &IPERF_NODE_PORT.to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    let out = c.run_in_client(cmd, Duration::from_secs(u64::from(seconds) + 30))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|bps| (bps / 1e7).round() / 100.0)
        .context("iperf3: no end.sum_received.bits_per_second")
}

/// Measures one mode at one size; the mode is in place when called.
fn measure(
    c: &Cluster,
    tools: &Tools,
    opts: &ServicesOptions,
    mode: Dataplane,
    n: usize,
) -> Result<(Vec<ConnRun>, Vec<ConnRun>, Option<f64>)> {
    let node_ip = c.node("node-a").address;
    let cip: Vec<SocketAddr> = sample(n)
        .iter()
        .map(|&i| SocketAddr::new(vip(i).into(), 80))
        .collect();
    let np: Vec<SocketAddr> = (0..sample(n).len())
        .map(|k| SocketAddr::new(node_ip.into(), NODE_PORT_BASE + k as u16))
        .collect();
    check_serves(c, tools, CLIENT_POD, &cip, opts, mode)?;
    check_serves(c, tools, "client", &np, opts, mode)?;
    let mut cluster_ip = Vec::new();
    let mut node_port = Vec::new();
    for r in 0..opts.conn_repeats {
        conntrack_flush(c, tools)?;
        let run = conn_run(c, tools, CLIENT_POD, &cip, opts, 0.5, opts.conn_duration)?;
        println!("  N={n:<6} {:<20} ClusterIP run {}/{}: {:>7.0} conn/s  p50 {:>6.0} µs  p99 {:>6.0} µs  max {:>7.0} µs  errors {} {:?}", mode.label(), r + 1, opts.conn_repeats, run.rate, run.p50_us, run.p99_us, run.max_us, run.errors, run.error_kinds);
        cluster_ip.push(run);
        conntrack_flush(c, tools)?;
        let run = conn_run(c, tools, "client", &np, opts, 0.5, opts.conn_duration)?;
        println!("  N={n:<6} {:<20} NodePort  run {}/{}: {:>7.0} conn/s  p50 {:>6.0} µs  p99 {:>6.0} µs  max {:>7.0} µs  errors {} {:?}", mode.label(), r + 1, opts.conn_repeats, run.rate, run.p50_us, run.p99_us, run.max_us, run.errors, run.error_kinds);
        node_port.push(run);
    }
    if tools.stream_seconds == 0 {
        return Ok((cluster_ip, node_port, None));
    }
    let stream = match iperf(c, node_ip, tools.stream_seconds) {
        Ok(g) => {
            println!(
                "  N={n:<6} {:<20} NodePort  one stream: {g:.2} Gbit/s",
                mode.label()
            );
            Some(g)
        }
        Err(e) => {
            eprintln!("  N={n:<6} {:<20} iperf3 failed: {e:#}", mode.label());
            None
        }
    };
    Ok((cluster_ip, node_port, stream))
}

fn gangplank_mode(
    c: &Cluster,
    tools: &Tools,
    opts: &ServicesOptions,
    n: usize,
) -> Result<ModeResult> {
    let started = Instant::now();
    let mut agent = Agent::start_with(c, "node-a", AgentOpts::lan().xdp("auto"))?;
    let wall = started.elapsed();
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("initial sync complete"))
        .unwrap_or("");
    let program_ms = field(line, "elapsed_ms").map_or(ms(wall), |v| v as f64);
    let result = (|| {
        let (cluster_ip, node_port, stream) = measure(c, tools, opts, Dataplane::Gangplank, n)?;
        let socket_lb = socket_lb_cost(c, tools)?;
        println!(
            "  N={n:<6} {:<20} connect(): {:.0} ns to a cluster IP, {:.0} ns to a pod, {:.0} ns without the hook",
            Dataplane::Gangplank.label(),
            socket_lb.translated_ns,
            socket_lb.not_a_service_ns,
            socket_lb.without_hook_ns
        );
        let mut change_ms = Vec::new();
        for g in 1..=CHANGES {
            let from = agent
                .log()
                .lines()
                .filter(|l| l.contains("maps updated"))
                .count();
            write_changed_service(c, g)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let log = agent.log();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains("maps updated")).collect();
                if let Some(l) = lines.get(from) {
                    change_ms.push(field(l, "elapsed_us").unwrap_or(0) as f64 / 1e3);
                    break;
                }
                if Instant::now() > deadline {
                    bail!("gangplank: no \"maps updated\" after an endpoint change");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(ModeResult {
            services: n,
            mode: Dataplane::Gangplank,
            cluster_ip,
            node_port,
            stream_gbps: stream,
            program_ms,
            program_what: "agent start → every frontend in the maps (its own measure, includes loading and attaching the programs)",
            change_ms,
            objects: n + 1,
            socket_lb: Some(socket_lb),
        })
    })();
    let cleanup = (|| {
        agent.stop()?;
        let mut cmd = gangplank_sim::agent::gangplank_cmd()?;
        cmd.arg("uninstall")
            .arg("--bpffs")
            .arg(&c.node("node-a").bpffs)
            .arg("--cgroup")
            .arg(&c.node("node-a").cgroup);
        run_on_node(c, cmd, "gangplank uninstall")?;
        // Back to the unchanged file for the other modes.
        write_changed_service(c, 0)
    })();
    first_error(result, cleanup)
}

/// A mode's result, unless it failed, then its clean-up's error: when
/// both fail, the mode's error is the one that says what went wrong (the
/// clean-up's is printed).
fn first_error<T>(result: Result<T>, cleanup: Result<()>) -> Result<T> {
    match (result, cleanup) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(e.context("cleaning up after the measurement")),
        (Err(e), cleanup) => {
            if let Err(c) = cleanup {
                eprintln!("cleaning up after the failure below also failed: {c:#}");
            }
            Err(e)
        }
    }
}

fn ranges() -> ClusterRanges {
    ClusterRanges {
        cluster_cidr: CLUSTER_CIDR,
        service_cidr: SERVICE_CIDR,
    }
}

/// Ports with endpoint 9 of port `i` moved away (odd `generation`) or not.
fn changed_ports(
    ports: &[ProxiedPort],
    i: usize,
    generation: usize,
    c: &Cluster,
) -> Vec<ProxiedPort> {
    let mut out = ports.to_vec();
    let moved = std::net::SocketAddrV4::new(Ipv4Addr::new(198, 19, 2, 250), HTTP_PORT);
    let original = std::net::SocketAddrV4::new(c.pod(BACKENDS_B[4]).ip, HTTP_PORT);
    let p = &mut out[i];
    let (from, to) = if generation % 2 == 1 {
        (original, moved)
    } else {
        (moved, original)
    };
    if let Some(e) = p.endpoints.iter_mut().find(|e| **e == from) {
        *e = to;
    }
    p.endpoints.sort_by_key(|e| e.to_string());
    out
}

/// How one kube-proxy mode is applied: the whole set, one endpoint change
/// (the changed ports, the changed index, the port before), and the
/// command that applies a file of either.
struct RuleMode {
    mode: Dataplane,
    /// File names under the work directory: whole set, change.
    files: [&'static str; 2],
    whole: String,
    change: fn(&[ProxiedPort], usize, &ProxiedPort) -> String,
    /// The program that applies a file, and its arguments before the
    /// file for the whole set and for a change.
    program: &'static str,
    args: [&'static [&'static str]; 2],
    program_what: &'static str,
    /// Rules (and map elements) in `whole`.
    objects: usize,
}

impl RuleMode {
    /// The command applying `file`: the whole set (0) or a change (1).
    fn command(&self, file: &Path, which: usize) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.args(self.args[which]).arg(file);
        cmd
    }
}

/// Applies `rm`'s whole set, measures it, times single-endpoint changes;
/// the caller removes the rules afterwards.
fn rules_mode(
    c: &Cluster,
    tools: &Tools,
    opts: &ServicesOptions,
    n: usize,
    ports: &[ProxiedPort],
    rm: &RuleMode,
) -> Result<ModeResult> {
    let (work, overhead) = (&tools.work, tools.overhead);
    let file = work.join(rm.files[0]);
    std::fs::write(&file, &rm.whole)?;
    let took = run_on_node(c, tools.private_lock(rm.command(&file, 0)), rm.program_what)?;
    let program_ms = ms(took.saturating_sub(overhead));
    let (cluster_ip, node_port, stream) = measure(c, tools, opts, rm.mode, n)?;
    let index = ports
        .iter()
        .position(|p| p.service.name == "svc-00000")
        .context("svc-00000 missing")?;
    let mut current = ports.to_vec();
    let mut change_ms = Vec::new();
    for g in 1..=CHANGES {
        let next = changed_ports(&current, index, g, c);
        let file = work.join(rm.files[1]);
        std::fs::write(&file, (rm.change)(&next, index, &current[index]))?;
        let took = run_on_node(
            c,
            tools.private_lock(rm.command(&file, 1)),
            "applying an endpoint change",
        )?;
        change_ms.push(ms(took.saturating_sub(overhead)));
        current = next;
    }
    Ok(ModeResult {
        services: n,
        mode: rm.mode,
        cluster_ip,
        node_port,
        stream_gbps: stream,
        program_ms,
        program_what: rm.program_what,
        change_ms,
        objects: rm.objects,
        socket_lb: None,
    })
}

fn iptables_mode(
    c: &Cluster,
    tools: &Tools,
    opts: &ServicesOptions,
    n: usize,
    ports: &[ProxiedPort],
) -> Result<ModeResult> {
    let whole = kube_proxy::iptables_restore(ports, &ranges());
    let rm = RuleMode {
        mode: Dataplane::Iptables,
        files: ["iptables.rules", "iptables-change.rules"],
        objects: whole.lines().filter(|l| l.starts_with("-A ")).count(),
        whole,
        change: |ports, i, before| {
            kube_proxy::iptables_endpoint_change(ports, i, before, &ranges())
        },
        program: tools.iptables_restore,
        args: [&[], &["--noflush"]],
        program_what: "iptables-restore of the whole ruleset",
    };
    let result = rules_mode(c, tools, opts, n, ports, &rm);
    let cleanup = (|| {
        // An empty restore leaves both tables without rules or chains; nft
        // flush then removes the tables themselves (nf_tables backend).
        // iptables-legacy's tables stay registered in node-a's namespace
        // (empty) for the rest of the run: x_tables cannot drop them.
        let empty = tools.work.join("iptables-empty.rules");
        std::fs::write(&empty, "*filter\nCOMMIT\n*nat\nCOMMIT\n")?;
        run_on_node(c, tools.iptables(&empty), "iptables-restore (emptying)")?;
        if opts.iptables == IptablesBackend::Nft {
            let mut cmd = Command::new("nft");
            cmd.args(["flush", "ruleset"]);
            run_on_node(c, cmd, "nft flush ruleset")?;
        }
        conntrack_flush(c, tools)
    })();
    first_error(result, cleanup)
}

fn nftables_mode(
    c: &Cluster,
    tools: &Tools,
    opts: &ServicesOptions,
    n: usize,
    ports: &[ProxiedPort],
) -> Result<ModeResult> {
    let whole = kube_proxy::nft_ruleset(ports, &ranges());
    let rm = RuleMode {
        mode: Dataplane::Nftables,
        files: ["kube-proxy.nft", "kube-proxy-change.nft"],
        objects: whole
            .lines()
            .filter(|l| l.starts_with("add rule") || l.starts_with("add element"))
            .count(),
        whole,
        change: |ports, i, before| kube_proxy::nft_endpoint_change(&ports[i], before, &ranges()),
        program: "nft",
        args: [&["-f"], &["-f"]],
        program_what: "nft -f of the whole table",
    };
    let result = rules_mode(c, tools, opts, n, ports, &rm);
    let cleanup = (|| {
        let mut cmd = Command::new("nft");
        // (After a failed `nft -f`, which is atomic, there is no table to
        // delete; `first_error` then reports the failure, not this.)
        cmd.args(["delete", "table", "ip", "kube-proxy"]);
        run_on_node(c, cmd, "nft delete table")?;
        conntrack_flush(c, tools)
    })();
    first_error(result, cleanup)
}

fn start_servers(c: &Cluster, tools: &Tools) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for pod in backend_pods() {
        // A minimal responder, so that the server's own cost does not
        // drown the datapath's in the connection rate.
        let mut cmd = tools.conn_cmd();
        cmd.arg(format!("--serve=0.0.0.0:{HTTP_PORT}"));
        let mut p = c.spawn_in_pod(pod, cmd)?;
        p.wait_for_line(|l| l.contains("listening on"), Duration::from_secs(10))?;
        procs.push(p);
    }
    if tools.stream_seconds > 0 {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]);
        procs.push(c.spawn_in_pod(IPERF_POD, cmd)?);
    }
    Ok(procs)
}

/// Whether `program` is an executable in `PATH`.
fn installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// The programs a datapath needs (besides gangplank itself), with the
/// Debian package of each.
fn needs(d: Dataplane, opts: &ServicesOptions) -> Vec<(&'static str, &'static str)> {
    match d {
        Dataplane::Gangplank => vec![],
        Dataplane::Iptables => {
            let mut v = vec![
                (opts.iptables.restore_command(), "iptables"),
                ("conntrack", "conntrack"),
            ];
            // The nf_tables backend's empty tables are removed with nft.
            if opts.iptables == IptablesBackend::Nft {
                v.push(("nft", "nftables"));
            }
            v
        }
        Dataplane::Nftables => vec![("nft", "nftables"), ("conntrack", "conntrack")],
    }
}

/// The datapaths to measure and, for those left out, why: the ones asked
/// for (each must have its tools), or every one whose tools are installed.
fn choose_dataplanes(
    opts: &ServicesOptions,
    installed: impl Fn(&str) -> bool,
) -> Result<(Vec<Dataplane>, Vec<String>)> {
    let missing = |d: Dataplane| -> Vec<String> {
        needs(d, opts)
            .into_iter()
            .filter(|(program, _)| !installed(program))
            .map(|(program, package)| format!("{program} (package {package})"))
            .collect()
    };
    if !opts.dataplanes.is_empty() {
        for &d in &opts.dataplanes {
            let m = missing(d);
            if !m.is_empty() {
                bail!(
                    "--dataplanes {}: {} needs {}, not found in PATH",
                    format!("{d:?}").to_lowercase(),
                    d.label(),
                    m.join(" and ")
                );
            }
        }
        return Ok((opts.dataplanes.clone(), Vec::new()));
    }
    let mut chosen = Vec::new();
    let mut notes = Vec::new();
    for d in Dataplane::ALL {
        let m = missing(d);
        if m.is_empty() {
            chosen.push(d);
        } else {
            notes.push(format!(
                "{} not measured: {} not installed",
                d.label(),
                m.join(" and ")
            ));
        }
    }
    Ok((chosen, notes))
}

/// Runs the Services benchmark on a simulated cluster built here, and
/// writes its report, JSON and plots into `out`.
pub fn run(opts: &ServicesOptions, out: &Path) -> Result<Vec<ModeResult>> {
    gangplank_sim::check_privileges()?;
    if opts.sizes.is_empty() || opts.sizes.iter().any(|&n| n == 0 || n > 30_000) {
        bail!("--sizes: one or more, each between 1 and 30000");
    }
    if opts.conn_repeats == 0 || opts.conn_concurrency == 0 {
        bail!("--conn-repeats and --conn-concurrency must be positive");
    }
    if !(opts.conn_duration > 0.0 && opts.conn_duration <= 600.0) {
        bail!(
            "--conn-duration {}: must be more than 0 and at most 600 seconds",
            opts.conn_duration
        );
    }
    if opts.stream_seconds > 600 {
        bail!("--stream-seconds {}: at most 600", opts.stream_seconds);
    }
    let (dataplanes, mut notes) = choose_dataplanes(opts, installed)?;
    let mut stream_seconds = opts.stream_seconds;
    if stream_seconds > 0 && !installed("iperf3") {
        notes.push("one long stream not measured: iperf3 (package iperf3) not installed".into());
        stream_seconds = 0;
    }
    for note in &notes {
        println!("note: {note}");
    }
    let mut nodes_a = vec![CLIENT_POD];
    nodes_a.extend(BACKENDS_A);
    let c = Cluster::new(
        "bench-services",
        &[("node-a", &nodes_a), ("node-b", &BACKENDS_B)],
    )
    .context("building the simulated cluster")?;
    // Rule files go to the cluster's own (root's) temp dir, removed with it
    // whatever happens.
    let work = c.work_dir().join("rules");
    std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut tools = Tools {
        gangplank: target_binary("gangplank")?,
        iptables_restore: opts.iptables.restore_command(),
        conntrack: installed("conntrack"),
        stream_seconds,
        work,
        overhead: Duration::ZERO,
    };
    let _servers = start_servers(&c, &tools)?;
    tools.overhead = spawn_overhead(&c)?;
    let mut results = Vec::new();
    for &n in &opts.sizes {
        write_manifests(&c, n)?;
        let ports = kube_proxy::proxied_ports_in_dir(c.manifests_dir())?;
        // N one-port Services and the iperf Service's two ports.
        if ports.len() != n + 2 {
            bail!(
                "expected {} service ports from the manifests, got {}",
                n + 2,
                ports.len()
            );
        }
        println!("\nN = {n} services × 10 endpoints");
        for &mode in &dataplanes {
            let r = match mode {
                Dataplane::Gangplank => gangplank_mode(&c, &tools, opts, n),
                Dataplane::Iptables => iptables_mode(&c, &tools, opts, n, &ports),
                Dataplane::Nftables => nftables_mode(&c, &tools, opts, n, &ports),
            }
            .with_context(|| format!("{} at {n} services", mode.label()))?;
            println!(
                "  N={n:<6} {:<20} programming {:.0} ms, one endpoint change median {:.1} ms",
                mode.label(),
                r.program_ms,
                median(&r.change_ms)
            );
            results.push(r);
        }
    }
    drop(c);
    let plots = match plot::services(&results, out) {
        Ok(plots) => plots,
        Err(e) => {
            notes.push(format!("no plots: {e:#}"));
            Vec::new()
        }
    };
    let report = report(&results, opts, &tools, &notes);
    let md = out.join("services.md");
    std::fs::write(&md, &report).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(
        out.join("services.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("\n{report}");
    println!("report: {}", md.display());
    for p in plots {
        println!("plot: {}", p.display());
    }
    Ok(results)
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}×", x / b),
        _ => "–".into(),
    }
}

fn conn_table(out: &mut String, results: &[ModeResult], pick: RunsOf) {
    out.push_str("| services | mode | conn/s | min–max | p50 µs | p99 µs | errors | conn/s vs iptables | p99 vs iptables |\n");
    out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let runs = pick(r);
        if runs.is_empty() {
            continue;
        }
        let rates: Vec<f64> = runs.iter().map(|x| x.rate).collect();
        let p50 = median(&runs.iter().map(|x| x.p50_us).collect::<Vec<_>>());
        let p99 = median(&runs.iter().map(|x| x.p99_us).collect::<Vec<_>>());
        let base = results
            .iter()
            .find(|b| b.services == r.services && b.mode == Dataplane::Iptables)
            .map(pick)
            .filter(|b| !b.is_empty());
        let base_rate = base.map(|b| median(&b.iter().map(|x| x.rate).collect::<Vec<_>>()));
        let base_p99 = base.map(|b| median(&b.iter().map(|x| x.p99_us).collect::<Vec<_>>()));
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {lo:.0}–{hi:.0} | {p50:.0} | {p99:.0} | {} | {} | {} |",
            r.services,
            r.mode.label(),
            median(&rates),
            runs.iter().map(|x| x.errors).sum::<u64>(),
            ratio(median(&rates), base_rate),
            ratio(p99, base_p99),
        );
    }
}

fn report(
    results: &[ModeResult],
    opts: &ServicesOptions,
    tools: &Tools,
    notes: &[String],
) -> String {
    let overhead = tools.overhead;
    let mut out = String::new();
    out.push_str("# Services: gangplank vs kube-proxy (iptables, nftables)\n\n");
    let _ = writeln!(out, "Machine: {}.  ", machine_summary());
    let _ = writeln!(
        out,
        "Set-up: two simulated nodes (network namespaces); 10 backend pods (`gangplank bench-conn --serve`: a fixed 200 per connection), 5 per node; each of N Services has those 10 endpoints; \
         the client pod is on node-a and so is everything measured (gangplank agent, or kube-proxy's rules generated from the same manifests: \
         iptables via `{}`, nftables via `nft -f`). One mode at a time, conntrack flushed between runs. \
         `gangplank bench-conn`: {} concurrent clients, each a new TCP connection with one short HTTP request per iteration, round a sample of up to {SAMPLE} Services \
         spread through the set; 0.5 s warm-up, {} s measured, {} runs per cell (median; min–max of conn/s).\n",
        opts.iptables.restore_command(),
        opts.conn_concurrency, opts.conn_duration, opts.conn_repeats
    );
    for note in notes {
        let _ = writeln!(out, "Note: {note}.  ");
    }
    if !notes.is_empty() {
        out.push('\n');
    }
    out.push_str("## ClusterIP from a pod\n\n");
    conn_table(&mut out, results, |r| &r.cluster_ip);
    out.push_str("\n## NodePort from outside the cluster\n\n");
    conn_table(&mut out, results, |r| &r.node_port);
    if tools.stream_seconds > 0 {
        let _ = write!(out, "\n## One long TCP stream through a NodePort (iperf3, {} s, to a pod on the other node)\n\n| services | mode | Gbit/s |\n|---:|---|---:|\n", tools.stream_seconds);
        for r in results {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r.services,
                r.mode.label(),
                r.stream_gbps.map_or("failed".into(), |g| format!("{g:.2}"))
            );
        }
    }
    out.push_str(
        "\n## Socket load balancer: cost per `connect()` (gangplank)\n\n\
         BPF_PROG_TEST_RUN cannot run cgroup socket-address programs, so the hook is timed where it runs: \
         200,000 UDP `connect()` calls on one socket (no packet is sent), from the client pod to a cluster IP (translated; a UDP port of the iperf Service), \
         from the client pod to a pod address (the hook runs and finds no service), and from a pod on node-b, \
         where no socket load balancer is attached. Medians of 3 runs.\n\n\
         | services | to a cluster IP ns | to a pod ns | without the hook ns | translation cost ns |\n|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        if let Some(s) = &r.socket_lb {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.services,
                s.translated_ns,
                s.not_a_service_ns,
                s.without_hook_ns,
                s.translated_ns - s.without_hook_ns
            );
        }
    }
    let _ = write!(
        out,
        "\n## Programming\n\nWhole set: gangplank = agent start until every frontend is in the maps (its own measure, loading and attaching the programs included); \
         iptables/nftables = the `iptables-restore` / `nft -f` run. One endpoint change: gangplank = from the changed file's parsed contents to the maps written (the agent's measure); \
         iptables = `iptables-restore --noflush` of what kube-proxy's partial sync writes (top-level chains whole, the changed Service's chains); \
         nftables = `nft -f` of kube-proxy's incremental transaction. Process runs have {:.1} ms of process start-up (measured with `true`) subtracted. Median of {CHANGES} changes.\n\n\
         | services | mode | rules / entries | whole set ms | vs iptables | one change ms | vs iptables |\n|---:|---|---:|---:|---:|---:|---:|\n",
        ms(overhead)
    );
    for r in results {
        let base = results
            .iter()
            .find(|b| b.services == r.services && b.mode == Dataplane::Iptables);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {} | {:.2} | {} |",
            r.services,
            r.mode.label(),
            r.objects,
            r.program_ms,
            base.map_or("–".into(), |b| format!(
                "{:.2}×",
                r.program_ms / b.program_ms.max(1e-3)
            )),
            median(&r.change_ms),
            base.map_or("–".into(), |b| format!(
                "{:.2}×",
                median(&r.change_ms) / median(&b.change_ms).max(1e-3)
            )),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: ServicesOptions,
    }

    fn opts(args: &[&str]) -> ServicesOptions {
        Cli::parse_from(std::iter::once("x").chain(args.iter().copied())).opts
    }

    /// Without `--dataplanes`, a kube-proxy mode whose tools are missing is
    /// left out and the report says why; asked for, it is an error that
    /// names the missing program.
    #[test]
    fn dataplanes_follow_the_tools_installed() {
        let no_nft = |p: &str| p != "nft";
        let (chosen, notes) = choose_dataplanes(&opts(&[]), no_nft).expect("choose");
        // iptables-nft's tables are removed with nft afterwards.
        assert_eq!(chosen, [Dataplane::Gangplank]);
        assert_eq!(
            notes,
            [
                "kube-proxy iptables not measured: nft (package nftables) not installed",
                "kube-proxy nftables not measured: nft (package nftables) not installed"
            ]
        );
        let (chosen, _) = choose_dataplanes(&opts(&["--iptables=legacy"]), no_nft).expect("choose");
        assert_eq!(chosen, [Dataplane::Gangplank, Dataplane::Iptables]);
        let err = choose_dataplanes(&opts(&["--dataplanes=gangplank,nftables"]), no_nft)
            .expect_err("nft missing");
        assert_eq!(
            err.to_string(),
            "--dataplanes nftables: kube-proxy nftables needs nft (package nftables), not found in PATH"
        );
        let legacy = opts(&["--iptables=legacy"]);
        let (chosen, notes) = choose_dataplanes(&legacy, |p| {
            p != "iptables-legacy-restore" && p != "conntrack"
        })
        .expect("choose");
        assert_eq!(chosen, [Dataplane::Gangplank]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("iptables-legacy-restore (package iptables) and conntrack"));
        let (chosen, notes) = choose_dataplanes(&opts(&[]), |_| true).expect("choose");
        assert_eq!(chosen, Dataplane::ALL);
        assert!(notes.is_empty());
    }

    #[test]
    fn the_sample_spreads_through_the_set() {
        assert_eq!(sample(1), [0]);
        assert_eq!(sample(10).len(), 10);
        let s = sample(10_000);
        assert_eq!(s.len(), SAMPLE);
        assert_eq!((s[0], s[1], s[31]), (0, 312, 9_687));
    }
}
