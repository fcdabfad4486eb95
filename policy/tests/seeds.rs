//! The three seed policies under testdata/policies, decided flow by flow
//! against testdata/endpoints.yaml.

use std::net::IpAddr;
use std::path::PathBuf;

use policy::resolve::L7Decision;
use policy::{
    Direction, Identity, Inventory, PeerRef, PolicySet, Protocol, Reason, ResolveOptions, Verdict,
};
use rstest::rstest;

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel)
}

struct World {
    set: PolicySet,
    inventory: Inventory,
}

fn world(policy_files: &[&str]) -> World {
    let paths: Vec<PathBuf> = policy_files
        .iter()
        .map(|f| testdata(&format!("policies/{f}")))
        .collect();
    let report = policy::load_paths(&paths);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    World {
        set: PolicySet::new(report.policies),
        inventory: Inventory::load(&testdata("endpoints.yaml")).expect("endpoints file"),
    }
}

/// Decides `subject`'s flow in `direction` with `peer` (a pod name, an IP, or
/// a DNS name standing for an IP learned for it).
fn decide(
    w: &World,
    subject: &str,
    direction: Direction,
    peer: &str,
    port: u16,
    proto: Protocol,
) -> policy::Decision {
    let resolved = w.set.resolve(&w.inventory, ResolveOptions::default());
    let ep = w
        .inventory
        .find(subject)
        .expect("subject is in the endpoints file");
    let names = [peer.to_string()];
    let peer_ref = if let Some(p) = w.inventory.find(peer) {
        PeerRef {
            identity: p.identity,
            ip: p.ips.first().copied(),
            names: &[],
        }
    } else if let Ok(ip) = peer.parse::<IpAddr>() {
        let identity = w.inventory.identity_of(ip);
        PeerRef {
            identity,
            ip: Some(ip),
            names: &[],
        }
    } else {
        PeerRef {
            identity: Identity::WORLD,
            ip: Some("203.0.113.7".parse().unwrap()),
            names: &names,
        }
    };
    resolved
        .endpoint(&ep.key)
        .unwrap()
        .decide(w.set.matcher(), direction, &peer_ref, port, proto)
}

use Direction::{Egress, Ingress};
use Protocol::{Tcp, Udp};

#[rstest]
#[case::egress_anything(Egress, "frontend", "1.1.1.1", 443, Tcp)]
#[case::egress_to_pod(Egress, "db", "frontend", 80, Tcp)]
#[case::ingress_from_pod(Ingress, "frontend", "db", 80, Tcp)]
#[case::ingress_from_world(Ingress, "payments", "8.8.8.8", 22, Tcp)]
#[case::dns(Egress, "payments", "coredns", 53, Udp)]
fn default_deny_all_denies_everything_in_prod(
    #[case] dir: Direction,
    #[case] subject: &str,
    #[case] peer: &str,
    #[case] port: u16,
    #[case] proto: Protocol,
) {
    let w = world(&["default-deny-all.yaml"]);
    let d = decide(&w, subject, dir, peer, port, proto);
    assert_eq!(
        d.verdict,
        Verdict::Denied,
        "{subject} {dir:?} {peer}:{port}"
    );
    assert_eq!(d.reason, Reason::DefaultDeny);
}

#[test]
fn default_deny_all_leaves_other_namespaces_alone() {
    let w = world(&["default-deny-all.yaml"]);
    let d = decide(&w, "web", Egress, "1.1.1.1", 443, Tcp);
    assert_eq!((d.verdict, d.reason), (Verdict::Allowed, Reason::NoPolicy));
}

#[test]
fn default_deny_all_still_lets_the_node_probe_pods() {
    let w = world(&["default-deny-all.yaml"]);
    let d = decide(&w, "db", Ingress, "192.168.0.1", 80, Tcp);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allowed, Reason::HostToLocal)
    );
    let remote = decide(&w, "db", Ingress, "192.168.0.2", 80, Tcp);
    assert_eq!(
        remote.verdict,
        Verdict::Denied,
        "only the local node is exempt"
    );
}

#[rstest]
#[case::frontend_port_80("frontend", 80, Tcp, Verdict::Allowed)]
#[case::frontend_other_port("frontend", 81, Tcp, Verdict::Denied)]
#[case::frontend_udp("frontend", 80, Udp, Verdict::Denied)]
#[case::intruder("intruder", 80, Tcp, Verdict::Denied)]
#[case::other_namespace("web", 80, Tcp, Verdict::Denied)]
fn frontend_to_db_l7_ingress(
    #[case] peer: &str,
    #[case] port: u16,
    #[case] proto: Protocol,
    #[case] want: Verdict,
) {
    let w = world(&["frontend-to-db-l7.yaml"]);
    let d = decide(&w, "db", Ingress, peer, port, proto);
    assert_eq!(
        d.verdict, want,
        "db ingress from {peer} {port}/{proto}: {d:?}"
    );
}

#[test]
fn frontend_to_db_l7_hands_the_http_rule_to_the_proxy() {
    let w = world(&["frontend-to-db-l7.yaml"]);
    let d = decide(&w, "db", Ingress, "frontend", 80, Tcp);
    let L7Decision::Http(rules) = &d.l7 else {
        panic!("expected an HTTP restriction, got {:?}", d.l7);
    };
    let allowed = |m: &str, p: &str| rules.iter().any(|r| r.matches(m, p, None, &[]));
    assert!(allowed("GET", "/api/v1/public-data"));
    assert!(
        !allowed("GET", "/api/v1/public-data/x"),
        "paths are anchored"
    );
    assert!(!allowed("GET", "/api/v1/admin"));
    assert!(!allowed("POST", "/api/v1/public-data"));
    assert!(!allowed("DELETE", "/api/v1/public-data"));
    assert_eq!(
        d.rule.unwrap().to_string(),
        "prod/frontend-to-db-l7 spec.ingress[0]"
    );
}

#[rstest]
#[case::stripe_443("api.stripe.com", 443, Tcp, Verdict::Allowed)]
#[case::stripe_443_case("API.Stripe.com.", 443, Tcp, Verdict::Allowed)]
#[case::stripe_80("api.stripe.com", 80, Tcp, Verdict::Denied)]
#[case::other_name("evil.example.com", 443, Tcp, Verdict::Denied)]
#[case::sub_name("x.api.stripe.com", 443, Tcp, Verdict::Denied)]
#[case::raw_ip("203.0.113.7", 443, Tcp, Verdict::Denied)]
#[case::dns_udp("coredns", 53, Udp, Verdict::Allowed)]
#[case::dns_tcp("coredns", 53, Tcp, Verdict::Allowed)]
#[case::dns_elsewhere("8.8.8.8", 53, Udp, Verdict::Denied)]
#[case::other_pod("db", 80, Tcp, Verdict::Denied)]
fn restrict_egress_to_stripe(
    #[case] peer: &str,
    #[case] port: u16,
    #[case] proto: Protocol,
    #[case] want: Verdict,
) {
    let w = world(&["restrict-egress-to-stripe.yaml"]);
    let d = decide(&w, "payments", Egress, peer, port, proto);
    assert_eq!(d.verdict, want, "payments -> {peer} {port}/{proto}: {d:?}");
}

#[test]
fn stripe_dns_rule_only_lets_the_api_name_be_queried() {
    let w = world(&["restrict-egress-to-stripe.yaml"]);
    let d = decide(&w, "payments", Egress, "coredns", 53, Udp);
    let L7Decision::Dns(ids) = &d.l7 else {
        panic!("expected a DNS restriction, got {:?}", d.l7);
    };
    let m = w.set.matcher();
    let queryable = |name: &str| m.matches(name).iter().any(|id| ids.contains(id));
    assert!(queryable("api.stripe.com"));
    assert!(queryable("API.STRIPE.COM."));
    assert!(!queryable("stripe.com"));
    assert!(!queryable("evil.example.com"));
}

#[test]
fn all_seeds_together() {
    let w = world(&[
        "default-deny-all.yaml",
        "frontend-to-db-l7.yaml",
        "restrict-egress-to-stripe.yaml",
    ]);
    // Allowed by a specific policy despite default deny.
    assert_eq!(
        decide(&w, "payments", Egress, "api.stripe.com", 443, Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        decide(&w, "frontend", Egress, "db", 80, Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        decide(&w, "db", Ingress, "frontend", 80, Tcp).verdict,
        Verdict::Allowed
    );
    // Still denied.
    assert_eq!(
        decide(&w, "frontend", Egress, "api.stripe.com", 443, Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        decide(&w, "db", Egress, "frontend", 80, Tcp).verdict,
        Verdict::Denied
    );
    assert_eq!(
        decide(&w, "payments", Ingress, "frontend", 443, Tcp).verdict,
        Verdict::Denied
    );
}

#[test]
fn audit_mode_reports_would_be_drops_and_passes_them() {
    let w = world(&["default-deny-all.yaml"]);
    let resolved = w.set.resolve(
        &w.inventory,
        ResolveOptions {
            audit: true,
            ..ResolveOptions::default()
        },
    );
    let ep = w.inventory.find("frontend").unwrap();
    let peer = PeerRef {
        identity: Identity::WORLD,
        ip: Some("1.1.1.1".parse().unwrap()),
        names: &[],
    };
    let d = resolved
        .endpoint(&ep.key)
        .unwrap()
        .decide(w.set.matcher(), Egress, &peer, 443, Tcp);
    assert_eq!((d.verdict, d.reason), (Verdict::Audit, Reason::DefaultDeny));
}
