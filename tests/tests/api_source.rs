//! The Kubernetes API source (`gangplank::source::kube`) against the fake
//! API server: initial list, add/modify/delete of each kind, 410 Gone and
//! relist, outages, refusals with clear errors. No root needed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gangplank::source::kube::{connect, ApiWatchConfig, ApiWatcher, KubeOptions, WatchSpec};
use gangplank::source::{DirChange, Kind, Object};
use gangplank_tests::fake_api::FakeApi;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns,
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "web"}},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port, "protocol": "TCP"}]},
    })
}

fn slice(ns: &str, name: &str, service: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

/// What the batches say exists, by path.
#[derive(Default)]
struct View {
    objects: BTreeMap<PathBuf, Object>,
    synced: bool,
}

impl View {
    fn apply(&mut self, change: DirChange) {
        for (path, file) in change.changed {
            assert!(file.errors.is_empty(), "{:?}", file.errors);
            let [object] = <[Object; 1]>::try_from(file.objects).expect("one object per path");
            self.objects.insert(path, object);
        }
        for path in change.removed {
            self.objects.remove(&path);
        }
        self.synced |= change.synced;
    }

    fn names(&self, kind: Kind) -> Vec<String> {
        self.objects
            .values()
            .filter(|o| o.kind() == kind)
            .map(|o| format!("{}/{}", o.namespace().unwrap_or("-"), o.name()))
            .collect()
    }
}

/// Applies batches until `done` holds (or fails after 10 s).
async fn until(
    rx: &mut mpsc::Receiver<DirChange>,
    view: &mut View,
    what: &str,
    done: impl Fn(&View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(view) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(change)) => view.apply(change),
            Ok(None) => panic!("the source stopped while waiting for: {what}"),
            Err(_) => panic!(
                "timed out waiting for: {what}; have {:?}",
                view.objects.keys().collect::<Vec<_>>()
            ),
        }
    }
}

async fn start(
    api: &FakeApi,
    dir: &tempfile::TempDir,
    specs: &[WatchSpec],
) -> (ApiWatcher<Object>, mpsc::Receiver<DirChange>) {
    let kubeconfig = api.kubeconfig(dir.path(), "agent").expect("kubeconfig");
    let client = connect(&KubeOptions {
        kubeconfig: Some(kubeconfig),
    })
    .await
    .expect("client");
    ApiWatcher::start(client, specs, Arc::new(|o| o), ApiWatchConfig::default())
}

/// The first failure the watcher reports (10 s at most).
async fn first_error(watcher: &ApiWatcher<Object>) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = watcher.health().status().last_error {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "no error reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agent_specs() -> Vec<WatchSpec> {
    vec![
        WatchSpec::all(Kind::Service),
        WatchSpec::all(Kind::EndpointSlice),
        WatchSpec::named(Kind::Node, None, "node-a"),
    ]
}

#[tokio::test]
async fn lists_then_follows_adds_changes_and_deletes() {
    let api = FakeApi::start().expect("fake API");
    api.apply(service("web", "front", 80));
    api.apply(slice("web", "front-abc", "front", "10.244.1.5"));
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}}));
    let dir = tempfile::tempdir().expect("tempdir");
    let (watcher, mut rx) = start(&api, &dir, &agent_specs()).await;
    let mut view = View::default();
    until(&mut rx, &mut view, "the initial sync", |v| v.synced).await;
    assert_eq!(view.names(Kind::Service), ["web/front"]);
    assert_eq!(view.names(Kind::EndpointSlice), ["web/front-abc"]);
    assert_eq!(view.names(Kind::Node), ["-/node-a"], "only this node");
    let front = &view.objects[&PathBuf::from("api/Service/web/front")];
    assert!(
        front.metadata().managed_fields.is_none(),
        "managedFields stripped"
    );
    let annotations = front.metadata().annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["team"],
        "kubectl's copy stripped, the rest kept"
    );
    assert!(watcher.health().status().connected);

    api.apply(service("web", "back", 8080));
    api.apply(service("web", "front", 81));
    api.apply(slice("web", "back-xyz", "back", "10.244.2.7"));
    // The Service and EndpointSlice watches deliver independently: wait
    // for everything, including the change to `front`.
    let front_port = |v: &View| match v.objects.get(&PathBuf::from("api/Service/web/front")) {
        Some(Object::Service(front)) => front
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|p| p[0].port),
        _ => None,
    };
    until(&mut rx, &mut view, "adds and a change", |v| {
        v.names(Kind::Service).len() == 2
            && v.names(Kind::EndpointSlice).len() == 2
            && front_port(v) == Some(81)
    })
    .await;

    api.delete("Service", Some("web"), "front");
    api.delete("EndpointSlice", Some("web"), "front-abc");
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"zone": "b"}}}));
    until(&mut rx, &mut view, "deletes", |v| {
        v.names(Kind::Service) == ["web/back"] && v.names(Kind::EndpointSlice) == ["web/back-xyz"]
    })
    .await;
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "watches ask for bookmarks: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("fieldSelector=metadata.name=node-a")),
        "only this Node is read: {requests:#?}"
    );
    until(&mut rx, &mut view, "the node's change", |v| {
        v.objects[&PathBuf::from("api/Node/node-a")]
            .metadata()
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("zone"))
    })
    .await;
}

#[tokio::test]
async fn gone_410_relists_without_losing_or_keeping_anything_wrong() {
    let api = FakeApi::start().expect("fake API");
    for name in ["a", "b", "c"] {
        api.apply(service("default", name, 80));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (_watcher, mut rx) = start(&api, &dir, &[WatchSpec::all(Kind::Service)]).await;
    let mut view = View::default();
    until(&mut rx, &mut view, "the initial sync", |v| {
        v.synced && v.objects.len() == 3
    })
    .await;

    // While the watch is cut, `b` goes and `d` comes; the history is
    // compacted, so resuming from the old resourceVersion gets 410 Gone.
    api.refuse_connections(true);
    api.delete("Service", Some("default"), "b");
    api.apply(service("default", "d", 80));
    api.compact();
    api.refuse_connections(false);
    until(&mut rx, &mut view, "the relist", |v| {
        v.names(Kind::Service) == ["default/a", "default/c", "default/d"]
    })
    .await;
}

#[tokio::test]
async fn an_outage_keeps_the_last_state_and_converges() {
    let api = FakeApi::start().expect("fake API");
    api.apply(service("default", "a", 80));
    let dir = tempfile::tempdir().expect("tempdir");
    let (watcher, mut rx) = start(&api, &dir, &[WatchSpec::all(Kind::Service)]).await;
    let mut view = View::default();
    until(&mut rx, &mut view, "the initial sync", |v| v.synced).await;

    api.refuse_connections(true);
    // The watch notices on its next request; wait for the failure to show.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while watcher.health().status().connected {
        assert!(
            std::time::Instant::now() < deadline,
            "the outage was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = watcher.health().status();
    assert!(
        status.restarts >= 1 && status.last_error.is_some(),
        "{status:?}"
    );
    assert!(status.to_string().contains("unreachable"), "{status}");
    // Nothing was taken away meanwhile.
    while let Ok(change) = rx.try_recv() {
        assert!(
            change.removed.is_empty(),
            "an outage removed objects: {:?}",
            change.removed
        );
        view.apply(change);
    }
    assert_eq!(view.names(Kind::Service), ["default/a"]);

    // Back, with nothing changed: the watch resumes without an event, and
    // the health must still say so.
    api.refuse_connections(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !watcher.health().status().connected {
        assert!(
            std::time::Instant::now() < deadline,
            "still reported unreachable after the API server came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.apply(service("default", "b", 80));
    until(&mut rx, &mut view, "convergence", |v| {
        v.names(Kind::Service).len() == 2
    })
    .await;
    assert!(watcher.health().status().connected);
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_where_it_was() {
    let api = FakeApi::start().expect("fake API");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_watcher, mut rx) = start(&api, &dir, &[WatchSpec::all(Kind::Service)]).await;
    let mut view = View::default();
    until(&mut rx, &mut view, "the initial sync", |v| v.synced).await;
    for round in 0..3 {
        api.drop_connections();
        api.apply(service("default", &format!("s{round}"), 80));
    }
    until(&mut rx, &mut view, "every change across the cuts", |v| {
        v.objects.len() == 3
    })
    .await;
}

#[tokio::test]
async fn forbidden_names_the_verb_and_resource() {
    let api = FakeApi::start().expect("fake API");
    api.deny("list", "endpointslices");
    let dir = tempfile::tempdir().expect("tempdir");
    let (watcher, mut rx) = start(&api, &dir, &agent_specs()).await;
    let message = first_error(&watcher).await;
    for needle in [
        "forbidden",
        "`list`",
        "`endpointslices`",
        "discovery.k8s.io",
        "cannot list resource \"endpointslices\"",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    // Not synced without EndpointSlices; once allowed, it is.
    let mut view = View::default();
    while let Ok(change) = rx.try_recv() {
        view.apply(change);
    }
    assert!(!view.synced, "synced without a list of every kind");
    api.allow("list", "endpointslices");
    until(&mut rx, &mut view, "the sync once allowed", |v| v.synced).await;
}

#[tokio::test]
async fn connect_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let Err(err) = connect(&KubeOptions {
        kubeconfig: Some(missing.clone()),
    })
    .await
    else {
        panic!("a client from a missing file");
    };
    let text = err.to_string();
    assert!(
        text.contains("--kubeconfig") && text.contains(&missing.display().to_string()),
        "{text}"
    );
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "clusters: [").expect("write");
    let Err(err) = connect(&KubeOptions {
        kubeconfig: Some(garbage),
    })
    .await
    else {
        panic!("a client from a broken file");
    };
    let text = err.to_string();
    assert!(text.contains("--kubeconfig"), "{text}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = {
        let api = FakeApi::start().expect("fake API");
        api.kubeconfig(dir.path(), "agent").expect("kubeconfig")
        // Dropped: nothing listens there any more.
    };
    let Ok(client) = connect(&KubeOptions {
        kubeconfig: Some(closed),
    })
    .await
    else {
        panic!("no client, though nothing is contacted yet");
    };
    let (watcher, _rx) = ApiWatcher::start(
        client,
        &[WatchSpec::all(Kind::Service)],
        Arc::new(|o| o),
        ApiWatchConfig::default(),
    );
    let message = first_error(&watcher).await;
    assert!(message.contains("cannot reach the API server"), "{message}");
    assert!(
        message.contains("services"),
        "names what it was doing: {message}"
    );
}
