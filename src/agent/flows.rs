//! The event pump: datapath flow events (polled), DNS and HTTP events (as
//! they come), described and fanned out as JSON lines to `tollgate observe`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dns_proxy::Upstream;
use egress_bpf::Datapath;
use tokio::sync::broadcast;

use super::metrics::AgentMetrics;
use super::{DnsProxy, L7Proxy};
use crate::events::FlowLine;
use crate::node::Node;

/// How often the datapath's events are polled.
const POLL: Duration = Duration::from_millis(100);
/// The most flow events read per poll.
const BATCH: usize = 4096;

pub(super) async fn event_pump<D: Datapath, U: Upstream>(
    node: Arc<Node<D>>,
    dns: Arc<DnsProxy<D, U>>,
    http: Arc<L7Proxy<D>>,
    tx: broadcast::Sender<String>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let mut dns = dns.subscribe();
    let mut requests = http.subscribe();
    let mut failing = false;
    // Each line says who its addresses are under the policy in force now.
    let send = |line: FlowLine| {
        let line = line.described(node.policy().inventory(), jiff::Timestamp::now());
        metrics.board.observe(&line);
        let _ = tx.send(serde_json::to_string(&line).unwrap_or_default());
    };
    loop {
        let deadline = tokio::time::sleep(POLL);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                e = dns.recv() => match e {
                    Ok(e) => {
                        let mut line = FlowLine::from_dns(&e);
                        // A query to a Service address reaches the proxy
                        // already sent on to a backend: name the Service.
                        let protocol = match e.transport {
                            dns_proxy::Transport::Udp => 17,
                            dns_proxy::Transport::Tcp => 6,
                        };
                        line.service = e
                            .endpoint
                            .as_ref()
                            .and_then(|k| node.service_frontend(k, protocol, e.source, e.resolver))
                            .map(|f| crate::events::ServiceLine {
                                address: f.to_string(),
                                name: None,
                            });
                        send(line)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
                e = requests.recv() => match e {
                    Ok(e) => send(FlowLine::from_http(&e)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
            }
        }
        let flows = match node.poll_flows(BATCH) {
            Ok(flows) => flows,
            Err(e) => {
                // Counted every time, logged once per streak.
                metrics.errors.flows.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!("reading flow events failed: {:#}", anyhow::Error::new(e));
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            tracing::info!("reading flow events works again");
            failing = false;
        }
        if flows.is_empty() {
            continue;
        }
        let policy = node.policy();
        for f in flows {
            send(FlowLine::from_flow(
                &f.event,
                f.pod.as_ref(),
                &policy.rules,
                f.names,
            ));
        }
    }
}
