//! What one pod may cost the others: a cap on each pod's queries in flight.
//! (The rate of new names a pod may learn is the sink's decision,
//! [`crate::LearnSink::admit`]; the proxy's total in flight is capped by the
//! listeners; the datagrams per second a pod may send are bounded by the
//! datapath, on the pod's own interface, before they reach a socket the
//! pods share.)

use std::collections::HashMap;
use std::sync::Mutex;

use policy::EndpointKey;

/// Queries in flight per endpoint, capped.
#[derive(Debug)]
pub struct InFlight {
    max: usize,
    by_endpoint: Mutex<HashMap<EndpointKey, usize>>,
}

/// One admitted query; leaving frees its place.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    limits: &'a InFlight,
    endpoint: EndpointKey,
}

impl InFlight {
    /// `max` queries per endpoint at once; 0 means no cap.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            by_endpoint: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more query of `endpoint`, or `None` at the cap.
    pub fn try_enter(&self, endpoint: &EndpointKey) -> Option<InFlightGuard<'_>> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(endpoint.clone()).or_default();
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(InFlightGuard {
            limits: self,
            endpoint: endpoint.clone(),
        })
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .by_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.endpoint) {
            *n -= 1;
            if *n == 0 {
                // Only pods with queries in flight take room.
                map.remove(&self.endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(n: &str) -> EndpointKey {
        EndpointKey {
            namespace: "prod".into(),
            name: n.into(),
        }
    }

    #[test]
    fn one_pod_at_its_cap_does_not_take_another_pods_places() {
        let limits = InFlight::new(2);
        let a1 = limits.try_enter(&ep("a")).unwrap();
        let _a2 = limits.try_enter(&ep("a")).unwrap();
        assert!(limits.try_enter(&ep("a")).is_none(), "a is at its cap");
        assert!(limits.try_enter(&ep("b")).is_some(), "b is not");
        drop(a1);
        assert!(limits.try_enter(&ep("a")).is_some(), "a place freed");
    }

    #[test]
    fn the_map_only_holds_pods_with_queries_in_flight() {
        let limits = InFlight::new(0);
        for i in 0..100 {
            let _g = limits.try_enter(&ep(&format!("p{i}"))).unwrap();
        }
        assert!(limits.by_endpoint.lock().unwrap().is_empty());
    }
}
