//! When a learned address expires, and what re-learning it costs: the
//! expiry is the answer's TTL from the learn, rounded up to the next tenth
//! of a second ([`EXPIRY_STEP`]), so a name answered again within the same
//! tenth leaves the datapath entry as it is (no map write on the DNS
//! answer path).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::{Config, FqdnCache, PolicyView, PortSpec, Time, EXPIRY_STEP};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::EndpointKey;

fn ep() -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: "app".into(),
    }
}

fn cache() -> FqdnCache {
    let mut b = FqdnMatcherBuilder::default();
    let id = b.insert(FqdnSelector::pattern("*").unwrap());
    let view = PolicyView::new(
        Arc::new(b.build()),
        HashMap::from([(ep(), vec![(id, vec![PortSpec::All])])]),
    );
    FqdnCache::new(Config::default(), view)
}

fn ip() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

fn ms(ms: u64) -> Time {
    Time::from_millis(ms)
}

/// The expiry the datapath was told in `diff`'s one put.
fn written_expiry(diff: &fqdn_cache::Diff) -> Time {
    assert_eq!(diff.put.len(), 1, "{diff:?}");
    diff.put[0].1[0].expires_at
}

#[test]
fn the_expiry_is_the_ttl_rounded_up_to_a_tenth_of_a_second() {
    assert_eq!(EXPIRY_STEP, ms(100));
    let mut c = cache();
    let d = c.learn(ms(1_000_250), &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&d), ms(1_030_300));
    // Already on the grid: unchanged.
    let mut c = cache();
    let d = c.learn(ms(1_000_200), &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&d), ms(1_030_200));
}

#[test]
fn an_answer_repeated_within_the_tenth_writes_nothing_and_the_next_tenth_does() {
    let mut c = cache();
    let t0 = ms(1_000_010);
    let first = c.learn(t0, &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&first), ms(1_030_100));
    for later in [1, 50, 89] {
        let again = c.learn(t0.plus(ms(later)), &ep(), "api.example.com", &[(ip(), 30)]);
        assert!(again.is_empty(), "{later} ms later: {again:?}");
    }
    // A cached answer a second on, its TTL counted down by one: an earlier
    // expiry than the one written, nothing to write either.
    let cached = c.learn(t0.plus_secs(1), &ep(), "api.example.com", &[(ip(), 29)]);
    assert!(cached.is_empty(), "{cached:?}");
    // The full TTL in the next tenth moves the expiry: one write.
    let later = c.learn(t0.plus(ms(100)), &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&later), ms(1_030_200));
}
