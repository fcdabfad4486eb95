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
//! - `handover`: upgrades without a gap: the running agent's sockets taken
//!   over at start, handed to a successor at stop.

pub mod config;
mod flows;
mod gc;
pub mod handover;
mod inputs;
mod metrics;
mod reload;
pub mod restore;
mod status;

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
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

pub use config::{default_state_dir, AgentConfig, Limits, OwnPod, Source};

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
    /// Where a successor asks for the listening sockets.
    pub handover: Option<::handover::Offer>,
}

impl Binds {
    /// Everything, as the configuration says: what the binary uses. Each
    /// listening socket is taken from `inherited` (a previous agent's, see
    /// [`handover`]) if it has one of the same address, else bound. Needs
    /// CAP_NET_ADMIN (transparent sockets) and a tokio runtime.
    pub async fn bind(
        config: &AgentConfig,
        inherited: &mut ::handover::Inherited,
    ) -> anyhow::Result<Self> {
        restore::private_state_dir(&config.state_dir)
            .with_context(|| format!("creating the state dir {}", config.state_dir.display()))?;
        let metrics = match inherited.take(socket2::Type::STREAM, config.metrics_addr) {
            Some(listener) => tokio::net::TcpListener::from_std(listener.into())?,
            None => tokio::net::TcpListener::bind(config.metrics_addr)
                .await
                .with_context(|| format!("binding the metrics address {}", config.metrics_addr))?,
        };
        Ok(Self {
            dns: Some(
                Listeners::bind_inheriting(
                    ListenConfig {
                        port: config.dns_port,
                        ipv6: true,
                        workers: config.dns_workers,
                    },
                    inherited,
                )
                .with_context(|| format!("DNS proxy listeners on port {}", config.dns_port))?,
            ),
            http: Some(
                http_proxy::server::bind_inheriting(
                    config.http_port,
                    true,
                    config.http_workers,
                    inherited,
                )
                .with_context(|| format!("HTTP proxy listeners on port {}", config.http_port))?,
            ),
            metrics: Some(metrics),
            events: Some(crate::events::bind_socket(&events_socket(config))?),
            status: Some(status::bind(&status_socket(config))?),
            hubble: Some(crate::hubble_api::bind(
                &config.state_dir.join(crate::hubble_api::SOCKET),
            )?),
            handover: Some({
                let path = handover::socket(config);
                ::handover::Offer::bind(&path)
                    .with_context(|| format!("binding the handover socket {}", path.display()))?
            }),
        })
    }

    /// Duplicates of the listening sockets a successor takes over: the
    /// proxies' and the metrics listener (the Unix sockets are bound anew
    /// by path).
    fn listening_sockets(&self) -> std::io::Result<Vec<OwnedFd>> {
        let mut fds = Vec::new();
        if let Some(dns) = &self.dns {
            fds.extend(dns.sockets());
        }
        if let Some(http) = &self.http {
            fds.extend(http.sockets());
        }
        if let Some(metrics) = &self.metrics {
            fds.push(metrics.as_fd());
        }
        fds.into_iter().map(|fd| fd.try_clone_to_owned()).collect()
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
/// configured directory, real upstream resolvers, every socket bound or,
/// if an agent runs on the node, taken over from it once this one has
/// its policy (so the gap is the old agent's last queries and a cache
/// save, not a start-up).
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let datapath = KernelDatapath::open(&config.pin_dir).context("loading the eBPF datapath")?;
    if !datapath.replaced_pins().is_empty() {
        tracing::warn!(
            maps = ?datapath.replaced_pins(),
            "maps pinned by a build with another shape of them were replaced, and what they \
             held is lost (see docs/upgrades.md)"
        );
    }
    let prepared = prepare(config, datapath).await?;
    let mut inherited = handover::take_over(&prepared.config).await;
    let binds = Binds::bind(&prepared.config, &mut inherited).await?;
    drop(inherited);
    prepared
        .finish(NetUpstream::default(), binds)?
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
    prepare(config, datapath).await?.finish(upstream, binds)
}

/// An agent with its inputs read and its policy compiled, that has not
/// touched the datapath, the saved cache or a socket yet.
pub struct Prepared<D: Datapath> {
    config: AgentConfig,
    datapath: D,
    inputs: Inputs,
    policy: crate::node::ActivePolicy,
    in_force: Vec<crate::status::PolicyInForce>,
}

/// The first half of [`build`]: what may take long (the API server's
/// first lists) and changes nothing.
pub async fn prepare<D: Datapath>(config: AgentConfig, datapath: D) -> anyhow::Result<Prepared<D>> {
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
        .map(|p| crate::status::PolicyInForce::of(p))
        .collect();
    let policy = reload::compile(
        input,
        config.resolve,
        |name| interfaces.interface_index(name),
        &mut policy::SelectorCache::default(),
    );
    tracing::info!(
        endpoints_with_policy = policy.resolved().endpoints.len(),
        local_endpoints = policy.interfaces.len(),
        "policies loaded"
    );
    Ok(Prepared {
        config,
        datapath,
        inputs,
        policy,
        in_force,
    })
}

impl<D: Datapath> Prepared<D> {
    /// The second half of [`build`]: restores the saved cache, takes over
    /// the datapath, installs the redirects and builds the proxies.
    pub fn finish<U: Upstream>(self, upstream: U, binds: Binds) -> anyhow::Result<Agent<D, U>> {
        let Prepared {
            config,
            datapath,
            inputs,
            policy,
            in_force,
        } = self;
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
            dns_datagrams_per_second: config.limits.dns_queries_per_second_per_pod,
            ..RedirectConfig::default()
        };
        let (node, report) =
            Node::start(datapath, policy, cache).context("writing the datapath")?;
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

    /// Runs until `shutdown` completes, a task fails or a successor asks
    /// for the sockets; then the proxies drain (stop accepting, finish what
    /// is in hand, bounded), the cache is saved, and enforcement stays
    /// pinned (or is removed with `uninstall_on_exit`).
    ///
    /// A successor (a new agent on this node, see [`handover`]) gets the
    /// listening sockets once the DNS queries in hand are answered and the
    /// cache is saved; this agent then waits for `shutdown`. On `shutdown`
    /// while its DaemonSet replaces its pod, the pod is released and a
    /// successor waited for, up to `handover_wait`, while this agent serves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Agent {
            config,
            node,
            dns,
            http,
            inputs,
            mut binds,
            redirects,
            metrics,
        } = self;
        let kept = binds
            .listening_sockets()
            .context("keeping the listening sockets for a successor")?;
        let mut offer = binds.handover.take();
        if kept.len() > ::handover::MAX_SOCKETS {
            tracing::warn!(
                sockets = kept.len(),
                "more listening sockets than one handover carries (fewer workers?): a successor will bind its own"
            );
            offer = None;
        }
        let stopping = CancellationToken::new();
        // The proxies stop on `stopping` and drain; they are awaited, never
        // aborted. DNS apart: its drain comes before a handover.
        let mut dns_proxy = tokio::task::JoinSet::new();
        let mut http_proxy = tokio::task::JoinSet::new();
        if let Some(listeners) = binds.dns {
            let (dns, stop) = (dns.clone(), stopping.clone());
            dns_proxy.spawn(async move {
                dns_proxy::listener::serve_on(dns, listeners, stop.cancelled_owned())
                    .await
                    .context("DNS proxy listeners")
            });
        }
        if let Some(listeners) = binds.http {
            let (http, stop) = (http.clone(), stopping.clone());
            http_proxy.spawn(async move {
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
                    pod: config
                        .own_pod
                        .as_ref()
                        .map(|p| format!("{}/{}", p.namespace, p.name)),
                }),
            ));
        }
        tracing::info!(dns_port = config.dns_port, http_port = config.http_port, metrics = %config.metrics_addr, "agent running");

        let stopped = |r: Result<anyhow::Result<()>, tokio::task::JoinError>| match r {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow::anyhow!("an agent task stopped"),
            Err(e) => anyhow::anyhow!("an agent task panicked: {e}"),
        };
        let successor = || async {
            match &offer {
                Some(offer) => offer.request().await,
                None => std::future::pending().await,
            }
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stop = tokio::select! {
            _ = &mut shutdown => Stop::Shutdown,
            r = successor() => Stop::from_request(r),
            Some(r) = background.join_next() => Stop::Failed(stopped(r)),
            Some(r) = dns_proxy.join_next() => Stop::Failed(stopped(r)),
            Some(r) = http_proxy.join_next() => Stop::Failed(stopped(r)),
        };
        let shut_down = matches!(stop, Stop::Shutdown);
        if shut_down && offer.is_some() && handover::release_own_pod(&config).await {
            stop = tokio::select! {
                r = successor() => Stop::from_request(r),
                _ = tokio::time::sleep(config.handover_wait) => {
                    tracing::info!(waited = ?config.handover_wait, "no successor took over; stopping");
                    Stop::Shutdown
                }
            };
        }
        stopping.cancel();
        // The DNS queries in hand are answered (and their names learned)
        // before the cache is saved for whoever starts next.
        drain(&mut dns_proxy).await;
        background.abort_all();
        while background.join_next().await.is_some() {}
        let _ = restore::save(&config.state_dir, &node);
        let (result, handed_over) = match stop {
            Stop::Successor(request) => match request.give(&::handover::borrowed(&kept)) {
                Ok(()) => {
                    tracing::info!(
                        sockets = kept.len(),
                        "handed the listening sockets over to the successor"
                    );
                    (Ok(()), true)
                }
                Err(e) => (
                    Err(anyhow::Error::from(e).context("handing the sockets over")),
                    false,
                ),
            },
            Stop::Shutdown => (Ok(()), false),
            Stop::Failed(e) => (Err(e), false),
        };
        drop(kept);
        drain(&mut http_proxy).await;
        if handed_over {
            if !shut_down {
                tracing::info!("serving nothing now; exiting on SIGTERM");
                shutdown.await;
            }
            tracing::info!("stopped; the successor enforces");
            return result;
        }
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

/// Why the agent stops.
enum Stop {
    Shutdown,
    /// A successor asked for the sockets.
    Successor(::handover::Request),
    Failed(anyhow::Error),
}

impl Stop {
    fn from_request(request: std::io::Result<::handover::Request>) -> Self {
        match request {
            Ok(request) => Stop::Successor(request),
            Err(e) => Stop::Failed(anyhow::Error::from(e).context("the handover socket")),
        }
    }
}

/// Waits for a proxy's drain; its errors are only reported now.
async fn drain(proxy: &mut tokio::task::JoinSet<anyhow::Result<()>>) {
    while let Some(r) = proxy.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!("{e:#}");
        }
    }
}
