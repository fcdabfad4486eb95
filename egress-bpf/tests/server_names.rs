//! `serverNames` compile to a redirect to the HTTP proxy (which reads the
//! ClientHello), on TCP only, as Cilium's `createL4Filter`
//! (pkg/policy/l4.go) makes such a port a `tls` proxy redirect.

use egress_bpf::abi;
use egress_bpf::desired::{compile, Interfaces};
use policy::{Inventory, PolicySet, ResolveOptions};

const ENDPOINTS: &str = "endpoints:
  - {name: app, namespace: prod, labels: {app: app}, ips: [10.0.1.10]}
";

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sni, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: '443'}], serverNames: [api.test]}]
  - toEntities: [world]
    toPorts: [{ports: [{port: '8443', protocol: TCP}]}]
";

#[test]
fn a_server_names_port_is_redirected_to_the_http_proxy_on_tcp_only() {
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let report = policy::parse_str(POLICY, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let mut interfaces = Interfaces::new();
    let key = inventory.find("prod/app").unwrap().key.clone();
    interfaces.insert(key, (7, "tgp7".into()));
    let compiled = compile(&resolved, &inventory, &interfaces);
    let entries: Vec<_> = compiled
        .state
        .allow
        .iter()
        .filter(|(k, _)| k.endpoint == 7 && k.identity == abi::ID_WORLD_IPV4)
        .map(|(k, v)| (k.protocol, k.port, k.port_bits, v.action, v.proxy))
        .collect();
    assert_eq!(
        entries,
        [
            (
                abi::PROTO_TCP,
                443,
                16,
                abi::ACTION_REDIRECT,
                abi::PROXY_HTTP
            ),
            (abi::PROTO_TCP, 8443, 16, abi::ACTION_ALLOW, abi::PROXY_NONE),
        ],
        "443/TCP goes to the proxy, nothing on UDP or SCTP (no ClientHello there)"
    );
}

/// Two rules on one peer and port, one plain and one with `serverNames`:
/// for a peer the datapath can name (here `world`) the plain allow wins, as
/// in the policy engine; for addresses learned through `toFQDNs` the map
/// cannot say which name admitted the address, so the port goes through
/// the proxy, which decides with the names.
#[test]
fn a_plain_allow_beats_a_redirect_except_for_learned_addresses() {
    let inventory = Inventory::parse(ENDPOINTS, "endpoints.yaml").unwrap();
    let report = policy::parse_str(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: both, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [api.test]}]
  - toEntities: [world]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  - toFQDNs: [{matchName: plain.test}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  - toFQDNs: [{matchName: tls.test}]
    toPorts: [{ports: [{port: '443', protocol: TCP}], serverNames: [tls.test]}]
",
        None,
    );
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let mut interfaces = Interfaces::new();
    let key = inventory.find("prod/app").unwrap().key.clone();
    interfaces.insert(key, (7, "tgp7".into()));
    let compiled = compile(&resolved, &inventory, &interfaces);
    let at_443 = |identity: u32| {
        compiled
            .state
            .allow
            .iter()
            .filter(|(k, _)| k.endpoint == 7 && k.identity == identity && k.port == 443)
            .map(|(_, v)| (v.action, v.proxy))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        at_443(abi::ID_WORLD_IPV4),
        [(abi::ACTION_ALLOW, abi::PROXY_NONE)]
    );
    assert_eq!(
        at_443(abi::ID_FQDN_RULE),
        [(abi::ACTION_REDIRECT, abi::PROXY_HTTP)]
    );
}
