//! Tests of the simulated cluster itself (no BPF involved): connectivity,
//! placement of processes, isolation, and cleanup.
//!
//! Need root: `cargo test -p gangplank-tests -- --test-threads=4`.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use gangplank_tests::{probe_cmd, sweep_stale, target_binary, Cluster, ProbeResult};

const NODES: &[(&str, &[&str])] = &[("node-a", &["pod-a1", "pod-a2"]), ("node-b", &["pod-b1"])];

fn cluster(test: &str) -> Cluster {
    let start = Instant::now();
    let c = Cluster::new(test, NODES).expect("creating the cluster");
    eprintln!(
        "cluster {} for {test} built in {:?}",
        c.id(),
        start.elapsed()
    );
    c
}

fn sock(ip: Ipv4Addr, port: u16) -> String {
    SocketAddr::from((ip, port)).to_string()
}

fn client_ip(r: &ProbeResult) -> Ipv4Addr {
    match r
        .client_addr()
        .unwrap_or_else(|| panic!("no client= in {r:?}"))
    {
        SocketAddr::V4(a) => *a.ip(),
        other => panic!("unexpected v6 client {other}"),
    }
}

fn assert_all_ok(results: &[ProbeResult], expected: usize) {
    assert_eq!(results.len(), expected, "results: {results:#?}");
    for r in results {
        assert!(r.ok, "attempt failed: {r:?}");
    }
}

/// (start time) of a pid, None if it doesn't exist.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn netns_names_with(prefix: &str) -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("reading mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// What a cluster leaves on the machine, to check it is all gone after drop.
struct Footprint {
    id: String,
    cgroup: PathBuf,
    bpffs: PathBuf,
    tmp: PathBuf,
    /// (pid, start time)
    pids: Vec<(u32, u64)>,
}

impl Footprint {
    fn of(c: &Cluster, pids: &[u32]) -> Footprint {
        let f = Footprint {
            id: c.id().to_string(),
            cgroup: c.cgroup().to_path_buf(),
            bpffs: c.bpffs().to_path_buf(),
            tmp: c
                .bpffs()
                .parent()
                .expect("bpffs has a parent")
                .to_path_buf(),
            pids: pids
                .iter()
                .map(|&p| (p, start_time(p).expect("process is running")))
                .collect(),
        };
        assert!(!netns_names_with(&format!("{}-", f.id)).is_empty());
        assert!(f.cgroup.is_dir());
        assert!(mount_points().contains(&f.bpffs), "bpffs not mounted");
        f
    }

    fn assert_gone(&self) {
        let left = netns_names_with(&format!("{}-", self.id));
        assert!(left.is_empty(), "netns left behind: {left:?}");
        assert!(
            !self.cgroup.exists(),
            "cgroup left behind: {}",
            self.cgroup.display()
        );
        let mounts: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&self.tmp))
            .collect();
        assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
        assert!(
            !self.tmp.exists(),
            "temp dir left behind: {}",
            self.tmp.display()
        );
        for &(pid, start) in &self.pids {
            // Same pid with another start time would be an unrelated process.
            assert_ne!(start_time(pid), Some(start), "process {pid} still running");
        }
    }
}

#[test]
fn tcp_and_udp_between_pods_on_different_nodes() {
    let c = cluster("cross-node");
    let b1 = c.pod("pod-b1").ip;
    let a1 = c.pod("pod-a1").ip;
    let _server = c.serve("pod-b1", &[8080], &[5353]).expect("serve");

    let tcp = c
        .probe("pod-a1", ["tcp", &sock(b1, 8080), "--count", "3"])
        .expect("tcp probe");
    assert_all_ok(&tcp, 3);
    for r in &tcp {
        assert_eq!(r.pod(), Some("pod-b1"));
        assert_eq!(
            client_ip(r),
            a1,
            "server must see the real pod address: {r:?}"
        );
        assert_eq!(r.peer.as_deref(), Some(sock(b1, 8080).as_str()));
        assert_eq!(r.local.as_deref(), r.client(), "no NAT between pods: {r:?}");
    }

    let udp = c
        .probe("pod-a1", ["udp", &sock(b1, 5353), "--count", "2"])
        .expect("udp probe");
    assert_all_ok(&udp, 2);
    for r in &udp {
        assert_eq!(r.pod(), Some("pod-b1"));
        assert_eq!(client_ip(r), a1);
        assert_eq!(r.from.as_deref(), Some(sock(b1, 5353).as_str()));
    }

    let connected = c
        .probe("pod-a1", ["udp", &sock(b1, 5353), "--connected"])
        .expect("connected udp probe");
    assert_all_ok(&connected, 1);
    assert_eq!(connected[0].peer.as_deref(), Some(sock(b1, 5353).as_str()));
    assert_eq!(client_ip(&connected[0]), a1);

    // Nothing listens on 8081 / udp 5354.
    let refused = c.probe("pod-a1", ["tcp", &sock(b1, 8081)]).expect("probe");
    assert!(!refused[0].ok);
    assert_eq!(refused[0].errno, Some(libc::ECONNREFUSED), "{refused:?}");
    let refused = c
        .probe(
            "pod-a1",
            ["udp", &sock(b1, 5354), "--connected", "--timeout-ms", "500"],
        )
        .expect("probe");
    assert_eq!(refused[0].errno, Some(libc::ECONNREFUSED), "{refused:?}");
    let silent = c
        .probe("pod-a1", ["udp", &sock(b1, 5354), "--timeout-ms", "300"])
        .expect("probe");
    assert_eq!(silent[0].error.as_deref(), Some("timeout"), "{silent:?}");
}

#[test]
fn same_node_nodes_and_client() {
    let c = cluster("paths");
    let a1 = c.pod("pod-a1").ip;
    let _server = c.serve("pod-a1", &[80], &[]).expect("serve");

    // Same node, through cbr0.
    let r = c.probe("pod-a2", ["tcp", &sock(a1, 80)]).expect("probe");
    assert_all_ok(&r, 1);
    assert_eq!(client_ip(&r[0]), c.pod("pod-a2").ip);

    // From the other node (routed over the lan; source is the node address).
    let r = c.probe("node-b", ["tcp", &sock(a1, 80)]).expect("probe");
    assert_all_ok(&r, 1);
    assert_eq!(client_ip(&r[0]), c.node("node-b").address);

    // The client has no route to pod CIDRs...
    let r = c
        .probe("client", ["tcp", &sock(a1, 80), "--timeout-ms", "500"])
        .expect("probe");
    assert!(!r[0].ok);
    assert_eq!(r[0].errno, Some(libc::ENETUNREACH), "{r:?}");

    // ...but reaches nodes on the lan.
    let node_b = c.node("node-b").address;
    let _node_server = c.serve("node-b", &[9090], &[9091]).expect("serve on node");
    let r = c
        .probe("client", ["tcp", &sock(node_b, 9090)])
        .expect("probe");
    assert_all_ok(&r, 1);
    assert_eq!(r[0].pod(), Some("node-b"));
    assert_eq!(client_ip(&r[0]), c.client().ip);
    let r = c
        .probe("client", ["udp", &sock(node_b, 9091)])
        .expect("probe");
    assert_all_ok(&r, 1);

    // Pods reach nodes too (and the node sees the pod address).
    let r = c
        .probe("pod-a1", ["tcp", &sock(node_b, 9090)])
        .expect("probe");
    assert_all_ok(&r, 1);
    assert_eq!(client_ip(&r[0]), a1);
}

#[test]
fn hold_keeps_one_connection() {
    let c = cluster("hold");
    let b1 = c.pod("pod-b1").ip;
    let _server = c.serve("pod-b1", &[7000], &[]).expect("serve");
    let mut cmd = probe_cmd().expect("gp-probe built");
    cmd.args(["hold", &sock(b1, 7000)]);
    let mut hold = c.spawn_in_pod("pod-a2", cmd).expect("spawn hold");
    let first = hold
        .wait_for_line(|l| l.contains("\"ok\""), Duration::from_secs(5))
        .expect("connected");
    let first: ProbeResult = serde_json::from_str(&first).expect("json");
    assert!(first.ok, "{first:?}");
    let mut client_port = None;
    for msg in ["one", "two words", "three"] {
        hold.send_line(msg).expect("send");
        let line = hold
            .wait_for_line(|l| l.contains("\"reply\""), Duration::from_secs(5))
            .expect("reply");
        let r: ProbeResult = serde_json::from_str(&line).expect("json");
        assert!(r.ok, "{r:?}");
        assert_eq!(r.field("line"), Some(msg));
        assert_eq!(r.pod(), Some("pod-b1"));
        let port = r.client_addr().expect("client addr").port();
        // All lines travel over the same connection.
        assert_eq!(*client_port.get_or_insert(port), port);
    }
    hold.close_stdin();
    let status = hold
        .wait_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("exits on stdin EOF");
    assert!(status.success(), "{status:?}\n{}", hold.output_summary());
    assert_eq!(hold.stdout_lines().len(), 4);
}

#[test]
fn processes_are_placed_in_netns_and_cgroup() {
    let c = cluster("placement");
    let ns_ino = |pid: u32| {
        fs::metadata(format!("/proc/{pid}/ns/net"))
            .expect("process ns")
            .ino()
    };
    let netns_ino = |name: &str| {
        fs::metadata(Path::new("/run/netns").join(name))
            .expect("netns")
            .ino()
    };
    let cgroup_of = |pid: u32| {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("process cgroup");
        text.lines()
            .find_map(|l| l.strip_prefix("0::").map(PathBuf::from))
            .expect("cgroup2 line")
    };
    let procs_of = |cg: &Path| fs::read_to_string(cg.join("cgroup.procs")).expect("cgroup.procs");
    let sleep = || {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        cmd
    };

    let pod = c.pod("pod-a2");
    let p = c.spawn_in_pod("pod-a2", sleep()).expect("spawn in pod");
    assert_eq!(ns_ino(p.pid()), netns_ino(&pod.netns));
    assert!(pod
        .cgroup
        .ends_with(cgroup_of(p.pid()).strip_prefix("/").expect("absolute")));
    assert!(procs_of(&pod.cgroup)
        .lines()
        .any(|l| l == p.pid().to_string()));

    let node = c.node("node-b");
    let n = c.spawn_in_node("node-b", sleep()).expect("spawn in node");
    assert_eq!(ns_ino(n.pid()), netns_ino(&node.netns));
    assert!(node
        .cgroup
        .ends_with(cgroup_of(n.pid()).strip_prefix("/").expect("absolute")));
    assert!(procs_of(&node.cgroup)
        .lines()
        .any(|l| l == n.pid().to_string()));

    // The agent is in the node's netns but outside the cluster's cgroups.
    let agent = c
        .spawn_agent_process("node-b", sleep())
        .expect("spawn agent");
    assert_eq!(ns_ino(agent.pid()), netns_ino(&node.netns));
    assert_eq!(cgroup_of(agent.pid()), cgroup_of(std::process::id()));

    let cl = c.spawn_in_client(sleep()).expect("spawn in client");
    assert_eq!(ns_ino(cl.pid()), netns_ino(&c.client().netns));
    assert_ne!(ns_ino(cl.pid()), ns_ino(std::process::id()));

    // run_* captures output and reports the exit code.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "cat /proc/self/cgroup; echo oops >&2; exit 3"]);
    let out = c
        .run_in_pod("pod-b1", cmd, Duration::from_secs(5))
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/node-b/pod-b1"));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // Node bpffs dirs exist inside the cluster's bpffs.
    for n in c.nodes() {
        assert!(n.bpffs.is_dir() && n.bpffs.starts_with(c.bpffs()));
    }
    assert!(c.manifests_dir().is_dir());
}

#[test]
fn run_timeout_kills_and_reports() {
    let c = cluster("timeout");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo started-and-waiting >&2; exec sleep 30"]);
    let start = Instant::now();
    let err = c
        .run_in_node("node-a", cmd, Duration::from_millis(300))
        .expect_err("must time out");
    assert!(start.elapsed() < Duration::from_secs(5));
    let msg = format!("{err:#}");
    assert!(msg.contains("timed out") && msg.contains("\"sh\""), "{msg}");
    assert!(msg.contains("started-and-waiting"), "stderr missing: {msg}");
}

#[test]
fn proc_terminate_and_wait_for_line_errors() {
    let c = cluster("proc");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hello; exec sleep 30"]);
    let mut p = c.spawn_in_pod("pod-a1", cmd).expect("spawn");
    assert_eq!(
        p.wait_for_line(|l| l == "hello", Duration::from_secs(5))
            .expect("hello"),
        "hello"
    );
    let err = p
        .wait_for_line(|l| l == "never", Duration::from_millis(100))
        .expect_err("times out");
    assert!(
        format!("{err:#}").contains("no matching stdout line"),
        "{err:#}"
    );
    let status = p.terminate(Duration::from_secs(5)).expect("terminate");
    assert!(!status.success());

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo bye >&2; exit 4"]);
    let mut p = c.spawn_in_pod("pod-a1", cmd).expect("spawn");
    let err = p
        .wait_for_line(|l| l == "never", Duration::from_secs(5))
        .expect_err("EOF");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exited with 4") && msg.contains("bye"),
        "{msg}"
    );
}

#[test]
fn drop_removes_everything() {
    let c = cluster("drop");
    let kept = c.serve("pod-a1", &[80], &[]).expect("serve");
    let leaked = c.serve("pod-b1", &[80], &[53]).expect("serve");
    let agent = c
        .spawn_agent_process("node-a", {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            cmd
        })
        .expect("agent");
    let footprint = Footprint::of(&c, &[kept.pid(), leaked.pid(), agent.pid()]);
    // A leaked handle must not keep the process alive.
    std::mem::forget(leaked);
    drop(c);
    footprint.assert_gone();
    // Handles outliving the cluster are harmless (their process is reaped).
    drop(kept);
    drop(agent);
}

#[test]
fn panic_in_test_body_still_cleans_up() {
    let seen: Arc<Mutex<Option<Footprint>>> = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let c = cluster("panic");
        let server = c.serve("pod-a2", &[80], &[]).expect("serve");
        *seen2.lock().expect("lock") = Some(Footprint::of(&c, &[server.pid()]));
        panic!("deliberate panic inside a test body");
    });
    assert!(result.is_err(), "the closure must have panicked");
    let footprint = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("footprint recorded");
    footprint.assert_gone();
}

#[test]
fn failed_creation_cleans_up() {
    // Duplicate names are rejected before anything is created.
    let err =
        Cluster::new("dup", &[("node-a", &["x"]), ("node-b", &["x"])]).expect_err("duplicate pod");
    assert!(format!("{err:#}").contains("duplicate"), "{err:#}");
    let err = Cluster::new("bad", &[("node/a", &[])]).expect_err("bad name");
    assert!(format!("{err:#}").contains("invalid node name"), "{err:#}");
}

#[test]
fn parallel_clusters_do_not_interfere() {
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let c = cluster(&format!("parallel-{i}"));
                let mut cmd = probe_cmd().expect("gp-probe built");
                cmd.args(["serve", "--name", c.id(), "--tcp", "80", "--udp", "53"]);
                let mut server = c.spawn_in_pod("pod-b1", cmd).expect("serve");
                server
                    .wait_for_line(|l| l == "ready", Duration::from_secs(5))
                    .expect("ready");
                barrier.wait();
                let target = sock(c.pod("pod-b1").ip, 80);
                for _ in 0..5 {
                    let r = c
                        .probe("pod-a1", ["tcp", &target, "--count", "4"])
                        .expect("probe");
                    assert_all_ok(&r, 4);
                    assert!(
                        r.iter().all(|r| r.pod() == Some(c.id())),
                        "crossed clusters: {r:?}"
                    );
                    let r = c
                        .probe("pod-a2", ["udp", &sock(c.pod("pod-b1").ip, 53)])
                        .expect("probe");
                    assert_all_ok(&r, 1);
                    assert_eq!(r[0].pod(), Some(c.id()));
                }
                let names = netns_names_with(&format!("{}-", c.id()));
                assert_eq!(names.len(), 2 + 2 + 3, "{names:?}");
                barrier.wait();
                c.id().to_string()
            })
        })
        .collect();
    let ids: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn routes_are_contained() {
    let c = cluster("routes");
    let routes = |ns: &str, args: &[&str]| -> Vec<String> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(ns)
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let all = |ns: &str| routes(ns, &["route", "show", "table", "all"]);

    let client = routes(c.netns("client"), &["-4", "route", "show"]);
    assert_eq!(client.len(), 1, "{client:?}");
    assert!(
        client[0].starts_with("198.18.0.0/24 dev eth0"),
        "{client:?}"
    );
    for ns in ["client", "lan", "node-a", "node-b"] {
        let r = all(c.netns(ns));
        assert!(
            !r.iter().any(|l| l.starts_with("default")),
            "default route in {ns}: {r:?}"
        );
    }
    assert!(routes(c.netns("lan"), &["route", "show"]).is_empty());
    let node_a = routes(c.netns("node-a"), &["-4", "route", "show"]);
    assert!(
        node_a
            .iter()
            .any(|l| l.starts_with("198.19.2.0/24 via 198.18.0.11 dev eth0")),
        "{node_a:?}"
    );
    for p in c.pods() {
        let r = routes(&p.netns, &["-4", "route", "show"]);
        assert!(
            r.iter()
                .any(|l| l.starts_with(&format!("default via {} dev eth0", p.gateway))),
            "{r:?}"
        );
    }
    // No IPv6 either (disabled to keep the wires quiet).
    assert!(routes(c.netns("client"), &["-6", "route", "show"]).is_empty());

    // sysctls, read from inside each namespace.
    let sysctl = |name: &str, key: &str| -> String {
        let mut cmd = Command::new("cat");
        cmd.arg(Path::new("/proc/sys").join(key.replace('.', "/")));
        let out = c.run_in(name, cmd, Duration::from_secs(5)).expect("cat");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for (name, forwarding) in [
        ("node-a", "1"),
        ("node-b", "1"),
        ("pod-a1", "0"),
        ("client", "0"),
    ] {
        assert_eq!(
            sysctl(name, "net.ipv4.ip_forward"),
            forwarding,
            "ip_forward in {name}"
        );
        assert_eq!(
            sysctl(name, "net.ipv4.conf.eth0.rp_filter"),
            "0",
            "rp_filter in {name}"
        );
    }
}

/// Serializes the tests that call `sweep_stale` (it would sweep the other
/// test's deliberately stale leftovers before that test looks at them).
static SWEEP_TESTS: Mutex<()> = Mutex::new(());

#[test]
fn sweep_removes_stale_leftovers_only() {
    let _serial = SWEEP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    // A pid that doesn't exist: high and checked (a race with pid allocation
    // is harmless, the leftover just wouldn't be swept).
    // Start from our own pid so concurrent copies of this test binary pick different ones.
    let first = 4_000_000 + std::process::id() % 100_000;
    let dead = (first..first + 10_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("free pid");
    let id = format!("gpt-{dead}-0");
    let live = cluster("sweep");
    let ns = format!("{id}-node-x");
    let st = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip");
    assert!(st.success());
    let cgroup = live.cgroup().parent().expect("cgroup root").join(&id);
    fs::create_dir_all(cgroup.join("node-x").join("pod-x")).expect("stale cgroup");
    let tmp = Path::new("/tmp/gangplank-tests").join(format!("{id}-sweep"));
    let bpffs = tmp.join("bpffs");
    fs::create_dir_all(&bpffs).expect("stale dir");
    let st = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs)
        .status()
        .expect("mount");
    assert!(st.success());

    sweep_stale().expect("sweep");

    assert!(netns_names_with(&id).is_empty());
    assert!(!cgroup.exists());
    assert!(!mount_points().contains(&bpffs));
    assert!(!tmp.exists());
    // The live cluster is untouched and works.
    assert!(live.cgroup().is_dir());
    assert!(live.bpffs().is_dir() && mount_points().contains(&live.bpffs().to_path_buf()));
    let _s = live.serve("pod-b1", &[80], &[]).expect("serve");
    let r = live
        .probe("pod-a1", ["tcp", &sock(live.pod("pod-b1").ip, 80)])
        .expect("probe");
    assert_all_ok(&r, 1);
}

#[test]
fn crashed_test_process_is_swept() {
    use std::io::{BufRead, BufReader};
    let _serial = SWEEP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut helper = Command::new(target_binary("gp-crash-helper").expect("gp-crash-helper"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting helper");
    let stdout = helper.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("CLUSTER ") {
                let _ = tx.send(line[i..].to_string());
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    // SIGKILL: the helper gets no chance to clean up.
    helper.kill().expect("kill helper");
    helper.wait().expect("reap helper");
    let line = line.expect("helper reported its cluster");
    let fields: Vec<&str> = line.split(' ').collect();
    let (id, server_pid, bpffs) = (
        fields[1],
        fields[2].parse::<u32>().expect("pid"),
        PathBuf::from(fields[3]),
    );

    // PDEATHSIG took the helper's children with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{server_pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{server_pid}")).exists(),
        "server {server_pid} outlived its test process"
    );
    // Everything else stays until swept (not asserted: a concurrent test
    // process running its own sweep may already have removed it).
    sweep_stale().expect("sweep");
    assert!(netns_names_with(&format!("{id}-")).is_empty());
    assert!(!mount_points().contains(&bpffs));
    let tmp = bpffs.parent().expect("tmp dir");
    assert!(!tmp.exists(), "{} left behind", tmp.display());
    let cgroups = fs::read_dir("/sys/fs/cgroup/unified")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy() == id)
        })
        .unwrap_or(false);
    assert!(!cgroups, "cgroup {id} left behind");
}
