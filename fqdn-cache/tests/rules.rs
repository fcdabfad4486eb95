//! The cache's rules, one behaviour per test: TTLs, refresh, isolation,
//! ports, caps, zombies, policy changes and persistence.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::persist::{self, PersistError};
use fqdn_cache::{
    allows, Config, FqdnCache, FqdnEntries, NoConnections, PolicyView, PortSpec, Time,
};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::rules::ProtocolSpec;
use policy::{EndpointKey, Protocol};
use rstest::rstest;

fn ep(name: &str) -> EndpointKey {
    EndpointKey {
        namespace: "prod".into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(port: u16) -> PortSpec {
    PortSpec::Range {
        start: port,
        end: port,
        protocol: ProtocolSpec::Tcp,
    }
}

/// A view where each endpoint has the given (pattern, ports) selectors.
fn view(per_endpoint: &[(&str, &[(&str, PortSpec)])]) -> PolicyView {
    let mut builder = FqdnMatcherBuilder::default();
    let mut endpoints = HashMap::new();
    for (name, selectors) in per_endpoint {
        let list = selectors
            .iter()
            .map(|(p, ports)| {
                (
                    builder.insert(FqdnSelector::pattern(p).unwrap()),
                    vec![*ports],
                )
            })
            .collect();
        endpoints.insert(ep(name), list);
    }
    PolicyView::new(Arc::new(builder.build()), endpoints)
}

/// `payments` may reach `*.stripe.com` on 443 and `cdn.example` on 80.
fn stripe_view() -> PolicyView {
    view(&[
        (
            "payments",
            &[("*.stripe.com", tcp(443)), ("cdn.example", tcp(80))],
        ),
        ("other", &[("*", PortSpec::All)]),
    ])
}

fn cache(config: Config) -> FqdnCache {
    FqdnCache::new(config, stripe_view())
}

fn secs(s: u64) -> Time {
    Time::from_secs(s)
}

/// Whether the datapath (built only from diffs) lets `e` open `ip:port/TCP` at `now`.
fn open(map: &FqdnEntries, e: &str, addr: &str, port: u16, now: Time) -> bool {
    map.get(&(ep(e), ip(addr)))
        .is_some_and(|g| allows(g, now, port, Protocol::Tcp))
}

#[rstest]
#[case::ttl_wins(300, 0, 2, 300)]
#[case::min_ttl_wins(5, 60, 2, 60)]
#[case::zero_ttl_gets_the_floor(0, 0, 2, 2)]
#[case::short_ttl_gets_the_floor(1, 0, 3, 3)]
fn lifetime(#[case] ttl: u32, #[case] min_ttl: u32, #[case] floor: u32, #[case] want: u64) {
    let config = Config {
        min_ttl,
        ttl_floor: floor,
        ..Config::default()
    };
    let mut c = cache(config);
    let mut map = FqdnEntries::new();
    c.learn(
        secs(100),
        &ep("payments"),
        "api.stripe.com",
        &[(ip("1.1.1.1"), ttl)],
    )
    .apply_to(&mut map);
    assert!(open(
        &map,
        "payments",
        "1.1.1.1",
        443,
        Time(secs(100 + want).0 - 1)
    ));
    assert!(
        !open(&map, "payments", "1.1.1.1", 443, secs(100 + want)),
        "closes exactly at expiry"
    );
}

#[test]
fn re_resolution_extends_and_never_shortens() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    let p = ep("payments");
    c.learn(secs(0), &p, "api.stripe.com", &[(ip("1.1.1.1"), 100)])
        .apply_to(&mut map);
    c.learn(secs(10), &p, "api.stripe.com", &[(ip("1.1.1.1"), 5)])
        .apply_to(&mut map);
    assert!(
        open(&map, "payments", "1.1.1.1", 443, secs(99)),
        "a shorter TTL must not cut the first answer short"
    );
    c.learn(secs(90), &p, "api.stripe.com", &[(ip("1.1.1.1"), 100)])
        .apply_to(&mut map);
    assert!(open(&map, "payments", "1.1.1.1", 443, secs(189)));
    assert!(!open(&map, "payments", "1.1.1.1", 443, secs(190)));
}

#[test]
fn one_pods_lookup_opens_nothing_for_another() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    c.learn(
        secs(0),
        &ep("payments"),
        "api.stripe.com",
        &[(ip("1.1.1.1"), 60)],
    )
    .apply_to(&mut map);
    assert!(open(&map, "payments", "1.1.1.1", 443, secs(1)));
    assert!(!open(&map, "other", "1.1.1.1", 443, secs(1)));
    assert!(c.names_for_ip(&ep("other"), ip("1.1.1.1")).is_empty());
}

#[test]
fn ports_come_from_the_selectors_matching_the_name() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    let d = c.learn(
        secs(0),
        &ep("payments"),
        "API.Stripe.com.",
        &[(ip("1.1.1.1"), 60), (ip("2001:db8::1"), 60)],
    );
    assert_eq!(d.len(), 2);
    d.apply_to(&mut map);
    assert!(open(&map, "payments", "1.1.1.1", 443, secs(1)));
    assert!(open(&map, "payments", "2001:db8::1", 443, secs(1)));
    assert!(!open(&map, "payments", "1.1.1.1", 80, secs(1)), "443 only");
    let Some((_, grants)) = d.put.first() else {
        panic!("{d:?}")
    };
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].expires_at, secs(60));
}

#[test]
fn two_names_on_one_ip_keep_their_own_ports_and_expiries() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    let p = ep("payments");
    c.learn(secs(0), &p, "api.stripe.com", &[(ip("1.1.1.1"), 10)])
        .apply_to(&mut map);
    c.learn(secs(0), &p, "cdn.example", &[(ip("1.1.1.1"), 100)])
        .apply_to(&mut map);
    assert!(open(&map, "payments", "1.1.1.1", 443, secs(9)));
    assert!(
        !open(&map, "payments", "1.1.1.1", 443, secs(10)),
        "443 closes with api.stripe.com's TTL"
    );
    assert!(
        open(&map, "payments", "1.1.1.1", 80, secs(50)),
        "80 stays open with cdn.example's TTL"
    );
    let mut names: Vec<String> = c
        .names_for_ip(&p, ip("1.1.1.1"))
        .iter()
        .map(|n| n.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["api.stripe.com", "cdn.example"]);
}

#[test]
fn a_name_no_selector_allows_is_remembered_but_opens_nothing() {
    let mut c = cache(Config::default());
    let d = c.learn(
        secs(0),
        &ep("payments"),
        "evil.example.org",
        &[(ip("6.6.6.6"), 60)],
    );
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(c.lookup(&ep("payments"), "evil.example.org").len(), 1);
    // ... and a policy change that allows it opens it without a new lookup.
    let v = view(&[("payments", &[("evil.example.org", tcp(443))])]);
    let d = c.set_view(v);
    let mut map = FqdnEntries::new();
    d.apply_to(&mut map);
    assert!(open(&map, "payments", "6.6.6.6", 443, secs(1)));
    // ... and removing it closes it at once.
    c.set_view(view(&[])).apply_to(&mut map);
    assert!(map.is_empty(), "{map:?}");
}

#[test]
fn invalid_query_names_learn_nothing_and_are_counted() {
    let mut c = cache(Config::default());
    for bad in ["", ".", "a..b", "bad name.com", "x\0y.com"] {
        assert!(c
            .learn(secs(0), &ep("other"), bad, &[(ip("1.1.1.1"), 60)])
            .is_empty());
    }
    assert_eq!(c.counters().invalid_names, 5);
    assert!(c.is_empty());
}

#[test]
fn ips_per_name_cap_evicts_the_oldest_first() {
    let mut c = cache(Config {
        max_ips_per_name: 2,
        ..Config::default()
    });
    let mut map = FqdnEntries::new();
    let p = ep("payments");
    c.learn(secs(0), &p, "api.stripe.com", &[(ip("1.0.0.1"), 100)])
        .apply_to(&mut map);
    c.learn(secs(1), &p, "api.stripe.com", &[(ip("1.0.0.2"), 100)])
        .apply_to(&mut map);
    c.learn(secs(2), &p, "api.stripe.com", &[(ip("1.0.0.3"), 100)])
        .apply_to(&mut map);
    assert!(
        !open(&map, "payments", "1.0.0.1", 443, secs(3)),
        "oldest evicted"
    );
    assert!(open(&map, "payments", "1.0.0.2", 443, secs(3)));
    assert!(open(&map, "payments", "1.0.0.3", 443, secs(3)));
    // An answer larger than the cap keeps only its first IPs.
    c.learn(
        secs(3),
        &p,
        "api.stripe.com",
        &[
            (ip("1.0.0.4"), 100),
            (ip("1.0.0.5"), 100),
            (ip("1.0.0.6"), 100),
        ],
    )
    .apply_to(&mut map);
    assert_eq!(c.lookup(&p, "api.stripe.com").len(), 2);
    assert!(open(&map, "payments", "1.0.0.4", 443, secs(4)));
    assert!(!open(&map, "payments", "1.0.0.6", 443, secs(4)));
    assert_eq!(c.counters().ips_evicted, 1 + 1 + 2);
    assert_eq!(map.len(), 2, "no more entries than the cap: {map:?}");
}

#[test]
fn names_per_endpoint_cap_evicts_the_least_recently_learned() {
    let mut c = FqdnCache::new(
        Config {
            max_names_per_endpoint: 2,
            ..Config::default()
        },
        view(&[("other", &[("*", PortSpec::All)])]),
    );
    let mut map = FqdnEntries::new();
    let o = ep("other");
    c.learn(secs(0), &o, "a.test", &[(ip("1.0.0.1"), 100)])
        .apply_to(&mut map);
    c.learn(secs(1), &o, "b.test", &[(ip("1.0.0.2"), 100)])
        .apply_to(&mut map);
    c.learn(secs(2), &o, "a.test", &[(ip("1.0.0.1"), 100)])
        .apply_to(&mut map); // a is fresher now
    c.learn(secs(3), &o, "c.test", &[(ip("1.0.0.3"), 100)])
        .apply_to(&mut map);
    assert!(
        c.lookup(&o, "b.test").is_empty(),
        "b was least recently learned"
    );
    assert!(!open(&map, "other", "1.0.0.2", 443, secs(4)));
    assert!(open(&map, "other", "1.0.0.1", 443, secs(4)));
    assert!(open(&map, "other", "1.0.0.3", 443, secs(4)));
    assert_eq!(c.counters().names_evicted, 1);
}

#[test]
fn grants_per_entry_cap_keeps_fewer_never_more() {
    let mut builder = FqdnMatcherBuilder::default();
    let selectors: Vec<_> = (0..5u16)
        .map(|i| {
            (
                builder.insert(FqdnSelector::name(&format!("n{i}.test")).unwrap()),
                vec![tcp(1000 + i)],
            )
        })
        .collect();
    let v = PolicyView::new(
        Arc::new(builder.build()),
        HashMap::from([(ep("x"), selectors)]),
    );
    let mut c = FqdnCache::new(
        Config {
            max_grants_per_entry: 3,
            ..Config::default()
        },
        v,
    );
    let mut map = FqdnEntries::new();
    for i in 0..5u64 {
        c.learn(
            secs(i),
            &ep("x"),
            &format!("n{i}.test"),
            &[(ip("9.9.9.9"), 100)],
        )
        .apply_to(&mut map);
    }
    let grants = &map[&(ep("x"), ip("9.9.9.9"))];
    assert_eq!(grants.len(), 3);
    let open_ports = (1000..1005)
        .filter(|p| open(&map, "x", "9.9.9.9", *p, secs(5)))
        .count();
    assert_eq!(open_ports, 3);
    assert!(c.counters().grants_dropped > 0);
}

#[test]
fn expired_entries_go_and_their_datapath_entries_with_them() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    c.learn(
        secs(0),
        &ep("payments"),
        "api.stripe.com",
        &[(ip("1.1.1.1"), 10)],
    )
    .apply_to(&mut map);
    assert!(c.expire(secs(9), &NoConnections).is_empty());
    let d = c.expire(secs(10), &NoConnections);
    assert_eq!(
        (d.put.clone(), d.del.clone()),
        (vec![], vec![(ep("payments"), ip("1.1.1.1"))])
    );
    d.apply_to(&mut map);
    assert!(map.is_empty());
    assert!(c.is_empty());
    assert_eq!(c.counters().expired, 1);
}

#[test]
fn zombies_stay_nameable_while_connected_then_go_after_the_grace() {
    let mut c = cache(Config {
        zombie_grace: 5,
        ..Config::default()
    });
    let mut map = FqdnEntries::new();
    let p = ep("payments");
    c.learn(secs(0), &p, "api.stripe.com", &[(ip("1.1.1.1"), 10)])
        .apply_to(&mut map);
    let connected = |e: &EndpointKey, a: IpAddr| e.name == "payments" && a == ip("1.1.1.1");
    c.expire(secs(10), &connected).apply_to(&mut map);
    assert!(
        !open(&map, "payments", "1.1.1.1", 443, secs(10)),
        "a zombie never allows a new connection"
    );
    assert!(map.is_empty(), "the datapath entry is gone: {map:?}");
    assert_eq!(
        c.names_for_ip(&p, ip("1.1.1.1")).len(),
        1,
        "still nameable for flow logs"
    );
    assert!(c.lookup(&p, "api.stripe.com")[0].zombie);
    c.expire(secs(20), &connected).apply_to(&mut map);
    assert_eq!(c.names_for_ip(&p, ip("1.1.1.1")).len(), 1);
    // The connection ends; within the grace the name stays, after it, it goes.
    c.expire(secs(24), &NoConnections).apply_to(&mut map);
    assert_eq!(c.names_for_ip(&p, ip("1.1.1.1")).len(), 1);
    c.expire(secs(25), &NoConnections).apply_to(&mut map);
    assert!(c.names_for_ip(&p, ip("1.1.1.1")).is_empty());
    assert_eq!(c.counters().zombies, 1);
    // A fresh answer revives an IP that was a zombie.
    c.learn(secs(30), &p, "api.stripe.com", &[(ip("1.1.1.1"), 10)])
        .apply_to(&mut map);
    assert!(open(&map, "payments", "1.1.1.1", 443, secs(31)));
}

#[test]
fn removing_an_endpoint_removes_its_entries() {
    let mut c = cache(Config::default());
    let mut map = FqdnEntries::new();
    c.learn(
        secs(0),
        &ep("payments"),
        "api.stripe.com",
        &[(ip("1.1.1.1"), 60)],
    )
    .apply_to(&mut map);
    c.learn(secs(0), &ep("other"), "x.test", &[(ip("2.2.2.2"), 60)])
        .apply_to(&mut map);
    c.remove_endpoint(&ep("payments")).apply_to(&mut map);
    assert_eq!(
        map.keys().map(|(e, _)| e.name.as_str()).collect::<Vec<_>>(),
        ["other"]
    );
}

// ------------------------------------------------------------ persistence --

#[test]
fn persist_restore_round_trip_drops_what_expired_meanwhile() {
    let mut c = cache(Config::default());
    c.learn(
        secs(0),
        &ep("payments"),
        "api.stripe.com",
        &[(ip("1.1.1.1"), 100)],
    );
    c.learn(
        secs(0),
        &ep("payments"),
        "cdn.example",
        &[(ip("2.2.2.2"), 10)],
    );
    c.learn(secs(0), &ep("other"), "x.test", &[(ip("3.3.3.3"), 1000)]);
    let bytes = persist::encode(&c, secs(5), "boot-1");
    let (restored, report) =
        persist::decode(&bytes, Config::default(), stripe_view(), secs(50), "boot-1").unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(report.ips, 2);
    assert_eq!(report.names, 2, "api.stripe.com and x.test");
    let mut want = c.clone();
    want.expire(secs(50), &NoConnections);
    assert_eq!(restored.full_state(), want.full_state());
    assert_eq!(
        restored.lookup(&ep("payments"), "api.stripe.com"),
        want.lookup(&ep("payments"), "api.stripe.com")
    );
    assert!(restored.lookup(&ep("payments"), "cdn.example").is_empty());
}

#[test]
fn a_file_from_another_boot_restores_nothing() {
    let mut c = cache(Config::default());
    c.learn(
        secs(0),
        &ep("payments"),
        "api.stripe.com",
        &[(ip("1.1.1.1"), 100)],
    );
    let bytes = persist::encode(&c, secs(1), "boot-1");
    let (restored, report) =
        persist::decode(&bytes, Config::default(), stripe_view(), secs(2), "boot-2").unwrap();
    assert!(restored.is_empty());
    assert_eq!(report.other_boot, 1);
}

#[rstest]
#[case::empty(b"".to_vec(), "not a valid")]
#[case::garbage(b"\x00\xffnot json".to_vec(), "not a valid")]
#[case::other_json(br#"{"hello": 1}"#.to_vec(), "missing \"format\"")]
#[case::wrong_types(br#"{"format":"tollgate-fqdn-cache","version":1,"boot_id":"b","saved_at":"x","endpoints":[]}"#.to_vec(), "not a valid")]
#[case::truncated(br#"{"format":"tollgate-fqdn-cache","version":1,"boot_id":"b","saved_at":1,"endpoints":[{"namespace":"#.to_vec(), "not a valid")]
#[case::newer(br#"{"format":"tollgate-fqdn-cache","version":7,"whatever":true}"#.to_vec(), "version 7, newer than the 1")]
fn bad_files_are_reported_not_trusted(#[case] bytes: Vec<u8>, #[case] message: &str) {
    let err = persist::decode(&bytes, Config::default(), stripe_view(), secs(0), "b").unwrap_err();
    assert!(err.to_string().contains(message), "{err}");
    if message.starts_with("version") {
        assert!(matches!(
            err,
            PersistError::NewerVersion {
                found: 7,
                supported: 1
            }
        ));
    }
}

#[test]
fn a_hand_edited_bad_name_is_skipped() {
    let bytes = br#"{"format":"tollgate-fqdn-cache","version":1,"boot_id":"b","saved_at":1,"endpoints":[
        {"namespace":"prod","name":"payments","names":[
          {"name":"bad name!","last_learned":1,"ips":[{"ip":"1.1.1.1","learned_at":1,"expires_at":999999999999}]},
          {"name":"api.stripe.com","last_learned":1,"ips":[{"ip":"2.2.2.2","learned_at":1,"expires_at":999999999999}]}]}]}"#;
    let (c, report) =
        persist::decode(bytes, Config::default(), stripe_view(), secs(1), "b").unwrap();
    assert_eq!(report.invalid, 1);
    assert_eq!(c.len(), (1, 1));
}

#[test]
fn save_atomic_replaces_the_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/fqdn-cache.json");
    assert!(
        persist::load(&path).unwrap().is_none(),
        "no file yet is not an error"
    );
    persist::save_atomic(&path, b"first").unwrap();
    persist::save_atomic(&path, b"second").unwrap();
    assert_eq!(persist::load(&path).unwrap().unwrap(), b"second");
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}

#[test]
fn the_view_of_the_stripe_seed_policy_opens_443_for_payments_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let report = policy::load_paths(&[root.join("policies")]);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    let set = policy::PolicySet::new(report.policies);
    let inventory = policy::Inventory::load(&root.join("endpoints.yaml")).unwrap();
    let resolved = set.resolve(&inventory, policy::ResolveOptions::default());
    let mut c = FqdnCache::new(Config::default(), PolicyView::from_resolved(&resolved));
    let mut map = FqdnEntries::new();
    let answer = [(ip("203.0.113.10"), 60)];
    c.learn(secs(0), &ep("payments"), "api.stripe.com.", &answer)
        .apply_to(&mut map);
    c.learn(secs(0), &ep("frontend"), "api.stripe.com.", &answer)
        .apply_to(&mut map);
    c.learn(
        secs(0),
        &ep("payments"),
        "www.stripe.com.",
        &[(ip("203.0.113.11"), 60)],
    )
    .apply_to(&mut map);
    assert!(open(&map, "payments", "203.0.113.10", 443, secs(1)));
    assert!(!open(&map, "payments", "203.0.113.10", 80, secs(1)));
    assert!(
        !open(&map, "frontend", "203.0.113.10", 443, secs(1)),
        "frontend has no toFQDNs rule"
    );
    assert!(
        !open(&map, "payments", "203.0.113.11", 443, secs(1)),
        "www.stripe.com is not in the policy"
    );
    assert_eq!(map.len(), 1, "{map:?}");
}

#[test]
fn a_cache_file_that_cannot_be_read_is_an_error_not_an_empty_cache() {
    // Starting empty would forget every learned address (and close every
    // pod's connections to them) because of, say, a permissions mistake.
    let dir = tempfile::tempdir().unwrap();
    let e = persist::load(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn milliseconds_and_seconds_are_the_same_clock() {
    assert_eq!(
        Time::from_millis(1500),
        secs(1).plus(Time::from_millis(500))
    );
    assert_eq!(Time::from_millis(2000), secs(2));
    assert_eq!(Time::from_millis(u64::MAX), Time(u64::MAX), "saturates");
}
