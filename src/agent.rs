//! The node agent: policies and endpoints from files (local mode) or from
//! the API server (Kubernetes mode), everything wired: datapath (pinned),
//! FQDN cache (persisted), DNS proxy (TPROXY), live reload, GC, metrics, and
//! flow events for `tollgate observe`. Both modes feed one model: a policy
//! list and an endpoint inventory, applied by the same reload path.
//!
//! `run(config, shutdown)` is the whole agent; `main` only parses flags and
//! passes a shutdown future, so tests can run it too.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use dns_proxy::listener::{serve, ListenConfig};
use dns_proxy::{DenyResponse, NetUpstream, PolicyDns, Proxy, ProxyConfig, Swappable};
use egress_bpf::desired::{compile, fqdn_entries, Interfaces, RuleTable};
use egress_bpf::redirect::{self, RedirectConfig};
use egress_bpf::{monotonic_now_ns, Datapath, KernelDatapath};
use fqdn_cache::{FqdnCache, PolicyView, Time};
use http_proxy::HttpProxy;
use policy::inventory::InventoryFile;
use policy::{Inventory, PolicySet, ResolveOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use crate::events::{self, FlowLine};
use crate::l7::L7Policy;
use crate::learn::DatapathSink;

/// Everything the agent is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub source: Source,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub dns_port: u16,
    /// The HTTP proxy's transparent port (L7 HTTP rules).
    pub http_port: u16,
    pub metrics_addr: SocketAddr,
    pub cache: fqdn_cache::Config,
    pub deny_response: DenyResponse,
    pub dns_cache_entries: u64,
    pub resolve: ResolveOptions,
    /// How often policy and endpoint files are checked for changes (local
    /// mode), and how often local pods still without a veth are looked
    /// for again (Kubernetes mode).
    pub reload_interval: Duration,
    /// Remove everything pinned on shutdown instead of leaving it enforcing.
    pub uninstall_on_exit: bool,
}

/// Where policies and endpoints come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory of policy files and an endpoints file, reloaded on change.
    Files {
        policies: PathBuf,
        endpoints: PathBuf,
    },
    /// The API server: `kubeconfig`, or the in-cluster service account when
    /// `None`; `node` is this node's name (its pods are the local endpoints).
    Kube {
        kubeconfig: Option<PathBuf>,
        node: String,
    },
}

/// The policy set in force, and everything derived from it.
struct Loaded {
    inventory: Inventory,
    resolved: policy::Resolved,
    interfaces: Interfaces,
    rules: RuleTable,
    desired: egress_bpf::DesiredState,
    /// What nftables hands to the HTTP proxy.
    http_redirects: crate::l7::HttpRedirects,
}

type AgentHttpProxy = HttpProxy<L7Policy>;

pub type AgentProxy = Proxy<Swappable<PolicyDns>, DatapathSink<KernelDatapath>, NetUpstream>;

/// Counters about the agent itself, for /metrics.
#[derive(Default)]
struct AgentMetrics {
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    gc_runs: AtomicU64,
    /// Kubernetes mode: the watches' counters.
    kube: Option<Arc<crate::kube::WatchStats>>,
}

/// The host-side veth of each local endpoint: `interface` in the endpoints
/// file, looked up in this network namespace. Endpoints without one (or
/// whose interface is gone) are remote: they only feed the ipcache.
fn interfaces(inventory: &Inventory) -> Interfaces {
    inventory
        .endpoints()
        .iter()
        .filter_map(|e| {
            let name = e.interface.as_ref()?;
            let index = egress_bpf::kernel::ifindex(name);
            if index.is_none() {
                tracing::warn!(endpoint = %e.key, interface = %name, "interface not found: treated as a remote endpoint");
            }
            Some((e.key.clone(), (index?, name.clone())))
        })
        .collect()
}

/// Policies and endpoints as one consistent input, from either source.
struct Input {
    policies: Vec<policy::Policy>,
    inventory: Inventory,
}

fn build(input: Input, options: ResolveOptions) -> Loaded {
    let resolved = PolicySet::new(input.policies).resolve(&input.inventory, options);
    let interfaces = interfaces(&input.inventory);
    let compiled = compile(&resolved, &input.inventory, &interfaces);
    let http_redirects = crate::l7::http_redirects(&resolved, &input.inventory, &interfaces);
    Loaded {
        http_redirects,
        inventory: input.inventory,
        resolved,
        interfaces,
        rules: compiled.rules,
        desired: compiled.state,
    }
}

fn load_files(policies: &Path, endpoints: &Path) -> Result<Input, Vec<String>> {
    let report = policy::load_paths(&[policies]);
    for w in report.warnings() {
        tracing::warn!("{w}");
    }
    if report.has_errors() {
        return Err(report.errors().map(|d| d.to_string()).collect());
    }
    let inventory = Inventory::load(endpoints).map_err(|e| vec![e.to_string()])?;
    Ok(Input {
        policies: report.policies,
        inventory,
    })
}

/// The source, with what is needed to tell when it changed.
enum Inputs {
    Files {
        policies: PathBuf,
        endpoints: PathBuf,
        interval: Duration,
        last: Vec<(PathBuf, u64, Option<SystemTime>)>,
    },
    Kube {
        watch: Box<crate::kube::ClusterWatch>,
        interval: Duration,
        /// The cluster as last read from the watch caches; a tick (looking
        /// for new pods' veths) reuses it rather than rebuilding it.
        cluster: Box<crate::kube::ClusterSnapshot>,
        /// What was last handed out, to skip no-op reloads.
        last: Option<(Vec<policy::Policy>, InventoryFile)>,
    },
}

impl Inputs {
    async fn open(config: &AgentConfig) -> anyhow::Result<Self> {
        Ok(match &config.source {
            Source::Files {
                policies,
                endpoints,
            } => Inputs::Files {
                policies: policies.clone(),
                endpoints: endpoints.clone(),
                interval: config.reload_interval,
                last: Vec::new(),
            },
            Source::Kube { kubeconfig, node } => {
                let client = crate::kube::client(kubeconfig.as_deref()).await?;
                let watch = crate::kube::ClusterWatch::start(client, node);
                tracing::info!(node = %node, "waiting for the first list of policies, pods, namespaces and nodes");
                let mut waited = 0u64;
                loop {
                    tokio::select! {
                        _ = watch.synced() => break,
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {
                            waited += 10;
                            tracing::warn!("still waiting for the API server after {waited} s");
                        }
                    }
                }
                let mut watch = Box::new(watch);
                Inputs::Kube {
                    cluster: Box::new(watch.snapshot()),
                    watch,
                    interval: config.reload_interval,
                    last: None,
                }
            }
        })
    }

    /// The current input.
    fn current(&mut self) -> Result<Input, Vec<String>> {
        match self {
            Inputs::Files {
                policies,
                endpoints,
                last,
                ..
            } => {
                *last = fingerprint(policies, endpoints);
                load_files(policies, endpoints)
            }
            Inputs::Kube { cluster, last, .. } => {
                let now = with_local_interfaces(cluster);
                *last = Some(now.clone());
                kube_input(now)
            }
        }
    }

    /// Waits until the input differs from the last one handed out.
    async fn next(&mut self) -> Result<Input, Vec<String>> {
        loop {
            match self {
                Inputs::Files {
                    policies,
                    endpoints,
                    interval,
                    last,
                } => {
                    tokio::time::sleep(*interval).await;
                    if fingerprint(policies, endpoints) == *last {
                        continue;
                    }
                }
                Inputs::Kube {
                    watch,
                    interval,
                    cluster,
                    last,
                } => {
                    // A change, or a tick: a pod's veth may have appeared.
                    tokio::select! {
                        _ = watch.changed() => {
                            // Let a burst (a relist, kubectl apply -f dir) settle.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            **cluster = watch.snapshot();
                        }
                        _ = tokio::time::sleep(*interval * 4) => {}
                    }
                    let now = with_local_interfaces(cluster);
                    if last.as_ref() == Some(&now) {
                        continue;
                    }
                    *last = Some(now.clone());
                    return kube_input(now);
                }
            }
            return self.current();
        }
    }
}

fn kube_input(
    (policies, spec): (Vec<policy::Policy>, InventoryFile),
) -> Result<Input, Vec<String>> {
    let inventory = Inventory::from_spec(spec).map_err(|e| vec![e])?;
    Ok(Input {
        policies,
        inventory,
    })
}

/// Policies and endpoints from the cluster; local pods get the veth their
/// IP is routed through (a pod whose route is not there yet is remote
/// until it is).
fn with_local_interfaces(
    cluster: &crate::kube::ClusterSnapshot,
) -> (Vec<policy::Policy>, InventoryFile) {
    let mut inventory = cluster.inventory.clone();
    let routes = crate::routes::read();
    let local: std::collections::HashSet<_> = cluster.local.iter().collect();
    for e in &mut inventory.endpoints {
        let key = policy::EndpointKey {
            namespace: e.namespace.clone(),
            name: e.name.clone(),
        };
        if local.contains(&key) {
            e.interface = crate::routes::interface_for(&routes, &e.ips);
        }
    }
    (cluster.policies.clone(), inventory)
}

/// Fingerprint of the input files (names, sizes, modification times).
fn fingerprint(policies: &Path, endpoints: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = policy::load::policy_files(policies).unwrap_or_default();
    files.push(endpoints.to_path_buf());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = meta.and_then(|m| m.modified().ok());
            (f, len, modified)
        })
        .collect()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cache_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("fqdn-cache.json")
}

fn persist(config: &AgentConfig, cache: &FqdnCache) {
    let bytes = fqdn_cache::persist::encode(cache, Time(monotonic_now_ns()), &boot_id());
    if let Err(e) = fqdn_cache::persist::save_atomic(&cache_path(config), &bytes) {
        tracing::warn!("cannot save the FQDN cache: {e}");
    }
}

/// The FQDN cache from the state dir, or an empty one (a bad file is
/// reported and ignored, never trusted).
fn restore(config: &AgentConfig, view: PolicyView) -> FqdnCache {
    let path = cache_path(config);
    match fqdn_cache::persist::load(&path) {
        Ok(Some(bytes)) => {
            match fqdn_cache::persist::decode(
                &bytes,
                config.cache,
                view.clone(),
                Time(monotonic_now_ns()),
                &boot_id(),
            ) {
                Ok((cache, report)) => {
                    tracing::info!(
                        names = report.names,
                        ips = report.ips,
                        expired = report.expired,
                        other_boot = report.other_boot,
                        "restored the FQDN cache from {}",
                        path.display()
                    );
                    return cache;
                }
                Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("ignoring {}: {e}", path.display()),
    }
    FqdnCache::new(config.cache, view)
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating the state dir {}", config.state_dir.display()))?;
    let mut inputs = Inputs::open(&config).await?;
    let loaded = match inputs.current() {
        Ok(input) => build(input, config.resolve),
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
    tracing::info!(
        policies = loaded.resolved.endpoints.len(),
        local_endpoints = loaded.interfaces.len(),
        "policies loaded"
    );

    // Datapath: adopt what is pinned, then reconcile with policy + restored cache.
    let mut datapath =
        KernelDatapath::open(&config.pin_dir).context("loading the eBPF datapath")?;
    let cache = restore(&config, PolicyView::from_resolved(&loaded.resolved));
    let current = datapath.current()?;
    let mut desired = loaded.desired.clone();
    desired.fqdn = fqdn_entries(&cache.full_state(), |k| {
        loaded.interfaces.get(k).map(|(i, _)| *i)
    });
    // Entries the pinned map holds but the saved cache does not (a kill -9
    // before the last save) stay until they expire, for local endpoints.
    let now = Time(monotonic_now_ns());
    let local: std::collections::BTreeSet<u32> =
        loaded.interfaces.values().map(|(i, _)| *i).collect();
    let adopted: BTreeMap<_, _> = current
        .fqdn
        .iter()
        .filter(|(k, g)| {
            !desired.fqdn.contains_key(k)
                && local.contains(&k.0)
                && g.iter().any(|g| g.expires_at > now)
        })
        .map(|(k, g)| (*k, g.clone()))
        .collect();
    if !adopted.is_empty() {
        tracing::info!(
            entries = adopted.len(),
            "kept pinned FQDN entries the saved cache missed, until they expire"
        );
    }
    desired
        .fqdn
        .extend(adopted.iter().map(|(k, g)| (*k, g.clone())));
    let diff = current.diff(&desired);
    tracing::info!(
        changes = diff.len(),
        pinned_fqdn = current.fqdn.len(),
        wanted_fqdn = desired.fqdn.len(),
        "reconciling the pinned datapath"
    );
    datapath.apply(&diff).context("writing the datapath")?;
    let redirects = RedirectConfig {
        dns_port: config.dns_port,
        http_port: Some(config.http_port),
        ingress_http: loaded.http_redirects.ingress.clone(),
        http_ports: loaded.http_redirects.ports.clone(),
        ..RedirectConfig::default()
    };
    redirect::install(&redirects).context("installing the proxy redirects")?;

    let sink = DatapathSink::new(cache, datapath, loaded.interfaces.clone());
    sink.state.lock().expect("fqdn state").adopted = adopted;
    let proxy: Arc<AgentProxy> = Proxy::new(
        Swappable::new(Arc::new(PolicyDns {
            resolved: loaded.resolved.clone(),
            inventory: loaded.inventory.clone(),
        })),
        sink,
        NetUpstream::default(),
        ProxyConfig {
            deny_response: config.deny_response,
            cache_entries: config.dns_cache_entries,
        },
    );
    let http: Arc<AgentHttpProxy> = HttpProxy::new(
        L7Policy { dns: proxy.clone() },
        http_proxy::ProxyConfig {
            upstream_mark: egress_bpf::abi::MARK_FROM_PROXY,
            preserve_source: true,
            ..http_proxy::ProxyConfig::default()
        },
    );
    let loaded = Arc::new(Mutex::new(loaded));
    let metrics = Arc::new(AgentMetrics {
        kube: match &inputs {
            Inputs::Kube { watch, .. } => Some(watch.stats.clone()),
            Inputs::Files { .. } => None,
        },
        ..AgentMetrics::default()
    });
    let (flows_tx, _) = broadcast::channel::<String>(8192);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let proxy = proxy.clone();
        let port = config.dns_port;
        async move {
            serve(
                proxy,
                ListenConfig { port, ipv6: true },
                std::future::pending(),
            )
            .await
            .context("DNS proxy listeners")
        }
    });
    tasks.spawn({
        let http = http.clone();
        let port = config.http_port;
        async move {
            http_proxy::serve(http, port, true, std::future::pending())
                .await
                .context("HTTP proxy listeners")
        }
    });
    tasks.spawn(reload_loop(
        inputs,
        config.resolve,
        redirects,
        proxy.clone(),
        loaded.clone(),
        metrics.clone(),
    ));
    tasks.spawn(gc_loop(config.clone(), proxy.clone(), metrics.clone()));
    tasks.spawn(event_pump(
        proxy.clone(),
        http.clone(),
        loaded.clone(),
        flows_tx.clone(),
    ));
    tasks.spawn(events::serve_socket(
        config.state_dir.join("events.sock"),
        flows_tx.clone(),
    ));
    tasks.spawn(metrics_server(
        config.metrics_addr,
        proxy.clone(),
        http.clone(),
        metrics.clone(),
    ));
    tracing::info!(dns_port = config.dns_port, http_port = config.http_port, metrics = %config.metrics_addr, "agent running");

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow::anyhow!("an agent task stopped")),
            Err(e) => Err(anyhow::anyhow!("an agent task panicked: {e}")),
        },
    };
    tasks.abort_all();
    {
        let s = proxy.sink.state.lock().expect("fqdn state");
        persist(&config, &s.cache);
    }
    if config.uninstall_on_exit {
        drop(proxy);
        egress_bpf::kernel::uninstall(&config.pin_dir)?;
        redirect::uninstall(&RedirectConfig::default())?;
        tracing::info!("uninstalled: traffic is no longer enforced");
    } else {
        tracing::info!(
            "stopped; enforcement stays pinned under {}",
            config.pin_dir.display()
        );
    }
    result
}

async fn reload_loop(
    mut inputs: Inputs,
    options: ResolveOptions,
    mut redirects: RedirectConfig,
    proxy: Arc<AgentProxy>,
    loaded: Arc<Mutex<Loaded>>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let mut last_error: Option<Vec<String>> = None;
    loop {
        match inputs.next().await.map(|input| build(input, options)) {
            Err(errors) => {
                metrics.reload_errors.fetch_add(1, Ordering::Relaxed);
                if last_error.as_ref() != Some(&errors) {
                    for e in &errors {
                        tracing::error!("{e}");
                    }
                    tracing::error!("reload rejected: the last good policy set stays in force");
                }
                last_error = Some(errors);
            }
            Ok(new) => {
                last_error = None;
                let mut s = proxy.sink.state.lock().expect("fqdn state");
                s.interfaces = new.interfaces.clone();
                // The FQDN part of the desired state is recomputed whole below.
                let _ = s.cache.set_view(PolicyView::from_resolved(&new.resolved));
                let mut desired = new.desired.clone();
                desired.fqdn = s.desired_fqdn();
                let applied =
                    s.datapath
                        .current()
                        .map_err(anyhow::Error::from)
                        .and_then(|current| {
                            let diff = current.diff(&desired);
                            tracing::info!(changes = diff.len(), "policy change");
                            s.datapath.apply(&diff).map_err(anyhow::Error::from)
                        });
                drop(s);
                if let Err(e) = applied {
                    tracing::error!(
                        "applying the new policy failed: {e:#}; will retry on the next change"
                    );
                    metrics.reload_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if new.http_redirects.ingress != redirects.ingress_http
                    || new.http_redirects.ports != redirects.http_ports
                {
                    redirects.ingress_http = new.http_redirects.ingress.clone();
                    redirects.http_ports = new.http_redirects.ports.clone();
                    if let Err(e) = redirect::install(&redirects) {
                        // The datapath drops what does not come through the
                        // proxy, so this fails closed.
                        tracing::error!("updating the HTTP ingress redirect failed: {e}");
                        metrics.reload_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                proxy.policy.replace(Arc::new(PolicyDns {
                    resolved: new.resolved.clone(),
                    inventory: new.inventory.clone(),
                }));
                *loaded.lock().expect("loaded") = new;
                metrics.reloads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Expires FQDN entries (keeping zombies with live connections) every
/// second and saves the cache every ten.
async fn gc_loop(
    config: AgentConfig,
    proxy: Arc<AgentProxy>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let mut tick = 0u64;
    let mut last_saved_answers = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let mut s = proxy.sink.state.lock().expect("fqdn state");
        let live = s.datapath.live_connections().unwrap_or_default();
        let by_key: BTreeMap<policy::EndpointKey, u32> = s
            .interfaces
            .iter()
            .map(|(k, (i, _))| (k.clone(), *i))
            .collect();
        let oracle =
            |k: &policy::EndpointKey, ip| by_key.get(k).is_some_and(|i| live.contains(&(*i, ip)));
        let now = Time(monotonic_now_ns());
        let diff = s.cache.expire(now, &oracle);
        let mut writes = egress_bpf::StateDiff::from_fqdn(&diff, |k| by_key.get(k).copied());
        writes.fqdn.del.extend(s.prune_adopted(now));
        let changed = !diff.is_empty();
        if !writes.is_empty() {
            if let Err(e) = s.datapath.apply(&writes) {
                tracing::warn!("GC write failed: {e}");
                s.dirty = true;
            }
        }
        // Saved every second while it changes (a kill -9 loses at most that;
        // the pinned map covers the rest), and every minute regardless.
        let learned = s.cache.counters().answers;
        if changed || learned != last_saved_answers || tick.is_multiple_of(60) {
            persist(&config, &s.cache);
            last_saved_answers = learned;
        }
        metrics.gc_runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// Datapath flow events and DNS events, enriched, as JSON lines.
async fn event_pump(
    proxy: Arc<AgentProxy>,
    http: Arc<AgentHttpProxy>,
    loaded: Arc<Mutex<Loaded>>,
    tx: broadcast::Sender<String>,
) -> anyhow::Result<()> {
    let mut dns = proxy.subscribe();
    let mut requests = http.subscribe();
    loop {
        // DNS events as they come; datapath events every 100 ms.
        let deadline = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                e = dns.recv() => match e {
                    Ok(e) => { let _ = tx.send(serde_json::to_string(&FlowLine::from_dns(&e)).unwrap_or_default()); }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
                e = requests.recv() => match e {
                    Ok(e) => { let _ = tx.send(serde_json::to_string(&FlowLine::from_http(&e)).unwrap_or_default()); }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
            }
        }
        // Each flow's pod (from its veth) and the names its peer address
        // was learned for, found once per flow.
        let (flows, found) = {
            let mut s = proxy.sink.state.lock().expect("fqdn state");
            let flows = s.datapath.poll_events(4096).unwrap_or_default();
            let by_ifindex: std::collections::HashMap<u32, &policy::EndpointKey> =
                s.interfaces.iter().map(|(k, (i, _))| (*i, k)).collect();
            let found: Vec<(Option<policy::EndpointKey>, Vec<String>)> = flows
                .iter()
                .map(|f| {
                    let Some(key) = by_ifindex.get(&f.ifindex) else {
                        return (None, Vec::new());
                    };
                    let remote = if f.direction == policy::Direction::Egress {
                        f.dst
                    } else {
                        f.src
                    };
                    let names = s
                        .cache
                        .names_for_ip(key, remote)
                        .iter()
                        .map(|n| n.to_string())
                        .collect();
                    (Some((*key).clone()), names)
                })
                .collect();
            (flows, found)
        };
        if flows.is_empty() {
            continue;
        }
        let l = loaded.lock().expect("loaded");
        for (f, (pod, names)) in flows.iter().zip(found) {
            let line = FlowLine::from_flow(f, pod.as_ref(), &l.rules, names);
            let _ = tx.send(serde_json::to_string(&line).unwrap_or_default());
        }
    }
}

/// `/metrics` (Prometheus text) and `/healthz` over plain HTTP/1.1.
async fn metrics_server(
    addr: SocketAddr,
    proxy: Arc<AgentProxy>,
    http: Arc<AgentHttpProxy>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let proxy = proxy.clone();
        let http = http.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/metrics" => ("200 OK", render_metrics(&proxy, &http, &metrics)),
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

fn render_metrics(proxy: &AgentProxy, http: &AgentHttpProxy, metrics: &AgentMetrics) -> String {
    let mut out = proxy.metrics.render();
    out.push_str(&http.metrics.render());
    let s = proxy.sink.state.lock().expect("fqdn state");
    if let Ok(counters) = s.datapath.counters() {
        out.push_str("# HELP tollgate_datapath_packets_total Packets by datapath decision\n# TYPE tollgate_datapath_packets_total counter\n");
        for (name, v) in counters.0 {
            out.push_str(&format!(
                "tollgate_datapath_packets_total{{reason=\"{name}\"}} {v}\n"
            ));
        }
    }
    let c = s.cache.counters();
    let (names, ips) = s.cache.len();
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

fn push_metric(out: &mut String, name: &str, help: &str, value: u64) {
    out.push_str(&format!("# HELP {name} {help}\n{name} {value}\n"));
}

/// Where the agent writes its state by default.
pub fn default_state_dir() -> &'static Path {
    Path::new("/var/lib/tollgate")
}
