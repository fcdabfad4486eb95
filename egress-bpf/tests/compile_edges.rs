//! Compilation at the edges the golden translation tables do not reach:
//! the rule a flow event names, rule ids that do not depend on which
//! endpoints are local, and CIDR rules for the whole address space.
//! (Mutation testing found these unpinned; see TESTING.md.)

use std::net::IpAddr;

use egress_bpf::abi;
use egress_bpf::desired::{compile, Compiled, Interfaces};
use egress_bpf::fake::FakeDatapath;
use egress_bpf::{Datapath, DesiredState, FlowReason, FlowVerdict};
use policy::{Direction, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Resolved};

const ENDPOINTS: &str = "
endpoints:
  - {name: web, namespace: shop, labels: {app: web}, ips: [10.1.0.10, 'fd00::10']}
  - {name: api, namespace: shop, labels: {app: api}, ips: [10.1.0.11]}
  - {name: db, namespace: shop, labels: {app: db}, ips: [10.1.0.12]}
";

const POLICIES: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchLabels: {app: api}}]
      toPorts: [{ports: [{port: '80', protocol: TCP}]}]
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: '5432', protocol: TCP}]}]
    - toCIDR: [0.0.0.0/0, '::/0']
      toPorts: [{ports: [{port: '443', protocol: TCP}]}]
    - toCIDR: ['2001:db8::/32', 192.0.2.0/24]
      toPorts: [{ports: [{port: '22', protocol: TCP}]}]
    - toEntities: [world-ipv4]
      toPorts: [{ports: [{port: '8443', protocol: TCP}]}]
    - toEntities: [world-ipv6]
      toPorts: [{ports: [{port: '8444', protocol: TCP}]}]
  egressDeny:
    - toCIDR: [203.0.113.0/24]
      toPorts: [{ports: [{port: '443', protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-in, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-in, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: '5432', protocol: TCP}]}]
";

struct World {
    inventory: Inventory,
    resolved: Resolved,
}

fn world() -> World {
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let report = policy::parse_str(POLICIES, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    World {
        inventory,
        resolved,
    }
}

impl World {
    /// Interfaces for the named endpoints (ifindex 100, 101, ...).
    fn interfaces(&self, local: &[&str]) -> Interfaces {
        local
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let key = self.inventory.find(name).unwrap().key.clone();
                (key, (100 + i as u32, format!("veth{i}")))
            })
            .collect()
    }

    fn datapath(&self, compiled: &Compiled) -> FakeDatapath {
        let mut fake = FakeDatapath::default();
        fake.apply(&DesiredState::default().diff(&compiled.state))
            .unwrap();
        fake
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_flow_names_the_rule_that_decided_it() {
    let w = world();
    let interfaces = w.interfaces(&["web", "api", "db"]);
    let compiled = compile(&w.resolved, &w.inventory, &interfaces);
    let fake = w.datapath(&compiled);
    let web = &w.resolved.endpoints[&w.inventory.find("web").unwrap().key];
    let mut named = Vec::new();
    for (peer, port) in [
        ("10.1.0.11", 80),
        ("10.1.0.12", 5432),
        ("198.51.100.1", 443),
        ("203.0.113.5", 443),
    ] {
        let peer_ip = ip(peer);
        let engine = web.decide(
            &w.resolved.matcher,
            Direction::Egress,
            &PeerRef {
                identity: w.inventory.identity_of(peer_ip),
                ip: Some(peer_ip),
                names: &[],
            },
            port,
            Protocol::Tcp,
        );
        let got = fake.decide(100, abi::DIR_EGRESS, peer_ip, abi::PROTO_TCP, port, 0);
        let rule = engine.rule.clone().expect("decided by a rule");
        assert_eq!(
            compiled.rules.rule(got.rule_id),
            Some(&rule),
            "{peer}:{port} (id {})",
            got.rule_id
        );
        named.push(rule.to_string());
    }
    assert_eq!(
        named,
        [
            "shop/web-out spec.egress[0]",
            "shop/web-out spec.egress[1]",
            "shop/web-out spec.egress[2]",
            "shop/web-out spec.egressDeny[0]",
        ]
    );
    // Ingress on db: its own rule.
    let got = fake.decide(
        102,
        abi::DIR_INGRESS,
        ip("10.1.0.10"),
        abi::PROTO_TCP,
        5432,
        0,
    );
    assert_eq!(got.reason, FlowReason::AllowRule);
    assert_eq!(
        compiled.rules.rule(got.rule_id).map(|r| r.to_string()),
        Some("shop/db-in spec.ingress[0]".to_string())
    );
    // 0 is "no rule".
    assert_eq!(compiled.rules.rule(0), None);
    let got = fake.decide(101, abi::DIR_EGRESS, ip("10.1.0.12"), abi::PROTO_TCP, 1, 0);
    assert_eq!(got.reason, FlowReason::NoPolicy);
    assert_eq!(compiled.rules.rule(got.rule_id), None);
}

#[test]
fn rule_ids_do_not_depend_on_which_endpoints_are_local() {
    // Two nodes compile the same policies for different local pods; a flow
    // event's rule id must mean the same rule on both.
    let w = world();
    let all = compile(
        &w.resolved,
        &w.inventory,
        &w.interfaces(&["web", "api", "db"]),
    );
    let db_only = compile(&w.resolved, &w.inventory, &w.interfaces(&["db"]));
    assert_eq!(all.rules, db_only.rules);
    let ids: Vec<u32> = all
        .state
        .allow
        .values()
        .chain(all.state.deny.values())
        .map(|v| v.rule_id)
        .collect();
    assert!(ids.iter().all(|id| all.rules.rule(*id).is_some()));
    let distinct: std::collections::BTreeSet<u32> = ids.into_iter().collect();
    assert!(distinct.len() >= 5, "one id per rule: {distinct:?}");
}

#[test]
fn a_cidr_rule_for_the_whole_address_space_covers_every_outside_address() {
    let w = world();
    let compiled = compile(&w.resolved, &w.inventory, &w.interfaces(&["web"]));
    let fake = w.datapath(&compiled);
    for peer in ["198.51.100.1", "8.8.8.8", "2001:db8::1", "2606:4700::1"] {
        let got = fake.decide(100, abi::DIR_EGRESS, ip(peer), abi::PROTO_TCP, 443, 0);
        assert_eq!(
            (got.verdict, got.reason),
            (FlowVerdict::Allowed, FlowReason::AllowRule),
            "{peer}"
        );
        let got = fake.decide(100, abi::DIR_EGRESS, ip(peer), abi::PROTO_TCP, 80, 0);
        assert_eq!(got.verdict, FlowVerdict::Denied, "{peer}:80");
    }
    // A narrower prefix next to them is a CIDR identity of its own.
    for (peer, verdict) in [
        ("2001:db8::1", FlowVerdict::Allowed),
        ("192.0.2.1", FlowVerdict::Allowed),
        ("2606:4700::1", FlowVerdict::Denied),
        ("198.51.100.1", FlowVerdict::Denied),
    ] {
        let got = fake.decide(100, abi::DIR_EGRESS, ip(peer), abi::PROTO_TCP, 22, 0);
        assert_eq!(got.verdict, verdict, "{peer}:22");
    }
    // An address inside a policy's CIDR carries that CIDR's identity and is
    // a world address of its family all the same.
    for (peer, port, verdict) in [
        ("192.0.2.1", 8443, FlowVerdict::Allowed),
        ("198.51.100.1", 8443, FlowVerdict::Allowed),
        ("2001:db8::1", 8443, FlowVerdict::Denied),
        ("2001:db8::1", 8444, FlowVerdict::Allowed),
        ("2606:4700::1", 8444, FlowVerdict::Allowed),
        ("192.0.2.1", 8444, FlowVerdict::Denied),
    ] {
        let got = fake.decide(100, abi::DIR_EGRESS, ip(peer), abi::PROTO_TCP, port, 0);
        assert_eq!(got.verdict, verdict, "{peer}:{port}");
    }
    // The whole space is the world identities themselves, not a CIDR
    // identity of its own.
    assert_eq!(
        compiled.state.ipcache.get(&"0.0.0.0/0".parse().unwrap()),
        Some(&abi::ID_WORLD_IPV4)
    );
    assert_eq!(
        compiled.state.ipcache.get(&"::/0".parse().unwrap()),
        Some(&abi::ID_WORLD_IPV6)
    );
}
