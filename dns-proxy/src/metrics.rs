//! Measurements inside the proxy: latency histograms and outcome counters,
//! lock-free, read by the agent's `/metrics` endpoint.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram buckets, in microseconds. Fine below
/// 100 us: the answer -> map written path lives there, and a p99 of
/// "<= 100 us" says nothing about a 50 us target.
pub const BUCKETS_US: [u64; 22] = [
    2, 5, 10, 15, 20, 30, 40, 50, 75, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 1_000_000, 5_000_000,
];

/// A cumulative histogram in the Prometheus style.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest bucket bound holding fraction `q` of observations.
    pub fn quantile_upper_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return Some(BUCKETS_US[i]);
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BUCKETS_US[i] as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Outcome counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Answered (from upstream or the cache) after learning.
    pub allowed: AtomicU64,
    /// The name is not allowed by the endpoint's DNS rules.
    pub refused_name: AtomicU64,
    /// The asking address is no known endpoint.
    pub refused_unknown_endpoint: AtomicU64,
    /// The resolver (original destination) is not allowed for the endpoint.
    pub refused_resolver: AtomicU64,
    /// Not a single standard query (FORMERR/NOTIMP).
    pub refused_unsupported: AtomicU64,
    /// Upstream timed out, failed, or answered garbage.
    pub servfail_upstream: AtomicU64,
    /// The datapath write failed: the answer was withheld.
    pub servfail_write: AtomicU64,
    /// Unparseable queries, dropped without an answer.
    pub dropped_malformed: AtomicU64,
    /// Sent to the proxy's own port rather than redirected to it: dropped
    /// (only the TPROXY redirect may bring queries here).
    pub dropped_direct: AtomicU64,
    /// The pod had too many queries in flight: dropped unanswered.
    pub dropped_in_flight: AtomicU64,
    /// No socket could be bound to the resolver's address to answer from
    /// (e.g. port 53 without CAP_NET_BIND_SERVICE): dropped unanswered.
    pub dropped_no_reply_socket: AtomicU64,
    /// The pod was over its new-name budget: SERVFAIL.
    pub refused_rate_limited: AtomicU64,
    /// The proxy had too many queries in flight in all: dropped on receipt.
    pub dropped_overload: AtomicU64,
    /// Audit mode: answered though enforcement would refuse them.
    pub audit: AtomicU64,
    /// Answers served from the answer cache.
    pub cache_hits: AtomicU64,
}

/// Everything the proxy measures.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Receipt of the query to its reply: for an answer from the cache,
    /// from the read of its receive batch to the reply ready to send with
    /// the batch; otherwise from its handling to the reply handed to the
    /// socket.
    pub total: Histogram,
    /// Upstream exchange.
    pub upstream: Histogram,
    /// fqdn-cache learn + datapath write.
    pub write: Histogram,
    pub counters: Counters,
}

impl Metrics {
    pub fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.total.render(
            &mut out,
            "tollgate_dns_request_seconds",
            "DNS query handling time, receipt to reply",
        );
        self.upstream.render(
            &mut out,
            "tollgate_dns_upstream_seconds",
            "Upstream exchange time",
        );
        self.write.render(
            &mut out,
            "tollgate_dns_datapath_write_seconds",
            "Learn + datapath write time before the reply",
        );
        let c = &self.counters;
        let _ = writeln!(out, "# HELP tollgate_dns_queries_total DNS queries by outcome\n# TYPE tollgate_dns_queries_total counter");
        for (outcome, v) in [
            ("allowed", &c.allowed),
            ("audit", &c.audit),
            ("refused_name", &c.refused_name),
            ("refused_unknown_endpoint", &c.refused_unknown_endpoint),
            ("refused_resolver", &c.refused_resolver),
            ("refused_unsupported", &c.refused_unsupported),
            ("servfail_upstream", &c.servfail_upstream),
            ("servfail_write", &c.servfail_write),
            ("dropped_malformed", &c.dropped_malformed),
            ("dropped_direct", &c.dropped_direct),
            ("dropped_in_flight", &c.dropped_in_flight),
            ("dropped_no_reply_socket", &c.dropped_no_reply_socket),
            ("refused_rate_limited", &c.refused_rate_limited),
            ("dropped_overload", &c.dropped_overload),
        ] {
            let _ = writeln!(
                out,
                "tollgate_dns_queries_total{{outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE tollgate_dns_cache_hits_total counter\ntollgate_dns_cache_hits_total {}",
            c.cache_hits.load(Ordering::Relaxed)
        );
        out
    }
}
