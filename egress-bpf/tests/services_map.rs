//! What `compile` writes to the Services map, without the kernel (the
//! privileged `privileged_services.rs` shows the programs using it): which
//! frontends are translated, with which backends, and the map key a
//! frontend is stored under. (Mutation testing found these unpinned; see
//! TESTING.md.)

use std::net::IpAddr;

use egress_bpf::abi;
use egress_bpf::desired::{compile, service_key, Frontend, Interfaces};
use policy::{Inventory, PolicySet, ResolveOptions};

fn compiled_services(inventory: &str) -> std::collections::BTreeMap<Frontend, Vec<(IpAddr, u16)>> {
    let inventory = Inventory::parse(inventory, "endpoints.yaml").unwrap();
    let resolved = PolicySet::new(Vec::new()).resolve(&inventory, ResolveOptions::default());
    compile(&resolved, &inventory, &Interfaces::new())
        .state
        .services
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn frontend(addr: &str, protocol: u8, port: u16) -> Frontend {
    Frontend {
        ip: ip(addr),
        protocol,
        port,
    }
}

/// Every ClusterIP of a Service, for its TCP and UDP ports, goes to the
/// backends of its own family at their target port; SCTP ports are left to
/// kube-proxy (the programs cannot patch SCTP's checksum).
#[test]
fn tcp_and_udp_frontends_of_both_families_are_translated_and_sctp_is_not() {
    let services = compiled_services(
        "endpoints:
  - {name: dns-0, namespace: kube-system, labels: {k8s-app: kube-dns}, ips: [10.0.0.10, 'fd00::10']}
services:
  - name: kube-dns
    namespace: kube-system
    ips: [10.96.0.10, 'fd00:96::a']
    selector: {k8s-app: kube-dns}
    ports:
      - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
      - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5354}
      - {name: sig, port: 2905, protocol: SCTP}
",
    );
    let expected = [
        (
            frontend("10.96.0.10", abi::PROTO_TCP, 53),
            ("10.0.0.10", 5354),
        ),
        (
            frontend("10.96.0.10", abi::PROTO_UDP, 53),
            ("10.0.0.10", 5353),
        ),
        (
            frontend("fd00:96::a", abi::PROTO_TCP, 53),
            ("fd00::10", 5354),
        ),
        (
            frontend("fd00:96::a", abi::PROTO_UDP, 53),
            ("fd00::10", 5353),
        ),
    ];
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        expected
            .iter()
            .map(|(f, (b, p))| (*f, vec![(ip(b), *p)]))
            .collect::<Vec<_>>()
    );
}

/// The map value has room for `abi::SVC_BACKENDS` backends: a Service with
/// more keeps the first in address order rather than failing the write.
#[test]
fn a_frontend_keeps_the_first_backends_that_fit_the_map() {
    let n = abi::SVC_BACKENDS + 6;
    let listed: Vec<String> = (0..n)
        .rev()
        .map(|i| format!("{{ip: 10.1.{}.{}}}", i / 200, i % 200 + 1))
        .collect();
    let services = compiled_services(&format!(
        "services:
  - name: big
    namespace: default
    ips: [10.96.0.7]
    ports: [{{port: 8080, protocol: TCP}}]
    backends: [{}]
",
        listed.join(", ")
    ));
    let backends = &services[&frontend("10.96.0.7", abi::PROTO_TCP, 8080)];
    let first: Vec<(IpAddr, u16)> = (0..abi::SVC_BACKENDS)
        .map(|i| (ip(&format!("10.1.{}.{}", i / 200, i % 200 + 1)), 8080))
        .collect();
    assert_eq!(*backends, first);
}

/// The key the programs look a packet's destination up by: family,
/// protocol, the port in network byte order, the address (IPv4 in the
/// first four bytes).
#[test]
fn a_frontend_is_stored_under_its_family_protocol_port_and_address() {
    let v4 = service_key(&frontend("10.96.0.10", abi::PROTO_UDP, 53));
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[10, 96, 0, 10]);
    assert_eq!(
        v4,
        abi::ServiceKey {
            family: 4,
            protocol: abi::PROTO_UDP,
            port: 53u16.to_be(),
            addr,
        }
    );
    let v6 = service_key(&frontend("fd00:96::a", abi::PROTO_TCP, 443));
    assert_eq!(
        (v6.family, v6.protocol, u16::from_be(v6.port)),
        (6, abi::PROTO_TCP, 443)
    );
    let v6_addr: std::net::Ipv6Addr = "fd00:96::a".parse().unwrap();
    assert_eq!(v6.addr, v6_addr.octets());
}
