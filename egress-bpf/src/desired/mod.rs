//! What the maps should hold: the policy engine's resolution translated into
//! map entries, and diffs between two such states.
//!
//! Translation rules:
//! - Endpoints are keyed by the ifindex of their host-side veth.
//! - ipcache: every pod IP (/32, /128) -> its identity; node and API server
//!   addresses -> reserved identities; `0.0.0.0/0` -> world-ipv4, `::/0` ->
//!   world-ipv6; every CIDR prefix used by a rule gets a CIDR identity, and a
//!   CIDR rule selects the identities of the prefixes inside it and outside
//!   its exceptions (longest-prefix match then decides exactly as
//!   "in the CIDR and not in an exception").
//! - Policy entries are keyed (endpoint, peer identity or any, direction,
//!   protocol or all, port prefix). Port ranges become aligned prefix blocks;
//!   within one (endpoint, identity, direction, protocol) overlapping ranges
//!   are resolved here so that no two entries overlap: a plain allow beats a
//!   redirect to a proxy (a rule without L7 restriction allows everything).
//!   Deny entries live in their own map, consulted first.
//! - toFQDNs peers open nothing in the policy maps: the FQDN map (fed by the
//!   DNS proxy through fqdn-cache) carries them. Their ports are written
//!   under `ID_FQDN_RULE`, an identity no peer has, which only keeps
//!   established flows an FQDN grant admitted alive past the grant's expiry.
//! - Services: each frontend (ClusterIP, port, TCP or UDP) with its ready
//!   backends at their target ports; the programs send a pod's flow to one
//!   backend before the policy decides, so rules see the backend.
//! - Each local endpoint's own addresses: a packet it sends from any other
//!   (IPv6 link-local aside) is dropped as spoofed.
//!
//! ## Layout
//! - `state`: what the maps hold ([`DesiredState`]) and diffs ([`StateDiff`]).
//! - `compile`: resolution -> map entries ([`compile`]), CIDR identities,
//!   port overlaps, the rule table.
//! - `ports`: port ranges as LPM prefix blocks.
//! - `grants`: the FQDN map's value codec and fqdn-cache's entries by ifindex.
//! - `services`: the Services map's codec.

mod compile;
mod grants;
mod ports;
mod services;
mod state;

pub use compile::{compile, Compiled, Interfaces, RuleTable};
pub use fqdn_cache::MapDiff;
pub use grants::{decode_grants, encode_grants, fqdn_entries};
pub use ports::prefix_blocks;
pub use services::{decode_backends, encode_backends, service_key};
pub use state::{Backends, DesiredState, EndpointEntry, Frontend, PolicyEntry, StateDiff};

/// Identities the datapath uses besides the policy engine's (numbers shared
/// with the programs are defined in `bpf/lib/tollgate.h`).
pub use crate::abi::{ID_WORLD_IPV4, ID_WORLD_IPV6};
/// CIDR identities start where allocated ones end (like Cilium's local
/// identities).
pub const CIDR_IDENTITY_BASE: u32 = policy::Identity::LIMIT;
