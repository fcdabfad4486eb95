//! Datapath benchmark (root): pod -> peer through the enforced veth versus
//! the same veth without programs, interleaved rounds in one run.
//!
//! - iperf3 TCP throughput (3 s per measurement);
//! - TCP connection rate (2 s of connect + RST close, one client thread);
//! - the FQDN map write for an 8-IP answer (fqdn-cache learn + map update);
//! - the programs' own cost per packet on each path (BPF_PROG_TEST_RUN: time
//!   in the program as the kernel measures it, preemption left out, so the
//!   figure does not depend on how busy the machine is).
//!
//! Run with `scripts/bench-datapath.sh` (or `cargo run --release -p
//! tollgate-egress-bpf --example datapath_bench -- ROUNDS`). Prints a
//! Markdown table for BENCHMARKS.md.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use egress_bpf::desired::{compile, fqdn_entries, Interfaces, StateDiff};
use egress_bpf::{monotonic_now_ns, Datapath, KernelDatapath, Monitor};
use fqdn_cache::{Config, FqdnCache, PolicyView, Time};
use policy::{Inventory, PolicySet, ResolveOptions};
use testkit::frames;
use testkit::{eventually, NetnsGuard, Pod, Sandbox};

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEntities: []}]
  egress:
  - toCIDR: [203.0.113.10/32]
    toPorts: [{ports: [{port: '5201', protocol: TCP}, {port: '9100', protocol: TCP}]}]
  - toFQDNs: [{matchPattern: '*.bench.test'}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  - toEntities: [cluster]
";

fn inventory(pod: &Pod) -> Inventory {
    let yaml = format!(
        "endpoints:\n  - {{name: a, labels: {{app: a}}, ips: [{}, \"{}\"], interface: {}}}\nnodes:\n  - {{name: n, local: true, ips: [{}]}}\n",
        pod.v4, pod.v6, pod.host_if, pod.gateway_v4
    );
    Inventory::parse(&yaml, "bench").unwrap()
}

struct Enforced {
    dp: KernelDatapath,
    cache: FqdnCache,
    interfaces: Interfaces,
}

fn enforce(sb: &Sandbox, pod: &Pod) -> Enforced {
    let report = policy::parse_str(POLICY, None);
    assert!(!report.has_errors());
    let inv = inventory(pod);
    let resolved = PolicySet::new(report.policies).resolve(&inv, ResolveOptions::default());
    let interfaces: Interfaces = sb.only_endpoint(pod);
    let mut dp = KernelDatapath::open(&sb.pin_dir).unwrap();
    let mut cache = FqdnCache::new(Config::default(), PolicyView::from_resolved(&resolved));
    // Some learned names, as a busy pod would have.
    let key = interfaces.keys().next().unwrap().clone();
    for i in 0..200u32 {
        let ips: Vec<(IpAddr, u32)> = (0..4)
            .map(|k| {
                (
                    IpAddr::from([100, 64, (i / 64) as u8, (i % 64 * 4 + k) as u8]),
                    3600,
                )
            })
            .collect();
        cache.learn(
            Time(monotonic_now_ns()),
            &key,
            &format!("svc{i}.bench.test"),
            &ips,
        );
    }
    let mut desired = compile(&resolved, &inv, &interfaces).state;
    desired.fqdn = fqdn_entries(&cache.full_state(), |k| interfaces.get(k).map(|(i, _)| *i));
    dp.apply(&dp.current().unwrap().diff(&desired)).unwrap();
    Enforced {
        dp,
        cache,
        interfaces,
    }
}

fn iperf(sb: &Sandbox, pod: &Pod) -> f64 {
    let out = sb.sh(&pod.netns, "iperf3 -c 203.0.113.10 -p 5201 -t 3 -J");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

/// RST-close on both sides: TIME_WAIT on either side would collide with
/// reused client ports and turn the test into a SYN-retry test.
const CONN_SERVER: &str = "import socket,struct
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind((\"203.0.113.10\",9100)); s.listen(1024)
while True:
    c,_=s.accept(); c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack(\"ii\",1,0)); c.close()";

const CONN_CLIENT: &str = "import socket,struct,time,sys
n=0; t=time.time(); d=float(sys.argv[1])
while time.time()-t<d:
    c=socket.socket(); c.settimeout(1)
    try:
        c.connect((\"203.0.113.10\",9100)); n+=1
    except OSError: pass
    c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack(\"ii\",1,0)); c.close()
print(n/(time.time()-t))";

fn connection_rate(sb: &Sandbox, pod: &Pod, secs: f64) -> f64 {
    let out = sb.sh(&pod.netns, &format!("python3 -c '{CONN_CLIENT}' {secs}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("connections/s")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    assert!(testkit::privileged(), "the datapath benchmark needs root");
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let mut sb = Sandbox::new("bench");
    let pod = sb.pod("a");
    let ext = sb.ext.clone();
    sb.spawn(&ext, "iperf3 -s -p 5201");
    // Accept-and-RST server for the connection rate (a separate process, as
    // the client is: in-process threads measured scheduling, not the network).
    sb.spawn(&ext, &format!("python3 -c '{CONN_SERVER}'"));
    for port in [5201, 9100] {
        eventually(
            Duration::from_secs(10),
            &format!("a server listening on :{port}"),
            || {
                !sb.try_sh(&ext, &format!("ss -Hltn 'sport = :{port}'"))
                    .stdout
                    .is_empty()
            },
        );
    }

    let (mut bare_bw, mut enf_bw, mut bare_cps, mut enf_cps) = (vec![], vec![], vec![], vec![]);
    let mut lost_events = 0;
    for round in 0..rounds {
        // Alternate which mode goes first, so drift hits both alike.
        for enforced_first in [round % 2 == 0, round % 2 != 0] {
            if enforced_first {
                let mut e = {
                    let _g = NetnsGuard::enter(&sb.node);
                    enforce(&sb, &pod)
                };
                enf_bw.push(iperf(&sb, &pod));
                enf_cps.push(connection_rate(&sb, &pod, 2.0));
                let _g = NetnsGuard::enter(&sb.node);
                lost_events += e.dp.counters().unwrap().get("events_lost");
                let _ = e.dp.poll_events(usize::MAX);
                drop(e);
                egress_bpf::kernel::uninstall(&sb.pin_dir).unwrap();
            } else {
                bare_bw.push(iperf(&sb, &pod));
                bare_cps.push(connection_rate(&sb, &pod, 2.0));
            }
        }
        eprintln!(
            "round {}: bare {:.2} Gbit/s {:.0} conn/s | enforced {:.2} Gbit/s {:.0} conn/s",
            round + 1,
            bare_bw[round],
            bare_cps[round],
            enf_bw[round],
            enf_cps[round]
        );
    }

    // Answer -> map written for 8 IPs: fqdn-cache learn + FQDN map update.
    let _g = NetnsGuard::enter(&sb.node);
    let mut e = enforce(&sb, &pod);
    let key = e.interfaces.keys().next().unwrap().clone();
    let ips: Vec<(IpAddr, u32)> = (0..8)
        .map(|k| (IpAddr::from([100, 65, 0, k as u8]), 300))
        .collect();
    let (mut learn_us, mut write_us, mut total_us) = (vec![], vec![], vec![]);
    for i in 0..2000u64 {
        let t0 = Instant::now();
        let diff = e.cache.learn(
            Time(monotonic_now_ns() + i * 1_000_000_000),
            &key,
            "api.bench.test",
            &ips,
        );
        let interfaces = e.interfaces.clone();
        let fqdn = StateDiff::from_fqdn(&diff, |k| interfaces.get(k).map(|(i, _)| *i));
        let t1 = Instant::now();
        e.dp.apply(&fqdn).unwrap();
        let t2 = Instant::now();
        assert_eq!(fqdn.fqdn.put.len(), 8);
        learn_us.push((t1 - t0).as_secs_f64() * 1e6);
        write_us.push((t2 - t1).as_secs_f64() * 1e6);
        total_us.push((t2 - t0).as_secs_f64() * 1e6);
    }
    let costs = program_costs(&mut e, &pod);
    drop(e);
    drop(_g);

    let (bb, eb, bc, ec) = (
        median(&mut bare_bw),
        median(&mut enf_bw),
        median(&mut bare_cps),
        median(&mut enf_cps),
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("Machine: {} CPUs ({cpu}), kernel {}", num_cpus(), kernel());
    println!("{rounds} interleaved rounds, medians.\n");
    println!("| measure | bare veth | enforced veth | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| iperf3 TCP pod -> peer | {bb:.2} Gbit/s | {eb:.2} Gbit/s | {:.3} | >= 0.95 |",
        eb / bb
    );
    println!(
        "| TCP connections/s pod -> peer | {bc:.0} | {ec:.0} | {:.3} | >= 0.85 |",
        ec / bc
    );
    println!();
    println!("| 8-IP answer -> FQDN map written (2000 answers) | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| fqdn-cache learn + diff | {:.1} us | {:.1} us |",
        percentile(&mut learn_us, 0.5),
        percentile(&mut learn_us, 0.99)
    );
    println!(
        "| BPF map update, 8 entries | {:.1} us | {:.1} us |",
        percentile(&mut write_us, 0.5),
        percentile(&mut write_us, 0.99)
    );
    println!(
        "| total | {:.1} us | {:.1} us |",
        percentile(&mut total_us, 0.5),
        percentile(&mut total_us, 0.99)
    );
    println!();
    println!("| path (BPF_PROG_TEST_RUN, ns per packet in the program) | p50 | p90 |");
    println!("|---|---|---|");
    for (path, mut ns) in costs {
        println!(
            "| {path} | {:.0} | {:.0} |",
            percentile(&mut ns, 0.5),
            percentile(&mut ns, 0.9)
        );
    }
    if lost_events > 0 {
        println!(
            "\n(flow events lost to a full ring buffer while nobody drained it: {lost_events})"
        );
    }
}

/// Nanoseconds per packet on each path of the programs, from 200 test runs
/// of 1,000 repetitions each (one repetition per run where every run must
/// first see a policy change).
fn program_costs(e: &mut Enforced, pod: &Pod) -> Vec<(&'static str, Vec<f64>)> {
    let ifindex = e.interfaces.values().next().unwrap().0;
    let (dst_mac, src_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let peer: IpAddr = "203.0.113.10".parse().unwrap();
    let tcp = |src: IpAddr, dst: IpAddr, sport, dport, flags| {
        let segment = frames::tcp(src, dst, sport, dport, flags, &[0; 64]);
        frames::ethernet(
            dst_mac,
            src_mac,
            &frames::ip(src, dst, frames::PROTO_TCP, &segment),
        )
    };
    let syn = tcp(pod.v4, peer, 50000, 5201, frames::SYN);
    let data = tcp(pod.v4, peer, 50000, 5201, 0x18);
    let reply = tcp(peer, pod.v4, 5201, 50000, 0x10);
    let denied = tcp(
        pod.v4,
        "203.0.113.11".parse().unwrap(),
        50001,
        80,
        frames::SYN,
    );
    let out = egress_bpf::abi::DIR_EGRESS;
    let inbound = egress_bpf::abi::DIR_INGRESS;
    assert!(e.dp.test_run(out, &syn, ifindex, 0).unwrap().passed);
    let mut batches = |dir, frame: &[u8], want: bool| -> Vec<f64> {
        (0..200)
            .map(|_| {
                let v = e.dp.test_run_repeat(dir, frame, ifindex, 0, 1000).unwrap();
                assert_eq!(v.passed, want);
                let _ = e.dp.poll_events(usize::MAX);
                v.duration.as_nanos() as f64
            })
            .collect()
    };
    let mut out_rows = vec![
        (
            "established: the flow's own packet",
            batches(out, &data, true),
        ),
        ("established: a reply", batches(inbound, &reply, true)),
        (
            "new flow denied: the whole decision + event",
            batches(out, &denied, false),
        ),
    ];
    // The flow's own packet right after a policy change: decided again.
    let probe: ipnet::IpNet = "192.0.2.123/32".parse().unwrap();
    let mut again = Vec::new();
    for i in 0..2000 {
        let mut diff = StateDiff::default();
        if i % 2 == 0 {
            diff.ipcache.put.push((probe, 300));
        } else {
            diff.ipcache.del.push(probe);
        }
        e.dp.apply(&diff).unwrap();
        let v = e.dp.test_run(out, &data, ifindex, 0).unwrap();
        assert!(v.passed);
        again.push(v.duration.as_nanos() as f64);
    }
    out_rows.push((
        "established: the flow's own packet after a policy change",
        again,
    ));
    out_rows
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
