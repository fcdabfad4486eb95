//! `tollgate status`: one screen for the node. The agent answers each
//! connection to `status.sock` in its state dir (root only, like the events
//! socket: it names pods and what they were denied) with one [`Report`] as
//! JSON; the CLI prints it as [`Report::text`].
//!
//! Never: I/O in the report itself. It is a value, built by the agent from
//! the node's state and rendered here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::events::FlowLine;

/// The socket's name in the state dir.
pub const SOCKET: &str = "status.sock";

/// How many recent drops the agent keeps for status.
pub const RECENT_DROPS: usize = 20;

/// Everything `tollgate status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds, when the report was made.
    pub now: u64,
    /// Where policies and endpoints come from.
    pub source: Source,
    pub last_reload: Option<Reload>,
    /// The policy objects in force, sorted.
    pub policies: Vec<PolicyInForce>,
    /// This node's pods (those with a veth the datapath is on).
    pub endpoints: Vec<LocalEndpoint>,
    /// Names and addresses learned through DNS, over all pods.
    pub names_learned: usize,
    pub addresses_learned: usize,
    pub maps: Vec<MapFill>,
    /// Failed map writes since start.
    pub write_errors: u64,
    /// Datapath packet counters by reason.
    pub counters: BTreeMap<String, u64>,
    /// The latest denied flows, refused queries and denied requests, oldest first.
    pub recent_drops: Vec<FlowLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    Files { policies: String, endpoints: String },
    Kubernetes { node: String },
}

/// One reload attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// Unix seconds.
    pub at: u64,
    pub ok: bool,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyInForce {
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`, `NetworkPolicy`.
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// The file it was read from (local mode).
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    /// `namespace/name`.
    pub pod: String,
    pub interface: String,
    pub ifindex: u32,
    pub identity: u32,
    pub audit: bool,
    /// Default deny is on in that direction (some policy selects the pod).
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    /// Learned addresses the pod may reach.
    pub fqdn_addresses: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: Option<u32>,
}

/// What the agent keeps between reports: the policies in force and the
/// latest drops.
#[derive(Default)]
pub struct Board {
    policies: Mutex<Vec<PolicyInForce>>,
    drops: Mutex<VecDeque<FlowLine>>,
}

impl Board {
    pub fn set_policies(&self, mut policies: Vec<PolicyInForce>) {
        policies.sort();
        *self.policies.lock().unwrap_or_else(|e| e.into_inner()) = policies;
    }

    pub fn policies(&self) -> Vec<PolicyInForce> {
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps `line` if it is a drop (the latest [`RECENT_DROPS`]).
    pub fn observe(&self, line: &FlowLine) {
        if !matches!(&*line.verdict, "DENIED" | "REFUSED" | "DROPPED") {
            return;
        }
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        if drops.len() == RECENT_DROPS {
            drops.pop_front();
        }
        drops.push_back(line.clone());
    }

    pub fn recent_drops(&self) -> Vec<FlowLine> {
        self.drops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl PolicyInForce {
    pub fn of(p: &policy::Policy) -> Self {
        Self {
            kind: match p.name.kind {
                policy::PolicyKind::NetworkPolicy => "NetworkPolicy",
                policy::PolicyKind::Clusterwide => "CiliumClusterwideNetworkPolicy",
                _ => "CiliumNetworkPolicy",
            }
            .into(),
            namespace: p.name.namespace.clone(),
            name: p.name.name.clone(),
            file: p.source.as_ref().map(|f| f.display().to_string()),
        }
    }
}

fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h{:02}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d ago", s / 86400),
    }
}

impl Report {
    /// The screen `tollgate status` prints.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Agent:      up (tollgate {}), started {}",
            self.version,
            ago(self.now, self.started_at)
        );
        let _ = match &self.source {
            Source::Files {
                policies,
                endpoints,
            } => writeln!(
                o,
                "Source:     files: policies {policies}, endpoints {endpoints}"
            ),
            Source::Kubernetes { node } => {
                writeln!(o, "Source:     Kubernetes API server, node {node}")
            }
        };
        match &self.last_reload {
            Some(r) if r.ok => {
                let _ = writeln!(o, "Reload:     OK, {}", ago(self.now, r.at));
            }
            Some(r) => {
                let _ = writeln!(
                    o,
                    "Reload:     FAILED {} ({} error(s))",
                    ago(self.now, r.at),
                    r.errors.len()
                );
                for e in &r.errors {
                    let _ = writeln!(o, "            {e}");
                }
            }
            None => {
                let _ = writeln!(o, "Reload:     none yet");
            }
        }
        let _ = writeln!(o, "\nPolicies in force: {}", self.policies.len());
        for p in &self.policies {
            let name = match &p.namespace {
                Some(ns) => format!("{ns}/{}", p.name),
                None => p.name.clone(),
            };
            let file = p
                .file
                .as_deref()
                .map(|f| format!("  {f}"))
                .unwrap_or_default();
            let _ = writeln!(o, "  {:<32} {name}{file}", p.kind);
        }
        let _ = writeln!(o, "\nEndpoints on this node: {}", self.endpoints.len());
        if !self.endpoints.is_empty() {
            let _ = writeln!(
                o,
                "  {:<28} {:<16} {:>9}  {:<8} {:<15} {:>9}",
                "POD", "INTERFACE", "IDENTITY", "MODE", "DEFAULT-DENY", "FQDN-IPS"
            );
        }
        for e in &self.endpoints {
            let deny = match (e.ingress_enforced, e.egress_enforced) {
                (true, true) => "ingress+egress",
                (true, false) => "ingress",
                (false, true) => "egress",
                (false, false) => "-",
            };
            let _ = writeln!(
                o,
                "  {:<28} {:<16} {:>9}  {:<8} {:<15} {:>9}",
                e.pod,
                e.interface,
                e.identity,
                if e.audit { "audit" } else { "enforce" },
                deny,
                e.fqdn_addresses
            );
        }
        let _ = writeln!(
            o,
            "\nNames learned: {} name(s), {} address(es)",
            self.names_learned, self.addresses_learned
        );
        let _ = writeln!(o, "\nMaps:");
        for m in &self.maps {
            let fill = match m.capacity {
                Some(c) if c > 0 => format!(
                    "{:>8} / {:<8} {:5.1}%",
                    m.entries,
                    c,
                    100.0 * m.entries as f64 / f64::from(c)
                ),
                _ => format!("{:>8}", m.entries),
            };
            let _ = writeln!(o, "  {:<20} {fill}", m.map);
        }
        let _ = writeln!(o, "  map write errors: {}", self.write_errors);
        let drops: u64 = self
            .counters
            .iter()
            .filter(|(k, _)| k.starts_with("drop_"))
            .map(|(_, v)| v)
            .sum();
        let _ = writeln!(
            o,
            "\nRecent drops ({} packet(s) dropped since the datapath was loaded):",
            drops
        );
        if self.recent_drops.is_empty() {
            let _ = writeln!(o, "  none since the agent started");
        }
        for d in &self.recent_drops {
            let when = d
                .time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| ago(self.now, t.as_second().max(0) as u64))
                .unwrap_or_default();
            let _ = writeln!(o, "  {when:>8}  {}", d.text());
        }
        o
    }
}
