//! Deterministic synthetic manifests (Services + EndpointSlices) for tests and benchmarks.
//!
//! Objects look like `kubectl get -o yaml` output of a real cluster, including
//! the fields we ignore, so parse timings are realistic.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

/// How a synthetic cluster is laid out on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One `cluster.yaml` holding every object.
    OneFile,
    /// One file per object: `svc-N.yaml` and `svc-N-slice.yaml`.
    FilePerObject,
}

/// The cluster IP of synthetic Service `i` (10.96.0.0/12, one per Service).
pub fn cluster_ip(i: usize) -> String {
    let n = i + 1;
    format!("10.{}.{}.{}", 96 + n / 65_536, (n / 256) % 256, n % 256)
}

/// The namespace of synthetic Service `i`.
pub fn namespace(i: usize) -> String {
    format!("ns-{}", i % 100)
}

/// The YAML of synthetic Service `i` (port `http` 80 → targetPort `http`).
pub fn service_yaml(i: usize) -> String {
    let ns = namespace(i);
    let ip = cluster_ip(i);
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: svc-{i}
  namespace: {ns}
  uid: 5a1c3e4f-0000-4000-8000-{i:012}
  resourceVersion: \"{rv}\"
  creationTimestamp: \"2024-05-01T10:00:00Z\"
  labels:
    app.kubernetes.io/name: svc-{i}
    app.kubernetes.io/part-of: bench
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"svc-{i}\",\"namespace\":\"{ns}\"}},\"spec\":{{\"ports\":[{{\"name\":\"http\",\"port\":80,\"targetPort\":\"http\"}}],\"selector\":{{\"app\":\"svc-{i}\"}}}}}}
spec:
  type: ClusterIP
  clusterIP: {ip}
  clusterIPs:
  - {ip}
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
  selector:
    app: svc-{i}
  sessionAffinity: None
status:
  loadBalancer: {{}}
",
        rv = 1000 + i
    )
}

/// The YAML of the EndpointSlice of synthetic Service `i`, with `endpoints`
/// ready endpoints (10.(128+)…, port 8080 named `http`).
pub fn slice_yaml(i: usize, endpoints: usize) -> String {
    let ns = namespace(i);
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i}-x7k2p
  namespace: {ns}
  generateName: svc-{i}-
  uid: 6b2d4f5a-0000-4000-8000-{i:012}
  resourceVersion: \"{rv}\"
  creationTimestamp: \"2024-05-01T10:00:01Z\"
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: svc-{i}
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: svc-{i}
    uid: 5a1c3e4f-0000-4000-8000-{i:012}
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
",
        rv = 2000 + i
    );
    for e in 0..endpoints {
        let n = i * endpoints + e;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "- addresses:
  - 10.{}.{}.{}
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node-{}
  zone: zone-{}
  targetRef:
    kind: Pod
    name: svc-{i}-pod-{e}
    namespace: {ns}
    uid: 7c3e5a6b-0000-4000-8000-{n:012}
",
            128 + (n / 65_536) % 64,
            (n / 256) % 256,
            n % 256,
            n % 50,
            n % 3
        );
    }
    out
}

/// All `services` Services and their slices as one multi-document YAML stream.
pub fn cluster_yaml(services: usize, endpoints: usize) -> String {
    let mut out = String::new();
    for i in 0..services {
        out.push_str("---\n");
        out.push_str(&service_yaml(i));
        out.push_str("---\n");
        out.push_str(&slice_yaml(i, endpoints));
    }
    out
}

/// Writes a synthetic cluster of `services` Services with `endpoints`
/// endpoints each into `dir` (which must exist).
pub fn write_cluster(
    dir: &Path,
    services: usize,
    endpoints: usize,
    layout: Layout,
) -> io::Result<()> {
    match layout {
        Layout::OneFile => fs::write(dir.join("cluster.yaml"), cluster_yaml(services, endpoints)),
        Layout::FilePerObject => {
            for i in 0..services {
                fs::write(dir.join(format!("svc-{i}.yaml")), service_yaml(i))?;
                fs::write(
                    dir.join(format!("svc-{i}-slice.yaml")),
                    slice_yaml(i, endpoints),
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{parse_manifest, Object};

    #[test]
    fn synthetic_objects_parse_cleanly() {
        let text = cluster_yaml(3, 4);
        let parsed = parse_manifest(Path::new("c.yaml"), &text, &["Service", "EndpointSlice"]);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 6);
        let Object::EndpointSlice(slice) = &parsed.objects[5] else {
            panic!("not a slice")
        };
        assert_eq!(slice.endpoints.len(), 4);
        assert_eq!(cluster_ip(0), "10.96.0.1");
        assert_eq!(cluster_ip(65_535), "10.97.0.0");
    }
}
