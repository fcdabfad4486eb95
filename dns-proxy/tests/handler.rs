//! The handler with hickory `Request` values, a recording reply, a recording
//! sink and a scripted upstream: no sockets, no root.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dns_proxy::reply::RecordingReply;
use dns_proxy::{
    DenyResponse, DnsCheck, DnsOutcome, DnsPolicy, LearnSink, PolicyDns, Proxy, ProxyConfig,
    SinkError, Transport, Upstream, UpstreamError,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use policy::EndpointKey;
use rstest::rstest;

const POD: &str = "10.0.1.10";
const RESOLVER: &str = "10.96.0.10:53";

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn ep(n: &str) -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: n.into(),
    }
}

/// Pods by address; names allowed per pod; one allowed resolver.
struct FakePolicy {
    pods: HashMap<IpAddr, EndpointKey>,
    allowed: Vec<&'static str>,
}

impl DnsPolicy for FakePolicy {
    fn endpoint(&self, src: IpAddr) -> Option<EndpointKey> {
        self.pods.get(&src).cloned()
    }
    fn check(&self, _: &EndpointKey, resolver: SocketAddr, _: Transport, qname: &str) -> DnsCheck {
        if resolver != RESOLVER.parse().unwrap() {
            return DnsCheck::ResolverDenied;
        }
        let q = qname.trim_end_matches('.').to_ascii_lowercase();
        if self.allowed.iter().any(|a| *a == q) {
            DnsCheck::Allowed
        } else {
            DnsCheck::NameDenied
        }
    }
}

/// Every learn the sink saw: (endpoint, query name, addresses with TTLs).
type Learned = Arc<Mutex<Vec<(EndpointKey, String, Vec<(IpAddr, u32)>)>>>;

/// Records learns into a shared log; can be told to fail, or to admit no
/// new name.
struct Sink {
    log: Arc<Mutex<Vec<String>>>,
    learned: Learned,
    fail: bool,
    admit: bool,
}

impl LearnSink for Sink {
    fn learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<(), SinkError> {
        self.log.lock().unwrap().push(format!("learn {qname}"));
        if self.fail {
            return Err(SinkError("map full".into()));
        }
        self.learned
            .lock()
            .unwrap()
            .push((endpoint.clone(), qname.to_string(), answers.to_vec()));
        Ok(())
    }

    fn admit(&self, _: &EndpointKey, _: &str) -> bool {
        self.admit
    }
}

enum Script {
    Answer(Vec<Record>),
    Rcode(ResponseCode, Vec<Record>),
    Truncated,
    Raw(Vec<u8>),
    WrongId,
    WrongQuestion,
    Timeout,
    Slow(Duration, Vec<Record>),
}

struct FakeUpstream {
    script: HashMap<String, Script>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Upstream for FakeUpstream {
    async fn exchange(
        &self,
        server: SocketAddr,
        _: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let q = Message::from_vec(query).expect("the proxy forwards what it got");
        let qname = q.queries[0].name.to_string().to_ascii_lowercase();
        let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.recursion_desired = q.metadata.recursion_desired;
        resp.add_query(q.queries[0].clone());
        match self
            .script
            .get(&qname)
            .unwrap_or(&Script::Rcode(ResponseCode::NXDomain, vec![]))
        {
            Script::Answer(records) => resp.insert_answers(records.clone()),
            Script::Rcode(code, authority) => {
                resp.metadata.response_code = *code;
                resp.insert_authorities(authority.clone());
            }
            Script::Truncated => resp.metadata.truncation = true,
            Script::Raw(bytes) => return Ok(bytes.clone()),
            Script::WrongId => resp.metadata.id = q.metadata.id.wrapping_add(1),
            Script::WrongQuestion => {
                resp.queries.clear();
                resp.add_query(Query::query(name("evil.test."), RecordType::A));
                resp.add_answer(a("evil.test.", [6, 6, 6, 6], 60));
            }
            Script::Timeout => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(UpstreamError::Timeout(server));
            }
            Script::Slow(d, records) => {
                tokio::time::sleep(*d).await;
                resp.insert_answers(records.clone());
            }
        }
        Ok(resp.to_vec().unwrap())
    }
}

fn a(n: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(name(n), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn cname(n: &str, t: &str, ttl: u32) -> Record {
    Record::from_rdata(name(n), ttl, RData::CNAME(CNAME(name(t))))
}

struct Harness<P = FakePolicy, U = FakeUpstream> {
    proxy: Arc<Proxy<P, Sink, U>>,
    log: Arc<Mutex<Vec<String>>>,
    learned: Learned,
}

fn harness(script: Vec<(&str, Script)>, config: ProxyConfig, fail_sink: bool) -> Harness {
    let log = Arc::new(Mutex::new(Vec::new()));
    let learned = Arc::new(Mutex::new(Vec::new()));
    let policy = FakePolicy {
        pods: HashMap::from([
            (POD.parse().unwrap(), ep("payments")),
            ("10.0.2.10".parse().unwrap(), ep("other")),
        ]),
        allowed: vec![
            "api.stripe.test",
            "www.shop.test",
            "v6.test",
            "nodata.test",
            "missing.test",
            "big.test",
            "garbage.test",
            "wrongid.test",
            "wrongq.test",
            "slow.test",
            "fast.test",
            "timeout.test",
        ],
    };
    let sink = Sink {
        log: log.clone(),
        learned: learned.clone(),
        fail: fail_sink,
        admit: true,
    };
    let upstream = FakeUpstream {
        script: script
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        calls: AtomicUsize::new(0),
    };
    Harness {
        proxy: Proxy::new(policy, sink, upstream, config),
        log,
        learned,
    }
}

fn query_bytes(qname: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    m.to_vec().unwrap()
}

impl<P: DnsPolicy, U: Upstream> Harness<P, U> {
    async fn ask_from(&self, src: &str, resolver: &str, qname: &str, qtype: RecordType) -> Message {
        let request = Request::from_bytes(
            query_bytes(qname, qtype, 4242),
            SocketAddr::new(src.parse().unwrap(), 40000),
            Protocol::Udp,
        )
        .unwrap();
        let reply = RecordingReply::udp(1232);
        let log = self.log.clone();
        // Record the moment the reply is sent, to check learn-before-reply.
        let handler = self
            .proxy
            .handler(resolver.parse().unwrap(), Transport::Udp);
        handler
            .handle_request::<_, TokioTime>(&request, reply.clone())
            .await;
        log.lock().unwrap().push(format!("reply {qname}"));
        let mut sent = reply.take();
        assert_eq!(sent.len(), 1, "exactly one response per query");
        let m = sent.remove(0);
        assert_eq!(m.metadata.id, 4242, "the response carries the query's ID");
        m
    }

    async fn ask(&self, qname: &str, qtype: RecordType) -> Message {
        self.ask_from(POD, RESOLVER, qname, qtype).await
    }

    fn counter(
        &self,
        f: impl Fn(&dns_proxy::metrics::Counters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        f(&self.proxy.metrics.counters).load(Ordering::SeqCst)
    }
}

impl Harness {
    fn upstream_calls(&self) -> usize {
        self.proxy.upstream.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn allowed_name_is_learned_before_the_answer_is_sent() {
    let h = harness(
        vec![(
            "api.stripe.test.",
            Script::Answer(vec![a("api.stripe.test.", [203, 0, 113, 10], 60)]),
        )],
        ProxyConfig::default(),
        false,
    );
    let m = h.ask("api.stripe.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        *h.log.lock().unwrap(),
        ["learn api.stripe.test.", "reply api.stripe.test."]
    );
    let learned = h.learned.lock().unwrap();
    assert_eq!(learned[0].0, ep("payments"));
    assert_eq!(learned[0].2, vec![("203.0.113.10".parse().unwrap(), 60)]);
    assert_eq!(h.counter(|c| &c.allowed), 1);
}

#[rstest]
#[case::refused(DenyResponse::Refused, ResponseCode::Refused)]
#[case::nxdomain(DenyResponse::NxDomain, ResponseCode::NXDomain)]
#[tokio::test]
async fn names_outside_the_rules_are_denied_without_going_upstream(
    #[case] deny: DenyResponse,
    #[case] want: ResponseCode,
) {
    let h = harness(
        vec![],
        ProxyConfig {
            deny_response: deny,
            ..ProxyConfig::default()
        },
        false,
    );
    let mut events = h.proxy.subscribe();
    let m = h.ask("evil.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, want);
    assert!(m.answers.is_empty());
    assert_eq!(h.upstream_calls(), 0);
    assert!(h.learned.lock().unwrap().is_empty());
    assert_eq!(h.counter(|c| &c.refused_name), 1);
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.outcome, e.qname.as_str(), e.endpoint.clone()),
        (
            DnsOutcome::RefusedName,
            "evil.example.",
            Some(ep("payments"))
        )
    );
}

#[tokio::test]
async fn unknown_endpoints_and_unlisted_resolvers_are_refused() {
    let h = harness(vec![], ProxyConfig::default(), false);
    let m = h
        .ask_from("10.9.9.9", RESOLVER, "api.stripe.test.", RecordType::A)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = h
        .ask_from(POD, "8.8.8.8:53", "api.stripe.test.", RecordType::A)
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(h.upstream_calls(), 0);
    assert_eq!(h.counter(|c| &c.refused_unknown_endpoint), 1);
    assert_eq!(h.counter(|c| &c.refused_resolver), 1);
}

#[tokio::test]
async fn cname_chain_is_followed_and_poisoned_records_are_ignored() {
    let h = harness(
        vec![(
            "www.shop.test.",
            Script::Answer(vec![
                cname("www.shop.test.", "edge.cdn.test.", 30),
                a("edge.cdn.test.", [198, 51, 100, 7], 300),
                a("api.stripe.test.", [6, 6, 6, 6], 300),
                a("evil.test.", [6, 6, 6, 7], 300),
            ]),
        )],
        ProxyConfig::default(),
        false,
    );
    let m = h.ask("www.shop.test.", RecordType::A).await;
    assert_eq!(
        m.answers.len(),
        4,
        "the pod gets the answer as the upstream gave it"
    );
    let learned = h.learned.lock().unwrap();
    assert_eq!(
        learned[0].2,
        vec![("198.51.100.7".parse().unwrap(), 30)],
        "only the chain, minimum TTL"
    );
}

#[tokio::test]
async fn aaaa_answers_are_learned() {
    let h = harness(
        vec![(
            "v6.test.",
            Script::Answer(vec![Record::from_rdata(
                name("v6.test."),
                120,
                RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::10").unwrap())),
            )]),
        )],
        ProxyConfig::default(),
        false,
    );
    let m = h.ask("v6.test.", RecordType::AAAA).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        h.learned.lock().unwrap()[0].2,
        vec![("2001:db8::10".parse().unwrap(), 120)]
    );
}

#[tokio::test]
async fn nodata_and_nxdomain_pass_through_and_teach_nothing() {
    let soa = Record::from_rdata(
        name("test."),
        60,
        RData::SOA(SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            60,
            60,
            60,
            60,
        )),
    );
    let h = harness(
        vec![
            (
                "nodata.test.",
                Script::Rcode(ResponseCode::NoError, vec![soa.clone()]),
            ),
            (
                "missing.test.",
                Script::Rcode(ResponseCode::NXDomain, vec![soa]),
            ),
        ],
        ProxyConfig::default(),
        false,
    );
    let m = h.ask("nodata.test.", RecordType::A).await;
    assert_eq!(
        (
            m.metadata.response_code,
            m.answers.len(),
            m.authorities.len()
        ),
        (ResponseCode::NoError, 0, 1)
    );
    let m = h.ask("missing.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(h.learned.lock().unwrap().is_empty());
}

#[tokio::test]
async fn truncation_is_passed_through_so_clients_retry_over_tcp() {
    let h = harness(
        vec![("big.test.", Script::Truncated)],
        ProxyConfig::default(),
        false,
    );
    let m = h.ask("big.test.", RecordType::A).await;
    assert!(m.metadata.truncation, "TC must reach the client");
}

#[rstest]
#[case::garbage("garbage.test.", Script::Raw(vec![0xde, 0xad, 0xbe, 0xef]))]
#[case::wrong_id("wrongid.test.", Script::WrongId)]
#[case::wrong_question("wrongq.test.", Script::WrongQuestion)]
#[case::timeout("timeout.test.", Script::Timeout)]
#[tokio::test]
async fn bad_or_missing_upstream_answers_become_servfail(
    #[case] qname: &str,
    #[case] script: Script,
) {
    let h = harness(vec![(qname, script)], ProxyConfig::default(), false);
    let m = h.ask(qname, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        h.learned.lock().unwrap().is_empty(),
        "nothing is learned from a bad answer"
    );
    assert_eq!(h.counter(|c| &c.servfail_upstream), 1);
}

#[tokio::test]
async fn a_failed_datapath_write_withholds_the_answer() {
    let h = harness(
        vec![(
            "api.stripe.test.",
            Script::Answer(vec![a("api.stripe.test.", [203, 0, 113, 10], 60)]),
        )],
        ProxyConfig::default(),
        true,
    );
    let m = h.ask("api.stripe.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        m.answers.is_empty(),
        "the pod must not learn an address the datapath does not know"
    );
    assert_eq!(h.counter(|c| &c.servfail_write), 1);
}

#[tokio::test]
async fn cached_answers_skip_upstream_but_are_still_checked_and_learned_per_pod() {
    let h = harness(
        vec![(
            "api.stripe.test.",
            Script::Answer(vec![a("api.stripe.test.", [203, 0, 113, 10], 60)]),
        )],
        ProxyConfig::default(),
        false,
    );
    h.ask("api.stripe.test.", RecordType::A).await;
    let m = h
        .ask_from("10.0.2.10", RESOLVER, "API.Stripe.test.", RecordType::A)
        .await;
    assert_eq!(
        h.upstream_calls(),
        1,
        "the second lookup came from the cache"
    );
    assert!(m.answers[0].ttl <= 60);
    assert_eq!(h.counter(|c| &c.cache_hits), 1);
    {
        let learned = h.learned.lock().unwrap();
        assert_eq!(learned.len(), 2);
        assert_eq!(
            learned[1].0,
            ep("other"),
            "the cached answer was learned for the asking pod"
        );
    }
    // ... and the policy still applies to a cached name.
    let denied = h
        .ask_from("10.0.2.10", "8.8.8.8:53", "api.stripe.test.", RecordType::A)
        .await;
    assert_eq!(denied.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn the_cache_can_be_turned_off() {
    let h = harness(
        vec![(
            "api.stripe.test.",
            Script::Answer(vec![a("api.stripe.test.", [203, 0, 113, 10], 60)]),
        )],
        ProxyConfig {
            cache_entries: 0,
            ..ProxyConfig::default()
        },
        false,
    );
    h.ask("api.stripe.test.", RecordType::A).await;
    h.ask("api.stripe.test.", RecordType::A).await;
    assert_eq!(h.upstream_calls(), 2);
}

#[tokio::test]
async fn a_slow_upstream_answer_does_not_block_others() {
    let h = Arc::new(harness(
        vec![
            (
                "slow.test.",
                Script::Slow(
                    Duration::from_millis(800),
                    vec![a("slow.test.", [192, 0, 2, 1], 60)],
                ),
            ),
            (
                "fast.test.",
                Script::Answer(vec![a("fast.test.", [192, 0, 2, 2], 60)]),
            ),
        ],
        ProxyConfig::default(),
        false,
    ));
    let slow = {
        let h = h.clone();
        tokio::spawn(async move { h.ask("slow.test.", RecordType::A).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    h.ask("fast.test.", RecordType::A).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "fast query waited {:?}",
        started.elapsed()
    );
    assert!(!slow.is_finished());
    slow.await.unwrap();
}

#[tokio::test]
async fn non_query_opcodes_are_not_implemented() {
    let h = harness(vec![], ProxyConfig::default(), false);
    let mut m = Message::new(7, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(name("api.stripe.test."), RecordType::A));
    let request = Request::from_bytes(
        m.to_vec().unwrap(),
        SocketAddr::new(POD.parse().unwrap(), 1),
        Protocol::Udp,
    )
    .unwrap();
    let reply = RecordingReply::udp(512);
    h.proxy
        .handler(RESOLVER.parse().unwrap(), Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    assert_eq!(reply.take()[0].metadata.response_code, ResponseCode::NotImp);
    assert_eq!(h.upstream_calls(), 0);
}

#[test]
fn malformed_queries_do_not_parse() {
    for bytes in [
        vec![],
        vec![0u8; 5],
        vec![0xff; 12],
        b"\x00\x01\x01\x00\x00\x05\x00\x00\x00\x00\x00\x00".to_vec(),
    ] {
        assert!(Request::from_bytes(bytes, "10.0.0.1:1".parse().unwrap(), Protocol::Udp).is_err());
    }
}

#[test]
fn the_seed_stripe_policy_allows_exactly_its_name_through_its_resolver() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let report = policy::load_paths(&[root.join("policies")]);
    let inventory = policy::Inventory::load(&root.join("endpoints.yaml")).unwrap();
    let resolved = policy::PolicySet::new(report.policies)
        .resolve(&inventory, policy::ResolveOptions::default());
    let p = PolicyDns {
        resolved,
        inventory,
    };
    let payments = p.endpoint("10.0.1.30".parse().unwrap()).expect("payments");
    let coredns: SocketAddr = "10.0.0.53:53".parse().unwrap();
    assert_eq!(
        p.check(&payments, coredns, Transport::Udp, "api.stripe.com."),
        DnsCheck::Allowed
    );
    assert_eq!(
        p.check(&payments, coredns, Transport::Tcp, "API.STRIPE.COM"),
        DnsCheck::Allowed
    );
    assert_eq!(
        p.check(&payments, coredns, Transport::Udp, "evil.example.com."),
        DnsCheck::NameDenied
    );
    assert_eq!(
        p.check(
            &payments,
            "8.8.8.8:53".parse().unwrap(),
            Transport::Udp,
            "api.stripe.com."
        ),
        DnsCheck::ResolverDenied
    );
    let frontend = p.endpoint("10.0.1.10".parse().unwrap()).unwrap();
    assert_eq!(
        p.check(&frontend, coredns, Transport::Udp, "api.stripe.com."),
        DnsCheck::ResolverDenied,
        "default deny, no DNS rule"
    );
    assert_eq!(
        p.endpoint("192.168.0.1".parse().unwrap()),
        None,
        "the node is no endpoint"
    );
}

/// Answers by resolver: `evil` plants its own address for every name.
struct PerResolverUpstream;

#[async_trait::async_trait]
impl Upstream for PerResolverUpstream {
    async fn exchange(
        &self,
        server: SocketAddr,
        _: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let q = Message::from_vec(query).unwrap();
        let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        resp.add_query(q.queries[0].clone());
        let ip = if server == "10.0.9.9:53".parse().unwrap() {
            [6, 6, 6, 6]
        } else {
            [1, 2, 3, 4]
        };
        resp.add_answer(a(&q.queries[0].name.to_string(), ip, 300));
        Ok(resp.to_vec().unwrap())
    }
}

/// `payments` may ask kube-dns; `attacker` may also ask its own resolver.
struct TwoResolvers;

impl DnsPolicy for TwoResolvers {
    fn endpoint(&self, src: IpAddr) -> Option<EndpointKey> {
        match src.to_string().as_str() {
            POD => Some(ep("payments")),
            "10.0.2.10" => Some(ep("attacker")),
            _ => None,
        }
    }
    fn check(&self, e: &EndpointKey, resolver: SocketAddr, _: Transport, _: &str) -> DnsCheck {
        let kube_dns: SocketAddr = RESOLVER.parse().unwrap();
        if resolver == kube_dns || (e.name == "attacker" && resolver.port() == 53) {
            DnsCheck::Allowed
        } else {
            DnsCheck::ResolverDenied
        }
    }
}

#[tokio::test]
async fn a_cached_answer_from_one_resolver_never_answers_a_query_to_another() {
    let learned: Learned = Arc::default();
    let proxy = Proxy::new(
        TwoResolvers,
        Sink {
            log: Arc::default(),
            learned: learned.clone(),
            fail: false,
            admit: true,
        },
        PerResolverUpstream,
        ProxyConfig::default(), // the answer cache is on
    );
    let h = Harness {
        proxy,
        log: Arc::default(),
        learned: learned.clone(),
    };
    // Control: the attacker's own resolver does plant its address, and the
    // attacker learns it (this is allowed: it asked that resolver).
    let planted = h
        .ask_from(
            "10.0.2.10",
            "10.0.9.9:53",
            "api.stripe.test.",
            RecordType::A,
        )
        .await;
    assert_eq!(answer_ips(&planted), vec!["6.6.6.6"]);
    // The victim asks kube-dns for the same name right after: it must get
    // kube-dns's answer, and learn only that.
    let real = h
        .ask_from(POD, RESOLVER, "api.stripe.test.", RecordType::A)
        .await;
    assert_eq!(answer_ips(&real), vec!["1.2.3.4"], "not the planted answer");
    let learned = learned.lock().unwrap();
    let victim: Vec<_> = learned
        .iter()
        .filter(|(e, _, _)| e.name == "payments")
        .flat_map(|(_, _, ips)| ips.iter().map(|(ip, _)| ip.to_string()))
        .collect();
    assert_eq!(victim, vec!["1.2.3.4"]);
}

fn answer_ips(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_pod_at_its_in_flight_cap_is_shed_and_the_other_pods_are_not() {
    let slow = Script::Slow(
        Duration::from_millis(500),
        vec![a("slow.test.", [192, 0, 2, 1], 60)],
    );
    let h = Arc::new(harness(
        vec![
            ("slow.test.", slow),
            (
                "fast.test.",
                Script::Answer(vec![a("fast.test.", [192, 0, 2, 2], 60)]),
            ),
        ],
        ProxyConfig {
            max_in_flight_per_pod: 2,
            cache_entries: 0,
            ..ProxyConfig::default()
        },
        false,
    ));
    let mut events = h.proxy.subscribe();
    // payments fills its two places with slow queries...
    let held: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.ask("slow.test.", RecordType::A).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...so its third query is dropped unanswered,
    let request = Request::from_bytes(
        query_bytes("fast.test.", RecordType::A, 7),
        SocketAddr::new(POD.parse().unwrap(), 40001),
        Protocol::Udp,
    )
    .unwrap();
    let reply = RecordingReply::udp(1232);
    h.proxy
        .handler(RESOLVER.parse().unwrap(), Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    assert!(reply.take().is_empty(), "no answer: shed");
    assert_eq!(h.counter(|c| &c.dropped_in_flight), 1);
    // while another pod is served at once.
    let started = Instant::now();
    let other = h
        .ask_from("10.0.2.10", RESOLVER, "fast.test.", RecordType::A)
        .await;
    assert_eq!(other.metadata.response_code, ResponseCode::NoError);
    assert!(started.elapsed() < Duration::from_millis(300));
    for q in held {
        q.await.unwrap();
    }
    // Places are freed: payments is served again.
    let again = h.ask("fast.test.", RecordType::A).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);
    let outcomes: Vec<DnsOutcome> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| e.outcome)
        .collect();
    assert!(
        outcomes.contains(&DnsOutcome::DroppedInFlight),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_name_the_sink_does_not_admit_is_servfail_and_never_forwarded() {
    let learned: Learned = Arc::default();
    let proxy = Proxy::new(
        FakePolicy {
            pods: HashMap::from([(POD.parse().unwrap(), ep("payments"))]),
            allowed: vec!["api.stripe.test"],
        },
        Sink {
            log: Arc::default(),
            learned: learned.clone(),
            fail: false,
            admit: false,
        },
        FakeUpstream {
            script: HashMap::from([(
                "api.stripe.test.".to_string(),
                Script::Answer(vec![a("api.stripe.test.", [1, 2, 3, 4], 60)]),
            )]),
            calls: AtomicUsize::new(0),
        },
        ProxyConfig::default(),
    );
    let h = Harness {
        proxy,
        log: Arc::default(),
        learned: learned.clone(),
    };
    let m = h.ask("api.stripe.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(h.upstream_calls(), 0, "not forwarded");
    assert!(learned.lock().unwrap().is_empty());
    assert_eq!(h.counter(|c| &c.refused_rate_limited), 1);
}

#[test]
fn in_audit_mode_what_would_be_refused_is_audited_with_the_rule() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let report = policy::load_paths(&[root.join("policies")]);
    let inventory = policy::Inventory::load(&root.join("endpoints.yaml")).unwrap();
    let resolved = policy::PolicySet::new(report.policies).resolve(
        &inventory,
        policy::ResolveOptions {
            audit: true,
            ..policy::ResolveOptions::default()
        },
    );
    let p = PolicyDns {
        resolved,
        inventory,
    };
    let payments = p.endpoint("10.0.1.30".parse().unwrap()).unwrap();
    let coredns: SocketAddr = "10.0.0.53:53".parse().unwrap();
    assert_eq!(
        p.check(&payments, coredns, Transport::Udp, "api.stripe.com."),
        DnsCheck::Allowed,
        "allowed names stay allowed"
    );
    match p.check(&payments, coredns, Transport::Udp, "evil.example.com.") {
        DnsCheck::Audit {
            name: true,
            rule: Some(rule),
        } => {
            assert!(rule.contains("restrict-egress-to-stripe"), "{rule}")
        }
        other => panic!("expected an audited name with its rule, got {other:?}"),
    }
    assert!(matches!(
        p.check(
            &payments,
            "8.8.8.8:53".parse().unwrap(),
            Transport::Udp,
            "x."
        ),
        DnsCheck::Audit { name: false, .. }
    ));
}

/// Every name is outside the rules, in audit mode.
struct AuditAll;

impl DnsPolicy for AuditAll {
    fn endpoint(&self, _: IpAddr) -> Option<EndpointKey> {
        Some(ep("payments"))
    }
    fn check(&self, _: &EndpointKey, _: SocketAddr, _: Transport, _: &str) -> DnsCheck {
        DnsCheck::Audit {
            name: true,
            rule: Some("prod/p specs[0].egress[0]".into()),
        }
    }
}

#[tokio::test]
async fn an_audited_query_is_answered_reported_and_teaches_nothing() {
    let learned: Learned = Arc::default();
    let proxy = Proxy::new(
        AuditAll,
        Sink {
            log: Arc::default(),
            learned: learned.clone(),
            fail: false,
            admit: true,
        },
        FakeUpstream {
            script: HashMap::from([(
                "evil.test.".to_string(),
                Script::Answer(vec![a("evil.test.", [6, 6, 6, 6], 60)]),
            )]),
            calls: AtomicUsize::new(0),
        },
        ProxyConfig::default(),
    );
    let mut events = proxy.subscribe();
    let h = Harness {
        proxy,
        log: Arc::default(),
        learned: learned.clone(),
    };
    let m = h.ask("evil.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer_ips(&m), vec!["6.6.6.6"], "answered as if allowed");
    assert!(
        learned.lock().unwrap().is_empty(),
        "enforcement would have learned nothing, so audit learns nothing"
    );
    let e = events.try_recv().unwrap();
    assert_eq!(e.outcome, DnsOutcome::Audit { name: true });
    assert_eq!(e.rule.as_deref(), Some("prod/p specs[0].egress[0]"));
    // The event says what the pod was told, apart from what was learned.
    assert!(e.learned.is_empty());
    assert_eq!(e.unlearned, vec![std::net::IpAddr::from([6, 6, 6, 6])]);
}

// The cached-answer fast path (`Proxy::answer_from_cache`, used by the UDP
// listener before it makes a task): it must answer exactly what the full
// path would, and leave everything else to it.

/// api.stripe.test answered with one address.
fn stripe() -> Vec<(&'static str, Script)> {
    vec![(
        "api.stripe.test.",
        Script::Answer(vec![a("api.stripe.test.", [203, 0, 113, 10], 60)]),
    )]
}

fn udp_source(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

#[tokio::test]
async fn the_fast_path_answers_a_cached_name_as_the_full_path_does_and_learns_it_for_the_asker() {
    let h = harness(
        vec![(
            "www.shop.test.",
            Script::Answer(vec![
                cname("www.shop.test.", "edge.cdn.test.", 300),
                a("edge.cdn.test.", [198, 51, 100, 7], 60),
            ]),
        )],
        ProxyConfig::default(),
        false,
    );
    h.ask("www.shop.test.", RecordType::A).await; // fills the cache
    let mut events = h.proxy.subscribe();
    // hickory writes names lowercased: the upper case is set on the wire.
    let mut request = query_bytes("www.shop.test.", RecordType::A, 777);
    let question_name = 12..request.len() - 4;
    request[question_name].make_ascii_uppercase();
    let reply = h
        .proxy
        .answer_from_cache(
            &request,
            udp_source("10.0.2.10"),
            RESOLVER.parse().unwrap(),
            Instant::now(),
        )
        .expect("a cached, allowed name is answered on the fast path");
    let fast = Message::from_vec(&reply).unwrap();
    assert_eq!(fast.metadata.id, 777, "the asker's ID");
    assert_eq!(
        fast.queries[0].name.to_string(),
        "WWW.SHOP.TEST.",
        "the asker's question, its letter case kept"
    );
    // What the full path answers the same pod from the cache.
    let full = h
        .ask_from("10.0.2.10", RESOLVER, "WWW.Shop.test.", RecordType::A)
        .await;
    assert_eq!(fast.answers, full.answers);
    assert_eq!(fast.metadata.response_code, full.metadata.response_code);
    assert_eq!(
        fast.answers[1].ttl, 59,
        "counted down by the started second"
    );
    assert_eq!(h.upstream_calls(), 1, "both answered from the cache");
    {
        let learned = h.learned.lock().unwrap();
        assert_eq!(
            learned.len(),
            3,
            "the first asker, then the fast and full paths"
        );
        assert_eq!(learned[1].0, ep("other"), "learned for the asking pod");
        assert_eq!(learned[1].1, "www.shop.test.");
        assert_eq!(learned[1].2, vec![("198.51.100.7".parse().unwrap(), 59)]);
        assert_eq!(
            learned[1].2, learned[2].2,
            "the same as the full path learns"
        );
    }
    assert_eq!(h.counter(|c| &c.cache_hits), 2);
    assert_eq!(h.counter(|c| &c.allowed), 3);
    let event = events.try_recv().unwrap();
    assert_eq!(event.outcome, DnsOutcome::Cached);
    assert_eq!(event.endpoint, Some(ep("other")));
    assert_eq!(event.qname, "www.shop.test.");
    assert_eq!(event.qtype, "A");
    assert_eq!(event.rcode, "No Error");
    assert_eq!(
        event.learned,
        vec!["198.51.100.7".parse::<IpAddr>().unwrap()]
    );
}

/// The time a receive batch was read starts a query's time in the proxy,
/// but does not age its answer: a query handled after a stall in its batch
/// is not given an entry that expired meanwhile (the address would stay
/// allowed past what the upstream said).
#[tokio::test]
async fn a_cached_answer_is_aged_at_its_lookup_not_at_its_batchs_read() {
    let h = harness(
        vec![(
            "api.stripe.test.",
            Script::Answer(vec![a("api.stripe.test.", [203, 0, 113, 20], 2)]),
        )],
        ProxyConfig::default(),
        false,
    );
    h.ask("api.stripe.test.", RecordType::A).await; // cached for 2 s
    let resolver: SocketAddr = RESOLVER.parse().unwrap();
    let request = query_bytes("api.stripe.test.", RecordType::A, 5);
    let batch_read = Instant::now();
    // Control: within its first second the entry is served.
    assert!(h
        .proxy
        .answer_from_cache(&request, udp_source("10.0.2.10"), resolver, batch_read)
        .is_some());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        h.proxy
            .answer_from_cache(&request, udp_source("10.0.2.10"), resolver, batch_read),
        None,
        "expired by now, whatever the batch's time says"
    );
}

#[tokio::test]
async fn the_fast_path_leaves_every_other_case_to_the_full_path() {
    let resolver: SocketAddr = RESOLVER.parse().unwrap();
    let h = harness(stripe(), ProxyConfig::default(), false);
    let ask = |qname: &str| query_bytes(qname, RecordType::A, 9);
    let fast = |bytes: &[u8], src: &str, resolver: SocketAddr| {
        h.proxy
            .answer_from_cache(bytes, udp_source(src), resolver, Instant::now())
    };
    assert_eq!(
        fast(&ask("api.stripe.test."), POD, resolver),
        None,
        "not cached yet"
    );
    h.ask("api.stripe.test.", RecordType::A).await;
    let learns = h.learned.lock().unwrap().len();
    assert!(
        fast(&ask("api.stripe.test."), POD, resolver).is_some(),
        "control"
    );
    assert_eq!(h.learned.lock().unwrap().len(), learns + 1);

    // The name outside the pod's rules, the resolver it may not ask, a
    // source that is no pod: the full path refuses them and counts why.
    let denied = h.ask("evil.test.", RecordType::A).await;
    assert_eq!(denied.metadata.response_code, ResponseCode::Refused);
    assert_eq!(fast(&ask("evil.test."), POD, resolver), None);
    assert_eq!(
        fast(&ask("api.stripe.test."), POD, "8.8.8.8:53".parse().unwrap()),
        None
    );
    assert_eq!(fast(&ask("api.stripe.test."), "10.9.9.9", resolver), None);
    // EDNS on one side only, and anything but a plain query.
    let mut with_edns = Message::new(9, MessageType::Query, OpCode::Query);
    with_edns.add_query(Query::query(name("api.stripe.test."), RecordType::A));
    with_edns.set_edns(hickory_proto::op::Edns::new());
    assert_eq!(fast(&with_edns.to_vec().unwrap(), POD, resolver), None);
    let mut response = ask("api.stripe.test.");
    response[2] |= 0x80;
    assert_eq!(fast(&response, POD, resolver), None);
    assert_eq!(
        h.learned.lock().unwrap().len(),
        learns + 1,
        "nothing learned by the refused cases"
    );

    // A failed write: nothing answered (the full path withholds it and
    // says why).
    let failing = harness(stripe(), ProxyConfig::default(), true);
    failing.ask("api.stripe.test.", RecordType::A).await;
    assert_eq!(
        failing.proxy.answer_from_cache(
            &ask("api.stripe.test."),
            udp_source(POD),
            resolver,
            Instant::now()
        ),
        None
    );
    assert_eq!(failing.counter(|c| &c.cache_hits), 0);

    // No cache, no fast path.
    let off = harness(
        stripe(),
        ProxyConfig {
            cache_entries: 0,
            ..ProxyConfig::default()
        },
        false,
    );
    off.ask("api.stripe.test.", RecordType::A).await;
    assert_eq!(
        off.proxy.answer_from_cache(
            &ask("api.stripe.test."),
            udp_source(POD),
            resolver,
            Instant::now()
        ),
        None
    );
}

#[tokio::test]
async fn an_answer_too_large_for_the_askers_udp_size_takes_the_full_path() {
    let records: Vec<Record> = (0..40)
        .map(|i| a("api.stripe.test.", [203, 0, 113, i], 60))
        .collect();
    let h = harness(
        vec![("api.stripe.test.", Script::Answer(records))],
        ProxyConfig::default(),
        false,
    );
    h.ask("api.stripe.test.", RecordType::A).await; // 40 A records: > 512 bytes
    let plain = query_bytes("api.stripe.test.", RecordType::A, 9);
    assert_eq!(
        h.proxy.answer_from_cache(
            &plain,
            udp_source(POD),
            RESOLVER.parse().unwrap(),
            Instant::now()
        ),
        None,
        "no EDNS: 512 bytes at most, the full path truncates"
    );
}
