//! Running the real `gangplank` binary on a simulated node.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{target_binary, Cluster, Proc};

/// How long an agent may take to load, attach and sync at start-up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Extra `gangplank agent` flags for the tc/XDP datapath.
#[derive(Debug, Clone, Default)]
pub struct AgentOpts {
    /// `--devices`; empty: the agent's default detection.
    pub devices: Vec<String>,
    /// `--lb-mode snat|dsr|hybrid`.
    pub lb_mode: Option<String>,
    /// `--xdp auto|native|off`; unset: `native`, because the simulated
    /// nodes' devices are veths, which `auto` leaves to tc, and the tests
    /// must cover the XDP fast path too.
    pub xdp: Option<String>,
    /// `--maglev-table-size`.
    pub maglev_table_size: Option<u32>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
    /// Anything else, appended as given.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` (default "info").
    pub log: Option<String>,
    /// `--kubeconfig`: follow this API server instead of the cluster's
    /// manifest directory.
    pub kubeconfig: Option<PathBuf>,
}

impl AgentOpts {
    /// `--devices eth0`: the node's lan interface in the simulated cluster.
    pub fn lan() -> Self {
        Self {
            devices: vec!["eth0".into()],
            ..Self::default()
        }
    }

    /// `--lb-mode MODE`.
    pub fn lb_mode(mut self, mode: &str) -> Self {
        self.lb_mode = Some(mode.into());
        self
    }

    /// `--xdp MODE`.
    pub fn xdp(mut self, mode: &str) -> Self {
        self.xdp = Some(mode.into());
        self
    }

    /// Follow the API server of `kubeconfig` (cluster mode).
    pub fn kubeconfig(mut self, kubeconfig: PathBuf) -> Self {
        self.kubeconfig = Some(kubeconfig);
        self
    }

    /// Append a raw argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if !self.devices.is_empty() {
            a.push("--devices".into());
            a.push(self.devices.join(","));
        }
        for (flag, value) in [
            ("--lb-mode", &self.lb_mode),
            (
                "--xdp",
                &Some(self.xdp.clone().unwrap_or_else(|| "native".into())),
            ),
            ("--metrics-addr", &self.metrics_addr),
        ] {
            if let Some(v) = value {
                a.push(flag.into());
                a.push(v.clone());
            }
        }
        if let Some(n) = self.maglev_table_size {
            a.push("--maglev-table-size".into());
            a.push(n.to_string());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// One node's agent.
pub struct Agent {
    node: String,
    opts: AgentOpts,
    proc: Option<Proc>,
    /// The agent's `--bpffs` pin directory.
    pub bpffs: PathBuf,
    /// The agent's `--cgroup`.
    pub cgroup: PathBuf,
}

/// The `gangplank` command.
pub fn gangplank_cmd() -> Result<Command> {
    Ok(Command::new(target_binary("gangplank")?))
}

impl Agent {
    /// Start `gangplank agent` for `node` (its netns; its cgroup subtree as
    /// `--cgroup`; its own directory on the cluster's bpffs) and wait until
    /// the first sync is done.
    pub fn start(cluster: &Cluster, node: &str) -> Result<Agent> {
        Self::start_with(cluster, node, AgentOpts::default())
    }

    /// [`Agent::start`] with extra flags (kept for [`Agent::restart`]).
    pub fn start_with(cluster: &Cluster, node: &str, opts: AgentOpts) -> Result<Agent> {
        let n = cluster.node(node);
        let mut agent = Agent {
            node: node.into(),
            opts,
            proc: None,
            bpffs: n.bpffs.clone(),
            cgroup: n.cgroup.clone(),
        };
        agent.spawn(cluster)?;
        Ok(agent)
    }

    fn spawn_unready(&mut self, cluster: &Cluster) -> Result<()> {
        let mut cmd = gangplank_cmd()?;
        cmd.arg("agent");
        match &self.opts.kubeconfig {
            Some(kubeconfig) => cmd.arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("--manifests").arg(cluster.manifests_dir()),
        };
        cmd.arg("--node-name")
            .arg(&self.node)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(self.opts.args())
            .env("RUST_LOG", self.opts.log.as_deref().unwrap_or("info"));
        let proc = cluster.spawn_agent_process(&self.node, cmd)?;
        self.proc = Some(proc);
        Ok(())
    }

    fn spawn(&mut self, cluster: &Cluster) -> Result<()> {
        self.spawn_unready(cluster)?;
        // "agent ready" comes after the XDP fast path is attached too.
        self.wait_for_log(|l| l.contains("agent ready"), START_TIMEOUT)
            .with_context(|| format!("agent on {} did not sync", self.node))?;
        Ok(())
    }

    /// Stop, and start again without waiting for the initial sync (for a
    /// source that is not complete yet).
    pub fn restart_unready(&mut self, cluster: &Cluster) -> Result<()> {
        self.stop()?;
        self.spawn_unready(cluster)
    }

    /// One agent per node of the cluster, all with the same flags, started
    /// one after the other (each waits for its first sync).
    pub fn start_all(cluster: &Cluster, opts: &AgentOpts) -> Result<Vec<Agent>> {
        cluster
            .nodes()
            .iter()
            .map(|n| Self::start_with(cluster, &n.name, opts.clone()))
            .collect()
    }

    /// The node this agent runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the agent process is still running.
    pub fn is_running(&self) -> bool {
        self.proc
            .as_ref()
            .is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }

    /// Stop with SIGTERM (the datapath stays) and start again.
    pub fn restart(&mut self, cluster: &Cluster) -> Result<()> {
        self.stop()?;
        self.spawn(cluster)
    }

    /// SIGTERM and wait; fails if the agent does not exit cleanly.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            let status = proc.terminate(Duration::from_secs(10))?;
            if !status.success() {
                bail!(
                    "agent on {} exited with {status}: {}",
                    self.node,
                    proc.output_summary()
                );
            }
        }
        Ok(())
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.stderr_text())
            .unwrap_or_default()
    }

    /// Wait until the agent logs a line matching `pred` (e.g. an error
    /// about a bad manifest).
    pub fn wait_for_log(
        &mut self,
        pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        match self.proc.as_mut() {
            Some(p) => p.wait_for_stderr_line(pred, timeout),
            None => bail!("agent on {} is not running", self.node),
        }
    }

    /// `gangplank service list -o json` for this node, parsed.
    pub fn service_list(&self, cluster: &Cluster) -> Result<serde_json::Value> {
        let mut cmd = gangplank_cmd()?;
        cmd.args(["service", "list", "-o", "json", "--bpffs"])
            .arg(&self.bpffs);
        let out = cluster.run_in_node(&self.node, cmd, Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "service list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing service list JSON")
    }
}
