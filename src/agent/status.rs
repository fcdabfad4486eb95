//! The node's status on `status.sock`: each connection gets one report
//! (JSON) and is closed. Built from what the agent already holds: the node
//! (policy in force, cache, maps), its counters and the status board.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use egress_bpf::Datapath;
use tokio::io::AsyncWriteExt;

use super::config::{AgentConfig, Source};
use super::metrics::{unix_now, AgentMetrics};
use crate::node::Node;
use crate::status::{self, LocalEndpoint, MapFill, Reload, Report};

/// Binds the status socket at `path` (replacing a stale one), root only:
/// the report names pods and what they were denied.
pub(crate) fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the status socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting the status socket {}", path.display()))?;
    Ok(listener)
}

/// Answers every connection with a fresh report.
pub(super) async fn serve<D: Datapath>(
    listener: tokio::net::UnixListener,
    config: AgentConfig,
    node: Arc<Node<D>>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let report = report(&config, &node, &metrics);
        let text = serde_json::to_string(&report)? + "\n";
        // One slow reader does not hold the next one up.
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.write_all(text.as_bytes())).await;
        });
    }
}

/// The report, now.
pub(super) fn report<D: Datapath>(
    config: &AgentConfig,
    node: &Node<D>,
    metrics: &AgentMetrics,
) -> Report {
    let policy = node.policy();
    let per_pod = node.inspect(|_, cache| {
        let mut n = std::collections::BTreeMap::<String, usize>::new();
        for (key, _) in cache.full_state().keys() {
            *n.entry(key.to_string()).or_default() += 1;
        }
        n
    });
    let endpoints = policy
        .interfaces
        .iter()
        .map(|(key, (ifindex, interface))| {
            let resolved = policy.resolved().endpoint(key);
            let e = policy.inventory().endpoint(key);
            LocalEndpoint {
                pod: key.to_string(),
                interface: interface.clone(),
                ifindex: *ifindex,
                identity: e.map(|e| e.identity.0).unwrap_or(0),
                audit: resolved.map(|r| r.audit).unwrap_or(false),
                ingress_enforced: resolved.is_some_and(|r| r.ingress.enforced),
                egress_enforced: resolved.is_some_and(|r| r.egress.enforced),
                fqdn_addresses: per_pod.get(&key.to_string()).copied().unwrap_or(0),
            }
        })
        .collect();
    let (_, (names, addresses)) = node.cache_stats();
    let last_reload = metrics
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|r| Reload {
            at: r.at,
            ok: r.ok,
            errors: r.errors.clone(),
        });
    Report {
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: metrics.started.load(Ordering::Relaxed),
        now: unix_now(),
        source: match &config.source {
            Source::Files {
                policies,
                endpoints,
            } => status::Source::Files {
                policies: policies.display().to_string(),
                endpoints: endpoints.display().to_string(),
            },
            Source::Kube { node, .. } => status::Source::Kubernetes { node: node.clone() },
        },
        last_reload,
        policies: metrics.board.policies(),
        endpoints,
        names_learned: names,
        addresses_learned: addresses,
        maps: node
            .map_fill()
            .into_iter()
            .map(|(map, entries, capacity)| MapFill {
                map: map.into(),
                entries,
                capacity,
            })
            .collect(),
        write_errors: node.write_errors(),
        counters: node
            .datapath_counters()
            .map(|c| c.0.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .unwrap_or_default(),
        recent_drops: metrics.board.recent_drops(),
    }
}
