//! `gangplank-ingress` in cluster mode against the fake API server: routes,
//! endpoints and certificates from the API, only the referenced Secrets
//! read, Ingress status written by the elected replica only, and the Lease
//! handed over when the leader stops. Needs root.

use std::time::{Duration, Instant};

use gangplank_tests::chart;
use gangplank_tests::fake_api::FakeApi;
use gangplank_tests::ingress::{
    ingress_class, service, tls_secret, Env, Ingress, IngressProxy, CLASS,
};
use gangplank_tests::Cluster;
use serde_json::Value;

const UP: u16 = 8080;
const PUBLISHED: &str = "192.0.2.10";

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn apply_all(api: &FakeApi, docs: &[String]) {
    for doc in docs {
        api.apply_yaml(doc).expect("a manifest");
    }
}

fn status_ips(api: &FakeApi, name: &str) -> Vec<String> {
    api.get("Ingress", Some("default"), name)
        .and_then(|i| i["status"]["loadBalancer"]["ingress"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["ip"].as_str().map(str::to_owned))
        .collect()
}

fn holder(api: &FakeApi) -> Option<String> {
    api.get("Lease", Some("ingress-system"), "gangplank-ingress-leader")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// Who wrote the status of Ingress `name`, in order.
fn status_writers(api: &FakeApi, name: &str) -> Vec<String> {
    let path = format!("/apis/networking.k8s.io/v1/namespaces/default/ingresses/{name}/status");
    api.writes()
        .into_iter()
        .filter(|w| w.path == path)
        .map(|w| w.token.unwrap_or_default())
        .collect()
}

#[test]
fn serves_from_the_api_and_only_the_leader_writes_status() {
    let c = Cluster::new("ing-api", &[("node-a", &["pod-a1"]), ("node-b", &[])]).expect("cluster");
    let mut e = Env::with_cluster(c).expect("env");
    e.upstream("pod-a1", "web", UP).expect("upstream");
    let node_a = e.node_ip();
    let api = FakeApi::start_in_netns(e.c.netns("node-a"), node_a.into()).expect("fake API");
    let cert = e.ca.issue("web.example", &["web.example"]).expect("cert");
    let unrelated =
        e.ca.issue("other.example", &["other.example"])
            .expect("cert");
    apply_all(&api, &[ingress_class(CLASS)]);
    apply_all(
        &api,
        &service("default", "web", 80, UP, &[e.pod_ip("pod-a1")]),
    );
    apply_all(
        &api,
        &[
            tls_secret("default", "web-tls", &cert),
            tls_secret("default", "unrelated", &unrelated),
        ],
    );
    let web = Ingress::new("default", "web")
        .class(Some(CLASS))
        .annotation("example.com/owner", "team-web")
        .tls(&["web.example"], "web-tls")
        .host("web.example", "web", 80);
    apply_all(&api, &[web.to_yaml()]);

    let kc_a = api
        .kubeconfig(e.c.manifests_dir().parent().expect("dir"), "ingress-a")
        .expect("kubeconfig");
    let kc_b = api
        .kubeconfig(e.c.manifests_dir().parent().expect("dir"), "ingress-b")
        .expect("kubeconfig");
    // Exactly what the Helm chart grants the proxy (release "gangplank",
    // whose leader Lease is the proxy's default --election-id).
    let rules =
        chart::rbac_rules("gangplank", "ingress-system", "gangplank-ingress").expect("rules");
    api.authorize("ingress-a", rules.clone());
    api.authorize("ingress-b", rules);
    let flags = |name: &'static str| {
        vec![
            "--publish-address",
            PUBLISHED,
            "--pod-name",
            name,
            "--pod-namespace",
            "ingress-system",
        ]
    };
    let a = IngressProxy::start_with_api(&e.c, "node-a", &kc_a, &flags("ingress-a"))
        .expect("replica a");
    e.proxy = Some(a);
    let mut b: Option<IngressProxy> = Some(
        IngressProxy::start_with_api(&e.c, "node-b", &kc_b, &flags("ingress-b"))
            .expect("replica b"),
    );

    // Served from the API: route, endpoint and the certificate by SNI.
    let r = e
        .curl("https://web.example/", &[])
        .expect("HTTPS through the ingress");
    assert_eq!(r.status, 200, "{r:?}");
    let served = e.served_cert(Some("web.example")).expect("certificate");
    assert_eq!(served.cn, "web.example", "{served:?}");

    // Only the Secrets served Ingresses name are read, by name.
    let requests = api.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/secrets")),
        "Secrets read cluster-wide: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/namespaces/default/secrets?")
                && r.contains("metadata.name=web-tls"))
    );
    assert!(
        !requests.iter().any(|r| r.contains("unrelated")),
        "an unreferenced Secret was read"
    );

    // One leader; it alone writes the status.
    wait("a leader", Duration::from_secs(10), || {
        holder(&api).is_some()
    });
    let leader = holder(&api).expect("holder");
    wait("the status", Duration::from_secs(10), || {
        status_ips(&api, "web") == [PUBLISHED]
    });
    // Writing the status keeps the rest of the object (a status update
    // takes metadata from its body).
    let stored = api.get("Ingress", Some("default"), "web").expect("web");
    assert_eq!(
        stored["metadata"]["annotations"]["example.com/owner"], "team-web",
        "{stored}"
    );
    let writers = status_writers(&api, "web");
    assert!(
        !writers.is_empty() && writers.iter().all(|w| *w == leader),
        "status writers {writers:?}, leader {leader}"
    );

    // The leader stops: the Lease is handed over, and the new leader
    // writes from then on.
    let old = leader.clone();
    let stopping = if old == "ingress-a" {
        e.proxy.take()
    } else {
        b.take()
    };
    let status = stopping
        .expect("the leader runs")
        .proc
        .terminate(Duration::from_secs(10))
        .expect("SIGTERM");
    assert!(status.success(), "the leader exited with {status}");
    wait("the handover", Duration::from_secs(8), || {
        holder(&api).is_some_and(|h| h != old)
    });
    let leader = holder(&api).expect("new holder");
    let site = Ingress::new("default", "site")
        .class(Some(CLASS))
        .host("site.example", "web", 80);
    apply_all(&api, &[site.to_yaml()]);
    wait("the new Ingress's status", Duration::from_secs(10), || {
        status_ips(&api, "site") == [PUBLISHED]
    });
    let writers = status_writers(&api, "site");
    assert!(
        writers.iter().all(|w| *w == leader),
        "status of site written by {writers:?}, leader {leader}"
    );

    // An Ingress that leaves the class has its status cleared.
    let left = Ingress::new("default", "site")
        .class(Some("someone-else"))
        .host("site.example", "web", 80);
    let mut doc: Value = serde_yaml::from_str(&left.to_yaml()).expect("yaml");
    doc["status"] = api.get("Ingress", Some("default"), "site").expect("site")["status"].clone();
    api.apply(doc);
    wait("the cleared status", Duration::from_secs(10), || {
        status_ips(&api, "site").is_empty()
    });
    drop(b);
    let refused = api.refused();
    assert!(refused.is_empty(), "the chart's RBAC refused: {refused:?}");
}
