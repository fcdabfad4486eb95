//! `bpf/lib/parse.h` in Rust: what the programs read from a frame, for the
//! fake's packet-level decision ([`super::FakeDatapath::handle`]) and the
//! parser's fuzz target, which checks the two against each other.

use crate::abi;

/// `ETH_HLEN`.
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// Which part of a fragmented datagram a packet is (`TG_FRAG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Frag {
    /// Not a fragment (or an atomic one).
    #[default]
    None,
    /// Offset 0 with more to come: it carries the L4 header.
    First,
    /// Offset > 0: no L4 header; its ports are the first fragment's.
    Later,
}

/// `struct tg_packet`: addresses in the maps' 16-byte form, ports in
/// network byte order, as the programs hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    pub family: u8,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub frag: Frag,
    /// As on the wire (IPv4: the 16-bit identification, zero-extended).
    pub frag_id: u32,
    /// An ICMP error; `quoted` is the packet it quotes.
    pub icmp_error: bool,
    /// The quoted packet's tuple as a conntrack key (ifindex 0); all zero
    /// when it can belong to no tracked flow.
    pub quoted: abi::CtKey,
}

/// `TG_PARSE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// IP with a reachable L4 header (or a later fragment, or a protocol
    /// without ports).
    Ok(Packet),
    /// ARP, IPv6 neighbour or multicast listener discovery.
    PassL2,
    /// Neither ARP nor IP, or no IP header: no addresses.
    Unsupported,
    /// IP with its addresses, but its L4 header cannot be reached.
    NoL4(Packet),
}

/// The `TCP_FLAG_*` bits the programs look at.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// `bpf_skb_load_bytes`: `n` bytes at `off`, or `None` past the end.
fn load(frame: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    frame.get(off..off.checked_add(n)?)
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

/// `tg_is_icmp_error`.
pub fn is_icmp_error(protocol: u8, icmp_type: u8) -> bool {
    if protocol == abi::PROTO_ICMP {
        matches!(icmp_type, 3 | 11 | 12)
    } else {
        (1..=4).contains(&icmp_type)
    }
}

fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    if protocol == abi::PROTO_ICMP {
        matches!(icmp_type, 8 | 0)
    } else {
        matches!(icmp_type, 128 | 129)
    }
}

/// `tg_ipv6_is_ext`.
pub fn ipv6_is_ext(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// `tg_parse_quoted`: `None` where the C returns -1.
fn parse_quoted(frame: &[u8], off: usize, family: u8) -> Option<abi::CtKey> {
    let mut k = abi::CtKey {
        family,
        ..abi::CtKey::default()
    };
    let l4 = if family == 4 {
        let ip = load(frame, off, 20)?;
        let (version, ihl) = (ip[0] >> 4, ip[0] & 0x0f);
        if version != 4 || ihl < 5 {
            return None;
        }
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
            return None;
        }
        k.protocol = ip[9];
        k.saddr[..4].copy_from_slice(&ip[12..16]);
        k.daddr[..4].copy_from_slice(&ip[16..20]);
        off + usize::from(ihl) * 4
    } else {
        let ip6 = load(frame, off, 40)?;
        if ip6[0] >> 4 != 6 {
            return None;
        }
        k.protocol = ip6[6];
        k.saddr.copy_from_slice(&ip6[8..24]);
        k.daddr.copy_from_slice(&ip6[24..40]);
        off + 40
    };
    match k.protocol {
        abi::PROTO_TCP | abi::PROTO_UDP | abi::PROTO_SCTP => {
            let ports = load(frame, l4, 4)?;
            k.sport = u16_ne(&ports[0..2]);
            k.dport = u16_ne(&ports[2..4]);
        }
        abi::PROTO_ICMP | abi::PROTO_ICMPV6 => {
            let own = if family == 4 {
                abi::PROTO_ICMP
            } else {
                abi::PROTO_ICMPV6
            };
            if k.protocol != own {
                return None;
            }
            let hdr = load(frame, l4, 6)?;
            if is_icmp_error(k.protocol, hdr[0]) {
                return None;
            }
            if is_echo(k.protocol, hdr[0]) {
                k.sport = u16_ne(&hdr[4..6]);
                k.dport = k.sport;
            }
        }
        _ => {}
    }
    Some(k)
}

/// `tg_parse_l4`.
fn parse_l4(frame: &[u8], off: usize, mut p: Packet) -> Parsed {
    match p.protocol {
        abi::PROTO_TCP => {
            let Some(hdr) = load(frame, off, 14) else {
                return Parsed::NoL4(p);
            };
            p.sport = u16_ne(&hdr[0..2]);
            p.dport = u16_ne(&hdr[2..4]);
            p.tcp_flags = hdr[13];
        }
        abi::PROTO_UDP | abi::PROTO_SCTP => {
            let Some(ports) = load(frame, off, 4) else {
                return Parsed::NoL4(p);
            };
            p.sport = u16_ne(&ports[0..2]);
            p.dport = u16_ne(&ports[2..4]);
        }
        abi::PROTO_ICMP | abi::PROTO_ICMPV6 => {
            let Some(hdr) = load(frame, off, 6) else {
                return Parsed::NoL4(p);
            };
            p.icmp_type = hdr[0];
            if p.protocol == abi::PROTO_ICMPV6
                && ((133..=137).contains(&hdr[0]) || (130..=132).contains(&hdr[0]) || hdr[0] == 143)
            {
                return Parsed::PassL2;
            }
            if is_icmp_error(p.protocol, hdr[0]) {
                if p.frag != Frag::None {
                    return Parsed::NoL4(p);
                }
                p.icmp_error = true;
                p.quoted = parse_quoted(frame, off + 8, p.family).unwrap_or_default();
                return Parsed::Ok(p);
            }
            if is_echo(p.protocol, hdr[0]) {
                p.sport = u16_ne(&hdr[4..6]);
                p.dport = p.sport;
            }
        }
        _ => {}
    }
    Parsed::Ok(p)
}

fn parse_ipv6(frame: &[u8]) -> Parsed {
    let Some(ip6) = load(frame, ETH_HLEN, 40) else {
        return Parsed::Unsupported;
    };
    if ip6[0] >> 4 != 6 {
        return Parsed::Unsupported;
    }
    let mut p = Packet {
        family: 6,
        ..Packet::default()
    };
    p.saddr.copy_from_slice(&ip6[8..24]);
    p.daddr.copy_from_slice(&ip6[24..40]);
    let mut next = ip6[6];
    let mut off = ETH_HLEN + 40;
    for _ in 0..abi::IPV6_EXT_MAX {
        if !ipv6_is_ext(next) {
            break;
        }
        let Some(ext) = load(frame, off, 8) else {
            return Parsed::NoL4(p);
        };
        if next == 44 {
            let frag = u16::from_be_bytes([ext[2], ext[3]]);
            p.frag_id = u32::from_ne_bytes([ext[4], ext[5], ext[6], ext[7]]);
            if frag & 0xfff8 != 0 {
                p.frag = Frag::Later;
                p.protocol = ext[0];
                return Parsed::Ok(p);
            }
            if frag & 1 != 0 {
                p.frag = Frag::First;
            }
            off += 8;
        } else if next == 51 {
            off += (usize::from(ext[1]) + 2) * 4;
        } else {
            off += (usize::from(ext[1]) + 1) * 8;
        }
        next = ext[0];
    }
    p.protocol = next;
    match next {
        abi::PROTO_TCP | abi::PROTO_UDP | abi::PROTO_SCTP | abi::PROTO_ICMPV6 => {
            parse_l4(frame, off, p)
        }
        _ => Parsed::NoL4(p),
    }
}

/// `tg_parse`: what the programs read from an Ethernet frame.
pub fn parse(frame: &[u8]) -> Parsed {
    let Some(eth) = load(frame, 12, 2) else {
        return Parsed::Unsupported;
    };
    match u16::from_be_bytes([eth[0], eth[1]]) {
        ETH_P_ARP => Parsed::PassL2,
        ETH_P_IP => {
            let Some(ip) = load(frame, ETH_HLEN, 20) else {
                return Parsed::Unsupported;
            };
            let (version, ihl) = (ip[0] >> 4, ip[0] & 0x0f);
            if version != 4 || ihl < 5 {
                return Parsed::Unsupported;
            }
            let mut p = Packet {
                family: 4,
                protocol: ip[9],
                frag_id: u32::from(u16_ne(&ip[4..6])),
                ..Packet::default()
            };
            p.saddr[..4].copy_from_slice(&ip[12..16]);
            p.daddr[..4].copy_from_slice(&ip[16..20]);
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if frag & 0x1fff != 0 {
                p.frag = Frag::Later;
                return Parsed::Ok(p);
            }
            if frag & 0x2000 != 0 {
                p.frag = Frag::First;
            }
            parse_l4(frame, ETH_HLEN + usize::from(ihl) * 4, p)
        }
        ETH_P_IPV6 => parse_ipv6(frame),
        _ => Parsed::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV6);
        let mut h = [0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8] = 0xfd;
        h[24] = 0x20;
        f.extend_from_slice(&h);
        f.extend_from_slice(rest);
        f
    }

    fn tcp(dport: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = 0x02;
        t
    }

    /// `n` destination options headers (8 bytes each) in front of `inner`.
    fn dest_opts(n: usize, last_next: u8, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n { last_next } else { 60 };
            out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        out.extend_from_slice(inner);
        out
    }

    #[test]
    fn extension_headers_up_to_the_bound_reach_the_ports_and_more_do_not() {
        for n in 0..=abi::IPV6_EXT_MAX {
            let first = if n == 0 { 6 } else { 60 };
            match parse(&ipv6(first, &dest_opts(n, 6, &tcp(22)))) {
                Parsed::Ok(p) => assert_eq!(u16::from_be(p.dport), 22, "{n} headers"),
                other => panic!("{n} headers: {other:?}"),
            }
        }
        let n = abi::IPV6_EXT_MAX + 1;
        assert!(
            matches!(
                parse(&ipv6(60, &dest_opts(n, 6, &tcp(22)))),
                Parsed::NoL4(_)
            ),
            "one header past the bound: the L4 header is unreachable, never `no ports`"
        );
    }

    #[test]
    fn unknown_or_opaque_next_headers_and_truncation_leave_no_l4() {
        for next in [59u8, 50, 150, 47] {
            assert!(
                matches!(parse(&ipv6(next, &tcp(22))), Parsed::NoL4(_)),
                "next header {next}"
            );
        }
        assert!(matches!(parse(&ipv6(6, &tcp(22)[..10])), Parsed::NoL4(_)));
        assert!(matches!(
            parse(&ipv6(60, &dest_opts(1, 6, &[]))),
            Parsed::NoL4(_)
        ));
    }

    #[test]
    fn fragments_first_carries_ports_later_does_not() {
        let first = [6u8, 0, 0x00, 0x01, 0, 0, 0, 7];
        let later = [6u8, 0, 0x00, 0x09, 0, 0, 0, 7];
        match parse(&ipv6(44, &[&first[..], &tcp(80)].concat())) {
            Parsed::Ok(p) => {
                assert_eq!(p.frag, Frag::First);
                assert_eq!(u16::from_be(p.dport), 80);
            }
            other => panic!("{other:?}"),
        }
        match parse(&ipv6(44, &[&later[..], &[0u8; 16]].concat())) {
            Parsed::Ok(p) => {
                assert_eq!(p.frag, Frag::Later);
                assert_eq!(p.dport, 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn icmp_errors_quote_their_flow_and_neighbour_discovery_is_l2() {
        // Packet too big quoting a TCP segment fd00::.. -> 2000:: port 443.
        let quoted = ipv6(6, &tcp(443))[ETH_HLEN..].to_vec();
        let mut icmp = vec![2u8, 0, 0, 0, 0, 0, 5, 0];
        icmp.extend_from_slice(&quoted);
        match parse(&ipv6(58, &icmp)) {
            Parsed::Ok(p) => {
                assert!(p.icmp_error);
                assert_eq!(p.quoted.protocol, abi::PROTO_TCP);
                assert_eq!(u16::from_be(p.quoted.dport), 443);
                assert_eq!(p.quoted.saddr[0], 0xfd);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&ipv6(58, &[135, 0, 0, 0, 0, 0])), Parsed::PassL2);
        assert_eq!(parse(&eth(ETH_P_ARP)), Parsed::PassL2);
        assert_eq!(parse(&eth(0x88cc)), Parsed::Unsupported);
    }
}
