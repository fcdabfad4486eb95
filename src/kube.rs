//! Kubernetes as a source of the same model local mode reads from files:
//! CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies and Kubernetes
//! NetworkPolicies become checked policies (CiliumCIDRGroups filled into
//! the rules that reference them), pods with an IP become endpoints (with
//! Cilium's service-account and cluster identity labels, and their named
//! container ports), namespaces bring their labels, nodes their addresses
//! and labels (this node is `host`, the others `remote-node`).
//!
//! Pod lifecycle: a pod that has finished (`Succeeded`, `Failed`) is not an
//! endpoint — its address may already belong to a new pod — and neither is
//! one without an address yet. A `Pending` pod with an address is one (its
//! init containers already send traffic). What the cluster reports can be
//! inconsistent for a moment (a pod being deleted while its address is
//! reused, a node re-registered under a new name): such an address goes to
//! one owner ([`InventoryFile::settle_addresses`]; among pods, one not being
//! deleted, then one on this node, then the newest), the conflict is logged
//! once, and the snapshot is never rejected for it.
//!
//! [`ClusterWatch`] keeps a watch per kind (with backoff, and a quick
//! return once the API server is back: [`crate::kube_reconnect`]; a relist
//! after every reconnect, so nothing missed while away is kept): pods as
//! the endpoints their events derive ([`crate::kube_pods`]), policy
//! objects as their checked outcomes ([`crate::kube_policies`]), the other
//! kinds (namespaces, nodes, services, EndpointSlices) in reflector stores;
//! it builds a [`ClusterSnapshot`] from those on
//! demand. While the API server is unreachable they keep the last state,
//! so the agent keeps enforcing it. [`snapshot`] is the one-shot listing
//! equivalent.
//!
//! An invalid policy object is reported (log, and a Warning event on the
//! object for `kubectl describe`) and does not disturb the others; if an
//! earlier version of the same object was valid, that version stays in force
//! — an edit with a typo must not widen or drop what was enforced.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use policy::inventory::{AddressConflict, EndpointSpec, InventoryFile, NamespaceSpec, NodeSpec};
use policy::load::Diagnostic;
use policy::{EndpointKey, Policy};
use tokio::sync::watch;

use crate::kube_pods::{PodEndpoint, PodTable};
use crate::kube_policies::{policy_resource, Checked, CheckedObject, PolicyTable, POLICY_KINDS};
use crate::kube_reconnect::{ApiServerReturn, Failure, Retry};

/// The cluster as Tollgate sees it at one moment.
#[derive(Debug, Default)]
pub struct ClusterSnapshot {
    /// Every policy in force: the valid objects, and the last valid version
    /// of objects whose current version is invalid.
    pub policies: Vec<Arc<Policy>>,
    /// One entry per problem in an invalid object.
    pub diagnostics: Vec<Diagnostic>,
    /// The invalid objects, for events.
    pub invalid: Vec<InvalidObject>,
    pub inventory: InventoryFile,
    /// Pods running on this node (not hostNetwork): the local endpoints.
    pub local: Vec<EndpointKey>,
    /// Addresses claimed twice, and who got them.
    pub conflicts: Vec<AddressConflict>,
}

/// A policy object that failed validation.
#[derive(Debug, Clone)]
pub struct InvalidObject {
    pub reference: ObjectReference,
    pub label: String,
    pub diagnostics: Vec<Diagnostic>,
    /// Whether an earlier valid version of it stays in force.
    pub kept_last_good: bool,
}

/// A client from a kubeconfig file, or the in-cluster configuration when
/// `path` is `None` (the DaemonSet's service account). It retries
/// 429/503/504 itself, as kube-client does by default.
pub async fn client(path: Option<&Path>) -> anyhow::Result<Client> {
    Client::try_from(config(path).await?).context("creating the Kubernetes client")
}

/// [`client`] for [`ClusterWatch`]: one that does not retry by itself. It
/// would retry a 429/503/504 up to 15 times (5 ms doubling, `Retry-After`
/// honoured) before a watch saw the failure, and a starting API server
/// answers CRD-backed kinds 503, which kept those watches away for 10 s
/// after it was back. The watches retry on their own terms
/// ([`crate::kube_reconnect`]); its other requests (events) are best
/// effort.
pub async fn watch_client(path: Option<&Path>) -> anyhow::Result<Client> {
    let mut config = config(path).await?;
    config.default_retry = false;
    Client::try_from(config).context("creating the Kubernetes client")
}

async fn config(path: Option<&Path>) -> anyhow::Result<kube::Config> {
    Ok(match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .context("loading the kubeconfig")?
        }
        None => kube::Config::incluster()
            .context("no --kubeconfig and not running in a pod (in-cluster configuration)")?,
    })
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    client(Some(path)).await
}

/// How long the first start waits for an optional kind's first list.
const OPTIONAL_KIND_WAIT: Duration = Duration::from_secs(10);

/// The objects a snapshot is built from.
#[derive(Default)]
struct Objects {
    /// The policy objects of every kind, checked ([`PolicyTable`]).
    policies: Vec<Arc<CheckedObject>>,
    namespaces: Vec<Arc<Namespace>>,
    nodes: Vec<Arc<Node>>,
    /// The pods' endpoints, by namespace and name ([`PodTable::endpoints`]).
    pods: Vec<Arc<PodEndpoint>>,
    services: Vec<Arc<Service>>,
    endpoint_slices: Vec<Arc<DynamicObject>>,
}

/// What makes an invalid object's report new: the object, what is wrong
/// with it and whether a last valid version stays in force (the event
/// says which). A later version with the same problems (a label, an
/// annotation or a status written) is not told again, so edits that do
/// not touch the problem cannot make every node post events; a version
/// with other problems is.
fn problem(invalid: &InvalidObject) -> Problem {
    let r = &invalid.reference;
    Problem {
        object: [&r.kind, &r.namespace, &r.name, &r.uid].map(|f| f.clone().unwrap_or_default()),
        kept_last_good: invalid.kept_last_good,
        diagnostics: invalid.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

/// See [`problem`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct Problem {
    /// Kind, namespace, name, uid.
    object: [String; 4],
    kept_last_good: bool,
    diagnostics: Vec<String>,
}

/// Problems already told, so that each is told once while it lasts.
#[derive(Debug)]
struct Told<K>(HashSet<K>);

impl<K: Eq + std::hash::Hash> Told<K> {
    fn new() -> Self {
        Told(HashSet::new())
    }

    /// Of the problems now (`current`, each named by `key`), those not
    /// told yet. Problems gone are forgotten: one that comes back is told
    /// again.
    fn untold<'a, T>(&mut self, current: &'a [T], key: impl Fn(&T) -> K) -> Vec<&'a T> {
        let now: HashSet<K> = current.iter().map(&key).collect();
        self.0.retain(|k| now.contains(k));
        current
            .iter()
            .filter(|item| self.0.insert(key(item)))
            .collect()
    }
}

/// Builds the snapshot for node `node`.
fn build(objects: Objects, node: &str) -> ClusterSnapshot {
    let mut out = ClusterSnapshot::default();
    let mut groups = Vec::new();
    for object in &objects.policies {
        match &object.in_force {
            Some(Checked::Policy(p)) => out.policies.push(p.clone()),
            Some(Checked::CidrGroup(g)) => groups.push(g.clone()),
            None => {}
        }
        if let Some(invalid) = &object.invalid {
            out.diagnostics.extend(invalid.diagnostics.iter().cloned());
            out.invalid.push(invalid.clone());
        }
    }
    policy::cidrgroup::expand_shared(&mut out.policies, &groups);

    for ns in &objects.namespaces {
        out.inventory.namespaces.push(NamespaceSpec {
            name: ns.metadata.name.clone().unwrap_or_default(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        });
    }
    for n in &objects.nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ips = n
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        out.inventory.nodes.push(NodeSpec {
            local: name == node,
            name,
            ips,
            labels: n.metadata.labels.clone().unwrap_or_default(),
        });
    }
    // Pods: derived as their events arrived (PodTable), in order.
    let mut ranks = Vec::with_capacity(objects.pods.len());
    for endpoint in &objects.pods {
        if endpoint.local {
            out.local.push(EndpointKey {
                namespace: endpoint.spec.namespace.clone(),
                name: endpoint.spec.name.clone(),
            });
        }
        out.inventory.endpoints.push(endpoint.spec.clone());
        ranks.push(&endpoint.rank);
    }
    out.inventory.services =
        crate::kube_services::services(&objects.services, &objects.endpoint_slices);
    out.conflicts = out.inventory.settle_addresses(|i, _| ranks[i]);
    // Stable order whatever order the stores hand objects out in (the
    // pods come sorted: that sort only checks).
    out.policies.sort_by(|a, b| a.name.cmp(&b.name));
    out.inventory.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    out.inventory.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    fn by_name(e: &EndpointSpec) -> (&str, &str) {
        (e.namespace.as_str(), e.name.as_str())
    }
    out.inventory
        .endpoints
        .sort_by(|a, b| by_name(a).cmp(&by_name(b)));
    // A local pod that lost its only address to another is no endpoint.
    let endpoints = &out.inventory.endpoints;
    out.local.retain(|k| {
        endpoints
            .binary_search_by(|e| by_name(e).cmp(&(k.namespace.as_str(), k.name.as_str())))
            .is_ok()
    });
    out.local.sort();
    out
}

/// Lists everything once and builds the snapshot for node `node`.
pub async fn snapshot(client: &Client, node: &str) -> anyhow::Result<ClusterSnapshot> {
    let lp = ListParams::default();
    let mut objects = Objects::default();
    for (kind, plural) in POLICY_KINDS {
        let resource = policy_resource(kind, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let listed = api
            .list(&lp)
            .await
            .with_context(|| format!("listing {plural}"))?;
        let table = PolicyTable::listed(kind, resource, listed);
        objects.policies.extend(table.objects().cloned());
    }
    objects.namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("listing namespaces")?
        .into_iter()
        .map(Arc::new)
        .collect();
    objects.nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .context("listing nodes")?
        .into_iter()
        .map(Arc::new)
        .collect();
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .context("listing pods")?;
    objects.pods = PodTable::listed(node, pods).endpoints();
    objects.services = Api::<Service>::all(client.clone())
        .list(&lp)
        .await
        .context("listing services")?
        .into_iter()
        .map(Arc::new)
        .collect();
    let slices = crate::kube_services::endpoint_slice_resource(client).await;
    objects.endpoint_slices = Api::<DynamicObject>::all_with(client.clone(), &slices)
        .list(&lp)
        .await
        .context("listing endpointslices")?
        .into_iter()
        .map(Arc::new)
        .collect();
    Ok(build(objects, node))
}

/// Watches over everything Tollgate needs, kept up to date in the
/// background; dropping it stops them.
pub struct ClusterWatch {
    node: String,
    cluster: String,
    /// Each policy kind's checked objects, and whether it has been listed
    /// once.
    policies: Vec<(Arc<std::sync::Mutex<PolicyTable>>, watch::Receiver<bool>)>,
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
    pods: Arc<std::sync::Mutex<PodTable>>,
    /// Whether the pods have been listed once.
    pods_listed: watch::Receiver<bool>,
    services: Store<Service>,
    endpoint_slices: Store<DynamicObject>,
    changes: watch::Receiver<u64>,
    recorder: Recorder,
    /// Invalid objects already reported ([`problem`]).
    reported: Told<Problem>,
    /// Address conflicts already logged.
    reported_conflicts: Told<AddressConflict>,
    pub stats: Arc<WatchStats>,
    /// The watches; dropping the watch aborts them.
    _tasks: tokio::task::JoinSet<()>,
}

/// Counters about the watches, for /metrics.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watch or list failures (each followed by a backoff and a retry).
    pub errors: AtomicU64,
    /// Watch events applied to the tables and stores.
    pub events: AtomicU64,
    /// Invalid policy objects in the last snapshot.
    pub invalid_objects: AtomicU64,
}

impl ClusterWatch {
    /// Starts the watches for node `node`, with a client from
    /// [`watch_client`].
    /// `cluster` is the name pods carry as `io.cilium.k8s.policy.cluster`.
    pub async fn start(client: Client, node: &str, cluster: &str) -> Self {
        let slices = crate::kube_services::endpoint_slice_resource(&client).await;
        let (tx, changes) = watch::channel(0u64);
        let stats = Arc::new(WatchStats::default());
        let mut tasks = tokio::task::JoinSet::new();
        let api_return = ApiServerReturn::start(client.clone(), &mut tasks);
        let mut policies = Vec::new();
        for (kind, plural) in POLICY_KINDS {
            let resource = policy_resource(kind, plural);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let table = Arc::new(std::sync::Mutex::new(PolicyTable::new(kind, resource)));
            let watching = Watching {
                what: plural,
                tx: tx.clone(),
                stats: stats.clone(),
                api_return: api_return.clone(),
            };
            let listed = watching.spawn_table(&mut tasks, api, table.clone());
            policies.push((table, listed));
        }
        let namespaces = reflect(&mut tasks, "namespaces", &client, &tx, &stats, &api_return);
        let nodes = reflect(&mut tasks, "nodes", &client, &tx, &stats, &api_return);
        let pods = Arc::new(std::sync::Mutex::new(PodTable::new(node)));
        let pods_listed = Watching {
            what: "pods",
            tx: tx.clone(),
            stats: stats.clone(),
            api_return: api_return.clone(),
        }
        .spawn_table(&mut tasks, Api::<Pod>::all(client.clone()), pods.clone());
        let services = reflect(&mut tasks, "services", &client, &tx, &stats, &api_return);
        let slice_writer = Writer::new(slices.clone());
        let endpoint_slices = slice_writer.as_reader();
        let slice_api: Api<DynamicObject> = Api::all_with(client.clone(), &slices);
        spawn_reflector(
            &mut tasks,
            "endpointslices",
            slice_writer,
            slice_api,
            &tx,
            &stats,
            &api_return,
        );
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "tollgate".into(),
                instance: Some(node.to_string()),
            },
        );
        ClusterWatch {
            node: node.to_string(),
            cluster: cluster.to_string(),
            policies,
            namespaces,
            nodes,
            pods,
            pods_listed,
            services,
            endpoint_slices,
            changes,
            recorder,
            reported: Told::new(),
            reported_conflicts: Told::new(),
            stats,
            _tasks: tasks,
        }
    }

    /// Waits until every kind has been listed once. CiliumCIDRGroups are
    /// optional: a cluster without that CRD (an older Cilium's, or a
    /// partial install) must not keep the agent from starting, so they get
    /// [`OPTIONAL_KIND_WAIT`]; their watch goes on retrying, and groups
    /// appear once the CRD does (until then `cidrGroupRef` selects nothing).
    pub async fn synced(&self) {
        for (table, listed) in &self.policies {
            let mut listed = listed.clone();
            let kind = table.lock().expect("policy table").kind();
            if kind == "CiliumCIDRGroup" {
                if tokio::time::timeout(OPTIONAL_KIND_WAIT, listed.wait_for(|l| *l))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "CiliumCIDRGroups could not be listed within {OPTIONAL_KIND_WAIT:?} (is the CRD installed? `kubectl apply -k deploy/` installs it): starting without them; cidrGroupRef rules select nothing until they can be listed"
                    );
                }
                continue;
            }
            let _ = listed.wait_for(|l| *l).await;
        }
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pods_listed.clone().wait_for(|listed| *listed).await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.endpoint_slices.wait_until_ready().await;
    }

    /// Waits for the next change to any watched object.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // Every reflector ended (never, in practice): nothing will change.
            std::future::pending::<()>().await;
        }
    }

    /// The cluster now, from the tables and stores. Invalid policy objects
    /// are logged and reported as events, once per problem while it lasts.
    pub fn snapshot(&mut self) -> ClusterSnapshot {
        let objects = Objects {
            policies: self
                .policies
                .iter()
                .flat_map(|(table, _)| {
                    let table = table.lock().expect("policy table");
                    table.objects().cloned().collect::<Vec<_>>()
                })
                .collect(),
            namespaces: self.namespaces.state(),
            nodes: self.nodes.state(),
            pods: self.pods.lock().expect("pod table").endpoints(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
        };
        let mut snap = build(objects, &self.node);
        snap.inventory.cluster_name = Some(self.cluster.clone());
        self.stats
            .invalid_objects
            .store(snap.invalid.len() as u64, Ordering::Relaxed);
        for invalid in self.reported.untold(&snap.invalid, problem) {
            self.report(invalid);
        }
        for conflict in self
            .reported_conflicts
            .untold(&snap.conflicts, Clone::clone)
        {
            tracing::warn!("{conflict}; the others lose that address until this settles");
        }
        snap
    }

    fn report(&self, invalid: &InvalidObject) {
        let consequence = if invalid.kept_last_good {
            "its last valid version stays in force"
        } else {
            "it is not enforced"
        };
        let problems: Vec<String> = invalid.diagnostics.iter().map(|d| d.to_string()).collect();
        tracing::error!(object = %invalid.label, "invalid policy ({consequence}): {}", problems.join("; "));
        let mut note = format!("{consequence}: {}", problems.join("; "));
        if note.len() > 1000 {
            let mut cut = 997;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidPolicy".into(),
            note: Some(note),
            action: "Validate".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let reference = invalid.reference.clone();
        let label = invalid.label.clone();
        // Events are best effort: the log line above is the record.
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(object = %label, "could not post the InvalidPolicy event: {e}");
            }
        });
    }
}

fn reflect<K>(
    tasks: &mut tokio::task::JoinSet<()>,
    what: &'static str,
    client: &Client,
    tx: &watch::Sender<u64>,
    stats: &Arc<WatchStats>,
    api_return: &Arc<ApiServerReturn>,
) -> Store<K>
where
    K: Watched<DynamicType = ()>,
{
    let writer = Writer::new(());
    let store = writer.as_reader();
    spawn_reflector(
        tasks,
        what,
        writer,
        Api::<K>::all(client.clone()),
        tx,
        stats,
        api_return,
    );
    store
}

/// A kind a reflector keeps: a resource, trimmed as it arrives.
trait Watched:
    Resource
    + crate::kube_slim::Slim
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource
        + crate::kube_slim::Slim
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A table kept from one kind's watch events instead of a watch cache
/// of its objects: [`PodTable`], [`PolicyTable`]. A relist's objects take
/// effect together when it is done.
pub trait EventTable<K> {
    /// An object created or changed.
    fn apply(&mut self, object: &K);
    /// An object deleted.
    fn delete(&mut self, object: &K);
    /// A relist begins: what it lists replaces the table once it is done.
    fn start_relist(&mut self);
    /// An object of the relist under way.
    fn relist_apply(&mut self, object: &K);
    /// The relist is complete: it is the table now.
    fn finish_relist(&mut self);
}

/// Drives one reflector: the store updated as events arrive, each object
/// trimmed to what the agent reads before the store keeps it.
fn spawn_reflector<K>(
    tasks: &mut tokio::task::JoinSet<()>,
    what: &'static str,
    mut writer: Writer<K>,
    api: Api<K>,
    tx: &watch::Sender<u64>,
    stats: &Arc<WatchStats>,
    api_return: &Arc<ApiServerReturn>,
) where
    K: Watched,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let watching = Watching {
        what,
        tx: tx.clone(),
        stats: stats.clone(),
        api_return: api_return.clone(),
    };
    tasks.spawn(
        watching.drive(
            watcher(api, watcher::Config::default())
                .modify(crate::kube_slim::Slim::slim)
                .boxed(),
            move |event| writer.apply_watcher_event(&event),
        ),
    );
}

/// One watch, and where its changes are told.
struct Watching {
    what: &'static str,
    tx: watch::Sender<u64>,
    stats: Arc<WatchStats>,
    api_return: Arc<ApiServerReturn>,
}

type WatchStream<K> = futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>;

impl Watching {
    /// Drives the watch of `api` into `table`. The receiver says whether
    /// the kind has been listed once.
    fn spawn_table<K, T>(
        self,
        tasks: &mut tokio::task::JoinSet<()>,
        api: Api<K>,
        table: Arc<std::sync::Mutex<T>>,
    ) -> watch::Receiver<bool>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        T: EventTable<K> + Send + 'static,
    {
        let (listed_tx, listed) = watch::channel(false);
        let apply = move |event: watcher::Event<K>| {
            let mut table = table.lock().expect("event table");
            match event {
                watcher::Event::Init => table.start_relist(),
                watcher::Event::InitApply(object) => table.relist_apply(&object),
                watcher::Event::InitDone => {
                    table.finish_relist();
                    listed_tx.send_replace(true);
                }
                watcher::Event::Apply(object) => table.apply(&object),
                watcher::Event::Delete(object) => table.delete(&object),
            }
        };
        tasks.spawn(self.drive(watcher(api, watcher::Config::default()).boxed(), apply));
        listed
    }

    /// Applies every event of `stream`, signalling each change on `tx`.
    /// No `.backoff()` on the stream: each failure is read before waiting
    /// ([`crate::kube_reconnect`]).
    async fn drive<K>(self, mut stream: WatchStream<K>, mut apply: impl FnMut(watcher::Event<K>)) {
        let what = self.what;
        let mut retry = Retry::new(self.api_return.clone());
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(
                            "watching {what} failed: {e}; retrying with backoff, the last known state stays enforced"
                        );
                    }
                    failing = true;
                    retry.after(Failure::of(&e)).await;
                    continue;
                }
            };
            // The start of a (re)list changes nothing yet: its objects take
            // effect with `InitDone`. (A list that keeps failing starts
            // again and again; each time would rebuild the model.)
            let changes = !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_));
            apply(event);
            if changes {
                if failing {
                    tracing::info!("watching {what} again");
                    failing = false;
                }
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                self.tx.send_modify(|n| *n += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kube_policies::tests::cnp;

    /// A table of policy kind `POLICY_KINDS[kind]`.
    fn table(kind: usize) -> PolicyTable {
        let (kind, plural) = POLICY_KINDS[kind];
        PolicyTable::new(kind, policy_resource(kind, plural))
    }

    /// The objects of `tables`, as the watch hands them to a snapshot.
    fn with(tables: &[&PolicyTable]) -> Objects {
        Objects {
            policies: tables.iter().flat_map(|t| t.objects().cloned()).collect(),
            ..Objects::default()
        }
    }

    /// The table's outcomes reach the snapshot: an invalid edit is
    /// reported (with its diagnostics, for the log and the event) and the
    /// last valid version of that object, and only that, stays in force.
    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version_of_that_object_only() {
        let mut cnps = table(0);
        cnps.apply(&cnp("u1", "1", "toFQDNs"));
        let snap = build(with(&[&cnps]), "n");
        assert_eq!(snap.policies.len(), 1);
        assert!(snap.invalid.is_empty());

        cnps.apply(&cnp("u1", "2", "toFQDN"));
        let snap = build(with(&[&cnps]), "n");
        assert_eq!(snap.policies.len(), 1, "last good version kept");
        assert_eq!(snap.invalid.len(), 1);
        assert!(snap.invalid[0].kept_last_good);
        assert_eq!(snap.invalid[0].reference.name.as_deref(), Some("p"));
        assert!(snap.diagnostics[0].to_string().contains("toFQDN"));

        // Deleted and re-created invalid (a new uid): nothing inherited.
        cnps.delete(&cnp("u1", "2", "toFQDN"));
        assert!(build(with(&[&cnps]), "n").policies.is_empty());
        cnps.apply(&cnp("u2", "1", "toFQDN"));
        let snap = build(with(&[&cnps]), "n");
        assert!(snap.policies.is_empty());
        assert!(!snap.invalid[0].kept_last_good);
    }

    /// An invalid object is told once while its problems last: a later
    /// version with the same problems is not told again, one with other
    /// problems is, and so is the same problem back after a fix.
    #[test]
    fn each_problem_is_told_once_while_it_lasts() {
        let mut told = Told::new();
        let mut cnps = table(0);
        let mut untold = |cnps: &PolicyTable| -> usize {
            told.untold(&build(with(&[cnps]), "n").invalid, problem)
                .len()
        };
        cnps.apply(&cnp("u1", "1", "toFQDN"));
        assert_eq!(untold(&cnps), 1);
        assert_eq!(untold(&cnps), 0, "the next snapshot");
        cnps.apply(&cnp("u1", "2", "toFQDN"));
        assert_eq!(untold(&cnps), 0, "a new version, the same problem");
        cnps.apply(&cnp("u1", "3", "toFQDNz"));
        assert_eq!(untold(&cnps), 1, "another problem");
        cnps.apply(&cnp("u1", "4", "toFQDNs"));
        assert_eq!(untold(&cnps), 0, "fixed");
        cnps.apply(&cnp("u1", "5", "toFQDNz"));
        assert_eq!(untold(&cnps), 1, "back after the fix");
    }

    #[test]
    fn local_endpoints_are_this_nodes_networked_pods_without_host_network() {
        let pod = |name: &str, node: &str, ip: Option<&str>, host: bool| {
            let mut status = serde_json::json!({});
            if let Some(ip) = ip {
                status = serde_json::json!({"podIP": ip});
            }
            serde_json::json!({
                "metadata": {"name": name, "namespace": "prod", "labels": {"app": name}},
                "spec": {"nodeName": node, "hostNetwork": host, "containers": []},
                "status": status,
            })
        };
        let objects = objects(vec![
            pod("a", "n1", Some("10.0.0.1"), false),
            pod("b", "n2", Some("10.0.0.2"), false),
            pod("pending", "n1", None, false),
            pod("hostnet", "n1", Some("192.0.2.1"), true),
        ]);
        let snap = build(objects, "n1");
        let local: Vec<String> = snap.local.iter().map(|k| k.to_string()).collect();
        assert_eq!(local, ["prod/a"]);
        let all: Vec<&str> = snap
            .inventory
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(all, ["a", "b"], "remote pods feed the ipcache too");
    }

    /// A pod's identity labels are Cilium's: its own labels, its namespace
    /// (and the namespace's labels), its service account and the cluster;
    /// its named container ports are kept for `port: NAME` rules.
    #[test]
    fn a_pod_gets_ciliums_identity_labels_and_its_named_ports() {
        let pod = |name: &str, sa: Option<&str>| {
            let mut spec = serde_json::json!({
                "nodeName": "n1",
                "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"containerPort": 9999}
                ]}],
            });
            if let Some(sa) = sa {
                spec["serviceAccountName"] = sa.into();
            }
            serde_json::json!({
                "metadata": {"name": name, "namespace": "prod", "labels": {"app": name}},
                "spec": spec,
                "status": {"podIP": if sa.is_some() { "10.0.0.1" } else { "10.0.0.2" }},
            })
        };
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "prod", "labels": {"team": "shop"}},
        }))
        .unwrap();
        let objects = Objects {
            pods: objects(vec![pod("web", Some("web-sa")), pod("plain", None)]).pods,
            namespaces: vec![Arc::new(namespace)],
            ..Objects::default()
        };
        let mut snap = build(objects, "n1");
        // What ClusterWatch::snapshot adds from --cluster-name.
        snap.inventory.cluster_name = Some("east".into());
        let web = &snap.inventory.endpoints[1];
        assert_eq!(web.name, "web");
        assert_eq!(web.service_account.as_deref(), Some("web-sa"));
        let ports: Vec<(&str, u16)> = web
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect();
        assert_eq!(
            ports,
            [("http", 8080), ("dns", 53)],
            "unnamed ports are left out"
        );
        assert_eq!(web.ports[1].protocol, policy::model::ProtocolSpec::Udp);

        let inventory = policy::Inventory::from_spec(snap.inventory).unwrap();
        let labels = |name: &str| {
            inventory
                .find(&format!("prod/{name}"))
                .unwrap()
                .labels
                .to_string()
        };
        assert_eq!(
            labels("web"),
            "app=web,io.cilium.k8s.namespace.labels.team=shop,io.cilium.k8s.policy.cluster=east,\
             io.cilium.k8s.policy.serviceaccount=web-sa,io.kubernetes.pod.namespace=prod"
        );
        assert!(
            labels("plain").contains("io.cilium.k8s.policy.serviceaccount=default"),
            "no serviceAccountName: Kubernetes' `default`"
        );
    }

    /// The watch caches keep trimmed objects (`kube_slim`): the snapshot
    /// built from them is the one the full objects give, field for field.
    #[test]
    fn trimmed_objects_build_the_same_snapshot_as_full_ones() {
        use crate::kube_slim::Slim;
        let mut pods = vec![
            live_pod("a", Some("10.0.0.1"), "Running", "2026-01-01T00:00:00Z"),
            live_pod("b", Some("10.0.0.1"), "Running", "2026-01-02T00:00:00Z"),
            live_pod(
                "done",
                Some("10.0.0.3"),
                "Succeeded",
                "2026-01-01T00:00:00Z",
            ),
            pod_on(
                "n2",
                "remote",
                Some("fd00::4"),
                "Pending",
                "2026-01-01T00:00:00Z",
            ),
            pod_on(
                "n1",
                "host",
                Some("192.168.0.1"),
                "Running",
                "2026-01-01T00:00:00Z",
            ),
        ];
        pods[0]["metadata"]["managedFields"] = serde_json::json!([{"manager": "kubelet"}]);
        pods[0]["metadata"]["annotations"] = serde_json::json!({"a": "b"});
        pods[0]["spec"] = serde_json::json!({"nodeName": "n1", "serviceAccount": "old-sa",
            "volumes": [{"name": "v", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "i", "ports": [
                {"name": "http", "containerPort": 8080}, {"name": "q", "containerPort": 53, "protocol": "UDP"}]},
                {"name": "d", "image": "j"}]});
        pods[0]["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "True"}]);
        pods[1]["metadata"]["deletionTimestamp"] = "2026-01-03T00:00:00Z".into();
        pods[4]["spec"]["hostNetwork"] = true.into();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}, "annotations": {"x": "y"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                                     {"type": "Hostname", "address": "n1"}],
                       "images": [{"names": ["example.test/big"], "sizeBytes": 1}]},
        }))
        .unwrap();
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "prod", "labels": {"team": "shop"}},
            "status": {"phase": "Active"},
        }))
        .unwrap();
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {}},
        }))
        .unwrap();
        let slice: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}],
        }))
        .unwrap();
        let full = Objects {
            namespaces: vec![Arc::new(namespace)],
            nodes: vec![Arc::new(node)],
            services: vec![Arc::new(service)],
            endpoint_slices: vec![Arc::new(slice)],
            ..Objects::default()
        };
        let full = Objects {
            pods: objects(pods).pods,
            ..full
        };
        fn trimmed<K: Slim + Clone>(list: &[Arc<K>]) -> Vec<Arc<K>> {
            list.iter()
                .map(|o| {
                    let mut o = (**o).clone();
                    o.slim();
                    Arc::new(o)
                })
                .collect()
        }
        let slim = Objects {
            policies: Vec::new(),
            namespaces: trimmed(&full.namespaces),
            nodes: trimmed(&full.nodes),
            pods: full.pods.clone(),
            services: trimmed(&full.services),
            endpoint_slices: trimmed(&full.endpoint_slices),
        };
        assert!(
            slim.nodes[0].status.as_ref().unwrap().images.is_none(),
            "trimmed"
        );
        let a = build(full, "n1");
        let b = build(slim, "n1");
        assert_eq!(a.inventory, b.inventory);
        assert_eq!(a.local, b.local);
        assert_eq!(a.conflicts, b.conflicts);
        // The fixture exercises what it claims to.
        assert!(a.inventory.endpoints.iter().any(|e| !e.ports.is_empty()));
        assert!(!a.inventory.services.is_empty() && !a.inventory.nodes[0].ips.is_empty());
    }

    /// One pod's state in a generated sequence of cluster changes.
    #[derive(Debug, Clone)]
    struct GenPod {
        app: u8,
        ip: Option<u8>,
        phase: &'static str,
        node: &'static str,
        deleting: bool,
        sa: Option<&'static str>,
    }

    fn gen_pod() -> impl proptest::strategy::Strategy<Value = GenPod> {
        use proptest::prelude::*;
        (
            0u8..3,
            proptest::option::of(0u8..4),
            prop::sample::select(vec!["Running", "Pending", "Succeeded"]),
            prop::sample::select(vec!["n1", "n2"]),
            any::<bool>(),
            proptest::option::of(prop::sample::select(vec!["a", "b"])),
        )
            .prop_map(|(app, ip, phase, node, deleting, sa)| GenPod {
                app,
                ip,
                phase,
                node,
                deleting,
                sa,
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// The pod table follows watch events (`kube_pods`): after any
        /// sequence of creates, updates, deletes and relists, the snapshot
        /// built from it is the one built from a fresh list.
        #[test]
        fn a_snapshot_from_the_event_fed_pod_table_is_the_one_from_a_fresh_list(
            steps in proptest::collection::vec(
                (0usize..5, proptest::option::of(gen_pod()), proptest::bool::weighted(0.2)),
                1..24,
            ),
        ) {
            let as_pod = |slot: usize, version: u64, p: &GenPod| -> Pod {
                let mut pod = pod_on(p.node, &format!("pod-{slot}"),
                    p.ip.map(|i| format!("10.0.0.{i}")).as_deref(), p.phase,
                    &format!("2026-01-01T00:00:{:02}Z", slot * 7 % 60));
                pod["metadata"]["labels"] = serde_json::json!({"app": format!("app-{}", p.app)});
                pod["metadata"]["uid"] = format!("uid-{slot}").into();
                pod["metadata"]["resourceVersion"] = version.to_string().into();
                if p.deleting {
                    pod["metadata"]["deletionTimestamp"] = "2026-01-02T00:00:00Z".into();
                }
                if let Some(sa) = p.sa {
                    pod["spec"]["serviceAccountName"] = sa.into();
                }
                serde_json::from_value(pod).unwrap()
            };
            let mut pods: std::collections::BTreeMap<usize, (u64, GenPod)> = Default::default();
            let mut table = PodTable::new("n1");
            let mut version = 0u64;
            for (slot, change, relist) in steps {
                version += 1;
                match change {
                    Some(p) => {
                        table.apply(&as_pod(slot, version, &p));
                        pods.insert(slot, (version, p));
                    }
                    None => {
                        if let Some((v, p)) = pods.remove(&slot) {
                            table.delete(&as_pod(slot, v, &p));
                        }
                    }
                }
                let listed = || pods.iter().map(|(slot, (v, p))| as_pod(*slot, *v, p));
                if relist {
                    // After a reconnect: the whole list again, most of it
                    // versions the table already has.
                    table.start_relist();
                    for pod in listed() {
                        table.relist_apply(&pod);
                    }
                    table.finish_relist();
                }
                let followed = Objects { pods: table.endpoints(), ..Objects::default() };
                let fresh = Objects {
                    pods: PodTable::listed("n1", listed()).endpoints(),
                    ..Objects::default()
                };
                let followed = build(followed, "n1");
                let fresh = build(fresh, "n1");
                proptest::prop_assert_eq!(&followed.inventory, &fresh.inventory);
                proptest::prop_assert_eq!(&followed.local, &fresh.local);
                proptest::prop_assert_eq!(&followed.conflicts, &fresh.conflicts);
                // Deleted pods are forgotten: the table stays the cluster's size.
                proptest::prop_assert!(table.len() <= pods.len());
            }
        }
    }

    #[test]
    fn network_policies_and_cidr_groups_are_watched_policy_kinds() {
        let np: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "prod", "uid": "u", "resourceVersion": "1"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]},
        }))
        .unwrap();
        let group: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumCIDRGroup",
            "metadata": {"name": "g", "uid": "g", "resourceVersion": "1"},
            "spec": {"externalCIDRs": ["198.51.100.0/24"]},
        }))
        .unwrap();
        let cnp: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p", "namespace": "prod", "uid": "p", "resourceVersion": "1"},
            "spec": {"endpointSelector": {}, "egress": [{"toCIDRSet": [{"cidrGroupRef": "g"}]}]},
        }))
        .unwrap();
        let mut tables = [table(2), table(3), table(0)];
        tables[0].apply(&np);
        tables[1].apply(&group);
        tables[2].apply(&cnp);
        let snap = build(with(&[&tables[0], &tables[1], &tables[2]]), "n");
        assert!(snap.invalid.is_empty(), "{:?}", snap.diagnostics);
        let names: Vec<String> = snap.policies.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["prod/p", "prod/np (NetworkPolicy)"]);
        let policy::rules::Peers::Listed(peers) =
            &snap.policies[0].specs[0].egress.as_ref().unwrap()[0].peers
        else {
            panic!("a CIDR group peer");
        };
        assert!(
            matches!(&peers[0], policy::rules::Peer::CidrGroup { cidrs, .. } if cidrs.len() == 1),
            "the group's CIDRs are filled in: {peers:?}"
        );
    }

    /// A pod of namespace prod on node n1, as the API server lists it.
    fn live_pod(name: &str, ip: Option<&str>, phase: &str, created: &str) -> serde_json::Value {
        pod_on("n1", name, ip, phase, created)
    }

    fn pod_on(
        node: &str,
        name: &str,
        ip: Option<&str>,
        phase: &str,
        created: &str,
    ) -> serde_json::Value {
        let mut status = serde_json::json!({"phase": phase});
        if let Some(ip) = ip {
            status["podIP"] = ip.into();
            status["podIPs"] = serde_json::json!([{"ip": ip}]);
        }
        serde_json::json!({
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": name},
                         "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": status,
        })
    }

    /// The objects of a cluster with these pods, as node n1 lists them.
    fn objects(pods: Vec<serde_json::Value>) -> Objects {
        let pods = pods
            .into_iter()
            .map(|p| serde_json::from_value::<Pod>(p).unwrap());
        Objects {
            pods: PodTable::listed("n1", pods).endpoints(),
            ..Objects::default()
        }
    }

    fn endpoints(snap: &ClusterSnapshot) -> Vec<String> {
        snap.inventory
            .endpoints
            .iter()
            .map(|e| {
                let ips: Vec<String> = e.ips.iter().map(|i| i.to_string()).collect();
                format!("{}={}", e.name, ips.join(","))
            })
            .collect()
    }

    #[test]
    fn finished_pods_and_pods_without_an_address_are_not_endpoints() {
        let snap = build(
            objects(vec![
                live_pod(
                    "job-done",
                    Some("10.0.0.5"),
                    "Succeeded",
                    "2026-01-01T00:00:00Z",
                ),
                live_pod(
                    "crashed",
                    Some("10.0.0.6"),
                    "Failed",
                    "2026-01-01T00:00:00Z",
                ),
                live_pod("starting", None, "Pending", "2026-01-01T00:00:00Z"),
                live_pod("init", Some("10.0.0.7"), "Pending", "2026-01-01T00:00:00Z"),
                live_pod("web", Some("10.0.0.8"), "Running", "2026-01-01T00:00:00Z"),
            ]),
            "n1",
        );
        assert_eq!(endpoints(&snap), ["init=10.0.0.7", "web=10.0.0.8"]);
        let local: Vec<String> = snap.local.iter().map(|k| k.to_string()).collect();
        assert_eq!(local, ["prod/init", "prod/web"]);
        assert!(snap.conflicts.is_empty());
    }

    #[test]
    fn a_finished_job_sharing_a_live_pods_address_is_simply_not_there() {
        let snap = build(
            objects(vec![
                live_pod("job", Some("10.0.0.5"), "Succeeded", "2026-01-01T00:00:00Z"),
                live_pod("web", Some("10.0.0.5"), "Running", "2026-01-01T00:01:00Z"),
            ]),
            "n1",
        );
        assert_eq!(endpoints(&snap), ["web=10.0.0.5"]);
        assert!(snap.conflicts.is_empty(), "no conflict: the job is gone");
        policy::Inventory::from_spec(snap.inventory).expect("the snapshot is accepted");
    }

    #[test]
    fn two_live_pods_sharing_an_address_never_reject_the_snapshot_the_newer_keeps_it() {
        let snap = build(
            objects(vec![
                live_pod("old", Some("10.0.0.5"), "Running", "2026-01-01T00:00:00Z"),
                live_pod("new", Some("10.0.0.5"), "Running", "2026-01-01T00:05:00Z"),
                live_pod("other", Some("10.0.0.9"), "Running", "2026-01-01T00:00:00Z"),
            ]),
            "n1",
        );
        assert_eq!(endpoints(&snap), ["new=10.0.0.5", "other=10.0.0.9"]);
        assert_eq!(snap.conflicts.len(), 1);
        assert_eq!(snap.conflicts[0].kept, "prod/new");
        assert_eq!(snap.conflicts[0].dropped, ["prod/old"]);
        let local: Vec<String> = snap.local.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            local,
            ["prod/new", "prod/other"],
            "the loser is not enforced as local"
        );
        policy::Inventory::from_spec(snap.inventory).expect("the snapshot is accepted");
    }

    #[test]
    fn a_pod_of_this_node_keeps_its_address_against_a_newer_pod_elsewhere() {
        let snap = build(
            objects(vec![
                live_pod("here", Some("10.0.0.5"), "Running", "2026-01-01T00:00:00Z"),
                pod_on(
                    "n2",
                    "there",
                    Some("10.0.0.5"),
                    "Running",
                    "2026-01-01T00:05:00Z",
                ),
            ]),
            "n1",
        );
        assert_eq!(endpoints(&snap), ["here=10.0.0.5"]);
        let local: Vec<String> = snap.local.iter().map(|k| k.to_string()).collect();
        assert_eq!(local, ["prod/here"], "still enforced on its veth");
    }

    #[test]
    fn a_pod_being_deleted_loses_its_address_to_a_live_one_even_an_older_one() {
        let mut leaving = live_pod(
            "leaving",
            Some("10.0.0.5"),
            "Running",
            "2026-01-01T00:05:00Z",
        );
        leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:06:00Z".into();
        let snap = build(
            objects(vec![
                leaving,
                live_pod(
                    "staying",
                    Some("10.0.0.5"),
                    "Running",
                    "2026-01-01T00:00:00Z",
                ),
            ]),
            "n1",
        );
        assert_eq!(endpoints(&snap), ["staying=10.0.0.5"]);
        assert_eq!(snap.conflicts[0].kept, "prod/staying");
    }

    #[test]
    fn a_pod_claiming_a_node_address_loses_it_to_the_node() {
        let mut objects = objects(vec![live_pod(
            "odd",
            Some("192.0.2.1"),
            "Running",
            "2026-01-01T00:00:00Z",
        )]);
        objects.nodes = vec![Arc::new(
            serde_json::from_value::<Node>(serde_json::json!({
                "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
            }))
            .unwrap(),
        )];
        let snap = build(objects, "n1");
        assert!(snap.inventory.endpoints.is_empty());
        assert!(snap.local.is_empty());
        assert_eq!(snap.conflicts[0].kept, "node n1");
        policy::Inventory::from_spec(snap.inventory).expect("the snapshot is accepted");
    }
}
