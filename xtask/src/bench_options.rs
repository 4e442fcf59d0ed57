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
}

/// Benchmark size.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Options {
    /// Run only this part (default: both).
    #[arg(long, value_enum)]
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
    /// Packets: batches per case (p10/p50/p90 are over batches).
    #[arg(long, default_value_t = 20)]
    pub packet_batches: usize,
    /// Packets: packets per batch for cases measured one run at a time.
    #[arg(long, default_value_t = 500)]
    pub packet_runs: usize,
    /// Packets: `repeat` for cases that leave the packet unchanged.
    #[arg(long, default_value_t = 100_000)]
    pub packet_repeat: u32,
}

impl Options {
    /// The same options as command-line arguments (for the release run).
    pub fn to_args(self) -> Vec<String> {
        let mut args = vec![
            format!("--services={}", self.services),
            format!("--endpoints={}", self.endpoints),
            format!("--changes={}", self.changes),
            format!("--packet-batches={}", self.packet_batches),
            format!("--packet-runs={}", self.packet_runs),
            format!("--packet-repeat={}", self.packet_repeat),
        ];
        match self.only {
            Some(Part::Control) => args.push("--only=control".into()),
            Some(Part::Packets) => args.push("--only=packets".into()),
            None => {}
        }
        args
    }
}
