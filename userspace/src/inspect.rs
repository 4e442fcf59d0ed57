//! `gangplank service list`: what the datapath serves, read back from the
//! pinned maps (not from the agent's memory), so it shows the truth even
//! when the agent is down.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use gangplank_common::{ServiceKey, BACKEND_FLAG_TERMINATING, PROTO_TCP, PROTO_UDP};
use serde::Serialize;

use crate::dataplane::Snapshot;

/// One frontend as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    pub frontend: String,
    pub protocol: String,
    pub service: String,
    pub rev_nat_id: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds (0 = none).
    pub affinity_timeout: u32,
    /// `active`, `no-backends` (connections refused) or `inconsistent`.
    pub state: String,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub address: String,
    /// `active` or `terminating`.
    pub state: String,
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
    masters.sort_by_key(|(k, _)| (u32::from_be(k.address), u16::from_be(k.port), k.proto));
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
                    })
                })
                .collect();
            let service = snap
                .names
                .get(&value.rev_nat_id)
                .map(|n| {
                    let end = n.name.iter().position(|b| *b == 0).unwrap_or(n.name.len());
                    String::from_utf8_lossy(&n.name[..end]).into_owned()
                })
                .unwrap_or_default();
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
                service,
                rev_nat_id: value.rev_nat_id,
                affinity_timeout: value.affinity_timeout,
                state: state.into(),
                backends,
            }
        })
        .collect()
}

/// kubectl-style table.
pub fn table(views: &[FrontendView]) -> String {
    let headers = [
        "FRONTEND", "PROTO", "SERVICE", "STATE", "AFFINITY", "BACKENDS",
    ];
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|v| {
            let backends = if v.backends.is_empty() {
                "<none>".to_string()
            } else {
                v.backends
                    .iter()
                    .map(|b| {
                        if b.state == "active" {
                            b.address.clone()
                        } else {
                            format!("{} ({})", b.address, b.state)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let affinity = if v.affinity_timeout == 0 {
                "-".to_string()
            } else {
                format!("ClientIP/{}s", v.affinity_timeout)
            };
            [
                v.frontend.clone(),
                v.protocol.clone(),
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
        let text = table(&views);
        assert!(text.starts_with("FRONTEND"), "{text}");
        assert!(text.contains("198.19.1.10:8080 (terminating)"), "{text}");
        assert!(text.contains("ClientIP/10800s"), "{text}");
    }
}
