//! Route table tests: the path-type table of the Kubernetes Ingress docs row
//! by row, every scenario of the ingress-controller-conformance features
//! `path_rules`, `host_rules` and `default_backend`, then the rest of the
//! semantics (hosts, merging, conflicts, default backends, classes,
//! validation).

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use super::fixtures::*;
use super::*;

/// What a lookup is routed to, for messages: the Service name, `<resource>`,
/// `<invalid>`, or `None` (404).
fn target(route: Option<&Route>) -> Option<String> {
    route.map(|r| match &r.backend {
        Backend::Service(s) => s.name.to_string(),
        Backend::Resource { .. } => "<resource>".to_owned(),
        Backend::Invalid => "<invalid>".to_owned(),
    })
}

fn show(target: Option<&str>) -> String {
    match target {
        Some(t) => format!("service {t}"),
        None => "no route (404)".to_owned(),
    }
}

/// Asserts that `host` + `path` is routed to Service `want` (`None`: 404).
#[track_caller]
fn check(table: &RouteTable, host: &str, path: &str, want: Option<&str>, why: &str) {
    let got = target(table.route(host, path));
    assert_eq!(
        got.as_deref(),
        want,
        "{why}: request http://{host}{path}: expected {}, got {}",
        show(want),
        show(got.as_deref()),
    );
}

/// The route for a request, which must exist.
#[track_caller]
fn route<'t>(table: &'t RouteTable, host: &str, path: &str) -> &'t Route {
    table
        .route(host, path)
        .unwrap_or_else(|| panic!("expected a route for http://{host}{path}, got none (404)"))
}

/// The errors of one kind-shape, for assertions with a readable failure.
#[track_caller]
fn only_error<'e>(errors: &'e [RouteError], what: &str) -> &'e RouteError {
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one {what}, got {errors:#?}"
    );
    &errors[0]
}

// ---------------------------------------------------------------------------
// The "Examples" table under "Path types" in
// https://kubernetes.io/docs/concepts/services-networking/ingress/, row by
// row. Each row is one host-less Ingress with the row's paths; the Service
// of each path is named after it.
// ---------------------------------------------------------------------------

/// An Ingress with host-less rules for `(path, pathType, service)`.
fn docs_row(paths: &[(&str, &str, &str)]) -> RouteTable {
    let paths = paths.iter().map(|(p, t, s)| path(Some(p), t, svc(s, 80)));
    clean_table(&[ingress("docs").rule("", paths).build()])
}

#[test]
fn docs_row_01_prefix_root_matches_all_paths() {
    let t = docs_row(&[("/", "Prefix", "root")]);
    for p in [
        "/",
        "/foo",
        "/foo/",
        "/foo/bar",
        "/FOO",
        "/aaa/bbb/ccc",
        "/a.b",
        "/%20",
    ] {
        check(
            &t,
            "any.example",
            p,
            Some("root"),
            "Prefix / matches (all paths)",
        );
    }
}

#[test]
fn docs_row_02_exact_foo_matches_foo() {
    let t = docs_row(&[("/foo", "Exact", "foo")]);
    check(&t, "x", "/foo", Some("foo"), "Exact /foo matches /foo");
}

#[test]
fn docs_row_03_exact_foo_does_not_match_bar() {
    let t = docs_row(&[("/foo", "Exact", "foo")]);
    check(&t, "x", "/bar", None, "Exact /foo does not match /bar");
}

#[test]
fn docs_row_04_exact_foo_does_not_match_foo_slash() {
    let t = docs_row(&[("/foo", "Exact", "foo")]);
    check(&t, "x", "/foo/", None, "Exact /foo does not match /foo/");
}

#[test]
fn docs_row_05_exact_foo_slash_does_not_match_foo() {
    let t = docs_row(&[("/foo/", "Exact", "foo")]);
    check(&t, "x", "/foo", None, "Exact /foo/ does not match /foo");
}

#[test]
fn docs_row_06_prefix_foo_matches_foo_and_foo_slash() {
    let t = docs_row(&[("/foo", "Prefix", "foo")]);
    check(&t, "x", "/foo", Some("foo"), "Prefix /foo matches /foo");
    check(&t, "x", "/foo/", Some("foo"), "Prefix /foo matches /foo/");
}

#[test]
fn docs_row_07_prefix_foo_slash_matches_foo_and_foo_slash() {
    let t = docs_row(&[("/foo/", "Prefix", "foo")]);
    check(&t, "x", "/foo", Some("foo"), "Prefix /foo/ matches /foo");
    check(&t, "x", "/foo/", Some("foo"), "Prefix /foo/ matches /foo/");
}

#[test]
fn docs_row_08_prefix_aaa_bb_does_not_match_aaa_bbb() {
    let t = docs_row(&[("/aaa/bb", "Prefix", "bb")]);
    check(
        &t,
        "x",
        "/aaa/bbb",
        None,
        "Prefix /aaa/bb does not match /aaa/bbb",
    );
}

#[test]
fn docs_row_09_prefix_aaa_bbb_matches_aaa_bbb() {
    let t = docs_row(&[("/aaa/bbb", "Prefix", "bbb")]);
    check(
        &t,
        "x",
        "/aaa/bbb",
        Some("bbb"),
        "Prefix /aaa/bbb matches /aaa/bbb",
    );
}

#[test]
fn docs_row_10_prefix_aaa_bbb_slash_ignores_trailing_slash() {
    let t = docs_row(&[("/aaa/bbb/", "Prefix", "bbb")]);
    check(
        &t,
        "x",
        "/aaa/bbb",
        Some("bbb"),
        "Prefix /aaa/bbb/ matches /aaa/bbb, ignores trailing slash",
    );
}

#[test]
fn docs_row_11_prefix_aaa_bbb_matches_trailing_slash() {
    let t = docs_row(&[("/aaa/bbb", "Prefix", "bbb")]);
    check(
        &t,
        "x",
        "/aaa/bbb/",
        Some("bbb"),
        "Prefix /aaa/bbb matches /aaa/bbb/, matches trailing slash",
    );
}

#[test]
fn docs_row_12_prefix_aaa_bbb_matches_subpath() {
    let t = docs_row(&[("/aaa/bbb", "Prefix", "bbb")]);
    check(
        &t,
        "x",
        "/aaa/bbb/ccc",
        Some("bbb"),
        "Prefix /aaa/bbb matches /aaa/bbb/ccc, matches subpath",
    );
}

#[test]
fn docs_row_13_prefix_aaa_bbb_does_not_match_string_prefix() {
    let t = docs_row(&[("/aaa/bbb", "Prefix", "bbb")]);
    check(
        &t,
        "x",
        "/aaa/bbbxyz",
        None,
        "Prefix /aaa/bbb does not match /aaa/bbbxyz, does not match string prefix",
    );
}

#[test]
fn docs_row_14_prefix_root_and_aaa_match_aaa_prefix() {
    let t = docs_row(&[("/", "Prefix", "root"), ("/aaa", "Prefix", "aaa")]);
    check(
        &t,
        "x",
        "/aaa/ccc",
        Some("aaa"),
        "Prefix /, /aaa: /aaa/ccc matches /aaa prefix",
    );
}

#[test]
fn docs_row_15_prefix_root_aaa_aaa_bbb_match_aaa_bbb_prefix() {
    let t = docs_row(&[
        ("/", "Prefix", "root"),
        ("/aaa", "Prefix", "aaa"),
        ("/aaa/bbb", "Prefix", "bbb"),
    ]);
    check(
        &t,
        "x",
        "/aaa/bbb",
        Some("bbb"),
        "Prefix /, /aaa, /aaa/bbb: /aaa/bbb matches /aaa/bbb prefix",
    );
}

#[test]
fn docs_row_16_prefix_root_aaa_aaa_bbb_match_root_prefix() {
    let t = docs_row(&[
        ("/", "Prefix", "root"),
        ("/aaa", "Prefix", "aaa"),
        ("/aaa/bbb", "Prefix", "bbb"),
    ]);
    check(
        &t,
        "x",
        "/ccc",
        Some("root"),
        "Prefix /, /aaa, /aaa/bbb: /ccc matches / prefix",
    );
}

#[test]
fn docs_row_17_prefix_aaa_does_not_match_ccc_uses_default_backend() {
    let ing = ingress("docs")
        .rule("", [prefix("/aaa", svc("aaa", 80))])
        .default_backend(svc("default-backend", 80))
        .build();
    let t = clean_table(&[ing]);
    check(
        &t,
        "x",
        "/ccc",
        Some("default-backend"),
        "Prefix /aaa: /ccc uses default backend",
    );
    assert_eq!(route(&t, "x", "/ccc").matched, Matched::DefaultBackend);
    // And without a default backend, nothing.
    let t = docs_row(&[("/aaa", "Prefix", "aaa")]);
    check(
        &t,
        "x",
        "/ccc",
        None,
        "Prefix /aaa without a default backend: /ccc is 404",
    );
}

#[test]
fn docs_row_18_mixed_prefix_and_exact_foo_prefers_exact() {
    for order in [
        [("/foo", "Prefix", "prefix"), ("/foo", "Exact", "exact")],
        [("/foo", "Exact", "exact"), ("/foo", "Prefix", "prefix")],
    ] {
        let t = docs_row(&order);
        check(
            &t,
            "x",
            "/foo",
            Some("exact"),
            "Mixed /foo (Prefix), /foo (Exact): /foo prefers Exact",
        );
        check(
            &t,
            "x",
            "/foo/",
            Some("prefix"),
            "Mixed: /foo/ only matches the Prefix",
        );
    }
}

// ---------------------------------------------------------------------------
// kubernetes-sigs/ingress-controller-conformance features/path_rules.feature
// ---------------------------------------------------------------------------

/// The scenario's Ingress, parsed from JSON as a manifest would be (no
/// class: the conformance suite relies on the default IngressClass).
fn conformance_table(ingress: serde_json::Value) -> RouteTable {
    let ingress: Ingress = serde_json::from_value(ingress).expect("valid Ingress JSON");
    let classes = [default_class(CLASS, DEFAULT_CONTROLLER, 0)];
    let (table, errors) = RouteTable::build([&ingress], &classes, &ClassConfig::default());
    assert!(
        errors.is_empty(),
        "expected no route errors, got {errors:#?}"
    );
    table
}

fn backend_json(service: &str) -> serde_json::Value {
    serde_json::json!({ "service": { "name": service, "port": { "number": 8080 } } })
}

fn path_rules() -> RouteTable {
    let p = |path: &str, path_type: &str, service: &str| serde_json::json!({ "path": path, "pathType": path_type, "backend": backend_json(service) });
    conformance_table(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": "path-rules", "namespace": "conformance" },
        "spec": { "rules": [
            { "host": "exact-path-rules", "http": { "paths": [
                p("/foo", "Exact", "foo-exact"),
            ] } },
            { "host": "prefix-path-rules", "http": { "paths": [
                p("/foo", "Prefix", "foo-prefix"),
                p("/aaa/bbb", "Prefix", "aaa-slash-bbb-prefix"),
                p("/aaa", "Prefix", "aaa-prefix"),
            ] } },
            { "host": "mixed-path-rules", "http": { "paths": [
                p("/foo", "Prefix", "foo-prefix"),
                p("/foo", "Exact", "foo-exact"),
            ] } },
            { "host": "trailing-slash-path-rules", "http": { "paths": [
                p("/aaa/bbb/", "Prefix", "aaa-slash-bbb-slash-prefix"),
                p("/foo/", "Exact", "foo-slash-exact"),
            ] } },
        ] }
    }))
}

/// Runs one path_rules scenario and checks the matched rule's host too.
#[track_caller]
fn path_rules_scenario(scenario: &str, host: &str, path: &str, want: Option<&str>) {
    let t = path_rules();
    check(
        &t,
        host,
        path,
        want,
        &format!("path_rules scenario {scenario:?}"),
    );
    if want.is_some() {
        let r = route(&t, host, path);
        assert_eq!(
            r.host.as_deref(),
            Some(host),
            "scenario {scenario:?}: rule host"
        );
        assert_eq!(r.ingress, IngressRef::new("conformance", "path-rules"));
        let Backend::Service(b) = &r.backend else {
            panic!(
                "scenario {scenario:?}: expected a Service backend, got {:?}",
                r.backend
            )
        };
        assert_eq!(
            (&*b.namespace, &b.port),
            ("conformance", &ServicePort::Number(8080))
        );
    }
}

#[test]
fn path_rules_exact_path_rules_send_traffic_to_the_matching_backend() {
    path_rules_scenario(
        "An Ingress with exact path rules should send traffic to the matching backend service (exact /foo matches request /foo)",
        "exact-path-rules", "/foo", Some("foo-exact"),
    );
}

#[test]
fn path_rules_exact_path_rules_do_not_match_trailing_slash() {
    path_rules_scenario(
        "An Ingress with exact path rules should not match requests with trailing slash (exact /foo does not match request /foo/)",
        "exact-path-rules", "/foo/", None,
    );
}

#[test]
fn path_rules_exact_path_rules_are_case_sensitive() {
    path_rules_scenario(
        "An Ingress with exact path rules should be case sensitive (exact /foo does not match request /FOO)",
        "exact-path-rules", "/FOO", None,
    );
}

#[test]
fn path_rules_exact_path_rules_do_not_match_any_other_label() {
    path_rules_scenario(
        "An Ingress with exact path rules should not match any other label (exact /foo does not match request /bar)",
        "exact-path-rules", "/bar", None,
    );
}

#[test]
fn path_rules_prefix_path_rules_send_traffic_to_the_matching_backend() {
    path_rules_scenario(
        "An Ingress with prefix path rules should send traffic to the matching backend service (prefix /foo matches request /foo)",
        "prefix-path-rules", "/foo", Some("foo-prefix"),
    );
}

#[test]
fn path_rules_prefix_path_rules_ignore_the_request_trailing_slash() {
    path_rules_scenario(
        "An Ingress with prefix path rules should ignore the request trailing slash and send traffic to the matching backend service (prefix /foo matches request /foo/)",
        "prefix-path-rules", "/foo/", Some("foo-prefix"),
    );
}

#[test]
fn path_rules_prefix_path_rules_are_case_sensitive() {
    path_rules_scenario(
        "An Ingress with prefix path rules should be case sensitive (prefix /foo does not match request /FOO)",
        "prefix-path-rules", "/FOO", None,
    );
}

#[test]
fn path_rules_prefix_path_rules_match_multiple_labels_and_the_longest_path() {
    path_rules_scenario(
        "An Ingress with prefix path rules should match multiple labels, match the longest path, and send traffic to the matching backend service (prefix /aaa/bbb matches request /aaa/bbb)",
        "prefix-path-rules", "/aaa/bbb", Some("aaa-slash-bbb-prefix"),
    );
}

#[test]
fn path_rules_prefix_path_rules_match_multiple_labels_the_longest_path_and_subpaths() {
    path_rules_scenario(
        "An Ingress with prefix path rules should match multiple labels, match the longest path, and subpaths and send traffic to the matching backend service (prefix /aaa/bbb matches request /aaa/bbb/ccc)",
        "prefix-path-rules", "/aaa/bbb/ccc", Some("aaa-slash-bbb-prefix"),
    );
}

#[test]
fn path_rules_prefix_path_rules_send_traffic_to_the_matching_backend_aaa() {
    path_rules_scenario(
        "An Ingress with prefix path rules should and send traffic to the matching backend service (prefix /aaa matches request /aaa/ccc)",
        "prefix-path-rules", "/aaa/ccc", Some("aaa-prefix"),
    );
}

#[test]
fn path_rules_prefix_path_rules_match_each_labels_string_prefix() {
    path_rules_scenario(
        "An Ingress with prefix path rules should match each labels string prefix (prefix /aaa does not match request /aaaccc)",
        "prefix-path-rules", "/aaaccc", None,
    );
}

#[test]
fn path_rules_prefix_path_rules_ignore_the_request_trailing_slash_again() {
    // The feature lists this scenario twice, word for word.
    path_rules_scenario(
        "An Ingress with prefix path rules should ignore the request trailing slash and send traffic to the matching backend service (prefix /foo matches request /foo/), second occurrence",
        "prefix-path-rules", "/foo/", Some("foo-prefix"),
    );
}

#[test]
fn path_rules_mixed_path_rules_prefer_exact() {
    path_rules_scenario(
        "An Ingress with mixed path rules should send traffic to the matching backend service where Exact is preferred (exact /foo matches request /foo)",
        "mixed-path-rules", "/foo", Some("foo-exact"),
    );
}

#[test]
fn path_rules_trailing_slash_prefix_rule_ignores_the_trailing_slash() {
    path_rules_scenario(
        "An Ingress with a trailing slashes in a prefix path rule should ignore the trailing slash and send traffic to the matching backend service (prefix /aaa/bbb/ matches request /aaa/bbb)",
        "trailing-slash-path-rules", "/aaa/bbb", Some("aaa-slash-bbb-slash-prefix"),
    );
}

#[test]
fn path_rules_trailing_slash_prefix_rule_matches_the_trailing_slash() {
    path_rules_scenario(
        "An Ingress with a trailing slashes in a prefix path rule should ignore the trailing slash and send traffic to the matching backend service (prefix /aaa/bbb/ matches request /aaa/bbb/)",
        "trailing-slash-path-rules", "/aaa/bbb/", Some("aaa-slash-bbb-slash-prefix"),
    );
}

#[test]
fn path_rules_trailing_slash_exact_rule_does_not_match_without_trailing_slash() {
    path_rules_scenario(
        "An Ingress with a trailing slashes in an exact path rule should not match requests without a trailing slash (exact /foo/ does not match request /foo)",
        "trailing-slash-path-rules", "/foo", None,
    );
}

// ---------------------------------------------------------------------------
// kubernetes-sigs/ingress-controller-conformance features/host_rules.feature
// (the certificate part of the TLS scenario belongs to the tls module).
// ---------------------------------------------------------------------------

fn host_rules() -> RouteTable {
    let root = |backend: serde_json::Value| serde_json::json!({ "paths": [{ "path": "/", "pathType": "Prefix", "backend": backend }] });
    conformance_table(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": "host-rules", "namespace": "conformance" },
        "spec": {
            "tls": [{ "hosts": ["foo.bar.com"], "secretName": "conformance-tls" }],
            "rules": [
                { "host": "*.foo.com", "http": root(backend_json("wildcard-foo-com")) },
                { "host": "foo.bar.com", "http": root(serde_json::json!(
                    { "service": { "name": "foo-bar-com", "port": { "name": "http" } } }
                )) },
            ]
        }
    }))
}

#[test]
fn host_rules_host_rule_sends_tls_traffic_to_the_matching_backend() {
    let scenario = "An Ingress with a host rule should send TLS traffic to the matching backend service (host foo.bar.com matches request foo.bar.com)";
    let t = host_rules();
    check(&t, "foo.bar.com", "/", Some("foo-bar-com"), scenario);
    // `https://foo.bar.com` arrives with an explicit :443 from some clients.
    check(&t, "foo.bar.com:443", "/", Some("foo-bar-com"), scenario);
    let r = route(&t, "foo.bar.com", "/");
    assert_eq!(
        r.host.as_deref(),
        Some("foo.bar.com"),
        "{scenario}: the rule host decides TLS"
    );
    let Backend::Service(b) = &r.backend else {
        panic!("{scenario}: expected a Service backend")
    };
    assert_eq!(
        b.port,
        ServicePort::Name("http".into()),
        "{scenario}: port by name"
    );
}

#[test]
fn host_rules_host_rule_sends_traffic_to_the_matching_backend() {
    let scenario = "An Ingress with a host rule should send traffic to the matching backend service (host foo.bar.com matches request foo.bar.com)";
    check(
        &host_rules(),
        "foo.bar.com",
        "/",
        Some("foo-bar-com"),
        scenario,
    );
}

#[test]
fn host_rules_host_rule_does_not_route_when_hostname_does_not_match() {
    let scenario = "An Ingress with a host rule should not route traffic when hostname does not match (host foo.bar.com does not match request subdomain.bar.com)";
    check(&host_rules(), "subdomain.bar.com", "/", None, scenario);
}

#[test]
fn host_rules_wildcard_host_rule_sends_traffic_to_the_matching_backend() {
    let scenario = "An Ingress with a wildcard host rule should send traffic to the matching backend service (Matches based on shared suffix)";
    let t = host_rules();
    check(&t, "bar.foo.com", "/", Some("wildcard-foo-com"), scenario);
    assert_eq!(
        route(&t, "bar.foo.com", "/").host.as_deref(),
        Some("*.foo.com")
    );
}

#[test]
fn host_rules_wildcard_host_rule_does_not_match_more_than_one_label() {
    let scenario = "An Ingress with a wildcard host rule should not route traffic matching on more than a single dns label (No match, wildcard only covers a single DNS label)";
    check(&host_rules(), "baz.bar.foo.com", "/", None, scenario);
}

#[test]
fn host_rules_wildcard_host_rule_does_not_match_no_label() {
    let scenario = "An Ingress with a wildcard host rule should not route traffic matching no dns label (No match, wildcard only covers a single DNS label)";
    check(&host_rules(), "foo.com", "/", None, scenario);
}

// ---------------------------------------------------------------------------
// kubernetes-sigs/ingress-controller-conformance
// features/default_backend.feature: "An Ingress with no rules should send
// all requests to the default backend", one test per Examples row (the
// method does not take part in routing).
// ---------------------------------------------------------------------------

fn default_backend_scenario(method: &str, host: &str, path: &str) {
    let t = conformance_table(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": { "name": "default-backend", "namespace": "conformance" },
        "spec": { "defaultBackend": backend_json("echo-service") }
    }));
    let path = format!("/{path}");
    let why = format!(
        "default_backend scenario \"An Ingress with no rules should send all requests to the default backend\", example {method} {host:?} {path:?}"
    );
    check(&t, host, &path, Some("echo-service"), &why);
    let r = route(&t, host, &path);
    assert_eq!(r.matched, Matched::DefaultBackend, "{why}");
    assert_eq!(
        r.ingress,
        IngressRef::new("conformance", "default-backend"),
        "{why}"
    );
}

#[test]
fn default_backend_no_rules_get_my_host_root() {
    default_backend_scenario("GET", "my-host", "");
}

#[test]
fn default_backend_no_rules_get_my_host_sub_path() {
    default_backend_scenario("GET", "my-host", "sub-path");
}

#[test]
fn default_backend_no_rules_post_some_host_root() {
    default_backend_scenario("POST", "some-host", "");
}

#[test]
fn default_backend_no_rules_put_no_host_resource() {
    default_backend_scenario("PUT", "", "resource");
}

#[test]
fn default_backend_no_rules_delete_some_host_resource() {
    default_backend_scenario("DELETE", "some-host", "resource");
}

#[test]
fn default_backend_no_rules_patch_my_host_resource() {
    default_backend_scenario("PATCH", "my-host", "resource");
}

// ---------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------

fn hosts_table() -> RouteTable {
    clean_table(&[ingress("hosts")
        .rule("foo.bar.com", [prefix("/", svc("exact", 80))])
        .rule("*.bar.com", [prefix("/", svc("wildcard", 80))])
        .rule("*.com", [prefix("/", svc("tld-wildcard", 80))])
        .build()])
}

#[test]
fn host_match_is_case_insensitive() {
    let t = hosts_table();
    check(
        &t,
        "FOO.Bar.COM",
        "/",
        Some("exact"),
        "hosts are DNS names, case-insensitive",
    );
    check(&t, "Other.BAR.com", "/", Some("wildcard"), "wildcards too");
}

#[test]
fn host_port_suffix_is_ignored() {
    let t = hosts_table();
    check(
        &t,
        "foo.bar.com:8443",
        "/",
        Some("exact"),
        ":port is not part of the host",
    );
    check(
        &t,
        "foo.bar.com:",
        "/",
        Some("exact"),
        "an empty port is allowed by RFC 3986",
    );
    check(
        &t,
        "x.bar.com:80",
        "/",
        Some("wildcard"),
        ":port with a wildcard",
    );
}

#[test]
fn host_one_trailing_dot_is_ignored() {
    let t = hosts_table();
    check(
        &t,
        "foo.bar.com.",
        "/",
        Some("exact"),
        "foo.bar.com. is the same FQDN",
    );
    check(
        &t,
        "foo.bar.com.:443",
        "/",
        Some("exact"),
        "trailing dot and port",
    );
    check(
        &t,
        "x.bar.com.",
        "/",
        Some("wildcard"),
        "trailing dot with a wildcard",
    );
    check(
        &t,
        "foo.bar.com..",
        "/",
        None,
        "only one trailing dot is stripped",
    );
}

#[test]
fn exact_host_beats_wildcard_beats_shorter_wildcard() {
    let t = hosts_table();
    check(
        &t,
        "foo.bar.com",
        "/",
        Some("exact"),
        "exact beats *.bar.com",
    );
    check(
        &t,
        "baz.bar.com",
        "/",
        Some("wildcard"),
        "*.bar.com covers one label",
    );
    check(
        &t,
        "bar.com",
        "/",
        Some("tld-wildcard"),
        "*.com covers bar.com, *.bar.com does not",
    );
    check(
        &t,
        "a.b.bar.com",
        "/",
        None,
        "no wildcard covers two labels",
    );
    check(&t, "com", "/", None, "*.com needs one label before com");
    check(&t, ".com", "/", None, "an empty label is not a label");
}

#[test]
fn exact_host_beats_wildcard_across_ingresses_whatever_their_age() {
    let t = clean_table(&[
        ingress("old-wildcard")
            .created(1)
            .rule("*.foo.com", [prefix("/", svc("wildcard", 80))])
            .build(),
        ingress("new-exact")
            .created(2)
            .rule("bar.foo.com", [prefix("/", svc("exact", 80))])
            .build(),
    ]);
    check(
        &t,
        "bar.foo.com",
        "/x",
        Some("exact"),
        "exact host beats a wildcard",
    );
    check(
        &t,
        "baz.foo.com",
        "/x",
        Some("wildcard"),
        "other labels go to the wildcard",
    );
}

#[test]
fn rules_without_host_match_any_host() {
    let t = clean_table(&[ingress("any")
        .rule("", [prefix("/", svc("any", 80))])
        .build()]);
    for host in [
        "example.com",
        "EXAMPLE.com:80",
        "",
        "198.18.0.1",
        "198.18.0.1:8080",
        "[2001:db8::1]:443",
        "[::1]",
        "::1",
        "a..b",
        "very.deep.name.example.org.",
    ] {
        check(
            &t,
            host,
            "/x",
            Some("any"),
            "a rule without host matches any Host header",
        );
    }
    assert_eq!(route(&t, "example.com", "/").host, None);
}

#[test]
fn overlong_host_only_matches_host_less_rules() {
    let long = format!("{}.com", "a".repeat(300));
    let t = clean_table(&[ingress("any")
        .rule("", [prefix("/", svc("any", 80))])
        .rule("foo.com", [prefix("/", svc("foo", 80))])
        .build()]);
    check(
        &t,
        &long,
        "/",
        Some("any"),
        "a Host longer than a DNS name can only match host-less rules",
    );
    check(
        &t,
        &long.to_uppercase(),
        "/",
        Some("any"),
        "also when it would need lowercasing",
    );
}

#[test]
fn the_most_specific_host_is_chosen_before_paths_without_fallback() {
    let t = clean_table(&[ingress("fallback")
        .rule("foo.com", [prefix("/api", svc("foo-api", 80))])
        .rule("*.foo.com", [prefix("/wild", svc("wild", 80))])
        .rule("", [prefix("/", svc("any", 80))])
        .build()]);
    check(
        &t,
        "foo.com",
        "/api/v1",
        Some("foo-api"),
        "the host's own path",
    );
    check(
        &t,
        "foo.com",
        "/other",
        None,
        "foo.com has rules: no fallback to the host-less /",
    );
    check(
        &t,
        "x.foo.com",
        "/api",
        None,
        "*.foo.com has rules: no fallback to foo.com or host-less",
    );
    check(
        &t,
        "bar.com",
        "/other",
        Some("any"),
        "hosts without rules use the host-less rules",
    );
}

#[test]
fn several_ingresses_for_the_same_host_are_merged() {
    let t = clean_table(&[
        ingress("a")
            .created(1)
            .rule("shop.example", [prefix("/aaa", svc("aaa", 80))])
            .build(),
        ingress("b")
            .ns("team-b")
            .created(2)
            .rule(
                "shop.example",
                [
                    prefix("/aaa/bbb", svc("bbb", 80)),
                    exact("/aaa", svc("aaa-exact", 80)),
                ],
            )
            .build(),
        ingress("c")
            .created(3)
            .rule("shop.example", [prefix("/", svc("root", 80))])
            .build(),
    ]);
    check(
        &t,
        "shop.example",
        "/aaa/bbb/c",
        Some("bbb"),
        "longest prefix across Ingresses",
    );
    check(
        &t,
        "shop.example",
        "/aaa/x",
        Some("aaa"),
        "older Ingress's shorter prefix",
    );
    check(
        &t,
        "shop.example",
        "/aaa",
        Some("aaa-exact"),
        "Exact beats Prefix across Ingresses",
    );
    check(
        &t,
        "shop.example",
        "/zzz",
        Some("root"),
        "third Ingress's /",
    );
    let r = route(&t, "shop.example", "/aaa/bbb");
    assert_eq!(r.ingress, IngressRef::new("team-b", "b"));
    let Backend::Service(b) = &r.backend else {
        panic!("expected a Service backend")
    };
    assert_eq!(
        &*b.namespace, "team-b",
        "a backend is a Service in the Ingress's own namespace"
    );
}

// ---------------------------------------------------------------------------
// Paths beyond the docs table
// ---------------------------------------------------------------------------

#[test]
fn query_string_and_fragment_are_not_part_of_the_path() {
    let t = clean_table(&[ingress("q")
        .rule(
            "",
            [
                exact("/foo", svc("foo", 80)),
                prefix("/aaa/bbb", svc("bbb", 80)),
            ],
        )
        .build()]);
    check(
        &t,
        "x",
        "/foo?a=/b",
        Some("foo"),
        "query after an Exact path",
    );
    check(
        &t,
        "x",
        "/foo#frag",
        Some("foo"),
        "fragment after an Exact path",
    );
    check(
        &t,
        "x",
        "/aaa/bbb?x",
        Some("bbb"),
        "query after a Prefix path",
    );
    check(
        &t,
        "x",
        "/aaa/bbbxyz?/aaa/bbb",
        None,
        "the query cannot make a prefix match",
    );
    check(&t, "x", "/fo?o", None, "the query is cut where it starts");
}

#[test]
fn empty_and_odd_request_paths() {
    let t = clean_table(&[ingress("odd")
        .rule(
            "",
            [prefix("/", svc("root", 80)), exact("/x", svc("x", 80))],
        )
        .build()]);
    check(&t, "h", "", Some("root"), "an empty path is /");
    check(&t, "h", "?q", Some("root"), "only a query is /");
    check(&t, "h", "*", None, "OPTIONS * is not a path");
    check(
        &t,
        "h",
        "//x",
        Some("root"),
        "doubled slashes are not normalised here",
    );
    let t = clean_table(&[ingress("x").rule("", [exact("/x", svc("x", 80))]).build()]);
    check(&t, "h", "", None, "an empty path is / (no Exact /)");
}

#[test]
fn prefix_matching_is_element_wise_at_every_depth() {
    let t = clean_table(&[ingress("deep")
        .rule(
            "",
            [prefix("/a/b/c", svc("abc", 80)), prefix("/a", svc("a", 80))],
        )
        .build()]);
    check(&t, "h", "/a/b/c/d/e", Some("abc"), "deep subpath");
    check(
        &t,
        "h",
        "/a/b/cd",
        Some("a"),
        "string prefix of the last element falls back to /a",
    );
    check(&t, "h", "/a/b", Some("a"), "shorter than /a/b/c");
    check(
        &t,
        "h",
        "/a//b/c",
        Some("a"),
        "an empty element is an element",
    );
    check(&t, "h", "/ab", None, "/a does not match /ab");
}

#[test]
fn implementation_specific_behaves_as_prefix() {
    let t = clean_table(&[ingress("is")
        .rule(
            "a.example",
            [implementation_specific("/foo", svc("foo", 80))],
        )
        .rule(
            "b.example",
            [path(None, "ImplementationSpecific", svc("all", 80))],
        )
        .rule(
            "c.example",
            [path(Some(""), "ImplementationSpecific", svc("all-c", 80))],
        )
        .build()]);
    check(&t, "a.example", "/foo", Some("foo"), "like Prefix: /foo");
    check(
        &t,
        "a.example",
        "/foo/bar",
        Some("foo"),
        "like Prefix: subpath",
    );
    check(
        &t,
        "a.example",
        "/foobar",
        None,
        "like Prefix: not a string prefix",
    );
    check(
        &t,
        "b.example",
        "/anything",
        Some("all"),
        "no path: every path",
    );
    check(
        &t,
        "c.example",
        "/",
        Some("all-c"),
        "empty path: every path",
    );
    let r = route(&t, "b.example", "/x");
    assert_eq!(
        r.matched,
        Matched::Path {
            path: "/".into(),
            path_type: PathType::ImplementationSpecific
        },
        "the path type is reported as written"
    );
}

#[test]
fn route_reports_the_matched_rule() {
    let t = clean_table(&[ingress("report")
        .ns("shop")
        .rule(
            "*.shop.example",
            [prefix("/cart/", svc_named("cart", "http"))],
        )
        .build()]);
    let r = route(&t, "www.shop.example", "/cart/items");
    let want = Route {
        ingress: IngressRef::new("shop", "report"),
        host: Some("*.shop.example".into()),
        matched: Matched::Path {
            path: "/cart/".into(),
            path_type: PathType::Prefix,
        },
        backend: Backend::Service(ServiceBackend {
            namespace: "shop".into(),
            name: "cart".into(),
            port: ServicePort::Name("http".into()),
        }),
    };
    assert_eq!(r, &want);
}

// ---------------------------------------------------------------------------
// Conflicts
// ---------------------------------------------------------------------------

#[test]
fn conflict_on_the_same_host_path_and_type_is_won_by_the_oldest() {
    let old = ingress("zzz-old")
        .created(100)
        .rule("h.example", [prefix("/x", svc("old", 80))])
        .build();
    let new = ingress("aaa-new")
        .created(200)
        .rule("h.example", [prefix("/x", svc("new", 80))])
        .build();
    for ingresses in [[old.clone(), new.clone()], [new, old]] {
        let (t, errors) = table(&ingresses);
        check(
            &t,
            "h.example",
            "/x",
            Some("old"),
            "the older Ingress wins, whatever the input order",
        );
        let e = only_error(&errors, "conflict warning");
        assert_eq!(e.severity(), Severity::Warning);
        assert_eq!(e.ingress, IngressRef::new("default", "aaa-new"));
        assert_eq!(e.field, "spec.rules[0].http.paths[0]");
        assert_eq!(
            e.kind,
            RouteErrorKind::Conflict {
                host: Some("h.example".into()),
                path: "/x".into(),
                path_type: PathType::Prefix,
                winner: IngressRef::new("default", "zzz-old"),
                winner_field: "spec.rules[0].http.paths[0]".into(),
            }
        );
    }
}

#[test]
fn conflict_without_creation_times_is_won_by_namespace_then_name() {
    let a = ingress("b")
        .ns("a")
        .rule("", [exact("/x", svc("ns-a", 80))])
        .build();
    let b = ingress("a")
        .ns("b")
        .rule("", [exact("/x", svc("ns-b", 80))])
        .build();
    let c = ingress("a")
        .ns("a")
        .rule("", [exact("/x", svc("ns-a-name-a", 80))])
        .build();
    let (t, errors) = table(&[b, a, c]);
    check(
        &t,
        "h",
        "/x",
        Some("ns-a-name-a"),
        "a/a before a/b before b/a",
    );
    assert_eq!(errors.len(), 2, "two losers: {errors:#?}");
    assert!(errors.iter().all(|e| e.severity() == Severity::Warning));
}

#[test]
fn an_ingress_with_a_creation_time_beats_one_without() {
    let dated = ingress("z")
        .created(1_700_000_000)
        .rule("", [prefix("/", svc("dated", 80))])
        .build();
    let undated = ingress("a")
        .rule("", [prefix("/", svc("undated", 80))])
        .build();
    let (t, errors) = table(&[undated, dated]);
    check(&t, "h", "/", Some("dated"), "unknown age counts as newest");
    assert_eq!(only_error(&errors, "conflict").ingress.name.as_ref(), "a");
}

#[test]
fn conflict_within_one_ingress_keeps_the_first_path() {
    let (t, errors) = table(&[ingress("dup")
        .rule("h", [prefix("/x", svc("first", 80))])
        .rule(
            "h",
            [
                prefix("/x/", svc("second", 80)),
                exact("/x", svc("exact", 80)),
            ],
        )
        .build()]);
    check(
        &t,
        "h",
        "/x/y",
        Some("first"),
        "/x and /x/ are the same Prefix",
    );
    check(
        &t,
        "h",
        "/x",
        Some("exact"),
        "Exact /x is not in conflict with Prefix /x",
    );
    let e = only_error(&errors, "conflict");
    assert_eq!(e.field, "spec.rules[1].http.paths[0]");
    assert!(
        matches!(&e.kind, RouteErrorKind::Conflict { winner_field, .. } if winner_field == "spec.rules[0].http.paths[0]")
    );
}

#[test]
fn implementation_specific_and_prefix_on_the_same_path_conflict() {
    let (t, errors) = table(&[
        ingress("old")
            .created(1)
            .rule("h", [implementation_specific("/x", svc("impl", 80))])
            .build(),
        ingress("new")
            .created(2)
            .rule("h", [prefix("/x", svc("prefix", 80))])
            .build(),
    ]);
    check(
        &t,
        "h",
        "/x/y",
        Some("impl"),
        "they match the same requests: the older wins",
    );
    assert!(matches!(
        only_error(&errors, "conflict").kind,
        RouteErrorKind::Conflict { .. }
    ));
}

#[test]
fn same_path_on_different_hosts_is_no_conflict() {
    let t = clean_table(&[
        ingress("a")
            .rule("a.example", [prefix("/", svc("a", 80))])
            .build(),
        ingress("b")
            .rule("b.example", [prefix("/", svc("b", 80))])
            .build(),
        ingress("w")
            .rule("*.example", [prefix("/", svc("w", 80))])
            .build(),
        ingress("any")
            .rule("", [prefix("/", svc("any", 80))])
            .build(),
    ]);
    check(&t, "a.example", "/", Some("a"), "a.example");
    check(&t, "b.example", "/", Some("b"), "b.example");
    check(&t, "c.example", "/", Some("w"), "*.example");
    check(&t, "example", "/", Some("any"), "host-less");
}

// ---------------------------------------------------------------------------
// Default backends
// ---------------------------------------------------------------------------

#[test]
fn an_ingress_default_backend_serves_unmatched_paths_of_its_hosts() {
    let t = clean_table(&[
        ingress("catch-all")
            .created(5)
            .default_backend(svc("global", 80))
            .build(),
        ingress("shop")
            .created(1)
            .rule("shop.example", [prefix("/cart", svc("cart", 80))])
            .default_backend(svc("shop-default", 80))
            .build(),
        ingress("blog")
            .created(2)
            .rule("blog.example", [prefix("/posts", svc("posts", 80))])
            .build(),
    ]);
    check(
        &t,
        "shop.example",
        "/cart/1",
        Some("cart"),
        "a path of the host",
    );
    check(
        &t,
        "shop.example",
        "/other",
        Some("shop-default"),
        "the host's Ingress default backend",
    );
    check(
        &t,
        "blog.example",
        "/other",
        Some("global"),
        "a host whose Ingresses have no default backend",
    );
    check(
        &t,
        "unknown.example",
        "/",
        Some("global"),
        "an unknown host: the rule-less catch-all, although newer",
    );
    let r = route(&t, "shop.example", "/other");
    assert_eq!(
        (r.host.as_deref(), &r.matched),
        (Some("shop.example"), &Matched::DefaultBackend)
    );
    assert_eq!(
        t.default_backend().map(|r| r.ingress.name.as_ref()),
        Some("catch-all")
    );
}

#[test]
fn without_a_rule_less_ingress_the_oldest_default_backend_is_global() {
    let t = clean_table(&[
        ingress("new")
            .created(2)
            .rule("b.example", [exact("/", svc("b", 80))])
            .default_backend(svc("b-default", 80))
            .build(),
        ingress("old")
            .created(1)
            .rule("a.example", [exact("/", svc("a", 80))])
            .default_backend(svc("a-default", 80))
            .build(),
    ]);
    check(
        &t,
        "c.example",
        "/",
        Some("a-default"),
        "the oldest Ingress's default backend",
    );
    check(
        &t,
        "b.example",
        "/x",
        Some("b-default"),
        "b.example keeps its own",
    );
}

#[test]
fn several_rule_less_default_backends_the_oldest_wins_with_warnings() {
    let (t, errors) = table(&[
        ingress("second")
            .created(2)
            .default_backend(svc("second", 80))
            .build(),
        ingress("first")
            .created(1)
            .default_backend(svc("first", 80))
            .build(),
        ingress("third")
            .created(3)
            .default_backend(svc("third", 80))
            .build(),
    ]);
    check(&t, "any", "/", Some("first"), "the oldest default backend");
    assert_eq!(
        errors.len(),
        2,
        "two shadowed default backends: {errors:#?}"
    );
    for e in &errors {
        assert_eq!(e.field, "spec.defaultBackend");
        assert_eq!(e.severity(), Severity::Warning);
        assert_eq!(
            e.kind,
            RouteErrorKind::DefaultBackendShadowed {
                host: None,
                winner: IngressRef::new("default", "first")
            }
        );
    }
}

#[test]
fn per_host_default_backend_of_the_oldest_ingress_wins() {
    let (t, errors) = table(&[
        ingress("new")
            .created(2)
            .rule("h.example", [exact("/new", svc("new", 80))])
            .default_backend(svc("new-default", 80))
            .build(),
        ingress("old")
            .created(1)
            .rule("h.example", [exact("/old", svc("old", 80))])
            .default_backend(svc("old-default", 80))
            .build(),
    ]);
    check(
        &t,
        "h.example",
        "/x",
        Some("old-default"),
        "the older Ingress's default backend",
    );
    check(
        &t,
        "h.example",
        "/new",
        Some("new"),
        "both Ingresses' paths are served",
    );
    let e = only_error(&errors, "shadowed host default");
    assert_eq!(
        e.kind,
        RouteErrorKind::DefaultBackendShadowed {
            host: Some("h.example".into()),
            winner: IngressRef::new("default", "old")
        }
    );
}

#[test]
fn a_rule_without_http_claims_its_host_for_the_default_backend() {
    let t = clean_table(&[
        ingress("host-only")
            .host_only("h.example")
            .default_backend(svc("h-default", 80))
            .build(),
        ingress("any")
            .rule("", [prefix("/", svc("any", 80))])
            .build(),
    ]);
    check(
        &t,
        "h.example",
        "/",
        Some("h-default"),
        "the host is claimed by the Ingress",
    );
    check(&t, "other.example", "/", Some("any"), "other hosts");
}

#[test]
fn host_less_rules_with_a_default_backend() {
    let t = clean_table(&[ingress("any")
        .rule("", [exact("/x", svc("x", 80))])
        .default_backend(svc("any-default", 80))
        .build()]);
    check(
        &t,
        "whatever",
        "/y",
        Some("any-default"),
        "unmatched path of the host-less rules",
    );
    check(&t, "", "/x", Some("x"), "matched path");
}

#[test]
fn no_rule_and_no_default_backend_is_404() {
    let t = clean_table(&[ingress("a")
        .rule("a.example", [exact("/", svc("a", 80))])
        .build()]);
    check(
        &t,
        "b.example",
        "/",
        None,
        "no rule for the host, no default: 404",
    );
    check(
        &t,
        "a.example",
        "/x",
        None,
        "no path for the host, no default: 404",
    );
    assert!(
        RouteTable::default().route("a.example", "/").is_none(),
        "the empty table routes nothing"
    );
    assert!(RouteTable::default().is_empty());
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

#[test]
fn backends_by_port_number_and_by_port_name() {
    let t = clean_table(&[ingress("ports")
        .ns("apps")
        .rule(
            "",
            [
                exact("/n", svc("web", 8080)),
                exact("/s", svc_named("web", "https-alt")),
            ],
        )
        .build()]);
    let backend = |p| route(&t, "h", p).backend.clone();
    assert_eq!(
        backend("/n"),
        Backend::Service(ServiceBackend {
            namespace: "apps".into(),
            name: "web".into(),
            port: ServicePort::Number(8080)
        })
    );
    assert_eq!(
        backend("/s"),
        Backend::Service(ServiceBackend {
            namespace: "apps".into(),
            name: "web".into(),
            port: ServicePort::Name("https-alt".into())
        })
    );
}

#[test]
fn resource_backends_are_kept_answered_503_and_reported() {
    let (t, errors) = table(&[ingress("bucket")
        .rule(
            "",
            [
                prefix("/static", resource("StorageBucket", "assets")),
                prefix("/", svc("web", 80)),
            ],
        )
        .build()]);
    let r = route(&t, "h", "/static/logo.png");
    assert_eq!(
        r.backend,
        Backend::Resource {
            api_group: Some("k8s.example.com".into()),
            kind: "StorageBucket".into(),
            name: "assets".into()
        },
        "the path is kept so /static does not leak to /"
    );
    check(
        &t,
        "h",
        "/index.html",
        Some("web"),
        "the other path is served",
    );
    let e = only_error(&errors, "resource backend error");
    assert_eq!(
        (e.field.as_str(), e.severity()),
        (
            "spec.rules[0].http.paths[0].backend.resource",
            Severity::Error
        )
    );
    assert!(
        matches!(&e.kind, RouteErrorKind::ResourceBackend { kind, name } if kind == "StorageBucket" && name == "assets")
    );
}

#[test]
fn invalid_backends_keep_their_path_as_invalid() {
    let mut both = svc("web", 80);
    both.service.as_mut().unwrap().port.as_mut().unwrap().name = Some("http".into());
    let mut none = svc("web", 80);
    none.service.as_mut().unwrap().port = None;
    let mut neither = svc("web", 80);
    neither.service = None;
    let mut service_and_resource = resource("Bucket", "b");
    service_and_resource.service = svc("web", 80).service;
    let cases = [
        (
            svc("Web", 80),
            "spec.rules[0].http.paths[0].backend.service.name",
            "uppercase Service name",
        ),
        (
            svc("1web", 80),
            "spec.rules[0].http.paths[0].backend.service.name",
            "Service name not a DNS-1035 label",
        ),
        (
            svc("", 80),
            "spec.rules[0].http.paths[0].backend.service.name",
            "empty Service name",
        ),
        (
            svc("web", 70000),
            "spec.rules[0].http.paths[0].backend.service.port.number",
            "port above 65535",
        ),
        (
            svc("web", -1),
            "spec.rules[0].http.paths[0].backend.service.port.number",
            "negative port",
        ),
        (
            svc("web", 0),
            "spec.rules[0].http.paths[0].backend.service.port",
            "port 0 is unset",
        ),
        (
            svc_named("web", "HTTP"),
            "spec.rules[0].http.paths[0].backend.service.port.name",
            "uppercase port name",
        ),
        (
            svc_named("web", "123"),
            "spec.rules[0].http.paths[0].backend.service.port.name",
            "port name without a letter",
        ),
        (
            svc_named("web", "a--b"),
            "spec.rules[0].http.paths[0].backend.service.port.name",
            "consecutive hyphens",
        ),
        (
            svc_named("web", "a-very-long-port-name"),
            "spec.rules[0].http.paths[0].backend.service.port.name",
            "port name over 15",
        ),
        (
            both,
            "spec.rules[0].http.paths[0].backend.service.port",
            "port name and number",
        ),
        (
            none,
            "spec.rules[0].http.paths[0].backend.service.port",
            "no port",
        ),
        (neither, "spec.rules[0].http.paths[0].backend", "no backend"),
        (
            service_and_resource,
            "spec.rules[0].http.paths[0].backend",
            "service and resource",
        ),
    ];
    for (backend, field, why) in cases {
        let (t, errors) = table(&[ingress("bad")
            .rule(
                "",
                [prefix("/admin", backend), prefix("/", svc("public", 80))],
            )
            .build()]);
        check(
            &t,
            "h",
            "/admin/x",
            Some("<invalid>"),
            &format!("{why}: the path is kept, answered 503, never routed to /"),
        );
        check(
            &t,
            "h",
            "/x",
            Some("public"),
            &format!("{why}: the valid path is served"),
        );
        let e = only_error(&errors, why);
        assert_eq!(
            (e.field.as_str(), e.severity()),
            (field, Severity::Error),
            "{why}: {e}"
        );
        assert!(
            matches!(e.kind, RouteErrorKind::InvalidBackend(_)),
            "{why}: {e}"
        );
    }
}

#[test]
fn an_invalid_default_backend_is_answered_503() {
    let (t, errors) = table(&[ingress("bad-default")
        .default_backend(svc("web", 0))
        .build()]);
    check(
        &t,
        "h",
        "/",
        Some("<invalid>"),
        "an invalid default backend still catches requests",
    );
    assert_eq!(
        only_error(&errors, "invalid default backend").field,
        "spec.defaultBackend.service.port"
    );
}

// ---------------------------------------------------------------------------
// Validation: one bad field never stops the rest.
// ---------------------------------------------------------------------------

#[test]
fn invalid_paths_are_dropped_with_an_error_naming_the_field() {
    let cases: &[(Option<&str>, &str, &str)] = &[
        (Some("foo"), "Prefix", "must be an absolute path"),
        (Some("foo"), "Exact", "must be an absolute path"),
        (
            Some("foo"),
            "ImplementationSpecific",
            "must be an absolute path",
        ),
        (None, "Exact", "must be an absolute path"),
        (Some(""), "Prefix", "must be an absolute path"),
        (Some("/foo//bar"), "Prefix", "must not contain '//'"),
        (Some("/foo/./bar"), "Exact", "must not contain '/./'"),
        (Some("/foo/../bar"), "Prefix", "must not contain '/../'"),
        (Some("/foo%2fbar"), "Prefix", "must not contain '%2f'"),
        (Some("/foo%2Fbar"), "Exact", "must not contain '%2F'"),
        (Some("/foo/.."), "Prefix", "cannot end with '/..'"),
        (Some("/foo/."), "Exact", "cannot end with '/.'"),
        (
            Some("/foo//"),
            "ImplementationSpecific",
            "must not contain '//'",
        ),
        (Some("/foo?x=1"), "Exact", "must not contain '?'"),
        (Some("/foo#x"), "Prefix", "must not contain '#'"),
        (Some("/foo bar"), "Prefix", "must not contain ' '"),
        (Some("/foo\tbar"), "Exact", "must not contain '\\t'"),
    ];
    for &(p, path_type, reason) in cases {
        let (t, errors) = table(&[ingress("paths")
            .rule(
                "h",
                [
                    path(p, path_type, svc("bad", 80)),
                    exact("/ok", svc("ok", 80)),
                ],
            )
            .build()]);
        let why = format!("{path_type} {p:?}");
        check(
            &t,
            "h",
            "/ok",
            Some("ok"),
            &format!("{why}: the other path is served"),
        );
        check(
            &t,
            "h",
            p.unwrap_or("/"),
            None,
            &format!("{why}: the invalid path is not served"),
        );
        let e = only_error(&errors, &why);
        assert_eq!(
            (e.field.as_str(), e.severity()),
            ("spec.rules[0].http.paths[0].path", Severity::Error),
            "{why}"
        );
        let RouteErrorKind::InvalidPath { reason: got, .. } = &e.kind else {
            panic!("{why}: expected InvalidPath, got {e}")
        };
        assert!(
            got.starts_with(reason),
            "{why}: expected reason {reason:?}, got {got:?}"
        );
    }
}

#[test]
fn valid_unusual_paths_are_served_literally() {
    let t = clean_table(&[ingress("odd")
        .rule(
            "",
            [
                exact("/a.b/c..d/.well-known/x~y", svc("dots", 80)),
                prefix("/%41", svc("encoded", 80)),
                prefix("/é", svc("utf8", 80)),
            ],
        )
        .build()]);
    check(
        &t,
        "h",
        "/a.b/c..d/.well-known/x~y",
        Some("dots"),
        "dots inside elements are fine",
    );
    check(
        &t,
        "h",
        "/%41/x",
        Some("encoded"),
        "percent-encoding is compared as written",
    );
    check(&t, "h", "/A/x", None, "and not decoded here");
    check(&t, "h", "/é/x", Some("utf8"), "non-ASCII as written");
}

#[test]
fn regex_looking_paths_are_matched_literally_with_a_warning() {
    let (t, errors) = table(&[ingress("regex")
        .rule(
            "",
            [
                implementation_specific("/api/(.*)", svc("api", 80)),
                prefix("/", svc("root", 80)),
            ],
        )
        .build()]);
    check(
        &t,
        "h",
        "/api/(.*)/x",
        Some("api"),
        "the literal path matches",
    );
    check(&t, "h", "/api/users", Some("root"), "it is not a regex");
    let e = only_error(&errors, "regex warning");
    assert_eq!(
        (e.field.as_str(), e.severity()),
        ("spec.rules[0].http.paths[0].path", Severity::Warning)
    );
    assert_eq!(e.kind, RouteErrorKind::RegexPath("/api/(.*)".into()));
}

#[test]
fn an_unknown_path_type_drops_the_path() {
    let (t, errors) = table(&[ingress("type")
        .rule(
            "",
            [
                path(Some("/a"), "prefix", svc("a", 80)),
                path(Some("/b"), "", svc("b", 80)),
                exact("/c", svc("c", 80)),
            ],
        )
        .build()]);
    check(&t, "h", "/a", None, "pathType is case-sensitive");
    check(&t, "h", "/c", Some("c"), "the valid path is served");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].field, "spec.rules[0].http.paths[0].pathType");
    assert_eq!(
        errors[0].kind,
        RouteErrorKind::InvalidPathType("prefix".into())
    );
    assert_eq!(errors[1].field, "spec.rules[0].http.paths[1].pathType");
}

#[test]
fn invalid_hosts_drop_their_rule_only() {
    for (host, why) in [
        ("Foo.example.com", "uppercase"),
        ("198.18.0.1", "an IPv4 address"),
        ("010.001.0.1", "an IPv4 address with leading zeros"),
        ("::1", "an IPv6 address"),
        ("foo.*.com", "wildcard not first"),
        ("*foo.com", "wildcard without dot"),
        ("*", "a bare wildcard"),
        ("*.*.com", "two wildcards"),
        ("-foo.com", "label starting with a hyphen"),
        ("foo-.com", "label ending with a hyphen"),
        ("foo_bar.com", "underscore"),
        ("foo..com", "empty label"),
        ("foo.com.", "trailing dot"),
        ("foo.com:80", "a port"),
    ] {
        let (t, errors) = table(&[ingress("hosts")
            .rule(host, [prefix("/", svc("bad", 80))])
            .rule("ok.example", [prefix("/", svc("ok", 80))])
            .build()]);
        check(
            &t,
            "ok.example",
            "/",
            Some("ok"),
            &format!("{why}: other rules are served"),
        );
        check(
            &t,
            &host.to_lowercase(),
            "/",
            None,
            &format!("{why}: the invalid rule is not served"),
        );
        let e = only_error(&errors, why);
        assert_eq!(
            (e.field.as_str(), e.severity()),
            ("spec.rules[0].host", Severity::Error),
            "{why}"
        );
        assert!(
            matches!(&e.kind, RouteErrorKind::InvalidHost { host: h, .. } if h == host),
            "{why}: {e}"
        );
    }
    let long = format!("{}.com", "a".repeat(250));
    let (_, errors) = table(&[ingress("long")
        .rule(&long, [prefix("/", svc("x", 80))])
        .build()]);
    assert!(matches!(
        only_error(&errors, "too long").kind,
        RouteErrorKind::InvalidHost { .. }
    ));
}

#[test]
fn valid_hosts_are_accepted() {
    for host in [
        "a",
        "a.b",
        "xn--bcher-kva.example",
        "1a.example",
        "a-b.c-d.example",
        "*.a",
        "*.example.com",
        "123.example",
    ] {
        let (_, errors) = table(&[ingress("ok")
            .rule(host, [prefix("/", svc("ok", 80))])
            .build()]);
        assert!(
            errors.is_empty(),
            "{host:?} is a valid rule host, got {errors:#?}"
        );
    }
}

#[test]
fn an_ingress_without_name_or_without_anything_to_serve_is_reported() {
    let mut nameless = ingress("x")
        .rule("", [prefix("/", svc("nameless", 80))])
        .build();
    nameless.metadata.name = None;
    let empty = ingress("empty").build();
    let no_spec = Ingress {
        spec: None,
        ..ingress("no-spec").build()
    };
    let mut classless_source = no_spec.clone();
    classless_source.metadata.name = Some("also-no-spec".into());
    let no_paths = ingress("no-paths").rule("np.example", []).build();
    let ok = ingress("ok")
        .rule("ok.example", [prefix("/", svc("ok", 80))])
        .build();
    // The Ingresses without spec have no class: serve them via from_served.
    let (t, errors) = RouteTable::from_served([&nameless, &empty, &no_spec, &no_paths, &ok]);
    check(
        &t,
        "ok.example",
        "/",
        Some("ok"),
        "the valid Ingress is served",
    );
    check(
        &t,
        "np.example",
        "/",
        None,
        "a rule without paths routes nothing",
    );
    let got: Vec<(String, &str, &RouteErrorKind)> = errors
        .iter()
        .map(|e| (e.ingress.to_string(), e.field.as_str(), &e.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "default/".to_owned(),
                "metadata.name",
                &RouteErrorKind::MissingName
            ),
            (
                "default/empty".to_owned(),
                "spec",
                &RouteErrorKind::NothingToServe
            ),
            (
                "default/no-paths".to_owned(),
                "spec.rules[0].http.paths",
                &RouteErrorKind::NoPaths
            ),
            (
                "default/no-spec".to_owned(),
                "spec",
                &RouteErrorKind::NothingToServe
            ),
        ]
    );
}

#[test]
fn a_missing_namespace_is_default() {
    let mut i = ingress("web")
        .rule("", [prefix("/", svc("web", 80))])
        .build();
    i.metadata.namespace = None;
    let t = clean_table(&[i]);
    let r = route(&t, "h", "/");
    assert_eq!(&*r.ingress.namespace, "default");
}

#[test]
fn one_broken_ingress_next_to_working_ones() {
    let broken = ingress("broken")
        .created(1)
        .rule("Bad_Host", [prefix("/", svc("x", 80))])
        .rule(
            "app.example",
            [
                path(Some("nope"), "Prefix", svc("x", 80)),
                path(Some("/y"), "Regex", svc("x", 80)),
                prefix("/z", svc("web", 99999)),
            ],
        )
        .default_backend(resource("Bucket", "b"))
        .build();
    let working = ingress("working")
        .created(2)
        .rule("app.example", [prefix("/", svc("app", 80))])
        .rule("other.example", [exact("/", svc("other", 80))])
        .build();
    let (t, errors) = table(&[broken, working]);
    check(
        &t,
        "app.example",
        "/anything",
        Some("app"),
        "the working Ingress's path",
    );
    check(
        &t,
        "other.example",
        "/",
        Some("other"),
        "the working Ingress's other host",
    );
    check(
        &t,
        "app.example",
        "/z/1",
        Some("<invalid>"),
        "the broken path with a valid path keeps its place",
    );
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert!(
        errors.iter().all(|e| e.ingress.name.as_ref() == "broken"),
        "{errors:#?}"
    );
}

#[test]
fn errors_display_severity_ingress_field_and_reason() {
    let (_, errors) = table(&[ingress("web")
        .ns("shop")
        .rule("", [prefix("foo", svc("web", 80))])
        .build()]);
    assert_eq!(
        only_error(&errors, "invalid path").to_string(),
        "error: Ingress shop/web spec.rules[0].http.paths[0].path: invalid path \"foo\": must be an absolute path (start with '/'); the path is ignored"
    );
}

// ---------------------------------------------------------------------------
// Classes
// ---------------------------------------------------------------------------

fn serves(classes: &[IngressClass], config: &ClassConfig, ingress: &Ingress) -> bool {
    ClassFilter::new(classes, config).serves(ingress)
}

#[test]
fn class_by_ingress_class_name() {
    let classes = [
        ingress_class("ours", DEFAULT_CONTROLLER),
        ingress_class("nginx", "k8s.io/ingress-nginx"),
    ];
    let config = ClassConfig::default();
    let named = |c: &str| ingress("i").class(Some(c)).build();
    assert!(
        serves(&classes, &config, &named("ours")),
        "our controller's class"
    );
    assert!(
        !serves(&classes, &config, &named("nginx")),
        "another controller's class"
    );
    assert!(
        !serves(&classes, &config, &named("missing")),
        "a class that does not exist"
    );
    assert!(
        !serves(&classes, &config, &ingress("i").class(None).build()),
        "no class and no default class"
    );
}

#[test]
fn class_less_ingresses_follow_the_default_class() {
    let classless = ingress("i").class(None).build();
    let empty_class = ingress("i").class(Some("")).build();
    let config = ClassConfig::default();
    let ours_default = [default_class("ours", DEFAULT_CONTROLLER, 1)];
    assert!(
        serves(&ours_default, &config, &classless),
        "our class is the default"
    );
    assert!(
        serves(&ours_default, &config, &empty_class),
        "an empty class name is no class"
    );
    let theirs_default = [
        ingress_class("ours", DEFAULT_CONTROLLER),
        default_class("nginx", "k8s.io/ingress-nginx", 1),
    ];
    assert!(
        !serves(&theirs_default, &config, &classless),
        "another controller's class is the default"
    );
    let mut not_true = default_class("ours", DEFAULT_CONTROLLER, 1);
    not_true
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(IS_DEFAULT_CLASS_ANNOTATION.into(), "True".into());
    assert!(
        !serves(&[not_true], &config, &classless),
        "only the exact value \"true\" makes a default class"
    );
}

#[test]
fn with_several_default_classes_the_newest_counts() {
    let classless = ingress("i").class(None).build();
    let config = ClassConfig::default();
    let ours_newer = [
        default_class("nginx", "k8s.io/ingress-nginx", 1),
        default_class("ours", DEFAULT_CONTROLLER, 2),
    ];
    assert!(
        serves(&ours_newer, &config, &classless),
        "our default class is the newest"
    );
    let theirs_newer = [
        default_class("nginx", "k8s.io/ingress-nginx", 3),
        default_class("ours", DEFAULT_CONTROLLER, 2),
    ];
    assert!(
        !serves(&theirs_newer, &config, &classless),
        "the other default class is the newest"
    );
}

#[test]
fn the_deprecated_class_annotation_is_honoured() {
    let classes = [
        ingress_class("ours", DEFAULT_CONTROLLER),
        ingress_class("nginx", "k8s.io/ingress-nginx"),
    ];
    let annotated = |c: &str| {
        ingress("i")
            .class(None)
            .annotation(INGRESS_CLASS_ANNOTATION, c)
            .build()
    };
    let config = ClassConfig::default();
    assert!(
        serves(&classes, &config, &annotated("ours")),
        "annotation naming our class"
    );
    assert!(
        !serves(&classes, &config, &annotated("nginx")),
        "annotation naming another controller's class"
    );
    assert!(
        !serves(&classes, &config, &annotated("legacy")),
        "annotation naming no class, no --ingress-class"
    );
    let legacy = ClassConfig {
        class_name: Some("legacy".into()),
        ..ClassConfig::default()
    };
    assert!(
        serves(&[], &legacy, &annotated("legacy")),
        "no IngressClass 'legacy': the --ingress-class name is accepted"
    );
    let taken = [ingress_class("legacy", "k8s.io/ingress-nginx")];
    assert!(
        !serves(&taken, &legacy, &annotated("legacy")),
        "an IngressClass 'legacy' of another controller wins"
    );
    let both = ingress("i")
        .class(Some("nginx"))
        .annotation(INGRESS_CLASS_ANNOTATION, "ours")
        .build();
    assert!(
        !serves(&classes, &config, &both),
        "spec.ingressClassName wins over the annotation"
    );
    let default_ours = [
        default_class("ours", DEFAULT_CONTROLLER, 1),
        ingress_class("nginx", "k8s.io/ingress-nginx"),
    ];
    assert!(
        !serves(&default_ours, &config, &annotated("nginx")),
        "an annotation is a class: the default does not apply"
    );
}

#[test]
fn ingress_class_name_filter_splits_one_controllers_classes() {
    let classes = [
        ingress_class("public", DEFAULT_CONTROLLER),
        ingress_class("internal", DEFAULT_CONTROLLER),
    ];
    let config = ClassConfig {
        class_name: Some("internal".into()),
        ..ClassConfig::default()
    };
    assert!(serves(
        &classes,
        &config,
        &ingress("i").class(Some("internal")).build()
    ));
    assert!(!serves(
        &classes,
        &config,
        &ingress("i").class(Some("public")).build()
    ));
    let custom = ClassConfig {
        controller: "example.com/other".into(),
        class_name: None,
    };
    assert!(
        !serves(
            &classes,
            &custom,
            &ingress("i").class(Some("public")).build()
        ),
        "the controller is configurable"
    );
    assert_eq!(ClassConfig::default().controller, "gangplank.io/ingress");
}

#[test]
fn build_serves_only_our_ingresses() {
    let classes = [
        ingress_class(CLASS, DEFAULT_CONTROLLER),
        ingress_class("nginx", "k8s.io/ingress-nginx"),
    ];
    let ours = ingress("ours")
        .rule("h", [prefix("/", svc("ours", 80))])
        .build();
    // Another controller's Ingress is not ours: its conflicts and errors are
    // not ours either.
    let theirs = ingress("theirs")
        .created(0)
        .class(Some("nginx"))
        .rule(
            "h",
            [prefix("/", svc("theirs", 80)), prefix("bad", svc("x", 80))],
        )
        .build();
    let (t, errors) = RouteTable::build([&ours, &theirs], &classes, &ClassConfig::default());
    assert!(errors.is_empty(), "{errors:#?}");
    check(&t, "h", "/", Some("ours"), "only our class is served");
    assert_eq!(t.len(), 1);
    assert_eq!(t.routes().count(), 1);
}
