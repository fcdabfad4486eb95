//! Upgrades without a gap (docs/upgrades.md): a starting agent takes the
//! running agent's sockets ([`take_over`]); a stopping agent whose pod its
//! DaemonSet is replacing releases the pod, so the successor is created
//! while this agent still serves ([`release_own_pod`]), and hands over.

use std::path::PathBuf;
use std::time::Duration;

use handover::Inherited;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};

use super::config::{AgentConfig, OwnPod, Source};

/// Where a running agent offers its sockets.
pub fn socket(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("handover.sock")
}

/// How long a successor waits for the running agent to finish the queries
/// in hand and hand over.
const TAKE_WITHIN: Duration = Duration::from_secs(15);

/// How long releasing the pod may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// The running agent's sockets, if one runs; none (and a warning) if it
/// does not answer as it should, so this agent binds afresh.
pub(super) async fn take_over(config: &AgentConfig) -> Inherited {
    let path = socket(config);
    let p = path.clone();
    match tokio::task::spawn_blocking(move || handover::take(&p, TAKE_WITHIN)).await {
        Ok(Ok(Some(inherited))) => {
            tracing::info!(
                sockets = inherited.len(),
                "took over the sockets of the running agent"
            );
            inherited
        }
        Ok(Ok(None)) => Inherited::default(),
        Ok(Err(e)) => {
            tracing::warn!(
                socket = %path.display(),
                "no handover from the running agent ({e}); binding new sockets"
            );
            Inherited::default()
        }
        Err(e) => {
            tracing::warn!("the handover task failed ({e}); binding new sockets");
            Inherited::default()
        }
    }
}

/// Whether a successor may come: in Kubernetes mode, if this agent's pod
/// is being deleted while its DaemonSet lives on (a rollout, or the pod
/// deleted by hand), the pod is released from the DaemonSet. The DaemonSet
/// controller counts a terminating pod as still there and, before
/// Kubernetes 1.22, cannot surge: without the release the successor would
/// start only after this agent has exited.
///
/// The release takes the DaemonSet selector's labels off the pod and keeps
/// its owner reference: the controller is told of the change (it follows
/// pods it owns) and releases the pod itself, then creates the successor.
/// (Removing the owner reference instead would go unnoticed: the
/// controller ignores changes to a terminating pod it does not own.) A
/// released pod is still deleted when this agent exits. Anything else (a
/// container restart, the DaemonSet being deleted, local mode): no
/// successor is waited for.
pub(super) async fn release_own_pod(config: &AgentConfig) -> bool {
    let (Some(own), Source::Kube { kubeconfig, .. }) = (&config.own_pod, &config.source) else {
        return false;
    };
    // Bounded: with the API server away the agent must still stop (and
    // save) well inside its grace period.
    let released = tokio::time::timeout(RELEASE_WITHIN, release(kubeconfig.as_deref(), own))
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer from the API server within {RELEASE_WITHIN:?}"
            ))
        });
    match released {
        Ok(Released::Yes { daemonset }) => {
            tracing::info!(
                pod = %own.name,
                %daemonset,
                "released this agent's pod from its DaemonSet: waiting for the successor to take over"
            );
            true
        }
        Ok(Released::No(why)) => {
            tracing::info!(pod = %own.name, "not waiting for a successor: {why}");
            false
        }
        Err(e) => {
            tracing::warn!(pod = %own.name, "could not release this agent's pod for its successor: {e:#}");
            false
        }
    }
}

enum Released {
    Yes { daemonset: String },
    No(&'static str),
}

async fn release(kubeconfig: Option<&std::path::Path>, own: &OwnPod) -> anyhow::Result<Released> {
    let client = crate::kube::client(kubeconfig).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &own.namespace);
    let pod = pods.get(&own.name).await?;
    if pod.metadata.deletion_timestamp.is_none() {
        return Ok(Released::No("the pod is not being deleted"));
    }
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "DaemonSet")
    else {
        return Ok(Released::No("the pod has no DaemonSet"));
    };
    let daemonsets: Api<DaemonSet> = Api::namespaced(client, &own.namespace);
    let ds = match daemonsets.get_opt(&owner.name).await? {
        Some(ds)
            if ds.metadata.deletion_timestamp.is_none()
                && ds.metadata.uid.as_ref() == Some(&owner.uid) =>
        {
            ds
        }
        _ => return Ok(Released::No("its DaemonSet is being deleted")),
    };
    let selector = ds.spec.selector.match_labels.unwrap_or_default();
    if selector.is_empty() {
        return Ok(Released::No(
            "its DaemonSet selects pods by expressions only",
        ));
    }
    // A merge patch's null removes the label.
    let labels: serde_json::Map<String, serde_json::Value> = selector
        .into_keys()
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    pods.patch(&own.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(Released::Yes {
        daemonset: owner.name.clone(),
    })
}
