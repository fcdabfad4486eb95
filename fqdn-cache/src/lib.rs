//! # tollgate-fqdn-cache: what each pod learned through DNS
//!
//! The security promise of `toFQDNs` rests on one rule, owned here: an IP is
//! reachable by a pod only while a DNS answer that the pod really received
//! still vouches for it.
//!
//! ## Rules
//! - An answer's IPs are allowed until `learned_at + max(ttl, min_ttl,
//!   ttl_floor)`; `ttl_floor` makes a TTL of 0 usable for the connection
//!   attempt that follows the lookup. A re-resolution extends, never shortens.
//! - Entries are per endpoint: one pod's lookup opens nothing for another.
//! - Expired entries whose IP still carries a connection stay as *zombies*
//!   (nameable in flow logs, never allowed) until the connection has been
//!   gone for a grace period.
//! - Bounds (IPs per name, names per endpoint, grants per datapath entry)
//!   fail safe: hitting one allows less, and a counter says so.
//! - Every change comes back as a [`Diff`] of datapath entries
//!   `(endpoint, ip) -> grants`; a grant is a port set with its own expiry.
//!
//! ## What this crate must never do
//! Read a clock, open a socket, touch aya, tokio or kube. `now` is passed in
//! (as in cilium's `pkg/fqdn/cache.go`), so expiry is property-tested
//! without sleeping. The only I/O is [`persist::save_atomic`] / [`persist::load`].
//!
//! ## Layout
//! - [`cache`]: the store, [`FqdnCache`].
//! - [`datapath`]: entries, grants and diffs.
//! - [`view`]: which selectors and ports apply to which endpoint.
//! - [`persist`]: the versioned file format.
//! - [`time`]: monotonic nanoseconds.
#![forbid(unsafe_code)]

pub mod cache;
pub mod datapath;
pub mod persist;
pub mod time;
pub mod view;

pub use cache::{
    Config, ConnectionOracle, Counters, FqdnCache, LearnedIp, NoConnections, EXPIRY_STEP,
};
pub use datapath::{allows, Diff, FqdnEntries, Grants, MapDiff, PortGrant, PortSpec};
pub use time::Time;
pub use view::PolicyView;
