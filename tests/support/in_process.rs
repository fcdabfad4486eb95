//! The in-process agent the `hubble_grpc` and `status` suites share: one
//! pod under a DNS + toFQDNs policy, an upstream that knows one name, the
//! agent's settings, and a query asked as that pod.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dns_proxy::reply::RecordingReply;
use dns_proxy::{DenyResponse, Transport, Upstream, UpstreamError};
use egress_bpf::FakeDatapath;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use policy::ResolveOptions;
use tollgate::agent::{self, AgentConfig, Source};

pub const ENDPOINTS: &str = "endpoints:
  - {name: payments, namespace: prod, labels: {app: payments}, ips: [10.0.1.10], interface: veth-payments}
";

pub const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: payments-egress, namespace: prod}
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

/// `api.test` -> 203.0.113.10; anything else NXDOMAIN.
pub struct OneName;

#[async_trait::async_trait]
impl Upstream for OneName {
    async fn exchange(
        &self,
        _: SocketAddr,
        _: Transport,
        query: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let q = Message::from_vec(query).unwrap();
        let mut resp = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        resp.add_query(q.queries[0].clone());
        if q.queries[0].name.to_string() == "api.test." {
            resp.add_answer(Record::from_rdata(
                q.queries[0].name.clone(),
                300,
                RData::A(A(Ipv4Addr::new(203, 0, 113, 10))),
            ));
        } else {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        Ok(resp.to_vec().unwrap())
    }
}

pub fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        source: Source::Files {
            policies: dir.join("policies"),
            endpoints: dir.join("endpoints.yaml"),
        },
        state_dir: dir.join("state"),
        pin_dir: dir.join("pins"),
        dns_port: 15053,
        http_port: 15080,
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        cache: fqdn_cache::Config::default(),
        deny_response: DenyResponse::Refused,
        dns_cache_entries: 0,
        dns_workers: 0,
        http_workers: 0,
        limits: agent::Limits::default(),
        resolve: ResolveOptions::default(),
        reload_interval: Duration::from_millis(50),
        gc_interval: Duration::from_millis(100),
        uninstall_on_exit: false,
        cluster_name: "default".into(),
        own_pod: None,
        handover_wait: Duration::from_secs(20),
    }
}

pub async fn ask(dns: &Arc<agent::DnsProxy<FakeDatapath, OneName>>, qname: &str) -> ResponseCode {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
    let request = Request::from_bytes(
        m.to_vec().unwrap(),
        "10.0.1.10:40000".parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    let reply = RecordingReply::udp(1232);
    dns.handler("10.96.0.10:53".parse().unwrap(), Transport::Udp)
        .handle_request::<_, TokioTime>(&request, reply.clone())
        .await;
    reply.take().remove(0).metadata.response_code
}
