//! `cargo xtask bench` options: compiled without the simulated-cluster
//! harness, so that `cargo xtask` builds before set-up has installed what
//! the harness needs (the harness links the agent, whose build compiles the
//! eBPF programs with bpf-linker).

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The agent at scale: start-up, one change, memory.
    Control,
    /// Per-packet cost of the tc/XDP programs (BPF_PROG_TEST_RUN).
    Packets,
    /// gangplank-ingress against nginx and haproxy (never part of the
    /// default run: it installs nginx and haproxy).
    Ingress,
    /// The agent in cluster mode against the fake Kubernetes API server:
    /// start-up from one list, watch event → map latency, memory.
    Api,
    /// ClusterIP and NodePort connection rate, latency and stream
    /// throughput, and programming time, against kube-proxy's iptables and
    /// nftables modes, for 1 to 10,000 Services.
    Services,
}

pub use gangplank_sim::bench_options::{PacketOptions, ServicesOptions};

/// A proxy of the Ingress benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proxy {
    /// gangplank-ingress (this repository).
    Gangplank,
    /// nginx from the Debian package.
    Nginx,
    /// haproxy from the Debian package.
    Haproxy,
}

/// A load pattern of the Ingress benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// HTTP/1.1 over TLS, connections kept alive.
    Keepalive,
    /// A new TCP connection and full TLS handshake per request.
    Newconn,
    /// HTTP/2 over TLS, several streams per connection.
    H2,
}

/// The Ingress benchmark's options.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressOptions {
    /// Ingress: worker processes/threads of every proxy (nginx
    /// worker_processes, haproxy nbthread, gangplank-ingress --workers).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Ingress: measured seconds per run (after a 1 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Ingress: runs per proxy and mode (the report gives the median).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Ingress: concurrent connections for keepalive and newconn.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Ingress: HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    pub h2_connections: usize,
    /// Ingress: concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    pub h2_streams: usize,
    /// Ingress: proxies to measure (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub proxies: Vec<Proxy>,
    /// Ingress: load patterns to run (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Vec<LoadMode>,
}

impl IngressOptions {
    /// The options as command-line arguments.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--workers={}", self.workers),
            format!("--duration={}", self.duration),
            format!("--repeats={}", self.repeats),
            format!("--concurrency={}", self.concurrency),
            format!("--h2-connections={}", self.h2_connections),
            format!("--h2-streams={}", self.h2_streams),
        ];
        use clap::ValueEnum;
        let names = |v: Vec<Option<clap::builder::PossibleValue>>| {
            v.into_iter()
                .flatten()
                .map(|p| p.get_name().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.proxies.is_empty() {
            let v = self.proxies.iter().map(|p| p.to_possible_value()).collect();
            args.push(format!("--proxies={}", names(v)));
        }
        if !self.modes.is_empty() {
            let v = self.modes.iter().map(|m| m.to_possible_value()).collect();
            args.push(format!("--modes={}", names(v)));
        }
        args
    }
}

/// Benchmark size.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Run only this part (default: control, packets and services).
    #[arg(value_enum)]
    pub part: Option<Part>,
    /// The same as PART.
    #[arg(long, value_enum, conflicts_with = "part")]
    pub only: Option<Part>,
    /// Number of services.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Single-endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// API: EndpointSlice changes to time through the watch (p99 needs
    /// a few hundred).
    #[arg(long, default_value_t = 300)]
    pub api_changes: usize,
    #[command(flatten)]
    pub packets: PacketOptions,
    #[command(flatten)]
    pub ingress: IngressOptions,
    #[command(flatten)]
    pub service_bench: ServicesOptions,
}

impl Options {
    /// The part asked for, by position or `--only` (None: the default run).
    pub fn selected(&self) -> Option<Part> {
        self.part.or(self.only)
    }

    /// The same options as command-line arguments (for the release run).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--services={}", self.services),
            format!("--endpoints={}", self.endpoints),
            format!("--changes={}", self.changes),
            format!("--api-changes={}", self.api_changes),
        ];
        args.extend(self.packets.to_args());
        match self.selected() {
            Some(Part::Control) => args.push("--only=control".into()),
            Some(Part::Packets) => args.push("--only=packets".into()),
            Some(Part::Ingress) => args.push("--only=ingress".into()),
            Some(Part::Api) => args.push("--only=api".into()),
            Some(Part::Services) => args.push("--only=services".into()),
            None => {}
        }
        args.extend(self.ingress.to_args());
        args.extend(self.service_bench.to_args());
        args
    }
}
