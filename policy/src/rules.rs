//! Checked policy: what [`crate::validate`] makes of a [`crate::model::PolicyObject`].
//!
//! Everything here is already valid: ports are in range, CIDRs parsed,
//! patterns canonical, regexes compiled, selectors scoped to the policy's
//! namespace. Resolution and decisions only ever see this form.

use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use regex::Regex;

use crate::fqdn::FqdnSelector;
pub use crate::header_actions::{HeaderAction, HeaderEdit, MismatchAction};
use crate::labels::Selector;
pub use crate::model::{Entity, ProtocolSpec};
use crate::sni::ServerName;

/// Which of the two policy kinds an object was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `CiliumNetworkPolicy`: selects pods of its own namespace only.
    Namespaced,
    /// `CiliumClusterwideNetworkPolicy`.
    Clusterwide,
    /// A Kubernetes `NetworkPolicy` (`networking.k8s.io/v1`), translated.
    NetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespaced => "CiliumNetworkPolicy",
            Self::Clusterwide => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// A policy's identity: kind, namespace (for namespaced ones) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.namespace, self.kind) {
            (Some(ns), PolicyKind::NetworkPolicy) => {
                write!(f, "{ns}/{} (NetworkPolicy)", self.name)
            }
            (Some(ns), _) => write!(f, "{ns}/{}", self.name),
            (None, _) => write!(f, "{} (clusterwide)", self.name),
        }
    }
}

/// A validated policy object.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: PolicyName,
    /// The file it came from, for messages.
    pub source: Option<PathBuf>,
    pub specs: Vec<Spec>,
}

/// Ingress or egress, from the point of view of the selected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// One `spec` (or element of `specs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// `spec` or `specs[N]`, for naming rules in messages.
    pub field: String,
    /// The subject selector, already restricted to the policy's namespace.
    pub subject: Selector,
    pub ingress: Option<Vec<Rule>>,
    pub ingress_deny: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    pub egress_deny: Option<Vec<Rule>>,
    /// Whether this spec puts its subjects into default deny, per direction
    /// (`enableDefaultDeny`, defaulting to "has rules in that direction").
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
    pub description: Option<String>,
    pub labels: Vec<(String, String)>,
    /// `fromRequires` / `toRequires` of this spec's rules: selectors that
    /// every endpoint selector of the rules applying to its subjects must
    /// also satisfy (per direction; allow and deny rules separately).
    pub requires: Vec<Requires>,
}

/// One `fromRequires` / `toRequires` selector and where it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Requires {
    pub direction: Direction,
    pub deny: bool,
    pub selector: Selector,
}

impl Spec {
    /// The allow or deny rule list of a direction.
    pub fn rules(&self, direction: Direction, deny: bool) -> Option<&[Rule]> {
        match (direction, deny) {
            (Direction::Ingress, false) => self.ingress.as_deref(),
            (Direction::Ingress, true) => self.ingress_deny.as_deref(),
            (Direction::Egress, false) => self.egress.as_deref(),
            (Direction::Egress, true) => self.egress_deny.as_deref(),
        }
    }
}

/// One element of ingress / ingressDeny / egress / egressDeny.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub peers: Peers,
    /// `None`: every port and protocol (ICMP included).
    pub ports: Option<Vec<PortRule>>,
}

/// Whom a rule is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Peers {
    /// No L3 field was given: any peer (an L4-only rule). A rule with neither
    /// peers nor ports (`- {}`) is `Listed(vec![])` instead: it allows nothing.
    Any,
    /// The union of these; empty selects nobody (`fromEntities: []`).
    Listed(Vec<Peer>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// `from/toEndpoints` (already scoped to the namespace for namespaced policies).
    Endpoints(Selector),
    /// `from/toEntities`.
    Entity(Entity),
    /// `from/toCIDR` and `from/toCIDRSet`: outside-the-cluster addresses only.
    Cidr { cidr: IpNet, except: Vec<IpNet> },
    /// `toFQDNs`: IPs the endpoint learned through DNS for matching names.
    Fqdn(FqdnSelector),
    /// `fromNodes` / `toNodes`: nodes whose labels match.
    Nodes(Selector),
    /// `cidrGroupRef` / `cidrGroupSelector`: the CIDRs of the matching
    /// `CiliumCIDRGroup`s, filled in by [`crate::cidrgroup::expand`]
    /// (an unknown group selects nothing, as in Cilium).
    CidrGroup {
        group: CidrGroupRef,
        except: Vec<IpNet>,
        cidrs: Vec<IpNet>,
    },
    /// `toServices`: the backends of the matching Services, resolved against
    /// the inventory's Services as Cilium does (pkg/policy/k8s/service.go):
    /// a Service with a selector means the pods it selects in its namespace,
    /// one without means its backend addresses as CIDRs.
    Service(ServiceRef),
}

/// Which Services a `toServices` element means; a `None` namespace: any.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceRef {
    Name {
        name: String,
        namespace: Option<String>,
    },
    Selector {
        selector: Selector,
        namespace: Option<String>,
    },
}

/// Which `CiliumCIDRGroup`s a CIDR rule means.
#[derive(Debug, Clone, PartialEq)]
pub enum CidrGroupRef {
    Name(String),
    Selector(Selector),
}

/// A checked `CiliumCIDRGroup`.
#[derive(Debug, Clone, PartialEq)]
pub struct CidrGroup {
    pub name: String,
    pub labels: crate::labels::Labels,
    pub cidrs: Vec<IpNet>,
}

/// A `toPorts` element.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRule {
    pub ports: Vec<PortRange>,
    /// Named ports (`port: http`), resolved against the endpoints' container
    /// ports at resolution time.
    pub named: Vec<NamedPort>,
    pub l7: L7,
}

/// A port given by name (IANA service name, lowercased) with its protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: ProtocolSpec,
}

/// `port`..=`endPort` with a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
    pub protocol: ProtocolSpec,
}

impl PortRange {
    pub fn matches(&self, port: u16, protocol: Protocol) -> bool {
        let proto_ok = matches!(
            (self.protocol, protocol),
            (
                ProtocolSpec::Any,
                Protocol::Tcp | Protocol::Udp | Protocol::Sctp
            ) | (ProtocolSpec::Tcp, Protocol::Tcp)
                | (ProtocolSpec::Udp, Protocol::Udp)
                | (ProtocolSpec::Sctp, Protocol::Sctp)
                | (ProtocolSpec::Icmp, Protocol::Icmp)
                | (ProtocolSpec::Icmpv6, Protocol::Icmpv6)
        );
        proto_ok && (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            ProtocolSpec::Tcp => "TCP",
            ProtocolSpec::Udp => "UDP",
            ProtocolSpec::Sctp => "SCTP",
            ProtocolSpec::Icmp => "ICMP",
            ProtocolSpec::Icmpv6 => "ICMPV6",
            ProtocolSpec::Any => "ANY",
        };
        if self.start == self.end {
            write!(f, "{}/{proto}", self.start)
        } else {
            write!(f, "{}-{}/{proto}", self.start, self.end)
        }
    }
}

/// The protocol of a concrete flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            "ICMP" => Ok(Self::Icmp),
            "ICMPV6" => Ok(Self::Icmpv6),
            _ => Err(format!(
                "unknown protocol {s:?}; expected TCP, UDP, SCTP, ICMP or ICMPv6"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Icmp => "ICMP",
            Self::Icmpv6 => "ICMPv6",
        })
    }
}

/// Layer-7 restrictions of a port rule.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum L7 {
    #[default]
    None,
    /// `rules.dns`: the names that may be queried through this port.
    Dns(Vec<FqdnSelector>),
    /// `rules.http`: a request must match one of these.
    Http(Vec<HttpRule>),
    /// `serverNames`: a TCP connection must be TLS and its ClientHello name
    /// one of these (the ports are TCP only).
    Tls(Vec<ServerName>),
}

/// One `rules.http` element with its regexes compiled (anchored, as in Cilium).
#[derive(Debug, Clone)]
pub struct HttpRule {
    pub method: Option<Regex>,
    pub path: Option<Regex>,
    pub host: Option<Regex>,
    pub headers: Vec<HeaderMatch>,
    /// `headerMatches` with a `mismatch` action: they never deny, they
    /// change (or only report) the request once the rest of the rule matches.
    pub header_actions: Vec<HeaderAction>,
}

impl PartialEq for HttpRule {
    fn eq(&self, other: &Self) -> bool {
        let s = |r: &Option<Regex>| r.as_ref().map(|r| r.as_str().to_string());
        s(&self.method) == s(&other.method)
            && s(&self.path) == s(&other.path)
            && s(&self.host) == s(&other.host)
            && self.headers == other.headers
            && self.header_actions == other.header_actions
    }
}

/// A request header a rule requires: present, or present with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
}

impl HttpRule {
    /// Whether a request matches this rule. Header names compare
    /// case-insensitively, values exactly.
    pub fn matches(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
    ) -> bool {
        let re_ok = |re: &Option<Regex>, v: &str| re.as_ref().is_none_or(|re| re.is_match(v));
        re_ok(&self.method, method)
            && re_ok(&self.path, path)
            && (self.host.is_none() || host.is_some_and(|h| re_ok(&self.host, h)))
            && self.headers.iter().all(|want| {
                // Present, and if a value is required, every copy has it: a
                // second copy must not smuggle another value past the rule
                // (servers differ on which copy they use).
                let mut copies = headers
                    .iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(&want.name))
                    .peekable();
                copies.peek().is_some()
                    && copies.all(|(_, value)| want.value.as_deref().is_none_or(|v| v == *value))
            })
    }

    /// The changes this rule's `headerMatches` mismatch actions make to a
    /// request it matches, in order, each seeing the headers the previous
    /// one left (applied to `headers` as they are found).
    pub fn apply_header_actions(&self, headers: &mut Vec<(String, String)>) -> Vec<HeaderEdit> {
        let mut edits = Vec::new();
        for action in &self.header_actions {
            if let Some(edit) = action.edit(headers) {
                edit.apply(headers);
                edits.push(edit);
            }
        }
        edits
    }
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unanchor = |r: &Regex| {
            let s = r.as_str();
            s.strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(s)
                .to_string()
        };
        let mut parts = Vec::new();
        if let Some(m) = &self.method {
            parts.push(format!("method={}", unanchor(m)));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path={}", unanchor(p)));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host={}", unanchor(h)));
        }
        for h in &self.headers {
            match &h.value {
                Some(v) => parts.push(format!("header {}: {v}", h.name)),
                None => parts.push(format!("header {}", h.name)),
            }
        }
        for a in &self.header_actions {
            parts.push(a.to_string());
        }
        if parts.is_empty() {
            parts.push("any request".into());
        }
        f.write_str(&parts.join(" "))
    }
}
