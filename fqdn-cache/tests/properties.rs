//! TTL-expiry property tests: random sequences of learn / advance time /
//! re-learn / connection open-close / garbage collection / agent restart,
//! checked after every step against a deliberately simple reference model:
//!
//! - an (endpoint, ip, port) is allowed at time t iff some learn vouches for
//!   it at t (with caps that are never hit; with tight caps: only if);
//! - no entry outlives its TTL, except zombies with a live connection (or
//!   within the grace after it), and those are never allowed;
//! - bounds are never exceeded;
//! - the diffs folded into an empty map always equal the full computed state.
//!
//! The seed is fixed so a failure reproduces; proptest also records failing
//! cases under `tests/properties.proptest-regressions`.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use fqdn_cache::persist;
use fqdn_cache::{allows, Config, FqdnCache, FqdnEntries, PolicyView, PortSpec, Time};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::rules::ProtocolSpec;
use policy::{EndpointKey, Protocol};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngSeed};

const ENDPOINTS: usize = 3;
const NAMES: [&str; 5] = ["a.x.test", "B.x.test.", "c.y.test", "d.z.test", "a.x.test."];
const IPS: [&str; 6] = [
    "192.0.2.1",
    "192.0.2.2",
    "192.0.2.3",
    "2001:db8::1",
    "2001:db8::2",
    "198.51.100.9",
];
const PROBES: [(u16, Protocol); 3] = [
    (443, Protocol::Tcp),
    (80, Protocol::Tcp),
    (53, Protocol::Udp),
];
const BOOT: &str = "boot-under-test";

fn ep(i: usize) -> EndpointKey {
    EndpointKey {
        namespace: "ns".into(),
        name: format!("ep{i}"),
    }
}

fn ip(i: usize) -> IpAddr {
    IPS[i].parse().unwrap()
}

fn ip_eq(text: &str, addr: IpAddr) -> bool {
    text.parse::<IpAddr>().is_ok_and(|a| a == addr)
}

fn tcp(p: u16) -> PortSpec {
    PortSpec::Range {
        start: p,
        end: p,
        protocol: ProtocolSpec::Tcp,
    }
}

/// ep0: `*.x.test` on 443/TCP and `c.y.test` on every port; ep1: everything
/// on 80/TCP; ep2: no toFQDNs rule (it learns, nothing opens).
fn view() -> PolicyView {
    let mut b = FqdnMatcherBuilder::default();
    let x = b.insert(FqdnSelector::pattern("*.x.test").unwrap());
    let c = b.insert(FqdnSelector::name("c.y.test").unwrap());
    let all = b.insert(FqdnSelector::pattern("*").unwrap());
    PolicyView::new(
        Arc::new(b.build()),
        HashMap::from([
            (ep(0), vec![(x, vec![tcp(443)]), (c, vec![PortSpec::All])]),
            (ep(1), vec![(all, vec![tcp(80)])]),
            (ep(2), vec![]),
        ]),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Learn {
        ep: usize,
        name: usize,
        answers: Vec<(usize, u32)>,
    },
    Advance {
        ms: u64,
    },
    Expire,
    Open {
        ep: usize,
        ip: usize,
    },
    Close {
        ep: usize,
        ip: usize,
    },
    /// The agent is down for `down_ms`, then restores from its file.
    Restart {
        down_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..ENDPOINTS, 0..NAMES.len(), prop::collection::vec((0..IPS.len(), 0u32..8), 1..4))
            .prop_map(|(ep, name, answers)| Op::Learn { ep, name, answers }),
        4 => (0u64..6_000).prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::Expire),
        2 => (0..ENDPOINTS, 0..IPS.len()).prop_map(|(ep, ip)| Op::Open { ep, ip }),
        2 => (0..ENDPOINTS, 0..IPS.len()).prop_map(|(ep, ip)| Op::Close { ep, ip }),
        1 => (0u64..5_000).prop_map(|down_ms| Op::Restart { down_ms }),
    ]
}

/// The reference: every learn ever made, and nothing else.
struct Model {
    config: Config,
    view: PolicyView,
    learns: Vec<(Time, usize, String, usize, u32)>,
}

impl Model {
    fn vouched(&self, now: Time, e: usize, i: usize, port: u16, proto: Protocol) -> bool {
        self.learns.iter().any(|(t, le, name, li, ttl)| {
            *le == e
                && *li == i
                && *t <= now
                // Vouched for the TTL, rounded up to the next tenth of a
                // second (repeated answers within it then write nothing).
                && now
                    < t.plus_secs(self.config.lifetime_secs(*ttl))
                        .round_up(fqdn_cache::EXPIRY_STEP)
                && self
                    .view
                    .ports_for(&ep(e), name)
                    .iter()
                    .any(|p| p.covers(port, proto))
        })
    }
}

fn run(config: Config, ops: Vec<Op>, exact: bool) -> Result<(), TestCaseError> {
    let view = view();
    let mut cache = FqdnCache::new(config, view.clone());
    let mut map = FqdnEntries::new();
    let mut model = Model {
        config,
        view: view.clone(),
        learns: Vec::new(),
    };
    let mut conns: BTreeSet<(usize, usize)> = BTreeSet::new();
    // When GC last saw each connection alive (GC is when the oracle is asked).
    let mut seen_alive: HashMap<(usize, usize), Time> = HashMap::new();
    let mut now = Time::from_secs(1_000);
    for (step, op) in ops.into_iter().enumerate() {
        match &op {
            Op::Learn {
                ep: e,
                name,
                answers,
            } => {
                let resolved: Vec<(IpAddr, u32)> =
                    answers.iter().map(|(i, ttl)| (ip(*i), *ttl)).collect();
                cache
                    .learn(now, &ep(*e), NAMES[*name], &resolved)
                    .apply_to(&mut map);
                let canonical = NAMES[*name].trim_end_matches('.').to_ascii_lowercase();
                for (i, ttl) in answers {
                    model.learns.push((now, *e, canonical.clone(), *i, *ttl));
                }
            }
            Op::Advance { ms } => now = now.plus(Time::from_millis(*ms)),
            Op::Expire => {
                let oracle = |k: &EndpointKey, a: IpAddr| {
                    conns.iter().any(|(e, i)| ep(*e) == *k && ip(*i) == a)
                };
                cache.expire(now, &oracle).apply_to(&mut map);
                for c in &conns {
                    seen_alive.insert(*c, now);
                }
                // No entry outlives its TTL, unless it is a zombie whose
                // connection is alive or was within the grace period.
                let grace = Time::from_secs(u64::from(config.zombie_grace));
                for e in 0..ENDPOINTS {
                    for name in NAMES {
                        for learned in cache.lookup(&ep(e), name) {
                            if learned.expires_at > now {
                                continue;
                            }
                            prop_assert!(
                                learned.zombie,
                                "step {step}: expired non-zombie {learned:?}"
                            );
                            let i = IPS.iter().position(|a| ip_eq(a, learned.ip)).unwrap();
                            let recent = conns.contains(&(e, i))
                                || seen_alive.get(&(e, i)).is_some_and(|t| t.plus(grace) > now);
                            prop_assert!(
                                recent,
                                "step {step}: zombie ep{e} {} with no recent connection",
                                learned.ip
                            );
                        }
                    }
                }
                for (key, grants) in &map {
                    prop_assert!(
                        grants.iter().any(|g| g.expires_at > now),
                        "step {step}: datapath entry {key:?} outlived its TTL after GC: {grants:?}"
                    );
                }
            }
            Op::Open { ep: e, ip: i } => {
                // A connection can only be opened while the datapath allows it.
                let allowed = PROBES.iter().any(|(port, proto)| {
                    map.get(&(ep(*e), ip(*i)))
                        .is_some_and(|g| allows(g, now, *port, *proto))
                });
                if allowed {
                    conns.insert((*e, *i));
                }
            }
            Op::Close { ep: e, ip: i } => {
                conns.remove(&(*e, *i));
            }
            Op::Restart { down_ms } => {
                let bytes = persist::encode(&cache, now, BOOT);
                now = now.plus(Time::from_millis(*down_ms));
                let (restored, _) = persist::decode(&bytes, config, view.clone(), now, BOOT)
                    .map_err(|e| TestCaseError::fail(format!("restore failed: {e}")))?;
                // restore(persist(x)) == x minus what expired meanwhile.
                prop_assert_eq!(
                    live(&restored.full_state(), now),
                    live(&cache.full_state(), now)
                );
                cache = restored;
                // The pinned map survived the restart; reconcile instead of rebuilding.
                cache.reconcile(&map).apply_to(&mut map);
            }
        }

        prop_assert_eq!(
            &map,
            &cache.full_state(),
            "step {}: diffs folded != full state after {:?}",
            step,
            op
        );

        for e in 0..ENDPOINTS {
            for (i, addr) in IPS.iter().enumerate() {
                for (port, proto) in PROBES {
                    let got = map
                        .get(&(ep(e), ip(i)))
                        .is_some_and(|g| allows(g, now, port, proto));
                    let want = model.vouched(now, e, i, port, proto);
                    if exact {
                        prop_assert_eq!(
                            got,
                            want,
                            "step {}: ep{} {}:{}/{} after {:?}",
                            step,
                            e,
                            addr,
                            port,
                            proto,
                            op
                        );
                    } else {
                        prop_assert!(
                            !got || want,
                            "step {}: allowed without a vouching answer: ep{} {}:{}",
                            step,
                            e,
                            addr,
                            port
                        );
                    }
                }
            }
        }

        let (names, _) = cache.len();
        prop_assert!(names <= ENDPOINTS * config.max_names_per_endpoint);
        for e in 0..ENDPOINTS {
            let per_endpoint = NAMES
                .iter()
                .filter(|n| !cache.lookup(&ep(e), n).is_empty())
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect::<BTreeSet<_>>();
            prop_assert!(
                per_endpoint.len() <= config.max_names_per_endpoint,
                "names cap exceeded: {:?}",
                per_endpoint
            );
            for n in NAMES {
                prop_assert!(cache.lookup(&ep(e), n).len() <= config.max_ips_per_name);
            }
        }
        for grants in map.values() {
            prop_assert!(grants.len() <= config.max_grants_per_entry);
        }
    }
    Ok(())
}

/// The entries and grants still in force at `now`.
fn live(state: &FqdnEntries, now: Time) -> FqdnEntries {
    state
        .iter()
        .filter_map(|(k, grants)| {
            let g: Vec<_> = grants
                .iter()
                .copied()
                .filter(|g| g.expires_at > now)
                .collect();
            (!g.is_empty()).then(|| (k.clone(), g))
        })
        .collect()
}

fn pt_config(cases: u32, seed: u64) -> PtConfig {
    PtConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..PtConfig::default()
    }
}

proptest! {
    #![proptest_config(pt_config(1_000, 0x7011_6a7e))]

    /// Caps never hit: the datapath allows exactly what the answers vouch for.
    #[test]
    fn datapath_allows_exactly_what_answers_vouch_for(
        ops in prop::collection::vec(op(), 1..60),
        min_ttl in 0u32..4,
        floor in 0u32..3,
        grace in 0u32..6,
    ) {
        let config = Config { min_ttl, ttl_floor: floor, zombie_grace: grace, ..Config::default() };
        run(config, ops, true)?;
    }

    /// Tight caps: fewer allowed, never more, and bounds hold.
    #[test]
    fn tight_caps_only_ever_allow_less(
        ops in prop::collection::vec(op(), 1..60),
        max_ips in 1usize..3,
        max_names in 1usize..3,
        max_grants in 1usize..3,
    ) {
        let config = Config {
            max_ips_per_name: max_ips,
            max_names_per_endpoint: max_names,
            max_grants_per_entry: max_grants,
            ..Config::default()
        };
        run(config, ops, false)?;
    }
}
