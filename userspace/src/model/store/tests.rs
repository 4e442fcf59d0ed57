use std::net::Ipv4Addr;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::model::fixtures::{parsed, ServiceBuilder, SliceBuilder, TargetPort};
use crate::model::types::{BackendAddr, HealthCheck, Protocol};
use crate::source::{Location, SourceError};

fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("m/{name}"))
}

fn key(address: &str, port: u16, protocol: Protocol) -> FrontendKey {
    FrontendKey::internal(address.parse().expect("test address"), port, protocol)
}

const WEB_IP: &str = "198.18.200.10";

fn web() -> ServiceBuilder {
    ServiceBuilder::new("default", "web")
        .cluster_ip(WEB_IP)
        .port("http", 80, "TCP", TargetPort::Name("web"))
}

fn web_slice(name: &str) -> SliceBuilder {
    SliceBuilder::for_service("default", "web", name).port(Some("http"), 8080, "TCP")
}

fn svc(namespace: &str, name: &str, ip: &str) -> ServiceBuilder {
    ServiceBuilder::new(namespace, name)
        .cluster_ip(ip)
        .port("", 80, "TCP", TargetPort::Unset)
}

fn slice_for(namespace: &str, service: &str, name: &str) -> SliceBuilder {
    SliceBuilder::for_service(namespace, service, name).port(None, 8080, "TCP")
}

fn render(frontend: &Frontend) -> String {
    let backends: Vec<String> = frontend.backends.iter().map(ToString::to_string).collect();
    format!(
        "{} {} [{}]",
        frontend.service,
        frontend.port_name,
        backends.join(", ")
    )
}

/// The changed keys and their new value, rendered.
fn summary(changes: &Changes) -> Vec<(String, Option<String>)> {
    changes
        .frontends
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_ref().map(render)))
        .collect()
}

fn errors(changes: &Changes) -> Vec<String> {
    changes.errors.iter().map(ToString::to_string).collect()
}

fn state(store: &ServiceStore) -> BTreeMap<String, String> {
    store
        .frontends()
        .map(|f| (f.key.to_string(), render(&f)))
        .collect()
}

fn one(k: &str, v: Option<&str>) -> Vec<(String, Option<String>)> {
    vec![(k.to_owned(), v.map(str::to_owned))]
}

#[test]
fn service_then_slices_then_removals() {
    let mut store = ServiceStore::new();
    let changes = store.apply_file(&path("web.yaml"), &parsed(vec![web().object()]));
    assert!(changes.errors.is_empty());
    assert_eq!(
        summary(&changes),
        one("198.18.200.10:80/TCP", Some("default/web http []"))
    );

    let changes = store.apply_file(
        &path("web-slice.yaml"),
        &parsed(vec![web_slice("web-1")
            .ready("10.1.0.1")
            .ready("10.1.0.2")
            .object()]),
    );
    assert_eq!(
        summary(&changes),
        one(
            "198.18.200.10:80/TCP",
            Some("default/web http [10.1.0.1:8080, 10.1.0.2:8080]")
        )
    );
    assert_eq!(store.len(), 1);

    let changes = store.remove_file(&path("web-slice.yaml"));
    assert_eq!(
        summary(&changes),
        one("198.18.200.10:80/TCP", Some("default/web http []"))
    );

    let changes = store.remove_file(&path("web.yaml"));
    assert_eq!(summary(&changes), one("198.18.200.10:80/TCP", None));
    assert!(store.is_empty());
    assert!(store.remove_file(&path("web.yaml")).is_empty());
    assert!(store.remove_file(&path("never.yaml")).is_empty());
}

#[test]
fn slice_before_service_and_slice_update_touches_only_its_service() {
    let mut store = ServiceStore::new();
    let slices = parsed(vec![
        slice_for("default", "a", "a-1").ready("10.1.0.1").object(),
        slice_for("default", "b", "b-1").ready("10.2.0.1").object(),
    ]);
    // Slices for Services that do not exist yet: no frontends.
    assert!(store.apply_file(&path("slices.yaml"), &slices).is_empty());
    let services = parsed(vec![
        svc("default", "a", "10.0.0.1").object(),
        svc("default", "b", "10.0.0.2").object(),
    ]);
    let changes = store.apply_file(&path("services.yaml"), &services);
    assert_eq!(
        summary(&changes),
        [
            (
                "10.0.0.1:80/TCP".to_owned(),
                Some("default/a  [10.1.0.1:8080]".to_owned())
            ),
            (
                "10.0.0.2:80/TCP".to_owned(),
                Some("default/b  [10.2.0.1:8080]".to_owned())
            ),
        ]
    );

    let slices = parsed(vec![
        slice_for("default", "a", "a-1")
            .ready("10.1.0.1")
            .ready("10.1.0.9")
            .object(),
        slice_for("default", "b", "b-1").ready("10.2.0.1").object(),
    ]);
    let changes = store.apply_file(&path("slices.yaml"), &slices);
    assert_eq!(
        summary(&changes),
        one(
            "10.0.0.1:80/TCP",
            Some("default/a  [10.1.0.1:8080, 10.1.0.9:8080]")
        )
    );

    // Re-applying identical content changes nothing.
    assert!(store.apply_file(&path("slices.yaml"), &slices).is_empty());
    assert!(store
        .apply_file(&path("services.yaml"), &services)
        .is_empty());
}

#[test]
fn several_slices_in_several_files_are_merged() {
    let mut store = ServiceStore::new();
    store.apply_file(&path("web.yaml"), &parsed(vec![web().object()]));
    store.apply_file(
        &path("s1.yaml"),
        &parsed(vec![web_slice("web-1").ready("10.1.0.1").object()]),
    );
    let changes = store.apply_file(
        &path("s2.yaml"),
        &parsed(vec![web_slice("web-2")
            .ready("10.1.0.2")
            .ready("10.1.0.1")
            .object()]),
    );
    assert_eq!(
        summary(&changes),
        one(
            "198.18.200.10:80/TCP",
            Some("default/web http [10.1.0.1:8080, 10.1.0.2:8080]")
        )
    );
    let changes = store.remove_file(&path("s1.yaml"));
    // 10.1.0.1 is still in web-2.
    assert!(changes.frontends.is_empty(), "{:?}", summary(&changes));
    let changes = store.remove_file(&path("s2.yaml"));
    assert_eq!(
        summary(&changes),
        one("198.18.200.10:80/TCP", Some("default/web http []"))
    );
}

#[test]
fn slices_in_other_namespaces_or_for_other_services_do_not_join() {
    let mut store = ServiceStore::new();
    store.apply_file(&path("web.yaml"), &parsed(vec![web().object()]));
    let changes = store.apply_file(
        &path("s.yaml"),
        &parsed(vec![
            SliceBuilder::for_service("other", "web", "w")
                .port(Some("http"), 8080, "TCP")
                .ready("10.9.0.1")
                .object(),
            SliceBuilder::for_service("default", "web2", "w")
                .port(Some("http"), 8080, "TCP")
                .ready("10.9.0.2")
                .object(),
            SliceBuilder::new("default", "unlabelled")
                .port(Some("http"), 8080, "TCP")
                .ready("10.9.0.3")
                .object(),
        ]),
    );
    assert!(changes.is_empty(), "{:?}", summary(&changes));
    assert_eq!(state(&store)["198.18.200.10:80/TCP"], "default/web http []");
}

#[test]
fn slice_relabelled_to_another_service_moves_its_endpoints() {
    let mut store = ServiceStore::new();
    store.apply_file(
        &path("svc.yaml"),
        &parsed(vec![
            svc("default", "a", "10.0.0.1").object(),
            svc("default", "b", "10.0.0.2").object(),
        ]),
    );
    store.apply_file(
        &path("s.yaml"),
        &parsed(vec![slice_for("default", "a", "s")
            .ready("10.1.0.1")
            .object()]),
    );
    let changes = store.apply_file(
        &path("s.yaml"),
        &parsed(vec![slice_for("default", "b", "s")
            .ready("10.1.0.1")
            .object()]),
    );
    assert_eq!(
        summary(&changes),
        [
            (
                "10.0.0.1:80/TCP".to_owned(),
                Some("default/a  []".to_owned())
            ),
            (
                "10.0.0.2:80/TCP".to_owned(),
                Some("default/b  [10.1.0.1:8080]".to_owned())
            ),
        ]
    );
}

#[test]
fn terminating_fallback_and_recovery() {
    let mut store = ServiceStore::new();
    store.apply_file(&path("web.yaml"), &parsed(vec![web().object()]));
    let draining = web_slice("web-1")
        .endpoint("10.1.0.1", Some(false), Some(true), Some(true), None)
        .endpoint("10.1.0.2", Some(false), Some(false), Some(true), None);
    let changes = store.apply_file(&path("s.yaml"), &parsed(vec![draining.object()]));
    assert_eq!(
        summary(&changes),
        one(
            "198.18.200.10:80/TCP",
            Some("default/web http [10.1.0.1:8080 (terminating)]")
        )
    );
    let frontend = store
        .frontend(&key(WEB_IP, 80, Protocol::Tcp))
        .expect("frontend");
    assert_eq!(
        frontend.backends,
        [BackendAddr {
            address: Ipv4Addr::new(10, 1, 0, 1),
            port: 8080,
            terminating: true,
            local: false,
        }]
    );
    // A new ready endpoint in another slice replaces the terminating one.
    let changes = store.apply_file(
        &path("s2.yaml"),
        &parsed(vec![web_slice("web-2").ready("10.1.0.3").object()]),
    );
    assert_eq!(
        summary(&changes),
        one(
            "198.18.200.10:80/TCP",
            Some("default/web http [10.1.0.3:8080]")
        )
    );
}

#[test]
fn named_target_port_and_multi_port_and_protocols() {
    let mut store = ServiceStore::new();
    let service = ServiceBuilder::new("kube-system", "dns")
        .cluster_ip("10.96.0.10")
        .port("dns", 53, "UDP", TargetPort::Name("dns"))
        .port("dns-tcp", 53, "TCP", TargetPort::Name("dns-tcp"))
        .port("metrics", 9153, "TCP", TargetPort::Name("metrics"));
    let slice = SliceBuilder::for_service("kube-system", "dns", "dns-1")
        .port(Some("dns"), 53, "UDP")
        .port(Some("dns-tcp"), 53, "TCP")
        // Hand-written slice naming the container port differently.
        .port(Some("prom"), 9153, "TCP")
        .ready("10.1.0.1");
    let changes = store.apply_file(
        &path("dns.yaml"),
        &parsed(vec![service.object(), slice.object()]),
    );
    assert!(changes.errors.is_empty(), "{:?}", errors(&changes));
    assert_eq!(
        summary(&changes),
        [
            (
                "10.96.0.10:53/TCP".to_owned(),
                Some("kube-system/dns dns-tcp [10.1.0.1:53]".to_owned())
            ),
            (
                "10.96.0.10:53/UDP".to_owned(),
                Some("kube-system/dns dns [10.1.0.1:53]".to_owned())
            ),
            (
                "10.96.0.10:9153/TCP".to_owned(),
                Some("kube-system/dns metrics []".to_owned())
            ),
        ]
    );

    // targetPort name fallback: the service port "metrics" targets "prom".
    let service = ServiceBuilder::new("kube-system", "dns")
        .cluster_ip("10.96.0.10")
        .port("dns", 53, "UDP", TargetPort::Name("dns"))
        .port("dns-tcp", 53, "TCP", TargetPort::Name("dns-tcp"))
        .port("metrics", 9153, "TCP", TargetPort::Name("prom"));
    let slice = SliceBuilder::for_service("kube-system", "dns", "dns-1")
        .port(Some("dns"), 53, "UDP")
        .port(Some("dns-tcp"), 53, "TCP")
        .port(Some("prom"), 9153, "TCP")
        .ready("10.1.0.1");
    let changes = store.apply_file(
        &path("dns.yaml"),
        &parsed(vec![service.object(), slice.object()]),
    );
    assert_eq!(
        summary(&changes),
        one(
            "10.96.0.10:9153/TCP",
            Some("kube-system/dns metrics [10.1.0.1:9153]")
        )
    );
}

#[test]
fn ignored_services_produce_nothing_and_no_errors() {
    let mut store = ServiceStore::new();
    let changes = store.apply_file(
        &path("ignored.yaml"),
        &parsed(vec![
            svc("default", "headless", "None").object(),
            ServiceBuilder::new("default", "empty")
                .cluster_ip("")
                .port("", 80, "TCP", TargetPort::Unset)
                .object(),
            svc("default", "ext", "10.0.0.5")
                .type_("ExternalName")
                .object(),
            svc("default", "other-proxy", "10.0.0.6")
                .label("service.kubernetes.io/service-proxy-name", "cilium")
                .object(),
            svc("default", "v6", "fd00::10").object(),
            slice_for("default", "headless", "h")
                .ready("10.1.0.1")
                .object(),
        ]),
    );
    assert!(
        changes.is_empty(),
        "{:?} {:?}",
        summary(&changes),
        errors(&changes)
    );
    assert!(store.is_empty());

    // An ignored Service turned into a normal one starts being served.
    let changes = store.apply_file(
        &path("ignored.yaml"),
        &parsed(vec![svc("default", "ext", "10.0.0.5").object()]),
    );
    assert_eq!(
        summary(&changes),
        one("10.0.0.5:80/TCP", Some("default/ext  []"))
    );
}

#[test]
fn invalid_service_next_to_valid_one() {
    let mut store = ServiceStore::new();
    let changes = store.apply_file(
        &path("mixed.yaml"),
        &parsed(vec![
            svc("default", "bad", "10.0.0.300").object(),
            svc("default", "good", "10.0.0.2").object(),
            ServiceBuilder::new("default", "sctp")
                .cluster_ip("10.0.0.3")
                .port("s", 9000, "SCTP", TargetPort::Unset)
                .port("t", 9001, "TCP", TargetPort::Unset)
                .object(),
        ]),
    );
    assert_eq!(
        summary(&changes),
        [
            (
                "10.0.0.2:80/TCP".to_owned(),
                Some("default/good  []".to_owned())
            ),
            (
                "10.0.0.3:9001/TCP".to_owned(),
                Some("default/sctp t []".to_owned())
            ),
        ]
    );
    assert_eq!(
        errors(&changes),
        [
            "m/mixed.yaml: Service default/bad: spec.clusterIP: invalid IP address \"10.0.0.300\"",
            "m/mixed.yaml: Service default/sctp: spec.ports[0]: protocol SCTP is not supported; port 9000 not served",
        ]
    );
}

#[test]
fn frontend_conflicts_older_wins_and_the_other_takes_over() {
    let mut store = ServiceStore::new();
    let newer = svc("default", "newer", "10.0.0.1").created(2_000);
    let older = svc("zzz", "older", "10.0.0.1").created(1_000);
    let changes = store.apply_file(&path("newer.yaml"), &parsed(vec![newer.clone().object()]));
    assert_eq!(
        summary(&changes),
        one("10.0.0.1:80/TCP", Some("default/newer  []"))
    );

    // The older Service arrives later but wins; the newer is reported.
    let changes = store.apply_file(&path("older.yaml"), &parsed(vec![older.object()]));
    assert_eq!(
        summary(&changes),
        one("10.0.0.1:80/TCP", Some("zzz/older  []"))
    );
    assert_eq!(
        errors(&changes),
        [
            "m/newer.yaml: Service default/newer: frontend 10.0.0.1:80/TCP is already used by \
          Service zzz/older (from m/older.yaml); not serving it for default/newer"
        ]
    );

    // Endpoint changes of the winner do not repeat the conflict error…
    let changes = store.apply_file(
        &path("s.yaml"),
        &parsed(vec![slice_for("zzz", "older", "o")
            .ready("10.1.0.1")
            .object()]),
    );
    assert!(changes.errors.is_empty(), "{:?}", errors(&changes));
    // …re-applying the loser does, and changes nothing.
    let changes = store.apply_file(&path("newer.yaml"), &parsed(vec![newer.object()]));
    assert!(changes.frontends.is_empty());
    assert_eq!(changes.errors.len(), 1);

    // The winner goes away: the other takes over.
    let changes = store.remove_file(&path("older.yaml"));
    assert_eq!(
        summary(&changes),
        one("10.0.0.1:80/TCP", Some("default/newer  []"))
    );
    assert!(changes.errors.is_empty());
}

#[test]
fn conflicts_without_timestamps_use_namespace_name_order_and_only_shared_keys() {
    let mut store = ServiceStore::new();
    let b = ServiceBuilder::new("default", "b")
        .cluster_ip("10.0.0.1")
        .port("", 80, "TCP", TargetPort::Unset)
        .port("", 81, "TCP", TargetPort::Unset);
    store.apply_file(&path("b.yaml"), &parsed(vec![b.object()]));
    let changes = store.apply_file(
        &path("a.yaml"),
        &parsed(vec![svc("default", "a", "10.0.0.1").object()]),
    );
    // Only port 80 is contested; b keeps 81.
    assert_eq!(
        summary(&changes),
        one("10.0.0.1:80/TCP", Some("default/a  []"))
    );
    assert_eq!(changes.errors.len(), 1);
    // A timestamp beats no timestamp.
    let changes = store.apply_file(
        &path("b.yaml"),
        &parsed(vec![svc("default", "b", "10.0.0.1").created(5).object()]),
    );
    assert_eq!(
        summary(&changes),
        [
            (
                "10.0.0.1:80/TCP".to_owned(),
                Some("default/b  []".to_owned())
            ),
            ("10.0.0.1:81/TCP".to_owned(), None),
        ]
    );
    assert_eq!(
        errors(&changes),
        [
            "m/a.yaml: Service default/a: frontend 10.0.0.1:80/TCP is already used by \
          Service default/b (from m/b.yaml); not serving it for default/a"
        ]
    );
}

#[test]
fn same_object_in_two_files_last_applied_wins_removal_restores() {
    let mut store = ServiceStore::new();
    store.apply_file(
        &path("a.yaml"),
        &parsed(vec![svc("default", "web", "10.0.0.1").object()]),
    );
    let changes = store.apply_file(
        &path("b.yaml"),
        &parsed(vec![svc("default", "web", "10.0.0.2").object()]),
    );
    assert_eq!(
        summary(&changes),
        [
            ("10.0.0.1:80/TCP".to_owned(), None),
            (
                "10.0.0.2:80/TCP".to_owned(),
                Some("default/web  []".to_owned())
            ),
        ]
    );
    assert_eq!(
        errors(&changes),
        ["m/b.yaml: Service default/web: also defined in m/a.yaml; using this definition (applied last)"]
    );
    // Removing the winner restores the other definition.
    let changes = store.remove_file(&path("b.yaml"));
    assert_eq!(
        summary(&changes),
        [
            (
                "10.0.0.1:80/TCP".to_owned(),
                Some("default/web  []".to_owned())
            ),
            ("10.0.0.2:80/TCP".to_owned(), None),
        ]
    );

    // Same for slices; removing the losing file changes nothing.
    store.apply_file(
        &path("s1.yaml"),
        &parsed(vec![slice_for("default", "web", "s")
            .ready("10.1.0.1")
            .object()]),
    );
    let changes = store.apply_file(
        &path("s2.yaml"),
        &parsed(vec![slice_for("default", "web", "s")
            .ready("10.1.0.2")
            .object()]),
    );
    assert_eq!(
        summary(&changes),
        one("10.0.0.1:80/TCP", Some("default/web  [10.1.0.2:8080]"))
    );
    assert_eq!(
        errors(&changes),
        ["m/s2.yaml: EndpointSlice default/s: also defined in m/s1.yaml; using this definition (applied last)"]
    );
    assert!(store.remove_file(&path("s1.yaml")).frontends.is_empty());
    let changes = store.remove_file(&path("s2.yaml"));
    assert_eq!(
        summary(&changes),
        one("10.0.0.1:80/TCP", Some("default/web  []"))
    );
}

#[test]
fn duplicate_within_one_file_later_document_wins() {
    let mut store = ServiceStore::new();
    let changes = store.apply_file(
        &path("a.yaml"),
        &parsed(vec![
            svc("default", "web", "10.0.0.1").object(),
            svc("default", "web", "10.0.0.2").object(),
        ]),
    );
    assert_eq!(
        summary(&changes),
        one("10.0.0.2:80/TCP", Some("default/web  []"))
    );
    assert_eq!(changes.errors.len(), 1);
}

fn document_error(file: &str, object: Option<ObjectRef>) -> SourceError {
    SourceError::document(
        Location {
            path: path(file),
            document: 1,
            item: None,
            line: Some(1),
        },
        object,
        "typo".into(),
    )
}

#[test]
fn a_broken_edit_keeps_the_previous_definition() {
    let mut store = ServiceStore::new();
    let file = path("app.yaml");
    store.apply_file(
        &file,
        &parsed(vec![
            svc("default", "a", "10.0.0.1").object(),
            svc("default", "b", "10.0.0.2").object(),
            slice_for("default", "a", "a-1").ready("10.1.0.1").object(),
        ]),
    );
    let before = state(&store);

    // `a` now has a type error (attributed): `a` is kept, `b` updated.
    let mut edit = parsed(vec![
        svc("default", "b", "10.0.0.3").object(),
        slice_for("default", "a", "a-1").ready("10.1.0.1").object(),
    ]);
    edit.errors.push(document_error(
        "app.yaml",
        Some(ObjectRef::namespaced(Kind::Service, "default", "a")),
    ));
    let changes = store.apply_file(&file, &edit);
    assert_eq!(
        summary(&changes),
        [
            ("10.0.0.2:80/TCP".to_owned(), None),
            (
                "10.0.0.3:80/TCP".to_owned(),
                Some("default/b  []".to_owned())
            ),
        ]
    );
    assert_eq!(
        errors(&changes),
        ["m/app.yaml: Service default/a: new definition unusable; keeping the previous one"]
    );
    assert_eq!(state(&store)["10.0.0.1:80/TCP"], before["10.0.0.1:80/TCP"]);

    // A syntax error naming nothing: everything missing is kept.
    let mut broken = parsed(vec![]);
    broken.errors.push(document_error("app.yaml", None));
    let changes = store.apply_file(&file, &broken);
    assert!(changes.frontends.is_empty());
    assert_eq!(changes.errors.len(), 3, "{:?}", errors(&changes));

    // The model rejecting the new version keeps the old one too.
    let changes = store.apply_file(
        &file,
        &parsed(vec![
            svc("default", "a", "not-an-ip").object(),
            svc("default", "b", "10.0.0.3").object(),
            slice_for("default", "a", "a-1").ready("10.1.0.1").object(),
        ]),
    );
    assert!(changes.frontends.is_empty());
    assert_eq!(
        errors(&changes),
        [
            "m/app.yaml: Service default/a: spec.clusterIP: invalid IP address \"not-an-ip\"",
            "m/app.yaml: Service default/a: new definition unusable; keeping the previous one",
        ]
    );

    // Fixed file without `a`: now it really goes.
    let changes = store.apply_file(
        &file,
        &parsed(vec![svc("default", "b", "10.0.0.3").object()]),
    );
    assert_eq!(summary(&changes), one("10.0.0.1:80/TCP", None));
    assert!(changes.errors.is_empty());

    // A brand-new invalid Service is simply skipped.
    let changes = store.apply_file(
        &path("new.yaml"),
        &parsed(vec![svc("default", "c", "x").object()]),
    );
    assert!(changes.frontends.is_empty());
    assert_eq!(changes.errors.len(), 1);
}

#[test]
fn apply_batch_removes_first_so_moves_are_not_duplicates() {
    let mut store = ServiceStore::new();
    store.apply_file(
        &path("old.yaml"),
        &parsed(vec![svc("default", "web", "10.0.0.1").object()]),
    );
    let batch = DirChange {
        changed: vec![(
            path("new.yaml"),
            parsed(vec![svc("default", "web", "10.0.0.1").object()]),
        )],
        removed: vec![path("old.yaml")],
        synced: true,
    };
    let changes = store.apply_batch(&batch);
    assert!(changes.errors.is_empty(), "{:?}", errors(&changes));
    assert_eq!(store.len(), 1);
    assert!(store.remove_file(&path("old.yaml")).is_empty());
}

#[test]
fn internal_traffic_policy_local_uses_the_store_node_name() {
    let service = svc("default", "web", "10.0.0.1").internal_traffic_policy("Local");
    let slice = slice_for("default", "web", "s")
        .endpoint("10.1.0.1", None, None, None, Some("node-a"))
        .endpoint("10.1.0.2", None, None, None, Some("node-b"));
    let objects = parsed(vec![service.object(), slice.object()]);
    let mut on_a = ServiceStore::with_node_name("node-a");
    assert_eq!(
        summary(&on_a.apply_file(&path("f.yaml"), &objects)),
        one("10.0.0.1:80/TCP", Some("default/web  [10.1.0.1:8080]"))
    );
    let mut unknown_node = ServiceStore::new();
    assert_eq!(
        summary(&unknown_node.apply_file(&path("f.yaml"), &objects)),
        one("10.0.0.1:80/TCP", Some("default/web  []"))
    );
}

#[test]
fn affinity_is_carried_to_frontends() {
    let mut store = ServiceStore::new();
    store.apply_file(
        &path("f.yaml"),
        &parsed(vec![svc("default", "web", "10.0.0.1")
            .client_ip_affinity(None)
            .object()]),
    );
    let frontend = store
        .frontend(&key("10.0.0.1", 80, Protocol::Tcp))
        .expect("frontend");
    assert_eq!(frontend.affinity_timeout, 10_800);
}

fn lb(namespace: &str, name: &str, cluster_ip: &str) -> ServiceBuilder {
    ServiceBuilder::new(namespace, name)
        .cluster_ip(cluster_ip)
        .type_("LoadBalancer")
        .port("", 80, "TCP", TargetPort::Unset)
        .node_port(30080)
}

fn external_key(address: &str, port: u16) -> FrontendKey {
    FrontendKey::external(address.parse().expect("test address"), port, Protocol::Tcp)
}

#[test]
fn node_port_load_balancer_and_external_ips_with_local_policy() {
    let mut store = ServiceStore::with_node_name("node-a");
    let service = lb("default", "web", "10.0.0.1")
        .external_traffic_policy("Local")
        .health_check_node_port(32000)
        .ingress_ip("198.18.150.1")
        .external_ips(&["198.18.100.1"]);
    let slice = slice_for("default", "web", "web-1")
        .ready_on("10.1.0.1", "node-a")
        .ready_on("10.2.0.1", "node-b");
    let changes = store.apply_file(
        &path("web.yaml"),
        &parsed(vec![service.object(), slice.object()]),
    );
    assert!(changes.errors.is_empty(), "{:?}", errors(&changes));
    let all = "default/web  [10.1.0.1:8080, 10.2.0.1:8080]";
    let local = "default/web  [10.1.0.1:8080]";
    let want = |a: &str, b: &str| {
        vec![
            ("0.0.0.0:30080/TCP".to_owned(), Some(a.to_owned())),
            ("0.0.0.0:30080/TCP external".to_owned(), Some(b.to_owned())),
            ("10.0.0.1:80/TCP".to_owned(), Some(a.to_owned())),
            ("198.18.100.1:80/TCP".to_owned(), Some(a.to_owned())),
            (
                "198.18.100.1:80/TCP external".to_owned(),
                Some(b.to_owned()),
            ),
            ("198.18.150.1:80/TCP".to_owned(), Some(a.to_owned())),
            (
                "198.18.150.1:80/TCP external".to_owned(),
                Some(b.to_owned()),
            ),
        ]
    };
    assert_eq!(summary(&changes), want(all, local));
    let external = store
        .frontend(&external_key("0.0.0.0", 30080))
        .expect("external NodePort frontend");
    assert_eq!(external.kind, FrontendKind::NodePort);
    assert!(external.external_local);
    assert!(external.backends.iter().all(|b| b.local));
    let internal = store
        .frontend(&key("198.18.150.1", 80, Protocol::Tcp))
        .expect("internal LB frontend");
    assert_eq!(internal.kind, FrontendKind::LoadBalancer);
    assert!(
        !internal.external_local,
        "in-cluster clients are not limited"
    );
    assert_eq!(
        internal
            .backends
            .iter()
            .map(|b| b.local)
            .collect::<Vec<_>>(),
        [true, false],
        "the local flag follows nodeName"
    );

    // The local endpoint starts terminating: external frontends fall back
    // to it, the others use the remote ready one.
    let slice = slice_for("default", "web", "web-1")
        .terminating_on("10.1.0.1", "node-a")
        .ready_on("10.2.0.1", "node-b");
    let changes = store.apply_file(
        &path("web.yaml"),
        &parsed(vec![
            lb("default", "web", "10.0.0.1")
                .external_traffic_policy("Local")
                .health_check_node_port(32000)
                .ingress_ip("198.18.150.1")
                .external_ips(&["198.18.100.1"])
                .object(),
            slice.object(),
        ]),
    );
    assert_eq!(
        summary(&changes),
        want(
            "default/web  [10.2.0.1:8080]",
            "default/web  [10.1.0.1:8080 (terminating)]"
        )
    );
    assert!(changes.health_checks_changed);
    assert_eq!(
        store.health_checks(),
        [HealthCheck {
            service: ServiceId::new("default", "web"),
            node_port: 32000,
            local_endpoints: 0,
        }],
        "only terminating local endpoints: the health check fails"
    );
}

#[test]
fn health_checks_count_ready_local_endpoints_and_report_changes() {
    let mut store = ServiceStore::with_node_name("node-a");
    let service = |hc: i32| {
        lb("default", "web", "10.0.0.1")
            .port("metrics", 9090, "TCP", TargetPort::Unset)
            .node_port(30090)
            .external_traffic_policy("Local")
            .health_check_node_port(hc)
            .object()
    };
    let changes = store.apply_file(&path("svc.yaml"), &parsed(vec![service(32000)]));
    assert!(changes.health_checks_changed);
    let check = |n| HealthCheck {
        service: ServiceId::new("default", "web"),
        node_port: 32000,
        local_endpoints: n,
    };
    assert_eq!(store.health_checks(), [check(0)]);

    // Two ports of one endpoint count once; remote, not-ready and
    // terminating endpoints not at all.
    let slice = SliceBuilder::for_service("default", "web", "web-1")
        .port(None, 8080, "TCP")
        .port(Some("metrics"), 9090, "TCP")
        .ready_on("10.1.0.1", "node-a")
        .ready_on("10.1.0.2", "node-a")
        .ready_on("10.2.0.1", "node-b")
        .endpoint(
            "10.1.0.3",
            Some(false),
            Some(false),
            Some(false),
            Some("node-a"),
        )
        .terminating_on("10.1.0.4", "node-a");
    let changes = store.apply_file(&path("slice.yaml"), &parsed(vec![slice.object()]));
    assert!(changes.health_checks_changed);
    assert_eq!(store.health_checks(), [check(2)]);

    // A slice change that does not change the count: no refetch needed.
    let slice = SliceBuilder::for_service("default", "web", "web-1")
        .port(None, 8080, "TCP")
        .ready_on("10.1.0.1", "node-a")
        .ready_on("10.1.0.2", "node-a");
    let changes = store.apply_file(&path("slice.yaml"), &parsed(vec![slice.object()]));
    assert!(!changes.frontends.is_empty());
    assert!(!changes.health_checks_changed);

    // An unrelated Service: nothing to refetch.
    let changes = store.apply_file(
        &path("other.yaml"),
        &parsed(vec![svc("default", "other", "10.0.0.2").object()]),
    );
    assert!(!changes.health_checks_changed);

    // Policy Cluster: no health check any more.
    let changes = store.apply_file(
        &path("svc.yaml"),
        &parsed(vec![lb("default", "web", "10.0.0.1").object()]),
    );
    assert!(changes.health_checks_changed);
    assert!(store.health_checks().is_empty());

    // Only LoadBalancer Services have one (NodePort + Local has none).
    let changes = store.apply_file(
        &path("np.yaml"),
        &parsed(vec![ServiceBuilder::new("default", "np")
            .cluster_ip("10.0.0.3")
            .type_("NodePort")
            .port("", 80, "TCP", TargetPort::Unset)
            .node_port(30081)
            .external_traffic_policy("Local")
            .object()]),
    );
    assert!(!changes.health_checks_changed);
    assert!(store.health_checks().is_empty());

    // Removing the Service removes its check.
    store.apply_file(&path("svc.yaml"), &parsed(vec![service(32000)]));
    assert_eq!(store.health_checks(), [check(2)]);
    let changes = store.remove_file(&path("svc.yaml"));
    assert!(changes.health_checks_changed);
    assert!(store.health_checks().is_empty());
}

#[test]
fn node_port_and_external_ip_conflicts_older_wins() {
    let mut store = ServiceStore::new();
    let older = lb("default", "older", "10.0.0.1")
        .created(1_000)
        .external_ips(&["198.18.100.1"]);
    let newer = lb("default", "newer", "10.0.0.2")
        .created(2_000)
        .ingress_ip("198.18.100.1");
    store.apply_file(&path("older.yaml"), &parsed(vec![older.object()]));
    let changes = store.apply_file(&path("newer.yaml"), &parsed(vec![newer.object()]));
    assert_eq!(
        summary(&changes),
        one("10.0.0.2:80/TCP", Some("default/newer  []")),
        "newer only gets its cluster IP"
    );
    assert_eq!(
        errors(&changes),
        [
            "m/newer.yaml: Service default/newer: frontend 0.0.0.0:30080/TCP is already used by \
             Service default/older (from m/older.yaml); not serving it for default/newer",
            "m/newer.yaml: Service default/newer: frontend 0.0.0.0:30080/TCP external is already \
             used by Service default/older (from m/older.yaml); not serving it for default/newer",
            "m/newer.yaml: Service default/newer: frontend 198.18.100.1:80/TCP is already used by \
             Service default/older (from m/older.yaml); not serving it for default/newer",
            "m/newer.yaml: Service default/newer: frontend 198.18.100.1:80/TCP external is already \
             used by Service default/older (from m/older.yaml); not serving it for default/newer",
        ]
    );
    // The older one goes: the newer takes its NodePort and address over,
    // now as a load-balancer IP.
    let changes = store.remove_file(&path("older.yaml"));
    let lb_frontend = store
        .frontend(&external_key("198.18.100.1", 80))
        .expect("taken over");
    assert_eq!(lb_frontend.kind, FrontendKind::LoadBalancer);
    assert_eq!(lb_frontend.service, ServiceId::new("default", "newer"));
    assert_eq!(changes.frontends.len(), 5, "{:?}", summary(&changes));
}

#[test]
fn bad_external_addresses_are_reported_and_the_rest_is_served() {
    let mut store = ServiceStore::new();
    let changes = store.apply_file(
        &path("web.yaml"),
        &parsed(vec![lb("default", "web", "10.0.0.1")
            .external_ips(&["198.18.100.1", "not-an-ip"])
            .ingress_ip("127.0.0.1")
            .object()]),
    );
    assert_eq!(
        errors(&changes),
        [
            "m/web.yaml: Service default/web: spec.externalIPs[1]: invalid IP address \
             \"not-an-ip\"; not served",
            "m/web.yaml: Service default/web: status.loadBalancer.ingress[0].ip: 127.0.0.1 is \
             a loopback address; not served",
        ]
    );
    let keys: Vec<String> = changes.frontends.keys().map(ToString::to_string).collect();
    assert_eq!(
        keys,
        [
            "0.0.0.0:30080/TCP",
            "0.0.0.0:30080/TCP external",
            "10.0.0.1:80/TCP",
            "198.18.100.1:80/TCP",
            "198.18.100.1:80/TCP external",
        ]
    );
}

/// A store built from scratch, applying files in the order they were last
/// applied (which decides duplicate winners).
fn rebuild(
    order: &[PathBuf],
    files: &BTreeMap<PathBuf, ParsedFile>,
) -> (BTreeMap<FrontendKey, Frontend>, Vec<HealthCheck>) {
    let mut fresh = ServiceStore::with_node_name("node-a");
    for file in order {
        fresh.apply_file(file, &files[file]);
    }
    (
        fresh.frontends().map(|f| (f.key, f)).collect(),
        fresh.health_checks(),
    )
}

/// Random operations; a "dataplane" map that only ever applies `Changes`
/// must always equal the store's full state (so no change is ever missed),
/// and the store must equal a store rebuilt from scratch.
#[test]
fn changes_never_miss_anything_random_operations() {
    let mut rng = StdRng::seed_from_u64(0x6761_6e67);
    let mut store = ServiceStore::with_node_name("node-a");
    // The same operations through the memory-lean path must agree exactly.
    let mut lean = ServiceStore::with_node_name("node-a");
    let mapper = lean.mapper();
    let mut dataplane: BTreeMap<FrontendKey, Frontend> = BTreeMap::new();
    // What a health-check server that refetches only when told would serve.
    let mut served_checks: Vec<HealthCheck> = Vec::new();
    let mut kinds: BTreeSet<(FrontendKind, bool)> = BTreeSet::new();
    let mut healthy_checks = 0;
    let mut files: BTreeMap<PathBuf, ParsedFile> = BTreeMap::new();
    let mut order: Vec<PathBuf> = Vec::new();
    let (mut conflicts, mut duplicates, mut max_frontends) = (0, 0, 0);
    for step in 0..2000 {
        let file = path(&format!("f{}.yaml", rng.random_range(0..6)));
        let changes = if rng.random_bool(0.15) {
            files.remove(&file);
            order.retain(|f| f != &file);
            lean.remove_file(&file);
            store.remove_file(&file)
        } else {
            let mut objects = Vec::new();
            for _ in 0..rng.random_range(0..4) {
                let service = format!("s{}", rng.random_range(0..5));
                let namespace = ["a", "b"][rng.random_range(0..2)];
                if rng.random_bool(0.5) {
                    // Few IPs so that conflicts happen.
                    let ip = format!("10.0.0.{}", rng.random_range(1..4));
                    // Port name and affinity vary too: every field of a
                    // frontend must be tracked, not just its backends.
                    let port_name = ["p", "pp"][rng.random_range(0..2)];
                    let mut builder = ServiceBuilder::new(namespace, &service)
                        .cluster_ip(&ip)
                        .port(port_name, 80, "TCP", TargetPort::Unset);
                    if rng.random_bool(0.3) {
                        builder = builder.client_ip_affinity(Some(rng.random_range(1..3)));
                    }
                    if rng.random_bool(0.5) {
                        builder = builder.port("q", 80, "UDP", TargetPort::Unset);
                    }
                    if rng.random_bool(0.3) {
                        builder = builder.created(rng.random_range(0..3));
                    }
                    if rng.random_bool(0.1) {
                        builder = builder.cluster_ip("None");
                    }
                    // External frontends, sharing few addresses and node
                    // ports so that they conflict too.
                    let type_ = ["ClusterIP", "NodePort", "LoadBalancer"][rng.random_range(0..3)];
                    builder = builder.type_(type_);
                    if type_ != "ClusterIP" && rng.random_bool(0.7) {
                        builder = builder.node_port(30080 + rng.random_range(0..2));
                    }
                    if rng.random_bool(0.3) {
                        let ip = format!("198.18.100.{}", rng.random_range(1..3));
                        builder = builder.external_ips(&[&ip]);
                    }
                    if type_ == "LoadBalancer" && rng.random_bool(0.5) {
                        let ip = format!("198.18.100.{}", rng.random_range(1..3));
                        let mode = ["", "VIP", "Proxy"][rng.random_range(0..3)];
                        builder = builder.ingress(&ip, mode, "");
                    }
                    if rng.random_bool(0.4) {
                        builder = builder.external_traffic_policy("Local");
                        if type_ == "LoadBalancer" && rng.random_bool(0.7) {
                            builder =
                                builder.health_check_node_port(32000 + rng.random_range(0..2));
                        }
                    }
                    objects.push(builder.object());
                } else {
                    let mut builder = SliceBuilder::for_service(
                        namespace,
                        &service,
                        &format!("{service}-{}", rng.random_range(0..2)),
                    )
                    .port(Some("p"), 8080, "TCP")
                    .port(Some("q"), 8081, "UDP");
                    for _ in 0..rng.random_range(0..3) {
                        let ip = format!("10.1.0.{}", rng.random_range(1..5));
                        let node = ["node-a", "node-b"][rng.random_range(0..2)];
                        builder = builder.endpoint(
                            &ip,
                            Some(rng.random_bool(0.7)),
                            None,
                            Some(rng.random_bool(0.3)),
                            Some(node),
                        );
                    }
                    objects.push(builder.object());
                }
            }
            let file_content = parsed(objects);
            let changes = store.apply_file(&file, &file_content);
            let mapped = ParsedFile {
                objects: file_content
                    .objects
                    .iter()
                    .cloned()
                    .map(|o| mapper(o))
                    .collect(),
                errors: Vec::new(),
            };
            assert_eq!(
                lean.apply_model_file(&file, mapped),
                changes,
                "lean path, step {step}"
            );
            files.insert(file.clone(), file_content);
            order.retain(|f| f != &file);
            order.push(file.clone());
            changes
        };
        for error in &changes.errors {
            match error {
                ModelError::Conflict { .. } => conflicts += 1,
                ModelError::Duplicate { .. } => duplicates += 1,
                _ => {}
            }
        }
        if changes.health_checks_changed {
            served_checks = store.health_checks();
        }
        for (key, value) in changes.frontends {
            match value {
                Some(frontend) => dataplane.insert(key, frontend),
                None => dataplane.remove(&key),
            };
        }
        let full: BTreeMap<FrontendKey, Frontend> = store.frontends().map(|f| (f.key, f)).collect();
        assert_eq!(dataplane, full, "step {step}");
        assert_eq!(store.len(), full.len());
        assert_eq!(served_checks, store.health_checks(), "step {step}");
        healthy_checks += served_checks
            .iter()
            .filter(|c| c.local_endpoints > 0)
            .count();
        kinds.extend(full.values().map(|f| (f.kind, f.external_local)));
        max_frontends = max_frontends.max(full.len());
        if step % 50 == 0 {
            assert_eq!(
                rebuild(&order, &files),
                (full, served_checks.clone()),
                "rebuilt at step {step}"
            );
        }
    }
    // The scenario must actually exercise the interesting paths.
    assert!(
        conflicts > 50 && duplicates > 50 && max_frontends >= 6,
        "{conflicts} {duplicates} {max_frontends}"
    );
    assert_eq!(
        kinds.len(),
        7,
        "every kind, external ones with both policies: {kinds:?}"
    );
    assert!(healthy_checks > 20, "{healthy_checks}");

    assert_eq!(rebuild(&order, &files), (dataplane, served_checks));
}
