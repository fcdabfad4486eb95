//! Each pod's budget of new names: a token bucket per pod, refilled at a
//! steady rate up to a burst. Looking up a name the pod already learned
//! costs nothing; a new one costs a token, and with none left the lookup is
//! refused (SERVFAIL) before it reaches the upstream — so one pod walking
//! through endless unique names cannot grow the cache, the maps and the
//! proxy's work without bound, or slow the other pods down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use policy::EndpointKey;

/// The budget: `per_second` new names on average, `burst` at once.
#[derive(Debug)]
pub struct NameBudget {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<EndpointKey, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl NameBudget {
    /// `per_second == 0` means no limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// No limit.
    pub fn unlimited() -> Self {
        Self::new(0, 0)
    }

    /// Takes one new name from `endpoint`'s budget at `now`; false if none
    /// is left.
    pub fn take(&self, endpoint: &EndpointKey, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(endpoint.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets pods that are gone (their buckets would refill to full
    /// anyway), keeping the map as small as the node's pods.
    pub fn retain(&self, keep: impl Fn(&EndpointKey) -> bool) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ep(n: &str) -> EndpointKey {
        EndpointKey {
            namespace: "prod".into(),
            name: n.into(),
        }
    }

    #[test]
    fn a_burst_then_the_rate_and_pods_do_not_share_a_budget() {
        let b = NameBudget::new(10, 5);
        let t0 = Instant::now();
        let taken = (0..20).filter(|_| b.take(&ep("a"), t0)).count();
        assert_eq!(taken, 5, "the burst");
        assert!(b.take(&ep("b"), t0), "another pod has its own budget");
        assert!(
            !b.take(&ep("a"), t0 + Duration::from_millis(50)),
            "half a token"
        );
        assert!(
            b.take(&ep("a"), t0 + Duration::from_millis(100)),
            "one token after 1/10 s"
        );
        let later = t0 + Duration::from_secs(60);
        let taken = (0..20).filter(|_| b.take(&ep("a"), later)).count();
        assert_eq!(taken, 5, "refilled to the burst, not beyond");
    }

    #[test]
    fn zero_means_no_limit() {
        let b = NameBudget::unlimited();
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| b.take(&ep("a"), t0)));
    }
}
