//! `learn/*`: one 8-IP answer learned and its datapath diff computed, in a
//! cache already holding 100 endpoints x 100 names x 4 IPs.
//! - `refresh_8ip`: a repeat lookup (the common case: 8 upserts, longer expiry);
//! - `new_name_8ip`: a name the endpoint had not learned before;
//! - `naive_full_diff_8ip`: the baseline, measured in the same run — learn,
//!   then diff the whole datapath state before/after, as an implementation
//!   without incremental diffs would.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use fqdn_cache::{Config, Diff, FqdnCache, PolicyView, PortSpec, Time};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::rules::ProtocolSpec;
use policy::EndpointKey;

const ENDPOINTS: u32 = 100;
const NAMES: u32 = 100;

fn ep(i: u32) -> EndpointKey {
    EndpointKey {
        namespace: format!("ns{}", i % 10),
        name: format!("pod{i}"),
    }
}

fn answer(seed: u32, n: u32) -> Vec<(IpAddr, u32)> {
    (0..n)
        .map(|k| (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + seed * 16 + k)), 300))
        .collect()
}

fn populated() -> FqdnCache {
    let mut b = FqdnMatcherBuilder::default();
    let sel = b.insert(FqdnSelector::pattern("*.example.com").unwrap());
    let https = PortSpec::Range {
        start: 443,
        end: 443,
        protocol: ProtocolSpec::Tcp,
    };
    let endpoints: HashMap<_, _> = (0..ENDPOINTS)
        .map(|i| (ep(i), vec![(sel, vec![https])]))
        .collect();
    let mut cache = FqdnCache::new(
        Config::default(),
        PolicyView::new(Arc::new(b.build()), endpoints),
    );
    for e in 0..ENDPOINTS {
        for n in 0..NAMES {
            cache.learn(
                Time::from_secs(1),
                &ep(e),
                &format!("svc{n}.example.com"),
                &answer(e * NAMES + n, 4),
            );
        }
    }
    cache
}

fn learn(c: &mut Criterion) {
    let mut group = c.benchmark_group("learn");
    let mut cache = populated();
    let target = ep(7);
    let ips = answer(1_000_000, 8);
    let mut t = 2u64;
    group.bench_function("refresh_8ip", |b| {
        b.iter(|| {
            t += 1;
            let diff = cache.learn(
                Time::from_secs(t),
                &target,
                "api.example.com",
                black_box(&ips),
            );
            black_box(diff.len())
        })
    });
    group.bench_function("new_name_8ip", |b| {
        b.iter_batched(
            || cache.clone(),
            |mut fresh| {
                let diff = fresh.learn(
                    Time::from_secs(t + 1),
                    &target,
                    "brand-new.example.com",
                    &ips,
                );
                assert_eq!(diff.len(), 8);
                (diff, fresh)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("naive_full_diff_8ip", |b| {
        b.iter(|| {
            t += 1;
            let before = cache.full_state();
            cache.learn(Time::from_secs(t), &target, "api.example.com", &ips);
            black_box(Diff::between(&before, &cache.full_state()).len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = learn
}
criterion_main!(benches);
