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
    pub resolve: ResolveOptions,
    /// How often policy and endpoint files are checked for changes (local
    /// mode); in Kubernetes mode, local pods still without a veth are
    /// looked for again every four of these.
    pub reload_interval: Duration,
    /// How often expired FQDN entries are removed (GC).
    pub gc_interval: Duration,
    /// Remove everything pinned on shutdown instead of leaving it enforcing.
    pub uninstall_on_exit: bool,
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
