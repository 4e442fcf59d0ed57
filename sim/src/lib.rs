//! A simulated Kubernetes cluster in network namespaces, for gangplank's
//! end-to-end tests, its demo and `gangplank bench`.
//!
//! A [`Cluster`] is a set of network namespaces (client, lan, nodes, pods)
//! wired with veths and bridges, a cgroup2 subtree per node and pod, and a
//! private bpffs; it is torn down when dropped. Processes are started inside
//! it with [`Cluster::spawn_in_pod`] and friends and controlled through
//! [`Proc`]. The `gp-probe` binary (see [`probe`]) serves and probes TCP/UDP
//! from inside pods; [`agent`] runs the gangplank agent on a node.
//!
//! Nothing here routes out of the simulation: its namespaces are wired only
//! to each other. Everything needs root; call [`check_privileges`] for a
//! clear error, and [`sweep_stale`] to remove what crashed runs left behind.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};

pub mod agent;
pub mod bench_options;
pub mod cluster;
pub mod manifests;
pub mod measure;
pub mod probe;
pub mod process;
mod sweep;
pub mod sys;

pub use cluster::{Cluster, Host, Node, Pod};
pub use probe::{probe_cmd, ProbeResult};
pub use process::Proc;
pub use sweep::sweep_stale;

use process::lock;

/// Path of a binary built into the same target directory as the running
/// test or xtask (e.g. "gangplank", "gp-probe").
///
/// Derived from `std::env::current_exe()`: `target/<profile>/deps/<test>` or
/// `target/<profile>/<bin>` both map to `target/<profile>/<name>`.
pub fn target_binary(name: &str) -> Result<PathBuf> {
    if let Some(path) = lock(binaries()).get(name) {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{name} not built: run `cargo build --workspace` (cargo xtask test does) (looked for {})",
            path.display()
        )
    }
}

/// Makes [`target_binary`] answer `path` for `name` in this process: for
/// programs that run the cluster from an installed binary (`gangplank
/// bench` runs its own executable as the agent), where no target
/// directory exists.
pub fn use_binary(name: &str, path: PathBuf) {
    lock(binaries()).insert(name.to_string(), path);
}

fn binaries() -> &'static Mutex<HashMap<String, PathBuf>> {
    static BINARIES: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    BINARIES.get_or_init(Default::default)
}

/// Checks that the simulated cluster can run here: root (with CAP_NET_ADMIN and
/// CAP_SYS_ADMIN), network namespaces, a cgroup2 mount and iproute2.
///
/// The error says what is missing, e.g. "the simulated cluster needs root
/// (...): run as root, e.g. `sudo cargo xtask test`". The result is computed once per process.
pub fn check_privileges() -> Result<()> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| check_privileges_uncached().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn check_privileges_uncached() -> Result<()> {
    const NEED_ROOT: &str = "the simulated cluster (network namespaces, cgroups, BPF) needs root: run as root, e.g. `sudo gangplank bench` or `sudo cargo xtask test`";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(NEED_ROOT);
    }
    // Root in a restricted container may lack the capabilities we need.
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    if let Some(caps) = cap_eff {
        // Bit numbers from linux/capability.h.
        for (bit, cap) in [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")] {
            if caps & (1u64 << bit) == 0 {
                bail!("{NEED_ROOT} (running as uid 0 but without {cap})");
            }
        }
    }
    if !Path::new("/proc/self/ns/net").exists() {
        bail!("this kernel has no network namespaces (no /proc/self/ns/net); the simulated cluster needs CONFIG_NET_NS");
    }
    sys::cgroup2_root()?;
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "`ip -V` failed ({}); the simulated cluster needs iproute2",
            o.status
        ),
        Err(e) => bail!("cannot run `ip` ({e}); the simulated cluster needs iproute2"),
    }
}
