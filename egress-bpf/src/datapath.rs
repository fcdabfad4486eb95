//! The one seam between the agent and the kernel: a small [`Datapath`]
//! trait, implemented by [`crate::kernel::KernelDatapath`] (aya, real maps)
//! and [`crate::fake::FakeDatapath`] (in memory, for unprivileged tests).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use policy::rules::Direction;

use crate::abi;
use crate::desired::{DesiredState, StateDiff};
use crate::redirect::RedirectConfig;

/// Why a datapath operation failed. Each variant keeps its cause as the
/// error's source, so callers can tell a full map from a permission
/// problem ([`DatapathError::errno`], [`DatapathError::is_map_full`]) and
/// `{:#}` (anyhow) prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// An eBPF object could not be loaded: the verifier, BTF, or maps pinned
    /// by an incompatible version under the pin directory.
    #[error("loading the eBPF object {object} (maps pinned under {} by an incompatible version can be removed with `tollgate datapath uninstall`)", pins.display())]
    Load {
        object: &'static str,
        pins: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program could not be loaded, attached to an interface, or swapped
    /// into a link pinned by an earlier run.
    #[error("eBPF program {program}: {action}")]
    Program {
        program: &'static str,
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A program or map the loader expects is not in the object (a build
    /// problem, not a runtime one).
    #[error("{kind} `{name}` is missing from the eBPF object")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    /// A map operation failed. When the map is full the write is not made:
    /// callers must treat the traffic as not allowed.
    #[error("eBPF map {map}: {operation} failed{}", full_hint(source))]
    Map {
        map: &'static str,
        operation: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Setting up the proxy redirect (nftables, policy routing) failed.
    #[error("proxy redirect: `{command}`")]
    Redirect {
        command: String,
        #[source]
        source: CommandError,
    },
    /// A pin or directory under the pin directory (or the bpffs mount).
    #[error("{action} {}", path.display())]
    Pin {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Says so when a map error means "full" (the errno alone reads
/// "Argument list too long").
fn full_hint(source: &aya::maps::MapError) -> &'static str {
    match source {
        aya::maps::MapError::SyscallError(e)
            if matches!(
                e.io_error.raw_os_error(),
                Some(libc::E2BIG) | Some(libc::ENOSPC)
            ) =>
        {
            " (the map is full)"
        }
        _ => "",
    }
}

/// Why a command the datapath runs failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started (not installed?).
    #[error("cannot run it; install Debian package {package}")]
    Spawn {
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Writing its input or reading its output failed.
    #[error("talking to it failed")]
    Io(#[source] std::io::Error),
    /// It ran and failed.
    #[error("it failed: {stderr}")]
    Failed { stderr: String },
}

impl DatapathError {
    /// The OS error number under this error, if a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(n) = io.raw_os_error() {
                    return Some(n);
                }
            }
            cause = e.source();
        }
        None
    }

    /// A map write failed because the map is full (hash maps report E2BIG,
    /// LPM tries ENOSPC): nothing was written.
    pub fn is_map_full(&self) -> bool {
        matches!(self, DatapathError::Map { .. })
            && matches!(self.errno(), Some(libc::E2BIG) | Some(libc::ENOSPC))
    }

    /// A map operation's error.
    pub fn map(map: &'static str, operation: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| DatapathError::Map {
            map,
            operation,
            source,
        }
    }

    /// A pin's (or pin directory's) error.
    pub fn pin(path: &std::path::Path, action: &'static str) -> impl Fn(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| DatapathError::Pin {
            path: path.clone(),
            action,
            source,
        }
    }
}

/// Per-reason packet counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<&'static str, u64>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowVerdict {
    Allowed,
    Denied,
    /// Would have been denied; passed in audit mode.
    Audit,
    /// Allowed and handed to a proxy (DNS or HTTP).
    Redirected,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowReason {
    DenyRule,
    Fqdn,
    AllowRule,
    NoPolicy,
    DefaultDeny,
    HostToLocal,
    NoEndpoint,
    Unsupported,
    /// The HTTP proxy's own connection to a pod (it applied the policy).
    Proxy,
    /// The pod sent from an address that is not its own.
    Spoofed,
    /// An ICMP error that quotes no tracked flow of the pod.
    IcmpUnrelated,
    /// The L4 header could not be reached (IPv6 extension headers beyond
    /// the parser's bound or unknown, a fragment whose first fragment was
    /// not seen, a truncated header): never decided by a rule without ports.
    L4Unreachable,
    /// Sent to a Service address and port with no ready backend (or as a
    /// fragmented datagram, which cannot be translated).
    NoBackend,
}

/// One decision the datapath reported (new flows and drops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub ifindex: u32,
    pub direction: Direction,
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The peer's identity.
    pub identity: u32,
    /// Index into the compiled rule table (0: no rule).
    pub rule_id: u32,
    pub verdict: FlowVerdict,
    pub reason: FlowReason,
}

impl FlowEvent {
    pub fn decode(raw: &abi::FlowEvent) -> Option<Self> {
        let verdict = match raw.verdict {
            abi::VERDICT_ALLOWED => FlowVerdict::Allowed,
            abi::VERDICT_DENIED => FlowVerdict::Denied,
            abi::VERDICT_AUDIT => FlowVerdict::Audit,
            abi::VERDICT_REDIRECTED => FlowVerdict::Redirected,
            _ => return None,
        };
        let reason = match raw.reason {
            abi::REASON_DENY_RULE => FlowReason::DenyRule,
            abi::REASON_FQDN => FlowReason::Fqdn,
            abi::REASON_ALLOW_RULE => FlowReason::AllowRule,
            abi::REASON_NO_POLICY => FlowReason::NoPolicy,
            abi::REASON_DEFAULT_DENY => FlowReason::DefaultDeny,
            abi::REASON_HOST_TO_LOCAL => FlowReason::HostToLocal,
            abi::REASON_NO_ENDPOINT => FlowReason::NoEndpoint,
            abi::REASON_PROXY => FlowReason::Proxy,
            abi::REASON_SPOOFED => FlowReason::Spoofed,
            abi::REASON_ICMP_UNRELATED => FlowReason::IcmpUnrelated,
            abi::REASON_L4_UNREACHABLE => FlowReason::L4Unreachable,
            abi::REASON_NO_BACKEND => FlowReason::NoBackend,
            _ => FlowReason::Unsupported,
        };
        Some(Self {
            time_ns: raw.ts_ns,
            ifindex: raw.ifindex,
            direction: if raw.direction == abi::DIR_EGRESS {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            protocol: raw.protocol,
            src: abi::addr_from_bytes(raw.family, &raw.saddr)?,
            dst: abi::addr_from_bytes(raw.family, &raw.daddr)?,
            sport: u16::from_be(raw.sport),
            dport: u16::from_be(raw.dport),
            identity: raw.identity,
            rule_id: raw.rule_id,
            verdict,
            reason,
        })
    }
}

/// The datapath as the agent drives it: the write side, owned by one
/// node-state lock. Reads that walk whole maps (conntrack) or drain the
/// event ring go through a [`Monitor`], a second handle, so background work
/// never holds the lock that DNS answers wait on while it reads.
pub trait Datapath: Send + 'static {
    /// The read side's handle type.
    type Monitor: Monitor + Send + 'static;

    /// Writes a diff: map entries, and attaches or detaches the programs of
    /// endpoints that appear or go. Ordered so that no intermediate state
    /// allows more than the old or the new one: deny entries are added
    /// first and removed last, allow entries removed before others are added.
    fn apply(&mut self, diff: &StateDiff) -> Result<(), DatapathError>;

    /// What the maps hold now (after a restart: what the pinned maps kept).
    fn current(&self) -> Result<DesiredState, DatapathError>;

    /// A new, independent read handle (interfaces, counters, live
    /// connections, flow events). Only one monitor should poll events: they are consumed.
    fn monitor(&self) -> Result<Self::Monitor, DatapathError>;

    /// Installs, or updates in place, the redirect of pod DNS and of
    /// HTTP-rule flows to the proxies.
    fn set_redirects(&mut self, config: &RedirectConfig) -> Result<(), DatapathError>;

    /// Removes everything: programs, maps, pins and the proxy redirect.
    /// Traffic is no longer enforced afterwards.
    fn uninstall(&mut self) -> Result<(), DatapathError>;

    /// The most entries each map the agent writes can hold, by map name
    /// (those of [`DesiredState::entries_by_map`]); a map whose capacity
    /// cannot be read is left out.
    fn capacities(&self) -> BTreeMap<&'static str, u32> {
        BTreeMap::new()
    }
}

/// The datapath's read side.
pub trait Monitor {
    /// The index of a host interface (a pod's host-side veth) by name, in
    /// the agent's network namespace; `None` if there is none.
    fn interface_index(&self, name: &str) -> Option<u32>;

    /// Packet counters by reason.
    fn counters(&self) -> Result<Counters, DatapathError>;

    /// `(ifindex, remote IP)` of every live connection a pod opened: the
    /// liveness oracle behind fqdn-cache's zombies.
    fn live_connections(&self) -> Result<BTreeSet<(u32, IpAddr)>, DatapathError>;

    /// Up to `max` flow events reported since the last call.
    fn poll_events(&mut self, max: usize) -> Result<Vec<FlowEvent>, DatapathError>;

    /// The Service frontend (ClusterIP and port) that the connection
    /// `client -> backend` of the pod behind `ifindex` was sent to before
    /// the datapath translated it; `None` if it was sent to `backend`
    /// itself (or the datapath does not translate).
    fn service_frontend(
        &self,
        _ifindex: u32,
        _protocol: u8,
        _client: std::net::SocketAddr,
        _backend: std::net::SocketAddr,
    ) -> Option<std::net::SocketAddr> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::StateDiff;
    use crate::FakeDatapath;

    fn one_fqdn_entry(ip: &str) -> StateDiff {
        let mut diff = StateDiff::default();
        diff.fqdn.put.push(((7, ip.parse().unwrap()), Vec::new()));
        diff
    }

    #[test]
    fn a_full_map_is_told_apart_from_a_refused_write() {
        let mut full = FakeDatapath {
            fqdn_capacity: Some(0),
            ..FakeDatapath::default()
        };
        let e = full.apply(&one_fqdn_entry("192.0.2.1")).unwrap_err();
        assert!(e.is_map_full(), "{e:?}");
        assert_eq!(e.errno(), Some(libc::E2BIG));
        assert_eq!(
            e.to_string(),
            "eBPF map tg_fqdn: update failed (the map is full)"
        );

        let mut broken = FakeDatapath {
            broken: true,
            ..FakeDatapath::default()
        };
        let e = broken.apply(&one_fqdn_entry("192.0.2.1")).unwrap_err();
        assert!(!e.is_map_full(), "{e:?}");
        assert_eq!(
            e.errno(),
            Some(libc::EPERM),
            "the cause is kept, not flattened"
        );
    }
}
