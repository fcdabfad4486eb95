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
    /// Check and explain CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// FQDN selector tools.
    #[command(subcommand)]
    Fqdn(FqdnCommand),
    /// The eBPF datapath on this node.
    #[command(subcommand)]
    Datapath(DatapathCommand),
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
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
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
