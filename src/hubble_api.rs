//! Hubble's Observer gRPC API, so the `hubble` CLI (and anything built on
//! Hubble's API) can read a node's flows: `hubble observe --server
//! unix:///var/lib/tollgate/hubble.sock`. The agent serves it on
//! `hubble.sock` in its state dir, root only like the events socket.
//!
//! What is served: `GetFlows` (the last flows the agent kept, then new ones
//! with `follow`; `whitelist`/`blacklist` filters on the fields listed in
//! [`SUPPORTED_FILTERS`], `since`/`until`, `first`) and `ServerStatus`. The
//! other calls answer `UNIMPLEMENTED`. A filter on a field Tollgate cannot
//! match is refused (`INVALID_ARGUMENT`, naming the field) rather than
//! silently ignored.
//!
//! Each flow is [`crate::hubble::flow_response`] (the JSON of
//! `--output hubble-json`) turned into the generated message through the
//! protobuf JSON mapping, so the two outputs cannot disagree.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::events::FlowLine;
use proto::flow::FlowFilter;
use proto::observer::observer_server::{Observer, ObserverServer};
use proto::observer::{
    GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
};

/// The code generated from `proto/` by `build.rs`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod flow {
        tonic::include_proto!("flow");
    }
    pub mod relay {
        tonic::include_proto!("relay");
    }
    pub mod observer {
        tonic::include_proto!("observer");
    }
}

/// The encoded descriptors of `proto/` (for the JSON mapping).
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hubble_descriptor.bin"));

/// The socket's name in the state dir.
pub const SOCKET: &str = "hubble.sock";

/// Flows kept for `GetFlows` without `follow` (`hubble observe --last N`).
pub const HISTORY: usize = 4096;

/// The `FlowFilter` fields Tollgate matches.
pub const SUPPORTED_FILTERS: &[&str] = &[
    "source_pod",
    "destination_pod",
    "source_ip",
    "destination_ip",
    "source_fqdn",
    "destination_fqdn",
    "verdict",
    "drop_reason_desc",
    "traffic_direction",
    "protocol",
    "source_port",
    "destination_port",
    "dns_query",
    "http_method",
    "node_name",
];

/// The service: the agent's event lines, a history of them, the node name.
#[derive(Clone)]
pub struct HubbleObserver {
    inner: Arc<Inner>,
}

struct Inner {
    node_name: String,
    lines: broadcast::Sender<Arc<FlowLine>>,
    history: Mutex<VecDeque<Arc<FlowLine>>>,
    seen: std::sync::atomic::AtomicU64,
    started: Instant,
    pool: DescriptorPool,
}

impl HubbleObserver {
    /// A service over `lines` (the agent's event lines); keeps the last
    /// [`HISTORY`] from now on. Must be called within a tokio runtime.
    pub fn new(node_name: String, lines: broadcast::Sender<Arc<FlowLine>>) -> Self {
        let pool =
            DescriptorPool::decode(DESCRIPTORS).expect("build.rs encoded a valid descriptor set");
        let inner = Arc::new(Inner {
            node_name,
            lines: lines.clone(),
            history: Mutex::new(VecDeque::new()),
            seen: Default::default(),
            started: Instant::now(),
            pool,
        });
        let weak = Arc::downgrade(&inner);
        let mut rx = lines.subscribe();
        tokio::spawn(async move {
            loop {
                let line = match rx.recv().await {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                inner
                    .seen
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut h = inner.history.lock().unwrap_or_else(|e| e.into_inner());
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(line);
            }
        });
        Self { inner }
    }

    /// The tonic service to serve.
    pub fn into_service(self) -> ObserverServer<Self> {
        ObserverServer::new(self)
    }

    /// A described event as Hubble's message.
    pub fn message(&self, line: &FlowLine) -> Result<GetFlowsResponse, Status> {
        to_message(
            &self.inner.pool,
            &crate::hubble::flow_response(line, &self.inner.node_name),
        )
    }
}

fn to_message(pool: &DescriptorPool, json: &Value) -> Result<GetFlowsResponse, Status> {
    let desc = pool
        .get_message_by_name("observer.GetFlowsResponse")
        .ok_or_else(|| Status::internal("no observer.GetFlowsResponse in the descriptors"))?;
    let dynamic = DynamicMessage::deserialize(desc, json)
        .map_err(|e| Status::internal(format!("flow does not fit the schema: {e}")))?;
    GetFlowsResponse::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("re-decoding a flow: {e}")))
}

/// Which flows a request wants.
struct Selection {
    whitelist: Vec<FlowFilter>,
    blacklist: Vec<FlowFilter>,
    since: Option<i64>,
    until: Option<i64>,
}

impl Selection {
    fn from_request(r: &GetFlowsRequest) -> Result<Self, Status> {
        for f in r.whitelist.iter().chain(&r.blacklist) {
            unsupported(f)?;
        }
        let secs = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds);
        Ok(Self {
            whitelist: r.whitelist.clone(),
            blacklist: r.blacklist.clone(),
            since: secs(&r.since),
            until: secs(&r.until),
        })
    }

    fn wants(&self, flow: &Value) -> bool {
        let t = flow["time"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second());
        if let (Some(since), Some(t)) = (self.since, t) {
            if t < since {
                return false;
            }
        }
        if let (Some(until), Some(t)) = (self.until, t) {
            if t > until {
                return false;
            }
        }
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| matches(f, flow)))
            && !self.blacklist.iter().any(|f| matches(f, flow))
    }
}

/// Refuses a filter that sets a field Tollgate does not match.
fn unsupported(f: &FlowFilter) -> Result<(), Status> {
    let mut rest = f.clone();
    rest.source_pod.clear();
    rest.destination_pod.clear();
    rest.source_ip.clear();
    rest.destination_ip.clear();
    rest.source_fqdn.clear();
    rest.destination_fqdn.clear();
    rest.verdict.clear();
    rest.drop_reason_desc.clear();
    rest.traffic_direction.clear();
    rest.protocol.clear();
    rest.source_port.clear();
    rest.destination_port.clear();
    rest.dns_query.clear();
    rest.http_method.clear();
    rest.node_name.clear();
    if rest == FlowFilter::default() {
        return Ok(());
    }
    // Name the fields through the JSON mapping of what is left.
    let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| Status::internal(e.to_string()))?;
    let names = pool
        .get_message_by_name("flow.FlowFilter")
        .and_then(|d| DynamicMessage::decode(d, rest.encode_to_vec().as_slice()).ok())
        .map(|m| {
            m.fields()
                .map(|(f, _)| f.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Err(Status::invalid_argument(format!(
        "Tollgate cannot filter flows on {names}; it filters on {}",
        SUPPORTED_FILTERS.join(", ")
    )))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or("")
}

/// `ns/prefix`, `/prefix` (any namespace) or `prefix` (any namespace).
fn pod_matches(patterns: &[String], endpoint: &Value) -> bool {
    let (ns, pod) = (
        str_at(endpoint, &["namespace"]),
        str_at(endpoint, &["pod_name"]),
    );
    patterns.iter().any(|p| {
        let (want_ns, prefix) = match p.split_once('/') {
            Some((ns, prefix)) => (Some(ns).filter(|n| !n.is_empty()), prefix),
            None => (None, p.as_str()),
        };
        !pod.is_empty() && want_ns.is_none_or(|n| n == ns) && pod.starts_with(prefix)
    })
}

fn ip_matches(patterns: &[String], ip: &str) -> bool {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    patterns.iter().any(|p| match p.parse::<ipnet::IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => p.parse::<std::net::IpAddr>() == Ok(ip),
    })
}

/// A name pattern with `*` wildcards, as Hubble's FQDN filters.
fn glob(pattern: &str, name: &str) -> bool {
    let re = format!(
        "^(?i){}$",
        pattern
            .trim_end_matches('.')
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*")
    );
    regex::Regex::new(&re).is_ok_and(|re| re.is_match(name.trim_end_matches('.')))
}

fn names(flow: &Value, key: &str) -> Vec<String> {
    flow[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn l4(flow: &Value) -> (&str, u64, u64) {
    let Some((proto, ports)) = flow["l4"].as_object().and_then(|o| o.iter().next()) else {
        return ("", 0, 0);
    };
    (
        proto.as_str(),
        ports["source_port"].as_u64().unwrap_or(0),
        ports["destination_port"].as_u64().unwrap_or(0),
    )
}

/// Every set field of `f` holds for `flow` (one value of a field is enough).
fn matches(f: &FlowFilter, flow: &Value) -> bool {
    use proto::flow::{DropReason, TrafficDirection, Verdict};
    let any = |set: bool, ok: bool| !set || ok;
    let (proto_name, sport, dport) = l4(flow);
    let port_in = |list: &[String], p: u64| list.iter().any(|x| x.parse() == Ok(p));
    let l7_kind = flow["l7"]
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "type"))
        .cloned()
        .unwrap_or_default();
    any(
        !f.source_pod.is_empty(),
        pod_matches(&f.source_pod, &flow["source"]),
    ) && any(
        !f.destination_pod.is_empty(),
        pod_matches(&f.destination_pod, &flow["destination"]),
    ) && any(
        !f.source_ip.is_empty(),
        ip_matches(&f.source_ip, str_at(flow, &["IP", "source"])),
    ) && any(
        !f.destination_ip.is_empty(),
        ip_matches(&f.destination_ip, str_at(flow, &["IP", "destination"])),
    ) && any(
        !f.source_fqdn.is_empty(),
        f.source_fqdn
            .iter()
            .any(|p| names(flow, "source_names").iter().any(|n| glob(p, n))),
    ) && any(
        !f.destination_fqdn.is_empty(),
        f.destination_fqdn
            .iter()
            .any(|p| names(flow, "destination_names").iter().any(|n| glob(p, n))),
    ) && any(
        !f.verdict.is_empty(),
        f.verdict.iter().any(|v| {
            Verdict::try_from(*v).is_ok_and(|v| v.as_str_name() == str_at(flow, &["verdict"]))
        }),
    ) && any(
        !f.drop_reason_desc.is_empty(),
        f.drop_reason_desc.iter().any(|v| {
            DropReason::try_from(*v)
                .is_ok_and(|v| v.as_str_name() == str_at(flow, &["drop_reason_desc"]))
        }),
    ) && any(
        !f.traffic_direction.is_empty(),
        f.traffic_direction.iter().any(|v| {
            TrafficDirection::try_from(*v)
                .is_ok_and(|v| v.as_str_name() == str_at(flow, &["traffic_direction"]))
        }),
    ) && any(
        !f.protocol.is_empty(),
        f.protocol.iter().any(|p| {
            p.eq_ignore_ascii_case(proto_name)
                || (p.eq_ignore_ascii_case("icmp") && proto_name.starts_with("ICMP"))
                || p.eq_ignore_ascii_case(&l7_kind)
        }),
    ) && any(!f.source_port.is_empty(), port_in(&f.source_port, sport))
        && any(
            !f.destination_port.is_empty(),
            port_in(&f.destination_port, dport),
        )
        && any(
            !f.dns_query.is_empty(),
            f.dns_query.iter().any(|re| {
                regex::Regex::new(re)
                    .is_ok_and(|re| re.is_match(str_at(flow, &["l7", "dns", "query"])))
            }),
        )
        && any(
            !f.http_method.is_empty(),
            f.http_method
                .iter()
                .any(|m| m.eq_ignore_ascii_case(str_at(flow, &["l7", "http", "method"]))),
        )
        && any(
            !f.node_name.is_empty(),
            f.node_name
                .iter()
                .any(|p| glob(p, str_at(flow, &["node_name"]))),
        )
}

#[tonic::async_trait]
impl Observer for HubbleObserver {
    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<GetFlowsResponse>>, Status> {
        let r = request.into_inner();
        let selection = Arc::new(Selection::from_request(&r)?);
        // Subscribed before the history is read: nothing falls in between
        // (a flow in both is sent twice rather than never).
        let live = r.follow.then(|| self.inner.lines.subscribe());
        let node = self.inner.node_name.clone();
        let pick = |line: &FlowLine| {
            let json = crate::hubble::flow_response(line, &node);
            selection.wants(&json["flow"]).then_some(json)
        };
        let past: Vec<Value> = {
            let h = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
            let wanted: Vec<Value> = h.iter().filter_map(|line| pick(line)).collect();
            let n = if r.number == 0 && !r.follow && r.since.is_none() {
                // Hubble's default for a request without a number.
                20
            } else if r.number == 0 && r.follow {
                0
            } else {
                r.number.min(wanted.len() as u64) as usize
            };
            let n = n.min(wanted.len());
            if r.since.is_some() && r.number == 0 {
                wanted
            } else if r.first {
                wanted.into_iter().take(n).collect()
            } else {
                let skip = wanted.len() - n;
                wanted.into_iter().skip(skip).collect()
            }
        };
        let pool = self.inner.pool.clone();
        let past_msgs: Vec<Result<GetFlowsResponse, Status>> =
            past.iter().map(|j| to_message(&pool, j)).collect();
        let head = futures::stream::iter(past_msgs);
        let Some(rx) = live else {
            return Ok(Response::new(Box::pin(head)));
        };
        let node = self.inner.node_name.clone();
        let tail = futures::stream::unfold(rx, move |mut rx| {
            let (pool, node, selection) = (pool.clone(), node.clone(), selection.clone());
            async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => {
                            let json = crate::hubble::flow_response(&line, &node);
                            if selection.wants(&json["flow"]) {
                                return Some((to_message(&pool, &json), rx));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let note = serde_json::json!({"kind": "lost", "lost": n});
                            if let Some(json) = crate::hubble::response(&note, &node) {
                                return Some((to_message(&pool, &json), rx));
                            }
                        }
                        Err(_) => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(head.chain(tail))))
    }

    async fn server_status(
        &self,
        _: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let num = self
            .inner
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64;
        Ok(Response::new(ServerStatusResponse {
            num_flows: num,
            max_flows: HISTORY as u64,
            seen_flows: self.inner.seen.load(std::sync::atomic::Ordering::Relaxed),
            uptime_ns: self.inner.started.elapsed().as_nanos() as u64,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            version: format!("tollgate {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        }))
    }
}

/// Binds `hubble.sock` at `path` (replacing a stale one), root only.
pub fn bind(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the Hubble API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting the Hubble API socket {}", path.display()))?;
    Ok(listener)
}

/// Serves the Observer API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::UnixListener,
    observer: HubbleObserver,
) -> anyhow::Result<()> {
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    tonic::transport::Server::builder()
        .add_service(observer.into_service())
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
