//! The whole agent in-process, unprivileged: local mode over real files, the
//! in-memory datapath, the DNS proxy's hickory handler driven with `Request`
//! values and a scripted upstream (no sockets). Learn, GC (expiry and a
//! zombie kept by a live connection), shutdown with the cache saved,
//! restore into a fresh datapath, reload, and uninstall on exit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dns_proxy::reply::RecordingReply;
use dns_proxy::{Transport, Upstream, UpstreamError};
use egress_bpf::FakeDatapath;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use tollgate::agent::{self, Agent, AgentConfig, Binds};
use tollgate::node::Node;

// Only the agent configuration is shared with this suite.
#[allow(dead_code)]
mod support;

const POD: &str = "10.0.1.10";
const RESOLVER: &str = "10.96.0.10:53";
const VETH: &str = "veth-payments";
const IFINDEX: u32 = 7;

const ENDPOINTS: &str = "endpoints:
  - {name: payments, namespace: prod, labels: {app: payments}, ips: [10.0.1.10], interface: veth-payments}
";

/// DNS to the resolver for `*.test`, and the IPs of `*.test` on 443.
const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: payments, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: payments}}
  egress:
    - toCIDR: [10.96.0.10/32]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules:
            dns: [{matchPattern: "*.test"}]
    - toFQDNs: [{matchPattern: "*.test"}]
      toPorts:
        - ports: [{port: "443", protocol: TCP}]
"#;

/// The same DNS rule, no toFQDNs: names are answered, nothing is opened.
const POLICY_DNS_ONLY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: payments, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: payments}}
  egress:
    - toCIDR: [10.96.0.10/32]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules:
            dns: [{matchPattern: "*.test"}]
"#;

/// Answers `name -> (address, ttl)`; NXDOMAIN otherwise. Counts calls.
struct ScriptedUpstream {
    answers: HashMap<&'static str, ([u8; 4], u32)>,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Upstream for ScriptedUpstream {
    async fn exchange(
        &self,
        _server: SocketAddr,
        _: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let q = Message::from_vec(query).expect("the proxy forwards a valid query");
        let qname = q.queries[0].name.to_string().to_ascii_lowercase();
        let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = q.metadata.recursion_desired;
        resp.add_query(q.queries[0].clone());
        match self.answers.get(qname.trim_end_matches('.')) {
            Some((ip, ttl)) => {
                resp.add_answer(Record::from_rdata(
                    q.queries[0].name.clone(),
                    *ttl,
                    RData::A(A(Ipv4Addr::from(*ip))),
                ));
            }
            None => resp.metadata.response_code = ResponseCode::NXDomain,
        }
        Ok(resp.to_vec().unwrap())
    }
}

fn upstream(calls: Arc<AtomicUsize>) -> ScriptedUpstream {
    ScriptedUpstream {
        answers: HashMap::from([
            ("api.test", ([203, 0, 113, 10], 300)),
            ("short.test", ([198, 51, 100, 1], 1)),
            ("zombie.test", ([198, 51, 100, 2], 1)),
            ("evil.example", ([6, 6, 6, 6], 300)),
        ]),
        calls,
    }
}

fn config(dir: &Path, uninstall_on_exit: bool) -> AgentConfig {
    AgentConfig {
        pin_dir: dir.join("pins-unused"),
        cache: fqdn_cache::Config {
            min_ttl: 0,
            ttl_floor: 1,
            zombie_grace: 0,
            ..fqdn_cache::Config::default()
        },
        uninstall_on_exit,
        ..support::in_process::config(dir)
    }
}

fn write_inputs(dir: &Path, policy: &str) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/payments.yaml"), policy).unwrap();
    std::fs::write(dir.join("endpoints.yaml"), ENDPOINTS).unwrap();
}

fn datapath() -> FakeDatapath {
    let dp = FakeDatapath::default();
    dp.monitor.set_interface(VETH, IFINDEX);
    dp
}

type TestAgent = Agent<FakeDatapath, ScriptedUpstream>;

/// Asks the agent's DNS proxy, as the pod would, through its handler.
async fn ask(
    agent_dns: &Arc<agent::DnsProxy<FakeDatapath, ScriptedUpstream>>,
    qname: &str,
) -> Message {
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
    let request = Request::from_bytes(
        m.to_vec().unwrap(),
        SocketAddr::new(POD.parse().unwrap(), 40000),
        Protocol::Udp,
    )
    .unwrap();
    let reply = RecordingReply::udp(1232);
    agent_dns
        .handler(RESOLVER.parse().unwrap(), Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    let mut sent = reply.take();
    assert_eq!(sent.len(), 1, "exactly one response to {qname}");
    sent.remove(0)
}

fn has_fqdn_entry(agent: &TestAgent, ip: &str) -> bool {
    let ip: IpAddr = ip.parse().unwrap();
    agent
        .node()
        .inspect(|dp, _| dp.state.fqdn.contains_key(&(IFINDEX, ip)))
}

/// A condition: the FQDN map has no entry for `ip`.
fn gone(node: &Arc<Node<FakeDatapath>>, ip: &str) -> impl FnMut() -> bool {
    let node = node.clone();
    let ip: IpAddr = ip.parse().unwrap();
    move || !node.inspect(|dp, _| dp.state.fqdn.contains_key(&(IFINDEX, ip)))
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_learns_expires_saves_restores_reloads_and_stops_in_process() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path(), POLICY);
    let calls = Arc::new(AtomicUsize::new(0));

    // --- First run: learn, GC, shutdown.
    let agent = agent::build(
        config(dir.path(), false),
        datapath(),
        upstream(calls.clone()),
        Binds::default(),
    )
    .await
    .expect("the agent builds on the fake datapath");
    assert!(
        agent.node().inspect(|dp, _| dp.redirects.is_some()),
        "the proxy redirect is installed at build"
    );
    assert!(
        agent
            .node()
            .inspect(|dp, _| dp.state.endpoints.values().any(|e| e.interface == VETH)),
        "the pod's veth is enforced"
    );

    let answer = ask(agent.dns(), "api.test.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        has_fqdn_entry(&agent, "203.0.113.10"),
        "the answer's IP is in the FQDN map as soon as the answer is sent"
    );
    let refused = ask(agent.dns(), "evil.example.").await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(
        !has_fqdn_entry(&agent, "6.6.6.6"),
        "a refused name opens nothing"
    );
    let asked = calls.load(Ordering::SeqCst);
    assert_eq!(asked, 1, "the refused name never reached the upstream");

    // GC: a 1 s answer expires; one a live connection uses is kept.
    ask(agent.dns(), "short.test.").await;
    ask(agent.dns(), "zombie.test.").await;
    assert!(has_fqdn_entry(&agent, "198.51.100.1") && has_fqdn_entry(&agent, "198.51.100.2"));
    let monitor = agent.node().inspect(|dp, _| dp.monitor.clone());
    monitor.set_live([(IFINDEX, "198.51.100.2".parse().unwrap())]);

    let node = agent.node().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    eventually(
        "both expired answers' entries are removed from the map",
        Duration::from_secs(5),
        || gone(&node, "198.51.100.1")() && gone(&node, "198.51.100.2")(),
    )
    .await;
    assert!(!gone(&node, "203.0.113.10")(), "an unexpired entry stays");
    let payments = policy::EndpointKey {
        namespace: "prod".into(),
        name: "payments".into(),
    };
    let zombie_ip: IpAddr = "198.51.100.2".parse().unwrap();
    assert_eq!(
        node.names_for(&payments, zombie_ip),
        vec!["zombie.test".to_string()],
        "the expired name a live connection uses stays nameable (a zombie: flows keep their name)"
    );
    assert!(
        node.names_for(&payments, "198.51.100.1".parse().unwrap())
            .is_empty(),
        "the expired name without a connection is forgotten"
    );
    monitor.set_live([]);
    eventually(
        "the zombie goes once its connection is gone",
        Duration::from_secs(5),
        || node.names_for(&payments, zombie_ip).is_empty(),
    )
    .await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the agent stops within 10 s of shutdown")
        .unwrap()
        .expect("a clean shutdown");
    assert!(
        node.inspect(|dp, _| !dp.uninstalled && dp.state.fqdn.len() == 1),
        "enforcement stays after a stop: the map keeps the unexpired entry"
    );
    let saved = dir.path().join("state/fqdn-cache.json");
    assert!(saved.exists(), "the cache is saved on shutdown");
    drop(node);

    // --- Second run on a fresh datapath: the saved cache is restored.
    let agent = agent::build(
        config(dir.path(), true),
        datapath(),
        upstream(calls.clone()),
        Binds::default(),
    )
    .await
    .unwrap();
    assert!(
        has_fqdn_entry(&agent, "203.0.113.10"),
        "the restored name's IP is enforced before any query"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "restoring asked no upstream"
    );

    // Reload: the toFQDNs rule goes, and with it what it opened.
    let node = agent.node().clone();
    let dns = agent.dns().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    write_inputs(dir.path(), POLICY_DNS_ONLY);
    eventually(
        "the reload removes the FQDN entries",
        Duration::from_secs(5),
        gone(&node, "203.0.113.10"),
    )
    .await;
    let answer = ask(&dns, "api.test.").await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NoError,
        "the DNS rule still answers the name"
    );
    assert!(
        node.inspect(|dp, _| dp.state.fqdn.is_empty()),
        "but with no toFQDNs rule nothing is opened"
    );

    // A datapath write fails during a reload: the new policy is retried
    // until it is in the maps, without waiting for another change.
    node.with_datapath_mut(|dp| dp.broken = true);
    write_inputs(dir.path(), POLICY);
    tokio::time::sleep(Duration::from_millis(300)).await; // the reload fails
    assert!(
        node.needs_repair(),
        "the failed write is remembered, not forgotten"
    );
    node.with_datapath_mut(|dp| dp.broken = false);
    eventually(
        "the failed reload is applied once the datapath works",
        Duration::from_secs(5),
        || !node.needs_repair(),
    )
    .await;
    assert_eq!(
        node.inspect(|dp, _| dp
            .state
            .fqdn
            .keys()
            .map(|(_, ip)| ip.to_string())
            .collect::<Vec<_>>()),
        vec!["203.0.113.10"],
        "the toFQDNs rule is back and opens the learned name again"
    );

    // A broken policy file: reported, the last good set stays.
    let allow_before = node.inspect(|dp, _| dp.state.allow.clone());
    std::fs::write(
        dir.path().join("policies/broken.yaml"),
        "spec: [not, a, policy",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // several reload ticks
    assert_eq!(
        node.inspect(|dp, _| dp.state.allow.clone()),
        allow_before,
        "a broken file changes nothing"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        node.inspect(|dp, _| dp.uninstalled && dp.redirects.is_none()),
        "uninstall_on_exit removes the datapath and the redirect"
    );
}

#[tokio::test]
async fn invalid_inputs_stop_the_build_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path(), "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: prod}\nspec: {endpointSelector: {}, egres: []}\n");
    let err = agent::build(
        config(dir.path(), false),
        datapath(),
        upstream(Arc::default()),
        Binds::default(),
    )
    .await
    .err()
    .expect("an invalid policy stops the build");
    assert!(err.to_string().contains("not starting"), "{err:#}");
}

#[tokio::test]
async fn a_pod_over_its_new_name_budget_gets_servfail_and_known_names_still_work() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path(), POLICY);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut config = config(dir.path(), false);
    config.limits.new_names_per_second = 1;
    config.limits.new_names_burst = 2;
    let agent = agent::build(
        config,
        datapath(),
        upstream(calls.clone()),
        Binds::default(),
    )
    .await
    .unwrap();
    let code = |m: Message| m.metadata.response_code;
    assert_eq!(
        code(ask(agent.dns(), "api.test.").await),
        ResponseCode::NoError
    );
    assert_eq!(
        code(ask(agent.dns(), "short.test.").await),
        ResponseCode::NoError
    );
    assert_eq!(
        code(ask(agent.dns(), "zombie.test.").await),
        ResponseCode::ServFail,
        "the third new name within the second is over the budget"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "and never reached the upstream"
    );
    assert!(
        !has_fqdn_entry(&agent, "198.51.100.2"),
        "nothing was opened for it"
    );
    assert_eq!(
        code(ask(agent.dns(), "api.test.").await),
        ResponseCode::NoError,
        "a name the pod knows costs nothing"
    );
}
