//! From Kubernetes objects to what the proxy serves: the objects read from
//! the manifest source (the agent's own `gangplank::source`, so both read
//! manifests the same way), kept per file, and turned on every change into a
//! new [`ProxyState`] and [`CertStore`] (see [`ObjectStore::build`]).
//!
//! A whole rebuild per change keeps this simple and obviously consistent;
//! it costs milliseconds for hundreds of Ingresses, and changes arrive
//! coalesced (at most every 100 ms) from the watcher.
//!
//! Bad input never takes good objects down: a document that fails to parse
//! keeps the previous version of its object (or, when the object cannot
//! even be named, every object the file held before), and the builders
//! skip what is invalid and report it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gangplank::source::{DirChange, Object, ObjectRef, ParsedFile};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::annotations::IngressOptions;
use crate::proxy::ProxyState;
use crate::route::{ClassConfig, ClassFilter, IngressRef, RouteTable};
use crate::status::{ingress_addresses, service_addresses, IngressStatus, LbAddress, Publish};
use crate::tls::{CertStore, SecretRef};
use crate::upstream::build_upstreams;

/// The kinds the Ingress proxy reads.
pub const KINDS: &[&str] = &[
    "Ingress",
    "IngressClass",
    "Service",
    "EndpointSlice",
    "Secret",
];

/// What the proxy is configured with besides the objects.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Which IngressClasses are ours.
    pub class: ClassConfig,
    /// `--default-certificate`.
    pub default_certificate: Option<SecretRef>,
    /// What Ingress status publishes (`--publish-service`,
    /// `--publish-address`).
    pub publish: Publish,
}

/// The objects of every manifest file.
#[derive(Debug, Default)]
pub struct ObjectStore {
    files: HashMap<PathBuf, FileObjects>,
    next_seq: u64,
}

#[derive(Debug, Default)]
struct FileObjects {
    /// Applied in this order: the file applied last wins a duplicate.
    seq: u64,
    objects: Vec<Object>,
}

/// One rebuild's result.
#[derive(Debug)]
pub struct Built {
    /// What requests are routed with.
    pub state: ProxyState,
    /// The certificates (also in `state.tls`).
    pub certs: Arc<CertStore>,
    /// Every problem in the applied objects, each naming its object.
    pub errors: Vec<String>,
    /// The Secrets served Ingresses (and `--default-certificate`) name:
    /// in cluster mode, the only Secrets read.
    pub secrets: BTreeSet<SecretRef>,
    /// Every Ingress, served or not, with its current status.
    pub ingresses: Vec<IngressStatus>,
    /// The addresses served Ingresses' status should show (empty when
    /// nothing is published).
    pub publish: Vec<LbAddress>,
}

impl ObjectStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a watcher batch: removed files first, then changed ones.
    /// Returns the source's parse errors (file, document and object named).
    pub fn apply(&mut self, change: DirChange) -> Vec<String> {
        for path in &change.removed {
            self.files.remove(path);
        }
        let mut errors = Vec::new();
        for (path, parsed) in change.changed {
            errors.extend(parsed.errors.iter().map(ToString::to_string));
            self.replace_file(&path, parsed);
        }
        errors
    }

    /// Replaces what `path` defined with `parsed`'s objects, keeping the
    /// previous version of any object whose new document failed to parse.
    pub fn replace_file(&mut self, path: &Path, parsed: ParsedFile) {
        let keep_all = parsed.errors.iter().any(|e| e.object().is_none());
        let failed: BTreeSet<ObjectRef> = parsed
            .errors
            .iter()
            .filter_map(|e| e.object().cloned())
            .collect();
        let mut objects = parsed.objects;
        if let Some(previous) = self.files.remove(path) {
            let present: BTreeSet<ObjectRef> = objects.iter().map(Object::object_ref).collect();
            objects.extend(previous.objects.into_iter().filter(|o| {
                let r = o.object_ref();
                !present.contains(&r) && (keep_all || failed.contains(&r))
            }));
        }
        self.next_seq += 1;
        self.files.insert(
            path.to_owned(),
            FileObjects {
                seq: self.next_seq,
                objects,
            },
        );
    }

    /// Whether the Secret `secret` is in the store.
    pub fn has_secret(&self, secret: &SecretRef) -> bool {
        self.files.values().flat_map(|f| &f.objects).any(|o| {
            matches!(o, Object::Secret(_))
                && o.namespace() == Some(secret.namespace.as_str())
                && o.name() == secret.name
        })
    }

    /// Every object once: when two files define the same object, the one
    /// applied last.
    fn objects(&self) -> impl Iterator<Item = &Object> {
        let mut winners: BTreeMap<ObjectRef, (u64, &Object)> = BTreeMap::new();
        for file in self.files.values() {
            for object in &file.objects {
                let entry = winners
                    .entry(object.object_ref())
                    .or_insert((file.seq, object));
                if file.seq > entry.0 {
                    *entry = (file.seq, object);
                }
            }
        }
        winners.into_values().map(|(_, o)| o)
    }

    /// Builds the proxy's state from the objects. `previous` (the
    /// certificates being served) lets an unchanged certificate be reused
    /// instead of parsed again.
    pub fn build(&self, settings: &Settings, previous: Option<&CertStore>) -> Built {
        let mut ingresses: Vec<&Ingress> = Vec::new();
        let mut classes: Vec<&IngressClass> = Vec::new();
        let mut services: Vec<&Service> = Vec::new();
        let mut slices: Vec<&EndpointSlice> = Vec::new();
        let mut secrets: Vec<&Secret> = Vec::new();
        for object in self.objects() {
            match object {
                Object::Ingress(o) => ingresses.push(o),
                Object::IngressClass(o) => classes.push(o),
                Object::Service(o) => services.push(o),
                Object::EndpointSlice(o) => slices.push(o),
                Object::Secret(o) => secrets.push(o),
                Object::Node(_) => {}
            }
        }
        let filter = ClassFilter::new(classes.iter().copied(), &settings.class);
        let statuses: Vec<IngressStatus> = ingresses
            .iter()
            .map(|i| IngressStatus {
                ingress: ingress_ref(i),
                served: filter.serves(i),
                current: ingress_addresses(i),
            })
            .collect();
        let served: Vec<&Ingress> = ingresses.into_iter().filter(|i| filter.serves(i)).collect();
        let mut wanted_secrets: BTreeSet<SecretRef> =
            settings.default_certificate.iter().cloned().collect();
        for ingress in &served {
            let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
            let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
            for name in tls
                .into_iter()
                .flatten()
                .filter_map(|t| t.secret_name.as_deref())
            {
                wanted_secrets.insert(SecretRef::new(namespace, name));
            }
        }
        let publish = match &settings.publish {
            Publish::Nothing => Vec::new(),
            Publish::Addresses(addresses) => addresses.clone(),
            Publish::Service(namespace, name) => services
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref().unwrap_or("default") == namespace
                        && s.metadata.name.as_deref() == Some(name)
                })
                .map(|s| service_addresses(s))
                .unwrap_or_default(),
        };

        let mut errors = Vec::new();
        let (routes, route_errors) = RouteTable::from_served(served.iter().copied());
        errors.extend(route_errors.iter().map(ToString::to_string));

        let mut options = crate::FastMap::default();
        for ingress in &served {
            let (opts, problems) = IngressOptions::from_ingress(ingress);
            let name = ingress_ref(ingress);
            errors.extend(problems.iter().map(|p| format!("Ingress {name}: {p}")));
            options.insert(name, opts);
        }

        let (certs, tls_errors) = CertStore::build(
            served.iter().copied(),
            secrets,
            settings.default_certificate.as_ref(),
            previous,
        );
        errors.extend(tls_errors.iter().map(ToString::to_string));

        let (upstreams, upstream_errors) = build_upstreams(&routes, services, slices);
        errors.extend(upstream_errors.iter().map(ToString::to_string));

        let certs = Arc::new(certs);
        Built {
            state: ProxyState {
                routes: Arc::new(routes),
                upstreams: Arc::new(upstreams),
                options: Arc::new(options),
                tls: Some(certs.clone()),
            },
            certs,
            errors,
            secrets: wanted_secrets,
            ingresses: statuses,
            publish,
        }
    }
}

fn ingress_ref(ingress: &Ingress) -> IngressRef {
    IngressRef::new(
        ingress.metadata.namespace.as_deref().unwrap_or("default"),
        ingress.metadata.name.as_deref().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests;
