//! # tollgate-egress-bpf: the enforcement half
//!
//! eBPF programs (C, `bpf/`, built by `build.rs` with clang) on the host side
//! of every pod's veth: TC ingress decides what the pod sends (its egress),
//! TC egress what it receives (its ingress). Order per packet: ARP and IPv6
//! neighbour discovery pass; the pod's source address must be its own; a
//! packet whose L4 header cannot be reached (IPv6 header chain, untracked
//! fragment) is dropped; ICMP errors pass only for a tracked flow;
//! conntrack (replies pass, a flow's own packets are decided again after a
//! policy change); then, for a new flow, the HTTP proxy's own marked
//! connection to a pod (ingress), host-to-local, deny rules, the FQDN
//! allow-map (expiry enforced by the program itself), identity policy,
//! default deny; audit mode passes and reports what the policy would drop.
//!
//! ## What this crate must never do
//! Know about policies' YAML, DNS, Kubernetes or sockets. It takes desired
//! map contents (translated from the policy engine's resolution in
//! [`desired`]) and writes them; it is the only crate doing BPF syscalls.
//!
//! ## Layout
//! - `bpf/`: the C programs and `lib/tollgate.h`, the one header of map structs.
//! - [`abi`]: `#[repr(C)]` mirrors of that header (constants generated from
//!   it by `build.rs`; layouts checked against the objects' BTF in
//!   `tests/abi_btf.rs`).
//! - [`desired`]: policy resolution -> map entries (`compile`, `ports`,
//!   `grants`), and the state and diffs (`state`).
//! - [`datapath`]: the [`Datapath`] trait (writes) and [`Monitor`] (reads),
//!   flow events, counters.
//! - [`kernel`]: the aya implementation, pinned under `/sys/fs/bpf/tollgate`
//!   (`monitor`: the read side; `pins`: bpffs and uninstall; `sys`: libc).
//! - [`fake`]: an in-memory implementation with the same decision logic,
//!   per flow and per packet (`fake::packet` mirrors the parser).
//! - [`redirect`]: nftables TPROXY + policy routing to the proxies.

pub mod abi;
pub mod datapath;
pub mod desired;
pub mod fake;
pub mod kernel;
pub mod redirect;

pub use datapath::{
    Counters, Datapath, DatapathError, FlowEvent, FlowReason, FlowVerdict, Monitor,
};
pub use desired::{compile, Compiled, DesiredState, Interfaces, StateDiff};
pub use fake::{FakeDatapath, FakeMonitor};
pub use kernel::{monotonic_now_ns, KernelDatapath, KernelMonitor};
