//! What the agent is told: flags (or `TOLLGATE_*` variables) become one
//! [`AgentConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dns_proxy::DenyResponse;
use policy::ResolveOptions;

/// Everything the agent is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: Source,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub dns_port: u16,
    /// The HTTP proxy's transparent port (L7 HTTP rules).
    pub http_port: u16,
    pub metrics_addr: SocketAddr,
    pub cache: fqdn_cache::Config,
    pub deny_response: DenyResponse,
    pub dns_cache_entries: u64,
    /// DNS proxy worker threads (0: one per core).
    pub dns_workers: usize,
    /// HTTP proxy worker threads (0: one per core).
    pub http_workers: usize,
    /// What one pod may cost the others.
    pub limits: Limits,
    pub resolve: ResolveOptions,
    /// How often policy and endpoint files are checked for changes (local
    /// mode); in Kubernetes mode, local pods still without a veth are
    /// looked for again every four of these.
    pub reload_interval: Duration,
    /// How often expired FQDN entries are removed (GC).
    pub gc_interval: Duration,
    /// Remove everything pinned on shutdown instead of leaving it enforcing.
    pub uninstall_on_exit: bool,
    /// The cluster name pods carry as `io.cilium.k8s.policy.cluster`.
    pub cluster_name: String,
    /// The agent's own pod (Kubernetes mode, from the downward API): when
    /// its DaemonSet replaces it, it is released so the successor starts
    /// while this agent still serves (see `agent::handover`).
    pub own_pod: Option<OwnPod>,
    /// How long a stopping agent whose pod was released waits for its
    /// successor to take over its sockets.
    pub handover_wait: Duration,
}

/// A pod by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPod {
    pub namespace: String,
    pub name: String,
}

/// Per-pod and overall bounds on the DNS path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Queries one pod may have in flight (0: no cap).
    pub dns_in_flight_per_pod: usize,
    /// Queries in flight over all pods (0: no cap).
    pub dns_in_flight: usize,
    /// UDP DNS datagrams per second one pod may send (a second's worth of
    /// burst); the datapath drops more on the pod's interface, before the
    /// proxy's socket (0: no limit).
    pub dns_queries_per_second_per_pod: u32,
    /// New names per second one pod may look up, on average (0: no limit).
    pub new_names_per_second: u32,
    /// New names one pod may look up in a burst.
    pub new_names_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            dns_in_flight_per_pod: 128,
            dns_in_flight: 4096,
            dns_queries_per_second_per_pod: 2000,
            new_names_per_second: 200,
            new_names_burst: 1000,
        }
    }
}

/// Where policies and endpoints come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory of policy files and an endpoints file, reloaded on change.
    Files {
        policies: PathBuf,
        endpoints: PathBuf,
    },
    /// The API server: `kubeconfig`, or the in-cluster service account when
    /// `None`; `node` is this node's name (its pods are the local endpoints).
    Kube {
        kubeconfig: Option<PathBuf>,
        node: String,
    },
}

/// Where the agent writes its state by default.
pub fn default_state_dir() -> &'static Path {
    Path::new("/var/lib/tollgate")
}
