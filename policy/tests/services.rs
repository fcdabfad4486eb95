//! Services in the endpoints file and `toServices`, resolved as Cilium
//! resolves them (pkg/policy/k8s/service.go, processRule): a Service with a
//! selector means the pods it selects in its namespace; one without means
//! its backend addresses, as CIDRs; `k8sService` without a namespace names
//! the Service in any namespace; `k8sServiceSelector` matches the Service's
//! own labels.

use std::net::IpAddr;

use policy::rules::ProtocolSpec;
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

/// Backends of selector Services: pods of the Service's namespace (`default`
/// when the Service names none) carrying every selector label; a Service
/// with neither a selector nor listed backends has none (Kubernetes leaves
/// its Endpoints to whoever manages them).
#[test]
fn selector_services_pick_pods_of_their_namespace_with_every_label() {
    let inv = Inventory::parse(
        "endpoints:
  - {name: web-1, namespace: default, labels: {app: web, tier: front}, ips: [10.0.0.1]}
  - {name: web-2, namespace: prod, labels: {app: web, tier: front}, ips: [10.0.0.2]}
  - {name: half, namespace: default, labels: {app: web}, ips: [10.0.0.3]}
  - {name: other, namespace: default, labels: {app: other}, ips: [10.0.0.4]}
services:
  - name: web
    ips: [10.96.0.1]
    selector: {app: web, tier: front}
    ports: [{port: 80, targetPort: 8080}]
  - name: external
    ips: [10.96.0.2]
    ports: [{port: 443}]
",
        "endpoints.yaml",
    )
    .unwrap();
    let web = &inv.services()[0];
    assert_eq!(web.namespace, "default", "no namespace: `default`");
    assert_eq!(
        web.frontends[0].backends,
        [("10.0.0.1".parse().unwrap(), 8080)],
        "web-2 is in another namespace, `half` lacks tier=front, `other` matches nothing"
    );
    let external = &inv.services()[1];
    assert!(
        external.frontends[0].backends.is_empty(),
        "no selector and no listed backends: no backend, not every pod"
    );
}

/// Listed backends (Kubernetes mode's EndpointSlices) give their port per
/// Service port name. A backend without ports is reached at the target port
/// (or the Service port); one that lists ports but not this port's name is
/// not a backend of that port, unless the Service has a single port, whose
/// backends may name theirs anything.
#[test]
fn listed_backends_are_reached_at_the_port_listed_under_the_service_ports_name() {
    let inv = Inventory::parse(
        "services:
  - name: app
    namespace: prod
    ips: [10.96.0.8]
    ports:
      - {name: http, port: 80, targetPort: 8080}
      - {name: metrics, port: 9090}
    backends:
      - {ip: 192.0.2.1, ports: {http: 8081}}
      - {ip: 192.0.2.2}
  - name: single
    namespace: prod
    ips: [10.96.0.9]
    ports: [{port: 443}]
    backends: [{ip: 192.0.2.3, ports: {https: 8443}}]
",
        "endpoints.yaml",
    )
    .unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let backends = |svc: usize, port: u16| {
        inv.services()[svc]
            .frontends
            .iter()
            .find(|f| f.port == port)
            .unwrap()
            .backends
            .clone()
    };
    assert_eq!(
        backends(0, 80),
        [(ip("192.0.2.1"), 8081), (ip("192.0.2.2"), 8080)],
        "by name; without ports: the target port"
    );
    assert_eq!(
        backends(0, 9090),
        [(ip("192.0.2.2"), 9090)],
        "192.0.2.1 lists no `metrics` port; without ports and target port: the Service port"
    );
    assert_eq!(
        backends(1, 443),
        [(ip("192.0.2.3"), 8443)],
        "a single-port Service: the backend's only port, whatever its name"
    );
}

/// A named target port is the selected pod's container port of that name
/// and of the Service port's protocol, not any other port of the pod.
#[test]
fn a_named_target_port_is_the_pods_port_of_that_name_and_protocol() {
    let inv = Inventory::parse(
        "endpoints:
  - name: dns-0
    namespace: kube-system
    labels: {k8s-app: kube-dns}
    ips: [10.0.0.10]
    ports:
      - {name: metrics, port: 9153, protocol: TCP}
      - {name: dns, port: 1053, protocol: UDP}
      - {name: dns, port: 2053, protocol: TCP}
services:
  - name: kube-dns
    namespace: kube-system
    ips: [10.96.0.10]
    selector: {k8s-app: kube-dns}
    ports:
      - {name: dns, port: 53, protocol: UDP, targetPort: dns}
      - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns}
",
        "endpoints.yaml",
    )
    .unwrap();
    let got: Vec<(ProtocolSpec, Vec<(IpAddr, u16)>)> = inv.services()[0]
        .frontends
        .iter()
        .map(|f| (f.protocol, f.backends.clone()))
        .collect();
    let pod: IpAddr = "10.0.0.10".parse().unwrap();
    assert_eq!(
        got,
        [
            (ProtocolSpec::Udp, vec![(pod, 1053)]),
            (ProtocolSpec::Tcp, vec![(pod, 2053)])
        ]
    );
}
