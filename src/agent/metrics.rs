//! `/metrics` (Prometheus text) and `/healthz` over plain HTTP/1.1, and the
//! agent's own counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dns_proxy::Upstream;
use egress_bpf::Datapath;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{DnsProxy, L7Proxy};
use crate::node::Node;

/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 16;

/// Counters about the agent itself.
#[derive(Default)]
pub struct AgentMetrics {
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    pub gc_runs: AtomicU64,
    /// When the agent started (Unix seconds): `tollgate_agent_start_time_seconds`,
    /// whose changes count restarts.
    pub started: AtomicU64,
    /// The last reload attempt and its errors (`tollgate status`).
    pub last_reload: std::sync::Mutex<Option<ReloadRecord>>,
    /// The policies in force and the latest drops (`tollgate status`).
    pub board: crate::status::Board,
    /// Failures of background work, by what failed: never silent.
    pub errors: BackgroundErrors,
    /// Kubernetes mode: the watches' counters.
    pub kube: Option<Arc<crate::kube::WatchStats>>,
}

impl AgentMetrics {
    /// Remembers a reload attempt (the last one is what status shows).
    pub fn record_reload(&self, ok: bool, errors: Vec<String>) {
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadRecord {
            at: unix_now(),
            ok,
            errors,
        });
    }
}

/// One reload attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReloadRecord {
    /// Unix seconds.
    pub at: u64,
    /// The new input is in force (its maps written).
    pub ok: bool,
    /// Why not: each error of the input, or the failed write.
    pub errors: Vec<String>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Background failures (each also logged).
#[derive(Default)]
pub struct BackgroundErrors {
    /// Expiring entries (conntrack walk or map writes).
    pub gc: AtomicU64,
    /// Reading the datapath's flow events.
    pub flows: AtomicU64,
    /// Retrying a failed map write or redirect.
    pub repair: AtomicU64,
    /// Saving the FQDN cache.
    pub save: AtomicU64,
}

/// Where the metrics come from.
pub(super) struct Sources<D: Datapath, U: Upstream> {
    pub dns: Arc<DnsProxy<D, U>>,
    pub http: Arc<L7Proxy<D>>,
    pub node: Arc<Node<D>>,
    pub agent: Arc<AgentMetrics>,
    /// The agent's own pod (`namespace/name`), named by `/healthz`: during
    /// a handover both pods' probes reach whichever agent holds the port,
    /// and `tollgate healthz` counts only its own.
    pub pod: Option<String>,
}

/// `/metrics` (Prometheus text) and `/healthz` over plain HTTP/1.1.
pub(super) async fn serve<D: Datapath, U: Upstream>(
    listener: TcpListener,
    sources: Arc<Sources<D, U>>,
) -> anyhow::Result<()> {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut conn, _) = listener.accept().await?;
        // A scraper that opens connections without end waits, it does not
        // grow the agent.
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return Ok(());
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 1024];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", healthz_body(sources.pod.as_deref())),
                "/metrics" => ("200 OK", sources.render()),
                _ => (
                    "404 Not Found",
                    "not found; try /metrics or /healthz\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

/// `ok`, and the serving agent's pod when it has one.
fn healthz_body(pod: Option<&str>) -> String {
    match pod {
        Some(pod) => format!("ok\npod: {pod}\n"),
        None => "ok\n".to_string(),
    }
}

impl<D: Datapath, U: Upstream> Sources<D, U> {
    /// Every metric, as Prometheus text.
    fn render(&self) -> String {
        let (dns, http, node, metrics) = (&self.dns, &self.http, &self.node, &self.agent);
        let mut out = dns.metrics.render();
        out.push_str(&http.metrics.render());
        if let Ok(counters) = node.datapath_counters() {
            out.push_str("# HELP tollgate_datapath_packets_total Packets by datapath decision\n# TYPE tollgate_datapath_packets_total counter\n");
            for (name, v) in counters.0 {
                out.push_str(&format!(
                    "tollgate_datapath_packets_total{{reason=\"{name}\"}} {v}\n"
                ));
            }
        }
        let (c, (names, ips)) = node.cache_stats();
        for (name, help, v) in [
            (
                "tollgate_fqdn_names",
                "Names learned, over all endpoints",
                names as u64,
            ),
            (
                "tollgate_fqdn_ips",
                "Learned IP entries, over all endpoints",
                ips as u64,
            ),
            (
                "tollgate_fqdn_ips_evicted_total",
                "IPs dropped by the per-name cap",
                c.ips_evicted,
            ),
            (
                "tollgate_fqdn_names_evicted_total",
                "Names dropped by the per-endpoint cap",
                c.names_evicted,
            ),
            (
                "tollgate_fqdn_grants_dropped_total",
                "Port grants dropped by the per-entry cap",
                c.grants_dropped,
            ),
            ("tollgate_fqdn_expired_total", "Entries expired", c.expired),
            (
                "tollgate_fqdn_zombies_total",
                "Expired entries kept for live connections",
                c.zombies,
            ),
            (
                "tollgate_policy_reloads_total",
                "Policy sets applied after a change",
                metrics.reloads.load(Ordering::Relaxed),
            ),
            (
                "tollgate_policy_reload_errors_total",
                "Rejected reloads (last good set kept)",
                metrics.reload_errors.load(Ordering::Relaxed),
            ),
        ] {
            push_metric(&mut out, name, help, v);
        }
        out.push_str("# HELP tollgate_datapath_map_entries Entries the agent wrote, per map\n# TYPE tollgate_datapath_map_entries gauge\n");
        let fill = node.map_fill();
        for (map, entries, _) in &fill {
            out.push_str(&format!(
                "tollgate_datapath_map_entries{{map=\"{map}\"}} {entries}\n"
            ));
        }
        out.push_str("# HELP tollgate_datapath_map_capacity Most entries each map can hold\n# TYPE tollgate_datapath_map_capacity gauge\n");
        for (map, _, capacity) in &fill {
            if let Some(c) = capacity {
                out.push_str(&format!(
                    "tollgate_datapath_map_capacity{{map=\"{map}\"}} {c}\n"
                ));
            }
        }
        push_metric(
            &mut out,
            "tollgate_datapath_write_errors_total",
            "Map writes that failed (a full map, a refused update); each is retried until applied",
            node.write_errors(),
        );
        push_metric(
            &mut out,
            "tollgate_agent_start_time_seconds",
            "When the agent started, in Unix seconds",
            metrics.started.load(Ordering::Relaxed),
        );
        if let Some(r) = metrics
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            push_metric(
                &mut out,
                "tollgate_policy_last_reload_timestamp_seconds",
                "When the last reload was attempted, in Unix seconds",
                r.at,
            );
            push_metric(
                &mut out,
                "tollgate_policy_last_reload_success",
                "1 if the last reload put its input in force, 0 if it was rejected or its write failed",
                u64::from(r.ok),
            );
        }
        out.push_str("# HELP tollgate_agent_errors_total Failures of the agent's background work (each logged)\n# TYPE tollgate_agent_errors_total counter\n");
        let e = &metrics.errors;
        for (what, v) in [
            ("gc", &e.gc),
            ("flows", &e.flows),
            ("repair", &e.repair),
            ("save", &e.save),
        ] {
            out.push_str(&format!(
                "tollgate_agent_errors_total{{op=\"{what}\"}} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&dns.upstream.render_metrics());
        if let Some(k) = &metrics.kube {
            for (name, help, v) in [
            (
                "tollgate_kube_watch_errors_total",
                "Failed watches or lists (each retried with backoff; the last state stays enforced)",
                k.errors.load(Ordering::Relaxed),
            ),
            (
                "tollgate_kube_watch_events_total",
                "Watch events applied",
                k.events.load(Ordering::Relaxed),
            ),
            (
                "tollgate_kube_invalid_policies",
                "Policy objects that failed validation (see their InvalidPolicy events)",
                k.invalid_objects.load(Ordering::Relaxed),
            ),
        ] {
            push_metric(&mut out, name, help, v);
        }
        }
        out
    }
}

fn push_metric(out: &mut String, name: &str, help: &str, value: u64) {
    out.push_str(&format!("# HELP {name} {help}\n{name} {value}\n"));
}
