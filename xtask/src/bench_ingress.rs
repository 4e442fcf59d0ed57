//! `cargo xtask bench ingress`: gangplank-ingress against nginx and haproxy
//! (Debian packages) on the same routes, certificate and worker count.
//!
//! Everything runs in a network namespace of its own (`gp-bench-ingress-
//! <pid>`, loopback only): two `gp-http` upstreams, one proxy at a time on
//! 127.0.0.1:443, and `gp-load` driving it over TLS in three patterns
//! (HTTP/1.1 keep-alive, a new TLS connection per request, HTTP/2 streams).
//! The proxy is pinned to its own CPUs (`--workers` of them) and the load
//! generator and upstreams to the others, so the proxy never competes with
//! its load for a core. Each proxy/pattern is measured `--repeats` times,
//! proxies taking turns within each mode; the report gives medians and the range.
//!
//! Output: `target/bench/ingress.md` (also printed) and
//! `target/bench/ingress.json` with every run; the configurations and the
//! proxies' logs stay in `target/bench/ingress-work/`.
//!
//! Processes are started in their own process group, killed by pid (and
//! that group) when done, on error and on Ctrl-C; the namespace is deleted
//! then too. A namespace left by a run that was killed outright is removed
//! by the next run.

mod configs;

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangplank_sim::measure::{machine, median};
use serde_json::{json, Value};

use crate::bench_options::{IngressOptions, LoadMode, Proxy};
use configs::{Certificate, HOST, HTTPS_ADDR, HTTP_ADDR, METRICS_ADDR, UPSTREAMS};

const NETNS_PREFIX: &str = "gp-bench-ingress-";
/// Seconds of load before each measured window.
const WARMUP_S: f64 = 1.0;
/// The path measured: a Prefix rule that is not the catch-all.
const MEASURED_PATH: &str = "/api/v1/ping";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM end the benchmark through the normal error path, so
/// that the guards below stop the processes and delete the namespace.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps until `deadline`, failing early on Ctrl-C.
fn sleep_until(deadline: Instant) -> Result<()> {
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The benchmark's network namespace, deleted on drop.
struct Netns {
    name: String,
    file: File,
}

impl Netns {
    fn create() -> Result<Self> {
        sweep_stale_netns();
        let name = format!("{NETNS_PREFIX}{}", std::process::id());
        // A namespace of this pid's name is from an earlier process.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).context("opening the new network namespace");
            }
        };
        let ns = Netns { name, file };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        // Ephemeral ports above every port served here, and plenty of them
        // for the new-connection runs (TIME_WAIT reuse is on for loopback).
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-c",
            "echo 10300 65000 > /proc/sys/net/ipv4/ip_local_port_range",
        ])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("bench ingress: deleting netns {}: {e:#}", self.name);
        }
    }
}

/// Whether `pid` runs (a zombie that nobody reaped does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Deletes namespaces of earlier runs whose process is gone, ending the
/// processes that run left in them (they were started by that run).
fn sweep_stale_netns() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<libc::pid_t>() {
                    // SAFETY: plain syscall.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        eprintln!("bench ingress: removing netns {name} left by a run that was killed");
        let _ = ip(&["netns", "del", &name]);
    }
}

/// Which CPUs the proxy gets, and which the load generator and upstreams.
struct CpuPlan {
    proxy: Vec<usize>,
    load: Vec<usize>,
    pinned: bool,
}

impl CpuPlan {
    fn new(workers: usize) -> Result<Self> {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pointer and size of a live cpu_set_t.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: reading a bit of a valid set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect();
        if workers == 0 {
            bail!("--workers must be at least 1");
        }
        if cpus.len() > workers {
            Ok(CpuPlan {
                proxy: cpus[..workers].to_vec(),
                load: cpus[workers..].to_vec(),
                pinned: true,
            })
        } else {
            eprintln!(
                "bench ingress: {} CPUs for {workers} proxy workers: nothing pinned, the load generator competes with the proxy",
                cpus.len()
            );
            Ok(CpuPlan {
                proxy: cpus.clone(),
                load: cpus,
                pinned: false,
            })
        }
    }

    fn describe(&self) -> String {
        if self.pinned {
            format!(
                "proxy on CPU {:?}, load generator and upstreams on CPU {:?}",
                self.proxy, self.load
            )
        } else {
            "not pinned (too few CPUs)".into()
        }
    }
}

/// Makes `cmd` start inside `ns`, on `cpus`, in a process group of its
/// own (so that Ctrl-C reaches only xtask, which then stops it), and die
/// with xtask if xtask is killed.
fn place(cmd: &mut Command, ns: &Netns, cpus: &[usize]) {
    let ns_fd = ns.file.as_raw_fd();
    // SAFETY: zeroed cpu_set_t is valid; CPU_SET stays within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: see above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe syscalls between fork and exec, on an
    // fd and a set that outlive the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // xtask died before the prctl took effect.
                libc::_exit(1);
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                || libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A long-running process (proxy or upstream), stopped on drop: SIGTERM,
/// then SIGKILL to its process group (nginx's workers are in it).
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(
        name: &str,
        mut cmd: Command,
        ns: &Netns,
        cpus: &[usize],
        work: &Path,
    ) -> Result<Self> {
        let log = work.join(format!("{name}.log"));
        let stderr = File::create(&log)?;
        place(&mut cmd, ns, cpus);
        let child = cmd
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.into(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails, with its log, if it has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // SAFETY: the group this child leads (workers it forked).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system) of `pid` and its children, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    let visit = |stat: &str| {
        // Fields after the `(comm)`: state ppid ... utime(14) stime(15).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some((ppid, t))
        } else {
            None
        }
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        ticks += visit(&stat).map_or(0, |(_, t)| t);
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if p == pid {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some((ppid, t)) = visit(&stat) {
                    if ppid == pid {
                        ticks += t;
                    }
                }
            }
        }
    }
    ticks as f64 / hz
}

/// CPU time every CPU of the machine spent busy (not idle or waiting for
/// I/O), in seconds: with the proxy's and the load side's, it tells how
/// much else ran during a measurement.
fn machine_busy_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy as f64 / hz
}

/// Resident memory of `pid` and its children, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let rss = |p: u32| -> Option<(u32, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let get = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((get("PPid:")? as u32, get("VmRSS:")?))
    };
    let mut kib = rss(pid).map_or(0, |(_, r)| r);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if p != pid {
                    if let Some((ppid, r)) = rss(p) {
                        if ppid == pid {
                            kib += r;
                        }
                    }
                }
            }
        }
    }
    kib as f64 / 1024.0
}

fn which(cmd: &str) -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(cmd);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{cmd} is not installed (cargo xtask bench ingress installs it with apt-get)")
}

fn command_text(cmd: &Path, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

fn proxy_name(p: Proxy) -> &'static str {
    match p {
        Proxy::Gangplank => "gangplank-ingress",
        Proxy::Nginx => "nginx",
        Proxy::Haproxy => "haproxy",
    }
}

fn mode_name(m: LoadMode) -> &'static str {
    match m {
        LoadMode::Keepalive => "keepalive",
        LoadMode::Newconn => "newconn",
        LoadMode::H2 => "h2",
    }
}

fn mode_title(m: LoadMode) -> &'static str {
    match m {
        LoadMode::Keepalive => "HTTPS keep-alive (HTTP/1.1)",
        LoadMode::Newconn => "new TLS connection per request",
        LoadMode::H2 => "HTTP/2 over TLS",
    }
}

/// Everything a run needs.
struct Bench {
    opts: IngressOptions,
    ns: Netns,
    cpus: CpuPlan,
    work: PathBuf,
    cert: Certificate,
    gangplank: PathBuf,
    gp_http: PathBuf,
    gp_load: PathBuf,
    nginx: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    nginx_version: String,
}

/// One measured run.
struct Sample {
    proxy: Proxy,
    mode: LoadMode,
    repeat: usize,
    load: Value,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    errors: u64,
    /// Cores the proxy used over the measured window.
    proxy_cpu: f64,
    /// Cores the load generator and upstreams used.
    load_cpu: f64,
    /// Of which the load generator alone.
    generator_cpu: f64,
    /// Cores everything else on the machine used (noise).
    other_cpu: f64,
    proxy_rss_mib: f64,
}

impl Bench {
    fn start_upstreams(&self) -> Result<Vec<Daemon>> {
        let mut ups = Vec::new();
        for (i, (ip, port)) in UPSTREAMS.iter().enumerate() {
            let name = format!("up-{}", i + 1);
            let mut cmd = Command::new(&self.gp_http);
            cmd.arg("--listen")
                .arg(format!("{ip}:{port}"))
                .args(["--name", &name])
                .arg(format!("--workers={}", self.cpus.load.len()))
                .stdout(File::create(self.work.join(format!("{name}.out")))?);
            ups.push(Daemon::spawn(
                &name,
                cmd,
                &self.ns,
                &self.cpus.load,
                &self.work,
            )?);
        }
        for up in &mut ups {
            let out = self.work.join(format!("{}.out", up.name));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("listening on")
            {
                up.check_running()?;
                if Instant::now() > deadline {
                    bail!("{} did not print `listening on` within 10 s", up.name);
                }
                sleep_until(Instant::now() + Duration::from_millis(20))?;
            }
        }
        Ok(ups)
    }

    fn start_proxy(&self, proxy: Proxy) -> Result<Daemon> {
        let w = self.opts.workers;
        let cmd = match proxy {
            Proxy::Gangplank => {
                let mut cmd = Command::new(&self.gangplank);
                cmd.arg("--manifests")
                    .arg(self.work.join("manifests"))
                    .args(["--https-bind", HTTPS_ADDR, "--http-bind", HTTP_ADDR])
                    .args(["--metrics-addr", METRICS_ADDR])
                    .arg(format!("--workers={w}"))
                    // Like nginx's `access_log off` and haproxy without `log`.
                    .arg("--access-log=false")
                    .stdout(Stdio::null())
                    .env("RUST_LOG", "info");
                cmd
            }
            Proxy::Nginx => {
                let conf = self.work.join("nginx.conf");
                std::fs::write(
                    &conf,
                    configs::nginx(&self.work, &self.cert, w, &self.nginx_version),
                )?;
                for d in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    std::fs::create_dir_all(self.work.join("nginx-tmp").join(d))?;
                }
                let mut cmd = Command::new(self.nginx.as_ref().context("nginx")?);
                cmd.arg("-e")
                    .arg(self.work.join("nginx-error.log"))
                    .arg("-c")
                    .arg(&conf)
                    .args(["-g", "daemon off;"])
                    .stdout(Stdio::null());
                cmd
            }
            Proxy::Haproxy => {
                let conf = self.work.join("haproxy.cfg");
                std::fs::write(&conf, configs::haproxy(&self.cert, w))?;
                let mut cmd = Command::new(self.haproxy.as_ref().context("haproxy")?);
                cmd.arg("-f").arg(&conf).arg("-db").stdout(Stdio::null());
                cmd
            }
        };
        let mut d = Daemon::spawn(
            proxy_name(proxy),
            cmd,
            &self.ns,
            &self.cpus.proxy,
            &self.work,
        )?;
        self.wait_ready(&mut d)?;
        Ok(d)
    }

    /// Waits until every route answers 2xx through the proxy, over each
    /// protocol measured.
    fn wait_ready(&self, d: &mut Daemon) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        'retry: loop {
            d.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve every route within 30 s: {last}\nits log ({}):\n{}",
                    d.name,
                    d.log.display(),
                    d.log_tail()
                );
            }
            for (path, mode) in [
                ("/", LoadMode::Keepalive),
                ("/api", LoadMode::Keepalive),
                ("/static/app.js", LoadMode::Keepalive),
                (MEASURED_PATH, LoadMode::H2),
            ] {
                match self.load(path, mode, 1, 1, 0.0, 0.1) {
                    Ok(v) if v["errors"] == 0 && v["requests"].as_u64() > Some(0) => {}
                    Ok(v) => {
                        last = format!("{path} ({}): {v}", mode_name(mode));
                        sleep_until(Instant::now() + Duration::from_millis(200))?;
                        continue 'retry;
                    }
                    Err(e) => {
                        last = format!("{e:#}");
                        sleep_until(Instant::now() + Duration::from_millis(200))?;
                        continue 'retry;
                    }
                }
            }
            return Ok(());
        }
    }

    fn load_cmd(
        &self,
        path: &str,
        mode: LoadMode,
        concurrency: usize,
        streams: usize,
        warmup: f64,
        duration: f64,
    ) -> Command {
        let mut cmd = Command::new(&self.gp_load);
        cmd.arg(format!("--url=https://{HOST}{path}"))
            .arg(format!("--connect={HTTPS_ADDR}"))
            .arg(format!("--mode={}", mode_name(mode)))
            .arg(format!("--concurrency={concurrency}"))
            .arg(format!("--streams={streams}"))
            .arg(format!("--warmup={warmup}"))
            .arg(format!("--duration={duration}"))
            .arg(format!("--threads={}", self.cpus.load.len()))
            .arg("--ca")
            .arg(&self.cert.cert)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place(&mut cmd, &self.ns, &self.cpus.load);
        cmd
    }

    fn finish_load(child: Child, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut child = KillOnDrop::new(child);
        while child.get().try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("gp-load did not finish within {timeout:?}");
            }
            sleep_until(Instant::now() + Duration::from_millis(10))?;
        }
        let out = child.take().wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("gp-load failed ({}): {}", out.status, stderr.trim());
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let mut v: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("gp-load printed {line:?}"))?;
        v["stderr"] = Value::String(stderr.trim().to_string());
        Ok(v)
    }

    /// A short load run (readiness probes).
    fn load(
        &self,
        path: &str,
        mode: LoadMode,
        concurrency: usize,
        streams: usize,
        warmup: f64,
        duration: f64,
    ) -> Result<Value> {
        let child = self
            .load_cmd(path, mode, concurrency, streams, warmup, duration)
            .spawn()
            .context("starting gp-load")?;
        Self::finish_load(child, Duration::from_secs(30))
    }

    /// One measured run against the running proxy `d`.
    fn measure(
        &self,
        proxy: Proxy,
        d: &mut Daemon,
        upstreams: &[Daemon],
        mode: LoadMode,
        repeat: usize,
    ) -> Result<Sample> {
        let o = &self.opts;
        let (concurrency, streams) = match mode {
            LoadMode::H2 => (o.h2_connections, o.h2_streams),
            _ => (o.concurrency, 1),
        };
        let started = Instant::now();
        let child = self
            .load_cmd(
                MEASURED_PATH,
                mode,
                concurrency,
                streams,
                WARMUP_S,
                o.duration,
            )
            .spawn()
            .context("starting gp-load")?;
        let load_pid = child.id();
        let child = KillOnDrop::new(child);
        let upstream_cpu = || upstreams.iter().map(|u| cpu_seconds(u.pid())).sum::<f64>();
        sleep_until(started + Duration::from_secs_f64(WARMUP_S))?;
        let (t0, p0, g0, u0, m0) = (
            Instant::now(),
            cpu_seconds(d.pid()),
            cpu_seconds(load_pid),
            upstream_cpu(),
            machine_busy_seconds(),
        );
        sleep_until(started + Duration::from_secs_f64(WARMUP_S + o.duration))?;
        let (t1, p1, g1, u1, m1) = (
            Instant::now(),
            cpu_seconds(d.pid()),
            cpu_seconds(load_pid),
            upstream_cpu(),
            machine_busy_seconds(),
        );
        let (l0, l1) = (g0 + u0, g1 + u1);
        let proxy_rss_mib = rss_mib(d.pid());
        let v = Self::finish_load(child.take(), Duration::from_secs_f64(o.duration + 30.0))?;
        d.check_running()?;
        let secs = (t1 - t0).as_secs_f64();
        let num = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok(Sample {
            proxy,
            mode,
            repeat,
            rps: num("rps"),
            p50_us: num("p50_us"),
            p99_us: num("p99_us"),
            requests: v["requests"].as_u64().unwrap_or(0),
            errors: v["errors"].as_u64().unwrap_or(0),
            proxy_cpu: (p1 - p0) / secs,
            load_cpu: (l1 - l0) / secs,
            generator_cpu: (g1 - g0) / secs,
            other_cpu: ((m1 - m0) - (p1 - p0) - (l1 - l0)).max(0.0) / secs,
            proxy_rss_mib,
            load: v,
        })
    }
}

/// A child killed (and reaped) if dropped before it was taken.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("not taken yet")
    }

    fn take(mut self) -> Child {
        self.0.take().expect("not taken yet")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn gangplank_version() -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(crate::root_dir())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let rev = out(&["rev-parse", "--short", "HEAD"]);
    let dirty = !out(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!(
        "gangplank-ingress {} (commit {rev}{})",
        env!("CARGO_PKG_VERSION"),
        if dirty { ", uncommitted changes" } else { "" }
    )
}

fn first_line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The TLS versions the runs negotiated, e.g. "TLSv1_3".
fn negotiated(samples: &[Sample]) -> String {
    let mut versions: Vec<String> = samples
        .iter()
        .map(|s| {
            let v = s.load["tls_version"].as_str().unwrap_or("");
            if v.is_empty() {
                "unknown TLS version".to_string()
            } else {
                v.replace("TLSv1_", "TLS 1.")
            }
        })
        .collect();
    versions.sort();
    versions.dedup();
    versions.join(" and ")
}

/// The Markdown report.
fn report(
    opts: &IngressOptions,
    bench: &Bench,
    versions: &[String],
    proxies: &[Proxy],
    modes: &[LoadMode],
    samples: &[Sample],
) -> String {
    let m = machine();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Ingress benchmark: gangplank-ingress, nginx, haproxy\n"
    );
    let _ = writeln!(
        r,
        "Machine: {} CPUs ({}), Linux {}.  ",
        m["cpus"], m["cpu_model"], m["kernel"]
    );
    let _ = writeln!(r, "Versions: {}.\n", versions.join("; "));
    let _ = writeln!(
        r,
        "Set-up: one network namespace, loopback only; {w} worker{s} per proxy (nginx `worker_processes {w}`, haproxy `nbthread {w}`, gangplank-ingress `--workers {w}`); {cpus}. \
         Same routes (host {HOST}: `/` Prefix, `/api` Prefix, `/static/app.js` Exact), same certificate ({cert}), {tls} negotiated, \
         two `gp-http` upstreams reached over pooled HTTP/1.1 keep-alive connections, the same forwarded headers (`X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `X-Real-IP`). \
         No access log: nginx `access_log off`, haproxy without `log`, gangplank-ingress `--access-log=false`. \
         Load: `gp-load` on `{MEASURED_PATH}`, {warm} s warm-up then {d} s measured, {n} run{ns} per cell, proxies taking turns within each mode; \
         keepalive: {c} connections; newconn: {c} concurrent, each request a new TCP connection and full TLS handshake (no resumption), `Connection: close`; \
         h2: {h2c} connections × {h2s} streams. Errors: transport errors, timeouts and non-2xx answers.\n",
        w = opts.workers,
        s = if opts.workers == 1 { "" } else { "s" },
        cpus = bench.cpus.describe(),
        cert = bench.cert.description,
        tls = negotiated(samples),
        warm = WARMUP_S,
        d = opts.duration,
        n = opts.repeats,
        ns = if opts.repeats == 1 { "" } else { "s" },
        c = opts.concurrency,
        h2c = opts.h2_connections,
        h2s = opts.h2_streams,
    );
    let _ = writeln!(
        r,
        "Medians over the runs; req/s range min–max. Proxy CPU: cores the proxy (all its processes) used in the measured window; CPU/req: that CPU time per request. \
         vs nginx: req/s ratio (higher is better) and p99 ratio (lower is better).\n"
    );
    for &mode in modes {
        let _ = writeln!(r, "## {}\n", mode_title(mode));
        let _ = writeln!(
            r,
            "| proxy | req/s | min–max | p50 ms | p99 ms | errors | proxy CPU | CPU µs/req | req/s vs nginx | p99 vs nginx |"
        );
        let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let cell = |p: Proxy| {
            let s: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.proxy == p && s.mode == mode)
                .collect();
            let rps: Vec<f64> = s.iter().map(|s| s.rps).collect();
            let us_per_req: Vec<f64> = s
                .iter()
                .map(|s| s.proxy_cpu * 1e6 / s.rps.max(1.0))
                .collect();
            (
                s.len(),
                median(&rps),
                rps.iter().copied().fold(f64::INFINITY, f64::min),
                rps.iter().copied().fold(0.0, f64::max),
                median(&s.iter().map(|s| s.p50_us).collect::<Vec<_>>()),
                median(&s.iter().map(|s| s.p99_us).collect::<Vec<_>>()),
                s.iter().map(|s| s.errors).sum::<u64>(),
                median(&s.iter().map(|s| s.proxy_cpu).collect::<Vec<_>>()),
                median(&us_per_req),
            )
        };
        let nginx = proxies.contains(&Proxy::Nginx).then(|| cell(Proxy::Nginx));
        for &p in proxies {
            let (n, rps, lo, hi, p50, p99, errors, cpu, us) = cell(p);
            if n == 0 {
                continue;
            }
            let (vs_rps, vs_p99) = match nginx {
                Some((_, nrps, _, _, _, np99, ..)) if nrps > 0.0 && np99 > 0.0 => {
                    (format!("{:.2}×", rps / nrps), format!("{:.2}×", p99 / np99))
                }
                _ => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                r,
                "| {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {} | {:.0}% | {:.1} | {vs_rps} | {vs_p99} |",
                proxy_name(p),
                rps,
                lo,
                hi,
                p50 / 1e3,
                p99 / 1e3,
                errors,
                cpu * 100.0,
                us,
            );
        }
        let _ = writeln!(r);
    }
    let rss: Vec<String> = proxies
        .iter()
        .filter_map(|&p| {
            let v: Vec<f64> = samples
                .iter()
                .filter(|s| s.proxy == p)
                .map(|s| s.proxy_rss_mib)
                .collect();
            (!v.is_empty()).then(|| format!("{} {:.1} MiB", proxy_name(p), median(&v)))
        })
        .collect();
    let _ = writeln!(
        r,
        "Memory (resident, all the proxy's processes, at the end of each run; median): {}.\n",
        rss.join(", ")
    );
    let load_cores = bench.cpus.load.len() as f64;
    let busiest = samples.iter().map(|s| s.load_cpu).fold(0.0, f64::max);
    if bench.cpus.pinned && busiest > 0.9 * load_cores {
        let _ = writeln!(
            r,
            "Note: the load generator and upstreams used up to {:.0}% of their {} CPU{}: where a proxy's CPU is well below {}%, the load side, not the proxy, was the limit.\n",
            busiest * 100.0,
            load_cores,
            if load_cores == 1.0 { "" } else { "s" },
            opts.workers * 100
        );
    }
    let noisiest = samples.iter().map(|s| s.other_cpu).fold(0.0, f64::max);
    if noisiest > 0.1 {
        let _ = writeln!(
            r,
            "Note: other processes used up to {:.0}% of a CPU during a measurement (a build running alongside?): numbers from a quiet machine are more reliable.\n",
            noisiest * 100.0
        );
    }
    let errors: Vec<String> = samples
        .iter()
        .filter(|s| s.errors > 0)
        .map(|s| {
            format!(
                "- {} {} run {}: {} ({})",
                proxy_name(s.proxy),
                mode_name(s.mode),
                s.repeat + 1,
                s.load["error_kinds"],
                s.load["stderr"].as_str().unwrap_or("").replace('\n', "; ")
            )
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(r, "Errors:\n\n{}\n", errors.join("\n"));
    }
    let _ = writeln!(
        r,
        "Reproduce: `cargo xtask bench ingress {}` (as root).",
        opts.to_args().join(" ")
    );
    r
}

/// What was asked for on the command line (`all` when nothing was), in
/// order, each once.
fn selected<T: Copy + PartialEq>(chosen: &[T], all: &[T]) -> Vec<T> {
    let from = if chosen.is_empty() { all } else { chosen };
    let mut out = Vec::new();
    for &item in from {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Runs the Ingress benchmark and writes its report.
pub fn run(opts: &IngressOptions) -> Result<()> {
    gangplank_tests::check_privileges()?;
    catch_signals();
    let proxies = selected(
        &opts.proxies,
        &[Proxy::Gangplank, Proxy::Nginx, Proxy::Haproxy],
    );
    let modes = selected(
        &opts.modes,
        &[LoadMode::Keepalive, LoadMode::Newconn, LoadMode::H2],
    );
    if opts.repeats == 0 || opts.duration <= 0.0 {
        bail!("--repeats and --duration must be positive");
    }

    let out_dir = crate::root_dir().join("target/bench");
    let work = out_dir.join("ingress-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let want = |p: Proxy| proxies.contains(&p);
    let nginx = want(Proxy::Nginx).then(|| which("nginx")).transpose()?;
    let haproxy = want(Proxy::Haproxy).then(|| which("haproxy")).transpose()?;
    let nginx_version = nginx
        .as_ref()
        .map(|n| command_text(n, &["-V"]))
        .unwrap_or_default();
    let mut versions = vec![gangplank_version()];
    if nginx.is_some() {
        versions.push(format!(
            "{} ({})",
            first_line_with(&nginx_version, "nginx version").trim_start_matches("nginx version: "),
            first_line_with(&nginx_version, "built with OpenSSL")
        ));
    }
    if let Some(h) = &haproxy {
        let vv = command_text(h, &["-vv"]);
        versions.push(format!(
            "{} ({})",
            first_line_with(&vv, "HAProxy version")
                .split(" - ")
                .next()
                .unwrap_or(""),
            first_line_with(&vv, "Running on OpenSSL version")
        ));
    }

    let cert = configs::certificate(&work)?;
    configs::manifests(&work.join("manifests"), &cert)?;
    let bench = Bench {
        opts: opts.clone(),
        ns: Netns::create()?,
        cpus: CpuPlan::new(opts.workers)?,
        gangplank: gangplank_tests::target_binary("gangplank-ingress")?,
        gp_http: gangplank_tests::target_binary("gp-http")?,
        gp_load: gangplank_tests::target_binary("gp-load")?,
        nginx,
        haproxy,
        nginx_version,
        work,
        cert,
    };
    println!(
        "bench ingress: {} in netns {}; {}",
        proxies
            .iter()
            .map(|&p| proxy_name(p))
            .collect::<Vec<_>>()
            .join(", "),
        bench.ns.name,
        bench.cpus.describe()
    );
    let upstreams = bench.start_upstreams()?;
    let mut samples = Vec::new();
    for repeat in 0..opts.repeats {
        // The proxies take turns within each mode, so that the runs being
        // compared are seconds apart: this VM's speed drifts by a quarter
        // over minutes. Rotating the order spreads what drift is left.
        let mut order = proxies.clone();
        order.rotate_left(repeat % proxies.len());
        for &mode in &modes {
            for &proxy in &order {
                let mut d = bench.start_proxy(proxy)?;
                let s = bench.measure(proxy, &mut d, &upstreams, mode, repeat)?;
                println!(
                    "  run {}/{} {:<17} {:<9} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {:<4} proxy CPU {:>3.0}%  load CPU {:>3.0}%  other CPU {:>3.0}%",
                    repeat + 1,
                    opts.repeats,
                    proxy_name(proxy),
                    mode_name(mode),
                    s.rps,
                    s.p50_us / 1e3,
                    s.p99_us / 1e3,
                    s.errors,
                    s.proxy_cpu * 100.0,
                    s.load_cpu * 100.0,
                    s.other_cpu * 100.0
                );
                samples.push(s);
                d.stop();
            }
        }
    }
    drop(upstreams);

    let md = report(opts, &bench, &versions, &proxies, &modes, &samples);
    let runs: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({
                "proxy": proxy_name(s.proxy),
                "mode": mode_name(s.mode),
                "repeat": s.repeat,
                "rps": s.rps,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
                "requests": s.requests,
                "errors": s.errors,
                "proxy_cpu_cores": s.proxy_cpu,
                "load_side_cpu_cores": s.load_cpu,
                "load_generator_cpu_cores": s.generator_cpu,
                "other_cpu_cores": s.other_cpu,
                "proxy_rss_mib": s.proxy_rss_mib,
                "load": s.load,
            })
        })
        .collect();
    let raw = json!({
        "machine": machine(),
        "versions": versions,
        "workers": opts.workers,
        "cpus": bench.cpus.describe(),
        "duration_s": opts.duration,
        "warmup_s": WARMUP_S,
        "repeats": opts.repeats,
        "path": MEASURED_PATH,
        "concurrency": opts.concurrency,
        "h2_connections": opts.h2_connections,
        "h2_streams": opts.h2_streams,
        "certificate": bench.cert.description,
        "runs": runs,
    });
    let md_path = out_dir.join("ingress.md");
    let json_path = out_dir.join("ingress.json");
    std::fs::write(&md_path, &md)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&raw)? + "\n")?;
    println!("\n{md}");
    println!(
        "written: {} and {} (configurations and logs in {})",
        md_path.display(),
        json_path.display(),
        bench.work.display()
    );
    Ok(())
}
