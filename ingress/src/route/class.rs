//! Which Ingresses are ours: IngressClass selection.

use std::collections::HashSet;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Our `IngressClass.spec.controller` unless configured otherwise.
pub const DEFAULT_CONTROLLER: &str = "gangplank.io/ingress";

/// IngressClass annotation that makes it the class of Ingresses without one.
/// Only the exact value `"true"` counts, as in the API server's admission
/// plugin.
pub const IS_DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The class annotation that predates `spec.ingressClassName` (deprecated
/// since Kubernetes 1.18, still common in manifests).
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Which IngressClasses we serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassConfig {
    /// `spec.controller` of the IngressClasses we serve
    /// (default [`DEFAULT_CONTROLLER`]).
    pub controller: String,
    /// `--ingress-class NAME`: serve only the IngressClass of this name (it
    /// must still have our controller), so that two gangplank deployments
    /// can split one controller's classes. Also the value accepted in the
    /// deprecated `kubernetes.io/ingress.class` annotation when no
    /// IngressClass of that name exists (clusters from before IngressClass,
    /// as ingress-nginx does). `None`: every class with our controller.
    pub class_name: Option<String>,
}

impl Default for ClassConfig {
    fn default() -> Self {
        ClassConfig {
            controller: DEFAULT_CONTROLLER.to_owned(),
            class_name: None,
        }
    }
}

/// Decides which Ingresses are ours, from the IngressClasses of the cluster.
///
/// - `spec.ingressClassName: X`: served when IngressClass `X` exists, has our
///   controller (and is the configured class name, if one is set).
/// - No `ingressClassName` but annotation `kubernetes.io/ingress.class: X`
///   (honoured like ingress-nginx does; the API server refuses both on
///   create, and if both are set the field wins): served when IngressClass
///   `X` is ours as above, or when no IngressClass `X` exists and `X` is the
///   configured class name.
/// - Neither: served when the default IngressClass is ours. With several
///   default classes the newest one counts (creationTimestamp, then name),
///   as the `DefaultIngressClass` admission plugin picks, so that two
///   controllers never both serve a class-less Ingress.
///
/// The tls module uses the same filter to pick the Ingresses whose
/// `spec.tls` it loads.
#[derive(Clone, Debug, Default)]
pub struct ClassFilter {
    /// Names of the IngressClasses we serve.
    ours: HashSet<String>,
    /// Names of every IngressClass.
    known: HashSet<String>,
    /// Whether the (newest) default IngressClass is ours.
    default_is_ours: bool,
    /// Accepted in the annotation when no such IngressClass exists.
    legacy_name: Option<String>,
}

impl ClassFilter {
    /// A filter for these IngressClasses and configuration.
    pub fn new<'a>(
        classes: impl IntoIterator<Item = &'a IngressClass>,
        config: &ClassConfig,
    ) -> Self {
        let mut filter = ClassFilter {
            legacy_name: config.class_name.clone(),
            ..ClassFilter::default()
        };
        let mut default: Option<(Option<&Time>, &str, bool)> = None;
        for class in classes {
            let Some(name) = class.metadata.name.as_deref() else {
                continue;
            };
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            let ours = controller == Some(config.controller.as_str())
                && config.class_name.as_deref().is_none_or(|n| n == name);
            filter.known.insert(name.to_owned());
            if ours {
                filter.ours.insert(name.to_owned());
            }
            let is_default = class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(IS_DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            if is_default {
                let candidate = (class.metadata.creation_timestamp.as_ref(), name, ours);
                // Newest wins; an unknown creation time counts as oldest.
                if default.is_none_or(|d| (candidate.0, candidate.1) > (d.0, d.1)) {
                    default = Some(candidate);
                }
            }
        }
        filter.default_is_ours = default.is_some_and(|d| d.2);
        filter
    }

    /// Whether we serve this Ingress.
    pub fn serves(&self, ingress: &Ingress) -> bool {
        let class_name = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .filter(|n| !n.is_empty());
        if let Some(name) = class_name {
            return self.ours.contains(name);
        }
        let annotation = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION));
        if let Some(name) = annotation {
            return self.ours.contains(name.as_str())
                || (!self.known.contains(name.as_str())
                    && self.legacy_name.as_deref() == Some(name.as_str()));
        }
        self.default_is_ours
    }
}
