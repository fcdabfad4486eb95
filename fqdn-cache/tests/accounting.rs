//! What the cache reports about itself — sizes and counters, which feed
//! /metrics and the operator's view of caps — and an address two names
//! share. (Changes to these went unnoticed by the other tests; see
//! TESTING.md.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::{Config, FqdnCache, FqdnEntries, PolicyView, PortSpec, Time};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::EndpointKey;

fn ep() -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: "app".into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cache(config: Config) -> FqdnCache {
    let mut b = FqdnMatcherBuilder::default();
    let id = b.insert(FqdnSelector::pattern("*").unwrap());
    let view = PolicyView::new(
        Arc::new(b.build()),
        HashMap::from([(ep(), vec![(id, vec![PortSpec::All])])]),
    );
    FqdnCache::new(config, view)
}

#[test]
fn sizes_and_counters_say_exactly_what_was_learned_and_evicted() {
    let mut c = cache(Config {
        max_ips_per_name: 2,
        ..Config::default()
    });
    assert!(c.is_empty());
    assert_eq!(c.len(), (0, 0));
    let t = Time::from_secs(0);
    c.learn(t, &ep(), "a.test", &[(ip("192.0.2.1"), 60)]);
    c.learn(
        t,
        &ep(),
        "b.test",
        &[
            (ip("192.0.2.2"), 60),
            (ip("192.0.2.3"), 60),
            (ip("192.0.2.4"), 60),
        ],
    );
    assert!(!c.is_empty());
    assert_eq!(c.len(), (2, 3), "two names, 1 + 2 addresses (the cap)");
    let k = c.counters();
    assert_eq!(k.answers, 2);
    assert_eq!(k.ips_learned, 3, "the truncated address was not learned");
    assert_eq!(k.ips_evicted, 1);
}

#[test]
fn an_address_two_names_share_stays_known_while_either_holds_it() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    let shared = ip("198.51.100.7");
    let t = Time::from_secs(0);
    c.learn(t, &ep(), "a.test", &[(shared, 10)])
        .apply_to(&mut map);
    c.learn(t, &ep(), "b.test", &[(shared, 100)])
        .apply_to(&mut map);
    c.learn(t, &ep(), "b.test", &[(shared, 100)])
        .apply_to(&mut map); // again: indexed once
    let names = |c: &FqdnCache| {
        c.names_for_ip(&ep(), shared)
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&c), ["a.test", "b.test"]);
    // a.test's answer expires; b.test still holds the address.
    c.expire(Time::from_secs(20), &fqdn_cache::NoConnections)
        .apply_to(&mut map);
    assert_eq!(names(&c), ["b.test"]);
    assert!(
        map.contains_key(&(ep(), shared)),
        "still open through b.test"
    );
    c.expire(Time::from_secs(200), &fqdn_cache::NoConnections)
        .apply_to(&mut map);
    assert!(names(&c).is_empty());
    assert!(map.is_empty());
}
