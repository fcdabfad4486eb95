//! What the maps hold, in Rust terms, and the diffs between two states.

use std::collections::BTreeMap;
use std::net::IpAddr;

use fqdn_cache::{Grants, MapDiff};
use ipnet::IpNet;
use policy::EndpointKey;

use crate::abi;

/// A local endpoint: where its programs attach and what the map says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub interface: String,
    pub value: abi::Endpoint,
}

/// A policy map entry's key, before encoding: `port` is in host order and
/// only its top `port_bits` bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntry {
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl PolicyEntry {
    /// The LPM prefix length and key data the kernel map uses.
    pub fn encode(&self) -> (u32, abi::PolicyKey) {
        (
            abi::POLICY_FIXED_BITS + u32::from(self.port_bits),
            abi::PolicyKey {
                endpoint: self.endpoint,
                identity: self.identity,
                direction: self.direction,
                protocol: self.protocol,
                dport: self.port.to_be(),
            },
        )
    }

    pub fn decode(prefix_len: u32, key: &abi::PolicyKey) -> Self {
        Self {
            endpoint: key.endpoint,
            identity: key.identity,
            direction: key.direction,
            protocol: key.protocol,
            port: u16::from_be(key.dport),
            port_bits: prefix_len.saturating_sub(abi::POLICY_FIXED_BITS).min(16) as u8,
        }
    }

    /// Whether this entry covers `port` (host order).
    pub fn covers_port(&self, port: u16) -> bool {
        let mask = if self.port_bits == 0 {
            0
        } else {
            u16::MAX << (16 - u32::from(self.port_bits))
        };
        port & mask == self.port
    }
}

/// A Service frontend: an address and port pods connect to, which the
/// programs translate to one of its backends (`tg_services`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub ip: IpAddr,
    /// `abi::PROTO_TCP` or `abi::PROTO_UDP`.
    pub protocol: u8,
    pub port: u16,
}

/// A frontend's ready backends `(address, port)`, at most
/// `abi::SVC_BACKENDS` of them, in a stable order; empty: none is ready
/// (the programs drop what is sent to it).
pub type Backends = Vec<(IpAddr, u16)>;

/// Everything the maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub endpoints: BTreeMap<u32, EndpointEntry>,
    /// `(ifindex, address)`: the addresses each local endpoint may send
    /// from (`tg_endpoint_addrs`; a set, kept as a map so that it diffs like
    /// the others).
    pub addresses: BTreeMap<(u32, IpAddr), ()>,
    pub ipcache: BTreeMap<IpNet, u32>,
    pub allow: BTreeMap<PolicyEntry, abi::PolicyValue>,
    pub deny: BTreeMap<PolicyEntry, abi::PolicyValue>,
    pub fqdn: BTreeMap<(u32, IpAddr), Grants>,
    pub services: BTreeMap<Frontend, Backends>,
}

/// Changes to every map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDiff {
    pub endpoints: MapDiff<u32, EndpointEntry>,
    pub addresses: MapDiff<(u32, IpAddr), ()>,
    pub ipcache: MapDiff<IpNet, u32>,
    pub allow: MapDiff<PolicyEntry, abi::PolicyValue>,
    pub deny: MapDiff<PolicyEntry, abi::PolicyValue>,
    pub fqdn: MapDiff<(u32, IpAddr), Grants>,
    pub services: MapDiff<Frontend, Backends>,
}

impl StateDiff {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.addresses.is_empty()
            && self.ipcache.is_empty()
            && self.allow.is_empty()
            && self.deny.is_empty()
            && self.fqdn.is_empty()
            && self.services.is_empty()
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
            + self.addresses.len()
            + self.ipcache.len()
            + self.allow.len()
            + self.deny.len()
            + self.fqdn.len()
            + self.services.len()
    }

    /// Whether the diff changes what the policy decides for an established
    /// flow: anything but FQDN grants (see `tg_established` in `decide.h`,
    /// which decides such flows again when the policy revision moves).
    pub fn changes_policy(&self) -> bool {
        !(self.endpoints.is_empty()
            && self.addresses.is_empty()
            && self.ipcache.is_empty()
            && self.allow.is_empty()
            && self.deny.is_empty())
    }

    /// Writes per kernel map, by the names [`DesiredState::entries_by_map`]
    /// uses (and `tg_services`): where two states differ.
    pub fn changes_by_map(&self) -> [(&'static str, usize); 7] {
        [
            ("tg_endpoints", self.endpoints.len()),
            ("tg_endpoint_addrs", self.addresses.len()),
            ("tg_ipcache", self.ipcache.len()),
            ("tg_policy_allow", self.allow.len()),
            ("tg_policy_deny", self.deny.len()),
            ("tg_fqdn", self.fqdn.len()),
            ("tg_services", self.services.len()),
        ]
    }

    /// Only FQDN changes: what the DNS proxy writes, via fqdn-cache's diff.
    /// `ifindex_of` maps an endpoint to its veth; endpoints without one
    /// (not local, or gone) are skipped.
    pub fn from_fqdn(
        diff: &fqdn_cache::Diff,
        ifindex_of: impl Fn(&EndpointKey) -> Option<u32>,
    ) -> Self {
        Self {
            fqdn: diff.map_keys(|(endpoint, ip)| Some((ifindex_of(endpoint)?, *ip))),
            ..Self::default()
        }
    }
}

impl DesiredState {
    /// Entries per kernel map (by the map's name in `bpf/lib/maps.h`): how
    /// full the maps are, next to [`crate::Datapath::capacities`].
    pub fn entries_by_map(&self) -> [(&'static str, usize); 6] {
        [
            ("tg_endpoints", self.endpoints.len()),
            ("tg_endpoint_addrs", self.addresses.len()),
            ("tg_ipcache", self.ipcache.len()),
            ("tg_policy_allow", self.allow.len()),
            ("tg_policy_deny", self.deny.len()),
            ("tg_fqdn", self.fqdn.len()),
        ]
    }

    /// The writes that turn `self` into `new`.
    pub fn diff(&self, new: &DesiredState) -> StateDiff {
        StateDiff {
            endpoints: MapDiff::between(&self.endpoints, &new.endpoints),
            addresses: MapDiff::between(&self.addresses, &new.addresses),
            ipcache: MapDiff::between(&self.ipcache, &new.ipcache),
            allow: MapDiff::between(&self.allow, &new.allow),
            deny: MapDiff::between(&self.deny, &new.deny),
            fqdn: MapDiff::between(&self.fqdn, &new.fqdn),
            services: MapDiff::between(&self.services, &new.services),
        }
    }

    pub fn apply(&mut self, diff: &StateDiff) {
        diff.endpoints.apply_to(&mut self.endpoints);
        diff.addresses.apply_to(&mut self.addresses);
        diff.ipcache.apply_to(&mut self.ipcache);
        diff.allow.apply_to(&mut self.allow);
        diff.deny.apply_to(&mut self.deny);
        diff.fqdn.apply_to(&mut self.fqdn);
        diff.services.apply_to(&mut self.services);
    }
}
