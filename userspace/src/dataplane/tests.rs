//! Writer tests against [`FakeMaps`], which checks after every single map
//! operation that no service is visible half-written.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use gangplank_common::{
    MaglevKey, ServiceKey, BACKEND_FLAG_LOCAL, BACKEND_FLAG_TERMINATING, MAGLEV_CHUNK,
    SCOPE_EXTERNAL, SVC_FLAG_LOCAL, SVC_FLAG_MAGLEV, SVC_FLAG_MAGLEV_GEN1, SVC_FLAG_NODEPORT,
};

use super::fake::FakeMaps;
use super::maglev::{self, TableSize};
use super::writer::{parse_name, service_key, Writer, WriterConfig};
use crate::model::{BackendAddr, Frontend, FrontendKey, FrontendKind, Protocol, ServiceId};

fn key(vip: [u8; 4], port: u16, protocol: Protocol) -> FrontendKey {
    FrontendKey::internal(Ipv4Addr::from(vip), port, protocol)
}

fn frontend(key: FrontendKey, backends: &[(u8, u16)]) -> Frontend {
    Frontend {
        key,
        kind: FrontendKind::ClusterIp,
        service: ServiceId {
            namespace: "default".into(),
            name: "web".into(),
        },
        port_name: "http".into(),
        backends: backends
            .iter()
            .map(|(last, port)| BackendAddr {
                address: Ipv4Addr::new(198, 19, 1, *last),
                port: *port,
                terminating: false,
                local: false,
            })
            .collect(),
        affinity_timeout: 0,
        external_local: false,
    }
}

fn writer() -> Writer<FakeMaps> {
    Writer::new(FakeMaps::default()).expect("fake maps never fail to snapshot")
}

/// Backends of a frontend as the datapath would resolve them.
fn resolved(w: &Writer<FakeMaps>, key: &FrontendKey) -> Vec<(Ipv4Addr, u16)> {
    let state = &w.maps().state;
    let master = service_key(key, 0);
    let Some(value) = state.services.get(&master) else {
        return vec![];
    };
    let mut out: Vec<_> = (1..=value.count)
        .map(|slot| {
            let slot = state.services[&ServiceKey {
                backend_slot: slot,
                ..master
            }];
            let b = state.backends[&slot.backend_id];
            (
                Ipv4Addr::from(u32::from_be(b.address)),
                u16::from_be(b.port),
            )
        })
        .collect();
    out.sort();
    out
}

fn assert_consistent(w: &Writer<FakeMaps>) {
    assert!(
        w.maps().violations.is_empty(),
        "datapath could see a half-written service: {:#?}",
        w.maps().violations
    );
    let settled = w.maps().settled_violations();
    assert!(
        settled.is_empty(),
        "after the writer returned: {settled:#?}"
    );
}

#[test]
fn programs_a_service_with_master_entry_last() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let stats = w.sync([&frontend(k, &[(10, 8080), (11, 8080)])]);
    assert_eq!(stats.upserted, 1);
    assert_eq!(
        resolved(&w, &k),
        vec![
            (Ipv4Addr::new(198, 19, 1, 10), 8080),
            (Ipv4Addr::new(198, 19, 1, 11), 8080)
        ]
    );
    assert_consistent(&w);
}

#[test]
fn endpoint_churn_never_exposes_a_half_written_service() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let sets: [&[(u8, u16)]; 6] = [
        &[(10, 80), (11, 80), (12, 80)],
        &[(11, 80)],
        &[(11, 80), (13, 80), (14, 80), (15, 80)],
        &[],
        &[(20, 80), (21, 80)],
        &[(21, 80), (10, 80)],
    ];
    for set in sets {
        let fe = frontend(k, set);
        let changes = BTreeMap::from([(k, Some(fe))]);
        w.apply(&changes);
        let mut want: Vec<_> = set
            .iter()
            .map(|(l, p)| (Ipv4Addr::new(198, 19, 1, *l), *p))
            .collect();
        want.sort();
        assert_eq!(resolved(&w, &k), want, "after applying {set:?}");
        assert_consistent(&w);
    }
    // Only the backends in use remain.
    assert_eq!(w.maps().state.backends.len(), 2);
}

#[test]
fn one_endpoint_change_costs_few_writes() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let many: Vec<(u8, u16)> = (10..20).map(|i| (i, 80)).collect();
    w.sync([&frontend(k, &many)]);
    let before = w.maps().ops;
    let mut fewer = many.clone();
    fewer.remove(3);
    w.apply(&BTreeMap::from([(k, Some(frontend(k, &fewer)))]));
    let ops = w.maps().ops - before;
    assert!(
        ops <= 4,
        "removing one of ten endpoints took {ops} map writes; expected a slot move, a master update, a slot delete and a backend delete"
    );
    assert_consistent(&w);
}

#[test]
fn tcp_and_udp_on_the_same_port_are_distinct_frontends() {
    let mut w = writer();
    let tcp = key([198, 18, 200, 10], 53, Protocol::Tcp);
    let udp = key([198, 18, 200, 10], 53, Protocol::Udp);
    w.sync([&frontend(tcp, &[(10, 53)]), &frontend(udp, &[(11, 53)])]);
    assert_eq!(
        resolved(&w, &tcp),
        vec![(Ipv4Addr::new(198, 19, 1, 10), 53)]
    );
    assert_eq!(
        resolved(&w, &udp),
        vec![(Ipv4Addr::new(198, 19, 1, 11), 53)]
    );
    w.apply(&BTreeMap::from([(udp, None)]));
    assert_eq!(resolved(&w, &tcp).len(), 1);
    assert!(resolved(&w, &udp).is_empty());
    assert_consistent(&w);
}

#[test]
fn shared_backends_are_kept_until_the_last_user_goes() {
    let mut w = writer();
    let a = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let b = key([198, 18, 200, 11], 80, Protocol::Tcp);
    w.sync([&frontend(a, &[(10, 80)]), &frontend(b, &[(10, 80)])]);
    assert_eq!(
        w.maps().state.backends.len(),
        1,
        "one endpoint, one backend entry"
    );
    w.apply(&BTreeMap::from([(a, None)]));
    assert_eq!(resolved(&w, &b).len(), 1);
    assert_eq!(w.maps().state.backends.len(), 1);
    w.apply(&BTreeMap::from([(b, None)]));
    assert!(w.maps().state.backends.is_empty());
    assert!(w.maps().state.services.is_empty());
    assert!(w.maps().state.rev_nats.is_empty());
    assert_consistent(&w);
}

#[test]
fn no_endpoints_keeps_a_rejecting_master_entry() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    w.sync([&frontend(k, &[])]);
    let master = w.maps().state.services[&service_key(&k, 0)];
    assert_eq!(master.count, 0, "count 0 is what makes connect() fail");
}

#[test]
fn restart_reuses_pinned_state_and_removes_what_is_stale() {
    let mut first = writer();
    let keep = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let gone = key([198, 18, 200, 11], 80, Protocol::Tcp);
    first.sync([
        &frontend(keep, &[(10, 80), (11, 80)]),
        &frontend(gone, &[(12, 80)]),
    ]);
    let pinned = first.maps().state.clone();

    // A new agent opens the same maps; meanwhile `gone` left the manifests.
    let mut second = Writer::new(FakeMaps {
        state: pinned.clone(),
        ..Default::default()
    })
    .expect("snapshot");
    assert_eq!(second.len(), 2, "adopts both pinned frontends");
    let stats = second.sync([&frontend(keep, &[(10, 80), (11, 80)])]);
    assert_eq!(stats.upserted, 0, "an unchanged frontend is not rewritten");
    assert_eq!(stats.deleted, 1);
    let state = &second.maps().state;
    assert_eq!(
        state.services[&service_key(&keep, 0)],
        pinned.services[&service_key(&keep, 0)],
        "same reverse-NAT id and slots as before the restart"
    );
    assert!(!state.services.contains_key(&service_key(&gone, 0)));
    assert_eq!(
        state.backends.len(),
        2,
        "backend 198.19.1.12 removed, nothing duplicated"
    );
    assert_eq!(state.rev_nats.len(), 1);
    assert_consistent(&second);
}

#[test]
fn orphaned_pinned_entries_are_swept() {
    let mut first = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    first.sync([&frontend(k, &[(10, 80)])]);
    let mut pinned = first.maps().state.clone();
    // Leftovers of a crash: a slot past the count, an unused backend and
    // reverse-NAT entry.
    let mut extra = service_key(&k, 5);
    extra.backend_slot = 5;
    pinned
        .services
        .insert(extra, pinned.services[&service_key(&k, 1)]);
    pinned.backends.insert(99, pinned.backends[&1]);
    pinned.backends.get_mut(&99).expect("just inserted").port = 9;
    pinned.rev_nats.insert(77, pinned.rev_nats[&1]);
    let mut second = Writer::new(FakeMaps {
        state: pinned,
        ..Default::default()
    })
    .expect("snapshot");
    second.sync([&frontend(k, &[(10, 80)])]);
    let state = &second.maps().state;
    assert!(!state.services.contains_key(&extra));
    assert!(!state.backends.contains_key(&99));
    assert!(!state.rev_nats.contains_key(&77));
    assert_eq!(resolved(&second, &k).len(), 1);
}

#[test]
fn a_failed_write_removes_the_frontend_instead_of_leaving_half_of_it() {
    let mut w = writer();
    let ok = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let k = key([198, 18, 200, 11], 80, Protocol::Tcp);
    w.sync([&frontend(ok, &[(10, 80)])]);
    w.maps_mut_for_test().fail_at = Some(3);
    let stats = w.apply(&BTreeMap::from([(
        k,
        Some(frontend(k, &[(20, 80), (21, 80)])),
    )]));
    assert_eq!(stats.failed, 1);
    assert!(resolved(&w, &k).is_empty());
    assert_eq!(resolved(&w, &ok).len(), 1, "other frontends are untouched");
    assert_eq!(
        w.maps().state.backends.len(),
        1,
        "backends written before the failure are removed again"
    );
    assert_consistent(&w);
    // And it can be programmed once space is back.
    w.apply(&BTreeMap::from([(
        k,
        Some(frontend(k, &[(20, 80), (21, 80)])),
    )]));
    assert_eq!(resolved(&w, &k).len(), 2);
}

#[test]
fn affinity_entries_of_removed_backends_are_purged() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let mut fe = frontend(k, &[(10, 80), (11, 80)]);
    fe.affinity_timeout = 10800;
    w.sync([&fe]);
    let mut fewer = frontend(k, &[(11, 80)]);
    fewer.affinity_timeout = 10800;
    w.apply(&BTreeMap::from([(k, Some(fewer))]));
    let purges = &w.maps().affinity_purges;
    assert_eq!(purges.len(), 1, "one purge pass: {purges:?}");
    assert!(
        purges[0].matches(1, 1),
        "entries pointing at the removed backend go: {purges:?}"
    );
    assert!(
        !purges[0].matches(1, 2),
        "entries of the remaining backend stay: {purges:?}"
    );
}

#[test]
fn terminating_backends_are_flagged() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let mut fe = frontend(k, &[(10, 80)]);
    fe.backends[0].terminating = true;
    w.sync([&fe]);
    let b = w.maps().state.backends.values().next().copied();
    assert_eq!(b.map(|b| b.flags), Some(BACKEND_FLAG_TERMINATING));
}

#[test]
fn a_failed_batch_at_start_up_falls_back_to_one_frontend_at_a_time() {
    let fes: Vec<Frontend> = (0..20u8)
        .map(|i| {
            frontend(
                key([198, 18, 200, i], 80, Protocol::Tcp),
                &[(10 + i % 3, 80), (40 + i, 80)],
            )
        })
        .collect();
    for fail_at in [0, 5, 30, 60, 79] {
        let mut w = writer();
        // The fake's batch operations are single writes in order, so this
        // fails somewhere inside one of the batch phases.
        w.maps_mut_for_test().fail_at = Some(fail_at);
        let stats = w.sync(&fes);
        assert_consistent(&w);
        assert_eq!(
            stats.failed, 0,
            "the retry succeeds once space is back (fail_at {fail_at})"
        );
        for fe in &fes {
            assert_eq!(
                resolved(&w, &fe.key).len(),
                2,
                "{} after fail_at {fail_at}",
                fe.key
            );
        }
        let backends = &w.maps().state.backends;
        assert_eq!(
            backends.len(),
            23,
            "3 shared + 20 own backends, no leftovers (fail_at {fail_at})"
        );
        assert_eq!(w.maps().state.rev_nats.len(), 20);
    }
}

#[test]
fn orphaned_slots_are_removed_before_the_frontend_is_rewritten() {
    // A start-up killed after the batch wrote slots but before it wrote
    // the master entries leaves slots without a master.
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let mut first = writer();
    first.sync([&frontend(k, &[(10, 80), (11, 80)])]);
    let mut pinned = first.maps().state.clone();
    pinned.services.remove(&service_key(&k, 0));

    let mut second = Writer::new(FakeMaps {
        state: pinned,
        ..Default::default()
    })
    .expect("snapshot");
    second.sync([&frontend(k, &[(10, 80), (11, 80)])]);
    assert_eq!(
        resolved(&second, &k).len(),
        2,
        "the sweep must not delete slots that were just rewritten"
    );
    assert_consistent(&second);
}

#[test]
fn a_missing_reverse_nat_entry_is_rewritten_at_adoption() {
    let k = key([198, 18, 200, 10], 53, Protocol::Udp);
    let mut first = writer();
    first.sync([&frontend(k, &[(10, 53)])]);
    let mut pinned = first.maps().state.clone();
    pinned.rev_nats.clear(); // crash between name and reverse-NAT writes
    let mut second = Writer::new(FakeMaps {
        state: pinned,
        ..Default::default()
    })
    .expect("snapshot");
    second.sync([&frontend(k, &[(10, 53)])]);
    assert_eq!(
        second.maps().state.rev_nats.len(),
        1,
        "UDP replies need the reverse-NAT entry back"
    );
}

#[test]
fn duplicate_backends_in_pinned_state_do_not_leak() {
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let mut first = writer();
    first.sync([&frontend(k, &[(10, 80)])]);
    let mut pinned = first.maps().state.clone();
    let dup = pinned.backends[&1];
    pinned.backends.insert(7, dup);
    let mut second = Writer::new(FakeMaps {
        state: pinned,
        ..Default::default()
    })
    .expect("snapshot");
    second.sync([&frontend(k, &[(10, 80)])]);
    assert_eq!(
        second.maps().state.backends.len(),
        1,
        "the duplicate is removed"
    );
    assert_eq!(resolved(&second, &k).len(), 1);
    assert_consistent(&second);
}

#[test]
fn failed_frontends_are_remembered_for_retry() {
    let mut w = writer();
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    w.sync(Vec::<Frontend>::new());
    w.maps_mut_for_test().fail_at = Some(0);
    w.apply(&BTreeMap::from([(k, Some(frontend(k, &[(10, 80)])))]));
    assert_eq!(w.failed().collect::<Vec<_>>(), vec![&k]);
    w.apply(&BTreeMap::from([(k, Some(frontend(k, &[(10, 80)])))]));
    assert_eq!(w.failed().count(), 0);
    assert_eq!(resolved(&w, &k).len(), 1);
}

#[test]
fn a_crash_between_slot_and_master_writes_does_not_skew_refcounts() {
    // Shrinking [A, B] to [B] writes slot 1 = B before the master: killed
    // in between, the pins hold count 2 with slots [B, B].
    let k = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let mut first = writer();
    first.sync([&frontend(k, &[(10, 80), (11, 80)])]);
    let mut pinned = first.maps().state.clone();
    let slot2 = pinned.services[&service_key(&k, 2)];
    pinned.services.insert(service_key(&k, 1), slot2);

    let mut second = Writer::new(FakeMaps {
        state: pinned,
        ..Default::default()
    })
    .expect("snapshot");
    second.sync([&frontend(k, &[(11, 80)])]);
    // Grow twice: with a skewed count the shared backend would be deleted
    // while its slot still points at it.
    for set in [
        &[(11, 80), (12, 80)][..],
        &[(11, 80), (12, 80), (13, 80)][..],
    ] {
        second.apply(&BTreeMap::from([(k, Some(frontend(k, set)))]));
        assert_eq!(resolved(&second, &k).len(), set.len(), "{set:?}");
        assert_consistent(&second);
    }
}

#[test]
fn start_up_prefill_deletes_nothing_pinned_until_the_scan_is_complete() {
    let a = key([198, 18, 200, 10], 80, Protocol::Tcp);
    let b = key([198, 18, 200, 11], 80, Protocol::Tcp);
    let gone = key([198, 18, 200, 12], 80, Protocol::Tcp);
    let mut first = writer();
    first.sync([
        &frontend(a, &[(10, 80)]),
        &frontend(b, &[(11, 80)]),
        &frontend(gone, &[(12, 80)]),
    ]);
    let mut w = Writer::new(FakeMaps {
        state: first.maps().state.clone(),
        ..Default::default()
    })
    .expect("snapshot");

    // Batch 1 changes a; b and gone are not in it (b comes later).
    let batch1 = BTreeMap::from([(a, Some(frontend(a, &[(10, 80), (13, 80)])))]);
    w.prefill(&batch1);
    assert_eq!(resolved(&w, &a).len(), 2);
    assert_eq!(resolved(&w, &b).len(), 1, "b is still served mid-scan");
    assert_eq!(
        resolved(&w, &gone).len(),
        1,
        "nothing pinned is deleted mid-scan"
    );
    // Batch 2: b, and a new frontend written in one batch.
    let fresh = key([198, 18, 200, 20], 80, Protocol::Tcp);
    let batch2 = BTreeMap::from([
        (b, Some(frontend(b, &[(11, 80)]))),
        (fresh, Some(frontend(fresh, &[(20, 80)]))),
    ]);
    w.prefill(&batch2);
    assert_consistent(&w);

    let desired = [a, b, fresh].into_iter().collect();
    let stats = w.finish_sync(&desired);
    assert_eq!(stats.deleted, 1);
    assert!(
        resolved(&w, &gone).is_empty(),
        "stale pinned frontend removed at the end"
    );
    assert_eq!(resolved(&w, &fresh).len(), 1);
    assert_eq!(w.maps().state.backends.len(), 4, "198.19.1.12 went with it");
    assert_consistent(&w);
}

// ---- NodePort, LoadBalancer and external IPs: scopes, flags, Maglev ----

/// A prime just above one chunk, so tables take two chunks and the second
/// is mostly padding; small enough that checking every op stays fast.
const SMALL: u32 = 1031;

fn maglev_writer(maps: FakeMaps, size: u32) -> Writer<FakeMaps> {
    let config = WriterConfig {
        maglev_table_size: TableSize::new(size).expect("prime"),
    };
    Writer::with_config(maps, config).expect("fake maps never fail to snapshot")
}

fn external(vip: [u8; 4], port: u16) -> FrontendKey {
    FrontendKey::external(Ipv4Addr::from(vip), port, Protocol::Tcp)
}

const NODE_PORT: [u8; 4] = [0, 0, 0, 0];

/// An external NodePort frontend on port 30080 with backends
/// 198.19.1.x:8080.
fn node_port(backends: &[u8]) -> Frontend {
    let mut fe = frontend(
        external(NODE_PORT, 30080),
        &backends.iter().map(|b| (*b, 8080)).collect::<Vec<_>>(),
    );
    fe.kind = FrontendKind::NodePort;
    fe
}

fn apply_one(w: &mut Writer<FakeMaps>, fe: &Frontend) {
    w.apply(&BTreeMap::from([(fe.key, Some(fe.clone()))]));
}

/// The live Maglev table of `key`, as backend addresses.
fn table_addresses(w: &Writer<FakeMaps>, key: &FrontendKey) -> Option<Vec<(Ipv4Addr, u16)>> {
    let maps = w.maps();
    let master = maps.state.services.get(&service_key(key, 0))?;
    if master.flags & SVC_FLAG_MAGLEV == 0 {
        return None;
    }
    let generation = u8::from(master.flags & SVC_FLAG_MAGLEV_GEN1 != 0);
    let size = master.backend_id as usize;
    let mut ids = Vec::new();
    for chunk in 0..maglev::chunks_for(master.backend_id) {
        let key = MaglevKey {
            rev_nat_id: master.rev_nat_id,
            generation,
            _pad: 0,
            chunk,
        };
        ids.extend_from_slice(&maps.chunks[&key].backend_ids);
    }
    ids.truncate(size);
    Some(
        ids.iter()
            .map(|id| {
                let b = maps.state.backends[id];
                (
                    Ipv4Addr::from(u32::from_be(b.address)),
                    u16::from_be(b.port),
                )
            })
            .collect(),
    )
}

#[test]
fn external_frontends_get_scope_flags_and_a_maglev_table() {
    let mut w = maglev_writer(FakeMaps::default(), SMALL);
    let mut ext = node_port(&[10, 11, 12]);
    ext.external_local = true;
    ext.affinity_timeout = 60;
    for b in &mut ext.backends {
        b.local = true;
    }
    // The same NodePort from inside the cluster: same key but internal.
    let mut int = ext.clone();
    int.key = FrontendKey::internal(Ipv4Addr::UNSPECIFIED, 30080, Protocol::Tcp);
    int.external_local = false;
    w.sync([&ext, &int]);
    assert_consistent(&w);

    let state = &w.maps().state;
    let master = state.services[&service_key(&ext.key, 0)];
    assert_eq!(service_key(&ext.key, 0).scope, SCOPE_EXTERNAL);
    assert_eq!(service_key(&ext.key, 0).address, 0, "NODEPORT_ADDRESS");
    assert_eq!(
        master.flags,
        SVC_FLAG_MAGLEV | SVC_FLAG_LOCAL | SVC_FLAG_NODEPORT,
        "generation 0 first"
    );
    assert_eq!(master.backend_id, SMALL, "the table size");
    assert_eq!((master.count, master.affinity_timeout), (3, 60));
    let internal = state.services[&service_key(&int.key, 0)];
    assert_eq!(
        internal.flags, SVC_FLAG_NODEPORT,
        "no Maglev and no Local for the socket hooks"
    );
    assert_eq!(internal.backend_id, 0);
    assert!(state
        .backends
        .values()
        .all(|b| b.flags == BACKEND_FLAG_LOCAL));
    assert_eq!(
        w.maps().chunks.len(),
        2,
        "one table of 1031 entries: two chunks"
    );
    let table = table_addresses(&w, &ext.key).expect("table");
    for b in [10, 11, 12] {
        let n = table
            .iter()
            .filter(|a| **a == (Ipv4Addr::new(198, 19, 1, b), 8080))
            .count();
        assert!((343..=344).contains(&n), "backend .{b} has {n} entries");
    }
    let name = state.names[&master.rev_nat_id];
    assert_eq!(
        parse_name(&name),
        ("default/web:http".to_owned(), Some(FrontendKind::NodePort))
    );
}

#[test]
fn a_backend_change_writes_the_other_generation_then_flips_then_cleans_up() {
    let mut w = maglev_writer(FakeMaps::default(), SMALL);
    w.sync([&node_port(&[10, 11])]);
    let key = external(NODE_PORT, 30080);
    let before = w.maps().log.len();

    apply_one(&mut w, &node_port(&[11, 12]));
    assert_consistent(&w);
    let log = &w.maps().log[before..];
    let first = |op: &str| log.iter().position(|o| *o == op);
    let last = |op: &str| log.iter().rposition(|o| *o == op);
    let order = [
        ("put_backend", first("put_backend"), last("put_backend")),
        ("put_slot", first("put_slot"), last("put_slot")),
        ("put_chunk", first("put_chunk"), last("put_chunk")),
        ("put_master", first("put_master"), last("put_master")),
        ("delete_chunk", first("delete_chunk"), last("delete_chunk")),
        (
            "delete_backend",
            first("delete_backend"),
            last("delete_backend"),
        ),
    ];
    for pair in order.windows(2) {
        let ((a, _, a_last), (b, b_first, _)) = (pair[0], pair[1]);
        assert!(
            a_last.is_some() && b_first.is_some() && a_last < b_first,
            "{a} must all come before {b}: {log:?}"
        );
    }
    let master = w.maps().state.services[&service_key(&key, 0)];
    assert_ne!(
        master.flags & SVC_FLAG_MAGLEV_GEN1,
        0,
        "flipped to generation 1"
    );
    assert!(
        w.maps().chunks.keys().all(|k| k.generation == 1),
        "generation 0 deleted"
    );
    let table = table_addresses(&w, &key).expect("table");
    assert!(!table.contains(&(Ipv4Addr::new(198, 19, 1, 10), 8080)));

    // Nothing changed: nothing written, no table rebuilt.
    let ops = w.maps().ops;
    apply_one(&mut w, &node_port(&[12, 11]));
    assert_eq!(w.maps().ops, ops, "same backend set, other order: no write");

    // And back to generation 0.
    apply_one(&mut w, &node_port(&[13]));
    let master = w.maps().state.services[&service_key(&key, 0)];
    assert_eq!(master.flags & SVC_FLAG_MAGLEV_GEN1, 0);
    assert_consistent(&w);
}

#[test]
fn no_backends_means_no_table_and_local_frontends_keep_their_flag() {
    let mut w = maglev_writer(FakeMaps::default(), SMALL);
    let mut fe = node_port(&[10]);
    fe.external_local = true;
    w.sync([&fe]);
    let key = fe.key;
    fe.backends.clear();
    apply_one(&mut w, &fe);
    assert_consistent(&w);
    let master = w.maps().state.services[&service_key(&key, 0)];
    assert_eq!(master.count, 0);
    assert_eq!(
        master.flags,
        SVC_FLAG_LOCAL | SVC_FLAG_NODEPORT,
        "no Maglev flag; Local makes the datapath drop instead of reject"
    );
    assert_eq!(master.backend_id, 0);
    assert!(w.maps().chunks.is_empty());
    assert!(w.maps().state.backends.is_empty());
    apply_one(&mut w, &node_port(&[10, 11]));
    assert_consistent(&w);
    assert_eq!(
        table_addresses(&w, &key).map(|t| t.len()),
        Some(SMALL as usize)
    );
}

#[test]
fn every_node_builds_the_same_table_whatever_its_backend_ids() {
    // Node A sees the frontend first; node B already has other backends,
    // so the same endpoints get other ids, and learns them in another order.
    let mut a = maglev_writer(FakeMaps::default(), SMALL);
    a.sync([&node_port(&[10, 11, 12, 13])]);
    let mut b = maglev_writer(FakeMaps::default(), SMALL);
    let other = frontend(
        key([198, 18, 200, 50], 80, Protocol::Tcp),
        &[(99, 1), (98, 1)],
    );
    b.sync([&other]);
    apply_one(&mut b, &node_port(&[13, 12, 11, 10]));
    let key = external(NODE_PORT, 30080);
    let a_ids: HashSet<u32> = a.maps().state.backends.keys().copied().collect();
    let b_ids: HashSet<u32> = b.maps().state.backends.keys().copied().collect();
    assert_ne!(a_ids, b_ids, "the scenario must give different ids");
    assert_eq!(
        table_addresses(&a, &key),
        table_addresses(&b, &key),
        "same backends, same table, position by position"
    );
    assert_consistent(&a);
    assert_consistent(&b);
}

#[test]
fn backend_flags_are_part_of_its_identity() {
    let mut w = maglev_writer(FakeMaps::default(), SMALL);
    let mut a = node_port(&[10]);
    // The same endpoint, terminating (the fallback of another frontend).
    let mut b = frontend(external([198, 18, 150, 1], 80), &[(10, 8080)]);
    b.kind = FrontendKind::LoadBalancer;
    b.backends[0].terminating = true;
    w.sync([&a, &b]);
    let flags: HashSet<u8> = w.maps().state.backends.values().map(|b| b.flags).collect();
    assert_eq!(flags, HashSet::from([0, BACKEND_FLAG_TERMINATING]));
    // It becomes local and ready everywhere: one entry, with the new flags.
    a.backends[0].local = true;
    b.backends[0] = a.backends[0];
    w.apply(&BTreeMap::from([
        (a.key, Some(a.clone())),
        (b.key, Some(b.clone())),
    ]));
    let backends: Vec<u8> = w.maps().state.backends.values().map(|b| b.flags).collect();
    assert_eq!(backends, [BACKEND_FLAG_LOCAL]);
    assert_consistent(&w);
}

#[test]
fn a_restart_adopts_pinned_tables_without_rewriting_them() {
    let mut first = maglev_writer(FakeMaps::default(), SMALL);
    let fes = [node_port(&[10, 11]), {
        let mut lb = frontend(external([198, 18, 150, 1], 80), &[(10, 8080), (11, 8080)]);
        lb.kind = FrontendKind::LoadBalancer;
        lb
    }];
    first.sync(&fes);
    let pinned = first.maps().restarted();
    let mut second = maglev_writer(pinned, SMALL);
    let stats = second.sync(&fes);
    assert_eq!(stats.upserted, 0, "adopted tables are kept");
    assert!(
        !second.maps().log.iter().any(|op| op.starts_with("put")),
        "{:?}",
        second.maps().log
    );
    assert_consistent(&second);
    // The lead's agent sets the size after `new`: same result.
    let third = Writer::new(first.maps().restarted())
        .expect("snapshot")
        .with_maglev_table_size(SMALL)
        .expect("prime");
    let mut third = third;
    assert_eq!(third.sync(&fes).upserted, 0);
}

#[test]
fn a_restart_rebuilds_tables_that_are_stale_incomplete_or_of_another_size() {
    let fe = node_port(&[10, 11, 12]);
    let key = fe.key;
    let mut first = maglev_writer(FakeMaps::default(), SMALL);
    first.sync([&fe]);
    let want = table_addresses(&first, &key);

    // Another size: rebuilt at the new size, the old chunks go.
    let mut resized = maglev_writer(first.maps().restarted(), 251);
    assert_eq!(resized.sync([&fe]).upserted, 1);
    assert_eq!(table_addresses(&resized, &key).map(|t| t.len()), Some(251));
    assert_consistent(&resized);

    // A table that is not what this writer would build (an agent killed
    // between writing slots and flipping the master, or another hash).
    let mut tampered = first.maps().restarted();
    let chunk = tampered
        .chunks
        .iter_mut()
        .find(|(k, _)| k.chunk == 0)
        .map(|(_, c)| c)
        .expect("chunk 0");
    // Another of its backends in position 0: still valid ids, wrong table.
    let other = chunk
        .backend_ids
        .iter()
        .copied()
        .find(|id| *id != chunk.backend_ids[0])
        .expect("three backends");
    chunk.backend_ids[0] = other;
    let mut w = maglev_writer(tampered, SMALL);
    assert_eq!(w.sync([&fe]).upserted, 1);
    assert_eq!(table_addresses(&w, &key), want);
    assert_consistent(&w);

    // A missing chunk: the master can't be trusted either.
    let mut incomplete = first.maps().restarted();
    let gone = *incomplete.chunks.keys().max().expect("a chunk");
    incomplete.chunks.remove(&gone);
    incomplete.state.maglev.remove(&gone);
    let mut w = maglev_writer(incomplete, SMALL);
    w.sync([&fe]);
    assert_eq!(table_addresses(&w, &key), want);
    // The pinned table was broken before the writer started; it stays so
    // only until the master entry flips to the rebuilt one.
    assert!(
        w.maps()
            .violations
            .iter()
            .all(|v| v.contains("generation 0 chunk 1 missing") && v.contains("put_maglev_chunk")),
        "{:#?}",
        w.maps().violations
    );
    assert!(w.maps().settled_violations().is_empty());
}

#[test]
fn chunks_nobody_uses_are_removed_at_start_up() {
    let fe = node_port(&[10]);
    let mut first = maglev_writer(FakeMaps::default(), SMALL);
    first.sync([&fe]);
    let mut pinned = first.maps().restarted();
    let live = *pinned.chunks.keys().next().expect("a chunk");
    let content = pinned.chunks[&live];
    // The other generation (a crash before its deletion) and a table of a
    // frontend that is gone.
    for stale in [
        MaglevKey {
            generation: 1 - live.generation,
            ..live
        },
        MaglevKey {
            rev_nat_id: 999,
            ..live
        },
    ] {
        pinned.chunks.insert(stale, content);
        pinned.state.maglev.insert(stale);
    }
    let mut w = maglev_writer(pinned, SMALL);
    let desired: HashSet<FrontendKey> = [fe.key].into();
    w.prefill(&BTreeMap::from([(fe.key, Some(fe.clone()))]));
    w.finish_sync(&desired);
    assert_eq!(w.maps().chunks.len(), 2, "only the live table's two chunks");
    assert_consistent(&w);
}

#[test]
fn start_up_writes_all_chunks_after_slots_and_before_masters() {
    // A previous run pinned a frontend that is gone now.
    let gone = {
        let mut fe = frontend(external([198, 18, 150, 9], 80), &[(90, 80)]);
        fe.kind = FrontendKind::LoadBalancer;
        fe
    };
    let mut first = maglev_writer(FakeMaps::default(), SMALL);
    first.sync([&gone]);
    let mut w = maglev_writer(first.maps().restarted(), SMALL);

    let fresh: Vec<Frontend> = (0..5u8)
        .map(|i| {
            let mut fe = frontend(external([198, 18, 150, i], 80), &[(10 + i, 80), (20, 80)]);
            fe.kind = FrontendKind::LoadBalancer;
            fe
        })
        .collect();
    let changes: BTreeMap<FrontendKey, Option<Frontend>> =
        fresh.iter().map(|fe| (fe.key, Some(fe.clone()))).collect();
    w.prefill(&changes);
    let log = &w.maps().log;
    let last = |op: &str| log.iter().rposition(|o| *o == op);
    let first_of = |op: &str| log.iter().position(|o| *o == op);
    assert!(last("put_slot") < first_of("put_chunk"), "{log:?}");
    assert!(last("put_chunk") < first_of("put_master"), "{log:?}");
    assert_eq!(log.iter().filter(|o| **o == "put_chunk").count(), 10);
    assert_eq!(
        table_addresses(&w, &gone.key).map(|t| t.len()),
        Some(SMALL as usize),
        "kept mid-scan"
    );

    let desired: HashSet<FrontendKey> = changes.keys().copied().collect();
    w.finish_sync(&desired);
    assert!(table_addresses(&w, &gone.key).is_none());
    assert_eq!(
        w.maps().chunks.len(),
        10,
        "the gone frontend's table went with it"
    );
    for fe in &fresh {
        assert_eq!(
            table_addresses(&w, &fe.key).map(|t| t.len()),
            Some(SMALL as usize)
        );
    }
    assert_consistent(&w);
}

#[test]
fn failures_anywhere_in_a_maglev_update_leave_nothing_half_written() {
    let fe = |backends: &[u8]| node_port(backends);
    // Count the ops of one update, then fail each of them in turn.
    let mut probe = maglev_writer(FakeMaps::default(), SMALL);
    probe.sync([&fe(&[10, 11])]);
    let before = probe.maps().ops;
    apply_one(&mut probe, &fe(&[11, 12]));
    let update_ops = probe.maps().ops - before;
    assert!(update_ops >= 6, "{:?}", probe.maps().log);
    for fail_at in 0..update_ops {
        let mut w = maglev_writer(FakeMaps::default(), SMALL);
        w.sync([&fe(&[10, 11])]);
        w.maps_mut_for_test().fail_at = Some(fail_at);
        let stats = w.apply(&BTreeMap::from([(fe(&[]).key, Some(fe(&[11, 12])))]));
        assert!(
            w.maps().violations.is_empty(),
            "fail_at {fail_at}: {:#?}",
            w.maps().violations
        );
        if stats.failed > 0 {
            assert!(
                w.maps().state.services.is_empty() && w.maps().chunks.is_empty(),
                "fail_at {fail_at}: a failed frontend is removed entirely"
            );
        }
        // The retry puts everything right.
        apply_one(&mut w, &fe(&[11, 12]));
        assert_consistent(&w);
        assert_eq!(w.failed().count(), 0);
        assert_eq!(
            table_addresses(&w, &fe(&[]).key).map(|t| t.len()),
            Some(SMALL as usize),
            "fail_at {fail_at}"
        );
    }
    // The same in the start-up batch.
    let fes: Vec<Frontend> = (0..4u8)
        .map(|i| {
            let mut f = frontend(external([198, 18, 150, i], 80), &[(10, 80), (20 + i, 80)]);
            f.kind = FrontendKind::LoadBalancer;
            f
        })
        .collect();
    for fail_at in [0, 3, 10, 13, 17, 20, 25] {
        let mut w = maglev_writer(FakeMaps::default(), SMALL);
        w.maps_mut_for_test().fail_at = Some(fail_at);
        let stats = w.sync(&fes);
        assert_eq!(stats.failed, 0, "retried one at a time (fail_at {fail_at})");
        assert_consistent(&w);
        assert_eq!(w.maps().chunks.len(), 8, "fail_at {fail_at}");
    }
}

#[test]
fn a_full_maglev_map_degrades_to_random_choice_instead_of_failing_the_frontend() {
    // Room for one table of two chunks and a half: the second frontend's
    // table does not fit.
    let maps = FakeMaps {
        chunk_capacity: Some(3),
        ..FakeMaps::default()
    };
    let mut w = maglev_writer(maps, SMALL);
    let first = node_port(&[10, 11]);
    let mut second = frontend(external([198, 18, 150, 1], 80), &[(20, 80), (21, 80)]);
    second.kind = FrontendKind::LoadBalancer;
    let stats = w.sync([&first, &second]);
    assert_eq!(stats.failed, 0, "both frontends are served");
    assert!(w.maps().violations.is_empty(), "{:#?}", w.maps().violations);
    // Whichever is written first gets the room; the other is served from
    // its slots, without a table.
    let with_table: Vec<bool> = [&first, &second]
        .iter()
        .map(|fe| table_addresses(&w, &fe.key).is_some())
        .collect();
    assert_eq!(
        with_table.iter().filter(|t| **t).count(),
        1,
        "one table fits: {with_table:?}"
    );
    for fe in [&first, &second] {
        let master = w.maps().state.services[&service_key(&fe.key, 0)];
        assert_eq!(master.count, 2, "{} is served", fe.key);
    }
    assert_eq!(w.maps().chunks.len(), 2, "no partial table left behind");
}

#[test]
fn table_sizes_are_checked() {
    let w = Writer::new(FakeMaps::default()).expect("snapshot");
    assert!(w.with_maglev_table_size(16_383).is_err(), "not prime");
    let w = Writer::new(FakeMaps::default()).expect("snapshot");
    assert!(w.with_maglev_table_size(7).is_err(), "too small");
    let w = Writer::new(FakeMaps::default()).expect("snapshot");
    assert!(w
        .with_maglev_table_size(MAGLEV_CHUNK as u32 * 1024)
        .is_err());
}
