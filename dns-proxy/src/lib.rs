//! # tollgate-dns-proxy: where a name becomes an allowed IP
//!
//! Pod DNS is redirected here transparently (nftables TPROXY, set up by the
//! datapath). For each query the proxy knows the pod (source address) and the
//! resolver it asked (original destination). It checks the name against the
//! pod's DNS rules, forwards to that resolver over the same protocol (or
//! answers from its cache), follows the CNAME chain from the query name,
//! hands the addresses to a [`LearnSink`] — fqdn-cache + the datapath, in
//! the agent — and **only after that write returns** replies to the pod,
//! from the resolver's address. A failed write withholds the answer
//! (SERVFAIL): the pod can never connect before the datapath knows the IP.
//!
//! ## What this crate must never do
//! Import the datapath, open BPF maps, or know Kubernetes. Its collaborators
//! come through three seams: [`DnsPolicy`], [`LearnSink`], [`Upstream`].
//!
//! ## Layout
//! - [`handler`]: the hickory `RequestHandler` and the proxy's shared state.
//! - [`check`]: the policy seam and its implementation over the policy engine.
//! - [`answer`]: CNAME chain walking, the poisoning guard.
//! - [`upstream`]: forwarding with deadlines; [`cache`]: the answer cache.
//! - [`listener`]: transparent UDP/TCP sockets, IPv4 and IPv6.
//! - [`reply`]: response encoding; [`metrics`]: histograms and counters.
//! - [`limits`]: what one pod may cost the others (queries in flight).

pub mod answer;
pub mod cache;
pub mod check;
pub mod handler;
pub mod limits;
pub mod listener;
pub mod metrics;
mod recv;
pub mod reply;
pub mod upstream;
pub mod wire;

pub use check::{DnsCheck, DnsPolicy, PolicyDns, Transport};
pub use handler::{
    DenyResponse, DnsEvent, DnsOutcome, LearnSink, Proxy, ProxyConfig, QueryHandler, SinkError,
};
pub use upstream::{NetUpstream, Upstream, UpstreamError};
