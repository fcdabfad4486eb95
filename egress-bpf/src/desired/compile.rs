//! The policy engine's resolution translated into map entries (see the
//! translation rules in [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use policy::resolve::{CompiledL7, CompiledPeers, CompiledRule, Resolved, RuleRef};
use policy::rules::{Direction, ProtocolSpec};
use policy::{EndpointKey, Identity, Inventory};

use super::{
    prefix_blocks, Backends, DesiredState, EndpointEntry, Frontend, PolicyEntry,
    CIDR_IDENTITY_BASE, ID_WORLD_IPV4, ID_WORLD_IPV6,
};
use crate::abi;

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

    // Rule ids in a stable order, independent of which endpoints are local
    // or were resolved.
    for r in resolved.rules.iter() {
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
    state.services = services(inventory);

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
        // The addresses it may send from: anything else is spoofed.
        for ip in inventory.endpoint(key).map(|e| &e.ips[..]).unwrap_or(&[]) {
            state.addresses.insert((*ifindex, *ip), ());
        }
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

/// Every Service frontend the programs translate: TCP and UDP (SCTP's
/// checksum cannot be patched incrementally; it is left to kube-proxy), at
/// most `abi::SVC_BACKENDS` backends each, the first in address order.
fn services(inventory: &Inventory) -> BTreeMap<Frontend, Backends> {
    let mut out = BTreeMap::new();
    for svc in inventory.services() {
        for f in &svc.frontends {
            let protocol = match f.protocol {
                ProtocolSpec::Tcp => abi::PROTO_TCP,
                ProtocolSpec::Udp => abi::PROTO_UDP,
                _ => continue,
            };
            let frontend = Frontend {
                ip: f.ip,
                protocol,
                port: f.port,
            };
            let backends = f.backends.iter().take(abi::SVC_BACKENDS).copied();
            let all: &mut Backends = out.entry(frontend).or_default();
            all.extend(backends);
            all.truncate(abi::SVC_BACKENDS);
        }
    }
    out
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
    let mut identities: Vec<u32> = match peer_identities(&rule.peers, cidr_ids) {
        None => vec![abi::ID_ANY],
        Some(ids) => ids.into_iter().collect(),
    };
    // A toFQDNs rule's ports, under an identity no peer has: the datapath
    // keeps an established flow an FQDN grant admitted while they still
    // cover it, after the grant itself expired (decide.h, tg_established).
    if !rule.deny && !rule.peers.fqdns.is_empty() {
        identities.push(abi::ID_FQDN_RULE);
    }
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
                    // serverNames: the HTTP proxy's listener also peeks TLS ClientHellos.
                    (CompiledL7::Http(_) | CompiledL7::Tls(_), false) => {
                        (abi::ACTION_REDIRECT, abi::PROXY_HTTP)
                    }
                };
                for range in &pr.ports {
                    let protocols: &[u8] = match range.protocol {
                        ProtocolSpec::Tcp => &[abi::PROTO_TCP],
                        ProtocolSpec::Udp => &[abi::PROTO_UDP],
                        ProtocolSpec::Sctp => &[abi::PROTO_SCTP],
                        // The "port" of an ICMP rule is the type.
                        ProtocolSpec::Icmp => &[abi::PROTO_ICMP],
                        ProtocolSpec::Icmpv6 => &[abi::PROTO_ICMPV6],
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
            // Under toFQDNs entries a redirect wins: which toFQDNs rule
            // admitted an address is not in the FQDN map, so when one of
            // them has L7 rules on a port, every learned address goes
            // through the proxy there, which decides with the names.
            let redirect_wins = identity == abi::ID_FQDN_RULE;
            for (start, end, a) in resolve_overlaps(&intervals, redirect_wins) {
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
/// action: a plain allow (or deny) beats a redirect (unless
/// `redirect_wins`); among equals the lowest rule id wins. Adjacent pieces
/// with the same action are merged.
fn resolve_overlaps(intervals: &[Span], redirect_wins: bool) -> Vec<Span> {
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
            .min_by_key(|a| {
                (
                    (a.action == abi::ACTION_REDIRECT) != redirect_wins,
                    a.rule_id,
                )
            });
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let out = resolve_overlaps(&[(80, 90, redirect), (85, 100, plain)], false);
        assert_eq!(out, vec![(80, 84, redirect), (85, 100, plain)]);
    }
}
