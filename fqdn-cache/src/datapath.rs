//! The datapath's side of the cache: entries `(endpoint, ip) -> grants` and
//! the diffs that keep a map in step with the cache.
//!
//! An entry holds one grant per port set with its own expiry, not one expiry
//! for the IP: if `a.example` opens 443 until t1 and `b.example` (same IP)
//! opens 80 until t2 > t1, port 443 must close at t1. Merging them into one
//! expiry would widen what is allowed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use policy::rules::ProtocolSpec;
use policy::{EndpointKey, Protocol};

use crate::time::Time;

/// Which ports a grant opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// Every port and protocol (a toFQDNs rule without toPorts).
    All,
    /// `start..=end` of `protocol` (`Any` = TCP, UDP and SCTP).
    Range {
        start: u16,
        end: u16,
        protocol: ProtocolSpec,
    },
}

impl PortSpec {
    pub fn covers(&self, port: u16, protocol: Protocol) -> bool {
        match *self {
            PortSpec::All => true,
            PortSpec::Range {
                start,
                end,
                protocol: p,
            } => {
                let proto_ok = matches!(
                    (p, protocol),
                    (
                        ProtocolSpec::Any,
                        Protocol::Tcp | Protocol::Udp | Protocol::Sctp
                    ) | (ProtocolSpec::Tcp, Protocol::Tcp)
                        | (ProtocolSpec::Udp, Protocol::Udp)
                        | (ProtocolSpec::Sctp, Protocol::Sctp)
                        | (ProtocolSpec::Icmp, Protocol::Icmp)
                        | (ProtocolSpec::Icmpv6, Protocol::Icmpv6)
                );
                proto_ok && (start..=end).contains(&port)
            }
        }
    }
}

/// One port set open until `expires_at` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortGrant {
    pub ports: PortSpec,
    pub expires_at: Time,
}

/// The value of one datapath entry: grants sorted by port set, at most one
/// per port set.
pub type Grants = Vec<PortGrant>;

/// Whether `grants` allow a new connection at `now`.
pub fn allows(grants: &[PortGrant], now: Time, port: u16, protocol: Protocol) -> bool {
    grants
        .iter()
        .any(|g| g.expires_at > now && g.ports.covers(port, protocol))
}

/// The whole FQDN allow-map as the cache wants it, by endpoint (the
/// datapath keys the same entries by the endpoint's interface).
pub type FqdnEntries = BTreeMap<(EndpointKey, IpAddr), Grants>;

/// The writes that bring a map from one state to another: entries to put
/// (insert or replace) and keys to delete, never the same key in both.
/// The one diff vocabulary of the project: the cache's FQDN changes and the
/// datapath's per-map changes are both `MapDiff`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub put: Vec<(K, V)>,
    pub del: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        Self {
            put: Vec::new(),
            del: Vec::new(),
        }
    }
}

impl<K, V> MapDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.del.is_empty()
    }

    pub fn len(&self) -> usize {
        self.put.len() + self.del.len()
    }

    /// Adds `other`'s writes (for keys `self` does not touch).
    pub fn extend(&mut self, other: MapDiff<K, V>) {
        self.put.extend(other.put);
        self.del.extend(other.del);
    }

    /// The same writes under other keys; those `key` maps to `None` are
    /// dropped (e.g. endpoints without a local interface).
    pub fn map_keys<J>(&self, key: impl Fn(&K) -> Option<J>) -> MapDiff<J, V>
    where
        V: Clone,
    {
        MapDiff {
            put: self
                .put
                .iter()
                .filter_map(|(k, v)| Some((key(k)?, v.clone())))
                .collect(),
            del: self.del.iter().filter_map(&key).collect(),
        }
    }
}

impl<K: Ord + Clone, V: PartialEq + Clone> MapDiff<K, V> {
    /// The writes that turn `old` into `new`.
    pub fn between(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Self {
        Self {
            put: new
                .iter()
                .filter(|(k, v)| old.get(k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            del: old
                .keys()
                .filter(|k| !new.contains_key(k))
                .cloned()
                .collect(),
        }
    }

    /// Applies the writes to an in-memory map (tests, fakes, records).
    pub fn apply_to(&self, map: &mut BTreeMap<K, V>) {
        for k in &self.del {
            map.remove(k);
        }
        for (k, v) in &self.put {
            map.insert(k.clone(), v.clone());
        }
    }
}

/// Changes to the FQDN entries, by endpoint.
pub type Diff = MapDiff<(EndpointKey, IpAddr), Grants>;
