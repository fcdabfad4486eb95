//! The one seam between the agent and the kernel: a small [`Datapath`]
//! trait, implemented by [`crate::kernel::KernelDatapath`] (aya, real maps)
//! and [`crate::fake::FakeDatapath`] (in memory, for unprivileged tests).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use policy::rules::Direction;

use crate::abi;
use crate::desired::{DesiredState, StateDiff};
use crate::redirect::RedirectConfig;

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Loading or attaching a program failed.
    #[error("eBPF program {program}: {message}")]
    Program { program: String, message: String },
    /// A map operation failed, e.g. the map is full (the write is not made:
    /// callers must treat the traffic as not allowed).
    #[error("eBPF map {map}: {message}")]
    Map { map: &'static str, message: String },
    /// Setting up the proxy redirect (nftables, policy routing) failed.
    #[error("proxy redirect: {0}")]
    Redirect(String),
    /// Pins or files under the pin directory.
    #[error("{path}: {message}")]
    Pin { path: String, message: String },
}

/// Per-reason packet counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<&'static str, u64>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowVerdict {
    Allowed,
    Denied,
    /// Would have been denied; passed in audit mode.
    Audit,
    /// Allowed and handed to a proxy (DNS or HTTP).
    Redirected,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowReason {
    DenyRule,
    Fqdn,
    AllowRule,
    NoPolicy,
    DefaultDeny,
    HostToLocal,
    NoEndpoint,
    Unsupported,
    /// The HTTP proxy's own connection to a pod (it applied the policy).
    Proxy,
}

/// One decision the datapath reported (new flows and drops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub ifindex: u32,
    pub direction: Direction,
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The peer's identity.
    pub identity: u32,
    /// Index into the compiled rule table (0: no rule).
    pub rule_id: u32,
    pub verdict: FlowVerdict,
    pub reason: FlowReason,
}

impl FlowEvent {
    pub fn decode(raw: &abi::FlowEvent) -> Option<Self> {
        let verdict = match raw.verdict {
            abi::VERDICT_ALLOWED => FlowVerdict::Allowed,
            abi::VERDICT_DENIED => FlowVerdict::Denied,
            abi::VERDICT_AUDIT => FlowVerdict::Audit,
            abi::VERDICT_REDIRECTED => FlowVerdict::Redirected,
            _ => return None,
        };
        let reason = match raw.reason {
            abi::REASON_DENY_RULE => FlowReason::DenyRule,
            abi::REASON_FQDN => FlowReason::Fqdn,
            abi::REASON_ALLOW_RULE => FlowReason::AllowRule,
            abi::REASON_NO_POLICY => FlowReason::NoPolicy,
            abi::REASON_DEFAULT_DENY => FlowReason::DefaultDeny,
            abi::REASON_HOST_TO_LOCAL => FlowReason::HostToLocal,
            abi::REASON_NO_ENDPOINT => FlowReason::NoEndpoint,
            abi::REASON_PROXY => FlowReason::Proxy,
            _ => FlowReason::Unsupported,
        };
        Some(Self {
            time_ns: raw.ts_ns,
            ifindex: raw.ifindex,
            direction: if raw.direction == abi::DIR_EGRESS {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            protocol: raw.protocol,
            src: abi::addr_from_bytes(raw.family, &raw.saddr)?,
            dst: abi::addr_from_bytes(raw.family, &raw.daddr)?,
            sport: u16::from_be(raw.sport),
            dport: u16::from_be(raw.dport),
            identity: raw.identity,
            rule_id: raw.rule_id,
            verdict,
            reason,
        })
    }
}

/// The datapath as the agent drives it: the write side, owned by one
/// node-state lock. Reads that walk whole maps (conntrack) or drain the
/// event ring go through a [`Monitor`], a second handle, so background work
/// never holds the lock that DNS answers wait on while it reads.
pub trait Datapath: Send + 'static {
    /// The read side's handle type.
    type Monitor: Monitor + Send + 'static;

    /// Writes a diff: map entries, and attaches or detaches the programs of
    /// endpoints that appear or go. Ordered so that no intermediate state
    /// allows more than the old or the new one: deny entries are added
    /// first and removed last, allow entries removed before others are added.
    fn apply(&mut self, diff: &StateDiff) -> Result<(), DatapathError>;

    /// What the maps hold now (after a restart: what the pinned maps kept).
    fn current(&self) -> Result<DesiredState, DatapathError>;

    /// A new, independent read handle (interfaces, counters, live
    /// connections, flow events). Only one monitor should poll events: they are consumed.
    fn monitor(&self) -> Result<Self::Monitor, DatapathError>;

    /// Installs, or updates in place, the redirect of pod DNS and of
    /// HTTP-rule flows to the proxies.
    fn set_redirects(&mut self, config: &RedirectConfig) -> Result<(), DatapathError>;

    /// Removes everything: programs, maps, pins and the proxy redirect.
    /// Traffic is no longer enforced afterwards.
    fn uninstall(&mut self) -> Result<(), DatapathError>;
}

/// The datapath's read side.
pub trait Monitor {
    /// The index of a host interface (a pod's host-side veth) by name, in
    /// the agent's network namespace; `None` if there is none.
    fn interface_index(&self, name: &str) -> Option<u32>;

    /// Packet counters by reason.
    fn counters(&self) -> Result<Counters, DatapathError>;

    /// `(ifindex, remote IP)` of every live connection a pod opened: the
    /// liveness oracle behind fqdn-cache's zombies.
    fn live_connections(&self) -> Result<BTreeSet<(u32, IpAddr)>, DatapathError>;

    /// Up to `max` flow events reported since the last call.
    fn poll_events(&mut self, max: usize) -> Result<Vec<FlowEvent>, DatapathError>;
}
