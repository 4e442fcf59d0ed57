//! Writer tests against [`FakeMaps`], which checks after every single map
//! operation that no service is visible half-written.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use gangplank_common::{ServiceKey, BACKEND_FLAG_TERMINATING};

use super::fake::FakeMaps;
use super::writer::{service_key, Writer};
use crate::model::{BackendAddr, Frontend, FrontendKey, FrontendKind, Protocol, ServiceId};

fn key(vip: [u8; 4], port: u16, protocol: Protocol) -> FrontendKey {
    FrontendKey {
        address: Ipv4Addr::from(vip),
        port,
        protocol,
    }
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
            })
            .collect(),
        affinity_timeout: 0,
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
