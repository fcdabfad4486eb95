//! Resolution: a policy set plus an inventory become, for every endpoint and
//! direction, the list of rules that apply to it, with peers resolved to
//! identities. [`EndpointPolicy::decide`] is the one decision function.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::fqdn::{FqdnMatcher, FqdnMatcherBuilder, SelectorId};
use crate::identity::Identity;
use crate::inventory::{Endpoint, Node};
use crate::inventory::{EndpointKey, Inventory};
use crate::labels::Selector;
use crate::labels::{Labels, NAMESPACE_LABEL};
use crate::model::Entity;
use crate::model::ProtocolSpec;
use crate::rules::{
    Direction, HttpRule, NamedPort, Peer, Peers, Policy, PolicyName, PortRange, Protocol, Rule,
    ServiceRef, L7,
};
use crate::selector_cache::SelectorCache;
use crate::sni::ServerName;

/// Settings that change decisions for every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Traffic from the node itself to its local pods is allowed regardless of
    /// policy (kubelet probes), as Cilium's `allow-localhost=policy` is not.
    pub allow_host_to_local: bool,
    /// Agent-wide audit mode: would-be drops are reported and passed.
    pub audit: bool,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        Self {
            allow_host_to_local: true,
            audit: false,
        }
    }
}

/// Names one rule: the policy and the field path of the rule inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy: PolicyName,
    /// e.g. `spec.egress[1]` or `specs[0].ingressDeny[0]`.
    pub rule: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.policy, self.rule)
    }
}

impl serde::Serialize for RuleRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RuleRef", 4)?;
        st.serialize_field("kind", self.policy.kind.as_str())?;
        st.serialize_field("namespace", &self.policy.namespace)?;
        st.serialize_field("policy", &self.policy.name)?;
        st.serialize_field("rule", &self.rule)?;
        st.end()
    }
}

/// A rule with its peers resolved against the inventory.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub origin: RuleRef,
    pub deny: bool,
    pub peers: CompiledPeers,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<CompiledPortRule>>,
}

/// The peers of a rule in datapath terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompiledPeers {
    /// Every peer (`toPorts` alone, or the `all` entity).
    pub any: bool,
    /// Identities selected by endpoint selectors and entities.
    pub identities: BTreeSet<Identity>,
    /// World addresses of each family (`world`, `world-ipv4`, `world-ipv6`).
    pub world_v4: bool,
    pub world_v6: bool,
    /// CIDRs with their exceptions; they only match addresses outside the cluster.
    pub cidrs: Vec<(IpNet, Vec<IpNet>)>,
    /// toFQDNs selectors: IPs the endpoint learned for a matching name.
    pub fqdns: Vec<SelectorId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPortRule {
    pub ports: Vec<PortRange>,
    pub l7: CompiledL7,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompiledL7 {
    None,
    Dns(Vec<SelectorId>),
    Http(Vec<HttpRule>),
    /// `serverNames`: TLS whose ClientHello names one of these.
    Tls(Vec<ServerName>),
}

/// The other side of a flow.
#[derive(Debug, Clone, Copy)]
pub struct PeerRef<'a> {
    pub identity: Identity,
    pub ip: Option<IpAddr>,
    /// Names this endpoint learned the IP for through DNS (for toFQDNs).
    pub names: &'a [String],
}

impl CompiledPeers {
    fn matches(&self, peer: &PeerRef, matcher: &FqdnMatcher) -> bool {
        if self.any || self.identities.contains(&peer.identity) {
            return true;
        }
        let outside = peer.identity == Identity::WORLD;
        if outside {
            match peer.ip {
                Some(IpAddr::V4(_)) if self.world_v4 => return true,
                Some(IpAddr::V6(_)) if self.world_v6 => return true,
                None if self.world_v4 && self.world_v6 => return true,
                _ => {}
            }
            if let Some(ip) = peer.ip {
                let in_cidr = self.cidrs.iter().any(|(net, except)| {
                    net.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
                });
                if in_cidr {
                    return true;
                }
            }
        }
        !self.fqdns.is_empty()
            && peer.names.iter().any(|name| {
                matcher
                    .matches(name)
                    .iter()
                    .any(|id| self.fqdns.contains(id))
            })
    }
}

impl CompiledRule {
    /// If the rule covers the flow: the L7 restriction of the matching port rule.
    fn covers(
        &self,
        peer: &PeerRef,
        port: u16,
        protocol: Protocol,
        matcher: &FqdnMatcher,
    ) -> Option<&CompiledL7> {
        if !self.peers.matches(peer, matcher) {
            return None;
        }
        match &self.ports {
            None => Some(&CompiledL7::None),
            Some(rules) => rules
                .iter()
                .find(|r| r.ports.iter().any(|p| p.matches(port, protocol)))
                .map(|r| &r.l7),
        }
    }
}

/// The rules of one endpoint in one direction.
#[derive(Debug, Clone, Default)]
pub struct DirectionPolicy {
    /// Default deny: something not allowed is dropped.
    pub enforced: bool,
    /// The policies that turned default deny on, for explanations.
    pub enforced_by: Vec<PolicyName>,
    pub deny: Vec<Arc<CompiledRule>>,
    pub allow: Vec<Arc<CompiledRule>>,
}

/// Everything that decides the traffic of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub key: EndpointKey,
    pub identity: Identity,
    pub audit: bool,
    pub allow_host_to_local: bool,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

/// Final word on a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
    /// Would be denied; passed because of audit mode.
    Audit,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allowed => "ALLOWED",
            Self::Denied => "DENIED",
            Self::Audit => "AUDIT",
        })
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No policy puts the endpoint in default deny for this direction.
    NoPolicy,
    /// An allow rule covers the flow.
    AllowRule,
    /// A deny rule covers the flow (deny beats allow).
    DenyRule,
    /// Default deny and no allow rule covers the flow.
    DefaultDeny,
    /// The node itself talking to its local pod.
    HostToLocal,
}

/// The L7 restriction the proxy must apply to an allowed flow.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum L7Decision {
    #[default]
    None,
    /// DNS: only these selectors' names may be queried.
    Dns(Vec<SelectorId>),
    /// HTTP: a request must match one of these rules.
    Http(Vec<HttpRule>),
    /// TLS: the connection's ClientHello must name one of these (SNI).
    Tls(Vec<ServerName>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    pub rule: Option<RuleRef>,
    pub l7: L7Decision,
}

impl EndpointPolicy {
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The decision for a flow of this endpoint. Order: host-to-local, deny
    /// rules, allow rules, default deny.
    pub fn decide(
        &self,
        matcher: &FqdnMatcher,
        direction: Direction,
        peer: &PeerRef,
        port: u16,
        protocol: Protocol,
    ) -> Decision {
        let dir = self.direction(direction);
        let verdict_denied = if self.audit {
            Verdict::Audit
        } else {
            Verdict::Denied
        };
        if direction == Direction::Ingress
            && self.allow_host_to_local
            && peer.identity == Identity::HOST
        {
            return Decision {
                verdict: Verdict::Allowed,
                reason: Reason::HostToLocal,
                rule: None,
                l7: L7Decision::None,
            };
        }
        for rule in &dir.deny {
            if rule.covers(peer, port, protocol, matcher).is_some() {
                return Decision {
                    verdict: verdict_denied,
                    reason: Reason::DenyRule,
                    rule: Some(rule.origin.clone()),
                    l7: L7Decision::None,
                };
            }
        }
        // Several allow rules may cover a flow: one without L7 restriction
        // allows everything on it; otherwise the L7 rules add up.
        let mut first: Option<&CompiledRule> = None;
        let mut l7 = L7Decision::None;
        for rule in &dir.allow {
            let Some(rule_l7) = rule.covers(peer, port, protocol, matcher) else {
                continue;
            };
            match rule_l7 {
                CompiledL7::None => {
                    return Decision {
                        verdict: Verdict::Allowed,
                        reason: Reason::AllowRule,
                        rule: Some(rule.origin.clone()),
                        l7: L7Decision::None,
                    }
                }
                CompiledL7::Dns(ids) => match &mut l7 {
                    L7Decision::Dns(all) => all.extend(ids),
                    _ if first.is_none() => l7 = L7Decision::Dns(ids.clone()),
                    _ => {}
                },
                CompiledL7::Http(rules) => match &mut l7 {
                    L7Decision::Http(all) => all.extend(rules.iter().cloned()),
                    _ if first.is_none() => l7 = L7Decision::Http(rules.clone()),
                    _ => {}
                },
                CompiledL7::Tls(names) => match &mut l7 {
                    L7Decision::Tls(all) => all.extend(names.iter().cloned()),
                    _ if first.is_none() => l7 = L7Decision::Tls(names.clone()),
                    _ => {}
                },
            }
            first.get_or_insert(&**rule);
        }
        if let Some(rule) = first {
            if let L7Decision::Dns(ids) = &mut l7 {
                ids.sort_unstable();
                ids.dedup();
            }
            if let L7Decision::Tls(names) = &mut l7 {
                names.sort_unstable();
                names.dedup();
            }
            return Decision {
                verdict: Verdict::Allowed,
                reason: Reason::AllowRule,
                rule: Some(rule.origin.clone()),
                l7,
            };
        }
        if dir.enforced {
            Decision {
                verdict: verdict_denied,
                reason: Reason::DefaultDeny,
                rule: None,
                l7: L7Decision::None,
            }
        } else {
            Decision {
                verdict: Verdict::Allowed,
                reason: Reason::NoPolicy,
                rule: None,
                l7: L7Decision::None,
            }
        }
    }

    /// Every toFQDNs selector that applies to this endpoint's egress, with the
    /// ports it opens (`None`: all ports) and the rule it comes from: what
    /// fqdn-cache needs to turn learned names into datapath entries.
    pub fn fqdn_rules(
        &self,
    ) -> impl Iterator<Item = (SelectorId, Option<&[CompiledPortRule]>, &RuleRef)> {
        self.egress.allow.iter().flat_map(|rule| {
            rule.peers
                .fqdns
                .iter()
                .map(move |id| (*id, rule.ports.as_deref(), &rule.origin))
        })
    }
}

/// A set of valid policies, with every FQDN selector compiled into one matcher.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<Arc<Policy>>,
    matcher: Arc<FqdnMatcher>,
    compiled: Vec<CompiledPolicy>,
    rules: Arc<[RuleRef]>,
}

#[derive(Debug, Clone)]
struct CompiledPolicy {
    /// What the name and rules are read from: a reload compiles every policy of a
    /// cluster, and a copy of each rule doubled the memory they take.
    original: Arc<Policy>,
    specs: Vec<CompiledSpec>,
}

impl CompiledPolicy {
    /// The spec `spec` was compiled from: its subject and requirements.
    fn source_of(&self, spec: &CompiledSpec) -> &crate::rules::Spec {
        &self.original.specs[spec.index]
    }

    /// The rule `pending` was compiled from.
    fn rule(&self, spec: &CompiledSpec, direction: Direction, pending: &PendingRule) -> &Rule {
        let list = self.source_of(spec).rules(direction, pending.deny);
        &list.expect("a pending rule comes from a list of its policy")[pending.at]
    }

    /// Each compiled spec with its source.
    fn specs(&self) -> impl Iterator<Item = (&CompiledSpec, &crate::rules::Spec)> {
        self.specs.iter().map(|s| (s, self.source_of(s)))
    }
}

#[derive(Debug, Clone)]
struct CompiledSpec {
    /// Its place in the policy's specs (the subject and `fromRequires` /
    /// `toRequires` are read from there).
    index: usize,
    default_deny: [bool; 2],
    /// Rules per direction (index by `dir_index`); peers are resolved later,
    /// against an inventory.
    rules: [Vec<PendingRule>; 2],
}

#[derive(Debug, Clone)]
struct PendingRule {
    /// Its place in its spec's list of this direction and `deny`.
    at: usize,
    origin: RuleRef,
    deny: bool,
    ports: Vec<CompiledPortRule>,
    fqdns: Vec<SelectorId>,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl PolicySet {
    /// Builds the set; policies are ordered by kind, namespace and name so
    /// that "the deciding rule" does not depend on file order.
    pub fn new(policies: Vec<Policy>) -> Self {
        Self::from_shared(policies.into_iter().map(Arc::new).collect())
    }

    /// [`PolicySet::new`] for policies shared with their source (an agent
    /// keeps each cluster object's checked policy across reloads).
    pub fn from_shared(mut policies: Vec<Arc<Policy>>) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut builder = FqdnMatcherBuilder::default();
        let mut compiled = Vec::with_capacity(policies.len());
        for policy in &policies {
            let mut specs = Vec::new();
            for (index, spec) in policy.specs.iter().enumerate() {
                let mut rules: [Vec<_>; 2] = [Vec::new(), Vec::new()];
                for direction in [Direction::Ingress, Direction::Egress] {
                    for deny in [true, false] {
                        let list = match (direction, deny) {
                            (Direction::Ingress, false) => "ingress",
                            (Direction::Ingress, true) => "ingressDeny",
                            (Direction::Egress, false) => "egress",
                            (Direction::Egress, true) => "egressDeny",
                        };
                        for (i, rule) in spec
                            .rules(direction, deny)
                            .into_iter()
                            .flatten()
                            .enumerate()
                        {
                            let origin = RuleRef {
                                policy: policy.name.clone(),
                                rule: format!("{}.{list}[{i}]", spec.field),
                            };
                            let ports = compile_ports(rule, &mut builder);
                            let fqdns = match &rule.peers {
                                Peers::Listed(peers) => peers
                                    .iter()
                                    .filter_map(|p| match p {
                                        Peer::Fqdn(sel) => Some(builder.insert(sel.clone())),
                                        _ => None,
                                    })
                                    .collect(),
                                Peers::Any => Vec::new(),
                            };
                            rules[dir_index(direction)].push(PendingRule {
                                at: i,
                                origin,
                                deny,
                                ports,
                                fqdns,
                            });
                        }
                    }
                }
                specs.push(CompiledSpec {
                    index,
                    default_deny: [spec.default_deny_ingress, spec.default_deny_egress],
                    rules,
                });
            }
            compiled.push(CompiledPolicy {
                original: policy.clone(),
                specs,
            });
        }
        let mut rules: Vec<RuleRef> = compiled
            .iter()
            .flat_map(|p| &p.specs)
            .flat_map(|s| s.rules.iter().flatten())
            .map(|r| r.origin.clone())
            .collect();
        rules.sort();
        rules.dedup();
        Self {
            policies,
            matcher: Arc::new(builder.build()),
            compiled,
            rules: rules.into(),
        }
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// The matcher over every `toFQDNs` and `rules.dns` selector of the set.
    pub fn matcher(&self) -> &Arc<FqdnMatcher> {
        &self.matcher
    }

    /// Resolves the set against an inventory: per endpoint, per direction.
    pub fn resolve(&self, inventory: &Inventory, options: ResolveOptions) -> Resolved {
        self.resolve_for(inventory, options, |_| true)
    }

    /// [`PolicySet::resolve`] for the endpoints `wanted` picks only (an
    /// agent: the pods of its node). The others still count as peers, and
    /// their named ports as egress named ports; they get no policy of their
    /// own, which spares a cluster's worth of selector matching.
    pub fn resolve_for(
        &self,
        inventory: &Inventory,
        options: ResolveOptions,
        wanted: impl Fn(&Endpoint) -> bool,
    ) -> Resolved {
        self.resolve_cached(inventory, options, wanted, &mut SelectorCache::default())
    }

    /// [`PolicySet::resolve_for`] with the peer selectors' selections kept
    /// in `selectors` from one resolution to the next (an agent's reloads):
    /// only identities that changed since are tested against them.
    pub fn resolve_cached(
        &self,
        inventory: &Inventory,
        options: ResolveOptions,
        wanted: impl Fn(&Endpoint) -> bool,
        selectors: &mut SelectorCache,
    ) -> Resolved {
        let identities = inventory.identities();
        selectors.sync(identities);
        let egress_ports = EgressNamedPorts::new(inventory.endpoints());
        let subjects: Vec<&Endpoint> = inventory
            .endpoints()
            .iter()
            .map(|e| &**e)
            .filter(|e| wanted(e))
            .collect();
        let mut endpoints = BTreeMap::new();
        let mut per_endpoint: Vec<EndpointPolicy> = subjects
            .iter()
            .map(|e| EndpointPolicy {
                key: e.key.clone(),
                identity: e.identity,
                audit: e.audit || options.audit,
                allow_host_to_local: options.allow_host_to_local,
                ingress: DirectionPolicy::default(),
                egress: DirectionPolicy::default(),
            })
            .collect();
        let selected_by: Vec<Vec<usize>> = self
            .compiled
            .iter()
            .flat_map(CompiledPolicy::specs)
            .map(|(_, spec)| {
                subjects
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| spec.subject.matches(&e.labels))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        // fromRequires / toRequires: what every spec selecting an endpoint
        // requires of the peers of all rules applying to it (Cilium before
        // 1.16: added to every fromEndpoints/toEndpoints selector).
        let mut requires: Vec<BTreeMap<(Direction, bool), Selector>> =
            vec![BTreeMap::new(); per_endpoint.len()];
        for ((_, spec), selected) in self
            .compiled
            .iter()
            .flat_map(CompiledPolicy::specs)
            .zip(&selected_by)
        {
            for r in &spec.requires {
                for &i in selected {
                    let all = requires[i]
                        .entry((r.direction, r.deny))
                        .or_insert_with(Selector::all);
                    *all = all.and(&r.selector);
                }
            }
        }
        let ctx = PeerContext {
            identities,
            nodes: inventory.nodes(),
            services: inventory.services(),
            selectors: std::cell::RefCell::new(selectors),
        };
        let mut spec_index = 0;
        for policy in &self.compiled {
            for spec in &policy.specs {
                let selected = &selected_by[spec_index];
                spec_index += 1;
                if selected.is_empty() {
                    continue;
                }
                for direction in [Direction::Ingress, Direction::Egress] {
                    let d = dir_index(direction);
                    // Peers are resolved once per rule, shared by every
                    // subject, unless the rule depends on the subject: an
                    // ingress named port (the subject's own ports) or
                    // fromRequires/toRequires on an endpoint selector.
                    let shared: Vec<Arc<CompiledRule>> = spec.rules[d]
                        .iter()
                        .map(|pending| {
                            Arc::new(compile_rule(
                                policy.rule(spec, direction, pending),
                                pending,
                                &ctx,
                                None,
                                None,
                                direction,
                                &egress_ports,
                            ))
                        })
                        .collect();
                    for &i in selected {
                        let subject = subjects[i];
                        let ep = &mut per_endpoint[i];
                        let dir = match direction {
                            Direction::Ingress => &mut ep.ingress,
                            Direction::Egress => &mut ep.egress,
                        };
                        if spec.default_deny[d] {
                            dir.enforced = true;
                            let name = &policy.original.name;
                            if dir.enforced_by.last() != Some(name) {
                                dir.enforced_by.push(name.clone());
                            }
                        }
                        for (pending, shared) in spec.rules[d].iter().zip(&shared) {
                            let req = requires[i].get(&(direction, pending.deny));
                            let rule = policy.rule(spec, direction, pending);
                            let own_ports = direction == Direction::Ingress
                                && rule.ports.iter().flatten().any(|p| !p.named.is_empty());
                            let has_selectors = matches!(&rule.peers,
                                Peers::Listed(l) if l.iter().any(|p| matches!(p, Peer::Endpoints(_))));
                            let r = if own_ports || (req.is_some() && has_selectors) {
                                Arc::new(compile_rule(
                                    rule,
                                    pending,
                                    &ctx,
                                    req,
                                    Some(subject),
                                    direction,
                                    &egress_ports,
                                ))
                            } else {
                                shared.clone()
                            };
                            if r.deny {
                                dir.deny.push(r);
                            } else {
                                dir.allow.push(r);
                            }
                        }
                    }
                }
            }
        }
        for ep in per_endpoint.drain(..) {
            endpoints.insert(ep.key.clone(), ep);
        }
        Resolved {
            endpoints,
            matcher: self.matcher.clone(),
            rules: self.rules.clone(),
        }
    }
}

/// What peers are resolved against.
struct PeerContext<'a> {
    identities: &'a BTreeMap<Identity, Arc<Labels>>,
    nodes: &'a [Node],
    services: &'a [crate::services::Service],
    /// Synced with `identities`.
    selectors: std::cell::RefCell<&'a mut SelectorCache>,
}

fn compile_rule(
    rule: &Rule,
    pending: &PendingRule,
    ctx: &PeerContext,
    requires: Option<&Selector>,
    subject: Option<&Endpoint>,
    direction: Direction,
    egress_ports: &EgressNamedPorts,
) -> CompiledRule {
    let mut peers = compile_peers(&rule.peers, ctx, pending.deny, requires);
    peers.fqdns = pending.fqdns.clone();
    let ports = rule.ports.as_ref().map(|rules| {
        rules
            .iter()
            .zip(&pending.ports)
            .map(|(rule, compiled)| {
                let mut compiled = compiled.clone();
                for named in &rule.named {
                    compiled.ports.extend(match direction {
                        Direction::Ingress => {
                            subject.map_or_else(Vec::new, |s| ingress_named_port(s, named))
                        }
                        Direction::Egress => egress_ports.resolve(named),
                    });
                }
                compiled
            })
            .collect()
    });
    CompiledRule {
        origin: pending.origin.clone(),
        deny: pending.deny,
        peers,
        ports,
    }
}

/// The protocols a port rule's protocol stands for (ANY: each of them).
fn protocols(p: ProtocolSpec) -> &'static [ProtocolSpec] {
    match p {
        ProtocolSpec::Any => &[ProtocolSpec::Tcp, ProtocolSpec::Udp, ProtocolSpec::Sctp],
        ProtocolSpec::Tcp => &[ProtocolSpec::Tcp],
        ProtocolSpec::Udp => &[ProtocolSpec::Udp],
        ProtocolSpec::Sctp => &[ProtocolSpec::Sctp],
        ProtocolSpec::Icmp => &[ProtocolSpec::Icmp],
        ProtocolSpec::Icmpv6 => &[ProtocolSpec::Icmpv6],
    }
}

/// An ingress named port is the subject's own container port of that name
/// and protocol (Cilium: `getNamedPortIngress`, pkg/endpoint/policy.go).
fn ingress_named_port(subject: &Endpoint, named: &NamedPort) -> Vec<PortRange> {
    protocols(named.protocol)
        .iter()
        .filter_map(|proto| {
            subject
                .ports
                .iter()
                .find(|p| p.name == named.name && p.protocol == *proto && p.port != 0)
                .map(|p| PortRange {
                    start: p.port,
                    end: p.port,
                    protocol: *proto,
                })
        })
        .collect()
}

/// Every pod's named ports, for egress: Cilium resolves an egress named port
/// against the named ports of all pods in the cluster, not per peer; if pods
/// disagree on the number for a name and protocol, the port resolves to
/// nothing and the rule allows nothing on it (`ErrDuplicateNamedPorts`,
/// pkg/types/portmap.go `namedPortMultiMap.GetNamedPort`).
struct EgressNamedPorts(BTreeMap<(String, ProtocolSpec), BTreeSet<u16>>);

impl EgressNamedPorts {
    fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        let mut map: BTreeMap<(String, ProtocolSpec), BTreeSet<u16>> = BTreeMap::new();
        for p in endpoints.iter().flat_map(|e| &e.ports) {
            if p.port != 0 {
                map.entry((p.name.clone(), p.protocol))
                    .or_default()
                    .insert(p.port);
            }
        }
        Self(map)
    }

    fn resolve(&self, named: &NamedPort) -> Vec<PortRange> {
        protocols(named.protocol)
            .iter()
            .filter_map(|proto| {
                let ports = self.0.get(&(named.name.clone(), *proto))?;
                (ports.len() == 1).then(|| {
                    let port = *ports.iter().next().expect("one port");
                    PortRange {
                        start: port,
                        end: port,
                        protocol: *proto,
                    }
                })
            })
            .collect()
    }
}

fn compile_peers(
    peers: &Peers,
    ctx: &PeerContext,
    deny: bool,
    requires: Option<&Selector>,
) -> CompiledPeers {
    let identities = ctx.identities;
    let mut out = CompiledPeers::default();
    let list = match peers {
        Peers::Any => {
            out.any = true;
            return out;
        }
        Peers::Listed(list) => list,
    };
    for peer in list {
        match peer {
            Peer::Endpoints(sel) => {
                let sel = match requires {
                    Some(req) => sel.and(req),
                    None => sel.clone(),
                };
                // Pod selectors select pods; a `reserved:` key selects a
                // reserved identity instead.
                let reserved = sel.mentions_reserved();
                out.identities
                    .extend(ctx.selectors.borrow_mut().select(&sel, reserved));
            }
            Peer::Nodes(sel) => {
                // Nodes share two identities (`host`, `remote-node`), so a
                // selector matching only some remote nodes cannot be told
                // apart by the datapath: an allow rule then selects no remote
                // node, a deny rule all of them (allow less, deny more).
                let matching = |local: bool| {
                    ctx.nodes
                        .iter()
                        .filter(|n| n.local == local)
                        .map(|n| sel.matches(&n.labels))
                        .collect::<Vec<_>>()
                };
                if matching(true).into_iter().any(|m| m) {
                    out.identities.insert(Identity::HOST);
                }
                let remote = matching(false);
                let take = if deny {
                    remote.iter().any(|m| *m)
                } else {
                    !remote.is_empty() && remote.iter().all(|m| *m)
                };
                if take {
                    out.identities.insert(Identity::REMOTE_NODE);
                }
            }
            Peer::Entity(Entity::All) => out.any = true,
            Peer::Entity(Entity::World) => {
                out.world_v4 = true;
                out.world_v6 = true;
            }
            Peer::Entity(Entity::WorldIpv4) => out.world_v4 = true,
            Peer::Entity(Entity::WorldIpv6) => out.world_v6 = true,
            Peer::Entity(entity) => {
                out.identities
                    .extend(identities.keys().filter(|id| id.in_entity(*entity, None)));
            }
            Peer::Cidr { cidr, except } => out.cidrs.push((*cidr, except.clone())),
            Peer::CidrGroup { cidrs, except, .. } => {
                for cidr in cidrs {
                    let inside = except.iter().filter(|e| cidr.contains(*e)).copied();
                    out.cidrs.push((*cidr, inside.collect()));
                }
            }
            Peer::Service(service) => {
                for svc in ctx.services.iter().filter(|s| service_matches(service, s)) {
                    if svc.selector.is_empty() {
                        // No selector: its backend addresses, as CIDRs.
                        out.cidrs
                            .extend(svc.backend_ips().map(|ip| (IpNet::from(ip), Vec::new())));
                        continue;
                    }
                    let mut sel = svc
                        .selector
                        .iter()
                        .fold(Selector::all(), |s, (k, v)| s.with_label(k, v))
                        .with_label(NAMESPACE_LABEL, &svc.namespace);
                    if let Some(req) = requires {
                        sel = sel.and(req);
                    }
                    out.identities.extend(
                        identities
                            .iter()
                            .filter(|(id, labels)| !id.is_reserved() && sel.matches(labels))
                            .map(|(id, _)| *id),
                    );
                }
            }
            // Selector ids were assigned when the set was built.
            Peer::Fqdn(_) => {}
        }
    }
    out
}

/// Whether a `toServices` element names this Service (Cilium:
/// serviceRefMatches / serviceSelectorMatches, pkg/policy/k8s/service.go;
/// no namespace in the element: any namespace).
fn service_matches(r: &ServiceRef, svc: &crate::services::Service) -> bool {
    let in_namespace = |ns: &Option<String>| ns.as_deref().is_none_or(|n| n == svc.namespace);
    match r {
        ServiceRef::Name { name, namespace } => *name == svc.name && in_namespace(namespace),
        ServiceRef::Selector {
            selector,
            namespace,
        } => in_namespace(namespace) && selector.matches(&svc.labels),
    }
}

fn compile_ports(rule: &Rule, builder: &mut FqdnMatcherBuilder) -> Vec<CompiledPortRule> {
    rule.ports
        .iter()
        .flatten()
        .map(|p| CompiledPortRule {
            ports: p.ports.clone(),
            l7: match &p.l7 {
                L7::None => CompiledL7::None,
                L7::Dns(sels) => {
                    CompiledL7::Dns(sels.iter().map(|s| builder.insert(s.clone())).collect())
                }
                L7::Http(rules) => CompiledL7::Http(rules.clone()),
                L7::Tls(names) => CompiledL7::Tls(names.clone()),
            },
        })
        .collect()
}

/// The outcome of resolution: the policy of every endpoint.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub endpoints: BTreeMap<EndpointKey, EndpointPolicy>,
    pub matcher: Arc<FqdnMatcher>,
    /// Every rule of the policy set, sorted, whether it applies to an
    /// endpoint or not: rule ids numbered from this list do not depend on
    /// which endpoints were resolved.
    pub rules: Arc<[RuleRef]>,
}

impl Resolved {
    pub fn endpoint(&self, key: &EndpointKey) -> Option<&EndpointPolicy> {
        self.endpoints.get(key)
    }
}
