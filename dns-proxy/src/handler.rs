//! The proxy as a hickory [`RequestHandler`]: check, forward (or serve from
//! the cache), learn, write, and only then reply.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use policy::EndpointKey;
use tokio::sync::broadcast;

use crate::answer::learned_addresses;
use crate::cache::{AnswerCache, CacheKey};
use crate::check::{DnsCheck, DnsPolicy, Transport};
use crate::limits::InFlight;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Where learned addresses go: fqdn-cache + the datapath, in the agent.
/// `learn` must return only once the datapath holds what it learned; the
/// proxy replies to the pod after it returns, and withholds the answer
/// (SERVFAIL) if it fails.
pub trait LearnSink: Send + Sync + 'static {
    fn learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<(), SinkError>;

    /// May `endpoint` look up `qname` now? Asked before forwarding; the
    /// agent says no when a pod learns new names faster than its budget
    /// (names it already knows are always admitted). Default: yes.
    fn admit(&self, _endpoint: &EndpointKey, _qname: &str) -> bool {
        true
    }

    /// [`admit`](Self::admit), then [`learn`](Self::learn) what an answer
    /// from the cache vouches for (if anything): one call, so a sink can do
    /// both in one step. `Ok(false)`: not admitted, nothing learned.
    fn admit_and_learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<bool, SinkError> {
        if !self.admit(endpoint, qname) {
            return Ok(false);
        }
        if !answers.is_empty() {
            self.learn(endpoint, qname, answers)?;
        }
        Ok(true)
    }
}

/// The datapath write behind a [`LearnSink`] failed (e.g. a full map).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// How a name outside the rules is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyResponse {
    /// REFUSED: musl stops walking the search list, glibc moves on.
    Refused,
    NxDomain,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub deny_response: DenyResponse,
    /// Answer cache size in entries; 0 disables the cache.
    pub cache_entries: u64,
    /// Queries one pod may have in flight; more are dropped unanswered (as
    /// an overloaded resolver would), so a flooding pod cannot take the
    /// proxy from the others. 0: no cap.
    pub max_in_flight_per_pod: usize,
    /// Queries (UDP datagrams and TCP connections) the listeners handle at
    /// once, over all pods; more are dropped on receipt. 0: no cap.
    pub max_in_flight: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            deny_response: DenyResponse::Refused,
            cache_entries: 10_000,
            max_in_flight_per_pod: 128,
            max_in_flight: 4096,
        }
    }
}

/// What happened to one query, for `tollgate observe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    pub endpoint: Option<EndpointKey>,
    pub source: SocketAddr,
    pub resolver: SocketAddr,
    pub qname: String,
    /// The query type's mnemonic ("A", "AAAA"; "" before one was read).
    pub qtype: &'static str,
    pub outcome: DnsOutcome,
    /// The response code's name ("No Error"; "" where nothing was sent).
    pub rcode: &'static str,
    /// The same response code as a number (0 NOERROR, 5 REFUSED...).
    pub rcode_value: u16,
    /// The transport the query came over.
    pub transport: Transport,
    /// Addresses learned from the answer (on the CNAME chain).
    pub learned: Vec<IpAddr>,
    /// Audit: the addresses the answer gave the pod, learned by nothing
    /// (enforcement would have refused the name) — what `tollgate policy
    /// suggest` needs to name the flows that follow.
    pub unlearned: Vec<IpAddr>,
    /// The rule behind the outcome, where one decided it (audit: the rule
    /// that would have refused the query).
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsOutcome {
    Allowed,
    Cached,
    RefusedName,
    RefusedResolver,
    RefusedUnknownEndpoint,
    Unsupported,
    ServfailUpstream,
    ServfailWrite,
    /// Audit mode: answered, though enforcement would have refused it
    /// (`name`: outside the DNS rules; else: resolver not allowed).
    Audit {
        name: bool,
    },
    /// The pod had too many queries in flight: dropped unanswered.
    DroppedInFlight,
    /// The pod learns new names faster than its budget: SERVFAIL.
    RateLimited,
}

/// State shared by every request of a proxy.
pub struct Proxy<P, S, U> {
    pub policy: P,
    pub sink: S,
    pub upstream: U,
    pub config: ProxyConfig,
    pub metrics: Metrics,
    cache: AnswerCache,
    in_flight: InFlight,
    events: broadcast::Sender<Arc<DnsEvent>>,
}

impl<P: DnsPolicy, S: LearnSink, U: Upstream> Proxy<P, S, U> {
    pub fn new(policy: P, sink: S, upstream: U, config: ProxyConfig) -> Arc<Self> {
        let cache = if config.cache_entries == 0 {
            AnswerCache::disabled()
        } else {
            AnswerCache::new(config.cache_entries)
        };
        Arc::new(Self {
            policy,
            sink,
            upstream,
            in_flight: InFlight::new(config.max_in_flight_per_pod),
            config,
            metrics: Metrics::default(),
            cache,
            events: broadcast::channel(4096).0,
        })
    }

    /// Every query's outcome, from now on (slow receivers miss events).
    /// (Shared: each receiver gets the event, not a copy of its strings.)
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DnsEvent>> {
        self.events.subscribe()
    }

    /// The fast path for a UDP query the answer cache can answer: read
    /// without hickory, checked against the pod's policy, learned and
    /// written for the pod exactly as on the full path, and answered with
    /// the cached encoding (the pod's ID and question, TTLs counted down)
    /// without a task. `None`: take the full path, which decides every
    /// other case (refusals, audit, misses, truncation, failed writes) and
    /// says why — nothing here has answered or been counted then.
    ///
    /// `received`: when the query was read (one clock read serves a whole
    /// receive batch). It starts the query's time in the proxy, which so
    /// includes the wait behind the queries before it in the batch. The
    /// cached answer is aged to the time of its lookup, not to `received`:
    /// a query late in a batch (or behind a stall) must not be given an
    /// entry that has expired meanwhile.
    pub fn answer_from_cache(
        &self,
        request: &[u8],
        source: SocketAddr,
        resolver: SocketAddr,
        received: Instant,
    ) -> Option<Vec<u8>> {
        if !self.cache.is_enabled() {
            return None;
        }
        let mut query = crate::wire::parse_query(request)?;
        let key = CacheKey {
            resolver,
            transport: Transport::Udp,
            name: std::mem::take(&mut query.name_wire),
            query_type: RecordType::from(query.qtype),
            query_class: DNSClass::from(query.qclass),
            dnssec_ok: query.edns.is_some_and(|e| e.dnssec_ok),
        };
        // A miss costs only the read and the lookup: the full path checks
        // the policy once, for both.
        let hit = self.cache.get_wire(&key, &query, request, Instant::now())?;
        let endpoint = self.policy.endpoint(source.ip())?;
        if self
            .policy
            .check(&endpoint, resolver, Transport::Udp, &query.name_text)
            != DnsCheck::Allowed
        {
            return None;
        }
        // Only a map write is timed (an answer without addresses has none).
        let writing = (!hit.learned.is_empty()).then(Instant::now);
        let admitted = self
            .sink
            .admit_and_learn(&endpoint, &query.name_text, &hit.learned);
        // One more clock read ends both the write and the whole answer.
        let done = Instant::now();
        if let Some(writing) = writing {
            self.metrics
                .write
                .observe(done.saturating_duration_since(writing));
        }
        if !matches!(admitted, Ok(true)) {
            return None;
        }
        let c = &self.metrics.counters;
        Metrics::count(&c.cache_hits);
        Metrics::count(&c.allowed);
        self.metrics
            .total
            .observe(done.saturating_duration_since(received));
        let _ = self.events.send(Arc::new(DnsEvent {
            endpoint: Some(endpoint),
            source,
            resolver,
            qname: query.name_text,
            qtype: key.query_type.into(),
            outcome: DnsOutcome::Cached,
            rcode: hit.rcode.to_str(),
            rcode_value: u16::from(hit.rcode),
            transport: Transport::Udp,
            learned: hit.learned.iter().map(|(ip, _)| *ip).collect(),
            unlearned: Vec::new(),
            rule: None,
        }));
        Some(hit.reply)
    }

    /// The handler for one received query: the proxy plus where the pod sent it.
    pub fn handler(
        self: &Arc<Self>,
        original_dst: SocketAddr,
        transport: Transport,
    ) -> QueryHandler<P, S, U> {
        QueryHandler {
            proxy: self.clone(),
            original_dst,
            transport,
        }
    }
}

/// One query's [`RequestHandler`]: hickory's `Request` does not carry the
/// original destination of a transparently intercepted packet, so a handler
/// value is made per query with it.
pub struct QueryHandler<P, S, U> {
    proxy: Arc<Proxy<P, S, U>>,
    original_dst: SocketAddr,
    transport: Transport,
}

enum Reply {
    Error(ResponseCode),
    Answer(Message),
    /// No answer at all (shed load).
    Drop,
}

/// Whether the question section is plain labels: no compression pointer
/// and no label over 63 bytes. Responses echo the question bytes verbatim,
/// and a pointer means something else once the header changes (the fuzzer
/// found one pointing into the header's flags), so such a query could only
/// be answered with garbage. No real resolver library sends one.
fn question_is_plain(request: &Request) -> bool {
    let bytes = request.queries.as_bytes();
    let mut i = 0;
    for _ in 0..request.queries.len() {
        loop {
            let Some(&len) = bytes.get(i) else {
                return false;
            };
            i += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return false; // a pointer (0b11...) or a reserved label type
            }
            i += usize::from(len);
        }
        i += 4; // QTYPE, QCLASS
    }
    i == bytes.len()
}

impl<P: DnsPolicy, S: LearnSink, U: Upstream> QueryHandler<P, S, U> {
    async fn decide(&self, request: &Request, event: &mut DnsEvent) -> Reply {
        let proxy = &self.proxy;
        let c = &proxy.metrics.counters;
        let info = match request.request_info() {
            Ok(info)
                if request.metadata.op_code == OpCode::Query
                    && request.metadata.message_type == MessageType::Query =>
            {
                info
            }
            _ => {
                Metrics::count(&c.refused_unsupported);
                event.outcome = DnsOutcome::Unsupported;
                return Reply::Error(ResponseCode::NotImp);
            }
        };
        let qname_text = info.query.name().to_string();
        event.qname = qname_text.clone();
        event.qtype = info.query.query_type().into();
        let Some(endpoint) = proxy.policy.endpoint(request.src().ip()) else {
            Metrics::count(&c.refused_unknown_endpoint);
            event.outcome = DnsOutcome::RefusedUnknownEndpoint;
            return Reply::Error(ResponseCode::Refused);
        };
        event.endpoint = Some(endpoint.clone());
        // Audit mode answers what enforcement would refuse, and learns
        // nothing from it: enforcement would have learned nothing either.
        let mut audit = false;
        match proxy
            .policy
            .check(&endpoint, self.original_dst, self.transport, &qname_text)
        {
            DnsCheck::Allowed => {}
            DnsCheck::Audit { name, rule } => {
                Metrics::count(&c.audit);
                event.outcome = DnsOutcome::Audit { name };
                event.rule = rule;
                audit = true;
            }
            DnsCheck::NameDenied => {
                Metrics::count(&c.refused_name);
                event.outcome = DnsOutcome::RefusedName;
                return Reply::Error(match proxy.config.deny_response {
                    DenyResponse::Refused => ResponseCode::Refused,
                    DenyResponse::NxDomain => ResponseCode::NXDomain,
                });
            }
            DnsCheck::ResolverDenied => {
                Metrics::count(&c.refused_resolver);
                event.outcome = DnsOutcome::RefusedResolver;
                return Reply::Error(ResponseCode::Refused);
            }
        }

        // What one pod may cost the others: its queries in flight, and the
        // rate at which it learns names it did not know.
        let Some(_in_flight) = proxy.in_flight.try_enter(&endpoint) else {
            Metrics::count(&c.dropped_in_flight);
            event.outcome = DnsOutcome::DroppedInFlight;
            return Reply::Drop;
        };
        if !proxy.sink.admit(&endpoint, &qname_text) {
            Metrics::count(&c.refused_rate_limited);
            event.outcome = DnsOutcome::RateLimited;
            return Reply::Error(ResponseCode::ServFail);
        }

        let query = info.query.original().clone();
        let lower_name = query.name.to_lowercase();
        // A name that does not encode is never cached.
        let key = lower_name.to_bytes().ok().map(|name| CacheKey {
            resolver: self.original_dst,
            transport: self.transport,
            name,
            query_type: query.query_type,
            query_class: query.query_class,
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        });
        let answer = match key.as_ref().and_then(|key| proxy.cache.get(key)) {
            Some(m) => {
                Metrics::count(&c.cache_hits);
                if !audit {
                    event.outcome = DnsOutcome::Cached;
                }
                m
            }
            None => {
                let started = Instant::now();
                let result = proxy
                    .upstream
                    .exchange(self.original_dst, self.transport, request.as_slice())
                    .await;
                proxy.metrics.upstream.observe(started.elapsed());
                let parsed = result.ok().and_then(|bytes| Message::from_vec(&bytes).ok());
                match parsed {
                    // The response must answer this very question.
                    Some(m)
                        if m.metadata.id == request.metadata.id
                            && m.metadata.message_type == MessageType::Response
                            && m.queries.len() == 1
                            && m.queries[0].name.to_lowercase() == lower_name
                            && m.queries[0].query_type == query.query_type =>
                    {
                        if let Some(key) = key {
                            proxy.cache.insert(key, &m);
                        }
                        if !audit {
                            event.outcome = DnsOutcome::Allowed;
                        }
                        m
                    }
                    _ => {
                        tracing::debug!(resolver = %self.original_dst, qname = %qname_text, "upstream gave no usable answer: SERVFAIL");
                        Metrics::count(&c.servfail_upstream);
                        event.outcome = DnsOutcome::ServfailUpstream;
                        return Reply::Error(ResponseCode::ServFail);
                    }
                }
            }
        };

        // Learn, and write, before the pod sees anything.
        // The query's name as hickory parsed it (learned_addresses lowercases).
        if audit {
            event.unlearned = learned_addresses(&query.name, &answer)
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            return Reply::Answer(answer);
        }
        let learned = learned_addresses(&query.name, &answer);
        if !learned.is_empty() {
            let started = Instant::now();
            let written = proxy.sink.learn(&endpoint, &qname_text, &learned);
            proxy.metrics.write.observe(started.elapsed());
            if let Err(e) = written {
                tracing::warn!(
                    endpoint = %endpoint,
                    qname = %qname_text,
                    error = %e,
                    "datapath write failed: answer withheld (SERVFAIL), the pod cannot reach what it was not told"
                );
                Metrics::count(&c.servfail_write);
                event.outcome = DnsOutcome::ServfailWrite;
                return Reply::Error(ResponseCode::ServFail);
            }
            event.learned = learned.iter().map(|(ip, _)| *ip).collect();
        }
        Metrics::count(&c.allowed);
        Reply::Answer(answer)
    }
}

#[async_trait::async_trait]
impl<P: DnsPolicy, S: LearnSink, U: Upstream> RequestHandler for QueryHandler<P, S, U> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        if !question_is_plain(request) {
            // Dropped, not answered: any answer would echo the bad question.
            Metrics::count(&self.proxy.metrics.counters.dropped_malformed);
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::FormErr;
            return ResponseInfo::from(hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            });
        }
        let mut event = DnsEvent {
            endpoint: None,
            source: request.src(),
            resolver: self.original_dst,
            qname: String::new(),
            qtype: "",
            outcome: DnsOutcome::Allowed,
            rcode: "",
            rcode_value: 0,
            transport: self.transport,
            learned: Vec::new(),
            unlearned: Vec::new(),
            rule: None,
        };
        let reply = self.decide(request, &mut event).await;
        let builder = || MessageResponseBuilder::new(&request.queries, request.edns.as_ref());
        let sent = match &reply {
            Reply::Error(code) => {
                event.rcode = code.to_str();
                event.rcode_value = u16::from(*code);
                response
                    .send_response(builder().error_msg(&request.metadata, *code))
                    .await
            }
            Reply::Answer(m) => {
                let mut metadata: Metadata = m.metadata;
                metadata.id = request.metadata.id;
                event.rcode = metadata.response_code.to_str();
                event.rcode_value = u16::from(metadata.response_code);
                let mut b = MessageResponseBuilder::new(&request.queries, None);
                if let Some(edns) = &m.edns {
                    b.edns(edns);
                }
                response
                    .send_response(b.build(
                        metadata,
                        m.answers.iter(),
                        m.authorities.iter(),
                        std::iter::empty(),
                        m.additionals.iter(),
                    ))
                    .await
            }
            Reply::Drop => Err(hickory_server::net::NetError::from(
                "dropped: the pod has too many queries in flight",
            )),
        };
        self.proxy.metrics.total.observe(started.elapsed());
        let _ = self.proxy.events.send(Arc::new(event));
        match sent {
            Ok(info) => info,
            Err(_) => {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// How long the proxy waits on an upstream before answering SERVFAIL.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
