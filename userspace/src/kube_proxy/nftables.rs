//! kube-proxy's nftables mode, as `nft -f` input
//! (pkg/proxy/nftables/proxier.go): verdict maps from (address, protocol,
//! port) to a per-service chain, which picks an endpoint chain with
//! `numgen random`.

use std::fmt::Write as _;

use super::names::{nft_endpoint, nft_external, nft_service};
use super::{cidr, ClusterRanges, ProxiedPort};

/// The table kube-proxy owns (`ip kube-proxy` for IPv4).
pub const NFT_TABLE: &str = "ip kube-proxy";

const MASQ_MARK: &str = "0x4000";

/// The whole table: created empty (any earlier one is deleted in the same
/// transaction), the base chains on the netfilter hooks, the
/// `service-ips` and `service-nodeports` verdict maps filled with every
/// service port, and each service port's and endpoint's chains.
pub fn nft_ruleset(ports: &[ProxiedPort], ranges: &ClusterRanges) -> String {
    let t = NFT_TABLE;
    let mut out = String::new();
    // `add` then `delete` then `add`: starts from an empty table whether or
    // not one existed, in one atomic transaction.
    let _ = write!(
        out,
        "add table {t}\n\
         delete table {t}\n\
         add table {t} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain {t} mark-for-masquerade\n\
         add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add chain {t} masquerading\n\
         add rule {t} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule {t} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule {t} masquerading masquerade fully-random\n\
         add chain {t} services\n\
         add chain {t} service-endpoints-check\n\
         add chain {t} nodeport-endpoints-check\n\
         add chain {t} firewall-check\n\
         add chain {t} cluster-ips-check\n\
         add chain {t} filter-prerouting {{ type filter hook prerouting priority -110 ; }}\n\
         add rule {t} filter-prerouting ct state new jump firewall-check\n\
         add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}\n\
         add rule {t} filter-forward ct state new jump service-endpoints-check\n\
         add rule {t} filter-forward ct state new jump cluster-ips-check\n\
         add chain {t} filter-input {{ type filter hook input priority -110 ; }}\n\
         add rule {t} filter-input ct state new jump nodeport-endpoints-check\n\
         add rule {t} filter-input ct state new jump service-endpoints-check\n\
         add chain {t} filter-output {{ type filter hook output priority -110 ; }}\n\
         add rule {t} filter-output ct state new jump service-endpoints-check\n\
         add rule {t} filter-output ct state new jump firewall-check\n\
         add chain {t} filter-output-post-dnat {{ type filter hook output priority -90 ; }}\n\
         add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check\n\
         add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add rule {t} nat-prerouting jump services\n\
         add chain {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule {t} nat-output jump services\n\
         add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add rule {t} nat-postrouting jump masquerading\n\
         add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule {t} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}\n\
         add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}\n\
         add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
         add rule {t} nodeport-endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n",
        cidr(ranges.service_cidr),
    );
    for p in ports {
        endpoint_chains(&mut out, p);
        service_chains(&mut out, p, ranges);
        let _ = writeln!(out, "add element {t} cluster-ips {{ {} }}", p.cluster_ip);
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} . {} . {} : goto {} }}",
            p.cluster_ip,
            p.proto(),
            p.port,
            nft_service(p)
        );
        if let Some(node_port) = p.node_port {
            let _ = writeln!(
                out,
                "add element {t} service-nodeports {{ {} . {node_port} : goto {} }}",
                p.proto(),
                nft_external(p)
            );
        }
    }
    out
}

/// What kube-proxy's incremental sync sends after one endpoint of
/// `after` changed (it was `before`): the new endpoint chains, the
/// service chain flushed and rewritten, the endpoint chains that went away
/// flushed and deleted. Maps and other Services are not touched.
pub fn nft_endpoint_change(
    after: &ProxiedPort,
    before: &ProxiedPort,
    ranges: &ClusterRanges,
) -> String {
    let t = NFT_TABLE;
    let mut out = String::new();
    let added: Vec<_> = after
        .endpoints
        .iter()
        .filter(|e| !before.endpoints.contains(e))
        .collect();
    for &e in &added {
        endpoint_chain(&mut out, after, e);
    }
    let _ = writeln!(out, "flush chain {t} {}", nft_service(after));
    service_chain_rules(&mut out, after, ranges);
    for e in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let chain = nft_endpoint(before, *e);
        let _ = writeln!(out, "flush chain {t} {chain}");
        let _ = writeln!(out, "delete chain {t} {chain}");
    }
    out
}

fn endpoint_chains(out: &mut String, p: &ProxiedPort) {
    for e in &p.endpoints {
        endpoint_chain(out, p, e);
    }
}

/// `endpoint-*`: hairpin masquerade, then DNAT.
fn endpoint_chain(out: &mut String, p: &ProxiedPort, e: &std::net::SocketAddrV4) {
    let t = NFT_TABLE;
    let chain = nft_endpoint(p, *e);
    let _ = writeln!(out, "add chain {t} {chain}");
    let _ = writeln!(
        out,
        "add rule {t} {chain} ip saddr {} jump mark-for-masquerade",
        e.ip()
    );
    let _ = writeln!(
        out,
        "add rule {t} {chain} meta l4proto {} dnat to {e}",
        p.proto()
    );
}

/// `service-*` (and `external-*` for a NodePort).
fn service_chains(out: &mut String, p: &ProxiedPort, ranges: &ClusterRanges) {
    let t = NFT_TABLE;
    let svc = nft_service(p);
    let _ = writeln!(out, "add chain {t} {svc}");
    service_chain_rules(out, p, ranges);
    if p.node_port.is_some() {
        let ext = nft_external(p);
        let _ = writeln!(out, "add chain {t} {ext}");
        let _ = writeln!(out, "add rule {t} {ext} jump mark-for-masquerade");
        let _ = writeln!(out, "add rule {t} {ext} goto {svc}");
    }
}

/// The service chain's rules: masquerade traffic from outside the cluster
/// CIDR, then one random endpoint.
fn service_chain_rules(out: &mut String, p: &ProxiedPort, ranges: &ClusterRanges) {
    let t = NFT_TABLE;
    let svc = nft_service(p);
    let _ = writeln!(
        out,
        "add rule {t} {svc} ip daddr {} ip saddr != {} jump mark-for-masquerade",
        p.cluster_ip,
        cidr(ranges.cluster_cidr)
    );
    let targets: Vec<String> = p
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", nft_endpoint(p, *e)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
        p.endpoints.len(),
        targets.join(" , ")
    );
}
