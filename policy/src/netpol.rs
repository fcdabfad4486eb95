//! Kubernetes `NetworkPolicy` (`networking.k8s.io/v1`) translated into the
//! checked [`Policy`] form, the way Cilium translates it into its own rules
//! (`pkg/k8s/network_policy.go`, `ParseNetworkPolicy`), so both kinds are
//! decided by one engine and combine as in Cilium: every rule is an allow
//! rule, a flow is allowed if any rule of any policy allows it, and a pod is
//! in default deny for a direction if any policy says so.
//!
//! The translation, rule by rule:
//! - `podSelector` selects pods of the policy's namespace.
//! - An ingress (egress) rule without `from` (`to`) allows every peer; each
//!   `from`/`to` peer adds to the rule's peers: `podSelector` alone means
//!   pods of this namespace; with `namespaceSelector` it means pods of the
//!   namespaces whose labels match (`{}`: every namespace); `ipBlock` is a
//!   CIDR with exceptions (outside-the-cluster addresses only, as for
//!   `toCIDRSet`).
//! - A rule without `ports` covers every port and protocol; a port without
//!   `protocol` is TCP, without `port` every port of the protocol, a port
//!   name is resolved like a CNP's named port; `endPort` makes a range.
//! - Default deny: ingress when there are ingress rules, or when
//!   `policyTypes` lists `Ingress` or does not list `Egress` (also when it is
//!   absent); egress when there are egress rules or `policyTypes` lists
//!   `Egress`. Like Cilium, rules present in the object are enforced even
//!   if `policyTypes` leaves their direction out.

use crate::labels::{Requirement, Selector, NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use crate::load::{Diagnostic, Severity};
use crate::model::{
    EndpointSelector, NetworkPolicyObject, NetworkPolicyPeer, NetworkPolicyPort, ProtocolSpec,
};
use crate::rules::{Peer, Peers, Policy, PolicyKind, PolicyName, PortRule, Rule, Spec, L7};
use crate::validate::{
    check_port, check_selector, parse_cidr, CheckedPort, Checker, DEFAULT_NAMESPACE,
};

/// Checks and translates one `NetworkPolicy`. Returns the policy only if
/// there were no errors.
pub fn validate_network_policy(
    object: &NetworkPolicyObject,
    doc_label: &str,
) -> (Option<Policy>, Vec<Diagnostic>) {
    let display_name = object
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| doc_label.to_string());
    let mut c = Checker {
        policy: &display_name,
        diagnostics: Vec::new(),
    };
    if object.api_version != "networking.k8s.io/v1" {
        c.error(
            "apiVersion",
            format!(
                "is {:?}; a NetworkPolicy must be \"networking.k8s.io/v1\"",
                object.api_version
            ),
        );
    }
    let name = match object.metadata.name.as_deref() {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => {
            c.error("metadata.name", "is missing; every policy needs a name");
            String::new()
        }
    };
    let namespace = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let spec = &object.spec;
    let subject = check_selector(&mut c, "spec.podSelector", &spec.pod_selector)
        .with_label(NAMESPACE_LABEL, &namespace);

    let mut types = (false, false);
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        match t.as_str() {
            "Ingress" => types.0 = true,
            "Egress" => types.1 = true,
            other => c.error(
                format!("spec.policyTypes[{i}]"),
                format!("is {other:?}; expected Ingress or Egress"),
            ),
        }
    }

    let mut ingress: Vec<Rule> = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        let peers = check_peers(&mut c, &format!("{f}.from"), r.from.as_deref(), &namespace);
        let ports = check_np_ports(&mut c, &format!("{f}.ports"), r.ports.as_deref());
        ingress.push(Rule { peers, ports });
    }
    let mut egress: Vec<Rule> = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        let peers = check_peers(&mut c, &format!("{f}.to"), r.to.as_deref(), &namespace);
        let ports = check_np_ports(&mut c, &format!("{f}.ports"), r.ports.as_deref());
        egress.push(Rule { peers, ports });
    }
    let default_deny_ingress = !ingress.is_empty() || types.0 || !types.1;
    let default_deny_egress = !egress.is_empty() || types.1;

    let errors = c.diagnostics.iter().any(|d| d.severity == Severity::Error);
    let policy = (!errors).then(|| Policy {
        name: PolicyName {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(namespace),
            name,
        },
        source: None,
        specs: vec![Spec {
            field: "spec".into(),
            subject,
            ingress: Some(ingress),
            ingress_deny: None,
            egress: Some(egress),
            egress_deny: None,
            default_deny_ingress,
            default_deny_egress,
            description: None,
            labels: Vec::new(),
            requires: Vec::new(),
        }],
    });
    (policy, c.diagnostics)
}

/// `from` / `to`: absent or empty means every peer.
fn check_peers(
    c: &mut Checker,
    field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    namespace: &str,
) -> Peers {
    let Some(list) = peers.filter(|p| !p.is_empty()) else {
        return Peers::Any;
    };
    let mut out = Vec::new();
    for (i, peer) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let selects_pods = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        if selects_pods && peer.ip_block.is_some() {
            c.error(
                &f,
                "has ipBlock together with podSelector/namespaceSelector; Kubernetes allows one or the other",
            );
            continue;
        }
        if let Some(block) = &peer.ip_block {
            let Some(cidr) = parse_cidr(c, &format!("{f}.ipBlock.cidr"), &block.cidr, false) else {
                continue;
            };
            let mut except = Vec::new();
            for (j, raw) in block.except.iter().enumerate() {
                let ef = format!("{f}.ipBlock.except[{j}]");
                if let Some(e) = parse_cidr(c, &ef, raw, false) {
                    if cidr.contains(&e) {
                        except.push(e);
                    } else {
                        c.error(ef, format!("{e} is not inside {cidr}"));
                    }
                }
            }
            out.push(Peer::Cidr { cidr, except });
            continue;
        }
        let pods = match &peer.pod_selector {
            Some(sel) => check_selector(c, &format!("{f}.podSelector"), sel),
            None => Selector::all(),
        };
        let selector = match &peer.namespace_selector {
            // Pods of this namespace only.
            None if peer.pod_selector.is_some() => pods.with_label(NAMESPACE_LABEL, namespace),
            None => {
                c.error(
                    &f,
                    "is empty; give podSelector, namespaceSelector or ipBlock",
                );
                continue;
            }
            Some(ns) => {
                let ns_sel = namespace_selector(c, &format!("{f}.namespaceSelector"), ns);
                pods.and(&ns_sel)
            }
        };
        out.push(Peer::Endpoints(selector));
    }
    Peers::Listed(out)
}

/// A namespace selector as a pod selector: each key becomes the pod label
/// Cilium gives pods for their namespace's labels; `{}` means every
/// namespace (`Exists io.kubernetes.pod.namespace`).
fn namespace_selector(c: &mut Checker, field: &str, sel: &EndpointSelector) -> Selector {
    let prefixed = EndpointSelector {
        match_labels: sel.match_labels.as_ref().map(|m| {
            m.iter()
                .map(|(k, v)| (format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone()))
                .collect()
        }),
        match_expressions: sel.match_expressions.as_ref().map(|list| {
            list.iter()
                .map(|e| {
                    let mut e = e.clone();
                    e.key = format!("{NAMESPACE_LABELS_PREFIX}{}", e.key);
                    e
                })
                .collect()
        }),
    };
    let s = check_selector(c, field, &prefixed);
    if s.is_empty() {
        Selector::all().with(Requirement::Exists(NAMESPACE_LABEL.to_string()))
    } else {
        // Namespace labels belong to pods only, never reserved identities.
        s.with(Requirement::Exists(NAMESPACE_LABEL.to_string()))
    }
}

/// `ports`: absent or empty means every port and protocol.
fn check_np_ports(
    c: &mut Checker,
    field: &str,
    ports: Option<&[NetworkPolicyPort]>,
) -> Option<Vec<PortRule>> {
    let list = ports.filter(|p| !p.is_empty())?;
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let pf = format!("{field}[{i}]");
        let protocol = p.protocol.unwrap_or(ProtocolSpec::Tcp);
        if protocol == ProtocolSpec::Any {
            c.error(
                format!("{pf}.protocol"),
                "is ANY; a NetworkPolicy port is TCP, UDP or SCTP",
            );
            continue;
        }
        let port = p.port.as_deref().unwrap_or("0");
        let mut rule = PortRule {
            ports: Vec::new(),
            named: Vec::new(),
            l7: L7::None,
        };
        match check_port(c, &pf, port, p.end_port, protocol) {
            Some(CheckedPort::Range(r)) => rule.ports.push(r),
            Some(CheckedPort::Named(n)) => rule.named.push(n),
            None => continue,
        }
        out.push(rule);
    }
    Some(out)
}
