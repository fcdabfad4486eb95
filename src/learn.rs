//! The DNS proxy's [`LearnSink`] over fqdn-cache and the datapath: a learned
//! answer becomes FQDN map entries before the proxy replies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use dns_proxy::{LearnSink, SinkError};
use egress_bpf::desired::{fqdn_entries, Interfaces, StateDiff};
use egress_bpf::{monotonic_now_ns, Datapath};
use fqdn_cache::{FqdnCache, Grants, Time};
use policy::EndpointKey;

/// fqdn-cache, the datapath and where each endpoint's veth is, behind one
/// lock: learns, policy changes and GC all go through it.
pub struct FqdnState<D> {
    pub cache: FqdnCache,
    pub datapath: D,
    pub interfaces: Interfaces,
    /// A write failed: the map may lack entries the cache has. The next
    /// learn reconciles the whole FQDN map first.
    pub dirty: bool,
    /// FQDN entries found pinned at start that the saved cache did not know
    /// (the agent was killed before saving): kept until they expire, so a
    /// crash never closes what an answer still vouches for.
    pub adopted: BTreeMap<(u32, IpAddr), Grants>,
}

impl<D: Datapath> FqdnState<D> {
    fn ifindex(&self, key: &EndpointKey) -> Option<u32> {
        self.interfaces.get(key).map(|(i, _)| *i)
    }

    /// What the FQDN map should hold: the cache's entries, plus adopted
    /// ones the cache has nothing for.
    pub fn desired_fqdn(&self) -> BTreeMap<(u32, IpAddr), Grants> {
        let mut want = fqdn_entries(&self.cache.full_state(), |k| self.ifindex(k));
        for (key, grants) in &self.adopted {
            want.entry(*key).or_insert_with(|| grants.clone());
        }
        want
    }

    /// Drops adopted entries whose every grant expired; returns their keys
    /// that the cache does not hold (to remove from the map).
    pub fn prune_adopted(&mut self, now: Time) -> Vec<(u32, IpAddr)> {
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
        let held = fqdn_entries(&self.cache.full_state(), |k| self.ifindex(k));
        expired
            .into_iter()
            .filter(|k| !held.contains_key(k))
            .collect()
    }

    /// Brings the FQDN map in line with the cache (and adopted entries).
    pub fn reconcile(&mut self) -> Result<(), SinkError> {
        let current = self
            .datapath
            .current()
            .map_err(|e| SinkError(e.to_string()))?;
        let mut desired = current.clone();
        desired.fqdn = self.desired_fqdn();
        self.datapath
            .apply(&current.diff(&desired))
            .map_err(|e| SinkError(e.to_string()))?;
        self.dirty = false;
        Ok(())
    }
}

/// The sink the proxy is given.
pub struct DatapathSink<D> {
    pub state: Mutex<FqdnState<D>>,
}

impl<D: Datapath> DatapathSink<D> {
    pub fn new(cache: FqdnCache, datapath: D, interfaces: Interfaces) -> Self {
        Self {
            state: Mutex::new(FqdnState {
                cache,
                datapath,
                interfaces,
                dirty: false,
                adopted: BTreeMap::new(),
            }),
        }
    }
}

impl<D: Datapath + Send + 'static> LearnSink for DatapathSink<D> {
    fn learn(
        &self,
        endpoint: &EndpointKey,
        qname: &str,
        answers: &[(IpAddr, u32)],
    ) -> Result<(), SinkError> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| SinkError("fqdn state lock poisoned".into()))?;
        if s.dirty {
            s.reconcile()?;
        }
        let diff = s
            .cache
            .learn(Time(monotonic_now_ns()), endpoint, qname, answers);
        let writes = StateDiff::from_fqdn(&diff, |k| s.ifindex(k));
        if writes.is_empty() {
            return Ok(());
        }
        if let Err(e) = s.datapath.apply(&writes) {
            s.dirty = true;
            return Err(SinkError(e.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use egress_bpf::FakeDatapath;
    use fqdn_cache::{Config, PolicyView};
    use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};

    use super::*;

    fn sink(fqdn_capacity: Option<usize>) -> (DatapathSink<FakeDatapath>, EndpointKey) {
        let key = EndpointKey {
            namespace: "prod".into(),
            name: "payments".into(),
        };
        let mut b = FqdnMatcherBuilder::default();
        let id = b.insert(FqdnSelector::pattern("*.test").unwrap());
        let view = PolicyView::new(
            std::sync::Arc::new(b.build()),
            [(key.clone(), vec![(id, vec![fqdn_cache::PortSpec::All])])].into(),
        );
        let dp = FakeDatapath {
            fqdn_capacity,
            ..FakeDatapath::default()
        };
        let interfaces: Interfaces = BTreeMap::from([(key.clone(), (7, "veth7".to_string()))]);
        (
            DatapathSink::new(FqdnCache::new(Config::default(), view), dp, interfaces),
            key,
        )
    }

    #[test]
    fn learning_writes_the_fqdn_map_before_returning() {
        let (sink, key) = sink(None);
        sink.learn(&key, "api.test.", &[("203.0.113.10".parse().unwrap(), 60)])
            .unwrap();
        let s = sink.state.lock().unwrap();
        assert!(s
            .datapath
            .state
            .fqdn
            .contains_key(&(7, "203.0.113.10".parse().unwrap())));
    }

    #[test]
    fn a_full_map_fails_the_learn_and_is_reconciled_later() {
        let (sink, key) = sink(Some(1));
        sink.learn(&key, "a.test.", &[("192.0.2.1".parse().unwrap(), 60)])
            .unwrap();
        let err = sink.learn(&key, "b.test.", &[("192.0.2.2".parse().unwrap(), 60)]);
        assert!(err.is_err(), "the second entry does not fit");
        assert!(sink.state.lock().unwrap().dirty);
        sink.state.lock().unwrap().datapath.fqdn_capacity = None;
        sink.learn(&key, "c.test.", &[("192.0.2.3".parse().unwrap(), 60)])
            .unwrap();
        let s = sink.state.lock().unwrap();
        assert_eq!(
            s.datapath.state.fqdn.len(),
            3,
            "reconciled: b.test's entry was written too"
        );
        assert!(!s.dirty);
    }
}
