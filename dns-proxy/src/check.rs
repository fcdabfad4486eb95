//! Who is asking, and may they ask this resolver for this name? The proxy
//! asks through the [`DnsPolicy`] seam; [`PolicyDns`] answers from the
//! policy engine's resolution (the agent's node swaps in a new one when
//! policies or endpoints change, without stopping the proxy).

use std::net::{IpAddr, SocketAddr};

use policy::inventory::IpOwner;
use policy::resolve::L7Decision;
use policy::{Direction, EndpointKey, Inventory, PeerRef, Protocol, Resolved, Verdict};

/// The transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The verdict on one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsCheck {
    /// Forward it.
    Allowed,
    /// The name is outside the endpoint's DNS rules for this resolver.
    NameDenied,
    /// The endpoint may not talk DNS to this resolver at all.
    ResolverDenied,
    /// The endpoint is in audit mode and the query would be refused
    /// (`name`: the name is outside its DNS rules; else the resolver is
    /// not allowed): answer it, learn nothing, report it as AUDIT with the
    /// rule that would have refused it.
    Audit { name: bool, rule: Option<String> },
}

/// What the proxy needs to know about policy.
pub trait DnsPolicy: Send + Sync + 'static {
    /// The endpoint that owns a source address, if any.
    fn endpoint(&self, src: IpAddr) -> Option<EndpointKey>;
    /// May `endpoint` ask `resolver` (its original destination) for `qname`?
    fn check(
        &self,
        endpoint: &EndpointKey,
        resolver: SocketAddr,
        transport: Transport,
        qname: &str,
    ) -> DnsCheck;
}

/// [`DnsPolicy`] from a resolved policy set and its inventory.
#[derive(Debug, Clone)]
pub struct PolicyDns {
    pub resolved: Resolved,
    pub inventory: Inventory,
}

impl DnsPolicy for PolicyDns {
    fn endpoint(&self, src: IpAddr) -> Option<EndpointKey> {
        match self.inventory.owner(src) {
            IpOwner::Endpoint(e) => Some(e.key.clone()),
            _ => None,
        }
    }

    fn check(
        &self,
        endpoint: &EndpointKey,
        resolver: SocketAddr,
        transport: Transport,
        qname: &str,
    ) -> DnsCheck {
        let Some(ep) = self.resolved.endpoint(endpoint) else {
            return DnsCheck::ResolverDenied;
        };
        let identity = self.inventory.identity_of(resolver.ip());
        let peer = PeerRef {
            identity,
            ip: Some(resolver.ip()),
            names: &[],
        };
        let protocol = match transport {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        };
        let decision = ep.decide(
            &self.resolved.matcher,
            Direction::Egress,
            &peer,
            resolver.port(),
            protocol,
        );
        let rule = || decision.rule.as_ref().map(|r| r.to_string());
        match (decision.verdict, &decision.l7) {
            (Verdict::Denied, _) => DnsCheck::ResolverDenied,
            (Verdict::Audit, _) => DnsCheck::Audit {
                name: false,
                rule: rule(),
            },
            (_, L7Decision::Dns(allowed)) => {
                let matched = self.resolved.matcher.matches(qname);
                if matched.iter().any(|id| allowed.binary_search(id).is_ok()) {
                    DnsCheck::Allowed
                } else if ep.audit {
                    DnsCheck::Audit {
                        name: true,
                        rule: rule(),
                    }
                } else {
                    DnsCheck::NameDenied
                }
            }
            // Allowed without a DNS rule (or audit): nothing restricts names.
            _ => DnsCheck::Allowed,
        }
    }
}
