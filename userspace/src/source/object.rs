//! The Kubernetes objects a source produces, independent of where they came from.

use std::fmt;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;

/// The object kinds a source knows how to read.
///
/// Each kind has exactly one supported `apiVersion` (the GA one); the API
/// server would convert older versions for us, a manifest directory cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1 Service`
    Service,
    /// `discovery.k8s.io/v1 EndpointSlice`
    EndpointSlice,
    /// `v1 Node` (cluster-scoped)
    Node,
    /// `networking.k8s.io/v1 Ingress`
    Ingress,
    /// `networking.k8s.io/v1 IngressClass` (cluster-scoped)
    IngressClass,
    /// `v1 Secret`
    Secret,
}

impl Kind {
    /// Every supported kind.
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
    ];

    /// The `kind` field value, e.g. `"Service"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Secret => "Secret",
        }
    }

    /// The only `apiVersion` accepted for this kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node | Kind::Secret => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::IngressClass)
    }

    /// Parses a `kind` field value (case-sensitive, as the API server is).
    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Kubernetes object read from a source.
///
/// Boxed because the k8s-openapi structs are large and differ in size; the
/// enum is moved around a lot while parsing.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A `v1 Service`.
    Service(Box<Service>),
    /// A `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(Box<EndpointSlice>),
    /// A `v1 Node`.
    Node(Box<Node>),
    /// A `networking.k8s.io/v1 Ingress`.
    Ingress(Box<Ingress>),
    /// A `networking.k8s.io/v1 IngressClass`.
    IngressClass(Box<IngressClass>),
    /// A `v1 Secret`.
    Secret(Box<Secret>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::Ingress(_) => Kind::Ingress,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::Secret(_) => Kind::Secret,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => o.metadata(),
            Object::EndpointSlice(o) => o.metadata(),
            Object::Node(o) => o.metadata(),
            Object::Ingress(o) => o.metadata(),
            Object::IngressClass(o) => o.metadata(),
            Object::Secret(o) => o.metadata(),
        }
    }

    /// The object's metadata, mutably (sources use it to apply defaults).
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Service(o) => o.metadata_mut(),
            Object::EndpointSlice(o) => o.metadata_mut(),
            Object::Node(o) => o.metadata_mut(),
            Object::Ingress(o) => o.metadata_mut(),
            Object::IngressClass(o) => o.metadata_mut(),
            Object::Secret(o) => o.metadata_mut(),
        }
    }

    /// The namespace; `None` for cluster-scoped kinds.
    ///
    /// Sources default a missing namespace to `default` for namespaced
    /// kinds, so this is `Some` for every namespaced object they produce.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// The name (sources reject objects without one, so never empty).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// A reference naming this object, for keys and messages.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            namespace: self.namespace().map(str::to_owned),
            name: self.name().to_owned(),
        }
    }
}

/// Identifies an object: kind, namespace (`None` when cluster-scoped) and name.
///
/// Displays as `Kind ns/name`, or `Kind name` for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The object's kind.
    pub kind: Kind,
    /// The namespace, `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// A reference to a namespaced object.
    pub fn namespaced(kind: Kind, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        }
    }
}

/// `NAMESPACE/NAME` (as command-line flags name objects) split in two;
/// `None` unless both parts are there and the name has no `/`.
pub fn split_namespaced(s: &str) -> Option<(&str, &str)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Some((ns, name))
        }
        _ => None,
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_and_knows_its_api_version() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_name("service"), None);
        assert_eq!(Kind::EndpointSlice.api_version(), "discovery.k8s.io/v1");
        assert_eq!(Kind::IngressClass.api_version(), "networking.k8s.io/v1");
        assert!(!Kind::Node.is_namespaced());
        assert!(Kind::Secret.is_namespaced());
    }

    #[test]
    fn object_ref_display() {
        let r = ObjectRef::namespaced(Kind::Service, "default", "web");
        assert_eq!(r.to_string(), "Service default/web");
        let n = ObjectRef {
            kind: Kind::Node,
            namespace: None,
            name: "n1".into(),
        };
        assert_eq!(n.to_string(), "Node n1");
    }
}
