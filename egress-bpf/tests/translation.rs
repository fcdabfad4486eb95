//! The translation from policy to map entries, checked without root: for
//! every flow of the seed and golden scenarios, the decision the datapath
//! would take over the compiled maps (the fake mirrors `decide.h`) equals
//! the policy engine's decision.

use std::net::IpAddr;
use std::path::PathBuf;

use egress_bpf::abi;
use egress_bpf::desired::{compile, Interfaces, StateDiff};
use egress_bpf::fake::FakeDatapath;
use egress_bpf::{Datapath, FlowReason, FlowVerdict};
use fqdn_cache::{Config, FqdnCache, PolicyView, Time};
use policy::resolve::L7Decision;
use policy::{
    Direction, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Resolved, Verdict,
};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel)
}

struct World {
    set: PolicySet,
    inventory: Inventory,
    resolved: Resolved,
    interfaces: Interfaces,
    fake: FakeDatapath,
}

fn world(policy_paths: &[&str], options: ResolveOptions) -> World {
    world_with(policy_paths, "", options)
}

/// `world` with the policies of `extra_yaml` added to the files'.
fn world_with(policy_paths: &[&str], extra_yaml: &str, options: ResolveOptions) -> World {
    let paths: Vec<PathBuf> = policy_paths.iter().map(|p| testdata(p)).collect();
    let report = policy::load_paths(&paths);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let mut policies = report.policies;
    if !extra_yaml.is_empty() {
        let extra = policy::parse_str(extra_yaml, None);
        assert!(!extra.has_errors(), "{:?}", extra.diagnostics);
        policies.extend(extra.policies);
    }
    let set = PolicySet::new(policies);
    let inventory = Inventory::load(&testdata("endpoints.yaml")).unwrap();
    let resolved = set.resolve(&inventory, options);
    let interfaces: Interfaces = inventory
        .endpoints()
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.clone(), (100 + i as u32, format!("veth{i}"))))
        .collect();
    let compiled = compile(&resolved, &inventory, &interfaces);
    let mut fake = FakeDatapath::default();
    fake.apply(&egress_bpf::DesiredState::default().diff(&compiled.state))
        .unwrap();
    World {
        set,
        inventory,
        resolved,
        interfaces,
        fake,
    }
}

fn peers(inventory: &Inventory) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = inventory
        .endpoints()
        .iter()
        .flat_map(|e| e.ips.clone())
        .collect();
    for ip in [
        "192.168.0.1",
        "192.168.0.2",
        "1.1.1.1",
        "8.8.8.8",
        "198.51.100.10",
        "198.51.100.66",
        "198.51.100.200",
        "203.0.113.9",
        "192.0.2.1",
        "2001:db8::1",
    ] {
        out.push(ip.parse().unwrap());
    }
    out
}

const PORTS: [u16; 13] = [
    22, 23, 53, 80, 81, 123, 443, 5000, 8000, 8080, 8081, 8099, 8100,
];

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => abi::PROTO_TCP,
        Protocol::Udp => abi::PROTO_UDP,
        Protocol::Sctp => abi::PROTO_SCTP,
        Protocol::Icmp => abi::PROTO_ICMP,
        Protocol::Icmpv6 => abi::PROTO_ICMPV6,
    }
}

/// What the datapath must do for the engine's decision.
fn expected(d: &policy::Decision, direction: Direction, audit: bool) -> (FlowVerdict, Option<u8>) {
    match (d.verdict, &d.l7, direction) {
        (Verdict::Denied, _, _) => (FlowVerdict::Denied, None),
        (Verdict::Audit, _, _) => (FlowVerdict::Audit, None),
        (Verdict::Allowed, L7Decision::None, _) => (FlowVerdict::Allowed, None),
        (Verdict::Allowed, L7Decision::Dns(_), Direction::Egress) => {
            (FlowVerdict::Redirected, Some(abi::PROXY_DNS))
        }
        (Verdict::Allowed, L7Decision::Http(_) | L7Decision::Tls(_), Direction::Egress) => {
            (FlowVerdict::Redirected, Some(abi::PROXY_HTTP))
        }
        // No ingress proxy yet: the datapath fails closed (audit passes it).
        (Verdict::Allowed, _, Direction::Ingress) if audit => (FlowVerdict::Audit, None),
        (Verdict::Allowed, _, Direction::Ingress) => (FlowVerdict::Denied, None),
    }
}

fn check_all_flows(w: &World) -> usize {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (key, ep) in &w.resolved.endpoints {
        let (ifindex, _) = w.interfaces[key];
        for peer_ip in peers(&w.inventory) {
            if w.inventory.endpoint(key).unwrap().ips.contains(&peer_ip) {
                continue;
            }
            let identity = w.inventory.identity_of(peer_ip);
            let peer = PeerRef {
                identity,
                ip: Some(peer_ip),
                names: &[],
            };
            for direction in [Direction::Ingress, Direction::Egress] {
                let dir = if direction == Direction::Egress {
                    abi::DIR_EGRESS
                } else {
                    abi::DIR_INGRESS
                };
                let icmp = if peer_ip.is_ipv4() {
                    Protocol::Icmp
                } else {
                    Protocol::Icmpv6
                };
                let mut flows: Vec<(u16, Protocol)> = vec![(0, icmp)];
                for port in PORTS {
                    flows.push((port, Protocol::Tcp));
                    flows.push((port, Protocol::Udp));
                }
                for (port, protocol) in flows {
                    let engine = ep.decide(w.set.matcher(), direction, &peer, port, protocol);
                    let want = expected(&engine, direction, ep.audit);
                    let got = w
                        .fake
                        .decide(ifindex, dir, peer_ip, proto_number(protocol), port, 0);
                    // A tracked flow decided again under the same policy (as
                    // after any policy change) gets the same verdict.
                    let again = w.fake.decide_established(
                        ifindex,
                        dir,
                        peer_ip,
                        proto_number(protocol),
                        port,
                        got.reason,
                        0,
                    );
                    if (again.verdict, again.reason) != (got.verdict, got.reason) {
                        mismatches.push(format!(
                            "{key} {direction:?} peer {peer_ip} {port}/{protocol}: new flow {:?} {:?}, established {:?} {:?}",
                            got.verdict, got.reason, again.verdict, again.reason
                        ));
                    }
                    let got = (
                        got.verdict,
                        (got.proxy != abi::PROXY_NONE).then_some(got.proxy),
                    );
                    checked += 1;
                    if got != want {
                        mismatches.push(format!(
                            "{key} {direction:?} peer {peer_ip} {port}/{protocol}: engine {:?} ({:?} {:?}) -> want {want:?}, maps give {got:?}",
                            engine.verdict, engine.reason, engine.rule
                        ));
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} flows differ:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    checked
}

#[test]
fn seed_policies_compile_to_maps_that_decide_like_the_engine() {
    let w = world(&["policies"], ResolveOptions::default());
    assert!(check_all_flows(&w) > 5_000);
}

#[test]
fn golden_semantics_compile_to_maps_that_decide_like_the_engine() {
    let w = world(
        &["golden/semantics-policies.yaml"],
        ResolveOptions::default(),
    );
    assert!(check_all_flows(&w) > 5_000);
}

#[test]
fn audit_and_no_host_exemption_compile_too() {
    let w = world(
        &["policies", "golden/semantics-policies.yaml"],
        ResolveOptions {
            allow_host_to_local: false,
            audit: true,
        },
    );
    check_all_flows(&w);
}

#[test]
fn learned_fqdn_entries_open_exactly_the_policy_ports_until_expiry() {
    let mut w = world(&["policies"], ResolveOptions::default());
    let mut cache = FqdnCache::new(Config::default(), PolicyView::from_resolved(&w.resolved));
    let payments = w.inventory.find("prod/payments").unwrap().key.clone();
    let frontend = w.inventory.find("prod/frontend").unwrap().key.clone();
    let ip: IpAddr = "203.0.113.50".parse().unwrap();
    let now = Time::from_secs(1_000);
    let interfaces = w.interfaces.clone();
    let ifindex_of = |k: &policy::EndpointKey| interfaces.get(k).map(|(i, _)| *i);
    for ep in [&payments, &frontend] {
        let diff = cache.learn(now, ep, "api.stripe.com", &[(ip, 30)]);
        w.fake
            .apply(&StateDiff::from_fqdn(&diff, ifindex_of))
            .unwrap();
    }
    let (p_if, _) = w.interfaces[&payments];
    let (f_if, _) = w.interfaces[&frontend];
    let at = |secs: u64| Time::from_secs(secs).0;
    let d = w
        .fake
        .decide(p_if, abi::DIR_EGRESS, ip, abi::PROTO_TCP, 443, at(1_001));
    assert_eq!(
        (d.verdict, d.reason),
        (FlowVerdict::Allowed, FlowReason::Fqdn)
    );
    assert_eq!(
        w.fake
            .decide(p_if, abi::DIR_EGRESS, ip, abi::PROTO_TCP, 80, at(1_001))
            .verdict,
        FlowVerdict::Denied
    );
    assert_eq!(
        w.fake
            .decide(f_if, abi::DIR_EGRESS, ip, abi::PROTO_TCP, 443, at(1_001))
            .verdict,
        FlowVerdict::Denied
    );
    // Expiry is in the value itself: no GC needed for the datapath to deny.
    assert_eq!(
        w.fake
            .decide(p_if, abi::DIR_EGRESS, ip, abi::PROTO_TCP, 443, at(1_030))
            .verdict,
        FlowVerdict::Denied
    );
}

#[test]
fn cidr_identities_follow_longest_prefix() {
    let w = world(
        &["golden/semantics-policies.yaml"],
        ResolveOptions::default(),
    );
    let inside = w.fake.identity_of("198.51.100.10".parse().unwrap());
    let excepted = w.fake.identity_of("198.51.100.200".parse().unwrap());
    let outside = w.fake.identity_of("1.1.1.1".parse().unwrap());
    let pod = w.fake.identity_of("10.0.1.20".parse().unwrap());
    assert!(inside >= egress_bpf::desired::CIDR_IDENTITY_BASE);
    assert!(excepted >= egress_bpf::desired::CIDR_IDENTITY_BASE && excepted != inside);
    assert_eq!(outside, egress_bpf::desired::ID_WORLD_IPV4);
    assert_eq!(pod, w.inventory.find("prod/db").unwrap().identity.0);
    assert_eq!(
        w.fake.identity_of("2001:db8::1".parse().unwrap()),
        egress_bpf::desired::ID_WORLD_IPV6
    );
}

/// Payments' connection to an api.stripe.com address, admitted by its FQDN
/// grant, after the grant expired and after GC removed it, under `w`'s
/// policy: what the datapath decides for its next packet.
fn stripe_flow_after_expiry(w: &mut World, learn: bool) -> (FlowVerdict, FlowReason) {
    let payments = w.inventory.find("prod/payments").unwrap().key.clone();
    let (p_if, _) = w.interfaces[&payments];
    let ip: IpAddr = "203.0.113.50".parse().unwrap();
    let at = |secs: u64| Time::from_secs(secs).0;
    if learn {
        let mut cache = FqdnCache::new(Config::default(), PolicyView::from_resolved(&w.resolved));
        let diff = cache.learn(
            Time::from_secs(1_000),
            &payments,
            "api.stripe.com",
            &[(ip, 30)],
        );
        let interfaces = w.interfaces.clone();
        w.fake
            .apply(&StateDiff::from_fqdn(&diff, |k| {
                interfaces.get(k).map(|(i, _)| *i)
            }))
            .unwrap();
    }
    let expired = w.fake.decide_established(
        p_if,
        abi::DIR_EGRESS,
        ip,
        abi::PROTO_TCP,
        443,
        FlowReason::Fqdn,
        at(1_031),
    );
    // GC: the expired address became a zombie, its grant left the map.
    w.fake.state.fqdn.clear();
    let collected = w.fake.decide_established(
        p_if,
        abi::DIR_EGRESS,
        ip,
        abi::PROTO_TCP,
        443,
        FlowReason::Fqdn,
        at(1_031),
    );
    assert_eq!(expired, collected, "expired or collected: the same");
    (collected.verdict, collected.reason)
}

#[test]
fn an_fqdn_flow_outlives_its_grant_not_its_rule_nor_a_deny() {
    let mut w = world(&["policies"], ResolveOptions::default());
    assert_eq!(
        stripe_flow_after_expiry(&mut w, true),
        (FlowVerdict::Allowed, FlowReason::Fqdn),
        "expiry alone keeps the established flow (a zombie)"
    );
    // A new connection to it is denied all the same.
    let payments = w.inventory.find("prod/payments").unwrap().key.clone();
    let (p_if, _) = w.interfaces[&payments];
    let ip: IpAddr = "203.0.113.50".parse().unwrap();
    assert_eq!(
        w.fake
            .decide(p_if, abi::DIR_EGRESS, ip, abi::PROTO_TCP, 443, 0)
            .verdict,
        FlowVerdict::Denied
    );
    // Only the rule's port is kept, never another.
    assert_eq!(
        w.fake
            .decide_established(
                p_if,
                abi::DIR_EGRESS,
                ip,
                abi::PROTO_TCP,
                80,
                FlowReason::Fqdn,
                0
            )
            .verdict,
        FlowVerdict::Denied
    );

    // The toFQDNs rule removed (the pod still in default deny): cut.
    let mut w = world(
        &[
            "policies/default-deny-all.yaml",
            "policies/frontend-to-db-l7.yaml",
        ],
        ResolveOptions::default(),
    );
    assert_eq!(
        stripe_flow_after_expiry(&mut w, false),
        (FlowVerdict::Denied, FlowReason::DefaultDeny),
        "a removed toFQDNs rule cuts its zombies"
    );

    // A deny rule on the address: cut, whatever admitted it.
    let deny = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: no-stripe-ip, namespace: prod}\n\
                spec:\n  endpointSelector: {matchLabels: {app: payments}}\n  egressDeny:\n  - toCIDR: [203.0.113.50/32]\n";
    let mut w = world_with(&["policies"], deny, ResolveOptions::default());
    assert_eq!(
        stripe_flow_after_expiry(&mut w, true).1,
        FlowReason::DenyRule,
        "a deny rule cuts a zombie"
    );
}

#[test]
fn every_local_endpoint_may_send_from_exactly_its_own_addresses() {
    let w = world(&["policies"], ResolveOptions::default());
    let mut want = std::collections::BTreeMap::new();
    for e in w.inventory.endpoints() {
        if let Some((ifindex, _)) = w.interfaces.get(&e.key) {
            for ip in &e.ips {
                want.insert((*ifindex, *ip), ());
            }
        }
    }
    assert!(!want.is_empty());
    assert_eq!(w.fake.state.addresses, want);
}

/// `serverNames` on egress (to world CIDRs, both families) and on a pod's
/// ingress, next to the seed policies: the maps redirect exactly the flows
/// the engine hands to the proxy, and ingress ones without the proxy's mark
/// fail closed.
#[test]
fn server_names_compile_to_maps_that_decide_like_the_engine() {
    let w = world_with(
        &["policies"],
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sni, namespace: prod}
specs:
- endpointSelector: {matchLabels: {app: payments}}
  egress:
  - toCIDRSet: [{cidr: 203.0.113.0/24}, {cidr: '2001:db8::/32'}]
    toPorts: [{ports: [{port: '443'}], serverNames: [api.stripe.com, '*.stripe.com']}]
- endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}], serverNames: [db.test]}]
",
        ResolveOptions::default(),
    );
    assert!(check_all_flows(&w) > 5_000);
}
