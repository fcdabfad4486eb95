//! Inputs the fuzzer found, replayed in every test run (same harness shape as
//! dns-proxy/fuzz/fuzz_targets/dns_handler.rs: first byte = split point,
//! then the query, then the upstream response).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use dns_proxy::reply::RecordingReply;
use dns_proxy::{
    DnsCheck, DnsPolicy, LearnSink, Proxy, ProxyConfig, SinkError, Transport, Upstream,
    UpstreamError,
};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use policy::EndpointKey;

struct AnyPod;
impl DnsPolicy for AnyPod {
    fn endpoint(&self, _: IpAddr) -> Option<EndpointKey> {
        Some(EndpointKey {
            namespace: "f".into(),
            name: "pod".into(),
        })
    }
    fn check(&self, _: &EndpointKey, _: SocketAddr, _: Transport, _: &str) -> DnsCheck {
        DnsCheck::Allowed
    }
}

struct Sink;
impl LearnSink for Sink {
    fn learn(&self, _: &EndpointKey, _: &str, _: &[(IpAddr, u32)]) -> Result<(), SinkError> {
        Ok(())
    }
}

struct Fixed(Vec<u8>);
#[async_trait::async_trait]
impl Upstream for Fixed {
    async fn exchange(
        &self,
        _: SocketAddr,
        _: Transport,
        _: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        Ok(self.0.clone())
    }
}

/// Runs one fuzz input; returns the decoded responses sent (each must decode).
async fn replay(data: &[u8]) -> (usize, u64) {
    let split = data[0] as usize;
    let rest = &data[1..];
    let (query, upstream) = rest.split_at(split.min(rest.len()));
    let proxy = Proxy::new(
        AnyPod,
        Sink,
        Fixed(upstream.to_vec()),
        ProxyConfig {
            cache_entries: 0,
            ..ProxyConfig::default()
        },
    );
    let Ok(request) = Request::from_bytes(
        query.to_vec(),
        "10.0.0.1:5353".parse().unwrap(),
        Protocol::Udp,
    ) else {
        return (0, 0);
    };
    let reply = RecordingReply::udp(512);
    proxy
        .handler("10.96.0.10:53".parse().unwrap(), Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    let dropped = proxy
        .metrics
        .counters
        .dropped_malformed
        .load(Ordering::SeqCst);
    (reply.take().len(), dropped)
}

#[tokio::test]
async fn a_compression_pointer_in_the_question_is_dropped_not_echoed() {
    // The question name points into the query's own header (c0 02); echoed
    // into a response header with other flags it decoded as label code 128.
    let (sent, dropped) = replay(include_bytes!(
        "fuzz_regressions/reencode-invalid-label.bin"
    ))
    .await;
    assert_eq!((sent, dropped), (0, 1));
}
