//! The handler at the edges of what it accepts: the longest legal label, a
//! response sent as a query, a sink that sets no budget, and what `observe`
//! is told about cached answers. (Mutation testing found these unpinned;
//! see TESTING.md.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dns_proxy::reply::RecordingReply;
use dns_proxy::{
    DnsCheck, DnsOutcome, DnsPolicy, LearnSink, Proxy, ProxyConfig, SinkError, Transport, Upstream,
    UpstreamError,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use policy::EndpointKey;

const RESOLVER: &str = "10.96.0.10:53";

fn pod() -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: "app".into(),
    }
}

/// One pod; every name allowed.
struct AnyName;
impl DnsPolicy for AnyName {
    fn endpoint(&self, _: IpAddr) -> Option<EndpointKey> {
        Some(pod())
    }
    fn check(&self, _: &EndpointKey, _: SocketAddr, _: Transport, _: &str) -> DnsCheck {
        DnsCheck::Allowed
    }
}

/// Every learn: the query name and the addresses with their TTLs.
type Learns = Arc<Mutex<Vec<(String, Vec<(IpAddr, u32)>)>>>;

/// A sink that keeps the default `admit`: no new-name budget.
#[derive(Clone, Default)]
struct PlainSink(Learns);
impl LearnSink for PlainSink {
    fn learn(&self, _: &EndpointKey, qname: &str, a: &[(IpAddr, u32)]) -> Result<(), SinkError> {
        self.0.lock().unwrap().push((qname.to_string(), a.to_vec()));
        Ok(())
    }
}

/// Answers every A question with 192.0.2.1.
#[derive(Default)]
struct Answers(AtomicUsize);
#[async_trait::async_trait]
impl Upstream for Answers {
    async fn exchange(
        &self,
        _: SocketAddr,
        _: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let (q, mut resp) = response_to(query);
        resp.add_answer(Record::from_rdata(
            q.queries[0].name.clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
        Ok(resp.to_vec().unwrap())
    }
}

/// The query, and an empty response to it (its ID and question).
fn response_to(query: &[u8]) -> (Message, Message) {
    let q = Message::from_vec(query).unwrap();
    let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    resp.add_query(q.queries[0].clone());
    (q, resp)
}

type TestProxy = Arc<Proxy<AnyName, PlainSink, Answers>>;

fn proxy(sink: PlainSink) -> TestProxy {
    Proxy::new(AnyName, sink, Answers::default(), ProxyConfig::default())
}

/// Sends `bytes` to the proxy; the responses it sent.
async fn send(proxy: &TestProxy, bytes: Vec<u8>) -> Vec<Message> {
    let request =
        Request::from_bytes(bytes, "10.0.1.10:40000".parse().unwrap(), Protocol::Udp).unwrap();
    let reply = RecordingReply::udp(1232);
    proxy
        .handler(RESOLVER.parse().unwrap(), Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    reply.take()
}

fn query(qname: &str, message_type: MessageType) -> Vec<u8> {
    let mut m = Message::new(99, message_type, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

#[tokio::test]
async fn a_name_with_a_63_byte_label_is_answered_not_dropped() {
    let sink = PlainSink::default();
    let p = proxy(sink.clone());
    let label = "a".repeat(63);
    for qname in [
        format!("{label}.test."),
        format!("x.{label}.{label}.test."),
        "a.b.c.test.".to_string(),
    ] {
        let sent = send(&p, query(&qname, MessageType::Query)).await;
        assert_eq!(sent.len(), 1, "{qname}: answered");
        assert_eq!(sent[0].metadata.response_code, ResponseCode::NoError);
        assert_eq!(sent[0].answers.len(), 1, "{qname}");
    }
    assert_eq!(
        p.metrics.counters.dropped_malformed.load(Ordering::SeqCst),
        0
    );
    assert_eq!(sink.0.lock().unwrap().len(), 3, "each learned");
}

#[tokio::test]
async fn a_response_sent_to_the_proxy_is_not_forwarded() {
    let p = proxy(PlainSink::default());
    let sent = send(&p, query("a.test.", MessageType::Response)).await;
    assert_eq!(sent[0].metadata.response_code, ResponseCode::NotImp);
    assert_eq!(p.upstream.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_sink_without_a_budget_admits_every_name() {
    let sink = PlainSink::default();
    let p = proxy(sink.clone());
    for i in 0..20 {
        let sent = send(&p, query(&format!("n{i}.test."), MessageType::Query)).await;
        assert_eq!(sent[0].metadata.response_code, ResponseCode::NoError);
    }
    assert_eq!(sink.0.lock().unwrap().len(), 20);
    assert_eq!(
        p.metrics
            .counters
            .refused_rate_limited
            .load(Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn observe_tells_a_cached_answer_from_a_forwarded_one() {
    let sink = PlainSink::default();
    let p = proxy(sink.clone());
    let mut events = p.subscribe();
    send(&p, query("c.test.", MessageType::Query)).await;
    send(&p, query("C.test.", MessageType::Query)).await;
    let first = events.try_recv().unwrap();
    let second = events.try_recv().unwrap();
    assert_eq!(first.outcome, DnsOutcome::Allowed);
    assert_eq!(second.outcome, DnsOutcome::Cached);
    assert_eq!(p.upstream.0.load(Ordering::SeqCst), 1);
    for e in [&first, &second] {
        assert_eq!(e.endpoint, Some(pod()));
        assert_eq!(e.learned, vec![IpAddr::from([192, 0, 2, 1])]);
        assert_eq!(e.rcode, "No Error");
    }
    assert_eq!(sink.0.lock().unwrap().len(), 2, "learned each time");
}

/// Answers every question with no record and the zone's SOA (NODATA, 60 s).
struct NoData;
#[async_trait::async_trait]
impl Upstream for NoData {
    async fn exchange(
        &self,
        _: SocketAddr,
        _: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let (_, mut resp) = response_to(query);
        let zone = Name::from_str("test.").unwrap();
        let soa = hickory_proto::rr::rdata::SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("admin.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        resp.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
        Ok(resp.to_vec().unwrap())
    }
}

/// The "answer -> map written" histogram times map writes: a cached answer
/// with addresses is one, a cached answer without any (NODATA) is none.
#[tokio::test]
async fn only_cached_answers_with_addresses_count_as_map_writes() {
    let pod_addr: SocketAddr = "10.0.1.10:40000".parse().unwrap();
    let resolver: SocketAddr = RESOLVER.parse().unwrap();
    // Control: addresses, learned from the cache, each hit a write.
    let p = proxy(PlainSink::default());
    send(&p, query("a.test.", MessageType::Query)).await;
    let before = p.metrics.write.count();
    assert!(p
        .answer_from_cache(
            &query("a.test.", MessageType::Query),
            pod_addr,
            resolver,
            Instant::now()
        )
        .is_some());
    assert_eq!(p.metrics.write.count(), before + 1);
    // NODATA: served from the cache, nothing to write, nothing timed.
    let sink = PlainSink::default();
    let p = Proxy::new(AnyName, sink.clone(), NoData, ProxyConfig::default());
    let request = Request::from_bytes(
        query("b.test.", MessageType::Query),
        pod_addr,
        Protocol::Udp,
    )
    .unwrap();
    let reply = RecordingReply::udp(1232);
    p.handler(resolver, Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    assert_eq!(reply.take().len(), 1);
    assert!(p
        .answer_from_cache(
            &query("b.test.", MessageType::Query),
            pod_addr,
            resolver,
            Instant::now()
        )
        .is_some());
    assert_eq!(p.metrics.write.count(), 0);
    assert!(sink.0.lock().unwrap().is_empty());
}
