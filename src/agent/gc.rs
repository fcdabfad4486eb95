//! GC: expires FQDN entries no live connection uses (zombies are kept), and
//! saves the cache while it changes.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use egress_bpf::Datapath;

use super::metrics::AgentMetrics;
use super::restore;
use crate::node::Node;

/// Saves at least this often (in ticks) even when nothing changed.
const SAVE_EVERY: u64 = 60;
/// Saves at most this often (in ticks) while names keep coming: each save
/// snapshots the cache under the lock DNS answers wait on, so a flood of
/// names must not make that every second. A kill -9 loses at most this
/// many seconds of names; their map entries survive it (adopted at start).
const SAVE_AT_MOST_EVERY: u64 = 5;

pub(super) async fn gc_loop<D: Datapath>(
    node: Arc<Node<D>>,
    state_dir: PathBuf,
    interval: Duration,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let mut tick = 0u64;
    let mut last_saved_answers = u64::MAX;
    let mut last_save_tick = 0u64;
    loop {
        tokio::time::sleep(interval).await;
        tick += 1;
        if node.needs_repair() {
            // A write failed earlier (a reload, a learn, a redirect): retry
            // until it is applied; the last good policy stays in force.
            match node.repair() {
                Ok(()) => tracing::info!(
                    "the datapath caught up with the policy after an earlier failure"
                ),
                Err(e) => {
                    metrics.errors.repair.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "retrying a failed datapath write failed again: {:#}",
                        anyhow::Error::new(e)
                    );
                }
            }
        }
        let changed = match node.gc() {
            Ok(report) => report.cache_changed,
            Err(e) => {
                metrics.errors.gc.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("GC failed: {:#}", anyhow::Error::new(e));
                true
            }
        };
        let learned = node.cache_stats().0.answers;
        let changed = changed || learned != last_saved_answers;
        let due = tick - last_save_tick >= SAVE_AT_MOST_EVERY || last_saved_answers == u64::MAX;
        if (changed && due) || tick.is_multiple_of(SAVE_EVERY) {
            last_save_tick = tick;
            let (node, dir) = (node.clone(), state_dir.clone());
            // Encoding and fsync off the runtime's workers.
            let saved = tokio::task::spawn_blocking(move || restore::save(&dir, &node)).await;
            if !matches!(saved, Ok(Ok(()))) {
                metrics.errors.save.fetch_add(1, Ordering::Relaxed);
            }
            last_saved_answers = learned;
        }
        metrics.gc_runs.fetch_add(1, Ordering::Relaxed);
    }
}
