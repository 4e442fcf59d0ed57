//! Tests for [`build_upstreams`]: small JSON builders for Ingresses,
//! Services and EndpointSlices, as the API server gives them.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{json, Value};

use super::*;

/// An Ingress in `ns` with a host-less rule per backend (`/b0`, `/b1`, ...);
/// each backend is `json!({"number": 80})` or `json!({"name": "http"})`
/// under the Service name.
fn ingress(ns: &str, backends: &[(&str, Value)]) -> Ingress {
    let paths: Vec<Value> = backends
        .iter()
        .enumerate()
        .map(|(i, (name, port))| {
            json!({
                "path": format!("/b{i}"),
                "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": port}},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": "ing"},
        "spec": {"rules": [{"http": {"paths": paths}}]},
    }))
    .expect("valid Ingress")
}

/// The route table of these Ingresses.
fn routes(ingresses: &[Ingress]) -> RouteTable {
    let (table, errors) = RouteTable::from_served(ingresses);
    assert!(errors.is_empty(), "{errors:?}");
    table
}

/// A ClusterIP Service with these `spec.ports`.
fn service(ns: &str, name: &str, ports: Value) -> Service {
    service_spec(ns, name, json!({"clusterIP": "10.0.0.1", "ports": ports}))
}

/// A Service with this `spec`.
fn service_spec(ns: &str, name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .expect("valid Service")
}

/// An IPv4 EndpointSlice of Service `svc` with these ports and endpoints.
fn slice(ns: &str, name: &str, svc: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    slice_typed(ns, name, svc, "IPv4", ports, endpoints)
}

/// An EndpointSlice of this address type.
fn slice_typed(
    ns: &str,
    name: &str,
    svc: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {SERVICE_NAME_LABEL: svc},
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("valid EndpointSlice")
}

/// A ready endpoint (conditions as the controller writes them).
fn ready(ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}})
}

/// An endpoint of a terminating pod that still serves.
fn serving_terminating(ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": false, "serving": true, "terminating": true}})
}

/// A not-ready endpoint that is not terminating (starting up).
fn not_ready(ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": false, "serving": false, "terminating": false}})
}

/// The backend `ns/name:port`.
fn num(ns: &str, name: &str, port: u16) -> ServiceBackend {
    ServiceBackend {
        namespace: ns.into(),
        name: name.into(),
        port: ServicePort::Number(port),
    }
}

/// The backend `ns/name:port-name`.
fn named(ns: &str, name: &str, port: &str) -> ServiceBackend {
    ServiceBackend {
        namespace: ns.into(),
        name: name.into(),
        port: ServicePort::Name(port.into()),
    }
}

/// Parses `ip:port` strings.
fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter()
        .map(|a| a.parse().expect("socket address"))
        .collect()
}

/// The addresses the table has for `backend`; panics when it has none.
fn get(table: &UpstreamTable, backend: &ServiceBackend) -> Vec<SocketAddr> {
    table
        .get(backend)
        .unwrap_or_else(|| panic!("{backend} not in table"))
        .addrs()
        .to_vec()
}

/// The usual Service `web` with port 80 named `http` targeting 8080.
fn web(ns: &str) -> Service {
    service(
        ns,
        "web",
        json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]),
    )
}

/// A slice of `web` with port `http` 8080.
fn web_slice(ns: &str, name: &str, endpoints: Value) -> EndpointSlice {
    slice(
        ns,
        name,
        "web",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        endpoints,
    )
}

#[test]
fn port_number_resolves_to_target_port() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [web_slice(
        "default",
        "web-1",
        json!([ready("10.1.0.2"), ready("10.1.0.1")]),
    )];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.len(), 1);
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080", "10.1.0.2:8080"])
    );
}

#[test]
fn port_name_resolves() {
    let rt = routes(&[ingress("default", &[("web", json!({"name": "http"}))])]);
    let svcs = [web("default")];
    let slices = [web_slice("default", "web-1", json!([ready("10.1.0.1")]))];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &named("default", "web", "http")),
        addrs(&["10.1.0.1:8080"])
    );
    // Only the key the Ingress wrote is inserted.
    assert!(table.get(&num("default", "web", 80)).is_none());
}

#[test]
fn number_and_name_refs_to_one_port_both_resolve() {
    let rt = routes(&[ingress(
        "default",
        &[
            ("web", json!({"number": 80})),
            ("web", json!({"name": "http"})),
            ("web", json!({"number": 80})),
        ],
    )]);
    let svcs = [web("default")];
    let slices = [web_slice("default", "web-1", json!([ready("10.1.0.1")]))];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.len(), 2);
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080"])
    );
    assert_eq!(
        get(&table, &named("default", "web", "http")),
        addrs(&["10.1.0.1:8080"])
    );
}

#[test]
fn picks_the_right_port_of_a_multi_port_service() {
    let rt = routes(&[ingress(
        "default",
        &[
            ("api", json!({"number": 80})),
            ("api", json!({"name": "metrics"})),
        ],
    )]);
    let svcs = [service(
        "default",
        "api",
        json!([
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9090, "targetPort": 9091},
        ]),
    )];
    let slices = [slice(
        "default",
        "api-1",
        "api",
        json!([
            {"name": "metrics", "port": 9091, "protocol": "TCP"},
            {"name": "http", "port": 8080, "protocol": "TCP"},
        ]),
        json!([ready("10.1.0.1")]),
    )];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &num("default", "api", 80)),
        addrs(&["10.1.0.1:8080"])
    );
    assert_eq!(
        get(&table, &named("default", "api", "metrics")),
        addrs(&["10.1.0.1:9091"])
    );
}

#[test]
fn unnamed_port_matches_unnamed_slice_port() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    // Protocol unset on both sides means TCP.
    let svcs = [service(
        "default",
        "web",
        json!([{"port": 80, "targetPort": 8080}]),
    )];
    let slices = [
        slice(
            "default",
            "web-1",
            "web",
            json!([{"name": "", "port": 8080, "protocol": "TCP"}]),
            json!([ready("10.1.0.1")]),
        ),
        slice(
            "default",
            "web-2",
            "web",
            json!([{"port": 8080}]),
            json!([ready("10.1.0.2")]),
        ),
    ];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080", "10.1.0.2:8080"])
    );
}

#[test]
fn slice_port_must_be_tcp_and_named_alike() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [
        slice(
            "default",
            "udp",
            "web",
            json!([{"name": "http", "port": 8080, "protocol": "UDP"}]),
            json!([ready("10.1.0.1")]),
        ),
        slice(
            "default",
            "other-name",
            "web",
            json!([{"name": "grpc", "port": 8080, "protocol": "TCP"}]),
            json!([ready("10.1.0.2")]),
        ),
        slice(
            "default",
            "no-port-number",
            "web",
            json!([{"name": "http", "protocol": "TCP"}]),
            json!([ready("10.1.0.3")]),
        ),
        web_slice("default", "good", json!([ready("10.1.0.4")])),
    ];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.4:8080"])
    );
}

#[test]
fn ready_endpoints_are_preferred_over_terminating() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [web_slice(
        "default",
        "web-1",
        json!([
            ready("10.1.0.1"),
            serving_terminating("10.1.0.2"),
            not_ready("10.1.0.3"),
        ]),
    )];
    let (table, _) = build_upstreams(&rt, &svcs, &slices);
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080"])
    );
}

#[test]
fn serving_terminating_endpoints_are_used_when_none_is_ready() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [web_slice(
        "default",
        "web-1",
        json!([
            serving_terminating("10.1.0.2"),
            not_ready("10.1.0.3"),
            // Terminating and no longer serving: never used.
            {"addresses": ["10.1.0.4"],
             "conditions": {"ready": false, "serving": false, "terminating": true}},
            serving_terminating("10.1.0.1"),
        ]),
    )];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080", "10.1.0.2:8080"])
    );
}

#[test]
fn unset_conditions_read_as_kube_proxy_does() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    // No conditions at all: ready. `ready: false` with `serving` unset:
    // serving is false, so not used even though terminating.
    let slices = [web_slice(
        "default",
        "web-1",
        json!([
            {"addresses": ["10.1.0.1"]},
            {"addresses": ["10.1.0.2"], "conditions": {}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "terminating": true}},
        ]),
    )];
    let (table, _) = build_upstreams(&rt, &svcs, &slices);
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080", "10.1.0.2:8080"])
    );

    // Only a not-ready terminating endpoint with serving unset: nothing.
    let slices = [web_slice(
        "default",
        "web-1",
        json!([{"addresses": ["10.1.0.3"], "conditions": {"ready": false, "terminating": true}}]),
    )];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(get(&table, &num("default", "web", 80)).is_empty());
}

#[test]
fn slices_are_merged_deduplicated_and_sorted() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [
        web_slice(
            "default",
            "web-b",
            json!([ready("10.1.0.9"), ready("10.1.0.1"), ready("10.1.0.1")]),
        ),
        web_slice(
            "default",
            "web-a",
            json!([ready("10.1.0.5"), ready("10.1.0.9")]),
        ),
        // A pod moving between slices: ready in one, not in the other.
        web_slice("default", "web-c", json!([not_ready("10.1.0.5")])),
    ];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    let want = addrs(&["10.1.0.1:8080", "10.1.0.5:8080", "10.1.0.9:8080"]);
    assert_eq!(get(&table, &num("default", "web", 80)), want);

    // The order of slices does not matter.
    let reversed: Vec<_> = slices.iter().rev().collect();
    let (table, _) = build_upstreams(&rt, &svcs, reversed);
    assert_eq!(get(&table, &num("default", "web", 80)), want);
}

#[test]
fn first_address_of_an_endpoint_is_used() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [web_slice(
        "default",
        "web-1",
        json!([
            {"addresses": ["10.1.0.1", "10.1.0.2"]},
            {"addresses": []},
            {"addresses": ["not-an-ip"]},
        ]),
    )];
    let (table, _) = build_upstreams(&rt, &svcs, &slices);
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080"])
    );
}

#[test]
fn headless_service_works() {
    let rt = routes(&[ingress("default", &[("db", json!({"name": "http"}))])]);
    let svcs = [service_spec(
        "default",
        "db",
        json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    )];
    let mut s = slice(
        "default",
        "db-1",
        "db",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!([ready("10.1.0.1")]),
    );
    s.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("service.kubernetes.io/headless".into(), "".into());
    let (table, errors) = build_upstreams(&rt, &svcs, [&s]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &named("default", "db", "http")),
        addrs(&["10.1.0.1:8080"])
    );
}

#[test]
fn ipv6_endpoints() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let slices = [
        slice_typed(
            "default",
            "web-v6",
            "web",
            "IPv6",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([ready("fd00::2"), ready("fd00::1")]),
        ),
        web_slice("default", "web-v4", json!([ready("10.1.0.1")])),
        // FQDN slices are not proxied to.
        slice_typed(
            "default",
            "web-fqdn",
            "web",
            "FQDN",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([ready("db.example.com")]),
        ),
    ];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080", "[fd00::1]:8080", "[fd00::2]:8080"])
    );
}

#[test]
fn missing_service_is_an_error() {
    let rt = routes(&[ingress("shop", &[("gone", json!({"number": 80}))])]);
    let (table, errors) = build_upstreams(&rt, [], []);
    let backend = num("shop", "gone", 80);
    assert_eq!(
        errors,
        [UpstreamError {
            backend: backend.clone(),
            kind: UpstreamErrorKind::ServiceNotFound,
        }]
    );
    assert_eq!(
        errors[0].to_string(),
        "Service backend shop/gone:80: Service not found"
    );
    assert!(get(&table, &backend).is_empty());
}

#[test]
fn missing_port_is_an_error() {
    let rt = routes(&[ingress(
        "default",
        &[
            ("web", json!({"number": 81})),
            ("web", json!({"name": "https"})),
            ("web", json!({"number": 80})),
        ],
    )]);
    let svcs = [web("default")];
    let slices = [web_slice("default", "web-1", json!([ready("10.1.0.1")]))];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    let kinds: Vec<_> = errors
        .iter()
        .map(|e| (e.backend.to_string(), e.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("default/web:81".to_owned(), UpstreamErrorKind::PortNotFound),
            (
                "default/web:https".to_owned(),
                UpstreamErrorKind::PortNotFound
            ),
        ]
    );
    assert!(get(&table, &num("default", "web", 81)).is_empty());
    assert!(get(&table, &named("default", "web", "https")).is_empty());
    // The good backend is unaffected.
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080"])
    );
}

#[test]
fn udp_port_is_an_error_but_a_tcp_twin_is_used() {
    let rt = routes(&[ingress(
        "default",
        &[
            ("dns", json!({"number": 53})),
            ("syslog", json!({"number": 514})),
        ],
    )]);
    let svcs = [
        service(
            "default",
            "dns",
            json!([
                {"name": "dns-udp", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]),
        ),
        service(
            "default",
            "syslog",
            json!([{"name": "syslog", "port": 514, "protocol": "UDP"}]),
        ),
    ];
    let slices = [slice(
        "default",
        "dns-1",
        "dns",
        json!([
            {"name": "dns-udp", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
        ]),
        json!([ready("10.1.0.1")]),
    )];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert_eq!(
        errors,
        [UpstreamError {
            backend: num("default", "syslog", 514),
            kind: UpstreamErrorKind::PortNotTcp {
                protocol: "UDP".into()
            },
        }]
    );
    assert_eq!(
        get(&table, &num("default", "dns", 53)),
        addrs(&["10.1.0.1:5353"])
    );
}

#[test]
fn external_name_service_is_an_error() {
    let rt = routes(&[ingress("default", &[("ext", json!({"number": 443}))])]);
    let svcs = [service_spec(
        "default",
        "ext",
        json!({"type": "ExternalName", "externalName": "example.com",
               "ports": [{"port": 443}]}),
    )];
    let (table, errors) = build_upstreams(&rt, &svcs, []);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, UpstreamErrorKind::ExternalName);
    assert_eq!(errors[0].backend, num("default", "ext", 443));
    assert!(errors[0].to_string().contains("default/ext:443"));
    assert!(get(&table, &num("default", "ext", 443)).is_empty());
}

#[test]
fn service_and_slices_of_other_namespaces_are_not_used() {
    let rt = routes(&[ingress("team-a", &[("web", json!({"number": 80}))])]);
    // Only team-b has a Service `web`: team-a's backend has none.
    let svcs = [web("team-b")];
    let slices = [web_slice("team-b", "web-1", json!([ready("10.2.0.1")]))];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, UpstreamErrorKind::ServiceNotFound);
    assert!(get(&table, &num("team-a", "web", 80)).is_empty());

    // With team-a's Service, team-b's slices still are not used.
    let svcs = [web("team-b"), web("team-a")];
    let slices = [
        web_slice("team-b", "web-1", json!([ready("10.2.0.1")])),
        web_slice("team-a", "web-1", json!([ready("10.1.0.1")])),
    ];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.len(), 1);
    assert_eq!(
        get(&table, &num("team-a", "web", 80)),
        addrs(&["10.1.0.1:8080"])
    );
}

#[test]
fn slices_of_other_services_are_not_used() {
    let rt = routes(&[ingress("default", &[("web", json!({"number": 80}))])]);
    let svcs = [web("default")];
    let mut unlabelled = web_slice("default", "stray", json!([ready("10.1.0.7")]));
    unlabelled.metadata.labels = None;
    let slices = [
        slice(
            "default",
            "other-1",
            "other",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([ready("10.1.0.8")]),
        ),
        unlabelled,
    ];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(get(&table, &num("default", "web", 80)).is_empty());
}

#[test]
fn default_backend_is_resolved_and_resource_backends_ignored() {
    let ing: Ingress = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "ing"},
        "spec": {
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
            "rules": [{"http": {"paths": [{
                "path": "/bucket", "pathType": "Prefix",
                "backend": {"resource": {"apiGroup": "k8s.example.com",
                                          "kind": "Bucket", "name": "b"}},
            }]}}],
        },
    }))
    .expect("valid Ingress");
    // The route builder reports the resource backend; not our concern here.
    let (rt, _) = RouteTable::from_served([&ing]);
    let svcs = [web("default")];
    let slices = [web_slice("default", "web-1", json!([ready("10.1.0.1")]))];
    let (table, errors) = build_upstreams(&rt, &svcs, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.len(), 1);
    assert_eq!(
        get(&table, &num("default", "web", 80)),
        addrs(&["10.1.0.1:8080"])
    );
}
