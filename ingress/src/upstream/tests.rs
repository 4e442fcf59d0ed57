//! Upstream table tests: lookups by port number and name, round-robin.

use std::net::SocketAddr;

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn backend(name: &str, port: ServicePort) -> ServiceBackend {
    ServiceBackend {
        namespace: "default".into(),
        name: name.into(),
        port,
    }
}

#[test]
fn looks_up_by_number_and_name() {
    let table = UpstreamTable::new()
        .with("default", "web", 80, vec![addr(8080)])
        .with_named("default", "web", "http", vec![addr(8081)]);
    let by_number = table.get(&backend("web", ServicePort::Number(80)));
    let by_name = table.get(&backend("web", ServicePort::Name("http".into())));
    assert_eq!(by_number.map(Endpoints::addrs), Some(&[addr(8080)][..]));
    assert_eq!(by_name.map(Endpoints::addrs), Some(&[addr(8081)][..]));
    assert!(
        table
            .get(&backend("web", ServicePort::Number(81)))
            .is_none(),
        "expected no endpoints for an unknown port"
    );
    let other_ns = ServiceBackend {
        namespace: "other".into(),
        ..backend("web", ServicePort::Number(80))
    };
    assert!(
        table.get(&other_ns).is_none(),
        "expected no endpoints for the same Service name in another namespace"
    );
}

#[test]
fn round_robin_visits_every_endpoint_in_turn() {
    let eps = Endpoints::new(vec![addr(1), addr(2), addr(3)]);
    let seen: Vec<u16> = (0..6)
        .map(|_| eps.get(eps.next().expect("non-empty")).port())
        .collect();
    assert_eq!(seen, [1, 2, 3, 1, 2, 3], "expected strict rotation");
}

#[test]
fn empty_endpoints_give_no_index() {
    let eps = Endpoints::new(Vec::new());
    assert!(eps.is_empty());
    assert_eq!(eps.next(), None, "expected no index from empty endpoints");
}
