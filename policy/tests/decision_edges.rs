//! Decisions where several rules meet, and peers at the edge of what a rule
//! can name. (Each was a change to the decision code that no other test
//! noticed; see TESTING.md.)

use policy::resolve::L7Decision;
use policy::{
    Direction, Identity, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Verdict,
};

const ENDPOINTS: &str = "endpoints:
  - {name: app, namespace: prod, labels: {app: app}, ips: [10.0.1.10]}
  - {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}, ips: [10.0.0.53]}
";

fn decide(policies: &str, peer: PeerRef, port: u16, proto: Protocol) -> policy::Decision {
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let report = policy::parse_str(policies, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let key = inventory.find("prod/app").unwrap().key.clone();
    resolved.endpoint(&key).unwrap().decide(
        &resolved.matcher,
        Direction::Egress,
        &peer,
        port,
        proto,
    )
}

fn cnp(name: &str, egress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: app}}}}\n  egress:\n{egress}\n---\n"
    )
}

fn world_without_ip() -> PeerRef<'static> {
    PeerRef {
        identity: Identity::WORLD,
        ip: None,
        names: &[],
    }
}

#[test]
fn the_world_entity_covers_a_world_peer_of_unknown_family_and_a_cidr_rule_does_not() {
    let entity = cnp("w", "  - toEntities: [world]");
    assert_eq!(
        decide(&entity, world_without_ip(), 443, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "world covers every outside address, whatever its family"
    );
    let v4_entity = cnp("w4e", "  - toEntities: [world-ipv4]");
    assert_eq!(
        decide(&v4_entity, world_without_ip(), 443, Protocol::Tcp).verdict,
        Verdict::Denied,
        "world-ipv4 cannot vouch for a peer that may be IPv6"
    );
    let v4_and_v6 = cnp("w46e", "  - toEntities: [world-ipv4, world-ipv6]");
    assert_eq!(
        decide(&v4_and_v6, world_without_ip(), 443, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "both families together are the world"
    );
    let v4_only = cnp("w4", "  - toCIDR: [0.0.0.0/0]");
    assert_eq!(
        decide(&v4_only, world_without_ip(), 443, Protocol::Tcp).verdict,
        Verdict::Denied,
        "a CIDR rule needs the address (`policy explain --to world` has none)"
    );
}

/// The kube-dns pod, as the datapath sees it.
fn coredns_peer() -> PeerRef<'static> {
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let ip = "10.0.0.53".parse().unwrap();
    PeerRef {
        identity: inventory.identity_of(ip),
        ip: Some(ip),
        names: &[],
    }
}

const TO_DNS: &str = "  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]\n    toPorts:\n      - ports: [{port: '53', protocol: UDP}]\n        rules:\n";

#[test]
fn two_policies_allowing_names_on_the_same_resolver_port_allow_both_sets() {
    let policies = cnp(
        "a",
        &format!("{TO_DNS}          dns: [{{matchName: a.test}}]"),
    ) + &cnp(
        "b",
        &format!("{TO_DNS}          dns: [{{matchPattern: '*.b.test'}}]"),
    );
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let report = policy::parse_str(&policies, None);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let d = decide(&policies, coredns_peer(), 53, Protocol::Udp);
    assert_eq!(d.verdict, Verdict::Allowed);
    let L7Decision::Dns(allowed) = d.l7 else {
        panic!("a DNS restriction: {:?}", d.l7);
    };
    let names_allowed = |name: &str| {
        resolved
            .matcher
            .matches(name)
            .iter()
            .any(|id| allowed.contains(id))
    };
    assert!(names_allowed("a.test"), "the first policy's name");
    assert!(names_allowed("x.b.test"), "and the second's");
    assert!(!names_allowed("c.test"), "and nothing else");
}

#[test]
fn two_policies_with_http_rules_on_the_same_port_allow_either_rule() {
    let http = |name: &str, path: &str| {
        cnp(
            name,
            &format!(
                "  - toCIDR: [203.0.113.10/32]\n    toPorts:\n      - ports: [{{port: '80', protocol: TCP}}]\n        rules:\n          http: [{{method: GET, path: '{path}'}}]"
            ),
        )
    };
    let policies = http("a", "/a") + &http("b", "/b");
    let peer = PeerRef {
        identity: Identity::WORLD,
        ip: Some("203.0.113.10".parse().unwrap()),
        names: &[],
    };
    let d = decide(&policies, peer, 80, Protocol::Tcp);
    assert_eq!(d.verdict, Verdict::Allowed);
    let L7Decision::Http(rules) = d.l7 else {
        panic!("an HTTP restriction: {:?}", d.l7);
    };
    let allows = |path: &str| rules.iter().any(|r| r.matches("GET", path, None, &[]));
    assert!(
        allows("/a") && allows("/b"),
        "either policy's rule admits its path"
    );
    assert!(!allows("/c"));
}

/// An `icmps` rule is a rule on the ICMP protocol whose "port" is the type
/// (Cilium: `ICMPField.PortProtocol`, pkg/policy/api/icmp.go): echo
/// requests allowed, other types and every port not, and ANY never means
/// ICMP.
#[test]
fn an_icmp_rule_allows_its_types_of_its_family_only() {
    let world = || PeerRef {
        identity: Identity::WORLD,
        ip: Some("192.0.2.1".parse().unwrap()),
        names: &[],
    };
    let echo = cnp(
        "ping",
        "  - toEntities: [world]\n    icmps: [{fields: [{type: EchoRequest}, {family: IPv6, type: 128}]}]",
    );
    assert_eq!(
        decide(&echo, world(), 8, Protocol::Icmp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        decide(&echo, world(), 13, Protocol::Icmp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        decide(&echo, world(), 8, Protocol::Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        decide(&echo, world(), 128, Protocol::Icmpv6).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        decide(&echo, world(), 8, Protocol::Icmpv6).verdict,
        Verdict::Denied
    );
    let any = cnp(
        "any",
        "  - toEntities: [world]\n    toPorts: [{ports: [{port: '0', protocol: ANY}]}]",
    );
    assert_eq!(
        decide(&any, world(), 8, Protocol::Icmp).verdict,
        Verdict::Denied,
        "ANY is TCP, UDP and SCTP"
    );
}

/// Flow records (`observe`, Hubble's `traffic_direction`) name a direction
/// the way policies and Cilium spell it, the same as its JSON form.
#[test]
fn directions_are_named_as_policies_spell_them() {
    for (direction, name) in [
        (Direction::Ingress, "ingress"),
        (Direction::Egress, "egress"),
    ] {
        assert_eq!(direction.as_str(), name);
        assert_eq!(
            serde_json::to_value(direction).unwrap(),
            serde_json::Value::from(name)
        );
    }
}

/// A port range prints as Cilium writes ports: one port as
/// `PORT/PROTO`, a range as `START-END/PROTO`, no protocol as `ANY`.
#[test]
fn port_ranges_print_as_port_slash_protocol() {
    use policy::rules::{PortRange, ProtocolSpec};
    let range = |start, end, protocol| PortRange {
        start,
        end,
        protocol,
    };
    assert_eq!(range(443, 443, ProtocolSpec::Tcp).to_string(), "443/TCP");
    assert_eq!(
        range(8000, 8080, ProtocolSpec::Udp).to_string(),
        "8000-8080/UDP"
    );
    assert_eq!(range(53, 53, ProtocolSpec::Any).to_string(), "53/ANY");
    assert_eq!(range(8, 8, ProtocolSpec::Icmp).to_string(), "8/ICMP");
}

/// A flow's protocol as the CLI takes it (`policy explain`): each name in
/// any case, printed back as Cilium spells it; anything else is refused
/// with the names that are accepted.
#[test]
fn flow_protocols_parse_in_any_case_and_print_as_cilium_spells_them() {
    for (input, protocol, printed) in [
        ("tcp", Protocol::Tcp, "TCP"),
        ("UDP", Protocol::Udp, "UDP"),
        ("Sctp", Protocol::Sctp, "SCTP"),
        ("icmp", Protocol::Icmp, "ICMP"),
        ("ICMPv6", Protocol::Icmpv6, "ICMPv6"),
    ] {
        let parsed: Protocol = input.parse().unwrap();
        assert_eq!(parsed, protocol, "{input}");
        assert_eq!(parsed.to_string(), printed);
    }
    let err = "gre".parse::<Protocol>().unwrap_err();
    assert!(
        err.contains("\"gre\"") && err.contains("TCP, UDP, SCTP, ICMP or ICMPv6"),
        "{err}"
    );
}

/// Policies compare equal when their HTTP rules do (the regexes by their
/// text): rules differing in any of method, path, host or headers differ.
#[test]
fn http_rules_are_equal_exactly_when_every_part_is() {
    use policy::rules::{HeaderMatch, HttpRule};
    let re = |s: &str| Some(regex::Regex::new(s).unwrap());
    let rule = |m: &str, p: &str, h: &str, header: &str| HttpRule {
        method: re(m),
        path: re(p),
        host: re(h),
        headers: vec![HeaderMatch {
            name: header.into(),
            value: None,
        }],
        header_actions: vec![],
    };
    let base = rule("GET", "/a", "x.test", "X-A");
    assert_eq!(base, rule("GET", "/a", "x.test", "X-A"));
    for other in [
        rule("PUT", "/a", "x.test", "X-A"),
        rule("GET", "/b", "x.test", "X-A"),
        rule("GET", "/a", "y.test", "X-A"),
        rule("GET", "/a", "x.test", "X-B"),
    ] {
        assert_ne!(base, other);
    }
    let mut acting = rule("GET", "/a", "x.test", "X-A");
    acting.header_actions.push(policy::rules::HeaderAction {
        name: "X-Env".into(),
        value: Some("prod".into()),
        on_mismatch: policy::rules::MismatchAction::Add,
    });
    assert_ne!(base, acting, "a mismatch action makes another rule");
}

/// A header a rule names must be there, and with the value it gives, in
/// every copy: absent or another value does not match (Cilium's
/// `headers`). The rest of the request matching does not make up for it.
#[test]
fn a_required_header_must_be_present_with_its_value() {
    use policy::rules::{HeaderMatch, HttpRule};
    let rule = |value: Option<&str>| HttpRule {
        method: None,
        path: None,
        host: None,
        headers: vec![HeaderMatch {
            name: "X-Token".into(),
            value: value.map(String::from),
        }],
        header_actions: vec![],
    };
    let present = rule(None);
    assert!(present.matches("GET", "/", None, &[("x-token", "anything")]));
    assert!(!present.matches("GET", "/", None, &[]), "absent");
    assert!(
        !present.matches("GET", "/", None, &[("X-Other", "1")]),
        "another header"
    );
    let exact = rule(Some("s3cret"));
    assert!(exact.matches("GET", "/", None, &[("X-Token", "s3cret")]));
    assert!(
        !exact.matches("GET", "/", None, &[("X-Token", "guess")]),
        "another value"
    );
    assert!(!exact.matches("GET", "/", None, &[]), "absent");
    assert!(
        !exact.matches(
            "GET",
            "/",
            None,
            &[("X-Token", "s3cret"), ("X-Token", "guess")]
        ),
        "a second copy with another value"
    );
}

/// A matching rule's `headerMatches` mismatch actions change the request
/// (ADD here) and say what they did.
#[test]
fn a_matching_rules_header_actions_edit_the_request() {
    use policy::rules::{HeaderAction, HeaderEdit, HttpRule, MismatchAction};
    let rule = HttpRule {
        method: None,
        path: None,
        host: None,
        headers: vec![],
        header_actions: vec![HeaderAction {
            name: "X-Env".into(),
            value: Some("prod".into()),
            on_mismatch: MismatchAction::Add,
        }],
    };
    let mut headers = vec![("Host".to_string(), "api.test".to_string())];
    let edits = rule.apply_header_actions(&mut headers);
    assert_eq!(
        edits,
        [HeaderEdit::Added {
            name: "X-Env".into(),
            value: "prod".into()
        }]
    );
    assert!(
        headers.contains(&("X-Env".to_string(), "prod".to_string())),
        "{headers:?}"
    );
}
