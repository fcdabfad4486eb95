//! What the watch caches keep of each object: only the fields the agent
//! reads. A reflector holds every object of its kind for as long as the
//! agent runs; a pod as the API server sends it (managed fields, the
//! containers' images, env and volumes, conditions, container statuses) is
//! several kilobytes, a node (its images list) tens, and on a 50,000-pod
//! cluster the full objects were most of the agent's memory. Each object is
//! trimmed as it arrives, before the store takes it.
//!
//! Whatever [`crate::kube`] reads of an object must survive here: the
//! tests at the end build the snapshot from trimmed and untrimmed objects
//! and compare.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use kube::api::{DynamicObject, ObjectMeta};

/// Drops what the agent never reads of a watched object.
pub trait Slim {
    fn slim(&mut self);
}

/// `kubectl apply`'s copy of the whole object: large, and never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

impl Slim for Pod {
    /// Kept: metadata (name, namespace, labels, timestamps, uid, version),
    /// `hostNetwork`, `nodeName`, the service account, the containers'
    /// ports; the phase and the addresses.
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.metadata.annotations = None;
        if let Some(spec) = self.spec.take() {
            self.spec = Some(PodSpec {
                host_network: spec.host_network,
                node_name: spec.node_name,
                service_account_name: spec.service_account_name,
                service_account: spec.service_account,
                containers: spec
                    .containers
                    .into_iter()
                    .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
                    .map(|c| Container {
                        name: c.name,
                        ports: c.ports.map(|ports| {
                            ports
                                .into_iter()
                                .map(|p| ContainerPort {
                                    name: p.name,
                                    container_port: p.container_port,
                                    protocol: p.protocol,
                                    ..ContainerPort::default()
                                })
                                .collect()
                        }),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            });
        }
        if let Some(status) = self.status.take() {
            self.status = Some(PodStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                pod_ips: status.pod_ips,
                ..PodStatus::default()
            });
        }
    }
}

impl Slim for Node {
    /// Kept: metadata and the addresses.
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.metadata.annotations = None;
        self.spec = None;
        if let Some(status) = self.status.take() {
            self.status = Some(NodeStatus {
                addresses: status.addresses,
                ..NodeStatus::default()
            });
        }
    }
}

impl Slim for Namespace {
    /// Kept: metadata (the labels are what matters).
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.metadata.annotations = None;
        self.spec = None;
        self.status = None;
    }
}

impl Slim for Service {
    /// Kept: everything but bookkeeping (the spec is what is read).
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        self.metadata.annotations = None;
        self.status = None;
    }
}

impl Slim for DynamicObject {
    /// Policies and EndpointSlices: the body is read whole; annotations
    /// other than `kubectl apply`'s copy stay (a policy's are part of it).
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "prod", "uid": "u1",
                "resourceVersion": "7", "labels": {"app": "web"},
                "annotations": {"note": "x", LAST_APPLIED: "{...}"},
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"nodeName": "node-a", "serviceAccountName": "web", "hostNetwork": false,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [
                    {"name": "app", "image": "example.test/app", "env": [{"name": "A", "value": "1"}],
                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 80}]},
                    {"name": "sidecar", "image": "example.test/sidecar"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "d", "ready": true, "restartCount": 0}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_trimmed_pod_keeps_what_the_snapshot_reads_and_nothing_else() {
        let mut p = pod();
        p.slim();
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(p.metadata.uid.as_deref(), Some("u1"));
        assert!(p.metadata.creation_timestamp.is_some());
        assert!(p.metadata.managed_fields.is_none());
        assert!(p.metadata.annotations.is_none());
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        assert_eq!(spec.host_network, Some(false));
        assert!(spec.volumes.is_none());
        assert_eq!(spec.containers.len(), 1, "containers without ports go");
        let port = &spec.containers[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (
                port.name.as_deref(),
                port.container_port,
                port.protocol.as_deref()
            ),
            (Some("http"), 8080, Some("TCP"))
        );
        assert!(port.host_port.is_none());
        assert!(spec.containers[0].image.is_none());
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ips.as_ref().unwrap().len(), 1);
        assert!(status.conditions.is_none() && status.container_statuses.is_none());
        // Smaller by far, which is the point.
        let before = serde_json::to_vec(&pod()).unwrap().len();
        let after = serde_json::to_vec(&p).unwrap().len();
        assert!(after * 2 < before, "{after} of {before} bytes");
    }

    #[test]
    fn a_policys_own_annotations_stay_only_kubectls_copy_goes() {
        let mut o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "prod",
                "annotations": {"team": "payments", LAST_APPLIED: "{...}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"endpointSelector": {}}
        }))
        .unwrap();
        o.slim();
        let annotations = o.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["team"], "payments");
        assert!(o.metadata.managed_fields.is_none());
        assert_eq!(o.data["spec"], serde_json::json!({"endpointSelector": {}}));
    }
}
