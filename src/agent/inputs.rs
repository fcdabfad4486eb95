//! Where policies and endpoints come from — the agent's one seam for its
//! inputs: files (polled fingerprints) or the API server (a reflector per
//! kind; a change, or a tick looking for new pods' veths, builds a
//! snapshot). Both yield a policy list and an [`Inventory`]; everything
//! after that is the same code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use policy::inventory::{InventoryFile, InventoryMemory};
use policy::Inventory;

use super::config::{AgentConfig, Source};

/// Policies and endpoints as one consistent input, from either source.
pub(super) struct Input {
    pub policies: Vec<Arc<policy::Policy>>,
    pub inventory: Inventory,
}

fn load_files(policies: &Path, endpoints: &Path, cluster: &str) -> Result<Input, Vec<String>> {
    let report = policy::load_paths(&[policies]);
    for w in report.warnings() {
        tracing::warn!("{w}");
    }
    if report.has_errors() {
        return Err(report.errors().map(|d| d.to_string()).collect());
    }
    let inventory =
        Inventory::load_in_cluster(endpoints, cluster).map_err(|e| vec![e.to_string()])?;
    Ok(Input {
        policies: report.policies.into_iter().map(Arc::new).collect(),
        inventory,
    })
}

/// The source, with what is needed to tell when it changed.
pub(super) enum Inputs {
    Files {
        policies: PathBuf,
        endpoints: PathBuf,
        interval: Duration,
        last: Vec<(PathBuf, u64, Option<SystemTime>)>,
        cluster: String,
    },
    Kube {
        watch: Box<crate::kube::ClusterWatch>,
        interval: Duration,
        /// The cluster as last read from the watch caches; a tick (looking
        /// for new pods' veths) reuses it rather than rebuilding it.
        cluster: Box<crate::kube::ClusterSnapshot>,
        /// What was last handed out, to skip no-op reloads.
        last: Option<(Vec<Arc<policy::Policy>>, InventoryFile)>,
        /// What building the last inventory derived per unchanged pod.
        memory: Box<InventoryMemory>,
    },
}

impl Inputs {
    pub(super) async fn open(config: &AgentConfig) -> anyhow::Result<Self> {
        Ok(match &config.source {
            Source::Files {
                policies,
                endpoints,
            } => Inputs::Files {
                policies: policies.clone(),
                endpoints: endpoints.clone(),
                interval: config.reload_interval,
                last: Vec::new(),
                cluster: config.cluster_name.clone(),
            },
            Source::Kube { kubeconfig, node } => {
                let client = crate::kube::watch_client(kubeconfig.as_deref()).await?;
                let watch =
                    crate::kube::ClusterWatch::start(client, node, &config.cluster_name).await;
                tracing::info!(node = %node, "waiting for the first list of policies, pods, namespaces and nodes");
                let mut waited = 0u64;
                // One wait across the reminders: made anew each time, its
                // optional kinds' 10 s grace would start over and race
                // the 10 s reminder.
                {
                    let synced = watch.synced();
                    tokio::pin!(synced);
                    loop {
                        tokio::select! {
                            _ = &mut synced => break,
                            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                                waited += 10;
                                tracing::warn!("still waiting for the API server after {waited} s");
                            }
                        }
                    }
                }
                let mut watch = Box::new(watch);
                Inputs::Kube {
                    cluster: Box::new(watch.snapshot()),
                    watch,
                    interval: config.reload_interval,
                    last: None,
                    memory: Box::default(),
                }
            }
        })
    }

    /// The current input.
    pub(super) fn current(&mut self) -> Result<Input, Vec<String>> {
        match self {
            Inputs::Files {
                policies,
                endpoints,
                last,
                cluster,
                ..
            } => {
                *last = fingerprint(policies, endpoints);
                load_files(policies, endpoints, cluster)
            }
            Inputs::Kube {
                cluster,
                last,
                memory,
                ..
            } => {
                let now = with_local_interfaces(cluster);
                *last = Some(now.clone());
                kube_input(now, memory)
            }
        }
    }

    /// Waits until the input differs from the last one handed out.
    pub(super) async fn next(&mut self) -> Result<Input, Vec<String>> {
        loop {
            match self {
                Inputs::Files {
                    policies,
                    endpoints,
                    interval,
                    last,
                    ..
                } => {
                    tokio::time::sleep(*interval).await;
                    if fingerprint(policies, endpoints) == *last {
                        continue;
                    }
                }
                Inputs::Kube {
                    watch,
                    interval,
                    cluster,
                    last,
                    memory,
                } => {
                    // A change, or a tick: a pod's veth may have appeared.
                    let started;
                    tokio::select! {
                        _ = watch.changed() => {
                            // Let a burst (a relist, kubectl apply -f dir) settle.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            started = std::time::Instant::now();
                            **cluster = watch.snapshot();
                        }
                        _ = tokio::time::sleep(*interval * 4) => started = std::time::Instant::now(),
                    }
                    let snapshot = started.elapsed();
                    let now = with_local_interfaces(cluster);
                    if last.as_ref().is_some_and(|last| same_input(last, &now)) {
                        continue;
                    }
                    *last = Some(now.clone());
                    let compared = started.elapsed();
                    let input = kube_input(now, memory);
                    tracing::debug!(
                        snapshot_ms = snapshot.as_millis() as u64,
                        compare_ms = (compared - snapshot).as_millis() as u64,
                        inventory_ms = (started.elapsed() - compared).as_millis() as u64,
                        "cluster input"
                    );
                    return input;
                }
            }
            return self.current();
        }
    }
}

fn kube_input(
    (policies, spec): (Vec<Arc<policy::Policy>>, InventoryFile),
    memory: &mut InventoryMemory,
) -> Result<Input, Vec<String>> {
    let inventory = Inventory::from_spec_with(spec, memory).map_err(|e| vec![e])?;
    Ok(Input {
        policies,
        inventory,
    })
}

/// Policies and endpoints from the cluster; local pods get the veth their
/// IP is routed through (a pod whose route is not there yet is remote
/// until it is).
fn with_local_interfaces(
    cluster: &crate::kube::ClusterSnapshot,
) -> (Vec<Arc<policy::Policy>>, InventoryFile) {
    let mut inventory = cluster.inventory.clone();
    let routes = crate::routes::read();
    // The snapshot's endpoints are sorted by namespace and name.
    for k in &cluster.local {
        let at = inventory
            .endpoints
            .binary_search_by(|e| (&e.namespace, &e.name).cmp(&(&k.namespace, &k.name)));
        if let Ok(at) = at {
            let e = &mut inventory.endpoints[at];
            let interface = crate::routes::interface_for(&routes, &e.ips);
            if e.interface != interface {
                Arc::make_mut(e).interface = interface;
            }
        }
    }
    (cluster.policies.clone(), inventory)
}

/// Whether two inputs are the same: a policy or endpoint still shared
/// with the last input is not compared field by field.
fn same_input(
    (a_policies, a_spec): &(Vec<Arc<policy::Policy>>, InventoryFile),
    (b_policies, b_spec): &(Vec<Arc<policy::Policy>>, InventoryFile),
) -> bool {
    a_policies.len() == b_policies.len()
        && a_policies
            .iter()
            .zip(b_policies)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
        && a_spec == b_spec
}

/// Fingerprint of the input files (names, sizes, modification times).
fn fingerprint(policies: &Path, endpoints: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = policy::load::policy_files(policies).unwrap_or_default();
    files.push(endpoints.to_path_buf());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = meta.and_then(|m| m.modified().ok());
            (f, len, modified)
        })
        .collect()
}

impl Inputs {
    /// Kubernetes mode: the watches' counters, for /metrics.
    pub(super) fn kube_stats(&self) -> Option<std::sync::Arc<crate::kube::WatchStats>> {
        match self {
            Inputs::Kube { watch, .. } => Some(watch.stats.clone()),
            Inputs::Files { .. } => None,
        }
    }
}
