//! `CiliumCIDRGroup`: named, labelled CIDR lists that `toCIDRSet` /
//! `fromCIDRSet` elements reference with `cidrGroupRef` (by name) or
//! `cidrGroupSelector` (by the group's labels). Policies are checked one by
//! one, so a reference stays symbolic until [`expand`] fills in the CIDRs of
//! the groups known at that moment (files of the policy dir, or the watched
//! objects in Kubernetes mode). A reference to no group selects nothing, as
//! in Cilium; the rule's `except` prefixes apply to every CIDR of the group.

use crate::labels::Labels;
use crate::load::{Diagnostic, Severity};
use crate::model::CidrGroupObject;
use crate::rules::{CidrGroup, CidrGroupRef, Peer, Peers, Policy};
use crate::validate::{parse_cidr, Checker};

/// The label Cilium gives every group with its name, so selectors can name it.
pub const GROUP_NAME_LABEL: &str = "io.cilium.policy.cidrgroupname";

/// Checks one `CiliumCIDRGroup` (`cilium.io/v2` or `v2alpha1`).
pub fn validate_cidr_group(
    object: &CidrGroupObject,
    doc_label: &str,
) -> (Option<CidrGroup>, Vec<Diagnostic>) {
    let display = object
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| doc_label.to_string());
    let mut c = Checker {
        policy: &display,
        diagnostics: Vec::new(),
    };
    if !matches!(
        object.api_version.as_str(),
        "cilium.io/v2" | "cilium.io/v2alpha1"
    ) {
        c.error(
            "apiVersion",
            format!(
                "is {:?}; expected \"cilium.io/v2\" or \"cilium.io/v2alpha1\"",
                object.api_version
            ),
        );
    }
    let name = match object.metadata.name.as_deref() {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => {
            c.error("metadata.name", "is missing; every CIDR group needs a name");
            String::new()
        }
    };
    let cidrs = object
        .spec
        .external_cidrs
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| parse_cidr(&mut c, &format!("spec.externalCIDRs[{i}]"), raw, true))
        .collect();
    let mut labels: Labels = object.metadata.labels.iter().collect();
    labels.insert(&format!("{GROUP_NAME_LABEL}/{name}"), "");
    let errors = c.diagnostics.iter().any(|d| d.severity == Severity::Error);
    let group = (!errors).then_some(CidrGroup {
        name,
        labels,
        cidrs,
    });
    (group, c.diagnostics)
}

/// Fills every CIDR-group peer of `policies` with the CIDRs of the matching
/// groups (replacing what an earlier expansion put there).
pub fn expand(policies: &mut [Policy], groups: &[CidrGroup]) {
    for policy in policies {
        fill(policy, groups);
    }
}

/// [`expand`] for shared policies: only those that reference a group are
/// copied to be filled in.
pub fn expand_shared(policies: &mut [std::sync::Arc<Policy>], groups: &[CidrGroup]) {
    for policy in policies {
        if references_groups(policy) {
            fill(std::sync::Arc::make_mut(policy), groups);
        }
    }
}

fn references_groups(policy: &Policy) -> bool {
    policy.specs.iter().any(|spec| {
        [
            &spec.ingress,
            &spec.ingress_deny,
            &spec.egress,
            &spec.egress_deny,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .any(|rule| {
            matches!(&rule.peers, Peers::Listed(peers)
                    if peers.iter().any(|p| matches!(p, Peer::CidrGroup { .. })))
        })
    })
}

fn fill(policy: &mut Policy, groups: &[CidrGroup]) {
    for spec in &mut policy.specs {
        for list in [
            &mut spec.ingress,
            &mut spec.ingress_deny,
            &mut spec.egress,
            &mut spec.egress_deny,
        ] {
            for rule in list.iter_mut().flatten() {
                let Peers::Listed(peers) = &mut rule.peers else {
                    continue;
                };
                for peer in peers {
                    if let Peer::CidrGroup { group, cidrs, .. } = peer {
                        *cidrs = groups
                            .iter()
                            .filter(|g| match group {
                                CidrGroupRef::Name(n) => &g.name == n,
                                CidrGroupRef::Selector(s) => s.matches(&g.labels),
                            })
                            .flat_map(|g| g.cidrs.iter().copied())
                            .collect();
                        cidrs.sort();
                        cidrs.dedup();
                    }
                }
            }
        }
    }
}
