//! Kubernetes Services: the addresses pods connect to (ClusterIPs) and the
//! backends behind them. The datapath sends a pod's flow to a Service
//! address to one backend before the policy decides, so rules see the
//! backend; `toServices` rules select the backends of the Services they name.
//!
//! In the endpoints file (local mode, `policy explain`):
//!
//! ```yaml
//! services:
//!   - name: kube-dns
//!     namespace: kube-system
//!     labels: {k8s-app: kube-dns}       # the Service's own labels (k8sServiceSelector)
//!     ips: [10.96.0.10]                 # its ClusterIPs
//!     selector: {k8s-app: kube-dns}     # its backends: the endpoints of its namespace
//!                                       # with these labels, at targetPort
//!     ports:
//!       - {name: dns, port: 53, protocol: UDP, targetPort: 53}
//!       - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}  # a named port
//!     # or the backends themselves (what Kubernetes mode reads from
//!     # EndpointSlices; they win over `selector`, which `toServices` still
//!     # uses); ports by the Service port's name:
//!     # backends: [{ip: 10.0.4.10, ports: {dns: 53, dns-tcp: 53}}]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::inventory::Endpoint;
use crate::labels::{Labels, NAMESPACE_LABEL};
use crate::model::ProtocolSpec;

/// A Service as the endpoints file (or the Kubernetes watch) gives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its ClusterIPs (none: headless, nothing to translate).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    /// Pod labels of its backends (`spec.selector`); absent or empty: a
    /// Service without a selector, whose backends are listed.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Backends given directly (Kubernetes mode: the ready endpoints of its
    /// EndpointSlices); absent: the endpoints `selector` picks.
    #[serde(default)]
    pub backends: Option<Vec<BackendSpec>>,
}

fn default_namespace() -> String {
    crate::validate::DEFAULT_NAMESPACE.to_string()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePortSpec {
    /// Needed when the Service has several ports (backends list their
    /// ports by it).
    #[serde(default)]
    pub name: String,
    pub port: u16,
    /// `TCP` (the default, as in Kubernetes), `UDP` or `SCTP`.
    #[serde(default = "tcp")]
    pub protocol: ProtocolSpec,
    /// The backends' port: a number, or the name of a container port;
    /// absent: `port`.
    #[serde(default)]
    pub target_port: Option<TargetPort>,
}

fn tcp() -> ProtocolSpec {
    ProtocolSpec::Tcp
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A ready backend with its port for each Service port, by name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    pub ip: IpAddr,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

/// A Service with its backends resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// Empty: no selector (its backends are addresses, not pods).
    pub selector: BTreeMap<String, String>,
    pub frontends: Vec<Frontend>,
}

/// One ClusterIP and port, and where the traffic sent to it may go.
#[derive(Debug, Clone, PartialEq)]
pub struct Frontend {
    pub ip: IpAddr,
    pub protocol: ProtocolSpec,
    pub port: u16,
    /// `(address, port)`, of the frontend's family, sorted, no duplicates.
    pub backends: Vec<(IpAddr, u16)>,
}

impl Service {
    /// Every backend address of any port.
    pub fn backend_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let mut ips: Vec<IpAddr> = self
            .frontends
            .iter()
            .flat_map(|f| f.backends.iter().map(|(ip, _)| *ip))
            .collect();
        ips.sort();
        ips.dedup();
        ips.into_iter()
    }
}

/// Resolves each Service's backends: the listed ones, or the endpoints its
/// selector picks in its namespace (at the target port; an endpoint without
/// the named target port is not a backend of that port).
pub fn resolve(specs: &[ServiceSpec], endpoints: &[Arc<Endpoint>]) -> Vec<Service> {
    specs
        .iter()
        .map(|spec| {
            let selected: Vec<&Endpoint> = if spec.selector.is_empty() || spec.backends.is_some() {
                Vec::new()
            } else {
                endpoints
                    .iter()
                    .map(|e| &**e)
                    .filter(|e| {
                        e.labels.get(NAMESPACE_LABEL) == Some(spec.namespace.as_str())
                            && spec
                                .selector
                                .iter()
                                .all(|(k, v)| e.labels.get(k) == Some(v.as_str()))
                    })
                    .collect()
            };
            let mut frontends = Vec::new();
            for ip in &spec.ips {
                for port in &spec.ports {
                    let mut backends: Vec<(IpAddr, u16)> = if let Some(listed) = &spec.backends {
                        listed
                            .iter()
                            .filter_map(|b| Some((b.ip, backend_port(b, port, &spec.ports)?)))
                            .collect()
                    } else {
                        selected
                            .iter()
                            .filter_map(|e| Some((e, target_port(e, port)?)))
                            .flat_map(|(e, p)| e.ips.iter().map(move |ip| (*ip, p)))
                            .collect()
                    };
                    backends.retain(|(b, _)| b.is_ipv4() == ip.is_ipv4());
                    backends.sort();
                    backends.dedup();
                    frontends.push(Frontend {
                        ip: *ip,
                        protocol: port.protocol,
                        port: port.port,
                        backends,
                    });
                }
            }
            Service {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                labels: spec.labels.iter().collect(),
                selector: spec.selector.clone(),
                frontends,
            }
        })
        .collect()
}

/// A listed backend's port for a Service port: by the port's name; a
/// single-port Service's backends may also list theirs under any name.
fn backend_port(b: &BackendSpec, port: &ServicePortSpec, all: &[ServicePortSpec]) -> Option<u16> {
    match b.ports.get(&port.name) {
        Some(p) => Some(*p),
        None if all.len() == 1 && b.ports.len() == 1 => b.ports.values().next().copied(),
        None if b.ports.is_empty() => Some(match &port.target_port {
            Some(TargetPort::Number(n)) => *n,
            _ => port.port,
        }),
        None => None,
    }
}

fn target_port(e: &Endpoint, port: &ServicePortSpec) -> Option<u16> {
    match &port.target_port {
        None => Some(port.port),
        Some(TargetPort::Number(n)) => Some(*n),
        Some(TargetPort::Name(name)) => e
            .ports
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name) && p.protocol == port.protocol)
            .map(|p| p.port),
    }
}
