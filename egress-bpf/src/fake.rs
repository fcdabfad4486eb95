//! An in-memory [`Datapath`] for unprivileged tests, with a decision
//! function that mirrors `bpf/lib/decide.h` for a new flow (no conntrack),
//! so that what [`crate::desired::compile`] writes can be checked against
//! the policy engine without root.

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

/// A new flow as the fake decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeDecision {
    pub verdict: FlowVerdict,
    pub reason: FlowReason,
    pub rule_id: u32,
    pub proxy: u8,
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

    fn rule(
        &self,
        deny: bool,
        ep: u32,
        identity: u32,
        dir: u8,
        protocol: u8,
        port: u16,
    ) -> Option<abi::PolicyValue> {
        let map = if deny {
            &self.state.deny
        } else {
            &self.state.allow
        };
        let has_ports = matches!(protocol, abi::PROTO_TCP | abi::PROTO_UDP | abi::PROTO_SCTP);
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
    /// with `peer` (the remote address), mirroring `tg_handle`.
    pub fn decide(
        &self,
        ifindex: u32,
        dir: u8,
        peer: IpAddr,
        protocol: u8,
        dport: u16,
        now_ns: u64,
    ) -> FakeDecision {
        let decision = |verdict, reason, rule_id, proxy| FakeDecision {
            verdict,
            reason,
            rule_id,
            proxy,
        };
        let Some(ep) = self.state.endpoints.get(&ifindex).map(|e| e.value) else {
            return decision(FlowVerdict::Denied, FlowReason::NoEndpoint, 0, 0);
        };
        let identity = self.identity_of(peer);
        let mut d = if dir == abi::DIR_INGRESS
            && ep.allow_host != 0
            && identity == policy::Identity::HOST.0
        {
            decision(FlowVerdict::Allowed, FlowReason::HostToLocal, 0, 0)
        } else if let Some(r) = self.rule(true, ifindex, identity, dir, protocol, dport) {
            decision(FlowVerdict::Denied, FlowReason::DenyRule, r.rule_id, 0)
        } else if dir == abi::DIR_EGRESS && self.fqdn_allows(ifindex, peer, protocol, dport, now_ns)
        {
            decision(FlowVerdict::Allowed, FlowReason::Fqdn, 0, 0)
        } else if let Some(r) = self.rule(false, ifindex, identity, dir, protocol, dport) {
            if r.action == abi::ACTION_REDIRECT && dir == abi::DIR_EGRESS {
                decision(
                    FlowVerdict::Redirected,
                    FlowReason::AllowRule,
                    r.rule_id,
                    r.proxy,
                )
            } else if r.action == abi::ACTION_REDIRECT {
                // Ingress L7 reaches the pod only through the proxy, whose
                // packets carry MARK_FROM_PROXY (a runtime mark the fake
                // does not model); anything else fails closed.
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
        if d.verdict == FlowVerdict::Denied && ep.audit != 0 {
            d.verdict = FlowVerdict::Audit;
        }
        d
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
        let has_ports = matches!(protocol, abi::PROTO_TCP | abi::PROTO_UDP | abi::PROTO_SCTP);
        value.grants.iter().take(value.count as usize).any(|g| {
            g.expires_ns > now_ns
                && (g.protocol == abi::PROTO_ALL
                    || (has_ports
                        && (g.protocol == abi::PROTO_ANY_L4 || g.protocol == protocol)
                        && (g.port_start..=g.port_end).contains(&dport)))
        })
    }

    /// Whether the ipcache holds exactly this prefix.
    pub fn has_prefix(&self, net: IpNet) -> bool {
        self.state.ipcache.contains_key(&net)
    }
}
