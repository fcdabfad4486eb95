//! Arbitrary bytes as a pod's query and as the upstream's response, through
//! the real handler (policy check, cache, CNAME walk, learn, encode). It must
//! never panic, and a query it cannot parse gets no answer.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir dns-proxy/fuzz dns_handler`
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use dns_proxy::reply::RecordingReply;
use dns_proxy::{DnsCheck, DnsPolicy, LearnSink, Proxy, ProxyConfig, SinkError, Transport, Upstream, UpstreamError};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use libfuzzer_sys::fuzz_target;
use policy::EndpointKey;

struct AnyPod;
impl DnsPolicy for AnyPod {
    fn endpoint(&self, _: IpAddr) -> Option<EndpointKey> {
        Some(EndpointKey { namespace: "f".into(), name: "pod".into() })
    }
    fn check(&self, _: &EndpointKey, _: SocketAddr, _: Transport, qname: &str) -> DnsCheck {
        // Exercise both branches depending on the input.
        if qname.len() % 3 == 0 { DnsCheck::NameDenied } else { DnsCheck::Allowed }
    }
}

struct Sink;
impl LearnSink for Sink {
    fn learn(&self, _: &EndpointKey, _: &str, answers: &[(IpAddr, u32)]) -> Result<(), SinkError> {
        if answers.len() > 100 { Err(SinkError("too many".into())) } else { Ok(()) }
    }
}

/// Answers with the fuzzer's bytes, with the query's ID patched in half the
/// time (so that validation passes and the learn path runs).
struct Scripted;
thread_local!(static RESPONSE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });

#[async_trait::async_trait]
impl Upstream for Scripted {
    async fn exchange(&self, _: SocketAddr, _: Transport, query: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        let mut r = RESPONSE.with(|r| r.borrow().clone());
        if r.len() >= 2 && query.len() >= 2 && r[0] & 1 == 1 {
            r[..2].copy_from_slice(&query[..2]);
        }
        Ok(r)
    }
}

fn proxy() -> &'static (tokio::runtime::Runtime, Arc<Proxy<AnyPod, Sink, Scripted>>) {
    static P: OnceLock<(tokio::runtime::Runtime, Arc<Proxy<AnyPod, Sink, Scripted>>)> = OnceLock::new();
    P.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Cache off: every input reaches the upstream path.
        let p = Proxy::new(AnyPod, Sink, Scripted, ProxyConfig { cache_entries: 0, ..ProxyConfig::default() });
        (rt, p)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (split as usize).min(rest.len());
    let (query, response) = rest.split_at(at);
    RESPONSE.with(|r| *r.borrow_mut() = response.to_vec());
    let Ok(request) = Request::from_bytes(query.to_vec(), "10.0.0.1:5353".parse().unwrap(), Protocol::Udp) else {
        return; // the listener drops what does not parse
    };
    let (rt, proxy) = proxy();
    let reply = RecordingReply::udp(512);
    let dropped_before = proxy.metrics.counters.dropped_malformed.load(std::sync::atomic::Ordering::SeqCst);
    rt.block_on(proxy.handler("10.96.0.10:53".parse().unwrap(), Transport::Udp).handle_request::<_, TokioTime>(&request, reply.clone()));
    let dropped = proxy.metrics.counters.dropped_malformed.load(std::sync::atomic::Ordering::SeqCst) > dropped_before;
    // Exactly one response (RecordingReply panics if it does not decode), or
    // none for a query dropped as malformed.
    assert_eq!(reply.take().len(), usize::from(!dropped), "one response per accepted query");
});
