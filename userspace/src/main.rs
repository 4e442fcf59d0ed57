//! `gangplank`: the node agent and its CLI.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use gangplank::{agent, dataplane, inspect, preflight};

#[derive(Parser)]
#[command(
    name = "gangplank",
    version,
    about = "Kubernetes Services load-balanced by eBPF, without kube-proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: follow Services and EndpointSlices and keep the
    /// BPF maps in sync.
    Agent(AgentArgs),
    /// Inspect services as the datapath serves them.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Detach every gangplank program and remove its pinned maps.
    Uninstall {
        /// Also detach gangplank links at this cgroup that have no pin (for
        /// example ones still held by a running agent).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long, default_value = agent::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Directory of Kubernetes manifests (Service, EndpointSlice), followed
    /// for changes.
    #[arg(long)]
    manifests: PathBuf,
    /// This node's name, as in EndpointSlice `nodeName` (default: hostname).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// cgroup v2 directory the socket load balancer attaches to (default:
    /// the cgroup2 root, i.e. every process of the node).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Directory on a bpf filesystem for pinned maps and links.
    #[arg(long, default_value = agent::DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Every frontend with its backends, from the pinned maps.
    List {
        #[arg(long, default_value = agent::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// The node name when neither --node-name nor NODE_NAME is given: the
/// hostname, as the kubelet defaults it.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname for the default --node-name")?;
    let name = name.trim();
    if name.is_empty() {
        anyhow::bail!("the hostname is empty: pass --node-name (or set NODE_NAME)");
    }
    Ok(name.to_string())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            let cgroup = match args.cgroup {
                Some(c) => c,
                None => preflight::cgroup2_root()?,
            };
            let config = agent::Config {
                manifests: args.manifests,
                node_name: match args.node_name {
                    Some(n) => n,
                    None => hostname()?,
                },
                cgroup,
                bpffs: args.bpffs,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(agent::run(config))
        }
        Command::Service {
            command: ServiceCommand::List { bpffs, output },
        } => {
            preflight::require_root()?;
            let maps_dir = dataplane::loader::PinDirs::new(&bpffs).maps;
            let maps = dataplane::BpfMaps::open_pinned(&maps_dir)?;
            let snapshot = dataplane::LbMaps::snapshot(&maps)?;
            let views = inspect::frontends(&snapshot);
            match output {
                Output::Table => print!("{}", inspect::table(&views)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
            }
            Ok(())
        }
        Command::Uninstall { cgroup, bpffs } => {
            preflight::require_root()?;
            let removed = dataplane::loader::uninstall(&bpffs)?;
            println!(
                "unpinned {} program link(s) and removed {} map(s) from {}",
                removed.links.len(),
                removed.maps.len(),
                bpffs.display()
            );
            if let Some(cgroup) = cgroup {
                let detached = dataplane::attached::detach_all(&cgroup)
                    .with_context(|| format!("detaching links at {}", cgroup.display()))?;
                for link in &detached {
                    println!(
                        "detached {} (link {}) from {}",
                        link.program,
                        link.link_id,
                        cgroup.display()
                    );
                }
            }
            Ok(())
        }
    }
}
