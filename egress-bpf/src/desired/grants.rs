//! The FQDN map: fqdn-cache's entries keyed by ifindex, and the value
//! codec (per-port-set grants with their own expiries).

use std::collections::BTreeMap;
use std::net::IpAddr;

use fqdn_cache::{Grants, PortSpec};
use policy::rules::ProtocolSpec;
use policy::EndpointKey;

use crate::abi;

/// fqdn-cache's full state as FQDN map entries (endpoints without a local
/// veth are skipped): what a (re)starting agent puts beside [`compile`]'s state.
pub fn fqdn_entries(
    state: &fqdn_cache::FqdnEntries,
    ifindex_of: impl Fn(&EndpointKey) -> Option<u32>,
) -> BTreeMap<(u32, IpAddr), Grants> {
    state
        .iter()
        .filter_map(|((endpoint, ip), grants)| {
            ifindex_of(endpoint).map(|i| ((i, *ip), grants.clone()))
        })
        .collect()
}

/// The FQDN map value for fqdn-cache's grants (at most `FQDN_GRANTS`; any
/// beyond are dropped, which allows less, never more).
pub fn encode_grants(grants: &Grants) -> abi::FqdnValue {
    let mut value = abi::FqdnValue::default();
    for (slot, g) in value.grants.iter_mut().zip(grants.iter()) {
        let (start, end, protocol) = match g.ports {
            PortSpec::All => (0, u16::MAX, abi::PROTO_ALL),
            PortSpec::Range {
                start,
                end,
                protocol,
            } => (
                start,
                end,
                match protocol {
                    ProtocolSpec::Any => abi::PROTO_ANY_L4,
                    ProtocolSpec::Tcp => abi::PROTO_TCP,
                    ProtocolSpec::Udp => abi::PROTO_UDP,
                    ProtocolSpec::Sctp => abi::PROTO_SCTP,
                    ProtocolSpec::Icmp => abi::PROTO_ICMP,
                    ProtocolSpec::Icmpv6 => abi::PROTO_ICMPV6,
                },
            ),
        };
        *slot = abi::FqdnGrant {
            expires_ns: g.expires_at.0,
            port_start: start,
            port_end: end,
            protocol,
            pad: [0; 3],
        };
    }
    value.count = grants.len().min(abi::FQDN_GRANTS) as u32;
    value
}

/// The inverse of [`encode_grants`], for reading a pinned map back.
pub fn decode_grants(value: &abi::FqdnValue) -> Grants {
    value
        .grants
        .iter()
        .take(value.count as usize)
        .map(|g| fqdn_cache::PortGrant {
            expires_at: fqdn_cache::Time(g.expires_ns),
            ports: match g.protocol {
                abi::PROTO_ALL => PortSpec::All,
                p => PortSpec::Range {
                    start: g.port_start,
                    end: g.port_end,
                    protocol: match p {
                        abi::PROTO_TCP => ProtocolSpec::Tcp,
                        abi::PROTO_UDP => ProtocolSpec::Udp,
                        abi::PROTO_SCTP => ProtocolSpec::Sctp,
                        abi::PROTO_ICMP => ProtocolSpec::Icmp,
                        abi::PROTO_ICMPV6 => ProtocolSpec::Icmpv6,
                        _ => ProtocolSpec::Any,
                    },
                },
            },
        })
        .collect()
}
