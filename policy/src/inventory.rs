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
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::identity::{allocate, Identity};
use crate::labels::{Labels, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventoryFile {
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub kube_apiserver: Vec<IpAddr>,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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
    /// Pod labels plus the namespace label and the namespace's labels.
    pub labels: Labels,
    pub identity: Identity,
    pub ips: Vec<IpAddr>,
    pub audit: bool,
    pub interface: Option<String>,
    /// Named container ports (names lowercased).
    pub ports: Vec<NamedPortSpec>,
}

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
    endpoints: Vec<Endpoint>,
    by_key: HashMap<EndpointKey, usize>,
    by_ip: HashMap<IpAddr, usize>,
    reserved_ips: HashMap<IpAddr, Identity>,
    /// Every identity in use with its labels (reserved ones included).
    identities: BTreeMap<Identity, Labels>,
    nodes: Vec<Node>,
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
        let cluster = spec.cluster_name.as_deref().unwrap_or(DEFAULT_CLUSTER);
        let ns_labels: HashMap<&str, &BTreeMap<String, String>> = spec
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect();
        let mut endpoints = Vec::new();
        for e in &spec.endpoints {
            let mut labels: Labels = e.labels.iter().collect();
            labels.insert(NAMESPACE_LABEL, &e.namespace);
            // Cilium's identity labels (pkg/k8s/apis/cilium.io/const.go).
            labels.insert(CLUSTER_LABEL, cluster);
            labels.insert(
                SERVICE_ACCOUNT_LABEL,
                e.service_account.as_deref().unwrap_or("default"),
            );
            for (k, v) in ns_labels
                .get(e.namespace.as_str())
                .copied()
                .into_iter()
                .flatten()
            {
                labels.insert(&format!("{NAMESPACE_LABELS_PREFIX}{k}"), v);
            }
            endpoints.push(Endpoint {
                key: EndpointKey {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                },
                labels,
                identity: Identity::UNKNOWN,
                ips: e.ips.clone(),
                audit: e.audit,
                interface: e.interface.clone(),
                ports: e
                    .ports
                    .iter()
                    .map(|p| NamedPortSpec {
                        name: p.name.to_ascii_lowercase(),
                        ..p.clone()
                    })
                    .collect(),
            });
        }
        let ids = allocate(endpoints.iter().map(|e| &e.labels));
        let mut inv = Inventory::default();
        for (id, _) in Identity::RESERVED {
            inv.identities
                .insert(id, Identity::reserved_labels(id).unwrap_or_default());
        }
        for mut e in endpoints {
            e.identity = ids[&e.labels];
            inv.identities.insert(e.identity, e.labels.clone());
            let index = inv.endpoints.len();
            if inv.by_key.insert(e.key.clone(), index).is_some() {
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
            inv.endpoints.push(e);
        }
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
        Ok(inv)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn endpoint(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.by_key.get(key).map(|i| &self.endpoints[*i])
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

    /// Every identity in use, reserved ones included, with its labels.
    pub fn identities(&self) -> &BTreeMap<Identity, Labels> {
        &self.identities
    }
}
