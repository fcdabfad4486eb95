//! `CiliumCIDRGroup`s as users rely on them: a group is checked on its own
//! (an invalid one is not applied), and a policy's reference — by name or by
//! label selector — means exactly the CIDRs of the groups it names, with the
//! rule's exceptions. (The golden tables in the root package cover the same
//! through the CLI; these run in the policy crate's own tests.)

use policy::cidrgroup::{expand, validate_cidr_group};
use policy::model::CidrGroupObject;
use policy::{
    Direction, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Severity, Verdict,
};

fn group(name: &str, labels: &str, cidrs: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumCIDRGroup\nmetadata: {{name: '{name}', labels: {{{labels}}}}}\n\
         spec: {{externalCIDRs: [{cidrs}]}}\n---\n"
    )
}

const POLICY: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: prod}\n\
    spec:\n  endpointSelector: {}\n  egress:\n    \
    - toCIDRSet: [{cidrGroupRef: partners, except: [198.51.100.128/25]}]\n      toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n    \
    - toCIDRSet: [{cidrGroupSelector: {matchLabels: {tier: backup}}}]\n      toPorts: [{ports: [{port: '22', protocol: TCP}]}]\n    \
    - toCIDRSet: [{cidrGroupRef: nobody}]\n      toPorts: [{ports: [{port: '25', protocol: TCP}]}]\n---\n";

const ENDPOINTS: &str = "endpoints:\n  - {name: app, namespace: prod, ips: [10.0.1.10]}\n";

/// `to:port` from prod/app, with the given groups expanded.
fn verdicts(groups: &str, flows: &[(&str, u16)]) -> Vec<Verdict> {
    let mut report = policy::parse_str(&format!("{POLICY}{groups}"), None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    expand(&mut report.policies, &report.cidr_groups);
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let ep = resolved
        .endpoint(&inventory.find("prod/app").unwrap().key)
        .unwrap();
    flows
        .iter()
        .map(|(to, port)| {
            let ip = to.parse().unwrap();
            let peer = PeerRef {
                identity: inventory.identity_of(ip),
                ip: Some(ip),
                names: &[],
            };
            ep.decide(
                &resolved.matcher,
                Direction::Egress,
                &peer,
                *port,
                Protocol::Tcp,
            )
            .verdict
        })
        .collect()
}

#[test]
fn a_reference_by_name_means_that_groups_cidrs_without_the_rules_exceptions() {
    use Verdict::*;
    let groups = group("partners", "", "198.51.100.0/24, '2001:db8::/32'")
        + &group("others", "", "203.0.113.0/24");
    let got = verdicts(
        &groups,
        &[
            ("198.51.100.7", 443),
            ("2001:db8::1", 443),
            ("198.51.100.200", 443),
            ("203.0.113.1", 443),
            ("192.0.2.1", 443),
        ],
    );
    assert_eq!(
        got,
        [Allowed, Allowed, Denied, Denied, Denied],
        "partners' CIDRs minus the exception; not the other group's"
    );
}

#[test]
fn a_reference_by_selector_means_every_group_with_those_labels() {
    use Verdict::*;
    let groups = group("b1", "tier: backup", "192.0.2.0/28")
        + &group("b2", "tier: backup", "192.0.2.64/28")
        + &group("f", "tier: front", "192.0.2.128/28");
    let got = verdicts(
        &groups,
        &[("192.0.2.1", 22), ("192.0.2.65", 22), ("192.0.2.129", 22)],
    );
    assert_eq!(got, [Allowed, Allowed, Denied]);
}

#[test]
fn a_reference_to_no_group_allows_nothing_and_without_expansion_nothing_is_open() {
    use Verdict::*;
    let groups = group("partners", "", "198.51.100.0/24");
    assert_eq!(verdicts(&groups, &[("198.51.100.1", 25)]), [Denied]);
    // Before `expand` fills them in, references are empty: allow less.
    let report = policy::parse_str(&format!("{POLICY}{groups}"), None);
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let ep = resolved
        .endpoint(&inventory.find("prod/app").unwrap().key)
        .unwrap();
    let ip = "198.51.100.7".parse().unwrap();
    let d = ep.decide(
        &resolved.matcher,
        Direction::Egress,
        &PeerRef {
            identity: inventory.identity_of(ip),
            ip: Some(ip),
            names: &[],
        },
        443,
        Protocol::Tcp,
    );
    assert_eq!(d.verdict, Denied);
}

#[test]
fn a_group_is_checked_on_its_own_and_an_invalid_one_is_not_applied() {
    let parse = |yaml: &str| -> CidrGroupObject { serde_yaml::from_str(yaml).unwrap() };
    let (ok, diagnostics) = validate_cidr_group(
        &parse("apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: g}\nspec: {externalCIDRs: [192.0.2.0/24]}\n"),
        "doc 1",
    );
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let ok = ok.expect("a valid group");
    assert_eq!(ok.name, "g");
    assert_eq!(ok.cidrs, vec!["192.0.2.0/24".parse().unwrap()]);
    for (yaml, field) in [
        (
            "apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: g}\nspec: {externalCIDRs: [not-a-cidr]}\n",
            "spec.externalCIDRs[0]",
        ),
        (
            "apiVersion: cilium.io/v2\nkind: CiliumCIDRGroup\nmetadata: {name: '  '}\nspec: {externalCIDRs: [192.0.2.0/24]}\n",
            "metadata.name",
        ),
        (
            "apiVersion: cilium.io/v1\nkind: CiliumCIDRGroup\nmetadata: {name: g}\nspec: {externalCIDRs: [192.0.2.0/24]}\n",
            "apiVersion",
        ),
    ] {
        let (group, diagnostics) = validate_cidr_group(&parse(yaml), "doc 1");
        assert!(group.is_none(), "{field}: not applied");
        assert!(
            diagnostics
                .iter()
                .any(|d| d.severity == Severity::Error && d.to_string().contains(field)),
            "{field}: {diagnostics:?}"
        );
    }
}

#[test]
fn groups_load_from_kubectls_list_output() {
    // `kubectl get ciliumcidrgroups -o yaml`
    let yaml = "apiVersion: cilium.io/v2alpha1\nkind: CiliumCIDRGroupList\nitems:\n  \
        - {apiVersion: cilium.io/v2alpha1, kind: CiliumCIDRGroup, metadata: {name: partners}, spec: {externalCIDRs: [198.51.100.0/24]}}\n  \
        - {apiVersion: cilium.io/v2alpha1, kind: CiliumCIDRGroup, metadata: {name: others}, spec: {externalCIDRs: [203.0.113.0/24]}}\n";
    let report = policy::parse_str(yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let names: Vec<&str> = report.cidr_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["partners", "others"]);
    assert_eq!(
        verdicts(yaml, &[("198.51.100.7", 443), ("203.0.113.1", 443)]),
        [Verdict::Allowed, Verdict::Denied]
    );
}
