//! Options of the Services benchmark (`gangplank bench`, and `cargo xtask
//! bench --only services`, which runs it). They live here rather than in
//! the agent crate so that `cargo xtask` parses them before set-up has
//! installed what building the agent needs (bpf-linker).

use clap::ValueEnum;

/// Where distributions install DejaVu Sans, which the benchmark's plots
/// are drawn with (Debian and Ubuntu: fonts-dejavu-core; Fedora; Arch).
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// A datapath of the Services benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// gangplank's agent (socket LB, tc NodePort datapath).
    Gangplank,
    /// The rules kube-proxy's iptables mode writes.
    Iptables,
    /// The table kube-proxy's nftables mode writes.
    Nftables,
}

impl Dataplane {
    /// Every datapath, in report order.
    pub const ALL: [Dataplane; 3] = [
        Dataplane::Gangplank,
        Dataplane::Iptables,
        Dataplane::Nftables,
    ];

    /// The name shown in reports.
    pub fn label(self) -> &'static str {
        match self {
            Dataplane::Gangplank => "gangplank",
            Dataplane::Iptables => "kube-proxy iptables",
            Dataplane::Nftables => "kube-proxy nftables",
        }
    }
}

/// Which iptables kube-proxy's iptables mode is measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IptablesBackend {
    /// iptables-nft (Debian's and most current distributions' default).
    Nft,
    /// iptables-legacy (x_tables).
    Legacy,
}

impl IptablesBackend {
    /// The restore command of this backend.
    pub fn restore_command(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "iptables-nft-restore",
            IptablesBackend::Legacy => "iptables-legacy-restore",
        }
    }
}

/// The Services benchmark's options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServicesOptions {
    /// Services: numbers of Services to measure at (10 endpoints each).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100, 1_000, 10_000])]
    pub sizes: Vec<usize>,
    /// Services: runs per size, datapath and path (the report gives the median).
    #[arg(long, default_value_t = 3)]
    pub conn_repeats: usize,
    /// Services: measured seconds per run (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 2.0)]
    pub conn_duration: f64,
    /// Services: concurrent client connections.
    #[arg(long, default_value_t = 8)]
    pub conn_concurrency: usize,
    /// Services: seconds of the one-stream iperf3 run (0: none).
    #[arg(long, default_value_t = 2)]
    pub stream_seconds: u32,
    /// Services: datapaths to compare (default: gangplank, and each
    /// kube-proxy mode whose tools are installed: iptables-restore or nft,
    /// and conntrack).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub dataplanes: Vec<Dataplane>,
    /// Services: the iptables kube-proxy's iptables mode uses.
    #[arg(long, value_enum, default_value_t = IptablesBackend::Nft)]
    pub iptables: IptablesBackend,
}

impl ServicesOptions {
    /// The options as command-line arguments.
    pub fn to_args(&self) -> Vec<String> {
        let join = |v: Vec<String>| v.join(",");
        let name = |v: Option<clap::builder::PossibleValue>| {
            v.map(|p| p.get_name().to_string()).unwrap_or_default()
        };
        let mut args = vec![
            format!(
                "--sizes={}",
                join(self.sizes.iter().map(|n| n.to_string()).collect())
            ),
            format!("--conn-repeats={}", self.conn_repeats),
            format!("--conn-duration={}", self.conn_duration),
            format!("--conn-concurrency={}", self.conn_concurrency),
            format!("--stream-seconds={}", self.stream_seconds),
            format!("--iptables={}", name(self.iptables.to_possible_value())),
        ];
        if !self.dataplanes.is_empty() {
            args.push(format!(
                "--dataplanes={}",
                join(
                    self.dataplanes
                        .iter()
                        .map(|d| name(d.to_possible_value()))
                        .collect()
                )
            ));
        }
        args
    }
}

/// The per-packet benchmark's options (BPF_PROG_TEST_RUN).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PacketOptions {
    /// Packets: batches per case (p10/p50/p90 are over batches).
    #[arg(long = "packet-batches", default_value_t = 20)]
    pub batches: usize,
    /// Packets: packets per batch for cases measured one run at a time.
    #[arg(long = "packet-runs", default_value_t = 500)]
    pub runs: usize,
    /// Packets: `repeat` for cases that leave the packet unchanged.
    #[arg(long = "packet-repeat", default_value_t = 100_000)]
    pub repeat: u32,
}

impl PacketOptions {
    /// The options as command-line arguments.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("--packet-batches={}", self.batches),
            format!("--packet-runs={}", self.runs),
            format!("--packet-repeat={}", self.repeat),
        ]
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: ServicesOptions,
        #[command(flatten)]
        packets: PacketOptions,
    }

    /// `cargo xtask bench` hands its options to `gangplank bench` as
    /// arguments: they must come back the same.
    #[test]
    fn arguments_round_trip() {
        let cli = Cli::parse_from([
            "x",
            "--sizes=1,5",
            "--conn-repeats=2",
            "--stream-seconds=0",
            "--dataplanes=gangplank,nftables",
            "--iptables=legacy",
        ]);
        let args = cli.opts.to_args();
        let again = Cli::parse_from(std::iter::once("x".to_string()).chain(args.clone()));
        assert_eq!(again.opts.to_args(), args);
        assert_eq!(again.opts.sizes, [1, 5]);
        assert_eq!(again.opts.stream_seconds, 0);
        assert_eq!(
            again.opts.dataplanes,
            [Dataplane::Gangplank, Dataplane::Nftables]
        );
        assert_eq!(again.opts.iptables, IptablesBackend::Legacy);
        let defaults = Cli::parse_from(["x"]).opts;
        assert!(
            defaults.dataplanes.is_empty(),
            "empty: chosen by tools found"
        );
        assert!(!defaults
            .to_args()
            .iter()
            .any(|a| a.starts_with("--dataplanes")));
    }
}
