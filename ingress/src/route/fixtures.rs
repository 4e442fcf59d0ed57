//! Builders for Ingresses and IngressClasses, for tests: they build the
//! k8s-openapi objects exactly as a manifest or the API server gives them.
//!
//! `ingress("web").rule("foo.com", [prefix("/", svc("web", 80))]).build()`

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TypedLocalObjectReference;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::{ClassConfig, RouteError, RouteTable, DEFAULT_CONTROLLER};

/// The IngressClass most tests use: ours, not the default.
pub const CLASS: &str = "gangplank";

/// A `metadata.creationTimestamp` `secs` seconds after the epoch.
pub fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("valid timestamp"))
}

/// A Service backend with a port number.
pub fn svc(name: &str, port: i32) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.to_owned(),
            port: Some(ServiceBackendPort {
                number: Some(port),
                name: None,
            }),
        }),
        resource: None,
    }
}

/// A Service backend with a port name.
pub fn svc_named(name: &str, port: &str) -> IngressBackend {
    IngressBackend {
        service: Some(IngressServiceBackend {
            name: name.to_owned(),
            port: Some(ServiceBackendPort {
                number: None,
                name: Some(port.to_owned()),
            }),
        }),
        resource: None,
    }
}

/// A `resource` backend.
pub fn resource(kind: &str, name: &str) -> IngressBackend {
    IngressBackend {
        service: None,
        resource: Some(TypedLocalObjectReference {
            api_group: Some("k8s.example.com".to_owned()),
            kind: kind.to_owned(),
            name: name.to_owned(),
        }),
    }
}

/// A path of any `pathType` spelling (`None`: no path field).
pub fn path(path: Option<&str>, path_type: &str, backend: IngressBackend) -> HTTPIngressPath {
    HTTPIngressPath {
        path: path.map(str::to_owned),
        path_type: path_type.to_owned(),
        backend,
    }
}

/// An Exact path.
pub fn exact(p: &str, backend: IngressBackend) -> HTTPIngressPath {
    path(Some(p), "Exact", backend)
}

/// A Prefix path.
pub fn prefix(p: &str, backend: IngressBackend) -> HTTPIngressPath {
    path(Some(p), "Prefix", backend)
}

/// An ImplementationSpecific path.
pub fn implementation_specific(p: &str, backend: IngressBackend) -> HTTPIngressPath {
    path(Some(p), "ImplementationSpecific", backend)
}

/// Builds an Ingress: namespace `default`, class [`CLASS`], no creation time.
#[derive(Clone, Debug)]
pub struct IngressBuilder {
    ingress: Ingress,
}

/// An Ingress named `name` in namespace `default` with class [`CLASS`].
pub fn ingress(name: &str) -> IngressBuilder {
    IngressBuilder {
        ingress: Ingress {
            metadata: ObjectMeta {
                namespace: Some("default".to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: Some(CLASS.to_owned()),
                ..IngressSpec::default()
            }),
            status: None,
        },
    }
}

impl IngressBuilder {
    fn spec(&mut self) -> &mut IngressSpec {
        self.ingress.spec.get_or_insert_with(IngressSpec::default)
    }

    /// Sets `metadata.namespace`.
    pub fn ns(mut self, namespace: &str) -> Self {
        self.ingress.metadata.namespace = Some(namespace.to_owned());
        self
    }

    /// Sets `metadata.creationTimestamp` to `secs` after the epoch.
    pub fn created(mut self, secs: i64) -> Self {
        self.ingress.metadata.creation_timestamp = Some(at(secs));
        self
    }

    /// Sets `spec.ingressClassName` (`None`: unset).
    pub fn class(mut self, class: Option<&str>) -> Self {
        self.spec().ingress_class_name = class.map(str::to_owned);
        self
    }

    /// Adds a `metadata.annotations` entry.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.ingress
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets `spec.defaultBackend`.
    pub fn default_backend(mut self, backend: IngressBackend) -> Self {
        self.spec().default_backend = Some(backend);
        self
    }

    /// Adds a rule; `""` for no host.
    pub fn rule(mut self, host: &str, paths: impl IntoIterator<Item = HTTPIngressPath>) -> Self {
        let rule = IngressRule {
            host: (!host.is_empty()).then(|| host.to_owned()),
            http: Some(HTTPIngressRuleValue {
                paths: paths.into_iter().collect(),
            }),
        };
        self.spec().rules.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// Adds a rule with a host and no `http` at all.
    pub fn host_only(mut self, host: &str) -> Self {
        let rule = IngressRule {
            host: Some(host.to_owned()),
            http: None,
        };
        self.spec().rules.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// The Ingress.
    pub fn build(self) -> Ingress {
        self.ingress
    }
}

/// An IngressClass `name` with `spec.controller: controller`.
pub fn ingress_class(name: &str, controller: &str) -> IngressClass {
    IngressClass {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(controller.to_owned()),
            parameters: None,
        }),
    }
}

/// An IngressClass marked as the default class, created at `secs`.
pub fn default_class(name: &str, controller: &str, secs: i64) -> IngressClass {
    let mut class = ingress_class(name, controller);
    class.metadata.creation_timestamp = Some(at(secs));
    class.metadata.annotations = Some(BTreeMap::from([(
        super::IS_DEFAULT_CLASS_ANNOTATION.to_owned(),
        "true".to_owned(),
    )]));
    class
}

/// Builds a table from these Ingresses with our class [`CLASS`] present and
/// the default configuration.
pub fn table(ingresses: &[Ingress]) -> (RouteTable, Vec<RouteError>) {
    let classes = [ingress_class(CLASS, DEFAULT_CONTROLLER)];
    RouteTable::build(ingresses, &classes, &ClassConfig::default())
}

/// Like [`table`], asserting that there are no errors or warnings.
pub fn clean_table(ingresses: &[Ingress]) -> RouteTable {
    let (table, errors) = table(ingresses);
    assert!(
        errors.is_empty(),
        "expected no route errors, got {errors:#?}"
    );
    table
}
