//! `gangplank uninstall-wait`, the Helm chart's post-delete Job, against
//! the fake API server with the chart's clean-up RBAC: it waits until
//! every node's clean-up pod is Ready, then deletes the DaemonSet; and it
//! fails, naming how far it got, when a node never gets there (deleting
//! the DaemonSet all the same).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gangplank_tests::fake_api::FakeApi;
use gangplank_tests::{chart, target_binary};
use serde_json::{json, Value};

fn cleanup_ds(ready: i32, desired: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "gp-cleanup", "namespace": "kube-system", "generation": 1},
        "spec": {},
        "status": {"observedGeneration": 1, "desiredNumberScheduled": desired,
                   "numberReady": ready, "updatedNumberScheduled": desired,
                   "currentNumberScheduled": desired, "numberMisscheduled": 0},
    })
}

/// The clean-up Job's RBAC, from the chart.
fn cleanup_rules() -> Vec<gangplank_tests::fake_api::PolicyRule> {
    chart::rbac_rules("gp", "kube-system", "gp-cleanup").expect("clean-up rules")
}

fn start(api: &FakeApi, dir: &std::path::Path, timeout: u32) -> Child {
    let kubeconfig = api.kubeconfig(dir, "cleanup").expect("kubeconfig");
    Command::new(target_binary("gangplank").expect("gangplank"))
        .args([
            "uninstall-wait",
            "--daemonset=kube-system/gp-cleanup",
            &format!("--timeout={timeout}"),
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn finish(child: Child, within: Duration) -> (bool, String) {
    let deadline = Instant::now() + within;
    let mut child = child;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn waits_for_every_node_then_deletes_the_daemonset() {
    let api = FakeApi::start().expect("fake API");
    api.authorize("cleanup", cleanup_rules());
    api.apply(cleanup_ds(1, 3));
    let dir = tempfile::tempdir().expect("tempdir");
    let child = start(&api, dir.path(), 30);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        api.get("DaemonSet", Some("kube-system"), "gp-cleanup")
            .is_some(),
        "deleted before every node was clean"
    );
    api.apply(cleanup_ds(3, 3));
    let (ok, output) = finish(child, Duration::from_secs(20));
    assert!(ok, "{output}");
    assert!(output.contains("1 of 3 nodes clean"), "{output}");
    assert!(output.contains("3 of 3 nodes clean"), "{output}");
    assert!(api
        .get("DaemonSet", Some("kube-system"), "gp-cleanup")
        .is_none());
    assert!(api.refused().is_empty(), "{:?}", api.refused());
}

#[test]
fn gives_up_naming_what_is_left() {
    let api = FakeApi::start().expect("fake API");
    api.authorize("cleanup", cleanup_rules());
    api.apply(cleanup_ds(2, 3));
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, output) = finish(start(&api, dir.path(), 2), Duration::from_secs(20));
    assert!(!ok, "{output}");
    assert!(
        output.contains("not done after 2s: 2 of 3 nodes are clean"),
        "{output}"
    );
    // Removed all the same: left behind, it would keep a privileged pod
    // on every node after the release is gone.
    assert!(api
        .get("DaemonSet", Some("kube-system"), "gp-cleanup")
        .is_none());
}

#[test]
fn a_missing_daemonset_fails_at_once() {
    let api = FakeApi::start().expect("fake API");
    api.authorize("cleanup", cleanup_rules());
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let (ok, output) = finish(start(&api, dir.path(), 30), Duration::from_secs(20));
    assert!(!ok, "{output}");
    assert!(output.contains("does not exist"), "{output}");
    assert!(started.elapsed() < Duration::from_secs(15), "{output}");
}
