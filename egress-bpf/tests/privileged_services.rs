//! Privileged tests of Service translation: the real programs on real veths,
//! a pod connecting to a Service address (a ClusterIP) with `curl` and a
//! connected UDP socket, as pods do on a real node where kube-proxy would
//! otherwise translate after the policy has already seen the ClusterIP.
//!
//! What a user relies on: the policy decides on the backend (a
//! `toEndpoints` rule or `toServices` covers a Service whose backends it
//! selects, at the backend's port, as in Cilium), the replies come back from
//! the Service address (TCP handshakes and connected UDP sockets accept
//! them), every backend is used, a removed backend gets no new flows, a
//! Service without backends drops, and all of it over IPv6 as well.
//!
//! Root is required (see `testkit::privileged`).

use std::collections::BTreeSet;
use std::time::Duration;

use egress_bpf::desired::{compile, Interfaces};
use egress_bpf::{Datapath, FlowReason, FlowVerdict, KernelDatapath, Monitor};
use policy::{EndpointKey, Inventory, PolicySet, ResolveOptions};
use testkit::{eventually, privileged, NetnsGuard, Pod, Sandbox};

const VIP: &str = "10.96.0.20";
const VIP6: &str = "fd00:96::20";
const OTHER_VIP: &str = "10.96.0.30";
const EMPTY_VIP: &str = "10.96.0.40";

fn key(p: &Pod) -> EndpointKey {
    EndpointKey {
        namespace: "default".into(),
        name: p.name.clone(),
    }
}

/// Pods `web1`, `web2` (role web) and `db` (role db); Services `web`
/// (VIP, VIP6; 80 -> 8080 TCP, 53 -> 5353 UDP), `db` (OTHER_VIP 80 -> 8080)
/// and `empty` (EMPTY_VIP, selecting nobody). `backends`: which of web1 and
/// web2 are ready (listed, as Kubernetes mode gets them from EndpointSlices).
fn inventory_yaml(sb: &Sandbox, backends: &[&Pod]) -> String {
    let mut y = String::from("endpoints:\n");
    for p in &sb.pods {
        let role = match p.name.as_str() {
            "web1" | "web2" => "web",
            other => other,
        };
        y.push_str(&format!(
            "  - {{name: {0}, namespace: default, labels: {{app: {0}, role: {role}}}, ips: [{1}, \"{2}\"], interface: {3}}}\n",
            p.name, p.v4, p.v6, p.host_if
        ));
    }
    let node_ips: Vec<String> = sb.pods.iter().map(|p| p.gateway_v4.to_string()).collect();
    y.push_str(&format!(
        "nodes:\n  - {{name: node, local: true, ips: [{}]}}\n",
        node_ips.join(", ")
    ));
    let listed: Vec<String> = backends
        .iter()
        .flat_map(|p| {
            [
                format!("{{ip: {}, ports: {{http: 8080, dns: 5353}}}}", p.v4),
                format!("{{ip: \"{}\", ports: {{http: 8080, dns: 5353}}}}", p.v6),
            ]
        })
        .collect();
    y.push_str(&format!(
        "services:\n\
         - name: web\n  namespace: default\n  labels: {{tier: front}}\n  ips: [{VIP}, \"{VIP6}\"]\n\
         \x20 ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]\n\
         \x20 backends: [{}]\n\
         - name: db\n  namespace: default\n  ips: [{OTHER_VIP}]\n  selector: {{role: db}}\n\
         \x20 ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
         - name: empty\n  namespace: default\n  ips: [{EMPTY_VIP}]\n  selector: {{role: nobody}}\n\
         \x20 ports: [{{name: http, port: 80}}]\n",
        listed.join(", ")
    ));
    y
}

/// Compiles `policies` against the sandbox and writes the difference to the
/// maps, as the agent's reload does.
fn enforce(sb: &Sandbox, dp: &mut KernelDatapath, policies: &str, backends: &[&Pod]) {
    let report = policy::parse_str(policies, None);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let inventory = Inventory::parse(&inventory_yaml(sb, backends), "test").unwrap();
    let resolved = PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
    let interfaces: Interfaces = sb
        .pods
        .iter()
        .map(|p| (key(p), (sb.ifindex(&p.host_if), p.host_if.clone())))
        .collect();
    let desired = compile(&resolved, &inventory, &interfaces).state;
    let diff = dp.current().unwrap().diff(&desired);
    dp.apply(&diff).expect("apply");
}

fn cnp(name: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{body}")
}

/// A web server on 8080 that answers with the pod's name, and a UDP echo
/// server on 5353 that answers with it too.
fn servers(sb: &mut Sandbox, pod: &Pod) {
    let dir = sb.scratch(&format!("www-{}", pod.name));
    std::fs::write(dir.join("index.html"), &pod.name).unwrap();
    let netns = pod.netns.clone();
    sb.spawn(
        &netns,
        &format!(
            "python3 -m http.server 8080 --bind :: --directory {}",
            dir.display()
        ),
    );
    sb.spawn(
        &netns,
        &format!(
            "python3 -c \"import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.bind(('::',5353))\nwhile True:\n  d,a=s.recvfrom(512)\n  s.sendto(b'{}',a)\"",
            pod.name
        ),
    );
    let url = format!("http://{}:8080/", pod.v4);
    eventually(Duration::from_secs(10), &url, || {
        sb.try_sh(&netns, &format!("curl -s -m 1 -o /dev/null {url}"))
            .status
            .success()
    });
}

/// The body `curl` got from `addr:port` in `pod` (empty if it failed).
fn fetch(sb: &Sandbox, pod: &Pod, addr: &str, port: u16) -> String {
    let host = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    };
    let out = sb.try_sh(
        &pod.netns,
        &format!("curl -s -m 2 http://{host}:{port}/index.html"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer a *connected* UDP socket in `pod` gets from `addr:port`: the
/// kernel hands it only datagrams whose source is exactly that address.
fn udp_ask(sb: &Sandbox, pod: &Pod, addr: &str, port: u16) -> String {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let out = sb.try_sh(
        &pod.netns,
        &format!(
            "python3 -c \"import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\ns.settimeout(2)\ns.connect(('{addr}',{port}))\ns.send(b'hi')\nprint(s.recv(512).decode())\""
        ),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The backends that answered `n` requests to `addr:port`.
fn answered_by(sb: &Sandbox, pod: &Pod, addr: &str, port: u16, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| fetch(sb, pod, addr, port)).collect()
}

#[test]
fn privileged_service_addresses_reach_backends_and_replies_come_from_the_service() {
    if !privileged() {
        return;
    }
    let mut sb = Sandbox::new("svc");
    let client = sb.pod("client");
    let web1 = sb.pod("web1");
    let web2 = sb.pod("web2");
    let db = sb.pod("db");
    for p in [&web1, &web2, &db] {
        servers(&mut sb, p);
    }
    let _in_node = NetnsGuard::enter(&sb.node);
    let mut dp = KernelDatapath::open(&sb.pin_dir).expect("load");

    // No policy selects the client: every backend answers, over TCP and
    // (connected) UDP, IPv4 and IPv6, from the Service's address.
    enforce(&sb, &mut dp, "", &[&web1, &web2]);
    let both: BTreeSet<String> = ["web1".to_string(), "web2".to_string()].into();
    assert_eq!(
        answered_by(&sb, &client, VIP, 80, 24),
        both,
        "both backends serve"
    );
    assert_eq!(answered_by(&sb, &client, VIP6, 80, 24), both, "IPv6 too");
    let udp: BTreeSet<String> = (0..24).map(|_| udp_ask(&sb, &client, VIP, 53)).collect();
    assert_eq!(udp, both, "UDP replies come from the Service address");
    let udp6: BTreeSet<String> = (0..24).map(|_| udp_ask(&sb, &client, VIP6, 53)).collect();
    assert_eq!(udp6, both, "and over IPv6");
    assert_eq!(
        fetch(&sb, &client, OTHER_VIP, 80),
        "db",
        "the selector Service"
    );
    assert_eq!(
        fetch(&sb, &client, EMPTY_VIP, 80),
        "",
        "no backend: dropped"
    );
    // The datapath says which Service a translated flow was sent to (the
    // DNS proxy's events name it): a query from a known source port.
    let out = sb.try_sh(
        &client.netns,
        &format!(
            "python3 -c \"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\ns.bind(('{}',40053))\ns.connect(('{VIP}',53))\ns.send(b'hi')\nprint(s.recv(512).decode())\"",
            client.v4
        ),
    );
    let answered = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (chosen, other) = if answered == "web1" {
        (&web1, &web2)
    } else {
        assert_eq!(answered, "web2");
        (&web2, &web1)
    };
    let monitor = dp.monitor().unwrap();
    let ifindex = monitor.interface_index(&client.host_if).unwrap();
    let sent = std::net::SocketAddr::new(client.v4, 40053);
    let frontend = |backend: &Pod, protocol: u8| {
        monitor.service_frontend(
            ifindex,
            protocol,
            sent,
            std::net::SocketAddr::new(backend.v4, 5353),
        )
    };
    assert_eq!(
        frontend(chosen, 17),
        Some(format!("{VIP}:53").parse().unwrap())
    );
    assert_eq!(frontend(other, 17), None, "not the backend it went to");
    assert_eq!(frontend(chosen, 6), None, "not over TCP");
    let counters = monitor.counters().unwrap();
    drop(monitor);
    assert!(counters.get("svc_translated") > 0, "{counters:?}");
    assert!(counters.get("drop_no_backend") > 0, "{counters:?}");

    // The client may reach the web pods at 8080 only: the policy speaks of
    // the backends and their port, not of the Service address.
    let to_web = cnp(
        "client-to-web",
        "endpointSelector: {matchLabels: {app: client}}\negress:\n\
         - toEndpoints: [{matchLabels: {role: web}}]\n  toPorts: [{ports: [{port: '8080', protocol: TCP}]}]",
    );
    enforce(&sb, &mut dp, &to_web, &[&web1, &web2]);
    let mut monitor = dp.monitor().unwrap();
    monitor.poll_events(10_000).unwrap();
    assert_eq!(
        answered_by(&sb, &client, VIP, 80, 16),
        both,
        "allowed backends"
    );
    assert_eq!(fetch(&sb, &client, OTHER_VIP, 80), "", "db is not allowed");
    assert_eq!(
        fetch(&sb, &client, &db.v4.to_string(), 8080),
        "",
        "nor directly"
    );
    assert_eq!(
        udp_ask(&sb, &client, VIP, 53),
        "",
        "UDP 5353 is not allowed"
    );
    let events = monitor.poll_events(10_000).unwrap();
    let backend_ips = [web1.v4, web2.v4];
    assert!(
        events.iter().any(|e| e.verdict == FlowVerdict::Allowed
            && backend_ips.contains(&e.dst)
            && e.dport == 8080),
        "flow events name the backend and its port: {events:?}"
    );
    assert!(
        events.iter().any(|e| e.verdict == FlowVerdict::Denied
            && e.dst == db.v4
            && e.reason == FlowReason::DefaultDeny),
        "the denied Service flow is reported with its backend: {events:?}"
    );

    // toServices by name means the same backends (Cilium turns it into the
    // Service's selector, or into its backend addresses without one).
    let to_services = cnp(
        "client-to-db-service",
        "endpointSelector: {matchLabels: {app: client}}\negress:\n\
         - toServices: [{k8sService: {serviceName: db, namespace: default}}]",
    );
    enforce(&sb, &mut dp, &to_services, &[&web1, &web2]);
    assert_eq!(
        fetch(&sb, &client, OTHER_VIP, 80),
        "db",
        "toServices allows db"
    );
    assert_eq!(
        answered_by(&sb, &client, VIP, 80, 4),
        [String::new()].into(),
        "web is not named"
    );

    // A backend that leaves the Service gets no new flows.
    enforce(&sb, &mut dp, &to_web, &[&web2]);
    assert_eq!(
        answered_by(&sb, &client, VIP, 80, 12),
        ["web2".to_string()].into(),
        "only the remaining backend"
    );
}
