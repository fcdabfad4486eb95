//! Kubernetes as a source of the same model local mode reads from files:
//! CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies become checked
//! policies (an invalid object is reported and the others stay), pods with
//! an IP become endpoints, namespaces bring their labels, nodes their
//! addresses (this node is `host`, the others `remote-node`).
//!
//! This is the listing half of Kubernetes mode; the watch loop and the
//! agent's use of it come next.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use policy::inventory::{EndpointSpec, InventoryFile, NamespaceSpec, NodeSpec};
use policy::load::{Diagnostic, Severity};
use policy::{EndpointKey, Policy};

/// The cluster as Tollgate sees it at one moment.
#[derive(Debug, Default)]
pub struct ClusterSnapshot {
    /// Every valid policy object.
    pub policies: Vec<Policy>,
    /// One entry per invalid object (the others are unaffected).
    pub diagnostics: Vec<Diagnostic>,
    pub inventory: InventoryFile,
    /// Pods running on this node (not hostNetwork): the local endpoints.
    pub local: Vec<EndpointKey>,
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading the kubeconfig")?;
    Client::try_from(config).context("creating the Kubernetes client")
}

fn policy_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cilium.io", "v2", kind), plural)
}

/// Lists everything and builds the snapshot for node `node`.
pub async fn snapshot(client: &Client, node: &str) -> anyhow::Result<ClusterSnapshot> {
    let mut out = ClusterSnapshot::default();
    let lp = ListParams::default();
    for (kind, plural) in [
        ("CiliumNetworkPolicy", "ciliumnetworkpolicies"),
        (
            "CiliumClusterwideNetworkPolicy",
            "ciliumclusterwidenetworkpolicies",
        ),
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &policy_resource(kind, plural));
        for object in api
            .list(&lp)
            .await
            .with_context(|| format!("listing {plural}"))?
        {
            let label = match (&object.metadata.namespace, &object.metadata.name) {
                (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
                (None, Some(n)) => format!("{kind} {n}"),
                _ => kind.to_string(),
            };
            let mut value = serde_json::to_value(&object).context("serializing a policy object")?;
            // DynamicObject omits apiVersion/kind when listed; put them back.
            value["apiVersion"] = "cilium.io/v2".into();
            value["kind"] = kind.into();
            match serde_path_to_error::deserialize::<_, policy::model::PolicyObject>(value) {
                Err(e) => out.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: None,
                    policy: Some(label),
                    field: e.path().to_string(),
                    message: e.inner().to_string(),
                }),
                Ok(obj) => {
                    let (policy, diagnostics) = policy::validate::validate_object(&obj, &label);
                    out.diagnostics.extend(diagnostics);
                    out.policies.extend(policy);
                }
            }
        }
    }

    for ns in Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("listing namespaces")?
    {
        out.inventory.namespaces.push(NamespaceSpec {
            name: ns.metadata.name.unwrap_or_default(),
            labels: ns.metadata.labels.unwrap_or_default(),
        });
    }
    for n in Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .context("listing nodes")?
    {
        let name = n.metadata.name.unwrap_or_default();
        let ips = n
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        out.inventory.nodes.push(NodeSpec {
            local: name == node,
            name,
            ips,
        });
    }
    for pod in Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .context("listing pods")?
    {
        let spec = pod.spec.unwrap_or_default();
        if spec.host_network == Some(true) {
            continue; // the node's identity, not a pod's
        }
        let status = pod.status.unwrap_or_default();
        let mut ips: Vec<std::net::IpAddr> = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            continue; // not scheduled or not networked yet
        }
        let namespace = pod.metadata.namespace.unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.unwrap_or_default();
        if spec.node_name.as_deref() == Some(node) {
            out.local.push(EndpointKey {
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
        out.inventory.endpoints.push(EndpointSpec {
            name,
            namespace,
            labels: pod.metadata.labels.unwrap_or_default(),
            ips,
            audit: false,
            interface: None,
        });
    }
    Ok(out)
}
