//! Property tests: the FQDN matcher against a regex model of Cilium's
//! semantics, and the algebra of policies (deny only removes, allow-only
//! policies only add, no selecting policy allows all, one policy allows
//! exactly what it lists) against a deliberately simple reference model.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::model::{
    CidrRule, DefaultDenyConfig, EgressRule, EndpointSelector, Entity, IngressRule, ObjectMeta,
    PolicyObject, PortProtocol, PortRule, ProtocolSpec, RuleSpec,
};
use policy::{
    Direction, Identity, Inventory, PeerRef, Policy, PolicySet, Protocol, ResolveOptions, Verdict,
};
use proptest::prelude::*;
use regex::Regex;

// ---------------------------------------------------------------- FQDN ----

/// Cilium's translation of a matchPattern to a regex, written out plainly.
fn reference_regex(pattern: &str) -> Regex {
    let p = pattern.to_ascii_lowercase();
    let p = p.strip_suffix('.').unwrap_or(&p);
    if p == "*" {
        return Regex::new(r"^([-a-z0-9_]+\.)+$").unwrap();
    }
    let (prefix, rest) = match p.strip_prefix("**.") {
        Some(rest) => (r"([-a-z0-9_]+\.)+", rest),
        None => ("", p),
    };
    let body: String = rest
        .chars()
        .map(|c| match c {
            '*' => "[-a-z0-9_]*".to_string(),
            c => regex::escape(&c.to_string()),
        })
        .collect();
    Regex::new(&format!("^{prefix}{body}\\.$")).unwrap()
}

fn reference_matches(pattern: &str, name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let n = if n.ends_with('.') { n } else { format!("{n}.") };
    reference_regex(pattern).is_match(&n)
}

fn label_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("ab".to_string()),
        Just("x-1".to_string()),
        Just("_s".to_string()),
        Just("*".to_string()),
        Just("a*".to_string()),
        Just("*b".to_string()),
        Just("a*b".to_string()),
        Just("*-*".to_string()),
    ]
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("*".to_string()),
        8 => (any::<bool>(), prop::collection::vec(label_pattern(), 1..4)).prop_map(|(deep, labels)| {
            let body = labels.join(".");
            if deep { format!("**.{body}") } else { body }
        }),
    ]
}

fn name() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec![
        "a", "b", "ab", "ba", "aab", "abb", "x-1", "x-", "_s", "c",
    ]);
    (
        prop::collection::vec(label, 1..6),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(labels, upper, dot)| {
            let mut n = labels.join(".");
            if upper {
                n = n.to_ascii_uppercase();
            }
            if dot {
                n.push('.');
            }
            n
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn matcher_agrees_with_the_regex_model(patterns in prop::collection::vec(pattern(), 1..12), names in prop::collection::vec(name(), 1..12)) {
        let mut builder = FqdnMatcherBuilder::default();
        let ids: Vec<_> = patterns.iter().map(|p| builder.insert(FqdnSelector::pattern(p).unwrap())).collect();
        let matcher = builder.build();
        for n in &names {
            let got: BTreeSet<_> = matcher.matches(n).into_iter().collect();
            let want: BTreeSet<_> = patterns.iter().zip(&ids).filter(|(p, _)| reference_matches(p, n)).map(|(_, id)| *id).collect();
            prop_assert_eq!(&got, &want, "name {:?} against {:?}", n, patterns);
        }
    }

    #[test]
    fn matching_ignores_case_and_trailing_dot(p in pattern(), n in name()) {
        let sel = FqdnSelector::pattern(&p).unwrap();
        let bare = n.trim_end_matches('.').to_ascii_lowercase();
        let variant = format!("{}.", bare.to_ascii_uppercase());
        prop_assert_eq!(sel.matches(&bare), sel.matches(&variant));
        let upper_pattern = FqdnSelector::pattern(&format!("{}.", p.to_ascii_uppercase())).unwrap();
        prop_assert_eq!(sel.matches(&bare), upper_pattern.matches(&bare));
    }

    #[test]
    fn single_star_never_crosses_a_dot(labels in prop::collection::vec(label_pattern(), 1..4), n in name()) {
        let p = labels.join(".");
        prop_assume!(p != "*");
        if FqdnSelector::pattern(&p).unwrap().matches(&n) {
            let name_labels = n.trim_end_matches('.').split('.').count();
            prop_assert_eq!(name_labels, labels.len(), "{:?} matched {:?}", p, n);
        }
    }

    #[test]
    fn match_name_is_exact(n in name(), other in name()) {
        let sel = FqdnSelector::name(&n).unwrap();
        let same = n.trim_end_matches('.').eq_ignore_ascii_case(other.trim_end_matches('.'));
        prop_assert_eq!(sel.matches(&other), same);
    }
}

// ------------------------------------------------------------- policies ----

const APPS: [&str; 3] = ["a", "b", "c"];
const NAMESPACES: [&str; 2] = ["ns-a", "ns-b"];
const PORTS: [u16; 4] = [53, 80, 443, 8080];
const WORLD_IPS: [&str; 3] = ["198.51.100.7", "203.0.113.200", "2001:db8::1"];
const CIDRS: [&str; 4] = [
    "198.51.100.0/24",
    "203.0.113.0/25",
    "0.0.0.0/0",
    "2001:db8::/32",
];

fn inventory() -> Inventory {
    let mut yaml = String::from("endpoints:\n");
    let mut n = 1;
    for ns in NAMESPACES {
        for app in APPS {
            yaml.push_str(&format!(
                "  - {{name: {app}, namespace: {ns}, labels: {{app: {app}}}, ips: [10.0.0.{n}]}}\n"
            ));
            n += 1;
        }
    }
    yaml.push_str("nodes:\n  - {name: here, ips: [192.168.0.1], local: true}\n  - {name: there, ips: [192.168.0.2]}\n");
    Inventory::parse(&yaml, "generated").unwrap()
}

/// A peer of the universe, described so that the reference model can judge it
/// without the engine's help.
#[derive(Debug, Clone)]
enum TestPeer {
    Pod {
        ns: &'static str,
        app: &'static str,
        identity: Identity,
        ip: IpAddr,
    },
    World(IpAddr),
    Host,
    RemoteNode,
}

fn peers(inv: &Inventory) -> Vec<TestPeer> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for app in APPS {
            let e = inv.find(&format!("{ns}/{app}")).unwrap();
            out.push(TestPeer::Pod {
                ns,
                app,
                identity: e.identity,
                ip: e.ips[0],
            });
        }
    }
    out.extend(
        WORLD_IPS
            .iter()
            .map(|ip| TestPeer::World(ip.parse().unwrap())),
    );
    out.push(TestPeer::Host);
    out.push(TestPeer::RemoteNode);
    out
}

impl TestPeer {
    fn peer_ref(&self) -> PeerRef<'static> {
        let (identity, ip) = match self {
            TestPeer::Pod { identity, ip, .. } => (*identity, Some(*ip)),
            TestPeer::World(ip) => (Identity::WORLD, Some(*ip)),
            TestPeer::Host => (Identity::HOST, Some("192.168.0.1".parse().unwrap())),
            TestPeer::RemoteNode => (Identity::REMOTE_NODE, Some("192.168.0.2".parse().unwrap())),
        };
        PeerRef {
            identity,
            ip,
            names: &[],
        }
    }
}

/// (subject ns, subject app, direction, peer index, port, protocol)
type FlowKey = (&'static str, &'static str, Direction, usize, u16, Protocol);

fn flows(peer_count: usize) -> Vec<FlowKey> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for app in APPS {
            for dir in [Direction::Ingress, Direction::Egress] {
                for peer in 0..peer_count {
                    for port in PORTS {
                        for proto in [Protocol::Tcp, Protocol::Udp] {
                            out.push((ns, app, dir, peer, port, proto));
                        }
                    }
                    out.push((ns, app, dir, peer, 0, Protocol::Icmp));
                }
            }
        }
    }
    out
}

fn allowed(policies: &[Policy], options: ResolveOptions) -> BTreeSet<FlowKey> {
    let inv = inventory();
    let set = PolicySet::new(policies.to_vec());
    let resolved = set.resolve(&inv, options);
    let peers = peers(&inv);
    flows(peers.len())
        .into_iter()
        .filter(|(ns, app, dir, peer, port, proto)| {
            let ep = inv.find(&format!("{ns}/{app}")).unwrap();
            let d = resolved.endpoint(&ep.key).unwrap().decide(
                set.matcher(),
                *dir,
                &peers[*peer].peer_ref(),
                *port,
                *proto,
            );
            d.verdict == Verdict::Allowed
        })
        .collect()
}

// Generators of policy objects (the YAML model), validated as users' would be.

#[derive(Debug, Clone)]
enum L3 {
    None,
    Pods(Option<&'static str>),
    Entities(Vec<Entity>),
    Cidr(&'static str),
    CidrSet(&'static str, Vec<&'static str>),
}

/// `port`, `endPort`, `protocol` as a user would write them.
type GenPort = (u16, Option<u16>, Option<ProtocolSpec>);

#[derive(Debug, Clone)]
struct GenRule {
    l3: L3,
    ports: Option<Vec<GenPort>>,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    let entity = prop::sample::select(vec![
        Entity::World,
        Entity::Cluster,
        Entity::Host,
        Entity::All,
        Entity::RemoteNode,
    ]);
    let l3 = prop_oneof![
        Just(L3::None),
        prop::option::of(prop::sample::select(APPS.to_vec())).prop_map(L3::Pods),
        prop::collection::vec(entity, 0..3).prop_map(L3::Entities),
        prop::sample::select(CIDRS.to_vec()).prop_map(L3::Cidr),
        (
            Just("198.51.100.0/24"),
            prop::collection::vec(
                prop::sample::select(vec!["198.51.100.0/29", "198.51.100.128/25"]),
                0..2
            )
        )
            .prop_map(|(c, e)| L3::CidrSet(c, e)),
    ];
    let proto = prop::option::of(prop::sample::select(vec![
        ProtocolSpec::Tcp,
        ProtocolSpec::Udp,
        ProtocolSpec::Any,
    ]));
    let port = (
        prop::sample::select(PORTS.to_vec()),
        prop::option::of(Just(443u16)),
        proto,
    )
        .prop_map(|(p, end, proto)| (p, end.filter(|e| *e >= p), proto));
    let ports = prop::option::of(prop::collection::vec(port, 1..3));
    (l3, ports).prop_map(|(l3, ports)| GenRule { l3, ports })
}

#[derive(Debug, Clone)]
struct GenPolicy {
    name: String,
    namespace: Option<&'static str>,
    subject: Option<&'static str>,
    ingress: Option<Vec<GenRule>>,
    egress: Option<Vec<GenRule>>,
    deny: bool,
    default_deny: Option<bool>,
}

fn gen_policy(deny: bool) -> impl Strategy<Value = GenPolicy> {
    (
        prop::option::of(prop::sample::select(NAMESPACES.to_vec())),
        prop::option::of(prop::sample::select(APPS.to_vec())),
        prop::option::of(prop::collection::vec(gen_rule(), 0..3)),
        prop::option::of(prop::collection::vec(gen_rule(), 0..3)),
        any::<u32>(),
    )
        .prop_map(move |(namespace, subject, ingress, egress, n)| GenPolicy {
            name: format!("p{n}"),
            namespace,
            subject,
            ingress,
            egress,
            deny,
            default_deny: None,
        })
        // Cilium rejects a spec without any rule (empty lists do not count).
        .prop_filter("a spec needs a rule", |g| {
            g.ingress.as_ref().is_some_and(|r| !r.is_empty())
                || g.egress.as_ref().is_some_and(|r| !r.is_empty())
        })
}

fn selector(app: Option<&str>) -> EndpointSelector {
    EndpointSelector {
        match_labels: Some(
            app.map(|a| BTreeMap::from([("app".to_string(), a.to_string())]))
                .unwrap_or_default(),
        ),
        match_expressions: None,
    }
}

fn to_ports(r: &GenRule) -> Option<Vec<PortRule>> {
    r.ports.as_ref().map(|ports| {
        vec![PortRule {
            ports: ports
                .iter()
                .map(|(p, end, proto)| PortProtocol {
                    port: p.to_string(),
                    end_port: end.map(i64::from),
                    protocol: *proto,
                })
                .collect(),
            rules: None,
            ..PortRule::default()
        }]
    })
}

fn cidr_set(r: &GenRule) -> (Option<Vec<String>>, Option<Vec<CidrRule>>) {
    match &r.l3 {
        L3::Cidr(c) => (Some(vec![c.to_string()]), None),
        L3::CidrSet(c, e) => (
            None,
            Some(vec![CidrRule {
                cidr: Some(c.to_string()),
                cidr_group_ref: None,
                cidr_group_selector: None,
                except: e.iter().map(|s| s.to_string()).collect(),
            }]),
        ),
        _ => (None, None),
    }
}

fn egress_rule(r: &GenRule) -> EgressRule {
    let (to_cidr, to_cidr_set) = cidr_set(r);
    EgressRule {
        to_endpoints: matches!(r.l3, L3::Pods(_))
            .then(|| vec![selector(if let L3::Pods(a) = r.l3 { a } else { None })]),
        to_entities: if let L3::Entities(e) = &r.l3 {
            Some(e.clone())
        } else {
            None
        },
        to_cidr,
        to_cidr_set,
        to_fqdns: None,
        to_ports: to_ports(r),
        ..EgressRule::default()
    }
}

fn ingress_rule(r: &GenRule) -> IngressRule {
    let (from_cidr, from_cidr_set) = cidr_set(r);
    IngressRule {
        from_endpoints: matches!(r.l3, L3::Pods(_))
            .then(|| vec![selector(if let L3::Pods(a) = r.l3 { a } else { None })]),
        from_entities: if let L3::Entities(e) = &r.l3 {
            Some(e.clone())
        } else {
            None
        },
        from_cidr,
        from_cidr_set,
        to_ports: to_ports(r),
        ..IngressRule::default()
    }
}

fn build(g: &GenPolicy) -> Policy {
    let ingress = g
        .ingress
        .as_ref()
        .map(|rs| rs.iter().map(ingress_rule).collect());
    let egress = g
        .egress
        .as_ref()
        .map(|rs| rs.iter().map(egress_rule).collect());
    let mut spec = RuleSpec {
        endpoint_selector: Some(selector(g.subject)),
        ..RuleSpec::default()
    };
    if g.deny {
        spec.ingress_deny = ingress;
        spec.egress_deny = egress;
    } else {
        spec.ingress = ingress;
        spec.egress = egress;
    }
    if let Some(dd) = g.default_deny {
        spec.enable_default_deny = Some(DefaultDenyConfig {
            ingress: Some(dd),
            egress: Some(dd),
        });
    }
    let object = PolicyObject {
        api_version: "cilium.io/v2".into(),
        kind: if g.namespace.is_some() {
            "CiliumNetworkPolicy"
        } else {
            "CiliumClusterwideNetworkPolicy"
        }
        .into(),
        metadata: ObjectMeta {
            name: Some(g.name.clone()),
            namespace: g.namespace.map(String::from),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        specs: None,
        status: None,
    };
    let (policy, diags) = policy::validate::validate_object(&object, "generated");
    policy.unwrap_or_else(|| panic!("generated policy is invalid: {diags:?}"))
}

/// The reference: does one generated rule cover a flow? Written from the
/// documented semantics, not from the engine.
fn reference_rule_covers(
    r: &GenRule,
    policy_ns: Option<&str>,
    peer: &TestPeer,
    port: u16,
    proto: Protocol,
) -> bool {
    let peer_ok = match (&r.l3, peer) {
        (L3::None, _) => r.ports.is_some(),
        (
            L3::Pods(app),
            TestPeer::Pod {
                ns, app: peer_app, ..
            },
        ) => policy_ns.is_none_or(|p| p == *ns) && app.is_none_or(|a| a == *peer_app),
        (L3::Pods(_), _) => false,
        (L3::Entities(es), _) => es.iter().any(|e| {
            matches!(
                (e, peer),
                (Entity::All, _)
                    | (Entity::World, TestPeer::World(_))
                    | (
                        Entity::Cluster,
                        TestPeer::Pod { .. } | TestPeer::Host | TestPeer::RemoteNode
                    )
                    | (Entity::Host, TestPeer::Host)
                    | (Entity::RemoteNode, TestPeer::RemoteNode)
            )
        }),
        (L3::Cidr(c), TestPeer::World(ip)) => c.parse::<ipnet::IpNet>().unwrap().contains(ip),
        (L3::CidrSet(c, except), TestPeer::World(ip)) => {
            c.parse::<ipnet::IpNet>().unwrap().contains(ip)
                && !except
                    .iter()
                    .any(|e| e.parse::<ipnet::IpNet>().unwrap().contains(ip))
        }
        (L3::Cidr(_) | L3::CidrSet(..), _) => false,
    };
    let port_ok = match &r.ports {
        None => true,
        Some(ports) => ports.iter().any(|(p, end, pr)| {
            let proto_ok = match pr {
                None | Some(ProtocolSpec::Any) => {
                    matches!(proto, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
                }
                Some(ProtocolSpec::Tcp) => proto == Protocol::Tcp,
                Some(ProtocolSpec::Udp) => proto == Protocol::Udp,
                Some(ProtocolSpec::Sctp) => proto == Protocol::Sctp,
                Some(ProtocolSpec::Icmp) => proto == Protocol::Icmp,
                Some(ProtocolSpec::Icmpv6) => proto == Protocol::Icmpv6,
            };
            proto_ok && port >= *p && port <= end.unwrap_or(*p)
        }),
    };
    peer_ok && port_ok
}

fn no_host_exemption() -> ResolveOptions {
    ResolveOptions {
        allow_host_to_local: false,
        audit: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_deny_policy_only_removes_allowed_flows(
        base in prop::collection::vec(gen_policy(false), 0..3),
        deny in gen_policy(true),
        dd in prop::option::of(any::<bool>()),
    ) {
        let mut deny = deny;
        deny.default_deny = dd;
        deny.name = "the-deny".into();
        let base: Vec<Policy> = base.iter().enumerate().map(|(i, g)| build(&GenPolicy { name: format!("b{i}"), ..g.clone() })).collect();
        let before = allowed(&base, ResolveOptions::default());
        let mut with = base.clone();
        with.push(build(&deny));
        let after = allowed(&with, ResolveOptions::default());
        let added: Vec<_> = after.difference(&before).collect();
        prop_assert!(added.is_empty(), "a deny policy allowed new flows: {:?}", added);
    }

    #[test]
    fn an_allow_policy_without_default_deny_never_removes_flows(
        base in prop::collection::vec(gen_policy(false), 0..3),
        extra in gen_policy(false),
    ) {
        let mut extra = extra;
        extra.default_deny = Some(false);
        extra.name = "the-extra".into();
        let base: Vec<Policy> = base.iter().enumerate().map(|(i, g)| build(&GenPolicy { name: format!("b{i}"), ..g.clone() })).collect();
        let before = allowed(&base, ResolveOptions::default());
        let mut with = base.clone();
        with.push(build(&extra));
        let after = allowed(&with, ResolveOptions::default());
        let removed: Vec<_> = before.difference(&after).collect();
        prop_assert!(removed.is_empty(), "an allow policy removed flows: {:?}", removed);
    }

    #[test]
    fn without_a_selecting_policy_everything_is_allowed(g in gen_policy(false)) {
        // A policy whose subject matches no pod changes nothing.
        let mut g = g;
        g.subject = Some("nobody");
        let all = allowed(&[], ResolveOptions::default());
        prop_assert_eq!(all.len(), flows(peers(&inventory()).len()).len());
        prop_assert_eq!(allowed(&[build(&g)], ResolveOptions::default()), all);
    }

    #[test]
    fn one_policy_allows_exactly_what_it_lists(g in gen_policy(false)) {
        let mut g = g;
        g.name = "only".into();
        let got = allowed(&[build(&g)], no_host_exemption());
        let inv = inventory();
        let peers = peers(&inv);
        for flow @ (ns, app, dir, peer, port, proto) in flows(peers.len()) {
            let selected = g.namespace.is_none_or(|p| p == ns) && g.subject.is_none_or(|s| s == app);
            let rules = match dir { Direction::Ingress => &g.ingress, Direction::Egress => &g.egress };
            let want = match (selected, rules) {
                (false, _) | (true, None) => true,
                // `ingress: []` enforces nothing (Cilium: no rule, no entry).
                (true, Some(rules)) if rules.is_empty() => true,
                (true, Some(rules)) => rules.iter().any(|r| reference_rule_covers(r, g.namespace, &peers[peer], port, proto)),
            };
            prop_assert_eq!(got.contains(&flow), want, "flow {:?} with peer {:?} under {:#?}", flow, peers[peer], g);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// An agent resolves policies for its own node's pods only
    /// (`PolicySet::resolve_for`): each of them gets exactly what resolving
    /// the whole cluster gives it, and the others get nothing.
    #[test]
    fn resolving_for_some_endpoints_gives_them_what_resolving_all_does(
        gs in prop::collection::vec(gen_policy(false), 0..4),
        deny in prop::option::of(gen_policy(true)),
        pick in prop::collection::vec(any::<bool>(), NAMESPACES.len() * APPS.len()),
    ) {
        let mut policies: Vec<Policy> = gs.iter().enumerate().map(|(i, g)| build(&GenPolicy { name: format!("p{i}"), ..g.clone() })).collect();
        policies.extend(deny.map(|d| build(&GenPolicy { name: "d".into(), ..d })));
        let inv = inventory();
        let set = PolicySet::new(policies);
        let all = set.resolve(&inv, ResolveOptions::default());
        let wanted: BTreeSet<_> = inv.endpoints().iter().zip(&pick).filter(|(_, p)| **p).map(|(e, _)| e.key.clone()).collect();
        let some = set.resolve_for(&inv, ResolveOptions::default(), |e| wanted.contains(&e.key));
        prop_assert_eq!(some.endpoints.keys().cloned().collect::<BTreeSet<_>>(), wanted.clone());
        for key in &wanted {
            prop_assert_eq!(format!("{:?}", some.endpoints[key]), format!("{:?}", all.endpoints[key]));
        }
        prop_assert_eq!(&some.rules, &all.rules);
    }
}
