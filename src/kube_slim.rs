//! What the watch caches keep of each object: only the fields the agent
//! reads. A reflector holds every object of its kind for as long as the
//! agent runs; a node as the API server sends it (its images list) is tens
//! of kilobytes, an object applied with `kubectl` carries managed fields
//! and a copy of itself. Each object is trimmed as it arrives, before the
//! store takes it. (Pods and policy objects are not cached as objects at
//! all: [`crate::kube_pods`], [`crate::kube_policies`].)
//!
//! Whatever [`crate::kube`] reads of an object must survive here: the
//! tests at the end build the snapshot from trimmed and untrimmed objects
//! and compare.

use k8s_openapi::api::core::v1::{Namespace, Node, NodeStatus, Service};
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
    /// EndpointSlices: the body is read whole; annotations other than
    /// `kubectl apply`'s copy stay.
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_own_annotations_stay_only_kubectls_copy_goes() {
        let mut o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "prod",
                "annotations": {"team": "payments", LAST_APPLIED: "{...}"},
                "managedFields": [{"manager": "kubectl"}]},
            "addressType": "IPv4"
        }))
        .unwrap();
        o.slim();
        let annotations = o.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["team"], "payments");
        assert!(o.metadata.managed_fields.is_none());
        assert_eq!(o.data["addressType"], "IPv4");
    }
}
