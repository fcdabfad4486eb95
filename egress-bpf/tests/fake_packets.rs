//! The fake's per-packet decision (`FakeDatapath::handle`, the mirror of
//! `tg_handle` that the privileged fuzz target checks against the kernel),
//! unprivileged: the rules of issue 13 as the fake applies them to frames.

use std::net::IpAddr;

use egress_bpf::desired::{compile, Interfaces};
use egress_bpf::{abi, Datapath, FakeDatapath, FlowReason, FlowVerdict};
use policy::{EndpointKey, Inventory, PolicySet, ResolveOptions};
use testkit::frames::{self, Ext, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SYN};

const A: u32 = 10;
const INVENTORY: &str = "endpoints:
  - {name: a, namespace: default, labels: {app: a}, ips: [10.0.1.10, 'fd00:1::10'], interface: veth-a}
";

fn policy(egress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: a, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: a}}}}\n  ingress: [{{fromEntities: []}}]\n  egress:\n{egress}"
    )
}

const ALLOW_9000: &str = "  - toEntities: [world]\n    toPorts: [{ports: [{port: '9000', protocol: UDP}, {port: '9000', protocol: TCP}]}]\n";

fn load(fake: &mut FakeDatapath, yaml: &str) {
    let report = policy::parse_str(yaml, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let inventory = Inventory::parse(INVENTORY, "test").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let interfaces: Interfaces = [(
        EndpointKey {
            namespace: "default".into(),
            name: "a".into(),
        },
        (A, "veth-a".to_string()),
    )]
    .into();
    let state = compile(&resolved, &inventory, &interfaces).state;
    let diff = fake.state.diff(&state);
    fake.apply(&diff).unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn frame(packet: &[u8]) -> Vec<u8> {
    frames::ethernet([2; 6], [4; 6], packet)
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    frame(&frames::ip(
        s,
        d,
        PROTO_UDP,
        &frames::udp(s, d, sport, dport, b"x"),
    ))
}

type Outcome = (bool, Option<(FlowVerdict, FlowReason)>);

fn run(fake: &mut FakeDatapath, f: &[u8], dir: u8) -> Outcome {
    let v = fake.handle(f, A, dir, 0, 1_000_000_000);
    (v.passed, v.event)
}

const DENIED: fn(FlowReason) -> Outcome = |r| (false, Some((FlowVerdict::Denied, r)));
const OUT: u8 = abi::DIR_EGRESS;
const IN: u8 = abi::DIR_INGRESS;

#[test]
fn spoofed_sources_are_dropped_and_own_ones_decided() {
    let mut fake = FakeDatapath::default();
    load(&mut fake, &policy(ALLOW_9000));
    assert_eq!(
        run(
            &mut fake,
            &udp("10.0.2.10", 5555, "203.0.113.10", 9000),
            OUT
        ),
        DENIED(FlowReason::Spoofed)
    );
    assert_eq!(
        run(
            &mut fake,
            &udp("10.0.1.10", 5555, "203.0.113.10", 9000),
            OUT
        ),
        (true, Some((FlowVerdict::Allowed, FlowReason::AllowRule)))
    );
    // Link-local is the pod's own whatever the inventory says.
    let (s, d) = (ip("fe80::1"), ip("2001:db8::10"));
    let ll = frame(&frames::ip(
        s,
        d,
        PROTO_UDP,
        &frames::udp(s, d, 1, 9000, b""),
    ));
    assert_ne!(run(&mut fake, &ll, OUT), DENIED(FlowReason::Spoofed));
}

#[test]
fn icmp_errors_pass_for_their_flow_only() {
    let mut fake = FakeDatapath::default();
    load(&mut fake, &policy(ALLOW_9000));
    run(
        &mut fake,
        &udp("10.0.1.10", 5555, "203.0.113.10", 9000),
        OUT,
    );
    let error = |quoted_sport: u16| {
        let (pod, ext) = (ip("10.0.1.10"), ip("203.0.113.10"));
        let quoted = frames::ip(
            pod,
            ext,
            PROTO_UDP,
            &frames::udp(pod, ext, quoted_sport, 9000, b""),
        );
        frame(&frames::ip(
            ext,
            pod,
            PROTO_ICMP,
            &frames::icmp(ext, pod, 3, 3, [0; 4], &quoted),
        ))
    };
    assert_eq!(run(&mut fake, &error(5555), IN), (true, None));
    assert_eq!(
        run(&mut fake, &error(5556), IN),
        DENIED(FlowReason::IcmpUnrelated)
    );
}

#[test]
fn established_flows_are_cut_by_a_policy_change_in_both_directions() {
    let mut fake = FakeDatapath::default();
    load(&mut fake, &policy(ALLOW_9000));
    let out = udp("10.0.1.10", 5555, "203.0.113.10", 9000);
    let reply = udp("203.0.113.10", 9000, "10.0.1.10", 5555);
    assert!(run(&mut fake, &out, OUT).0);
    assert_eq!(run(&mut fake, &reply, IN), (true, None));
    assert_eq!(run(&mut fake, &out, OUT), (true, None), "established");
    load(&mut fake, &policy("  - toCIDR: [198.51.100.1/32]\n"));
    assert_eq!(
        run(&mut fake, &out, OUT),
        DENIED(FlowReason::DefaultDeny),
        "the allow went: the flow's own packets are cut"
    );
    assert_eq!(
        run(&mut fake, &reply, IN),
        DENIED(FlowReason::DefaultDeny),
        "the cut flow is gone: the peer's packet is a new flow, which a's ingress denies"
    );
}

#[test]
fn hidden_l4_headers_and_lone_fragments_are_dropped() {
    let mut fake = FakeDatapath::default();
    load(&mut fake, &policy(ALLOW_9000));
    let (s, d) = (ip("fd00:1::10"), ip("2001:db8::10"));
    let syn = frames::tcp(s, d, 40000, 9000, SYN, b"");
    let chain = |n: usize| {
        frame(&frames::ipv6_chain(
            s,
            d,
            &vec![Ext::DestOpts; n],
            PROTO_TCP,
            &syn,
        ))
    };
    assert_eq!(
        run(&mut fake, &chain(8), OUT),
        (true, Some((FlowVerdict::Allowed, FlowReason::AllowRule)))
    );
    assert_eq!(
        run(&mut fake, &chain(9), OUT),
        DENIED(FlowReason::L4Unreachable)
    );
    let first = frame(&frames::ipv6_chain(
        s,
        d,
        &[Ext::Fragment(0, true, 9)],
        PROTO_TCP,
        &frames::tcp(s, d, 40001, 9000, SYN, &[0; 12]),
    ));
    let later = frame(&frames::ipv6_chain(
        s,
        d,
        &[Ext::Fragment(4, false, 9)],
        PROTO_TCP,
        b"rest",
    ));
    let lone = frame(&frames::ipv6_chain(
        s,
        d,
        &[Ext::Fragment(4, false, 10)],
        PROTO_TCP,
        b"rest",
    ));
    assert!(run(&mut fake, &first, OUT).0);
    assert_eq!(
        run(&mut fake, &later, OUT),
        (true, None),
        "follows its first"
    );
    assert_eq!(
        run(&mut fake, &lone, OUT),
        DENIED(FlowReason::L4Unreachable)
    );
}
