//! `gangplank status`, map fill levels and the conntrack garbage collector
//! against real pinned maps in a cluster's private bpffs (no agent, no
//! programs: the maps are created here with the layouts of ebpf/common).
//!
//! Needs root: `cargo test -p gangplank-tests --test status`.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gangplank::dataplane::ct_gc::{self, CtGc, GcStats};
use gangplank::metrics::AgentMetrics;
use gangplank::status;
use gangplank_common::{
    Config, CtEntry, CtKey, Device, NodeAddr, CT_DIR_IN, LB_MODE_DSR, PROTO_TCP,
};
use gangplank_tests::Cluster;

// bpf(2) commands and map types (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_OBJ_PIN: i64 = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

const CT_CAPACITY: u32 = 1024;

fn bpf(cmd: i64, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zeroed buffer larger than every bpf_attr layout used
    // here, and outlives the call; pointers in it reference live buffers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of::<[u64; 16]>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Create a map of `K → V` and pin it at `path`; returns our fd.
fn pinned_map<K, V>(path: &Path, map_type: u32, max_entries: u32) -> OwnedFd {
    // BPF_MAP_CREATE: map_type, key_size, value_size, max_entries (u32 each).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map_type) | ((size_of::<K>() as u64) << 32);
    attr[1] = size_of::<V>() as u64 | (u64::from(max_entries) << 32);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)
        .unwrap_or_else(|e| panic!("creating map {}: {e}", path.display()));
    // SAFETY: the kernel just returned this new fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cpath = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // BPF_OBJ_PIN: pathname (u64), bpf_fd (u32).
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    bpf(BPF_OBJ_PIN, &mut attr).unwrap_or_else(|e| panic!("pinning {}: {e}", path.display()));
    fd
}

fn put<K, V>(fd: &OwnedFd, key: &K, value: &V) {
    // BPF_MAP_UPDATE_ELEM: map_fd (u32, padded), key, value, flags (u64).
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64;
    attr[1] = key as *const K as u64;
    attr[2] = value as *const V as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).expect("BPF_MAP_UPDATE_ELEM");
}

fn present<K, V: Copy>(fd: &OwnedFd, key: &K) -> bool {
    let mut value = std::mem::MaybeUninit::<V>::uninit();
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64;
    attr[1] = key as *const K as u64;
    attr[2] = value.as_mut_ptr() as u64;
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => panic!("BPF_MAP_LOOKUP_ELEM: {e}"),
    }
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from(ip).to_be()
}

fn ct_key(client_port: u16) -> CtKey {
    CtKey {
        saddr: be(Ipv4Addr::new(198, 18, 0, 100)),
        daddr: be(Ipv4Addr::new(198, 18, 0, 10)),
        sport: client_port.to_be(),
        dport: 30080u16.to_be(),
        proto: PROTO_TCP,
        dir: CT_DIR_IN,
        _pad: 0,
    }
}

fn ct_entry(expires: u32) -> CtEntry {
    CtEntry {
        new_saddr: be(Ipv4Addr::new(198, 18, 0, 100)),
        new_daddr: be(Ipv4Addr::new(198, 19, 1, 10)),
        new_sport: 0,
        new_dport: 8080u16.to_be(),
        backend_id: 1,
        expires,
        rev_nat_id: 1,
        flags: 0,
    }
}

fn fill_of<'a>(fills: &'a [status::MapFill], name: &str) -> &'a status::MapFill {
    fills
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} missing from map_fill: {fills:#?}"))
}

#[test]
fn status_fill_levels_and_conntrack_gc_on_pinned_maps() {
    let cluster = Cluster::new("status", &[("node-a", &[])]).expect("building the cluster");
    let bpffs = cluster.node("node-a").bpffs.clone();

    // Nothing pinned yet: the error says where we looked and what to check.
    let err = status::run(&bpffs, false).expect_err("status without pinned maps");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no gangplank datapath pinned at") && msg.contains("--bpffs"),
        "{msg}"
    );

    let maps = bpffs.join("maps");
    std::fs::create_dir(&maps).expect("creating the maps pin dir");
    let ct_path = maps.join("GP_CT");
    let ct = pinned_map::<CtKey, CtEntry>(&ct_path, BPF_MAP_TYPE_LRU_HASH, CT_CAPACITY);
    let node_addrs =
        pinned_map::<u32, NodeAddr>(&maps.join("GP_NODE_ADDRS"), BPF_MAP_TYPE_HASH, 256);
    let devices = pinned_map::<u32, Device>(&maps.join("GP_DEVICES"), BPF_MAP_TYPE_HASH, 64);
    let config = pinned_map::<u32, Config>(&maps.join("GP_CONFIG"), BPF_MAP_TYPE_ARRAY, 1);

    let node_ip = Ipv4Addr::new(198, 18, 0, 10);
    // ifindex 1 is loopback in every network namespace, so its name is
    // known wherever the test runs.
    put(&node_addrs, &be(node_ip), &NodeAddr { ifindex: 1 });
    put(
        &devices,
        &1u32,
        &Device {
            address: be(node_ip),
        },
    );
    put(
        &config,
        &0u32,
        &Config {
            lb_mode: LB_MODE_DSR,
            _pad: [0; 7],
        },
    );

    // 4 dead flows, 6 live ones.
    let now = ct_gc::monotonic_secs();
    let dead: Vec<CtKey> = (1..=4).map(ct_key).collect();
    let live: Vec<CtKey> = (5..=10).map(ct_key).collect();
    for (i, key) in dead.iter().enumerate() {
        put(&ct, key, &ct_entry(now.saturating_sub(1 + i as u32)));
    }
    for (i, key) in live.iter().enumerate() {
        put(&ct, key, &ct_entry(now + 600 + i as u32));
    }

    let fills = status::map_fill(&bpffs).expect("map_fill");
    let ct_fill = fill_of(&fills, "GP_CT");
    assert_eq!(
        (
            ct_fill.entries,
            ct_fill.max_entries,
            ct_fill.lru,
            ct_fill.map_type.as_str()
        ),
        (10, CT_CAPACITY, true, "lru_hash"),
        "{ct_fill:?}"
    );
    let addrs_fill = fill_of(&fills, "GP_NODE_ADDRS");
    assert_eq!(
        (addrs_fill.entries, addrs_fill.lru),
        (1, false),
        "{addrs_fill:?}"
    );
    let config_fill = fill_of(&fills, "GP_CONFIG");
    assert_eq!(
        (config_fill.entries, config_fill.map_type.as_str()),
        (1, "array"),
        "{config_fill:?}"
    );

    let stats = ct_gc::collect_pinned(&ct_path, now).expect("collecting GP_CT");
    assert_eq!(
        stats,
        GcStats {
            scanned: 10,
            deleted: 4,
            live: 6
        }
    );
    for key in &dead {
        assert!(
            !present::<CtKey, CtEntry>(&ct, key),
            "expired entry {key:?} survived the GC"
        );
    }
    for key in &live {
        assert!(
            present::<CtKey, CtEntry>(&ct, key),
            "live entry {key:?} was deleted"
        );
    }
    let fills = status::map_fill(&bpffs).expect("map_fill after GC");
    assert_eq!(fill_of(&fills, "GP_CT").entries, 6);

    // The status report, as a table and as JSON.
    let st = status::status(&bpffs).expect("status");
    let addrs = st.node_addresses.as_ref().expect("node addresses section");
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert_eq!(
        (
            addrs[0].address,
            addrs[0].ifindex,
            addrs[0].interface.as_deref()
        ),
        (node_ip, 1, Some("lo"))
    );
    let devs = st.devices.as_ref().expect("devices section");
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!((devs[0].ifindex, devs[0].snat_address), (1, Some(node_ip)));
    assert_eq!(st.lb_mode.as_deref(), Some("dsr"));
    assert!(st.links.is_empty(), "{:?}", st.links);

    let table = status::run(&bpffs, false).expect("status table");
    for want in [
        "GP_CT",
        "lru_hash",
        "(LRU: full is normal)",
        "Load-balancing mode: dsr",
        "198.18.0.10",
        "lo (ifindex 1)",
        "SNAT address 198.18.0.10",
    ] {
        assert!(table.contains(want), "expected {want:?} in:\n{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&status::run(&bpffs, true).expect("status JSON"))
            .expect("status -o json parses");
    let ct_row = json["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|r| r["name"] == "GP_CT"))
        .unwrap_or_else(|| panic!("GP_CT missing from {json}"));
    assert_eq!(ct_row["entries"], 6, "{ct_row}");
    assert_eq!(ct_row["lru"], true, "{ct_row}");

    // The GC thread: its first pass runs right away and reports to metrics.
    let later = ct_gc::monotonic_secs();
    for port in 100..103 {
        put(&ct, &ct_key(port), &ct_entry(later.saturating_sub(5)));
    }
    let metrics = Arc::new(AgentMetrics::new());
    let gc = CtGc::start(
        ct_path.clone(),
        Duration::from_secs(3600),
        Some(metrics.clone()),
    )
    .expect("starting the GC thread");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = metrics.encode();
        if scrape
            .lines()
            .any(|l| l == "gangplank_conntrack_gc_deleted_total 3")
        {
            assert!(
                scrape.lines().any(|l| l == "gangplank_conntrack_entries 6"),
                "{scrape}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the GC thread did not delete the 3 expired entries within 10s:\n{scrape}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gc.stop();
    for port in 100..103 {
        assert!(!present::<CtKey, CtEntry>(&ct, &ct_key(port)));
    }
}
