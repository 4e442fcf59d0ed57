//! The simulated cluster's manifest builders write what the agent's own
//! parser reads, with every field where Kubernetes puts it.

use std::net::Ipv4Addr;
use std::path::Path;

use gangplank_tests::manifests::{Endpoint, EndpointSlice, Service, Target};

/// The YAML parses with the agent's own manifest parser, with every
/// field where Kubernetes puts it.
#[test]
fn nodeport_and_load_balancer_services_parse() {
    let svc = Service::load_balancer("default", "web", Ipv4Addr::new(198, 18, 200, 10))
        .port("http", 80, "TCP", Target::Number(8080))
        .port("dns", 53, "UDP", Target::Number(5353))
        .node_port("http", 30080)
        .node_port("dns", 30053)
        .external_ip(Ipv4Addr::new(198, 18, 0, 201))
        .lb_ingress(Ipv4Addr::new(198, 18, 0, 200))
        .external_traffic_policy("Local")
        .health_check_node_port(32000)
        .client_ip_affinity(Some(60));
    let slice = EndpointSlice::new("default", "web", "web-1")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready(Ipv4Addr::new(198, 19, 1, 10), "node-a"));
    let text = [svc.to_yaml(), slice.to_yaml()].join("---\n");
    let parsed = gangplank::source::parse_manifest(
        Path::new("web.yaml"),
        &text,
        &["Service", "EndpointSlice"],
    );
    assert!(parsed.errors.is_empty(), "{:?}\n{text}", parsed.errors);
    assert_eq!(parsed.objects.len(), 2, "{text}");
    let dbg = format!("{:?}", parsed.objects[0]);
    for want in [
        "type_: Some(\"LoadBalancer\")",
        "node_port: Some(30080)",
        "node_port: Some(30053)",
        "external_ips: Some([\"198.18.0.201\"])",
        "ip: Some(\"198.18.0.200\")",
        "external_traffic_policy: Some(\"Local\")",
        "health_check_node_port: Some(32000)",
        "timeout_seconds: Some(60)",
    ] {
        assert!(dbg.contains(want), "{want} missing from {dbg}\n{text}");
    }
    assert!(format!("{:?}", parsed.objects[1]).contains("node_name: Some(\"node-a\")"));
}
