//! The fake API server's objects and their history: resourceVersions, the
//! event log watches replay from, compaction (which makes old
//! resourceVersions answer 410 Gone), and the JSON the real API server
//! sends for lists, events and errors.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde_json::{json, Map, Value};

/// A resource type the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// `Service`.
    pub kind: &'static str,
    /// `v1`, `discovery.k8s.io/v1`.
    pub api_version: &'static str,
    /// `services`.
    pub plural: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

impl Resource {
    /// The API group (`""` for core).
    pub fn group(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }
}

/// Every resource type served.
pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: "Service",
        api_version: "v1",
        plural: "services",
        namespaced: true,
    },
    Resource {
        kind: "Secret",
        api_version: "v1",
        plural: "secrets",
        namespaced: true,
    },
    Resource {
        kind: "Node",
        api_version: "v1",
        plural: "nodes",
        namespaced: false,
    },
    Resource {
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
    },
    Resource {
        kind: "Ingress",
        api_version: "networking.k8s.io/v1",
        plural: "ingresses",
        namespaced: true,
    },
    Resource {
        kind: "IngressClass",
        api_version: "networking.k8s.io/v1",
        plural: "ingressclasses",
        namespaced: false,
    },
    Resource {
        kind: "Lease",
        api_version: "coordination.k8s.io/v1",
        plural: "leases",
        namespaced: true,
    },
    // The chart's clean-up DaemonSet, which `gangplank uninstall-wait`
    // follows and deletes.
    Resource {
        kind: "DaemonSet",
        api_version: "apps/v1",
        plural: "daemonsets",
        namespaced: true,
    },
];

/// The resource type of `kind`.
pub fn resource_of_kind(kind: &str) -> Option<Resource> {
    RESOURCES.iter().copied().find(|r| r.kind == kind)
}

/// An object's key: plural, namespace (`""` when cluster-scoped), name.
pub type Key = (String, String, String);

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion it created.
    pub rv: u64,
    /// Its object's key.
    pub key: Key,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for DELETED).
    pub object: Value,
}

/// Objects, history and failure injection.
#[derive(Debug, Default)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Change>,
    /// Watches must start at or after this resourceVersion.
    compacted: u64,
    uid: u64,
    /// `(verb, plural)` pairs answered 403.
    pub denied: HashSet<(String, String)>,
    /// With any entry: RBAC, by bearer token. A request is allowed only if
    /// one of its token's rules allows it (see [`PolicyRule::allows`]).
    pub authorized: std::collections::HashMap<String, Vec<PolicyRule>>,
}

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// 404.
    NotFound,
    /// 409: exists already, or the resourceVersion precondition failed.
    Conflict(String),
    /// 400.
    Invalid(String),
}

impl Store {
    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The first resourceVersion a watch may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forgets the history: watches from an older resourceVersion get 410.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of `plural` in `namespace` (all namespaces for `None`) that
    /// match `field_selector`, in key order: the page of `limit` from
    /// `offset`, and how many there are in all.
    pub fn list(
        &self,
        plural: &str,
        namespace: Option<&str>,
        field_selector: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (Vec<Value>, usize) {
        let from = (plural.to_owned(), String::new(), String::new());
        let matching = || {
            self.objects
                .range(from.clone()..)
                .take_while(|(key, _)| key.0 == plural)
                .filter(|(key, object)| {
                    namespace.is_none_or(|ns| key.1 == ns) && matches_fields(object, field_selector)
                })
        };
        let total = matching().count();
        let page = matching()
            .skip(offset)
            .take(limit)
            .map(|(_, object)| object.clone())
            .collect();
        (page, total)
    }

    /// Changes after `rv` to objects of `plural`, oldest first.
    pub fn changes_since(&self, rv: u64, plural: &str) -> Vec<Change> {
        self.log
            .iter()
            .filter(|c| c.rv > rv && c.key.0 == plural)
            .cloned()
            .collect()
    }

    /// Creates or replaces `object` (its `kind` says where it goes). With
    /// `expect_rv`, fails unless the stored object has that
    /// resourceVersion (optimistic concurrency, as PUT does).
    pub fn put(
        &mut self,
        mut object: Value,
        create_only: bool,
    ) -> Result<(Value, Change), WriteError> {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let resource = resource_of_kind(&kind)
            .ok_or_else(|| WriteError::Invalid(format!("unknown kind {kind:?}")))?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(WriteError::Invalid("metadata.name is required".into()));
        }
        let namespace = if resource.namespaced {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        object["apiVersion"] = json!(resource.api_version);
        let key = (resource.plural.to_owned(), namespace, name);
        let existing = self.objects.get(&key);
        if create_only && existing.is_some() {
            return Err(WriteError::Conflict(format!(
                "{} {:?} already exists",
                resource.plural, key.2
            )));
        }
        if let (Some(expected), Some(current)) =
            (object["metadata"]["resourceVersion"].as_str(), existing)
        {
            if current["metadata"]["resourceVersion"].as_str() != Some(expected) {
                return Err(WriteError::Conflict(format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    resource.plural, key.2
                )));
            }
        }
        let (change_kind, uid, created) = match existing {
            Some(current) => (
                "MODIFIED",
                current["metadata"]["uid"].clone(),
                current["metadata"]["creationTimestamp"].clone(),
            ),
            None => {
                self.uid += 1;
                (
                    "ADDED",
                    json!(format!("00000000-0000-0000-0000-{:012}", self.uid)),
                    json!("2026-11-22T00:00:00Z"),
                )
            }
        };
        self.rv += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        self.objects.insert(key.clone(), object.clone());
        let change = Change {
            rv: self.rv,
            key,
            kind: change_kind,
            object: object.clone(),
        };
        self.log.push_back(change.clone());
        Ok((object, change))
    }

    /// Deletes the object at `key`.
    pub fn delete(&mut self, key: &Key) -> Result<(Value, Change), WriteError> {
        let mut object = self.objects.remove(key).ok_or(WriteError::NotFound)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let change = Change {
            rv: self.rv,
            key: key.clone(),
            kind: "DELETED",
            object: object.clone(),
        };
        self.log.push_back(change.clone());
        Ok((object, change))
    }
}

/// Whether `object` matches a field selector of `metadata.name=X` and
/// `metadata.namespace=Y` terms (the only fields the clients use).
pub fn matches_fields(object: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let (field, want, equal) = match term.split_once("!=") {
            Some((f, v)) => (f, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((f, v)) => (f, v, true),
                None => return false,
            },
        };
        let have = match field {
            "metadata.name" => object["metadata"]["name"].as_str(),
            "metadata.namespace" => object["metadata"]["namespace"].as_str(),
            _ => return false,
        };
        (have == Some(want)) == equal
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A `metav1.Status` failure, as the API server sends it.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// The 403 message of the real API server for a denied request.
/// One RBAC rule of a Role (with `namespace`) or ClusterRole (without),
/// as the API server's authorizer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// `apiGroups` ("" is the core group).
    pub api_groups: Vec<String>,
    /// `resources`, subresources as `ingresses/status`.
    pub resources: Vec<String>,
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `resourceNames`; empty: any.
    pub resource_names: Vec<String>,
    /// The Role's namespace; `None` for a ClusterRole (bound cluster-wide).
    pub namespace: Option<String>,
}

impl PolicyRule {
    /// Whether this rule allows `verb` on `resource` (`ingresses/status`
    /// for a subresource) of `group`, in `namespace`, on object `name`.
    pub fn allows(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        let any = |list: &[String], x: &str| list.iter().any(|v| v == "*" || v == x);
        (self.namespace.is_none() || self.namespace.as_deref() == namespace)
            && any(&self.verbs, verb)
            && any(&self.api_groups, group)
            && any(&self.resources, resource)
            && (self.resource_names.is_empty()
                || name.is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

pub fn forbidden_message(verb: &str, resource: &Resource, namespace: Option<&str>) -> String {
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    format!(
        "{plural} is forbidden: User \"system:serviceaccount:kube-system:gangplank\" cannot {verb} resource \"{plural}\" in API group \"{group}\" {scope}",
        plural = resource.plural,
        group = resource.group(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn versions_conflicts_and_history() {
        let mut store = Store::default();
        let svc = json!({"kind": "Service", "metadata": {"name": "web"}});
        let (created, added) = store.put(svc.clone(), true).expect("created");
        assert_eq!(added.kind, "ADDED");
        assert_eq!(created["metadata"]["namespace"], "default");
        assert!(matches!(
            store.put(svc.clone(), true),
            Err(WriteError::Conflict(_))
        ));
        let mut stale = created.clone();
        stale["metadata"]["resourceVersion"] = json!("0");
        assert!(matches!(
            store.put(stale, false),
            Err(WriteError::Conflict(_))
        ));
        let (_, modified) = store.put(created, false).expect("replaced");
        assert_eq!(modified.kind, "MODIFIED");
        assert_eq!(store.changes_since(1, "services").len(), 1);
        store.compact();
        assert_eq!(store.compacted(), 2);
        assert!(store.changes_since(0, "services").is_empty());
        assert!(matches_fields(
            &modified.object,
            Some("metadata.name=web,metadata.namespace=default")
        ));
        assert!(!matches_fields(&modified.object, Some("metadata.name=db")));
    }
}
