//! `cargo xtask bench api`: the agent in cluster mode at scale, against the
//! in-process fake API server (the real list/watch protocol and JSON) in
//! the simulated node's namespace:
//! - start-up: N services × M endpoints served by one paged list, time
//!   until every frontend is in the BPF maps;
//! - watch latency: time from an EndpointSlice change being written on the
//!   API server to the agent reporting the maps updated (the watch event's
//!   delivery, decoding, model and map writes, and the log line's trip
//!   back);
//! - the agent's memory (RSS) at that size.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangplank_sim::measure::field;
use gangplank_tests::fake_api::FakeApi;
use gangplank_tests::Cluster;

use crate::bench::{docs, rss_kib, start_synced_agent};
use crate::bench_options::Options;

pub fn run(opts: &Options) -> Result<()> {
    gangplank_tests::check_privileges()?;
    if opts.services > 32_768 {
        bail!("--services: at most 32768 (one address each in 198.18.128.0/17)");
    }
    let c = Cluster::new("bench-api", &[("node-a", &[])]).context("building the simulated node")?;
    let api = FakeApi::start_in_netns(c.netns("node-a"), [127, 0, 0, 1].into())?;
    let generated = Instant::now();
    for i in 0..opts.services {
        for doc in docs(i, opts.endpoints, 0) {
            api.apply_yaml(&doc)?;
        }
    }
    println!(
        "API server holds {} services × {} endpoints ({:.1} s to generate)",
        opts.services,
        opts.endpoints,
        generated.elapsed().as_secs_f64()
    );
    let dir = c
        .manifests_dir()
        .parent()
        .context("the cluster's directory")?
        .to_path_buf();
    let kubeconfig = api.kubeconfig(&dir, "node-a")?;

    let kubeconfig_arg = kubeconfig.display().to_string();
    let (mut agent, line, wall) =
        start_synced_agent(&c, &["--kubeconfig", &kubeconfig_arg], opts.services)?;
    let rss = rss_kib(agent.pid(), "VmRSS:")?;
    let hwm = rss_kib(agent.pid(), "VmHWM:")?;
    println!("\nstart-up (exec → list from the API server → every frontend in the BPF maps):");
    println!(
        "  wall clock from spawn:     {:>8.0} ms",
        wall.as_secs_f64() * 1e3
    );
    println!(
        "  agent's own measure:       {:>8} ms   (load + attach + list + decode + model + map writes)",
        field(&line, "elapsed_ms").unwrap_or(0)
    );
    let install = field(&line, "install_ms").unwrap_or(0);
    let scan = field(&line, "scan_ms").unwrap_or(0);
    println!(
        "    load+attach+adopt pins {install} ms, list+decode+model, then the map writes {} ms, final reconcile+attach {} ms",
        scan.saturating_sub(install),
        field(&line, "elapsed_ms").unwrap_or(0).saturating_sub(scan)
    );
    println!(
        "  agent RSS after sync:      {:>8.1} MB (peak {:.1} MB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // Changes are timed once the agent is fully up (XDP attached too).
    agent.wait_for_stderr_line(|l| l.contains("agent ready"), Duration::from_secs(60))?;
    let mut latency_us = Vec::with_capacity(opts.api_changes);
    for n in 0..opts.api_changes {
        let i = (n * 7919) % opts.services;
        let [_, slice] = docs(i, opts.endpoints, n + 1);
        let written = Instant::now();
        api.apply_yaml(&slice)?;
        agent.wait_for_stderr_line(|l| l.contains("maps updated"), Duration::from_secs(10))?;
        latency_us.push(written.elapsed().as_micros() as u64);
    }
    let mut slowest: Vec<(u64, usize)> = latency_us.iter().copied().zip(0..).collect();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    slowest.truncate(5);
    latency_us.sort_unstable();
    if !latency_us.is_empty() {
        let at = |q: f64| latency_us[((latency_us.len() - 1) as f64 * q).round() as usize];
        println!(
            "\nwatch event → maps updated ({} EndpointSlice changes, one at a time):",
            latency_us.len()
        );
        println!(
            "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            at(0.5) as f64 / 1e3,
            at(0.99) as f64 / 1e3,
            at(1.0) as f64 / 1e3
        );
    }
    println!(
        "  slowest (µs, change #): {}",
        slowest
            .iter()
            .map(|(us, n)| format!("{us} #{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rss = rss_kib(agent.pid(), "VmRSS:")?;
    println!(
        "  agent RSS after the changes: {:.1} MB",
        rss as f64 / 1024.0
    );
    agent.terminate(Duration::from_secs(10))?;
    drop(api);
    Ok(())
}
