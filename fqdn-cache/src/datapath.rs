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

/// The whole FQDN allow-map as the cache wants it.
pub type DatapathState = BTreeMap<(EndpointKey, IpAddr), Grants>;

/// One write to the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert {
        endpoint: EndpointKey,
        ip: IpAddr,
        grants: Grants,
    },
    Remove {
        endpoint: EndpointKey,
        ip: IpAddr,
    },
}

/// The writes that bring a datapath from the previous state to the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn extend(&mut self, other: Diff) {
        self.changes.extend(other.changes);
    }

    /// Applies the diff to an in-memory map (tests, fakes).
    pub fn apply_to(&self, state: &mut DatapathState) {
        for change in &self.changes {
            match change {
                Change::Upsert {
                    endpoint,
                    ip,
                    grants,
                } => {
                    state.insert((endpoint.clone(), *ip), grants.clone());
                }
                Change::Remove { endpoint, ip } => {
                    state.remove(&(endpoint.clone(), *ip));
                }
            }
        }
    }

    /// The writes that turn `from` into `to`.
    pub fn between(from: &DatapathState, to: &DatapathState) -> Diff {
        let mut changes = Vec::new();
        for ((endpoint, ip), grants) in to {
            if from.get(&(endpoint.clone(), *ip)) != Some(grants) {
                changes.push(Change::Upsert {
                    endpoint: endpoint.clone(),
                    ip: *ip,
                    grants: grants.clone(),
                });
            }
        }
        for (endpoint, ip) in from.keys() {
            if !to.contains_key(&(endpoint.clone(), *ip)) {
                changes.push(Change::Remove {
                    endpoint: endpoint.clone(),
                    ip: *ip,
                });
            }
        }
        Diff { changes }
    }
}
