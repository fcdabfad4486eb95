//! Privileged datapath tests: the real programs on real veths in fresh
//! network namespaces, driven with policies as users write them, checked with
//! `curl`, `ping`, `dig` and long-lived TCP streams from inside the pods.
//!
//! Root is required; without it these tests fail unless
//! `TOLLGATE_SKIP_PRIVILEGED=1` is set (see `testkit::privileged`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use egress_bpf::desired::{compile, Interfaces, StateDiff};
use egress_bpf::redirect::{self, RedirectConfig};
use egress_bpf::{monotonic_now_ns, Datapath, FlowReason, FlowVerdict, KernelDatapath, Monitor};
use fqdn_cache::{Config, FqdnCache, PolicyView, Time};
use policy::{EndpointKey, Inventory, PolicySet, ResolveOptions, Resolved};
use testkit::{privileged, NetnsGuard, Pod, Sandbox, EXT_V6};

/// The datapath of one sandbox, driven from inside its node namespace.
struct Node {
    dp: KernelDatapath,
    interfaces: Interfaces,
    cache: FqdnCache,
    _in_node: NetnsGuard,
}

fn inventory_yaml(sb: &Sandbox, audit: &[&str]) -> String {
    let mut y = String::from("endpoints:\n");
    for p in &sb.pods {
        y.push_str(&format!(
            "  - {{name: {0}, namespace: default, labels: {{app: {0}}}, ips: [{1}, \"{2}\"], audit: {3}, interface: {4}}}\n",
            p.name,
            p.v4,
            p.v6,
            audit.contains(&p.name.as_str()),
            p.host_if
        ));
    }
    let mut node_ips: Vec<String> = vec!["203.0.113.1".into(), "198.51.100.1".into()];
    node_ips.extend(sb.pods.iter().map(|p| p.gateway_v4.to_string()));
    y.push_str(&format!(
        "nodes:\n  - {{name: node, local: true, ips: [{}]}}\n",
        node_ips.join(", ")
    ));
    y
}

const BOOT: &str = "test-boot";

fn cache_config() -> Config {
    Config {
        min_ttl: 0,
        ttl_floor: 0,
        ..Config::default()
    }
}

fn enforce(sb: &Sandbox, policies: &str, audit: &[&str]) -> Node {
    enforce_restoring(sb, policies, audit, None)
}

/// What the agent does at start: load (adopting pins), restore its FQDN
/// cache from `saved` if given, and reconcile the maps with policy + cache.
fn enforce_restoring(sb: &Sandbox, policies: &str, audit: &[&str], saved: Option<&[u8]>) -> Node {
    let guard = NetnsGuard::enter(&sb.node);
    let mut dp = KernelDatapath::open(&sb.pin_dir).expect("load the datapath");
    let (resolved, interfaces) = resolve(sb, policies, audit);
    let view = PolicyView::from_resolved(&resolved);
    let now = Time(monotonic_now_ns());
    let cache = match saved {
        Some(bytes) => {
            fqdn_cache::persist::decode(bytes, cache_config(), view, now, BOOT)
                .expect("restore")
                .0
        }
        None => FqdnCache::new(cache_config(), view),
    };
    let mut desired = compile(
        &resolved,
        &Inventory::parse(&inventory_yaml(sb, audit), "test").unwrap(),
        &interfaces,
    )
    .state;
    desired.fqdn = egress_bpf::desired::fqdn_entries(&cache.full_state(), |k| {
        interfaces.get(k).map(|(i, _)| *i)
    });
    let diff = dp.current().unwrap().diff(&desired);
    dp.apply(&diff).expect("apply policy");
    Node {
        dp,
        interfaces,
        cache,
        _in_node: guard,
    }
}

fn resolve(sb: &Sandbox, policies: &str, audit: &[&str]) -> (Resolved, Interfaces) {
    let report = policy::parse_str(policies, None);
    assert!(
        !report.has_errors(),
        "test policy is invalid: {:?}",
        report.diagnostics
    );
    let inventory = Inventory::parse(&inventory_yaml(sb, audit), "test").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let interfaces: Interfaces = sb
        .pods
        .iter()
        .map(|p| (key(p), (sb.ifindex(&p.host_if), p.host_if.clone())))
        .collect();
    (resolved, interfaces)
}

fn key(p: &Pod) -> EndpointKey {
    EndpointKey {
        namespace: "default".into(),
        name: p.name.clone(),
    }
}

impl Node {
    /// What the DNS proxy will do: learn an answer and write it.
    fn learn(&mut self, pod: &Pod, name: &str, answers: &[(&str, u32)]) {
        let answers: Vec<(IpAddr, u32)> = answers
            .iter()
            .map(|(a, t)| (a.parse().unwrap(), *t))
            .collect();
        let diff = self
            .cache
            .learn(Time(monotonic_now_ns()), &key(pod), name, &answers);
        let interfaces = self.interfaces.clone();
        let fqdn = StateDiff::from_fqdn(&diff, |k| interfaces.get(k).map(|(i, _)| *i));
        assert!(
            !fqdn.is_empty(),
            "learning {name} for {} should write the FQDN map",
            pod.name
        );
        self.dp.apply(&fqdn).expect("write FQDN entries");
    }
}

fn cnp(name: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{body}")
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().unwrap(), port)
}

#[test]
fn privileged_l3_identity_allow_and_deny() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("l3");
    let a = sb.pod("a");
    let b = sb.pod("b");
    let c = sb.pod("c");
    let b_ns = b.netns.clone();
    sb.http_server(&b_ns, 80, &b.v4.to_string());
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    let policies = cnp("a-to-b", "endpointSelector: {matchLabels: {app: a}}\negress:\n- toEndpoints: [{matchLabels: {app: b}}]")
        + &cnp("b-from-a", "endpointSelector: {matchLabels: {app: b}}\ningress:\n- fromEndpoints: [{matchLabels: {app: a}}]");
    let _node = enforce(&sb, &policies, &[]);
    assert!(
        sb.curl(&a, &b.v4.to_string(), 80),
        "a -> b is allowed by identity"
    );
    assert!(sb.curl(&a, &b.v6.to_string(), 80), "a -> b over IPv6 too");
    assert!(
        !sb.curl(&a, "203.0.113.10", 80),
        "a -> world is default-denied"
    );
    assert!(
        !sb.curl(&c, &b.v4.to_string(), 80),
        "c -> b is refused by b's ingress policy"
    );
    assert!(sb.curl(&c, "203.0.113.10", 80), "c has no policy: open");
}

#[test]
fn privileged_l4_ports_and_ranges() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("l4");
    let a = sb.pod("a");
    let ext = sb.ext.clone();
    for port in [80, 8080, 8100] {
        sb.http_server(&ext, port, "203.0.113.10");
    }
    let policies = cnp(
        "ports",
        "endpointSelector: {matchLabels: {app: a}}\negress:\n- toEntities: [world]\n  toPorts: [{ports: [{port: '8000', endPort: 8099, protocol: TCP}]}]",
    );
    let _node = enforce(&sb, &policies, &[]);
    assert!(
        sb.curl(&a, "203.0.113.10", 8080),
        "8080 is inside 8000-8099"
    );
    assert!(
        !sb.curl(&a, "203.0.113.10", 8100),
        "8100 is outside the range"
    );
    assert!(!sb.curl(&a, "203.0.113.10", 80), "80 is outside the range");
    assert!(
        !sb.ping(&a, "203.0.113.10"),
        "a port rule does not allow ICMP"
    );
}

/// `icmps` rules (Cilium: pkg/policy/api/icmp.go, an ICMP rule is a port
/// rule whose port is the type): the control first (a rule for another type
/// leaves ping blocked), then the type allowed by number and by name, both
/// families, at ingress too, and an ICMP deny rule beating an allow-all.
#[test]
fn privileged_icmp_rules_allow_and_deny_types() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("icmp");
    let a = sb.pod("a");
    let b = sb.pod("b");
    let ext = "203.0.113.10";
    let ext_ns = sb.ext.clone();
    sb.http_server(&ext_ns, 80, ext);
    let rule = |fields: &str| {
        cnp(
            "a-icmp",
            &format!("endpointSelector: {{matchLabels: {{app: a}}}}\negress:\n- toEntities: [world]\n  icmps: [{{fields: [{fields}]}}]"),
        )
    };
    let mut node = enforce(&sb, &rule("{type: TimestampReply}"), &[]);
    assert!(
        !sb.ping(&a, ext),
        "control: only timestamp replies are allowed"
    );
    assert!(!sb.curl(&a, ext, 80), "control: and no port");
    drop(node);
    node = enforce(&sb, "", &[]);
    assert!(
        sb.ping(&a, ext) && sb.curl(&a, ext, 80),
        "control: without policy both pass"
    );
    drop(node);
    node = enforce(&sb, &rule("{type: 8}"), &[]);
    assert!(
        sb.ping(&a, ext),
        "echo request (8) is allowed; its reply passes"
    );
    assert!(!sb.ping(&a, EXT_V6), "an IPv4 type does not allow ICMPv6");
    assert!(!sb.curl(&a, ext, 80), "an ICMP rule allows no port");
    drop(node);
    node = enforce(&sb, &rule("{family: IPv6, type: EchoRequest}"), &[]);
    assert!(sb.ping(&a, EXT_V6), "ICMPv6 echo request by name");
    assert!(!sb.ping(&a, ext), "and not ICMPv4");
    drop(node);

    // Ingress: b may be pinged by a, nothing else of a reaches it.
    let ingress = cnp(
        "b-icmp",
        "endpointSelector: {matchLabels: {app: b}}\ningress:\n- fromEndpoints: [{matchLabels: {app: a}}]\n  icmps: [{fields: [{type: EchoRequest}, {family: IPv6, type: 128}]}]",
    );
    node = enforce(&sb, &ingress, &[]);
    assert!(sb.ping(&a, &b.v4.to_string()), "a pings b (IPv4)");
    assert!(sb.ping(&a, &b.v6.to_string()), "a pings b (IPv6)");
    drop(node);

    // Deny beats allow: everything to the world but echo requests.
    let deny = cnp(
        "a-no-ping",
        "endpointSelector: {matchLabels: {app: a}}\negress:\n- toEntities: [world]\negressDeny:\n- toEntities: [world]\n  icmps: [{fields: [{type: 8}]}]",
    );
    let _node = enforce(&sb, &deny, &[]);
    assert!(!sb.ping(&a, ext), "the ICMP deny rule wins");
    assert!(sb.ping(&a, EXT_V6), "ICMPv6 is not denied");
}

#[test]
fn privileged_cidr_with_except_and_deny_beats_allow() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("cidr");
    let a = sb.pod("a");
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "198.51.100.10");
    let policies = cnp(
        "cidr",
        "endpointSelector: {matchLabels: {app: a}}\negress:\n- toCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.128/25]}]\n\
         egressDeny:\n- toCIDR: [198.51.100.66/32]",
    );
    let node = enforce(&sb, &policies, &[]);
    // The identity one lookup gives an address is the longest prefix's in
    // the map, as the programs see it.
    let ipcache = node.dp.current().unwrap().ipcache;
    let pod_a = (a.v4.to_string(), format!("{}/32", a.v4));
    for (ip, prefix) in [
        ("198.51.100.10", "198.51.100.0/24"),
        ("198.51.100.200", "198.51.100.128/25"),
        ("198.51.100.66", "198.51.100.66/32"),
        (pod_a.0.as_str(), pod_a.1.as_str()),
    ] {
        let want = ipcache[&prefix.parse().unwrap()];
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(node.dp.identity_of(ip).unwrap(), Some(want), "{ip}");
    }
    assert!(sb.curl(&a, "198.51.100.10", 80), "inside the CIDR");
    assert!(!sb.curl(&a, "198.51.100.200", 80), "inside the exception");
    assert!(
        !sb.curl(&a, "198.51.100.66", 80),
        "deny beats the CIDR allow"
    );
    assert!(!sb.curl(&a, "203.0.113.10", 80), "outside the CIDR");
    assert!(
        sb.ping(&a, "198.51.100.10"),
        "an L3-only rule allows ICMP too"
    );
}

#[test]
fn privileged_default_deny_both_directions_replies_pass_and_arp_works() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("dd");
    let a = sb.pod("a");
    let a_ns = a.netns.clone();
    sb.http_server(&a_ns, 8080, &a.v4.to_string());
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    let policies = cnp(
        "lockdown",
        "endpointSelector: {matchLabels: {app: a}}\ningress: [{fromEntities: []}]\negress:\n- toCIDR: [203.0.113.10/32]\n  toPorts: [{ports: [{port: '80', protocol: TCP}]}]",
    );
    let mut node = enforce(&sb, &policies, &[]);
    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "egress allowed; its replies pass default-deny ingress"
    );
    let into_pod = sb.try_sh(
        &sb.ext,
        &format!(
            "curl -s -m 2 -o /dev/null {}",
            testkit::url(&a.v4.to_string(), 8080)
        ),
    );
    assert!(
        !into_pod.status.success(),
        "ingress to the pod is default-denied"
    );
    assert!(
        !sb.ping(&a, "203.0.113.11"),
        "other egress is default-denied"
    );
    let neigh = sb.try_sh(&a.netns, &format!("ip neigh show {}", a.gateway_v4));
    assert!(
        String::from_utf8_lossy(&neigh.stdout).contains("lladdr"),
        "ARP to the gateway must pass: {neigh:?}"
    );
    // Counters and flow events say what happened.
    let counters = node.dp.counters().unwrap();
    assert!(counters.get("drop_default_deny") > 0, "{counters:?}");
    assert!(
        counters.get("pass_conntrack") > 0,
        "replies pass through conntrack: {counters:?}"
    );
    let events = node.dp.poll_events(1000).unwrap();
    assert!(
        events.iter().any(|e| e.verdict == FlowVerdict::Denied
            && e.reason == FlowReason::DefaultDeny
            && e.dst == "203.0.113.11".parse::<IpAddr>().unwrap()),
        "a default-deny event for the ping: {events:?}"
    );
    assert!(
        events.iter().any(|e| e.verdict == FlowVerdict::Allowed
            && e.reason == FlowReason::AllowRule
            && e.dport == 80
            && e.rule_id != 0),
        "an allow event naming the rule: {events:?}"
    );
}

#[test]
fn privileged_fqdn_entry_opens_and_expiry_closes_new_connections_only() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("fqdn");
    let a = sb.pod("a");
    let b = sb.pod("b");
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    sb.echo_server(&ext, sock("203.0.113.10", 9000));
    sb.echo_server(&ext, sock(EXT_V6, 9000));
    let policies = cnp(
        "fqdn",
        "endpointSelector: {}\negress:\n- toFQDNs: [{matchName: api.test}]\n  toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '9000', protocol: TCP}]}]",
    );
    let mut node = enforce(&sb, &policies, &[]);
    assert!(!sb.curl(&a, "203.0.113.10", 80), "nothing learned yet");
    node.learn(&a, "api.test", &[("203.0.113.10", 3), (EXT_V6, 3)]);
    let learned = Instant::now();
    assert!(sb.curl(&a, "203.0.113.10", 80), "the learned IP opens");
    assert!(sb.curl(&a, EXT_V6, 80), "and its IPv6 address");
    assert!(
        !sb.curl(&b, "203.0.113.10", 80),
        "one pod's lookup opens nothing for another"
    );
    let stream_v4 = sb.stream(&a, sock("203.0.113.10", 9000));
    let stream_v6 = sb.stream(&a, sock(EXT_V6, 9000));
    // The passage of time is the point: let the 3 s TTL pass (from the
    // learn, plus a margin). No GC runs: the program itself honours the
    // expiry, so there is no condition to poll for.
    std::thread::sleep(
        (learned + Duration::from_millis(3_300)).saturating_duration_since(Instant::now()),
    );
    assert!(
        !sb.curl(&a, "203.0.113.10", 80),
        "a new connection after expiry fails"
    );
    assert!(!sb.curl(&a, EXT_V6, 80), "for IPv6 too");
    stream_v4.assert_flowing(Duration::from_millis(600), "IPv4 after expiry");
    stream_v6.assert_flowing(Duration::from_millis(600), "IPv6 after expiry");
    // The connections are what keeps the names alive for flow logs.
    let live = node.dp.live_connections().unwrap();
    let a_if = sb.ifindex(&a.host_if);
    assert!(
        live.contains(&(a_if, "203.0.113.10".parse().unwrap())),
        "{live:?}"
    );
    // A new lookup reopens it.
    node.learn(&a, "api.test", &[("203.0.113.10", 30)]);
    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "a fresh answer reopens the IP"
    );
}

#[test]
fn privileged_audit_mode_passes_and_reports() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("audit");
    let a = sb.pod("a");
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    let policies = cnp(
        "deny-all",
        "endpointSelector: {}\negress: [{toEntities: []}]",
    );
    let mut node = enforce(&sb, &policies, &["a"]);
    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "audit mode passes what would be dropped"
    );
    let events = node.dp.poll_events(1000).unwrap();
    assert!(
        events.iter().any(|e| e.verdict == FlowVerdict::Audit
            && e.reason == FlowReason::DefaultDeny
            && e.dport == 80),
        "an AUDIT event: {events:?}"
    );
    assert!(node.dp.counters().unwrap().get("audit") > 0);
}

#[test]
fn privileged_restart_keeps_established_streams_and_allowed_ips() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("restart");
    let a = sb.pod("a");
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    sb.echo_server(&ext, sock("203.0.113.11", 9000));
    let policies = cnp(
        "mix",
        "endpointSelector: {matchLabels: {app: a}}\negress:\n- toCIDR: [203.0.113.11/32]\n- toFQDNs: [{matchName: api.test}]",
    );
    let mut node = enforce(&sb, &policies, &[]);
    node.learn(&a, "api.test", &[("203.0.113.10", 300)]);
    let stream = sb.stream(&a, sock("203.0.113.11", 9000));
    let before = node.dp.current().unwrap();
    let saved = fqdn_cache::persist::encode(&node.cache, Time(monotonic_now_ns()), BOOT);
    drop(node); // the agent stops: nothing is detached

    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "the learned IP still works while the agent is down"
    );
    assert!(
        !sb.curl(&a, "203.0.113.12", 80),
        "and everything else is still denied"
    );
    stream.assert_flowing(Duration::from_millis(500), "while the agent is down");

    // The agent starts again, adopts the pins, restores its cache and
    // reconciles: nothing to change.
    let mut again = enforce_restoring(&sb, &policies, &[], Some(&saved));
    let adopted = again.dp.current().unwrap();
    assert_eq!(
        adopted.fqdn, before.fqdn,
        "FQDN entries survived the restart"
    );
    assert_eq!(adopted.allow, before.allow);
    assert!(sb.curl(&a, "203.0.113.10", 80));
    stream.assert_flowing(Duration::from_millis(500), "after the restart");
    assert!(again.dp.poll_events(10).is_ok());
}

#[test]
fn privileged_uninstall_removes_everything() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("uninst");
    let a = sb.pod("a");
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    let node = enforce(
        &sb,
        &cnp(
            "deny-all",
            "endpointSelector: {}\negress: [{toEntities: []}]",
        ),
        &[],
    );
    assert!(!sb.curl(&a, "203.0.113.10", 80));
    drop(node);
    let removed = egress_bpf::kernel::uninstall(&sb.pin_dir).unwrap();
    assert!(
        removed
            .iter()
            .any(|p| p.to_string_lossy().contains("links/")),
        "{removed:?}"
    );
    assert!(!sb.pin_dir.exists(), "the pin directory is gone");
    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "with the programs detached traffic flows again"
    );
}

#[test]
fn privileged_dns_redirect_reaches_a_transparent_socket_with_its_original_destination() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("redir");
    let a = sb.pod("a");
    let policies = cnp(
        "dns",
        "endpointSelector: {matchLabels: {app: a}}\negress:\n- toCIDR: [10.96.0.10/32]\n  toPorts:\n  \
         - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]\n    rules: {dns: [{matchPattern: '*'}]}",
    );
    let _node = enforce(&sb, &policies, &[]);
    let config = RedirectConfig {
        dns_port: 15053,
        ..RedirectConfig::default()
    };
    redirect::install(&config).expect("install TPROXY redirect");

    // A transparent UDP socket and TCP listener on the proxy port, in the node.
    let node_ns = sb.node.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&node_ns);
        let udp = transparent_socket(libc::SOCK_DGRAM, 15053);
        let tcp = transparent_socket(libc::SOCK_STREAM, 15053);
        // SAFETY: listen on a bound socket we own.
        assert_eq!(unsafe { libc::listen(tcp.as_raw_fd(), 8) }, 0);
        tx.send(()).unwrap();
        let udp_seen = recv_orig_dst(&udp);
        let tcp_seen = accept_orig_dst(&tcp);
        (udp_seen, tcp_seen)
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let _ = sb.try_sh(&a.netns, "dig @10.96.0.10 example.test +tries=1 +timeout=2");
    let _ = sb.try_sh(
        &a.netns,
        "dig +tcp @10.96.0.10 example.test +tries=1 +timeout=2",
    );
    let (udp_seen, tcp_seen) = listener.join().unwrap();
    let (udp_from, udp_orig) = udp_seen.expect("the UDP query reached the transparent socket");
    assert_eq!(
        udp_orig,
        sock("10.96.0.10", 53),
        "original destination intact (UDP)"
    );
    assert_eq!(udp_from.ip(), a.v4, "the proxy knows which pod asked");
    let (tcp_from, tcp_orig) = tcp_seen.expect("the TCP query reached the transparent listener");
    assert_eq!(
        tcp_orig,
        sock("10.96.0.10", 53),
        "original destination intact (TCP)"
    );
    assert_eq!(tcp_from.ip(), a.v4);
    redirect::uninstall(&config).unwrap();
}

/// Sends ARGV[1] UDP datagrams to the cluster resolver as fast as it can,
/// half from one socket (one tracked flow), half each from a new one (new
/// flows); prints the seconds it took.
const DNS_BURST: &str = r#"
import socket, sys, time
n, t = int(sys.argv[1]), time.time()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n // 2):
    s.sendto(b"query %d" % i, ("10.96.0.10", 53))
for i in range(n - n // 2):
    f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    f.sendto(b"query %d" % i, ("10.96.0.10", 53))
    f.close()
print(time.time() - t)
"#;

/// DNS_BURST, written into a sandbox and run in its pods.
struct Burster(std::path::PathBuf);

impl Burster {
    fn new(sb: &mut Sandbox) -> Self {
        let script = sb.scratch("dns-burst").join("burst.py");
        std::fs::write(&script, DNS_BURST).unwrap();
        Self(script)
    }

    /// Sends `n` datagrams from `pod`; the seconds it took.
    fn send(&self, sb: &Sandbox, pod: &Pod, n: usize) -> f64 {
        let out = sb.sh(&pod.netns, &format!("python3 {} {n}", self.0.display()));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

/// The most datagrams a budget of `per_second` (a second's worth of burst)
/// lets through a burst sent in `took` seconds: the burst, and what it
/// refilled while the script sent (and a little after its last clock read).
fn budget_ceiling(per_second: usize, took: f64) -> usize {
    per_second + (per_second as f64 * (took + 0.05)).ceil() as usize
}

/// Every pod's UDP DNS to the cluster resolver goes to the DNS proxy.
fn dns_proxy_policy() -> String {
    cnp(
        "dns",
        "endpointSelector: {}\negress:\n- toCIDR: [10.96.0.10/32]\n  toPorts:\n  \
         - ports: [{port: '53', protocol: UDP}]\n    rules: {dns: [{matchPattern: '*'}]}",
    )
}

/// Datagrams the transparent socket on the proxy port receives, by source
/// address, while `send` runs and until it is drained afterwards.
fn received_while(sb: &Sandbox, send: impl FnOnce()) -> HashMap<IpAddr, usize> {
    let node_ns = sb.node.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = sent.clone();
    let reader = std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&node_ns);
        let udp = transparent_socket(libc::SOCK_DGRAM, 15053);
        let (big, tick) = (
            16i32 << 20,
            libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            },
        );
        // SAFETY: setsockopt on a socket we own, with values that outlive the calls.
        unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const i32).cast(),
                4,
            );
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tick as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        tx.send(()).unwrap();
        let mut by_source = HashMap::new();
        loop {
            // Read whether or not the senders are done; a quiet tick after
            // they are means the socket is drained.
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            match recv_orig_dst(&udp) {
                Some((from, _)) => *by_source.entry(from.ip()).or_default() += 1,
                None if finished => return by_source,
                None => {}
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    send();
    sent.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap()
}

#[test]
fn privileged_a_pods_dns_over_its_budget_is_dropped_on_its_own_interface() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("dnsbud");
    let (a, b) = (sb.pod("a"), sb.pod("b"));
    let burster = Burster::new(&mut sb);
    let burst = |pod: &Pod, n: usize| burster.send(&sb, pod, n);
    let policies = dns_proxy_policy();
    let mut node = enforce(&sb, &policies, &[]);
    let mut config = RedirectConfig {
        dns_port: 15053,
        ..RedirectConfig::default()
    };

    // Control: with no budget every datagram of a burst reaches the socket
    // all pods share (as a flood would fill it).
    node.dp.set_redirects(&config).unwrap();
    let got = received_while(&sb, || {
        burst(&a, 2000);
    });
    let from_a = got.get(&a.v4).copied().unwrap_or(0);
    assert!(
        from_a >= 1900,
        "control: {from_a} of 2000 reached the proxy port"
    );

    // A budget of 100 a second (a second's worth of burst): the same burst
    // leaves about 100 through, counted; the rest is dropped before the
    // socket. The other pod's queries are its own budget's.
    config.dns_datagrams_per_second = 100;
    node.dp.set_redirects(&config).unwrap();
    let dropped_before = node
        .dp
        .monitor()
        .unwrap()
        .counters()
        .unwrap()
        .get("drop_dns_rate");
    let mut took = 0.0;
    let got = received_while(&sb, || {
        took = burst(&a, 2000);
        burst(&b, 50);
    });
    let from_a = got.get(&a.v4).copied().unwrap_or(0);
    let ceiling = budget_ceiling(100, took);
    assert!(
        (90..=ceiling).contains(&from_a),
        "{from_a} of a's 2000 datagrams (sent in {took:.2} s) passed a budget of 100/s"
    );
    assert_eq!(
        got.get(&b.v4).copied().unwrap_or(0),
        50,
        "the other pod's queries all arrived"
    );
    let dropped = node
        .dp
        .monitor()
        .unwrap()
        .counters()
        .unwrap()
        .get("drop_dns_rate")
        - dropped_before;
    // What did not arrive was dropped by the budget, and counted (as in
    // the control, a few may be lost on the way for other reasons).
    let accounted = dropped as usize + from_a;
    assert!(
        (1900..=2000).contains(&accounted),
        "{dropped} counted drops and {from_a} arrivals of 2000"
    );

    // A rate, not a ban: a second later the pod has its budget back.
    std::thread::sleep(Duration::from_millis(1100));
    let got = received_while(&sb, || {
        burst(&a, 50);
    });
    assert_eq!(got.get(&a.v4).copied().unwrap_or(0), 50);
    redirect::uninstall(&config).unwrap();
}

#[test]
fn privileged_maps_pinned_by_a_build_with_another_layout_are_replaced_not_adopted() {
    if !privileged() {
        return;
    }
    use aya::maps::{Array, MapData, MapInfo, PerCpuArray};
    let sb = Sandbox::new("oldpin");
    let maps = sb.pin_dir.join("maps");
    let open = || {
        let _g = NetnsGuard::enter(&sb.node);
        KernelDatapath::open(&sb.pin_dir)
    };
    // What an older build left pinned: counters before the last one was
    // added (loads, but counts nothing new and reads fail), and settings
    // of a smaller value (the programs read past it: the verifier refuses).
    let leave_older_pins = || {
        std::fs::create_dir_all(&maps).unwrap();
        let _ = std::fs::remove_file(maps.join("tg_counters"));
        let _ = std::fs::remove_file(maps.join("tg_settings"));
        PerCpuArray::<MapData, u64>::create(egress_bpf::abi::CNT_MAX - 1, 0)
            .unwrap()
            .pin(maps.join("tg_counters"))
            .unwrap();
        Array::<MapData, u32>::create(1, 0)
            .unwrap()
            .pin(maps.join("tg_settings"))
            .unwrap();
    };
    leave_older_pins();
    let dp = open().expect("load the datapath over the older pins");
    assert_eq!(dp.replaced_pins(), ["tg_counters", "tg_settings"]);
    let counters = MapInfo::from_pin(maps.join("tg_counters")).unwrap();
    assert_eq!(counters.max_entries(), egress_bpf::abi::CNT_MAX);
    let read = dp
        .monitor()
        .unwrap()
        .counters()
        .expect("every counter reads");
    assert_eq!(read.0.len(), egress_bpf::abi::CNT_MAX as usize, "{read:?}");
    drop(dp);
    // Opened again, this build's own pins are adopted, none replaced.
    assert!(open().unwrap().replaced_pins().is_empty());
    egress_bpf::kernel::uninstall(&sb.pin_dir).unwrap();
}

#[test]
fn privileged_after_a_restart_existing_pods_run_this_runs_programs_on_its_maps() {
    if !privileged() {
        return;
    }
    use aya::maps::{Array, MapData};
    let mut sb = Sandbox::new("swap");
    let a = sb.pod("a");
    let burster = Burster::new(&mut sb);
    let policies = dns_proxy_policy();
    drop(enforce(&sb, &policies, &[]));
    // The next run finds settings pinned in another layout (as after an
    // upgrade that changed them) and replaces them; the pod's endpoint is
    // unchanged, so nothing attaches it again.
    let settings = sb.pin_dir.join("maps/tg_settings");
    std::fs::remove_file(&settings).unwrap();
    Array::<MapData, u32>::create(1, 0)
        .unwrap()
        .pin(&settings)
        .unwrap();
    let mut node = enforce(&sb, &policies, &[]);
    assert_eq!(node.dp.replaced_pins(), ["tg_settings"]);
    let config = RedirectConfig {
        dns_port: 15053,
        dns_datagrams_per_second: 100,
        ..RedirectConfig::default()
    };
    node.dp.set_redirects(&config).unwrap();
    // The budget written into this run's map holds the pod: its programs
    // are this run's (the previous run's read a map no longer pinned).
    let mut took = 0.0;
    let got = received_while(&sb, || {
        took = burster.send(&sb, &a, 1000);
    });
    let from_a = got.get(&a.v4).copied().unwrap_or(0);
    let ceiling = budget_ceiling(100, took);
    assert!(
        (90..=ceiling).contains(&from_a),
        "{from_a} of 1000 datagrams passed a budget of 100/s after the restart"
    );
    redirect::uninstall(&config).unwrap();
}

/// A socket with IP_TRANSPARENT (+ IP_RECVORIGDSTADDR) bound to 0.0.0.0:port.
fn transparent_socket(kind: i32, port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket syscalls on a fresh fd we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, kind, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        for opt in [libc::IP_TRANSPARENT, libc::IP_RECVORIGDSTADDR] {
            let rc = libc::setsockopt(fd, libc::SOL_IP, opt, (&one as *const i32).cast(), 4);
            assert_eq!(
                rc,
                0,
                "setsockopt {opt}: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const i32).cast(),
            4,
        );
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_port = port.to_be();
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 6,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

fn sockaddr_in_to(addr: &libc::sockaddr_in) -> SocketAddr {
    SocketAddr::new(
        IpAddr::from(u32::from_be(addr.sin_addr.s_addr).to_be_bytes()),
        u16::from_be(addr.sin_port),
    )
}

/// One datagram's (source, original destination).
fn recv_orig_dst(fd: &std::os::fd::OwnedFd) -> Option<(SocketAddr, SocketAddr)> {
    // SAFETY: recvmsg into buffers we own; control messages walked with the libc macros.
    unsafe {
        let mut buf = [0u8; 1500];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut control = [0u8; 256];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        if libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) < 0 {
            return None;
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_ORIGDSTADDR {
                let orig =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::sockaddr_in>());
                return Some((sockaddr_in_to(&from), sockaddr_in_to(&orig)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        None
    }
}

/// One accepted connection's (peer, local = original destination).
fn accept_orig_dst(fd: &std::os::fd::OwnedFd) -> Option<(SocketAddr, SocketAddr)> {
    // SAFETY: accept/getsockname into structs we own; the fd is closed after.
    unsafe {
        let mut peer: libc::sockaddr_in = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as u32;
        let conn = libc::accept(
            fd.as_raw_fd(),
            (&mut peer as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if conn < 0 {
            return None;
        }
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        let mut llen = size_of::<libc::sockaddr_in>() as u32;
        libc::getsockname(
            conn,
            (&mut local as *mut libc::sockaddr_in).cast(),
            &mut llen,
        );
        libc::close(conn);
        Some((sockaddr_in_to(&peer), sockaddr_in_to(&local)))
    }
}
