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
#[case::missing_selector(
    cnp("egress: [{toEntities: [world]}]"),
    "spec.endpointSelector",
    "endpointSelector: {}"
)]
#[case::bad_cidr(
    cnp("endpointSelector: {}\negress:\n- toCIDR: [10.0.0.0/33]"),
    "spec.egress[0].toCIDR[0]",
    "is not a CIDR"
)]
#[case::port_high(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 65536}]}]"),
    "spec.egress[0].toPorts[0].ports[0].port",
    "outside 0-65535"
)]
#[case::end_port_low(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80, endPort: 79}]}]"),
    "spec.egress[0].toPorts[0].ports[0].endPort",
    "endPort must be >= port"
)]
#[case::bad_port_name(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 'http_alt'}]}]"),
    "spec.egress[0].toPorts[0].ports[0].port",
    "nor a port name"
)]
#[case::bad_protocol(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80, protocol: tcp}]}]"),
    "spec.egress[0].toPorts[0].ports[0].protocol",
    "expected one of `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPV6`, `ANY`"
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
    "spec.egress[0]",
    "combines toEntities and toFQDNs"
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
#[case::exists_with_values(
    cnp("endpointSelector: {matchExpressions: [{key: app, operator: Exists, values: [web]}]}\negress: [{toEntities: [world]}]"),
    "spec.endpointSelector.matchExpressions[0].values",
    "must be empty for operator Exists"
)]
#[case::empty_cidr_group_ref(
    cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidrGroupRef: ''}]"),
    "spec.egress[0].toCIDRSet[0].cidrGroupRef",
    "is empty; name a CiliumCIDRGroup"
)]
#[case::named_port_with_end_port(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: http, endPort: 90}]}]"),
    "spec.egress[0].toPorts[0].ports[0].endPort",
    "cannot be used with a named port"
)]
#[case::end_port_high(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80, endPort: 65536}]}]"),
    "spec.egress[0].toPorts[0].ports[0].endPort",
    "65536 is outside 1-65535"
)]
#[case::header_with_a_space(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{headers: ['X Bad: 1']}]}}]"),
    "spec.egress[0].toPorts[0].rules.http[0].headers[0]",
    "is not a header"
)]
#[case::header_without_a_name(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{headers: [': 1']}]}}]"),
    "spec.egress[0].toPorts[0].rules.http[0].headers[0]",
    "is not a header"
)]
#[case::header_match_name_with_a_colon(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{headerMatches: [{name: 'X-A:b', value: c}]}]}}]"),
    "spec.egress[0].toPorts[0].rules.http[0].headerMatches[0].name",
    "is not a header name"
)]
#[case::header_match_without_a_name(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{headerMatches: [{name: '', value: c}]}]}}]"),
    "spec.egress[0].toPorts[0].rules.http[0].headerMatches[0].name",
    "is not a header name"
)]
#[case::blank_name(
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: '  ', namespace: prod}\nspec: {endpointSelector: {}}\n".to_string(),
    "metadata.name", "is missing")]
#[case::no_spec(
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p1}\n".to_string(),
    "spec", "`spec` or a non-empty `specs`")]
#[case::wrong_kind(
    "apiVersion: cilium.io/v2\nkind: CiliumPolicy\nmetadata: {name: p1}\nspec: {endpointSelector: {}, egress: [{}]}\n".to_string(),
    "kind", "expected CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy")]
// The corners below follow Cilium's validation, pkg/policy/api/rule_validation.go
// (Rule.Sanitize, IngressCommonRule/EgressCommonRule.sanitize, PortRule.sanitize,
// PortProtocol.sanitize, CIDRRule.sanitize).
#[case::no_rules(cnp("endpointSelector: {}"), "spec", "has no rules")]
#[case::only_empty_lists(
    cnp("endpointSelector: {}\ningress: []\negress: []"),
    "spec",
    "has no rules"
)]
#[case::only_default_deny(
    cnp("endpointSelector: {}\nenableDefaultDeny: {ingress: true, egress: true}"),
    "spec",
    "enableDefaultDeny alone enforces nothing"
)]
#[case::dns_on_ingress(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 53, protocol: UDP}], rules: {dns: [{matchName: a.io}]}}]"),
    "spec.ingress[0].toPorts[0].rules.dns",
    "DNS rules are not allowed on ingress"
)]
#[case::http_on_udp(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: UDP}], rules: {http: [{}]}}]"),
    "spec.ingress[0].toPorts[0].rules",
    "HTTP rules apply to TCP only (not Udp"
)]
#[case::http_on_any(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80}], rules: {http: [{}]}}]"),
    "spec.ingress[0].toPorts[0].rules",
    "HTTP rules apply to TCP only (not Any"
)]
#[case::two_peer_kinds(
    cnp("endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  fromCIDR: [10.0.0.0/8]"),
    "spec.ingress[0]",
    "combines fromEndpoints and fromCIDR"
)]
#[case::bare_ip_in_cidr_set(
    cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 192.0.2.1}]"),
    "spec.egress[0].toCIDRSet[0].cidr",
    "is an address, not a prefix"
)]
#[case::l7_on_port_zero(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 0, protocol: TCP}], rules: {http: [{}]}}]"),
    "spec.egress[0].toPorts[0].rules",
    "L7 rules cannot be used when a port is 0"
)]
#[case::dns_port_range(
    cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 53, endPort: 54, protocol: UDP}], rules: {dns: [{matchName: a.io}]}}]"),
    "spec.egress[0].toPorts[0].rules",
    "DNS rules do not support port ranges"
)]
#[case::cidr_and_group(
    cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, cidrGroupRef: g}]"),
    "spec.egress[0].toCIDRSet[0]",
    "exactly one of cidr, cidrGroupRef and cidrGroupSelector"
)]
#[case::header_secret(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: x, secret: {name: s}}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret",
    "`headerMatches.secret` is a Cilium feature that Tollgate does not support"
)]
#[case::header_action_unknown(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: x, value: a, mismatch: DROP}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch",
    "DROP is not a header action; expected LOG, ADD, DELETE or REPLACE"
)]
#[case::header_action_lowercase(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: x, mismatch: add}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch",
    "add is not a header action"
)]
#[case::header_action_value_with_newline(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: x, value: \"a\\r\\nEvil: 1\", mismatch: ADD}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].value",
    "is not a header value"
)]
#[case::header_action_name_not_a_token(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: \"x(y)\", value: a, mismatch: REPLACE}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name",
    "is not a header name"
)]
// The proxy forwards bodies as the client framed them: an action on a
// framing header would let the destination read the rest as a request.
#[case::header_action_on_content_length(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: Content-Length, value: \"0\", mismatch: REPLACE}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name",
    "\"Content-Length\" cannot be changed by a header action (REPLACE)"
)]
#[case::header_action_on_transfer_encoding(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: transfer-encoding, value: chunked, mismatch: ADD}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name",
    "cannot be changed by a header action (ADD)"
)]
#[case::header_action_on_host(
    cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80, protocol: TCP}], rules: {http: [{headerMatches: [{name: Host, value: other, mismatch: DELETE}]}]}}]"),
    "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].name",
    "cannot be changed by a header action (DELETE)"
)]
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
    let good = cnp("endpointSelector: {}\negress: [{toEntities: [world]}]");
    let bad = cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: -1}]}]")
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
    let p = cnp("endpointSelector: {}\negress: [{toEntities: [world]}]");
    let errs = errors(&format!("{p}---\n{p}"));
    assert!(errs.iter().any(|e| e.contains("defined twice")), "{errs:?}");
}

#[test]
fn spec_and_specs_and_empty_documents_load() {
    let yaml = "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\n\
        specs:\n- endpointSelector: {}\n  egress: [{}]\n- endpointSelector: {matchLabels: {app: x}}\n  ingress: [{}]\n---\n";
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
        annotations: {a: b}\nspec:\n  endpointSelector: {}\n  egress: [{}]\nstatus: {conditions: []}\n";
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
             - apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {{name: a, namespace: prod}}\n  spec: {{endpointSelector: {{}}, egress: [{{}}]}}\n\
             - apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {{name: b, namespace: prod}}\n  spec: {{endpointSelector: {{}}, egress: [{{}}]}}\n{extra}"
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

#[test]
fn every_unsupported_cilium_feature_of_a_document_is_named() {
    let yaml = cnp(
        "endpointSelector: {}\n\
         ingress:\n\
         - fromEntities: [world]\n  authentication: {mode: required}\n\
         egress:\n\
         - toGroups: [{aws: {securityGroupsIds: [sg-1]}}]\n\
         - toPorts: [{ports: [{port: 443, protocol: TCP}], originatingTLS: {secret: {name: o}}, terminatingTLS: {secret: {name: s}}}]\n\
         - toPorts: [{ports: [{port: 9092, protocol: TCP}], rules: {kafka: [{topic: t}]}}]",
    )
    .replace("spec:\n", "spec:\n  nodeSelector: {}\n");
    let errs = errors(&yaml);
    for (field, name) in [
        ("spec.nodeSelector", "nodeSelector"),
        ("spec.ingress[0].authentication", "authentication"),
        ("spec.egress[0].toGroups", "toGroups"),
        ("spec.egress[1].toPorts[0].originatingTLS", "originatingTLS"),
        ("spec.egress[1].toPorts[0].terminatingTLS", "terminatingTLS"),
        ("spec.egress[2].toPorts[0].rules.kafka", "kafka"),
    ] {
        let want = format!(
            "policy p1: {field}: `{name}` is a Cilium feature that Tollgate does not support"
        );
        assert!(
            errs.iter().any(|e| e.contains(&want)),
            "missing {want:?} in:\n{}",
            errs.join("\n")
        );
    }
}

/// Cilium's pkg/policy/utils/parserules.go: one policy entry per rule, each
/// carrying the spec's default-deny flag, so a direction without rules is
/// not put in default deny, whatever `enableDefaultDeny` says.
#[test]
fn a_direction_without_rules_is_not_enforced() {
    for spec in [
        "endpointSelector: {}\ningress: []\negress: [{toEntities: [world]}]",
        "endpointSelector: {}\nenableDefaultDeny: {ingress: true}\negress: [{toEntities: [world]}]",
    ] {
        let report = parse_str(&cnp(spec), None);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        let s = &report.policies[0].specs[0];
        assert!(
            !s.default_deny_ingress,
            "ingress must not be enforced by:\n{spec}"
        );
        assert!(s.default_deny_egress, "egress is enforced by:\n{spec}");
    }
}

/// Cilium's PortRule.sanitize only refuses port ranges for DNS rules: HTTP
/// rules on a range are fine, and so are named ports and port 0.
#[test]
fn http_on_port_ranges_named_ports_and_port_zero_are_valid() {
    let report = parse_str(
        &cnp("endpointSelector: {}\n\
              ingress:\n\
              - toPorts: [{ports: [{port: 8000, endPort: 8080, protocol: TCP}], rules: {http: [{method: GET}]}}]\n\
              - toPorts: [{ports: [{port: HTTP-Alt, protocol: TCP}, {port: 0, protocol: UDP}]}]"),
        None,
    );
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let rules = report.policies[0].specs[0].ingress.as_ref().unwrap();
    let ports = rules[1].ports.as_ref().unwrap();
    assert_eq!(ports[0].named[0].name, "http-alt", "names are lowercased");
    assert_eq!((ports[0].ports[0].start, ports[0].ports[0].end), (0, 65535));
}

#[test]
fn network_policies_and_cidr_groups_load_next_to_cnps() {
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\n\
        spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n    ports: [{port: 53, protocol: UDP}, {port: dns}]\n\
        ---\napiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: g}\nspec: {externalCIDRs: [192.0.2.0/24]}\n";
    let report = parse_str(yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    assert_eq!(report.policies.len(), 1);
    assert_eq!(report.cidr_groups.len(), 1);
    let spec = &report.policies[0].specs[0];
    assert!(spec.default_deny_egress);
    assert!(!spec.default_deny_ingress, "policyTypes: [Egress] only");
    let errs = errors(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n\
         spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.ingress[0].from[0]: has ipBlock together with")),
        "{errs:?}"
    );
}

/// `toServices` (Cilium's Service type, pkg/policy/api/service.go): exactly
/// one of `k8sService` and `k8sServiceSelector`, a name when by name, and it
/// is a peer kind of its own that one rule does not combine with another
/// (pkg/policy/api/rule_validation.go, l3Members).
#[test]
fn to_services_is_checked_like_cilium_checks_it() {
    let ok = cnp(
        "endpointSelector: {}\negress:\n\
         - toServices: [{k8sService: {serviceName: db, namespace: prod}}, {k8sServiceSelector: {selector: {matchLabels: {tier: db}}}}]\n  toPorts: [{ports: [{port: '5432', protocol: TCP}]}]",
    );
    let report = parse_str(&ok, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    for (spec, want) in [
        (
            "- toServices: [{}]",
            "spec.egress[0].toServices[0]: needs exactly one of k8sService and k8sServiceSelector",
        ),
        (
            "- toServices: [{k8sService: {namespace: prod}}]",
            "spec.egress[0].toServices[0].k8sService.serviceName: is missing",
        ),
        (
            "- toServices: [{k8sService: {serviceName: db}}]\n  toEndpoints: [{}]",
            "combines toEndpoints and toServices",
        ),
        (
            "- toServices: [{k8sService: {serviceName: db, bogus: 1}}]",
            "unknown field `bogus`",
        ),
    ] {
        let errs = errors(&cnp(&format!("endpointSelector: {{}}\negress:\n{spec}")));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "missing {want:?} in:\n{}",
            errs.join("\n")
        );
    }
}

/// `icmps` (Cilium: pkg/policy/api/icmp.go): types by number or by
/// Cilium's CamelCase name for the field's family (IPv4 by default), at most
/// 40 fields, and never with toPorts in the same rule
/// (pkg/policy/api/rule_validation.go, errUnsupportedICMPWithToPorts).
#[test]
fn icmps_are_checked_like_cilium_checks_them() {
    let ok = cnp(
        "endpointSelector: {}\negress:\n\
         - toEntities: [world]\n  icmps: [{fields: [{type: 8}, {type: EchoRequest}, {family: IPv6, type: PacketTooBig}, {type: '11'}]}]",
    );
    let report = parse_str(&ok, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    for (spec, want) in [
        (
            "- icmps: [{fields: [{type: PacketTooBig}]}]",
            "spec.egress[0].icmps[0].fields[0].type: \"PacketTooBig\" is not an ICMP type of IPv4",
        ),
        (
            "- icmps: [{fields: [{type: 256}]}]",
            "spec.egress[0].icmps[0].fields[0].type: 256 is not an ICMP type of IPv4",
        ),
        (
            "- icmps: [{fields: [{family: IPv5, type: 8}]}]",
            "spec.egress[0].icmps[0].fields[0].family: \"IPv5\" is not a family",
        ),
        (
            "- icmps: [{fields: [{type: 8}]}]\n  toPorts: [{ports: [{port: '80'}]}]",
            "spec.egress[0].icmps: cannot be combined with toPorts",
        ),
    ] {
        let errs = errors(&cnp(&format!("endpointSelector: {{}}\negress:\n{spec}")));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "missing {want:?} in:\n{}",
            errs.join("\n")
        );
    }
    let many: Vec<String> = (0..41).map(|t| format!("{{type: {t}}}")).collect();
    let errs = errors(&cnp(&format!(
        "endpointSelector: {{}}\ningress:\n- icmps: [{{fields: [{}]}}]",
        many.join(", ")
    )));
    assert!(
        errs.iter()
            .any(|e| e.contains("has 41 entries; at most 40")),
        "{errs:?}"
    );
}

/// `headerMatches` without `mismatch` is a requirement; with one it is an
/// action (Cilium's `pkg/envoy/policy/envoy_l7_rules_translator.go` splits
/// them the same way), shown by `policy explain` with its action.
#[test]
fn header_matches_with_a_mismatch_action_become_actions_not_requirements() {
    let yaml = cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: 80, protocol: TCP}]\n    rules:\n      http:\n      - headerMatches:\n        - {name: X-Token, value: s3}\n        - {name: X-Env, value: prod, mismatch: REPLACE}\n        - {name: X-Trace, mismatch: LOG}");
    let report = parse_str(&yaml, Some(Path::new("pols/x.yaml")));
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let rule = &report.policies[0].specs[0].ingress.as_ref().unwrap()[0];
    let policy::rules::L7::Http(http) = &rule.ports.as_ref().unwrap()[0].l7 else {
        panic!("http rules")
    };
    let h = &http[0];
    assert_eq!(
        h.headers,
        [policy::rules::HeaderMatch {
            name: "X-Token".into(),
            value: Some("s3".into())
        }]
    );
    assert_eq!(
        h.header_actions
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_deref(), a.on_mismatch))
            .collect::<Vec<_>>(),
        [
            (
                "X-Env",
                Some("prod"),
                policy::rules::MismatchAction::Replace
            ),
            ("X-Trace", None, policy::rules::MismatchAction::Log)
        ]
    );
    assert_eq!(
        h.to_string(),
        "header X-Token: s3 header X-Env: prod (else REPLACE) header X-Trace (else LOG)"
    );
}

/// Cilium's limit is inclusive: a rule may list exactly 40 ICMP fields.
#[test]
fn an_icmps_rule_with_forty_fields_is_accepted() {
    let forty: Vec<String> = (0..40).map(|t| format!("{{type: {t}}}")).collect();
    let errs = errors(&cnp(&format!(
        "endpointSelector: {{}}\ningress:\n- icmps: [{{fields: [{}]}}]",
        forty.join(", ")
    )));
    assert!(errs.is_empty(), "{errs:?}");
}

/// A policy for nodes (`nodeSelector`, no `endpointSelector`) is named as
/// the unsupported feature it is, and only that: its missing
/// `endpointSelector` is not a mistake to report as well.
#[test]
fn a_node_policy_is_reported_as_unsupported_and_only_that() {
    let yaml = cnp("nodeSelector: {}\negress: [{toEntities: [world]}]");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("spec.nodeSelector"), "{errs:?}");
}

/// The highest port closes a range.
#[test]
fn a_range_may_end_at_65535() {
    let yaml =
        cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: 80, endPort: 65535}]}]");
    assert!(errors(&yaml).is_empty(), "{:?}", errors(&yaml));
}

/// `endPort: 0` is no range (Cilium's default): fine with a named port.
#[test]
fn a_named_port_with_end_port_zero_is_valid() {
    let yaml =
        cnp("endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: http, endPort: 0}]}]");
    assert!(errors(&yaml).is_empty(), "{:?}", errors(&yaml));
}
