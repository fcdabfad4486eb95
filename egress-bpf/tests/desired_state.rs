//! The desired state's bookkeeping as the agent relies on it: a diff is
//! empty exactly when nothing changes, counts every write, moves the policy
//! revision for everything but FQDN grants, and applying the diff between two
//! states turns one into the other; policy keys survive the trip through the
//! kernel's encoding. (Mutation testing found these unpinned; TESTING.md.)

use std::collections::BTreeMap;
use std::net::IpAddr;

use egress_bpf::abi;
use egress_bpf::desired::{
    decode_grants, encode_grants, fqdn_entries, DesiredState, EndpointEntry, MapDiff, PolicyEntry,
    StateDiff,
};
use fqdn_cache::{PortGrant, PortSpec, Time};
use policy::rules::ProtocolSpec;
use policy::EndpointKey;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn entry(identity: u32, port: u16, port_bits: u8) -> PolicyEntry {
    PolicyEntry {
        endpoint: 7,
        identity,
        direction: 1,
        protocol: abi::PROTO_TCP,
        port,
        port_bits,
    }
}

fn grant() -> Vec<PortGrant> {
    vec![PortGrant {
        ports: PortSpec::All,
        expires_at: Time::from_secs(60),
    }]
}

/// A state with one entry in every map.
fn full() -> DesiredState {
    let mut s = DesiredState::default();
    s.endpoints.insert(
        7,
        EndpointEntry {
            interface: "veth7".into(),
            value: abi::Endpoint {
                identity: 300,
                ..Default::default()
            },
        },
    );
    s.addresses.insert((7, ip("10.0.0.7")), ());
    s.ipcache.insert("10.0.0.7/32".parse().unwrap(), 300);
    s.allow
        .insert(entry(301, 443, 16), abi::PolicyValue::default());
    s.deny
        .insert(entry(302, 22, 16), abi::PolicyValue::default());
    s.fqdn.insert((7, ip("192.0.2.1")), grant());
    s
}

/// `full()` with the entry of one map removed.
fn without(map: &str) -> DesiredState {
    let mut s = full();
    match map {
        "endpoints" => s.endpoints.clear(),
        "addresses" => s.addresses.clear(),
        "ipcache" => s.ipcache.clear(),
        "allow" => s.allow.clear(),
        "deny" => s.deny.clear(),
        "fqdn" => s.fqdn.clear(),
        _ => unreachable!(),
    }
    s
}

const MAPS: [&str; 6] = ["endpoints", "addresses", "ipcache", "allow", "deny", "fqdn"];

#[test]
fn a_change_to_any_one_map_is_a_non_empty_diff_of_one_write() {
    let state = full();
    let none = state.diff(&full());
    assert!(none.is_empty());
    assert_eq!(none.len(), 0);
    assert!(!none.changes_policy());
    for map in MAPS {
        let diff = state.diff(&without(map));
        assert!(!diff.is_empty(), "{map}");
        assert_eq!(diff.len(), 1, "{map}: one delete");
        assert_eq!(
            diff.changes_policy(),
            map != "fqdn",
            "{map}: only FQDN grants leave established flows' decisions alone"
        );
        // And back: one put.
        let back = without(map).diff(&state);
        assert_eq!(back.len(), 1, "{map}: one put");
    }
}

#[test]
fn a_diff_counts_every_write_in_every_map() {
    let empty = DesiredState::default();
    let diff = empty.diff(&full());
    assert_eq!(diff.len(), 6);
    let mut bigger = full();
    bigger
        .allow
        .insert(entry(303, 80, 16), abi::PolicyValue::default());
    bigger.ipcache.insert("10.0.0.8/32".parse().unwrap(), 301);
    let grown = full().diff(&bigger);
    assert_eq!(grown.len(), 2);
    let by_map: Vec<_> = grown
        .changes_by_map()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(by_map, [("tg_ipcache", 1), ("tg_policy_allow", 1)]);
    assert_eq!(bigger.diff(&empty).len(), 8);
}

#[test]
fn applying_the_diff_between_two_states_yields_the_second() {
    let mut other = without("allow");
    other
        .deny
        .insert(entry(304, 8000, 12), abi::PolicyValue::default());
    other.fqdn.insert((7, ip("192.0.2.2")), grant());
    for (from, to) in [
        (DesiredState::default(), full()),
        (full(), DesiredState::default()),
        (full(), other.clone()),
        (other.clone(), full()),
    ] {
        let mut state = from.clone();
        state.apply(&from.diff(&to));
        assert_eq!(state, to);
    }
}

#[test]
fn fqdn_writes_are_keyed_by_the_endpoints_interface_and_others_are_skipped() {
    let local = EndpointKey {
        namespace: "prod".into(),
        name: "app".into(),
    };
    let gone = EndpointKey {
        namespace: "prod".into(),
        name: "gone".into(),
    };
    let diff: fqdn_cache::Diff = MapDiff {
        put: vec![
            ((local.clone(), ip("192.0.2.1")), grant()),
            ((gone.clone(), ip("192.0.2.1")), grant()),
        ],
        del: vec![(local.clone(), ip("192.0.2.3")), (gone, ip("192.0.2.4"))],
    };
    let writes = StateDiff::from_fqdn(&diff, |k| (*k == local).then_some(7));
    assert_eq!(writes.fqdn.put, vec![((7, ip("192.0.2.1")), grant())]);
    assert_eq!(writes.fqdn.del, vec![(7, ip("192.0.2.3"))]);
    assert_eq!(writes.len(), 2);
    assert!(!writes.changes_policy(), "grants only");
    let mut state = DesiredState::default();
    state.apply(&writes);
    assert_eq!(
        state.fqdn,
        BTreeMap::from([((7, ip("192.0.2.1")), grant())])
    );
}

#[test]
fn a_policy_key_survives_the_kernel_encoding() {
    for e in [
        entry(301, 443, 16),
        entry(301, 8000, 12),
        entry(0, 0, 0),
        entry(u32::MAX, 0xff00, 8),
    ] {
        let (prefix, key) = e.encode();
        assert_eq!(prefix, abi::POLICY_FIXED_BITS + u32::from(e.port_bits));
        assert_eq!(key.dport, e.port.to_be(), "network order");
        assert_eq!(
            (key.endpoint, key.identity, key.direction, key.protocol),
            (e.endpoint, e.identity, e.direction, e.protocol)
        );
        assert_eq!(PolicyEntry::decode(prefix, &key), e);
    }
    // A prefix longer than the key is read as the whole port.
    let (_, key) = entry(301, 443, 16).encode();
    assert_eq!(
        PolicyEntry::decode(abi::POLICY_FIXED_BITS + 40, &key).port_bits,
        16
    );
    assert_eq!(PolicyEntry::decode(0, &key).port_bits, 0);
}

#[test]
fn a_policy_entry_covers_the_ports_of_its_prefix() {
    let block = entry(301, 8000 & 0xfff0, 12); // 8000..=8015
    assert!(block.covers_port(8000));
    assert!(block.covers_port(8015));
    assert!(!block.covers_port(8016));
    assert!(!block.covers_port(7999));
    let one = entry(301, 443, 16);
    assert!(one.covers_port(443));
    assert!(!one.covers_port(442) && !one.covers_port(444));
    let all = entry(301, 0, 0);
    assert!(all.covers_port(0) && all.covers_port(65535));
}

#[test]
fn grants_read_back_from_the_map_are_the_grants_written() {
    let range = |protocol, start, end, secs| PortGrant {
        ports: PortSpec::Range {
            start,
            end,
            protocol,
        },
        expires_at: Time::from_secs(secs),
    };
    let grants = vec![
        PortGrant {
            ports: PortSpec::All,
            expires_at: Time::from_secs(10),
        },
        range(ProtocolSpec::Tcp, 443, 443, 20),
        range(ProtocolSpec::Udp, 53, 53, 30),
        range(ProtocolSpec::Sctp, 1000, 2000, 40),
        range(ProtocolSpec::Any, 8080, 8081, 50),
    ];
    let value = encode_grants(&grants);
    assert_eq!(value.count, 5);
    assert_eq!(decode_grants(&value), grants);
    assert!(decode_grants(&encode_grants(&Vec::new())).is_empty());
    // More than the value holds: the first ones, never more.
    let many: Vec<PortGrant> = (0..40)
        .map(|i| range(ProtocolSpec::Tcp, 1000 + i, 1000 + i, 60))
        .collect();
    let value = encode_grants(&many);
    assert_eq!(value.count as usize, value.grants.len());
    assert_eq!(decode_grants(&value), many[..value.grants.len()].to_vec());
}

#[test]
fn the_fqdn_map_holds_the_caches_entries_of_local_endpoints_only() {
    let local = EndpointKey {
        namespace: "prod".into(),
        name: "app".into(),
    };
    let remote = EndpointKey {
        namespace: "prod".into(),
        name: "elsewhere".into(),
    };
    let entries: fqdn_cache::FqdnEntries = BTreeMap::from([
        ((local.clone(), ip("192.0.2.1")), grant()),
        ((local.clone(), ip("192.0.2.2")), grant()),
        ((remote, ip("192.0.2.3")), grant()),
    ]);
    let map = fqdn_entries(&entries, |k| (*k == local).then_some(9));
    assert_eq!(
        map,
        BTreeMap::from([
            ((9, ip("192.0.2.1")), grant()),
            ((9, ip("192.0.2.2")), grant()),
        ])
    );
}
