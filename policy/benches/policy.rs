//! Benchmarks for BENCHMARKS.md.
//!
//! - `fqdn_match/trie/N`: one lookup against N mixed selectors (exact names,
//!   `*.x` wildcards, `**.` suffixes, in-label globs), for N = 100, 1k, 10k:
//!   flat in N is the goal.
//! - `fqdn_match/regex_per_selector/N`: the same lookups done the way Cilium
//!   does (one regex per selector, each tested in turn), measured in the
//!   same run as the baseline.
//! - `resolve/1000x1000`: 1,000 policies resolved for 1,000 endpoints.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::{Inventory, PolicySet, ResolveOptions};
use regex::Regex;

/// N selectors: 40% exact names, 30% `*.domainK.com`, 20% `**.svcK.internal`,
/// 10% in-label globs `api-*.regionK.io`.
fn selectors(n: usize) -> Vec<FqdnSelector> {
    (0..n)
        .map(|i| match i % 10 {
            0..=3 => FqdnSelector::name(&format!("api{i}.service{i}.example.com")).unwrap(),
            4..=6 => FqdnSelector::pattern(&format!("*.domain{i}.com")).unwrap(),
            7..=8 => FqdnSelector::pattern(&format!("**.svc{i}.internal")).unwrap(),
            _ => FqdnSelector::pattern(&format!("api-*.region{i}.io")).unwrap(),
        })
        .collect()
}

/// Names to look up: an exact hit, a `*.` hit, a `**.` hit, a glob hit, a miss.
fn names(n: usize) -> Vec<String> {
    let last = |r: usize| (0..n).rev().find(|i| i % 10 == r).unwrap();
    vec![
        format!("api{0}.service{0}.example.com", last(0)),
        format!("www.domain{}.com", last(4)),
        format!("a.b.c.svc{}.internal", last(7)),
        format!("API-EU1.region{}.io.", last(9)),
        "nothing.matches.this.example.org".to_string(),
    ]
}

fn cilium_style_regex(sel: &FqdnSelector) -> Regex {
    let body = match sel {
        FqdnSelector::Name(n) => regex::escape(n),
        FqdnSelector::Pattern(p) if p == "*" => r"([-a-z0-9_]+\.)*[-a-z0-9_]+".to_string(),
        FqdnSelector::Pattern(p) => {
            let (prefix, rest) = match p.strip_prefix("**.") {
                Some(rest) => (r"([-a-z0-9_]+\.)+", rest),
                None => ("", p.as_str()),
            };
            let rest: String = rest
                .chars()
                .map(|c| {
                    if c == '*' {
                        "[-a-z0-9_]*".to_string()
                    } else {
                        regex::escape(&c.to_string())
                    }
                })
                .collect();
            format!("{prefix}{rest}")
        }
    };
    Regex::new(&format!("^{body}\\.?$")).unwrap()
}

fn fqdn_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("fqdn_match");
    for n in [100usize, 1_000, 10_000] {
        let sels = selectors(n);
        let mut builder = FqdnMatcherBuilder::default();
        for s in &sels {
            builder.insert(s.clone());
        }
        let matcher = builder.build();
        let names = names(n);
        for name in &names {
            assert!(
                name.starts_with("nothing") || !matcher.matches(name).is_empty(),
                "benchmark name {name} should match"
            );
        }
        let mut buf = Vec::new();
        group.bench_with_input(BenchmarkId::new("trie", n), &names, |b, names| {
            b.iter(|| {
                for name in names {
                    matcher.matches_into(black_box(name), &mut buf);
                    black_box(buf.len());
                }
            })
        });
        let regexes: Vec<Regex> = sels.iter().map(cilium_style_regex).collect();
        group.bench_with_input(
            BenchmarkId::new("regex_per_selector", n),
            &names,
            |b, names| {
                b.iter(|| {
                    for name in names {
                        let lower = name.to_ascii_lowercase();
                        black_box(regexes.iter().filter(|r| r.is_match(&lower)).count());
                    }
                })
            },
        );
    }
    group.finish();
}

/// 1,000 policies over 1,000 endpoints in 10 namespaces, 20 apps each.
fn resolve(c: &mut Criterion) {
    let mut inv = String::from("namespaces:\n");
    for ns in 0..10 {
        inv.push_str(&format!(
            "  - {{name: ns{ns}, labels: {{team: t{}}}}}\n",
            ns % 3
        ));
    }
    inv.push_str("endpoints:\n");
    for i in 0..1_000u32 {
        inv.push_str(&format!(
            "  - {{name: pod{i}, namespace: ns{}, labels: {{app: app{}, tier: t{}}}, ips: [10.{}.{}.{}]}}\n",
            i % 10,
            i % 20,
            i % 3,
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let inventory = Inventory::parse(&inv, "bench").unwrap();
    let mut yaml = String::new();
    for p in 0..1_000 {
        yaml.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{p}, namespace: ns{}}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  \
             - fromEndpoints: [{{matchLabels: {{app: app{}}}}}]\n    toPorts: [{{ports: [{{port: '{}', protocol: TCP}}]}}]\n  \
             egress:\n  - toFQDNs: [{{matchPattern: '*.svc{p}.example.com'}}]\n    toPorts: [{{ports: [{{port: '443'}}]}}]\n  \
             - toCIDRSet: [{{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]\n",
            p % 10,
            p % 20,
            (p + 1) % 20,
            8000 + p
        ));
    }
    let report = policy::parse_str(&yaml, None);
    assert!(!report.has_errors());
    let set = PolicySet::new(report.policies);
    c.bench_function("resolve/1000x1000", |b| {
        b.iter(|| {
            black_box(
                set.resolve(&inventory, ResolveOptions::default())
                    .endpoints
                    .len(),
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = fqdn_match, resolve
}
criterion_main!(benches);
