//! Per-packet cost of the tc/XDP
//! datapath, measured with `BPF_PROG_TEST_RUN` on the real eBPF object,
//! next to an XDP program that only returns `XDP_PASS`, in the same run.
//!
//! The object is loaded with `Datapath::load` into node-a's private bpffs of
//! a simulated two-node cluster (no agent); two NodePort frontends are
//! written straight into the maps as the agent would write them (Maglev
//! table of the default size): one whose only backend is a pod on node-a
//! (DNAT), one whose only backend is a pod on node-b (SNAT + redirect).
//! Programs run from a thread inside node-a's namespace with node-a's
//! `eth0` as the device, so FIB lookups see node-a's routes and (primed)
//! neighbours. Nothing is attached and no packet is sent.
//!
//! # Method
//!
//! Every frame is 64 bytes (a 54-byte TCP segment plus Ethernet padding).
//! Every case is measured once per batch, batches interleave the cases (so
//! drift hits all of them alike), and p10/p50/p90 are taken over batches.
//!
//! - Paths that leave the packet as it is ("not ours", the baselines) run
//!   with a large `repeat`: the kernel's average over the loop is the cost
//!   per packet.
//! - Paths that translate the packet cannot use `repeat`: the kernel runs
//!   the program again and again on the *same* buffer, so from the second
//!   run on the packet is already translated (and a new flow is no longer
//!   new). Each packet is a fresh copy in its own `BPF_PROG_TEST_RUN` with
//!   `repeat = 1`. Such a run's duration carries the test run's own fixed
//!   cost (two clock reads, bottom-half disabling, and an indirect call
//!   where the repeat loop of XDP uses the direct-call dispatcher). That
//!   overhead is measured in the same batch on an empty program of the same
//!   hook, as "one run at `repeat = 1`" minus "per run at a large `repeat`",
//!   and subtracted: `gp_xdp_pass` for XDP, a two-instruction tc program
//!   for tc. A batch's single-run value is the median of its runs, which
//!   keeps an interrupt that lands inside one run from moving it.
//! - New flows: every packet is a SYN of a 5-tuple never seen before, and
//!   conntrack is emptied before each batch (so the SNAT port range of the
//!   remote backend is never more than lightly used and a port is claimed
//!   at the first attempt, as on a node that is not under a flood). The
//!   bench checks after each batch that every one of them created its two
//!   conntrack entries, i.e. that conntrack missed.
//! - Established flows: a flow is opened (SYN, then the backend's SYN-ACK
//!   through the program that sees it) and its ACK is then sent again and
//!   again, a fresh copy each time.
//!
//! Every run's verdict is checked, and the first translated packet of every
//! batch is decoded and its addresses checked, so a number always belongs
//! to the path its row names.
//!
//! `BPF_PROG_TEST_RUN` runs everything hot in cache (maps, packet, program):
//! these are lower bounds for a real NIC, and they leave out the driver and
//! the stack, which are the same with or without gangplank.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gangplank_common::{
    BACKEND_FLAG_LOCAL, LB_MODE_SNAT, MAGLEV_DEFAULT_SIZE, PROTO_TCP, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use gangplank_sim::Cluster;

use super::packet::{Frame, Packet, TCP_ACK, TCP_SYN};
use super::test_run::{
    self, Ctx, Datapath, Frontend, Maps, RunResult, SkbCtx, XdpCtx, PROG_TYPE_SCHED_CLS, TC_ACT_OK,
    TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_PASS,
};

pub use gangplank_sim::bench_options::PacketOptions as Options;

/// The NodePort whose only backend is a pod on this node.
const NP_LOCAL: u16 = 30081;
/// The NodePort whose only backend is a pod on the other node.
const NP_REMOTE: u16 = 30082;
/// A port of the node that no frontend uses.
const NOT_A_FRONTEND: u16 = 22;
const TARGET_PORT: u16 = 8080;
const ID_LOCAL: u32 = 1;
const ID_REMOTE: u32 = 2;
/// Frames are padded to this length.
const FRAME_LEN: usize = 64;

/// Where a program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

/// What is measured, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    XdpPass,
    TcEmpty,
    XdpNotOurs,
    TcInNotOurs,
    TcEgNotOurs,
    TcNewRemote,
    TcNewLocal,
    XdpNewLocal,
    TcEstRemote,
    TcEstLocal,
    XdpEstLocal,
    TcReplyRemote,
    TcEgReplyLocal,
}

impl Case {
    const ALL: [Case; 13] = [
        Case::XdpPass,
        Case::TcEmpty,
        Case::XdpNotOurs,
        Case::TcInNotOurs,
        Case::TcEgNotOurs,
        Case::TcNewRemote,
        Case::TcNewLocal,
        Case::XdpNewLocal,
        Case::TcEstRemote,
        Case::TcEstLocal,
        Case::XdpEstLocal,
        Case::TcReplyRemote,
        Case::TcEgReplyLocal,
    ];

    fn program(self) -> &'static str {
        match self {
            Case::XdpPass => "gp_xdp_pass",
            Case::TcEmpty => "empty tc program",
            Case::XdpNotOurs | Case::XdpNewLocal | Case::XdpEstLocal => "gp_xdp",
            Case::TcEgNotOurs | Case::TcEgReplyLocal => "gp_tc_egress",
            _ => "gp_tc_ingress",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Case::XdpPass => "baseline: returns XDP_PASS",
            Case::TcEmpty => "baseline: returns TC_ACT_UNSPEC",
            Case::XdpNotOurs | Case::TcInNotOurs => "not ours: TCP to a node port without frontend",
            Case::TcEgNotOurs => "not ours: a packet the node sends",
            Case::TcNewRemote => "NodePort new flow, remote backend: SNAT + redirect",
            Case::TcNewLocal | Case::XdpNewLocal => "NodePort new flow, local backend: DNAT",
            Case::TcEstRemote => "NodePort established, remote backend: SNAT + redirect",
            Case::TcEstLocal | Case::XdpEstLocal => "NodePort established, local backend: DNAT",
            Case::TcReplyRemote => "reply from the remote backend: reverse SNAT + redirect",
            Case::TcEgReplyLocal => "reply of the local backend: reverse DNAT",
        }
    }

    fn hook(self) -> Hook {
        match self {
            Case::XdpPass | Case::XdpNotOurs | Case::XdpNewLocal | Case::XdpEstLocal => Hook::Xdp,
            Case::TcEgNotOurs | Case::TcEgReplyLocal => Hook::TcEgress,
            _ => Hook::TcIngress,
        }
    }

    /// Measured with a large `repeat` (the packet is left as it is).
    fn repeated(self) -> bool {
        matches!(
            self,
            Case::XdpPass
                | Case::TcEmpty
                | Case::XdpNotOurs
                | Case::TcInNotOurs
                | Case::TcEgNotOurs
        )
    }
}

/// One batch's value of a case, in ns: for single-run cases the median
/// and the mean of the batch's runs; for repeated cases both are the
/// kernel's average.
#[derive(Debug, Default, Clone, Copy)]
struct Stat {
    median: f64,
    mean: f64,
}

impl Stat {
    fn both(v: f64) -> Stat {
        Stat { median: v, mean: v }
    }
}

impl std::ops::Sub for Stat {
    type Output = Stat;
    fn sub(self, o: Stat) -> Stat {
        Stat {
            median: self.median - o.median,
            mean: self.mean - o.mean,
        }
    }
}

/// Per-batch values of one case.
#[derive(Default, Clone)]
struct Samples {
    /// ns/packet: the kernel's average for repeated cases; for single-run
    /// cases, the batch's value minus the hook's single-run overhead.
    net: Vec<Stat>,
    /// As measured, before the subtraction.
    raw: Vec<Stat>,
}

/// The loaded programs and where they run.
struct Rig<'a> {
    xdp_pass: BorrowedFd<'a>,
    tc_empty: BorrowedFd<'a>,
    xdp: BorrowedFd<'a>,
    tc_in: BorrowedFd<'a>,
    tc_eg: BorrowedFd<'a>,
    ifindex: u32,
    client: Ipv4Addr,
    node: Ipv4Addr,
    local_backend: SocketAddrV4,
    remote_backend: SocketAddrV4,
    /// Source of fresh client 5-tuples.
    next_flow: u32,
}

/// Pads a frame to [`FRAME_LEN`] (Ethernet padding after the datagram).
fn frame(p: Packet) -> Vec<u8> {
    let mut f = p.build();
    if f.len() < FRAME_LEN {
        f.resize(FRAME_LEN, 0);
    }
    f
}

/// Median and mean of run durations.
fn stat(v: &mut [u32]) -> Stat {
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        f64::from(v[n / 2])
    } else {
        (f64::from(v[n / 2 - 1]) + f64::from(v[n / 2])) / 2.0
    };
    let mean = v.iter().map(|d| f64::from(*d)).sum::<f64>() / n as f64;
    Stat { median, mean }
}

/// Percentile `p` (0..=100) with linear interpolation.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (
        percentile(&s, 10.0),
        percentile(&s, 50.0),
        percentile(&s, 90.0),
    )
}

fn addrs(data: &[u8]) -> Result<(SocketAddrV4, SocketAddrV4)> {
    Frame::parse(data)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .addrs()
        .context("no TCP/UDP addresses in the output frame")
}

impl Rig<'_> {
    fn ctx(&self, hook: Hook) -> Ctx {
        match hook {
            Hook::Xdp => Ctx::Xdp(XdpCtx {
                ingress_ifindex: self.ifindex,
                rx_queue_index: 0,
            }),
            Hook::TcIngress => Ctx::Skb(SkbCtx {
                ifindex: self.ifindex,
                ingress_ifindex: self.ifindex,
                ..SkbCtx::default()
            }),
            Hook::TcEgress => Ctx::Skb(SkbCtx {
                ifindex: self.ifindex,
                ..SkbCtx::default()
            }),
        }
    }

    fn fd(&self, case: Case) -> BorrowedFd<'_> {
        match case {
            Case::XdpPass => self.xdp_pass,
            Case::TcEmpty => self.tc_empty,
            _ => match case.hook() {
                Hook::Xdp => self.xdp,
                Hook::TcIngress => self.tc_in,
                Hook::TcEgress => self.tc_eg,
            },
        }
    }

    fn run(&self, case: Case, data: &[u8], repeat: u32) -> Result<RunResult> {
        test_run::run(self.fd(case), data, self.ctx(case.hook()), repeat)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {} ({case:?})", case.program()))
    }

    /// A client address and port never used before in this run.
    fn fresh_client(&mut self) -> SocketAddrV4 {
        let n = self.next_flow;
        self.next_flow += 1;
        // 64,000 ports per address; a run uses far fewer flows than
        // 198.18.0.100/30 offers.
        let ip = u32::from(self.client) + n / 64_000;
        SocketAddrV4::new(Ipv4Addr::from(ip), 1024 + (n % 64_000) as u16)
    }

    fn frontend(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.node, port)
    }

    /// The frame a repeated case runs on, and the verdict it must get.
    fn repeated_frame(&self, case: Case) -> (Vec<u8>, u32) {
        let client = SocketAddrV4::new(self.client, 40_000);
        let to_node = frame(Packet::tcp(client, self.frontend(NOT_A_FRONTEND), TCP_SYN));
        match case {
            Case::XdpPass | Case::XdpNotOurs => (to_node, XDP_PASS),
            Case::TcEmpty | Case::TcInNotOurs => (to_node, TC_ACT_UNSPEC),
            // The node answering a connection of its own to the client.
            Case::TcEgNotOurs => (
                frame(Packet::tcp(
                    self.frontend(NOT_A_FRONTEND),
                    client,
                    TCP_SYN | TCP_ACK,
                )),
                TC_ACT_UNSPEC,
            ),
            _ => unreachable!("{case:?} is not repeated"),
        }
    }

    /// One repeated case: the kernel's ns/packet. The packet must come
    /// back unchanged with the expected verdict.
    fn repeated(&self, case: Case, repeat: u32) -> Result<Stat> {
        let (data, want) = self.repeated_frame(case);
        let r = self.run(case, &data, repeat)?;
        ensure!(
            r.retval == want && r.data == data,
            "{case:?}: expected verdict {} and the packet unchanged, got {} ({})",
            want as i32,
            r.retval as i32,
            if r.data == data {
                "unchanged"
            } else {
                "changed"
            }
        );
        Ok(Stat::both(f64::from(r.duration_ns)))
    }

    /// `frames` one run each; every verdict must be `want`, and `check`
    /// sees the first output frame.
    fn singles(
        &self,
        case: Case,
        frames: &[Vec<u8>],
        want: u32,
        check: impl Fn(SocketAddrV4, SocketAddrV4) -> Result<()>,
    ) -> Result<Stat> {
        let mut durations = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            let r = self.run(case, f, 1)?;
            ensure!(
                r.retval == want,
                "{case:?}: packet {i}: expected verdict {}, got {}",
                want as i32,
                r.retval as i32
            );
            if i == 0 {
                let (src, dst) = addrs(&r.data)?;
                check(src, dst).with_context(|| format!("{case:?}: output {src} -> {dst}"))?;
            }
            durations.push(r.duration_ns);
        }
        Ok(stat(&mut durations))
    }

    /// Opens a flow to the local backend through tc; returns its client.
    fn open_local(&mut self) -> Result<SocketAddrV4> {
        let client = self.fresh_client();
        let syn = frame(Packet::tcp(client, self.frontend(NP_LOCAL), TCP_SYN));
        let r = self.run(Case::TcNewLocal, &syn, 1)?;
        ensure!(
            r.retval == TC_ACT_OK,
            "local SYN: verdict {}",
            r.retval as i32
        );
        let syn_ack = frame(Packet::tcp(self.local_backend, client, TCP_SYN | TCP_ACK));
        let r = self.run(Case::TcEgReplyLocal, &syn_ack, 1)?;
        ensure!(
            r.retval == TC_ACT_OK,
            "local SYN-ACK: verdict {}",
            r.retval as i32
        );
        Ok(client)
    }

    /// Opens a flow to the remote backend; returns its client and the
    /// SNAT address it leaves with.
    fn open_remote(&mut self) -> Result<(SocketAddrV4, SocketAddrV4)> {
        let client = self.fresh_client();
        let syn = frame(Packet::tcp(client, self.frontend(NP_REMOTE), TCP_SYN));
        let r = self.run(Case::TcNewRemote, &syn, 1)?;
        ensure!(
            r.retval == TC_ACT_REDIRECT,
            "remote SYN: verdict {}",
            r.retval as i32
        );
        let (snat, _) = addrs(&r.data)?;
        let syn_ack = frame(Packet::tcp(self.remote_backend, snat, TCP_SYN | TCP_ACK));
        let r = self.run(Case::TcReplyRemote, &syn_ack, 1)?;
        ensure!(
            r.retval == TC_ACT_REDIRECT,
            "remote SYN-ACK: verdict {}",
            r.retval as i32
        );
        Ok((client, snat))
    }

    /// One batch of every case, appended to `out` (in [`Case::ALL`] order).
    fn batch(&mut self, maps: &mut Maps, opts: &Options, out: &mut [Samples]) -> Result<()> {
        maps.flush_state().context("emptying conntrack")?;
        let mut put = |case: Case, raw: Stat, net: Stat| {
            let s = &mut out[Case::ALL.iter().position(|c| *c == case).expect("a case")];
            s.raw.push(raw);
            s.net.push(net);
        };

        // Baselines, and the single-run overhead of each hook.
        let mut overhead = [Stat::default(); 2];
        for (i, case) in [Case::XdpPass, Case::TcEmpty].into_iter().enumerate() {
            let per_packet = self.repeated(case, opts.repeat)?;
            let (data, want) = self.repeated_frame(case);
            let frames = vec![data; opts.runs];
            let single = self.singles(case, &frames, want, |_, _| Ok(()))?;
            overhead[i] = single - per_packet;
            put(case, single, per_packet);
        }
        let overhead_of = |case: Case| match case.hook() {
            Hook::Xdp => overhead[0],
            Hook::TcIngress | Hook::TcEgress => overhead[1],
        };

        for case in [Case::XdpNotOurs, Case::TcInNotOurs, Case::TcEgNotOurs] {
            let v = self.repeated(case, opts.repeat)?;
            put(case, v, v);
        }

        // New flows: a fresh 5-tuple for every packet.
        let node = self.node;
        let (local, remote) = (self.local_backend, self.remote_backend);
        for case in [Case::TcNewRemote, Case::TcNewLocal, Case::XdpNewLocal] {
            let port = if case == Case::TcNewRemote {
                NP_REMOTE
            } else {
                NP_LOCAL
            };
            let frames: Vec<Vec<u8>> = (0..opts.runs)
                .map(|_| {
                    let c = self.fresh_client();
                    frame(Packet::tcp(c, self.frontend(port), TCP_SYN))
                })
                .collect();
            let client = addrs(&frames[0])?.0;
            let raw = match case {
                Case::TcNewRemote => self.singles(case, &frames, TC_ACT_REDIRECT, |s, d| {
                    let snat_ports = SNAT_PORT_MIN..=SNAT_PORT_MAX;
                    ensure!(*s.ip() == node && snat_ports.contains(&s.port()) && d == remote);
                    Ok(())
                })?,
                Case::TcNewLocal => self.singles(case, &frames, TC_ACT_OK, |s, d| {
                    ensure!(s == client && d == local);
                    Ok(())
                })?,
                _ => self.singles(case, &frames, XDP_PASS, |s, d| {
                    ensure!(s == client && d == local);
                    Ok(())
                })?,
            };
            put(case, raw, raw - overhead_of(case));
        }
        // Each new flow adds its two conntrack entries: none of them hit.
        let entries = maps.ct_entries()?.len();
        ensure!(
            entries == 6 * opts.runs,
            "expected {} conntrack entries after {} new flows, found {entries}: \
             some packets were not new flows",
            6 * opts.runs,
            3 * opts.runs
        );

        // Established flows: the same ACK, a fresh copy each run.
        let lc = self.open_local()?;
        let (rc, snat) = self.open_remote()?;
        let np_local = self.frontend(NP_LOCAL);
        let np_remote = self.frontend(NP_REMOTE);
        let n = opts.runs;
        let ack_local = vec![frame(Packet::tcp(lc, np_local, TCP_ACK)); n];
        let ack_remote = vec![frame(Packet::tcp(rc, np_remote, TCP_ACK)); n];
        let reply_remote = vec![frame(Packet::tcp(remote, snat, TCP_ACK)); n];
        let reply_local = vec![frame(Packet::tcp(local, lc, TCP_ACK)); n];
        let to_local = |s: SocketAddrV4, d: SocketAddrV4| {
            ensure!(s == lc && d == local);
            Ok(())
        };
        let cases: [(Case, &[Vec<u8>], u32); 5] = [
            (Case::TcEstRemote, &ack_remote, TC_ACT_REDIRECT),
            (Case::TcEstLocal, &ack_local, TC_ACT_OK),
            (Case::XdpEstLocal, &ack_local, XDP_PASS),
            (Case::TcReplyRemote, &reply_remote, TC_ACT_REDIRECT),
            (Case::TcEgReplyLocal, &reply_local, TC_ACT_OK),
        ];
        for (case, frames, want) in cases {
            let raw = match case {
                Case::TcEstRemote => self.singles(case, frames, want, |s, d| {
                    ensure!(s == snat && d == remote);
                    Ok(())
                })?,
                Case::TcReplyRemote => self.singles(case, frames, want, |s, d| {
                    ensure!(s == np_remote && d == rc);
                    Ok(())
                })?,
                Case::TcEgReplyLocal => self.singles(case, frames, want, |s, d| {
                    ensure!(s == np_local && d == lc);
                    Ok(())
                })?,
                _ => self.singles(case, frames, want, to_local)?,
            };
            put(case, raw, raw - overhead_of(case));
        }
        Ok(())
    }
}

fn medians(v: &[Stat]) -> Vec<f64> {
    v.iter().map(|s| s.median).collect()
}

fn means(v: &[Stat]) -> Vec<f64> {
    v.iter().map(|s| s.mean).collect()
}

fn report(samples: &[Samples], opts: &Options, elapsed: Duration) -> String {
    let base = spread(&medians(&samples[0].net)).1;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| program | path | ns/packet p50 | p10–p90 | × XDP_PASS | mean | measured as |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|");
    for (case, s) in Case::ALL.iter().zip(samples) {
        let (p10, p50, p90) = spread(&medians(&s.net));
        let mean = spread(&means(&s.net)).1;
        let how = if case.repeated() {
            format!("repeat {}", opts.repeat)
        } else {
            format!(
                "1 run/packet, {:.0} before subtraction",
                spread(&medians(&s.raw)).1
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {p50:.0} | {p10:.0}–{p90:.0} | {:.1} | {mean:.0} | {how} |",
            if case.program().starts_with("gp_") {
                format!("`{}`", case.program())
            } else {
                case.program().to_string()
            },
            case.path(),
            p50 / base,
        );
    }
    // Overhead per batch: what `batch` subtracted.
    let overhead = |i: usize| -> (f64, f64, f64, f64) {
        let d: Vec<Stat> = samples[i]
            .raw
            .iter()
            .zip(&samples[i].net)
            .map(|(r, n)| *r - *n)
            .collect();
        let (lo, mid, hi) = spread(&medians(&d));
        (lo, mid, hi, spread(&means(&d)).1)
    };
    let (x10, x50, x90, xmean) = overhead(0);
    let (t10, t50, t90, tmean) = overhead(1);
    let _ = writeln!(
        md,
        "\nns/packet: p50 and p10–p90 over {} batches. Cases that translate the packet run \
         one packet per BPF_PROG_TEST_RUN ({} packets per batch, median per batch) minus the \
         single-run overhead of the same batch, measured on an empty program of the same hook \
         (one run at repeat 1 minus per run at repeat {}): XDP {x50:.0} ns ({x10:.0}–{x90:.0}), \
         tc {t50:.0} ns ({t10:.0}–{t90:.0}). mean: the batch means minus the mean overhead \
         (XDP {xmean:.0} ns, tc {tmean:.0} ns), p50 over batches; unlike the median it counts \
         the rare slow packets (interrupts; for new flows, the conntrack map's own periodic \
         work). 64-byte frames; Maglev tables of {MAGLEV_DEFAULT_SIZE}; conntrack emptied \
         before each batch.",
        opts.batches, opts.runs, opts.repeat
    );
    let _ = writeln!(
        md,
        "\nMachine: {}. Command: `gangplank bench --only packets` (or `cargo xtask bench \
         --only packets`); this part took {:.1} s.",
        gangplank_sim::measure::machine_summary(),
        elapsed.as_secs_f64()
    );
    md
}

/// Measures every case and writes `packets.md` into `out`.
pub fn run(opts: &Options, out: &Path) -> Result<()> {
    let opts = *opts;
    gangplank_sim::check_privileges()?;
    if opts.batches < 1 || opts.runs < 1 || opts.repeat < 2 {
        bail!("--packet-batches and --packet-runs must be at least 1, --packet-repeat at least 2");
    }
    // Each batch's new SNAT flows hold ports of the remote backend's range
    // (4,536 ports): beyond a few hundred, claiming one takes more than one
    // attempt, and the bench would measure a crowded range instead.
    if opts.runs > 1000 {
        bail!("--packet-runs: at most 1000 (new SNAT flows per batch share one port range)");
    }
    let started = Instant::now();
    let c = Cluster::new(
        "bench-pkt",
        &[("node-a", &["pod-a1"]), ("node-b", &["pod-b1"])],
    )
    .context("building the simulated cluster")?;
    let bpffs = c.node("node-a").bpffs.clone();
    let (dp, _writer_maps) = Datapath::load(&bpffs).context("loading the datapath")?;
    let mut maps = Maps::open(&bpffs)?;
    let netns = c.netns("node-a").to_string();
    let ifindex = c.ifindex("node-a", "eth0")?;
    let node = c.node("node-a").address;
    let node_b = c.node("node-b").address;
    let client = c.client().ip;

    // Known neighbours, so the FIB lookup of the redirect path succeeds
    // (and rewrites the MACs) as on a node that talks to them.
    let mac = |ns: &str| -> Result<String> {
        Ok(test_run::mac_in(ns, "eth0")?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"))
    };
    c.ip(
        "node-a",
        &format!(
            "neigh replace {node_b} lladdr {} dev eth0 nud permanent\n\
             neigh replace {client} lladdr {} dev eth0 nud permanent",
            mac(c.netns("node-b"))?,
            mac(c.netns("client"))?
        ),
    )?;

    let local_backend = SocketAddrV4::new(c.pod("pod-a1").ip, TARGET_PORT);
    let remote_backend = SocketAddrV4::new(c.pod("pod-b1").ip, TARGET_PORT);
    maps.add_node_addr(node, ifindex)?;
    maps.add_device(ifindex, node)?;
    maps.set_lb_mode(LB_MODE_SNAT)?;
    let table = MAGLEV_DEFAULT_SIZE as usize;
    for fe in [
        Frontend::nodeport(NP_LOCAL, PROTO_TCP, 1)
            .backend(
                ID_LOCAL,
                *local_backend.ip(),
                TARGET_PORT,
                BACKEND_FLAG_LOCAL,
            )
            .maglev_round_robin(table),
        Frontend::nodeport(NP_REMOTE, PROTO_TCP, 2)
            .backend(ID_REMOTE, *remote_backend.ip(), TARGET_PORT, 0)
            .maglev_round_robin(table),
    ] {
        maps.add_frontend(&fe)
            .with_context(|| format!("programming NodePort {}", fe.port))?;
    }

    let tc_empty = test_run::load_constant_program(PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC as i32)
        .context("loading an empty tc program")?;
    let prog = |name: &str| {
        dp.program_fd(name)
            .with_context(|| format!("program {name} not in the eBPF object"))
    };
    let mut rig = Rig {
        xdp_pass: prog("gp_xdp_pass")?,
        tc_empty: tc_empty.as_fd(),
        xdp: prog("gp_xdp")?,
        tc_in: prog("gp_tc_ingress")?,
        tc_eg: prog("gp_tc_egress")?,
        ifindex,
        client,
        node,
        local_backend,
        remote_backend,
        next_flow: 0,
    };
    println!(
        "\nper-packet cost (BPF_PROG_TEST_RUN, {} batches)...",
        opts.batches
    );
    let mut samples = vec![Samples::default(); Case::ALL.len()];
    test_run::in_netns(&netns, || -> Result<()> {
        for _ in 0..opts.batches {
            rig.batch(&mut maps, &opts, &mut samples)?;
        }
        Ok(())
    })??;
    maps.flush_state()?;

    let md = report(&samples, &opts, started.elapsed());
    println!("\n{md}");
    let dir = out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("packets.md");
    std::fs::write(&path, format!("# Per-packet cost\n\n{md}"))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}
