//! Hand-made packets for the security tests and the parser's fuzz target:
//! Ethernet frames with IPv4/IPv6 (extension headers, fragments), TCP, UDP
//! and ICMP errors quoting other packets, with correct checksums; sent and
//! captured with `AF_PACKET` sockets inside a namespace, so a test sees
//! exactly whether a crafted packet crossed the datapath.
#![allow(dead_code)]

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::NetnsGuard;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// One's complement sum of 16-bit words.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// Checksum of an L4 segment with its pseudo-header.
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    fold(sum16(segment, sum16(&pseudo, 0)))
}

/// A TCP segment (SYN unless `flags` says otherwise) carrying `payload`.
pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    let c = l4_checksum(src, dst, PROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

pub const SYN: u8 = 0x02;

/// A UDP datagram.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let c = l4_checksum(src, dst, PROTO_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMP (IPv4) or ICMPv6 message: type, code, the 4 bytes after the
/// checksum, then `body` (for an error: the quoted packet).
pub fn icmp(src: IpAddr, dst: IpAddr, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = if src.is_ipv4() {
        checksum(&m)
    } else {
        l4_checksum(src, dst, PROTO_ICMPV6, &m)
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv4 header + `payload` (no Ethernet). `frag`: (id, fragment offset
/// in 8-byte units, more fragments).
pub fn ipv4(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    frag: (u16, u16, bool),
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("ipv4 with an IPv6 address")
    };
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&frag.0.to_be_bytes());
    let flags_off = frag.1 & 0x1fff | if frag.2 { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&flags_off.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&s.octets());
    h[16..20].copy_from_slice(&d.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header with next header `next` + `payload` (extension headers
/// included; no Ethernet).
pub fn ipv6(src: IpAddr, dst: IpAddr, next: u8, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("ipv6 with an IPv4 address")
    };
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&d.octets());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 packet (IPv4 if the addresses are) around an L4 `segment`.
pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> Vec<u8> {
    if src.is_ipv4() {
        ipv4(src, dst, proto, (0x4242, 0, false), segment)
    } else {
        ipv6(src, dst, proto, segment)
    }
}

/// One IPv6 extension header: its type and its 8-byte-aligned body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Authentication header (length in 4-byte units).
    Auth,
    /// A fragment header: (offset in 8-byte units, more fragments, id).
    Fragment(u16, bool, u32),
    /// A header type the parser treats as unknown (an unassigned number).
    Unknown(u8),
}

impl Ext {
    pub fn number(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Auth => 51,
            Ext::Fragment(..) => 44,
            Ext::Unknown(n) => n,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // PadN option filling the header.
            Ext::HopByHop | Ext::DestOpts | Ext::Unknown(_) => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // Type 4 (segment routing), segments left 0: passed through.
            Ext::Routing => vec![next, 0, 4, 0, 0, 0, 0, 0],
            // 12 bytes of ICV: 24 bytes, a multiple of 8 as IPv6 needs;
            // the length field counts 4-byte units minus 2.
            Ext::Auth => {
                let mut a = vec![next, 4, 0, 0];
                a.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
                a.extend_from_slice(&1u32.to_be_bytes()); // sequence
                a.extend_from_slice(&[0u8; 12]);
                a
            }
            Ext::Fragment(offset, more, id) => {
                let mut f = vec![next, 0];
                f.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
                f
            }
        }
    }
}

/// An IPv6 packet whose header chain is `exts` then `proto` with `segment`.
pub fn ipv6_chain(src: IpAddr, dst: IpAddr, exts: &[Ext], proto: u8, segment: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |n| n.number());
        payload.extend_from_slice(&e.bytes(next));
    }
    payload.extend_from_slice(segment);
    ipv6(
        src,
        dst,
        exts.first().map_or(proto, |e| e.number()),
        &payload,
    )
}

/// An Ethernet frame around an IP packet.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if packet.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    let mut f = Vec::with_capacity(14 + packet.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// The MAC address of `interface` in `netns`.
pub fn mac(netns: &str, interface: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "cat"])
        .arg(format!("/sys/class/net/{interface}/address"))
        .output()
        .expect("read a MAC address");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("MAC {text:?}: {e}"));
    }
    m
}

fn if_index(interface: &str) -> i32 {
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(i != 0, "no interface {interface} here");
    i as i32
}

/// An `AF_PACKET` socket bound to `interface` of the calling thread's netns.
fn packet_socket(interface: &str) -> OwnedFd {
    // SAFETY: socket/bind/setsockopt on a fresh fd we own, with structs we own.
    unsafe {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = if_index(interface);
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        fd
    }
}

/// Sends `frames` out of `interface` in `netns`, as they are.
pub fn send(netns: &str, interface: &str, frames: &[Vec<u8>]) {
    let _g = NetnsGuard::enter(netns);
    let fd = packet_socket(interface);
    for f in frames {
        // SAFETY: send from a buffer we own on a bound socket.
        let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(
            n,
            f.len() as isize,
            "send on {interface}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Captures what `interface` in `netns` receives while `f` runs and for
/// `settle` after; returns the frames that contain `marker`.
pub fn capture<T>(
    netns: &str,
    interface: &str,
    marker: &[u8],
    settle: Duration,
    f: impl FnOnce() -> T,
) -> (T, Vec<Vec<u8>>) {
    let (netns_s, interface_s, marker_v) =
        (netns.to_string(), interface.to_string(), marker.to_vec());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<Instant>();
    let sniffer = std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&netns_s);
        let fd = packet_socket(&interface_s);
        ready_tx.send(()).unwrap();
        let mut seen = Vec::new();
        let mut until: Option<Instant> = None;
        let mut buf = vec![0u8; 65536];
        loop {
            if until.is_none() {
                until = stop_rx.try_recv().ok();
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            // SAFETY: recvfrom into a buffer and an address we own.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            // Only what the interface received, not what its namespace sent.
            if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                let frame = &buf[..n as usize];
                if frame
                    .windows(marker_v.len())
                    .any(|w| w == marker_v.as_slice())
                {
                    seen.push(frame.to_vec());
                }
            }
        }
        seen
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("sniffer started");
    let out = f();
    stop_tx.send(Instant::now() + settle).unwrap();
    (out, sniffer.join().expect("sniffer"))
}

/// Whether `frame` (captured) arrived: at least one frame with the marker.
pub fn arrived(captured: &[Vec<u8>]) -> bool {
    !captured.is_empty()
}
