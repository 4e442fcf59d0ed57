//! Object store tests: manifests in, proxy state out.

use std::path::Path;

use gangplank::source::parse_manifest;

use super::*;
use crate::annotations::LoadBalance;

const CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: gangplank
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: gangplank.io/ingress
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
"#;

fn ingress(name: &str, host: &str, path: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  {extra}
spec:
  rules:
  - host: {host}
    http:
      paths:
      - path: {path}
        pathType: Prefix
        backend: {{service: {{name: web, port: {{number: 80}}}}}}
"#
    )
}

fn change(files: &[(&str, &str)]) -> DirChange {
    DirChange {
        changed: files
            .iter()
            .map(|(path, text)| {
                let path = Path::new(path);
                (path.to_owned(), parse_manifest(path, text, KINDS))
            })
            .collect(),
        removed: Vec::new(),
        synced: true,
    }
}

fn endpoint_of(built: &Built, host: &str, path: &str) -> Option<std::net::SocketAddr> {
    let route = built.state.routes.route(host, path)?;
    let crate::route::Backend::Service(service) = &route.backend else {
        return None;
    };
    built
        .state
        .upstreams
        .get(service)
        .and_then(|e| e.addrs().first().copied())
}

#[test]
fn manifests_become_routes_endpoints_and_options() {
    let mut store = ObjectStore::new();
    let annotated = ingress(
        "web",
        "a.example",
        "/",
        "annotations: {gangplank.io/load-balance: least-requests}",
    );
    let errors = store.apply(change(&[
        ("/m/class.yaml", CLASS),
        ("/m/web.yaml", SERVICE),
        ("/m/ing.yaml", &annotated),
    ]));
    assert!(errors.is_empty(), "{errors:?}");
    let built = store.build(&Settings::default(), None);
    assert!(built.errors.is_empty(), "{:?}", built.errors);
    assert_eq!(
        endpoint_of(&built, "a.example", "/x"),
        Some("10.0.0.1:8080".parse().expect("addr"))
    );
    let options = built.state.options[&IngressRef::new("default", "web")];
    assert_eq!(options.load_balance, LoadBalance::LeastRequests);
}

#[test]
fn a_broken_document_keeps_the_previous_version_of_its_object() {
    let mut store = ObjectStore::new();
    store.apply(change(&[
        ("/m/class.yaml", CLASS),
        ("/m/web.yaml", SERVICE),
        ("/m/ing.yaml", &ingress("web", "a.example", "/", "")),
    ]));
    // The same Ingress with a type error in its spec: reported, and the
    // old version keeps serving.
    let broken = ingress("web", "a.example", "/", "").replace("pathType: Prefix", "pathType: [1]");
    let errors = store.apply(change(&[("/m/ing.yaml", &broken)]));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("default/web"),
        "names the object: {}",
        errors[0]
    );
    let built = store.build(&Settings::default(), None);
    assert!(endpoint_of(&built, "a.example", "/").is_some());
}

#[test]
fn an_invalid_ingress_does_not_stop_the_others() {
    let mut store = ObjectStore::new();
    store.apply(change(&[
        ("/m/class.yaml", CLASS),
        ("/m/web.yaml", SERVICE),
        ("/m/good.yaml", &ingress("good", "good.example", "/", "")),
        (
            "/m/bad.yaml",
            &ingress("bad", "bad.example", "no-slash", ""),
        ),
    ]));
    let built = store.build(&Settings::default(), None);
    assert!(endpoint_of(&built, "good.example", "/").is_some());
    assert!(
        built.errors.iter().any(|e| e.contains("default/bad")),
        "the bad Ingress is named: {:?}",
        built.errors
    );
}

#[test]
fn only_our_classes_are_served_and_removed_files_disappear() {
    let mut store = ObjectStore::new();
    let other = ingress("other", "o.example", "/", "")
        .replace("spec:\n", "spec:\n  ingressClassName: nginx\n");
    store.apply(change(&[
        ("/m/class.yaml", CLASS),
        ("/m/web.yaml", SERVICE),
        ("/m/ing.yaml", &ingress("web", "a.example", "/", "")),
        ("/m/other.yaml", &other),
    ]));
    let built = store.build(&Settings::default(), None);
    assert!(
        endpoint_of(&built, "o.example", "/").is_none(),
        "class nginx is not ours"
    );
    assert!(endpoint_of(&built, "a.example", "/").is_some());
    store.apply(DirChange {
        changed: Vec::new(),
        removed: vec!["/m/ing.yaml".into()],
        synced: true,
    });
    let built = store.build(&Settings::default(), None);
    assert!(endpoint_of(&built, "a.example", "/").is_none());
}

#[test]
fn unknown_annotation_values_are_reported_with_the_ingress() {
    let mut store = ObjectStore::new();
    store.apply(change(&[
        ("/m/class.yaml", CLASS),
        ("/m/web.yaml", SERVICE),
        (
            "/m/ing.yaml",
            &ingress(
                "web",
                "a.example",
                "/",
                "annotations: {gangplank.io/ssl-redirect: maybe}",
            ),
        ),
    ]));
    let built = store.build(&Settings::default(), None);
    assert!(
        built
            .errors
            .iter()
            .any(|e| e.contains("default/web") && e.contains("gangplank.io/ssl-redirect")),
        "{:?}",
        built.errors
    );
    assert!(endpoint_of(&built, "a.example", "/").is_some());
}
