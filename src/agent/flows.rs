//! The event pump: datapath flow events, DNS and HTTP events, described and
//! fanned out to `tollgate observe` (as JSON, written per client) and the
//! Hubble API.
//!
//! The proxies' events are drained every [`DRAIN_EVERY`], not awaited one
//! by one: awaiting made every query and request wake a thread of the
//! agent's runtime from the proxy's worker (a futex wake and a context
//! switch each, a tenth of the CPU at saturation). Undrained, they wait in
//! the proxies' channels (4,096 each; past that the oldest are missed, as
//! for any slow observer).

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

/// How often the proxies' events are drained.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often the datapath's events are polled (in drains).
const POLL_EVERY_DRAINS: u32 = 10;
/// The most flow events read per poll.
const BATCH: usize = 4096;

pub(super) async fn event_pump<D: Datapath, U: Upstream>(
    node: Arc<Node<D>>,
    dns: Arc<DnsProxy<D, U>>,
    http: Arc<L7Proxy<D>>,
    tx: broadcast::Sender<Arc<FlowLine>>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let mut dns = dns.subscribe();
    let mut requests = http.subscribe();
    let mut failing = false;
    // Each line says who its addresses are under the policy in force now.
    let send = |line: FlowLine| {
        let line = line.described(node.policy().inventory(), jiff::Timestamp::now());
        metrics.board.observe(&line);
        let _ = tx.send(Arc::new(line));
    };
    let mut drains = 0u32;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match dns.try_recv() {
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
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return Ok(()),
            }
        }
        loop {
            match requests.try_recv() {
                Ok(e) => send(FlowLine::from_http(&e)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return Ok(()),
            }
        }
        drains += 1;
        if !drains.is_multiple_of(POLL_EVERY_DRAINS) {
            continue;
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
