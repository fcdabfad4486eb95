//! What the maps should hold: the policy engine's resolution translated into
//! map entries, and diffs between two such states.
//!
//! Translation rules:
//! - Endpoints are keyed by the ifindex of their host-side veth.
//! - ipcache: every pod IP (/32, /128) -> its identity; node and API server
//!   addresses -> reserved identities; `0.0.0.0/0` -> world-ipv4, `::/0` ->
//!   world-ipv6; every CIDR prefix used by a rule gets a CIDR identity, and a
//!   CIDR rule selects the identities of the prefixes inside it and outside
//!   its exceptions (longest-prefix match then decides exactly as
//!   "in the CIDR and not in an exception").
//! - Policy entries are keyed (endpoint, peer identity or any, direction,
//!   protocol or all, port prefix). Port ranges become aligned prefix blocks;
//!   within one (endpoint, identity, direction, protocol) overlapping ranges
//!   are resolved here so that no two entries overlap: a plain allow beats a
//!   redirect to a proxy (a rule without L7 restriction allows everything).
//!   Deny entries live in their own map, consulted first.
//! - toFQDNs peers produce no policy entries: the FQDN map (fed by the DNS
//!   proxy through fqdn-cache) carries them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use fqdn_cache::MapDiff;
use fqdn_cache::{Grants, PortSpec};
use ipnet::IpNet;
use policy::resolve::{CompiledL7, CompiledPeers, CompiledRule, Resolved, RuleRef};
use policy::rules::{Direction, ProtocolSpec};
use policy::{EndpointKey, Identity, Inventory};

use crate::abi;

/// Identities the datapath uses besides the policy engine's (numbers shared
/// with the programs are defined in `bpf/lib/tollgate.h`).
pub use crate::abi::{ID_WORLD_IPV4, ID_WORLD_IPV6};
/// CIDR identities start where allocated ones end (like Cilium's local
/// identities).
pub const CIDR_IDENTITY_BASE: u32 = Identity::LIMIT;

/// A local endpoint: where its programs attach and what the map says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub interface: String,
    pub value: abi::Endpoint,
}

/// A policy map entry's key, before encoding: `port` is in host order and
/// only its top `port_bits` bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntry {
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl PolicyEntry {
    /// The LPM prefix length and key data the kernel map uses.
    pub fn encode(&self) -> (u32, abi::PolicyKey) {
        (
            abi::POLICY_FIXED_BITS + u32::from(self.port_bits),
            abi::PolicyKey {
                endpoint: self.endpoint,
                identity: self.identity,
                direction: self.direction,
                protocol: self.protocol,
                dport: self.port.to_be(),
            },
        )
    }

    pub fn decode(prefix_len: u32, key: &abi::PolicyKey) -> Self {
        Self {
            endpoint: key.endpoint,
            identity: key.identity,
            direction: key.direction,
            protocol: key.protocol,
            port: u16::from_be(key.dport),
            port_bits: prefix_len.saturating_sub(abi::POLICY_FIXED_BITS).min(16) as u8,
        }
    }

    /// Whether this entry covers `port` (host order).
    pub fn covers_port(&self, port: u16) -> bool {
        let mask = if self.port_bits == 0 {
            0
        } else {
            u16::MAX << (16 - u32::from(self.port_bits))
        };
        port & mask == self.port
    }
}

/// Everything the maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub endpoints: BTreeMap<u32, EndpointEntry>,
    pub ipcache: BTreeMap<IpNet, u32>,
    pub allow: BTreeMap<PolicyEntry, abi::PolicyValue>,
    pub deny: BTreeMap<PolicyEntry, abi::PolicyValue>,
    pub fqdn: BTreeMap<(u32, IpAddr), Grants>,
}

/// Changes to every map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDiff {
    pub endpoints: MapDiff<u32, EndpointEntry>,
    pub ipcache: MapDiff<IpNet, u32>,
    pub allow: MapDiff<PolicyEntry, abi::PolicyValue>,
    pub deny: MapDiff<PolicyEntry, abi::PolicyValue>,
    pub fqdn: MapDiff<(u32, IpAddr), Grants>,
}

impl StateDiff {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ipcache.is_empty()
            && self.allow.is_empty()
            && self.deny.is_empty()
            && self.fqdn.is_empty()
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
            + self.ipcache.len()
            + self.allow.len()
            + self.deny.len()
            + self.fqdn.len()
    }

    /// Only FQDN changes: what the DNS proxy writes, via fqdn-cache's diff.
    /// `ifindex_of` maps an endpoint to its veth; endpoints without one
    /// (not local, or gone) are skipped.
    pub fn from_fqdn(
        diff: &fqdn_cache::Diff,
        ifindex_of: impl Fn(&EndpointKey) -> Option<u32>,
    ) -> Self {
        Self {
            fqdn: diff.map_keys(|(endpoint, ip)| Some((ifindex_of(endpoint)?, *ip))),
            ..Self::default()
        }
    }
}

/// fqdn-cache's full state as FQDN map entries (endpoints without a local
/// veth are skipped): what a (re)starting agent puts beside [`compile`]'s state.
pub fn fqdn_entries(
    state: &fqdn_cache::FqdnEntries,
    ifindex_of: impl Fn(&EndpointKey) -> Option<u32>,
) -> BTreeMap<(u32, IpAddr), Grants> {
    state
        .iter()
        .filter_map(|((endpoint, ip), grants)| {
            ifindex_of(endpoint).map(|i| ((i, *ip), grants.clone()))
        })
        .collect()
}

impl DesiredState {
    /// The writes that turn `self` into `new`.
    pub fn diff(&self, new: &DesiredState) -> StateDiff {
        StateDiff {
            endpoints: MapDiff::between(&self.endpoints, &new.endpoints),
            ipcache: MapDiff::between(&self.ipcache, &new.ipcache),
            allow: MapDiff::between(&self.allow, &new.allow),
            deny: MapDiff::between(&self.deny, &new.deny),
            fqdn: MapDiff::between(&self.fqdn, &new.fqdn),
        }
    }

    pub fn apply(&mut self, diff: &StateDiff) {
        diff.endpoints.apply_to(&mut self.endpoints);
        diff.ipcache.apply_to(&mut self.ipcache);
        diff.allow.apply_to(&mut self.allow);
        diff.deny.apply_to(&mut self.deny);
        diff.fqdn.apply_to(&mut self.fqdn);
    }
}

/// Rule ids in map values and flow events, and the rules they stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleTable {
    ids: BTreeMap<RuleRef, u32>,
    refs: Vec<RuleRef>,
}

impl RuleTable {
    fn id(&mut self, rule: &RuleRef) -> u32 {
        if let Some(id) = self.ids.get(rule) {
            return *id;
        }
        self.refs.push(rule.clone());
        let id = self.refs.len() as u32; // 0 means "no rule"
        self.ids.insert(rule.clone(), id);
        id
    }

    /// The rule behind an id from a map value or flow event.
    pub fn rule(&self, id: u32) -> Option<&RuleRef> {
        id.checked_sub(1).and_then(|i| self.refs.get(i as usize))
    }
}

/// Where each local endpoint's veth is: `(ifindex, interface name)`.
pub type Interfaces = BTreeMap<EndpointKey, (u32, String)>;

/// The result of [`compile`].
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Everything but FQDN entries (those come from fqdn-cache).
    pub state: DesiredState,
    pub rules: RuleTable,
}

/// Translates a resolution into map entries for the endpoints in `interfaces`
/// (the ones local to this node). Other endpoints only feed the ipcache.
pub fn compile(resolved: &Resolved, inventory: &Inventory, interfaces: &Interfaces) -> Compiled {
    let mut state = DesiredState::default();
    let mut rules = RuleTable::default();

    // Rule ids in a stable order, independent of which endpoints are local.
    let mut all_rules: BTreeSet<RuleRef> = BTreeSet::new();
    for ep in resolved.endpoints.values() {
        for dir in [&ep.ingress, &ep.egress] {
            all_rules.extend(
                dir.allow
                    .iter()
                    .chain(dir.deny.iter())
                    .map(|r| r.origin.clone()),
            );
        }
    }
    for r in &all_rules {
        rules.id(r);
    }

    // ipcache: world, reserved addresses, pods, CIDR prefixes.
    state
        .ipcache
        .insert("0.0.0.0/0".parse().unwrap(), ID_WORLD_IPV4);
    state.ipcache.insert("::/0".parse().unwrap(), ID_WORLD_IPV6);
    for (ip, identity) in inventory.reserved_addresses() {
        state.ipcache.insert(IpNet::from(ip), identity.0);
    }
    for e in inventory.endpoints() {
        for ip in &e.ips {
            state.ipcache.insert(IpNet::from(*ip), e.identity.0);
        }
    }
    let cidr_ids = cidr_identities(resolved);
    for (net, id) in &cidr_ids {
        state.ipcache.entry(*net).or_insert(*id);
    }

    for (key, ep) in &resolved.endpoints {
        let Some((ifindex, interface)) = interfaces.get(key) else {
            continue;
        };
        state.endpoints.insert(
            *ifindex,
            EndpointEntry {
                interface: interface.clone(),
                value: abi::Endpoint {
                    identity: ep.identity.0,
                    enforce_ingress: ep.ingress.enforced as u8,
                    enforce_egress: ep.egress.enforced as u8,
                    audit: ep.audit as u8,
                    allow_host: ep.allow_host_to_local as u8,
                },
            },
        );
        for (direction, dir) in [
            (Direction::Ingress, &ep.ingress),
            (Direction::Egress, &ep.egress),
        ] {
            let d = match direction {
                Direction::Ingress => abi::DIR_INGRESS,
                Direction::Egress => abi::DIR_EGRESS,
            };
            let mut allow = Groups::default();
            let mut deny = Groups::default();
            for rule in &dir.allow {
                add_rule(&mut allow, rule, *ifindex, d, &cidr_ids, &mut rules);
            }
            for rule in &dir.deny {
                add_rule(&mut deny, rule, *ifindex, d, &cidr_ids, &mut rules);
            }
            allow.emit(&mut state.allow);
            deny.emit(&mut state.deny);
        }
    }
    Compiled { state, rules }
}

/// Every CIDR prefix used by any rule (and its exceptions) with its identity.
fn cidr_identities(resolved: &Resolved) -> BTreeMap<IpNet, u32> {
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    for ep in resolved.endpoints.values() {
        for dir in [&ep.ingress, &ep.egress] {
            for rule in dir.allow.iter().chain(dir.deny.iter()) {
                for (net, except) in &rule.peers.cidrs {
                    prefixes.insert(*net);
                    prefixes.extend(except.iter().copied());
                }
            }
        }
    }
    prefixes
        .into_iter()
        .enumerate()
        .map(|(i, net)| {
            let id = match net {
                IpNet::V4(n) if n.prefix_len() == 0 => ID_WORLD_IPV4,
                IpNet::V6(n) if n.prefix_len() == 0 => ID_WORLD_IPV6,
                _ => CIDR_IDENTITY_BASE + i as u32,
            };
            (net, id)
        })
        .collect()
}

/// The peer identities a rule's peers select, or `None` for any peer.
fn peer_identities(
    peers: &CompiledPeers,
    cidr_ids: &BTreeMap<IpNet, u32>,
) -> Option<BTreeSet<u32>> {
    if peers.any {
        return None;
    }
    let mut ids: BTreeSet<u32> = peers.identities.iter().map(|i| i.0).collect();
    // The policy engine's `world` identity is the datapath's two world halves.
    let mut peers = peers.clone();
    if ids.remove(&Identity::WORLD.0) {
        peers.world_v4 = true;
        peers.world_v6 = true;
    }
    // Addresses inside a policy CIDR carry that CIDR's identity, and they
    // are world addresses all the same.
    for (v4, selected, world_id) in [
        (true, peers.world_v4, ID_WORLD_IPV4),
        (false, peers.world_v6, ID_WORLD_IPV6),
    ] {
        if selected {
            ids.insert(world_id);
            ids.extend(
                cidr_ids
                    .iter()
                    .filter(|(net, _)| net.addr().is_ipv4() == v4)
                    .map(|(_, id)| *id),
            );
        }
    }
    for (net, except) in &peers.cidrs {
        for (prefix, id) in cidr_ids {
            if net.contains(prefix) && !except.iter().any(|e| e.contains(prefix)) {
                ids.insert(*id);
            }
        }
    }
    Some(ids)
}

/// What an allow entry does to its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Action {
    rule_id: u32,
    action: u8,
    proxy: u8,
}

/// `first..=last` port with what a rule does to it.
type Span = (u16, u16, Action);

/// Port intervals per (identity, protocol), before overlaps are resolved.
#[derive(Default)]
struct Groups {
    endpoint: u32,
    direction: u8,
    intervals: BTreeMap<(u32, u8), Vec<Span>>,
}

fn add_rule(
    groups: &mut Groups,
    rule: &CompiledRule,
    ifindex: u32,
    direction: u8,
    cidr_ids: &BTreeMap<IpNet, u32>,
    rules: &mut RuleTable,
) {
    groups.endpoint = ifindex;
    groups.direction = direction;
    let identities: Vec<u32> = match peer_identities(&rule.peers, cidr_ids) {
        None => vec![abi::ID_ANY],
        Some(ids) => ids.into_iter().collect(),
    };
    if identities.is_empty() {
        return; // e.g. only toFQDNs peers, or `fromEntities: []`
    }
    let rule_id = rules.id(&rule.origin);
    let deny_or_plain = if rule.deny {
        abi::ACTION_DENY
    } else {
        abi::ACTION_ALLOW
    };
    let mut spans: Vec<(u8, u16, u16, Action)> = Vec::new();
    match &rule.ports {
        None => spans.push((
            abi::PROTO_ALL,
            0,
            u16::MAX,
            Action {
                rule_id,
                action: deny_or_plain,
                proxy: abi::PROXY_NONE,
            },
        )),
        Some(port_rules) => {
            for pr in port_rules {
                let (action, proxy) = match (&pr.l7, rule.deny) {
                    (_, true) | (CompiledL7::None, _) => (deny_or_plain, abi::PROXY_NONE),
                    (CompiledL7::Dns(_), false) => (abi::ACTION_REDIRECT, abi::PROXY_DNS),
                    (CompiledL7::Http(_), false) => (abi::ACTION_REDIRECT, abi::PROXY_HTTP),
                };
                for range in &pr.ports {
                    let protocols: &[u8] = match range.protocol {
                        ProtocolSpec::Tcp => &[abi::PROTO_TCP],
                        ProtocolSpec::Udp => &[abi::PROTO_UDP],
                        ProtocolSpec::Sctp => &[abi::PROTO_SCTP],
                        ProtocolSpec::Any => &[abi::PROTO_TCP, abi::PROTO_UDP, abi::PROTO_SCTP],
                    };
                    for p in protocols {
                        spans.push((
                            *p,
                            range.start,
                            range.end,
                            Action {
                                rule_id,
                                action,
                                proxy,
                            },
                        ));
                    }
                }
            }
        }
    }
    for id in identities {
        for (proto, start, end, action) in &spans {
            groups
                .intervals
                .entry((id, *proto))
                .or_default()
                .push((*start, *end, *action));
        }
    }
}

impl Groups {
    /// Resolves overlaps and writes aligned prefix blocks.
    fn emit(self, out: &mut BTreeMap<PolicyEntry, abi::PolicyValue>) {
        for ((identity, protocol), intervals) in self.intervals {
            for (start, end, a) in resolve_overlaps(&intervals) {
                let ports = if protocol == abi::PROTO_ALL {
                    vec![(0u16, 0u8)]
                } else {
                    prefix_blocks(start, end)
                };
                for (port, port_bits) in ports {
                    out.insert(
                        PolicyEntry {
                            endpoint: self.endpoint,
                            identity,
                            direction: self.direction,
                            protocol,
                            port,
                            port_bits,
                        },
                        abi::PolicyValue {
                            rule_id: a.rule_id,
                            action: a.action,
                            proxy: a.proxy,
                            pad: 0,
                        },
                    );
                }
            }
        }
    }
}

/// Splits overlapping intervals into disjoint ones, each with the winning
/// action: a plain allow (or deny) beats a redirect; among equals the lowest
/// rule id wins. Adjacent pieces with the same action are merged.
fn resolve_overlaps(intervals: &[Span]) -> Vec<Span> {
    let mut bounds: BTreeSet<u32> = BTreeSet::new();
    for (s, e, _) in intervals {
        bounds.insert(u32::from(*s));
        bounds.insert(u32::from(*e) + 1);
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut out: Vec<Span> = Vec::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let best = intervals
            .iter()
            .filter(|(s, e, _)| u32::from(*s) <= lo && hi <= u32::from(*e))
            .map(|(_, _, a)| *a)
            .min_by_key(|a| (a.action == abi::ACTION_REDIRECT, a.rule_id));
        let Some(best) = best else { continue };
        match out.last_mut() {
            Some((_, last_end, a)) if *a == best && u32::from(*last_end) + 1 == lo => {
                *last_end = hi as u16
            }
            _ => out.push((lo as u16, hi as u16, best)),
        }
    }
    out
}

/// `start..=end` as aligned blocks `(first port, prefix bits)`.
pub fn prefix_blocks(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut s = u32::from(start);
    let e = u32::from(end);
    while s <= e {
        // The largest aligned block starting at s that fits.
        let mut size: u32 = if s == 0 {
            1 << 16
        } else {
            1 << s.trailing_zeros().min(16)
        };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((s as u16, (16 - size.trailing_zeros()) as u8));
        s += size;
    }
    out
}

/// The FQDN map value for fqdn-cache's grants (at most `FQDN_GRANTS`; any
/// beyond are dropped, which allows less, never more).
pub fn encode_grants(grants: &Grants) -> abi::FqdnValue {
    let mut value = abi::FqdnValue::default();
    for (slot, g) in value.grants.iter_mut().zip(grants.iter()) {
        let (start, end, protocol) = match g.ports {
            PortSpec::All => (0, u16::MAX, abi::PROTO_ALL),
            PortSpec::Range {
                start,
                end,
                protocol,
            } => (
                start,
                end,
                match protocol {
                    ProtocolSpec::Any => abi::PROTO_ANY_L4,
                    ProtocolSpec::Tcp => abi::PROTO_TCP,
                    ProtocolSpec::Udp => abi::PROTO_UDP,
                    ProtocolSpec::Sctp => abi::PROTO_SCTP,
                },
            ),
        };
        *slot = abi::FqdnGrant {
            expires_ns: g.expires_at.0,
            port_start: start,
            port_end: end,
            protocol,
            pad: [0; 3],
        };
    }
    value.count = grants.len().min(abi::FQDN_GRANTS) as u32;
    value
}

/// The inverse of [`encode_grants`], for reading a pinned map back.
pub fn decode_grants(value: &abi::FqdnValue) -> Grants {
    value
        .grants
        .iter()
        .take(value.count as usize)
        .map(|g| fqdn_cache::PortGrant {
            expires_at: fqdn_cache::Time(g.expires_ns),
            ports: match g.protocol {
                abi::PROTO_ALL => PortSpec::All,
                p => PortSpec::Range {
                    start: g.port_start,
                    end: g.port_end,
                    protocol: match p {
                        abi::PROTO_TCP => ProtocolSpec::Tcp,
                        abi::PROTO_UDP => ProtocolSpec::Udp,
                        abi::PROTO_SCTP => ProtocolSpec::Sctp,
                        _ => ProtocolSpec::Any,
                    },
                },
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(blocks: &[(u16, u8)]) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..=u16::MAX)
            .filter(|p| {
                blocks.iter().any(|(port, bits)| {
                    PolicyEntry {
                        endpoint: 0,
                        identity: 0,
                        direction: 0,
                        protocol: 6,
                        port: *port,
                        port_bits: *bits,
                    }
                    .covers_port(*p)
                })
            })
            .collect();
        ports.dedup();
        ports
    }

    #[test]
    fn prefix_blocks_cover_exactly_the_range() {
        for (s, e) in [
            (80, 80),
            (8000, 8099),
            (0, 65535),
            (1, 65535),
            (1024, 2047),
            (65535, 65535),
            (3, 17),
        ] {
            let blocks = prefix_blocks(s, e);
            assert_eq!(
                covered(&blocks),
                (s..=e).collect::<Vec<_>>(),
                "{s}-{e}: {blocks:?}"
            );
            assert!(blocks.len() <= 32, "{s}-{e} needs {} blocks", blocks.len());
        }
        assert_eq!(prefix_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(prefix_blocks(443, 443), vec![(443, 16)]);
    }

    #[test]
    fn overlaps_resolve_plain_over_redirect_and_deny_keeps_its_span() {
        let plain = Action {
            rule_id: 2,
            action: abi::ACTION_ALLOW,
            proxy: 0,
        };
        let redirect = Action {
            rule_id: 1,
            action: abi::ACTION_REDIRECT,
            proxy: abi::PROXY_HTTP,
        };
        let out = resolve_overlaps(&[(80, 90, redirect), (85, 100, plain)]);
        assert_eq!(out, vec![(80, 84, redirect), (85, 100, plain)]);
    }
}
