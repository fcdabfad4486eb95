//! The HTTP proxy's view of policy: for a connection from `client` to
//! `server`, the source pod's egress decision and the destination pod's
//! ingress decision (when each is a local pod), exactly as the policy
//! engine decides them — the proxy refuses what either denies and applies
//! the HTTP rules of both. Also which local pod ports need ingress
//! interception at all.

use std::collections::BTreeSet;
use std::sync::Arc;

use egress_bpf::desired::Interfaces;
use egress_bpf::redirect::IngressHttp;
use egress_bpf::Datapath;
use http_proxy::{Authorization, HttpPolicy, RuleSet, ServerNameSet};
use policy::inventory::IpOwner;
use policy::resolve::{CompiledL7, L7Decision};
use policy::{Direction, Inventory, PeerRef, Protocol, Resolved, Verdict};

use crate::node::Node;

/// [`HttpPolicy`]: the HTTP proxy's handle on the node (the policy in
/// force and the names pods learned).
pub struct L7Policy<D: Datapath>(pub Arc<Node<D>>);

impl<D: Datapath> HttpPolicy for L7Policy<D> {
    fn authorize(
        &self,
        client: std::net::SocketAddr,
        server: std::net::SocketAddr,
    ) -> Authorization {
        let current = self.0.policy();
        let local_key = |ip| match current.inventory().owner(ip) {
            IpOwner::Endpoint(e) if current.interfaces.contains_key(&e.key) => Some(e.key.clone()),
            _ => None,
        };
        let local = [local_key(client.ip()), local_key(server.ip())];
        // The names the client learned for the server's address (for
        // toFQDNs rules): the only read under the lock the DNS path takes.
        let names = match &local[0] {
            Some(key) => self.0.names_for(key, server.ip()),
            None => Vec::new(),
        };
        authorize(
            current.resolved(),
            current.inventory(),
            |key| local.iter().flatten().any(|l| l == key),
            &names,
            client,
            server,
        )
    }
}

/// The decision for one connection; `is_local` tells this node's pods,
/// `names` are the DNS names the client learned for the server's address
/// (for toFQDNs rules).
pub fn authorize(
    resolved: &Resolved,
    inventory: &Inventory,
    is_local: impl Fn(&policy::EndpointKey) -> bool,
    names: &[String],
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
) -> Authorization {
    let owner = |ip| match inventory.owner(ip) {
        IpOwner::Endpoint(e) => Some(e),
        _ => None,
    };
    let (src, dst) = (owner(client.ip()), owner(server.ip()));
    let mut sets = Vec::new();
    let mut tls_sets = Vec::new();
    let mut pod = None;
    let mut direction = "egress";
    let sides = [
        (src, Direction::Egress, server.ip(), names),
        (dst, Direction::Ingress, client.ip(), &[][..]),
    ];
    for (endpoint, dir, peer_ip, peer_names) in sides {
        let Some(endpoint) = endpoint.filter(|e| is_local(&e.key)) else {
            continue;
        };
        let Some(ep) = resolved.endpoint(&endpoint.key) else {
            continue;
        };
        let peer = PeerRef {
            identity: inventory.identity_of(peer_ip),
            ip: Some(peer_ip),
            names: peer_names,
        };
        let decision = ep.decide(&resolved.matcher, dir, &peer, server.port(), Protocol::Tcp);
        if decision.verdict == Verdict::Denied {
            let rule = decision
                .rule
                .map(|r| format!(" by {r}"))
                .unwrap_or_default();
            return Authorization::Refused {
                reason: format!("{} {dir:?} {:?}{rule}", endpoint.key, decision.reason)
                    .to_lowercase(),
            };
        }
        let label = || {
            decision
                .rule
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_else(|| format!("{} {dir:?}", endpoint.key))
        };
        let restricted = match &decision.l7 {
            L7Decision::Http(rules) => {
                sets.push(RuleSet {
                    label: label(),
                    rules: rules.clone(),
                });
                true
            }
            L7Decision::Tls(names) => {
                tls_sets.push(ServerNameSet {
                    label: label(),
                    names: names.clone(),
                });
                true
            }
            L7Decision::None | L7Decision::Dns(_) => false,
        };
        if restricted {
            pod = Some(endpoint.key.to_string());
            direction = if dir == Direction::Ingress {
                "ingress"
            } else {
                "egress"
            };
        } else if pod.is_none() {
            pod = Some(endpoint.key.to_string());
        }
    }
    let (source, destination) = (
        src.map(|e| e.key.to_string()),
        dst.map(|e| e.key.to_string()),
    );
    match (sets.is_empty(), tls_sets.is_empty()) {
        // No request of a TLS stream can be checked against HTTP rules, and
        // no plain request carries a server name: nothing can satisfy both.
        (false, false) => Authorization::Refused {
            reason: format!(
                "HTTP rules ({}) and serverNames ({}) on one connection cannot both hold",
                sets[0].label, tls_sets[0].label
            ),
        },
        (true, false) => Authorization::Tls {
            sets: tls_sets,
            source,
            destination,
            pod,
            direction,
        },
        _ => Authorization::Requests {
            sets,
            source,
            destination,
            pod,
            direction,
        },
    }
}

/// What nftables must hand to the HTTP proxy (which also serves
/// `serverNames` ports), from the local pods' rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRedirects {
    /// Local pods' addresses and TCP ports whose ingress has HTTP rules or
    /// `serverNames`: caught before routing.
    pub ingress: Vec<IngressHttp>,
    /// Every TCP port range with HTTP rules or `serverNames`, either
    /// direction: replies to the proxy's own connections come from these.
    pub ports: Vec<(u16, u16)>,
}

/// One walk over the local pods' allow rules with HTTP rules.
pub fn http_redirects(
    resolved: &Resolved,
    inventory: &Inventory,
    interfaces: &Interfaces,
) -> HttpRedirects {
    let mut ingress = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for key in interfaces.keys() {
        let Some(ep) = resolved.endpoint(key) else {
            continue;
        };
        let ips = inventory.endpoint(key).map(|e| &e.ips[..]).unwrap_or(&[]);
        let directions = [
            (Direction::Ingress, &ep.ingress),
            (Direction::Egress, &ep.egress),
        ];
        for (dir, policy) in directions {
            for rule in &policy.allow {
                for port_rule in rule.ports.iter().flatten() {
                    if !matches!(port_rule.l7, CompiledL7::Http(_) | CompiledL7::Tls(_)) {
                        continue;
                    }
                    for range in port_rule
                        .ports
                        .iter()
                        .filter(|r| r.matches(r.start, Protocol::Tcp))
                    {
                        let span = (range.start, range.end);
                        ports.insert(span);
                        if dir == Direction::Ingress {
                            ingress.extend(ips.iter().map(|addr| IngressHttp {
                                addr: *addr,
                                ports: span,
                            }));
                        }
                    }
                }
            }
        }
    }
    HttpRedirects {
        ingress: ingress.into_iter().collect(),
        ports: ports.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture() -> (Resolved, Inventory) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let report = policy::load_paths(&[&root.join("policies/frontend-to-db-l7.yaml")]);
        assert!(!report.has_errors());
        let inventory = Inventory::load(&root.join("endpoints.yaml")).unwrap();
        let resolved = policy::PolicySet::new(report.policies)
            .resolve(&inventory, policy::ResolveOptions::default());
        (resolved, inventory)
    }

    fn key(s: &str) -> policy::EndpointKey {
        let (namespace, name) = s.split_once('/').unwrap();
        policy::EndpointKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn addr(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ingress_http_rules_of_the_local_destination_apply() {
        let (resolved, inventory) = fixture();
        let local = BTreeSet::from([key("prod/db"), key("prod/frontend")]);
        let auth = authorize(
            &resolved,
            &inventory,
            |k| local.contains(k),
            &[],
            addr("10.0.1.10:40000"),
            addr("10.0.1.20:80"),
        );
        let Authorization::Requests {
            sets,
            pod,
            direction,
            source,
            ..
        } = auth
        else {
            panic!("frontend may connect: {auth:?}");
        };
        assert_eq!(
            sets.len(),
            1,
            "the db's ingress rules (frontend's egress has none)"
        );
        assert!(
            sets[0].label.contains("prod/frontend-to-db-l7"),
            "{}",
            sets[0].label
        );
        assert_eq!(pod.as_deref(), Some("prod/db"));
        assert_eq!(direction, "ingress");
        assert_eq!(source.as_deref(), Some("prod/frontend"));
    }

    #[test]
    fn a_connection_either_side_denies_is_refused() {
        let (resolved, inventory) = fixture();
        let local = BTreeSet::from([key("prod/db"), key("prod/intruder")]);
        // The intruder has no ingress allow at the db.
        assert!(matches!(
            authorize(
                &resolved,
                &inventory,
                |k| local.contains(k),
                &[],
                addr("10.0.1.40:40000"),
                addr("10.0.1.20:80")
            ),
            Authorization::Refused { .. }
        ));
        // The frontend's egress allows only the db on 80.
        let local = BTreeSet::from([key("prod/frontend")]);
        assert!(matches!(
            authorize(
                &resolved,
                &inventory,
                |k| local.contains(k),
                &[],
                addr("10.0.1.10:40000"),
                addr("10.0.1.30:80")
            ),
            Authorization::Refused { .. }
        ));
    }

    #[test]
    fn only_local_pods_policies_are_applied_here() {
        let (resolved, inventory) = fixture();
        // The db is on another node: its node's proxy applies its rules.
        let auth = authorize(
            &resolved,
            &inventory,
            |_| false,
            &[],
            addr("10.0.1.40:40000"),
            addr("10.0.1.20:80"),
        );
        assert!(
            matches!(auth, Authorization::Requests { ref sets, .. } if sets.is_empty()),
            "{auth:?}"
        );
    }

    #[test]
    fn ingress_targets_are_the_local_l7_ports() {
        let (resolved, inventory) = fixture();
        let mut interfaces = Interfaces::new();
        interfaces.insert(key("prod/db"), (7, "tgp7".into()));
        interfaces.insert(key("prod/frontend"), (8, "tgp8".into()));
        let redirects = http_redirects(&resolved, &inventory, &interfaces);
        assert_eq!(
            redirects.ingress,
            [IngressHttp {
                addr: "10.0.1.20".parse().unwrap(),
                ports: (80, 80)
            }]
        );
        assert_eq!(redirects.ports, [(80, 80)]);
        interfaces.remove(&key("prod/db"));
        let redirects = http_redirects(&resolved, &inventory, &interfaces);
        assert!(redirects.ingress.is_empty());
        assert!(redirects.ports.is_empty());
    }

    /// A policy with `serverNames` on egress (app -> world) and on the db's
    /// ingress, and HTTP rules on the db's port 80.
    fn sni_fixture() -> (Resolved, Inventory) {
        let inventory = Inventory::parse(
            "endpoints:\n  - {name: app, namespace: prod, labels: {app: app}, ips: [10.0.1.10, 'fd00::10']}\n  - {name: db, namespace: prod, labels: {app: db}, ips: [10.0.1.20]}\n",
            "endpoints.yaml",
        )
        .unwrap();
        let yaml = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sni, namespace: prod}
specs:
- endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [api.test]}]
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]
- endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: app}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}], serverNames: [db.test]}, {ports: [{port: '8443', protocol: TCP}], serverNames: [db.test]}]
";
        let report = policy::parse_str(yaml, None);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        let resolved = policy::PolicySet::new(report.policies)
            .resolve(&inventory, policy::ResolveOptions::default());
        (resolved, inventory)
    }

    #[test]
    fn server_names_become_a_tls_authorization_for_either_family() {
        let (resolved, inventory) = sni_fixture();
        for (client, server) in [
            ("10.0.1.10:40000", "203.0.113.9:443"),
            ("[fd00::10]:40000", "[2001:db8::9]:443"),
        ] {
            let auth = authorize(
                &resolved,
                &inventory,
                |k| *k == key("prod/app"),
                &[],
                addr(client),
                addr(server),
            );
            let Authorization::Tls {
                sets,
                pod,
                direction,
                ..
            } = auth
            else {
                panic!("{client} -> {server}: {auth:?}");
            };
            assert_eq!(sets.len(), 1);
            assert_eq!(sets[0].names.len(), 1);
            assert!(sets[0].names[0].matches("API.test"));
            assert!(
                sets[0].label.contains("prod/sni specs[0].egress[0]"),
                "{}",
                sets[0].label
            );
            assert_eq!((pod.as_deref(), direction), (Some("prod/app"), "egress"));
        }
        // The db's ingress names, with the app on another node.
        let auth = authorize(
            &resolved,
            &inventory,
            |k| *k == key("prod/db"),
            &[],
            addr("10.0.1.10:40000"),
            addr("10.0.1.20:8443"),
        );
        assert!(
            matches!(
                auth,
                Authorization::Tls {
                    direction: "ingress",
                    ..
                }
            ),
            "{auth:?}"
        );
    }

    #[test]
    fn http_rules_on_one_side_and_server_names_on_the_other_refuse_the_connection() {
        let (resolved, inventory) = sni_fixture();
        let both = BTreeSet::from([key("prod/app"), key("prod/db")]);
        let auth = authorize(
            &resolved,
            &inventory,
            |k| both.contains(k),
            &[],
            addr("10.0.1.10:40000"),
            addr("10.0.1.20:80"),
        );
        assert!(matches!(auth, Authorization::Refused { .. }), "{auth:?}");
        // Each side alone is what it is.
        let app = authorize(
            &resolved,
            &inventory,
            |k| *k == key("prod/app"),
            &[],
            addr("10.0.1.10:40000"),
            addr("10.0.1.20:80"),
        );
        assert!(matches!(app, Authorization::Requests { .. }), "{app:?}");
    }

    #[test]
    fn server_names_ports_are_redirect_targets_too() {
        let (resolved, inventory) = sni_fixture();
        let mut interfaces = Interfaces::new();
        interfaces.insert(key("prod/app"), (7, "tgp7".into()));
        interfaces.insert(key("prod/db"), (8, "tgp8".into()));
        let redirects = http_redirects(&resolved, &inventory, &interfaces);
        assert_eq!(redirects.ports, [(80, 80), (443, 443), (8443, 8443)]);
        let ingress: Vec<_> = redirects.ingress.iter().map(|t| t.ports).collect();
        assert_eq!(ingress, [(80, 80), (8443, 8443)]);
    }
}
