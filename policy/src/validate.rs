//! From the YAML model to a checked [`Policy`], with diagnostics that name the
//! field (`spec.egress[0].toPorts[0].ports[0].port`) and say what would be valid.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::fqdn::FqdnSelector;
use crate::labels::{Requirement, Selector, NAMESPACE_LABEL};
use crate::load::{Diagnostic, Severity};
use crate::model::{
    self, CidrRule, EgressRule, EndpointSelector, FqdnSelectorSpec, IngressRule, Operator,
    PolicyObject, ProtocolSpec, ServicePeerSpec,
};
use crate::rules::{
    CidrGroupRef, Direction, HeaderAction, HeaderMatch, HttpRule, MismatchAction, NamedPort, Peer,
    Peers, Policy, PolicyKind, PolicyName, PortRange, PortRule, Requires, Rule, ServiceRef, Spec,
    L7,
};

/// The namespace a namespaced policy without `metadata.namespace` lands in,
/// as `kubectl apply` would do.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Collects diagnostics for one policy object.
pub(crate) struct Checker<'a> {
    pub(crate) policy: &'a str,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    /// A field of Cilium's API that Tollgate deliberately does not implement.
    /// Every such field of a document is reported, not only the first.
    pub(crate) fn unsupported(&mut self, field: impl Into<String>, name: &str) {
        self.error(
            field,
            format!("`{name}` is a Cilium feature that Tollgate does not support"),
        );
    }

    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: None,
            policy: Some(self.policy.to_string()),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks one object. Returns the policy only if there were no errors;
/// warnings are returned either way.
pub fn validate_object(
    object: &PolicyObject,
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
    if object.api_version != "cilium.io/v2" {
        c.error(
            "apiVersion",
            format!("is {:?}; expected \"cilium.io/v2\"", object.api_version),
        );
    }
    let kind = match object.kind.as_str() {
        "CiliumNetworkPolicy" => PolicyKind::Namespaced,
        "CiliumClusterwideNetworkPolicy" => PolicyKind::Clusterwide,
        other => {
            c.error(
                "kind",
                format!(
                    "is {other:?}; expected CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy \
                     (or a NetworkPolicy or CiliumCIDRGroup)"
                ),
            );
            PolicyKind::Namespaced
        }
    };
    let name = match object.metadata.name.as_deref() {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => {
            c.error("metadata.name", "is missing; every policy needs a name");
            String::new()
        }
    };
    let namespace = match kind {
        PolicyKind::Namespaced | PolicyKind::NetworkPolicy => Some(
            object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        ),
        PolicyKind::Clusterwide => {
            if object.metadata.namespace.is_some() {
                c.warn(
                    "metadata.namespace",
                    "is ignored: a CiliumClusterwideNetworkPolicy is not namespaced",
                );
            }
            None
        }
    };
    let mut raw_specs: Vec<(String, &model::RuleSpec)> = Vec::new();
    if let Some(spec) = &object.spec {
        raw_specs.push(("spec".to_string(), spec));
    }
    for (i, spec) in object.specs.iter().flatten().enumerate() {
        raw_specs.push((format!("specs[{i}]"), spec));
    }
    if raw_specs.is_empty() {
        c.error(
            "spec",
            "is missing; a policy needs `spec` or a non-empty `specs` list",
        );
    }
    let specs: Vec<Spec> = raw_specs
        .iter()
        .map(|(field, spec)| check_spec(&mut c, field, spec, namespace.as_deref()))
        .collect();
    warn_fqdns_without_dns(&mut c, &specs);

    let errors = c.diagnostics.iter().any(|d| d.severity == Severity::Error);
    let policy = (!errors).then(|| Policy {
        name: PolicyName {
            kind,
            namespace,
            name,
        },
        source: None,
        specs,
    });
    (policy, c.diagnostics)
}

fn check_spec(
    c: &mut Checker,
    field: &str,
    spec: &model::RuleSpec,
    namespace: Option<&str>,
) -> Spec {
    if spec.node_selector.is_some() {
        c.unsupported(format!("{field}.nodeSelector"), "nodeSelector");
    }
    let subject = match &spec.endpoint_selector {
        Some(sel) => {
            let s = check_selector(c, &format!("{field}.endpointSelector"), sel);
            match namespace {
                Some(ns) => s.with_label(NAMESPACE_LABEL, ns),
                None => s,
            }
        }
        None if spec.node_selector.is_some() => Selector::all(),
        None => {
            c.error(
                format!("{field}.endpointSelector"),
                "is missing; use `endpointSelector: {}` to select every pod the policy may select",
            );
            Selector::all()
        }
    };
    // Cilium's Rule.Sanitize (pkg/policy/api/rule_validation.go): a rule
    // must have at least one rule in some list; empty lists do not count.
    let len = |n: Option<usize>| n.unwrap_or(0);
    if len(spec.ingress.as_ref().map(Vec::len)) == 0
        && len(spec.ingress_deny.as_ref().map(Vec::len)) == 0
        && len(spec.egress.as_ref().map(Vec::len)) == 0
        && len(spec.egress_deny.as_ref().map(Vec::len)) == 0
    {
        c.error(
            field,
            "has no rules; a spec needs at least one rule in ingress, ingressDeny, egress or egressDeny \
             (Cilium rejects it too; enableDefaultDeny alone enforces nothing)",
        );
    }
    let mut requires = Vec::new();
    let ingress = spec.ingress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("{field}.ingress[{i}]");
                requires_of(c, &f, "fromRequires", r.from_requires.as_ref(), namespace)
                    .into_iter()
                    .for_each(|s| requires.push((Direction::Ingress, false, s)));
                check_ingress(c, &f, r, namespace, false)
            })
            .collect::<Vec<_>>()
    });
    let ingress_deny = spec.ingress_deny.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("{field}.ingressDeny[{i}]");
                requires_of(c, &f, "fromRequires", r.from_requires.as_ref(), namespace)
                    .into_iter()
                    .for_each(|s| requires.push((Direction::Ingress, true, s)));
                check_ingress(c, &f, r, namespace, true)
            })
            .collect::<Vec<_>>()
    });
    let egress = spec.egress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("{field}.egress[{i}]");
                requires_of(c, &f, "toRequires", r.to_requires.as_ref(), namespace)
                    .into_iter()
                    .for_each(|s| requires.push((Direction::Egress, false, s)));
                check_egress(c, &f, r, namespace, false)
            })
            .collect::<Vec<_>>()
    });
    let egress_deny = spec.egress_deny.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("{field}.egressDeny[{i}]");
                requires_of(c, &f, "toRequires", r.to_requires.as_ref(), namespace)
                    .into_iter()
                    .for_each(|s| requires.push((Direction::Egress, true, s)));
                check_egress(c, &f, r, namespace, true)
            })
            .collect::<Vec<_>>()
    });
    // Cilium makes one policy entry per rule, each carrying the spec's
    // default-deny flag (pkg/policy/utils/parserules.go): a direction with
    // no rules (`ingress: []`, or none at all) enforces nothing there, even
    // with `enableDefaultDeny: {ingress: true}`.
    let dd = spec.enable_default_deny.clone().unwrap_or_default();
    let has = |a: &Option<Vec<Rule>>, b: &Option<Vec<Rule>>| {
        a.as_ref().is_some_and(|v| !v.is_empty()) || b.as_ref().is_some_and(|v| !v.is_empty())
    };
    let default_deny_ingress = has(&ingress, &ingress_deny) && dd.ingress.unwrap_or(true);
    let default_deny_egress = has(&egress, &egress_deny) && dd.egress.unwrap_or(true);
    let labels = spec
        .labels
        .iter()
        .flatten()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect();
    Spec {
        field: field.to_string(),
        subject,
        ingress,
        ingress_deny,
        egress,
        egress_deny,
        default_deny_ingress,
        default_deny_egress,
        description: spec.description.clone(),
        labels,
        requires: requires
            .into_iter()
            .map(|(direction, deny, selector)| Requires {
                direction,
                deny,
                selector,
            })
            .collect(),
    }
}

/// `fromRequires` / `toRequires` selectors, scoped like peer selectors.
fn requires_of(
    c: &mut Checker,
    field: &str,
    name: &str,
    sels: Option<&Vec<EndpointSelector>>,
    namespace: Option<&str>,
) -> Vec<Selector> {
    sels.into_iter()
        .flatten()
        .enumerate()
        .map(|(i, sel)| {
            let s = check_selector(c, &format!("{field}.{name}[{i}]"), sel);
            scope_peer(s, namespace)
        })
        .collect()
}

pub(crate) fn check_selector(c: &mut Checker, field: &str, sel: &EndpointSelector) -> Selector {
    let mut out = Selector::all();
    for (k, v) in sel.match_labels.iter().flatten() {
        if k.is_empty() {
            c.error(format!("{field}.matchLabels"), "has an empty key");
        }
        out = out.with_label(k, v);
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if expr.key.is_empty() {
            c.error(format!("{f}.key"), "is empty; expected a label key");
        }
        let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
        let requirement = match expr.operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    c.error(
                        format!("{f}.values"),
                        format!("must not be empty for operator {:?}", expr.operator),
                    );
                }
                if expr.operator == Operator::In {
                    Requirement::In(expr.key.clone(), values)
                } else {
                    Requirement::NotIn(expr.key.clone(), values)
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    c.error(
                        format!("{f}.values"),
                        format!("must be empty for operator {:?}", expr.operator),
                    );
                }
                if expr.operator == Operator::Exists {
                    Requirement::Exists(expr.key.clone())
                } else {
                    Requirement::DoesNotExist(expr.key.clone())
                }
            }
        };
        out = out.with(requirement);
    }
    out
}

/// A peer selector in a namespaced policy that does not name a namespace
/// means "in this policy's namespace".
fn scope_peer(selector: Selector, namespace: Option<&str>) -> Selector {
    match namespace {
        Some(ns) if !selector.mentions(NAMESPACE_LABEL) && !selector.mentions_reserved() => {
            selector.with_label(NAMESPACE_LABEL, ns)
        }
        _ => selector,
    }
}

/// The L3 fields common to ingress and egress rules, by their field names.
struct L3<'a> {
    endpoints: (&'static str, Option<&'a Vec<EndpointSelector>>),
    entities: (&'static str, Option<&'a Vec<model::Entity>>),
    cidr: (&'static str, Option<&'a Vec<String>>),
    cidr_set: (&'static str, Option<&'a Vec<CidrRule>>),
    nodes: (&'static str, Option<&'a Vec<EndpointSelector>>),
    /// `toFQDNs` (egress only): counted here, checked by the caller.
    fqdns: (&'static str, usize),
    /// `toServices` (egress only): counted here, checked by the caller.
    services: (&'static str, usize),
}

/// A `toServices` element: exactly one of `k8sService` (with a name) and
/// `k8sServiceSelector` (Cilium's Service type, pkg/policy/api/service.go).
fn check_service_peer(c: &mut Checker, f: &str, spec: &ServicePeerSpec) -> Option<ServiceRef> {
    let namespace = |ns: &Option<String>| ns.clone().filter(|n| !n.is_empty());
    match (&spec.k8s_service, &spec.k8s_service_selector) {
        (Some(svc), None) => {
            if svc.service_name.trim().is_empty() {
                c.error(
                    format!("{f}.k8sService.serviceName"),
                    "is missing; name the Service",
                );
                return None;
            }
            Some(ServiceRef::Name {
                name: svc.service_name.clone(),
                namespace: namespace(&svc.namespace),
            })
        }
        (None, Some(sel)) => Some(ServiceRef::Selector {
            selector: check_selector(
                c,
                &format!("{f}.k8sServiceSelector.selector"),
                &sel.selector,
            ),
            namespace: namespace(&sel.namespace),
        }),
        _ => {
            c.error(f, "needs exactly one of k8sService and k8sServiceSelector");
            None
        }
    }
}

fn check_l3(c: &mut Checker, field: &str, l3: L3, namespace: Option<&str>) -> Option<Vec<Peer>> {
    // Cilium's IngressCommonRule/EgressCommonRule sanitize
    // (pkg/policy/api/rule_validation.go): two non-empty peer kinds in one
    // rule are rejected ("combining X and Y is not supported yet").
    let given: Vec<&str> = [
        (l3.endpoints.0, l3.endpoints.1.map_or(0, Vec::len)),
        (l3.entities.0, l3.entities.1.map_or(0, Vec::len)),
        (l3.cidr.0, l3.cidr.1.map_or(0, Vec::len)),
        (l3.cidr_set.0, l3.cidr_set.1.map_or(0, Vec::len)),
        (l3.nodes.0, l3.nodes.1.map_or(0, Vec::len)),
        l3.fqdns,
        l3.services,
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, _)| name)
    .collect();
    if given.len() > 1 {
        c.error(
            field,
            format!(
                "combines {}; one rule may use only one kind of peer (as in Cilium): write one rule per kind",
                given.join(" and ")
            ),
        );
    }
    let mut any_given = false;
    let mut peers = Vec::new();
    if let (name, Some(sels)) = l3.endpoints {
        any_given = true;
        for (i, sel) in sels.iter().enumerate() {
            let s = check_selector(c, &format!("{field}.{name}[{i}]"), sel);
            peers.push(Peer::Endpoints(scope_peer(s, namespace)));
        }
    }
    if let (name, Some(sels)) = l3.nodes {
        any_given = true;
        for (i, sel) in sels.iter().enumerate() {
            let s = check_selector(c, &format!("{field}.{name}[{i}]"), sel);
            peers.push(Peer::Nodes(s));
        }
    }
    if let (_, Some(entities)) = l3.entities {
        any_given = true;
        peers.extend(entities.iter().map(|e| Peer::Entity(*e)));
    }
    if let (name, Some(cidrs)) = l3.cidr {
        any_given = true;
        for (i, raw) in cidrs.iter().enumerate() {
            if let Some(cidr) = parse_cidr(c, &format!("{field}.{name}[{i}]"), raw, true) {
                peers.push(Peer::Cidr {
                    cidr,
                    except: vec![],
                });
            }
        }
    }
    if let (name, Some(sets)) = l3.cidr_set {
        any_given = true;
        for (i, set) in sets.iter().enumerate() {
            let f = format!("{field}.{name}[{i}]");
            if let Some(peer) = check_cidr_rule(c, &f, set) {
                peers.push(peer);
            }
        }
    }
    any_given.then_some(peers)
}

/// A `toCIDRSet` / `fromCIDRSet` element: exactly one of `cidr`,
/// `cidrGroupRef`, `cidrGroupSelector` (Cilium's CIDRRule.sanitize).
fn check_cidr_rule(c: &mut Checker, f: &str, set: &CidrRule) -> Option<Peer> {
    let given = [
        set.cidr.is_some(),
        set.cidr_group_ref.is_some(),
        set.cidr_group_selector.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        c.error(
            f,
            "needs exactly one of cidr, cidrGroupRef and cidrGroupSelector",
        );
        return None;
    }
    let excepts: Vec<(String, Option<IpNet>)> = set
        .except
        .iter()
        .enumerate()
        .map(|(j, raw)| {
            let ef = format!("{f}.except[{j}]");
            let e = parse_cidr(c, &ef, raw, false);
            (ef, e)
        })
        .collect();
    if let Some(raw) = &set.cidr {
        // Only prefix notation here, unlike toCIDR (Cilium: "Only allow
        // notation <IP address>/<prefix>").
        let cidr = parse_cidr(c, &format!("{f}.cidr"), raw, false)?;
        let mut except = Vec::new();
        for (ef, e) in excepts {
            let Some(e) = e else { continue };
            if cidr.contains(&e) {
                except.push(e);
            } else {
                c.error(
                    ef,
                    format!("{e} is not inside {cidr}; an exception must lie within the cidr"),
                );
            }
        }
        return Some(Peer::Cidr { cidr, except });
    }
    let group = match (&set.cidr_group_ref, &set.cidr_group_selector) {
        (Some(name), _) if name.is_empty() => {
            c.error(
                format!("{f}.cidrGroupRef"),
                "is empty; name a CiliumCIDRGroup",
            );
            return None;
        }
        (Some(name), _) => CidrGroupRef::Name(name.clone()),
        (None, Some(sel)) => {
            CidrGroupRef::Selector(check_selector(c, &format!("{f}.cidrGroupSelector"), sel))
        }
        (None, None) => return None,
    };
    Some(Peer::CidrGroup {
        group,
        except: excepts.into_iter().filter_map(|(_, e)| e).collect(),
        cidrs: Vec::new(),
    })
}

pub(crate) fn parse_cidr(
    c: &mut Checker,
    field: &str,
    raw: &str,
    bare_ip_ok: bool,
) -> Option<IpNet> {
    let parsed = raw.parse::<IpNet>().ok().or_else(|| {
        raw.parse::<IpAddr>()
            .ok()
            .filter(|_| bare_ip_ok)
            .map(IpNet::from)
    });
    match parsed {
        Some(net) => Some(net.trunc()),
        None if raw.parse::<IpAddr>().is_ok() => {
            c.error(
                field,
                format!("{raw:?} is an address, not a prefix; write it as {raw}/{} (Cilium requires a prefix here)",
                    if raw.contains(':') { 128 } else { 32 }),
            );
            None
        }
        None => {
            c.error(
                field,
                format!("{raw:?} is not a CIDR; expected e.g. \"10.0.0.0/8\", \"192.0.2.1/32\" or \"2001:db8::/32\""),
            );
            None
        }
    }
}

/// The fields of a rule that Tollgate does not implement.
fn unsupported_rule_fields(c: &mut Checker, field: &str, fields: &[(&str, bool)]) {
    for (name, present) in fields {
        if *present {
            c.unsupported(format!("{field}.{name}"), name);
        }
    }
}

fn check_ingress(
    c: &mut Checker,
    field: &str,
    r: &IngressRule,
    ns: Option<&str>,
    deny: bool,
) -> Rule {
    unsupported_rule_fields(
        c,
        field,
        &[
            ("authentication", r.authentication.is_some()),
            ("fromGroups", r.from_groups.is_some()),
        ],
    );
    let l3 = L3 {
        endpoints: ("fromEndpoints", r.from_endpoints.as_ref()),
        entities: ("fromEntities", r.from_entities.as_ref()),
        cidr: ("fromCIDR", r.from_cidr.as_ref()),
        cidr_set: ("fromCIDRSet", r.from_cidr_set.as_ref()),
        nodes: ("fromNodes", r.from_nodes.as_ref()),
        fqdns: ("toFQDNs", 0),
        services: ("toServices", 0),
    };
    let peers = check_l3(c, field, l3, ns);
    let mut ports = check_ports(c, field, r.to_ports.as_ref(), deny, Direction::Ingress);
    if let Some(icmps) = &r.icmps {
        let rules = crate::icmp::check_icmps(c, field, icmps, r.to_ports.is_some());
        ports.get_or_insert_with(Vec::new).extend(rules);
    }
    finish_rule(peers, ports)
}

fn check_egress(
    c: &mut Checker,
    field: &str,
    r: &EgressRule,
    ns: Option<&str>,
    deny: bool,
) -> Rule {
    unsupported_rule_fields(
        c,
        field,
        &[
            ("authentication", r.authentication.is_some()),
            ("toGroups", r.to_groups.is_some()),
        ],
    );
    let l3 = L3 {
        endpoints: ("toEndpoints", r.to_endpoints.as_ref()),
        entities: ("toEntities", r.to_entities.as_ref()),
        cidr: ("toCIDR", r.to_cidr.as_ref()),
        cidr_set: ("toCIDRSet", r.to_cidr_set.as_ref()),
        nodes: ("toNodes", r.to_nodes.as_ref()),
        fqdns: ("toFQDNs", r.to_fqdns.as_ref().map_or(0, Vec::len)),
        services: ("toServices", r.to_services.as_ref().map_or(0, Vec::len)),
    };
    let mut peers = check_l3(c, field, l3, ns);
    if let Some(services) = &r.to_services {
        let list = peers.get_or_insert_with(Vec::new);
        for (i, spec) in services.iter().enumerate() {
            if let Some(r) = check_service_peer(c, &format!("{field}.toServices[{i}]"), spec) {
                list.push(Peer::Service(r));
            }
        }
    }
    if let Some(fqdns) = &r.to_fqdns {
        let f = format!("{field}.toFQDNs");
        if deny {
            c.error(
                &f,
                "is not allowed in egressDeny: a name-based deny cannot be enforced for IPs the pod never \
                 resolved through the proxy; deny by toCIDR/toCIDRSet instead",
            );
        }
        let list = peers.get_or_insert_with(Vec::new);
        for (i, spec) in fqdns.iter().enumerate() {
            if let Some(sel) = check_fqdn_selector(c, &format!("{f}[{i}]"), spec) {
                list.push(Peer::Fqdn(sel));
            }
        }
    }
    let mut ports = check_ports(c, field, r.to_ports.as_ref(), deny, Direction::Egress);
    if let Some(icmps) = &r.icmps {
        let rules = crate::icmp::check_icmps(c, field, icmps, r.to_ports.is_some());
        ports.get_or_insert_with(Vec::new).extend(rules);
    }
    finish_rule(peers, ports)
}

pub(crate) fn finish_rule(peers: Option<Vec<Peer>>, ports: Option<Vec<PortRule>>) -> Rule {
    let peers = match (peers, &ports) {
        (Some(list), _) => Peers::Listed(list),
        // `toPorts` alone: any peer on those ports.
        (None, Some(_)) => Peers::Any,
        // `- {}`: a rule that names nothing allows nothing.
        (None, None) => Peers::Listed(Vec::new()),
    };
    Rule { peers, ports }
}

pub(crate) fn check_fqdn_selector(
    c: &mut Checker,
    field: &str,
    spec: &FqdnSelectorSpec,
) -> Option<FqdnSelector> {
    match (&spec.match_name, &spec.match_pattern) {
        (Some(_), Some(_)) => {
            c.error(
                field,
                "has both matchName and matchPattern; use one per selector (add another list element for the other)",
            );
            None
        }
        (None, None) => {
            c.error(field, "is empty; expected matchName or matchPattern");
            None
        }
        (Some(name), None) => FqdnSelector::name(name)
            .map_err(|e| c.error(format!("{field}.matchName"), format!("{name:?} {e}")))
            .ok(),
        (None, Some(pattern)) => FqdnSelector::pattern(pattern)
            .map_err(|e| c.error(format!("{field}.matchPattern"), format!("{pattern:?} {e}")))
            .ok(),
    }
}

/// One checked `{port, endPort, protocol}`.
pub(crate) enum CheckedPort {
    Range(PortRange),
    Named(NamedPort),
}

/// Checks a port as Cilium's PortProtocol.sanitize does: a number 0-65535
/// (`0`: every port of the protocol) with an optional `endPort`, or an IANA
/// service name (a named port, lowercased).
pub(crate) fn check_port(
    c: &mut Checker,
    pf: &str,
    port: &str,
    end_port: Option<i64>,
    protocol: ProtocolSpec,
) -> Option<CheckedPort> {
    if is_port_name(port) {
        if end_port.is_some_and(|e| e != 0) {
            c.error(
                format!("{pf}.endPort"),
                "cannot be used with a named port; give the port as a number",
            );
            return None;
        }
        return Some(CheckedPort::Named(NamedPort {
            name: port.to_ascii_lowercase(),
            protocol,
        }));
    }
    let start = match port.parse::<u32>() {
        // Port 0 means every port (Cilium's wildcard port).
        Ok(0) => {
            return Some(CheckedPort::Range(PortRange {
                start: 0,
                end: u16::MAX,
                protocol,
            }))
        }
        Ok(n) if n <= 65535 => n as u16,
        Ok(n) => {
            c.error(format!("{pf}.port"), format!("{n} is outside 0-65535"));
            return None;
        }
        Err(_) => {
            c.error(
                format!("{pf}.port"),
                format!(
                    "{port:?} is neither a port number (0-65535; 0 means every port) nor a port name \
                     (at most 15 lowercase letters, digits and inner hyphens, with a letter)"
                ),
            );
            return None;
        }
    };
    let end = match end_port {
        None | Some(0) => start,
        Some(e) if e < i64::from(start) => {
            c.error(
                format!("{pf}.endPort"),
                format!("{e} is below port {start}; endPort must be >= port"),
            );
            return None;
        }
        Some(e) if e > 65535 => {
            c.error(format!("{pf}.endPort"), format!("{e} is outside 1-65535"));
            return None;
        }
        Some(e) => e as u16,
    };
    Some(CheckedPort::Range(PortRange {
        start,
        end,
        protocol,
    }))
}

/// An IANA service name (RFC 6335 5.1), as Cilium's `iana.IsSvcName`:
/// 1-15 letters, digits and hyphens, at least one letter, no leading,
/// trailing or double hyphen.
pub(crate) fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn check_ports(
    c: &mut Checker,
    field: &str,
    rules: Option<&Vec<model::PortRule>>,
    deny: bool,
    direction: Direction,
) -> Option<Vec<PortRule>> {
    let rules = rules?;
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let f = format!("{field}.toPorts[{i}]");
        unsupported_rule_fields(
            c,
            &f,
            &[
                ("terminatingTLS", rule.terminating_tls.is_some()),
                ("originatingTLS", rule.originating_tls.is_some()),
                ("listener", rule.listener.is_some()),
            ],
        );
        if rule.ports.is_empty() {
            c.error(
                format!("{f}.ports"),
                "is empty; list at least one {port, protocol}",
            );
        }
        let mut ports = Vec::new();
        let mut named = Vec::new();
        let mut zero = false;
        for (j, p) in rule.ports.iter().enumerate() {
            let pf = format!("{f}.ports[{j}]");
            let protocol = p.protocol.unwrap_or(ProtocolSpec::Any);
            match check_port(c, &pf, &p.port, p.end_port, protocol) {
                Some(CheckedPort::Range(r)) => {
                    zero |= r.start == 0;
                    ports.push(r);
                }
                Some(CheckedPort::Named(n)) => named.push(n),
                None => {}
            }
        }
        let server_names = check_server_names(c, &f, rule, deny, zero);
        let l7 = match &rule.rules {
            None => L7::None,
            Some(l7) => {
                let rf = format!("{f}.rules");
                unsupported_rule_fields(
                    c,
                    &rf,
                    &[
                        ("kafka", l7.kafka.is_some()),
                        ("l7proto", l7.l7proto.is_some()),
                        ("l7", l7.l7.is_some()),
                    ],
                );
                if deny {
                    c.error(
                        &rf,
                        "L7 rules are not allowed in deny rules; deny the port instead",
                    );
                }
                // The rest follows Cilium's PortRule.sanitize
                // (pkg/policy/api/rule_validation.go).
                if l7.dns.is_some() && direction == Direction::Ingress {
                    c.error(
                        format!("{rf}.dns"),
                        "DNS rules are not allowed on ingress (as in Cilium); they belong in the \
                         egress rules of the pods that ask",
                    );
                }
                if zero {
                    c.error(
                        &rf,
                        "L7 rules cannot be used when a port is 0 (every port); list the ports",
                    );
                }
                if l7.dns.is_some() && ports.iter().any(|p| p.start != p.end) {
                    c.error(&rf, "DNS rules do not support port ranges; remove endPort");
                }
                if l7.http.is_some() {
                    let not_tcp = rule
                        .ports
                        .iter()
                        .filter(|p| p.protocol != Some(ProtocolSpec::Tcp))
                        .map(|p| p.protocol.unwrap_or(ProtocolSpec::Any))
                        .next();
                    if let Some(proto) = not_tcp {
                        c.error(
                            &rf,
                            format!(
                                "HTTP rules apply to TCP only (not {proto:?}, which is the default); \
                                 write `protocol: TCP` on every port"
                            ),
                        );
                    }
                }
                if l7.dns.is_some() && l7.http.is_some() {
                    c.error(
                        &rf,
                        "has both dns and http; use separate toPorts entries for each",
                    );
                }
                // Both are checked so that every mistake is reported at once.
                let dns: Option<Vec<FqdnSelector>> = l7.dns.as_ref().map(|dns| {
                    dns.iter()
                        .enumerate()
                        .filter_map(|(k, s)| check_fqdn_selector(c, &format!("{rf}.dns[{k}]"), s))
                        .collect()
                });
                let http: Option<Vec<HttpRule>> = l7.http.as_ref().map(|http| {
                    http.iter()
                        .enumerate()
                        .filter_map(|(k, h)| check_http(c, &format!("{rf}.http[{k}]"), h))
                        .collect()
                });
                match (dns, http) {
                    (Some(dns), _) => L7::Dns(dns),
                    (None, Some(http)) => L7::Http(http),
                    (None, None) => L7::None,
                }
            }
        };
        let (ports, named, l7) = match server_names {
            // serverNames and L7 rules together are an error above.
            Some(names) => {
                let tcp = |p: ProtocolSpec| matches!(p, ProtocolSpec::Tcp | ProtocolSpec::Any);
                let ports = ports
                    .into_iter()
                    .filter(|p| tcp(p.protocol))
                    .map(|p| PortRange {
                        protocol: ProtocolSpec::Tcp,
                        ..p
                    })
                    .collect();
                let named = named
                    .into_iter()
                    .filter(|n| tcp(n.protocol))
                    .map(|n| NamedPort {
                        protocol: ProtocolSpec::Tcp,
                        ..n
                    })
                    .collect();
                (ports, named, L7::Tls(names))
            }
            None => (ports, named, l7),
        };
        out.push(PortRule { ports, named, l7 });
    }
    Some(out)
}

/// `serverNames` as Cilium checks it (`PortRule.sanitize` in
/// pkg/policy/api/rule_validation.go; the `ServerName` CRD schema in
/// pkg/policy/api/l4.go), plus what Tollgate cannot do. The names, or
/// `None` if the port rule has none (or they are invalid).
fn check_server_names(
    c: &mut Checker,
    field: &str,
    rule: &model::PortRule,
    deny: bool,
    zero: bool,
) -> Option<Vec<crate::sni::ServerName>> {
    let raw = rule.server_names.as_ref()?;
    let f = format!("{field}.serverNames");
    let mut ok = true;
    let mut err = |c: &mut Checker, field: String, msg: String| {
        c.error(field, msg);
        ok = false;
    };
    if raw.is_empty() {
        err(c, f.clone(), "is empty; list at least one server name (Cilium's schema: minItems 1) or remove serverNames".into());
    }
    if deny {
        err(
            c,
            f.clone(),
            "is not allowed in deny rules; deny the port instead".into(),
        );
    }
    let rules_set = rule.rules.as_ref().is_some_and(|r| {
        r.dns.as_ref().is_some_and(|d| !d.is_empty())
            || r.http.as_ref().is_some_and(|h| !h.is_empty())
    });
    if rules_set {
        // Cilium: "ServerNames are not allowed with L7 rules without TLS
        // termination" (and terminatingTLS is not supported here).
        err(
            c,
            f.clone(),
            "cannot be combined with L7 rules (rules.http, rules.dns): the proxy does not terminate TLS, \
             so it cannot see the requests inside; use separate toPorts entries"
                .into(),
        );
    }
    if zero {
        err(
            c,
            f.clone(),
            "cannot be used when a port is 0 (every port); list the ports".into(),
        );
    }
    let only_other = rule.ports.iter().all(|p| {
        !matches!(
            p.protocol,
            None | Some(ProtocolSpec::Tcp) | Some(ProtocolSpec::Any)
        )
    });
    if only_other && !rule.ports.is_empty() {
        c.warn(
            f.clone(),
            "applies to TLS over TCP only; on the other protocols' ports this rule allows nothing",
        );
    }
    let mut names = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        match crate::sni::ServerName::parse(raw) {
            Ok(n) => {
                if !names.contains(&n) {
                    names.push(n)
                }
            }
            Err(e) => err(c, format!("{f}[{i}]"), format!("{raw:?} {e}")),
        }
    }
    ok.then_some(names)
}

fn check_http(c: &mut Checker, field: &str, h: &model::HttpRuleSpec) -> Option<HttpRule> {
    let mut ok = true;
    let mut re = |name: &str, value: &Option<String>| -> Option<Regex> {
        let v = value.as_ref()?;
        match Regex::new(&format!("^(?:{v})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e.to_string().lines().last().unwrap_or_default().to_string();
                c.error(
                    format!("{field}.{name}"),
                    format!("{v:?} is not a valid regular expression ({})", first.trim()),
                );
                ok = false;
                None
            }
        }
    };
    let method = re("method", &h.method);
    let path = re("path", &h.path);
    let host = re("host", &h.host);
    let mut headers = Vec::new();
    let mut header_actions = Vec::new();
    for (i, raw) in h.headers.iter().flatten().enumerate() {
        let (name, value) = match raw.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (raw.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            c.error(
                format!("{field}.headers[{i}]"),
                format!("{raw:?} is not a header; expected \"Name\" or \"Name: value\""),
            );
            ok = false;
            continue;
        }
        headers.push(HeaderMatch {
            name: name.to_string(),
            value,
        });
    }
    for (i, m) in h.header_matches.iter().flatten().enumerate() {
        let f = format!("{field}.headerMatches[{i}]");
        if m.secret.is_some() {
            c.unsupported(format!("{f}.secret"), "headerMatches.secret");
            ok = false;
        }
        if m.name.is_empty() || !m.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            c.error(
                format!("{f}.name"),
                format!("{:?} is not a header name", m.name),
            );
            ok = false;
            continue;
        }
        // Cilium: an empty value (and no secret) only requires presence.
        let value = m.value.clone().filter(|v| !v.is_empty());
        let Some(mismatch) = &m.mismatch else {
            headers.push(HeaderMatch {
                name: m.name.clone(),
                value,
            });
            continue;
        };
        // Cilium's validation (pkg/policy/api/http.go): one of four actions.
        let Some(on_mismatch) = mismatch.as_str().and_then(MismatchAction::parse) else {
            c.error(
                format!("{f}.mismatch"),
                format!(
                    "{} is not a header action; expected LOG, ADD, DELETE or REPLACE",
                    serde_yaml::to_string(mismatch).unwrap_or_default().trim()
                ),
            );
            ok = false;
            continue;
        };
        // ADD and REPLACE write the header into requests: an HTTP token.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !m.name.bytes().all(token) {
            c.error(
                format!("{f}.name"),
                format!("{:?} is not a header name", m.name),
            );
            ok = false;
            continue;
        }
        if on_mismatch != MismatchAction::Log && !crate::header_actions::editable(&m.name) {
            c.error(
                format!("{f}.name"),
                format!(
                    "{:?} cannot be changed by a header action ({}): it frames the request or its connection, or names the host the rules judged",
                    m.name,
                    on_mismatch.as_str()
                ),
            );
            ok = false;
            continue;
        }
        if let Some(v) = &value {
            if !v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                c.error(
                    format!("{f}.value"),
                    format!("{v:?} is not a header value (printable ASCII only)"),
                );
                ok = false;
                continue;
            }
        }
        header_actions.push(HeaderAction {
            name: m.name.clone(),
            value,
            on_mismatch,
        });
    }
    ok.then_some(HttpRule {
        method,
        path,
        host,
        headers,
        header_actions,
    })
}

/// IPs for toFQDNs are learned only from DNS that goes through the proxy,
/// i.e. a port rule with `rules.dns`. Without one the rule can never match.
fn warn_fqdns_without_dns(c: &mut Checker, specs: &[Spec]) {
    let rules = || specs.iter().flat_map(|s| s.egress.iter().flatten());
    let has_dns = rules().any(|r| r.ports.iter().flatten().any(|p| matches!(p.l7, L7::Dns(_))));
    if has_dns {
        return;
    }
    for spec in specs {
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            if matches!(&rule.peers, Peers::Listed(p) if p.iter().any(|p| matches!(p, Peer::Fqdn(_))))
            {
                c.warn(
                    format!("{}.egress[{i}].toFQDNs", spec.field),
                    "toFQDNs without a DNS rule on port 53 (toPorts ... rules: dns) in this policy: no IP will \
                     ever be learned unless another policy selecting the same pods has one",
                );
            }
        }
    }
}
