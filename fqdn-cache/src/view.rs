//! The policy engine's view that fqdn-cache needs: for each endpoint, which
//! toFQDNs selectors apply and which ports each opens.

use std::collections::HashMap;
use std::sync::Arc;

use policy::resolve::Resolved;
use policy::{EndpointKey, FqdnMatcher, SelectorId};

use crate::datapath::PortSpec;

/// Which ports a learned name opens for each endpoint.
#[derive(Debug, Clone, Default)]
pub struct PolicyView {
    matcher: Arc<FqdnMatcher>,
    endpoints: HashMap<EndpointKey, Vec<(SelectorId, Vec<PortSpec>)>>,
}

impl PolicyView {
    /// An explicit view (tests, tools): `selectors` per endpoint, with their ports.
    pub fn new(
        matcher: Arc<FqdnMatcher>,
        endpoints: HashMap<EndpointKey, Vec<(SelectorId, Vec<PortSpec>)>>,
    ) -> Self {
        Self { matcher, endpoints }
    }

    /// The view of a resolved policy set: every toFQDNs selector of every
    /// endpoint's egress allow rules, with the ports of that rule.
    pub fn from_resolved(resolved: &Resolved) -> Self {
        let endpoints = resolved
            .endpoints
            .iter()
            .map(|(key, ep)| {
                let selectors = ep
                    .fqdn_rules()
                    .map(|(id, ports, _)| {
                        let ports = match ports {
                            None => vec![PortSpec::All],
                            Some(rules) => rules
                                .iter()
                                .flat_map(|r| r.ports.iter())
                                .map(|p| PortSpec::Range {
                                    start: p.start,
                                    end: p.end,
                                    protocol: p.protocol,
                                })
                                .collect(),
                        };
                        (id, ports)
                    })
                    .collect();
                (key.clone(), selectors)
            })
            .collect();
        Self {
            matcher: resolved.matcher.clone(),
            endpoints,
        }
    }

    /// The ports `name` (already normalized) opens for `endpoint`, sorted and
    /// deduplicated; empty if no toFQDNs selector of the endpoint matches.
    pub fn ports_for(&self, endpoint: &EndpointKey, name: &str) -> Vec<PortSpec> {
        let Some(selectors) = self.endpoints.get(endpoint) else {
            return Vec::new();
        };
        if selectors.is_empty() {
            return Vec::new();
        }
        let matched = self.matcher.matches(name);
        let mut ports: Vec<PortSpec> = selectors
            .iter()
            .filter(|(id, _)| matched.binary_search(id).is_ok())
            .flat_map(|(_, ports)| ports.iter().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}
