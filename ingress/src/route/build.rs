//! Building a [`RouteTable`] from served Ingresses (see the module docs of
//! `route` for the rules applied).

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::debug;

use super::{
    validate, Backend, HostRoutes, IngressRef, Matched, PathType, Route, RouteError,
    RouteErrorKind, RouteTable, ServiceBackend, ServicePort,
};

/// A served Ingress with its identity and age.
struct Served<'a> {
    ingress: &'a Ingress,
    id: IngressRef,
    created: Option<&'a Time>,
}

impl Served<'_> {
    /// Precedence: oldest first, an unknown creation time counting as newest
    /// (manifests rarely carry one), then namespace/name.
    fn precedence(&self) -> (bool, Option<&Time>, &str, &str) {
        (
            self.created.is_none(),
            self.created,
            &self.id.namespace,
            &self.id.name,
        )
    }
}

/// Which [`HostRoutes`] of the table a rule goes to (hosts are lowercase
/// once validated).
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostKey {
    /// `foo.bar.com`.
    Exact(String),
    /// `*.bar.com`, keyed by `bar.com`.
    Wildcard(String),
    /// No host.
    Any,
}

/// The hosts an Ingress has rules for, and its default backend.
struct IngressHosts<'a> {
    served: usize,
    hosts: Vec<(HostKey, Option<Arc<str>>)>,
    has_rules: bool,
    default_backend: Option<&'a IngressBackend>,
}

struct Builder {
    table: RouteTable,
    /// The field each route of `table.routes` comes from.
    fields: Vec<String>,
    errors: Vec<RouteError>,
}

pub(super) fn build<'a>(
    ingresses: impl IntoIterator<Item = &'a Ingress>,
) -> (RouteTable, Vec<RouteError>) {
    let mut b = Builder {
        table: RouteTable::default(),
        fields: Vec::new(),
        errors: Vec::new(),
    };
    let mut served = Vec::new();
    for ingress in ingresses {
        let namespace = ingress
            .metadata
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        let Some(name) = ingress.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            b.error(
                &IngressRef::new(namespace, ""),
                "metadata.name".to_owned(),
                RouteErrorKind::MissingName,
            );
            continue;
        };
        served.push(Served {
            ingress,
            id: IngressRef::new(namespace, name),
            created: ingress.metadata.creation_timestamp.as_ref(),
        });
    }
    // Everything below inserts first-wins, so processing in precedence order
    // makes every conflict resolve to the oldest Ingress. Stable: duplicates
    // keep the source's order.
    served.sort_by(|a, b| a.precedence().cmp(&b.precedence()));

    let mut all_hosts = Vec::with_capacity(served.len());
    for (i, s) in served.iter().enumerate() {
        if let Some(hosts) = b.rules(i, s) {
            all_hosts.push(hosts);
        }
    }
    b.default_backends(&served, &all_hosts);

    debug!(
        ingresses = served.len(),
        routes = b.table.routes.len(),
        errors = b.errors.len(),
        "route table built"
    );
    (b.table, b.errors)
}

impl Builder {
    fn error(&mut self, ingress: &IngressRef, field: String, kind: RouteErrorKind) {
        self.errors.push(RouteError {
            ingress: ingress.clone(),
            field,
            kind,
        });
    }

    fn hosts_mut(&mut self, key: &HostKey) -> &mut HostRoutes {
        match key {
            HostKey::Exact(h) => self.table.exact_hosts.entry(h.as_str().into()).or_default(),
            HostKey::Wildcard(h) => self
                .table
                .wildcard_hosts
                .entry(h.as_str().into())
                .or_default(),
            HostKey::Any => self.table.any_host.get_or_insert_with(HostRoutes::default),
        }
    }

    fn push(&mut self, route: Route, field: String) -> u32 {
        let index = u32::try_from(self.table.routes.len()).expect("fewer than 2^32 routes");
        self.table.routes.push(route);
        self.fields.push(field);
        index
    }

    /// Adds the rules of one Ingress; `None` when it has nothing to serve.
    fn rules<'a>(&mut self, served: usize, s: &Served<'a>) -> Option<IngressHosts<'a>> {
        let spec = s.ingress.spec.as_ref();
        let rules = spec.and_then(|s| s.rules.as_deref()).unwrap_or_default();
        let default_backend = spec.and_then(|s| s.default_backend.as_ref());
        if rules.is_empty() && default_backend.is_none() {
            self.error(&s.id, "spec".to_owned(), RouteErrorKind::NothingToServe);
            return None;
        }
        let mut hosts: Vec<(HostKey, Option<Arc<str>>)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let (key, host) = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                None => (HostKey::Any, None),
                Some(h) => {
                    if let Err(reason) = validate::host(h) {
                        let kind = RouteErrorKind::InvalidHost {
                            host: h.to_owned(),
                            reason,
                        };
                        self.error(&s.id, format!("spec.rules[{i}].host"), kind);
                        continue;
                    }
                    let key = match h.strip_prefix("*.") {
                        Some(parent) => HostKey::Wildcard(parent.to_owned()),
                        None => HostKey::Exact(h.to_owned()),
                    };
                    (key, Some(Arc::from(h)))
                }
            };
            // A rule without paths still claims its host (and so brings the
            // Ingress's default backend to it), as in ingress-nginx.
            self.hosts_mut(&key);
            if !hosts.iter().any(|(k, _)| *k == key) {
                hosts.push((key.clone(), host.clone()));
            }
            let Some(http) = &rule.http else {
                continue;
            };
            if http.paths.is_empty() {
                let field = format!("spec.rules[{i}].http.paths");
                self.error(&s.id, field, RouteErrorKind::NoPaths);
            }
            for (j, p) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let Some(path_type) = PathType::from_name(&p.path_type) else {
                    let kind = RouteErrorKind::InvalidPathType(p.path_type.clone());
                    self.error(&s.id, format!("{field}.pathType"), kind);
                    continue;
                };
                let written = p.path.as_deref().unwrap_or_default();
                let path = match (written, path_type) {
                    ("", PathType::ImplementationSpecific) => "/",
                    _ => written,
                };
                if let Err(reason) = validate::path(path) {
                    let kind = RouteErrorKind::InvalidPath {
                        path: written.to_owned(),
                        reason,
                    };
                    self.error(&s.id, format!("{field}.path"), kind);
                    continue;
                }
                if validate::looks_like_regex(path) {
                    let kind = RouteErrorKind::RegexPath(path.to_owned());
                    self.error(&s.id, format!("{field}.path"), kind);
                }
                let backend = self.backend(&p.backend, &s.id, &format!("{field}.backend"));
                let route = Route {
                    ingress: s.id.clone(),
                    host: host.clone(),
                    matched: Matched::Path {
                        path: path.into(),
                        path_type,
                    },
                    backend,
                };
                self.insert_path(&key, path, path_type, route, field);
            }
        }
        Some(IngressHosts {
            served,
            hosts,
            has_rules: !rules.is_empty(),
            default_backend,
        })
    }

    /// Inserts a path route unless the host already has one with the same
    /// matching key (then the older one stays: a conflict warning).
    fn insert_path(
        &mut self,
        key: &HostKey,
        path: &str,
        path_type: PathType,
        route: Route,
        field: String,
    ) {
        let exact = path_type == PathType::Exact;
        // Prefix `/foo/` matches exactly what `/foo` matches; valid paths
        // have no `//`, so one trailing slash at most.
        let map_key = if exact {
            path
        } else {
            path.strip_suffix('/').unwrap_or(path)
        };
        let hosts = self.hosts_mut(key);
        let map = if exact { &hosts.exact } else { &hosts.prefix };
        if let Some(&winner) = map.get(map_key) {
            let kind = RouteErrorKind::Conflict {
                host: route.host.as_deref().map(str::to_owned),
                path: path.to_owned(),
                path_type,
                winner: self.table.routes[winner as usize].ingress.clone(),
                winner_field: self.fields[winner as usize].clone(),
            };
            self.error(&route.ingress, field, kind);
            return;
        }
        let index = self.push(route, field);
        let hosts = self.hosts_mut(key);
        let map = if exact {
            &mut hosts.exact
        } else {
            &mut hosts.prefix
        };
        map.insert(map_key.into(), index);
    }

    /// Sets the per-host and the cluster-wide default backends.
    fn default_backends(&mut self, served: &[Served<'_>], all: &[IngressHosts<'_>]) {
        // Candidates for the cluster-wide default: Ingresses without rules
        // (dedicated catch-alls) first, then by precedence (`all` is in
        // precedence order already; the sort is stable).
        let mut global: Vec<(bool, &IngressRef, Backend)> = Vec::new();
        for ih in all {
            let Some(default_backend) = ih.default_backend else {
                continue;
            };
            let id = &served[ih.served].id;
            let backend = self.backend(default_backend, id, "spec.defaultBackend");
            for (key, host) in &ih.hosts {
                if let Some(winner) = self.hosts_mut(key).default {
                    let kind = RouteErrorKind::DefaultBackendShadowed {
                        host: host.as_deref().map(str::to_owned),
                        winner: self.table.routes[winner as usize].ingress.clone(),
                    };
                    self.error(id, "spec.defaultBackend".to_owned(), kind);
                    continue;
                }
                let route = Route {
                    ingress: id.clone(),
                    host: host.clone(),
                    matched: Matched::DefaultBackend,
                    backend: backend.clone(),
                };
                let index = self.push(route, "spec.defaultBackend".to_owned());
                self.hosts_mut(key).default = Some(index);
            }
            global.push((ih.has_rules, id, backend));
        }
        global.sort_by_key(|(has_rules, _, _)| *has_rules);
        let mut candidates = global.into_iter();
        let Some((_, winner, backend)) = candidates.next() else {
            return;
        };
        let route = Route {
            ingress: winner.clone(),
            host: None,
            matched: Matched::DefaultBackend,
            backend,
        };
        self.table.default = Some(self.push(route, "spec.defaultBackend".to_owned()));
        for (has_rules, id, _) in candidates {
            // An Ingress with rules still has its default backend used for
            // its own hosts; a rule-less one is entirely shadowed.
            if !has_rules {
                let kind = RouteErrorKind::DefaultBackendShadowed {
                    host: None,
                    winner: winner.clone(),
                };
                self.error(id, "spec.defaultBackend".to_owned(), kind);
            }
        }
    }

    /// Converts and validates a backend; problems are reported and give
    /// [`Backend::Invalid`] (or [`Backend::Resource`]), never a missing route.
    fn backend(&mut self, b: &IngressBackend, id: &IngressRef, field: &str) -> Backend {
        let mut invalid = |field: String, reason: &str| {
            let kind = RouteErrorKind::InvalidBackend(reason.to_owned());
            self.errors.push(RouteError {
                ingress: id.clone(),
                field,
                kind,
            });
            Backend::Invalid
        };
        let service = match (&b.service, &b.resource) {
            (Some(_), Some(_)) => {
                return invalid(
                    field.to_owned(),
                    "cannot set both resource and service backends",
                )
            }
            (None, None) => {
                return invalid(field.to_owned(), "resource or service backend is required")
            }
            (None, Some(r)) => {
                let kind = RouteErrorKind::ResourceBackend {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                };
                self.errors.push(RouteError {
                    ingress: id.clone(),
                    field: format!("{field}.resource"),
                    kind,
                });
                return Backend::Resource {
                    api_group: r.api_group.as_deref().map(Arc::from),
                    kind: r.kind.as_str().into(),
                    name: r.name.as_str().into(),
                };
            }
            (Some(service), None) => service,
        };
        if let Err(reason) = validate::service_name(&service.name) {
            return invalid(format!("{field}.service.name"), reason);
        }
        let port = service.port.as_ref();
        // The API server treats an empty name and port 0 as unset.
        let name = port
            .and_then(|p| p.name.as_deref())
            .filter(|n| !n.is_empty());
        let number = port.and_then(|p| p.number).filter(|&n| n != 0);
        let port = match (name, number) {
            (Some(_), Some(_)) => {
                return invalid(
                    format!("{field}.service.port"),
                    "cannot set both port name & port number",
                )
            }
            (None, None) => {
                return invalid(
                    format!("{field}.service.port"),
                    "port name or number is required",
                )
            }
            (Some(name), None) => {
                if let Err(reason) = validate::port_name(name) {
                    return invalid(format!("{field}.service.port.name"), reason);
                }
                ServicePort::Name(name.into())
            }
            (None, Some(number)) => match u16::try_from(number) {
                Ok(n) if n > 0 => ServicePort::Number(n),
                _ => {
                    return invalid(
                        format!("{field}.service.port.number"),
                        "port number must be between 1 and 65535, inclusive",
                    )
                }
            },
        };
        Backend::Service(ServiceBackend {
            namespace: id.namespace.clone(),
            name: service.name.as_str().into(),
            port,
        })
    }
}
