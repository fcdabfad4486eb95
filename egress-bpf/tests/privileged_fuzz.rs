//! Fuzz target for the programs' packet inputs (root): arbitrary frames run
//! through the loaded `from_pod` and `to_pod` programs with
//! `BPF_PROG_TEST_RUN` (real maps: conntrack, fragments, counters, events),
//! against a policy with port rules, a deny, an FQDN grant, a DNS redirect
//! and L3 rules, with policy changes along the way. For every frame:
//!
//! 1. the kernel's verdict, skb mark and flow event equal the fake's
//!    (`FakeDatapath::handle`, which keeps conntrack and fragments as the
//!    programs do): the mirror and the C agree on every input;
//! 2. a frame the program passes has an L4 header an independent, unbounded
//!    RFC 8200 walk can reach (a later fragment aside: it passes only after
//!    its first did), so nothing is decided without the ports it carries;
//! 3. a new flow the program reports carries the ports that walk read.
//!
//! The verifier-approved program cannot crash the kernel; a failing syscall
//! (other than the kernel refusing a frame shorter than Ethernet) fails the
//! run. Frames are generated, not only mutated: coverage of BPF code is not
//! visible to a coverage-guided fuzzer, so structure (extension header
//! chains, fragments, ICMP errors quoting earlier packets, replies of
//! earlier packets) is drawn at random, then truncated or corrupted.
//!
//! Runs for `TOLLGATE_FUZZ_SECS` seconds (default 10) from seed
//! `TOLLGATE_FUZZ_SEED` (default: the clock; printed, so a failure can be
//! replayed). BENCHMARKS.md records the long runs.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use egress_bpf::abi;
use egress_bpf::desired::{compile, fqdn_entries, Interfaces, StateDiff};
use egress_bpf::fake::FakeVerdict;
use egress_bpf::{
    monotonic_now_ns, Datapath, FakeDatapath, FlowEvent, FlowReason, FlowVerdict, KernelDatapath,
    Monitor,
};
use fqdn_cache::{Config, FqdnCache, PolicyView, Time};
use policy::{EndpointKey, Inventory, PolicySet, ResolveOptions};
use testkit::frames::{self, Ext};
use testkit::{privileged, NetnsGuard, Sandbox};

/// xorshift64*: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const INVENTORY: &str = "endpoints:
  - {name: a, namespace: default, labels: {app: a}, ips: [10.0.1.10, 'fd00:1::10'], interface: tgfz0}
  - {name: b, namespace: default, labels: {app: b}, ips: [10.0.2.10, 'fd00:2::10'], interface: tgfz1}
nodes:
  - {name: node, local: true, ips: [10.0.1.1, 'fd00:1::1']}
";

const POLICY_A: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '8000', endPort: 8099, protocol: TCP}, {port: '9000', protocol: SCTP}, {port: '53', protocol: UDP}]}]
  - toCIDR: [198.51.100.53/32, '2001:db8::53/128']
    toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchPattern: '*'}]}}]
  - toFQDNs: [{matchName: api.test}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: b}}]
  egressDeny:
  - toEntities: [world]
    toPorts: [{ports: [{port: '22', protocol: TCP}]}]
  - toCIDR: [203.0.113.66/32]
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: b}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEntities: []}]
";

/// The policy change the run toggles: a's world port rule and b's ingress
/// block removed, a deny on 8000-8099 added.
const POLICY_A_CHANGED: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toCIDR: [198.51.100.53/32, '2001:db8::53/128']
    toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchPattern: '*'}]}}]
  - toFQDNs: [{matchName: api.test}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  egressDeny:
  - toEntities: [world]
    toPorts: [{ports: [{port: '8000', endPort: 8099, protocol: TCP}]}]
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
";

const A_V4: &str = "10.0.1.10";
const A_V6: &str = "fd00:1::10";

fn addrs(family6: bool) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let p = |s: &str| s.parse::<IpAddr>().unwrap();
    if family6 {
        (
            vec![p(A_V6), p("fe80::1"), p("fd00:2::10")],
            vec![
                p("2001:db8::10"),
                p("2001:db8::53"),
                p("2001:db8::50"),
                p("fd00:2::10"),
                p("fd00:1::1"),
            ],
        )
    } else {
        (
            vec![p(A_V4), p("10.0.2.10")],
            vec![
                p("203.0.113.10"),
                p("198.51.100.53"),
                p("203.0.113.50"),
                p("203.0.113.66"),
                p("10.0.2.10"),
                p("10.0.1.1"),
            ],
        )
    }
}

const PORTS: [u16; 10] = [22, 53, 80, 443, 8080, 8050, 9000, 40000, 40001, 0];

/// A generated packet before corruption, kept so that later ones can reply
/// to it or quote it.
#[derive(Clone)]
struct Sent {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    /// Egress (from the pod) or ingress.
    dir: u8,
}

fn l4(rng: &mut Rng, src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..rng.below(24)).map(|_| rng.next() as u8).collect();
    match proto {
        frames::PROTO_TCP => {
            let random = rng.next() as u8;
            let flags = *rng.pick(&[0x02u8, 0x10, 0x18, 0x11, 0x04, 0x12, random]);
            frames::tcp(src, dst, sport, dport, flags, &payload)
        }
        frames::PROTO_UDP => frames::udp(src, dst, sport, dport, &payload),
        132 => {
            let mut s = Vec::new();
            s.extend_from_slice(&sport.to_be_bytes());
            s.extend_from_slice(&dport.to_be_bytes());
            s.extend_from_slice(&[0u8; 8]);
            s.extend_from_slice(&payload);
            s
        }
        _ => payload,
    }
}

/// A random IPv6 extension header chain, sometimes past the parser's bound.
fn chain(rng: &mut Rng) -> Vec<Ext> {
    let n = match rng.below(10) {
        0..=4 => 0,
        5..=7 => rng.below(4),
        _ => rng.below(12),
    };
    (0..n)
        .map(|_| match rng.below(8) {
            0 => Ext::HopByHop,
            1 => Ext::Routing,
            2 => Ext::DestOpts,
            3 => Ext::Auth,
            4 => Ext::Fragment(
                *rng.pick(&[0u16, 0, 1, 8]),
                rng.chance(50),
                *rng.pick(&[1u32, 2, 3]),
            ),
            5 => Ext::Unknown(*rng.pick(&[150u8, 59, 50, 253])),
            _ => Ext::DestOpts,
        })
        .collect()
}

/// One frame to run, the direction to run it in, and its skb mark.
fn generate(rng: &mut Rng, history: &mut Vec<Sent>) -> (Vec<u8>, u8, u32) {
    let mark = if rng.chance(5) {
        abi::MARK_FROM_PROXY
    } else {
        0
    };
    if rng.chance(2) {
        // Not IP at all, or garbage.
        let len = 14 + rng.below(80) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.chance(50) {
            let ethertype: [u8; 2] =
                *rng.pick(&[[0x08, 0x06], [0x81, 0x00], [0x08, 0x00], [0x86, 0xdd]]);
            f[12..14].copy_from_slice(&ethertype);
        }
        return (f, *rng.pick(&[abi::DIR_EGRESS, abi::DIR_INGRESS]), mark);
    }
    let six = rng.chance(55);
    let (own, peers) = addrs(six);
    // A reply to, an ICMP error about, or a replay of an earlier packet.
    let earlier = (!history.is_empty() && rng.chance(35))
        .then(|| history[rng.below(history.len() as u64) as usize].clone())
        .filter(|s| s.src.is_ipv6() == six);
    let icmp_proto = if six {
        frames::PROTO_ICMPV6
    } else {
        frames::PROTO_ICMP
    };
    let mut sent = match (&earlier, rng.below(3)) {
        (Some(e), 0) => Sent {
            src: e.dst,
            dst: e.src,
            sport: e.dport,
            dport: e.sport,
            dir: if e.dir == abi::DIR_EGRESS {
                abi::DIR_INGRESS
            } else {
                abi::DIR_EGRESS
            },
            ..e.clone()
        },
        (Some(e), 1) => e.clone(),
        _ => {
            let dir = *rng.pick(&[abi::DIR_EGRESS, abi::DIR_INGRESS]);
            let (mine, peer) = (*rng.pick(&own), *rng.pick(&peers));
            let (src, dst) = if dir == abi::DIR_EGRESS {
                (mine, peer)
            } else {
                (peer, mine)
            };
            Sent {
                src,
                dst,
                proto: *rng.pick(&[frames::PROTO_TCP, frames::PROTO_UDP, 132, icmp_proto, 47]),
                sport: *rng.pick(&PORTS),
                dport: *rng.pick(&PORTS),
                dir,
            }
        }
    };
    let mut segment = match sent.proto {
        frames::PROTO_ICMP | frames::PROTO_ICMPV6 => {
            let error_types: &[u8] = if six { &[1, 2, 3, 4] } else { &[3, 11, 12] };
            if let (Some(e), true) = (&earlier, rng.chance(60)) {
                // An error about an earlier packet (its own or the reply).
                let quoted_l4 = l4(rng, e.src, e.dst, e.proto, e.sport, e.dport);
                let quoted = frames::ip(e.src, e.dst, e.proto, &quoted_l4);
                let cut = quoted.len().min(28 + rng.below(48) as usize);
                // The error goes back to the quoted packet's sender.
                sent.dst = if rng.chance(80) { e.src } else { sent.dst };
                sent.src = if rng.chance(80) { e.dst } else { sent.src };
                sent.dir = if own.contains(&sent.src) {
                    abi::DIR_EGRESS
                } else {
                    abi::DIR_INGRESS
                };
                frames::icmp(
                    sent.src,
                    sent.dst,
                    *rng.pick(error_types),
                    0,
                    [0; 4],
                    &quoted[..cut],
                )
            } else {
                let kind = if six {
                    *rng.pick(&[128u8, 129, 1, 2, 135, 136, 143, 200])
                } else {
                    *rng.pick(&[8u8, 0, 3, 11, 13, 5])
                };
                let id = sent.sport.to_be_bytes();
                frames::icmp(sent.src, sent.dst, kind, 0, [id[0], id[1], 0, 1], b"ping")
            }
        }
        proto => l4(rng, sent.src, sent.dst, proto, sent.sport, sent.dport),
    };
    if rng.chance(5) {
        segment.truncate(rng.below(segment.len() as u64 + 1) as usize);
    }
    let packet = if six {
        frames::ipv6_chain(sent.src, sent.dst, &chain(rng), sent.proto, &segment)
    } else if rng.chance(15) {
        // IPv4 fragments: a first one, or a later one of a datagram.
        let id = *rng.pick(&[1u16, 2, 3]);
        if rng.chance(50) {
            frames::ipv4(sent.src, sent.dst, sent.proto, (id, 0, true), &segment)
        } else {
            frames::ipv4(
                sent.src,
                sent.dst,
                sent.proto,
                (id, 1 + rng.below(8) as u16, rng.chance(30)),
                &segment,
            )
        }
    } else {
        frames::ip(sent.src, sent.dst, sent.proto, &segment)
    };
    let mut frame = frames::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], &packet);
    // Corruption: a truncated frame, or a few bytes flipped.
    if rng.chance(8) {
        frame.truncate(14 + rng.below(frame.len() as u64 - 13) as usize);
    }
    if rng.chance(8) {
        for _ in 0..1 + rng.below(3) {
            let i = 14 + rng.below(frame.len().saturating_sub(14).max(1) as u64) as usize;
            if i < frame.len() {
                frame[i] ^= 1 << rng.below(8);
            }
        }
    }
    history.push(sent.clone());
    if history.len() > 64 {
        history.remove(0);
    }
    (frame, sent.dir, mark)
}

/// What an independent RFC 8200 walk (no bound on the chain) finds in an IP
/// frame: `Some(Some((proto, sport, dport)))` for an L4 header with ports,
/// `Some(None)` for one without (ICMP, other protocols, a later fragment,
/// ND), `None` where no L4 header can be reached.
fn reachable_l4(frame: &[u8]) -> Option<Option<(u8, u16, u16)>> {
    let ports = |proto: u8, at: usize| -> Option<Option<(u8, u16, u16)>> {
        match proto {
            6 | 17 | 132 => {
                let p = frame.get(at..at + 4)?;
                Some(Some((
                    proto,
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                )))
            }
            1 | 58 => frame.get(at).map(|_| None),
            _ => Some(None),
        }
    };
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            let flags = u16::from_be_bytes([*frame.get(20)?, *frame.get(21)?]);
            if flags & 0x1fff != 0 {
                return Some(None);
            }
            ports(*frame.get(23)?, 14 + ihl)
        }
        0x86dd => {
            let mut next = *frame.get(20)?;
            let mut at = 54;
            loop {
                match next {
                    0 | 43 | 60 | 135 | 139 | 140 | 253 | 254 => {
                        next = *frame.get(at)?;
                        at += (usize::from(*frame.get(at + 1)?) + 1) * 8;
                    }
                    51 => {
                        next = *frame.get(at)?;
                        at += (usize::from(*frame.get(at + 1)?) + 2) * 4;
                    }
                    44 => {
                        let off = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
                        if off & 0xfff8 != 0 {
                            return Some(None);
                        }
                        next = *frame.get(at)?;
                        at += 8;
                    }
                    6 | 17 | 132 | 58 => return ports(next, at),
                    // ESP, no next header, unknown: nothing readable after.
                    _ => return None,
                }
            }
        }
        _ => Some(None),
    }
}

/// An IPv4 or IPv6 frame too short for its fixed IP header.
fn short_ip_header(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() < 14 + 20,
        Some([0x86, 0xdd]) => frame.len() < 14 + 40,
        _ => false,
    }
}

struct Harness {
    dp: KernelDatapath,
    fake: FakeDatapath,
    inventory: Inventory,
    interfaces: Interfaces,
    cache: FqdnCache,
}

impl Harness {
    fn apply_policy(&mut self, yaml: &str) {
        let report = policy::parse_str(yaml, None);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        let resolved =
            PolicySet::new(report.policies).resolve(&self.inventory, ResolveOptions::default());
        self.cache.set_view(PolicyView::from_resolved(&resolved));
        let mut desired = compile(&resolved, &self.inventory, &self.interfaces).state;
        let interfaces = self.interfaces.clone();
        desired.fqdn = fqdn_entries(&self.cache.full_state(), |k| {
            interfaces.get(k).map(|(i, _)| *i)
        });
        let diff = self.dp.current().unwrap().diff(&desired);
        self.dp.apply(&diff).expect("apply to the kernel");
        self.fake.apply(&diff).expect("apply to the fake");
    }

    fn learn(&mut self, name: &str, ips: &[&str]) {
        let a = EndpointKey {
            namespace: "default".into(),
            name: "a".into(),
        };
        let answers: Vec<(IpAddr, u32)> =
            ips.iter().map(|i| (i.parse().unwrap(), 86_400)).collect();
        let diff = self
            .cache
            .learn(Time(monotonic_now_ns()), &a, name, &answers);
        let interfaces = self.interfaces.clone();
        let fqdn = StateDiff::from_fqdn(&diff, |k| interfaces.get(k).map(|(i, _)| *i));
        self.dp.apply(&fqdn).unwrap();
        self.fake.apply(&fqdn).unwrap();
    }

    /// Forgets every flow on both sides (fragments stay: their few keys
    /// never fill the map, and they do not age).
    fn flush_flows(&mut self) {
        self.dp.gc_conntrack(u64::MAX).unwrap();
        assert_eq!(self.dp.conntrack_len(), 0);
        self.fake.packets.conntrack.clear();
    }
}

fn event_of(events: &[FlowEvent]) -> Option<(FlowVerdict, FlowReason)> {
    events.last().map(|e| (e.verdict, e.reason))
}

#[test]
fn privileged_fuzz_programs_agree_with_the_fake_and_never_pass_unreadable_l4() {
    if !privileged() {
        return;
    }
    let secs: u64 = std::env::var("TOLLGATE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("TOLLGATE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| monotonic_now_ns() | 1);
    eprintln!("fuzz: {secs} s from seed {seed} (TOLLGATE_FUZZ_SEED={seed} replays it)");

    let sb = Sandbox::new("fuzz");
    // Veths with both ends in the node stand for the pods' (test runs need
    // an interface; nothing is sent, and IPv6 is off so that the kernel
    // sends nothing either): a, b, and one without an endpoint.
    sb.sh(
        &sb.node,
        "for i in 0 1 2; do ip link add tgfz$i type veth peer name tgfz${i}p; \
         for d in tgfz$i tgfz${i}p; do sysctl -qw net.ipv6.conf.$d.disable_ipv6=1; ip link set $d up; done; done",
    );
    let _in_node = NetnsGuard::enter(&sb.node);
    let ifindex = |name: &str| egress_bpf::kernel::ifindex(name).unwrap();
    let inventory = Inventory::parse(INVENTORY, "fuzz").unwrap();
    let interfaces: Interfaces = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = format!("tgfz{i}");
            (
                EndpointKey {
                    namespace: "default".into(),
                    name: (*n).into(),
                },
                (ifindex(&name), name),
            )
        })
        .collect();
    let endpoints = [ifindex("tgfz0"), ifindex("tgfz1"), ifindex("tgfz2")];
    let mut h = Harness {
        dp: KernelDatapath::open(&sb.pin_dir).expect("load the datapath"),
        fake: FakeDatapath::default(),
        cache: FqdnCache::new(Config::default(), PolicyView::default()),
        inventory,
        interfaces,
    };
    h.apply_policy(POLICY_A);
    h.learn("api.test", &["203.0.113.50", "2001:db8::50"]);
    assert_eq!(
        h.dp.current().unwrap(),
        h.fake.state,
        "kernel and fake start from the same maps"
    );

    let mut rng = Rng(seed);
    let mut history = Vec::new();
    let (mut runs, mut passed, mut refused, mut changes) = (0u64, 0u64, 0u64, 0u64);
    let mut by_reason: std::collections::BTreeMap<String, u64> = Default::default();
    let start = Instant::now();
    let mut last_flush = Instant::now();
    let mut changed = false;
    while start.elapsed() < Duration::from_secs(secs) {
        if last_flush.elapsed() > Duration::from_secs(5) {
            h.flush_flows();
            last_flush = Instant::now();
        }
        if rng.chance(1) && rng.chance(5) {
            changed = !changed;
            h.apply_policy(if changed { POLICY_A_CHANGED } else { POLICY_A });
            changes += 1;
        }
        let (frame, dir, mark) = generate(&mut rng, &mut history);
        let ifindex = if rng.chance(85) {
            endpoints[0]
        } else {
            *rng.pick(&endpoints)
        };
        let now = monotonic_now_ns();
        let kernel = match h.dp.test_run(dir, &frame, ifindex, mark) {
            Ok(v) => v,
            // The test harness (not the program) refuses an IP frame whose
            // IP header is cut short; a veth would hand it to the program,
            // whose loads then fail (parse.h: TG_PARSE_UNSUPPORTED).
            Err(e) if e.errno() == Some(libc::EINVAL) && short_ip_header(&frame) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!(
                "seed {seed}: test run failed on {frame:02x?}: {e} (errno {:?})",
                e.errno()
            ),
        };
        let events = h.dp.poll_events(16).unwrap();
        let mut fake: FakeVerdict = h.fake.handle(&frame, ifindex, dir, mark, now);
        // A frame that is not IP has no addresses: the program's event for
        // it (no endpoint) cannot be decoded into a FlowEvent.
        if egress_bpf::fake::packet::parse(&frame) == egress_bpf::fake::packet::Parsed::Unsupported
        {
            fake.event = None;
        }
        runs += 1;
        let kernel_event = event_of(&events);
        assert!(
            events.len() <= 1,
            "seed {seed}: one frame, more than one event: {events:?}"
        );
        assert_eq!(
            (kernel.passed, kernel.mark, kernel_event),
            (fake.passed, fake.mark, fake.event),
            "seed {seed}, run {runs}: kernel (left) and fake (right) disagree on {} frame on ifindex {ifindex} mark {mark:#x}: {frame:02x?}",
            if dir == abi::DIR_EGRESS { "an egress" } else { "an ingress" },
        );
        if let Some((_, reason)) = kernel_event {
            *by_reason.entry(format!("{reason:?}")).or_default() += 1;
        }
        if !kernel.passed {
            continue;
        }
        passed += 1;
        let Some(l4) = reachable_l4(&frame) else {
            panic!("seed {seed}: passed a frame whose L4 header cannot be reached: {frame:02x?}");
        };
        if let (Some((_, _, dport)), Some(e)) = (l4, events.last()) {
            if matches!(e.verdict, FlowVerdict::Allowed | FlowVerdict::Redirected)
                && matches!(e.reason, FlowReason::AllowRule | FlowReason::Fqdn)
            {
                assert_eq!(
                    e.dport, dport,
                    "seed {seed}: a new flow decided on ports it did not carry: {frame:02x?}"
                );
            }
        }
    }
    let counters = h.dp.counters().unwrap();
    eprintln!(
        "fuzz: {runs} frames in {:.1} s ({:.0}/s), {passed} passed, {changes} policy changes, \
         {refused} refused by the kernel; events by reason {by_reason:?}; counters {counters:?}",
        start.elapsed().as_secs_f64(),
        runs as f64 / start.elapsed().as_secs_f64()
    );
    assert!(runs > 1000, "the run made progress");
    for reason in [
        "Spoofed",
        "IcmpUnrelated",
        "L4Unreachable",
        "DenyRule",
        "AllowRule",
    ] {
        assert!(
            by_reason.contains_key(reason),
            "the generator reaches {reason}: {by_reason:?}"
        );
    }
    assert!(counters.get("pass_related") > 0 && counters.get("ct_recheck") > 0);
}
