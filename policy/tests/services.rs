//! Services in the endpoints file and `toServices`, resolved as Cilium
//! resolves them (pkg/policy/k8s/service.go, processRule): a Service with a
//! selector means the pods it selects in its namespace; one without means
//! its backend addresses, as CIDRs; `k8sService` without a namespace names
//! the Service in any namespace; `k8sServiceSelector` matches the Service's
//! own labels.

use std::net::IpAddr;

use policy::{Direction, Inventory, PeerRef, PolicySet, Protocol, ResolveOptions, Verdict};

const ENDPOINTS: &str = "endpoints:
  - {name: app, namespace: prod, labels: {app: app}, ips: [10.0.1.10]}
  - {name: db-0, namespace: prod, labels: {app: db}, ips: [10.0.2.10], ports: [{name: pg, port: 5433}]}
  - {name: db-1, namespace: prod, labels: {app: db}, ips: [10.0.2.11]}
  - {name: db-other, namespace: test, labels: {app: db}, ips: [10.0.3.10]}
services:
  - name: db
    namespace: prod
    labels: {tier: data}
    ips: [10.96.0.5]
    selector: {app: db}
    ports: [{name: pg, port: 5432, targetPort: pg}]
  - name: legacy
    namespace: prod
    ips: [10.96.0.6]
    ports: [{port: 443}]
    backends: [{ip: 192.0.2.7}, {ip: 192.0.2.8}]
";

fn inventory() -> Inventory {
    Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap()
}

fn decide(egress: &str, to: &str, port: u16) -> Verdict {
    let inventory = inventory();
    let policies = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: app}}}}\n  egress:\n{egress}\n"
    );
    let report = policy::parse_str(&policies, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let key = inventory.find("prod/app").unwrap().key.clone();
    let ip: IpAddr = to.parse().unwrap();
    let peer = PeerRef {
        identity: inventory.identity_of(ip),
        ip: Some(ip),
        names: &[],
    };
    resolved
        .endpoint(&key)
        .unwrap()
        .decide(
            &resolved.matcher,
            Direction::Egress,
            &peer,
            port,
            Protocol::Tcp,
        )
        .verdict
}

#[test]
fn a_selector_service_resolves_to_its_pods_at_the_target_port() {
    let inv = inventory();
    let db = &inv.services()[0];
    assert_eq!(db.frontends.len(), 1);
    let f = &db.frontends[0];
    assert_eq!((f.ip, f.port), ("10.96.0.5".parse().unwrap(), 5432));
    assert_eq!(
        f.backends,
        [("10.0.2.10".parse().unwrap(), 5433)],
        "the named target port: db-1 lacks it, db-other is in another namespace"
    );
    let legacy = &inv.services()[1];
    assert_eq!(
        legacy.frontends[0].backends,
        [
            ("192.0.2.7".parse().unwrap(), 443),
            ("192.0.2.8".parse().unwrap(), 443)
        ],
        "listed backends without ports take the Service port"
    );
}

#[test]
fn to_services_by_name_allows_the_pods_the_service_selects() {
    let rule = "  - toServices: [{k8sService: {serviceName: db, namespace: prod}}]";
    assert_eq!(decide(rule, "10.0.2.10", 5433), Verdict::Allowed);
    assert_eq!(
        decide(rule, "10.0.2.11", 5433),
        Verdict::Allowed,
        "every selected pod"
    );
    assert_eq!(
        decide(rule, "10.0.3.10", 5433),
        Verdict::Denied,
        "a pod with the same labels in another namespace is not a backend"
    );
    let elsewhere = "  - toServices: [{k8sService: {serviceName: db, namespace: test}}]";
    assert_eq!(
        decide(elsewhere, "10.0.2.10", 5433),
        Verdict::Denied,
        "no db in test"
    );
    let any_ns = "  - toServices: [{k8sService: {serviceName: db}}]";
    assert_eq!(
        decide(any_ns, "10.0.2.10", 5433),
        Verdict::Allowed,
        "no namespace: the Service of that name in any namespace (Cilium)"
    );
}

#[test]
fn to_services_by_selector_matches_the_service_labels_and_ports_still_apply() {
    let rule = "  - toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: data}}}}]\n    toPorts: [{ports: [{port: '5433', protocol: TCP}]}]";
    assert_eq!(decide(rule, "10.0.2.11", 5433), Verdict::Allowed);
    assert_eq!(
        decide(rule, "10.0.2.11", 22),
        Verdict::Denied,
        "toPorts narrows it"
    );
    let other = "  - toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: web}}}}]";
    assert_eq!(decide(other, "10.0.2.11", 5433), Verdict::Denied);
}

#[test]
fn a_service_without_selector_means_its_backend_addresses() {
    let rule = "  - toServices: [{k8sService: {serviceName: legacy, namespace: prod}}]";
    assert_eq!(decide(rule, "192.0.2.7", 443), Verdict::Allowed);
    assert_eq!(decide(rule, "192.0.2.8", 443), Verdict::Allowed);
    assert_eq!(
        decide(rule, "192.0.2.9", 443),
        Verdict::Denied,
        "not a backend"
    );
    assert_eq!(
        decide(rule, "10.0.2.10", 5433),
        Verdict::Denied,
        "not the db pods"
    );
}

#[test]
fn a_service_the_inventory_does_not_have_selects_nothing() {
    let rule = "  - toServices: [{k8sService: {serviceName: gone, namespace: prod}}]";
    assert_eq!(decide(rule, "10.0.2.10", 5433), Verdict::Denied);
}
