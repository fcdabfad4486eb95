//! The kernel ABI: `#[repr(C)]` mirrors of the structs in
//! `bpf/lib/tollgate.h`. Must be in sync with that header; every struct's
//! size is asserted at compile time, and padding is explicit.
#![allow(unsafe_code)]

use std::net::IpAddr;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const ID_ANY: u32 = 0;

pub const PROTO_ALL: u8 = 0;
pub const PROTO_ANY_L4: u8 = 255;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_REDIRECT: u8 = 2;
pub const ACTION_DENY: u8 = 3;

pub const PROXY_NONE: u8 = 0;
pub const PROXY_DNS: u8 = 1;
pub const PROXY_HTTP: u8 = 2;
pub const MARK_MASK: u32 = 0x000f_f000;
pub const MARK_DNS: u32 = 0x0002_a000;
pub const MARK_HTTP: u32 = 0x0002_b000;
/// The HTTP proxy's upstream connections (see tollgate.h).
pub const MARK_FROM_PROXY: u32 = 0x0003_a000;

pub const VERDICT_ALLOWED: u8 = 1;
pub const VERDICT_DENIED: u8 = 2;
pub const VERDICT_AUDIT: u8 = 3;
pub const VERDICT_REDIRECTED: u8 = 4;

pub const REASON_DENY_RULE: u8 = 1;
pub const REASON_FQDN: u8 = 2;
pub const REASON_ALLOW_RULE: u8 = 3;
pub const REASON_NO_POLICY: u8 = 4;
pub const REASON_DEFAULT_DENY: u8 = 5;
pub const REASON_HOST_TO_LOCAL: u8 = 6;
pub const REASON_NO_ENDPOINT: u8 = 7;
pub const REASON_UNSUPPORTED: u8 = 8;
pub const REASON_PROXY: u8 = 9;

pub const FQDN_GRANTS: usize = 8;

/// Counter indexes (`enum tg_counter`), with names for metrics.
pub const COUNTERS: [&str; 14] = [
    "pass_conntrack",
    "pass_l2",
    "pass_policy",
    "pass_fqdn",
    "pass_no_policy",
    "pass_host",
    "redirect",
    "audit",
    "drop_deny",
    "drop_default_deny",
    "drop_no_endpoint",
    "drop_unsupported",
    "events_lost",
    "conntrack_full",
];

/// Policy keys: bits before the port (endpoint, identity, direction, protocol).
pub const POLICY_FIXED_BITS: u32 = 80;
/// ipcache keys: bits before the address (family + padding).
pub const IPCACHE_FIXED_BITS: u32 = 32;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub identity: u32,
    pub enforce_ingress: u8,
    pub enforce_egress: u8,
    pub audit: u8,
    pub allow_host: u8,
}

/// Data of an ipcache LPM key (after the prefix length).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheKey {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    pub pad: u32,
}

/// Data of a policy LPM key (after the prefix length).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyKey {
    pub endpoint: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    /// Network byte order.
    pub dport: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyValue {
    pub rule_id: u32,
    pub action: u8,
    pub proxy: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FqdnKey {
    pub endpoint: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FqdnGrant {
    pub expires_ns: u64,
    pub port_start: u16,
    pub port_end: u16,
    pub protocol: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FqdnValue {
    pub grants: [FqdnGrant; FQDN_GRANTS],
    pub count: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub protocol: u8,
    pub pad: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtValue {
    pub last_seen_ns: u64,
    pub created_ns: u64,
    pub rule_id: u32,
    pub direction: u8,
    pub flags: u8,
    pub proxy: u8,
    pub reason: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub identity: u32,
    pub rule_id: u32,
    pub family: u8,
    pub protocol: u8,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    pub pad0: u8,
    pub sport: u16,
    pub dport: u16,
    pub pad1: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

// Sizes as the C compiler lays them out (checked against clang's BTF in tests).
const _: () = assert!(size_of::<Endpoint>() == 8);
const _: () = assert!(size_of::<IpcacheKey>() == 20);
const _: () = assert!(size_of::<IpcacheValue>() == 8);
const _: () = assert!(size_of::<PolicyKey>() == 12);
const _: () = assert!(size_of::<PolicyValue>() == 8);
const _: () = assert!(size_of::<FqdnKey>() == 24);
const _: () = assert!(size_of::<FqdnGrant>() == 16);
const _: () = assert!(size_of::<FqdnValue>() == 136);
const _: () = assert!(size_of::<CtKey>() == 44);
const _: () = assert!(size_of::<CtValue>() == 24);
const _: () = assert!(size_of::<FlowEvent>() == 64);

// SAFETY: all of these are #[repr(C)], Copy, have explicit padding fields so
// every byte is initialized, and contain only integers and byte arrays.
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for FqdnKey {}
unsafe impl aya::Pod for FqdnValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}

/// `(family, 16 address bytes)` as the maps store addresses.
pub fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (4, out)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

/// The inverse of [`addr_bytes`]; `None` for an unknown family.
pub fn addr_from_bytes(family: u8, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        6 => Some(IpAddr::from(*bytes)),
        _ => None,
    }
}

impl FlowEvent {
    /// Decodes a ring buffer record; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked; FlowEvent is Pod (any bit pattern
        // is valid) and read_unaligned copes with the ring buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}
