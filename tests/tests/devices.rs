//! Device detection and node-address following, end to end: `gangplank
//! devices` run inside a simulated node's network namespace (where `/sys`
//! still shows the host's interfaces, so only rtnetlink gives the right
//! answer), and the node-address maps synced from what it reports.
//!
//! Need root, like every test of this crate.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

use gangplank::dataplane::node_maps::{self, NodeMaps, NodeMapsContents};
use gangplank::devices::NetDevice;
use gangplank_common::{NodeAddr, DEVICES_MAP_SIZE, NODE_ADDRS_MAP_SIZE};
use gangplank_tests::agent::gangplank_cmd;
use gangplank_tests::Cluster;

const NODE: &str = "node-a";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
const EXTRA_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 210);
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the watcher may take to report an address change.
const WATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One node (eth0 on the lan, cbr0 for pods) with two pods (veth0, veth1).
fn cluster(test: &str) -> Cluster {
    Cluster::new(test, &[(NODE, &["pod-a1", "pod-a2"])]).expect("building the simulated cluster")
}

/// `gangplank devices <args>` on the node.
fn gangplank_devices(c: &Cluster, args: &[&str]) -> Output {
    let mut cmd = gangplank_cmd().expect("gangplank binary (run `cargo build` first)");
    cmd.arg("devices").args(args);
    c.run_in_node(NODE, cmd, RUN_TIMEOUT)
        .expect("running gangplank devices")
}

/// `gangplank devices -o json <args>` on the node, parsed; must succeed.
fn devices_json(c: &Cluster, args: &[&str]) -> Vec<NetDevice> {
    let out = gangplank_devices(c, &[&["-o", "json"], args].concat());
    assert!(
        out.status.success(),
        "gangplank devices {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gangplank devices printed no JSON device list ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `ip <args>` on the node; must succeed.
fn ip(c: &Cluster, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = c.run_in_node(NODE, cmd, RUN_TIMEOUT).expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?} on {NODE} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (name, addresses) of each device, for comparisons that ignore ifindexes.
fn summary(devices: &[NetDevice]) -> Vec<(&str, &[Ipv4Addr])> {
    devices
        .iter()
        .map(|d| (d.name.as_str(), d.addresses.as_slice()))
        .collect()
}

#[test]
fn detection_picks_the_uplink_and_not_the_pod_bridge_veths_or_loopback() {
    let c = cluster("devices-detect");
    let found = devices_json(&c, &[]);
    assert_eq!(
        summary(&found),
        [("eth0", &[NODE_IP][..])],
        "expected only the node's uplink, got {found:#?}"
    );

    let table = gangplank_devices(&c, &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "table output failed: {table:?}");
    assert!(
        text.contains("eth0") && text.contains("198.18.0.10") && !text.contains("cbr0"),
        "unexpected table:\n{text}"
    );
}

#[test]
fn explicit_devices_must_exist_and_may_lack_addresses() {
    let c = cluster("devices-explicit");

    let out = gangplank_devices(&c, &["--devices", "eth0,nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "--devices eth0,nope succeeded: {out:?}"
    );
    assert!(
        stderr.contains("\"nope\""),
        "the error should name the missing device: {stderr}"
    );

    // The detection rules do not apply to named devices: the pod bridge is
    // allowed, sorted by ifindex (eth0 was created first).
    let named = devices_json(&c, &["--devices", "cbr0,eth0"]);
    assert_eq!(
        summary(&named),
        [("eth0", &[NODE_IP][..]), ("cbr0", &[BRIDGE_IP][..])]
    );

    // A device without an address is accepted, with a warning.
    let out = gangplank_devices(&c, &["-o", "json", "--devices", "veth0"]);
    assert!(out.status.success(), "--devices veth0 failed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no global IPv4 address"),
        "expected a warning about veth0: {stderr}"
    );
}

#[test]
fn the_watcher_reports_added_and_removed_addresses() {
    let c = cluster("devices-watch");
    let mut cmd = gangplank_cmd().expect("gangplank binary (run `cargo build` first)");
    cmd.args(["devices", "-o", "json", "--watch"]);
    let mut watch = c.spawn_in_node(NODE, cmd).expect("starting the watcher");

    let parse = |line: String| -> Vec<NetDevice> {
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON device list ({e}): {line}"))
    };
    let first = parse(
        watch
            .wait_for_line(|l| l.starts_with('['), WATCH_TIMEOUT)
            .expect("initial device list"),
    );
    assert_eq!(summary(&first), [("eth0", &[NODE_IP][..])]);

    ip(&c, &["addr", "add", "198.18.0.210/24", "dev", "eth0"]);
    let added = parse(
        watch
            .wait_for_line(|l| l.contains("198.18.0.210"), WATCH_TIMEOUT)
            .expect("the watcher should report the added address"),
    );
    // Same subnet: the new address is a secondary and comes after the primary.
    assert_eq!(summary(&added), [("eth0", &[NODE_IP, EXTRA_IP][..])]);
    assert_eq!(added[0].ifindex, first[0].ifindex);

    ip(&c, &["addr", "del", "198.18.0.210/24", "dev", "eth0"]);
    let removed = parse(
        watch
            .wait_for_line(|l| !l.contains("198.18.0.210"), WATCH_TIMEOUT)
            .expect("the watcher should report the removed address"),
    );
    assert_eq!(summary(&removed), [("eth0", &[NODE_IP][..])]);
}

#[test]
fn node_maps_follow_the_node_addresses() {
    let c = cluster("devices-maps");
    let dir = &c.node(NODE).bpffs;
    // The maps as the eBPF object declares them (u32 keys, 4-byte values).
    for (name, max) in [
        (node_maps::NODE_ADDRS, NODE_ADDRS_MAP_SIZE),
        (node_maps::DEVICES, DEVICES_MAP_SIZE),
    ] {
        gangplank_tests::bpf::pin_hash_map(&dir.join(name), 4, 4, max)
            .unwrap_or_else(|e| panic!("pinning {name}: {e:#}"));
    }
    let mut maps = NodeMaps::open_pinned(dir).expect("opening the pinned node maps");

    // Left over from an earlier agent: an address this node no longer has.
    let stale = Ipv4Addr::new(198, 18, 0, 55);
    maps.node_addrs
        .insert(u32::from(stale).to_be(), NodeAddr { ifindex: 99 }, 0)
        .expect("planting a stale address");

    let devices = devices_json(&c, &[]);
    let eth0 = devices[0].ifindex;
    let changes = maps.sync(&devices).expect("first sync");
    assert_eq!(changes.addresses_added, [NODE_IP]);
    assert_eq!(changes.addresses_removed, [stale]);
    assert_eq!(changes.devices_added, [eth0]);
    assert_eq!(
        maps.contents().expect("reading the maps"),
        NodeMapsContents {
            node_addrs: [(NODE_IP, eth0)].into(),
            devices: [(eth0, Some(NODE_IP))].into(),
        }
    );

    ip(&c, &["addr", "add", "198.18.0.210/24", "dev", "eth0"]);
    let changes = maps
        .sync(&devices_json(&c, &[]))
        .expect("sync after adding an address");
    assert_eq!(
        changes.to_string(),
        "node addresses: +198.18.0.210",
        "{changes:?}"
    );
    assert_eq!(
        maps.contents().expect("reading the maps").node_addrs,
        [(NODE_IP, eth0), (EXTRA_IP, eth0)].into()
    );

    let again = maps.sync(&devices_json(&c, &[])).expect("idempotent sync");
    assert!(again.is_empty(), "nothing changed, yet: {again}");
}
