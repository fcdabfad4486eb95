//! `toPorts[].serverNames` (TLS SNI): validation and decisions.
//!
//! Following Cilium's source:
//! - pkg/policy/api/l4.go: `PortRule.ServerNames` ("If not empty, then TLS
//!   must be present and one of the provided SNIs must be indicated in the
//!   TLS handshake"), `ServerName` (CRD pattern
//!   `^(\*?\*\.)?([-a-zA-Z0-9_]+\.?)+$`, max 255, minItems 1);
//! - pkg/policy/api/rule_validation.go, `PortRule.sanitize`: "ServerNames
//!   are not allowed with L7 rules without TLS termination",
//!   `errEmptyServerName`; nothing there forbids them on ingress;
//! - pkg/policy/l4.go, `createL4Filter`: serverNames alone make the parser
//!   `tls` (a proxy redirect), `rules.http` would promote it to `http`;
//! - pkg/policy/rule.go (`mergePortProto`): the SNIs of rules to the same
//!   peer and port add up;
//! - cilium/proxy cilium/network_policy.h (`SniPattern`): lowercase match,
//!   `*.` one label, `**.` any depth.

use std::path::Path;

use policy::resolve::L7Decision;
use policy::sni::{ServerName, ServerNameError};
use policy::{
    parse_str, Direction, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Severity,
    Verdict,
};

fn cnp(name: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec:\n{body}---\n"
    )
}

fn errors(yaml: &str) -> Vec<String> {
    let report = parse_str(yaml, Some(Path::new("pols/x.yaml")));
    report.errors().map(|d| d.to_string()).collect()
}

fn tls_port(extra: &str) -> String {
    format!("endpointSelector: {{}}\negress:\n- toEntities: [world]\n  toPorts: [{{ports: [{{port: '443', protocol: TCP}}]{extra}}}]")
}

#[test]
fn valid_server_names_load() {
    for names in [
        "[api.stripe.com]",
        "['*.one.one.one', '**.one.one', API.Example.COM]",
        "[a_b.io, x-y.io]",
    ] {
        let yaml = cnp("p1", &tls_port(&format!(", serverNames: {names}")));
        assert_eq!(errors(&yaml), Vec::<String>::new(), "{names}");
    }
    // Ingress too (Cilium does not forbid it), and with `rules: {}`.
    let ingress = cnp(
        "p2",
        "endpointSelector: {}\ningress:\n- fromEntities: [world]\n  toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [api.test], rules: {}}]",
    );
    assert_eq!(errors(&ingress), Vec::<String>::new());
}

#[test]
fn invalid_server_names_are_explained() {
    let f = "policy p1: spec.egress[0].toPorts[0].serverNames";
    for (extra, want) in [
        (", serverNames: ['']", format!("{f}[0]: \"\" is empty")),
        (
            ", serverNames: []",
            format!("{f}: is empty; list at least one"),
        ),
        (
            ", serverNames: ['a.*.io']",
            format!("{f}[0]: \"a.*.io\" uses `*` in the middle"),
        ),
        (
            ", serverNames: [ok.io, 'a b.io']",
            format!("{f}[1]: \"a b.io\" has invalid character ' '"),
        ),
        (
            ", serverNames: [a.io.]",
            format!("{f}[0]: \"a.io.\" ends with `.`"),
        ),
        (
            ", serverNames: [a.io], rules: {http: [{method: GET}]}",
            format!("{f}: cannot be combined with L7 rules"),
        ),
        (
            ", serverNames: [a.io], rules: {dns: [{matchName: a.io}]}",
            format!("{f}: cannot be combined with L7 rules"),
        ),
    ] {
        let errs = errors(&cnp("p1", &tls_port(extra)));
        assert!(
            errs.iter().any(|e| e.contains(&want)),
            "{extra}: want {want:?} in {errs:#?}"
        );
    }
    // Port 0 (every port) and deny rules.
    let zero = cnp(
        "p1",
        "endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: '0', protocol: TCP}], serverNames: [a.io]}]",
    );
    assert!(errors(&zero)
        .iter()
        .any(|e| e.contains("serverNames: cannot be used when a port is 0")));
    let deny = cnp(
        "p1",
        "endpointSelector: {}\negressDeny:\n- toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [a.io]}]",
    );
    assert!(errors(&deny)
        .iter()
        .any(|e| e.contains("egressDeny[0].toPorts[0].serverNames: is not allowed in deny rules")));
}

/// The CRD's length limit is 255 characters, inclusive: the longest legal
/// DNS name is a valid server name and matches itself; one more character
/// is refused.
#[test]
fn a_server_name_of_255_characters_is_accepted_and_256_is_not() {
    let longest = ["a", "b", "c", "d"].map(|c| c.repeat(63)).join(".");
    assert_eq!(longest.len(), 255);
    let name = ServerName::parse(&longest).expect("255 characters are allowed");
    assert!(name.matches(&longest));
    let over = format!("x{longest}");
    assert_eq!(ServerName::parse(&over), Err(ServerNameError::TooLong(256)));
    let yaml = cnp("p1", &tls_port(&format!(", serverNames: [{longest}]")));
    assert_eq!(errors(&yaml), Vec::<String>::new());
}

/// Cilium's own pairing for an egress gateway: `serverNames` under
/// `toFQDNs` (the learned addresses go through the proxy, which checks the
/// ClientHello) is accepted.
#[test]
fn server_names_under_to_fqdns_are_accepted() {
    let yaml = cnp(
        "p1",
        "endpointSelector: {}\negress:\n- toFQDNs: [{matchName: api.stripe.com}]\n  toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [api.stripe.com]}]",
    );
    let report = parse_str(&yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
}

/// Empty L7 lists are no L7 rules (Cilium: empty lists do not count), and
/// TLS on TCP is no reason for a warning.
#[test]
fn server_names_with_empty_rule_lists_on_tcp_are_clean() {
    let yaml = cnp(
        "p1",
        "endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [a.io], rules: {dns: []}}]",
    );
    let report = parse_str(&yaml, None);
    assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
}

#[test]
fn server_names_on_udp_only_warn_that_they_allow_nothing() {
    let yaml = cnp(
        "p1",
        "endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: '443', protocol: UDP}], serverNames: [a.io]}]",
    );
    let report = parse_str(&yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    assert!(report
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Warning && d.message.contains("TLS over TCP only")));
}

const ENDPOINTS: &str = "endpoints:
  - {name: app, namespace: prod, labels: {app: app}, ips: [10.0.1.10, 'fd00::10'],
     ports: [{name: https, port: 8443}, {name: quic, port: 8443, protocol: UDP}]}
  - {name: web, namespace: prod, labels: {app: web}, ips: [10.0.1.20]}
";

fn decide(
    policies: &str,
    direction: Direction,
    peer_ip: &str,
    port: u16,
    proto: Protocol,
) -> policy::Decision {
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let report = parse_str(policies, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let key = inventory.find("prod/app").unwrap().key.clone();
    let ip = peer_ip.parse().unwrap();
    let peer = PeerRef {
        identity: inventory.identity_of(ip),
        ip: Some(ip),
        names: &[],
    };
    resolved
        .endpoint(&key)
        .unwrap()
        .decide(&resolved.matcher, direction, &peer, port, proto)
}

fn names(d: &policy::Decision) -> Vec<String> {
    match &d.l7 {
        L7Decision::Tls(names) => names.iter().map(|n| n.to_string()).collect(),
        other => panic!("expected serverNames, got {other:?}"),
    }
}

const STRIPE: &str = "endpointSelector: {matchLabels: {app: app}}\negress:\n- toCIDR: [203.0.113.0/24, '2001:db8::/32']\n  toPorts: [{ports: [{port: '443'}], serverNames: [api.stripe.com, API.Example.com]}]";

#[test]
fn a_server_names_rule_allows_tcp_through_the_proxy_both_families() {
    let p = cnp("stripe", STRIPE);
    for ip in ["203.0.113.9", "2001:db8::9"] {
        let d = decide(&p, Direction::Egress, ip, 443, Protocol::Tcp);
        assert_eq!(d.verdict, Verdict::Allowed, "{ip}");
        assert_eq!(names(&d), ["api.example.com", "api.stripe.com"]);
        // `protocol` absent is ANY; the names only make sense for TCP: UDP
        // and SCTP on the port are not allowed by this rule.
        for proto in [Protocol::Udp, Protocol::Sctp] {
            assert_eq!(
                decide(&p, Direction::Egress, ip, 443, proto).verdict,
                Verdict::Denied,
                "{ip} {proto}"
            );
        }
        assert_eq!(
            decide(&p, Direction::Egress, ip, 80, Protocol::Tcp).verdict,
            Verdict::Denied
        );
    }
}

#[test]
fn names_of_rules_covering_one_flow_add_up_and_a_plain_allow_wins() {
    let two = cnp("stripe", STRIPE)
        + &cnp(
            "cdn",
            "endpointSelector: {matchLabels: {app: app}}\negress:\n- toEntities: [world]\n  toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: ['*.cdn.test']}]",
        );
    let d = decide(&two, Direction::Egress, "203.0.113.9", 443, Protocol::Tcp);
    assert_eq!(
        names(&d),
        ["api.example.com", "api.stripe.com", "*.cdn.test"]
    );
    // A rule without serverNames for the same flow allows it unrestricted
    // (Cilium: the proxy allows a connection some rule allows without SNI).
    let plain = two
        + &cnp(
            "plain",
            "endpointSelector: {matchLabels: {app: app}}\negress:\n- toCIDR: [203.0.113.9/32]\n  toPorts: [{ports: [{port: '443', protocol: TCP}]}]",
        );
    let d = decide(&plain, Direction::Egress, "203.0.113.9", 443, Protocol::Tcp);
    assert_eq!((d.verdict, d.l7), (Verdict::Allowed, L7Decision::None));
}

/// HTTP rules and `serverNames` from different rules on one flow: the
/// first covering rule's kind is used (policy-semantics §5; policies in
/// order of kind, namespace, name), and a later rule of the other kind does
/// not replace it.
#[test]
fn http_rules_and_server_names_on_one_flow_keep_the_first_rules_kind() {
    let http = cnp(
        "a-http",
        "endpointSelector: {matchLabels: {app: app}}\negress:\n- toEntities: [world]\n  toPorts: [{ports: [{port: '443', protocol: TCP}], rules: {http: [{method: GET}]}}]",
    );
    let tls = cnp(
        "b-tls",
        "endpointSelector: {matchLabels: {app: app}}\negress:\n- toEntities: [world]\n  toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [api.test]}]",
    );
    let d = decide(
        &(http + &tls),
        Direction::Egress,
        "203.0.113.9",
        443,
        Protocol::Tcp,
    );
    assert_eq!(d.verdict, Verdict::Allowed);
    assert!(
        matches!(&d.l7, L7Decision::Http(rules) if rules.len() == 1),
        "{:?}",
        d.l7
    );
    assert_eq!(d.rule.unwrap().to_string(), "prod/a-http spec.egress[0]");
}

#[test]
fn ingress_server_names_apply_to_the_pods_own_port() {
    let p = cnp(
        "ing",
        "endpointSelector: {matchLabels: {app: app}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]\n  toPorts: [{ports: [{port: '8443', protocol: TCP}], serverNames: [app.prod.test]}]",
    );
    let d = decide(&p, Direction::Ingress, "10.0.1.20", 8443, Protocol::Tcp);
    assert_eq!(names(&d), ["app.prod.test"]);
    let other = decide(&p, Direction::Ingress, "198.51.100.1", 8443, Protocol::Tcp);
    assert_eq!(other.verdict, Verdict::Denied);
    assert_eq!(other.l7, L7Decision::None);
}

/// A named port without a protocol under `serverNames` names TCP only: the
/// pod's UDP port of that name (QUIC beside HTTPS, say) is not opened by a
/// rule whose names only TLS over TCP can carry.
#[test]
fn named_ports_under_server_names_open_only_their_tcp_port() {
    let p = cnp(
        "ing",
        "endpointSelector: {matchLabels: {app: app}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]\n  toPorts: [{ports: [{port: https}, {port: quic}], serverNames: [app.prod.test]}]",
    );
    let tcp = decide(&p, Direction::Ingress, "10.0.1.20", 8443, Protocol::Tcp);
    assert_eq!(names(&tcp), ["app.prod.test"]);
    let udp = decide(&p, Direction::Ingress, "10.0.1.20", 8443, Protocol::Udp);
    assert_eq!((udp.verdict, udp.l7), (Verdict::Denied, L7Decision::None));
    // Control: the same ports without serverNames open the UDP port too.
    let plain = cnp(
        "ing",
        "endpointSelector: {matchLabels: {app: app}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]\n  toPorts: [{ports: [{port: https}, {port: quic}]}]",
    );
    let udp = decide(&plain, Direction::Ingress, "10.0.1.20", 8443, Protocol::Udp);
    assert_eq!(udp.verdict, Verdict::Allowed);
}
