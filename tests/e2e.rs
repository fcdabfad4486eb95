//! End-to-end (root): the `tollgate agent` binary in local mode in a node
//! namespace, pods in their own namespaces resolving through nsd, "external"
//! HTTP sites — driven only through `dig`, `curl`, the CLI and signals, as a
//! user would. Each scenario builds its own namespaces.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::cluster::{cnp, fqdn_policy};
use testkit::{eventually, privileged, Cluster};

/// A cluster running this build's `tollgate`.
fn cluster(tag: &str, pods: &[&str]) -> Cluster {
    Cluster::new(env!("CARGO_BIN_EXE_tollgate"), tag, pods)
}

#[test]
fn e2e_allowed_name_connects_on_its_ports_and_other_names_are_refused() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ea", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[443]));
    c.start();
    let (status, answers) = c.dig(&app, "api.test");
    assert_eq!(
        (status.as_str(), answers.as_slice()),
        ("NOERROR", &["203.0.113.10".to_string()][..])
    );
    assert!(
        c.curl(&app, "203.0.113.10", 443),
        "443 is open for api.test"
    );
    assert!(
        !c.curl(&app, "203.0.113.10", 80),
        "80 is not in the toFQDNs ports"
    );
    let (status, answers) = c.dig(&app, "evil.test");
    assert_eq!(status, "REFUSED");
    assert!(answers.is_empty());
    assert!(
        !c.curl(&app, "203.0.113.12", 443),
        "evil.test's IP dialled directly stays closed"
    );
    // The user can see why, filtered by pod and verdict.
    let refused = c.observe_until(
        &["--pod", "app", "--verdict", "REFUSED"],
        || {
            let _ = c.dig(&app, "evil.test");
        },
        |l| l.contains("prod/app") && l.contains("evil.test") && l.contains("not in the DNS rules"),
    );
    assert!(
        refused.iter().all(|l| l.contains("REFUSED")),
        "only REFUSED events: {refused:?}"
    );
    c.observe_until(
        &["--verdict", "DENIED"],
        || {
            let _ = c.curl(&app, "203.0.113.12", 443);
        },
        |l| l.contains("prod/app") && l.contains("203.0.113.12:443") && l.contains("default-deny"),
    );
    // The same in Hubble's flow JSON: the allowed connection with the name
    // it was learned for and the pod's identity labels.
    let hubble = c.observe_until(
        &["--output", "hubble-json", "--verdict", "ALLOWED"],
        || {
            let _ = c.curl(&app, "203.0.113.10", 443);
        },
        |l| l.contains("\"destination_names\":[\"api.test\"]"),
    );
    let flow: serde_json::Value = serde_json::from_str(hubble.last().unwrap()).unwrap();
    let flow = &flow["flow"];
    assert_eq!(flow["verdict"], "FORWARDED", "{flow}");
    assert_eq!(flow["source"]["pod_name"], "app", "{flow}");
    assert_eq!(flow["source"]["namespace"], "prod", "{flow}");
    assert!(
        flow["source"]["labels"]
            .as_array()
            .unwrap()
            .contains(&"k8s:app=app".into()),
        "{flow}"
    );
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 443, "{flow}");
    assert_eq!(flow["IP"]["destination"], "203.0.113.10", "{flow}");
}

/// The agent turns transparent huge pages off for itself: mimalloc asks
/// for them, and 2 MiB pages it had only partly used counted whole in
/// its RSS (136 of 241 MiB of anonymous memory at 50,000 pods,
/// BENCHMARKS.md).
#[test]
fn e2e_the_agent_runs_without_transparent_huge_pages() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ethp", &["app"]);
    c.start();
    let pid = c.agent_pid().expect("started");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "THP_enabled:\t0"),
        "the agent's THP setting: {:?}",
        status.lines().find(|l| l.starts_with("THP_enabled"))
    );
}

#[test]
fn e2e_patterns_deep_patterns_and_a_cname_to_another_domain() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ep", &["app"]);
    let app = c.pod("app");
    c.policy(
        "app.yaml",
        &fqdn_policy("app", &["*.cdn.test", "**.deep.test", "alias.test"], &[80]),
    );
    c.start();
    assert_eq!(
        c.dig(&app, "www.cdn.test").1,
        ["203.0.113.11"],
        "matchPattern through a CNAME"
    );
    assert!(c.curl(&app, "203.0.113.11", 80));
    for deep in ["x.deep.test", "a.b.deep.test"] {
        assert_eq!(
            c.dig(&app, deep).1,
            ["203.0.113.13"],
            "{deep} matches **.deep.test"
        );
    }
    assert!(c.curl(&app, "203.0.113.13", 80));
    assert_eq!(
        c.dig(&app, "deep.test").0,
        "REFUSED",
        "**. needs at least one label"
    );
    let (status, answers) = c.dig(&app, "alias.test");
    assert_eq!(status, "NOERROR");
    assert!(answers.contains(&"203.0.113.14".to_string()), "{answers:?}");
    assert!(
        c.curl(&app, "203.0.113.14", 80),
        "the CNAME target's IP is open for the name the pod asked"
    );
    assert!(!c.curl(&app, "203.0.113.10", 80), "nothing else is");
}

#[test]
fn e2e_short_ttl_expiry_closes_new_connections_not_established_ones() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2et", &["app", "other"]);
    let app = c.pod("app");
    let other = c.pod("other");
    c.policy(
        "app.yaml",
        &fqdn_policy("app", &["short.test"], &[80, 9000]),
    );
    c.policy(
        "other.yaml",
        &fqdn_policy("other", &["short.test"], &[80, 9000]),
    );
    let ext = c.sb.ext.clone();
    c.sb.echo_server(&ext, "203.0.113.10:9000".parse::<SocketAddr>().unwrap());
    c.start();
    assert_eq!(c.dig(&app, "short.test").1, ["203.0.113.10"]);
    let answered = Instant::now();
    let stream = c.sb.stream(&app, "203.0.113.10:9000".parse().unwrap());
    assert!(c.curl(&app, "203.0.113.10", 80));
    assert!(
        !c.curl(&other, "203.0.113.10", 80),
        "one pod's lookup does not open the IP for another"
    );
    // The passage of time is the point: the zone's TTL is 2 s, learned
    // before the answer reached dig; wait it out (plus a margin).
    std::thread::sleep(
        (answered + Duration::from_millis(2_500)).saturating_duration_since(Instant::now()),
    );
    assert!(
        !c.curl(&app, "203.0.113.10", 80),
        "a new connection after expiry fails"
    );
    stream.assert_flowing(Duration::from_millis(1_000), "after the TTL");
    assert_eq!(c.dig(&app, "short.test").1, ["203.0.113.10"]);
    assert!(c.curl(&app, "203.0.113.10", 80), "a new lookup reopens it");
}

#[test]
fn e2e_default_deny_both_directions_and_deny_wins() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ed", &["locked", "open"]);
    let locked = c.pod("locked");
    let open = c.pod("open");
    let locked_ns = locked.netns.clone();
    c.sb.http_server(&locked_ns, 8080, &locked.v4.to_string());
    c.policy(
        "locked.yaml",
        &cnp(
            "locked",
            "endpointSelector: {matchLabels: {app: locked}}\ningress: [{fromEntities: []}]\negress: [{toEntities: []}]",
        ),
    );
    c.policy(
        "open.yaml",
        &cnp(
            "open",
            "endpointSelector: {matchLabels: {app: open}}\negress:\n- toEntities: [world]\negressDeny:\n- toCIDR: [203.0.113.12/32]",
        ),
    );
    c.start();
    assert!(!c.curl(&locked, "203.0.113.10", 80), "egress default deny");
    assert!(
        !c.curl(&open, &locked.v4.to_string(), 8080),
        "ingress default deny"
    );
    assert!(
        c.curl(&open, "203.0.113.10", 80),
        "world is allowed for open"
    );
    assert!(
        !c.curl(&open, "203.0.113.12", 80),
        "the deny rule wins over the world allow"
    );
}

/// A Kubernetes NetworkPolicy in the policy directory is enforced like a
/// CNP, and adds up with one (issue 14).
#[test]
fn e2e_network_policy_file_is_enforced_next_to_a_cnp() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2en", &["server", "client", "other"]);
    let server = c.pod("server");
    let client = c.pod("client");
    let other = c.pod("other");
    let server_ns = server.netns.clone();
    c.sb.http_server(&server_ns, 8080, &server.v4.to_string());
    c.sb.http_server(&server_ns, 8081, &server.v4.to_string());
    c.policy(
        "server-np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: prod}\n\
         spec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n",
    );
    c.policy(
        "server-cnp.yaml",
        &cnp(
            "server-extra",
            "endpointSelector: {matchLabels: {app: server}}\ningress:\n- fromEndpoints: [{matchLabels: {app: other}}]\n  toPorts: [{ports: [{port: '8081', protocol: TCP}]}]",
        ),
    );
    c.start();
    let server_ip = server.v4.to_string();
    assert!(
        c.curl(&client, &server_ip, 8080),
        "the NetworkPolicy allows client on 8080"
    );
    assert!(
        !c.curl(&other, &server_ip, 8080),
        "other is not in the NetworkPolicy"
    );
    assert!(
        !c.curl(&client, &server_ip, 8081),
        "8081 is not in the NetworkPolicy's ports"
    );
    assert!(
        c.curl(&other, &server_ip, 8081),
        "the CNP adds other on 8081"
    );
    c.observe_until(
        &["--verdict", "DENIED"],
        || {
            let _ = c.curl(&other, &server_ip, 8080);
        },
        |l| l.contains("prod/server") && l.contains("default-deny"),
    );
}

#[test]
fn e2e_live_policy_change_and_an_invalid_file_keeps_the_last_good_policy() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2el", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80]));
    c.start();
    assert_eq!(c.dig(&app, "evil.test").0, "REFUSED");
    // Live change: allow evil.test too.
    c.policy(
        "app.yaml",
        &fqdn_policy("app", &["api.test", "evil.test"], &[80]),
    );
    eventually(Duration::from_secs(10), "the new policy to apply", || {
        c.dig(&app, "evil.test").0 == "NOERROR"
    });
    assert!(c.curl(&app, "203.0.113.12", 80));
    // An invalid file: reported, and the last good set stays in force.
    c.policy(
        "broken.yaml",
        &cnp(
            "broken",
            "endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: '99999'}]}]",
        ),
    );
    let check = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["policy", "check"])
        .arg(c.work.join("policies"))
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    eventually(
        Duration::from_secs(10),
        "the agent to report the bad file",
        || c.log().contains("99999 is outside 0-65535"),
    );
    assert!(
        c.log().contains("last good policy set stays in force"),
        "{}",
        c.log()
    );
    assert_eq!(
        c.dig(&app, "evil.test").0,
        "NOERROR",
        "the old policy is still in force"
    );
    assert!(c.curl(&app, "203.0.113.12", 80));
    assert_eq!(c.dig(&app, "www.cdn.test").0, "REFUSED", "and nothing more");
}

#[test]
fn e2e_agent_kill_9_keeps_established_connections_and_names_and_dns_fails_closed() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2ek", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80, 9000]));
    let ext = c.sb.ext.clone();
    c.sb.echo_server(&ext, "203.0.113.10:9000".parse::<SocketAddr>().unwrap());
    c.start();
    assert_eq!(c.dig(&app, "api.test").1, ["203.0.113.10"]);
    let stream = c.sb.stream(&app, "203.0.113.10:9000".parse().unwrap());
    eventually(
        Duration::from_secs(5),
        "the stream's first round trips",
        || stream.round_trips.load(std::sync::atomic::Ordering::SeqCst) >= 2,
    );
    c.stop(true); // kill -9: nothing saved, nothing cleaned up
    stream.assert_flowing(Duration::from_millis(800), "with the agent killed");
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "an unexpired name keeps working while the agent is down"
    );
    assert!(
        !c.curl(&app, "203.0.113.12", 80),
        "and everything else stays denied"
    );
    let (status, answers) = c.dig(&app, "api.test");
    assert!(
        answers.is_empty(),
        "with the proxy down DNS fails closed (got {status} {answers:?})"
    );
    c.start();
    stream.assert_flowing(Duration::from_millis(500), "after the restart");
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "the restarted agent kept the learned name:\n{}",
        c.log()
    );
    assert_eq!(
        c.dig(&app, "api.test").1,
        ["203.0.113.10"],
        "and answers again"
    );
    assert_eq!(c.dig(&app, "evil.test").0, "REFUSED");
}

#[test]
fn e2e_graceful_restart_restores_the_cache_and_keeps_enforcing() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2er", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80]));
    c.start();
    assert_eq!(c.dig(&app, "api.test").1, ["203.0.113.10"]);
    c.stop(false); // SIGTERM: the cache is saved, enforcement stays pinned
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "the learned name works while the agent is stopped"
    );
    assert!(!c.curl(&app, "203.0.113.12", 80), "nothing else does");
    c.start();
    assert!(c.log().contains("restored the FQDN cache"), "{}", c.log());
    assert!(
        c.curl(&app, "203.0.113.10", 80),
        "and after the restart, without a new lookup"
    );
    let metrics = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", c.sb.node))
        .args(["curl", "-s", "http://127.0.0.1:9963/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("tollgate_fqdn_ips 1"),
        "the restored entry is counted:\n{text}"
    );
    // Map fill, from the kernel: the capacity is the pinned map's own.
    assert_eq!(
        c.metric("tollgate_datapath_map_capacity{map=\"tg_fqdn\"}"),
        65536
    );
    assert_eq!(
        c.metric("tollgate_datapath_map_entries{map=\"tg_fqdn\"}"),
        1
    );
    let status = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("status")
        .arg("--state-dir")
        .arg(c.work.join("state"))
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "tollgate status: {status:?}");
    assert!(
        screen.contains("Agent:      up") && screen.contains("1 / 65536"),
        "status shows the running agent and the FQDN map's fill:\n{screen}"
    );
}

#[test]
fn e2e_learned_names_and_flows_are_private_to_the_nodes_administrator() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut c = cluster("e2eprv", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[443]));
    c.start();
    assert_eq!(c.dig(&app, "api.test").0, "NOERROR");
    let state = c.work.join("state");
    let cache = state.join("fqdn-cache.json");
    eventually(Duration::from_secs(5), "the cache is saved", || {
        std::fs::read_to_string(&cache).is_ok_and(|s| s.contains("api.test"))
    });
    // An unprivileged local user, as the attacker.
    let read_as_nobody = |path: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .unwrap()
            .status
            .success()
    };
    // Control: the probe reads what a 0644 file in a 0755 directory holds.
    let control = c.work.join("readable");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&c.work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = control.join("fqdn-cache.json");
    std::fs::copy(&cache, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        read_as_nobody(&copy),
        "control: the probe can read a 0644 file"
    );
    assert!(
        !read_as_nobody(&cache),
        "another local user cannot read the pods' learned names"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state dir");
    assert_eq!(mode(&cache), 0o600, "the cache file");
    assert_eq!(mode(&state.join("events.sock")), 0o600, "the events socket");
    assert_eq!(mode(&state.join("status.sock")), 0o600, "the status socket");
    assert_eq!(
        mode(&state.join("hubble.sock")),
        0o600,
        "the Hubble API socket"
    );
}

/// Looks up unique names under flood.test as fast as it can for ARGV[2]
/// seconds, through ARGV[1]; prints how many answers came back.
const FLOOD: &str = r#"
import socket, struct, sys, time, select
server, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
def query(i):
    labels = [b"n%d" % i, b"flood", b"test"]
    q = b"".join(bytes([len(l)]) + l for l in labels) + b"\0" + struct.pack(">HH", 1, 1)
    return struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + q
end, i, answers = time.time() + seconds, 0, 0
while time.time() < end:
    for _ in range(64):
        try:
            s.sendto(query(i), (server, 53)); i += 1
        except BlockingIOError:
            break
    while select.select([s], [], [], 0)[0]:
        try:
            s.recv(4096); answers += 1
        except BlockingIOError:
            break
print(i, answers)
"#;

/// Times `count` sequential lookups of ARGV[3] through ARGV[1] (2 s
/// timeout each); prints the sorted latencies in ms (-1 for no answer).
const PROBE: &str = r#"
import socket, struct, sys, time
server, count, name = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
q = b"".join(bytes([len(l)]) + l for l in name.split(b".")) + b"\0" + struct.pack(">HH", 1, 1)
out = []
for i in range(count):
    t = time.time()
    s.sendto(struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + q, (server, 53))
    try:
        while True:
            r = s.recv(4096)
            if struct.unpack(">H", r[:2])[0] == i:
                break
        ok = (r[3] & 0xF) == 0
        out.append((time.time() - t) * 1000 if ok else -1)
    except socket.timeout:
        out.append(-1)
    time.sleep(0.05)
print(" ".join("%.1f" % x for x in sorted(out)))
"#;

/// Datagrams the node's network namespace dropped because a socket's
/// receive buffer was full (`RcvbufErrors` of `/proc/net/snmp`).
fn udp_receive_buffer_drops(c: &Cluster) -> u64 {
    let snmp = c.sb.sh(&c.sb.node, "grep ^Udp: /proc/net/snmp").stdout;
    let snmp = String::from_utf8_lossy(&snmp);
    let mut lines = snmp
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names.iter().position(|n| *n == "RcvbufErrors").unwrap();
    values[at].parse().unwrap()
}

#[test]
fn e2e_one_pod_flooding_new_names_cannot_slow_another_pods_dns() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2eflood", &["flood", "victim"]);
    let (flood, victim) = (c.pod("flood"), c.pod("victim"));
    c.policy(
        "flood.yaml",
        &fqdn_policy("flood", &["*.flood.test"], &[443]),
    );
    c.policy("victim.yaml", &fqdn_policy("victim", &["api.test"], &[443]));
    for (file, script) in [("flood.py", FLOOD), ("probe.py", PROBE)] {
        std::fs::write(c.work.join(file), script).unwrap();
    }
    let resolver = testkit::cluster::RESOLVER;
    let run_flood = |c: &Cluster, seconds: u32| {
        let flood_cmd = format!(
            "python3 {} {resolver} {seconds}",
            c.work.join("flood.py").display()
        );
        let probe_cmd = format!(
            "python3 {} {resolver} 40 api.test",
            c.work.join("probe.py").display()
        );
        std::thread::scope(|s| {
            let f = s.spawn(|| c.sb.sh(&flood.netns, &flood_cmd));
            std::thread::sleep(Duration::from_millis(500)); // the flood is on
            let probe =
                String::from_utf8_lossy(&c.sb.sh(&victim.netns, &probe_cmd).stdout).into_owned();
            let sent = String::from_utf8_lossy(&f.join().unwrap().stdout).into_owned();
            (sent, probe)
        })
    };
    let names = |c: &Cluster| c.metric("tollgate_fqdn_names");

    // Control: without the per-pod name and in-flight limits the flood is
    // real — the flooding pod makes the node learn thousands of names (its
    // datagram budget, 2,000 a second, is on in both phases). (8 s: a pod's queries
    // are one DNS worker's, and on a loaded machine that worker learns a
    // few hundred new names a second when thousands share one address.)
    c.start_local(&[
        "--new-names-per-second",
        "0",
        "--max-dns-in-flight-per-pod",
        "0",
    ]);
    let (sent, _) = run_flood(&c, 8);
    let unlimited = names(&c);
    // More than twice what the limited run below may learn (452).
    assert!(
        unlimited > 1000,
        "control: the flood ({sent}) taught the node {unlimited} names"
    );
    c.stop(false);
    let _ = std::fs::remove_file(c.work.join("state/fqdn-cache.json"));

    // With limits (a small new-name budget, to tell it from the control;
    // the default in-flight cap): the flooding pod gets its budget and no
    // more, and the other pod's lookups stay fast and all answered.
    c.start_local(&["--new-names-per-second", "50", "--new-names-burst", "100"]);
    let socket_drops_before = udp_receive_buffer_drops(&c);
    let (sent, probe) = run_flood(&c, 4);
    let socket_drops = udp_receive_buffer_drops(&c) - socket_drops_before;
    let limited = names(&c);
    for o in [
        "dropped_overload",
        "dropped_in_flight",
        "refused_rate_limited",
        "allowed",
    ] {
        eprintln!(
            "{o} {}",
            c.metric(&format!("tollgate_dns_queries_total{{outcome=\"{o}\"}}"))
        );
    }
    let over_budget = c.metric("tollgate_datapath_packets_total{reason=\"drop_dns_rate\"}");
    eprintln!(
        "flood {sent}; victim latencies (ms): {probe}; names {limited} (control {unlimited}); \
         dropped over the pod's datagram budget {over_budget}, by full sockets {socket_drops}"
    );
    // The flood (tens of thousands of datagrams a second) is cut to its
    // budget on its own interface: the proxy's sockets, which every pod
    // shares, never overflow (when they did, the kernel dropped the other
    // pod's queries with the flood's).
    assert!(over_budget > 0, "the flood went over its datagram budget");
    assert_eq!(socket_drops, 0, "no datagram was dropped by a full socket");
    assert!(
        limited <= 100 + 50 * 7 + 2,
        "the flood ({sent}) taught only the budget's worth: {limited} names"
    );
    assert!(c.metric("tollgate_dns_queries_total{outcome=\"refused_rate_limited\"}") > 0);
    let latencies: Vec<f64> = probe
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(latencies.len(), 40, "{probe}");
    assert!(
        latencies.iter().all(|l| *l >= 0.0),
        "every victim lookup answered during the flood: {probe}"
    );
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    assert!(
        p99 < 1000.0,
        "victim p99 {p99} ms during the flood: {probe}"
    );
    assert!(
        c.curl(&victim, "203.0.113.10", 443),
        "the victim's allowed connection works during and after the flood"
    );
}

#[test]
fn e2e_audit_mode_answers_what_enforcement_would_refuse_and_reports_it() {
    if !privileged() {
        return;
    }
    let mut c = cluster("e2eaud", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[443]));
    c.start_local(&["--audit"]);
    // Control: an allowed name is answered and learned as in enforce mode.
    assert_eq!(c.dig(&app, "api.test").0, "NOERROR");
    let learned = c.metric("tollgate_fqdn_names");
    assert_eq!(learned, 1);
    // A name outside the DNS rules: answered (enforcement: REFUSED) ...
    let (status, answers) = c.dig(&app, "evil.test");
    assert_eq!(
        (status.as_str(), answers.as_slice()),
        ("NOERROR", &["203.0.113.12".to_string()][..]),
        "audit mode must not break the lookups it is there to record"
    );
    // ... learns nothing ...
    assert_eq!(c.metric("tollgate_fqdn_names"), learned);
    // ... and is reported as AUDIT with the rule that would refuse it.
    c.observe_until(
        &["--pod", "app", "--verdict", "AUDIT"],
        || {
            let _ = c.dig(&app, "evil.test");
        },
        |l| l.contains("evil.test") && l.contains("would be refused") && l.contains("app-egress"),
    );
}

/// An upgrade on the node: a new agent started next to the running one takes
/// its sockets over (docs/upgrades.md) while a pod resolves a name every
/// 10 ms with one try and a 1 s timeout, as an application would: not one
/// query fails, and the new agent enforces the same policy. The control: a
/// plain restart (stop, then start) under the same load loses queries.
#[test]
fn e2e_upgrade_hands_the_sockets_over_and_no_query_is_lost() {
    use testkit::resolver::ResolverLoop;
    if !privileged() {
        return;
    }
    let mut c = cluster("e2eu", &["app"]);
    let app = c.pod("app");
    c.policy("app.yaml", &fqdn_policy("app", &["api.test"], &[80]));
    c.start();
    let resolver: SocketAddr = format!("{}:53", testkit::cluster::RESOLVER)
        .parse()
        .unwrap();
    let resolving = || {
        ResolverLoop::start(
            &app.netns,
            resolver,
            "api.test",
            Duration::from_millis(10),
            Duration::from_secs(1),
        )
    };

    let during = resolving();
    std::thread::sleep(Duration::from_millis(500));
    let mut previous = c.start_successor();
    std::thread::sleep(Duration::from_millis(300));
    previous.stop(); // SIGTERM: it has handed over and exits
    std::thread::sleep(Duration::from_millis(500));
    let counts = during.stop();
    eprintln!("upgrade: {counts:?}");
    assert!(counts.answered > 50, "the pod kept resolving: {counts:?}");
    assert_eq!(counts.failed, 0, "queries lost in the upgrade: {counts:?}");
    let old_log = std::fs::read_to_string(c.work.join("agent.log")).unwrap();
    assert!(
        old_log.contains("handed the listening sockets over to the successor"),
        "{old_log}"
    );
    // The successor holds the policy: the name's IP opens, another name is
    // refused, and /metrics (its socket handed over too) is its own.
    assert_eq!(c.dig(&app, "api.test").1, ["203.0.113.10"]);
    assert!(c.curl(&app, "203.0.113.10", 80));
    assert_eq!(c.dig(&app, "evil.test").0, "REFUSED");
    assert!(!c.curl(&app, "203.0.113.12", 80));
    assert!(c.metric("tollgate_dns_queries_total{outcome=\"refused_name\"}") >= 1);

    // The control: the same load across a stop and a start loses queries.
    let during = resolving();
    std::thread::sleep(Duration::from_millis(500));
    c.stop(false);
    c.start();
    std::thread::sleep(Duration::from_millis(500));
    let counts = during.stop();
    eprintln!("stop, then start: {counts:?}");
    assert!(
        counts.failed > 0,
        "a restart without a handover lost nothing? {counts:?}"
    );
}
