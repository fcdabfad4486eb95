//! What one pod may cost the others: a cap on each pod's queries in flight.
//! (The rate of new names a pod may learn is the sink's decision,
//! [`crate::LearnSink::admit`]; the proxy's total in flight is capped by the
//! listeners.)

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

/// Datagrams per second one source address may send, shed on receipt —
/// before any parsing or task — so a flooding pod costs the proxy little
/// more than the read and cannot fill the socket everyone shares.
#[derive(Debug)]
pub struct SourceRate {
    per_second: f64,
    burst: f64,
    buckets: HashMap<std::net::IpAddr, (f64, std::time::Instant)>,
}

/// Sources tracked before idle ones (refilled to the burst) are forgotten.
const MAX_SOURCES: usize = 65_536;

impl SourceRate {
    /// `per_second == 0`: no limit.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            // One second's worth absorbs a resolver library's bursts.
            burst: f64::from(per_second.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Whether one more datagram from `source` at `now` fits.
    pub fn admit(&mut self, source: std::net::IpAddr, now: std::time::Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            let (rate, burst) = (self.per_second, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod source_rate_tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_flooding_source_is_shed_and_others_are_not() {
        let mut r = SourceRate::new(100);
        let t0 = Instant::now();
        let a: std::net::IpAddr = "10.0.1.10".parse().unwrap();
        let b: std::net::IpAddr = "10.0.2.10".parse().unwrap();
        let passed = (0..1000).filter(|_| r.admit(a, t0)).count();
        assert_eq!(passed, 100, "one second's worth");
        assert!(r.admit(b, t0));
        assert!(
            r.admit(a, t0 + Duration::from_millis(20)),
            "refills at the rate"
        );
    }

    fn addr(i: u32) -> std::net::IpAddr {
        std::net::Ipv4Addr::from(0x0a00_0000 + i).into()
    }

    #[test]
    fn sources_are_tracked_in_bounded_memory_without_forgetting_a_flooder() {
        let mut r = SourceRate::new(100);
        let t0 = Instant::now();
        // A flooder empties its bucket...
        let flooder = addr(0);
        let passed = (0..1000).filter(|_| r.admit(flooder, t0)).count();
        assert_eq!(passed, 100);
        // ...and spoofed sources fill the table, one datagram each.
        for i in 1..MAX_SOURCES as u32 {
            assert!(r.admit(addr(i), t0));
        }
        assert_eq!(
            r.buckets.len(),
            MAX_SOURCES,
            "nothing forgotten below the cap"
        );
        // Half a second on, the one-datagram sources are full again (as
        // good as new), the flooder is not: a new source makes room by
        // forgetting the former only.
        let t1 = t0 + Duration::from_millis(500);
        let newcomer = addr(MAX_SOURCES as u32 + 1);
        assert!(r.admit(newcomer, t1));
        assert_eq!(r.buckets.len(), 2, "the flooder and the newcomer");
        let passed = (0..1000).filter(|_| r.admit(flooder, t1)).count();
        assert_eq!(
            passed, 50,
            "the flooder got half a second's refill, not a new burst"
        );
        // More new sources are tracked without another sweep.
        for i in 0..10 {
            assert!(r.admit(addr(MAX_SOURCES as u32 + 10 + i), t1));
        }
        assert_eq!(r.buckets.len(), 12);
    }

    #[test]
    fn a_sweep_keeps_a_half_drained_source_at_what_it_has_left() {
        let mut r = SourceRate::new(100);
        let t0 = Instant::now();
        let half = addr(0);
        let passed = (0..50).filter(|_| r.admit(half, t0)).count();
        assert_eq!(passed, 50, "half its burst spent");
        for i in 1..MAX_SOURCES as u32 {
            assert!(r.admit(addr(i), t0));
        }
        // 30 ms on: the others are full again and go; `half` has about 53
        // tokens, which it keeps (forgetting it would hand it 100).
        let t1 = t0 + Duration::from_millis(30);
        assert!(r.admit(addr(MAX_SOURCES as u32 + 1), t1));
        assert_eq!(r.buckets.len(), 2);
        let passed = (0..1000).filter(|_| r.admit(half, t1)).count();
        assert!((50..60).contains(&passed), "{passed}");
    }

    #[test]
    fn below_the_cap_a_new_source_costs_no_sweep() {
        let mut r = SourceRate::new(100);
        let t0 = Instant::now();
        assert!(r.admit(addr(1), t0));
        assert!(r.admit(addr(2), t0 + Duration::from_secs(5)));
        assert_eq!(
            r.buckets.len(),
            2,
            "the idle source stays until the table is full"
        );
    }
}
