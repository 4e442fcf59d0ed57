//! `cargo xtask bench`: three parts, all by default, each alone with
//! `--only control|packets|services`; `cargo xtask bench ingress` compares the
//! Ingress proxy with nginx and haproxy (see `bench_ingress`).
//!
//! Control plane: speed of the agent at scale, on a simulated node (the
//! kernel maps are real).
//! - start-up: N services × M endpoints in the manifests directory, time
//!   until every frontend is in the BPF maps;
//! - one endpoint change: time from the changed file being read to the maps
//!   being updated, as the agent measures it;
//! - the agent's memory (RSS) at that size.
//!
//! Packets: per-packet cost of the tc/XDP datapath with BPF_PROG_TEST_RUN
//! (`gangplank bench --only packets`, run from here).
//!
//! Services: gangplank against kube-proxy's iptables and nftables modes on
//! the same Services, 1 to 10,000 of them (`gangplank bench --only
//! services`, run from here).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangplank_sim::measure::{field, service_ip as vip};
use gangplank_tests::agent::gangplank_cmd;
use gangplank_tests::manifests::{self, Endpoint, EndpointSlice, Service, Target};
use gangplank_tests::Cluster;

use crate::bench_options::{Options, Part};

/// Runs the parts `opts` asks for.
pub fn run(opts: Options) -> Result<()> {
    let part = opts.selected();
    if part == Some(Part::Ingress) {
        return crate::bench_ingress::run(&opts.ingress);
    }
    if part == Some(Part::Api) {
        return crate::bench_api::run(&opts);
    }
    let all = part.is_none();
    if all || part == Some(Part::Control) {
        control_plane(opts.clone())?;
    }
    if all || part == Some(Part::Packets) {
        gangplank_bench("packets", opts.packets.to_args())?;
    }
    if all || part == Some(Part::Services) {
        gangplank_bench("services", opts.service_bench.to_args())?;
    }
    Ok(())
}

/// `gangplank bench --only <part>` of the release build, writing into
/// target/bench: the benchmark users run on their nodes is the one
/// measured here.
fn gangplank_bench(part: &str, args: Vec<String>) -> Result<()> {
    let mut cmd = gangplank_cmd()?;
    cmd.args(["bench", &format!("--only={part}")])
        .arg("--out")
        .arg(crate::root_dir().join("target/bench"))
        .args(args);
    let status = cmd.status().context("running gangplank bench")?;
    if !status.success() {
        bail!("gangplank bench failed ({status})");
    }
    Ok(())
}

fn endpoint_ip(i: usize) -> Ipv4Addr {
    // 198.19.0.0/16 for endpoints (never dialled here).
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32)
}

pub(crate) fn docs(i: usize, endpoints: usize, generation: usize) -> [String; 2] {
    let name = format!("svc-{i:05}");
    // A target port per service keeps every backend distinct even where
    // endpoint addresses repeat (198.19.0.0/16 has 65,536 of them).
    let target = 10_000 + i as u16;
    let svc =
        Service::cluster_ip("bench", &name, vip(i)).port("http", 80, "TCP", Target::Number(target));
    let mut slice =
        EndpointSlice::new("bench", &name, &format!("{name}-abcde")).port("http", target, "TCP");
    for e in 0..endpoints {
        // `generation` shifts one endpoint so a rewrite is a real change.
        let shift = if e == 0 { generation * 7_919 } else { 0 };
        let idx = (i * endpoints + e + shift) % 65_536;
        slice = slice.endpoint(Endpoint::ready(endpoint_ip(idx), "node-a"));
    }
    [svc.to_yaml(), slice.to_yaml()]
}

fn write_service(dir: &Path, i: usize, endpoints: usize, generation: usize) -> Result<()> {
    manifests::write(
        dir,
        &format!("svc-{i:05}.yaml"),
        &docs(i, endpoints, generation),
    )
}

/// Starts `gangplank agent SOURCE_ARGS` on node-a and waits for its
/// initial sync, which must report `services` frontends: the process, the
/// sync's log line and the wall-clock time from spawn.
pub(crate) fn start_synced_agent(
    c: &Cluster,
    source_args: &[&str],
    services: usize,
) -> Result<(gangplank_tests::Proc, String, Duration)> {
    let node = c.node("node-a");
    let mut cmd = gangplank_cmd()?;
    cmd.arg("agent")
        .args(source_args)
        .args(["--node-name", "node-a", "--cgroup"])
        .arg(&node.cgroup)
        .arg("--bpffs")
        .arg(&node.bpffs)
        .env("RUST_LOG", "info");
    let spawned = Instant::now();
    let mut agent = c.spawn_agent_process("node-a", cmd)?;
    let line = agent.wait_for_stderr_line(
        |l| l.contains("initial sync complete"),
        Duration::from_secs(120),
    )?;
    let wall = spawned.elapsed();
    let frontends = field(&line, "frontends").unwrap_or(0);
    if frontends != services as u64 {
        bail!("expected {services} frontends, agent reports: {line}");
    }
    Ok((agent, line, wall))
}

pub(crate) fn rss_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn control_plane(opts: Options) -> Result<()> {
    gangplank_tests::check_privileges()?;
    if opts.services > 32_768 {
        bail!("--services: at most 32768 (one address each in 198.18.128.0/17)");
    }
    let c = Cluster::new("bench", &[("node-a", &[])]).context("building the simulated node")?;
    let dir = c.manifests_dir().to_path_buf();
    let gen_started = Instant::now();
    for i in 0..opts.services {
        write_service(&dir, i, opts.endpoints, 0)?;
    }
    println!(
        "generated {} services × {} endpoints in {} files ({:.1} s)",
        opts.services,
        opts.endpoints,
        opts.services,
        gen_started.elapsed().as_secs_f64()
    );

    let dir_arg = dir.display().to_string();
    let (mut agent, line, wall) =
        start_synced_agent(&c, &["--manifests", &dir_arg], opts.services)?;
    let frontends = opts.services as u64;
    let rss = rss_kib(agent.pid(), "VmRSS:")?;
    let hwm = rss_kib(agent.pid(), "VmHWM:")?;
    println!("\nstart-up (exec → every frontend in the BPF maps):");
    println!(
        "  wall clock from spawn:     {:>8.0} ms",
        wall.as_secs_f64() * 1e3
    );
    println!("  agent's own measure:       {:>8} ms   (load + attach + scan + parse + model + map writes)", field(&line, "elapsed_ms").unwrap_or(0));
    let install = field(&line, "install_ms").unwrap_or(0);
    let scan = field(&line, "scan_ms").unwrap_or(0);
    println!(
        "    load+attach+adopt pins {install} ms, scan+parse+model with map writes overlapped {} ms, final reconcile+attach {} ms",
        scan.saturating_sub(install),
        field(&line, "elapsed_ms").unwrap_or(0).saturating_sub(scan)
    );
    println!(
        "  map entries written:       {:>8}     frontends ({} slots, {} backends)",
        frontends,
        frontends * (1 + opts.endpoints as u64),
        opts.services * opts.endpoints
    );
    println!(
        "  agent RSS after sync:      {:>8.1} MB (peak {:.1} MB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    let mut apply_us = Vec::new();
    for n in 0..opts.changes {
        let i = (n * 7919) % opts.services;
        write_service(&dir, i, opts.endpoints, n + 1)?;
        let line =
            agent.wait_for_stderr_line(|l| l.contains("maps updated"), Duration::from_secs(10))?;
        apply_us.push(field(&line, "elapsed_us").unwrap_or(0));
    }
    apply_us.sort_unstable();
    if !apply_us.is_empty() {
        let median = apply_us[apply_us.len() / 2];
        let max = apply_us[apply_us.len() - 1];
        println!("\none endpoint change ({} changes, time from the file's parsed contents to maps written):", apply_us.len());
        println!("  median {median} µs, max {max} µs");
    }
    let rss = rss_kib(agent.pid(), "VmRSS:")?;
    println!(
        "  agent RSS after the changes: {:.1} MB",
        rss as f64 / 1024.0
    );
    agent.terminate(Duration::from_secs(10))?;
    Ok(())
}
