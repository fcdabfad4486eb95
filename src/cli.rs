//! Command-line interface (clap). Exit codes are part of the interface:
//! scripts and tests rely on them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "DNS-aware egress gateway for Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and explain CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy /
    /// NetworkPolicy files (with CiliumCIDRGroups).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// FQDN selector tools.
    #[command(subcommand)]
    Fqdn(FqdnCommand),
    /// The eBPF datapath on this node.
    #[command(subcommand)]
    Datapath(DatapathCommand),
    /// Run the node agent: local mode (--policies + --endpoints) or
    /// Kubernetes mode (--kubernetes --node-name). Needs root. Stops on
    /// SIGINT/SIGTERM, leaving enforcement pinned unless --uninstall-on-exit.
    /// Every setting can also come from its TOLLGATE_* environment variable
    /// (the DaemonSet's ConfigMap).
    Agent(AgentArgs),
    /// Follow the agent's flow and DNS events.
    Observe(ObserveArgs),
    /// One screen for this node: the agent, policies in force, endpoints,
    /// names learned, map fill, the last reload, recent drops. Exit 0: the
    /// agent answered; 1: it did not.
    Status(StatusArgs),
    /// Whether this node's agent answers `/healthz`: exit 0 yes, 1 no. With
    /// a pod (POD_NAME and POD_NAMESPACE, as in the DaemonSet's readiness
    /// probe) only that pod's agent counts: during an upgrade the previous
    /// agent answers on the same port until the new one has taken its
    /// sockets over (docs/upgrades.md).
    Healthz(HealthzArgs),
}

#[derive(Debug, clap::Args)]
pub struct HealthzArgs {
    /// Address of the agent's /metrics and /healthz.
    #[arg(long, env = "TOLLGATE_METRICS_ADDR", default_value = "127.0.0.1:9963")]
    pub metrics_addr: std::net::SocketAddr,
    /// The pod whose agent must be the one answering.
    #[arg(long, env = "POD_NAME", requires = "pod_namespace")]
    pub pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", requires = "pod_name")]
    pub pod_namespace: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's state dir (where its status socket is).
    #[arg(long, env = "TOLLGATE_STATE_DIR", default_value = "/var/lib/tollgate")]
    pub state_dir: PathBuf,
    /// Where a stopped agent's enforcement would be pinned.
    #[arg(long, env = "TOLLGATE_PIN_DIR", default_value = egress_bpf::kernel::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["policies", "kubernetes"])))]
pub struct AgentArgs {
    /// Local mode: directory of CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy files (reloaded on change).
    #[arg(long, requires = "endpoints")]
    pub policies: Option<PathBuf>,
    /// Local mode: endpoints file (same format as `policy explain`; `interface` marks local pods).
    #[arg(long, requires = "policies")]
    pub endpoints: Option<PathBuf>,
    /// Kubernetes mode: watch policies, pods, namespaces and nodes.
    #[arg(long, env = "TOLLGATE_KUBERNETES", requires = "node_name")]
    pub kubernetes: bool,
    /// Kubernetes mode: this node's name (its pods are the local endpoints).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubernetes mode: the agent's own pod (from the downward API), released
    /// from its DaemonSet when replaced so the successor starts while this
    /// agent serves.
    #[arg(long, env = "POD_NAME", requires = "pod_namespace")]
    pub pod_name: Option<String>,
    /// Kubernetes mode: the namespace of the agent's own pod.
    #[arg(long, env = "POD_NAMESPACE", requires = "pod_name")]
    pub pod_namespace: Option<String>,
    /// Seconds a stopping agent whose pod was released waits for its
    /// successor to take over its sockets.
    #[arg(long, env = "TOLLGATE_HANDOVER_WAIT", default_value_t = 20)]
    pub handover_wait: u64,
    /// Kubernetes mode: kubeconfig file; without it, the in-cluster service account.
    #[arg(long, env = "TOLLGATE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Where the FQDN cache is saved and the events socket lives.
    #[arg(long, env = "TOLLGATE_STATE_DIR", default_value = "/var/lib/tollgate")]
    pub state_dir: PathBuf,
    #[arg(long, env = "TOLLGATE_PIN_DIR", default_value = egress_bpf::kernel::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The DNS proxy's transparent port (TPROXY target).
    #[arg(long, env = "TOLLGATE_DNS_PORT", default_value_t = 15053)]
    pub dns_port: u16,
    /// The HTTP proxy's transparent port (L7 HTTP rules; TPROXY target).
    #[arg(long, env = "TOLLGATE_HTTP_PORT", default_value_t = 15080)]
    pub http_port: u16,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "TOLLGATE_METRICS_ADDR", default_value = "127.0.0.1:9963")]
    pub metrics_addr: std::net::SocketAddr,
    /// Seconds a learned IP stays allowed at least, whatever its TTL.
    #[arg(long, env = "TOLLGATE_MIN_TTL", default_value_t = 0)]
    pub min_ttl: u32,
    /// Seconds a TTL-0 (or shorter) answer stays usable for the connection that follows.
    #[arg(long, env = "TOLLGATE_TTL_FLOOR", default_value_t = 2)]
    pub ttl_floor: u32,
    /// Most IPs kept per name per pod (oldest dropped first).
    #[arg(long, env = "TOLLGATE_MAX_IPS_PER_NAME", default_value_t = 64)]
    pub max_ips_per_name: usize,
    /// Most names kept per pod (least recently learned dropped first).
    #[arg(long, env = "TOLLGATE_MAX_NAMES_PER_POD", default_value_t = 50_000)]
    pub max_names_per_pod: usize,
    /// Seconds an expired IP with a live connection stays nameable after it closes.
    #[arg(long, env = "TOLLGATE_ZOMBIE_GRACE", default_value_t = 10)]
    pub zombie_grace: u32,
    /// Answer to a name outside the DNS rules.
    #[arg(long, env = "TOLLGATE_DENY_RESPONSE", value_enum, default_value_t = DenyCode::Refused)]
    pub deny_response: DenyCode,
    /// Answer cache size in entries (0 turns the cache off).
    #[arg(long, env = "TOLLGATE_DNS_CACHE_ENTRIES", default_value_t = 10_000)]
    pub dns_cache_entries: u64,
    /// DNS proxy worker threads (0: one per core, at most 8).
    #[arg(long, env = "TOLLGATE_DNS_WORKERS", default_value_t = 0)]
    pub dns_workers: usize,
    /// HTTP proxy worker threads (0: one per core, at most 8).
    #[arg(long, env = "TOLLGATE_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// DNS queries one pod may have in flight; more are dropped unanswered (0: no cap).
    #[arg(
        long,
        env = "TOLLGATE_MAX_DNS_IN_FLIGHT_PER_POD",
        default_value_t = 128
    )]
    pub max_dns_in_flight_per_pod: usize,
    /// DNS queries in flight over all pods; more are dropped on receipt (0: no cap).
    #[arg(long, env = "TOLLGATE_MAX_DNS_IN_FLIGHT", default_value_t = 4096)]
    pub max_dns_in_flight: usize,
    /// UDP DNS queries per second one pod may send, with a second's worth of burst; more are
    /// dropped on the pod's interface, before the proxy's socket (0: no limit).
    #[arg(long, env = "TOLLGATE_MAX_DNS_QPS_PER_POD", default_value_t = 2000)]
    pub max_dns_qps_per_pod: u32,
    /// New names (not yet learned) one pod may look up per second, on average;
    /// past it lookups of new names get SERVFAIL (0: no limit).
    #[arg(long, env = "TOLLGATE_NEW_NAMES_PER_SECOND", default_value_t = 200)]
    pub new_names_per_second: u32,
    /// How many new names a pod may look up in a burst before the rate applies.
    #[arg(long, env = "TOLLGATE_NEW_NAMES_BURST", default_value_t = 1000)]
    pub new_names_burst: u32,
    /// Audit mode for every pod: would-be drops pass and are reported as AUDIT.
    #[arg(long, env = "TOLLGATE_AUDIT")]
    pub audit: bool,
    /// Let policy decide traffic from the node to its own pods too.
    #[arg(long, env = "TOLLGATE_NO_ALLOW_HOST_TO_LOCAL")]
    pub no_allow_host_to_local: bool,
    /// Remove all enforcement when the agent stops.
    #[arg(long, env = "TOLLGATE_UNINSTALL_ON_EXIT")]
    pub uninstall_on_exit: bool,
    /// The cluster's name: every pod carries it as the identity label
    /// `io.cilium.k8s.policy.cluster` (Cilium's `--cluster-name`).
    #[arg(long, env = "TOLLGATE_CLUSTER_NAME", default_value = policy::inventory::DEFAULT_CLUSTER)]
    pub cluster_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DenyCode {
    Refused,
    Nxdomain,
}

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    #[arg(long, default_value = "/var/lib/tollgate")]
    pub state_dir: PathBuf,
    /// Only events of this pod (`namespace/name`, or a name).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only events with this verdict (ALLOWED, DENIED, AUDIT, REDIRECTED, REFUSED, SERVFAIL).
    #[arg(long)]
    pub verdict: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
    /// `text`; `json`: the agent's event lines; `hubble-json`: Hubble's flow
    /// JSON (`observer.GetFlowsResponse`, as `hubble observe -o json`).
    #[arg(long, value_enum, default_value_t = ObserveOutput::Text)]
    pub output: ObserveOutput,
    /// The node name Hubble's JSON carries (default: this host's name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObserveOutput {
    Text,
    Json,
    HubbleJson,
}

#[derive(Debug, Subcommand)]
pub enum DatapathCommand {
    /// Detach every program and remove every pinned map and link, and the
    /// proxy redirect (nftables table, routing rules). Traffic is no longer
    /// enforced afterwards.
    Uninstall {
        /// The agent's pin directory on bpffs.
        #[arg(long, default_value = egress_bpf::kernel::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Packet counters of the running datapath.
    Status {
        #[arg(long, default_value = egress_bpf::kernel::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files or directories. Exit 0: all valid (warnings on
    /// stderr); 1: something is invalid (each error on stderr).
    Check {
        /// Files, or directories whose *.yaml, *.yml and *.json files are read.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Decide one flow and show the deciding rule. Exit 0: allowed (or
    /// audit); 1: denied; 2: bad input.
    Explain {
        /// Policy files or directories.
        #[arg(long = "policies", required = true)]
        policies: Vec<PathBuf>,
        /// The endpoints file (namespaces, pods with labels and IPs, nodes).
        #[arg(long)]
        endpoints: PathBuf,
        /// Source: `namespace/pod` (or a unique pod name), an IP, an entity
        /// (`world`, `host`, `remote-node`, `kube-apiserver`) or a DNS name.
        #[arg(long)]
        from: String,
        /// Destination, in the same forms. A DNS name stands for an IP the
        /// source learned for that name through DNS.
        #[arg(long)]
        to: String,
        /// `PORT/PROTOCOL`, e.g. `443/TCP`; protocol defaults to TCP;
        /// `ICMP` or `ICMPv6` alone for ICMP.
        #[arg(long)]
        port: String,
        /// Treat every endpoint as in audit mode.
        #[arg(long)]
        audit: bool,
        /// Let policy decide traffic from the node to its own pods too.
        #[arg(long)]
        no_allow_host_to_local: bool,
        /// The cluster name pods carry (`io.cilium.k8s.policy.cluster`).
        #[arg(long, default_value = policy::inventory::DEFAULT_CLUSTER)]
        cluster_name: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Suggest CiliumNetworkPolicies from observed traffic: one per
    /// workload (pods grouped by their labels), allowing what passed and
    /// nothing else (docs/suggest.md). Prints YAML; review it, `policy
    /// check` it, then apply it. Exit 0: suggested; 2: bad input.
    Suggest {
        /// Event files as `tollgate observe --output json` writes them (one
        /// JSON event per line); `-` reads stdin.
        #[arg(long = "events", required_unless_present = "from_agent")]
        events: Vec<PathBuf>,
        /// Also (or instead) follow the running agent's events socket for
        /// `--duration` seconds.
        #[arg(long, requires = "duration")]
        from_agent: bool,
        /// How long to follow the agent (`--from-agent`), in seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// The agent's state dir (where its events socket is).
        #[arg(long, env = "TOLLGATE_STATE_DIR", default_value = "/var/lib/tollgate")]
        state_dir: PathBuf,
        /// Only events at or after this time (RFC 3339, e.g. 2026-12-01T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Write the YAML here instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FqdnCommand {
    /// Does a matchPattern match a name? Exit 0: yes; 1: no; 2: invalid pattern.
    Match { pattern: String, name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}
