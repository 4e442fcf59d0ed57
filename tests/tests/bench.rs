//! `gangplank bench` end to end, small: it builds its own simulated
//! cluster, measures gangplank and both kube-proxy modes, then each
//! program's cost per packet, writes its reports, data and plots, and
//! leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use gangplank_tests::{check_privileges, target_binary};

/// What a simulated cluster of process `pid` would leave: network
/// namespaces, cgroups and temp dirs named `gpt-<pid>-*`.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("gpt-{pid}-");
    let cgroup2 = gangplank_sim::sys::cgroup2_root().expect("cgroup2");
    [
        Path::new("/run/netns"),
        cgroup2,
        Path::new("/tmp/gangplank-tests"),
    ]
    .iter()
    .flat_map(|dir| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    })
    .collect()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn gangplank_bench_measures_every_datapath_and_cleans_up() {
    check_privileges().expect("needs root");
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(target_binary("gangplank").expect("gangplank"));
    cmd.args([
        "bench",
        "--sizes=1,3",
        "--conn-repeats=1",
        "--conn-duration=0.3",
        "--stream-seconds=1",
        "--dataplanes=gangplank,iptables,nftables",
        "--packet-batches=2",
        "--packet-runs=20",
        "--packet-repeat=1000",
    ])
    .arg("--out")
    .arg(out.path());
    let log = out.path().join("bench.log");
    let file = std::fs::File::create(&log).expect("log");
    cmd.stdout(file.try_clone().expect("log")).stderr(file);
    let mut bench = cmd.spawn().expect("spawn gangplank bench");
    let pid = bench.id();
    let output = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = bench.kill();
            let _ = bench.wait();
            panic!("gangplank bench still running after 300 s\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}\n{}", output());
    let left = leftovers(pid);
    assert!(left.is_empty(), "left behind: {left:?}");

    let json = std::fs::read_to_string(out.path().join("services.json")).expect("services.json");
    let results: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let results = results.as_array().expect("array");
    assert_eq!(results.len(), 6, "{json}");
    for r in results {
        let what = format!("{} at {}", r["mode"], r["services"]);
        for path in ["cluster_ip", "node_port"] {
            let run = &r[path][0];
            assert!(
                run["connections"].as_u64() > Some(0),
                "{what} {path}: {run}"
            );
            assert_eq!(run["errors"], 0, "{what} {path}: {run}");
        }
        assert!(r["stream_gbps"].as_f64() > Some(0.0), "{what}: {r}");
        assert!(r["program_ms"].as_f64() > Some(0.0), "{what}: {r}");
        assert_eq!(r["change_ms"].as_array().map(Vec::len), Some(5), "{what}");
        assert_eq!(
            r["socket_lb"].is_object(),
            r["mode"] == "gangplank",
            "{what}"
        );
    }
    let modes: Vec<&str> = results.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(
        modes,
        [
            "gangplank",
            "iptables",
            "nftables",
            "gangplank",
            "iptables",
            "nftables"
        ]
    );

    let md = std::fs::read_to_string(out.path().join("services.md")).expect("services.md");
    for want in [
        "## ClusterIP from a pod",
        "## NodePort from outside the cluster",
        "## One long TCP stream through a NodePort (iperf3, 1 s",
        "## Programming",
        "| 3 | kube-proxy nftables |",
    ] {
        assert!(md.contains(want), "{want} missing:\n{md}");
    }
    // The font is installed by `cargo xtask setup`.
    for plot in [
        "services-clusterip-rate.png",
        "services-clusterip-latency.png",
        "services-nodeport-rate.png",
        "services-nodeport-latency.png",
    ] {
        assert!(is_png(&out.path().join(plot)), "{plot}\n{md}");
    }
    assert!(
        !out.path().join("services-work").exists(),
        "rule files left"
    );
}
