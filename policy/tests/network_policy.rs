//! Kubernetes NetworkPolicies as their users rely on them: which directions
//! a policy isolates (from `policyTypes`, or from the rules it has), and
//! ports as numbers or names. (Mutation testing found these unpinned in the
//! policy crate's own tests; see TESTING.md.)

use policy::{Direction, Inventory, PeerRef, PolicySet, Protocol, Reason, ResolveOptions};

const ENDPOINTS: &str = "endpoints:
  - {name: a, namespace: prod, labels: {app: a}, ips: [10.0.1.1], ports: [{name: metrics, port: 9100}]}
  - {name: b, namespace: prod, labels: {app: b}, ips: [10.0.1.2], ports: [{name: metrics, port: 9100}]}
";

fn np(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: prod}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n{spec}\n"
    )
}

/// (ingress enforced, egress enforced) for pod `a`.
fn isolation(policy: &str) -> (bool, bool) {
    let report = policy::parse_str(policy, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let a = resolved
        .endpoint(&inventory.find("prod/a").unwrap().key)
        .unwrap();
    (a.ingress.enforced, a.egress.enforced)
}

#[test]
fn policy_types_decide_which_directions_are_isolated() {
    assert_eq!(
        isolation(&np("  policyTypes: [Ingress, Egress]")),
        (true, true),
        "both types and no rules: nothing in, nothing out"
    );
    assert_eq!(isolation(&np("  policyTypes: [Ingress]")), (true, false));
    assert_eq!(
        isolation(&np("  policyTypes: [Egress]")),
        (false, true),
        "egress only: ingress stays open"
    );
}

#[test]
fn without_policy_types_ingress_is_isolated_and_egress_only_with_egress_rules() {
    assert_eq!(
        isolation(&np("  ingress: [{from: [{podSelector: {}}]}]")),
        (true, false),
        "ingress rules alone leave egress open"
    );
    assert_eq!(
        isolation(&np("  egress: [{to: [{podSelector: {}}]}]")),
        (true, true),
        "as Kubernetes defaults policyTypes: Ingress always, Egress with egress rules"
    );
    assert_eq!(
        isolation(&np(
            "  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {}}]}]"
        )),
        (false, true)
    );
}

#[test]
fn ports_are_numbers_or_names() {
    let policy = np(
        "  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {}}]\n    ports: [{port: 5432}, {port: '8080', protocol: TCP}, {port: metrics}, {protocol: UDP}]",
    );
    let report = policy::parse_str(&policy, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let a = resolved
        .endpoint(&inventory.find("prod/a").unwrap().key)
        .unwrap();
    let b = inventory.find("prod/b").unwrap();
    let peer = PeerRef {
        identity: b.identity,
        ip: Some(b.ips[0]),
        names: &[],
    };
    let reason = |port, proto| {
        a.decide(&resolved.matcher, Direction::Egress, &peer, port, proto)
            .reason
    };
    assert_eq!(
        reason(5432, Protocol::Tcp),
        Reason::AllowRule,
        "a number, TCP by default"
    );
    assert_eq!(
        reason(8080, Protocol::Tcp),
        Reason::AllowRule,
        "a quoted number"
    );
    assert_eq!(reason(9100, Protocol::Tcp), Reason::AllowRule, "a name");
    assert_eq!(
        reason(40000, Protocol::Udp),
        Reason::AllowRule,
        "no port: every UDP port"
    );
    assert_eq!(reason(5432, Protocol::Udp), Reason::AllowRule);
    assert_eq!(reason(5433, Protocol::Tcp), Reason::DefaultDeny);
    assert_eq!(reason(80, Protocol::Tcp), Reason::DefaultDeny);
}

#[test]
fn a_network_policy_without_a_name_is_an_error() {
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: '  ', namespace: prod}\n\
        spec: {podSelector: {}, policyTypes: [Ingress]}\n";
    let report = policy::parse_str(policy, None);
    assert!(report.policies.is_empty());
    let errors: Vec<String> = report.errors().map(|d| d.to_string()).collect();
    assert!(
        errors.iter().any(|e| e.contains("metadata.name")),
        "{errors:?}"
    );
}

#[test]
fn an_invalid_network_policy_object_is_not_applied() {
    // Kubernetes mode checks each watched object on its own.
    use policy::model::NetworkPolicyObject;
    use policy::netpol::validate_network_policy;
    let parse = |yaml: &str| -> NetworkPolicyObject { serde_yaml::from_str(yaml).unwrap() };
    let (ok, diagnostics) = validate_network_policy(
        &parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n"),
        "doc 1",
    );
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(ok.expect("valid").name.name, "np");
    let (bad, diagnostics) = validate_network_policy(
        &parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec: {podSelector: {}, policyTypes: [Sideways]}\n"),
        "doc 1",
    );
    assert!(bad.is_none(), "not applied");
    assert!(
        diagnostics
            .iter()
            .any(|d| d.to_string().contains("spec.policyTypes[0]")),
        "{diagnostics:?}"
    );
}

#[test]
fn peers_select_pods_of_the_policys_namespace_unless_a_namespace_selector_says_otherwise() {
    let endpoints = "namespaces:
  - {name: prod, labels: {team: shop}}
  - {name: ops, labels: {team: ops}}
endpoints:
  - {name: a, namespace: prod, labels: {app: a}, ips: [10.0.1.1]}
  - {name: b, namespace: prod, labels: {app: b}, ips: [10.0.1.2]}
  - {name: b, namespace: ops, labels: {app: b}, ips: [10.0.2.2]}
  - {name: m, namespace: ops, labels: {app: m}, ips: [10.0.2.3]}
";
    let policy = np(
        "  policyTypes: [Ingress]\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: b}}}]\n    ports: [{port: 80}]\n  \
         - from: [{namespaceSelector: {matchLabels: {team: ops}}}]\n    ports: [{port: 81}]\n  \
         - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: m}}}]\n    ports: [{port: 82}]",
    );
    let report = policy::parse_str(&policy, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let inventory = Inventory::parse(endpoints, "endpoints.yaml").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let a = resolved
        .endpoint(&inventory.find("prod/a").unwrap().key)
        .unwrap();
    let allowed = |from: &str, port: u16| {
        let e = inventory.find(from).unwrap();
        let peer = PeerRef {
            identity: e.identity,
            ip: Some(e.ips[0]),
            names: &[],
        };
        a.decide(
            &resolved.matcher,
            Direction::Ingress,
            &peer,
            port,
            Protocol::Tcp,
        )
        .reason
            == Reason::AllowRule
    };
    assert!(allowed("prod/b", 80), "podSelector alone: this namespace");
    assert!(
        !allowed("ops/b", 80),
        "not the same labels in another namespace"
    );
    assert!(
        allowed("ops/b", 81) && allowed("ops/m", 81),
        "every pod of ops"
    );
    assert!(!allowed("prod/b", 81), "prod is not team=ops");
    assert!(allowed("ops/m", 82), "app=m in any namespace");
    assert!(!allowed("ops/b", 82) && !allowed("prod/b", 82));
    // A peer that names nothing is a mistake, not "everyone".
    let errors: Vec<String> = policy::parse_str(&np("  ingress:\n  - from: [{}]"), None)
        .errors()
        .map(|d| d.to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("spec.ingress[0].from[0]: is empty")),
        "{errors:?}"
    );
}
