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

use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dns_proxy::Upstream;
use egress_bpf::Datapath;
use tokio::sync::broadcast;

use super::metrics::AgentMetrics;
use super::{DnsProxy, L7Proxy};
use crate::events::{time_text, FlowLine, Peer};
use crate::node::{ActivePolicy, Node};

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
    // Each line says who its addresses are under the policy in force when
    // its drain began (the policy is read once per drain, not per line).
    let mut peers = Peers::default();
    // `ends`: the line's two addresses when the event has them at hand
    // (else they are read back from the line's text).
    let mut send = |policy: &Arc<ActivePolicy>,
                    line: FlowLine,
                    ends: Option<(IpAddr, IpAddr)>,
                    time: &OnceCell<Arc<str>>| {
        let time = time.get_or_init(|| time_text(jiff::Timestamp::now()));
        let line = peers.describe(policy, line, ends, time);
        metrics.board.observe(&line);
        let _ = tx.send(Arc::new(line));
    };
    let mut drains = 0u32;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // One time for all lines of a drain (they are described together),
        // taken at its first line.
        let time = OnceCell::new();
        // And one policy: the one in force when the drain began.
        let policy = node.policy();
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
                    send(&policy, line, None, &time)
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return Ok(()),
            }
        }
        loop {
            match requests.try_recv() {
                // The only holder once received: taken apart, not copied.
                Ok(e) => {
                    let ends = (e.parties.client.ip(), e.parties.server.ip());
                    let line = FlowLine::from_http(Arc::unwrap_or_clone(e));
                    send(&policy, line, Some(ends), &time)
                }
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
            send(
                &policy,
                FlowLine::from_flow(&f.event, f.pod.as_ref(), &policy.rules, f.names),
                None,
                &time,
            );
        }
    }
}

/// The most peers remembered per policy: past it the memory starts over
/// (a pod reaching ever new world addresses cannot grow it).
const MAX_PEERS: usize = 16_384;

/// Who each address is under one policy, remembered: describing a line
/// looks up both its ends and formats their labels, and a busy pod's lines
/// name the same few peers over and over (at saturation this was most of
/// the pump's time).
#[derive(Default)]
struct Peers {
    /// The policy remembered for. Weak: a replaced policy's model is freed
    /// at once, and while this is held its allocation cannot be reused by
    /// a new policy that would then pass for it.
    policy: std::sync::Weak<ActivePolicy>,
    known: std::collections::HashMap<std::net::IpAddr, Arc<Peer>>,
    /// The last two peers looked up (a line's two ends): most lines name
    /// the same pair as the one before, found here without hashing.
    recent: [Option<(IpAddr, Arc<Peer>)>; 2],
}

impl Peers {
    /// `line` described under `policy` (the one in force), starting over
    /// when that is not the policy remembered for.
    fn describe(
        &mut self,
        policy: &Arc<ActivePolicy>,
        line: FlowLine,
        ends: Option<(IpAddr, IpAddr)>,
        time: &Arc<str>,
    ) -> FlowLine {
        if !std::ptr::eq(self.policy.as_ptr(), Arc::as_ptr(policy)) || self.known.len() >= MAX_PEERS
        {
            self.policy = Arc::downgrade(policy);
            self.known.clear();
            self.recent = Default::default();
        }
        let inventory = policy.inventory();
        let (known, recent) = (&mut self.known, &mut self.recent);
        let peer_of = |ip: IpAddr| {
            if let Some((_, peer)) = recent.iter().flatten().find(|(r, _)| *r == ip) {
                return peer.clone();
            }
            let peer = known
                .entry(ip)
                .or_insert_with(|| Arc::new(Peer::of(inventory, ip)))
                .clone();
            // The first slot keeps the first address seen, the second the
            // latest other one.
            recent[usize::from(recent[0].is_some())] = Some((ip, peer.clone()));
            peer
        };
        match ends {
            Some((src, dst)) => line.described_at(inventory, time, (Some(src), Some(dst)), peer_of),
            None => line.described_with(inventory, time, peer_of),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(endpoints: &str) -> Arc<ActivePolicy> {
        let inventory = policy::Inventory::parse(endpoints, "test").unwrap();
        let resolved = policy::PolicySet::new(Vec::new())
            .resolve(&inventory, policy::ResolveOptions::default());
        Arc::new(ActivePolicy::new(resolved, inventory, |_| None))
    }

    fn line(src: &str, dst: &str) -> FlowLine {
        FlowLine::from_http(http_proxy::HttpEvent {
            parties: Arc::new(http_proxy::Parties {
                client: format!("{src}:40000").parse().unwrap(),
                server: format!("{dst}:80").parse().unwrap(),
                source: None,
                destination: None,
                pod: None,
                direction: "egress",
            }),
            method: Some(http_proxy::Method::GET),
            path: "/".into(),
            host: None,
            verdict: http_proxy::HttpVerdict::Allowed,
            status: 200,
            rule: None,
            header_edits: Vec::new(),
        })
    }

    /// Remembered peers describe a line exactly as looking them up does,
    /// and a new policy is followed at once (a pod relabelled is named by
    /// its new labels on the next line).
    #[test]
    fn remembered_peers_describe_as_a_fresh_lookup_and_follow_the_policy() {
        let now: jiff::Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
        let before = policy("endpoints:\n  - {name: a, namespace: prod, labels: {app: a}, ips: [10.0.1.10]}\n  - {name: b, namespace: prod, labels: {app: b}, ips: [10.0.1.20]}\n");
        let mut peers = Peers::default();
        for _ in 0..3 {
            let described = peers.describe(
                &before,
                line("10.0.1.10", "10.0.1.20"),
                None,
                &time_text(now),
            );
            assert_eq!(
                described,
                line("10.0.1.10", "10.0.1.20").described(before.inventory(), now)
            );
            let world = peers.describe(
                &before,
                line("10.0.1.10", "203.0.113.9"),
                None,
                &time_text(now),
            );
            assert_eq!(world.destination.unwrap().labels, ["reserved:world"]);
            // The ends given rather than read back, and the other way round.
            let ends = Some(("10.0.1.20".parse().unwrap(), "10.0.1.10".parse().unwrap()));
            assert_eq!(
                peers.describe(
                    &before,
                    line("10.0.1.20", "10.0.1.10"),
                    ends,
                    &time_text(now)
                ),
                line("10.0.1.20", "10.0.1.10").described(before.inventory(), now)
            );
        }
        assert_eq!(peers.known.len(), 3);
        assert_eq!(
            Arc::strong_count(&before),
            1,
            "the memory does not keep a policy alive"
        );
        let after = policy(
            "endpoints:\n  - {name: a, namespace: prod, labels: {app: a2}, ips: [10.0.1.10]}\n",
        );
        let described = peers.describe(
            &after,
            line("10.0.1.10", "10.0.1.20"),
            None,
            &time_text(now),
        );
        assert!(described
            .source
            .as_ref()
            .unwrap()
            .labels
            .contains(&"k8s:app=a2".to_string()));
        assert_eq!(
            described,
            line("10.0.1.10", "10.0.1.20").described(after.inventory(), now)
        );
    }

    /// Ever new addresses do not grow the memory past its bound.
    #[test]
    fn the_memory_of_peers_is_bounded() {
        let now: jiff::Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
        let policy = policy("endpoints: []\n");
        let mut peers = Peers::default();
        for i in 0..(MAX_PEERS as u32 + 10) {
            let dst = std::net::Ipv4Addr::from(0xcb00_0000 + i).to_string();
            peers.describe(&policy, line("10.0.1.10", &dst), None, &time_text(now));
        }
        assert!(peers.known.len() <= MAX_PEERS);
    }
}
