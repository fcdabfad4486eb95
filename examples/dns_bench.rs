//! DNS benchmark (root), all in one run against the same upstream:
//! dnsperf from a pod namespace, direct to nsd, through Tollgate (answer
//! cache off and warm), through unbound and dnsmasq as plain forwarders.
//!
//! Topology: pod `a` (Tollgate: programs on its veth, DNS redirected with
//! TPROXY, every answer learned into the FQDN map) and pod `b` (bare veth,
//! for direct/unbound/dnsmasq) -> node namespace (forwarders) -> nsd in the
//! `ext` namespace serving 1,000 names.
//!
//! Run with `sudo scripts/bench-dns.sh [ROUNDS] [SECONDS]`. Prints Markdown.

use std::time::Duration;

use dns_proxy::listener::{serve, ListenConfig};
use dns_proxy::{NetUpstream, Proxy, ProxyConfig};
use egress_bpf::redirect::{self, RedirectConfig};
use egress_bpf::KernelDatapath;
use fqdn_cache::{Config, FqdnCache, PolicyView};
use policy::{Inventory, PolicySet, ResolveOptions};
use testkit::{eventually, NetnsGuard, Sandbox};
use tollgate::node::{ActivePolicy, DnsHandle, Node};

/// The agent's allocator (src/main.rs), so the proxies run as they do there
/// (set up as there at the start of `main`).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

const NSD: &str = "203.0.113.53";
const UNBOUND: &str = "10.0.2.2";
const DNSMASQ: &str = "10.0.2.3";
const UNBOUND_CACHE: &str = "10.0.2.4";
const NAMES: usize = 1000;

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toCIDR: [203.0.113.53/32]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules: {dns: [{matchPattern: '*'}]}
  - toFQDNs: [{matchPattern: '*'}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
";

/// Per-round figures of one target: max qps, p50 and p99 at 5k qps (ms),
/// percentage lost at 80% of max, the forwarder's CPU per query at max
/// (us).
#[derive(Default)]
struct Samples(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Nanoseconds of CPU the processes `pids` have used (their live threads,
/// user and kernel): steadier than rates on a shared box, since it does
/// not depend on who else had the cores.
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The pid a daemon wrote to `file`.
fn pid_in(file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

struct Dnsperf {
    qps: f64,
    /// dnsperf's "Response codes" line: a rate of SERVFAILs is no rate.
    codes: String,
    lost: u64,
    sent: u64,
    latencies_ms: Vec<f64>,
}

fn dnsperf(
    sb: &Sandbox,
    netns: &str,
    server: &str,
    datafile: &str,
    secs: u32,
    rate: Option<u32>,
) -> Dnsperf {
    let limit = match rate {
        Some(q) => format!("-Q {q} -v"),
        None => "-c 4 -T 2 -q 500".to_string(),
    };
    let out = sb.try_sh(
        netns,
        &format!("dnsperf -s {server} -d {datafile} -l {secs} -t 2 {limit}"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    };
    let qps = field("Queries per second")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let sent = field("Queries sent")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lost = field("Queries lost")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    // Verbose lines: "> NOERROR n12.bench A 0.000231"
    let latencies_ms = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| {
            l.split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|s| s * 1000.0)
        .collect();
    let codes = field("Response codes").unwrap_or_default();
    Dnsperf {
        qps,
        codes,
        lost,
        sent,
        latencies_ms,
    }
}

/// The product's defaults, except the per-pod bound: here one pod is the
/// whole load (dnsperf keeps 1,000 queries in flight at up to 100k qps),
/// where the default (128 in flight per pod) exists to keep one pod of many
/// from taking the proxy from the others. (The agent's other per-pod bound,
/// 2,000 datagrams per second, is the datapath's, which this bench leaves
/// out: its redirect is installed with no budget.)
fn bench_config() -> ProxyConfig {
    ProxyConfig {
        max_in_flight_per_pod: 0,
        ..ProxyConfig::default()
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The share of NOERROR answers in dnsperf's "Response codes" line
/// ("NOERROR 138901 (100.00%), SERVFAIL 1 (0.00%)"); 0 without any.
fn noerror_percent(codes: &str) -> f64 {
    codes
        .strip_prefix("NOERROR ")
        .and_then(|rest| rest.split_once('(')?.1.split_once('%'))
        .and_then(|(percent, _)| percent.parse().ok())
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

fn main() {
    allocator::return_freed_memory_at_once();
    assert!(testkit::privileged(), "the DNS benchmark needs root");
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let secs: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let mut sb = Sandbox::new("dnsb");
    let a = sb.pod("a");
    let b = sb.pod("b");
    let dir = sb.scratch("dnsbench");
    let d = dir.display().to_string();

    // nsd with 1,000 names.
    let mut zone = String::from("$ORIGIN bench.\n$TTL 300\n@ IN SOA ns.bench. admin.bench. 1 3600 600 86400 60\n@ IN NS ns.bench.\nns IN A 203.0.113.53\n");
    let mut data = String::new();
    for i in 0..NAMES {
        zone.push_str(&format!("n{i} IN A 198.18.{}.{}\n", i / 250, i % 250 + 1));
        data.push_str(&format!("n{i}.bench A\n"));
    }
    std::fs::write(dir.join("bench.zone"), zone).unwrap();
    std::fs::write(dir.join("queries.txt"), data).unwrap();
    sb.nsd(
        &[NSD],
        &[("bench", dir.join("bench.zone"))],
        ("n1.bench", "198.18"),
    );

    // unbound and dnsmasq as plain forwarders in the node namespace, for pod b.
    let node = sb.node.clone();
    sb.sh(
        &node,
        &format!(
            "ip addr add {UNBOUND}/24 dev {0}; ip addr add {DNSMASQ}/24 dev {0}; ip addr add {UNBOUND_CACHE}/24 dev {0}",
            b.host_if
        ),
    );
    // unbound as its performance guide recommends for this machine
    // (https://unbound.docs.nlnetlabs.nl/en/latest/topics/core/performance.html):
    // a thread per core, slabs to match, one socket per thread
    // (so-reuseport), large outgoing range and socket buffers. Once with
    // every cache at 0 (the forwarder's own cost), once with the guide's
    // cache sizes.
    for (name, addr, caches) in [
        (
            "nocache",
            UNBOUND,
            "msg-cache-size: 0\n  rrset-cache-size: 0\n  key-cache-size: 0\n  neg-cache-size: 0\n",
        ),
        (
            "cache",
            UNBOUND_CACHE,
            "msg-cache-size: 50m\n  rrset-cache-size: 100m\n",
        ),
    ] {
        let tuning = std::env::var("TG_BENCH_UNBOUND_TUNING").unwrap_or_else(|_| "outgoing-range: 8192\n  num-queries-per-thread: 4096\n  so-rcvbuf: 4m\n  so-sndbuf: 4m\n  ".into());
        std::fs::write(
            dir.join(format!("unbound-{name}.conf")),
            format!(
                "server:\n  interface: {addr}\n  port: 53\n  access-control: 0.0.0.0/0 allow\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  \
                 directory: \"{d}\"\n  pidfile: \"{d}/unbound-{name}.pid\"\n  num-threads: 2\n  \
                 msg-cache-slabs: 2\n  rrset-cache-slabs: 2\n  infra-cache-slabs: 2\n  key-cache-slabs: 2\n  {caches}  \
                 {tuning}so-reuseport: yes\n  \
                 use-syslog: no\n  logfile: \"\"\n  do-not-query-localhost: no\n  \
                 module-config: \"iterator\"\n  qname-minimisation: no\n  local-zone: \"bench.\" nodefault\n\
                 forward-zone:\n  name: \"bench.\"\n  forward-addr: {NSD}\n"
            ),
        )
        .unwrap();
        sb.spawn(&node, &format!("unbound -d -c {d}/unbound-{name}.conf"));
    }
    sb.spawn(
        &node,
        &format!("dnsmasq -k --no-resolv --no-hosts --server={NSD} --listen-address={DNSMASQ} --bind-interfaces --cache-size=0 --dns-forward-max=10000 --user=root --pid-file={d}/dnsmasq.pid"),
    );
    for server in [UNBOUND, UNBOUND_CACHE, DNSMASQ] {
        eventually(Duration::from_secs(10), server, || {
            sb.try_sh(
                &b.netns,
                &format!("dig +short +tries=1 +timeout=1 @{server} n1.bench"),
            )
            .stdout
            .starts_with(b"198.18")
        });
    }

    // Tollgate for pod a: datapath + redirect + two proxies (cache off / on).
    let (cold, warm) = {
        let _g = NetnsGuard::enter(&sb.node);
        let inv = Inventory::parse(
            &format!(
                "endpoints:\n  - {{name: a, labels: {{app: a}}, ips: [{}], interface: {}}}\n",
                a.v4, a.host_if
            ),
            "bench",
        )
        .unwrap();
        let report = policy::parse_str(POLICY, None);
        let resolved = PolicySet::new(report.policies).resolve(&inv, ResolveOptions::default());
        let interfaces = sb.only_endpoint(&a);
        let node = |interfaces| {
            let policy = ActivePolicy::with_interfaces(resolved.clone(), inv.clone(), interfaces);
            let cache = FqdnCache::new(Config::default(), PolicyView::from_resolved(&resolved));
            let dp = KernelDatapath::open(&sb.pin_dir).unwrap();
            std::sync::Arc::new(Node::start(dp, policy, cache).unwrap().0)
        };
        let cold_node = node(interfaces);
        let cold = Proxy::new(
            DnsHandle(cold_node.clone()),
            DnsHandle(cold_node),
            NetUpstream::default(),
            ProxyConfig {
                cache_entries: 0,
                ..bench_config()
            },
        );
        // The warm proxy shares nothing but the datapath pins; its own node
        // learns into its own cache and writes the same maps.
        let warm_node = node(sb.only_endpoint(&a));
        let warm = Proxy::new(
            DnsHandle(warm_node.clone()),
            DnsHandle(warm_node),
            NetUpstream::default(),
            bench_config(),
        );
        (cold, warm)
    };
    for (proxy, port) in [(cold.clone(), 15053u16), (warm.clone(), 15054u16)] {
        let node = sb.node.clone();
        std::thread::spawn(move || {
            let _g = NetnsGuard::enter(&node);
            // TG_BENCH_WORKERS=0: a current-thread runtime.
            let workers: usize = std::env::var("TG_BENCH_WORKERS")
                .ok()
                .and_then(|w| w.parse().ok())
                .unwrap_or(2);
            let rt = if workers == 0 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
                    .unwrap()
            };
            rt.block_on(serve(
                proxy,
                ListenConfig {
                    port,
                    ipv6: false,
                    workers: 0,
                },
                std::future::pending(),
            ))
        });
    }
    let use_proxy = |port: u16| {
        let _g = NetnsGuard::enter(&sb.node);
        redirect::install(&RedirectConfig {
            dns_port: port,
            ..RedirectConfig::default()
        })
        .unwrap();
    };
    use_proxy(15053);
    eventually(Duration::from_secs(10), "tollgate proxy", || {
        sb.try_sh(
            &a.netns,
            &format!("dig +short +tries=1 +timeout=1 @{NSD} n1.bench"),
        )
        .stdout
        .starts_with(b"198.18")
    });
    // Warm the caching proxy's and unbound's caches once.
    use_proxy(15054);
    for (netns, server) in [(&a.netns, NSD), (&b.netns, UNBOUND_CACHE)] {
        let _ = dnsperf(
            &sb,
            netns,
            server,
            &format!("{d}/queries.txt"),
            2,
            Some(2000),
        );
    }

    let targets: [(&str, &str, &str, Option<u16>); 6] = [
        ("direct to nsd", &b.netns, NSD, None),
        ("Tollgate, answer cache off", &a.netns, NSD, Some(15053)),
        ("Tollgate, answer cache warm", &a.netns, NSD, Some(15054)),
        (
            "unbound forwarder, no cache, 2 threads",
            &b.netns,
            UNBOUND,
            None,
        ),
        ("dnsmasq forwarder, cache-size=0", &b.netns, DNSMASQ, None),
        (
            "unbound, cache warm, 2 threads",
            &b.netns,
            UNBOUND_CACHE,
            None,
        ),
    ];
    let datafile = format!("{d}/queries.txt");
    // Profiling aid: only load one proxy for a while (the cache-off one,
    // or with TG_BENCH_PROFILE_WARM=1 the caching one), at saturation or at
    // TG_BENCH_PROFILE_QPS.
    if let Ok(secs) = std::env::var("TG_BENCH_PROFILE_SECS") {
        use_proxy(if std::env::var_os("TG_BENCH_PROFILE_WARM").is_some() {
            15054
        } else {
            15053
        });
        // TG_BENCH_PROFILE_QPS: at that rate (e.g. 5000, the latency
        // measurement's) instead of at saturation.
        let rate = std::env::var("TG_BENCH_PROFILE_QPS")
            .ok()
            .and_then(|q| q.parse().ok());
        let mut r = dnsperf(&sb, &a.netns, NSD, &datafile, secs.parse().unwrap(), rate);
        if rate.is_some() {
            eprintln!("profile run: p50 {:.3} ms", pct(&mut r.latencies_ms, 0.5));
        }
        eprintln!("profile run: response codes {}", r.codes);
        eprintln!("profile run: {:.0} qps", r.qps);
        return;
    }
    let mut results: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        // Rotate the order each round so drift hits every target alike.
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (label, netns, server, port) = targets[i];
            if let Some(p) = port {
                use_proxy(p);
            }
            // Whose CPU counts: Tollgate's proxies run in this process
            // (the one not under load idles); the anchors are daemons.
            let pids: Vec<u32> = match i {
                0 => Vec::new(),
                1 | 2 => vec![std::process::id()],
                3 => pid_in(&dir.join("unbound-nocache.pid"))
                    .into_iter()
                    .collect(),
                4 => pid_in(&dir.join("dnsmasq.pid")).into_iter().collect(),
                _ => pid_in(&dir.join("unbound-cache.pid")).into_iter().collect(),
            };
            let cpu_before = cpu_ns(&pids);
            let max = dnsperf(&sb, netns, server, &datafile, secs, None);
            let cpu_us = if pids.is_empty() || max.qps <= 0.0 {
                f64::NAN
            } else {
                cpu_ns(&pids).saturating_sub(cpu_before) as f64
                    / 1000.0
                    / (max.qps * f64::from(secs))
            };
            let mut at5k = dnsperf(&sb, netns, server, &datafile, secs, Some(5000));
            let p50 = pct(&mut at5k.latencies_ms, 0.5);
            let p99 = pct(&mut at5k.latencies_ms, 0.99);
            let at80 = dnsperf(
                &sb,
                netns,
                server,
                &datafile,
                secs,
                Some((max.qps * 0.8) as u32),
            );
            // The answers of every measurement must be NOERRORs (nsd has
            // each name): fast errors would pass for a fast proxy. (At max
            // load a few in 100,000 are SERVFAILs: queries nsd dropped,
            // timed out.)
            for (what, run) in [("max", &max), ("@5k", &at5k), ("@80%", &at80)] {
                if noerror_percent(&run.codes) < 99.9 {
                    eprintln!(
                        "round {} {label} {what}: answers other than NOERROR: {}",
                        round + 1,
                        run.codes
                    );
                }
            }
            let lost80 = if at80.sent > 0 {
                at80.lost as f64 / at80.sent as f64 * 100.0
            } else {
                f64::NAN
            };
            eprintln!(
                "round {} {label}: max {:.0} qps (lost {}, {cpu_us:.2} us CPU/query), @5k p50 {p50:.3} ms p99 {p99:.3} ms, @80% lost {lost80:.3}%",
                round + 1,
                max.qps,
                max.lost
            );
            results[i].0.push(max.qps);
            results[i].1.push(p50);
            results[i].2.push(p99);
            results[i].3.push(lost80);
            results[i].4.push(cpu_us);
        }
    }

    let direct = median(results[0].0.clone());
    let direct_p50 = median(results[0].1.clone());
    let direct_p99 = median(results[0].2.clone());
    println!("{rounds} rounds x {secs} s per measurement, medians; dnsperf 2.10, {NAMES} names, 2 vCPUs shared by client, forwarder and nsd.\n");
    println!(
        "| setup | max qps | / direct | p50 @5k qps | added p50 | p99 @5k qps | lost @80% of max | CPU per query at max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (label, ..)) in targets.iter().enumerate() {
        let qps = median(results[i].0.clone());
        let p50 = median(results[i].1.clone());
        let p99 = median(results[i].2.clone());
        let lost = median(results[i].3.clone());
        let measured: Vec<f64> = results[i]
            .4
            .iter()
            .copied()
            .filter(|c| !c.is_nan())
            .collect();
        let cpu = if measured.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2} us", median(measured))
        };
        println!(
            "| {label} | {qps:.0} | {:.2} | {p50:.3} ms | {:+.3} ms | {p99:.3} ms | {lost:.3}% | {cpu} |",
            qps / direct,
            p50 - direct_p50,
        );
    }
    println!("\n(direct p99 @5k: {direct_p99:.3} ms)");
    // Against the best anchor of each kind, from the same run.
    let qps = |i: usize| median(results[i].0.clone());
    let added = |i: usize| median(results[i].1.clone()) - direct_p50;
    let best_forwarder = qps(3).max(qps(4));
    println!(
        "\nTollgate cache off / best forwarder without cache (unbound {:.0}, dnsmasq {:.0}): **{:.2}x** in max qps; added p50 {:+.3} ms vs unbound's {:+.3} ms",
        qps(3),
        qps(4),
        qps(1) / best_forwarder,
        added(1),
        added(3),
    );
    println!(
        "Tollgate cache warm / unbound cache warm: **{:.2}x** in max qps; added p50 {:+.3} ms vs unbound's {:+.3} ms",
        qps(2) / qps(5),
        added(2),
        added(5),
    );
    for (label, proxy) in [("cache off", &cold), ("cache warm", &warm)] {
        let w = &proxy.metrics.write;
        println!(
            "\nTollgate {label}: answer -> map written p50 <= {} us, p99 <= {} us over {} answers (histogram bucket bounds)",
            w.quantile_upper_bound_us(0.5).unwrap_or(0),
            w.quantile_upper_bound_us(0.99).unwrap_or(0),
            w.count()
        );
    }
}
