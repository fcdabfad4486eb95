//! `tollgate policy suggest`: observed traffic in, `CiliumNetworkPolicy`
//! documents out — one per workload, allowing exactly what was seen and
//! nothing else.
//!
//! Pure: no files, no sockets, no clock. The caller turns its event lines
//! into [`Observation`]s (keeping only traffic that actually passed) and
//! prints the [`PolicyObject`]s this returns.
//!
//! ## Decisions (docs/suggest.md explains them for users)
//! - **Workload** = namespace + the pod's labels minus the ones that differ
//!   from pod to pod of one workload or that the namespace already implies
//!   ([`is_grouping_label`]). Pods with the same remaining labels share one
//!   policy, selected by exactly those labels.
//! - **Named destinations are never IPs**: an address the pod learned
//!   through DNS (the flow's names, or an answer to one of its queries) is
//!   allowed by `toFQDNs` for those names; only addresses no name was seen
//!   for become `toCIDR` `/32` (`/128`).
//! - **Patterns**: [`PATTERN_THRESHOLD`] or more distinct names that differ
//!   only in their first label (`a.cdn.example.com`, `b.cdn.example.com`, ...)
//!   become one `matchPattern: "*.cdn.example.com"`, if that parent has two
//!   labels at least (never `*.com`).
//! - **DNS**: for each resolver the pod used, port 53 (the port seen) over
//!   UDP and TCP, with `rules.dns` for exactly the names it asked that
//!   resolver (patterns as above). The pod's plain flows to that resolver
//!   port are covered by this rule and get no rule of their own (an L4 allow
//!   beside it would lift the DNS restriction).
//! - **Peers**: pods by their grouping labels (plus the namespace label if
//!   it is another namespace), `host` / `remote-node` / `kube-apiserver` /
//!   ... by entity, everything else by address.
//! - **HTTP**: a port on which HTTP requests were seen gets `rules.http`,
//!   one rule per method and path seen (anchored, escaped: exactly that
//!   path; a query, if one was seen, may vary). The proxy decides for both
//!   ends of a request and the destination's veth does not report the
//!   connection it hands over, so a request to (or from) a pod also gives
//!   that pod the L4 rule for the other direction.
//! - **Default deny** is explicit: both directions always have rules
//!   (a direction with no observed traffic gets a rule selecting nobody:
//!   `toEntities: []` / `fromEntities: []`) and `enableDefaultDeny` is
//!   `true` for both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::labels::NAMESPACE_LABEL;
use crate::model::{
    DefaultDenyConfig, EgressRule, EndpointSelector, Entity, FqdnSelectorSpec, HttpRuleSpec,
    IngressRule, L7Rules, ObjectMeta, PolicyObject, PortProtocol, PortRule, ProtocolSpec, RuleSpec,
};
use crate::rules::Direction;

/// Distinct sibling names (same parent domain) from which a
/// `matchPattern: "*.parent"` replaces them.
pub const PATTERN_THRESHOLD: usize = 3;

/// Labels that tell pods of one workload apart, or that change with every
/// release of it: never used to group or select (a selector on them would
/// stop matching at the next rollout).
pub const POD_SPECIFIC_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "helm.sh/chart",
    "app.kubernetes.io/version",
];

/// The port of an observed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp(u16),
    Udp(u16),
    Sctp(u16),
}

impl L4 {
    fn port_protocol(self) -> PortProtocol {
        let (port, protocol) = match self {
            L4::Tcp(p) => (p, ProtocolSpec::Tcp),
            L4::Udp(p) => (p, ProtocolSpec::Udp),
            L4::Sctp(p) => (p, ProtocolSpec::Sctp),
        };
        PortProtocol {
            port: port.to_string(),
            end_port: None,
            protocol: Some(protocol),
        }
    }
}

/// One end of an observed flow, as the event described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Party {
    /// Set for pods.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Identity labels as Cilium prints them: `k8s:app=web`, `reserved:world`.
    pub labels: Vec<String>,
    pub ip: Option<IpAddr>,
}

impl Party {
    fn pod_key(&self) -> Option<(String, String)> {
        Some((self.namespace.clone()?, self.pod.clone()?))
    }
}

/// One event that counts: traffic that passed (allowed, audited or handed
/// to a proxy). The caller drops what was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A connection, seen on `subject`'s side (`egress`: it opened it).
    Flow {
        subject: Party,
        direction: Direction,
        peer: Party,
        /// Names the pod learned the peer's address for.
        names: Vec<String>,
        l4: L4,
    },
    /// A query `subject` sent to `resolver` (answered), and the addresses
    /// the answer gave it.
    Dns {
        subject: Party,
        resolver: Party,
        port: u16,
        name: String,
        answers: Vec<IpAddr>,
    },
    /// An HTTP request on a connection `subject` is one end of.
    Http {
        subject: Party,
        direction: Direction,
        peer: Party,
        port: u16,
        method: String,
        /// The request target: path, and the query if any.
        path: String,
    },
}

/// The policies, and what could not be used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Suggestion {
    /// Sorted by namespace and name.
    pub policies: Vec<PolicyObject>,
    /// One line per observation that was left out, and why.
    pub skipped: Vec<String>,
}

impl Suggestion {
    /// The policies as one YAML stream, `---` before each document.
    pub fn yaml(&self) -> String {
        self.policies
            .iter()
            .map(|p| {
                // Plain data with string keys: serialization cannot fail.
                format!("---\n{}", serde_yaml::to_string(p).unwrap_or_default())
            })
            .collect()
    }
}

/// Whether a pod label groups pods into workloads (and selects them).
pub fn is_grouping_label(key: &str) -> bool {
    !(key == NAMESPACE_LABEL
        || key.starts_with("io.cilium.k8s.")
        || key.starts_with("io.kubernetes.pod.")
        || POD_SPECIFIC_LABELS.contains(&key))
}

/// `k8s:app=web` -> (`app`, `web`); reserved and other sources -> None.
fn k8s_label(label: &str) -> Option<(&str, &str)> {
    let rest = match label.split_once(':') {
        Some(("k8s", rest)) => rest,
        Some(_) => return None,
        None => label,
    };
    Some(rest.split_once('=').unwrap_or((rest, "")))
}

/// The labels that select a pod's workload.
fn grouping_labels(party: &Party) -> BTreeMap<String, String> {
    party
        .labels
        .iter()
        .filter_map(|l| k8s_label(l))
        .filter(|(k, _)| is_grouping_label(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `reserved:host` -> host, ...; the first reserved label that is an entity
/// a policy can name (kube-apiserver before host: the API server on this
/// node carries both).
fn entity(party: &Party) -> Option<Entity> {
    let reserved: BTreeSet<&str> = party
        .labels
        .iter()
        .filter_map(|l| l.strip_prefix("reserved:"))
        .collect();
    [
        ("kube-apiserver", Entity::KubeApiserver),
        ("host", Entity::Host),
        ("remote-node", Entity::RemoteNode),
        ("health", Entity::Health),
        ("ingress", Entity::Ingress),
        ("init", Entity::Init),
        ("unmanaged", Entity::Unmanaged),
    ]
    .into_iter()
    .find(|(name, _)| reserved.contains(name))
    .map(|(_, e)| e)
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Workload {
    namespace: String,
    labels: BTreeMap<String, String>,
}

/// Whom a rule names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Endpoint(BTreeMap<String, String>),
    Entity(Entity),
    Cidr(String),
    Fqdn(String),
}

/// Per port: the HTTP requests seen, (method, path without query) -> a
/// query was seen.
type Ports = BTreeMap<L4, BTreeMap<(String, String), bool>>;

#[derive(Debug, Default)]
struct Traffic {
    pods: BTreeSet<String>,
    peers: [BTreeMap<Peer, Ports>; 2],
    /// (resolver, port) -> names asked.
    dns: BTreeMap<(Peer, u16), BTreeSet<String>>,
    /// Resolver addresses and ports: flows there are DNS, covered by `dns`.
    resolvers: BTreeSet<(IpAddr, u16)>,
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Policies that allow every observation and nothing else.
pub fn suggest(observations: &[Observation]) -> Suggestion {
    let mut skipped = Vec::new();
    // Pass 1: what each pod learned each address as.
    let mut names: BTreeMap<((String, String), IpAddr), BTreeSet<String>> = BTreeMap::new();
    let mut learn = |subject: &Party, ip: IpAddr, name: &str| {
        if let (Some(pod), Some(n)) = (subject.pod_key(), clean_name(name)) {
            names.entry((pod, ip)).or_default().insert(n);
        }
    };
    for o in observations {
        match o {
            Observation::Dns {
                subject,
                name,
                answers,
                ..
            } => answers.iter().for_each(|ip| learn(subject, *ip, name)),
            Observation::Flow {
                subject,
                direction: Direction::Egress,
                peer,
                names,
                ..
            } => {
                if let Some(ip) = peer.ip {
                    names.iter().for_each(|n| learn(subject, ip, n));
                }
            }
            _ => {}
        }
    }
    // Pass 2: per workload, who on which ports.
    let mut workloads: BTreeMap<Workload, Traffic> = BTreeMap::new();
    let workload = |subject: &Party| -> Option<Workload> {
        Some(Workload {
            namespace: subject.namespace.clone()?,
            labels: grouping_labels(subject),
        })
    };
    // Names only ever describe destinations: a source is its address.
    let peers_of = |subject: &Party, direction: Direction, peer: &Party| -> Option<Vec<Peer>> {
        let ns = subject.namespace.as_deref()?;
        if let Some(peer_ns) = &peer.namespace {
            let mut labels = grouping_labels(peer);
            if peer_ns != ns {
                labels.insert(format!("k8s:{NAMESPACE_LABEL}"), peer_ns.clone());
            }
            return Some(vec![Peer::Endpoint(labels)]);
        }
        if let Some(e) = entity(peer) {
            return Some(vec![Peer::Entity(e)]);
        }
        let ip = peer.ip?;
        let learned = (direction == Direction::Egress)
            .then(|| subject.pod_key())
            .flatten()
            .and_then(|pod| names.get(&(pod, ip)))
            .filter(|n| !n.is_empty());
        Some(match learned {
            Some(n) => n.iter().cloned().map(Peer::Fqdn).collect(),
            None => vec![Peer::Cidr(host_cidr(ip))],
        })
    };
    // DNS first: flows to a resolver are then known to be DNS.
    for o in observations {
        let Observation::Dns {
            subject,
            resolver,
            port,
            name,
            ..
        } = o
        else {
            continue;
        };
        let (Some(w), Some(ip)) = (workload(subject), resolver.ip) else {
            skipped.push(format!(
                "DNS query for {name}: the pod or resolver is unknown"
            ));
            continue;
        };
        let Some(n) = clean_name(name) else {
            skipped.push(format!(
                "DNS query for {name:?}: not a name a DNS rule can allow"
            ));
            continue;
        };
        let resolver_peer = match (&resolver.namespace, entity(resolver)) {
            (Some(_), _) => {
                peers_of(subject, Direction::Egress, resolver).and_then(|mut p| p.pop())
            }
            (None, Some(e)) => Some(Peer::Entity(e)),
            // A resolver is reached by its address, never by a name.
            (None, None) => Some(Peer::Cidr(host_cidr(ip))),
        };
        let Some(resolver_peer) = resolver_peer else {
            continue;
        };
        let t = workloads.entry(w).or_default();
        t.pods.extend(subject.pod.clone());
        t.resolvers.insert((ip, *port));
        t.dns.entry((resolver_peer, *port)).or_default().insert(n);
    }
    for o in observations {
        let (subject, direction, peer, l4, http) = match o {
            Observation::Flow {
                subject,
                direction,
                peer,
                l4,
                ..
            } => (subject, *direction, peer, *l4, None),
            Observation::Http {
                subject,
                direction,
                peer,
                port,
                method,
                path,
            } => (
                subject,
                *direction,
                peer,
                L4::Tcp(*port),
                Some((method, path)),
            ),
            Observation::Dns { .. } => continue,
        };
        let Some(w) = workload(subject) else {
            skipped.push(format!(
                "{} {direction:?} flow: the pod it belongs to is unknown",
                describe(subject)
            ));
            continue;
        };
        let Some(peers) = peers_of(subject, direction, peer) else {
            skipped.push(format!(
                "{} {direction:?} flow: the peer has no address or identity",
                describe(subject)
            ));
            continue;
        };
        let t = workloads.entry(w).or_default();
        t.pods.extend(subject.pod.clone());
        if direction == Direction::Egress && http.is_none() {
            let port = match l4 {
                L4::Tcp(p) | L4::Udp(p) | L4::Sctp(p) => p,
            };
            // To the resolver's address, or (a Service's, translated before
            // the flow was seen) to the pods the DNS rule names.
            let to_resolver = peer.ip.is_some_and(|ip| t.resolvers.contains(&(ip, port)))
                || peers.iter().all(|p| t.dns.contains_key(&(p.clone(), port)));
            if to_resolver && !matches!(l4, L4::Sctp(_)) {
                continue; // DNS: the DNS rule covers it
            }
        }
        for p in peers {
            let requests = t.peers[slot(direction)]
                .entry(p)
                .or_default()
                .entry(l4)
                .or_default();
            if let Some((method, target)) = http {
                let (path, query) = match target.split_once('?') {
                    Some((path, _)) => (path, true),
                    None => (target.as_str(), false),
                };
                let q = requests
                    .entry((method.to_ascii_uppercase(), path.to_string()))
                    .or_default();
                *q |= query;
            }
        }
        // The HTTP proxy decides for both ends of a request, and the
        // destination's veth does not report the connection it hands over:
        // the pod at the other end gets the L4 rule from this event.
        if http.is_some() {
            if let (Some(other), Some(subject_ns)) = (workload(peer), &subject.namespace) {
                let mut labels = grouping_labels(subject);
                if *subject_ns != other.namespace {
                    labels.insert(format!("k8s:{NAMESPACE_LABEL}"), subject_ns.clone());
                }
                let t = workloads.entry(other).or_default();
                t.pods.extend(peer.pod.clone());
                let back = match direction {
                    Direction::Egress => Direction::Ingress,
                    Direction::Ingress => Direction::Egress,
                };
                t.peers[slot(back)]
                    .entry(Peer::Endpoint(labels))
                    .or_default()
                    .entry(l4)
                    .or_default();
            }
        }
    }
    let mut used = BTreeSet::new();
    let policies = workloads
        .into_iter()
        .map(|(w, t)| policy(&w, t, &mut used))
        .collect();
    Suggestion { policies, skipped }
}

fn describe(p: &Party) -> String {
    match (&p.namespace, &p.pod, &p.ip) {
        (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
        (_, _, Some(ip)) => ip.to_string(),
        _ => "?".into(),
    }
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Canonical (lowercase, no trailing dot), as `matchName` takes it; None
/// if no DNS rule can name it (what `policy check` would reject).
fn clean_name(name: &str) -> Option<String> {
    let n = crate::fqdn::normalize_name(name)?;
    crate::fqdn::FqdnSelector::name(&n)
        .ok()
        .map(|s| s.as_str().to_string())
}

/// `matchName`s, and a `matchPattern: "*.parent"` for every parent
/// with [`PATTERN_THRESHOLD`] or more children among `names`.
pub fn compact_names(names: &BTreeSet<String>) -> Vec<FqdnSelectorSpec> {
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in names {
        match n.split_once('.') {
            // `*.com` would allow a whole top-level domain: never.
            Some((_, parent)) if parent.contains('.') => {
                children.entry(parent).or_default().push(n)
            }
            _ => children.entry("").or_default().push(n),
        }
    }
    let mut out: Vec<FqdnSelectorSpec> = Vec::new();
    for (parent, names) in children {
        if !parent.is_empty() && names.len() >= PATTERN_THRESHOLD {
            out.push(FqdnSelectorSpec {
                match_name: None,
                match_pattern: Some(format!("*.{parent}")),
            });
        } else {
            out.extend(names.into_iter().map(|n| FqdnSelectorSpec {
                match_name: Some(n.to_string()),
                match_pattern: None,
            }));
        }
    }
    out.sort_by(|a, b| {
        let key = |s: &FqdnSelectorSpec| {
            s.match_name
                .clone()
                .or_else(|| s.match_pattern.clone())
                .unwrap_or_default()
        };
        key(a).cmp(&key(b))
    });
    out
}

/// The `toPorts` for these ports: the plain ones together, each port with
/// HTTP requests on its own with its `rules.http`.
fn port_rules(ports: &Ports) -> Vec<PortRule> {
    let plain: Vec<PortProtocol> = ports
        .iter()
        .filter(|(_, http)| http.is_empty())
        .map(|(l4, _)| l4.port_protocol())
        .collect();
    let mut rules = Vec::new();
    if !plain.is_empty() {
        rules.push(PortRule {
            ports: plain,
            ..PortRule::default()
        });
    }
    for (l4, http) in ports.iter().filter(|(_, http)| !http.is_empty()) {
        let http = http
            .iter()
            .map(|((method, path), query)| HttpRuleSpec {
                method: Some(regex::escape(method)),
                path: Some(format!(
                    "{}{}",
                    regex::escape(path),
                    if *query { r"(\?.*)?" } else { "" }
                )),
                ..HttpRuleSpec::default()
            })
            .collect();
        rules.push(PortRule {
            ports: vec![l4.port_protocol()],
            rules: Some(L7Rules {
                http: Some(http),
                ..L7Rules::default()
            }),
            ..PortRule::default()
        });
    }
    rules
}

fn selector(labels: &BTreeMap<String, String>) -> EndpointSelector {
    EndpointSelector {
        match_labels: (!labels.is_empty()).then(|| labels.clone()),
        match_expressions: None,
    }
}

/// Peers of one kind grouped by identical ports, in a stable order.
fn grouped<T: Ord + Clone>(
    peers: &BTreeMap<Peer, Ports>,
    pick: impl Fn(&Peer) -> Option<T>,
) -> Vec<(Vec<T>, Ports)> {
    let mut by_ports: BTreeMap<&Ports, Vec<T>> = BTreeMap::new();
    for (peer, ports) in peers {
        if let Some(t) = pick(peer) {
            by_ports.entry(ports).or_default().push(t);
        }
    }
    let mut out: Vec<_> = by_ports
        .into_iter()
        .map(|(ports, peers)| (peers, ports.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn policy(w: &Workload, t: Traffic, used: &mut BTreeSet<(String, String)>) -> PolicyObject {
    let mut egress = Vec::new();
    for ((resolver, port), names) in &t.dns {
        let mut rule = EgressRule::default();
        set_egress_peer(&mut rule, resolver.clone());
        rule.to_ports = Some(vec![PortRule {
            ports: vec![
                L4::Udp(*port).port_protocol(),
                L4::Tcp(*port).port_protocol(),
            ],
            rules: Some(L7Rules {
                dns: Some(compact_names(names)),
                ..L7Rules::default()
            }),
            ..PortRule::default()
        }]);
        egress.push(rule);
    }
    let out = &t.peers[slot(Direction::Egress)];
    for (sels, ports) in grouped(out, |p| match p {
        Peer::Endpoint(l) => Some(l.clone()),
        _ => None,
    }) {
        egress.push(EgressRule {
            to_endpoints: Some(sels.iter().map(selector).collect()),
            to_ports: Some(port_rules(&ports)),
            ..EgressRule::default()
        });
    }
    for (entities, ports) in grouped(out, |p| match p {
        Peer::Entity(e) => Some(*e),
        _ => None,
    }) {
        egress.push(EgressRule {
            to_entities: Some(entities),
            to_ports: Some(port_rules(&ports)),
            ..EgressRule::default()
        });
    }
    for (cidrs, ports) in grouped(out, |p| match p {
        Peer::Cidr(c) => Some(c.clone()),
        _ => None,
    }) {
        egress.push(EgressRule {
            to_cidr: Some(cidrs),
            to_ports: Some(port_rules(&ports)),
            ..EgressRule::default()
        });
    }
    for (names, ports) in grouped(out, |p| match p {
        Peer::Fqdn(n) => Some(n.clone()),
        _ => None,
    }) {
        egress.push(EgressRule {
            to_fqdns: Some(compact_names(&names.into_iter().collect())),
            to_ports: Some(port_rules(&ports)),
            ..EgressRule::default()
        });
    }
    if egress.is_empty() {
        // Nothing seen: a rule selecting nobody keeps egress in default deny.
        egress.push(EgressRule {
            to_entities: Some(Vec::new()),
            ..EgressRule::default()
        });
    }
    let mut ingress = Vec::new();
    let inc = &t.peers[slot(Direction::Ingress)];
    for (sels, ports) in grouped(inc, |p| match p {
        Peer::Endpoint(l) => Some(l.clone()),
        _ => None,
    }) {
        ingress.push(IngressRule {
            from_endpoints: Some(sels.iter().map(selector).collect()),
            to_ports: Some(port_rules(&ports)),
            ..IngressRule::default()
        });
    }
    for (entities, ports) in grouped(inc, |p| match p {
        Peer::Entity(e) => Some(*e),
        _ => None,
    }) {
        ingress.push(IngressRule {
            from_entities: Some(entities),
            to_ports: Some(port_rules(&ports)),
            ..IngressRule::default()
        });
    }
    // Sources are never named: an ingress peer outside the cluster is its address.
    for (cidrs, ports) in grouped(inc, |p| match p {
        Peer::Cidr(c) => Some(c.clone()),
        _ => None,
    }) {
        ingress.push(IngressRule {
            from_cidr: Some(cidrs),
            to_ports: Some(port_rules(&ports)),
            ..IngressRule::default()
        });
    }
    if ingress.is_empty() {
        ingress.push(IngressRule {
            from_entities: Some(Vec::new()),
            ..IngressRule::default()
        });
    }
    let name = unique_name(&w.namespace, &w.labels, used);
    let pods: Vec<&str> = t.pods.iter().map(String::as_str).collect();
    PolicyObject {
        api_version: "cilium.io/v2".into(),
        kind: "CiliumNetworkPolicy".into(),
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(w.namespace.clone()),
            labels: BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "tollgate-policy-suggest".to_string(),
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(RuleSpec {
            description: Some(format!(
                "Suggested by `tollgate policy suggest` from the traffic of {}: review before enforcing",
                pods.join(", ")
            )),
            endpoint_selector: Some(selector(&w.labels)),
            ingress: Some(ingress),
            egress: Some(egress),
            enable_default_deny: Some(DefaultDenyConfig {
                ingress: Some(true),
                egress: Some(true),
            }),
            ..RuleSpec::default()
        }),
        specs: None,
        status: None,
    }
}

fn set_egress_peer(rule: &mut EgressRule, peer: Peer) {
    match peer {
        Peer::Endpoint(l) => rule.to_endpoints = Some(vec![selector(&l)]),
        Peer::Entity(e) => rule.to_entities = Some(vec![e]),
        Peer::Cidr(c) => rule.to_cidr = Some(vec![c]),
        Peer::Fqdn(n) => {
            rule.to_fqdns = Some(vec![FqdnSelectorSpec {
                match_name: Some(n),
                match_pattern: None,
            }])
        }
    }
}

/// `suggested-<app>`: from the first of the usual workload labels, else
/// all label values; unique within the namespace.
fn unique_name(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    used: &mut BTreeSet<(String, String)>,
) -> String {
    let base = [
        "app.kubernetes.io/name",
        "app",
        "k8s-app",
        "name",
        "component",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_else(|| {
        let all: Vec<&str> = labels.values().map(String::as_str).collect();
        if all.is_empty() {
            "all-pods".into()
        } else {
            all.join("-")
        }
    });
    let mut base: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base = base.trim_matches('-').to_string();
    if base.is_empty() {
        base = "workload".into();
    }
    base.truncate(200);
    let mut name = format!("suggested-{base}");
    let mut n = 2;
    while !used.insert((namespace.to_string(), name.clone())) {
        name = format!("suggested-{base}-{n}");
        n += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Verdict};

    const ENDPOINTS: &str = "
namespaces: [{name: prod}, {name: kube-system}]
endpoints:
  - {name: web-1, namespace: prod, labels: {app: web, pod-template-hash: aaa}, ips: [10.0.1.1]}
  - {name: web-2, namespace: prod, labels: {app: web, pod-template-hash: bbb}, ips: [10.0.1.2]}
  - {name: db-0, namespace: prod, labels: {app: db, statefulset.kubernetes.io/pod-name: db-0}, ips: [10.0.1.3]}
  - {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}, ips: [10.0.0.53]}
nodes:
  - {name: node, local: true, ips: [192.168.0.1]}
";

    fn pod(name: &str, ip: &str) -> Party {
        let (ns, labels): (&str, &[&str]) = match name {
            "web-1" => ("prod", &["k8s:app=web", "k8s:pod-template-hash=aaa"]),
            "web-2" => ("prod", &["k8s:app=web", "k8s:pod-template-hash=bbb"]),
            "db-0" => (
                "prod",
                &["k8s:app=db", "k8s:statefulset.kubernetes.io/pod-name=db-0"],
            ),
            "coredns" => ("kube-system", &["k8s:k8s-app=kube-dns"]),
            _ => unreachable!(),
        };
        let mut labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        labels.push(format!("k8s:io.kubernetes.pod.namespace={ns}"));
        labels.push("k8s:io.cilium.k8s.policy.cluster=default".into());
        Party {
            namespace: Some(ns.into()),
            pod: Some(name.into()),
            labels,
            ip: Some(ip.parse().unwrap()),
        }
    }

    fn world(ip: &str) -> Party {
        Party {
            labels: vec!["reserved:world".into()],
            ip: Some(ip.parse().unwrap()),
            ..Party::default()
        }
    }

    fn host() -> Party {
        Party {
            labels: vec!["reserved:host".into()],
            ip: Some("192.168.0.1".parse().unwrap()),
            ..Party::default()
        }
    }

    fn web() -> Party {
        pod("web-1", "10.0.1.1")
    }

    fn dns(subject: Party, name: &str, answers: &[&str]) -> Observation {
        Observation::Dns {
            subject,
            resolver: pod("coredns", "10.0.0.53"),
            port: 53,
            name: format!("{name}."),
            answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn egress(subject: Party, peer: Party, names: &[&str], l4: L4) -> Observation {
        Observation::Flow {
            subject,
            direction: Direction::Egress,
            peer,
            names: names.iter().map(|n| n.to_string()).collect(),
            l4,
        }
    }

    fn ingress(subject: Party, peer: Party, l4: L4) -> Observation {
        Observation::Flow {
            subject,
            direction: Direction::Ingress,
            peer,
            names: Vec::new(),
            l4,
        }
    }

    fn yaml(s: &Suggestion) -> String {
        s.yaml()
    }

    fn egress_rules(s: &Suggestion, name: &str) -> Vec<EgressRule> {
        let p = s
            .policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no policy {name} in\n{}", yaml(s)));
        p.spec.as_ref().unwrap().egress.clone().unwrap()
    }

    fn names_of(specs: &[FqdnSelectorSpec]) -> Vec<String> {
        specs
            .iter()
            .map(|s| {
                s.match_name
                    .clone()
                    .unwrap_or_else(|| format!("pattern {}", s.match_pattern.clone().unwrap()))
            })
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn three_siblings_become_a_pattern_two_do_not() {
        assert_eq!(
            names_of(&compact_names(&set(&["a.cdn.test", "b.cdn.test"]))),
            ["a.cdn.test", "b.cdn.test"]
        );
        assert_eq!(
            names_of(&compact_names(&set(&[
                "a.cdn.test",
                "b.cdn.test",
                "c.cdn.test",
                "api.test"
            ]))),
            ["pattern *.cdn.test", "api.test"]
        );
        // Never a whole top-level domain, and deeper names are not siblings.
        assert_eq!(
            names_of(&compact_names(&set(&[
                "a.com",
                "b.com",
                "c.com",
                "x.y.cdn.test"
            ]))),
            ["a.com", "b.com", "c.com", "x.y.cdn.test"]
        );
        assert_eq!(PATTERN_THRESHOLD, 3);
    }

    #[test]
    fn a_named_destination_is_allowed_by_name_never_by_address() {
        let s = suggest(&[
            dns(web(), "api.test", &["203.0.113.10"]),
            // The flow itself does not say the name: the answer does.
            egress(web(), world("203.0.113.10"), &[], L4::Tcp(443)),
            // A name the flow carries (learned before the recording began).
            egress(web(), world("203.0.113.11"), &["old.test"], L4::Tcp(443)),
            egress(web(), world("198.51.100.7"), &[], L4::Tcp(8443)),
        ]);
        let text = yaml(&s);
        assert!(!text.contains("203.0.113.10"), "{text}");
        assert!(!text.contains("203.0.113.11"), "{text}");
        let rules = egress_rules(&s, "suggested-web");
        let fqdn: Vec<_> = rules.iter().filter(|r| r.to_fqdns.is_some()).collect();
        assert_eq!(fqdn.len(), 1, "{text}");
        assert_eq!(
            names_of(fqdn[0].to_fqdns.as_ref().unwrap()),
            ["api.test", "old.test"]
        );
        assert_eq!(
            fqdn[0].to_ports.as_ref().unwrap()[0].ports,
            [L4::Tcp(443).port_protocol()]
        );
        // The unnamed address: its /32, on its own port.
        let cidr: Vec<_> = rules.iter().filter_map(|r| r.to_cidr.clone()).collect();
        assert_eq!(cidr, [vec!["198.51.100.7/32".to_string()]]);
    }

    #[test]
    fn the_dns_rule_names_exactly_what_was_asked_and_covers_the_flows_to_the_resolver() {
        let s = suggest(&[
            dns(web(), "api.test", &["203.0.113.10"]),
            dns(web(), "nothing.test", &[]),
            egress(web(), pod("coredns", "10.0.0.53"), &[], L4::Udp(53)),
            egress(web(), world("203.0.113.10"), &[], L4::Tcp(443)),
        ]);
        let rules = egress_rules(&s, "suggested-web");
        let dns: Vec<_> = rules.iter().filter(|r| r.to_endpoints.is_some()).collect();
        assert_eq!(
            dns.len(),
            1,
            "one rule to kube-dns, with the DNS rules:\n{}",
            yaml(&s)
        );
        let sel = dns[0].to_endpoints.as_ref().unwrap()[0]
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(
            sel,
            BTreeMap::from([
                ("k8s-app".to_string(), "kube-dns".to_string()),
                (
                    "k8s:io.kubernetes.pod.namespace".into(),
                    "kube-system".into()
                )
            ])
        );
        let port = &dns[0].to_ports.as_ref().unwrap()[0];
        assert_eq!(
            port.ports,
            [L4::Udp(53).port_protocol(), L4::Tcp(53).port_protocol()]
        );
        assert_eq!(
            names_of(port.rules.as_ref().unwrap().dns.as_ref().unwrap()),
            ["api.test", "nothing.test"]
        );
    }

    #[test]
    fn flows_to_a_resolver_service_backend_are_dns_too() {
        // The query went to the Service address, the flow to its backend.
        let s = suggest(&[
            Observation::Dns {
                subject: web(),
                resolver: Party {
                    ip: Some("10.96.0.10".parse().unwrap()),
                    ..pod("coredns", "10.0.0.53")
                },
                port: 53,
                name: "api.test".into(),
                answers: vec![],
            },
            egress(web(), pod("coredns", "10.0.0.53"), &[], L4::Udp(53)),
            egress(web(), pod("coredns", "10.0.0.53"), &[], L4::Tcp(9153)),
        ]);
        let rules = egress_rules(&s, "suggested-web");
        assert_eq!(rules.len(), 2, "{}", yaml(&s));
        assert!(rules[0].to_ports.as_ref().unwrap()[0].rules.is_some());
        assert_eq!(
            rules[1].to_ports.as_ref().unwrap()[0].ports,
            [L4::Tcp(9153).port_protocol()],
            "no plain rule on 53 beside the DNS rule"
        );
    }

    #[test]
    fn pods_of_one_workload_share_a_policy_selected_by_their_common_labels() {
        let mut web_2 = pod("web-2", "10.0.1.2");
        web_2.labels.push("k8s:helm.sh/chart=web-1.2.3".into());
        let s = suggest(&[
            egress(web(), world("198.51.100.1"), &[], L4::Tcp(80)),
            egress(web_2, world("198.51.100.2"), &[], L4::Tcp(80)),
            egress(
                pod("db-0", "10.0.1.3"),
                world("198.51.100.3"),
                &[],
                L4::Tcp(80),
            ),
        ]);
        let names: Vec<_> = s
            .policies
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["suggested-db", "suggested-web"]);
        let web = &s.policies[1];
        assert_eq!(
            web.spec
                .as_ref()
                .unwrap()
                .endpoint_selector
                .as_ref()
                .unwrap()
                .match_labels,
            Some(BTreeMap::from([("app".to_string(), "web".to_string())]))
        );
        assert_eq!(web.metadata.namespace.as_deref(), Some("prod"));
        // Both pods' destinations, in one rule (same ports).
        assert_eq!(
            egress_rules(&s, "suggested-web")[0].to_cidr,
            Some(vec!["198.51.100.1/32".into(), "198.51.100.2/32".into()])
        );
    }

    #[test]
    fn ports_and_protocols_are_kept_apart_per_peer() {
        let s = suggest(&[
            egress(web(), pod("db-0", "10.0.1.3"), &[], L4::Tcp(5432)),
            egress(web(), pod("db-0", "10.0.1.3"), &[], L4::Udp(5432)),
            egress(web(), host(), &[], L4::Tcp(10250)),
            ingress(pod("db-0", "10.0.1.3"), web(), L4::Tcp(5432)),
        ]);
        let rules = egress_rules(&s, "suggested-web");
        let to_db = rules.iter().find(|r| r.to_endpoints.is_some()).unwrap();
        assert_eq!(
            to_db.to_endpoints.as_ref().unwrap()[0].match_labels,
            Some(BTreeMap::from([("app".to_string(), "db".to_string())])),
            "same namespace: no namespace label; the pod name label is left out"
        );
        assert_eq!(
            to_db.to_ports.as_ref().unwrap()[0].ports,
            [L4::Tcp(5432).port_protocol(), L4::Udp(5432).port_protocol()]
        );
        let to_host = rules.iter().find(|r| r.to_entities.is_some()).unwrap();
        assert_eq!(to_host.to_entities, Some(vec![Entity::Host]));
        let db = s
            .policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("suggested-db"))
            .unwrap();
        let spec = db.spec.as_ref().unwrap();
        let ing = spec.ingress.as_ref().unwrap();
        assert_eq!(ing.len(), 1);
        assert_eq!(
            ing[0].from_endpoints.as_ref().unwrap()[0].match_labels,
            Some(BTreeMap::from([("app".to_string(), "web".to_string())]))
        );
        // db saw no egress: a rule that selects nobody keeps it in default deny.
        assert_eq!(
            spec.egress.as_ref().unwrap()[..],
            [EgressRule {
                to_entities: Some(vec![]),
                ..EgressRule::default()
            }]
        );
        assert_eq!(
            spec.enable_default_deny,
            Some(DefaultDenyConfig {
                ingress: Some(true),
                egress: Some(true)
            })
        );
    }

    #[test]
    fn http_requests_become_anchored_method_and_path_rules() {
        let http = |method: &str, path: &str| Observation::Http {
            subject: pod("db-0", "10.0.1.3"),
            direction: Direction::Ingress,
            peer: web(),
            port: 80,
            method: method.into(),
            path: path.into(),
        };
        let s = suggest(&[
            ingress(pod("db-0", "10.0.1.3"), web(), L4::Tcp(80)),
            ingress(pod("db-0", "10.0.1.3"), web(), L4::Tcp(9090)),
            http("GET", "/api/v1.0/items?page=2"),
            http("GET", "/api/v1.0/items"),
            http("post", "/login"),
        ]);
        let db = &s.policies[0];
        let ing = db.spec.as_ref().unwrap().ingress.clone().unwrap();
        let ports = ing[0].to_ports.as_ref().unwrap();
        assert_eq!(ports[0].ports, [L4::Tcp(9090).port_protocol()]);
        assert!(
            ports[0].rules.is_none(),
            "no request seen on 9090: plain L4"
        );
        assert_eq!(ports[1].ports, [L4::Tcp(80).port_protocol()]);
        let rules: Vec<(String, String)> = ports[1]
            .rules
            .as_ref()
            .unwrap()
            .http
            .as_ref()
            .unwrap()
            .iter()
            .map(|h| (h.method.clone().unwrap(), h.path.clone().unwrap()))
            .collect();
        assert_eq!(
            rules,
            [
                ("GET".to_string(), r"/api/v1\.0/items(\?.*)?".to_string()),
                ("POST".to_string(), "/login".to_string())
            ]
        );
    }

    #[test]
    fn an_http_request_to_a_pod_opens_that_pods_ingress_too() {
        let s = suggest(&[Observation::Http {
            subject: web(),
            direction: Direction::Egress,
            peer: pod("coredns", "10.0.0.53"),
            port: 8080,
            method: "GET".into(),
            path: "/".into(),
        }]);
        let dns = s
            .policies
            .iter()
            .find(|p| p.metadata.namespace.as_deref() == Some("kube-system"))
            .unwrap_or_else(|| panic!("{}", yaml(&s)));
        let ing = dns.spec.as_ref().unwrap().ingress.clone().unwrap();
        assert_eq!(
            ing[0].from_endpoints.as_ref().unwrap()[0].match_labels,
            Some(BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("k8s:io.kubernetes.pod.namespace".into(), "prod".into())
            ]))
        );
        let ports = ing[0].to_ports.as_ref().unwrap();
        assert_eq!(ports[0].ports, [L4::Tcp(8080).port_protocol()]);
        assert!(ports[0].rules.is_none(), "L4 only: the HTTP rule is web's");
    }

    #[test]
    fn ingress_from_outside_is_by_address_even_if_the_pod_knows_a_name_for_it() {
        let s = suggest(&[
            dns(web(), "api.test", &["203.0.113.10"]),
            ingress(web(), world("203.0.113.10"), L4::Tcp(8080)),
        ]);
        let p = &s.policies[0];
        let ing = p.spec.as_ref().unwrap().ingress.clone().unwrap();
        assert_eq!(ing[0].from_cidr, Some(vec!["203.0.113.10/32".to_string()]));
    }

    #[test]
    fn a_name_no_rule_can_hold_is_left_out_and_said() {
        let s = suggest(&[
            dns(web(), "api.test", &[]),
            dns(web(), "bad name!.test", &[]),
            dns(web(), "", &[]),
        ]);
        let text = yaml(&s);
        assert!(text.contains("matchName: api.test"), "{text}");
        assert!(!text.contains("bad"), "{text}");
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert!(crate::parse_str(&text, None).diagnostics.is_empty());
    }

    #[test]
    fn events_without_a_pod_are_reported_not_guessed() {
        let s = suggest(&[egress(
            world("198.51.100.1"),
            world("198.51.100.2"),
            &[],
            L4::Tcp(80),
        )]);
        assert!(s.policies.is_empty());
        assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
        assert!(
            s.skipped[0].starts_with("198.51.100.1 Egress flow"),
            "the line names what it is about: {:?}",
            s.skipped
        );
    }

    /// Rules to and from addresses and entities keep the ports seen: a
    /// rule without them would open every port to that peer.
    #[test]
    fn address_and_entity_rules_keep_their_ports() {
        let s = suggest(&[
            egress(web(), world("198.51.100.7"), &[], L4::Tcp(443)),
            egress(web(), host(), &[], L4::Tcp(10250)),
            ingress(web(), world("203.0.113.10"), L4::Tcp(8080)),
            ingress(web(), host(), L4::Tcp(9090)),
        ]);
        let spec = s.policies[0].spec.as_ref().unwrap();
        let ports = |p: &Option<Vec<crate::model::PortRule>>| -> Vec<String> {
            p.iter()
                .flatten()
                .flat_map(|r| r.ports.iter())
                .map(|p| p.port.clone())
                .collect()
        };
        let egress = spec.egress.clone().unwrap();
        let to_cidr = egress.iter().find(|r| r.to_cidr.is_some()).unwrap();
        let to_host = egress.iter().find(|r| r.to_entities.is_some()).unwrap();
        assert_eq!(ports(&to_cidr.to_ports), ["443"], "{}", yaml(&s));
        assert_eq!(ports(&to_host.to_ports), ["10250"], "{}", yaml(&s));
        let ingress = spec.ingress.clone().unwrap();
        let from_cidr = ingress.iter().find(|r| r.from_cidr.is_some()).unwrap();
        let from_host = ingress.iter().find(|r| r.from_entities.is_some()).unwrap();
        assert_eq!(ports(&from_cidr.to_ports), ["8080"], "{}", yaml(&s));
        assert_eq!(ports(&from_host.to_ports), ["9090"], "{}", yaml(&s));
    }

    /// A direction with nothing seen gets a rule that names no peer
    /// (`fromEntities: []`), not an empty rule: `{}` reads as "allow all"
    /// to anyone who knows Kubernetes NetworkPolicy.
    #[test]
    fn a_direction_with_nothing_seen_names_no_peer_explicitly() {
        let s = suggest(&[egress(web(), world("198.51.100.7"), &[], L4::Tcp(443))]);
        let spec = s.policies[0].spec.as_ref().unwrap();
        let rules = spec.ingress.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].from_entities, Some(Vec::new()), "{}", yaml(&s));
        let s = suggest(&[ingress(web(), world("203.0.113.10"), L4::Tcp(8080))]);
        let rules = s.policies[0].spec.as_ref().unwrap().egress.clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].to_entities, Some(Vec::new()), "{}", yaml(&s));
    }

    /// Suggested policies can be found (and removed) by their label:
    /// `kubectl get cnp -l app.kubernetes.io/managed-by=tollgate-policy-suggest`,
    /// and say which pods' traffic they come from.
    #[test]
    fn suggested_policies_carry_the_managed_by_label_and_their_origin() {
        let s = suggest(&[
            egress(web(), world("198.51.100.7"), &[], L4::Tcp(443)),
            egress(
                pod("web-2", "10.0.1.2"),
                world("198.51.100.7"),
                &[],
                L4::Tcp(443),
            ),
        ]);
        let p = &s.policies[0];
        assert_eq!(
            p.metadata
                .labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("tollgate-policy-suggest")
        );
        let description = p
            .spec
            .as_ref()
            .unwrap()
            .description
            .clone()
            .unwrap_or_default();
        assert!(description.contains("web-1, web-2"), "{description}");
        assert!(
            description.contains("review before enforcing"),
            "{description}"
        );
    }

    /// Workloads whose names would be the same get -2, -3... in turn, per
    /// namespace.
    #[test]
    fn names_that_would_collide_are_numbered_per_namespace() {
        let labels = BTreeMap::from([("app".to_string(), "Web".to_string())]);
        let mut used = BTreeSet::new();
        let names: Vec<String> = ["prod", "prod", "prod", "dev"]
            .iter()
            .map(|ns| unique_name(ns, &labels, &mut used))
            .collect();
        assert_eq!(
            names,
            [
                "suggested-web",
                "suggested-web-2",
                "suggested-web-3",
                "suggested-web"
            ]
        );
    }

    #[test]
    fn a_flow_to_an_unknown_peer_is_reported_by_its_pod() {
        let s = suggest(&[egress(web(), Party::default(), &[], L4::Tcp(80))]);
        assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
        assert!(
            s.skipped[0].starts_with("prod/web-1 Egress flow: the peer has no address"),
            "{:?}",
            s.skipped
        );
    }

    /// Only a pod's own egress to its resolver is the DNS rule's: traffic
    /// the resolver's pod sends to it (here on port 53) is ingress like
    /// any other and gets its rule.
    #[test]
    fn ingress_from_the_resolvers_address_is_not_taken_for_dns() {
        let s = suggest(&[
            dns(web(), "api.test", &["203.0.113.10"]),
            ingress(web(), pod("coredns", "10.0.0.53"), L4::Udp(53)),
        ]);
        let ing = s.policies[0]
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .clone()
            .unwrap();
        assert_eq!(ing.len(), 1, "{}", yaml(&s));
        let from = ing[0].from_endpoints.clone().unwrap_or_default();
        assert_eq!(from.len(), 1, "from the resolver's pod: {}", yaml(&s));
        assert!(ing[0].to_ports.is_some(), "{}", yaml(&s));
    }

    /// The suggestion loads without a diagnostic, allows every flow it was
    /// built from and denies its neighbours (other name, port, peer).
    #[test]
    fn the_suggestion_is_valid_allows_what_was_seen_and_denies_the_rest() {
        let observations = [
            dns(web(), "a.cdn.test", &["203.0.113.1"]),
            dns(web(), "b.cdn.test", &["203.0.113.2"]),
            dns(web(), "c.cdn.test", &["203.0.113.3"]),
            dns(web(), "api.test", &["203.0.113.10"]),
            egress(web(), pod("coredns", "10.0.0.53"), &[], L4::Udp(53)),
            egress(web(), world("203.0.113.1"), &[], L4::Tcp(443)),
            egress(web(), world("203.0.113.2"), &[], L4::Tcp(443)),
            egress(web(), world("203.0.113.3"), &[], L4::Tcp(443)),
            egress(web(), world("203.0.113.10"), &[], L4::Tcp(443)),
            egress(web(), pod("db-0", "10.0.1.3"), &[], L4::Tcp(5432)),
            ingress(pod("db-0", "10.0.1.3"), web(), L4::Tcp(5432)),
            ingress(web(), host(), L4::Tcp(8080)),
        ];
        let s = suggest(&observations);
        let text = yaml(&s);
        let report = crate::parse_str(&text, None);
        assert!(
            report.diagnostics.is_empty(),
            "{:?}\n{text}",
            report.diagnostics
        );
        let inventory = Inventory::parse(ENDPOINTS, "endpoints").unwrap();
        let set = PolicySet::new(report.policies);
        let resolved = set.resolve(
            &inventory,
            ResolveOptions {
                allow_host_to_local: false,
                audit: false,
            },
        );
        let key = |name: &str| inventory.find(name).unwrap().key.clone();
        let verdict = |subject: &str, dir, peer: PeerRef, port, proto| {
            resolved
                .endpoint(&key(subject))
                .unwrap()
                .decide(set.matcher(), dir, &peer, port, proto)
                .verdict
        };
        let id = |name: &str| inventory.find(name).unwrap().identity;
        fn named(names: &[String]) -> PeerRef<'_> {
            PeerRef {
                identity: Identity::WORLD,
                ip: None,
                names,
            }
        }
        let who = |identity| PeerRef {
            identity,
            ip: None,
            names: &[],
        };
        let (eg, ing) = (Direction::Egress, Direction::Ingress);
        use Protocol::{Tcp, Udp};
        let n = |s: &str| vec![s.to_string()];
        // What was seen: allowed (web-2 too: same workload).
        for w in ["web-1", "web-2"] {
            assert_eq!(
                verdict(w, eg, who(id("coredns")), 53, Udp),
                Verdict::Allowed
            );
            assert_eq!(
                verdict(w, eg, who(id("coredns")), 53, Tcp),
                Verdict::Allowed
            );
            assert_eq!(
                verdict(w, eg, named(&n("api.test")), 443, Tcp),
                Verdict::Allowed
            );
            // A sibling never seen is within the pattern.
            assert_eq!(
                verdict(w, eg, named(&n("z.cdn.test")), 443, Tcp),
                Verdict::Allowed
            );
            assert_eq!(verdict(w, eg, who(id("db-0")), 5432, Tcp), Verdict::Allowed);
            assert_eq!(
                verdict(w, ing, who(Identity::HOST), 8080, Tcp),
                Verdict::Allowed
            );
        }
        assert_eq!(
            verdict("db-0", ing, who(id("web-1")), 5432, Tcp),
            Verdict::Allowed
        );
        // Everything else: denied.
        assert_eq!(
            verdict("web-1", eg, named(&n("evil.test")), 443, Tcp),
            Verdict::Denied
        );
        assert_eq!(
            verdict("web-1", eg, named(&n("api.test")), 80, Tcp),
            Verdict::Denied
        );
        assert_eq!(
            verdict("web-1", eg, who(id("db-0")), 22, Tcp),
            Verdict::Denied
        );
        assert_eq!(
            verdict("web-1", eg, who(Identity::WORLD), 443, Tcp),
            Verdict::Denied
        );
        assert_eq!(
            verdict("db-0", ing, who(id("coredns")), 5432, Tcp),
            Verdict::Denied
        );
        assert_eq!(
            verdict("db-0", eg, who(id("web-1")), 8080, Tcp),
            Verdict::Denied
        );
        assert_eq!(
            verdict("web-1", ing, who(id("db-0")), 8080, Tcp),
            Verdict::Denied
        );
    }

    #[test]
    fn the_same_events_in_another_order_give_the_same_yaml() {
        let mut observations = vec![
            dns(web(), "api.test", &["203.0.113.10"]),
            egress(web(), world("203.0.113.10"), &[], L4::Tcp(443)),
            egress(web(), pod("db-0", "10.0.1.3"), &[], L4::Tcp(5432)),
            egress(
                pod("web-2", "10.0.1.2"),
                world("198.51.100.9"),
                &[],
                L4::Tcp(80),
            ),
            ingress(pod("db-0", "10.0.1.3"), web(), L4::Tcp(5432)),
        ];
        let first = yaml(&suggest(&observations));
        // DNS answers must still come before nothing else depends on order.
        observations[1..].reverse();
        assert_eq!(yaml(&suggest(&observations)), first);
    }

    mod properties {
        use super::*;
        use crate::{L7Decision, Reason};
        use proptest::prelude::*;

        const PODS: [(&str, &str); 4] = [
            ("web-1", "10.0.1.1"),
            ("web-2", "10.0.1.2"),
            ("db-0", "10.0.1.3"),
            ("coredns", "10.0.0.53"),
        ];
        const NAMES: [&str; 6] = [
            "a.cdn.test",
            "b.cdn.test",
            "c.cdn.test",
            "api.test",
            "x.deep.test",
            "evil.test",
        ];
        const WORLD: [&str; 4] = ["203.0.113.1", "203.0.113.2", "198.51.100.9", "2001:db8::7"];

        fn any_pod() -> impl Strategy<Value = Party> {
            (0..PODS.len()).prop_map(|i| pod(PODS[i].0, PODS[i].1))
        }

        fn any_peer() -> impl Strategy<Value = Party> {
            prop_oneof![
                any_pod(),
                (0..WORLD.len()).prop_map(|i| world(WORLD[i])),
                Just(host()),
            ]
        }

        fn any_l4() -> impl Strategy<Value = L4> {
            prop_oneof![
                (1u16..6).prop_map(|p| L4::Tcp(p * 1000)),
                (1u16..3).prop_map(|p| L4::Udp(p * 1000)),
                Just(L4::Sctp(9)),
            ]
        }

        fn any_observation() -> impl Strategy<Value = Observation> {
            prop_oneof![
                // A query whose answer is one of the world addresses (or none).
                (
                    any_pod(),
                    0..NAMES.len(),
                    proptest::option::of(0..WORLD.len())
                )
                    .prop_map(|(subject, n, a)| {
                        let answers: Vec<&str> = a.map(|a| WORLD[a]).into_iter().collect();
                        dns(subject, NAMES[n], &answers)
                    }),
                (any_pod(), any_peer(), any_l4()).prop_map(|(s, p, l4)| egress(s, p, &[], l4)),
                (any_pod(), any_peer(), any_l4()).prop_map(|(s, p, l4)| ingress(s, p, l4)),
                (
                    any_pod(),
                    any_pod(),
                    prop::bool::ANY,
                    prop_oneof![Just("GET"), Just("POST")],
                    prop_oneof![Just("/"), Just("/a.b"), Just("/x?q=1"), Just("/(x)")],
                )
                    .prop_map(|(s, p, ing, method, path)| Observation::Http {
                        subject: s,
                        direction: if ing {
                            Direction::Ingress
                        } else {
                            Direction::Egress
                        },
                        peer: p,
                        port: 8080,
                        method: method.into(),
                        path: path.into(),
                    }),
            ]
        }

        fn protocol(l4: L4) -> (u16, Protocol) {
            match l4 {
                L4::Tcp(p) => (p, Protocol::Tcp),
                L4::Udp(p) => (p, Protocol::Udp),
                L4::Sctp(p) => (p, Protocol::Sctp),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever was observed: the suggestion loads without a
            /// diagnostic and allows every observation it was built from,
            /// at L4 and at L7 (DNS names, HTTP requests).
            #[test]
            fn the_suggestion_allows_everything_it_was_built_from(
                observations in proptest::collection::vec(any_observation(), 1..25)
            ) {
                let s = suggest(&observations);
                let text = s.yaml();
                let report = crate::parse_str(&text, None);
                prop_assert!(report.diagnostics.is_empty(), "{:?}\n{}", report.diagnostics, text);
                let inventory = Inventory::parse(ENDPOINTS, "endpoints").unwrap();
                let set = PolicySet::new(report.policies);
                let resolved = set.resolve(
                    &inventory,
                    ResolveOptions { allow_host_to_local: false, audit: false },
                );
                let identity = |p: &Party| match (&p.pod, p.labels.first().map(String::as_str)) {
                    (Some(name), _) => inventory.find(name).unwrap().identity,
                    (None, Some("reserved:host")) => Identity::HOST,
                    _ => Identity::WORLD,
                };
                // What each pod was told each address is.
                let mut told: BTreeMap<(String, IpAddr), Vec<String>> = BTreeMap::new();
                for o in &observations {
                    if let Observation::Dns { subject, name, answers, .. } = o {
                        for a in answers {
                            told.entry((subject.pod.clone().unwrap(), *a))
                                .or_default()
                                .push(name.trim_end_matches('.').to_string());
                        }
                    }
                }
                let decide = |subject: &Party, direction, peer: &Party, names: &[String], port, proto| {
                    let ep = resolved
                        .endpoint(&inventory.find(subject.pod.as_deref().unwrap()).unwrap().key)
                        .unwrap();
                    ep.decide(
                        set.matcher(),
                        direction,
                        &PeerRef { identity: identity(peer), ip: peer.ip, names },
                        port,
                        proto,
                    )
                };
                for o in &observations {
                    match o {
                        Observation::Flow { subject, direction, peer, l4, .. } => {
                            let names = match (direction, peer.ip) {
                                (Direction::Egress, Some(ip)) => told
                                    .get(&(subject.pod.clone().unwrap(), ip))
                                    .cloned()
                                    .unwrap_or_default(),
                                _ => Vec::new(),
                            };
                            let (port, proto) = protocol(*l4);
                            let d = decide(subject, *direction, peer, &names, port, proto);
                            prop_assert_eq!(d.verdict, Verdict::Allowed, "{:?} {:?}\n{}", o, d, text);
                        }
                        Observation::Dns { subject, resolver, port, name, .. } => {
                            for proto in [Protocol::Udp, Protocol::Tcp] {
                                let d = decide(subject, Direction::Egress, resolver, &[], *port, proto);
                                prop_assert_eq!(d.verdict, Verdict::Allowed, "{:?} {:?}\n{}", o, d, text);
                                let L7Decision::Dns(ids) = &d.l7 else {
                                    panic!("no DNS rule for {o:?}: {d:?}\n{text}")
                                };
                                let n = name.trim_end_matches('.');
                                prop_assert!(
                                    ids.iter().any(|id| set.matcher().selector(*id).matches(n)),
                                    "{} not in the DNS rules\n{}", n, text
                                );
                            }
                        }
                        Observation::Http { subject, direction, peer, port, method, path } => {
                            let d = decide(subject, *direction, peer, &[], *port, Protocol::Tcp);
                            prop_assert_eq!(d.verdict, Verdict::Allowed, "{:?} {:?}\n{}", o, d, text);
                            if let L7Decision::Http(rules) = &d.l7 {
                                prop_assert!(
                                    rules.iter().any(|r| r.matches(method, path, None, &[])),
                                    "{} {} not in the HTTP rules\n{}", method, path, text
                                );
                            } else {
                                prop_assert_eq!(&d.l7, &L7Decision::None);
                            }
                            // The other end, if a pod, lets the connection in.
                            if peer.pod.is_some() {
                                let back = match direction {
                                    Direction::Egress => Direction::Ingress,
                                    Direction::Ingress => Direction::Egress,
                                };
                                let d = decide(peer, back, subject, &[], *port, Protocol::Tcp);
                                prop_assert!(d.verdict == Verdict::Allowed && d.reason != Reason::DefaultDeny,
                                    "{:?} {:?}\n{}", o, d, text);
                            }
                        }
                    }
                }
            }
        }
    }
}
