//! The links of this network namespace and, for a veth, the addresses its
//! peer carries in the pod's network namespace — read with rtnetlink, which
//! is how a pod's veth is told apart from its bridge's other ports (see
//! [`crate::routes`]).
//!
//! Two dumps: `RTM_GETLINK` (name, kind, bridge master, and for a veth its
//! peer's ifindex and the peer namespace's id as this namespace numbers it),
//! and `RTM_GETADDR` with `IFA_TARGET_NETNSID` (Linux 4.20+), which lists
//! another namespace's addresses without entering it — the agent cannot:
//! it does not see the pods' namespace files. The target needs strict
//! checking (`NETLINK_GET_STRICT_CHK`); without it the kernel ignores the
//! attribute and silently answers for this namespace.
//!
//! Building requests and parsing answers is pure and tested with bytes laid
//! out as the kernel sends them; [`read_links`] and [`read_peer_addresses`]
//! are the only I/O.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One link of this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "veth", "bridge", ...; `None` for physical devices.
    pub kind: Option<String>,
    /// The bridge (or bond) this link is a port of.
    pub master: Option<u32>,
    /// For a veth whose other end is in another namespace: that end.
    pub peer: Option<Peer>,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// The other end of a veth: its ifindex in its own namespace, and that
/// namespace's id as seen from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub netnsid: i32,
    pub index: u32,
}

/// An address of the link `index` (in whatever namespace was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddress {
    pub index: u32,
    pub ip: IpAddr,
}

const NETLINK_ROUTE: isize = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// Attribute type bits (the top two are the nested / byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn header(len: usize, kind: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

/// `RTM_GETLINK` dump of every link (an all-zero `ifinfomsg`, as strict
/// checking wants).
pub fn link_dump_request(seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let mut m = header(len, RTM_GETLINK, seq);
    m.resize(len, 0);
    m[NLMSG_HDRLEN] = AF_UNSPEC;
    m
}

/// `RTM_GETADDR` dump of one family's addresses in namespace `netnsid`.
pub fn addr_dump_request(seq: u32, family: u8, netnsid: i32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFADDRMSG_LEN + 8;
    let mut m = header(len, RTM_GETADDR, seq);
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFA_TARGET_NETNSID.to_ne_bytes());
    m.extend_from_slice(&netnsid.to_ne_bytes());
    m
}

/// One answer datagram: its messages of `kind` (the payload after the
/// netlink header), and whether the dump is complete.
fn messages(buf: &[u8], kind: u16) -> io::Result<(Vec<&[u8]>, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let typ = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "netlink message of length {len} at {at} in {} bytes",
                    buf.len()
                ),
            ));
        }
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        match typ {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            t if t == kind => out.push(payload),
            _ => {}
        }
        at += align4(len);
    }
    Ok((out, false))
}

/// The attributes after a fixed header of `skip` bytes: (type, payload).
fn attributes(data: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = skip;
    while at + 4 <= data.len() {
        let len = u16::from_ne_bytes(data[at..at + 2].try_into().unwrap()) as usize;
        let typ = u16::from_ne_bytes(data[at + 2..at + 4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < 4 || at + len > data.len() {
            break; // truncated: keep what was whole
        }
        out.push((typ, &data[at + 4..at + len]));
        at += align4(len);
    }
    out
}

fn cstring(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// The links in one `RTM_GETLINK` answer datagram, and whether it was the
/// last.
pub fn parse_links(buf: &[u8]) -> io::Result<(Vec<Link>, bool)> {
    let (msgs, done) = messages(buf, RTM_NEWLINK)?;
    let links = msgs
        .into_iter()
        .filter(|m| m.len() >= IFINFOMSG_LEN)
        .filter_map(|m| {
            let index = u32_of(&m[4..8])?;
            let mut link = Link {
                index,
                name: String::new(),
                kind: None,
                master: None,
                peer: None,
            };
            let (mut peer_index, mut netnsid) = (None, None);
            for (typ, value) in attributes(m, IFINFOMSG_LEN) {
                match typ {
                    IFLA_IFNAME => link.name = cstring(value),
                    IFLA_MASTER => link.master = u32_of(value),
                    IFLA_LINK => peer_index = u32_of(value),
                    IFLA_LINK_NETNSID => netnsid = u32_of(value).map(|v| v as i32),
                    IFLA_LINKINFO => {
                        link.kind = attributes(value, 0)
                            .into_iter()
                            .find(|(t, _)| *t == IFLA_INFO_KIND)
                            .map(|(_, v)| cstring(v));
                    }
                    _ => {}
                }
            }
            if let (Some(index), Some(netnsid)) = (peer_index, netnsid) {
                link.peer = Some(Peer { netnsid, index });
            }
            Some(link)
        })
        .collect();
    Ok((links, done))
}

/// The addresses in one `RTM_GETADDR` answer datagram, and whether it was
/// the last. IPv4 takes `IFA_LOCAL` (on point-to-point links `IFA_ADDRESS`
/// is the far end).
pub fn parse_addresses(buf: &[u8]) -> io::Result<(Vec<LinkAddress>, bool)> {
    let (msgs, done) = messages(buf, RTM_NEWADDR)?;
    let addrs = msgs
        .into_iter()
        .filter(|m| m.len() >= IFADDRMSG_LEN)
        .filter_map(|m| {
            let family = m[0];
            let index = u32_of(&m[4..8])?;
            let attrs = attributes(m, IFADDRMSG_LEN);
            let pick = |t: u16| attrs.iter().find(|(typ, _)| *typ == t).map(|(_, v)| *v);
            let raw = match family {
                AF_INET => pick(IFA_LOCAL).or_else(|| pick(IFA_ADDRESS))?,
                AF_INET6 => pick(IFA_ADDRESS)?,
                _ => return None,
            };
            let ip = match (family, raw.len()) {
                (AF_INET, 4) => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
                (AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?)),
                _ => return None,
            };
            Some(LinkAddress { index, ip })
        })
        .collect();
    Ok((addrs, done))
}

/// Parses one answer datagram: its items, and whether the dump is complete.
type ParseDatagram<T> = fn(&[u8]) -> io::Result<(Vec<T>, bool)>;

/// Sends a dump request and parses every answer datagram until the end.
fn dump<T>(request: &[u8], parse: ParseDatagram<T>) -> io::Result<Vec<T>> {
    let mut socket = netlink_sys::Socket::new(NETLINK_ROUTE)?;
    socket.set_netlink_get_strict_chk(true)?;
    socket.bind_auto()?;
    socket.send(request, 0)?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = socket.recv_from_full()?;
        let (mut items, done) = parse(&buf)?;
        out.append(&mut items);
        if done {
            return Ok(out);
        }
    }
}

/// Every link of this network namespace.
pub fn read_links() -> io::Result<Vec<Link>> {
    dump(&link_dump_request(1), parse_links)
}

/// The addresses (both families) of every link in the namespace this one
/// knows as `netnsid` (a veth's [`Peer::netnsid`]).
pub fn read_peer_addresses(netnsid: i32) -> io::Result<Vec<LinkAddress>> {
    let mut out = dump(&addr_dump_request(1, AF_INET, netnsid), parse_addresses)?;
    out.extend(dump(
        &addr_dump_request(2, AF_INET6, netnsid),
        parse_addresses,
    )?);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A netlink message as the kernel lays it out: header, fixed part,
    /// attributes (each padded to 4 bytes).
    pub(crate) fn message(kind: u16, fixed: &[u8], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = fixed.to_vec();
        for (typ, value) in attrs {
            body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&typ.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn ifinfo(index: u32) -> Vec<u8> {
        let mut f = vec![0u8; IFINFOMSG_LEN];
        f[4..8].copy_from_slice(&index.to_ne_bytes());
        f
    }

    fn name(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// RTM_NEWLINK for a link; `kind` nested in IFLA_LINKINFO (with the
    /// nested flag set, as the kernel does).
    pub(crate) fn link_msg(
        index: u32,
        ifname: &str,
        kind: Option<&str>,
        master: Option<u32>,
        peer: Option<(i32, u32)>,
    ) -> Vec<u8> {
        let mut attrs = vec![(IFLA_IFNAME, name(ifname))];
        if let Some(kind) = kind {
            let mut nested = Vec::new();
            nested.extend_from_slice(&((4 + kind.len() + 1) as u16).to_ne_bytes());
            nested.extend_from_slice(&IFLA_INFO_KIND.to_ne_bytes());
            nested.extend_from_slice(&name(kind));
            nested.resize(align4(nested.len()), 0);
            attrs.push((IFLA_LINKINFO | 0x8000, nested));
        }
        if let Some(m) = master {
            attrs.push((IFLA_MASTER, m.to_ne_bytes().to_vec()));
        }
        if let Some((nsid, idx)) = peer {
            attrs.push((IFLA_LINK, idx.to_ne_bytes().to_vec()));
            attrs.push((IFLA_LINK_NETNSID, nsid.to_ne_bytes().to_vec()));
        }
        message(RTM_NEWLINK, &ifinfo(index), &attrs)
    }

    pub(crate) fn addr_msg(index: u32, ip: IpAddr, peer_v4: Option<Ipv4Addr>) -> Vec<u8> {
        let (family, bytes) = match ip {
            IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
            IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
        };
        let mut fixed = vec![family, 24, 0, 0];
        fixed.extend_from_slice(&index.to_ne_bytes());
        let attrs = match peer_v4 {
            // Point-to-point: IFA_ADDRESS is the far end, IFA_LOCAL ours.
            Some(far) => vec![(IFA_ADDRESS, far.octets().to_vec()), (IFA_LOCAL, bytes)],
            None if family == AF_INET => vec![(IFA_ADDRESS, bytes.clone()), (IFA_LOCAL, bytes)],
            None => vec![(IFA_ADDRESS, bytes)],
        };
        message(RTM_NEWADDR, &fixed, &attrs)
    }

    fn done_msg() -> Vec<u8> {
        message(NLMSG_DONE, &0i32.to_ne_bytes(), &[])
    }

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let link = link_dump_request(7);
        assert_eq!(link.len(), 32);
        assert_eq!(u32::from_ne_bytes(link[0..4].try_into().unwrap()), 32);
        assert_eq!(
            u16::from_ne_bytes(link[4..6].try_into().unwrap()),
            RTM_GETLINK
        );
        assert_eq!(u16::from_ne_bytes(link[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(link[8..12].try_into().unwrap()), 7);
        assert!(
            link[16..].iter().all(|b| *b == 0),
            "strict checking wants zeros"
        );

        let addr = addr_dump_request(1, AF_INET6, 5);
        assert_eq!(addr.len(), 32);
        assert_eq!(
            u16::from_ne_bytes(addr[4..6].try_into().unwrap()),
            RTM_GETADDR
        );
        assert_eq!(addr[16], AF_INET6);
        assert_eq!(u16::from_ne_bytes(addr[24..26].try_into().unwrap()), 8);
        assert_eq!(
            u16::from_ne_bytes(addr[26..28].try_into().unwrap()),
            IFA_TARGET_NETNSID
        );
        assert_eq!(i32::from_ne_bytes(addr[28..32].try_into().unwrap()), 5);
    }

    #[test]
    fn links_bring_their_kind_master_and_veth_peer() {
        let mut buf = link_msg(1, "lo", None, None, None);
        buf.extend(link_msg(4, "cni0", Some("bridge"), None, None));
        buf.extend(link_msg(9, "veth1a2b", Some("veth"), Some(4), Some((3, 2))));
        let (links, done) = parse_links(&buf).unwrap();
        assert!(!done, "no NLMSG_DONE yet: more datagrams follow");
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].name, "lo");
        assert!(links[1].is_bridge());
        assert_eq!(
            links[2],
            Link {
                index: 9,
                name: "veth1a2b".into(),
                kind: Some("veth".into()),
                master: Some(4),
                peer: Some(Peer {
                    netnsid: 3,
                    index: 2
                }),
            }
        );
        let (rest, done) = parse_links(&done_msg()).unwrap();
        assert!(rest.is_empty() && done);
    }

    #[test]
    fn addresses_take_the_local_end_and_both_families() {
        let mut buf = addr_msg(2, "10.244.0.7".parse().unwrap(), None);
        buf.extend(addr_msg(
            5,
            "10.1.0.2".parse().unwrap(),
            Some(Ipv4Addr::new(10, 1, 0, 1)),
        ));
        buf.extend(addr_msg(2, "fd00::7".parse().unwrap(), None));
        buf.extend(done_msg());
        let (addrs, done) = parse_addresses(&buf).unwrap();
        assert!(done);
        let got: Vec<(u32, String)> = addrs.iter().map(|a| (a.index, a.ip.to_string())).collect();
        assert_eq!(
            got,
            [
                (2, "10.244.0.7".to_string()),
                (5, "10.1.0.2".to_string()),
                (2, "fd00::7".to_string())
            ]
        );
    }

    #[test]
    fn a_kernel_error_is_an_io_error_and_garbage_is_not_a_panic() {
        let err = message(NLMSG_ERROR, &(-95i32).to_ne_bytes(), &[]);
        let e = parse_addresses(&err).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(95), "EOPNOTSUPP");
        let mut bad = link_msg(1, "lo", None, None, None);
        bad[0] = 200; // claims more than there is
        assert!(parse_links(&bad).is_err());
        assert!(parse_links(&[1, 2, 3]).unwrap().0.is_empty());
        // A truncated attribute ends the link's attributes, not the parse.
        let mut short = link_msg(3, "eth0", None, None, None);
        let len = short.len();
        short[len - 12..len - 10].copy_from_slice(&100u16.to_ne_bytes());
        let (links, _) = parse_links(&short).unwrap();
        assert_eq!(links[0].index, 3);
    }
}
