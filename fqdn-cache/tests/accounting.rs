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

/// Every name allowed on every port.
fn any_name() -> PolicyView {
    let mut b = FqdnMatcherBuilder::default();
    let id = b.insert(FqdnSelector::pattern("*").unwrap());
    PolicyView::new(
        Arc::new(b.build()),
        HashMap::from([(ep(), vec![(id, vec![PortSpec::All])])]),
    )
}

fn cache(config: Config) -> FqdnCache {
    FqdnCache::new(config, any_name())
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
    let five: Vec<(IpAddr, u32)> = (2..7).map(|i| (ip(&format!("192.0.2.{i}")), 60)).collect();
    c.learn(t, &ep(), "b.test", &five);
    assert!(!c.is_empty());
    assert_eq!(c.len(), (2, 3), "two names, 1 + 2 addresses (the cap)");
    let k = c.counters();
    assert_eq!(k.answers, 2);
    assert_eq!(
        k.ips_learned, 3,
        "the 3 truncated addresses were not learned"
    );
    assert_eq!(k.ips_evicted, 3);
    assert!(
        c.has_name(&ep(), "A.TEST."),
        "names compare as DNS names do"
    );
    assert!(!c.has_name(&ep(), "c.test"));
    assert!(!c.has_name(&ep(), ""), "not a name");
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
    // Both again (the first holder too): each name holds the address once.
    c.learn(t, &ep(), "a.test", &[(shared, 10)])
        .apply_to(&mut map);
    c.learn(t, &ep(), "b.test", &[(shared, 100)])
        .apply_to(&mut map);
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

#[test]
fn a_zombie_is_counted_once_however_many_times_gc_finds_it_alive() {
    let mut c = cache(Config::default());
    let a = ip("192.0.2.9");
    c.learn(Time::from_secs(0), &ep(), "z.test", &[(a, 1)]);
    let alive = |_: &EndpointKey, _: IpAddr| true;
    for s in [10, 20, 30] {
        c.expire(Time::from_secs(s), &alive);
    }
    assert_eq!(c.counters().zombies, 1);
}

#[test]
fn grants_over_the_per_entry_cap_are_counted_exactly() {
    // Ten selectors, each opening another port for its own names; ten such
    // names resolving to one address make one entry with ten grants.
    let mut b = FqdnMatcherBuilder::default();
    let mut selectors = Vec::new();
    for port in 0..10u16 {
        let id = b.insert(FqdnSelector::pattern(&format!("*{port}.test")).unwrap());
        let spec = PortSpec::Range {
            start: 8000 + port,
            end: 8000 + port,
            protocol: policy::rules::ProtocolSpec::Tcp,
        };
        selectors.push((id, vec![spec]));
    }
    let view = PolicyView::new(Arc::new(b.build()), HashMap::from([(ep(), selectors)]));
    let mut c = FqdnCache::new(
        Config {
            max_grants_per_entry: 8,
            ..Config::default()
        },
        view,
    );
    let a = ip("192.0.2.10");
    let mut map = FqdnEntries::new();
    for port in 0..10 {
        c.learn(
            Time::from_secs(0),
            &ep(),
            &format!("x{port}.test"),
            &[(a, 60)],
        )
        .apply_to(&mut map);
    }
    assert_eq!(map[&(ep(), a)].len(), 8, "the entry keeps the cap");
    let dropped = c.counters().grants_dropped;
    assert!(dropped > 0);
    // The entry was rebuilt on each of the last learns past the cap: 1 grant
    // over at the 9th, 2 at the 10th.
    assert_eq!(dropped, 1 + 2);
}

#[test]
fn a_name_reusing_an_evicted_names_slot_holds_only_its_own_addresses() {
    // Two names per endpoint: a third evicts the least recently learned one,
    // and the newcomer takes over its storage.
    let mut c = cache(Config {
        max_names_per_endpoint: 2,
        ..Config::default()
    });
    let mut map = FqdnEntries::new();
    let (x, y, z) = (ip("192.0.2.21"), ip("192.0.2.22"), ip("192.0.2.23"));
    let names = |c: &FqdnCache, ip: IpAddr| {
        c.names_for_ip(&ep(), ip)
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    let t = Time::from_secs(0);
    c.learn(t, &ep(), "a.test", &[(x, 60), (z, 60)])
        .apply_to(&mut map);
    c.learn(Time::from_secs(1), &ep(), "b.test", &[(y, 60)])
        .apply_to(&mut map);
    // c.test evicts a.test and reuses its slot, learning one of a.test's
    // addresses again.
    c.learn(Time::from_secs(2), &ep(), "c.test", &[(x, 60)])
        .apply_to(&mut map);
    assert!(!c.has_name(&ep(), "a.test"));
    assert_eq!(names(&c, x), ["c.test"], "once, and not a.test");
    assert!(
        names(&c, z).is_empty(),
        "a.test's other address went with it"
    );
    assert!(!map.contains_key(&(ep(), z)), "and is closed");
    assert!(map.contains_key(&(ep(), x)));
    assert_eq!(c.len(), (2, 2));
    // Learned again, and shared with a name reusing b.test's slot.
    c.learn(Time::from_secs(3), &ep(), "c.test", &[(x, 60)])
        .apply_to(&mut map);
    c.learn(Time::from_secs(4), &ep(), "d.test", &[(x, 60)])
        .apply_to(&mut map);
    assert_eq!(names(&c, x), ["c.test", "d.test"]);
    assert!(names(&c, y).is_empty());
    assert!(!map.contains_key(&(ep(), y)));
    // Each name's expiry is its own: c.test goes, d.test keeps x open.
    c.learn(Time::from_secs(50), &ep(), "d.test", &[(x, 60)])
        .apply_to(&mut map);
    c.expire(Time::from_secs(70), &fqdn_cache::NoConnections)
        .apply_to(&mut map);
    assert_eq!(names(&c, x), ["d.test"]);
    assert!(map.contains_key(&(ep(), x)));
    assert_eq!(c.len(), (1, 1));
}

/// A repeated answer changes no grant (no map write) but still counts as
/// learned and still makes its name and addresses the most recently seen,
/// which decides what the caps drop first.
#[test]
fn a_repeated_answer_writes_nothing_and_keeps_its_name_and_addresses_fresh() {
    let mut c = cache(Config {
        max_ips_per_name: 2,
        max_names_per_endpoint: 2,
        ..Config::default()
    });
    let (a, b, x) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.9"));
    let mut map = FqdnEntries::new();
    c.learn(Time::from_secs(0), &ep(), "a.test", &[(a, 60), (b, 60)])
        .apply_to(&mut map);
    c.learn(Time::from_secs(1), &ep(), "x.test", &[(x, 60)])
        .apply_to(&mut map);
    let learned = c.counters().ips_learned;
    // a.test again, two seconds later, with its TTL counted down by them
    // (as a cache serves it): the same expiry, nothing to write.
    let again = c.learn(Time::from_secs(2), &ep(), "a.test", &[(a, 58)]);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(c.counters().ips_learned, learned + 1);
    // a.test is now fresher than x.test: a third name evicts x.test.
    c.learn(
        Time::from_secs(3),
        &ep(),
        "y.test",
        &[(ip("192.0.2.20"), 60)],
    )
    .apply_to(&mut map);
    assert!(c.has_name(&ep(), "a.test"));
    assert!(!c.has_name(&ep(), "x.test"));
    // a was answered again, b was not: a third address of a.test drops b.
    c.learn(
        Time::from_secs(4),
        &ep(),
        "a.test",
        &[(ip("192.0.2.3"), 60)],
    )
    .apply_to(&mut map);
    let held: Vec<IpAddr> = map
        .keys()
        .filter(|(_, i)| *i != x)
        .map(|(_, i)| *i)
        .collect();
    assert!(held.contains(&a) && !held.contains(&b), "{held:?}");
    // An answer that extends an address is written.
    let later = c.learn(Time::from_secs(30), &ep(), "a.test", &[(a, 60)]);
    assert!(!later.is_empty());
}

/// A cache saved under a larger per-name cap and restored under a smaller
/// one: the next answer for such a name, even one that changes nothing
/// else, brings it down to the cap.
#[test]
fn a_name_restored_over_a_lowered_cap_is_trimmed_by_its_next_answer() {
    let four: Vec<(IpAddr, u32)> = (1..=4).map(|i| (ip(&format!("192.0.2.{i}")), 60)).collect();
    let mut big = cache(Config {
        max_ips_per_name: 4,
        ..Config::default()
    });
    big.learn(Time::from_secs(0), &ep(), "a.test", &four);
    let bytes = fqdn_cache::persist::encode(&big, Time::from_secs(1), "boot");
    let small = Config {
        max_ips_per_name: 2,
        ..Config::default()
    };
    let (mut c, _) =
        fqdn_cache::persist::decode(&bytes, small, any_name(), Time::from_secs(1), "boot").unwrap();
    assert_eq!(c.len(), (1, 4), "restored as saved");
    // The first address again, its expiry unchanged.
    let diff = c.learn(Time::from_secs(1), &ep(), "a.test", &[(four[0].0, 59)]);
    assert_eq!(c.len(), (1, 2), "trimmed to the cap");
    assert!(!diff.is_empty(), "the trimmed addresses leave the map");
}
