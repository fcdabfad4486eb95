//! The node agent: policies and endpoints from files (local mode) or from
//! the API server (Kubernetes mode), the node's state ([`Node`]: policy in
//! force, FQDN cache, datapath), the DNS and HTTP proxies as handles on it,
//! live reload, GC, persistence, metrics and flow events for `tollgate
//! observe`.
//!
//! Built, then run: [`build`] takes the configuration, a [`Datapath`] (the
//! kernel's, or the in-memory fake), the DNS upstream and the sockets
//! ([`Binds`]) the caller bound; [`Agent::run`] runs until its shutdown
//! future completes, then drains both proxies, saves the cache and stops.
//! So a test can run the whole agent in-process, unprivileged, on
//! `FakeDatapath` with no sockets, and drive the DNS proxy's handler.
//!
//! ## Layout
//! - [`config`]: [`AgentConfig`], [`Source`].
//! - `inputs`: files or the API server, as one policy list + inventory.
//! - `reload`: new input -> compiled [`crate::node::ActivePolicy`] -> the node.
//! - `restore`: the FQDN cache saved under the state dir and restored.
//! - `gc`: expiry and periodic saves.
//! - `flows`: datapath, DNS and HTTP events -> described flow lines.
//! - `metrics`: `/metrics` and `/healthz`.
//! - `status`: the node's status on `status.sock` (`tollgate status`).

pub mod config;
mod flows;
mod gc;
mod inputs;
mod metrics;
mod reload;
pub mod restore;
mod status;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use dns_proxy::listener::{ListenConfig, Listeners};
use dns_proxy::{NetUpstream, Proxy, ProxyConfig, Upstream};
use egress_bpf::redirect::RedirectConfig;
use egress_bpf::{Datapath, KernelDatapath, Monitor};
use fqdn_cache::PolicyView;
use http_proxy::HttpProxy;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use config::{default_state_dir, AgentConfig, Limits, Source};

use crate::budget::NameBudget;
use crate::l7::L7Policy;
use crate::node::{DnsHandle, Node};
use inputs::Inputs;
use metrics::AgentMetrics;

/// The DNS proxy: policy and learning both through the node.
pub type DnsProxy<D, U> = Proxy<DnsHandle<D>, DnsHandle<D>, U>;
/// The L7 HTTP proxy, deciding through the node.
pub type L7Proxy<D> = HttpProxy<L7Policy<D>>;

/// The sockets the agent serves on, bound by the caller (so binding
/// errors surface before anything runs, and tests can leave any out).
#[derive(Default)]
pub struct Binds {
    /// The DNS proxy's transparent UDP + TCP sockets.
    pub dns: Option<Listeners>,
    /// The HTTP proxy's transparent listeners.
    pub http: Option<http_proxy::Listeners>,
    /// `/metrics` and `/healthz`.
    pub metrics: Option<tokio::net::TcpListener>,
    /// The events socket `tollgate observe` reads.
    pub events: Option<tokio::net::UnixListener>,
    /// The status socket `tollgate status` reads.
    pub status: Option<tokio::net::UnixListener>,
    /// Hubble's Observer API (`hubble observe --server unix://...`).
    pub hubble: Option<tokio::net::UnixListener>,
}

impl Binds {
    /// Everything, as the configuration says: what the binary uses. Needs
    /// CAP_NET_ADMIN (transparent sockets) and a tokio runtime.
    pub async fn bind(config: &AgentConfig) -> anyhow::Result<Self> {
        restore::private_state_dir(&config.state_dir)
            .with_context(|| format!("creating the state dir {}", config.state_dir.display()))?;
        Ok(Self {
            dns: Some(
                Listeners::bind(ListenConfig {
                    port: config.dns_port,
                    ipv6: true,
                    workers: config.dns_workers,
                })
                .with_context(|| format!("DNS proxy listeners on port {}", config.dns_port))?,
            ),
            http: Some(
                http_proxy::server::bind(config.http_port, true, config.http_workers)
                    .with_context(|| {
                        format!("HTTP proxy listeners on port {}", config.http_port)
                    })?,
            ),
            metrics: Some(
                tokio::net::TcpListener::bind(config.metrics_addr)
                    .await
                    .with_context(|| {
                        format!("binding the metrics address {}", config.metrics_addr)
                    })?,
            ),
            events: Some(crate::events::bind_socket(&events_socket(config))?),
            status: Some(status::bind(&status_socket(config))?),
            hubble: Some(crate::hubble_api::bind(
                &config.state_dir.join(crate::hubble_api::SOCKET),
            )?),
        })
    }
}

/// Where `tollgate observe` finds the events.
pub fn events_socket(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("events.sock")
}

/// The node's name in flows: Kubernetes mode's, else the host name.
pub fn node_name(config: &AgentConfig) -> String {
    match &config.source {
        Source::Kube { node, .. } => node.clone(),
        Source::Files { .. } => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Where `tollgate status` finds the node's status.
pub fn status_socket(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(crate::status::SOCKET)
}

/// A built agent, ready to run.
pub struct Agent<D: Datapath, U: Upstream> {
    config: AgentConfig,
    node: Arc<Node<D>>,
    dns: Arc<DnsProxy<D, U>>,
    http: Arc<L7Proxy<D>>,
    inputs: Inputs,
    binds: Binds,
    redirects: RedirectConfig,
    metrics: Arc<AgentMetrics>,
}

/// Runs the agent as the binary does: the kernel datapath pinned under the
/// configured directory, real upstream resolvers, every socket bound.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let datapath = KernelDatapath::open(&config.pin_dir).context("loading the eBPF datapath")?;
    let binds = Binds::bind(&config).await?;
    build(config, datapath, NetUpstream::default(), binds)
        .await?
        .run(shutdown)
        .await
}

/// Reads the inputs (waiting for the first list in Kubernetes mode), takes
/// over `datapath` with the policy and the restored cache, installs the
/// proxy redirects and builds both proxies. Fails on invalid inputs: the
/// agent never starts without a good policy set.
pub async fn build<D: Datapath, U: Upstream>(
    config: AgentConfig,
    datapath: D,
    upstream: U,
    binds: Binds,
) -> anyhow::Result<Agent<D, U>> {
    restore::private_state_dir(&config.state_dir)
        .with_context(|| format!("creating the state dir {}", config.state_dir.display()))?;
    let mut inputs = Inputs::open(&config).await?;
    let input = match inputs.current() {
        Ok(input) => input,
        Err(errors) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            bail!(
                "{} error(s) in the policies or endpoints; not starting",
                errors.len()
            );
        }
    };
    let interfaces = datapath.monitor().context("opening the datapath")?;
    let in_force: Vec<crate::status::PolicyInForce> = input
        .policies
        .iter()
        .map(crate::status::PolicyInForce::of)
        .collect();
    let policy = reload::compile(input, config.resolve, |name| {
        interfaces.interface_index(name)
    });
    tracing::info!(
        endpoints_with_policy = policy.resolved().endpoints.len(),
        local_endpoints = policy.interfaces.len(),
        "policies loaded"
    );
    let cache = restore::restore(
        &config.state_dir,
        config.cache,
        PolicyView::from_resolved(policy.resolved()),
    );
    let redirects = RedirectConfig {
        dns_port: config.dns_port,
        http_port: Some(config.http_port),
        ingress_http: policy.http_redirects.ingress.clone(),
        http_ports: policy.http_redirects.ports.clone(),
        ..RedirectConfig::default()
    };
    let (node, report) = Node::start(datapath, policy, cache).context("writing the datapath")?;
    let node = node.with_new_name_budget(NameBudget::new(
        config.limits.new_names_per_second,
        config.limits.new_names_burst,
    ));
    if report.adopted > 0 {
        tracing::info!(
            entries = report.adopted,
            "kept pinned FQDN entries the saved cache missed, until they expire"
        );
    }
    tracing::info!(changes = report.changes, "reconciled the datapath");
    let node = Arc::new(node);
    node.set_redirects(&redirects)
        .context("installing the proxy redirects")?;

    let dns = Proxy::new(
        DnsHandle(node.clone()),
        DnsHandle(node.clone()),
        upstream,
        ProxyConfig {
            deny_response: config.deny_response,
            cache_entries: config.dns_cache_entries,
            max_in_flight_per_pod: config.limits.dns_in_flight_per_pod,
            max_in_flight: config.limits.dns_in_flight,
            max_queries_per_second_per_pod: config.limits.dns_queries_per_second_per_pod,
        },
    );
    let http = HttpProxy::new(
        L7Policy(node.clone()),
        http_proxy::ProxyConfig {
            upstream_mark: egress_bpf::abi::MARK_FROM_PROXY,
            preserve_source: true,
            ..http_proxy::ProxyConfig::default()
        },
    );
    let metrics = Arc::new(AgentMetrics {
        kube: inputs.kube_stats(),
        started: metrics::unix_now().into(),
        ..AgentMetrics::default()
    });
    // The policy set the agent starts with is its first load.
    metrics.record_reload(true, Vec::new());
    metrics.board.set_policies(in_force);
    Ok(Agent {
        config,
        node,
        dns,
        http,
        inputs,
        binds,
        redirects,
        metrics,
    })
}

impl<D: Datapath, U: Upstream> Agent<D, U> {
    /// The node's state.
    pub fn node(&self) -> &Arc<Node<D>> {
        &self.node
    }

    /// The DNS proxy (its handler answers queries without a socket).
    pub fn dns(&self) -> &Arc<DnsProxy<D, U>> {
        &self.dns
    }

    /// The HTTP proxy.
    pub fn http(&self) -> &Arc<L7Proxy<D>> {
        &self.http
    }

    /// Runs until `shutdown` completes or a task fails; then the proxies
    /// drain (stop accepting, finish what is in hand, bounded), the cache is
    /// saved, and enforcement stays pinned (or is removed with
    /// `uninstall_on_exit`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Agent {
            config,
            node,
            dns,
            http,
            inputs,
            binds,
            redirects,
            metrics,
        } = self;
        let stopping = CancellationToken::new();
        // The proxies stop on `stopping` and drain; they are awaited, never
        // aborted.
        let mut proxies = tokio::task::JoinSet::new();
        if let Some(listeners) = binds.dns {
            let (dns, stop) = (dns.clone(), stopping.clone());
            proxies.spawn(async move {
                dns_proxy::listener::serve_on(dns, listeners, stop.cancelled_owned())
                    .await
                    .context("DNS proxy listeners")
            });
        }
        if let Some(listeners) = binds.http {
            let (http, stop) = (http.clone(), stopping.clone());
            proxies.spawn(async move {
                http_proxy::serve_on(http, listeners, stop.cancelled_owned())
                    .await
                    .context("HTTP proxy listeners")
            });
        }
        // Background work holds nothing a drain needs; it is aborted.
        let mut background = tokio::task::JoinSet::new();
        background.spawn(reload::reload_loop(
            inputs,
            config.resolve,
            redirects,
            node.clone(),
            metrics.clone(),
        ));
        background.spawn(gc::gc_loop(
            node.clone(),
            config.state_dir.clone(),
            config.gc_interval,
            metrics.clone(),
        ));
        let (flows_tx, _) = broadcast::channel::<Arc<crate::events::FlowLine>>(8192);
        background.spawn(flows::event_pump(
            node.clone(),
            dns.clone(),
            http.clone(),
            flows_tx.clone(),
            metrics.clone(),
        ));
        if let Some(listener) = binds.hubble {
            let observer =
                crate::hubble_api::HubbleObserver::new(node_name(&config), flows_tx.clone());
            background.spawn(crate::hubble_api::serve(listener, observer));
        }
        if let Some(listener) = binds.events {
            background.spawn(crate::events::serve_socket(listener, flows_tx));
        }
        if let Some(listener) = binds.status {
            background.spawn(status::serve(
                listener,
                config.clone(),
                node.clone(),
                metrics.clone(),
            ));
        }
        if let Some(listener) = binds.metrics {
            background.spawn(metrics::serve(
                listener,
                Arc::new(metrics::Sources {
                    dns: dns.clone(),
                    http: http.clone(),
                    node: node.clone(),
                    agent: metrics.clone(),
                }),
            ));
        }
        tracing::info!(dns_port = config.dns_port, http_port = config.http_port, metrics = %config.metrics_addr, "agent running");

        let stopped = |r: Result<anyhow::Result<()>, tokio::task::JoinError>| match r {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow::anyhow!("an agent task stopped")),
            Err(e) => Err(anyhow::anyhow!("an agent task panicked: {e}")),
        };
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            Some(r) = background.join_next() => stopped(r),
            Some(r) = proxies.join_next() => stopped(r),
        };
        stopping.cancel();
        while let Some(r) = proxies.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!("{e:#}");
            }
        }
        background.abort_all();
        while background.join_next().await.is_some() {}
        let _ = restore::save(&config.state_dir, &node);
        if config.uninstall_on_exit {
            node.uninstall().context("uninstalling the datapath")?;
            tracing::info!("uninstalled: traffic is no longer enforced");
        } else {
            tracing::info!(
                "stopped; enforcement stays pinned under {}",
                config.pin_dir.display()
            );
        }
        result
    }
}
