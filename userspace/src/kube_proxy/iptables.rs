//! kube-proxy's iptables mode, as `iptables-restore` input
//! (pkg/proxy/iptables/proxier.go `syncProxyRules`).

use std::fmt::Write as _;

use super::names::{iptables_ext, iptables_sep, iptables_svc};
use super::{cidr, ClusterRanges, ProxiedPort};

/// The masquerade mark (kube-proxy's default `--iptables-masquerade-bit` 14).
const MASQ_MARK: &str = "0x00004000";

/// The whole ruleset, for `iptables-restore` (which replaces both tables):
/// the jumps from the built-in chains, the `filter` chains, `KUBE-SERVICES`
/// with one rule per service port, a `KUBE-SVC-*` chain choosing an
/// endpoint with `statistic --mode random`, and a `KUBE-SEP-*` chain per
/// endpoint doing the DNAT.
pub fn iptables_restore(ports: &[ProxiedPort], ranges: &ClusterRanges) -> String {
    let mut out = String::new();
    filter_table(&mut out, true);
    out.push_str("*nat\n");
    for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(out, ":{builtin} ACCEPT [0:0]");
    }
    let order = kube_services_order(ports);
    nat_top_level_declarations(&mut out);
    for &i in &order {
        service_chain_declarations(&mut out, &ports[i]);
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    nat_top_level_rules(&mut out, ports, &order);
    for &i in &order {
        service_chain_rules(&mut out, &ports[i], ranges);
    }
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy hands `iptables-restore --noflush` after one endpoint
/// of `ports[changed]` changed (it was `before`), with partial syncs on
/// (`MinimizeIPTablesRestore`, the default since 1.27): the top-level
/// chains are rewritten whole, as kube-proxy always does; of the
/// per-service chains only the changed Service's, and endpoint chains that
/// went away are flushed and deleted.
pub fn iptables_endpoint_change(
    ports: &[ProxiedPort],
    changed: usize,
    before: &ProxiedPort,
    ranges: &ClusterRanges,
) -> String {
    let mut out = String::new();
    filter_table(&mut out, false);
    out.push_str("*nat\n");
    let order = kube_services_order(ports);
    nat_top_level_declarations(&mut out);
    let port = &ports[changed];
    service_chain_declarations(&mut out, port);
    let gone: Vec<String> = before
        .endpoints
        .iter()
        .filter(|e| !port.endpoints.contains(e))
        .map(|e| iptables_sep(before, &e.to_string()))
        .collect();
    for chain in &gone {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    nat_top_level_rules(&mut out, ports, &order);
    service_chain_rules(&mut out, port, ranges);
    for chain in &gone {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy writes `KUBE-SERVICES` in the order it walks its service map
/// (a Go map: no meaningful order). The chain-name hash is used here as a
/// stable stand-in, so that no Service is systematically early or late.
fn kube_services_order(ports: &[ProxiedPort]) -> Vec<usize> {
    let mut order: Vec<(String, usize)> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (iptables_svc(p), i))
        .collect();
    order.sort();
    order.into_iter().map(|(_, i)| i).collect()
}

/// The `filter` table's kube-proxy chains; with `builtins`, the jumps into
/// them from INPUT, FORWARD and OUTPUT too (in a full restore).
fn filter_table(out: &mut String, builtins: bool) {
    out.push_str("*filter\n");
    if builtins {
        out.push_str(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    }
    out.push_str(
        ":KUBE-NODEPORTS - [0:0]\n\
         :KUBE-SERVICES - [0:0]\n\
         :KUBE-EXTERNAL-SERVICES - [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         :KUBE-PROXY-FIREWALL - [0:0]\n",
    );
    if builtins {
        out.push_str(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
             -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
    }
    let _ = write!(
        out,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    );
}

fn nat_top_level_declarations(out: &mut String) {
    out.push_str(
        ":KUBE-SERVICES - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n",
    );
}

fn service_chain_declarations(out: &mut String, port: &ProxiedPort) {
    let _ = writeln!(out, ":{} - [0:0]", iptables_svc(port));
    if port.node_port.is_some() {
        let _ = writeln!(out, ":{} - [0:0]", iptables_ext(port));
    }
    for e in &port.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", iptables_sep(port, &e.to_string()));
    }
}

/// `KUBE-SERVICES` (one rule per service port, then the NodePort jump,
/// which must stay last), `KUBE-NODEPORTS`, `KUBE-POSTROUTING`, `KUBE-MARK-MASQ`.
fn nat_top_level_rules(out: &mut String, ports: &[ProxiedPort], order: &[usize]) {
    for &i in order {
        let p = &ports[i];
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {}",
            p.port_name_string(),
            p.cluster_ip,
            p.port,
            iptables_svc(p),
            proto = p.proto(),
        );
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for &i in order {
        let p = &ports[i];
        if let Some(node_port) = p.node_port {
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -m comment --comment {} -m {proto} -p {proto} --dport {node_port} -j {}",
                p.port_name_string(),
                iptables_ext(p),
                proto = p.proto(),
            );
        }
    }
    let _ = write!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
    );
}

/// A service port's own chains: `KUBE-EXT-*` (NodePort traffic:
/// masquerade, then the service chain), `KUBE-SVC-*` (masquerade traffic
/// from outside the cluster CIDR; pick endpoint i of n with probability
/// 1/(n-i)), and a `KUBE-SEP-*` per endpoint (hairpin masquerade, DNAT).
fn service_chain_rules(out: &mut String, p: &ProxiedPort, ranges: &ClusterRanges) {
    let name = p.port_name_string();
    let proto = p.proto();
    let svc = iptables_svc(p);
    if p.node_port.is_some() {
        let ext = iptables_ext(p);
        let _ = writeln!(
            out,
            "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(out, "-A {ext} -j {svc}");
    }
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} ! -s {} -j KUBE-MARK-MASQ",
        p.cluster_ip,
        p.port,
        cidr(ranges.cluster_cidr),
    );
    let n = p.endpoints.len();
    for (i, e) in p.endpoints.iter().enumerate() {
        let sep = iptables_sep(p, &e.to_string());
        if i + 1 < n {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {e}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / (n - i) as f64
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {e}\" -j {sep}"
            );
        }
    }
    for e in &p.endpoints {
        let sep = iptables_sep(p, &e.to_string());
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
            e.ip()
        );
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {e}"
        );
    }
}
