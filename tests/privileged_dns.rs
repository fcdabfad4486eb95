//! The DNS proxy end to end on real parts (root): nsd as the upstream in its
//! own namespace, the datapath redirecting pod DNS with TPROXY to the proxy
//! in the node namespace, `dig` and `curl` inside pod namespaces.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dns_proxy::listener::{serve, ListenConfig};
use dns_proxy::{NetUpstream, Proxy, ProxyConfig};
use egress_bpf::desired::Interfaces;
use egress_bpf::redirect::RedirectConfig;
use egress_bpf::{Datapath, KernelDatapath};
use fqdn_cache::{Config, FqdnCache, PolicyView};
use policy::{EndpointKey, Inventory, PolicySet, ResolveOptions};
use testkit::{eventually, privileged, NetnsGuard, Pod, Sandbox};
use tollgate::agent::DnsProxy;
use tollgate::node::{ActivePolicy, DnsHandle, Node};

type TestProxy = DnsProxy<KernelDatapath, NetUpstream>;

const RESOLVER_V4: &str = "203.0.113.53";
const RESOLVER_V6: &str = "2001:db8::53";
const PROXY_PORT: u16 = 15053;

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

/// nsd serving testdata/zones/test.zone on the resolver addresses in `ext`.
fn start_nsd(sb: &mut Sandbox) {
    sb.nsd(
        &[RESOLVER_V4, RESOLVER_V6],
        &[("test", testdata("zones/test.zone"))],
        ("api.test", "203.0.113.10"),
    );
}

struct Running {
    proxy: Arc<TestProxy>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn key(p: &Pod) -> EndpointKey {
    EndpointKey {
        namespace: "default".into(),
        name: p.name.clone(),
    }
}

/// Policy, datapath, redirect and the proxy, all in the node namespace.
fn start(sb: &Sandbox, policies: &str) -> Running {
    let _g = NetnsGuard::enter(&sb.node);
    let mut y = String::from("endpoints:\n");
    for p in &sb.pods {
        y.push_str(&format!(
            "  - {{name: {0}, labels: {{app: {0}}}, ips: [{1}, \"{2}\"], interface: {3}}}\n",
            p.name, p.v4, p.v6, p.host_if
        ));
    }
    let inventory = Inventory::parse(&y, "test").unwrap();
    let report = policy::parse_str(policies, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let interfaces: Interfaces = sb
        .pods
        .iter()
        .map(|p| (key(p), (sb.ifindex(&p.host_if), p.host_if.clone())))
        .collect();
    let dp = KernelDatapath::open(&sb.pin_dir).unwrap();
    let cache = FqdnCache::new(
        Config {
            min_ttl: 0,
            ttl_floor: 0,
            ..Config::default()
        },
        PolicyView::from_resolved(&resolved),
    );
    let policy = ActivePolicy::with_interfaces(resolved, inventory, interfaces);
    let node = Arc::new(Node::start(dp, policy, cache).unwrap().0);
    node.set_redirects(&RedirectConfig {
        dns_port: PROXY_PORT,
        ..RedirectConfig::default()
    })
    .unwrap();
    let proxy = Proxy::new(
        DnsHandle(node.clone()),
        DnsHandle(node),
        NetUpstream::default(),
        ProxyConfig::default(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = proxy.clone();
    let node = sb.node.clone();
    let thread = std::thread::spawn(move || {
        // Runtime threads inherit this thread's network namespace.
        let _g = NetnsGuard::enter(&node);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(serve(
            p,
            ListenConfig {
                port: PROXY_PORT,
                ipv6: true,
                workers: 0,
            },
            async {
                let _ = rx.await;
            },
        ))
    });
    Running {
        proxy,
        stop: Some(tx),
        thread: Some(thread),
    }
}

impl Running {
    fn fqdn_map_has(&self, pod_ifindex: u32, ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        self.proxy
            .sink
            .0
            .inspect(|dp, _| dp.current().unwrap().fqdn.contains_key(&(pod_ifindex, ip)))
    }
}

fn dig(sb: &Sandbox, pod: &Pod, args: &str) -> String {
    String::from_utf8_lossy(
        &sb.try_sh(&pod.netns, &format!("dig +tries=1 +timeout=3 {args}"))
            .stdout,
    )
    .into_owned()
}

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-only, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toCIDR: [203.0.113.53/32, 2001:db8::53/128]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules:
        dns: [{matchName: api.test}, {matchPattern: '*.cdn.test'}]
  - toFQDNs: [{matchName: api.test}, {matchPattern: '*.cdn.test'}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

#[test]
fn privileged_dns_proxy_answers_allowed_names_after_writing_the_map() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("dns");
    let a = sb.pod("a");
    let b = sb.pod("b");
    start_nsd(&mut sb);
    let ext = sb.ext.clone();
    sb.http_server(&ext, 80, "203.0.113.10");
    let running = start(&sb, POLICY);
    let a_if = sb.ifindex(&a.host_if);
    eventually(Duration::from_secs(10), "the proxy answering", || {
        dig(&sb, &a, &format!("+short @{RESOLVER_V4} api.test")).contains("203.0.113.10")
    });
    assert!(
        running.fqdn_map_has(a_if, "203.0.113.10"),
        "the IP is in the map the moment dig returns"
    );
    assert!(
        sb.curl(&a, "203.0.113.10", 80),
        "and the pod can connect to it"
    );
    assert!(
        !sb.curl(&a, "203.0.113.12", 80),
        "an IP it did not resolve stays closed"
    );

    // Asked again: answered from the cache on the receive loop's fast path,
    // from the resolver's address (dig rejects any other), with EDNS as
    // dig sends it, and without it.
    use std::sync::atomic::Ordering::SeqCst;
    let hits = running.proxy.metrics.counters.cache_hits.load(SeqCst);
    for args in ["", "+noedns"] {
        let again = dig(&sb, &a, &format!("{args} @{RESOLVER_V4} api.test"));
        assert!(
            again.contains("status: NOERROR") && again.contains("203.0.113.10"),
            "{again}"
        );
        assert!(!again.to_lowercase().contains("mismatch"), "{again}");
    }
    assert_eq!(
        running.proxy.metrics.counters.cache_hits.load(SeqCst),
        hits + 2
    );

    // A name outside the rules is REFUSED, and its IP stays unreachable.
    let evil = dig(&sb, &a, &format!("@{RESOLVER_V4} evil.test"));
    assert!(evil.contains("status: REFUSED"), "{evil}");
    assert!(!running.fqdn_map_has(a_if, "203.0.113.12"));

    // matchPattern, through a CNAME chain.
    let cdn = dig(&sb, &a, &format!("+short @{RESOLVER_V4} www.cdn.test"));
    assert!(cdn.contains("203.0.113.11"), "{cdn}");
    assert!(running.fqdn_map_has(a_if, "203.0.113.11"));

    // TCP queries.
    let tcp = dig(&sb, &a, &format!("+tcp +short @{RESOLVER_V4} api.test"));
    assert!(tcp.contains("203.0.113.10"), "{tcp}");
    let tcp_evil = dig(&sb, &a, &format!("+tcp @{RESOLVER_V4} evil.test"));
    assert!(tcp_evil.contains("status: REFUSED"), "{tcp_evil}");

    // The IPv6 path: AAAA over an IPv6 resolver address.
    let v6 = dig(&sb, &a, &format!("+short AAAA @{RESOLVER_V6} api.test"));
    assert!(v6.contains("2001:db8::10"), "{v6}");
    assert!(running.fqdn_map_has(a_if, "2001:db8::10"));
    assert!(
        sb.curl(&a, "2001:db8::10", 80),
        "the pod can connect over IPv6"
    );

    // A pod without policy resolves directly and learns nothing.
    let other = dig(&sb, &b, &format!("+short @{RESOLVER_V4} evil.test"));
    assert!(other.contains("203.0.113.12"), "{other}");
    let b_if = sb.ifindex(&b.host_if);
    assert!(!running.fqdn_map_has(b_if, "203.0.113.12"));

    let c = &running.proxy.metrics.counters;
    assert!(c.allowed.load(SeqCst) >= 4, "{:?}", c);
    assert!(c.refused_name.load(SeqCst) >= 2, "{:?}", c);
    assert!(running.proxy.metrics.write.count() >= 3);
}

#[test]
fn privileged_dns_proxy_down_means_dns_fails_closed() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("dnsdown");
    let a = sb.pod("a");
    start_nsd(&mut sb);
    let running = start(&sb, POLICY);
    eventually(Duration::from_secs(10), "the proxy answering", || {
        dig(&sb, &a, &format!("+short @{RESOLVER_V4} api.test")).contains("203.0.113.10")
    });
    drop(running); // the proxy stops; the datapath keeps redirecting
    let out = dig(&sb, &a, &format!("+short @{RESOLVER_V4} api.test"));
    assert!(
        !out.contains("203.0.113.10"),
        "without the proxy DNS must fail, not bypass it: {out}"
    );
}

#[test]
fn privileged_dns_a_query_sent_to_the_proxy_port_itself_cannot_cut_dns_for_the_node() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("dnsdirect");
    let a = sb.pod("a");
    start_nsd(&mut sb);
    let running = start(&sb, POLICY);
    let works =
        || dig(&sb, &a, &format!("+short @{RESOLVER_V4} api.test")).contains("203.0.113.10");
    eventually(Duration::from_secs(10), "the proxy answering", works);
    use std::sync::atomic::Ordering::SeqCst;
    let direct = || running.proxy.metrics.counters.dropped_direct.load(SeqCst);

    // From the node itself (loopback is open: the probe reaches the proxy,
    // which refuses to treat it as a redirected query).
    let _ = sb.try_sh(
        &sb.node,
        &format!("dig +tries=1 +timeout=1 -p {PROXY_PORT} @127.0.0.1 api.test"),
    );
    eventually(Duration::from_secs(5), "the direct query counted", || {
        direct() >= 1
    });
    // From outside (the attacker's one datagram, UDP and TCP), to the
    // node's addresses — the pod gateway's is the one TPROXY looks up its
    // socket by: dropped before the proxy by the redirect's guard.
    for target in ["203.0.113.1".to_string(), a.gateway_v4.to_string()] {
        for tcp in ["", "+tcp"] {
            let _ = sb.try_sh(
                &sb.ext,
                &format!("dig {tcp} +tries=1 +timeout=1 -p {PROXY_PORT} @{target} api.test"),
            );
        }
    }
    let guard =
        String::from_utf8_lossy(&sb.sh(&sb.node, "nft list chain inet tollgate input").stdout)
            .into_owned();
    assert!(
        guard.contains("counter packets") && !guard.contains("counter packets 0 "),
        "the outside probes reached the node and were dropped: {guard}"
    );
    // Pod DNS is unharmed.
    for i in 0..20 {
        assert!(
            works(),
            "pod DNS still answers after the probes (query {i})"
        );
    }
    assert_eq!(direct(), 1, "only the loopback probe reached the proxy");
}

/// Pod a may ask the cluster's resolver for api.test; pod b may also ask a
/// resolver of its own (203.0.113.54), which answers api.test with its own
/// address.
const TWO_RESOLVERS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toCIDR: [203.0.113.53/32]
    toPorts:
    - ports: [{port: '53', protocol: UDP}]
      rules: {dns: [{matchName: api.test}]}
  - toFQDNs: [{matchName: api.test}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  egress:
  - toCIDR: [203.0.113.53/32, 203.0.113.54/32]
    toPorts:
    - ports: [{port: '53', protocol: UDP}]
      rules: {dns: [{matchName: api.test}]}
  - toFQDNs: [{matchName: api.test}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

#[test]
fn privileged_dns_a_rogue_resolvers_answer_is_never_served_to_another_pod() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("dnsrogue");
    let a = sb.pod("a");
    let b = sb.pod("b");
    start_nsd(&mut sb);
    sb.nsd(
        &["203.0.113.54"],
        &[("test", testdata("zones/rogue.zone"))],
        ("api.test", "198.51.100.66"),
    );
    let running = start(&sb, TWO_RESOLVERS);
    let (a_if, b_if) = (sb.ifindex(&a.host_if), sb.ifindex(&b.host_if));
    // Control: b's own resolver does plant its address, and b (which asked
    // it) learns it: the answer cache now holds api.test -> 198.51.100.66.
    eventually(Duration::from_secs(10), "the proxy answering b", || {
        dig(&sb, &b, "+short @203.0.113.54 api.test").contains("198.51.100.66")
    });
    assert!(running.fqdn_map_has(b_if, "198.51.100.66"));
    // a asks the cluster's resolver for the same name right after.
    let answer = dig(&sb, &a, &format!("+short @{RESOLVER_V4} api.test"));
    assert!(
        answer.contains("203.0.113.10") && !answer.contains("198.51.100.66"),
        "a gets its own resolver's answer, never the planted one: {answer}"
    );
    assert!(running.fqdn_map_has(a_if, "203.0.113.10"));
    assert!(
        !running.fqdn_map_has(a_if, "198.51.100.66"),
        "nothing planted is opened for a"
    );
}
