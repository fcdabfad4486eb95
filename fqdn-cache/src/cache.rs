//! The learned-name store and its rules (TTL, caps, zombies) — see the crate
//! docs for the rules themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use policy::EndpointKey;

use crate::datapath::{Diff, FqdnEntries, Grants, PortGrant, PortSpec};
use crate::time::Time;
use crate::view::PolicyView;

/// Tunables. Every bound fails safe: hitting it allows less, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Seconds: an answer is trusted for at least this long (`--min-ttl`).
    pub min_ttl: u32,
    /// Seconds: the lifetime of a TTL-0 (or shorter-than-this) answer, long
    /// enough for the getaddrinfo-then-connect that follows it.
    pub ttl_floor: u32,
    /// Most IPs kept per name per endpoint; the least recently learned go first.
    pub max_ips_per_name: usize,
    /// Most names kept per endpoint; the least recently learned go first.
    pub max_names_per_endpoint: usize,
    /// Seconds an expired IP with a connection stays nameable after the
    /// connection was last seen alive.
    pub zombie_grace: u32,
    /// Most port grants in one datapath entry (the map value's slots).
    pub max_grants_per_entry: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_ttl: 0,
            ttl_floor: 2,
            max_ips_per_name: 64,
            max_names_per_endpoint: 50_000,
            zombie_grace: 10,
            max_grants_per_entry: 8,
        }
    }
}

/// The grid learned expiries are rounded up to (see [`FqdnCache::learn`]).
pub const EXPIRY_STEP: Time = Time(100_000_000);

impl Config {
    /// How long an answer with `ttl` vouches for its IPs.
    pub fn lifetime_secs(&self, ttl: u32) -> u64 {
        u64::from(ttl.max(self.min_ttl).max(self.ttl_floor))
    }
}

/// Counters for metrics; each says that a bound or a guard took effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Answers learned from.
    pub answers: u64,
    /// IPs newly learned or refreshed.
    pub ips_learned: u64,
    /// Query names that were not valid DNS names (nothing learned).
    pub invalid_names: u64,
    /// IPs dropped by `max_ips_per_name`.
    pub ips_evicted: u64,
    /// Names dropped by `max_names_per_endpoint`.
    pub names_evicted: u64,
    /// Port grants dropped by `max_grants_per_entry`.
    pub grants_dropped: u64,
    /// Entries removed after expiry.
    pub expired: u64,
    /// Expired entries kept because a connection still uses the IP.
    pub zombies: u64,
}

/// Tells whether an endpoint still has a connection to an IP (the
/// datapath's conntrack, in the agent).
pub trait ConnectionOracle {
    fn is_alive(&self, endpoint: &EndpointKey, ip: IpAddr) -> bool;
}

impl<F: Fn(&EndpointKey, IpAddr) -> bool> ConnectionOracle for F {
    fn is_alive(&self, endpoint: &EndpointKey, ip: IpAddr) -> bool {
        self(endpoint, ip)
    }
}

/// No connection is ever alive.
pub struct NoConnections;

impl ConnectionOracle for NoConnections {
    fn is_alive(&self, _: &EndpointKey, _: IpAddr) -> bool {
        false
    }
}

/// One IP as learned for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedIp {
    pub ip: IpAddr,
    /// The last answer that carried it.
    pub learned_at: Time,
    pub expires_at: Time,
    /// Expired, kept only because a connection used it (never allowed).
    pub zombie: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpEntry {
    pub learned_at: Time,
    pub expires_at: Time,
    /// A zombie, last seen with a live connection at this time; `NOT_ZOMBIE`
    /// otherwise. (An `Option<Time>` costs 8 more bytes on each of what may
    /// be millions of entries.)
    zombie_alive_at: u64,
    pub ip: IpAddr,
}

const NOT_ZOMBIE: u64 = u64::MAX;

impl IpEntry {
    pub(crate) fn new(
        ip: IpAddr,
        learned_at: Time,
        expires_at: Time,
        zombie_alive_at: Option<Time>,
    ) -> Self {
        let mut e = Self {
            learned_at,
            expires_at,
            zombie_alive_at: NOT_ZOMBIE,
            ip,
        };
        e.set_zombie_alive_at(zombie_alive_at);
        e
    }

    /// `Some(t)`: a zombie, last seen with a live connection at `t`.
    pub(crate) fn zombie_alive_at(&self) -> Option<Time> {
        (self.zombie_alive_at != NOT_ZOMBIE).then_some(Time(self.zombie_alive_at))
    }

    pub(crate) fn set_zombie_alive_at(&mut self, t: Option<Time>) {
        self.zombie_alive_at = t.map_or(NOT_ZOMBIE, |t| t.0.min(NOT_ZOMBIE - 1));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameSlot {
    pub name: Arc<str>,
    pub last_learned: Time,
    pub ips: Vec<IpEntry>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointState {
    names: HashMap<Arc<str>, u32>,
    slots: Vec<Option<NameSlot>>,
    free: Vec<u32>,
    /// IP -> the name holding it. An IP held by several names has the others
    /// in `shared`: one plain `u32` here keeps the common case small.
    by_ip: HashMap<IpAddr, u32>,
    shared: HashMap<IpAddr, Vec<u32>>,
    /// Names by when they were last learned, oldest first: the per-endpoint
    /// cap evicts in O(log n), not by scanning every name.
    by_age: BTreeSet<(Time, u32)>,
}

impl EndpointState {
    fn slot(&self, id: u32) -> &NameSlot {
        self.slots[id as usize].as_ref().expect("live slot")
    }

    fn slot_mut(&mut self, id: u32) -> &mut NameSlot {
        self.slots[id as usize].as_mut().expect("live slot")
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &NameSlot> {
        self.slots.iter().flatten()
    }

    fn insert_name(&mut self, name: Arc<str>, now: Time) -> u32 {
        let slot = NameSlot {
            name: name.clone(),
            last_learned: now,
            ips: Vec::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.names.insert(name, id);
        self.by_age.insert((now, id));
        id
    }

    /// Records that name `id` was learned again at `now`. Recency is kept
    /// to within [`EXPIRY_STEP`]: a busy name answered thousands of times a
    /// second moves in the age order ten times a second, not on every
    /// answer (two ordered-set updates each); which of two names learned
    /// within the same tenth of a second goes first is of no consequence.
    fn touch(&mut self, id: u32, now: Time) {
        let slot = self.slots[id as usize].as_mut().expect("live slot");
        if now < slot.last_learned.plus(EXPIRY_STEP) {
            return;
        }
        self.by_age.remove(&(slot.last_learned, id));
        slot.last_learned = now;
        self.by_age.insert((now, id));
    }

    /// A repeated answer — the name held, each of its addresses held for
    /// it, alive and expiring no earlier than this answer says — changes
    /// no grant: only the name's recency and the addresses' learned time
    /// move, and they are moved here. The common case of a busy name,
    /// answered without computing every address's grants before and after
    /// as [`FqdnCache::learn`] otherwise does. `false`: nothing touched.
    fn refresh_unchanged(
        &mut self,
        name: &str,
        fresh: &[(IpAddr, u32)],
        now: Time,
        config: &Config,
    ) -> bool {
        let Some(&id) = self.names.get(name) else {
            return false;
        };
        let slot = self.slot(id);
        // A name over its cap (restored from a file written under a larger
        // one) takes the general path, which trims it.
        if slot.ips.len() > config.max_ips_per_name {
            return false;
        }
        let unchanged = fresh.iter().all(|&(ip, ttl)| {
            let expires_at = now
                .plus_secs(config.lifetime_secs(ttl))
                .round_up(EXPIRY_STEP);
            slot.ips
                .iter()
                .any(|e| e.ip == ip && e.zombie_alive_at().is_none() && e.expires_at >= expires_at)
        });
        if !unchanged {
            return false;
        }
        for e in self.slot_mut(id).ips.iter_mut() {
            if fresh.iter().any(|(ip, _)| *ip == e.ip) {
                e.learned_at = now;
            }
        }
        self.touch(id, now);
        true
    }

    /// The least recently learned name.
    fn oldest(&self) -> Option<u32> {
        self.by_age.first().map(|(_, id)| *id)
    }

    fn remove_name(&mut self, id: u32) -> NameSlot {
        let slot = self.slots[id as usize].take().expect("live slot");
        self.by_age.remove(&(slot.last_learned, id));
        self.names.remove(&slot.name);
        for entry in &slot.ips {
            self.unindex(entry.ip, id);
        }
        self.free.push(id);
        slot
    }

    fn index(&mut self, ip: IpAddr, id: u32) {
        match self.by_ip.get(&ip) {
            None => {
                self.by_ip.insert(ip, id);
            }
            Some(first) if *first == id => {}
            Some(_) => {
                let others = self.shared.entry(ip).or_default();
                if !others.contains(&id) {
                    others.push(id);
                }
            }
        }
    }

    fn unindex(&mut self, ip: IpAddr, id: u32) {
        let Some(first) = self.by_ip.get(&ip).copied() else {
            return;
        };
        let others = self.shared.get_mut(&ip);
        if first == id {
            match others.and_then(|o| o.pop()) {
                Some(next) => {
                    self.by_ip.insert(ip, next);
                }
                None => {
                    self.by_ip.remove(&ip);
                }
            }
        } else if let Some(others) = others {
            others.retain(|x| *x != id);
        }
        if self.shared.get(&ip).is_some_and(Vec::is_empty) {
            self.shared.remove(&ip);
        }
    }

    /// The ids of every name holding `ip`.
    fn holders(&self, ip: IpAddr) -> impl Iterator<Item = u32> + '_ {
        self.by_ip
            .get(&ip)
            .copied()
            .into_iter()
            .chain(self.shared.get(&ip).into_iter().flatten().copied())
    }

    pub(crate) fn restore_slot(&mut self, slot: NameSlot) {
        let ips: Vec<IpAddr> = slot.ips.iter().map(|e| e.ip).collect();
        let id = self.insert_name(slot.name.clone(), slot.last_learned);
        *self.slot_mut(id) = slot;
        for ip in ips {
            self.index(ip, id);
        }
    }
}

/// What every endpoint learned through DNS. See the crate docs.
#[derive(Debug, Clone, Default)]
pub struct FqdnCache {
    config: Config,
    view: PolicyView,
    pub(crate) endpoints: BTreeMap<EndpointKey, EndpointState>,
    counters: Counters,
}

impl FqdnCache {
    pub fn new(config: Config, view: PolicyView) -> Self {
        Self {
            config,
            view,
            endpoints: BTreeMap::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Learns from one DNS answer to `qname` received by `endpoint` at `now`:
    /// `answers` are the A/AAAA records on the CNAME chain, each with the TTL
    /// the proxy computed (the minimum over the chain). Returns the datapath
    /// writes it causes; the proxy must apply them before replying.
    pub fn learn(
        &mut self,
        now: Time,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Diff {
        let Some(name) = policy::fqdn::normalize_name(qname) else {
            self.counters.invalid_names += 1;
            return Diff::default();
        };
        if answers.is_empty() {
            return Diff::default();
        }
        self.counters.answers += 1;
        // One IP may appear twice in an answer; the longest TTL counts.
        let mut fresh: Vec<(IpAddr, u32)> = Vec::with_capacity(answers.len());
        for &(ip, ttl) in answers {
            match fresh.iter_mut().find(|(i, _)| *i == ip) {
                Some(existing) => existing.1 = existing.1.max(ttl),
                None => fresh.push((ip, ttl)),
            }
        }
        if fresh.len() > self.config.max_ips_per_name {
            self.counters.ips_evicted += (fresh.len() - self.config.max_ips_per_name) as u64;
            fresh.truncate(self.config.max_ips_per_name);
        }

        let config = self.config;
        if let Some(state) = self.endpoints.get_mut(endpoint) {
            if state.refresh_unchanged(&name, &fresh, now, &config) {
                self.counters.ips_learned += fresh.len() as u64;
                return Diff::default();
            }
        }
        let state = self.endpoints.entry(endpoint.clone()).or_default();
        let mut touched = Touched::default();
        for (ip, _) in &fresh {
            touched.record(&self.view, &config, endpoint, state, *ip);
        }

        let id = match state.names.get(&*name) {
            Some(id) => *id,
            None => {
                while state.names.len() >= config.max_names_per_endpoint.max(1) {
                    let oldest = state.oldest().expect("names is not empty");
                    for ip in state
                        .slot(oldest)
                        .ips
                        .iter()
                        .map(|e| e.ip)
                        .collect::<Vec<_>>()
                    {
                        touched.record(&self.view, &config, endpoint, state, ip);
                    }
                    state.remove_name(oldest);
                    self.counters.names_evicted += 1;
                }
                state.insert_name(Arc::from(&*name), now)
            }
        };

        for &(ip, ttl) in &fresh {
            // Rounded up to a tenth of a second: the answers to one name
            // within the same tenth give the same expiry, so repeating them
            // (a busy name) leaves the datapath entry as it is and costs no
            // map write. Never earlier than the TTL says; at most 100 ms
            // later.
            let expires_at = now
                .plus_secs(config.lifetime_secs(ttl))
                .round_up(EXPIRY_STEP);
            let slot = state.slot_mut(id);
            match slot.ips.iter_mut().find(|e| e.ip == ip) {
                Some(entry) => {
                    // A re-resolution extends, never shortens.
                    entry.expires_at = entry.expires_at.max(expires_at);
                    entry.learned_at = now;
                    entry.set_zombie_alive_at(None);
                }
                None => {
                    slot.ips.push(IpEntry::new(ip, now, expires_at, None));
                    state.index(ip, id);
                }
            }
            self.counters.ips_learned += 1;
        }
        // Per-name cap: drop zombies first, then the least recently learned.
        loop {
            let slot = state.slot_mut(id);
            if slot.ips.len() <= config.max_ips_per_name {
                break;
            }
            let victim = slot
                .ips
                .iter()
                .enumerate()
                .filter(|(_, e)| !fresh.iter().any(|(ip, _)| *ip == e.ip))
                .min_by_key(|(_, e)| (e.zombie_alive_at().is_none(), e.learned_at))
                .map(|(i, _)| i)
                .expect("fresh IPs alone fit in the cap");
            let ip = slot.ips[victim].ip;
            touched.record(&self.view, &config, endpoint, state, ip);
            state.slot_mut(id).ips.remove(victim);
            state.unindex(ip, id);
            self.counters.ips_evicted += 1;
        }
        state.touch(id, now);
        touched.finish(&self.view, &config, endpoint, state, &mut self.counters)
    }

    /// Garbage collection at `now`: entries past their expiry are removed,
    /// unless `connections` says the endpoint still uses the IP — then they
    /// stay as zombies (nameable, never allowed) until the connection has
    /// been gone for the grace period.
    pub fn expire(&mut self, now: Time, connections: &dyn ConnectionOracle) -> Diff {
        let config = self.config;
        let grace = Time::from_secs(u64::from(config.zombie_grace));
        let mut diff = Diff::default();
        let mut empty_endpoints = Vec::new();
        for (endpoint, state) in self.endpoints.iter_mut() {
            let mut touched = Touched::default();
            let mut empty_names = Vec::new();
            for id in 0..state.slots.len() as u32 {
                let Some(slot) = state.slots[id as usize].as_ref() else {
                    continue;
                };
                // Decide per expired entry: keep as zombie, or remove.
                let mut changes: Vec<(IpAddr, Option<Time>)> = Vec::new();
                for e in slot.ips.iter().filter(|e| e.expires_at <= now) {
                    if connections.is_alive(endpoint, e.ip) {
                        changes.push((e.ip, Some(now)));
                    } else {
                        match e.zombie_alive_at() {
                            Some(seen) if seen.plus(grace) > now => {}
                            _ => changes.push((e.ip, None)),
                        }
                    }
                }
                for (ip, alive_at) in changes {
                    let was_zombie = state
                        .slot(id)
                        .ips
                        .iter()
                        .any(|e| e.ip == ip && e.zombie_alive_at().is_some());
                    if !was_zombie {
                        touched.record(&self.view, &config, endpoint, state, ip);
                    }
                    let slot = state.slot_mut(id);
                    match alive_at {
                        Some(t) => {
                            if let Some(e) = slot.ips.iter_mut().find(|e| e.ip == ip) {
                                e.set_zombie_alive_at(Some(t));
                            }
                            if !was_zombie {
                                self.counters.zombies += 1;
                            }
                        }
                        None => {
                            slot.ips.retain(|e| e.ip != ip);
                            state.unindex(ip, id);
                            self.counters.expired += 1;
                        }
                    }
                }
                if state.slot(id).ips.is_empty() {
                    empty_names.push(id);
                }
            }
            for id in empty_names {
                state.remove_name(id);
            }
            diff.extend(touched.finish(&self.view, &config, endpoint, state, &mut self.counters));
            if state.names.is_empty() {
                empty_endpoints.push(endpoint.clone());
            }
        }
        for endpoint in empty_endpoints {
            self.endpoints.remove(&endpoint);
        }
        diff
    }

    /// Swaps in a new policy view (policies or endpoints changed): every
    /// entry is recomputed; learned names are kept, so a newly allowed name
    /// works without a new lookup and a newly forbidden one closes at once.
    pub fn set_view(&mut self, view: PolicyView) -> Diff {
        let before = self.full_state();
        self.view = view;
        Diff::between(&before, &self.full_state())
    }

    /// Forgets an endpoint (the pod is gone).
    pub fn remove_endpoint(&mut self, endpoint: &EndpointKey) -> Diff {
        let before = self.full_state();
        self.endpoints.remove(endpoint);
        Diff::between(&before, &self.full_state())
    }

    /// Everything the datapath should hold now.
    pub fn full_state(&self) -> FqdnEntries {
        let mut out = FqdnEntries::new();
        let mut dropped = 0;
        for (endpoint, state) in &self.endpoints {
            let mut ports_of = PortsOf::new(&self.view, endpoint);
            for ip in state.by_ip.keys() {
                if let Some(grants) =
                    entry_for(&mut ports_of, &self.config, state, *ip, &mut dropped)
                {
                    out.insert((endpoint.clone(), *ip), grants);
                }
            }
        }
        out
    }

    /// The writes that bring an existing datapath (e.g. the pinned map found
    /// at start) in line with the cache.
    pub fn reconcile(&self, existing: &FqdnEntries) -> Diff {
        Diff::between(existing, &self.full_state())
    }

    /// What `endpoint` learned for `name`, zombies included.
    pub fn lookup(&self, endpoint: &EndpointKey, name: &str) -> Vec<LearnedIp> {
        let Some(name) = policy::fqdn::normalize_name(name) else {
            return Vec::new();
        };
        let Some(state) = self.endpoints.get(endpoint) else {
            return Vec::new();
        };
        let Some(id) = state.names.get(&*name) else {
            return Vec::new();
        };
        state
            .slot(*id)
            .ips
            .iter()
            .map(|e| LearnedIp {
                ip: e.ip,
                learned_at: e.learned_at,
                expires_at: e.expires_at,
                zombie: e.zombie_alive_at().is_some(),
            })
            .collect()
    }

    /// Whether `endpoint` has learned `name` (and still holds it).
    pub fn has_name(&self, endpoint: &EndpointKey, name: &str) -> bool {
        let Some(name) = policy::fqdn::normalize_name(name) else {
            return false;
        };
        self.endpoints
            .get(endpoint)
            .is_some_and(|state| state.names.contains_key(&*name))
    }

    /// The names `endpoint` learned `ip` for (zombies included), for flow
    /// logs and `explain`; sorted.
    pub fn names_for_ip(&self, endpoint: &EndpointKey, ip: IpAddr) -> Vec<Arc<str>> {
        let Some(state) = self.endpoints.get(endpoint) else {
            return Vec::new();
        };
        let mut names: Vec<Arc<str>> = state
            .holders(ip)
            .map(|id| state.slot(id).name.clone())
            .collect();
        names.sort();
        names
    }

    /// Number of (endpoint, name) pairs and of (endpoint, name, ip) entries.
    pub fn len(&self) -> (usize, usize) {
        self.endpoints.values().fold((0, 0), |(n, i), s| {
            (
                n + s.names.len(),
                i + s.slots().map(|s| s.ips.len()).sum::<usize>(),
            )
        })
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Every name of every endpoint, for persistence.
    pub(crate) fn from_parts(
        config: Config,
        view: PolicyView,
        endpoints: BTreeMap<EndpointKey, EndpointState>,
    ) -> Self {
        Self {
            config,
            view,
            endpoints,
            counters: Counters::default(),
        }
    }
}

/// The grants of one (endpoint, ip): for every name holding the IP (not as a
/// zombie), each port set its toFQDNs selectors open, until that learn's
/// expiry. One grant per port set (the latest expiry), at most
/// `max_grants_per_entry` (the latest-expiring are kept: dropping any is safe).
fn entry_for(
    ports_of: &mut PortsOf,
    config: &Config,
    state: &EndpointState,
    ip: IpAddr,
    dropped: &mut u64,
) -> Option<Grants> {
    let mut grants: Vec<PortGrant> = Vec::new();
    for id in state.holders(ip) {
        let slot = state.slot(id);
        let Some(entry) = slot
            .ips
            .iter()
            .find(|e| e.ip == ip && e.zombie_alive_at().is_none())
        else {
            continue;
        };
        for &ports in ports_of.get(&slot.name) {
            match grants.iter_mut().find(|g| g.ports == ports) {
                Some(g) => g.expires_at = g.expires_at.max(entry.expires_at),
                None => grants.push(PortGrant {
                    ports,
                    expires_at: entry.expires_at,
                }),
            }
        }
    }
    if grants.is_empty() {
        return None;
    }
    if grants.len() > config.max_grants_per_entry {
        grants.sort_by(|a, b| b.expires_at.cmp(&a.expires_at).then(a.ports.cmp(&b.ports)));
        *dropped += (grants.len() - config.max_grants_per_entry) as u64;
        grants.truncate(config.max_grants_per_entry);
    }
    grants.sort();
    Some(grants)
}

/// The ports each name opens for one endpoint, computed once per operation
/// (each is an FQDN match; an entry is computed before and after a change).
struct PortsOf<'a> {
    view: &'a PolicyView,
    endpoint: &'a EndpointKey,
    memo: HashMap<Arc<str>, Vec<PortSpec>>,
}

impl<'a> PortsOf<'a> {
    fn new(view: &'a PolicyView, endpoint: &'a EndpointKey) -> Self {
        Self {
            view,
            endpoint,
            memo: HashMap::new(),
        }
    }

    fn get(&mut self, name: &Arc<str>) -> &[PortSpec] {
        self.memo
            .entry(name.clone())
            .or_insert_with(|| self.view.ports_for(self.endpoint, name))
    }
}

/// The datapath entries an operation may change, with their value before it.
#[derive(Default)]
struct Touched {
    before: BTreeMap<IpAddr, Option<Grants>>,
    memo: HashMap<Arc<str>, Vec<PortSpec>>,
}

impl Touched {
    fn record(
        &mut self,
        view: &PolicyView,
        config: &Config,
        endpoint: &EndpointKey,
        state: &EndpointState,
        ip: IpAddr,
    ) {
        if self.before.contains_key(&ip) {
            return;
        }
        let mut ports_of = PortsOf {
            view,
            endpoint,
            memo: std::mem::take(&mut self.memo),
        };
        let mut ignored = 0;
        let before = entry_for(&mut ports_of, config, state, ip, &mut ignored);
        self.memo = ports_of.memo;
        self.before.insert(ip, before);
    }

    fn finish(
        self,
        view: &PolicyView,
        config: &Config,
        endpoint: &EndpointKey,
        state: &EndpointState,
        counters: &mut Counters,
    ) -> Diff {
        let mut diff = Diff::default();
        let mut ports_of = PortsOf {
            view,
            endpoint,
            memo: self.memo,
        };
        for (ip, before) in self.before {
            let after = entry_for(
                &mut ports_of,
                config,
                state,
                ip,
                &mut counters.grants_dropped,
            );
            if after == before {
                continue;
            }
            match after {
                Some(grants) => diff.put.push(((endpoint.clone(), ip), grants)),
                None => diff.del.push((endpoint.clone(), ip)),
            }
        }
        diff
    }
}
