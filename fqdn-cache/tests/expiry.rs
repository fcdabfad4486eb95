//! When a learned address expires, and what re-learning it costs: the
//! expiry is the answer's TTL from the learn, rounded up to the next whole
//! second, so a name answered again within the same second leaves the
//! datapath entry as it is (no map write on the DNS answer path).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::{Config, FqdnCache, PolicyView, PortSpec, Time};
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

const IP: &str = "192.0.2.7";

fn ip() -> IpAddr {
    IP.parse().unwrap()
}

/// The expiry the datapath was told in `diff`'s one put.
fn written_expiry(diff: &fqdn_cache::Diff) -> Time {
    assert_eq!(diff.put.len(), 1, "{diff:?}");
    diff.put[0].1[0].expires_at
}

#[test]
fn the_expiry_is_the_ttl_rounded_up_to_a_whole_second() {
    let mut c = cache();
    let now = Time(1_000 * 1_000_000_000 + 250_000_000); // 1000.25 s
    let d = c.learn(now, &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&d), Time::from_secs(1_031));
    // Already whole: unchanged.
    let mut c = cache();
    let d = c.learn(
        Time::from_secs(1_000),
        &ep(),
        "api.example.com",
        &[(ip(), 30)],
    );
    assert_eq!(written_expiry(&d), Time::from_secs(1_030));
}

#[test]
fn an_answer_repeated_within_the_second_writes_nothing_and_the_next_second_does() {
    let mut c = cache();
    let t0 = Time(1_000 * 1_000_000_000 + 100_000_000); // 1000.1 s
    let first = c.learn(t0, &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&first), Time::from_secs(1_031));
    for ms in [1, 200, 899] {
        let again = c.learn(
            t0.plus(Time::from_millis(ms)),
            &ep(),
            "api.example.com",
            &[(ip(), 30)],
        );
        assert!(again.is_empty(), "{ms} ms later: {again:?}");
    }
    // A cached answer a second on, its TTL counted down by one: the same
    // expiry, nothing to write either.
    let cached = c.learn(t0.plus_secs(1), &ep(), "api.example.com", &[(ip(), 29)]);
    assert!(cached.is_empty(), "{cached:?}");
    // The full TTL a second on moves the expiry: one write.
    let later = c.learn(t0.plus_secs(1), &ep(), "api.example.com", &[(ip(), 30)]);
    assert_eq!(written_expiry(&later), Time::from_secs(1_032));
}
