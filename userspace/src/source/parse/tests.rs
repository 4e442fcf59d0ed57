use std::path::Path;

use super::*;

const PROXY: &[&str] = &["Service", "EndpointSlice"];
const ALL: &[&str] = &[
    "Service",
    "EndpointSlice",
    "Node",
    "Ingress",
    "IngressClass",
    "Secret",
];

fn parse(text: &str) -> ParsedFile {
    parse_manifest(Path::new("manifests/web.yaml"), text, PROXY)
}

fn refs(parsed: &ParsedFile) -> Vec<String> {
    parsed
        .objects
        .iter()
        .map(|o| o.object_ref().to_string())
        .collect()
}

fn messages(parsed: &ParsedFile) -> Vec<String> {
    parsed.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn multi_document_file_keeps_wanted_kinds_only() {
    let parsed = parse(
        "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a: b}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
",
    );
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(
        refs(&parsed),
        ["Service shop/web", "EndpointSlice default/web-abc"]
    );
    let Object::Service(svc) = &parsed.objects[0] else {
        panic!("not a service")
    };
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(spec.ports.as_ref().map(Vec::len), Some(1));
}

#[test]
fn type_error_names_file_line_document_object_and_field_path() {
    let parsed = parse(
        "\
apiVersion: v1
kind: Service
metadata: {name: ok}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: x
---
apiVersion: v1
kind: Service
metadata: {name: also-ok}
",
    );
    assert_eq!(
        refs(&parsed),
        ["Service default/ok", "Service default/also-ok"]
    );
    assert_eq!(
        messages(&parsed),
        ["manifests/web.yaml:12 (document 2): Service default/web: \
          spec.ports[0].port: invalid type: string \"x\", expected i32"]
    );
    assert_eq!(
        parsed.errors[0]
            .object()
            .map(ToString::to_string)
            .as_deref(),
        Some("Service default/web")
    );
}

#[test]
fn syntax_error_loses_only_its_document() {
    let parsed = parse(
        "\
kind: Service
apiVersion: v1
metadata: {name: a}
---
kind: Service
apiVersion: v1
metadata: {name: [b
---
kind: Service
apiVersion: v1
metadata: {name: c}
",
    );
    assert_eq!(refs(&parsed), ["Service default/a", "Service default/c"]);
    assert_eq!(parsed.errors.len(), 1);
    let msg = parsed.errors[0].to_string();
    assert!(msg.starts_with("manifests/web.yaml:"), "{msg}");
    assert!(msg.contains("(document 2)"), "{msg}");
    // Line numbers inside libyaml's message are file lines, not document lines.
    assert!(!msg.contains("line 3 "), "{msg}");
    assert!(parsed.errors[0].object().is_none());
}

#[test]
fn missing_name_is_an_error_missing_namespace_defaults() {
    let parsed = parse(
        "\
apiVersion: v1
kind: Service
metadata: {namespace: x}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ''}
---
apiVersion: v1
kind: Service
",
    );
    assert_eq!(refs(&parsed), ["Service default/web"]);
    assert_eq!(
        messages(&parsed),
        [
            "manifests/web.yaml:1 (document 1): Service: metadata.name is missing",
            "manifests/web.yaml:9 (document 3): Service: metadata.name is missing",
        ]
    );
}

#[test]
fn cluster_scoped_kinds_have_no_namespace() {
    let parsed = parse_manifest(
        Path::new("n.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, namespace: kube-system}\n",
        ALL,
    );
    assert_eq!(refs(&parsed), ["Node n1"]);
    assert_eq!(parsed.objects[0].namespace(), None);
}

#[test]
fn wrong_or_missing_api_version_is_an_error() {
    let parsed = parse_manifest(
        Path::new("i.yaml"),
        "\
apiVersion: extensions/v1beta1
kind: Ingress
metadata: {name: old}
---
kind: EndpointSlice
metadata: {name: s}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: new}
",
        ALL,
    );
    assert_eq!(refs(&parsed), ["Ingress default/new"]);
    assert_eq!(
        messages(&parsed),
        [
            "i.yaml:1 (document 1): Ingress default/old: apiVersion extensions/v1beta1 \
             is not supported for Ingress (use networking.k8s.io/v1)",
            "i.yaml:5 (document 2): EndpointSlice default/s: apiVersion is missing \
             (use discovery.k8s.io/v1)",
        ]
    );
}

#[test]
fn non_objects_are_errors_empty_documents_are_not() {
    let parsed = parse("---\n# nothing\n---\n~\n---\n- a\n---\nfoo: bar\n");
    assert!(parsed.objects.is_empty());
    assert_eq!(
        messages(&parsed),
        [
            "manifests/web.yaml:6 (document 2): not a Kubernetes object (the document is not a mapping)",
            "manifests/web.yaml:8 (document 3): not a Kubernetes object (kind is missing)",
        ]
    );
}

#[test]
fn generic_list_is_flattened() {
    let parsed = parse(
        "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
- apiVersion: v1
  kind: Service
  metadata: {name: b}
  spec: {ports: [{port: 99999999999}]}
- 42
- apiVersion: v1
  kind: Service
  metadata: {name: c}
",
    );
    assert_eq!(refs(&parsed), ["Service default/a", "Service default/c"]);
    let msgs = messages(&parsed);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].starts_with(
            "manifests/web.yaml:1 (document 1, items[2]): Service default/b: spec.ports[0].port: "
        ),
        "{msgs:?}"
    );
    assert_eq!(
        msgs[1],
        "manifests/web.yaml:1 (document 1, items[3]): not a Kubernetes object (the list item is not a mapping)"
    );
}

#[test]
fn typed_list_items_get_kind_and_api_version() {
    // As served by the API server: `kind: ServiceList`, items without kind.
    let parsed = parse(
        "\
apiVersion: v1
kind: ServiceList
metadata: {resourceVersion: '1'}
items:
- metadata: {name: a, namespace: x}
- metadata: {name: b, namespace: x}
",
    );
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(refs(&parsed), ["Service x/a", "Service x/b"]);
}

#[test]
fn json_files_single_list_and_errors() {
    let path = Path::new("m/svc.json");
    let parsed = parse_manifest(
        path,
        r#"{"apiVersion":"v1","kind":"List","items":[
             {"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}},
             {"apiVersion":"v1","kind":"Service","metadata":{"name":"b"},"spec":{"ports":[{"port":"x"}]}}]}"#,
        PROXY,
    );
    assert_eq!(refs(&parsed), ["Service default/a"]);
    assert_eq!(
        messages(&parsed),
        ["m/svc.json (document 1, items[1]): Service default/b: \
          spec.ports[0].port: invalid type: string \"x\", expected i32"]
    );

    let broken = parse_manifest(path, "{\"kind\": \"Service\",\n \"apiVersion\": }", PROXY);
    assert!(broken.objects.is_empty());
    let msg = broken.errors[0].to_string();
    assert!(
        msg.starts_with("m/svc.json:2 (document 1): expected value"),
        "{msg}"
    );
}

#[test]
fn heavy_metadata_is_dropped_other_annotations_kept() {
    let parsed = parse(
        "\
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{\"huge\": true}'
    keep: me
  managedFields:
  - manager: kubectl
    operation: Apply
",
    );
    let meta = parsed.objects[0].metadata();
    assert!(meta.managed_fields.is_none());
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(annotations.len(), 1);
    assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
}

#[test]
fn all_kinds_parse() {
    let parsed = parse_manifest(
        Path::new("all.yaml"),
        "\
apiVersion: v1
kind: Secret
metadata: {name: tls}
type: kubernetes.io/tls
data: {tls.crt: aGVsbG8=, tls.key: aGVsbG8=}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: gangplank}
spec: {controller: gangplank.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  ingressClassName: gangplank
  rules:
  - host: example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Secret
metadata: {name: bad}
data: {x: '!!!not base64'}
",
        ALL,
    );
    assert_eq!(
        refs(&parsed),
        [
            "Secret default/tls",
            "IngressClass gangplank",
            "Ingress default/web"
        ]
    );
    assert_eq!(parsed.errors.len(), 1);
    assert!(parsed.errors[0]
        .to_string()
        .contains("Secret default/bad: data"));
}

#[test]
fn byte_order_mark_and_crlf_are_accepted() {
    let parsed = parse("\u{feff}apiVersion: v1\r\nkind: Service\r\nmetadata: {name: a}\r\n");
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(refs(&parsed), ["Service default/a"]);
}

#[test]
fn large_files_are_parsed_in_parallel_and_keep_order() {
    let mut text = String::new();
    for i in 0..3000 {
        if i == 1234 {
            text.push_str(
                "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: 7}\n",
            );
        }
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\n\
             spec: {{clusterIP: 10.0.{}.{}, ports: [{{name: http, port: 80}}]}}\n",
            i / 256,
            i % 256
        ));
    }
    assert!(text.len() > PARALLEL_MIN_BYTES);
    let parsed = parse(&text);
    assert_eq!(parsed.objects.len(), 3000);
    for (i, object) in parsed.objects.iter().enumerate() {
        assert_eq!(object.name(), format!("s{i}"));
    }
    assert_eq!(parsed.errors.len(), 1);
    let msg = parsed.errors[0].to_string();
    assert!(
        msg.contains("(document 1235): Service default/bad: spec.ports"),
        "{msg}"
    );
    let line: usize = msg
        .trim_start_matches("manifests/web.yaml:")
        .split(' ')
        .next()
        .and_then(|l| l.parse().ok())
        .expect("line number");
    assert_eq!(text.lines().nth(line - 1), Some("spec: {ports: 7}"));
}

#[test]
fn shift_line_numbers_rewrites_every_occurrence() {
    assert_eq!(
        shift_line_numbers("x at line 3 column 1, while y at line 1 column 2", 10),
        "x at line 13 column 1, while y at line 11 column 2"
    );
    assert_eq!(
        shift_line_numbers("no numbers, line x", 5),
        "no numbers, line x"
    );
}

#[test]
fn header_scan_reads_only_simple_top_level_scalars() {
    assert_eq!(
        scan_header("apiVersion: \"v1\" # core\nmetadata:\n  kind: nested\nkind: 'Service'\n"),
        Some(("Service", "v1"))
    );
    assert_eq!(scan_header("kind: Service\n"), None);
    assert_eq!(
        scan_header("{apiVersion: v1,\nkind: Service, metadata: {name: a}}"),
        None
    );
    assert_eq!(scan_header("apiVersion: v1\nkind: &a Service\n"), None);
    assert_eq!(
        simple_scalar(" discovery.k8s.io/v1\t# x"),
        Some("discovery.k8s.io/v1")
    );
    assert_eq!(simple_scalar(" "), None);
}

#[test]
fn flow_style_and_quoted_headers_parse_like_block_style() {
    let parsed = parse(
        "\
{apiVersion: v1,
kind: Service, metadata: {name: flow}}
---
apiVersion: 'v1'
kind: \"Service\" # quoted
metadata: {name: quoted}
",
    );
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
    assert_eq!(
        refs(&parsed),
        ["Service default/flow", "Service default/quoted"]
    );
}

#[test]
fn unwanted_kinds_are_not_even_parsed() {
    // A broken ConfigMap is somebody else's problem: never reported.
    let parsed = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [broken\n");
    assert!(parsed.objects.is_empty());
    assert!(parsed.errors.is_empty(), "{:?}", messages(&parsed));
}

#[test]
fn mapper_sees_finished_objects() {
    let parsed = parse_manifest_with(
        Path::new("m.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  managedFields: [{manager: x}]\n",
        PROXY,
        &|object: Object| {
            (
                object.object_ref().to_string(),
                object.metadata().managed_fields.is_none(),
            )
        },
    );
    assert_eq!(parsed.objects, [("Service default/a".to_owned(), true)]);
}
