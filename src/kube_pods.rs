//! The cluster's pods as endpoints, kept from watch events.
//!
//! The agent needs of a pod only what makes it an endpoint (name,
//! namespace, labels, addresses, service account, named ports) and which
//! pod keeps an address two claim. A watch cache of `Pod` objects held
//! several kilobytes a pod even trimmed (the generated structs reserve
//! room for every field), and every snapshot walked all of them to find
//! the few that changed. Here each watch event derives the pod's endpoint
//! once and the table keeps only that: a snapshot takes the table's
//! endpoints as they are, already in order.
//!
//! Pods of one Deployment carry the same labels: the table keeps each
//! distinct label set once and the pods share it (at 50,000 pods a map of
//! its own per pod was the agent's largest single use of memory).
//!
//! A relist (the first list, and the one after every reconnect) builds a
//! new table beside the old, reusing the endpoint of every pod whose
//! version did not change, and replaces the old one when it is complete:
//! until then snapshots see the last complete state, as a watch cache's
//! readers do.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use policy::inventory::{EndpointSpec, NamedPortSpec};

use crate::kube::EventTable;

/// What a pod contributes to a snapshot.
#[derive(Debug)]
pub struct PodEndpoint {
    pub spec: Arc<EndpointSpec>,
    /// Which of two pods claiming one address keeps it (lowest first).
    pub rank: Rank,
    /// Whether it runs on this node.
    pub local: bool,
}

/// One not being deleted; then one on this node (this node routes the
/// address to that pod's veth, whatever another node reports); then the
/// newer (the address was handed out last to it).
pub type Rank = (bool, bool, Reverse<Option<Time>>);

/// A pod as an endpoint of node `node`, or `None` if it is not one; its
/// label set is taken from `labels`.
fn pod_endpoint(pod: &Pod, node: &str, labels: &mut LabelPool) -> Option<PodEndpoint> {
    let none = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&none);
    if spec.host_network == Some(true) {
        return None; // the node's identity, not a pod's
    }
    if finished(pod) {
        return None; // its address may already be another pod's
    }
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return None; // not scheduled or not networked yet
    }
    let local = spec.node_name.as_deref() == Some(node);
    Some(PodEndpoint {
        rank: (
            pod.metadata.deletion_timestamp.is_some(),
            !local,
            Reverse(pod.metadata.creation_timestamp.clone()),
        ),
        local,
        spec: Arc::new(EndpointSpec {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            labels: labels.intern(pod.metadata.labels.as_ref()),
            ips,
            audit: false,
            interface: None,
            service_account: service_account(spec),
            ports: named_ports(spec),
        }),
    })
}

/// Whether a pod's containers are done for good: its address may be reused.
fn finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn pod_ips(pod: &Pod) -> Vec<std::net::IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<std::net::IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok()),
        );
    }
    ips.shrink_to_fit(); // kept for the pod's life; collected with room for four
    ips
}

/// The pod's service account, as Cilium reads it (`serviceAccountName`,
/// else the deprecated `serviceAccount`); `None` means `default`.
fn service_account(spec: &PodSpec) -> Option<String> {
    spec.service_account_name
        .clone()
        .or_else(|| spec.service_account.clone())
        .filter(|s| !s.is_empty())
}

/// The named ports of the pod's containers, for `port: NAME` in policies.
fn named_ports(spec: &PodSpec) -> Vec<NamedPortSpec> {
    let mut ports: Vec<NamedPortSpec> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone().filter(|n| !n.is_empty())?;
            let port = u16::try_from(p.container_port).ok().filter(|p| *p != 0)?;
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => policy::model::ProtocolSpec::Tcp,
                "UDP" => policy::model::ProtocolSpec::Udp,
                "SCTP" => policy::model::ProtocolSpec::Sctp,
                _ => return None,
            };
            Some(NamedPortSpec {
                name,
                port,
                protocol,
            })
        })
        .collect();
    ports.shrink_to_fit(); // kept for the pod's life; collected with room for four
    ports
}

/// A pod's place in the table: in snapshot order (namespace, name), the
/// uid keeping a re-created pod apart from its predecessor.
type PodKey = (String, String, String);

fn key(pod: &Pod) -> PodKey {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

#[derive(Debug)]
struct Entry {
    /// The version it was derived from; empty if the pod had none (then
    /// a relist derives it again).
    resource_version: String,
    endpoint: Arc<PodEndpoint>,
}

/// The endpoints of a cluster's pods, for node `node`. Pods that are not
/// endpoints (host network, finished, no address yet) are not kept.
#[derive(Debug)]
pub struct PodTable {
    node: String,
    pods: BTreeMap<PodKey, Entry>,
    /// A relist under way.
    relist: Option<BTreeMap<PodKey, Entry>>,
    labels: LabelPool,
}

/// Each distinct pod label set once, shared by the endpoints that carry it.
#[derive(Debug, Default)]
struct LabelPool {
    sets: HashSet<Arc<BTreeMap<String, String>>>,
    /// How many sets were left after the last sweep of unused ones.
    after_sweep: usize,
}

impl LabelPool {
    /// Sets no endpoint holds any more are swept out once the pool has
    /// doubled since the last sweep (and not below this size), so the
    /// sweeps' cost stays proportional to the sets added.
    const SWEEP_FROM: usize = 256;

    /// The shared set equal to `labels` (none: the empty set).
    fn intern(
        &mut self,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Arc<BTreeMap<String, String>> {
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        if let Some(set) = self.sets.get(labels) {
            return set.clone();
        }
        if self.sets.len() >= (2 * self.after_sweep).max(Self::SWEEP_FROM) {
            // Held by the pool alone: no endpoint carries it any more.
            self.sets.retain(|set| Arc::strong_count(set) > 1);
            self.after_sweep = self.sets.len();
        }
        let set = Arc::new(labels.clone());
        self.sets.insert(set.clone());
        set
    }
}

impl PodTable {
    pub fn new(node: &str) -> Self {
        PodTable {
            node: node.to_string(),
            pods: BTreeMap::new(),
            relist: None,
            labels: LabelPool::default(),
        }
    }

    /// A table of `pods`, as one complete list.
    pub fn listed(node: &str, pods: impl IntoIterator<Item = Pod>) -> Self {
        let mut table = PodTable::new(node);
        table.start_relist();
        for pod in pods {
            table.relist_apply(&pod);
        }
        table.finish_relist();
        table
    }

    /// The endpoints, by namespace and name.
    pub fn endpoints(&self) -> Vec<Arc<PodEndpoint>> {
        self.pods.values().map(|e| e.endpoint.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

impl EventTable<Pod> for PodTable {
    /// A pod created or changed.
    fn apply(&mut self, pod: &Pod) {
        let key = key(pod);
        match pod_endpoint(pod, &self.node, &mut self.labels) {
            Some(endpoint) => {
                self.pods.insert(key, entry(pod, endpoint));
            }
            None => {
                self.pods.remove(&key);
            }
        }
    }

    /// A pod deleted.
    fn delete(&mut self, pod: &Pod) {
        self.pods.remove(&key(pod));
    }

    /// A relist begins: what it lists replaces the table once it is done.
    fn start_relist(&mut self) {
        self.relist = Some(BTreeMap::new());
    }

    /// A pod of the relist under way; a version already in the table is
    /// not derived again.
    fn relist_apply(&mut self, pod: &Pod) {
        let Some(relist) = &mut self.relist else {
            return self.apply(pod); // not listing: an ordinary change
        };
        let key = key(pod);
        let version = pod.metadata.resource_version.as_deref().unwrap_or_default();
        let known = self
            .pods
            .get(&key)
            .filter(|e| !e.resource_version.is_empty() && e.resource_version == version);
        if let Some(known) = known {
            let endpoint = known.endpoint.clone();
            relist.insert(
                key,
                Entry {
                    resource_version: version.to_string(),
                    endpoint,
                },
            );
        } else if let Some(endpoint) = pod_endpoint(pod, &self.node, &mut self.labels) {
            relist.insert(key, entry(pod, endpoint));
        }
    }

    /// The relist is complete: it is the table now.
    fn finish_relist(&mut self) {
        if let Some(relist) = self.relist.take() {
            self.pods = relist;
        }
    }
}

fn entry(pod: &Pod, endpoint: PodEndpoint) -> Entry {
    Entry {
        resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
        endpoint: Arc::new(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, version: &str, ip: Option<&str>) -> Pod {
        let mut status = serde_json::json!({"phase": "Running"});
        if let Some(ip) = ip {
            status["podIP"] = ip.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"),
                         "resourceVersion": version, "labels": {"app": name}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": status,
        }))
        .unwrap()
    }

    fn names(table: &PodTable) -> Vec<String> {
        table
            .endpoints()
            .iter()
            .map(|e| e.spec.name.clone())
            .collect()
    }

    /// A relist is seen whole or not at all, and a pod whose version did
    /// not change keeps the endpoint derived before (shared, not copied).
    #[test]
    fn a_relist_takes_effect_when_done_and_reuses_unchanged_pods() {
        let mut table = PodTable::listed(
            "n1",
            [
                pod("a", "1", Some("10.0.0.1")),
                pod("b", "1", Some("10.0.0.2")),
            ],
        );
        let before = table.endpoints();
        table.start_relist();
        table.relist_apply(&pod("a", "1", Some("10.0.0.1")));
        table.relist_apply(&pod("c", "5", Some("10.0.0.3")));
        assert_eq!(names(&table), ["a", "b"], "the old state until it is done");
        table.finish_relist();
        assert_eq!(names(&table), ["a", "c"], "b was deleted while away");
        assert!(Arc::ptr_eq(&table.endpoints()[0], &before[0]));
    }

    #[test]
    fn a_pod_that_stops_being_an_endpoint_leaves_the_table() {
        let mut table = PodTable::new("n1");
        table.apply(&pod("a", "1", None));
        assert!(table.is_empty(), "no address yet");
        table.apply(&pod("a", "2", Some("10.0.0.1")));
        assert_eq!(names(&table), ["a"]);
        let mut done = pod("a", "3", Some("10.0.0.1"));
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        table.apply(&done);
        assert!(table.is_empty(), "finished: its address may be reused");
        table.apply(&pod("a", "4", Some("10.0.0.1")));
        table.delete(&pod("a", "4", Some("10.0.0.1")));
        assert!(table.is_empty());
    }

    fn labelled(name: &str, app: &str) -> Pod {
        let mut p = pod(name, "1", Some("10.0.0.1"));
        p.metadata.labels = Some(BTreeMap::from([("app".into(), app.into())]));
        p
    }

    /// Pods with equal labels share one set; a pod's own labels are what
    /// its endpoint carries, whatever the pool holds.
    #[test]
    fn pods_with_equal_labels_share_one_set() {
        let mut table = PodTable::new("n1");
        table.apply(&labelled("a", "web"));
        table.apply(&labelled("b", "web"));
        table.apply(&labelled("c", "db"));
        let endpoints = table.endpoints();
        let labels = |i: usize| &endpoints[i].spec.labels;
        assert!(Arc::ptr_eq(labels(0), labels(1)));
        assert_eq!(labels(2)["app"], "db");
        assert!(!Arc::ptr_eq(labels(0), labels(2)));
        table.apply(&labelled("b", "db"));
        assert_eq!(table.endpoints()[1].spec.labels["app"], "db");
        assert!(Arc::ptr_eq(&table.endpoints()[1].spec.labels, labels(2)));
    }

    /// Sets no pod carries any more leave the pool: its size follows the
    /// live sets, not every set ever seen.
    #[test]
    fn sets_no_pod_carries_are_swept() {
        let mut table = PodTable::new("n1");
        table.apply(&labelled("b", "kept"));
        for i in 0..10 * LabelPool::SWEEP_FROM {
            // One pod whose labels change every time.
            table.apply(&labelled("a", &format!("v{i}")));
        }
        assert!(
            table.labels.sets.len() <= LabelPool::SWEEP_FROM,
            "{} sets kept for one pod",
            table.labels.sets.len()
        );
        let last = format!("v{}", 10 * LabelPool::SWEEP_FROM - 1);
        assert_eq!(table.endpoints()[0].spec.labels["app"], last);
        // A set still carried stays in the pool through the sweeps: a new
        // pod with it shares it.
        table.apply(&labelled("c", "kept"));
        let endpoints = table.endpoints();
        assert!(Arc::ptr_eq(
            &endpoints[1].spec.labels,
            &endpoints[2].spec.labels
        ));
    }
}
