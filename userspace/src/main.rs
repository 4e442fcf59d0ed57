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
    /// The devices the agent would serve external traffic on, with the
    /// node addresses they hold.
    Devices {
        /// Use these devices instead of detecting them (as `agent --devices`).
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Keep running and print the devices again (one JSON line each with
        /// `-o json`) whenever their addresses change.
        #[arg(long, hide = true)]
        watch: bool,
    },
    /// The datapath's state: map fill levels, attached links, node
    /// addresses, devices and load-balancing mode.
    Status {
        #[arg(long, default_value = agent::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Measure this machine: build a simulated cluster (network namespaces
    /// with no route out), and compare gangplank with the rules kube-proxy
    /// would write (iptables and nftables modes) for 1 to 10,000 Services:
    /// ClusterIP and NodePort connection rate and latency, one stream's
    /// throughput, programming time; then each datapath program's cost per
    /// packet. Needs root; leaves nothing behind.
    Bench(BenchArgs),
    /// Mount a bpf filesystem at DIR unless one is there (the Helm chart's
    /// init container, for nodes without /sys/fs/bpf).
    MountBpffs {
        /// Where to mount it.
        #[arg(default_value = "/sys/fs/bpf")]
        dir: PathBuf,
    },
    /// (internal) wait for SIGTERM: the Helm chart's clean-up pods, Ready
    /// once their node is clean.
    #[command(hide = true)]
    Pause,
    /// Wait until every pod of a DaemonSet is Ready, then delete it: the
    /// Helm chart's post-delete Job, waiting for `gangplank uninstall` to
    /// have run on every node.
    UninstallWait {
        /// The clean-up DaemonSet, NAMESPACE/NAME.
        #[arg(long, value_parser = parse_namespaced)]
        daemonset: (String, String),
        /// Seconds to wait before failing.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the
        /// pod's service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// (internal) the benchmark's load generator and backend server, run
    /// inside the simulated pods.
    #[command(name = "bench-conn", hide = true)]
    BenchConn(gangplank::bench::conn::ConnArgs),
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
    /// for changes. Without it, the agent follows the Kubernetes API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// kubeconfig file for the API server (default: KUBECONFIG, then
    /// ~/.kube/config, then the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
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
    /// Devices where NodePort, LoadBalancer and external-IP traffic arrives
    /// (default: the interfaces with a global IPv4 address and a route,
    /// without loopback, bridges and their ports; see `gangplank devices`).
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<String>>,
    /// XDP fast path on the devices: `auto` uses it where the driver
    /// supports native XDP except on veth devices (where it costs TCP
    /// stream throughput), `native` there too, `off` uses tc only.
    #[arg(long, value_enum, default_value = "auto")]
    xdp: dataplane::loader::XdpSetting,
    /// How traffic for endpoints on other nodes is forwarded: `snat`
    /// (replies return through this node), `dsr` (the client address is kept
    /// and the backend's node replies directly), `hybrid` (DSR for TCP,
    /// SNAT for UDP).
    #[arg(long, value_enum, default_value = "snat")]
    lb_mode: dataplane::loader::LbMode,
    /// Maglev lookup table size per external frontend (a prime; larger
    /// tables remap fewer flows when backends change, at 4 bytes per entry).
    #[arg(long, default_value_t = gangplank_common::MAGLEV_DEFAULT_SIZE)]
    maglev_table_size: u32,
    /// Serve Prometheus metrics, /healthz and /readyz on this address
    /// (e.g. 127.0.0.1:9962).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Address the health-check node ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    health_bind: std::net::IpAddr,
    /// Seconds between conntrack garbage collection passes.
    #[arg(long, default_value_t = 30)]
    ct_gc_interval: u64,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Run one part only: `services` (gangplank against kube-proxy's
    /// rules, on a simulated cluster) or `packets` (each tc/XDP program's
    /// cost per packet, with BPF_PROG_TEST_RUN).
    #[arg(long, value_enum)]
    only: Option<BenchPart>,
    #[command(flatten)]
    services: gangplank::bench::ServicesOptions,
    #[command(flatten)]
    packets: gangplank::bench::PacketOptions,
    /// Directory for the reports (services.md, packets.md), the Services
    /// data (services.json) and the plots.
    #[arg(long, default_value = "gangplank-bench")]
    out: PathBuf,
}

fn parse_namespaced(s: &str) -> Result<(String, String), String> {
    gangplank::source::split_namespaced(s)
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAMESPACE/NAME"))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchPart {
    Services,
    Packets,
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
                source: match args.manifests {
                    Some(dir) => agent::SourceConfig::Manifests(dir),
                    None => agent::SourceConfig::Api(gangplank::source::kube::KubeOptions {
                        kubeconfig: args.kubeconfig,
                    }),
                },
                node_name: match args.node_name {
                    Some(n) => n,
                    None => gangplank::preflight::hostname("--node-name", "NODE_NAME")?,
                },
                cgroup,
                bpffs: args.bpffs,
                devices: args.devices,
                xdp: args.xdp,
                lb_mode: args.lb_mode,
                maglev_table_size: args.maglev_table_size,
                metrics_addr: args.metrics_addr,
                health_bind: args.health_bind,
                ct_gc_interval: std::time::Duration::from_secs(args.ct_gc_interval.max(1)),
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
        Command::Status { bpffs, output } => {
            preflight::require_root()?;
            let text = gangplank::status::run(&bpffs, matches!(output, Output::Json))?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Command::Devices {
            devices: names,
            output,
            watch,
        } => {
            // Write errors (a closed pipe) end the command instead of panicking.
            let print = |devices: &[gangplank::devices::NetDevice]| -> Result<()> {
                use std::io::Write as _;
                let text = match output {
                    Output::Table => gangplank::devices::table(devices),
                    // One line per state when watching, so readers can parse line by line.
                    Output::Json if watch => serde_json::to_string(devices)? + "\n",
                    Output::Json => serde_json::to_string_pretty(devices)? + "\n",
                };
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
                Ok(())
            };
            let (tx, rx) = std::sync::mpsc::channel();
            // Watch before the first read, so no change in between is lost.
            let _watcher = watch
                .then(|| gangplank::devices::AddressWatcher::start(tx))
                .transpose()?;
            let mut current = gangplank::devices::select(names.as_deref())?;
            print(&current)?;
            if watch {
                gangplank::devices::follow(&mut current, &rx, |d| print(d).is_ok())?;
            }
            Ok(())
        }
        Command::Bench(args) => {
            gangplank_sim::check_privileges()?;
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            // The simulated nodes run this very binary as their agent.
            let exe = std::env::current_exe().context("locating the gangplank binary")?;
            gangplank_sim::use_binary("gangplank", exe);
            // Clusters of earlier runs that were killed: what cannot be
            // removed does not stop this run (its names are its own).
            if let Err(e) = gangplank_sim::sweep_stale() {
                eprintln!("warning: {e:#}");
            }
            if args.only != Some(BenchPart::Packets) {
                gangplank::bench::services::run(&args.services, &args.out)?;
            }
            if args.only != Some(BenchPart::Services) {
                gangplank::bench::packets::run(&args.packets, &args.out)?;
            }
            Ok(())
        }
        Command::BenchConn(args) => gangplank::bench::conn::run(&args),
        Command::MountBpffs { dir } => {
            if gangplank::cleanup::mount_bpffs(&dir)? {
                println!("mounted a bpf filesystem at {}", dir.display());
            } else {
                println!("{} is already a bpf filesystem", dir.display());
            }
            Ok(())
        }
        Command::Pause => runtime()?.block_on(gangplank::cleanup::pause()),
        Command::UninstallWait {
            daemonset: (namespace, name),
            timeout,
            kubeconfig,
        } => runtime()?.block_on(async {
            let client = gangplank::source::kube::connect(&gangplank::source::kube::KubeOptions {
                kubeconfig,
            })
            .await?;
            gangplank::cleanup::wait_and_delete(
                client,
                &namespace,
                &name,
                std::time::Duration::from_secs(timeout),
            )
            .await
        }),
        Command::Uninstall { cgroup, bpffs } => {
            preflight::require_root()?;
            let removed = dataplane::loader::uninstall(&bpffs)?;
            for link in &removed.links {
                if let Some(name) = link.file_name() {
                    println!("unpinned {}", name.to_string_lossy());
                }
            }
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

/// A runtime for the commands that talk to the API server or wait for
/// signals (the agent builds its own).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
