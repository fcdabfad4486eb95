//! Reload: every new input (files changed, the cluster changed) is resolved
//! and compiled outside any lock, then put in force by the node in one
//! step; an input with errors is reported once and the last good policy
//! set stays in force.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use egress_bpf::redirect::RedirectConfig;
use egress_bpf::Datapath;
use policy::{PolicySet, ResolveOptions, SelectorCache};

use super::inputs::{Input, Inputs};
use super::metrics::AgentMetrics;
use crate::node::{local_interfaces, ActivePolicy, Node};
use crate::status::PolicyInForce;

/// Resolves and compiles an input for this node's interfaces. Only the
/// endpoints with a veth here get policies of their own: the rest of the
/// cluster is peers (identities, the ipcache), and resolving a policy for
/// each of a cluster's pods on every node is what made a 50,000-pod
/// cluster cost seconds per change. `selectors` keeps the peer selectors'
/// selections from one reload to the next.
pub(super) fn compile(
    input: Input,
    options: ResolveOptions,
    node_interfaces: impl Fn(&str) -> Option<u32>,
    selectors: &mut SelectorCache,
) -> ActivePolicy {
    let interfaces = local_interfaces(&input.inventory, node_interfaces);
    let resolved = PolicySet::from_shared(input.policies).resolve_cached(
        &input.inventory,
        options,
        |e| interfaces.contains_key(&e.key),
        selectors,
    );
    ActivePolicy::with_interfaces(resolved, input.inventory, interfaces)
}

pub(super) async fn reload_loop<D: Datapath>(
    mut inputs: Inputs,
    options: ResolveOptions,
    mut redirects: RedirectConfig,
    node: Arc<Node<D>>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let mut last_error: Option<Vec<String>> = None;
    let mut selectors = SelectorCache::default();
    loop {
        let input = match inputs.next().await {
            Ok(input) => input,
            Err(errors) => {
                metrics.reload_errors.fetch_add(1, Ordering::Relaxed);
                let mut why = errors.clone();
                why.push("rejected: the last good policy set stays in force".into());
                metrics.record_reload(false, why);
                if last_error.as_ref() != Some(&errors) {
                    for e in &errors {
                        tracing::error!("{e}");
                    }
                    tracing::error!("reload rejected: the last good policy set stays in force");
                }
                last_error = Some(errors);
                continue;
            }
        };
        last_error = None;
        let in_force: Vec<PolicyInForce> = input
            .policies
            .iter()
            .map(|p| PolicyInForce::of(p))
            .collect();
        let started = std::time::Instant::now();
        let new = compile(
            input,
            options,
            |name| node.interface_index(name),
            &mut selectors,
        );
        let compiled = started.elapsed();
        let (policies, local) = (new.resolved().endpoints.len(), new.interfaces.len());
        let http = new.http_redirects.clone();
        let applied = match node.reload(new) {
            Ok(report) => {
                tracing::info!(
                    changes = report.changes,
                    endpoints_with_policy = policies,
                    local_endpoints = local,
                    compile_ms = compiled.as_millis() as u64,
                    apply_ms = (started.elapsed() - compiled).as_millis() as u64,
                    "policy change"
                );
                metrics.board.set_policies(in_force);
                true
            }
            Err(e) => {
                // The new policy is in force in the node; its maps are
                // retried every second (GC tick) until they are written.
                let e = anyhow::Error::new(e);
                tracing::error!(
                    "applying the new policy failed: {e:#}; retried every second until applied"
                );
                metrics.reload_errors.fetch_add(1, Ordering::Relaxed);
                // In force all the same: only its maps are behind.
                metrics.board.set_policies(in_force);
                metrics.record_reload(
                    false,
                    vec![format!(
                        "writing the new policy failed: {e:#} (in force; its maps are retried every second)"
                    )],
                );
                false
            }
        };
        if http.ingress != redirects.ingress_http || http.ports != redirects.http_ports {
            redirects.ingress_http = http.ingress;
            redirects.http_ports = http.ports;
            if let Err(e) = node.set_redirects(&redirects) {
                // The datapath drops what does not come through the proxy,
                // so this fails closed; the node retries it every second.
                tracing::error!(
                    "updating the HTTP ingress redirect failed: {:#}",
                    anyhow::Error::new(e)
                );
                metrics.reload_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if applied {
            metrics.reloads.fetch_add(1, Ordering::Relaxed);
            metrics.record_reload(true, Vec::new());
        }
    }
}
