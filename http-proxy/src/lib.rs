//! # tollgate-http-proxy: where `rules.http` is enforced
//!
//! Tollgate's transparent HTTP/1.1 proxy: the datapath and nftables TPROXY
//! deliver connections on ports whose policy carries `rules.http`; the proxy
//! asks the [`HttpPolicy`] seam whether the connection may exist at all and
//! which rule sets its requests must satisfy, then checks every request on
//! the connection (keep-alive included) against the normalised request
//! target ([`normalize`]: dot segments, unreserved escapes, merged slashes):
//! allowed ones are forwarded to the original destination with that
//! normalised target, denied ones get `403 Access denied`, targets that
//! cannot be normalised safely `400`.
//!
//! Ports with `serverNames` (TLS SNI) arrive on the same listener: there
//! the proxy reads the client's TLS ClientHello without answering it
//! ([`sni`]), refuses the connection unless it names an allowed server, and
//! otherwise relays the bytes both ways untouched ([`tls`]): no decryption,
//! no certificates.
//!
//! HTTP/1.1 (and 1.0) only. A client speaking HTTP/2 (prior knowledge or
//! h2c upgrade) is not understood: prior knowledge gets a 400 from the
//! HTTP/1 parser, and `Upgrade` requests go on without their `Upgrade` header.
//!
//! ## What this crate must never do
//! Load eBPF programs or touch maps, import the datapath crate, handle DNS,
//! know Kubernetes, or decrypt or terminate TLS. Policy comes only through the [`HttpPolicy`] seam
//! (implemented by the agent over the policy engine); the one policy type
//! used here is the checked [`policy::rules::HttpRule`]. Its tests need no
//! root.
//!
//! ## Layout
//! - this file: the seam ([`HttpPolicy`], [`Authorization`], [`RuleSet`]),
//!   settings ([`ProxyConfig`]), events ([`HttpEvent`]) and [`Metrics`].
//! - [`check`]: one request against the rule sets (pure).
//! - [`normalize`]: the request target as rules see it (pure).
//! - [`server`]: listeners, accepting, the connection's authorization.
//! - [`forward`]: a connection's requests read, checked and forwarded as
//!   bytes (`httparse` for heads).
//! - [`head`]: what a head says about its body and connection, strictly
//!   (the smuggling guards; pure).
//! - [`chunked`]: where a chunked body ends (pure).
//! - [`sni`]: the TLS ClientHello's server name (pure, `tls-parser`).
//! - [`tls`]: connections on `serverNames` ports: peek, check, relay.

pub mod check;
pub mod chunked;
mod forward;
pub mod head;
pub mod normalize;
pub mod server;
pub mod sni;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use policy::rules::HttpRule;
use policy::sni::ServerName;
use tokio::sync::broadcast;

pub use check::{check_request, RequestCheck};
pub use http::Method;
pub use server::{serve, serve_on, Listeners};

/// The rules one side of a connection imposes: a request must match one
/// of them. `label` names the policy rule, for events.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub label: String,
    pub rules: Vec<HttpRule>,
}

/// The server names one side of a connection allows (`serverNames`): the
/// ClientHello must name one of them. `label` names the policy rule.
#[derive(Debug, Clone)]
pub struct ServerNameSet {
    pub label: String,
    pub names: Vec<ServerName>,
}

/// The policy's answer for a new connection.
#[derive(Debug, Clone)]
pub enum Authorization {
    /// Not allowed at L3/L4: the connection is reset before any request.
    Refused { reason: String },
    /// Allowed; each request must satisfy every set (none: any request).
    Requests {
        sets: Vec<RuleSet>,
        /// Who is connecting and to whom, as events name them.
        source: Option<String>,
        destination: Option<String>,
        /// The local pod whose policy is applied (events are filed under it).
        pod: Option<String>,
        /// `ingress` (the destination's rules) or `egress` (the source's).
        direction: &'static str,
    },
    /// Allowed only as TLS whose ClientHello names a server every set
    /// allows (`serverNames`); the bytes are then relayed, never decrypted.
    Tls {
        sets: Vec<ServerNameSet>,
        source: Option<String>,
        destination: Option<String>,
        pod: Option<String>,
        direction: &'static str,
    },
}

/// What the proxy needs to know about policy.
pub trait HttpPolicy: Send + Sync + 'static {
    /// May `client` talk to `server` (the original destination), and under
    /// which HTTP rules?
    fn authorize(&self, client: SocketAddr, server: SocketAddr) -> Authorization;
}

/// The verdict on one request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVerdict {
    /// Forwarded (the status is the upstream's).
    Allowed,
    /// Answered 403 by the proxy.
    Denied,
    /// The connection was refused (no L3/L4 allow).
    Refused,
    /// Allowed, but the upstream could not be reached (502).
    Error,
}

impl HttpVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVerdict::Allowed => "ALLOWED",
            HttpVerdict::Denied => "DENIED",
            HttpVerdict::Refused => "REFUSED",
            HttpVerdict::Error => "ERROR",
        }
    }
}

/// Who a connection is between, as events name them. One per connection,
/// shared by the events of all its requests (nothing of it is copied per
/// request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parties {
    pub client: SocketAddr,
    /// The original destination.
    pub server: SocketAddr,
    /// `namespace/pod` of each end, when it is a pod.
    pub source: Option<String>,
    pub destination: Option<String>,
    /// The local pod whose policy is applied (events are filed under it).
    pub pod: Option<String>,
    /// `ingress` or `egress` (empty for a refused connection).
    pub direction: &'static str,
}

/// One request (or refused connection), for flow logs. Events are shared
/// (`Arc`) between the proxy and its subscribers: a subscriber that is the
/// last holder can take the event apart without copying it.
#[derive(Debug, Clone)]
pub struct HttpEvent {
    pub parties: Arc<Parties>,
    /// The request's method (`TLS` for a connection on a `serverNames`
    /// port; none for a connection refused before any request). The
    /// standard methods cost no allocation.
    pub method: Option<Method>,
    pub path: String,
    pub host: Option<String>,
    pub verdict: HttpVerdict,
    /// The status sent to the client (0 for a refused connection).
    pub status: u16,
    /// The rule that allowed it, or the set no rule of which matched.
    pub rule: Option<String>,
    /// What `headerMatches` mismatch actions changed or logged.
    pub header_edits: Vec<String>,
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// SO_MARK on connections to the original destination: the datapath
    /// lets them in because the proxy already applied the destination's
    /// ingress policy.
    pub upstream_mark: u32,
    /// Connect to the original destination from the client's address
    /// (IP_TRANSPARENT; needs the redirect's `socket` rule for replies)
    /// rather than from this host's.
    pub preserve_source: bool,
    /// Time allowed to connect to the original destination.
    pub connect_timeout: Duration,
    /// Time a client has to send a request's headers (slow clients are
    /// dropped, and never hold up others).
    pub header_timeout: Duration,
    /// Time a client on a `serverNames` port has to send its whole TLS
    /// ClientHello.
    pub hello_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            upstream_mark: 0,
            preserve_source: false,
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests_allowed: AtomicU64,
    pub requests_denied: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub tls_allowed: AtomicU64,
    pub tls_denied: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            (
                "tollgate_http_connections_total",
                "Connections the HTTP proxy accepted and allowed",
                &self.connections,
            ),
            (
                "tollgate_http_connections_refused_total",
                "Connections reset: no L3/L4 allow for them",
                &self.connections_refused,
            ),
            (
                "tollgate_http_upstream_errors_total",
                "Allowed requests whose destination could not be reached (502)",
                &self.upstream_errors,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP tollgate_http_requests_total HTTP requests by verdict\n# TYPE tollgate_http_requests_total counter\n");
        for (verdict, v) in [
            ("allowed", &self.requests_allowed),
            ("denied", &self.requests_denied),
        ] {
            out.push_str(&format!(
                "tollgate_http_requests_total{{verdict=\"{verdict}\"}} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out.push_str("# HELP tollgate_tls_connections_total TLS connections on serverNames ports by verdict (the ClientHello's server name)\n# TYPE tollgate_tls_connections_total counter\n");
        for (verdict, v) in [("allowed", &self.tls_allowed), ("denied", &self.tls_denied)] {
            out.push_str(&format!(
                "tollgate_tls_connections_total{{verdict=\"{verdict}\"}} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// The proxy: its policy, settings, counters and event stream.
pub struct HttpProxy<P> {
    pub policy: P,
    pub config: ProxyConfig,
    pub metrics: Metrics,
    events: broadcast::Sender<Arc<HttpEvent>>,
}

impl<P: HttpPolicy> HttpProxy<P> {
    pub fn new(policy: P, config: ProxyConfig) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            policy,
            config,
            metrics: Metrics::default(),
            events,
        })
    }

    /// Every request verdict from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HttpEvent>> {
        self.events.subscribe()
    }

    fn emit(&self, event: HttpEvent) {
        let _ = self.events.send(Arc::new(event));
    }
}
