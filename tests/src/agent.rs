//! Running the real `gangplank` binary on a simulated node.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{target_binary, Cluster, Proc};

/// How long an agent may take to load, attach and sync at start-up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One node's agent.
pub struct Agent {
    node: String,
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
        let n = cluster.node(node);
        let mut agent = Agent {
            node: node.into(),
            proc: None,
            bpffs: n.bpffs.clone(),
            cgroup: n.cgroup.clone(),
        };
        agent.spawn(cluster)?;
        Ok(agent)
    }

    fn spawn(&mut self, cluster: &Cluster) -> Result<()> {
        let mut cmd = gangplank_cmd()?;
        cmd.arg("agent")
            .arg("--manifests")
            .arg(cluster.manifests_dir())
            .arg("--node-name")
            .arg(&self.node)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .env("RUST_LOG", "info");
        let mut proc = cluster.spawn_agent_process(&self.node, cmd)?;
        proc.wait_for_stderr_line(|l| l.contains("initial sync complete"), START_TIMEOUT)
            .with_context(|| format!("agent on {} did not sync", self.node))?;
        self.proc = Some(proc);
        Ok(())
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
