//! The node's enforcement state, owned by the agent: the policy in force,
//! the FQDN cache and the datapath, and the operations on them — learn (the
//! DNS answer path), reload, GC, flow descriptions, lookups and counters.
//! The DNS proxy and the L7 proxy get thin handles ([`DnsHandle`],
//! [`crate::l7::L7Policy`]); nothing else reaches into the state.
//!
//! ## Locks
//! - `state` (cache + datapath writes + what was written) is what a DNS
//!   answer waits on. Everything done under it is short and bounded: the
//!   cache update and the map writes of one change; a GC or reload step
//!   holds it for in-memory work plus the writes of its own diff, never for
//!   a map dump (diffs are computed against `written`, the record of what
//!   this agent wrote), a conntrack walk or a file write.
//! - `policy` (the [`ActivePolicy`] in force) is read by every query and
//!   replaced whole on reload.
//! - `monitor` (the datapath's read side: conntrack walk, counters, flow
//!   events) is only taken by background work and never while `state` is
//!   held.
//!
//! Lock order, where two are held: `state`, then `policy` (write, in
//! reload only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use dns_proxy::{DnsCheck, DnsPolicy, LearnSink, PolicyDns, SinkError, Transport};
use egress_bpf::desired::{compile, fqdn_entries, Interfaces, RuleTable};
use egress_bpf::redirect::RedirectConfig;
use egress_bpf::{
    monotonic_now_ns, Counters, Datapath, DatapathError, DesiredState, FlowEvent, Monitor,
    StateDiff,
};
use fqdn_cache::{FqdnCache, Grants, PolicyView, Time};
use policy::{EndpointKey, Inventory, Resolved};

use crate::budget::NameBudget;
use crate::l7::{http_redirects, HttpRedirects};

/// The policy set in force and everything derived from it. Immutable:
/// a reload builds a new one and swaps it in whole.
#[derive(Debug)]
pub struct ActivePolicy {
    /// The resolved policies and the endpoints they were resolved for (the
    /// DNS proxy checks queries against exactly this).
    pub dns: PolicyDns,
    /// This node's endpoints: endpoint -> (ifindex, host veth).
    pub interfaces: Interfaces,
    /// Rule ids in map values and flow events.
    pub rules: RuleTable,
    /// The policy maps' contents (the FQDN map is the cache's business).
    pub desired: DesiredState,
    /// What nftables hands to the HTTP proxy.
    pub http_redirects: HttpRedirects,
}

impl ActivePolicy {
    /// Compiles a resolved policy set for the endpoints whose veth
    /// `interface_index` finds (the others are remote: they only feed the
    /// ipcache).
    pub fn new(
        resolved: Resolved,
        inventory: Inventory,
        interface_index: impl Fn(&str) -> Option<u32>,
    ) -> Self {
        let interfaces = local_interfaces(&inventory, interface_index);
        Self::with_interfaces(resolved, inventory, interfaces)
    }

    /// As [`ActivePolicy::new`], with the local endpoints' veths given.
    pub fn with_interfaces(
        resolved: Resolved,
        inventory: Inventory,
        interfaces: Interfaces,
    ) -> Self {
        let compiled = compile(&resolved, &inventory, &interfaces);
        let http_redirects = http_redirects(&resolved, &inventory, &interfaces);
        Self {
            dns: PolicyDns {
                resolved,
                inventory,
            },
            interfaces,
            rules: compiled.rules,
            desired: compiled.state,
            http_redirects,
        }
    }

    pub fn resolved(&self) -> &Resolved {
        &self.dns.resolved
    }

    pub fn inventory(&self) -> &Inventory {
        &self.dns.inventory
    }

    pub fn ifindex(&self, key: &EndpointKey) -> Option<u32> {
        self.interfaces.get(key).map(|(i, _)| *i)
    }

    fn ifindex_map(&self) -> BTreeMap<EndpointKey, u32> {
        self.interfaces
            .iter()
            .map(|(k, (i, _))| (k.clone(), *i))
            .collect()
    }
}

/// The host-side veth of each endpoint that names one (`interface` in the
/// endpoints file, or the one found from its route in Kubernetes mode).
pub fn local_interfaces(
    inventory: &Inventory,
    interface_index: impl Fn(&str) -> Option<u32>,
) -> Interfaces {
    inventory
        .endpoints()
        .iter()
        .filter_map(|e| {
            let name = e.interface.as_ref()?;
            let index = interface_index(name);
            if index.is_none() {
                tracing::warn!(endpoint = %e.key, interface = %name, "interface not found: treated as a remote endpoint");
            }
            Some((e.key.clone(), (index?, name.clone())))
        })
        .collect()
}

/// What a start found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartReport {
    /// Map writes to bring the pinned datapath in line.
    pub changes: usize,
    /// FQDN entries the pinned map held and the saved cache did not.
    pub adopted: usize,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub changes: usize,
    /// The HTTP proxy's redirect inputs differ from the previous policy's.
    pub http_redirects_changed: bool,
}

/// What one GC pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The cache changed (entries expired); worth saving.
    pub cache_changed: bool,
    pub writes: usize,
}

/// A flow event with what the node knows about it.
#[derive(Debug, Clone)]
pub struct DescribedFlow {
    pub event: FlowEvent,
    /// The local pod the flow's veth belongs to.
    pub pod: Option<EndpointKey>,
    /// Names that pod learned for the flow's remote address.
    pub names: Vec<String>,
}

/// What is under the lock the DNS answer path takes.
struct State<D> {
    cache: FqdnCache,
    datapath: D,
    /// What the maps hold, as this agent wrote them: diffs are computed
    /// against it, not against a dump. Re-read from the datapath after a
    /// failed write (`dirty`).
    written: DesiredState,
    /// A write failed: `written` may not match the maps, which may lack
    /// entries the cache has. The next learn or reload re-reads and
    /// reconciles first.
    dirty: bool,
    /// The policy the cache view and `written` were reconciled with.
    policy: Arc<ActivePolicy>,
    /// FQDN entries found pinned at start that the saved cache did not know
    /// (the agent was killed before saving): kept until they expire, so a
    /// crash never closes what an answer still vouches for.
    adopted: BTreeMap<(u32, IpAddr), Grants>,
    /// The proxy redirect wanted, and whether installing it last failed.
    redirects: Option<(RedirectConfig, bool)>,
    /// Map writes that failed, since start (`/metrics`).
    write_errors: u64,
}

impl<D: Datapath> State<D> {
    /// What the FQDN map should hold: the cache's entries, plus adopted
    /// ones the cache has nothing for.
    fn desired_fqdn(&self) -> BTreeMap<(u32, IpAddr), Grants> {
        let mut want = fqdn_entries(&self.cache.full_state(), |k| self.policy.ifindex(k));
        for (key, grants) in &self.adopted {
            want.entry(*key).or_insert_with(|| grants.clone());
        }
        want
    }

    /// Writes `diff`, keeping `written` in step; a failure marks the state
    /// dirty (the maps may hold part of the diff).
    fn write(&mut self, diff: &StateDiff) -> Result<(), DatapathError> {
        if diff.is_empty() {
            return Ok(());
        }
        match self.datapath.apply(diff) {
            Ok(()) => {
                self.written.apply(diff);
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                self.write_errors += 1;
                Err(e)
            }
        }
    }

    /// Brings every map in line with the policy and the cache; after a
    /// failed write, from what the maps really hold.
    fn reconcile(&mut self) -> Result<usize, DatapathError> {
        if self.dirty {
            self.written = self.datapath.current()?;
        }
        let mut desired = self.policy.desired.clone();
        desired.fqdn = self.desired_fqdn();
        let diff = self.written.diff(&desired);
        self.write(&diff)?;
        self.dirty = false;
        Ok(diff.len())
    }

    /// Drops adopted entries whose every grant expired; returns their keys
    /// that the cache does not hold (to remove from the map).
    fn prune_adopted(&mut self, now: Time) -> Vec<(u32, IpAddr)> {
        let expired: Vec<(u32, IpAddr)> = self
            .adopted
            .iter()
            .filter(|(_, g)| g.iter().all(|g| g.expires_at <= now))
            .map(|(k, _)| *k)
            .collect();
        if expired.is_empty() {
            return expired;
        }
        for k in &expired {
            self.adopted.remove(k);
        }
        let held = fqdn_entries(&self.cache.full_state(), |k| self.policy.ifindex(k));
        expired
            .into_iter()
            .filter(|k| !held.contains_key(k))
            .collect()
    }
}

/// The node: see the module docs.
pub struct Node<D: Datapath> {
    state: Mutex<State<D>>,
    policy: RwLock<Arc<ActivePolicy>>,
    monitor: Mutex<D::Monitor>,
    names: NameBudget,
}

impl<D: Datapath> Node<D> {
    /// Takes over `datapath` (possibly pinned by an earlier run): writes
    /// `policy` and what `cache` (restored or new) holds, and keeps pinned
    /// FQDN entries of local endpoints that the cache lacks until they
    /// expire.
    pub fn start(
        datapath: D,
        policy: ActivePolicy,
        cache: FqdnCache,
    ) -> Result<(Self, StartReport), DatapathError> {
        let monitor = datapath.monitor()?;
        let written = datapath.current()?;
        let policy = Arc::new(policy);
        let mut state = State {
            cache,
            datapath,
            written,
            dirty: false,
            policy: policy.clone(),
            adopted: BTreeMap::new(),
            redirects: None,
            write_errors: 0,
        };
        let _ = state
            .cache
            .set_view(PolicyView::from_resolved(policy.resolved()));
        let want = state.desired_fqdn();
        let now = Time(monotonic_now_ns());
        let local: BTreeSet<u32> = policy.interfaces.values().map(|(i, _)| *i).collect();
        state.adopted = state
            .written
            .fqdn
            .iter()
            .filter(|(k, g)| {
                !want.contains_key(k)
                    && local.contains(&k.0)
                    && g.iter().any(|g| g.expires_at > now)
            })
            .map(|(k, g)| (*k, g.clone()))
            .collect();
        let adopted = state.adopted.len();
        let changes = state.reconcile()?;
        Ok((
            Self {
                state: Mutex::new(state),
                policy: RwLock::new(policy),
                monitor: Mutex::new(monitor),
                names: NameBudget::unlimited(),
            },
            StartReport { changes, adopted },
        ))
    }

    /// Limits how fast each pod may look up names it has not learned.
    pub fn with_new_name_budget(mut self, budget: NameBudget) -> Self {
        self.names = budget;
        self
    }

    /// May `endpoint` look up `qname` now: always for a name it learned,
    /// else if its new-name budget allows.
    pub fn admit_name(&self, endpoint: &EndpointKey, qname: &str) -> bool {
        if self.state().cache.has_name(endpoint, qname) {
            return true;
        }
        self.names.take(endpoint, std::time::Instant::now())
    }

    /// [`Node::admit_name`], then [`Node::learn`], under one lock for a
    /// name the pod already knows (a cached answer's common case).
    /// `Ok(false)`: not admitted, nothing learned.
    pub fn admit_and_learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<bool, DatapathError> {
        let mut s = self.state();
        if !s.cache.has_name(endpoint, qname) {
            drop(s);
            if !self.names.take(endpoint, std::time::Instant::now()) {
                return Ok(false);
            }
            s = self.state();
        }
        if !answers.is_empty() {
            Self::learn_locked(&mut s, endpoint, qname, answers)?;
        }
        Ok(true)
    }

    fn state(&self) -> MutexGuard<'_, State<D>> {
        // A panic under the lock left the state as it was before the
        // panicking step; enforcing it beats stopping enforcement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn monitor(&self) -> MutexGuard<'_, D::Monitor> {
        self.monitor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<ActivePolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The index of a host interface (the datapath's read side).
    pub fn interface_index(&self, name: &str) -> Option<u32> {
        self.monitor().interface_index(name)
    }

    /// The Service frontend a local pod's connection `client -> backend`
    /// was sent to, when the datapath translated it (for events).
    pub fn service_frontend(
        &self,
        endpoint: &EndpointKey,
        protocol: u8,
        client: SocketAddr,
        backend: SocketAddr,
    ) -> Option<SocketAddr> {
        let ifindex = self.policy().ifindex(endpoint)?;
        self.monitor()
            .service_frontend(ifindex, protocol, client, backend)
    }

    /// Records an answer's addresses for `endpoint` and writes the FQDN map
    /// entries they open; returns once the datapath holds them.
    pub fn learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<(), DatapathError> {
        Self::learn_locked(&mut self.state(), endpoint, qname, answers)
    }

    fn learn_locked(
        s: &mut State<D>,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<(), DatapathError> {
        if s.dirty {
            s.reconcile()?;
        }
        let diff = s
            .cache
            .learn(Time(monotonic_now_ns()), endpoint, qname, answers);
        let writes = StateDiff::from_fqdn(&diff, |k| s.policy.ifindex(k));
        s.write(&writes)
    }

    /// Puts `new` in force: the cache's view, the policy maps and the FQDN
    /// map. On error the maps may be partly written; the next learn or
    /// reload reconciles them.
    pub fn reload(&self, new: ActivePolicy) -> Result<ReloadReport, DatapathError> {
        let view = PolicyView::from_resolved(new.resolved());
        let new = Arc::new(new);
        self.names.retain(|k| new.interfaces.contains_key(k));
        // A pod that is gone (deleted, or out of the endpoints file) takes
        // its learned names with it: a new pod of the same name must look
        // them up itself. A pod still listed keeps them, veth or not.
        // Found before the state lock, which every DNS answer waits on (a
        // cluster's worth of pods); again under it in the rare case that
        // another reload came in between.
        let gone = |old: &ActivePolicy| -> Vec<EndpointKey> {
            old.inventory()
                .endpoints()
                .iter()
                .map(|e| &e.key)
                .filter(|k| new.inventory().endpoint(k).is_none())
                .cloned()
                .collect()
        };
        let old = self.policy();
        let mut gone_keys = gone(&old);
        let mut s = self.state();
        if !Arc::ptr_eq(&old, &s.policy) {
            gone_keys = gone(&s.policy);
        }
        let http_redirects_changed = s.policy.http_redirects != new.http_redirects;
        for key in &gone_keys {
            let _ = s.cache.remove_endpoint(key);
        }
        // Entries adopted at start live only as long as their veth does.
        let local: BTreeSet<u32> = new.interfaces.values().map(|(i, _)| *i).collect();
        s.adopted.retain(|(ifindex, _), _| local.contains(ifindex));
        // The FQDN part is recomputed whole from the cache under the new
        // view and interfaces.
        let _ = s.cache.set_view(view);
        // The old policy is dropped (a cluster's inventory freed) after the
        // lock is released, not under it.
        let replaced = std::mem::replace(&mut s.policy, new.clone());
        let published = std::mem::replace(
            &mut *self.policy.write().unwrap_or_else(|e| e.into_inner()),
            new,
        );
        let changes = s.reconcile();
        drop(s);
        drop((old, replaced, published));
        let changes = changes?;
        Ok(ReloadReport {
            changes,
            http_redirects_changed,
        })
    }

    /// Installs or updates the proxy redirects. On failure the config is
    /// kept and [`Node::repair`] retries it.
    pub fn set_redirects(&self, config: &RedirectConfig) -> Result<(), DatapathError> {
        let mut s = self.state();
        let result = s.datapath.set_redirects(config);
        s.redirects = Some((config.clone(), result.is_err()));
        result
    }

    /// Whether a write failed since the last successful reconcile (the maps
    /// or the redirect may lag the policy).
    pub fn needs_repair(&self) -> bool {
        let s = self.state();
        s.dirty || s.redirects.as_ref().is_some_and(|(_, failed)| *failed)
    }

    /// Retries what failed: reconciles the maps with the policy and the
    /// cache (from what they really hold), reinstalls a redirect that failed.
    /// The last good policy stays in force throughout.
    pub fn repair(&self) -> Result<(), DatapathError> {
        let mut s = self.state();
        if s.dirty {
            s.reconcile()?;
        }
        if let Some((config, true)) = s.redirects.clone() {
            s.datapath.set_redirects(&config)?;
            s.redirects = Some((config, false));
        }
        Ok(())
    }

    /// Expires FQDN entries no live connection uses (the conntrack walk is
    /// done first, on the read side, without the state lock).
    pub fn gc(&self) -> Result<GcReport, DatapathError> {
        let live = self.monitor().live_connections()?;
        let mut s = self.state();
        let by_key = s.policy.ifindex_map();
        let oracle = |k: &EndpointKey, ip| by_key.get(k).is_some_and(|i| live.contains(&(*i, ip)));
        let now = Time(monotonic_now_ns());
        let diff = s.cache.expire(now, &oracle);
        let mut writes = StateDiff::from_fqdn(&diff, |k| by_key.get(k).copied());
        writes.fqdn.del.extend(s.prune_adopted(now));
        s.write(&writes)?;
        Ok(GcReport {
            cache_changed: !diff.is_empty(),
            writes: writes.len(),
        })
    }

    /// A copy of the cache, to save without holding the lock.
    pub fn cache_snapshot(&self) -> FqdnCache {
        self.state().cache.clone()
    }

    /// The cache's counters and sizes (names, IPs).
    pub fn cache_stats(&self) -> (fqdn_cache::Counters, (usize, usize)) {
        let s = self.state();
        (s.cache.counters(), s.cache.len())
    }

    /// Names `endpoint` learned for `ip`.
    pub fn names_for(&self, endpoint: &EndpointKey, ip: IpAddr) -> Vec<String> {
        self.state()
            .cache
            .names_for_ip(endpoint, ip)
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// Up to `max` flow events from the datapath, with each flow's pod and
    /// the names it learned for its peer.
    pub fn poll_flows(&self, max: usize) -> Result<Vec<DescribedFlow>, DatapathError> {
        let events = self.monitor().poll_events(max)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let policy = self.policy();
        let by_ifindex: std::collections::HashMap<u32, &EndpointKey> = policy
            .interfaces
            .iter()
            .map(|(k, (i, _))| (*i, k))
            .collect();
        let s = self.state();
        Ok(events
            .into_iter()
            .map(|event| {
                let pod = by_ifindex.get(&event.ifindex).map(|k| (*k).clone());
                let remote = if event.direction == policy::Direction::Egress {
                    event.dst
                } else {
                    event.src
                };
                let names = pod
                    .as_ref()
                    .map(|k| {
                        s.cache
                            .names_for_ip(k, remote)
                            .iter()
                            .map(|n| n.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                DescribedFlow { event, pod, names }
            })
            .collect())
    }

    /// How full each map the agent writes is: `(map, entries, capacity)`
    /// (entries as this agent wrote them; the capacity where the datapath
    /// can tell).
    pub fn map_fill(&self) -> Vec<(&'static str, usize, Option<u32>)> {
        let s = self.state();
        let capacities = s.datapath.capacities();
        s.written
            .entries_by_map()
            .iter()
            .map(|(name, n)| (*name, *n, capacities.get(name).copied()))
            .collect()
    }

    /// Map writes that failed since start (each retried until applied).
    pub fn write_errors(&self) -> u64 {
        self.state().write_errors
    }

    /// Packet counters by reason.
    pub fn datapath_counters(&self) -> Result<Counters, DatapathError> {
        self.monitor().counters()
    }

    /// Removes the datapath (programs, maps, pins, redirects).
    pub fn uninstall(&self) -> Result<(), DatapathError> {
        self.state().datapath.uninstall()
    }

    /// Changes the datapath under the state lock: fault injection in tests
    /// (e.g. a fake datapath told to fail its writes).
    pub fn with_datapath_mut<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.state().datapath)
    }

    /// Reads the datapath and the cache under the state lock (tests,
    /// diagnostics).
    pub fn inspect<R>(&self, f: impl FnOnce(&D, &FqdnCache) -> R) -> R {
        let s = self.state();
        f(&s.datapath, &s.cache)
    }
}

/// The DNS proxy's handle on the node: its policy seam (the policy in
/// force) and its learning sink (write-before-reply).
pub struct DnsHandle<D: Datapath>(pub Arc<Node<D>>);

impl<D: Datapath> Clone for DnsHandle<D> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<D: Datapath> DnsPolicy for DnsHandle<D> {
    fn endpoint(&self, src: IpAddr) -> Option<EndpointKey> {
        self.0.policy().dns.endpoint(src)
    }

    fn check(
        &self,
        endpoint: &EndpointKey,
        resolver: SocketAddr,
        transport: Transport,
        qname: &str,
    ) -> DnsCheck {
        self.0
            .policy()
            .dns
            .check(endpoint, resolver, transport, qname)
    }
}

impl<D: Datapath> LearnSink for DnsHandle<D> {
    fn admit(&self, endpoint: &EndpointKey, qname: &str) -> bool {
        self.0.admit_name(endpoint, qname)
    }

    fn learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<(), SinkError> {
        self.0
            .learn(endpoint, qname, answers)
            .map_err(|e| SinkError(format!("{:#}", anyhow::Error::new(e))))
    }

    fn admit_and_learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<bool, SinkError> {
        self.0
            .admit_and_learn(endpoint, qname, answers)
            .map_err(|e| SinkError(format!("{:#}", anyhow::Error::new(e))))
    }
}

#[cfg(test)]
mod tests {
    use egress_bpf::FakeDatapath;
    use fqdn_cache::Config;
    use policy::{PolicySet, ResolveOptions};

    use super::*;

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: payments}}
  egress:
    - toFQDNs: [{matchPattern: "*.test"}]
"#;

    fn key() -> EndpointKey {
        EndpointKey {
            namespace: "prod".into(),
            name: "payments".into(),
        }
    }

    fn node(fqdn_capacity: Option<usize>) -> Node<FakeDatapath> {
        let inventory = Inventory::parse(
            "endpoints:\n  - {namespace: prod, name: payments, labels: {app: payments}, ips: [10.0.1.10], interface: veth7}\n",
            "test",
        )
        .unwrap();
        let report = policy::parse_str(POLICY, None);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        let resolved =
            PolicySet::new(report.policies).resolve(&inventory, ResolveOptions::default());
        let view = PolicyView::from_resolved(&resolved);
        let policy = ActivePolicy::new(resolved, inventory, |n| (n == "veth7").then_some(7));
        let dp = FakeDatapath {
            fqdn_capacity,
            ..FakeDatapath::default()
        };
        Node::start(dp, policy, FqdnCache::new(Config::default(), view))
            .unwrap()
            .0
    }

    fn fqdn_len(node: &Node<FakeDatapath>) -> usize {
        node.inspect(|dp, _| dp.state.fqdn.len())
    }

    #[test]
    fn learning_writes_the_fqdn_map_before_returning() {
        let node = node(None);
        node.learn(
            &key(),
            "api.test.",
            &[("203.0.113.10".parse().unwrap(), 60)],
        )
        .unwrap();
        assert!(node.inspect(|dp, _| dp
            .state
            .fqdn
            .contains_key(&(7, "203.0.113.10".parse().unwrap()))));
    }

    /// The cached answer's one-step path: a known name is always admitted
    /// and learned; a new one takes from the pod's budget, and past it is
    /// neither admitted nor learned.
    #[test]
    fn admit_and_learn_spends_the_budget_only_on_new_names() {
        let node = node(None).with_new_name_budget(NameBudget::new(1, 1));
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert!(node
            .admit_and_learn(&key(), "a.test.", &[(ip("192.0.2.1"), 60)])
            .unwrap());
        // The budget is spent: a known name still passes and is learned...
        assert!(node
            .admit_and_learn(&key(), "a.test.", &[(ip("192.0.2.5"), 60)])
            .unwrap());
        assert!(node.inspect(|dp, _| dp.state.fqdn.contains_key(&(7, ip("192.0.2.5")))));
        // ...a new one does not, and nothing of it is written.
        assert!(!node
            .admit_and_learn(&key(), "b.test.", &[(ip("192.0.2.2"), 60)])
            .unwrap());
        assert!(!node.inspect(|dp, _| dp.state.fqdn.contains_key(&(7, ip("192.0.2.2")))));
        assert_eq!(fqdn_len(&node), 2);
    }

    #[test]
    fn a_full_map_fails_the_learn_and_is_reconciled_later() {
        let node = node(Some(1));
        node.learn(&key(), "a.test.", &[("192.0.2.1".parse().unwrap(), 60)])
            .unwrap();
        let err = node.learn(&key(), "b.test.", &[("192.0.2.2".parse().unwrap(), 60)]);
        assert!(err.is_err(), "the second entry does not fit");
        node.state().datapath.fqdn_capacity = None;
        node.learn(&key(), "c.test.", &[("192.0.2.3".parse().unwrap(), 60)])
            .unwrap();
        assert_eq!(
            fqdn_len(&node),
            3,
            "reconciled: b.test's entry was written too"
        );
        assert!(!node.state().dirty);
    }

    #[test]
    fn a_reload_closes_what_the_old_policy_opened() {
        let node = node(None);
        node.learn(&key(), "a.test.", &[("192.0.2.1".parse().unwrap(), 60)])
            .unwrap();
        let old = node.policy();
        let without_fqdn =
            PolicySet::new(Vec::new()).resolve(old.inventory(), ResolveOptions::default());
        let new = ActivePolicy::with_interfaces(
            without_fqdn,
            old.inventory().clone(),
            old.interfaces.clone(),
        );
        let report = node.reload(new).unwrap();
        assert!(report.changes >= 1, "{report:?}");
        assert_eq!(fqdn_len(&node), 0, "no toFQDNs rule: nothing stays open");
        assert_eq!(
            node.inspect(|dp, _| dp.state.clone()),
            node.state().written,
            "the record of what was written matches the maps"
        );
    }

    #[test]
    fn after_a_failed_write_the_maps_are_reread_not_trusted() {
        let node = node(None);
        node.state().datapath.broken = true;
        assert!(node
            .learn(&key(), "a.test.", &[("192.0.2.1".parse().unwrap(), 60)])
            .is_err());
        // Whatever the failed write left in the maps (here: a stray entry).
        {
            let mut s = node.state();
            s.datapath.broken = false;
            s.datapath
                .state
                .fqdn
                .insert((7, "198.51.100.99".parse().unwrap()), Grants::new());
        }
        node.learn(&key(), "b.test.", &[("192.0.2.2".parse().unwrap(), 60)])
            .unwrap();
        let fqdn = node.inspect(|dp, _| dp.state.fqdn.clone());
        assert_eq!(
            fqdn.keys()
                .map(|(_, ip)| ip.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.1", "192.0.2.2"],
            "the stray entry is removed, the failed learn's entry written"
        );
    }
}
