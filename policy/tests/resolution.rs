//! Resolution as a user relies on it: named ports, `fromRequires` /
//! `toRequires`, default deny and who turned it on, host-to-local, node
//! selectors, audit, and what the agent reads off a resolved endpoint
//! (`fqdn_rules`, the policy list, rule names). Written from the policy
//! crate's own API so that a per-package mutation run sees them (the golden
//! tables in the root package test the same ground through the CLI).

use std::net::IpAddr;

use policy::resolve::{CompiledL7, L7Decision};
use policy::{
    Decision, Direction, Identity, Inventory, PeerRef, PolicySet, Protocol, Reason, ResolveOptions,
    Resolved, Verdict,
};

const ENDPOINTS: &str = "
namespaces:
  - {name: shop, labels: {team: shop}}
endpoints:
  - name: web
    namespace: shop
    labels: {app: web}
    ips: [10.1.0.10]
    ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}, {name: stats, port: 7000, protocol: UDP}]
  - name: api
    namespace: shop
    labels: {app: api}
    ips: [10.1.0.11]
    ports: [{name: http, port: 9090}, {name: metrics, port: 9100}, {name: stats, port: 7000, protocol: UDP}]
  - name: client
    namespace: shop
    labels: {app: client, env: prod}
    ips: [10.1.0.12]
    ports: [{name: metrics, port: 9100}]
  - name: legacy
    namespace: shop
    labels: {app: client, env: staging}
    ips: [10.1.0.13]
  - name: db
    namespace: shop
    labels: {app: db}
    ips: [10.1.0.14]
  - name: probe
    namespace: shop
    labels: {app: probe}
    ips: [10.1.0.15]
  - name: auditee
    namespace: shop
    labels: {app: auditee}
    audit: true
    ips: [10.1.0.16]
nodes:
  - {name: node-a, ips: [192.168.0.1], local: true, labels: {zone: a}}
  - {name: node-b, ips: [192.168.0.2], labels: {zone: b, name: node-b}}
  - {name: node-c, ips: [192.168.0.3], labels: {zone: b, name: node-c}}
";

struct Cluster {
    inventory: Inventory,
    resolved: Resolved,
}

fn cluster_with(endpoints: &str, policies: &str, options: ResolveOptions) -> Cluster {
    let inventory = Inventory::parse(endpoints, "endpoints.yaml").unwrap();
    let report = policy::parse_str(policies, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let set = PolicySet::new(report.policies);
    let resolved = set.resolve(&inventory, options);
    Cluster {
        inventory,
        resolved,
    }
}

fn cluster(policies: &str) -> Cluster {
    cluster_with(ENDPOINTS, policies, ResolveOptions::default())
}

impl Cluster {
    /// An endpoint by name, or an address.
    fn peer(&self, who: &str) -> PeerRef<'static> {
        let (identity, ip) = match who.parse::<IpAddr>() {
            Ok(ip) => (self.inventory.identity_of(ip), Some(ip)),
            Err(_) => {
                let e = self.inventory.find(who).expect(who);
                (e.identity, e.ips.first().copied())
            }
        };
        PeerRef {
            identity,
            ip,
            names: &[],
        }
    }

    fn decide(
        &self,
        subject: &str,
        direction: Direction,
        peer: &PeerRef,
        port: u16,
        proto: Protocol,
    ) -> Decision {
        let key = &self.inventory.find(subject).expect(subject).key;
        self.resolved.endpoint(key).expect("resolved").decide(
            &self.resolved.matcher,
            direction,
            peer,
            port,
            proto,
        )
    }

    /// `from` -> `to` as `to` sees it (ingress).
    fn ingress(&self, from: &str, to: &str, port: u16, proto: Protocol) -> Decision {
        self.decide(to, Direction::Ingress, &self.peer(from), port, proto)
    }

    /// `from` -> `to` as `from` sees it (egress).
    fn egress(&self, from: &str, to: &str, port: u16, proto: Protocol) -> Decision {
        self.decide(from, Direction::Egress, &self.peer(to), port, proto)
    }
}

fn cnp(name: &str, subject: &str, body: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: {subject}}}}}\n{body}\n---\n"
    )
}

fn rule_of(d: &Decision) -> String {
    d.rule.as_ref().map(|r| r.to_string()).unwrap_or_default()
}

// ---- named ports -------------------------------------------------------

#[test]
fn an_ingress_named_port_is_the_subjects_own_container_port() {
    // `http` is 8080 on web and 9090 on api: each subject gets its own.
    let c = cluster(&(cnp(
        "http-in",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: http, protocol: TCP}]}]",
    ) + &cnp(
        "api-http-in",
        "api",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: http, protocol: TCP}]}]",
    )));
    let d = c.ingress("client", "web", 8080, Protocol::Tcp);
    assert_eq!(d.verdict, Verdict::Allowed, "{d:?}");
    assert_eq!(rule_of(&d), "shop/http-in spec.ingress[0]");
    assert_eq!(
        c.ingress("client", "web", 9090, Protocol::Tcp).verdict,
        Verdict::Denied,
        "another pod's `http` is not web's"
    );
    assert_eq!(
        c.ingress("client", "api", 9090, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.ingress("client", "api", 8080, Protocol::Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        c.ingress("client", "web", 8080, Protocol::Udp).verdict,
        Verdict::Denied,
        "the named port is TCP"
    );
}

#[test]
fn an_ingress_named_port_matches_name_and_protocol_and_any_stands_for_each() {
    let c = cluster(&cnp(
        "named",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: dns, protocol: TCP}, {port: stats, protocol: ANY}]}]",
    ));
    // `dns` is a UDP container port: a TCP `dns` port rule names nothing.
    assert_eq!(
        c.ingress("client", "web", 5353, Protocol::Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        c.ingress("client", "web", 5353, Protocol::Udp).verdict,
        Verdict::Denied,
        "the rule asked for TCP"
    );
    // ANY: the `stats` port of whichever protocol web has (UDP 7000).
    assert_eq!(
        c.ingress("client", "web", 7000, Protocol::Udp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.ingress("client", "web", 7000, Protocol::Tcp).verdict,
        Verdict::Denied,
        "web has no TCP `stats`"
    );
    // A port name the subject does not have opens nothing (and no port 0).
    assert_eq!(
        c.ingress("client", "web", 0, Protocol::Tcp).verdict,
        Verdict::Denied
    );
}

#[test]
fn an_ingress_named_port_next_to_a_numbered_one_still_resolves() {
    let c = cluster(&cnp(
        "mixed",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: '443', protocol: TCP}, {port: http, protocol: TCP}]}]",
    ));
    assert_eq!(
        c.ingress("client", "web", 443, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.ingress("client", "web", 8080, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
}

#[test]
fn a_container_port_without_a_number_is_not_a_named_port() {
    let endpoints = "
endpoints:
  - {name: web, namespace: shop, labels: {app: web}, ips: [10.1.0.10], ports: [{name: http, port: 0}]}
  - {name: client, namespace: shop, labels: {app: client}, ips: [10.1.0.12], ports: [{name: http, port: 0}]}
";
    let policies = cnp(
        "zero-in",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: http, protocol: TCP}]}]",
    ) + &cnp(
        "zero-out",
        "client",
        "  egress:\n    - toEndpoints: [{}]\n      toPorts: [{ports: [{port: http, protocol: TCP}]}]",
    );
    let c = cluster_with(endpoints, &policies, ResolveOptions::default());
    for port in [0, 1, 80, 8080] {
        assert_eq!(
            c.ingress("client", "web", port, Protocol::Tcp).verdict,
            Verdict::Denied,
            "ingress port {port}"
        );
        assert_eq!(
            c.egress("client", "web", port, Protocol::Tcp).verdict,
            Verdict::Denied,
            "egress port {port}"
        );
    }
}

#[test]
fn an_egress_named_port_is_the_number_every_pod_gives_that_name() {
    let c = cluster(&cnp(
        "probe-out",
        "probe",
        "  egress:\n    - toEndpoints: [{}]\n      toPorts: [{ports: [{port: metrics, protocol: TCP}, {port: http, protocol: TCP}, {port: stats, protocol: ANY}]}]",
    ));
    // `metrics` is 9100 wherever it exists, even towards a pod without it.
    assert_eq!(
        c.egress("probe", "client", 9100, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.egress("probe", "db", 9100, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.egress("probe", "db", 9100, Protocol::Udp).verdict,
        Verdict::Denied,
        "metrics is TCP"
    );
    // `http` is 8080 on web and 9090 on api: ambiguous, so nothing.
    for port in [8080, 9090] {
        let d = c.egress("probe", "web", port, Protocol::Tcp);
        assert_eq!(d.verdict, Verdict::Denied, "port {port}");
        assert_eq!(d.reason, Reason::DefaultDeny);
    }
    // `stats` is UDP 7000 on both pods that have it: agreed, so it opens.
    assert_eq!(
        c.egress("probe", "api", 7000, Protocol::Udp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.egress("probe", "api", 7000, Protocol::Tcp).verdict,
        Verdict::Denied
    );
}

// ---- fromRequires / toRequires -----------------------------------------

#[test]
fn from_requires_narrows_every_allow_rule_of_that_endpoint() {
    let policies = cnp(
        "db-in",
        "db",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: '5432', protocol: TCP}]}]",
    ) + &cnp(
        "db-in-2",
        "db",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: '6432', protocol: TCP}]}]\n    - fromCIDR: [203.0.113.0/24]",
    ) + &cnp(
        "db-requires-prod",
        "db",
        "  ingress:\n    - fromRequires: [{matchLabels: {env: prod}}]",
    );
    let c = cluster(&policies);
    for port in [5432, 6432] {
        let d = c.ingress("client", "db", port, Protocol::Tcp);
        assert_eq!(d.verdict, Verdict::Allowed, "prod client, port {port}");
        let d = c.ingress("legacy", "db", port, Protocol::Tcp);
        assert_eq!(d.verdict, Verdict::Denied, "staging client, port {port}");
        assert_eq!(d.reason, Reason::DefaultDeny);
    }
    assert_eq!(
        c.ingress("203.0.113.9", "db", 1, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "a CIDR peer has no labels to require anything of"
    );
    // Without the requiring policy, staging clients get in.
    let without = cluster(
        &(cnp(
            "db-in",
            "db",
            "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: '5432', protocol: TCP}]}]",
        )),
    );
    assert_eq!(
        without.ingress("legacy", "db", 5432, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
}

#[test]
fn from_requires_applies_only_to_the_endpoints_its_policy_selects() {
    let policies = cnp(
        "client-in-everywhere",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]",
    ) + &cnp(
        "client-in-db",
        "db",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]",
    ) + &cnp(
        "db-requires-prod",
        "db",
        "  ingress:\n    - fromRequires: [{matchLabels: {env: prod}}]",
    );
    let c = cluster(&policies);
    assert_eq!(
        c.ingress("legacy", "web", 80, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "web is not selected by the requiring policy"
    );
    assert_eq!(
        c.ingress("legacy", "db", 80, Protocol::Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        c.ingress("client", "db", 80, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
}

#[test]
fn to_requires_narrows_egress_and_two_requirements_add_up() {
    let policies = cnp(
        "probe-out",
        "probe",
        "  egress:\n    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: shop}}]",
    ) + &cnp(
        "probe-requires-client",
        "probe",
        "  egress:\n    - toRequires: [{matchLabels: {app: client}}]",
    ) + &cnp(
        "probe-requires-prod",
        "probe",
        "  egress:\n    - toRequires: [{matchLabels: {env: prod}}]",
    );
    let c = cluster(&policies);
    assert_eq!(
        c.egress("probe", "client", 80, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "app=client and env=prod"
    );
    assert_eq!(
        c.egress("probe", "legacy", 80, Protocol::Tcp).verdict,
        Verdict::Denied,
        "app=client but env=staging"
    );
    assert_eq!(
        c.egress("probe", "db", 80, Protocol::Tcp).verdict,
        Verdict::Denied,
        "neither"
    );
    // Requirements are per direction: probe's ingress is untouched.
    let c = cluster(
        &(policies
            + &cnp(
                "probe-in",
                "probe",
                "  ingress:\n    - fromEndpoints: [{matchLabels: {app: db}}]",
            )),
    );
    assert_eq!(
        c.ingress("db", "probe", 80, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
}

#[test]
fn from_requires_of_a_deny_rule_narrows_deny_rules_only() {
    let policies = cnp(
        "db-in",
        "db",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n  ingressDeny:\n    - fromEndpoints: [{matchLabels: {app: client}}]\n      toPorts: [{ports: [{port: '22', protocol: TCP}]}]\n    - fromRequires: [{matchLabels: {env: staging}}]",
    );
    let c = cluster(&policies);
    let d = c.ingress("legacy", "db", 22, Protocol::Tcp);
    assert_eq!(d.verdict, Verdict::Denied, "staging: the deny applies");
    assert_eq!(d.reason, Reason::DenyRule);
    assert_eq!(rule_of(&d), "shop/db-in spec.ingressDeny[0]");
    let d = c.ingress("client", "db", 22, Protocol::Tcp);
    assert_eq!(
        d.verdict,
        Verdict::Allowed,
        "prod: the deny no longer covers it, and the allow rule is not narrowed"
    );
    assert_eq!(rule_of(&d), "shop/db-in spec.ingress[0]");
}

// ---- default deny ------------------------------------------------------

#[test]
fn default_deny_is_per_direction_and_names_the_policies_that_turned_it_on() {
    let policies = cnp(
        "b-web-in",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]",
    ) + &cnp(
        "a-web-in",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: api}}]",
    ) + "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c-two-specs, namespace: shop}\n\
         specs:\n  - endpointSelector: {matchLabels: {app: web}}\n    ingress: [{fromEndpoints: [{matchLabels: {app: db}}]}]\n  \
         - endpointSelector: {matchLabels: {app: web}}\n    ingress: [{fromEndpoints: [{matchLabels: {app: probe}}]}]\n";
    let c = cluster(&policies);
    let key = &c.inventory.find("web").unwrap().key;
    let web = c.resolved.endpoint(key).unwrap();
    assert!(web.ingress.enforced);
    let names: Vec<String> = web
        .ingress
        .enforced_by
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        ["shop/a-web-in", "shop/b-web-in", "shop/c-two-specs"],
        "each policy once, in name order"
    );
    assert!(!web.egress.enforced, "no egress rules: egress stays open");
    assert!(web.egress.enforced_by.is_empty());
    assert_eq!(web.direction(Direction::Ingress).allow.len(), 4);
    assert_eq!(web.direction(Direction::Egress).allow.len(), 0);

    // Both specs of the two-spec policy apply, each to its own peers.
    for from in ["client", "api", "db", "probe"] {
        assert_eq!(
            c.ingress(from, "web", 80, Protocol::Tcp).verdict,
            Verdict::Allowed,
            "{from}"
        );
    }
    let d = c.ingress("legacy", "api", 80, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allowed, Reason::NoPolicy),
        "api is selected by no policy"
    );
    let d = c.ingress("auditee", "web", 80, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Denied, Reason::DefaultDeny)
    );
    assert_eq!(d.rule, None);
    let d = c.egress("web", "auditee", 80, Protocol::Tcp);
    assert_eq!((d.verdict, d.reason), (Verdict::Allowed, Reason::NoPolicy));
}

#[test]
fn each_spec_selects_its_own_subjects() {
    // Three policies, each selecting a different pod; each pod gets its own.
    let policies = cnp("a", "web", "  egress:\n    - toCIDR: [203.0.113.1/32]")
        + &cnp("b", "api", "  egress:\n    - toCIDR: [203.0.113.2/32]")
        + &cnp("c", "db", "  egress:\n    - toCIDR: [203.0.113.3/32]");
    let c = cluster(&policies);
    for (who, own) in [("web", 1), ("api", 2), ("db", 3)] {
        for n in 1..=3 {
            let d = c.egress(who, &format!("203.0.113.{n}"), 443, Protocol::Tcp);
            let want = if n == own {
                Verdict::Allowed
            } else {
                Verdict::Denied
            };
            assert_eq!(d.verdict, want, "{who} -> 203.0.113.{n}");
        }
    }
    let d = c.egress("probe", "203.0.113.1", 443, Protocol::Tcp);
    assert_eq!(d.reason, Reason::NoPolicy, "probe is selected by none");
}

#[test]
fn an_endpoint_in_audit_mode_reports_would_be_drops_and_passes_them() {
    let policies = cnp(
        "audited",
        "auditee",
        "  egress:\n    - toCIDR: [203.0.113.1/32]\n  egressDeny:\n    - toCIDR: [203.0.113.2/32]",
    ) + &cnp(
        "enforced",
        "web",
        "  egress:\n    - toCIDR: [203.0.113.1/32]",
    );
    let c = cluster(&policies);
    let d = c.egress("auditee", "203.0.113.9", 443, Protocol::Tcp);
    assert_eq!((d.verdict, d.reason), (Verdict::Audit, Reason::DefaultDeny));
    let d = c.egress("auditee", "203.0.113.2", 443, Protocol::Tcp);
    assert_eq!((d.verdict, d.reason), (Verdict::Audit, Reason::DenyRule));
    assert_eq!(
        c.egress("auditee", "203.0.113.1", 443, Protocol::Tcp)
            .verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.egress("web", "203.0.113.9", 443, Protocol::Tcp).verdict,
        Verdict::Denied,
        "another endpoint's audit mode is not web's"
    );
    // Agent-wide audit mode puts everyone in audit.
    let all = cluster_with(
        ENDPOINTS,
        &policies,
        ResolveOptions {
            audit: true,
            ..Default::default()
        },
    );
    assert_eq!(
        all.egress("web", "203.0.113.9", 443, Protocol::Tcp).verdict,
        Verdict::Audit
    );
}

// ---- the node itself, nodes and reserved identities ---------------------

#[test]
fn the_node_reaches_its_local_pods_unless_told_otherwise() {
    let policies = cnp(
        "web-in",
        "web",
        "  ingress:\n    - fromEndpoints: [{matchLabels: {app: client}}]",
    ) + &cnp(
        "web-out",
        "web",
        "  egress:\n    - toCIDR: [203.0.113.1/32]",
    );
    let c = cluster(&policies);
    let d = c.ingress("192.168.0.1", "web", 8080, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allowed, Reason::HostToLocal),
        "kubelet probes"
    );
    let d = c.ingress("192.168.0.2", "web", 8080, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Denied, Reason::DefaultDeny),
        "a remote node is not the host"
    );
    let d = c.egress("web", "192.168.0.1", 8080, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Denied, Reason::DefaultDeny),
        "the pod reaching the node is egress like any other"
    );
    let strict = cluster_with(
        ENDPOINTS,
        &policies,
        ResolveOptions {
            allow_host_to_local: false,
            audit: false,
        },
    );
    let d = strict.ingress("192.168.0.1", "web", 8080, Protocol::Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Denied, Reason::DefaultDeny)
    );
}

#[test]
fn from_nodes_selects_the_host_and_remote_nodes_only_when_the_datapath_can_tell_them_apart() {
    let c = cluster(&cnp(
        "web-in",
        "web",
        "  ingress:\n    - fromNodes: [{matchLabels: {zone: b}}]\n      toPorts: [{ports: [{port: '10250', protocol: TCP}]}]\n    \
         - fromNodes: [{matchLabels: {name: node-b}}]\n      toPorts: [{ports: [{port: '10255', protocol: TCP}]}]\n    \
         - fromNodes: [{matchLabels: {zone: a}}]\n      toPorts: [{ports: [{port: '10256', protocol: TCP}]}]\n  \
         ingressDeny:\n    - fromNodes: [{matchLabels: {name: node-c}}]\n      toPorts: [{ports: [{port: '10257', protocol: TCP}]}]",
    ));
    let strict = ResolveOptions {
        allow_host_to_local: false,
        audit: false,
    };
    for node in ["192.168.0.2", "192.168.0.3"] {
        assert_eq!(
            c.ingress(node, "web", 10250, Protocol::Tcp).verdict,
            Verdict::Allowed,
            "every remote node is in zone b"
        );
        assert_eq!(
            c.ingress(node, "web", 10255, Protocol::Tcp).verdict,
            Verdict::Denied,
            "node-b alone cannot be told from node-c: allow less"
        );
        assert_eq!(
            c.ingress(node, "web", 10256, Protocol::Tcp).verdict,
            Verdict::Denied,
            "zone a is the local node only"
        );
    }
    let c = cluster_with(ENDPOINTS, &cnp(
        "web-in",
        "web",
        "  ingress:\n    - fromNodes: [{matchLabels: {zone: b}}]\n      toPorts: [{ports: [{port: '10250', protocol: TCP}]}]\n    \
         - fromNodes: [{matchLabels: {zone: a}}]\n      toPorts: [{ports: [{port: '10256', protocol: TCP}]}]\n    \
         - fromEntities: [remote-node]\n  \
         ingressDeny:\n    - fromNodes: [{matchLabels: {name: node-c}}]\n      toPorts: [{ports: [{port: '10257', protocol: TCP}]}]",
    ), strict);
    assert_eq!(
        c.ingress("192.168.0.1", "web", 10256, Protocol::Tcp)
            .verdict,
        Verdict::Allowed,
        "the local node is the host"
    );
    assert_eq!(
        c.ingress("192.168.0.1", "web", 10250, Protocol::Tcp)
            .verdict,
        Verdict::Denied,
        "the host is not in zone b"
    );
    for node in ["192.168.0.2", "192.168.0.3"] {
        let d = c.ingress(node, "web", 10257, Protocol::Tcp);
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Denied, Reason::DenyRule),
            "node-c alone cannot be told from node-b: deny more ({node})"
        );
        assert_eq!(
            c.ingress(node, "web", 10256, Protocol::Tcp).verdict,
            Verdict::Allowed,
            "(through remote-node)"
        );
    }
}

#[test]
fn from_nodes_allows_no_remote_node_when_none_is_known() {
    let endpoints = "
endpoints:
  - {name: web, namespace: shop, labels: {app: web}, ips: [10.1.0.10]}
nodes:
  - {name: node-a, ips: [192.168.0.1], local: true, labels: {zone: a}}
";
    let c = cluster_with(
        endpoints,
        &cnp(
            "web-in",
            "web",
            "  ingress:\n    - fromNodes: [{matchLabels: {zone: b}}]",
        ),
        ResolveOptions::default(),
    );
    let remote = PeerRef {
        identity: Identity::REMOTE_NODE,
        ip: Some("192.168.0.9".parse().unwrap()),
        names: &[],
    };
    let d = c.decide("web", Direction::Ingress, &remote, 10250, Protocol::Tcp);
    assert_eq!(d.verdict, Verdict::Denied);
}

#[test]
fn a_pod_selector_selects_pods_and_a_reserved_key_selects_a_reserved_identity() {
    let policies = cnp(
        "web-in",
        "web",
        "  ingress:\n    - fromEndpoints: [{}]\n      toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n    \
         - fromEndpoints: [{matchLabels: {reserved:remote-node: ''}}]\n      toPorts: [{ports: [{port: '81', protocol: TCP}]}]",
    );
    let c = cluster(&policies);
    assert_eq!(
        c.ingress("client", "web", 80, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "{{}}: every pod of the namespace"
    );
    assert_eq!(
        c.ingress("192.168.0.2", "web", 80, Protocol::Tcp).verdict,
        Verdict::Denied,
        "{{}} is not a node"
    );
    assert_eq!(
        c.ingress("203.0.113.1", "web", 80, Protocol::Tcp).verdict,
        Verdict::Denied,
        "{{}} is not the world"
    );
    assert_eq!(
        c.ingress("192.168.0.2", "web", 81, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "reserved:remote-node"
    );
    assert_eq!(
        c.ingress("client", "web", 81, Protocol::Tcp).verdict,
        Verdict::Denied,
        "a pod is not remote-node"
    );
}

// ---- CIDRs -------------------------------------------------------------

#[test]
fn a_cidr_rule_matches_outside_addresses_only_and_honours_its_exceptions() {
    let policies = cnp(
        "web-out",
        "web",
        "  egress:\n    - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]\n    - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]",
    );
    let c = cluster(&policies);
    assert_eq!(
        c.egress("web", "10.2.0.1", 443, Protocol::Tcp).verdict,
        Verdict::Allowed,
        "an outside address in the CIDR"
    );
    assert_eq!(
        c.egress("web", "10.9.0.1", 443, Protocol::Tcp).verdict,
        Verdict::Denied,
        "an excepted address"
    );
    assert_eq!(
        c.egress("web", "api", 443, Protocol::Tcp).verdict,
        Verdict::Denied,
        "a pod in the CIDR is a pod, not a CIDR peer"
    );
    assert_eq!(
        c.egress("web", "203.0.113.1", 443, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.egress("web", "203.0.113.200", 443, Protocol::Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        c.egress("web", "198.51.100.1", 443, Protocol::Tcp).verdict,
        Verdict::Denied,
        "outside every CIDR"
    );
}

// ---- what the agent and the CLI read off a resolution -----------------

#[test]
fn the_first_rule_decides_the_l7_restriction_when_rules_of_two_kinds_meet_on_a_port() {
    let http = |name: &str| {
        cnp(
            name,
            "web",
            "  egress:\n    - toCIDR: [203.0.113.10/32]\n      toPorts:\n        - ports: [{port: '53', protocol: TCP}]\n          rules:\n            http: [{method: GET, path: /x}]",
        )
    };
    let dns = |name: &str| {
        cnp(
            name,
            "web",
            "  egress:\n    - toCIDR: [203.0.113.10/32]\n      toPorts:\n        - ports: [{port: '53', protocol: TCP}]\n          rules:\n            dns: [{matchName: a.test}]",
        )
    };
    let c = cluster(&(http("a-http") + &dns("b-dns")));
    let d = c.egress("web", "203.0.113.10", 53, Protocol::Tcp);
    assert_eq!(rule_of(&d), "shop/a-http spec.egress[0]");
    assert!(
        matches!(&d.l7, L7Decision::Http(r) if r.len() == 1),
        "{:?}",
        d.l7
    );
    let c = cluster(&(dns("a-dns") + &http("b-http")));
    let d = c.egress("web", "203.0.113.10", 53, Protocol::Tcp);
    assert_eq!(rule_of(&d), "shop/a-dns spec.egress[0]");
    assert!(
        matches!(&d.l7, L7Decision::Dns(ids) if ids.len() == 1),
        "{:?}",
        d.l7
    );
}

#[test]
fn fqdn_rules_lists_every_to_fqdns_selector_with_its_ports_and_rule() {
    let policies = cnp(
        "web-out",
        "web",
        "  egress:\n    - toFQDNs: [{matchName: a.test}, {matchPattern: '*.b.test'}]\n      toPorts: [{ports: [{port: '443', protocol: TCP}]}]\n    - toFQDNs: [{matchName: c.test}]\n    - toCIDR: [203.0.113.1/32]",
    ) + &cnp("web-in", "web", "  ingress:\n    - fromEndpoints: [{}]");
    let c = cluster(&policies);
    let key = &c.inventory.find("web").unwrap().key;
    let web = c.resolved.endpoint(key).unwrap();
    let rules: Vec<_> = web.fqdn_rules().collect();
    assert_eq!(rules.len(), 3, "{rules:?}");
    let id_of = |name: &str| {
        let ids = c.resolved.matcher.matches(name);
        assert_eq!(ids.len(), 1, "{name}");
        ids[0]
    };
    let (id, ports, origin) = rules[0];
    assert_eq!(id, id_of("a.test"));
    assert_eq!(origin.to_string(), "shop/web-out spec.egress[0]");
    let ports = ports.expect("port 443 only");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].l7, CompiledL7::None);
    assert!(ports[0].ports.iter().any(|p| p.matches(443, Protocol::Tcp)));
    assert!(!ports[0].ports.iter().any(|p| p.matches(80, Protocol::Tcp)));
    assert_eq!(rules[1].0, id_of("x.b.test"));
    let (id, ports, origin) = rules[2];
    assert_eq!(id, id_of("c.test"));
    assert!(ports.is_none(), "c.test opens every port");
    assert_eq!(origin.to_string(), "shop/web-out spec.egress[1]");

    let client = c
        .resolved
        .endpoint(&c.inventory.find("client").unwrap().key)
        .unwrap();
    assert_eq!(client.fqdn_rules().count(), 0);
}

#[test]
fn a_policy_set_keeps_its_policies_in_name_order_and_matches_their_names() {
    let policies = cnp(
        "zeta",
        "web",
        "  egress:\n    - toFQDNs: [{matchName: z.test}]",
    ) + &cnp(
        "alpha",
        "web",
        "  egress:\n    - toFQDNs: [{matchName: a.test}]",
    );
    let report = policy::parse_str(&policies, None);
    let set = PolicySet::new(report.policies);
    let names: Vec<String> = set.policies().iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, ["shop/alpha", "shop/zeta"]);
    assert_eq!(set.matcher().matches("a.test").len(), 1);
    assert_eq!(set.matcher().matches("z.test").len(), 1);
    assert!(set.matcher().matches("b.test").is_empty());
}

#[test]
fn verdicts_and_rules_print_and_serialise_as_the_cli_shows_them() {
    assert_eq!(Verdict::Allowed.to_string(), "ALLOWED");
    assert_eq!(Verdict::Denied.to_string(), "DENIED");
    assert_eq!(Verdict::Audit.to_string(), "AUDIT");
    let c = cluster(&cnp(
        "web-out",
        "web",
        "  egress:\n    - toCIDR: [203.0.113.1/32]",
    ));
    let d = c.egress("web", "203.0.113.1", 443, Protocol::Tcp);
    let rule = d.rule.expect("a rule");
    assert_eq!(rule.to_string(), "shop/web-out spec.egress[0]");
    assert_eq!(
        serde_json::to_value(&rule).unwrap(),
        serde_json::json!({
            "kind": "CiliumNetworkPolicy",
            "namespace": "shop",
            "policy": "web-out",
            "rule": "spec.egress[0]",
        })
    );
}

#[test]
fn a_rule_that_does_not_depend_on_its_subject_is_compiled_once_for_all_of_them() {
    // Resolution must stay O(rules), not O(rules x pods), for rules whose
    // peers and ports are the same whoever they apply to: an egress named
    // port (resolved over the whole cluster), a pod selector without
    // requirements, a CIDR next to a requirement.
    let policies = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: all, namespace: shop}\n\
        spec:\n  endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: shop}}\n  \
        egress:\n    - toCIDR: [203.0.113.0/24]\n      toPorts: [{ports: [{port: metrics, protocol: TCP}]}]\n    \
        - toEndpoints: [{matchLabels: {app: db}}]\n  \
        ingress:\n    - fromCIDR: [203.0.113.0/24]\n    - fromRequires: [{matchLabels: {env: prod}}]\n    \
        - fromEndpoints: [{matchLabels: {app: probe}}]\n---\n";
    let c = cluster(policies);
    let ep = |name: &str| {
        c.resolved
            .endpoint(&c.inventory.find(name).unwrap().key)
            .unwrap()
    };
    let (web, api) = (ep("web"), ep("api"));
    for i in 0..2 {
        assert!(
            std::sync::Arc::ptr_eq(&web.egress.allow[i], &api.egress.allow[i]),
            "egress[{i}] shared"
        );
    }
    assert!(
        std::sync::Arc::ptr_eq(&web.ingress.allow[0], &api.ingress.allow[0]),
        "a CIDR peer has nothing to require: shared"
    );
    // Not shared: a pod selector under fromRequires is narrowed per subject
    // (here the same narrowing, but the rule cannot know that in advance).
    assert!(!std::sync::Arc::ptr_eq(
        &web.ingress.allow[2],
        &api.ingress.allow[2]
    ));
    // And the shared rules decide as they should.
    assert_eq!(
        c.egress("web", "203.0.113.5", 9100, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        c.egress("api", "db", 80, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
}

// ---- selectors -----------------------------------------------------------

/// `matchExpressions` as Kubernetes defines them: `In` / `NotIn` a set of
/// values (`NotIn` also matches a pod without the key), `Exists` /
/// `DoesNotExist` of a key.
#[test]
fn match_expressions_select_as_kubernetes_defines_them() {
    let allowed = |expr: &str| -> Vec<&'static str> {
        let c = cluster(&cnp(
            "exprs",
            "web",
            &format!("  egress:\n  - toEndpoints: [{{matchExpressions: [{expr}]}}]"),
        ));
        ["client", "legacy", "db"]
            .into_iter()
            .filter(|p| c.egress("web", p, 80, Protocol::Tcp).verdict == Verdict::Allowed)
            .collect()
    };
    assert_eq!(
        allowed("{key: env, operator: In, values: [prod]}"),
        ["client"]
    );
    assert_eq!(
        allowed("{key: env, operator: NotIn, values: [prod]}"),
        ["legacy", "db"]
    );
    assert_eq!(
        allowed("{key: env, operator: Exists}"),
        ["client", "legacy"]
    );
    assert_eq!(allowed("{key: env, operator: DoesNotExist}"), ["db"]);
}

/// A deny list counts like an allow list for default deny (Cilium's
/// parserules.go): `egressDeny` with a rule puts egress in default deny, an
/// empty one does not.
#[test]
fn an_empty_deny_list_does_not_turn_default_deny_on() {
    let c = cluster(&cnp(
        "p",
        "web",
        "  ingress: [{fromEntities: [world]}]\n  egressDeny: []",
    ));
    assert_eq!(
        c.egress("web", "db", 80, Protocol::Tcp).verdict,
        Verdict::Allowed
    );
    let c = cluster(&cnp(
        "p",
        "web",
        "  ingress: [{fromEntities: [world]}]\n  egressDeny: [{toEntities: [world]}]",
    ));
    assert_eq!(
        c.egress("web", "db", 80, Protocol::Tcp).verdict,
        Verdict::Denied
    );
}
