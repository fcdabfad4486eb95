//! Every kind of invalid policy the issue lists is rejected with a message
//! that names the file, the policy, the field and what would be valid, and a
//! file with one bad policy yields no policy at all.

use std::path::Path;

use policy::{parse_str, Severity};
use rstest::rstest;

/// A valid namespaced policy whose `spec` body is `spec` (indented by 2).
fn cnp(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p1\n  namespace: prod\nspec:\n{body}")
}

fn errors(yaml: &str) -> Vec<String> {
    let report = parse_str(yaml, Some(Path::new("pols/x.yaml")));
    if report.has_errors() {
        assert!(
            report.policies.is_empty(),
            "an invalid file must yield no policies"
        );
    }
    report.errors().map(|d| d.to_string()).collect()
}

#[rstest]
#[case::unknown_field(
    cnp("endpointSelector: {}\negress:\n- toFQDN: [{matchName: a.io}]"),
    "spec.egress[0].toFQDN",
    "expected one of"
)]
#[case::unknown_top_field(
    cnp("endpointSelector: {}\negres: []"),
    "spec.egres",
    "unknown field `egres`"
)]
#[case::missing_selector(cnp("egress: []"), "spec.endpointSelector", "endpointSelector: {}")]
#[case::bad_cidr(
    cnp("endpointSelector: {}\negress:\n- toCIDR: [10.0.0.0/33]"),
    "spec.egress[0].toCIDR[0]",
    "is not a CIDR"
)]
#[case::port_zero(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: '0'}]}]"),
    "spec.egress[0].toPorts[0].ports[0].port",
    "outside 1-65535"
)]
#[case::port_high(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 65536}]}]"),
    "spec.egress[0].toPorts[0].ports[0].port",
    "outside 1-65535"
)]
#[case::end_port_low(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80, endPort: 79}]}]"),
    "spec.egress[0].toPorts[0].ports[0].endPort",
    "endPort must be >= port"
)]
#[case::named_port(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: http}]}]"),
    "spec.egress[0].toPorts[0].ports[0].port",
    "named ports are not supported"
)]
#[case::bad_protocol(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80, protocol: tcp}]}]"),
    "spec.egress[0].toPorts[0].ports[0].protocol",
    "expected one of `TCP`, `UDP`, `SCTP`, `ANY`"
)]
#[case::bad_entity(
    cnp("endpointSelector: {}\ningress:\n- fromEntities: [wrld]"),
    "spec.ingress[0].fromEntities[0]",
    "expected one of"
)]
#[case::name_and_pattern(
    cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchName: a.io, matchPattern: '*.a.io'}]"),
    "spec.egress[0].toFQDNs[0]",
    "both matchName and matchPattern"
)]
#[case::bad_pattern_char(
    cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchPattern: 'a/b.io'}]"),
    "spec.egress[0].toFQDNs[0].matchPattern",
    "invalid character '/'"
)]
#[case::long_pattern(cnp(&format!("endpointSelector: {{}}\negress:\n- toFQDNs: [{{matchPattern: '{}.io'}}]", "a".repeat(300))),
    "spec.egress[0].toFQDNs[0].matchPattern", "at most 255")]
#[case::double_star_inside(
    cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchPattern: 'a.**.io'}]"),
    "spec.egress[0].toFQDNs[0].matchPattern",
    "leading label"
)]
#[case::fqdn_with_l3(
    cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchName: a.io}]\n  toEntities: [world]"),
    "spec.egress[0].toFQDNs",
    "cannot be combined"
)]
#[case::fqdn_in_deny(
    cnp("endpointSelector: {}\negressDeny:\n- toFQDNs: [{matchName: a.io}]"),
    "spec.egressDeny[0].toFQDNs",
    "not allowed in egressDeny"
)]
#[case::dns_and_http(cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 53}], rules: {dns: [{matchName: a.io}], http: [{}]}}]"),
    "spec.egress[0].toPorts[0].rules", "both dns and http")]
#[case::bad_method_regex(cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{method: 'GET('}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].method", "not a valid regular expression")]
#[case::bad_path_regex(cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{path: '/a[' }]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].path", "not a valid regular expression")]
#[case::bad_operator(
    cnp("endpointSelector: {matchExpressions: [{key: a, operator: Maybe}]}"),
    "spec.endpointSelector.matchExpressions[0].operator",
    "expected one of `In`, `NotIn`, `Exists`, `DoesNotExist`"
)]
#[case::in_without_values(
    cnp("endpointSelector: {matchExpressions: [{key: a, operator: In}]}"),
    "spec.endpointSelector.matchExpressions[0].values",
    "must not be empty"
)]
#[case::except_outside(
    cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/8]}]"),
    "spec.egress[0].toCIDRSet[0].except[0]",
    "not inside 10.0.0.0/8"
)]
#[case::l7_in_deny(cnp("endpointSelector: {}\ningressDeny:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{}]}}]"),
    "spec.ingressDeny[0].toPorts[0].rules", "not allowed in deny rules")]
#[case::missing_name(
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: prod}\nspec: {endpointSelector: {}}\n".to_string(),
    "metadata.name", "is missing")]
#[case::no_spec(
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p1}\n".to_string(),
    "spec", "`spec` or a non-empty `specs`")]
#[case::wrong_kind(
    "apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {name: p1}\nspec: {endpointSelector: {}}\n".to_string(),
    "kind", "expected CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy")]
#[case::invalid_yaml("apiVersion: cilium.io/v2\nkind: [\n".to_string(), "", "invalid YAML")]
fn invalid_policies_are_explained(#[case] yaml: String, #[case] field: &str, #[case] hint: &str) {
    let errs = errors(&yaml);
    assert!(!errs.is_empty(), "expected an error for:\n{yaml}");
    let found = errs.iter().any(|e| {
        e.starts_with("error: pols/x.yaml: policy ")
            && e.contains(&format!(": {field}: "))
            && e.contains(hint)
    });
    let field_ok = field.is_empty() && errs.iter().any(|e| e.contains(hint));
    assert!(
        found || field_ok,
        "expected file, policy, field {field:?} and {hint:?} in:\n{}",
        errs.join("\n")
    );
}

#[test]
fn errors_name_the_policy_and_each_document_is_checked() {
    let good = cnp("endpointSelector: {}\negress: []");
    let bad = cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 0}]}]")
        .replace("name: p1", "name: p2");
    let report = parse_str(&format!("{good}---\n{bad}"), Some(Path::new("f.yaml")));
    assert!(
        report.policies.is_empty(),
        "one bad policy rejects the whole file"
    );
    let errs: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("policy p2"), "{}", errs[0]);
}

#[test]
fn duplicate_names_in_one_file_are_an_error() {
    let p = cnp("endpointSelector: {}");
    let errs = errors(&format!("{p}---\n{p}"));
    assert!(errs.iter().any(|e| e.contains("defined twice")), "{errs:?}");
}

#[test]
fn spec_and_specs_and_empty_documents_load() {
    let yaml = "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\n\
        specs:\n- endpointSelector: {}\n  egress: []\n- endpointSelector: {matchLabels: {app: x}}\n  ingress: []\n---\n";
    let report = parse_str(yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    assert_eq!(report.policies.len(), 1);
    assert_eq!(report.policies[0].specs.len(), 2);
    assert_eq!(report.policies[0].specs[1].field, "specs[1]");
}

#[test]
fn kubectl_output_with_bookkeeping_fields_loads() {
    let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: prod\n  \
        uid: 1234\n  resourceVersion: '5'\n  generation: 1\n  creationTimestamp: '2026-01-01T00:00:00Z'\n  \
        annotations: {a: b}\nspec:\n  endpointSelector: {}\nstatus: {conditions: []}\n";
    let report = parse_str(yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
}

#[test]
fn fqdns_without_dns_rule_warns_but_is_valid() {
    let report = parse_str(
        &cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchName: a.io}]"),
        None,
    );
    assert!(!report.has_errors());
    assert_eq!(report.policies.len(), 1);
    let warnings: Vec<_> = report.warnings().collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert!(
        warnings[0].message.contains("no IP will ever be learned"),
        "{}",
        warnings[0]
    );
}

#[test]
fn hostile_input_does_not_panic() {
    for yaml in [
        "",
        "---\n---\n",
        "[]",
        "42",
        "apiVersion: 1\nkind: {}\n",
        &"- ".repeat(1000),
        &format!("{}x", "[".repeat(200)),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: -1, endPort: 99999999999}]}]}]}",
        "\u{0}\u{1}\u{2}",
    ] {
        let _ = parse_str(yaml, None);
    }
}

#[test]
fn a_kubectl_list_is_checked_item_by_item() {
    let list = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: List\nitems:\n\
             - apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {{name: a, namespace: prod}}\n  spec: {{endpointSelector: {{}}}}\n\
             - apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {{name: b, namespace: prod}}\n  spec: {{endpointSelector: {{}}}}\n{extra}"
        )
    };
    let report = parse_str(&list(""), None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    assert_eq!(report.policies.len(), 2);
    let errs = errors(&list("  bogus: 1\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("policy b: bogus: unknown field `bogus`")),
        "{errs:?}"
    );
}
