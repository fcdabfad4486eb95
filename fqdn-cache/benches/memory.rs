//! Memory for 100,000 names x 4 IPs across 100 endpoints (target <= 64 MiB).
//!
//! Counts live heap bytes with a counting allocator (exact, independent of
//! allocator caching) and reports the process RSS growth beside it. Prints
//! one line per figure; run with `cargo bench -p tollgate-fqdn-cache --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fqdn_cache::{Config, FqdnCache, PolicyView, PortSpec, Time};
use policy::fqdn::{FqdnMatcherBuilder, FqdnSelector};
use policy::EndpointKey;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    const ENDPOINTS: u32 = 100;
    const NAMES_PER_ENDPOINT: u32 = 1_000;
    let mut b = FqdnMatcherBuilder::default();
    let sel = b.insert(FqdnSelector::pattern("**.example.com").unwrap());
    let endpoints: HashMap<_, _> = (0..ENDPOINTS)
        .map(|i| {
            let key = EndpointKey {
                namespace: format!("ns{}", i % 10),
                name: format!("pod-{i}"),
            };
            (key, vec![(sel, vec![PortSpec::All])])
        })
        .collect();
    let keys: Vec<EndpointKey> = endpoints.keys().cloned().collect();
    let view = PolicyView::new(Arc::new(b.build()), endpoints);

    let heap_before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss_kib();
    let started = std::time::Instant::now();
    let mut cache = FqdnCache::new(Config::default(), view);
    let mut n = 0u32;
    for key in &keys {
        for name in 0..NAMES_PER_ENDPOINT {
            // Realistic names (~30 chars) and a v4/v6 mix: 3 A + 1 AAAA.
            let qname = format!("service-{name:05}.team-{}.example.com", n % 97);
            let answers = [
                (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n * 4)), 300),
                (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n * 4 + 1)), 300),
                (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n * 4 + 2)), 300),
                (
                    IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n))),
                    300,
                ),
            ];
            cache.learn(Time::from_secs(1), key, &qname, &answers);
            n += 1;
        }
    }
    let elapsed = started.elapsed();
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    let rss = rss_kib().saturating_sub(rss_before);
    let (names, ips) = cache.len();
    assert_eq!((names, ips), (100_000, 400_000));
    println!(
        "fqdn-cache memory: {names} names x 4 IPs ({ips} entries) across {ENDPOINTS} endpoints"
    );
    println!(
        "  live heap: {:.1} MiB ({} bytes/IP entry)",
        heap as f64 / 1048576.0,
        heap / ips
    );
    println!("  RSS growth: {:.1} MiB", rss as f64 / 1024.0);
    println!(
        "  build: {elapsed:?} ({:.2} us per 4-IP learn)",
        elapsed.as_secs_f64() * 1e6 / names as f64
    );
    let full = std::time::Instant::now();
    let state = cache.full_state();
    println!(
        "  full datapath state: {} entries computed in {:?}",
        state.len(),
        full.elapsed()
    );
    drop(state);
    std::hint::black_box(&cache);
}
