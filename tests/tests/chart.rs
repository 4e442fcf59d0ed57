//! The Helm chart, rendered as `helm template` would (see
//! `gangplank_tests::chart`) for the default values and four other value
//! sets:
//! - every object passes `kubernetes-validate --strict` (the official
//!   OpenAPI schemas of Kubernetes 1.37);
//! - every value set, and values.yaml itself, passes values.schema.json,
//!   and bad values do not;
//! - every container's arguments are accepted by the binary it runs;
//! - what the chart promises is there: capabilities, mounts, probes,
//!   RBAC, the Service's traffic policy, the clean-up hooks.

use std::path::{Path, PathBuf};
use std::process::Command;

use gangplank_tests::chart::{self, strings, Rendered};
use gangplank_tests::target_binary;
use serde_json::{json, Value};

const RELEASE: &str = "gp";
const NAMESPACE: &str = "kube-system";

/// The project's Python tools (`cargo xtask setup` installs them).
fn venv_bin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/venv/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask setup` (it installs kubernetes-validate)",
        path.display()
    );
    path
}

fn value_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("default", json!({})),
        (
            "everything on",
            json!({
                "k8sServiceHost": "10.0.0.10",
                "k8sServicePort": 6443,
                "imagePullSecrets": ["registry"],
                "image": {"tag": "0.1.0-rc1", "pullPolicy": "Always"},
                "agent": {"privileged": true, "devices": ["eth0", "eth1"], "xdp": "native",
                          "lbMode": "dsr", "extraArgs": ["--health-bind=10.0.0.1"],
                          "nodeSelector": {"kubernetes.io/os": "linux"}, "maxUnavailable": "20%"},
                "ingress": {"replicas": 3, "antiAffinity": "hard", "workers": 4,
                            "ingressClass": {"default": true},
                            "defaultCertificate": "kube-system/default-tls",
                            "trustedProxies": ["10.0.0.0/8", "192.168.0.1"],
                            "accessLog": false,
                            "service": {"annotations": {"example.com/lb": "internal"}},
                            "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]},
                "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            }),
        ),
        (
            "ingress as a DaemonSet behind NodePorts",
            json!({
                "ingress": {"kind": "DaemonSet",
                            "service": {"type": "NodePort", "externalTrafficPolicy": "Cluster",
                                        "nodePorts": {"http": 30080, "https": 30443}}},
                "agent": {"mountBpffs": false},
            }),
        ),
        (
            "agent only, no clean-up",
            json!({"ingress": {"enabled": false}, "cleanup": {"enabled": false}}),
        ),
        (
            "ingress only, one replica",
            json!({"agent": {"enabled": false}, "ingress": {"replicas": 1}}),
        ),
    ]
}

fn render(values: &Value) -> Vec<Rendered> {
    chart::render(RELEASE, NAMESPACE, values).unwrap_or_else(|e| panic!("{e:#}"))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(objects, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    let spec = &workload["spec"]["template"]["spec"];
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

#[test]
fn every_value_set_renders_objects_kubernetes_accepts() {
    let validate = venv_bin("kubernetes-validate");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, values) in value_sets() {
        let objects = chart::objects(&render(&values));
        assert!(!objects.is_empty(), "{name}: nothing rendered");
        // ServiceMonitor is a CRD: no official schema; checked below.
        let (crds, core): (Vec<Value>, Vec<Value>) = objects
            .into_iter()
            .partition(|o| o["apiVersion"] == "monitoring.coreos.com/v1");
        let file = dir.path().join("objects.yaml");
        let text: Vec<String> = core
            .iter()
            .map(|o| serde_yaml::to_string(o).expect("yaml"))
            .collect();
        std::fs::write(&file, text.join("---\n")).expect("write");
        let out = Command::new(&validate)
            .args(["--strict", "--kubernetes-version", "1.37.0", "--quiet"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate");
        assert!(
            out.status.success(),
            "{name}: kubernetes-validate --strict:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for sm in crds {
            assert_eq!(sm["kind"], "ServiceMonitor", "{name}");
            assert!(
                sm["spec"]["selector"]["matchLabels"].is_object(),
                "{name}: {sm}"
            );
            assert_eq!(
                sm["spec"]["endpoints"][0]["port"], "metrics",
                "{name}: {sm}"
            );
        }
    }
}

fn schema_check(values: &Value) -> Result<(), String> {
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
values = json.load(sys.stdin)
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
for e in errors:
    print("/".join(str(p) for p in e.path) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;
    let mut child = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(script)
        .arg(chart::chart_dir().join("values.schema.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(values.to_string().as_bytes())
            .expect("write values");
    }
    let out = child.wait_with_output().expect("python");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn merged(overrides: &Value) -> Value {
    let text =
        std::fs::read_to_string(chart::chart_dir().join("values.yaml")).expect("values.yaml");
    let mut values: Value = serde_yaml::from_str(&text).expect("values.yaml parses");
    chart::merge(&mut values, overrides);
    values
}

#[test]
fn the_schema_accepts_every_value_set_and_rejects_bad_values() {
    for (name, values) in value_sets() {
        schema_check(&merged(&values)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (bad, complaint) in [
        (json!({"agent": {"xdp": "fast"}}), "agent/xdp"),
        (json!({"agent": {"lbMode": "nat"}}), "agent/lbMode"),
        (
            json!({"agent": {"metricsPort": 70000}}),
            "agent/metricsPort",
        ),
        (
            json!({"agent": {"maglevTableSize": "big"}}),
            "agent/maglevTableSize",
        ),
        (
            json!({"agent": {"devices": ["eth0,eth1"]}}),
            "agent/devices/0",
        ),
        (
            json!({"agent": {"cgroupPath": "sys/fs/cgroup"}}),
            "agent/cgroupPath",
        ),
        (json!({"ingress": {"kind": "StatefulSet"}}), "ingress/kind"),
        (json!({"ingress": {"replicas": 0}}), "ingress/replicas"),
        (
            json!({"ingress": {"service": {"type": "ClusterIP"}}}),
            "ingress/service/type",
        ),
        (
            json!({"ingress": {"defaultCertificate": "no-namespace"}}),
            "ingress/defaultCertificate",
        ),
        (
            json!({"ingress": {"replica": 3}}),
            "ingress: Additional properties",
        ),
        (json!({"k8sServicePort": "6443"}), "k8sServicePort"),
        (
            json!({"cleanup": {"timeoutSeconds": 1}}),
            "cleanup/timeoutSeconds",
        ),
    ] {
        let err = schema_check(&merged(&bad)).expect_err(&format!("{bad} must be rejected"));
        assert!(err.contains(complaint), "{bad}: {err}");
    }
}

/// Every key of values.yaml has a comment line right above it (except the
/// insides of Kubernetes objects passed through: resources, selectors,
/// tolerations, annotations, labels).
#[test]
fn every_value_is_commented() {
    let text =
        std::fs::read_to_string(chart::chart_dir().join("values.yaml")).expect("values.yaml");
    let passthrough = [
        "resources:",
        "nodeSelector:",
        "tolerations:",
        "annotations:",
        "labels:",
    ];
    let mut inside: Option<usize> = None;
    let mut previous = "";
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            previous = trimmed;
            continue;
        }
        if let Some(depth) = inside {
            if indent > depth {
                previous = trimmed;
                continue;
            }
            inside = None;
        }
        if trimmed.starts_with('-') {
            previous = trimmed;
            continue;
        }
        assert!(
            previous.starts_with('#'),
            "values.yaml: {trimmed:?} has no comment above it"
        );
        if passthrough.iter().any(|p| trimmed.starts_with(p)) {
            inside = Some(indent);
        }
        previous = trimmed;
    }
}

/// Runs `binary args... --help`: clap checks every argument before it
/// prints the help, so exit 0 means the binary accepts them all.
fn accepts(binary: &str, args: &[String]) -> Result<(), String> {
    let out = Command::new(target_binary(binary).expect("built"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_container_runs_a_command_its_binary_accepts() {
    for (name, values) in value_sets() {
        let objects = chart::objects(&render(&values));
        let mut checked = 0;
        for o in objects
            .iter()
            .filter(|o| o["spec"]["template"]["spec"].is_object())
        {
            let spec = &o["spec"]["template"]["spec"];
            for c in spec["containers"]
                .as_array()
                .into_iter()
                .chain(spec["initContainers"].as_array())
                .flatten()
            {
                // The image's entrypoint is /gangplank.
                let command = strings(&c["command"]);
                let binary = match command.first().map(String::as_str) {
                    None | Some("/gangplank") => "gangplank",
                    Some("/gangplank-ingress") => "gangplank-ingress",
                    Some(other) => panic!("{name}: {} runs {other}", c["name"]),
                };
                let args: Vec<String> = command
                    .iter()
                    .skip(1)
                    .cloned()
                    .chain(strings(&c["args"]))
                    .collect();
                accepts(binary, &args)
                    .unwrap_or_else(|e| panic!("{name}: {} {args:?}: {e}", c["name"]));
                checked += 1;
            }
        }
        assert!(checked >= 1, "{name}: {checked} containers");
    }
    // The check can fail: a value the binary does not know.
    assert!(accepts("gangplank", &["agent".into(), "--xdp=fast".into()]).is_err());
    assert!(accepts("gangplank-ingress", &["--workers=many".into()]).is_err());
}

#[test]
fn the_agent_runs_on_every_node_with_only_the_capabilities_it_needs() {
    let objects = chart::objects(&render(&json!({})));
    let ds = get(&objects, "DaemonSet", "gp-agent");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    // Not cluster DNS: it is a Service, served only once the agent runs.
    assert_eq!(spec["dnsPolicy"], "Default");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let agent = container(ds, "agent");
    assert_eq!(agent["securityContext"]["privileged"], Value::Null);
    assert_eq!(
        agent["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"]})
    );
    // Pins live below /sys/fs, which default AppArmor profiles deny.
    assert_eq!(
        agent["securityContext"]["appArmorProfile"],
        json!({"type": "Unconfined"})
    );
    assert_eq!(agent["env"][0]["name"], "NODE_NAME");
    assert_eq!(
        agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args = strings(&agent["args"]);
    assert!(
        args.contains(&"--metrics-addr=0.0.0.0:9962".to_string()),
        "{args:?}"
    );
    // The host's bpffs and cgroup2, where the agent's flags point.
    let mounts = &agent["volumeMounts"];
    assert_eq!(mounts[0]["mountPath"], "/sys/fs/bpf");
    assert!(args.contains(&"--bpffs=/sys/fs/bpf/gangplank".to_string()));
    assert_eq!(mounts[1]["mountPath"], "/run/gangplank/cgroupv2");
    assert!(args.contains(&"--cgroup=/run/gangplank/cgroupv2".to_string()));
    let volumes = &spec["volumes"];
    assert_eq!(volumes[0]["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(volumes[1]["hostPath"]["path"], "/sys/fs/cgroup");
    // Bidirectional propagation only where Kubernetes allows it: in a
    // privileged container.
    for o in &objects {
        let spec = &o["spec"]["template"]["spec"];
        for c in spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten()
        {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                if m["mountPropagation"] == "Bidirectional" {
                    assert_eq!(c["securityContext"]["privileged"], true, "{c}");
                }
            }
        }
    }
    let init = container(ds, "mount-bpffs");
    assert_eq!(init["volumeMounts"][0]["mountPropagation"], "Bidirectional");
    assert!(agent["env"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| e["name"] != "KUBERNETES_SERVICE_HOST"));

    // Privileged when asked, and the API server reached directly.
    let objects = chart::objects(&render(&json!({
        "agent": {"privileged": true}, "k8sServiceHost": "10.0.0.10", "k8sServicePort": 6443})));
    let agent = container(get(&objects, "DaemonSet", "gp-agent"), "agent");
    assert_eq!(agent["securityContext"], json!({"privileged": true}));
    assert_eq!(
        agent["volumeMounts"][0]["mountPropagation"],
        "Bidirectional"
    );
    let env = &agent["env"];
    assert!(env
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e == &json!({"name": "KUBERNETES_SERVICE_HOST", "value": "10.0.0.10"})));
    assert!(env
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e == &json!({"name": "KUBERNETES_SERVICE_PORT", "value": "6443"})));
}

#[test]
fn the_ingress_keeps_client_addresses_and_survives_disruptions() {
    let objects = chart::objects(&render(&json!({})));
    let svc = get(&objects, "Service", "gp-ingress");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    let deploy = get(&objects, "Deployment", "gp-ingress");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert!(
        deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    let pdb = get(&objects, "PodDisruptionBudget", "gp-ingress");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let class = get(&objects, "IngressClass", "gangplank");
    assert_eq!(class["spec"]["controller"], "gangplank.io/ingress");
    assert_eq!(class["metadata"]["annotations"], Value::Null);
    let ingress = container(deploy, "ingress");
    let args = strings(&ingress["args"]);
    for want in [
        "--publish-service=kube-system/gp-ingress",
        "--ingress-class=gangplank",
        "--election-id=gp-ingress-leader",
    ] {
        assert!(args.contains(&want.to_string()), "{want} missing: {args:?}");
    }
    assert_eq!(
        deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        35
    );

    // One replica: no PodDisruptionBudget (it would block every drain).
    let objects = chart::objects(&render(&json!({"ingress": {"replicas": 1}})));
    assert!(find(&objects, "PodDisruptionBudget", "gp-ingress").is_none());
    // A DaemonSet behind NodePorts, the default class.
    let objects = chart::objects(&render(&json!({"ingress": {
        "kind": "DaemonSet", "ingressClass": {"default": true},
        "service": {"type": "NodePort", "nodePorts": {"http": 30080, "https": 30443}}}})));
    assert!(find(&objects, "Deployment", "gp-ingress").is_none());
    assert!(find(&objects, "PodDisruptionBudget", "gp-ingress").is_none());
    get(&objects, "DaemonSet", "gp-ingress");
    let svc = get(&objects, "Service", "gp-ingress");
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30443);
    let class = get(&objects, "IngressClass", "gangplank");
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );
}

/// The rules of a (Cluster)Role as (group, resource, verbs, names) rows.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let mut verbs = strings(&rule["verbs"]);
                verbs.sort();
                out.push((
                    group.clone(),
                    resource,
                    verbs,
                    strings(&rule["resourceNames"]),
                ));
            }
        }
    }
    out.sort();
    out
}

fn row(
    group: &str,
    resource: &str,
    verbs: &[&str],
    names: &[&str],
) -> (String, String, Vec<String>, Vec<String>) {
    (
        group.into(),
        resource.into(),
        verbs.iter().map(|s| s.to_string()).collect(),
        names.iter().map(|s| s.to_string()).collect(),
    )
}

/// Least privilege, exactly: the cluster-mode tests (cluster_mode.rs,
/// ingress_cluster.rs, uninstall_wait.rs) run with these rules and show
/// they are enough.
#[test]
fn rbac_grants_exactly_what_each_binary_follows() {
    let objects = chart::objects(&render(&json!({})));
    let mut agent = vec![
        row("", "nodes", &["list", "watch"], &[]),
        row("", "services", &["list", "watch"], &[]),
        row(
            "discovery.k8s.io",
            "endpointslices",
            &["list", "watch"],
            &[],
        ),
    ];
    agent.sort();
    assert_eq!(rules(get(&objects, "ClusterRole", "gp-agent")), agent);
    let mut ingress = vec![
        row("", "secrets", &["list", "watch"], &[]),
        row("", "services", &["list", "watch"], &[]),
        row(
            "discovery.k8s.io",
            "endpointslices",
            &["list", "watch"],
            &[],
        ),
        row(
            "networking.k8s.io",
            "ingressclasses",
            &["list", "watch"],
            &[],
        ),
        row(
            "networking.k8s.io",
            "ingresses",
            &["get", "list", "watch"],
            &[],
        ),
        row("networking.k8s.io", "ingresses/status", &["update"], &[]),
    ];
    ingress.sort();
    assert_eq!(rules(get(&objects, "ClusterRole", "gp-ingress")), ingress);
    let leader = get(&objects, "Role", "gp-ingress-leader");
    assert_eq!(leader["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        rules(leader),
        vec![
            row("coordination.k8s.io", "leases", &["create"], &[]),
            row(
                "coordination.k8s.io",
                "leases",
                &["get", "update"],
                &["gp-ingress-leader"]
            ),
        ]
    );
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in ["ClusterRole", "Role"] {
        let n = kinds.iter().filter(|k| **k == kind).count();
        // agent + ingress ClusterRoles; leader + clean-up Roles.
        assert_eq!(n, 2, "{kind}: {kinds:?}");
    }
    let cleanup = get(&objects, "Role", "gp-cleanup");
    assert_eq!(
        rules(cleanup),
        vec![row(
            "apps",
            "daemonsets",
            &["delete", "get"],
            &["gp-cleanup"]
        )]
    );
}

#[test]
fn uninstall_cleans_every_node_through_post_delete_hooks() {
    let objects = chart::objects(&render(&json!({"k8sServiceHost": "10.0.0.10"})));
    let ds = get(&objects, "DaemonSet", "gp-cleanup");
    let job = get(&objects, "Job", "gp-cleanup");
    let weight = |o: &Value| -> i64 {
        o["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .expect("hook weight")
    };
    for o in [ds, job] {
        assert_eq!(o["metadata"]["annotations"]["helm.sh/hook"], "post-delete");
    }
    // The DaemonSet first; Helm waits for the Job, which deletes it.
    assert!(weight(ds) < weight(job));
    assert_eq!(
        ds["metadata"]["annotations"]["helm.sh/hook-delete-policy"],
        "before-hook-creation,hook-succeeded"
    );
    // Runs anywhere, and its log outlives it for a while.
    assert_eq!(
        job["spec"]["template"]["spec"]["tolerations"],
        json!([{"operator": "Exists"}])
    );
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
    assert_eq!(
        strings(&container(ds, "uninstall")["args"]),
        [
            "uninstall",
            "--bpffs=/sys/fs/bpf/gangplank",
            "--cgroup=/run/gangplank/cgroupv2"
        ]
    );
    // Same nodes, same host paths as the agent.
    let agent = get(&objects, "DaemonSet", "gp-agent");
    for key in ["tolerations", "volumes"] {
        assert_eq!(
            ds["spec"]["template"]["spec"][key], agent["spec"]["template"]["spec"][key],
            "{key}"
        );
    }
    let wait = container(job, "wait");
    assert_eq!(
        strings(&wait["args"]),
        [
            "uninstall-wait",
            "--daemonset=kube-system/gp-cleanup",
            "--timeout=240"
        ]
    );
    // No agent, no `kubernetes` ClusterIP: the Job reaches the API server
    // directly.
    assert_eq!(job["spec"]["template"]["spec"]["hostNetwork"], true);
    assert_eq!(job["spec"]["template"]["spec"]["dnsPolicy"], "Default");
    // Off: nothing of it.
    let objects = chart::objects(&render(&json!({"cleanup": {"enabled": false}})));
    assert!(objects
        .iter()
        .all(|o| o["metadata"]["name"] != "gp-cleanup"));
}

#[test]
fn notes_tell_how_to_check_it_works() {
    let rendered = render(&json!({}));
    let notes = rendered
        .iter()
        .find(|r| r.template == "templates/NOTES.txt")
        .expect("NOTES.txt");
    assert!(
        notes.text.contains("rollout status daemonset/gp-agent"),
        "{}",
        notes.text
    );
    assert!(
        notes.text.contains("/gangplank service list"),
        "{}",
        notes.text
    );
    assert!(notes.text.contains("set k8sServiceHost"), "{}", notes.text);
    let rendered = render(&json!({"k8sServiceHost": "10.0.0.10"}));
    let notes = rendered
        .iter()
        .find(|r| r.template == "templates/NOTES.txt")
        .expect("NOTES.txt");
    assert!(!notes.text.contains("set k8sServiceHost"), "{}", notes.text);
}
