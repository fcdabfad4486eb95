//! `icmps` rules: ICMP and ICMPv6 types a rule allows (or denies), checked
//! and turned into port rules whose protocol is ICMP or ICMPv6 and whose
//! "port" is the type, exactly as Cilium does (pkg/policy/api/icmp.go,
//! `ICMPField.PortProtocol`): the datapath then looks the type up where it
//! looks ports up.

use crate::model::{IcmpRuleSpec, IcmpType, ProtocolSpec};
use crate::rules::{PortRange, PortRule, L7};
use crate::validate::Checker;

/// Cilium's limit on fields per rule (`maxICMPFields`).
const MAX_FIELDS: usize = 40;

/// Cilium's names for ICMPv4 types (`icmpIpv4TypeNameToCode`).
const IPV4_TYPES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

/// Cilium's names for ICMPv6 types (`icmpIpv6TypeNameToCode`).
const IPV6_TYPES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

/// The port rules an `icmps` list stands for: one per element, each with
/// one single-"port" range per field. `to_ports` says whether the same rule
/// also has `toPorts`, which Cilium rejects ("the ICMPs block may only be
/// present without ToPorts", pkg/policy/api/rule_validation.go).
pub(crate) fn check_icmps(
    c: &mut Checker,
    field: &str,
    rules: &[IcmpRuleSpec],
    to_ports: bool,
) -> Vec<PortRule> {
    if to_ports {
        c.error(
            format!("{field}.icmps"),
            "cannot be combined with toPorts in one rule (as in Cilium); write a separate rule for each",
        );
    }
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let f = format!("{field}.icmps[{i}].fields");
        if rule.fields.len() > MAX_FIELDS {
            c.error(
                &f,
                format!("has {} entries; at most {MAX_FIELDS}", rule.fields.len()),
            );
        }
        let mut ports = Vec::new();
        for (j, field) in rule.fields.iter().enumerate() {
            let ff = format!("{f}[{j}]");
            let (protocol, names) = match field.family.as_deref() {
                None | Some("") | Some("IPv4") => (ProtocolSpec::Icmp, IPV4_TYPES),
                Some("IPv6") => (ProtocolSpec::Icmpv6, IPV6_TYPES),
                Some(other) => {
                    c.error(
                        format!("{ff}.family"),
                        format!("{other:?} is not a family; expected IPv4 (the default) or IPv6"),
                    );
                    continue;
                }
            };
            let number = match &field.icmp_type {
                IcmpType::Number(n) => u8::try_from(*n).ok(),
                IcmpType::Name(name) => name.parse::<u8>().ok().or_else(|| {
                    names
                        .iter()
                        .find(|(known, _)| known == name)
                        .map(|(_, n)| *n)
                }),
            };
            let Some(number) = number else {
                let family = if protocol == ProtocolSpec::Icmp {
                    "IPv4"
                } else {
                    "IPv6"
                };
                c.error(
                    format!("{ff}.type"),
                    format!(
                        "{} is not an ICMP type of {family}: give a number 0-255 or one of {}",
                        match &field.icmp_type {
                            IcmpType::Number(n) => n.to_string(),
                            IcmpType::Name(s) => format!("{s:?}"),
                        },
                        names.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                );
                continue;
            };
            ports.push(PortRange {
                start: u16::from(number),
                end: u16::from(number),
                protocol,
            });
        }
        out.push(PortRule {
            ports,
            named: Vec::new(),
            l7: L7::None,
        });
    }
    out
}
