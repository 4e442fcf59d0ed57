//! New-connection load for the Services benchmark: `gangplank bench-conn`
//! (hidden), which the benchmark runs inside the simulated pods.
//!
//! `--concurrency` threads each open a TCP connection, send one short
//! HTTP/1.1 request with `Connection: close`, read the answer to its end
//! and start again, walking round the `--target` list (each thread from
//! its own offset), for `--duration` seconds after a `--warmup`. This is
//! what a Service's translation costs most on: every connection is a new
//! flow, looked up from the start (socket LB, iptables chains, nftables
//! maps). Once the answer is read, the connection is reset (`SO_LINGER`
//! 0), so that no side keeps it in TIME_WAIT: at thousands of connections
//! a second, reused ports would otherwise meet TIME_WAIT sockets on the
//! servers, whose SYNs are then dropped and retried a second later,
//! whatever the datapath.
//!
//! `--serve ADDR` is the matching server: it answers every connection
//! with a fixed 200 and closes it.
//!
//! A connection's latency runs from `connect()` to the answer's last byte.
//! A refused or timed-out connection, a short or non-2xx answer counts as
//! an error. The result is one JSON object on stdout ([`Report`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// `gangplank bench-conn`: a new TCP connection and a short request per
/// iteration, round the targets.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnArgs {
    /// Address to connect to (repeatable, or comma-separated).
    #[arg(
        long = "target",
        value_delimiter = ',',
        required_unless_present = "serve"
    )]
    targets: Vec<SocketAddr>,
    /// Instead of the load: serve on this address, answering every
    /// connection's first request with a fixed 200 and closing it (a
    /// server that costs little, so that what is measured is the path).
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of load before measuring (not counted).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Stop after this many connections in all (measured ones; 0: no
    /// limit), even before `--duration` is up.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Instead of the load: `connect()` one UDP socket to the first target
    /// this many times and print the time per call. Every call runs the
    /// socket hooks (the socket load balancer's translation) and a route
    /// lookup, and no packet is sent.
    #[arg(long)]
    udp_connects: Option<u64>,
    /// Bound on one connection (connect, request and answer), in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// The result of one load run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Targets walked round.
    pub targets: usize,
    /// Concurrent connections.
    pub concurrency: usize,
    /// The measured window, in seconds.
    pub duration_s: f64,
    /// Connections completed (answer read) in the measured window.
    pub connections: u64,
    /// Failed connections in the window.
    pub errors: u64,
    /// `connections / duration_s` (the measured window: `--duration`, or
    /// less when `--count` ended it).
    pub rate: f64,
    /// Median latency of completed connections, in microseconds.
    pub p50_us: f64,
    /// 90th percentile, in microseconds.
    pub p90_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
    /// The slowest, in microseconds.
    pub max_us: f64,
    /// Errors by kind ("connect: Connection refused", "status 503", ...).
    pub error_kinds: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// One connection: the error kind on failure.
fn one(target: &SocketAddr, timeout: Duration, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(target, timeout)
        .map_err(|e| format!("connect: {}", kind(&e)))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("socket: {}", kind(&e)))?;
    s.write_all(REQUEST)
        .map_err(|e| format!("send: {}", kind(&e)))?;
    buf.clear();
    s.read_to_end(buf)
        .map_err(|e| format!("recv: {}", kind(&e)))?;
    reset_on_close(&s);
    // "HTTP/1.1 200": the status must be 2xx.
    match buf.get(9) {
        Some(b'2') => Ok(()),
        Some(_) => Err(format!(
            "status {}",
            String::from_utf8_lossy(buf.get(9..12).unwrap_or_default())
        )),
        None => Err("short answer".into()),
    }
}

/// `SO_LINGER` {on, 0}: `close` sends RST instead of FIN.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a pointer to a live linger of the given size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        _ => e.to_string(),
    }
}

/// When to stop: the end of the window, or `count` connections started.
struct Stop {
    end: Instant,
    count: u64,
    started: AtomicU64,
}

impl Stop {
    /// Whether another measured connection may start.
    fn take(&self) -> bool {
        self.count == 0 || self.started.fetch_add(1, Ordering::Relaxed) < self.count
    }
}

fn worker(
    targets: &[SocketAddr],
    offset: usize,
    start: Instant,
    stop: &Stop,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(512);
    let mut i = offset;
    loop {
        let t0 = Instant::now();
        if t0 >= stop.end || (t0 >= start && !stop.take()) {
            return tally;
        }
        let target = &targets[i % targets.len()];
        let result = one(target, timeout, &mut buf).map_err(|kind| {
            // Name the target when there are several: a datapath may fail
            // some frontends and not others.
            if targets.len() > 1 {
                format!("{target}: {kind}")
            } else {
                kind
            }
        });
        i += 1;
        // Only connections started in the measured window count.
        if t0 < start {
            continue;
        }
        match result {
            Ok(()) => tally.latencies_ns.push(t0.elapsed().as_nanos() as u64),
            Err(kind) => *tally.errors.entry(kind).or_default() += 1,
        }
    }
}

/// The `q`-quantile of sorted nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    (sorted[rank - 1] as f64 / 100.0).round() / 10.0
}

fn load(args: &ConnArgs) -> Result<Report> {
    if args.targets.is_empty() {
        bail!("no --target");
    }
    // (Written so that NaN fails too; the bounds keep `Instant + Duration`
    // far from overflowing.)
    if args.concurrency == 0
        || !(args.duration > 0.0 && args.duration <= 86_400.0)
        || !(args.warmup >= 0.0 && args.warmup <= 86_400.0)
    {
        bail!("--concurrency must be positive, --duration more than 0 and --warmup at least 0 (at most a day each)");
    }
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let stop = Stop {
        end: start + Duration::from_secs_f64(args.duration),
        count: args.count,
        started: AtomicU64::new(0),
    };
    let stride = args.targets.len().div_ceil(args.concurrency).max(1);
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|t| {
                let (targets, stop) = (&args.targets, &stop);
                scope.spawn(move || worker(targets, t * stride, start, stop, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    // With `--count`, the window may close early.
    let measured = Instant::now()
        .min(stop.end)
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-3);
    let mut latencies: Vec<u64> = Vec::new();
    let mut error_kinds = BTreeMap::new();
    for t in tallies {
        latencies.extend(t.latencies_ns);
        for (k, n) in t.errors {
            *error_kinds.entry(k).or_default() += n;
        }
    }
    latencies.sort_unstable();
    let connections = latencies.len() as u64;
    Ok(Report {
        targets: args.targets.len(),
        concurrency: args.concurrency,
        duration_s: (measured * 1e3).round() / 1e3,
        connections,
        errors: error_kinds.values().sum(),
        rate: (connections as f64 / measured).round(),
        p50_us: quantile_us(&latencies, 0.50),
        p90_us: quantile_us(&latencies, 0.90),
        p99_us: quantile_us(&latencies, 0.99),
        max_us: quantile_us(&latencies, 1.0),
        error_kinds,
    })
}

/// `--udp-connects`: the result line.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectCost {
    /// Calls timed.
    pub connects: u64,
    /// Nanoseconds per call.
    pub ns_per_connect: f64,
    /// The socket's peer as `getpeername` shows it (gangplank's socket LB
    /// shows the cluster IP, not the endpoint it connected to).
    pub peer: String,
}

fn connect_cost(target: SocketAddr, n: u64) -> Result<ConnectCost> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // Warm caches (route, map entries) before timing.
    for _ in 0..n.min(1000) {
        sock.connect(target)?;
    }
    let started = Instant::now();
    for _ in 0..n {
        sock.connect(target)?;
    }
    let elapsed = started.elapsed();
    Ok(ConnectCost {
        connects: n,
        ns_per_connect: (elapsed.as_nanos() as f64 / n.max(1) as f64 * 10.0).round() / 10.0,
        peer: sock.peer_addr()?.to_string(),
    })
}

/// `--serve`: one accept loop per CPU on a shared listener; each
/// connection gets the fixed answer once its request headers are in.
/// Runs until the process ends.
fn serve(addr: SocketAddr) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    serve_on(&listener);
    Ok(())
}

fn serve_on(listener: &std::net::TcpListener) {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let Ok((mut s, _)) = listener.accept() else {
                    // Out of file descriptors or the like: do not spin.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let mut buf = [0u8; 1024];
                let mut seen = 0;
                // Read until the end of the request headers (or EOF).
                while let Ok(n) = s.read(&mut buf[seen..]) {
                    if n == 0 {
                        break;
                    }
                    seen += n;
                    if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") || seen == buf.len() {
                        let _ = s.write_all(ANSWER);
                        break;
                    }
                }
            });
        }
    });
}

/// Runs `gangplank bench-conn`: serves, times `connect()`, or runs the
/// load and prints its [`Report`] as one JSON line.
pub fn run(args: &ConnArgs) -> Result<()> {
    if let Some(addr) = args.serve {
        return serve(addr);
    }
    let first = *args.targets.first().context("no --target")?;
    if let Some(n) = args.udp_connects {
        let cost = connect_cost(first, n).with_context(|| format!("UDP connect() to {first}"))?;
        println!("{}", serde_json::to_string(&cost)?);
        return Ok(());
    }
    println!("{}", serde_json::to_string(&load(args)?)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(targets: Vec<SocketAddr>) -> ConnArgs {
        ConnArgs {
            targets,
            serve: None,
            concurrency: 2,
            duration: 10.0,
            warmup: 0.0,
            count: 40,
            udp_connects: None,
            timeout_ms: 2000,
        }
    }

    /// The load against its own server: every connection answered, and
    /// `--count` ends the run.
    #[test]
    fn load_against_the_server_counts_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The server runs for the rest of the test process.
        std::thread::spawn(move || serve_on(&listener));
        let report = load(&args(vec![addr])).expect("load");
        assert_eq!(report.errors, 0, "{:?}", report.error_kinds);
        assert!(
            (40..=42).contains(&report.connections),
            "{}",
            report.connections
        );
        assert!(report.p50_us > 0.0 && report.p50_us <= report.p99_us);
    }

    /// Refused connections are errors named by their target.
    #[test]
    fn refused_connections_are_errors_by_target() {
        // A port just freed: nothing listens there.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let good = listener.local_addr().expect("addr");
        std::thread::spawn(move || serve_on(&listener));
        let report = load(&args(vec![good, free])).expect("load");
        assert!(report.connections > 0);
        let kind = format!("{free}: connect: ");
        let refused: u64 = report
            .error_kinds
            .iter()
            .filter(|(k, _)| k.starts_with(&kind))
            .map(|(_, n)| n)
            .sum();
        assert!(refused > 0, "{:?}", report.error_kinds);
        assert_eq!(refused, report.errors, "{:?}", report.error_kinds);
    }

    #[test]
    fn connect_cost_is_timed() {
        let cost = connect_cost("127.0.0.1:9".parse().expect("addr"), 100).expect("connect");
        assert_eq!(cost.connects, 100);
        assert!(cost.ns_per_connect > 0.0);
        assert_eq!(cost.peer, "127.0.0.1:9");
    }
}
