//! What exists: namespaces, pods (endpoints), nodes — and the identity of any
//! address. This is the endpoints file of `tollgate policy explain` and of the
//! local-mode agent:
//!
//! ```yaml
//! namespaces:
//!   - name: prod
//!     labels: {team: payments}
//! endpoints:
//!   - name: frontend
//!     namespace: prod
//!     labels: {app: frontend}
//!     ips: [10.0.1.10, "fd00::10"]
//!     audit: false          # optional: log would-be drops, pass them
//!     serviceAccount: web   # optional (default `default`)
//!     ports: [{name: http, port: 8080, protocol: TCP}]  # optional: named ports
//! nodes:
//!   - name: node-a
//!     ips: [192.168.1.1]
//!     local: true           # the node this agent runs on: the `host` entity
//!     labels: {zone: a}     # optional: for fromNodes / toNodes
//! kubeApiserver: [10.96.0.1] # optional
//! services: []               # optional: see [`crate::services`]
//! ```

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::identity::{allocate_canonical, Identity};
use crate::labels::{Labels, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventoryFile {
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    /// Shared, so that a cluster's snapshots reuse the specs of the pods
    /// that did not change instead of copying every one.
    #[serde(default)]
    pub endpoints: Vec<Arc<EndpointSpec>>,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub kube_apiserver: Vec<IpAddr>,
    #[serde(default)]
    pub services: Vec<crate::services::ServiceSpec>,
    /// The cluster name every pod carries as `io.cilium.k8s.policy.cluster`:
    /// the agent's (or `policy explain`'s) `--cluster-name`, not a field of
    /// the file. `None`: [`DEFAULT_CLUSTER`].
    #[serde(skip)]
    pub cluster_name: Option<String>,
}

/// Cilium's identity label for a pod's cluster.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Cilium's identity label for a pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Cilium's default cluster name (`--cluster-name`).
pub const DEFAULT_CLUSTER: &str = "default";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Shared: the pods of a Deployment carry one set (the cluster watch
    /// keeps each distinct set once).
    #[serde(default)]
    pub labels: Arc<BTreeMap<String, String>>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Audit mode for this endpoint: would-be drops are reported and passed.
    #[serde(default)]
    pub audit: bool,
    /// Host-side interface of the pod's veth (used by the agent).
    #[serde(default)]
    pub interface: Option<String>,
    /// The pod's service account (`spec.serviceAccountName`); `default` if absent.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Named container ports, for `port: NAME` in policies.
    #[serde(default)]
    pub ports: Vec<NamedPortSpec>,
}

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPortSpec {
    pub name: String,
    pub port: u16,
    /// `TCP` (the default, as for container ports), `UDP` or `SCTP`.
    #[serde(default = "tcp")]
    pub protocol: crate::model::ProtocolSpec,
}

fn tcp() -> crate::model::ProtocolSpec {
    crate::model::ProtocolSpec::Tcp
}

fn default_namespace() -> String {
    crate::validate::DEFAULT_NAMESPACE.to_string()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A node with its labels, for `fromNodes` / `toNodes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// This agent's node (`host`); the others are `remote-node`.
    pub local: bool,
}

/// An address that more than one endpoint or node claimed, and who keeps it
/// (see [`InventoryFile::settle_addresses`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressConflict {
    pub ip: IpAddr,
    /// `node NAME` or `namespace/name`.
    pub kept: String,
    /// The claimants that lost it, in the same notation.
    pub dropped: Vec<String>,
}

impl fmt::Display for AddressConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "address {} is claimed by {} and {}: {} keeps it",
            self.ip,
            self.kept,
            self.dropped.join(", "),
            self.kept
        )
    }
}

impl InventoryFile {
    /// Leaves every address with exactly one owner, so that
    /// [`Inventory::from_spec`] accepts what a cluster reports however
    /// inconsistent it is for a moment (a pod deleted while its address is
    /// already reused, a node re-registered under a new name). A file
    /// written by hand is not settled: there a duplicate is a mistake to
    /// report.
    ///
    /// Who keeps an address: a node before an endpoint (a pod that is not
    /// `hostNetwork` cannot own its node's address), the local node before
    /// other nodes, then the node or endpoint that comes first — nodes by
    /// name, endpoints by `rank` (lowest first; ties by `namespace/name`),
    /// which is given each endpoint's index in `endpoints` and the endpoint.
    /// The others lose that address only; an endpoint left without any is
    /// removed. Endpoints listed twice keep their first entry.
    pub fn settle_addresses<K: Ord>(
        &mut self,
        rank: impl Fn(usize, &EndpointSpec) -> K,
    ) -> Vec<AddressConflict> {
        // Claimants by index (nodes first, then endpoints), named only when
        // a conflict is reported, and ranked only when they contest an
        // address or a name: this runs on every change of a cluster, where
        // nearly every address has one claimant.
        let nodes = self.nodes.len();
        let mut owner: HashMap<IpAddr, usize> = HashMap::with_capacity(self.endpoints.len());
        let mut lost: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
        self.nodes
            .sort_by(|a, b| (!a.local, &a.name).cmp(&(!b.local, &b.name)));
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.ips.retain(|ip| match owner.entry(*ip) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    true
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    lost.entry(*ip).or_default().push(i);
                    false
                }
            });
        }
        let endpoints = &self.endpoints;
        // The order contested claims are settled in: rank, then name, then
        // place in the list.
        let order = |i: usize| {
            let e = &endpoints[i];
            (rank(i, e), e.namespace.as_str(), e.name.as_str(), i)
        };
        // An endpoint listed twice: its first entry in that order only.
        let mut listed = vec![true; endpoints.len()];
        let mut by_name: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        let mut first: HashMap<(&str, &str), usize> = HashMap::with_capacity(endpoints.len());
        for (i, e) in endpoints.iter().enumerate() {
            let name = (e.namespace.as_str(), e.name.as_str());
            if let Some(&f) = first.get(&name) {
                by_name.entry(name).or_insert_with(|| vec![f]).push(i);
            } else {
                first.insert(name, i);
            }
        }
        drop(first);
        for twice in by_name.into_values() {
            let keep = twice.iter().copied().min_by_key(|&i| order(i));
            for i in twice {
                listed[i] = Some(i) == keep;
            }
        }
        // Uncontested addresses go to their only claimant; contested ones
        // are settled below.
        let mut contested: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate().filter(|(i, _)| listed[*i]) {
            for ip in &e.ips {
                match owner.entry(*ip) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(nodes + i);
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let first = *o.get();
                        contested
                            .entry(*ip)
                            .or_insert_with(|| if first < nodes { vec![] } else { vec![first] })
                            .push(nodes + i);
                    }
                }
            }
        }
        for (ip, mut claimants) in contested {
            claimants.sort_by_cached_key(|&who| order(who - nodes));
            let node_owned = owner[&ip] < nodes;
            let dropped = if node_owned {
                &claimants[..]
            } else {
                owner.insert(ip, claimants[0]);
                &claimants[1..]
            };
            lost.entry(ip).or_default().extend_from_slice(dropped);
        }
        // Each endpoint keeps the addresses it won (once each); one left
        // without any is removed.
        // Nothing is allocated for the usual endpoint, which won them all.
        let mut keep = listed;
        for (i, e) in self.endpoints.iter_mut().enumerate() {
            if !keep[i] {
                continue;
            }
            let won = |at: usize, ip: &IpAddr| {
                owner.get(ip) == Some(&(nodes + i)) && !e.ips[..at].contains(ip)
            };
            if e.ips.iter().enumerate().all(|(at, ip)| won(at, ip)) {
                continue;
            }
            let ips: Vec<IpAddr> = e
                .ips
                .iter()
                .enumerate()
                .filter(|(at, ip)| won(*at, ip))
                .map(|(_, ip)| *ip)
                .collect();
            keep[i] = !ips.is_empty();
            Arc::make_mut(e).ips = ips;
        }
        let name = |who: usize| match who.checked_sub(nodes) {
            None => format!("node {}", self.nodes[who].name),
            Some(i) => format!("{}/{}", self.endpoints[i].namespace, self.endpoints[i].name),
        };
        let conflicts = lost
            .into_iter()
            .map(|(ip, dropped)| AddressConflict {
                ip,
                kept: name(owner[&ip]),
                dropped: dropped.into_iter().map(name).collect(),
            })
            .collect();
        let mut i = 0;
        self.endpoints.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        conflicts
    }
}

/// What [`Inventory::from_spec_with`] remembers between calls.
#[derive(Debug, Default)]
pub struct InventoryMemory {
    /// The cluster name the remembered sets carry.
    cluster: String,
    /// Each namespace's labels as the remembered sets carry them.
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// By the spec's address. The endpoint built from it is
    /// handed out again while its identity stays: the inventory in force
    /// and the one being built share it instead of each holding a copy.
    endpoints: HashMap<usize, Remembered>,
}

/// What was derived from one endpoint spec.
#[derive(Debug)]
struct Remembered {
    /// Never read: held so that the address this is remembered by is not
    /// given to another spec meanwhile.
    _spec: Arc<EndpointSpec>,
    set: LabelSet,
    endpoint: Arc<Endpoint>,
}

/// An identity label set with its canonical text (what identities are
/// numbered from).
#[derive(Debug, Clone)]
struct LabelSet {
    labels: Arc<Labels>,
    text: Arc<str>,
}

/// `namespace/name` of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct EndpointKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An endpoint with its full identity labels and identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub key: EndpointKey,
    /// Pod labels plus the namespace label and the namespace's labels;
    /// shared by every endpoint with the same set (a Deployment's pods).
    pub labels: Arc<Labels>,
    pub identity: Identity,
    pub ips: Vec<IpAddr>,
    pub audit: bool,
    pub interface: Option<String>,
    /// Named container ports (names lowercased).
    pub ports: Vec<NamedPortSpec>,
}

impl Endpoint {
    /// The endpoint a spec describes, with its identity label set.
    fn derive(spec: &EndpointSpec, set: &LabelSet, identity: Identity) -> Self {
        Endpoint {
            key: EndpointKey {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
            },
            labels: set.labels.clone(),
            identity,
            ips: spec.ips.clone(),
            audit: spec.audit,
            interface: spec.interface.clone(),
            ports: spec
                .ports
                .iter()
                .map(|p| NamedPortSpec {
                    name: p.name.to_ascii_lowercase(),
                    ..p.clone()
                })
                .collect(),
        }
    }
}

/// An endpoint in a set found by its key.
#[derive(Debug, Clone)]
struct ByKey(Arc<Endpoint>);

impl Borrow<EndpointKey> for ByKey {
    fn borrow(&self) -> &EndpointKey {
        &self.0.key
    }
}

// By the key alone, as `Borrow` requires: hashed and compared as the key.
impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

/// Why an endpoints file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// The YAML does not fit the format (the path names the field).
    #[error("{file}: {path}: {message}")]
    Format {
        file: String,
        path: String,
        message: String,
    },
    /// Two endpoints or nodes claim one address, or one key is used twice.
    #[error("{file}: {message}")]
    Conflict { file: String, message: String },
}

/// Who is who: endpoints by key and IP, nodes, and identities.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Shared with the inventory built before (and the next) for each
    /// endpoint that did not change: on a large cluster two inventories
    /// live side by side while a change is compiled.
    endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints of `endpoints`, found by their own key (no second
    /// copy of 50,000 keys).
    by_key: HashSet<ByKey>,
    by_ip: HashMap<IpAddr, usize>,
    reserved_ips: HashMap<IpAddr, Identity>,
    /// Every identity in use with its labels (reserved ones included).
    identities: BTreeMap<Identity, Arc<Labels>>,
    nodes: Vec<Node>,
    services: Vec<crate::services::Service>,
}

/// What is known about a peer address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IpOwner<'a> {
    Endpoint(&'a Endpoint),
    Reserved(Identity),
    World,
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Parses the YAML format above; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, InventoryError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let spec: InventoryFile =
            serde_path_to_error::deserialize(de).map_err(|e| InventoryError::Format {
                file: file.to_string(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        Self::from_spec(spec).map_err(|message| InventoryError::Conflict {
            file: file.to_string(),
            message,
        })
    }

    /// [`Inventory::load`] for a cluster named `cluster` (`--cluster-name`).
    pub fn load_in_cluster(path: &Path, cluster: &str) -> Result<Self, InventoryError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            file: file.clone(),
            source,
        })?;
        let de = serde_yaml::Deserializer::from_str(&text);
        let mut spec: InventoryFile =
            serde_path_to_error::deserialize(de).map_err(|e| InventoryError::Format {
                file: file.clone(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        spec.cluster_name = Some(cluster.to_string());
        Self::from_spec(spec).map_err(|message| InventoryError::Conflict { file, message })
    }

    pub fn from_spec(spec: InventoryFile) -> Result<Self, String> {
        Self::from_spec_with(spec, &mut InventoryMemory::default())
    }

    /// [`Inventory::from_spec`] for a source that hands the same
    /// `Arc<EndpointSpec>` again for an endpoint that did not change (the
    /// cluster watch): such an endpoint's identity label set is taken from
    /// `memory` instead of being built again, unless its namespace's
    /// labels or the cluster name changed, and so is the endpoint itself
    /// unless its identity number moved (then the inventory in force and
    /// the new one share it). The result is the same either way (tests in
    /// `tests/inventory_memory.rs`, one a property test, check).
    pub fn from_spec_with(
        spec: InventoryFile,
        memory: &mut InventoryMemory,
    ) -> Result<Self, String> {
        let cluster = spec.cluster_name.as_deref().unwrap_or(DEFAULT_CLUSTER);
        let ns_labels: HashMap<&str, &BTreeMap<String, String>> = spec
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect();
        if memory.cluster != cluster {
            memory.endpoints.clear();
            memory.cluster = cluster.to_string();
        }
        let empty = BTreeMap::new();
        let unchanged = |ns: &str| {
            memory.namespaces.get(ns) == Some(ns_labels.get(ns).copied().unwrap_or(&empty))
        };
        // Pods of one Deployment share their labels, namespace and service
        // account: each such group's label set is built once.
        let mut groups: HashMap<(&BTreeMap<String, String>, &str, &str), LabelSet> = HashMap::new();
        // Taken whole: what this call does not hand back is forgotten, even
        // if it returns early (a set remembered under other namespace
        // labels must never be reused).
        let mut previous = std::mem::take(&mut memory.endpoints);
        let mut derived = Vec::with_capacity(spec.endpoints.len());
        for e in &spec.endpoints {
            let (set, built) = match previous.remove(&(Arc::as_ptr(e) as usize)) {
                Some(r) if unchanged(&e.namespace) => (r.set, Some(r.endpoint)),
                _ => {
                    let account = e.service_account.as_deref().unwrap_or("default");
                    let set = groups
                        .entry((&*e.labels, e.namespace.as_str(), account))
                        .or_insert_with(|| {
                            let mut labels: Labels = e.labels.iter().collect();
                            labels.insert(NAMESPACE_LABEL, &e.namespace);
                            // Cilium's identity labels (pkg/k8s/apis/cilium.io/const.go).
                            labels.insert(CLUSTER_LABEL, cluster);
                            labels.insert(SERVICE_ACCOUNT_LABEL, account);
                            for (k, v) in ns_labels
                                .get(e.namespace.as_str())
                                .copied()
                                .into_iter()
                                .flatten()
                            {
                                labels.insert(&format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
                            }
                            LabelSet {
                                text: labels.canonical().into(),
                                labels: Arc::new(labels),
                            }
                        })
                        .clone();
                    (set, None)
                }
            };
            derived.push((e, set, built));
        }
        drop(previous);
        memory.namespaces = spec
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        // Numbered once per label set: the endpoints of a group share one
        // text, so they are told apart by its address, not by comparing
        // and hashing the text 50,000 times on a large cluster.
        let mut sets: HashMap<*const str, &str> = HashMap::new();
        for (_, set, _) in &derived {
            sets.entry(Arc::as_ptr(&set.text)).or_insert(&*set.text);
        }
        let ids = allocate_canonical(sets.values().copied());
        let by_set: HashMap<*const str, Identity> =
            sets.into_iter().map(|(at, text)| (at, ids[text])).collect();
        let numbers: Vec<Identity> = derived
            .iter()
            .map(|(_, set, _)| by_set[&Arc::as_ptr(&set.text)])
            .collect();
        drop((ids, by_set));
        // Sized up front: kept until the next change, and grown by
        // doubling they would hold up to twice the room they use.
        let mut inv = Inventory {
            endpoints: Vec::with_capacity(derived.len()),
            by_key: HashSet::with_capacity(derived.len()),
            by_ip: HashMap::with_capacity(derived.len()),
            ..Inventory::default()
        };
        for (id, _) in Identity::RESERVED {
            inv.identities.insert(
                id,
                Arc::new(Identity::reserved_labels(id).unwrap_or_default()),
            );
        }
        let mut remembered = HashMap::with_capacity(derived.len());
        for ((spec, set, built), identity) in derived.into_iter().zip(numbers) {
            // Numbers are hashes of the sets' texts, a collision taking the
            // next free number in text order: a set's number moves when a
            // set it collides with appears before it, or goes.
            let e = match built {
                Some(e) if e.identity == identity => e,
                _ => Arc::new(Endpoint::derive(spec, &set, identity)),
            };
            inv.identities
                .entry(e.identity)
                .or_insert_with(|| e.labels.clone());
            let index = inv.endpoints.len();
            if !inv.by_key.insert(ByKey(e.clone())) {
                return Err(format!("endpoint {} is listed twice", e.key));
            }
            for ip in &e.ips {
                if let Some(other) = inv.by_ip.insert(*ip, index) {
                    return Err(format!(
                        "address {ip} belongs to both {} and {}",
                        inv.endpoints[other].key, e.key
                    ));
                }
            }
            remembered.insert(
                Arc::as_ptr(spec) as usize,
                Remembered {
                    _spec: spec.clone(),
                    set,
                    endpoint: e.clone(),
                },
            );
            inv.endpoints.push(e);
        }
        memory.endpoints = remembered;
        for node in &spec.nodes {
            inv.nodes.push(Node {
                name: node.name.clone(),
                labels: node.labels.iter().collect(),
                local: node.local,
            });
            let id = if node.local {
                Identity::HOST
            } else {
                Identity::REMOTE_NODE
            };
            for ip in &node.ips {
                if inv.by_ip.contains_key(ip) || inv.reserved_ips.insert(*ip, id).is_some() {
                    return Err(format!("node {} address {ip} is already in use", node.name));
                }
            }
        }
        for ip in &spec.kube_apiserver {
            inv.reserved_ips
                .entry(*ip)
                .or_insert(Identity::KUBE_APISERVER);
        }
        inv.services = crate::services::resolve(&spec.services, &inv.endpoints);
        Ok(inv)
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.by_key.get(key).map(|e| &*e.0)
    }

    /// Finds an endpoint by `namespace/name`, or by bare name if unique.
    pub fn find(&self, reference: &str) -> Option<&Endpoint> {
        if let Some((ns, name)) = reference.split_once('/') {
            return self.endpoint(&EndpointKey {
                namespace: ns.to_string(),
                name: name.to_string(),
            });
        }
        let mut matching = self.endpoints.iter().filter(|e| e.key.name == reference);
        match (matching.next(), matching.next()) {
            (Some(e), None) => Some(e),
            _ => None,
        }
    }

    /// Who owns an address: an endpoint, a node/apiserver, or the world.
    pub fn owner(&self, ip: IpAddr) -> IpOwner<'_> {
        if let Some(i) = self.by_ip.get(&ip) {
            return IpOwner::Endpoint(&self.endpoints[*i]);
        }
        match self.reserved_ips.get(&ip) {
            Some(id) => IpOwner::Reserved(*id),
            None => IpOwner::World,
        }
    }

    /// The identity of an address: its endpoint's, a reserved one, or world.
    pub fn identity_of(&self, ip: IpAddr) -> Identity {
        match self.owner(ip) {
            IpOwner::Endpoint(e) => e.identity,
            IpOwner::Reserved(id) => id,
            IpOwner::World => Identity::WORLD,
        }
    }

    /// Node and API server addresses with their reserved identities.
    pub fn reserved_addresses(&self) -> impl Iterator<Item = (IpAddr, Identity)> + '_ {
        self.reserved_ips.iter().map(|(ip, id)| (*ip, *id))
    }

    /// The nodes with their labels.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The Services with their backends.
    pub fn services(&self) -> &[crate::services::Service] {
        &self.services
    }

    /// Every identity in use, reserved ones included, with its labels.
    pub fn identities(&self) -> &BTreeMap<Identity, Arc<Labels>> {
        &self.identities
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn endpoint(name: &str, ips: &[&str]) -> Arc<EndpointSpec> {
        Arc::new(EndpointSpec {
            name: name.into(),
            namespace: "prod".into(),
            labels: Default::default(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            audit: false,
            interface: None,
            service_account: None,
            ports: Vec::new(),
        })
    }

    fn node(name: &str, local: bool, ips: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            local,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn a_duplicate_address_is_an_error_in_a_file() {
        let text = "endpoints:\n  - {name: a, ips: [10.0.0.1]}\n  - {name: b, ips: [10.0.0.1]}\n";
        let err = Inventory::parse(text, "endpoints.yaml").unwrap_err();
        assert!(
            err.to_string().contains("10.0.0.1 belongs to both"),
            "{err}"
        );
    }

    #[test]
    fn the_best_ranked_endpoint_keeps_a_shared_address_and_the_other_keeps_the_rest() {
        let mut file = InventoryFile {
            endpoints: vec![
                endpoint("old", &["10.0.0.1", "fd00::1"]),
                endpoint("new", &["10.0.0.1"]),
                endpoint("alone", &["10.0.0.9"]),
            ],
            ..InventoryFile::default()
        };
        // "new" ranks first (as the newer pod does in Kubernetes mode).
        let conflicts = file.settle_addresses(|_, e| e.name != "new");
        assert_eq!(
            conflicts,
            [AddressConflict {
                ip: ip("10.0.0.1"),
                kept: "prod/new".into(),
                dropped: vec!["prod/old".into()],
            }]
        );
        assert_eq!(
            conflicts[0].to_string(),
            "address 10.0.0.1 is claimed by prod/new and prod/old: prod/new keeps it"
        );
        let inv = Inventory::from_spec(file).expect("settled: accepted");
        let owner = |s: &str| match inv.owner(ip(s)) {
            IpOwner::Endpoint(e) => e.key.name.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(owner("10.0.0.1"), "new");
        assert_eq!(owner("fd00::1"), "old", "the loser keeps its other address");
        assert_eq!(owner("10.0.0.9"), "alone");
    }

    #[test]
    fn an_endpoint_left_without_addresses_is_removed_and_ties_go_by_name() {
        let mut file = InventoryFile {
            endpoints: vec![endpoint("b", &["10.0.0.1"]), endpoint("a", &["10.0.0.1"])],
            ..InventoryFile::default()
        };
        let conflicts = file.settle_addresses(|_, _| 0);
        assert_eq!(conflicts[0].kept, "prod/a");
        let names: Vec<&str> = file.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn nodes_keep_their_addresses_the_local_node_first() {
        let mut file = InventoryFile {
            endpoints: vec![endpoint("pod", &["192.0.2.1", "10.0.0.1"])],
            nodes: vec![
                node("a-old-name", false, &["192.0.2.1", "192.0.2.2"]),
                node("this", true, &["192.0.2.2"]),
            ],
            ..InventoryFile::default()
        };
        let conflicts = file.settle_addresses(|_, _| 0);
        let by_ip: BTreeMap<IpAddr, (&str, Vec<String>)> = conflicts
            .iter()
            .map(|c| (c.ip, (c.kept.as_str(), c.dropped.clone())))
            .collect();
        assert_eq!(
            by_ip[&ip("192.0.2.2")],
            ("node this", vec!["node a-old-name".to_string()])
        );
        assert_eq!(
            by_ip[&ip("192.0.2.1")],
            ("node a-old-name", vec!["prod/pod".to_string()])
        );
        let inv = Inventory::from_spec(file).expect("settled: accepted");
        assert_eq!(inv.identity_of(ip("192.0.2.2")), Identity::HOST);
        assert_eq!(inv.identity_of(ip("192.0.2.1")), Identity::REMOTE_NODE);
        assert!(matches!(inv.owner(ip("10.0.0.1")), IpOwner::Endpoint(_)));
    }

    #[test]
    fn nothing_to_settle_changes_nothing() {
        let mut file = InventoryFile {
            endpoints: vec![endpoint("a", &["10.0.0.1"]), endpoint("nic", &[])],
            nodes: vec![node("n", true, &["192.0.2.1"])],
            ..InventoryFile::default()
        };
        let before = file.clone();
        assert!(file.settle_addresses(|_, _| 0).is_empty());
        assert_eq!(file, before);
    }

    /// Label sets that print alike are still told apart: an endpoints file
    /// (unlike the API server) allows `,` and `=` in values, and one
    /// identity for both pods would let a rule for `b: "2"` admit the pod
    /// without that label.
    #[test]
    fn label_sets_that_print_alike_get_identities_of_their_own() {
        let inv = Inventory::parse(
            "endpoints:\n\
             - {name: one, labels: {a: \"1,b=2\"}, ips: [10.0.0.1]}\n\
             - {name: two, labels: {a: \"1\", b: \"2\"}, ips: [10.0.0.2]}\n",
            "test",
        )
        .unwrap();
        let (one, two) = (inv.find("one").unwrap(), inv.find("two").unwrap());
        assert_eq!(one.labels.to_string(), two.labels.to_string(), "the trap");
        assert_ne!(one.identity, two.identity);
        assert_eq!(inv.identities()[&one.identity], one.labels);
        assert_eq!(inv.identities()[&two.identity], two.labels);
    }
}
