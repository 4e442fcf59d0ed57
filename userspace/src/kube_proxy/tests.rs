use std::net::{Ipv4Addr, SocketAddrV4};

use super::names::{iptables_sep, iptables_svc, nft_endpoint, nft_service};
use super::*;
use crate::model::fixtures::{ServiceBuilder, SliceBuilder, TargetPort};
use crate::model::{service_from_k8s, slice_from_k8s};

const RANGES: ClusterRanges = ClusterRanges {
    cluster_cidr: (Ipv4Addr::new(10, 0, 0, 0), 8),
    service_cidr: (Ipv4Addr::new(172, 30, 0, 0), 16),
};

fn port(ns: &str, name: &str, port_name: &str, vip: [u8; 4], endpoints: &[[u8; 4]]) -> ProxiedPort {
    ProxiedPort {
        service: ServiceId::new(ns, name),
        port_name: port_name.into(),
        protocol: Protocol::Tcp,
        cluster_ip: vip.into(),
        port: 80,
        node_port: None,
        endpoints: endpoints
            .iter()
            .map(|&ip| SocketAddrV4::new(ip.into(), 80))
            .collect(),
    }
}

/// Chain names from kube-proxy's own tests (TestOverallIPTablesRules and
/// the nftables TestOverallNFTablesRules): ns1/svc1:p80 with endpoint
/// 10.180.0.1:80, ns2/svc2:p80 with 10.180.0.2:80.
#[test]
fn chain_names_are_kube_proxys() {
    let svc1 = port("ns1", "svc1", "p80", [172, 30, 0, 41], &[[10, 180, 0, 1]]);
    assert_eq!(iptables_svc(&svc1), "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(
        iptables_sep(&svc1, "10.180.0.1:80"),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
    assert_eq!(nft_service(&svc1), "service-ULMVA6XW-ns1/svc1/tcp/p80");
    assert_eq!(
        nft_endpoint(&svc1, SocketAddrV4::new(Ipv4Addr::new(10, 180, 0, 1), 80)),
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
    let svc2 = port("ns2", "svc2", "p80", [172, 30, 0, 42], &[[10, 180, 0, 2]]);
    assert_eq!(nft_service(&svc2), "service-42NFTM6N-ns2/svc2/tcp/p80");
    assert_eq!(
        nft_endpoint(&svc2, SocketAddrV4::new(Ipv4Addr::new(10, 180, 0, 2), 80)),
        "endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"
    );
}

#[test]
fn services_join_slices_by_port_name_and_protocol() {
    let svc = ServiceBuilder::new("ns", "web")
        .cluster_ip("172.30.0.10")
        .type_("NodePort")
        .port("http", 80, "TCP", TargetPort::Name("web"))
        .node_port(30080)
        .port("dns", 53, "UDP", TargetPort::Number(53))
        .build();
    let slice = SliceBuilder::for_service("ns", "web", "web-1")
        .port(Some("http"), 8080, "TCP")
        .ready("10.0.1.2")
        .ready("10.0.1.10")
        .endpoint("10.0.1.3", Some(false), Some(false), Some(true), None)
        .build();
    let services = vec![service_from_k8s(&svc).unwrap().value];
    let slices = vec![slice_from_k8s(&slice, None).value];
    let ports = proxied_ports(&services, &slices);
    // "dns" has no endpoints (no such slice port): left out. The not-ready
    // endpoint is left out. Endpoints sorted as strings: "10.0.1.10" first.
    assert_eq!(ports.len(), 1, "{ports:?}");
    let p = &ports[0];
    assert_eq!(p.port_name_string(), "ns/web:http");
    assert_eq!(p.node_port, Some(30080));
    assert_eq!(
        p.endpoints,
        vec![
            "10.0.1.10:8080".parse::<SocketAddrV4>().unwrap(),
            "10.0.1.2:8080".parse().unwrap()
        ]
    );
}

#[test]
fn iptables_rules_pick_endpoints_with_falling_probabilities() {
    let mut p = port(
        "ns1",
        "svc1",
        "p80",
        [172, 30, 0, 41],
        &[[10, 180, 0, 1], [10, 180, 0, 2], [10, 180, 0, 3]],
    );
    p.node_port = Some(30001);
    let rules = iptables_restore(&[p.clone()], &RANGES);
    let svc = iptables_svc(&p);
    let sep = |i: usize| iptables_sep(&p, &p.endpoints[i].to_string());
    for line in [
        format!("-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j {svc}"),
        format!("-A {svc} -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"),
        format!("-A {svc} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.3333333333 -j {}", sep(0)),
        format!("-A {svc} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.2:80\" -m statistic --mode random --probability 0.5000000000 -j {}", sep(1)),
        format!("-A {svc} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.3:80\" -j {}", sep(2)),
        format!("-A {} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80", sep(2)),
        "-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30001 -j KUBE-EXT-XPGD46QRK7WJZT7O".to_string(),
        "-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVC-XPGD46QRK7WJZT7O".to_string(),
    ] {
        assert!(rules.lines().any(|l| l == line), "missing {line:?} in\n{rules}");
    }
    // The NodePort jump is the last rule of KUBE-SERVICES.
    let last = rules
        .lines()
        .rfind(|l| l.starts_with("-A KUBE-SERVICES "))
        .unwrap();
    assert!(last.contains("-j KUBE-NODEPORTS"), "{last}");
    assert_eq!(rules.matches("COMMIT").count(), 2);
}

#[test]
fn iptables_endpoint_change_rewrites_the_top_level_and_the_changed_service_only() {
    let a = port(
        "ns",
        "a",
        "",
        [172, 30, 0, 1],
        &[[10, 0, 0, 1], [10, 0, 0, 2]],
    );
    let b = port("ns", "b", "", [172, 30, 0, 2], &[[10, 0, 0, 3]]);
    let mut a2 = a.clone();
    a2.endpoints[1] = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 80);
    let change = iptables_endpoint_change(&[a2.clone(), b.clone()], 0, &a, &RANGES);
    let gone = iptables_sep(&a, "10.0.0.2:80");
    let new = iptables_sep(&a2, "10.0.0.9:80");
    assert!(change.contains(&format!(":{gone} - [0:0]\n")));
    assert!(change.contains(&format!("-X {gone}\n")));
    assert!(change.contains(&format!(":{new} - [0:0]\n")));
    assert!(change.contains("--to-destination 10.0.0.9:80"));
    // Both services stay in KUBE-SERVICES; b's own chains are not touched.
    assert!(change.contains(&format!("-j {}\n", iptables_svc(&b))));
    assert!(!change.contains(&format!(":{} - [0:0]", iptables_svc(&b))));
    // No built-in chain is declared: that would reset it under --noflush.
    assert!(!change.contains(":PREROUTING"));
}

#[test]
fn nft_ruleset_maps_services_to_chains() {
    let mut p = port(
        "ns1",
        "svc1",
        "p80",
        [172, 30, 0, 41],
        &[[10, 180, 0, 1], [10, 180, 0, 2]],
    );
    p.node_port = Some(3001);
    let rules = nft_ruleset(&[p], &RANGES);
    for line in [
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        "add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }",
        "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
        "add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment \"Drop traffic to unallocated ClusterIPs\"",
    ] {
        assert!(rules.lines().any(|l| l == line), "missing {line:?} in\n{rules}");
    }
    let vmap = rules
        .lines()
        .find(|l| l.contains("numgen random mod 2 vmap"))
        .unwrap();
    assert!(vmap.contains(
        "0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 , 1 : goto endpoint-"
    ));
    // Endpoint chains are added before the vmap that jumps to them.
    let first_endpoint = rules.find("add chain ip kube-proxy endpoint-").unwrap();
    assert!(first_endpoint < rules.find("numgen").unwrap());
}

#[test]
fn nft_endpoint_change_adds_before_it_deletes() {
    let a = port(
        "ns",
        "a",
        "",
        [172, 30, 0, 1],
        &[[10, 0, 0, 1], [10, 0, 0, 2]],
    );
    let mut a2 = a.clone();
    a2.endpoints[1] = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 80);
    let change = nft_endpoint_change(&a2, &a, &RANGES);
    let added = change.find("add chain ip kube-proxy endpoint-").unwrap();
    let flushed = change
        .find(&format!("flush chain ip kube-proxy {}", nft_service(&a)))
        .unwrap();
    let deleted = change
        .find(&format!(
            "delete chain ip kube-proxy {}",
            nft_endpoint(&a, a.endpoints[1])
        ))
        .unwrap();
    assert!(added < flushed && flushed < deleted, "{change}");
    assert!(
        !change.contains("add element"),
        "maps are untouched:\n{change}"
    );
}

#[test]
fn ports_from_a_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns, name: web}\nspec:\n  clusterIP: 172.30.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  namespace: ns\n  name: web-1\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.5]}]\n";
    std::fs::write(dir.path().join("web.yaml"), format!("{svc}---\n{slice}")).unwrap();
    let ports = proxied_ports_in_dir(dir.path()).unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].endpoints, vec!["10.0.0.5:8080".parse().unwrap()]);

    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 7}\n",
    )
    .unwrap();
    let err = proxied_ports_in_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.yaml"), "{err}");
}
