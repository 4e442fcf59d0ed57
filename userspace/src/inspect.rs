//! `gangplank service list`: what the datapath serves, read back from the
//! pinned maps (not from the agent's memory), so it shows the truth even
//! when the agent is down.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use gangplank_common::{
    MaglevKey, ServiceKey, BACKEND_FLAG_LOCAL, BACKEND_FLAG_TERMINATING, MAGLEV_MAX_SIZE,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_LOCAL, SVC_FLAG_MAGLEV,
    SVC_FLAG_MAGLEV_GEN1, SVC_FLAG_NODEPORT,
};
use serde::Serialize;

use crate::dataplane::maglev;
use crate::dataplane::writer::parse_name;
use crate::dataplane::Snapshot;
use crate::model::FrontendKind;

/// One frontend as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    /// `address:port`; NodePort frontends show `0.0.0.0:<nodePort>`.
    pub frontend: String,
    pub protocol: String,
    /// `internal` (socket hooks: traffic from the node and its pods) or
    /// `external` (tc/XDP: traffic arriving on the node's devices).
    pub scope: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalIP`, or `unknown`.
    pub kind: String,
    pub service: String,
    pub rev_nat_id: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds (0 = none).
    pub affinity_timeout: u32,
    /// `externalTrafficPolicy: Local`: only this node's endpoints; without
    /// any, traffic is dropped.
    pub local_only: bool,
    /// Size of the Maglev table external traffic is balanced with (0:
    /// none, picks are random).
    pub maglev_table_size: u32,
    /// `active`, `no-backends` (connections refused, or dropped when
    /// `local_only`) or `inconsistent`.
    pub state: String,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub address: String,
    /// `active` or `terminating`.
    pub state: String,
    /// The endpoint runs on this node.
    pub local: bool,
}

fn scope_name(scope: u8) -> String {
    match scope {
        SCOPE_INTERNAL => "internal".into(),
        SCOPE_EXTERNAL => "external".into(),
        other => format!("scope-{other}"),
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        other => format!("proto-{other}"),
    }
}

fn addr(address: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(address)),
        u16::from_be(port)
    )
}

/// Every frontend in the snapshot, sorted by address, port and protocol.
pub fn frontends(snap: &Snapshot) -> Vec<FrontendView> {
    let mut masters: Vec<(&ServiceKey, _)> = snap
        .services
        .iter()
        .filter(|(k, _)| k.backend_slot == 0)
        .collect();
    masters.sort_by_key(|(k, _)| {
        (
            u32::from_be(k.address),
            u16::from_be(k.port),
            k.proto,
            k.scope,
        )
    });
    masters
        .into_iter()
        .map(|(key, value)| {
            let mut consistent = true;
            let backends: Vec<BackendView> = (1..=value.count)
                .filter_map(|slot| {
                    let slot_key = ServiceKey {
                        backend_slot: slot,
                        ..*key
                    };
                    let backend = snap
                        .services
                        .get(&slot_key)
                        .and_then(|s| snap.backends.get(&s.backend_id));
                    if backend.is_none() {
                        consistent = false;
                    }
                    backend.map(|b| BackendView {
                        address: addr(b.address, b.port),
                        state: if b.flags & BACKEND_FLAG_TERMINATING != 0 {
                            "terminating".into()
                        } else {
                            "active".into()
                        },
                        local: b.flags & BACKEND_FLAG_LOCAL != 0,
                    })
                })
                .collect();
            let (service, kind) = snap
                .names
                .get(&value.rev_nat_id)
                .map(parse_name)
                .unwrap_or_default();
            // Names written by agents that predate the kind byte: only
            // cluster IPs existed then.
            let kind = match kind {
                Some(kind) => kind.as_str(),
                None if value.flags & SVC_FLAG_NODEPORT != 0 => FrontendKind::NodePort.as_str(),
                None if key.scope == SCOPE_INTERNAL => FrontendKind::ClusterIp.as_str(),
                None => "unknown",
            };
            let maglev_table_size = if value.flags & SVC_FLAG_MAGLEV != 0 {
                let generation = u8::from(value.flags & SVC_FLAG_MAGLEV_GEN1 != 0);
                // A size no writer produces is reported, not walked.
                let complete = value.backend_id <= MAGLEV_MAX_SIZE
                    && (0..maglev::chunks_for(value.backend_id)).all(|chunk| {
                        snap.maglev.contains(&MaglevKey {
                            rev_nat_id: value.rev_nat_id,
                            generation,
                            _pad: 0,
                            chunk,
                        })
                    });
                if !complete {
                    consistent = false;
                }
                value.backend_id
            } else {
                0
            };
            let state = if !consistent {
                "inconsistent"
            } else if value.count == 0 {
                "no-backends"
            } else {
                "active"
            };
            FrontendView {
                frontend: addr(key.address, key.port),
                protocol: proto_name(key.proto),
                scope: scope_name(key.scope),
                kind: kind.to_owned(),
                service,
                rev_nat_id: value.rev_nat_id,
                affinity_timeout: value.affinity_timeout,
                local_only: value.flags & SVC_FLAG_LOCAL != 0,
                maglev_table_size,
                state: state.into(),
                backends,
            }
        })
        .collect()
}

/// kubectl-style table.
pub fn table(views: &[FrontendView]) -> String {
    let headers = [
        "FRONTEND", "PROTO", "SCOPE", "KIND", "SERVICE", "STATE", "AFFINITY", "BACKENDS",
    ];
    let rows: Vec<[String; 8]> = views
        .iter()
        .map(|v| {
            let backends = if v.backends.is_empty() {
                "<none>".to_string()
            } else {
                v.backends
                    .iter()
                    .map(|b| {
                        let mut notes = Vec::new();
                        if b.local {
                            notes.push("local");
                        }
                        if b.state != "active" {
                            notes.push(b.state.as_str());
                        }
                        if notes.is_empty() {
                            b.address.clone()
                        } else {
                            format!("{} ({})", b.address, notes.join(","))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let kind = if v.local_only {
                format!("{}/Local", v.kind)
            } else {
                v.kind.clone()
            };
            let affinity = if v.affinity_timeout == 0 {
                "-".to_string()
            } else {
                format!("ClientIP/{}s", v.affinity_timeout)
            };
            [
                v.frontend.clone(),
                v.protocol.clone(),
                v.scope.clone(),
                kind,
                if v.service.is_empty() {
                    "<unknown>".into()
                } else {
                    v.service.clone()
                },
                v.state.clone(),
                affinity,
                backends,
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{:<width$}   ", cell, width = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&headers);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gangplank_common::{Backend, ServiceName, ServiceValue, SERVICE_NAME_LEN};

    #[test]
    fn shows_backends_state_and_names() {
        let mut snap = Snapshot::default();
        let master = ServiceKey::new(
            u32::from(Ipv4Addr::new(198, 18, 200, 10)).to_be(),
            80u16.to_be(),
            PROTO_TCP,
            0,
        );
        snap.services.insert(
            master,
            ServiceValue {
                backend_id: 0,
                count: 1,
                rev_nat_id: 3,
                affinity_timeout: 10800,
                flags: 0,
                _pad: 0,
            },
        );
        snap.services.insert(
            ServiceKey {
                backend_slot: 1,
                ..master
            },
            ServiceValue {
                backend_id: 7,
                count: 0,
                rev_nat_id: 3,
                affinity_timeout: 0,
                flags: 0,
                _pad: 0,
            },
        );
        snap.backends.insert(
            7,
            Backend {
                address: u32::from(Ipv4Addr::new(198, 19, 1, 10)).to_be(),
                port: 8080u16.to_be(),
                proto: PROTO_TCP,
                flags: BACKEND_FLAG_TERMINATING,
            },
        );
        let mut name = [0u8; SERVICE_NAME_LEN];
        name[..16].copy_from_slice(b"default/web:http");
        snap.names.insert(3, ServiceName { name });
        let views = frontends(&snap);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].frontend, "198.18.200.10:80");
        assert_eq!(views[0].service, "default/web:http");
        assert_eq!(views[0].backends[0].state, "terminating");
        assert_eq!(
            (views[0].scope.as_str(), views[0].kind.as_str()),
            ("internal", "ClusterIP"),
            "a name without a kind byte (older agent) is a cluster IP"
        );
        let text = table(&views);
        assert!(text.starts_with("FRONTEND"), "{text}");
        assert!(text.contains("198.19.1.10:8080 (terminating)"), "{text}");
        assert!(text.contains("ClientIP/10800s"), "{text}");
    }

    #[test]
    fn shows_scope_kind_policy_and_maglev_of_external_frontends() {
        use crate::dataplane::writer::{kind_code, NAME_KIND_BYTE};
        use gangplank_common::{MaglevKey, SCOPE_EXTERNAL};

        let mut snap = Snapshot::default();
        let master = ServiceKey::scoped(0, 30080u16.to_be(), PROTO_TCP, SCOPE_EXTERNAL, 0);
        snap.services.insert(
            master,
            ServiceValue {
                backend_id: 251,
                count: 1,
                rev_nat_id: 4,
                affinity_timeout: 0,
                flags: SVC_FLAG_MAGLEV | SVC_FLAG_MAGLEV_GEN1 | SVC_FLAG_LOCAL | SVC_FLAG_NODEPORT,
                _pad: 0,
            },
        );
        snap.services.insert(
            ServiceKey {
                backend_slot: 1,
                ..master
            },
            ServiceValue {
                backend_id: 7,
                count: 0,
                rev_nat_id: 4,
                affinity_timeout: 0,
                flags: 0,
                _pad: 0,
            },
        );
        snap.backends.insert(
            7,
            Backend {
                address: u32::from(Ipv4Addr::new(198, 19, 1, 10)).to_be(),
                port: 8080u16.to_be(),
                proto: PROTO_TCP,
                flags: BACKEND_FLAG_LOCAL,
            },
        );
        let mut name = [0u8; SERVICE_NAME_LEN];
        name[..11].copy_from_slice(b"default/web");
        name[NAME_KIND_BYTE] = kind_code(FrontendKind::NodePort);
        snap.names.insert(4, ServiceName { name });
        // The table's only chunk is missing: inconsistent.
        let views = frontends(&snap);
        assert_eq!(views[0].state, "inconsistent");
        snap.maglev.insert(MaglevKey {
            rev_nat_id: 4,
            generation: 1,
            _pad: 0,
            chunk: 0,
        });
        let views = frontends(&snap);
        let v = &views[0];
        assert_eq!(
            (
                v.frontend.as_str(),
                v.scope.as_str(),
                v.kind.as_str(),
                v.service.as_str(),
                v.local_only,
                v.maglev_table_size,
                v.state.as_str(),
                v.backends[0].local,
            ),
            (
                "0.0.0.0:30080",
                "external",
                "NodePort",
                "default/web",
                true,
                251,
                "active",
                true
            )
        );
        let text = table(&views);
        assert!(text.contains("external"), "{text}");
        assert!(text.contains("NodePort/Local"), "{text}");
        assert!(text.contains("198.19.1.10:8080 (local)"), "{text}");
        let json = serde_json::to_value(&views).expect("serializes");
        assert_eq!(json[0]["scope"], "external");
        assert_eq!(json[0]["kind"], "NodePort");
    }
}
