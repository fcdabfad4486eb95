//! An in-memory [`Datapath`] for unprivileged tests, with the decision of
//! `bpf/lib/decide.h` mirrored at two levels:
//!
//! - per flow ([`FakeDatapath::decide`] for a new flow,
//!   [`FakeDatapath::decide_established`] for a tracked one after a policy
//!   change), so that what [`crate::desired::compile`] writes can be checked
//!   against the policy engine without root (`tests/translation.rs`);
//! - per packet ([`FakeDatapath::handle`]: `packet` parses a frame as
//!   `parse.h` does, with conntrack, fragments and the policy revision as the
//!   kernel keeps them), which the parser's fuzz target checks against the
//!   real programs (`tests/privileged_fuzz.rs`).
//!
//! Not mirrored: the per-endpoint DNS budget (`tg_dns_over_budget`), a rate
//! over time rather than a decision on one packet; the fake behaves as the
//! programs do with no budget set, which is how the fuzz target runs them.
//!
//! ## Layout
//! - this file: the fake [`Datapath`] and [`Monitor`], and the per-flow decision;
//! - `packet`: `parse.h` in Rust;
//! - `handle`: the per-packet decision (`tg_handle`).

mod handle;
pub mod packet;

pub use handle::{FakePacketState, FakeVerdict};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::abi;
use crate::datapath::{
    Counters, Datapath, DatapathError, FlowEvent, FlowReason, FlowVerdict, Monitor,
};
use crate::desired::{encode_grants, DesiredState, StateDiff};
use crate::redirect::RedirectConfig;

/// The fake: maps as plain collections.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    pub state: DesiredState,
    /// What the read side reports; shared with every [`FakeMonitor`] handed
    /// out, so a test can change it while an agent runs.
    pub monitor: FakeMonitor,
    /// The redirect last installed.
    pub redirects: Option<RedirectConfig>,
    /// [`Datapath::uninstall`] was called.
    pub uninstalled: bool,
    /// FQDN map capacity: a write beyond it fails like a full kernel map.
    pub fqdn_capacity: Option<usize>,
    /// Every apply fails (the datapath is broken).
    pub broken: bool,
    /// Number of successful applies.
    pub applies: usize,
    /// What the programs keep per packet: conntrack, fragments, the policy
    /// revision ([`FakeDatapath::handle`]).
    pub packets: FakePacketState,
}

/// The fake's read side: live connections and flow events a test sets.
#[derive(Debug, Default, Clone)]
pub struct FakeMonitor {
    shared: Arc<Mutex<Observed>>,
}

#[derive(Debug, Default)]
struct Observed {
    live: BTreeSet<(u32, IpAddr)>,
    events: VecDeque<FlowEvent>,
    counters: Counters,
    interfaces: BTreeMap<String, u32>,
}

impl FakeMonitor {
    fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        // A test that panicked while holding it has failed already.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces what [`Monitor::live_connections`] reports.
    pub fn set_live(&self, live: impl IntoIterator<Item = (u32, IpAddr)>) {
        self.observed().live = live.into_iter().collect();
    }

    /// Queues a flow event for [`Monitor::poll_events`].
    pub fn push_event(&self, event: FlowEvent) {
        self.observed().events.push_back(event);
    }

    /// Makes a host interface exist ([`Monitor::interface_index`]).
    pub fn set_interface(&self, name: &str, index: u32) {
        self.observed().interfaces.insert(name.to_string(), index);
    }

    /// Replaces what [`Monitor::counters`] reports.
    pub fn set_counters(&self, counters: Counters) {
        self.observed().counters = counters;
    }
}

impl Monitor for FakeMonitor {
    fn interface_index(&self, name: &str) -> Option<u32> {
        self.observed().interfaces.get(name).copied()
    }

    fn counters(&self) -> Result<Counters, DatapathError> {
        Ok(self.observed().counters.clone())
    }

    fn live_connections(&self) -> Result<BTreeSet<(u32, IpAddr)>, DatapathError> {
        Ok(self.observed().live.clone())
    }

    fn poll_events(&mut self, max: usize) -> Result<Vec<FlowEvent>, DatapathError> {
        let mut o = self.observed();
        let n = max.min(o.events.len());
        Ok(o.events.drain(..n).collect())
    }
}

impl Datapath for FakeDatapath {
    type Monitor = FakeMonitor;

    fn capacities(&self) -> std::collections::BTreeMap<&'static str, u32> {
        self.fqdn_capacity
            .map(|c| ("tg_fqdn", u32::try_from(c).unwrap_or(u32::MAX)))
            .into_iter()
            .collect()
    }

    fn apply(&mut self, diff: &StateDiff) -> Result<(), DatapathError> {
        if self.broken {
            return Err(syscall_failed(libc::EPERM));
        }
        if let Some(cap) = self.fqdn_capacity {
            let mut next = self.state.fqdn.clone();
            diff.fqdn.apply_to(&mut next);
            if next.len() > cap {
                // What the kernel answers when a hash map is full.
                return Err(syscall_failed(libc::E2BIG));
            }
        }
        self.state.apply(diff);
        if diff.changes_policy() {
            self.packets.policy_rev = self.packets.policy_rev.wrapping_add(1);
        }
        self.applies += 1;
        Ok(())
    }

    fn current(&self) -> Result<DesiredState, DatapathError> {
        Ok(self.state.clone())
    }

    fn monitor(&self) -> Result<FakeMonitor, DatapathError> {
        Ok(self.monitor.clone())
    }

    fn set_redirects(&mut self, config: &RedirectConfig) -> Result<(), DatapathError> {
        self.redirects = Some(config.clone());
        Ok(())
    }

    fn uninstall(&mut self) -> Result<(), DatapathError> {
        self.state = DesiredState::default();
        self.redirects = None;
        self.uninstalled = true;
        Ok(())
    }
}

/// A failed FQDN map update, as the kernel datapath reports one.
fn syscall_failed(errno: i32) -> DatapathError {
    DatapathError::Map {
        map: "tg_fqdn",
        operation: "update",
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        }),
    }
}

/// A flow as the fake decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeDecision {
    pub verdict: FlowVerdict,
    pub reason: FlowReason,
    pub rule_id: u32,
    pub proxy: u8,
    /// The peer's identity (as flow events report it).
    pub identity: u32,
}

impl FakeDecision {
    fn new(verdict: FlowVerdict, reason: FlowReason, rule_id: u32, proxy: u8) -> Self {
        Self {
            verdict,
            reason,
            rule_id,
            proxy,
            identity: 0,
        }
    }
}

/// Whether port rules name this protocol's ports (`tg_has_rule_ports`):
/// TCP, UDP and SCTP ports, and the types of ICMP (IPv4) and ICMPv6 (IPv6).
fn rule_ports(protocol: u8, peer: IpAddr) -> bool {
    match protocol {
        abi::PROTO_TCP | abi::PROTO_UDP | abi::PROTO_SCTP => true,
        abi::PROTO_ICMP => peer.is_ipv4(),
        abi::PROTO_ICMPV6 => peer.is_ipv6(),
        _ => false,
    }
}

impl FakeDatapath {
    /// The identity the ipcache gives `ip` (longest prefix match).
    pub fn identity_of(&self, ip: IpAddr) -> u32 {
        self.state
            .ipcache
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, id)| *id)
            .unwrap_or(policy::Identity::WORLD.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(
        &self,
        deny: bool,
        ep: u32,
        identity: u32,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        port: u16,
    ) -> Option<abi::PolicyValue> {
        let map = if deny {
            &self.state.deny
        } else {
            &self.state.allow
        };
        let has_ports = rule_ports(protocol, peer);
        let mut best: Option<abi::PolicyValue> = None;
        for id in [identity, abi::ID_ANY] {
            for (proto, p) in [(protocol, port), (abi::PROTO_ALL, 0)] {
                if proto == protocol && proto != abi::PROTO_ALL && !has_ports {
                    continue;
                }
                // LPM: the longest matching port prefix for this key.
                let hit = map
                    .iter()
                    .filter(|(k, _)| {
                        k.endpoint == ep
                            && k.identity == id
                            && k.direction == dir
                            && k.protocol == proto
                            && k.covers_port(p)
                    })
                    .max_by_key(|(k, _)| k.port_bits)
                    .map(|(_, v)| *v);
                if let Some(v) = hit {
                    if best.is_none() || (!deny && v.action == abi::ACTION_ALLOW) {
                        best = Some(v);
                    }
                }
            }
        }
        best
    }

    /// The decision for the first packet of a flow on endpoint `ifindex`
    /// with `peer` (the remote address), mirroring `tg_decide` and the audit
    /// step of `tg_handle`. The HTTP proxy's mark is a runtime property:
    /// [`FakeDatapath::decide_marked`] takes it.
    pub fn decide(
        &self,
        ifindex: u32,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        now_ns: u64,
    ) -> FakeDecision {
        self.decide_marked(ifindex, dir, peer, protocol, dport, 0, now_ns)
    }

    /// [`FakeDatapath::decide`] for a packet carrying skb mark `mark`.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_marked(
        &self,
        ifindex: u32,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        mark: u32,
        now_ns: u64,
    ) -> FakeDecision {
        let Some(ep) = self.state.endpoints.get(&ifindex).map(|e| e.value) else {
            return FakeDecision::new(FlowVerdict::Denied, FlowReason::NoEndpoint, 0, 0);
        };
        let mut d = self.policy(ifindex, ep, dir, peer, protocol, dport, mark, now_ns);
        if d.verdict == FlowVerdict::Denied && ep.audit != 0 {
            d.verdict = FlowVerdict::Audit;
        }
        d
    }

    /// The decision for a packet of a tracked flow (not a reply) after the
    /// policy changed, mirroring `tg_established`: decided again, except
    /// that a flow an FQDN grant admitted (`admitted`) stays allowed past the
    /// grant's expiry while a toFQDNs rule of the endpoint still opens its
    /// port and no deny rule covers it.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_established(
        &self,
        ifindex: u32,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        admitted: FlowReason,
        now_ns: u64,
    ) -> FakeDecision {
        let Some(ep) = self.state.endpoints.get(&ifindex).map(|e| e.value) else {
            return FakeDecision::new(FlowVerdict::Denied, FlowReason::NoEndpoint, 0, 0);
        };
        self.recheck(ifindex, ep, dir, peer, protocol, dport, 0, admitted, now_ns)
    }

    #[allow(clippy::too_many_arguments)]
    fn recheck(
        &self,
        ifindex: u32,
        ep: abi::Endpoint,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        mark: u32,
        admitted: FlowReason,
        now_ns: u64,
    ) -> FakeDecision {
        let mut d = self.policy(ifindex, ep, dir, peer, protocol, dport, mark, now_ns);
        if d.verdict == FlowVerdict::Denied
            && d.reason == FlowReason::DefaultDeny
            && admitted == FlowReason::Fqdn
            && dir == abi::DIR_EGRESS
            && self
                .rule(
                    false,
                    ifindex,
                    abi::ID_FQDN_RULE,
                    dir,
                    peer,
                    protocol,
                    dport,
                )
                .is_some()
        {
            d.verdict = FlowVerdict::Allowed;
            d.reason = FlowReason::Fqdn;
        }
        if d.verdict == FlowVerdict::Denied && ep.audit != 0 {
            d.verdict = FlowVerdict::Audit;
        }
        d
    }

    /// `tg_decide`: what the policy says, before audit mode.
    #[allow(clippy::too_many_arguments)]
    fn policy(
        &self,
        ifindex: u32,
        ep: abi::Endpoint,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        mark: u32,
        now_ns: u64,
    ) -> FakeDecision {
        let decision = FakeDecision::new;
        let identity = self.identity_of(peer);
        let mut d = if dir == abi::DIR_INGRESS && mark & abi::MARK_MASK == abi::MARK_FROM_PROXY {
            decision(FlowVerdict::Allowed, FlowReason::Proxy, 0, 0)
        } else if dir == abi::DIR_INGRESS
            && ep.allow_host != 0
            && identity == policy::Identity::HOST.0
        {
            decision(FlowVerdict::Allowed, FlowReason::HostToLocal, 0, 0)
        } else if let Some(r) = self.rule(true, ifindex, identity, dir, peer, protocol, dport) {
            decision(FlowVerdict::Denied, FlowReason::DenyRule, r.rule_id, 0)
        } else if dir == abi::DIR_EGRESS && self.fqdn_allows(ifindex, peer, protocol, dport, now_ns)
        {
            // `tg_fqdn_rule`: L7 rules under toFQDNs redirect.
            match self.fqdn_rule(ifindex, dir, peer, protocol, dport) {
                Some(r) if r.action == abi::ACTION_REDIRECT => decision(
                    FlowVerdict::Redirected,
                    FlowReason::Fqdn,
                    r.rule_id,
                    r.proxy,
                ),
                _ => decision(FlowVerdict::Allowed, FlowReason::Fqdn, 0, 0),
            }
        } else if let Some(r) = self.rule(false, ifindex, identity, dir, peer, protocol, dport) {
            if r.action == abi::ACTION_REDIRECT && dir == abi::DIR_EGRESS {
                decision(
                    FlowVerdict::Redirected,
                    FlowReason::AllowRule,
                    r.rule_id,
                    r.proxy,
                )
            } else if r.action == abi::ACTION_REDIRECT {
                // Ingress L7 reaches the pod only through the proxy, whose
                // packets carry MARK_FROM_PROXY (above); anything else
                // fails closed.
                decision(FlowVerdict::Denied, FlowReason::Unsupported, r.rule_id, 0)
            } else {
                decision(FlowVerdict::Allowed, FlowReason::AllowRule, r.rule_id, 0)
            }
        } else if (if dir == abi::DIR_EGRESS {
            ep.enforce_egress
        } else {
            ep.enforce_ingress
        }) == 0
        {
            decision(FlowVerdict::Allowed, FlowReason::NoPolicy, 0, 0)
        } else {
            decision(FlowVerdict::Denied, FlowReason::DefaultDeny, 0, 0)
        };
        d.identity = identity;
        d
    }

    /// The endpoint's toFQDNs entry for the port (`tg_fqdn_rule`): the
    /// protocol's own first, then the all-protocols one.
    fn fqdn_rule(
        &self,
        ifindex: u32,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        port: u16,
    ) -> Option<abi::PolicyValue> {
        let lookup = |proto: u8, port: u16| {
            self.state
                .allow
                .iter()
                .filter(|(k, _)| {
                    k.endpoint == ifindex
                        && k.identity == abi::ID_FQDN_RULE
                        && k.direction == dir
                        && k.protocol == proto
                        && k.covers_port(port)
                })
                .max_by_key(|(k, _)| k.port_bits)
                .map(|(_, v)| *v)
        };
        rule_ports(protocol, peer)
            .then(|| lookup(protocol, port))
            .flatten()
            .or_else(|| lookup(abi::PROTO_ALL, 0))
    }

    fn fqdn_allows(
        &self,
        ifindex: u32,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        now_ns: u64,
    ) -> bool {
        let Some(grants) = self.state.fqdn.get(&(ifindex, peer)) else {
            return false;
        };
        let value = encode_grants(grants);
        let l4_ports = matches!(protocol, abi::PROTO_TCP | abi::PROTO_UDP | abi::PROTO_SCTP);
        value.grants.iter().take(value.count as usize).any(|g| {
            g.expires_ns > now_ns
                && (g.protocol == abi::PROTO_ALL
                    || (rule_ports(protocol, peer)
                        && (if g.protocol == abi::PROTO_ANY_L4 {
                            l4_ports
                        } else {
                            g.protocol == protocol
                        })
                        && (g.port_start..=g.port_end).contains(&dport)))
        })
    }

    /// Whether the ipcache holds exactly this prefix.
    pub fn has_prefix(&self, net: IpNet) -> bool {
        self.state.ipcache.contains_key(&net)
    }
}
